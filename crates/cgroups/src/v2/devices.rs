//! v2 device access: cgroup v2 has no `devices.*` files; device access is
//! decided by a `BPF_PROG_TYPE_CGROUP_DEVICE` program attached to the
//! cgroup (kernel `Documentation/admin-guide/cgroup-v2.rst`, "Device
//! controller"), as runc and crun do. The program is assembled here from the
//! same [`DeviceRule`]s v1 writes, loaded with `bpf(BPF_PROG_LOAD)` and
//! attached with `bpf(BPF_PROG_ATTACH, BPF_CGROUP_DEVICE,
//! BPF_F_ALLOW_MULTI)`. It stays attached until the cgroup is removed; the
//! file descriptors are closed at once.
//!
//! The program reads `struct bpf_cgroup_dev_ctx { u32 access_type; u32
//! major; u32 minor; }` (access_type = access << 16 | type) and returns 1
//! for the first rule that matches, 0 (deny) otherwise.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

use crate::devices::{DeviceKind, DeviceRule};
use crate::CgroupError;

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_ATTACH: libc::c_long = 8;
const BPF_PROG_TYPE_CGROUP_DEVICE: u32 = 15;
const BPF_CGROUP_DEVICE: u32 = 6;
const BPF_F_ALLOW_MULTI: u32 = 2;

/// `BPF_DEVCG_DEV_*` and `BPF_DEVCG_ACC_*` from `linux/bpf.h`.
const DEV_BLOCK: i32 = 1;
const DEV_CHAR: i32 = 2;
const ACC_MKNOD: i32 = 1;
const ACC_READ: i32 = 2;
const ACC_WRITE: i32 = 4;

/// One eBPF instruction (`struct bpf_insn`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(C)]
pub(crate) struct Insn {
    code: u8,
    /// dst in the low nibble, src in the high one.
    regs: u8,
    off: i16,
    imm: i32,
}

const LDX_W: u8 = 0x61; // BPF_LDX | BPF_MEM | BPF_W
const AND_K: u8 = 0x57; // BPF_ALU64 | BPF_AND | BPF_K
const RSH_K: u8 = 0x77; // BPF_ALU64 | BPF_RSH | BPF_K
const MOV_K: u8 = 0xb7; // BPF_ALU64 | BPF_MOV | BPF_K
const MOV_X: u8 = 0xbf; // BPF_ALU64 | BPF_MOV | BPF_X
const JNE_K: u8 = 0x55; // BPF_JMP | BPF_JNE | BPF_K
const EXIT: u8 = 0x95; // BPF_JMP | BPF_EXIT

const fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn {
        code,
        regs: dst | (src << 4),
        off,
        imm,
    }
}

fn access_bits(access: &str) -> i32 {
    access.chars().fold(0, |a, c| {
        a | match c {
            'm' => ACC_MKNOD,
            'r' => ACC_READ,
            'w' => ACC_WRITE,
            _ => 0,
        }
    })
}

/// The program for "deny all but `rules`".
pub(crate) fn program(rules: &[DeviceRule]) -> Vec<Insn> {
    // r2 = type, r3 = access, r4 = major, r5 = minor.
    let mut p = vec![
        insn(LDX_W, 2, 1, 0, 0),
        insn(AND_K, 2, 0, 0, 0xffff),
        insn(LDX_W, 3, 1, 0, 0),
        insn(RSH_K, 3, 0, 0, 16),
        insn(LDX_W, 4, 1, 4, 0),
        insn(LDX_W, 5, 1, 8, 0),
    ];
    for rule in rules {
        // Jumps with off = i16::MAX are "to the next rule", patched below.
        let mut block = Vec::new();
        match rule.kind {
            DeviceKind::All => {}
            DeviceKind::Char => block.push(insn(JNE_K, 2, 0, i16::MAX, DEV_CHAR)),
            DeviceKind::Block => block.push(insn(JNE_K, 2, 0, i16::MAX, DEV_BLOCK)),
        }
        // Every requested access bit must be in the rule.
        block.push(insn(MOV_X, 1, 3, 0, 0));
        block.push(insn(AND_K, 1, 0, 0, !access_bits(rule.access) & 0x7));
        block.push(insn(JNE_K, 1, 0, i16::MAX, 0));
        if let Some(major) = rule.major {
            block.push(insn(JNE_K, 4, 0, i16::MAX, major as i32));
        }
        if let Some(minor) = rule.minor {
            block.push(insn(JNE_K, 5, 0, i16::MAX, minor as i32));
        }
        block.push(insn(MOV_K, 0, 0, 0, 1));
        block.push(insn(EXIT, 0, 0, 0, 0));
        let len = block.len();
        for (i, ins) in block.iter_mut().enumerate() {
            if ins.off == i16::MAX {
                ins.off = (len - i - 1) as i16;
            }
        }
        p.extend(block);
    }
    p.push(insn(MOV_K, 0, 0, 0, 0));
    p.push(insn(EXIT, 0, 0, 0, 0));
    p
}

