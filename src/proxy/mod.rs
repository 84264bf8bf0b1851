//! The Pingora `ProxyHttp` implementation. Each phase is a few lines that delegate to the
//! router, the pools, the header rules and the access log.

/// The affinity module, where it lived before (`gateway::affinity`).
pub use crate::affinity;
pub mod ctx;
pub mod headers;
pub mod limits;
pub mod normalize;
pub mod respond;
pub mod router;
pub mod static_files;

use crate::affinity::Affinity;
use crate::filter::Flow;
use crate::runtime::Runtime;
use crate::upstream::{ms_at, now_ms, HashKey, Pool};
use async_trait::async_trait;
use bytes::Bytes;
use ctx::Ctx;
use http::header;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_core::{Error, ErrorSource, ErrorType, Result};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::tunnel::{DetachedTunnel, TunnelStats};
use pingora_proxy::{FailToProxy, ProxyHttp, Session};
use router::Action;
use std::borrow::Cow;
use std::net::IpAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

/// The gateway's proxy logic over a compiled [`Runtime`].
pub struct Gateway {
    rt: Arc<Runtime>,
    /// The forwarded-header policy of this service's listeners (`rt.forwarded`, or its
    /// final-peer form behind PROXY protocol).
    forwarded: crate::proxy::headers::Forwarded,
}

impl Gateway {
    /// A proxy over `rt`.
    pub fn new(rt: Arc<Runtime>) -> Gateway {
        let forwarded = rt.forwarded.clone();
        Gateway { rt, forwarded }
    }

    /// A proxy over `rt` for PROXY protocol listeners: the header's address is the client,
    /// client-written forwarding headers are not walked ([`crate::proxy::headers::Forwarded::with_final_peer`]).
    pub fn behind_proxy_protocol(rt: Arc<Runtime>) -> Gateway {
        let forwarded = rt.forwarded.with_final_peer();
        Gateway { rt, forwarded }
    }

    /// The port the client connected to: from the config when only one listener can have
    /// accepted this connection, else from the socket (a `getsockname`).
    fn local_port(&self, session: &Session, tls: bool) -> Option<u16> {
        self.rt.sole_port[tls as usize].or_else(|| {
            session
                .server_addr()
                .and_then(|a| a.as_inet())
                .map(|a| a.port())
        })
    }
}

/// Whether the client connection is TLS.
fn is_tls(session: &Session) -> bool {
    session.digest().is_some_and(|d| d.ssl_digest.is_some())
}

// Complete responses (fixed responses, redirects, 404, 429...), with the route's
// `response_headers` rules when given: see respond.rs.
use self::respond::respond_with_rules as respond;

fn text_plain() -> (header::HeaderName, header::HeaderValue) {
    (
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain"),
    )
}

/// Answers 400 (and closes: the body is left unread) to a request whose path cannot be
/// routed safely, with an info line naming the path as sent.
async fn refuse_path(session: &mut Session, why: &(dyn std::fmt::Display + Sync)) -> Result<bool> {
    log::info!(
        "refused request path {:?}: {why}",
        session.req_header().uri.path()
    );
    session.set_keepalive(None);
    respond(
        session,
        400,
        &[text_plain()],
        Bytes::from_static(b"400 bad request path\n"),
        None,
    )
    .await?;
    Ok(true)
}

/// Largest handshake body buffered for sid tagging; bigger ones pass through untouched.
const MAX_HANDSHAKE_BODY: usize = 64 * 1024;

fn json_ct() -> (header::HeaderName, header::HeaderValue) {
    (
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    )
}

/// The path-and-query to send upstream when it is not the request's own: the normalised path
/// (unless the route sets `raw_path`), then `strip_prefix` / `rewrite` on it; the query as sent.
fn upstream_path(route: &router::Route, ctx: &Ctx, req: &RequestHeader) -> Option<String> {
    let norm = ctx.norm_path.as_deref().filter(|_| !route.raw_path);
    let query = req.uri.query();
    let path = norm.unwrap_or_else(|| req.uri.path());
    route.rewrite.apply(path, query).or_else(|| {
        let norm = norm?;
        let mut pq = String::with_capacity(norm.len() + query.map_or(0, |q| q.len() + 1));
        pq.push_str(norm);
        if let Some(q) = query {
            pq.push('?');
            pq.push_str(q);
        }
        Some(pq)
    })
}

/// The https URL of a plain-HTTP request: same host (port replaced) and path.
fn https_location(req: &RequestHeader, https_port: Option<u16>) -> header::HeaderValue {
    let host = crate::util::host_without_port(request_host(req));
    let mut url = String::with_capacity(host.len() + 32);
    url.push_str("https://");
    url.push_str(host);
    if let Some(p) = https_port.filter(|&p| p != 443) {
        url.push(':');
        url.push_str(&p.to_string());
    }
    url.push_str(req.uri.path_and_query().map_or("/", |pq| pq.as_str()));
    header::HeaderValue::try_from(url).unwrap_or_else(|_| header::HeaderValue::from_static("/"))
}

