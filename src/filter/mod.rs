//! Rust filters: per-route hooks into the request path, named in the config
//! (`routes[].filters: [ { name, config } ]`) and made available by a [`Registry`].
//!
//! A filter is a type implementing [`Filter`]: built once per route entry at load from its
//! typed [`Filter::Config`] (so `gateway -t` reports a bad `config:` with its key path, e.g.
//! `routes[2].filters[0].config.keys: invalid type: sequence, expected a map`), shared by every
//! request on that route, with a per-request [`Filter::State`] of its own that no other filter
//! and not the gateway can touch. What filters share with each other and with the gateway
//! goes in the request's typed [extensions](RequestCtx::extensions) (the built-in
//! `request_id` filter puts a [`RequestId`] there, which the access log shows as `rid=`).
//!
//! # Phases
//!
//! For a request whose route has filters, the hooks run in this order, each over the route's
//! filters in their config order:
//!
//! 1. [`Filter::request`], once the route has matched (no route: 404, no filter runs), after
//!    the gateway's own checks (`redirect_https`, `rate_limit`, a declared body over
//!    `max_body`) and before the route's action (`respond`, `redirect`, or choosing a backend
//!    with affinity). The request header can be changed here
//!    ([`RequestCtx::req_header_mut`]). A filter that answers the request itself
//!    ([`RequestCtx::respond`]) returns [`Flow::Done`]: the filters after it skip `request`,
//!    and no backend is chosen.
//! 2. [`Filter::upstream_request`], on the copy of the request that goes to the backend, after
//!    the gateway's changes (normalised path, `strip_prefix` / `rewrite`, forwarded headers,
//!    `request_headers`). It runs again when a failed connect is retried on another backend.
//! 3. [`Filter::response`], on the backend's response header, after `response_headers`.
//!    Responses the gateway writes itself (404, 429, 502, a `respond:` route, a filter's
//!    `respond`) do not pass through it.
//! 4. [`Filter::logging`], once the request is over, on success or error, also when an
//!    earlier step answered it (a 429, or a filter's 401: then the state is what the phases
//!    that ran left, or its `Default`); then the gateway writes the access log line. For a
//!    WebSocket it runs once the 101 is out (the relayed bytes are not seen by filters).
//!
//! A hook returning an error ends the request (a 500, or the status of an
//! [`ErrorType::HTTPStatus`](pingora_core::ErrorType::HTTPStatus) error).
//!
//! # Example
//!
//! A filter that refuses requests without a known `X-Api-Key`, and tells the backend whose
//! key it is (`examples/api_key_filter.rs` is the complete binary):
//!
//! ```rust
//! use gateway::prelude::*;
//! use std::collections::HashMap;
//!
//! /// `config: { keys: { KEY: OWNER, ... } }`
//! #[derive(serde::Deserialize)]
//! #[serde(deny_unknown_fields)]
//! struct ApiKeyConfig {
//!     keys: HashMap<String, String>,
//! }
//!
//! struct ApiKey {
//!     keys: HashMap<String, String>,
//! }
//!
//! /// Per request: the owner of the key `request` accepted.
//! #[derive(Default)]
//! struct Owner(Option<String>);
//!
//! #[async_trait]
//! impl Filter for ApiKey {
//!     type Config = ApiKeyConfig;
//!     type State = Owner;
//!
//!     fn new(config: ApiKeyConfig) -> Result<Self, String> {
//!         if config.keys.is_empty() {
//!             return Err("keys: needs at least one key".into());
//!         }
//!         Ok(ApiKey { keys: config.keys })
//!     }
//!
//!     async fn request(&self, req: &mut RequestCtx<'_>, owner: &mut Owner) -> Result<Flow> {
//!         let key = req.req_header().headers.get("x-api-key").and_then(|v| v.to_str().ok());
//!         match key.and_then(|k| self.keys.get(k)) {
//!             Some(o) => {
//!                 owner.0 = Some(o.clone());
//!                 Ok(Flow::Continue)
//!             }
//!             None => {
//!                 let challenge = (header::WWW_AUTHENTICATE, HeaderValue::from_static("ApiKey"));
//!                 req.respond(401, &[challenge], "invalid API key\n").await
//!             }
//!         }
//!     }
//!
//!     async fn upstream_request(
//!         &self,
//!         _req: &mut RequestCtx<'_>,
//!         upstream: &mut RequestHeader,
//!         owner: &mut Owner,
//!     ) -> Result<()> {
//!         upstream.remove_header("x-api-key");
//!         if let Some(o) = &owner.0 {
//!             upstream.insert_header("x-api-user", o.as_str())?;
//!         }
//!         Ok(())
//!     }
//! }
//!
//! let mut registry = Registry::with_builtins(); // `request_id`, `basic_auth`, ..., and:
//! registry.register::<ApiKey>("api_key");
//! assert_eq!(
//!     registry.names(),
//!     ["api_key", "basic_auth", "compress", "cors", "ip_filter", "request_id"]
//! );
//!
//! // The config is checked at load, as by `gateway -t`, each problem with its key path.
//! let yaml = r#"
//! listeners: [ { address: "127.0.0.1:8080" } ]
//! upstreams: { api: { servers: [ { address: "127.0.0.1:9000" } ] } }
//! routes:
//!   - { upstream: api, filters: [ { name: api_key, config: { keys: { k-1: alice } } } ] }
//!   - { upstream: api, filters: [ { name: api_key, config: { keys: [ k-1 ] } } ] }
//!   - { upstream: api, filters: [ { name: api_key, config: { keys: {} } } ] }
//! "#;
//! let config = gateway::Config::from_yaml(yaml).unwrap();
//! let Err(e) = gateway::Runtime::compile_with(&config, &registry) else { panic!() };
//! assert_eq!(
//!     e.to_string(),
//!     "routes[1].filters[0].config.keys: invalid type: sequence, expected a map\n\
//!      routes[2].filters[0].config: keys: needs at least one key"
//! );
//! ```
//!
//! The binary's `main` hands the registry to [`crate::run_with`], which serves with the
//! standard command line (`-c`, `-t`, `upgrade`, ...):
//!
//! ```rust,no_run
//! # use gateway::prelude::*;
//! fn main() -> std::process::ExitCode {
//!     let registry = Registry::with_builtins();
//!     // registry.register::<ApiKey>("api_key");
//!     gateway::run_with(registry)
//! }
//! ```

