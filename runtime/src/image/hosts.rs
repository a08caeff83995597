//! Per-registry settings from the config file, in the spirit of containerd's hosts.toml:
//!
//! ```toml
//! [registries."docker.io"]
//! mirrors = ["https://mirror.example.com"]   # tried in order before the upstream host
//! [registries."127.0.0.1:5000"]
//! insecure = true                            # plain HTTP / unverified TLS allowed
//! ```

use std::collections::BTreeMap;

use serde::Deserialize;

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
    /// TLS certificates are not verified (insecure hosts).
    pub skip_verify: bool,
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
        }
        Ok(())
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
                    e.skip_verify = e.scheme == "https" && self.is_insecure(&e.host);
                    out.push(e);
                }
            }
        }
        let insecure = self.is_insecure(host);
        out.push(Endpoint {
            scheme: "https",
            host: upstream_host(host).to_owned(),
            prefix: String::new(),
            skip_verify: insecure,
            mirror: false,
        });
        if insecure {
            out.push(Endpoint {
                scheme: "http",
                host: upstream_host(host).to_owned(),
                prefix: String::new(),
                skip_verify: false,
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
        skip_verify: false,
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
        assert!(e.iter().all(|e| !e.skip_verify));
        let e = c.endpoints("127.0.0.1:5000");
        let urls: Vec<_> = e.iter().map(|e| (e.v2(), e.skip_verify)).collect();
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
        ] {
            let e = config(text).validate().unwrap_err();
            assert!(e.contains(needle), "{e}");
        }
        assert!(toml::from_str::<RegistryConfig>("[\"x.io\"]\ninsecur = true").is_err());
    }
}
