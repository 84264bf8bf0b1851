//! The benchmark tools in `examples/` run and report sane figures (tiny sizes; the real runs
//! are `bench/run.sh`). `bare_proxy` (the benchmark's bare Pingora reference) proxies for real; `api_key_filter` and
//! `demo_backend` are exercised by other tests.

mod common;
use common::*;
use std::process::Command;

fn run(name: &str, args: &[&str]) -> String {
    let out = Command::new(example_bin(name))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{name}: {e} (build with --examples)"));
    assert!(
        out.status.success(),
        "{name} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn sid_table_bench_reports_memory_per_session() {
    let out = run("sid_table_bench", &["--sessions", "2000"]);
    assert!(
        out.contains("B/session") && out.contains("heap_bytes()"),
        "{out}"
    );
}

#[test]
fn route_bench_reports_lookup_cost() {
    let out = run("route_bench", &[]);
    assert!(out.contains("10000") || out.contains("10,000"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wsbench_echo_through_a_backend() {
    let b = Backend::start("n1").await;
    let addr = b.addr.to_string();
    let out = tokio::task::spawn_blocking(move || {
        run(
            "wsbench",
            &["echo", "--addr", &addr, "--conns", "4", "--duration", "1s"],
        )
    })
    .await
    .unwrap();
    let line = out
        .lines()
        .find(|l| l.starts_with('{'))
        .unwrap_or_else(|| panic!("no JSON line: {out}"));
    let j: serde_json::Value = serde_json::from_str(line).unwrap();
    assert!(j["messages"].as_u64().unwrap() > 10, "{j}");
    assert_eq!(j["errors"], 0, "{j}");
}

/// The benchmark's reference point proxies for real (same Pingora build as the gateway).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bare_proxy_forwards_to_its_upstream() {
    let b = Backend::start("n1").await;
    let port = free_port();
    let mut child = Command::new(example_bin("bare_proxy"))
        .args([
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--upstream",
            &b.addr.to_string(),
            "--work-stealing",
            "false",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("bare_proxy (build with --examples)");
    let ok = eventually(std::time::Duration::from_secs(10), || async {
        try_get(port, "/hello").await == Some(200)
    })
    .await;
    let resp = if ok {
        Some(get(port, "localhost", "/hello").await)
    } else {
        None
    };
    let _ = child.kill();
    let _ = child.wait();
    let resp = resp.expect("bare_proxy did not answer within 10 s");
    assert_eq!(resp.status, 200);
    assert_eq!(
        resp.backend().as_deref(),
        Some("n1"),
        "answered by the backend"
    );
}

/// Status of `GET path`, or None when nothing answers yet.
async fn try_get(port: u16, path: &str) -> Option<u16> {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .ok()?;
    let mut buf = Vec::new();
    tokio::time::timeout(std::time::Duration::from_secs(2), s.read_to_end(&mut buf))
        .await
        .ok()?
        .ok()?;
    std::str::from_utf8(buf.get(9..12)?).ok()?.parse().ok()
}
