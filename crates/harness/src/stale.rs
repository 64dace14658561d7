//! What a launcher killed without cleaning up (SIGKILL, a crash) leaves,
//! and how it goes away.
//!
//! - **OCI peers** (runc, crun): every launcher keeps its runtimes' state
//!   under its own root, `/run/isolab/oci/<pid>.<start time>/<runtime>`
//!   (`--root`), and its bundles as `/run/isolab/bundles/isolab-<runtime>-
//!   <pid>-<n>`. A *watchdog* (a `sh` in its own process group, started
//!   with the first peer) waits for the launcher's end on a pipe only the
//!   launcher holds; at EOF — however the launcher ended — it runs
//!   `<runtime> --root R delete --force` for every container left and
//!   removes the root, the bundles (each one's network namespace name,
//!   `<bundle>/netns`, unmounted first: `modes/peer_net.rs`) and the
//!   cgroups of containers caught mid-create: peers die with their
//!   launcher. The veths of those namespaces are in the launcher's
//!   workbench namespace, which goes at the next start. The runtime process has
//!   `PR_SET_PDEATHSIG=SIGKILL` (`modes/oci.rs`), so it never finishes a
//!   create after its launcher is gone. At
//!   every start, [`clean_at_start`] does the same for every root whose
//!   launcher is gone (pid dead, or reused: the start time differs), in
//!   case a watchdog was killed too.
//! - **The workbench namespace** (`/run/netns/isolab0`): removed at every
//!   start when nobody holds its lock
//!   ([`isolab_net::workbench::remove_stale`]); a live `--net` run is left
//!   alone.
//! - Our own containers' instance dirs and cgroups are removed by
//!   `isolab_container` at its next start (`instance::clean_stale`).
//! - **Image layers** (a user's image's writable overlay): a peer's is its
//!   bundle's `rootfs`, unmounted with the bundle; a process-mode
//!   instance's is under `/run/isolab/layers/<pid>.<start time>-<n>`,
//!   unmounted and removed at every start once its launcher is gone
//!   (`modes/image_layer.rs`).

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, Once};

/// Where launchers keep their runtimes' state roots.
pub const OCI_STATE_DIR: &str = "/run/isolab/oci";
/// Where the OCI peers' bundles are written.
pub const BUNDLES_DIR: &str = "/run/isolab/bundles";
/// The runtimes whose state is kept per launcher (gVisor's is `runsc`).
pub const RUNTIMES: [&str; 3] = ["runc", "crun", "runsc"];

