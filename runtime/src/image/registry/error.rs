//! What can go wrong talking to a registry.

use std::path::PathBuf;

use super::tls::Problem;

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("cannot connect to {url}{hint}")]
    Connect {
        url: String,
        /// Why plain HTTP was not tried, for a host that might speak it.
        hint: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("{url}: TLS with {endpoint} failed: {}; {hint}", problem.what())]
    Tls {
        url: String,
        /// The host connected to (a mirror's, or the registry's).
        endpoint: String,
        problem: Problem,
        /// Which config key fixes it, under which `[registries."…"]`.
        hint: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("{url}: request failed")]
    Request {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("{url} answered HTTP {status}{detail}")]
    Status {
        url: String,
        status: u16,
        /// The registry's own error codes and messages, if it sent any.
        detail: String,
    },
    #[error("{url} wants authentication ({challenge}), and the pull has no credentials for it")]
    NoCredentials { url: String, challenge: String },
    #[error("{url} asks for an authentication scheme peapod does not speak: {challenge:?}")]
    UnsupportedChallenge { url: String, challenge: String },
    #[error("token service {realm} is refused: {reason}")]
    BadRealm { realm: String, reason: &'static str },
    #[error("{url} answered garbage: {reason}")]
    Garbage { url: String, reason: String },
    #[error("{url}: the response is larger than {limit} bytes")]
    TooLarge { url: String, limit: u64 },
    #[error("cannot read registry {what} {path}")]
    TlsFile {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("registry {what} {path} holds no PEM {expected}")]
    BadPem {
        what: &'static str,
        path: PathBuf,
        expected: &'static str,
        #[source]
        source: Option<reqwest::Error>,
    },
    #[error("cannot set up the registry client")]
    ClientSetup(#[source] reqwest::Error),
}

impl RegistryError {
    /// The HTTP status the registry answered with, if that is what went wrong.
    pub fn status(&self) -> Option<u16> {
        match self {
            RegistryError::Status { status, .. } => Some(*status),
            RegistryError::NoCredentials { .. } => Some(401),
            _ => None,
        }
    }
}
