//! Every recipe of the seed guides (`conf/examples/*.yaml`) run by the real gateway binary, on
//! the shipped file itself with only its addresses (and certificate paths) substituted, each
//! test proving what the recipe exists for: Socket.IO through the whole-site, static-root,
//! custom-path, Caddy and Apache variants (real Socket.IO nodes), the nginx WebSocket guide's
//! basic proxy, TLS with redirect and HSTS, long idle WebSockets, sticky sessions, passive
//! health, mixed routes, the automatic Connection header, rate and connection limits, the
//! access log, `/health`, its production config, and the HAProxy + stunnel setup.

mod common;
#[path = "recipes/support.rs"]
mod support;

use common::*;
use futures_util::{SinkExt, StreamExt};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A `GET` from the loopback address `ip` (127.0.0.x: another client), `Connection: close`.
async fn get_from(ip: &str, port: u16, host: &str, path: &str, headers: &[(&str, &str)]) -> Resp {
    try_get_from(ip, port, host, path, headers)
        .await
        .unwrap_or_else(|| panic!("GET {path} from {ip}: no response"))
}

/// [`get_from`], `None` when the connection is closed without a response.
async fn try_get_from(
    ip: &str,
    port: u16,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Option<Resp> {
    let mut s = connect_from(ip, port).await;
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).await.ok()?;
    let mut raw = Vec::new();
    tokio::time::timeout(IO_TIMEOUT, s.read_to_end(&mut raw))
        .await
        .expect("response within 10 s")
        .ok()?;
    (!raw.is_empty()).then(|| parse_response(&raw))
}

/// Parses one whole response (Content-Length or read until close; no chunked bodies).
fn parse_response(raw: &[u8]) -> Resp {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no response head in {text:?}"));
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    Resp {
        status,
        headers,
        body: body.as_bytes().to_vec(),
    }
}

/// The `whoami` answer of a demo backend over a WebSocket (the backend's name).
async fn ws_whoami(port: u16, host: &str, path: &str) -> String {
    let mut ws = ws_connect(port, host, path).await;
    ws_roundtrip(&mut ws, "whoami").await
}

/// `whoami` over a WebSocket opened from the loopback address `ip`.
async fn ws_whoami_from(ip: &str, port: u16, path: &str) -> String {
    let s = connect_from(ip, port).await;
    let (mut ws, _) = tokio_tungstenite::client_async(format!("ws://ws.example.com{path}"), s)
        .await
        .unwrap();
    ws.send(WsMessage::Text("whoami".into())).await.unwrap();
    match tokio::time::timeout(IO_TIMEOUT, ws.next()).await {
        Ok(Some(Ok(WsMessage::Text(t)))) => t,
        other => panic!("whoami from {ip}: {other:?}"),
    }
}

fn addrs(bs: &[Backend]) -> Vec<SocketAddr> {
    bs.iter().map(|b| b.addr).collect()
}

async fn status(gw: &Gateway) -> serde_json::Value {
    get(gw.admin_port, "localhost", "/status").await.json()
}

// ---------------------------------------------------------------------------------------
// Socket.IO docs, "Behind a reverse proxy"
// ---------------------------------------------------------------------------------------

/// nginx `location /`: the whole site, Socket.IO polling and WebSocket, the client address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socketio_single_node() {
    let node = SioNode::start("n1", "/socket.io/");
    let r = Recipe::load("socketio-single-node")
        .pool("socketio", &[node.addr])
        .start();
    let port = r.ports[0];
    sio_polling_handshake(port, "example.com", "/socket.io/").await;
    let who = sio_websocket_whoami(port, "example.com", "/socket.io/").await;
    assert_eq!(
        (who["node"].as_str(), who["transport"].as_str()),
        (Some("n1"), Some("websocket"))
    );
    assert_eq!(who["headers"]["x-forwarded-for"], "127.0.0.1", "{who}");
    assert_eq!(who["headers"]["host"], "example.com", "{who}");
    // The rest of the site goes to the same server.
    let h = get(port, "example.com", "/health").await;
    assert_eq!(h.status, 200, "{}", h.text());
}