mod basic_auth;
mod compress;
mod context;
mod cors;
mod ip_filter;
mod registry;
mod request_id;

pub use context::{Phase, RequestCtx};

/// Put in the [extensions](RequestCtx::extensions_mut) by a filter in
/// [`Phase::Request`] to send the request to another pool than the route's (by its name in
/// `upstreams:`), e.g. a pool per tenant. Only on routes with an `upstream`; a name that is
/// not a pool gets a 502 with a log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream(pub String);

/// Put in the [extensions](RequestCtx::extensions_mut) by a filter in [`Phase::Request`] to
/// key the route's `rate_limit` (with `key: filter`) by a value the filter knows, such as an
/// authenticated user or an API key's owner, instead of the client address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimitKey(pub String);
pub use basic_auth::{AuthUser, BasicAuthConfig, BasicAuthFilter};
pub use compress::{CompressConfig, CompressFilter};
pub use cors::{CorsConfig, CorsFilter};
pub use ip_filter::{IpFilter, IpFilterConfig};
pub use registry::{Filters, Registry};
pub use request_id::{RequestId, RequestIdConfig, RequestIdFilter};

pub(crate) use registry::{BuildError, FilterSlot};

use async_trait::async_trait;
use pingora_core::Result;
use pingora_http::{RequestHeader, ResponseHeader};
use serde::de::DeserializeOwned;

/// What happens after [`Filter::request`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub enum Flow {
    /// Go on: the next filter, then the route's action.
    Continue,
    /// The filter has answered the request (see [`RequestCtx::respond`]); it ends here.
    Done,
}

/// A per-route hook into the request path. Every phase has a no-op default; see the
/// [module docs](self) for when each runs.
///
/// Implement it with `#[async_trait]` (in [`crate::prelude`]) and make it available under a
/// name with [`Registry::register`].
#[async_trait]
pub trait Filter: Send + Sync + 'static {
    /// The filter entry's `config:` (a missing `config:` is read as `null`, or as `{}` when
    /// `null` does not fit, so a struct whose fields all have defaults needs none). Unknown
    /// keys are refused with `#[serde(deny_unknown_fields)]`.
    type Config: DeserializeOwned + Send;

    /// Per-request state, owned by the filter: created with `Default` the first time one of
    /// the request's hooks runs, dropped with the request. `()` when there is none.
    type State: Default + Send + Sync + 'static;

    /// Builds the filter from its config, at load (`gateway -t` included). An error is
    /// reported as `routes[N].filters[M].config: <error>`; start it with the key it is about
    /// (`"keys: needs at least one key"`).
    fn new(config: Self::Config) -> std::result::Result<Self, String>
    where
        Self: Sized;

    /// After the route matched, before a backend is chosen: check, change the request header,
    /// or answer with [`RequestCtx::respond`] and return [`Flow::Done`].
    async fn request(&self, _req: &mut RequestCtx<'_>, _state: &mut Self::State) -> Result<Flow> {
        Ok(Flow::Continue)
    }

    /// Just before the request goes to the backend: edit `upstream`, the request it gets.
    async fn upstream_request(
        &self,
        _req: &mut RequestCtx<'_>,
        _upstream: &mut RequestHeader,
        _state: &mut Self::State,
    ) -> Result<()> {
        Ok(())
    }

    /// Just before the backend's response header goes to the client: edit it.
    async fn response(
        &self,
        _req: &mut RequestCtx<'_>,
        _resp: &mut ResponseHeader,
        _state: &mut Self::State,
    ) -> Result<()> {
        Ok(())
    }

    /// After the request is over (also on errors): metrics, audit logs.
    async fn logging(&self, _req: &mut RequestCtx<'_>, _state: &mut Self::State) {}
}
