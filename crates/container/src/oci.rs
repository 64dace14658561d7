//! OCI bundles for the production runtimes (runc, crun): a `config.json`
//! with the same namespaces, limits, mounts and masked paths as our own
//! launcher, and the same security profile (capabilities, the seccomp
//! profile in its OCI form, device rules, no_new_privs), over the same
//! shared image, so the peers run the very same workload bytes under the
//! same confinement. The ready pipe is passed as fd 3 (`--preserve-fds 1`).
//!
//! A peer that refuses to run (crun 1.8 on a hybrid cgroup host) is
//! reported with its own error output, never dropped.

use std::io::Read;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use serde::Serialize;
use serde_json::{json, Value};

use crate::caps::CapSet;
use crate::config::ContainerConfig;
use crate::image;
use crate::instance::{USERNS_BASE_ID, USERNS_ID_COUNT};
use crate::rootfs::{MASKED_PATHS, READONLY_PATHS};
use crate::security::SecurityProfile;

#[derive(Debug, thiserror::Error)]
pub enum OciError {
    #[error("Cannot prepare the shared image")]
    Image(#[source] Box<crate::ContainerError>),
    #[error("Cannot write the OCI bundle in {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("Cannot start {runtime}; install it (Debian package '{runtime}')")]
    Spawn {
        runtime: String,
        #[source]
        source: std::io::Error,
    },
    #[error("Cannot create the ready pipe")]
    Pipe(#[source] nix::Error),
    #[error("Cannot wait for {runtime}")]
    Wait {
        runtime: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{runtime} failed ({status}): {stderr}")]
    Refused {
        runtime: String,
        status: String,
        stderr: String,
    },
}

/// A bundle on disk: `<dir>/config.json`, root = the shared image.
#[derive(Debug, Clone)]
pub struct Bundle {
    pub dir: PathBuf,
    /// Container id and cgroup name (`/isolab/<id>`).
    pub id: String,
}

impl Bundle {
    /// Removes the bundle directory (the image is shared and stays).
    pub fn remove(&self) -> std::io::Result<()> {
        std::fs::remove_dir_all(&self.dir)
    }
}

/// The runtime-spec `config.json` for `config` over `image_dir`.
pub fn spec(config: &ContainerConfig, image_dir: &Path, id: &str) -> Value {
    let mut args = vec![image::WORKLOAD_PATH.to_string(), config.workload.clone()];
    args.extend(config.args.iter().cloned());
    // A user's image: its program (by the path found in its PATH, so a
    // multi-call binary still sees its name), argv, user and directory.
    let (mut user, mut cwd) = (json!({"uid": 0, "gid": 0}), "/".to_string());
    if let Some(i) = &config.image {
        args = std::iter::once(i.program.clone())
            .chain(i.argv.iter().skip(1).cloned())
            .collect();
        user = json!({"uid": i.uid, "gid": i.gid, "additionalGids": i.additional_gids});
        cwd = i.cwd.clone();
    }
    let mut namespaces = vec![
        json!({"type": "pid"}),
        json!({"type": "network"}),
        json!({"type": "ipc"}),
        json!({"type": "uts"}),
        json!({"type": "mount"}),
        json!({"type": "cgroup"}),
    ];
    let security = config.security();
    let mut resources = resources(config);
    resources["devices"] = devices(&security);
    let mut linux = json!({
        "cgroupsPath": format!("/{}/{id}", isolab_cgroups::PARENT),
        "namespaces": [],
        "maskedPaths": MASKED_PATHS,
        "readonlyPaths": READONLY_PATHS,
        "resources": resources,
    });
    if let Some(profile) = &security.seccomp {
        linux["seccomp"] = profile.oci();
    }
    // Privileged: every capability this launcher has (a runtime refuses
    // to apply one outside its own bounding set), as moby's --privileged.
    let caps = security
        .caps
        .unwrap_or_else(CapSet::bounding_of_self)
        .names();
    if config.user_namespace {
        namespaces.push(json!({"type": "user"}));
        let map = json!([{"containerID": 0, "hostID": USERNS_BASE_ID, "size": USERNS_ID_COUNT}]);
        linux["uidMappings"] = map.clone();
        linux["gidMappings"] = map;
    }
    linux["namespaces"] = Value::Array(namespaces);
    let secure = json!(["nosuid", "noexec", "nodev"]);
    json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": user,
            "args": args,
            "capabilities": {
                "bounding": caps,
                "effective": caps,
                "permitted": caps,
                // Empty, as moby since CVE-2022-24769 (and our launcher).
                "inheritable": [],
                "ambient": [],
            },
            "noNewPrivileges": security.no_new_privileges,
            "env": config.envp(),
            "cwd": cwd,
        },
        // An image's program may write anywhere in its root (nginx: /run,
        // /var/lib/nginx); the peers get no overlay of ours, so its root
        // is the unpacked rootfs itself, writable, as in process mode.
        "root": {"path": image_dir, "readonly": config.image.is_none()},
        "hostname": config.hostname.clone().unwrap_or_else(|| format!("isolab-{id}")),
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc", "options": secure},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
             "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]},
            {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
             "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs",
             "options": ["nosuid", "noexec", "nodev", "ro"]},
            // Our launcher gives a writable overlay; with a read-only shared
            // root the peers get a writable /tmp instead.
            {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "nodev", "mode=1777"]},
        ],
        "linux": linux,
    })
}

