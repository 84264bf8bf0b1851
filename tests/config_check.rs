//! `gateway -t`: every shipped config is valid; broken configs are rejected with every
//! problem named by its key path, and a non-zero exit.

mod common;
use common::*;

fn shipped_configs(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            shipped_configs(&p, out);
        } else if p.extension().is_some_and(|x| x == "yaml" || x == "yml") {
            out.push(p);
        }
    }
}

#[test]
fn every_file_in_conf_is_valid() {
    let mut files = Vec::new();
    shipped_configs(
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("conf"),
        &mut files,
    );
    assert!(files.len() >= 5, "{files:?}");
    for f in files {
        let (code, out) = check_config_file(&f);
        assert_eq!(code, 0, "{} rejected:\n{out}", f.display());
        assert!(out.contains("is valid"), "{out}");
    }
}

#[test]
fn broken_configs_name_key_and_reason() {
    let cases: &[(&str, &[&str])] = &[
        (
            "upstreams:\n  api: { servers: [ { address: 10.0.0.1 } ] }\nroutes:\n  - { upstream: api }\n  - { upstream: api }\n  - { match: { path_prefix: /v1/ }, upstream: apu }\n",
            &["upstreams.api.servers[0].address: invalid socket address \"10.0.0.1\"", "routes[2].upstream: unknown upstream \"apu\""],
        ),
        ("routes:\n  - { match: { hots: a.com }, respond: {} }\n", &["routes[0].match: unknown field `hots`", "line 2"]),
        ("listeners: [ { address: localhost } ]\n", &["listeners[0].address: invalid socket address \"localhost\""]),
        ("listeners: [ { address: 127.0.0.1:1, read_buffer: 99999999 } ]\n", &["listeners[0].read_buffer: 99999999 bytes is more than the 1048576 allowed"]),
        ("server: { pid_file: run/gw.pid, threadz: 2 }\n", &["server.pid_file: must be an absolute path", "server.threadz: unknown key"]),
        ("server: { threads: 0, grace_period_seconds: 99999999 }\n", &["server.threads: 0 is out of range 1..=256", "server.grace_period_seconds: 99999999 is out of range 0..=3600"]),
        ("upstreams:\n  p: { servers: [ { address: 127.0.0.1:1 } ], timeouts: { idle: forever } }\n", &["upstreams.p.timeouts.idle: invalid duration \"forever\""]),
        ("upstreams:\n  p: { servers: [], balance: fastest }\n", &["upstreams.p.balance: unknown variant `fastest`"]),
        ("upstreams:\n  p: { servers: [] }\nroutes: [ { upstream: p } ]\n", &["upstreams.p.servers: needs at least one server"]),
        ("forwarded: { trusted_proxies: [ 10.0.0.0/40 ] }\n", &["forwarded.trusted_proxies[0]: invalid prefix length"]),
        ("routes:\n  - { match: { path: /a }, redirect: { to: /b, status: 200 } }\n", &["routes[0].redirect.status: must be 301, 302, 303, 307 or 308"]),
        ("routes:\n  - { respond: {} }\n  - { static: { root: /nonexistent/www, index: [a/b] } }\n", &["routes[1].static.root: /nonexistent/www: No such file or directory", "routes[1].static.index[0]: \"a/b\" is not a file name"]),
        ("routes: [\n  - oops\n", &["line 2"]),
        (
            "upstreams:\n  p: { servers: [ { address: 127.0.0.1:1 } ], health_check: { fails: 0, http: { path: health } } }\nroutes: [ { upstream: p } ]\n",
            &["upstreams.p.health_check.fails: must be at least 1", "upstreams.p.health_check.http.path: must start with '/'"],
        ),
    ];
    for (yaml, wants) in cases {
        let (code, out) = check_config(yaml);
        assert_ne!(code, 0, "accepted:\n{yaml}");
        for w in *wants {
            assert!(out.contains(w), "for\n{yaml}\nexpected {w:?} in:\n{out}");
        }
    }
}

#[test]
fn socketio_route_with_short_timeouts_warns() {
    let (code, out) = check_config(
        "upstreams:\n  rt: { servers: [ { address: 127.0.0.1:3000 } ], timeouts: { idle: 30s, read: 20s } }\nroutes: [ { match: { path_prefix: /socket.io/ }, upstream: rt } ]\n",
    );
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("warning: upstreams.rt.timeouts.idle: 30s is less than Socket.IO's pingInterval + pingTimeout"), "{out}");
    assert!(out.contains("warning: upstreams.rt.timeouts.read"), "{out}");
}

#[test]
fn custom_socketio_path_with_short_timeouts_warns_too() {
    // The route is recognised by the pool's own Socket.IO path, not by the word "socket.io".
    let (code, out) = check_config(
        "upstreams:\n  rt: { servers: [ { address: 127.0.0.1:3000 } ], timeouts: { idle: 30s }, affinity: { socketio: { path: /my-custom-path/ } } }\n  web: { servers: [ { address: 127.0.0.1:3001 } ], timeouts: { idle: 30s } }\nroutes:\n  - { match: { path_prefix: /my-custom-path/ }, upstream: rt }\n  - { match: { path_prefix: /static/ }, upstream: web }\n",
    );
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("warning: upstreams.rt.timeouts.idle: 30s is less than"),
        "{out}"
    );
    assert!(!out.contains("upstreams.web.timeouts.idle"), "{out}");
}

#[test]
fn a_bad_config_does_not_start_the_gateway() {
    let dir = std::env::temp_dir().join(format!("gw-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let f = dir.join("bad.yaml");
    std::fs::write(&f, "routes: [ { upstream: nope } ]\n").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_gateway"))
        .arg("-c")
        .arg(&f)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains("routes[0].upstream: unknown upstream \"nope\""));
    std::fs::remove_dir_all(&dir).ok();
}
