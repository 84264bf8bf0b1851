//! `listeners[].client`: what one client may hold open on a listener (timeouts against slow
//! clients, header sizes, connections per address), with nginx's defaults.

use super::{Dur, Size};
use serde::Deserialize;

/// Limits on the clients of one listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClientConf {
    /// The whole request header must arrive within this, from its first byte (nginx
    /// `client_header_timeout`); a started header gets 408, an idle new connection is closed.
    pub header_timeout: Dur,
    /// How long a keep-alive connection may wait for its next request (nginx
    /// `keepalive_timeout`).
    pub keepalive_timeout: Dur,
    /// Longest wait for one read of a request body (nginx `client_body_timeout`).
    pub body_timeout: Dur,
    /// Bytes per second a request body must average once `body_timeout` has been spent
    /// waiting (Apache `mod_reqtimeout` `MinRate`); 0 turns the rate check off.
    pub min_body_rate: u64,
    /// Longest wait for one write to a client that does not read (nginx `send_timeout`).
    pub send_timeout: Dur,
    /// Longest request line in bytes; longer is answered 414 (nginx: one 8 KiB buffer).
    pub max_request_line: Size,
    /// Most bytes of one request header, request line included; more is answered 431
    /// (nginx: 4 x 8 KiB `large_client_header_buffers`).
    pub max_header_size: Size,
    /// Open connections allowed from one client address (nginx `limit_conn`); 0: no limit.
    pub max_connections_per_ip: u32,
}

impl Default for ClientConf {
    fn default() -> Self {
        ClientConf {
            header_timeout: Dur::secs(60),
            keepalive_timeout: Dur::secs(75),
            body_timeout: Dur::secs(60),
            min_body_rate: 500,
            send_timeout: Dur::secs(60),
            max_request_line: Size(8 * 1024),
            max_header_size: Size(32 * 1024),
            max_connections_per_ip: 0,
        }
    }
}
