//! Classroom demos for real: every demo runs as a plain process and as a
//! container on this host, and the facts in its table are checked against
//! the truth read here, outside any namespace. The microVM column runs in
//! the emulated host in strict mode or with `ISOLAB_DEMO_VM_HOST=emulated`
//! (about half a minute per demo), natively otherwise; wherever it cannot
//! run it must explain why in one line instead of failing the demo, and
//! where it runs its facts are checked too.
//!
//! Needs root, cgroups and namespaces (the container column) and the
//! `workload` binary built next to the test binary. Without them each test
//! prints `SKIPPED <test>: <reason>`; with `CI=true` or `ISOLAB_STRICT=1` it
//! fails instead. The containers are cloned children of the library, never
//! this harness process.

use std::sync::OnceLock;

use isolab_harness::demo::{
    render_markdown, render_table, run_demo_with, Demo, DemoReport, DemoSetup, ModeRun, PassRun,
    DEMOS,
};
use isolab_harness::isolation::noisy::ModeNeighbours;
use isolab_harness::isolation::ModeSurface;
use isolab_harness::modes::{Context, InstanceOutcome, Launcher, ModeKind, VmHost};
use isolab_harness::Workload;
use isolab_isolation::neighbour::{NeighbourFate, NeighbourKind};
use serde_json::Value;

/// Where the microVM column runs: `ISOLAB_DEMO_VM_HOST=native|emulated`;
/// by default the emulated host in strict mode (CI boots it anyway) and
/// this host's /dev/kvm otherwise (quick: here it explains why it cannot).
fn vm_host() -> VmHost {
    match std::env::var("ISOLAB_DEMO_VM_HOST").as_deref() {
        Ok("emulated") => VmHost::Emulated,
        Ok("native") => VmHost::Native,
        _ if isolab_testkit::strict() => VmHost::Emulated,
        _ => VmHost::Native,
    }
}

/// Every demo, run once for all tests: (reports, why the container cannot
/// run here if it cannot).
fn reports() -> &'static Result<Vec<DemoReport>, String> {
    static R: OnceLock<Result<Vec<DemoReport>, String>> = OnceLock::new();
    R.get_or_init(|| {
        if let Some(why) = isolab_testkit::missing_container() {
            return Err(why);
        }
        let mut ctx = Context::new(Workload::Probe).map_err(|e| e.to_string())?;
        ctx.vm_host = vm_host();
        let launchers: Vec<Box<dyn Launcher>> =
            [ModeKind::Process, ModeKind::Container, ModeKind::Microvm]
                .into_iter()
                .map(|m| ctx.launcher(m))
                .collect();
        let launchers: Vec<&dyn Launcher> = launchers.iter().map(AsRef::as_ref).collect();
        let mut setup = DemoSetup {
            vm_host: ctx.vm_host,
            ..DemoSetup::default()
        };
        // A debug-built hog needs seconds to reach its limit on a busy host.
        setup.neighbours.window_max_ms = 20_000;
        DEMOS
            .iter()
            .map(|d| {
                run_demo_with(d, &launchers, &setup)
                    .map_err(|e| format!("demo {} failed: {e:#?}", d.name))
            })
            .collect()
    })
}

/// The report of one demo, or `None` after printing the skip line.
fn report(test: &str, name: &str) -> Option<&'static DemoReport> {
    match reports() {
        Ok(all) => all.iter().find(|r| r.name == name),
        Err(why) if why.starts_with("demo ") => panic!("{why}"),
        Err(why) => {
            isolab_testkit::require(test, Some(why.clone()));
            None
        }
    }
}

fn rec(r: &DemoReport, m: ModeKind) -> &InstanceOutcome {
    r.column(m)
        .and_then(|c| c.run.outcome())
        .unwrap_or_else(|| panic!("{} did not run in {m:?}", r.name))
}

