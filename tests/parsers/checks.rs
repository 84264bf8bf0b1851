//! The properties of the project's parsers, as plain functions that panic when one does not
//! hold. Shared by the property tests (`tests/parsers_prop.rs`, stable, part of the normal
//! suite) and the libFuzzer targets (`fuzz/fuzz_targets/*.rs`, nightly, `scripts/fuzz.sh`),
//! which include this file with `#[path]`: the two differ only in how inputs are made.
//!
//! Nothing here touches the file system or the network: configs that would read a
//! certificate or resolve a name are parsed but not compiled (see [`hermetic`]).

#![allow(dead_code)]

use gateway::affinity;
use gateway::config::{Config, ForwardedConf, Issues, OneOrMany, RouteConf, XffMode};
use gateway::filter::Registry;
use gateway::proxy::headers::Forwarded;
use gateway::proxy::normalize::normalize;
use gateway::proxy::router::Router;
use gateway::runtime::Runtime;
use http::HeaderValue;
use pingora_http::RequestHeader;
use std::borrow::Cow;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

/// How long one config may take to parse and compile, in a debug build on a busy machine.
pub const CONFIG_TIME_LIMIT: Duration = Duration::from_secs(5);

// ---------------------------------------------------------------------------------------
// Config loader and compiler

/// Whether compiling `cfg` stays inside the process: no listener certificate or CA bundle to
/// read and no server name to resolve.
pub fn hermetic(cfg: &Config) -> bool {
    cfg.listeners.iter().all(|l| l.tls.is_none())
        && cfg.upstreams.values().all(|u| {
            u.tls.as_ref().is_none_or(|t| t.ca_file.is_none())
                && u.servers.iter().all(|s| !needs_resolver(&s.address))
        })
}

/// Whether the pool compiler would ask the system resolver about `address` (the same test as
/// `upstream::resolve`: not an `IP:port`, but a plausible `name:port`).
fn needs_resolver(address: &str) -> bool {
    address.parse::<SocketAddr>().is_err()
        && address.rsplit_once(':').is_some_and(|(host, port)| {
            !host.is_empty() && port.parse::<u16>().is_ok() && !host.contains(['/', ' '])
        })
}

/// `Config::from_yaml` on any text returns `Ok` or `Err` (never panics) within
/// [`CONFIG_TIME_LIMIT`]; a parsed, hermetic config compiles to `Ok` or `Err` too, the error
/// naming at least one problem, and a compiled route table answers lookups.
pub fn config_text(text: &str) {
    let start = Instant::now();
    let parsed = Config::from_yaml(text);
    match parsed {
        Err(e) => assert!(!e.to_string().is_empty(), "an error says something"),
        Ok(cfg) => compiled(&cfg),
    }
    assert!(
        start.elapsed() < CONFIG_TIME_LIMIT,
        "{:?} for {} bytes of config",
        start.elapsed(),
        text.len()
    );
}

