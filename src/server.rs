//! Builds the Pingora server from a compiled [`Runtime`]: the proxy service on every HTTP
//! listener, a TCP relay service per TCP listener, one health-check background service per
//! checked pool, and the admin service.

use crate::admin::Admin;
use crate::listener::ConnectionLimiter;
use crate::proxy::Gateway;
use crate::runtime::{Listener, Runtime};
use crate::upstream::HealthChecker;
use pingora_core::apps::http_app::HttpServer;
use pingora_core::apps::HttpServerOptions;
use pingora_core::listeners::{L4BufferSettings, ListenerConfig};

use pingora_core::server::configuration::Opt;
use pingora_core::server::Server;
use pingora_core::services::background::background_service;
use pingora_core::services::listening::Service;
use std::sync::Arc;

/// Command-line switches that Pingora acts on.
#[derive(Debug, Default, Clone, Copy)]
pub struct RunFlags {
    /// Take the listening sockets over from a running process (`-u`).
    pub upgrade: bool,
    /// Run in the background (`-d`).
    pub daemon: bool,
}

/// Builds the server with all its services; call `run_forever` on the result.
pub fn build(mut rt: Runtime, flags: RunFlags) -> Server {
    // Pingora takes its `ServerConf` by value (it is not `Clone`); nothing reads it after this.
    let conf = std::mem::take(&mut rt.server_conf);
    let threads = conf.threads;
    let rt = Arc::new(rt);
    let opt = Opt {
        upgrade: flags.upgrade,
        daemon: flags.daemon,
        nocapture: false,
        test: false,
        conf: None,
    };
    // Not `daemon_wait_for_ready`: in Pingora 0.9.1 the launcher installs its SIGUSR1 handler
    // after forking, and a daemon that bootstraps fast kills it. `gateway upgrade` checks
    // readiness itself (new pid, socket hand-over, admin answer).
    let mut server = Server::new_with_opt_and_conf(opt, conf);
    // Nothing here reads Pingora's per-stream pending times (time spent waiting on reads and
    // writes): skip their two clock reads per wait (vendor/pingora-core patch 17).
    pingora_core::protocols::l4::stream::set_track_pending_time_default(false);
    // Upgraded plain-TCP connections (WebSocket) are relayed by threads of their own, by
    // default as many as workers, started with the first one (vendor/pingora-proxy patch 15).
    pingora_proxy::tunnel::set_relay_threads(rt.relay_threads.unwrap_or(threads));
    // mimalloc returns what a thread freed only when that thread collects.
    pingora_proxy::tunnel::set_after_closes(crate::alloc::collect);
    // Daemonising forks after this point: the socket hand-over (bootstrap) must then run as a
    // service in the daemon, which reports readiness to the launcher when done.
    let bootstrap = if flags.daemon {
        Some(server.bootstrap_as_a_service())
    } else {
        server.bootstrap();
        None
    };

    limit_connections(&rt);
    // A graceful stop (SIGTERM, or the old process after an upgrade) ends as soon as its last
    // client connection (WebSockets and TCP relays included) has closed, not always after
    // the whole `grace_period_seconds`.
    let open = rt.connections.clone();
    server.set_drained_check(move || open.open() == 0);
    // One proxy service per distinct set of client limits: the engine applies them per
    // service. Usually every listener has the same, so there is one service.
    let mut groups: Vec<(&Listener, Vec<&Listener>)> = Vec::new();
    for l in &rt.listeners {
        match groups.iter_mut().find(|(first, _)| same_limits(first, l)) {
            Some((_, members)) => members.push(l),
            None => groups.push((l, vec![l])),
        }
    }
    let mut proxies = Vec::new();
    for (i, (first, members)) in groups.iter().enumerate() {
        let name = if i == 0 {
            "gateway".to_string()
        } else {
            format!("gateway-{i}")
        };
        let mut proxy = pingora_proxy::http_proxy_service_with_name(
            &server.configuration,
            if first.proxy_protocol {
                Gateway::behind_proxy_protocol(rt.clone())
            } else {
                Gateway::new(rt.clone())
            },
            &name,
        );
        if let Some(app) = proxy.app_logic_mut() {
            app.server_options = Some(server_options(first));
        }
        let limiter = Arc::new(ConnectionLimiter::new(
            rt.connections.clone(),
            first.max_connections_per_ip,
        ));
        if first.proxy_protocol {
            let wait = first.limits.header_timeout;
            crate::proxy_protocol::install(&mut proxy, limiter, &rt.forwarded, wait);
        } else {
            proxy.set_connection_filter(limiter);
        }
        for l in members {
            // Pingora's default is a 64 KiB zero-filled read buffer per connection, held for
            // the connection's life (idle WebSockets too); see `listeners[].read_buffer`.
            let mut endpoint = ListenerConfig::tcp(l.addr.to_string())
                .l4_buffer(L4BufferSettings::default().read(l.read_buffer));
            if let Some(tls) = &l.tls {
                endpoint = endpoint.tls(tls.settings());
            }
            proxy.add_listener(endpoint);
        }
        proxies.push(proxy);
    }
    let mut health = Vec::new();
    for pool in &rt.pools {
        if let Some(checker) = HealthChecker::new(pool.clone()) {
            health.push(server.add_service(background_service(
                &format!("health {}", pool.name),
                checker,
            )));
        }
    }
    if rt.router.routes().iter().any(|r| r.rate_limit.is_some()) {
        server.add_service(background_service(
            "rate-limit-evict",
            crate::proxy::limits::Evictor(rt.clone()),
        ));
    }
    // Give the memory of a connection spike back to the OS once it is over.
    server.add_service(background_service("mem-trim", crate::mem_trim::MemTrim));
    let mut first_proxy = None;
    for proxy in proxies {
        let proxy = server.add_service(proxy);
        // Accept traffic only once every pool's first health-check round has run.
        proxy.add_dependencies(&health);
        if let Some(b) = &bootstrap {
            proxy.add_dependency(b);
        }
        first_proxy.get_or_insert(proxy);
    }
    // TCP (L4) listeners: one service each, started like the proxy (after the first health
    // checks), their listening sockets handed over by a graceful upgrade like the HTTP ones.
    for tcp in crate::tcp_proxy::services(&rt) {
        let tcp = server.add_service(tcp);
        tcp.add_dependencies(&health);
        if let Some(b) = &bootstrap {
            tcp.add_dependency(b);
        }
        first_proxy.get_or_insert(tcp);
    }

    if let Some(addr) = rt.admin {
        let mut app = HttpServer::new_app(Admin::new(rt.clone()));
        // The admin listener gets the default client limits (header sizes, slow clients).
        let mut opts = HttpServerOptions::default();
        opts.h1_client_limits = Some(crate::listener::compile_client(
            &crate::config::ClientConf::default(),
            "admin",
            &mut crate::config::Issues::default(),
        ));
        app.server_options = Some(opts);
        // The dashboard's five-minute history, sampled once a second.
        server.add_service(background_service(
            "dashboard-history",
            crate::dashboard::Sampler(rt.clone()),
        ));
        let mut admin = Service::new("admin".to_string(), app);
        admin.add_tcp(&addr.to_string());
        let admin = server.add_service(admin);
        if let Some(proxy) = &first_proxy {
            admin.add_dependency(proxy);
        }
    }
    server
}

