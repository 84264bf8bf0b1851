//! Route lookup cost (`Router::find`) for small and large route tables.
//!
//! `cargo run --release --example route_bench`
//!
//! Tables: N routes `{ match: { host: hI.example.com, path_prefix: /pI/ }, upstream: app }`
//! for I in 0..N, plus a catch-all `{ upstream: app }`, for N = 10 and 10,000. Also a
//! 10,000-route table of path prefixes only (no host), which cannot be bucketed by host,
//! and N = 10 and 10,000 routes `{ match: { host: app.example.com, path_prefix: /pI/ } }`
//! all under ONE host (the worst case for per-host bucketing).
//! Prints ns per `find()` for hits on the first, middle and last route, and two misses
//! (unknown host, known host with a wrong path: both fall through to the catch-all), then
//! the last-route cost of 10,000 vs 10 routes under one host as a ratio.
//! Last line: one JSON object with all the numbers.

use gateway::config::Issues;
use gateway::proxy::router::Router;
use std::collections::HashMap;
use std::hint::black_box;
use std::time::Instant;

/// How the routes of a table name their host.
#[derive(Clone, Copy, PartialEq)]
enum Hosts {
    /// Route I matches `hI.example.com`.
    PerRoute,
    /// No host: path prefixes only.
    None,
    /// Every route matches `app.example.com`.
    One,
}

fn table(n: usize, hosts: Hosts) -> Router {
    let mut y =
        String::from("upstreams:\n  app: { servers: [ { address: \"127.0.0.1:1\" } ] }\nroutes:\n");
    for i in 0..n {
        match hosts {
            Hosts::PerRoute => y.push_str(&format!("  - {{ match: {{ host: h{i}.example.com, path_prefix: /p{i}/ }}, upstream: app }}\n")),
            Hosts::None => y.push_str(&format!(
                "  - {{ match: {{ path_prefix: /p{i}/ }}, upstream: app }}\n"
            )),
            Hosts::One => y.push_str(&format!(
                "  - {{ match: {{ host: app.example.com, path_prefix: /p{i}/ }}, upstream: app }}\n"
            )),
        }
    }
    y.push_str("  - { upstream: app }\n");
    let cfg = gateway::Config::from_yaml(&y).expect("config");
    let pools: HashMap<String, usize> = [("app".to_string(), 0usize)].into_iter().collect();
    let mut issues = Issues::default();
    let r = Router::compile(&cfg.routes, &pools, &gateway::Registry::new(), &mut issues);
    assert!(issues.errors.is_empty(), "{:?}", issues.errors);
    assert_eq!(r.len(), n + 1);
    r
}

/// ns per find(host, path); checks the matched index.
fn time(r: &Router, host: &str, path: &str, want: usize) -> f64 {
    assert_eq!(
        r.find(host, path).map(|(i, _)| i),
        Some(want),
        "{host}{path}"
    );
    // Calibrate to ~50 ms.
    let mut iters = 1000u64;
    loop {
        let t = Instant::now();
        for _ in 0..iters {
            black_box(r.find(black_box(host), black_box(path)));
        }
        let el = t.elapsed();
        if el.as_millis() >= 50 {
            // Best of 3 at this size.
            let mut best = el.as_nanos() as f64 / iters as f64;
            for _ in 0..2 {
                let t = Instant::now();
                for _ in 0..iters {
                    black_box(r.find(black_box(host), black_box(path)));
                }
                best = best.min(t.elapsed().as_nanos() as f64 / iters as f64);
            }
            return best;
        }
        iters *= 4;
    }
}

fn main() {
    let mut json = serde_json::Map::new();
    println!(
        "{:<28} {:>10} {:>10} {:>10} {:>14} {:>16}",
        "table", "first", "middle", "last", "miss:new host", "miss:wrong path"
    );
    let mut one_host_last = [0f64; 2];
    for (n, hosts) in [
        (10usize, Hosts::PerRoute),
        (10_000, Hosts::PerRoute),
        (10_000, Hosts::None),
        (10, Hosts::One),
        (10_000, Hosts::One),
    ] {
        let with_host = hosts == Hosts::PerRoute;
        let r = table(n, hosts);
        let mid = n / 2;
        let last = n - 1;
        let (first_h, mid_h, last_h, miss_h) = if with_host {
            (
                "h0.example.com".to_string(),
                format!("h{mid}.example.com"),
                format!("h{last}.example.com"),
                "nope.example.com",
            )
        } else {
            (
                "app.example.com".to_string(),
                "app.example.com".to_string(),
                "app.example.com".to_string(),
                "nope.example.com",
            )
        };
        let first = time(&r, &first_h, "/p0/x", 0);
        let middle = time(&r, &mid_h, &format!("/p{mid}/x"), mid);
        let lastt = time(&r, &last_h, &format!("/p{last}/x"), last);
        let miss_host = time(&r, miss_h, "/p0x", n);
        let miss_path = time(&r, &mid_h, "/nope/x", n);
        let name = match hosts {
            Hosts::PerRoute => format!("{n} routes (host+prefix)"),
            Hosts::None => format!("{n} routes (prefix only)"),
            Hosts::One => format!("{n} routes (one host)"),
        };
        println!("{name:<28} {first:>8.1}ns {middle:>8.1}ns {lastt:>8.1}ns {miss_host:>12.1}ns {miss_path:>14.1}ns");
        let key = match hosts {
            Hosts::PerRoute => format!("n{n}"),
            Hosts::None => format!("n{n}_prefix_only"),
            Hosts::One => format!("n{n}_one_host"),
        };
        if hosts == Hosts::One {
            one_host_last[usize::from(n > 10)] = lastt;
        }
        json.insert(
            key,
            serde_json::json!({"first_ns": first, "middle_ns": middle, "last_ns": lastt, "miss_host_ns": miss_host, "miss_path_ns": miss_path}),
        );
    }
    let ratio = one_host_last[1] / one_host_last[0];
    println!("one host, last route: 10000 routes / 10 routes = {ratio:.2}x");
    json.insert("one_host_last_ratio".into(), serde_json::json!(ratio));
    println!("{}", serde_json::Value::Object(json));
}
