//! TLS: listener certificates loaded and checked at load time (readable PEM, key matches
//! certificate, not expired), an SNI resolver (exact names, `*.example.com`, a default for
//! clients without SNI), the Pingora listener settings (TLS 1.2 / 1.3, h2 by ALPN), and the
//! CA bundles for TLS to backends.

use crate::config::{Config, Issues, ListenerTlsConf};
use pingora_core::listeners::tls::TlsSettings;
use pingora_core::protocols::ALPN;
use pingora_core::utils::tls::WrappedX509;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use std::collections::HashMap;
use std::sync::Arc;

/// Picks a listener certificate by SNI.
#[derive(Debug)]
pub struct SniResolver {
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// `(".example.com", cert)`: one label in front of the suffix.
    wildcard: Vec<(String, Arc<CertifiedKey>)>,
    default: Arc<CertifiedKey>,
}

impl SniResolver {
    /// The certificate for `name` (`None`: no SNI): exact, then wildcard, then the default.
    pub fn pick(&self, name: Option<&str>) -> Arc<CertifiedKey> {
        let Some(name) = name.map(|n| n.trim_end_matches('.').to_ascii_lowercase()) else {
            return self.default.clone();
        };
        if let Some(c) = self.exact.get(&name) {
            return c.clone();
        }
        if let Some(dot) = name.find('.') {
            let suffix = &name[dot..];
            if let Some((_, c)) = self.wildcard.iter().find(|(s, _)| s == suffix) {
                return c.clone();
            }
        }
        self.default.clone()
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.pick(hello.server_name()))
    }
}

/// TLS settings of one listener, ready to hand to Pingora.
#[derive(Debug, Clone)]
pub struct ListenerTls {
    /// Certificate chooser.
    pub resolver: Arc<SniResolver>,
    /// Offer h2 by ALPN.
    pub http2: bool,
}

impl ListenerTls {
    /// Pingora listener settings.
    pub fn settings(&self) -> TlsSettings {
        let mut s = TlsSettings::intermediate("", "").expect("plain constructor");
        s.set_cert_resolver(self.resolver.clone());
        s.set_alpn(if self.http2 { ALPN::H2H1 } else { ALPN::H1 });
        s
    }
}

/// DNS names in a certificate's subjectAltName (falling back to its CN), and its expiry.
fn cert_names_and_expiry(der: &[u8]) -> Result<(Vec<String>, i64), String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| format!("not a valid X.509 certificate: {e}"))?;
    let mut names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for n in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::DNSName(d) = n {
                names.push(d.to_ascii_lowercase());
            }
        }
    }
    if names.is_empty() {
        if let Some(cn) = cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|c| c.as_str().ok())
        {
            names.push(cn.to_ascii_lowercase());
        }
    }
    Ok((names, cert.validity().not_after.timestamp()))
}