/// Whether two listeners can share a proxy service (same client limits, same PROXY protocol).
fn same_limits(a: &Listener, b: &Listener) -> bool {
    a.limits == b.limits
        && a.max_connections_per_ip == b.max_connections_per_ip
        && a.proxy_protocol == b.proxy_protocol
}

/// The engine options of a listener's proxy service: its client limits, and the keep-alive
/// idle time for HTTP/2 connections too.
fn server_options(l: &Listener) -> HttpServerOptions {
    let mut opts = HttpServerOptions::default();
    opts.h1_client_limits = Some(l.limits);
    opts.h2_idle_timeout = l.limits.keepalive_timeout;
    opts
}

/// Raises the open-files limit and sets `server.max_connections` (by default half of what
/// the limit leaves after a reserve: each client connection may hold an upstream one).
fn limit_connections(rt: &Runtime) {
    let nofile = crate::listener::raise_nofile_limit();
    let fits = crate::listener::default_max_connections(nofile);
    let max = rt.max_connections.unwrap_or(fits);
    if max > fits {
        log::warn!(
            "server.max_connections {max} is more than the open-files limit {nofile} can hold \
             (about {fits} with their upstream connections): raise LimitNOFILE"
        );
    }
    rt.connections.set_max(max);
    log::info!("open-files limit {nofile}, server.max_connections {max}");
}
