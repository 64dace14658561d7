//! Fault test: `bench` SIGKILLed at random points of its launches, then one
//! ordinary start; nothing of the killed launchers may be left.
//!
//! Launches ([`LAUNCHES`] = 100 by default, the count; override with
//! `ISOLAB_FAULT_LAUNCHES`), cycling through three scenarios:
//!
//! 1. `bench container run --workload api` (serves until killed);
//! 2. `bench container run --workload api --net` (the workbench namespace,
//!    a veth, the HTTP probe);
//! 3. `bench compare --modes container --peers runc,gvisor` (our container,
//!    a runc peer and a gVisor sandbox under the launcher's own `--root`s,
//!    with its watchdog; gVisor only where runsc is installed).
//!
//! Each is SIGKILLed (by its pid) after a delay drawn from a seeded
//! splitmix64 ([`SEED`], or `ISOLAB_FAULT_SEED`), uniform over roughly
//! the scenario's whole run, so kills land before, during and after the
//! launch. Then `bench container run --workload noop` is the ordinary
//! start that removes what the killed ones left. The check, for every
//! killed launcher pid P: no process in a cgroup or with a command line of
//! P's (`c<P>-...` containers, `isolab-runc-<P>-...` peers, P's watchdog),
//! no cgroup, mount, run dir (`/run/isolab/containers/c<P>-*`,
//! `/run/isolab/oci/<P>.*`, `/run/isolab/bundles/*-<P>-*`) or runc
//! container of P; no workbench namespace without a live owner (its lock
//! free); no new `iso*`/`veth*` interface in the host's namespace.
//! Assertions are on the killed launchers' own names, never on global
//! emptiness: other users of the host may have live instances.
//!
//! Sizing: a launch is killed within 0.4 s (container), 1 s (`--net`,
//! about its whole run) or 1.5 s (compare: about its whole run, gVisor
//! included, now that peers stop on their runtime's `kill <id> TERM`), so
//! 100 launches are bounded by about 2 minutes; measured 50-75 s on the
//! shared 2-core development machine. The 100 fit the CI budget,
//! so the count is not reduced.
//!
//! Needs root, containers (overlayfs, cgroups), the `workload` binary
//! beside `bench`, and runc; without them it prints `SKIPPED` (strict mode:
//! fails). A `--net` launch that finds the workbench busy (another run
//! holds it) still counts: it must leave nothing either.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const LAUNCHES: u64 = 100;
const SEED: u64 = 0x1501_ab12;

/// splitmix64: deterministic, enough for kill points.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The scenarios: arguments (split at whitespace) and the longest delay
/// before the kill (ms).
fn scenario(i: u64) -> (&'static str, Vec<&'static str>, u64) {
    let (what, args, max_ms) = match i % 3 {
        0 => ("container", "container run --workload api", 400),
        1 => (
            "container --net",
            "container run --workload api --net --requests 200",
            1000,
        ),
        _ => (
            "compare + peers",
            "compare --workload api --modes container --peers runc,gvisor --runs 2 --warmup 0 --requests 5 --isolation off --format json",
            1500,
        ),
    };
    (what, args.split_whitespace().collect(), max_ms)
}

fn bench() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_bench"));
    c.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .env("ISOLAB_PROGRESS", "0");
    c
}

/// Names a killed launcher `pid` gives its instances.
fn marks(pid: u32) -> [String; 4] {
    [
        format!("c{pid}-"),
        format!("isolab-runc-{pid}-"),
        format!("isolab-crun-{pid}-"),
        format!("isolab-runsc-{pid}-"),
    ]
}

fn has_mark(s: &str, pid: u32) -> bool {
    marks(pid).iter().any(|m| s.contains(m.as_str()))
}

/// Every cgroup directory under the host's `isolab` parents.
fn isolab_cgroups() -> Vec<String> {
    let mut out = vec![];
    let mut parents = vec![PathBuf::from("/sys/fs/cgroup/isolab")];
    if let Ok(rd) = std::fs::read_dir("/sys/fs/cgroup") {
        parents.extend(rd.flatten().map(|e| e.path().join("isolab")));
    }
    for p in parents {
        if let Ok(rd) = std::fs::read_dir(&p) {
            out.extend(
                rd.flatten()
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .map(|e| e.path().display().to_string()),
            );
        }
    }
    out
}