/// The microVM column's outcome, when it ran (otherwise its one-line
/// reason is checked by `microvm_column_runs_or_says_why_in_one_line`).
fn vm_record(r: &DemoReport) -> Option<&InstanceOutcome> {
    r.column(ModeKind::Microvm).and_then(|c| c.run.outcome())
}

fn fact<'a>(r: &'a InstanceOutcome, p: &str) -> &'a Value {
    let (first, rest) = p[1..].split_once('/').unwrap_or((&p[1..], ""));
    r.result
        .as_ref()
        .and_then(|m| m.get(first))
        .and_then(|v| {
            if rest.is_empty() {
                Some(v)
            } else {
                v.pointer(&format!("/{rest}"))
            }
        })
        .unwrap_or_else(|| panic!("no {p} in {:?}", r.result))
}

fn host_release() -> String {
    nix::sys::utsname::uname()
        .unwrap()
        .release()
        .to_string_lossy()
        .into_owned()
}

fn read(p: &str) -> String {
    std::fs::read_to_string(p).unwrap().trim().to_owned()
}

#[test]
fn kernel_is_the_hosts_in_process_and_container() {
    let Some(r) = report("kernel_is_the_hosts_in_process_and_container", "kernel") else {
        return;
    };
    let boot_id = read("/proc/sys/kernel/random/boot_id");
    for m in [ModeKind::Process, ModeKind::Container] {
        assert_eq!(
            fact(rec(r, m), "/kernel/release"),
            &Value::from(host_release()),
            "{m:?}"
        );
        assert_eq!(
            fact(rec(r, m), "/boot_id"),
            &Value::from(boot_id.clone()),
            "{m:?}"
        );
    }
    if let Some(v) = r.column(ModeKind::Microvm).and_then(|c| c.run.outcome()) {
        assert_ne!(
            fact(v, "/boot_id"),
            &Value::from(boot_id),
            "the guest has its own kernel"
        );
    }
    assert!(r.findings.iter().all(|f| f.holds), "{:?}", r.findings);
    let table = render_table(r);
    assert!(table.contains(&host_release()), "{table}");
}

#[test]
fn container_has_its_own_pid_namespace() {
    let Some(r) = report("container_has_its_own_pid_namespace", "pids") else {
        return;
    };
    let c = rec(r, ModeKind::Container);
    // PID 1 is the container's init; the probe is its child.
    assert_ne!(fact(c, "/pid1_comm"), &Value::from(read("/proc/1/comm")));
    assert!(fact(c, "/pid").as_u64().unwrap() <= 3, "{:?}", c.result);
    assert!(
        fact(c, "/processes").as_u64().unwrap() <= 3,
        "{:?}",
        c.result
    );
    let p = rec(r, ModeKind::Process);
    assert_eq!(fact(p, "/pid1_comm"), &Value::from(read("/proc/1/comm")));
    assert!(fact(p, "/processes").as_u64().unwrap() > 3);
}

#[test]
fn container_has_its_own_hostname_and_only_lo() {
    let Some(r) = report("container_has_its_own_hostname_and_only_lo", "network") else {
        return;
    };
    let host = nix::unistd::gethostname()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    let c = rec(r, ModeKind::Container);
    assert_ne!(fact(c, "/hostname"), &Value::from(host.clone()));
    assert_eq!(fact(c, "/interfaces"), &serde_json::json!(["lo"]));
    assert_eq!(
        fact(rec(r, ModeKind::Process), "/hostname"),
        &Value::from(host)
    );
}

#[test]
fn container_cannot_reach_host_paths() {
    let Some(r) = report("container_cannot_reach_host_paths", "filesystem") else {
        return;
    };
    let c = fact(rec(r, ModeKind::Container), "/host_paths_visible");
    assert!(c.as_object().unwrap().values().all(|v| v == false), "{c}");
    let p = fact(rec(r, ModeKind::Process), "/host_paths_visible");
    assert_eq!(p["/etc/passwd"], true);
}

