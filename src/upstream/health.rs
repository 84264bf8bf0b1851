//! A pool's keeper: one Pingora background service per pool that runs Pingora's TCP or HTTP
//! check against every backend each interval (flipping a backend after `fails` consecutive
//! failures or `passes` consecutive successes) and, with `discovery`, re-resolves the
//! server names and publishes new snapshots. The first round runs before the service reports
//! ready, so a new process (binary upgrade) starts with primed health.

use super::{discovery, Backend, CheckResult, HealthCheckSettings, Pool, PoolHandle};
use crate::config::DnsDiscoveryConf;
use async_trait::async_trait;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use pingora_core::services::ServiceReadyNotifier;
use pingora_http::ResponseHeader;
use pingora_load_balancing::health_check::{HealthCheck, HttpHealthCheck, TcpHealthCheck};
use pingora_load_balancing::Backend as LbBackend;
use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Longest wait for one name's resolution (less when the discovery interval is shorter).
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);

/// The keeper service of one pool (health checks and discovery).
pub struct HealthChecker {
    handle: Arc<PoolHandle>,
    checks: Option<(HealthCheckSettings, Box<dyn HealthCheck + Send + Sync>)>,
    discovery: Option<DnsDiscoveryConf>,
}

fn make_check(pool: &Pool, settings: &HealthCheckSettings) -> Box<dyn HealthCheck + Send + Sync> {
    match &settings.http {
        None => {
            let mut c = match &pool.tls {
                Some(t) => TcpHealthCheck::new_tls(&t.sni.clone().unwrap_or_default()),
                None => TcpHealthCheck::new(),
            };
            c.peer_template.options.connection_timeout = Some(settings.timeout);
            if let Some(t) = &pool.tls {
                t.apply(&mut c.peer_template.options);
            }
            c
        }
        Some((path, status, host)) => {
            let mut c = HttpHealthCheck::new(host, pool.tls.is_some());
            if let Some(t) = &pool.tls {
                c.peer_template.sni = t.sni.clone().unwrap_or_else(|| host.clone());
                t.apply(&mut c.peer_template.options);
            }
            c.req.set_uri(
                http::Uri::try_from(path.as_str()).unwrap_or_else(|_| http::Uri::from_static("/")),
            );
            c.peer_template.options.connection_timeout = Some(settings.timeout);
            c.peer_template.options.read_timeout = Some(settings.timeout);
            c.peer_template.options.total_connection_timeout = Some(settings.timeout);
            let want = *status;
            c.validator = Some(Box::new(move |resp: &ResponseHeader| {
                if resp.status.as_u16() == want {
                    Ok(())
                } else {
                    pingora_core::Error::e_explain(
                        pingora_core::ErrorType::Custom("unexpected status"),
                        format!("status {} (want {want})", resp.status.as_u16()),
                    )
                }
            }));
            Box::new(c)
        }
    }
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

impl HealthChecker {
    /// A keeper for the pool behind `handle`, or `None` when it has neither active checks
    /// nor discovery.
    pub fn new(handle: Arc<PoolHandle>) -> Option<HealthChecker> {
        let pool = handle.load();
        let checks = pool.health_check.clone().map(|s| {
            let c = make_check(&pool, &s);
            (s, c)
        });
        let discovery = pool.discovery.clone();
        if checks.is_none() && discovery.is_none() {
            return None;
        }
        Some(HealthChecker {
            handle,
            checks,
            discovery,
        })
    }

    /// Checks every backend of the current snapshot once; returns the backends that failed.
    async fn round(&self) -> Vec<Arc<Backend>> {
        let Some((settings, check)) = &self.checks else {
            return Vec::new();
        };
        let pool = self.handle.load();
        let targets: Vec<LbBackend> = pool
            .backends
            .iter()
            .map(|b| LbBackend {
                addr: pingora_core::protocols::l4::socket::SocketAddr::Inet(b.addr),
                weight: b.weight as usize,
                ext: Default::default(),
            })
            .collect();
        let checks = targets.iter().map(|t| async move {
            let start = Instant::now();
            let r = tokio::time::timeout(settings.timeout, check.check(t)).await;
            (r, start.elapsed())
        });
        let results = futures_join_all(checks).await;
        let mut failed = Vec::new();
        for (b, (res, took)) in pool.backends.iter().zip(results) {
            let err = match res {
                Ok(Ok(())) => None,
                Ok(Err(e)) if super::is_local_resource_error(&e) => {
                    // Our own shortage says nothing about the backend: no verdict this round.
                    log::warn!("upstream {} backend {} not checked: {e}", pool.name, b.addr);
                    continue;
                }
                Ok(Err(e)) => Some(e.to_string()),
                Err(_) => Some(format!("timed out after {:?}", settings.timeout)),
            };
            b.record_check(CheckResult {
                at: unix_now(),
                ok: err.is_none(),
                ms: took.as_secs_f64() * 1000.0,
                error: err.clone(),
            });
            match err {
                None => {
                    let oks = b.ok_streak.fetch_add(1, Relaxed) + 1;
                    b.fail_streak.store(0, Relaxed);
                    if !b.active_up.load(Relaxed) && oks >= settings.passes {
                        b.active_up.store(true, Relaxed);
                        // Verified healthy again: lift any passive ejection from its outage.
                        b.clear_ejection();
                        log::warn!("upstream {} backend {} is healthy again", pool.name, b.addr);
                    }
                }
                Some(e) => {
                    b.stats.check_failures.fetch_add(1, Relaxed);
                    let fails = b.fail_streak.fetch_add(1, Relaxed) + 1;
                    b.ok_streak.store(0, Relaxed);
                    failed.push(b.clone());
                    if b.active_up.load(Relaxed) && fails >= settings.fails {
                        b.active_up.store(false, Relaxed);
                        log::warn!("upstream {} backend {} marked down: {e}", pool.name, b.addr);
                    } else {
                        log::debug!(
                            "upstream {} backend {} check failed: {e}",
                            pool.name,
                            b.addr
                        );
                    }
                }
            }
        }
        failed
    }

    /// Re-resolves the server names; publishes a new snapshot when the set changed. A name
    /// that fails to resolve keeps its previous addresses (a DNS outage must not empty the
    /// pool). Returns whether a new snapshot went out.
    async fn rediscover(&self, d: &DnsDiscoveryConf) -> bool {
        let pool = self.handle.load();
        let mut resolved: Vec<Vec<SocketAddr>> = Vec::new();
        // All names at once, each bounded: a dead nameserver must not hold up the health
        // checks that run in this same loop.
        let limit = d.interval.0.min(RESOLVE_TIMEOUT);
        let lookups = pool.server_addresses().map(|a| {
            let (a, d) = (a.to_string(), d.clone());
            async move {
                match tokio::time::timeout(limit, discovery::resolve(a.clone(), d)).await {
                    Ok(r) => r,
                    Err(_) => Err(format!("resolving \"{a}\" timed out after {limit:?}")),
                }
            }
        });
        let results = futures_join_all(lookups).await;
        for (address, result) in pool.server_addresses().zip(results) {
            match result {
                Ok(v) => resolved.push(v),
                Err(e) => {
                    log::warn!(
                        "upstream {} discovery: {e}; keeping its addresses",
                        pool.name
                    );
                    resolved.push(
                        pool.backends
                            .iter()
                            .filter(|b| b.configured == address && !b.removed.load(Relaxed))
                            .map(|b| b.addr)
                            .collect(),
                    );
                }
            }
        }
        match pool.rediscovered(&resolved) {
            Some(p) => {
                self.handle.store(p);
                true
            }
            None => false,
        }
    }
}

/// Runs futures concurrently and returns their outputs in order.
async fn futures_join_all<F: std::future::Future>(futs: impl Iterator<Item = F>) -> Vec<F::Output> {
    let mut set: Vec<std::pin::Pin<Box<F>>> = futs.map(Box::pin).collect();
    let mut out: Vec<Option<F::Output>> = (0..set.len()).map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (i, f) in set.iter_mut().enumerate() {
            if out[i].is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => out[i] = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    out.into_iter()
        .map(|o| o.expect("all futures completed"))
        .collect()
}

#[async_trait]
impl BackgroundService for HealthChecker {
    async fn start_with_ready_notifier(
        &self,
        mut shutdown: ShutdownWatch,
        ready: ServiceReadyNotifier,
    ) {
        // Backends start up; a first round before "ready" primes their state. A first-round
        // failure counts fully, so a backend that is down at start is not sent traffic.
        for b in self.round().await {
            if b.active_up.swap(false, Relaxed) {
                log::warn!(
                    "upstream {} backend {} is down at start",
                    self.handle.name,
                    b.addr
                );
            }
        }
        ready.notify_ready();
        let never = Duration::from_secs(365 * 24 * 3600);
        let every = |d: Option<Duration>| {
            let mut t = tokio::time::interval(d.unwrap_or(never));
            t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            t
        };
        let mut check_tick = every(self.checks.as_ref().map(|(s, _)| s.interval));
        let mut dns_tick = every(self.discovery.as_ref().map(|d| d.interval.0));
        check_tick.tick().await;
        dns_tick.tick().await;
        loop {
            tokio::select! {
                _ = check_tick.tick() => {
                    self.round().await;
                }
                _ = dns_tick.tick() => {
                    // New backends are checked before they get traffic.
                    if let Some(d) = &self.discovery {
                        if self.rediscover(d).await {
                            self.round().await;
                        }
                    }
                }
                _ = shutdown.changed() => return,
            }
        }
    }
}
