//! Unpacks one layer tar into a directory that serves as an overlayfs lower dir.
//!
//! Whiteouts become what overlayfs understands: `.wh.<name>` a 0/0 character device named
//! `<name>`, `.wh..wh..opq` the `trusted.overlay.opaque=y` xattr on its directory. No entry may
//! write outside the layer dir: names with `..` are refused (a leading `/` is dropped), parents
//! are resolved component by component and a symlinked parent is refused, the final component
//! is replaced (never followed), and hardlink targets must already be in this layer.

#[cfg(test)]
mod tests;
mod xattr;

use std::ffi::OsStr;
use std::fs::{self, DirBuilder, OpenOptions};
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::sys::stat::{Mode, SFlag, UtimensatFlags, makedev, mknod, utimensat};
use nix::sys::time::TimeSpec;
use tar::EntryType;

#[cfg(test)]
pub use xattr::lget;

/// The xattr overlayfs reads to hide a lower directory's content.
pub const OPAQUE_XATTR: &str = "trusted.overlay.opaque";
const WHITEOUT_PREFIX: &[u8] = b".wh.";
const OPAQUE_MARKER: &[u8] = b".wh..wh..opq";

#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    #[error("cannot read the layer tar")]
    Read(#[source] io::Error),
    #[error("entry {entry:?} refused: {reason}")]
    Refused { entry: String, reason: &'static str },
    #[error("entry {entry:?}: cannot {action}")]
    Apply {
        entry: String,
        action: &'static str,
        #[source]
        source: io::Error,
    },
}

fn refused(entry: &str, reason: &'static str) -> UnpackError {
    UnpackError::Refused {
        entry: entry.to_owned(),
        reason,
    }
}

fn apply(entry: &str, action: &'static str) -> impl FnOnce(io::Error) -> UnpackError {
    let entry = entry.to_owned();
    move |source| UnpackError::Apply {
        entry,
        action,
        source,
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UnpackStats {
    pub entries: u64,
    /// Bytes of regular-file content written.
    pub bytes: u64,
}

/// Unpacks the (uncompressed) tar stream `reader` into the existing directory `root`.
pub fn unpack(reader: impl Read, root: &Path) -> Result<UnpackStats, UnpackError> {
    let mut archive = tar::Archive::new(reader);
    let mut u = Unpacker {
        root,
        dirs: Vec::new(),
        stats: UnpackStats::default(),
    };
    for entry in archive.entries().map_err(UnpackError::Read)? {
        u.entry(entry.map_err(UnpackError::Read)?)?;
    }
    // Directory times last: creating entries inside a directory changes its mtime.
    for (path, name, mtime) in u.dirs.iter().rev() {
        set_mtime(path, *mtime).map_err(apply(name, "set the modification time"))?;
    }
    Ok(u.stats)
}

/// The components of an entry name, leading `/` and `.` components dropped; `..` refused.
fn components(raw: &[u8]) -> Result<Vec<&[u8]>, &'static str> {
    let mut out = Vec::new();
    for c in raw.split(|&b| b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => return Err("a path component is \"..\""),
            c => out.push(c),
        }
    }
    Ok(out)
}

struct Unpacker<'a> {
    root: &'a Path,
    dirs: Vec<(PathBuf, String, u64)>,
    stats: UnpackStats,
}

struct Meta {
    mode: u32,
    uid: u64,
    gid: u64,
    mtime: u64,
    xattrs: Vec<(String, Vec<u8>)>,
}

