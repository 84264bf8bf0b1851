//! A programmable HTTP, WebSocket and Socket.IO gateway on Cloudflare's Pingora.
//!
//! Module map:
//! - [`config`]: the YAML file as serde structs, with defaults and key-path errors
//! - [`runtime`]: the compiled config the request path uses (also the `-t` check)
//! - [`proxy`]: the `ProxyHttp` implementation ([`proxy::router`], [`proxy::headers`])
//! - [`upstream`]: pools, balancing, active and passive health
//! - [`admin`]: `/health` and `/status`
//! - [`server`]: assembles the Pingora server and its services
//! - [`cli`]: the command line

pub mod admin;
pub mod cli;
pub mod config;
pub mod proxy;
pub mod runtime;
pub mod server;
pub mod upstream;

pub use config::{Config, ConfigError};
pub use runtime::Runtime;

use std::process::ExitCode;

/// Loads and compiles a config file, printing warnings to the log.
pub fn load(path: &std::path::Path) -> Result<Runtime, ConfigError> {
    let cfg = Config::load(path)?;
    Runtime::compile(&cfg)
}

/// Runs the gateway as the command line asks: check the config (`-t`) or serve forever.
pub fn run_with_cli(cli: cli::Cli) -> ExitCode {
    let shown = cli.config.display().to_string();
    let rt = match load(&cli.config) {
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
    log::info!("gateway {} starting with {shown}: {} listener(s), {} pool(s), {} route(s)", env!("CARGO_PKG_VERSION"), rt.listeners.len(), rt.pools.len(), rt.router.len());
    server::build(rt, server::RunFlags { upgrade: cli.upgrade, daemon: cli.daemon }).run_forever()
}
