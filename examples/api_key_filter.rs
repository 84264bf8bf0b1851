//! A custom gateway binary with one extra Rust filter, `api_key`: requests without a valid
//! `X-Api-Key` get 401 before any backend is chosen, and the backend learns the key's owner.
//! With `rate_limit: { rate: 10, key: filter }` on the route, each owner has their own limit.
//!
//! ```yaml
//! routes:
//!   - match: { path_prefix: /api/ }
//!     upstream: api
//!     filters:
//!       - { name: api_key, config: { keys: { k-123: alice } } }
//! ```
//! Run: `cargo run --example api_key_filter -- -c my.yaml` (the same flags as `gateway`;
//! `-t` checks the `api_key` config too, e.g.
//! `routes[0].filters[0].config.keys: invalid type: sequence, expected a map`).

use gateway::prelude::*;
use serde::Deserialize;
use std::collections::HashMap;

/// `config:` of an `api_key` entry.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ApiKeyConfig {
    /// Accepted keys, each with its owner's name.
    keys: HashMap<String, String>,
}

/// Lets through requests whose `X-Api-Key` is one of `keys`; tells the backend who it is.
struct ApiKey {
    keys: HashMap<String, String>,
}

/// Per request: the owner of the key that `request` accepted.
#[derive(Default)]
struct Owner(Option<String>);

#[async_trait]
impl Filter for ApiKey {
    type Config = ApiKeyConfig;
    type State = Owner;

    fn new(config: ApiKeyConfig) -> Result<Self, String> {
        if config.keys.is_empty() {
            return Err("keys: needs at least one key".into());
        }
        Ok(ApiKey { keys: config.keys })
    }

    async fn request(&self, req: &mut RequestCtx<'_>, owner: &mut Owner) -> Result<Flow> {
        let key = req
            .req_header()
            .headers
            .get("x-api-key")
            .and_then(|v| v.to_str().ok());
        if let Some(name) = key.and_then(|k| self.keys.get(k)) {
            owner.0 = Some(name.clone());
            // A route's `rate_limit: { ..., key: filter }` then counts per key owner.
            req.extensions_mut().insert(RateLimitKey(name.clone()));
            return Ok(Flow::Continue);
        }
        let challenge = (header::WWW_AUTHENTICATE, HeaderValue::from_static("ApiKey"));
        req.respond(401, &[challenge], "invalid API key\r\n").await
    }

    async fn upstream_request(
        &self,
        _req: &mut RequestCtx<'_>,
        upstream: &mut RequestHeader,
        owner: &mut Owner,
    ) -> Result<()> {
        if let Some(name) = &owner.0 {
            upstream.insert_header("X-Api-User", name.as_str())?;
        }
        upstream.remove_header("x-api-key");
        Ok(())
    }
}

fn main() -> std::process::ExitCode {
    let mut registry = Registry::with_builtins();
    registry.register::<ApiKey>("api_key");
    gateway::run_with(registry)
}
