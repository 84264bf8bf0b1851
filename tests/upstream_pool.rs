//! Reuse of idle backend connections (the pool behind every proxied request): requests share
//! connections, an idle connection past `timeouts.keepalive` is never reused, and a connection
//! the backend closed is not handed to a request.

mod common;
use common::*;
use std::sync::atomic::Ordering::SeqCst;
use std::time::Duration;

fn config(b: &Backend, keepalive: &str) -> String {
    format!(
        r#"
server: {{ threads: 1 }}
listeners: [ {{ address: "127.0.0.1:{{PORT}}" }} ]
admin: {{ address: "127.0.0.1:{{ADMIN}}" }}
upstreams:
  p: {{ servers: [ {{ address: "{}" }} ], timeouts: {{ keepalive: {keepalive} }} }}
routes: [ {{ upstream: p }} ]
"#,
        b.addr
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sequential_requests_share_one_backend_connection() {
    let b = Backend::start("a").await;
    let gw = Gateway::start(&config(&b, "10s"));
    for i in 0..40 {
        // a new client connection each time: only the backend side is pooled
        assert_eq!(get(gw.port, "x", &format!("/r{i}")).await.status, 200);
    }
    assert_eq!(
        b.conns.load(SeqCst),
        1,
        "40 requests, one backend connection"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_expire_after_the_keepalive_timeout() {
    let b = Backend::start("a").await;
    let gw = Gateway::start(&config(&b, "300ms"));
    assert_eq!(get(gw.port, "x", "/1").await.status, 200);
    assert_eq!(get(gw.port, "x", "/2").await.status, 200);
    assert_eq!(b.conns.load(SeqCst), 1, "reused within the keepalive");
    for i in 0..3 {
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert_eq!(get(gw.port, "x", &format!("/late{i}")).await.status, 200);
    }
    assert_eq!(
        b.conns.load(SeqCst),
        4,
        "each request after an idle gap above the keepalive opens a new connection"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_the_backend_closed_is_not_reused() {
    // A raw backend that closes its connection 200 ms after each response (as Node does after
    // its keepAliveTimeout): the next request must get a fresh connection, not a 502.
    use tokio::io::AsyncWriteExt;
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let acc = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            acc.fetch_add(1, SeqCst);
            tokio::spawn(async move {
                if read_head(&mut s).await.is_none() {
                    return;
                }
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                    .await;
                tokio::time::sleep(Duration::from_millis(200)).await;
            });
        }
    });
    let gw = Gateway::start(&format!(
        r#"
server: {{ threads: 1 }}
listeners: [ {{ address: "127.0.0.1:{{PORT}}" }} ]
admin: {{ address: "127.0.0.1:{{ADMIN}}" }}
upstreams: {{ p: {{ servers: [ {{ address: "{addr}" }} ], timeouts: {{ keepalive: 30s }} }} }}
routes: [ {{ upstream: p }} ]
"#
    ));
    for i in 0..5 {
        let r = get(gw.port, "x", &format!("/{i}")).await;
        assert_eq!(r.status, 200, "request {i}: {}", gw.log());
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(accepted.load(SeqCst), 5);
    assert!(!gw.log().contains(" 502 "), "{}", gw.log());
}
