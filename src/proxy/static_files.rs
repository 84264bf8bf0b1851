//! `routes[].static`: files served from a directory, as nginx `root` + `index` would.
//!
//! A request path (already normalised, see `normalize.rs`, then `strip_prefix` / `rewrite`) is
//! percent-decoded, split into segments (a `..` segment is refused even though normalisation
//! removed them) and looked up under the root. The path found is canonicalised (symlinks
//! followed) and must still be under the canonical root, or the answer is 403; the file is
//! then opened beneath the root with no symlink allowed in any component (`openat2`), so a
//! symlink swapped into the path afterwards is refused too (403), not followed out of the
//! root. The lookup runs on one blocking thread per request.
//!
//! What a client gets, with nginx's defaults:
//! - a directory: its first existing `index` file; none: 403 (no listing); a directory named
//!   without its trailing slash: 301 to the path with `/` (relative links keep working);
//! - `Content-Type` from the file extension (`mime_guess`), `; charset=utf-8` on text types,
//!   `application/octet-stream` when unknown;
//! - `ETag` `"<mtime secs hex>-<length hex>"` (nginx's format), `Last-Modified`,
//!   `Accept-Ranges: bytes`; `If-Match` / `If-Unmodified-Since` (412), `If-None-Match` /
//!   `If-Modified-Since` (304) in RFC 9110's order;
//! - `Range` on GET (parsed by `http-range-header`): one range gives 206 with
//!   `Content-Range`, an unsatisfiable one 416 with `Content-Range: bytes */LEN`, a malformed
//!   header is ignored (200), and **several ranges get the whole file (200)**, as a server may
//!   (RFC 9110 14.2) and as many do rather than multipart; `If-Range` (ETag or date) must match
//!   or the whole file is sent;
//! - with `precompressed: true`, `FILE.br` or `FILE.gz` (in the client's `Accept-Encoding`
//!   preference, `br` first on a tie) with `Content-Encoding`, `Vary: Accept-Encoding` on
//!   every file response of the route; never for a Range request (ranges are of the identity
//!   file);
//! - `HEAD`: the GET headers without a body; other methods: 405 with `Allow: GET, HEAD`.
//!
//! Bodies are streamed in 64 KiB reads from tokio's async file, never held whole in memory;
//! the file is closed when the response ends. A file that shrinks while being sent closes the
//! connection (its `Content-Length` cannot be honoured).

use super::headers::HeaderRules;
use super::respond::respond_with_rules;
use crate::config::{Issues, StaticConf};
use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderName, HeaderValue};
use http::Method;
use pingora_core::Result;
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::Session;
use std::ffi::OsString;
use std::fs::{File, Metadata};
use std::io::{self, SeekFrom};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncReadExt, AsyncSeekExt};

/// Bytes read from the file per body chunk.
pub const CHUNK: usize = 64 * 1024;

/// A compiled `static:` action.
#[derive(Debug)]
pub struct StaticFiles {
    /// The root as configured (resolved against the config's directory); canonicalised per
    /// request, so a root that is a symlink flipped by a deploy is followed without a reload.
    root: PathBuf,
    /// Index file names, in order.
    index: Arc<[String]>,
    /// Serve `.br` / `.gz` siblings.
    precompressed: bool,
    /// `Cache-Control` value, when `max_age` is set.
    cache_control: Option<HeaderValue>,
}

impl StaticFiles {
    /// Checks and compiles `conf` (`at` is the key path, e.g. `routes[2].static`); the root
    /// must be an existing directory, relative roots are relative to `base_dir`.
    pub fn compile(
        conf: &StaticConf,
        base_dir: Option<&Path>,
        at: &str,
        issues: &mut Issues,
    ) -> Option<StaticFiles> {
        let errors = issues.errors.len();
        let raw = Path::new(&conf.root);
        let root = match base_dir {
            Some(b) if raw.is_relative() => b.join(raw),
            _ => raw.to_path_buf(),
        };
        if conf.root.is_empty() {
            issues.error(format!("{at}.root"), "must not be empty");
        } else {
            match std::fs::metadata(&root) {
                Ok(m) if m.is_dir() => {}
                Ok(_) => issues.error(
                    format!("{at}.root"),
                    format!("not a directory: {}", root.display()),
                ),
                Err(e) => issues.error(format!("{at}.root"), format!("{}: {e}", root.display())),
            }
        }
        for (i, name) in conf.index.iter().enumerate() {
            if name.is_empty() || name == "." || name == ".." || name.contains(['/', '\0']) {
                issues.error(
                    format!("{at}.index[{i}]"),
                    format!("\"{name}\" is not a file name"),
                );
            }
        }
        let cache_control = conf
            .max_age
            .and_then(|d| HeaderValue::try_from(format!("max-age={}", d.0.as_secs())).ok());
        (issues.errors.len() == errors).then(|| StaticFiles {
            root,
            index: conf.index.iter().cloned().collect(),
            precompressed: conf.precompressed,
            cache_control,
        })
    }

