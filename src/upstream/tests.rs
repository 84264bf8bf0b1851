use super::*;
use crate::config::Config;

fn pool(yaml: &str) -> Pool {
    let cfg = Config::from_yaml(yaml).unwrap();
    let (name, c) = cfg.upstreams.iter().next().unwrap();
    let mut issues = Issues::default();
    let p = Pool::compile(name, c, &mut issues);
    assert!(issues.errors.is_empty(), "{:?}", issues.errors);
    p
}

#[test]
fn weighted_round_robin_is_smooth_and_exact() {
    let p = pool("upstreams: { a: { servers: [ { address: 127.0.0.1:1, weight: 1 }, { address: 127.0.0.1:2, weight: 3 } ] } }");
    let picks: Vec<usize> = (0..8)
        .map(|_| p.select(None, &Tried::default()).unwrap())
        .collect();
    assert_eq!(picks.iter().filter(|&&i| i == 1).count(), 6);
    assert_ne!(
        picks[..4],
        [1, 1, 1, 0],
        "smooth: the light backend is not starved to the end"
    );
}

#[test]
fn unusable_and_excluded_backends_are_skipped() {
    let mut first = Tried::default();
    first.insert(0);
    let p = pool("upstreams: { a: { servers: [ { address: 127.0.0.1:1 }, { address: 127.0.0.1:2 }, { address: 127.0.0.1:3 } ] } }");
    p.backends[1].active_up.store(false, Relaxed);
    for _ in 0..10 {
        let i = p.select(None, &first).unwrap();
        assert_eq!(i, 2);
    }
    p.backends[2].active_up.store(false, Relaxed);
    assert_eq!(p.select(None, &first), None);
}

#[test]
fn tried_backends_are_excluded_beyond_the_first_64() {
    let servers: Vec<String> = (1..=70)
        .map(|i| format!("{{ address: 127.0.0.1:{i} }}"))
        .collect();
    let p = pool(&format!(
        "upstreams: {{ a: {{ servers: [ {} ] }} }}",
        servers.join(", ")
    ));
    // Every backend but index 66 tried: whatever the turn, the choice is 66, then none.
    let mut tried = Tried::default();
    for i in (0..70).filter(|&i| i != 66) {
        tried.insert(i);
    }
    for _ in 0..140 {
        assert_eq!(p.select(None, &tried), Some(66));
    }
    tried.insert(66);
    tried.insert(66);
    assert_eq!(p.select(None, &tried), None);
    assert!(tried.contains(69) && tried.contains(3) && !Tried::default().contains(69));
}

#[test]
fn passive_ejection_after_max_fails() {
    let p = pool("upstreams: { a: { servers: [ { address: 127.0.0.1:1 }, { address: 127.0.0.1:2 } ], passive: { max_fails: 2, fail_timeout: 10s } } }");
    p.report_failure(0);
    assert!(p.backends[0].usable());
    p.report_failure(0);
    assert!(!p.backends[0].usable());
    assert!(p.backends[0].ejected());
    for _ in 0..5 {
        assert_eq!(p.select(None, &Tried::default()), Some(1));
    }
}

#[test]
fn an_ejection_ends_after_fail_timeout_and_can_start_again() {
    let p = pool("upstreams: { a: { servers: [ { address: 127.0.0.1:1 }, { address: 127.0.0.1:2 } ], passive: { max_fails: 1, fail_timeout: 100ms } } }");
    p.report_failure(0);
    assert!(p.backends[0].ejected());
    assert_eq!(p.select(None, &Tried::default()), Some(1));
    std::thread::sleep(Duration::from_millis(150));
    // Over: usable again, and the first check that saw it over cleared it.
    assert!(p.backends[0].usable());
    assert_eq!(p.backends[0].ejected_until.load(Relaxed), 0);
    assert!(!p.backends[0].ejected());
    // A new failure ejects it again.
    p.report_failure(0);
    assert!(p.backends[0].ejected());
    assert!(!p.backends[0].usable());
}

