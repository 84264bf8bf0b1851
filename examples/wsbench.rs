//! WebSocket load tool used by `bench/run.sh`.
//!
//! ```text
//! wsbench echo --addr 127.0.0.1:P --conns 200 --duration 10s [--size 32] [--path /ws] [--threads 1]
//!     Each connection sends a message, waits for its echo, repeats until the deadline.
//!     Prints one JSON line:
//!     {"messages":N,"seconds":S,"msgs_per_s":X,"p50_us":..,"p99_us":..,"errors":E,"connected":C}
//!
//! wsbench idle --addr 127.0.0.1:P --conns 5000 --hold 15s [--concurrency 200] [--path /ws]
//!     Opens N WebSockets (at most `concurrency` handshakes in flight), prints `connected N`
//!     once all are open, holds them idle for `hold`, then checks each one still echoes
//!     (prints `alive N`), closes them and prints one JSON summary line.
//! ```
//! The runtime is single-threaded by default (`--threads 1`): the load generator is meant to
//! be pinned to one CPU with `taskset`.

use std::io::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{client_async, WebSocketStream};

type Ws = WebSocketStream<TcpStream>;

struct Args {
    mode: String,
    addr: String,
    path: String,
    conns: usize,
    duration: Duration,
    hold: Duration,
    size: usize,
    concurrency: usize,
    threads: usize,
}

fn parse_dur(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, mul) = if let Some(v) = s.strip_suffix("ms") {
        (v, 0.001)
    } else if let Some(v) = s.strip_suffix('s') {
        (v, 1.0)
    } else if let Some(v) = s.strip_suffix('m') {
        (v, 60.0)
    } else {
        (s, 1.0)
    };
    let n: f64 = num.parse().map_err(|_| format!("bad duration {s:?}"))?;
    Ok(Duration::from_secs_f64(n * mul))
}

const USAGE: &str = "usage: wsbench echo --addr HOST:PORT [--conns 200] [--duration 10s] [--size 32] [--path /ws] [--threads 1]\n       \
    wsbench idle --addr HOST:PORT [--conns 5000] [--hold 15s] [--concurrency 200] [--path /ws] [--threads 1]";

fn parse_args() -> Result<Args, String> {
    let mut it = std::env::args().skip(1);
    let mode = it.next().ok_or(USAGE)?;
    if mode != "echo" && mode != "idle" {
        return Err(USAGE.to_string());
    }
    let mut a = Args {
        conns: if mode == "echo" { 200 } else { 5000 },
        mode,
        addr: String::new(),
        path: "/ws".into(),
        duration: Duration::from_secs(10),
        hold: Duration::from_secs(15),
        size: 32,
        concurrency: 200,
        threads: 1,
    };
    while let Some(flag) = it.next() {
        let mut val = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--addr" => a.addr = val()?,
            "--path" => a.path = val()?,
            "--conns" => a.conns = val()?.parse().map_err(|e| format!("--conns: {e}"))?,
            "--duration" => a.duration = parse_dur(&val()?)?,
            "--hold" => a.hold = parse_dur(&val()?)?,
            "--size" => a.size = val()?.parse().map_err(|e| format!("--size: {e}"))?,
            "--concurrency" => {
                a.concurrency = val()?.parse().map_err(|e| format!("--concurrency: {e}"))?
            }
            "--threads" => a.threads = val()?.parse().map_err(|e| format!("--threads: {e}"))?,
            "-h" | "--help" => return Err(USAGE.to_string()),
            other => return Err(format!("unknown argument {other:?}\n{USAGE}")),
        }
    }
    if a.addr.is_empty() {
        return Err(format!("--addr is required\n{USAGE}"));
    }
    a.concurrency = a.concurrency.max(1);
    a.threads = a.threads.max(1);
    Ok(a)
}

/// Raises RLIMIT_NOFILE's soft limit to the hard limit.
fn raise_nofile() {
    unsafe {
        let mut r = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) == 0 && r.rlim_cur < r.rlim_max {
            r.rlim_cur = r.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &r);
        }
    }
}

async fn connect(addr: &str, path: &str) -> Result<Ws, String> {
    let fut = async {
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let _ = tcp.set_nodelay(true);
        let url = format!("ws://{addr}{path}");
        let (ws, _resp) = client_async(url, tcp)
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        Ok::<Ws, String>(ws)
    };
    match tokio::time::timeout(Duration::from_secs(15), fut).await {
        Ok(r) => r,
        Err(_) => Err("connect timeout".into()),
    }
}

/// Opens `n` connections with at most `concurrency` in flight; returns the open ones and the
/// first few errors.
async fn open_many(
    addr: &str,
    path: &str,
    n: usize,
    concurrency: usize,
) -> (Vec<Ws>, usize, Vec<String>) {
    let mut out = Vec::with_capacity(n);
    let mut failed = 0;
    let mut samples = Vec::new();
    let mut s = futures_util::stream::iter(0..n)
        .map(|_| connect(addr, path))
        .buffer_unordered(concurrency);
    while let Some(r) = s.next().await {
        match r {
            Ok(ws) => out.push(ws),
            Err(e) => {
                failed += 1;
                if samples.len() < 5 {
                    samples.push(e);
                }
            }
        }
    }
    (out, failed, samples)
}

