//! The bounded sid -> node table, for sids that carry no tag (clients of an old gateway, or
//! an `io` cookie): sharded, fixed-size keys, entries expire after their heartbeat of silence.

use std::collections::HashMap;
use std::sync::Mutex;

#[derive(Debug, Clone, Copy)]
struct Entry {
    backend: u16,
    /// The session runs over a WebSocket now (counted by the tunnel, not by the table).
    upgraded: bool,
    last_seen: u64,
    ttl: u64,
}

const SHARDS: usize = 16;

/// A bounded, sharded sid -> backend table. Keys are 64-bit hashes of the engine sid, so an
/// entry costs a few dozen bytes and no allocation; entries expire after their heartbeat
/// (pingInterval + pingTimeout) of silence.
pub struct SidTable {
    shards: Vec<Mutex<HashMap<u64, Entry>>>,
    per_shard: usize,
}

impl SidTable {
    /// A table holding at most about `capacity` sessions.
    pub fn new(capacity: usize) -> SidTable {
        SidTable {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            per_shard: capacity.div_ceil(SHARDS).max(1),
        }
    }

    /// The table key of `sid`.
    pub fn key(sid: &str) -> u64 {
        crate::util::fnv1a(sid.as_bytes(), 0x5eed)
    }

    fn shard(&self, k: u64) -> std::sync::MutexGuard<'_, HashMap<u64, Entry>> {
        self.shards[(k as usize) % SHARDS]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Records that `sid` lives on `backend`; `ttl_ms` of silence expires it.
    pub fn insert(&self, sid: &str, backend: usize, ttl_ms: u64, now_ms: u64) {
        let k = Self::key(sid);
        let mut m = self.shard(k);
        if m.len() >= self.per_shard && !m.contains_key(&k) {
            m.retain(|_, e| now_ms.saturating_sub(e.last_seen) <= e.ttl);
            if m.len() >= self.per_shard {
                // Still full of live sessions: drop the stalest to stay bounded.
                if let Some(old) = m.iter().min_by_key(|(_, e)| e.last_seen).map(|(k, _)| *k) {
                    m.remove(&old);
                }
            }
        }
        m.insert(
            k,
            Entry {
                backend: backend as u16,
                upgraded: false,
                last_seen: now_ms,
                ttl: ttl_ms,
            },
        );
    }

    /// The backend of `sid`, refreshing its expiry; expired entries are dropped.
    pub fn get(&self, sid: &str, now_ms: u64) -> Option<usize> {
        let k = Self::key(sid);
        let mut m = self.shard(k);
        let e = m.get_mut(&k)?;
        if now_ms.saturating_sub(e.last_seen) > e.ttl {
            m.remove(&k);
            return None;
        }
        e.last_seen = now_ms;
        Some(e.backend as usize)
    }

    /// Refreshes the expiry of the session with table key `k`, if known (a request of a
    /// tagged sid: routed by its tag, but the table still counts the session as live).
    pub fn touch(&self, k: u64, now_ms: u64) {
        if let Some(e) = self.shard(k).get_mut(&k) {
            e.last_seen = now_ms;
        }
    }

    /// Marks the session with table key `k` as moved to a WebSocket: its open tunnel counts
    /// it from now on, and the entry only stays for routing a late polling request.
    pub fn mark_upgraded(&self, k: u64) {
        if let Some(e) = self.shard(k).get_mut(&k) {
            e.upgraded = true;
        }
    }

    /// Live polling sessions per backend (entries seen within their heartbeat and not
    /// upgraded), indexed by backend, `backends` long. Walks the table: for `/status`.
    pub fn live_polling(&self, backends: usize, now_ms: u64) -> Vec<usize> {
        let mut out = vec![0; backends];
        for s in &self.shards {
            let m = s.lock().unwrap_or_else(|p| p.into_inner());
            for e in m.values() {
                if !e.upgraded && now_ms.saturating_sub(e.last_seen) <= e.ttl {
                    if let Some(n) = out.get_mut(e.backend as usize) {
                        *n += 1;
                    }
                }
            }
        }
        out
    }

    /// Renumbers the backends of every entry (`map[old] = new`), dropping entries whose
    /// backend left the pool (`None`).
    pub fn remap(&self, map: &[Option<u16>]) {
        for s in &self.shards {
            let mut m = s.lock().unwrap_or_else(|p| p.into_inner());
            m.retain(
                |_, e| match map.get(e.backend as usize).copied().flatten() {
                    Some(new) => {
                        e.backend = new;
                        true
                    }
                    None => false,
                },
            );
        }
    }

    /// Forgets `sid`.
    pub fn remove(&self, sid: &str) {
        self.remove_key(Self::key(sid));
    }

    /// Forgets the sid with table key `k`.
    pub fn remove_key(&self, k: u64) {
        self.shard(k).remove(&k);
    }

    /// Number of entries (live or not yet swept).
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().map(|m| m.len()).unwrap_or(0))
            .sum()
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Approximate heap bytes used (hash map buckets and control bytes).
    pub fn heap_bytes(&self) -> usize {
        self.shards
            .iter()
            .map(|s| {
                s.lock()
                    .map(|m| m.capacity() * (std::mem::size_of::<(u64, Entry)>() + 1))
                    .unwrap_or(0)
            })
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_expires_evicts_and_stays_bounded() {
        let t = SidTable::new(32);
        t.insert("a", 1, 1000, 0);
        assert_eq!(t.get("a", 500), Some(1));
        assert_eq!(t.get("a", 1400), Some(1), "a lookup refreshed it");
        assert_eq!(t.get("a", 3000), None, "expired");
        t.insert("b", 2, 1000, 0);
        t.remove("b");
        assert_eq!(t.get("b", 1), None);
        for i in 0..10_000 {
            t.insert(&format!("s{i}"), 0, 60_000, i);
        }
        assert!(t.len() <= 32 + SHARDS, "bounded: {}", t.len());
        assert_eq!(t.get("s9999", 10_000), Some(0), "the newest survive");
    }

    #[test]
    fn live_polling_counts_fresh_not_upgraded_sessions() {
        let t = SidTable::new(1000);
        t.insert("a", 0, 1000, 0);
        t.insert("b", 1, 1000, 0);
        t.insert("c", 1, 1000, 0);
        assert_eq!(t.live_polling(2, 500), vec![1, 2]);
        t.mark_upgraded(SidTable::key("c"));
        assert_eq!(
            t.live_polling(2, 500),
            vec![1, 1],
            "c runs over a WebSocket now"
        );
        t.touch(SidTable::key("b"), 900);
        assert_eq!(
            t.live_polling(2, 1500),
            vec![0, 1],
            "a expired, b was touched"
        );
        t.touch(SidTable::key("zz"), 900);
        assert_eq!(t.len(), 3, "touch never inserts");
    }
}
