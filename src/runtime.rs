//! The compiled config: everything the request path needs, built and validated once at load.
//! `Runtime::compile` is also the `-t` check: every problem comes back with its key path.

use crate::config::{server_conf, Config, ConfigError, Issue, Issues};
use crate::filter::Registry;
use crate::proxy::headers::Forwarded;
use crate::proxy::router::{Action, Router};
use crate::tls::ListenerTls;
use crate::upstream::{Pool, PoolHandle, UpstreamTls};
use pingora_core::server::configuration::ServerConf;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

/// Socket.IO's default pingInterval + pingTimeout: upgraded connections must outlive it.
const SOCKETIO_HEARTBEAT_SECS: u64 = 45;
/// Socket.IO's default pingInterval: a held polling request lasts this long.
const SOCKETIO_POLL_SECS: u64 = 25;

/// A client-facing listener.
#[derive(Debug, Clone)]
pub struct Listener {
    /// Address.
    pub addr: SocketAddr,
    /// TLS, when terminated here.
    pub tls: Option<ListenerTls>,
    /// Size of the per-connection read buffer (0: none).
    pub read_buffer: usize,
    /// Timeouts and header sizes for its clients.
    pub limits: pingora_core::protocols::http::v1::server::ClientLimits,
    /// Open connections allowed per client address (0: no limit).
    pub max_connections_per_ip: u32,
    /// Connections start with a PROXY protocol header naming the client.
    pub proxy_protocol: bool,
}

/// Default per-connection read buffer of a TLS listener: one TLS record.
pub const TLS_READ_BUFFER: usize = 16 * 1024;
/// Largest accepted `read_buffer`.
const MAX_READ_BUFFER: usize = 1024 * 1024;

/// A validated, compiled config.
pub struct Runtime {
    /// Route table.
    pub router: Router,
    /// Pools, indexed by `Action::Proxy { pool }`: each the current snapshot (replaced by
    /// discovery).
    pub pools: Vec<Arc<PoolHandle>>,
    /// Pool index by name (for filters that choose the pool).
    pub pool_index: HashMap<String, usize>,
    /// Forwarded-header policy.
    pub forwarded: Forwarded,
    /// Client-facing HTTP listeners.
    pub listeners: Vec<Listener>,
    /// TCP (L4) listeners, each relaying to a pool ([`crate::tcp_proxy`]).
    pub tcp_listeners: Vec<crate::tcp_proxy::TcpListener>,
    /// Local ports whose plain-HTTP requests are redirected to https.
    pub redirect_ports: Vec<u16>,
    /// Port of the first TLS listener (the redirect target).
    pub https_port: Option<u16>,
    /// The local port of a connection known from its TLS-ness alone: `[plain, tls]`, set when
    /// there is exactly one listener of that kind (saves a `getsockname` per connection).
    pub sole_port: [Option<u16>; 2],
    /// Admin listener, if enabled.
    pub admin: Option<SocketAddr>,
    /// Bearer token of the admin write endpoints (`admin.token`).
    pub admin_token: Option<String>,
    /// Pingora's server settings.
    pub server_conf: ServerConf,
    /// `server.max_connections`, if set (else derived from the open-files limit at start).
    pub max_connections: Option<usize>,
    /// `server.relay_threads`, if set (else one per worker thread).
    pub relay_threads: Option<usize>,
    /// Open client connections, against `max_connections`.
    pub connections: Arc<crate::listener::ConnectionCount>,
    /// Counters of the request path (Prometheus `/metrics`).
    pub metrics: crate::metrics::Metrics,
    /// Non-fatal findings (printed by `-t` and at start).
    pub warnings: Vec<Issue>,
}

fn parse_listen(addr: &str, at: String, issues: &mut Issues) -> Option<SocketAddr> {
    match addr.parse::<SocketAddr>() {
        Ok(a) => Some(a),
        Err(_) => {
            issues.error(
                at,
                format!("invalid socket address \"{addr}\" (expected IP:port, e.g. 0.0.0.0:8080)"),
            );
            None
        }
    }
}

