//! The `server:` section: Pingora's own `ServerConf`, with unknown keys and relative paths refused.

use super::Issues;
use pingora_core::server::configuration::ServerConf;

/// Path-valued `ServerConf` keys that must be absolute (the binary upgrade hands over by path).
const PATH_KEYS: &[&str] = &["pid_file", "upgrade_sock", "error_log"];

/// Numeric keys with the range `-t` accepts: anything outside fails at start (0 threads
/// panics, a million threads aborts) or never finishes (a grace period of `u64::MAX`).
const RANGES: &[(&str, u64, u64)] = &[
    ("threads", 1, 256),
    ("grace_period_seconds", 0, 3600),
    ("graceful_shutdown_timeout_seconds", 0, 600),
    ("upstream_keepalive_pool_size", 0, 1_000_000),
];

/// Defaults that fit `conf/gateway.service` (`TimeoutStopSec=90`): in-flight work gets 60 s
/// after SIGTERM, then at most 5 s more. (Pingora's own grace period default is 300 s.)
const DEFAULT_GRACE_PERIOD: u64 = 60;
const DEFAULT_SHUTDOWN_TIMEOUT: u64 = 5;

/// The gateway's own `server:` key: open client connections allowed in the whole process.
const MAX_CONNECTIONS: &str = "max_connections";
/// Range of `server.max_connections`.
const MAX_CONNECTIONS_RANGE: (u64, u64) = (1, 10_000_000);
/// The gateway's own `server:` key: threads that relay upgraded plain-TCP connections
/// (WebSockets) once the 101 is out; 0 relays them on the worker threads' tasks.
const RELAY_THREADS: &str = "relay_threads";
/// Range of `server.relay_threads`.
const RELAY_THREADS_RANGE: (u64, u64) = (0, 256);

/// The gateway's own keys of the `server:` section.
#[derive(Debug, Default)]
pub struct ServerExtras {
    /// `server.max_connections`, if set.
    pub max_connections: Option<usize>,
    /// `server.relay_threads`, if set (else as many as `threads`).
    pub relay_threads: Option<usize>,
}

/// Builds Pingora's `ServerConf` from the `server:` mapping and reads the gateway's own
/// keys, recording problems in `issues`.
pub fn server_conf(map: &serde_yaml::Mapping, issues: &mut Issues) -> (ServerConf, ServerExtras) {
    let mut map = map.clone();
    let mut number = |key: &str, (lo, hi): (u64, u64)| {
        map.remove(key).and_then(|v| match v.as_u64() {
            Some(n) if (lo..=hi).contains(&n) => Some(n as usize),
            _ => {
                let shown = serde_yaml::to_string(&v).unwrap_or_default();
                issues.error(
                    format!("server.{key}"),
                    format!("{} is not a number in {lo}..={hi}", shown.trim_end()),
                );
                None
            }
        })
    };
    let extras = ServerExtras {
        max_connections: number(MAX_CONNECTIONS, MAX_CONNECTIONS_RANGE),
        relay_threads: number(RELAY_THREADS, RELAY_THREADS_RANGE),
    };
    (pingora_server_conf(&map, issues), extras)
}

