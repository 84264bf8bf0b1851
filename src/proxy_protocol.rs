//! PROXY protocol (HAProxy's v1 text and v2 binary connection header): read on listeners with
//! `proxy_protocol: true`, so that the gateway behind an L4 balancer or stunnel sees the real
//! client address, and written by [`encode`] for TCP pools with `send_proxy_protocol`.
//!
//! Parsing is the `ppp` crate's; this module adds the limits (header size, read deadline), the
//! trusted-peer check before anything is read, and makes the header's source address the
//! connection's client address: the socket digest's peer address, which every consumer reads
//! (forwarded headers, access log, `max_connections_per_ip`, rate limits, ip filters, hashing).

use crate::listener::ConnectionLimiter;
use crate::proxy::headers::Forwarded;
use crate::util::OncePerSecond;
use async_trait::async_trait;
use pingora_core::listeners::{ConnectionFilter, ConnectionGuard, PreTlsProcess};
use pingora_core::protocols::l4::socket::SocketAddr as PeerAddr;
use pingora_core::protocols::l4::stream::Stream as L4Stream;
use pingora_core::protocols::{GetSocketDigest, SocketDigest};
use pingora_core::{Error, ErrorType};
use ppp::PartialResult;
use serde::Deserialize;
use std::net::{IpAddr, SocketAddr};
use std::os::unix::io::AsRawFd;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncReadExt;

/// A PROXY protocol version (`send_proxy_protocol: v1 | v2`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Version {
    /// The text header (`PROXY TCP4 ...\r\n`).
    V1,
    /// The binary header.
    V2,
}

/// Longest v1 header, CRLF included (the spec's limit).
pub const V1_MAX: usize = 107;
/// Fixed part of a v2 header: signature, version/command, family/protocol, length.
const V2_FIXED: usize = 16;
/// Most address and TLV bytes read after a v2 header's fixed part; a longer header is refused.
pub const V2_MAX_PAYLOAD: usize = 4096;
/// Longest header read at all.
const MAX_HEADER: usize = V2_FIXED + V2_MAX_PAYLOAD;
/// The v2 signature.
const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
/// Longest wait for the header.
pub const MAX_HEADER_WAIT: Duration = Duration::from_secs(5);

/// What the bytes read so far are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    /// The start of a header (or nothing yet): more bytes are needed.
    Incomplete,
    /// A whole header of `len` bytes naming `source` as the client (`None` for v2 `LOCAL`,
    /// v1 `UNKNOWN` and address families other than IPv4/IPv6: the peer is kept).
    Header {
        /// Bytes of the header; what follows belongs to the connection's protocol.
        len: usize,
        /// The client the header names.
        source: Option<SocketAddr>,
    },
    /// Not a PROXY protocol header, or one refused (too long, malformed); the reason.
    Invalid(String),
}

