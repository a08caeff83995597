//! `peapod-pause`: the process that holds a pod's namespaces.
//!
//! The daemon spawns it already inside the pod's fresh net/ipc/uts (and
//! sometimes pid) namespaces; as long as it lives, those namespaces live.
//! It does three things and nothing else:
//!
//! * **Reaps zombies.** When the pod shares a PID namespace this process is
//!   its PID 1, so every orphan in the pod is reparented to it. If it never
//!   called `wait`, exited orphans would pile up as zombies.
//! * **Exits 0 on SIGTERM or SIGINT**, so the daemon can stop the pod cleanly.
//! * **`-v`** prints the version; any other argument is a usage error (exit 2).
//!
//! Why `rt_sigtimedwait` instead of signal handlers: the kernel drops signals
//! sent to the PID 1 of a pid namespace whose disposition is `SIG_DFL`, so
//! default-action termination never happens for us. A signal that is *blocked*
//! is never dropped, though, only queued (whatever its disposition, even an
//! inherited `SIG_IGN`). So we block SIGTERM, SIGINT and SIGCHLD and collect
//! them synchronously with `rt_sigtimedwait`: no handlers, no async-signal
//! safety concerns, one straight-line loop.
//!
//! Why `no_std`/`no_main`: the binary must be static and tiny (≤ 32 KiB on
//! disk, ≤ 128 KiB RSS). Without libc we enter at `_start`, read argc/argv
//! off the initial stack and talk to the kernel with raw syscalls. The linker
//! flags for that (`-nostartfiles -nostdlib -static -no-pie`) come from
//! `build.rs`; panics abort via the workspace's `panic = "abort"` profiles.
#![no_std]
#![no_main]
// There is no libc: the entry point, raw syscalls and reading the initial
// stack all need `unsafe`. Each use carries a SAFETY comment.
#![allow(unsafe_code)]

use core::arch::naked_asm;

// Signal numbers, typed like the syscall return value they are matched with.
const SIGINT: isize = 2;
const SIGTERM: isize = 15;
const SIGCHLD: isize = 17;
const SIG_BLOCK: usize = 0;
const WNOHANG: usize = 1;
/// Also reap children whose exit signal is not SIGCHLD (clone(2) callers).
const WALL: usize = 0x4000_0000;

const VERSION: &[u8] = concat!("peapod-pause ", env!("CARGO_PKG_VERSION"), "\n").as_bytes();
const USAGE: &[u8] = b"usage: peapod-pause [-v]\n";

#[cfg(target_arch = "x86_64")]
mod nr {
    pub const WRITE: usize = 1;
    pub const RT_SIGPROCMASK: usize = 14;
    pub const WAIT4: usize = 61;
    pub const RT_SIGTIMEDWAIT: usize = 128;
    pub const EXIT_GROUP: usize = 231;
}

#[cfg(target_arch = "aarch64")]
mod nr {
    pub const WRITE: usize = 64;
    pub const RT_SIGPROCMASK: usize = 135;
    pub const WAIT4: usize = 260;
    pub const RT_SIGTIMEDWAIT: usize = 137;
    pub const EXIT_GROUP: usize = 94;
}

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
compile_error!("peapod-pause supports x86_64 and aarch64 only");

/// Raw 4-argument Linux syscall; returns the kernel's value (`-errno` on error).
///
/// # Safety
/// The caller must pass a valid syscall number and arguments that satisfy
/// that syscall's contract (in particular, pointers valid for the access).
#[cfg(target_arch = "x86_64")]
unsafe fn syscall4(n: usize, a: usize, b: usize, c: usize, d: usize) -> isize {
    let ret: isize;
    // SAFETY: the x86_64 syscall ABI: number in rax, args in rdi/rsi/rdx/r10,
    // result in rax; the instruction clobbers rcx and r11 and nothing else.
    // Argument validity is the caller's obligation (see `# Safety`).
    unsafe {
        core::arch::asm!(
            "syscall",
            inlateout("rax") n.cast_signed() => ret,
            in("rdi") a, in("rsi") b, in("rdx") c, in("r10") d,
            lateout("rcx") _, lateout("r11") _,
            options(nostack),
        );
    }
    ret
}

/// Raw 4-argument Linux syscall; returns the kernel's value (`-errno` on error).
///
/// # Safety
/// As for the x86_64 version.
#[cfg(target_arch = "aarch64")]
unsafe fn syscall4(n: usize, a: usize, b: usize, c: usize, d: usize) -> isize {
    let ret: isize;
    // SAFETY: the aarch64 syscall ABI: number in x8, args in x0..x3, result in
    // x0; `svc 0` clobbers no other registers. Argument validity is the
    // caller's obligation.
    unsafe {
        core::arch::asm!(
            "svc 0",
            in("x8") n,
            inlateout("x0") a.cast_signed() => ret,
            in("x1") b, in("x2") c, in("x3") d,
            options(nostack),
        );
    }
    ret
}

