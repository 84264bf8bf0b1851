//! An idle gateway is quiet: once the last request's timeouts have passed, no thread of the
//! process wakes on a clock (Pingora's timer thread ticked 100 times a second for good after
//! the first request; vendor/pingora-timeout PATCHED.md 5), and the first request after the
//! quiet spell still gets its timeouts.

mod common;
use common::*;
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;

/// Answers every request with 200, except `/stall`, which it never answers.
async fn backend() -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                while let Some(head) = read_head(&mut s).await {
                    if head.starts_with(b"GET /stall ") {
                        tokio::time::sleep(Duration::from_secs(30)).await;
                        return;
                    }
                    let ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
                    if s.write_all(ok).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// Context switches of the gateway's timer thread so far, `None` before it exists.
fn timer_thread_switches(pid: u32) -> Option<u64> {
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).ok()? {
        let dir = task.ok()?.path();
        let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        if comm.trim_end() == "Timer thread" {
            let status = std::fs::read_to_string(dir.join("status")).ok()?;
            return Some(
                status
                    .lines()
                    .filter(|l| l.contains("ctxt_switches"))
                    .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
                    .sum(),
            );
        }
    }
    None
}

/// Waits (at most `limit`) for a whole second in which the timer thread did not run.
fn wait_quiet(pid: u32, limit: Duration) -> Option<Duration> {
    let t0 = Instant::now();
    let mut last = timer_thread_switches(pid)?;
    while t0.elapsed() < limit {
        std::thread::sleep(Duration::from_secs(1));
        let now = timer_thread_switches(pid)?;
        if now == last {
            return Some(t0.elapsed());
        }
        last = now;
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_gateway_stops_its_clock_and_a_new_request_restarts_it() {
    let addr = backend().await;
    let gw = Gateway::start(&format!(
        r#"
listeners:
  - {{ address: "127.0.0.1:{{PORT}}", client: {{ header_timeout: 1s, keepalive_timeout: 1s }} }}
admin: {{ address: "127.0.0.1:{{ADMIN}}" }}
upstreams:
  app:
    servers: [ {{ address: "{addr}" }} ]
    timeouts: {{ connect: 1s, read: 1s, keepalive: 1s }}
routes: [ {{ upstream: app }} ]
"#
    ));
    for _ in 0..5 {
        assert_eq!(get(gw.port, "x", "/").await.status, 200);
    }
    let pid = gw.pid();
    assert!(
        timer_thread_switches(pid).is_some(),
        "no timer thread after proxied requests"
    );
    // A timeout's bucket stays until its time even when its wait ended early (the timer's
    // design), so the clock stops one longest timeout after the last wait: every timeout is
    // 1 s here. Before the patch it never stopped.
    let quiet = tokio::task::spawn_blocking(move || wait_quiet(pid, Duration::from_secs(30)))
        .await
        .unwrap();
    assert!(
        quiet.is_some(),
        "the timer thread kept ticking for 30 s after the last request"
    );

    // A request after the quiet spell still times out on time: its registration wakes the
    // clock (a parked clock that stayed asleep would leave it hanging).
    let t0 = Instant::now();
    let resp = tokio::time::timeout(Duration::from_secs(10), get(gw.port, "x", "/stall"))
        .await
        .expect("the read timeout never fired after the clock had stopped");
    let took = t0.elapsed();
    assert!(resp.status >= 500, "status {}", resp.status);
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(5),
        "1 s read timeout fired after {took:?}"
    );
    assert_eq!(get(gw.port, "x", "/").await.status, 200);
    // And quiet again afterwards.
    let quiet = tokio::task::spawn_blocking(move || wait_quiet(pid, Duration::from_secs(30)))
        .await
        .unwrap();
    assert!(quiet.is_some(), "the clock did not stop a second time");
}
