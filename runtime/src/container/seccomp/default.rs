//! RuntimeDefault: containerd's default profile, rule for rule (the comparison test below
//! keeps it so). An allow-list; everything else fails with EPERM. What a capability of the
//! container's bounding set makes possible (mount, unshare, setns, ptrace, module loading,
//! clock setting, …) is allowed only with that capability; `clone` without CAP_SYS_ADMIN only
//! when it asks for no new namespace, and `clone3` (whose flags live in memory a filter cannot
//! read) then fails with ENOSYS, so that libc falls back to `clone`.

use serde_json::{Value, json};

/// Allowed whatever the capabilities. Names an architecture lacks are skipped when compiled.
const ALLOWED: &str = "\
    accept accept4 access adjtimex alarm bind brk cachestat capget capset chdir chmod chown \
    chown32 clock_adjtime clock_adjtime64 clock_getres clock_getres_time64 clock_gettime \
    clock_gettime64 clock_nanosleep clock_nanosleep_time64 close close_range connect \
    copy_file_range creat dup dup2 dup3 epoll_create epoll_create1 epoll_ctl epoll_ctl_old \
    epoll_pwait epoll_pwait2 epoll_wait epoll_wait_old eventfd eventfd2 execve execveat exit \
    exit_group faccessat faccessat2 fadvise64 fadvise64_64 fallocate fanotify_mark fchdir \
    fchmod fchmodat fchmodat2 fchown fchown32 fchownat fcntl fcntl64 fdatasync fgetxattr \
    flistxattr flock fork fremovexattr fsetxattr fstat fstat64 fstatat64 fstatfs fstatfs64 \
    fsync ftruncate ftruncate64 futex futex_requeue futex_time64 futex_wait futex_waitv \
    futex_wake futimesat getcpu getcwd getdents getdents64 getegid getegid32 geteuid \
    geteuid32 getgid getgid32 getgroups getgroups32 getitimer getpeername getpgid getpgrp \
    getpid getppid getpriority getrandom getresgid getresgid32 getresuid getresuid32 \
    getrlimit get_robust_list getrusage getsid getsockname getsockopt get_thread_area gettid \
    gettimeofday getuid getuid32 getxattr getxattrat inotify_add_watch inotify_init \
    inotify_init1 inotify_rm_watch io_cancel ioctl io_destroy io_getevents io_pgetevents \
    io_pgetevents_time64 ioprio_get ioprio_set io_setup io_submit ipc kill landlock_add_rule \
    landlock_create_ruleset landlock_restrict_self lchown lchown32 lgetxattr link linkat \
    listen listmount listxattr listxattrat llistxattr _llseek lremovexattr lseek lsetxattr \
    lsm_get_self_attr lsm_list_modules lsm_set_self_attr lstat lstat64 madvise membarrier \
    memfd_create memfd_secret mincore mkdir mkdirat mknod mknodat mlock mlock2 mlockall \
    map_shadow_stack mmap mmap2 mprotect mq_getsetattr mq_notify mq_open mq_timedreceive \
    mq_timedreceive_time64 mq_timedsend mq_timedsend_time64 mq_unlink mremap mseal msgctl \
    msgget msgrcv msgsnd msync munlock munlockall munmap name_to_handle_at nanosleep \
    newfstatat _newselect open openat openat2 pause pidfd_open pidfd_send_signal pipe pipe2 \
    pkey_alloc pkey_free pkey_mprotect poll ppoll ppoll_time64 prctl pread64 preadv preadv2 \
    prlimit64 process_mrelease pselect6 pselect6_time64 pwrite64 pwritev pwritev2 read \
    readahead readlink readlinkat readv recv recvfrom recvmmsg recvmmsg_time64 recvmsg \
    remap_file_pages removexattr removexattrat rename renameat renameat2 restart_syscall \
    rmdir rseq rt_sigaction rt_sigpending rt_sigprocmask rt_sigqueueinfo rt_sigreturn \
    rt_sigsuspend rt_sigtimedwait rt_sigtimedwait_time64 rt_tgsigqueueinfo sched_getaffinity \
    sched_getattr sched_getparam sched_get_priority_max sched_get_priority_min \
    sched_getscheduler sched_rr_get_interval sched_rr_get_interval_time64 sched_setaffinity \
    sched_setattr sched_setparam sched_setscheduler sched_yield seccomp select semctl semget \
    semop semtimedop semtimedop_time64 send sendfile sendfile64 sendmmsg sendmsg sendto \
    setfsgid setfsgid32 setfsuid setfsuid32 setgid setgid32 setgroups setgroups32 setitimer \
    setpgid setpriority setregid setregid32 setresgid setresgid32 setresuid setresuid32 \
    setreuid setreuid32 setrlimit set_robust_list setsid setsockopt set_thread_area \
    set_tid_address setuid setuid32 setxattr setxattrat shmat shmctl shmdt shmget shutdown \
    sigaltstack signalfd signalfd4 sigprocmask sigreturn socketcall socketpair splice stat \
    stat64 statfs statfs64 statmount statx symlink symlinkat sync sync_file_range syncfs \
    sysinfo tee tgkill time timer_create timer_delete timer_getoverrun timer_gettime \
    timer_gettime64 timer_settime timer_settime64 timerfd_create timerfd_gettime \
    timerfd_gettime64 timerfd_settime timerfd_settime64 times tkill truncate truncate64 \
    ugetrlimit umask uname unlink unlinkat uretprobe utime utimensat utimensat_time64 utimes \
    vfork vmsplice wait4 waitid waitpid write writev";

