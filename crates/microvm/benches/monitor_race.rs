//! Benchmark: our monitor against peer monitors, process against process,
//! in one emulated-host session (issue 16's method).
//!
//! Every contender boots the same vmlinux and initramfs with the same
//! kernel command line (taken from our monitor's report), 1 vCPU, 128 MiB,
//! workload `noop`. Per THP setting of the emulated host (`always`, its
//! default, then `never`) it runs one warm-up each, then `ROUNDS`
//! interleaved rounds (the order rotates every round) timing spawn -> exit
//! of the monitor process; then `MEM_ROUNDS` rounds that sample the
//! process's smaps every 10 ms for its peak RSS outside guest RAM (the
//! 128 MiB guest mapping is recognised by its size, Firecracker's method)
//! and KVM's counters of 2 MiB mappings and fixed page faults. It prints
//! medians, each contender's ratio to the first, and the first's wall
//! ratio to each other contender with a 95 % interval (a paired bootstrap
//! of the rounds: the spread one race leaves on the ratio).
//!
//! Contenders (environment, host paths):
//! - `ISOLAB_MONITOR`: our monitor, a `bench` binary (`bench vm run`);
//!   default: the `bench` built beside this benchmark (`--release`);
//! - `ISOLAB_BASELINE`: an older `bench`, e.g. built from main (optional);
//! - `ISOLAB_VMM`: `isolab-vmm`, our dedicated monitor binary (confined
//!   by default); default: the `monitor` profile's build
//!   (`cargo build --profile monitor -p isolab-vmm`, what `./bench` runs),
//!   else the release one beside this benchmark, if it is built;
//! - `ISOLAB_VMM_ALSO`: `label=path,...`, more `isolab-vmm` builds raced
//!   beside it (A/B of build settings);
//! - `FIRECRACKER`: a static `firecracker` binary (optional; built by hand
//!   from a fetched snapshot, never by the project).
//!
//! `ISOLAB_GUEST_KERNEL`, `ISOLAB_GUEST_INITRD`: the guest (default: the
//! newest provisioned). `ROUNDS` (default 15), `MEM_ROUNDS` (default 3). Needs the provisioned
//! guest (`bench provision`) and the emulated host; figures are labelled
//! as emulated: only the ratios mean anything.
//!
//! Run: `cargo bench -p isolab-microvm --bench monitor_race`.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const GUEST_MIB: u64 = 128;
const INSIDE: &str = "/opt/race";

#[derive(Debug, Clone)]
struct Contender {
    label: String,
    kind: Kind,
    bin: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    /// `bench vm run ... --json`.
    Isolab,
    /// `firecracker --no-api --config-file`.
    Firecracker,
    /// `isolab-vmm`, the dedicated monitor binary.
    Vmm,
}

fn env_path(k: &str) -> Option<PathBuf> {
    std::env::var_os(k).map(PathBuf::from)
}

fn cache_root() -> Option<PathBuf> {
    if let Some(c) = std::env::var_os("ISOLAB_CACHE") {
        return Some(c.into());
    }
    std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache/isolab"))
}

fn newest(dir: &Path, pick: impl Fn(&Path) -> Option<PathBuf>) -> Option<PathBuf> {
    let mut v: Vec<(std::time::SystemTime, PathBuf)> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| pick(&e.ok()?.path()))
        .filter_map(|p| Some((p.metadata().ok()?.modified().ok()?, p)))
        .collect();
    v.sort();
    v.pop().map(|(_, p)| p)
}

fn main() {
    if std::env::args().any(|a| a == "--inside") {
        inside();
    } else {
        outside();
    }
}