/// `Runtime::compile` on a parsed config: never panics; `Err` lists problems, `Ok` routes.
pub fn compiled(cfg: &Config) {
    if !hermetic(cfg) {
        return;
    }
    match Runtime::compile(cfg) {
        Err(e) => assert!(!e.to_string().is_empty(), "an error says something"),
        Ok(rt) => {
            assert_eq!(rt.listeners.len(), cfg.listeners.len());
            assert_eq!(rt.pools.len(), cfg.upstreams.len());
            for (host, path) in [
                ("a.com", "/"),
                ("A.COM:8080", "/api/x"),
                ("x.a.com.", "/socket.io/"),
                ("", ""),
                ("[::1]:80", "*"),
            ] {
                if let Some((i, r)) = rt.router.find(host, path) {
                    assert!(std::ptr::eq(r, rt.router.get(i)));
                    let _ = r.rewrite.apply(path, Some("q=1"));
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Path normaliser

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// `normalize` never panics; its output starts with `/` (an input without one that needs no
/// work, such as `*`, comes back untouched), has no empty, `.` or `..` segment before the
/// end, keeps only upper-case escapes of reserved bytes, and is its own normal form
/// (idempotent, returned borrowed).
pub fn normalized(input: &str) {
    let Ok(out) = normalize(input) else { return };
    if let Cow::Borrowed(b) = out {
        assert_eq!(b, input, "a borrowed result is the input");
    }
    if !input.starts_with('/') {
        assert_eq!(out, input, "only plain relative inputs are accepted");
        return;
    }
    assert!(out.starts_with('/'), "{input:?} -> {out:?}");
    assert!(!out.contains("//"), "{input:?} -> {out:?}");
    assert!(
        out[1..].split('/').all(|s| s != "." && s != ".."),
        "{input:?} -> {out:?}"
    );
    let b = out.as_bytes();
    for (i, _) in b.iter().enumerate().filter(|(_, &c)| c == b'%') {
        let hex = b.get(i + 1..i + 3).expect("a complete escape");
        assert!(
            hex.iter()
                .all(|c| c.is_ascii_digit() || (b'A'..=b'F').contains(c)),
            "{input:?} -> {out:?}: upper-case hex"
        );
        let v = u8::from_str_radix(std::str::from_utf8(hex).unwrap(), 16).unwrap();
        assert!(
            v != 0 && !is_unreserved(v),
            "{input:?} -> {out:?}: %{v:02X} left encoded"
        );
    }
    match normalize(&out) {
        Ok(Cow::Borrowed(again)) => assert_eq!(again, &*out, "idempotent"),
        other => panic!("{input:?} -> {out:?} -> {other:?}: not idempotent"),
    }
}

// ---------------------------------------------------------------------------------------
// Router

/// One route of a generated table: host patterns (empty: any host) and a path pattern.
#[derive(Debug, Clone)]
pub struct RouteSpec {
    /// `example.com`, `*.example.com`; as written in the config (case and spaces kept).
    pub hosts: Vec<String>,
    /// `None`: any path; `Some((true, p))`: exactly `p`; `Some((false, p))`: prefix `p`.
    pub path: Option<(bool, String)>,
}

impl RouteSpec {
    /// Whether the config loader accepts this route (so the table keeps file order).
    pub fn valid(&self) -> bool {
        self.hosts.iter().all(|h| {
            let h = h.trim().to_ascii_lowercase();
            match h.strip_prefix("*.") {
                Some(s) => !s.is_empty() && !s.contains('*'),
                None => !h.is_empty() && !h.contains(['*', '/', ' ']),
            }
        }) && self.path.as_ref().is_none_or(|(_, p)| p.starts_with('/'))
    }

    fn conf(&self) -> RouteConf {
        let mut rc: RouteConf = serde_yaml::from_str("upstream: a").expect("a route");
        if !self.hosts.is_empty() {
            rc.matches.host = Some(OneOrMany::Many(self.hosts.clone()));
        }
        match &self.path {
            Some((true, p)) => rc.matches.path = Some(p.clone()),
            Some((false, p)) => rc.matches.path_prefix = Some(p.clone()),
            None => {}
        }
        rc
    }
}

/// The README's host rule, written independently: the port (digits after the last `:`, or
/// what follows `]` of an IPv6 literal) and one trailing dot dropped, ASCII case ignored.
fn reference_host(host: &str) -> String {
    let h = if host.starts_with('[') {
        host.find(']').map_or(host, |i| &host[..=i])
    } else {
        match host.rsplit_once(':') {
            Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
            _ => host,
        }
    };
    h.strip_suffix('.').unwrap_or(h).to_ascii_lowercase()
}

fn reference_host_match(pattern: &str, host: &str) -> bool {
    let p = pattern.trim().to_ascii_lowercase();
    match p.strip_prefix("*.") {
        Some(suffix) => host.len() > suffix.len() + 1 && host.ends_with(&format!(".{suffix}")),
        None => p == host,
    }
}

/// The README's routing rule, written independently: the first route in file order whose
/// host and path both match.
pub fn reference_find(routes: &[RouteSpec], host: &str, path: &str) -> Option<usize> {
    let host = reference_host(host);
    routes.iter().position(|r| {
        (r.hosts.is_empty() || r.hosts.iter().any(|p| reference_host_match(p, &host)))
            && match &r.path {
                None => true,
                Some((true, p)) => path == p,
                Some((false, p)) => path.starts_with(p.as_str()),
            }
    })
}

/// Compiles the valid routes of `routes` (all to pool `a`) and checks `Router::find` on every
/// request against [`reference_find`] (hosts of at most 256 bytes: longer ones are never DNS
/// names, and are only checked not to panic), and against itself with the host's case and
/// port changed.
pub fn router(routes: &[RouteSpec], requests: &[(String, String)]) {
    let routes: Vec<RouteSpec> = routes.iter().filter(|r| r.valid()).cloned().collect();
    let confs: Vec<RouteConf> = routes.iter().map(RouteSpec::conf).collect();
    let pools: HashMap<String, usize> = [("a".to_string(), 0)].into();
    let mut issues = Issues::default();
    let r = Router::compile(&confs, &pools, &Registry::new(), &mut issues);
    assert!(issues.errors.is_empty(), "{:?}\n{routes:?}", issues.errors);
    assert_eq!(r.len(), routes.len());
    for (host, path) in requests {
        let got = r.find(host, path).map(|(i, _)| i);
        assert_eq!(got, r.find(host, path).map(|(i, _)| i), "deterministic");
        if let Some(i) = got {
            assert!(i < r.len());
            assert_eq!(r.get(i).name, format!("routes[{i}]"));
        }
        if host.len() <= 256 {
            assert_eq!(
                got,
                reference_find(&routes, host, path),
                "{host:?} {path:?}\n{routes:#?}"
            );
            let upper = host.to_ascii_uppercase();
            assert_eq!(got, r.find(&upper, path).map(|(i, _)| i), "{upper:?}");
            if !host.starts_with('[') && !host.contains(':') {
                let port = format!("{host}:8080");
                assert_eq!(got, r.find(&port, path).map(|(i, _)| i), "{port:?}");
            }
        }
    }
}

/// Routes and requests from fuzzer text, one per line: `R<host>,<host>...\t<kind><path>`
/// for a route (`=` exact path, `^` prefix, anything else: any path), `<host>\t<path>` for
/// a request.
pub fn router_text(text: &str) {
    let (mut routes, mut requests) = (Vec::new(), Vec::new());
    for line in text.lines().take(256) {
        if let Some(rest) = line.strip_prefix('R') {
            let (hosts, path) = rest.split_once('\t').unwrap_or((rest, ""));
            let hosts = hosts
                .split(',')
                .filter(|h| !h.is_empty())
                .map(String::from)
                .collect();
            let path = match path.chars().next() {
                Some('=') => Some((true, path[1..].to_string())),
                Some('^') => Some((false, path[1..].to_string())),
                _ => None,
            };
            routes.push(RouteSpec { hosts, path });
        } else {
            let (h, p) = line.split_once('\t').unwrap_or((line, "/"));
            requests.push((h.to_string(), p.to_string()));
        }
    }
    router(&routes, &requests);
}

// ---------------------------------------------------------------------------------------
// Socket.IO: sid parameter, node tags, handshake bodies

/// The query helpers on any query: `has_several_sids` counts `sid=` parameters,
/// `is_polling_handshake` means `EIO=`, `transport=polling` and no sid, `sid_param` is the
/// first `sid`, and `strip_sid_tag` changes only the `sid=` parameters (to the untagged sid),
/// leaving every other parameter byte-identical.
pub fn sid_query(path: &str, q: &str) {
    let params: Vec<&str> = q.split('&').collect();
    let sids = params.iter().filter(|kv| kv.starts_with("sid=")).count();
    assert_eq!(affinity::has_several_sids(Some(q)), sids > 1, "{q:?}");
    if affinity::is_polling_handshake(Some(q)) {
        assert_eq!(sids, 0, "{q:?}");
        assert!(params.contains(&"transport=polling"), "{q:?}");
        assert!(params.iter().any(|kv| kv.starts_with("EIO=")), "{q:?}");
    }
    let sid = affinity::sid_param(Some(q));
    if let Some(s) = sid {
        assert!(!s.is_empty());
        let first = params
            .iter()
            .find(|kv| kv.split_once('=').map_or(**kv, |(k, _)| k) == "sid");
        assert_eq!(first.and_then(|kv| kv.strip_prefix("sid=")), Some(s));
    }
    let split = sid.and_then(affinity::split_tag);
    if let Some((base, tag)) = split {
        assert!(affinity::is_tag(tag));
        assert!(!base.is_empty());
        assert_eq!(format!("{base}.{tag}"), sid.unwrap());
    }
    match affinity::strip_sid_tag(path, Some(q)) {
        None => assert!(split.is_none(), "{q:?}"),
        Some(out) => {
            let (base, _) = split.expect("only a tagged sid is stripped");
            let rest = out
                .strip_prefix(path)
                .and_then(|r| r.strip_prefix('?'))
                .expect("path, then the query");
            let new: Vec<&str> = rest.split('&').collect();
            assert_eq!(new.len(), params.len(), "{q:?} -> {out:?}");
            for (old, new) in params.iter().zip(&new) {
                if old.starts_with("sid=") {
                    assert_eq!(*new, format!("sid={base}"), "{q:?} -> {out:?}");
                } else {
                    assert_eq!(old, new, "{q:?} -> {out:?}");
                }
            }
        }
    }
    let _ = affinity::split_tag(q);
    let _ = affinity::is_tag(q);
}

/// Tagging a sid then splitting it gives back the sid and the tag (when the tagged sid fits
/// in `MAX_SID_LEN`); and in a query, stripping the tag gives back the query with the
/// untagged sid, other parameters untouched.
pub fn tag_round_trip(base: &str, tag: &str, before: &[String], after: &[String]) {
    assert!(affinity::is_tag(tag));
    let tagged = format!("{base}.{tag}");
    let split = affinity::split_tag(&tagged);
    if base.is_empty() || tagged.len() > affinity::MAX_SID_LEN {
        assert_eq!(split, None);
        return;
    }
    assert_eq!(split, Some((base, tag)));
    let mut params: Vec<String> = before.to_vec();
    params.push(format!("sid={tagged}"));
    params.extend_from_slice(after);
    let q = params.join("&");
    let odd = |p: &String| p.contains('&') || p.split('=').next() == Some("sid");
    if base.contains('&') || before.iter().any(odd) || after.iter().any(|p| p.contains('&')) {
        sid_query("/socket.io/", &q);
        return;
    }
    let mut want = params.clone();
    want[before.len()] = format!("sid={base}");
    for (i, p) in after.iter().enumerate() {
        if p.starts_with("sid=") {
            want[before.len() + 1 + i] = format!("sid={base}");
        }
    }
    assert_eq!(
        affinity::strip_sid_tag("/socket.io/", Some(&q)),
        Some(format!("/socket.io/?{}", want.join("&")))
    );
    sid_query("/socket.io/", &q);
}

/// The first `"sid":"..."` value of an open packet, as the gateway and a client read it.
fn sid_in_packet(packet: &str) -> Option<&str> {
    const KEY: &str = "\"sid\":\"";
    let start = packet.find(KEY)? + KEY.len();
    let len = packet[start..].find('"')?;
    Some(&packet[start..start + len])
}

/// `tag_handshake` on any body: `None`, or a body that is the same open packet with
/// `.<tag>` after its sid (EIO3: the length prefix grown to match), what follows the packet
/// untouched, a sid that splits back into the backend's sid and the tag, and nothing more
/// to tag (never tagged twice).
pub fn handshake(body: &[u8], tag: &str) {
    assert!(affinity::is_tag(tag), "the gateway tags with node tags");
    let Some(t) = affinity::tag_handshake(body, tag) else {
        return;
    };
    let sid = t.sid.as_str();
    assert!(!sid.is_empty() && sid.len() <= affinity::MAX_SID_LEN);
    assert!(!sid.contains(['.', '\\', '"']), "{sid:?}");
    let text = std::str::from_utf8(body).expect("only UTF-8 is tagged");
    let out = std::str::from_utf8(&t.body).expect("a tagged body is UTF-8");
    let (old_packet, new_packet, old_rest, new_rest) = if text.starts_with('0') {
        let end = text.find('\u{1e}').unwrap_or(text.len());
        let new_end = out.find('\u{1e}').unwrap_or(out.len());
        (&text[..end], &out[..new_end], &text[end..], &out[new_end..])
    } else {
        // EIO3: `<length in characters>:<packet>`, then more packets.
        let at = |s: &str, n: usize| s.char_indices().nth(n).map_or(s.len(), |(i, _)| i);
        let (n, after) = text.split_once(':').expect("EIO3 framing");
        let n: usize = n.parse().expect("EIO3 length");
        let (m, new_after) = out.split_once(':').expect("EIO3 framing kept");
        let m: usize = m.parse().expect("EIO3 length kept");
        assert_eq!(m, n + 1 + tag.chars().count(), "{out:?}");
        let (p, r) = after.split_at(at(after, n));
        let (np, nr) = new_after.split_at(at(new_after, m));
        assert_eq!(np.chars().count(), m, "{out:?}");
        (p, np, r, nr)
    };
    assert_eq!(
        old_rest, new_rest,
        "what follows the open packet is untouched"
    );
    assert!(new_packet.starts_with("0{"), "{new_packet:?}");
    let old_kv = format!("\"sid\":\"{sid}\"");
    let at = old_packet.find("\"sid\":\"").expect("the sid key");
    assert!(old_packet[at..].starts_with(&old_kv), "{old_packet:?}");
    assert_eq!(
        new_packet,
        format!(
            "{}\"sid\":\"{sid}.{tag}\"{}",
            &old_packet[..at],
            &old_packet[at + old_kv.len()..]
        )
    );
    let found = sid_in_packet(new_packet).expect("a reader finds the sid");
    assert_eq!(found, format!("{sid}.{tag}"));
    assert_eq!(
        affinity::split_tag(found),
        Some((sid, tag)),
        "a tagged sid splits back (it comes back as ?sid={found})"
    );
    assert_eq!(
        affinity::tag_handshake(&t.body, tag),
        None,
        "never tagged twice"
    );
}

/// A well-formed engine.io open packet (`0` then JSON with a first-level `sid`), framed as
/// EIO4 (`rest` after a 0x1e) or EIO3 (`<length>:<packet><rest>`): the tagged body's packet
/// parses as JSON with `sid` = `<sid>.<tag>` and every other field unchanged, and the
/// heartbeat is pingInterval + pingTimeout (absent when over a day). Sids that cannot be
/// tagged are left alone.
pub fn handshake_json(packet: &str, tag: &str, eio3: bool, rest: &str) {
    let body = match (eio3, rest) {
        (true, _) => format!("{}:{packet}{rest}", packet.chars().count()),
        (false, "") => packet.to_string(),
        (false, _) => format!("{packet}\u{1e}{rest}"),
    };
    handshake(body.as_bytes(), tag);
    let old: serde_json::Value = serde_json::from_str(&packet[1..]).expect("test packet");
    let sid = old["sid"].as_str().expect("a sid").to_string();
    let taggable = !sid.is_empty()
        && sid.len() + 1 + tag.len() <= affinity::MAX_SID_LEN
        && !sid.contains(['.', '\\', '"'])
        && !sid.chars().any(char::is_control);
    let Some(t) = affinity::tag_handshake(body.as_bytes(), tag) else {
        assert!(!taggable, "{body:?} not tagged");
        return;
    };
    assert!(taggable, "{body:?} tagged");
    assert_eq!(t.sid, sid);
    let out = String::from_utf8(t.body).unwrap();
    let new_packet = if eio3 {
        let (n, p) = out.split_once(':').unwrap();
        let p = p.strip_suffix(rest).expect("the rest kept");
        assert_eq!(n.parse::<usize>().unwrap(), p.chars().count());
        p.to_string()
    } else {
        out.split('\u{1e}').next().unwrap().to_string()
    };
    let json = new_packet.strip_prefix('0').expect("open packet");
    let mut new: serde_json::Value = serde_json::from_str(json).expect("JSON");
    assert_eq!(new["sid"], format!("{sid}.{tag}"));
    new["sid"] = old["sid"].clone();
    assert_eq!(new, old, "only the sid changed");
    let beat = old["pingInterval"]
        .as_u64()
        .zip(old["pingTimeout"].as_u64());
    let want = beat
        .and_then(|(a, b)| a.checked_add(b))
        .filter(|&h| h <= affinity::MAX_HEARTBEAT_MS);
    assert_eq!(t.heartbeat_ms, want, "pingInterval + pingTimeout");
}

// ---------------------------------------------------------------------------------------
// Sticky cookie

fn request() -> RequestHeader {
    RequestHeader::build("GET", b"/", None).expect("a request")
}

/// `proxy::cookie` on any Cookie header lines: never panics, and a value found is trimmed
/// and holds no `;`. A pair put first on the first line is the one found.
pub fn cookie_lines(lines: &[Vec<u8>], name: &str) {
    let mut req = request();
    for l in lines {
        if let Ok(v) = HeaderValue::from_bytes(l) {
            req.append_header("Cookie", v).unwrap();
        }
    }
    if let Some(v) = gateway::proxy::cookie(&req, name) {
        assert_eq!(v, v.trim());
        assert!(!v.contains(';'));
    }
    let name_ok = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if name_ok {
        let mut req = request();
        req.append_header("Cookie", format!("{name}=v1; {name}=v2"))
            .unwrap();
        for l in lines {
            if let Ok(v) = HeaderValue::from_bytes(l) {
                req.append_header("Cookie", v).unwrap();
            }
        }
        assert_eq!(gateway::proxy::cookie(&req, name), Some("v1"));
    }
}

/// The sticky cookie round trip: a pool of `backends` with `affinity.cookie` (and Socket.IO);
/// the `Set-Cookie` naming backend `idx` carries the configured attributes, and sent back
/// among `others` it is found (`proxy::cookie`), is a tag (`affinity::is_tag`) and names `idx`
/// again (`Affinity::backend_by_tag`, `affinity::pin`). A cookie naming no backend's tag
/// names none. The same tag in a Socket.IO sid pins the request to `idx` too.
#[allow(clippy::too_many_arguments)]
pub fn sticky_cookie(
    backends: usize,
    name: &str,
    same_site: &str,
    secret: Option<&str>,
    idx: usize,
    tls: bool,
    others: &[(String, String)],
    position: usize,
    foreign: &str,
) {
    let servers: Vec<String> = (0..backends.max(1))
        .map(|i| format!("{{ address: \"127.0.0.1:{}\" }}", 3000 + i))
        .collect();
    let secret = secret.map_or(String::new(), |s| format!(", secret: {s:?}"));
    let yaml = format!(
        "listeners: [ {{ address: \"127.0.0.1:8080\" }} ]\n\
         upstreams:\n  p:\n    servers: [ {} ]\n    \
         affinity: {{ socketio: true, cookie: {{ name: {name:?}, same_site: {same_site:?} }}{secret} }}\n\
         routes: [ {{ upstream: p }} ]\n",
        servers.join(", ")
    );
    let cfg = Config::from_yaml(&yaml).expect(&yaml);
    let rt = Runtime::compile(&cfg).unwrap_or_else(|e| panic!("{e}\n{yaml}"));
    let pool = rt.pools[0].load();
    let aff = pool.affinity.as_ref().expect("affinity");
    let sticky = aff.cookie.as_ref().expect("a sticky cookie");
    assert_eq!(sticky.name, name);
    let idx = idx % pool.backends.len();
    let set = sticky.set_cookie(idx, tls).to_str().expect("ASCII");
    let mut attrs = set.split("; ");
    let pair = attrs.next().unwrap();
    let attrs: Vec<&str> = attrs.collect();
    assert_eq!(pair, format!("{name}={}", pool.backends[idx].tag));
    assert!(attrs.contains(&"Path=/"), "{set}");
    assert!(attrs.contains(&"HttpOnly"), "{set}");
    assert!(
        attrs.contains(&format!("SameSite={same_site}").as_str()),
        "{set}"
    );
    assert_eq!(
        attrs.contains(&"Secure"),
        tls || same_site == "None",
        "{set}"
    );
    // Sent back by a browser, among other cookies (well-formed ones, with other names).
    let mut pairs: Vec<String> = others
        .iter()
        .filter(|(k, v)| {
            k.trim() != name
                && !k.contains(['=', ';'])
                && !v.contains(';')
                && k.bytes()
                    .chain(v.bytes())
                    .all(|b| (0x20..0x7f).contains(&b))
        })
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    pairs.insert(position % (pairs.len() + 1), pair.to_string());
    let mut req = request();
    req.append_header("Cookie", pairs.join("; ")).unwrap();
    let value = gateway::proxy::cookie(&req, name).expect("the cookie");
    assert!(affinity::is_tag(value), "{value:?}");
    assert_eq!(aff.backend_by_tag(value), Some(idx));
    let pin = affinity::pin(aff, &req, "/", |_| true, || 0, "p").expect("no refusal");
    assert_eq!((pin.cookie_backend, pin.backend), (Some(idx), Some(idx)));
    let pin = affinity::pin(aff, &req, "/", |_| false, || 0, "p").expect("no refusal");
    assert_eq!(
        (pin.cookie_backend, pin.backend),
        (None, None),
        "a dead node's cookie"
    );
    let tags: Vec<&str> = pool.backends.iter().map(|b| b.tag.as_str()).collect();
    if !tags.contains(&foreign) {
        assert_eq!(aff.backend_by_tag(foreign), None);
    }
    // The node's tag in a Socket.IO sid: pinned to `idx`, the tag to be stripped; refused
    // when the node is down or the query names two sids.
    let tag = &pool.backends[idx].tag;
    let uri = format!("/socket.io/?EIO=4&transport=polling&sid=kB5Oqd_dgt28MwpTAAAA.{tag}");
    let req = RequestHeader::build("GET", uri.as_bytes(), None).unwrap();
    let pin = affinity::pin(aff, &req, "/socket.io/", |_| true, || 0, "p").expect("pinned");
    assert_eq!(
        (pin.backend, pin.by_sid, pin.strip_tag),
        (Some(idx), true, true)
    );
    assert!(affinity::pin(aff, &req, "/socket.io/", |_| false, || 0, "p").is_err());
    let two = format!("{uri}&sid=x");
    let req = RequestHeader::build("GET", two.as_bytes(), None).unwrap();
    assert!(affinity::pin(aff, &req, "/socket.io/", |_| true, || 0, "p").is_err());
}

// ---------------------------------------------------------------------------------------
// X-Forwarded-For and Forwarded

/// Trusted proxies of the forwarded checks.
pub const TRUSTED: &[&str] = &["10.0.0.0/8", "192.168.0.0/16", "fd00::/8"];

/// The policy with [`TRUSTED`] as trusted proxies.
pub fn policy(rfc7239: bool, xff: XffMode) -> Forwarded {
    let conf = ForwardedConf {
        trusted_proxies: TRUSTED.iter().map(|s| s.to_string()).collect(),
        x_forwarded_for: xff,
        rfc7239,
        ..ForwardedConf::default()
    };
    let mut issues = Issues::default();
    let f = Forwarded::compile(&conf, &mut issues);
    assert!(issues.errors.is_empty());
    f
}

fn with_headers(headers: &[(&str, Vec<u8>)]) -> RequestHeader {
    let mut req = request();
    req.insert_header("Host", "example.com").unwrap();
    for (n, v) in headers {
        if let Ok(v) = HeaderValue::from_bytes(v) {
            req.append_header(n.to_string(), v).unwrap();
        }
    }
    req
}

/// The text form the gateway writes for an address (IPv4-mapped IPv6 as IPv4).
fn shown(ip: IpAddr) -> String {
    match ip {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map_or(v6.to_string(), |v4| v4.to_string()),
        v4 => v4.to_string(),
    }
}

/// `Forwarded::apply` on `req`, and `apply_on_wire` on a copy: both put the same header lines
/// on the wire (sorted: a replaced header keeps its place in the map, comes last on the wire).
fn apply_both(
    f: &Forwarded,
    req: &mut RequestHeader,
    peer: Option<IpAddr>,
    tls: bool,
    port: Option<u16>,
) {
    let mut on_wire = req.clone();
    f.apply_on_wire(&mut on_wire, peer, tls, port);
    f.apply(req, peer, tls, port);
    let lines = |r: &RequestHeader| {
        let mut buf = Vec::new();
        r.header_to_h1_wire(&mut buf);
        let mut lines: Vec<Vec<u8>> = buf.split(|&c| c == b'\n').map(|l| l.to_vec()).collect();
        lines.sort();
        lines
    };
    assert_eq!(
        lines(&on_wire),
        lines(req),
        "apply_on_wire and apply differ"
    );
}

/// From a peer that is not a trusted proxy, whatever it sends: `client_ip` is the peer, and
/// after `apply` the upstream request's `X-Forwarded-For` and `X-Real-IP` are the peer and
/// no other client-address header it sent is left.
pub fn untrusted_peer(peer: IpAddr, headers: &[(&str, Vec<u8>)], rfc7239: bool) {
    for xff in [XffMode::Append, XffMode::Replace] {
        let f = policy(rfc7239, xff);
        if f.is_trusted(peer) {
            return;
        }
        let mut req = with_headers(headers);
        assert_eq!(f.client_ip(peer, &req), peer);
        apply_both(&f, &mut req, Some(peer), false, Some(8080));
        let get = |n: &str| req.headers.get(n).map(|v| v.to_str().unwrap_or("<bytes>"));
        let me = shown(peer);
        assert_eq!(get("x-forwarded-for"), Some(me.as_str()));
        assert_eq!(get("x-real-ip"), Some(me.as_str()));
        for spoofable in [
            "true-client-ip",
            "x-client-ip",
            "cf-connecting-ip",
            "client-ip",
            "x_real_ip",
            "x_forwarded_for",
        ] {
            assert_eq!(get(spoofable), None, "{spoofable} left");
        }
        if rfc7239 {
            let fwd = get("forwarded").expect("Forwarded written");
            assert!(!fwd.contains(','), "one element: {fwd}");
            assert!(fwd.starts_with("for="), "{fwd}");
        } else {
            assert_eq!(get("forwarded"), None);
        }
        assert_eq!(f.client_ip(peer, &req), peer);
    }
}

/// From a trusted proxy that appended the client's hop to whatever the client sent: the
/// client address found is the client's (or, when a header line does not parse, a trusted
/// address): never an address the client made up. `lines` are what the client sent (several
/// header lines), `hops` the trusted proxies after the client (appended in order, the last
/// one being the peer's own view).
pub fn trusted_chain(
    client: IpAddr,
    hops: &[IpAddr],
    peer: IpAddr,
    lines: &[Vec<u8>],
    same_line: bool,
) {
    for rfc7239 in [false, true] {
        let f = policy(rfc7239, XffMode::Append);
        assert!(f.is_trusted(peer) && hops.iter().all(|h| f.is_trusted(*h)));
        if f.is_trusted(client) {
            return;
        }
        let (name, own): (&str, Vec<String>) = if rfc7239 {
            let elem = |ip: IpAddr| match ip {
                IpAddr::V6(v6) => format!("for=\"[{v6}]:4711\";proto=https"),
                IpAddr::V4(v4) => format!("for={v4};by=\"[::1]\""),
            };
            (
                "Forwarded",
                std::iter::once(client)
                    .chain(hops.iter().copied())
                    .map(elem)
                    .collect(),
            )
        } else {
            (
                "X-Forwarded-For",
                std::iter::once(client)
                    .chain(hops.iter().copied())
                    .map(|ip| ip.to_string())
                    .collect(),
            )
        };
        let own = own.join(", ");
        // What a client can send: valid field values (a proxy passes nothing else on).
        let mut headers: Vec<(&str, Vec<u8>)> = lines
            .iter()
            .filter(|l| HeaderValue::from_bytes(l).is_ok())
            .map(|l| (name, l.clone()))
            .collect();
        let clean = headers
            .iter()
            .all(|(_, l)| l.iter().all(|&b| (0x20..0x7f).contains(&b)));
        if same_line && !headers.is_empty() {
            let last = headers.last_mut().unwrap();
            last.1.extend_from_slice(b", ");
            last.1.extend_from_slice(own.as_bytes());
        } else {
            headers.push((name, own.into_bytes()));
        }
        let req = with_headers(&headers);
        let got = f.client_ip(peer, &req);
        assert!(
            got == client || f.is_trusted(got),
            "{got} from {headers:?} (rfc7239 {rfc7239})"
        );
        if !same_line || (!rfc7239 && clean) {
            // The proxies' own line(s) decide, whatever came before.
            assert_eq!(got, client, "from {headers:?} (rfc7239 {rfc7239})");
        }
    }
}

/// The addresses written in `text`: each run of hex digits, `:` and `.` read as an address,
/// or as an IPv4 address with a port.
fn written_addresses(text: &str) -> Vec<IpAddr> {
    text.split(|c: char| !(c.is_ascii_hexdigit() || c == ':' || c == '.'))
        .filter_map(|run| {
            run.parse::<IpAddr>().ok().or_else(|| {
                let (a, _) = run.rsplit_once(':')?;
                a.parse::<std::net::Ipv4Addr>().ok().map(IpAddr::V4)
            })
        })
        .collect()
}

/// `client_ip` from a trusted peer on any `X-Forwarded-For` / `Forwarded` lines never panics
/// and returns the peer, a trusted address or an address written in the headers (it never
/// makes one up); `apply` on them never panics.
pub fn any_forwarded_lines(peer: IpAddr, xff: &[Vec<u8>], fwd: &[Vec<u8>]) {
    for rfc7239 in [false, true] {
        let f = policy(rfc7239, XffMode::Append);
        let mut headers: Vec<(&str, Vec<u8>)> = Vec::new();
        headers.extend(xff.iter().map(|l| ("X-Forwarded-For", l.clone())));
        headers.extend(fwd.iter().map(|l| ("Forwarded", l.clone())));
        let mut req = with_headers(&headers);
        let got = f.client_ip(peer, &req);
        if got != peer && !f.is_trusted(got) {
            let all: Vec<_> = headers
                .iter()
                .map(|(_, v)| String::from_utf8_lossy(v))
                .collect();
            let all = all.join("\n");
            assert!(
                written_addresses(&all).contains(&got),
                "{got} not in {all:?}"
            );
        }
        apply_both(&f, &mut req, Some(peer), true, None);
        let _ = f.client_ip(peer, &req);
    }
}

// ---------------------------------------------------------------------------------------
// PROXY protocol header

/// Any bytes at the start of a connection: `parse` never panics; a header it finds fits the
/// limits, is the same whatever follows it, and every shorter prefix of it waits for more; an
/// incomplete header is under the limits; a refused one stays refused whatever comes next (so
/// closing at once loses nothing).
pub fn proxy_header_bytes(data: &[u8]) {
    use gateway::proxy_protocol::{parse, Parsed, V1_MAX, V2_MAX_PAYLOAD};
    match parse(data) {
        Parsed::Header { len, source } => {
            assert!(len <= data.len() && len <= 16 + V2_MAX_PAYLOAD, "{len}");
            if data.starts_with(b"PROXY") {
                assert!(len <= V1_MAX);
            }
            let mut more = data[..len].to_vec();
            more.extend_from_slice(b"GET / HTTP/1.1\r\n\r\n");
            assert_eq!(parse(&more), Parsed::Header { len, source });
            for i in 0..len {
                assert_eq!(parse(&data[..i]), Parsed::Incomplete, "prefix {i} of {len}");
            }
        }
        Parsed::Incomplete => assert!(data.len() < 16 + V2_MAX_PAYLOAD),
        Parsed::Invalid(_) => {
            let mut more = data.to_vec();
            more.extend_from_slice(b"\r\n\x00\x00");
            assert!(matches!(parse(&more), Parsed::Invalid(_)));
        }
    }
}

/// `encode` then `parse` (with the connection's first bytes behind the header) gives the
/// source back (IPv4-mapped when the two families differ).
pub fn proxy_header_round_trip(v2: bool, src: SocketAddr, dst: SocketAddr, rest: &[u8]) {
    use gateway::proxy_protocol::{encode, parse, Parsed, Version};
    let header = encode(if v2 { Version::V2 } else { Version::V1 }, src, dst);
    let expected = match (src, dst) {
        (SocketAddr::V4(_), SocketAddr::V4(_)) | (SocketAddr::V6(_), SocketAddr::V6(_)) => src,
        _ => SocketAddr::new(
            match src.ip() {
                IpAddr::V4(v4) => IpAddr::V6(v4.to_ipv6_mapped()),
                v6 => v6,
            },
            src.port(),
        ),
    };
    let mut wire = header.clone();
    wire.extend_from_slice(rest);
    assert_eq!(
        parse(&wire),
        Parsed::Header {
            len: header.len(),
            source: Some(expected)
        }
    );
}
