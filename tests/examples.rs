//! The benchmark tools in `examples/` run and report sane figures (tiny sizes; the real runs
//! are `bench/run.sh`). `api_key_filter` and `demo_backend` are exercised by other tests.

mod common;
use common::*;
use std::process::Command;

fn run(name: &str, args: &[&str]) -> String {
    let out = Command::new(example_bin(name)).args(args).output().unwrap_or_else(|e| panic!("{name}: {e} (build with --examples)"));
    assert!(out.status.success(), "{name} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn sid_table_bench_reports_memory_per_session() {
    let out = run("sid_table_bench", &["--sessions", "2000"]);
    assert!(out.contains("B/session") && out.contains("heap_bytes()"), "{out}");
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
    let out = tokio::task::spawn_blocking(move || run("wsbench", &["echo", "--addr", &addr, "--conns", "4", "--duration", "1s"])).await.unwrap();
    let line = out.lines().find(|l| l.starts_with('{')).unwrap_or_else(|| panic!("no JSON line: {out}"));
    let j: serde_json::Value = serde_json::from_str(line).unwrap();
    assert!(j["messages"].as_u64().unwrap() > 10, "{j}");
    assert_eq!(j["errors"], 0, "{j}");
}
