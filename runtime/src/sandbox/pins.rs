//! Namespace pins: bind mounts of `/proc/<pid>/ns/<kind>` onto files, so that a namespace
//! outlives its pause process and an operator can `ip netns exec peapod-<id> …`.

use std::fs::{self, OpenOptions};
use std::io;
use std::path::Path;

use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags, mount, umount2};

/// Makes `dir` a shared mount point (as `ip netns add` does for `/run/netns`), so that a pin
/// removed here also disappears from mount namespaces copied from ours in the meantime.
pub fn ensure_shared_dir(dir: &Path) -> io::Result<()> {
    fs::create_dir_all(dir)?;
    let shared = MsFlags::MS_SHARED | MsFlags::MS_REC;
    match mount(None::<&str>, dir, None::<&str>, shared, None::<&str>) {
        Ok(()) => Ok(()),
        Err(Errno::EINVAL) => {
            // Not a mount point yet: bind it onto itself first.
            mount(
                Some(dir),
                dir,
                None::<&str>,
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None::<&str>,
            )?;
            mount(None::<&str>, dir, None::<&str>, shared, None::<&str>)?;
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

/// Pins the namespace `kind` (`net`, `ipc`, `uts`, `pid`) of `pid` at `at`.
pub fn pin(pid: i32, kind: &str, at: &Path) -> io::Result<()> {
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(at)?;
    let src = format!("/proc/{pid}/ns/{kind}");
    if let Err(e) = mount(
        Some(src.as_str()),
        at,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    ) {
        let _ = fs::remove_file(at);
        return Err(e.into());
    }
    Ok(())
}

/// Removes a pin; a pin already gone (or never mounted) is success.
pub fn unpin(at: &Path) -> io::Result<()> {
    match umount2(at, MntFlags::MNT_DETACH) {
        Ok(()) | Err(Errno::EINVAL) | Err(Errno::ENOENT) => {}
        Err(e) => return Err(e.into()),
    }
    match fs::remove_file(at) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}
