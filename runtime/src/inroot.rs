//! Paths inside a directory the container controls (its rootfs, an image's layer), resolved
//! by the kernel as if that directory were `/`: `openat2(RESOLVE_IN_ROOT |
//! RESOLVE_NO_MAGICLINKS)`. Absolute symlinks and `..` stay inside, magic links (`/proc/*/fd/*`)
//! and symlink loops are refused (ELOOP), and nothing is ever re-walked as a string from the
//! node's `/`: callers get fds, and mount through `/proc/self/fd/N` ([`fd_path`]). Missing
//! directories are made one component at a time under the fd of their parent.

use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{OFlag, OpenHow, ResolveFlag, open, openat, openat2, readlinkat};
use nix::sys::stat::{Mode, mkdirat};

/// A failed step, naming what it did to which path (a path inside the root).
#[derive(Debug, thiserror::Error)]
#[error("cannot {what} {path} inside {root}")]
pub struct InRootError {
    pub what: &'static str,
    pub path: PathBuf,
    pub root: PathBuf,
    #[source]
    pub source: io::Error,
}

impl InRootError {
    /// The errno of the failure, if it was one.
    pub fn errno(&self) -> Option<i32> {
        self.source.raw_os_error()
    }
}

impl From<InRootError> for io::Error {
    /// Keeps the kind of the failure (NotFound stays NotFound) and the message.
    fn from(e: InRootError) -> io::Error {
        io::Error::new(e.source.kind(), e)
    }
}

type Result<T> = std::result::Result<T, InRootError>;

/// A directory that stands for `/` while paths are resolved in it.
#[derive(Debug)]
pub struct Root {
    fd: OwnedFd,
    path: PathBuf,
}

/// `/proc/self/fd/N`: the path of what `fd` is open on, for calls that take a path (mount).
/// The kernel follows it to the very object the fd holds, whatever its name is now.
pub fn fd_path(fd: &impl AsRawFd) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

/// The normal components of `p` (`..` kept, `/` and `.` dropped), joined with `/`.
fn relative(p: &Path) -> Vec<&OsStr> {
    p.components()
        .filter_map(|c| match c {
            Component::Normal(s) => Some(s),
            Component::ParentDir => Some(OsStr::new("..")),
            _ => None,
        })
        .collect()
}

fn join(comps: &[&OsStr]) -> PathBuf {
    if comps.is_empty() {
        return PathBuf::from(".");
    }
    comps.iter().collect()
}

impl Root {
    /// Opens `path` (a node path the runtime chose, trusted) as the root.
    pub fn open(path: &Path) -> Result<Root> {
        let flags = OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
        let fd = open(path, flags, Mode::empty()).map_err(|e| InRootError {
            what: "open",
            path: "/".into(),
            root: path.to_owned(),
            source: e.into(),
        })?;
        Ok(Root {
            fd,
            path: path.to_owned(),
        })
    }

