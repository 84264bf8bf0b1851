//! A custom gateway binary with a `tenant` filter: it reads the tenant from a request header
//! and sends the request to that tenant's pool, by putting an [`Upstream`] in the request's
//! extensions (the gateway then proxies to that pool instead of the route's `upstream`).
//!
//! ```yaml
//! upstreams:
//!   pool-acme:   { servers: [ { address: "10.0.1.10:8080" } ] }
//!   pool-globex: { servers: [ { address: "10.0.2.10:8080" } ] }
//!   pool-shared: { servers: [ { address: "10.0.9.10:8080" } ] }
//! routes:
//!   - match: { path_prefix: /api/ }
//!     upstream: pool-shared          # needed: the filter only changes a proxying route's pool
//!     filters:
//!       - name: tenant
//!         config:
//!           header: X-Tenant         # optional (X-Tenant)
//!           tenants: { acme: pool-acme, globex: pool-globex }
//!           default: pool-shared     # optional: for other tenants and requests without one
//! ```
//! Run: `cargo run --example tenant_router -- -c my.yaml` (the same flags as `gateway`; `-t`
//! checks the `tenant` config too, e.g. `routes[0].filters[0].config: tenants: needs at least
//! one tenant`).
//!
//! - The tenant is the header's value, matched exactly (case-sensitive) against `tenants`.
//! - An unknown tenant, or a request without the header, goes to `default`; without a
//!   `default` it gets **404** `unknown tenant` (the tenant is the resource asked for, and no
//!   backend is chosen). Several values of the header get 400 (which one would be meant?).
//! - Pool names are checked for their form at load (`-t`), but whether a pool of that name
//!   exists is checked by the gateway when a request goes there: a tenant mapped to a pool
//!   missing from `upstreams:` gets 502 and a log line (`a filter chose unknown pool ...`).
//!   The tenants' pools, named by no route, get a `not used by any route` warning at load.
//! - Put an authentication filter before `tenant` when clients must not choose their tenant
//!   (the header would then come from it or from a trusted proxy in front).

use gateway::prelude::*;
use serde::Deserialize;
use std::collections::HashMap;
use std::process::ExitCode;

/// `config:` of a `tenant` entry.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TenantConfig {
    /// The request header naming the tenant.
    #[serde(default = "default_header")]
    header: String,
    /// Tenant -> pool (a name in `upstreams:`).
    tenants: HashMap<String, String>,
    /// Pool for unknown tenants and requests without the header; none: 404.
    #[serde(default)]
    default: Option<String>,
}

fn default_header() -> String {
    "X-Tenant".into()
}

/// Chooses the pool from the tenant header; see the module docs.
struct Tenant {
    header: HeaderName,
    tenants: HashMap<String, String>,
    default: Option<String>,
}

/// The form of a pool name in `upstreams:` (as the gateway checks it).
fn check_pool_name(key: &str, name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{key}: {name:?} is not a pool name (letters, digits, '-', '_' and '.')"
        ))
    }
}

#[async_trait]
impl Filter for Tenant {
    type Config = TenantConfig;
    type State = ();

    fn new(config: TenantConfig) -> Result<Self, String> {
        let header = HeaderName::from_bytes(config.header.as_bytes())
            .map_err(|_| format!("header: invalid header name {:?}", config.header))?;
        if config.tenants.is_empty() {
            return Err("tenants: needs at least one tenant".into());
        }
        let mut names: Vec<_> = config.tenants.iter().collect();
        names.sort(); // the first error in a stable order
        for (tenant, pool) in names {
            check_pool_name(&format!("tenants.{tenant}"), pool)?;
        }
        if let Some(pool) = &config.default {
            check_pool_name("default", pool)?;
        }
        Ok(Tenant {
            header,
            tenants: config.tenants,
            default: config.default,
        })
    }

    async fn request(&self, req: &mut RequestCtx<'_>, _: &mut ()) -> Result<Flow> {
        let mut values = req.req_header().headers.get_all(&self.header).iter();
        let tenant = values.next().and_then(|v| v.to_str().ok());
        if values.next().is_some() {
            let msg = format!("one {} header expected\n", self.header);
            return req.respond(400, &[], msg).await;
        }
        let pool = tenant
            .and_then(|t| self.tenants.get(t))
            .or(self.default.as_ref());
        match pool {
            Some(pool) => {
                let pool = pool.clone();
                req.extensions_mut().insert(Upstream(pool));
                Ok(Flow::Continue)
            }
            None => req.respond(404, &[], "unknown tenant\n").await,
        }
    }
}

fn main() -> ExitCode {
    let mut registry = Registry::with_builtins();
    registry.register::<Tenant>("tenant");
    gateway::run_with(registry)
}
