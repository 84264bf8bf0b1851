//! Upstream pools: backends with their live state (active health, passive ejection, in-flight
//! counts), the balancing algorithms, and the peer options each request is sent with.
//! Selection is lock-free: a few atomics per backend, no allocation.

mod discovery;
mod health;
mod peer_slot;
mod select;

pub use health::HealthChecker;
use peer_slot::PeerSlot;

use crate::affinity::Affinity;
use crate::config::{
    Balance, DnsDiscoveryConf, Dur, HealthCheckConf, Issues, TimeoutsConf, UpstreamConf,
};
use arc_swap::ArcSwap;
use once_cell::sync::Lazy;
use pingora_core::upstreams::peer::{HttpPeer, Peer};
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Health-check results kept per backend for `/status` and the dashboard.
const CHECK_HISTORY: usize = 10;
/// Most backends a pool grows to by discovery (addresses that went away included).
const MAX_BACKENDS: usize = 1024;
/// A backend removed by discovery leaves the pool once it has been gone this long with
/// nothing left on it (no request, WebSocket or live session), so address churn (pods
/// rescheduled with new IPs) does not grow the pool.
const PRUNE_AFTER_MS: u64 = 120_000;

static EPOCH: Lazy<Instant> = Lazy::new(Instant::now);

/// Whether `e` is this machine running out of something (file descriptors, memory, local
/// ports, buffers) rather than a fault of the backend: such errors must never count against
/// a backend (eject it, mark it down), or a descriptor shortage takes healthy nodes out.
pub fn is_local_resource_error(e: &pingora_core::Error) -> bool {
    e.root_cause()
        .downcast_ref::<std::io::Error>()
        .and_then(|io| io.raw_os_error())
        .is_some_and(|code| {
            matches!(
                code,
                libc::ENOMEM | libc::ENFILE | libc::EMFILE | libc::EADDRNOTAVAIL | libc::ENOBUFS
            )
        })
}

/// Milliseconds since the process started (a cheap monotonic clock for ejection windows).
pub fn now_ms() -> u64 {
    EPOCH.elapsed().as_millis() as u64
}

/// [`now_ms`] of an instant already read (a request's start), without reading the clock.
pub fn ms_at(t: Instant) -> u64 {
    t.saturating_duration_since(*EPOCH).as_millis() as u64
}

/// The backends one request (or TCP connection) has tried, so a retry picks another: a bit
/// each for the first 64, a list beyond them (allocated only in pools that large, and no
/// longer than the number of attempts).
#[derive(Debug, Default, Clone)]
pub struct Tried {
    low: u64,
    high: Vec<u32>,
}

impl Tried {
    /// Records backend `i` as tried.
    pub fn insert(&mut self, i: usize) {
        if i < 64 {
            self.low |= 1 << i;
        } else if !self.contains(i) {
            self.high.push(i as u32);
        }
    }

    /// Whether backend `i` was tried.
    pub fn contains(&self, i: usize) -> bool {
        if i < 64 {
            self.low & (1 << i) != 0
        } else {
            self.high.contains(&(i as u32))
        }
    }
}

/// Where the `consistent_hash` key comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashKey {
    /// The client address (after trusted-proxy resolution).
    ClientIp,
    /// A request header.
    Header(http::header::HeaderName),
    /// A cookie.
    Cookie(String),
    /// A query parameter.
    Query(String),
}

/// One backend and its live state.
#[derive(Debug)]
pub struct Backend {
    /// Resolved address.
    pub addr: SocketAddr,
    /// Address as written in the config.
    pub configured: String,
    /// Relative weight.
    pub weight: u32,
    /// Short, stable, opaque name of this backend (for affinity and logs).
    pub tag: String,
    peer_http: HttpPeer,
    peer_upgrade: HttpPeer,
    /// A box of each of the two peers, back from the last request that used it.
    spare_http: PeerSlot,
    spare_upgrade: PeerSlot,
    /// Last active health-check verdict.
    pub(crate) active_up: AtomicBool,
    ejected_until: AtomicU64,
    fails: AtomicU32,
    window_start: AtomicU64,
    /// Requests (and WebSockets) currently being proxied to this backend.
    pub in_flight: AtomicUsize,
    /// Requests sent to this backend.
    pub requests: AtomicU64,
    /// Connect or proxy errors seen with this backend.
    pub errors: AtomicU64,
    /// Counters only exported as metrics.
    pub stats: BackendStats,
    /// Draining (admin API): no new sessions or balanced requests, but requests of its
    /// existing sessions (sid tag, sid table, sticky cookie) still reach it.
    pub draining: AtomicBool,
    /// Gone from discovery: drains like `draining` until its sessions end or it goes down.
    pub removed: AtomicBool,
    /// When discovery removed it (ms, [`now_ms`]).
    removed_at: AtomicU64,
    /// Upgraded connections (WebSockets) open to it now.
    pub websockets: AtomicUsize,
    /// Of those, Socket.IO sessions (counted as live sessions).
    pub sio_websockets: AtomicUsize,
    ok_streak: AtomicU32,
    fail_streak: AtomicU32,
    /// The most recent active health-check results, oldest first.
    pub checks: Mutex<VecDeque<CheckResult>>,
}

