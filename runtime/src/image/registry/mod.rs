//! A small OCI-distribution client: manifests and blobs over HTTPS (HTTP only where the
//! config allows it), mirrors tried first, anonymous / basic / bearer-token auth.

mod auth;
mod error;
#[cfg(test)]
mod tests;
mod tls;

use std::collections::HashMap;
use std::collections::hash_map::Entry;

use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, WWW_AUTHENTICATE};

pub use auth::Credentials;
pub use error::RegistryError;

use super::blobs::MAX_JSON;
use super::digest::Digest;
use super::hosts::{Endpoint, RegistryConfig, Tls};
use super::reference::Reference;
use super::spec::MANIFEST_ACCEPT;
use auth::Challenge;
use tls::Problem;

/// HTTP clients for registries, one per TLS setting that the config needs.
pub struct Registries {
    config: RegistryConfig,
    clients: HashMap<Tls, reqwest::Client>,
    /// The node has no CA certificates (see [`tls::client`]).
    no_system_roots: bool,
}

impl Registries {
    /// Builds every client the config can need (reading its CA and client certificate
    /// files), so that a bad file is reported now rather than at the first pull.
    pub fn new(config: RegistryConfig) -> Result<Registries, RegistryError> {
        // reqwest is built without a default crypto provider; this process uses ring.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut clients = HashMap::new();
        let mut no_system_roots = false;
        let needed = config.hosts().flat_map(|h| config.endpoints(h));
        for tls in needed.map(|e| e.tls).chain([Tls::default()]) {
            if let Entry::Vacant(slot) = clients.entry(tls) {
                let (client, without_roots) = tls::client(slot.key())?;
                no_system_roots |= without_roots;
                slot.insert(client);
            }
        }
        Ok(Registries {
            config,
            clients,
            no_system_roots,
        })
    }

    /// Finds the manifest of `reference` at the first endpoint that has it (mirrors first)
    /// and returns a session bound to that endpoint. On failure, the error of the last
    /// endpoint tried (the registry itself).
    pub async fn open(
        &self,
        reference: &Reference,
        creds: Option<&Credentials>,
    ) -> Result<(Session<'_>, Fetched), RegistryError> {
        let mut last = None;
        for endpoint in self.config.endpoints(&reference.domain) {
            let mut s = Session {
                http: self.client(&endpoint.tls),
                no_system_roots: self.no_system_roots,
                // Credentials are for the registry named, never for a mirror.
                creds: if endpoint.mirror {
                    None
                } else {
                    creds.cloned()
                },
                authorization: None,
                hint: self.plain_http_hint(&endpoint, &reference.domain),
                registry: reference.domain.clone(),
                repo: reference.path.clone(),
                endpoint,
            };
            if let Some(token) = s.creds.as_ref().map(|c| c.registry_token.clone())
                && !token.is_empty()
            {
                s.authorization = Some(format!("Bearer {token}"));
            }
            match s.manifest(&reference.manifest_ref()).await {
                Ok(m) => return Ok((s, m)),
                Err(e) => {
                    tracing::info!(endpoint = %s.endpoint.v2(), image = %reference,
                        error = %super::error::chain(&e), "endpoint failed, trying the next");
                    last = Some(e);
                }
            }
        }
        Err(last.expect("there is always the registry itself"))
    }

    /// Built in `new` for every endpoint of a configured host; other hosts' endpoints have
    /// the default settings.
    fn client(&self, tls: &Tls) -> &reqwest::Client {
        self.clients
            .get(tls)
            .unwrap_or_else(|| &self.clients[&Tls::default()])
    }

    fn plain_http_hint(&self, e: &Endpoint, host: &str) -> String {
        if e.scheme == "https" && !e.mirror && !self.config.is_insecure(host) {
            format!(
                " over HTTPS (plain HTTP is used only for a host configured \
                 `insecure = true` under [registries.\"{host}\"])"
            )
        } else {
            String::new()
        }
    }
}

/// A manifest as the registry sent it.
pub struct Fetched {
    pub bytes: Vec<u8>,
    pub content_type: Option<String>,
    pub digest: Digest,
}

/// Requests to one endpoint for one repository, carrying the authorization it earned.
pub struct Session<'a> {
    http: &'a reqwest::Client,
    no_system_roots: bool,
    pub endpoint: Endpoint,
    repo: String,
    creds: Option<Credentials>,
    authorization: Option<String>,
    hint: String,
    /// The registry the reference names (its config table is where TLS is configured).
    registry: String,
}