/// On the host: copy everything into the emulated host and run there.
fn outside() {
    let exe = std::env::current_exe().expect("own path");
    let release = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<triple>/release/deps");
    let mut contenders = Vec::new();
    let ours = env_path("ISOLAB_MONITOR").unwrap_or_else(|| release.join("bench"));
    // `ISOLAB_MONITOR=skip`: race the dedicated monitor only.
    if ours.as_os_str() != "skip" {
        contenders.push(("isolab", Kind::Isolab, ours));
    }
    if let Some(b) = env_path("ISOLAB_BASELINE") {
        contenders.push(("baseline", Kind::Isolab, b));
    }
    // The `monitor` profile's build (what `./bench` runs) when there is one.
    let tuned = release.parent().map(|t| t.join("monitor/isolab-vmm"));
    let vmm = env_path("ISOLAB_VMM")
        .or(tuned.filter(|p| p.is_file()))
        .unwrap_or_else(|| release.join("isolab-vmm"));
    if vmm.is_file() {
        // Ours come first: the first contender's report gives the command line.
        contenders.insert(0, ("vmm", Kind::Vmm, vmm));
    }
    // `ISOLAB_VMM_ALSO=label=path,...`: more builds of `isolab-vmm` (A/B
    // of build settings), raced like the others.
    let also = std::env::var("ISOLAB_VMM_ALSO").unwrap_or_default();
    let also: Vec<(String, PathBuf)> = also
        .split(',')
        .filter_map(|s| s.split_once('='))
        .map(|(l, p)| (l.to_string(), PathBuf::from(p)))
        .collect();
    for (label, path) in &also {
        contenders.push((label.as_str(), Kind::Vmm, path.clone()));
    }
    if let Some(f) = env_path("FIRECRACKER") {
        contenders.push(("firecracker", Kind::Firecracker, f));
    }
    let root = cache_root().expect("a cache root");
    let kernel = env_path("ISOLAB_GUEST_KERNEL").or_else(|| {
        newest(&root.join("kernel"), |d| {
            let v = d.join("vmlinux");
            (d.join("meta.json").is_file() && v.is_file()).then_some(v)
        })
    });
    let initrd = env_path("ISOLAB_GUEST_INITRD").or_else(|| {
        newest(&root.join("initramfs"), |p| {
            let n = p.file_name()?.to_str()?;
            (n.starts_with("guest-") && n.ends_with(".cpio")).then(|| p.to_path_buf())
        })
    });
    let (Some(kernel), Some(initrd)) = (kernel, initrd) else {
        println!("SKIPPED monitor_race: no provisioned guest: run `bench provision`");
        return;
    };
    for (_, _, b) in &contenders {
        if !b.is_file() {
            println!("SKIPPED monitor_race: {} is not built", b.display());
            return;
        }
    }
    use isolab_emuhost::{EmulatedHost, FileMap, HostConfig, Invocation};
    let map = |host: &Path, guest: String| FileMap {
        host: host.to_path_buf(),
        guest,
    };
    let mut files = vec![
        map(&exe, format!("{INSIDE}/race")),
        map(&kernel, format!("{INSIDE}/vmlinux")),
        map(&initrd, format!("{INSIDE}/initrd.cpio")),
    ];
    let mut spec = Vec::new();
    for (label, kind, bin) in &contenders {
        files.push(map(bin, format!("{INSIDE}/{label}/monitor")));
        let code = match kind {
            Kind::Firecracker => "fc",
            Kind::Vmm => "vmm",
            Kind::Isolab => "isolab",
        };
        spec.push(format!("{label}:{code}"));
    }
    let var = |k: &str, d: &str| std::env::var(k).unwrap_or_else(|_| d.to_string());
    let inv = Invocation {
        command: vec![format!("{INSIDE}/race"), "--inside".into()],
        env: vec![
            ("RACE_CONTENDERS".into(), spec.join(",")),
            ("ROUNDS".into(), var("ROUNDS", "15")),
            ("MEM_ROUNDS".into(), var("MEM_ROUNDS", "3")),
        ],
        files,
    };
    let host = match EmulatedHost::prepare(HostConfig {
        timeout_s: 3600,
        ..HostConfig::default()
    }) {
        Ok(h) => h,
        Err(e) => {
            println!("SKIPPED monitor_race: the emulated host cannot start: {e}");
            return;
        }
    };
    let out = host
        .run(&inv, &mut |l| println!("{l}"))
        .expect("the emulated host runs the race");
    println!("({})", isolab_emuhost::EMULATED_HOST_LABEL);
    assert_eq!(out.status, 0, "the race failed inside the emulated host");
}

/// One run's measurements.
#[derive(Debug, Default, Clone)]
struct Sample {
    wall_ms: f64,
    /// Peak RSS outside the guest mapping (KiB), when sampled.
    outside_kib: Option<u64>,
    /// Peak RSS of the guest mapping (KiB), when sampled.
    guest_kib: Option<u64>,
    /// KVM's live 2 MiB mappings and fixed page faults (max seen).
    pages_2m: Option<u64>,
    pf_fixed: Option<u64>,
    /// ru_maxrss from wait4 (KiB).
    maxrss_kib: u64,
    /// Our monitors' report (phases, memory), when it printed one.
    report: Option<serde_json::Value>,
}

