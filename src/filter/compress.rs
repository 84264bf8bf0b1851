//! Built-in `compress` filter: compresses backend responses on the routes that list it, with
//! Pingora's response compression (`pingora_core`'s `ResponseCompression` downstream module:
//! gzip, brotli and zstd), as the client's `Accept-Encoding` allows.
//!
//! ```yaml
//! filters:
//!   - name: compress
//!     config:
//!       level: 6                      # 1 (fast) ..= 9 (small), for every algorithm (default: 6)
//!       min_size: 256                 # smaller Content-Length: sent as is (default: 256)
//!       algorithms: [zstd, br, gzip]  # server preference on equal q (default: this)
//!       content_types: ["text/*", application/json]   # (default: text/*, JSON, JS, XML,
//!                                     #  SVG, wasm types)
//! ```
//!
//! The decision is made in the `response` phase, on the backend's response header; the module
//! then compresses the body as it goes to the client, after the gateway's own body work (the
//! Socket.IO handshake's sid tag is written first, then compressed). Never compressed:
//! an upgrade request (WebSocket) and its response, `HEAD`, HTTP/1.0 (no chunked encoding,
//! as nginx's `gzip_http_version 1.1`), 1xx / 204 / 206 / 304,
//! `text/event-stream` (the compressor holds data back until it has enough: events would be
//! late), a response with a `Content-Encoding` already, `Cache-Control: no-transform`, a
//! `Content-Length` under `min_size`, a type not in `content_types`, and responses the
//! gateway writes itself (404, 502, a filter's 401...). The coding is the client's most
//! preferred one (`q` values honoured, `q=0` excluded) among `algorithms`; ties go to the
//! order of `algorithms`. A compressed response loses `Content-Length` (chunked) and
//! `Accept-Ranges`, its strong `ETag` becomes weak, and it gets `Vary: Accept-Encoding`.
//! The compressor keeps data until it has a block to send, so a response streamed slowly in
//! another type (long polling, NDJSON) is delayed: leave such types out of `content_types`.

use super::{Filter, RequestCtx};
use crate::config::Size;
use async_trait::async_trait;
use http::header::{self, HeaderValue};
use pingora_core::modules::http::compression::ResponseCompression;
use pingora_core::Result;
use pingora_http::{RequestHeader, ResponseHeader};
use serde::Deserialize;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};

/// The default `content_types`.
const DEFAULT_TYPES: &[&str] = &[
    "text/*",
    "application/json",
    "application/javascript",
    "application/xml",
    "application/xhtml+xml",
    "application/rss+xml",
    "application/atom+xml",
    "application/ld+json",
    "application/manifest+json",
    "application/problem+json",
    "application/wasm",
    "image/svg+xml",
];

/// Config of the `compress` filter (see the [module docs](self)).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CompressConfig {
    /// Compression level, 1..=9 (6).
    pub level: u32,
    /// Responses with a smaller `Content-Length` are not compressed (256).
    pub min_size: Size,
    /// Codings used, in server preference: `gzip`, `br`, `zstd` (all three: zstd, br, gzip).
    pub algorithms: Vec<String>,
    /// Media types compressed: `type/subtype` or `type/*` (`text/*`, `application/json`,
    /// `application/javascript`, `application/xml`, the `xhtml+xml`, `rss+xml`, `atom+xml`,
    /// `ld+json`, `manifest+json` and `problem+json` application types, `application/wasm`,
    /// `image/svg+xml`). `text/event-stream` never is.
    pub content_types: Vec<String>,
}

impl Default for CompressConfig {
    fn default() -> Self {
        CompressConfig {
            level: 6,
            min_size: Size(256),
            algorithms: vec!["zstd".into(), "br".into(), "gzip".into()],
            content_types: DEFAULT_TYPES.iter().map(|s| s.to_string()).collect(),
        }
    }
}

/// The `compress` filter ([`Registry::with_builtins`](super::Registry::with_builtins)).
pub struct CompressFilter {
    level: u32,
    min_size: u64,
    /// Lower-case coding names, in server preference.
    algorithms: Vec<&'static str>,
    /// Lower-case media types; `text/*` kept as `text/`.
    types: Vec<String>,
    warned: AtomicBool,
}

