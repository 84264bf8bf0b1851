//! A custom gateway binary with one extra Rust filter, `api_key`: requests without a valid
//! `X-Api-Key` get 401 before any backend is chosen, and the backend learns the key's owner.
//!
//! ```yaml
//! routes:
//!   - match: { path_prefix: /api/ }
//!     upstream: api
//!     filters:
//!       - { name: api_key, config: { keys: { k-123: alice } } }
//! ```
//! Run: `cargo run --example api_key_filter -- -c my.yaml` (the same flags as `gateway`).

use gateway::prelude::*;
use std::collections::HashMap;
use std::sync::Arc;

/// Lets through requests whose `X-Api-Key` is one of `keys`; tells the backend who it is.
struct ApiKey {
    keys: HashMap<String, String>,
}

#[async_trait]
impl Filter for ApiKey {
    async fn request(&self, session: &mut Session, _ctx: &mut Ctx) -> Result<bool> {
        let key = session
            .req_header()
            .headers
            .get("x-api-key")
            .and_then(|v| v.to_str().ok());
        if key.is_some_and(|k| self.keys.contains_key(k)) {
            return Ok(false);
        }
        let mut resp = ResponseHeader::build(401, Some(2))?;
        resp.insert_header("WWW-Authenticate", "ApiKey")?;
        resp.insert_header("Content-Length", "17")?;
        session.write_response_header(Box::new(resp), false).await?;
        session
            .write_response_body(
                Some(bytes::Bytes::from_static(b"invalid API key\r\n")),
                true,
            )
            .await?;
        Ok(true)
    }

    async fn upstream_request(
        &self,
        session: &mut Session,
        req: &mut RequestHeader,
        _ctx: &mut Ctx,
    ) -> Result<()> {
        let owner = session
            .req_header()
            .headers
            .get("x-api-key")
            .and_then(|v| v.to_str().ok())
            .and_then(|k| self.keys.get(k));
        if let Some(owner) = owner {
            req.insert_header("X-Api-User", owner.as_str())?;
        }
        req.remove_header("x-api-key");
        Ok(())
    }
}

fn main() -> std::process::ExitCode {
    let mut registry = Registry::new();
    registry.register("api_key", |config| {
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Conf {
            keys: HashMap<String, String>,
        }
        let conf: Conf = serde_yaml::from_value(config.clone()).map_err(|e| e.to_string())?;
        if conf.keys.is_empty() {
            return Err("keys: needs at least one key".into());
        }
        Ok(Arc::new(ApiKey { keys: conf.keys }) as Arc<dyn Filter>)
    });
    gateway::run_with(registry)
}
