//! Client-address headers through the real gateway binary: what an untrusted client sends
//! (`Forwarded`, `True-Client-IP`, `X_Real_IP`, ...) never reaches the backend, a trusted
//! proxy's does, header names with `_` are dropped unless `allow_underscore_headers`, and the
//! RFC 7239 `Forwarded` header when `rfc7239` is on. The demo backend echoes the request
//! headers it received (names lower-cased, repeated names joined). Checked on a route without
//! header rules or filters, where the forwarded headers go on the wire only, and on one with
//! `request_headers`, where they go into the request's header map first.

mod common;
use common::*;

/// A route with header rules: the forwarded headers go through the header map.
const MAP: &str = "request_headers: { set: { X-Route: r } }";

fn config(b: &Backend, forwarded: &str) -> String {
    config_route(b, forwarded, "")
}

/// `route` is added to the route's keys.
fn config_route(b: &Backend, forwarded: &str, route: &str) -> String {
    format!(
        r#"
listeners: [ {{ address: "127.0.0.1:{{PORT}}" }} ]
admin: {{ address: "127.0.0.1:{{ADMIN}}" }}
forwarded: {{ {forwarded} }}
upstreams:
  a: {{ servers: [ {{ address: "{b}" }} ] }}
routes:
  - match: {{ path_prefix: / }}
    upstream: a
    {route}
"#,
        b = b.addr
    )
}

/// Every client-address header a backend might believe, as sent on the wire.
const SPOOFED: &[(&str, &str)] = &[
    ("Forwarded", "for=6.6.6.6;proto=https;host=evil.test"),
    ("X-Forwarded-For", "6.6.6.6"),
    ("X-Real-IP", "6.6.6.6"),
    ("True-Client-IP", "6.6.6.6"),
    ("X-Client-IP", "6.6.6.6"),
    ("CF-Connecting-IP", "6.6.6.6"),
    ("Fastly-Client-IP", "6.6.6.6"),
    ("X-Cluster-Client-IP", "6.6.6.6"),
    ("X-Original-Forwarded-For", "6.6.6.6"),
    ("X-Forwarded", "for=6.6.6.6"),
    ("Client-IP", "6.6.6.6"),
    ("X-Forwarded-Proto", "https"),
    ("X-Forwarded-Host", "evil.test"),
    ("X-Forwarded-Port", "1"),
];

/// Header names with underscores (nginx ignores them by default).
const UNDERSCORED: &[(&str, &str)] = &[
    ("X_Forwarded_For", "6.6.6.6"),
    ("X_Real_IP", "6.6.6.6"),
    ("X_App_Thing", "u"),
];

/// GET / with all of the above (raw, so the names go out exactly as written); the backend's
/// view of the request headers.
async fn echoed(port: u16) -> serde_json::Map<String, serde_json::Value> {
    let mut raw = String::from("GET /x HTTP/1.1\r\nHost: other.test\r\nX-App: kept\r\n");
    for (k, v) in SPOOFED.iter().chain(UNDERSCORED) {
        raw.push_str(&format!("{k}: {v}\r\n"));
    }
    raw.push_str("Connection: close\r\n\r\n");
    let r = http(port, &raw).await.expect("request");
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["headers"].as_object().expect("headers").clone()
}

