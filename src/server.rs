//! Builds the Pingora server from a compiled [`Runtime`]: the proxy service on every listener,
//! one health-check background service per checked pool, and the admin service.

use crate::admin::Admin;
use crate::proxy::Gateway;
use crate::runtime::Runtime;
use crate::upstream::HealthChecker;
use pingora_core::apps::http_app::HttpServer;
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
pub fn build(rt: Runtime, flags: RunFlags) -> Server {
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
    let mut server = Server::new_with_opt_and_conf(opt, clone_conf(&rt));
    // Daemonising forks after this point: the socket hand-over (bootstrap) must then run as a
    // service in the daemon, which reports readiness to the launcher when done.
    let bootstrap = if flags.daemon {
        Some(server.bootstrap_as_a_service())
    } else {
        server.bootstrap();
        None
    };

    let mut proxy = pingora_proxy::http_proxy_service_with_name(
        &server.configuration,
        Gateway::new(rt.clone()),
        "gateway",
    );
    for l in &rt.listeners {
        // Pingora's default is a 64 KiB zero-filled read buffer per connection, held for the
        // connection's life (idle WebSockets too); see `listeners[].read_buffer`.
        let mut endpoint = ListenerConfig::tcp(l.addr.to_string())
            .l4_buffer(L4BufferSettings::default().read(l.read_buffer));
        if let Some(tls) = &l.tls {
            endpoint = endpoint.tls(tls.settings());
        }
        proxy.add_listener(endpoint);
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
    // Give the memory of a connection spike back to the OS once it is over.
    server.add_service(background_service("mem-trim", crate::mem_trim::MemTrim));
    let proxy = server.add_service(proxy);
    // Accept traffic only once every pool's first health-check round has run.
    proxy.add_dependencies(&health);
    if let Some(b) = &bootstrap {
        proxy.add_dependency(b);
    }

    if let Some(addr) = rt.admin {
        let mut admin = Service::new(
            "admin".to_string(),
            HttpServer::new_app(Admin::new(rt.clone())),
        );
        admin.add_tcp(&addr.to_string());
        let admin = server.add_service(admin);
        admin.add_dependency(&proxy);
    }
    server
}

/// Pingora's `ServerConf` is not `Clone`; round-trip it through YAML.
fn clone_conf(rt: &Runtime) -> pingora_core::server::configuration::ServerConf {
    serde_yaml::to_string(&rt.server_conf)
        .ok()
        .and_then(|s| serde_yaml::from_str(&s).ok())
        .unwrap_or_default()
}