    /// Answers the request from the files: `path` is looked up under the root (the path after
    /// `strip_prefix` / `rewrite`), `url_path` is the client's (normalised) path, used for the
    /// directory redirect and to tell a directory request (trailing `/`).
    pub(crate) async fn serve(
        &self,
        session: &mut Session,
        path: &str,
        url_path: &str,
        rules: &HeaderRules,
    ) -> Result<()> {
        let req = session.req_header();
        let head_only = req.method == Method::HEAD;
        if req.method != Method::GET && !head_only {
            // The request body is not read: do not reuse the connection.
            session.set_keepalive(None);
            let allow = (header::ALLOW, HeaderValue::from_static("GET, HEAD"));
            return answer(session, 405, &[allow], b"405 method not allowed\n", rules).await;
        }
        let Some(rel) = relative_path(path) else {
            log::debug!(
                "static: refused path {path:?} (dot segment, NUL or separator after decoding)"
            );
            return answer(session, 400, &[], b"400 bad request path\n", rules).await;
        };
        let ranged = req.method == Method::GET && req.headers.contains_key(header::RANGE);
        let encodings = if self.precompressed && !ranged {
            accepted_encodings(req)
        } else {
            Vec::new()
        };
        let job = Lookup {
            root: self.root.clone(),
            rel,
            dir_request: url_path.ends_with('/'),
            index: self.index.clone(),
            encodings,
        };
        let found = match tokio::task::spawn_blocking(move || job.run()).await {
            Ok(f) => f,
            Err(e) => {
                log::warn!("static: lookup of {path:?} failed: {e}");
                Outcome::Error
            }
        };
        match found {
            Outcome::File(f) => self.send_file(session, f, head_only, rules).await,
            Outcome::Redirect => {
                let mut to = String::with_capacity(url_path.len() + 1);
                to.push_str(url_path);
                to.push('/');
                if let Some(q) = session.req_header().uri.query() {
                    to.push('?');
                    to.push_str(q);
                }
                let loc =
                    HeaderValue::try_from(to).unwrap_or_else(|_| HeaderValue::from_static("/"));
                answer(session, 301, &[(header::LOCATION, loc)], b"", rules).await
            }
            Outcome::NotFound => answer(session, 404, &[], b"404 not found\n", rules).await,
            Outcome::Forbidden(why) => {
                // A client can ask for these in a loop: at most one line a second.
                static REFUSED: crate::util::OncePerSecond = crate::util::OncePerSecond::new();
                if REFUSED.ready() {
                    log::info!("static: {path:?} refused with 403: {why}");
                }
                answer(session, 403, &[], b"403 forbidden\n", rules).await
            }
            Outcome::Error => answer(session, 500, &[], b"500 internal error\n", rules).await,
        }
    }

