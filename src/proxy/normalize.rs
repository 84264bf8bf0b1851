//! Request-path normalisation: owns the decision of which path a request is routed by and,
//! unless its route sets `raw_path`, which path goes upstream.
//!
//! Routing on the raw bytes let a client name a denied path in a spelling the route table did
//! not know but the backend did (`/%61dmin`, `//admin`, `/x/../admin`, `/%2e/admin`): the
//! backend normalises and serves `/admin`. [`normalize`] gives every such spelling one form,
//! much as nginx does before `location` matching (nginx decodes every escape; only unreserved
//! ones are decoded here, so the result means the same to any backend when sent upstream):
//!
//! * `%XX` of an unreserved character (`A-Z a-z 0-9 - . _ ~`) is decoded; every other escape
//!   stays encoded with upper-case hex (`%2f` -> `%2F`: an encoded slash is data, never a
//!   separator; `%c3%a9` -> `%C3%A9`: non-ASCII is not decoded).
//! * `.` segments are dropped and `..` segments remove the segment before them, also when
//!   written encoded (`%2e`, `.%2E`); duplicate slashes merge; a trailing slash is kept.
//! * Errors (the gateway answers 400): a `%` not followed by two hex digits, `%00`, a `..`
//!   that would climb above the root, and a `.`, `..` or empty segment carrying `;`
//!   parameters (`/;/admin`, `/.;x/admin`, `/..;/admin`). Tomcat, Jetty and Spring strip
//!   `;params` from each segment before resolving dot segments, so to them `/..;/admin` is
//!   `/../admin`, while nginx and most other servers see a segment literally named `..;`.
//!   Normalising for one reading is wrong for the other, and no client writes such segments
//!   (browsers resolve dot segments first), so they are refused rather than guessed at.
//!   Parameters on named segments (`/page;jsessionid=1`) are kept as written.
//! * Also 400, for the same reason: a `.` or `..` hidden behind an encoded slash or a
//!   backslash inside a segment (`/x/..%2F..%2Fadmin`, `/x/..\admin`, `/x/..%5Cadmin`). Here
//!   it is one segment named `..%2F..%2Fadmin`; a backend that decodes `%2F` or honours `\`
//!   (IIS, ASP.NET, hand-written static servers) before resolving dot segments serves
//!   `/admin`. Tomcat refuses every `%2F` by default for this reason.
//!
//! Matching stays case-sensitive (nginx `location` without `~*`): `/ADMIN` is not `/admin`.
//! The query is not part of the input and is never touched.
//!
//! Already-normal paths (no `%`, `;`, `\`, `//` or `/.`, one byte scan) come back borrowed,
//! so the common request pays no allocation.

use std::borrow::Cow;
use std::fmt;

/// Why a path cannot be normalised (the request is answered 400).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathError {
    /// A `%` not followed by two hex digits (`%zz`, a truncated `%4`).
    BadEscape,
    /// An encoded NUL (`%00`): no backend means it as data, several treat it as a terminator.
    Nul,
    /// A `..` segment with nothing left to remove (`/../x`, `/a/../../x`).
    AboveRoot,
    /// A `.`, `..` or empty segment with `;` parameters (`/..;/x`, `/;/x`): read as a dot or
    /// empty segment by Tomcat-style backends and literally by others.
    DotSegmentParams,
    /// A `.` or `..` between encoded slashes or backslashes inside a segment (`..%2F..`):
    /// a dot segment to backends that decode `%2F` or honour `\`, a name to others.
    HiddenDotSegment,
    /// The path does not start with `/` but needs normalising.
    NotAbsolute,
}

impl fmt::Display for PathError {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(match self {
            PathError::BadEscape => "invalid percent escape",
            PathError::Nul => "encoded NUL byte",
            PathError::AboveRoot => "\"..\" above the root",
            PathError::DotSegmentParams => "dot or empty segment with ';' parameters",
            PathError::HiddenDotSegment => "dot segment behind an encoded slash or a backslash",
            PathError::NotAbsolute => "path does not start with '/'",
        })
    }
}

impl std::error::Error for PathError {}

