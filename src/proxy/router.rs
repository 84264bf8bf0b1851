//! Host and path matching, compiled once at load. Routes are tried in file order and the
//! first match wins: `find` returns the smallest route index whose host pattern (exact,
//! `*.suffix` or any) and path pattern (any, exact or prefix, a plain byte-wise
//! `starts_with`, so `/api` also matches `/apix`) both match.
//!
//! How lookup works: routes are grouped by host key (each exact host, each wildcard suffix,
//! and one group for routes without a host; a route naming several hosts is in several
//! groups). Each group is a `PathIndex`: a compressed byte trie (radix tree) over its exact
//! and prefix paths, where a node keeps the smallest route index whose prefix ends there
//! (valid for any path that goes on) and whose exact path ends there (valid only when the
//! whole path is consumed), plus the smallest index of the group's any-path routes. A lookup
//! normalises the host into a stack buffer, then probes the exact host's group, the wildcard
//! groups for those suffixes of the host that start at a `.` and have the length of some
//! configured suffix, and the host-less group, walking the path once in each (at a branch,
//! the child is found by scanning the children's first bytes 8 at a time); the smallest
//! index found wins. The cost is O(host length + path length) per group probed, independent
//! of the number of routes, and a lookup does not allocate.
//!
//! Routes with `match.upgrade: websocket` (Apache's `RewriteCond %{HTTP:Upgrade} websocket`)
//! match only WebSocket upgrade requests: they are left out of the table used for other
//! requests, and when any exists a second table of every route serves the upgrades.

use crate::config::{Issues, RouteConf};
use crate::filter::{BuildError, Filters, Registry};
use crate::proxy::headers::HeaderRules;
use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};
use std::collections::HashMap;

/// A host pattern.
#[derive(Debug, Clone)]
enum HostPat {
    /// Exact, lower-case host.
    Exact(String),
    /// `*.example.com`, stored as `.example.com`.
    Suffix(String),
}

impl HostPat {
    #[cfg(test)]
    fn matches(&self, host: &str) -> bool {
        match self {
            HostPat::Exact(h) => h == host,
            HostPat::Suffix(s) => host.len() > s.len() && host.ends_with(s.as_str()),
        }
    }
}

/// A path pattern.
#[derive(Debug, Clone)]
enum PathPat {
    Any,
    Exact(String),
    Prefix(String),
}

/// How the path is changed before the request goes upstream.
#[derive(Debug, Clone)]
pub enum Rewrite {
    /// Unchanged.
    None,
    /// Replace the first `len` bytes (the matched prefix) with `with`.
    Prefix {
        /// Length of the matched prefix.
        len: usize,
        /// Replacement (empty for `strip_prefix`).
        with: String,
    },
}

impl Rewrite {
    /// The new path-and-query for `path` and `query`, or `None` when unchanged (most routes:
    /// that check is inlined into the hook).
    #[inline]
    pub fn apply(&self, path: &str, query: Option<&str>) -> Option<String> {
        match self {
            Rewrite::None => None,
            Rewrite::Prefix { len, with } => Some(Self::replace_prefix(*len, with, path, query)),
        }
    }

    fn replace_prefix(len: usize, with: &str, path: &str, query: Option<&str>) -> String {
        let rest = path.get(len..).unwrap_or("");
        let mut out =
            String::with_capacity(with.len() + rest.len() + 2 + query.map_or(0, |q| q.len() + 1));
        out.push_str(with);
        if !out.ends_with('/') && !rest.starts_with('/') {
            out.push('/');
        } else if out.ends_with('/') && rest.starts_with('/') {
            out.pop();
        }
        out.push_str(rest);
        if out.is_empty() {
            out.push('/');
        }
        if let Some(q) = query {
            out.push('?');
            out.push_str(q);
        }
        out
    }
}

/// What a matched route does.
#[derive(Debug, Clone)]
pub enum Action {
    /// Proxy to the pool with this index.
    Proxy {
        /// Index into the runtime's pools.
        pool: usize,
    },
    /// A fixed response.
    Respond {
        /// Status code.
        status: u16,
        /// Headers.
        headers: Vec<(HeaderName, HeaderValue)>,
        /// Body.
        body: Bytes,
    },
    /// A redirect.
    Redirect {
        /// Status code.
        status: u16,
        /// Target.
        to: String,
        /// Append the path after the prefix and the query.
        keep_path: bool,
    },
    /// Files from a directory (`static:`).
    Static(std::sync::Arc<crate::proxy::static_files::StaticFiles>),
}

/// A compiled route.
pub struct Route {
    /// `routes[N]`, for logs.
    pub name: String,
    hosts: Vec<HostPat>,
    path: PathPat,
    /// What to do.
    pub action: Action,
    /// Path change before proxying.
    pub rewrite: Rewrite,
    /// Rules for the upstream request.
    pub request_headers: HeaderRules,
    /// Rules for the downstream response.
    pub response_headers: HeaderRules,
    /// Rust filters, in order.
    pub filters: Filters,
    /// Served on `redirect_https` listeners too.
    pub allow_http: bool,
    /// Send the client's path upstream rather than the normalised one.
    pub raw_path: bool,
    /// Requests per client.
    pub rate_limit: Option<crate::proxy::limits::RateLimit>,
    /// Largest request body in bytes (`None`: no limit).
    pub max_body: Option<u64>,
    /// Matches only WebSocket upgrade requests (`match.upgrade: websocket`).
    pub websocket_only: bool,
}

impl std::fmt::Debug for Route {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.debug_struct("Route")
            .field("name", &self.name)
            .field("action", &self.action)
            .field("filters", &self.filters)
            .finish()
    }
}

impl Route {
    /// Reference semantics of a match (the trie lookup must agree with it).
    #[cfg(test)]
    fn matches_host(&self, host: &str) -> bool {
        self.hosts.is_empty() || self.hosts.iter().any(|h| h.matches(host))
    }