    /// Sends an opened file: conditional requests, ranges, headers, then the body.
    async fn send_file(
        &self,
        session: &mut Session,
        f: Opened,
        head_only: bool,
        rules: &HeaderRules,
    ) -> Result<()> {
        let len = f.meta.len();
        let mtime = f.meta.modified().unwrap_or(UNIX_EPOCH);
        let secs = mtime
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO)
            .as_secs();
        let mtime = UNIX_EPOCH + Duration::from_secs(secs);
        let etag = format!("\"{secs:x}-{len:x}\"");
        let last_modified = httpdate::fmt_http_date(mtime);
        let req = session.req_header();
        let validators = |resp: &mut ResponseHeader| -> Result<()> {
            resp.insert_header(header::ETAG, etag.as_str())?;
            resp.insert_header(header::LAST_MODIFIED, last_modified.as_str())?;
            if let Some(cc) = &self.cache_control {
                resp.insert_header(header::CACHE_CONTROL, cc.clone())?;
            }
            if self.precompressed {
                resp.insert_header(header::VARY, "Accept-Encoding")?;
            }
            Ok(())
        };
        match preconditions(req, &etag, mtime) {
            Precondition::Failed => {
                return answer(session, 412, &[], b"412 precondition failed\n", rules).await
            }
            Precondition::NotModified => {
                let mut resp = ResponseHeader::build(304, Some(6))?;
                validators(&mut resp)?;
                rules.apply(&mut resp);
                return session.write_response_header(Box::new(resp), true).await;
            }
            Precondition::Pass => {}
        }
        let range = if head_only || f.encoding.is_some() {
            Span::Whole
        } else {
            requested_range(req, &etag, mtime, len)
        };
        let (status, start, count) = match range {
            Span::Whole => (200, 0, len),
            Span::Part(a, b) => (206, a, b - a + 1),
            Span::Unsatisfiable => {
                let cr = HeaderValue::try_from(format!("bytes */{len}"))
                    .unwrap_or_else(|_| HeaderValue::from_static("bytes */0"));
                return answer(
                    session,
                    416,
                    &[(header::CONTENT_RANGE, cr)],
                    b"416 range not satisfiable\n",
                    rules,
                )
                .await;
            }
        };
        let mut resp = ResponseHeader::build(status, Some(10))?;
        resp.insert_header(header::CONTENT_TYPE, content_type(&f.name))?;
        resp.insert_header(header::CONTENT_LENGTH, count)?;
        validators(&mut resp)?;
        resp.insert_header(header::ACCEPT_RANGES, "bytes")?;
        if let Some(enc) = f.encoding {
            resp.insert_header(header::CONTENT_ENCODING, enc.name())?;
        }
        if status == 206 {
            let end = start + count - 1;
            resp.insert_header(header::CONTENT_RANGE, format!("bytes {start}-{end}/{len}"))?;
        }
        rules.apply(&mut resp);
        let no_body = head_only || count == 0;
        session
            .write_response_header(Box::new(resp), no_body)
            .await?;
        if no_body {
            return Ok(());
        }
        stream_body(session, f.file, start, count).await
    }
}

/// Writes a small complete response (error, redirect) with the route's header rules.
async fn answer(
    session: &mut Session,
    status: u16,
    extra: &[(HeaderName, HeaderValue)],
    body: &'static [u8],
    rules: &HeaderRules,
) -> Result<()> {
    let mut headers = Vec::with_capacity(extra.len() + 1);
    if !body.is_empty() {
        headers.push((
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        ));
    }
    headers.extend_from_slice(extra);
    respond_with_rules(
        session,
        status,
        &headers,
        Bytes::from_static(body),
        Some(rules),
    )
    .await
}

/// Streams `count` bytes of `file` from `start` in [`CHUNK`] reads. A file shorter than
/// announced (truncated meanwhile) ends the response early and closes the connection.
async fn stream_body(session: &mut Session, file: File, start: u64, count: u64) -> Result<()> {
    let mut file = tokio::fs::File::from_std(file);
    file.set_max_buf_size(CHUNK);
    let io_err = |e: io::Error| {
        pingora_core::Error::because(pingora_core::ErrorType::FileReadError, "static file", e)
    };
    if start > 0 {
        file.seek(SeekFrom::Start(start)).await.map_err(io_err)?;
    }
    let mut left = count;
    while left > 0 {
        let want = CHUNK.min(usize::try_from(left).unwrap_or(CHUNK));
        let mut buf = BytesMut::zeroed(want);
        let mut filled = 0;
        while filled < want {
            match file.read(&mut buf[filled..]).await {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    log::warn!("static: read error after {} bytes: {e}", count - left);
                    session.set_keepalive(None);
                    return Ok(());
                }
            }
        }
        if filled < want {
            log::warn!(
                "static: file ended {} bytes early (changed while sent): connection closed",
                left - filled as u64
            );
            session.set_keepalive(None);
            if filled > 0 {
                buf.truncate(filled);
                session
                    .write_response_body(Some(buf.freeze()), false)
                    .await?;
            }
            return Ok(());
        }
        left -= want as u64;
        session
            .write_response_body(Some(buf.freeze()), left == 0)
            .await?;
    }
    Ok(())
}

