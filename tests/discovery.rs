//! Live discovery (issue 13): a pool whose servers are names re-resolves them every
//! `discovery.dns.interval` (here from a hosts file the test rewrites, not the machine's
//! resolver). Names that appear become backends once a health check passes; names that go
//! away drain: no new requests, but their sticky sessions stay while they are up; node tags
//! stay stable; nothing is reloaded and no request fails.

mod common;
use common::*;
use std::time::Duration;

fn config(hosts: &std::path::Path, ports: [u16; 3]) -> String {
    format!(
        r#"
listeners: [ {{ address: "127.0.0.1:{{PORT}}" }} ]
admin: {{ address: "127.0.0.1:{{ADMIN}}" }}
upstreams:
  app:
    servers:
      - {{ address: "node1.test:{p1}" }}
      - {{ address: "node2.test:{p2}" }}
      - {{ address: "node3.test:{p3}" }}
    health_check: {{ interval: 200ms, timeout: 1s, fails: 1, passes: 1 }}
    discovery: {{ dns: {{ interval: 200ms, hosts_file: "{hosts}" }} }}
    affinity: {{ cookie: {{ name: gw }} }}
routes: [ {{ upstream: app }} ]
"#,
        p1 = ports[0],
        p2 = ports[1],
        p3 = ports[2],
        hosts = hosts.display()
    )
}

