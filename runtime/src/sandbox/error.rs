use std::path::PathBuf;

use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("invalid {field}: {reason}")]
    Invalid { field: String, reason: String },
    #[error("pod sandbox {id} not found")]
    NotFound { id: String },
    #[error("pod sandbox id prefix {prefix} is ambiguous")]
    Ambiguous { prefix: String },
    #[error(
        "pod {name}/{namespace} attempt {attempt} already exists as sandbox {id} in state {state}"
    )]
    AlreadyExists {
        name: String,
        namespace: String,
        attempt: u32,
        id: String,
        state: String,
    },
    #[error("hostPort {mapping} is already mapped by pod sandbox {holder}")]
    HostPortTaken { mapping: String, holder: String },
    #[error("{what} is not supported yet")]
    Unsupported { what: String },
    #[error("pod network is not ready: {reason}")]
    NetworkNotReady { reason: String },
    #[error("pod IP pool exhausted")]
    PoolExhausted(#[source] netsetup::NetError),
    #[error("cannot start pause {path}")]
    Spawn {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot signal pause pid {pid}")]
    Kill {
        pid: i32,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot pin namespace at {path}")]
    Pin {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot unpin namespace at {path}")]
    Unpin {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cgroup {path}")]
    Cgroup {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write {path}")]
    File {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot enter the pod's namespaces")]
    JoinNamespaces {
        #[source]
        source: std::io::Error,
    },
    #[error("cannot set sysctl {name}")]
    Sysctl {
        name: String,
        #[source]
        source: netsetup::sysctl::SysctlError,
    },
    #[error("pod network setup failed")]
    Network(#[source] netsetup::NetError),
    #[error("pod network teardown failed")]
    Detach(#[source] netsetup::DetachError),
    #[error("cannot stop or remove the containers of pod sandbox {id}")]
    Containers {
        id: String,
        #[source]
        source: super::BoxError,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the systemd cgroup driver")]
    Systemd(#[from] super::cgroup::systemd::SystemdError),
    #[error("teardown of sandbox {id} left {} error(s): {}", .errors.len(), crate::errors::join_chains(.errors))]
    Teardown {
        id: String,
        errors: Vec<SandboxError>,
    },
}

impl SandboxError {
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> SandboxError {
        SandboxError::Invalid {
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// Renders the error with its whole source chain, for lists of errors.
    pub fn chain(&self) -> String {
        crate::errors::chain(self)
    }
}
