//! The container's filesystem, built by its init inside its own mount namespace: the overlay
//! rootfs, /proc, /dev, /sys, the bind mounts, masked and read-only paths, then pivot_root.
//! Everything is mounted in a namespace that dies with the container: nothing can leak into
//! the node's mount table, but what is mounted under a Bidirectional mount, a peer of its
//! source on the node.
//!
//! The image chose the rootfs's symlinks, and we are still under the node's `/`: every path in
//! the rootfs is resolved by [`crate::inroot`] (never joined as a string), made one component
//! at a time under its parent's fd, and mounted onto through `/proc/self/fd/N`. After a
//! mount, the target is resolved again (in the root) to reach the new mount, not the
//! directory under it.

use std::ffi::CString;
use std::fs;
use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use nix::fcntl::OFlag;
use nix::mount::{MntFlags, MsFlags, mount, umount2};

use crate::container::launch::{Bind, LaunchSpec};
use crate::container::model::Propagation;
use crate::container::procmount;
use crate::inroot::{InRootError, Root, fd_path};

mod image_volume;
pub mod kernel_fs;

#[derive(Debug, thiserror::Error)]
pub enum MountError {
    /// A failed step, naming what it did to which path.
    #[error("cannot {what} {path}")]
    Step {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A path of the container that does not resolve inside its rootfs (a symlink loop, a
    /// magic link): the container does not start.
    #[error(transparent)]
    InRoot(#[from] InRootError),
}

type Result<T = ()> = std::result::Result<T, MountError>;

fn err<'a>(
    what: &'static str,
    path: &'a Path,
) -> impl FnOnce(nix::errno::Errno) -> MountError + 'a {
    move |e| MountError::Step {
        what,
        path: path.to_owned(),
        source: e.into(),
    }
}

fn ioerr<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> MountError + 'a {
    move |source| MountError::Step {
        what,
        path: path.to_owned(),
        source,
    }
}

fn mnt(
    src: Option<&str>,
    target: &Path,
    fstype: Option<&str>,
    flags: MsFlags,
    data: Option<&str>,
) -> Result {
    mount(src, target, fstype, flags, data).map_err(err("mount", target))
}

/// Mounts onto what `at` holds, `dest` (the path in the container) naming it in errors.
fn mount_on(
    src: Option<&Path>,
    at: &OwnedFd,
    dest: &Path,
    fstype: Option<&str>,
    flags: MsFlags,
    data: Option<&str>,
) -> Result {
    mount(src, &fd_path(at), fstype, flags, data).map_err(err("mount", dest))
}

/// The mount now at `dest` (resolved again in the root), remounted read-only.
fn remount_ro(root: &Root, dest: &Path) -> Result {
    let at = root.open_in(dest, OFlag::O_PATH)?;
    let f = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
    mount_on(None, &at, dest, None, f, None)
}

/// A node path the runtime chose (the overlay's dirs).
fn mkdir_p(p: &Path) -> Result {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(p)
        .map_err(ioerr("create", p))
}

/// Builds the rootfs at `spec.rootfs.target` and pivots into it.
pub fn setup(spec: &LaunchSpec) -> Result {
    // A Bidirectional mount must stay a peer of its source on the node. The copies made by
    // unshare are still peers: clone them now, before they become slaves below.
    let peers = spec
        .mounts
        .iter()
        .map(|b| match b.propagation {
            Propagation::Bidirectional => clone_tree(&b.source).map(Some),
            _ => Ok(None),
        })
        .collect::<Result<Vec<_>>>()?;
    // Nothing we mount from here on propagates back to the node (but under those clones).
    mnt(
        None,
        Path::new("/"),
        None,
        MsFlags::MS_REC | MsFlags::MS_SLAVE,
        None,
    )?;
    let r = &spec.rootfs;
    for d in [&r.upper, &r.work, &r.target] {
        mkdir_p(d)?;
    }
    // Top first; the mount points layer, when there is one, last (lowest).
    let lower: Vec<String> = r
        .layers
        .iter()
        .rev()
        .chain(r.mountpoints.iter().filter(|p| p.is_dir()))
        .map(|p| p.display().to_string())
        .collect();
    let opts = format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.join(":"),
        r.upper.display(),
        r.work.display()
    );
    mnt(
        Some("overlay"),
        &r.target,
        Some("overlay"),
        MsFlags::empty(),
        Some(&opts),
    )?;
    // Opened after the overlay is mounted: the fd is its root.
    let root = Root::open(&r.target)?;
    kernel_fs::proc_and_dev(spec, &root)?;
    for d in &spec.devices {
        kernel_fs::device(&root, d)?;
    }
    kernel_fs::sys(spec, &root)?;
    for t in &spec.tmpfs {
        tmpfs(&root, t)?;
    }
    for (b, peer) in spec.mounts.iter().zip(peers) {
        bind(&root, b, peer)?;
    }
    // Beside the rootfs' mount point, in this mount namespace only.
    let staging = r.target.with_file_name("image-volumes");
    for (n, v) in spec.image_volumes.iter().enumerate() {
        image_volume::mount(&root, v, &staging.join(n.to_string()))?;
    }
    for p in &spec.masked_paths {
        mask(&root, Path::new(p))?;
    }
    for p in &spec.readonly_paths {
        readonly(&root, Path::new(p))?;
    }
    root.mkdir_all(Path::new(&spec.cwd))?;
    drop(root);
    pivot(&r.target)?;
    if r.readonly {
        let flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
        mnt(None, Path::new("/"), None, flags, None)?;
    }
    Ok(())
}

