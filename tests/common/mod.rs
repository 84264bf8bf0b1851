//! Integration test harness: gateway process management, demo backends,
//! a raw HTTP/1.1 client and WebSocket helpers.
//!
//! Use from a test file with `mod common;` and `use common::*;`.
#![allow(dead_code, unused_imports)]

#[path = "../../examples/demo_backend.rs"]
pub mod demo;
pub use demo::Backend;

use std::fs;
use std::future::Future;
use std::io;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::{HeaderName, HeaderValue};
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::WebSocketStream;

pub use tokio_tungstenite::tungstenite::Message as WsMessage;

/// Default overall timeout for one HTTP exchange / WebSocket handshake.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// How long `Gateway::start*` waits for the listening port.
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------------------
// misc
// ---------------------------------------------------------------------------

/// A currently free TCP port on 127.0.0.1 (bind :0, read the port, drop).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free_port: bind 127.0.0.1:0")
}

/// A loopback port that refuses connections while this lives. A port that was merely free
/// when picked (`free_port`) can be bound by a parallel test, or taken as a connection's own
/// local port (a self-connect "succeeds"), and then a dead backend looks alive. This one is
/// bound without listening and without SO_REUSEADDR, so neither can happen until it drops.
pub struct DeadPort(tokio::net::TcpSocket, u16);

impl DeadPort {
    pub fn new() -> DeadPort {
        let s = tokio::net::TcpSocket::new_v4().expect("DeadPort: socket");
        s.bind(SocketAddr::from(([127, 0, 0, 1], 0)))
            .expect("DeadPort: bind 127.0.0.1:0");
        let port = s.local_addr().expect("DeadPort: local_addr").port();
        DeadPort(s, port)
    }

    pub fn port(&self) -> u16 {
        self.1
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.1))
    }
}

/// A fresh, unique, empty directory under the system temp dir.
pub fn unique_temp_dir(prefix: &str) -> PathBuf {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let dir = std::env::temp_dir().join(format!("{prefix}-{}-{n}-{nanos}", std::process::id()));
    fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
    dir
}

/// Path of a binary built from `examples/` (cargo builds them next to the test binaries' `deps/`).
pub fn example_bin(name: &str) -> String {
    let exe = std::env::current_exe().expect("current_exe");
    let dir = exe.parent().and_then(|d| d.parent()).expect("target dir");
    dir.join("examples")
        .join(name)
        .to_string_lossy()
        .into_owned()
}

/// Path of the gateway binary under test.
pub fn gateway_bin() -> &'static str {
    env!("CARGO_BIN_EXE_gateway")
}

fn apply_rust_log(cmd: &mut Command) {
    if std::env::var_os("RUST_LOG").is_none() {
        cmd.env("RUST_LOG", "info");
    }
}

/// Start several demo backends named as given.
pub async fn start_backends(names: &[&str]) -> Vec<Backend> {
    let mut v = Vec::with_capacity(names.len());
    for n in names {
        v.push(Backend::start(n).await);
    }
    v
}

/// A TCP connection to 127.0.0.1:port from the loopback address `ip` (e.g. 127.0.0.2), to
/// act as another client address.
pub async fn connect_from(ip: &str, port: u16) -> TcpStream {
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.bind(format!("{ip}:0").parse().unwrap()).unwrap();
    sock.connect(format!("127.0.0.1:{port}").parse().unwrap())
        .await
        .unwrap()
}

