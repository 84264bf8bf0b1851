//! What a listener allows its clients: the compiled `listeners[].client` limits (timeouts and
//! header sizes, enforced by the patched engine) and the connection caps (`server.max_connections`,
//! `max_connections_per_ip`), counted by RAII guards that live as long as each socket.

use crate::config::{ClientConf, Issues};
use pingora_core::listeners::{ConnectionFilter, ConnectionGuard};
use pingora_core::protocols::http::v1::server::ClientLimits;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Largest header size accepted (the engine's own hard cap is 1 MiB).
const MAX_HEADER_SIZE: u64 = 1024 * 1024;
/// Longest client timeout accepted.
const MAX_TIMEOUT: Duration = Duration::from_secs(24 * 3600);
/// File descriptors kept back from `server.max_connections`' default for upstream connections,
/// health checks, logs and listeners.
const FD_RESERVE: u64 = 256;

/// Compiles one listener's `client:` section (`at` is its key path).
pub fn compile_client(c: &ClientConf, at: &str, issues: &mut Issues) -> ClientLimits {
    for (key, d) in [
        ("header_timeout", c.header_timeout),
        ("keepalive_timeout", c.keepalive_timeout),
        ("body_timeout", c.body_timeout),
        ("send_timeout", c.send_timeout),
    ] {
        if d.0 < Duration::from_secs(1) || d.0 > MAX_TIMEOUT {
            issues.error(
                format!("{at}.{key}"),
                format!("{d} is out of range 1s..=1d"),
            );
        }
    }
    let (line, header) = (c.max_request_line.0, c.max_header_size.0);
    if !(256..=MAX_HEADER_SIZE).contains(&line) {
        issues.error(
            format!("{at}.max_request_line"),
            format!("{} is out of range 256..=1m", c.max_request_line),
        );
    }
    if header < line || header > MAX_HEADER_SIZE {
        issues.error(
            format!("{at}.max_header_size"),
            format!(
                "{} is out of range max_request_line ({})..=1m",
                c.max_header_size, c.max_request_line
            ),
        );
    }
    if c.min_body_rate > 1 << 30 {
        issues.error(
            format!("{at}.min_body_rate"),
            format!("{} is out of range 0..={}", c.min_body_rate, 1u64 << 30),
        );
    }
    ClientLimits {
        header_timeout: Some(c.header_timeout.0),
        keepalive_timeout: Some(c.keepalive_timeout.0),
        max_request_line: line.min(MAX_HEADER_SIZE) as usize,
        max_header_bytes: header.min(MAX_HEADER_SIZE) as usize,
        body_timeout: Some(c.body_timeout.0),
        min_body_rate: c.min_body_rate as usize,
        send_timeout: Some(c.send_timeout.0),
    }
}

/// Raises the soft open-files limit to the hard limit (as nginx's `worker_rlimit_nofile`
/// would) and returns the soft limit in force.
pub fn raise_nofile_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 1024;
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                lim.rlim_cur = lim.rlim_max;
            }
        }
    }
    lim.rlim_cur
}

/// The default `server.max_connections` under an open-files limit of `nofile`: each client
/// connection may hold one upstream connection too, so half of what is left after a reserve.
pub fn default_max_connections(nofile: u64) -> usize {
    (nofile.saturating_sub(FD_RESERVE) / 2).max(16) as usize
}

/// Open client connections of the whole process, against `server.max_connections`.
#[derive(Debug)]
pub struct ConnectionCount {
    open: AtomicUsize,
    max: AtomicUsize,
    refused: AtomicU64,
    log: crate::util::OncePerSecond,
}

impl ConnectionCount {
    /// A count that refuses connections past `max`.
    pub fn new(max: usize) -> Arc<ConnectionCount> {
        Arc::new(ConnectionCount {
            open: AtomicUsize::new(0),
            max: AtomicUsize::new(max),
            refused: AtomicU64::new(0),
            log: Default::default(),
        })
    }