impl CompressFilter {
    /// Whether the media type of `content_type` is one to compress.
    fn compressible_type(&self, content_type: Option<&HeaderValue>) -> bool {
        let Some(ct) = content_type.and_then(|v| v.to_str().ok()) else {
            return false;
        };
        let essence = ct
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        if essence == "text/event-stream" {
            return false;
        }
        self.types.iter().any(|t| match t.strip_suffix('*') {
            Some(prefix) => essence.starts_with(prefix) && essence.len() > prefix.len(),
            None => *t == essence,
        })
    }

    /// Whether this response may be compressed at all (before `Accept-Encoding`).
    fn eligible(&self, req: &RequestHeader, upgrade: bool, resp: &ResponseHeader) -> bool {
        let status = resp.status.as_u16();
        if upgrade
            || req.method == http::Method::HEAD
            || req.version < http::Version::HTTP_11
            || status < 200
            || matches!(status, 204 | 206 | 304)
            || resp.headers.contains_key(header::CONTENT_ENCODING)
            || !self.compressible_type(resp.headers.get(header::CONTENT_TYPE))
        {
            return false;
        }
        let no_transform = resp.headers.get_all(header::CACHE_CONTROL).iter().any(|v| {
            v.to_str().is_ok_and(|v| {
                v.split(',')
                    .any(|d| d.trim().eq_ignore_ascii_case("no-transform"))
            })
        });
        let small = resp
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .is_some_and(|n| n < self.min_size);
        !no_transform && !small
    }

    /// The client's acceptable codings among ours, most preferred first, as an
    /// `Accept-Encoding` value for Pingora's module (which takes the first one listed).
    fn accept_encoding(&self, req: &RequestHeader) -> Option<HeaderValue> {
        let mut accepted: Vec<(u32, usize, &'static str)> = Vec::new();
        let mut any: Option<u32> = None;
        let mut listed: Vec<&str> = Vec::new();
        for v in req.headers.get_all(header::ACCEPT_ENCODING) {
            let Ok(v) = v.to_str() else { continue };
            for item in v.split(',') {
                let mut parts = item.split(';');
                let coding = parts.next().unwrap_or("").trim();
                if coding.is_empty() {
                    continue;
                }
                let q = parts
                    .filter_map(|p| p.trim().strip_prefix("q=").or(p.trim().strip_prefix("Q=")))
                    .next()
                    .map_or(Some(1000), parse_q);
                let Some(q) = q else { continue };
                if coding == "*" {
                    any = Some(q);
                    continue;
                }
                let Some(pos) = self
                    .algorithms
                    .iter()
                    .position(|a| a.eq_ignore_ascii_case(coding))
                else {
                    continue;
                };
                listed.push(self.algorithms[pos]);
                if q > 0 {
                    accepted.push((q, pos, self.algorithms[pos]));
                }
            }
        }
        // `*` stands for the codings not named.
        if let Some(q) = any.filter(|q| *q > 0) {
            for (pos, a) in self.algorithms.iter().enumerate() {
                if !listed.contains(a) {
                    accepted.push((q, pos, a));
                }
            }
        }
        accepted.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        accepted.dedup_by(|a, b| a.2 == b.2);
        let list: Vec<&str> = accepted.iter().map(|a| a.2).collect();
        (!list.is_empty()).then(|| HeaderValue::from_str(&list.join(", ")).ok())?
    }
}

/// A `q` value (`0` to `1`, up to 3 decimals) in thousandths; `None` when malformed.
fn parse_q(q: &str) -> Option<u32> {
    let q = q.trim();
    let (int, frac) = q.split_once('.').unwrap_or((q, ""));
    if frac.len() > 3 || !frac.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    let frac_n: u32 = format!("{frac:0<3}").parse().ok()?;
    match int {
        "0" => Some(frac_n),
        "1" if frac_n == 0 => Some(1000),
        _ => None,
    }
}

#[async_trait]
impl Filter for CompressFilter {
    type Config = CompressConfig;
    type State = ();

