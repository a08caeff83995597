//! cgroup v2 has no `devices.*` files: a BPF_CGROUP_DEVICE program, attached to the
//! container's cgroup, answers each open and mknod (1: allow, 0: EPERM). The program is the
//! small one runc emits, assembled here: load the context (type, access, major, minor), then
//! one block per exception of the [`Effective`] rules that returns the exception's verdict
//! when it matches, and the default at the end. Loaded with `bpf(BPF_PROG_LOAD)`, attached
//! with `bpf(BPF_PROG_ATTACH, BPF_F_ALLOW_MULTI)`: the programs of the parent cgroups run
//! too and all must allow. The cgroup keeps the program once our fd is closed.
// bpf(2) has no wrapper in libc or nix; each block says why it holds.
#![allow(unsafe_code)]

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

use super::{Access, DevType, DeviceError, DeviceRule, Effective};

// From linux/bpf.h.
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_ATTACH: libc::c_long = 8;
const BPF_PROG_TYPE_CGROUP_DEVICE: u32 = 15;
const BPF_CGROUP_DEVICE: u32 = 6;
const BPF_F_ALLOW_MULTI: u32 = 1 << 1;
/// `struct bpf_cgroup_dev_ctx`'s device types.
const DEV_BLOCK: i32 = 1;
const DEV_CHAR: i32 = 2;

/// One `struct bpf_insn`: opcode, dst (low nibble) and src (high nibble) registers, offset,
/// immediate.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Insn {
    code: u8,
    regs: u8,
    off: i16,
    imm: i32,
}

// Opcodes (class | op | source).
const LDX_W: u8 = 0x01 | 0x60; // BPF_LDX | BPF_MEM | BPF_W
const MOV_X: u8 = 0x07 | 0xb0 | 0x08; // BPF_ALU64 | BPF_MOV | BPF_X
const MOV_K: u8 = 0x07 | 0xb0; // BPF_ALU64 | BPF_MOV | BPF_K
const AND_K: u8 = 0x07 | 0x50; // BPF_ALU64 | BPF_AND | BPF_K
const RSH_K: u8 = 0x07 | 0x70; // BPF_ALU64 | BPF_RSH | BPF_K
const JEQ_K: u8 = 0x05 | 0x10; // BPF_JMP | BPF_JEQ | BPF_K
const JNE_K: u8 = 0x05 | 0x50; // BPF_JMP | BPF_JNE | BPF_K
const EXIT: u8 = 0x05 | 0x90; // BPF_JMP | BPF_EXIT

const fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn {
        code,
        regs: dst | (src << 4),
        off,
        imm,
    }
}

// Registers: r1 the context; r2 type, r3 access, r4 major, r5 minor; r6 scratch; r0 verdict.
const CTX: u8 = 1;
const TYPE: u8 = 2;
const ACCESS: u8 = 3;
const MAJOR: u8 = 4;
const MINOR: u8 = 5;
const SCRATCH: u8 = 6;

/// The program for `e`.
pub fn program(e: &Effective) -> Vec<Insn> {
    let mut p = vec![
        insn(LDX_W, TYPE, CTX, 0, 0), // access_type: access << 16 | type
        insn(MOV_X, ACCESS, TYPE, 0, 0),
        insn(AND_K, TYPE, 0, 0, 0xffff),
        insn(RSH_K, ACCESS, 0, 0, 16),
        insn(LDX_W, MAJOR, CTX, 4, 0),
        insn(LDX_W, MINOR, CTX, 8, 0),
    ];
    for x in &e.exceptions {
        p.extend(block(x));
    }
    p.push(insn(MOV_K, 0, 0, 0, i32::from(e.default_allow)));
    p.push(insn(EXIT, 0, 0, 0, 0));
    p
}

