//! pingora-gateway patch (15): relay threads for detached plain-TCP tunnels.
//!
//! A detached upgraded connection whose two sides are plain TCP sockets with nothing buffered
//! is handed to a relay thread: one `epoll` loop (edge-triggered, like nginx's) that moves bytes
//! between the two sockets through one scratch buffer per thread. Per message this saves the
//! async runtime's share (the I/O driver's dispatch, the task wake-up and poll, the waker
//! registration under its lock) that a relay task pays twice per echoed message. Tunnels with
//! TLS, Unix or buffered sides stay on the task relay ([`crate::tunnel`]).
//!
//! Semantics are the task relay's: bytes a side cannot take yet are kept (and that direction
//! stops reading until they are written); the tunnel ends when one side has closed and
//! everything it sent was delivered (the other side then gets a FIN), on an error of either
//! side, or when no byte moved for the idle timeout (checked every eighth of it). `on_close`
//! runs on the runtime the tunnel came from, spawned there when the tunnel ends; tunnels still
//! open when the process exits end with it, without `on_close`.
//!
//! The loop's `recvfrom`, `sendto` and `epoll_pwait` are raw `syscall(2)`s: glibc's wrappers are
//! cancellation points, which in a multi-threaded process cost two atomic updates per call
//! (a single-threaded nginx worker skips them). Their arguments are passed as `c_long`, the
//! width `syscall(2)` reads each variadic argument at.

use crate::tunnel::{DetachedTunnel, TunnelEnd, TunnelStats};
use log::{debug, warn};
use std::any::Any;
use std::io;
use std::net::TcpStream;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Bytes read per `recv` (one buffer per relay thread).
const SCRATCH_SIZE: usize = 16 * 1024;
/// Reads per direction for one readiness event before other tunnels get their turn.
const READS_PER_TURN: usize = 16;
/// `epoll_event.u64` of the hand-over `eventfd`.
const WAKE_KEY: u64 = u64::MAX;

static THREAD_COUNT: AtomicUsize = AtomicUsize::new(0);
static THREADS: OnceLock<Option<Vec<Arc<Inbox>>>> = OnceLock::new();
static NEXT: AtomicUsize = AtomicUsize::new(0);
static AFTER_CLOSES: OnceLock<fn()> = OnceLock::new();
/// How long after a tunnel closed the [`set_after_closes`] hook runs (once for all tunnels
/// that closed meanwhile).
const AFTER_CLOSES_DELAY: Duration = Duration::from_secs(1);

/// Relays detached plain-TCP tunnels on `n` threads of their own (0, the default: on tasks of the
/// runtime, as upstream Pingora does). Takes effect before the first tunnel is handed over;
/// the threads start with it.
pub fn set_relay_threads(n: usize) {
    THREAD_COUNT.store(n, Ordering::Relaxed);
}

/// Runs `hook` on each relay thread a second after tunnels closed there: e.g. for an
/// allocator that returns the memory a thread freed only when that thread asks it to.
pub fn set_after_closes(hook: fn()) {
    let _ = AFTER_CLOSES.set(hook);
}

/// A tunnel on its way to a relay thread.
pub(crate) struct Handoff {
    /// Downstream (0) and upstream (1) sockets, non-blocking.
    pub sockets: [TcpStream; 2],
    /// Kept alive until the tunnel ends (e.g. a per-client connection count).
    pub guards: Vec<Box<dyn Any + Send + Sync>>,
    pub tunnel: DetachedTunnel,
    /// Bytes already relayed by the task, from downstream (0) and from upstream (1).
    pub bytes: [u64; 2],
    pub started: Instant,
    /// The runtime the tunnel came from: `on_close` runs there, so that what it frees returns
    /// to the thread that allocated it (a thread-caching allocator keeps memory that other
    /// threads freed until its owner collects).
    pub home: tokio::runtime::Handle,
}

