//! Per-request state carried between the proxy phases.

use std::net::IpAddr;
use std::time::{Duration, Instant};

/// State of one request as it moves through the Pingora phases.
#[derive(Debug)]
pub struct Ctx {
    /// Index of the matched route.
    pub route: Option<usize>,
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
    /// The real client address (after trusted-proxy resolution).
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
}

impl Ctx {
    /// A fresh context.
    pub fn new() -> Ctx {
        Ctx {
            route: None,
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
        }
    }
}

impl Default for Ctx {
    fn default() -> Self {
        Ctx::new()
    }
}
