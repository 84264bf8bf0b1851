//! Built-in `basic_auth` filter: HTTP Basic authentication (RFC 7617) against hashed
//! passwords. A request without valid credentials gets a 401 with
//! `WWW-Authenticate: Basic realm="...", charset="UTF-8"`; an accepted one goes on with the
//! user in its [extensions](RequestCtx::extensions) as an [`AuthUser`], optionally in a header
//! to the backend, and without its `Authorization` header (unless `forward_authorization`).
//!
//! ```yaml
//! filters:
//!   - name: basic_auth
//!     config:
//!       realm: staff                  # (default: "Restricted")
//!       users:                        # user: password hash (plaintext is refused)
//!         alice: "$2y$10$..."         # bcrypt: `htpasswd -nbBC 10 alice PASSWORD`
//!         ci: "{SHA256}K7gNU3sdo+OL0wNhqoVWhr3g6s1xYv72ol/pe/Unols="
//!       user_header: X-Auth-User      # the user, to the backend (default: none)
//!       forward_authorization: false  # pass Authorization upstream (default: false)
//!       cache_size: 1024              # verified bcrypt credentials kept (default: 1024; 0: none)
//!       cache_ttl: 5m                 # for at most this long (default: 5m)
//! ```
//!
//! Hashes: bcrypt (`$2y$`, `$2b$`, `$2a$`; the `bcrypt` crate, constant-time comparison), or
//! `{SHA256}` + the base64 of the SHA-256 digest of the password (unsalted and fast: only for
//! long random secrets such as machine tokens; compared in constant time).
//!
//! bcrypt is slow by design (about 50 to 100 ms at cost 10), so it never runs on the proxy's
//! threads: it runs in `tokio::task::spawn_blocking`, at most half the CPUs at a time per
//! filter entry (more requests wait their turn), and a successful check is kept in a small
//! cache (`cache_size` entries, `cache_ttl`), keyed by an HMAC-SHA-256 (per-process random key)
//! of the decoded `user:password`, so the browser's repeated `Authorization` costs one
//! verification per `cache_ttl`. A reload builds a new filter with an empty cache. A request
//! naming an unknown user is checked against a configured bcrypt hash all the same, so it
//! takes as long as a wrong password (no user enumeration by timing).

use super::{Filter, Flow, RequestCtx};
use crate::config::Dur;
use async_trait::async_trait;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use base64::engine::DecodePaddingMode;
use base64::Engine as _;
use http::header::{self, HeaderName, HeaderValue};
use pingora_core::Result;
use pingora_http::RequestHeader;
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use subtle::ConstantTimeEq;
use tokio::sync::Semaphore;

/// The user a filter authenticated, in the request's [extensions](RequestCtx::extensions): set
/// by `basic_auth` in its `request` phase, readable by the filters after it. Another
/// authentication filter may put one there too.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthUser(pub String);

/// Config of the `basic_auth` filter (see the [module docs](self)).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BasicAuthConfig {
    /// The realm named in `WWW-Authenticate` (`"Restricted"`).
    #[serde(default = "default_realm")]
    pub realm: String,
    /// User name to password hash (bcrypt or `{SHA256}base64`).
    pub users: BTreeMap<String, String>,
    /// Send the client's `Authorization` header to the backend (`false`).
    #[serde(default)]
    pub forward_authorization: bool,
    /// A header that carries the user name to the backend (none); a client's own is replaced.
    #[serde(default)]
    pub user_header: Option<String>,
    /// Most verified bcrypt credentials kept (1024; 0: verify every request).
    #[serde(default = "default_cache_size")]
    pub cache_size: usize,
    /// How long a verified credential is kept (`5m`).
    #[serde(default = "default_cache_ttl")]
    pub cache_ttl: Dur,
}

fn default_realm() -> String {
    "Restricted".into()
}
fn default_cache_size() -> usize {
    1024
}
fn default_cache_ttl() -> Dur {
    Dur::secs(300)
}

/// A password hash from the config.
enum Hash {
    Bcrypt(Arc<str>),
    Sha256([u8; 32]),
}

