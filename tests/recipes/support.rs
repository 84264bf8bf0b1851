//! Helpers of `tests/recipes.rs`: start the gateway on a shipped `conf/examples/` file with
//! only its addresses (and certificate paths) substituted, a test certificate, an HTTPS / wss
//! client, and real Socket.IO nodes (`tests/socketio/backend.js`) spoken to in Engine.IO.

use crate::common::*;
use serde_yaml::{Mapping, Value};
use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::rustls::{self, pki_types::ServerName, ClientConfig, RootCertStore};

/// `conf/examples/`, where the recipes live.
pub fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("conf/examples")
}

/// A recipe file being prepared to run: the shipped YAML, parsed, with substitutions.
pub struct Recipe {
    name: String,
    doc: Value,
    pools: BTreeSet<String>,
    certs: bool,
}

/// A gateway running a recipe; `ports[i]` is where `listeners[i]` of the file listens.
pub struct Running {
    /// The gateway process.
    pub gw: Gateway,
    /// Loopback port of each listener, in file order.
    pub ports: Vec<u16>,
}

fn key(k: &str) -> Value {
    Value::String(k.to_string())
}

fn map_mut<'a>(v: &'a mut Value, what: &str) -> &'a mut Mapping {
    v.as_mapping_mut()
        .unwrap_or_else(|| panic!("{what} is not a mapping"))
}

impl Recipe {
    /// Reads `conf/examples/<name>.yaml`.
    pub fn load(name: &str) -> Recipe {
        let path = examples_dir().join(format!("{name}.yaml"));
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        let doc: Value =
            serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("parse {}: {e}", path.display()));
        Recipe {
            name: name.to_string(),
            doc,
            pools: BTreeSet::new(),
            certs: false,
        }
    }

    /// Points pool `pool`'s servers at `addrs` (as many as the file lists; weights and
    /// every other key kept).
    pub fn pool(mut self, pool: &str, addrs: &[SocketAddr]) -> Recipe {
        let servers = self
            .doc
            .get_mut("upstreams")
            .and_then(|u| u.get_mut(pool))
            .and_then(|p| p.get_mut("servers"))
            .and_then(Value::as_sequence_mut)
            .unwrap_or_else(|| panic!("{}: no upstreams.{pool}.servers", self.name));
        assert_eq!(
            servers.len(),
            addrs.len(),
            "{}: upstreams.{pool} has {} servers",
            self.name,
            servers.len()
        );
        for (s, a) in servers.iter_mut().zip(addrs) {
            map_mut(s, "a server").insert(key("address"), key(&a.to_string()));
        }
        self.pools.insert(pool.to_string());
        self
    }

    /// Replaces every listener certificate by the test one.
    pub fn certs(mut self, cert: &TestCert) -> Recipe {
        for l in self.listeners_mut() {
            let Some(tls) = l.get_mut("tls") else {
                continue;
            };
            for c in tls
                .get_mut("certificates")
                .and_then(Value::as_sequence_mut)
                .into_iter()
                .flatten()
            {
                let c = map_mut(c, "a certificate");
                c.insert(key("cert"), key(&cert.cert.display().to_string()));
                c.insert(key("key"), key(&cert.key.display().to_string()));
            }
        }
        self.certs = true;
        self
    }

    fn listeners_mut(&mut self) -> impl Iterator<Item = &mut Value> {
        self.doc
            .get_mut("listeners")
            .and_then(Value::as_sequence_mut)
            .into_iter()
            .flatten()
    }

    /// The final YAML for these listener and admin ports.
    fn render(&self, ports: &[u16], admin: u16) -> String {
        let mut doc = self.doc.clone();
        let root = map_mut(&mut doc, "the file");
        let listeners = root
            .get_mut("listeners")
            .and_then(Value::as_sequence_mut)
            .expect("recipes name their listeners");
        for (l, p) in listeners.iter_mut().zip(ports) {
            map_mut(l, "a listener").insert(key("address"), key(&format!("127.0.0.1:{p}")));
        }
        let admin_conf = root
            .entry(key("admin"))
            .or_insert_with(|| Value::Mapping(Mapping::new()));
        map_mut(admin_conf, "admin").insert(key("address"), key(&format!("127.0.0.1:{admin}")));
        // Static roots relative to the recipe are the shipped directories (the gateway runs
        // in a temp dir with the substituted file).
        for r in root
            .get_mut("routes")
            .and_then(Value::as_sequence_mut)
            .into_iter()
            .flatten()
        {
            if let Some(Value::String(dir)) = r.get_mut("static").and_then(|s| s.get_mut("root")) {
                if Path::new(dir.as_str()).is_relative() {
                    *dir = examples_dir().join(&*dir).display().to_string();
                }
            }
        }
        serde_yaml::to_string(&doc).unwrap()
    }

    /// Starts the gateway on the recipe with fresh loopback ports, once every pool has its
    /// test backends and every TLS listener its test certificate.
    pub fn start(mut self) -> Running {
        let file_pools: BTreeSet<String> = self
            .doc
            .get("upstreams")
            .and_then(Value::as_mapping)
            .into_iter()
            .flatten()
            .filter_map(|(k, _)| k.as_str().map(str::to_string))
            .collect();
        assert_eq!(
            file_pools, self.pools,
            "{}: give every pool test backends",
            self.name
        );
        let n = self.listeners_mut().count();
        let tls = self.listeners_mut().any(|l| l.get("tls").is_some());
        assert!(
            !tls || self.certs,
            "{}: TLS listeners need certs()",
            self.name
        );
        let mut last = String::new();
        for _ in 0..5 {
            let ports: Vec<u16> = (0..n).map(|_| free_port()).collect();
            let admin = free_port();
            let yaml = self.render(&ports, admin);
            let gw = match Gateway::try_start_with(&yaml, ports[0], admin) {
                Ok(gw) => gw,
                Err(e) if e.contains("in use") => {
                    last = e;
                    continue;
                }
                Err(e) => panic!("{}: {e}", self.name),
            };
            let all_open = ports.iter().all(|&p| {
                (0..100).any(|_| {
                    port_open(p) || {
                        std::thread::sleep(Duration::from_millis(20));
                        false
                    }
                })
            });
            if all_open && !gw.log().contains("in use") {
                return Running { gw, ports };
            }
            last = gw.log();
        }
        panic!("{}: no free ports after 5 tries:\n{last}", self.name);
    }
}

