//! Prometheus `/metrics` on the admin listener, scraped with a real text-format parser after
//! real traffic through the gateway binary: requests by route and status class, bytes,
//! upstream response times, WebSockets, backend health, retries, rate limiting, Socket.IO
//! handshakes and "Session ID unknown" answers.

mod common;
use common::*;
use std::collections::HashMap;
use std::time::Duration;
use tokio::io::AsyncWriteExt;

/// One scrape: (name, sorted labels) -> value.
struct Scrape(HashMap<(String, Vec<(String, String)>), f64>);

impl Scrape {
    async fn take(admin: u16) -> Scrape {
        let r = get(admin, "localhost", "/metrics").await;
        assert_eq!(r.status, 200);
        assert!(r.header("content-type").unwrap().starts_with("text/plain"));
        let text = r.text();
        let lines = text.lines().map(|l| Ok(l.to_string()));
        let parsed = prometheus_parse::Scrape::parse(lines).expect("valid text format");
        let mut m = HashMap::new();
        for s in parsed.samples {
            let mut labels: Vec<(String, String)> = s
                .labels
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            labels.sort();
            let v = match s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => v,
                prometheus_parse::Value::Histogram(h) => {
                    // The sample count: the +Inf bucket.
                    h.iter().map(|b| b.count).fold(0.0, f64::max)
                }
                prometheus_parse::Value::Summary(_) => continue,
            };
            m.insert((s.metric, labels), v);
        }
        Scrape(m)
    }

    fn get(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let mut l: Vec<(String, String)> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        l.sort();
        *self
            .0
            .get(&(name.to_string(), l.clone()))
            .unwrap_or_else(|| panic!("no sample {name}{l:?}"))
    }
}

