//! The container's filesystem, built by its init inside its own mount namespace: the overlay
//! rootfs, /proc, /dev, /sys, the bind mounts, masked and read-only paths, then pivot_root.
//! Everything is mounted in a namespace that dies with the container: nothing can leak into
//! the node's mount table, but what is mounted under a Bidirectional mount, a peer of its
//! source on the node.

use std::ffi::CString;
use std::fs;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sys::stat::{Mode, SFlag, makedev, mknod};

use crate::container::devices::{DevType, DeviceNode};
use crate::container::launch::{Bind, LaunchSpec};
use crate::container::model::Propagation;

/// A failed step, naming what it did to which path.
#[derive(Debug, thiserror::Error)]
#[error("cannot {what} {path}")]
pub struct MountError {
    pub what: &'static str,
    pub path: PathBuf,
    #[source]
    pub source: io::Error,
}

type Result<T = ()> = std::result::Result<T, MountError>;

fn err<'a>(
    what: &'static str,
    path: &'a Path,
) -> impl FnOnce(nix::errno::Errno) -> MountError + 'a {
    move |e| MountError {
        what,
        path: path.to_owned(),
        source: e.into(),
    }
}

fn ioerr<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> MountError + 'a {
    move |source| MountError {
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

fn mkdir_p(p: &Path) -> Result {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(p)
        .map_err(ioerr("create", p))
}

/// `dest` (an absolute path in the container) resolved inside `root`: symlinks are followed
/// as if `root` were `/`, so that no path can lead out of the rootfs.
pub fn resolve_in(root: &Path, dest: &str) -> PathBuf {
    let mut todo: Vec<String> = comps(dest);
    todo.reverse();
    let mut cur = PathBuf::new();
    let mut hops = 0;
    while let Some(c) = todo.pop() {
        match c.as_str() {
            "." => continue,
            ".." => {
                cur.pop();
                continue;
            }
            _ => {}
        }
        let next = cur.join(&c);
        match fs::read_link(root.join(&next)) {
            Ok(target) if hops < 40 => {
                hops += 1;
                let t = target.to_string_lossy().into_owned();
                if t.starts_with('/') {
                    cur = PathBuf::new();
                }
                let mut more = comps(&t);
                more.reverse();
                todo.extend(more);
            }
            _ => cur = next,
        }
    }
    root.join(cur)
}

fn comps(p: &str) -> Vec<String> {
    Path::new(p)
        .components()
        .filter_map(|c| match c {
            Component::Normal(s) => Some(s.to_string_lossy().into_owned()),
            Component::ParentDir => Some("..".into()),
            _ => None,
        })
        .collect()
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
    let root = r.target.as_path();
    mnt(
        Some("overlay"),
        root,
        Some("overlay"),
        MsFlags::empty(),
        Some(&opts),
    )?;
    proc_and_dev(spec, root)?;
    for d in &spec.devices {
        device(root, d)?;
    }
    sys(spec, root)?;
    for t in &spec.tmpfs {
        tmpfs(root, t)?;
    }
    for (b, peer) in spec.mounts.iter().zip(peers) {
        bind(root, b, peer)?;
    }
    for p in &spec.masked_paths {
        mask(root, p)?;
    }
    for p in &spec.readonly_paths {
        readonly(root, p)?;
    }
    mkdir_p(&resolve_in(root, &spec.cwd))?;
    pivot(root)?;
    if r.readonly {
        let flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
        mnt(None, Path::new("/"), None, flags, None)?;
    }
    Ok(())
}

fn proc_and_dev(spec: &LaunchSpec, root: &Path) -> Result {
    let nse = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    let proc_dir = root.join("proc");
    mkdir_p(&proc_dir)?;
    mnt(Some("proc"), &proc_dir, Some("proc"), nse, None)?;
    let dev = root.join("dev");
    mkdir_p(&dev)?;
    let flags = MsFlags::MS_NOSUID | MsFlags::MS_STRICTATIME;
    mnt(
        Some("tmpfs"),
        &dev,
        Some("tmpfs"),
        flags,
        Some("mode=755,size=65536k"),
    )?;
    for (name, major, minor) in [
        ("null", 1, 3),
        ("zero", 1, 5),
        ("full", 1, 7),
        ("random", 1, 8),
        ("urandom", 1, 9),
        ("tty", 5, 0),
    ] {
        let p = dev.join(name);
        let made = mknod(
            &p,
            SFlag::S_IFCHR,
            Mode::from_bits_truncate(0o666),
            makedev(major, minor),
        );
        match made {
            Ok(()) => {
                // mknod honours the umask; the nodes are world read-write.
                fs::set_permissions(&p, fs::Permissions::from_mode(0o666))
                    .map_err(ioerr("chmod", &p))?;
            }
            Err(_) => {
                fs::File::create(&p).map_err(ioerr("create", &p))?;
                let host = Path::new("/dev").join(name);
                mnt(host.to_str(), &p, None, MsFlags::MS_BIND, None)?;
            }
        }
    }
    for (link, target) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
        ("ptmx", "pts/ptmx"),
        ("core", "/proc/kcore"),
    ] {
        let p = dev.join(link);
        std::os::unix::fs::symlink(target, &p).map_err(ioerr("symlink", &p))?;
    }
    let pts = dev.join("pts");
    mkdir_p(&pts)?;
    let opts = "newinstance,ptmxmode=0666,mode=0620,gid=5";
    mnt(
        Some("devpts"),
        &pts,
        Some("devpts"),
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some(opts),
    )?;
    let shm = dev.join("shm");
    mkdir_p(&shm)?;
    match &spec.shm {
        Some(src) => mnt(src.to_str(), &shm, None, MsFlags::MS_BIND, None)?,
        None => mnt(
            Some("shm"),
            &shm,
            Some("tmpfs"),
            nse,
            Some("mode=1777,size=65536k"),
        )?,
    }
    let mq = dev.join("mqueue");
    mkdir_p(&mq)?;
    mnt(Some("mqueue"), &mq, Some("mqueue"), nse, None)
}

