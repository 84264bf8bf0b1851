//! Live discovery of a pool's backends: server names re-resolved through the system resolver
//! (a Kubernetes headless Service, a DNS round robin) or an `/etc/hosts`-format file, every
//! address becoming a backend. The pool's keeper ([`super::HealthChecker`]) calls it each
//! `discovery.dns.interval` and publishes a new snapshot when the set changes.

use crate::config::DnsDiscoveryConf;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};

/// Largest hosts file read (a runaway file must not eat memory every interval).
const MAX_HOSTS_FILE: u64 = 4 * 1024 * 1024;

/// Splits `host:port` (a bracketed IPv6 literal allowed), checking both halves.
pub fn split_host_port(address: &str) -> Result<(&str, u16), String> {
    let bad = || format!("invalid socket address \"{address}\" (expected host:port)");
    let (host, port) = address.rsplit_once(':').ok_or_else(bad)?;
    let port: u16 = port.parse().map_err(|_| bad())?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if host.is_empty() || host.contains(['/', ' ', '[', ']']) {
        return Err(bad());
    }
    Ok((host, port))
}

/// The addresses `host` has in hosts-file text `text` (`IP name [alias...]`, `#` comments).
fn from_hosts(text: &str, host: &str, port: u16) -> Vec<SocketAddr> {
    text.lines()
        .filter_map(|l| {
            let (ip, mut names) = from_hosts_line(l)?;
            names
                .any(|n| n.eq_ignore_ascii_case(host))
                .then_some(SocketAddr::new(ip, port))
        })
        .collect()
}

/// One hosts-file line: its address and names (`None` for comments, blanks, bad lines).
fn from_hosts_line(l: &str) -> Option<(IpAddr, std::str::SplitWhitespace<'_>)> {
    let l = l.split('#').next().unwrap_or("");
    let mut f = l.split_whitespace();
    let ip: IpAddr = f.next()?.parse().ok()?;
    Some((ip, f))
}

fn read_hosts(path: &str) -> Result<String, String> {
    use std::io::Read;
    let f = std::fs::File::open(path).map_err(|e| format!("cannot read \"{path}\": {e}"))?;
    let mut text = String::new();
    f.take(MAX_HOSTS_FILE)
        .read_to_string(&mut text)
        .map_err(|e| format!("cannot read \"{path}\": {e}"))?;
    Ok(text)
}

/// Resolves `address` now, blocking: every pool's servers at start and in `-t`, and the
/// keeper's lookups (through [`resolve`]). Through `hosts_file` when given, else the system
/// resolver. A name missing from the hosts file is a definite answer (no address); a system
/// resolver failure is an error, which the keeper treats as an outage (the name keeps its
/// addresses).
pub fn resolve_blocking(
    address: &str,
    hosts_file: Option<&str>,
) -> Result<Vec<SocketAddr>, String> {
    let (host, port) = split_host_port(address)?;
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, port)]);
    }
    let mut v: Vec<SocketAddr> = match hosts_file {
        Some(path) => {
            let text = read_hosts(path)?;
            // An empty file is more likely caught mid-rewrite than meant: an error (the
            // names keep their addresses). Replace the file by rename to change it atomically.
            if !text.lines().any(|l| from_hosts_line(l).is_some()) {
                return Err(format!("\"{path}\" has no entries"));
            }
            from_hosts(&text, host, port)
        }
        None => (host, port)
            .to_socket_addrs()
            .map_err(|e| format!("cannot resolve \"{address}\": {e}"))?
            .collect(),
    };
    v.sort();
    v.dedup();
    Ok(v)
}

/// Resolves `address` off the async runtime's threads (getaddrinfo and file reads block).
pub async fn resolve(address: String, d: DnsDiscoveryConf) -> Result<Vec<SocketAddr>, String> {
    tokio::task::spawn_blocking(move || resolve_blocking(&address, d.hosts_file.as_deref()))
        .await
        .map_err(|e| format!("resolver task failed: {e}"))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_file_lines() {
        let text = "# comment\n127.0.0.2 node a.b\n127.0.0.3\tNODE # other\n::1 node\nbad line\n127.0.0.9 other\n";
        let v = from_hosts(text, "node", 80);
        assert_eq!(
            v,
            vec![
                "127.0.0.2:80".parse().unwrap(),
                "127.0.0.3:80".parse().unwrap(),
                "[::1]:80".parse().unwrap()
            ]
        );
        assert!(from_hosts(text, "missing", 80).is_empty());
        assert!(from_hosts(text, "comment", 80).is_empty());
    }

    #[test]
    fn host_port_split() {
        assert_eq!(split_host_port("a.b:80"), Ok(("a.b", 80)));
        assert_eq!(split_host_port("[::1]:80"), Ok(("::1", 80)));
        for bad in ["a.b", ":80", "a:b", "a/b:1", "a:70000", "[x:1"] {
            assert!(split_host_port(bad).is_err(), "{bad}");
        }
    }
}
