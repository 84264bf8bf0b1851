//! The [`Registry`] of filters by name, the type-erased form the routes hold, and the runs of
//! a route's filters in each phase ([`Filters`]).

use super::context::{Phase, RequestCtx};
use super::{BasicAuthFilter, CompressFilter, CorsFilter, IpFilter};
use super::{Filter, Flow, RequestIdFilter};
use crate::proxy::ctx::Ctx;
use crate::proxy::headers::Forwarded;
use bytes::Bytes;
use pingora_core::Result;
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::Session;
use serde::de::DeserializeOwned;
use std::any::Any;
use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

/// One filter's state for one request, created on first use.
pub(crate) type FilterSlot = Option<Box<dyn Any + Send + Sync>>;

type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A [`Filter`] with its types erased, as a route holds it.
trait ErasedFilter: Send + Sync {
    fn name(&self) -> &str;
    /// The filter's type, for [`Filters::has`].
    fn filter_type(&self) -> std::any::TypeId;
    fn request<'a>(
        &'a self,
        req: &'a mut RequestCtx<'_>,
        slot: &'a mut FilterSlot,
    ) -> BoxFuture<'a, Result<Flow>>;
    fn upstream_request<'a>(
        &'a self,
        req: &'a mut RequestCtx<'_>,
        upstream: &'a mut RequestHeader,
        slot: &'a mut FilterSlot,
    ) -> BoxFuture<'a, Result<()>>;
    fn response<'a>(
        &'a self,
        req: &'a mut RequestCtx<'_>,
        resp: &'a mut ResponseHeader,
        slot: &'a mut FilterSlot,
    ) -> BoxFuture<'a, Result<()>>;
    fn logging<'a>(
        &'a self,
        req: &'a mut RequestCtx<'_>,
        slot: &'a mut FilterSlot,
    ) -> BoxFuture<'a, ()>;
}

struct Erased<F> {
    name: String,
    filter: F,
}

/// The filter's state in `slot`, created with `Default` when the slot is empty.
fn state<S: Default + Send + Sync + 'static>(slot: &mut FilterSlot) -> &mut S {
    if !slot.as_ref().is_some_and(|s| s.is::<S>()) {
        *slot = Some(Box::new(S::default()));
    }
    slot.as_mut()
        .and_then(|s| s.downcast_mut::<S>())
        .expect("the slot holds an S")
}

impl<F: Filter> ErasedFilter for Erased<F> {
    fn name(&self) -> &str {
        &self.name
    }
    fn filter_type(&self) -> std::any::TypeId {
        std::any::TypeId::of::<F>()
    }
    fn request<'a>(
        &'a self,
        req: &'a mut RequestCtx<'_>,
        slot: &'a mut FilterSlot,
    ) -> BoxFuture<'a, Result<Flow>> {
        self.filter.request(req, state(slot))
    }
    fn upstream_request<'a>(
        &'a self,
        req: &'a mut RequestCtx<'_>,
        upstream: &'a mut RequestHeader,
        slot: &'a mut FilterSlot,
    ) -> BoxFuture<'a, Result<()>> {
        self.filter.upstream_request(req, upstream, state(slot))
    }
    fn response<'a>(
        &'a self,
        req: &'a mut RequestCtx<'_>,
        resp: &'a mut ResponseHeader,
        slot: &'a mut FilterSlot,
    ) -> BoxFuture<'a, Result<()>> {
        self.filter.response(req, resp, state(slot))
    }
    fn logging<'a>(
        &'a self,
        req: &'a mut RequestCtx<'_>,
        slot: &'a mut FilterSlot,
    ) -> BoxFuture<'a, ()> {
        self.filter.logging(req, state(slot))
    }
}

/// Why a filter entry could not be built.
pub(crate) enum BuildError {
    /// No filter of that name: reported at `filters[N].name`.
    UnknownName(String),
    /// The `config:` is wrong: reported at `filters[N].config` + `path` (`""`, `".keys"`).
    Config { path: String, reason: String },
}

type Build = Arc<
    dyn Fn(&str, &serde_yaml::Value) -> Result<Box<dyn ErasedFilter>, BuildError> + Send + Sync,
>;

