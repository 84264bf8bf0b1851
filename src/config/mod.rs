//! The YAML config: serde structs mirroring the file (unknown keys are errors, every key has
//! a default), loading with line/column errors, and the key-path error type used by validation.

mod client;
mod duration;
mod errors;
mod server_conf;
mod size;

pub use client::ClientConf;
pub use duration::{parse_duration, Dur};
pub use errors::{ConfigError, Issue, Issues};
pub use server_conf::server_conf;
pub use size::{parse_size, Size};

use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::Path;

/// The whole config file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Pingora's `ServerConf` keys, checked and passed through.
    pub server: serde_yaml::Mapping,
    /// Client-facing listeners.
    pub listeners: Vec<ListenerConf>,
    /// The admin listener.
    pub admin: AdminConf,
    /// Forwarded-header policy.
    pub forwarded: ForwardedConf,
    /// Upstream pools by name.
    pub upstreams: BTreeMap<String, UpstreamConf>,
    /// Routes, in match order.
    pub routes: Vec<RouteConf>,
    /// Directory of the config file: relative file paths are resolved against it.
    #[serde(skip)]
    pub base_dir: Option<std::path::PathBuf>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            server: serde_yaml::Mapping::new(),
            listeners: vec![ListenerConf {
                address: "0.0.0.0:8080".into(),
                tls: None,
                http2: false,
                redirect_https: false,
                read_buffer: None,
                client: ClientConf::default(),
                tcp: None,
                proxy_protocol: false,
            }],
            base_dir: None,
            admin: AdminConf::default(),
            forwarded: ForwardedConf::default(),
            upstreams: BTreeMap::new(),
            routes: Vec::new(),
        }
    }
}

/// One client-facing listener.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConf {
    /// `IP:port` to listen on.
    pub address: String,
    /// TLS termination; absent means plain HTTP.
    #[serde(default)]
    pub tls: Option<ListenerTlsConf>,
    /// Offer HTTP/2 by ALPN (TLS listeners).
    #[serde(default)]
    pub http2: bool,
    /// Answer plain-HTTP requests with a 301 to the https URL (routes may opt out with `allow_http`).
    #[serde(default)]
    pub redirect_https: bool,
    /// Bytes of the per-connection read buffer in front of the socket (default 0 for plain
    /// HTTP: requests are read straight into their own buffers; 16384 for TLS, one record).
    /// Every open connection holds it, idle WebSockets included.
    #[serde(default)]
    pub read_buffer: Option<usize>,
    /// Limits on each client: timeouts against slow clients, header sizes, connections per IP.
    #[serde(default)]
    pub client: ClientConf,
    /// Every connection starts with a PROXY protocol header (v1 or v2) from a peer in
    /// `forwarded.trusted_proxies`; the client address it names is the connection's.
    #[serde(default)]
    pub proxy_protocol: bool,
    /// Plain TCP (L4) proxying to a pool instead of HTTP: no parsing, `routes` do not apply.
    #[serde(default)]
    pub tcp: Option<ListenerTcpConf>,
}

/// `listeners[].tcp`: where a TCP listener's connections are relayed.
#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct ListenerTcpConf {
    /// Pool whose backends take the connections (balancing, health, retries, timeouts).
    pub upstream: String,
}

/// TLS of a listener.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerTlsConf {
    /// Certificates, chosen by SNI; the first is the default.
    pub certificates: Vec<CertConf>,
    /// Lowest TLS version accepted.
    #[serde(default = "default_min_tls")]
    pub min_version: String,
}

fn default_min_tls() -> String {
    "1.2".into()
}

/// One certificate and key (PEM files; relative paths are relative to the config file).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertConf {
    /// Certificate chain file.
    pub cert: String,
    /// Private key file (RSA, ECDSA or Ed25519; PKCS#8, PKCS#1 or SEC1).
    pub key: String,
    /// Names served with this certificate (exact or `*.example.com`); default: the certificate's own names.
    #[serde(default)]
    pub server_names: Option<Vec<String>>,
}

/// TLS to the backends of a pool.
#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamTlsConf {
    /// Server name sent and verified; default: the host part of each server address.
    pub sni: Option<String>,
    /// Verify the backend's certificate and name.
    pub verify: bool,
    /// CA bundle (PEM) to verify against, instead of the system roots.
    pub ca_file: Option<String>,
}

