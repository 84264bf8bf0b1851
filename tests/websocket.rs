//! WebSockets through the gateway: echo both ways, upgrade headers, idle timeouts per pool
//! (a short one closes, the default outlives Pingora's 60 s read timeout).

mod common;
use common::*;
use futures_util::{SinkExt, StreamExt};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

fn ws_config(backend: &Backend, timeouts: &str) -> String {
    format!(
        r#"
listeners: [ {{ address: "127.0.0.1:{{PORT}}" }} ]
admin: {{ address: "127.0.0.1:{{ADMIN}}" }}
upstreams:
  ws: {{ servers: [ {{ address: "{}" }} ]{timeouts} }}
routes:
  - {{ match: {{ path_prefix: /ws }}, upstream: ws }}
"#,
        backend.addr
    )
}

async fn echo(
    ws: &mut tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>,
    text: &str,
) -> String {
    ws.send(Message::Text(text.into())).await.expect("send");
    loop {
        match tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .expect("echo within 5 s")
        {
            Some(Ok(Message::Text(t))) => return t.to_string(),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            other => panic!("unexpected {other:?}"),
        }
    }
}

/// Reads until the connection ends (close frame, EOF or error).
async fn wait_closed(ws: &mut tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>) {
    loop {
        match ws.next().await {
            None | Some(Err(_)) | Some(Ok(Message::Close(_))) => break,
            Some(Ok(_)) => continue,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_echo_through_the_gateway() {
    let b = Backend::start("node-1").await;
    let gw = Gateway::start(&ws_config(&b, ""));
    let mut ws = ws_connect(gw.port, "example.test", "/ws/chat").await;
    assert_eq!(echo(&mut ws, "whoami").await, "node-1");
    for i in 0..50 {
        let m = format!("message {i} {}", "x".repeat(i * 100));
        assert_eq!(echo(&mut ws, &m).await, m);
    }
    ws.send(Message::Binary(vec![0u8, 1, 2, 255]))
        .await
        .unwrap();
    match ws.next().await {
        Some(Ok(Message::Binary(b))) => assert_eq!(&b[..], &[0u8, 1, 2, 255]),
        other => panic!("{other:?}"),
    }
    ws.close(None).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn firefox_style_connection_header_upgrades() {
    let b = Backend::start("node-1").await;
    let gw = Gateway::start(&ws_config(&b, ""));
    let r = http(
        gw.port,
        "GET /ws HTTP/1.1\r\nHost: x\r\nConnection: keep-alive, Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    )
    .await;
    // The 101 arrives; the connection then stays open as a WebSocket, so `http` may time out
    // reading a body: only the status line matters here.
    match r {
        Ok(r) => assert_eq!(r.status, 101),
        Err(e) => panic!("no 101: {e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_idle_timeout_closes_an_idle_websocket() {
    let b = Backend::start("node-1").await;
    let gw = Gateway::start(&ws_config(&b, ", timeouts: { idle: 1s }"));
    let mut ws = ws_connect(gw.port, "x", "/ws").await;
    assert_eq!(echo(&mut ws, "hi").await, "hi");
    // Traffic keeps it alive past the idle limit...
    for _ in 0..6 {
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert_eq!(echo(&mut ws, "tick").await, "tick");
    }
    // ...silence in both directions closes it.
    let t = Instant::now();
    let end = tokio::time::timeout(Duration::from_secs(5), wait_closed(&mut ws)).await;
    assert!(end.is_ok(), "idle WebSocket was not closed within 5 s");
    let waited = t.elapsed();
    assert!(
        waited >= Duration::from_millis(800) && waited < Duration::from_secs(3),
        "closed after {waited:?}, want about 1 s"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_idle_timeout_outlives_sixty_seconds_of_silence() {
    let b = Backend::start("node-1").await;
    let gw = Gateway::start(&ws_config(&b, ""));
    let mut ws = ws_connect(gw.port, "x", "/ws").await;
    assert_eq!(echo(&mut ws, "before").await, "before");
    // nginx's and Pingora's 60 s read timeouts would cut this; the pool default (1h) must not.
    match tokio::time::timeout(Duration::from_secs(65), ws.next()).await {
        Err(_) => {}
        Ok(m) => panic!("idle WebSocket got {m:?} during 65 s of silence"),
    }
    assert_eq!(echo(&mut ws, "after 65 s").await, "after 65 s");
    drop(gw);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configured_idle_timeout_is_honoured_both_ways() {
    // idle: 3s. Client-only traffic and server-only traffic each keep the connection up (it is
    // idle only when neither side sends); 2 s of full silence is fine, 5 s is not.
    let b = Backend::start("node-1").await;
    let gw = Gateway::start(&ws_config(&b, ", timeouts: { idle: 3s }"));
    let mut ws = ws_connect(gw.port, "x", "/ws").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        echo(&mut ws, "still here after 2 s").await,
        "still here after 2 s"
    );
    let t = Instant::now();
    let closed = tokio::time::timeout(Duration::from_secs(8), wait_closed(&mut ws)).await;
    assert!(closed.is_ok(), "not closed after 8 s");
    assert!(
        t.elapsed() >= Duration::from_millis(2500),
        "closed too early: {:?}",
        t.elapsed()
    );
}

/// The `101` the hand-written upgrade backends below answer with.
const SWITCHING: &[u8] =
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n";

/// Reads a request head off `s` for a hand-written upgrade backend; returns the bytes that
/// came with it after the head (`None`: the connection ended first).
async fn read_request_head(s: &mut (impl tokio::io::AsyncRead + Unpin)) -> Option<Vec<u8>> {
    use tokio::io::AsyncReadExt;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            return Some(buf.split_off(i + 4));
        }
    }
}

/// A raw upgrade backend: answers the first request with `101` and `greeting` in ONE write,
/// then echoes every byte it receives prefixed with `echo:`.
async fn raw_upgrade_backend(greeting: &'static [u8]) -> std::net::SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut chunk = [0u8; 4096];
                let Some(rest) = read_request_head(&mut s).await else {
                    return;
                };
                let mut head = SWITCHING.to_vec();
                head.extend_from_slice(greeting);
                if s.write_all(&head).await.is_err() {
                    return;
                }
                if !rest.is_empty() {
                    let mut out = b"echo:".to_vec();
                    out.extend_from_slice(&rest);
                    let _ = s.write_all(&out).await;
                }
                loop {
                    let n = match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    let mut out = b"echo:".to_vec();
                    out.extend_from_slice(&chunk[..n]);
                    if s.write_all(&out).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// Every request to the one backend at `addr`, with `server` (a `server:` line, or nothing).
fn raw_config(addr: std::net::SocketAddr, server: &str) -> String {
    format!(
        r#"
{server}
listeners: [ {{ address: "127.0.0.1:{{PORT}}" }} ]
admin: {{ address: "127.0.0.1:{{ADMIN}}" }}
upstreams: {{ raw: {{ servers: [ {{ address: "{addr}" }} ] }} }}
routes: [ {{ upstream: raw }} ]
"#
    )
}

/// Reads from `s` until `want` has been seen (or 5 s pass); returns everything read.
async fn read_until(s: &mut tokio::net::TcpStream, want: &[u8]) -> Vec<u8> {
    read_until_seen(s, want, 1).await
}

/// Reads from `r` until `want` has been seen `times` times (or 5 s pass).
async fn read_until_seen<R: tokio::io::AsyncRead + Unpin>(
    r: &mut R,
    want: &[u8],
    times: usize,
) -> Vec<u8> {
    use tokio::io::AsyncReadExt;
    let mut got = Vec::new();
    let mut chunk = [0u8; 4096];
    let deadline = Instant::now() + Duration::from_secs(5);
    while got.windows(want.len()).filter(|w| *w == want).count() < times {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, r.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => got.extend_from_slice(&chunk[..n]),
            _ => break,
        }
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_that_arrive_with_the_upgrade_are_relayed_both_ways() {
    // The server's first message in the same segment as its 101, and the client's first bytes
    // in the same segment as its request: the relay that takes over after the 101 must deliver
    // both (they were already read by the HTTP layer).
    use tokio::io::AsyncWriteExt;
    let addr = raw_upgrade_backend(b"hello-from-server").await;
    let gw = Gateway::start(&raw_config(addr, ""));
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", gw.port))
        .await
        .unwrap();
    s.write_all(
        b"GET /up HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
    )
    .await
    .unwrap();
    let got = read_until(&mut s, b"hello-from-server").await;
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 101"), "{text}");
    assert!(text.ends_with("hello-from-server"), "{text}");
    s.write_all(b"ping-1").await.unwrap();
    let got = read_until(&mut s, b"echo:ping-1").await;
    assert!(
        String::from_utf8_lossy(&got).contains("echo:ping-1"),
        "{got:?}"
    );

    // Client bytes pipelined right behind the upgrade request.
    let mut s2 = tokio::net::TcpStream::connect(("127.0.0.1", gw.port))
        .await
        .unwrap();
    s2.write_all(
        b"GET /up HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\nearly-client-bytes",
    )
    .await
    .unwrap();
    let got = read_until(&mut s2, b"echo:early-client-bytes").await;
    let text = String::from_utf8_lossy(&got);
    assert!(text.contains("hello-from-server"), "{text}");
    assert!(text.contains("echo:early-client-bytes"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_websocket_releases_its_backend_and_logs_one_line() {
    let b = Backend::start("node-1").await;
    let gw = Gateway::start(&ws_config(&b, ""));
    let mut ws = ws_connect(gw.port, "x", "/ws/logged").await;
    assert_eq!(echo(&mut ws, "hi").await, "hi");
    let in_flight = || async {
        get(gw.admin_port, "localhost", "/status").await.json()["in_flight"]
            .as_u64()
            .unwrap_or(99)
    };
    assert_eq!(
        in_flight().await,
        1,
        "an open WebSocket counts as in flight"
    );
    assert!(
        !gw.log().contains("\"GET /ws/logged HTTP/1.1\" 101"),
        "logged before it closed"
    );
    ws.close(None).await.unwrap();
    wait_closed(&mut ws).await;
    assert!(
        eventually(Duration::from_secs(3), || async { in_flight().await == 0 }).await,
        "in_flight stays above 0 after the WebSocket closed"
    );
    assert!(
        gw.wait_log_contains("\"GET /ws/logged HTTP/1.1\" 101", Duration::from_secs(3)),
        "{}",
        gw.log()
    );
    let line = gw
        .log()
        .lines()
        .find(|l| l.contains("/ws/logged"))
        .unwrap()
        .to_string();
    assert!(
        line.contains(" upgrade up=") && line.contains("end="),
        "{line}"
    );
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// Opens 3,000 WebSockets 100 at a time (so that their allocations interleave over the heap,
/// as in a real spike), echoes on the last, closes them all; returns the RSS while they were
/// open.
async fn websocket_spike(gw: &Gateway) -> u64 {
    let mut held = Vec::new();
    for _ in 0..30 {
        let batch = (0..100).map(|_| ws_connect(gw.port, "x", "/ws"));
        held.extend(futures_util::future::join_all(batch).await);
    }
    assert_eq!(echo(&mut held[2999], "last").await, "last");
    let peak = rss_kib(gw.pid());
    drop(held);
    peak
}

/// RSS after one WebSocket has come and gone (the relay's first allocations are made).
async fn warmed_rss(gw: &Gateway) -> u64 {
    let mut warm = ws_connect(gw.port, "x", "/ws").await;
    assert_eq!(echo(&mut warm, "warm").await, "warm");
    drop(warm);
    tokio::time::sleep(Duration::from_millis(500)).await;
    rss_kib(gw.pid())
}

/// RSS once it is at most `limit` KiB, or after 20 s.
async fn rss_settled(gw: &Gateway, limit: u64) -> u64 {
    let mut rss = rss_kib(gw.pid());
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(500)).await;
        rss = rss_kib(gw.pid());
        if rss <= limit {
            break;
        }
    }
    rss
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_of_a_websocket_spike_is_given_back() {
    // On the worker threads' relay tasks (`relay_threads: 0`), 3,000 WebSockets hold about
    // 20 MiB: once they have closed, the gateway must give back at least half of it. glibc
    // alone keeps all of it: freed memory below live allocations is not trimmed.
    let b = Backend::start("node-1").await;
    let gw = Gateway::start(&format!(
        "server: {{ relay_threads: 0 }}\n{}",
        ws_config(&b, "")
    ));
    let before = warmed_rss(&gw).await;
    let peak = websocket_spike(&gw).await;
    let after = rss_settled(&gw, before + (peak - before) / 2).await;
    assert!(
        peak > before + 8192,
        "the spike did not show: {before} -> {peak} KiB"
    );
    assert!(
        after <= before + (peak - before) / 2,
        "RSS {before} KiB before, {peak} KiB with 3,000 WebSockets, still {after} KiB 20 s after they closed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websockets_on_relay_threads_hold_little_and_leak_nothing() {
    // On the relay threads (the default) an idle WebSocket holds little user memory (the
    // sockets' buffers are the kernel's), and what a spike leaves behind is reused by the
    // next one: a second spike of 3,000 WebSockets adds at most half of its own size to what
    // the first left (a tunnel that leaked its state would add all of it).
    let b = Backend::start("node-1").await;
    let gw = Gateway::start(&ws_config(&b, ""));
    let before = warmed_rss(&gw).await;
    let peak1 = websocket_spike(&gw).await;
    let spike = peak1.saturating_sub(before);
    let after1 = rss_settled(&gw, before + spike / 2).await;
    let peak2 = websocket_spike(&gw).await;
    let after2 = rss_settled(&gw, after1 + spike / 4).await;
    assert!(
        spike > 1024 && spike < 3000 * 4,
        "3,000 idle WebSockets: {before} -> {peak1} KiB (expected 1 to 4 KiB each)"
    );
    assert!(
        after2 <= after1 + spike / 2,
        "RSS {before} KiB before, {peak1} -> {after1} KiB after a first spike, {peak2} -> {after2} KiB after a second"
    );
}

/// Byte `i` of a bulk stream: a hash of its position, so that a lost, repeated or reordered
/// chunk shows at the first byte that moved.
fn bulk_byte(i: usize, salt: u64) -> u8 {
    ((i as u64 ^ salt).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 56) as u8
}

fn bulk_chunk(from: usize, len: usize, salt: u64) -> Vec<u8> {
    (from..from + len).map(|i| bulk_byte(i, salt)).collect()
}

/// Offset of the first byte of `got` (starting at stream offset `from`) that is not the
/// stream's.
fn bulk_mismatch(got: &[u8], from: usize, salt: u64) -> Option<usize> {
    got.iter()
        .enumerate()
        .find(|(k, b)| **b != bulk_byte(from + k, salt))
        .map(|(k, _)| from + k)
}

const BULK: usize = 8 << 20;
const UP_SALT: u64 = 1;
const DOWN_SALT: u64 = 2;

/// After a 101: sends `BULK` bytes of the down stream, and reads the up stream slowly (a
/// pause first, so that the relay must hold bytes back); then reports what it read.
async fn bulk_upgrade_backend() -> std::net::SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.into_split();
                let Some(early) = read_request_head(&mut r).await else {
                    return;
                };
                if w.write_all(SWITCHING).await.is_err() {
                    return;
                }
                let sender = tokio::spawn(async move {
                    let mut sent = 0;
                    while sent < BULK {
                        let n = (BULK - sent).min(100_003);
                        if w.write_all(&bulk_chunk(sent, n, DOWN_SALT)).await.is_err() {
                            return None;
                        }
                        sent += n;
                    }
                    Some(w)
                });
                tokio::time::sleep(Duration::from_millis(300)).await;
                let (mut got, mut bad) = (early.len(), bulk_mismatch(&early, 0, UP_SALT));
                let mut buf = vec![0u8; 65536];
                while got < BULK {
                    let n = match r.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    bad = bad.or(bulk_mismatch(&buf[..n], got, UP_SALT));
                    got += n;
                }
                if let Ok(Some(mut w)) = sender.await {
                    let report = format!("|read {got} bad {bad:?}|");
                    let _ = w.write_all(report.as_bytes()).await;
                }
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_readers_get_every_byte_in_order_both_ways() {
    // 8 MiB each way at once, each reader pausing first: the relay holds back what a side
    // cannot take yet and stops reading the other until it can (both on the relay threads,
    // the default, and on the worker threads' tasks).
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = bulk_upgrade_backend().await;
    for server in ["", "server: { relay_threads: 0 }"] {
        let gw = Gateway::start(&raw_config(addr, server));
        let s = tokio::net::TcpStream::connect(("127.0.0.1", gw.port))
            .await
            .unwrap();
        let (mut r, mut w) = s.into_split();
        w.write_all(
            b"GET /bulk HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
        )
        .await
        .unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            r.read_exact(&mut byte).await.unwrap();
            head.push(byte[0]);
        }
        assert!(head.starts_with(b"HTTP/1.1 101"), "{server}: {head:?}");
        let uploader = tokio::spawn(async move {
            let mut sent = 0;
            while sent < BULK {
                let n = (BULK - sent).min(77_777);
                w.write_all(&bulk_chunk(sent, n, UP_SALT)).await.unwrap();
                sent += n;
            }
            w
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        let mut body = vec![0u8; BULK];
        tokio::time::timeout(Duration::from_secs(30), r.read_exact(&mut body))
            .await
            .expect("8 MiB within 30 s")
            .unwrap();
        assert_eq!(
            bulk_mismatch(&body, 0, DOWN_SALT),
            None,
            "{server}: down stream"
        );
        let report = read_until_seen(&mut r, b"|", 2).await;
        let text = String::from_utf8_lossy(&report);
        assert!(
            text.contains(&format!("read {BULK} bad None")),
            "{server}: up stream: {text}"
        );
        drop(uploader.await.unwrap());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_fin_right_behind_its_last_bytes_reaches_the_backend() {
    // The last bytes and the FIN arrive together: the relay must not take the short read for
    // an empty socket and miss the end (no new readiness edge follows). The backend gets the
    // bytes and then EOF, the tunnel ends and the client sees its connection close.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Vec<u8>>();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let Some(mut all) = read_request_head(&mut s).await else {
                    return;
                };
                if s.write_all(&[SWITCHING, b"ready"].concat()).await.is_err() {
                    return;
                }
                let _ = s.read_to_end(&mut all).await;
                let _ = tx.send(all);
            });
        }
    });
    let gw = Gateway::start(&raw_config(addr, ""));
    for round in 0..20 {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", gw.port))
            .await
            .unwrap();
        s.write_all(
            b"GET /fin HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
        )
        .await
        .unwrap();
        let got = read_until(&mut s, b"ready").await;
        assert!(got.ends_with(b"ready"), "round {round}: {got:?}");
        // Let the tunnel settle on its relay, then bytes and FIN in one go.
        tokio::time::sleep(Duration::from_millis(20)).await;
        let words = format!("last-words-{round}");
        s.write_all(words.as_bytes()).await.unwrap();
        s.shutdown().await.unwrap();
        let heard = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .unwrap_or_else(|_| panic!("round {round}: the backend saw no EOF within 5 s"))
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&heard), words, "round {round}");
        let mut rest = [0u8; 16];
        let end = tokio::time::timeout(Duration::from_secs(5), s.read(&mut rest)).await;
        assert!(
            matches!(end, Ok(Ok(0)) | Ok(Err(_))),
            "round {round}: the client's connection stayed open: {end:?}"
        );
    }
}