struct User {
    hash: Hash,
    /// The name as a header value, for `user_header`.
    header: HeaderValue,
}

/// Keyed hash of `user:password` to (user, expiry).
type Verified = HashMap<[u8; 32], (Arc<str>, Instant)>;

/// Verified bcrypt credentials.
struct Cache {
    key: ring::hmac::Key,
    map: Mutex<Verified>,
    max: usize,
    ttl: Duration,
}

impl Cache {
    fn id(&self, credentials: &[u8]) -> [u8; 32] {
        let tag = ring::hmac::sign(&self.key, credentials);
        let mut id = [0u8; 32];
        id.copy_from_slice(tag.as_ref());
        id
    }

    fn get(&self, id: &[u8; 32]) -> Option<Arc<str>> {
        if self.max == 0 {
            return None;
        }
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        match map.get(id) {
            Some((user, until)) if *until > Instant::now() => Some(user.clone()),
            Some(_) => {
                map.remove(id);
                None
            }
            None => None,
        }
    }

    fn put(&self, id: [u8; 32], user: Arc<str>) {
        if self.max == 0 {
            return;
        }
        let now = Instant::now();
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= self.max && !map.contains_key(&id) {
            map.retain(|_, (_, until)| *until > now);
            if map.len() >= self.max {
                if let Some(k) = map.keys().next().copied() {
                    map.remove(&k);
                }
            }
        }
        map.insert(id, (user, now + self.ttl));
    }
}

/// The `basic_auth` filter ([`Registry::with_builtins`](super::Registry::with_builtins)).
pub struct BasicAuthFilter {
    users: HashMap<String, User>,
    challenge: HeaderValue,
    forward_authorization: bool,
    user_header: Option<HeaderName>,
    cache: Cache,
    /// Concurrent bcrypt verifications of this filter entry.
    bcrypt_slots: Semaphore,
    /// A configured bcrypt hash, checked for unknown users so they take as long.
    decoy: Option<Arc<str>>,
}

/// `Authorization: Basic <base64>` decoded (`user:password`); `None` when absent, repeated, of
/// another scheme or malformed.
fn credentials(req: &RequestHeader) -> Option<Vec<u8>> {
    let mut values = req.headers.get_all(header::AUTHORIZATION).iter();
    let value = values.next()?;
    if values.next().is_some() || value.len() > 4096 {
        return None;
    }
    let v = value.as_bytes();
    let (scheme, rest) = v.split_at(v.iter().position(|&c| c == b' ')?);
    if !scheme.eq_ignore_ascii_case(b"basic") {
        return None;
    }
    const LENIENT: GeneralPurpose = GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
    );
    let token = rest.trim_ascii();
    let decoded = LENIENT.decode(token).ok()?;
    decoded.contains(&b':').then_some(decoded)
}

fn sha256(data: &[u8]) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, data);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// Reads one `users:` value; errors name the key (never the value: it may be a password).
fn parse_hash(user: &str, value: &str) -> std::result::Result<Hash, String> {
    const USE: &str = "use a bcrypt hash ($2y$ / $2b$, e.g. `htpasswd -nbB USER PASSWORD`) or {SHA256} and the base64 of the password's SHA-256 digest";
    if let Some(b64) = value.strip_prefix("{SHA256}") {
        let digest = STANDARD
            .decode(b64.trim())
            .ok()
            .and_then(|d| <[u8; 32]>::try_from(d).ok())
            .ok_or_else(|| {
                format!("users.{user}: {{SHA256}} must be followed by the base64 of a 32-byte SHA-256 digest")
            })?;
        return Ok(Hash::Sha256(digest));
    }
    if value.starts_with("$2") {
        let parts: Vec<&str> = value.split('$').collect();
        let ok = parts.len() == 4
            && parts[0].is_empty()
            && matches!(parts[1], "2a" | "2b" | "2y")
            && parts[2].len() == 2
            && parts[2].parse::<u32>().is_ok_and(|c| (4..=31).contains(&c))
            && parts[3].len() == 53
            && parts[3]
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'.' || c == b'/')
            && value.parse::<bcrypt::HashParts>().is_ok();
        if !ok {
            return Err(format!(
                "users.{user}: not a valid bcrypt hash ($2y$NN$ and 53 characters of salt and hash, cost 04 to 31)"
            ));
        }
        return Ok(Hash::Bcrypt(value.into()));
    }
    if value.starts_with('$') || value.starts_with('{') {
        let scheme: String = value.chars().take_while(|c| *c != '}').take(12).collect();
        let scheme = scheme
            .split('$')
            .nth(1)
            .map_or(scheme.clone(), |s| format!("${s}$"));
        return Err(format!(
            "users.{user}: unsupported password hash scheme \"{scheme}\": {USE}"
        ));
    }
    Err(format!(
        "users.{user}: not a password hash (plaintext passwords are refused): {USE}"
    ))
}