/// `Content-Type` for a file name: by extension, UTF-8 for text, octet-stream if unknown.
pub fn content_type(name: &Path) -> String {
    match mime_guess::from_path(name).first() {
        Some(m) => {
            let textual = m.type_() == mime_guess::mime::TEXT
                || matches!(m.subtype().as_str(), "javascript" | "json" | "xml")
                || m.suffix().is_some_and(|s| s == "json");
            if textual {
                format!("{}; charset=utf-8", m.essence_str())
            } else {
                m.essence_str().to_string()
            }
        }
        None => "application/octet-stream".into(),
    }
}

/// The request path as a relative file path: each segment percent-decoded, empty and `.`
/// segments dropped; `None` for a `..` segment, a NUL byte, or a segment that decodes to a
/// separator (`%2F`, `%5C`): routes matched the path with those as data, so decoding them
/// into separators here would let `/private%2Fsecret.html` slip past a deny route for
/// `/private/` onto the file `private/secret.html`.
pub fn relative_path(path: &str) -> Option<PathBuf> {
    let mut rel = PathBuf::new();
    let mut decoded = Vec::new();
    for raw in path.as_bytes().split(|&b| b == b'/') {
        decoded.clear();
        let mut i = 0;
        while i < raw.len() {
            let b = raw[i];
            if b == b'%' && i + 2 < raw.len() {
                let hex = |c: u8| (c as char).to_digit(16);
                if let (Some(h), Some(l)) = (hex(raw[i + 1]), hex(raw[i + 2])) {
                    decoded.push((h * 16 + l) as u8);
                    i += 3;
                    continue;
                }
            }
            decoded.push(b);
            i += 1;
        }
        match decoded.as_slice() {
            b"" | b"." => {}
            b".." => return None,
            s if s.iter().any(|&b| b == 0 || b == b'/' || b == b'\\') => return None,
            s => rel.push(std::ffi::OsStr::from_bytes(s)),
        }
    }
    Some(rel)
}

/// A precompressed encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// Brotli, `FILE.br`.
    Br,
    /// Gzip, `FILE.gz`.
    Gzip,
}

impl Encoding {
    /// The `Content-Encoding` token.
    pub fn name(self) -> &'static str {
        match self {
            Encoding::Br => "br",
            Encoding::Gzip => "gzip",
        }
    }

    fn suffix(self) -> &'static [u8] {
        match self {
            Encoding::Br => b".br",
            Encoding::Gzip => b".gz",
        }
    }
}

/// The precompressed encodings the request's `Accept-Encoding` allows, preferred first
/// (higher q, then `br` before `gzip`); `q=0` refuses one, `*` stands for those not named.
pub fn accepted_encodings(req: &RequestHeader) -> Vec<Encoding> {
    let (mut br, mut gzip, mut star) = (None::<f32>, None::<f32>, None::<f32>);
    for v in req.headers.get_all(header::ACCEPT_ENCODING) {
        let Ok(v) = v.to_str() else { continue };
        for item in v.split(',') {
            let mut parts = item.split(';');
            let name = parts.next().unwrap_or("").trim();
            let q = parts
                .filter_map(|p| {
                    let (k, v) = p.split_once('=')?;
                    k.trim().eq_ignore_ascii_case("q").then(|| v.trim())
                })
                .next()
                .map_or(1.0, |v| v.parse::<f32>().unwrap_or(0.0));
            let slot = if name.eq_ignore_ascii_case("br") {
                &mut br
            } else if name.eq_ignore_ascii_case("gzip") || name.eq_ignore_ascii_case("x-gzip") {
                &mut gzip
            } else if name == "*" {
                &mut star
            } else {
                continue;
            };
            *slot = Some(slot.map_or(q, |old: f32| old.max(q)));
        }
    }
    let mut out: Vec<(Encoding, f32)> = [(Encoding::Br, br), (Encoding::Gzip, gzip)]
        .into_iter()
        .filter_map(|(e, q)| Some((e, q.or(star)?)))
        .filter(|&(_, q)| q > 0.0)
        .collect();
    // Stable: br stays ahead of gzip on equal q.
    out.sort_by(|a, b| b.1.total_cmp(&a.1));
    out.into_iter().map(|(e, _)| e).collect()
}

/// What the conditional headers say.
#[derive(Debug, PartialEq, Eq)]
pub enum Precondition {
    /// Go on.
    Pass,
    /// 304.
    NotModified,
    /// 412.
    Failed,
}

