//! The seccomp profile as one compact classic-BPF program: a binary search
//! over ranges of syscall numbers that share a verdict, instead of a linear
//! chain of one comparison per syscall.
//!
//! Why: installing a filter costs the kernel time in proportion to what it
//! has to look at. `seccomp(2)` translates and JIT-compiles the program and
//! then, for every syscall number, emulates it to build the per-syscall
//! "always allowed" cache (`seccomp_cache_prepare`). A linear chain of the
//! ~300 allowed syscalls (seccompiler's layout, 1,530 instructions plus a
//! second filter for `clone3`) made that about 0.9 ms of every launch; the
//! allowed numbers fall into a few dozen ranges, so a search tree over them
//! is a few hundred instructions and each emulation a dozen steps. The
//! verdicts are the same, syscall by syscall and argument by argument
//! (checked against seccompiler's filters in this module's tests); the
//! `clone3 -> ENOSYS` rule becomes a leaf of the same program.
//!
//! Only instructions the kernel's cache emulator understands are used on
//! the path that depends on the syscall number alone (loads of `nr` and
//! `arch`, `jeq`/`jge`/`ja`, `ret`), so every unconditionally allowed
//! syscall still gets the kernel's fast path.

use std::collections::BTreeMap;

use seccompiler::{sock_filter, BpfProgram};

use crate::seccomp::ArgCheck;

const LD_W_ABS: u16 = 0x20;
const JA: u16 = 0x05;
const JEQ_K: u16 = 0x15;
const JGE_K: u16 = 0x35;
const AND_K: u16 = 0x54;
const RET_K: u16 = 0x06;

const SECCOMP_RET_ALLOW: u32 = 0x7fff_0000;
const SECCOMP_RET_ERRNO: u32 = 0x0005_0000;
const SECCOMP_RET_KILL_PROCESS: u32 = 0x8000_0000;
/// `AUDIT_ARCH_X86_64`.
pub(crate) const AUDIT_ARCH_X86_64: u32 = 62 | 0x8000_0000 | 0x4000_0000;

const NR_OFFSET: u32 = 0;
const ARCH_OFFSET: u32 = 4;
const ARGS_OFFSET: u32 = 16;

/// The kernel's limit (`BPF_MAXINSNS`).
pub(crate) const MAX_LEN: usize = 4096;

/// What one syscall number gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verdict {
    Allow,
    /// Fails with this errno.
    Errno(u32),
    /// Allowed when any rule holds (each rule: all its checks); otherwise
    /// fails with the errno.
    Cond(Vec<Vec<(u8, ArgCheck)>>, u32),
}

fn stmt(code: u16, k: u32) -> sock_filter {
    sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    }
}

fn jump(code: u16, k: u32, jt: u8, jf: u8) -> sock_filter {
    sock_filter { code, jt, jf, k }
}

/// Compiles `verdicts` (every number not listed fails with
/// `default_errno`) for x86_64; other architectures kill the process.
pub(crate) fn compile(
    verdicts: &BTreeMap<u32, Verdict>,
    default_errno: u32,
) -> Result<BpfProgram, String> {
    let ranges = ranges(verdicts, default_errno);
    let mut prog = vec![
        stmt(LD_W_ABS, ARCH_OFFSET),
        jump(JEQ_K, AUDIT_ARCH_X86_64, 1, 0),
        stmt(RET_K, SECCOMP_RET_KILL_PROCESS),
        stmt(LD_W_ABS, NR_OFFSET),
    ];
    prog.extend(tree(&ranges)?);
    if prog.len() > MAX_LEN {
        return Err(format!(
            "{} instructions, over the kernel's {MAX_LEN}",
            prog.len()
        ));
    }
    Ok(prog)
}

/// `(first number, verdict)` for consecutive ranges covering 0..=u32::MAX.
fn ranges(verdicts: &BTreeMap<u32, Verdict>, default_errno: u32) -> Vec<(u32, Verdict)> {
    let default = Verdict::Errno(default_errno);
    let mut out: Vec<(u32, Verdict)> = Vec::new();
    let add = |out: &mut Vec<(u32, Verdict)>, start: u32, v: &Verdict| {
        if out.last().map(|(_, last)| last) != Some(v) {
            out.push((start, v.clone()));
        }
    };
    // The first number not yet covered (None: all are).
    let mut next = Some(0u32);
    for (nr, v) in verdicts {
        if let Some(n) = next.filter(|n| n < nr) {
            add(&mut out, n, &default);
        }
        add(&mut out, *nr, v);
        next = nr.checked_add(1);
    }
    if let Some(n) = next {
        add(&mut out, n, &default);
    }
    out
}

