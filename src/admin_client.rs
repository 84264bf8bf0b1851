//! `gateway admin drain|undrain POOL ADDRESS [-c FILE]`: asks the running gateway's admin
//! listener (address and `admin.token` from the config, or `GATEWAY_ADMIN_TOKEN`) to drain or
//! undrain a backend, and prints its answer. For rolling-deploy scripts.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// One `gateway admin` call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminArgs {
    /// `drain` or `undrain`.
    pub action: String,
    /// Pool name.
    pub pool: String,
    /// Backend address as in `/status`.
    pub backend: String,
    /// Config naming the admin listener and its token.
    pub config: PathBuf,
}

/// Runs the call; exit 0 when the gateway answered 200.
pub fn run(a: &AdminArgs) -> ExitCode {
    match call(a) {
        Ok((200, body)) => {
            print!("{body}");
            ExitCode::SUCCESS
        }
        Ok((status, body)) => {
            eprintln!("gateway admin: {status}: {}", body.trim_end());
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("gateway admin: {e}");
            ExitCode::from(1)
        }
    }
}

fn call(a: &AdminArgs) -> Result<(u16, String), String> {
    let cfg = crate::config::Config::load(&a.config).map_err(|e| e.to_string())?;
    if !cfg.admin.enabled {
        return Err("the admin listener is disabled in the config".into());
    }
    let from_file = match &cfg.admin.token_file {
        Some(f) => {
            let p = cfg.resolve_path(f);
            let t = std::fs::read_to_string(&p)
                .map_err(|e| format!("admin.token_file: cannot read \"{}\": {e}", p.display()))?;
            Some(t.trim_end().to_string())
        }
        None => None,
    };
    let token = std::env::var("GATEWAY_ADMIN_TOKEN")
        .ok()
        .or(cfg.admin.token)
        .or(from_file)
        .ok_or("no admin.token or admin.token_file in the config (or GATEWAY_ADMIN_TOKEN)")?;
    let addr: std::net::SocketAddr = cfg
        .admin
        .address
        .parse()
        .map_err(|_| format!("admin.address \"{}\" is not IP:port", cfg.admin.address))?;
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .map_err(|e| format!("cannot reach the admin listener at {addr}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok();
    let req = format!(
        "POST /pools/{}/backends/{}/{} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {token}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        a.pool,
        a.backend,
        a.action,
        addr.ip()
    );
    s.write_all(req.as_bytes()).map_err(|e| e.to_string())?;
    let mut raw = String::new();
    s.read_to_string(&mut raw).map_err(|e| e.to_string())?;
    let status = raw
        .get(9..12)
        .and_then(|c| c.parse().ok())
        .ok_or("no HTTP answer from the admin listener")?;
    let body = raw
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_string();
    Ok((status, body))
}