/// One active health-check result.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CheckResult {
    /// Unix time in seconds.
    pub at: f64,
    /// Passed.
    pub ok: bool,
    /// Duration in milliseconds.
    pub ms: f64,
    /// Why it failed.
    pub error: Option<String>,
}

/// Counters of a backend exported as metrics.
#[derive(Debug, Default)]
pub struct BackendStats {
    /// Failed active health checks.
    pub check_failures: AtomicU64,
    /// Socket.IO handshakes tagged with this node.
    pub sio_handshakes: AtomicU64,
    /// Socket.IO sessions upgraded to WebSocket on this node.
    pub sio_upgrades: AtomicU64,
}

/// Counters of a pool exported as metrics.
#[derive(Debug)]
pub struct PoolStats {
    /// Requests tried again on another backend.
    pub retries: AtomicU64,
    /// "Session ID unknown" answers for sids of a down node.
    pub session_unknown: AtomicU64,
    /// Time from choosing the backend to its response header.
    pub response_time: prometheus::Histogram,
}

impl Backend {
    /// Whether the backend may receive new requests now.
    #[inline]
    pub fn usable(&self) -> bool {
        self.active_up.load(Relaxed) && !self.ejected()
    }

    /// Whether balancing and new sessions may choose it (usable, neither draining nor
    /// removed by discovery); requests of its existing sessions only need [`Self::usable`].
    #[inline]
    pub fn takes_new(&self) -> bool {
        self.usable() && !self.draining.load(Relaxed) && !self.removed.load(Relaxed)
    }

    /// `up`, `draining`, `removed` (by discovery), `ejected` (passive) or `down` (active
    /// checks), for `/status`.
    pub fn state(&self) -> &'static str {
        if !self.active_up() {
            "down"
        } else if self.ejected() {
            "ejected"
        } else if self.removed.load(Relaxed) {
            "removed"
        } else if self.draining.load(Relaxed) {
            "draining"
        } else {
            "up"
        }
    }

    /// The recent health-check results, oldest first.
    pub fn recent_checks(&self) -> Vec<CheckResult> {
        let c = self.checks.lock().unwrap_or_else(|p| p.into_inner());
        c.iter().cloned().collect()
    }

    /// Records an active health-check result.
    pub(crate) fn record_check(&self, r: CheckResult) {
        let mut c = self.checks.lock().unwrap_or_else(|p| p.into_inner());
        if c.len() >= CHECK_HISTORY {
            c.pop_front();
        }
        c.push_back(r);
    }

    /// Whether active checks say the backend is up.
    pub fn active_up(&self) -> bool {
        self.active_up.load(Relaxed)
    }

    /// Whether passive checks have ejected the backend right now.
    pub fn ejected(&self) -> bool {
        // 0: never ejected, or the ejection is over and was seen so below; then no clock read
        // (this runs for every backend a selection looks at).
        let until = self.ejected_until.load(Relaxed);
        if until == 0 {
            return false;
        }
        if until > now_ms() {
            return true;
        }
        // Over. An ejection stored meanwhile (a new, later `until`) stays.
        let _ = self
            .ejected_until
            .compare_exchange(until, 0, Relaxed, Relaxed);
        false
    }

    /// Ends a passive ejection (the backend passed an active check).
    pub(crate) fn clear_ejection(&self) {
        self.ejected_until.store(0, Relaxed);
        self.fails.store(0, Relaxed);
    }

    /// A peer to send one request to (upgrade requests get the idle timeout): the box the
    /// last request gave back ([`Self::peer_done`]), or a new copy of the template.
    pub fn peer(&self, upgrade: bool) -> Box<HttpPeer> {
        let (template, spare) = self.peer_kind(upgrade);
        spare.take().unwrap_or_else(|| Box::new(template.clone()))
    }

    /// Takes back a peer that [`Self::peer`] gave out for the same `upgrade`, for the next
    /// request. Pingora never changes a peer it was given; one for another address is dropped.
    pub fn peer_done(&self, peer: Box<HttpPeer>, upgrade: bool) {
        let (template, spare) = self.peer_kind(upgrade);
        if peer.address() == template.address() {
            spare.put(peer);
        }
    }

    #[inline]
    fn peer_kind(&self, upgrade: bool) -> (&HttpPeer, &PeerSlot) {
        if upgrade {
            (&self.peer_upgrade, &self.spare_upgrade)
        } else {
            (&self.peer_http, &self.spare_http)
        }
    }
}

