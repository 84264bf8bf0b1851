//! Header handling: per-route set/add/remove rules compiled at load, and the forwarded
//! headers (`X-Forwarded-*`, `X-Real-IP`, RFC 7239 `Forwarded`) with the trusted-proxy policy:
//! client-address headers from an untrusted peer never reach a backend, and header names with
//! `_` are dropped (nginx `underscores_in_headers off`).

use crate::config::{ForwardedConf, HeaderRulesConf, Issues, XffMode};
use http::header::{HeaderName, HeaderValue};
use pingora_http::{CaseHeaderName, RequestHeader, ResponseHeader, WireHeaders};
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
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.add.is_empty() && self.remove.is_empty()
    }

    /// Applies the rules: remove, then set, then add. Most routes have none: that check is
    /// inlined into the hooks, the rules themselves are not.
    #[inline]
    pub fn apply<T: HeaderTarget>(&self, target: &mut T) {
        if !self.is_empty() {
            self.apply_rules(target);
        }
    }

    fn apply_rules<T: HeaderTarget>(&self, target: &mut T) {
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
        let ip = crate::util::canonical_ip(ip);
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
static FORWARDED: HeaderName = HeaderName::from_static("forwarded");

/// Whether a header name has a `_`, eight bytes at a time: names are short, and `memchr`'s
/// set-up cost more than this whole scan.
#[inline]
fn has_underscore(n: &[u8]) -> bool {
    const LO: u64 = 0x0101_0101_0101_0101;
    const HI: u64 = 0x8080_8080_8080_8080;
    let mut chunks = n.chunks_exact(8);
    for c in &mut chunks {
        let mut w = [0u8; 8];
        w.copy_from_slice(c);
        // A byte of `x` is zero where the name has `_` (the classic has-zero-byte test).
        let x = u64::from_le_bytes(w) ^ (LO * u64::from(b'_'));
        if x.wrapping_sub(LO) & !x & HI != 0 {
            return true;
        }
    }
    chunks.remainder().contains(&b'_')
}

/// Whether `name` (a lower-case header name) is one a backend could take as the client's
/// address, scheme, host or port: removed from an untrusted peer's request. `_` counts as `-`
/// (CGI-style backends read `X_Real_IP` as `HTTP_X_REAL_IP`, the same as `X-Real-IP`);
/// `underscore` says whether the name has one (the caller's scan serves its own check too).
/// `X-Forwarded-For` counts when `xff` (its mode may leave it as sent).
fn is_client_address_name(name: &[u8], underscore: bool, xff: bool) -> bool {
    if underscore {
        return is_dashed_client_address_name(name, xff);
    }
    is_client_address_spelling(name, xff)
}

/// A name with `_` read with `-` in its place (rare: kept out of the common path's code).
#[cold]
#[inline(never)]
fn is_dashed_client_address_name(name: &[u8], xff: bool) -> bool {
    let mut buf = [0u8; 32];
    is_client_address_spelling(dashed(name, &mut buf), xff)
}

#[inline]
fn is_client_address_spelling(name: &[u8], xff: bool) -> bool {
    (xff && name == b"x-forwarded-for")
        || matches!(
            name,
            b"forwarded"
                | b"x-real-ip"
                | b"true-client-ip"
                | b"x-client-ip"
                | b"cf-connecting-ip"
                | b"fastly-client-ip"
                | b"x-cluster-client-ip"
                | b"x-original-forwarded-for"
                | b"x-forwarded"
                | b"client-ip"
                | b"x-forwarded-proto"
                | b"x-forwarded-host"
                | b"x-forwarded-port"
        )
}

/// [`is_client_address_name`], scanning for `_` itself.
#[cfg(test)]
fn is_client_address_header(name: &[u8], xff: bool) -> bool {
    is_client_address_name(name, name.contains(&b'_'), xff)
}

/// `name` with `_` as `-`, in `buf`. A name longer than `buf` comes back unchanged (it matches
/// none of the short names compared).
fn dashed<'a>(name: &'a [u8], buf: &'a mut [u8; 32]) -> &'a [u8] {
    if name.len() > buf.len() {
        return name;
    }
    for (d, c) in buf.iter_mut().zip(name) {
        *d = if *c == b'_' { b'-' } else { *c };
    }
    &buf[..name.len()]
}

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
    rfc7239: bool,
    allow_underscore: bool,
    /// The peer address is final (a PROXY protocol listener: the header named the client,
    /// and no HTTP header the client wrote is trusted to name another).
    peer_final: bool,
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
            rfc7239: conf.rfc7239,
            allow_underscore: conf.allow_underscore_headers,
            peer_final: false,
        }
    }

    /// This policy for a PROXY protocol listener: the address from the PROXY header (or the
    /// balancer's own, for a LOCAL / UNKNOWN header) is the client, and client-written
    /// `X-Forwarded-For` / `Forwarded` are never walked, however the address compares with
    /// `trusted_proxies` (which there names the balancers allowed to send the header).
    pub fn with_final_peer(&self) -> Forwarded {
        Forwarded {
            peer_final: true,
            ..self.clone()
        }
    }

    /// Whether `ip` is a trusted proxy.
    pub fn is_trusted(&self, ip: IpAddr) -> bool {
        self.trusted.iter().any(|c| c.contains(ip))
    }

    /// The real client address: the peer, or for a trusted peer the right-most untrusted hop of
    /// its `X-Forwarded-For` (nginx's `real_ip_recursive on`). With `rfc7239` on, a trusted
    /// peer's `Forwarded: for=` is read the same way when it sent no `X-Forwarded-For`.
    pub fn client_ip(&self, peer: IpAddr, req: &RequestHeader) -> IpAddr {
        if self.peer_final || !self.is_trusted(peer) {
            return peer;
        }
        if self.rfc7239 && !req.headers.contains_key(&XFF) {
            return self.forwarded_client_ip(peer, req);
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

    /// `client_ip` from `Forwarded` headers: the right-most `for=` that is not a trusted proxy.
    /// Walking right to left, a hop that is not an IP address (`unknown`, an obfuscated
    /// identifier, an element without `for=`, or a whole field line that does not parse) ends
    /// the walk at the trusted hop to its right, as a garbage `X-Forwarded-For` hop does.
    /// Scans left to right, without allocating.
    fn forwarded_client_ip(&self, peer: IpAddr, req: &RequestHeader) -> IpAddr {
        // The right-most hop that is not a trusted IP, and the left-most trusted IP after it.
        let mut untrusted: Option<Node> = None;
        let mut trusted_run: Option<IpAddr> = None;
        let mut feed = |n: Node| match n {
            Node::Ip(ip) if self.is_trusted(ip) => {
                trusted_run.get_or_insert(ip);
            }
            n => {
                untrusted = Some(n);
                trusted_run = None;
            }
        };
        for v in req.headers.get_all(&FORWARDED) {
            if parse_forwarded_for(v.as_bytes(), &mut feed).is_err() {
                feed(Node::Opaque);
            }
        }
        match untrusted {
            Some(Node::Ip(ip)) => ip,
            _ => trusted_run.unwrap_or(peer),
        }
    }

    /// Removes what an untrusted peer may not send upstream (the client-address headers; the
    /// `X-Forwarded-For` it sent unless `x_forwarded_for: off`) and, unless allowed, every header
    /// name with `_`. One pass over the names; allocates only when something is to be removed.
    fn strip(&self, req: &mut RequestHeader, trusted: bool) {
        let underscores = !self.allow_underscore;
        if trusted && !underscores {
            return;
        }
        let xff = self.xff != XffMode::Off;
        let doomed = |name: &HeaderName| {
            let n = name.as_str().as_bytes();
            // One scan for `_` per name, for both questions.
            let underscore = has_underscore(n);
            (underscores && underscore) || (!trusted && is_client_address_name(n, underscore, xff))
        };
        // Almost always there is nothing to remove: a first pass only asks.
        if !req.headers.keys().any(doomed) {
            return;
        }
        let names: Vec<HeaderName> = req.headers.keys().filter(|n| doomed(n)).cloned().collect();
        for name in &names {
            req.remove_header(name);
        }
    }

    /// Writes the forwarded headers into the upstream request's header map.
    pub fn apply(
        &self,
        req: &mut RequestHeader,
        peer: Option<IpAddr>,
        tls: bool,
        local_port: Option<u16>,
    ) {
        self.write(req, peer, tls, local_port, false)
    }

    /// `apply` for a request that nothing reads or edits afterwards: the headers go on the wire
    /// after the request's own, without entering its header map (pingora-http patch 5), since
    /// the map inserts were most of the cost of these headers. The same lines reach the wire.
    pub fn apply_on_wire(
        &self,
        req: &mut RequestHeader,
        peer: Option<IpAddr>,
        tls: bool,
        local_port: Option<u16>,
    ) {
        self.write(req, peer, tls, local_port, true)
    }

    fn write(
        &self,
        req: &mut RequestHeader,
        peer: Option<IpAddr>,
        tls: bool,
        local_port: Option<u16>,
        wire_only: bool,
    ) {
        if !wire_only {
            // Room for every header added below in one step (not a grow per insert).
            req.reserve_headers(
                self.real_ip as usize
                    + (self.xff != XffMode::Off) as usize
                    + self.proto as usize
                    + self.host as usize
                    + self.port as usize
                    + self.rfc7239 as usize,
            );
        }
        let trusted = !self.peer_final && peer.is_some_and(|p| self.is_trusted(p));
        self.strip(req, trusted);
        if wire_only && !trusted && self.write_reusing_lines(req, peer, tls, local_port) {
            return;
        }
        let out = if wire_only {
            Out::Wire { trusted }
        } else {
            Out::Map
        };
        self.write_headers(req, peer, tls, local_port, &out, trusted);
    }

    /// `write` on the wire for an untrusted peer's request, by copying the lines its peer's
    /// last request on this thread got when nothing they are made of changed (`LAST_BLOCKS`);
    /// else written as usual and kept for the next. False, with nothing written, for a request
    /// without a `Host` of visible ASCII (`to_str`; the RFC 7239 element would then take the
    /// target's authority) or with one over `BLOCK_MAX_HOST`.
    fn write_reusing_lines(
        &self,
        req: &mut RequestHeader,
        peer: Option<IpAddr>,
        tls: bool,
        local_port: Option<u16>,
    ) -> bool {
        let host = req.headers.get(http::header::HOST);
        let usable = |h: &&HeaderValue| h.len() <= BLOCK_MAX_HOST && h.to_str().is_ok();
        let Some(host) = host.filter(usable) else {
            return false;
        };
        let key = BlockKey {
            emits: self.emits(),
            peer,
            tls,
            local_port,
            keeps_case: req.has_case(),
        };
        let slot = block_slot(peer);
        let hit = LAST_BLOCKS.with_borrow_mut(|slots| {
            let last = &mut slots[slot];
            let hit = last.key == Some(key) && last.host == host.as_bytes();
            if !hit {
                last.key = None;
                last.host.clear();
                last.host.extend_from_slice(host.as_bytes());
            }
            hit
        });
        if hit {
            LAST_BLOCKS.with_borrow(|slots| req.append_wire_headers(&slots[slot].block));
            return true;
        }
        let from = req.wire_headers().len();
        let out = Out::Wire { trusted: false };
        self.write_headers(req, peer, tls, local_port, &out, false);
        LAST_BLOCKS.with_borrow_mut(|slots| {
            let last = &mut slots[slot];
            if last.block.copy_from(req, from) {
                last.key = Some(key);
            }
        });
        true
    }

    /// What decides the headers an untrusted peer's request gets, besides its own inputs.
    fn emits(&self) -> (XffMode, [bool; 5]) {
        let flags = [self.real_ip, self.proto, self.host, self.port, self.rfc7239];
        (self.xff, flags)
    }

    /// The headers themselves, after `strip`, into `out`.
    fn write_headers(
        &self,
        req: &mut RequestHeader,
        peer: Option<IpAddr>,
        tls: bool,
        local_port: Option<u16>,
        out: &Out,
        trusted: bool,
    ) {
        if let Some(peer) = peer {
            let peer_v = ip_value(peer);
            if self.real_ip {
                let real = self.client_ip(peer, req);
                let real_v = if real == peer {
                    peer_v.clone()
                } else {
                    ip_value(real)
                };
                // Spelled in canonical Title-Case, as every added header is: Pingora then keeps
                // no case entry for the request (vendor/pingora-http patch 15). Names are
                // case-insensitive (RFC 9110 5.1); HAProxy sends them all in lower case.
                out.set(req, &XRI, "X-Real-Ip", real_v);
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
                    joined.push_str(peer_v.to_str().unwrap_or_default());
                    if let Ok(v) = HeaderValue::try_from(joined) {
                        out.set(req, &XFF, "X-Forwarded-For", v);
                    }
                }
                _ => out.set(req, &XFF, "X-Forwarded-For", peer_v),
            }
        }
        if self.rfc7239 {
            // An untrusted peer's `Forwarded` is gone (strip): this replaces it; a trusted
            // peer's is appended to.
            let mut v = String::with_capacity(96);
            for old in req.headers.get_all(&FORWARDED) {
                if let Ok(s) = old.to_str() {
                    let s = s.trim();
                    if !s.is_empty() {
                        v.push_str(s);
                        v.push_str(", ");
                    }
                }
            }
            let host = req
                .headers
                .get(http::header::HOST)
                .and_then(|h| h.to_str().ok())
                .or_else(|| req.uri.authority().map(|a| a.as_str()));
            forwarded_element(&mut v, peer, tls, host);
            if let Ok(v) = HeaderValue::try_from(v) {
                out.set(req, &FORWARDED, "Forwarded", v);
            }
        }
        if self.proto && !(trusted && req.headers.contains_key(&XFP)) {
            let v = HeaderValue::from_static(if tls { "https" } else { "http" });
            out.set(req, &XFP, "X-Forwarded-Proto", v);
        }
        if self.host && !(trusted && req.headers.contains_key(&XFH)) {
            let host = req.headers.get(http::header::HOST).cloned().or_else(|| {
                let a = req.uri.authority()?;
                HeaderValue::from_str(a.as_str()).ok()
            });
            if let Some(h) = host {
                out.set(req, &XFH, "X-Forwarded-Host", h);
            }
        }
        if self.port && !(trusted && req.headers.contains_key(&XFPORT)) {
            if let Some(p) = local_port {
                out.set(req, &XFPORT, "X-Forwarded-Port", port_value(p));
            }
        }
    }
}

