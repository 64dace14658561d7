//! What the tracer found: host system calls by name, per thread, and the
//! threads it could not trace. Pure data: built by the tracer, merged and
//! summarised here, serialised into reports.
//!
//! Names come from the `syscalls` crate's tables, keyed by the audit
//! architecture the kernel reports for each stop, so a 32-bit (`int 0x80`)
//! call is never named from the 64-bit table.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

/// `AUDIT_ARCH_X86_64` (linux/audit.h): 64-bit x86 calling convention.
pub const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
/// `AUDIT_ARCH_I386`: the 32-bit `int 0x80` / compat convention.
pub const AUDIT_ARCH_I386: u32 = 0x4000_0003;
/// `__X32_SYSCALL_BIT`: set in the number of x32-ABI calls.
const X32_SYSCALL_BIT: u64 = 0x4000_0000;

/// The name of system call `nr` made under audit architecture `arch`:
/// the plain name for x86_64, `i386:<name>` / `x32:<name>` for the other
/// ABIs, `syscall_<nr>` for a number no table knows.
pub fn syscall_name(arch: u32, nr: u64) -> String {
    match arch {
        AUDIT_ARCH_X86_64 if nr & X32_SYSCALL_BIT != 0 => {
            let base = nr & !X32_SYSCALL_BIT;
            match usize::try_from(base)
                .ok()
                .and_then(syscalls::x86_64::Sysno::new)
            {
                Some(s) => format!("x32:{}", s.name()),
                None => format!("x32:syscall_{base}"),
            }
        }
        AUDIT_ARCH_X86_64 => match usize::try_from(nr)
            .ok()
            .and_then(syscalls::x86_64::Sysno::new)
        {
            Some(s) => s.name().to_owned(),
            None => format!("syscall_{nr}"),
        },
        AUDIT_ARCH_I386 => match usize::try_from(nr).ok().and_then(syscalls::x86::Sysno::new) {
            Some(s) => format!("i386:{}", s.name()),
            None => format!("i386:syscall_{nr}"),
        },
        other => format!("arch_{other:#x}:syscall_{nr}"),
    }
}

/// The calls one host thread made while traced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ThreadCounts {
    /// Host thread id.
    pub tid: u32,
    /// Host process (thread group) id it belonged to.
    pub tgid: u32,
    /// `/proc/<tid>/comm` when first seen (`vcpu0`, `workload`...), if readable.
    pub comm: Option<String>,
    /// Calls entered, by name.
    pub syscalls: BTreeMap<String, u64>,
}

/// A thread the tracer was asked for but could not trace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotTraced {
    pub tid: u32,
    /// Why, e.g. `already traced by 1234` (gVisor's ptrace platform traces
    /// its own stubs) or `ESRCH` (it ended before the tracer got to it).
    pub reason: String,
}

/// How a spawned command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Exit {
    Code(i32),
    Signal(i32),
}

/// Everything one tracing pass saw.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyscallProfile {
    /// Traced threads, by tid, with their counts (threads that made no call
    /// while traced are listed with empty counts).
    pub threads: Vec<ThreadCounts>,
    /// Threads that were asked for but could not be traced.
    pub not_traced: Vec<NotTraced>,
    /// Threads still attached when detaching gave up (the kernel detaches
    /// them when the tracer exits); empty on a clean stop.
    pub left_attached: Vec<u32>,
    /// The spawned command's end (spawn mode only, when it ended while traced).
    pub exit: Option<Exit>,
    /// Milliseconds between the first attach and the detach.
    pub traced_ms: u64,
}

impl SyscallProfile {
    /// Calls by name, summed over every thread.
    pub fn totals(&self) -> BTreeMap<String, u64> {
        let mut out = BTreeMap::new();
        for t in &self.threads {
            for (name, n) in &t.syscalls {
                *out.entry(name.clone()).or_insert(0) += n;
            }
        }
        out
    }

    /// The distinct call names, over every thread.
    pub fn distinct(&self) -> BTreeSet<String> {
        self.threads
            .iter()
            .flat_map(|t| t.syscalls.keys().cloned())
            .collect()
    }

    /// Number of calls, over every thread.
    pub fn total_calls(&self) -> u64 {
        self.threads.iter().flat_map(|t| t.syscalls.values()).sum()
    }

    /// Calls by name for each process (tgid).
    pub fn by_process(&self) -> BTreeMap<u32, BTreeMap<String, u64>> {
        let mut out: BTreeMap<u32, BTreeMap<String, u64>> = BTreeMap::new();
        for t in &self.threads {
            let p = out.entry(t.tgid).or_default();
            for (name, n) in &t.syscalls {
                *p.entry(name.clone()).or_insert(0) += n;
            }
        }
        out
    }

    /// Distinct processes (tgids) seen.
    pub fn processes(&self) -> BTreeSet<u32> {
        self.threads.iter().map(|t| t.tgid).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn thread(tid: u32, tgid: u32, calls: &[(&str, u64)]) -> ThreadCounts {
        ThreadCounts {
            tid,
            tgid,
            comm: None,
            syscalls: calls.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect(),
        }
    }

    #[test]
    fn names_come_from_the_table_of_the_calls_abi() {
        assert_eq!(syscall_name(AUDIT_ARCH_X86_64, 0), "read");
        assert_eq!(syscall_name(AUDIT_ARCH_X86_64, 59), "execve");
        assert_eq!(syscall_name(AUDIT_ARCH_X86_64, 231), "exit_group");
        // 32-bit numbering differs: 1 is exit there, 11 execve.
        assert_eq!(syscall_name(AUDIT_ARCH_I386, 1), "i386:exit");
        assert_eq!(syscall_name(AUDIT_ARCH_I386, 11), "i386:execve");
        assert_eq!(syscall_name(AUDIT_ARCH_X86_64, 0x4000_0000), "x32:read");
        assert_eq!(syscall_name(AUDIT_ARCH_X86_64, 100_000), "syscall_100000");
        assert_eq!(syscall_name(7, 3), "arch_0x7:syscall_3");
    }

    #[test]
    fn totals_distinct_and_processes_sum_over_threads() {
        let p = SyscallProfile {
            threads: vec![
                thread(10, 10, &[("read", 2), ("write", 1)]),
                thread(11, 10, &[("read", 3), ("futex", 4)]),
                thread(20, 20, &[("epoll_wait", 1)]),
            ],
            ..Default::default()
        };
        assert_eq!(p.totals()["read"], 5);
        assert_eq!(p.total_calls(), 11);
        assert_eq!(
            p.distinct().into_iter().collect::<Vec<_>>(),
            ["epoll_wait", "futex", "read", "write"]
        );
        assert_eq!(p.by_process()[&10]["read"], 5);
        assert_eq!(p.by_process()[&20].len(), 1);
        assert_eq!(p.processes().len(), 2);
        let json = serde_json::to_string(&p).unwrap();
        assert_eq!(serde_json::from_str::<SyscallProfile>(&json).unwrap(), p);
    }
}
