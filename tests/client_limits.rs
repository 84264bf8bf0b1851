//! Slow and greedy clients through the real gateway binary: each slow client (trickled header,
//! idle connection, idle keep-alive, partial second request, trickled body, reader that stops
//! reading) is cut at its `listeners[].client` timeout while a normal client keeps being
//! served; oversized headers get 431 / 414; connections per IP and in total are capped.

mod common;
use common::*;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

fn config(backend: &Backend, client: &str, server: &str) -> String {
    format!(
        r#"
server: {{ threads: 1 {server} }}
listeners:
  - address: "127.0.0.1:{{PORT}}"
    client: {{ {client} }}
admin: {{ address: "127.0.0.1:{{ADMIN}}" }}
upstreams:
  app: {{ servers: [ {{ address: "{addr}" }} ] }}
routes:
  - upstream: app
"#,
        addr = backend.addr
    )
}

const FAST: &str = "header_timeout: 2s, keepalive_timeout: 2s, body_timeout: 2s, \
                    min_body_rate: 100, send_timeout: 2s";

/// Reads until EOF (or an error: a reset counts as closed); returns the bytes and when the
/// connection ended, or `None` if it is still open after `limit`.
async fn read_until_closed(s: &mut TcpStream, limit: Duration) -> Option<(Vec<u8>, Instant)> {
    let mut out = Vec::new();
    let mut buf = [0u8; 16384];
    let deadline = Instant::now() + limit;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, s.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some((out, Instant::now())),
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
    }
}

fn status_of(raw: &[u8]) -> Option<u16> {
    let text = std::str::from_utf8(raw.get(..12)?).ok()?;
    text.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()
}

/// A kept-alive connection just answered is closed at the 2 s `keepalive_timeout` of
/// [`FAST`] (between 2 and 5 s from now), without another byte sent.
async fn assert_closed_when_idle(c: H1Conn, what: &str) {
    let started = Instant::now();
    let mut s = c.stream;
    let (_, ended) = read_until_closed(&mut s, Duration::from_secs(8))
        .await
        .unwrap_or_else(|| panic!("{what}: the connection is still open after 8 s"));
    assert_cut(what, started, ended, 2, 5);
}

/// A normal client must still be served while slow ones hold connections.
async fn normal_client_is_served(port: u16) {
    let r = get(port, "localhost", "/ok").await;
    assert_eq!(r.status, 200, "a normal client is served meanwhile");
}

