//! The one place where domain errors become gRPC status codes.

use tonic::{Code, Status};

use crate::container::ContainerError;
use crate::image::{ImageError, RegistryError};
use crate::sandbox::SandboxError;
use crate::store::StoreError;

fn code(e: &SandboxError) -> Code {
    match e {
        SandboxError::Invalid { .. } | SandboxError::Ambiguous { .. } => Code::InvalidArgument,
        SandboxError::NotFound { .. } => Code::NotFound,
        SandboxError::AlreadyExists { .. } | SandboxError::HostPortTaken { .. } => {
            Code::AlreadyExists
        }
        SandboxError::Unsupported { .. } => Code::Unimplemented,
        SandboxError::NetworkNotReady { .. } => Code::FailedPrecondition,
        SandboxError::PoolExhausted(_) => Code::ResourceExhausted,
        SandboxError::Spawn { .. }
        | SandboxError::Kill { .. }
        | SandboxError::Pin { .. }
        | SandboxError::Unpin { .. }
        | SandboxError::Cgroup { .. }
        | SandboxError::File { .. }
        | SandboxError::Sysctl { .. }
        | SandboxError::JoinNamespaces { .. }
        | SandboxError::Network(_)
        | SandboxError::Detach(_)
        | SandboxError::Store(_)
        | SandboxError::Systemd(_)
        | SandboxError::Containers { .. }
        | SandboxError::Teardown { .. } => Code::Internal,
    }
}

/// A full disk (ENOSPC anywhere in the chain) is an exhausted resource, not an internal bug.
fn out_of_space(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut src = Some(e);
    while let Some(err) = src {
        if err
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.raw_os_error() == Some(libc::ENOSPC))
        {
            return true;
        }
        src = err.source();
    }
    false
}

fn container_code(e: &ContainerError) -> Code {
    match e {
        ContainerError::Invalid { .. }
        | ContainerError::Ambiguous { .. }
        | ContainerError::User(_)
        | ContainerError::Capability(_)
        | ContainerError::SeccompFile { .. }
        | ContainerError::Seccomp { .. }
        | ContainerError::MountSource { .. } => Code::InvalidArgument,
        ContainerError::NotFound { .. } => Code::NotFound,
        ContainerError::Device(e) if e.is_invalid() => Code::InvalidArgument,
        ContainerError::SandboxNotReady { .. }
        | ContainerError::WrongState { .. }
        | ContainerError::ControllerMissing { .. } => Code::FailedPrecondition,
        ContainerError::AlreadyExists { .. } => Code::AlreadyExists,
        ContainerError::MonitorStarting { .. } | ContainerError::Attach { .. } => Code::Unavailable,
        ContainerError::Unsupported { .. } => Code::Unimplemented,
        ContainerError::Image(e) => image_code(e),
        ContainerError::ExecTimeout { .. } => Code::DeadlineExceeded,
        ContainerError::Sandbox(e) => code(e),
        ContainerError::Spawn { .. }
        | ContainerError::Start { .. }
        | ContainerError::Kill { .. }
        | ContainerError::Stuck { .. }
        | ContainerError::Io { .. }
        | ContainerError::Reopen { .. }
        | ContainerError::Exec { .. }
        | ContainerError::Store(_)
        | ContainerError::Device(_)
        | ContainerError::Teardown { .. } => Code::Internal,
    }
}

/// Logged once, here, where the error leaves the daemon.
fn to_status(code: Code, msg: String) -> Status {
    if code == Code::Internal {
        tracing::error!(error = %msg, "request failed");
    } else {
        tracing::debug!(error = %msg, ?code, "request refused");
    }
    Status::new(code, msg)
}

impl From<ContainerError> for Status {
    fn from(e: ContainerError) -> Status {
        let code = if out_of_space(&e) {
            Code::ResourceExhausted
        } else {
            container_code(&e)
        };
        to_status(code, e.chain())
    }
}

impl From<SandboxError> for Status {
    fn from(e: SandboxError) -> Status {
        let code = if out_of_space(&e) {
            Code::ResourceExhausted
        } else {
            code(&e)
        };
        let msg = e.chain();
        to_status(code, msg)
    }
}

