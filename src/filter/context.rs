//! [`RequestCtx`]: what a filter sees of the request it runs for.

use super::Flow;
use crate::proxy::headers::Forwarded;
use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};
use http::Extensions;
use pingora_core::{Error, ErrorType, Result};
use pingora_http::RequestHeader;
use pingora_proxy::Session;
use std::net::{IpAddr, SocketAddr};

/// The phase a filter method runs in (see the [module docs](super) for their order).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Phase {
    /// [`Filter::request`](super::Filter::request).
    Request,
    /// [`Filter::upstream_request`](super::Filter::upstream_request).
    UpstreamRequest,
    /// [`Filter::response`](super::Filter::response).
    Response,
    /// [`Filter::logging`](super::Filter::logging).
    Logging,
}

/// The request a filter runs for: its header, the client, the route, the
/// [extensions](RequestCtx::extensions) shared by the route's filters and the access log, and
/// [`respond`](RequestCtx::respond) to answer it. The gateway's own per-request state is not
/// reachable from here; a filter keeps its own in [`Filter::State`](super::Filter::State).
pub struct RequestCtx<'a> {
    session: &'a mut Session,
    extensions: &'a mut Extensions,
    route: &'a str,
    forwarded: &'a Forwarded,
    phase: Phase,
}

impl<'a> RequestCtx<'a> {
    pub(crate) fn new(
        session: &'a mut Session,
        extensions: &'a mut Extensions,
        route: &'a str,
        forwarded: &'a Forwarded,
        phase: Phase,
    ) -> RequestCtx<'a> {
        RequestCtx {
            session,
            extensions,
            route,
            forwarded,
            phase,
        }
    }

    /// The phase running now.
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// The request as the client sent it (the gateway's own changes for the backend, such as
    /// `strip_prefix` or forwarded headers, are made on the upstream copy in
    /// [`Filter::upstream_request`](super::Filter::upstream_request)).
    pub fn req_header(&self) -> &RequestHeader {
        self.session.req_header()
    }

    /// The request header, to change it, in the [`Phase::Request`] only (`None` later: the
    /// upstream copy is then the one to edit). Changes are seen by the filters after this one
    /// and are sent upstream; the route has already been chosen.
    pub fn req_header_mut(&mut self) -> Option<&mut RequestHeader> {
        (self.phase == Phase::Request).then(|| self.session.req_header_mut())
    }

    /// The address of the peer of the client connection (a proxy in front, when there is one).
    pub fn client_addr(&self) -> Option<SocketAddr> {
        self.session
            .client_addr()
            .and_then(|a| a.as_inet())
            .copied()
    }

    /// The real client address: the peer, or the address a trusted proxy forwarded
    /// (`forwarded.trusted_proxies`, as for `X-Real-IP`).
    pub fn client_ip(&self) -> Option<IpAddr> {
        let peer = self.client_addr()?.ip();
        Some(self.forwarded.client_ip(peer, self.session.req_header()))
    }

    /// The name of the route that matched, as in logs and config errors (`routes[2]`).
    pub fn route(&self) -> &str {
        self.route
    }

    /// The status of the response sent to the client, once its header is out (in
    /// [`Phase::Logging`]: `None` when none was sent).
    pub fn response_status(&self) -> Option<u16> {
        self.session.response_written().map(|r| r.status.as_u16())
    }

    /// Typed values shared by the route's filters and the gateway for this request (e.g.
    /// [`RequestId`](super::RequestId), which the access log shows as `rid=`).
    pub fn extensions(&self) -> &Extensions {
        self.extensions
    }

    /// The extensions, to add or change a value.
    pub fn extensions_mut(&mut self) -> &mut Extensions {
        self.extensions
    }

    /// Answers the request now, in [`Phase::Request`]: `status`, `headers`, then `body`, with
    /// `Content-Length` computed and no body sent to a `HEAD` request. Returns
    /// [`Flow::Done`], so a filter ends with `return req.respond(...).await;`: no later filter
    /// runs its `request`, and no backend is chosen. An error in any other phase (the response
    /// has started or is the backend's).
    pub async fn respond(
        &mut self,
        status: u16,
        headers: &[(HeaderName, HeaderValue)],
        body: impl Into<Bytes>,
    ) -> Result<Flow> {
        if self.phase != Phase::Request || self.session.response_written().is_some() {
            return Error::e_explain(
                ErrorType::InternalError,
                format!(
                    "{}: a filter can respond only in its request phase, before any response",
                    self.route
                ),
            );
        }
        crate::proxy::respond::respond(self.session, status, headers, body.into()).await?;
        Ok(Flow::Done)
    }

    /// The Pingora session, for the built-in filters that drive one of its modules
    /// (`compress` turns on the response compression module).
    pub(crate) fn session_mut(&mut self) -> &mut Session {
        self.session
    }

    /// Whether a response header has been written to the client already.
    pub(crate) fn responded(&self) -> bool {
        self.session.response_written().is_some()
    }
}
