//! The plugin's errors and the one place that gives each its CNI error code.

use std::io;
use std::path::PathBuf;

pub use netsetup::chain;
use netsetup::{DetachError, NetError};
use serde_json::{Value, json};

/// Well-known codes of the CNI spec (0–99) and peapod's own (100+).
pub mod code {
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    pub const UNKNOWN_CONTAINER: u32 = 3;
    pub const INVALID_ENV: u32 = 4;
    pub const IO_FAILURE: u32 = 5;
    pub const DECODE: u32 = 6;
    pub const INVALID_CONFIG: u32 = 7;
    pub const NOT_AVAILABLE: u32 = 50;
    /// ADD for an attachment that exists in another netns.
    pub const ALREADY_ATTACHED: u32 = 100;
    /// CHECK found the attachment not as ADD made it.
    pub const CHECK_FAILED: u32 = 101;
    /// A hostPort another attachment maps already.
    pub const PORT_TAKEN: u32 = 102;
    /// The subnet has no free address.
    pub const POOL_EXHAUSTED: u32 = 103;
    /// The kernel refused to make or remove a link, address, route or rule.
    pub const NETWORK: u32 = 104;
}

#[derive(Debug, thiserror::Error)]
pub enum CniError {
    #[error("cniVersion {version:?} is not supported (this plugin speaks 1.0.0 and 1.1.0)")]
    IncompatibleVersion { version: String },
    #[error("{var} {reason}")]
    InvalidEnv { var: &'static str, reason: String },
    #[error("cannot read the network configuration from stdin")]
    Stdin {
        #[source]
        source: io::Error,
    },
    #[error("the network configuration on stdin is larger than {limit} bytes")]
    TooLarge { limit: u64 },
    #[error("cannot decode the network configuration")]
    Decode {
        #[source]
        source: serde_json::Error,
    },
    #[error("invalid network configuration: {field}: {reason}")]
    InvalidConfig { field: &'static str, reason: String },
    #[error("no attachment of container {container_id} interface {ifname} on this network")]
    UnknownContainer {
        container_id: String,
        ifname: String,
    },
    #[error(
        "container {container_id} interface {ifname} is attached in {}, not {}: DEL it first",
        existing.display(), requested.display()
    )]
    AlreadyAttached {
        container_id: String,
        ifname: String,
        existing: PathBuf,
        requested: PathBuf,
    },
    #[error("container {container_id} interface {ifname}: {what}")]
    CheckFailed {
        container_id: String,
        ifname: String,
        what: String,
    },
    #[error("host port {mapping} is mapped to container {holder} already")]
    PortTaken { mapping: String, holder: String },
    #[error("plugin not ready: {reason}")]
    NotReady { reason: String },
    #[error("cannot {action} {}", path.display())]
    State {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot decode attachment record {}", path.display())]
    Record {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error(transparent)]
    Net(#[from] NetError),
    #[error(transparent)]
    Detach(#[from] DetachError),
}

impl CniError {
    pub fn code(&self) -> u32 {
        match self {
            CniError::IncompatibleVersion { .. } => code::INCOMPATIBLE_VERSION,
            CniError::InvalidEnv { .. } => code::INVALID_ENV,
            CniError::Stdin { .. } | CniError::State { .. } | CniError::Record { .. } => {
                code::IO_FAILURE
            }
            CniError::TooLarge { .. } | CniError::Decode { .. } => code::DECODE,
            CniError::InvalidConfig { .. } => code::INVALID_CONFIG,
            CniError::UnknownContainer { .. } => code::UNKNOWN_CONTAINER,
            CniError::AlreadyAttached { .. } => code::ALREADY_ATTACHED,
            CniError::CheckFailed { .. } => code::CHECK_FAILED,
            CniError::PortTaken { .. } => code::PORT_TAKEN,
            CniError::NotReady { .. } => code::NOT_AVAILABLE,
            CniError::Net(e) if e.is_exhausted() => code::POOL_EXHAUSTED,
            CniError::Net(NetError::InvalidIfname { .. }) => code::INVALID_CONFIG,
            CniError::Net(_) | CniError::Detach(_) => code::NETWORK,
        }
    }

    pub fn invalid_config(field: &'static str, reason: impl Into<String>) -> CniError {
        CniError::InvalidConfig {
            field,
            reason: reason.into(),
        }
    }

    /// The error as the spec has it printed on stdout: `msg` is this error, `details` its
    /// causes as well.
    pub fn to_json(&self, cni_version: &str) -> Value {
        json!({
            "cniVersion": cni_version,
            "code": self.code(),
            "msg": self.to_string(),
            "details": chain(self),
        })
    }
}