/// A pool of backends: one immutable snapshot. Discovery publishes a new snapshot through
/// [`PoolHandle`]; backends, counters and the sid table are shared between snapshots. A
/// backend keeps its index while it is in the pool (new addresses are appended); only when a
/// long-removed, idle backend is pruned are the later ones renumbered, the sid table with
/// them. Indices from the table are bounds-checked: a stale one reads as "Session ID
/// unknown", never a panic.
#[derive(Debug)]
pub struct Pool {
    /// Pool name from the config.
    pub name: String,
    /// Backends, in config order, then in order of discovery.
    pub backends: Vec<Arc<Backend>>,
    /// Balancing algorithm.
    pub balance: Balance,
    /// Key for `consistent_hash`.
    pub hash_key: HashKey,
    /// Timeouts.
    pub timeouts: Timeouts,
    /// Extra backends tried after a connect failure.
    pub retries: usize,
    /// Active health check settings.
    pub health_check: Option<HealthCheckSettings>,
    max_fails: u32,
    fail_timeout_ms: u64,
    /// Session affinity, when configured.
    pub affinity: Option<Affinity>,
    /// TLS to the backends.
    pub tls: Option<UpstreamTls>,
    /// Smooth weighted round-robin order of backend indices.
    wheel: Vec<u16>,
    rr: AtomicUsize,
    /// Upgraded connections open now, against `max_upgraded` (0: no limit).
    upgraded: Arc<AtomicUsize>,
    max_upgraded: usize,
    /// Counters only exported as metrics.
    pub stats: Arc<PoolStats>,
    /// Live re-resolution of server names, when configured.
    pub discovery: Option<DnsDiscoveryConf>,
    /// What a new snapshot is built from.
    source: Arc<PoolSource>,
}

/// The config a pool's snapshots are built from (with its secret read).
#[derive(Debug)]
struct PoolSource {
    conf: UpstreamConf,
    secret: String,
}

/// The current snapshot of a pool, replaced by discovery without stopping traffic.
#[derive(Debug)]
pub struct PoolHandle {
    /// Pool name from the config.
    pub name: String,
    current: ArcSwap<Pool>,
}

impl PoolHandle {
    /// A handle publishing `pool`.
    pub fn new(pool: Pool) -> PoolHandle {
        PoolHandle {
            name: pool.name.clone(),
            current: ArcSwap::from_pointee(pool),
        }
    }

    /// The current snapshot: a request keeps the one it started with.
    #[inline]
    pub fn load(&self) -> Arc<Pool> {
        self.current.load_full()
    }

    /// Publishes a new snapshot.
    pub(crate) fn store(&self, pool: Pool) {
        self.current.store(Arc::new(pool));
    }
}

/// A request's (or an open WebSocket's) place in a backend's in-flight count, which
/// `least_conn` balances on: given back when dropped, on every path (retry, error, tunnel close).
#[derive(Debug)]
pub struct InFlight(Arc<Backend>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Relaxed);
    }
}

/// An open upgraded connection in its backend's WebSocket (and Socket.IO session) count,
/// given back when the tunnel closes.
#[derive(Debug)]
pub struct OpenWebSocket {
    backend: Arc<Backend>,
    socketio: bool,
}

impl Drop for OpenWebSocket {
    fn drop(&mut self) {
        self.backend.websockets.fetch_sub(1, Relaxed);
        if self.socketio {
            self.backend.sio_websockets.fetch_sub(1, Relaxed);
        }
    }
}