fn assert_cut(what: &str, started: Instant, ended: Instant, lo: u64, hi: u64) {
    let took = ended - started;
    assert!(
        took >= Duration::from_millis(lo * 1000 - 300) && took <= Duration::from_secs(hi),
        "{what}: cut after {took:?}, expected {lo}..{hi} s"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_are_cut_at_their_timeouts() {
    let b = Backend::start("app").await;
    let gw = Gateway::start(&config(&b, FAST, ""));

    // 1. A header trickled one byte every 300 ms: 408 at the 2 s header deadline, counted
    //    from the first byte, not per read.
    let trickle = async {
        let mut s = TcpStream::connect(("127.0.0.1", gw.port)).await.unwrap();
        let started = Instant::now();
        let head = b"GET /slow HTTP/1.1\r\nHost: localhost\r\nX-Pad: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
        for &byte in head.iter() {
            if s.write_all(&[byte]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
            if started.elapsed() > Duration::from_secs(6) {
                break;
            }
        }
        let (raw, ended) = read_until_closed(&mut s, Duration::from_secs(8))
            .await
            .expect("a trickled header is cut");
        assert_eq!(
            status_of(&raw),
            Some(408),
            "{}",
            String::from_utf8_lossy(&raw)
        );
        assert_cut("trickled header", started, ended, 2, 5);
    };

    // 2. A connection that never sends a byte: closed silently at the header timeout.
    let silent = async {
        let mut s = TcpStream::connect(("127.0.0.1", gw.port)).await.unwrap();
        let started = Instant::now();
        let (raw, ended) = read_until_closed(&mut s, Duration::from_secs(8))
            .await
            .expect("an idle new connection is closed");
        assert!(raw.is_empty(), "closed without a response");
        assert_cut("idle new connection", started, ended, 2, 5);
    };

    // 3. An idle keep-alive connection after one response: closed at keepalive_timeout.
    let keepalive = async {
        let mut c = H1Conn::connect(gw.port).await.unwrap();
        assert_eq!(c.get("localhost", "/first").await.status, 200);
        assert_closed_when_idle(c, "idle keep-alive").await;
    };

    // 4. A partial second request on a keep-alive connection: 408 at the header deadline.
    let partial = async {
        let mut c = H1Conn::connect(gw.port).await.unwrap();
        assert_eq!(c.get("localhost", "/first").await.status, 200);
        let mut s = c.stream;
        s.write_all(b"GET /second HTTP/1.1\r\nHo").await.unwrap();
        let started = Instant::now();
        let (raw, ended) = read_until_closed(&mut s, Duration::from_secs(8))
            .await
            .expect("a partial second request is cut");
        assert_eq!(
            status_of(&raw),
            Some(408),
            "{}",
            String::from_utf8_lossy(&raw)
        );
        assert_cut("partial second request", started, ended, 2, 5);
    };

    // 5. A request body trickled at 2 bytes/s (the floor is 100 bytes/s after a 2 s grace).
    let body = async {
        let mut s = TcpStream::connect(("127.0.0.1", gw.port)).await.unwrap();
        s.write_all(b"POST /upload HTTP/1.1\r\nHost: localhost\r\nContent-Length: 1000\r\n\r\n")
            .await
            .unwrap();
        let started = Instant::now();
        let (mut r, mut w) = s.into_split();
        let writer = tokio::spawn(async move {
            for _ in 0..40 {
                if w.write_all(b"x").await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        });
        let mut raw = Vec::new();
        let ended = tokio::time::timeout(Duration::from_secs(10), async {
            let mut buf = [0u8; 4096];
            loop {
                match r.read(&mut buf).await {
                    Ok(0) | Err(_) => return Instant::now(),
                    Ok(n) => raw.extend_from_slice(&buf[..n]),
                }
            }
        })
        .await
        .expect("a trickled body is cut");
        writer.abort();
        assert_eq!(
            status_of(&raw),
            Some(408),
            "{}",
            String::from_utf8_lossy(&raw)
        );
        assert_cut("trickled body", started, ended, 2, 6);
    };

    // Meanwhile, a normal client keeps being served.
    let normal = async {
        for _ in 0..6 {
            normal_client_is_served(gw.port).await;
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    };
    tokio::join!(trickle, silent, keepalive, partial, body, normal);
}

/// The keep-alive idle time counts from the last response, however long the connection has
/// been busy: a connection used every 400 ms for twice the 2 s timeout is never cut, and once
/// idle it is closed ~2 s after its last response. (Each connection keeps one timer that its
/// waits move forward and re-arm lazily: pingora-timeout patch 4.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keepalive_timeout_counts_from_the_last_response() {
    let b = Backend::start("app").await;
    let gw = Gateway::start(&config(&b, FAST, ""));
    let mut c = H1Conn::connect(gw.port).await.unwrap();
    let busy = Instant::now();
    let mut n = 0;
    while busy.elapsed() < Duration::from_secs(4) {
        let r = c.get("localhost", &format!("/busy/{n}")).await;
        assert_eq!(r.status, 200, "request {n} at {:?}", busy.elapsed());
        n += 1;
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    assert_eq!(c.get("localhost", "/last").await.status, 200);
    assert_closed_when_idle(c, "idle after a busy period").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_that_stops_reading_is_cut_at_send_timeout() {
    let b = Backend::start("app").await;
    let gw = Gateway::start(&config(&b, FAST, ""));
    // A small receive buffer so the gateway's writes block as soon as the client stops reading.
    let sock = TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    let mut s = sock
        .connect(format!("127.0.0.1:{}", gw.port).parse().unwrap())
        .await
        .unwrap();
    let size = 32 << 20;
    s.write_all(format!("GET /bytes/{size} HTTP/1.1\r\nHost: localhost\r\n\r\n").as_bytes())
        .await
        .unwrap();
    // Read nothing for 5 s: more than the 2 s send timeout.
    tokio::time::sleep(Duration::from_secs(5)).await;
    normal_client_is_served(gw.port).await;
    let (raw, _) = read_until_closed(&mut s, Duration::from_secs(20))
        .await
        .expect("the stalled response ends");
    assert!(
        raw.len() < size,
        "the gateway gave up on the stalled reader: {} of {size} bytes",
        raw.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_headers_get_431_and_long_uris_414() {
    let b = Backend::start("app").await;
    let gw = Gateway::start(&config(
        &b,
        "max_request_line: 1024, max_header_size: 4096",
        "",
    ));

    let long_uri = format!("/{}", "a".repeat(2000));
    let r = http(
        gw.port,
        &format!("GET {long_uri} HTTP/1.1\r\nHost: x\r\n\r\n"),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 414);

    let big = "b".repeat(5000);
    let r = http(
        gw.port,
        &format!("GET / HTTP/1.1\r\nHost: x\r\nX-Big: {big}\r\n\r\n"),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 431);

    // Sent in pieces (the header never completes): refused as soon as it is over the size,
    // without waiting for the rest.
    let mut s = TcpStream::connect(("127.0.0.1", gw.port)).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    for _ in 0..10 {
        if s.write_all(format!("X-{}: {}\r\n", rand_name(), "c".repeat(500)).as_bytes())
            .await
            .is_err()
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (raw, _) = read_until_closed(&mut s, Duration::from_secs(5))
        .await
        .expect("closed after the 431");
    assert_eq!(status_of(&raw), Some(431));

    // Within the limits: served.
    let fits = "d".repeat(3000);
    let r = http(
        gw.port,
        &format!("GET / HTTP/1.1\r\nHost: x\r\nX-Fits: {fits}\r\n\r\n"),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(
        r.json()["headers"]["x-fits"].as_str().map(str::len),
        Some(3000)
    );
}

fn rand_name() -> String {
    format!(
        "{:x}",
        Instant::now().elapsed().as_nanos() ^ std::process::id() as u128
    )
}

/// Waits until the harness's own port probes have been closed by the gateway (they count
/// against the connection caps like any client). A probe may still sit in the listen backlog
/// when the count first reads 0 (it was seen counted late under load, taking a test's slot):
/// a request answered on a newer connection means the gateway has accepted every earlier one,
/// since it accepts in order; then the count must fall to 0.
async fn no_connections_open(gw: &Gateway) {
    let mut s = connect_from("127.0.0.1", gw.port).await;
    assert!(served(&mut s).await, "a request before the test is served");
    drop(s);
    let idle = eventually(Duration::from_secs(10), || async {
        get(gw.admin_port, "localhost", "/status").await.json()["connections"]["open"] == 0
    })
    .await;
    assert!(idle, "the gateway still counts open connections");
}

/// Whether a connection made by `connect_from` is served (a request gets a response) or
/// refused (closed without one).
async fn served(s: &mut TcpStream) -> bool {
    if s.write_all(b"GET /x HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .is_err()
    {
        return false;
    }
    let mut buf = [0u8; 12];
    matches!(
        tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut buf)).await,
        Ok(Ok(_))
    ) && status_of(&buf) == Some(200)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_per_ip_are_capped_and_freed_on_close() {
    let b = Backend::start("app").await;
    let gw = Gateway::start(&config(&b, "max_connections_per_ip: 3", ""));
    no_connections_open(&gw).await;
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut s = connect_from("127.0.0.1", gw.port).await;
        assert!(served(&mut s).await);
        held.push(s);
    }
    let mut fourth = connect_from("127.0.0.1", gw.port).await;
    assert!(
        !served(&mut fourth).await,
        "the 4th connection from one IP is refused"
    );
    // Another address is not affected.
    let mut other = connect_from("127.0.0.2", gw.port).await;
    assert!(served(&mut other).await, "another IP connects");
    // The count falls when a connection closes.
    drop(held.pop());
    let freed = eventually(Duration::from_secs(5), || async {
        let mut s = connect_from("127.0.0.1", gw.port).await;
        served(&mut s).await
    })
    .await;
    assert!(freed, "a place is free again after a close");
    assert!(
        gw.log().contains("max_connections_per_ip (3)"),
        "refusal logged"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_max_connections_caps_every_client() {
    let b = Backend::start("app").await;
    let gw = Gateway::start(&config(&b, "", ", max_connections: 2"));
    no_connections_open(&gw).await;
    let mut a = connect_from("127.0.0.1", gw.port).await;
    let mut c = connect_from("127.0.0.2", gw.port).await;
    assert!(served(&mut a).await && served(&mut c).await);
    let mut third = connect_from("127.0.0.3", gw.port).await;
    assert!(!served(&mut third).await, "the 3rd connection is refused");
    drop(a);
    let freed = eventually(Duration::from_secs(5), || async {
        let mut s = connect_from("127.0.0.3", gw.port).await;
        served(&mut s).await
    })
    .await;
    assert!(freed);
    assert!(gw.log().contains("server.max_connections (2) reached"));
}

#[test]
fn client_limits_out_of_range_are_config_errors() {
    let (code, out) = check_config(
        r#"
listeners:
  - address: "127.0.0.1:8080"
    client: { header_timeout: 0s, max_header_size: 10, max_request_line: 100 }
server: { max_connections: 0 }
"#,
    );
    assert_ne!(code, 0, "{out}");
    for key in [
        "listeners[0].client.header_timeout",
        "listeners[0].client.max_header_size",
        "listeners[0].client.max_request_line",
        "server.max_connections",
    ] {
        assert!(out.contains(key), "{key} named in: {out}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_out_of_descriptors_never_ejects_a_healthy_backend() {
    let b = Backend::start("app").await;
    // The gateway under a small open-files limit, with a connection cap above what it can
    // hold, so its own connects fail with EMFILE.
    let dir = unique_temp_dir("gateway-nofile");
    let wrapper = dir.join("gateway-nofile.sh");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nulimit -n 96 || exit 1\nexec {} \"$@\"\n",
            gateway_bin()
        ),
    )
    .unwrap();
    std::fs::set_permissions(
        &wrapper,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let yaml = format!(
        r#"
server: {{ threads: 1, max_connections: 100000 }}
listeners: [ {{ address: "127.0.0.1:{{PORT}}" }} ]
admin: {{ address: "127.0.0.1:{{ADMIN}}" }}
upstreams:
  app:
    servers: [ {{ address: "{addr}" }} ]
    passive: {{ max_fails: 1, fail_timeout: 60s }}
    health_check: {{ interval: 200ms, fails: 1 }}
    retries: 0
routes:
  - upstream: app
"#,
        addr = b.addr
    );
    let gw = Gateway::start_bin(wrapper.to_str().unwrap(), &yaml);
    assert!(gw.log().contains("open-files limit 96"), "{}", gw.log());

    // One connection in first; then fill the descriptor table with idle ones.
    let mut first = connect_from("127.0.0.1", gw.port).await;
    let mut idle = Vec::new();
    let filling = Instant::now();
    for _ in 0..120 {
        idle.push(connect_from("127.0.0.1", gw.port).await);
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // The request on the first connection needs an upstream connection: the gateway cannot
    // open one (and must say so), but the backend is not to blame.
    first
        .write_all(b"GET /a HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let (raw, _) = read_until_closed(&mut first, Duration::from_secs(10))
        .await
        .expect("an answer");
    assert!(
        matches!(status_of(&raw), Some(502 | 503)),
        "{}",
        String::from_utf8_lossy(&raw)
    );
    tokio::time::sleep(Duration::from_millis(800)).await; // a few health-check rounds
    drop(idle);

    // Descriptors free again: served at once, the backend neither ejected nor marked down.
    let served_again = eventually(Duration::from_secs(3), || async {
        get(gw.port, "localhost", "/b").await.status == 200
    })
    .await;
    let seconds_full = filling.elapsed().as_secs_f64().ceil() as usize;
    let log = gw.log();
    assert!(served_again, "{log}");
    assert!(!log.contains("ejected"), "{log}");
    assert!(!log.contains("marked down"), "{log}");
    // Once a second per listener while the table was full (it filled after `filling`); two
    // listeners fail when the admin one has a connection waiting too (the start-up probe's, or
    // a dashboard's). A loop that retried at once would log thousands.
    let accept_lines = log.matches("Accept() failed").count();
    assert!(
        accept_lines <= 2 * (seconds_full + 1),
        "accept failures logged once a second: {accept_lines} in {seconds_full} s"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_bytes_read_with_the_header_do_not_count_as_header() {
    let b = Backend::start("app").await;
    let gw = Gateway::start(&config(
        &b,
        "max_request_line: 1024, max_header_size: 4608",
        "",
    ));
    // A 4.1 KB header arrives over two reads (the first fills the initial 4 KiB buffer);
    // the second also brings body bytes, which are not header bytes.
    let pad = "p".repeat(4000);
    let body = "b".repeat(8000);
    let raw = format!(
        "POST /upload HTTP/1.1\r\nHost: x\r\nX-Pad: {pad}\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let r = http(gw.port, &raw).await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["body_len"], 8000);
}
