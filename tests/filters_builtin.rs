//! The built-in filters through the real binary: `basic_auth`, `ip_filter`, `cors` and
//! `compress` (`request_id` is in tests/filters.rs), and `gateway -t` on their bad configs.

mod common;
use common::*;

use base64::Engine as _;
use std::io::Read as _;
use std::net::SocketAddr;
use tokio::io::AsyncWriteExt;

/// A gateway config: `top` (extra top-level sections), pools `api` (the demo backend `b`) and
/// `raw` (a `RawBackend`, when given), and `routes` (YAML list items, indented by 2).
fn config(b: &Backend, raw: Option<SocketAddr>, top: &str, routes: &str) -> String {
    let raw = raw.map_or(String::new(), |a| {
        format!(
            "  raw: {{ servers: [ {{ address: \"{a}\" }} ], affinity: {{ socketio: true }} }}\n"
        )
    });
    format!(
        "listeners: [ {{ address: \"127.0.0.1:{{PORT}}\" }} ]\nadmin: {{ address: \"127.0.0.1:{{ADMIN}}\" }}\n{top}\nupstreams:\n  api: {{ servers: [ {{ address: \"{}\" }} ] }}\n{raw}routes:\n{routes}  - {{ match: {{ path_prefix: / }}, upstream: api }}\n",
        b.addr
    )
}

fn basic(user_pass: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(user_pass)
    )
}

/// A backend for what the demo backend does not send: `text/event-stream`, a Socket.IO
/// polling handshake, its own CORS headers. One response per connection.
struct RawBackend {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for RawBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

const SIO_OPEN: &str = "0{\"sid\":\"AbCdEfGhIjKlMnOpQrSt\",\"upgrades\":[\"websocket\"],\"pingInterval\":25000,\"pingTimeout\":20000,\"maxPayload\":1000000}";

fn sse_body() -> String {
    "data: an event that repeats itself\n\n".repeat(30)
}

impl RawBackend {
    async fn start() -> RawBackend {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = listener.accept().await else {
                    return;
                };
                tokio::spawn(async move {
                    let Some(buf) = read_head(&mut s).await else {
                        return;
                    };
                    let head = String::from_utf8_lossy(&buf).into_owned();
                    let path = head.split(' ').nth(1).unwrap_or("/").to_string();
                    let (ct, extra, body) = if path.starts_with("/sse") {
                        ("text/event-stream", "", sse_body())
                    } else if path.starts_with("/socket.io/") {
                        ("text/plain; charset=UTF-8", "", SIO_OPEN.to_string())
                    } else if path.starts_with("/own-cors") {
                        (
                            "application/json",
                            "Access-Control-Allow-Origin: https://backend.example\r\nVary: Origin\r\n",
                            "{\"cors\":\"the backend's\"}".to_string(),
                        )
                    } else {
                        ("text/plain", "", "plain text ".repeat(100))
                    };
                    let resp = format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: {ct}\r\n{extra}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = s.write_all(resp.as_bytes()).await;
                    let _ = s.shutdown().await;
                });
            }
        });
        RawBackend { addr, task }
    }
}

