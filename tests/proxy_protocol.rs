//! `listeners[].proxy_protocol` through the real gateway: the client address of a v1 or v2
//! header (IPv4, IPv6) is the one the backend sees in X-Forwarded-For / X-Real-IP and the
//! access log shows; v2 LOCAL and v1 UNKNOWN keep the peer; on a TLS listener the header
//! precedes the handshake; connections without a valid header, from a peer outside
//! `trusted_proxies`, or trickling the header past the timeout are closed without a response;
//! `max_connections_per_ip` counts the header's address; config errors are named by key.

mod common;
use common::*;
use gateway::proxy_protocol::{encode, Version};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// A gateway whose one listener expects PROXY headers from 127.0.0.1 (127.0.0.2 is not
/// trusted); `client` is the listener's `client:` section.
fn start(b: &Backend, client: &str) -> Gateway {
    Gateway::start(&format!(
        r#"
listeners:
  - address: "127.0.0.1:{{PORT}}"
    proxy_protocol: true
    client: {{ {client} }}
admin: {{ address: "127.0.0.1:{{ADMIN}}" }}
forwarded: {{ trusted_proxies: [ 127.0.0.1/32 ] }}
upstreams:
  app: {{ servers: [ {{ address: "{}" }} ] }}
routes:
  - upstream: app
"#,
        b.addr
    ))
}

fn get(path: &str) -> String {
    // A client-supplied X-Forwarded-For, which the untrusted client address may not pass on.
    format!("GET {path} HTTP/1.1\r\nHost: app.test\r\nX-Forwarded-For: 6.6.6.6\r\n\r\n")
}

/// Sends `header` then a request on a keep-alive connection from 127.0.0.1.
async fn request_after(port: u16, header: &[u8], path: &str) -> (H1Conn, Resp) {
    let mut c = H1Conn::connect(port).await.unwrap();
    c.write(header).await.unwrap();
    let r = c.request(&get(path)).await.unwrap();
    (c, r)
}

/// The header the backend received.
fn seen(r: &Resp, name: &str) -> String {
    r.json()["headers"][name].as_str().unwrap_or("").to_string()
}