/// A pool's timeouts as the request path uses them (from `upstreams.*.timeouts`).
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// TCP connect.
    pub connect: Duration,
    /// Waiting for response bytes on plain HTTP.
    pub read: Duration,
    /// Writing to the backend.
    pub write: Duration,
    /// Upgraded connections with no traffic either way.
    pub idle: Duration,
    /// Reuse of an idle pooled connection to a backend.
    pub keepalive: Duration,
}

impl From<&TimeoutsConf> for Timeouts {
    fn from(t: &TimeoutsConf) -> Timeouts {
        Timeouts {
            connect: t.connect.0,
            read: t.read.0,
            write: t.write.0,
            idle: t.idle.0,
            keepalive: t.keepalive.0,
        }
    }
}

/// An upgraded connection's place in its pool's `max_upgraded`, given back when dropped.
#[derive(Debug)]
pub struct UpgradeSlot(Arc<AtomicUsize>);

impl Drop for UpgradeSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}

/// TLS to a pool's backends.
#[derive(Clone)]
pub struct UpstreamTls {
    /// SNI and verified name; default: the host of each server address.
    pub sni: Option<String>,
    /// Verify certificate and name.
    pub verify: bool,
    /// CA bundle instead of the system roots.
    pub ca: Option<Arc<[pingora_core::utils::tls::WrappedX509]>>,
}

impl UpstreamTls {
    /// Sets the verification options of a peer to a pool's backends (proxied requests and
    /// health checks alike).
    pub fn apply(&self, o: &mut pingora_core::upstreams::peer::PeerOptions) {
        o.verify_cert = self.verify;
        o.verify_hostname = self.verify;
        o.ca = self.ca.clone();
    }
}

impl std::fmt::Debug for UpstreamTls {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.debug_struct("UpstreamTls")
            .field("sni", &self.sni)
            .field("verify", &self.verify)
            .field("ca", &self.ca.as_ref().map(|c| c.len()))
            .finish()
    }
}

/// Active health check settings of a pool.
#[derive(Debug, Clone)]
pub struct HealthCheckSettings {
    /// HTTP path and expected status; `None` is a TCP check.
    pub http: Option<(String, u16, String)>,
    /// Between checks.
    pub interval: Duration,
    /// Per check.
    pub timeout: Duration,
    /// Consecutive failures to mark down.
    pub fails: u32,
    /// Consecutive successes to mark up.
    pub passes: u32,
}

fn parse_hash_key(s: &str) -> Result<HashKey, String> {
    let (kind, arg) = s.split_once(':').map_or((s, ""), |(k, a)| (k, a.trim()));
    match (kind.trim(), arg) {
        ("client_ip", "") => Ok(HashKey::ClientIp),
        ("header", a) if !a.is_empty() => http::header::HeaderName::try_from(a)
            .map(HashKey::Header)
            .map_err(|_| format!("invalid header name \"{a}\"")),
        ("cookie", a) if !a.is_empty() => Ok(HashKey::Cookie(a.to_string())),
        ("query", a) if !a.is_empty() => Ok(HashKey::Query(a.to_string())),
        _ => Err(format!(
            "invalid hash_key \"{s}\" (client_ip, header:NAME, cookie:NAME or query:NAME)"
        )),
    }
}

/// The SNI for a backend: the configured one, else the host of its address.
fn sni_for(tls: &UpstreamTls, configured: &str) -> String {
    tls.sni.clone().unwrap_or_else(|| {
        crate::util::host_without_port(configured)
            .trim_matches(['[', ']'])
            .to_string()
    })
}

fn base_peer(
    addr: SocketAddr,
    configured: &str,
    t: &TimeoutsConf,
    read: Dur,
    tls: Option<&UpstreamTls>,
) -> HttpPeer {
    let mut p = match tls {
        Some(tls) => {
            let mut p = HttpPeer::new(addr, true, sni_for(tls, configured));
            tls.apply(&mut p.options);
            p
        }
        None => HttpPeer::new(addr, false, String::new()),
    };
    p.options.connection_timeout = Some(t.connect.0);
    p.options.read_timeout = Some(read.0);
    p.options.write_timeout = Some(t.write.0);
    p.options.idle_timeout = Some(t.keepalive.0);
    p.options.tcp_keepalive = None;
    p
}

fn check_duration(d: Dur, at: String, issues: &mut Issues) {
    if d.0.is_zero() {
        issues.error(at, "must be greater than 0");
    }
}