/// Where `Forwarded::write` puts a header.
enum Out {
    /// The request's map.
    Map,
    /// The request's wire-only lines (pingora-http patch 5), replacing a trusted peer's own.
    Wire { trusted: bool },
}

impl Out {
    /// Replaces every value of `name` with `v`, spelled `spelled` (its canonical Title-Case,
    /// which is how Pingora writes a name without a case entry: the same on both paths).
    fn set(
        &self,
        req: &mut RequestHeader,
        name: &HeaderName,
        spelled: &'static str,
        v: HeaderValue,
    ) {
        debug_assert!(
            spelled.eq_ignore_ascii_case(name.as_str()),
            "{spelled} is not {name}"
        );
        match self {
            Out::Map => {
                let _ = req.insert_header(named(name, spelled), v);
            }
            Out::Wire { trusted } => {
                // An untrusted peer's header of that name is gone already (`strip`); a trusted
                // peer's is replaced, as `insert_header` replaces it.
                if *trusted {
                    req.remove_header(name);
                }
                req.append_wire_header(name, &v);
            }
        }
    }
}

/// What the forwarded headers of an untrusted peer's request are made of, Host aside: the
/// policy's switches, the peer, the scheme, the listener port and the request's spelling mode.
#[derive(Clone, Copy, PartialEq, Eq)]
struct BlockKey {
    emits: (XffMode, [bool; 5]),
    peer: Option<IpAddr>,
    tls: bool,
    local_port: Option<u16>,
    keeps_case: bool,
}

