//! Per-route request limits: the request rate per client key (GCRA by `governor`, nginx
//! `limit_req ... nodelay`), answered 429 with `Retry-After`. Only new requests count: the
//! frames of an upgraded WebSocket never pass here.

use crate::config::{Issues, RateLimitConf};
use governor::clock::Clock;
use governor::{DefaultKeyedRateLimiter, Quota};
use http::header::HeaderName;
use std::hash::BuildHasher;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// What identifies a client for a rate limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LimitKey {
    /// The client address (the peer, or from `X-Forwarded-For` of a trusted proxy).
    ClientIp,
    /// A request header (e.g. an API key); the client address when absent.
    Header(HeaderName),
    /// A cookie; the client address when absent.
    Cookie(String),
    /// The [`RateLimitKey`](crate::filter::RateLimitKey) a route filter put in the
    /// extensions (e.g. an authenticated user or tenant); the client address when absent.
    /// Counted after the route's filters ran.
    Filter,
}

/// A compiled `rate_limit` of one route.
pub struct RateLimit {
    /// One GCRA state per client, keyed by a keyed hash of the client key (fixed size, and
    /// clients cannot aim collisions at each other).
    limiter: DefaultKeyedRateLimiter<u64>,
    hasher: std::collections::hash_map::RandomState,
    /// What a client is.
    pub key: LimitKey,
    /// Status of a refused request.
    pub status: u16,
    log: crate::util::OncePerSecond,
    refused: AtomicU64,
}

impl std::fmt::Debug for RateLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimit")
            .field("key", &self.key)
            .field("status", &self.status)
            .finish_non_exhaustive()
    }
}

impl RateLimit {
    /// Compiles a route's `rate_limit` (`at` is its key path).
    pub fn compile(c: &RateLimitConf, at: &str, issues: &mut Issues) -> Option<RateLimit> {
        let key = match c.key.split_once(':') {
            None if c.key == "client_ip" => Some(LimitKey::ClientIp),
            None if c.key == "filter" => Some(LimitKey::Filter),
            Some(("header", h)) => match HeaderName::try_from(h.trim()) {
                Ok(n) => Some(LimitKey::Header(n)),
                Err(_) => {
                    issues.error(format!("{at}.key"), format!("invalid header name \"{h}\""));
                    None
                }
            },
            Some(("cookie", c)) if !c.trim().is_empty() => {
                Some(LimitKey::Cookie(c.trim().to_string()))
            }
            _ => {
                issues.error(
                    format!("{at}.key"),
                    format!(
                        "\"{}\" is not client_ip, header:NAME, cookie:NAME or filter",
                        c.key
                    ),
                );
                None
            }
        };
        if !(1..=1_000_000).contains(&c.rate) {
            issues.error(
                format!("{at}.rate"),
                format!("{} is out of range 1..=1000000", c.rate),
            );
        }
        let per = c.per.0;
        if per < Duration::from_millis(1) || per > Duration::from_secs(86_400) {
            issues.error(
                format!("{at}.per"),
                format!("{} is out of range 1ms..=1d", c.per),
            );
        }
        let burst = c.burst.unwrap_or(c.rate);
        if !(1..=1_000_000).contains(&burst) {
            issues.error(
                format!("{at}.burst"),
                format!("{burst} is out of range 1..=1000000"),
            );
        }
        if !(400..=599).contains(&c.status) {
            issues.error(
                format!("{at}.status"),
                format!("{} is not a 4xx or 5xx status", c.status),
            );
        }
        let interval = per.checked_div(c.rate.max(1))?;
        let quota = Quota::with_period(interval)?.allow_burst(NonZeroU32::new(burst)?);
        Some(RateLimit {
            limiter: DefaultKeyedRateLimiter::dashmap(quota),
            hasher: Default::default(),
            key: key?,
            status: c.status,
            log: Default::default(),
            refused: AtomicU64::new(0),
        })
    }

