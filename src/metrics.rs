//! Prometheus metrics: the names (constants, one place), the few counters only the request
//! path keeps (requests per route and status class, bytes), and the `/metrics` text rendered
//! at scrape time from those and from the counters pools, backends, limiters and the
//! connection caps keep anyway. The request path pays a few relaxed atomic adds.

use crate::runtime::Runtime;
use prometheus::core::Collector;
use prometheus::{Encoder, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Requests answered, by route and status class.
pub const REQUESTS: &str = "gateway_requests_total";
/// Upstream response time (from choosing the backend to its response header), by pool.
pub const UPSTREAM_RESPONSE: &str = "gateway_upstream_response_seconds";
/// Client connections open now.
pub const CONNECTIONS_OPEN: &str = "gateway_connections_open";
/// `server.max_connections`.
pub const CONNECTIONS_MAX: &str = "gateway_connections_max";
/// Client connections refused by `server.max_connections` or `max_connections_per_ip`.
pub const CONNECTIONS_REFUSED: &str = "gateway_connections_refused_total";
/// Upgraded connections (WebSockets) open now, by pool.
pub const WEBSOCKETS_OPEN: &str = "gateway_websockets_open";
/// Request body bytes received from clients (upgraded connections included).
pub const BYTES_IN: &str = "gateway_received_bytes_total";
/// Response body bytes sent to clients (upgraded connections included).
pub const BYTES_OUT: &str = "gateway_sent_bytes_total";
/// Whether a backend may receive requests (1) or not (0: down or ejected).
pub const BACKEND_UP: &str = "gateway_backend_up";
/// Whether a backend is draining (admin API): no new sessions, existing ones stay.
pub const BACKEND_DRAINING: &str = "gateway_backend_draining";
/// Requests sent to a backend.
pub const BACKEND_REQUESTS: &str = "gateway_backend_requests_total";
/// Connect or proxy errors with a backend.
pub const BACKEND_ERRORS: &str = "gateway_backend_errors_total";
/// Requests in flight to a backend (open WebSockets included).
pub const BACKEND_IN_FLIGHT: &str = "gateway_backend_in_flight";
/// Failed active health checks of a backend.
pub const HEALTH_CHECK_FAILURES: &str = "gateway_health_check_failures_total";
/// Requests tried again on another backend after a connect failure, by pool.
pub const RETRIES: &str = "gateway_retries_total";
/// WebSockets open to a backend now.
pub const BACKEND_WEBSOCKETS: &str = "gateway_backend_websockets";
/// Live Socket.IO sessions on a backend (a drain waits for 0).
pub const BACKEND_SESSIONS: &str = "gateway_backend_socketio_sessions";
/// Socket.IO handshakes whose sid was tagged with a node, by pool and backend.
pub const SIO_HANDSHAKES: &str = "gateway_socketio_handshakes_total";
/// Socket.IO sessions upgraded to WebSocket, by pool and backend.
pub const SIO_UPGRADES: &str = "gateway_socketio_upgrades_total";
/// "Session ID unknown" answers for sids whose node is down, by pool.
pub const SIO_SESSION_UNKNOWN: &str = "gateway_socketio_session_unknown_total";
/// Requests refused by a route's rate limit.
pub const RATE_LIMITED: &str = "gateway_rate_limited_total";
/// Request bodies refused by a route's `max_body`.
pub const BODY_TOO_LARGE: &str = "gateway_body_too_large_total";

/// Status classes counted per route: 1xx..5xx, and 0 for no response (client gone).
const CLASSES: [&str; 6] = ["none", "1xx", "2xx", "3xx", "4xx", "5xx"];

/// Counters of one route (or of requests no route took).
#[derive(Debug, Default)]
pub struct RouteCounters {
    by_class: [AtomicU64; 6],
    /// Requests refused by the route's rate limit.
    pub rate_limited: AtomicU64,
    /// Bodies refused by the route's `max_body`.
    pub body_too_large: AtomicU64,
}

/// The counters the request path keeps.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Whether the request path counts (`admin.metrics`).
    pub on: bool,
    routes: Vec<RouteCounters>,
    unrouted: RouteCounters,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
}

