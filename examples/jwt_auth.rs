//! A custom gateway binary with a `jwt_auth` filter: requests need an
//! `Authorization: Bearer <token>` whose token is a JWT signed with HS256 by the shared
//! `secret` (checked with the `jsonwebtoken` crate), not expired, not before its `nbf`, and,
//! when configured, from `issuer` and for `audience`. Otherwise: 401 before any backend is
//! chosen, with `WWW-Authenticate: Bearer error="invalid_token"` (plain `Bearer` when the
//! request had no token, as RFC 6750 asks). The backend gets the claims named in
//! `claim_header` as headers, and not the token.
//!
//! ```yaml
//! routes:
//!   - match: { path_prefix: /api/ }
//!     upstream: api
//!     filters:
//!       - name: jwt_auth
//!         config:
//!           secret: "change-me-to-32-bytes-or-more-of-random-data"   # at least 32 bytes
//!           issuer: https://auth.example.com     # optional: `iss` must be this (and present)
//!           audience: my-api                     # optional: `aud` must contain this
//!           leeway: 30s                          # optional (30s): clock skew allowed on exp / nbf
//!           claim_header: { sub: X-User, role: X-Role }   # optional: claim -> upstream header
//! ```
//! Run: `cargo run --example jwt_auth -- -c my.yaml` (the same flags as `gateway`; `-t` checks
//! the `jwt_auth` config too, e.g. `routes[0].filters[0].config: secret: must be at least 32
//! bytes for HS256 (got 6)`).
//!
//! - `exp` is required; `nbf` is checked when present; `iss` / `aud` are required and checked
//!   when `issuer` / `audience` are set (a token carrying an `aud` is refused when no
//!   `audience` is configured, as RFC 7519 says). Only `alg: HS256` is accepted.
//! - The claims of an accepted token are put in the request's extensions as [`JwtClaims`], for
//!   the filters after this one.
//! - `claim_header`: a string claim is sent as is, a number or boolean as its text, an array or
//!   object as compact JSON. The headers are always removed from what the client sent first,
//!   so a client cannot choose its `X-User` by sending one with a token that has no `sub`.
//! - The `Authorization` header is not sent to the backend.

use gateway::config::Dur;
use gateway::prelude::*;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::process::ExitCode;

/// `config:` of a `jwt_auth` entry.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JwtAuthConfig {
    /// The HS256 key, as text (at least 32 bytes: a 256-bit key).
    secret: String,
    /// Required `iss`, when set.
    #[serde(default)]
    issuer: Option<String>,
    /// Required member of `aud`, when set.
    #[serde(default)]
    audience: Option<String>,
    /// Clock skew allowed when checking `exp` and `nbf` (default 30s).
    #[serde(default)]
    leeway: Option<Dur>,
    /// Claim name -> header sent to the backend with its value.
    #[serde(default)]
    claim_header: BTreeMap<String, String>,
}

/// The claims of the request's validated token, in the extensions (for later filters).
#[derive(Debug, Clone)]
pub struct JwtClaims(pub Map<String, Value>);

/// Checks the bearer token; see the module docs.
struct JwtAuth {
    key: DecodingKey,
    validation: Validation,
    /// (claim, upstream header), from `claim_header`.
    claim_headers: Vec<(String, HeaderName)>,
}

const MIN_SECRET: usize = 32;

#[async_trait]
impl Filter for JwtAuth {
    type Config = JwtAuthConfig;
    type State = ();

    fn new(config: JwtAuthConfig) -> Result<Self, String> {
        if config.secret.len() < MIN_SECRET {
            return Err(format!(
                "secret: must be at least {MIN_SECRET} bytes for HS256 (got {})",
                config.secret.len()
            ));
        }
        let key = DecodingKey::from_secret(config.secret.as_bytes())
            .map_err(|e| format!("secret: {e}"))?;

        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = config.leeway.map_or(30, |d| d.0.as_secs());
        validation.validate_exp = true;
        validation.validate_nbf = true;
        let mut required = vec!["exp"];
        if let Some(iss) = &config.issuer {
            validation.set_issuer(&[iss]);
            required.push("iss");
        }
        if let Some(aud) = &config.audience {
            validation.set_audience(&[aud]);
            required.push("aud");
        }
        validation.set_required_spec_claims(&required);

        let mut claim_headers = Vec::new();
        for (claim, wanted) in config.claim_header {
            let name = HeaderName::from_bytes(wanted.as_bytes())
                .map_err(|_| format!("claim_header.{claim}: invalid header name {wanted:?}"))?;
            if name == header::AUTHORIZATION || name == header::HOST {
                return Err(format!(
                    "claim_header.{claim}: {wanted} cannot carry a claim"
                ));
            }
            if claim_headers.iter().any(|(_, n)| *n == name) {
                return Err(format!("claim_header.{claim}: {wanted} is used twice"));
            }
            claim_headers.push((claim, name));
        }
        Ok(JwtAuth {
            key,
            validation,
            claim_headers,
        })
    }

    async fn request(&self, req: &mut RequestCtx<'_>, _: &mut ()) -> Result<Flow> {
        let Some(token) = bearer_token(req.req_header()) else {
            let challenge = (header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            return req
                .respond(401, &[challenge], "bearer token required\n")
                .await;
        };
        match jsonwebtoken::decode::<Map<String, Value>>(token, &self.key, &self.validation) {
            Ok(data) => {
                req.extensions_mut().insert(JwtClaims(data.claims));
                Ok(Flow::Continue)
            }
            Err(e) => {
                log::info!("{}: bearer token refused: {e}", req.route());
                let challenge = match e.kind() {
                    ErrorKind::ExpiredSignature => HeaderValue::from_static(
                        r#"Bearer error="invalid_token", error_description="the token has expired""#,
                    ),
                    _ => HeaderValue::from_static(r#"Bearer error="invalid_token""#),
                };
                let challenge = (header::WWW_AUTHENTICATE, challenge);
                req.respond(401, &[challenge], "invalid bearer token\n")
                    .await
            }
        }
    }

    async fn upstream_request(
        &self,
        req: &mut RequestCtx<'_>,
        upstream: &mut RequestHeader,
        _: &mut (),
    ) -> Result<()> {
        upstream.remove_header(&header::AUTHORIZATION);
        let claims = req.extensions().get::<JwtClaims>();
        for (claim, name) in &self.claim_headers {
            // Never pass on a client's own value for a claim header.
            upstream.remove_header(name);
            let Some(value) = claims.and_then(|c| c.0.get(claim)) else {
                continue;
            };
            let text = match value {
                Value::String(s) => s.clone(),
                Value::Null => continue,
                other => other.to_string(),
            };
            match HeaderValue::from_bytes(text.as_bytes()) {
                Ok(v) => {
                    upstream.insert_header(name.clone(), v)?;
                }
                Err(_) => log::warn!(
                    "{}: claim {claim} cannot be sent as {name} (control characters)",
                    req.route()
                ),
            }
        }
        Ok(())
    }
}

/// The token of `Authorization: Bearer <token>` (the scheme is case-insensitive).
fn bearer_token(req: &RequestHeader) -> Option<&str> {
    let value = req.headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

fn main() -> ExitCode {
    let mut registry = Registry::with_builtins();
    registry.register::<JwtAuth>("jwt_auth");
    gateway::run_with(registry)
}