impl Session<'_> {
    fn url(&self, kind: &str, reference: &str) -> String {
        format!("{}{}/{kind}/{reference}", self.endpoint.v2(), self.repo)
    }

    /// The manifest (or index) at `reference` (a tag or a digest), checked against the digest
    /// when asked by digest and against the registry's `Docker-Content-Digest`.
    pub async fn manifest(&mut self, reference: &str) -> Result<Fetched, RegistryError> {
        let url = self.url("manifests", reference);
        let resp = self.get(&url, Some(MANIFEST_ACCEPT)).await?;
        let content_type = header(&resp, CONTENT_TYPE.as_str());
        let announced = header(&resp, "docker-content-digest");
        let bytes = read_limited(resp, &url, MAX_JSON).await?;
        let digest = Digest::of(&bytes);
        let garbage = |reason: String| RegistryError::Garbage {
            url: url.clone(),
            reason,
        };
        if reference.starts_with("sha256:") && reference != digest.as_str() {
            return Err(garbage(format!(
                "asked for {reference}, got content with digest {digest}"
            )));
        }
        if let Some(a) = announced
            && a.starts_with("sha256:")
            && a != digest.as_str()
        {
            return Err(garbage(format!(
                "it announced digest {a}, the content has {digest}"
            )));
        }
        Ok(Fetched {
            bytes,
            content_type,
            digest,
        })
    }

    /// A blob's response, to be streamed by the caller.
    pub async fn blob(
        &mut self,
        digest: &Digest,
    ) -> Result<(String, reqwest::Response), RegistryError> {
        let url = self.url("blobs", digest.as_str());
        let resp = self.get(&url, None).await?;
        Ok((url, resp))
    }

    /// GET with authentication: on a 401, answers the challenge (basic, or a token from the
    /// token service) once and retries.
    async fn get(
        &mut self,
        url: &str,
        accept: Option<&str>,
    ) -> Result<reqwest::Response, RegistryError> {
        let mut answered = false;
        loop {
            let mut req = self.http.get(url);
            if let Some(a) = accept {
                req = req.header(ACCEPT, a);
            }
            if let Some(auth) = &self.authorization {
                req = req.header(AUTHORIZATION, auth);
            }
            let resp = req
                .send()
                .await
                .map_err(|source| self.send_error(url, source))?;
            let status = resp.status().as_u16();
            if status == 401 && !answered {
                let challenge = header(&resp, WWW_AUTHENTICATE.as_str()).unwrap_or_default();
                self.answer(url, &challenge).await?;
                answered = true;
                continue;
            }
            if !(200..300).contains(&status) {
                let body = read_limited(resp, url, 64 << 10).await.unwrap_or_default();
                return Err(RegistryError::Status {
                    url: url.to_owned(),
                    status,
                    detail: error_detail(&body),
                });
            }
            return Ok(resp);
        }
    }

    async fn answer(&mut self, url: &str, challenge: &str) -> Result<(), RegistryError> {
        match Challenge::parse(challenge) {
            Some(Challenge::Basic) => {
                let basic = self.creds.as_ref().and_then(Credentials::basic);
                self.authorization = Some(basic.ok_or_else(|| RegistryError::NoCredentials {
                    url: url.to_owned(),
                    challenge: challenge.to_owned(),
                })?);
            }
            Some(Challenge::Bearer {
                realm,
                service,
                scope,
            }) => {
                let scope = scope.unwrap_or_else(|| format!("repository:{}:pull", self.repo));
                let from_https = self.endpoint.scheme == "https";
                let token = auth::fetch_token(
                    self.http,
                    from_https,
                    &realm,
                    service.as_deref(),
                    &scope,
                    self.creds.as_ref(),
                )
                .await?;
                self.authorization = Some(format!("Bearer {token}"));
            }
            None => {
                return Err(RegistryError::UnsupportedChallenge {
                    url: url.to_owned(),
                    challenge: challenge.to_owned(),
                });
            }
        }
        Ok(())
    }

    /// Where `insecure = true` would go for this endpoint: its own host for a mirror, the
    /// registry's entry otherwise.
    fn insecure_table(&self) -> &str {
        if self.endpoint.mirror {
            &self.endpoint.host
        } else {
            &self.registry
        }
    }

    fn send_error(&self, url: &str, source: reqwest::Error) -> RegistryError {
        if let Some(mut problem) = tls::problem(&source) {
            if problem == Problem::Untrusted
                && self.no_system_roots
                && self.endpoint.tls.ca.is_empty()
            {
                problem = Problem::NoSystemRoots;
            }
            RegistryError::Tls {
                url: url.to_owned(),
                endpoint: self.endpoint.host.clone(),
                problem,
                hint: problem.hint(
                    &self.registry,
                    &self.endpoint.host,
                    self.insecure_table(),
                    &self.endpoint.tls,
                ),
                source,
            }
        } else if source.is_connect() || source.is_timeout() {
            RegistryError::Connect {
                url: url.to_owned(),
                hint: self.hint.clone(),
                source,
            }
        } else {
            RegistryError::Request {
                url: url.to_owned(),
                source,
            }
        }
    }
}

fn header(resp: &reqwest::Response, name: &str) -> Option<String> {
    resp.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// Reads a response body of at most `limit` bytes.
async fn read_limited(
    mut resp: reqwest::Response,
    url: &str,
    limit: u64,
) -> Result<Vec<u8>, RegistryError> {
    if resp.content_length().is_some_and(|n| n > limit) {
        return Err(RegistryError::TooLarge {
            url: url.to_owned(),
            limit,
        });
    }
    let mut out = Vec::new();
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|source| RegistryError::Request {
            url: url.to_owned(),
            source,
        })?
    {
        if out.len() as u64 + chunk.len() as u64 > limit {
            return Err(RegistryError::TooLarge {
                url: url.to_owned(),
                limit,
            });
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

/// Sends a small request; returns the status and the body.
async fn send_small(
    req: reqwest::RequestBuilder,
    url: &str,
) -> Result<(u16, Vec<u8>), RegistryError> {
    let resp = req.send().await.map_err(|source| RegistryError::Request {
        url: url.to_owned(),
        source,
    })?;
    let status = resp.status().as_u16();
    Ok((status, read_limited(resp, url, 1 << 20).await?))
}

/// `: CODE: message; …` from a registry's `{"errors": [...]}` body, or nothing.
fn error_detail(body: &[u8]) -> String {
    #[derive(serde::Deserialize)]
    struct Errors {
        errors: Vec<Entry>,
    }
    #[derive(serde::Deserialize)]
    struct Entry {
        #[serde(default)]
        code: String,
        #[serde(default)]
        message: String,
    }
    match serde_json::from_slice::<Errors>(body) {
        Ok(e) if !e.errors.is_empty() => {
            let parts: Vec<String> = e
                .errors
                .iter()
                .map(|x| format!("{}: {}", x.code, x.message))
                .collect();
            format!(": {}", parts.join("; "))
        }
        _ => String::new(),
    }
}
