//! Built-in `ip_filter` filter: allows or refuses a request by the real client address
//! ([`RequestCtx::client_ip`]: the peer, or the address a proxy in
//! `forwarded.trusted_proxies` forwarded). A refused request gets a 403.
//!
//! ```yaml
//! filters:
//!   - name: ip_filter
//!     config:
//!       allow: [10.0.0.0/8, "2001:db8::/32", 192.0.2.7]   # CIDRs or plain addresses
//!       deny: [10.1.0.0/16]
//! ```
//!
//! The rule, unlike nginx's first-match order: an address in any `deny` network is refused;
//! otherwise, when `allow` is not empty, an address outside every `allow` network is refused;
//! everything else passes. So `deny` carves holes in `allow`, and a `deny`-only list refuses
//! those networks and passes the rest. A request without a client IP (a listener on a Unix
//! socket) is refused. IPv4-mapped IPv6 addresses (`::ffff:10.0.0.1`) count as IPv4.

use super::{Filter, Flow, RequestCtx};
use crate::proxy::headers::Cidr;
use async_trait::async_trait;
use http::header::{self, HeaderValue};
use pingora_core::Result;
use serde::Deserialize;
use std::net::IpAddr;

/// Config of the `ip_filter` filter (see the [module docs](self)).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IpFilterConfig {
    /// Networks allowed (all when empty).
    pub allow: Vec<String>,
    /// Networks refused, whatever `allow` says.
    pub deny: Vec<String>,
}

/// The `ip_filter` filter ([`Registry::with_builtins`](super::Registry::with_builtins)).
pub struct IpFilter {
    allow: Vec<Cidr>,
    deny: Vec<Cidr>,
}

impl IpFilter {
    /// Whether `ip` may pass.
    pub fn allows(&self, ip: IpAddr) -> bool {
        !self.deny.iter().any(|c| c.contains(ip))
            && (self.allow.is_empty() || self.allow.iter().any(|c| c.contains(ip)))
    }
}

fn parse_list(key: &str, list: &[String]) -> std::result::Result<Vec<Cidr>, String> {
    list.iter()
        .enumerate()
        .map(|(i, s)| Cidr::parse(s).map_err(|e| format!("{key}[{i}]: {e}")))
        .collect()
}

#[async_trait]
impl Filter for IpFilter {
    type Config = IpFilterConfig;
    type State = ();

    fn new(conf: IpFilterConfig) -> std::result::Result<Self, String> {
        if conf.allow.is_empty() && conf.deny.is_empty() {
            return Err("allow: give allow and/or deny networks".into());
        }
        Ok(IpFilter {
            allow: parse_list("allow", &conf.allow)?,
            deny: parse_list("deny", &conf.deny)?,
        })
    }

    async fn request(&self, req: &mut RequestCtx<'_>, _: &mut ()) -> Result<Flow> {
        let ip = req.client_ip();
        if ip.is_some_and(|ip| self.allows(ip)) {
            return Ok(Flow::Continue);
        }
        log::info!(
            "{}: ip_filter: client {} refused: 403",
            req.route(),
            ip.map_or_else(|| "without an IP address".to_string(), |ip| ip.to_string())
        );
        let plain = (
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        req.respond(403, &[plain], "403 forbidden\n").await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter(allow: &[&str], deny: &[&str]) -> std::result::Result<IpFilter, String> {
        IpFilter::new(IpFilterConfig {
            allow: allow.iter().map(|s| s.to_string()).collect(),
            deny: deny.iter().map(|s| s.to_string()).collect(),
        })
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn ip_filter_deny_wins_and_allow_list_closes_the_rest() {
        let f = filter(&["10.0.0.0/8", "2001:db8::/32"], &["10.1.0.0/16"]).unwrap();
        assert!(f.allows(ip("10.2.3.4")));
        assert!(f.allows(ip("::ffff:10.2.3.4")), "IPv4-mapped");
        assert!(f.allows(ip("2001:db8::1")));
        assert!(!f.allows(ip("10.1.2.3")), "deny wins over allow");
        assert!(!f.allows(ip("192.168.1.1")), "not allowed");
        assert!(!f.allows(ip("2001:db9::1")));
        let f = filter(&[], &["192.0.2.0/24"]).unwrap();
        assert!(!f.allows(ip("192.0.2.9")));
        assert!(f.allows(ip("198.51.100.1")), "deny only: the rest passes");
        let f = filter(&["0.0.0.0/0"], &[]).unwrap();
        assert!(f.allows(ip("203.0.113.1")));
        assert!(!f.allows(ip("::1")), "an IPv4 network does not hold IPv6");
    }

    #[test]
    fn ip_filter_config_errors_name_the_entry() {
        assert_eq!(
            filter(&["10.0.0.0/8", "nope"], &[]).err().unwrap(),
            "allow[1]: invalid IP network \"nope\""
        );
        assert_eq!(
            filter(&[], &["10.0.0.0/33"]).err().unwrap(),
            "deny[0]: invalid prefix length in \"10.0.0.0/33\" (0..=32)"
        );
        assert_eq!(
            filter(&[], &[]).err().unwrap(),
            "allow: give allow and/or deny networks"
        );
    }
}