/// Field 22 of `/proc/<pid>/stat`: the start time in clock ticks.
fn start_time(proc_root: &Path, pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(proc_root.join(pid.to_string()).join("stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// This launcher's directory name: `<pid>.<start time>`.
pub(crate) fn owner_name() -> String {
    let pid = std::process::id();
    let start = start_time(Path::new("/proc"), pid).unwrap_or(0);
    format!("{pid}.{start}")
}

/// Whether the launcher a state directory is named after still runs.
pub(crate) fn owner_alive(proc_root: &Path, name: &str) -> bool {
    let Some((pid, start)) = name.split_once('.') else {
        return true; // not ours: leave it
    };
    let (Ok(pid), Ok(start)) = (pid.parse::<u32>(), start.parse::<u64>()) else {
        return true;
    };
    start_time(proc_root, pid) == Some(start)
}

/// This launcher's state root for `runtime` (created, mode 0700), with the
/// watchdog started on first use.
pub fn oci_root(runtime: &str) -> std::io::Result<PathBuf> {
    use std::os::unix::fs::DirBuilderExt;
    let dir = Path::new(OCI_STATE_DIR).join(owner_name());
    let root = dir.join(runtime);
    // Another launcher's watchdog may remove the (then empty) parent
    // between our mkdirs; try again a few times.
    let mut attempt = 0;
    loop {
        match std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&root)
        {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && attempt < 5 => attempt += 1,
            other => break other?,
        }
    }
    start_watchdog(&dir);
    Ok(root)
}

/// The bundle name prefix of this launcher's peers of `runtime`.
pub fn bundle_prefix(runtime: &str) -> String {
    format!("isolab-{runtime}-{}-", std::process::id())
}

/// The watchdog's script: `$1` the launcher's state dir, `$2` the bundles
/// dir, `$3` the launcher pid, `$4` the [`RUNTIMES`] (space-separated). It ignores the terminal's signals (the
/// launcher handles Ctrl-C itself), waits for EOF on stdin, then deletes
/// every container under the launcher's roots, kills and removes what no
/// runtime lists (the cgroups named after the launcher: a container caught
/// mid-create, gVisor's sandbox among them, whose command line names the
/// root), then deletes again and again while a
/// runtime process still works under a root (a `runc run` caught mid-
/// create finishes creating after the launcher died; removing its root
/// then would orphan the container), for at most about 20 s, kills what
/// is left in those cgroups once more, and removes every root that is idle
/// (what it still lists, no runtime can delete: a state file left empty).
const WATCHDOG: &str = r#"trap '' INT TERM HUP QUIT
cat >/dev/null
# A runtime still working under root $r (a `run` the launcher started
# just before it died): its command line names the root. The pattern goes
# through stdin so grep's own command line does not match.
busy() { printf '%s\n' "$r" | grep -lsF -f - /proc/[0-9]*/cmdline >/dev/null; }
sweep() {
  for id in $("$rt" --root "$r" list --quiet 2>/dev/null); do
    "$rt" --root "$r" delete --force "$id" >/dev/null 2>&1
  done
}
for rt in $4; do
  r="$1/$rt"
  [ -d "$r" ] || continue
  command -v "$rt" >/dev/null 2>&1 || continue
  sweep
done
# Cgroups of a container caught mid-create (no state the runtime can
# list, e.g. gVisor's sandbox, whose command line names the root and would
# keep it busy): named after this launcher; kill what is left in them,
# then remove. Before the roots, so nothing stays busy for that reason,
# and again after the last sweep.
kill_cgroups() {
  for i in 1 2 3 4 5; do
    left=
    for d in /sys/fs/cgroup/isolab/isolab-*-"$3"-* /sys/fs/cgroup/*/isolab/isolab-*-"$3"-*; do
      [ -d "$d" ] || continue
      ours=
      for rt in $4; do case "${d##*/}" in isolab-"$rt"-"$3"-*) ours=1;; esac; done
      [ -n "$ours" ] || continue
      for p in $(cat "$d/cgroup.procs" 2>/dev/null); do kill -9 "$p" 2>/dev/null; done
      rmdir "$d" 2>/dev/null || left=1
    done
    [ -z "$left" ] && break
    sleep 0.2
  done
}
kill_cgroups
for rt in $4; do
  r="$1/$rt"
  [ -d "$r" ] || continue
  command -v "$rt" >/dev/null 2>&1 || continue
  n=0
  while busy && [ $n -lt 200 ]; do sleep 0.1; sweep; n=$((n+1)); done
  sweep
done
kill_cgroups
# What a root still lists now cannot be deleted (a state file left empty
# by a runtime killed mid-create) and no longer runs: an idle root goes.
for rt in $4; do
  r="$1/$rt"
  [ -d "$r" ] || continue
  busy || rm -rf "$r"
done
rmdir "$1" "${1%/*}" 2>/dev/null
# A bundle's network namespace name (a bind mount) and an image's writable
# layer (an overlay at rootfs) are unmounted first: a mount point cannot be
# removed.
for rt in $4; do
  for n in "$2"/isolab-"$rt"-"$3"-*/netns "$2"/isolab-"$rt"-"$3"-*/rootfs; do
    [ -e "$n" ] && umount -l "$n" 2>/dev/null
  done
  rm -rf "$2"/isolab-"$rt"-"$3"-*
done
rmdir "$2" 2>/dev/null
# `/run/isolab` itself, once nothing of ours is left in it.
case "${2%/*}" in */isolab) rmdir "${2%/*}" 2>/dev/null;; esac
exit 0
"#;

