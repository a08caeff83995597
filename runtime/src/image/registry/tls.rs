//! TLS for the registry clients: one HTTP client per distinct setting (extra CAs, a client
//! certificate, no verification), built when the store opens so that an unreadable or
//! malformed file stops the daemon at start; and what a failed handshake means, in words an
//! operator can act on.

use std::error::Error as StdError;
use std::path::Path;
use std::time::Duration;

use rustls::{AlertDescription, CertificateError};

use super::super::hosts::Tls;
use super::RegistryError;

/// An HTTP client speaking TLS as `tls` says, and whether it lacks the system's CA
/// certificates because the node has none (no `ca-certificates` package): then it trusts
/// only the configured `ca`, if any, and a handshake that needed the system's roots fails
/// with [`Problem::NoSystemRoots`] instead of the daemon refusing to start.
pub(super) fn client(tls: &Tls) -> Result<(reqwest::Client, bool), RegistryError> {
    match builder(tls, false)?.build() {
        Ok(client) => Ok((client, false)),
        Err(e) if !tls.skip_verify && rustls_native_certs::load_native_certs().certs.is_empty() => {
            tracing::warn!(
                "no CA certificates on this node ({e}): HTTPS registries without a `ca` of \
                 their own cannot be verified; install the ca-certificates package"
            );
            let client = builder(tls, true)?.build();
            Ok((client.map_err(RegistryError::ClientSetup)?, true))
        }
        Err(e) => Err(RegistryError::ClientSetup(e)),
    }
}

/// The client builder for `tls`; with `only_configured_roots`, without the system's CA
/// certificates.
fn builder(
    tls: &Tls,
    only_configured_roots: bool,
) -> Result<reqwest::ClientBuilder, RegistryError> {
    let policy = reqwest::redirect::Policy::custom(|attempt| {
        let downgrade = attempt.url().scheme() == "http"
            && attempt.previous().iter().any(|u| u.scheme() == "https");
        if attempt.previous().len() > 10 {
            attempt.error("too many redirects")
        } else if downgrade {
            attempt.error("a redirect from HTTPS to plain HTTP")
        } else {
            attempt.follow()
        }
    });
    let mut builder = reqwest::Client::builder()
        .user_agent(concat!("peapod/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(Duration::from_secs(15))
        .read_timeout(Duration::from_secs(60))
        .redirect(policy)
        .tls_danger_accept_invalid_certs(tls.skip_verify);
    let mut roots = Vec::new();
    for path in &tls.ca {
        let pem = read(path, "CA file")?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|source| {
            RegistryError::BadPem {
                what: "CA file",
                path: path.clone(),
                expected: "certificates",
                source: Some(source),
            }
        })?;
        if certs.is_empty() {
            return Err(RegistryError::BadPem {
                what: "CA file",
                path: path.clone(),
                expected: "certificates",
                source: None,
            });
        }
        roots.extend(certs);
    }
    if only_configured_roots {
        builder = builder.tls_certs_only(roots);
    } else if !roots.is_empty() {
        builder = builder.tls_certs_merge(roots);
    }
    if let Some((cert, key)) = &tls.client {
        let mut pem = read(cert, "client certificate")?;
        pem.push(b'\n');
        pem.extend(read(key, "client key")?);
        let identity =
            reqwest::Identity::from_pem(&pem).map_err(|source| RegistryError::BadPem {
                what: "client certificate and key",
                path: cert.clone(),
                expected: "certificate and private key (with the key file)",
                source: Some(source),
            })?;
        builder = builder.identity(identity);
    }
    Ok(builder)
}

fn read(path: &Path, what: &'static str) -> Result<Vec<u8>, RegistryError> {
    std::fs::read(path).map_err(|source| RegistryError::TlsFile {
        what,
        path: path.to_owned(),
        source,
    })
}

/// Why a TLS handshake with a registry failed, when the certificates are the reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Problem {
    /// The chain does not lead to a trusted CA (self-signed, or a private CA).
    Untrusted,
    /// The certificate does not name the host connected to.
    WrongName,
    /// Outside its validity period.
    Expired,
    /// Another defect of the certificate (purpose, encoding, revocation, …).
    Invalid,
    /// The registry refused the handshake: it wants a (different) client certificate.
    ClientCertificate,
    /// Not trusted, and the node has no CA certificates to trust it with.
    NoSystemRoots,
}

impl Problem {
    /// What went wrong, for `TLS with HOST failed: {what}`.
    pub fn what(self) -> &'static str {
        match self {
            Problem::Untrusted => {
                "its certificate is not trusted (the chain does not lead to a trusted CA)"
            }
            Problem::WrongName => "its certificate is not valid for this host name or IP",
            Problem::Expired => "its certificate has expired or is not valid yet",
            Problem::Invalid => "its certificate is invalid",
            Problem::ClientCertificate => {
                "it refused peapod's client certificate (none, or not one it accepts)"
            }
            Problem::NoSystemRoots => {
                "No CA certificates were loaded from the system, so its certificate cannot be \
                 verified"
            }
        }
    }

    /// How to fix it in the config: `host` is the registry named in the image reference
    /// (whose `ca` and client certificate apply to its mirrors too), `endpoint` the host
    /// connected to and `insecure_table` the entry whose `insecure` applies to it (a mirror's
    /// own host, or `host`); `tls` what was in force.
    pub fn hint(self, host: &str, endpoint: &str, insecure_table: &str, tls: &Tls) -> String {
        let insecure = format!(
            "`insecure = true` under [registries.\"{insecure_table}\"] to skip verification"
        );
        match self {
            Problem::Untrusted if tls.ca.is_empty() => format!(
                "to trust the CA that signed it, set `ca = \"/path/to/ca.pem\"` under \
                 [registries.\"{host}\"], or {insecure}"
            ),
            Problem::Untrusted => format!(
                "the `ca` configured for [registries.\"{host}\"] ({}) did not sign it: point \
                 `ca` at the CA that did, or set {insecure}",
                list(&tls.ca)
            ),
            Problem::WrongName => format!(
                "the certificate must name {} (a DNS or IP subject alternative name), or \
                 set {insecure}",
                without_port(endpoint)
            ),
            Problem::Expired => {
                format!("check the node's clock and the certificate, or set {insecure}")
            }
            Problem::Invalid => format!("set {insecure}"),
            Problem::ClientCertificate => {
                format!("set `client_cert` and `client_key` under [registries.\"{host}\"]")
            }
            Problem::NoSystemRoots => format!(
                "install the node's CA certificates (the ca-certificates package, or point \
                 SSL_CERT_FILE or SSL_CERT_DIR at them) and restart peapod, or set \
                 `ca = \"/path/to/ca.pem\"` under [registries.\"{host}\"], or {insecure}"
            ),
        }
    }
}