impl Runtime {
    /// Validates and compiles `cfg` with the built-in filters
    /// ([`Registry::with_builtins`]); on failure returns every problem with its key path.
    pub fn compile(cfg: &Config) -> Result<Runtime, ConfigError> {
        Runtime::compile_with(cfg, &Registry::with_builtins())
    }

    /// Like [`Runtime::compile`], with the filters of `filters` available to the routes.
    pub fn compile_with(cfg: &Config, filters: &Registry) -> Result<Runtime, ConfigError> {
        let mut issues = Issues::default();
        let (server_conf, extras) = server_conf(&cfg.server, &mut issues);

        let mut listeners: Vec<Listener> = Vec::new();
        let mut redirect_ports = Vec::new();
        // TCP (L4) listeners, set apart once compiled; their pools are resolved after the pools.
        let mut tcp_pending: Vec<crate::tcp_proxy::Pending> = Vec::new();
        if cfg.listeners.is_empty() {
            issues.error("listeners", "needs at least one listener");
        }
        for (i, l) in cfg.listeners.iter().enumerate() {
            let Some(addr) =
                parse_listen(&l.address, format!("listeners[{i}].address"), &mut issues)
            else {
                continue;
            };
            let tcp_so_far = tcp_pending.iter().map(|p| &p.listener);
            if listeners.iter().chain(tcp_so_far).any(|x| x.addr == addr) {
                issues.error(
                    format!("listeners[{i}].address"),
                    format!("{addr} is listed twice"),
                );
            }
            let tls = l.tls.as_ref().and_then(|t| {
                crate::tls::compile_listener(
                    cfg,
                    t,
                    l.http2,
                    &format!("listeners[{i}].tls"),
                    &mut issues,
                )
            });
            if l.http2 && l.tls.is_none() {
                issues.error(
                    format!("listeners[{i}].http2"),
                    "needs tls (h2 is offered by ALPN)",
                );
            }
            if l.redirect_https {
                if l.tls.is_some() {
                    issues.error(
                        format!("listeners[{i}].redirect_https"),
                        "only applies to plain-HTTP listeners",
                    );
                }
                redirect_ports.push(addr.port());
            }
            let read_buffer =
                l.read_buffer
                    .unwrap_or(if l.tls.is_some() { TLS_READ_BUFFER } else { 0 });
            if read_buffer > MAX_READ_BUFFER {
                issues.error(
                    format!("listeners[{i}].read_buffer"),
                    format!("{read_buffer} bytes is more than the {MAX_READ_BUFFER} allowed"),
                );
            }
            let limits = crate::listener::compile_client(
                &l.client,
                &format!("listeners[{i}].client"),
                &mut issues,
            );
            let listener = Listener {
                addr,
                tls,
                read_buffer,
                limits,
                max_connections_per_ip: l.client.max_connections_per_ip,
                proxy_protocol: l.proxy_protocol,
            };
            match &l.tcp {
                Some(t) => {
                    crate::tcp_proxy::check_listener(l, &format!("listeners[{i}]"), &mut issues);
                    tcp_pending.push(crate::tcp_proxy::Pending {
                        index: i,
                        upstream: t.upstream.clone(),
                        listener,
                    });
                }
                None => listeners.push(listener),
            }
            if l.proxy_protocol && cfg.forwarded.trusted_proxies.is_empty() {
                issues.error(
                    format!("listeners[{i}].proxy_protocol"),
                    "needs forwarded.trusted_proxies: the addresses allowed to send the header",
                );
            }
        }
        let https_port = listeners
            .iter()
            .find(|l| l.tls.is_some())
            .map(|l| l.addr.port());
        if !redirect_ports.is_empty() && https_port.is_none() {
            issues.warn(
                "listeners",
                "redirect_https without a TLS listener: redirects go to port 443",
            );
        }
        let admin = if cfg.admin.enabled {
            parse_listen(&cfg.admin.address, "admin.address".into(), &mut issues)
        } else {
            None
        };
        let admin_token = read_secret(
            cfg,
            cfg.admin.token.as_deref(),
            cfg.admin.token_file.as_deref(),
            "admin.token",
            &mut issues,
        );
        if admin_token.as_ref().is_some_and(|t| t.len() < 16) {
            let key = match cfg.admin.token_file {
                Some(_) => "admin.token_file",
                None => "admin.token",
            };
            issues.error(key, "must be at least 16 characters");
        }
        if let Some(a) = admin {
            let tcp = tcp_pending.iter().map(|p| &p.listener);
            if listeners.iter().chain(tcp).any(|l| l.addr == a) {
                issues.error("admin.address", format!("{a} is also a client listener"));
            }
        }

        let forwarded = Forwarded::compile(&cfg.forwarded, &mut issues);
        let mut pools = Vec::new();
        let mut pool_index = HashMap::new();
        for (name, u) in &cfg.upstreams {
            if name.is_empty()
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            {
                issues.error(
                    format!("upstreams.{name}"),
                    "pool names use letters, digits, '-', '_' and '.'",
                );
            }
            pool_index.insert(name.clone(), pools.len());
            let tls = u.tls.as_ref().map(|t| UpstreamTls {
                sni: t.sni.clone(),
                verify: t.verify,
                ca: t.ca_file.as_ref().and_then(|f| {
                    crate::tls::load_ca(
                        cfg,
                        f,
                        &format!("upstreams.{name}.tls.ca_file"),
                        &mut issues,
                    )
                }),
            });
            let at = format!("upstreams.{name}.affinity.secret");
            let aff = u.affinity.as_ref();
            let secret = aff
                .and_then(|a| {
                    let (inline, file) = (a.secret.as_deref(), a.secret_file.as_deref());
                    read_secret(cfg, inline, file, &at, &mut issues)
                })
                .unwrap_or_default();
            // A relative hosts file is relative to the config, like every other path.
            let mut u = u.clone();
            if let Some(h) = u.discovery.as_mut().and_then(|d| d.dns.hosts_file.as_mut()) {
                *h = cfg.resolve_path(h).to_string_lossy().into_owned();
            }
            let pool = Pool::compile_with_tls(name, &u, tls, &secret, &mut issues);
            pools.push(pool);
        }
        let tcp_listeners =
            crate::tcp_proxy::compile(tcp_pending, &pool_index, &pools, &mut issues);
        let router = Router::compile_in(
            &cfg.routes,
            cfg.base_dir.as_deref(),
            &pool_index,
            filters,
            &mut issues,
        );
        if cfg.routes.is_empty() && (!listeners.is_empty() || tcp_listeners.is_empty()) {
            issues.warn("routes", "no routes: every request gets 404");
        }
        if !cfg.routes.is_empty() && listeners.is_empty() && !tcp_listeners.is_empty() {
            issues.warn(
                "routes",
                "no HTTP listener: the routes apply to none (tcp listeners relay without them)",
            );
        }
        for (i, rc) in cfg.routes.iter().enumerate() {
            let Some(pool) = rc
                .upstream
                .as_ref()
                .and_then(|u| pool_index.get(u))
                .map(|&p| &pools[p])
            else {
                continue;
            };
            if pool.send_proxy_protocol().is_some() {
                issues.error(
                    format!("upstreams.{}.send_proxy_protocol", pool.name),
                    format!("only TCP listeners (listeners[].tcp) send it, and routes[{i}] proxies HTTP to this pool"),
                );
            }
            // Socket.IO goes through this route when the pool has Socket.IO affinity (with
            // its own path) and the route can match that path, or when the route's path
            // names socket.io (a pool without affinity still carries its WebSockets).
            let route_path = rc
                .matches
                .path_prefix
                .as_deref()
                .or(rc.matches.path.as_deref());
            let sio_path = pool
                .affinity
                .as_ref()
                .and_then(|a| a.socketio_path.as_deref());
            let carries_socketio = match (route_path, sio_path) {
                (None, Some(_)) => true,
                (Some(r), Some(s)) => s.starts_with(r) || r.starts_with(s),
                (Some(r), None) => r.contains("socket.io"),
                (None, None) => false,
            };
            if carries_socketio {
                let t = pool.timeouts;
                if t.idle.as_secs() < SOCKETIO_HEARTBEAT_SECS {
                    issues.warn(format!("upstreams.{}.timeouts.idle", pool.name), format!("{} is less than Socket.IO's pingInterval + pingTimeout (45s by default): routes[{i}] carries Socket.IO and its WebSockets would be cut", crate::config::Dur(t.idle)));
                }
                if t.read.as_secs() <= SOCKETIO_POLL_SECS {
                    issues.warn(format!("upstreams.{}.timeouts.read", pool.name), format!("{} does not exceed Socket.IO's pingInterval (25s by default): routes[{i}] carries Socket.IO and its held polls would time out", crate::config::Dur(t.read)));
                }
            }
        }
        // Unused pools are allowed (health-checked, visible in /status), but worth a note.
        for (name, &p) in &pool_index {
            let tcp_uses = tcp_listeners.iter().any(|t| t.pool == p);
            if !router_uses(&router, p) && !tcp_uses && issues.errors.is_empty() {
                issues.warn(format!("upstreams.{name}"), "not used by any route");
            }
        }
        if !issues.errors.is_empty() {
            return Err(ConfigError::Invalid(issues.errors));
        }
        let sole = |tls: bool| {
            let mut it = listeners.iter().filter(|l| l.tls.is_some() == tls);
            match (it.next(), it.next()) {
                (Some(l), None) => Some(l.addr.port()),
                _ => None,
            }
        };
        let sole_port = [sole(false), sole(true)];
        Ok(Runtime {
            router,
            pools: pools
                .into_iter()
                .map(|p| Arc::new(PoolHandle::new(p)))
                .collect(),
            pool_index,
            forwarded,
            listeners,
            tcp_listeners,
            sole_port,
            redirect_ports,
            https_port,
            admin,
            admin_token,
            server_conf,
            max_connections: extras.max_connections,
            relay_threads: extras.relay_threads,
            connections: crate::listener::ConnectionCount::new(usize::MAX),
            metrics: crate::metrics::Metrics::new(cfg.routes.len(), cfg.admin.metrics),
            warnings: issues.warnings,
        })
    }
}

