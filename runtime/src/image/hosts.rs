//! Per-registry settings from the config file, in the spirit of containerd's hosts.toml:
//!
//! ```toml
//! [registries."docker.io"]
//! mirrors = ["https://mirror.example.com"]   # tried in order before the upstream host
//! [registries."127.0.0.1:5000"]
//! insecure = true                            # plain HTTP / unverified TLS allowed
//! [registries."registry.corp"]
//! ca = "/etc/peapod/corp-ca.pem"             # or a list; trusted besides the system roots
//! client_cert = "/etc/peapod/node.pem"       # a client certificate, with its key
//! client_key = "/etc/peapod/node-key.pem"
//! ```

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Deserializer};

#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct RegistryConfig {
    pub hosts: BTreeMap<String, RegistryHost>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryHost {
    /// Base URLs (`https://host[:port][/path]`, or `http://` for plain HTTP by explicit
    /// choice), tried in order before the registry itself.
    #[serde(default)]
    pub mirrors: Vec<String>,
    /// Plain HTTP, or HTTPS without certificate verification, may be used for this host.
    #[serde(default)]
    pub insecure: bool,
    /// PEM files of CA certificates trusted, besides the system roots, for this host and its
    /// `https://` mirrors (`ca = "/path"` or `ca = ["/a", "/b"]`).
    #[serde(default, deserialize_with = "one_or_many")]
    pub ca: Vec<PathBuf>,
    /// A PEM client certificate (chain) presented to this host and its `https://` mirrors…
    pub client_cert: Option<PathBuf>,
    /// … and its PEM private key; both or neither.
    pub client_key: Option<PathBuf>,
}

fn one_or_many<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<PathBuf>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged, expecting = "a path or a list of paths")]
    enum OneOrMany {
        One(PathBuf),
        Many(Vec<PathBuf>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(p) => vec![p],
        OneOrMany::Many(v) => v,
    })
}

/// How to speak TLS to an endpoint; endpoints with equal settings share an HTTP client.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Tls {
    /// Certificates are not verified (insecure hosts).
    pub skip_verify: bool,
    /// CA files trusted besides the system roots, sorted, without duplicates.
    pub ca: Vec<PathBuf>,
    /// Client certificate and key files.
    pub client: Option<(PathBuf, PathBuf)>,
}

/// How to reach a registry or a mirror.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    /// `https` or `http`.
    pub scheme: &'static str,
    /// `host[:port]`.
    pub host: String,
    /// A path prefix before `/v2/`, without a trailing `/` (usually empty).
    pub prefix: String,
    /// TLS settings (unused for `http`).
    pub tls: Tls,
    /// This is a mirror, not the registry the reference names.
    pub mirror: bool,
}

impl Endpoint {
    /// `scheme://host/prefix/v2/`.
    pub fn v2(&self) -> String {
        format!("{}://{}{}/v2/", self.scheme, self.host, self.prefix)
    }
}

/// Docker Hub's API lives at another host than its name.
fn upstream_host(host: &str) -> &str {
    if host == super::reference::DOCKER_HUB {
        "registry-1.docker.io"
    } else {
        host
    }
}

impl RegistryConfig {
    /// Checks every host name and mirror URL; the error says which and why.
    pub fn validate(&self) -> Result<(), String> {
        for (host, h) in &self.hosts {
            if !super::reference::valid_domain(host) {
                return Err(format!("{host:?} is not a registry host[:port]"));
            }
            for m in &h.mirrors {
                parse_mirror(m, false).map_err(|e| format!("registries.{host:?}: {e}"))?;
            }
            let files = h.ca.iter().map(|p| ("ca", p));
            let files = files.chain(h.client_cert.iter().map(|p| ("client_cert", p)));
            for (key, path) in files.chain(h.client_key.iter().map(|p| ("client_key", p))) {
                if !path.is_absolute() {
                    return Err(format!(
                        "registries.{host:?}: {key} {path:?} must be an absolute path"
                    ));
                }
            }
            if h.client_cert.is_some() != h.client_key.is_some() {
                return Err(format!(
                    "registries.{host:?}: client_cert and client_key go together"
                ));
            }
        }
        Ok(())
    }