/// Host of the request: the authority of an absolute-form target (which RFC 9112 says wins
/// over Host, as in nginx), else the Host header, else the URI authority (HTTP/2).
fn request_host(req: &RequestHeader) -> &str {
    absolute_authority(req)
        .or_else(|| req.headers.get(header::HOST).and_then(|v| v.to_str().ok()))
        .or_else(|| req.uri.authority().map(|a| a.as_str()))
        .unwrap_or("")
}

/// The authority of an HTTP/1 absolute-form request target (`GET http://host/path`).
fn absolute_authority(req: &RequestHeader) -> Option<&str> {
    let raw = req.raw_path();
    let rest = [&b"http://"[..], b"https://"].iter().find_map(|scheme| {
        (raw.len() > scheme.len() && raw[..scheme.len()].eq_ignore_ascii_case(scheme))
            .then(|| &raw[scheme.len()..])
    })?;
    let end = rest
        .iter()
        .position(|&b| matches!(b, b'/' | b'?' | b'#'))
        .unwrap_or(rest.len());
    std::str::from_utf8(&rest[..end]).ok()
}

fn peer_ip(session: &Session) -> Option<IpAddr> {
    session
        .client_addr()
        .and_then(|a| a.as_inet())
        .map(|a| a.ip())
}

/// Value of cookie `name` in the request's Cookie headers.
pub fn cookie<'a>(req: &'a RequestHeader, name: &str) -> Option<&'a str> {
    crate::util::cookie(req, name)
}

/// Value of parameter `name` in a query string (not percent-decoded).
pub fn query_value<'a>(query: Option<&'a str>, name: &str) -> Option<&'a str> {
    crate::util::query_value(query, name)
}

/// Value of query parameter `name` of the request (not percent-decoded).
pub fn query_param<'a>(req: &'a RequestHeader, name: &str) -> Option<&'a str> {
    query_value(req.uri.query(), name)
}

impl Gateway {
    /// Counts the request against a route's rate limit: `Err(wait)` when refused.
    fn check_rate(
        &self,
        limit: &limits::RateLimit,
        session: &Session,
        ctx: &Ctx,
    ) -> Result<(), Duration> {
        let req = session.req_header();
        let named = match &limit.key {
            limits::LimitKey::ClientIp => None,
            limits::LimitKey::Header(h) => req.headers.get(h).map(|v| v.as_bytes()),
            limits::LimitKey::Cookie(c) => cookie(req, c).map(str::as_bytes),
            limits::LimitKey::Filter => ctx
                .extensions
                .get::<crate::filter::RateLimitKey>()
                .map(|k| k.0.as_bytes()),
        };
        if let Some(key) = named {
            return limit.check(key);
        }
        // No key of its own (or keyed by address): the client address, which a client
        // cannot choose (X-Forwarded-For only from trusted proxies).
        let ip = peer_ip(session).map(|peer| self.forwarded.client_ip(peer, req));
        match ip {
            Some(IpAddr::V4(v4)) => limit.check(&v4.octets()),
            Some(IpAddr::V6(v6)) => limit.check(&v6.octets()),
            None => limit.check(b""),
        }
    }

    /// Answers a request over its route's rate limit: 429 (or the configured status) with
    /// `Retry-After`.
    async fn refuse_rate(
        &self,
        session: &mut Session,
        route: &router::Route,
        limit: &limits::RateLimit,
        wait: Duration,
    ) -> Result<bool> {
        let client = session
            .client_addr()
            .map_or_else(|| "-".to_string(), |a| a.to_string());
        limit.log_refusal(&route.name, &client);
        let retry = limits::retry_after_secs(wait);
        respond(
            session,
            limit.status,
            &[
                text_plain(),
                (header::RETRY_AFTER, header::HeaderValue::from(retry)),
            ],
            Bytes::from_static(b"429 too many requests\n"),
            None,
        )
        .await?;
        Ok(true)
    }

    /// Accounts for sending the request to backend `idx` and returns its peer.
    fn use_backend(&self, pool: &Pool, idx: usize, ctx: &mut Ctx) -> Box<HttpPeer> {
        ctx.tried.insert(idx);
        ctx.attempts += 1;
        ctx.backend = Some(idx);
        // A retry's guard replaces (and so releases) the previous backend's.
        ctx.in_flight = Some(pool.begin_request(idx));
        ctx.peer_at = Some(std::time::Instant::now());
        pool.backends[idx].peer(ctx.upgrade)
    }