/// nginx `root /var/www/html` + `location /socket.io/`: the page from the static root, only
/// Socket.IO (and its client bundle) from the server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socketio_static_root() {
    let node = SioNode::start("n1", "/socket.io/");
    let r = Recipe::load("socketio-static-root")
        .pool("socketio", &[node.addr])
        .start();
    let port = r.ports[0];
    let page = get(port, "example.com", "/").await;
    let shipped = std::fs::read(examples_dir().join("www/index.html")).unwrap();
    assert_eq!((page.status, &page.body), (200, &shipped));
    assert!(page
        .header("content-type")
        .unwrap()
        .starts_with("text/html"));
    sio_polling_handshake(port, "example.com", "/socket.io/").await;
    let who = sio_websocket_whoami(port, "example.com", "/socket.io/").await;
    assert_eq!(who["node"], "n1");
    // Not proxied: the node answers /health, the static root has no such file.
    assert_eq!(get(port, "example.com", "/health").await.status, 404);
}

/// nginx `location /my-custom-path/` with the server's `path` option.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socketio_custom_path() {
    let node = SioNode::start("n1", "/my-custom-path/");
    let r = Recipe::load("socketio-custom-path")
        .pool("socketio", &[node.addr])
        .start();
    let port = r.ports[0];
    sio_polling_handshake(port, "example.com", "/my-custom-path/").await;
    let who = sio_websocket_whoami(port, "example.com", "/my-custom-path/").await;
    assert_eq!(
        (who["node"].as_str(), who["transport"].as_str()),
        (Some("n1"), Some("websocket"))
    );
    assert_eq!(
        get(port, "example.com", "/socket.io/?EIO=4&transport=polling")
            .await
            .status,
        404
    );
    assert_eq!(get(port, "example.com", "/").await.status, 200);
}

/// Caddy `reverse_proxy /socket.io/* localhost:3000` in the `example.com` site block.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caddy_reverse_proxy() {
    let node = SioNode::start("n1", "/socket.io/");
    let r = Recipe::load("caddy-reverse-proxy")
        .pool("socketio", &[node.addr])
        .start();
    let port = r.ports[0];
    let who = sio_websocket_whoami(port, "example.com", "/socket.io/").await;
    assert_eq!(who["node"], "n1");
    sio_polling_handshake(port, "Example.COM:80", "/socket.io/").await;
    assert_eq!(
        get(port, "other.test", "/socket.io/?EIO=4&transport=polling")
            .await
            .status,
        404
    );
    assert_eq!(get(port, "example.com", "/health").await.status, 404);
}

/// Caddy `handle_path /path/*` + `rewrite * /socket.io{path}`: clients use `/path/`, the
/// server its default `/socket.io/`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caddy_handle_path() {
    let node = SioNode::start("n1", "/socket.io/");
    let r = Recipe::load("caddy-handle-path")
        .pool("socketio", &[node.addr])
        .start();
    let port = r.ports[0];
    sio_polling_handshake(port, "example.com", "/path/").await;
    let who = sio_websocket_whoami(port, "example.com", "/path/").await;
    assert_eq!(
        (who["node"].as_str(), who["transport"].as_str()),
        (Some("n1"), Some("websocket"))
    );
    let bare = get(port, "example.com", "/path").await;
    assert_eq!(
        (bare.status, bare.header("location")),
        (308, Some("/path/"))
    );
    // The public prefix is the only way in.
    assert_eq!(
        get(port, "example.com", "/socket.io/?EIO=4&transport=polling")
            .await
            .status,
        404
    );
}

/// Apache `ProxyPass /` + `RewriteCond %{HTTP:Upgrade} websocket` -> `ws://`: upgrade
/// requests take the `match: { upgrade: websocket }` route, everything else the next one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apache_wstunnel() {
    let (ws_node, http_node) = (
        Backend::start("ws-pool").await,
        Backend::start("http-pool").await,
    );
    let r = Recipe::load("apache-wstunnel")
        .pool("websocket", &[ws_node.addr])
        .pool("http", &[http_node.addr])
        .start();
    let port = r.ports[0];
    for path in ["/", "/socket.io/?EIO=4&transport=websocket", "/any/path"] {
        assert_eq!(
            ws_whoami(port, "example.com", path).await,
            "ws-pool",
            "{path}"
        );
        let g = get(port, "example.com", path).await;
        assert_eq!(
            (g.status, g.backend().as_deref()),
            (200, Some("http-pool")),
            "{path}"
        );
    }
    assert_eq!(
        ws_node.app_hits.load(std::sync::atomic::Ordering::SeqCst),
        3
    );
}