/// A tiny engine.io server: answers a polling handshake with an open packet.
async fn engine_io_node() -> std::net::SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            tokio::spawn(async move {
                if read_head(&mut s).await.is_none() {
                    return;
                }
                let body = r#"0{"sid":"AAAAAAAAAAAAAAAAAAAA","upgrades":["websocket"],"pingInterval":25000,"pingTimeout":20000,"maxPayload":1000000}"#;
                let resp = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=UTF-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(resp.as_bytes()).await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_follow_the_traffic() {
    let app = Backend::start("app").await;
    let down = Backend::start("down").await;
    let sio = engine_io_node().await;
    let yaml = format!(
        r#"
listeners: [ {{ address: "127.0.0.1:{{PORT}}" }} ]
admin: {{ address: "127.0.0.1:{{ADMIN}}" }}
upstreams:
  app: {{ servers: [ {{ address: "{app}" }} ] }}
  pair:
    servers: [ {{ address: "{app}" }}, {{ address: "{down}" }} ]
    health_check: {{ interval: 200ms, timeout: 200ms, fails: 1 }}
    balance: round_robin
    affinity: {{ socketio: true }}
  sio:
    servers: [ {{ address: "{sio}" }} ]
    affinity: {{ socketio: true }}
routes:
  - {{ match: {{ path: /ping }}, respond: {{ body: "pong" }} }}
  - {{ match: {{ path_prefix: /limited/ }}, upstream: app, rate_limit: {{ rate: 1, per: 10s, burst: 1 }} }}
  - {{ match: {{ host: sio.test }}, upstream: sio }}
  - {{ match: {{ path_prefix: /pair/ }}, upstream: pair }}
  - {{ match: {{ path_prefix: /app/ }}, upstream: app }}
"#,
        app = app.addr,
        down = down.addr,
    );
    let gw = Gateway::start(&yaml);
    for _ in 0..3 {
        assert_eq!(get(gw.port, "localhost", "/app/x").await.status, 200);
    }
    assert_eq!(get(gw.port, "localhost", "/ping").await.status, 200);
    assert_eq!(get(gw.port, "localhost", "/nowhere").await.status, 404);
    assert_eq!(get(gw.port, "localhost", "/limited/a").await.status, 200);
    assert_eq!(get(gw.port, "localhost", "/limited/a").await.status, 429);
    // A Socket.IO handshake tagged with its node.
    let hs = get(gw.port, "sio.test", "/socket.io/?EIO=4&transport=polling").await;
    assert!(hs.text().contains("AAAAAAAAAAAAAAAAAAAA."), "{}", hs.text());
    // A WebSocket, open at the first scrape.
    let mut ws = ws_connect(gw.port, "localhost", "/app/ws").await;
    assert_eq!(ws_roundtrip(&mut ws, "hi").await, "hi");
    // A node goes down: health says 0, and its sids get "Session ID unknown".
    let tag = get(gw.admin_port, "localhost", "/status").await.json()["pools"]["pair"]["backends"]
        [1]["tag"]
        .as_str()
        .unwrap()
        .to_string();
    down.stop();
    let down_seen = eventually(Duration::from_secs(5), || async {
        Scrape::take(gw.admin_port).await.get(
            "gateway_backend_up",
            &[("pool", "pair"), ("backend", &down.addr.to_string())],
        ) == 0.0
    })
    .await;
    assert!(down_seen, "backend_up falls to 0");
    let r = get(
        gw.port,
        "localhost",
        &format!("/pair/socket.io/?EIO=4&transport=polling&sid=AAAAAAAAAAAAAAAAAAAA.{tag}"),
    )
    .await;
    // (/pair/socket.io/ is not the Socket.IO path: this is a plain request to the pool.)
    assert_eq!(r.status, 200);

    let m = Scrape::take(gw.admin_port).await;
    let req = |route: &str, class: &str| {
        m.get(
            "gateway_requests_total",
            &[("route", route), ("class", class)],
        )
    };
    assert_eq!(req("routes[4]", "2xx"), 3.0, "three /app/x");
    assert_eq!(req("routes[0]", "2xx"), 1.0, "/ping");
    assert_eq!(req("-", "4xx"), 1.0, "the 404 had no route");
    assert_eq!(req("routes[1]", "2xx"), 1.0);
    assert_eq!(req("routes[1]", "4xx"), 1.0);
    assert_eq!(
        m.get("gateway_rate_limited_total", &[("route", "routes[1]")]),
        1.0
    );
    assert_eq!(m.get("gateway_websockets_open", &[("pool", "app")]), 1.0);
    assert!(m.get("gateway_connections_open", &[]) >= 1.0);
    assert!(m.get("gateway_sent_bytes_total", &[]) > 0.0);
    assert!(
        m.get("gateway_upstream_response_seconds", &[("pool", "app")]) >= 3.0,
        "response-time histogram counts the proxied requests"
    );
    let sio_node = [("pool", "sio"), ("backend", &*sio.to_string())];
    assert_eq!(m.get("gateway_socketio_handshakes_total", &sio_node), 1.0);
    let app_in_pair = [("pool", "pair"), ("backend", &*app.addr.to_string())];
    assert_eq!(m.get("gateway_backend_up", &app_in_pair), 1.0);
    let down_in_pair = [("pool", "pair"), ("backend", &*down.addr.to_string())];
    assert!(m.get("gateway_health_check_failures_total", &down_in_pair) >= 1.0);

    // The WebSocket closes: counted as a 101 with its bytes, no longer open.
    ws.close(None).await.ok();
    drop(ws);
    let closed = eventually(Duration::from_secs(5), || async {
        Scrape::take(gw.admin_port)
            .await
            .get("gateway_websockets_open", &[("pool", "app")])
            == 0.0
    })
    .await;
    assert!(closed);
    let m = Scrape::take(gw.admin_port).await;
    assert_eq!(
        m.get(
            "gateway_requests_total",
            &[("route", "routes[4]"), ("class", "1xx")]
        ),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_unknown_answers_are_counted() {
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let yaml = format!(
        r#"
listeners: [ {{ address: "127.0.0.1:{{PORT}}" }} ]
admin: {{ address: "127.0.0.1:{{ADMIN}}" }}
upstreams:
  rt:
    servers: [ {{ address: "{a}" }}, {{ address: "{b}" }} ]
    health_check: {{ interval: 200ms, timeout: 200ms, fails: 1 }}
    affinity: {{ socketio: true }}
routes: [ {{ upstream: rt }} ]
"#,
        a = a.addr,
        b = b.addr
    );
    let gw = Gateway::start(&yaml);
    let tag = get(gw.admin_port, "localhost", "/status").await.json()["pools"]["rt"]["backends"][1]
        ["tag"]
        .as_str()
        .unwrap()
        .to_string();
    b.stop();
    let path = format!("/socket.io/?EIO=4&transport=polling&sid=AAAAAAAAAAAAAAAAAAAA.{tag}");
    for _ in 0..2 {
        assert_eq!(get(gw.port, "x", &path).await.status, 400);
    }
    let m = Scrape::take(gw.admin_port).await;
    assert_eq!(
        m.get("gateway_socketio_session_unknown_total", &[("pool", "rt")]),
        2.0
    );
}