/// `union bpf_attr` for BPF_PROG_LOAD, up to `expected_attach_type`.
#[repr(C)]
struct ProgLoadAttr {
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
struct ProgAttachAttr {
    target_fd: u32,
    attach_bpf_fd: u32,
    attach_type: u32,
    attach_flags: u32,
    replace_bpf_fd: u32,
}

fn bpf<T>(cmd: libc::c_long, attr: &T) -> nix::Result<libc::c_long> {
    // SAFETY: `attr` is a live, initialised `repr(C)` prefix of `union
    // bpf_attr` for `cmd`, passed with its exact size; the kernel copies it
    // and reads no further. Pointers inside it point to buffers the caller
    // keeps alive for the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *const T,
            std::mem::size_of::<T>() as libc::c_uint,
        )
    };
    nix::Error::result(rc)
}

/// Loads the program for `rules` and attaches it to the cgroup `dir`.
pub(crate) fn apply(dir: &Path, rules: &[DeviceRule]) -> Result<(), CgroupError> {
    let err = |step: &'static str| {
        move |source| CgroupError::DeviceFilter {
            path: dir.to_path_buf(),
            step,
            source,
        }
    };
    let insns = program(rules);
    let mut name = [0u8; 16];
    name[..12].copy_from_slice(b"isolab_devcg");
    let load = ProgLoadAttr {
        prog_type: BPF_PROG_TYPE_CGROUP_DEVICE,
        insn_cnt: insns.len() as u32,
        insns: insns.as_ptr() as u64,
        license: c"Apache-2.0".as_ptr() as u64,
        log_level: 0,
        log_size: 0,
        log_buf: 0,
        kern_version: 0,
        prog_flags: 0,
        prog_name: name,
        prog_ifindex: 0,
        expected_attach_type: 0,
    };
    let prog = bpf(BPF_PROG_LOAD, &load).map_err(err("load"))?;
    // SAFETY: a successful BPF_PROG_LOAD returns a new descriptor that
    // nothing else owns.
    let prog = unsafe { OwnedFd::from_raw_fd(prog as i32) };
    let cgroup = nix::fcntl::open(
        dir,
        nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_DIRECTORY | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(err("open"))?;
    let attach = ProgAttachAttr {
        target_fd: cgroup.as_raw_fd() as u32,
        attach_bpf_fd: prog.as_raw_fd() as u32,
        attach_type: BPF_CGROUP_DEVICE,
        attach_flags: BPF_F_ALLOW_MULTI,
        replace_bpf_fd: 0,
    };
    bpf(BPF_PROG_ATTACH, &attach).map_err(err("attach"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::DEFAULT_ALLOWED;

    /// Runs the subset of eBPF the program uses.
    fn eval(p: &[Insn], access_type: u32, major: u32, minor: u32) -> u64 {
        let ctx = [access_type, major, minor];
        let mut r = [0u64; 11];
        let mut pc = 0usize;
        loop {
            let i = p[pc];
            let (dst, src) = ((i.regs & 0xf) as usize, (i.regs >> 4) as usize);
            pc += 1;
            match i.code {
                LDX_W => {
                    assert_eq!(src, 1, "only ctx loads");
                    r[dst] = u64::from(ctx[(i.off / 4) as usize]);
                }
                AND_K => r[dst] &= i.imm as i64 as u64,
                RSH_K => r[dst] >>= i.imm,
                MOV_K => r[dst] = i.imm as i64 as u64,
                MOV_X => r[dst] = r[src],
                JNE_K => {
                    if r[dst] != i.imm as i64 as u64 {
                        pc += i.off as usize;
                    }
                }
                EXIT => return r[0],
                c => panic!("unexpected opcode {c:#x}"),
            }
        }
    }

    fn at(acc: i32, ty: i32) -> u32 {
        ((acc << 16) | ty) as u32
    }

    #[test]
    fn the_program_allows_exactly_the_standard_rules() {
        let p = program(&DEFAULT_ALLOWED);
        assert_eq!(
            eval(&p, at(ACC_READ | ACC_WRITE, DEV_CHAR), 1, 3),
            1,
            "null rw"
        );
        assert_eq!(eval(&p, at(ACC_READ, DEV_CHAR), 136, 42), 1, "pts");
        assert_eq!(eval(&p, at(ACC_MKNOD, DEV_BLOCK), 8, 0), 1, "mknod a disk");
        assert_eq!(eval(&p, at(ACC_READ, DEV_BLOCK), 8, 0), 0, "read a disk");
        assert_eq!(eval(&p, at(ACC_READ, DEV_CHAR), 1, 1), 0, "/dev/mem");
        assert_eq!(eval(&p, at(ACC_WRITE, DEV_CHAR), 10, 200), 0, "tun");
        assert_eq!(eval(&p, at(ACC_READ | ACC_MKNOD, DEV_CHAR), 4, 1), 0);
        // Every jump lands inside the program.
        for (pc, i) in p.iter().enumerate() {
            if i.code == JNE_K {
                assert!(pc + 1 + (i.off as usize) < p.len());
            }
        }
    }

    #[test]
    fn no_rules_deny_everything() {
        let p = program(&[]);
        assert_eq!(eval(&p, at(ACC_READ, DEV_CHAR), 1, 3), 0);
    }
}
