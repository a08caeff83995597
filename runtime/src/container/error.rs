use std::path::PathBuf;

use crate::image::ImageError;
use crate::sandbox::SandboxError;
use crate::store::StoreError;

use super::model::ContainerState;
use super::seccomp::SeccompError;
use super::security::UnknownCap;
use super::user::UserError;

#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    #[error("invalid {field}: {reason}")]
    Invalid { field: String, reason: String },
    #[error("container {id} not found")]
    NotFound { id: String },
    #[error("container id prefix {prefix} is ambiguous")]
    Ambiguous { prefix: String },
    #[error("pod sandbox {id} is not ready")]
    SandboxNotReady { id: String },
    #[error("container {name} attempt {attempt} already exists in pod sandbox {sandbox} as {id}")]
    AlreadyExists {
        name: String,
        attempt: u32,
        sandbox: String,
        id: String,
    },
    #[error("container {id} is {state:?}: cannot {op}")]
    WrongState {
        id: String,
        state: ContainerState,
        op: &'static str,
    },
    #[error("{what} is not supported yet")]
    Unsupported { what: String },
    #[error(
        "{field} needs the {controller} cgroup controller, which the container's cgroup \
         cannot have on this node (available: {available})"
    )]
    ControllerMissing {
        field: String,
        controller: String,
        available: String,
    },
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error("cannot resolve the container's user")]
    User(#[from] UserError),
    #[error("invalid capabilities")]
    Capability(#[from] UnknownCap),
    #[error("cannot read seccomp profile {path}")]
    SeccompFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("seccomp profile {profile}")]
    Seccomp {
        profile: String,
        #[source]
        source: SeccompError,
    },
    #[error(transparent)]
    Device(#[from] super::devices::DeviceError),
    #[error("mount source {path} does not exist on the node")]
    MountSource { path: String },
    #[error("cannot start the monitor of container {id}")]
    Spawn {
        id: String,
        #[source]
        source: std::io::Error,
    },
    #[error("container {id} has a monitor from before a daemon crash that is still starting")]
    MonitorStarting { id: String },
    #[error("container {id} failed to start: {message}")]
    Start { id: String, message: String },
    #[error("cannot signal container {id} (pid {pid})")]
    Kill {
        id: String,
        pid: i32,
        #[source]
        source: std::io::Error,
    },
    #[error("container {id} did not exit after SIGKILL")]
    Stuck { id: String },
    #[error("cannot {what} {path}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot reopen the log of container {id}: {reason}")]
    Reopen { id: String, reason: String },
    #[error("cannot exec in container {id}")]
    Exec {
        id: String,
        #[source]
        source: std::io::Error,
    },
    #[error("command in container {id} timed out after {secs} s and was killed")]
    ExecTimeout { id: String, secs: i64 },
    #[error("cannot attach to container {id}")]
    Attach {
        id: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Sandbox(#[from] SandboxError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("teardown of container {id} left {} error(s): {}", .errors.len(), crate::errors::join_chains(.errors))]
    Teardown {
        id: String,
        errors: Vec<ContainerError>,
    },
}

impl ContainerError {
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> ContainerError {
        ContainerError::Invalid {
            field: field.into(),
            reason: reason.into(),
        }
    }

    pub fn io(what: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| ContainerError::Io { what, path, source }
    }

    /// The error with its whole source chain.
    pub fn chain(&self) -> String {
        crate::errors::chain(self)
    }
}