/// `http-proxy` `createProxyServer({ target, ws: true }).listen(80)`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_http_proxy() {
    let b = Backend::start("target").await;
    let r = Recipe::load("node-http-proxy")
        .pool("target", &[b.addr])
        .start();
    let port = r.ports[0];
    let g = get(port, "example.com", "/api?x=1").await;
    assert_eq!(
        (g.status, g.json()["path"].as_str()),
        (200, Some("/api?x=1"))
    );
    assert_eq!(g.json()["headers"]["x-forwarded-for"], "127.0.0.1");
    assert_eq!(ws_whoami(port, "example.com", "/").await, "target");
    // A dead target is a 502, not a crashed proxy.
    b.stop();
    assert_eq!(get(port, "example.com", "/").await.status, 502);
    let _b = b.restart().await.unwrap();
    assert_eq!(get(port, "example.com", "/").await.status, 200);
}

// ---------------------------------------------------------------------------------------
// "How to Configure WebSocket with Nginx Reverse Proxy"
// ---------------------------------------------------------------------------------------

/// `location /ws` with the upgrade and client-address headers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_websocket_basic() {
    let b = Backend::start("ws-1").await;
    let r = Recipe::load("nginx-websocket-basic")
        .pool("websocket_backend", &[b.addr])
        .start();
    let port = r.ports[0];
    assert_eq!(ws_whoami(port, "ws.example.com", "/ws").await, "ws-1");
    let g = get(port, "ws.example.com", "/ws/info").await;
    let h = &g.json()["headers"];
    assert_eq!(
        (
            &h["host"],
            &h["x-real-ip"],
            &h["x-forwarded-for"],
            &h["x-forwarded-proto"]
        ),
        (
            &"ws.example.com".into(),
            &"127.0.0.1".into(),
            &"127.0.0.1".into(),
            &"http".into()
        ),
        "{h}"
    );
    assert_eq!(get(port, "other.example.com", "/ws").await.status, 404);
    assert_eq!(get(port, "ws.example.com", "/").await.status, 404);
}

/// `listen 443 ssl` + `return 301 https://...` + HSTS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_ssl_termination() {
    let b = Backend::start("ws-1").await;
    let cert = TestCert::new();
    let r = Recipe::load("nginx-ssl-termination")
        .pool("websocket_backend", &[b.addr])
        .certs(&cert)
        .start();
    let (https, http) = (r.ports[0], r.ports[1]);
    let red = get(http, "ws.example.com", "/ws?room=1").await;
    assert_eq!(red.status, 301);
    assert_eq!(
        red.header("location"),
        Some(format!("https://ws.example.com:{https}/ws?room=1").as_str())
    );
    let resp = cert.get(https, "ws.example.com", "/ws/x").await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    let lower = resp.to_ascii_lowercase();
    assert!(
        lower.contains("strict-transport-security: max-age=63072000"),
        "{resp}"
    );
    assert!(resp.contains(r#""x-forwarded-proto":"https""#), "{resp}");
    let mut ws = cert.wss(https, "ws.example.com", "/ws").await;
    ws.send(WsMessage::Text("whoami".into())).await.unwrap();
    let reply = tokio::time::timeout(IO_TIMEOUT, ws.next()).await.unwrap();
    assert_eq!(reply.unwrap().unwrap().into_text().unwrap(), "ws-1");
}

/// `proxy_read_timeout 86400s`: a WebSocket idle for longer than 60 s (nginx's default, and
/// the gateway's `read` timeout of plain requests) survives. Runs 65 s, on the recipe's own
/// values.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_long_timeouts() {
    let b = Backend::start("ws-1").await;
    let r = Recipe::load("nginx-long-timeouts")
        .pool("websocket_backend", &[b.addr])
        .start();
    let port = r.ports[0];
    let mut ws = ws_connect(port, "example.com", "/ws").await;
    assert_eq!(ws_roundtrip(&mut ws, "whoami").await, "ws-1");
    tokio::time::sleep(Duration::from_secs(65)).await;
    assert_eq!(ws_roundtrip(&mut ws, "still here").await, "still here");
}

