//! Header handling: per-route set/add/remove rules compiled at load, and the forwarded
//! headers (`X-Forwarded-*`, `X-Real-IP`) with the trusted-proxy policy.

use crate::config::{ForwardedConf, HeaderRulesConf, Issues, XffMode};
use http::header::{HeaderName, HeaderValue};
use pingora_http::{CaseHeaderName, RequestHeader, ResponseHeader};
use std::net::IpAddr;

/// Something whose headers can be edited: Pingora's request or response header.
pub trait HeaderTarget {
    /// Replaces every value of `name` with `value`.
    fn set(&mut self, name: &HeaderName, value: &HeaderValue);
    /// Appends a value.
    fn add(&mut self, name: &HeaderName, value: &HeaderValue);
    /// Removes every value of `name`.
    fn remove(&mut self, name: &HeaderName);
}

macro_rules! header_target {
    ($t:ty) => {
        impl HeaderTarget for $t {
            fn set(&mut self, name: &HeaderName, value: &HeaderValue) {
                let _ = self.insert_header(name.clone(), value.clone());
            }
            fn add(&mut self, name: &HeaderName, value: &HeaderValue) {
                let _ = self.append_header(name.clone(), value.clone());
            }
            fn remove(&mut self, name: &HeaderName) {
                self.remove_header(name);
            }
        }
    };
}
header_target!(RequestHeader);
header_target!(ResponseHeader);

/// Compiled set/add/remove rules.
#[derive(Debug, Default, Clone)]
pub struct HeaderRules {
    set: Vec<(HeaderName, HeaderValue)>,
    add: Vec<(HeaderName, HeaderValue)>,
    remove: Vec<HeaderName>,
}

impl HeaderRules {
    /// Compiles rules, recording bad names or values under `path`.
    pub fn compile(conf: &HeaderRulesConf, path: &str, issues: &mut Issues) -> HeaderRules {
        let pairs =
            |m: &std::collections::BTreeMap<String, String>, kind: &str, issues: &mut Issues| {
                let mut out = Vec::new();
                for (k, v) in m {
                    let at = format!("{path}.{kind}.{k}");
                    match (
                        HeaderName::try_from(k.as_str()),
                        HeaderValue::try_from(v.as_str()),
                    ) {
                        (Ok(n), Ok(v)) => out.push((n, v)),
                        (Err(_), _) => issues.error(at, format!("invalid header name \"{k}\"")),
                        (_, Err(_)) => issues.error(at, format!("invalid header value \"{v}\"")),
                    }
                }
                out
            };
        let set = pairs(&conf.set, "set", issues);
        let add = pairs(&conf.add, "add", issues);
        let mut remove = Vec::new();
        for (i, k) in conf.remove.iter().enumerate() {
            match HeaderName::try_from(k.as_str()) {
                Ok(n) => remove.push(n),
                Err(_) => issues.error(
                    format!("{path}.remove[{i}]"),
                    format!("invalid header name \"{k}\""),
                ),
            }
        }
        HeaderRules { set, add, remove }
    }

    /// True when there is nothing to do.
    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.add.is_empty() && self.remove.is_empty()
    }

    /// Applies the rules: remove, then set, then add.
    pub fn apply<T: HeaderTarget>(&self, target: &mut T) {
        for n in &self.remove {
            target.remove(n);
        }
        for (n, v) in &self.set {
            target.set(n, v);
        }
        for (n, v) in &self.add {
            target.add(n, v);
        }
    }
}

/// An IP network from `trusted_proxies`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Parses `10.0.0.0/8`, `::1/128` or a plain address.
    pub fn parse(s: &str) -> Result<Cidr, String> {
        let (a, p) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = a
            .trim()
            .parse()
            .map_err(|_| format!("invalid IP network \"{s}\""))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match p {
            Some(p) => p
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("invalid prefix length in \"{s}\" (0..={max})"))?,
            None => max,
        };
        Ok(Cidr { addr, prefix })
    }

    /// Whether `ip` is inside this network (IPv4-mapped IPv6 addresses count as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = if self.prefix == 0 {
                    0
                } else {
                    u32::MAX << (32 - self.prefix)
                };
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = if self.prefix == 0 {
                    0
                } else {
                    u128::MAX << (128 - self.prefix)
                };
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

static XFF: HeaderName = HeaderName::from_static("x-forwarded-for");
static XRI: HeaderName = HeaderName::from_static("x-real-ip");
static XFP: HeaderName = HeaderName::from_static("x-forwarded-proto");
static XFH: HeaderName = HeaderName::from_static("x-forwarded-host");
static XFPORT: HeaderName = HeaderName::from_static("x-forwarded-port");

/// A header name with its wire spelling, inserted without parsing or copying the name.
fn named(name: &HeaderName, wire: &'static str) -> (HeaderName, CaseHeaderName) {
    (name.clone(), CaseHeaderName::from_static(wire))
}

