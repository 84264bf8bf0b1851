//! Small helpers shared by several modules (one copy each).

/// The host part of a Host header value: `example.com:8080` -> `example.com`,
/// `[::1]:9901` -> `[::1]` (brackets kept), a value without a port unchanged.
pub(crate) fn host_without_port(host: &str) -> &str {
    if host.starts_with('[') {
        host.find(']').map_or(host, |i| &host[..=i])
    } else {
        host.rsplit_once(':').map_or(host, |(h, _)| h)
    }
}

/// `ip` with an IPv4-mapped IPv6 address (`::ffff:10.0.0.1`) turned into its IPv4 form, so
/// one client counts as one address whichever socket family accepted it.
pub(crate) fn canonical_ip(ip: std::net::IpAddr) -> std::net::IpAddr {
    match ip {
        std::net::IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, std::net::IpAddr::V4),
        v4 => v4,
    }
}

/// Lets one caller a second through, for log lines that a flood would otherwise repeat.
#[derive(Debug, Default)]
pub(crate) struct OncePerSecond {
    /// Wall-clock second of the last caller let through.
    last: std::sync::atomic::AtomicU64,
}

impl OncePerSecond {
    /// A throttle that lets the next caller through (usable in a `static`).
    pub(crate) const fn new() -> OncePerSecond {
        OncePerSecond {
            last: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Whether this call is the first of its wall-clock second.
    pub(crate) fn ready(&self) -> bool {
        use std::sync::atomic::Ordering::Relaxed;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let last = self.last.load(Relaxed);
        now > last
            && self
                .last
                .compare_exchange(last, now, Relaxed, Relaxed)
                .is_ok()
    }
}

/// FNV-1a, used for tags and hashing; stable across processes and versions.
pub(crate) fn fnv1a(data: &[u8], seed: u64) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64 ^ seed;
    for b in data {
        h ^= *b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    // splitmix64 finaliser for better bit spread
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// Value of cookie `name` in the request's Cookie headers.
pub(crate) fn cookie<'a>(req: &'a pingora_http::RequestHeader, name: &str) -> Option<&'a str> {
    req.headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|kv| {
            let (k, v) = kv.split_once('=')?;
            (k.trim() == name).then(|| v.trim())
        })
}

/// Value of parameter `name` in a query string (not percent-decoded).
pub(crate) fn query_value<'a>(query: Option<&'a str>, name: &str) -> Option<&'a str> {
    query?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (k == name).then_some(v)
    })
}

#[cfg(test)]
mod tests {
    use super::host_without_port;

    #[test]
    fn strips_the_port_only() {
        for (input, want) in [
            ("example.com:8080", "example.com"),
            ("example.com", "example.com"),
            ("[::1]:9901", "[::1]"),
            ("[::1]", "[::1]"),
            ("127.0.0.1:80", "127.0.0.1"),
            ("", ""),
        ] {
            assert_eq!(host_without_port(input), want, "{input}");
        }
    }
}