impl From<StoreError> for Status {
    fn from(e: StoreError) -> Status {
        SandboxError::Store(e).into()
    }
}

fn image_code(e: &ImageError) -> Code {
    match e.root() {
        ImageError::Registry(r) => match r.status() {
            Some(404) => Code::NotFound,
            Some(401 | 403) => Code::PermissionDenied,
            Some(429) | Some(500..) => Code::Unavailable,
            Some(_) => Code::Unknown,
            None if matches!(r, RegistryError::Connect { .. }) => Code::Unavailable,
            // Retrying will not help until the node's config trusts the registry.
            None if matches!(r, RegistryError::Tls { .. }) => Code::FailedPrecondition,
            None => Code::Unknown,
        },
        ImageError::Cancelled => Code::Cancelled,
        ImageError::BadCredentials { .. } => Code::InvalidArgument,
        ImageError::NotFound { .. } | ImageError::NoMatchingPlatform { .. } => Code::NotFound,
        ImageError::InvalidReference { .. } | ImageError::Archive { .. } => Code::InvalidArgument,
        ImageError::InUse { .. } => Code::FailedPrecondition,
        ImageError::UnsupportedMediaType { .. } => Code::Unimplemented,
        ImageError::DigestMismatch { .. }
        | ImageError::SizeMismatch { .. }
        | ImageError::DiffIdMismatch { .. }
        | ImageError::SizeOverflow { .. } => Code::DataLoss,
        ImageError::BadJson { .. }
        | ImageError::Malformed { .. }
        | ImageError::Unpack { .. }
        | ImageError::Vanished { .. }
        | ImageError::ArchiveRead { .. }
        | ImageError::ReadContent { .. }
        | ImageError::Io { .. }
        | ImageError::Pull { .. }
        | ImageError::Store(_) => Code::Internal,
    }
}

impl From<ImageError> for Status {
    fn from(e: ImageError) -> Status {
        let code = image_code(&e);
        let msg = e.chain();
        if matches!(code, Code::Internal | Code::DataLoss | Code::Unknown) {
            tracing::error!(error = %msg, "image request failed");
        } else {
            tracing::debug!(error = %msg, ?code, "image request refused");
        }
        Status::new(code, msg)
    }
}

pub fn unimplemented(rpc: &str) -> Status {
    Status::unimplemented(format!("{rpc} is not implemented by peapod yet"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_precise() {
        let s: Status = SandboxError::invalid("hostname", "too long").into();
        assert_eq!(s.code(), Code::InvalidArgument);
        assert!(s.message().contains("hostname"));
        let full = SandboxError::File {
            path: "/var/lib/peapod/x".into(),
            source: std::io::Error::from_raw_os_error(libc::ENOSPC),
        };
        assert_eq!(Status::from(full).code(), Code::ResourceExhausted);
        let s: Status = SandboxError::NotFound { id: "abc".into() }.into();
        assert_eq!(s.code(), Code::NotFound);
        let s: Status = SandboxError::Unsupported {
            what: "hostPort".into(),
        }
        .into();
        assert_eq!(s.code(), Code::Unimplemented);
        let s: Status = SandboxError::HostPortTaken {
            mapping: "tcp/*:80".into(),
            holder: "abc".into(),
        }
        .into();
        assert_eq!(s.code(), Code::AlreadyExists);
        let s: Status = ContainerError::SandboxNotReady { id: "p".into() }.into();
        assert_eq!(s.code(), Code::FailedPrecondition);
        let s: Status = ContainerError::Image(ImageError::NotFound {
            image: "busybox".into(),
        })
        .into();
        assert_eq!(s.code(), Code::NotFound);
        let s: Status = ContainerError::Sandbox(SandboxError::NotFound { id: "x".into() }).into();
        assert_eq!(s.code(), Code::NotFound);
        let s: Status = ImageError::NotFound {
            image: "busybox".into(),
        }
        .into();
        assert_eq!(s.code(), Code::NotFound);
        let s: Status = ImageError::InUse {
            image: "busybox".into(),
            containers: vec!["c1".into()],
        }
        .into();
        assert_eq!(s.code(), Code::FailedPrecondition);
        assert!(s.message().contains("c1"), "{}", s.message());
    }
}
