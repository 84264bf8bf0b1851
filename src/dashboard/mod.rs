//! The operators' dashboard on the admin listener: one HTML page (`/` and `/dashboard`) with
//! its script and style at their own paths (embedded in the binary, so the page carries a
//! strict `Content-Security-Policy: default-src 'self'`), and `/history`, the per-second
//! rates of the last five minutes.
//!
//! The page reads `/status` and `/history` every second and draws everything itself (tables,
//! SVG charts); drain / undrain go to the admin API with the token the operator pastes.
//! The history is a fixed ring of [`CAPACITY`] samples of totals the gateway keeps anyway
//! (route status classes, backend errors, open connections and WebSockets), taken once a
//! second by [`Sampler`], a background service: the request path pays nothing for it.

use crate::runtime::Runtime;
use serde::Serialize;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

/// Samples kept: five minutes at one a second.
pub(crate) const CAPACITY: usize = 300;
/// Time between samples.
const INTERVAL: Duration = Duration::from_secs(1);

const INDEX_HTML: &str = include_str!("index.html");
const DASHBOARD_JS: &str = include_str!("dashboard.js");
const DASHBOARD_CSS: &str = include_str!("dashboard.css");

/// The page's policy: its own script and style only (no inline code), no framing (the
/// drain buttons must not be clickjacked), no form posts or `<base>` elsewhere.
const CSP: &str = "default-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// One sample of the totals the rates are computed from.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct Totals {
    /// Unix time of the sample, seconds.
    pub at: f64,
    /// Requests answered by the gateway (every route, every status class).
    pub requests: u64,
    /// Of those, answered 5xx.
    pub server_errors: u64,
    /// Connect or proxy errors with the backends of every pool (when discovery removes a
    /// backend its count goes with it: that second's rate is 0, not negative).
    pub upstream_errors: u64,
    /// Client connections open now.
    pub connections: u64,
    /// WebSockets (upgraded connections) open now.
    pub websockets: u64,
}

impl Totals {
    /// The totals of `rt` now: a few dozen relaxed loads.
    pub(crate) fn of(rt: &Runtime) -> Totals {
        let (requests, server_errors) = rt.metrics.answered();
        let (mut upstream_errors, mut websockets) = (0, 0);
        for h in &rt.pools {
            // The current snapshot (discovery may replace it).
            let p = h.load();
            websockets += p.upgraded() as u64;
            upstream_errors += p
                .backends
                .iter()
                .map(|b| b.errors.load(Relaxed))
                .sum::<u64>();
        }
        Totals {
            at: unix_now(),
            requests,
            server_errors,
            upstream_errors,
            connections: rt.connections.open() as u64,
            websockets,
        }
    }
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// A fixed ring of the latest [`CAPACITY`] samples.
#[derive(Debug)]
pub(crate) struct Ring {
    buf: [Totals; CAPACITY],
    /// Where the next sample goes.
    next: usize,
    len: usize,
    /// Whether the request path counts requests (copied into [`Rates`]).
    counting: bool,
}

/// `/history`: per-second rates between consecutive samples, oldest first. Counters give
/// rates (`requests`, `server_errors`, `upstream_errors`), gauges their value at the later
/// sample (`connections`, `websockets`); `at` is the later sample's unix time.
#[derive(Debug, Default, Serialize, PartialEq)]
pub(crate) struct Rates {
    /// Seconds between samples.
    pub interval: f64,
    /// Most samples kept (one more than the most rates).
    pub capacity: usize,
    /// Whether the request path counts requests (`admin.metrics`); if not, request rates are 0.
    pub counting: bool,
    /// Unix time of each rate's later sample.
    pub at: Vec<f64>,
    /// Requests answered per second.
    pub requests: Vec<f64>,
    /// 5xx answers per second.
    pub server_errors: Vec<f64>,
    /// Upstream connect or proxy errors per second.
    pub upstream_errors: Vec<f64>,
    /// Client connections open.
    pub connections: Vec<u64>,
    /// WebSockets open.
    pub websockets: Vec<u64>,
}

impl Default for Ring {
    fn default() -> Self {
        Ring {
            buf: [Totals::default(); CAPACITY],
            next: 0,
            len: 0,
            counting: true,
        }
    }
}

impl Ring {
    /// Adds a sample, overwriting the oldest once full.
    pub(crate) fn push(&mut self, t: Totals) {
        self.buf[self.next] = t;
        self.next = (self.next + 1) % CAPACITY;
        self.len = (self.len + 1).min(CAPACITY);
    }

