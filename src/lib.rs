//! A programmable HTTP, WebSocket and Socket.IO gateway on Cloudflare's Pingora.
//!
//! Module map:
//! - [`config`]: the YAML file as serde structs, with defaults and key-path errors
//! - [`runtime`]: the compiled config the request path uses (also the `-t` check)
//! - [`proxy`]: the `ProxyHttp` implementation ([`proxy::router`], [`proxy::headers`])
//! - [`affinity`]: Socket.IO sid tags, the sid table, the sticky cookie (no `upstream` import)
//! - [`upstream`]: pools, balancing, active and passive health
//! - [`filter`]: Rust filter hooks per route ([`filter::Filter`], [`filter::Registry`]; the
//!   module docs give the phase order and a complete filter)
//! - `admin`: `/health`, `/status` and `/metrics`
//! - `dashboard`: the admin listener's HTML page and its five-minute `/history`
//! - [`metrics`]: Prometheus metric names and the `/metrics` text
//! - [`tls`]: listener certificates (SNI), TLS to backends
//! - [`tcp_proxy`]: TCP (L4) listeners relaying connections to a pool
//! - `server`: assembles the Pingora server and its services
//! - `cli`: the command line
//!
//! # A custom gateway
//!
//! The stock `gateway` binary is `gateway::run_with(Registry::with_builtins())`. A custom one
//! registers its own [`filter::Filter`] types next to the built-in ones and keeps the same
//! command line and config; routes name the filters in `filters: [ { name, config } ]`.
//! Everything a filter author needs is in [`prelude`]:
//!
//! ```rust,no_run
//! use gateway::prelude::*;
//!
//! /// Answers 403 to requests without a `Cookie` header.
//! struct NeedsCookie;
//!
//! #[async_trait]
//! impl Filter for NeedsCookie {
//!     type Config = (); // no `config:`
//!     type State = ();
//!
//!     fn new(_: ()) -> Result<Self, String> {
//!         Ok(NeedsCookie)
//!     }
//!
//!     async fn request(&self, req: &mut RequestCtx<'_>, _: &mut ()) -> Result<Flow> {
//!         if req.req_header().headers.contains_key(header::COOKIE) {
//!             return Ok(Flow::Continue);
//!         }
//!         req.respond(403, &[], "cookie needed\n").await
//!     }
//! }
//!
//! fn main() -> std::process::ExitCode {
//!     let mut registry = Registry::with_builtins();
//!     registry.register::<NeedsCookie>("needs_cookie");
//!     gateway::run_with(registry)
//! }
//! ```

pub(crate) mod admin;
pub(crate) mod admin_client;
pub mod affinity;
pub mod alloc;
pub(crate) mod cli;
pub mod config;
mod dashboard;
pub mod filter;
pub mod listener;
mod mem_trim;
pub mod metrics;
pub mod proxy;
pub mod proxy_protocol;
pub mod runtime;
pub(crate) mod server;
pub mod tcp_proxy;
pub mod tls;
pub(crate) mod upgrade;
pub mod upstream;
mod util;

pub use config::{Config, ConfigError};
pub use filter::{Filter, Registry};
pub use runtime::Runtime;

/// The one import of a filter author: the [`Filter`] API, and the Pingora and `http` types
/// its methods use.
pub mod prelude {
    pub use crate::filter::{
        Filter, Flow, Phase, RateLimitKey, Registry, RequestCtx, RequestId, Upstream,
    };
    pub use crate::proxy::respond::respond;
    pub use async_trait::async_trait;
    pub use bytes::Bytes;
    pub use http::header::{self, HeaderName, HeaderValue};
    pub use http::Extensions;
    pub use pingora_core::{Error, ErrorType, Result};
    pub use pingora_http::{RequestHeader, ResponseHeader};
}

use std::process::ExitCode;

/// Loads and compiles a config file with the filters of `registry`.
pub fn load(path: &std::path::Path, registry: &Registry) -> Result<Runtime, ConfigError> {
    let cfg = Config::load(path)?;
    Runtime::compile_with(&cfg, registry)
}

/// The `main` of a gateway binary: the standard command line and config, with the filters of
/// `registry` available to `routes[].filters` (the stock binary passes
/// [`Registry::with_builtins`]). Never returns while serving. `gateway upgrade` run by this
/// binary checks the new config with `-t` of the new binary, so it knows the same filters.
pub fn run_with(registry: Registry) -> ExitCode {
    let _ = env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_timestamp_millis()
        .try_init();
    match cli::parse(std::env::args().skip(1)) {
        Ok(cli::Command::Run(c)) => run_cli_with(c, &registry),
        Ok(cli::Command::Upgrade(a)) => upgrade::run(&a),
        Ok(cli::Command::Admin(a)) => admin_client::run(&a),
        Ok(cli::Command::Help) => {
            println!("{}", cli::USAGE);
            ExitCode::SUCCESS
        }
        Ok(cli::Command::Version) => {
            println!("gateway {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("gateway: {e}\n{}", cli::USAGE);
            ExitCode::from(2)
        }
    }
}

/// Runs the gateway as the command line asks: check the config (`-t`) or serve forever.
fn run_cli_with(cli: cli::Cli, registry: &Registry) -> ExitCode {
    let shown = cli.config.display().to_string();
    let rt = match load(&cli.config, registry) {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("gateway: configuration {shown} is invalid:");
            for line in e.to_string().lines() {
                eprintln!("  {line}");
            }
            return ExitCode::from(1);
        }
    };
    for w in &rt.warnings {
        log::warn!("config warning: {w}");
    }
    if cli.test {
        for w in &rt.warnings {
            eprintln!("warning: {w}");
        }
        println!("gateway: configuration {shown} is valid");
        return ExitCode::SUCCESS;
    }
    if !cli.daemon {
        upgrade::write_pid_file(&rt.server_conf.pid_file);
    }
    log::info!(
        "gateway {} starting with {shown}: {} listener(s), {} pool(s), {} route(s)",
        env!("CARGO_PKG_VERSION"),
        rt.listeners.len() + rt.tcp_listeners.len(),
        rt.pools.len(),
        rt.router.len()
    );
    server::build(
        rt,
        server::RunFlags {
            upgrade: cli.upgrade,
            daemon: cli.daemon,
        },
    )
    .run_forever()
}
