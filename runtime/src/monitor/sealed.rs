//! The binary of the processes that join a container (`monitor`, whose fork becomes the
//! container's process, and `enter`), run from a sealed in-memory copy: what a container
//! sees as their `/proc/<pid>/exe` is then that copy, not the node's file. Without it a
//! container could open the node's binary through that link (a process of ours executing
//! `#!/proc/self/exe` as the container's command is enough), keep the fd, and write through
//! it once the binary no longer runs: the next container start would run its code as root
//! on the node (runc's CVE-2019-5736).
//!
//! One copy per daemon (or shim), made at its start and shared by every process it spawns
//! (their pages are the copy's, as they would be the page cache's): a memfd, sealed against
//! writes, growing, shrinking and further sealing, exec'd through `/proc/self/fd/<n>` in the
//! spawned child (the fd is close-on-exec: gone once the exec happened).

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{FcntlArg, SealFlag, fcntl};
use nix::sys::memfd::{MFdFlags, memfd_create};

#[derive(Debug, thiserror::Error)]
pub enum SealedError {
    #[error("cannot create an in-memory copy of {path}")]
    Create {
        path: PathBuf,
        #[source]
        source: Errno,
    },
    #[error("cannot copy {path} into memory")]
    Copy {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot seal the in-memory copy of {path}")]
    Seal {
        path: PathBuf,
        #[source]
        source: Errno,
    },
}

/// The binary the per-container processes run.
#[derive(Debug)]
pub struct Binary {
    /// The node's file: what the processes' argv[0] says (`ps`, and peapod's own scans for
    /// monitors, see what they always saw).
    path: PathBuf,
    /// Its sealed copy, when there is one.
    sealed: Option<OwnedFd>,
}

impl Binary {
    /// `path`, to be run from a sealed in-memory copy of it.
    pub fn sealed(path: PathBuf) -> Result<Binary, SealedError> {
        let fd = sealed_copy(&path)?;
        Ok(Binary {
            path,
            sealed: Some(fd),
        })
    }

    /// `path`, run as it is (where no sealed copy can be made).
    pub fn unsealed(path: PathBuf) -> Binary {
        Binary { path, sealed: None }
    }

    /// The node's file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the processes run from a sealed copy.
    pub fn is_sealed(&self) -> bool {
        self.sealed.is_some()
    }

    /// What to exec, in a child of this process: the copy as `/proc/self/fd/<n>` (the child
    /// has the fd until its exec), else the node's file. Give the child [`Binary::path`] as
    /// argv[0].
    pub fn program(&self) -> PathBuf {
        match &self.sealed {
            Some(fd) => PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd())),
            None => self.path.clone(),
        }
    }
}

/// A memfd holding `path`'s bytes, executable (MFD_EXEC, where the kernel knows it: a node
/// with `vm.memfd_noexec` = 1 makes memfds non-executable by default) and sealed.
fn sealed_copy(path: &Path) -> Result<OwnedFd, SealedError> {
    let name = c"peapod-monitor";
    let flags = MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING;
    let exec = MFdFlags::from_bits_retain(libc::MFD_EXEC);
    let fd = match memfd_create(name, flags | exec) {
        // Kernels before 6.3 know no MFD_EXEC: every memfd is executable there.
        Err(Errno::EINVAL) => memfd_create(name, flags),
        r => r,
    }
    .map_err(|source| SealedError::Create {
        path: path.to_owned(),
        source,
    })?;
    let mut copy = File::from(fd);
    let copied = File::open(path).and_then(|mut src| io::copy(&mut src, &mut copy));
    copied.map_err(|source| SealedError::Copy {
        path: path.to_owned(),
        source,
    })?;
    let seals = SealFlag::F_SEAL_SEAL
        | SealFlag::F_SEAL_SHRINK
        | SealFlag::F_SEAL_GROW
        | SealFlag::F_SEAL_WRITE;
    fcntl(&copy, FcntlArg::F_ADD_SEALS(seals)).map_err(|source| SealedError::Seal {
        path: path.to_owned(),
        source,
    })?;
    Ok(copy.into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    #[test]
    fn the_copy_has_the_bytes_and_takes_no_writes() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("bin");
        std::fs::write(&file, b"\x7fELF and the rest").unwrap();
        let b = Binary::sealed(file.clone()).unwrap();
        assert!(b.is_sealed());
        assert_eq!(b.path(), file);
        let program = b.program();
        let mut bytes = Vec::new();
        File::open(&program)
            .unwrap()
            .read_to_end(&mut bytes)
            .unwrap();
        assert_eq!(bytes, b"\x7fELF and the rest");
        let link = std::fs::read_link(&program).unwrap();
        assert!(link.to_string_lossy().starts_with("/memfd:peapod-monitor"));
        // Neither a write through a new open nor more seals nor a resize.
        let mut w = std::fs::OpenOptions::new().write(true).open(&program);
        let wrote = w.as_mut().map(|f| f.write(b"x"));
        assert!(
            !matches!(wrote, Ok(Ok(_))),
            "a write went through: {wrote:?}"
        );
        let fd = b.sealed.as_ref().unwrap();
        assert_eq!(
            nix::unistd::ftruncate(fd, 0),
            Err(Errno::EPERM),
            "shrinking"
        );
        assert_eq!(
            fcntl(fd, FcntlArg::F_ADD_SEALS(SealFlag::F_SEAL_FUTURE_WRITE)),
            Err(Errno::EPERM),
            "more seals"
        );
        // Unchanged, and the node's file too.
        assert_eq!(std::fs::read(&program).unwrap(), b"\x7fELF and the rest");
        assert_eq!(std::fs::read(&file).unwrap(), b"\x7fELF and the rest");
    }

    #[test]
    fn unsealed_runs_the_file() {
        let b = Binary::unsealed(PathBuf::from("/usr/bin/peapod-monitor"));
        assert!(!b.is_sealed());
        assert_eq!(b.program(), Path::new("/usr/bin/peapod-monitor"));
    }
}
