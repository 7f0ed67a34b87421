//! What HTTPS trusts: the system's certificate authorities (Debian's ca-certificates,
//! `/etc/ssl/certs/ca-certificates.crt`, or the PEM file `SSL_CERT_FILE` names, as
//! OpenSSL-based tools read it), loaded once per process for every HTTPS client of the
//! agent (git's smart HTTP, downloads, OS images, health URLs). A private CA added with
//! `update-ca-certificates` is trusted like any other. Choice: no certificates compiled
//! in (Mozilla's bundle would cost about 100 KB of the 4 MiB budget and go stale on
//! devices that are off for months, while the OS keeps its bundle current).

use std::sync::OnceLock;

use ureq::tls::{parse_pem, PemItem, RootCerts, TlsConfig};

/// Debian's bundle of the system's certificate authorities.
pub(crate) const SYSTEM_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// The TLS settings of a client for plain http:// only: no certificate authority is
/// loaded, so a redirect to https fails (unknown issuer) instead of costing every poll
/// the bundle.
pub(crate) fn none() -> TlsConfig {
    TlsConfig::builder()
        .root_certs(RootCerts::new_with_certs(&[]))
        .build()
}

/// The TLS settings for an HTTPS client: the system's certificate authorities. A
/// missing or unreadable bundle trusts nothing (every HTTPS request then fails with an
/// unknown issuer; plain HTTP and file:// are unaffected).
pub(crate) fn config() -> TlsConfig {
    static ROOTS: OnceLock<RootCerts> = OnceLock::new();
    let roots = ROOTS.get_or_init(|| {
        let path = std::env::var_os("SSL_CERT_FILE")
            .filter(|p| !p.is_empty())
            .unwrap_or_else(|| SYSTEM_BUNDLE.into());
        let pem = std::fs::read(&path).unwrap_or_else(|e| {
            log::warn!(
                "cannot read the certificate authorities {}: {e}; HTTPS will trust no server",
                std::path::Path::new(&path).display()
            );
            Vec::new()
        });
        let certs: Vec<_> = parse_pem(&pem)
            .filter_map(|item| match item {
                Ok(PemItem::Certificate(c)) => Some(c),
                _ => None,
            })
            .collect();
        RootCerts::new_with_certs(&certs)
    });
    TlsConfig::builder().root_certs(roots.clone()).build()
}