fn write(fd: usize, msg: &[u8]) {
    // Best effort: if stdout/stderr is gone there is nobody to tell.
    // SAFETY: `msg` is a live slice, so the kernel reads `msg.len()` valid bytes.
    unsafe { syscall4(nr::WRITE, fd, msg.as_ptr() as usize, msg.len(), 0) };
}

fn exit(code: usize) -> ! {
    // SAFETY: exit_group takes no pointers and ends every thread of the
    // process; the kernel never returns from it, so the end is unreachable.
    unsafe {
        syscall4(nr::EXIT_GROUP, code, 0, 0, 0);
        core::hint::unreachable_unchecked()
    }
}

/// Reap every child that has already exited; stop at 0 (none ready) or
/// an error (ECHILD: no children at all).
fn reap() {
    // SAFETY: null status and rusage pointers are allowed and mean "discard".
    while unsafe { syscall4(nr::WAIT4, usize::MAX, 0, WNOHANG | WALL, 0) } > 0 {}
}

fn run() -> ! {
    // The kernel's sigset_t is one 64-bit word; signal n is bit n-1.
    let set: u64 = 1 << (SIGINT - 1) | 1 << (SIGTERM - 1) | 1 << (SIGCHLD - 1);
    let set_ptr = (&raw const set).addr();
    // SAFETY: `set` is a live 8-byte sigset and we pass its size (8); the old
    // mask pointer is null, which the kernel accepts.
    if unsafe { syscall4(nr::RT_SIGPROCMASK, SIG_BLOCK, set_ptr, 0, 8) } < 0 {
        exit(1);
    }
    // A child may have exited before SIGCHLD was blocked.
    reap();
    loop {
        // SAFETY: `set` is a live 8-byte sigset; null siginfo and null
        // timeout are allowed (discard info, wait forever).
        let sig = unsafe { syscall4(nr::RT_SIGTIMEDWAIT, set_ptr, 0, 0, 8) };
        match sig {
            SIGTERM | SIGINT => exit(0),
            // SIGCHLD, or EINTR (e.g. after SIGSTOP/SIGCONT): reaping is harmless.
            _ => reap(),
        }
    }
}

/// Called from `_start` with a pointer to the initial stack: argc, then
/// argv[0..argc], NULL, envp...
extern "C" fn start(sp: *const usize) -> ! {
    // SAFETY: the kernel's process entry ABI puts argc at *sp, followed by
    // argc argv pointers to NUL-terminated strings; `_start` passes that
    // stack pointer unchanged.
    let (argc, argv) = unsafe { (*sp, sp.add(1).cast::<*const u8>()) };
    match argc {
        0 | 1 => run(),
        // SAFETY: argc == 2, so argv[1] is a valid pointer to a NUL-terminated
        // string; we read at most 3 bytes and stop at the first NUL.
        2 if unsafe { is_dash_v(*argv.add(1)) } => {
            write(1, VERSION);
            exit(0)
        }
        _ => {
            write(2, USAGE);
            exit(2)
        }
    }
}

/// Whether the NUL-terminated string at `arg` is exactly "-v".
///
/// # Safety
/// `arg` must point to a NUL-terminated string.
unsafe fn is_dash_v(arg: *const u8) -> bool {
    // SAFETY: each read happens only after the previous byte matched a non-NUL
    // character, so it stays within the string (up to its terminator).
    unsafe { *arg == b'-' && *arg.add(1) == b'v' && *arg.add(2) == 0 }
}

/// Process entry point. The stack pointer points at argc and is 16-byte
/// aligned; we hand it to `start`, clearing the frame pointer to end
/// backtraces here.
#[cfg(target_arch = "x86_64")]
// SAFETY: `_start` is the only symbol with that name in the binary (no crt1.o
// is linked), and its body is valid on the kernel's entry state: it never
// returns and calls `start` with an aligned stack.
#[unsafe(naked)]
#[unsafe(no_mangle)]
extern "C" fn _start() -> ! {
    naked_asm!("xor ebp, ebp", "mov rdi, rsp", "and rsp, -16", "call {}", "ud2", sym start)
}

/// Process entry point (aarch64): sp points at argc and is 16-byte aligned.
#[cfg(target_arch = "aarch64")]
// SAFETY: as for x86_64; `bl` keeps sp unchanged and `start` never returns.
#[unsafe(naked)]
#[unsafe(no_mangle)]
extern "C" fn _start() -> ! {
    naked_asm!("mov x29, xzr", "mov x30, xzr", "mov x0, sp", "bl {}", "brk #1", sym start)
}

#[panic_handler]
fn panic(_: &core::panic::PanicInfo) -> ! {
    exit(127)
}

/// The precompiled `core` is built for unwinding and its debug-build code
/// references this symbol. We never unwind (panic = "abort" and the panic
/// handler exits), so it is never called; it only has to exist for the linker.
// SAFETY: no other definition exists (neither std nor panic_unwind is linked),
// and the unwinder that would call it with its real signature is absent.
#[unsafe(no_mangle)]
extern "C" fn rust_eh_personality() {}
