//! The `server:` section: Pingora's own `ServerConf`, with unknown keys and relative paths refused.

use super::Issues;
use pingora_core::server::configuration::ServerConf;

/// Path-valued `ServerConf` keys that must be absolute (the binary upgrade hands over by path).
const PATH_KEYS: &[&str] = &["pid_file", "upgrade_sock", "error_log"];

/// Builds Pingora's `ServerConf` from the `server:` mapping, recording problems in `issues`.
pub fn server_conf(map: &serde_yaml::Mapping, issues: &mut Issues) -> ServerConf {
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
        (server_conf(&map, &mut issues), issues)
    }

    #[test]
    fn defaults_are_two_threads_without_work_stealing() {
        let (c, issues) = conf("{}");
        assert!(issues.errors.is_empty(), "{:?}", issues.errors);
        assert_eq!(c.threads, 2);
        assert!(!c.work_stealing);
    }

    #[test]
    fn explicit_keys_win() {
        let (c, issues) = conf("{ threads: 4, work_stealing: true }");
        assert!(issues.errors.is_empty(), "{:?}", issues.errors);
        assert_eq!(c.threads, 4);
        assert!(c.work_stealing);
    }
}
