//! A programmable HTTP, WebSocket and Socket.IO gateway on Cloudflare's Pingora.
//!
//! Module map:
//! - [`config`]: the YAML file as serde structs, with defaults and key-path errors
//! - [`runtime`]: the compiled config the request path uses (also the `-t` check)
//! - [`proxy`]: the `ProxyHttp` implementation ([`proxy::router`], [`proxy::headers`])
//! - [`upstream`]: pools, balancing, active and passive health
//! - [`filter`]: Rust filter hooks per route ([`filter::Filter`], [`filter::Registry`])
//! - [`admin`]: `/health` and `/status`
//! - [`tls`]: listener certificates (SNI), TLS to backends
//! - [`server`]: assembles the Pingora server and its services
//! - [`cli`]: the command line

pub mod admin;
pub mod cli;
pub mod config;
pub mod filter;
pub mod listener;
mod mem_trim;
pub mod proxy;
pub mod runtime;
pub mod server;
pub mod tls;
pub mod upgrade;
pub mod upstream;
mod util;

pub use config::{Config, ConfigError};
pub use filter::{Filter, Registry};
pub use proxy::ctx::Ctx;
pub use runtime::Runtime;
/// Pingora types filter authors need.
pub mod prelude {
    pub use crate::filter::{Filter, Registry};
    pub use crate::proxy::ctx::Ctx;
    pub use async_trait::async_trait;
    pub use pingora_core::{Error, ErrorType, Result};
    pub use pingora_http::{RequestHeader, ResponseHeader};
    pub use pingora_proxy::Session;
}

use std::process::ExitCode;

/// Loads and compiles a config file with the filters of `registry`.
pub fn load(path: &std::path::Path, registry: &Registry) -> Result<Runtime, ConfigError> {
    let cfg = Config::load(path)?;
    Runtime::compile_with(&cfg, registry)
}

/// The `main` of a custom gateway binary: the standard command line and config, with the
/// filters of `registry` available to `routes[].filters`. Never returns while serving.
pub fn run_with(registry: Registry) -> ExitCode {
    let _ = env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_timestamp_millis()
        .try_init();
    match cli::parse(std::env::args().skip(1)) {
        Ok(cli::Command::Run(c)) => run_cli_with(c, &registry),
        Ok(cli::Command::Upgrade(a)) => upgrade::run(&a),
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
    upgrade::write_pid_file(&cli, &rt.server_conf.pid_file);
    log::info!(
        "gateway {} starting with {shown}: {} listener(s), {} pool(s), {} route(s)",
        env!("CARGO_PKG_VERSION"),
        rt.listeners.len(),
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
