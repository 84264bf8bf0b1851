//! Draining a backend through the admin API (issue 13, first part): a draining node gets no
//! new balanced requests or sessions, but its existing sessions (sid tag, sticky cookie) stay
//! on it; the write endpoints need `admin.token`; `/status` shows the state.

mod common;
use common::*;

const TOKEN: &str = "s3cret-admin-token-0123";

fn config(a: &Backend, b: &Backend, token: bool) -> String {
    let admin_token = if token {
        format!(", token: \"{TOKEN}\"")
    } else {
        String::new()
    };
    format!(
        r#"
listeners: [ {{ address: "127.0.0.1:{{PORT}}" }} ]
admin: {{ address: "127.0.0.1:{{ADMIN}}"{admin_token} }}
upstreams:
  rt:
    servers: [ {{ address: "{a}" }}, {{ address: "{b}" }} ]
    affinity: {{ socketio: true, cookie: {{ name: gw }} }}
routes: [ {{ upstream: rt }} ]
"#,
        a = a.addr,
        b = b.addr
    )
}

async fn post(admin: u16, path: &str, token: Option<&str>) -> Resp {
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    http(
        admin,
        &format!("POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}Content-Length: 0\r\nConnection: close\r\n\r\n"),
    )
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_backend_keeps_its_sessions_and_gets_no_new_ones() {
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let gw = Gateway::start(&config(&a, &b, true));
    let status = get(gw.admin_port, "localhost", "/status").await.json();
    let tag_b = status["pools"]["rt"]["backends"][1]["tag"]
        .as_str()
        .unwrap()
        .to_string();
    let drain = format!("/pools/rt/backends/{}/drain", b.addr);

    // Refused without the token, or with a wrong one.
    assert_eq!(post(gw.admin_port, &drain, None).await.status, 401);
    assert_eq!(
        post(gw.admin_port, &drain, Some("wrong-token-wrong-token"))
            .await
            .status,
        401
    );
    assert_eq!(
        post(
            gw.admin_port,
            "/pools/rt/backends/10.9.9.9:1/drain",
            Some(TOKEN)
        )
        .await
        .status,
        404
    );
    let r = post(gw.admin_port, &drain, Some(TOKEN)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["state"], "draining");
    let status = get(gw.admin_port, "localhost", "/status").await.json();
    assert_eq!(status["pools"]["rt"]["backends"][1]["state"], "draining");
    assert_eq!(status["pools"]["rt"]["backends"][0]["state"], "up");

    // New balanced requests (and new cookie assignments) all go to a.
    for _ in 0..6 {
        let r = get(gw.port, "x", "/new").await;
        assert_eq!(r.json()["backend"], "a");
    }
    // A Socket.IO session tagged for b stays on b.
    let sid = format!("/socket.io/?EIO=4&transport=polling&sid=AAAAAAAAAAAAAAAAAAAA.{tag_b}");
    assert_eq!(get(gw.port, "x", &sid).await.json()["backend"], "b");
    // So does a client holding b's sticky cookie.
    let r = get_with(gw.port, "x", "/old", &[("Cookie", &format!("gw={tag_b}"))]).await;
    assert_eq!(r.json()["backend"], "b");

    // Undrained: b takes new requests again.
    let undrain = format!("/pools/rt/backends/{}/undrain", b.addr);
    assert_eq!(post(gw.admin_port, &undrain, Some(TOKEN)).await.status, 200);
    let mut seen_b = false;
    for _ in 0..6 {
        seen_b |= get(gw.port, "x", "/new").await.json()["backend"] == "b";
    }
    assert!(seen_b, "b is balanced to again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_endpoints_are_refused_without_a_configured_token() {
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let gw = Gateway::start(&config(&a, &b, false));
    let drain = format!("/pools/rt/backends/{}/drain", b.addr);
    let r = post(gw.admin_port, &drain, Some(TOKEN)).await;
    assert_eq!(r.status, 403);
    // GET on a write endpoint: 405 with Allow: POST.
    let r = get(gw.admin_port, "127.0.0.1", &drain).await;
    assert_eq!((r.status, r.header("allow")), (405, Some("POST")));
    // A short token is a config error.
    let (code, out) = check_config("admin: { token: short }\n");
    assert_ne!(code, 0);
    assert!(
        out.contains("admin.token: must be at least 16 characters"),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_drains_and_undrains_through_the_admin_listener() {
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let gw = Gateway::start(&config(&a, &b, true));
    let cli = |action: &str| {
        std::process::Command::new(gateway_bin())
            .args(["admin", action, "rt", &b.addr.to_string(), "-c"])
            .arg(&gw.config_path)
            .output()
            .unwrap()
    };
    let out = cli("drain");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("\"draining\""));
    for _ in 0..4 {
        assert_eq!(get(gw.port, "x", "/n").await.json()["backend"], "a");
    }
    let out = cli("undrain");
    assert!(out.status.success());
    let state = &get(gw.admin_port, "localhost", "/status").await.json()["pools"]["rt"]["backends"]
        [1]["state"];
    assert_eq!(state, "up");
    // An unknown backend: a non-zero exit with the gateway's reason.
    let out = std::process::Command::new(gateway_bin())
        .args(["admin", "drain", "rt", "10.9.9.9:1", "-c"])
        .arg(&gw.config_path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("404"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_and_secret_can_come_from_files() {
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let dir = unique_temp_dir("secrets");
    std::fs::write(dir.join("token"), format!("{TOKEN}\n")).unwrap();
    std::fs::write(dir.join("secret"), "tag-secret\n").unwrap();
    let yaml = config(&a, &b, false)
        .replace(
            "\"127.0.0.1:{ADMIN}\"",
            &format!(
                "\"127.0.0.1:{{ADMIN}}\", token_file: \"{}\"",
                dir.join("token").display()
            ),
        )
        .replace(
            "cookie: { name: gw }",
            &format!(
                "cookie: {{ name: gw }}, secret_file: \"{}\"",
                dir.join("secret").display()
            ),
        );
    let gw = Gateway::start(&yaml);
    let drain = format!("/pools/rt/backends/{}/drain", b.addr);
    let r = post(gw.admin_port, &drain, Some(TOKEN)).await;
    assert_eq!(r.status, 200, "the token from the file: {}", r.text());
    // The secret from the file keys the tags exactly like the inline one.
    let inline = config(&a, &b, false).replace(
        "cookie: { name: gw }",
        "cookie: { name: gw }, secret: tag-secret",
    );
    let gw2 = Gateway::start(&inline);
    let tags = |s: serde_json::Value| s["pools"]["rt"]["backends"][1]["tag"].clone();
    assert_eq!(
        tags(get(gw.admin_port, "localhost", "/status").await.json()),
        tags(get(gw2.admin_port, "localhost", "/status").await.json())
    );
    // Both forms at once, or an unreadable file: the key is named.
    let (code, out) =
        check_config(&inline.replace("secret: tag-secret", "secret: tag-secret, secret_file: /x"));
    assert_ne!(code, 0);
    assert!(
        out.contains("upstreams.rt.affinity.secret_file: give"),
        "{out}"
    );
    let (code, out) = check_config(&config(&a, &b, false).replace(
        "\"127.0.0.1:{ADMIN}\"",
        "\"127.0.0.1:9\", token_file: /nonexistent/token",
    ));
    assert_ne!(code, 0);
    assert!(out.contains("admin.token_file: cannot read"), "{out}");
    let _ = std::fs::remove_dir_all(&dir);
}