/// Parses the header at the start of `buf` (v1 or v2, told apart by their first bytes).
pub fn parse(buf: &[u8]) -> Parsed {
    if buf.len() >= V2_FIXED && buf.starts_with(V2_SIGNATURE) {
        let len = u16::from_be_bytes([buf[14], buf[15]]) as usize;
        if len > V2_MAX_PAYLOAD {
            return Parsed::Invalid(format!(
                "v2 header of {len} address/TLV bytes (more than {V2_MAX_PAYLOAD})"
            ));
        }
    }
    // A v1 header is parsed once its line is complete: `ppp` takes some prefixes of a valid
    // line (`... 5 ` before the destination port) for malformed headers.
    let v1 = buf.iter().zip(b"PROXY").all(|(a, b)| a == b);
    let mut line = 0;
    if v1 {
        match buf.iter().take(V1_MAX).position(|&b| b == b'\n') {
            Some(lf) if lf > 0 && buf[lf - 1] == b'\r' => line = lf + 1,
            Some(_) => return Parsed::Invalid("v1: a line feed without a carriage return".into()),
            None if buf.len() >= V1_MAX => {
                return Parsed::Invalid(format!("v1 header longer than {V1_MAX} bytes"))
            }
            None => return Parsed::Incomplete,
        }
    }
    let result = ppp::HeaderResult::parse(buf);
    if result.is_incomplete() {
        return if v1 {
            Parsed::Invalid("v1: malformed header line".into())
        } else if buf.len() >= MAX_HEADER {
            Parsed::Invalid("header too long".into())
        } else {
            Parsed::Incomplete
        };
    }
    match result {
        ppp::HeaderResult::V1(Ok(h)) if h.header.len() != line => {
            Parsed::Invalid("v1: a carriage return inside the header".into())
        }
        ppp::HeaderResult::V1(Ok(h)) => Parsed::Header {
            len: h.header.len(),
            source: match h.addresses {
                ppp::v1::Addresses::Tcp4(a) => {
                    Some(SocketAddr::new(a.source_address.into(), a.source_port))
                }
                ppp::v1::Addresses::Tcp6(a) => {
                    Some(SocketAddr::new(a.source_address.into(), a.source_port))
                }
                ppp::v1::Addresses::Unknown => None,
            },
        },
        ppp::HeaderResult::V2(Ok(h)) => {
            let proxied =
                h.command == ppp::v2::Command::Proxy && h.protocol == ppp::v2::Protocol::Stream;
            let source = match h.addresses {
                ppp::v2::Addresses::IPv4(a) if proxied => {
                    Some(SocketAddr::new(a.source_address.into(), a.source_port))
                }
                ppp::v2::Addresses::IPv6(a) if proxied => {
                    Some(SocketAddr::new(a.source_address.into(), a.source_port))
                }
                _ => None,
            };
            Parsed::Header {
                len: h.len(),
                source,
            }
        }
        ppp::HeaderResult::V1(Err(e)) => Parsed::Invalid(format!("v1: {e}")),
        ppp::HeaderResult::V2(Err(e)) => Parsed::Invalid(format!("v2: {e}")),
    }
}

/// The header announcing a TCP connection from `src` to `dst` (an IPv4 and an IPv6 address
/// are both written as IPv6, IPv4-mapped).
pub fn encode(version: Version, src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    let (src_ip, dst_ip) = match (src.ip(), dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => (IpAddr::V4(s), IpAddr::V4(d)),
        (s, d) => (IpAddr::V6(v6(s)), IpAddr::V6(v6(d))),
    };
    let (sp, dp) = (src.port(), dst.port());
    match version {
        Version::V1 => {
            let family = if src_ip.is_ipv4() { "TCP4" } else { "TCP6" };
            format!("PROXY {family} {src_ip} {dst_ip} {sp} {dp}\r\n").into_bytes()
        }
        Version::V2 => {
            let mut out = Vec::with_capacity(V2_FIXED + 36);
            out.extend_from_slice(V2_SIGNATURE);
            // Version 2, command PROXY.
            out.push(0x21);
            match (src_ip, dst_ip) {
                (IpAddr::V4(s), IpAddr::V4(d)) => {
                    // AF_INET, STREAM; 12 address bytes.
                    out.extend_from_slice(&[0x11, 0, 12]);
                    out.extend_from_slice(&s.octets());
                    out.extend_from_slice(&d.octets());
                }
                (s, d) => {
                    // AF_INET6, STREAM; 36 address bytes.
                    out.extend_from_slice(&[0x21, 0, 36]);
                    out.extend_from_slice(&v6(s).octets());
                    out.extend_from_slice(&v6(d).octets());
                }
            }
            out.extend_from_slice(&sp.to_be_bytes());
            out.extend_from_slice(&dp.to_be_bytes());
            out
        }
    }
}

fn v6(ip: IpAddr) -> std::net::Ipv6Addr {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    }
}

/// Reads the header from the start of `stream` and puts back what followed it; returns the
/// source it names. Reads at most [`MAX_HEADER`] bytes; the caller bounds the time.
pub async fn read_header(stream: &mut L4Stream) -> Result<Option<SocketAddr>, String> {
    let mut buf = vec![0u8; MAX_HEADER];
    let mut have = 0;
    loop {
        let n = stream
            .read(&mut buf[have..])
            .await
            .map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            return Err(if have == 0 {
                "closed before a header".into()
            } else {
                "closed in the header".into()
            });
        }
        have += n;
        match parse(&buf[..have]) {
            Parsed::Incomplete => continue,
            Parsed::Invalid(why) => return Err(why),
            Parsed::Header { len, source } => {
                stream.rewind(&buf[len..have]);
                return Ok(source);
            }
        }
    }
}