/// A self-signed certificate for the recipes' names, written at test time.
pub struct TestCert {
    /// PEM certificate.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
    der: rustls::pki_types::CertificateDer<'static>,
}

impl TestCert {
    /// A fresh certificate for example.com, *.example.com and localhost.
    pub fn new() -> TestCert {
        let names = ["example.com", "*.example.com", "localhost"].map(String::from);
        let ck = rcgen::generate_simple_self_signed(names.to_vec()).unwrap();
        let dir = unique_temp_dir("recipe-cert");
        let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
        std::fs::write(&cert, ck.cert.pem()).unwrap();
        std::fs::write(&key, ck.key_pair.serialize_pem()).unwrap();
        TestCert {
            cert,
            key,
            der: ck.cert.der().clone(),
        }
    }

    /// TLS to 127.0.0.1:port with SNI `name`, trusting only this certificate.
    pub async fn connect(
        &self,
        port: u16,
        name: &str,
    ) -> tokio_rustls::client::TlsStream<TcpStream> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut roots = RootCertStore::empty();
        roots.add(self.der.clone()).unwrap();
        let mut cfg = ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth();
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        let tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        tokio_rustls::TlsConnector::from(Arc::new(cfg))
            .connect(ServerName::try_from(name.to_string()).unwrap(), tcp)
            .await
            .unwrap_or_else(|e| panic!("TLS to {name} on {port}: {e}"))
    }

    /// `GET path` over HTTPS with `Connection: close`: the whole response as text.
    pub async fn get(&self, port: u16, host: &str, path: &str) -> String {
        let mut s = self.connect(port, host).await;
        let req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        let mut out = Vec::new();
        let _ = tokio::time::timeout(IO_TIMEOUT, s.read_to_end(&mut out)).await;
        String::from_utf8_lossy(&out).into_owned()
    }

    /// A wss:// WebSocket through the TLS listener.
    pub async fn wss(
        &self,
        port: u16,
        host: &str,
        path: &str,
    ) -> tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<TcpStream>> {
        let s = self.connect(port, host).await;
        let (ws, resp) = tokio_tungstenite::client_async(format!("wss://{host}{path}"), s)
            .await
            .unwrap_or_else(|e| panic!("wss://{host}{path}: {e}"));
        assert_eq!(resp.status(), 101);
        ws
    }
}