/// The normal form of request path `path` (without its query), borrowed when `path` is
/// already normal.
pub fn normalize(path: &str) -> Result<Cow<'_, str>, PathError> {
    if is_plain(path.as_bytes()) {
        return Ok(Cow::Borrowed(path));
    }
    if !path.starts_with('/') {
        return Err(PathError::NotAbsolute);
    }
    let decoded = decode_unreserved(path)?;
    let out = resolve_segments(&decoded)?;
    // `/.well-known/x` or `/a;b` take the slow path but may come out unchanged.
    Ok(if out == path {
        Cow::Borrowed(path)
    } else {
        Cow::Owned(out)
    })
}

/// Whether `path` certainly needs no change: no `%`, `;` or `\`, and no `/` followed by `/`
/// or `.` (one scan, no allocation).
fn is_plain(path: &[u8]) -> bool {
    let mut prev = 0u8;
    for &b in path {
        match b {
            b'%' | b';' | b'\\' => return false,
            b'/' | b'.' if prev == b'/' => return false,
            _ => prev = b,
        }
    }
    true
}

/// `path` with escapes of unreserved characters decoded and every other escape's hex in
/// upper case. Decoding never produces `/` or `;`, so segments are the same before and after.
fn decode_unreserved(path: &str) -> Result<String, PathError> {
    let bytes = path.as_bytes();
    let mut out = String::with_capacity(path.len());
    let mut done = 0;
    while let Some(off) = bytes[done..].iter().position(|&b| b == b'%') {
        let at = done + off;
        out.push_str(&path[done..at]);
        let byte = escaped_byte(bytes.get(at + 1..at + 3))?;
        if is_unreserved(byte) {
            out.push(char::from(byte));
        } else {
            push_escape(&mut out, byte);
        }
        done = at + 3;
    }
    out.push_str(&path[done..]);
    Ok(out)
}

/// The byte named by the two hex digits after a `%`.
fn escaped_byte(digits: Option<&[u8]>) -> Result<u8, PathError> {
    let &[hi, lo] = digits.ok_or(PathError::BadEscape)? else {
        return Err(PathError::BadEscape);
    };
    let hex = |d: u8| char::from(d).to_digit(16).ok_or(PathError::BadEscape);
    match (hex(hi)? << 4 | hex(lo)?) as u8 {
        0 => Err(PathError::Nul),
        b => Ok(b),
    }
}

/// RFC 3986 unreserved: the characters whose escaped and plain forms are equivalent.
fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// Appends `%XX` with upper-case hex (RFC 3986's normal form of an escape).
fn push_escape(out: &mut String, b: u8) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    out.push('%');
    out.push(char::from(HEX[usize::from(b >> 4)]));
    out.push(char::from(HEX[usize::from(b & 0xf)]));
}

/// Resolves `.` and `..` segments and merges empty ones in `path` (which starts with `/`);
/// a path ending in a separator, `.` or `..` keeps a trailing slash, as nginx does.
fn resolve_segments(path: &str) -> Result<String, PathError> {
    let mut out = String::with_capacity(path.len());
    out.push('/');
    // Where each kept segment starts in `out`, for `..` to cut back to.
    let mut starts: Vec<usize> = Vec::new();
    let mut segments = path[1..].split('/').peekable();
    while let Some(seg) = segments.next() {
        let last = segments.peek().is_none();
        check_segment(seg)?;
        match seg {
            "" | "." => {}
            ".." => out.truncate(starts.pop().ok_or(PathError::AboveRoot)?),
            _ => {
                starts.push(out.len());
                out.push_str(seg);
                if !last {
                    out.push('/');
                }
            }
        }
    }
    Ok(out)
}

