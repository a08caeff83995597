//! `peapod-probe newns CALL [FLAGS]`: asks the kernel for new namespaces the way an escape
//! would, and prints what it answered: `ok`, or `errno <n>`.
//!
//! CALL is `clone`, `clone3` or `unshare` (FLAGS: namespaces joined by commas, from user, net,
//! mnt, pid, ipc, uts, cgroup; none: a plain fork), or `thread` (a std thread, which glibc
//! starts with clone3 and, on ENOSYS, with clone).
#![allow(unsafe_code)]

use nix::libc;

fn flags(list: &str) -> Result<u64, String> {
    let mut f = 0;
    for name in list.split(',').filter(|n| !n.is_empty()) {
        f |= match name {
            "user" => libc::CLONE_NEWUSER,
            "net" => libc::CLONE_NEWNET,
            "mnt" => libc::CLONE_NEWNS,
            "pid" => libc::CLONE_NEWPID,
            "ipc" => libc::CLONE_NEWIPC,
            "uts" => libc::CLONE_NEWUTS,
            "cgroup" => libc::CLONE_NEWCGROUP,
            other => return Err(format!("unknown namespace {other:?}")),
        };
    }
    Ok(f as u64)
}

/// The child of a successful clone: gone at once, without running anything of the parent's.
fn child_exits() -> ! {
    // SAFETY: _exit ends the process without unwinding or running atexit handlers, so the
    // child touches none of the parent's state (it shares no memory: no CLONE_VM).
    unsafe { libc::_exit(0) }
}

/// Waits for a child made by clone/clone3 (both ask for SIGCHLD, so it is an ordinary child).
fn reap(pid: libc::c_long) {
    let pid = nix::unistd::Pid::from_raw(pid as libc::pid_t);
    let _ = nix::sys::wait::waitpid(pid, None);
}

fn outcome(rc: libc::c_long) -> String {
    match rc {
        -1 => format!(
            "errno {}",
            std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
        ),
        0 => child_exits(),
        pid => {
            reap(pid);
            "ok".to_owned()
        }
    }
}

pub fn run(args: &[String]) -> Result<String, String> {
    let (call, list) = match args {
        [call] => (call.as_str(), ""),
        [call, list] => (call.as_str(), list.as_str()),
        _ => return Err("want CALL [FLAGS]".into()),
    };
    let f = flags(list)?;
    Ok(match call {
        "clone" => {
            // SAFETY: raw clone without CLONE_VM and with a null stack behaves like fork: the
            // child gets a copy of the address space and runs on its copy of this stack; it
            // only calls _exit (see outcome).
            let rc = unsafe {
                libc::syscall(
                    libc::SYS_clone,
                    f | libc::SIGCHLD as u64,
                    0usize,
                    0usize,
                    0usize,
                    0usize,
                )
            };
            outcome(rc)
        }
        "clone3" => {
            // struct clone_args (version 2, 88 bytes): flags, pidfd, child_tid, parent_tid,
            // exit_signal, stack, stack_size, tls, set_tid, set_tid_size, cgroup.
            let mut args = [0u64; 11];
            args[0] = f;
            args[4] = libc::SIGCHLD as u64;
            // SAFETY: `args` has clone_args' layout (eleven u64s), is the size passed and lives
            // across the call; without CLONE_VM or a stack the child is a fork-like copy that
            // only calls _exit.
            let rc = unsafe {
                libc::syscall(
                    libc::SYS_clone3,
                    args.as_mut_ptr(),
                    std::mem::size_of_val(&args),
                )
            };
            outcome(rc)
        }
        "unshare" => {
            match nix::sched::unshare(nix::sched::CloneFlags::from_bits_retain(f as i32)) {
                Ok(()) => "ok".to_owned(),
                Err(e) => format!("errno {}", e as i32),
            }
        }
        "thread" => match std::thread::Builder::new().spawn(|| 7).map(|t| t.join()) {
            Ok(Ok(7)) => "ok".to_owned(),
            Ok(_) => return Err("the thread failed".into()),
            Err(e) => format!("errno {}", e.raw_os_error().unwrap_or(0)),
        },
        other => return Err(format!("unknown call {other:?}")),
    })
}