#[test]
fn memory_hog_is_oom_killed_by_the_cgroup_and_capped_as_a_process() {
    let Some(r) = report(
        "memory_hog_is_oom_killed_by_the_cgroup_and_capped_as_a_process",
        "memory",
    ) else {
        return;
    };
    let c = rec(r, ModeKind::Container);
    assert_eq!(c.status, Some(137), "SIGKILL by the OOM killer");
    assert!(c.cgroup.as_ref().unwrap().oom_kills >= 1, "{:?}", c.cgroup);
    let p = rec(r, ModeKind::Process);
    assert_eq!(p.status, Some(0));
    assert_eq!(fact(p, "/capped"), true);
    assert_eq!(fact(p, "/mib"), 64);
    // The safety cap held: the process never grew far past it.
    let rss = fact(p, "/rss_kib").as_u64().unwrap();
    assert!((60 * 1024..100 * 1024).contains(&rss), "{rss} KiB");
    let table = render_table(r);
    assert!(table.contains("cgroup OOM kill"), "{table}");
    // The guest's own OOM killer; the host sees at most guest RAM plus the VMM.
    if let Some(v) = vm_record(r) {
        assert_eq!(v.status, Some(137), "{:?}", v.vm);
        let limit_kib = (isolab_harness::demo::catalog::VM_MEMORY_MIB + 64) * 1024;
        assert!(v.peak_rss_kib.unwrap() < limit_kib, "{:?}", v.peak_rss_kib);
    }
}

#[test]
fn cpu_limit_throttles_the_container() {
    let Some(r) = report("cpu_limit_throttles_the_container", "cpu") else {
        return;
    };
    let s = rec(r, ModeKind::Container).cgroup.clone().unwrap();
    assert!(s.cpu_throttled_periods.unwrap() > 0, "{s:?}");
    // The container sees the host's CPUs: the limit is time, not hardware.
    let probe = r
        .column(ModeKind::Container)
        .unwrap()
        .probe
        .as_ref()
        .unwrap();
    let online = nix::unistd::sysconf(nix::unistd::SysconfVar::_NPROCESSORS_ONLN)
        .unwrap()
        .unwrap();
    assert_eq!(
        fact(probe.outcome().unwrap(), "/cpus_online").as_i64(),
        Some(online)
    );
}

#[test]
fn fork_loop_stops_at_pids_max_in_the_container() {
    let Some(r) = report("fork_loop_stops_at_pids_max_in_the_container", "forkbomb") else {
        return;
    };
    let c = rec(r, ModeKind::Container);
    assert!(fact(c, "/forked").as_u64().unwrap() < 32, "{:?}", c.result);
    assert_eq!(fact(c, "/errno"), "EAGAIN");
    let p = rec(r, ModeKind::Process);
    assert_eq!(
        fact(p, "/forked"),
        64,
        "the process stops at its safety cap"
    );
    assert_eq!(fact(p, "/reaped"), 64);
    if let Some(v) = vm_record(r) {
        assert!(fact(v, "/forked").as_u64().unwrap() <= 256);
        assert_eq!(fact(v, "/reaped"), fact(v, "/forked"));
    }
}