    /// The samples, oldest first.
    pub(crate) fn samples(&self) -> impl Iterator<Item = &Totals> {
        let start = (self.next + CAPACITY - self.len) % CAPACITY;
        (0..self.len).map(move |i| &self.buf[(start + i) % CAPACITY])
    }

    /// Per-second rates between consecutive samples (a counter that went back counts 0).
    pub(crate) fn rates(&self) -> Rates {
        let mut r = Rates {
            interval: INTERVAL.as_secs_f64(),
            capacity: CAPACITY,
            counting: self.counting,
            ..Rates::default()
        };
        let mut prev: Option<&Totals> = None;
        for s in self.samples() {
            if let Some(p) = prev.filter(|p| s.at > p.at) {
                let dt = s.at - p.at;
                let rate = |now: u64, then: u64| round3(now.saturating_sub(then) as f64 / dt);
                r.at.push(round3(s.at));
                r.requests.push(rate(s.requests, p.requests));
                r.server_errors.push(rate(s.server_errors, p.server_errors));
                r.upstream_errors
                    .push(rate(s.upstream_errors, p.upstream_errors));
                r.connections.push(s.connections);
                r.websockets.push(s.websockets);
            }
            prev = Some(s);
        }
        r
    }
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// The history of this process (one process serves one config, like the response-time
/// histogram in `metrics`): written by [`Sampler`], read by `/history`.
static HISTORY: once_cell::sync::Lazy<Mutex<Ring>> =
    once_cell::sync::Lazy::new(|| Mutex::new(Ring::default()));

/// Takes a sample of the totals every second into the history ring; runs with the admin
/// listener (register it where that is).
pub(crate) struct Sampler(pub Arc<Runtime>);

#[async_trait::async_trait]
impl pingora_core::services::background::BackgroundService for Sampler {
    async fn start(&self, mut shutdown: pingora_core::server::ShutdownWatch) {
        let mut tick = tokio::time::interval(INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        HISTORY
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .counting = self.0.metrics.on;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.changed() => return,
            }
            let t = Totals::of(&self.0);
            HISTORY
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(t);
        }
    }
}

/// Whether `path` is one of the dashboard's (the admin app routes these here).
pub(crate) fn serves(path: &str) -> bool {
    matches!(
        path,
        "/" | "/dashboard" | "/dashboard.js" | "/dashboard.css" | "/history"
    )
}

/// The answer to a GET of one of the dashboard's paths.
pub(crate) fn response(path: &str) -> http::Response<Vec<u8>> {
    match path {
        "/" | "/dashboard" => asset("text/html; charset=utf-8", INDEX_HTML),
        "/dashboard.js" => asset("text/javascript; charset=utf-8", DASHBOARD_JS),
        "/dashboard.css" => asset("text/css; charset=utf-8", DASHBOARD_CSS),
        "/history" => {
            let rates = HISTORY
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .rates();
            let mut body = serde_json::to_vec(&rates).unwrap_or_default();
            body.push(b'\n');
            build("application/json", body)
        }
        _ => build("text/plain", b"not found\n".to_vec()),
    }
}

fn asset(content_type: &str, text: &'static str) -> http::Response<Vec<u8>> {
    build(content_type, text.as_bytes().to_vec())
}

fn build(content_type: &str, body: Vec<u8>) -> http::Response<Vec<u8>> {
    use http::header;
    http::Response::builder()
        .status(200)
        .header(header::CONTENT_TYPE, content_type)
        .header(header::CONTENT_LENGTH, body.len())
        .header(header::CACHE_CONTROL, "no-store")
        .header(header::CONTENT_SECURITY_POLICY, CSP)
        .header(header::X_CONTENT_TYPE_OPTIONS, "nosniff")
        .header(header::X_FRAME_OPTIONS, "DENY")
        .header(header::REFERRER_POLICY, "no-referrer")
        .body(body)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(at: f64, requests: u64, server_errors: u64, connections: u64) -> Totals {
        Totals {
            at,
            requests,
            server_errors,
            upstream_errors: server_errors / 2,
            connections,
            websockets: connections / 2,
        }
    }

    #[test]
    fn rates_are_deltas_over_the_time_between_samples() {
        let mut r = Ring::default();
        assert_eq!(r.rates().requests, Vec::<f64>::new(), "no sample, no rate");
        r.push(sample(100.0, 10, 0, 4));
        assert!(r.rates().at.is_empty(), "one sample, no rate yet");
        r.push(sample(101.0, 25, 2, 6));
        r.push(sample(103.0, 45, 6, 2)); // a late tick: 2 s
        let rates = r.rates();
        assert_eq!(rates.at, vec![101.0, 103.0]);
        assert_eq!(rates.requests, vec![15.0, 10.0]);
        assert_eq!(rates.server_errors, vec![2.0, 2.0]);
        assert_eq!(rates.upstream_errors, vec![1.0, 1.0]);
        assert_eq!(
            rates.connections,
            vec![6, 2],
            "gauges are values, not rates"
        );
        assert_eq!(rates.websockets, vec![3, 1]);
        assert_eq!(rates.capacity, CAPACITY);
    }

    #[test]
    fn a_counter_that_goes_back_or_a_clock_that_stalls_gives_no_negative_rate() {
        let mut r = Ring::default();
        r.push(sample(10.0, 100, 0, 0));
        r.push(sample(11.0, 40, 0, 0));
        r.push(sample(11.0, 50, 0, 0)); // same instant: skipped
        r.push(sample(12.0, 60, 0, 0));
        let rates = r.rates();
        assert_eq!(rates.requests, vec![0.0, 10.0]);
        assert_eq!(rates.at, vec![11.0, 12.0]);
    }

    #[test]
    fn the_ring_keeps_the_latest_samples_in_order_once_it_wraps() {
        let mut r = Ring::default();
        let n = CAPACITY * 2 + 7;
        for i in 0..n {
            // Request totals grow by i each second: the rate at second i is i.
            let total = (i * (i + 1) / 2) as u64;
            r.push(sample(i as f64, total, 0, i as u64));
        }
        let kept: Vec<f64> = r.samples().map(|s| s.at).collect();
        assert_eq!(kept.len(), CAPACITY, "memory is fixed");
        assert_eq!(kept[0], (n - CAPACITY) as f64, "oldest kept");
        assert_eq!(*kept.last().unwrap(), (n - 1) as f64, "newest last");
        assert!(kept.windows(2).all(|w| w[1] == w[0] + 1.0), "in order");
        let rates = r.rates();
        assert_eq!(rates.requests.len(), CAPACITY - 1);
        let first = (n - CAPACITY + 1) as f64;
        assert_eq!(rates.requests[0], first);
        assert_eq!(*rates.requests.last().unwrap(), (n - 1) as f64);
        assert_eq!(*rates.connections.last().unwrap(), (n - 1) as u64);
    }

    #[test]
    fn routes_and_headers() {
        for p in [
            "/",
            "/dashboard",
            "/dashboard.js",
            "/dashboard.css",
            "/history",
        ] {
            assert!(serves(p), "{p}");
            let r = response(p);
            assert_eq!(r.status(), 200);
            assert_eq!(r.headers()[http::header::CONTENT_SECURITY_POLICY], CSP);
        }
        assert!(!serves("/status") && !serves("/dashboard/x"));
        let page = String::from_utf8(response("/").into_body()).unwrap();
        assert!(page.contains("src=\"/dashboard.js\"") && !page.contains("<script>"));
        let h: serde_json::Value = serde_json::from_slice(response("/history").body()).unwrap();
        assert_eq!(h["capacity"], CAPACITY);
    }
}