/// Whether the gateway closes `s` without a single response byte within `wait`.
async fn closed_silently(s: &mut TcpStream, wait: Duration) -> bool {
    let mut out = Vec::new();
    match tokio::time::timeout(wait, s.read_to_end(&mut out)).await {
        Ok(Ok(_)) => out.is_empty(),
        Ok(Err(_)) => out.is_empty(), // reset
        Err(_) => false,              // still open
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v1_and_v2_headers_name_the_client() {
    let b = Backend::start("app").await;
    let gw = start(&b, "");
    let dst = sa(&format!("127.0.0.1:{}", gw.port));

    let v1 = b"PROXY TCP4 203.0.113.7 10.0.0.1 4444 80\r\n";
    let (mut c, r) = request_after(gw.port, v1, "/pp-v1").await;
    assert_eq!(r.status, 200);
    assert_eq!(seen(&r, "x-forwarded-for"), "203.0.113.7");
    assert_eq!(seen(&r, "x-real-ip"), "203.0.113.7");
    // The next request on the connection keeps the address (no second header).
    let r = c.get("app.test", "/pp-v1-again").await;
    assert_eq!(seen(&r, "x-forwarded-for"), "203.0.113.7");
    assert!(
        gw.wait_log_contains(
            "203.0.113.7:4444 \"GET /pp-v1 HTTP/1.1\" 200",
            Duration::from_secs(3)
        ),
        "access log shows the header's client:\n{}",
        gw.log()
    );

    let v2 = encode(Version::V2, sa("198.51.100.9:5555"), dst);
    let (_, r) = request_after(gw.port, &v2, "/pp-v2").await;
    assert_eq!(seen(&r, "x-forwarded-for"), "198.51.100.9");

    // v2, IPv6, with a TLV after the addresses (PP2_TYPE_AUTHORITY), skipped.
    let mut v2_6 = encode(
        Version::V2,
        sa("[2001:db8::7]:6666"),
        sa("[2001:db8::1]:443"),
    );
    v2_6[15] += 8;
    v2_6.extend_from_slice(&[0x02, 0, 5]);
    v2_6.extend_from_slice(b"a.com");
    let (_, r) = request_after(gw.port, &v2_6, "/pp-v2-6").await;
    assert_eq!(seen(&r, "x-forwarded-for"), "2001:db8::7");
    assert!(gw.wait_log_contains("[2001:db8::7]:6666 \"GET /pp-v2-6", Duration::from_secs(3)));

    // v2 LOCAL (a health check of the proxy itself) and v1 UNKNOWN keep the peer.
    let mut local = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    local.extend_from_slice(&[0x20, 0x00, 0, 0]);
    // An L4 balancer writes no HTTP header: the X-Forwarded-For the client sent (6.6.6.6) is
    // never walked behind PROXY protocol, though 127.0.0.1 is in trusted_proxies (there it
    // names the balancers allowed to send the header).
    let (_, r) = request_after(gw.port, &local, "/pp-local").await;
    assert_eq!(seen(&r, "x-forwarded-for"), "127.0.0.1");
    assert_eq!(seen(&r, "x-real-ip"), "127.0.0.1");
    let (_, r) = request_after(gw.port, b"PROXY UNKNOWN\r\n", "/pp-unknown").await;
    assert_eq!(seen(&r, "x-forwarded-for"), "127.0.0.1");
    // Nor when the header names an address inside trusted_proxies.
    let (_, r) = request_after(
        gw.port,
        b"PROXY TCP4 127.0.0.1 127.0.0.1 4444 80\r\n",
        "/pp-t",
    )
    .await;
    assert_eq!(seen(&r, "x-forwarded-for"), "127.0.0.1");
    assert_eq!(seen(&r, "x-real-ip"), "127.0.0.1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_without_a_valid_header_or_from_untrusted_peers_are_closed() {
    let b = Backend::start("app").await;
    let gw = start(&b, "");
    let port = gw.port;
    let mut overlong = encode(Version::V2, sa("1.2.3.4:5"), sa("6.7.8.9:10"));
    overlong[14..16].copy_from_slice(&5000u16.to_be_bytes());
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("a plain request", get("/no-header").into_bytes()),
        (
            "a garbage v1 header",
            b"PROXY TCP4 999.1.1.1 10.0.0.1 1 2\r\nGET / HTTP/1.1\r\n\r\n".to_vec(),
        ),
        ("a v1 header over 107 bytes", {
            let mut v = b"PROXY TCP4 ".to_vec();
            v.extend(std::iter::repeat_n(b'1', 200));
            v
        }),
        ("a v2 header over 4 KiB", overlong),
    ];
    for (what, bytes) in cases {
        let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let _ = s.write_all(&bytes).await;
        assert!(
            closed_silently(&mut s, Duration::from_secs(3)).await,
            "{what}: closed without a response"
        );
    }
    // A valid header from a peer outside trusted_proxies.
    let mut s = connect_from("127.0.0.2", port).await;
    let _ = s
        .write_all(b"PROXY TCP4 203.0.113.7 10.0.0.1 4444 80\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n")
        .await;
    assert!(closed_silently(&mut s, Duration::from_secs(3)).await);
    assert!(
        gw.log().contains("not in forwarded.trusted_proxies"),
        "{}",
        gw.log()
    );
    assert!(gw
        .log()
        .contains("PROXY protocol: connection from 127.0.0.1"));
    // Each refusal is not logged again as an error of its own (a flood of them would be).
    assert!(
        !gw.log().contains("Downstream handshake error"),
        "{}",
        gw.log()
    );
    // The listener still serves a client that sends its header.
    let (_, r) = request_after(port, b"PROXY TCP4 203.0.113.7 10.0.0.1 1 80\r\n", "/ok").await;
    assert_eq!(r.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_header_trickled_past_the_timeout_is_cut() {
    let b = Backend::start("app").await;
    let gw = start(&b, "header_timeout: 1s");
    let mut s = TcpStream::connect(("127.0.0.1", gw.port)).await.unwrap();
    s.set_nodelay(true).unwrap();
    let start = Instant::now();
    let header = b"PROXY TCP4 203.0.113.7 10.0.0.1 4444 80\r\n";
    let mut cut = None;
    for &byte in header.iter() {
        if s.write_all(&[byte]).await.is_err() {
            cut = Some(start.elapsed());
            break;
        }
        let mut one = [0u8; 1];
        match tokio::time::timeout(Duration::from_millis(250), s.read(&mut one)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                cut = Some(start.elapsed());
                break;
            }
            Ok(Ok(_)) => panic!("a response to a partial header"),
            Err(_) => {}
        }
    }
    let cut = cut.expect("the trickled header was not cut");
    assert!(
        cut >= Duration::from_millis(900) && cut < Duration::from_millis(2500),
        "cut after {cut:?}, the timeout is 1s"
    );
    assert!(gw.log().contains("no header within 1s"), "{}", gw.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_connections_per_ip_counts_the_header_address() {
    let b = Backend::start("app").await;
    let gw = start(&b, "max_connections_per_ip: 2");
    let from = |ip: &str| format!("PROXY TCP4 {ip} 10.0.0.1 1000 80\r\n").into_bytes();
    // All connections come from 127.0.0.1: more than 2 are served, by header address.
    let (a1, r) = request_after(gw.port, &from("203.0.113.7"), "/a1").await;
    assert_eq!(r.status, 200);
    let (a2, r) = request_after(gw.port, &from("203.0.113.7"), "/a2").await;
    assert_eq!(r.status, 200);
    let (_b1, r) = request_after(gw.port, &from("203.0.113.8"), "/b1").await;
    assert_eq!(
        r.status, 200,
        "another client behind the same proxy is served"
    );
    let mut third = TcpStream::connect(("127.0.0.1", gw.port)).await.unwrap();
    third.write_all(&from("203.0.113.7")).await.unwrap();
    let _ = third.write_all(get("/a3").as_bytes()).await;
    assert!(
        closed_silently(&mut third, Duration::from_secs(3)).await,
        "the 3rd connection of 203.0.113.7 is refused"
    );
    assert!(gw
        .log()
        .contains("203.0.113.7 has max_connections_per_ip (2) open"));
    drop(a1);
    let freed = eventually(Duration::from_secs(5), || async {
        let mut c = H1Conn::connect(gw.port).await.unwrap();
        c.write(&from("203.0.113.7")).await.unwrap();
        c.request(&get("/a4")).await.is_ok_and(|r| r.status == 200)
    })
    .await;
    assert!(freed, "a place is free again once a connection closes");
    drop(a2);
}

/// A CA, a certificate for `pp.test` signed by it, and a client trusting the CA.
fn pki() -> (
    std::path::PathBuf,
    std::path::PathBuf,
    tokio_rustls::TlsConnector,
) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
    use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};
    let dir = unique_temp_dir("gw-pp-tls");
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.distinguished_name.push(DnType::CommonName, "pp test CA");
    let ca_key = KeyPair::generate().unwrap();
    let ca = p.self_signed(&ca_key).unwrap();
    let mut leaf = CertificateParams::new(vec!["pp.test".to_string()]).unwrap();
    leaf.distinguished_name.push(DnType::CommonName, "pp.test");
    let key = KeyPair::generate().unwrap();
    let cert = leaf.signed_by(&key, &ca, &ca_key).unwrap();
    let (c, k) = (dir.join("pp.pem"), dir.join("pp.key"));
    std::fs::write(&c, cert.pem()).unwrap();
    std::fs::write(&k, key.serialize_pem()).unwrap();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut roots = RootCertStore::empty();
    roots.add(ca.der().clone()).unwrap();
    let cfg = ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    (c, k, tokio_rustls::TlsConnector::from(Arc::new(cfg)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_listener_reads_the_header_before_the_handshake() {
    use tokio_rustls::rustls::pki_types::ServerName;
    let b = Backend::start("app").await;
    let (cert, key, tls) = pki();
    let gw = Gateway::start(&format!(
        r#"
listeners:
  - address: "127.0.0.1:{{PORT}}"
    proxy_protocol: true
    tls: {{ certificates: [ {{ cert: "{}", key: "{}" }} ] }}
admin: {{ address: "127.0.0.1:{{ADMIN}}" }}
forwarded: {{ trusted_proxies: [ 127.0.0.1 ] }}
upstreams:
  app: {{ servers: [ {{ address: "{}" }} ] }}
routes:
  - upstream: app
"#,
        cert.display(),
        key.display(),
        b.addr
    ));
    let mut tcp = TcpStream::connect(("127.0.0.1", gw.port)).await.unwrap();
    let dst = sa(&format!("127.0.0.1:{}", gw.port));
    tcp.write_all(&encode(Version::V2, sa("192.0.2.44:7777"), dst))
        .await
        .unwrap();
    let mut s = tokio::time::timeout(
        IO_TIMEOUT,
        tls.connect(ServerName::try_from("pp.test").unwrap(), tcp),
    )
    .await
    .expect("handshake in time")
    .expect("TLS handshake after the PROXY header");
    s.write_all(b"GET /over-tls HTTP/1.1\r\nHost: pp.test\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(IO_TIMEOUT, s.read_to_end(&mut out)).await;
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    let body = &text[text.find("\r\n\r\n").unwrap() + 4..];
    let v: serde_json::Value = serde_json::from_str(body.trim()).unwrap_or_else(|_| {
        // A chunked body: the JSON is between the chunk-size lines.
        let start = body.find('{').unwrap();
        let end = body.rfind('}').unwrap();
        serde_json::from_str(&body[start..=end]).unwrap()
    });
    assert_eq!(v["headers"]["x-forwarded-for"], "192.0.2.44");
    assert_eq!(v["headers"]["x-forwarded-proto"], "https");

    // A TLS ClientHello without a header is refused before any handshake.
    let tcp = TcpStream::connect(("127.0.0.1", gw.port)).await.unwrap();
    let r = tokio::time::timeout(
        IO_TIMEOUT,
        tls.connect(ServerName::try_from("pp.test").unwrap(), tcp),
    )
    .await
    .expect("refused in time");
    assert!(r.is_err(), "a handshake without a PROXY header succeeded");
}

#[test]
fn config_errors_are_named_by_key() {
    let cases: &[(&str, &str)] = &[
        (
            "listeners: [ { address: 127.0.0.1:1, proxy_protocol: true } ]\n",
            "listeners[0].proxy_protocol: needs forwarded.trusted_proxies",
        ),
        (
            "upstreams:\n  p: { servers: [ { address: 127.0.0.1:1 } ], send_proxy_protocol: v3 }\n",
            "upstreams.p.send_proxy_protocol: unknown variant `v3`",
        ),
        (
            "upstreams:\n  p: { servers: [ { address: 127.0.0.1:1 } ], send_proxy_protocol: v2 }\nroutes: [ { upstream: p } ]\n",
            "upstreams.p.send_proxy_protocol: only TCP listeners",
        ),
        (
            "listeners: [ { address: 127.0.0.1:1, proxy_protocol: yes-please } ]\n",
            "listeners[0].proxy_protocol",
        ),
    ];
    for (yaml, want) in cases {
        let (code, out) = check_config(yaml);
        assert_ne!(code, 0, "accepted:\n{yaml}");
        assert!(out.contains(want), "{want:?} not in:\n{out}");
    }
    let (code, out) = check_config(
        "listeners: [ { address: 127.0.0.1:1, proxy_protocol: true } ]\nforwarded: { trusted_proxies: [ 10.0.0.0/8 ] }\nupstreams:\n  p: { servers: [ { address: 127.0.0.1:1 } ], send_proxy_protocol: v1 }\n",
    );
    assert_eq!(code, 0, "{out}");
}