/// Whether `tag` (one entity tag, maybe weak) matches `etag`; `weak` allows a `W/` tag.
fn tag_matches(tag: &str, etag: &str, weak: bool) -> bool {
    let tag = tag.trim();
    match tag.strip_prefix("W/") {
        Some(t) => weak && t == etag,
        None => tag == etag,
    }
}

/// Whether an `If-Match` / `If-None-Match` list matches `etag`.
fn list_matches(list: &str, etag: &str, weak: bool) -> bool {
    list.trim() == "*" || list.split(',').any(|t| tag_matches(t, etag, weak))
}

fn header_str(req: &RequestHeader, name: HeaderName) -> Option<&str> {
    req.headers.get(name).and_then(|v| v.to_str().ok())
}

/// Evaluates `If-Match`, `If-Unmodified-Since`, `If-None-Match`, `If-Modified-Since` in
/// RFC 9110 13.2.2 order for a GET or HEAD of a file with `etag` and `mtime` (whole seconds).
pub fn preconditions(req: &RequestHeader, etag: &str, mtime: SystemTime) -> Precondition {
    let date = |name| header_str(req, name).and_then(|v| httpdate::parse_http_date(v).ok());
    if let Some(list) = header_str(req, header::IF_MATCH) {
        if !list_matches(list, etag, false) {
            return Precondition::Failed;
        }
    } else if let Some(d) = date(header::IF_UNMODIFIED_SINCE) {
        if mtime > d {
            return Precondition::Failed;
        }
    }
    if let Some(list) = header_str(req, header::IF_NONE_MATCH) {
        if list_matches(list, etag, true) {
            return Precondition::NotModified;
        }
    } else if let Some(d) = date(header::IF_MODIFIED_SINCE) {
        if mtime <= d {
            return Precondition::NotModified;
        }
    }
    Precondition::Pass
}

/// The part of the file to send.
#[derive(Debug, PartialEq, Eq)]
pub enum Span {
    /// The whole file (no, malformed, several, or not `If-Range`-matching ranges).
    Whole,
    /// Bytes `start..=end`.
    Part(u64, u64),
    /// 416.
    Unsatisfiable,
}

/// The span a GET's `Range` asks for (see the module doc for what is honoured).
pub fn requested_range(req: &RequestHeader, etag: &str, mtime: SystemTime, len: u64) -> Span {
    let Some(range) = header_str(req, header::RANGE) else {
        return Span::Whole;
    };
    if let Some(cond) = header_str(req, header::IF_RANGE) {
        let cond = cond.trim();
        let fresh = if cond.starts_with('"') || cond.starts_with("W/") {
            tag_matches(cond, etag, false)
        } else {
            httpdate::parse_http_date(cond).is_ok_and(|d| d == mtime)
        };
        if !fresh {
            return Span::Whole;
        }
    }
    let Ok(parsed) = http_range_header::parse_range_header(range) else {
        return Span::Whole;
    };
    match parsed.validate(len) {
        Ok(ranges) if ranges.len() == 1 => Span::Part(*ranges[0].start(), *ranges[0].end()),
        Ok(_) => Span::Whole,
        Err(_) => Span::Unsatisfiable,
    }
}

/// An opened file to send.
struct Opened {
    file: File,
    meta: Metadata,
    /// The name its type is guessed from (the requested one, not a `.gz` sibling's).
    name: PathBuf,
    encoding: Option<Encoding>,
}