impl Metrics {
    /// Counters for `routes` routes; `on: false` keeps the request path from counting.
    pub fn new(routes: usize, on: bool) -> Metrics {
        Metrics {
            on,
            routes: (0..routes).map(|_| RouteCounters::default()).collect(),
            ..Default::default()
        }
    }

    /// The counters of route `r` (`None`: requests no route took).
    pub fn route(&self, r: Option<usize>) -> &RouteCounters {
        r.and_then(|r| self.routes.get(r)).unwrap_or(&self.unrouted)
    }

    /// Counts one finished request.
    #[inline]
    pub fn request(&self, route: Option<usize>, status: u16, bytes_in: u64, bytes_out: u64) {
        if !self.on {
            return;
        }
        let class = (status as usize / 100).min(5);
        self.route(route).by_class[class].fetch_add(1, Relaxed);
        self.bytes(bytes_in, bytes_out);
    }

    /// Requests answered and, of those, answered 5xx, over every route (the dashboard's
    /// history samples these once a second).
    pub fn answered(&self) -> (u64, u64) {
        let all = self.routes.iter().chain(std::iter::once(&self.unrouted));
        all.fold((0, 0), |(n, e), c| {
            let n = n + c.by_class.iter().map(|x| x.load(Relaxed)).sum::<u64>();
            (n, e + c.by_class[5].load(Relaxed))
        })
    }

    /// Counts body bytes both ways.
    #[inline]
    pub fn bytes(&self, bytes_in: u64, bytes_out: u64) {
        if bytes_in > 0 {
            self.bytes_in.fetch_add(bytes_in, Relaxed);
        }
        if bytes_out > 0 {
            self.bytes_out.fetch_add(bytes_out, Relaxed);
        }
    }
}

/// Collects every value into one registry at scrape time.
struct Scrape {
    registry: Registry,
}

impl Scrape {
    fn add<C: Collector + Clone + 'static>(&self, c: &C) {
        if let Err(e) = self.registry.register(Box::new(c.clone())) {
            log::warn!("metrics: {e}");
        }
    }

    fn counter(&self, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
        let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
        self.add(&c);
        c
    }

    fn gauge(&self, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
        let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
        self.add(&g);
        g
    }
}

/// Sets a counter from a total kept elsewhere.
fn set(c: &IntCounterVec, labels: &[&str], total: u64) {
    let m = c.with_label_values(labels);
    m.inc_by(total.saturating_sub(m.get()));
}