    fn new(conf: CompressConfig) -> std::result::Result<Self, String> {
        if !(1..=9).contains(&conf.level) {
            return Err(format!("level: {} is not in 1..=9", conf.level));
        }
        if conf.algorithms.is_empty() {
            return Err("algorithms: needs at least one of gzip, br, zstd".into());
        }
        let mut algorithms = Vec::new();
        for (i, a) in conf.algorithms.iter().enumerate() {
            let name = match a.to_ascii_lowercase().as_str() {
                "gzip" => "gzip",
                "br" => "br",
                "zstd" => "zstd",
                _ => {
                    return Err(format!(
                        "algorithms[{i}]: unknown coding \"{a}\" (gzip, br or zstd)"
                    ))
                }
            };
            if !algorithms.contains(&name) {
                algorithms.push(name);
            }
        }
        if conf.content_types.is_empty() {
            return Err("content_types: needs at least one media type".into());
        }
        let mut types = Vec::new();
        for (i, t) in conf.content_types.iter().enumerate() {
            let t = t.trim().to_ascii_lowercase();
            let ok = t.split_once('/').is_some_and(|(a, b)| {
                let token = |s: &str| {
                    !s.is_empty()
                        && s.bytes()
                            .all(|c| c.is_ascii_alphanumeric() || b"!#$&-^_.+".contains(&c))
                };
                token(a) && (b == "*" || token(b))
            });
            if !ok {
                return Err(format!(
                    "content_types[{i}]: \"{t}\" is not a media type (type/subtype or type/*)"
                ));
            }
            types.push(t);
        }
        Ok(CompressFilter {
            level: conf.level,
            min_size: conf.min_size.0,
            algorithms,
            types,
            warned: AtomicBool::new(false),
        })
    }