/// Device rules: deny all then the standard nodes, as our devices cgroup.
fn devices(security: &SecurityProfile) -> Value {
    match security.devices {
        isolab_cgroups::DevicePolicy::Unrestricted => json!([{"allow": true, "access": "rwm"}]),
        isolab_cgroups::DevicePolicy::AllowOnly(rules) => {
            let mut v = vec![json!({"allow": false, "access": "rwm"})];
            v.extend(rules.iter().map(|r| {
                let mut d =
                    json!({"allow": true, "type": r.kind.letter().to_string(), "access": r.access});
                if let Some(m) = r.major {
                    d["major"] = json!(m);
                }
                if let Some(m) = r.minor {
                    d["minor"] = json!(m);
                }
                d
            }));
            Value::Array(v)
        }
    }
}

fn resources(config: &ContainerConfig) -> Value {
    let l = &config.limits;
    let mut r = json!({});
    if let Some(m) = l.memory_bytes {
        // OCI swap is memory+swap (v1 semantics): equal means no swap.
        r["memory"] = json!({"limit": m, "swap": m});
    }
    let mut cpu = json!({});
    if let Some(c) = l.cpus {
        cpu["quota"] = json!(isolab_cgroups::units::quota_us(
            c,
            isolab_cgroups::CPU_PERIOD_US
        ));
        cpu["period"] = json!(isolab_cgroups::CPU_PERIOD_US);
    }
    if let Some(set) = &l.cpuset {
        cpu["cpus"] = json!(set.to_string());
    }
    if cpu.as_object().is_some_and(|o| !o.is_empty()) {
        r["cpu"] = cpu;
    }
    if let Some(p) = l.pids {
        r["pids"] = json!({"limit": p});
    }
    r
}

/// Writes `<dir>/config.json` for `config` over the shared image (built if
/// needed in `config.state_dir`).
pub fn write_bundle(dir: &Path, config: &ContainerConfig, id: &str) -> Result<Bundle, OciError> {
    let image_dir = match &config.image {
        Some(i) => i.rootfs.clone(),
        None => image::ensure(&config.state_dir, &config.workload_bin)
            .map_err(|e| OciError::Image(Box::new(e)))?,
    };
    let werr = |path: &Path| {
        let path = path.to_path_buf();
        move |source| OciError::Write { path, source }
    };
    std::fs::create_dir_all(dir).map_err(werr(dir))?;
    let file = dir.join("config.json");
    let text = serde_json::to_string_pretty(&spec(config, &image_dir, id)).map_err(|e| {
        OciError::Write {
            path: file.clone(),
            source: e.into(),
        }
    })?;
    std::fs::write(&file, text).map_err(werr(&file))?;
    Ok(Bundle {
        dir: dir.to_path_buf(),
        id: id.to_string(),
    })
}

