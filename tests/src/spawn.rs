//! Helper processes that die with the test, and finding their children.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::RawFd;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

/// Arranges for the process spawned from `cmd` to get SIGKILL when the thread that spawns it
/// ends (`PR_SET_PDEATHSIG`), so that a test killed hard still takes its node down.
///
/// The death signal is tied to the spawning *thread*: spawn from the test's own thread (or a
/// runtime worker that outlives the node), never from a short-lived `spawn_blocking` thread.
pub fn die_with_parent(cmd: &mut Command) -> &mut Command {
    let parent = nix::unistd::getpid();
    // SAFETY: the closure runs in the forked child between fork and exec, where only
    // async-signal-safe work is allowed. It makes two raw syscalls, prctl(2) and getppid(2),
    // and builds errors from errno values only: it neither allocates nor takes a lock.
    unsafe {
        cmd.pre_exec(move || {
            nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(io::Error::from)?;
            // The parent may have died between fork and prctl: then no signal would come.
            if nix::unistd::getppid() != parent {
                return Err(io::Error::from_raw_os_error(nix::libc::ESRCH));
            }
            Ok(())
        })
    }
}

/// Gives the process spawned from `cmd` the open file `fd` as its fd number `at`, without
/// close-on-exec: an fd its parent leaked to it, as any launcher can.
pub fn pass_fd(cmd: &mut Command, fd: RawFd, at: RawFd) -> &mut Command {
    // SAFETY: the closure runs in the forked child between fork and exec; it makes only
    // dup2(2) or fcntl(2), both async-signal-safe, and builds errors from errno alone. The
    // caller keeps `fd` open until the spawn returned, so `fd` names its file in the child.
    unsafe {
        cmd.pre_exec(move || {
            let r = if fd == at {
                nix::libc::fcntl(at, nix::libc::F_SETFD, 0)
            } else {
                nix::libc::dup2(fd, at)
            };
            if r < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        })
    }
}

/// The children of the single-threaded process `pid` (host pids).
pub fn children(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// Waits up to `timeout` for `parent` to have exactly one child and returns its pid; fails
/// early if `parent` exits.
pub fn wait_for_child(parent: &mut Child, timeout: Duration) -> io::Result<u32> {
    let deadline = Instant::now() + timeout;
    loop {
        if let [child] = children(parent.id())[..] {
            return Ok(child);
        }
        if let Some(status) = parent.try_wait()? {
            return Err(io::Error::other(format!("it exited ({status})")));
        }
        if Instant::now() > deadline {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("process {} got no child within {timeout:?}", parent.id()),
            ));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Waits up to `timeout` for a child process to exit; `true` if it did.
pub fn wait_timeout(child: &mut Child, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(_)) | Err(_) => return true,
            Ok(None) if Instant::now() > deadline => return false,
            Ok(None) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}

/// Sends `signal` to `pid`, ignoring a process that is already gone.
pub fn signal(pid: u32, signal: Signal) {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), signal);
}
