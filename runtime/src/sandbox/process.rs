//! The pause process: spawned with `clone` straight into its new namespaces, identified by
//! pid + start time (safe against pid reuse across daemon restarts), waited on and signalled
//! through a pidfd so that it works whether or not the pause is still our child.
// The clone child and the pidfd syscalls need libc; each unsafe block says why it holds.
#![allow(unsafe_code)]

use std::ffi::CString;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sched::CloneFlags;
use serde::{Deserialize, Serialize};
use tokio::io::unix::AsyncFd;

/// A process as it was when we made it: a pid alone may be reused after the process dies.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcRef {
    pub pid: i32,
    /// Field 22 of `/proc/<pid>/stat`: clock ticks since boot.
    pub start_time: u64,
}

impl ProcRef {
    /// The process `pid` as it is now (alive or a zombie).
    pub fn of(pid: i32) -> io::Result<ProcRef> {
        let (_, start_time) = stat(pid)?;
        Ok(ProcRef { pid, start_time })
    }

    /// True while the very process we recorded is alive (not a zombie, not a newcomer).
    pub fn is_alive(&self) -> bool {
        matches!(stat(self.pid), Ok((state, start)) if start == self.start_time && state != 'Z' && state != 'X')
    }

    /// A pidfd for this process, checked against the recorded start time after opening so
    /// that a reused pid is never mistaken for ours.
    pub fn pidfd(&self) -> io::Result<Option<OwnedFd>> {
        let fd = match pidfd_open(self.pid) {
            Ok(fd) => fd,
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => return Ok(None),
            Err(e) => return Err(e),
        };
        Ok(self.is_alive().then_some(fd))
    }
}

/// (state, start_time) from `/proc/<pid>/stat`.
fn stat(pid: i32) -> io::Result<(char, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    parse_stat(&text).ok_or_else(|| io::Error::other(format!("unparsable /proc/{pid}/stat")))
}

fn parse_stat(text: &str) -> Option<(char, u64)> {
    // comm (field 2) may contain spaces and parentheses: split after the last ')'.
    let rest = &text[text.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    // state is field 3; start_time is field 22.
    let start = fields.nth(22 - 4)?.parse().ok()?;
    Some((state, start))
}

/// Every live pause: a `peapod-pause` process carrying `PEAPOD_SANDBOX_ID` in its environment
/// (the name matters: a container's image could set any variable), with the sandbox it names.
pub fn sandbox_processes() -> Vec<(String, ProcRef)> {
    processes_with_sandbox_env(Some("peapod-pause"))
}

fn processes_with_sandbox_env(comm: Option<&str>) -> Vec<(String, ProcRef)> {
    const VAR: &[u8] = b"PEAPOD_SANDBOX_ID=";
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            comm.is_none_or(|want| {
                std::fs::read_to_string(format!("/proc/{pid}/comm"))
                    .is_ok_and(|c| c.trim_end() == want)
            })
        })
        .filter_map(|pid| {
            let env = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
            let id = env.split(|b| *b == 0).find_map(|v| v.strip_prefix(VAR))?;
            let id = String::from_utf8(id.to_vec()).ok()?;
            let (state, start_time) = stat(pid).ok()?;
            (state != 'Z').then_some((id, ProcRef { pid, start_time }))
        })
        .collect()
}

/// The processes started for sandbox `id`: finds a pause whose pid a crash kept from
/// reaching the record.
pub fn find_by_sandbox(id: &str) -> Vec<ProcRef> {
    find_by_sandbox_in(id, sandbox_processes())
}

fn find_by_sandbox_in(id: &str, procs: Vec<(String, ProcRef)>) -> Vec<ProcRef> {
    procs
        .into_iter()
        .filter(|(s, _)| s == id)
        .map(|(_, p)| p)
        .collect()
}

