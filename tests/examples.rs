//! The benchmark tools in `examples/` run and report sane figures (tiny sizes; the real runs
//! are `bench/run.sh`). `bare_proxy` (the benchmark's bare Pingora reference) proxies for real;
//! the user examples `jwt_auth` and `tenant_router` run as gateways in front of real backends;
//! `api_key_filter` and `demo_backend` are exercised by other tests.

mod common;
use common::*;
use std::process::Command;

fn run(name: &str, args: &[&str]) -> String {
    let out = Command::new(example_bin(name))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{name}: {e} (build with --examples)"));
    assert!(
        out.status.success(),
        "{name} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn sid_table_bench_reports_memory_per_session() {
    let out = run("sid_table_bench", &["--sessions", "2000"]);
    assert!(
        out.contains("B/session") && out.contains("heap_bytes()"),
        "{out}"
    );
}

#[test]
fn route_bench_reports_lookup_cost() {
    let out = run("route_bench", &[]);
    assert!(out.contains("10000") || out.contains("10,000"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wsbench_echo_through_a_backend() {
    let b = Backend::start("n1").await;
    let addr = b.addr.to_string();
    let out = tokio::task::spawn_blocking(move || {
        run(
            "wsbench",
            &["echo", "--addr", &addr, "--conns", "4", "--duration", "1s"],
        )
    })
    .await
    .unwrap();
    let line = out
        .lines()
        .find(|l| l.starts_with('{'))
        .unwrap_or_else(|| panic!("no JSON line: {out}"));
    let j: serde_json::Value = serde_json::from_str(line).unwrap();
    assert!(j["messages"].as_u64().unwrap() > 10, "{j}");
    assert_eq!(j["errors"], 0, "{j}");
}

/// The benchmark's reference point proxies for real (same Pingora build as the gateway).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bare_proxy_forwards_to_its_upstream() {
    let b = Backend::start("n1").await;
    let port = free_port();
    let mut child = Command::new(example_bin("bare_proxy"))
        .args([
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--upstream",
            &b.addr.to_string(),
            "--work-stealing",
            "false",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("bare_proxy (build with --examples)");
    let ok = eventually(std::time::Duration::from_secs(10), || async {
        try_get(port, "/hello").await == Some(200)
    })
    .await;
    let resp = if ok {
        Some(get(port, "localhost", "/hello").await)
    } else {
        None
    };
    let _ = child.kill();
    let _ = child.wait();
    let resp = resp.expect("bare_proxy did not answer within 10 s");
    assert_eq!(resp.status, 200);
    assert_eq!(
        resp.backend().as_deref(),
        Some("n1"),
        "answered by the backend"
    );
}

/// Status of `GET path`, or None when nothing answers yet.
async fn try_get(port: u16, path: &str) -> Option<u16> {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .ok()?;
    let mut buf = Vec::new();
    tokio::time::timeout(std::time::Duration::from_secs(2), s.read_to_end(&mut buf))
        .await
        .ok()?
        .ok()?;
    std::str::from_utf8(buf.get(9..12)?).ok()?.parse().ok()
}

/// An example gateway binary, built by `cargo build --examples`.
fn example_gateway(name: &str) -> String {
    let bin = example_bin(name);
    assert!(
        std::path::Path::new(&bin).exists(),
        "{bin} not built: run `cargo build --examples` (scripts/test.sh does)"
    );
    bin
}

/// `bin -t -c <yaml>`: (success, stdout + stderr).
fn check_config(bin: &str, yaml: &str) -> (bool, String) {
    let dir = unique_temp_dir("gateway-check-example");
    let path = dir.join("gateway.yaml");
    std::fs::write(&path, yaml).unwrap();
    let out = Command::new(bin)
        .args(["-t", "-c", path.to_str().unwrap()])
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

const JWT_SECRET: &str = "test-secret-0123456789-abcdefghijklmnop";

/// An HS256 token with `claims`, signed with `secret`.
fn jwt(secret: &str, claims: serde_json::Value) -> String {
    jwt_alg(jsonwebtoken::Algorithm::HS256, secret, claims)
}

fn jwt_alg(alg: jsonwebtoken::Algorithm, secret: &str, claims: serde_json::Value) -> String {
    let key = jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()).unwrap();
    jsonwebtoken::encode(&jsonwebtoken::Header::new(alg), &claims, &key).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_auth_example_checks_bearer_tokens() {
    let bin = example_gateway("jwt_auth");
    let b = Backend::start("api").await;
    let yaml = format!(
        "listeners: [ {{ address: \"127.0.0.1:{{PORT}}\" }} ]
admin: {{ address: \"127.0.0.1:{{ADMIN}}\" }}
upstreams: {{ api: {{ servers: [ {{ address: \"{}\" }} ] }} }}
routes:
  - match: {{ path_prefix: /api/ }}
    upstream: api
    filters:
      - name: jwt_auth
        config:
          secret: \"{JWT_SECRET}\"
          issuer: https://auth.test
          audience: gw
          leeway: 5s
          claim_header: {{ sub: X-User, role: X-Role }}
",
        b.addr
    );
    let gw = Gateway::start_bin(&bin, &yaml);
    let now = jsonwebtoken::get_current_timestamp();
    let claims = |extra: serde_json::Value| {
        let mut c = serde_json::json!({
            "sub": "alice", "iss": "https://auth.test", "aud": "gw", "exp": now + 300,
        });
        for (k, v) in extra.as_object().unwrap() {
            if v.is_null() {
                c.as_object_mut().unwrap().remove(k);
            } else {
                c[k] = v.clone();
            }
        }
        c
    };
    let bearer = |token: &str| format!("Bearer {token}");

    // A valid token: the backend gets the claim headers, not the token nor the client's X-Role.
    let token = jwt(JWT_SECRET, claims(serde_json::json!({})));
    let r = get_with(
        gw.port,
        "x",
        "/api/me",
        &[("Authorization", &bearer(&token)), ("X-Role", "admin")],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = &r.json()["headers"];
    assert_eq!(seen["x-user"], "alice", "{seen}");
    assert!(
        seen.get("authorization").is_none(),
        "token not sent on: {seen}"
    );
    assert!(
        seen.get("x-role").is_none(),
        "client's X-Role dropped: {seen}"
    );
    // The scheme is case-insensitive; a non-string claim is sent as its text.
    let token = jwt(JWT_SECRET, claims(serde_json::json!({ "role": 7 })));
    let r = get_with(
        gw.port,
        "x",
        "/api/me",
        &[("Authorization", &format!("bearer {token}"))],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["headers"]["x-role"], "7");
    assert_eq!(b.app_hits(), 2);

    // Refused before any backend: expired (past the 5 s leeway), wrong signature, not yet
    // valid, wrong issuer / audience, no exp, another algorithm, not a JWT.
    let expired = jwt(JWT_SECRET, claims(serde_json::json!({ "exp": now - 60 })));
    let r = get_with(
        gw.port,
        "x",
        "/api/me",
        &[("Authorization", &bearer(&expired))],
    )
    .await;
    assert_eq!(r.status, 401);
    let challenge = r.header("www-authenticate").unwrap_or_default();
    assert!(
        challenge.starts_with(r#"Bearer error="invalid_token""#) && challenge.contains("expired"),
        "{challenge}"
    );
    let hs512 = jwt_alg(
        jsonwebtoken::Algorithm::HS512,
        JWT_SECRET,
        claims(serde_json::json!({})),
    );
    let refused = [
        (
            "wrong signature",
            jwt(
                "another-secret-0123456789-abcdefghijkl",
                claims(serde_json::json!({})),
            ),
        ),
        (
            "nbf ahead",
            jwt(JWT_SECRET, claims(serde_json::json!({ "nbf": now + 600 }))),
        ),
        (
            "nbf as a string",
            jwt(
                JWT_SECRET,
                claims(serde_json::json!({ "nbf": "99999999999" })),
            ),
        ),
        (
            "wrong issuer",
            jwt(
                JWT_SECRET,
                claims(serde_json::json!({ "iss": "https://evil.test" })),
            ),
        ),
        (
            "no issuer",
            jwt(JWT_SECRET, claims(serde_json::json!({ "iss": null }))),
        ),
        (
            "wrong audience",
            jwt(JWT_SECRET, claims(serde_json::json!({ "aud": "other" }))),
        ),
        (
            "no exp",
            jwt(JWT_SECRET, claims(serde_json::json!({ "exp": null }))),
        ),
        ("HS512", hs512),
        ("not a JWT", "abc.def.ghi".to_string()),
    ];
    for (what, token) in &refused {
        let r = get_with(
            gw.port,
            "x",
            "/api/me",
            &[("Authorization", &bearer(token))],
        )
        .await;
        assert_eq!(r.status, 401, "{what}");
        assert_eq!(
            r.header("www-authenticate"),
            Some(r#"Bearer error="invalid_token""#),
            "{what}"
        );
        assert_eq!(r.text(), "invalid bearer token\n", "{what}");
    }
    // No token at all (RFC 6750: a challenge without an error code).
    for headers in [
        vec![],
        vec![("Authorization", "Basic YWxpY2U6cHc=")],
        vec![("Authorization", "Bearer ")],
    ] {
        let r = get_with(gw.port, "x", "/api/me", &headers).await;
        assert_eq!(r.status, 401, "{headers:?}");
        assert_eq!(r.header("www-authenticate"), Some("Bearer"), "{headers:?}");
    }
    assert_eq!(b.app_hits(), 2, "refused requests never reach the backend");
}

#[test]
fn jwt_auth_example_checks_its_config() {
    let bin = example_gateway("jwt_auth");
    let route = |config: &str| {
        format!("upstreams: {{ a: {{ servers: [ {{ address: \"127.0.0.1:1\" }} ] }} }}\nroutes: [ {{ upstream: a, filters: [ {{ name: jwt_auth, config: {config} }} ] }} ]\n")
    };
    let (ok, out) = check_config(
        &bin,
        &route("{ secret: \"0123456789abcdef0123456789abcdef\" }"),
    );
    assert!(ok, "{out}");
    let (ok, out) = check_config(&bin, &route("{ secret: short-secret }"));
    assert!(!ok);
    assert!(
        out.contains(
            "routes[0].filters[0].config: secret: must be at least 32 bytes for HS256 (got 12)"
        ),
        "{out}"
    );
    let (ok, out) = check_config(
        &bin,
        &route(
            "{ secret: \"0123456789abcdef0123456789abcdef\", claim_header: { sub: \"X User\" } }",
        ),
    );
    assert!(!ok);
    assert!(
        out.contains(
            "routes[0].filters[0].config: claim_header.sub: invalid header name \"X User\""
        ),
        "{out}"
    );
    let (ok, out) = check_config(
        &bin,
        &route("{ secret: \"0123456789abcdef0123456789abcdef\", leeway: soon }"),
    );
    assert!(!ok);
    assert!(
        out.contains("routes[0].filters[0].config.leeway: invalid duration"),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_router_example_picks_the_pool_from_a_header() {
    let bin = example_gateway("tenant_router");
    let acme = Backend::start("acme").await;
    let globex = Backend::start("globex").await;
    let shared = Backend::start("shared").await;
    let yaml = format!(
        "listeners: [ {{ address: \"127.0.0.1:{{PORT}}\" }} ]
admin: {{ address: \"127.0.0.1:{{ADMIN}}\" }}
upstreams:
  pool-acme: {{ servers: [ {{ address: \"{}\" }} ] }}
  pool-globex: {{ servers: [ {{ address: \"{}\" }} ] }}
  pool-shared: {{ servers: [ {{ address: \"{}\" }} ] }}
routes:
  - match: {{ path_prefix: /api/ }}
    upstream: pool-shared
    filters:
      - name: tenant
        config:
          tenants: {{ acme: pool-acme, globex: pool-globex, initech: pool-gone }}
          default: pool-shared
  - match: {{ path_prefix: /strict/ }}
    upstream: pool-shared
    filters:
      - {{ name: tenant, config: {{ header: X-Org, tenants: {{ acme: pool-acme }} }} }}
",
        acme.addr, globex.addr, shared.addr
    );
    let gw = Gateway::start_bin(&bin, &yaml);
    let via = |path: &'static str, headers: Vec<(&'static str, &'static str)>| {
        let port = gw.port;
        async move { get_with(port, "x", path, &headers).await }
    };
    for (tenant, backend) in [
        ("acme", "acme"),
        ("globex", "globex"),
        ("umbrella", "shared"),
        ("ACME", "shared"),
    ] {
        let r = via("/api/x", vec![("X-Tenant", tenant)]).await;
        assert_eq!(r.status, 200, "{tenant}: {}", r.text());
        assert_eq!(r.backend().as_deref(), Some(backend), "{tenant}");
    }
    let r = via("/api/x", vec![]).await;
    assert_eq!(
        r.backend().as_deref(),
        Some("shared"),
        "no header: the default pool"
    );

    // A tenant mapped to a pool that is not in `upstreams:`: 502, said in the log.
    let r = via("/api/x", vec![("X-Tenant", "initech")]).await;
    assert_eq!(r.status, 502);
    assert!(
        gw.wait_log_contains(
            "unknown pool \"pool-gone\"",
            std::time::Duration::from_secs(5)
        ),
        "{}",
        gw.log()
    );

    // Without a default: unknown or missing tenant -> 404; several values -> 400.
    let r = via("/strict/x", vec![("X-Org", "acme")]).await;
    assert_eq!(r.backend().as_deref(), Some("acme"));
    let hits = (acme.app_hits(), globex.app_hits(), shared.app_hits());
    for headers in [
        vec![("X-Org", "globex")],
        vec![("X-Tenant", "acme")],
        vec![],
    ] {
        let r = via("/strict/x", headers.clone()).await;
        assert_eq!(r.status, 404, "{headers:?}");
        assert_eq!(r.text(), "unknown tenant\n");
    }
    let r = via("/strict/x", vec![("X-Org", "acme"), ("X-Org", "globex")]).await;
    assert_eq!(r.status, 400);
    assert_eq!(
        (acme.app_hits(), globex.app_hits(), shared.app_hits()),
        hits,
        "refused requests reach no backend"
    );
}

#[test]
fn tenant_router_example_checks_its_config() {
    let bin = example_gateway("tenant_router");
    let route = |config: &str| {
        format!("upstreams: {{ a: {{ servers: [ {{ address: \"127.0.0.1:1\" }} ] }} }}\nroutes: [ {{ upstream: a, filters: [ {{ name: tenant, config: {config} }} ] }} ]\n")
    };
    let (ok, out) = check_config(&bin, &route("{ tenants: { acme: a } }"));
    assert!(ok, "{out}");
    for (config, error) in [
        (
            "{ tenants: {} }",
            "config: tenants: needs at least one tenant",
        ),
        ("{ default: a }", "config: missing field `tenants`"),
        (
            "{ tenants: { acme: \"pool a\" } }",
            "config: tenants.acme: \"pool a\" is not a pool name",
        ),
        (
            "{ tenants: { acme: a }, default: \"\" }",
            "config: default: \"\" is not a pool name",
        ),
        (
            "{ tenants: { acme: a }, header: \"X Tenant\" }",
            "config: header: invalid header name",
        ),
        (
            "{ tenants: { acme: a }, pools: {} }",
            "config: unknown field `pools`",
        ),
    ] {
        let (ok, out) = check_config(&bin, &route(config));
        assert!(!ok, "{config}");
        assert!(
            out.contains(&format!("routes[0].filters[0].{error}")),
            "{config}: {out}"
        );
    }
}
