//! Built-in `cors` filter: Cross-Origin Resource Sharing for the routes that list it (there
//! is none elsewhere, so a backend's own CORS, such as Socket.IO's `cors` option, passes
//! through untouched on other routes).
//!
//! ```yaml
//! filters:
//!   - name: cors
//!     config:
//!       allow_origins: ["https://app.example", "http://localhost:3000"]  # or ["*"]
//!       allow_methods: [GET, POST, PUT, DELETE]   # (default: GET, HEAD, POST); "*": as asked
//!       allow_headers: [Content-Type, Authorization]  # (default: none); "*": as asked
//!       expose_headers: [X-Request-Id]            # (default: none)
//!       allow_credentials: false                  # (default: false)
//!       max_age: 10m                              # preflight cache (default: none)
//! ```
//!
//! - A preflight (`OPTIONS` with `Origin` and `Access-Control-Request-Method`) is answered by
//!   the gateway with a 204: with `Access-Control-Allow-Origin` (the origin, or `*`),
//!   `-Allow-Methods`, `-Allow-Headers`, `-Max-Age` and `-Allow-Credentials` when the origin is
//!   allowed, with none of them when it is not (the browser then refuses the request). It does
//!   not reach the backend.
//! - Any other response to an allowed origin gets `Access-Control-Allow-Origin`,
//!   `-Allow-Credentials` and `-Expose-Headers`; a disallowed origin gets no CORS header.
//!   Unless the origins are `*`, every response also gets `Vary: Origin` (caches).
//! - A response that already has `Access-Control-Allow-Origin` (the backend does CORS itself)
//!   is left as the backend sent it.
//! - List `cors` before an authentication filter on the route: a preflight carries no
//!   credentials, and would get the 401. (A filter's own answer, such as that 401, gets no CORS
//!   headers: the page sees a network error rather than the status.)
//! - Origins are compared exactly (ASCII case-insensitively): `scheme://host[:port]`, no path.
//!   `*` answers `Access-Control-Allow-Origin: *` and cannot be combined with
//!   `allow_credentials: true` (that would let any site make credentialed requests): list the
//!   origins instead.

use super::{Filter, Flow, RequestCtx};
use crate::config::Dur;
use async_trait::async_trait;
use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use pingora_core::Result;
use pingora_http::ResponseHeader;
use serde::Deserialize;

/// Config of the `cors` filter (see the [module docs](self)).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CorsConfig {
    /// Allowed origins (`scheme://host[:port]`), or `"*"`.
    pub allow_origins: Vec<String>,
    /// Methods a preflight allows (`GET, HEAD, POST`); `"*"`: the one asked for.
    #[serde(default = "default_methods")]
    pub allow_methods: Vec<String>,
    /// Request headers a preflight allows (none); `"*"`: the ones asked for.
    #[serde(default)]
    pub allow_headers: Vec<String>,
    /// Response headers the page may read (`Access-Control-Expose-Headers`) (none).
    #[serde(default)]
    pub expose_headers: Vec<String>,
    /// `Access-Control-Allow-Credentials: true` (`false`).
    #[serde(default)]
    pub allow_credentials: bool,
    /// `Access-Control-Max-Age` of a preflight (none).
    #[serde(default)]
    pub max_age: Option<Dur>,
}

fn default_methods() -> Vec<String> {
    vec!["GET".into(), "HEAD".into(), "POST".into()]
}

/// A header list from the config: a fixed value, or the request's own (`"*"`).
enum List {
    None,
    Fixed(HeaderValue),
    Reflect,
}

/// The `cors` filter ([`Registry::with_builtins`](super::Registry::with_builtins)).
pub struct CorsFilter {
    /// Lower-case origins; empty when `any`.
    origins: Vec<String>,
    any: bool,
    methods: List,
    headers: List,
    expose: Option<HeaderValue>,
    credentials: bool,
    max_age: Option<HeaderValue>,
}

const PREFLIGHT_VARY: &str =
    "Origin, Access-Control-Request-Method, Access-Control-Request-Headers";

/// `scheme://host[:port]` with nothing after it.
fn is_origin(s: &str) -> bool {
    let Some((scheme, rest)) = s.split_once("://") else {
        return false;
    };
    let scheme_ok = scheme.starts_with(|c: char| c.is_ascii_alphabetic())
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c));
    let (host, port) = match rest.strip_prefix('[') {
        Some(v6) => match v6.split_once(']') {
            Some((h, p)) => (h, p),
            None => return false,
        },
        None => match rest.rsplit_once(':') {
            Some((h, p)) => (h, rest.get(h.len()..).unwrap_or(p)),
            None => (rest, ""),
        },
    };
    let port_ok = port.is_empty()
        || port.strip_prefix(':').is_some_and(|p| {
            !p.is_empty() && p.len() <= 5 && p.bytes().all(|c| c.is_ascii_digit())
        });
    scheme_ok
        && port_ok
        && !host.is_empty()
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-._~:%".contains(c))
}