/// Poll an async predicate every 50 ms until it returns true (-> true) or `timeout` elapses (-> false).
pub async fn eventually<F, Fut>(timeout: Duration, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if f().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// True if a TCP connection to 127.0.0.1:port can be established right now.
pub fn port_open(port: u16) -> bool {
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
}

// ---------------------------------------------------------------------------
// gateway process
// ---------------------------------------------------------------------------

/// A running gateway process. Killed (SIGKILL) and its temp dir removed on drop.
/// If the test is panicking, the gateway log is printed to stderr and the dir is kept.
pub struct Gateway {
    pub port: u16,
    pub admin_port: u16,
    pub dir: PathBuf,
    pub config_path: PathBuf,
    pub log_path: PathBuf,
    child: Option<Child>,
}

impl Gateway {
    /// `template` may contain `{PORT}` and `{ADMIN}`, replaced with fresh free ports.
    /// Waits until the proxy port accepts connections; panics (with the log) on failure.
    pub fn start(template: &str) -> Gateway {
        Self::start_bin(gateway_bin(), template)
    }

    /// `yaml` is used verbatim; the caller says which ports it configures.
    pub fn start_with(yaml: &str, port: u16, admin_port: u16) -> Gateway {
        Self::start_with_args(yaml, port, admin_port, &[])
    }

    /// Like `start_with`, with extra command line arguments after `-c <file>`.
    pub fn start_with_args(yaml: &str, port: u16, admin_port: u16, extra_args: &[&str]) -> Gateway {
        match Self::try_start_with_args(yaml, port, admin_port, extra_args) {
            Ok(g) => g,
            Err(msg) => panic!("{msg}"),
        }
    }

    /// Like `start_with`, but returns the error (including the gateway log) instead of panicking.
    pub fn try_start_with(yaml: &str, port: u16, admin_port: u16) -> Result<Gateway, String> {
        Self::try_start_with_args(yaml, port, admin_port, &[])
    }

    pub fn try_start_with_args(
        yaml: &str,
        port: u16,
        admin_port: u16,
        extra_args: &[&str],
    ) -> Result<Gateway, String> {
        Self::try_start_bin(gateway_bin(), yaml, port, admin_port, extra_args)
    }

    /// Like `start`, running another gateway binary (e.g. a custom build from `examples/`).
    /// A port from `free_port` can be taken by another test before the gateway binds it
    /// (Pingora then logs "is in use" and the port answers for someone else): start again on
    /// fresh ports.
    pub fn start_bin(bin: &str, template: &str) -> Gateway {
        let mut last = String::new();
        for _ in 0..5 {
            let port = free_port();
            let mut admin_port = free_port();
            while admin_port == port {
                admin_port = free_port();
            }
            let yaml = template
                .replace("{PORT}", &port.to_string())
                .replace("{ADMIN}", &admin_port.to_string());
            let gw = match Self::try_start_bin(bin, &yaml, port, admin_port, &[]) {
                Ok(gw) => gw,
                // taken by another process's connection (not listening): fresh ports
                Err(e) if e.contains("is in use") => {
                    last = e;
                    continue;
                }
                Err(e) => panic!("{e}"),
            };
            // The admin service starts after the proxy's listeners are bound (or refused).
            if !yaml.contains(&format!(":{admin_port}")) {
                std::thread::sleep(Duration::from_millis(50));
            }
            if !gw.log().contains("is in use") {
                return gw;
            }
            last = gw.log();
        }
        panic!("no free ports after 5 tries; last gateway log:\n{last}");
    }

    /// Starts `bin -c <file> extra_args...` and waits for its listeners.
    pub fn try_start_bin(
        bin: &str,
        yaml: &str,
        port: u16,
        admin_port: u16,
        extra_args: &[&str],
    ) -> Result<Gateway, String> {
        let dir = unique_temp_dir("gateway-test");
        let config_path = dir.join("gateway.yaml");
        let log_path = dir.join("gateway.log");
        fs::write(&config_path, yaml)
            .map_err(|e| format!("write {}: {e}", config_path.display()))?;
        let log = fs::File::create(&log_path)
            .map_err(|e| format!("create {}: {e}", log_path.display()))?;
        let log2 = log.try_clone().map_err(|e| e.to_string())?;
        let mut cmd = Command::new(bin);
        cmd.arg("-c").arg(&config_path).args(extra_args);
        cmd.current_dir(&dir)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2);
        apply_rust_log(&mut cmd);
        let child = cmd.spawn().map_err(|e| format!("spawn {bin}: {e}"))?;
        let mut gw = Gateway {
            port,
            admin_port,
            dir,
            config_path,
            log_path,
            child: Some(child),
        };

        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            if let Some(status) = gw
                .child
                .as_mut()
                .unwrap()
                .try_wait()
                .map_err(|e| e.to_string())?
            {
                let msg = format!(
                    "gateway exited during startup ({status}); config:\n{yaml}\n--- gateway log ---\n{}",
                    gw.log()
                );
                return Err(msg);
            }
            let admin_listed = admin_port != 0 && yaml.contains(&format!(":{admin_port}"));
            if port_open(port) && (!admin_listed || port_open(admin_port)) {
                return Ok(gw);
            }
            // A port bound by another process's connection never opens for us: say so now
            // (Pingora retries the bind every second) instead of after the startup timeout.
            if gw.log().contains("is in use") {
                let msg = format!(
                    "a port is in use by another process; config:\n{yaml}\n--- gateway log ---\n{}",
                    gw.log()
                );
                return Err(msg); // drop kills the child
            }
            if Instant::now() >= deadline {
                let msg = format!(
                    "gateway did not listen on 127.0.0.1:{port} within {STARTUP_TIMEOUT:?}; config:\n{yaml}\n--- gateway log ---\n{}",
                    gw.log()
                );
                return Err(msg); // drop kills the child
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Current contents of the gateway's combined stdout+stderr.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log_path)
            .unwrap_or_else(|e| format!("<cannot read {}: {e}>", self.log_path.display()))
    }

    /// Wait until the log contains `needle` (polling every 50 ms).
    pub fn wait_log_contains(&self, needle: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.log().contains(needle) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// Overwrite the config file (e.g. before sending a reload signal).
    pub fn write_config(&self, yaml: &str) {
        fs::write(&self.config_path, yaml).expect("write gateway config");
    }

    /// Send a signal by name (e.g. "TERM", "QUIT", "HUP") using `kill -s`.
    pub fn signal(&self, sig: &str) {
        let st = Command::new("kill")
            .args(["-s", sig, &self.pid().to_string()])
            .status();
        assert!(
            matches!(st, Ok(s) if s.success()),
            "kill -s {sig} {} failed: {st:?}",
            self.pid()
        );
    }

    /// `Some(exit status)` if the process has exited.
    pub fn try_wait(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    pub fn is_running(&mut self) -> bool {
        self.child.is_some() && self.try_wait().is_none()
    }

    /// Wait up to `timeout` for the process to exit by itself.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.try_wait() {
                return Some(s);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL the process and reap it (also done on drop).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{}", self.port, path)
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            let log = self.log();
            let lines: Vec<&str> = log.lines().collect();
            let tail = &lines[lines.len().saturating_sub(200)..];
            eprintln!(
                "--- gateway log (port {}, dir {} kept) ---\n{}\n--- end gateway log ---",
                self.port,
                self.dir.display(),
                tail.join("\n")
            );
        } else {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

/// Run `gateway -t -c <file>` on `yaml`; returns (exit code, stdout+stderr).
pub fn check_config(yaml: &str) -> (i32, String) {
    let dir = unique_temp_dir("gateway-check");
    let path = dir.join("gateway.yaml");
    fs::write(&path, yaml).expect("write config");
    let r = check_config_file(&path);
    let _ = fs::remove_dir_all(&dir);
    r
}

/// Run `gateway upgrade -c <cfg> --timeout 20s`; returns (success, its output). The output
/// goes to a file: the new daemon keeps the launcher's stdout/stderr open (Pingora does that
/// when no error_log is set), so a pipe would never reach EOF.
pub fn run_upgrade(cfg: &Path) -> (bool, String) {
    let log = cfg.with_extension("upgrade.log");
    let f = fs::File::create(&log).unwrap();
    let status = Command::new(gateway_bin())
        .args(["upgrade", "-c", cfg.to_str().unwrap(), "--timeout", "20s"])
        .stdout(f.try_clone().unwrap())
        .stderr(f)
        .status()
        .unwrap();
    (
        status.success(),
        fs::read_to_string(&log).unwrap_or_default(),
    )
}

/// Run `gateway -t -c <path>`; returns (exit code (-1 if killed by a signal), stdout+stderr).
/// Panics if it does not finish within 20 s.
pub fn check_config_file(path: impl AsRef<Path>) -> (i32, String) {
    let dir = unique_temp_dir("gateway-check-out");
    let out_path = dir.join("out.log");
    let out = fs::File::create(&out_path).expect("create output file");
    let out2 = out.try_clone().expect("dup output file");
    let mut cmd = Command::new(gateway_bin());
    cmd.arg("-t").arg("-c").arg(path.as_ref());
    cmd.stdin(Stdio::null()).stdout(out).stderr(out2);
    apply_rust_log(&mut cmd);
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {}: {e}", gateway_bin()));
    let deadline = Instant::now() + STARTUP_TIMEOUT;
    let status = loop {
        if let Some(s) = child.try_wait().expect("try_wait") {
            break s;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            let output = fs::read_to_string(&out_path).unwrap_or_default();
            let _ = fs::remove_dir_all(&dir);
            panic!(
                "`gateway -t -c {}` did not exit within {STARTUP_TIMEOUT:?}; output:\n{output}",
                path.as_ref().display()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let output = fs::read_to_string(&out_path).unwrap_or_default();
    let _ = fs::remove_dir_all(&dir);
    (status.code().unwrap_or(-1), output)
}

// ---------------------------------------------------------------------------
// raw HTTP/1.1 client
// ---------------------------------------------------------------------------

#[derive(Debug, Clone)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    /// First header with that name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// All values of that header (case-insensitive), in order.
    pub fn header_all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// Body parsed as JSON; panics with the response if it is not JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "response body is not JSON ({e}): status {} body {:?}",
                self.status,
                self.text()
            )
        })
    }

    /// Body as (lossy) UTF-8.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// For demo-backend JSON echoes: the `backend` field (or the X-Backend header).
    pub fn backend(&self) -> Option<String> {
        if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&self.body) {
            if let Some(b) = v.get("backend").and_then(|b| b.as_str()) {
                return Some(b.to_string());
            }
        }
        self.header("x-backend").map(str::to_string)
    }
}

fn timed_out(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        format!("{what} timed out after {IO_TIMEOUT:?}"),
    )
}

