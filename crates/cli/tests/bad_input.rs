//! A table of bad invocations across every subcommand of `bench`, run as a
//! user would type them. Each one must:
//!
//! - exit 2 (usage error, docs/contracts.md "Exit codes of `bench`");
//! - print exactly one line on stderr (`error: ...`), no panic text, and
//!   nothing on stdout;
//! - finish within [`LIMIT`] (a FIFO given as a kernel must not block the
//!   open): a child still running then is killed by its pid and the test
//!   fails;
//! - leave nothing behind: no instance dir under `/run/isolab` and no
//!   cgroup under the `isolab` parents named by that run's launcher pid
//!   (ids are `c<pid>-...`), and output paths given as symlinks are never
//!   followed (their target is unchanged).
//!
//! None of these reach a launch, so the test needs no privileges and runs
//! in a few seconds. Entries of other engineers' live runs are ignored: only
//! names carrying a pid of this test's children count.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Longest one bad invocation may take (generous: the machine is shared).
const LIMIT: Duration = Duration::from_secs(30);

/// Files the table refers to, in a temp dir: `@/name` in an argument.
struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path();
        nix::unistd::mkfifo(&p.join("fifo"), nix::sys::stat::Mode::S_IRWXU).unwrap();
        std::fs::write(p.join("victim"), "keep\n").unwrap();
        std::os::unix::fs::symlink(p.join("victim"), p.join("link")).unwrap();
        std::fs::create_dir(p.join("victimdir")).unwrap();
        std::os::unix::fs::symlink(p.join("victimdir"), p.join("dirlink")).unwrap();
        std::fs::write(p.join("script"), "#!/bin/sh\nexit 0\n").unwrap();
        std::fs::write(p.join("notakernel"), "just text\n").unwrap();
        Self { dir }
    }

    fn arg(&self, a: &str) -> String {
        match a.strip_prefix("@/") {
            Some(rest) => self.dir.path().join(rest).display().to_string(),
            None if a == "@" => self.dir.path().display().to_string(),
            None => a.to_owned(),
        }
    }

    /// The symlinks' targets are untouched and nothing new appeared.
    fn assert_untouched(&self, args: &str) {
        let p = self.dir.path();
        assert_eq!(
            std::fs::read_to_string(p.join("victim")).unwrap(),
            "keep\n",
            "{args:?} followed a symlink"
        );
        assert_eq!(
            std::fs::read_dir(p.join("victimdir")).unwrap().count(),
            0,
            "{args:?} wrote through a symlinked directory"
        );
        let mut names: Vec<String> = std::fs::read_dir(p)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(
            names,
            [
                "dirlink",
                "fifo",
                "link",
                "notakernel",
                "script",
                "victim",
                "victimdir"
            ],
            "{args:?} created something"
        );
    }
}

/// Every bad invocation, one per line (arguments split at whitespace);
/// `@/x` is the fixture's file `x`.
const TABLE: &[&str] = &[
    // The command line itself.
    "bogus",
    "container",
    "container bogus",
    "container run",
    "vm",
    "emuhost",
    "demo",
    // container run
    "container run --workload nope",
    "container run --workload noop --memory 64X",
    "container run --workload noop --memory 0",
    "container run --workload noop --memory 99999999T",
    "container run --workload noop --memory -1",
    "container run --workload noop --cpus 0",
    "container run --workload noop --cpus 1e300",
    "container run --workload noop --cpus NaN",
    "container run --workload noop --cpus inf",
    "container run --workload noop --pids 0",
    "container run --workload noop --pids 18446744073709551615",
    "container run --workload noop --cpuset 4095",
    "container run --workload noop --cpuset x",
    "container run --workload noop --hostname a_b",
    "container run --workload noop --net",
    "container run --workload noop --requests 5",
    "container run --workload api --net --requests 9999999",
    "container run --workload noop --privileged --privileged",
    "container run --workload noop --workload-bin @/script",
    "container run --workload noop --workload-bin @/fifo",
    "container run --workload noop --workload-bin @/missing",
    "container run --workload noop --workload-bin @",
    // a user's image
    "container run --image @/missing",
    "container run --image @/victim",
    "container run --image @/fifo",
    "container run --bundle @/missing",
    "container run --bundle @/victimdir",
    "container run --image @/missing --workload noop",
    "container run --workload noop --ready exit",
    "container run --image @/missing --ready udp:53",
    "container run --image @/missing --ready http:0/",
    "container run --image @/missing --ready log:",
    "compare --image @/missing",
    "compare --bundle @/victimdir",
    "compare --image @/missing --host emulated",
    "compare --bundle @/victimdir --host emulated",
    "compare --image-key sha256-00 --host emulated",
    "compare --image-label x --host emulated",
    "compare --ready tcp:99999",
    "compare -- echo hi",
    // vm run
    "vm run --workload nope",
    "vm run --workload noop --memory 128",
    "vm run --workload noop --memory 0",
    "vm run --workload noop --memory 16M",
    "vm run --workload noop --memory 99999999G",
    "vm run --workload noop --vcpus 0",
    "vm run --workload noop --vcpus 256",
    "vm run --workload noop --kernel @/fifo",
    "vm run --workload noop --kernel @/missing",
    "vm run --workload noop --kernel @",
    "vm run --workload noop --kernel @/notakernel",
    "vm run --workload noop --initrd @/fifo",
    "vm run --workload noop --console-file @/link",
    "vm run --workload noop --console-file @/missing/console",
    "vm run --workload noop --console-file @",
    "vm run --workload noop --console --console-file @/c",
    "vm run --workload noop --ready-fd 999",
    "vm run --workload noop --ready-fd -5",
    "vm run --workload noop --net",
    "vm run --workload noop --host mars",
    "vm run --workload noop --host emulated --kernel @/notakernel",
    "vm run --workload noop --host emulated --console-file @/c",
    // compare
    "compare --workload nope",
    "compare --workload hog",
    "compare --modes process,teleport",
    "compare --modes ,",
    "compare --peers docker",
    "compare --runs 0",
    "compare --runs 1e18",
    "compare --runs 18446744073709551616",
    "compare --warmup 18446744073709551615",
    "compare --requests -1",
    "compare --ready-timeout 18446744073709551615",
    "compare --ready-timeout 0",
    "compare --budget 4X --density",
    "compare --budget 0 --density",
    "compare --max-instances 0 --density",
    "compare --format yaml",
    "compare --host cloud",
    "compare --out @/dirlink",
    "compare --out @/link",
    "compare --out @/victim",
    "compare --out @/missing/report",
    // demo
    "demo nope",
    "demo kernel --modes process,docker",
    "demo kernel --modes ,",
    "demo kernel --format pdf",
    "demo kernel --host mars",
    "demo kernel --out @/link",
    "demo list --out @/link",
    "demo kernel --out @",
    "demo kernel --out @/missing/x.md",
    // emuhost
    "emuhost run",
    "emuhost run --memory lots -- true",
    "emuhost run --memory 0 -- true",
    "emuhost run --memory 100 -- true",
    "emuhost run --smp 0 -- true",
    "emuhost run --smp 65 -- true",
    "emuhost run --timeout 0 -- true",
    "emuhost run --timeout 99999999 -- true",
    "emuhost run --file nocolon -- true",
    "emuhost run --file @/missing:/x -- true",
    "emuhost run --file @/victim:relative -- true",
    "emuhost info --bogus",
    // provision
    "provision --workload nope",
    "provision --source @/fifo",
    "provision --source @",
    "provision --bin-dir @/missing",
];

