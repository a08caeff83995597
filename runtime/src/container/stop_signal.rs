//! Delivery of a container's stop signal. A container's process is often PID 1 of its own PID
//! namespace, and the kernel discards a signal sent to such an init while it has no handler
//! for it: a stop that comes in the moment after the start (before the program has installed
//! its handler) would be lost, and the stop would wait out its whole grace period. So when
//! the process did not catch the signal as it was sent, `SigCgt` is watched, and the signal is
//! sent once more as soon as a handler appears.

use std::io;
use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

use crate::sandbox::process::{pidfd_signal, wait_exit_blocking};

/// How often `SigCgt` is read while waiting for a handler: one small read of procfs per tick.
const POLL: Duration = Duration::from_millis(15);

/// Sends `sig` to the process behind `fd` (pid `pid` in our PID namespace) and waits up to
/// `grace` for it to exit; true if it did. If the process had no handler for `sig` when it
/// was sent, the signal is sent again (once) when a handler appears within `grace`. A second
/// delivery to a program that caught the first (it installed its handler between the check
/// and the send) is possible and harmless: a stop signal asks for the same thing twice.
pub fn deliver(fd: &OwnedFd, pid: i32, sig: i32, grace: Duration) -> io::Result<bool> {
    let deadline = Instant::now() + grace;
    let caught_before = catches(pid, sig);
    pidfd_signal(fd, sig)?;
    if caught_before != Some(false) {
        // Caught, or unknown (procfs unreadable: the process is gone, or we cannot tell).
        return wait_exit_blocking(fd, grace);
    }
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if wait_exit_blocking(fd, left.min(POLL))? {
            return Ok(true);
        }
        if left.is_zero() {
            return Ok(false);
        }
        // Read, then check that the process still lives: a pid is not reused while its
        // process lives, so a read followed by "not exited" was a read of this process.
        let caught = catches(pid, sig);
        if wait_exit_blocking(fd, Duration::ZERO)? {
            return Ok(true);
        }
        if caught == Some(true) {
            pidfd_signal(fd, sig)?;
            let left = deadline.saturating_duration_since(Instant::now());
            return wait_exit_blocking(fd, left);
        }
    }
}

/// Whether process `pid` has a handler for `sig` now (`SigCgt` of its status); None when the
/// status cannot be read or parsed.
fn catches(pid: i32, sig: i32) -> Option<bool> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    sig_caught(&status, sig)
}

/// Whether `SigCgt` in a `/proc/<pid>/status` text has the bit of `sig` (bit `sig - 1`).
fn sig_caught(status: &str, sig: i32) -> Option<bool> {
    let mask = status
        .lines()
        .find_map(|l| l.strip_prefix("SigCgt:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())?;
    let bit = u32::try_from(sig).ok()?.checked_sub(1)?;
    Some(bit < 64 && mask & (1 << bit) != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATUS: &str = "Name:\tsh\nSigQ:\t0/63432\nSigPnd:\t0000000000000000\n\
        SigBlk:\t0000000000000000\nSigIgn:\t0000000000000004\nSigCgt:\t0000000000014002\n";

    #[test]
    fn sig_cgt_bits_are_read() {
        // 0x14002: SIGINT (2), SIGTERM (15), SIGCHLD (17).
        assert_eq!(sig_caught(STATUS, libc::SIGINT), Some(true));
        assert_eq!(sig_caught(STATUS, libc::SIGTERM), Some(true));
        assert_eq!(sig_caught(STATUS, libc::SIGCHLD), Some(true));
        assert_eq!(sig_caught(STATUS, libc::SIGHUP), Some(false));
        assert_eq!(sig_caught(STATUS, libc::SIGQUIT), Some(false));
        assert_eq!(sig_caught(STATUS, 64), Some(false));
        assert_eq!(sig_caught(STATUS, 65), Some(false));
        assert_eq!(sig_caught(STATUS, 0), None);
        assert_eq!(sig_caught(STATUS, -9), None);
        assert_eq!(sig_caught("Name:\tsh\n", libc::SIGTERM), None);
        assert_eq!(sig_caught("SigCgt:\tzz\n", libc::SIGTERM), None);
    }

    /// A real process that ignores TERM for its first 200 ms (as an init without a handler
    /// does), then catches it: the TERM sent at once is lost, the second one lands.
    #[test]
    fn a_handler_installed_late_gets_the_signal() {
        use std::os::unix::process::ExitStatusExt;
        let script = "trap '' TERM; sleep 0.2; trap 'exit 7' TERM; while :; do sleep 0.02; done";
        let mut child = std::process::Command::new("sh")
            .args(["-c", script])
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        let fd = crate::sandbox::process::ProcRef::of(pid)
            .unwrap()
            .pidfd()
            .unwrap()
            .unwrap();
        // Until the shell ignores TERM, the signal would kill it (it is no init).
        let ignoring = Instant::now() + Duration::from_secs(10);
        while std::fs::read_to_string(format!("/proc/{pid}/status"))
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix("SigIgn:"))
            .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
            .is_none_or(|m| m & (1 << (libc::SIGTERM - 1)) == 0)
        {
            assert!(Instant::now() < ignoring, "the shell never ignored TERM");
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(catches(pid, libc::SIGTERM), Some(false));
        let t0 = Instant::now();
        let delivered = deliver(&fd, pid, libc::SIGTERM, Duration::from_secs(20));
        let took = t0.elapsed();
        // Killed (a no-op if it has exited) so that a failure leaves no process behind.
        let _ = child.kill();
        let status = child.wait().unwrap();
        assert!(delivered.unwrap(), "not gone after {took:?}");
        assert_eq!((status.code(), status.signal()), (Some(7), None));
        assert!(took < Duration::from_secs(5), "took {took:?}");
    }
}
