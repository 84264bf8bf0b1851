//! TCP (L4) listeners: `listeners[].tcp: { upstream: POOL }` relays every accepted connection
//! (after TLS, when the listener terminates it: the stunnel job) to a backend of the pool,
//! without parsing anything. The backend is chosen by the pool's balancing (consistent hashing
//! on the client address), connected within `timeouts.connect`, and another one is tried on a
//! connect failure up to `retries`; then bytes flow both ways, half-closes passed on, until
//! both sides are done, either side fails, or `timeouts.idle` passes with no traffic.
//!
//! Each TCP listener is its own Pingora service ([`TcpProxy`] is its `ServerApp`), so the
//! listening socket is handed over by `gateway upgrade` like the HTTP ones, and a relay that is
//! open at a graceful shutdown or upgrade runs on until it ends or the grace period does.

use crate::config::{Balance, ClientConf, Issues, ListenerConf};
use crate::listener::ConnectionLimiter;
use crate::runtime::{Listener, Runtime};
use crate::upstream::{now_ms, HashKey, InFlight, Pool, PoolHandle};
use async_trait::async_trait;
use pingora_core::apps::ServerApp;
use pingora_core::listeners::tls::TlsSettings;
use pingora_core::listeners::{L4BufferSettings, ListenerConfig};
use pingora_core::protocols::Stream;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::listening::Service;
use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering::Relaxed};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

/// Relay buffer per direction: small, since every open relay holds two of them.
const RELAY_BUFFER: usize = 16 * 1024;

/// A compiled TCP listener: the listener's address, TLS and client caps, and its pool.
#[derive(Debug, Clone)]
pub struct TcpListener {
    /// Address, TLS, read buffer and `client.max_connections_per_ip` (its HTTP limits unused).
    pub listener: Listener,
    /// Index of the pool in `Runtime::pools`.
    pub pool: usize,
}

/// A TCP listener waiting for its pool name to be resolved (pools compile after listeners).
#[derive(Debug)]
pub struct Pending {
    /// Position in `listeners`, for key paths.
    pub index: usize,
    /// `tcp.upstream` as written.
    pub upstream: String,
    /// The compiled listener.
    pub listener: Listener,
}

/// Records the keys of listener `at` (`listeners[N]`) that only mean something for HTTP.
pub fn check_listener(l: &ListenerConf, at: &str, issues: &mut Issues) {
    let http_only = "HTTP only: a tcp listener relays bytes without parsing them";
    if l.http2 {
        issues.error(format!("{at}.http2"), http_only);
    }
    if l.redirect_https {
        issues.error(format!("{at}.redirect_https"), http_only);
    }
    let (c, d) = (&l.client, ClientConf::default());
    for (key, set) in [
        // The longest wait for a PROXY header, on a listener that reads one.
        (
            "header_timeout",
            c.header_timeout != d.header_timeout && !l.proxy_protocol,
        ),
        (
            "keepalive_timeout",
            c.keepalive_timeout != d.keepalive_timeout,
        ),
        ("body_timeout", c.body_timeout != d.body_timeout),
        ("min_body_rate", c.min_body_rate != d.min_body_rate),
        ("send_timeout", c.send_timeout != d.send_timeout),
        ("max_request_line", c.max_request_line != d.max_request_line),
        ("max_header_size", c.max_header_size != d.max_header_size),
    ] {
        if set {
            issues.error(
                format!("{at}.client.{key}"),
                format!("{http_only} (of client, only max_connections_per_ip applies)"),
            );
        }
    }
}

/// Resolves the pools of the TCP listeners and checks that each pool can carry plain TCP.
pub fn compile(
    pending: Vec<Pending>,
    pool_index: &HashMap<String, usize>,
    pools: &[Pool],
    issues: &mut Issues,
) -> Vec<TcpListener> {
    let mut out = Vec::with_capacity(pending.len());
    for p in pending {
        let at = format!("listeners[{}].tcp.upstream", p.index);
        let Some(&pool) = pool_index.get(&p.upstream) else {
            issues.error(at, format!("unknown pool \"{}\"", p.upstream));
            continue;
        };
        let (pc, up) = (&pools[pool], format!("upstreams.{}", p.upstream));
        let who = format!("listeners[{}] relays TCP to it", p.index);
        if pc.tls.is_some() {
            issues.error(
                format!("{up}.tls"),
                format!("TLS to backends is not supported for TCP relays ({who})"),
            );
        }
        if pc.balance == Balance::ConsistentHash && pc.hash_key != HashKey::ClientIp {
            issues.error(
                format!("{up}.hash_key"),
                format!("a TCP relay can only hash client_ip ({who})"),
            );
        }
        if pc.affinity.is_some() {
            issues.warn(
                format!("{up}.affinity"),
                format!("HTTP only: {who} and balances its connections without it"),
            );
        }
        out.push(TcpListener {
            listener: p.listener,
            pool,
        });
    }
    out
}

