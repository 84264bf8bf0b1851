//! Rust filter hooks: the [`Filter`] trait (one default no-op method per phase), the
//! [`Registry`] that maps names used in the YAML (`routes[].filters[].name`) to factories, and
//! the built-in filters. A custom binary registers its filters and calls [`crate::run_with`].

mod request_id;

pub use request_id::RequestId;

use crate::proxy::ctx::Ctx;
use async_trait::async_trait;
use pingora_core::Result;
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::Session;
use std::collections::BTreeMap;
use std::sync::Arc;

/// A per-route hook into the request path. Every method has a no-op default.
#[async_trait]
pub trait Filter: Send + Sync {
    /// After the route matched, before a backend is chosen. Return `Ok(true)` when the filter
    /// has written the whole response itself (e.g. a 401); the request then ends here.
    async fn request(&self, _session: &mut Session, _ctx: &mut Ctx) -> Result<bool> {
        Ok(false)
    }

    /// Just before the request goes to the backend: edit its headers or path.
    async fn upstream_request(
        &self,
        _session: &mut Session,
        _req: &mut RequestHeader,
        _ctx: &mut Ctx,
    ) -> Result<()> {
        Ok(())
    }

    /// Just before the response goes to the client: edit its headers.
    async fn response(
        &self,
        _session: &mut Session,
        _resp: &mut ResponseHeader,
        _ctx: &mut Ctx,
    ) -> Result<()> {
        Ok(())
    }

    /// After the request is done (also on errors): metrics, audit logs.
    async fn logging(&self, _session: &mut Session, _ctx: &mut Ctx) {}
}

/// Builds a filter from its `config:` value; errors explain what is wrong with the config.
pub type Factory =
    Arc<dyn Fn(&serde_yaml::Value) -> std::result::Result<Arc<dyn Filter>, String> + Send + Sync>;

/// Filters available to the config, by name.
#[derive(Clone)]
pub struct Registry {
    factories: BTreeMap<String, Factory>,
}

impl Default for Registry {
    fn default() -> Self {
        Registry::new()
    }
}

impl Registry {
    /// A registry with the built-in filters (`request_id`).
    pub fn new() -> Registry {
        let mut r = Registry {
            factories: BTreeMap::new(),
        };
        r.register("request_id", |v| {
            RequestId::from_config(v).map(|f| Arc::new(f) as Arc<dyn Filter>)
        });
        r
    }

    /// Makes a filter available under `name` (replacing any filter of that name).
    pub fn register<F>(&mut self, name: &str, factory: F) -> &mut Self
    where
        F: Fn(&serde_yaml::Value) -> std::result::Result<Arc<dyn Filter>, String>
            + Send
            + Sync
            + 'static,
    {
        self.factories.insert(name.to_string(), Arc::new(factory));
        self
    }

    /// Builds the filter `name` with `config`.
    pub fn build(
        &self,
        name: &str,
        config: &serde_yaml::Value,
    ) -> std::result::Result<Arc<dyn Filter>, String> {
        match self.factories.get(name) {
            Some(f) => f(config),
            None => Err(format!(
                "unknown filter \"{name}\" (registered: {})",
                self.names().join(", ")
            )),
        }
    }

    /// Registered names, sorted.
    pub fn names(&self) -> Vec<&str> {
        self.factories.keys().map(String::as_str).collect()
    }
}
