//! Registry authentication: anonymous, basic, and the bearer-token flow (a `401` with
//! `WWW-Authenticate: Bearer realm=…,service=…,scope=…` sends us to a token service, with the
//! pull's credentials if it has any).

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::Deserialize;

use super::error::RegistryError;

/// What a pull may authenticate with (from CRI's `AuthConfig`).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
    /// An OAuth2 refresh token, exchanged at the token service.
    pub identity_token: String,
    /// A bearer token to send as it is.
    pub registry_token: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

impl Credentials {
    /// From AuthConfig's fields; `auth` is base64 of `user:password`.
    pub fn from_auth_config(
        username: &str,
        password: &str,
        auth: &str,
        identity_token: &str,
        registry_token: &str,
    ) -> Result<Option<Credentials>, String> {
        let (mut username, mut password) = (username.to_owned(), password.to_owned());
        if !auth.is_empty() {
            let raw = STANDARD
                .decode(auth.trim())
                .map_err(|e| format!("auth is not base64: {e}"))?;
            let raw = String::from_utf8(raw).map_err(|_| "auth is not UTF-8".to_owned())?;
            let (u, p) = raw
                .split_once(':')
                .ok_or_else(|| "auth is not base64 of user:password".to_owned())?;
            (username, password) = (u.to_owned(), p.to_owned());
        }
        let c = Credentials {
            username,
            password,
            identity_token: identity_token.to_owned(),
            registry_token: registry_token.to_owned(),
        };
        Ok((c != Credentials::default()).then_some(c))
    }

    pub fn basic(&self) -> Option<String> {
        (!self.username.is_empty()).then(|| {
            let raw = format!("{}:{}", self.username, self.password);
            format!("Basic {}", STANDARD.encode(raw))
        })
    }
}

/// A parsed `WWW-Authenticate` challenge.
#[derive(Debug, PartialEq, Eq)]
pub enum Challenge {
    Basic,
    Bearer {
        realm: String,
        service: Option<String>,
        scope: Option<String>,
    },
}

impl Challenge {
    pub fn parse(header: &str) -> Option<Challenge> {
        let (scheme, rest) = header.trim().split_once(' ').unwrap_or((header.trim(), ""));
        if scheme.eq_ignore_ascii_case("basic") {
            return Some(Challenge::Basic);
        }
        if !scheme.eq_ignore_ascii_case("bearer") {
            return None;
        }
        let params = params(rest);
        let get = |k: &str| {
            params
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(k))
                .map(|(_, v)| v.clone())
        };
        Some(Challenge::Bearer {
            realm: get("realm")?,
            service: get("service"),
            scope: get("scope"),
        })
    }
}

/// `k="v", k2=v2` pairs; quoted values may hold commas.
fn params(s: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = s.trim();
    while let Some(eq) = rest.find('=') {
        let key = rest[..eq].trim().trim_start_matches(',').trim().to_owned();
        rest = &rest[eq + 1..];
        let value;
        if let Some(q) = rest.strip_prefix('"') {
            let end = q.find('"').unwrap_or(q.len());
            value = q[..end].to_owned();
            rest = q.get(end + 1..).unwrap_or("");
        } else {
            let end = rest.find(',').unwrap_or(rest.len());
            value = rest[..end].trim().to_owned();
            rest = &rest[end..];
        }
        out.push((key, value));
        rest = rest.trim_start().trim_start_matches(',').trim_start();
    }
    out
}

#[derive(Deserialize)]
struct TokenResponse {
    #[serde(default)]
    token: String,
    #[serde(default)]
    access_token: String,
}

/// Gets a bearer token from the token service `realm` for `scope`.
pub async fn fetch_token(
    http: &reqwest::Client,
    from_https: bool,
    realm: &str,
    service: Option<&str>,
    scope: &str,
    creds: Option<&Credentials>,
) -> Result<String, RegistryError> {
    let bad = |reason| RegistryError::BadRealm {
        realm: realm.to_owned(),
        reason,
    };
    let url = reqwest::Url::parse(realm).map_err(|_| bad("not a URL"))?;
    match url.scheme() {
        "https" => {}
        "http" if !from_https => {}
        "http" => return Err(bad("plain HTTP, for a registry reached over HTTPS")),
        _ => return Err(bad("not http(s)")),
    }
    let req = match creds.filter(|c| !c.identity_token.is_empty()) {
        Some(c) => {
            let mut form = vec![
                ("grant_type", "refresh_token"),
                ("refresh_token", c.identity_token.as_str()),
                ("client_id", "peapod"),
                ("scope", scope),
            ];
            if let Some(s) = service {
                form.push(("service", s));
            }
            let body = form
                .iter()
                .map(|(k, v)| format!("{k}={}", urlencode(v)))
                .collect::<Vec<_>>()
                .join("&");
            http.post(url.clone())
                .header("content-type", "application/x-www-form-urlencoded")
                .body(body)
        }
        None => {
            let mut u = url.clone();
            {
                let mut q = u.query_pairs_mut();
                if let Some(s) = service {
                    q.append_pair("service", s);
                }
                q.append_pair("scope", scope);
            }
            let req = http.get(u);
            match creds.and_then(Credentials::basic) {
                Some(b) => req.header("authorization", b),
                None => req,
            }
        }
    };
    let (status, body) = super::send_small(req, realm).await?;
    if !(200..300).contains(&status) {
        return Err(RegistryError::Status {
            url: realm.to_owned(),
            status,
            detail: super::error_detail(&body),
        });
    }
    let t: TokenResponse = serde_json::from_slice(&body).map_err(|e| RegistryError::Garbage {
        url: realm.to_owned(),
        reason: format!("not a token response: {e}"),
    })?;
    let token = if t.token.is_empty() {
        t.access_token
    } else {
        t.token
    };
    if token.is_empty() {
        return Err(RegistryError::Garbage {
            url: realm.to_owned(),
            reason: "the token response has no token".into(),
        });
    }
    Ok(token)
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            b => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges_parse() {
        assert_eq!(
            Challenge::parse(
                r#"Bearer realm="https://auth.example.test/token",service="registry.example.test",scope="repository:library/busybox:pull,push""#
            ),
            Some(Challenge::Bearer {
                realm: "https://auth.example.test/token".into(),
                service: Some("registry.example.test".into()),
                scope: Some("repository:library/busybox:pull,push".into()),
            })
        );
        assert_eq!(
            Challenge::parse("bearer realm=http://127.0.0.1:1/t"),
            Some(Challenge::Bearer {
                realm: "http://127.0.0.1:1/t".into(),
                service: None,
                scope: None,
            })
        );
        assert_eq!(
            Challenge::parse(r#"Basic realm="x""#),
            Some(Challenge::Basic)
        );
        assert_eq!(Challenge::parse("Negotiate"), None);
        assert_eq!(Challenge::parse("Bearer service=x"), None);
    }

    #[test]
    fn auth_config_credentials() {
        let c = Credentials::from_auth_config("", "", &STANDARD.encode("u:p:w"), "", "")
            .unwrap()
            .unwrap();
        assert_eq!((c.username.as_str(), c.password.as_str()), ("u", "p:w"));
        assert_eq!(
            c.basic().unwrap(),
            format!("Basic {}", STANDARD.encode("u:p:w"))
        );
        assert!(
            Credentials::from_auth_config("", "", "", "", "")
                .unwrap()
                .is_none()
        );
        assert!(Credentials::from_auth_config("", "", "!!", "", "").is_err());
        let t = Credentials::from_auth_config("", "", "", "", "tok")
            .unwrap()
            .unwrap();
        assert_eq!(t.basic(), None);
    }
}