/// Report phases shown for our monitors, in boot order.
const PHASES: [&str; 13] = [
    "exec_to_monitor_ms",
    "vm_create_ms",
    "memory_setup_ms",
    "kernel_load_ms",
    "initrd_load_ms",
    "device_setup_ms",
    "vcpu_setup_ms",
    "vcpu_start_ms",
    "vmm_setup_ms",
    "kernel_boot_ms",
    "init_ms",
    "start_to_ready_ms",
    "total_ms",
];

fn inside() {
    let contenders: Vec<Contender> = std::env::var("RACE_CONTENDERS")
        .unwrap_or_default()
        .split(',')
        .filter_map(|s| {
            let (label, kind) = s.split_once(':')?;
            Some(Contender {
                label: label.to_string(),
                kind: match kind {
                    "fc" => Kind::Firecracker,
                    "vmm" => Kind::Vmm,
                    _ => Kind::Isolab,
                },
                bin: Path::new(INSIDE).join(label).join("monitor"),
            })
        })
        .collect();
    let n = |k: &str, d: usize| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let (rounds, mem_rounds) = (n("ROUNDS", 15), n("MEM_ROUNDS", 3));
    let _ = Command::new("mount")
        .args(["-t", "debugfs", "none", "/sys/kernel/debug"])
        .status();
    // Our monitor's command line, for the peers.
    let fc_config = Path::new(INSIDE).join("fc.json");
    let first = run_one(&contenders[0], &fc_config, false).expect("our monitor boots the guest");
    let cmdline = first
        .report
        .as_ref()
        .and_then(|r| r["cmdline"].as_str())
        .expect("our report's cmdline")
        .to_string();
    std::fs::write(
        &fc_config,
        serde_json::json!({
            "boot-source": {
                "kernel_image_path": format!("{INSIDE}/vmlinux"),
                "initrd_path": format!("{INSIDE}/initrd.cpio"),
                "boot_args": cmdline,
            },
            "machine-config": {"vcpu_count": 1, "mem_size_mib": GUEST_MIB},
            "drives": [],
        })
        .to_string(),
    )
    .expect("write the Firecracker config");
    println!("kernel command line (all contenders): {cmdline}");
    for thp in ["always", "never"] {
        std::fs::write("/sys/kernel/mm/transparent_hugepage/enabled", thp)
            .expect("set THP in the emulated host");
        let mut results: Vec<Vec<Sample>> = vec![Vec::new(); contenders.len()];
        for c in &contenders {
            run_one(c, &fc_config, false).expect("warm-up");
        }
        for r in 0..rounds {
            for k in 0..contenders.len() {
                let i = (k + r) % contenders.len();
                let s = run_one(&contenders[i], &fc_config, false).expect("timed run");
                results[i].push(s);
            }
        }
        for r in 0..mem_rounds {
            for k in 0..contenders.len() {
                let i = (k + r) % contenders.len();
                let s = run_one(&contenders[i], &fc_config, true).expect("sampled run");
                results[i].push(s);
            }
        }
        report(thp, &contenders, &results, rounds);
    }
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    Some(v[v.len() / 2])
}

/// 95 % interval of median(a) / median(b) over 2,000 resamples of the
/// rounds with replacement, the same rounds for both (they ran
/// interleaved, so a round's load is shared); `None` under 5 rounds.
fn ratio_interval(a: &[f64], b: &[f64]) -> Option<(f64, f64)> {
    let n = a.len().min(b.len());
    if n < 5 {
        return None;
    }
    // A fixed seed, as the harness's bootstrap: reproducible for a race.
    let mut rng = fastrand::Rng::with_seed(0x0015_01ab);
    let mut ratios: Vec<f64> = (0..2000)
        .filter_map(|_| {
            let idx: Vec<usize> = (0..n).map(|_| rng.usize(..n)).collect();
            let ma = median(idx.iter().map(|&i| a[i]).collect())?;
            let mb = median(idx.iter().map(|&i| b[i]).collect())?;
            (mb > 0.0).then(|| ma / mb)
        })
        .collect();
    ratios.sort_by(f64::total_cmp);
    let at = |q: f64| {
        ratios
            .get(((ratios.len() - 1) as f64 * q).round() as usize)
            .copied()
    };
    Some((at(0.025)?, at(0.975)?))
}