/// The filters the config can name (`routes[].filters[].name`), by name.
///
/// [`Registry::new`] is empty; [`Registry::with_builtins`] has the built-in filters
/// (`request_id`, `basic_auth`, `ip_filter`, `cors`, `compress`) and is what the stock
/// `gateway` binary runs with. A custom binary starts from `with_builtins()`, registers its
/// own filters and calls [`crate::run_with`].
#[derive(Clone, Default)]
pub struct Registry {
    factories: BTreeMap<String, Build>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.debug_set().entries(self.factories.keys()).finish()
    }
}

impl Registry {
    /// An empty registry: no filter name is known.
    pub fn new() -> Registry {
        Registry::default()
    }

    /// A registry with the built-in filters: `request_id` ([`RequestIdFilter`]),
    /// `basic_auth` ([`BasicAuthFilter`]), `ip_filter` ([`IpFilter`]), `cors`
    /// ([`CorsFilter`]) and `compress` ([`CompressFilter`]).
    pub fn with_builtins() -> Registry {
        let mut r = Registry::new();
        r.register::<RequestIdFilter>("request_id");
        r.register::<BasicAuthFilter>("basic_auth");
        r.register::<IpFilter>("ip_filter");
        r.register::<CorsFilter>("cors");
        r.register::<CompressFilter>("compress");
        r
    }

    /// Makes `F` available under `name` (replacing any filter of that name), built with
    /// [`Filter::new`].
    pub fn register<F: Filter>(&mut self, name: &str) -> &mut Self {
        self.register_with(name, F::new)
    }

    /// Makes `F` available under `name`, built by `build` from its config: for a filter
    /// that needs more than its config (a handle shared by its route entries, a client, ...),
    /// captured by the closure.
    pub fn register_with<F: Filter>(
        &mut self,
        name: &str,
        build: impl Fn(F::Config) -> std::result::Result<F, String> + Send + Sync + 'static,
    ) -> &mut Self {
        let build: Build = Arc::new(move |name, value| {
            let config = parse_config::<F::Config>(value)?;
            let filter = build(config).map_err(|reason| BuildError::Config {
                path: String::new(),
                reason,
            })?;
            Ok(Box::new(Erased {
                name: name.to_string(),
                filter,
            }) as Box<dyn ErasedFilter>)
        });
        self.factories.insert(name.to_string(), build);
        self
    }

    /// Registered names, sorted.
    pub fn names(&self) -> Vec<&str> {
        self.factories.keys().map(String::as_str).collect()
    }

    /// Builds the filter `name` from its `config:` value.
    fn build(
        &self,
        name: &str,
        config: &serde_yaml::Value,
    ) -> std::result::Result<Box<dyn ErasedFilter>, BuildError> {
        match self.factories.get(name) {
            Some(f) => f(name, config),
            None => Err(BuildError::UnknownName(format!(
                "unknown filter \"{name}\" (registered: {})",
                match self.names().join(", ") {
                    s if s.is_empty() => "none".to_string(),
                    s => s,
                }
            ))),
        }
    }

    /// Builds a route's filter list from its config entries, `(name, config)` in order.
    pub(crate) fn build_all<'c>(
        &self,
        entries: impl Iterator<Item = (&'c str, &'c serde_yaml::Value)>,
        mut error: impl FnMut(usize, BuildError),
    ) -> Filters {
        let mut list = Vec::new();
        for (j, (name, config)) in entries.enumerate() {
            match self.build(name, config) {
                Ok(f) => list.push(f),
                Err(e) => error(j, e),
            }
        }
        Filters(list)
    }
}

/// Reads a filter's `config:` into its type. Through YAML text, so that serde_yaml tracks the
/// key path of an error (its `Value` deserializer does not); a missing (`null`) config is read
/// as `{}` when `null` does not fit the type.
fn parse_config<C: DeserializeOwned>(
    value: &serde_yaml::Value,
) -> std::result::Result<C, BuildError> {
    let read = |v: &serde_yaml::Value| -> std::result::Result<C, BuildError> {
        let text = serde_yaml::to_string(v).map_err(|e| BuildError::Config {
            path: String::new(),
            reason: e.to_string(),
        })?;
        serde_yaml::from_str(&text).map_err(|e| split_path(&e))
    };
    match read(value) {
        Err(_) if value.is_null() => read(&serde_yaml::Value::Mapping(Default::default())),
        r => r,
    }
}