fn gunzip(body: &[u8]) -> String {
    let mut out = String::new();
    flate2::read::GzDecoder::new(body)
        .read_to_string(&mut out)
        .expect("a gzip body");
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_auth_refuses_then_accepts_and_does_not_forward_credentials() {
    let b = Backend::start("a").await;
    let alice = bcrypt::hash("alice-pw", 4).unwrap();
    let bob = format!(
        "{{SHA256}}{}",
        base64::engine::general_purpose::STANDARD.encode(ring::digest::digest(
            &ring::digest::SHA256,
            b"bob-token-0123456789"
        ))
    );
    let routes = format!(
        "  - match: {{ path_prefix: /api/ }}\n    upstream: api\n    filters: [ {{ name: basic_auth, config: {{ realm: staff, users: {{ alice: \"{alice}\", bob: \"{bob}\" }}, user_header: X-Auth-User }} }} ]\n  - match: {{ path_prefix: /fwd/ }}\n    upstream: api\n    filters: [ {{ name: basic_auth, config: {{ users: {{ alice: \"{alice}\" }}, forward_authorization: true }} }} ]\n"
    );
    let gw = Gateway::start(&config(&b, None, "", &routes));

    let r = get(gw.port, "x", "/api/one").await;
    assert_eq!(r.status, 401);
    assert_eq!(
        r.header("www-authenticate"),
        Some("Basic realm=\"staff\", charset=\"UTF-8\"")
    );
    assert_eq!(r.text(), "401 unauthorized\n");
    for bad in [
        basic("alice:wrong"),
        basic("carol:alice-pw"),
        basic("bob:alice-pw"),
        "Bearer abc".to_string(),
        "Basic !!!".to_string(),
    ] {
        let r = get_with(gw.port, "x", "/api/one", &[("Authorization", &bad)]).await;
        assert_eq!(r.status, 401, "{bad}");
        assert!(r.header("www-authenticate").is_some());
    }
    assert_eq!(b.app_hits(), 0, "refused before the backend");

    // Twice: the second is answered from the cache of verified credentials.
    for _ in 0..2 {
        let r = get_with(
            gw.port,
            "x",
            "/api/one",
            &[
                ("Authorization", &basic("alice:alice-pw")),
                ("X-Auth-User", "mallory"),
            ],
        )
        .await;
        assert_eq!(r.status, 200);
        let j = r.json();
        assert!(
            j["headers"].get("authorization").is_none(),
            "Authorization is not forwarded: {j}"
        );
        assert_eq!(
            j["headers"]["x-auth-user"], "alice",
            "the client's own X-Auth-User is replaced"
        );
    }
    let r = get_with(
        gw.port,
        "x",
        "/api/two",
        &[("Authorization", &basic("bob:bob-token-0123456789"))],
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["headers"]["x-auth-user"], "bob");

    // forward_authorization: true
    let auth = basic("alice:alice-pw");
    let r = get_with(gw.port, "x", "/fwd/x", &[("Authorization", &auth)]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["headers"]["authorization"], auth.as_str());
    let r = get(gw.port, "x", "/fwd/x").await;
    assert_eq!(
        r.header("www-authenticate"),
        Some("Basic realm=\"Restricted\", charset=\"UTF-8\"")
    );
    // Other routes are open.
    assert_eq!(get(gw.port, "x", "/open").await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ip_filter_uses_the_client_ip_after_trusted_proxies() {
    let b = Backend::start("a").await;
    let routes = "  - match: { path_prefix: /api/ }\n    upstream: api\n    filters: [ { name: ip_filter, config: { allow: [10.0.0.0/8, \"2001:db8::/32\"], deny: [10.9.0.0/16] } } ]\n  - match: { path_prefix: /local/ }\n    upstream: api\n    filters: [ { name: ip_filter, config: { deny: [10.0.0.0/8] } } ]\n";
    let trusted = Gateway::start(&config(
        &b,
        None,
        "forwarded: { trusted_proxies: [127.0.0.1/32] }",
        routes,
    ));
    let xff = |ip: &'static str| [("X-Forwarded-For", ip)];
    let r = get_with(trusted.port, "x", "/api/a", &xff("10.1.2.3")).await;
    assert_eq!(r.status, 200, "allowed network, from a trusted proxy");
    let r = get_with(trusted.port, "x", "/api/a", &xff("2001:db8::7")).await;
    assert_eq!(r.status, 200);
    let r = get_with(trusted.port, "x", "/api/a", &xff("10.9.0.1")).await;
    assert_eq!(r.status, 403, "deny wins over allow");
    assert_eq!(r.text(), "403 forbidden\n");
    let r = get_with(trusted.port, "x", "/api/a", &xff("192.168.0.1")).await;
    assert_eq!(r.status, 403, "outside allow");
    let r = get(trusted.port, "x", "/api/a").await;
    assert_eq!(r.status, 403, "the proxy itself (127.0.0.1) is not allowed");
    let r = get_with(trusted.port, "x", "/local/a", &xff("10.1.2.3")).await;
    assert_eq!(r.status, 403, "deny only");
    let r = get_with(trusted.port, "x", "/local/a", &xff("192.168.0.1")).await;
    assert_eq!(r.status, 200, "deny only: the rest passes");
    assert_eq!(get(trusted.port, "x", "/other").await.status, 200);
    let hits = b.app_hits();

    // From an untrusted peer, X-Forwarded-For is not believed: the client is 127.0.0.1.
    let untrusted = Gateway::start(&config(&b, None, "", routes));
    let r = get_with(untrusted.port, "x", "/api/a", &xff("10.1.2.3")).await;
    assert_eq!(r.status, 403, "a spoofed allowed address");
    let r = get_with(untrusted.port, "x", "/local/a", &xff("10.1.2.3")).await;
    assert_eq!(r.status, 200, "a spoofed denied address changes nothing");
    assert_eq!(b.app_hits(), hits + 1);
    assert!(
        trusted
            .log()
            .contains("ip_filter: client 10.9.0.1 refused: 403"),
        "{}",
        trusted.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_answers_preflights_and_marks_allowed_origins_only() {
    let b = Backend::start("a").await;
    let raw = RawBackend::start().await;
    let cors = "{ name: cors, config: { allow_origins: [\"https://a.example\"], allow_methods: [GET, PUT], allow_headers: [Content-Type, X-Token], expose_headers: [X-Backend], allow_credentials: true, max_age: 10m } }";
    let routes = format!(
        "  - match: {{ path_prefix: /api/ }}\n    upstream: api\n    filters: [ {cors} ]\n  - match: {{ path_prefix: /any/ }}\n    upstream: api\n    filters: [ {{ name: cors, config: {{ allow_origins: [\"*\"] }} }} ]\n  - match: {{ path_prefix: /own-cors-plain }}\n    upstream: raw\n  - match: {{ path_prefix: /own-cors }}\n    upstream: raw\n    filters: [ {cors} ]\n"
    );
    let gw = Gateway::start(&config(&b, Some(raw.addr), "", &routes));

    // Preflight from an allowed origin: answered by the gateway.
    let preflight = |origin: &'static str| {
        [
            ("Origin", origin),
            ("Access-Control-Request-Method", "PUT"),
            ("Access-Control-Request-Headers", "content-type"),
        ]
    };
    let r = send(
        gw.port,
        "OPTIONS",
        "x",
        "/api/thing",
        &preflight("https://a.example"),
        b"",
    )
    .await;
    assert_eq!(r.status, 204);
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://a.example")
    );
    assert_eq!(r.header("access-control-allow-credentials"), Some("true"));
    assert_eq!(r.header("access-control-allow-methods"), Some("GET, PUT"));
    assert_eq!(
        r.header("access-control-allow-headers"),
        Some("Content-Type, X-Token")
    );
    assert_eq!(r.header("access-control-max-age"), Some("600"));
    assert!(r.header("vary").unwrap().contains("Origin"));
    assert!(r.body.is_empty());
    // From another origin: no CORS header, the browser refuses.
    let r = send(
        gw.port,
        "OPTIONS",
        "x",
        "/api/thing",
        &preflight("https://evil.example"),
        b"",
    )
    .await;
    assert_eq!(r.status, 204);
    assert!(r
        .headers
        .iter()
        .all(|(k, _)| !k.to_ascii_lowercase().starts_with("access-control-")));
    assert_eq!(b.app_hits(), 0, "preflights do not reach the backend");

    // Simple and actual requests.
    let r = get_with(
        gw.port,
        "x",
        "/api/thing",
        &[("Origin", "https://a.example")],
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://a.example")
    );
    assert_eq!(r.header("access-control-allow-credentials"), Some("true"));
    assert_eq!(r.header("access-control-expose-headers"), Some("X-Backend"));
    assert_eq!(r.header_all("vary"), ["Origin"]);
    let r = send(
        gw.port,
        "PUT",
        "x",
        "/api/thing",
        &[("Origin", "https://A.example")],
        b"{}",
    )
    .await;
    assert_eq!(r.json()["method"], "PUT");
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://A.example")
    );
    let r = get_with(
        gw.port,
        "x",
        "/api/thing",
        &[("Origin", "https://evil.example")],
    )
    .await;
    assert_eq!(r.status, 200, "the request is not refused, only unmarked");
    assert!(r.header("access-control-allow-origin").is_none());
    assert!(r.header("access-control-allow-credentials").is_none());
    assert_eq!(
        r.header_all("vary"),
        ["Origin"],
        "caches keep origins apart"
    );
    let r = get(gw.port, "x", "/api/thing").await;
    assert!(r.header("access-control-allow-origin").is_none());

    // "*"
    let r = get_with(gw.port, "x", "/any/x", &[("Origin", "https://b.example")]).await;
    assert_eq!(r.header("access-control-allow-origin"), Some("*"));
    assert!(r.header("access-control-allow-credentials").is_none());
    assert!(r.header("vary").is_none());
    let r = send(
        gw.port,
        "OPTIONS",
        "x",
        "/any/x",
        &preflight("https://b.example"),
        b"",
    )
    .await;
    assert_eq!(r.header("access-control-allow-origin"), Some("*"));
    assert_eq!(
        r.header("access-control-allow-methods"),
        Some("GET, HEAD, POST")
    );

    // A backend that does CORS itself (Socket.IO's `cors` option) is left alone, on a cors
    // route and elsewhere.
    for path in ["/own-cors", "/own-cors-plain"] {
        let r = get_with(gw.port, "x", path, &[("Origin", "https://a.example")]).await;
        assert_eq!(r.status, 200);
        assert_eq!(
            r.header("access-control-allow-origin"),
            Some("https://backend.example"),
            "{path}"
        );
        assert!(
            r.header("access-control-allow-credentials").is_none(),
            "{path}"
        );
        assert_eq!(r.header_all("vary"), ["Origin"], "{path}");
    }
    // Routes without the filter add nothing.
    let r = get_with(gw.port, "x", "/plain", &[("Origin", "https://a.example")]).await;
    assert!(r.header("access-control-allow-origin").is_none());
    assert!(r.header("vary").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compress_gzips_for_the_client_but_never_sse_websocket_or_small() {
    let b = Backend::start("a").await;
    let raw = RawBackend::start().await;
    let routes = "  - match: { path_prefix: /api/ }\n    upstream: api\n    filters: [ { name: compress, config: { level: 6, min_size: 64 } } ]\n  - match: { path_prefix: /bytes/ }\n    upstream: api\n    filters: [ { name: compress, config: { min_size: 64 } } ]\n  - match: { path_prefix: /sse }\n    upstream: raw\n    filters: [ { name: compress } ]\n  - match: { path_prefix: /socket.io/ }\n    upstream: raw\n    filters: [ { name: compress, config: { min_size: 16 } } ]\n";
    let gw = Gateway::start(&config(&b, Some(raw.addr), "", routes));
    let gz = [("Accept-Encoding", "gzip")];

    // A JSON echo, gzip'd, decoded by a real gzip decoder.
    let plain = get(gw.port, "x", "/api/echo?x=1").await;
    assert!(plain.header("content-encoding").is_none(), "not asked for");
    assert!(plain
        .header("vary")
        .unwrap()
        .eq_ignore_ascii_case("accept-encoding"));
    let r = get_with(gw.port, "x", "/api/echo?x=1", &gz).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-encoding"), Some("gzip"));
    assert!(r.header("content-length").is_none());
    assert!(r
        .header("vary")
        .unwrap()
        .eq_ignore_ascii_case("accept-encoding"));
    let j: serde_json::Value = serde_json::from_str(&gunzip(&r.body)).unwrap();
    assert_eq!(j["path"], "/api/echo?x=1");
    assert_eq!(j["backend"], "a");
    assert_eq!(
        j["headers"]["accept-encoding"], "gzip",
        "sent on to the backend"
    );
    // q-values: gzip refused, br preferred.
    let r = get_with(
        gw.port,
        "x",
        "/api/echo",
        &[("Accept-Encoding", "gzip;q=0, br;q=0.5, zstd;q=0.1")],
    )
    .await;
    assert_eq!(r.header("content-encoding"), Some("br"));
    // Not a compressible type; HEAD.
    let r = get_with(gw.port, "x", "/bytes/4000", &gz).await;
    assert_eq!(r.body.len(), 4000);
    assert!(r.header("content-encoding").is_none(), "octet-stream");
    let r = send(gw.port, "HEAD", "x", "/api/echo", &gz, b"").await;
    assert!(r.header("content-encoding").is_none(), "HEAD");

    // text/event-stream is never compressed.
    let r = get_with(gw.port, "x", "/sse", &gz).await;
    assert_eq!(r.status, 200);
    assert!(r.header("content-encoding").is_none());
    assert_eq!(r.text(), sse_body());

    // A WebSocket upgrade on the compress route: a plain 101 and an echo.
    let (mut ws, resp) = ws_connect_with(gw.port, "x", "/api/ws", &gz)
        .await
        .expect("upgrade");
    assert_eq!(resp.status(), 101);
    assert!(resp.headers().get("content-encoding").is_none());
    assert_eq!(ws_roundtrip(&mut ws, "hello").await, "hello");
    drop(ws);

    // The Socket.IO polling handshake is tagged with the node, then compressed.
    let status = get(gw.admin_port, "localhost", "/status").await.json();
    let tag = status["pools"]["raw"]["backends"][0]["tag"]
        .as_str()
        .expect("the node's tag")
        .to_string();
    let r = get_with(
        gw.port,
        "x",
        "/socket.io/?EIO=4&transport=polling&t=abc",
        &gz,
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-encoding"), Some("gzip"));
    let body = gunzip(&r.body);
    assert!(
        body.starts_with(&format!("0{{\"sid\":\"AbCdEfGhIjKlMnOpQrSt.{tag}\"")),
        "tagged, then compressed: {body}"
    );
    let r = get(gw.port, "x", "/socket.io/?EIO=4&transport=polling&t=abd").await;
    assert!(r.header("content-encoding").is_none());
    assert!(r.text().contains(&format!("AbCdEfGhIjKlMnOpQrSt.{tag}")));
}

/// `gateway -t` names the key of each built-in filter's bad config.
#[test]
fn bad_builtin_filter_configs_are_reported_with_key_paths() {
    let bcrypt = bcrypt::hash("pw", 4).unwrap();
    let yaml = format!(
        r#"upstreams: {{ a: {{ servers: [ {{ address: "127.0.0.1:1" }} ] }} }}
routes:
  - upstream: a
    filters:
      - {{ name: basic_auth, config: {{ users: {{ alice: hunter2 }} }} }}
      - {{ name: basic_auth, config: {{ users: {{ bob: "$apr1$x$y" }} }} }}
      - {{ name: basic_auth, config: {{ users: {{ ok: "{bcrypt}" }}, user_header: "bad header" }} }}
      - {{ name: basic_auth, config: {{ users: [ alice ] }} }}
      - {{ name: basic_auth }}
  - upstream: a
    filters:
      - {{ name: ip_filter, config: {{ allow: [ 10.0.0.0/8, 10.0.0.0/40 ] }} }}
      - {{ name: ip_filter, config: {{ deny: [ nope ] }} }}
      - {{ name: ip_filter }}
      - {{ name: ip_filter, config: {{ allow: 10.0.0.0/8 }} }}
  - upstream: a
    filters:
      - {{ name: cors, config: {{ allow_origins: [ "https://a.example/" ] }} }}
      - {{ name: cors, config: {{ allow_origins: [ "*" ], allow_credentials: true }} }}
      - {{ name: cors, config: {{ allow_origins: [ "*" ], max_age: soon }} }}
      - {{ name: cors, config: {{ allow_origin: [ "*" ] }} }}
  - upstream: a
    filters:
      - {{ name: compress, config: {{ level: 12 }} }}
      - {{ name: compress, config: {{ algorithms: [ gzip, deflate ] }} }}
      - {{ name: compress, config: {{ min_size: lots }} }}
      - {{ name: compress, config: {{ content_types: [ json ] }} }}
  - upstream: a
    filters: [ {{ name: basic_auth, config: {{ users: {{ ok: "{bcrypt}" }} }} }}, {{ name: ip_filter, config: {{ allow: [ "::1" ] }} }}, {{ name: cors, config: {{ allow_origins: [ "http://localhost:3000" ] }} }}, {{ name: compress }} ]
"#
    );
    let (code, out) = check_config(&yaml);
    assert_ne!(code, 0, "{out}");
    for want in [
        "routes[0].filters[0].config: users.alice: not a password hash (plaintext passwords are refused)",
        "routes[0].filters[1].config: users.bob: unsupported password hash scheme \"$apr1$\"",
        "routes[0].filters[2].config: user_header: invalid header name \"bad header\"",
        "routes[0].filters[3].config.users: invalid type: sequence, expected a map",
        "routes[0].filters[4].config: missing field `users`",
        "routes[1].filters[0].config: allow[1]: invalid prefix length in \"10.0.0.0/40\"",
        "routes[1].filters[1].config: deny[0]: invalid IP network \"nope\"",
        "routes[1].filters[2].config: allow: give allow and/or deny networks",
        "routes[1].filters[3].config.allow: invalid type: string \"10.0.0.0/8\", expected a sequence",
        "routes[2].filters[0].config: allow_origins[0]: \"https://a.example/\" is not an origin",
        "routes[2].filters[1].config: allow_origins: \"*\" cannot be used with allow_credentials: true",
        "routes[2].filters[2].config.max_age: invalid duration \"soon\"",
        "routes[2].filters[3].config: unknown field `allow_origin`",
        "routes[3].filters[0].config: level: 12 is not in 1..=9",
        "routes[3].filters[1].config: algorithms[1]: unknown coding \"deflate\" (gzip, br or zstd)",
        "routes[3].filters[2].config.min_size: invalid size \"lots\"",
        "routes[3].filters[3].config: content_types[0]: \"json\" is not a media type",
    ] {
        assert!(out.contains(want), "missing {want:?} in:\n{out}");
    }
    assert!(
        !out.contains("hunter2"),
        "a plaintext password is not echoed"
    );
    assert!(!out.contains("routes[4]"), "the good route is fine:\n{out}");
}