#[test]
fn knobs_are_refused_or_confined_and_the_host_is_unchanged() {
    let test = "knobs_are_refused_or_confined_and_the_host_is_unchanged";
    let before = (
        read("/proc/sys/vm/swappiness"),
        read("/proc/sys/kernel/domainname"),
    );
    let Some(r) = report(test, "knobs") else {
        return;
    };
    // The host's values, read by the test itself (the demo checked its own).
    let after = (
        read("/proc/sys/vm/swappiness"),
        read("/proc/sys/kernel/domainname"),
    );
    assert_eq!(before, after);
    let knob = |m, name: &str| {
        fact(rec(r, m), "/knobs")
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["name"] == name)
            .unwrap()
            .clone()
    };
    let swap = knob(ModeKind::Container, "vm.swappiness");
    assert_eq!(swap["accepted"], false, "{swap}");
    // The domain name is the container's own (UTS namespace), but setting
    // it needs CAP_SYS_ADMIN, which the default confinement drops: refused
    // with EPERM; were it allowed, it would change only inside.
    let dom = knob(ModeKind::Container, "kernel.domainname");
    if dom["accepted"] == true {
        assert_eq!(dom["after"], "isolab-demo", "{dom}");
    } else {
        assert_eq!(dom["error"], "EPERM: Operation not permitted", "{dom}");
    }
    assert_ne!(after.1, "isolab-demo");
    // On the host the process wrote nothing: it only opened for writing.
    let p = knob(ModeKind::Process, "vm.swappiness");
    assert_eq!(p["attempted"], serde_json::Value::Null, "{p}");
    assert_eq!(p["after"], p["before"]);
    assert!(r.host_settings.iter().any(|s| s.name == "vm.swappiness"));
    // The guest may change its own kernel's global knob; the host's stayed.
    if vm_record(r).is_some() {
        let g = knob(ModeKind::Microvm, "kernel.domainname");
        assert_eq!(g["after"], "isolab-demo", "{g}");
    }
}

#[test]
fn capabilities_are_reported_per_mode() {
    let Some(r) = report("capabilities_are_reported_per_mode", "capabilities") else {
        return;
    };
    for m in [ModeKind::Process, ModeKind::Container] {
        let c = rec(r, m);
        assert!(fact(c, "/cap_bnd/count").as_u64().is_some());
        assert!(fact(c, "/seccomp").as_u64().is_some());
    }
    let own = std::fs::read_to_string("/proc/self/status").unwrap();
    let host_nnp = own
        .lines()
        .find_map(|l| l.strip_prefix("NoNewPrivs:"))
        .unwrap()
        .trim()
        .parse::<u64>()
        .unwrap();
    assert_eq!(fact(rec(r, ModeKind::Process), "/no_new_privs"), host_nnp);
    // The default container (Docker's 14, a filter) beside a privileged
    // one (the host's set, no filter).
    let container = rec(r, ModeKind::Container);
    assert_eq!(fact(container, "/cap_bnd/count"), 14);
    assert_eq!(fact(container, "/seccomp"), 2);
    let twin = r
        .columns
        .iter()
        .find(|c| c.mode == ModeKind::Container && c.spec.privileged)
        .and_then(|c| c.run.outcome())
        .expect("a --privileged container column");
    assert_eq!(
        fact(twin, "/cap_bnd/count"),
        fact(rec(r, ModeKind::Process), "/cap_bnd/count")
    );
    assert_eq!(fact(twin, "/seccomp"), 0);
    assert!(r.findings.iter().all(|f| f.holds), "{:?}", r.findings);
}

#[test]
fn microvm_column_runs_or_says_why_in_one_line() {
    let Some(r) = report("microvm_column_runs_or_says_why_in_one_line", "kernel") else {
        return;
    };
    match &r.column(ModeKind::Microvm).unwrap().run {
        ModeRun::Unavailable { reason } => {
            assert!(!reason.is_empty() && !reason.contains('\n'), "{reason:?}");
            assert!(render_markdown(std::slice::from_ref(r))
                .contains(&format!("> microvm: not run here: {reason}")));
        }
        ModeRun::Ran(v) => {
            assert_ne!(fact(v, "/kernel/release"), &Value::from(host_release()));
            if vm_host() == VmHost::Emulated {
                assert_eq!(
                    v.label.as_deref(),
                    Some(isolab_emuhost::EMULATED_HOST_LABEL)
                );
                assert!(render_markdown(std::slice::from_ref(r))
                    .contains(isolab_emuhost::EMULATED_HOST_LABEL));
            }
        }
        ModeRun::Measured(_) => panic!("the kernel demo runs a job, not a pass"),
    }
}

