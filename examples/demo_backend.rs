//! Demo backend: a small, fast HTTP/1.1 + WebSocket echo server.
//!
//! Used by the README quick start, the benchmarks and the integration tests
//! (tests include this file as a module: `#[path = "../../examples/demo_backend.rs"] mod demo;`).
//!
//! ```text
//! cargo run --release --example demo_backend -- \
//!     --listen 127.0.0.1:3000 --name node-a --listen 127.0.0.1:3001 --name node-b
//! ```
//!
//! Behaviour (every response carries an `X-Backend: <name>` header):
//! * `GET /health`                     -> 200 `ok`
//! * `GET /` with `Accept: text/html`  -> small HTML page with a WebSocket echo client (`/ws`)
//! * `Upgrade: websocket` (any path)   -> WebSocket echo; text `whoami` is answered with the name
//! * `/sleep/<ms>`                     -> waits `<ms>` milliseconds, then the JSON echo below
//! * `/status/<code>`                  -> responds with that status code and the JSON echo below
//! * `/bytes/<n>`                      -> `n` bytes of `x` (at most 64 MiB)
//! * anything else                     -> 200 JSON:
//!   `{"backend":..,"method":..,"path":..,"headers":{lowercased name: value},"body_len":N}`
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{self, Write as _};
use std::net::{Shutdown, SocketAddr};
use std::os::fd::AsFd;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::task::AbortHandle;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

const MAX_HEAD: usize = 64 * 1024;

/// A running demo backend server. Cheap to clone (all clones control the same server).
#[derive(Clone)]
pub struct Backend {
    pub addr: SocketAddr,
    pub name: String,
    /// Every request, including WebSocket upgrades and `/health`.
    pub hits: Arc<AtomicUsize>,
    /// Every request except `/health`.
    pub app_hits: Arc<AtomicUsize>,
    /// WebSocket upgrades only.
    pub ws_hits: Arc<AtomicUsize>,
    /// Accepted TCP connections (total, not currently open).
    pub conns: Arc<AtomicUsize>,
    shared: Arc<Shared>,
}

struct Shared {
    name: Arc<str>,
    hits: Arc<AtomicUsize>,
    app_hits: Arc<AtomicUsize>,
    ws_hits: Arc<AtomicUsize>,
    conns: Arc<AtomicUsize>,
    stopped: AtomicBool,
    /// dup of the listening socket, used to shut it down synchronously in `stop()`.
    listener_fd: Mutex<Option<std::net::TcpStream>>,
    accept_task: Mutex<Option<AbortHandle>>,
    /// open connections: id -> (dup of the socket, task)
    open: Mutex<HashMap<u64, (std::net::TcpStream, AbortHandle)>>,
    next_id: AtomicU64,
}

impl Backend {
    /// Start a backend on 127.0.0.1:<random port>. Panics on failure.
    pub async fn start(name: &str) -> Backend {
        Self::start_on("127.0.0.1:0".parse().unwrap(), name)
            .await
            .expect("demo backend: bind 127.0.0.1:0")
    }