/// containerd allows these from kernel 4.8 on (from there, seccomp checks a syscall again
/// after a tracer changed it, so tracing cannot get around the filter); peapod needs a newer
/// kernel anyway.
const TRACING: &str = "process_vm_readv process_vm_writev ptrace";

/// Allowed on this architecture only.
#[cfg(target_arch = "x86_64")]
const ARCH: &str = "arch_prctl modify_ldt";
#[cfg(target_arch = "aarch64")]
const ARCH: &str =
    "arm_fadvise64_64 arm_sync_file_range sync_file_range2 breakpoint cacheflush set_tls";
#[cfg(target_arch = "riscv64")]
const ARCH: &str = "riscv_flush_icache riscv_hwprobe";

/// Allowed when the container's bounding set holds the capability.
const BY_CAPABILITY: &[(&str, &str)] = &[
    ("CAP_DAC_READ_SEARCH", "open_by_handle_at"),
    (
        "CAP_SYS_ADMIN",
        "bpf clone clone3 fanotify_init fsconfig fsmount fsopen fspick lookup_dcookie mount \
         mount_setattr move_mount open_tree perf_event_open quotactl quotactl_fd setdomainname \
         sethostname setns syslog umount umount2 unshare",
    ),
    ("CAP_SYS_BOOT", "reboot"),
    ("CAP_SYS_CHROOT", "chroot"),
    ("CAP_SYS_MODULE", "delete_module init_module finit_module"),
    ("CAP_SYS_PACCT", "acct"),
    (
        "CAP_SYS_PTRACE",
        "kcmp pidfd_getfd process_madvise process_vm_readv process_vm_writev ptrace",
    ),
    ("CAP_SYS_RAWIO", "iopl ioperm"),
    (
        "CAP_SYS_TIME",
        "settimeofday stime clock_settime clock_settime64",
    ),
    ("CAP_SYS_TTY_CONFIG", "vhangup"),
    (
        "CAP_SYS_NICE",
        "get_mempolicy mbind set_mempolicy set_mempolicy_home_node",
    ),
    ("CAP_SYSLOG", "syslog"),
    ("CAP_BPF", "bpf"),
    ("CAP_PERFMON", "perf_event_open"),
];

/// The `clone` flags that make a namespace.
const NAMESPACE_FLAGS: u64 = (libc::CLONE_NEWNS
    | libc::CLONE_NEWCGROUP
    | libc::CLONE_NEWUTS
    | libc::CLONE_NEWIPC
    | libc::CLONE_NEWUSER
    | libc::CLONE_NEWPID
    | libc::CLONE_NEWNET) as u64;

fn allow_if(name: &str, index: u8, op: &str, value: u64) -> Value {
    json!({"names": [name], "action": "SCMP_ACT_ALLOW",
           "args": [{"index": index, "value": value, "op": op}]})
}

/// RuntimeDefault for a container whose bounding set is `caps` (names such as
/// "CAP_SYS_ADMIN"), as an OCI seccomp profile.
pub fn runtime_default(caps: &[String]) -> String {
    let has = |c: &str| caps.iter().any(|x| x == c);
    let mut names: Vec<&str> = ALLOWED.split_whitespace().collect();
    names.extend(TRACING.split_whitespace());
    names.extend(ARCH.split_whitespace());
    for (cap, calls) in BY_CAPABILITY {
        if has(cap) {
            names.extend(calls.split_whitespace());
        }
    }
    names.sort_unstable();
    names.dedup();
    let mut rules = vec![json!({"names": names, "action": "SCMP_ACT_ALLOW"})];
    // socket(2) for every address family but AF_ALG and AF_VSOCK (the two kernel crypto and
    // VM-socket interfaces), as ranges that leave exactly those two out.
    let (alg, vsock) = (libc::AF_ALG as u64, libc::AF_VSOCK as u64);
    rules.push(allow_if("socket", 0, "SCMP_CMP_LT", alg));
    rules.push(allow_if("socket", 0, "SCMP_CMP_EQ", alg + 1));
    rules.push(allow_if("socket", 0, "SCMP_CMP_GT", vsock));
    // personality(2): Linux, PER_LINUX32, UNAME26 variants, and the query.
    for p in [0, 0x8, 0x20000, 0x20008, 0xffff_ffff] {
        rules.push(allow_if("personality", 0, "SCMP_CMP_EQ", p));
    }
    if !has("CAP_SYS_ADMIN") {
        rules.push(json!({"names": ["clone"], "action": "SCMP_ACT_ALLOW",
            "args": [{"index": 0, "value": NAMESPACE_FLAGS, "valueTwo": 0,
                      "op": "SCMP_CMP_MASKED_EQ"}]}));
        rules.push(json!({"names": ["clone3"], "action": "SCMP_ACT_ERRNO",
                          "errnoRet": libc::ENOSYS}));
    }
    json!({"defaultAction": "SCMP_ACT_ERRNO", "syscalls": rules}).to_string()
}

#[cfg(test)]
#[path = "default_tests.rs"]
mod tests;