/// The Prometheus text exposition of everything.
pub fn render(rt: &Runtime) -> Vec<u8> {
    let s = Scrape {
        registry: Registry::new(),
    };
    let requests = s.counter(
        REQUESTS,
        "Requests answered, by route and status class.",
        &["route", "class"],
    );
    let rate_limited = s.counter(
        RATE_LIMITED,
        "Requests refused by a route's rate limit.",
        &["route"],
    );
    let too_large = s.counter(
        BODY_TOO_LARGE,
        "Request bodies refused by a route's max_body.",
        &["route"],
    );
    let routes = rt
        .router
        .routes()
        .iter()
        .enumerate()
        .map(|(i, r)| (r.name.as_str(), rt.metrics.route(Some(i))))
        .chain(std::iter::once(("-", rt.metrics.route(None))));
    for (name, c) in routes {
        for (class, n) in CLASSES.iter().zip(&c.by_class) {
            let n = n.load(Relaxed);
            if n > 0 {
                set(&requests, &[name, class], n);
            }
        }
        set(&rate_limited, &[name], c.rate_limited.load(Relaxed));
        set(&too_large, &[name], c.body_too_large.load(Relaxed));
    }
    let bytes = s.counter(BYTES_IN, "Request body bytes received from clients.", &[]);
    set(&bytes, &[] as &[&str], rt.metrics.bytes_in.load(Relaxed));
    let bytes = s.counter(BYTES_OUT, "Response body bytes sent to clients.", &[]);
    set(&bytes, &[] as &[&str], rt.metrics.bytes_out.load(Relaxed));

    let conns = s.gauge(CONNECTIONS_OPEN, "Client connections open now.", &[]);
    conns
        .with_label_values::<&str>(&[])
        .set(rt.connections.open() as i64);
    let max = s.gauge(CONNECTIONS_MAX, "server.max_connections.", &[]);
    max.with_label_values::<&str>(&[])
        .set(rt.connections.max().min(i64::MAX as usize) as i64);
    let refused = s.counter(
        CONNECTIONS_REFUSED,
        "Client connections refused by a connection cap.",
        &[],
    );
    set(&refused, &[] as &[&str], rt.connections.refused());

    let ws = s.gauge(
        WEBSOCKETS_OPEN,
        "Upgraded connections open now, by pool.",
        &["pool"],
    );
    let retries = s.counter(
        RETRIES,
        "Requests tried again on another backend, by pool.",
        &["pool"],
    );
    let unknown = s.counter(
        SIO_SESSION_UNKNOWN,
        "Session ID unknown answers for sids of a down node.",
        &["pool"],
    );
    let pb = ["pool", "backend"];
    let up = s.gauge(BACKEND_UP, "Whether the backend may receive requests.", &pb);
    let drn = s.gauge(BACKEND_DRAINING, "Whether the backend is draining.", &pb);
    let breq = s.counter(BACKEND_REQUESTS, "Requests sent to the backend.", &pb);
    let berr = s.counter(
        BACKEND_ERRORS,
        "Connect or proxy errors with the backend.",
        &pb,
    );
    let bfl = s.gauge(BACKEND_IN_FLIGHT, "Requests in flight to the backend.", &pb);
    let bws = s.gauge(BACKEND_WEBSOCKETS, "WebSockets open to the backend.", &pb);
    let bss = s.gauge(
        BACKEND_SESSIONS,
        "Live Socket.IO sessions on the backend.",
        &pb,
    );
    let hcf = s.counter(HEALTH_CHECK_FAILURES, "Failed active health checks.", &pb);
    let hs = s.counter(
        SIO_HANDSHAKES,
        "Socket.IO handshakes tagged with the node.",
        &pb,
    );
    let upg = s.counter(
        SIO_UPGRADES,
        "Socket.IO sessions upgraded to WebSocket.",
        &pb,
    );
    for h in &rt.pools {
        let p = h.load();
        let pool = p.name.as_str();
        let sessions = p.live_sessions();
        ws.with_label_values(&[pool]).set(p.upgraded() as i64);
        set(&retries, &[pool], p.stats.retries.load(Relaxed));
        set(&unknown, &[pool], p.stats.session_unknown.load(Relaxed));
        for (b, n) in p.backends.iter().zip(sessions) {
            let addr = b.addr.to_string();
            let l = [pool, addr.as_str()];
            up.with_label_values(&l).set(b.usable() as i64);
            drn.with_label_values(&l)
                .set(b.draining.load(Relaxed) as i64);
            set(&breq, &l, b.requests.load(Relaxed));
            set(&berr, &l, b.errors.load(Relaxed));
            bfl.with_label_values(&l)
                .set(b.in_flight.load(Relaxed) as i64);
            bws.with_label_values(&l)
                .set(b.websockets.load(Relaxed) as i64);
            bss.with_label_values(&l).set(n as i64);
            set(&hcf, &l, b.stats.check_failures.load(Relaxed));
            set(&hs, &l, b.stats.sio_handshakes.load(Relaxed));
            set(&upg, &l, b.stats.sio_upgrades.load(Relaxed));
        }
    }
    s.add(&*RESPONSE_TIME);
    let mut out = Vec::with_capacity(16 * 1024);
    if let Err(e) = TextEncoder::new().encode(&s.registry.gather(), &mut out) {
        log::warn!("metrics: {e}");
    }
    out
}

/// Upstream response times of every pool (one process serves one config).
static RESPONSE_TIME: once_cell::sync::Lazy<prometheus::HistogramVec> =
    once_cell::sync::Lazy::new(|| {
        prometheus::HistogramVec::new(
            prometheus::HistogramOpts::new(
                UPSTREAM_RESPONSE,
                "Time from choosing the backend to its response header, by pool.",
            ),
            &["pool"],
        )
        .expect("valid metric")
    });

/// The upstream response-time histogram of pool `pool`.
pub fn response_time(pool: &str) -> prometheus::Histogram {
    RESPONSE_TIME.with_label_values(&[pool])
}
