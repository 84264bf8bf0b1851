// pingora-gateway patch: a lean pool of idle upstream connections.
//
// The default pool (`pingora-pool`) wraps every released stream in `Arc<Mutex>`, an LRU node,
// an `Arc<Notify>`, a oneshot and a map entry, and spawns a watcher task with its own timer per
// released connection; taking a connection back wakes that task and calls `getpeername` to
// check the fd. This pool keeps idle streams in per-thread shards of LIFO stacks keyed by the
// reuse hash: a release is a push, a reuse is a pop plus a non-blocking read check (no syscall
// when the socket is known idle), and one sweeper task per connector closes connections whose
// idle timeout passed or whose server hung up. Nothing is allocated per request once the
// stacks have grown.

use super::test_reusable_stream;
use crate::protocols::Stream;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

/// Shards (a thread keeps to one, so they are uncontended with one runtime per thread).
const SHARDS: usize = 16;
/// How often the sweeper closes expired and dead connections.
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

struct Idle {
    stream: Stream,
    /// When the idle timeout ends (`None`: no timeout).
    deadline: Option<Instant>,
}

/// Hashes a key that is already a hash (the peer's reuse hash) with one multiply: SipHash of
/// it cost more than the rest of a pool lookup.
#[derive(Default)]
struct KeyHasher(u64);

impl std::hash::Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }
    fn write_u64(&mut self, k: u64) {
        self.0 = k.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

#[derive(Default)]
struct Shard {
    stacks: HashMap<u64, VecDeque<Idle>, std::hash::BuildHasherDefault<KeyHasher>>,
    count: usize,
}

/// Idle upstream connections, by reuse hash.
pub(crate) struct LeanPool {
    shards: Box<[Mutex<Shard>]>,
    /// Most idle connections per shard (the pool size).
    capacity: usize,
    sweeper_started: AtomicBool,
    unexpected_data: Arc<AtomicU64>,
}

fn shard_index() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local!(static SHARD: usize = NEXT.fetch_add(1, Ordering::Relaxed) % SHARDS);
    SHARD.with(|s| *s)
}

impl LeanPool {
    pub(crate) fn new(capacity: usize, unexpected_data: Arc<AtomicU64>) -> Arc<Self> {
        Arc::new(LeanPool {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            capacity: capacity.max(1),
            sweeper_started: AtomicBool::new(false),
            unexpected_data,
        })
    }

    /// A live idle connection for `key`, most recently released first.
    pub(crate) fn get(&self, key: u64) -> Option<Stream> {
        let now = Instant::now();
        // Connections whose check fails are dropped (closed) outside the lock.
        let mut dead = Vec::new();
        let found = {
            let mut shard = self.shards[shard_index()].lock().unwrap();
            let shard = &mut *shard;
            let mut found = None;
            if let Some(stack) = shard.stacks.get_mut(&key) {
                while let Some(mut idle) = stack.pop_back() {
                    shard.count -= 1;
                    if idle.deadline.is_some_and(|d| d <= now)
                        || !test_reusable_stream(&mut idle.stream, &self.unexpected_data)
                    {
                        dead.push(idle.stream);
                        continue;
                    }
                    found = Some(idle.stream);
                    break;
                }
            }
            found
        };
        drop(dead);
        found
    }

    /// Keeps `stream` for reuse under `key` for at most `idle_timeout`.
    pub(crate) fn put(self: &Arc<Self>, key: u64, stream: Stream, idle_timeout: Option<Duration>) {
        if idle_timeout.is_some_and(|t| t.is_zero()) {
            return;
        }
        let deadline = idle_timeout.map(|t| Instant::now() + t);
        let evicted = {
            let mut shard = self.shards[shard_index()].lock().unwrap();
            let shard = &mut *shard;
            shard
                .stacks
                .entry(key)
                .or_default()
                .push_back(Idle { stream, deadline });
            shard.count += 1;
            if shard.count > self.capacity {
                // Over capacity: close the oldest connection of the largest stack.
                let victim = shard
                    .stacks
                    .values_mut()
                    .max_by_key(|s| s.len())
                    .and_then(|s| s.pop_front());
                shard.count -= victim.is_some() as usize;
                victim
            } else {
                None
            }
        };
        drop(evicted);
        if !self.sweeper_started.load(Ordering::Relaxed)
            && !self.sweeper_started.swap(true, Ordering::Relaxed)
        {
            let weak = Arc::downgrade(self);
            pingora_runtime::current_handle().spawn(sweep(weak));
        }
    }

    /// Closes connections past their idle timeout or closed by the server.
    fn sweep_once(&self) {
        let now = Instant::now();
        for shard in self.shards.iter() {
            let mut dead = Vec::new();
            {
                let mut shard = shard.lock().unwrap();
                let shard = &mut *shard;
                if shard.count == 0 {
                    continue;
                }
                for stack in shard.stacks.values_mut() {
                    let mut i = 0;
                    while i < stack.len() {
                        let idle = &mut stack[i];
                        if idle.deadline.is_some_and(|d| d <= now)
                            || !test_reusable_stream(&mut idle.stream, &self.unexpected_data)
                        {
                            if let Some(idle) = stack.remove(i) {
                                dead.push(idle.stream);
                            }
                        } else {
                            i += 1;
                        }
                    }
                }
                shard.count -= dead.len();
                if shard.stacks.len() > 1024 {
                    shard.stacks.retain(|_, s| !s.is_empty());
                }
            }
            drop(dead);
        }
    }
}

async fn sweep(pool: Weak<LeanPool>) {
    let mut tick = tokio::time::interval(SWEEP_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match pool.upgrade() {
            Some(p) => p.sweep_once(),
            None => return,
        }
    }
}