/// Sends `msg` and waits for the next data message. Ok(true) when it came back intact.
async fn round_trip(ws: &mut Ws, msg: &str) -> Result<bool, String> {
    ws.send(Message::Text(msg.to_string()))
        .await
        .map_err(|e| format!("send: {e}"))?;
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) => return Ok(t == msg),
            Some(Ok(Message::Binary(b))) => return Ok(b == msg.as_bytes()),
            Some(Ok(Message::Close(_))) | None => return Err("closed".into()),
            Some(Ok(_)) => continue, // ping/pong
            Some(Err(e)) => return Err(format!("recv: {e}")),
        }
    }
}

fn percentile(sorted: &[u32], p: f64) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

async fn echo(a: Args) {
    let (conns, failed, samples) = open_many(&a.addr, &a.path, a.conns, a.concurrency).await;
    for e in &samples {
        eprintln!("wsbench: connect error: {e}");
    }
    let connected = conns.len();
    let payload: String = "x".repeat(a.size.max(1));
    let errors = Arc::new(AtomicU64::new(failed as u64));
    let start = Instant::now();
    let deadline = start + a.duration;
    let mut tasks = Vec::with_capacity(connected);
    for mut ws in conns {
        let payload = payload.clone();
        let errors = errors.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat: Vec<u32> = Vec::with_capacity(4096);
            while Instant::now() < deadline {
                let t0 = Instant::now();
                let r = tokio::time::timeout(Duration::from_secs(5), round_trip(&mut ws, &payload))
                    .await;
                match r {
                    Ok(Ok(true)) => lat.push(t0.elapsed().as_micros().min(u32::MAX as u128) as u32),
                    Ok(Ok(false)) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {
                        errors.fetch_add(1, Ordering::Relaxed);
                        return (lat, Instant::now());
                    }
                }
            }
            let end = Instant::now();
            let _ = tokio::time::timeout(Duration::from_secs(2), ws.close(None)).await;
            (lat, end)
        }));
    }
    let mut all: Vec<u32> = Vec::new();
    let mut end = start;
    for t in tasks {
        if let Ok((l, e)) = t.await {
            all.extend(l);
            end = end.max(e);
        }
    }
    // From the start to the last completed round trip (before the closing handshakes).
    let secs = (end - start).as_secs_f64().max(1e-9);
    all.sort_unstable();
    let out = serde_json::json!({
        "messages": all.len(),
        "seconds": (secs * 1000.0).round() / 1000.0,
        "msgs_per_s": (all.len() as f64 / secs).round(),
        "p50_us": percentile(&all, 0.50),
        "p99_us": percentile(&all, 0.99),
        "errors": errors.load(Ordering::Relaxed),
        "connected": connected,
    });
    println!("{out}");
}

async fn idle(a: Args) {
    let t0 = Instant::now();
    let (mut conns, failed, samples) = open_many(&a.addr, &a.path, a.conns, a.concurrency).await;
    let connect_secs = t0.elapsed().as_secs_f64();
    for e in &samples {
        eprintln!("wsbench: connect error: {e}");
    }
    println!("connected {}", conns.len());
    let _ = std::io::stdout().flush();
    tokio::time::sleep(a.hold).await;

    // Still alive? One echo on each, `concurrency` at a time.
    let results: Vec<(Ws, bool)> = futures_util::stream::iter(conns.drain(..))
        .map(|mut ws| async move {
            let ok = matches!(
                tokio::time::timeout(Duration::from_secs(10), round_trip(&mut ws, "alive?")).await,
                Ok(Ok(true))
            );
            (ws, ok)
        })
        .buffer_unordered(a.concurrency)
        .collect()
        .await;
    let alive = results.iter().filter(|(_, ok)| *ok).count();
    println!("alive {alive}");
    let _ = std::io::stdout().flush();
    futures_util::stream::iter(results)
        .for_each_concurrent(a.concurrency, |(mut ws, _)| async move {
            let _ = tokio::time::timeout(Duration::from_secs(2), ws.close(None)).await;
        })
        .await;
    let out = serde_json::json!({
        "connected": a.conns - failed,
        "failed": failed,
        "alive": alive,
        "connect_seconds": (connect_secs * 1000.0).round() / 1000.0,
    });
    println!("{out}");
}

fn main() {
    let a = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    raise_nofile();
    let rt = if a.threads == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(a.threads)
            .enable_all()
            .build()
    }
    .expect("tokio runtime");
    rt.block_on(async move {
        if a.mode == "echo" {
            echo(a).await
        } else {
            idle(a).await
        }
    });
}