fn tmpfs(root: &Root, t: &crate::container::launch::Tmpfs) -> Result {
    let dest = Path::new(&t.destination);
    let at = root.mkdir_all(dest)?;
    not_under_proc(root, &at, dest)?;
    let mut flags = MsFlags::empty();
    for (on, flag) in [
        (t.nosuid, MsFlags::MS_NOSUID),
        (t.nodev, MsFlags::MS_NODEV),
        (t.noexec, MsFlags::MS_NOEXEC),
        (t.readonly, MsFlags::MS_RDONLY),
    ] {
        if on {
            flags |= flag;
        }
    }
    let data = (!t.data.is_empty()).then_some(t.data.as_str());
    let src = Path::new("tmpfs");
    mount_on(Some(src), &at, dest, Some("tmpfs"), flags, data)
}

/// A detached copy of the mount tree at `source` (`open_tree(OPEN_TREE_CLONE|AT_RECURSIVE)`):
/// like a bind mount, each copy is in the peer group of the mount it copies.
fn clone_tree(source: &Path) -> Result<OwnedFd> {
    const OPEN_TREE_CLONE: libc::c_uint = 1;
    const AT_RECURSIVE: libc::c_uint = 0x8000;
    let path = CString::new(source.as_os_str().as_bytes()).map_err(|e| MountError::Step {
        what: "clone the mount tree at",
        path: source.to_owned(),
        source: io::Error::new(io::ErrorKind::InvalidInput, e),
    })?;
    let flags = OPEN_TREE_CLONE | AT_RECURSIVE | libc::O_CLOEXEC as libc::c_uint;
    // SAFETY: open_tree reads a NUL-terminated path; the fd it returns is ours.
    let fd = unsafe { libc::syscall(libc::SYS_open_tree, libc::AT_FDCWD, path.as_ptr(), flags) };
    if fd < 0 {
        return Err(ioerr("clone the mount tree at", source)(
            io::Error::last_os_error(),
        ));
    }
    // SAFETY: a new fd, owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Makes the mount at `at` and every mount below it read-only (`mount_setattr` with
/// `AT_RECURSIVE`, Linux 5.12): a plain read-only bind leaves the mounts below writable.
fn readonly_tree(at: &OwnedFd, dest: &Path) -> Result {
    if let Err(e) = kernel_fs::set_readonly_recursively(at.as_fd()) {
        return Err(ioerr("make read-only with the mounts below", dest)(e));
    }
    Ok(())
}

/// Attaches the detached tree `tree` onto what `at` holds (`move_mount` from fd to fd); the
/// mounts keep their peers.
fn attach_tree(tree: OwnedFd, at: &OwnedFd, dest: &Path) -> Result {
    const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 4;
    const MOVE_MOUNT_T_EMPTY_PATH: libc::c_uint = 0x40;
    let empty = c"";
    // SAFETY: both paths are the same NUL-terminated empty string; `tree` and `at` are valid
    // fds for the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree.as_raw_fd(),
            empty.as_ptr(),
            at.as_raw_fd(),
            empty.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH,
        )
    };
    if rc < 0 {
        return Err(ioerr("mount", dest)(io::Error::last_os_error()));
    }
    Ok(())
}

