//! Affinity through the real gateway with plain HTTP backends: sid tags route and are
//! stripped, a tag naming a dead node gets "Session ID unknown" at once, malformed sids are
//! balanced untouched, and the sticky cookie is set, honoured, and reissued.
//! (The real Socket.IO client suite is in tests/socketio/.)

mod common;
use common::*;
use std::time::Duration;

fn config(backends: &[&Backend], affinity: &str) -> String {
    let list: Vec<String> = backends
        .iter()
        .map(|b| format!("{{ address: \"{}\" }}", b.addr))
        .collect();
    format!(
        r#"
listeners: [ {{ address: "127.0.0.1:{{PORT}}" }} ]
admin: {{ address: "127.0.0.1:{{ADMIN}}" }}
upstreams:
  rt:
    servers: [ {} ]
    health_check: {{ interval: 200ms, timeout: 200ms, fails: 1, passes: 1 }}
    affinity: {affinity}
routes:
  - {{ upstream: rt }}
"#,
        list.join(", ")
    )
}

async fn tags(gw: &Gateway) -> Vec<String> {
    let s = get(gw.admin_port, "localhost", "/status").await.json();
    s["pools"]["rt"]["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["tag"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tagged_sid_routes_to_its_node_and_the_tag_is_stripped() {
    let (a, b, c) = (
        Backend::start("a").await,
        Backend::start("b").await,
        Backend::start("c").await,
    );
    let gw = Gateway::start(&config(&[&a, &b, &c], "{ socketio: true }"));
    let t = tags(&gw).await;
    for _ in 0..5 {
        let r = get(
            gw.port,
            "x",
            &format!(
                "/socket.io/?EIO=4&transport=polling&t=1&sid=AAAAAAAAAAAAAAAAAAAA.{}",
                t[1]
            ),
        )
        .await;
        let j = r.json();
        assert_eq!(j["backend"], "b");
        assert_eq!(
            j["path"], "/socket.io/?EIO=4&transport=polling&t=1&sid=AAAAAAAAAAAAAAAAAAAA",
            "the backend sees its own sid"
        );
    }
    // Outside the Socket.IO path a sid means nothing.
    let j = get(gw.port, "x", &format!("/other?sid=X.{}", t[1]))
        .await
        .json();
    assert!(j["path"].as_str().unwrap().ends_with(&t[1]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sid_of_a_dead_node_gets_session_id_unknown_at_once() {
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let gw = Gateway::start(&config(&[&a, &b], "{ socketio: true }"));
    let t = tags(&gw).await;
    b.stop();
    let path = format!(
        "/socket.io/?EIO=4&transport=polling&sid=AAAAAAAAAAAAAAAAAAAA.{}",
        t[1]
    );
    // Before the health check notices: the connect fails, and the client still gets the 400.
    let r = get(gw.port, "x", &path).await;
    assert_eq!(r.status, 400);
    assert_eq!(r.text(), r#"{"code":1,"message":"Session ID unknown"}"#);
    assert_eq!(r.header("content-type"), Some("application/json"));
    // After it: answered without trying the node.
    assert!(
        eventually(Duration::from_secs(3), || async {
            get(gw.admin_port, "localhost", "/status").await.json()["pools"]["rt"]["backends"][1]
                ["healthy"]
                == false
        })
        .await
    );
    let t0 = std::time::Instant::now();
    let r = get(gw.port, "x", &path).await;
    assert_eq!(
        (r.status, r.header("content-type")),
        (400, Some("application/json"))
    );
    assert!(t0.elapsed() < Duration::from_millis(500));
    assert_eq!(
        a.app_hits(),
        0,
        "never sent to another node, which would not know the session"
    );
    // A handshake (no sid) still works, on the live node.
    assert_eq!(
        get(gw.port, "x", "/socket.io/?EIO=4&transport=polling")
            .await
            .json()["backend"],
        "a"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_sids_are_balanced_untouched() {
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let gw = Gateway::start(&config(&[&a, &b], "{ socketio: { path: /socket.io/ } }"));
    let long = "x".repeat(300);
    let sids = [
        "plain-sid-no-tag",
        "sid.BADTAG!!",
        "sid.zzzzzzzz",
        "sid.",
        ".abcdefgh",
        long.as_str(),
        "a.b.c.d",
        "%2E%2E",
    ];
    for sid in sids {
        let path = format!("/socket.io/?EIO=4&transport=polling&sid={sid}");
        let r = get(gw.port, "x", &path).await;
        assert_eq!(r.status, 200, "sid {sid}");
        assert_eq!(r.json()["path"], path.as_str(), "passed on untouched");
    }
    assert!(
        a.app_hits() > 0 && b.app_hits() > 0,
        "balanced over both nodes"
    );
    assert!(gw.log().lines().all(|l| !l.contains("panicked")));
}

fn cookie_of(r: &Resp) -> Option<String> {
    r.header_all("set-cookie")
        .into_iter()
        .find(|c| c.starts_with("gw_affinity="))
        .map(|c| c.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sticky_cookie_is_set_honoured_and_reissued() {
    let (a, b, c) = (
        Backend::start("a").await,
        Backend::start("b").await,
        Backend::start("c").await,
    );
    let gw = Gateway::start(&config(
        &[&a, &b, &c],
        "{ cookie: { name: gw_affinity, ttl: 1h } }",
    ));
    let t = tags(&gw).await;

    let first = get(gw.port, "x", "/").await;
    let set = cookie_of(&first).expect("first response sets the cookie");
    assert!(
        set.contains("; Path=/")
            && set.contains("; Max-Age=3600")
            && set.contains("; HttpOnly")
            && set.contains("; SameSite=Lax"),
        "{set}"
    );
    assert!(!set.contains("Secure"), "no Secure on plain HTTP: {set}");
    let owner = first.json()["backend"].as_str().unwrap().to_string();
    let value = set.split(';').next().unwrap().to_string();

    for _ in 0..6 {
        let r = get_with(
            gw.port,
            "x",
            "/",
            &[("Cookie", &format!("other=1; {value}"))],
        )
        .await;
        assert_eq!(
            r.json()["backend"],
            owner.as_str(),
            "the cookie is honoured"
        );
        assert!(cookie_of(&r).is_none(), "not reissued while valid");
    }

    let r = get_with(gw.port, "x", "/", &[("Cookie", "gw_affinity=garbage")]).await;
    assert_eq!(r.status, 200);
    assert!(
        cookie_of(&r).is_some(),
        "garbage cookie: a fresh one is issued"
    );

    // A cookie naming a dead node: served by a live node, with a fresh cookie.
    b.stop();
    assert!(
        eventually(Duration::from_secs(3), || async {
            get(gw.admin_port, "localhost", "/status").await.json()["pools"]["rt"]["healthy"] == 2
        })
        .await
    );
    for _ in 0..4 {
        let r = get_with(
            gw.port,
            "x",
            "/",
            &[("Cookie", &format!("gw_affinity={}", t[1]))],
        )
        .await;
        assert_eq!(r.status, 200);
        assert_ne!(r.json()["backend"], "b");
        let fresh = cookie_of(&r).expect("reissued");
        assert!(!fresh.contains(&t[1]), "{fresh}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_with_two_sids_is_refused_not_rewritten() {
    // Two sids with different tags: routing by one while the backend reads the other (or
    // rewriting one into the other) would mix sessions; engine.io's "Bad request" instead.
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let gw = Gateway::start(&config(&[&a, &b], "{ socketio: true }"));
    let t = tags(&gw).await;
    let before = a.app_hits() + b.app_hits();
    let r = get(
        gw.port,
        "x",
        &format!(
            "/socket.io/?EIO=4&transport=polling&sid=AAAAAAAAAAAAAAAAAAAA.{}&sid=BBBBBBBBBBBBBBBBBBBB.{}",
            t[0], t[1]
        ),
    )
    .await;
    assert_eq!(r.status, 400);
    assert!(r.text().contains("\"code\":3"), "{}", r.text());
    assert_eq!(a.app_hits() + b.app_hits(), before, "reached a backend");
    // One sid still routes as before.
    let r = get(
        gw.port,
        "x",
        &format!(
            "/socket.io/?EIO=4&transport=polling&sid=AAAAAAAAAAAAAAAAAAAA.{}",
            t[1]
        ),
    )
    .await;
    assert_eq!(r.backend().as_deref(), Some("b"));
}