/// The connection filter of a listener with `proxy_protocol`: only peers in
/// `forwarded.trusted_proxies` connect; the per-IP cap waits for the header's address.
#[derive(Debug)]
pub struct TrustedPeers {
    limiter: Arc<ConnectionLimiter>,
    forwarded: Forwarded,
    log: OncePerSecond,
}

#[async_trait]
impl ConnectionFilter for TrustedPeers {
    async fn should_accept(&self, addr: Option<&SocketAddr>) -> bool {
        let trusted = addr.is_some_and(|a| self.forwarded.is_trusted(a.ip()));
        if !trusted && self.log.ready() {
            log::warn!(
                "PROXY protocol listener: connection from {} refused: not in \
                 forwarded.trusted_proxies (repeats within a second are not logged)",
                addr.map_or_else(|| "-".to_string(), |a| a.to_string())
            );
        }
        trusted
    }

    fn admit(&self, _addr: Option<&SocketAddr>) -> Result<Option<ConnectionGuard>, ()> {
        // Only `server.max_connections` now: the client is the header's, not this peer.
        self.limiter.admit(None)
    }
}

/// Reads the PROXY header of each accepted connection (before TLS), within a deadline.
struct HeaderReader {
    limiter: Arc<ConnectionLimiter>,
    wait: Duration,
    log: OncePerSecond,
}

#[async_trait]
impl PreTlsProcess for HeaderReader {
    async fn process(&self, stream: &mut L4Stream) -> pingora_core::Result<()> {
        let peer = stream
            .get_socket_digest()
            .and_then(|d| d.peer_addr().and_then(|a| a.as_inet()).copied());
        let read = tokio::time::timeout(self.wait, read_header(stream)).await;
        let source = match read {
            Ok(Ok(source)) => source,
            Ok(Err(why)) => return Err(self.refuse(peer, &why)),
            Err(_) => return Err(self.refuse(peer, &format!("no header within {:?}", self.wait))),
        };
        if let Some(src) = source {
            let digest = SocketDigest::from_raw_fd(stream.as_raw_fd());
            let _ = digest.peer_addr.set(Some(PeerAddr::Inet(src)));
            stream.set_socket_digest(digest);
        }
        let guard = stream.take_connection_guard();
        match self.limiter.admit_late(guard, source.or(peer).as_ref()) {
            Ok(Some(g)) => stream.set_connection_guard(g),
            Ok(None) => {}
            // Logged (once a second) by the limiter.
            Err(()) => {
                return Err(Error::explain(
                    ErrorType::ConnectionClosed,
                    "PROXY protocol: client over max_connections_per_ip",
                ))
            }
        }
        Ok(())
    }
}

impl HeaderReader {
    /// Logs (at most once a second) why a connection is closed; the error that closes it.
    fn refuse(&self, peer: Option<SocketAddr>, why: &str) -> Box<Error> {
        if self.log.ready() {
            log::warn!(
                "PROXY protocol: connection from {} closed: {why} (repeats within a second are \
                 not logged)",
                peer.map_or_else(|| "-".to_string(), |a| a.to_string())
            );
        }
        // `ConnectionClosed`: the listener does not log it again (see PATCHED.md, 8).
        Error::explain(
            ErrorType::ConnectionClosed,
            format!("PROXY protocol: {why}"),
        )
    }
}