/// Returns `x`'s verdict when the device and access match it, else falls through. As in the
/// v1 kernel code: an allow exception must cover the whole access asked for, a deny exception
/// matches when it covers any of it.
fn block(x: &DeviceRule) -> Vec<Insn> {
    // Jumps are filled in with "to the end" once the block's length is known.
    const SKIP: i16 = i16::MIN;
    let mut b = Vec::new();
    match x.kind {
        DevType::Block => b.push(insn(JNE_K, TYPE, 0, SKIP, DEV_BLOCK)),
        DevType::Char => b.push(insn(JNE_K, TYPE, 0, SKIP, DEV_CHAR)),
        DevType::All => {}
    }
    if x.access != Access::ALL {
        let bits = i32::from(x.access.bits());
        b.push(insn(MOV_X, SCRATCH, ACCESS, 0, 0));
        if x.allow {
            b.push(insn(AND_K, SCRATCH, 0, 0, !bits & 7));
            b.push(insn(JNE_K, SCRATCH, 0, SKIP, 0));
        } else {
            b.push(insn(AND_K, SCRATCH, 0, 0, bits));
            b.push(insn(JEQ_K, SCRATCH, 0, SKIP, 0));
        }
    }
    if let Some(major) = x.major {
        b.push(insn(JNE_K, MAJOR, 0, SKIP, major as i32));
    }
    if let Some(minor) = x.minor {
        b.push(insn(JNE_K, MINOR, 0, SKIP, minor as i32));
    }
    b.push(insn(MOV_K, 0, 0, 0, i32::from(x.allow)));
    b.push(insn(EXIT, 0, 0, 0, 0));
    let len = b.len();
    for (i, ins) in b.iter_mut().enumerate() {
        if ins.off == SKIP {
            ins.off = (len - i - 1) as i16;
        }
    }
    b
}

/// `union bpf_attr` for BPF_PROG_LOAD, up to `expected_attach_type` (the kernel takes a
/// shorter attr and reads the rest as zero).
#[repr(C)]
#[derive(Default)]
struct ProgLoad {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

/// `union bpf_attr` for BPF_PROG_ATTACH.
#[repr(C)]
struct ProgAttach {
    target_fd: u32,
    attach_bpf_fd: u32,
    attach_type: u32,
    attach_flags: u32,
    replace_bpf_fd: u32,
}

/// Loads the program; on a verifier refusal, loads it again with a log to say why.
fn load(insns: &[Insn], cgroup: &Path) -> Result<OwnedFd, DeviceError> {
    let license = CString::new("Apache-2.0").expect("no NUL");
    let mut log = vec![0u8; 64 << 10];
    let mut name = [0u8; 16];
    name[..7].copy_from_slice(b"peapod\0");
    for with_log in [false, true] {
        let mut attr = ProgLoad {
            prog_type: BPF_PROG_TYPE_CGROUP_DEVICE,
            insn_cnt: insns.len() as u32,
            insns: insns.as_ptr() as u64,
            license: license.as_ptr() as u64,
            prog_name: name,
            expected_attach_type: BPF_CGROUP_DEVICE,
            ..Default::default()
        };
        if with_log {
            attr.log_level = 1;
            attr.log_size = log.len() as u32;
            attr.log_buf = log.as_mut_ptr() as u64;
        }
        // SAFETY: `attr` is a valid bpf_attr prefix of the size passed; the instructions,
        // the license and the log buffer it points to outlive the call, and the log buffer
        // is as long as `log_size` says.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_PROG_LOAD,
                &attr as *const ProgLoad,
                std::mem::size_of::<ProgLoad>(),
            )
        };
        if fd >= 0 {
            // SAFETY: the kernel just returned this fd to us; nothing else owns it.
            return Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) });
        }
        let source = std::io::Error::last_os_error();
        let refused = matches!(source.raw_os_error(), Some(libc::EINVAL | libc::EACCES));
        if with_log || !refused {
            let text = String::from_utf8_lossy(&log);
            let text = text.trim_end_matches('\0').trim();
            return Err(DeviceError::Bpf {
                what: "load",
                path: cgroup.to_owned(),
                log: if text.is_empty() {
                    String::new()
                } else {
                    format!(" (verifier: {text})")
                },
                source,
            });
        }
    }
    unreachable!("the second try returns")
}