impl Default for UpstreamTlsConf {
    fn default() -> Self {
        UpstreamTlsConf {
            sni: None,
            verify: true,
            ca_file: None,
        }
    }
}

/// The admin listener (`/health`, `/status`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConf {
    /// `IP:port`; 127.0.0.1:9901 by default.
    pub address: String,
    /// Whether the admin listener runs.
    pub enabled: bool,
    /// Whether the request path keeps the per-route and per-pool counters of `/metrics`
    /// (a few atomic adds per request; off only to measure that cost).
    pub metrics: bool,
    /// Bearer token of the write endpoints (drain / undrain); without one they are refused.
    pub token: Option<String>,
    /// File holding `token` (a mounted Kubernetes Secret): trailing whitespace ignored.
    pub token_file: Option<String>,
}

impl Default for AdminConf {
    fn default() -> Self {
        AdminConf {
            address: "127.0.0.1:9901".into(),
            enabled: true,
            metrics: true,
            token: None,
            token_file: None,
        }
    }
}

/// How `X-Forwarded-For` is written.
#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum XffMode {
    /// Append the peer to a trusted peer's value; replace an untrusted peer's value.
    #[default]
    Append,
    /// Always replace with the peer's address.
    Replace,
    /// Leave the header as the client sent it, from any peer (only safe when every client
    /// reaches the gateway through something that sets it).
    Off,
}

/// Forwarded headers added to proxied requests.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ForwardedConf {
    /// CIDRs (or IPs) whose forwarded headers are believed.
    pub trusted_proxies: Vec<String>,
    /// `X-Forwarded-For` policy.
    pub x_forwarded_for: XffMode,
    /// Send `X-Real-IP`.
    pub x_real_ip: bool,
    /// Send `X-Forwarded-Proto`.
    pub x_forwarded_proto: bool,
    /// Send `X-Forwarded-Host`.
    pub x_forwarded_host: bool,
    /// Send `X-Forwarded-Port`.
    pub x_forwarded_port: bool,
    /// Send the RFC 7239 `Forwarded` header (`for=...;proto=...;host=...`), appended to a
    /// trusted peer's value, and read a trusted peer's `Forwarded: for=` for the client address
    /// when it sent no `X-Forwarded-For`.
    pub rfc7239: bool,
    /// Pass request header names containing `_` to the backends (nginx
    /// `underscores_in_headers on`). Off: they are dropped, whoever sent them.
    pub allow_underscore_headers: bool,
}

impl Default for ForwardedConf {
    fn default() -> Self {
        ForwardedConf {
            trusted_proxies: Vec::new(),
            x_forwarded_for: XffMode::Append,
            x_real_ip: true,
            x_forwarded_proto: true,
            x_forwarded_host: true,
            x_forwarded_port: true,
            rfc7239: false,
            allow_underscore_headers: false,
        }
    }
}

/// Load-balancing algorithm of a pool.
#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum Balance {
    /// Smooth weighted round robin.
    #[default]
    RoundRobin,
    /// Weighted random.
    Random,
    /// Fewest in-flight requests (and open WebSockets) per weight.
    LeastConn,
    /// Weighted rendezvous hashing of `hash_key`.
    ConsistentHash,
}

/// An upstream pool.
#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConf {
    /// Backends.
    pub servers: Vec<ServerConf>,
    /// Balancing algorithm.
    #[serde(default)]
    pub balance: Balance,
    /// Key for `consistent_hash`: `client_ip`, `header:NAME`, `cookie:NAME`, `query:NAME`.
    #[serde(default = "default_hash_key")]
    pub hash_key: String,
    /// Active health checks; absent means none.
    #[serde(default)]
    pub health_check: Option<HealthCheckConf>,
    /// Passive health (ejection after errors).
    #[serde(default)]
    pub passive: PassiveConf,
    /// Timeouts.
    #[serde(default)]
    pub timeouts: TimeoutsConf,
    /// Extra backends tried after a connect failure.
    #[serde(default = "default_retries")]
    pub retries: usize,
    /// Session affinity (Socket.IO sid tagging, sticky cookie).
    #[serde(default)]
    pub affinity: Option<AffinityConf>,
    /// TLS to the backends (https / wss); absent means plain.
    #[serde(default)]
    pub tls: Option<UpstreamTlsConf>,
    /// Upgraded connections (WebSockets) open to the pool at once; more get 503. 0: no limit.
    #[serde(default)]
    pub max_upgraded: usize,
    /// Live re-resolution of server names (a Kubernetes headless Service, a DNS round robin).
    #[serde(default)]
    pub discovery: Option<DiscoveryConf>,
    /// PROXY protocol header (`v1` or `v2`) sent first on each connection of a TCP listener
    /// (`listeners[].tcp`) to this pool, naming the client.
    #[serde(default)]
    pub send_proxy_protocol: Option<crate::proxy_protocol::Version>,
}

