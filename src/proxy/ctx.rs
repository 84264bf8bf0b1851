//! Per-request state carried between the proxy phases.

use std::net::IpAddr;
use std::time::{Duration, Instant};

/// State of one request as it moves through the Pingora phases.
#[derive(Debug)]
pub struct Ctx {
    /// Index of the matched route.
    pub route: Option<usize>,
    /// The normalised request path (`normalize`) when it differs from the request's own:
    /// routed by, and sent upstream unless the route sets `raw_path`. `None` for the usual
    /// already-normal path, which costs no allocation.
    pub norm_path: Option<String>,
    /// Index of the pool being proxied to.
    pub pool: Option<usize>,
    /// Index of the backend chosen last.
    pub backend: Option<usize>,
    /// Backends tried so far (bit per backend index < 64).
    pub tried: u64,
    /// Backends tried so far.
    pub attempts: usize,
    /// The request asks for a protocol upgrade (WebSocket).
    pub upgrade: bool,
    /// The real client address (after trusted-proxy resolution), resolved only for pools
    /// that hash on it.
    pub client_ip: Option<IpAddr>,
    /// When the request started.
    pub start: Instant,
    /// When the backend was chosen.
    pub peer_at: Option<Instant>,
    /// Time to connect to the backend (or reuse a connection).
    pub connect_time: Option<Duration>,
    /// Time from choosing the backend to its response header.
    pub response_time: Option<Duration>,
    /// The request id, when the `request_id` filter runs.
    pub request_id: Option<http::HeaderValue>,
    /// Backend chosen by affinity (sid tag, sid table or cookie) before balancing.
    pub pinned: Option<usize>,
    /// Pinned by a Socket.IO sid: no other backend knows the session.
    pub sid_pinned: bool,
    /// The sid carries our tag, to be stripped before the request goes upstream.
    pub strip_tag: bool,
    /// Table key of the request's engine sid (to forget it on "Session ID unknown").
    pub sid_key: Option<u64>,
    /// The request is a Socket.IO polling handshake: tag the sid in the response body.
    pub sio_handshake: bool,
    /// The response body is being buffered for sid tagging.
    pub tag_body: bool,
    /// The response is a 400 for a sid: look for "Session ID unknown".
    pub check_unknown: bool,
    /// Buffered handshake body.
    pub body_buf: Vec<u8>,
    /// Backend named by a valid sticky cookie.
    pub cookie_backend: Option<usize>,
    /// The pinned backend was unreachable: answer "Session ID unknown".
    pub session_lost: bool,
    /// The upgraded connection was handed to a detached relay (it logs when it closes).
    pub detached: bool,
    /// Request body bytes seen so far (against the route's `max_body`).
    pub body_bytes: u64,
    /// The upgrade's place in its pool's `max_upgraded`, held until the connection closes.
    pub upgrade_slot: Option<crate::upstream::UpgradeSlot>,
}

impl Ctx {
    /// A fresh context.
    pub fn new() -> Ctx {
        Ctx {
            route: None,
            norm_path: None,
            pool: None,
            backend: None,
            tried: 0,
            attempts: 0,
            upgrade: false,
            client_ip: None,
            start: Instant::now(),
            peer_at: None,
            connect_time: None,
            response_time: None,
            request_id: None,
            pinned: None,
            sid_pinned: false,
            strip_tag: false,
            sid_key: None,
            sio_handshake: false,
            tag_body: false,
            check_unknown: false,
            body_buf: Vec::new(),
            cookie_backend: None,
            session_lost: false,
            detached: false,
            body_bytes: 0,
            upgrade_slot: None,
        }
    }

    /// The path the request is routed by: the normalised path, or the request's own when
    /// that is already normal.
    pub fn path<'a>(&'a self, req: &'a pingora_http::RequestHeader) -> &'a str {
        self.norm_path.as_deref().unwrap_or_else(|| req.uri.path())
    }
}

impl Default for Ctx {
    fn default() -> Self {
        Ctx::new()
    }
}
