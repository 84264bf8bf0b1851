//! Complete responses written by the gateway itself (404, 429, fixed `respond:` routes,
//! redirects, a filter's 401): status, headers and a body, with `Content-Length` computed and
//! no body sent to a `HEAD` request.
//!
//! Filters answer through [`crate::filter::RequestCtx::respond`], which calls [`respond`].

use super::headers::HeaderRules;
use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use pingora_core::Result;
use pingora_http::ResponseHeader;
use pingora_proxy::Session;

/// Writes a complete response to the client: `status`, `headers` (in order, repeated names
/// kept), then `body`. `Content-Length` is the body's length (a `Content-Length` in `headers`
/// is replaced); to a `HEAD` request the headers are sent without the body.
pub async fn respond(
    session: &mut Session,
    status: u16,
    headers: &[(HeaderName, HeaderValue)],
    body: Bytes,
) -> Result<()> {
    respond_with_rules(session, status, headers, body, None).await
}

/// [`respond`], then the route's `response_headers` rules applied to the response.
///
/// Boxed: these answers are the rare paths of `request_filter` (404, 301, 429, 413...), and
/// an inline future would make every proxied request's (boxed, moved) future larger.
pub(crate) fn respond_with_rules<'a>(
    session: &'a mut Session,
    status: u16,
    headers: &'a [(HeaderName, HeaderValue)],
    body: Bytes,
    rules: Option<&'a HeaderRules>,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<()>> + Send + 'a>> {
    Box::pin(async move {
        let mut resp = ResponseHeader::build(status, Some(headers.len() + 2))?;
        for (n, v) in headers {
            resp.append_header(n.clone(), v.clone())?;
        }
        resp.insert_header(header::CONTENT_LENGTH, body.len())?;
        if let Some(r) = rules {
            r.apply(&mut resp);
        }
        let head_only = session.req_header().method == http::Method::HEAD;
        session
            .write_response_header(Box::new(resp), body.is_empty() || head_only)
            .await?;
        if !body.is_empty() && !head_only {
            session.write_response_body(Some(body), true).await?;
        }
        Ok(())
    })
}