/// Directories whose entries name instances: the run dir and the cgroup
/// parents (v2 and each v1 controller).
fn instance_entries() -> Vec<String> {
    let mut roots = vec![
        PathBuf::from("/run/isolab"),
        PathBuf::from("/sys/fs/cgroup/isolab"),
    ];
    if let Ok(rd) = std::fs::read_dir("/sys/fs/cgroup") {
        roots.extend(rd.flatten().map(|e| e.path().join("isolab")));
    }
    let mut out = vec![];
    for r in roots {
        walk(&r, 3, &mut out);
    }
    out
}

fn walk(dir: &Path, depth: u32, out: &mut Vec<String>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let p = e.path();
        out.push(p.display().to_string());
        if depth > 1 && e.file_type().is_ok_and(|t| t.is_dir()) {
            walk(&p, depth - 1, out);
        }
    }
}

/// Entries a launcher with this pid would have made.
fn left_by(pid: u32) -> Vec<String> {
    let id = format!("c{pid}-");
    let bare = pid.to_string();
    instance_entries()
        .into_iter()
        .filter(|p| {
            let name = Path::new(p)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            name.starts_with(&id) || name == bare || name.starts_with(&format!("{bare}-"))
        })
        .collect()
}

/// Runs one invocation with a deadline; stdout and stderr go to files so
/// a chatty child can never block on a full pipe.
fn run(args: &[String], tmp: &Path) -> (Option<i32>, String, String, u32) {
    let out = tmp.join("stdout");
    let err = tmp.join("stderr");
    let mut child = Command::new(env!("CARGO_BIN_EXE_bench"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(&err).unwrap())
        .env_remove("ISOLAB_STRICT")
        .spawn()
        .unwrap();
    let pid = child.id();
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > LIMIT {
            // Our own child, by its pid.
            let _ = child.kill();
            let _ = child.wait();
            panic!("{args:?} still running after {LIMIT:?}: killed (a hang)");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    (
        status.code(),
        std::fs::read_to_string(out).unwrap(),
        String::from_utf8_lossy(&std::fs::read(err).unwrap()).into_owned(),
        pid,
    )
}

#[test]
fn every_bad_invocation_exits_2_with_one_line_and_leaves_nothing() {
    assert!(TABLE.len() >= 40, "the issue asks for at least 40");
    let fx = Fixture::new();
    let tmp = tempfile::tempdir().unwrap();
    let mut failures = vec![];
    for row in TABLE {
        let args: Vec<String> = row.split_whitespace().map(|a| fx.arg(a)).collect();
        let (code, stdout, stderr, pid) = run(&args, tmp.path());
        let lines = stderr.lines().count();
        let mut why = vec![];
        if code != Some(2) {
            why.push(format!("exit {code:?}, expected 2"));
        }
        if lines != 1 {
            why.push(format!("{lines} lines on stderr"));
        }
        if stderr.contains("panicked") || stderr.contains("RUST_BACKTRACE") {
            why.push("panic".into());
        }
        if !stderr.starts_with("error: ") {
            why.push("stderr does not start with 'error: '".into());
        }
        if !stdout.is_empty() {
            why.push(format!("stdout not empty: {stdout:?}"));
        }
        let left = left_by(pid);
        if !left.is_empty() {
            why.push(format!("left behind: {left:?}"));
        }
        if !why.is_empty() {
            failures.push(format!("{row:?}: {} | {}", why.join("; "), stderr.trim()));
        }
        fx.assert_untouched(row);
    }
    assert!(
        failures.is_empty(),
        "{} of {} bad invocations misbehaved:\n{}",
        failures.len(),
        TABLE.len(),
        failures.join("\n")
    );
}