fn invalid(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

async fn fill<S: AsyncRead + Unpin>(s: &mut S, buf: &mut Vec<u8>) -> io::Result<usize> {
    let mut tmp = [0u8; 16 * 1024];
    let n = s.read(&mut tmp).await?;
    buf.extend_from_slice(&tmp[..n]);
    Ok(n)
}

async fn fill_or_eof<S: AsyncRead + Unpin>(
    s: &mut S,
    buf: &mut Vec<u8>,
    what: &str,
) -> io::Result<()> {
    if fill(s, buf).await? == 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("connection closed while reading {what}"),
        ));
    }
    Ok(())
}

/// For raw test backends: reads until the end of a request head (CRLFCRLF); `None` when the
/// peer closes or the read fails first. Bytes read past the head are returned with it.
pub async fn read_head<S: AsyncRead + Unpin>(s: &mut S) -> Option<Vec<u8>> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while find_crlf2(&got).is_none() {
        match s.read(&mut buf).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    Some(got)
}

fn find_crlf2(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4)
}

/// Reads one response from `s`. `buf` holds bytes already read (and receives leftovers).
/// Interim 1xx responses (except 101) are skipped.
async fn read_response<S: AsyncRead + Unpin>(
    s: &mut S,
    buf: &mut Vec<u8>,
    head_request: bool,
) -> io::Result<Resp> {
    loop {
        let head_end = loop {
            if let Some(p) = find_crlf2(buf) {
                break p;
            }
            if buf.len() > 1024 * 1024 {
                return Err(invalid("response head too large"));
            }
            if fill(s, buf).await? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    if buf.is_empty() {
                        "connection closed before any response bytes".to_string()
                    } else {
                        format!(
                            "connection closed mid response head: {:?}",
                            String::from_utf8_lossy(buf)
                        )
                    },
                ));
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        buf.drain(..head_end);
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or("");
        let mut parts = status_line.splitn(3, ' ');
        let version = parts.next().unwrap_or("");
        if !version.starts_with("HTTP/") {
            return Err(invalid(format!("bad status line {status_line:?}")));
        }
        let status: u16 = parts
            .next()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| invalid(format!("bad status line {status_line:?}")))?;
        let mut headers = Vec::new();
        for line in lines {
            if line.is_empty() {
                continue;
            }
            let (k, v) = line
                .split_once(':')
                .ok_or_else(|| invalid(format!("bad header line {line:?}")))?;
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
        if (100..200).contains(&status) && status != 101 {
            continue; // interim response
        }
        let mut resp = Resp {
            status,
            headers,
            body: Vec::new(),
        };
        if head_request || status == 101 || status == 204 || status == 304 {
            return Ok(resp);
        }
        let chunked = resp.header_all("transfer-encoding").iter().any(|v| {
            v.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("chunked"))
        });
        if chunked {
            resp.body = read_chunked(s, buf).await?;
        } else if let Some(cl) = resp.header("content-length") {
            let n: usize = cl
                .parse()
                .map_err(|_| invalid(format!("bad content-length {cl:?}")))?;
            while buf.len() < n {
                fill_or_eof(s, buf, "response body").await?;
            }
            resp.body = buf.drain(..n).collect();
        } else {
            // until close
            while fill(s, buf).await? > 0 {}
            resp.body = std::mem::take(buf);
        }
        return Ok(resp);
    }
}