/// One Pingora service per TCP listener: its endpoint (with TLS when configured) and its
/// connection caps (`server.max_connections`, `client.max_connections_per_ip`).
pub fn services(rt: &Arc<Runtime>) -> Vec<Service<TcpProxy>> {
    rt.tcp_listeners
        .iter()
        .map(|t| {
            let l = &t.listener;
            let app = TcpProxy {
                pool: rt.pools[t.pool].clone(),
                listen: l.addr,
            };
            let mut svc = Service::new(format!("tcp {}", l.addr), app);
            let limiter = Arc::new(ConnectionLimiter::new(
                rt.connections.clone(),
                l.max_connections_per_ip,
            ));
            let mut endpoint = ListenerConfig::tcp(l.addr.to_string())
                .l4_buffer(L4BufferSettings::default().read(l.read_buffer));
            if let Some(tls) = &l.tls {
                // The listener certificates and SNI choice of an HTTPS listener, without ALPN:
                // a client that offers a protocol name must not be refused for it.
                let mut s = TlsSettings::intermediate("", "").expect("plain constructor");
                s.set_cert_resolver(tls.resolver.clone());
                endpoint = endpoint.tls(s);
            }
            svc.add_listener(endpoint);
            if l.proxy_protocol {
                let wait = l.limits.header_timeout;
                crate::proxy_protocol::install(&mut svc, limiter, &rt.forwarded, wait);
            } else {
                svc.set_connection_filter(limiter);
            }
            svc
        })
        .collect()
}

/// The `ServerApp` of one TCP listener: relays each connection to a backend of its pool.
pub struct TcpProxy {
    pool: Arc<PoolHandle>,
    listen: SocketAddr,
}

#[async_trait]
impl ServerApp for TcpProxy {
    async fn process_new(self: &Arc<Self>, client: Stream, _: &ShutdownWatch) -> Option<Stream> {
        // The shutdown watch is not followed: an open relay runs on through a graceful
        // shutdown or upgrade until it ends, or until the grace period does.
        self.relay(client).await;
        None
    }
}

impl TcpProxy {
    async fn relay(&self, client: Stream) {
        let start = Instant::now();
        let pool = self.pool.load();
        let digest = client.get_socket_digest();
        let inet = |a: Option<&pingora_core::protocols::l4::socket::SocketAddr>| {
            a.and_then(|a| a.as_inet()).copied()
        };
        // The client: the peer, or the source a PROXY header named on this listener.
        let peer = digest.as_ref().and_then(|d| inet(d.peer_addr()));
        let local = digest.as_ref().and_then(|d| inet(d.local_addr()));
        // `_in_flight` is held for the relay's life: the backend's in-flight count, which
        // least_conn balances on (taken before the connect, so a burst of new connections
        // sees the ones still connecting).
        let (backend, mut conn, _in_flight) = match connect(&pool, peer.map(|a| a.ip())).await {
            Ok(v) => v,
            Err(why) => {
                self.log(peer, &pool.name, None, (0, 0), start, &why);
                return;
            }
        };
        let addr = pool.backends[backend].addr;
        // PROXY protocol to the backend (`upstreams.<pool>.send_proxy_protocol: v1|v2`): the
        // header is the first thing on the new connection, before any byte of the client.
        if let Some(version) = pool.send_proxy_protocol() {
            let src = peer.unwrap_or(SocketAddr::from(([0, 0, 0, 0], 0)));
            let header = crate::proxy_protocol::encode(version, src, local.unwrap_or(self.listen));
            if let Err(e) = conn.write_all(&header).await {
                let why = format!("backend: PROXY header: {e}");
                self.log(peer, &pool.name, Some(addr), (0, 0), start, &why);
                return;
            }
        }
        let (bytes, end) = pipe(client, conn, pool.timeouts.idle).await;
        self.log(peer, &pool.name, Some(addr), bytes, start, &end);
    }

    /// One access-log line per closed connection (target `access`).
    fn log(
        &self,
        client: Option<SocketAddr>,
        pool: &str,
        backend: Option<SocketAddr>,
        (up, down): (u64, u64),
        start: Instant,
        end: &str,
    ) {
        let show = |a: Option<SocketAddr>| a.map_or_else(|| "-".to_string(), |a| a.to_string());
        log::info!(
            target: "access",
            "{} tcp {} upstream={pool} backend={} up={up} down={down} rt={:.3} end=\"{end}\"",
            show(client),
            self.listen,
            show(backend),
            start.elapsed().as_secs_f64(),
        );
    }
}