impl Unpacker<'_> {
    fn entry<R: Read>(&mut self, mut e: tar::Entry<'_, R>) -> Result<(), UnpackError> {
        let raw = e.path_bytes().into_owned();
        let name = String::from_utf8_lossy(&raw).into_owned();
        let comps = components(&raw).map_err(|r| refused(&name, r))?;
        let Some((last, parents)) = comps.split_last() else {
            return Ok(()); // the layer root itself
        };
        self.stats.entries += 1;
        if let Some(hidden) = last.strip_prefix(WHITEOUT_PREFIX) {
            let dir = self.parents(parents, &name)?;
            return whiteout(&dir, last, hidden, &name);
        }
        let dir = self.parents(parents, &name)?;
        let path = dir.join(OsStr::from_bytes(last));
        let header = e.header().clone();
        let kind = header.entry_type();
        let meta = Meta {
            mode: header.mode().map_err(UnpackError::Read)? & 0o7777,
            uid: header.uid().map_err(UnpackError::Read)?,
            gid: header.gid().map_err(UnpackError::Read)?,
            mtime: header.mtime().map_err(UnpackError::Read)?,
            xattrs: xattrs(&mut e),
        };
        match kind {
            EntryType::Regular | EntryType::Continuous => {
                replace(&path, false, &name)?;
                let mut f = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .custom_flags(libc::O_NOFOLLOW)
                    .open(&path)
                    .map_err(apply(&name, "create the file"))?;
                self.stats.bytes += io::copy(&mut e, &mut f).map_err(UnpackError::Read)?;
                set_meta(&path, &meta, true, &name)?;
                set_mtime(&path, meta.mtime).map_err(apply(&name, "set the modification time"))
            }
            EntryType::Directory => {
                if !replace(&path, true, &name)? {
                    DirBuilder::new()
                        .mode(0o700)
                        .create(&path)
                        .map_err(apply(&name, "create the directory"))?;
                }
                set_meta(&path, &meta, true, &name)?;
                self.dirs.push((path, name, meta.mtime));
                Ok(())
            }
            EntryType::Symlink => {
                let target = e
                    .link_name_bytes()
                    .ok_or_else(|| refused(&name, "a symlink without a target"))?
                    .into_owned();
                replace(&path, false, &name)?;
                std::os::unix::fs::symlink(OsStr::from_bytes(&target), &path)
                    .map_err(apply(&name, "create the symlink"))?;
                set_meta(&path, &meta, false, &name)?;
                set_mtime(&path, meta.mtime).map_err(apply(&name, "set the modification time"))
            }
            EntryType::Link => {
                let target = e
                    .link_name_bytes()
                    .ok_or_else(|| refused(&name, "a hardlink without a target"))?
                    .into_owned();
                let target = self.existing(&target, &name)?;
                replace(&path, false, &name)?;
                fs::hard_link(&target, &path).map_err(apply(&name, "create the hardlink"))
            }
            EntryType::Char | EntryType::Block | EntryType::Fifo => {
                let sflag = match kind {
                    EntryType::Char => SFlag::S_IFCHR,
                    EntryType::Block => SFlag::S_IFBLK,
                    _ => SFlag::S_IFIFO,
                };
                let dev = if kind == EntryType::Fifo {
                    0 // writers may leave a fifo's device fields blank
                } else {
                    let major = header.device_major().map_err(UnpackError::Read)?;
                    let minor = header.device_minor().map_err(UnpackError::Read)?;
                    makedev(major.unwrap_or(0).into(), minor.unwrap_or(0).into())
                };
                replace(&path, false, &name)?;
                mknod(&path, sflag, Mode::from_bits_truncate(0o600), dev)
                    .map_err(|e| apply(&name, "create the device node")(e.into()))?;
                set_meta(&path, &meta, true, &name)?;
                set_mtime(&path, meta.mtime).map_err(apply(&name, "set the modification time"))
            }
            other => {
                tracing::debug!(entry = %name, kind = ?other, "skipping tar entry");
                Ok(())
            }
        }
    }

    /// The directory that holds an entry: each parent is created if missing (mode 0755, as
    /// tar does); a parent that is a symlink or not a directory is refused.
    fn parents(&self, parents: &[&[u8]], name: &str) -> Result<PathBuf, UnpackError> {
        let mut p = self.root.to_path_buf();
        for c in parents {
            p.push(OsStr::from_bytes(c));
            match fs::symlink_metadata(&p) {
                Ok(m) if m.file_type().is_symlink() => {
                    return Err(refused(name, "a parent directory is a symlink"));
                }
                Ok(m) if m.is_dir() => {}
                Ok(_) => return Err(refused(name, "a parent is not a directory")),
                Err(e) if e.kind() == io::ErrorKind::NotFound => DirBuilder::new()
                    .mode(0o755)
                    .create(&p)
                    .map_err(apply(name, "create a parent directory"))?,
                Err(e) => return Err(apply(name, "inspect a parent directory")(e)),
            }
        }
        Ok(p)
    }

    /// A hardlink target: an existing non-directory of this layer, reached without symlinks.
    fn existing(&self, target: &[u8], name: &str) -> Result<PathBuf, UnpackError> {
        let comps = components(target).map_err(|r| refused(name, r))?;
        let Some((last, parents)) = comps.split_last() else {
            return Err(refused(name, "a hardlink to the layer root"));
        };
        let mut p = self.root.to_path_buf();
        for c in parents {
            p.push(OsStr::from_bytes(c));
            match fs::symlink_metadata(&p) {
                Ok(m) if m.is_dir() => {}
                Ok(m) if m.file_type().is_symlink() => {
                    return Err(refused(name, "a hardlink target's parent is a symlink"));
                }
                _ => return Err(refused(name, "a hardlink target outside this layer")),
            }
        }
        p.push(OsStr::from_bytes(last));
        match fs::symlink_metadata(&p) {
            Ok(m) if m.is_dir() => Err(refused(name, "a hardlink to a directory")),
            Ok(_) => Ok(p),
            Err(_) => Err(refused(name, "a hardlink target outside this layer")),
        }
    }
}

