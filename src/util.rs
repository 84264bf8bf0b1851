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
