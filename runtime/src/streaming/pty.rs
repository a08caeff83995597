//! A pseudo-terminal pair for `exec -t`: the command gets the slave as stdin, stdout and
//! stderr (and as its controlling terminal, see `peapod enter --tty`); the daemon keeps the
//! master, non-blocking, registered with tokio, and sets its window size on resize.
// The TIOCSWINSZ ioctl is a foreign call; its block says why it holds.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use nix::fcntl::{OFlag, fcntl};
use tokio::io::unix::AsyncFd;

use crate::inroot::{Root, fd_path};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

pub struct Pty {
    pub master: Master,
    pub slave: OwnedFd,
}

/// The master side; cheap to clone (reads and writes go to the same terminal).
#[derive(Clone)]
pub struct Master(Arc<AsyncFd<OwnedFd>>);

impl Pty {
    /// Opens a pair in the devpts instance of the filesystem tree at `root` (a container's
    /// `/proc/<pid>/root`, so that the command finds its terminal under its own `/dev/pts`),
    /// falling back to the node's when that tree has no `/dev/ptmx` at all. Both ends close
    /// on exec, so no other child inherits them.
    pub fn open_in(root: &Path) -> io::Result<Pty> {
        let (master, slave) = open_pair(root)?;
        let fl = OFlag::from_bits_truncate(fcntl(&master, nix::fcntl::F_GETFL)?);
        fcntl(&master, nix::fcntl::F_SETFL(fl | OFlag::O_NONBLOCK))?;
        Ok(Pty {
            // SAFETY: `master` is an open fd that the AsyncFd owns from here on, and an
            // OwnedFd always answers the same fd.
            master: Master(Arc::new(
                unsafe { AsyncFd::register(master) }.map_err(io::Error::from)?,
            )),
            slave,
        })
    }
}

/// What the tree at `root` has as `/dev/ptmx` is not the multiplexer of a devpts instance
/// (a container can replace it with a symlink, or make a device node of its own).
#[derive(Debug, thiserror::Error)]
#[error("{0}/dev/ptmx is not the ptmx of a devpts instance")]
pub struct NotPtmx(PathBuf);

/// A (master, slave) pair, both blocking and close-on-exec, from the devpts instance of
/// the tree at `root` (falling back to the node's, see [`Pty::open_in`]).
///
/// The tree is the container's: its `/dev/ptmx` is resolved inside it (never onto the node),
/// and what it resolves to must be the ptmx of a devpts filesystem (char 5:2), checked on an
/// `O_PATH` fd before that very inode is opened read-write through `/proc/self/fd`.
pub fn open_pair(root: &Path) -> io::Result<(OwnedFd, OwnedFd)> {
    let master: OwnedFd = match Root::open(root)?.open_in(Path::new("/dev/ptmx"), OFlag::O_PATH) {
        Ok(at) => {
            if !is_devpts_ptmx(&at)? {
                return Err(io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    NotPtmx(root.to_owned()),
                ));
            }
            open_rw(&fd_path(&at))?
        }
        Err(e) if e.errno() == Some(libc::ENOENT) => open_rw(Path::new("/dev/ptmx"))?,
        Err(e) => return Err(e.into()),
    };
    pair(master)
}

/// A pair from the node's own `/dev/ptmx` (for a process not in a container's tree yet:
/// the shim's task before it starts).
pub fn open_node_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    pair(open_rw(Path::new("/dev/ptmx"))?)
}

fn open_rw(p: &Path) -> io::Result<OwnedFd> {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags((OFlag::O_NOCTTY | OFlag::O_CLOEXEC).bits())
        .open(p)?;
    Ok(f.into())
}

/// The master `master`, unlocked, with its slave.
fn pair(master: OwnedFd) -> io::Result<(OwnedFd, OwnedFd)> {
    let unlock: libc::c_int = 0;
    // SAFETY: TIOCSPTLCK reads an int from a valid pointer; the fd is an open ptmx.
    let r = unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSPTLCK, &unlock) };
    nix::errno::Errno::result(r)?;
    let flags = libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC;
    // SAFETY: TIOCGPTPEER opens the slave of this master and returns a new fd (or -1).
    let peer = unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCGPTPEER, flags) };
    let peer = nix::errno::Errno::result(peer)?;
    // SAFETY: `peer` is a fresh fd the kernel just returned, owned by nobody else.
    let slave = unsafe { OwnedFd::from_raw_fd(peer) };
    Ok((master, slave))
}