pub struct PauseSpec<'a> {
    pub path: &'a Path,
    pub sandbox_id: &'a str,
    pub flags: CloneFlags,
    /// Set in the new UTS namespace; only with CLONE_NEWUTS.
    pub hostname: Option<&'a str>,
    /// cgroup v1 `tasks` files the child writes 0 into before exec (see
    /// `Cgroups::pause_tasks_files`).
    pub cgroup_tasks: &'a [PathBuf],
}

/// Starts the pause in new namespaces. Returns once it has exec'd (or failed to).
pub fn spawn_pause(spec: &PauseSpec<'_>) -> io::Result<ProcRef> {
    // Everything the child touches is prepared here: after clone in a threaded process the
    // child may only make async-signal-safe calls (no allocation, no locks).
    let path = CString::new(spec.path.as_os_str().as_bytes())?;
    let argv = [path.as_ptr(), std::ptr::null()];
    let env = CString::new(format!("PEAPOD_SANDBOX_ID={}", spec.sandbox_id))?;
    let envp = [env.as_ptr(), std::ptr::null()];
    let hostname = spec.hostname.map(|h| h.as_bytes().to_vec());
    let tasks = spec
        .cgroup_tasks
        .iter()
        .map(|p| CString::new(p.as_os_str().as_bytes()))
        .collect::<Result<Vec<_>, _>>()?;
    let devnull = File::options().read(true).write(true).open("/dev/null")?;
    let (err_r, err_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    let (devnull_fd, err_fd) = (devnull.as_raw_fd(), err_w.as_raw_fd());
    let mut stack = vec![0u8; 64 * 1024];

    let child = Box::new(|| -> isize {
        // SAFETY: runs in the freshly cloned child (its own copy of memory, one thread); every
        // call is a raw async-signal-safe syscall on data prepared before clone, and the child
        // ends in execve or _exit without returning into Rust code that could allocate.
        unsafe {
            let mut empty: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut empty);
            libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
            libc::setsid();
            for t in &tasks {
                let fd = libc::open(t.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                if fd < 0 || libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                    fail(err_fd);
                }
                libc::close(fd);
            }
            if let Some(h) = &hostname
                && libc::sethostname(h.as_ptr().cast(), h.len()) != 0
            {
                fail(err_fd);
            }
            for target in 0..3 {
                libc::dup2(devnull_fd, target);
            }
            libc::execve(path.as_ptr(), argv.as_ptr(), envp.as_ptr());
            fail(err_fd)
        }
    });
    // SAFETY: without CLONE_VM the child gets a private copy of our memory, including `stack`,
    // which outlives the clone call in the parent; the closure above upholds the
    // async-signal-safety the child needs.
    let pid = unsafe { nix::sched::clone(child, &mut stack, spec.flags, Some(libc::SIGCHLD)) }
        .map_err(io::Error::from)?;
    drop(err_w);
    let pid = pid.as_raw();

    // Exec closes the CLOEXEC pipe: zero bytes means success, four bytes carry an errno.
    let mut buf = [0u8; 4];
    let mut r = File::from(err_r);
    let n = read_full(&mut r, &mut buf)?;
    if n == 4 {
        let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None);
        return Err(io::Error::from_raw_os_error(i32::from_ne_bytes(buf)));
    }
    let (_, start_time) = stat(pid)?;
    Ok(ProcRef { pid, start_time })
}

/// Reports errno on the pipe and exits; for the clone child only.
///
/// # Safety
/// Only async-signal-safe calls; `fd` is the write end of the error pipe.
unsafe fn fail(fd: i32) -> ! {
    // SAFETY: errno location is thread-local and valid; write and _exit are
    // async-signal-safe; the buffer lives on this stack frame.
    unsafe {
        let e = *libc::__errno_location();
        let b = e.to_ne_bytes();
        libc::write(fd, b.as_ptr().cast(), b.len());
        libc::_exit(127)
    }
}