async fn read_line<S: AsyncRead + Unpin>(s: &mut S, buf: &mut Vec<u8>) -> io::Result<String> {
    loop {
        if let Some(p) = buf.windows(2).position(|w| w == b"\r\n") {
            let line = String::from_utf8_lossy(&buf[..p]).into_owned();
            buf.drain(..p + 2);
            return Ok(line);
        }
        fill_or_eof(s, buf, "chunked body").await?;
    }
}

async fn read_chunked<S: AsyncRead + Unpin>(s: &mut S, buf: &mut Vec<u8>) -> io::Result<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let line = read_line(s, buf).await?;
        let size_str = line.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_str, 16)
            .map_err(|_| invalid(format!("bad chunk size {line:?}")))?;
        if size == 0 {
            // trailers
            while !read_line(s, buf).await?.is_empty() {}
            return Ok(body);
        }
        while buf.len() < size + 2 {
            fill_or_eof(s, buf, "chunk data").await?;
        }
        body.extend_from_slice(&buf[..size]);
        buf.drain(..size + 2);
    }
}

fn is_head(raw: &[u8]) -> bool {
    raw.starts_with(b"HEAD ")
}

/// Connects to 127.0.0.1:port, writes `raw` as given, reads one full response
/// (Content-Length, chunked, or until close). 10 s overall timeout.
pub async fn http(port: u16, raw_request: &str) -> io::Result<Resp> {
    http_bytes(port, raw_request.as_bytes()).await
}