/// Outcome of a lookup.
enum Outcome {
    File(Opened),
    Redirect,
    NotFound,
    Forbidden(&'static str),
    Error,
}

/// A lookup, run on a blocking thread.
struct Lookup {
    root: PathBuf,
    rel: PathBuf,
    dir_request: bool,
    index: Arc<[String]>,
    encodings: Vec<Encoding>,
}

/// Maps a file-system error to an answer: 404 for what does not exist, 403 for what may not
/// be read (or loops), 500 otherwise.
fn from_io(e: &io::Error, what: &Path) -> Outcome {
    match e.raw_os_error() {
        Some(libc::ENOENT | libc::ENOTDIR | libc::ENAMETOOLONG) => Outcome::NotFound,
        Some(libc::EACCES | libc::EPERM) => Outcome::Forbidden("permission denied"),
        Some(libc::ELOOP) => Outcome::Forbidden("symlink loop"),
        _ => {
            log::warn!("static: {}: {e}", what.display());
            Outcome::Error
        }
    }
}

impl Lookup {
    fn run(self) -> Outcome {
        let root = match std::fs::canonicalize(&self.root) {
            Ok(r) => r,
            Err(e) => {
                log::warn!("static: root {}: {e}", self.root.display());
                return Outcome::NotFound;
            }
        };
        let target = root.join(&self.rel);
        let mut path = match std::fs::canonicalize(&target) {
            Ok(p) => p,
            Err(e) => return from_io(&e, &target),
        };
        if !path.starts_with(&root) {
            return Outcome::Forbidden("resolves outside the root (symlink)");
        }
        let meta = match std::fs::metadata(&path) {
            Ok(m) => m,
            Err(e) => return from_io(&e, &path),
        };
        let mut name = self.rel.clone();
        if meta.is_dir() {
            if !self.dir_request {
                return Outcome::Redirect;
            }
            let index = self.index.iter().find_map(|i| {
                let p = std::fs::canonicalize(path.join(i)).ok()?;
                let inside = p.starts_with(&root) && std::fs::metadata(&p).ok()?.is_file();
                inside.then_some((p, i))
            });
            let Some((p, i)) = index else {
                return Outcome::Forbidden("directory without an index file");
            };
            path = p;
            name.push(i);
        } else if self.dir_request {
            // `/file.txt/`: not a directory.
            return Outcome::NotFound;
        }
        for &enc in &self.encodings {
            let mut sibling = OsString::from(path.as_os_str()).into_vec();
            sibling.extend_from_slice(enc.suffix());
            let sibling = PathBuf::from(OsString::from_vec(sibling));
            let Ok(canon) = std::fs::canonicalize(&sibling) else {
                continue;
            };
            if !canon.starts_with(&root) {
                continue;
            }
            if let Ok((file, meta)) = open_regular(&root, &canon) {
                return Outcome::File(Opened {
                    file,
                    meta,
                    name,
                    encoding: Some(enc),
                });
            }
        }
        match open_regular(&root, &path) {
            Ok((file, meta)) => Outcome::File(Opened {
                file,
                meta,
                name,
                encoding: None,
            }),
            Err(Ok(why)) => Outcome::Forbidden(why),
            Err(Err(e)) => from_io(&e, &path),
        }
    }
}

/// Opens `path`, canonical and inside the canonical `root`, for reading, without blocking on a
/// FIFO; only regular files are accepted. Its part under the root is resolved beneath the
/// root's descriptor with no symlink allowed in any component (`openat2`, `RESOLVE_BENEATH |
/// RESOLVE_NO_SYMLINKS`): the lookup canonicalised the path, so a symlink met now (in any
/// component, not only the last) was swapped in after the lookup checked it, and is refused
/// instead of followed out of the root. Where `openat2` is missing (Linux before 5.6, or
/// filtered by a sandbox) only the last component is protected (`O_NOFOLLOW`).
fn open_regular(
    root: &Path,
    path: &Path,
) -> std::result::Result<(File, Metadata), io::Result<&'static str>> {
    let Ok(rel) = path.strip_prefix(root) else {
        return Err(Ok("resolves outside the root (symlink)"));
    };
    let file = match open_beneath(root, rel) {
        Ok(f) => f,
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOSYS | libc::EPERM)) => {
            static WARNED: std::sync::Once = std::sync::Once::new();
            WARNED.call_once(|| {
                log::warn!("static: openat2 is not available ({e}): a symlink swapped into a served path's directories after its lookup is not detected")
            });
            std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
                .open(path)
                .map_err(Err)?
        }
        Err(e) if matches!(e.raw_os_error(), Some(libc::ELOOP | libc::EXDEV)) => {
            return Err(Ok("a symlink appeared in the path after its lookup"));
        }
        Err(e) => return Err(Err(e)),
    };
    let meta = file.metadata().map_err(Err)?;
    if !meta.is_file() {
        return Err(Ok("not a regular file"));
    }
    Ok((file, meta))
}

