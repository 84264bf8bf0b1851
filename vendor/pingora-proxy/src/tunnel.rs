//! pingora-gateway patch: a detached relay for upgraded HTTP/1 connections (WebSocket).
//!
//! Once both sides of an HTTP/1 upgrade have switched protocols, the HTTP machinery (both
//! sessions, their header maps and body buffers, the task channels and the connection future
//! of `proxy_1to1`) has nothing left to do. [`relay`] takes the two raw streams and copies bytes
//! between them in one small task: reads go into a per-thread scratch buffer and are written
//! straight through, so an idle tunnel holds no buffer at all; only bytes that the other side
//! cannot take yet are copied into a per-connection buffer. One idle deadline, reset by
//! traffic in either direction, replaces a timer per read and write.

use bytes::Bytes;
use pingora_core::protocols::l4::stream::Stream as TcpSide;
use pingora_core::protocols::Stream;
use std::cell::RefCell;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// How a detached upgraded connection is relayed, returned by
/// [`ProxyHttp::upgrade_detached`](crate::ProxyHttp::upgrade_detached).
#[derive(Default)]
pub struct DetachedTunnel {
    /// Close the tunnel when no byte has moved in either direction for this long.
    pub idle_timeout: Option<Duration>,
    /// Called once when the tunnel ends (also when its task is dropped at shutdown).
    pub on_close: Option<Box<dyn FnOnce(&TunnelStats) + Send + Sync>>,
}

/// Why a tunnel ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TunnelEnd {
    /// The client closed its side.
    DownstreamClosed,
    /// The upstream closed its side.
    UpstreamClosed,
    /// No traffic for the idle timeout.
    IdleTimeout,
    /// Reading from or writing to the client failed.
    DownstreamError,
    /// Reading from or writing to the upstream failed.
    UpstreamError,
    /// The task was dropped before the tunnel ended (runtime shutdown).
    Aborted,
}

/// What a tunnel carried, passed to [`DetachedTunnel::on_close`].
#[derive(Debug, Clone)]
pub struct TunnelStats {
    /// Bytes relayed from the client to the upstream.
    pub to_upstream: u64,
    /// Bytes relayed from the upstream to the client.
    pub to_downstream: u64,
    /// How long the tunnel lived.
    pub duration: Duration,
    /// Why it ended.
    pub end: TunnelEnd,
}

pub use crate::relay_thread::{set_after_closes, set_relay_threads};

const SCRATCH_SIZE: usize = 16 * 1024;
/// Reads per direction in one poll before yielding to other tasks.
const READS_PER_POLL: usize = 16;

thread_local! {
    static SCRATCH: RefCell<Box<[u8]>> = RefCell::new(vec![0u8; SCRATCH_SIZE].into_boxed_slice());
}

/// One side of the relay: a plain TCP stream is read and written through its relay methods
/// (straight to the socket when nothing is buffered: pingora-core patch 15), anything else
/// (TLS, Unix) through its `AsyncRead`/`AsyncWrite`.
enum Side {
    Tcp(Box<TcpSide>),
    Other(Stream),
    /// Handed to a relay thread (patch 15).
    Gone,
}

impl Side {
    fn new(mut stream: Stream) -> Self {
        // Nobody reads a relayed stream's pending times: skip their clock reads.
        stream.set_track_pending_time(false);
        if stream.as_any().is::<TcpSide>() {
            if let Ok(tcp) = stream.into_any().downcast::<TcpSide>() {
                return Side::Tcp(tcp);
            }
            unreachable!("checked with is::<TcpSide>() above");
        }
        Side::Other(stream)
    }

    fn poll_read(&mut self, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self {
            Side::Tcp(s) => s.poll_read_relay(cx, buf),
            Side::Other(s) => Pin::new(s).poll_read(cx, buf),
            Side::Gone => Poll::Ready(Err(io::ErrorKind::NotConnected.into())),
        }
    }

    fn poll_write(&mut self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self {
            Side::Tcp(s) => s.poll_write_relay(cx, buf),
            Side::Other(s) => Pin::new(s).poll_write(cx, buf),
            Side::Gone => Poll::Ready(Err(io::ErrorKind::NotConnected.into())),
        }
    }

    fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self {
            Side::Tcp(s) => s.poll_flush_relay(cx),
            Side::Other(s) => Pin::new(s).poll_flush(cx),
            Side::Gone => Poll::Ready(Err(io::ErrorKind::NotConnected.into())),
        }
    }

    fn poll_shutdown(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self {
            Side::Tcp(s) => Pin::new(&mut **s).poll_shutdown(cx),
            Side::Other(s) => Pin::new(s).poll_shutdown(cx),
            Side::Gone => Poll::Ready(Err(io::ErrorKind::NotConnected.into())),
        }
    }
}

/// pingora-gateway patch (12): the waker one direction's I/O is polled with. It records that
/// the direction can make progress and wakes the relay task, which then pumps only the
/// directions that were woken: re-polling the quiet socket of the other direction on every
/// wake-up cost a waker registration under tokio's lock.
struct HalfWaker {
    woken: AtomicBool,
    /// The task's waker as first seen: read without a lock on every wake-up (a task's waker
    /// does not change under tokio).
    task: OnceLock<Waker>,
    /// A later, different task waker, if the relay was ever polled with one (`changed`).
    later: Mutex<Option<Waker>>,
    changed: AtomicBool,
}

impl HalfWaker {
    fn new() -> Arc<Self> {
        Arc::new(HalfWaker {
            // The first poll pumps both directions.
            woken: AtomicBool::new(true),
            task: OnceLock::new(),
            later: Mutex::new(None),
            changed: AtomicBool::new(false),
        })
    }

    fn set_task(&self, waker: &Waker) {
        if self.task.set(waker.clone()).is_err() {
            *self.later.lock().unwrap_or_else(|e| e.into_inner()) = Some(waker.clone());
            self.changed.store(true, Ordering::Release);
        }
    }

    /// Whether the direction was woken since the last call (no atomic write when it was not).
    fn take_woken(&self) -> bool {
        self.woken.load(Ordering::Acquire) && self.woken.swap(false, Ordering::AcqRel)
    }
}

impl Wake for HalfWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref()
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        if self.changed.load(Ordering::Acquire) {
            if let Some(task) = self.later.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
                task.wake_by_ref();
            }
        } else if let Some(task) = self.task.get() {
            task.wake_by_ref();
        }
    }
}

/// A direction's waker, as the state it sets and the `Waker` its I/O is polled with.
struct HalfWake {
    state: Arc<HalfWaker>,
    waker: Waker,
}

impl HalfWake {
    fn new() -> Self {
        let state = HalfWaker::new();
        let waker = Waker::from(state.clone());
        HalfWake { state, waker }
    }
}

/// One direction of the relay.
#[derive(Default)]
struct Half {
    /// Bytes read but not yet taken by the writer.
    pending: Option<Bytes>,
    /// The writer holds unflushed bytes.
    need_flush: bool,
    /// The reader reached EOF.
    eof: bool,
    bytes: u64,
}

enum Step {
    /// Nothing more can be done now: a waker is registered.
    Pending,
    /// The reader reached EOF and everything read has been written and flushed.
    Done,
    /// The reader failed.
    ReadError,
    /// The writer failed.
    WriteError,
}

impl Half {
    /// Nothing buffered, nothing to flush, no EOF: the direction could move to a relay thread.
    fn quiet(&self) -> bool {
        self.pending.is_none() && !self.need_flush && !self.eof
    }

    /// Writes `pending` to `dst` and flushes it; `Ready(Ok(()))` once nothing is pending.
    /// Nothing pending and nothing to flush, the usual case, is answered inline.
    #[inline]
    fn drain(&mut self, dst: &mut Side, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.pending.is_none() && !self.need_flush {
            return Poll::Ready(Ok(()));
        }
        self.drain_pending(dst, cx)
    }