/// A search tree over `ranges` (the accumulator holds the number).
fn tree(ranges: &[(u32, Verdict)]) -> Result<Vec<sock_filter>, String> {
    if ranges.len() == 1 {
        return leaf(&ranges[0].1);
    }
    let mid = ranges.len() / 2;
    let left = tree(&ranges[..mid])?;
    let right = tree(&ranges[mid..])?;
    let split = ranges[mid].0;
    let mut out = Vec::with_capacity(left.len() + right.len() + 2);
    match u8::try_from(left.len()) {
        // nr >= split: over the left subtree to the right one.
        Ok(skip) => out.push(jump(JGE_K, split, skip, 0)),
        Err(_) => {
            out.push(jump(JGE_K, split, 0, 1));
            out.push(stmt(JA, left.len() as u32));
        }
    }
    out.extend(left);
    out.extend(right);
    Ok(out)
}

fn leaf(v: &Verdict) -> Result<Vec<sock_filter>, String> {
    Ok(match v {
        Verdict::Allow => vec![stmt(RET_K, SECCOMP_RET_ALLOW)],
        Verdict::Errno(e) => vec![stmt(RET_K, errno(*e))],
        Verdict::Cond(rules, e) => {
            let mut out = Vec::new();
            for rule in rules {
                out.extend(rule_block(rule)?);
            }
            out.push(stmt(RET_K, errno(*e)));
            out
        }
    })
}

fn errno(e: u32) -> u32 {
    SECCOMP_RET_ERRNO | (e & 0xffff)
}

/// One rule: its checks, then `ret ALLOW`; a failed check jumps past the
/// block (to the next rule, or the errno).
fn rule_block(rule: &[(u8, ArgCheck)]) -> Result<Vec<sock_filter>, String> {
    // (instruction, fails when the jump is taken / when it is not)
    enum Fail {
        None,
        IfTrue,
        IfFalse,
    }
    let mut body: Vec<(sock_filter, Fail)> = Vec::new();
    for (arg, check) in rule {
        if *arg > 5 {
            return Err(format!("argument index {arg} (0-5)"));
        }
        let lo = ARGS_OFFSET + 8 * u32::from(*arg);
        match *check {
            ArgCheck::Eq32(v) => {
                body.push((stmt(LD_W_ABS, lo), Fail::None));
                body.push((jump(JEQ_K, v as u32, 0, 0), Fail::IfFalse));
            }
            ArgCheck::Ne32(v) => {
                body.push((stmt(LD_W_ABS, lo), Fail::None));
                body.push((jump(JEQ_K, v as u32, 0, 0), Fail::IfTrue));
            }
            ArgCheck::MaskedZero(m) => {
                // A half whose mask is zero always passes.
                for (offset, mask) in [(lo + 4, (m >> 32) as u32), (lo, m as u32)] {
                    if mask != 0 {
                        body.push((stmt(LD_W_ABS, offset), Fail::None));
                        body.push((stmt(AND_K, mask), Fail::None));
                        body.push((jump(JEQ_K, 0, 0, 0), Fail::IfFalse));
                    }
                }
            }
        }
    }
    // The block ends with `ret ALLOW` at index `len`; failing jumps go to
    // `len + 1`, the first instruction after the block.
    let len = body.len();
    let mut out = Vec::with_capacity(len + 1);
    for (i, (mut ins, fail)) in body.into_iter().enumerate() {
        let to_end =
            u8::try_from(len - i).map_err(|_| "a rule longer than 255 instructions".to_string())?;
        match fail {
            Fail::None => {}
            Fail::IfTrue => ins.jt = to_end,
            Fail::IfFalse => ins.jf = to_end,
        }
        out.push(ins);
    }
    out.push(stmt(RET_K, SECCOMP_RET_ALLOW));
    Ok(out)
}

/// A classic-BPF interpreter for the instructions seccomp filters use here
/// (and seccompiler's): what the kernel returns for `data`.
#[cfg(test)]
pub(crate) fn run(prog: &[sock_filter], data: &SeccompData) -> u32 {
    let bytes = data.bytes();
    let load = |k: u32| {
        let k = k as usize;
        u32::from_ne_bytes([bytes[k], bytes[k + 1], bytes[k + 2], bytes[k + 3]])
    };
    let (mut a, mut pc) = (0u32, 0usize);
    loop {
        let ins = &prog[pc];
        pc += 1;
        match ins.code {
            LD_W_ABS => a = load(ins.k),
            AND_K => a &= ins.k,
            RET_K => return ins.k,
            JA => pc += ins.k as usize,
            c if c & 0x07 == 0x05 => {
                let taken = match c {
                    JEQ_K => a == ins.k,
                    JGE_K => a >= ins.k,
                    0x25 => a > ins.k,
                    0x45 => a & ins.k != 0,
                    _ => panic!("unknown jump {c:#x}"),
                };
                pc += usize::from(if taken { ins.jt } else { ins.jf });
            }
            c => panic!("unknown instruction {c:#x}"),
        }
    }
}

