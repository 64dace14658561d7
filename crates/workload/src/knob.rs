//! `workload knob [--change]`: tries to change kernel settings ("knobs") and
//! reports, for each, the value before, whether the kernel accepted the
//! write, and the value after. Used by the kernel-knobs demo to show which
//! settings a container shares with the host, which ones a namespace
//! confines, and that a microVM guest only ever changes its own kernel.
//!
//! Without `--change` nothing is written: each knob's `/proc/sys` file is
//! opened for writing and closed again. The kernel makes its permission
//! and read-only-mount checks at `open(2)` (`EACCES`, `EPERM`, `EROFS`), so
//! the open says whether a write would be accepted while changing nothing,
//! not even by writing back the value just read (which could undo someone
//! else's change made in between). That is the only form the demo runs
//! directly on the host (the plain-process column). `--change` writes a
//! different value and is run only inside a container or a guest; the demo
//! reads the host's values before and after and fails loudly if any moved.
//!
//! Knobs, and why each one:
//! - `kernel.domainname` (through `setdomainname(2)` with `--change`, its
//!   `/proc/sys` file without): owned by the UTS namespace, so a
//!   container's change is confined to it;
//! - `net.ipv4.ip_default_ttl` through `/proc/sys`: owned by the network
//!   namespace;
//! - `vm.swappiness` through `/proc/sys`: global, one value for the whole
//!   kernel (harmless to move, and this machine has no swap).
//!
//! The result line is `{"workload":"knob","ok":true,"knobs":[{...}]}`; `ok` is
//! false only for a usage-independent failure of the probe itself, never
//! because the kernel refused a write (that refusal is the observation).

use std::path::Path;

use serde_json::{json, Map, Value};

use crate::{ready, result};

/// The value `--change` gives the domain name.
pub const DEMO_DOMAINNAME: &str = "isolab-demo";

/// Signals ready, then tries every knob (the workload `knob [--change]`).
pub fn run_workload(change: bool) -> Result<Map<String, Value>, crate::WorkloadError> {
    ready::signal()?;
    Ok(run(change, Path::new("/proc")))
}

/// Tries every knob; `proc_root` is `/proc` outside tests.
pub fn run(change: bool, proc_root: &Path) -> Map<String, Value> {
    let mut out = result::object("knob", true);
    out.insert("change".into(), change.into());
    let knobs = vec![
        if change {
            domainname()
        } else {
            sysctl(proc_root, "kernel.domainname", false)
        },
        sysctl(proc_root, "net.ipv4.ip_default_ttl", change),
        sysctl(proc_root, "vm.swappiness", change),
    ];
    out.insert("knobs".into(), Value::Array(knobs));
    out
}

fn current_domainname() -> Option<String> {
    nix::sys::utsname::uname()
        .ok()
        .map(|u| u.domainname().to_string_lossy().into_owned())
}

/// `--change` only: sets the UTS namespace's domain name.
fn domainname() -> Value {
    let before = current_domainname();
    let target = DEMO_DOMAINNAME.to_owned();
    // SAFETY: the pointer and length describe `target`'s bytes, which live
    // across the call; the kernel only reads them.
    let rc = unsafe { libc::setdomainname(target.as_ptr().cast(), target.len()) };
    let write = if rc == 0 {
        Ok(())
    } else {
        Err(nix::Error::last())
    };
    entry(
        "kernel.domainname",
        "setdomainname(2)",
        before,
        &target,
        write,
        current_domainname(),
    )
}

/// The path of a dotted sysctl name under `proc_root/sys`.
pub fn sysctl_path(proc_root: &Path, name: &str) -> std::path::PathBuf {
    proc_root.join("sys").join(name.replace('.', "/"))
}

/// The value a `--change` run writes: one more than the current number
/// (kept within the ranges the kernel accepts for both numeric knobs).
fn changed_number(before: &str) -> String {
    match before.trim().parse::<u32>() {
        Ok(v) if v < 100 => (v + 1).to_string(),
        Ok(v) => (v - 1).to_string(),
        Err(_) => before.to_owned(),
    }
}

fn sysctl(proc_root: &Path, name: &str, change: bool) -> Value {
    let path = sysctl_path(proc_root, name);
    let read = || {
        std::fs::read_to_string(&path)
            .ok()
            .map(|s| s.trim().to_owned())
    };
    let before = read();
    let Some(b) = before.clone() else {
        return json!({
            "name": name,
            "via": format!("/proc/sys/{}", name.replace('.', "/")),
            "before": null,
            "attempted": null,
            "accepted": false,
            "error": "not present in this kernel",
            "after": null,
        });
    };
    let errno = |e: std::io::Error| nix::Error::from_raw(e.raw_os_error().unwrap_or(libc::EIO));
    let via = format!("/proc/sys/{}", name.replace('.', "/"));
    if !change {
        // Open for writing, close, write nothing: the kernel's verdict
        // without touching the setting.
        let open = std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .map(drop)
            .map_err(errno);
        let mut v = entry(
            name,
            &format!("open(O_WRONLY) {via}"),
            before,
            &b,
            open,
            read(),
        );
        v["attempted"] = Value::Null;
        return v;
    }
    let target = changed_number(&b);
    let write = std::fs::write(&path, format!("{target}\n")).map_err(errno);
    entry(name, &via, before, &target, write, read())
}

fn entry(
    name: &str,
    via: &str,
    before: Option<String>,
    attempted: &str,
    write: nix::Result<()>,
    after: Option<String>,
) -> Value {
    json!({
        "name": name,
        "via": via,
        "before": before,
        "attempted": attempted,
        "accepted": write.is_ok(),
        "error": write.err().map(|e| e.to_string()),
        "after": after,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changed_values_stay_in_range() {
        assert_eq!(changed_number("64"), "65");
        assert_eq!(changed_number("60"), "61");
        assert_eq!(changed_number("200"), "199");
        assert_eq!(changed_number("junk"), "junk");
    }

    #[test]
    fn dotted_names_map_to_proc_sys() {
        assert_eq!(
            sysctl_path(Path::new("/proc"), "net.ipv4.ip_default_ttl"),
            Path::new("/proc/sys/net/ipv4/ip_default_ttl")
        );
    }

    #[test]
    fn a_missing_sysctl_is_reported_not_invented() {
        let dir = std::env::temp_dir().join(format!("isolab-knob-test-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("sys/vm")).unwrap();
        std::fs::write(dir.join("sys/vm/swappiness"), "60\n").unwrap();
        let ttl = sysctl(&dir, "net.ipv4.ip_default_ttl", true);
        let swap = sysctl(&dir, "vm.swappiness", true);
        let mtime = || {
            std::fs::metadata(dir.join("sys/vm/swappiness"))
                .unwrap()
                .modified()
                .unwrap()
        };
        let before_check = mtime();
        let same = sysctl(&dir, "vm.swappiness", false);
        let after = std::fs::read_to_string(dir.join("sys/vm/swappiness")).unwrap();
        assert_eq!(mtime(), before_check, "a check must not write");
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(ttl["before"], Value::Null);
        assert_eq!(ttl["accepted"], false);
        assert_eq!(swap["before"], "60");
        assert_eq!(swap["attempted"], "61");
        assert_eq!(swap["accepted"], true);
        assert_eq!(swap["after"], "61");
        // Without --change nothing is written: the open is the verdict.
        assert_eq!(same["attempted"], Value::Null);
        assert_eq!(same["accepted"], true);
        assert_eq!(same["after"], "61");
        assert_eq!(after.trim(), "61");
    }
}