/// How a pool finds its backends at run time.
#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct DiscoveryConf {
    /// Re-resolve server names through DNS (or a hosts file).
    pub dns: DnsDiscoveryConf,
}

/// `discovery.dns`: every server name is resolved again each `interval`; every address it
/// yields is a backend.
#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct DnsDiscoveryConf {
    /// Between resolutions.
    #[serde(default = "default_discovery_interval")]
    pub interval: Dur,
    /// Resolve from this `/etc/hosts`-format file (re-read each time) instead of the system
    /// resolver: for static inventories and tests.
    #[serde(default)]
    pub hosts_file: Option<String>,
}

fn default_discovery_interval() -> Dur {
    Dur(std::time::Duration::from_secs(10))
}

/// Session affinity of a pool.
#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields, default)]
pub struct AffinityConf {
    /// Socket.IO affinity: `true`, or `{ path: /my-custom-path/ }`.
    pub socketio: SocketIoSetting,
    /// Sticky cookie for any HTTP app.
    pub cookie: Option<CookieConf>,
    /// Key mixed into node tags, so tags cannot be predicted from addresses.
    pub secret: Option<String>,
    /// File holding `secret` (a mounted Kubernetes Secret): trailing whitespace ignored.
    pub secret_file: Option<String>,
    /// Capacity of the sid -> node table for untagged sids.
    pub max_sessions: usize,
}

impl Default for AffinityConf {
    fn default() -> Self {
        AffinityConf {
            socketio: SocketIoSetting::Enabled(false),
            cookie: None,
            secret: None,
            secret_file: None,
            max_sessions: 100_000,
        }
    }
}

/// `socketio: true | false | { path }`.
#[derive(Debug, Deserialize, Clone)]
#[serde(untagged)]
pub enum SocketIoSetting {
    /// On with the default path `/socket.io/`, or off.
    Enabled(bool),
    /// On with options.
    Options(SocketIoConf),
}

/// Socket.IO affinity options.
#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct SocketIoConf {
    /// The Socket.IO path (the server's `path` option).
    #[serde(default = "default_socketio_path")]
    pub path: String,
}

fn default_socketio_path() -> String {
    "/socket.io/".into()
}

impl SocketIoSetting {
    /// The Socket.IO path when enabled.
    pub fn path(&self) -> Option<String> {
        match self {
            SocketIoSetting::Enabled(true) => Some(default_socketio_path()),
            SocketIoSetting::Enabled(false) => None,
            SocketIoSetting::Options(o) => Some(o.path.clone()),
        }
    }
}

/// Sticky-cookie options.
#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields, default)]
pub struct CookieConf {
    /// Cookie name.
    pub name: String,
    /// Max-Age; absent means a session cookie.
    pub ttl: Option<Dur>,
    /// Cookie path.
    pub path: String,
    /// SameSite attribute: Lax, Strict or None.
    pub same_site: String,
    /// HttpOnly attribute.
    pub http_only: bool,
}

impl Default for CookieConf {
    fn default() -> Self {
        CookieConf {
            name: "gw_affinity".into(),
            ttl: None,
            path: "/".into(),
            same_site: "Lax".into(),
            http_only: true,
        }
    }
}

fn default_hash_key() -> String {
    "client_ip".into()
}
fn default_retries() -> usize {
    2
}

/// One backend of a pool.
#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct ServerConf {
    /// `IP:port` or `name:port`.
    pub address: String,
    /// Relative weight, 1..=1000.
    #[serde(default = "default_weight")]
    pub weight: u32,
}