impl Backend {
    /// A backend at `addr` (of server entry `configured`), tagged for pool `pool`.
    #[allow(clippy::too_many_arguments)]
    fn new(
        pool: &str,
        addr: SocketAddr,
        configured: &str,
        c: &UpstreamConf,
        weight: u32,
        secret: &str,
        tls: Option<&UpstreamTls>,
        active_up: bool,
    ) -> Backend {
        Backend {
            addr,
            configured: configured.to_string(),
            weight: weight.clamp(1, 1000),
            tag: crate::affinity::make_tag(pool, &addr, secret),
            peer_http: base_peer(addr, configured, &c.timeouts, c.timeouts.read, tls),
            peer_upgrade: base_peer(addr, configured, &c.timeouts, c.timeouts.idle, tls),
            spare_http: PeerSlot::default(),
            spare_upgrade: PeerSlot::default(),
            active_up: AtomicBool::new(active_up),
            ejected_until: AtomicU64::new(0),
            fails: AtomicU32::new(0),
            window_start: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
            requests: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            stats: BackendStats::default(),
            draining: AtomicBool::new(false),
            removed: AtomicBool::new(false),
            removed_at: AtomicU64::new(0),
            websockets: AtomicUsize::new(0),
            sio_websockets: AtomicUsize::new(0),
            ok_streak: AtomicU32::new(0),
            fail_streak: AtomicU32::new(0),
            checks: Mutex::new(VecDeque::new()),
        }
    }
}

impl Pool {
    /// The PROXY protocol header a TCP relay sends first to this pool's backends, if any
    /// (`send_proxy_protocol`; see `proxy_protocol::encode`).
    pub fn send_proxy_protocol(&self) -> Option<crate::proxy_protocol::Version> {
        self.source.conf.send_proxy_protocol
    }

    /// Builds a plain-HTTP pool from its config, resolving names; problems go to `issues`.
    pub fn compile(name: &str, c: &UpstreamConf, issues: &mut Issues) -> Pool {
        Pool::compile_with_tls(name, c, None, "", issues)
    }

    /// Builds a pool whose backends speak `tls` when given; `secret` keys the node tags.
    /// With discovery, a name that does not resolve yet is only a warning.
    pub fn compile_with_tls(
        name: &str,
        c: &UpstreamConf,
        tls: Option<UpstreamTls>,
        secret: &str,
        issues: &mut Issues,
    ) -> Pool {
        let at = format!("upstreams.{name}");
        if c.servers.is_empty() {
            issues.error(format!("{at}.servers"), "needs at least one server");
        }
        let discovery = c.discovery.as_ref().map(|d| &d.dns);
        if let Some(d) = discovery {
            check_duration(d.interval, format!("{at}.discovery.dns.interval"), issues);
        }
        let mut resolved = Vec::with_capacity(c.servers.len());
        for (i, s) in c.servers.iter().enumerate() {
            let key = format!("{at}.servers[{i}]");
            if s.weight == 0 || s.weight > 1000 {
                issues.error(
                    format!("{key}.weight"),
                    format!("must be 1..=1000, got {}", s.weight),
                );
            }
            let at = format!("{key}.address");
            if let Err(e) = discovery::split_host_port(&s.address) {
                issues.error(at, e);
                resolved.push(Vec::new());
                continue;
            }
            // Resolved once here; with discovery a name that does not resolve yet is only a
            // warning (the keeper retries every interval).
            let hosts_file = discovery.and_then(|d| d.hosts_file.as_deref());
            let addrs = match discovery::resolve_blocking(&s.address, hosts_file) {
                Ok(v) if !v.is_empty() => v,
                Ok(v) => {
                    match discovery {
                        Some(_) => issues.warn(at, format!("\"{}\" resolves to no address yet; discovery retries every interval", s.address)),
                        None => issues.error(at, format!("\"{}\" resolved to no address", s.address)),
                    }
                    v
                }
                Err(e) => {
                    match discovery {
                        Some(_) => {
                            issues.warn(at, format!("{e}; discovery retries every interval"))
                        }
                        None => issues.error(at, e),
                    }
                    Vec::new()
                }
            };
            resolved.push(addrs);
        }
        let source = Arc::new(PoolSource {
            conf: c.clone(),
            secret: secret.to_string(),
        });
        Pool::build(name, source, tls, &resolved, None, issues)
    }