/// Hands `h` to a relay thread (after [`enabled`] said yes).
pub(crate) fn hand_over(h: Handoff) {
    let Some(Some(threads)) = THREADS.get() else {
        unreachable!("hand_over without relay threads (enabled() said no)");
    };
    let inbox = &threads[NEXT.fetch_add(1, Ordering::Relaxed) % threads.len()];
    inbox.queue.lock().unwrap_or_else(|e| e.into_inner()).push(h);
    let one: u64 = 1;
    // SAFETY: writes 8 bytes from a valid u64 to the eventfd.
    unsafe { libc::write(inbox.wake.as_raw_fd(), &one as *const u64 as *const _, 8) };
}

/// Whether tunnels are handed to relay threads; the first call starts them.
pub(crate) fn enabled() -> bool {
    THREADS.get_or_init(start_threads).is_some()
}

struct Inbox {
    queue: Mutex<Vec<Handoff>>,
    wake: OwnedFd,
}

fn start_threads() -> Option<Vec<Arc<Inbox>>> {
    let n = THREAD_COUNT.load(Ordering::Relaxed);
    if n == 0 {
        return None;
    }
    let mut inboxes = Vec::with_capacity(n);
    for i in 0..n {
        match Reactor::new() {
            Ok((reactor, inbox)) => {
                let inbox = Arc::new(inbox);
                let mine = inbox.clone();
                let spawned = std::thread::Builder::new()
                    .name(format!("relay-{i}"))
                    .spawn(move || reactor.run(&mine));
                if let Err(e) = spawned {
                    warn!("relay thread {i} did not start ({e}): tunnels stay on tasks");
                    return None;
                }
                inboxes.push(inbox);
            }
            Err(e) => {
                warn!("relay thread {i} did not start ({e}): tunnels stay on tasks");
                return None;
            }
        }
    }
    Some(inboxes)
}

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// One direction's state: bytes from side `s` to side `1 - s`.
#[derive(Default)]
struct Dir {
    /// Read but not yet taken by the other side.
    pending: Option<Vec<u8>>,
    /// Side `s` reached EOF.
    eof: bool,
    bytes: u64,
}

struct Tunnel {
    fds: [OwnedFd; 2],
    readable: [bool; 2],
    writable: [bool; 2],
    /// The side's peer closed (or the socket failed): its EOF (or error) may already sit
    /// behind the bytes read, with no edge left to announce it, so a short read does not
    /// end the side's readability (nginx's `pending_eof`, tokio's sticky `READ_CLOSED`).
    closed: [bool; 2],
    dirs: [Dir; 2],
    /// A read turn was cut short (`READS_PER_TURN`): continue without waiting for an event.
    again: bool,
    last_activity: Instant,
    idle: Option<Duration>,
    started: Instant,
    on_close: Option<Box<dyn FnOnce(&TunnelStats) + Send + Sync>>,
    guards: Vec<Box<dyn Any + Send + Sync>>,
    home: tokio::runtime::Handle,
}

impl Tunnel {
    fn end(mut self: Box<Self>, end: TunnelEnd) {
        let stats = TunnelStats {
            to_upstream: self.dirs[0].bytes,
            to_downstream: self.dirs[1].bytes,
            duration: self.started.elapsed(),
            end,
        };
        let (on_close, guards) = (self.on_close.take(), std::mem::take(&mut self.guards));
        // The sockets close (epoll forgets them) before `on_close` runs, as on a task.
        let home = self.home.clone();
        drop(self);
        home.spawn(async move {
            if let Some(cb) = on_close {
                cb(&stats);
            }
            drop(guards);
        });
    }

    /// The error end for a failure on side `s`.
    fn failed(s: usize) -> TunnelEnd {
        if s == 0 {
            TunnelEnd::DownstreamError
        } else {
            TunnelEnd::UpstreamError
        }
    }

    /// Writes direction `s`'s pending bytes to side `1 - s`; `Ok(true)` once none are left.
    fn flush(&mut self, s: usize) -> Result<bool, TunnelEnd> {
        let d = 1 - s;
        let Some(p) = self.dirs[s].pending.as_mut() else {
            return Ok(true);
        };
        if !self.writable[d] {
            return Ok(false);
        }
        match send(self.fds[d].as_raw_fd(), p) {
            Ok(n) if n == p.len() => {
                self.dirs[s].pending = None;
                Ok(true)
            }
            Ok(n) => {
                p.drain(..n);
                self.writable[d] = false;
                Ok(false)
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                self.writable[d] = false;
                Ok(false)
            }
            Err(_) => Err(Self::failed(d)),
        }
    }