fn report(thp: &str, contenders: &[Contender], results: &[Vec<Sample>], rounds: usize) {
    println!(
        "THP {thp}: {rounds} interleaved rounds (wall), sampled rounds after (memory); medians"
    );
    println!(
        "{:<12} {:>9} {:>7} {:>12} {:>8} {:>11} {:>9} {:>9} {:>10}",
        "monitor",
        "wall ms",
        "ratio",
        "outside KiB",
        "ratio",
        "guest KiB",
        "2M maps",
        "pf_fixed",
        "maxrss KiB"
    );
    let wall = |s: &[Sample]| median(s[..rounds].iter().map(|x| x.wall_ms).collect());
    let med = |s: &[Sample], f: fn(&Sample) -> Option<u64>| {
        median(s.iter().filter_map(f).map(|v| v as f64).collect())
    };
    let w0 = wall(&results[0]);
    let o0 = med(&results[0], |s| s.outside_kib);
    for (c, s) in contenders.iter().zip(results) {
        let w = wall(s);
        let o = med(s, |s| s.outside_kib);
        let fmt = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.0}"));
        let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (Some(a), Some(b)) if b > 0.0 => format!("{:.2}", a / b),
            _ => "-".into(),
        };
        println!(
            "{:<12} {:>9} {:>7} {:>12} {:>8} {:>11} {:>9} {:>9} {:>10}",
            c.label,
            w.map_or("-".into(), |v| format!("{v:.1}")),
            ratio(w, w0),
            fmt(o),
            ratio(o, o0),
            fmt(med(s, |s| s.guest_kib)),
            fmt(med(s, |s| s.pages_2m)),
            fmt(med(s, |s| s.pf_fixed)),
            fmt(med(s, |s| Some(s.maxrss_kib))),
        );
        let raw: Vec<String> = s[..rounds]
            .iter()
            .map(|x| format!("{:.1}", x.wall_ms))
            .collect();
        println!("  raw wall ms {}: [{}]", c.label, raw.join(", "));
    }
    // The spread one race leaves on the ratio the issue asks about.
    let first: Vec<f64> = results[0][..rounds].iter().map(|x| x.wall_ms).collect();
    for (c, s) in contenders.iter().zip(results).skip(1) {
        let other: Vec<f64> = s[..rounds].iter().map(|x| x.wall_ms).collect();
        if let (Some(a), Some(b), Some((lo, hi))) = (
            median(first.clone()),
            median(other.clone()),
            ratio_interval(&first, &other),
        ) {
            println!(
                "  wall {} / {}: {:.3} (95% CI {lo:.3}-{hi:.3}, paired bootstrap of the rounds)",
                contenders[0].label,
                c.label,
                a / b
            );
        }
    }
    for (c, s) in contenders.iter().zip(results) {
        if c.kind == Kind::Firecracker {
            continue;
        }
        let line: Vec<String> = PHASES
            .iter()
            .map(|p| {
                let v = median(
                    s[..rounds]
                        .iter()
                        .filter_map(|x| x.report.as_ref()?["phases"][p].as_f64())
                        .collect(),
                );
                format!(
                    "{}={}",
                    p.trim_end_matches("_ms"),
                    v.map_or("-".into(), |v| format!("{v:.1}"))
                )
            })
            .collect();
        println!("  phases {} (median ms): {}", c.label, line.join(" "));
        if let Some(r) = s.last().and_then(|x| x.report.as_ref()) {
            println!(
                "  memory {} (own report, at end): {} guest_memory {}",
                c.label, r["memory_at_end"], r["guest_memory"]
            );
        }
    }
}

fn run_one(c: &Contender, fc_config: &Path, sample: bool) -> Result<Sample, String> {
    match c.kind {
        Kind::Isolab => {
            let mut cmd = Command::new(&c.bin);
            cmd.args(isolab_args());
            spawn_measured(cmd, sample)
        }
        Kind::Firecracker => {
            let mut cmd = Command::new(&c.bin);
            cmd.arg("--no-api").arg("--config-file").arg(fc_config);
            spawn_measured(cmd, sample)
        }
        Kind::Vmm => {
            let mut cmd = Command::new(&c.bin);
            cmd.args(guest_args()).args(["--memory-mib", "128"]);
            spawn_measured(cmd, sample)
        }
    }
}

/// The guest every contender but Firecracker (its config file) boots.
fn guest_args() -> [String; 6] {
    [
        "--kernel".into(),
        format!("{INSIDE}/vmlinux"),
        "--initrd".into(),
        format!("{INSIDE}/initrd.cpio"),
        "--workload".into(),
        "noop".into(),
    ]
}