#[test]
fn handout_has_every_demo_table_and_questions() {
    let Ok(all) = reports() else {
        let _ = report("handout_has_every_demo_table_and_questions", "kernel");
        return;
    };
    let md = render_markdown(all);
    for d in DEMOS {
        let section = md
            .split("\n## ")
            .find(|s| s.contains(&format!("(`bench demo {}`)", d.name)))
            .unwrap_or_else(|| panic!("no section for {}", d.name));
        // The capabilities demo also runs the container --privileged.
        let header = if d.name == "capabilities" {
            "| | process | container | container --privileged | microvm |"
        } else {
            "| | process | container | microvm |"
        };
        assert!(section.contains(header), "{section}");
        assert!(section.contains("### Knowledge check"));
        for q in &d.questions {
            assert!(section.contains(q.question) && section.contains(q.answer));
        }
        assert!(section.contains("Host unchanged"));
    }
    assert!(Demo::find("knobs").is_some());
    // Keep a copy to read as a page when asked to (nothing is left behind otherwise).
    if let Ok(out) = std::env::var("ISOLAB_DEMO_HANDOUT") {
        std::fs::write(&out, &md).unwrap();
        println!("handout written to {out}");
    }
}

/// The pass result of a pass demo's column, or `None` where it did not run.
fn pass_of(r: &DemoReport, m: ModeKind) -> Option<&PassRun> {
    match &r.column(m)?.run {
        ModeRun::Measured(p) => Some(p.as_ref()),
        _ => None,
    }
}

fn neighbours(r: &DemoReport, m: ModeKind) -> &ModeNeighbours {
    match pass_of(r, m) {
        Some(PassRun::Neighbours(n)) => n,
        other => panic!("no neighbours in {m:?}: {other:?}"),
    }
}

fn surface(r: &DemoReport, m: ModeKind) -> &ModeSurface {
    match pass_of(r, m) {
        Some(PassRun::Surface(s)) => s,
        other => panic!("no host system calls in {m:?}: {other:?}"),
    }
}

/// The cells of the rendered table's row `label` (terminal table).
fn table_row(table: &str, label: &str) -> Vec<String> {
    table
        .lines()
        .find(|l| l.trim_start().starts_with(label) && l.contains('|'))
        .unwrap_or_else(|| panic!("no {label} row:\n{table}"))
        .split('|')
        .skip(1)
        .map(|c| c.trim().to_owned())
        .collect()
}

/// The pass demos' microVM column: natively here it says why not; in the
/// emulated host it says why a tenant there cannot be loaded.
fn microvm_pass_column_says_why(r: &DemoReport) {
    match &r.column(ModeKind::Microvm).unwrap().run {
        ModeRun::Unavailable { reason } => {
            assert!(!reason.is_empty() && !reason.contains('\n'), "{reason:?}")
        }
        ModeRun::Measured(_) => {}
        ModeRun::Ran(_) => panic!("a pass demo runs passes, not jobs"),
    }
}