/// The compiled forwarded-header policy.
#[derive(Debug, Clone)]
pub struct Forwarded {
    trusted: Vec<Cidr>,
    xff: XffMode,
    real_ip: bool,
    proto: bool,
    host: bool,
    port: bool,
}

impl Forwarded {
    /// Compiles the `forwarded:` section.
    pub fn compile(conf: &ForwardedConf, issues: &mut Issues) -> Forwarded {
        let mut trusted = Vec::new();
        for (i, s) in conf.trusted_proxies.iter().enumerate() {
            match Cidr::parse(s) {
                Ok(c) => trusted.push(c),
                Err(e) => issues.error(format!("forwarded.trusted_proxies[{i}]"), e),
            }
        }
        Forwarded {
            trusted,
            xff: conf.x_forwarded_for,
            real_ip: conf.x_real_ip,
            proto: conf.x_forwarded_proto,
            host: conf.x_forwarded_host,
            port: conf.x_forwarded_port,
        }
    }

    /// Whether `ip` is a trusted proxy.
    pub fn is_trusted(&self, ip: IpAddr) -> bool {
        self.trusted.iter().any(|c| c.contains(ip))
    }

    /// The real client address: the peer, or for a trusted peer the right-most untrusted hop of
    /// its `X-Forwarded-For` (nginx's `real_ip_recursive on`).
    pub fn client_ip(&self, peer: IpAddr, req: &RequestHeader) -> IpAddr {
        if !self.is_trusted(peer) {
            return peer;
        }
        let mut last = peer;
        for v in req.headers.get_all(&XFF).iter().rev() {
            let Ok(v) = v.to_str() else { return last };
            for hop in v.rsplit(',') {
                match hop.trim().parse::<IpAddr>() {
                    Ok(ip) if self.is_trusted(ip) => last = ip,
                    Ok(ip) => return ip,
                    Err(_) => return last,
                }
            }
        }
        last
    }

    /// Writes the forwarded headers into the upstream request.
    pub fn apply(
        &self,
        req: &mut RequestHeader,
        peer: Option<IpAddr>,
        tls: bool,
        local_port: Option<u16>,
    ) {
        // Room for every header added below in one step (not a grow per insert).
        req.reserve_headers(
            self.real_ip as usize
                + (self.xff != XffMode::Off) as usize
                + self.proto as usize
                + self.host as usize
                + self.port as usize,
        );
        let trusted = peer.is_some_and(|p| self.is_trusted(p));
        if let Some(peer) = peer {
            let mut ip_buf = [0u8; 64];
            let peer_s = fmt_ip(peer, &mut ip_buf);
            if self.real_ip {
                let real = self.client_ip(peer, req);
                let mut b = [0u8; 64];
                let real_s = fmt_ip(real, &mut b);
                let _ = req.insert_header(named(&XRI, "X-Real-IP"), real_s);
            }
            match self.xff {
                XffMode::Off => {}
                XffMode::Append if trusted && req.headers.contains_key(&XFF) => {
                    let mut joined = String::with_capacity(64);
                    for v in req.headers.get_all(&XFF) {
                        if let Ok(s) = v.to_str() {
                            if !joined.is_empty() {
                                joined.push_str(", ");
                            }
                            joined.push_str(s.trim());
                        }
                    }
                    joined.push_str(", ");
                    joined.push_str(peer_s);
                    let _ = req.insert_header(named(&XFF, "X-Forwarded-For"), joined);
                }
                _ => {
                    let _ = req.insert_header(named(&XFF, "X-Forwarded-For"), peer_s);
                }
            }
        }
        if self.proto && !(trusted && req.headers.contains_key(&XFP)) {
            let _ = req.insert_header(
                named(&XFP, "X-Forwarded-Proto"),
                HeaderValue::from_static(if tls { "https" } else { "http" }),
            );
        }
        if self.host && !(trusted && req.headers.contains_key(&XFH)) {
            if let Some(h) = req.headers.get(http::header::HOST).cloned() {
                let _ = req.insert_header(named(&XFH, "X-Forwarded-Host"), h);
            } else if let Some(a) = req.uri.authority().map(|a| a.as_str().to_owned()) {
                let _ = req.insert_header(named(&XFH, "X-Forwarded-Host"), a);
            }
        }
        if self.port && !(trusted && req.headers.contains_key(&XFPORT)) {
            if let Some(p) = local_port {
                let mut b = itoa_buf();
                let _ = req.insert_header(named(&XFPORT, "X-Forwarded-Port"), fmt_u16(p, &mut b));
            }
        }
    }
}

fn itoa_buf() -> [u8; 5] {
    [0u8; 5]
}

/// Formats a port without allocating.
fn fmt_u16(mut n: u16, buf: &mut [u8; 5]) -> &str {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    std::str::from_utf8(&buf[i..]).unwrap_or("0")
}