    /// Reference semantics of a match (the trie lookup must agree with it).
    #[cfg(test)]
    fn matches(&self, host: &str, path: &str) -> bool {
        self.matches_host(host)
            && match &self.path {
                PathPat::Any => true,
                PathPat::Exact(p) => p == path,
                PathPat::Prefix(p) => path.starts_with(p.as_str()),
            }
    }

    /// Length of the matched path prefix (0 unless `path_prefix`).
    pub fn prefix_len(&self) -> usize {
        match &self.path {
            PathPat::Prefix(p) => p.len(),
            _ => 0,
        }
    }
}

/// No route (the largest index, so it never wins a `min`).
const NONE: u32 = u32::MAX;

/// The path patterns of a group of routes, for finding the first one that matches a path
/// in one walk over the path.
///
/// Exact and prefix paths are stored in a compressed byte trie: every path ends exactly at
/// a node, and a node's label is the bytes between its parent and itself. The children of
/// a node are contiguous in `nodes`, sorted by the first byte of their label; those first
/// bytes are kept apart, in `first`, and scanned 8 at a time to pick the child.
#[derive(Debug)]
struct PathIndex {
    /// Smallest index of a route with an any-path pattern, or `NONE`.
    any: u32,
    /// The trie; `nodes[0]` is the root (absent when there are no exact/prefix paths).
    nodes: Vec<Node>,
    /// `first[i]`: the first byte of `nodes[i]`'s label (unused for the root), then 7 bytes
    /// of padding so that any child range can be read as whole `u64` words.
    first: Vec<u8>,
    /// All labels but their first byte (the whole label for the root), concatenated.
    labels: Vec<u8>,
}

/// A trie node.
#[derive(Debug, Clone, Copy)]
struct Node {
    /// `first[this]` then `labels[label_start..label_end]` lead here from the parent.
    label_start: u32,
    label_end: u32,
    /// `nodes[children_start..children_end]` are the children.
    children_start: u32,
    children_end: u32,
    /// Smallest index of a route whose exact path ends here, or `NONE`.
    exact: u32,
    /// Smallest index of a route whose path prefix ends here, or `NONE`.
    prefix: u32,
}

impl Default for PathIndex {
    fn default() -> Self {
        PathIndex {
            any: NONE,
            nodes: Vec::new(),
            first: Vec::new(),
            labels: Vec::new(),
        }
    }
}

impl PathIndex {
    /// Builds the index of routes given as (route index, path pattern), in any order.
    fn build<'a>(routes: impl IntoIterator<Item = (u32, &'a PathPat)>) -> PathIndex {
        let mut ix = PathIndex::default();
        // (path, smallest exact index, smallest prefix index)
        let mut keys: Vec<(&[u8], u32, u32)> = Vec::new();
        for (i, p) in routes {
            match p {
                PathPat::Any => ix.any = ix.any.min(i),
                PathPat::Exact(s) => keys.push((s.as_bytes(), i, NONE)),
                PathPat::Prefix(s) => keys.push((s.as_bytes(), NONE, i)),
            }
        }
        if keys.is_empty() {
            return ix;
        }
        keys.sort_unstable_by(|a, b| a.0.cmp(b.0));
        keys.dedup_by(|later, kept| {
            let same = later.0 == kept.0;
            if same {
                kept.1 = kept.1.min(later.1);
                kept.2 = kept.2.min(later.2);
            }
            same
        });
        let placeholder = Node {
            label_start: 0,
            label_end: 0,
            children_start: 0,
            children_end: 0,
            exact: NONE,
            prefix: NONE,
        };
        ix.nodes.push(placeholder);
        ix.first.push(0);
        // (node slot, keys[lo..hi] below it, bytes consumed above it). The keys of a slot
        // share their first `depth` bytes; a node spans their longest common prefix.
        let mut work = vec![(0usize, 0usize, keys.len(), 0usize)];
        while let Some((slot, lo, hi, depth)) = work.pop() {
            let (a, b) = (keys[lo].0, keys[hi - 1].0);
            // Sorted, so the common prefix of the range is that of its ends.
            let end = depth
                + a[depth..]
                    .iter()
                    .zip(&b[depth..])
                    .take_while(|(x, y)| x == y)
                    .count();
            let mut node = placeholder;
            node.label_start = ix.labels.len() as u32;
            // A child's first label byte is in `first` (consumed when choosing the child).
            let from = if slot == 0 { depth } else { depth + 1 };
            ix.labels.extend_from_slice(&a[from..end]);
            node.label_end = ix.labels.len() as u32;
            let mut i = lo;
            if a.len() == end {
                // At most one key ends here, and it sorts first.
                (node.exact, node.prefix) = (keys[lo].1, keys[lo].2);
                i += 1;
            }
            node.children_start = ix.nodes.len() as u32;
            while i < hi {
                let c = keys[i].0[end];
                let mut j = i + 1;
                while j < hi && keys[j].0[end] == c {
                    j += 1;
                }
                work.push((ix.nodes.len(), i, j, end));
                ix.nodes.push(placeholder);
                ix.first.push(c);
                i = j;
            }
            node.children_end = ix.nodes.len() as u32;
            ix.nodes[slot] = node;
        }
        ix.first.extend_from_slice(&[0; 7]);
        ix.nodes.shrink_to_fit();
        ix.first.shrink_to_fit();
        ix.labels.shrink_to_fit();
        ix
    }

    /// The smallest index of a route in this group whose path pattern matches `path`, or
    /// `NONE`.
    #[inline]
    fn lookup(&self, path: &[u8]) -> u32 {
        let mut best = self.any;
        let Some(mut node) = self.nodes.first() else {
            return best;
        };
        let mut rest = path;
        loop {
            let label = &self.labels[node.label_start as usize..node.label_end as usize];
            // Labels are mostly short: a plain loop beats a call to memcmp.
            match rest.split_at_checked(label.len()) {
                Some((head, tail)) if head.iter().zip(label).all(|(a, b)| a == b) => rest = tail,
                _ => return best,
            }
            // Every prefix ending here is a prefix of `path`.
            best = best.min(node.prefix);
            let Some((&b, after)) = rest.split_first() else {
                return best.min(node.exact);
            };
            match self.child(node, b) {
                Some(child) => {
                    node = child;
                    rest = after;
                }
                None => return best,
            }
        }
    }

    /// The child of `node` whose label starts with `b`.
    #[inline]
    fn child(&self, node: &Node, b: u8) -> Option<&Node> {
        const LO: u64 = 0x0101_0101_0101_0101;
        const HI: u64 = 0x8080_8080_8080_8080;
        let (start, end) = (node.children_start as usize, node.children_end as usize);
        let pattern = LO * u64::from(b);
        let mut i = start;
        while i < end {
            // `first` is padded, so 8 bytes from any child index are there.
            let word = u64::from_le_bytes(self.first[i..i + 8].try_into().ok()?);
            let x = word ^ pattern;
            // Bytes of `x` that are zero (equal to `b`) get their high bit set; the lowest
            // one set is exact (false positives only occur above a true zero byte).
            let zero = x.wrapping_sub(LO) & !x & HI;
            if zero != 0 {
                let k = i + (zero.trailing_zeros() / 8) as usize;
                return if k < end { self.nodes.get(k) } else { None };
            }
            i += 8;
        }
        None
    }
}