/// `ip_hash` (and the sticky `srv_id` cookie): one client address always reaches the same
/// node, addresses spread over the nodes, and the cookie wins over the address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_sticky_sessions() {
    let bs = start_backends(&["n1", "n2", "n3"]).await;
    let r = Recipe::load("nginx-sticky-sessions")
        .pool("websocket_backend", &addrs(&bs))
        .start();
    let port = r.ports[0];
    let mut by_ip = Vec::new();
    for i in 2..14 {
        let ip = format!("127.0.0.{i}");
        let first = ws_whoami_from(&ip, port, "/ws").await;
        for _ in 0..3 {
            assert_eq!(ws_whoami_from(&ip, port, "/ws").await, first, "{ip} moved");
        }
        by_ip.push((ip, first));
    }
    let nodes: std::collections::BTreeSet<&str> = by_ip.iter().map(|(_, n)| n.as_str()).collect();
    assert!(nodes.len() >= 2, "12 addresses all on one node: {by_ip:?}");
    // A cookie from one node brings a client whose address hashes elsewhere back to it.
    let (ip_a, node_a) = &by_ip[0];
    let (ip_b, _) = by_ip.iter().find(|(_, n)| n != node_a).unwrap();
    let g = get_from(ip_a, port, "ws.example.com", "/ws/page", &[]).await;
    let set = g.header("set-cookie").expect("srv_id cookie").to_string();
    assert!(
        set.starts_with("srv_id=") && set.contains("Max-Age=3600"),
        "{set}"
    );
    let cookie = set.split(';').next().unwrap();
    let g = get_from(
        ip_b,
        port,
        "ws.example.com",
        "/ws/page",
        &[("Cookie", cookie)],
    )
    .await;
    assert_eq!(
        g.backend().as_deref(),
        Some(node_a.as_str()),
        "cookie ignored"
    );
}

/// `max_fails=3 fail_timeout=30s`: a dead node's clients are served by the others at once,
/// and once ejected it gets nothing for the fail timeout, even after it comes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_passive_health() {
    let bs = start_backends(&["n1", "n2", "n3"]).await;
    let r = Recipe::load("nginx-passive-health")
        .pool("websocket_backend", &addrs(&bs))
        .start();
    let port = r.ports[0];
    bs[0].stop();
    for i in 2..40 {
        let g = get_from(&format!("127.0.0.{i}"), port, "x", "/ws/x", &[]).await;
        assert_eq!(g.status, 200, "client {i} failed with a node down");
        assert_ne!(g.backend().as_deref(), Some("n1"));
    }
    let s = status(&r.gw).await;
    let b0 = &s["pools"]["websocket_backend"]["backends"][0];
    assert_eq!(
        (b0["ejected"].as_bool(), b0["healthy"].as_bool()),
        (Some(true), Some(false)),
        "{s}"
    );
    // Back on its port, still ejected: its clients stay elsewhere within fail_timeout.
    let n1 = bs[0].restart().await.unwrap();
    for i in 2..40 {
        let g = get_from(&format!("127.0.0.{i}"), port, "x", "/ws/x", &[]).await;
        assert_eq!(g.status, 200);
    }
    assert_eq!(
        n1.hits.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "ejected node used"
    );
}

/// `/api` + `/ws` + `/socket.io` on one host.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_http_websocket() {
    let api = Backend::start("api").await;
    let ws = start_backends(&["ws-a", "ws-b"]).await;
    let r = Recipe::load("mixed-http-websocket")
        .pool("api_backend", &[api.addr])
        .pool("websocket_backend", &addrs(&ws))
        .start();
    let port = r.ports[0];
    let host = "api.example.com";
    let g = get(port, host, "/api/users").await;
    assert_eq!(
        (g.backend().as_deref(), g.json()["path"].as_str()),
        (Some("api"), Some("/api/users"))
    );
    let node = ws_whoami(port, host, "/ws").await;
    assert!(node.starts_with("ws-"), "{node}");
    let sio = get(port, host, "/socket.io/?EIO=4&transport=polling").await;
    assert!(sio.backend().unwrap().starts_with("ws-"));
    assert_eq!(
        ws_whoami(port, host, "/socket.io/?EIO=4&transport=websocket").await,
        node,
        "ip_hash"
    );
    assert_eq!(
        get(port, "other.example.com", "/api/users").await.status,
        404
    );
    assert_eq!(api.ws_hits.load(std::sync::atomic::Ordering::SeqCst), 0);
}