    /// Every host entry, for building its clients up front.
    pub fn hosts(&self) -> impl Iterator<Item = &str> {
        self.hosts.keys().map(String::as_str)
    }

    /// The TLS settings for `endpoint_host` when reached for registry `host`: the CAs of both
    /// entries (the registry's apply to its mirrors), the endpoint's own client certificate
    /// or else the registry's, and no verification when the endpoint host is insecure.
    fn tls(&self, host: &str, endpoint_host: &str) -> Tls {
        let named = self.host(host);
        let own = self.host(endpoint_host);
        let mut ca: Vec<PathBuf> = named
            .iter()
            .chain(&own)
            .flat_map(|h| h.ca.clone())
            .collect();
        ca.sort();
        ca.dedup();
        let client = [own, named]
            .into_iter()
            .flatten()
            .find_map(|h| Some((h.client_cert.clone()?, h.client_key.clone()?)));
        Tls {
            skip_verify: self.is_insecure(endpoint_host),
            ca,
            client,
        }
    }

    fn host(&self, host: &str) -> Option<&RegistryHost> {
        self.hosts.get(host)
    }

    pub fn is_insecure(&self, host: &str) -> bool {
        self.host(host).is_some_and(|h| h.insecure)
    }

    /// Where to fetch an image of registry `host` from, in order: its mirrors, then the
    /// registry itself over HTTPS, and — only when the host is configured insecure — HTTPS
    /// without verification, then plain HTTP.
    pub fn endpoints(&self, host: &str) -> Vec<Endpoint> {
        let mut out = Vec::new();
        if let Some(h) = self.host(host) {
            for m in &h.mirrors {
                if let Ok(mut e) = parse_mirror(m, true) {
                    if e.scheme == "https" {
                        e.tls = self.tls(host, &e.host);
                    }
                    out.push(e);
                }
            }
        }
        out.push(Endpoint {
            scheme: "https",
            host: upstream_host(host).to_owned(),
            prefix: String::new(),
            tls: self.tls(host, host),
            mirror: false,
        });
        if self.is_insecure(host) {
            out.push(Endpoint {
                scheme: "http",
                host: upstream_host(host).to_owned(),
                prefix: String::new(),
                tls: Tls::default(),
                mirror: false,
            });
        }
        out
    }
}

