//! The admin listener: `GET /health` (the gateway itself), `GET /status` (JSON: pools,
//! backends, state, in-flight / WebSocket / Socket.IO session counts, recent health checks),
//! `GET /metrics`, the dashboard (`/`, `/dashboard`, its assets and `/history`, see
//! [`crate::dashboard`]), and `POST /pools/{pool}/backends/{address}/drain` / `undrain` with
//! `Authorization: Bearer <admin.token>` (refused without a configured token). GET and HEAD
//! only elsewhere (405), and only under an IP address or `localhost` as Host (403 otherwise).

use crate::runtime::Runtime;
use async_trait::async_trait;
use pingora_core::apps::http_app::ServeHttp;
use pingora_core::protocols::http::ServerSession;
use serde_json::json;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

/// The admin HTTP app.
pub struct Admin {
    rt: Arc<Runtime>,
}

impl Admin {
    /// An admin app reporting on `rt`.
    pub fn new(rt: Arc<Runtime>) -> Admin {
        Admin { rt }
    }

    /// The `/status` document.
    pub fn status(&self) -> serde_json::Value {
        let mut total_in_flight = 0usize;
        let pools: serde_json::Map<String, serde_json::Value> = self
            .rt
            .pools
            .iter()
            .map(|h| {
                let p = h.load();
                let sessions = p.live_sessions();
                let backends: Vec<_> = p
                    .backends
                    .iter()
                    .zip(sessions)
                    .map(|(b, sessions)| {
                        let in_flight = b.in_flight.load(Relaxed);
                        total_in_flight += in_flight;
                        json!({
                            "address": b.addr.to_string(),
                            "configured": b.configured,
                            "tag": b.tag,
                            "weight": b.weight,
                            "healthy": b.usable(),
                            "state": b.state(),
                            "active_up": b.active_up(),
                            "ejected": b.ejected(),
                            "in_flight": in_flight,
                            "websockets": b.websockets.load(Relaxed),
                            "sessions": sessions,
                            "requests": b.requests.load(Relaxed),
                            "errors": b.errors.load(Relaxed),
                            "checks": b.recent_checks(),
                        })
                    })
                    .collect();
                let balance = serde_json::to_value(format!("{:?}", p.balance)).unwrap_or_default();
                (
                    p.name.clone(),
                    json!({
                        "balance": balance,
                        "health_check": p.health_check.is_some(),
                        "healthy": p.usable_count(),
                        "upgraded": p.upgraded(),
                        "discovery": p.discovery.is_some(),
                        "backends": backends,
                    }),
                )
            })
            .collect();
        json!({
            "version": env!("CARGO_PKG_VERSION"),
            "pid": std::process::id(),
            "routes": self.rt.router.len(),
            "in_flight": total_in_flight,
            "connections": {
                "open": self.rt.connections.open(),
                "max": self.rt.connections.max(),
                "refused": self.rt.connections.refused(),
            },
            "pools": pools,
        })
    }
}

/// `/pools/{pool}/backends/{address}/drain` or `/undrain`: (pool, address, drain?).
fn drain_target(path: &str) -> Option<(&str, &str, bool)> {
    let rest = path.strip_prefix("/pools/")?;
    let (pool, rest) = rest.split_once("/backends/")?;
    let (addr, action) = rest.rsplit_once('/')?;
    let drain = match action {
        "drain" => true,
        "undrain" => false,
        _ => return None,
    };
    (!pool.is_empty() && !addr.is_empty()).then_some((pool, addr, drain))
}