    /// Which backends a new snapshot drops: removed by discovery long enough ago, with no
    /// request, WebSocket or live session left.
    fn prunable(&self, now: u64) -> Vec<bool> {
        // The session count walks the sid table: only when something could be pruned.
        let candidate = |b: &Backend| {
            b.removed.load(Relaxed)
                && now.saturating_sub(b.removed_at.load(Relaxed)) >= PRUNE_AFTER_MS
        };
        if !self.backends.iter().any(|b| candidate(b)) {
            return vec![false; self.backends.len()];
        }
        let sessions = self.live_sessions();
        self.backends
            .iter()
            .zip(sessions)
            .map(|(b, n)| {
                candidate(b)
                    && b.in_flight.load(Relaxed) == 0
                    && b.websockets.load(Relaxed) == 0
                    && n == 0
            })
            .collect()
    }

    /// A new snapshot of this pool for the addresses `resolved` (per server entry):
    /// backends that stay keep their state, tag and relative order, new ones are appended
    /// (down until a health check passes, if the pool has checks), missing ones are marked
    /// removed and leave once nothing is left on them ([`PRUNE_AFTER_MS`]). `None` when
    /// nothing changed.
    pub(crate) fn rediscovered(&self, resolved: &[Vec<SocketAddr>]) -> Option<Pool> {
        self.rediscovered_at(resolved, now_ms())
    }

    fn rediscovered_at(&self, resolved: &[Vec<SocketAddr>], now: u64) -> Option<Pool> {
        let wanted: Vec<SocketAddr> = resolved.iter().flatten().copied().collect();
        let prune = self.prunable(now);
        let unchanged = !prune.contains(&true)
            && self
                .backends
                .iter()
                .all(|b| wanted.contains(&b.addr) != b.removed.load(Relaxed))
            && wanted
                .iter()
                .all(|a| self.backends.iter().any(|b| b.addr == *a));
        if unchanged {
            return None;
        }
        let mut issues = Issues::default();
        let p = Pool::build(
            &self.name,
            self.source.clone(),
            self.tls.clone(),
            resolved,
            Some((self, &prune, now)),
            &mut issues,
        );
        for i in issues.errors.iter().chain(issues.warnings.iter()) {
            log::warn!("upstream {} discovery: {i}", self.name);
        }
        Some(p)
    }

