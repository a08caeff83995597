//! Opening the FIFOs a containerd client made for a task's stdio, for the container's
//! process to have as they are.
//!
//! The client holds the other end open already (it opens its read ends, and starts opening
//! its write end, before it asks for the task), so neither open here waits: the read end of
//! stdin is opened without blocking and then made blocking; a write end that finds no reader
//! (the client went away) is opened read-write instead, so the process never blocks in open.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use nix::fcntl::{F_GETFL, F_SETFL, OFlag, fcntl};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dir {
    /// The process reads it (stdin).
    Read,
    /// The process writes it (stdout, stderr).
    Write,
}

/// The FIFO at `path` for the process, or `/dev/null` when there is none.
pub fn open(path: Option<&Path>, dir: Dir) -> io::Result<OwnedFd> {
    let Some(path) = path.filter(|p| !p.as_os_str().is_empty()) else {
        let null = OpenOptions::new()
            .read(dir == Dir::Read)
            .write(dir == Dir::Write)
            .open("/dev/null")?;
        return Ok(null.into());
    };
    let annotate = |e: io::Error| io::Error::new(e.kind(), format!("{}: {e}", path.display()));
    let nonblocking = |read: bool, write: bool| {
        OpenOptions::new()
            .read(read)
            .write(write)
            // O_NOCTTY: a terminal given by path (a shim's pty) must not become the
            // monitor's, a session leader's, controlling terminal.
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC | libc::O_NOCTTY)
            .open(path)
    };
    let file = match dir {
        Dir::Read => nonblocking(true, false),
        Dir::Write => match nonblocking(false, true) {
            Err(e) if e.raw_os_error() == Some(libc::ENXIO) => nonblocking(true, true),
            other => other,
        },
    }
    .map_err(annotate)?;
    blocking(&file).map_err(annotate)?;
    Ok(file.into())
}

fn blocking(file: &File) -> io::Result<()> {
    let flags = OFlag::from_bits_truncate(fcntl(file, F_GETFL)?);
    fcntl(file, F_SETFL(flags - OFlag::O_NONBLOCK))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};

    use super::*;

    fn fifo(dir: &Path, name: &str) -> std::path::PathBuf {
        let path = dir.join(name);
        nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        path
    }

    #[test]
    fn a_write_end_reaches_the_reader_and_blocks_again() {
        let dir = tempfile::tempdir().unwrap();
        let path = fifo(dir.path(), "out");
        let mut reader = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&path)
            .unwrap();
        let fd = open(Some(&path), Dir::Write).unwrap();
        let flags = OFlag::from_bits_truncate(fcntl(&fd, F_GETFL).unwrap());
        assert!(!flags.contains(OFlag::O_NONBLOCK));
        File::from(fd).write_all(b"hello").unwrap();
        let mut got = String::new();
        reader.read_to_string(&mut got).unwrap();
        assert_eq!(got, "hello");
    }

    #[test]
    fn a_write_end_without_a_reader_does_not_wait() {
        let dir = tempfile::tempdir().unwrap();
        let path = fifo(dir.path(), "out");
        let fd = open(Some(&path), Dir::Write).unwrap();
        File::from(fd).write_all(b"into the pipe buffer").unwrap();
    }

    #[test]
    fn a_read_end_gets_what_the_writer_sends_then_eof() {
        let dir = tempfile::tempdir().unwrap();
        let path = fifo(dir.path(), "in");
        // The client's write end, open before the task's read end is (a reader of our own
        // lets it open without waiting).
        let helper = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&path)
            .unwrap();
        let mut writer = OpenOptions::new().write(true).open(&path).unwrap();
        let ours = File::from(open(Some(&path), Dir::Read).unwrap());
        drop(helper);
        writer.write_all(b"input").unwrap();
        drop(writer);
        let mut got = String::new();
        (&ours).read_to_string(&mut got).unwrap();
        assert_eq!(got, "input");
    }

    #[test]
    fn no_path_is_dev_null() {
        let mut got = Vec::new();
        File::from(open(None, Dir::Read).unwrap())
            .read_to_end(&mut got)
            .unwrap();
        assert!(got.is_empty());
        File::from(open(Some(Path::new("")), Dir::Write).unwrap())
            .write_all(b"gone")
            .unwrap();
    }
}