/// A real Socket.IO server (`tests/socketio/backend.js`), killed on drop.
pub struct SioNode {
    /// Where it listens.
    pub addr: SocketAddr,
    child: Child,
}

impl SioNode {
    /// Kills the node (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl SioNode {
    /// Starts a node named `name` serving Socket.IO on `path` (the server's `path` option).
    pub fn start(name: &str, path: &str) -> SioNode {
        Self::start_on(name, path, None)
    }

    /// [`SioNode::start`] on a given port (a restarted node), or a free one.
    pub fn start_on(name: &str, path: &str, port: Option<u16>) -> SioNode {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/socketio");
        assert!(
            dir.join("node_modules/socket.io").is_dir(),
            "tests/socketio/node_modules is missing: run `npm ci` there (scripts/test.sh does)"
        );
        for _ in 0..5 {
            let port = port.unwrap_or_else(free_port);
            let mut child = Command::new("node")
                .arg(dir.join("backend.js"))
                .args(["--port", &port.to_string(), "--name", name, "--path", path])
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .expect("node (Node.js) must be installed for the Socket.IO recipes");
            let out = child.stdout.take().unwrap();
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                let mut line = String::new();
                let _ = BufReader::new(out).read_line(&mut line);
                let _ = tx.send(line);
            });
            match rx.recv_timeout(Duration::from_secs(20)) {
                Ok(l) if l.trim() == "ready" => {
                    return SioNode {
                        addr: ([127, 0, 0, 1], port).into(),
                        child,
                    }
                }
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                }
            }
        }
        panic!("Socket.IO node {name} did not start");
    }
}

impl Drop for SioNode {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An Engine.IO v4 polling handshake on `path` through the gateway: the session id, after
/// checking the open packet offers the WebSocket upgrade.
pub async fn sio_polling_handshake(port: u16, host: &str, path: &str) -> String {
    let r = get(port, host, &format!("{path}?EIO=4&transport=polling")).await;
    assert_eq!(r.status, 200, "polling handshake on {path}: {}", r.text());
    let body = r.text();
    let open: serde_json::Value = serde_json::from_str(
        body.strip_prefix('0')
            .unwrap_or_else(|| panic!("not an open packet: {body}")),
    )
    .unwrap();
    assert_eq!(open["upgrades"][0], "websocket", "{body}");
    open["sid"].as_str().unwrap().to_string()
}

/// A Socket.IO session over a WebSocket-only Engine.IO connection on `path`: connects to the
/// main namespace and returns the node's `whoami` ack (`node`, `transport`, `headers`).
pub async fn sio_websocket_whoami(port: u16, host: &str, path: &str) -> serde_json::Value {
    let mut ws = ws_connect(port, host, &format!("{path}?EIO=4&transport=websocket")).await;
    let open = next_text(&mut ws).await;
    assert!(open.starts_with("0{"), "Engine.IO open packet: {open}");
    let connect = ws_roundtrip(&mut ws, "40").await;
    assert!(connect.starts_with("40{"), "Socket.IO connect: {connect}");
    let ack = ws_roundtrip(&mut ws, r#"421["whoami"]"#).await;
    let body = ack
        .strip_prefix("431")
        .unwrap_or_else(|| panic!("whoami ack: {ack}"));
    let v: serde_json::Value = serde_json::from_str(body).unwrap();
    v[0].clone()
}

async fn next_text(ws: &mut Ws) -> String {
    match ws_recv(ws).await {
        Some(WsMessage::Text(t)) => t,
        other => panic!("expected a text message, got {other:?}"),
    }
}