/// The compiled route table.
#[derive(Debug, Default)]
pub struct Router {
    routes: Vec<Route>,
    /// Every route but the `match.upgrade` ones: for requests that do not upgrade.
    plain: HostTable,
    /// Every route, for WebSocket upgrade requests; `None` when no route has `match.upgrade`
    /// (then `plain` serves them too).
    websocket: Option<HostTable>,
}

/// FNV-1a for the host maps: they are built from the config and only read per request, so a
/// client cannot fill them with colliding keys, and SipHash's DoS resistance buys nothing there
/// (it was most of a host lookup's cost).
struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Fnv {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl std::hash::Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
}

/// Host key -> routes, hashed with [`Fnv`].
type HostMap = HashMap<Box<str>, PathIndex, std::hash::BuildHasherDefault<Fnv>>;

/// The routes of a table, bucketed by host key.
#[derive(Debug, Default)]
struct HostTable {
    /// For each exact host named by some route: the routes naming it.
    exact: HostMap,
    /// For each wildcard suffix (`.example.com` for `*.example.com`): the routes naming it.
    suffix: HostMap,
    /// The distinct lengths of the keys of `suffix`, ascending.
    suffix_lens: Vec<usize>,
    /// Routes without a host.
    any_host: PathIndex,
}

/// Whether a request asks to upgrade to WebSocket (HTTP/1.1, `websocket` among its `Upgrade`
/// tokens, any case): what `match.upgrade: websocket` matches.
pub fn is_websocket_upgrade(req: &http::request::Parts) -> bool {
    req.version == http::Version::HTTP_11
        && req
            .headers
            .get_all(http::header::UPGRADE)
            .iter()
            .flat_map(|v| v.as_bytes().split(|&b| b == b','))
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"websocket"))
}

/// Normalises a Host value into `buf`: drops the port and a trailing dot, lower-cases.
#[cfg(test)]
fn normalize_host<'a>(host: &'a str, buf: &'a mut [u8; 256]) -> &'a str {
    lower_host(trim_host(host), buf)
}

/// A trimmed Host value lower-cased (into `buf` when it has capitals).
fn lower_host<'a>(h: &'a str, buf: &'a mut [u8; 256]) -> &'a str {
    if !h.bytes().any(|b| b.is_ascii_uppercase()) || h.len() > buf.len() {
        return h;
    }
    let out = &mut buf[..h.len()];
    out.copy_from_slice(h.as_bytes());
    out.make_ascii_lowercase();
    std::str::from_utf8(out).unwrap_or(h)
}

/// A Host value without its port and trailing dot.
#[inline]
fn trim_host(host: &str) -> &str {
    let h = if host.starts_with('[') {
        host.find(']').map_or(host, |i| &host[..=i])
    } else {
        host.rsplit_once(':').map_or(host, |(h, p)| {
            if p.bytes().all(|b| b.is_ascii_digit()) {
                h
            } else {
                host
            }
        })
    };
    h.strip_suffix('.').unwrap_or(h)
}

impl HostTable {
    /// The table of the routes for which `include` is true (indices stay those of `routes`).
    fn build(routes: &[Route], include: impl Fn(&Route) -> bool) -> HostTable {
        // Route indices per host key.
        let mut any_host: Vec<u32> = Vec::new();
        let mut exact: HashMap<&str, Vec<u32>> = HashMap::new();
        let mut suffix: HashMap<&str, Vec<u32>> = HashMap::new();
        for (idx, r) in routes.iter().enumerate() {
            if !include(r) {
                continue;
            }
            let idx = idx as u32;
            if r.hosts.is_empty() {
                any_host.push(idx);
            }
            for h in &r.hosts {
                match h {
                    HostPat::Exact(h) => exact.entry(h).or_default().push(idx),
                    HostPat::Suffix(s) => suffix.entry(s).or_default().push(idx),
                }
            }
        }
        let index =
            |list: &[u32]| PathIndex::build(list.iter().map(|&i| (i, &routes[i as usize].path)));
        let any_host = index(&any_host);
        let exact: HostMap = exact
            .iter()
            .map(|(h, list)| (Box::from(*h), index(list)))
            .collect();
        let suffix: HostMap = suffix
            .iter()
            .map(|(s, list)| (Box::from(*s), index(list)))
            .collect();
        let mut suffix_lens: Vec<usize> = suffix.keys().map(|s| s.len()).collect();
        suffix_lens.sort_unstable();
        suffix_lens.dedup();
        HostTable {
            exact,
            suffix,
            suffix_lens,
            any_host,
        }
    }