fn list(
    key: &str,
    items: &[String],
    check: impl Fn(&str) -> bool,
) -> std::result::Result<List, String> {
    if items.iter().any(|m| m == "*") {
        if items.len() > 1 {
            return Err(format!("{key}: \"*\" stands alone"));
        }
        return Ok(List::Reflect);
    }
    for (i, m) in items.iter().enumerate() {
        if !check(m) {
            return Err(format!("{key}[{i}]: invalid name \"{m}\""));
        }
    }
    if items.is_empty() {
        return Ok(List::None);
    }
    HeaderValue::try_from(items.join(", "))
        .map(List::Fixed)
        .map_err(|_| format!("{key}: not a valid header value"))
}

fn is_header_name(s: &str) -> bool {
    HeaderName::try_from(s).is_ok()
}

impl CorsFilter {
    /// The `Access-Control-Allow-Origin` value for this request's `Origin`, when allowed.
    fn allow_origin(&self, origin: Option<&HeaderValue>) -> Option<HeaderValue> {
        let origin = origin?;
        if self.any {
            return Some(HeaderValue::from_static("*"));
        }
        let o = origin.as_bytes();
        self.origins
            .iter()
            .any(|a| a.as_bytes().eq_ignore_ascii_case(o))
            .then(|| origin.clone())
    }

    /// The preflight answer's headers.
    fn preflight(&self, req: &pingora_http::RequestHeader) -> Vec<(HeaderName, HeaderValue)> {
        let mut out = vec![(header::VARY, HeaderValue::from_static(PREFLIGHT_VARY))];
        let Some(acao) = self.allow_origin(req.headers.get(header::ORIGIN)) else {
            return out;
        };
        out.push((header::ACCESS_CONTROL_ALLOW_ORIGIN, acao));
        if self.credentials {
            out.push((
                header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            ));
        }
        let asked = |h: HeaderName| req.headers.get(h).cloned();
        let methods = match &self.methods {
            List::Fixed(v) => Some(v.clone()),
            List::Reflect => asked(header::ACCESS_CONTROL_REQUEST_METHOD),
            List::None => None,
        };
        if let Some(m) = methods {
            out.push((header::ACCESS_CONTROL_ALLOW_METHODS, m));
        }
        let headers = match &self.headers {
            List::Fixed(v) => Some(v.clone()),
            List::Reflect => asked(header::ACCESS_CONTROL_REQUEST_HEADERS),
            List::None => None,
        };
        if let Some(h) = headers {
            out.push((header::ACCESS_CONTROL_ALLOW_HEADERS, h));
        }
        if let Some(a) = &self.max_age {
            out.push((header::ACCESS_CONTROL_MAX_AGE, a.clone()));
        }
        out
    }
}

/// Whether `resp` already varies on `Origin` (or on everything).
fn varies_on_origin(resp: &ResponseHeader) -> bool {
    resp.headers.get_all(header::VARY).iter().any(|v| {
        v.to_str().is_ok_and(|v| {
            v.split(',')
                .any(|t| t.trim() == "*" || t.trim().eq_ignore_ascii_case("origin"))
        })
    })
}

#[async_trait]
impl Filter for CorsFilter {
    type Config = CorsConfig;
    type State = ();

    fn new(conf: CorsConfig) -> std::result::Result<Self, String> {
        if conf.allow_origins.is_empty() {
            return Err("allow_origins: needs at least one origin (or \"*\")".into());
        }
        let any = conf.allow_origins.iter().any(|o| o == "*");
        let mut origins = Vec::new();
        for (i, o) in conf.allow_origins.iter().enumerate() {
            if o == "*" {
                continue;
            }
            if !is_origin(o) {
                return Err(format!(
                    "allow_origins[{i}]: \"{o}\" is not an origin (scheme://host[:port], no path) or \"*\""
                ));
            }
            origins.push(o.to_ascii_lowercase());
        }
        if any && conf.allow_credentials {
            return Err("allow_origins: \"*\" cannot be used with allow_credentials: true (any site could make credentialed requests): list the origins".into());
        }
        if any {
            origins.clear();
        }
        let methods = list("allow_methods", &conf.allow_methods, |m| {
            http::Method::from_bytes(m.as_bytes()).is_ok()
        })?;
        let headers = list("allow_headers", &conf.allow_headers, is_header_name)?;
        let expose = match list("expose_headers", &conf.expose_headers, is_header_name)? {
            List::None => None,
            List::Fixed(v) => Some(v),
            List::Reflect if conf.allow_credentials => {
                return Err("expose_headers: \"*\" is not honoured with allow_credentials: true: list the headers".into())
            }
            List::Reflect => Some(HeaderValue::from_static("*")),
        };
        Ok(CorsFilter {
            origins,
            any,
            methods,
            headers,
            expose,
            credentials: conf.allow_credentials,
            max_age: conf.max_age.map(|d| HeaderValue::from(d.0.as_secs())),
        })
    }

