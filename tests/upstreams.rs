//! Pools through the real gateway: balancing, health checks (ejection and return), retries on
//! connect failure, dead pools answering fast.

mod common;
use common::*;
use std::sync::atomic::Ordering::SeqCst;
use std::time::{Duration, Instant};

fn pool_config(servers: &[String], extra: &str) -> String {
    let list: Vec<String> = servers
        .iter()
        .map(|s| format!("{{ address: \"{s}\" }}"))
        .collect();
    format!(
        r#"
listeners: [ {{ address: "127.0.0.1:{{PORT}}" }} ]
admin: {{ address: "127.0.0.1:{{ADMIN}}" }}
upstreams:
  p:
    servers: [ {} ]
{extra}
routes:
  - upstream: p
"#,
        list.join(", ")
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weighted_round_robin_spreads_by_weight() {
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let yaml = format!(
        "listeners: [ {{ address: \"127.0.0.1:{{PORT}}\" }} ]\nadmin: {{ address: \"127.0.0.1:{{ADMIN}}\" }}\nupstreams:\n  p: {{ servers: [ {{ address: \"{}\", weight: 1 }}, {{ address: \"{}\", weight: 3 }} ] }}\nroutes: [ {{ upstream: p }} ]\n",
        a.addr, b.addr
    );
    let gw = Gateway::start(&yaml);
    for _ in 0..40 {
        assert_eq!(get(gw.port, "x", "/").await.status, 200);
    }
    assert_eq!((a.app_hits.load(SeqCst), b.app_hits.load(SeqCst)), (10, 30));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consistent_hash_on_a_header_is_sticky() {
    let backends = [
        Backend::start("a").await,
        Backend::start("b").await,
        Backend::start("c").await,
    ];
    let addrs: Vec<String> = backends.iter().map(|b| b.addr.to_string()).collect();
    let gw = Gateway::start(&pool_config(
        &addrs,
        "    balance: consistent_hash\n    hash_key: header:X-User",
    ));
    let mut owners = std::collections::HashSet::new();
    for user in 0..12 {
        let u = format!("user-{user}");
        let first = get_with(gw.port, "x", "/", &[("X-User", &u)]).await.json()["backend"]
            .as_str()
            .unwrap()
            .to_string();
        for _ in 0..3 {
            assert_eq!(
                get_with(gw.port, "x", "/", &[("X-User", &u)]).await.json()["backend"],
                first.as_str()
            );
        }
        owners.insert(first);
    }
    assert!(owners.len() >= 2, "keys spread over backends: {owners:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_backend_is_ejected_then_comes_back() {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let addrs = vec![a.addr.to_string(), b.addr.to_string()];
    let gw = Gateway::start(&pool_config(&addrs, "    health_check: { http: { path: /health }, interval: 300ms, timeout: 300ms, fails: 1, passes: 1 }"));
    for _ in 0..4 {
        assert_eq!(get(gw.port, "x", "/").await.status, 200);
    }
    assert!(b.app_hits.load(SeqCst) > 0);

    b.stop();
    // From the moment it dies: no 5xx for anyone (connect failures retry the other backend).
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut n = 0;
    while Instant::now() < deadline {
        let r = get(gw.port, "x", "/").await;
        assert_eq!(
            r.status, 200,
            "request {n} failed while a healthy backend exists"
        );
        assert_eq!(r.json()["backend"], "a");
        n += 1;
    }
    let status = get(gw.admin_port, "localhost", "/status").await.json();
    let bs = &status["pools"]["p"]["backends"][1];
    assert_eq!(
        (bs["address"].as_str(), bs["healthy"].as_bool()),
        (Some(b.addr.to_string().as_str()), Some(false)),
        "{status}"
    );

    // It comes back on the same port and gets traffic again.
    let b2 = Backend::start_on(b.addr, "b2").await.unwrap();
    assert!(
        eventually(Duration::from_secs(5), || async {
            get(gw.port, "x", "/").await.json()["backend"] == "b2"
        })
        .await,
        "the revived backend never got traffic"
    );
    assert!(gw.log().contains("is healthy again"), "{}", gw.log());
    drop(b2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_failure_retries_another_backend_without_health_checks() {
    let a = Backend::start("a").await;
    let held = DeadPort::new();
    let dead = held.port();
    let addrs = vec![format!("127.0.0.1:{dead}"), a.addr.to_string()];
    let gw = Gateway::start(&pool_config(
        &addrs,
        "    passive: { max_fails: 2, fail_timeout: 30s }",
    ));
    for _ in 0..10 {
        let r = get_with(gw.port, "x", "/", &[]).await;
        assert_eq!(r.status, 200);
    }
    // POST too: nothing was sent to the dead backend, so the retry is safe.
    let r = http(
        gw.port,
        "POST /submit HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["body_len"], 5);
    let s = get(gw.admin_port, "localhost", "/status").await.json();
    assert_eq!(
        s["pools"]["p"]["backends"][0]["ejected"], true,
        "passive checks ejected the dead backend: {s}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_pool_answers_502_fast() {
    let held = [DeadPort::new(), DeadPort::new()];
    let addrs: Vec<String> = held.iter().map(|d| d.addr().to_string()).collect();
    let gw = Gateway::start(&pool_config(&addrs, "    timeouts: { connect: 2s }"));
    let t = Instant::now();
    let r = get(gw.port, "x", "/").await;
    assert_eq!(r.status, 502);
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "took {:?}",
        t.elapsed()
    );
    assert!(
        eventually(Duration::from_secs(3), || async {
            gw.log().contains("connect failed")
        })
        .await,
        "no log line for the failure:\n{}",
        gw.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_marked_down_by_health_checks_answers_503_at_once() {
    let a = Backend::start("a").await;
    let addrs = vec![a.addr.to_string()];
    let gw = Gateway::start(&pool_config(
        &addrs,
        "    health_check: { interval: 200ms, fails: 1 }",
    ));
    assert_eq!(get(gw.port, "x", "/").await.status, 200);
    a.stop();
    assert!(
        eventually(Duration::from_secs(3), || async {
            get(gw.port, "x", "/").await.status == 503
        })
        .await
    );
    let t = Instant::now();
    assert_eq!(get(gw.port, "x", "/").await.status, 503);
    assert!(t.elapsed() < Duration::from_millis(500));
    assert!(gw.log().contains("no usable backend"), "{}", gw.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_conn_avoids_the_busy_backend() {
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let addrs = vec![a.addr.to_string(), b.addr.to_string()];
    let gw = Gateway::start(&pool_config(&addrs, "    balance: least_conn"));
    // Hold three WebSockets open: least_conn counts them.
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(ws_connect(gw.port, "x", "/ws").await);
    }
    let busy_a = a.hits.load(SeqCst);
    let busy_b = b.hits.load(SeqCst);
    let (busy, idle_name) = if busy_a > busy_b {
        (&a, "b")
    } else {
        (&b, "a")
    };
    let before = busy.app_hits.load(SeqCst);
    for _ in 0..4 {
        assert_eq!(get(gw.port, "x", "/").await.json()["backend"], idle_name);
    }
    assert_eq!(busy.app_hits.load(SeqCst), before);
    drop(held);
}
