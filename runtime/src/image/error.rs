//! The image store's errors.

use std::path::PathBuf;

use super::digest::Digest;
use super::registry::RegistryError;
use super::unpack::UnpackError;
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("image {image:?} not found")]
    NotFound { image: String },
    #[error("invalid image reference {reference:?}: {reason}")]
    InvalidReference { reference: String, reason: String },
    #[error("image {image:?} is in use by {}", in_use_by(.containers))]
    InUse {
        image: String,
        containers: Vec<String>,
    },
    #[error("{what} {expected}: its content has digest {actual}")]
    DigestMismatch {
        what: &'static str,
        expected: Digest,
        actual: Digest,
    },
    #[error("{what} {digest}: expected {expected} bytes, got {actual}")]
    SizeMismatch {
        what: &'static str,
        digest: Digest,
        expected: u64,
        actual: u64,
    },
    #[error("the sizes of {what} add up to more than {max} bytes", max = u64::MAX)]
    SizeOverflow { what: String },
    #[error("invalid {what} {digest}")]
    BadJson {
        what: &'static str,
        digest: Digest,
        #[source]
        source: serde_json::Error,
    },
    #[error("{what} {digest} is malformed: {reason}")]
    Malformed {
        what: &'static str,
        digest: Digest,
        reason: String,
    },
    #[error("unsupported media type {media_type:?} for {what}")]
    UnsupportedMediaType {
        what: &'static str,
        media_type: String,
    },
    #[error("no image for {os}/{architecture} in image index {index}")]
    NoMatchingPlatform {
        index: Digest,
        os: &'static str,
        architecture: &'static str,
    },
    #[error("cannot unpack layer {layer}")]
    Unpack {
        layer: Digest,
        #[source]
        source: UnpackError,
    },
    #[error("layer {blob} unpacks to diff id {actual}, but the image config says {expected}")]
    DiffIdMismatch {
        blob: Digest,
        expected: Digest,
        actual: Digest,
    },
    #[error("{digest} vanished from the store before the image was stored")]
    Vanished { digest: Digest },
    #[error("archive {file}: {reason}")]
    Archive { file: PathBuf, reason: String },
    #[error("cannot read archive {file}")]
    ArchiveRead {
        file: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read the {what} being stored")]
    ReadContent {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("{action} {path}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot pull {reference} from {registry}")]
    Pull {
        reference: String,
        registry: String,
        #[source]
        source: Box<ImageError>,
    },
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error("the pull was cancelled")]
    Cancelled,
    #[error("invalid registry credentials: {reason}")]
    BadCredentials { reason: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn in_use_by(containers: &[String]) -> String {
    if containers.is_empty() {
        "a container".to_owned()
    } else {
        format!("container(s) {}", containers.join(", "))
    }
}

impl ImageError {
    pub fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| ImageError::Io {
            action,
            path,
            source,
        }
    }

    /// The error with its sources, `: `-separated, for logs and gRPC messages.
    pub fn chain(&self) -> String {
        chain(self)
    }

    /// The innermost image error (through pulls), which decides the status code.
    pub fn root(&self) -> &ImageError {
        match self {
            ImageError::Pull { source, .. } => source.root(),
            e => e,
        }
    }
}

pub use crate::errors::chain;
