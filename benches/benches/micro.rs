//! Criterion micro-benchmarks of the steps that make up a launch: creating
//! and limiting a cgroup, cloning into new namespaces, creating a VM up to its
//! first `KVM_RUN`, and dispatching a VM exit. Run on purpose with
//! `cargo bench -p isolab-benches`; CI only compiles them (`--no-run`).
//!
//! Steps that need root or `/dev/kvm` print `SKIPPED <bench>: <reason>` where
//! the ability is missing, and are left out of the run.

use criterion::{criterion_group, criterion_main, Criterion};
use isolab_cgroups::{Hierarchy, Limits};
use isolab_microvm::devices::bus::DeviceBus;
use isolab_microvm::exits::{handle_exit, Exit};

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// mkdir the instance cgroup, write memory/cpu/pids limits, rmdir.
fn cgroup_create_apply(c: &mut Criterion) {
    if !is_root() {
        println!("SKIPPED cgroup_create_apply: needs root");
        return;
    }
    let Ok(h) = Hierarchy::detect_host() else {
        println!("SKIPPED cgroup_create_apply: no cgroup hierarchy");
        return;
    };
    let limits = Limits {
        memory_bytes: Some(64 << 20),
        cpus: Some(0.5),
        pids: Some(64),
        cpuset: None,
    };
    let mut n = 0u64;
    c.bench_function("cgroup_create_apply_remove", |b| {
        b.iter(|| {
            n += 1;
            let cg =
                isolab_cgroups::create(&h, &format!("bench-{}-{n}", std::process::id()), &limits)
                    .expect("create cgroup");
            cg.remove().expect("remove cgroup");
        })
    });
}

/// fork into new pid, uts, ipc, mount and net namespaces and reap the child
/// (the namespace cost of a container launch, without the rootfs).
fn namespace_clone(c: &mut Criterion) {
    use nix::sched::{unshare, CloneFlags};
    use nix::sys::wait::waitpid;
    use nix::unistd::{fork, ForkResult};
    if !is_root() {
        println!("SKIPPED namespace_clone: needs root");
        return;
    }
    let flags = CloneFlags::CLONE_NEWUTS
        | CloneFlags::CLONE_NEWIPC
        | CloneFlags::CLONE_NEWNS
        | CloneFlags::CLONE_NEWNET
        | CloneFlags::CLONE_NEWPID;
    c.bench_function("fork_unshare_5_namespaces_reap", |b| {
        b.iter(|| {
            // SAFETY: the child only calls unshare and _exit (no allocation,
            // no locks), so forking a multi-threaded process is sound.
            match unsafe { fork() }.expect("fork") {
                ForkResult::Child => {
                    let code = if unshare(flags).is_ok() { 0 } else { 1 };
                    // SAFETY: _exit ends the child without running the
                    // parent's destructors or atexit handlers.
                    unsafe { libc::_exit(code) }
                }
                ForkResult::Parent { child } => {
                    waitpid(child, None).expect("reap");
                }
            }
        })
    });
}

/// Create a VM, register memory, run the real-mode smoke payload to its
/// `hlt`: the VM-creation path up to and through the first `KVM_RUN`.
fn vm_create_first_run(c: &mut Criterion) {
    if std::fs::File::open("/dev/kvm").is_err() {
        println!("SKIPPED vm_create_first_run: /dev/kvm cannot be opened");
        return;
    }
    if isolab_microvm::smoke::run_smoke().is_err() {
        println!("SKIPPED vm_create_first_run: the KVM smoke payload does not run here");
        return;
    }
    c.bench_function("vm_create_to_first_run_smoke", |b| {
        b.iter(|| isolab_microvm::smoke::run_smoke().expect("smoke VM"))
    });
}

/// One port-I/O exit through the device bus (no device: open bus).
fn exit_dispatch(c: &mut Criterion) {
    let bus = DeviceBus::default();
    c.bench_function("exit_dispatch_io_out_unclaimed", |b| {
        b.iter(|| {
            let data = [0x7bu8];
            handle_exit(
                Exit::IoOut {
                    port: 0x80,
                    data: &data,
                },
                &bus,
                0,
            )
            .expect("dispatch")
        })
    });
    c.bench_function("exit_dispatch_io_in_unclaimed", |b| {
        b.iter(|| {
            let mut data = [0u8; 1];
            handle_exit(
                Exit::IoIn {
                    port: 0x61,
                    data: &mut data,
                },
                &bus,
                0,
            )
            .expect("dispatch")
        })
    });
}

/// The harness's own statistics on 1000 samples (bootstrap included).
fn summarize_1000(c: &mut Criterion) {
    let samples: Vec<f64> = (0..1000).map(|i| (i % 97) as f64 + 0.5).collect();
    c.bench_function("summarize_1000_samples_bootstrap", |b| {
        b.iter(|| isolab_harness::stats::summarize(&samples))
    });
}

criterion_group!(
    benches,
    cgroup_create_apply,
    namespace_clone,
    vm_create_first_run,
    exit_dispatch,
    summarize_1000
);
criterion_main!(benches);
