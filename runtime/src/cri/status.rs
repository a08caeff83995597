//! The one place where domain errors become gRPC status codes.

use tonic::{Code, Status};

use crate::image::{ImageError, RegistryError};
use crate::sandbox::SandboxError;
use crate::store::StoreError;

fn code(e: &SandboxError) -> Code {
    match e {
        SandboxError::Invalid { .. } | SandboxError::Ambiguous { .. } => Code::InvalidArgument,
        SandboxError::NotFound { .. } => Code::NotFound,
        SandboxError::AlreadyExists { .. } => Code::AlreadyExists,
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
        | SandboxError::Teardown { .. } => Code::Internal,
    }
}

impl From<SandboxError> for Status {
    fn from(e: SandboxError) -> Status {
        let code = code(&e);
        let msg = e.chain();
        // Logged once, here, where the error leaves the daemon.
        if code == Code::Internal {
            tracing::error!(error = %msg, "request failed");
        } else {
            tracing::debug!(error = %msg, ?code, "request refused");
        }
        Status::new(code, msg)
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
        | ImageError::DiffIdMismatch { .. } => Code::DataLoss,
        ImageError::BadJson { .. }
        | ImageError::Malformed { .. }
        | ImageError::Unpack { .. }
        | ImageError::Vanished { .. }
        | ImageError::ArchiveRead { .. }
        | ImageError::ReadContent { .. }
        | ImageError::Io { .. }
        | ImageError::ClientSetup(_)
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
    Status::unimplemented(format!(
        "{rpc} is not implemented by peapod yet (pod sandboxes only for now)"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_precise() {
        let s: Status = SandboxError::invalid("hostname", "too long").into();
        assert_eq!(s.code(), Code::InvalidArgument);
        assert!(s.message().contains("hostname"));
        let s: Status = SandboxError::NotFound { id: "abc".into() }.into();
        assert_eq!(s.code(), Code::NotFound);
        let s: Status = SandboxError::Unsupported {
            what: "hostPort".into(),
        }
        .into();
        assert_eq!(s.code(), Code::Unimplemented);
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
