//! The sticky cookie of a pool: its `Set-Cookie` values, one per backend (plain and `Secure`),
//! built once at load from the backend tags.

use crate::config::{CookieConf, Issues};
use http::HeaderValue;

/// A sticky cookie, with its `Set-Cookie` values built per backend at load.
pub struct StickyCookie {
    /// Cookie name.
    pub name: String,
    plain: Vec<HeaderValue>,
    secure: Vec<HeaderValue>,
}

impl StickyCookie {
    /// Checks `k` and builds the cookie values of the backends tagged `tags`.
    pub(crate) fn compile(
        k: &CookieConf,
        tags: &[&str],
        at: &str,
        issues: &mut Issues,
    ) -> StickyCookie {
        if k.name.is_empty()
            || !k
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        {
            issues.error(
                format!("{at}.cookie.name"),
                format!("invalid cookie name \"{}\"", k.name),
            );
        }
        if !["Lax", "Strict", "None"].contains(&k.same_site.as_str()) {
            issues.error(
                format!("{at}.cookie.same_site"),
                format!("must be Lax, Strict or None, got \"{}\"", k.same_site),
            );
        }
        if !k.path.starts_with('/') || k.path.contains([';', ' ']) {
            issues.error(
                format!("{at}.cookie.path"),
                format!("invalid cookie path \"{}\"", k.path),
            );
        }
        let value = |tag: &str, secure: bool| {
            let mut v = format!("{}={}; Path={}", k.name, tag, k.path);
            if let Some(ttl) = k.ttl {
                v.push_str(&format!("; Max-Age={}", ttl.0.as_secs()));
            }
            if k.http_only {
                v.push_str("; HttpOnly");
            }
            v.push_str(&format!("; SameSite={}", k.same_site));
            if secure || k.same_site == "None" {
                v.push_str("; Secure");
            }
            HeaderValue::try_from(v).unwrap_or_else(|_| HeaderValue::from_static("invalid"))
        };
        StickyCookie {
            name: k.name.clone(),
            plain: tags.iter().map(|t| value(t, false)).collect(),
            secure: tags.iter().map(|t| value(t, true)).collect(),
        }
    }

    /// The `Set-Cookie` value naming backend `idx` (`Secure` under TLS).
    pub fn set_cookie(&self, idx: usize, tls: bool) -> &HeaderValue {
        if tls {
            &self.secure[idx]
        } else {
            &self.plain[idx]
        }
    }
}