    /// The smallest index of a route matching `host` and `path`, or `NONE`.
    fn lookup(&self, host: &str, path: &str) -> u32 {
        let host = trim_host(host);
        if host.bytes().any(|b| b.is_ascii_uppercase()) {
            return self.lookup_lowered(host, path);
        }
        self.lookup_normal(host, path)
    }

    /// `lookup` for a host with capitals (rare): lower-cased into a buffer first, which the
    /// common case does not even set up.
    #[cold]
    #[inline(never)]
    fn lookup_lowered(&self, host: &str, path: &str) -> u32 {
        let mut buf = [0u8; 256];
        self.lookup_normal(lower_host(host, &mut buf), path)
    }

    /// `lookup` for a normalised host.
    fn lookup_normal(&self, host: &str, path: &str) -> u32 {
        let path = path.as_bytes();
        let mut best = self.any_host.lookup(path);
        if let Some(ix) = self.exact.get(host) {
            best = best.min(ix.lookup(path));
        }
        // `*.s` (stored as `.s`) matches hosts that end with `.s` and are longer than it.
        for &len in &self.suffix_lens {
            if len >= host.len() {
                break;
            }
            let at = host.len() - len;
            if host.as_bytes()[at] == b'.' {
                if let Some(ix) = self.suffix.get(&host[at..]) {
                    best = best.min(ix.lookup(path));
                }
            }
        }
        best
    }
}

impl Router {
    /// Compiles routes; `pool_index` maps pool names to indices.
    pub fn compile(
        confs: &[RouteConf],
        pool_index: &HashMap<String, usize>,
        filters: &Registry,
        issues: &mut Issues,
    ) -> Router {
        Router::compile_in(confs, None, pool_index, filters, issues)
    }

    /// [`Router::compile`] for a config file in `base_dir`, against which relative
    /// `static.root` directories are resolved.
    pub fn compile_in(
        confs: &[RouteConf],
        base_dir: Option<&std::path::Path>,
        pool_index: &HashMap<String, usize>,
        filters: &Registry,
        issues: &mut Issues,
    ) -> Router {
        let mut routes = Vec::with_capacity(confs.len());
        for (i, rc) in confs.iter().enumerate() {
            if let Some(r) = compile_route(i, rc, base_dir, pool_index, filters, issues) {
                routes.push(r);
            }
        }
        let plain = HostTable::build(&routes, |r| !r.websocket_only);
        let websocket = routes
            .iter()
            .any(|r| r.websocket_only)
            .then(|| HostTable::build(&routes, |_| true));
        Router {
            routes,
            plain,
            websocket,
        }
    }

    /// The first route matching `host` (a Host header value, port allowed) and `path`, for a
    /// request that is not a WebSocket upgrade.
    pub fn find(&self, host: &str, path: &str) -> Option<(usize, &Route)> {
        self.find_request(host, path, false)
    }

    /// Whether some route matches only WebSocket upgrades (`match: { upgrade: websocket }`):
    /// only then does a request's `Upgrade` header need looking at before routing.
    #[inline]
    pub fn has_upgrade_routes(&self) -> bool {
        self.websocket.is_some()
    }

    /// The first route matching `host`, `path` and whether the request upgrades to
    /// WebSocket (routes with `match.upgrade` match only those).
    pub fn find_request(&self, host: &str, path: &str, websocket: bool) -> Option<(usize, &Route)> {
        let table = match (&self.websocket, websocket) {
            (Some(t), true) => t,
            _ => &self.plain,
        };
        let best = table.lookup(host, path);
        (best != NONE).then(|| (best as usize, &self.routes[best as usize]))
    }

    /// The first route matching, by trying every route in order (the reference semantics).
    #[cfg(test)]
    fn find_linear(&self, host: &str, path: &str) -> Option<(usize, &Route)> {
        self.find_linear_request(host, path, false)
    }

    /// [`Router::find_linear`] for a WebSocket upgrade request or not.
    #[cfg(test)]
    fn find_linear_request(
        &self,
        host: &str,
        path: &str,
        websocket: bool,
    ) -> Option<(usize, &Route)> {
        let mut buf = [0u8; 256];
        let host = normalize_host(host, &mut buf);
        self.routes
            .iter()
            .enumerate()
            .find(|(_, r)| (websocket || !r.websocket_only) && r.matches(host, path))
    }

    /// The route at `index`.
    pub fn get(&self, index: usize) -> &Route {
        &self.routes[index]
    }

    /// Every route, in file order.
    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    /// Number of routes.
    pub fn len(&self) -> usize {
        self.routes.len()
    }

    /// Whether there are no routes.
    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }
}