/// A granted (or, privileged, the node's) device node at its path in the container, with
/// the node device's mode and owner. One already there stays (as with runc): a standard node
/// of `/dev`, or what the image has at that path.
fn device(root: &Path, d: &DeviceNode) -> Result {
    let p = resolve_in(root, &d.path);
    if let Some(parent) = p.parent() {
        mkdir_p(parent)?;
    }
    let kind = match d.kind {
        DevType::Block => SFlag::S_IFBLK,
        _ => SFlag::S_IFCHR,
    };
    let dev = makedev(u64::from(d.major), u64::from(d.minor));
    match mknod(&p, kind, Mode::from_bits_truncate(d.mode), dev) {
        Ok(()) => {}
        Err(nix::errno::Errno::EEXIST) => return Ok(()),
        Err(e) => return Err(err("mknod", &p)(e)),
    }
    // mknod honours the umask.
    fs::set_permissions(&p, fs::Permissions::from_mode(d.mode)).map_err(ioerr("chmod", &p))?;
    std::os::unix::fs::chown(&p, Some(d.uid), Some(d.gid)).map_err(ioerr("chown", &p))
}

fn sys(spec: &LaunchSpec, root: &Path) -> Result {
    let sys = root.join("sys");
    mkdir_p(&sys)?;
    let mut flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    if !spec.privileged {
        flags |= MsFlags::MS_RDONLY;
    }
    if mount(Some("sysfs"), &sys, Some("sysfs"), flags, None::<&str>).is_err() {
        // Not allowed in this network namespace: the node's, read-only.
        mnt(
            Some("/sys"),
            &sys,
            None,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None,
        )?;
        remount_ro(&sys)?;
    }
    if spec.cgroups.is_empty() {
        return Ok(());
    }
    let cg = sys.join("fs/cgroup");
    let v2 = spec.cgroups.iter().any(|c| c.name.is_empty());
    if !v2 {
        let f = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
        mnt(Some("cgroup"), &cg, Some("tmpfs"), f, Some("mode=755"))?;
    }
    for c in &spec.cgroups {
        let at = if c.name.is_empty() {
            cg.clone()
        } else {
            cg.join(&c.name)
        };
        mkdir_p(&at)?;
        mnt(c.path.to_str(), &at, None, MsFlags::MS_BIND, None)?;
        if !spec.privileged {
            remount_ro(&at)?;
        }
    }
    if !v2 {
        let f = MsFlags::MS_REMOUNT
            | MsFlags::MS_RDONLY
            | MsFlags::MS_NOSUID
            | MsFlags::MS_NODEV
            | MsFlags::MS_NOEXEC;
        mnt(Some("cgroup"), &cg, Some("tmpfs"), f, Some("mode=755"))?;
    }
    Ok(())
}