#[test]
fn consistent_hash_is_stable_and_moves_only_lost_keys() {
    let p = pool("upstreams: { a: { balance: consistent_hash, servers: [ { address: 127.0.0.1:1 }, { address: 127.0.0.1:2 }, { address: 127.0.0.1:3 } ] } }");
    let keys: Vec<String> = (0..300).map(|i| format!("user-{i}")).collect();
    let before: Vec<usize> = keys
        .iter()
        .map(|k| p.select(Some(k.as_bytes()), &Tried::default()).unwrap())
        .collect();
    for n in 0..3 {
        let share = before.iter().filter(|&&i| i == n).count();
        assert!(share > 50, "backend {n} got only {share} of 300 keys");
    }
    p.backends[1].active_up.store(false, Relaxed);
    for (k, &b) in keys.iter().zip(&before) {
        let now = p.select(Some(k.as_bytes()), &Tried::default()).unwrap();
        if b != 1 {
            assert_eq!(now, b, "key {k} moved although its backend stayed");
        } else {
            assert_ne!(now, 1);
        }
    }
}

#[test]
fn least_conn_prefers_idle_backends() {
    let p = pool("upstreams: { a: { balance: least_conn, servers: [ { address: 127.0.0.1:1 }, { address: 127.0.0.1:2 } ] } }");
    p.backends[0].in_flight.store(5, Relaxed);
    for _ in 0..4 {
        assert_eq!(p.select(None, &Tried::default()), Some(1));
    }
}

#[test]
fn random_covers_all_backends() {
    let p = pool("upstreams: { a: { balance: random, servers: [ { address: 127.0.0.1:1 }, { address: 127.0.0.1:2 } ] } }");
    let mut seen = [0; 2];
    for _ in 0..200 {
        seen[p.select(None, &Tried::default()).unwrap()] += 1;
    }
    assert!(seen[0] > 20 && seen[1] > 20, "{seen:?}");
}

#[test]
fn bad_pools_name_the_key() {
    let cfg = Config::from_yaml(
        "upstreams: { api: { servers: [ { address: 10.0.0.1 }, { address: 127.0.0.1:1, weight: 0 } ], hash_key: 'bogus:', timeouts: { connect: 0s } } }",
    )
    .unwrap();
    let mut issues = Issues::default();
    Pool::compile("api", &cfg.upstreams["api"], &mut issues);
    let got: Vec<String> = issues.errors.iter().map(|e| e.to_string()).collect();
    assert!(got.contains(&"upstreams.api.servers[0].address: invalid socket address \"10.0.0.1\" (expected host:port)".to_string()), "{got:#?}");
    assert!(
        got.iter()
            .any(|e| e.starts_with("upstreams.api.servers[1].weight:")),
        "{got:#?}"
    );
    assert!(
        got.iter().any(|e| e.starts_with("upstreams.api.hash_key:")),
        "{got:#?}"
    );
    assert!(
        got.iter()
            .any(|e| e.starts_with("upstreams.api.timeouts.connect:")),
        "{got:#?}"
    );
}

#[test]
fn names_resolve() {
    let p = pool("upstreams: { a: { servers: [ { address: localhost:3000 } ] } }");
    assert!(!p.backends.is_empty());
    assert!(p
        .backends
        .iter()
        .all(|b| b.addr.port() == 3000 && b.addr.ip().is_loopback()));
}

#[test]
fn round_robin_shares_a_skipped_backends_turns_evenly() {
    let p = pool("upstreams: { a: { servers: [ { address: 127.0.0.1:1 }, { address: 127.0.0.1:2 }, { address: 127.0.0.1:3 } ] } }");
    p.backends[1].draining.store(true, Relaxed);
    let mut n = [0usize; 3];
    for _ in 0..600 {
        n[p.select(None, &Tried::default()).unwrap()] += 1;
    }
    assert_eq!(n, [300, 0, 300], "not 2:1 to the drained node's neighbour");
}