/// The forwarded-header lines last written on this thread for an untrusted peer of one slot,
/// with what made them: a keep-alive connection's requests, and most of a busy client's, get
/// the same lines, copied in one piece instead of written header by header.
struct LastBlock {
    key: Option<BlockKey>,
    host: Vec<u8>,
    block: WireHeaders,
}

/// Lines kept per thread, a peer's in the slot its address picks: the requests of this many
/// clients interleaved on a thread mostly still find their own.
const BLOCK_SLOTS: usize = 64;

/// The longest `Host` whose lines are kept (a DNS name and a port fit): what the slots hold is
/// bounded whatever clients send.
const BLOCK_MAX_HOST: usize = 300;

thread_local! {
    static LAST_BLOCKS: std::cell::RefCell<[LastBlock; BLOCK_SLOTS]> = const {
        std::cell::RefCell::new(
            [const { LastBlock { key: None, host: Vec::new(), block: WireHeaders::new(true) } };
                BLOCK_SLOTS],
        )
    };
}

/// The slot of `peer`'s lines (Fibonacci hashing of its address).
fn block_slot(peer: Option<IpAddr>) -> usize {
    let x = match peer {
        None => 0,
        Some(IpAddr::V4(a)) => u64::from(u32::from(a)),
        Some(IpAddr::V6(a)) => {
            let v = u128::from(a);
            (v as u64) ^ ((v >> 64) as u64)
        }
    };
    let bits = BLOCK_SLOTS.trailing_zeros();
    (x.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - bits)) as usize
}

/// Appends one RFC 7239 element, `for=<peer>;proto=<http|https>[;host=<host>]`: an IPv6
/// address quoted and bracketed, `for=unknown` without a peer address, the host as a token or
/// a quoted string (left out when empty).
fn forwarded_element(out: &mut String, peer: Option<IpAddr>, tls: bool, host: Option<&str>) {
    let mut b = [0u8; 64];
    match peer.map(|p| (p, fmt_ip(p, &mut b))) {
        Some((p, s)) if p.is_ipv6() && s.contains(':') => {
            out.push_str("for=\"[");
            out.push_str(s);
            out.push_str("]\"");
        }
        Some((_, s)) => {
            out.push_str("for=");
            out.push_str(s);
        }
        None => out.push_str("for=unknown"),
    }
    out.push_str(if tls { ";proto=https" } else { ";proto=http" });
    if let Some(h) = host.filter(|h| !h.is_empty()) {
        out.push_str(";host=");
        if h.bytes().all(is_tchar) {
            out.push_str(h);
        } else {
            out.push('"');
            for c in h.chars() {
                if c == '"' || c == '\\' {
                    out.push('\\');
                }
                out.push(c);
            }
            out.push('"');
        }
    }
}

/// RFC 9110 `tchar`.
fn is_tchar(c: u8) -> bool {
    c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&c)
}

/// The `for=` node of one `Forwarded` element, as far as the client address goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Node {
    /// An IP address (any port dropped).
    Ip(IpAddr),
    /// `unknown`, an obfuscated identifier (`_hidden`), no `for=`, or not an address.
    Opaque,
}

