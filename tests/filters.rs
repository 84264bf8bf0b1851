//! Rust filter hooks: the built-in `request_id` filter, and the custom binary in
//! `examples/api_key_filter.rs` built on `gateway::run_with`.

mod common;
use common::*;

fn config(b: &Backend, filters: &str) -> String {
    format!(
        "listeners: [ {{ address: \"127.0.0.1:{{PORT}}\" }} ]\nadmin: {{ address: \"127.0.0.1:{{ADMIN}}\" }}\nupstreams:\n  api: {{ servers: [ {{ address: \"{}\" }} ] }}\nroutes:\n  - match: {{ path_prefix: /api/ }}\n    upstream: api\n    filters: {filters}\n  - match: {{ path_prefix: / }}\n    upstream: api\n",
        b.addr
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_id_is_sent_upstream_and_echoed() {
    let b = Backend::start("a").await;
    let gw = Gateway::start(&config(&b, "[ { name: request_id } ]"));
    let r = get(gw.port, "x", "/api/one").await;
    let id = r
        .header("x-request-id")
        .expect("response carries the id")
        .to_string();
    assert_eq!(
        r.json()["headers"]["x-request-id"],
        id.as_str(),
        "backend saw the same id"
    );
    let r2 = get(gw.port, "x", "/api/two").await;
    assert_ne!(r2.header("x-request-id").unwrap(), id, "ids are unique");
    let r3 = get_with(
        gw.port,
        "x",
        "/api/three",
        &[("X-Request-Id", "client-chosen-1")],
    )
    .await;
    assert_eq!(
        r3.header("x-request-id"),
        Some("client-chosen-1"),
        "a valid incoming id is kept"
    );
    assert!(
        get(gw.port, "x", "/other")
            .await
            .header("x-request-id")
            .is_none(),
        "filters are per route"
    );
    // The id is a `RequestId` in the request's extensions: the access log shows it.
    assert!(
        eventually(std::time::Duration::from_secs(5), || async {
            let log = gw.log();
            log.lines()
                .any(|l| l.contains("GET /api/one ") && l.contains(&format!(" rid={id}")))
                && log
                    .lines()
                    .any(|l| l.contains("GET /api/three ") && l.ends_with(" rid=client-chosen-1"))
                && log
                    .lines()
                    .any(|l| l.contains("GET /other ") && !l.contains("rid="))
        })
        .await,
        "access log lines with rid=:\n{}",
        gw.log()
    );
}

#[test]
fn unknown_filter_and_bad_filter_config_are_config_errors() {
    let (code, out) = check_config("upstreams: { a: { servers: [ { address: \"127.0.0.1:1\" } ] } }\nroutes: [ { upstream: a, filters: [ { name: nope } ] } ]\n");
    assert_ne!(code, 0);
    assert!(
        out.contains("routes[0].filters[0].name: unknown filter \"nope\" (registered: basic_auth, compress, cors, ip_filter, request_id)"),
        "{out}"
    );
    let (code, out) = check_config("upstreams: { a: { servers: [ { address: \"127.0.0.1:1\" } ] } }\nroutes: [ { upstream: a, filters: [ { name: request_id, config: { header: \"bad header\" } } ] } ]\n");
    assert_ne!(code, 0);
    assert!(
        out.contains("routes[0].filters[0].config: header: invalid header name"),
        "{out}"
    );
}

/// A filter's `config:` is read into its typed config at load: `-t` names the key at fault.
#[test]
fn bad_builtin_filter_config_is_reported_with_its_key_path() {
    let route = |config: &str| {
        format!("upstreams: {{ a: {{ servers: [ {{ address: \"127.0.0.1:1\" }} ] }} }}\nroutes: [ {{ upstream: a }}, {{ upstream: a, filters: [ {{ name: request_id }}, {{ name: request_id, config: {config} }} ] }} ]\n")
    };
    let (code, out) = check_config(&route("{ trust_incoming: maybe }"));
    assert_ne!(code, 0);
    assert!(
        out.contains("routes[1].filters[1].config.trust_incoming: invalid type: string \"maybe\", expected a boolean"),
        "{out}"
    );
    let (code, out) = check_config(&route("{ headr: x-id }"));
    assert_ne!(code, 0);
    assert!(
        out.contains("routes[1].filters[1].config: unknown field `headr`, expected `header` or `trust_incoming`"),
        "{out}"
    );
    let (code, out) = check_config(&route("[ x-id ]"));
    assert_ne!(code, 0);
    assert!(
        out.contains("routes[1].filters[1].config: invalid type: sequence, expected struct"),
        "{out}"
    );
    let (code, out) = check_config(&route("{ header: x-id, trust_incoming: false }"));
    assert_eq!(code, 0, "{out}");
}

/// `<custom binary> -t -c <yaml>`: (success, output).
fn check_with(bin: &str, yaml: &str) -> (bool, String) {
    let dir = unique_temp_dir("gateway-check-custom");
    let path = dir.join("gateway.yaml");
    std::fs::write(&path, yaml).unwrap();
    let out = std::process::Command::new(bin)
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

#[test]
fn custom_binary_reports_its_filter_config_errors_with_key_paths() {
    let bin = example_bin("api_key_filter");
    assert!(
        std::path::Path::new(&bin).exists(),
        "{bin} not built: run `cargo build --examples` (scripts/test.sh does)"
    );
    let route = |filters: &str| {
        format!("upstreams: {{ a: {{ servers: [ {{ address: \"127.0.0.1:1\" }} ] }} }}\nroutes: [ {{ upstream: a, filters: {filters} }} ]\n")
    };
    let (ok, out) = check_with(
        &bin,
        &route("[ { name: api_key, config: { keys: [ k-123 ] } } ]"),
    );
    assert!(!ok);
    assert!(
        out.contains("routes[0].filters[0].config.keys: invalid type: sequence, expected a map"),
        "{out}"
    );
    let (ok, out) = check_with(&bin, &route("[ { name: api_key, config: { keys: {} } } ]"));
    assert!(!ok);
    assert!(
        out.contains("routes[0].filters[0].config: keys: needs at least one key"),
        "{out}"
    );
    let (ok, out) = check_with(&bin, &route("[ { name: api_key } ]"));
    assert!(!ok);
    assert!(
        out.contains("routes[0].filters[0].config: missing field `keys`"),
        "{out}"
    );
    let (ok, out) = check_with(&bin, &route("[ { name: nope } ]"));
    assert!(!ok);
    assert!(
        out.contains(
            "routes[0].filters[0].name: unknown filter \"nope\" (registered: api_key, basic_auth, compress, cors, ip_filter, request_id)"
        ),
        "{out}"
    );
    // The built-in filters' config is checked by the custom binary too.
    let (ok, out) = check_with(
        &bin,
        &route("[ { name: request_id, config: { header: \"x id\" } } ]"),
    );
    assert!(!ok);
    assert!(
        out.contains("routes[0].filters[0].config: header: invalid header name \"x id\""),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn custom_binary_with_api_key_filter() {
    let bin = example_bin("api_key_filter");
    assert!(
        std::path::Path::new(&bin).exists(),
        "{bin} not built: run `cargo build --examples` (scripts/test.sh does)"
    );
    let b = Backend::start("a").await;
    let gw = Gateway::start_bin(
        &bin,
        &config(
            &b,
            "[ { name: api_key, config: { keys: { k-123: alice } } } ]",
        ),
    );
    let r = get(gw.port, "x", "/api/secret").await;
    assert_eq!(r.status, 401);
    assert_eq!(r.header("www-authenticate"), Some("ApiKey"));
    assert_eq!(
        r.header("content-length"),
        Some("17"),
        "computed by respond"
    );
    assert_eq!(r.text(), "invalid API key\r\n");
    let r = send(gw.port, "HEAD", "x", "/api/secret", &[], b"").await;
    assert_eq!(r.status, 401);
    assert_eq!(r.header("content-length"), Some("17"));
    assert!(r.text().is_empty(), "no body to a HEAD request");
    assert_eq!(b.app_hits(), 0, "rejected before reaching the backend");
    let r = get_with(gw.port, "x", "/api/secret", &[("X-Api-Key", "k-123")]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["headers"]["x-api-user"], "alice");
    assert!(
        r.json()["headers"].get("x-api-key").is_none(),
        "the key is not passed on"
    );
    // The custom binary still knows the built-in filters and rejects its own bad config.
    let out = std::process::Command::new(&bin)
        .args(["-t", "-c", gw.config_path.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limit_keyed_by_a_filter_counts_per_key_owner() {
    let bin = example_bin("api_key_filter");
    let b = Backend::start("a").await;
    let yaml = format!(
        r#"
listeners: [ {{ address: "127.0.0.1:{{PORT}}" }} ]
admin: {{ address: "127.0.0.1:{{ADMIN}}" }}
upstreams: {{ a: {{ servers: [ {{ address: "{addr}" }} ] }} }}
routes:
  - upstream: a
    rate_limit: {{ rate: 1, per: 10s, burst: 2, key: filter }}
    filters: [ {{ name: api_key, config: {{ keys: {{ k-1: alice, k-2: bob }} }} }} ]
"#,
        addr = b.addr
    );
    let gw = Gateway::start_bin(&bin, &yaml);
    let as_key = |k: &'static str| async move {
        get_with(gw.port, "x", "/api/x", &[("X-Api-Key", k)])
            .await
            .status
    };
    // Same address, two owners: each has a burst of 2 of its own.
    assert_eq!(as_key("k-1").await, 200);
    assert_eq!(as_key("k-1").await, 200);
    assert_eq!(as_key("k-1").await, 429);
    assert_eq!(as_key("k-2").await, 200);
    assert_eq!(as_key("k-2").await, 200);
    assert_eq!(as_key("k-2").await, 429);
    // Refused by the filter (401) before the limit counts: not a 429.
    assert_eq!(get(gw.port, "x", "/api/x").await.status, 401);
}