/// `http` with a binary request.
pub async fn http_bytes(port: u16, raw_request: &[u8]) -> io::Result<Resp> {
    let fut = async {
        let mut s = TcpStream::connect(("127.0.0.1", port)).await?;
        let _ = s.set_nodelay(true);
        s.write_all(raw_request).await?;
        let mut buf = Vec::new();
        read_response(&mut s, &mut buf, is_head(raw_request)).await
    };
    tokio::time::timeout(IO_TIMEOUT, fut)
        .await
        .map_err(|_| timed_out("http request"))?
}

fn build_request(
    method: &str,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    close: bool,
) -> Vec<u8> {
    let mut r = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\n");
    for (k, v) in headers {
        r.push_str(&format!("{k}: {v}\r\n"));
    }
    let has_len = headers.iter().any(|(k, _)| {
        k.eq_ignore_ascii_case("content-length") || k.eq_ignore_ascii_case("transfer-encoding")
    });
    if !body.is_empty() && !has_len {
        r.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    if close
        && !headers
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case("connection"))
    {
        r.push_str("Connection: close\r\n");
    }
    r.push_str("\r\n");
    let mut v = r.into_bytes();
    v.extend_from_slice(body);
    v
}

/// `GET path` with `Host: host` and `Connection: close`. Panics on I/O error.
pub async fn get(port: u16, host: &str, path: &str) -> Resp {
    get_with(port, host, path, &[]).await
}