    /// Moves what can be moved in direction `s` now.
    fn pump(&mut self, s: usize, scratch: &mut [u8], moved: &mut bool) -> Result<(), TunnelEnd> {
        let d = 1 - s;
        for _ in 0..READS_PER_TURN {
            if !self.flush(s)? {
                return Ok(());
            }
            if self.dirs[s].eof {
                // Everything side `s` sent is delivered: the tunnel ends (as the task relay's).
                // SAFETY: a valid socket fd.
                unsafe { libc::shutdown(self.fds[d].as_raw_fd(), libc::SHUT_WR) };
                return Err(if s == 0 {
                    TunnelEnd::DownstreamClosed
                } else {
                    TunnelEnd::UpstreamClosed
                });
            }
            if !self.readable[s] {
                return Ok(());
            }
            let n = match recv(self.fds[s].as_raw_fd(), scratch) {
                Ok(0) => {
                    self.dirs[s].eof = true;
                    continue;
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.readable[s] = false;
                    return Ok(());
                }
                Err(_) => return Err(Self::failed(s)),
            };
            // A short read emptied the socket: its next data comes with a new edge.
            if n < scratch.len() && !self.closed[s] {
                self.readable[s] = false;
            }
            self.dirs[s].bytes += n as u64;
            *moved = true;
            let data = &scratch[..n];
            let mut off = 0;
            if self.writable[d] {
                match send(self.fds[d].as_raw_fd(), data) {
                    Ok(w) => off = w,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(_) => return Err(Self::failed(d)),
                }
            }
            if off < n {
                self.writable[d] = false;
                self.dirs[s].pending = Some(data[off..].to_vec());
                return Ok(());
            }
        }
        self.again = true;
        Ok(())
    }

    /// Runs both directions after readiness changed; `Err` when the tunnel ends, and why.
    fn turn(&mut self, scratch: &mut [u8], now: Instant) -> Result<(), TunnelEnd> {
        self.again = false;
        let mut moved = false;
        for s in 0..2 {
            self.pump(s, scratch, &mut moved)?;
        }
        if moved {
            self.last_activity = now;
        }
        Ok(())
    }
}