/// Refuses a segment that some backends read as a dot segment and others as a name: its
/// name before `;` parameters is empty, `.` or `..`, or it hides a `.` or `..` piece behind
/// `%2F`, `%5C` or `\` (escapes are upper case here).
fn check_segment(seg: &str) -> Result<(), PathError> {
    if let Some(("" | "." | "..", _)) = seg.split_once(';') {
        return Err(PathError::DotSegmentParams);
    }
    if seg.contains(['%', '\\']) {
        let pieces = seg
            .replace("%2F", "/")
            .replace("%5C", "/")
            .replace('\\', "/");
        if pieces.contains('/') && pieces.split('/').any(|p| matches!(p, "." | "..")) {
            return Err(PathError::HiddenDotSegment);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(p: &str) -> Result<String, PathError> {
        normalize(p).map(Cow::into_owned)
    }

    #[test]
    fn normal_paths_are_borrowed() {
        for p in [
            "/",
            "/a",
            "/a/b/",
            "/a.b/c.d",
            "/a-b_c~d",
            "/caf\u{e9}",
            "*",
            "",
        ] {
            assert!(matches!(normalize(p), Ok(Cow::Borrowed(_))), "{p}");
        }
        // Slow path, but nothing to change: still borrowed.
        for p in [
            "/.well-known/acme",
            "/page;jsessionid=1",
            "/a%2Fb",
            "/%C3%A9",
        ] {
            assert!(matches!(normalize(p), Ok(Cow::Borrowed(_))), "{p}");
        }
    }

    #[test]
    fn the_issue_bypasses_normalise_to_the_denied_path() {
        for p in [
            "/%61dmin",
            "/%61%64%6D%69%6E",
            "//admin",
            "/./admin",
            "/x/../admin",
            "/%2e/admin",
            "/%2E/admin",
            "/x/%2e%2e/admin",
            "/x/%2E%2e/admin",
            "/x/.%2e/admin",
            "/api/../admin",
            "///admin",
        ] {
            assert_eq!(norm(p).as_deref(), Ok("/admin"), "{p}");
        }
        assert_eq!(norm("/public/../private/x").as_deref(), Ok("/private/x"));
        assert_eq!(
            norm("/public//..//private/./x").as_deref(),
            Ok("/private/x")
        );
    }

    #[test]
    fn case_is_kept() {
        assert_eq!(norm("/ADMIN").as_deref(), Ok("/ADMIN"));
        assert_eq!(norm("/%41DMIN").as_deref(), Ok("/ADMIN"));
    }

    #[test]
    fn reserved_and_non_ascii_escapes_stay_encoded_in_upper_case() {
        assert_eq!(norm("/a%2fb").as_deref(), Ok("/a%2Fb"), "encoded slash");
        assert_eq!(
            norm("/a%2F..b%2F.c").as_deref(),
            Ok("/a%2F..b%2F.c"),
            "no segment"
        );
        assert_eq!(
            norm("/caf%c3%a9").as_deref(),
            Ok("/caf%C3%A9"),
            "utf-8 escapes"
        );
        assert_eq!(norm("/%e2%82%ac/x").as_deref(), Ok("/%E2%82%AC/x"));
        assert_eq!(norm("/a%20b%3f").as_deref(), Ok("/a%20b%3F"));
        assert_eq!(
            norm("/a%252e%252e").as_deref(),
            Ok("/a%252e%252e"),
            "one decode only"
        );
        assert_eq!(norm("/a%3Bb").as_deref(), Ok("/a%3Bb"), "encoded ; is data");
        assert_eq!(norm("/%7e%5f%2d%2e").as_deref(), Ok("/~_-."));
    }

    #[test]
    fn dot_segments_and_slashes() {
        let cases = [
            ("/a/b/", "/a/b/"),
            ("/a//b//", "/a/b/"),
            ("/a/.", "/a/"),
            ("/a/./", "/a/"),
            ("/a/b/..", "/a/"),
            ("/a/b/../", "/a/"),
            ("/a/..", "/"),
            ("//", "/"),
            ("/.", "/"),
            ("/./", "/"),
            ("/a/.b/..c/...", "/a/.b/..c/..."),
            ("/a/b/c/../../d", "/a/d"),
        ];
        for (p, want) in cases {
            assert_eq!(norm(p).as_deref(), Ok(want), "{p}");
        }
    }

    #[test]
    fn dot_dot_above_the_root_is_an_error() {
        for p in [
            "/..",
            "/../admin",
            "/a/../..",
            "/x/%2e%2e/%2e%2e/etc",
            "//../x",
        ] {
            assert_eq!(norm(p), Err(PathError::AboveRoot), "{p}");
        }
    }

    #[test]
    fn bad_escapes_and_nul_are_errors() {
        for p in ["/%zz", "/a%4", "/a%", "/%g1", "/%1g", "/a%%41"] {
            assert_eq!(norm(p), Err(PathError::BadEscape), "{p}");
        }
        assert_eq!(norm("/a%00b"), Err(PathError::Nul));
        assert_eq!(norm("/a/%00"), Err(PathError::Nul));
    }

    #[test]
    fn parameters_on_dot_or_empty_segments_are_errors() {
        for p in [
            "/;/admin",
            "/;x/admin",
            "/.;/admin",
            "/.;x=1/admin",
            "/x/..;/admin",
            "/x/..;x/admin",
            "/x/%2e%2e;/admin",
            "/admin/;",
            "/admin/..;",
        ] {
            assert_eq!(norm(p), Err(PathError::DotSegmentParams), "{p}");
        }
        assert_eq!(
            norm("/a;b/c;d=1").as_deref(),
            Ok("/a;b/c;d=1"),
            "named: kept"
        );
        assert_eq!(norm("/a;b/../c").as_deref(), Ok("/c"));
        assert_eq!(norm("/..x;/a").as_deref(), Ok("/..x;/a"));
    }

    #[test]
    fn dot_pieces_behind_encoded_slashes_or_backslashes_are_errors() {
        for p in [
            "/x/..%2fadmin",
            "/x/..%2F..%2Fadmin",
            "/x/%2e%2e%2fadmin",
            "/x/.%2Fadmin",
            "/x/a%2F..",
            "/x/..\\admin",
            "/x/..%5cadmin",
            "/x/a\\.\\b",
        ] {
            assert_eq!(norm(p), Err(PathError::HiddenDotSegment), "{p}");
        }
        assert_eq!(norm("/a\\b").as_deref(), Ok("/a\\b"));
        assert_eq!(norm("/a%5c..b").as_deref(), Ok("/a%5C..b"));
    }

    #[test]
    fn relative_paths_needing_work_are_errors() {
        assert_eq!(norm("a/../b"), Err(PathError::NotAbsolute));
        assert_eq!(norm("*"), Ok("*".into()));
    }

    /// Deterministic pseudo-random paths from tokens that exercise every rule: whatever
    /// comes out is normal (normalising it again changes nothing and borrows) and has no
    /// empty, `.` or `..` segments left.
    #[test]
    fn generated_paths_normalise_idempotently() {
        const TOKENS: &[&str] = &[
            "/", "/", "/", "a", "B", ".", "..", "%2e", "%2E", "%2f", "%2F", "%41", "%7e", ";",
            ";x=1", "%", "%4", "%zz", "%00", "%c3%a9", "\u{e9}", "%25", "-", "~", "\\", "%5c",
        ];
        let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let (mut ok, mut err) = (0, 0);
        for _ in 0..50_000 {
            let mut p = String::from("/");
            for _ in 0..next() % 12 {
                p.push_str(TOKENS[(next() % TOKENS.len() as u64) as usize]);
            }
            let Ok(n) = normalize(&p) else {
                err += 1;
                continue;
            };
            ok += 1;
            assert!(
                matches!(normalize(&n), Ok(Cow::Borrowed(_))),
                "{p:?} -> {n:?} is not normal"
            );
            assert!(n.starts_with('/'), "{p:?} -> {n:?}");
            for bad in ["//", "/./", "/../", "%2e", "%2E", "%00"] {
                assert!(!n.contains(bad), "{p:?} -> {n:?} contains {bad}");
            }
            assert!(!n.ends_with("/.") && !n.ends_with("/.."), "{p:?} -> {n:?}");
            let hex_lower = n
                .split('%')
                .skip(1)
                .any(|e| e.bytes().take(2).any(|b| b.is_ascii_lowercase()));
            assert!(!hex_lower, "{p:?} -> {n:?} has lower-case hex");
        }
        assert!(ok > 10_000 && err > 1_000, "ok {ok} err {err}");
    }
}