    /// Sets the cap (known once the open-files limit has been raised at start).
    pub fn set_max(&self, max: usize) {
        self.max.store(max, Ordering::Relaxed);
    }

    /// The cap.
    pub fn max(&self) -> usize {
        self.max.load(Ordering::Relaxed)
    }

    /// Client connections open now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// Connections refused by a cap since the start.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// Counts a refusal; logs at most once per second, with how many were refused meanwhile.
    fn refuse(&self, why: std::fmt::Arguments) {
        let total = self.refused.fetch_add(1, Ordering::Relaxed) + 1;
        if self.log.ready() {
            log::warn!("connection refused: {why} ({total} refused since start)");
        }
    }
}

/// Admits client connections of one listener group under the global and the per-IP caps.
#[derive(Debug)]
pub struct ConnectionLimiter {
    total: Arc<ConnectionCount>,
    per_ip: u32,
    /// Open connections by client address, sharded to keep accept threads apart.
    shards: IpCounts,
}

const SHARDS: usize = 16;

/// Open connections by client address, in `SHARDS` locks.
type IpCounts = Arc<[Mutex<HashMap<IpAddr, u32>>; SHARDS]>;

impl ConnectionLimiter {
    /// A limiter counting into `total`, with `per_ip` connections allowed per client address
    /// (0: no per-address limit).
    pub fn new(total: Arc<ConnectionCount>, per_ip: u32) -> ConnectionLimiter {
        ConnectionLimiter {
            total,
            per_ip,
            shards: Arc::new(std::array::from_fn(|_| Mutex::new(HashMap::new()))),
        }
    }

    fn shard(&self, ip: &IpAddr) -> usize {
        let h = match ip {
            IpAddr::V4(v4) => u32::from(*v4) as u64,
            IpAddr::V6(v6) => {
                let b = u128::from(*v6);
                (b as u64) ^ ((b >> 64) as u64)
            }
        };
        (h.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 60) as usize % SHARDS
    }
}

/// Releases one connection's place in the counts when its socket closes.
struct Admitted {
    total: Arc<ConnectionCount>,
    ip: Option<(IpAddr, usize, IpCounts)>,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.total.open.fetch_sub(1, Ordering::Relaxed);
        if let Some((ip, shard, shards)) = &self.ip {
            let mut map = shards[*shard].lock().unwrap_or_else(|e| e.into_inner());
            if let Some(n) = map.get_mut(ip) {
                *n -= 1;
                if *n == 0 {
                    map.remove(ip);
                }
            }
        }
    }
}

#[async_trait::async_trait]
impl ConnectionFilter for ConnectionLimiter {
    fn admit(&self, addr: Option<&SocketAddr>) -> Result<Option<ConnectionGuard>, ()> {
        let open = self.total.open.fetch_add(1, Ordering::Relaxed);
        let mut guard = Admitted {
            total: self.total.clone(),
            ip: None,
        };
        let max = self.total.max();
        if open >= max {
            self.total
                .refuse(format_args!("server.max_connections ({max}) reached"));
            return Err(());
        }
        if let Some(addr) = addr {
            self.count_ip(&mut guard, addr)?;
        }
        Ok(Some(Box::new(guard)))
    }
}

impl ConnectionLimiter {
    /// Counts `addr` against the per-IP cap into `guard` (`Err` when it has its share open).
    fn count_ip(&self, guard: &mut Admitted, addr: &SocketAddr) -> Result<(), ()> {
        if self.per_ip == 0 || guard.ip.is_some() {
            return Ok(());
        }
        let ip = crate::util::canonical_ip(addr.ip());
        let shard = self.shard(&ip);
        let mut map = self.shards[shard].lock().unwrap_or_else(|e| e.into_inner());
        let n = map.entry(ip).or_insert(0);
        if *n >= self.per_ip {
            drop(map);
            self.total.refuse(format_args!(
                "{ip} has max_connections_per_ip ({}) open",
                self.per_ip
            ));
            return Err(());
        }
        *n += 1;
        guard.ip = Some((ip, shard, self.shards.clone()));
        Ok(())
    }