/// Makes a socket call, again when a signal interrupted it; its byte count or its error.
#[inline(always)]
fn retrying(mut call: impl FnMut() -> libc::c_long) -> io::Result<usize> {
    loop {
        let r = call();
        if r >= 0 {
            return Ok(r as usize);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

fn recv(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for `buf.len()` bytes; no address is asked for.
    retrying(|| unsafe {
        libc::syscall(
            libc::SYS_recvfrom,
            fd as libc::c_long,
            buf.as_mut_ptr(),
            buf.len(),
            0 as libc::c_long,
            std::ptr::null_mut::<libc::sockaddr>(),
            std::ptr::null_mut::<libc::socklen_t>(),
        )
    })
}

fn send(fd: RawFd, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for `buf.len()` bytes; no address is given. MSG_NOSIGNAL: a closed
    // peer is an error here, not a SIGPIPE.
    retrying(|| unsafe {
        libc::syscall(
            libc::SYS_sendto,
            fd as libc::c_long,
            buf.as_ptr(),
            buf.len(),
            libc::MSG_NOSIGNAL as libc::c_long,
            std::ptr::null::<libc::sockaddr>(),
            0 as libc::c_long,
        )
    })
}

/// One relay thread's loop and its tunnels.
struct Reactor {
    epoll: OwnedFd,
    wake: RawFd,
    /// Boxed: a slot left by a closed tunnel keeps 8 bytes, not the tunnel's size.
    tunnels: Vec<Option<Box<Tunnel>>>,
    free: Vec<usize>,
    /// Slots freed during this batch: reused only after it, so that its later events for a
    /// closed tunnel cannot reach a new one.
    freed: Vec<usize>,
    /// Tunnels whose read turn was cut short.
    again: Vec<usize>,
    /// How often idle deadlines are checked: the shortest of the live tunnels' checks.
    check: Option<Duration>,
    next_check: Option<Instant>,
    /// When the `set_after_closes` hook is due (tunnels closed).
    after_closes: Option<Instant>,
}

impl Reactor {
    fn new() -> io::Result<(Reactor, Inbox)> {
        // SAFETY: plain syscalls; the fds are owned right after.
        let epoll = unsafe { OwnedFd::from_raw_fd(cvt(libc::epoll_create1(libc::EPOLL_CLOEXEC))?) };
        let wake = unsafe {
            OwnedFd::from_raw_fd(cvt(libc::eventfd(
                0,
                libc::EFD_CLOEXEC | libc::EFD_NONBLOCK,
            ))?)
        };
        let mut ev = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: WAKE_KEY,
        };
        // SAFETY: valid fds and event.
        cvt(unsafe {
            libc::epoll_ctl(epoll.as_raw_fd(), libc::EPOLL_CTL_ADD, wake.as_raw_fd(), &mut ev)
        })?;
        let reactor = Reactor {
            epoll,
            wake: wake.as_raw_fd(),
            tunnels: Vec::new(),
            free: Vec::new(),
            freed: Vec::new(),
            again: Vec::new(),
            check: None,
            next_check: None,
            after_closes: None,
        };
        Ok((
            reactor,
            Inbox {
                queue: Mutex::new(Vec::new()),
                wake,
            },
        ))
    }

    fn run(mut self, inbox: &Inbox) {
        let mut scratch = vec![0u8; SCRATCH_SIZE].into_boxed_slice();
        let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 256];
        let mut again = Vec::new();
        let mut now = Instant::now();
        loop {
            let timeout = if !self.again.is_empty() {
                0
            } else {
                let due = match (self.next_check, self.after_closes) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
                match due {
                    None => -1,
                    Some(t) => {
                        // `now` is the last batch's: late by that batch's work at most
                        let nanos = t.saturating_duration_since(now).as_nanos();
                        // in ms, rounded up: waking before the check is due would only spin
                        nanos.div_ceil(1_000_000).min(i32::MAX as u128) as i32
                    }
                }
            };
            // SAFETY: `events` is valid for its length; no signal mask is given.
            let n = unsafe {
                libc::syscall(
                    libc::SYS_epoll_pwait,
                    self.epoll.as_raw_fd() as libc::c_long,
                    events.as_mut_ptr(),
                    events.len() as libc::c_long,
                    timeout as libc::c_long,
                    std::ptr::null::<libc::sigset_t>(),
                    0 as libc::c_long,
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                warn!("relay thread: epoll_wait failed: {e}");
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
            // One clock read per batch: the time of last activity is the batch's.
            now = Instant::now();
            for ev in &events[..n as usize] {
                let (key, flags) = (ev.u64, ev.events);
                if key == WAKE_KEY {
                    self.take_new(inbox, now);
                    continue;
                }
                let (idx, side) = ((key >> 1) as usize, (key & 1) as usize);
                let Some(t) = self.tunnels.get_mut(idx).and_then(|t| t.as_mut()) else {
                    continue;
                };
                let err = flags & (libc::EPOLLERR | libc::EPOLLHUP) as u32 != 0;
                if err || flags & libc::EPOLLRDHUP as u32 != 0 {
                    t.closed[side] = true;
                }
                if err || flags & (libc::EPOLLIN | libc::EPOLLRDHUP) as u32 != 0 {
                    t.readable[side] = true;
                }
                if err || flags & libc::EPOLLOUT as u32 != 0 {
                    t.writable[side] = true;
                }
                self.turn(idx, &mut scratch, now);
            }
            std::mem::swap(&mut again, &mut self.again);
            for idx in again.drain(..) {
                if self.tunnels.get(idx).is_some_and(|t| t.as_ref().is_some_and(|t| t.again)) {
                    self.turn(idx, &mut scratch, now);
                }
            }
            if self.next_check.is_some_and(|t| now >= t) {
                self.check_idle(now);
            }
            if !self.freed.is_empty() && self.after_closes.is_none() {
                self.after_closes = AFTER_CLOSES.get().map(|_| now + AFTER_CLOSES_DELAY);
            }
            self.free.append(&mut self.freed);
            if self.after_closes.is_some_and(|t| now >= t) {
                self.after_closes = None;
                if let Some(hook) = AFTER_CLOSES.get() {
                    debug!("relay thread: running the after-closes hook");
                    hook();
                }
            }
        }
    }

    fn turn(&mut self, idx: usize, scratch: &mut [u8], now: Instant) {
        let Some(t) = self.tunnels[idx].as_mut() else {
            return;
        };
        match t.turn(scratch, now) {
            Ok(()) => {
                if t.again {
                    self.again.push(idx);
                }
            }
            Err(end) => self.remove(idx, end),
        }
    }

    fn remove(&mut self, idx: usize, end: TunnelEnd) {
        if let Some(t) = self.tunnels[idx].take() {
            self.freed.push(idx);
            debug!("relay thread: tunnel {idx} ended: {end:?}");
            t.end(end);
        }
    }

    fn take_new(&mut self, inbox: &Inbox, now: Instant) {
        let mut counter = 0u64;
        // SAFETY: reads 8 bytes into a valid u64 (resets the eventfd).
        unsafe { libc::read(self.wake, &mut counter as *mut u64 as *mut _, 8) };
        let new = std::mem::take(&mut *inbox.queue.lock().unwrap_or_else(|e| e.into_inner()));
        for h in new {
            self.add(h, now);
        }
    }

    fn add(&mut self, h: Handoff, now: Instant) {
        let Handoff {
            sockets,
            guards,
            tunnel,
            bytes,
            started,
            home,
        } = h;
        let idx = self.free.pop().unwrap_or_else(|| {
            self.tunnels.push(None);
            self.tunnels.len() - 1
        });
        let fds = sockets.map(OwnedFd::from);
        let mut t = Box::new(Tunnel {
            fds,
            // Edge-triggered: what is already readable comes as a first event.
            readable: [false; 2],
            writable: [true; 2],
            closed: [false; 2],
            dirs: Default::default(),
            again: false,
            last_activity: now,
            idle: tunnel.idle_timeout,
            started,
            on_close: tunnel.on_close,
            guards,
            home,
        });
        t.dirs[0].bytes = bytes[0];
        t.dirs[1].bytes = bytes[1];
        for s in 0..2 {
            let mut ev = libc::epoll_event {
                events: (libc::EPOLLIN | libc::EPOLLOUT | libc::EPOLLRDHUP | libc::EPOLLET) as u32,
                u64: ((idx as u64) << 1) | s as u64,
            };
            // SAFETY: valid fds and event.
            let r = unsafe {
                libc::epoll_ctl(
                    self.epoll.as_raw_fd(),
                    libc::EPOLL_CTL_ADD,
                    t.fds[s].as_raw_fd(),
                    &mut ev,
                )
            };
            if let Err(e) = cvt(r) {
                warn!("relay thread: cannot watch a tunnel socket: {e}");
                self.free.push(idx);
                t.end(Tunnel::failed(s));
                return;
            }
        }
        if let Some(timeout) = t.idle {
            let check = crate::tunnel::idle_check(timeout);
            if self.check.is_none_or(|c| check < c) {
                self.check = Some(check);
                let next = now + check;
                if self.next_check.is_none_or(|n| next < n) {
                    self.next_check = Some(next);
                }
            }
        }
        self.tunnels[idx] = Some(t);
    }

    /// Ends the tunnels that moved no byte for their idle timeout.
    fn check_idle(&mut self, now: Instant) {
        let mut shortest: Option<Duration> = None;
        for idx in 0..self.tunnels.len() {
            let Some(t) = self.tunnels[idx].as_ref() else {
                continue;
            };
            let Some(timeout) = t.idle else { continue };
            if now.saturating_duration_since(t.last_activity) >= timeout {
                self.remove(idx, TunnelEnd::IdleTimeout);
                continue;
            }
            let check = crate::tunnel::idle_check(timeout);
            shortest = Some(shortest.map_or(check, |s| s.min(check)));
        }
        self.check = shortest;
        self.next_check = shortest.map(|c| now + c);
    }
}
