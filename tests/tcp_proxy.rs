//! TCP (L4) listeners through the real gateway binary, with real TCP backends on 127.0.0.1:
//! bytes relayed intact both ways (8 MiB each way), round robin by connection, the in-flight
//! count of an open relay, a dead backend skipped by connect retry and marked down by a TCP
//! health check, the idle timeout (a silent relay closed, an active one kept), half-close,
//! TLS terminated in front of a plain backend, `max_connections_per_ip`, config errors by key
//! path, `gateway upgrade` while a relay is open (it keeps working, new connections go to the
//! new process, none refused), consistent hashing on the client address, and the PROXY
//! protocol header read on the listener and written first to the backend, and a connect still
//! in progress counted in its backend's in-flight number (least_conn balances on it).

mod common;
use common::*;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::rustls::{self, pki_types::ServerName, ClientConfig, RootCertStore};

/// Longest wait for any one read in these tests.
const STEP: Duration = Duration::from_secs(10);

/// A TCP backend: greets each connection with `<name>\n`, echoes what it reads, and when the
/// client has shut its write side answers `bye <n> bytes\n` and closes.
struct Identity {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Identity {
    async fn start(name: &str) -> Identity {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let (name, count) = (name.to_string(), accepted.clone());
        let task = tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                count.fetch_add(1, SeqCst);
                let name = name.clone();
                tokio::spawn(async move {
                    let _ = s.write_all(format!("{name}\n").as_bytes()).await;
                    let mut buf = vec![0u8; 64 * 1024];
                    let mut total = 0usize;
                    loop {
                        match s.read(&mut buf).await {
                            Ok(0) => break,
                            Ok(n) => {
                                total += n;
                                if s.write_all(&buf[..n]).await.is_err() {
                                    return;
                                }
                            }
                            Err(_) => return,
                        }
                    }
                    let _ = s.write_all(format!("bye {total} bytes\n").as_bytes()).await;
                    let _ = s.shutdown().await;
                });
            }
        });
        Identity {
            addr,
            accepted,
            task,
        }
    }
}

impl Drop for Identity {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Reads one `\n`-terminated line, byte by byte (nothing after it is consumed).
async fn read_line<S: AsyncRead + Unpin>(s: &mut S) -> String {
    let mut out = Vec::new();
    let mut b = [0u8; 1];
    loop {
        let n = tokio::time::timeout(STEP, s.read(&mut b))
            .await
            .expect("line within 10 s")
            .expect("read");
        if n == 0 || b[0] == b'\n' {
            return String::from_utf8_lossy(&out).into_owned();
        }
        out.push(b[0]);
    }
}

/// Reads until EOF (bounded by `STEP`).
async fn read_to_end<S: AsyncRead + Unpin>(s: &mut S) -> Vec<u8> {
    let mut out = Vec::new();
    tokio::time::timeout(STEP, s.read_to_end(&mut out))
        .await
        .expect("EOF within 10 s")
        .expect("read to EOF");
    out
}

/// Connects through the gateway and returns the stream with the backend's name.
async fn open(port: u16) -> (TcpStream, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let name = read_line(&mut s).await;
    (s, name)
}

/// Writes `msg` and reads its echo back.
async fn echo<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S, msg: &[u8]) -> Vec<u8> {
    s.write_all(msg).await.unwrap();
    let mut back = vec![0u8; msg.len()];
    tokio::time::timeout(STEP, s.read_exact(&mut back))
        .await
        .expect("echo within 10 s")
        .expect("echo");
    back
}

fn tcp_config(port: u16, admin: u16, pool: &str, listener_extra: &str) -> String {
    format!(
        r#"
listeners:
  - address: "127.0.0.1:{port}"
    tcp: {{ upstream: db }}
{listener_extra}
admin: {{ address: "127.0.0.1:{admin}" }}
upstreams:
  db:
{pool}
"#
    )
}

fn servers(addrs: &[SocketAddr]) -> String {
    let list: Vec<String> = addrs
        .iter()
        .map(|a| format!("{{ address: \"{a}\" }}"))
        .collect();
    format!("    servers: [ {} ]\n", list.join(", "))
}

async fn status(admin: u16) -> serde_json::Value {
    get(admin, "localhost", "/status").await.json()
}

