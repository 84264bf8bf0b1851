//! TLS termination through the real gateway: SNI picks among certificates (exact, wildcard,
//! default), RSA and ECDSA keys, h2 by ALPN, wss echo, the HTTPS redirect, HSTS, TLS to
//! backends verified against a given CA (and refused without it), garbage on the TLS port,
//! `-t` errors for bad certificates. Certificates are generated at test time.

mod common;
use common::*;
use futures_util::{SinkExt, StreamExt};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::rustls::{self, pki_types::ServerName, ClientConfig, RootCertStore};

struct Pki {
    dir: PathBuf,
    ca_cert: rcgen::Certificate,
    ca_key: KeyPair,
}

impl Pki {
    fn new() -> Pki {
        let dir = unique_temp_dir("gw-tls");
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name
            .push(DnType::CommonName, "gateway test CA");
        let ca_key = KeyPair::generate().unwrap();
        let ca_cert = p.self_signed(&ca_key).unwrap();
        std::fs::write(dir.join("ca.pem"), ca_cert.pem()).unwrap();
        Pki {
            dir,
            ca_cert,
            ca_key,
        }
    }

    /// Writes `<stem>.pem` / `<stem>.key` for `names`, signed by the CA.
    fn leaf(&self, stem: &str, names: &[&str], expired: bool) -> (PathBuf, PathBuf) {
        let mut p = CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .unwrap();
        p.distinguished_name.push(DnType::CommonName, names[0]);
        if expired {
            p.not_before = rcgen::date_time_ymd(2001, 1, 1);
            p.not_after = rcgen::date_time_ymd(2002, 1, 1);
        }
        let key = KeyPair::generate().unwrap();
        let cert = p.signed_by(&key, &self.ca_cert, &self.ca_key).unwrap();
        let (c, k) = (
            self.dir.join(format!("{stem}.pem")),
            self.dir.join(format!("{stem}.key")),
        );
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        (c, k)
    }

    fn ca_pem(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    fn client(&self, alpn: &[&[u8]]) -> tokio_rustls::TlsConnector {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut roots = RootCertStore::empty();
        roots.add(self.ca_cert.der().clone()).unwrap();
        let mut cfg = ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth();
        cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        tokio_rustls::TlsConnector::from(Arc::new(cfg))
    }
}

fn rustls_pemfile_certs(pem: &[u8]) -> Vec<rustls::pki_types::CertificateDer<'static>> {
    rustls_pemfile::certs(&mut &pem[..])
        .map(|c| c.unwrap())
        .collect()
}

/// An RSA certificate signed by the test CA; the RSA key comes from the openssl CLI (ring
/// cannot generate RSA keys). `None` when openssl is not installed.
fn rsa_leaf(pki: &Pki) -> Option<(PathBuf, PathBuf)> {
    let (c, k) = (pki.dir.join("rsa.pem"), pki.dir.join("rsa.key"));
    let out = std::process::Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
        ])
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let pem = String::from_utf8(out.stdout).ok()?;
    let key = KeyPair::from_pem_and_sign_algo(&pem, &rcgen::PKCS_RSA_SHA256).ok()?;
    let mut p = CertificateParams::new(vec!["rsa.test".to_string()]).unwrap();
    p.distinguished_name.push(DnType::CommonName, "rsa.test");
    let cert = p.signed_by(&key, &pki.ca_cert, &pki.ca_key).ok()?;
    std::fs::write(&c, cert.pem()).unwrap();
    std::fs::write(&k, pem).unwrap();
    Some((c, k))
}

async fn tls_connect(
    pki: &Pki,
    port: u16,
    sni: &str,
    alpn: &[&[u8]],
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    pki.client(alpn)
        .connect(ServerName::try_from(sni.to_string()).unwrap(), tcp)
        .await
        .unwrap_or_else(|e| panic!("TLS to {sni}: {e}"))
}

fn peer_names(s: &tokio_rustls::client::TlsStream<TcpStream>) -> Vec<String> {
    let der = s.get_ref().1.peer_certificates().unwrap()[0].clone();
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).unwrap();
    cert.subject_alternative_name()
        .unwrap()
        .unwrap()
        .value
        .general_names
        .iter()
        .filter_map(|n| match n {
            x509_parser::extensions::GeneralName::DNSName(d) => Some(d.to_string()),
            _ => None,
        })
        .collect()
}

