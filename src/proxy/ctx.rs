//! Per-request state carried between the proxy phases.

use std::net::IpAddr;
use std::time::{Duration, Instant};

/// State of one request as it moves through the Pingora phases: the gateway's own, not part
/// of the public API (filters see a [`crate::filter::RequestCtx`]).
#[derive(Debug)]
pub struct Ctx {
    /// Index of the matched route.
    pub(crate) route: Option<usize>,
    /// The normalised request path (`normalize`) when it differs from the request's own:
    /// routed by, and sent upstream unless the route sets `raw_path`. `None` for the usual
    /// already-normal path, which costs no allocation.
    pub(crate) norm_path: Option<String>,
    /// The snapshot of the pool being proxied to (kept for the whole request).
    pub(crate) pool: Option<std::sync::Arc<crate::upstream::Pool>>,
    /// Index of the backend chosen last.
    pub(crate) backend: Option<usize>,
    /// Which backends were tried (a retry picks another).
    pub(crate) tried: crate::upstream::Tried,
    /// How many attempts were made (connect retries included).
    pub(crate) attempts: usize,
    /// The request asks for a protocol upgrade (WebSocket).
    pub(crate) upgrade: bool,
    /// The real client address (after trusted-proxy resolution), resolved only for pools
    /// that hash on it.
    pub(crate) client_ip: Option<IpAddr>,
    /// When the request started.
    pub(crate) start: Instant,
    /// When the backend was chosen.
    pub(crate) peer_at: Option<Instant>,
    /// Time to connect to the backend (or reuse a connection).
    pub(crate) connect_time: Option<Duration>,
    /// Time from choosing the backend to its response header.
    pub(crate) response_time: Option<Duration>,
    /// Typed values shared by the route's filters and the access log
    /// ([`crate::filter::RequestCtx::extensions`]).
    pub(crate) extensions: http::Extensions,
    /// Each filter's own state for this request (one slot per filter of the route, allocated
    /// only for routes with filters).
    pub(crate) filter_states: Vec<crate::filter::FilterSlot>,
    /// Where affinity sends the request (sid tag, sid table, cookie).
    pub(crate) pin: crate::affinity::Pin,
    /// The response body is being buffered for sid tagging.
    pub(crate) tag_body: bool,
    /// The response is a 400 for a sid: look for "Session ID unknown".
    pub(crate) check_unknown: bool,
    /// Buffered handshake body.
    pub(crate) body_buf: Vec<u8>,
    /// The pinned backend was unreachable: answer "Session ID unknown".
    pub(crate) session_lost: bool,
    /// The upgraded connection was handed to a detached relay (it logs when it closes).
    pub(crate) detached: bool,
    /// Request body bytes seen so far (against the route's `max_body`).
    pub(crate) body_bytes: u64,
    /// The request's place in its backend's in-flight count (held by a detached tunnel
    /// until the WebSocket closes).
    pub(crate) in_flight: Option<crate::upstream::InFlight>,
    /// The upgrade's place in its pool's `max_upgraded`, held until the connection closes.
    pub(crate) upgrade_slot: Option<crate::upstream::UpgradeSlot>,
}

impl Ctx {
    /// A fresh context.
    pub fn new() -> Ctx {
        Ctx {
            route: None,
            norm_path: None,
            pool: None,
            backend: None,
            tried: Default::default(),
            attempts: 0,
            upgrade: false,
            client_ip: None,
            start: Instant::now(),
            peer_at: None,
            connect_time: None,
            response_time: None,
            extensions: http::Extensions::new(),
            filter_states: Vec::new(),
            pin: Default::default(),
            tag_body: false,
            check_unknown: false,
            body_buf: Vec::new(),
            session_lost: false,
            detached: false,
            body_bytes: 0,
            in_flight: None,
            upgrade_slot: None,
        }
    }

    /// The path the request is routed by: the normalised path, or the request's own when
    /// that is already normal.
    pub(crate) fn path<'a>(&'a self, req: &'a pingora_http::RequestHeader) -> &'a str {
        self.norm_path.as_deref().unwrap_or_else(|| req.uri.path())
    }
}

impl Default for Ctx {
    fn default() -> Self {
        Ctx::new()
    }
}