/// `.wh..wh..opq` marks `dir` opaque; `.wh.<name>` hides `<name>` of the lower layers.
fn whiteout(dir: &Path, last: &[u8], hidden: &[u8], name: &str) -> Result<(), UnpackError> {
    if last == OPAQUE_MARKER {
        return xattr::lset(dir, OPAQUE_XATTR, b"y").map_err(apply(name, "mark opaque"));
    }
    if hidden.starts_with(WHITEOUT_PREFIX) {
        tracing::debug!(entry = %name, "skipping whiteout metadata");
        return Ok(());
    }
    if matches!(hidden, b"" | b"." | b"..") {
        return Err(refused(name, "a whiteout of no single name"));
    }
    let path = dir.join(OsStr::from_bytes(hidden));
    replace(&path, false, name)?;
    mknod(&path, SFlag::S_IFCHR, Mode::empty(), makedev(0, 0))
        .map_err(|e| apply(name, "create the whiteout")(e.into()))
}

/// Makes room for an entry at `path`: whatever is there is removed (a symlink itself, never
/// its target), except a directory when `keep_dir`. Returns whether a directory was kept.
fn replace(path: &Path, keep_dir: bool, name: &str) -> Result<bool, UnpackError> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() && keep_dir => Ok(true),
        Ok(m) if m.is_dir() => fs::remove_dir_all(path)
            .map(|()| false)
            .map_err(apply(name, "replace a directory")),
        Ok(_) => fs::remove_file(path)
            .map(|()| false)
            .map_err(apply(name, "replace an earlier entry")),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(apply(name, "inspect the entry's path")(e)),
    }
}

/// Extended attributes from the entry's PAX records (`SCHILY.xattr.<name>`). The overlayfs
/// ones are ours to set: a layer may not forge them.
fn xattrs<R: Read>(e: &mut tar::Entry<'_, R>) -> Vec<(String, Vec<u8>)> {
    let Ok(Some(exts)) = e.pax_extensions() else {
        return Vec::new();
    };
    exts.filter_map(Result::ok)
        .filter_map(|x| {
            let name = x.key().ok()?.strip_prefix("SCHILY.xattr.")?;
            (!name.starts_with("trusted.overlay."))
                .then(|| (name.to_owned(), x.value_bytes().to_vec()))
        })
        .collect()
}

/// Owner, then mode (a chown clears set-id bits), then xattrs (a chown clears
/// `security.capability`). Symlinks have no mode of their own.
fn set_meta(path: &Path, m: &Meta, chmod: bool, name: &str) -> Result<(), UnpackError> {
    let id = |v: u64, what| u32::try_from(v).map_err(|_| refused(name, what));
    let uid = id(m.uid, "a uid beyond 32 bits")?;
    let gid = id(m.gid, "a gid beyond 32 bits")?;
    std::os::unix::fs::lchown(path, Some(uid), Some(gid)).map_err(apply(name, "set the owner"))?;
    if chmod {
        fs::set_permissions(path, fs::Permissions::from_mode(m.mode))
            .map_err(apply(name, "set the mode"))?;
    }
    for (key, value) in &m.xattrs {
        match xattr::lset(path, key, value) {
            Err(e) if e.raw_os_error() == Some(libc::ENOTSUP) => {
                tracing::debug!(entry = %name, xattr = %key, "xattr not supported here, skipped");
            }
            other => other.map_err(apply(name, "set an xattr"))?,
        }
    }
    Ok(())
}

fn set_mtime(path: &Path, mtime: u64) -> io::Result<()> {
    let t = TimeSpec::new(i64::try_from(mtime).unwrap_or(i64::MAX), 0);
    utimensat(
        nix::fcntl::AT_FDCWD,
        path,
        &t,
        &t,
        UtimensatFlags::NoFollowSymlink,
    )
    .map_err(io::Error::from)
}