    fn build(
        name: &str,
        source: Arc<PoolSource>,
        tls: Option<UpstreamTls>,
        resolved: &[Vec<SocketAddr>],
        prev: Option<(&Pool, &[bool], u64)>,
        issues: &mut Issues,
    ) -> Pool {
        let c = &source.conf;
        let at = format!("upstreams.{name}");
        // Old index -> new index, for the sid table (pruned backends: none).
        let mut remap: Vec<Option<u16>> = Vec::new();
        let mut backends: Vec<Arc<Backend>> = Vec::new();
        if let Some((p, prune, _)) = prev {
            for (b, &gone) in p.backends.iter().zip(prune) {
                if gone {
                    log::warn!("upstream {name} backend {}: left the pool", b.addr);
                    remap.push(None);
                } else {
                    remap.push(Some(backends.len() as u16));
                    backends.push(b.clone());
                }
            }
        }
        let now = prev.map_or(0, |(_, _, now)| now);
        let pruned = remap.contains(&None);
        let prev = prev.map(|(p, _, _)| p);
        for b in &backends {
            let stays = resolved.iter().flatten().any(|a| *a == b.addr);
            if !stays && !b.removed.load(Relaxed) {
                b.removed_at.store(now, Relaxed);
            }
            if b.removed.swap(!stays, Relaxed) == stays {
                log::warn!(
                    "upstream {name} backend {}: {} by discovery",
                    b.addr,
                    if stays { "back" } else { "removed (draining)" }
                );
            }
        }
        for (i, (s, addrs)) in c.servers.iter().zip(resolved).enumerate() {
            for &addr in addrs {
                if backends.iter().any(|b| b.addr == addr) {
                    if prev.is_none() {
                        let msg = format!("duplicate backend {addr}");
                        let key = format!("{at}.servers[{i}].address");
                        match c.discovery {
                            None => issues.error(key, msg),
                            Some(_) => issues.warn(key, msg),
                        }
                    }
                    continue;
                }
                if backends.len() >= MAX_BACKENDS {
                    issues.warn(
                        format!("{at}.servers"),
                        format!("more than {MAX_BACKENDS} backends: {addr} left out"),
                    );
                    continue;
                }
                // A backend found later waits for a passing health check before traffic.
                let up = prev.is_none() || c.health_check.is_none();
                if prev.is_some() {
                    log::warn!("upstream {name} backend {addr}: added by discovery");
                }
                backends.push(Arc::new(Backend::new(
                    name,
                    addr,
                    &s.address,
                    c,
                    s.weight,
                    &source.secret,
                    tls.as_ref(),
                    up,
                )));
            }
        }
        let hash_key = parse_hash_key(&c.hash_key).unwrap_or_else(|e| {
            issues.error(format!("{at}.hash_key"), e);
            HashKey::ClientIp
        });
        let t = &c.timeouts;
        for (k, d) in [
            ("connect", t.connect),
            ("read", t.read),
            ("write", t.write),
            ("idle", t.idle),
            ("keepalive", t.keepalive),
        ] {
            check_duration(d, format!("{at}.timeouts.{k}"), issues);
        }
        if c.passive.max_fails > 0 {
            check_duration(
                c.passive.fail_timeout,
                format!("{at}.passive.fail_timeout"),
                issues,
            );
        }
        let health_check = c
            .health_check
            .as_ref()
            .map(|h| health_settings(h, &format!("{at}.health_check"), issues));
        let mut affinity = c.affinity.as_ref().and_then(|a| {
            let tags: Vec<&str> = backends.iter().map(|b| b.tag.as_str()).collect();
            crate::affinity::compile(a, &tags, &format!("{at}.affinity"), issues)
        });
        // The sid table outlives snapshots: its entries name backends by index.
        if let (Some(a), Some(old)) = (&mut affinity, prev.and_then(|p| p.affinity.as_ref())) {
            a.table = old.table.clone();
            if pruned {
                // A request still holding the old snapshot may yet record an untagged sid
                // under an old index; tagged sids (the default) route by tag, not by index.
                a.table.remap(&remap);
            }
        }
        let wheel = select::smooth_wrr(&backends.iter().map(|b| b.weight).collect::<Vec<_>>());
        Pool {
            name: name.to_string(),
            backends,
            balance: c.balance,
            hash_key,
            timeouts: Timeouts::from(&c.timeouts),
            retries: c.retries,
            health_check,
            affinity,
            tls,
            max_fails: c.passive.max_fails,
            fail_timeout_ms: c.passive.fail_timeout.0.as_millis() as u64,
            wheel,
            rr: AtomicUsize::new(prev.map_or(0, |p| p.rr.load(Relaxed))),
            upgraded: prev.map_or_else(Default::default, |p| p.upgraded.clone()),
            max_upgraded: c.max_upgraded,
            stats: prev.map_or_else(
                || {
                    Arc::new(PoolStats {
                        retries: AtomicU64::new(0),
                        session_unknown: AtomicU64::new(0),
                        response_time: crate::metrics::response_time(name),
                    })
                },
                |p| p.stats.clone(),
            ),
            discovery: c.discovery.as_ref().map(|d| d.dns.clone()),
            source,
        }
    }

    /// The server entries' addresses, for discovery to resolve.
    pub(crate) fn server_addresses(&self) -> impl Iterator<Item = &str> {
        self.source.conf.servers.iter().map(|s| s.address.as_str())
    }

    /// A place for one more upgraded connection, or `None` when `max_upgraded` are open.
    /// Pools without a limit only count.
    pub fn upgrade_slot(&self) -> Option<UpgradeSlot> {
        let open = self.upgraded.fetch_add(1, Relaxed);
        let slot = UpgradeSlot(self.upgraded.clone());
        (self.max_upgraded == 0 || open < self.max_upgraded).then_some(slot)
    }

    /// Counts a request sent to backend `idx` (requests, in flight until the guard drops).
    pub fn begin_request(&self, idx: usize) -> InFlight {
        let b = &self.backends[idx];
        b.in_flight.fetch_add(1, Relaxed);
        b.requests.fetch_add(1, Relaxed);
        InFlight(b.clone())
    }

    /// Counts an upgraded connection to backend `idx` (a Socket.IO session if `socketio`)
    /// until the guard drops with the tunnel.
    pub fn open_websocket(&self, idx: usize, socketio: bool) -> OpenWebSocket {
        let b = &self.backends[idx];
        b.websockets.fetch_add(1, Relaxed);
        if socketio {
            b.sio_websockets.fetch_add(1, Relaxed);
        }
        OpenWebSocket {
            backend: b.clone(),
            socketio,
        }
    }