/// Formats an IP address into a stack buffer (IPv4-mapped IPv6 shown as IPv4).
fn fmt_ip(ip: IpAddr, buf: &mut [u8; 64]) -> &str {
    use std::io::Write;
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    };
    let mut cur = std::io::Cursor::new(&mut buf[..]);
    let _ = write!(cur, "{ip}");
    let n = cur.position() as usize;
    std::str::from_utf8(&buf[..n]).unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fwd(trusted: &[&str], mode: XffMode) -> Forwarded {
        let conf = ForwardedConf {
            trusted_proxies: trusted.iter().map(|s| s.to_string()).collect(),
            x_forwarded_for: mode,
            ..Default::default()
        };
        let mut issues = Issues::default();
        let f = Forwarded::compile(&conf, &mut issues);
        assert!(issues.errors.is_empty());
        f
    }

    fn req(xff: Option<&str>) -> RequestHeader {
        let mut r = RequestHeader::build("GET", b"/", None).unwrap();
        r.insert_header("Host", "example.com").unwrap();
        if let Some(x) = xff {
            r.insert_header("X-Forwarded-For", x).unwrap();
        }
        r
    }

    fn h<'a>(r: &'a RequestHeader, n: &str) -> Option<&'a str> {
        r.headers.get(n).map(|v| v.to_str().unwrap())
    }

    #[test]
    fn cidr_contains() {
        let c = Cidr::parse("10.0.0.0/8").unwrap();
        assert!(c.contains("10.1.2.3".parse().unwrap()));
        assert!(!c.contains("11.0.0.1".parse().unwrap()));
        assert!(Cidr::parse("::1").unwrap().contains("::1".parse().unwrap()));
        assert!(Cidr::parse("127.0.0.1")
            .unwrap()
            .contains("::ffff:127.0.0.1".parse().unwrap()));
        assert!(Cidr::parse("10.0.0.0/33").is_err());
        assert!(Cidr::parse("nope").is_err());
    }

    #[test]
    fn untrusted_client_xff_is_replaced() {
        let f = fwd(&["10.0.0.0/8"], XffMode::Append);
        let mut r = req(Some("6.6.6.6"));
        f.apply(&mut r, Some("1.2.3.4".parse().unwrap()), false, Some(8080));
        assert_eq!(h(&r, "x-forwarded-for"), Some("1.2.3.4"));
        assert_eq!(h(&r, "x-real-ip"), Some("1.2.3.4"));
        assert_eq!(h(&r, "x-forwarded-proto"), Some("http"));
        assert_eq!(h(&r, "x-forwarded-host"), Some("example.com"));
        assert_eq!(h(&r, "x-forwarded-port"), Some("8080"));
    }

    #[test]
    fn trusted_proxy_xff_is_appended_and_real_ip_found() {
        let f = fwd(&["10.0.0.0/8"], XffMode::Append);
        let mut r = req(Some("1.2.3.4, 10.0.0.9"));
        f.apply(&mut r, Some("10.0.0.1".parse().unwrap()), true, Some(443));
        assert_eq!(
            h(&r, "x-forwarded-for"),
            Some("1.2.3.4, 10.0.0.9, 10.0.0.1")
        );
        assert_eq!(h(&r, "x-real-ip"), Some("1.2.3.4"));
        assert_eq!(h(&r, "x-forwarded-proto"), Some("https"));
    }

    #[test]
    fn replace_mode_ignores_trust() {
        let f = fwd(&["10.0.0.0/8"], XffMode::Replace);
        let mut r = req(Some("1.2.3.4"));
        f.apply(&mut r, Some("10.0.0.1".parse().unwrap()), false, None);
        assert_eq!(h(&r, "x-forwarded-for"), Some("10.0.0.1"));
    }

    #[test]
    fn header_rules_apply_in_order() {
        let mut conf = HeaderRulesConf::default();
        conf.set.insert("X-A".into(), "1".into());
        conf.add.insert("X-B".into(), "2".into());
        conf.remove.push("X-C".into());
        let mut issues = Issues::default();
        let rules = HeaderRules::compile(&conf, "routes[0].request_headers", &mut issues);
        let mut r = req(None);
        r.insert_header("X-A", "0").unwrap();
        r.insert_header("X-B", "1").unwrap();
        r.insert_header("X-C", "x").unwrap();
        rules.apply(&mut r);
        assert_eq!(h(&r, "x-a"), Some("1"));
        assert_eq!(r.headers.get_all("x-b").iter().count(), 2);
        assert!(r.headers.get("x-c").is_none());

        let mut bad = HeaderRulesConf::default();
        bad.set.insert("Bad Name".into(), "1".into());
        HeaderRules::compile(&bad, "routes[1].response_headers", &mut issues);
        assert_eq!(
            issues.errors[0].path,
            "routes[1].response_headers.set.Bad Name"
        );
    }
}