#[test]
fn discovery_keeps_indices_and_drains_removed_backends() {
    let p = pool("upstreams: { a: { servers: [ { address: 'nodes.test:80' } ], health_check: { interval: 1s }, discovery: { dns: { interval: 1s, hosts_file: /nonexistent } }, affinity: { socketio: true } } }");
    assert!(
        p.backends.is_empty(),
        "the name does not resolve yet: a warning, no backend"
    );
    let a: SocketAddr = "127.0.0.2:80".parse().unwrap();
    let b: SocketAddr = "127.0.0.3:80".parse().unwrap();
    let c: SocketAddr = "127.0.0.4:80".parse().unwrap();
    let p = p.rediscovered(&[vec![a, b]]).expect("changed");
    assert_eq!(p.backends.len(), 2);
    assert!(
        p.select(None, &Tried::default()).is_none(),
        "new backends wait for a passing check"
    );
    for x in &p.backends {
        x.active_up.store(true, Relaxed); // as the keeper's check round does
    }
    assert!(
        p.rediscovered(&[vec![b, a]]).is_none(),
        "same set: no new snapshot"
    );
    let tag_b = p.backends[1].tag.clone();
    let q = p.rediscovered(&[vec![b, c]]).expect("changed");
    assert_eq!(q.backends[0].addr, a, "a keeps index 0");
    assert_eq!(q.backends[0].state(), "removed");
    assert_eq!(q.backends[1].tag, tag_b, "b keeps its tag");
    assert!(
        Arc::ptr_eq(&q.backends[1], &p.backends[1]),
        "b keeps its state"
    );
    assert!(!q.backends[2].active_up(), "c waits for a health check");
    assert_eq!(
        q.select(None, &Tried::default()),
        Some(1),
        "only b takes new requests"
    );
    let r = q.rediscovered(&[vec![a, b, c]]).expect("a is back");
    assert_eq!(r.backends.len(), 3);
    assert_eq!(r.backends[0].state(), "up");

    // Gone for good: once nothing is left on it, it leaves the pool and the sid table's
    // entries follow the renumbering.
    let q = r.rediscovered(&[vec![b, c]]).expect("a removed again");
    let table = &q.affinity.as_ref().unwrap().table;
    table.insert("sid-of-b", 1, 60_000, now_ms());
    table.insert("sid-of-a", 0, 60_000, now_ms());
    table.mark_upgraded(crate::affinity::SidTable::key("sid-of-a"));
    assert!(
        q.rediscovered(&[vec![b, c]]).is_none(),
        "too early to prune"
    );
    let _busy = q.begin_request(0);
    let later = now_ms() + PRUNE_AFTER_MS + 1;
    assert!(
        q.rediscovered_at(&[vec![b, c]], later).is_none(),
        "a request is still on it"
    );
    drop(_busy);
    let z = q.rediscovered_at(&[vec![b, c]], later).expect("pruned");
    assert_eq!(
        z.backends.iter().map(|x| x.addr).collect::<Vec<_>>(),
        vec![b, c]
    );
    assert_eq!(
        z.affinity.as_ref().unwrap().table.get("sid-of-b", now_ms()),
        Some(0)
    );
    assert_eq!(
        z.affinity.as_ref().unwrap().table.get("sid-of-a", now_ms()),
        None
    );
    assert_eq!(z.affinity.as_ref().unwrap().backend_by_tag(&tag_b), Some(0));
}

#[test]
fn heavy_equal_weights_make_a_short_wheel() {
    let p = pool("upstreams: { a: { servers: [ { address: 127.0.0.1:1, weight: 1000 }, { address: 127.0.0.1:2, weight: 1000 }, { address: 127.0.0.1:3, weight: 500 } ] } }");
    assert_eq!(p.wheel.len(), 5, "weights divided by their common divisor");
    let picks: Vec<usize> = (0..5)
        .map(|_| p.select(None, &Tried::default()).unwrap())
        .collect();
    assert_eq!(picks.iter().filter(|&&i| i == 2).count(), 1);
}