/// serde_yaml's message is `path: reason at line L column C` (no path at the root); the
/// position is in the re-serialised text, so it is dropped, and the path is made a key-path
/// suffix (`.keys`, `[0]`).
fn split_path(e: &serde_yaml::Error) -> BuildError {
    let mut msg = e.to_string();
    if let Some(at) = msg.rfind(" at line ") {
        let pos = &msg[at + " at line ".len()..];
        let is_pos = pos
            .split_once(" column ")
            .is_some_and(|(l, c)| l.parse::<u64>().is_ok() && c.parse::<u64>().is_ok());
        if is_pos {
            msg.truncate(at);
        }
    }
    match msg.split_once(": ") {
        Some((path, reason)) if !path.is_empty() && !path.contains(char::is_whitespace) => {
            BuildError::Config {
                // A root sequence's items are `.[N]`.
                path: match path.strip_prefix('.').unwrap_or(path) {
                    p if p.starts_with('[') => p.to_string(),
                    p => format!(".{p}"),
                },
                reason: reason.to_string(),
            }
        }
        _ => BuildError::Config {
            path: String::new(),
            reason: msg,
        },
    }
}

/// The filters of one route, in config order, run by the proxy in each phase.
#[derive(Default)]
pub struct Filters(Vec<Box<dyn ErasedFilter>>);

impl std::fmt::Debug for Filters {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.debug_list()
            .entries(self.0.iter().map(|x| x.name()))
            .finish()
    }
}

/// The request's filter states, one slot per filter of the route (allocated on first use).
fn slots(states: &mut Vec<FilterSlot>, n: usize) -> &mut [FilterSlot] {
    if states.len() < n {
        states.resize_with(n, || None);
    }
    &mut states[..n]
}

impl Filters {
    /// How many filters the route has.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the route has none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Names of the filters, in order.
    pub fn names(&self) -> Vec<&str> {
        self.0.iter().map(|f| f.name()).collect()
    }

    /// Whether one of the filters is an `F`, whatever name it was registered under.
    pub fn has<F: Filter>(&self) -> bool {
        self.0
            .iter()
            .any(|f| f.filter_type() == std::any::TypeId::of::<F>())
    }

    /// [`Filter::request`] of each filter until one answers.
    pub(crate) async fn request(
        &self,
        route: &str,
        forwarded: &Forwarded,
        session: &mut Session,
        ctx: &mut Ctx,
    ) -> Result<Flow> {
        if self.0.is_empty() {
            return Ok(Flow::Continue);
        }
        let slots = slots(&mut ctx.filter_states, self.0.len());
        let mut req = RequestCtx::new(
            session,
            &mut ctx.extensions,
            route,
            forwarded,
            Phase::Request,
        );
        for (f, slot) in self.0.iter().zip(slots) {
            if f.request(&mut req, slot).await? == Flow::Done {
                if !req.responded() {
                    log::error!(
                        "{route}: filter {} ended the request without a response: 500",
                        f.name()
                    );
                    let plain = (
                        http::header::CONTENT_TYPE,
                        http::HeaderValue::from_static("text/plain"),
                    );
                    let _ = req
                        .respond(
                            500,
                            &[plain],
                            Bytes::from_static(b"500 internal server error\n"),
                        )
                        .await?;
                }
                return Ok(Flow::Done);
            }
        }
        Ok(Flow::Continue)
    }

    /// [`Filter::upstream_request`] of each filter.
    pub(crate) async fn upstream_request(
        &self,
        route: &str,
        forwarded: &Forwarded,
        session: &mut Session,
        upstream: &mut RequestHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        if self.0.is_empty() {
            return Ok(());
        }
        let slots = slots(&mut ctx.filter_states, self.0.len());
        let mut req = RequestCtx::new(
            session,
            &mut ctx.extensions,
            route,
            forwarded,
            Phase::UpstreamRequest,
        );
        for (f, slot) in self.0.iter().zip(slots) {
            f.upstream_request(&mut req, upstream, slot).await?;
        }
        Ok(())
    }

