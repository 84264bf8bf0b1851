//! Self-tests of the test harness against demo backends directly (no gateway).
mod common;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::*;
use futures_util::{SinkExt, StreamExt};

const T: Duration = Duration::from_secs(20);

async fn bounded<F: std::future::Future<Output = ()>>(f: F) {
    tokio::time::timeout(T, f).await.expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_echo_has_method_path_headers() {
    bounded(async {
        let b = Backend::start("node-a").await;
        let r = get_with(b.port(), "example.com", "/api/x?y=1&z=2", &[("X-Test", "1"), ("X-Test", "2"), ("X-Other", "v")]).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.header("content-type"), Some("application/json"));
        assert_eq!(r.header("X-BACKEND"), Some("node-a"));
        let j = r.json();
        assert_eq!(j["backend"], "node-a");
        assert_eq!(j["method"], "GET");
        assert_eq!(j["path"], "/api/x?y=1&z=2");
        assert_eq!(j["headers"]["host"], "example.com");
        assert_eq!(j["headers"]["x-test"], "1, 2");
        assert_eq!(j["headers"]["x-other"], "v");
        assert_eq!(j["body_len"], 0);
        assert_eq!(r.backend().as_deref(), Some("node-a"));

        // Content-Length body
        let r = send(b.port(), "POST", "h", "/p", &[("Content-Type", "text/plain")], b"hello world").await;
        assert_eq!(r.json()["method"], "POST");
        assert_eq!(r.json()["body_len"], 11);

        // chunked body, with the chunk split over writes via raw request
        let r = http(
            b.port(),
            "PUT /c HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n",
        )
        .await
        .unwrap();
        assert_eq!(r.json()["body_len"], 11);
        assert_eq!(r.json()["method"], "PUT");

        // HEAD: no body, but Content-Length
        let r = http(b.port(), "HEAD /x HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n").await.unwrap();
        assert_eq!(r.status, 200);
        assert!(r.body.is_empty());
        assert!(r.header("content-length").unwrap().parse::<usize>().unwrap() > 0);

        // /status/<code>
        let r = get(b.port(), "h", "/status/503").await;
        assert_eq!(r.status, 503);
        assert_eq!(r.json()["backend"], "node-a");

        // HTML page
        let r = get_with(b.port(), "h", "/", &[("Accept", "text/html,application/xhtml+xml")]).await;
        assert_eq!(r.status, 200);
        assert!(r.header("content-type").unwrap().starts_with("text/html"));
        assert!(r.text().contains("node-a") && r.text().contains("WebSocket"));
        // without Accept: html -> JSON
        assert_eq!(get(b.port(), "h", "/").await.json()["path"], "/");

        // HTTP/1.0 without keep-alive: connection closed, body read until close works too
        let r = http(b.port(), "GET /old HTTP/1.0\r\n\r\n").await.unwrap();
        assert_eq!(r.json()["path"], "/old");
        assert_eq!(r.header("connection"), Some("close"));

        assert_eq!(b.hits.load(Ordering::SeqCst), 8);
        assert_eq!(b.app_hits.load(Ordering::SeqCst), 8);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_counters() {
    bounded(async {
        let b = Backend::start("node-h").await;
        let r = get(b.port(), "h", "/health").await;
        assert_eq!(r.status, 200);
        assert_eq!(r.text(), "ok");
        get(b.port(), "h", "/other").await;
        assert_eq!(b.hits(), 2);
        assert_eq!(b.app_hits(), 1);
        assert_eq!(b.conns.load(Ordering::SeqCst), 2);
        b.reset_counters();
        assert_eq!(b.hits(), 0);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sleep_endpoint_waits() {
    bounded(async {
        let b = Backend::start("node-s").await;
        let t0 = Instant::now();
        let r = get(b.port(), "h", "/sleep/300").await;
        let el = t0.elapsed();
        assert_eq!(r.status, 200);
        assert_eq!(r.json()["backend"], "node-s");
        assert!(el >= Duration::from_millis(300), "{el:?}");
        assert!(el < Duration::from_secs(3), "{el:?}");
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_echo_and_whoami() {
    bounded(async {
        let b = Backend::start("node-ws").await;
        let mut ws = ws_connect(b.port(), "example.com", "/ws").await;
        assert_eq!(ws_roundtrip(&mut ws, "hello").await, "hello");
        assert_eq!(ws_roundtrip(&mut ws, "whoami").await, "node-ws");

        ws.send(WsMessage::Binary(vec![1, 2, 3])).await.unwrap();
        assert_eq!(
            ws_recv(&mut ws).await,
            Some(WsMessage::Binary(vec![1, 2, 3]))
        );

        ws.send(WsMessage::Ping(b"p".to_vec())).await.unwrap();
        let pong = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(pong, WsMessage::Pong(b"p".to_vec()));

        // a big message
        let big = "x".repeat(200_000);
        assert_eq!(ws_roundtrip(&mut ws, &big).await.len(), 200_000);

        ws.close(None).await.unwrap();
        // server answers the close; stream then ends
        loop {
            match ws_recv(&mut ws).await {
                None => break,
                Some(WsMessage::Close(_)) => continue,
                Some(m) => panic!("unexpected {m:?}"),
            }
        }

        // any path upgrades; subprotocol is echoed
        let (mut ws2, resp) = ws_connect_with(
            b.port(),
            "h",
            "/any/path?q=1",
            &[("Sec-WebSocket-Protocol", "chat, superchat")],
        )
        .await
        .unwrap();
        assert_eq!(resp.status().as_u16(), 101);
        assert_eq!(
            resp.headers().get("sec-websocket-protocol").unwrap(),
            "chat"
        );
        assert_eq!(resp.headers().get("x-backend").unwrap(), "node-ws");
        assert_eq!(ws_roundtrip(&mut ws2, "whoami").await, "node-ws");
        assert_eq!(b.ws_hits.load(Ordering::SeqCst), 2);
        assert_eq!(b.app_hits(), 2);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_first_frame_in_same_packet_as_handshake() {
    // Bytes read past the request head must be replayed into the WebSocket.
    bounded(async {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let b = Backend::start("node-p").await;
        let mut s = tokio::net::TcpStream::connect(b.addr).await.unwrap();
        let mut req = b"GET /ws HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n".to_vec();
        // masked text frame "hi": FIN+text, MASK|2, mask key 0, payload
        req.extend_from_slice(&[0x81, 0x82, 0, 0, 0, 0, b'h', b'i']);
        s.write_all(&req).await.unwrap();
        let mut got = Vec::new();
        let mut tmp = [0u8; 1024];
        while !got.ends_with(&[0x81, 0x02, b'h', b'i']) {
            let n = s.read(&mut tmp).await.unwrap();
            assert!(n > 0, "closed: {:?}", String::from_utf8_lossy(&got));
            got.extend_from_slice(&tmp[..n]);
        }
        let text = String::from_utf8_lossy(&got);
        assert!(text.starts_with("HTTP/1.1 101"), "{text}");
        assert!(text.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo="), "{text}");
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_refuses_and_aborts_then_restart_on_same_port() {
    bounded(async {
        let b = Backend::start("node-r").await;
        let port = b.port();
        assert_eq!(get(port, "h", "/").await.status, 200);

        // an open keep-alive connection and a websocket, both cut by stop()
        let mut conn = H1Conn::connect(port).await.unwrap();
        assert_eq!(conn.get("h", "/a").await.status, 200);
        let mut ws = ws_connect(port, "h", "/ws").await;
        assert!(
            eventually(Duration::from_secs(2), || async {
                b.open_connections() == 2
            })
            .await
        );

        b.stop();
        assert!(b.is_stopped());
        // immediately refused
        let e = tokio::net::TcpStream::connect(("127.0.0.1", port)).await;
        assert!(e.is_err(), "connect after stop() should be refused");
        assert!(http(port, "GET / HTTP/1.1\r\nHost: h\r\n\r\n")
            .await
            .is_err());
        assert!(
            conn.is_closed(Duration::from_secs(2)).await,
            "keep-alive conn should be closed"
        );
        assert!(
            ws_recv(&mut ws).await.is_none(),
            "websocket should be cut by stop()"
        );
        assert!(
            eventually(Duration::from_secs(2), || async {
                b.open_connections() == 0
            })
            .await
        );

        // restart on the same port, with fresh counters
        let b2 = Backend::start_on(b.addr, "node-r2")
            .await
            .expect("restart on same port");
        assert_eq!(b2.port(), port);
        let r = get(port, "h", "/again").await;
        assert_eq!(r.json()["backend"], "node-r2");
        assert_eq!(b2.hits(), 1);
        b2.stop();
        let b3 = b2.restart().await.unwrap();
        assert_eq!(get(port, "h", "/").await.json()["backend"], "node-r2");
        b3.stop();
        assert!(!port_open(port));
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_three_requests_one_connection() {
    bounded(async {
        let b = Backend::start("node-k").await;
        let mut c = H1Conn::connect(b.port()).await.unwrap();
        for i in 0..3 {
            let r = c.request(&format!("GET /k/{i} HTTP/1.1\r\nHost: h\r\n\r\n")).await.unwrap();
            assert_eq!(r.status, 200);
            assert_eq!(r.json()["path"], format!("/k/{i}"));
        }
        // body + 100-continue + Connection: close on the same connection
        let r = c
            .request("POST /k/body HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\nabc")
            .await
            .unwrap();
        assert_eq!(r.json()["body_len"], 3);
        let r = c.request("GET /k/last HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n").await.unwrap();
        assert_eq!(r.header("connection"), Some("close"));
        assert!(c.is_closed(Duration::from_secs(2)).await);
        assert_eq!(b.conns.load(Ordering::SeqCst), 1);
        assert_eq!(b.hits(), 5);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn misc_helpers() {
    bounded(async {
        let p = free_port();
        assert!(p > 0);
        let dead = DeadPort::new();
        assert!(!port_open(dead.port()));
        let bs = start_backends(&["x", "y"]).await;
        assert_ne!(bs[0].port(), bs[1].port());
        assert_eq!(
            get(bs[1].port(), "h", "/").await.backend().as_deref(),
            Some("y")
        );
        let mut n = 0;
        assert!(
            eventually(Duration::from_secs(2), || {
                n += 1;
                let done = n >= 3;
                async move { done }
            })
            .await
        );
        assert!(!eventually(Duration::from_millis(200), || async { false }).await);
        // a ws handshake against a non-ws endpoint error is reported with status
        let e = try_ws_connect(dead.port(), "h", "/").await.unwrap_err();
        assert!(e.status.is_none(), "{e}");
        // CLI parsing of the demo backend
        let args: Vec<String> = [
            "--listen",
            "127.0.0.1:1",
            "--name",
            "a",
            "--listen=127.0.0.1:2",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let pairs = common::demo::parse_args(&args).unwrap();
        assert_eq!(pairs[0], ("127.0.0.1:1".parse().unwrap(), "a".to_string()));
        assert_eq!(
            pairs[1],
            ("127.0.0.1:2".parse().unwrap(), "node-b".to_string())
        );
        assert!(common::demo::parse_args(&["--bogus".to_string()]).is_err());
    })
    .await
}