    async fn response(
        &self,
        req: &mut RequestCtx<'_>,
        resp: &mut ResponseHeader,
        _: &mut (),
    ) -> Result<()> {
        let route = req.route().to_string();
        let session = req.session_mut();
        let upgrade = session.is_upgrade_req();
        if !self.eligible(session.req_header(), upgrade, resp) {
            return Ok(());
        }
        let mut accept = RequestHeader::build("GET", b"/", Some(1))?;
        if let Some(ae) = self.accept_encoding(session.req_header()) {
            accept.insert_header(header::ACCEPT_ENCODING, ae)?;
        }
        let Some(module) = session
            .downstream_modules_ctx
            .get_mut::<ResponseCompression>()
        else {
            if !self.warned.swap(true, Relaxed) {
                log::warn!("{route}: compress: Pingora's response compression module is not installed: responses are sent uncompressed");
            }
            return Ok(());
        };
        if !module.is_header_phase() {
            return Ok(());
        }
        // The module read the request's Accept-Encoding while it was off (level 0): it is
        // turned on for this response and given the codings chosen above.
        module.adjust_level(self.level);
        module.request_filter(&accept);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter(conf: CompressConfig) -> CompressFilter {
        CompressFilter::new(conf).unwrap()
    }

    fn req(ae: &[&str]) -> RequestHeader {
        let mut r = RequestHeader::build("GET", b"/", None).unwrap();
        for v in ae {
            r.append_header(header::ACCEPT_ENCODING, *v).unwrap();
        }
        r
    }

    fn resp(ct: &str, len: Option<u64>) -> ResponseHeader {
        let mut r = ResponseHeader::build(200, None).unwrap();
        r.insert_header(header::CONTENT_TYPE, ct).unwrap();
        if let Some(n) = len {
            r.insert_header(header::CONTENT_LENGTH, n).unwrap();
        }
        r
    }

    #[test]
    fn compress_accept_encoding_honours_q_and_server_preference() {
        let f = filter(CompressConfig::default());
        let ae = |v: &[&str]| {
            f.accept_encoding(&req(v))
                .map(|h| h.to_str().unwrap().to_string())
        };
        assert_eq!(ae(&["gzip"]).as_deref(), Some("gzip"));
        assert_eq!(
            ae(&["gzip, deflate, br, zstd"]).as_deref(),
            Some("zstd, br, gzip")
        );
        assert_eq!(ae(&["gzip;q=1.0, br;q=0.5"]).as_deref(), Some("gzip, br"));
        assert_eq!(ae(&["gzip;q=0, br;q=0.2"]).as_deref(), Some("br"));
        assert_eq!(ae(&["identity"]), None);
        assert_eq!(ae(&[]), None);
        assert_eq!(ae(&["*;q=0.1, br;q=0"]).as_deref(), Some("zstd, gzip"));
        assert_eq!(ae(&["deflate", "GZIP"]).as_deref(), Some("gzip"));
        assert_eq!(ae(&["gzip;q=2"]), None, "malformed q");
        let f = filter(CompressConfig {
            algorithms: vec!["gzip".into()],
            ..Default::default()
        });
        assert_eq!(
            f.accept_encoding(&req(&["br, zstd, gzip;q=0.1"])).unwrap(),
            "gzip"
        );
        assert_eq!(f.accept_encoding(&req(&["br"])), None);
    }

    #[test]
    fn compress_eligibility() {
        let f = filter(CompressConfig::default());
        let get = req(&["gzip"]);
        assert!(f.eligible(&get, false, &resp("text/html; charset=utf-8", Some(1000))));
        assert!(f.eligible(&get, false, &resp("application/json", None)));
        assert!(f.eligible(&get, false, &resp("Text/Plain", Some(256))));
        assert!(
            !f.eligible(&get, false, &resp("text/plain", Some(255))),
            "min_size"
        );
        assert!(
            !f.eligible(&get, true, &resp("text/plain", Some(1000))),
            "upgrade"
        );
        assert!(!f.eligible(&get, false, &resp("text/event-stream", None)));
        assert!(!f.eligible(&get, false, &resp("text/event-stream; charset=utf-8", None)));
        assert!(!f.eligible(&get, false, &resp("image/png", Some(5000))));
        assert!(!f.eligible(&get, false, &resp("application/octet-stream", None)));
        let mut r = resp("text/plain", None);
        r.insert_header(header::CONTENT_ENCODING, "br").unwrap();
        assert!(!f.eligible(&get, false, &r), "already encoded");
        let mut r = resp("text/plain", None);
        r.insert_header(header::CACHE_CONTROL, "public, No-Transform")
            .unwrap();
        assert!(!f.eligible(&get, false, &r), "no-transform");
        let mut r = resp("text/plain", None);
        r.set_status(206).unwrap();
        assert!(!f.eligible(&get, false, &r), "partial");
        let head = RequestHeader::build("HEAD", b"/", None).unwrap();
        assert!(!f.eligible(&head, false, &resp("text/plain", None)));
        let mut http10 = req(&["gzip"]);
        http10.set_version(http::Version::HTTP_10);
        assert!(!f.eligible(&http10, false, &resp("text/plain", None)));
        let mut h2 = req(&["gzip"]);
        h2.set_version(http::Version::HTTP_2);
        assert!(f.eligible(&h2, false, &resp("text/plain", None)));
        let only_json = filter(CompressConfig {
            content_types: vec!["application/json".into(), "text/*".into()],
            ..Default::default()
        });
        assert!(!only_json.eligible(&get, false, &resp("text/event-stream", None)));
        assert!(!only_json.eligible(&get, false, &resp("text", None)));
    }

    #[test]
    fn compress_config_errors_name_the_key() {
        let e = |c: CompressConfig| CompressFilter::new(c).err().unwrap();
        assert_eq!(
            e(CompressConfig {
                level: 0,
                ..Default::default()
            }),
            "level: 0 is not in 1..=9"
        );
        assert_eq!(
            e(CompressConfig {
                algorithms: vec!["gzip".into(), "deflate".into()],
                ..Default::default()
            }),
            "algorithms[1]: unknown coding \"deflate\" (gzip, br or zstd)"
        );
        assert!(e(CompressConfig {
            content_types: vec!["json".into()],
            ..Default::default()
        })
        .starts_with("content_types[0]: \"json\" is not a media type"));
        assert_eq!(parse_q("0.5"), Some(500));
        assert_eq!(parse_q("1"), Some(1000));
        assert_eq!(parse_q("0"), Some(0));
        assert_eq!(parse_q("1.5"), None);
        assert_eq!(parse_q("0.1234"), None);
    }
}
