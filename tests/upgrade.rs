//! Zero-downtime upgrade under load: keep-alive and new-connection HTTP clients plus 50
//! WebSocket echo clients run while `gateway upgrade` replaces the process three times (once
//! with a changed route); a reload with a broken config is refused and changes nothing;
//! SIGTERM drains in-flight requests and exits.

mod common;
use common::*;
use futures_util::{SinkExt, StreamExt};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

fn config(
    dir: &std::path::Path,
    port: u16,
    admin: u16,
    a: &Backend,
    b: &Backend,
    extra_route: &str,
) -> String {
    format!(
        r#"
server:
  pid_file: {dir}/gw.pid
  upgrade_sock: {dir}/gw.sock
  grace_period_seconds: 1
  graceful_shutdown_timeout_seconds: 2
listeners: [ {{ address: "127.0.0.1:{port}" }} ]
admin: {{ address: "127.0.0.1:{admin}" }}
upstreams:
  app:
    servers: [ {{ address: "{a}" }}, {{ address: "{b}" }} ]
    health_check: {{ http: {{ path: /health }}, interval: 1s }}
routes:
{extra_route}  - {{ upstream: app }}
"#,
        dir = dir.display(),
        a = a.addr,
        b = b.addr
    )
}

fn upgrade(cfg: &std::path::Path) -> (bool, String) {
    let (ok, out) = run_upgrade(cfg);
    (
        ok,
        out.lines()
            .filter(|l| !l.contains("No incoming socket transfer"))
            .collect::<Vec<_>>()
            .join("\n"),
    )
}