    /// The backend for this attempt of the request: its pin (sid, cookie) or the balancer's
    /// choice among the untried ones.
    fn choose_peer(&self, pool: &Pool, session: &Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        // A sid pin holds for retries too: no other node knows the session (if the node is
        // gone, the connect fails and the client gets "Session ID unknown"). A cookie pin is a
        // preference: a retry is balanced.
        let pinned = if ctx.pin.by_sid {
            ctx.pin.backend
        } else {
            ctx.pin.backend.take()
        };
        if let Some(idx) = pinned {
            return Ok(self.use_backend(pool, idx, ctx));
        }
        let req = session.req_header();
        let mut ip_buf = [0u8; 16];
        let key: Option<&[u8]> = match (&pool.hash_key, pool.balance) {
            (_, b) if b != crate::config::Balance::ConsistentHash => None,
            (HashKey::ClientIp, _) => ctx.client_ip.map(|ip| match ip {
                IpAddr::V4(v4) => {
                    ip_buf[..4].copy_from_slice(&v4.octets());
                    &ip_buf[..4]
                }
                IpAddr::V6(v6) => {
                    ip_buf = v6.octets();
                    &ip_buf[..]
                }
            }),
            (HashKey::Header(h), _) => req.headers.get(h).map(|v| v.as_bytes()),
            (HashKey::Cookie(c), _) => cookie(req, c).map(str::as_bytes),
            (HashKey::Query(q), _) => query_param(req, q).map(str::as_bytes),
        };
        let Some(idx) = pool.select(key, &ctx.tried) else {
            log::warn!(
                "upstream {}: no usable backend for {} {} ({} of {} up, {} tried)",
                pool.name,
                req.method,
                req.uri,
                pool.usable_count(),
                pool.backends.len(),
                ctx.attempts
            );
            let status = if ctx.attempts > 0 { 502 } else { 503 };
            return Error::e_explain(
                ErrorType::HTTPStatus(status),
                format!("upstream {}: no usable backend", pool.name),
            );
        };
        Ok(self.use_backend(pool, idx, ctx))
    }