    async fn request(&self, req: &mut RequestCtx<'_>, _: &mut ()) -> Result<Flow> {
        let h = req.req_header();
        let preflight = h.method == http::Method::OPTIONS
            && h.headers.contains_key(header::ORIGIN)
            && h.headers
                .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
        if !preflight {
            return Ok(Flow::Continue);
        }
        let headers = self.preflight(h);
        req.respond(204, &headers, Bytes::new()).await
    }

    async fn response(
        &self,
        req: &mut RequestCtx<'_>,
        resp: &mut ResponseHeader,
        _: &mut (),
    ) -> Result<()> {
        if resp.status == http::StatusCode::SWITCHING_PROTOCOLS
            || resp
                .headers
                .contains_key(header::ACCESS_CONTROL_ALLOW_ORIGIN)
        {
            return Ok(());
        }
        if !self.any && !varies_on_origin(resp) {
            resp.append_header(header::VARY, HeaderValue::from_static("Origin"))?;
        }
        let Some(acao) = self.allow_origin(req.req_header().headers.get(header::ORIGIN)) else {
            return Ok(());
        };
        resp.insert_header(header::ACCESS_CONTROL_ALLOW_ORIGIN, acao)?;
        if self.credentials {
            resp.insert_header(
                header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            )?;
        }
        if let Some(e) = &self.expose {
            resp.insert_header(header::ACCESS_CONTROL_EXPOSE_HEADERS, e.clone())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conf(origins: &[&str]) -> CorsConfig {
        CorsConfig {
            allow_origins: origins.iter().map(|s| s.to_string()).collect(),
            allow_methods: default_methods(),
            allow_headers: vec![],
            expose_headers: vec![],
            allow_credentials: false,
            max_age: None,
        }
    }

    #[test]
    fn cors_origins_are_validated() {
        for ok in [
            "https://a.example",
            "http://localhost:3000",
            "http://[::1]:8080",
            "app://x",
        ] {
            assert!(is_origin(ok), "{ok}");
        }
        for bad in [
            "https://a.example/",
            "a.example",
            "https://",
            "https://a.example:x",
            "https://a.example/path",
            "https://u@a.example",
            "null",
        ] {
            assert!(!is_origin(bad), "{bad}");
        }
        let Err(e) = CorsFilter::new(conf(&["https://a.example", "https://b.example/"])) else {
            panic!()
        };
        assert!(e.starts_with("allow_origins[1]: \"https://b.example/\" is not an origin"));
        let mut c = conf(&["*"]);
        c.allow_credentials = true;
        assert!(CorsFilter::new(c)
            .err()
            .unwrap()
            .starts_with("allow_origins: \"*\" cannot be used with allow_credentials"));
        let mut c = conf(&["https://a.example"]);
        c.allow_methods = vec!["GET".into(), "B@D".into()];
        assert_eq!(
            CorsFilter::new(c).err().unwrap(),
            "allow_methods[1]: invalid name \"B@D\""
        );
    }

    #[test]
    fn cors_matches_origins_case_insensitively() {
        let f = CorsFilter::new(conf(&["https://A.example"])).unwrap();
        let v = |s: &'static str| HeaderValue::from_static(s);
        assert_eq!(
            f.allow_origin(Some(&v("https://a.example"))),
            Some(v("https://a.example"))
        );
        assert_eq!(f.allow_origin(Some(&v("https://a.example:443"))), None);
        assert_eq!(f.allow_origin(Some(&v("https://b.example"))), None);
        assert_eq!(f.allow_origin(None), None);
        let f = CorsFilter::new(conf(&["*"])).unwrap();
        assert_eq!(f.allow_origin(Some(&v("https://x"))), Some(v("*")));
    }
}