async fn https_get(
    s: &mut tokio_rustls::client::TlsStream<TcpStream>,
    host: &str,
    path: &str,
) -> String {
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

fn yaml(pki: &Pki, b: &Backend, https: u16, http: u16, admin: u16, extra_certs: &str) -> String {
    let (a_c, a_k) = pki.leaf("a", &["a.test"], false);
    let (b_c, b_k) = pki.leaf("b", &["b.test", "*.wild.test"], false);
    format!(
        r#"
listeners:
  - address: "127.0.0.1:{https}"
    http2: true
    tls:
      certificates:
        - {{ cert: "{}", key: "{}" }}
        - {{ cert: "{}", key: "{}" }}
{extra_certs}
  - {{ address: "127.0.0.1:{http}", redirect_https: true }}
admin: {{ address: "127.0.0.1:{admin}" }}
upstreams:
  app: {{ servers: [ {{ address: "{}" }} ] }}
routes:
  - match: {{ path_prefix: /.well-known/acme-challenge/ }}
    respond: {{ status: 200, body: "token" }}
    allow_http: true
  - upstream: app
    response_headers: {{ set: {{ Strict-Transport-Security: "max-age=63072000", X-Frame-Options: DENY, X-Content-Type-Options: nosniff }} }}
"#,
        a_c.display(),
        a_k.display(),
        b_c.display(),
        b_k.display(),
        b.addr
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_sni_h2_wss_redirect_and_security_headers() {
    let pki = Pki::new();
    let b = Backend::start("node-1").await;
    let rsa = rsa_leaf(&pki);
    let extra = rsa.as_ref().map_or(String::new(), |(c, k)| {
        format!(
            "        - {{ cert: \"{}\", key: \"{}\" }}\n",
            c.display(),
            k.display()
        )
    });
    let (https, http, admin) = (free_port(), free_port(), free_port());
    let _gw = Gateway::start_with(&yaml(&pki, &b, https, http, admin, &extra), https, admin);

    // SNI picks the certificate: exact, wildcard, and the default (first) for unknown names.
    for (sni, want) in [
        ("a.test", "a.test"),
        ("b.test", "b.test"),
        ("x.wild.test", "*.wild.test"),
        ("unknown.test", "a.test"),
    ] {
        let tls = {
            let tcp = TcpStream::connect(("127.0.0.1", https)).await.unwrap();
            // For the default certificate, verify against the name it actually carries.
            let connector = pki.client(&[b"http/1.1"]);
            let name = if sni == "unknown.test" { "a.test" } else { sni };
            let mut s = connector
                .connect(ServerName::try_from(name.to_string()).unwrap(), tcp)
                .await
                .unwrap();
            if sni == "unknown.test" {
                // Reconnect with the unknown SNI and check names only.
                drop(s);
                let tcp = TcpStream::connect(("127.0.0.1", https)).await.unwrap();
                let mut cfg = ClientConfig::builder()
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(AcceptAny))
                    .with_no_client_auth();
                cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
                s = tokio_rustls::TlsConnector::from(Arc::new(cfg))
                    .connect(ServerName::try_from(sni.to_string()).unwrap(), tcp)
                    .await
                    .unwrap();
            }
            s
        };
        assert!(
            peer_names(&tls).contains(&want.to_string()),
            "SNI {sni}: got {:?}",
            peer_names(&tls)
        );
    }
    if rsa.is_some() {
        let mut s = tls_connect(&pki, https, "rsa.test", &[b"http/1.1"]).await;
        assert_eq!(
            peer_names(&s),
            vec!["rsa.test".to_string()],
            "RSA certificate by SNI"
        );
        assert!(https_get(&mut s, "rsa.test", "/")
            .await
            .starts_with("HTTP/1.1 200"));
    }

    // HTTPS GET: the backend sees X-Forwarded-Proto https; security headers are present.
    let mut s = tls_connect(&pki, https, "a.test", &[b"http/1.1"]).await;
    let resp = https_get(&mut s, "a.test", "/hello").await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    let lower = resp.to_ascii_lowercase();
    assert!(
        lower.contains("strict-transport-security: max-age=63072000"),
        "{resp}"
    );
    assert!(
        lower.contains("x-frame-options: deny")
            && lower.contains("x-content-type-options: nosniff"),
        "{resp}"
    );
    assert!(resp.contains(r#""x-forwarded-proto":"https""#), "{resp}");

    // h2 negotiated by ALPN and served.
    let s = tls_connect(&pki, https, "a.test", &[b"h2", b"http/1.1"]).await;
    assert_eq!(s.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut client, conn) = h2::client::handshake(s).await.unwrap();
    tokio::spawn(conn);
    let req = http::Request::get("https://a.test/over-h2")
        .body(())
        .unwrap();
    let (resp, _) = client.send_request(req, true).unwrap();
    let resp = resp.await.unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let mut bytes = Vec::new();
    while let Some(chunk) = body.data().await {
        bytes.extend_from_slice(&chunk.unwrap());
    }
    let j: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(j["path"], "/over-h2");

    // wss echo over an HTTP/1.1 TLS connection.
    let s = tls_connect(&pki, https, "a.test", &[b"http/1.1"]).await;
    let (mut ws, _) = tokio_tungstenite::client_async("wss://a.test/ws", s)
        .await
        .unwrap();
    ws.send(WsMessage::Text("whoami".into())).await.unwrap();
    assert_eq!(
        ws.next()
            .await
            .unwrap()
            .unwrap()
            .into_text()
            .unwrap()
            .as_str(),
        "node-1"
    );

    // Plain HTTP: 301 to https (port mapped), except the ACME route.
    let r = get(http, "a.test:80", "/path?q=1").await;
    assert_eq!(r.status, 301);
    assert_eq!(
        r.header("location"),
        Some(format!("https://a.test:{https}/path?q=1").as_str())
    );
    let r = get(http, "a.test", "/.well-known/acme-challenge/abc").await;
    assert_eq!((r.status, r.text().as_str()), (200, "token"));

    // Garbage and plain HTTP on the TLS port are closed; others are unaffected.
    let mut raw = TcpStream::connect(("127.0.0.1", https)).await.unwrap();
    raw.write_all(b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(std::time::Duration::from_secs(5), raw.read(&mut buf))
        .await
        .expect("closed within 5 s")
        .unwrap_or(0);
    assert!(n == 0 || !buf[..n].starts_with(b"HTTP/1.1 200"));
    let mut s = tls_connect(&pki, https, "b.test", &[b"http/1.1"]).await;
    assert!(https_get(&mut s, "b.test", "/")
        .await
        .starts_with("HTTP/1.1 200"));
}

#[derive(Debug)]
struct AcceptAny;
impl rustls::client::danger::ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        rustls::crypto::ring::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A TLS front for a plain backend: terminates TLS with `cert`/`key`, pipes to `backend`.
async fn tls_backend(
    cert: &Path,
    key: &Path,
    backend: std::net::SocketAddr,
) -> std::net::SocketAddr {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let certs = rustls_pemfile_certs(&std::fs::read(cert).unwrap());
    let key = rustls_pemfile::private_key(&mut &std::fs::read(key).unwrap()[..])
        .unwrap()
        .unwrap();
    let cfg = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = l.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                if let Ok(mut tls) = acceptor.accept(tcp).await {
                    if let Ok(mut up) = TcpStream::connect(backend).await {
                        let _ = tokio::io::copy_bidirectional(&mut tls, &mut up).await;
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_to_backends_is_verified() {
    let pki = Pki::new();
    let b = Backend::start("tls-node").await;
    let (c, k) = pki.leaf("backend", &["backend.test"], false);
    let front = tls_backend(&c, &k, b.addr).await;
    let conf = |tls: &str| {
        format!("listeners: [ {{ address: \"127.0.0.1:{{PORT}}\" }} ]\nadmin: {{ address: \"127.0.0.1:{{ADMIN}}\" }}\nupstreams:\n  app: {{ servers: [ {{ address: \"{front}\" }} ], tls: {tls} }}\nroutes: [ {{ upstream: app }} ]\n")
    };

    let gw = Gateway::start(&conf(&format!(
        "{{ sni: backend.test, ca_file: \"{}\" }}",
        pki.ca_pem().display()
    )));
    let r = get(gw.port, "x", "/secure").await;
    assert_eq!(r.status, 200, "verified against the given CA");
    assert_eq!(r.json()["backend"], "tls-node");
    drop(gw);

    let gw = Gateway::start(&conf("{ sni: backend.test }"));
    assert_eq!(
        get(gw.port, "x", "/").await.status,
        502,
        "an unknown CA is refused"
    );
    drop(gw);

    let gw = Gateway::start(&conf(&format!(
        "{{ sni: wrong.test, ca_file: \"{}\" }}",
        pki.ca_pem().display()
    )));
    assert_eq!(
        get(gw.port, "x", "/").await.status,
        502,
        "a name mismatch is refused"
    );
    drop(gw);

    let gw = Gateway::start(&conf("{ sni: backend.test, verify: false }"));
    assert_eq!(
        get(gw.port, "x", "/").await.status,
        200,
        "verify: false accepts it"
    );
}

#[test]
fn bad_certificates_are_config_errors() {
    let pki = Pki::new();
    let (good_c, good_k) = pki.leaf("good", &["good.test"], false);
    let (_, other_k) = pki.leaf("other", &["other.test"], false);
    let (old_c, old_k) = pki.leaf("old", &["old.test"], true);
    let conf = |c: &Path, k: &Path| {
        format!("listeners:\n  - address: 127.0.0.1:8443\n    tls: {{ certificates: [ {{ cert: \"{}\", key: \"{}\" }} ] }}\n", c.display(), k.display())
    };
    let (code, out) = check_config(&conf(&good_c, &good_k));
    assert_eq!(code, 0, "{out}");
    let missing = pki.dir.join("missing.pem");
    let (code, out) = check_config(&conf(&missing, &good_k));
    assert_ne!(code, 0);
    assert!(
        out.contains("listeners[0].tls.certificates[0].cert: cannot read")
            && out.contains("missing.pem"),
        "{out}"
    );
    let (code, out) = check_config(&conf(&good_c, &other_k));
    assert_ne!(code, 0);
    assert!(
        out.contains("listeners[0].tls.certificates[0].key:")
            && out.contains("does not match the certificate")
            && out.contains("good.pem"),
        "{out}"
    );
    let (code, out) = check_config(&conf(&old_c, &old_k));
    assert_ne!(code, 0);
    assert!(
        out.contains("listeners[0].tls.certificates[0].cert: certificate")
            && out.contains("old.pem")
            && out.contains("expired"),
        "{out}"
    );
    let (code, out) = check_config("listeners: [ { address: 127.0.0.1:8080, http2: true } ]\n");
    assert_ne!(code, 0);
    assert!(out.contains("listeners[0].http2: needs tls"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_certificate_is_picked_up_by_gateway_upgrade() {
    let pki = Pki::new();
    let b = Backend::start("node-1").await;
    let (c, k) = pki.leaf("site", &["a.test"], false);
    let (https, admin) = (free_port(), free_port());
    let dir = &pki.dir;
    let cfg_path = dir.join("gw.yaml");
    std::fs::write(
        &cfg_path,
        format!(
            "server: {{ pid_file: \"{d}/gw.pid\", upgrade_sock: \"{d}/gw.sock\", grace_period_seconds: 10, graceful_shutdown_timeout_seconds: 2 }}\nlisteners:\n  - address: \"127.0.0.1:{https}\"\n    tls: {{ certificates: [ {{ cert: \"{}\", key: \"{}\" }} ] }}\nadmin: {{ address: \"127.0.0.1:{admin}\" }}\nupstreams:\n  app: {{ servers: [ {{ address: \"{}\" }} ] }}\nroutes: [ {{ upstream: app }} ]\n",
            c.display(),
            k.display(),
            b.addr,
            d = dir.display()
        ),
    )
    .unwrap();
    let first = Gateway::start_with(&std::fs::read_to_string(&cfg_path).unwrap(), https, admin);
    let s = tls_connect(&pki, https, "a.test", &[b"http/1.1"]).await;
    let old_der = s.get_ref().1.peer_certificates().unwrap()[0].clone();
    drop(s);
    // An established wss connection to the old process.
    let s = tls_connect(&pki, https, "a.test", &[b"http/1.1"]).await;
    let (mut kept, _) = tokio_tungstenite::client_async("wss://a.test/ws", s)
        .await
        .unwrap();

    // Renew the certificate in place (new key), then reload by binary upgrade.
    pki.leaf("site", &["a.test"], false);
    let log = dir.join("upgrade.log");
    let f = std::fs::File::create(&log).unwrap();
    let st = std::process::Command::new(gateway_bin())
        .args(["upgrade", "-c", cfg_path.to_str().unwrap()])
        .stdout(f.try_clone().unwrap())
        .stderr(f)
        .status()
        .unwrap();
    assert!(
        st.success(),
        "{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );

    let s = tls_connect(&pki, https, "a.test", &[b"http/1.1"]).await;
    let new_der = s.get_ref().1.peer_certificates().unwrap()[0].clone();
    assert_ne!(
        old_der, new_der,
        "new connections get the renewed certificate"
    );
    // The WebSocket opened before the reload still works (it lives on the old process until
    // it closes or the grace period ends).
    kept.send(WsMessage::Text("still here".into()))
        .await
        .unwrap();
    let echo = tokio::time::timeout(std::time::Duration::from_secs(5), kept.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(echo.into_text().unwrap().as_str(), "still here");

    let pid: i32 = std::fs::read_to_string(dir.join("gw.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    drop(first);
    let _ = std::process::Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status();
}