/// `get` with extra request headers.
pub async fn get_with(port: u16, host: &str, path: &str, extra_headers: &[(&str, &str)]) -> Resp {
    send(port, "GET", host, path, extra_headers, b"").await
}

/// Any method, with headers and body (Content-Length added when body is non-empty),
/// `Connection: close` unless a Connection header is given. Panics on I/O error.
pub async fn send(
    port: u16,
    method: &str,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Resp {
    let raw = build_request(method, host, path, headers, body, true);
    http_bytes(port, &raw)
        .await
        .unwrap_or_else(|e| panic!("{method} http://{host}{path} via 127.0.0.1:{port} failed: {e}"))
}

/// A keep-alive HTTP/1.1 connection: one response read per `request` call.
pub struct H1Conn {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

impl H1Conn {
    /// Connect to 127.0.0.1:port (10 s timeout).
    pub async fn connect(port: u16) -> io::Result<H1Conn> {
        let stream = tokio::time::timeout(IO_TIMEOUT, TcpStream::connect(("127.0.0.1", port)))
            .await
            .map_err(|_| timed_out("connect"))??;
        let _ = stream.set_nodelay(true);
        Ok(H1Conn {
            stream,
            buf: Vec::new(),
        })
    }

    /// Write `raw` and read exactly one response (10 s timeout).
    pub async fn request(&mut self, raw: &str) -> io::Result<Resp> {
        self.request_bytes(raw.as_bytes()).await
    }

    pub async fn request_bytes(&mut self, raw: &[u8]) -> io::Result<Resp> {
        let fut = async {
            self.stream.write_all(raw).await?;
            read_response(&mut self.stream, &mut self.buf, is_head(raw)).await
        };
        tokio::time::timeout(IO_TIMEOUT, fut)
            .await
            .map_err(|_| timed_out("http request"))?
    }

    /// Keep-alive `GET path` with `Host: host`; panics on error.
    pub async fn get(&mut self, host: &str, path: &str) -> Resp {
        let raw = build_request("GET", host, path, &[], b"", false);
        self.request_bytes(&raw)
            .await
            .unwrap_or_else(|e| panic!("keep-alive GET http://{host}{path} failed: {e}"))
    }

    /// Write raw bytes without reading anything.
    pub async fn write(&mut self, raw: &[u8]) -> io::Result<()> {
        self.stream.write_all(raw).await
    }

    /// Read one response without writing anything.
    pub async fn read_response(&mut self) -> io::Result<Resp> {
        tokio::time::timeout(
            IO_TIMEOUT,
            read_response(&mut self.stream, &mut self.buf, false),
        )
        .await
        .map_err(|_| timed_out("read response"))?
    }

    /// True if the peer has closed (or reset) the connection; waits up to `wait` for that.
    pub async fn is_closed(&mut self, wait: Duration) -> bool {
        let mut tmp = [0u8; 1024];
        match tokio::time::timeout(wait, self.stream.read(&mut tmp)).await {
            Ok(Ok(0)) | Ok(Err(_)) => true,
            Ok(Ok(n)) => {
                self.buf.extend_from_slice(&tmp[..n]);
                false
            }
            Err(_) => false,
        }
    }
}

// ---------------------------------------------------------------------------
// WebSocket
// ---------------------------------------------------------------------------

pub type Ws = WebSocketStream<TcpStream>;

/// WebSocket handshake to ws://<host><path> over a TCP connection to 127.0.0.1:port.
/// Panics with a clear message on failure.
pub async fn ws_connect(port: u16, host: &str, path: &str) -> Ws {
    match try_ws_connect(port, host, path).await {
        Ok(ws) => ws,
        Err(e) => panic!("WebSocket connect ws://{host}{path} via 127.0.0.1:{port} failed: {e}"),
    }
}

/// Why a WebSocket handshake failed. `status` is set when the server answered with an
/// HTTP response other than 101 (e.g. 404, 502).
#[derive(Debug, Clone)]
pub struct WsConnectError {
    pub status: Option<u16>,
    pub message: String,
}

impl std::fmt::Display for WsConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

fn ws_err(message: String) -> WsConnectError {
    WsConnectError {
        status: None,
        message,
    }
}

/// Result variant of `ws_connect`.
pub async fn try_ws_connect(port: u16, host: &str, path: &str) -> Result<Ws, WsConnectError> {
    ws_connect_with(port, host, path, &[])
        .await
        .map(|(ws, _)| ws)
}

/// Handshake with extra request headers; returns the stream and the handshake response.
/// On an HTTP error response the message contains the status and body.
pub async fn ws_connect_with(
    port: u16,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<(Ws, tungstenite::handshake::client::Response), WsConnectError> {
    let url = format!("ws://{host}{path}");
    let mut req = url
        .as_str()
        .into_client_request()
        .map_err(|e| ws_err(format!("bad ws url {url}: {e}")))?;
    for (k, v) in headers {
        let name = HeaderName::from_bytes(k.as_bytes())
            .map_err(|e| ws_err(format!("bad header name {k}: {e}")))?;
        let value =
            HeaderValue::from_str(v).map_err(|e| ws_err(format!("bad header value {v}: {e}")))?;
        req.headers_mut().append(name, value);
    }
    let fut = async {
        let stream = TcpStream::connect(("127.0.0.1", port))
            .await
            .map_err(|e| ws_err(format!("tcp connect: {e}")))?;
        let _ = stream.set_nodelay(true);
        tokio_tungstenite::client_async(req, stream)
            .await
            .map_err(|e| match e {
                tungstenite::Error::Http(resp) => {
                    let body = resp
                        .body()
                        .as_ref()
                        .map(|b| String::from_utf8_lossy(b).into_owned())
                        .unwrap_or_default();
                    let status = resp.status().as_u16();
                    WsConnectError {
                        status: Some(status),
                        message: format!("handshake rejected: HTTP {status} body {body:?}"),
                    }
                }
                other => ws_err(format!("handshake failed: {other}")),
            })
    };
    tokio::time::timeout(IO_TIMEOUT, fut)
        .await
        .map_err(|_| ws_err(format!("ws handshake timed out after {IO_TIMEOUT:?}")))?
}

/// Next data message (Text/Binary/Close), skipping Ping/Pong; None when the stream ended. 10 s timeout (panics).
pub async fn ws_recv(ws: &mut Ws) -> Option<Message> {
    loop {
        let next = tokio::time::timeout(IO_TIMEOUT, ws.next())
            .await
            .expect("ws_recv timed out");
        match next {
            None => return None,
            Some(Err(_)) => return None,
            Some(Ok(Message::Ping(_))) | Some(Ok(Message::Pong(_))) => continue,
            Some(Ok(m)) => return Some(m),
        }
    }
}

/// Send a text message and return the next text reply (panics on anything else).
pub async fn ws_roundtrip(ws: &mut Ws, text: &str) -> String {
    ws.send(Message::Text(text.to_string()))
        .await
        .expect("ws send");
    match ws_recv(ws).await {
        Some(Message::Text(t)) => t,
        other => panic!("expected a text reply to {text:?}, got {other:?}"),
    }
}