    /// Counts a connection admitted without its client address (`guard` from `admit(None)`)
    /// against the per-IP cap once the address is known (a PROXY protocol header).
    // `Err(())` as in `ConnectionFilter::admit`: the refusal is logged where it is decided.
    #[allow(clippy::result_unit_err)]
    pub fn admit_late(
        &self,
        guard: Option<ConnectionGuard>,
        addr: Option<&SocketAddr>,
    ) -> Result<Option<ConnectionGuard>, ()> {
        let Some(addr) = addr else {
            return Ok(guard);
        };
        let Some(guard) = guard else {
            return Ok(None);
        };
        match guard.downcast::<Admitted>() {
            Ok(mut admitted) => {
                self.count_ip(&mut admitted, addr)?;
                Ok(Some(admitted))
            }
            Err(other) => Ok(Some(other)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn per_ip_cap_refuses_the_extra_connection_and_frees_on_drop() {
        let total = ConnectionCount::new(100);
        let lim = ConnectionLimiter::new(total.clone(), 2);
        let a = lim.admit(Some(&addr("10.0.0.1:1000"))).unwrap();
        let b = lim.admit(Some(&addr("10.0.0.1:1001"))).unwrap();
        assert!(lim.admit(Some(&addr("10.0.0.1:1002"))).is_err());
        // Another address is not affected; the IPv4-mapped form is the same client.
        let c = lim.admit(Some(&addr("10.0.0.2:1000"))).unwrap();
        assert!(lim.admit(Some(&addr("[::ffff:10.0.0.1]:5"))).is_err());
        assert_eq!(total.open(), 3);
        drop(a);
        let d = lim.admit(Some(&addr("10.0.0.1:1003"))).unwrap();
        drop((b, c, d));
        assert_eq!(total.open(), 0);
        assert!(lim.shards.iter().all(|s| s.lock().unwrap().is_empty()));
        assert_eq!(total.refused(), 2);
    }

    #[test]
    fn late_admission_counts_the_address_told_later() {
        let total = ConnectionCount::new(100);
        let lim = ConnectionLimiter::new(total.clone(), 1);
        let a = lim.admit(None).unwrap();
        let a = lim.admit_late(a, Some(&addr("203.0.113.7:1"))).unwrap();
        let b = lim.admit(None).unwrap();
        assert!(lim.admit_late(b, Some(&addr("203.0.113.7:2"))).is_err());
        // The refused connection's place is returned.
        assert_eq!(total.open(), 1);
        drop(a);
        assert_eq!(total.open(), 0);
        assert!(lim.shards.iter().all(|s| s.lock().unwrap().is_empty()));
    }

    #[test]
    fn global_cap_counts_every_listener_group() {
        let total = ConnectionCount::new(2);
        let one = ConnectionLimiter::new(total.clone(), 0);
        let two = ConnectionLimiter::new(total.clone(), 0);
        let a = one.admit(None).unwrap();
        let b = two.admit(None).unwrap();
        assert!(one.admit(None).is_err());
        assert_eq!(total.open(), 2);
        drop(a);
        assert!(two.admit(None).is_ok());
        drop(b);
    }

    #[test]
    fn client_section_ranges() {
        let mut issues = Issues::default();
        let c: ClientConf =
            serde_yaml::from_str("{ header_timeout: 0s, max_header_size: 100 }").unwrap();
        compile_client(&c, "listeners[0].client", &mut issues);
        let text: Vec<String> = issues.errors.iter().map(|e| e.to_string()).collect();
        assert!(text
            .iter()
            .any(|e| e.contains("listeners[0].client.header_timeout")));
        assert!(text
            .iter()
            .any(|e| e.contains("listeners[0].client.max_header_size")));
    }
}