fn default_weight() -> u32 {
    1
}

/// Active health check of a pool.
#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields, default)]
pub struct HealthCheckConf {
    /// HTTP check; absent means a TCP connect check.
    pub http: Option<HttpCheckConf>,
    /// Time between checks.
    pub interval: Dur,
    /// Time a check may take.
    pub timeout: Dur,
    /// Consecutive failures that mark a backend down.
    pub fails: u32,
    /// Consecutive successes that mark a backend up.
    pub passes: u32,
}

impl Default for HealthCheckConf {
    fn default() -> Self {
        HealthCheckConf {
            http: None,
            interval: Dur::secs(2),
            timeout: Dur::secs(1),
            fails: 2,
            passes: 1,
        }
    }
}

/// HTTP health check request.
#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields, default)]
pub struct HttpCheckConf {
    /// Request path.
    pub path: String,
    /// Expected status code.
    pub expect_status: u16,
    /// Host header sent.
    pub host: String,
}

impl Default for HttpCheckConf {
    fn default() -> Self {
        HttpCheckConf {
            path: "/".into(),
            expect_status: 200,
            host: "localhost".into(),
        }
    }
}

/// Passive health checks.
#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields, default)]
pub struct PassiveConf {
    /// Errors within `fail_timeout` that eject a backend; 0 disables.
    pub max_fails: u32,
    /// Error window and ejection time.
    pub fail_timeout: Dur,
}

impl Default for PassiveConf {
    fn default() -> Self {
        PassiveConf {
            max_fails: 3,
            fail_timeout: Dur::secs(30),
        }
    }
}

/// Timeouts of a pool.
#[derive(Debug, Deserialize, Clone, Copy)]
#[serde(deny_unknown_fields, default)]
pub struct TimeoutsConf {
    /// TCP connect.
    pub connect: Dur,
    /// Waiting for response bytes on plain HTTP.
    pub read: Dur,
    /// Writing to the backend.
    pub write: Dur,
    /// Upgraded connections with no traffic either way.
    pub idle: Dur,
    /// How long an idle pooled connection to a backend may be reused; keep it below the
    /// backends' own keep-alive timeout (Node.js and Apache: 5 s) or a request can meet a
    /// connection the backend is closing.
    pub keepalive: Dur,
}

impl Default for TimeoutsConf {
    fn default() -> Self {
        TimeoutsConf {
            connect: Dur::secs(5),
            read: Dur::secs(60),
            write: Dur::secs(60),
            idle: Dur::secs(3600),
            keepalive: Dur::secs(4),
        }
    }
}

/// One string or a list of strings.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    /// A single value.
    One(String),
    /// Several values.
    Many(Vec<String>),
}

impl OneOrMany {
    /// The values as a slice-like iterator.
    pub fn iter(&self) -> impl Iterator<Item = &String> {
        match self {
            OneOrMany::One(s) => std::slice::from_ref(s).iter(),
            OneOrMany::Many(v) => v.iter(),
        }
    }
}

/// What a route matches.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct MatchConf {
    /// Exact host or `*.suffix`, or a list of them.
    pub host: Option<OneOrMany>,
    /// Exact path.
    pub path: Option<String>,
    /// Path prefix.
    pub path_prefix: Option<String>,
    /// Only requests upgrading to this protocol (`websocket`): Apache's
    /// `RewriteCond %{HTTP:Upgrade} websocket` in front of `mod_proxy_wstunnel`.
    pub upgrade: Option<String>,
}

/// Header rules.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct HeaderRulesConf {
    /// Headers replaced.
    pub set: BTreeMap<String, String>,
    /// Headers appended.
    pub add: BTreeMap<String, String>,
    /// Headers removed.
    pub remove: Vec<String>,
}

/// A fixed response.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RespondConf {
    /// Status code.
    pub status: u16,
    /// Body.
    pub body: String,
    /// Response headers.
    pub headers: BTreeMap<String, String>,
}

impl Default for RespondConf {
    fn default() -> Self {
        RespondConf {
            status: 200,
            body: String::new(),
            headers: BTreeMap::new(),
        }
    }
}