impl BasicAuthFilter {
    /// Checks the request's credentials: the user, or `None` (then a 401).
    async fn authenticate(&self, req: &RequestHeader, route: &str) -> Option<Arc<str>> {
        let creds = credentials(req)?;
        let colon = creds.iter().position(|&c| c == b':')?;
        let (name, password) = (&creds[..colon], &creds[colon + 1..]);
        let user = std::str::from_utf8(name)
            .ok()
            .and_then(|n| self.users.get_key_value(n));
        let Some((name, user)) = user else {
            // As slow as a wrong password of a known user.
            match &self.decoy {
                Some(h) => {
                    self.bcrypt(password, h).await;
                }
                None => {
                    let _ = sha256(password).ct_eq(&[0u8; 32]);
                }
            }
            log::info!(
                "{route}: basic_auth: unknown user \"{}\": 401",
                String::from_utf8_lossy(name).escape_debug()
            );
            return None;
        };
        let ok = match &user.hash {
            Hash::Sha256(digest) => bool::from(sha256(password).ct_eq(digest)),
            Hash::Bcrypt(hash) => {
                let id = self.cache.id(&creds);
                if let Some(u) = self.cache.get(&id) {
                    return Some(u);
                }
                let ok = self.bcrypt(password, hash).await;
                if ok {
                    self.cache.put(id, name.as_str().into());
                }
                ok
            }
        };
        if !ok {
            log::info!("{route}: basic_auth: wrong password for user \"{name}\": 401");
            return None;
        }
        Some(name.as_str().into())
    }

    /// bcrypt verification off the proxy's threads, a bounded number at a time.
    async fn bcrypt(&self, password: &[u8], hash: &Arc<str>) -> bool {
        let Ok(_slot) = self.bcrypt_slots.acquire().await else {
            return false;
        };
        let (password, hash) = (password.to_vec(), hash.clone());
        match tokio::task::spawn_blocking(move || bcrypt::verify(&password, &hash)).await {
            Ok(Ok(ok)) => ok,
            Ok(Err(e)) => {
                log::error!("basic_auth: bcrypt verification failed: {e}");
                false
            }
            Err(e) => {
                log::error!("basic_auth: bcrypt verification task failed: {e}");
                false
            }
        }
    }
}

#[async_trait]
impl Filter for BasicAuthFilter {
    type Config = BasicAuthConfig;
    /// The authenticated user's `user_header` value.
    type State = Option<HeaderValue>;