    /// Counts one request of the client `key`: `Ok`, or `Err(wait)` until it may try again.
    pub fn check(&self, key: &[u8]) -> Result<(), Duration> {
        let h = self.hasher.hash_one(key);
        self.limiter
            .check_key(&h)
            .map_err(|nu| nu.wait_time_from(self.limiter.clock().now()))
    }

    /// Logs a refusal at most once per second per route, with the count since the last line.
    pub fn log_refusal(&self, route: &str, client: &str) {
        let n = self.refused.fetch_add(1, Ordering::Relaxed) + 1;
        if self.log.ready() {
            self.refused.store(0, Ordering::Relaxed);
            log::warn!("{route}: rate limit: {client} refused ({n} refused since the last line)");
        }
    }

    /// Drops the state of clients whose allowance is full again (they are the same as new),
    /// so memory follows the clients active in the last burst period.
    pub fn evict(&self) {
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
    }

    /// Clients with state held.
    pub fn tracked(&self) -> usize {
        self.limiter.len()
    }
}

/// The `Retry-After` value for a wait: whole seconds, at least 1.
pub fn retry_after_secs(wait: Duration) -> u64 {
    (wait.as_millis().div_ceil(1000) as u64).max(1)
}

/// How often the state of clients back at a full allowance is dropped.
const EVICT_INTERVAL: Duration = Duration::from_secs(5);

/// Background service that keeps every route's rate-limit state to the active clients.
pub(crate) struct Evictor(pub std::sync::Arc<crate::runtime::Runtime>);

#[async_trait::async_trait]
impl pingora_core::services::background::BackgroundService for Evictor {
    async fn start(&self, mut shutdown: pingora_core::server::ShutdownWatch) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(EVICT_INTERVAL) => {}
                _ = shutdown.changed() => return,
            }
            for r in self.0.router.routes() {
                if let Some(l) = &r.rate_limit {
                    l.evict();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(yaml: &str) -> RateLimit {
        let c: RateLimitConf = serde_yaml::from_str(yaml).unwrap();
        let mut issues = Issues::default();
        let l = RateLimit::compile(&c, "routes[0].rate_limit", &mut issues);
        assert!(issues.errors.is_empty(), "{:?}", issues.errors);
        l.unwrap()
    }

    #[test]
    fn burst_then_refused_with_a_wait_per_client() {
        let l = limit("{ rate: 2, burst: 3 }");
        for _ in 0..3 {
            assert!(l.check(b"10.0.0.1").is_ok());
        }
        let wait = l.check(b"10.0.0.1").unwrap_err();
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_millis(500),
            "{wait:?}"
        );
        assert_eq!(retry_after_secs(wait), 1);
        // Another client has its own allowance.
        assert!(l.check(b"10.0.0.2").is_ok());
        assert_eq!(l.tracked(), 2);
    }

    #[test]
    fn idle_clients_are_evicted() {
        let l = limit("{ rate: 1000, burst: 1 }");
        for i in 0..100u32 {
            assert!(l.check(&i.to_be_bytes()).is_ok());
        }
        assert_eq!(l.tracked(), 100);
        std::thread::sleep(Duration::from_millis(20));
        l.evict();
        assert_eq!(l.tracked(), 0, "state of refilled clients is dropped");
    }

    #[test]
    fn bad_settings_name_their_key() {
        let c: RateLimitConf =
            serde_yaml::from_str("{ rate: 0, burst: 0, key: \"bogus\", status: 200 }").unwrap();
        let mut issues = Issues::default();
        assert!(RateLimit::compile(&c, "routes[3].rate_limit", &mut issues).is_none());
        let text: Vec<String> = issues.errors.iter().map(|e| e.to_string()).collect();
        for k in ["rate", "burst", "key", "status"] {
            assert!(
                text.iter()
                    .any(|e| e.contains(&format!("routes[3].rate_limit.{k}"))),
                "{k}: {text:?}"
            );
        }
    }

    #[test]
    fn retry_after_rounds_up() {
        assert_eq!(retry_after_secs(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1500)), 2);
        assert_eq!(retry_after_secs(Duration::from_secs(3)), 3);
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
    }
}
