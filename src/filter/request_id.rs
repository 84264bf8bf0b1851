//! Built-in `request_id` filter: gives every request an `X-Request-Id` (keeping a valid one
//! from the client unless `trust_incoming: false`), sends it upstream and echoes it back.

use super::Filter;
use crate::proxy::ctx::Ctx;
use async_trait::async_trait;
use http::header::{HeaderName, HeaderValue};
use pingora_core::Result;
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::Session;
use serde::Deserialize;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Config of the `request_id` filter.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct Conf {
    header: String,
    trust_incoming: bool,
}

impl Default for Conf {
    fn default() -> Self {
        Conf {
            header: "x-request-id".into(),
            trust_incoming: true,
        }
    }
}

/// The `request_id` filter.
pub struct RequestId {
    header: HeaderName,
    trust_incoming: bool,
    prefix: u64,
    counter: AtomicU64,
}

impl RequestId {
    /// Builds the filter from its YAML config (`header`, `trust_incoming`).
    pub fn from_config(v: &serde_yaml::Value) -> Result<RequestId, String> {
        let conf: Conf = if v.is_null() {
            Conf::default()
        } else {
            serde_yaml::from_value(v.clone()).map_err(|e| e.to_string())?
        };
        let header = HeaderName::try_from(conf.header.as_str())
            .map_err(|_| format!("header: invalid header name \"{}\"", conf.header))?;
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        let prefix = crate::upstream::fnv1a(&(seed ^ std::process::id() as u64).to_le_bytes(), 1);
        Ok(RequestId {
            header,
            trust_incoming: conf.trust_incoming,
            prefix,
            counter: AtomicU64::new(0),
        })
    }

    fn valid(v: &HeaderValue) -> bool {
        let b = v.as_bytes();
        !b.is_empty()
            && b.len() <= 128
            && b.iter()
                .all(|c| c.is_ascii_alphanumeric() || b"-_.:".contains(c))
    }
}

#[async_trait]
impl Filter for RequestId {
    async fn upstream_request(
        &self,
        session: &mut Session,
        req: &mut RequestHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        let incoming = session
            .req_header()
            .headers
            .get(&self.header)
            .filter(|v| self.trust_incoming && Self::valid(v))
            .cloned();
        let id = match incoming {
            Some(v) => v,
            None => {
                let n = self.counter.fetch_add(1, Relaxed);
                HeaderValue::try_from(format!("{:016x}-{n:x}", self.prefix))
                    .expect("hex is a valid header value")
            }
        };
        req.insert_header(self.header.clone(), id.clone())?;
        ctx.request_id = Some(id);
        Ok(())
    }

    async fn response(
        &self,
        _session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        if let Some(id) = &ctx.request_id {
            resp.insert_header(self.header.clone(), id.clone())?;
        }
        Ok(())
    }
}