/// `struct seccomp_data`.
#[cfg(test)]
#[derive(Debug, Clone, Copy)]
pub(crate) struct SeccompData {
    pub nr: u32,
    pub arch: u32,
    pub args: [u64; 6],
}

#[cfg(test)]
impl SeccompData {
    fn bytes(&self) -> [u8; 64] {
        let mut b = [0u8; 64];
        b[0..4].copy_from_slice(&self.nr.to_ne_bytes());
        b[4..8].copy_from_slice(&self.arch.to_ne_bytes());
        for (i, a) in self.args.iter().enumerate() {
            b[16 + 8 * i..24 + 8 * i].copy_from_slice(&a.to_ne_bytes());
        }
        b
    }
}

/// What the kernel returns when several filters are installed: the most
/// restrictive action; on a tie, the most recently installed filter's.
#[cfg(test)]
pub(crate) fn run_all(progs: &[BpfProgram], data: &SeccompData) -> u32 {
    let mut best: Option<u32> = None;
    for p in progs {
        let r = run(p, data);
        best = match best {
            Some(b) if ((b & 0xffff_0000) as i32) < ((r & 0xffff_0000) as i32) => Some(b),
            _ => Some(r),
        };
    }
    best.unwrap_or(SECCOMP_RET_ALLOW)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(nr: u32, arg0: u64) -> SeccompData {
        SeccompData {
            nr,
            arch: AUDIT_ARCH_X86_64,
            args: [arg0, 0, 0, 0, 0, 0],
        }
    }

    #[test]
    fn ranges_merge_neighbours_with_the_same_verdict() {
        let mut v = BTreeMap::new();
        for nr in [0, 1, 2, 5] {
            v.insert(nr, Verdict::Allow);
        }
        v.insert(3, Verdict::Errno(1));
        let r = ranges(&v, 1);
        assert_eq!(
            r,
            vec![
                (0, Verdict::Allow),
                (3, Verdict::Errno(1)),
                (5, Verdict::Allow),
                (6, Verdict::Errno(1)),
            ]
        );
    }

    #[test]
    fn a_tree_with_long_subtrees_jumps_over_them() {
        // Every other number allowed: hundreds of ranges, subtrees longer
        // than a conditional jump can skip.
        let v: BTreeMap<u32, Verdict> = (0..2000).step_by(2).map(|n| (n, Verdict::Allow)).collect();
        let p = compile(&v, 1).unwrap();
        assert!(p.iter().any(|i| i.code == JA));
        for nr in 0..2100 {
            let want = if nr < 2000 && nr % 2 == 0 {
                SECCOMP_RET_ALLOW
            } else {
                errno(1)
            };
            assert_eq!(run(&p, &data(nr, 0)), want, "{nr}");
        }
    }

    #[test]
    fn conditions_check_the_argument_halves_they_name() {
        let mut v = BTreeMap::new();
        v.insert(
            7,
            Verdict::Cond(
                vec![
                    vec![(0, ArgCheck::Eq32(8))],
                    vec![
                        (0, ArgCheck::MaskedZero(0x1_0000_00ff)),
                        (1, ArgCheck::Ne32(3)),
                    ],
                ],
                1,
            ),
        );
        let p = compile(&v, 1).unwrap();
        let with = |a0: u64, a1: u64| {
            run(
                &p,
                &SeccompData {
                    nr: 7,
                    arch: AUDIT_ARCH_X86_64,
                    args: [a0, a1, 0, 0, 0, 0],
                },
            )
        };
        assert_eq!(with(8, 3), SECCOMP_RET_ALLOW, "first rule");
        assert_eq!(
            with(0x5_0000_0008, 3),
            SECCOMP_RET_ALLOW,
            "Eq32 is the low half"
        );
        assert_eq!(with(0x100, 0), SECCOMP_RET_ALLOW, "second rule");
        assert_eq!(with(0x100, 3), errno(1), "Ne32 failed");
        assert_eq!(with(0x1_0000_0100, 0), errno(1), "masked high bit");
        assert_eq!(with(0x1, 0), errno(1), "masked low bit");
        let mut wrong = data(7, 8);
        wrong.arch = 0x4000_0003;
        assert_eq!(run(&p, &wrong), SECCOMP_RET_KILL_PROCESS);
    }
}