    /// [`Filter::response`] of each filter.
    pub(crate) async fn response(
        &self,
        route: &str,
        forwarded: &Forwarded,
        session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        if self.0.is_empty() {
            return Ok(());
        }
        let slots = slots(&mut ctx.filter_states, self.0.len());
        let mut req = RequestCtx::new(
            session,
            &mut ctx.extensions,
            route,
            forwarded,
            Phase::Response,
        );
        for (f, slot) in self.0.iter().zip(slots) {
            f.response(&mut req, resp, slot).await?;
        }
        Ok(())
    }

    /// [`Filter::logging`] of each filter.
    pub(crate) async fn logging(
        &self,
        route: &str,
        forwarded: &Forwarded,
        session: &mut Session,
        ctx: &mut Ctx,
    ) {
        if self.0.is_empty() {
            return;
        }
        let slots = slots(&mut ctx.filter_states, self.0.len());
        let mut req = RequestCtx::new(
            session,
            &mut ctx.extensions,
            route,
            forwarded,
            Phase::Logging,
        );
        for (f, slot) in self.0.iter().zip(slots) {
            f.logging(&mut req, slot).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)] // read by serde only
    struct Conf {
        keys: std::collections::HashMap<String, String>,
        #[serde(default)]
        limit: u32,
    }

    #[derive(serde::Deserialize, Debug, Default)]
    #[serde(deny_unknown_fields, default)]
    struct AllDefault {
        on: bool,
    }

    fn parse<C: DeserializeOwned>(yaml: &str) -> std::result::Result<C, String> {
        let v: serde_yaml::Value = serde_yaml::from_str(yaml).unwrap();
        parse_config::<C>(&v).map_err(|e| match e {
            BuildError::Config { path, reason } => format!("config{path}: {reason}"),
            BuildError::UnknownName(s) => s,
        })
    }

    #[test]
    fn filter_config_errors_carry_the_key_path() {
        assert!(parse::<Conf>("{ keys: { a: b } }").is_ok());
        assert_eq!(
            parse::<Conf>("{ keys: [a] }").unwrap_err(),
            "config.keys: invalid type: sequence, expected a map"
        );
        assert_eq!(
            parse::<Conf>("{ keys: {}, limit: many }").unwrap_err(),
            "config.limit: invalid type: string \"many\", expected u32"
        );
        assert_eq!(
            parse::<Conf>("{ keys: {}, kyes: 1 }").unwrap_err(),
            "config: unknown field `kyes`, expected `keys` or `limit`"
        );
        assert_eq!(
            parse::<Conf>("null").unwrap_err(),
            "config: missing field `keys`"
        );
        assert_eq!(
            parse::<Vec<u32>>("[1, x]").unwrap_err(),
            "config[1]: invalid type: string \"x\", expected u32"
        );
    }

    #[test]
    fn filter_config_missing_is_null_or_empty_map() {
        assert!(!parse::<AllDefault>("null").unwrap().on);
        parse::<()>("null").unwrap();
        assert_eq!(parse::<Option<u32>>("null").unwrap(), None);
    }

    #[test]
    fn filter_registry_names_and_unknown_filters() {
        assert!(Registry::new().names().is_empty());
        assert_eq!(
            Registry::with_builtins().names(),
            ["basic_auth", "compress", "cors", "ip_filter", "request_id"]
        );
        let r = Registry::with_builtins();
        let Err(BuildError::UnknownName(e)) = r.build("nope", &serde_yaml::Value::Null) else {
            panic!("unknown name")
        };
        assert_eq!(
            e,
            "unknown filter \"nope\" (registered: basic_auth, compress, cors, ip_filter, request_id)"
        );
        let Err(BuildError::Config { path, reason }) = r.build(
            "request_id",
            &serde_yaml::from_str("{ trust_incoming: maybe }").unwrap(),
        ) else {
            panic!("bad config")
        };
        assert_eq!(
            (path.as_str(), reason.as_str()),
            (
                ".trust_incoming",
                "invalid type: string \"maybe\", expected a boolean"
            )
        );
    }

    #[test]
    fn filter_state_slot_is_created_once_and_kept() {
        let mut slot: FilterSlot = None;
        *state::<u32>(&mut slot) += 1;
        *state::<u32>(&mut slot) += 1;
        assert_eq!(*state::<u32>(&mut slot), 2);
    }
}