/// `(state, in_flight)` of backend `addr` of pool `db` in `/status`.
async fn backend_state(admin: u16, addr: SocketAddr) -> (String, u64) {
    let s = status(admin).await;
    let b = s["pools"]["db"]["backends"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["address"] == addr.to_string())
        .cloned()
        .unwrap_or_else(|| panic!("{addr} not in /status: {s}"));
    (
        b["state"].as_str().unwrap().to_string(),
        b["in_flight"].as_u64().unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relays_8_mib_each_way_and_round_robins_by_connection() {
    let (a, b) = (Identity::start("a").await, Identity::start("b").await);
    let (port, admin) = (free_port(), free_port());
    let gw = Gateway::start_with(
        &tcp_config(port, admin, &servers(&[a.addr, b.addr]), ""),
        port,
        admin,
    );
    // Round robin by connection: each new connection goes to the next backend. (The harness's
    // readiness probe was relayed too: let it take its turn first.)
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut names = Vec::new();
    for _ in 0..4 {
        names.push(open(port).await.1);
    }
    // (Which backend comes first depends on the probe's turn.)
    let alternating = names.windows(2).all(|w| w[0] != w[1]);
    assert!(
        alternating && names.iter().filter(|n| *n == "a").count() == 2,
        "{names:?}"
    );

    // 8 MiB up, the same 8 MiB echoed down, concurrently, byte for byte.
    let (mut s, name) = open(port).await;
    let backend = if name == "a" { a.addr } else { b.addr };
    assert_eq!(
        backend_state(admin, backend).await,
        ("up".to_string(), 1),
        "an open relay is in its backend's in-flight count (least_conn balances on it)"
    );
    const SIZE: usize = 8 * 1024 * 1024;
    let data: Vec<u8> = (0..SIZE as u64)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let (mut r, mut w) = s.split();
    let t0 = Instant::now();
    let (_, back) = tokio::join!(
        async {
            w.write_all(&data).await.unwrap();
            w.shutdown().await.unwrap();
        },
        async {
            let mut back = Vec::with_capacity(SIZE + 64);
            tokio::time::timeout(Duration::from_secs(60), r.read_to_end(&mut back))
                .await
                .expect("8 MiB echoed within 60 s")
                .unwrap();
            back
        }
    );
    eprintln!("8 MiB each way in {:?}", t0.elapsed());
    assert_eq!(back.len(), SIZE + "bye 8388608 bytes\n".len());
    assert!(
        back[..SIZE] == data[..],
        "the echoed bytes are the bytes sent"
    );
    assert_eq!(&back[SIZE..], b"bye 8388608 bytes\n");
    drop(s);
    assert!(
        eventually(Duration::from_secs(5), || async {
            backend_state(admin, backend).await.1 == 0
        })
        .await,
        "the in-flight count is given back when the relay closes"
    );
    // One access line per closed connection, with the bytes each way and why it ended.
    let line = format!("backend={backend} up={SIZE} down={}", SIZE + 20);
    assert!(
        gw.wait_log_contains(&line, Duration::from_secs(5)),
        "no access line with {line:?}:\n{}",
        gw.log()
    );
    assert!(gw.log().contains("end=\"eof\""));
}

/// A listener whose accept queue is full (backlog 0, one connection queued and never
/// accepted): the kernel drops further SYNs, so a connect to it hangs until its timeout.
fn stuck_listener() -> (std::net::TcpListener, std::net::TcpStream) {
    use std::os::fd::AsRawFd;
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    // SAFETY: listen(2) again on the listener's own open descriptor, to shrink its backlog.
    assert_eq!(unsafe { libc::listen(l.as_raw_fd(), 0) }, 0);
    let filler = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
    (l, filler)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connect_in_progress_counts_in_its_backends_in_flight() {
    // least_conn balances on in-flight: a backend that is slow to accept must count the
    // connections still connecting to it, or a burst of new connections all pick it.
    let (stuck, _filler) = stuck_listener();
    let slow = stuck.local_addr().unwrap();
    let (port, admin) = (free_port(), free_port());
    let pool = format!(
        "{}    balance: least_conn\n    retries: 0\n    passive: {{ max_fails: 0 }}\n    timeouts: {{ connect: 4s }}\n",
        servers(&[slow])
    );
    let gw = Gateway::start_with(&tcp_config(port, admin, &pool, ""), port, admin);
    // The harness's readiness probe was relayed too: let its connect time out first (it may
    // not have started yet: wait out a whole connect timeout, then for the count to drop).
    tokio::time::sleep(Duration::from_millis(4500)).await;
    let deadline = Instant::now() + STEP;
    while backend_state(admin, slow).await.1 != 0 {
        assert!(Instant::now() < deadline, "the probe's connect never ended");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut client = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let mut counted = false;
    for _ in 0..30 {
        if backend_state(admin, slow).await.1 == 1 {
            counted = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        counted,
        "a connect in progress is in the backend's in-flight count"
    );
    // The connect times out: the client's connection is closed and the count released.
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(STEP, client.read(&mut buf)).await;
    assert!(
        matches!(n, Ok(Ok(0)) | Ok(Err(_))),
        "closed after the connect timeout: {n:?}"
    );
    assert_eq!(
        backend_state(admin, slow).await.1,
        0,
        "released after the failed connect"
    );
    assert!(gw.log().contains("connect timed out"), "{}", gw.log());
    drop(stuck);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consistent_hash_keeps_each_client_address_on_one_backend() {
    let bs = [
        Identity::start("a").await,
        Identity::start("b").await,
        Identity::start("c").await,
    ];
    let (port, admin) = (free_port(), free_port());
    let pool = format!(
        "{}    balance: consistent_hash\n",
        servers(&bs.iter().map(|b| b.addr).collect::<Vec<_>>())
    );
    let _gw = Gateway::start_with(&tcp_config(port, admin, &pool, ""), port, admin);
    let mut seen = std::collections::BTreeSet::new();
    for ip in 1..=8 {
        let from = format!("127.0.0.{ip}");
        let mut names = Vec::new();
        for _ in 0..3 {
            let mut s = connect_from(&from, port).await;
            names.push(read_line(&mut s).await);
        }
        assert!(names.iter().all(|n| *n == names[0]), "{from}: {names:?}");
        seen.insert(names[0].clone());
    }
    assert!(
        seen.len() >= 2,
        "clients spread over the backends: {seen:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_backend_is_skipped_by_connect_retry_and_marked_down_by_health_check() {
    let a = Identity::start("a").await;
    let held = DeadPort::new();
    let dead = held.addr();
    // Passive ejection off: every connection meets the dead backend on its turn.
    let (port, admin) = (free_port(), free_port());
    let pool = format!(
        "{}    passive: {{ max_fails: 0 }}\n",
        servers(&[dead, a.addr])
    );
    let gw = Gateway::start_with(&tcp_config(port, admin, &pool, ""), port, admin);
    for i in 0..4 {
        let (mut s, name) = open(port).await;
        assert_eq!(name, "a", "connection {i} retried onto the live backend");
        assert_eq!(echo(&mut s, b"ping").await, b"ping");
    }
    assert!(
        gw.log()
            .contains(&format!("backend {dead}: connect {dead}")),
        "the failed connects are logged:\n{}",
        gw.log()
    );
    assert_eq!(
        backend_state(admin, dead).await.0,
        "up",
        "no check: not down"
    );
    drop(gw);

    // The same pool with a TCP health check: the dead backend goes down and is left alone.
    let (port, admin) = (free_port(), free_port());
    let pool = format!(
        "{}    health_check: {{ interval: 1s, timeout: 500ms, fails: 1 }}\n",
        servers(&[dead, a.addr])
    );
    let gw = Gateway::start_with(&tcp_config(port, admin, &pool, ""), port, admin);
    assert!(
        eventually(Duration::from_secs(10), || async {
            backend_state(admin, dead).await.0 == "down"
        })
        .await,
        "the TCP check marks the dead backend down"
    );
    assert_eq!(backend_state(admin, a.addr).await.0, "up");
    let tried = format!("backend {dead}: connect {dead}");
    let before = gw.log().matches(&tried).count();
    for _ in 0..4 {
        assert_eq!(open(port).await.1, "a");
    }
    assert_eq!(
        gw.log().matches(&tried).count(),
        before,
        "a backend marked down is not even tried"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_timeout_closes_a_silent_relay_and_spares_an_active_one() {
    let a = Identity::start("a").await;
    let (port, admin) = (free_port(), free_port());
    let pool = format!("{}    timeouts: {{ idle: 1s }}\n", servers(&[a.addr]));
    let gw = Gateway::start_with(&tcp_config(port, admin, &pool, ""), port, admin);
    let (mut silent, _) = open(port).await;
    let (mut active, _) = open(port).await;
    let t0 = Instant::now();
    let silent_end = tokio::spawn(async move {
        let mut buf = [0u8; 16];
        let r = tokio::time::timeout(STEP, silent.read(&mut buf)).await;
        (r.map(|r| r.map_err(|e| e.kind())), t0.elapsed())
    });
    // Traffic every 300 ms for 3 s: three idle timeouts' worth, never idle for one.
    for i in 0..10 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let msg = format!("tick {i}");
        assert_eq!(
            echo(&mut active, msg.as_bytes()).await,
            msg.as_bytes(),
            "the active relay lives"
        );
    }
    let (read, after) = silent_end.await.unwrap();
    assert!(
        matches!(read, Ok(Ok(0))),
        "the silent relay is closed: {read:?}"
    );
    assert!(
        after >= Duration::from_millis(900) && after < Duration::from_millis(2500),
        "closed {after:?} after its last traffic (idle: 1s)"
    );
    assert!(gw.wait_log_contains("end=\"idle 1s\"", Duration::from_secs(5)));
    // And the active one goes idle too once it stops.
    let t1 = Instant::now();
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(STEP, active.read(&mut buf)).await;
    assert!(matches!(n, Ok(Ok(0))), "{n:?}");
    assert!(t1.elapsed() < Duration::from_millis(2500));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_close_passes_the_eof_and_the_reply_still_arrives() {
    let a = Identity::start("a").await;
    let (port, admin) = (free_port(), free_port());
    let gw = Gateway::start_with(
        &tcp_config(port, admin, &servers(&[a.addr]), ""),
        port,
        admin,
    );
    let (mut s, _) = open(port).await;
    s.write_all(b"question").await.unwrap();
    // The client is done sending; it still reads the reply, which the backend writes only
    // after it has seen that EOF.
    s.shutdown().await.unwrap();
    let rest = read_to_end(&mut s).await;
    assert_eq!(String::from_utf8_lossy(&rest), "questionbye 8 bytes\n");
    assert!(gw.wait_log_contains("up=8 down=", Duration::from_secs(5)));
}

/// A test CA and a certificate for `tcp.test` signed by it.
struct Pki {
    dir: std::path::PathBuf,
    ca: rcgen::Certificate,
    cert: std::path::PathBuf,
    key: std::path::PathBuf,
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Pki {
    fn new() -> Pki {
        let dir = unique_temp_dir("gw-tcp-tls");
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name
            .push(DnType::CommonName, "gateway test CA");
        let ca_key = KeyPair::generate().unwrap();
        let ca = p.self_signed(&ca_key).unwrap();
        let mut p = CertificateParams::new(vec!["tcp.test".to_string()]).unwrap();
        p.distinguished_name.push(DnType::CommonName, "tcp.test");
        let key = KeyPair::generate().unwrap();
        let leaf = p.signed_by(&key, &ca, &ca_key).unwrap();
        let (c, k) = (dir.join("tcp.pem"), dir.join("tcp.key"));
        std::fs::write(&c, leaf.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        Pki {
            dir,
            ca,
            cert: c,
            key: k,
        }
    }

    fn connector(&self, alpn: &[&[u8]]) -> tokio_rustls::TlsConnector {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut roots = RootCertStore::empty();
        roots.add(self.ca.der().clone()).unwrap();
        let mut cfg = ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth();
        cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        tokio_rustls::TlsConnector::from(Arc::new(cfg))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_is_terminated_in_front_of_a_plain_tcp_backend() {
    let a = Identity::start("a").await;
    let pki = Pki::new();
    let (port, admin) = (free_port(), free_port());
    let tls = format!(
        "    tls: {{ certificates: [ {{ cert: \"{}\", key: \"{}\" }} ] }}",
        pki.cert.display(),
        pki.key.display()
    );
    let gw = Gateway::start_with(
        &tcp_config(port, admin, &servers(&[a.addr]), &tls),
        port,
        admin,
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    let base = a.accepted.load(SeqCst);
    // A client offering no ALPN and one offering a non-HTTP protocol are both served.
    for alpn in [&[][..], &[&b"imap"[..]][..]] {
        let tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let mut s = tokio::time::timeout(
            STEP,
            pki.connector(alpn)
                .connect(ServerName::try_from("tcp.test").unwrap(), tcp),
        )
        .await
        .expect("handshake within 10 s")
        .unwrap_or_else(|e| panic!("TLS handshake (alpn {alpn:?}): {e}"));
        assert_eq!(read_line(&mut s).await, "a", "the plain backend greets");
        assert_eq!(echo(&mut s, b"over tls").await, b"over tls");
        let big = vec![7u8; 200_000];
        assert_eq!(echo(&mut s, &big).await, big);
    }
    assert_eq!(
        a.accepted.load(SeqCst),
        base + 2,
        "one backend connection each"
    );
    assert!(gw.wait_log_contains("up=200008", Duration::from_secs(5)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_connections_per_ip_refuses_the_extra_connection() {
    let a = Identity::start("a").await;
    let (port, admin) = (free_port(), free_port());
    let gw = Gateway::start_with(
        &tcp_config(
            port,
            admin,
            &servers(&[a.addr]),
            "    client: { max_connections_per_ip: 2 }",
        ),
        port,
        admin,
    );
    // (The harness's readiness probe made a relay too: count from here.)
    tokio::time::sleep(Duration::from_millis(200)).await;
    let base = a.accepted.load(SeqCst);
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut s = connect_from("127.0.0.1", port).await;
        assert_eq!(read_line(&mut s).await, "a");
        held.push(s);
    }
    // The third from the same address is closed unserved; the backend never sees it.
    let mut third = connect_from("127.0.0.1", port).await;
    let mut buf = [0u8; 8];
    let r = tokio::time::timeout(STEP, third.read(&mut buf)).await;
    assert!(
        matches!(r, Ok(Ok(0)) | Ok(Err(_))),
        "the third connection is closed: {r:?}"
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(a.accepted.load(SeqCst), base + 2);
    // Another client address is not affected, and the held relays still work.
    let mut other = connect_from("127.0.0.2", port).await;
    assert_eq!(read_line(&mut other).await, "a");
    assert_eq!(echo(&mut held[0], b"still").await, b"still");
    // A place frees up when a relay closes.
    drop(held.pop());
    let freed = eventually(Duration::from_secs(5), || async {
        let mut s = connect_from("127.0.0.1", port).await;
        let mut b = [0u8; 2];
        matches!(
            tokio::time::timeout(Duration::from_secs(2), s.read_exact(&mut b)).await,
            Ok(Ok(_))
        ) && &b == b"a\n"
    })
    .await;
    assert!(freed, "a place is free again after a close");
    assert!(gw.log().contains("max_connections_per_ip (2)"));
}

#[test]
fn config_errors_name_the_key() {
    let base = |listeners: &str, upstreams: &str| {
        format!(
            "listeners:\n  - {{ address: \"127.0.0.1:8080\" }}\n{listeners}\nupstreams:\n  db: {{ servers: [ {{ address: \"127.0.0.1:5432\" }} ]{upstreams} }}\nroutes: [ {{ respond: {{ status: 200 }} }} ]\n"
        )
    };
    for (listeners, upstreams, expect) in [
        (
            "  - { address: \"127.0.0.1:9000\", tcp: { upstream: x } }",
            "",
            "listeners[1].tcp.upstream: unknown pool \"x\"",
        ),
        (
            "  - { address: \"127.0.0.1:9000\", http2: true, tcp: { upstream: db } }",
            "",
            "listeners[1].http2: HTTP only",
        ),
        (
            "  - { address: \"127.0.0.1:9000\", redirect_https: true, tcp: { upstream: db } }",
            "",
            "listeners[1].redirect_https: HTTP only",
        ),
        (
            "  - { address: \"127.0.0.1:9000\", client: { header_timeout: 5s }, tcp: { upstream: db } }",
            "",
            "listeners[1].client.header_timeout: HTTP only",
        ),
        (
            "  - { address: \"127.0.0.1:9000\", tcp: { upstream: db } }",
            ", tls: { verify: false }",
            "upstreams.db.tls: TLS to backends is not supported for TCP relays (listeners[1]",
        ),
        (
            "  - { address: \"127.0.0.1:9000\", tcp: { upstream: db } }",
            ", balance: consistent_hash, hash_key: \"header:x-user\"",
            "upstreams.db.hash_key: a TCP relay can only hash client_ip",
        ),
        (
            "  - { address: \"127.0.0.1:9000\", tcp: { upstream: db, port: 1 } }",
            "",
            "unknown field `port`",
        ),
        (
            "  - { address: \"127.0.0.1:8080\", tcp: { upstream: db } }",
            "",
            "listeners[1].address: 127.0.0.1:8080 is listed twice",
        ),
    ] {
        let (code, out) = check_config(&base(listeners, upstreams));
        assert_eq!(code, 1, "{listeners} {upstreams}: {out}");
        assert!(out.contains(expect), "expected {expect:?} in:\n{out}");
    }
    // A TCP-only config: no routes needed, no warning about them or an unused pool.
    let (code, out) = check_config(
        "listeners: [ { address: \"127.0.0.1:9000\", tcp: { upstream: db } } ]\nupstreams:\n  db: { servers: [ { address: \"127.0.0.1:5432\" } ], balance: least_conn }\n",
    );
    assert_eq!(code, 0, "{out}");
    assert!(!out.contains("warning"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrade_keeps_the_open_relay_and_hands_the_listener_over() {
    let a = Identity::start("a").await;
    let (port, admin) = (free_port(), free_port());
    let dir = unique_temp_dir("gw-tcp-upgrade");
    let yaml = format!(
        r#"
server:
  pid_file: {dir}/gw.pid
  upgrade_sock: {dir}/gw.sock
  grace_period_seconds: 4
  graceful_shutdown_timeout_seconds: 1
{}"#,
        tcp_config(port, admin, &servers(&[a.addr]), ""),
        dir = dir.display()
    );
    let cfg = dir.join("live.yaml");
    std::fs::write(&cfg, &yaml).unwrap();
    let mut first = Gateway::start_with(&yaml, port, admin);
    let first_pid = first.pid() as i32;

    // The relay opened on the first process.
    let (mut relay, _) = open(port).await;
    assert_eq!(echo(&mut relay, b"before").await, b"before");
    let relay_up = Arc::new(AtomicBool::new(true));
    // New connections all through the upgrade: each must be served, none refused.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let load = {
        let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
        tokio::spawn(async move {
            while !stop.load(SeqCst) {
                let served = tokio::time::timeout(Duration::from_secs(5), async {
                    let mut s = TcpStream::connect(("127.0.0.1", port)).await?;
                    let mut b = [0u8; 6];
                    s.read_exact(&mut b[..2]).await?;
                    s.write_all(b"ping\n").await?;
                    s.read_exact(&mut b[..5]).await?;
                    std::io::Result::Ok(&b[..5] == b"ping\n")
                })
                .await;
                match served {
                    Ok(Ok(true)) => ok.fetch_add(1, SeqCst),
                    other => {
                        eprintln!("new connection during upgrade: {other:?}");
                        failed.fetch_add(1, SeqCst)
                    }
                };
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    // The open relay is used all along too.
    let pinger = {
        let relay_up = relay_up.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(SeqCst) {
                let msg = format!("m{n}\n");
                let r = tokio::time::timeout(STEP, async {
                    relay.write_all(msg.as_bytes()).await?;
                    let mut back = vec![0u8; msg.len()];
                    relay.read_exact(&mut back).await?;
                    std::io::Result::Ok(back == msg.as_bytes())
                })
                .await;
                if !matches!(r, Ok(Ok(true))) {
                    eprintln!("relay echo {n}: {r:?}");
                    relay_up.store(false, SeqCst);
                    return relay;
                }
                n += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            relay
        })
    };

    let c = cfg.clone();
    let (upgraded, out) = tokio::task::spawn_blocking(move || run_upgrade(&c))
        .await
        .unwrap();
    let new_pid: i32 = std::fs::read_to_string(dir.join("gw.pid"))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0);
    let kill_new = || {
        if new_pid > 0 && new_pid != first_pid {
            let _ = std::process::Command::new("kill")
                .args(["-9", &new_pid.to_string()])
                .status();
        }
    };
    if !upgraded {
        kill_new();
        panic!(
            "upgrade failed:\n{out}\n--- first gateway log ---\n{}",
            first.log()
        );
    }
    assert_ne!(new_pid, first_pid, "a new process serves");
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, SeqCst);
    let _ = load.await;
    let mut relay = pinger.await.unwrap();
    let old_still_running = first.is_running();

    // The relay outlived the hand-over and still works; then it ends normally.
    let relay_ok = relay_up.load(SeqCst) && echo(&mut relay, b"after").await == b"after";
    relay.shutdown().await.unwrap();
    let rest = read_to_end(&mut relay).await;
    // The first process goes once its grace period is over; then only the new one serves.
    let old_exited = first.wait_exit(Duration::from_secs(20)).is_some();
    let (mut s, name) = open(port).await;
    let after_exit = echo(&mut s, b"new").await;
    kill_new();

    assert!(relay_ok, "the open relay kept working through the upgrade");
    assert!(
        old_still_running,
        "the relay was served by the first process"
    );
    assert!(
        String::from_utf8_lossy(&rest).starts_with("bye "),
        "the relay ended with the backend's reply: {rest:?}"
    );
    assert_eq!(
        failed.load(SeqCst),
        0,
        "every new connection during the upgrade was served (none refused)"
    );
    assert!(ok.load(SeqCst) > 50, "too little load: {}", ok.load(SeqCst));
    assert!(old_exited, "the first process exits after its grace period");
    assert_eq!((name.as_str(), &after_exit[..]), ("a", &b"new"[..]));
    assert!(
        first.log().contains("end=\"eof\""),
        "the first process logged the relay's normal end:\n{}",
        first.log()
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_protocol_header_goes_first_to_the_backend_and_names_the_client() {
    let a = Identity::start("a").await;
    let (port, port2, admin) = (free_port(), free_port(), free_port());
    // Listener 1 reads a PROXY header from its (trusted) peer and passes the client it names
    // on in v1; listener 2 takes plain clients and announces them in v2.
    let yaml = format!(
        r#"
listeners:
  - {{ address: "127.0.0.1:{port}", proxy_protocol: true, tcp: {{ upstream: v1 }} }}
  - {{ address: "127.0.0.1:{port2}", tcp: {{ upstream: v2 }} }}
forwarded: {{ trusted_proxies: [ 127.0.0.1/32 ] }}
admin: {{ address: "127.0.0.1:{admin}" }}
upstreams:
  v1: {{ servers: [ {{ address: "{a}" }} ], send_proxy_protocol: v1 }}
  v2: {{ servers: [ {{ address: "{a}" }} ], send_proxy_protocol: v2 }}
"#,
        a = a.addr
    );
    let gw = Gateway::start_with(&yaml, port, admin);
    assert!(eventually(Duration::from_secs(10), || async { port_open(port2) }).await);

    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    s.write_all(format!("PROXY TCP4 203.0.113.7 127.0.0.1 4444 {port}\r\n").as_bytes())
        .await
        .unwrap();
    assert_eq!(read_line(&mut s).await, "a");
    // The backend echoes what it received first: the gateway's header, before any client byte.
    assert_eq!(
        read_line(&mut s).await,
        format!("PROXY TCP4 203.0.113.7 127.0.0.1 4444 {port}\r")
    );
    assert_eq!(echo(&mut s, b"data").await, b"data");
    drop(s);
    assert!(gw.wait_log_contains("203.0.113.7:4444 tcp", Duration::from_secs(5)));

    let mut s = TcpStream::connect(("127.0.0.1", port2)).await.unwrap();
    let me = s.local_addr().unwrap();
    assert_eq!(read_line(&mut s).await, "a");
    let mut h = [0u8; 28];
    tokio::time::timeout(STEP, s.read_exact(&mut h))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&h[..12], b"\r\n\r\n\0\r\nQUIT\n", "v2 signature");
    assert_eq!(&h[12..16], &[0x21, 0x11, 0, 12], "v2 PROXY, TCP over IPv4");
    assert_eq!(&h[16..20], &[127, 0, 0, 1], "source address");
    assert_eq!(u16::from_be_bytes([h[24], h[25]]), me.port(), "source port");
    assert_eq!(
        u16::from_be_bytes([h[26], h[27]]),
        port2,
        "destination port"
    );
    assert_eq!(echo(&mut s, b"data").await, b"data");
}