/// Parses one `Forwarded` field line (RFC 7239: `1#forwarded-element`, each element
/// `[pair] *(";" [pair])`, a pair `token "=" (token / quoted-string)`), calling `f` with each
/// element's `for=` node, left to right. Lenient only in accepting whitespace around `;`.
/// `Err` when the line does not parse (an unterminated quote, a bare word, `for` twice in one
/// element, a control character...): the caller then counts the whole line as one opaque hop,
/// whatever was reported before, so text that a client sent ahead of a trusted proxy's element
/// on the same line (an open quote swallowing that element, say) cannot pass for a hop.
/// Never panics; linear in the input.
fn parse_forwarded_for(s: &[u8], f: &mut impl FnMut(Node)) -> Result<(), ()> {
    let ows = |i: &mut usize| {
        while *i < s.len() && (s[*i] == b' ' || s[*i] == b'\t') {
            *i += 1;
        }
    };
    let mut i = 0;
    loop {
        // Empty list elements (", ,") are allowed.
        ows(&mut i);
        if i == s.len() {
            return Ok(());
        }
        if s[i] == b',' {
            i += 1;
            continue;
        }
        let mut node: Option<Node> = None;
        loop {
            ows(&mut i);
            if i == s.len() || s[i] == b',' {
                break;
            }
            if s[i] == b';' {
                i += 1;
                continue;
            }
            let start = i;
            while i < s.len() && is_tchar(s[i]) {
                i += 1;
            }
            let name = &s[start..i];
            if name.is_empty() || i == s.len() || s[i] != b'=' {
                return Err(());
            }
            i += 1;
            let (value, escaped) = if i < s.len() && s[i] == b'"' {
                i += 1;
                let start = i;
                let mut escaped = false;
                loop {
                    match s.get(i) {
                        None => return Err(()),
                        Some(b'"') => break,
                        Some(b'\\') => {
                            match s.get(i + 1) {
                                Some(&c) if c == b'\t' || (c >= 0x20 && c != 0x7f) => {}
                                _ => return Err(()),
                            }
                            escaped = true;
                            i += 2;
                        }
                        Some(&c) if c == b'\t' || (c >= 0x20 && c != 0x7f) => i += 1,
                        Some(_) => return Err(()),
                    }
                }
                let v = &s[start..i];
                i += 1;
                (v, escaped)
            } else {
                let start = i;
                while i < s.len() && is_tchar(s[i]) {
                    i += 1;
                }
                if i == start {
                    return Err(());
                }
                (&s[start..i], false)
            };
            // A pair ends at ";", "," or the end (whitespace before ";" or "," tolerated).
            ows(&mut i);
            if i < s.len() && s[i] != b';' && s[i] != b',' {
                return Err(());
            }
            if name.eq_ignore_ascii_case(b"for") {
                if node.is_some() {
                    return Err(());
                }
                node = Some(if escaped {
                    Node::Opaque
                } else {
                    parse_node(value)
                });
            }
        }
        f(node.unwrap_or(Node::Opaque));
    }
}

/// A `for=` value: `192.0.2.1`, `192.0.2.1:8080`, `[2001:db8::1]`, `[2001:db8::1]:8080`
/// (a bare IPv6 address is accepted too); `unknown`, `_obfuscated` and anything else is opaque.
fn parse_node(v: &[u8]) -> Node {
    let Ok(v) = std::str::from_utf8(v) else {
        return Node::Opaque;
    };
    // RFC 7239 node-port: 5 digits or an obfuscated `_port`.
    let port_ok = |p: &str| {
        (!p.is_empty() && p.len() <= 5 && p.bytes().all(|c| c.is_ascii_digit()))
            || (p.len() > 1 && p.starts_with('_'))
    };
    let ip = if let Some(rest) = v.strip_prefix('[') {
        rest.split_once(']')
            .filter(|(_, rest)| rest.is_empty() || rest.strip_prefix(':').is_some_and(port_ok))
            .and_then(|(a, _)| a.parse::<std::net::Ipv6Addr>().ok())
            .map(IpAddr::V6)
    } else if let Ok(ip) = v.parse::<IpAddr>() {
        Some(ip)
    } else {
        v.split_once(':')
            .filter(|(_, port)| port_ok(port))
            .and_then(|(a, _)| a.parse::<std::net::Ipv4Addr>().ok())
            .map(IpAddr::V4)
    };
    ip.map_or(Node::Opaque, Node::Ip)
}

/// The header values of the last peer address and listener port written on this thread: the
/// requests of a keep-alive connection, and most of a busy client's, share them (a reference
/// count per request instead of formatting and copying the value).
struct LastValues {
    ip: Option<(IpAddr, HeaderValue)>,
    port: Option<(u16, HeaderValue)>,
}

thread_local! {
    static LAST_VALUES: std::cell::RefCell<LastValues> =
        const { std::cell::RefCell::new(LastValues { ip: None, port: None }) };
}

/// The value cached in `slot` for `key`, or `make(key)`, cached in its place.
fn cached<K: PartialEq + Copy>(
    slot: &mut Option<(K, HeaderValue)>,
    key: K,
    make: impl FnOnce(K) -> HeaderValue,
) -> HeaderValue {
    match slot {
        Some((cached, v)) if *cached == key => v.clone(),
        _ => slot.insert((key, make(key))).1.clone(),
    }
}

/// `ip` as a header value (IPv4-mapped IPv6 shown as IPv4), from the per-thread cache.
fn ip_value(ip: IpAddr) -> HeaderValue {
    LAST_VALUES.with_borrow_mut(|last| {
        cached(&mut last.ip, ip, |ip| {
            HeaderValue::from_str(fmt_ip(ip, &mut [0u8; 64]))
                .unwrap_or_else(|_| HeaderValue::from_static(""))
        })
    })
}

