//! Stopping the gateway: SIGINT (fast) and SIGTERM (graceful) end the process promptly, with
//! connections open on the proxy and the admin listener. A fast shutdown once hung for good
//! ("Waiting for service runtime admin to exit") when a listener's accept loop spun on the
//! runtime being shut down under it (vendor/pingora-core PATCHED.md 7).

mod common;
use common::*;
use futures_util::{SinkExt, StreamExt};
use std::time::Duration;

const CONFIG: &str = r#"
listeners: [ { address: "127.0.0.1:{PORT}" } ]
admin: { address: "127.0.0.1:{ADMIN}" }
upstreams: { app: { servers: [ { address: "{BACKEND}" } ] } }
routes: [ { upstream: app } ]
server: { grace_period_seconds: 1, graceful_shutdown_timeout_seconds: 2 }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_and_sigterm_end_the_process_promptly() {
    let backend = Backend::start("a").await;
    for (round, sig) in ["INT", "TERM", "INT", "INT", "TERM", "INT"]
        .iter()
        .enumerate()
    {
        let mut gw = Gateway::start(&CONFIG.replace("{BACKEND}", &backend.addr.to_string()));
        // Traffic on both listeners, and idle connections left open on each.
        assert_eq!(get(gw.port, "x", "/").await.status, 200);
        assert_eq!(get(gw.admin_port, "127.0.0.1", "/health").await.status, 200);
        let _idle = (
            tokio::net::TcpStream::connect(("127.0.0.1", gw.port))
                .await
                .unwrap(),
            tokio::net::TcpStream::connect(("127.0.0.1", gw.admin_port))
                .await
                .unwrap(),
        );
        gw.signal(sig);
        let st = gw.wait_exit(Duration::from_secs(10));
        assert!(
            st.is_some(),
            "round {round}: SIG{sig} did not end the gateway within 10 s; log:\n{}",
            gw.log()
        );
        // The runtime shut down under the accept loop is no error worth an ERROR line.
        assert!(
            !gw.log().contains("Accept() failed"),
            "round {round}: an accept failure logged as an error on shutdown:\n{}",
            gw.log()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_stop_ends_when_the_last_connection_does() {
    let backend = Backend::start("a").await;
    let config = CONFIG
        .replace("{BACKEND}", &backend.addr.to_string())
        .replace("grace_period_seconds: 1", "grace_period_seconds: 30");
    // Nothing open: SIGTERM ends the process at once, not after the 30 s grace period.
    let mut gw = Gateway::start(&config);
    assert_eq!(get(gw.port, "x", "/").await.status, 200);
    let t = std::time::Instant::now();
    gw.signal("TERM");
    assert!(
        gw.wait_exit(Duration::from_secs(10)).is_some(),
        "{}",
        gw.log()
    );
    assert!(t.elapsed() < Duration::from_secs(10));
    assert!(
        gw.log().contains("every connection has ended"),
        "{}",
        gw.log()
    );

    // A WebSocket open: the process waits for it, and ends soon after it closes.
    let mut gw = Gateway::start(&config);
    let mut ws = ws_connect(gw.port, "x", "/ws").await;
    ws.send(WsMessage::Text("hi".into())).await.unwrap();
    assert!(ws.next().await.is_some());
    gw.signal("TERM");
    assert!(
        gw.wait_exit(Duration::from_secs(2)).is_none(),
        "the open WebSocket keeps the grace period running"
    );
    ws.send(WsMessage::Text("still here".into())).await.unwrap();
    assert!(ws.next().await.is_some(), "the WebSocket still works");
    drop(ws);
    let t = std::time::Instant::now();
    assert!(
        gw.wait_exit(Duration::from_secs(10)).is_some(),
        "{}",
        gw.log()
    );
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "ended soon after the last connection"
    );
}
