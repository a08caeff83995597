//! Attach on the monitor's side: the container's stdio, shared with attachers on the attach
//! socket (`<run dir>/mon/<id>.attach`). The monitor holds the container's stdin (a pipe, or
//! the pty master with a TTY), so attaching works whether or not the daemon is there.
//!
//! The protocol is frames `[kind u8][length u32 BE][payload]`, at most [`MAX_FRAME`] bytes of
//! payload. An attacher sends [`HELLO_STDIN`] (it streams stdin), [`STDIN`] data,
//! [`STDIN_CLOSE`] and [`RESIZE`] (columns and rows, u16 BE each); the monitor sends
//! [`STDOUT`] and [`STDERR`] output, copied from what it logs, and [`EXIT`] when the
//! container has ended. Everything is non-blocking in the monitor's one poll loop: output an
//! attacher does not read piles up to [`MAX_BACKLOG`], then that attacher is dropped (the
//! container and the log never wait for it); stdin waiting for the container is bounded the
//! same way, by no longer reading the attachers.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::poll::PollFlags;

pub const HELLO_STDIN: u8 = 0;
pub const STDIN: u8 = 1;
pub const STDIN_CLOSE: u8 = 2;
pub const RESIZE: u8 = 3;
pub const STDOUT: u8 = 4;
pub const STDERR: u8 = 5;
pub const EXIT: u8 = 6;

pub const MAX_FRAME: usize = 64 << 10;
/// Output queued for one attacher before it is dropped.
pub const MAX_BACKLOG: usize = 4 << 20;
/// Stdin queued for the container before the attachers are no longer read.
const MAX_STDIN_QUEUE: usize = 256 << 10;
/// Attachers at once.
const MAX_ATTACHERS: usize = 32;

/// The attach socket of a container whose control socket is `control`.
pub fn socket_path(control: &Path) -> PathBuf {
    control.with_extension("attach")
}

/// Appends one frame to `out`.
pub fn frame(kind: u8, payload: &[u8], out: &mut Vec<u8>) {
    out.push(kind);
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(payload);
}

/// A frame longer than an attach socket carries.
#[derive(Debug, PartialEq, Eq)]
pub struct FrameTooLarge;

/// Takes the complete frames off the front of `buf`; `Err` for a frame too large.
pub fn frames(buf: &mut Vec<u8>) -> Result<Vec<(u8, Vec<u8>)>, FrameTooLarge> {
    let mut out = Vec::new();
    let mut at = 0;
    while buf.len() - at >= 5 {
        let len = u32::from_be_bytes(buf[at + 1..at + 5].try_into().expect("4 bytes")) as usize;
        if len > MAX_FRAME {
            return Err(FrameTooLarge);
        }
        if buf.len() - at - 5 < len {
            break;
        }
        out.push((buf[at], buf[at + 5..at + 5 + len].to_vec()));
        at += 5 + len;
    }
    buf.drain(..at);
    Ok(out)
}

struct Attacher {
    sock: UnixStream,
    input: Vec<u8>,
    output: Vec<u8>,
    stdin: bool,
}

/// The container's stdio as attachers see it.
pub struct Hub {
    listener: UnixListener,
    path: PathBuf,
    attachers: Vec<Attacher>,
    /// The container's stdin (pipe write end or pty master), while it is open.
    stdin: Option<File>,
    queued: Vec<u8>,
    stdin_once: bool,
    /// The pty master, for resizes.
    pty: Option<File>,
}

