//! The container side, seen from the pod: a pod's stop stops its containers first, its
//! removal removes them. The sandbox knows only this trait.

use std::sync::Weak;

use super::error::SandboxError;
use super::{Result, Sandboxes};

/// What a pod's stop and removal ask of its containers; implemented by the container side.
/// Called on a blocking thread, with the sandbox's operation lock held.
pub trait PodContainers: Send + Sync {
    /// Stops every container of the pod and refuses new ones.
    fn stop_all(&self, sandbox_id: &str) -> std::result::Result<(), BoxError>;
    /// Removes every container of the pod (stopping them first).
    fn remove_all(&self, sandbox_id: &str) -> std::result::Result<(), BoxError>;
}

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl Sandboxes {
    /// Connects the container side; pods stop and remove their containers through it.
    pub fn set_containers(&self, c: Weak<dyn PodContainers>) {
        let _ = self.containers.set(c);
    }

    /// Runs a container hook on a blocking thread.
    pub(super) async fn containers_hook(&self, id: &str, remove: bool) -> Result<()> {
        let Some(hook) = self.containers.get().and_then(Weak::upgrade) else {
            return Ok(());
        };
        let sid = id.to_owned();
        tokio::task::spawn_blocking(move || {
            if remove {
                hook.remove_all(&sid)
            } else {
                hook.stop_all(&sid)
            }
        })
        .await
        .expect("no panic")
        .map_err(|source| SandboxError::Containers {
            id: id.to_owned(),
            source,
        })
    }
}