    /// Live Socket.IO sessions per backend (open Socket.IO WebSockets plus polling sessions
    /// seen within their heartbeat); walks the sid table: for `/status` and `/metrics`.
    pub fn live_sessions(&self) -> Vec<usize> {
        let mut n = match &self.affinity {
            Some(a) => a.table.live_polling(self.backends.len(), now_ms()),
            None => vec![0; self.backends.len()],
        };
        for (k, b) in n.iter_mut().zip(&self.backends) {
            *k += b.sio_websockets.load(Relaxed);
        }
        n
    }

    /// Upgraded connections (WebSockets) open to this pool now.
    pub fn upgraded(&self) -> usize {
        self.upgraded.load(Relaxed)
    }

    /// Picks a usable backend not in `exclude`.
    /// `key` is the consistent-hash key, when the pool hashes and the request has one.
    pub fn select(&self, key: Option<&[u8]>, exclude: &Tried) -> Option<usize> {
        let ok = |i: usize| !exclude.contains(i) && self.backends[i].takes_new();
        match (self.balance, key) {
            (Balance::ConsistentHash, Some(k)) => select::rendezvous(&self.backends, k, ok),
            (Balance::LeastConn, _) => {
                select::least_conn(&self.backends, self.rr.fetch_add(1, Relaxed), ok)
            }
            (Balance::Random, _) => select::scan_wheel(&self.wheel, select::fast_random(), ok),
            _ => {
                // A skipped backend's turn goes to the next turn, not to its neighbour on
                // the wheel: with one node draining or down the others share evenly.
                // At most one try per backend: a pool with every backend down pays a bounded
                // number of atomics, then the scan.
                let n = self.wheel.len();
                (0..self.backends.len().min(n))
                    .map(|_| self.wheel[self.rr.fetch_add(1, Relaxed) % n] as usize)
                    .find(|&i| ok(i))
                    // Other threads took the turns in between: any acceptable one.
                    .or_else(|| select::scan_wheel(&self.wheel, 0, ok))
            }
        }
    }

    /// Records a connect or proxy error; ejects the backend after `max_fails` in the window.
    pub fn report_failure(&self, idx: usize) {
        let b = &self.backends[idx];
        b.errors.fetch_add(1, Relaxed);
        if self.max_fails == 0 {
            return;
        }
        let now = now_ms();
        let start = b.window_start.load(Relaxed);
        let n = if now.saturating_sub(start) > self.fail_timeout_ms || b.fails.load(Relaxed) == 0 {
            b.window_start.store(now, Relaxed);
            b.fails.store(1, Relaxed);
            1
        } else {
            b.fails.fetch_add(1, Relaxed) + 1
        };
        if n >= self.max_fails {
            b.ejected_until.store(now + self.fail_timeout_ms, Relaxed);
            b.fails.store(0, Relaxed);
            log::warn!(
                "upstream {} backend {} ejected for {} ms after {} failures",
                self.name,
                b.addr,
                self.fail_timeout_ms,
                n
            );
        }
    }

    /// Records a successful response: clears the failure count.
    #[inline]
    pub fn report_success(&self, idx: usize) {
        let b = &self.backends[idx];
        if b.fails.load(Relaxed) != 0 {
            b.fails.store(0, Relaxed);
        }
    }

    /// Number of backends usable now.
    pub fn usable_count(&self) -> usize {
        self.backends.iter().filter(|b| b.usable()).count()
    }
}

fn health_settings(h: &HealthCheckConf, at: &str, issues: &mut Issues) -> HealthCheckSettings {
    check_duration(h.interval, format!("{at}.interval"), issues);
    check_duration(h.timeout, format!("{at}.timeout"), issues);
    if h.fails == 0 {
        issues.error(format!("{at}.fails"), "must be at least 1");
    }
    if h.passes == 0 {
        issues.error(format!("{at}.passes"), "must be at least 1");
    }
    let http = h.http.as_ref().map(|c| {
        if !c.path.starts_with('/') {
            issues.error(
                format!("{at}.http.path"),
                format!("must start with '/', got \"{}\"", c.path),
            );
        }
        if !(100..=599).contains(&c.expect_status) {
            issues.error(
                format!("{at}.http.expect_status"),
                format!("invalid status {}", c.expect_status),
            );
        }
        (c.path.clone(), c.expect_status, c.host.clone())
    });
    HealthCheckSettings {
        http,
        interval: h.interval.0,
        timeout: h.timeout.0,
        fails: h.fails.max(1),
        passes: h.passes.max(1),
    }
}

#[cfg(test)]
mod tests;