fn read_pid(dir: &std::path::Path) -> i32 {
    std::fs::read_to_string(dir.join("gw.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

#[derive(Default)]
struct Tally {
    ok: AtomicUsize,
    failed: AtomicUsize,
    refused: AtomicUsize,
    ws_echoes: AtomicUsize,
    ws_clean_close: AtomicUsize,
    ws_bad: AtomicUsize,
    ws_reset: AtomicUsize,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_upgrades_under_load_lose_nothing() {
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let (port, admin) = (free_port(), free_port());
    let dir = unique_temp_dir("gw-upgrade");
    let cfg_path = dir.join("live.yaml");
    std::fs::write(&cfg_path, config(&dir, port, admin, &a, &b, "")).unwrap();
    let mut first = Gateway::start_with(&std::fs::read_to_string(&cfg_path).unwrap(), port, admin);
    let first_pid = first.pid() as i32;
    let stop = Arc::new(AtomicBool::new(false));
    let t = Arc::new(Tally::default());
    let mut tasks = Vec::new();

    // Keep-alive clients: reconnect only when the server says Connection: close. No retries:
    // a request on a connection the old process closed unanswered is a failure.
    for _ in 0..2 {
        let (stop, t) = (stop.clone(), t.clone());
        tasks.push(tokio::spawn(async move {
            let mut conn: Option<H1Conn> = None;
            while !stop.load(SeqCst) {
                if conn.is_none() {
                    match H1Conn::connect(port).await {
                        Ok(c) => conn = Some(c),
                        Err(_) => {
                            t.refused.fetch_add(1, SeqCst);
                            continue;
                        }
                    }
                }
                match conn
                    .as_mut()
                    .unwrap()
                    .request("GET /ka HTTP/1.1\r\nHost: x\r\n\r\n")
                    .await
                {
                    Ok(r) if r.status == 200 => {
                        t.ok.fetch_add(1, SeqCst);
                        if r.header("connection")
                            .is_some_and(|v| v.eq_ignore_ascii_case("close"))
                        {
                            conn = None;
                        }
                    }
                    other => {
                        eprintln!("keep-alive request failed: {:?}", other.map(|r| r.status));
                        t.failed.fetch_add(1, SeqCst);
                        conn = None;
                    }
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }));
    }
    // New connection per request.
    for _ in 0..2 {
        let (stop, t) = (stop.clone(), t.clone());
        tasks.push(tokio::spawn(async move {
            while !stop.load(SeqCst) {
                match http(
                    port,
                    "GET /new HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
                )
                .await
                {
                    Ok(r) if r.status == 200 => t.ok.fetch_add(1, SeqCst),
                    Ok(_) => t.failed.fetch_add(1, SeqCst),
                    Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                        t.refused.fetch_add(1, SeqCst)
                    }
                    Err(e) => {
                        eprintln!("new-connection request failed: {e}");
                        t.failed.fetch_add(1, SeqCst)
                    }
                };
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }));
    }
    // 50 WebSocket echo clients: they either keep echoing or are closed cleanly (never a
    // wrong echo, never a reset).
    for i in 0..50 {
        let (stop, t) = (stop.clone(), t.clone());
        let mut ws = ws_connect(port, "x", "/ws").await;
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(SeqCst) {
                let msg = format!("c{i}-{n}");
                if ws.send(Message::Text(msg.clone())).await.is_err() {
                    t.ws_clean_close.fetch_add(1, SeqCst);
                    return;
                }
                match tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
                    Ok(Some(Ok(Message::Text(m)))) if m.as_str() == msg => {
                        t.ws_echoes.fetch_add(1, SeqCst)
                    }
                    Ok(None) | Ok(Some(Ok(Message::Close(_)))) => {
                        t.ws_clean_close.fetch_add(1, SeqCst);
                        return;
                    }
                    Ok(Some(Err(tokio_tungstenite::tungstenite::Error::Protocol(_))))
                    | Ok(Some(Err(tokio_tungstenite::tungstenite::Error::ConnectionClosed))) => {
                        t.ws_clean_close.fetch_add(1, SeqCst);
                        return;
                    }
                    // Closed at the end of the old process's grace period while a message was
                    // unread: the kernel answers with a reset. Counted and reported.
                    Ok(Some(Err(tokio_tungstenite::tungstenite::Error::Io(e))))
                        if e.kind() == std::io::ErrorKind::ConnectionReset =>
                    {
                        t.ws_reset.fetch_add(1, SeqCst);
                        return;
                    }
                    other => {
                        eprintln!("websocket {i}: {other:?}");
                        t.ws_bad.fetch_add(1, SeqCst);
                        return;
                    }
                };
                n += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    let mut pids = vec![first_pid];
    for round in 0..3 {
        let before = t.ok.load(SeqCst);
        if round == 1 {
            let changed = config(
                &dir,
                port,
                admin,
                &a,
                &b,
                "  - { match: { path: /version }, respond: { status: 200, body: \"v2\" } }\n",
            );
            std::fs::write(&cfg_path, changed).unwrap();
        }
        let cfg = cfg_path.clone();
        let (ok, out) = tokio::task::spawn_blocking(move || upgrade(&cfg))
            .await
            .unwrap();
        assert!(
            ok,
            "upgrade {round} failed:\n{out}\n--- first gateway log ---\n{}",
            first.log()
        );
        let pid = read_pid(&dir);
        assert!(
            !pids.contains(&pid),
            "a new process serves after upgrade {round}"
        );
        pids.push(pid);
        tokio::time::sleep(Duration::from_millis(700)).await;
        assert!(
            t.ok.load(SeqCst) > before,
            "traffic flows after upgrade {round}"
        );
    }
    // The changed route is live.
    let r = get(port, "x", "/version").await;
    assert_eq!((r.status, r.text().as_str()), (200, "v2"));

    // A broken config: refused, nothing changes.
    let broken = dir.join("broken.yaml");
    std::fs::write(
        &broken,
        config(&dir, port, admin, &a, &b, "  - { upstream: nope }\n"),
    )
    .unwrap();
    let (ok, out) = upgrade(&broken);
    assert!(!ok, "{out}");
    assert!(
        out.contains("routes[0].upstream: unknown upstream \"nope\""),
        "{out}"
    );
    assert_eq!(
        read_pid(&dir),
        *pids.last().unwrap(),
        "the old process is still on record"
    );
    assert_eq!(
        get(port, "x", "/version").await.text(),
        "v2",
        "and still serving"
    );

    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, SeqCst);
    for task in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(15), task).await;
    }
    let (ok, failed, refused) = (
        t.ok.load(SeqCst),
        t.failed.load(SeqCst),
        t.refused.load(SeqCst),
    );
    eprintln!(
        "http ok={ok} failed={failed} refused={refused}; ws echoes={} clean closes={} resets at shutdown={} bad={}",
        t.ws_echoes.load(SeqCst),
        t.ws_clean_close.load(SeqCst),
        t.ws_reset.load(SeqCst),
        t.ws_bad.load(SeqCst)
    );
    assert!(ok > 500, "too little load to prove anything: {ok}");
    assert_eq!(failed, 0, "failed or reset HTTP requests");
    assert_eq!(refused, 0, "refused connections");
    assert_eq!(
        t.ws_bad.load(SeqCst),
        0,
        "WebSockets must echo or close cleanly"
    );
    assert!(t.ws_echoes.load(SeqCst) > 100);
    assert_eq!(
        t.ws_clean_close.load(SeqCst) + t.ws_reset.load(SeqCst),
        50,
        "every WebSocket on the first process ends when its grace period does"
    );

    // The first process drained and exited by itself after the grace period.
    assert!(
        first.wait_exit(Duration::from_secs(20)).is_some(),
        "old process still running"
    );
    // SIGTERM on the current one: stops accepting, exits within grace + shutdown timeout.
    let last = read_pid(&dir);
    // A slow request in flight when SIGTERM arrives still completes (within the 1 s grace
    // period: Pingora drops what is left when it ends).
    let slow = tokio::spawn(async move {
        http(
            port,
            "GET /sleep/600 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let t0 = Instant::now();
    unsafe_kill(last, "TERM");
    let r = slow.await.unwrap().expect("in-flight request answered");
    assert_eq!(r.status, 200, "in-flight request finished after SIGTERM");
    let gone = eventually(Duration::from_secs(15), || async move {
        std::process::Command::new("kill")
            .args(["-0", &last.to_string()])
            .status()
            .map(|s| !s.success())
            .unwrap_or(true)
    })
    .await;
    assert!(gone, "SIGTERM did not stop {last}");
    assert!(
        t0.elapsed() < Duration::from_secs(12),
        "took {:?}",
        t0.elapsed()
    );
    for p in pids {
        unsafe_kill(p, "KILL");
    }
}

fn unsafe_kill(pid: i32, sig: &str) {
    let _ = std::process::Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status();
}

/// `gateway upgrade` run by a custom binary whose config names one of its own filters: the
/// upgrade reads only the paths it needs from the config (the new binary's `-t` checks the
/// rest), so a filter the stock registry does not know is no obstacle.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn custom_binary_upgrade_with_a_custom_filter() {
    let bin = example_bin("api_key_filter");
    assert!(
        std::path::Path::new(&bin).exists(),
        "{bin} not built: run `cargo build --examples` (scripts/test.sh does)"
    );
    let a = Backend::start("a").await;
    let (port, admin) = (free_port(), free_port());
    let dir = unique_temp_dir("gw-upgrade-custom");
    let yaml = format!(
        r#"
server:
  pid_file: {dir}/gw.pid
  upgrade_sock: {dir}/gw.sock
  grace_period_seconds: 1
  graceful_shutdown_timeout_seconds: 1
listeners: [ {{ address: "127.0.0.1:{port}" }} ]
admin: {{ address: "127.0.0.1:{admin}" }}
upstreams:
  app: {{ servers: [ {{ address: "{a}" }} ] }}
routes:
  - upstream: app
    filters: [ {{ name: api_key, config: {{ keys: {{ k-123: alice }} }} }} ]
"#,
        dir = dir.display(),
        a = a.addr
    );
    let cfg_path = dir.join("live.yaml");
    std::fs::write(&cfg_path, &yaml).unwrap();
    let mut first =
        Gateway::try_start_bin(&bin, &yaml, port, admin, &[]).unwrap_or_else(|e| panic!("{e}"));
    let first_pid = first.pid() as i32;
    assert_eq!(
        get(port, "x", "/api/secret").await.status,
        401,
        "the custom filter runs"
    );

    let log = dir.join("upgrade.log");
    let f = std::fs::File::create(&log).unwrap();
    let cfg = cfg_path.clone();
    let bin2 = bin.clone();
    let status = tokio::task::spawn_blocking(move || {
        std::process::Command::new(&bin2)
            .args(["upgrade", "-c", cfg.to_str().unwrap(), "--timeout", "20s"])
            .stdout(f.try_clone().unwrap())
            .stderr(f)
            .status()
            .unwrap()
    })
    .await
    .unwrap();
    let out = std::fs::read_to_string(&log).unwrap_or_default();
    let new_pid = std::fs::read_to_string(dir.join("gw.pid"))
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok());
    let cleanup = |pid: Option<i32>| {
        if let Some(p) = pid.filter(|&p| p != first_pid) {
            unsafe_kill(p, "KILL");
        }
    };
    if !status.success() {
        cleanup(new_pid);
        panic!(
            "upgrade of the custom binary failed:\n{out}\n--- first gateway log ---\n{}",
            first.log()
        );
    }
    let new_pid = new_pid.expect("pid file after the upgrade");
    assert_ne!(new_pid, first_pid, "a new process serves");
    let r = get(port, "x", "/api/secret").await;
    let r2 = get_with(port, "x", "/api/secret", &[("X-Api-Key", "k-123")]).await;
    cleanup(Some(new_pid));
    assert_eq!(r.status, 401, "the new process runs the custom filter");
    assert_eq!(r2.status, 200);
    assert_eq!(r2.json()["headers"]["x-api-user"], "alice");
    assert!(
        first.wait_exit(Duration::from_secs(20)).is_some(),
        "old process still running"
    );
}
