//! The admin listener: `GET /health` (the gateway itself) and `GET /status` (JSON: pools,
//! backends, health, in-flight counts). GET and HEAD only (405 otherwise), and only under an
//! IP address or `localhost` as Host (403 otherwise).

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
            .map(|p| {
                let backends: Vec<_> = p
                    .backends
                    .iter()
                    .map(|b| {
                        let in_flight = b.in_flight.load(Relaxed);
                        total_in_flight += in_flight;
                        json!({
                            "address": b.addr.to_string(),
                            "configured": b.configured,
                            "tag": b.tag,
                            "weight": b.weight,
                            "healthy": b.usable(),
                            "active_up": b.active_up(),
                            "ejected": b.ejected(),
                            "in_flight": in_flight,
                            "requests": b.requests.load(Relaxed),
                            "errors": b.errors.load(Relaxed),
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
        if req.method != http::Method::GET && req.method != http::Method::HEAD {
            let mut r = reply(405, "text/plain", b"method not allowed\n".to_vec());
            r.headers_mut().insert(
                http::header::ALLOW,
                http::HeaderValue::from_static("GET, HEAD"),
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
        let path = req.uri.path().to_string();
        match path.as_str() {
            "/health" => reply(200, "text/plain", b"OK\n".to_vec()),
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
                b"not found: try /health, /status or /metrics\n".to_vec(),
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