/// Starts the watchdog once per process; its stdin's write end lives in a
/// static, so it closes only when this process ends.
fn start_watchdog(dir: &Path) {
    static STARTED: Once = Once::new();
    static PIPE: Mutex<Option<std::process::ChildStdin>> = Mutex::new(None);
    STARTED.call_once(|| {
        let child = Command::new("sh")
            .arg("-c")
            .arg(WATCHDOG)
            .arg("isolab-peer-watchdog")
            .arg(dir)
            .arg(BUNDLES_DIR)
            .arg(std::process::id().to_string())
            .arg(RUNTIMES.join(" "))
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn();
        if let Ok(mut c) = child {
            if let Ok(mut p) = PIPE.lock() {
                *p = c.stdin.take();
            }
            // Reaped by init once this process is gone; never waited here.
            std::mem::forget(c);
        }
    });
}

/// What [`clean_at_start`] removed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Cleaned {
    /// Peer containers deleted (`runtime:id`).
    pub peers: Vec<String>,
    /// Launcher state dirs removed.
    pub roots: Vec<String>,
    /// Whether a stale workbench namespace or lock file was removed.
    pub netns: bool,
    /// Process-mode image layers of launchers that are gone, unmounted and
    /// removed.
    pub layers: usize,
}

/// Deletes the peers of launchers that are gone (see the module docs).
pub fn clean_stale_peers(state_dir: &Path, bundles_dir: &Path, proc_root: &Path) -> Cleaned {
    let mut out = Cleaned::default();
    let Ok(entries) = std::fs::read_dir(state_dir) else {
        return out;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if owner_alive(proc_root, &name) {
            continue;
        }
        // The runtimes delete what they know; then what they do not know
        // (caught mid-create, e.g. gVisor's sandbox, whose command line
        // names the root and would keep it busy) is killed with its
        // cgroups; only then are the roots checked, empty and idle.
        let mut all_gone = true;
        let mut roots = vec![];
        for rt in RUNTIMES {
            let root = e.path().join(rt);
            if !root.is_dir() {
                continue;
            }
            let Some(bin) = crate::modes::spawn::which(rt) else {
                all_gone = false;
                continue;
            };
            for id in runtime_list(&bin, &root).unwrap_or_default() {
                let deleted = Command::new(&bin)
                    .arg("--root")
                    .arg(&root)
                    .args(["delete", "--force", &id])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success());
                if deleted {
                    out.peers.push(format!("{rt}:{id}"));
                }
            }
            roots.push(root);
        }
        let pid = name.split_once('.').map(|(pid, _)| pid.to_owned());
        if let Some(pid) = &pid {
            remove_peer_cgroups(Path::new("/sys/fs/cgroup"), pid);
        }
        // What is still listed now could not be deleted (a state file left
        // empty by a runtime killed mid-create: `list` shows its name,
        // `delete` cannot read it), and nothing of it runs any more: the
        // cgroups are gone. An idle root goes, whatever it still lists.
        for root in roots {
            if runtime_busy(proc_root, &root) {
                all_gone = false;
            } else {
                let _ = std::fs::remove_dir_all(&root);
            }
        }
        if all_gone && std::fs::remove_dir_all(e.path()).is_ok() {
            out.roots.push(name.clone());
        }
        if let Some(pid) = &pid {
            remove_bundles(bundles_dir, pid);
        }
    }
    let _ = std::fs::remove_dir(state_dir);
    out
}

/// The containers `<bin> --root <root> list` knows; `None` when it fails.
fn runtime_list(bin: &Path, root: &Path) -> Option<Vec<String>> {
    let o = Command::new(bin)
        .arg("--root")
        .arg(root)
        .args(["list", "--quiet"])
        .stderr(Stdio::null())
        .output()
        .ok()?;
    o.status.success().then(|| {
        String::from_utf8_lossy(&o.stdout)
            .split_whitespace()
            .map(str::to_owned)
            .collect()
    })
}