/// A secret given inline (`key`) or in a file (`key_file`, trailing whitespace dropped):
/// one of the two, a readable, non-empty file.
fn read_secret(
    cfg: &Config,
    inline: Option<&str>,
    file: Option<&str>,
    key: &str,
    issues: &mut Issues,
) -> Option<String> {
    match (inline, file) {
        (Some(_), Some(_)) => {
            issues.error(
                format!("{key}_file"),
                format!("give {key} or {key}_file, not both"),
            );
            None
        }
        (Some(s), None) => Some(s.to_string()),
        (None, Some(f)) => {
            let path = cfg.resolve_path(f);
            match std::fs::read_to_string(&path) {
                Ok(s) if s.trim_end().is_empty() => {
                    issues.error(
                        format!("{key}_file"),
                        format!("\"{}\" is empty", path.display()),
                    );
                    None
                }
                Ok(s) => Some(s.trim_end().to_string()),
                Err(e) => {
                    issues.error(
                        format!("{key}_file"),
                        format!("cannot read \"{}\": {e}", path.display()),
                    );
                    None
                }
            }
        }
        (None, None) => None,
    }
}

fn router_uses(router: &Router, pool: usize) -> bool {
    (0..router.len())
        .any(|i| matches!(router.get(i).action, Action::Proxy { pool: p } if p == pool))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rt(yaml: &str) -> Runtime {
        let cfg = Config::from_yaml(yaml).expect("yaml");
        Runtime::compile_with(&cfg, &Registry::default())
            .map_err(|e| e.to_string())
            .expect("valid")
    }

    #[test]
    fn sole_port_only_when_one_listener_of_the_kind() {
        assert_eq!(
            rt("listeners: [ { address: 127.0.0.1:8080 } ]\n").sole_port,
            [Some(8080), None]
        );
        assert_eq!(
            rt("listeners: [ { address: 127.0.0.1:8080 }, { address: 127.0.0.1:8081 } ]\n")
                .sole_port,
            [None, None]
        );
    }

    #[test]
    fn plain_listeners_hold_no_read_buffer_unless_asked() {
        let l = rt("listeners: [ { address: 127.0.0.1:8080 }, { address: 127.0.0.1:8081, read_buffer: 4096 } ]\n").listeners;
        assert_eq!((l[0].read_buffer, l[1].read_buffer), (0, 4096));
    }
}
