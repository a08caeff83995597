//! Image volumes: an image's files in the container, read-only, nosuid, nodev and noexec (as
//! the Kubernetes ImageVolume source is). The image's layers become a read-only overlay (no
//! upper dir; one layer is bound as it is, overlayfs wants two without one) on a staging dir
//! of the container's own mount namespace, and it, or the sub path asked for (resolved inside
//! it, so a symlink in the image cannot lead out), is bound at the destination. The staging
//! mounts go with the old root at the pivot.

use std::fs;
use std::path::Path;

use nix::fcntl::OFlag;
use nix::mount::MsFlags;

use super::{MountError, Result, ioerr, mkdir_p, mnt, mount_on, not_under_proc};
use crate::container::launch::ImageVolume;
use crate::inroot::{Root, fd_path};

/// Mounts `v` into the container's `root`, staged at `staging` (a node path the runtime
/// chose, one per volume).
pub fn mount(root: &Root, v: &ImageVolume, staging: &Path) -> Result {
    mkdir_p(staging)?;
    let locked = MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    match v.layers.as_slice() {
        [] => {
            return Err(MountError::Step {
                what: "mount an image without layers at",
                path: v.destination.clone().into(),
                source: std::io::ErrorKind::InvalidInput.into(),
            });
        }
        [one] => {
            let src = one.to_str().unwrap_or_default();
            mnt(Some(src), staging, None, MsFlags::MS_BIND, None)?;
        }
        layers => {
            // Top first.
            let lower: Vec<String> = layers
                .iter()
                .rev()
                .map(|p| p.display().to_string())
                .collect();
            let opts = format!("lowerdir={}", lower.join(":"));
            mnt(
                Some("overlay"),
                staging,
                Some("overlay"),
                locked,
                Some(&opts),
            )?;
        }
    }
    let source = if v.sub_path.is_empty() {
        None
    } else {
        Some(Root::open(staging)?.open_in(Path::new(&v.sub_path), OFlag::O_PATH)?)
    };
    let source_path = source.as_ref().map_or_else(|| staging.to_owned(), fd_path);
    let is_dir = fs::metadata(&source_path)
        .map_err(ioerr("stat", Path::new(&v.sub_path)))?
        .is_dir();
    let dest = Path::new(&v.destination);
    let at = if is_dir {
        root.mkdir_all(dest)?
    } else {
        root.create_file(dest)?
    };
    not_under_proc(root, &at, dest)?;
    mount_on(Some(&source_path), &at, dest, None, MsFlags::MS_BIND, None)?;
    let at = root.open_in(dest, OFlag::O_PATH)?;
    let remount = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | locked;
    mount_on(None, &at, dest, None, remount, None)
}