/// Whether a process still names `root` on its command line (a runtime
/// caught mid-create: its container appears in `list` only later, and
/// removing the root now would orphan it).
fn runtime_busy(proc_root: &Path, root: &Path) -> bool {
    let needle = root.as_os_str().as_encoded_bytes();
    let Ok(rd) = std::fs::read_dir(proc_root) else {
        return false;
    };
    rd.flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
        })
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .any(|cmd| cmd.split(|b| *b == 0).any(|arg| arg == needle))
}

/// Cgroups of launcher `pid`'s peers that no runtime state names any more
/// (a container caught mid-create): what is left in them is killed, then
/// they are removed. Only names carrying the dead launcher's pid.
fn remove_peer_cgroups(cgroup_root: &Path, pid: &str) {
    let prefixes: Vec<String> = RUNTIMES
        .iter()
        .map(|rt| format!("isolab-{rt}-{pid}-"))
        .collect();
    let mut parents = vec![cgroup_root.join("isolab")];
    if let Ok(rd) = std::fs::read_dir(cgroup_root) {
        parents.extend(rd.flatten().map(|e| e.path().join("isolab")));
    }
    for parent in parents {
        let Ok(rd) = std::fs::read_dir(&parent) else {
            continue;
        };
        for d in rd.flatten() {
            let n = d.file_name().to_string_lossy().into_owned();
            if !prefixes.iter().any(|p| n.starts_with(p)) {
                continue;
            }
            for _ in 0..5 {
                let procs =
                    std::fs::read_to_string(d.path().join("cgroup.procs")).unwrap_or_default();
                for p in procs
                    .split_whitespace()
                    .filter_map(|p| p.parse::<i32>().ok())
                {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(p),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
                if std::fs::remove_dir(d.path()).is_ok() {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
        }
    }
}

/// The bundles of launcher `pid` (`isolab-<runtime>-<pid>-<n>`).
fn remove_bundles(bundles_dir: &Path, pid: &str) {
    let Ok(rd) = std::fs::read_dir(bundles_dir) else {
        return;
    };
    let prefixes: Vec<String> = RUNTIMES
        .iter()
        .map(|rt| format!("isolab-{rt}-{pid}-"))
        .collect();
    for b in rd.flatten() {
        let n = b.file_name().to_string_lossy().into_owned();
        if prefixes.iter().any(|p| n.starts_with(p)) {
            crate::modes::peer_net::release_in(&b.path());
            crate::modes::image_layer::release_in(&b.path());
            let _ = std::fs::remove_dir_all(b.path());
        }
    }
    let _ = std::fs::remove_dir(bundles_dir);
}

/// Removes the leftovers of dead launchers; once per process, before the
/// first launch (compare, demo, `bench container run`, `bench vm run`).
/// Best effort: what cannot be removed stays for the next start.
pub fn clean_at_start() -> Cleaned {
    static DONE: Once = Once::new();
    let mut out = Cleaned::default();
    DONE.call_once(|| {
        if !nix::unistd::geteuid().is_root() {
            return;
        }
        out = clean_stale_peers(
            Path::new(OCI_STATE_DIR),
            Path::new(BUNDLES_DIR),
            Path::new("/proc"),
        );
        out.layers = crate::modes::image_layer::clean_stale(
            Path::new(crate::modes::image_layer::LAYERS_DIR),
            Path::new("/proc"),
        );
        out.netns = isolab_net::workbench::remove_stale_all(&Default::default()).unwrap_or(0) > 0;
        // A killed peer's runtime left `/isolab` in hierarchies we do not manage.
        isolab_cgroups::remove_unused_parents();
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_watchdog_leaves_no_empty_directory_of_ours() {
        let run = tempfile::tempdir().unwrap();
        let isolab = run.path().join("isolab");
        let root = isolab.join("oci").join("1.2");
        let bundles = isolab.join("bundles");
        std::fs::create_dir_all(root.join("runc")).unwrap();
        std::fs::create_dir_all(bundles.join("isolab-runc-1-0")).unwrap();
        // Its launcher's end closed at once: it cleans up straight away.
        let st = Command::new("sh")
            .arg("-c")
            .arg(WATCHDOG)
            .arg("isolab-peer-watchdog")
            .arg(&root)
            .arg(&bundles)
            .arg("1")
            .arg("runc")
            .stdin(Stdio::null())
            .status()
            .unwrap();
        assert!(st.success());
        assert!(!isolab.exists(), "{} left", isolab.display());
        assert!(run.path().is_dir());
    }

    #[test]
    fn a_launcher_is_alive_only_with_its_pid_and_start_time() {
        let me = std::process::id();
        let start = start_time(Path::new("/proc"), me).unwrap();
        let proc_root = Path::new("/proc");
        assert!(owner_alive(proc_root, &format!("{me}.{start}")));
        assert!(
            !owner_alive(proc_root, &format!("{me}.{}", start + 1)),
            "reused pid"
        );
        assert!(!owner_alive(proc_root, "4194305.1"), "no such pid");
        assert!(owner_alive(proc_root, "lost+found"), "not ours: left alone");
        assert_eq!(owner_name(), format!("{me}.{start}"));
    }

    #[test]
    fn a_dead_launchers_root_and_bundles_go_and_a_live_ones_stay() {
        let d = tempfile::tempdir().unwrap();
        let state = d.path().join("oci");
        let bundles = d.path().join("bundles");
        let dead = state.join("4194305.7");
        let live = state.join(owner_name());
        // Empty runtime roots: nothing to delete, the dirs go.
        std::fs::create_dir_all(dead.join("runc")).unwrap();
        std::fs::create_dir_all(live.join("runc")).unwrap();
        for b in [
            "isolab-runc-4194305-0",
            "isolab-crun-4194305-3",
            &format!("isolab-runc-{}-0", std::process::id()),
        ] {
            std::fs::create_dir_all(bundles.join(b)).unwrap();
        }
        let c = clean_stale_peers(&state, &bundles, Path::new("/proc"));
        if crate::modes::spawn::which("runc").is_some() {
            assert_eq!(c.roots, ["4194305.7"]);
            assert!(!dead.exists());
        }
        assert!(c.peers.is_empty());
        assert!(live.join("runc").is_dir(), "a live launcher's root stays");
        let left: Vec<String> = std::fs::read_dir(&bundles)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(left, [format!("isolab-runc-{}-0", std::process::id())]);
    }

    #[test]
    fn a_dead_launchers_root_goes_even_with_a_state_no_runtime_can_read() {
        // What a runsc killed mid-create left (seen in CI): an empty state
        // file that `list` names and `delete --force` cannot read.
        let test = "a_dead_launchers_root_goes_even_with_a_state_no_runtime_can_read";
        if !isolab_testkit::require(test, isolab_testkit::missing_command("runsc", "runsc")) {
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let state = d.path().join("oci");
        let dead = state.join("4194305.9");
        let root = dead.join("runsc");
        std::fs::create_dir_all(&root).unwrap();
        let id = "isolab-runsc-4194305-3";
        std::fs::write(root.join(format!("{id}_sandbox:{id}.state")), b"").unwrap();
        let runsc = crate::modes::spawn::which("runsc").unwrap();
        assert_eq!(runtime_list(&runsc, &root), Some(vec![id.to_string()]));
        let c = clean_stale_peers(&state, &d.path().join("bundles"), Path::new("/proc"));
        assert!(c.peers.is_empty(), "nothing could be deleted");
        assert_eq!(c.roots, ["4194305.9"]);
        assert!(!dead.exists());
    }
}
