//! Per-route request limits and per-pool upgrade limits through the real gateway binary:
//! `rate_limit` (429 with Retry-After per client, WebSocket frames never counted),
//! `max_body` (413 for declared and streamed bodies), `max_upgraded` (503 past the cap).

mod common;
use common::*;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One request on a fresh connection from `ip`: (status, Retry-After).
async fn request_from(ip: &str, port: u16, path: &str, extra: &str) -> (u16, Option<u64>) {
    let mut s = connect_from(ip, port).await;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n{extra}\r\n")
            .as_bytes(),
    )
    .await
    .unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut raw))
        .await
        .expect("response in time")
        .unwrap();
    let text = String::from_utf8_lossy(&raw);
    let status = text.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    let retry = text.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case("retry-after")
            .then(|| v.trim().parse().ok())
            .flatten()
    });
    (status, retry)
}

fn config(b: &Backend) -> String {
    format!(
        r#"
listeners: [ {{ address: "127.0.0.1:{{PORT}}" }} ]
admin: {{ address: "127.0.0.1:{{ADMIN}}" }}
upstreams:
  app: {{ servers: [ {{ address: "{addr}" }} ] }}
  ws: {{ servers: [ {{ address: "{addr}" }} ], max_upgraded: 2 }}
routes:
  - match: {{ path_prefix: /limited/ }}
    upstream: app
    rate_limit: {{ rate: 5, burst: 10 }}
  - match: {{ path_prefix: /keyed/ }}
    upstream: app
    rate_limit: {{ rate: 1, per: 10s, burst: 2, key: "header:X-Api-Key" }}
  - match: {{ path_prefix: /ws-limited/ }}
    upstream: app
    rate_limit: {{ rate: 1, per: 10s, burst: 2 }}
  - match: {{ path_prefix: /small/ }}
    upstream: app
    max_body: 1k
  - match: {{ path_prefix: /ws/ }}
    upstream: ws
  - upstream: app
"#,
        addr = b.addr
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_gets_429_at_the_rate_while_another_client_is_unaffected() {
    let b = Backend::start("app").await;
    let gw = Gateway::start(&config(&b));

    let mut ok = 0;
    let mut limited = Vec::new();
    for _ in 0..30 {
        match request_from("127.0.0.1", gw.port, "/limited/x", "").await {
            (200, _) => ok += 1,
            (429, retry) => limited.push(retry),
            other => panic!("unexpected {other:?}"),
        }
    }
    // A burst of 10, plus what the rate (5/s) refills while the flood runs.
    assert!((10..=16).contains(&ok), "{ok} passed of 30");
    assert!(!limited.is_empty());
    assert!(
        limited.iter().all(|r| matches!(r, Some(1))),
        "Retry-After on every 429: {limited:?}"
    );
    // Another client is not affected by the first one's flood.
    for _ in 0..5 {
        assert_eq!(
            request_from("127.0.0.2", gw.port, "/limited/x", "").await.0,
            200
        );
    }
    // Other routes are not limited.
    assert_eq!(request_from("127.0.0.1", gw.port, "/free", "").await.0, 200);
    // After a second the flooding client has an allowance again.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        request_from("127.0.0.1", gw.port, "/limited/x", "").await.0,
        200
    );
    assert!(
        gw.log().contains("routes[0]: rate limit"),
        "refusals logged"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_header_key_limits_each_key_and_falls_back_to_the_address() {
    let b = Backend::start("app").await;
    let gw = Gateway::start(&config(&b));
    let key = |k: &str| format!("X-Api-Key: {k}\r\n");
    for _ in 0..2 {
        assert_eq!(
            request_from("127.0.0.1", gw.port, "/keyed/", &key("a"))
                .await
                .0,
            200
        );
    }
    let (status, retry) = request_from("127.0.0.1", gw.port, "/keyed/", &key("a")).await;
    assert_eq!(status, 429);
    assert!(retry.is_some_and(|r| (1..=10).contains(&r)), "{retry:?}");
    // Same address, another key: its own allowance.
    assert_eq!(
        request_from("127.0.0.1", gw.port, "/keyed/", &key("b"))
            .await
            .0,
        200
    );
    // No key: limited by address (cannot dodge the limit by leaving the header out).
    for _ in 0..2 {
        assert_eq!(
            request_from("127.0.0.3", gw.port, "/keyed/", "").await.0,
            200
        );
    }
    assert_eq!(
        request_from("127.0.0.3", gw.port, "/keyed/", "").await.0,
        429
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_frames_are_not_requests() {
    let b = Backend::start("app").await;
    let gw = Gateway::start(&config(&b));
    // Burst 2: the upgrade is one request; its messages are not.
    let mut ws = ws_connect(gw.port, "localhost", "/ws-limited/").await;
    for i in 0..20 {
        let text = format!("m{i}");
        assert_eq!(ws_roundtrip(&mut ws, &text).await, text);
    }
    assert_eq!(get(gw.port, "localhost", "/ws-limited/x").await.status, 200);
    assert_eq!(get(gw.port, "localhost", "/ws-limited/x").await.status, 429);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_over_max_body_get_413() {
    let b = Backend::start("app").await;
    let gw = Gateway::start(&config(&b));
    let body = "x".repeat(2000);
    let r = http(
        gw.port,
        &format!("POST /small/ HTTP/1.1\r\nHost: localhost\r\nContent-Length: 2000\r\n\r\n{body}"),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 413, "declared length");
    // Streamed: no length up front.
    let chunk = "y".repeat(700);
    let raw = format!(
        "POST /small/ HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n\
         2bc\r\n{chunk}\r\n2bc\r\n{chunk}\r\n0\r\n\r\n"
    );
    let r = http(gw.port, &raw).await.unwrap();
    assert_eq!(r.status, 413, "chunked body over the limit");
    // Within the limit, both ways.
    let small = "z".repeat(500);
    let r = http(
        gw.port,
        &format!("POST /small/ HTTP/1.1\r\nHost: localhost\r\nContent-Length: 500\r\n\r\n{small}"),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["body_len"], 500);
    let raw = format!(
        "POST /small/ HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n\
         1f4\r\n{small}\r\n0\r\n\r\n"
    );
    assert_eq!(http(gw.port, &raw).await.unwrap().status, 200);
    // The default max_body is 1m.
    let big = "w".repeat(1_100_000);
    let r = http(
        gw.port,
        &format!(
            "POST /other HTTP/1.1\r\nHost: localhost\r\nContent-Length: {}\r\n\r\n{big}",
            big.len()
        ),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 413, "default 1m");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_upgraded_caps_websockets_per_pool() {
    let b = Backend::start("app").await;
    let gw = Gateway::start(&config(&b));
    let mut one = ws_connect(gw.port, "localhost", "/ws/1").await;
    let two = ws_connect(gw.port, "localhost", "/ws/2").await;
    let third = try_ws_connect(gw.port, "localhost", "/ws/3").await;
    assert_eq!(third.err().and_then(|e| e.status), Some(503));
    // Plain requests to the pool are not affected.
    assert_eq!(get(gw.port, "localhost", "/ws/plain").await.status, 200);
    assert_eq!(ws_roundtrip(&mut one, "still here").await, "still here");
    drop(two);
    let freed = eventually(Duration::from_secs(5), || async {
        try_ws_connect(gw.port, "localhost", "/ws/4").await.is_ok()
    })
    .await;
    assert!(freed, "a place is free again once a WebSocket closes");
    let status = reqwest_status(gw.admin_port).await;
    assert!(status.contains("\"upgraded\""), "{status}");
}

/// The admin `/status` body.
async fn reqwest_status(admin: u16) -> String {
    get(admin, "localhost", "/status").await.text()
}