fn read_dir_names(dir: &str) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Everything of the killed launchers still on the host, one line each.
fn leftovers(killed: &[u32], interfaces_before: &[String]) -> Vec<String> {
    let mut left = vec![];
    // Processes: in a cgroup of theirs, or with their names on the
    // command line (runc run, the watchdog).
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let cg = std::fs::read_to_string(e.path().join("cgroup")).unwrap_or_default();
        let cmd = std::fs::read(e.path().join("cmdline"))
            .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
            .unwrap_or_default();
        for &p in killed {
            let watchdog = cmd.contains("isolab-peer-watchdog")
                && cmd.split_whitespace().any(|w| w == p.to_string());
            if has_mark(&cg, p) || has_mark(&cmd, p) || watchdog {
                left.push(format!("process {name} of launcher {p}: {}", cmd.trim()));
            }
        }
    }
    for cg in isolab_cgroups() {
        if killed.iter().any(|&p| has_mark(&cg, p)) {
            left.push(format!("cgroup {cg}"));
        }
    }
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    for m in mounts.lines() {
        if killed.iter().any(|&p| has_mark(m, p)) {
            left.push(format!("mount {m}"));
        }
    }
    for n in read_dir_names("/run/isolab/containers") {
        if killed.iter().any(|&p| has_mark(&n, p)) {
            left.push(format!("instance dir {n}"));
        }
    }
    for n in read_dir_names("/run/isolab/bundles") {
        if killed.iter().any(|&p| has_mark(&n, p)) {
            left.push(format!("bundle {n}"));
        }
    }
    for n in read_dir_names("/run/isolab/oci") {
        if killed
            .iter()
            .any(|&p| n.split('.').next() == Some(p.to_string().as_str()))
        {
            left.push(format!("runtime root /run/isolab/oci/{n}"));
        }
    }
    // runc's own default root, in case a peer ever escaped ours.
    if let Ok(o) = Command::new("runc").args(["list", "-q"]).output() {
        for id in String::from_utf8_lossy(&o.stdout).split_whitespace() {
            if killed.iter().any(|&p| has_mark(id, p)) {
                left.push(format!("runc container {id}"));
            }
        }
    }
    // A workbench namespace (`isolab0` of `--net` runs, `isolab<pid>` of
    // compare's) may stay only while someone holds its lock.
    for e in std::fs::read_dir("/run/netns")
        .into_iter()
        .flatten()
        .flatten()
    {
        let name = e.file_name().to_string_lossy().into_owned();
        if isolab_net::workbench::is_workbench_name(&name) && !workbench_lock_held(&name) {
            left.push(format!("/run/netns/{name} without a live owner"));
        }
    }
    for i in isolab_testkit::host_interfaces() {
        if (i.starts_with("iso") || i.starts_with("veth")) && !interfaces_before.contains(&i) {
            left.push(format!("host interface {i}"));
        }
    }
    left
}

/// Whether a live workbench holds `/run/isolab/net-<name>.lock`.
fn workbench_lock_held(name: &str) -> bool {
    let Ok(f) = std::fs::OpenOptions::new()
        .write(true)
        .open(format!("/run/isolab/net-{name}.lock"))
    else {
        return false;
    };
    match nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusiveNonblock) {
        Ok(lock) => {
            drop(lock);
            false
        }
        Err(_) => true,
    }
}

#[test]
fn launches_killed_at_random_points_leave_nothing_after_one_ordinary_start() {
    let test = "launches_killed_at_random_points_leave_nothing_after_one_ordinary_start";
    let missing = isolab_testkit::first_missing([
        isolab_testkit::missing_container(),
        isolab_testkit::missing_command("runc", "runc"),
    ]);
    if !isolab_testkit::require(test, missing) {
        return;
    }
    let launches = env_u64("ISOLAB_FAULT_LAUNCHES", LAUNCHES);
    let seed = env_u64("ISOLAB_FAULT_SEED", SEED);
    let mut rng = Rng(seed);
    let interfaces_before = isolab_testkit::host_interfaces();
    let started = Instant::now();
    let mut killed = vec![];
    let mut finished_first = 0;
    for i in 0..launches {
        let (what, args, max_ms) = scenario(i);
        let delay = Duration::from_millis(rng.below(max_ms));
        let mut child = bench().args(&args).spawn().unwrap();
        let pid = child.id();
        let deadline = Instant::now() + delay;
        let ended = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break Some(s);
            }
            if Instant::now() >= deadline {
                break None;
            }
            std::thread::sleep(Duration::from_millis(2));
        };
        if ended.is_none() {
            // Our own child, by its pid.
            child.kill().unwrap();
            killed.push(pid);
        } else {
            finished_first += 1;
        }
        child.wait().unwrap();
        eprintln!(
            "fault {i:3}: {what:<16} pid {pid:>7} after {:>4} ms: {}",
            delay.as_millis(),
            if ended.is_some() {
                "ended first"
            } else {
                "SIGKILL"
            }
        );
    }
    // One ordinary start: removes what the killed launchers left.
    let status = bench()
        .args(["container", "run", "--workload", "noop"])
        .status()
        .unwrap();
    assert!(status.success(), "the ordinary start failed: {status}");
    // Give the peers' watchdogs and the kernel's reaping a moment.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut left = leftovers(&killed, &interfaces_before);
    while !left.is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(250));
        left = leftovers(&killed, &interfaces_before);
    }
    eprintln!(
        "fault: {launches} launches (seed {seed:#x}), {} killed, {finished_first} ended first, {:.0} s",
        killed.len(),
        started.elapsed().as_secs_f64()
    );
    assert!(
        left.is_empty(),
        "left behind by {} killed launchers:\n{}",
        killed.len(),
        left.join("\n")
    );
    assert!(
        !killed.is_empty(),
        "no launch was killed: the delays are too long"
    );
}