fn tmpfs(root: &Path, t: &crate::container::launch::Tmpfs) -> Result {
    let at = resolve_in(root, &t.destination);
    mkdir_p(&at)?;
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
    mnt(Some("tmpfs"), &at, Some("tmpfs"), flags, data)
}

fn remount_ro(p: &Path) -> Result {
    let f = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
    mnt(None, p, None, f, None)
}

/// A detached copy of the mount tree at `source` (`open_tree(OPEN_TREE_CLONE|AT_RECURSIVE)`):
/// like a bind mount, each copy is in the peer group of the mount it copies.
fn clone_tree(source: &Path) -> Result<OwnedFd> {
    const OPEN_TREE_CLONE: libc::c_uint = 1;
    const AT_RECURSIVE: libc::c_uint = 0x8000;
    let path = CString::new(source.as_os_str().as_bytes()).map_err(|e| MountError {
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

/// Attaches the detached tree `tree` at `dest` (`move_mount`); the mounts keep their peers.
fn attach_tree(tree: OwnedFd, dest: &Path) -> Result {
    const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 4;
    let empty = c"";
    let to = CString::new(dest.as_os_str().as_bytes()).map_err(|e| MountError {
        what: "mount",
        path: dest.to_owned(),
        source: io::Error::new(io::ErrorKind::InvalidInput, e),
    })?;
    // SAFETY: both paths are NUL-terminated; `tree` is a valid fd for the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree.as_raw_fd(),
            empty.as_ptr(),
            libc::AT_FDCWD,
            to.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH,
        )
    };
    if rc < 0 {
        return Err(ioerr("mount", dest)(io::Error::last_os_error()));
    }
    Ok(())
}

fn bind(root: &Path, b: &Bind, peer: Option<OwnedFd>) -> Result {
    let dest = resolve_in(root, &b.destination);
    let is_dir = fs::metadata(&b.source)
        .map_err(ioerr("stat", &b.source))?
        .is_dir();
    if is_dir {
        mkdir_p(&dest)?;
    } else {
        if let Some(parent) = dest.parent() {
            mkdir_p(parent)?;
        }
        if !dest.exists() {
            fs::File::create(&dest).map_err(ioerr("create", &dest))?;
        }
    }
    match peer {
        Some(tree) => attach_tree(tree, &dest)?,
        None => mnt(
            b.source.to_str(),
            &dest,
            None,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None,
        )?,
    }
    if b.readonly {
        remount_ro(&dest)?;
    }
    let prop = match b.propagation {
        Propagation::Private => MsFlags::MS_PRIVATE,
        Propagation::HostToContainer => MsFlags::MS_SLAVE,
        Propagation::Bidirectional => MsFlags::MS_SHARED,
    };
    mnt(None, &dest, None, prop | MsFlags::MS_REC, None)
}

fn mask(root: &Path, p: &str) -> Result {
    let at = resolve_in(root, p);
    match fs::metadata(&at) {
        Err(_) => Ok(()),
        Ok(m) if m.is_dir() => mnt(
            Some("tmpfs"),
            &at,
            Some("tmpfs"),
            MsFlags::MS_RDONLY,
            Some("size=0"),
        ),
        Ok(_) => mnt(Some("/dev/null"), &at, None, MsFlags::MS_BIND, None),
    }
}

fn readonly(root: &Path, p: &str) -> Result {
    let at = resolve_in(root, p);
    if !at.exists() {
        return Ok(());
    }
    let s = at.to_str();
    mnt(s, &at, None, MsFlags::MS_BIND | MsFlags::MS_REC, None)?;
    remount_ro(&at)
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
    fn paths_cannot_leave_the_root() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path();
        fs::create_dir_all(root.join("etc")).unwrap();
        std::os::unix::fs::symlink("/etc", root.join("abs")).unwrap();
        std::os::unix::fs::symlink("../../..", root.join("etc/up")).unwrap();
        assert_eq!(resolve_in(root, "/abs/passwd"), root.join("etc/passwd"));
        assert_eq!(resolve_in(root, "/etc/up/x"), root.join("x"));
        assert_eq!(resolve_in(root, "/../../tmp"), root.join("tmp"));
        assert_eq!(resolve_in(root, "/new/dir"), root.join("new/dir"));
        std::os::unix::fs::symlink("loop", root.join("loop")).unwrap();
        let _ = resolve_in(root, "/loop/x"); // terminates
    }
}