/// Whether `fd` is the ptmx node of a devpts filesystem.
fn is_devpts_ptmx(fd: &OwnedFd) -> io::Result<bool> {
    let fs = nix::sys::statfs::fstatfs(fd)?;
    if fs.filesystem_type() != nix::sys::statfs::DEVPTS_SUPER_MAGIC {
        return Ok(false);
    }
    let st = nix::sys::stat::fstat(fd)?;
    let chr = st.st_mode & libc::S_IFMT == libc::S_IFCHR;
    Ok(chr && libc::major(st.st_rdev) == 5 && libc::minor(st.st_rdev) == 2)
}

/// Sets the window size of the terminal whose master is `master` (its processes get
/// SIGWINCH).
pub fn set_winsize(master: std::os::fd::BorrowedFd<'_>, cols: u16, rows: u16) -> io::Result<()> {
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: the fd is an open pty master, and `ws` is a valid winsize that the kernel only
    // reads.
    let r = unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
    nix::errno::Errno::result(r)?;
    Ok(())
}

use std::os::unix::fs::OpenOptionsExt as _;

impl Master {
    /// Sets the terminal's window size (the command gets SIGWINCH).
    pub fn resize(&self, cols: u16, rows: u16) -> io::Result<()> {
        set_winsize(self.0.get_ref().as_fd(), cols, rows)
    }
}

impl AsyncRead for Master {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            let mut guard = ready!(self.0.poll_read_ready(cx))?;
            let dst = buf.initialize_unfilled();
            match guard.try_io(|fd| nix::unistd::read(fd.get_ref(), dst).map_err(io::Error::from)) {
                Ok(Ok(n)) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                // Every slave end is closed: the terminal's output is over.
                Ok(Err(e)) if e.raw_os_error() == Some(libc::EIO) => return Poll::Ready(Ok(())),
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                Err(_would_block) => continue,
            }
        }
    }
}

impl AsyncWrite for Master {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        loop {
            let mut guard = ready!(self.0.poll_write_ready(cx))?;
            match guard.try_io(|fd| nix::unistd::write(fd.get_ref(), buf).map_err(io::Error::from))
            {
                Ok(r) => return Poll::Ready(r),
                Err(_would_block) => continue,
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn a_terminal_echoes_and_reports_its_size() {
        // A tree without /dev/ptmx gets a terminal of the node's devpts.
        let tree = tempfile::tempdir().unwrap();
        let pty = Pty::open_in(tree.path()).unwrap();
        pty.master.resize(100, 30).unwrap();
        let mut ws = libc::winsize {
            ws_row: 0,
            ws_col: 0,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: the slave fd is open and `ws` is a writable winsize.
        let r = unsafe { libc::ioctl(pty.slave.as_raw_fd(), libc::TIOCGWINSZ, &mut ws) };
        assert_eq!(r, 0);
        assert_eq!((ws.ws_col, ws.ws_row), (100, 30));
        let mut m = pty.master.clone();
        m.write_all(b"hi\n").await.unwrap();
        let mut out = [0u8; 16];
        let n = m.read(&mut out).await.unwrap();
        // The line discipline echoes what is typed.
        assert!(out[..n].starts_with(b"hi"), "{:?}", &out[..n]);
        drop(pty.slave);
        let mut rest = Vec::new();
        m.read_to_end(&mut rest).await.unwrap();
    }

    #[test]
    fn only_a_devpts_ptmx_is_opened() {
        let fd = |p: &str| -> OwnedFd {
            let f = OFlag::O_PATH | OFlag::O_CLOEXEC;
            nix::fcntl::open(p, f, nix::sys::stat::Mode::empty()).unwrap()
        };
        assert!(is_devpts_ptmx(&fd("/dev/pts/ptmx")).unwrap());
        assert!(!is_devpts_ptmx(&fd("/dev/null")).unwrap());
        // What a container can make in its /dev: a plain file, a link out of its tree.
        let tree = tempfile::tempdir().unwrap();
        std::fs::create_dir(tree.path().join("dev")).unwrap();
        std::fs::write(tree.path().join("dev/ptmx"), "").unwrap();
        let e = open_pair(tree.path()).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::PermissionDenied, "{e}");
        std::fs::remove_file(tree.path().join("dev/ptmx")).unwrap();
        std::os::unix::fs::symlink("/dev/null", tree.path().join("dev/ptmx")).unwrap();
        // Inside the tree the link leads nowhere: the node's devpts, not /dev/null.
        let (master, _slave) = open_pair(tree.path()).unwrap();
        assert!(
            is_devpts_ptmx(&master).unwrap() || {
                let st = nix::sys::stat::fstat(&master).unwrap();
                libc::major(st.st_rdev) == 5 && libc::minor(st.st_rdev) == 2
            }
        );
    }
}