impl Hub {
    pub fn new(
        path: PathBuf,
        stdin: Option<File>,
        stdin_once: bool,
        pty: Option<File>,
    ) -> io::Result<Hub> {
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path)?;
        listener.set_nonblocking(true)?;
        if let Some(f) = &stdin {
            set_nonblocking(f)?;
        }
        Ok(Hub {
            listener,
            path,
            attachers: Vec::new(),
            stdin,
            queued: Vec::new(),
            stdin_once,
            pty,
        })
    }

    /// What the poll loop watches for the hub, in order: the listener, the stdin (while
    /// input waits for it), then each attacher.
    pub fn poll_fds(&self) -> Vec<(BorrowedFd<'_>, PollFlags)> {
        let mut v = vec![(self.listener.as_fd(), PollFlags::POLLIN)];
        if let Some(f) = &self.stdin
            && !self.queued.is_empty()
        {
            v.push((f.as_fd(), PollFlags::POLLOUT));
        }
        for a in &self.attachers {
            let mut flags = PollFlags::empty();
            if self.queued.len() < MAX_STDIN_QUEUE {
                flags |= PollFlags::POLLIN;
            }
            if !a.output.is_empty() {
                flags |= PollFlags::POLLOUT;
            }
            v.push((a.sock.as_fd(), flags));
        }
        v
    }

    /// Handles what poll reported, `ready[i]` for `poll_fds()[i]`.
    pub fn handle(&mut self, ready: &[PollFlags]) {
        let mut i = 0;
        if ready.get(i).is_some_and(|r| !r.is_empty()) {
            self.accept();
        }
        i += 1;
        if self.stdin.is_some() && !self.queued.is_empty() {
            if ready.get(i).is_some_and(|r| !r.is_empty()) {
                self.write_stdin();
            }
            i += 1;
        }
        let mut gone = Vec::new();
        let n = self.attachers.len();
        for k in 0..n {
            let r = ready.get(i + k).copied().unwrap_or(PollFlags::empty());
            if r.is_empty() {
                continue;
            }
            if !self.serve(k, r) {
                gone.push(k);
            }
        }
        for k in gone.into_iter().rev() {
            let a = self.attachers.remove(k);
            if a.stdin {
                self.stdin_ended();
            }
        }
    }

    fn accept(&mut self) {
        while let Ok((sock, _)) = self.listener.accept() {
            if self.attachers.len() >= MAX_ATTACHERS || sock.set_nonblocking(true).is_err() {
                eprintln!("peapod monitor: an attacher refused (at most {MAX_ATTACHERS})");
                continue;
            }
            self.attachers.push(Attacher {
                sock,
                input: Vec::new(),
                output: Vec::new(),
                stdin: false,
            });
        }
    }

    /// One attacher's turn; false when it is gone.
    fn serve(&mut self, k: usize, r: PollFlags) -> bool {
        if r.contains(PollFlags::POLLOUT) && !flush(&mut self.attachers[k]) {
            return false;
        }
        if !r.intersects(PollFlags::POLLIN | PollFlags::POLLHUP | PollFlags::POLLERR) {
            return true;
        }
        let mut buf = [0u8; 16 << 10];
        let a = &mut self.attachers[k];
        match a.sock.read(&mut buf) {
            Ok(0) => return false,
            Ok(n) => a.input.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
            Err(_) => return false,
        }
        let Ok(frames) = frames(&mut a.input) else {
            eprintln!("peapod monitor: an attacher sent an oversized frame; dropped");
            return false;
        };
        for (kind, payload) in frames {
            match kind {
                HELLO_STDIN => self.attachers[k].stdin = true,
                STDIN if self.stdin.is_some() => self.queued.extend_from_slice(&payload),
                STDIN_CLOSE if self.attachers[k].stdin => {
                    self.attachers[k].stdin = false;
                    self.stdin_ended();
                }
                RESIZE if payload.len() == 4 => {
                    let cols = u16::from_be_bytes([payload[0], payload[1]]);
                    let rows = u16::from_be_bytes([payload[2], payload[3]]);
                    self.resize(cols, rows);
                }
                _ => {}
            }
        }
        if !self.queued.is_empty() {
            self.write_stdin();
        }
        true
    }

    /// An attacher's stdin ended: with `stdin_once` the container's stdin closes for good.
    fn stdin_ended(&mut self) {
        if self.stdin_once {
            self.write_stdin();
            self.queued.clear();
            self.stdin = None;
            // A pty's input has no end of its own: the master stays open for the output.
        }
    }

    fn write_stdin(&mut self) {
        let Some(f) = &mut self.stdin else {
            self.queued.clear();
            return;
        };
        while !self.queued.is_empty() {
            match f.write(&self.queued) {
                Ok(n) => {
                    self.queued.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(_) => {
                    // The container closed its stdin: what is sent goes nowhere.
                    self.queued.clear();
                    self.stdin = None;
                    return;
                }
            }
        }
    }

    fn resize(&mut self, cols: u16, rows: u16) {
        let Some(pty) = &self.pty else { return };
        let ws = libc::winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: the fd is the pty master we hold; TIOCSWINSZ only reads `ws`.
        unsafe { libc::ioctl(pty.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
    }

    /// Copies output to every attacher; one that is too far behind is dropped.
    pub fn broadcast(&mut self, kind: u8, data: &[u8]) {
        if self.attachers.is_empty() {
            return;
        }
        let mut gone = Vec::new();
        for (k, a) in self.attachers.iter_mut().enumerate() {
            for chunk in data.chunks(MAX_FRAME) {
                frame(kind, chunk, &mut a.output);
            }
            if a.output.len() > MAX_BACKLOG || !flush(a) {
                eprintln!("peapod monitor: an attacher does not read its output; dropped");
                gone.push(k);
            }
        }
        for k in gone.into_iter().rev() {
            let a = self.attachers.remove(k);
            if a.stdin {
                self.stdin_ended();
            }
        }
    }

    /// The container ended: every attacher gets the exit frame (a second at most to take
    /// it), and the socket goes.
    pub fn finish(mut self, exit_code: i32) {
        let _ = std::fs::remove_file(&self.path);
        for a in &mut self.attachers {
            frame(EXIT, &exit_code.to_be_bytes(), &mut a.output);
            let _ = a.sock.set_nonblocking(false);
            let _ = a.sock.set_write_timeout(Some(Duration::from_secs(1)));
            let _ = a.sock.write_all(&a.output);
        }
    }
}

/// Writes what it can of an attacher's output; false if the attacher is gone.
fn flush(a: &mut Attacher) -> bool {
    while !a.output.is_empty() {
        match a.sock.write(&a.output) {
            Ok(0) => return false,
            Ok(n) => {
                a.output.drain(..n);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
            Err(_) => return false,
        }
    }
    true
}

fn set_nonblocking(f: &File) -> io::Result<()> {
    use nix::fcntl::{F_GETFL, F_SETFL, OFlag, fcntl};
    let fl = OFlag::from_bits_truncate(fcntl(f, F_GETFL)?);
    fcntl(f, F_SETFL(fl | OFlag::O_NONBLOCK))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_wait_for_whole_frames() {
        let mut buf = Vec::new();
        frame(STDIN, b"hello", &mut buf);
        frame(RESIZE, &[0, 80, 0, 24], &mut buf);
        let tail = buf.split_off(buf.len() - 3);
        let got = frames(&mut buf).unwrap();
        assert_eq!(got, vec![(STDIN, b"hello".to_vec())]);
        buf.extend_from_slice(&tail);
        assert_eq!(
            frames(&mut buf).unwrap(),
            vec![(RESIZE, vec![0, 80, 0, 24])]
        );
        assert!(buf.is_empty());
    }

    #[test]
    fn an_oversized_frame_is_refused() {
        let mut buf = vec![STDIN];
        buf.extend_from_slice(&((MAX_FRAME + 1) as u32).to_be_bytes());
        assert!(frames(&mut buf).is_err());
    }

    #[test]
    fn the_socket_sits_beside_the_control_socket() {
        assert_eq!(
            socket_path(Path::new("/run/peapod/mon/abc.sock")),
            PathBuf::from("/run/peapod/mon/abc.attach")
        );
    }
}
