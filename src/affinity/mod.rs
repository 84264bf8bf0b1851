//! Session affinity, Socket.IO's above all: which backend a request belongs to (a node tag
//! in the engine.io sid, the sid table, the sticky cookie), the tags themselves, and the
//! handshake rewrite that tags a new sid with its node. It takes backend tags and a
//! "usable" predicate from the pool and never imports `upstream`, so it can be read (and
//! tested) on its own.
//!
//! - [`sid`]: finding, splitting, stripping and tagging sids (pure functions)
//! - [`table`]: the bounded sid -> node table for sids without a tag
//! - [`cookie`]: the sticky cookie's `Set-Cookie` values

pub mod cookie;
pub mod sid;
pub mod table;

pub use cookie::StickyCookie;
pub use sid::*;
pub use table::SidTable;

use crate::config::{AffinityConf, Issues};
use pingora_http::RequestHeader;
use std::collections::HashMap;

/// Session affinity of a pool.
pub struct Affinity {
    /// Requests under this path are Socket.IO (sid tags, handshake tagging).
    pub socketio_path: Option<String>,
    /// Sticky cookie.
    pub cookie: Option<StickyCookie>,
    /// sid -> backend for sids without a tag.
    pub table: std::sync::Arc<SidTable>,
    tags: HashMap<String, usize>,
}

impl std::fmt::Debug for Affinity {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.debug_struct("Affinity")
            .field("socketio_path", &self.socketio_path)
            .field("cookie", &self.cookie.as_ref().map(|c| &c.name))
            .finish()
    }
}

impl Affinity {
    /// The backend whose tag is `tag`.
    pub fn backend_by_tag(&self, tag: &str) -> Option<usize> {
        self.tags.get(tag).copied()
    }
}

/// The stable, opaque 8-character tag of a backend: a hash of pool name, address and the
/// optional affinity secret, so every gateway process computes the same tags.
pub fn make_tag(pool: &str, addr: &impl std::fmt::Display, secret: &str) -> String {
    let h = crate::util::fnv1a(format!("{secret}|{pool}|{addr}").as_bytes(), 0);
    (0..TAG_LEN)
        .map(|i| TAG_ALPHABET[((h >> (i * 5)) & 31) as usize] as char)
        .collect()
}

/// Compiles a pool's `affinity:` for its backends, tagged `tags` (in backend order); `None`
/// when neither Socket.IO nor a cookie is on.
pub fn compile(c: &AffinityConf, tags: &[&str], at: &str, issues: &mut Issues) -> Option<Affinity> {
    let socketio_path = c.socketio.path();
    if let Some(p) = &socketio_path {
        if !p.starts_with('/') {
            issues.error(
                format!("{at}.socketio.path"),
                format!("must start with '/', got \"{p}\""),
            );
        }
    }
    if c.max_sessions == 0 {
        issues.error(format!("{at}.max_sessions"), "must be at least 1");
    }
    let cookie = c
        .cookie
        .as_ref()
        .map(|k| StickyCookie::compile(k, tags, at, issues));
    if socketio_path.is_none() && cookie.is_none() {
        return None;
    }
    let mut map = HashMap::new();
    for (i, t) in tags.iter().enumerate() {
        if map.insert(t.to_string(), i).is_some() {
            issues.error(
                format!("{at}.secret"),
                "two backends got the same tag: change the secret",
            );
        }
    }
    Some(Affinity {
        socketio_path,
        cookie,
        table: std::sync::Arc::new(SidTable::new(c.max_sessions.max(1))),
        tags: map,
    })
}

/// Table expiry when a handshake does not state its heartbeat (Socket.IO's default 45 s + slack).
pub const DEFAULT_SESSION_TTL_MS: u64 = 60_000;

/// Where affinity sends a request (filled by [`pin`]).
#[derive(Debug, Default)]
pub struct Pin {
    /// Backend chosen by affinity (sid tag, sid table or cookie) before balancing.
    pub backend: Option<usize>,
    /// Pinned by a Socket.IO sid: no other backend knows the session.
    pub by_sid: bool,
    /// The sid carries our tag, to be stripped before the request goes upstream.
    pub strip_tag: bool,
    /// Table key of the request's engine sid (to forget it on "Session ID unknown").
    pub sid_key: Option<u64>,
    /// The request is a Socket.IO polling handshake: tag the sid in the response body.
    pub handshake: bool,
    /// Backend named by a valid sticky cookie.
    pub cookie_backend: Option<usize>,
    /// The request is under the Socket.IO path (its WebSocket is a live session).
    pub socketio: bool,
}

/// Why affinity refuses a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The sid names a backend that is down: "Session ID unknown", so the client reconnects.
    SessionUnknown,
    /// The query carries several sids: engine.io's "Bad request".
    SeveralSids,
}

/// Decides where a request (its `path` normalised) belongs under `aff`: a sid tag or table
/// entry pins it to its node (refused when that node is not `usable`), a polling handshake
/// is marked for tagging, a valid cookie of a usable node pins it as a preference. `now_ms`
/// is called only when the request carries a sid.
pub fn pin(
    aff: &Affinity,
    req: &RequestHeader,
    path: &str,
    usable: impl Fn(usize) -> bool,
    now_ms: impl Fn() -> u64,
    pool: &str,
) -> Result<Pin, Refusal> {
    let mut pin = Pin::default();
    if let Some(sio) = &aff.socketio_path {
        if path.starts_with(sio.as_str()) {
            pin.socketio = true;
            let query = req.uri.query();
            if has_several_sids(query) {
                return Err(Refusal::SeveralSids);
            }
            if let Some(sid) = sid_param(query) {
                let (base, tagged) = match split_tag(sid) {
                    Some((base, tag)) => (base, aff.backend_by_tag(tag)),
                    None => (sid, None),
                };
                if tagged.is_none() && base.len() != sid.len() {
                    log::debug!(
                        "upstream {pool}: sid {sid:?} has an unknown tag, routing it as untagged"
                    );
                }
                let base = if tagged.is_some() { base } else { sid };
                let key = SidTable::key(base);
                pin.sid_key = Some(key);
                // The clock is read only for a request that carries a sid.
                let now_ms = now_ms();
                if tagged.is_some() {
                    // Routed by its tag; the table only keeps the session counted as live.
                    aff.table.touch(key, now_ms);
                }
                let found = tagged.or_else(|| aff.table.get(base, now_ms));
                if let Some(idx) = found {
                    if !usable(idx) {
                        aff.table.remove(base);
                        return Err(Refusal::SessionUnknown);
                    }
                    pin.backend = Some(idx);
                    pin.by_sid = true;
                    pin.strip_tag = tagged.is_some();
                }
            } else if req.method == http::Method::GET && is_polling_handshake(query) {
                pin.handshake = true;
            }
        }
    }
    if let Some(c) = &aff.cookie {
        if let Some(idx) = crate::util::cookie(req, &c.name)
            .filter(|v| is_tag(v))
            .and_then(|v| aff.backend_by_tag(v))
        {
            if usable(idx) {
                pin.cookie_backend = Some(idx);
                pin.backend.get_or_insert(idx);
            }
        }
    }
    Ok(pin)
}
