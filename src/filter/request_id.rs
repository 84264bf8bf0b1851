//! Built-in `request_id` filter: gives every request an id (keeping a valid one from the
//! client unless `trust_incoming: false`), puts it in the request's extensions as a
//! [`RequestId`] (the access log shows it as `rid=`), sends it upstream and echoes it back.

use super::{Filter, Flow, RequestCtx};
use async_trait::async_trait;
use http::header::{HeaderName, HeaderValue};
use pingora_core::Result;
use pingora_http::{RequestHeader, ResponseHeader};
use serde::Deserialize;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// The id of a request, in its [extensions](RequestCtx::extensions): set by the `request_id`
/// filter in its `request` phase, readable by the filters after it and shown by the access
/// log as `rid=<id>`. Another filter may put one there too (its own id scheme).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestId(pub HeaderValue);

/// Config of the `request_id` filter.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RequestIdConfig {
    /// The header carrying the id, both ways (`x-request-id`).
    pub header: String,
    /// Keep a valid id sent by the client (1 to 128 of `A-Z a-z 0-9 - _ . :`) (`true`).
    pub trust_incoming: bool,
}

impl Default for RequestIdConfig {
    fn default() -> Self {
        RequestIdConfig {
            header: "x-request-id".into(),
            trust_incoming: true,
        }
    }
}

/// The `request_id` filter ([`Registry::with_builtins`](super::Registry::with_builtins)).
pub struct RequestIdFilter {
    header: HeaderName,
    trust_incoming: bool,
    prefix: u64,
    counter: AtomicU64,
}

impl RequestIdFilter {
    fn valid(v: &HeaderValue) -> bool {
        let b = v.as_bytes();
        !b.is_empty()
            && b.len() <= 128
            && b.iter()
                .all(|c| c.is_ascii_alphanumeric() || b"-_.:".contains(c))
    }

    /// The client's id when trusted and valid, else a new one: `<process prefix>-<counter>`.
    fn id_for(&self, req: &RequestHeader) -> HeaderValue {
        let incoming = req
            .headers
            .get(&self.header)
            .filter(|v| self.trust_incoming && Self::valid(v));
        match incoming {
            Some(v) => v.clone(),
            None => {
                let n = self.counter.fetch_add(1, Relaxed);
                HeaderValue::try_from(format!("{:016x}-{n:x}", self.prefix))
                    .expect("hex is a valid header value")
            }
        }
    }
}

#[async_trait]
impl Filter for RequestIdFilter {
    type Config = RequestIdConfig;
    type State = ();

    fn new(conf: RequestIdConfig) -> std::result::Result<Self, String> {
        let header = HeaderName::try_from(conf.header.as_str())
            .map_err(|_| format!("header: invalid header name \"{}\"", conf.header))?;
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        let prefix = crate::util::fnv1a(&(seed ^ std::process::id() as u64).to_le_bytes(), 1);
        Ok(RequestIdFilter {
            header,
            trust_incoming: conf.trust_incoming,
            prefix,
            counter: AtomicU64::new(0),
        })
    }

    async fn request(&self, req: &mut RequestCtx<'_>, _: &mut ()) -> Result<Flow> {
        if req.extensions().get::<RequestId>().is_none() {
            let id = self.id_for(req.req_header());
            req.extensions_mut().insert(RequestId(id));
        }
        Ok(Flow::Continue)
    }

    async fn upstream_request(
        &self,
        req: &mut RequestCtx<'_>,
        upstream: &mut RequestHeader,
        _: &mut (),
    ) -> Result<()> {
        let id = match req.extensions().get::<RequestId>() {
            Some(id) => id.0.clone(),
            None => {
                let id = self.id_for(req.req_header());
                req.extensions_mut().insert(RequestId(id.clone()));
                id
            }
        };
        upstream.insert_header(self.header.clone(), id)?;
        Ok(())
    }

    async fn response(
        &self,
        req: &mut RequestCtx<'_>,
        resp: &mut ResponseHeader,
        _: &mut (),
    ) -> Result<()> {
        if let Some(id) = req.extensions().get::<RequestId>() {
            resp.insert_header(self.header.clone(), id.0.clone())?;
        }
        Ok(())
    }
}