fn parse_mirror(url: &str, mirror: bool) -> Result<Endpoint, String> {
    let (scheme, rest) = if let Some(r) = url.strip_prefix("https://") {
        ("https", r)
    } else if let Some(r) = url.strip_prefix("http://") {
        ("http", r)
    } else {
        return Err(format!(
            "mirror {url:?} must start with https:// or http://"
        ));
    };
    let (host, path) = match rest.find('/') {
        Some(i) => (&rest[..i], rest[i..].trim_end_matches('/')),
        None => (rest, ""),
    };
    if !super::reference::valid_domain(host) {
        return Err(format!("mirror {url:?} has no valid host[:port]"));
    }
    if path.contains(['?', '#', ' ']) || path.split('/').any(|c| c == "..") {
        return Err(format!("mirror {url:?} has an invalid path"));
    }
    let prefix = path.strip_suffix("/v2").unwrap_or(path).to_owned();
    Ok(Endpoint {
        scheme,
        host: host.to_owned(),
        prefix,
        tls: Tls::default(),
        mirror,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(toml_text: &str) -> RegistryConfig {
        toml::from_str(toml_text).unwrap()
    }

    #[test]
    fn mirrors_first_then_upstream_https() {
        let c = config(
            r#"
            ["docker.io"]
            mirrors = ["https://mirror.example.com/v2/", "http://127.0.0.1:5000"]
            ["127.0.0.1:5000"]
            insecure = true
            "#,
        );
        c.validate().unwrap();
        let e = c.endpoints("docker.io");
        let urls: Vec<_> = e.iter().map(Endpoint::v2).collect();
        assert_eq!(
            urls,
            [
                "https://mirror.example.com/v2/",
                "http://127.0.0.1:5000/v2/",
                "https://registry-1.docker.io/v2/"
            ]
        );
        assert!(e[0].mirror && e[1].mirror && !e[2].mirror);
        assert!(e.iter().all(|e| e.tls == Tls::default()));
        let e = c.endpoints("127.0.0.1:5000");
        let urls: Vec<_> = e.iter().map(|e| (e.v2(), e.tls.skip_verify)).collect();
        assert_eq!(
            urls,
            [
                ("https://127.0.0.1:5000/v2/".to_owned(), true),
                ("http://127.0.0.1:5000/v2/".to_owned(), false)
            ]
        );
        let e = c.endpoints("quay.io");
        assert_eq!(e.len(), 1, "plain HTTP only when configured");
        assert_eq!(e[0].v2(), "https://quay.io/v2/");
    }

    #[test]
    fn ca_and_client_cert_apply_to_the_host_and_its_https_mirrors() {
        let c = config(
            r#"
            ["example.test"]
            mirrors = ["https://m.test", "https://own.test", "http://plain.test"]
            ca = "/ca/example.pem"
            client_cert = "/c/example.pem"
            client_key = "/c/example.key"
            ["own.test"]
            ca = ["/ca/own.pem", "/ca/example.pem"]
            client_cert = "/c/own.pem"
            client_key = "/c/own.key"
            insecure = true
            "#,
        );
        c.validate().unwrap();
        let e = c.endpoints("example.test");
        let pair = |a: &str, b: &str| Some((PathBuf::from(a), PathBuf::from(b)));
        assert_eq!(
            e[0].tls,
            Tls {
                skip_verify: false,
                ca: vec!["/ca/example.pem".into()],
                client: pair("/c/example.pem", "/c/example.key"),
            }
        );
        assert_eq!(
            e[1].tls,
            Tls {
                skip_verify: true,
                ca: vec!["/ca/example.pem".into(), "/ca/own.pem".into()],
                client: pair("/c/own.pem", "/c/own.key"),
            },
            "a mirror with its own entry: both CAs, its own certificate"
        );
        assert_eq!(e[2].tls, Tls::default(), "no TLS for http://");
        assert_eq!(e[3].tls, e[0].tls);
        assert_eq!(e.len(), 4, "the upstream is not insecure: no plain HTTP");
        assert_eq!(c.endpoints("quay.io")[0].tls, Tls::default());
    }

    #[test]
    fn bad_entries_are_named() {
        for (text, needle) in [
            (
                r#"["docker.io"]
                mirrors = ["ftp://x"]"#,
                "ftp://x",
            ),
            (
                r#"["docker.io"]
                mirrors = ["https://"]"#,
                "https://",
            ),
            (
                r#"["bad host"]
                insecure = true"#,
                "bad host",
            ),
            (
                r#"["x.io"]
                ca = "relative/ca.pem""#,
                "relative/ca.pem",
            ),
            (
                r#"["x.io"]
                client_cert = "/c.pem""#,
                "client_key",
            ),
        ] {
            let e = config(text).validate().unwrap_err();
            assert!(e.contains(needle), "{e}");
        }
        assert!(toml::from_str::<RegistryConfig>("[\"x.io\"]\ninsecur = true").is_err());
        assert!(toml::from_str::<RegistryConfig>("[\"x.io\"]\nca = 1").is_err());
        assert!(toml::from_str::<RegistryConfig>("[\"x.io\"]\ncacert = \"/a\"").is_err());
    }
}