/// Refuses a mount of the request whose destination resolved (through the image's symlinks)
/// to a place under /proc that is not allowed there (see [`procmount`]).
fn not_under_proc(root: &Root, at: &OwnedFd, dest: &Path) -> Result {
    let node = fs::read_link(fd_path(at)).map_err(ioerr("resolve", dest))?;
    let inside = Path::new("/").join(node.strip_prefix(root.path()).unwrap_or(&node));
    if procmount::allowed(&inside.to_string_lossy()) {
        return Ok(());
    }
    Err(MountError::Step {
        what: "mount under /proc at",
        path: dest.to_owned(),
        source: io::ErrorKind::PermissionDenied.into(),
    })
}

fn bind(root: &Root, b: &Bind, peer: Option<OwnedFd>) -> Result {
    let dest = Path::new(&b.destination);
    let is_dir = fs::metadata(&b.source)
        .map_err(ioerr("stat", &b.source))?
        .is_dir();
    let at = if is_dir {
        root.mkdir_all(dest)?
    } else {
        root.create_file(dest)?
    };
    not_under_proc(root, &at, dest)?;
    match peer {
        Some(tree) => attach_tree(tree, &at, dest)?,
        None => {
            let f = MsFlags::MS_BIND | MsFlags::MS_REC;
            mount_on(Some(&b.source), &at, dest, None, f, None)?
        }
    }
    if b.readonly {
        remount_ro(root, dest)?;
    }
    if b.recursive_readonly {
        let at = root.open_in(dest, OFlag::O_PATH)?;
        readonly_tree(&at, dest)?;
    }
    let prop = match b.propagation {
        Propagation::Private => MsFlags::MS_PRIVATE,
        Propagation::HostToContainer => MsFlags::MS_SLAVE,
        Propagation::Bidirectional => MsFlags::MS_SHARED,
    };
    let at = root.open_in(dest, OFlag::O_PATH)?;
    mount_on(None, &at, dest, None, prop | MsFlags::MS_REC, None)
}

fn mask(root: &Root, p: &Path) -> Result {
    let Some(at) = root.lookup(p)? else {
        return Ok(());
    };
    let st = nix::sys::stat::fstat(&at).map_err(err("stat", p))?;
    if st.st_mode & libc::S_IFMT == libc::S_IFDIR {
        let src = Path::new("tmpfs");
        let f = MsFlags::MS_RDONLY;
        mount_on(Some(src), &at, p, Some("tmpfs"), f, Some("size=0"))
    } else {
        let src = Path::new("/dev/null");
        mount_on(Some(src), &at, p, None, MsFlags::MS_BIND, None)
    }
}

fn readonly(root: &Root, p: &Path) -> Result {
    let Some(at) = root.lookup(p)? else {
        return Ok(());
    };
    let f = MsFlags::MS_BIND | MsFlags::MS_REC;
    mount_on(Some(&fd_path(&at)), &at, p, None, f, None)?;
    remount_ro(root, p)
}

fn pivot(root: &Path) -> Result {
    std::env::set_current_dir(root).map_err(ioerr("chdir to", root))?;
    nix::unistd::pivot_root(".", ".").map_err(err("pivot_root to", root))?;
    umount2(".", MntFlags::MNT_DETACH).map_err(err("detach the old root under", root))?;
    std::env::set_current_dir("/").map_err(ioerr("chdir to", Path::new("/")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_image_symlink_cannot_lead_a_mount_under_proc() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path();
        fs::create_dir_all(dir.join("proc/sys")).unwrap();
        fs::write(dir.join("proc/cpuinfo"), "").unwrap();
        fs::create_dir_all(dir.join("srv/proc/sys")).unwrap();
        std::os::unix::fs::symlink("/proc", dir.join("data")).unwrap();
        std::os::unix::fs::symlink("proc/sys", dir.join("rel")).unwrap();
        let root = Root::open(dir).unwrap();
        for dest in ["/data/sys", "/rel", "/data", "/proc/sys"] {
            let at = root.open_in(Path::new(dest), OFlag::O_PATH).unwrap();
            assert!(
                not_under_proc(&root, &at, Path::new(dest)).is_err(),
                "{dest}"
            );
        }
        for dest in ["/data/cpuinfo", "/srv/proc/sys"] {
            let at = root.open_in(Path::new(dest), OFlag::O_PATH).unwrap();
            assert!(
                not_under_proc(&root, &at, Path::new(dest)).is_ok(),
                "{dest}"
            );
        }
    }
}