fn load_certified_key(
    cfg: &Config,
    cert: &str,
    key: &str,
    at: &str,
    issues: &mut Issues,
) -> Option<(Arc<CertifiedKey>, Vec<String>)> {
    let cert_path = cfg.resolve_path(cert);
    let key_path = cfg.resolve_path(key);
    for (p, k) in [(&cert_path, "cert"), (&key_path, "key")] {
        if let Err(e) = std::fs::metadata(p).and_then(|_| std::fs::File::open(p)) {
            issues.error(
                format!("{at}.{k}"),
                format!("cannot read \"{}\": {e}", p.display()),
            );
            return None;
        }
    }
    let loaded = pingora_rustls::load_certs_and_key_files(
        &cert_path.to_string_lossy(),
        &key_path.to_string_lossy(),
    );
    let (certs, private_key) = match loaded {
        Ok(Some(pair)) => pair,
        Ok(None) => {
            issues.error(
                at,
                format!(
                    "no PEM certificate in \"{}\" or no private key in \"{}\"",
                    cert_path.display(),
                    key_path.display()
                ),
            );
            return None;
        }
        Err(e) => {
            issues.error(
                at,
                format!(
                    "cannot load \"{}\" / \"{}\": {e}",
                    cert_path.display(),
                    key_path.display()
                ),
            );
            return None;
        }
    };
    let signing = match rustls::crypto::ring::sign::any_supported_type(&private_key) {
        Ok(s) => s,
        Err(e) => {
            issues.error(
                format!("{at}.key"),
                format!("unsupported private key in \"{}\": {e}", key_path.display()),
            );
            return None;
        }
    };
    let ck = CertifiedKey::new(certs, signing);
    if let Err(e) = ck.keys_match() {
        issues.error(
            format!("{at}.key"),
            format!(
                "\"{}\" does not match the certificate \"{}\": {e}",
                key_path.display(),
                cert_path.display()
            ),
        );
        return None;
    }
    let (names, not_after) = match cert_names_and_expiry(ck.cert[0].as_ref()) {
        Ok(v) => v,
        Err(e) => {
            issues.error(
                format!("{at}.cert"),
                format!("\"{}\": {e}", cert_path.display()),
            );
            return None;
        }
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    if not_after < now {
        issues.error(
            format!("{at}.cert"),
            format!(
                "certificate \"{}\" expired {} days ago",
                cert_path.display(),
                (now - not_after) / 86_400
            ),
        );
        return None;
    }
    Some((Arc::new(ck), names))
}

/// Loads and checks a listener's certificates; problems are recorded under `at` (`listeners[N].tls`).
pub fn compile_listener(
    cfg: &Config,
    conf: &ListenerTlsConf,
    http2: bool,
    at: &str,
    issues: &mut Issues,
) -> Option<ListenerTls> {
    if conf.min_version != "1.2" {
        issues.error(
            format!("{at}.min_version"),
            format!(
                "\"{}\": only \"1.2\" is supported (TLS 1.2 and 1.3 are offered)",
                conf.min_version
            ),
        );
    }
    if conf.certificates.is_empty() {
        issues.error(
            format!("{at}.certificates"),
            "needs at least one certificate",
        );
        return None;
    }
    let mut exact = HashMap::new();
    let mut wildcard = Vec::new();
    let mut default = None;
    for (i, c) in conf.certificates.iter().enumerate() {
        let cat = format!("{at}.certificates[{i}]");
        let Some((ck, cert_names)) = load_certified_key(cfg, &c.cert, &c.key, &cat, issues) else {
            continue;
        };
        default.get_or_insert_with(|| ck.clone());
        for n in c.server_names.clone().unwrap_or(cert_names) {
            let n = n.to_ascii_lowercase();
            match n.strip_prefix('*') {
                Some(suffix) if suffix.starts_with('.') && suffix.len() > 1 => {
                    wildcard.push((suffix.to_string(), ck.clone()))
                }
                Some(_) => issues.error(
                    format!("{cat}.server_names"),
                    format!("invalid wildcard \"{n}\" (use \"*.example.com\")"),
                ),
                None => {
                    exact.entry(n).or_insert_with(|| ck.clone());
                }
            }
        }
    }
    Some(ListenerTls {
        resolver: Arc::new(SniResolver {
            exact,
            wildcard,
            default: default?,
        }),
        http2,
    })
}

/// Loads a PEM CA bundle for verifying backends.
pub fn load_ca(
    cfg: &Config,
    path: &str,
    at: &str,
    issues: &mut Issues,
) -> Option<Arc<[WrappedX509]>> {
    let p = cfg.resolve_path(path);
    let data = match std::fs::read(&p) {
        Ok(d) => d,
        Err(e) => {
            issues.error(at, format!("cannot read \"{}\": {e}", p.display()));
            return None;
        }
    };
    let mut out = Vec::new();
    for item in rustls_pemfile::certs(&mut data.as_slice()) {
        let Ok(item) = item.map(|c| c.as_ref().to_vec()) else {
            issues.error(at, format!("\"{}\" is not a valid PEM file", p.display()));
            return None;
        };
        if x509_parser::parse_x509_certificate(&item).is_err() {
            issues.error(
                at,
                format!("\"{}\" holds an invalid certificate", p.display()),
            );
            return None;
        }
        out.push(WrappedX509::new(item, pingora_core::utils::tls::parse_x509));
    }
    if out.is_empty() {
        issues.error(at, format!("no PEM certificate in \"{}\"", p.display()));
        return None;
    }
    Some(out.into())
}