/// Picks a backend and connects to it, trying up to `retries` others after a failure.
/// Returns the backend's index, the connection and its in-flight guard (counted from the
/// connect attempt on), or why none could be had.
async fn connect(
    pool: &Pool,
    client: Option<IpAddr>,
) -> Result<(usize, TcpStream, InFlight), String> {
    let mut key_buf = [0u8; 16];
    let key: Option<&[u8]> = match (pool.balance, client.map(crate::util::canonical_ip)) {
        (Balance::ConsistentHash, Some(IpAddr::V4(v4))) => {
            key_buf[..4].copy_from_slice(&v4.octets());
            Some(&key_buf[..4])
        }
        (Balance::ConsistentHash, Some(IpAddr::V6(v6))) => {
            key_buf = v6.octets();
            Some(&key_buf[..])
        }
        _ => None,
    };
    let mut tried = crate::upstream::Tried::default();
    let mut last = "no backend available".to_string();
    for attempt in 0..=pool.retries {
        let Some(b) = pool.select(key, &tried) else {
            break;
        };
        tried.insert(b);
        if attempt > 0 {
            pool.stats.retries.fetch_add(1, Relaxed);
        }
        let addr = pool.backends[b].addr;
        let in_flight = pool.begin_request(b);
        let e = match tokio::time::timeout(pool.timeouts.connect, TcpStream::connect(addr)).await {
            Ok(Ok(conn)) => {
                let _ = conn.set_nodelay(true);
                pool.report_success(b);
                return Ok((b, conn, in_flight));
            }
            Ok(Err(e)) => e,
            Err(_) => io::Error::new(io::ErrorKind::TimedOut, "connect timed out"),
        };
        last = format!("connect {addr}: {e}");
        let err = pingora_core::Error::because(pingora_core::ErrorType::ConnectError, "tcp", e);
        if crate::upstream::is_local_resource_error(&err) {
            // Out of descriptors (or memory, ports) here: not the backend's fault, and
            // another backend would fail the same way.
            log::warn!(
                "upstream {} backend {addr}: cannot connect: {err}",
                pool.name
            );
            return Err(last);
        }
        // Every client connection can meet a dead backend: at most one line a second.
        static CONNECT_FAILED: crate::util::OncePerSecond = crate::util::OncePerSecond::new();
        if CONNECT_FAILED.ready() {
            log::warn!(
                "upstream {} backend {addr}: {last} (repeats within a second are not logged)",
                pool.name
            );
        }
        pool.report_failure(b);
    }
    Err(last)
}

/// Which side of a relay an I/O error came from (0: none yet).
const CLIENT: u8 = 1;
const BACKEND: u8 = 2;

/// What both directions of one relay share: the time of the last traffic (one idle deadline
/// for the pair), the bytes written each way, and the side that failed first.
struct Shared {
    last_ms: AtomicU64,
    /// Written to the backend.
    up: AtomicU64,
    /// Written to the client.
    down: AtomicU64,
    failed: AtomicU8,
}

/// Relays until both sides are done, one fails, or `idle` passes with no traffic either way.
/// Returns the bytes written (to the backend, to the client) and why it ended.
async fn pipe(client: Stream, backend: TcpStream, idle: Duration) -> ((u64, u64), String) {
    let shared = Shared {
        last_ms: AtomicU64::new(now_ms()),
        up: AtomicU64::new(0),
        down: AtomicU64::new(0),
        failed: AtomicU8::new(0),
    };
    let mut c = Metered {
        io: client,
        side: CLIENT,
        shared: &shared,
    };
    let mut b = Metered {
        io: backend,
        side: BACKEND,
        shared: &shared,
    };
    let end = tokio::select! {
        r = tokio::io::copy_bidirectional_with_sizes(&mut c, &mut b, RELAY_BUFFER, RELAY_BUFFER) => {
            match r {
                Ok(_) => "eof".to_string(),
                Err(e) => match shared.failed.load(Relaxed) {
                    BACKEND => format!("backend: {e}"),
                    _ => format!("client: {e}"),
                },
            }
        }
        _ = idle_deadline(&shared, idle) => format!("idle {}", crate::config::Dur(idle)),
    };
    ((shared.up.load(Relaxed), shared.down.load(Relaxed)), end)
}

/// Returns once `idle` has passed since the last traffic: one timer, re-armed only when it
/// fires early because traffic moved the deadline.
async fn idle_deadline(shared: &Shared, idle: Duration) {
    let idle_ms = idle.as_millis() as u64;
    loop {
        let due = shared.last_ms.load(Relaxed).saturating_add(idle_ms);
        let now = now_ms();
        if now >= due {
            return;
        }
        tokio::time::sleep(Duration::from_millis(due - now)).await;
    }
}

/// One side of a relay, noting traffic, bytes written and the first error in [`Shared`].
struct Metered<'a, S> {
    io: S,
    side: u8,
    shared: &'a Shared,
}

impl<S> Metered<'_, S> {
    fn note<T>(&self, r: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        match &r {
            Poll::Ready(Ok(_)) => self.shared.last_ms.store(now_ms(), Relaxed),
            Poll::Ready(Err(_)) => {
                let _ = self
                    .shared
                    .failed
                    .compare_exchange(0, self.side, Relaxed, Relaxed);
            }
            Poll::Pending => {}
        }
        r
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Metered<'_, S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.io).poll_read(cx, buf);
        self.note(r)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Metered<'_, S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write(cx, data);
        let n = ready!(self.note(r))?;
        let count = if self.side == CLIENT {
            &self.shared.down
        } else {
            &self.shared.up
        };
        count.fetch_add(n as u64, Relaxed);
        Poll::Ready(Ok(n))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.io).poll_flush(cx);
        self.note(r)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.io).poll_shutdown(cx);
        self.note(r)
    }
}