    fn affinity<'a>(&self, ctx: &'a Ctx) -> Option<(&'a Pool, &'a Affinity)> {
        let pool = ctx.pool.as_deref()?;
        Some((pool, pool.affinity.as_ref()?))
    }
}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = Ctx;

    fn new_ctx(&self) -> Ctx {
        Ctx::new()
    }

    /// Pingora's response compression module only when a route has the `compress` filter (the
    /// only thing that turns it on): installed but off, it still cost every request about a
    /// thousand instructions (a context built and five hook calls, each a boxed future).
    fn init_downstream_modules(&self, modules: &mut pingora_core::modules::http::HttpModules) {
        let compress = self
            .rt
            .router
            .routes()
            .iter()
            .any(|r| r.filters.has::<crate::filter::CompressFilter>());
        if compress {
            modules.add_module(
                pingora_core::modules::http::compression::ResponseCompressionBuilder::enable(0),
            );
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        // Routed by the normalised path, so a denied path has one spelling (see normalize.rs).
        let norm = normalize::normalize(session.req_header().uri.path()).map(|p| match p {
            Cow::Borrowed(_) => None,
            Cow::Owned(p) => Some(p),
        });
        match norm {
            Ok(norm) => ctx.norm_path = norm,
            Err(e) => return refuse_path(session, &e).await,
        }
        let req = session.req_header();
        let router = &self.rt.router;
        let websocket = router.has_upgrade_routes() && router::is_websocket_upgrade(req);
        let found = router.find_request(request_host(req), ctx.path(req), websocket);
        let Some((idx, route)) = found else {
            respond(
                session,
                404,
                &[text_plain()],
                Bytes::from_static(b"404 no route\n"),
                None,
            )
            .await?;
            return Ok(true);
        };
        // The URI holds a lossy rendering of a non-UTF-8 target: its normalised form cannot
        // be sent upstream without changing those bytes. (Pingora's HTTP/1 parser refuses
        // such targets today; this keeps the rule should one get through.)
        if ctx.norm_path.is_some() && !route.raw_path && !req.raw_path_is_utf8() {
            return refuse_path(session, &"not UTF-8 and not in normal form").await;
        }
        ctx.route = Some(idx);
        if !self.rt.redirect_ports.is_empty() && !route.allow_http {
            let port = self.local_port(session, is_tls(session));
            if port.is_some_and(|p| self.rt.redirect_ports.contains(&p)) {
                let loc = https_location(session.req_header(), self.rt.https_port);
                respond(session, 301, &[(header::LOCATION, loc)], Bytes::new(), None).await?;
                return Ok(true);
            }
        }
        // A limit keyed by a filter's value is counted after the filters ran.
        let limit = route.rate_limit.as_ref();
        if let Some(limit) = limit.filter(|l| l.key != limits::LimitKey::Filter) {
            if let Err(wait) = self.check_rate(limit, session, ctx) {
                let counters = self.rt.metrics.route(Some(idx));
                counters.rate_limited.fetch_add(1, Relaxed);
                return self.refuse_rate(session, route, limit, wait).await;
            }
        }
        if let Some(max) = route.max_body {
            let req = session.req_header();
            let declared = req
                .headers
                .get(header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok());
            if declared.is_some_and(|n| n > max) {
                let counters = self.rt.metrics.route(Some(idx));
                counters.body_too_large.fetch_add(1, Relaxed);
                log::info!(
                    "{}: request body of {} bytes is over max_body {max}: 413",
                    route.name,
                    declared.unwrap_or(0)
                );
                // The body is not read: the connection cannot carry another request.
                session.set_keepalive(None);
                respond(
                    session,
                    413,
                    &[text_plain()],
                    Bytes::from_static(b"413 request body too large\n"),
                    None,
                )
                .await?;
                return Ok(true);
            }
        }
        // Boxed (as the answers above): a route without filters keeps the future small.
        if !route.filters.is_empty() {
            let fwd = &self.forwarded;
            let flow = Box::pin(route.filters.request(&route.name, fwd, session, ctx));
            if flow.await? == Flow::Done {
                return Ok(true);
            }
        }
        if let Some(limit) = limit.filter(|l| l.key == limits::LimitKey::Filter) {
            if let Err(wait) = self.check_rate(limit, session, ctx) {
                let counters = self.rt.metrics.route(Some(idx));
                counters.rate_limited.fetch_add(1, Relaxed);
                return self.refuse_rate(session, route, limit, wait).await;
            }
        }
        match &route.action {
            Action::Proxy { pool } => {
                let pool = match ctx.extensions.get::<crate::filter::Upstream>() {
                    None => *pool,
                    Some(u) => match self.rt.pool_index.get(u.0.as_str()) {
                        Some(&i) => i,
                        None => {
                            log::warn!(
                                "{}: a filter chose unknown pool \"{}\": 502",
                                route.name,
                                u.0
                            );
                            respond(
                                session,
                                502,
                                &[text_plain()],
                                Bytes::from_static(b"502 bad gateway\n"),
                                None,
                            )
                            .await?;
                            return Ok(true);
                        }
                    },
                };
                // The request keeps this snapshot of the pool, whatever discovery publishes.
                ctx.pool = Some(self.rt.pools[pool].load());
                let Some(p) = ctx.pool.as_deref() else {
                    return Ok(false);
                };
                if let Some(aff) = &p.affinity {
                    let req = session.req_header();
                    let usable = |i: usize| p.backends.get(i).is_some_and(|b| b.usable());
                    let start = ctx.start;
                    let now = || ms_at(start);
                    match affinity::pin(aff, req, ctx.path(req), usable, now, &p.name) {
                        Ok(pin) => ctx.pin = pin,
                        Err(refusal) => {
                            let body = match refusal {
                                affinity::Refusal::SessionUnknown => {
                                    p.stats.session_unknown.fetch_add(1, Relaxed);
                                    log::info!("upstream {}: sid of {} names a backend that is down: Session ID unknown", p.name, req.uri);
                                    affinity::SESSION_UNKNOWN
                                }
                                affinity::Refusal::SeveralSids => {
                                    log::info!(
                                        "upstream {}: {} carries several sids: refused",
                                        p.name,
                                        req.uri
                                    );
                                    affinity::BAD_REQUEST
                                }
                            };
                            respond(session, 400, &[json_ct()], Bytes::from_static(body), None)
                                .await?;
                            return Ok(true);
                        }
                    }
                }
                // Only the client_ip hash key needs the resolved client address.
                if p.balance == crate::config::Balance::ConsistentHash
                    && p.hash_key == HashKey::ClientIp
                {
                    if let Some(peer) = peer_ip(session) {
                        ctx.client_ip = Some(self.forwarded.client_ip(peer, session.req_header()));
                    }
                }
                if session.is_upgrade_req() {
                    let Some(slot) = p.upgrade_slot() else {
                        log::warn!(
                            "upstream {}: max_upgraded connections open: upgrade refused with 503",
                            p.name
                        );
                        respond(
                            session,
                            503,
                            &[text_plain()],
                            Bytes::from_static(b"503 too many upgraded connections\n"),
                            None,
                        )
                        .await?;
                        return Ok(true);
                    };
                    ctx.upgrade_slot = Some(slot);
                    ctx.upgrade = true;
                    // Pingora reads the upgraded client stream with the downstream read timeout
                    // (60 s by default): give it the pool's idle timeout instead.
                    session.set_read_timeout(Some(p.timeouts.idle));
                }
                Ok(false)
            }
            Action::Respond {
                status,
                headers,
                body,
            } => {
                respond(
                    session,
                    *status,
                    headers,
                    body.clone(),
                    Some(&route.response_headers),
                )
                .await?;
                Ok(true)
            }
            Action::Redirect {
                status,
                to,
                keep_path,
            } => {
                let mut location = to.clone();
                if *keep_path {
                    let req = session.req_header();
                    // The prefix was matched in the normalised path.
                    let rest = ctx.path(req).get(route.prefix_len()..).unwrap_or("");
                    if location.ends_with('/') && rest.starts_with('/') {
                        location.pop();
                    }
                    location.push_str(rest);
                    if let Some(q) = req.uri.query() {
                        location.push('?');
                        location.push_str(q);
                    }
                }
                let loc = header::HeaderValue::try_from(location).map_err(|e| {
                    Error::because(ErrorType::InternalError, "bad redirect target", e)
                })?;
                respond(
                    session,
                    *status,
                    &[(header::LOCATION, loc)],
                    Bytes::new(),
                    Some(&route.response_headers),
                )
                .await?;
                Ok(true)
            }
            Action::Static(files) => {
                let req = session.req_header();
                // Looked up by the normalised path after strip_prefix / rewrite.
                let url_path = ctx.path(req).to_string();
                let path = route.rewrite.apply(&url_path, None);
                let path = path.as_deref().unwrap_or(&url_path);
                Box::pin(files.serve(session, path, &url_path, &route.response_headers)).await?;
                Ok(true)
            }
        }
    }

    async fn upstream_peer(&self, session: &mut Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        // Lent out of the context for the choice (no refcount traffic), then put back.
        let Some(pool) = ctx.pool.take() else {
            return Error::e_explain(ErrorType::InternalError, "no pool selected");
        };
        let peer = self.choose_peer(&pool, session, ctx);
        ctx.pool = Some(pool);
        peer
    }

    fn upstream_peer_done(&self, peer: Box<HttpPeer>, ctx: &mut Ctx) {
        // The peer came from this snapshot's backend `ctx.backend` (`use_backend`).
        if let (Some(pool), Some(idx)) = (ctx.pool.as_deref(), ctx.backend) {
            if let Some(b) = pool.backends.get(idx) {
                b.peer_done(peer, ctx.upgrade);
            }
        }
    }

    async fn connected_to_upstream(
        &self,
        _session: &mut Session,
        reused: bool,
        _peer: &HttpPeer,
        #[cfg(unix)] _fd: std::os::unix::io::RawFd,
        #[cfg(windows)] _sock: std::os::windows::io::RawSocket,
        _digest: Option<&pingora_core::protocols::Digest>,
        ctx: &mut Ctx,
    ) -> Result<()> {
        // A kept-alive connection took no connecting (nginx logs 0 for it too), and the
        // clock read is saved on the common path.
        ctx.connect_time = ctx
            .peer_at
            .map(|t| if reused { Duration::ZERO } else { t.elapsed() });
        Ok(())
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        let Some(route) = ctx.route.map(|r| self.rt.router.get(r)) else {
            return Ok(());
        };
        // An absolute-form target goes upstream in origin form, its authority as Host (what
        // the route was chosen by), as nginx sends it.
        if let Some(authority) = absolute_authority(upstream_request) {
            let host = header::HeaderValue::from_str(authority).map_err(|e| {
                Error::because(ErrorType::InvalidHTTPHeader, "request target authority", e)
            })?;
            let origin = upstream_request
                .uri
                .path_and_query()
                .cloned()
                .map_or_else(|| http::Uri::from_static("/"), http::Uri::from);
            upstream_request.set_uri(origin);
            upstream_request.insert_header(header::HOST, host)?;
        }
        if let Some(pq) = upstream_path(route, ctx, upstream_request) {
            let uri = http::Uri::try_from(pq).map_err(|e| {
                Error::because(
                    ErrorType::InvalidHTTPHeader,
                    "upstream path is not a valid URI",
                    e,
                )
            })?;
            upstream_request.set_uri(uri);
        }
        if ctx.pin.strip_tag {
            if let Some(pq) =
                affinity::strip_sid_tag(upstream_request.uri.path(), upstream_request.uri.query())
            {
                let uri = http::Uri::try_from(pq)
                    .map_err(|e| Error::because(ErrorType::InvalidHTTPHeader, "sid rewrite", e))?;
                upstream_request.set_uri(uri);
            }
        }
        let tls = is_tls(session);
        let local_port = self.local_port(session, tls);
        let peer = peer_ip(session);
        // Nothing reads the forwarded headers back on a route without header rules and
        // filters: there they go on the wire only, without map inserts.
        if route.request_headers.is_empty() && route.filters.is_empty() {
            self.forwarded
                .apply_on_wire(upstream_request, peer, tls, local_port);
        } else {
            self.forwarded
                .apply(upstream_request, peer, tls, local_port);
        }
        route.request_headers.apply(upstream_request);
        // Checked here too: a route without filters builds no filter-chain future.
        if !route.filters.is_empty() {
            let fwd = &self.forwarded;
            route
                .filters
                .upstream_request(&route.name, fwd, session, upstream_request, ctx)
                .await?;
        }
        Ok(())
    }

    async fn upstream_response_filter(
        &self,
        _session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        ctx.response_time = ctx.peer_at.map(|t| t.elapsed());
        if let (Some(p), Some(t), true) = (&ctx.pool, ctx.response_time, self.rt.metrics.on) {
            p.stats.response_time.observe(t.as_secs_f64());
        }
        if let (Some(p), Some(b)) = (&ctx.pool, ctx.backend) {
            p.report_success(b);
        }
        let mut tag_body = false;
        if let (Some((_, aff)), Some(b)) = (self.affinity(ctx), ctx.backend) {
            let status = resp.status.as_u16();
            if ctx.pin.handshake && status == 200 {
                if resp.headers.contains_key(header::CONTENT_ENCODING) {
                    log::debug!("Socket.IO handshake response is encoded: sid left untagged");
                } else {
                    tag_body = true;
                }
                // engine.io's optional `io` cookie names the sid too.
                for v in resp.headers.get_all(header::SET_COOKIE) {
                    if let Some(sid) = v
                        .to_str()
                        .ok()
                        .and_then(|c| c.strip_prefix("io="))
                        .and_then(|c| c.split(';').next())
                    {
                        aff.table
                            .insert(sid, b, affinity::DEFAULT_SESSION_TTL_MS, now_ms());
                    }
                }
            }
            ctx.check_unknown = status == 400 && ctx.pin.sid_key.is_some();
        }
        ctx.tag_body |= tag_body;
        Ok(())
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        if ctx.tag_body {
            // The tagged body is longer; its length is known only once it has arrived.
            resp.remove_header(&header::CONTENT_LENGTH);
            if session.req_header().version == http::Version::HTTP_11 {
                resp.insert_header(header::TRANSFER_ENCODING, "chunked")?;
            }
        }
        if let (Some((_, aff)), Some(b)) = (self.affinity(ctx), ctx.backend) {
            if let Some(c) = &aff.cookie {
                if ctx.pin.cookie_backend != Some(b) {
                    let tls = is_tls(session);
                    resp.append_header(header::SET_COOKIE, c.set_cookie(b, tls).clone())?;
                }
            }
        }
        if let Some(r) = ctx.route {
            let route = self.rt.router.get(r);
            route.response_headers.apply(resp);
            if !route.filters.is_empty() {
                let fwd = &self.forwarded;
                route
                    .filters
                    .response(&route.name, fwd, session, resp, ctx)
                    .await?;
            }
        }
        Ok(())
    }

    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut Ctx,
    ) -> Result<()> {
        // A body without Content-Length (chunked) is counted as it streams.
        if let (Some(b), Some(r)) = (body.as_ref(), ctx.route) {
            ctx.body_bytes += b.len() as u64;
            if let Some(max) = self.rt.router.get(r).max_body {
                if ctx.body_bytes > max && !ctx.detached {
                    let counters = self.rt.metrics.route(Some(r));
                    counters.body_too_large.fetch_add(1, Relaxed);
                    log::info!(
                        "{}: request body over max_body {max}: 413",
                        self.rt.router.get(r).name
                    );
                    return Error::e_explain(
                        ErrorType::HTTPStatus(413),
                        format!("request body over max_body {max}"),
                    );
                }
            }
        }
        Ok(())
    }

    fn response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut Ctx,
    ) -> Result<Option<Duration>> {
        if end_of_stream && !ctx.upgrade {
            // The backend is done with this request once its body is in: least_conn must
            // not count it while the last chunk is still on its way to the client.
            ctx.in_flight = None;
        }
        if ctx.check_unknown {
            if let (Some(b), Some(key), Some((_, aff))) =
                (body.as_ref(), ctx.pin.sid_key, self.affinity(ctx))
            {
                if affinity::is_session_unknown(b) {
                    aff.table.remove_key(key);
                }
            }
        }
        if !ctx.tag_body {
            return Ok(None);
        }
        if let Some(chunk) = body.take() {
            ctx.body_buf.extend_from_slice(&chunk);
        }
        if ctx.body_buf.len() > MAX_HANDSHAKE_BODY {
            log::debug!(
                "Socket.IO handshake body over {MAX_HANDSHAKE_BODY} bytes: passed through untagged"
            );
            ctx.tag_body = false;
            *body = Some(Bytes::from(std::mem::take(&mut ctx.body_buf)));
            return Ok(None);
        }
        if end_of_stream {
            ctx.tag_body = false;
            let buf = std::mem::take(&mut ctx.body_buf);
            let tagged = match (self.affinity(ctx), ctx.backend) {
                (Some((pool, aff)), Some(b)) => {
                    affinity::tag_handshake(&buf, &pool.backends[b].tag).inspect(|t| {
                        pool.backends[b].stats.sio_handshakes.fetch_add(1, Relaxed);
                        aff.table.insert(
                            &t.sid,
                            b,
                            t.heartbeat_ms
                                .map_or(affinity::DEFAULT_SESSION_TTL_MS, |h| h + 5_000),
                            now_ms(),
                        );
                    })
                }
                _ => None,
            };
            *body = Some(match tagged {
                Some(t) => Bytes::from(t.body),
                None => {
                    log::debug!(
                        "Socket.IO handshake body is not an open packet: passed through untagged"
                    );
                    Bytes::from(buf)
                }
            });
        }
        Ok(None)
    }

    // Adapted from Pingora 0.9.1's default `ProxyHttp::fail_to_proxy` (the status mapping and
    // `respond_error`), plus the Socket.IO "Session ID unknown" answer and 408 for slow
    // bodies: compare with it on a Pingora upgrade.
    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut Ctx) -> FailToProxy {
        if ctx.session_lost {
            if let Some(p) = &ctx.pool {
                p.stats.session_unknown.fetch_add(1, Relaxed);
            }
            // The node that owns this Socket.IO session is unreachable: tell the client, so
            // it reconnects through the gateway to a live node.
            let _ = respond(
                session,
                400,
                &[json_ct()],
                Bytes::from_static(affinity::SESSION_UNKNOWN),
                None,
            )
            .await;
            return FailToProxy {
                error_code: 400,
                can_reuse_downstream: false,
            };
        }
        let code = match e.etype() {
            ErrorType::HTTPStatus(code) => *code,
            _ => match e.esource() {
                ErrorSource::Upstream => 502,
                ErrorSource::Downstream => match e.etype() {
                    ErrorType::WriteError | ErrorType::ReadError | ErrorType::ConnectionClosed => 0,
                    // A request body slower than `listeners[].client` allows (nginx: 408).
                    ErrorType::ReadTimedout => 408,
                    _ => 400,
                },
                ErrorSource::Internal | ErrorSource::Unset => 500,
            },
        };
        if code > 0 {
            if let Err(e) = session.respond_error(code).await {
                log::debug!("failed to send error response to downstream: {e}");
            }
        }
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        peer: &HttpPeer,
        ctx: &mut Ctx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        if let (Some(pool), Some(b)) = (ctx.pool.clone(), ctx.backend) {
            let pool = &*pool;
            if crate::upstream::is_local_resource_error(&e) {
                // Out of descriptors (or memory, ports) here: not the backend's fault, and
                // another backend would fail the same way.
                log::warn!("upstream {} backend {peer}: cannot connect: {e}", pool.name);
                e.set_retry(false);
                return e;
            }
            pool.report_failure(b);
            if ctx.pin.by_sid {
                log::warn!(
                    "upstream {} backend {} owning a Socket.IO session is unreachable: {e}",
                    pool.name,
                    peer
                );
                ctx.session_lost = true;
                e.set_retry(false);
                return e;
            }
            // Nothing has been sent yet, so trying another backend is safe for any method.
            let more = ctx.attempts <= pool.retries && ctx.attempts < pool.backends.len();
            log::warn!(
                "upstream {} backend {} connect failed ({}): {}",
                pool.name,
                peer,
                if more { "retrying" } else { "giving up" },
                e
            );
            e.set_retry(more);
        }
        e
    }

    // Adapted from Pingora 0.9.1's default `ProxyHttp::error_while_proxy` (retry decision),
    // plus the passive-health report: compare with it on a Pingora upgrade.
    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut Ctx,
        client_reused: bool,
    ) -> Box<Error> {
        if e.esource() == &ErrorSource::Upstream {
            if let (Some(p), Some(b)) = (&ctx.pool, ctx.backend) {
                p.report_failure(b);
            }
        }
        let mut e = e.more_context(format!("Peer: {peer}"));
        if !session.req_header().method.is_idempotent() || session.as_ref().retry_buffer_truncated()
        {
            e.set_retry(false);
        } else {
            e.retry.decide_reuse(client_reused);
        }
        e
    }

    fn detach_upgrade(&self, _session: &Session, ctx: &mut Ctx) -> bool {
        // Every upgraded connection to a pool is relayed by a small task of its own once the
        // 101 is out (no user filter sees upgraded bytes).
        ctx.upgrade && ctx.pool.is_some()
    }

    fn upgrade_detached(&self, session: &mut Session, ctx: &mut Ctx) -> DetachedTunnel {
        ctx.detached = true;
        let idle = ctx.pool.as_ref().map(|p| p.timeouts.idle);
        // The backend stays busy (least_conn) until the tunnel closes.
        let in_flight = ctx.in_flight.take();
        let slot = ctx.upgrade_slot.take();
        let websocket = match (&ctx.pool, ctx.backend) {
            (Some(p), Some(b)) => {
                if ctx.pin.by_sid {
                    p.backends[b].stats.sio_upgrades.fetch_add(1, Relaxed);
                }
                // The session runs over this WebSocket now: the tunnel counts it.
                if let (Some(a), Some(k)) = (&p.affinity, ctx.pin.sid_key) {
                    a.table.mark_upgraded(k);
                }
                Some(p.open_websocket(b, ctx.pin.socketio))
            }
            _ => None,
        };
        let line = log::log_enabled!(target: "access", log::Level::Info)
            .then(|| self.access_line(session, ctx));
        let start = ctx.start;
        let (rt, route) = (self.rt.clone(), ctx.route);
        DetachedTunnel {
            idle_timeout: idle,
            on_close: Some(Box::new(move |stats: &TunnelStats| {
                drop(websocket);
                drop(in_flight);
                drop(slot);
                rt.metrics
                    .request(route, 101, stats.to_upstream, stats.to_downstream);
                if let Some((head, route, times)) = line {
                    log::info!(
                        target: "access",
                        "{head} {} {route} rt={:.3} {times} upgrade up={} end={:?}",
                        stats.to_downstream,
                        start.elapsed().as_secs_f64(),
                        stats.to_upstream,
                        stats.end,
                    );
                }
            })),
        }
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut Ctx) {
        if let (Some(p), true) = (&ctx.pool, ctx.attempts > 1) {
            let retries = (ctx.attempts - 1) as u64;
            p.stats.retries.fetch_add(retries, Relaxed);
        }
        if !ctx.detached {
            let status = session.response_written().map_or(0, |r| r.status.as_u16());
            let sent = session.body_bytes_sent() as u64;
            self.rt
                .metrics
                .request(ctx.route, status, ctx.body_bytes, sent);
        }
        if let Some(route) = ctx.route.map(|r| self.rt.router.get(r)) {
            if !route.filters.is_empty() {
                route
                    .filters
                    .logging(&route.name, &self.forwarded, session, ctx)
                    .await;
            }
        }
        // A detached tunnel logs when it closes.
        if ctx.detached || !log::log_enabled!(target: "access", log::Level::Info) {
            return;
        }
        let (head, route, times) = self.access_line(session, ctx);
        log::info!(
            target: "access",
            "{head} {} {route} rt={:.3} {times}{}{}",
            session.body_bytes_sent(),
            ctx.start.elapsed().as_secs_f64(),
            if ctx.upgrade { " upgrade" } else { "" },
            e.map_or_else(String::new, |e| format!(" error=\"{}\"", e.etype().as_str())),
        );
    }
}

