//! Host and path matching, compiled once at load. Routes are tried in file order and the
//! first match wins; routes are pre-bucketed by exact host so a lookup scans only the routes
//! that can match that host. Lookups do not allocate.

use crate::config::{Issues, RouteConf};
use crate::filter::{Filter, Registry};
use crate::proxy::headers::HeaderRules;
use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};
use std::collections::HashMap;
use std::sync::Arc;

/// A host pattern.
#[derive(Debug, Clone)]
enum HostPat {
    /// Exact, lower-case host.
    Exact(String),
    /// `*.example.com`, stored as `.example.com`.
    Suffix(String),
}

impl HostPat {
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
    /// The new path-and-query for `path` and `query`, or `None` when unchanged.
    pub fn apply(&self, path: &str, query: Option<&str>) -> Option<String> {
        let Rewrite::Prefix { len, with } = self else {
            return None;
        };
        let rest = path.get(*len..).unwrap_or("");
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
        Some(out)
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
    pub filters: Vec<Arc<dyn Filter>>,
    /// Served on `redirect_https` listeners too.
    pub allow_http: bool,
}

impl std::fmt::Debug for Route {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.debug_struct("Route")
            .field("name", &self.name)
            .field("action", &self.action)
            .field("filters", &self.filters.len())
            .finish()
    }
}

impl Route {
    fn matches_host(&self, host: &str) -> bool {
        self.hosts.is_empty() || self.hosts.iter().any(|h| h.matches(host))
    }

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

/// The compiled route table.
#[derive(Debug, Default)]
pub struct Router {
    routes: Vec<Route>,
    /// For each exact host named by some route: the indices of the routes that can match it.
    by_host: HashMap<String, Vec<u32>>,
    /// Routes that can match a host not in `by_host` (no host, or wildcard).
    other: Vec<u32>,
}

/// Normalises a Host value into `buf`: drops the port and a trailing dot, lower-cases.
fn normalize_host<'a>(host: &'a str, buf: &'a mut [u8; 256]) -> &'a str {
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
    let h = h.strip_suffix('.').unwrap_or(h);
    if !h.bytes().any(|b| b.is_ascii_uppercase()) || h.len() > buf.len() {
        return h;
    }
    let out = &mut buf[..h.len()];
    out.copy_from_slice(h.as_bytes());
    out.make_ascii_lowercase();
    std::str::from_utf8(out).unwrap_or(h)
}

impl Router {
    /// Compiles routes; `pool_index` maps pool names to indices.
    pub fn compile(
        confs: &[RouteConf],
        pool_index: &HashMap<String, usize>,
        filters: &Registry,
        issues: &mut Issues,
    ) -> Router {
        let mut routes = Vec::with_capacity(confs.len());
        for (i, rc) in confs.iter().enumerate() {
            if let Some(r) = compile_route(i, rc, pool_index, filters, issues) {
                routes.push(r);
            }
        }
        // Routes that can match any host (no host, or a wildcard), in file order.
        let other: Vec<u32> = (0..routes.len() as u32)
            .filter(|&i| {
                let hs = &routes[i as usize].hosts;
                hs.is_empty() || hs.iter().any(|h| matches!(h, HostPat::Suffix(_)))
            })
            .collect();
        // Routes naming each exact host, in file order.
        let mut exact: HashMap<String, Vec<u32>> = HashMap::new();
        for (idx, r) in routes.iter().enumerate() {
            for h in &r.hosts {
                if let HostPat::Exact(h) = h {
                    let list = exact.entry(h.clone()).or_default();
                    if list.last() != Some(&(idx as u32)) {
                        list.push(idx as u32);
                    }
                }
            }
        }
        // Merge, per exact host, its own routes with the generic ones that match it.
        let by_host = exact
            .into_iter()
            .map(|(host, own)| {
                let mut list: Vec<u32> = own;
                list.extend(
                    other
                        .iter()
                        .copied()
                        .filter(|&i| routes[i as usize].matches_host(&host)),
                );
                list.sort_unstable();
                list.dedup();
                (host, list)
            })
            .collect();
        Router {
            routes,
            by_host,
            other,
        }
    }

    /// The first route matching `host` (a Host header value, port allowed) and `path`.
    pub fn find(&self, host: &str, path: &str) -> Option<(usize, &Route)> {
        let mut buf = [0u8; 256];
        let host = normalize_host(host, &mut buf);
        let candidates = self.by_host.get(host).unwrap_or(&self.other);
        candidates
            .iter()
            .map(|&i| i as usize)
            .find(|&i| self.routes[i].matches(host, path))
            .map(|i| (i, &self.routes[i]))
    }

    /// The route at `index`.
    pub fn get(&self, index: usize) -> &Route {
        &self.routes[index]
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

    let actions =
        rc.upstream.is_some() as u8 + rc.respond.is_some() as u8 + rc.redirect.is_some() as u8;
    if actions != 1 {
        issues.error(
            at.clone(),
            "needs exactly one of upstream, respond, redirect",
        );
        return None;
    }
    let action = if let Some(u) = &rc.upstream {
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
    let rewrite = match (rc.strip_prefix, &rc.rewrite) {
        (true, Some(_)) => {
            issues.error(
                format!("{at}.rewrite"),
                "set either strip_prefix or rewrite, not both",
            );
            Rewrite::None
        }
        (false, None) => Rewrite::None,
        _ if !is_proxy => {
            issues.error(
                format!(
                    "{at}.{}",
                    if rc.strip_prefix {
                        "strip_prefix"
                    } else {
                        "rewrite"
                    }
                ),
                "only applies to routes with an upstream",
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
    let mut filters = Vec::new();
    for (j, f) in rc.filters.iter().enumerate() {
        match registry.build(&f.name, &f.config) {
            Ok(f) => filters.push(f),
            Err(e) if registry.names().contains(&f.name.as_str()) => {
                issues.error(format!("{at}.filters[{j}].config"), e)
            }
            Err(e) => issues.error(format!("{at}.filters[{j}].name"), e),
        }
    }
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
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn router(yaml: &str) -> (Router, Issues) {
        let cfg = Config::from_yaml(yaml).unwrap();
        let pools: HashMap<String, usize> = [("a".to_string(), 0), ("b".to_string(), 1)].into();
        let mut issues = Issues::default();
        let r = Router::compile(&cfg.routes, &pools, &Registry::new(), &mut issues);
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
}