fn get<'a>(h: &'a serde_json::Map<String, serde_json::Value>, k: &str) -> Option<&'a str> {
    h.get(k).and_then(|v| v.as_str())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn untrusted_client_address_headers_never_reach_the_backend() {
    let b = Backend::start("a").await;
    for route in ["", MAP] {
        let gw = Gateway::start(&config_route(&b, "trusted_proxies: []", route));
        let h = echoed(gw.port).await;
        for (k, v) in &h {
            let v = v.as_str().unwrap_or_default();
            assert!(
                !v.contains("6.6.6.6") && !v.contains("evil.test"),
                "{route:?}: {k}: {v} reached the backend; headers {h:?}"
            );
            assert!(!k.contains('_'), "{route:?}: {k} reached the backend");
        }
        for gone in [
            "forwarded",
            "true-client-ip",
            "x-client-ip",
            "cf-connecting-ip",
            "fastly-client-ip",
            "x-cluster-client-ip",
            "x-original-forwarded-for",
            "x-forwarded",
            "client-ip",
        ] {
            assert!(h.get(gone).is_none(), "{route:?}: {gone} passed: {h:?}");
        }
        assert_eq!(get(&h, "x-forwarded-for"), Some("127.0.0.1"), "{route:?}");
        assert_eq!(get(&h, "x-real-ip"), Some("127.0.0.1"), "{route:?}");
        assert_eq!(get(&h, "x-forwarded-proto"), Some("http"), "{route:?}");
        assert_eq!(get(&h, "x-forwarded-host"), Some("other.test"), "{route:?}");
        assert_eq!(
            get(&h, "x-forwarded-port"),
            Some(gw.port.to_string().as_str()),
            "{route:?}"
        );
        assert_eq!(get(&h, "x-app"), Some("kept"), "{route:?}");
        let set = (!route.is_empty()).then_some("r");
        assert_eq!(get(&h, "x-route"), set, "{route:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trusted_proxys_headers_pass_but_underscore_names_do_not() {
    let b = Backend::start("a").await;
    for route in ["", MAP] {
        let gw = Gateway::start(&config_route(
            &b,
            "trusted_proxies: [127.0.0.1/32], x_real_ip: false, rfc7239: true",
            route,
        ));
        let h = echoed(gw.port).await;
        for (k, v) in SPOOFED {
            let k = k.to_ascii_lowercase();
            // Each once: what the gateway adds replaces the proxy's header or appends to it.
            let want = match k.as_str() {
                "x-forwarded-for" => "6.6.6.6, 127.0.0.1",
                "forwarded" => {
                    "for=6.6.6.6;proto=https;host=evil.test, \
                     for=127.0.0.1;proto=http;host=other.test"
                }
                _ => v,
            };
            assert_eq!(get(&h, &k), Some(want), "{route:?}: {k}: {h:?}");
        }
        for (k, _) in UNDERSCORED {
            let k = k.to_ascii_lowercase();
            assert!(h.get(&k).is_none(), "{route:?}: {k} passed: {h:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allow_underscore_headers_lets_them_through() {
    let b = Backend::start("a").await;
    let gw = Gateway::start(&config(
        &b,
        "trusted_proxies: [127.0.0.1/32], allow_underscore_headers: true",
    ));
    let h = echoed(gw.port).await;
    for (k, v) in UNDERSCORED {
        assert_eq!(get(&h, &k.to_ascii_lowercase()), Some(*v), "{k}: {h:?}");
    }
    drop(gw);
    // From an untrusted client, an underscore spelling of a client-address header is still
    // removed (CGI-style backends read X_Real_IP as X-Real-IP); other names pass.
    let gw = Gateway::start(&config(&b, "allow_underscore_headers: true"));
    let h = echoed(gw.port).await;
    assert_eq!(get(&h, "x_app_thing"), Some("u"), "{h:?}");
    assert!(h.get("x_real_ip").is_none(), "{h:?}");
    assert!(h.get("x_forwarded_for").is_none(), "{h:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rfc7239_forwarded_header() {
    let b = Backend::start("a").await;
    let gw = Gateway::start(&config(&b, "rfc7239: true"));
    let h = echoed(gw.port).await;
    assert_eq!(
        get(&h, "forwarded"),
        Some("for=127.0.0.1;proto=http;host=other.test"),
        "an untrusted client's Forwarded is replaced: {h:?}"
    );
    drop(gw);

    let gw = Gateway::start(&config(
        &b,
        "rfc7239: true, trusted_proxies: [127.0.0.1/32]",
    ));
    let raw = "GET /x HTTP/1.1\r\nHost: other.test:8080\r\n\
               Forwarded: for=\"[2001:db8::9]:4711\";proto=https, for=127.0.0.1\r\n\
               Connection: close\r\n\r\n";
    let r = http(gw.port, raw).await.expect("request");
    let h = r.json()["headers"].as_object().expect("headers").clone();
    assert_eq!(
        get(&h, "forwarded"),
        Some(
            "for=\"[2001:db8::9]:4711\";proto=https, for=127.0.0.1, \
             for=127.0.0.1;proto=http;host=\"other.test:8080\""
        ),
        "a trusted proxy's Forwarded is appended to: {h:?}"
    );
    assert_eq!(
        get(&h, "x-real-ip"),
        Some("2001:db8::9"),
        "with no X-Forwarded-For, the client address comes from Forwarded: {h:?}"
    );
}