    /// Start a backend on a given address (SO_REUSEADDR is set, so a stopped
    /// backend can be restarted on the same port). Retries for up to 2 s if the
    /// address is still in use.
    pub async fn start_on(addr: SocketAddr, name: &str) -> io::Result<Backend> {
        let listener = bind_reuse(addr).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            name: Arc::from(name),
            hits: Arc::new(AtomicUsize::new(0)),
            app_hits: Arc::new(AtomicUsize::new(0)),
            ws_hits: Arc::new(AtomicUsize::new(0)),
            conns: Arc::new(AtomicUsize::new(0)),
            stopped: AtomicBool::new(false),
            listener_fd: Mutex::new(Some(std::net::TcpStream::from(
                listener.as_fd().try_clone_to_owned()?,
            ))),
            accept_task: Mutex::new(None),
            open: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
        });
        let task = tokio::spawn(accept_loop(listener, shared.clone()));
        *shared.accept_task.lock().unwrap() = Some(task.abort_handle());
        Ok(Backend {
            addr,
            name: name.to_string(),
            hits: shared.hits.clone(),
            app_hits: shared.app_hits.clone(),
            ws_hits: shared.ws_hits.clone(),
            conns: shared.conns.clone(),
            shared,
        })
    }

    /// Start another backend with the same name on the same address (after `stop()`).
    pub async fn restart(&self) -> io::Result<Backend> {
        Self::start_on(self.addr, &self.name).await
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Stops accepting and aborts all open connections. Synchronous: when this
    /// returns, new connections to the port are refused and open ones are shut down.
    pub fn stop(&self) {
        let s = &self.shared;
        s.stopped.store(true, Ordering::SeqCst);
        if let Some(l) = s.listener_fd.lock().unwrap().take() {
            // shutdown(2) on a listening socket moves it to CLOSE: new SYNs get RST.
            let _ = l.shutdown(Shutdown::Both);
        }
        if let Some(t) = s.accept_task.lock().unwrap().take() {
            t.abort();
        }
        let open = std::mem::take(&mut *s.open.lock().unwrap());
        for (_, (sock, task)) in open {
            let _ = sock.shutdown(Shutdown::Both);
            task.abort();
        }
    }

    pub fn is_stopped(&self) -> bool {
        self.shared.stopped.load(Ordering::SeqCst)
    }

    /// Number of currently open connections.
    pub fn open_connections(&self) -> usize {
        self.shared.open.lock().unwrap().len()
    }

    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    pub fn app_hits(&self) -> usize {
        self.app_hits.load(Ordering::SeqCst)
    }

    pub fn reset_counters(&self) {
        self.hits.store(0, Ordering::SeqCst);
        self.app_hits.store(0, Ordering::SeqCst);
        self.ws_hits.store(0, Ordering::SeqCst);
        self.conns.store(0, Ordering::SeqCst);
    }
}

async fn bind_reuse(addr: SocketAddr) -> io::Result<TcpListener> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    loop {
        let sock = if addr.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        sock.set_reuseaddr(true)?;
        match sock.bind(addr).and_then(|_| sock.listen(1024)) {
            Ok(l) => return Ok(l),
            Err(e)
                if e.kind() == io::ErrorKind::AddrInUse
                    && tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let (stream, _peer) = match listener.accept().await {
            Ok(x) => x,
            Err(_) => {
                if shared.stopped.load(Ordering::SeqCst) {
                    return;
                }
                // e.g. EMFILE: back off a little
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        if shared.stopped.load(Ordering::SeqCst) {
            return;
        }
        shared.conns.fetch_add(1, Ordering::Relaxed);
        let _ = stream.set_nodelay(true);
        let dup = match stream.as_fd().try_clone_to_owned() {
            Ok(fd) => std::net::TcpStream::from(fd),
            Err(_) => continue,
        };
        let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
        let mut open = shared.open.lock().unwrap();
        let sh = shared.clone();
        let task = tokio::spawn(async move {
            let _guard = ConnGuard {
                id,
                shared: sh.clone(),
            };
            let _ = serve_conn(stream, &sh).await;
        });
        open.insert(id, (dup, task.abort_handle()));
    }
}

struct ConnGuard {
    id: u64,
    shared: Arc<Shared>,
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        if let Ok(mut open) = self.shared.open.lock() {
            open.remove(&self.id);
        }
    }
}

// ---------------------------------------------------------------------------
// HTTP/1.1
// ---------------------------------------------------------------------------

struct Request {
    method: String,
    target: String,
    http10: bool,
    headers: Vec<(String, String)>,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn header_has_token(&self, name: &str, token: &str) -> bool {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .flat_map(|(_, v)| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    }

    fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or("")
    }
}

/// Position just after the blank line ending the head, searching from `from`.
fn find_head_end(buf: &[u8], from: usize) -> Option<usize> {
    let start = from.saturating_sub(3);
    let mut i = start;
    while i < buf.len() {
        if buf[i] == b'\n' {
            if buf.get(i + 1) == Some(&b'\n') {
                return Some(i + 2);
            }
            if buf.get(i + 1) == Some(&b'\r') && buf.get(i + 2) == Some(&b'\n') {
                return Some(i + 3);
            }
        }
        i += 1;
    }
    None
}

fn parse_head(head: &[u8]) -> Option<Request> {
    let text = String::from_utf8_lossy(head);
    let mut lines = text.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l));
    let mut first = lines.next()?;
    while first.is_empty() {
        // tolerate leading empty lines (RFC 9112 2.2)
        first = lines.next()?;
    }
    let mut parts = first.split(' ').filter(|p| !p.is_empty());
    let method = parts.next()?.to_string();
    let target = parts.next()?.to_string();
    let version = parts.next()?;
    if !version.starts_with("HTTP/1.") {
        return None;
    }
    let http10 = version == "HTTP/1.0";
    let mut headers = Vec::with_capacity(16);
    for line in lines {
        if line.is_empty() {
            break;
        }
        let (k, v) = line.split_once(':')?;
        headers.push((k.trim().to_string(), v.trim().to_string()));
    }
    Some(Request {
        method,
        target,
        http10,
        headers,
    })
}

