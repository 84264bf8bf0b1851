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

/// Whole seconds of the wall clock, for once-per-second log throttles.
pub(crate) fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
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