/// `map $http_upgrade $connection_upgrade`: nothing to configure. A plain request reaches the
/// backend without Upgrade / `Connection: upgrade`; an upgrade on the same route works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_conditional_upgrade() {
    let b = Backend::start("app").await;
    let r = Recipe::load("nginx-conditional-upgrade")
        .pool("backend", &[b.addr])
        .start();
    let port = r.ports[0];
    let g = get(port, "example.com", "/page").await;
    let h = &g.json()["headers"];
    assert!(h.get("upgrade").is_none(), "{h}");
    let conn = h["connection"].as_str().unwrap_or("").to_ascii_lowercase();
    assert!(!conn.contains("upgrade"), "{h}");
    assert_eq!(ws_whoami(port, "example.com", "/live").await, "app");
    // A client's hop-by-hop Connection: upgrade without Upgrade is not an upgrade either.
    let g = get_with(port, "example.com", "/page", &[("Connection", "upgrade")]).await;
    assert!(g.json()["headers"].get("upgrade").is_none());
}

/// `limit_req rate=10r/s burst=20 nodelay` (429) and `limit_conn 10` (refused at accept).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_rate_limits() {
    let b = Backend::start("ws-1").await;
    let r = Recipe::load("nginx-rate-limits")
        .pool("websocket_backend", &[b.addr])
        .start();
    let port = r.ports[0];
    // A flood on one keep-alive connection: the burst passes, then 429 with Retry-After.
    let mut c = H1Conn::connect(port).await.unwrap();
    let mut codes = Vec::new();
    let t = Instant::now();
    for _ in 0..40 {
        let resp = c.get("ws.example.com", "/ws/x").await;
        if resp.status == 429 {
            assert!(resp.header("retry-after").is_some());
        }
        codes.push(resp.status);
    }
    let ok = codes.iter().filter(|&&c| c == 200).count();
    assert!(
        ok >= 19 && ok <= burst_allowance(t),
        "{codes:?} in {:?}",
        t.elapsed()
    );
    assert_eq!(ok + codes.iter().filter(|&&c| c == 429).count(), 40);
    // Per client address: another one is not limited.
    assert_eq!(
        get_from("127.0.0.2", port, "x", "/ws/x", &[]).await.status,
        200
    );
    // 10 open WebSockets from one address; the 11th connection is refused.
    let mut open = Vec::new();
    for _ in 0..10 {
        let s = connect_from("127.0.0.3", port).await;
        let (ws, _) = tokio_tungstenite::client_async("ws://x/ws", s)
            .await
            .unwrap();
        open.push(ws);
    }
    let mut s = connect_from("127.0.0.3", port).await;
    let _ = s.write_all(b"GET /ws/x HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(IO_TIMEOUT, s.read(&mut buf))
        .await
        .unwrap()
        .unwrap_or(0);
    assert_eq!(
        n,
        0,
        "11th connection served: {:?}",
        String::from_utf8_lossy(&buf[..n])
    );
    open.pop();
    assert!(
        eventually(Duration::from_secs(5), || async {
            let r = try_get_from("127.0.0.3", port, "x", "/ws/x", &[]).await;
            r.is_some_and(|r| r.status == 200)
        })
        .await,
        "a slot freed by a closed WebSocket"
    );
}

/// `log_format ... rt= uct= urt=`: one access-log line per request with the upstream
/// timings, and one per WebSocket when it closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_debug_log() {
    let b = Backend::start("ws-1").await;
    let r = Recipe::load("nginx-debug-log")
        .pool("websocket_backend", &[b.addr])
        .start();
    let port = r.ports[0];
    assert_eq!(get(port, "example.com", "/ws/logged").await.status, 200);
    let mut ws = ws_connect(port, "example.com", "/ws/live").await;
    ws_roundtrip(&mut ws, "hello").await;
    ws.close(None).await.unwrap();
    let upstream = format!("upstream=websocket_backend/{}", b.addr);
    let found = |needle: &str| {
        r.gw.wait_log_contains(needle, Duration::from_secs(5));
        r.gw.log()
            .lines()
            .find(|l| l.contains(needle))
            .map(str::to_string)
    };
    let line = found("\"GET /ws/logged HTTP/1.1\" 200").expect("access line");
    for part in [upstream.as_str(), " rt=", " uct=0.", " urt=0."] {
        assert!(line.contains(part), "{part} missing in {line}");
    }
    let line = found("\"GET /ws/live HTTP/1.1\" 101").expect("WebSocket access line");
    assert!(
        line.contains(" upgrade up=") && line.contains(&upstream),
        "{line}"
    );
}