/// Backend name -> state in `/status`.
async fn states(gw: &Gateway) -> Vec<(String, String, String)> {
    let s = get(gw.admin_port, "127.0.0.1", "/status").await.json();
    s["pools"]["app"]["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            (
                b["address"].as_str().unwrap().to_string(),
                b["state"].as_str().unwrap().to_string(),
                b["tag"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// Replaces the hosts file by rename, as an operator (or a config manager) should: a reader
/// never sees it half written.
fn write_hosts(path: &std::path::Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

async fn spread(gw: &Gateway, n: usize) -> std::collections::BTreeMap<String, usize> {
    let mut m = std::collections::BTreeMap::new();
    for _ in 0..n {
        let r = get(gw.port, "x", "/").await;
        assert_eq!(r.status, 200, "no request fails while the set changes");
        *m.entry(r.json()["backend"].as_str().unwrap().to_string())
            .or_insert(0) += 1;
    }
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_that_come_and_go_are_added_checked_and_drained() {
    let b1 = Backend::start("n1").await;
    let b2 = Backend::start("n2").await;
    // node3's port, with nothing listening yet.
    let p3 = free_port();
    let dir = unique_temp_dir("discovery");
    let hosts = dir.join("hosts");
    std::fs::write(&hosts, "# test resolver\n127.0.0.1 node1.test node2.test\n").unwrap();
    let yaml = config(&hosts, [b1.port(), b2.port(), p3]);

    // `-t` accepts a name that does not resolve yet, with a warning.
    let (code, out) = check_config(&yaml.replace("{PORT}", "1").replace("{ADMIN}", "2"));
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("node3.test") && out.contains("no address yet"),
        "{out}"
    );

    let gw = Gateway::start(&yaml);
    let m = spread(&gw, 8).await;
    assert_eq!(m.keys().collect::<Vec<_>>(), ["n1", "n2"], "{m:?}");
    let before = states(&gw).await;
    assert_eq!(before.len(), 2);
    // A client pinned to n1 by the sticky cookie.
    let r = get(gw.port, "x", "/").await;
    let cookie = r
        .header("set-cookie")
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let pinned = r.json()["backend"].as_str().unwrap().to_string();

    // node3 appears while nothing listens there: it is checked, found down, sent nothing.
    write_hosts(&hosts, "127.0.0.1 node1.test node2.test node3.test\n");
    let grew = eventually(Duration::from_secs(10), || async {
        states(&gw).await.len() == 3
    })
    .await;
    assert!(grew, "node3 added: {:?}", states(&gw).await);
    // Checked (a failure recorded), found down, sent nothing.
    let checked = eventually(Duration::from_secs(10), || async {
        let s = get(gw.admin_port, "127.0.0.1", "/status").await.json();
        let c = &s["pools"]["app"]["backends"][2]["checks"];
        c.as_array()
            .is_some_and(|a| a.iter().any(|x| x["ok"] == false))
    })
    .await;
    assert!(checked, "node3 was health-checked");
    assert_eq!(
        states(&gw).await[2].1,
        "down",
        "not checked healthy: no traffic"
    );
    let m = spread(&gw, 8).await;
    assert!(!m.contains_key("n3"), "{m:?}");

    // Its node starts: the check passes and it takes its share.
    let b3 = Backend::start_on(format!("127.0.0.1:{p3}").parse().unwrap(), "n3")
        .await
        .expect("bind node3's port");
    let up = eventually(Duration::from_secs(10), || async {
        states(&gw).await[2].1 == "up"
    })
    .await;
    assert!(up, "{:?}", states(&gw).await);
    let m = spread(&gw, 9).await;
    assert_eq!(m.len(), 3, "all three serve: {m:?}");

    // The pinned node's name goes away: it drains.
    let gone = if pinned == "n1" {
        "node1.test"
    } else {
        "node2.test"
    };
    let keep = if pinned == "n1" {
        "node2.test"
    } else {
        "node1.test"
    };
    write_hosts(&hosts, &format!("127.0.0.1 {keep} node3.test\n"));
    let removed = eventually(Duration::from_secs(10), || async {
        states(&gw).await.iter().any(|s| s.1 == "removed")
    })
    .await;
    assert!(removed, "{:?}", states(&gw).await);
    let m = spread(&gw, 8).await;
    assert!(
        !m.contains_key(&pinned),
        "no new requests to the removed node: {m:?}"
    );
    let r = get_with(gw.port, "x", "/", &[("Cookie", &cookie)]).await;
    assert_eq!(
        r.json()["backend"],
        pinned.as_str(),
        "its sessions stay on it"
    );

    // Tags stay stable for the addresses that stayed; the removed one keeps its slot.
    let after = states(&gw).await;
    for (addr, _, tag) in &before {
        let now = after.iter().find(|s| &s.0 == addr).expect("kept");
        assert_eq!(&now.2, tag, "{addr}: same tag");
    }
    // And it comes back when its name does.
    write_hosts(&hosts, &format!("127.0.0.1 {keep} {gone} node3.test\n"));
    let back = eventually(Duration::from_secs(10), || async {
        states(&gw).await.iter().all(|s| s.1 == "up")
    })
    .await;
    assert!(back, "{:?}", states(&gw).await);
    assert!(gw.log().contains("by discovery"), "changes are logged");
    // A file caught empty (mid-rewrite, or wiped by mistake) is an error, not "no backends":
    // every name keeps its addresses.
    std::fs::write(&hosts, "").unwrap();
    assert!(gw.wait_log_contains("has no entries", Duration::from_secs(5)));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let all_up = states(&gw).await.iter().all(|s| s.1 == "up");
    assert!(all_up, "{:?}", states(&gw).await);
    assert_eq!(spread(&gw, 6).await.len(), 3);
    drop(b3);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_config_errors_name_the_key() {
    let (code, out) = check_config(
        "listeners: [ { address: \"127.0.0.1:1\" } ]\nupstreams: { a: { servers: [ { address: \"x.test:1\" } ], discovery: { dns: { interval: 0s } } } }\nroutes: [ { upstream: a } ]\n",
    );
    assert_ne!(code, 0);
    assert!(
        out.contains("upstreams.a.discovery.dns.interval: must be greater than 0"),
        "{out}"
    );
    let (code, out) = check_config(
        "listeners: [ { address: \"127.0.0.1:1\" } ]\nupstreams: { a: { servers: [ { address: \"x.test:1\" } ], discovery: { dns: { every: 1s } } } }\nroutes: [ { upstream: a } ]\n",
    );
    assert_ne!(code, 0);
    assert!(out.contains("every"), "{out}");
    // Without discovery an unresolvable name stays an error.
    let (code, out) = check_config(
        "listeners: [ { address: \"127.0.0.1:1\" } ]\nupstreams: { a: { servers: [ { address: \"no-such-host.invalid:1\" } ] } }\nroutes: [ { upstream: a } ]\n",
    );
    assert_ne!(code, 0, "{out}");
}