fn compile_route(
    i: usize,
    rc: &RouteConf,
    base_dir: Option<&std::path::Path>,
    pool_index: &HashMap<String, usize>,
    registry: &Registry,
    issues: &mut Issues,
) -> Option<Route> {
    let at = format!("routes[{i}]");
    let errors_before = issues.errors.len();
    let mut hosts = Vec::new();
    if let Some(hs) = &rc.matches.host {
        for (j, h) in hs.iter().enumerate() {
            let key = if matches!(hs, crate::config::OneOrMany::One(_)) {
                format!("{at}.match.host")
            } else {
                format!("{at}.match.host[{j}]")
            };
            let h = h.trim().to_ascii_lowercase();
            if let Some(suffix) = h.strip_prefix("*.") {
                if suffix.is_empty() || suffix.contains('*') {
                    issues.error(
                        key,
                        format!("invalid wildcard host \"{h}\" (use \"*.example.com\")"),
                    );
                } else {
                    hosts.push(HostPat::Suffix(format!(".{suffix}")));
                }
            } else if h.is_empty() || h.contains(['*', '/', ' ']) {
                issues.error(
                    key,
                    format!("invalid host \"{h}\" (an exact name or \"*.example.com\")"),
                );
            } else {
                hosts.push(HostPat::Exact(h));
            }
        }
    }
    let path = match (&rc.matches.path, &rc.matches.path_prefix) {
        (Some(_), Some(_)) => {
            issues.error(
                format!("{at}.match"),
                "set either path or path_prefix, not both",
            );
            PathPat::Any
        }
        (Some(p), None) | (None, Some(p)) if !p.starts_with('/') => {
            let k = if rc.matches.path.is_some() {
                "path"
            } else {
                "path_prefix"
            };
            issues.error(
                format!("{at}.match.{k}"),
                format!("must start with '/', got \"{p}\""),
            );
            PathPat::Any
        }
        (Some(p), None) => PathPat::Exact(p.clone()),
        (None, Some(p)) => PathPat::Prefix(p.clone()),
        (None, None) => PathPat::Any,
    };
    let prefix = match &path {
        PathPat::Prefix(p) => Some(p.len()),
        _ => None,
    };
    let websocket_only = match rc.matches.upgrade.as_deref() {
        None => false,
        Some(u) if u.eq_ignore_ascii_case("websocket") => true,
        Some(u) => {
            issues.error(
                format!("{at}.match.upgrade"),
                format!("unsupported upgrade \"{u}\" (only websocket)"),
            );
            false
        }
    };

    let actions = rc.upstream.is_some() as u8
        + rc.respond.is_some() as u8
        + rc.redirect.is_some() as u8
        + rc.static_files.is_some() as u8;
    if actions != 1 {
        issues.error(
            at.clone(),
            "needs exactly one of upstream, respond, redirect, static",
        );
        return None;
    }
    let action = if let Some(sc) = &rc.static_files {
        let sf = crate::proxy::static_files::StaticFiles::compile(
            sc,
            base_dir,
            &format!("{at}.static"),
            issues,
        )?;
        Action::Static(std::sync::Arc::new(sf))
    } else if let Some(u) = &rc.upstream {
        match pool_index.get(u) {
            Some(&pool) => Action::Proxy { pool },
            None => {
                let mut known: Vec<&str> = pool_index.keys().map(String::as_str).collect();
                known.sort_unstable();
                issues.error(
                    format!("{at}.upstream"),
                    format!(
                        "unknown upstream \"{u}\" (defined: {})",
                        if known.is_empty() {
                            "none".into()
                        } else {
                            known.join(", ")
                        }
                    ),
                );
                return None;
            }
        }
    } else if let Some(r) = &rc.respond {
        if !(100..=999).contains(&r.status) || (100..200).contains(&r.status) {
            issues.error(
                format!("{at}.respond.status"),
                format!("invalid status {}", r.status),
            );
        }
        let mut headers = Vec::new();
        for (k, v) in &r.headers {
            match (
                HeaderName::try_from(k.as_str()),
                HeaderValue::try_from(v.as_str()),
            ) {
                (Ok(n), Ok(v)) => headers.push((n, v)),
                _ => issues.error(
                    format!("{at}.respond.headers.{k}"),
                    "invalid header name or value",
                ),
            }
        }
        Action::Respond {
            status: r.status,
            headers,
            body: Bytes::from(r.body.clone()),
        }
    } else {
        let r = rc.redirect.as_ref()?;
        if ![301, 302, 303, 307, 308].contains(&r.status) {
            issues.error(
                format!("{at}.redirect.status"),
                format!("must be 301, 302, 303, 307 or 308, got {}", r.status),
            );
        }
        if r.to.is_empty() || HeaderValue::try_from(r.to.as_str()).is_err() {
            issues.error(
                format!("{at}.redirect.to"),
                format!("invalid redirect target \"{}\"", r.to),
            );
        }
        Action::Redirect {
            status: r.status,
            to: r.to.clone(),
            keep_path: r.keep_path,
        }
    };

    let is_proxy = matches!(action, Action::Proxy { .. });
    // Static files are looked up by the path after strip_prefix / rewrite (nginx `alias`).
    let rewrites = is_proxy || matches!(action, Action::Static(_));
    let rewrite = match (rc.strip_prefix, &rc.rewrite) {
        (true, Some(_)) => {
            issues.error(
                format!("{at}.rewrite"),
                "set either strip_prefix or rewrite, not both",
            );
            Rewrite::None
        }
        (false, None) => Rewrite::None,
        _ if !rewrites => {
            issues.error(
                format!(
                    "{at}.{}",
                    if rc.strip_prefix {
                        "strip_prefix"
                    } else {
                        "rewrite"
                    }
                ),
                "only applies to routes with an upstream or static files",
            );
            Rewrite::None
        }
        (strip, with) => match prefix {
            None => {
                issues.error(
                    format!("{at}.{}", if strip { "strip_prefix" } else { "rewrite" }),
                    "needs match.path_prefix",
                );
                Rewrite::None
            }
            Some(len) => {
                let with = with.clone().unwrap_or_default();
                if !with.is_empty() && !with.starts_with('/') {
                    issues.error(
                        format!("{at}.rewrite"),
                        format!("must start with '/', got \"{with}\""),
                    );
                }
                Rewrite::Prefix { len, with }
            }
        },
    };
    check_raw_path(&at, rc, is_proxy, issues);
    let rate_limit = rc.rate_limit.as_ref().and_then(|c| {
        crate::proxy::limits::RateLimit::compile(c, &format!("{at}.rate_limit"), issues)
    });
    let request_headers = HeaderRules::compile(
        &rc.request_headers,
        &format!("{at}.request_headers"),
        issues,
    );
    let response_headers = HeaderRules::compile(
        &rc.response_headers,
        &format!("{at}.response_headers"),
        issues,
    );
    if !is_proxy && !request_headers.is_empty() {
        issues.error(
            format!("{at}.request_headers"),
            "only applies to routes with an upstream",
        );
    }
    let filters = registry.build_all(
        rc.filters.iter().map(|f| (f.name.as_str(), &f.config)),
        |j, e| match e {
            BuildError::UnknownName(e) => issues.error(format!("{at}.filters[{j}].name"), e),
            BuildError::Config { path, reason } => {
                issues.error(format!("{at}.filters[{j}].config{path}"), reason)
            }
        },
    );
    if issues.errors.len() != errors_before {
        return None;
    }
    Some(Route {
        name: at,
        hosts,
        path,
        action,
        rewrite,
        request_headers,
        response_headers,
        filters,
        allow_http: rc.allow_http,
        raw_path: rc.raw_path,
        rate_limit,
        max_body: Some(rc.max_body.0).filter(|&n| n > 0),
        websocket_only,
    })
}