/// `location /health { return 200 "OK\n"; }`: answered with every backend down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_health_endpoint() {
    let b = Backend::start("ws-1").await;
    let r = Recipe::load("nginx-health-endpoint")
        .pool("websocket_backend", &[b.addr])
        .start();
    b.stop();
    let port = r.ports[0];
    let h = get(port, "example.com", "/health").await;
    assert_eq!((h.status, h.text().as_str()), (200, "OK\n"));
    assert_eq!(h.header("content-type"), Some("text/plain"));
    assert_eq!(get(port, "example.com", "/ws").await.status, 502);
    assert_eq!(b.hits.load(std::sync::atomic::Ordering::SeqCst), 0);
}

/// The complete production config: redirect, TLS, security headers, `/health`, `/ws` and
/// Socket.IO on the cluster, rate and connection limits, long-lived WebSockets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_production() {
    let bs = start_backends(&["n1", "n2", "n3"]).await;
    let cert = TestCert::new();
    let r = Recipe::load("nginx-production")
        .pool("websocket_cluster", &addrs(&bs))
        .certs(&cert)
        .start();
    let (https, http) = (r.ports[0], r.ports[1]);
    let host = "ws.example.com";
    let red = get(http, host, "/ws").await;
    assert_eq!(
        red.header("location"),
        Some(format!("https://{host}:{https}/ws").as_str())
    );
    let health = cert.get(https, host, "/health").await;
    assert!(
        health.starts_with("HTTP/1.1 200") && health.ends_with("\r\n\r\nOK\n"),
        "{health}"
    );
    let page = cert.get(https, host, "/ws/x").await.to_ascii_lowercase();
    for h in [
        "strict-transport-security: max-age=63072000",
        "x-frame-options: deny",
        "x-content-type-options: nosniff",
        "\"x-forwarded-proto\":\"https\"",
        "\"x-forwarded-port\":",
    ] {
        assert!(page.contains(h), "{h} missing: {page}");
    }
    let mut ws = cert
        .wss(https, host, "/socket.io/?EIO=4&transport=websocket")
        .await;
    ws.send(WsMessage::Text("whoami".into())).await.unwrap();
    let who = tokio::time::timeout(IO_TIMEOUT, ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(who.into_text().unwrap().starts_with('n'));
    // limit_conn 10: the open wss is one; 9 more connections are served, the next refused.
    let mut held = Vec::new();
    for _ in 0..9 {
        held.push(cert.connect(https, host).await);
    }
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", https))
        .await
        .unwrap();
    let _ = s.write_all(b"\x16\x03\x01\x00\x05hello").await;
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(IO_TIMEOUT, s.read(&mut buf))
        .await
        .unwrap()
        .unwrap_or(0);
    assert_eq!(n, 0, "11th connection accepted");
    drop((held, ws, s));
    // limit_req burst=20: a flood over one keep-alive TLS connection meets 429.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut tls = cert.connect(https, host).await;
    let mut limited = 0;
    let t = Instant::now();
    for _ in 0..40 {
        tls.write_all(b"GET /ws/x HTTP/1.1\r\nHost: ws.example.com\r\n\r\n")
            .await
            .unwrap();
        let resp = read_one(&mut tls).await;
        limited += resp.starts_with("HTTP/1.1 429") as usize;
    }
    assert!(
        40 - limited <= burst_allowance(t),
        "{limited} of 40 refused"
    );
}

/// Most requests `rate: 10, burst: 20` lets through in the time since `t` (a slow machine
/// gets more, refilled at 10 per second).
fn burst_allowance(t: Instant) -> usize {
    21 + (t.elapsed().as_secs_f64() * 10.0).ceil() as usize
}