impl Admin {
    /// Drains or undrains a backend, for a request bearing `admin.token`.
    fn set_draining(
        &self,
        req: &pingora_http::RequestHeader,
        pool: &str,
        addr: &str,
        drain: bool,
    ) -> http::Response<Vec<u8>> {
        let Some(token) = &self.rt.admin_token else {
            return reply(
                403,
                "text/plain",
                b"write endpoints need admin.token in the config\n".to_vec(),
            );
        };
        let given = req
            .headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        if !bool::from(subtle::ConstantTimeEq::ct_eq(
            given.as_bytes(),
            token.as_bytes(),
        )) {
            let mut r = reply(401, "text/plain", b"bad or missing bearer token\n".to_vec());
            r.headers_mut().insert(
                http::header::WWW_AUTHENTICATE,
                http::HeaderValue::from_static("Bearer"),
            );
            return r;
        }
        let Some(p) = self
            .rt
            .pools
            .iter()
            .find(|p| p.name == pool)
            .map(|h| h.load())
        else {
            return reply(
                404,
                "text/plain",
                format!("no pool \"{pool}\"\n").into_bytes(),
            );
        };
        // An address names one backend; a configured name may stand for several (discovery).
        let by_name: Vec<usize> = (0..p.backends.len())
            .filter(|&i| p.backends[i].configured == addr)
            .collect();
        let found = p
            .backends
            .iter()
            .position(|b| b.addr.to_string() == addr)
            .or(match by_name.as_slice() {
                [i] => Some(*i),
                _ => None,
            });
        let Some((i, b)) = found.map(|i| (i, &p.backends[i])) else {
            if by_name.len() > 1 {
                let list: Vec<String> = by_name
                    .iter()
                    .map(|&i| p.backends[i].addr.to_string())
                    .collect();
                return reply(
                    409,
                    "text/plain",
                    format!(
                        "\"{addr}\" names {} backends of pool {pool}: drain one address: {}\n",
                        list.len(),
                        list.join(", ")
                    )
                    .into_bytes(),
                );
            }
            return reply(
                404,
                "text/plain",
                format!("pool {pool} has no backend \"{addr}\"\n").into_bytes(),
            );
        };
        b.draining.store(drain, Relaxed);
        log::warn!(
            "upstream {pool} backend {}: {} by the admin API",
            b.addr,
            if drain { "draining" } else { "undrained" }
        );
        let sessions = p.live_sessions().get(i).copied().unwrap_or(0);
        let body = json!({
            "pool": pool,
            "backend": b.addr.to_string(),
            "state": b.state(),
            "in_flight": b.in_flight.load(Relaxed),
            "websockets": b.websockets.load(Relaxed),
            "sessions": sessions,
        });
        reply(200, "application/json", format!("{body}\n").into_bytes())
    }
}

fn reply(status: u16, content_type: &str, body: Vec<u8>) -> http::Response<Vec<u8>> {
    http::Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, content_type)
        .header(http::header::CONTENT_LENGTH, body.len())
        .header(http::header::CACHE_CONTROL, "no-store")
        .body(body)
        .unwrap_or_default()
}

/// Whether `host` (a Host header value) may address the admin listener: an IP literal or
/// `localhost`. A DNS-rebinding page in an operator's browser reaches it under its own
/// hostname, which is refused, so it cannot read backend addresses and node tags.
fn admin_host_allowed(host: &str) -> bool {
    let name = crate::util::host_without_port(host);
    if let Some(v6) = name.strip_prefix('[').and_then(|n| n.strip_suffix(']')) {
        return v6.parse::<std::net::Ipv6Addr>().is_ok();
    }
    name.eq_ignore_ascii_case("localhost") || name.parse::<std::net::IpAddr>().is_ok()
}

#[async_trait]
impl ServeHttp for Admin {
    async fn response(&self, session: &mut ServerSession) -> http::Response<Vec<u8>> {
        let req = session.req_header();
        let write = drain_target(req.uri.path());
        let allowed = match write {
            Some(_) => req.method == http::Method::POST,
            None => req.method == http::Method::GET || req.method == http::Method::HEAD,
        };
        if !allowed {
            let mut r = reply(405, "text/plain", b"method not allowed\n".to_vec());
            r.headers_mut().insert(
                http::header::ALLOW,
                http::HeaderValue::from_static(if write.is_some() { "POST" } else { "GET, HEAD" }),
            );
            return r;
        }
        let host = req
            .headers
            .get(http::header::HOST)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if !admin_host_allowed(host) {
            return reply(
                403,
                "text/plain",
                b"the admin listener answers to an IP address or localhost only\n".to_vec(),
            );
        }
        if let Some((pool, addr, drain)) = write {
            return self.set_draining(req, pool, addr, drain);
        }
        let path = req.uri.path().to_string();
        match path.as_str() {
            "/health" => reply(200, "text/plain", b"OK\n".to_vec()),
            p if crate::dashboard::serves(p) => crate::dashboard::response(p),
            "/status" => {
                let mut body = serde_json::to_vec_pretty(&self.status()).unwrap_or_default();
                body.push(b'\n');
                reply(200, "application/json", body)
            }
            "/metrics" => reply(
                200,
                "text/plain; version=0.0.4",
                crate::metrics::render(&self.rt),
            ),
            _ => reply(
                404,
                "text/plain",
                b"not found: try / (dashboard), /health, /status or /metrics\n".to_vec(),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::admin_host_allowed;

    #[test]
    fn hosts_the_admin_listener_answers_to() {
        for ok in [
            "127.0.0.1:9901",
            "127.0.0.1",
            "localhost:9901",
            "LOCALHOST",
            "[::1]:9901",
            "10.1.2.3:80",
        ] {
            assert!(admin_host_allowed(ok), "{ok}");
        }
        for bad in [
            "",
            "evil.example",
            "evil.example:9901",
            "localhost.evil.example",
            "[evil]:1",
            "127.0.0.1.nip.io",
        ] {
            assert!(!admin_host_allowed(bad), "{bad}");
        }
    }
}