async fn read_more<S: AsyncRead + Unpin>(s: &mut S, buf: &mut BytesMut) -> io::Result<usize> {
    if buf.capacity() - buf.len() < 4096 {
        buf.reserve(8192);
    }
    s.read_buf(buf).await
}

async fn read_more_or_eof<S: AsyncRead + Unpin>(s: &mut S, buf: &mut BytesMut) -> io::Result<()> {
    match read_more(s, buf).await? {
        0 => Err(io::Error::new(io::ErrorKind::UnexpectedEof, "eof in body")),
        _ => Ok(()),
    }
}

/// Reads and discards a Content-Length body; returns its length.
async fn skip_body_len<S: AsyncRead + Unpin>(
    s: &mut S,
    buf: &mut BytesMut,
    len: u64,
) -> io::Result<u64> {
    let mut left = len;
    loop {
        let take = (buf.len() as u64).min(left) as usize;
        buf.advance(take);
        left -= take as u64;
        if left == 0 {
            return Ok(len);
        }
        read_more_or_eof(s, buf).await?;
    }
}

/// Reads and discards a chunked body (including trailers); returns the decoded length.
async fn skip_body_chunked<S: AsyncRead + Unpin>(s: &mut S, buf: &mut BytesMut) -> io::Result<u64> {
    let mut total = 0u64;
    loop {
        // chunk-size line
        let line_end = loop {
            if let Some(p) = buf.iter().position(|&b| b == b'\n') {
                break p;
            }
            if buf.len() > 4096 {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "chunk size line too long",
                ));
            }
            read_more_or_eof(s, buf).await?;
        };
        let line = String::from_utf8_lossy(&buf[..line_end]).to_string();
        buf.advance(line_end + 1);
        let size_str = line
            .trim()
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_string();
        let size = u64::from_str_radix(&size_str, 16)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "bad chunk size"))?;
        if size == 0 {
            // trailers until empty line
            loop {
                let p = loop {
                    if let Some(p) = buf.iter().position(|&b| b == b'\n') {
                        break p;
                    }
                    read_more_or_eof(s, buf).await?;
                };
                let empty = buf[..p].iter().all(|&b| b == b'\r');
                buf.advance(p + 1);
                if empty {
                    return Ok(total);
                }
            }
        }
        skip_body_len(s, buf, size).await?;
        total += size;
        // CRLF after data
        loop {
            if let Some(p) = buf.iter().position(|&b| b == b'\n') {
                buf.advance(p + 1);
                break;
            }
            read_more_or_eof(s, buf).await?;
        }
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        101 => "Switching Protocols",
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        301 => "Moved Permanently",
        302 => "Found",
        304 => "Not Modified",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        413 => "Payload Too Large",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Status",
    }
}