/// Reads one response with a Content-Length body from a keep-alive stream.
async fn read_one<S: tokio::io::AsyncRead + Unpin>(s: &mut S) -> String {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(IO_TIMEOUT, s.read(&mut byte))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            n,
            1,
            "closed mid response: {:?}",
            String::from_utf8_lossy(&buf)
        );
        buf.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&buf).into_owned();
    let len: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .expect("a Content-Length");
    let mut body = vec![0u8; len];
    tokio::time::timeout(IO_TIMEOUT, s.read_exact(&mut body))
        .await
        .unwrap()
        .unwrap();
    head + &String::from_utf8_lossy(&body)
}

// ---------------------------------------------------------------------------------------
// "Nginx, Websockets, SSL and Socket.IO deployment" (stunnel + HAProxy)
// ---------------------------------------------------------------------------------------

/// One port for the app and Socket.IO by path, TLS in front (the client address still
/// reaches the node), and checks frequent enough to restart the node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn haproxy_stunnel() {
    let app = Backend::start("webapp").await;
    let mut node = SioNode::start("node1", "/socket.io/");
    let cert = TestCert::new();
    let r = Recipe::load("haproxy-stunnel")
        .pool("webapp", &[app.addr])
        .pool("socket_io", &[node.addr])
        .certs(&cert)
        .start();
    let (https, http) = (r.ports[0], r.ports[1]);
    let page = cert.get(https, "example.com", "/").await;
    assert!(
        page.contains("x-backend: webapp") || page.contains("X-Backend: webapp"),
        "{page}"
    );
    assert!(
        page.contains(r#""x-forwarded-for":"127.0.0.1""#),
        "stunnel hid this: {page}"
    );
    assert_eq!(
        get(http, "example.com", "/").await.backend().as_deref(),
        Some("webapp")
    );
    let who = sio_websocket_whoami(http, "example.com", "/socket.io/").await;
    assert_eq!(who["node"], "node1");
    // Socket.IO over TLS, WebSocket transport, with the client's address.
    let mut wss = cert
        .wss(
            https,
            "example.com",
            "/socket.io/?EIO=4&transport=websocket",
        )
        .await;
    let open = wss.next().await.unwrap().unwrap().into_text().unwrap();
    assert!(open.starts_with("0{"), "{open}");
    wss.send(WsMessage::Text("40".into())).await.unwrap();
    assert!(wss
        .next()
        .await
        .unwrap()
        .unwrap()
        .into_text()
        .unwrap()
        .starts_with("40"));
    wss.send(WsMessage::Text(r#"421["whoami"]"#.into()))
        .await
        .unwrap();
    let ack = wss.next().await.unwrap().unwrap().into_text().unwrap();
    assert!(ack.contains(r#""x-forwarded-for":"127.0.0.1""#), "{ack}");
    assert!(ack.contains(r#""x-forwarded-proto":"https""#), "{ack}");
    drop(wss);
    // The node dies: marked down within ~2 checks of 1 s, the app keeps working.
    let port = node.addr.port();
    node.kill();
    let t = Instant::now();
    let down = eventually(Duration::from_secs(5), || async {
        status(&r.gw).await["pools"]["socket_io"]["backends"][0]["healthy"] == false
    })
    .await;
    assert!(down, "node not marked down");
    assert!(
        t.elapsed() < Duration::from_secs(4),
        "took {:?}",
        t.elapsed()
    );
    assert_eq!(
        get(http, "example.com", "/socket.io/?EIO=4&transport=polling")
            .await
            .status,
        503
    );
    assert_eq!(get(http, "example.com", "/").await.status, 200);
    // Restarted, it is back after one good check.
    let _node = SioNode::start_on("node1", "/socket.io/", Some(port));
    let up = eventually(Duration::from_secs(5), || async {
        get(http, "example.com", "/socket.io/?EIO=4&transport=polling")
            .await
            .status
            == 200
    })
    .await;
    assert!(up, "restarted node not taken back");
}

/// HAProxy `mode tcp` frontends (port 843, and TLS-terminated on its own port): bytes
/// relayed to the Socket.IO node untouched, WebSocket and polling alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn haproxy_tcp_mode() {
    let node = SioNode::start("node2", "/socket.io/");
    let cert = TestCert::new();
    let r = Recipe::load("haproxy-tcp-mode")
        .pool("sio_tcp", &[node.addr])
        .certs(&cert)
        .start();
    let (plain, tls) = (r.ports[0], r.ports[1]);
    sio_polling_handshake(plain, "example.com", "/socket.io/").await;
    let who = sio_websocket_whoami(plain, "example.com", "/socket.io/").await;
    assert_eq!(who["node"], "node2");
    // Layer 4: no HTTP proxy in between, so no forwarded headers were added.
    assert!(who["headers"].get("x-forwarded-for").is_none(), "{who}");
    let mut wss = cert
        .wss(tls, "example.com", "/socket.io/?EIO=4&transport=websocket")
        .await;
    let open = wss.next().await.unwrap().unwrap().into_text().unwrap();
    assert!(open.starts_with("0{"), "{open}");
    wss.send(WsMessage::Text("40".into())).await.unwrap();
    assert!(wss
        .next()
        .await
        .unwrap()
        .unwrap()
        .into_text()
        .unwrap()
        .starts_with("40"));
}

/// stunnel `protocol = proxy` in front: the client address of the PROXY header (v1 or v2)
/// reaches the app and the Socket.IO node, only from the trusted stunnel address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stunnel_proxy_protocol() {
    let app = Backend::start("webapp").await;
    let node = SioNode::start("node1", "/socket.io/");
    let r = Recipe::load("stunnel-proxy-protocol")
        .pool("webapp", &[app.addr])
        .pool("socket_io", &[node.addr])
        .start();
    let port = r.ports[0];
    let request = b"GET / HTTP/1.1\r\nHost: example.com\r\nConnection: close\r\n\r\n";
    let v1 = format!("PROXY TCP4 203.0.113.7 127.0.0.1 51000 {port}\r\n").into_bytes();
    let mut v2 = b"\r\n\r\n\0\r\nQUIT\n\x21\x11\x00\x0c".to_vec();
    v2.extend_from_slice(&[198, 51, 100, 9, 127, 0, 0, 1]);
    v2.extend_from_slice(&51000u16.to_be_bytes());
    v2.extend_from_slice(&port.to_be_bytes());
    for (header, client) in [(v1.clone(), "203.0.113.7"), (v2, "198.51.100.9")] {
        let r = http_bytes(port, &[header, request.to_vec()].concat())
            .await
            .unwrap();
        let h = &r.json()["headers"];
        assert_eq!(
            (&h["x-forwarded-for"], &h["x-real-ip"]),
            (&client.into(), &client.into())
        );
    }
    // Socket.IO over WebSocket behind the same header.
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    s.write_all(&v1).await.unwrap();
    let url = "ws://example.com/socket.io/?EIO=4&transport=websocket";
    let (mut ws, _) = tokio_tungstenite::client_async(url, s).await.unwrap();
    let open = ws_next_text(&mut ws).await;
    assert!(open.starts_with("0{"), "{open}");
    ws.send(WsMessage::Text("40".into())).await.unwrap();
    ws_next_text(&mut ws).await;
    ws.send(WsMessage::Text(r#"421["whoami"]"#.into()))
        .await
        .unwrap();
    let ack = ws_next_text(&mut ws).await;
    assert!(ack.contains(r#""x-forwarded-for":"203.0.113.7""#), "{ack}");
    // Without a header, or from a peer other than stunnel: nothing is served.
    for from in ["127.0.0.1", "127.0.0.2"] {
        let mut s = connect_from(from, port).await;
        let with = if from == "127.0.0.1" {
            vec![]
        } else {
            v1.clone()
        };
        let _ = s.write_all(&[with, request.to_vec()].concat()).await;
        let mut buf = Vec::new();
        let _ = tokio::time::timeout(IO_TIMEOUT, s.read_to_end(&mut buf))
            .await
            .unwrap();
        assert!(
            !buf.starts_with(b"HTTP/1.1 200"),
            "served from {from}: {buf:?}"
        );
    }
    assert_eq!(app.app_hits.load(std::sync::atomic::Ordering::SeqCst), 2);
}

async fn ws_next_text<S>(ws: &mut tokio_tungstenite::WebSocketStream<S>) -> String
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    match tokio::time::timeout(IO_TIMEOUT, ws.next()).await {
        Ok(Some(Ok(WsMessage::Text(t)))) => t,
        other => panic!("expected a text message, got {other:?}"),
    }
}