    fn new(conf: BasicAuthConfig) -> std::result::Result<Self, String> {
        if conf.users.is_empty() {
            return Err("users: needs at least one user".into());
        }
        let realm = &conf.realm;
        if realm.is_empty()
            || !realm
                .bytes()
                .all(|c| (0x20..0x7f).contains(&c) && c != b'"' && c != b'\\')
        {
            return Err(
                "realm: must be printable ASCII without `\"` or `\\` (and not empty)".into(),
            );
        }
        let challenge =
            HeaderValue::try_from(format!("Basic realm=\"{realm}\", charset=\"UTF-8\""))
                .map_err(|_| "realm: not a valid header value".to_string())?;
        let mut users = HashMap::new();
        let mut decoy = None;
        for (name, value) in &conf.users {
            if name.is_empty() || name.contains(':') || name.chars().any(char::is_control) {
                return Err(format!(
                    "users.{name}: a user name must be non-empty, without `:` or control characters"
                ));
            }
            let hash = parse_hash(name, value)?;
            if let (Hash::Bcrypt(h), None) = (&hash, &decoy) {
                decoy = Some(h.clone());
            }
            let header = HeaderValue::from_bytes(name.as_bytes())
                .map_err(|_| format!("users.{name}: not usable as a header value"))?;
            users.insert(name.clone(), User { hash, header });
        }
        let user_header = match &conf.user_header {
            None => None,
            Some(h) => Some(
                HeaderName::try_from(h.as_str())
                    .map_err(|_| format!("user_header: invalid header name \"{h}\""))?,
            ),
        };
        if conf.cache_ttl.0.is_zero() && conf.cache_size > 0 {
            return Err("cache_ttl: must be more than 0 (or set cache_size: 0)".into());
        }
        let key =
            ring::hmac::Key::generate(ring::hmac::HMAC_SHA256, &ring::rand::SystemRandom::new())
                .map_err(|_| "cannot make a random cache key".to_string())?;
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        Ok(BasicAuthFilter {
            users,
            challenge,
            forward_authorization: conf.forward_authorization,
            user_header,
            cache: Cache {
                key,
                map: Mutex::new(HashMap::new()),
                max: conf.cache_size,
                ttl: conf.cache_ttl.0,
            },
            bcrypt_slots: Semaphore::new(cpus.div_ceil(2)),
            decoy,
        })
    }

    async fn request(
        &self,
        req: &mut RequestCtx<'_>,
        state: &mut Option<HeaderValue>,
    ) -> Result<Flow> {
        let route = req.route().to_string();
        match self.authenticate(req.req_header(), &route).await {
            Some(user) => {
                *state = self.users.get(&*user).map(|u| u.header.clone());
                req.extensions_mut().insert(AuthUser(user.to_string()));
                Ok(Flow::Continue)
            }
            None => {
                let headers = [
                    (header::WWW_AUTHENTICATE, self.challenge.clone()),
                    (
                        header::CONTENT_TYPE,
                        HeaderValue::from_static("text/plain; charset=utf-8"),
                    ),
                ];
                req.respond(401, &headers, "401 unauthorized\n").await
            }
        }
    }