/// A redirect.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedirectConf {
    /// Target URL or path.
    pub to: String,
    /// 301, 302, 303, 307 or 308.
    #[serde(default = "default_redirect_status")]
    pub status: u16,
    /// Append the rest of the path (after `path_prefix`) and the query.
    #[serde(default)]
    pub keep_path: bool,
}

fn default_redirect_status() -> u16 {
    302
}

/// `routes[].static`: files served from a directory, as nginx `root` with `index`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StaticConf {
    /// Directory served (relative paths are relative to the config file); the request path
    /// (after `strip_prefix` / `rewrite`) is looked up under it.
    pub root: String,
    /// Files tried, in order, for a request naming a directory (default `index.html`).
    #[serde(default = "default_index")]
    pub index: Vec<String>,
    /// Serve `FILE.br` / `FILE.gz` next to `FILE` to clients that accept that encoding.
    #[serde(default)]
    pub precompressed: bool,
    /// `Cache-Control: max-age` sent with files; absent: no `Cache-Control`.
    #[serde(default)]
    pub max_age: Option<Dur>,
}

fn default_index() -> Vec<String> {
    vec!["index.html".into()]
}

/// A route.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConf {
    /// What the route matches.
    #[serde(rename = "match", default)]
    pub matches: MatchConf,
    /// Pool to proxy to.
    #[serde(default)]
    pub upstream: Option<String>,
    /// Drop `path_prefix` before proxying.
    #[serde(default)]
    pub strip_prefix: bool,
    /// Replace `path_prefix` with this before proxying.
    #[serde(default)]
    pub rewrite: Option<String>,
    /// Send the path upstream as the client wrote it instead of its normalised form (for apps
    /// that need `//`, dot segments or escapes as sent). Matching still uses the normalised
    /// path, so a deny route cannot be bypassed by spelling; not combinable with
    /// `strip_prefix` / `rewrite`, whose prefix is found in the normalised path.
    #[serde(default)]
    pub raw_path: bool,
    /// Requests per client (nginx `limit_req`); absent: no limit.
    #[serde(default)]
    pub rate_limit: Option<RateLimitConf>,
    /// Largest request body, streamed (chunked) bodies included; more gets 413 (nginx
    /// `client_max_body_size`, default 1m); 0: no limit.
    #[serde(default = "default_max_body")]
    pub max_body: Size,
    /// Fixed response.
    #[serde(default)]
    pub respond: Option<RespondConf>,
    /// Redirect.
    #[serde(default)]
    pub redirect: Option<RedirectConf>,
    /// Static files from a directory (nginx `root`).
    #[serde(default, rename = "static")]
    pub static_files: Option<StaticConf>,
    /// Rules for the request sent upstream.
    #[serde(default)]
    pub request_headers: HeaderRulesConf,
    /// Rules for the response sent to the client.
    #[serde(default)]
    pub response_headers: HeaderRulesConf,
    /// Rust filters run on this route, in order.
    #[serde(default)]
    pub filters: Vec<FilterConf>,
    /// Serve this route on `redirect_https` listeners too (e.g. ACME HTTP-01 challenges).
    #[serde(default)]
    pub allow_http: bool,
}

/// A filter on a route.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilterConf {
    /// Registered filter name.
    pub name: String,
    /// The filter's own settings.
    #[serde(default)]
    pub config: serde_yaml::Value,
}

impl Config {
    /// `path` resolved against the config file's directory when relative.
    pub fn resolve_path(&self, path: &str) -> std::path::PathBuf {
        let p = std::path::Path::new(path);
        match &self.base_dir {
            Some(base) if p.is_relative() => base.join(p),
            _ => p.to_path_buf(),
        }
    }

    /// Parses YAML text; errors name the key path, line and column.
    pub fn from_yaml(text: &str) -> Result<Config, ConfigError> {
        if text.trim().is_empty() {
            return Ok(Config::default());
        }
        check_shape(text)?;
        // A first pass into a generic value refuses duplicate keys anywhere (a second pool
        // of the same name would otherwise silently replace the first).
        serde_yaml::from_str::<serde_yaml::Value>(text).map_err(ConfigError::Yaml)?;
        serde_yaml::from_str(text).map_err(ConfigError::Yaml)
    }

    /// Reads and parses a file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::Read(path.display().to_string(), e))?;
        let mut cfg = Config::from_yaml(&text)?;
        cfg.base_dir = path.parent().map(|p| p.to_path_buf());
        Ok(cfg)
    }
}