#[test]
fn noisy_neighbour_shows_the_tenant_beside_each_storm_and_the_storms_fate() {
    let Some(r) = report(
        "noisy_neighbour_shows_the_tenant_beside_each_storm_and_the_storms_fate",
        "noisy-neighbour",
    ) else {
        return;
    };
    let c = neighbours(r, ModeKind::Container);
    let fate = |m: &ModeNeighbours, k: NeighbourKind| {
        m.neighbours.iter().find(|n| n.kind == k).unwrap().fate
    };
    assert!(
        matches!(
            fate(c, NeighbourKind::Memory),
            NeighbourFate::OomKilled { .. }
        ),
        "{:?}",
        c.neighbours
    );
    assert!(
        matches!(
            fate(c, NeighbourKind::Fork),
            NeighbourFate::ForksRefused { .. }
        ),
        "{:?}",
        c.neighbours
    );
    for n in &c.neighbours {
        assert_eq!(
            n.tenant_errors, 0,
            "the tenant kept answering beside {}",
            n.kind
        );
        assert_eq!(n.interference.len(), 1, "sequential only");
    }
    let p = neighbours(r, ModeKind::Process);
    assert_eq!(p.limits, None, "the plain process gets no limits");
    assert!(!matches!(
        fate(p, NeighbourKind::Memory),
        NeighbourFate::OomKilled { .. }
    ));
    // What a student sees: the tenant's p99 alone and with each storm, and
    // the storm's fate per mode.
    let table = render_table(r);
    for k in ["cpu", "memory", "fork"] {
        for row in [
            "tenant p99 alone",
            "tenant p99 with it",
            "p99 ratio (95% CI)",
        ] {
            let cells = table_row(&table, &format!("{k}: {row}"));
            // Measured in the process and container columns; the microVM's
            // is "—" with its reason under the table.
            assert!(
                cells[..2].iter().all(|c| c != "—" && c != "n/a"),
                "{k}: {row}: {cells:?}"
            );
        }
    }
    assert!(
        table_row(&table, "memory: neighbour's fate")[1].starts_with("OOM-killed in its cgroup"),
        "{table}"
    );
    assert!(
        table_row(&table, "fork: neighbour's fate")[1].starts_with("forks refused at pids.max"),
        "{table}"
    );
    assert!(table.contains("How it was measured:"), "{table}");
    assert!(
        table.contains("Conclusion (generated from the numbers above):"),
        "{table}"
    );
    assert!(r
        .conclusion
        .iter()
        .any(|l| l.starts_with("tenant p99 under a memory neighbour")));
    microvm_pass_column_says_why(r);
}

#[test]
fn attack_surface_counts_the_host_system_calls_of_each_mode() {
    let Some(r) = report(
        "attack_surface_counts_the_host_system_calls_of_each_mode",
        "attack-surface",
    ) else {
        return;
    };
    let requests = DemoSetup::default().surface.requests;
    for m in [ModeKind::Process, ModeKind::Container] {
        let s = surface(r, m);
        assert_eq!((s.requests, s.errors), (requests, 0), "{m:?}");
        assert!(s.threads >= 1 && s.distinct() > 0, "{m:?}: {s:?}");
        // Serving HTTP: something reads the request and writes the answer.
        assert!(
            ["read", "recvfrom", "recvmsg"]
                .iter()
                .any(|c| s.syscalls.contains_key(*c)),
            "{m:?}: {:?}",
            s.syscalls
        );
        assert!(
            ["write", "sendto", "sendmsg", "writev"]
                .iter()
                .any(|c| s.syscalls.contains_key(*c)),
            "{m:?}: {:?}",
            s.syscalls
        );
    }
    let table = render_table(r);
    let distinct = table_row(&table, "distinct host system calls");
    for (i, m) in [ModeKind::Process, ModeKind::Container].iter().enumerate() {
        assert_eq!(
            distinct[i],
            surface(r, *m).distinct().to_string(),
            "{table}"
        );
    }
    let hap = table_row(&table, "host kernel functions (ftrace)");
    assert!(hap[0].starts_with("not measured"), "{table}");
    if std::env::var(isolab_isolation::hap::EMULATED_HOST_ENV).as_deref() != Ok("1") {
        assert!(
            r.method
                .iter()
                .any(|l| l.contains("not measured on this host")),
            "{:?}",
            r.method
        );
    }
    assert!(table.contains("process made: "), "{table}");
    assert!(r.findings.iter().all(|f| f.holds), "{:?}", r.findings);
    assert!(r
        .conclusion
        .iter()
        .any(|l| l.starts_with("distinct host system calls")));
    microvm_pass_column_says_why(r);
}