    /// The node path the root was opened at (for messages).
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn fail(&self, what: &'static str, p: &Path) -> impl FnOnce(Errno) -> InRootError + '_ {
        let path = Path::new("/").join(p);
        move |e| InRootError {
            what,
            path,
            root: self.path.clone(),
            source: e.into(),
        }
    }

    /// Opens `p` (absolute or not, it is taken from the root) with `flags`.
    pub fn open_in(&self, p: &Path, flags: OFlag) -> Result<OwnedFd> {
        let rel = join(&relative(p));
        self.openat2(&rel, flags)
            .map_err(self.fail("resolve", &rel))
    }

    fn openat2(&self, rel: &Path, flags: OFlag) -> nix::Result<OwnedFd> {
        let how = OpenHow::new()
            .flags(flags | OFlag::O_CLOEXEC)
            .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
        // The kernel asks to retry (EAGAIN) when a rename raced the walk; a container that
        // keeps renaming only gets the error, it cannot keep us looping.
        let mut tries = 0;
        loop {
            match openat2(self.fd.as_fd(), rel, how) {
                Err(Errno::EAGAIN) if tries < 16 => tries += 1,
                r => return r,
            }
        }
    }

    /// `p` opened `O_PATH`, or `None` if it (or the target of a symlink in it) does not exist.
    pub fn lookup(&self, p: &Path) -> Result<Option<OwnedFd>> {
        match self.open_in(p, OFlag::O_PATH) {
            Ok(fd) => Ok(Some(fd)),
            Err(e) if e.errno() == Some(libc::ENOENT) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The directory `p`, made with its missing parents (mode 0755), opened `O_PATH`. Each
    /// missing component is made with `mkdirat` under the fd of its parent; a dangling symlink
    /// on the way is followed (inside the root) and its target made, at most [`MAX_HOPS`]
    /// times; what resolves out of the way (a loop, a magic link) is an error.
    pub fn mkdir_all(&self, p: &Path) -> Result<OwnedFd> {
        let mut path = join(&relative(p));
        for _ in 0..=MAX_HOPS {
            match self.mkdir_walk(&path)? {
                Walk::Done(fd) => return Ok(fd),
                Walk::Dangling(next) => path = next,
            }
        }
        Err(self.fail("resolve", p)(Errno::ELOOP))
    }

    fn mkdir_walk(&self, path: &Path) -> Result<Walk> {
        let comps = relative(path);
        let flags = OFlag::O_PATH | OFlag::O_DIRECTORY;
        let mut cur = self
            .openat2(Path::new("."), flags)
            .map_err(self.fail("open", Path::new("")))?;
        for i in 0..comps.len() {
            let prefix = join(&comps[..=i]);
            cur = match self.openat2(&prefix, flags) {
                Ok(fd) => fd,
                Err(Errno::ENOENT) if comps[i] != ".." => {
                    if let Some(next) = dangling(&cur, &comps, i) {
                        return Ok(Walk::Dangling(next));
                    }
                    mkdirat(&cur, comps[i], Mode::from_bits_truncate(0o755))
                        .or_else(|e| if e == Errno::EEXIST { Ok(()) } else { Err(e) })
                        .map_err(self.fail("create", &prefix))?;
                    // What is there now, ours or not, must itself be a directory.
                    let f = flags | OFlag::O_NOFOLLOW;
                    openat(&cur, comps[i], f, Mode::empty()).map_err(self.fail("open", &prefix))?
                }
                Err(e) => return Err(self.fail("resolve", &prefix)(e)),
            };
        }
        Ok(Walk::Done(cur))
    }

    /// The file `p` opened `O_PATH`: an existing one (whatever it is), or a new empty regular
    /// file (mode 0644) made under the fd of its parent, which is made if missing. A dangling
    /// symlink is followed inside the root as [`Root::mkdir_all`] does.
    pub fn create_file(&self, p: &Path) -> Result<OwnedFd> {
        let mut path = join(&relative(p));
        for _ in 0..=MAX_HOPS {
            if let Some(fd) = self.lookup(&path)? {
                return Ok(fd);
            }
            let comps = relative(&path);
            let Some((name, parent)) = comps.split_last().filter(|(n, _)| **n != "..") else {
                return Err(self.fail("create", p)(Errno::EINVAL));
            };
            let dir = self.mkdir_all(&join(parent))?;
            if let Some(next) = dangling(&dir, &comps, comps.len() - 1) {
                path = next;
                continue;
            }
            let flags = OFlag::O_CREAT
                | OFlag::O_EXCL
                | OFlag::O_WRONLY
                | OFlag::O_NOFOLLOW
                | OFlag::O_CLOEXEC;
            return openat(&dir, *name, flags, Mode::from_bits_truncate(0o644))
                .map_err(self.fail("create", &path));
        }
        Err(self.fail("resolve", p)(Errno::ELOOP))
    }
}

/// How many dangling symlinks a path may go through while directories are made (the kernel
/// allows as many hops in one walk).
pub const MAX_HOPS: usize = 40;

enum Walk {
    Done(OwnedFd),
    /// The path went through a dangling symlink: the path to walk instead.
    Dangling(PathBuf),
}

/// If `comps[i]` in `dir` (the directory of `comps[..i]`) is a symlink, the path with it
/// replaced by its target (taken from the root when absolute).
fn dangling(dir: &OwnedFd, comps: &[&OsStr], i: usize) -> Option<PathBuf> {
    let target = readlinkat(dir, comps[i]).ok()?;
    let target = PathBuf::from(target);
    let mut next: Vec<&OsStr> = if target.is_absolute() {
        Vec::new()
    } else {
        comps[..i].to_vec()
    };
    next.extend(relative(&target));
    next.extend(&comps[i + 1..]);
    Some(join(&next))
}

#[cfg(test)]
mod tests;