/// Loads the program of `e` and attaches it to the cgroup at `dir`.
pub fn attach(dir: &Path, e: &Effective) -> Result<(), DeviceError> {
    let err = |what: &'static str, source: std::io::Error| DeviceError::Bpf {
        what,
        path: dir.to_owned(),
        log: String::new(),
        source,
    };
    let prog = load(&program(e), dir)?;
    let cgroup = std::fs::File::open(dir).map_err(|e| err("open the cgroup for", e))?;
    let attr = ProgAttach {
        target_fd: cgroup.as_raw_fd() as u32,
        attach_bpf_fd: prog.as_raw_fd() as u32,
        attach_type: BPF_CGROUP_DEVICE,
        attach_flags: BPF_F_ALLOW_MULTI,
        replace_bpf_fd: 0,
    };
    // SAFETY: `attr` is a valid bpf_attr prefix of the size passed, naming two fds we hold
    // open for the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_ATTACH,
            &attr as *const ProgAttach,
            std::mem::size_of::<ProgAttach>(),
        )
    };
    if r < 0 {
        return Err(err("attach", std::io::Error::last_os_error()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::{RUNC_DEFAULTS, cri_rules};
    use super::*;

    /// Runs the program on one device access, as the kernel would.
    fn run(p: &[Insn], kind: i32, access: u8, major: u32, minor: u32) -> u64 {
        let mut r = [0u64; 11];
        let ctx = [(u32::from(access) << 16) | kind as u32, major, minor];
        let mut pc = 0usize;
        loop {
            let i = p[pc];
            let (dst, src) = ((i.regs & 0xf) as usize, (i.regs >> 4) as usize);
            let imm = i.imm as i64 as u64;
            let jump = |taken: bool| if taken { i.off as isize } else { 0 };
            let mut next = 1isize;
            match i.code {
                LDX_W => {
                    assert_eq!(src, 1);
                    r[dst] = u64::from(ctx[i.off as usize / 4]);
                }
                MOV_X => r[dst] = r[src],
                MOV_K => r[dst] = imm,
                AND_K => r[dst] &= imm,
                RSH_K => r[dst] >>= imm,
                JEQ_K => next += jump(r[dst] == imm),
                JNE_K => next += jump(r[dst] != imm),
                EXIT => return r[0],
                c => panic!("unknown opcode {c:#x}"),
            }
            pc = (pc as isize + next) as usize;
        }
    }

    const R: u8 = 2;
    const W: u8 = 4;
    const M: u8 = 1;

    #[test]
    fn the_default_program_allows_the_list_and_nothing_else() {
        let p = program(&Effective::new(&cri_rules(false, &[])));
        // Prologue 6, two mknod-only blocks of 6, eight devices of 5, pts 4, default 2.
        assert_eq!(p.len(), 6 + 12 + 40 + 4 + 2);
        assert_eq!(RUNC_DEFAULTS.len(), 11);
        // mknod anything, open nothing off the list.
        assert_eq!(run(&p, DEV_BLOCK, M, 7, 3), 1);
        assert_eq!(run(&p, DEV_BLOCK, R, 7, 3), 0);
        assert_eq!(run(&p, DEV_BLOCK, W, 7, 3), 0);
        assert_eq!(run(&p, DEV_CHAR, R | W, 10, 232), 0);
        assert_eq!(run(&p, DEV_CHAR, M | R, 10, 232), 0);
        for (major, minor) in [(1, 3), (1, 5), (1, 7), (1, 8), (1, 9), (5, 0), (5, 2)] {
            assert_eq!(run(&p, DEV_CHAR, R | W, major, minor), 1, "{major}:{minor}");
            assert_eq!(run(&p, DEV_BLOCK, R, major, minor), 0, "b {major}:{minor}");
        }
        assert_eq!(run(&p, DEV_CHAR, R | W, 136, 42), 1);
        assert_eq!(run(&p, DEV_CHAR, R | W, 10, 200), 1);
        assert_eq!(run(&p, DEV_CHAR, R, 1, 1), 0);
        let all = program(&Effective::new(&cri_rules(true, &[])));
        assert_eq!(all.len(), 8);
        assert_eq!(run(&all, DEV_BLOCK, R | W, 7, 3), 1);
    }

    #[test]
    fn a_granted_device_opens_with_its_access_only() {
        let granted = DeviceRule::allow(DevType::Block, Some(7), Some(3), R);
        let p = program(&Effective::new(&cri_rules(false, &[granted])));
        assert_eq!(run(&p, DEV_BLOCK, R, 7, 3), 1);
        assert_eq!(run(&p, DEV_BLOCK, R | W, 7, 3), 0);
        assert_eq!(run(&p, DEV_BLOCK, W, 7, 3), 0);
        assert_eq!(run(&p, DEV_BLOCK, R, 7, 4), 0);
        assert_eq!(run(&p, DEV_CHAR, R, 7, 3), 0);
    }

    #[test]
    fn deny_exceptions_on_allow_all_match_any_access_they_name() {
        let deny = DeviceRule {
            allow: false,
            ..DeviceRule::allow(DevType::Char, Some(10), None, W)
        };
        let allow_all = DeviceRule::allow(DevType::All, None, None, 7);
        let p = program(&Effective::new(&[allow_all, deny]));
        assert_eq!(run(&p, DEV_CHAR, R | W, 10, 1), 0);
        assert_eq!(run(&p, DEV_CHAR, R, 10, 1), 1);
        assert_eq!(run(&p, DEV_CHAR, W, 11, 1), 1);
        assert_eq!(run(&p, DEV_BLOCK, W, 10, 1), 1);
    }
}