#[allow(clippy::too_many_arguments)]
fn write_response(
    out: &mut Vec<u8>,
    name: &str,
    status: u16,
    content_type: &str,
    body: &[u8],
    keep_alive: bool,
    http10: bool,
    head_only: bool,
) {
    let _ = write!(
        out,
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nX-Backend: {}\r\n",
        status,
        reason(status),
        content_type,
        body.len(),
        name
    );
    if !keep_alive {
        out.extend_from_slice(b"Connection: close\r\n");
    } else if http10 {
        out.extend_from_slice(b"Connection: keep-alive\r\n");
    }
    out.extend_from_slice(b"\r\n");
    if !head_only && !(100..200).contains(&status) && status != 204 && status != 304 {
        out.extend_from_slice(body);
    }
}

fn echo_json(name: &str, req: &Request, body_len: u64) -> Vec<u8> {
    let mut headers = serde_json::Map::new();
    for (k, v) in &req.headers {
        let k = k.to_ascii_lowercase();
        match headers.get_mut(&k) {
            Some(serde_json::Value::String(prev)) => {
                prev.push_str(", ");
                prev.push_str(v);
            }
            _ => {
                headers.insert(k, serde_json::Value::String(v.clone()));
            }
        }
    }
    let v = serde_json::json!({
        "backend": name,
        "method": req.method,
        "path": req.target,
        "headers": headers,
        "body_len": body_len,
    });
    serde_json::to_vec(&v).unwrap_or_default()
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn html_page(name: &str) -> Vec<u8> {
    let name = html_escape(name);
    format!(
        r#"<!doctype html>
<html><head><meta charset="utf-8"><title>demo backend {name}</title></head>
<body style="font-family:sans-serif">
<h1>Hello from <code>{name}</code></h1>
<p>WebSocket echo (<code>/ws</code>), type and press Enter. <code>whoami</code> returns the node name.</p>
<form id="f"><input id="m" size="40" autofocus> <button>send</button></form>
<pre id="log"></pre>
<script>
const log = (t) => {{ document.getElementById('log').textContent += t + '\n'; }};
const ws = new WebSocket((location.protocol === 'https:' ? 'wss://' : 'ws://') + location.host + '/ws');
ws.onopen = () => log('[connected]');
ws.onclose = () => log('[closed]');
ws.onerror = () => log('[error]');
ws.onmessage = (e) => log('< ' + e.data);
document.getElementById('f').onsubmit = (e) => {{
  e.preventDefault();
  const m = document.getElementById('m');
  if (ws.readyState === 1) {{ ws.send(m.value); log('> ' + m.value); }}
  m.value = '';
}};
</script>
</body></html>
"#
    )
    .into_bytes()
}

async fn serve_conn(mut stream: TcpStream, shared: &Shared) -> io::Result<()> {
    let name: &str = &shared.name;
    let mut buf = BytesMut::with_capacity(8192);
    let mut out: Vec<u8> = Vec::with_capacity(8192);
    loop {
        // ---- request head ----
        let mut scanned = 0;
        let head_end = loop {
            if let Some(p) = find_head_end(&buf, scanned) {
                break p;
            }
            scanned = buf.len();
            if buf.len() > MAX_HEAD {
                out.clear();
                write_response(
                    &mut out,
                    name,
                    431,
                    "text/plain",
                    b"request head too large\n",
                    false,
                    false,
                    false,
                );
                stream.write_all(&out).await?;
                return Ok(());
            }
            if read_more(&mut stream, &mut buf).await? == 0 {
                return Ok(()); // closed (between requests or mid-head)
            }
        };
        let req = match parse_head(&buf[..head_end]) {
            Some(r) => r,
            None => {
                out.clear();
                write_response(
                    &mut out,
                    name,
                    400,
                    "text/plain",
                    b"bad request\n",
                    false,
                    false,
                    false,
                );
                stream.write_all(&out).await?;
                return Ok(());
            }
        };
        buf.advance(head_end);

        shared.hits.fetch_add(1, Ordering::Relaxed);
        let path = req.path().to_string();
        let is_health = path == "/health";
        if !is_health {
            shared.app_hits.fetch_add(1, Ordering::Relaxed);
        }

        // ---- WebSocket upgrade ----
        if req.header_has_token("upgrade", "websocket") {
            shared.ws_hits.fetch_add(1, Ordering::Relaxed);
            let key = match req.header("sec-websocket-key") {
                Some(k) => k.to_string(),
                None => {
                    out.clear();
                    write_response(
                        &mut out,
                        name,
                        400,
                        "text/plain",
                        b"missing Sec-WebSocket-Key\n",
                        false,
                        req.http10,
                        false,
                    );
                    stream.write_all(&out).await?;
                    return Ok(());
                }
            };
            out.clear();
            let _ = write!(
                out,
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\nX-Backend: {}\r\n",
                derive_accept_key(key.as_bytes()),
                name
            );
            if let Some(protos) = req.header("sec-websocket-protocol") {
                if let Some(first) = protos.split(',').map(str::trim).find(|p| !p.is_empty()) {
                    let _ = write!(out, "Sec-WebSocket-Protocol: {}\r\n", first);
                }
            }
            out.extend_from_slice(b"\r\n");
            stream.write_all(&out).await?;
            let leftover = buf.split().freeze();
            let io = Prefixed {
                prefix: leftover,
                inner: stream,
            };
            let ws = WebSocketStream::from_raw_socket(io, Role::Server, None).await;
            ws_echo(ws, name).await;
            return Ok(());
        }

        // ---- body ----
        let chunked = req.header_has_token("transfer-encoding", "chunked");
        let content_length: Option<u64> = req
            .header("content-length")
            .and_then(|v| v.trim().parse().ok());
        let has_body = chunked || content_length.is_some_and(|n| n > 0);
        if has_body && req.header_has_token("expect", "100-continue") {
            stream.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await?;
        }
        let body_len = if chunked {
            skip_body_chunked(&mut stream, &mut buf).await?
        } else if let Some(n) = content_length {
            skip_body_len(&mut stream, &mut buf, n).await?
        } else {
            0
        };

        let keep_alive = if req.http10 {
            req.header_has_token("connection", "keep-alive")
        } else {
            !req.header_has_token("connection", "close")
        };
        let head_only = req.method.eq_ignore_ascii_case("HEAD");

        // ---- routes ----
        out.clear();
        if is_health {
            write_response(
                &mut out,
                name,
                200,
                "text/plain",
                b"ok",
                keep_alive,
                req.http10,
                head_only,
            );
        } else if let Some(ms) = path
            .strip_prefix("/sleep/")
            .and_then(|s| s.parse::<u64>().ok())
        {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            let body = echo_json(name, &req, body_len);
            write_response(
                &mut out,
                name,
                200,
                "application/json",
                &body,
                keep_alive,
                req.http10,
                head_only,
            );
        } else if let Some(n) = path
            .strip_prefix("/bytes/")
            .and_then(|s| s.parse::<usize>().ok())
            .filter(|n| *n <= 64 << 20)
        {
            let body = vec![b'x'; n];
            write_response(
                &mut out,
                name,
                200,
                "application/octet-stream",
                &body,
                keep_alive,
                req.http10,
                head_only,
            );
        } else if let Some(code) = path
            .strip_prefix("/status/")
            .and_then(|s| s.parse::<u16>().ok())
            .filter(|c| (200..600).contains(c))
        {
            let body = echo_json(name, &req, body_len);
            write_response(
                &mut out,
                name,
                code,
                "application/json",
                &body,
                keep_alive,
                req.http10,
                head_only,
            );
        } else if path == "/"
            && req
                .header("accept")
                .is_some_and(|a| a.contains("text/html"))
        {
            let body = html_page(name);
            write_response(
                &mut out,
                name,
                200,
                "text/html; charset=utf-8",
                &body,
                keep_alive,
                req.http10,
                head_only,
            );
        } else {
            let body = echo_json(name, &req, body_len);
            write_response(
                &mut out,
                name,
                200,
                "application/json",
                &body,
                keep_alive,
                req.http10,
                head_only,
            );
        }
        stream.write_all(&out).await?;
        if !keep_alive {
            let _ = stream.shutdown().await;
            return Ok(());
        }
        if buf.is_empty() && buf.capacity() > 256 * 1024 {
            buf = BytesMut::with_capacity(8192); // don't keep a huge buffer around
        }
    }
}

async fn ws_echo<S: AsyncRead + AsyncWrite + Unpin>(mut ws: WebSocketStream<S>, name: &str) {
    while let Some(msg) = ws.next().await {
        let msg = match msg {
            Ok(m) => m,
            Err(_) => break,
        };
        let reply = match msg {
            Message::Text(t) if t == "whoami" => Message::Text(name.to_string()),
            Message::Text(t) => Message::Text(t),
            Message::Binary(b) => Message::Binary(b),
            // Pings are answered automatically (pong is flushed on the next read);
            // a Close is answered automatically and the stream then ends.
            Message::Ping(_) | Message::Pong(_) | Message::Close(_) | Message::Frame(_) => continue,
        };
        if ws.send(reply).await.is_err() {
            break;
        }
    }
}

/// A stream that first yields `prefix` (bytes read past the HTTP head), then reads `inner`.
pub struct Prefixed<S> {
    prefix: bytes::Bytes,
    inner: S,
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.prefix.is_empty() {
            let n = this.prefix.len().min(buf.remaining());
            buf.put_slice(&this.prefix[..n]);
            this.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

// ---------------------------------------------------------------------------
// CLI
// ---------------------------------------------------------------------------

const USAGE: &str = "usage: demo_backend [--listen ADDR --name NAME]...\n  \
    e.g. demo_backend --listen 127.0.0.1:3000 --name node-a --listen 127.0.0.1:3001 --name node-b\n  \
    defaults: --listen 127.0.0.1:3000 --name node-a; a missing --name defaults to node-<n>";

/// Parses `--listen A --name N ...` pairs.
pub fn parse_args(args: &[String]) -> Result<Vec<(SocketAddr, String)>, String> {
    let mut listens: Vec<SocketAddr> = Vec::new();
    let mut names: Vec<String> = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let (flag, inline) = match a.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f, Some(v.to_string())),
            _ => (a.as_str(), None),
        };
        let mut value = |flag: &str| {
            inline
                .clone()
                .or_else(|| it.next().cloned())
                .ok_or_else(|| format!("{flag} needs a value"))
        };
        match flag {
            "--listen" | "-l" => {
                let v = value(flag)?;
                listens.push(v.parse().map_err(|e| format!("bad --listen {v:?}: {e}"))?);
            }
            "--name" | "-n" => names.push(value(flag)?),
            "--help" | "-h" => return Err(USAGE.to_string()),
            other => return Err(format!("unknown argument {other:?}\n{USAGE}")),
        }
    }
    if listens.is_empty() {
        listens.push("127.0.0.1:3000".parse().unwrap());
    }
    if names.len() > listens.len() {
        return Err(format!("more --name than --listen\n{USAGE}"));
    }
    Ok(listens
        .into_iter()
        .enumerate()
        .map(|(i, a)| {
            let name = names
                .get(i)
                .cloned()
                .unwrap_or_else(|| format!("node-{}", (b'a' + (i % 26) as u8) as char));
            (a, name)
        })
        .collect())
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--help" || a == "-h") {
        println!("{USAGE}");
        return;
    }
    let pairs = match parse_args(&args) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    let mut servers = Vec::new();
    for (addr, name) in pairs {
        match Backend::start_on(addr, &name).await {
            Ok(b) => {
                println!("demo_backend {} listening on http://{}", b.name, b.addr);
                servers.push(b);
            }
            Err(e) => {
                eprintln!("demo_backend: cannot listen on {addr}: {e}");
                std::process::exit(1);
            }
        }
    }
    let _ = tokio::signal::ctrl_c().await;
    for s in &servers {
        s.stop();
    }
}
