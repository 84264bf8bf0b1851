//! Balancing algorithms over a pool's backends: weighted round robin (a precomputed smooth
//! wheel), weighted random, least connections per weight, and weighted rendezvous hashing.

use super::Backend;
use crate::util::fnv1a;
use std::cell::Cell;
use std::sync::atomic::Ordering::Relaxed;

/// The smooth weighted round-robin order (nginx's algorithm) of one full cycle.
pub fn smooth_wrr(weights: &[u32]) -> Vec<u16> {
    // The same order with weights divided by their common divisor: 3 x 1000 is a 3-slot
    // wheel, not a 3000-slot one built in 9 million steps.
    let g = weights.iter().fold(0u32, |g, &w| gcd(g, w)).max(1);
    let weights: Vec<u32> = weights.iter().map(|&w| w / g).collect();
    let weights = weights.as_slice();
    let total: i64 = weights.iter().map(|&w| w as i64).sum();
    let mut current = vec![0i64; weights.len()];
    let mut out = Vec::with_capacity(total as usize);
    for _ in 0..total {
        let mut best = 0;
        for (i, &w) in weights.iter().enumerate() {
            current[i] += w as i64;
            if current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= total;
        out.push(best as u16);
    }
    out
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// The first acceptable backend on the wheel, starting at `start`.
#[inline]
pub fn scan_wheel(wheel: &[u16], start: usize, ok: impl Fn(usize) -> bool) -> Option<usize> {
    let n = wheel.len();
    if n == 0 {
        return None;
    }
    let start = start % n;
    (0..n)
        .map(|k| wheel[(start + k) % n] as usize)
        .find(|&i| ok(i))
}

/// The acceptable backend with the fewest in-flight requests per weight; ties rotate.
pub fn least_conn(
    backends: &[std::sync::Arc<Backend>],
    rotate: usize,
    ok: impl Fn(usize) -> bool,
) -> Option<usize> {
    let n = backends.len();
    let mut best: Option<(u64, usize)> = None;
    for k in 0..n {
        let i = (rotate + k) % n;
        if !ok(i) {
            continue;
        }
        let b = &backends[i];
        let load = (b.in_flight.load(Relaxed) as u64 * 1_000_000) / b.weight as u64;
        if best.is_none_or(|(l, _)| load < l) {
            best = Some((load, i));
        }
    }
    best.map(|(_, i)| i)
}

/// Weighted rendezvous (highest random weight) hashing: stable, and only the keys of a
/// backend that goes away move.
pub fn rendezvous(
    backends: &[std::sync::Arc<Backend>],
    key: &[u8],
    ok: impl Fn(usize) -> bool,
) -> Option<usize> {
    let kh = fnv1a(key, 0);
    let mut best: Option<(f64, usize)> = None;
    for (i, b) in backends.iter().enumerate() {
        if !ok(i) {
            continue;
        }
        let h = fnv1a(b.tag.as_bytes(), kh);
        // uniform in (0, 1]
        let u = ((h >> 11) as f64 + 1.0) / (1u64 << 53) as f64;
        let score = -(b.weight as f64) / u.ln();
        if best.is_none_or(|(s, _)| score > s) {
            best = Some((score, i));
        }
    }
    best.map(|(_, i)| i)
}

thread_local! {
    static RNG: Cell<u64> = Cell::new(seed());
}

fn seed() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1);
    let addr = &t as *const u64 as u64;
    fnv1a(&(t ^ addr).to_le_bytes(), 7) | 1
}

/// A fast thread-local xorshift random number.
pub fn fast_random() -> usize {
    RNG.with(|c| {
        let mut x = c.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        c.set(x);
        x as usize
    })
}