    fn drain_pending(&mut self, dst: &mut Side, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let Some(p) = self.pending.as_mut() {
            match dst.poll_write(cx, p) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => {
                    self.need_flush = true;
                    if n >= p.len() {
                        self.pending = None;
                    } else {
                        let _ = p.split_to(n);
                    }
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        if self.need_flush {
            match dst.poll_flush(cx) {
                Poll::Ready(Ok(())) => self.need_flush = false,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        Poll::Ready(Ok(()))
    }

    /// Moves bytes from `src` to `dst` until one of them would block.
    fn pump(
        &mut self,
        src: &mut Side,
        dst: &mut Side,
        cx: &mut Context<'_>,
        active: &mut bool,
    ) -> Step {
        for _ in 0..READS_PER_POLL {
            match self.drain(dst, cx) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(_)) => return Step::WriteError,
                Poll::Pending => return Step::Pending,
            }
            if self.eof {
                return Step::Done;
            }
            let read = SCRATCH.with(|scratch| {
                let mut scratch = scratch.borrow_mut();
                let mut buf = ReadBuf::new(&mut scratch[..]);
                match src.poll_read(cx, &mut buf) {
                    Poll::Ready(Ok(())) => {
                        let data = buf.filled();
                        if data.is_empty() {
                            return Poll::Ready(Ok(0));
                        }
                        let n = data.len();
                        // Write straight through; keep only what the writer cannot take.
                        let mut off = 0;
                        while off < n {
                            match dst.poll_write(cx, &data[off..]) {
                                Poll::Ready(Ok(0)) => {
                                    return Poll::Ready(Err(Err(io::Error::from(
                                        io::ErrorKind::WriteZero,
                                    ))))
                                }
                                Poll::Ready(Ok(w)) => off += w,
                                Poll::Ready(Err(e)) => return Poll::Ready(Err(Err(e))),
                                Poll::Pending => break,
                            }
                        }
                        self.need_flush = true;
                        if off < n {
                            self.pending = Some(Bytes::copy_from_slice(&data[off..]));
                        }
                        Poll::Ready(Ok(n))
                    }
                    Poll::Ready(Err(e)) => Poll::Ready(Err(Ok(e))),
                    Poll::Pending => Poll::Pending,
                }
            });
            match read {
                Poll::Ready(Ok(0)) => self.eof = true,
                Poll::Ready(Ok(n)) => {
                    self.bytes += n as u64;
                    *active = true;
                }
                // Ok(e): the read failed; Err(e): the write failed.
                Poll::Ready(Err(Ok(_))) => return Step::ReadError,
                Poll::Ready(Err(Err(_))) => return Step::WriteError,
                Poll::Pending => {
                    // Nothing to read: push out what was written.
                    return match self.drain(dst, cx) {
                        Poll::Ready(Err(_)) => Step::WriteError,
                        _ => Step::Pending,
                    };
                }
            }
        }
        // Budget used up: let other tasks run, then continue.
        cx.waker().wake_by_ref();
        Step::Pending
    }
}

/// The relay future of one detached tunnel.
pub(crate) struct Relay {
    downstream: Side,
    upstream: Side,
    up: Half,
    down: Half,
    up_wake: HalfWake,
    down_wake: HalfWake,
    /// The task waker the two `HalfWaker`s hold (compared, without their locks, per poll).
    task_waker: Option<Waker>,
    idle: Option<(Duration, Pin<Box<Sleep>>)>,
    /// The waker the idle timer holds: until the timer fires (`is_elapsed`), polling it again
    /// with the same waker on every wake-up would only re-register it.
    idle_waker: Option<Waker>,
    /// Bytes moved since the idle timer last fired: set per poll that moved bytes, without a
    /// clock read; the clock is read when the timer fires and when bytes move again after a
    /// quiet spell (`quiet`).
    moved: bool,
    /// The idle timer waits for the deadline (nothing moved when it last fired).
    quiet: bool,
    /// When the idle timer last found that bytes had moved: the start of the quiet time.
    last_activity: Instant,
    started: Instant,
    closing: Option<(TunnelEnd, bool)>,
    on_close: Option<Box<dyn FnOnce(&TunnelStats) + Send + Sync>>,
    /// Both sides are plain TCP and relay threads are on: hand the tunnel over once nothing
    /// is buffered (patch 15).
    hand_over: bool,
}

impl Relay {
    /// A relay between `downstream` and `upstream`; `*_unread` are bytes already read from each
    /// side with the HTTP header, to be delivered first.
    pub(crate) fn new(
        downstream: Stream,
        downstream_unread: Option<Bytes>,
        upstream: Stream,
        upstream_unread: Option<Bytes>,
        tunnel: DetachedTunnel,
    ) -> Self {
        let (downstream, upstream) = (Side::new(downstream), Side::new(upstream));
        let hand_over = matches!((&downstream, &upstream), (Side::Tcp(_), Side::Tcp(_)))
            && crate::relay_thread::enabled();
        let now = Instant::now();
        let to_up = downstream_unread.as_ref().map_or(0, |b| b.len() as u64);
        let to_down = upstream_unread.as_ref().map_or(0, |b| b.len() as u64);
        Relay {
            downstream,
            upstream,
            up: Half {
                pending: downstream_unread,
                // the 101 header may still sit in the write buffer
                need_flush: true,
                bytes: to_up,
                ..Default::default()
            },
            down: Half {
                pending: upstream_unread,
                need_flush: true,
                bytes: to_down,
                ..Default::default()
            },
            up_wake: HalfWake::new(),
            down_wake: HalfWake::new(),
            task_waker: None,
            idle: tunnel
                .idle_timeout
                .map(|d| (d, Box::pin(tokio::time::sleep_until(now + idle_check(d))))),
            idle_waker: None,
            moved: false,
            quiet: false,
            last_activity: now,
            started: now,
            closing: None,
            on_close: tunnel.on_close,
            hand_over,
        }
    }

    /// Moves the tunnel to a relay thread if both sockets are free of buffered bytes; `None`
    /// when it stays here, `Some(end)` when it ended here (a socket lost on the way out).
    fn try_hand_over(&mut self) -> Option<Option<TunnelEnd>> {
        let (Side::Tcp(d), Side::Tcp(u)) = (&mut self.downstream, &mut self.upstream) else {
            return None;
        };
        if !d.relay_socket_free() || !u.relay_socket_free() {
            return None;
        }
        self.hand_over = false;
        let (Side::Tcp(d), Side::Tcp(u)) = (
            std::mem::replace(&mut self.downstream, Side::Gone),
            std::mem::replace(&mut self.upstream, Side::Gone),
        ) else {
            unreachable!("matched above")
        };
        let taken = |s: Box<TcpSide>| match s.into_relay_socket() {
            Ok(r) => r.ok(),
            Err(_) => unreachable!("relay_socket_free said yes"),
        };
        let (Some((d, dg)), Some((u, ug))) = (taken(d), taken(u)) else {
            self.finish(TunnelEnd::Aborted);
            return Some(Some(TunnelEnd::Aborted));
        };
        crate::relay_thread::hand_over(crate::relay_thread::Handoff {
            sockets: [d, u],
            guards: dg.into_iter().chain(ug).collect(),
            tunnel: DetachedTunnel {
                idle_timeout: self.idle.as_ref().map(|(t, _)| *t),
                on_close: self.on_close.take(),
            },
            bytes: [self.up.bytes, self.down.bytes],
            started: self.started.into_std(),
            home: tokio::runtime::Handle::current(),
        });
        Some(None)
    }

    fn finish(&mut self, end: TunnelEnd) {
        if let Some(cb) = self.on_close.take() {
            cb(&TunnelStats {
                to_upstream: self.up.bytes,
                to_downstream: self.down.bytes,
                duration: self.started.elapsed(),
                end,
            });
        }
    }
}

impl Future for Relay {
    /// `None`: handed to a relay thread.
    type Output = Option<TunnelEnd>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<TunnelEnd>> {
        let this = self.get_mut();
        if let Some((end, to_upstream)) = this.closing {
            // One side closed: send the other side what is left and a FIN, then end.
            let (half, dst) = if to_upstream {
                (&mut this.up, &mut this.upstream)
            } else {
                (&mut this.down, &mut this.downstream)
            };
            let res = match half.drain(dst, cx) {
                Poll::Ready(Ok(())) => dst.poll_shutdown(cx),
                other => other,
            };
            if res.is_pending() && !this.idle_expired(cx) {
                return Poll::Pending;
            }
            this.finish(end);
            return Poll::Ready(Some(end));
        }
        if !this
            .task_waker
            .as_ref()
            .is_some_and(|w| w.will_wake(cx.waker()))
        {
            this.up_wake.state.set_task(cx.waker());
            this.down_wake.state.set_task(cx.waker());
            this.task_waker = Some(cx.waker().clone());
        }
        let mut active = false;
        // A direction not woken since its last pump registered its waker where it blocked
        // (or used up its budget and woke itself): nothing to do there yet.
        let up = if this.up_wake.state.take_woken() {
            let mut cx = Context::from_waker(&this.up_wake.waker);
            this.up
                .pump(&mut this.downstream, &mut this.upstream, &mut cx, &mut active)
        } else {
            Step::Pending
        };
        let down = if this.down_wake.state.take_woken() {
            let mut cx = Context::from_waker(&this.down_wake.waker);
            this.down
                .pump(&mut this.upstream, &mut this.downstream, &mut cx, &mut active)
        } else {
            Step::Pending
        };
        if active && !this.moved {
            this.moved = true;
            this.resume_idle_checks();
        }
        let end = match (up, down) {
            (Step::ReadError, _) | (_, Step::WriteError) => Some(TunnelEnd::DownstreamError),
            (Step::WriteError, _) | (_, Step::ReadError) => Some(TunnelEnd::UpstreamError),
            (Step::Done, _) => {
                this.closing = Some((TunnelEnd::DownstreamClosed, true));
                return Pin::new(this).poll(cx);
            }
            (_, Step::Done) => {
                this.closing = Some((TunnelEnd::UpstreamClosed, false));
                return Pin::new(this).poll(cx);
            }
            (Step::Pending, Step::Pending) => None,
        };
        if let Some(end) = end {
            this.finish(end);
            return Poll::Ready(Some(end));
        }
        if this.hand_over && this.up.quiet() && this.down.quiet() {
            if let Some(end) = this.try_hand_over() {
                return Poll::Ready(end);
            }
        }
        if this.idle_expired(cx) {
            this.finish(TunnelEnd::IdleTimeout);
            return Poll::Ready(Some(TunnelEnd::IdleTimeout));
        }
        Poll::Pending
    }
}

impl Relay {
    /// Whether the idle deadline has passed; otherwise keeps the idle timer armed.
    ///
    /// Traffic only sets `moved`. The timer fires every [`idle_check`] (an eighth of the
    /// timeout) while bytes move, and once at the deadline when they stopped; so a tunnel
    /// closes between `timeout` and `timeout` + an eighth of it after its last byte, and a busy
    /// tunnel reads the fine clock a few times per timeout, not per message.
    fn idle_expired(&mut self, cx: &mut Context<'_>) -> bool {
        let Some((timeout, sleep)) = self.idle.as_mut() else {
            return false;
        };
        let registered = self
            .idle_waker
            .as_ref()
            .is_some_and(|w| w.will_wake(cx.waker()));
        if registered && !sleep.is_elapsed() {
            return false;
        }
        loop {
            if sleep.as_mut().poll(cx).is_pending() {
                if !registered {
                    self.idle_waker = Some(cx.waker().clone());
                }
                return false;
            }
            let now = Instant::now();
            let moved = std::mem::take(&mut self.moved);
            if moved {
                self.last_activity = now;
            }
            let deadline = self.last_activity + *timeout;
            if now >= deadline {
                return true;
            }
            // Busy: check again soon. Quiet: wait for the deadline (bytes moving again bring
            // the check back: `resume_idle_checks`).
            self.quiet = !moved;
            sleep
                .as_mut()
                .reset(if moved { now + idle_check(*timeout) } else { deadline });
        }
    }

    /// Bytes moved after a quiet spell: the idle timer, armed for the deadline, fires within
    /// an eighth of the timeout again, so the deadline is never more than that late.
    fn resume_idle_checks(&mut self) {
        let Some((timeout, sleep)) = self.idle.as_mut() else {
            return;
        };
        if std::mem::take(&mut self.quiet) {
            sleep.as_mut().reset(Instant::now() + idle_check(*timeout));
            // Poll it again, to be sure it holds this task's waker for the new deadline.
            self.idle_waker = None;
        }
    }
}

/// How often a busy tunnel's idle timer fires: an eighth of the timeout (at least 10 ms), the
/// most a tunnel can outlive its idle timeout by.
pub(crate) fn idle_check(timeout: Duration) -> Duration {
    (timeout / 8).max(Duration::from_millis(10)).min(timeout)
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.finish(TunnelEnd::Aborted);
    }
}

/// Relays a detached upgraded connection until either side closes, an error, or the idle
/// timeout; then calls the tunnel's `on_close`. `None`: handed to a relay thread, which does.
pub(crate) async fn relay(
    downstream: Stream,
    downstream_unread: Option<Bytes>,
    upstream: Stream,
    upstream_unread: Option<Bytes>,
    tunnel: DetachedTunnel,
) -> Option<TunnelEnd> {
    Relay::new(
        downstream,
        downstream_unread,
        upstream,
        upstream_unread,
        tunnel,
    )
    .await
}