fn read_full(f: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

fn pidfd_open(pid: i32) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1; no memory is shared.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this fd to us and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Sends `sig` through the pidfd: never reaches a process that reused the pid.
pub fn pidfd_signal(fd: &OwnedFd, sig: i32) -> io::Result<()> {
    // SAFETY: a valid pidfd, a signal number, no siginfo (null), no flags.
    let r = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            fd.as_raw_fd(),
            sig,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    match r {
        0 => Ok(()),
        _ => match io::Error::last_os_error() {
            e if e.raw_os_error() == Some(libc::ESRCH) => Ok(()),
            e => Err(e),
        },
    }
}

/// Waits until the process behind the pidfd has exited; false on timeout.
pub fn wait_exit_blocking(fd: &OwnedFd, timeout: Duration) -> io::Result<bool> {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    use std::os::fd::AsFd;
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let ms =
            PollTimeout::try_from(left.as_millis().min(60_000) as i32).unwrap_or(PollTimeout::MAX);
        let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, ms) {
            Ok(0) if left.is_zero() => return Ok(false),
            Ok(0) => {}
            Ok(_) => return Ok(true),
            Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
}

/// Registers a pidfd with the reactor, for `wait_exit`.
pub fn async_pidfd(fd: OwnedFd) -> io::Result<AsyncFd<OwnedFd>> {
    // SAFETY: the AsyncFd owns the OwnedFd, so the fd stays open (and is not reused) for as
    // long as it is registered, and it is deregistered before the OwnedFd closes it.
    unsafe { AsyncFd::register(fd) }.map_err(|e| e.into_parts().1)
}

/// Waits (async) until the process behind `fd` has exited.
pub async fn wait_exit(fd: &AsyncFd<OwnedFd>) {
    let _ = fd.readable().await;
}

/// Reaps `pid` if it is our child and has exited; harmless otherwise.
pub fn reap(pid: i32) {
    use nix::sys::wait::{WaitPidFlag, waitpid};
    let _ = waitpid(nix::unistd::Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG));
}

/// SIGTERM, then SIGKILL after `grace`; returns once the process is gone.
pub fn terminate_blocking(p: &ProcRef, grace: Duration) -> io::Result<()> {
    let Some(fd) = p.pidfd()? else {
        reap(p.pid);
        return Ok(());
    };
    pidfd_signal(&fd, libc::SIGTERM)?;
    if !wait_exit_blocking(&fd, grace)? {
        pidfd_signal(&fd, libc::SIGKILL)?;
        if !wait_exit_blocking(&fd, Duration::from_secs(10))? {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("pid {} did not exit after SIGKILL", p.pid),
            ));
        }
    }
    reap(p.pid);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_processes_by_their_sandbox_id() {
        let id = format!("test-{}", std::process::id());
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .env("PEAPOD_SANDBOX_ID", &id)
            .spawn()
            .unwrap();
        // Spawn returns once the child is in exec, which may be before the kernel has set up
        // its new environment block: give it a moment.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let scan = || find_by_sandbox_in(&id, processes_with_sandbox_env(None));
        let mut found = scan();
        while found.is_empty() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(5));
            found = scan();
        }
        // A process that is not peapod-pause is never taken for one.
        assert!(find_by_sandbox(&id).is_empty());
        child.kill().unwrap();
        child.wait().unwrap();
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].pid, child.id() as i32);
        assert!(
            find_by_sandbox_in(&format!("{id}-other"), processes_with_sandbox_env(None)).is_empty()
        );
    }

    #[test]
    fn parses_stat_with_awkward_comm() {
        let line = "1234 (we ird) name)) S 1 1234 1234 0 -1 4194560 100 0 0 0 0 0 0 0 20 0 1 0 98765 1000 10 18446744073709551615";
        assert_eq!(parse_stat(line), Some(('S', 98765)));
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn our_own_process_is_alive_and_a_wrong_start_time_is_not() {
        let me = std::process::id() as i32;
        let (_, start) = stat(me).unwrap();
        assert!(
            ProcRef {
                pid: me,
                start_time: start
            }
            .is_alive()
        );
        assert!(
            !ProcRef {
                pid: me,
                start_time: start + 1
            }
            .is_alive()
        );
    }
}