/// `openat2(root, rel, O_RDONLY | O_NONBLOCK | O_CLOEXEC, RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)`.
fn open_beneath(root: &Path, rel: &Path) -> io::Result<File> {
    use std::os::fd::{AsRawFd, FromRawFd};
    let dir = File::open(root)?;
    let rel = if rel.as_os_str().is_empty() {
        Path::new(".")
    } else {
        rel
    };
    let rel = std::ffi::CString::new(rel.as_os_str().as_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: `open_how` is plain data (non-exhaustive, so zeroed and then filled in).
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (libc::O_RDONLY | libc::O_NONBLOCK | libc::O_CLOEXEC) as u64;
    how.resolve = libc::RESOLVE_BENEATH | libc::RESOLVE_NO_SYMLINKS;
    // SAFETY: a valid directory descriptor, a NUL-terminated path and an `open_how` of the
    // size passed, all alive for the call.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            dir.as_raw_fd(),
            rel.as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a descriptor openat2 just returned, owned by nothing else.
    Ok(unsafe { File::from_raw_fd(fd as i32) })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A symlink in any component of a path the lookup had checked (one swapped in since) is
    /// refused, even when it points inside the root; a plain path opens.
    #[test]
    fn a_symlink_swapped_into_a_checked_path_is_refused() {
        let base = std::env::temp_dir().join(format!("static-beneath-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let (root, outside) = (base.join("root"), base.join("outside"));
        std::fs::create_dir_all(root.join("dir")).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(root.join("dir/file.txt"), b"inside").unwrap();
        std::fs::write(outside.join("file.txt"), b"outside").unwrap();
        let root = std::fs::canonicalize(&root).unwrap();
        if let Err(e) = open_beneath(&root, Path::new("dir/file.txt")) {
            // Only the fallback (the last component) is protected there: nothing to check.
            assert!(
                matches!(e.raw_os_error(), Some(libc::ENOSYS | libc::EPERM)),
                "{e}"
            );
            eprintln!("openat2 is not available here ({e}): not checked");
            return;
        }

        let (_, meta) = open_regular(&root, &root.join("dir/file.txt")).expect("plain path");
        assert_eq!(meta.len(), 6);

        // `dir` replaced by a symlink to a directory outside the root after the lookup.
        std::fs::rename(root.join("dir"), root.join("dir.old")).unwrap();
        std::os::unix::fs::symlink(&outside, root.join("dir")).unwrap();
        let refused = open_regular(&root, &root.join("dir/file.txt"));
        assert!(matches!(refused, Err(Ok(_))), "followed out of the root");
        // Even a symlink that stays inside the root: the path was canonical when checked.
        std::fs::remove_file(root.join("dir")).unwrap();
        std::os::unix::fs::symlink("dir.old", root.join("dir")).unwrap();
        assert!(matches!(
            open_regular(&root, &root.join("dir/file.txt")),
            Err(Ok(_))
        ));
        // A path not under the root at all.
        assert!(matches!(
            open_regular(&root, &outside.join("file.txt")),
            Err(Ok(_))
        ));
        std::fs::remove_dir_all(&base).unwrap();
    }

    fn req(headers: &[(&str, &str)]) -> RequestHeader {
        let mut r = RequestHeader::build("GET", b"/", None).unwrap();
        for (k, v) in headers {
            r.append_header(k.to_string(), *v).unwrap();
        }
        r
    }

    #[test]
    fn paths_decode_and_refuse_dot_dot() {
        assert_eq!(relative_path("/").unwrap(), PathBuf::new());
        assert_eq!(relative_path("/a/b.txt").unwrap(), PathBuf::from("a/b.txt"));
        assert_eq!(
            relative_path("/my%20file.html").unwrap(),
            PathBuf::from("my file.html")
        );
        // An encoded separator is data to the router: never a separator here.
        assert_eq!(relative_path("/a%2Fb"), None);
        assert_eq!(relative_path("/a%2fb"), None);
        assert_eq!(relative_path("/a%5Cb"), None);
        assert_eq!(relative_path("/./a//b/").unwrap(), PathBuf::from("a/b"));
        for bad in [
            "/..",
            "/a/../b",
            "/%2e%2e/x",
            "/a/%2E%2E",
            "/x%2F..%2Fy",
            "/a%00b",
        ] {
            assert_eq!(relative_path(bad), None, "{bad}");
        }
        // A lone or broken escape is kept as it is.
        assert_eq!(relative_path("/100%").unwrap(), PathBuf::from("100%"));
        assert_eq!(relative_path("/%zz").unwrap(), PathBuf::from("%zz"));
    }

    #[test]
    fn content_types() {
        let ct = |n: &str| content_type(Path::new(n));
        assert_eq!(ct("index.html"), "text/html; charset=utf-8");
        assert_eq!(ct("a.css"), "text/css; charset=utf-8");
        assert!(
            ct("a.js").ends_with("/javascript; charset=utf-8"),
            "{}",
            ct("a.js")
        );
        assert_eq!(ct("a.svg"), "image/svg+xml");
        assert_eq!(ct("a.png"), "image/png");
        assert_eq!(ct("a.json"), "application/json; charset=utf-8");
        assert_eq!(ct("noext"), "application/octet-stream");
    }

    #[test]
    fn accept_encoding_preferences() {
        let enc = |v: &str| accepted_encodings(&req(&[("accept-encoding", v)]));
        assert_eq!(enc("gzip, deflate, br"), vec![Encoding::Br, Encoding::Gzip]);
        assert_eq!(
            enc("gzip;q=1, br;q=0.5"),
            vec![Encoding::Gzip, Encoding::Br]
        );
        assert_eq!(enc("br;q=0, gzip"), vec![Encoding::Gzip]);
        assert_eq!(enc("*"), vec![Encoding::Br, Encoding::Gzip]);
        assert_eq!(enc("*;q=0.1, br;q=0"), vec![Encoding::Gzip]);
        assert_eq!(enc("identity"), vec![]);
        assert!(accepted_encodings(&req(&[])).is_empty());
    }

    #[test]
    fn conditional_requests() {
        let t = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let d = |t: SystemTime| httpdate::fmt_http_date(t);
        let e = "\"abc-10\"";
        let pc = |h: &[(&str, &str)]| preconditions(&req(h), e, t);
        assert_eq!(pc(&[]), Precondition::Pass);
        assert_eq!(pc(&[("if-none-match", e)]), Precondition::NotModified);
        assert_eq!(
            pc(&[("if-none-match", "W/\"abc-10\"")]),
            Precondition::NotModified
        );
        assert_eq!(
            pc(&[("if-none-match", "\"x\", \"abc-10\"")]),
            Precondition::NotModified
        );
        assert_eq!(pc(&[("if-none-match", "\"other\"")]), Precondition::Pass);
        assert_eq!(
            pc(&[("if-modified-since", &d(t))]),
            Precondition::NotModified
        );
        let earlier = d(t - Duration::from_secs(1));
        assert_eq!(pc(&[("if-modified-since", &earlier)]), Precondition::Pass);
        // If-None-Match wins over If-Modified-Since.
        assert_eq!(
            pc(&[("if-none-match", "\"other\""), ("if-modified-since", &d(t))]),
            Precondition::Pass
        );
        assert_eq!(pc(&[("if-match", "\"other\"")]), Precondition::Failed);
        assert_eq!(pc(&[("if-match", "W/\"abc-10\"")]), Precondition::Failed);
        assert_eq!(pc(&[("if-match", "*")]), Precondition::Pass);
        assert_eq!(
            pc(&[("if-unmodified-since", &earlier)]),
            Precondition::Failed
        );
    }

    #[test]
    fn ranges() {
        let t = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let e = "\"abc-64\"";
        let r = |h: &[(&str, &str)]| requested_range(&req(h), e, t, 100);
        assert_eq!(r(&[]), Span::Whole);
        assert_eq!(r(&[("range", "bytes=0-9")]), Span::Part(0, 9));
        assert_eq!(r(&[("range", "bytes=-10")]), Span::Part(90, 99));
        assert_eq!(r(&[("range", "bytes=95-")]), Span::Part(95, 99));
        assert_eq!(r(&[("range", "bytes=50-500")]), Span::Part(50, 99));
        assert_eq!(r(&[("range", "bytes=100-")]), Span::Unsatisfiable);
        assert_eq!(r(&[("range", "bytes=0-1,5-6")]), Span::Whole);
        assert_eq!(r(&[("range", "items=0-1")]), Span::Whole);
        assert_eq!(
            r(&[("range", "bytes=0-9"), ("if-range", e)]),
            Span::Part(0, 9)
        );
        assert_eq!(
            r(&[("range", "bytes=0-9"), ("if-range", "\"old\"")]),
            Span::Whole
        );
        assert_eq!(
            r(&[("range", "bytes=0-9"), ("if-range", "W/\"abc-64\"")]),
            Span::Whole
        );
        let date = httpdate::fmt_http_date(t);
        assert_eq!(
            r(&[("range", "bytes=0-9"), ("if-range", &date)]),
            Span::Part(0, 9)
        );
        let old = httpdate::fmt_http_date(t - Duration::from_secs(5));
        assert_eq!(
            r(&[("range", "bytes=0-9"), ("if-range", &old)]),
            Span::Whole
        );
    }
}