/// `routes[].rate_limit`: requests per client key (nginx `limit_req zone=... burst=N nodelay`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConf {
    /// Requests allowed per `per`, sustained.
    pub rate: u32,
    /// The period of `rate` (default 1s: requests per second).
    #[serde(default = "one_second")]
    pub per: Dur,
    /// Requests a client may make at once before the rate applies (default: `rate`).
    #[serde(default)]
    pub burst: Option<u32>,
    /// What a client is: `client_ip` (default), `header:NAME` or `cookie:NAME` (the client
    /// address when absent).
    #[serde(default = "default_limit_key")]
    pub key: String,
    /// Status of a refused request (default 429, with `Retry-After`).
    #[serde(default = "default_limit_status")]
    pub status: u16,
}

fn one_second() -> Dur {
    Dur::secs(1)
}
fn default_limit_key() -> String {
    "client_ip".into()
}
fn default_limit_status() -> u16 {
    429
}
fn default_max_body() -> Size {
    Size(1 << 20)
}

/// Largest config file accepted.
const MAX_CONFIG_BYTES: usize = 4 << 20;
/// Deepest `[` / `{` nesting accepted (a real config needs a handful).
const MAX_FLOW_DEPTH: usize = 64;

/// Refuses text no config needs before the YAML parser sees it: over 4 MiB, or flow
/// collections nested deeper than 64 (100,000 nested `[` take the parser tens of seconds).
fn check_shape(text: &str) -> Result<(), ConfigError> {
    if text.len() > MAX_CONFIG_BYTES {
        return Err(ConfigError::Shape(format!(
            "the config is {} bytes, more than the {MAX_CONFIG_BYTES} accepted",
            text.len()
        )));
    }
    let (mut depth, mut line) = (0usize, 1usize);
    let mut quote: Option<u8> = None;
    let mut prev = b'\n';
    let mut bytes = text.bytes();
    while let Some(b) = bytes.next() {
        match (quote, b) {
            (_, b'\n') => {
                line += 1;
                if quote.is_none() {
                    prev = b;
                    continue;
                }
            }
            (Some(b'"'), b'\\') => {
                bytes.next();
            }
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, b'"' | b'\'') => quote = Some(b),
            (None, b'#') if prev.is_ascii_whitespace() => {
                // A comment: skip to the end of the line.
                for c in bytes.by_ref() {
                    if c == b'\n' {
                        line += 1;
                        break;
                    }
                }
                prev = b'\n';
                continue;
            }
            (None, b'[' | b'{') => {
                depth += 1;
                if depth > MAX_FLOW_DEPTH {
                    return Err(ConfigError::Shape(format!(
                        "line {line}: collections nested deeper than {MAX_FLOW_DEPTH}"
                    )));
                }
            }
            (None, b']' | b'}') => depth = depth.saturating_sub(1),
            _ => {}
        }
        prev = b;
    }
    Ok(())
}

#[cfg(test)]
mod shape_tests {
    use super::*;

    #[test]
    fn deep_nesting_is_refused_at_once() {
        let deep = format!("routes: {}", "[".repeat(100_000));
        let t = std::time::Instant::now();
        let e = Config::from_yaml(&deep).unwrap_err().to_string();
        assert!(e.contains("nested deeper than 64"), "{e}");
        assert!(t.elapsed() < std::time::Duration::from_secs(1));
        // Brackets in strings and comments do not count.
        let fine = format!(
            "# {}\nroutes: [ {{ match: {{ path: \"/{}\" }}, respond: {{ body: '{}' }} }} ]\n",
            "[".repeat(100),
            "[".repeat(100),
            "{".repeat(100)
        );
        Config::from_yaml(&fine).unwrap();
    }

    #[test]
    fn duplicate_keys_are_errors() {
        let yaml = "upstreams:\n  a: { servers: [ { address: \"127.0.0.1:1\" } ] }\n  a: { servers: [ { address: \"127.0.0.1:2\" } ] }\n";
        let e = Config::from_yaml(yaml).unwrap_err().to_string();
        assert!(e.contains("duplicate entry with key \"a\""), "{e}");
        assert!(e.contains("line 2"), "{e}");
    }
}
