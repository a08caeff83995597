//! The kernel's filesystems in the container: /proc, a fresh /dev (its nodes, links, devpts,
//! shm, mqueue) and /sys with the container's cgroups. Their mount points are resolved in the
//! rootfs like any other path; what goes inside the new /dev is made under its fd.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::Path;

use nix::fcntl::AtFlags;
use nix::fcntl::{OFlag, openat};
use nix::mount::MsFlags;
use nix::sys::stat::{FchmodatFlags, Mode, SFlag, fchmodat, makedev, mkdirat, mknodat};
use nix::unistd::{Gid, Uid, fchownat};

use super::{MountError, Result, err, mount_on, remount_ro};
use crate::container::devices::{DevType, DeviceNode};
use crate::container::launch::LaunchSpec;
use crate::inroot::Root;

/// `name`, a new directory in the fresh tmpfs `dir`, opened `O_PATH`.
fn subdir(dir: &OwnedFd, name: &str, shown: &Path) -> Result<OwnedFd> {
    mkdirat(dir, name, Mode::from_bits_truncate(0o755)).map_err(err("create", shown))?;
    let f = OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    openat(dir, name, f, Mode::empty()).map_err(err("open", shown))
}

pub(super) fn proc_and_dev(spec: &LaunchSpec, root: &Root) -> Result {
    let nse = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    let proc_dir = Path::new("/proc");
    let at = root.mkdir_all(proc_dir)?;
    mount_on(
        Some(Path::new("proc")),
        &at,
        proc_dir,
        Some("proc"),
        nse,
        None,
    )?;
    let dev_dir = Path::new("/dev");
    let at = root.mkdir_all(dev_dir)?;
    let flags = MsFlags::MS_NOSUID | MsFlags::MS_STRICTATIME;
    let data = Some("mode=755,size=65536k");
    mount_on(
        Some(Path::new("tmpfs")),
        &at,
        dev_dir,
        Some("tmpfs"),
        flags,
        data,
    )?;
    // The tmpfs just mounted: nothing in it but what we make.
    let dev = root.open_in(dev_dir, OFlag::O_PATH | OFlag::O_DIRECTORY)?;
    for (name, major, minor) in [
        ("null", 1, 3),
        ("zero", 1, 5),
        ("full", 1, 7),
        ("random", 1, 8),
        ("urandom", 1, 9),
        ("tty", 5, 0),
    ] {
        let shown = dev_dir.join(name);
        let mode = Mode::from_bits_truncate(0o666);
        match mknodat(&dev, name, SFlag::S_IFCHR, mode, makedev(major, minor)) {
            Ok(()) => {
                // mknod honours the umask; the nodes are world read-write.
                fchmodat(&dev, name, mode, FchmodatFlags::NoFollowSymlink)
                    .or_else(|_| fchmodat(&dev, name, mode, FchmodatFlags::FollowSymlink))
                    .map_err(err("chmod", &shown))?;
            }
            Err(_) => {
                let f = OFlag::O_CREAT
                    | OFlag::O_EXCL
                    | OFlag::O_WRONLY
                    | OFlag::O_NOFOLLOW
                    | OFlag::O_CLOEXEC;
                let at = openat(&dev, name, f, mode).map_err(err("create", &shown))?;
                let host = Path::new("/dev").join(name);
                mount_on(Some(&host), &at, &shown, None, MsFlags::MS_BIND, None)?;
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
        nix::unistd::symlinkat(target, &dev, link).map_err(err("symlink", &dev_dir.join(link)))?;
    }
    let shown = dev_dir.join("pts");
    let pts = subdir(&dev, "pts", &shown)?;
    let opts = Some("newinstance,ptmxmode=0666,mode=0620,gid=5");
    let f = MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC;
    mount_on(
        Some(Path::new("devpts")),
        &pts,
        &shown,
        Some("devpts"),
        f,
        opts,
    )?;
    let shown = dev_dir.join("shm");
    let shm = subdir(&dev, "shm", &shown)?;
    match &spec.shm {
        Some(src) => mount_on(Some(src), &shm, &shown, None, MsFlags::MS_BIND, None)?,
        None => {
            let data = Some("mode=1777,size=65536k");
            mount_on(
                Some(Path::new("shm")),
                &shm,
                &shown,
                Some("tmpfs"),
                nse,
                data,
            )?
        }
    }
    let shown = dev_dir.join("mqueue");
    let mq = subdir(&dev, "mqueue", &shown)?;
    mount_on(
        Some(Path::new("mqueue")),
        &mq,
        &shown,
        Some("mqueue"),
        nse,
        None,
    )
}

/// A granted (or, privileged, the node's) device node at its path in the container, with
/// the node device's mode and owner, made under the fd of its parent (resolved in the root).
/// One already there stays (as with runc): a standard node of `/dev`, or what the image has
/// at that path.
pub(super) fn device(root: &Root, d: &DeviceNode) -> Result {
    let p = Path::new(&d.path);
    let (Some(parent), Some(name)) = (p.parent(), p.file_name()) else {
        return Err(MountError::Step {
            what: "make the device",
            path: p.to_owned(),
            source: std::io::ErrorKind::InvalidInput.into(),
        });
    };
    let dir = root.mkdir_all(parent)?;
    let kind = match d.kind {
        DevType::Block => SFlag::S_IFBLK,
        _ => SFlag::S_IFCHR,
    };
    let mode = Mode::from_bits_truncate(d.mode);
    let dev = makedev(u64::from(d.major), u64::from(d.minor));
    match mknodat(&dir, name, kind, mode, dev) {
        Ok(()) => {}
        Err(nix::errno::Errno::EEXIST) => return Ok(()),
        Err(e) => return Err(err("mknod", p)(e)),
    }
    // mknod honours the umask. The node is the one just made: nothing of the container runs
    // yet that could have swapped it.
    fchmodat(&dir, name, mode, FchmodatFlags::FollowSymlink).map_err(err("chmod", p))?;
    let (uid, gid) = (Uid::from_raw(d.uid), Gid::from_raw(d.gid));
    fchownat(
        &dir,
        name,
        Some(uid),
        Some(gid),
        AtFlags::AT_SYMLINK_NOFOLLOW,
    )
    .map_err(err("chown", p))
}

pub(super) fn sys(spec: &LaunchSpec, root: &Root) -> Result {
    let sys_dir = Path::new("/sys");
    let at = root.mkdir_all(sys_dir)?;
    let mut flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    if !spec.privileged {
        flags |= MsFlags::MS_RDONLY;
    }
    let sysfs = Path::new("sysfs");
    if mount_on(Some(sysfs), &at, sys_dir, Some("sysfs"), flags, None).is_err() {
        // Not allowed in this network namespace: the node's, read-only.
        let f = MsFlags::MS_BIND | MsFlags::MS_REC;
        mount_on(Some(Path::new("/sys")), &at, sys_dir, None, f, None)?;
        remount_ro(root, sys_dir)?;
    }
    if spec.cgroups.is_empty() {
        return Ok(());
    }
    let cg = Path::new("/sys/fs/cgroup");
    let v2 = spec.cgroups.iter().any(|c| c.name.is_empty());
    let nse = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    let tmpfs = Some(Path::new("cgroup"));
    if !v2 {
        let at = root.open_in(cg, OFlag::O_PATH | OFlag::O_DIRECTORY)?;
        mount_on(tmpfs, &at, cg, Some("tmpfs"), nse, Some("mode=755"))?;
    }
    for c in &spec.cgroups {
        let dest = cg.join(&c.name);
        let at = root.mkdir_all(&dest)?;
        mount_on(Some(&c.path), &at, &dest, None, MsFlags::MS_BIND, None)?;
        if !spec.privileged {
            remount_ro(root, &dest)?;
        }
    }
    if !v2 {
        let at = root.open_in(cg, OFlag::O_PATH | OFlag::O_DIRECTORY)?;
        let f = MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | nse;
        mount_on(tmpfs, &at, cg, Some("tmpfs"), f, Some("mode=755"))?;
    }
    Ok(())
}

const MOUNT_ATTR_RDONLY: u64 = 0x1;
const AT_RECURSIVE: libc::c_uint = 0x8000;

/// `mount_setattr(fd, "", AT_EMPTY_PATH | flags, {attr_set})`.
fn mount_setattr(fd: BorrowedFd<'_>, flags: libc::c_uint, attr_set: u64) -> std::io::Result<()> {
    let attr = libc::mount_attr {
        attr_set,
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    // SAFETY: the path is a NUL-terminated empty string, `attr` lives across the call and the
    // size passed is its own.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            fd.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH as libc::c_uint | flags,
            &attr as *const libc::mount_attr,
            std::mem::size_of::<libc::mount_attr>(),
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Makes the mount `fd` holds and every mount below it read-only.
pub fn set_readonly_recursively(fd: BorrowedFd<'_>) -> std::io::Result<()> {
    mount_setattr(fd, AT_RECURSIVE, MOUNT_ATTR_RDONLY)
}

/// Whether the kernel has `mount_setattr` (Linux 5.12), which recursive read-only mounts
/// need: a call on an fd that is no mount fails with anything but ENOSYS.
pub fn recursive_readonly_supported() -> bool {
    let Ok(f) = std::fs::File::open("/") else {
        return false;
    };
    // No flag and no attribute: nothing to change, only whether the call exists.
    let e = mount_setattr(f.as_fd(), 0, 0).err();
    e.and_then(|e| e.raw_os_error()) != Some(libc::ENOSYS)
}