/// What a peer runtime's run reports.
#[derive(Debug, Clone, Serialize)]
pub struct PeerOutcome {
    pub runtime: String,
    /// The runtime's exit code (it passes the workload's through).
    pub exit_code: i32,
    /// Spawn of `<runtime> run` -> the workload's ready byte.
    pub launch_to_ready_us: Option<u64>,
    /// Spawn -> the runtime exited.
    pub launch_to_exit_us: u64,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `<runtime> run --bundle <dir> --preserve-fds 1 <id>` with the ready
/// pipe at fd 3. A non-zero exit with nothing from the workload is the
/// runtime refusing: returned as [`OciError::Refused`] with its stderr.
pub fn run_peer(
    runtime: &Path,
    extra_args: &[&str],
    bundle: &Bundle,
) -> Result<PeerOutcome, OciError> {
    let name = runtime.file_name().map_or_else(
        || runtime.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    );
    let (ready_r, ready_w): (OwnedFd, OwnedFd) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(OciError::Pipe)?;
    let ready_fd = ready_w.as_raw_fd();
    let mut cmd = Command::new(runtime);
    cmd.args(extra_args)
        .arg("run")
        .arg("--bundle")
        .arg(&bundle.dir)
        .arg("--preserve-fds")
        .arg("1")
        .arg(&bundle.id)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: the closure runs in the forked child before exec and only
    // calls dup2/fcntl, which are async-signal-safe; it touches no memory
    // shared with other threads.
    unsafe {
        cmd.pre_exec(move || {
            if ready_fd == 3 {
                if libc::fcntl(3, libc::F_SETFD, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            } else if libc::dup2(ready_fd, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let t0 = Instant::now();
    let child = cmd.spawn().map_err(|source| OciError::Spawn {
        runtime: name.clone(),
        source,
    })?;
    drop(ready_w);
    let mut ready = std::fs::File::from(ready_r);
    let mut byte = [0u8; 1];
    let ready_at = match ready.read(&mut byte) {
        Ok(1) if byte[0] == b'R' => Some(Instant::now()),
        _ => None,
    };
    let out = child.wait_with_output().map_err(|source| OciError::Wait {
        runtime: name.clone(),
        source,
    })?;
    let exited = Instant::now();
    remove_unused_parents(Path::new(isolab_cgroups::layout::DEFAULT_ROOT));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
    let exit_code = out
        .status
        .code()
        .unwrap_or_else(|| 128 + out.status.signal().unwrap_or(0));
    if exit_code != 0 && ready_at.is_none() && stdout.trim().is_empty() {
        return Err(OciError::Refused {
            runtime: name,
            status: format!("exit {exit_code}"),
            stderr: last_line(&stderr),
        });
    }
    Ok(PeerOutcome {
        runtime: name,
        exit_code,
        launch_to_ready_us: ready_at.map(|t| t.duration_since(t0).as_micros() as u64),
        launch_to_exit_us: exited.duration_since(t0).as_micros() as u64,
        stdout,
        stderr,
    })
}

/// The runtimes remove their own cgroup but leave the `isolab` parent they
/// created in every hierarchy (blkio, devices, ...); remove it where unused.
/// A parent another instance uses is busy and stays.
fn remove_unused_parents(cgroup_root: &Path) {
    let _ = std::fs::remove_dir(cgroup_root.join(isolab_cgroups::PARENT));
    if let Ok(entries) = std::fs::read_dir(cgroup_root) {
        for e in entries.flatten() {
            let _ = std::fs::remove_dir(e.path().join(isolab_cgroups::PARENT));
        }
    }
}

/// The last non-empty line; runtimes put their reason there.
fn last_line(s: &str) -> String {
    s.lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("(no error output)")
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use isolab_cgroups::{CpuSet, Limits};

    fn cfg() -> ContainerConfig {
        let mut c = ContainerConfig::new("/w", "worker");
        c.args = vec!["--duration-ms".into(), "5".into()];
        c.hostname = Some("peer".into());
        c.limits = Limits {
            memory_bytes: Some(64 << 20),
            cpus: Some(0.5),
            pids: Some(64),
            cpuset: Some(CpuSet::parse("0").unwrap()),
        };
        c
    }

    #[test]
    fn the_spec_mirrors_our_namespaces_limits_and_paths() {
        let s = spec(&cfg(), Path::new("/img"), "oci-1");
        assert_eq!(
            s["process"]["args"],
            json!(["/workload", "worker", "--duration-ms", "5"])
        );
        assert!(s["process"]["env"]
            .as_array()
            .unwrap()
            .contains(&json!("ISOLAB_READY_FD=3")));
        assert_eq!(s["root"]["path"], "/img");
        assert_eq!(s["hostname"], "peer");
        let ns: Vec<&str> = s["linux"]["namespaces"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["type"].as_str().unwrap())
            .collect();
        assert_eq!(ns, ["pid", "network", "ipc", "uts", "mount", "cgroup"]);
        let r = &s["linux"]["resources"];
        assert_eq!(r["memory"]["limit"], 64 << 20);
        assert_eq!(r["cpu"]["quota"], 50_000);
        assert_eq!(r["cpu"]["period"], 100_000);
        assert_eq!(r["cpu"]["cpus"], "0");
        assert_eq!(r["pids"]["limit"], 64);
        assert_eq!(s["linux"]["cgroupsPath"], "/isolab/oci-1");
        assert!(s["linux"]["maskedPaths"]
            .as_array()
            .unwrap()
            .contains(&json!("/proc/kcore")));
        assert!(s["linux"]["readonlyPaths"]
            .as_array()
            .unwrap()
            .contains(&json!("/proc/sys")));
        assert!(s["linux"].get("uidMappings").is_none());
    }

    #[test]
    fn a_user_namespace_maps_root_like_our_launcher() {
        let mut c = cfg();
        c.user_namespace = true;
        let s = spec(&c, Path::new("/img"), "x");
        assert_eq!(s["linux"]["uidMappings"][0]["hostID"], USERNS_BASE_ID);
        assert!(s["linux"]["namespaces"]
            .as_array()
            .unwrap()
            .contains(&json!({"type": "user"})));
    }

    #[test]
    fn an_image_brings_its_program_user_and_root() {
        let mut c = cfg();
        c.image = Some(crate::ImageProcess {
            rootfs: "/cache/rootfs".into(),
            program: "/bin/httpd".into(),
            argv: vec!["httpd".into(), "-f".into()],
            env: vec!["PATH=/bin".into()],
            cwd: "/www".into(),
            uid: 33,
            gid: 33,
            additional_gids: vec![80],
        });
        let s = spec(&c, Path::new("/cache/rootfs"), "x");
        assert_eq!(s["process"]["args"], json!(["/bin/httpd", "-f"]));
        assert_eq!(s["process"]["env"], json!(["PATH=/bin"]));
        assert_eq!(s["process"]["cwd"], "/www");
        assert_eq!(
            s["process"]["user"],
            json!({"uid": 33, "gid": 33, "additionalGids": [80]})
        );
        assert_eq!(
            s["root"],
            json!({"path": "/cache/rootfs", "readonly": false})
        );
    }

    #[test]
    fn no_limits_means_no_resource_sections_but_device_rules() {
        let s = spec(&ContainerConfig::new("/w", "noop"), Path::new("/img"), "x");
        let r = s["linux"]["resources"].as_object().unwrap();
        assert_eq!(r.keys().collect::<Vec<_>>(), ["devices"]);
    }

    #[test]
    fn the_peers_get_our_security_profile() {
        let s = spec(&cfg(), Path::new("/img"), "x");
        let caps = &s["process"]["capabilities"];
        assert_eq!(caps["bounding"].as_array().unwrap().len(), 14);
        assert_eq!(caps["effective"], caps["bounding"]);
        assert_eq!(caps["permitted"], caps["bounding"]);
        assert_eq!(caps["inheritable"], json!([]), "CVE-2022-24769");
        assert_eq!(caps["ambient"], json!([]));
        assert!(caps["bounding"]
            .as_array()
            .unwrap()
            .contains(&json!("CAP_NET_BIND_SERVICE")));
        assert_eq!(s["process"]["noNewPrivileges"], false);
        assert_eq!(s["linux"]["seccomp"]["defaultAction"], "SCMP_ACT_ERRNO");
        let dev = s["linux"]["resources"]["devices"].as_array().unwrap();
        assert_eq!(dev[0], json!({"allow": false, "access": "rwm"}));
        assert!(dev.contains(
            &json!({"allow": true, "type": "c", "major": 1, "minor": 3, "access": "rwm"})
        ));
        assert!(dev.contains(&json!({"allow": true, "type": "c", "major": 136, "access": "rwm"})));

        let mut c = cfg();
        c.privileged = true;
        c.no_new_privileges = true;
        let s = spec(&c, Path::new("/img"), "x");
        assert_eq!(
            s["process"]["capabilities"]["bounding"]
                .as_array()
                .unwrap()
                .len(),
            CapSet::bounding_of_self().count() as usize
        );
        assert_eq!(s["process"]["capabilities"]["inheritable"], json!([]));
        assert!(s["linux"].get("seccomp").is_none());
        assert_eq!(s["process"]["noNewPrivileges"], true);
        assert_eq!(
            s["linux"]["resources"]["devices"],
            json!([{"allow": true, "access": "rwm"}])
        );
    }

    #[test]
    fn the_refusal_reason_is_the_last_line() {
        assert_eq!(
            last_line("a\nb: cgroups in hybrid mode not supported\n\n"),
            "b: cgroups in hybrid mode not supported"
        );
        assert_eq!(last_line(""), "(no error output)");
    }
}
