//! Memory and lookup cost of the Socket.IO sid -> backend table (`SidTable`).
//!
//! `cargo run --release --example sid_table_bench [-- --sessions 100000]`
//!
//! Inserts N sessions with realistic 20-character engine.io sids (base64url, like
//! `kB5Oqd_dgt28MwpTAAAA`) into `SidTable::new(N)` and prints the table's own estimate
//! (`heap_bytes()`), bytes per session, the process RSS delta (VmRSS before/after; the sid
//! strings themselves are generated before the first reading), insert ns/op and lookup ns/op
//! (hits in random and in insertion order, and misses). Last line: one JSON object with the same numbers.

use gateway::proxy::affinity::SidTable;
use std::hint::black_box;
use std::time::Instant;

fn vm_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

const B64URL: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// engine.io's base64id: 15 bytes (random prefix + counter) base64url-encoded = 20 chars.
fn sid(rng: &mut Rng, counter: u64) -> String {
    let mut bytes = [0u8; 15];
    let r1 = rng.next().to_le_bytes();
    let r2 = rng.next().to_le_bytes();
    bytes[..8].copy_from_slice(&r1);
    bytes[8..12].copy_from_slice(&r2[..4]);
    bytes[12..15].copy_from_slice(&counter.to_be_bytes()[5..8]);
    let mut s = String::with_capacity(20);
    for c in bytes.chunks(3) {
        let n = (c[0] as u32) << 16 | (c[1] as u32) << 8 | c[2] as u32;
        for shift in [18, 12, 6, 0] {
            s.push(B64URL[((n >> shift) & 63) as usize] as char);
        }
    }
    s
}

fn main() {
    let mut n: usize = 100_000;
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < args.len() {
        if args[i] == "--sessions" && i + 1 < args.len() {
            n = args[i + 1].parse().expect("--sessions N");
            i += 1;
        }
        i += 1;
    }
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let sids: Vec<String> = (0..n as u64).map(|c| sid(&mut rng, c)).collect();
    assert_eq!(sids[0].len(), 20);
    let misses: Vec<String> = (0..n as u64)
        .map(|c| sid(&mut rng, (c + 1) << 20))
        .collect();
    let mut order: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        order.swap(i, (rng.next() % (i as u64 + 1)) as usize);
    }

    let rss0 = vm_rss_kib();
    let table = SidTable::new(n);
    let now = 1_000_000u64;
    let t = Instant::now();
    for (i, s) in sids.iter().enumerate() {
        table.insert(s, i % 4, 45_000, now);
    }
    let insert_ns = t.elapsed().as_nanos() as f64 / n as f64;
    let rss1 = vm_rss_kib();

    let heap = table.heap_bytes();
    let len = table.len();
    let rss_delta = (rss1.saturating_sub(rss0)) * 1024;

    // Lookups: hits in shuffled order (several passes), then misses.
    let passes = 5;
    let t = Instant::now();
    let mut found = 0usize;
    for _ in 0..passes {
        for &i in &order {
            if black_box(table.get(black_box(&sids[i]), now + 1)).is_some() {
                found += 1;
            }
        }
    }
    let hit_ns = t.elapsed().as_nanos() as f64 / (passes * n) as f64;
    let t = Instant::now();
    for _ in 0..passes {
        for s in &sids {
            black_box(table.get(black_box(s), now + 1));
        }
    }
    let hit_seq_ns = t.elapsed().as_nanos() as f64 / (passes * n) as f64;
    let t = Instant::now();
    let mut miss_found = 0usize;
    for s in &misses {
        if black_box(table.get(black_box(s), now + 1)).is_some() {
            miss_found += 1;
        }
    }
    let miss_ns = t.elapsed().as_nanos() as f64 / n as f64;

    println!(
        "sessions inserted        {n} (table len {len}, {} evicted by the capacity bound)",
        n - len
    );
    println!("sid example              {}", sids[0]);
    println!(
        "heap_bytes()             {heap} ({:.1} B/session)",
        heap as f64 / len.max(1) as f64
    );
    println!(
        "RSS delta                {rss_delta} ({:.1} B/session)",
        rss_delta as f64 / len.max(1) as f64
    );
    println!("insert                   {insert_ns:.0} ns/op");
    println!(
        "get (hit, random order)  {hit_ns:.0} ns/op ({found} found of {})",
        passes * n
    );
    println!("get (hit, insert order)  {hit_seq_ns:.0} ns/op");
    println!("get (miss)               {miss_ns:.0} ns/op ({miss_found} false hits)");
    println!(
        "{}",
        serde_json::json!({
            "sessions": n, "len": len, "heap_bytes": heap,
            "heap_bytes_per_session": (heap as f64 / len.max(1) as f64 * 10.0).round() / 10.0,
            "rss_delta_bytes": rss_delta,
            "rss_bytes_per_session": (rss_delta as f64 / len.max(1) as f64 * 10.0).round() / 10.0,
            "insert_ns": insert_ns.round(), "get_hit_ns": hit_ns.round(), "get_hit_seq_ns": hit_seq_ns.round(), "get_miss_ns": miss_ns.round(),
        })
    );
}