/// Makes every listener of `service` expect a PROXY header from a trusted peer, counted by
/// `limiter`; the header must arrive within `header_timeout` (at most [`MAX_HEADER_WAIT`]).
pub fn install<A>(
    service: &mut pingora_core::services::listening::Service<A>,
    limiter: Arc<ConnectionLimiter>,
    forwarded: &Forwarded,
    header_timeout: Option<Duration>,
) where
    A: pingora_core::apps::ServerApp + Send + Sync + 'static,
{
    service.set_connection_filter(Arc::new(TrustedPeers {
        limiter: limiter.clone(),
        forwarded: forwarded.clone(),
        log: OncePerSecond::default(),
    }));
    let wait = header_timeout.map_or(MAX_HEADER_WAIT, |t| t.min(MAX_HEADER_WAIT));
    service
        .endpoints()
        .set_pre_tls_callback(Arc::new(HeaderReader {
            limiter,
            wait,
            log: OncePerSecond::default(),
        }));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn v1_header_then_payload() {
        let line = b"PROXY TCP4 203.0.113.7 10.0.0.1 4444 80\r\n";
        let buf = [&line[..], b"GET / HTTP/1.1\r\n"].concat();
        assert_eq!(
            parse(&buf),
            Parsed::Header {
                len: line.len(),
                source: Some(sa("203.0.113.7:4444"))
            }
        );
        let six = b"PROXY TCP6 2001:db8::7 2001:db8::1 5 443\r\n";
        assert_eq!(
            parse(six),
            Parsed::Header {
                len: six.len(),
                source: Some(sa("[2001:db8::7]:5"))
            }
        );
        assert_eq!(
            parse(b"PROXY UNKNOWN\r\n"),
            Parsed::Header {
                len: 15,
                source: None
            }
        );
    }

    #[test]
    fn every_prefix_of_a_header_is_incomplete() {
        for h in [
            encode(Version::V1, sa("1.2.3.4:5"), sa("6.7.8.9:10")),
            encode(Version::V2, sa("1.2.3.4:5"), sa("6.7.8.9:10")),
            encode(Version::V2, sa("[::1]:5"), sa("[::2]:10")),
        ] {
            for i in 0..h.len() {
                assert_eq!(parse(&h[..i]), Parsed::Incomplete, "{:?}", &h[..i]);
            }
        }
    }

    #[test]
    fn garbage_and_overlong_headers_are_invalid() {
        assert!(matches!(parse(b"GET / HTTP/1.1\r\n"), Parsed::Invalid(_)));
        assert!(matches!(parse(b"\x16\x03\x01\x02\x00"), Parsed::Invalid(_)));
        assert!(matches!(
            parse(b"PROXY TCP4 1.2.3.400 1.2.3.4 1 2\r\n"),
            Parsed::Invalid(_)
        ));
        let long = format!("PROXY TCP4 {}", "1".repeat(120));
        assert!(matches!(parse(long.as_bytes()), Parsed::Invalid(_)));
        let mut v2 = encode(Version::V2, sa("1.2.3.4:5"), sa("6.7.8.9:10"));
        v2[14..16].copy_from_slice(&5000u16.to_be_bytes());
        assert!(matches!(parse(&v2[..16]), Parsed::Invalid(_)));
    }

    #[test]
    fn v2_local_and_tlvs() {
        let mut local = V2_SIGNATURE.to_vec();
        local.extend_from_slice(&[0x20, 0x00, 0, 0]);
        assert_eq!(
            parse(&local),
            Parsed::Header {
                len: 16,
                source: None
            }
        );
        // A PROXY header with a 5-byte TLV (PP2_TYPE_AUTHORITY "a.com") after the addresses.
        let mut h = encode(Version::V2, sa("1.2.3.4:5"), sa("6.7.8.9:10"));
        h[15] = 12 + 8;
        h.extend_from_slice(&[0x02, 0, 5]);
        h.extend_from_slice(b"a.com");
        h.extend_from_slice(b"rest");
        assert_eq!(
            parse(&h),
            Parsed::Header {
                len: 16 + 20,
                source: Some(sa("1.2.3.4:5"))
            }
        );
    }

    #[test]
    fn encoded_headers_parse_back_with_ppp() {
        let v1 = encode(Version::V1, sa("[::ffff:1.2.3.4]:1"), sa("[2001:db8::1]:2"));
        assert_eq!(
            std::str::from_utf8(&v1).unwrap(),
            "PROXY TCP6 ::ffff:1.2.3.4 2001:db8::1 1 2\r\n"
        );
        let v2 = encode(Version::V2, sa("10.1.2.3:40000"), sa("10.0.0.1:443"));
        let h = ppp::v2::Header::try_from(&v2[..]).unwrap();
        assert_eq!(h.command, ppp::v2::Command::Proxy);
        assert_eq!(
            h.addresses,
            ppp::v2::Addresses::IPv4(ppp::v2::IPv4::new([10, 1, 2, 3], [10, 0, 0, 1], 40000, 443))
        );
    }
}