/// `port` as a header value, from the per-thread cache.
fn port_value(port: u16) -> HeaderValue {
    LAST_VALUES.with_borrow_mut(|last| {
        cached(&mut last.port, port, |port| {
            HeaderValue::from_str(fmt_u16(port, &mut [0u8; 5]))
                .unwrap_or_else(|_| HeaderValue::from_static("0"))
        })
    })
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
    let ip = crate::util::canonical_ip(ip);
    // IPv4 by hand: `core::fmt` was most of this function's cost, twice per request.
    if let IpAddr::V4(v4) = ip {
        let mut n = 0;
        for (i, o) in v4.octets().into_iter().enumerate() {
            if i > 0 {
                buf[n] = b'.';
                n += 1;
            }
            if o >= 100 {
                buf[n] = b'0' + o / 100;
                n += 1;
            }
            if o >= 10 {
                buf[n] = b'0' + (o / 10) % 10;
                n += 1;
            }
            buf[n] = b'0' + o % 10;
            n += 1;
        }
        return std::str::from_utf8(&buf[..n]).unwrap_or("");
    }
    let mut cur = std::io::Cursor::new(&mut buf[..]);
    let _ = write!(cur, "{ip}");
    let n = cur.position() as usize;
    std::str::from_utf8(&buf[..n]).unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One request through `reused_lines_follow_every_input`: policy, peer, TLS, port, Host,
    /// whether the header keeps its case.
    type Step<'a> = (&'a Forwarded, &'a str, bool, u16, &'a [u8], bool);

    #[test]
    fn underscore_found_at_every_position_and_length() {
        for len in 0..40 {
            assert!(!has_underscore(&vec![b'a'; len]), "{len}");
            // `^` (0x5e, next to `_`) and 0xdf (`_` with the top bit set) are not `_`.
            assert!(!has_underscore(&vec![0x5e; len]));
            assert!(!has_underscore(&vec![0xdf; len]));
            for at in 0..len {
                let mut n = vec![b'x'; len];
                n[at] = b'_';
                assert!(has_underscore(&n), "{len} {at}");
            }
        }
    }

    #[test]
    fn cached_values_follow_the_address_and_port() {
        let a: IpAddr = "192.0.2.7".parse().unwrap();
        let b: IpAddr = "2001:db8::1".parse().unwrap();
        let mapped: IpAddr = "::ffff:198.51.100.2".parse().unwrap();
        for _ in 0..2 {
            assert_eq!(ip_value(a), "192.0.2.7");
            assert_eq!(ip_value(a), "192.0.2.7");
            assert_eq!(ip_value(b), "2001:db8::1");
            assert_eq!(ip_value(mapped), "198.51.100.2");
            assert_eq!(port_value(443), "443");
            assert_eq!(port_value(8080), "8080");
            assert_eq!(port_value(8080), "8080");
        }
    }

    #[test]
    fn fmt_ip_matches_display() {
        let cases = [
            "0.0.0.0",
            "255.255.255.255",
            "10.0.0.1",
            "192.168.100.9",
            "1.20.255.99",
            "::1",
            "2001:db8::7",
        ];
        for c in cases {
            let ip: IpAddr = c.parse().unwrap();
            let mut b = [0u8; 64];
            assert_eq!(fmt_ip(ip, &mut b), ip.to_string(), "{c}");
        }
        // IPv4-mapped IPv6 is shown as IPv4.
        let mapped: IpAddr = "::ffff:172.16.5.40".parse().unwrap();
        assert_eq!(fmt_ip(mapped, &mut [0u8; 64]), "172.16.5.40");
    }

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

    /// `Forwarded::apply` into the header map; also applied wire-only to a copy, which must
    /// put the same header lines on the wire (in another order where a trusted peer's header
    /// was replaced: the map keeps its place, the wire-only line comes last).
    fn apply(
        f: &Forwarded,
        r: &mut RequestHeader,
        peer: Option<IpAddr>,
        tls: bool,
        port: Option<u16>,
    ) {
        let mut wire_only = r.clone();
        f.apply_on_wire(&mut wire_only, peer, tls, port);
        f.apply(r, peer, tls, port);
        let lines = |r: &RequestHeader| {
            let mut buf = Vec::new();
            r.header_to_h1_wire(&mut buf);
            let mut lines: Vec<String> = String::from_utf8_lossy(&buf)
                .split_terminator("\r\n")
                .map(str::to_owned)
                .collect();
            lines.sort();
            lines
        };
        assert_eq!(lines(&wire_only), lines(r), "wire-only and map differ");
    }

    /// A peer address.
    fn peer(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
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

    /// The lines an untrusted peer's request gets are copied from the last request's when
    /// nothing they are made of changed: each change of peer, scheme, port, Host, spelling mode
    /// or policy, in turn, must show in the next request's lines (compared by `apply` with the
    /// map path, which writes every header afresh).
    #[test]
    fn reused_lines_follow_every_input() {
        let plain = fwd(&[], XffMode::Append);
        let rfc = fwd_conf(ForwardedConf {
            rfc7239: true,
            x_real_ip: false,
            ..conf(&[])
        });
        let with_host = |host: &[u8], keeps_case: bool| {
            let mut r = RequestHeader::build("GET", b"/", None).unwrap();
            if !keeps_case {
                r = RequestHeader::from(r.as_owned_parts());
            }
            r.insert_header("Host", host).unwrap();
            r
        };
        let steps: [Step; 10] = [
            (&plain, "192.0.2.1", false, 80, b"a.example", true),
            (&plain, "192.0.2.1", false, 80, b"a.example", true),
            (&plain, "192.0.2.2", false, 80, b"a.example", true),
            (&plain, "192.0.2.2", true, 80, b"a.example", true),
            (&plain, "192.0.2.2", true, 443, b"a.example", true),
            (&plain, "192.0.2.2", true, 443, b"b.example", true),
            (&plain, "192.0.2.2", true, 443, b"b.example", false),
            (&rfc, "192.0.2.2", true, 443, b"b.example", false),
            (&rfc, "192.0.2.2", true, 443, b"caf\xe9.example", false),
            (&plain, "192.0.2.2", true, 443, b"b.example", false),
        ];
        // Then two peers interleaved, each with its own Host, and a third in the first one's
        // slot, taking it over.
        let other = (1..=u8::MAX)
            .map(|i| format!("10.0.0.{i}"))
            .find(|ip| block_slot(peer(ip)) == block_slot(peer("192.0.2.2")))
            .expect("a colliding address");
        assert_ne!(
            block_slot(peer("198.51.100.7")),
            block_slot(peer("192.0.2.2"))
        );
        let interleaved: [Step; 6] = [
            (&plain, "198.51.100.7", true, 443, b"a.example", false),
            (&plain, "192.0.2.2", true, 443, b"b.example", false),
            (&plain, "198.51.100.7", true, 443, b"a.example", false),
            (&plain, &other, true, 443, b"c.example", false),
            (&plain, "192.0.2.2", true, 443, b"b.example", false),
            (&plain, &other, true, 443, b"c.example", false),
        ];
        let steps = steps.into_iter().chain(interleaved);
        for (i, (f, ip, tls, port, host, keeps_case)) in steps.enumerate() {
            let mut r = with_host(host, keeps_case);
            let mut wire_only = r.clone();
            f.apply_on_wire(&mut wire_only, peer(ip), tls, Some(port));
            apply(f, &mut r, peer(ip), tls, Some(port));
            let wire = String::from_utf8_lossy(wire_only.wire_headers()).into_owned();
            let spelled = |n: &str| {
                if keeps_case {
                    n.to_owned()
                } else {
                    n.to_lowercase()
                }
            };
            assert!(
                wire.contains(&format!("{}: {ip}\r\n", spelled("X-Forwarded-For"))),
                "{i}: {wire}"
            );
            let port_line = format!("{}: {port}\r\n", spelled("X-Forwarded-Port"));
            assert!(wire.contains(&port_line), "{i}: {wire}");
            assert_eq!(wire.contains("https"), tls, "{i}: {wire}");
            let host = String::from_utf8_lossy(host);
            assert_eq!(
                wire.contains(&format!("host={host}")),
                i == 7,
                "{i}: {wire}"
            );
        }
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
        apply(&f, &mut r, peer("1.2.3.4"), false, Some(8080));
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
        apply(&f, &mut r, peer("10.0.0.1"), true, Some(443));
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
        apply(&f, &mut r, peer("10.0.0.1"), false, None);
        assert_eq!(h(&r, "x-forwarded-for"), Some("10.0.0.1"));
    }

    fn fwd_conf(conf: ForwardedConf) -> Forwarded {
        let mut issues = Issues::default();
        let f = Forwarded::compile(&conf, &mut issues);
        assert!(issues.errors.is_empty());
        f
    }

    fn conf(trusted: &[&str]) -> ForwardedConf {
        ForwardedConf {
            trusted_proxies: trusted.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    /// Every client-address header a backend might believe, plus underscore spellings.
    const SPOOFED: &[(&str, &str)] = &[
        ("Forwarded", "for=6.6.6.6;proto=https"),
        ("X-Forwarded-For", "6.6.6.6"),
        ("X-Real-IP", "6.6.6.6"),
        ("True-Client-IP", "6.6.6.6"),
        ("X-Client-IP", "6.6.6.6"),
        ("CF-Connecting-IP", "6.6.6.6"),
        ("Fastly-Client-IP", "6.6.6.6"),
        ("X-Cluster-Client-IP", "6.6.6.6"),
        ("X-Original-Forwarded-For", "6.6.6.6"),
        ("X-Forwarded", "for=6.6.6.6"),
        ("Client-IP", "6.6.6.6"),
        ("X-Forwarded-Proto", "https"),
        ("X-Forwarded-Host", "evil.test"),
        ("X-Forwarded-Port", "1"),
        ("X_Forwarded_For", "6.6.6.6"),
        ("X_Real_IP", "6.6.6.6"),
    ];

    fn spoofed_req() -> RequestHeader {
        let mut r = req(None);
        for (k, v) in SPOOFED {
            r.append_header(k.to_string(), *v).unwrap();
        }
        r.insert_header("X-App", "kept").unwrap();
        r.insert_header("X_App_Thing", "u").unwrap();
        r
    }

    fn none_of_these_are_6666(r: &RequestHeader) {
        for (name, v) in r.headers.iter() {
            let v = v.to_str().unwrap();
            assert!(
                !v.contains("6.6.6.6") && !v.contains("evil.test"),
                "{name}: {v} reached the upstream request"
            );
        }
    }

    #[test]
    fn untrusted_peer_client_address_headers_are_removed_or_rewritten() {
        let f = fwd_conf(conf(&["10.0.0.0/8"]));
        let mut r = spoofed_req();
        apply(&f, &mut r, peer("1.2.3.4"), false, Some(8080));
        none_of_these_are_6666(&r);
        for gone in [
            "forwarded",
            "true-client-ip",
            "x-client-ip",
            "cf-connecting-ip",
            "fastly-client-ip",
            "x-cluster-client-ip",
            "x-original-forwarded-for",
            "x-forwarded",
            "client-ip",
            "x_forwarded_for",
            "x_real_ip",
            "x_app_thing",
        ] {
            assert!(r.headers.get(gone).is_none(), "{gone} passed");
        }
        assert_eq!(h(&r, "x-forwarded-for"), Some("1.2.3.4"));
        assert_eq!(h(&r, "x-real-ip"), Some("1.2.3.4"));
        assert_eq!(h(&r, "x-forwarded-proto"), Some("http"));
        assert_eq!(h(&r, "x-forwarded-host"), Some("example.com"));
        assert_eq!(h(&r, "x-forwarded-port"), Some("8080"));
        assert_eq!(h(&r, "x-app"), Some("kept"));
        // The wire-case map is kept in step with the header map.
        let mut wire = Vec::new();
        r.header_to_h1_wire(&mut wire);
        let wire = String::from_utf8(wire).unwrap();
        assert!(!wire.contains("6.6.6.6") && !wire.contains('_'), "{wire}");
    }

    #[test]
    fn untrusted_peer_with_the_headers_turned_off_gets_none_of_them() {
        let f = fwd_conf(ForwardedConf {
            x_real_ip: false,
            x_forwarded_proto: false,
            x_forwarded_host: false,
            x_forwarded_port: false,
            ..conf(&[])
        });
        let mut r = spoofed_req();
        apply(&f, &mut r, peer("1.2.3.4"), true, Some(443));
        none_of_these_are_6666(&r);
        for gone in [
            "x-real-ip",
            "x-forwarded-proto",
            "x-forwarded-host",
            "x-forwarded-port",
        ] {
            assert!(r.headers.get(gone).is_none(), "{gone} passed");
        }
        assert_eq!(h(&r, "x-forwarded-for"), Some("1.2.3.4"));
        // No peer address at all (not an inet socket): untrusted.
        let mut r = spoofed_req();
        apply(&f, &mut r, None, false, None);
        none_of_these_are_6666(&r);
    }

    #[test]
    fn xff_off_keeps_its_documented_meaning() {
        let f = fwd(&[], XffMode::Off);
        let mut r = spoofed_req();
        apply(&f, &mut r, peer("1.2.3.4"), false, None);
        assert_eq!(h(&r, "x-forwarded-for"), Some("6.6.6.6"), "left as sent");
        assert!(r.headers.get("x_forwarded_for").is_none());
        assert!(r.headers.get("true-client-ip").is_none());
        assert_eq!(h(&r, "x-real-ip"), Some("1.2.3.4"));
    }

    #[test]
    fn trusted_peer_headers_pass_but_underscore_names_do_not() {
        let f = fwd_conf(ForwardedConf {
            x_real_ip: false,
            ..conf(&["10.0.0.0/8"])
        });
        let mut r = spoofed_req();
        apply(&f, &mut r, peer("10.0.0.1"), false, None);
        for (k, v) in SPOOFED.iter().filter(|(k, _)| !k.contains('_')) {
            let k = k.to_ascii_lowercase();
            if k == "x-forwarded-for" {
                assert_eq!(h(&r, &k), Some("6.6.6.6, 10.0.0.1"));
            } else {
                assert_eq!(h(&r, &k), Some(*v), "{k}");
            }
        }
        for gone in ["x_forwarded_for", "x_real_ip", "x_app_thing"] {
            assert!(r.headers.get(gone).is_none(), "{gone} passed");
        }
    }

    #[test]
    fn allow_underscore_headers_lets_them_pass_but_not_spoofed_addresses() {
        let f = fwd_conf(ForwardedConf {
            allow_underscore_headers: true,
            ..conf(&["10.0.0.0/8"])
        });
        let mut r = spoofed_req();
        apply(&f, &mut r, peer("1.2.3.4"), false, None);
        assert_eq!(h(&r, "x_app_thing"), Some("u"));
        assert!(r.headers.get("x_forwarded_for").is_none(), "untrusted");
        assert!(r.headers.get("x_real_ip").is_none(), "untrusted");
        let mut r = spoofed_req();
        apply(&f, &mut r, peer("10.0.0.1"), false, None);
        assert_eq!(h(&r, "x_app_thing"), Some("u"));
        assert_eq!(h(&r, "x_forwarded_for"), Some("6.6.6.6"), "trusted");
        assert_eq!(h(&r, "x_real_ip"), Some("6.6.6.6"), "trusted");
    }

    #[test]
    fn client_address_names_are_matched_exactly() {
        assert!(is_client_address_header(b"x_real_ip", false));
        assert!(is_client_address_header(b"x-original-forwarded-for", false));
        assert!(is_client_address_header(b"x_original_forwarded_for", false));
        assert!(!is_client_address_header(b"x-real-ip-extra", true));
        assert!(!is_client_address_header(b"x-forwarded-for", false));
        assert!(is_client_address_header(b"x-forwarded-for", true));
        assert!(is_client_address_header(b"x_forwarded_for", true));
        assert!(!is_client_address_header(&[b'_'; 40], true));
    }

    fn rfc(trusted: &[&str]) -> Forwarded {
        fwd_conf(ForwardedConf {
            rfc7239: true,
            ..conf(trusted)
        })
    }

    #[test]
    fn rfc7239_forwarded_is_replaced_for_untrusted_and_appended_for_trusted() {
        let f = rfc(&["10.0.0.0/8"]);
        let mut r = spoofed_req();
        apply(&f, &mut r, peer("1.2.3.4"), true, None);
        assert_eq!(
            h(&r, "forwarded"),
            Some("for=1.2.3.4;proto=https;host=example.com")
        );
        let mut r = req(None);
        r.append_header("Forwarded", "for=192.0.2.1").unwrap();
        r.append_header("Forwarded", "for=10.0.0.9;proto=https")
            .unwrap();
        apply(&f, &mut r, peer("10.0.0.1"), false, None);
        assert_eq!(
            h(&r, "forwarded"),
            Some(
                "for=192.0.2.1, for=10.0.0.9;proto=https, for=10.0.0.1;proto=http;host=example.com"
            )
        );
        assert_eq!(h(&r, "x-real-ip"), Some("192.0.2.1"), "read from Forwarded");
    }

    #[test]
    fn rfc7239_element_formats() {
        let el = |peer: Option<&str>, tls, host| {
            let mut s = String::new();
            forwarded_element(&mut s, peer.map(|p| p.parse().unwrap()), tls, host);
            s
        };
        assert_eq!(
            el(Some("2001:db8::1"), false, Some("h.test")),
            "for=\"[2001:db8::1]\";proto=http;host=h.test"
        );
        assert_eq!(
            el(Some("::ffff:192.0.2.7"), true, None),
            "for=192.0.2.7;proto=https"
        );
        assert_eq!(
            el(None, false, Some("h.test:8080")),
            "for=unknown;proto=http;host=\"h.test:8080\""
        );
        assert_eq!(
            el(Some("192.0.2.7"), false, Some("a\"b\\c")),
            "for=192.0.2.7;proto=http;host=\"a\\\"b\\\\c\""
        );
        assert_eq!(
            el(Some("192.0.2.7"), false, Some("")),
            "for=192.0.2.7;proto=http"
        );
    }

    fn nodes(s: &str) -> Result<Vec<Node>, ()> {
        let mut v = Vec::new();
        parse_forwarded_for(s.as_bytes(), &mut |n| v.push(n)).map(|_| v)
    }

    fn ip(s: &str) -> Node {
        Node::Ip(s.parse().unwrap())
    }

    #[test]
    fn forwarded_parser_rfc7239_examples() {
        use Node::Opaque;
        assert_eq!(nodes("for=\"_gazonk\""), Ok(vec![Opaque]));
        assert_eq!(
            nodes("For=\"[2001:db8:cafe::17]:4711\""),
            Ok(vec![ip("2001:db8:cafe::17")])
        );
        assert_eq!(
            nodes("for=192.0.2.60;proto=http;by=203.0.113.43"),
            Ok(vec![ip("192.0.2.60")])
        );
        assert_eq!(
            nodes("for=192.0.2.43, for=198.51.100.17"),
            Ok(vec![ip("192.0.2.43"), ip("198.51.100.17")])
        );
        assert_eq!(
            nodes("for=192.0.2.43,for=\"[2001:db8:cafe::17]\",for=unknown"),
            Ok(vec![ip("192.0.2.43"), ip("2001:db8:cafe::17"), Opaque])
        );
        assert_eq!(
            nodes("for=\"192.0.2.43:47011\""),
            Ok(vec![ip("192.0.2.43")])
        );
        assert_eq!(
            nodes("for=192.0.2.43:_p1"),
            Err(()),
            "':' is not a token char"
        );
        assert_eq!(nodes("for=\"192.0.2.43:_p1\""), Ok(vec![ip("192.0.2.43")]));
        assert_eq!(nodes("for=\"[::1]:99999999\""), Ok(vec![Opaque]));
        assert_eq!(nodes("for=\"[::1\""), Ok(vec![Opaque]));
        assert_eq!(nodes("for=\"1.2.3.4:\""), Ok(vec![Opaque]));
        assert_eq!(nodes("for=\"2001:db8::1\""), Ok(vec![ip("2001:db8::1")]));
        assert_eq!(
            nodes("for=\"1.2.3\\.4\""),
            Ok(vec![Opaque]),
            "escapes: opaque"
        );
        assert_eq!(
            nodes("proto=https;host=\"a,b\""),
            Ok(vec![Opaque]),
            "no for="
        );
        assert_eq!(
            nodes(" , for=1.2.3.4 ; proto=http ,, "),
            Ok(vec![ip("1.2.3.4")])
        );
        assert_eq!(nodes(""), Ok(vec![]));
        for bad in [
            "for=\"1.2.3.4",
            "for=1.2.3.4 x",
            "for=1.2.3.4;for=5.6.7.8",
            "garbage",
            "for=",
            "=x",
            "for = 1.2.3.4",
            "for=\"a\"b",
            "for=[::1]",
            "for=\"a\\",
            "for=\"a\u{1}\"",
            "for=\"x\"\"",
        ] {
            assert_eq!(nodes(bad), Err(()), "{bad:?}");
        }
    }

    fn with_forwarded(lines: &[&str], xff: Option<&str>) -> RequestHeader {
        let mut r = req(xff);
        for l in lines {
            r.append_header("Forwarded", *l).unwrap();
        }
        r
    }

    #[test]
    fn client_ip_from_forwarded() {
        let f = rfc(&["10.0.0.0/8"]);
        let peer: IpAddr = "10.0.0.1".parse().unwrap();
        let c = |lines: &[&str]| f.client_ip(peer, &with_forwarded(lines, None)).to_string();
        assert_eq!(c(&["for=192.0.2.1, for=10.0.0.2"]), "192.0.2.1");
        assert_eq!(c(&["for=192.0.2.1", "for=\"10.0.0.2:80\""]), "192.0.2.1");
        assert_eq!(
            c(&["for=192.0.2.1", "for=\"[10.0.0.2]\""]),
            "10.0.0.1",
            "not IPv6"
        );
        assert_eq!(c(&["for=192.0.2.1, for=unknown, for=10.0.0.2"]), "10.0.0.2");
        assert_eq!(c(&["for=192.0.2.1, for=_hidden"]), "10.0.0.1");
        assert_eq!(c(&["for=10.0.0.3, for=10.0.0.2"]), "10.0.0.3");
        assert_eq!(c(&["proto=http"]), "10.0.0.1");
        assert_eq!(c(&[]), "10.0.0.1");
        // A line that does not parse is one opaque hop: nothing in it is believed.
        assert_eq!(c(&["for=\"6.6.6.6, for=10.0.0.2"]), "10.0.0.1");
        assert_eq!(c(&["for=192.0.2.1", "x\"", "for=10.0.0.2"]), "10.0.0.2");
        assert_eq!(
            c(&["for=\"x, for=10.0.0.2;host=\"h, for=6.6.6.6\""]),
            "10.0.0.1"
        );
        // X-Forwarded-For wins when present.
        let r = with_forwarded(&["for=192.0.2.1"], Some("198.51.100.1"));
        assert_eq!(f.client_ip(peer, &r).to_string(), "198.51.100.1");
        // Untrusted peers and rfc7239 off: Forwarded is not read.
        let r = with_forwarded(&["for=192.0.2.1"], None);
        assert_eq!(
            f.client_ip("1.2.3.4".parse().unwrap(), &r).to_string(),
            "1.2.3.4"
        );
        let off = fwd(&["10.0.0.0/8"], XffMode::Append);
        assert_eq!(off.client_ip(peer, &r), peer);
    }

    /// xorshift64*: deterministic garbage.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    const PIECES: &[&str] = &[
        "for=",
        "For=",
        "FOR=",
        "6.6.6.6",
        "10.9.9.9",
        "6.6.6.6:80",
        "[2001:db8::6]",
        "2001:db8::6",
        "unknown",
        "_x",
        ";proto=http",
        ";host=",
        "by=",
        "\"",
        "\\",
        ",",
        ";",
        " ",
        "=",
        "[",
        "]",
        ":",
        "\t",
        ", for=",
        "\"[",
        "]\"",
        "\"6.6.6.6\"",
        "_",
    ];

    fn garbage(rng: &mut Rng, visible_only: bool) -> Vec<u8> {
        let mut v = Vec::new();
        for _ in 0..rng.below(24) {
            match rng.below(4) {
                0 if visible_only => v.push(0x21 + rng.below(0x5e) as u8),
                0 => v.push(rng.next() as u8),
                _ => v.extend_from_slice(PIECES[rng.below(PIECES.len())].as_bytes()),
            }
        }
        v
    }

    #[test]
    fn forwarded_parser_fuzz_never_panics_and_is_never_fooled() {
        let f = rfc(&["10.0.0.0/8"]);
        let peer: IpAddr = "10.0.0.1".parse().unwrap();
        let client: IpAddr = "203.0.113.7".parse().unwrap();
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for _ in 0..20_000 {
            // Raw bytes, controls and all: no panic, and anything reported came from the input.
            let raw = garbage(&mut rng, false);
            let _ = parse_forwarded_for(&raw, &mut |_| {});
            let _ = parse_node(&raw);

            // A client's garbage `Forwarded` with a trusted proxy's element appended on the same
            // line (or on a line of its own); the client also picks the Host. The client address
            // is the one the proxy wrote, or at worst the proxy itself: never the client's pick.
            let prefix = garbage(&mut rng, true);
            let host = String::from_utf8(garbage(&mut rng, true)).unwrap();
            let mut own = String::new();
            forwarded_element(&mut own, Some(client), false, Some(&host));
            assert_eq!(nodes(&own), Ok(vec![Node::Ip(client)]), "{own}");
            let mut line = prefix.clone();
            line.extend_from_slice(b", ");
            line.extend_from_slice(own.as_bytes());
            let mut r = req(None);
            r.append_header("Forwarded", HeaderValue::from_bytes(&line).unwrap())
                .unwrap();
            let got = f.client_ip(peer, &r);
            assert!(
                got == client || got == peer,
                "{got} from {:?}",
                String::from_utf8_lossy(&line)
            );
            let mut r = req(None);
            r.append_header("Forwarded", HeaderValue::from_bytes(&prefix).unwrap())
                .unwrap();
            r.append_header("Forwarded", own.as_str()).unwrap();
            assert_eq!(f.client_ip(peer, &r), client);

            // Through `apply` too (appending to garbage from a trusted peer must not fail).
            let mut r = req(None);
            r.append_header("Forwarded", HeaderValue::from_bytes(&prefix).unwrap())
                .unwrap();
            apply(&f, &mut r, Some(peer), false, None);
            assert!(r.headers.get("forwarded").is_some());
        }
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