/// Pingora's `ServerConf` from the rest of the `server:` mapping.
fn pingora_server_conf(map: &serde_yaml::Mapping, issues: &mut Issues) -> ServerConf {
    let known = serde_yaml::to_value(ServerConf::default()).unwrap_or_default();
    let known = known.as_mapping().cloned().unwrap_or_default();
    let mut ok = true;
    for (k, v) in map {
        let Some(key) = k.as_str() else {
            issues.error("server", format!("keys must be strings, found {k:?}"));
            ok = false;
            continue;
        };
        if !known.contains_key(k) {
            let mut names: Vec<&str> = known.keys().filter_map(|k| k.as_str()).collect();
            names.sort_unstable();
            issues.error(
                format!("server.{key}"),
                format!(
                    "unknown key (Pingora's ServerConf keys are: {})",
                    names.join(", ")
                ),
            );
            ok = false;
        } else if let Some((_, lo, hi)) = RANGES.iter().find(|(k, _, _)| *k == key) {
            if let Some(n) = v.as_u64().filter(|n| n < lo || n > hi) {
                issues.error(
                    format!("server.{key}"),
                    format!("{n} is out of range {lo}..={hi}"),
                );
                ok = false;
            }
        } else if PATH_KEYS.contains(&key) {
            if let Some(p) = v.as_str() {
                if !p.starts_with('/') {
                    issues.error(
                        format!("server.{key}"),
                        format!("must be an absolute path, got \"{p}\""),
                    );
                    ok = false;
                }
            }
        }
    }
    if !ok {
        return ServerConf::default();
    }
    match serde_yaml::from_value::<ServerConf>(serde_yaml::Value::Mapping(map.clone())) {
        Ok(mut c) => {
            if !map.contains_key("threads") {
                c.threads = 2;
            }
            // One single-threaded runtime per thread, connections spread over them at accept
            // (nginx's worker model). Pingora's default, one work-stealing runtime, pays for
            // cross-thread queues and atomics on every wake-up.
            if !map.contains_key("work_stealing") {
                c.work_stealing = false;
            }
            if !map.contains_key("grace_period_seconds") {
                c.grace_period_seconds = Some(DEFAULT_GRACE_PERIOD);
            }
            if !map.contains_key("graceful_shutdown_timeout_seconds") {
                c.graceful_shutdown_timeout_seconds = Some(DEFAULT_SHUTDOWN_TIMEOUT);
            }
            c
        }
        Err(e) => {
            issues.error("server", e.to_string());
            ServerConf::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conf(yaml: &str) -> (ServerConf, Issues) {
        let map: serde_yaml::Mapping = serde_yaml::from_str(yaml).unwrap();
        let mut issues = Issues::default();
        (server_conf(&map, &mut issues).0, issues)
    }

    #[test]
    fn defaults_are_two_threads_without_work_stealing() {
        let (c, issues) = conf("{}");
        assert!(issues.errors.is_empty(), "{:?}", issues.errors);
        assert_eq!(c.threads, 2);
        assert!(!c.work_stealing);
    }

    #[test]
    fn shutdown_defaults_fit_the_unit_file() {
        let (c, _) = conf("{}");
        assert_eq!(c.grace_period_seconds, Some(60));
        assert_eq!(c.graceful_shutdown_timeout_seconds, Some(5));
    }

    #[test]
    fn numbers_out_of_range_are_errors() {
        for (yaml, want) in [
            ("{ threads: 0 }", "0 is out of range 1..=256"),
            ("{ threads: 1000000 }", "1000000 is out of range 1..=256"),
            (
                "{ grace_period_seconds: 18446744073709551615 }",
                "out of range 0..=3600",
            ),
            (
                "{ graceful_shutdown_timeout_seconds: 100000 }",
                "out of range 0..=600",
            ),
        ] {
            let (_, issues) = conf(yaml);
            assert!(
                issues.errors.iter().any(|e| e.to_string().contains(want)),
                "{yaml}: {:?}",
                issues.errors
            );
        }
        let (c, issues) = conf("{ threads: 256, grace_period_seconds: 0 }");
        assert!(issues.errors.is_empty(), "{:?}", issues.errors);
        assert_eq!(c.threads, 256);
    }

    #[test]
    fn the_gateway_keys_are_read_and_checked() {
        let map: serde_yaml::Mapping =
            serde_yaml::from_str("{ relay_threads: 0, max_connections: 9 }").unwrap();
        let mut issues = Issues::default();
        let (_, extras) = server_conf(&map, &mut issues);
        assert!(issues.errors.is_empty(), "{:?}", issues.errors);
        assert_eq!(extras.relay_threads, Some(0));
        assert_eq!(extras.max_connections, Some(9));
        let map: serde_yaml::Mapping = serde_yaml::from_str("{}").unwrap();
        assert_eq!(server_conf(&map, &mut issues).1.relay_threads, None);
        for (yaml, want) in [
            (
                "{ relay_threads: 257 }",
                "server.relay_threads: 257 is not a number in 0..=256",
            ),
            (
                "{ relay_threads: -1 }",
                "server.relay_threads: -1 is not a number in 0..=256",
            ),
            (
                "{ max_connections: 0 }",
                "server.max_connections: 0 is not a number in 1..=10000000",
            ),
        ] {
            let (_, issues) = conf(yaml);
            assert!(
                issues.errors.iter().any(|e| e.to_string().contains(want)),
                "{yaml}: {:?}",
                issues.errors
            );
        }
    }

    #[test]
    fn explicit_keys_win() {
        let (c, issues) = conf("{ threads: 4, work_stealing: true }");
        assert!(issues.errors.is_empty(), "{:?}", issues.errors);
        assert_eq!(c.threads, 4);
        assert!(c.work_stealing);
    }
}