impl Gateway {
    /// The parts of an access-log line around the byte count and the total time:
    /// `client "request" status`, `route= upstream=` and `uct= urt=`.
    fn access_line(&self, session: &Session, ctx: &Ctx) -> (String, String, String) {
        let pool = ctx.pool.as_deref();
        let req = session.req_header();
        let status = session.response_written().map_or(0, |r| r.status.as_u16());
        let ms = |d: Option<Duration>| {
            d.map_or_else(|| "-".to_string(), |d| format!("{:.3}", d.as_secs_f64()))
        };
        let upstream = match (pool, ctx.backend) {
            (Some(p), Some(b)) => format!("{}/{}", p.name, p.backends[b].addr),
            (Some(p), None) => format!("{}/-", p.name),
            _ => "-".into(),
        };
        let head = format!(
            "{} \"{} {} {:?}\" {}",
            session
                .client_addr()
                .map_or_else(|| "-".to_string(), |a| a.to_string()),
            req.method,
            req.uri,
            req.version,
            status,
        );
        let route = format!(
            "route={} upstream={}",
            ctx.route
                .map_or("-", |r| self.rt.router.get(r).name.as_str()),
            upstream,
        );
        // The request id (`request_id` filter, or another filter's) when there is one.
        let rid = ctx.extensions.get::<crate::filter::RequestId>();
        let rid = rid
            .and_then(|r| r.0.to_str().ok())
            .map_or_else(String::new, |r| format!(" rid={r}"));
        let times = format!(
            "uct={} urt={}{rid}",
            ms(ctx.connect_time),
            ms(ctx.response_time)
        );
        (head, route, times)
    }
}
