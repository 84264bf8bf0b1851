//! Active health checks: one Pingora background service per pool runs Pingora's TCP or HTTP
//! check against every backend each interval and flips the backend after `fails` consecutive
//! failures or `passes` consecutive successes. The first round runs before the service
//! reports ready, so a new process (binary upgrade) starts with primed health.

use super::{HealthCheckSettings, Pool};
use async_trait::async_trait;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use pingora_core::services::ServiceReadyNotifier;
use pingora_http::ResponseHeader;
use pingora_load_balancing::health_check::{HealthCheck, HttpHealthCheck, TcpHealthCheck};
use pingora_load_balancing::Backend as LbBackend;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

/// The health-check background service of one pool.
pub struct HealthChecker {
    pool: Arc<Pool>,
    settings: HealthCheckSettings,
    check: Box<dyn HealthCheck + Send + Sync>,
    targets: Vec<LbBackend>,
}

impl HealthChecker {
    /// A checker for `pool`, or `None` when the pool has no active checks.
    pub fn new(pool: Arc<Pool>) -> Option<HealthChecker> {
        let settings = pool.health_check.clone()?;
        let check: Box<dyn HealthCheck + Send + Sync> = match &settings.http {
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
                    http::Uri::try_from(path.as_str())
                        .unwrap_or_else(|_| http::Uri::from_static("/")),
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
        };
        let targets = pool
            .backends
            .iter()
            .map(|b| LbBackend {
                addr: pingora_core::protocols::l4::socket::SocketAddr::Inet(b.addr),
                weight: b.weight as usize,
                ext: Default::default(),
            })
            .collect();
        Some(HealthChecker {
            pool,
            settings,
            check,
            targets,
        })
    }

    async fn round(&self, streaks: &mut [(u32, u32)]) {
        let checks = self
            .targets
            .iter()
            .map(|t| tokio::time::timeout(self.settings.timeout, self.check.check(t)));
        let results = futures_join_all(checks).await;
        for (i, res) in results.into_iter().enumerate() {
            let b = &self.pool.backends[i];
            let err = match res {
                Ok(Ok(())) => None,
                Ok(Err(e)) if super::is_local_resource_error(&e) => {
                    // Our own shortage says nothing about the backend: no verdict this round.
                    log::warn!(
                        "upstream {} backend {} not checked: {e}",
                        self.pool.name,
                        b.addr
                    );
                    continue;
                }
                Ok(Err(e)) => Some(e.to_string()),
                Err(_) => Some(format!("timed out after {:?}", self.settings.timeout)),
            };
            let (ok_streak, fail_streak) = &mut streaks[i];
            match err {
                None => {
                    *ok_streak += 1;
                    *fail_streak = 0;
                    if !b.active_up.load(Relaxed) && *ok_streak >= self.settings.passes {
                        b.active_up.store(true, Relaxed);
                        // Verified healthy again: lift any passive ejection from its outage.
                        b.clear_ejection();
                        log::warn!(
                            "upstream {} backend {} is healthy again",
                            self.pool.name,
                            b.addr
                        );
                    }
                }
                Some(e) => {
                    b.stats.check_failures.fetch_add(1, Relaxed);
                    *fail_streak += 1;
                    *ok_streak = 0;
                    if b.active_up.load(Relaxed) && *fail_streak >= self.settings.fails {
                        b.active_up.store(false, Relaxed);
                        log::warn!(
                            "upstream {} backend {} marked down: {e}",
                            self.pool.name,
                            b.addr
                        );
                    } else {
                        log::debug!(
                            "upstream {} backend {} check failed: {e}",
                            self.pool.name,
                            b.addr
                        );
                    }
                }
            }
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
        let mut streaks = vec![(0u32, 0u32); self.targets.len()];
        self.round(&mut streaks).await;
        for (i, (_, fails)) in streaks.iter().enumerate() {
            let b = &self.pool.backends[i];
            if *fails > 0 && b.active_up.swap(false, Relaxed) {
                log::warn!(
                    "upstream {} backend {} is down at start",
                    self.pool.name,
                    b.addr
                );
            }
        }
        ready.notify_ready();
        let mut tick = tokio::time::interval(self.settings.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = tick.tick() => self.round(&mut streaks).await,
                _ = shutdown.changed() => return,
            }
        }
    }
}
