//! Routing, path rewrites, fixed responses, redirects, header rules, forwarded headers and the
//! admin endpoints, through the real gateway binary in front of real backends.

mod common;
use common::*;

fn config(a: &Backend, b: &Backend, trusted: &str) -> String {
    format!(
        r#"
listeners: [ {{ address: "127.0.0.1:{{PORT}}" }} ]
admin: {{ address: "127.0.0.1:{{ADMIN}}" }}
forwarded: {{ trusted_proxies: [{trusted}] }}
upstreams:
  a: {{ servers: [ {{ address: "{a}" }} ] }}
  b: {{ servers: [ {{ address: "{b}" }} ] }}
routes:
  - match: {{ host: api.example.com, path_prefix: /v1/ }}
    upstream: b
    strip_prefix: true
    request_headers: {{ set: {{ X-Env: prod }}, add: {{ X-Tag: t1 }}, remove: [X-Debug] }}
    response_headers: {{ set: {{ X-Frame-Options: DENY }}, remove: [X-Remove-Me] }}
  - match: {{ host: "*.example.com" }}
    upstream: b
  - match: {{ path_prefix: /old/ }}
    redirect: {{ to: "https://new.example.com/new/", status: 301, keep_path: true }}
  - match: {{ path_prefix: /app/ }}
    upstream: a
    rewrite: /v2/
  - match: {{ path: /ping }}
    respond: {{ status: 200, body: "pong\n", headers: {{ Content-Type: text/plain }} }}
  - match: {{ path_prefix: /a/ }}
    upstream: a
"#,
        a = a.addr,
        b = b.addr
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_reach_the_right_pool_and_path() {
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let gw = Gateway::start(&config(&a, &b, ""));

    let r = get(gw.port, "api.example.com", "/v1/users?id=7").await;
    assert_eq!(r.status, 200);
    let j = r.json();
    assert_eq!(j["backend"], "b");
    assert_eq!(j["path"], "/users?id=7", "strip_prefix keeps the query");
    assert_eq!(j["headers"]["host"], "api.example.com", "Host is preserved");

    let j = get(gw.port, "www.example.com", "/anything").await.json();
    assert_eq!(j["backend"], "b", "wildcard host");
    assert_eq!(j["path"], "/anything");

    let j = get(gw.port, "other.test", "/app/x/y?z=1").await.json();
    assert_eq!(j["backend"], "a");
    assert_eq!(j["path"], "/v2/x/y?z=1", "rewrite replaces the prefix");

    let j = get(gw.port, "other.test", "/a/deep/path").await.json();
    assert_eq!(
        (j["backend"].as_str(), j["path"].as_str()),
        (Some("a"), Some("/a/deep/path"))
    );

    // api.example.com outside /v1/ falls through to the wildcard route.
    assert_eq!(
        get(gw.port, "api.example.com", "/v2/").await.json()["backend"],
        "b"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_route_is_404_and_fixed_responses_and_redirects_work() {
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let gw = Gateway::start(&config(&a, &b, ""));

    let r = get(gw.port, "other.test", "/nowhere").await;
    assert_eq!(r.status, 404);
    assert_eq!(
        a.app_hits.load(std::sync::atomic::Ordering::SeqCst)
            + b.app_hits.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "a 404 reaches no backend"
    );

    let r = get(gw.port, "other.test", "/ping").await;
    assert_eq!((r.status, r.text().as_str()), (200, "pong\n"));
    assert_eq!(r.header("content-type"), Some("text/plain"));

    let r = get(gw.port, "other.test", "/old/page?q=1").await;
    assert_eq!(r.status, 301);
    assert_eq!(
        r.header("location"),
        Some("https://new.example.com/new/page?q=1")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_rules_apply_to_request_and_response() {
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let gw = Gateway::start(&config(&a, &b, ""));
    let r = get_with(
        gw.port,
        "api.example.com",
        "/v1/h",
        &[("X-Debug", "1"), ("X-Tag", "t0")],
    )
    .await;
    let j = r.json();
    assert_eq!(j["headers"]["x-env"], "prod");
    assert_eq!(j["headers"]["x-tag"], "t0, t1", "add appends");
    assert!(
        j["headers"].get("x-debug").is_none(),
        "remove drops the header"
    );
    assert_eq!(r.header("x-frame-options"), Some("DENY"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_headers_from_an_untrusted_client() {
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let gw = Gateway::start(&config(&a, &b, ""));
    // 127.0.0.1 is not trusted here: a spoofed X-Forwarded-For is replaced, not appended.
    let j = get_with(
        gw.port,
        "other.test",
        "/a/x",
        &[
            ("X-Forwarded-For", "6.6.6.6"),
            ("X-Forwarded-Proto", "https"),
        ],
    )
    .await
    .json();
    let h = &j["headers"];
    assert_eq!(h["x-forwarded-for"], "127.0.0.1");
    assert_eq!(h["x-real-ip"], "127.0.0.1");
    assert_eq!(
        h["x-forwarded-proto"], "http",
        "an untrusted client cannot claim https"
    );
    assert_eq!(h["x-forwarded-host"], "other.test");
    assert_eq!(h["x-forwarded-port"], gw.port.to_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_headers_from_a_trusted_proxy() {
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let gw = Gateway::start(&config(&a, &b, "127.0.0.1/32"));
    let j = get_with(
        gw.port,
        "other.test",
        "/a/x",
        &[
            ("X-Forwarded-For", "203.0.113.9, 127.0.0.1"),
            ("X-Forwarded-Proto", "https"),
        ],
    )
    .await
    .json();
    let h = &j["headers"];
    assert_eq!(
        h["x-forwarded-for"], "203.0.113.9, 127.0.0.1, 127.0.0.1",
        "a trusted proxy's chain is appended to"
    );
    assert_eq!(
        h["x-real-ip"], "203.0.113.9",
        "real IP is the right-most untrusted hop"
    );
    assert_eq!(
        h["x-forwarded-proto"], "https",
        "a trusted proxy's proto is kept"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_health_status_and_access_log() {
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let gw = Gateway::start(&config(&a, &b, ""));
    let r = get(gw.admin_port, "localhost", "/health").await;
    assert_eq!(r.status, 200);
    get(gw.port, "other.test", "/a/logged").await;
    let s = get(gw.admin_port, "localhost", "/status").await.json();
    let backends = s["pools"]["a"]["backends"].as_array().unwrap();
    assert_eq!(backends[0]["address"], a.addr.to_string());
    assert_eq!(backends[0]["healthy"], true);
    assert_eq!(backends[0]["requests"], 1);
    // in_flight drops in the logging phase, just after the response is written.
    assert!(
        eventually(std::time::Duration::from_secs(3), || async {
            get(gw.admin_port, "localhost", "/status").await.json()["in_flight"] == 0
        })
        .await
    );
    assert!(
        eventually(std::time::Duration::from_secs(5), || async {
            gw.log().lines().any(|l| {
                l.contains("\"GET /a/logged HTTP/1.1\" 200")
                    && l.contains("route=routes[5]")
                    && l.contains(&format!("upstream=a/{}", a.addr))
                    && l.contains("uct=")
            })
        })
        .await,
        "access log line missing:\n{}",
        gw.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keepalive_client_gets_many_responses_on_one_connection() {
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let gw = Gateway::start(&config(&a, &b, ""));
    let mut c = H1Conn::connect(gw.port).await.unwrap();
    for i in 0..20 {
        let r = c
            .request(&format!("GET /a/{i} HTTP/1.1\r\nHost: x\r\n\r\n"))
            .await
            .unwrap();
        assert_eq!(r.json()["path"], format!("/a/{i}"));
    }
    let r = c
        .request("GET /nowhere HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(r.status, 404, "a 404 keeps the connection usable");
    let r = c
        .request("GET /a/after HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(r.status, 200);
}

/// With two plain listeners the port cannot come from the config: each connection reports the
/// port it really reached (X-Forwarded-Port), on both listeners.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_port_names_the_listener_reached() {
    let b = Backend::start("b").await;
    let second = free_port();
    let gw = Gateway::start(&format!(
        "listeners: [ {{ address: \"127.0.0.1:{{PORT}}\" }}, {{ address: \"127.0.0.1:{second}\" }} ]\nadmin: {{ address: \"127.0.0.1:{{ADMIN}}\" }}\nupstreams:\n  app: {{ servers: [ {{ address: \"{}\" }} ] }}\nroutes: [ {{ upstream: app }} ]\n",
        b.addr
    ));
    let first = get(gw.port, "x.test", "/p").await.json();
    assert_eq!(first["headers"]["x-forwarded-port"], gw.port.to_string());
    assert!(
        eventually(std::time::Duration::from_secs(5), || async {
            tokio::net::TcpStream::connect(("127.0.0.1", second))
                .await
                .is_ok()
        })
        .await,
        "second listener never accepted"
    );
    let other = get(second, "x.test", "/p").await.json();
    assert_eq!(other["headers"]["x-forwarded-port"], second.to_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absolute_form_targets_route_by_their_authority_and_go_upstream_in_origin_form() {
    // `GET http://evil/x` with no Host must not slip past a host route, nor reach the backend
    // with the absolute target and no Host of its own.
    let b = Backend::start("b").await;
    let gw = Gateway::start(&format!(
        r#"
listeners: [ {{ address: "127.0.0.1:{{PORT}}" }} ]
admin: {{ address: "127.0.0.1:{{ADMIN}}" }}
upstreams: {{ app: {{ servers: [ {{ address: "{}" }} ] }} }}
routes:
  - {{ match: {{ host: evil }}, respond: {{ status: 403, body: "no\n" }} }}
  - {{ upstream: app }}
"#,
        b.addr
    ));
    let r = http(
        gw.port,
        "GET http://evil/api/x HTTP/1.1\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    assert_eq!(r.status, 403, "routed past the host route: {}", r.text());
    assert_eq!(b.app_hits(), 0);

    let r = http(
        gw.port,
        "GET http://good:8080/api/y?q=1 HTTP/1.1\r\nHost: good:8080\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200);
    let j = r.json();
    assert_eq!(j["path"], "/api/y?q=1", "{j}");
    assert_eq!(j["headers"]["host"], "good:8080", "{j}");

    // A Host that disagrees with the target's authority is refused (Pingora's 400).
    let r = http(
        gw.port,
        "GET http://good/api/z HTTP/1.1\r\nHost: evil\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    assert_eq!(r.status, 400);
    assert_eq!(b.app_hits(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_listener_answers_get_under_an_ip_or_localhost_only() {
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let gw = Gateway::start(&config(&a, &b, ""));
    let ip_host = format!("127.0.0.1:{}", gw.admin_port);
    assert_eq!(get(gw.admin_port, &ip_host, "/status").await.status, 200);
    assert_eq!(get(gw.admin_port, "localhost", "/health").await.status, 200);
    // A DNS-rebinding page reaches the listener under its own name: refused.
    let r = get(gw.admin_port, "rebind.evil.example", "/status").await;
    assert_eq!(r.status, 403);
    assert!(!r.text().contains("backends"), "{}", r.text());
    for method in ["POST", "DELETE", "FOO"] {
        let r = http(
            gw.admin_port,
            &format!("{method} /status HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"),
        )
        .await
        .unwrap();
        assert_eq!(r.status, 405, "{method}");
        assert_eq!(r.header("allow"), Some("GET, HEAD"), "{method}");
    }
}

/// Routes are matched on the normalised path (issue 11): every other spelling of a denied path
/// is denied or refused and never reaches the backend, and what goes upstream is the
/// normalised path (after strip_prefix), or the raw one on a `raw_path` route.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paths_are_routed_and_sent_upstream_normalised() {
    let b = Backend::start("b").await;
    let gw = Gateway::start(&format!(
        r#"
listeners: [ {{ address: "127.0.0.1:{{PORT}}" }} ]
admin: {{ address: "127.0.0.1:{{ADMIN}}" }}
upstreams: {{ app: {{ servers: [ {{ address: "{}" }} ] }} }}
routes:
  - {{ match: {{ path: /admin }}, respond: {{ status: 403, body: "denied\n" }} }}
  - {{ match: {{ path_prefix: /private/ }}, respond: {{ status: 403, body: "denied\n" }} }}
  - {{ match: {{ path_prefix: /api/ }}, upstream: app, strip_prefix: true }}
  - {{ match: {{ path_prefix: /raw/ }}, upstream: app, raw_path: true }}
  - {{ match: {{ path_prefix: /old/ }}, redirect: {{ to: /new/, keep_path: true }} }}
  - {{ upstream: app }}
"#,
        b.addr
    ));
    let send = |target: &str| {
        let raw = format!("GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        async move { http(gw.port, &raw).await.unwrap() }
    };
    for target in [
        "/admin",
        "/%61dmin",
        "/%61%64%6d%69%6e",
        "//admin",
        "/./admin",
        "/x/../admin",
        "/%2e/admin",
        "/x/%2E%2e/admin",
        "/;/admin",
        "/.;x/admin",
        "/x/..;/admin",
        "/..;/admin",
        "/public/../private/x",
        "/public//..//private/./x",
        "/api/../admin",
        "/api/..%2F../admin",
        "/private/%2e/x/",
        "/x/..%2F..%2Fadmin",
        "/x/..\\admin",
        "http://x/x/../admin",
    ] {
        let r = send(target).await;
        assert!(
            matches!(r.status, 400 | 403),
            "{target} -> {} {}",
            r.status,
            r.text()
        );
    }
    assert_eq!(
        b.app_hits(),
        0,
        "a spelling of a denied path reached the backend"
    );

    for target in ["/x/%2e%2e/%2e%2e/etc", "/%zz", "/a%4", "/a%00b", "/../x"] {
        let r = send(target).await;
        assert_eq!(r.status, 400, "{target}: {}", r.text());
    }
    assert_eq!(b.app_hits(), 0);

    // Matching is case-sensitive (as nginx `location`), as documented: /ADMIN is another path.
    assert_eq!(send("/ADMIN").await.json()["path"], "/ADMIN");

    let cases = [
        ("/api/./x", "/x"),
        ("/api//x?q=/../%2e", "/x?q=/../%2e"),
        ("/api/%78/../y/%7e%2f", "/y/~%2F"),
        ("/p//q/./r/%7e?x=/../", "/p/q/r/~?x=/../"),
        ("/plain/path?q=1", "/plain/path?q=1"),
        ("/raw//a/./b%2f?q=1", "/raw//a/./b%2f?q=1"),
        ("/x/../raw/%2e/y", "/x/../raw/%2e/y"),
        ("http://x/a//b", "/a/b"),
    ];
    for (target, upstream) in cases {
        let r = send(target).await;
        assert_eq!(r.status, 200, "{target}: {}", r.text());
        assert_eq!(r.json()["path"], upstream, "{target}");
    }

    // keep_path appends the rest of the normalised path.
    let r = send("/old//a/./b?q=1").await;
    assert_eq!(r.header("location"), Some("/new/a/b?q=1"));

    // Raw UTF-8 is neither decoded nor escaped (non-UTF-8 targets never get this far: the
    // HTTP/1 parser refuses them).
    let raw = |target: &'static [u8]| {
        let mut req = b"GET ".to_vec();
        req.extend_from_slice(target);
        req.extend_from_slice(b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        async move { http_bytes(gw.port, &req).await.unwrap().json()["path"].clone() }
    };
    assert_eq!(raw("/a//caf\u{e9}/.".as_bytes()).await, "/a/caf\u{e9}/");
    assert_eq!(raw("/raw//\u{e9}".as_bytes()).await, "/raw//\u{e9}");
}