    async fn upstream_request(
        &self,
        _req: &mut RequestCtx<'_>,
        upstream: &mut RequestHeader,
        state: &mut Option<HeaderValue>,
    ) -> Result<()> {
        if !self.forward_authorization {
            upstream.remove_header(&header::AUTHORIZATION);
        }
        if let Some(h) = &self.user_header {
            match state {
                Some(v) => {
                    upstream.insert_header(h.clone(), v.clone())?;
                }
                None => {
                    upstream.remove_header(h);
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conf(users: &[(&str, &str)]) -> BasicAuthConfig {
        BasicAuthConfig {
            realm: default_realm(),
            users: users
                .iter()
                .map(|(u, h)| (u.to_string(), h.to_string()))
                .collect(),
            forward_authorization: false,
            user_header: None,
            cache_size: 2,
            cache_ttl: Dur::secs(60),
        }
    }

    fn req(auth: &[&str]) -> RequestHeader {
        let mut r = RequestHeader::build("GET", b"/", None).unwrap();
        for a in auth {
            r.append_header(header::AUTHORIZATION, *a).unwrap();
        }
        r
    }

    fn err(users: &[(&str, &str)]) -> String {
        match BasicAuthFilter::new(conf(users)) {
            Err(e) => e,
            Ok(_) => panic!("accepted {users:?}"),
        }
    }

    #[test]
    fn basic_auth_credentials_are_parsed_strictly() {
        let b64 = STANDARD.encode("alice:s3cret:x");
        assert_eq!(
            credentials(&req(&[&format!("Basic {b64}")])).unwrap(),
            b"alice:s3cret:x"
        );
        assert!(credentials(&req(&[&format!("basic   {b64}")])).is_some());
        let unpadded = STANDARD.encode("a:b").trim_end_matches('=').to_string();
        assert_eq!(
            credentials(&req(&[&format!("Basic {unpadded}")])).unwrap(),
            b"a:b"
        );
        assert!(credentials(&req(&[])).is_none());
        assert!(credentials(&req(&[&format!("Bearer {b64}")])).is_none());
        assert!(credentials(&req(&["Basic !!!"])).is_none());
        assert!(credentials(&req(&[&format!("Basic {}", STANDARD.encode("nocolon"))])).is_none());
        let one = format!("Basic {b64}");
        assert!(credentials(&req(&[&one, &one])).is_none(), "repeated");
    }

    #[test]
    fn basic_auth_config_refuses_plaintext_and_unknown_hashes() {
        let e = err(&[("alice", "hunter2")]);
        assert!(
            e.starts_with("users.alice: not a password hash (plaintext passwords are refused)"),
            "{e}"
        );
        assert!(!e.contains("hunter2"), "the value is not echoed: {e}");
        let e = err(&[("bob", "$apr1$abc$def")]);
        assert!(
            e.starts_with("users.bob: unsupported password hash scheme \"$apr1$\""),
            "{e}"
        );
        assert!(err(&[("c", "$2y$10$short")]).starts_with("users.c: not a valid bcrypt hash"));
        assert!(err(&[("d", "{SHA256}abc")]).starts_with("users.d: {SHA256} must be"));
        assert!(err(&[("a:b", "{SHA256}abc")]).starts_with("users.a:b: a user name"));
        assert_eq!(err(&[]), "users: needs at least one user");
        let good = bcrypt::hash("pw", 4).unwrap();
        assert!(BasicAuthFilter::new(conf(&[("alice", &good)])).is_ok());
        let mut c = conf(&[("alice", &good)]);
        c.realm = "a \"quoted\" realm".into();
        assert!(BasicAuthFilter::new(c).err().unwrap().starts_with("realm:"));
    }

    #[tokio::test]
    async fn basic_auth_verifies_bcrypt_and_sha256_and_caches() {
        let bc = bcrypt::hash("pw-a", 4).unwrap();
        let sha = format!("{{SHA256}}{}", STANDARD.encode(sha256(b"pw-b")));
        let f = BasicAuthFilter::new(conf(&[("alice", &bc), ("bob", &sha)])).unwrap();
        let basic = |s: &str| req(&[&format!("Basic {}", STANDARD.encode(s))]);
        assert_eq!(
            f.authenticate(&basic("alice:pw-a"), "r").await.as_deref(),
            Some("alice")
        );
        assert_eq!(f.cache.map.lock().unwrap().len(), 1, "cached");
        assert_eq!(
            f.authenticate(&basic("alice:pw-a"), "r").await.as_deref(),
            Some("alice")
        );
        assert!(f.authenticate(&basic("alice:pw-b"), "r").await.is_none());
        assert_eq!(
            f.authenticate(&basic("bob:pw-b"), "r").await.as_deref(),
            Some("bob")
        );
        assert!(f.authenticate(&basic("bob:pw-a"), "r").await.is_none());
        assert!(f.authenticate(&basic("carol:pw-a"), "r").await.is_none());
        assert!(f.authenticate(&basic("alice:"), "r").await.is_none());
        assert_eq!(
            f.cache.map.lock().unwrap().len(),
            1,
            "failures are not cached"
        );
    }

    #[test]
    fn basic_auth_cache_is_bounded_and_expires() {
        let f = BasicAuthFilter::new(conf(&[("u", &bcrypt::hash("x", 4).unwrap())])).unwrap();
        let c = &f.cache;
        for i in 0..10u8 {
            c.put(c.id(&[i]), "u".into());
            assert!(c.map.lock().unwrap().len() <= 2);
        }
        assert!(c.get(&c.id(&[9])).is_some(), "the newest is kept");
        c.map
            .lock()
            .unwrap()
            .values_mut()
            .for_each(|(_, t)| *t = Instant::now());
        assert!(c.get(&c.id(&[9])).is_none(), "expired");
    }
}
