//! Criterion benchmarks of the container launch, phase by phase:
//!
//! - `container_phase/<phase>`: real launches of `workload noop` (default
//!   profile), timed by the launcher's own phase stamps
//!   (`isolab_container::LaunchPhases`), one benchmark per phase, so each
//!   figure is that phase inside a whole launch, not in isolation;
//! - `container_launch/{default,privileged}`: launch -> ready of the whole
//!   launch, with and without hardening (the startup cost of Docker's
//!   capabilities, seccomp profile and devices cgroup, measured, not hidden);
//! - `hardening/{seccomp_compile,install}`: the seccomp profile compiled
//!   to BPF (once per launcher process), and capabilities dropped plus the
//!   filters installed in a forked child, against `hardening/fork_only`.
//!
//! Root required (`SKIPPED <bench>: <reason>` otherwise); needs
//! `cargo build --release -p isolab-workload`. Run on purpose with
//! `cargo bench -p isolab-benches --bench container_phases`.

use std::path::PathBuf;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use isolab_container::{ContainerConfig, LaunchPhases, LinuxSyscall, SecurityProfile, Syscall};

fn workload() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("ISOLAB_WORKLOAD_BIN") {
        return Some(p.into());
    }
    // target/<triple>/release/deps/<bench> -> target/<triple>/release/workload
    let exe = std::env::current_exe().ok()?;
    let w = exe.parent()?.parent()?.join("workload");
    w.is_file().then_some(w)
}

fn config(privileged: bool) -> Option<ContainerConfig> {
    if !nix::unistd::geteuid().is_root() {
        println!("SKIPPED container_phases: needs root");
        return None;
    }
    let Some(bin) = workload() else {
        println!("SKIPPED container_phases: no workload binary (cargo build --release -p isolab-workload)");
        return None;
    };
    let mut c = ContainerConfig::new(bin, "noop");
    c.quiet_stderr = true;
    c.privileged = privileged;
    Some(c)
}

fn launch(c: &ContainerConfig) -> LaunchPhases {
    isolab_container::run(c).expect("container run").phases
}

fn phases(c: &mut Criterion) {
    let Some(cfg) = config(false) else {
        return;
    };
    let mut g = c.benchmark_group("container_phase");
    g.sample_size(20).measurement_time(Duration::from_secs(4));
    for (i, (name, _)) in LaunchPhases::default().named().iter().enumerate() {
        g.bench_function(*name, |b| {
            b.iter_custom(|iters| {
                // A phase can round to 0 µs (the ready byte read before the
                // launcher saw the exec); criterion refuses a zero total.
                let total: Duration = (0..iters)
                    .map(|_| Duration::from_micros(launch(&cfg).named()[i].1))
                    .sum();
                total.max(Duration::from_nanos(1))
            })
        });
    }
    g.finish();
}

fn whole_launch(c: &mut Criterion) {
    let mut g = c.benchmark_group("container_launch");
    g.sample_size(20).measurement_time(Duration::from_secs(4));
    for privileged in [false, true] {
        let Some(cfg) = config(privileged) else {
            return;
        };
        g.bench_function(cfg.security().name, |b| {
            b.iter_custom(|iters| {
                (0..iters)
                    .map(|_| Duration::from_micros(launch(&cfg).launch_to_ready_us.unwrap_or(0)))
                    .sum()
            })
        });
    }
    g.finish();
}

/// Forks a child that runs `f` and exits; waits for it.
fn in_child(f: impl Fn()) {
    use nix::unistd::{fork, ForkResult};
    // SAFETY: the benchmark is single-threaded at this point (criterion
    // runs benchmarks on the main thread), so the child may run `f`.
    match unsafe { fork() }.expect("fork") {
        ForkResult::Child => {
            f();
            // SAFETY: _exit ends the child without running the parent's
            // atexit handlers.
            unsafe { libc::_exit(0) }
        }
        ForkResult::Parent { child } => {
            nix::sys::wait::waitpid(child, None).expect("waitpid");
        }
    }
}

fn hardening(c: &mut Criterion) {
    let mut g = c.benchmark_group("hardening");
    let profile = SecurityProfile::new(false, false);
    let seccomp = profile.seccomp.clone().expect("the default has a filter");
    g.bench_function("seccomp_compile", |b| {
        b.iter(|| seccomp.compile().expect("compile"))
    });
    if !nix::unistd::geteuid().is_root() {
        println!("SKIPPED hardening/install: needs root");
        return;
    }
    let filters = profile.filters().expect("compile");
    let keep = profile.caps.expect("the default keeps 14").0;
    g.bench_function("fork_only", |b| b.iter(|| in_child(|| {})));
    g.bench_function("install", |b| {
        b.iter(|| {
            in_child(|| {
                let sys = LinuxSyscall;
                for f in filters.iter() {
                    sys.install_seccomp(f).expect("seccomp");
                }
                sys.drop_capabilities(keep).expect("capabilities");
            })
        })
    });
    g.finish();
}

criterion_group!(benches, hardening, whole_launch, phases);
criterion_main!(benches);