fn isolab_args() -> Vec<String> {
    let mut args = vec!["vm".to_string(), "run".into()];
    args.extend(guest_args());
    args.extend(["--memory", "128M", "--vcpus", "1", "--json"].map(String::from));
    args
}

/// Spawns `cmd`, optionally sampling its smaps and KVM's counters every
/// 10 ms, and waits with wait4 for its exit and peak RSS.
fn spawn_measured(mut cmd: Command, sample: bool) -> Result<Sample, String> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let t0 = Instant::now();
    let mut child = cmd.spawn().map_err(|e| e.to_string())?;
    let pid = child.id() as libc::pid_t;
    let mut stdout = child.stdout.take();
    let mut stderr = child.stderr.take();
    let drain = std::thread::spawn(move || {
        let mut o = Vec::new();
        let mut e = Vec::new();
        if let Some(s) = stdout.as_mut() {
            let _ = s.read_to_end(&mut o);
        }
        if let Some(s) = stderr.as_mut() {
            let _ = s.read_to_end(&mut e);
        }
        (o, e)
    });
    let mut s = Sample::default();
    let mut status = 0;
    // SAFETY: rusage is plain data, filled by wait4.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: `pid` is our child; status and rusage are valid out
        // pointers; WNOHANG never blocks.
        let r = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut ru) };
        if r == pid {
            break;
        }
        if r < 0 {
            return Err(std::io::Error::last_os_error().to_string());
        }
        if t0.elapsed() > Duration::from_secs(120) {
            let _ = child.kill();
            return Err("a run took over 120 s".into());
        }
        if !sample {
            // Blocking: a polling parent would take the emulated host's one
            // CPU from the monitor it times.
            // SAFETY: as above, without WNOHANG.
            let r = unsafe { libc::wait4(pid, &mut status, 0, &mut ru) };
            if r == pid {
                break;
            }
            return Err(std::io::Error::last_os_error().to_string());
        }
        {
            if let Some((outside, guest)) = smaps(pid) {
                s.outside_kib = Some(s.outside_kib.unwrap_or(0).max(outside));
                s.guest_kib = Some(s.guest_kib.unwrap_or(0).max(guest));
            }
            for (file, slot) in [("pages_2m", &mut s.pages_2m), ("pf_fixed", &mut s.pf_fixed)] {
                if let Some(v) = std::fs::read_to_string(format!("/sys/kernel/debug/kvm/{file}"))
                    .ok()
                    .and_then(|t| t.trim().parse::<u64>().ok())
                {
                    *slot = Some(slot.unwrap_or(0).max(v));
                }
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    s.wall_ms = t0.elapsed().as_secs_f64() * 1e3;
    s.maxrss_kib = ru.ru_maxrss as u64;
    let (out, err) = drain.join().unwrap_or_default();
    s.report = String::from_utf8_lossy(&out)
        .lines()
        .find_map(|l| serde_json::from_str(l).ok());
    let code = libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status));
    if code != Some(0) {
        return Err(format!(
            "{:?} exited {code:?}: {}",
            cmd.get_program(),
            String::from_utf8_lossy(&err)
        ));
    }
    Ok(s)
}

/// RSS outside and inside the guest mapping (KiB): the guest mapping is
/// the one exactly as large as guest RAM.
/// `None` while the child is still this benchmark: between the spawn's
/// clone and its exec the child's smaps are this process's (about 1.6 MiB
/// here), which once counted as the monitor's peak.
fn smaps(pid: libc::pid_t) -> Option<(u64, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps")).ok()?;
    let me = std::env::current_exe().ok()?;
    if text.contains(&*me.to_string_lossy()) {
        return None;
    }
    let (mut outside, mut guest) = (0u64, 0u64);
    let mut is_guest = false;
    for line in text.lines() {
        let first = line.split_whitespace().next().unwrap_or("");
        if let Some((a, b)) = first.split_once('-') {
            if let (Ok(a), Ok(b)) = (u64::from_str_radix(a, 16), u64::from_str_radix(b, 16)) {
                is_guest = b - a == GUEST_MIB << 20;
                continue;
            }
        }
        if let Some(v) = line.strip_prefix("Rss:") {
            let kib: u64 = v.trim().trim_end_matches("kB").trim().parse().unwrap_or(0);
            if is_guest {
                guest += kib;
            } else {
                outside += kib;
            }
        }
    }
    Some((outside, guest))
}