/// `raw_path` is about what goes upstream, and a prefix to strip or rewrite is found in the
/// normalised path, where it may not be at the same offset as in the raw one.
fn check_raw_path(at: &str, rc: &RouteConf, is_proxy: bool, issues: &mut Issues) {
    if !rc.raw_path {
        return;
    }
    if !is_proxy {
        issues.error(
            format!("{at}.raw_path"),
            "only applies to routes with an upstream",
        );
    } else if rc.strip_prefix || rc.rewrite.is_some() {
        issues.error(
            format!("{at}.raw_path"),
            "cannot be combined with strip_prefix or rewrite (the prefix is matched in the normalised path)",
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn router(yaml: &str) -> (Router, Issues) {
        let cfg = Config::from_yaml(yaml).unwrap();
        let pools: HashMap<String, usize> = [("a".to_string(), 0), ("b".to_string(), 1)].into();
        let mut issues = Issues::default();
        let r = Router::compile(&cfg.routes, &pools, &Registry::with_builtins(), &mut issues);
        (r, issues)
    }

    fn pool_of(r: &Router, host: &str, path: &str) -> Option<usize> {
        match r.find(host, path)?.1.action {
            Action::Proxy { pool } => Some(pool),
            _ => None,
        }
    }

    #[test]
    fn first_match_in_file_order() {
        let (r, i) = router(
            r#"
routes:
  - { match: { host: api.example.com, path_prefix: /v1/ }, upstream: b }
  - { match: { host: "*.example.com" }, upstream: b }
  - { match: { path: /exact }, upstream: b }
  - { match: { path_prefix: / }, upstream: a }
"#,
        );
        assert!(i.errors.is_empty(), "{:?}", i.errors);
        assert_eq!(r.find("api.example.com", "/v1/x").unwrap().0, 0);
        assert_eq!(r.find("API.Example.com:8080", "/v1/x").unwrap().0, 0);
        assert_eq!(r.find("api.example.com", "/v2/x").unwrap().0, 1);
        assert_eq!(r.find("deep.sub.example.com", "/").unwrap().0, 1);
        assert_eq!(
            r.find("example.com", "/").unwrap().0,
            3,
            "wildcard does not match the bare domain"
        );
        assert_eq!(r.find("other", "/exact").unwrap().0, 2);
        assert_eq!(r.find("other", "/exact/more").unwrap().0, 3);
        assert_eq!(pool_of(&r, "x", "/anything"), Some(0));
    }

    /// Apache's `RewriteCond %{HTTP:Upgrade} websocket` + `ProxyPass /`: upgrades to one
    /// route, everything else to the next, in file order with host and path still applying.
    #[test]
    fn upgrade_websocket_routes_match_only_upgrades() {
        let (r, i) = router(
            r#"
routes:
  - { match: { path: /health }, respond: {} }
  - { match: { upgrade: websocket, host: ws.test }, upstream: b }
  - { match: { upgrade: WebSocket, path_prefix: /live/ }, upstream: b }
  - { upstream: a }
"#,
        );
        assert!(i.errors.is_empty(), "{:?}", i.errors);
        assert_eq!(r.find_request("ws.test", "/x", true).unwrap().0, 1);
        assert_eq!(r.find_request("ws.test", "/x", false).unwrap().0, 3);
        assert_eq!(r.find("ws.test", "/x").unwrap().0, 3);
        assert_eq!(r.find_request("other", "/live/x", true).unwrap().0, 2);
        assert_eq!(r.find_request("other", "/live/x", false).unwrap().0, 3);
        assert_eq!(r.find_request("other", "/x", true).unwrap().0, 3);
        // File order still wins: an earlier route matches upgrades too.
        assert_eq!(r.find_request("ws.test", "/health", true).unwrap().0, 0);
        for (host, path, ws) in [
            ("ws.test", "/x", true),
            ("a", "/live/", false),
            ("a", "/live/", true),
        ] {
            assert_eq!(
                r.find_request(host, path, ws).map(|(i, _)| i),
                r.find_linear_request(host, path, ws).map(|(i, _)| i)
            );
        }
        // Without upgrade routes, upgrades use the same table.
        let (r, _) = router("routes: [ { match: { path_prefix: /a/ }, upstream: a } ]");
        assert_eq!(r.find_request("h", "/a/x", true).unwrap().0, 0);
        let (_, i) = router("routes: [ { match: { upgrade: h2c }, upstream: a } ]");
        let first = &i.errors[0].path;
        assert_eq!(first, "routes[0].match.upgrade", "{:?}", i.errors);
    }

    #[test]
    fn websocket_upgrade_requests_are_recognised() {
        let req = |version, upgrade: Option<&str>| {
            let mut b = http::Request::builder().uri("/").version(version);
            if let Some(u) = upgrade {
                b = b.header("upgrade", u).header("connection", "Upgrade");
            }
            b.body(()).unwrap().into_parts().0
        };
        let (v11, v10) = (http::Version::HTTP_11, http::Version::HTTP_10);
        assert!(is_websocket_upgrade(&req(v11, Some("websocket"))));
        assert!(is_websocket_upgrade(&req(v11, Some("foo, WebSocket"))));
        assert!(!is_websocket_upgrade(&req(v11, Some("h2c"))));
        assert!(!is_websocket_upgrade(&req(v11, None)));
        assert!(!is_websocket_upgrade(&req(v10, Some("websocket"))));
    }

    #[test]
    fn no_match_is_none() {
        let (r, _) =
            router("routes: [ { match: { host: a.com, path_prefix: /api/ }, upstream: a } ]");
        assert!(r.find("a.com", "/other").is_none());
        assert!(r.find("b.com", "/api/").is_none());
        assert!(r.find("", "/api/").is_none());
    }

    #[test]
    fn host_lists_and_ipv6_hosts() {
        let (r, i) =
            router("routes: [ { match: { host: [a.com, b.com] }, upstream: b }, { upstream: a } ]");
        assert!(i.errors.is_empty());
        assert_eq!(pool_of(&r, "b.com", "/"), Some(1));
        assert_eq!(pool_of(&r, "[::1]:8080", "/"), Some(0));
    }

    #[test]
    fn rewrite_and_strip() {
        let strip = Rewrite::Prefix {
            len: 5,
            with: String::new(),
        };
        assert_eq!(
            strip.apply("/api/users", Some("a=1")).unwrap(),
            "/users?a=1"
        );
        assert_eq!(strip.apply("/api/", None).unwrap(), "/");
        let strip_noslash = Rewrite::Prefix {
            len: 4,
            with: String::new(),
        };
        assert_eq!(strip_noslash.apply("/api", None).unwrap(), "/");
        assert_eq!(strip_noslash.apply("/api/x", None).unwrap(), "/x");
        let rw = Rewrite::Prefix {
            len: 5,
            with: "/v2/".into(),
        };
        assert_eq!(rw.apply("/api/users", None).unwrap(), "/v2/users");
        assert!(Rewrite::None.apply("/x", None).is_none());
    }

    #[test]
    fn errors_name_the_key_path() {
        let (_, i) = router(
            r#"
routes:
  - { match: { path_prefix: /a/ }, upstream: a }
  - { match: { path_prefix: /b/ }, upstream: nope }
  - { match: { path: x }, upstream: a }
  - { match: { path: /x, path_prefix: /y }, upstream: a }
  - { match: { path: /x }, upstream: a, strip_prefix: true }
  - { match: { host: "*." }, upstream: a }
  - { upstream: a, respond: { status: 200 } }
  - { redirect: { to: /x, status: 200 } }
"#,
        );
        let got: Vec<String> = i.errors.iter().map(|e| e.to_string()).collect();
        let want = [
            "routes[1].upstream: unknown upstream \"nope\"",
            "routes[2].match.path: must start with '/'",
            "routes[3].match: set either path or path_prefix",
            "routes[4].strip_prefix: needs match.path_prefix",
            "routes[5].match.host: invalid wildcard host",
            "routes[6]: needs exactly one of upstream, respond, redirect",
            "routes[7].redirect.status: must be 301",
        ];
        assert_eq!(got.len(), want.len(), "{got:#?}");
        for (g, w) in got.iter().zip(want) {
            assert!(g.starts_with(w), "{g} should start with {w}");
        }
    }

    #[test]
    fn raw_path_needs_an_upstream_and_no_prefix_rewrite() {
        let (r, i) = router(
            r#"
routes:
  - { match: { path_prefix: /raw/ }, upstream: a, raw_path: true }
  - { match: { path_prefix: /s/ }, upstream: a, raw_path: true, strip_prefix: true }
  - { match: { path_prefix: /w/ }, upstream: a, raw_path: true, rewrite: /v/ }
  - { respond: { status: 200 }, raw_path: true }
"#,
        );
        let got: Vec<String> = i.errors.iter().map(|e| e.to_string()).collect();
        let want = [
            "routes[1].raw_path: cannot be combined with strip_prefix or rewrite",
            "routes[2].raw_path: cannot be combined with strip_prefix or rewrite",
            "routes[3].raw_path: only applies to routes with an upstream",
        ];
        assert_eq!(got.len(), want.len(), "{got:#?}");
        for (g, w) in got.iter().zip(want) {
            assert!(g.starts_with(w), "{g} should start with {w}");
        }
        assert!(r.get(0).raw_path);
    }

    #[test]
    fn large_tables_bucket_by_host() {
        let mut y = String::from("routes:\n");
        for n in 0..2000 {
            y.push_str(&format!(
                "  - {{ match: {{ host: h{n}.example.com, path_prefix: /p/ }}, upstream: a }}\n"
            ));
        }
        y.push_str("  - { match: { path_prefix: / }, upstream: b }\n");
        let (r, i) = router(&y);
        assert!(i.errors.is_empty());
        assert_eq!(r.find("h1999.example.com", "/p/x").unwrap().0, 1999);
        assert_eq!(r.find("h1999.example.com", "/q").unwrap().0, 2000);
        assert_eq!(r.find("unknown.example.com", "/p/").unwrap().0, 2000);
    }

    #[test]
    fn prefix_is_a_plain_byte_prefix() {
        let (r, _) = router(
            r#"
routes:
  - { match: { path: /api/v1 }, upstream: a }
  - { match: { path_prefix: /api/ }, upstream: a }
  - { match: { path_prefix: /api }, upstream: a }
  - { match: { path: /api }, upstream: a }
"#,
        );
        let idx = |p: &str| r.find("h", p).map(|(i, _)| i);
        assert_eq!(idx("/api/v1"), Some(0));
        assert_eq!(idx("/api/v1/x"), Some(1));
        assert_eq!(idx("/api/"), Some(1));
        assert_eq!(
            idx("/api"),
            Some(2),
            "an earlier prefix beats a later exact path"
        );
        assert_eq!(idx("/apix"), Some(2), "/api matches /apix");
        assert_eq!(idx("/ap"), None);
        assert_eq!(idx(""), None);
    }

    #[test]
    fn large_tables_under_one_host() {
        for host in ["app.example.com", "*.example.com"] {
            let mut y = String::from("routes:\n");
            for n in 0..10_000 {
                y.push_str(&format!(
                    "  - {{ match: {{ host: \"{host}\", path_prefix: /p{n}/ }}, upstream: a }}\n"
                ));
            }
            y.push_str("  - { match: { path: /p9999/x }, upstream: b }\n");
            y.push_str("  - { upstream: b }\n");
            let (r, i) = router(&y);
            assert!(i.errors.is_empty());
            let h = "App.Example.com:443";
            assert_eq!(r.find(h, "/p9999/x").unwrap().0, 9999);
            assert_eq!(r.find(h, "/p5000/").unwrap().0, 5000);
            assert_eq!(r.find(h, "/p10000/").unwrap().0, 10_001);
            assert_eq!(r.find("example.com", "/p1/").unwrap().0, 10_001);
            for path in ["/p1/", "/p12/x", "/p123", "/p9999/", "/q", ""] {
                for h in [h, "x.app.example.com", "example.com"] {
                    assert_eq!(
                        r.find(h, path).map(|(i, _)| i),
                        r.find_linear(h, path).map(|(i, _)| i),
                        "{host}: {h}{path}"
                    );
                }
            }
        }
    }

    /// A tiny deterministic PRNG (xorshift64).
    struct XorShift(u64);

    impl XorShift {
        fn next(&mut self) -> u64 {
            let mut x = self.0;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            self.0 = x;
            x
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }

        fn pick<'a>(&mut self, xs: &[&'a str]) -> &'a str {
            xs[self.below(xs.len())]
        }

        /// `/` and `min..=max` more bytes from `alphabet`.
        fn path(&mut self, alphabet: &[u8], min: usize, max: usize) -> String {
            let mut p = String::from("/");
            for _ in 0..min + self.below(max - min + 1) {
                p.push(alphabet[self.below(alphabet.len())] as char);
            }
            p
        }
    }

    #[test]
    fn trie_lookup_agrees_with_linear_scan() {
        const EXACT: &[&str] = &["a.com", "b.a.com", "x.b.a.com", "c.org", "org", ".a.com"];
        const WILD: &[&str] = &["*.a.com", "*.b.a.com", "*.org", "*.com", "*.a.org.com"];
        const REQUEST_HOSTS: &[&str] = &[
            "a.com",
            "b.a.com",
            "x.b.a.com",
            "c.org",
            "org",
            ".a.com",
            "z.a.com",
            "q.x.b.a.com",
            "A.COM:8080",
            "B.a.Com.",
            "a.org.com",
            "y.a.org.com",
            "com",
            "[::1]:80",
            "",
            ".",
            "other",
        ];
        let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
        let (mut lookups, mut hits) = (0usize, 0usize);
        for table in 0..600 {
            // Long paths over a small alphabet (deep tries, much overlap), or short ones over
            // a large alphabet (nodes with many children).
            let (alphabet, n, route_len, request_len): (&[u8], _, _, _) = if table % 2 == 0 {
                (b"/ab", 1 + rng.below(30), 4, 6)
            } else {
                (
                    b"/abcdefghijklmnopqrstuvwxyz0123456789",
                    1 + rng.below(150),
                    2,
                    3,
                )
            };
            let mut y = String::from("routes:\n");
            for _ in 0..n {
                let mut m = Vec::new();
                let hosts: Vec<String> = (0..rng.below(4).saturating_sub(1))
                    .map(|_| {
                        let pool = if rng.below(2) == 0 { EXACT } else { WILD };
                        format!("\"{}\"", rng.pick(pool))
                    })
                    .collect();
                if !hosts.is_empty() {
                    m.push(format!("host: [{}]", hosts.join(", ")));
                }
                // Few any-path routes, else most requests would hit one.
                if rng.below(n + 8) != 0 {
                    let p = rng.path(alphabet, 1, route_len);
                    let key = if rng.below(3) == 0 {
                        "path"
                    } else {
                        "path_prefix"
                    };
                    m.push(format!("{key}: \"{p}\""));
                }
                y.push_str(&format!(
                    "  - {{ match: {{ {} }}, upstream: a }}\n",
                    m.join(", ")
                ));
            }
            let (r, i) = router(&y);
            assert!(i.errors.is_empty(), "{:?}\n{y}", i.errors);
            assert_eq!(r.len(), n);
            for _ in 0..300 {
                let host = rng.pick(REQUEST_HOSTS);
                let path = if rng.below(20) == 0 {
                    String::new()
                } else {
                    rng.path(alphabet, 0, request_len)
                };
                let got = r.find(host, &path).map(|(i, _)| i);
                let want = r.find_linear(host, &path).map(|(i, _)| i);
                assert_eq!(got, want, "table {table}: {host:?} {path:?}\n{y}");
                lookups += 1;
                hits += got.is_some() as usize;
            }
        }
        // Both outcomes are well represented.
        eprintln!("{hits} hits in {lookups} lookups");
        assert!(
            hits > lookups / 5 && hits < lookups * 4 / 5,
            "{hits}/{lookups}"
        );
    }
}