/// `host` of `host[:port]` (`[v6]` stays bracketed).
fn without_port(endpoint: &str) -> &str {
    match endpoint.rfind([':', ']']) {
        Some(i) if endpoint.as_bytes()[i] == b':' => &endpoint[..i],
        _ => endpoint,
    }
}

fn list(paths: &[std::path::PathBuf]) -> String {
    let names: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
    names.join(", ")
}

/// The certificate problem behind `err`, found in its chain of sources. rustls's error
/// travels inside `std::io::Error`s (one in another, here), whose `source()` skips what they
/// wrap, so those are opened with `get_ref()`.
pub fn problem(err: &(dyn StdError + 'static)) -> Option<Problem> {
    let mut next = Some(err);
    while let Some(e) = next {
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return classify(tls);
        }
        next = match e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            Some(inner) => Some(inner as &(dyn StdError + 'static)),
            None => e.source(),
        };
    }
    None
}

fn classify(e: &rustls::Error) -> Option<Problem> {
    use CertificateError as C;
    Some(match e {
        rustls::Error::InvalidCertificate(c) => match c {
            C::UnknownIssuer | C::BadSignature => Problem::Untrusted,
            C::NotValidForName | C::NotValidForNameContext { .. } => Problem::WrongName,
            C::Expired
            | C::ExpiredContext { .. }
            | C::NotValidYet
            | C::NotValidYetContext { .. } => Problem::Expired,
            _ => Problem::Invalid,
        },
        rustls::Error::AlertReceived(
            AlertDescription::CertificateRequired
            | AlertDescription::BadCertificate
            | AlertDescription::UnknownCA
            | AlertDescription::CertificateUnknown
            | AlertDescription::UnsupportedCertificate
            | AlertDescription::CertificateExpired
            | AlertDescription::CertificateRevoked
            | AlertDescription::AccessDenied,
        ) => Problem::ClientCertificate,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn problems_are_found_inside_io_errors() {
        let tls = rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer);
        let io = std::io::Error::new(std::io::ErrorKind::InvalidData, tls);
        let io = std::io::Error::other(io);
        #[derive(Debug, thiserror::Error)]
        #[error("connect")]
        struct Outer(#[source] std::io::Error);
        assert_eq!(problem(&Outer(io)), Some(Problem::Untrusted));
        let name = rustls::Error::InvalidCertificate(CertificateError::NotValidForName);
        assert_eq!(problem(&name), Some(Problem::WrongName));
        let alert = rustls::Error::AlertReceived(AlertDescription::CertificateRequired);
        assert_eq!(problem(&alert), Some(Problem::ClientCertificate));
        let other = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset");
        assert_eq!(problem(&other), None);
    }

    #[test]
    fn hints_name_the_config_table() {
        let none = Tls::default();
        let h = Problem::Untrusted.hint("example.test", "mirror.test", "mirror.test", &none);
        assert!(
            h.contains("`ca = \"/path/to/ca.pem\"` under [registries.\"example.test\"]"),
            "{h}"
        );
        assert!(
            h.contains("insecure = true` under [registries.\"mirror.test\"]"),
            "{h}"
        );
        let h = Problem::NoSystemRoots.hint("example.test", "example.test", "example.test", &none);
        assert!(h.contains("ca-certificates") && h.contains("[registries.\"example.test\"]"));
        let with_ca = Tls {
            ca: vec!["/etc/peapod/ca.pem".into()],
            ..Tls::default()
        };
        let h = Problem::Untrusted.hint("x.test", "x.test", "x.test", &with_ca);
        assert!(h.contains("(/etc/peapod/ca.pem) did not sign it"), "{h}");
        let h = Problem::WrongName.hint("x.test", "x.test:5000", "x.test", &with_ca);
        assert!(h.contains("must name x.test ("), "{h}");
        assert_eq!(without_port("[::1]:5000"), "[::1]");
        assert_eq!(without_port("[::1]"), "[::1]");
        assert_eq!(without_port("127.0.0.1"), "127.0.0.1");
    }

    #[test]
    fn bad_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let tls = Tls {
            ca: vec![missing.clone()],
            ..Tls::default()
        };
        let e = client(&tls).unwrap_err();
        assert!(
            matches!(&e, RegistryError::TlsFile { path, .. } if *path == missing),
            "{e:?}"
        );
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "no PEM here\n").unwrap();
        let tls = Tls {
            ca: vec![empty.clone()],
            ..Tls::default()
        };
        let e = client(&tls).unwrap_err();
        assert!(
            matches!(&e, RegistryError::BadPem { path, .. } if *path == empty),
            "{e:?}"
        );
    }
}
