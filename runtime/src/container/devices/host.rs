//! The node's devices: the ones a CRI request grants (`host_path` → `container_path`), and
//! all of `/dev` for a privileged container. As containerd does: a granted host path is
//! resolved through symlinks; a directory grants every device node below it, each at the
//! same relative path under `container_path`; the walk skips `pts`, `shm`, `fd`, `mqueue`,
//! `.lxc`, `.lxd-mounts`, `.udev`, the console, symlinks and whatever is no device node.

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use super::{DevType, DeviceError, DeviceNode};

const SKIPPED_DIRS: &[&str] = &["pts", "shm", "fd", "mqueue", ".lxc", ".lxd-mounts", ".udev"];

/// The node for a device whose metadata is `meta`, at `path` in the container; `None`
/// when it is no block or character device.
fn node(path: String, meta: &std::fs::Metadata) -> Option<DeviceNode> {
    let ft = meta.file_type();
    let kind = if ft.is_block_device() {
        DevType::Block
    } else if ft.is_char_device() {
        DevType::Char
    } else {
        return None;
    };
    let rdev = meta.rdev();
    Some(DeviceNode {
        path,
        kind,
        major: nix::sys::stat::major(rdev) as u32,
        minor: nix::sys::stat::minor(rdev) as u32,
        mode: meta.mode() & 0o7777,
        uid: meta.uid(),
        gid: meta.gid(),
    })
}

/// The devices `host_path` grants at `container_path`.
pub fn granted(host_path: &str, container_path: &str) -> Result<Vec<DeviceNode>, DeviceError> {
    let missing = |source| DeviceError::Missing {
        path: host_path.to_owned(),
        source,
    };
    let resolved = std::fs::canonicalize(host_path).map_err(missing)?;
    let meta = std::fs::metadata(&resolved).map_err(missing)?;
    if meta.is_dir() {
        let mut out = Vec::new();
        walk(&resolved, container_path, &mut out)?;
        return Ok(out);
    }
    node(container_path.to_owned(), &meta)
        .map(|n| vec![n])
        .ok_or_else(|| DeviceError::NotADevice {
            path: host_path.to_owned(),
        })
}

/// Every device of the node's `/dev`, at the same path (a privileged container's).
pub fn all() -> Result<Vec<DeviceNode>, DeviceError> {
    let mut out = Vec::new();
    walk(Path::new("/dev"), "/dev", &mut out)?;
    Ok(out)
}

fn walk(dir: &Path, container_dir: &str, out: &mut Vec<DeviceNode>) -> Result<(), DeviceError> {
    let err = |source| DeviceError::Walk {
        path: dir.to_owned(),
        source,
    };
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .map_err(err)?
        .collect::<Result<_, _>>()
        .map_err(err)?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let name = e.file_name().to_string_lossy().into_owned();
        let path = e.path();
        // lstat: a symlink is skipped, not followed.
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue; // gone meanwhile
        };
        let inside = format!("{}/{name}", container_dir.trim_end_matches('/'));
        if meta.is_dir() {
            if !SKIPPED_DIRS.contains(&name.as_str()) {
                walk(&path, &inside, out)?;
            }
        } else if name != "console"
            && let Some(n) = node(inside, &meta)
        {
            out.push(n);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_device_a_directory_of_them_and_what_is_refused() {
        let t = tempfile::tempdir().unwrap();
        let null = granted("/dev/null", "/dev/granted").unwrap();
        assert_eq!(
            (
                null[0].kind,
                null[0].major,
                null[0].minor,
                null[0].path.as_str()
            ),
            (DevType::Char, 1, 3, "/dev/granted")
        );
        // A symlink to a device is resolved.
        let link = t.path().join("link");
        std::os::unix::fs::symlink("/dev/zero", &link).unwrap();
        let zero = granted(link.to_str().unwrap(), "/z").unwrap();
        assert_eq!((zero[0].major, zero[0].minor), (1, 5));
        // A directory: its device nodes below, the skipped ones left out.
        let dir = t.path().join("devs");
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        std::fs::create_dir_all(dir.join("pts")).unwrap();
        let mode = nix::sys::stat::Mode::from_bits_truncate(0o640);
        let chr = nix::sys::stat::SFlag::S_IFCHR;
        let dev = nix::sys::stat::makedev(1, 3);
        nix::sys::stat::mknod(&dir.join("sub/null"), chr, mode, dev).unwrap();
        nix::sys::stat::mknod(&dir.join("pts/0"), chr, mode, dev).unwrap();
        std::os::unix::fs::symlink("/dev/zero", dir.join("zero")).unwrap();
        std::fs::write(dir.join("plain"), "").unwrap();
        let found = granted(dir.to_str().unwrap(), "/d/").unwrap();
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(
            (found[0].path.as_str(), found[0].minor, found[0].mode),
            ("/d/sub/null", 3, 0o640)
        );
        let file = dir.join("plain");
        assert!(matches!(
            granted(file.to_str().unwrap(), "/x"),
            Err(DeviceError::NotADevice { .. })
        ));
        assert!(matches!(
            granted("/dev/no-such-device", "/x"),
            Err(DeviceError::Missing { .. })
        ));
        // The node's /dev has null, and neither its console nor anything of pts.
        let all = all().unwrap();
        assert!(all.iter().any(|n| n.path == "/dev/null"));
        assert!(
            all.iter()
                .all(|n| n.path != "/dev/console" && !n.path.starts_with("/dev/pts/"))
        );
    }
}
