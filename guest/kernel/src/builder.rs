//! Building the guest kernel from Debian's `linux-source-6.1` package.
//!
//! Steps, in order (one function each, one error variant each):
//! 1. [`lookup`]: a finished build for this config hash is returned at once;
//! 2. `check_source`, `check_build_deps`: the source tarball and the tools;
//! 3. `lock`: one build at a time per cache (flock), then look again;
//! 4. `unpack`: the tarball into `<cache>/kernel/src/` (once per tarball);
//! 5. `configure`: `make tinyconfig`, then `merge_config.sh -n` with the
//!    fragments (allnoconfig fills in the rest, keeping the kernel small);
//! 6. `verify_config`: every requested option is in the final `.config`;
//! 7. `make`: `vmlinux` and `bzImage` in the shared, incremental build dir
//!    `<cache>/kernel/build/` (O=): a changed fragment rebuilds what it touches;
//! 8. `install`: `<cache>/kernel/<config-hash>/{vmlinux,bzImage,config,meta.json}`,
//!    written to a temporary directory and renamed into place.

use std::fs::{self, File};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};

use crate::fragments::{self, Fragment};

/// Debian's kernel source package puts its tarball here.
pub const DEFAULT_SOURCE: &str = "/usr/src/linux-source-6.1.tar.xz";
/// What to install when the source or a build tool is missing.
pub const INSTALL_HINT: &str =
    "apt-get install linux-source-6.1 flex bison bc libelf-dev libssl-dev";
/// Marks a completely unpacked source tree; holds the tarball's size:mtime.
const UNPACKED_MARKER: &str = ".isolab-unpacked";
/// Lines of build output kept for an error message.
const TAIL_LINES: usize = 25;

/// Errors while building the guest kernel.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error("Kernel source {path:?} not found: {INSTALL_HINT}")]
    SourceMissing { path: PathBuf },
    #[error("Kernel build tools missing ({missing}): {INSTALL_HINT}")]
    MissingBuildDeps { missing: String },
    #[error("Cannot create {path:?}")]
    CreateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("Cannot lock the kernel build directory {path:?}")]
    Lock {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("Cannot start {step} ({program})")]
    Spawn {
        step: &'static str,
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("Kernel {step} failed ({status}); full log in {log:?}; last lines:\n{tail}")]
    StepFailed {
        step: &'static str,
        status: String,
        log: PathBuf,
        tail: String,
    },
    #[error("Unpacked source has no {path:?}: is {tarball:?} a Debian linux-source tarball?")]
    BadSourceLayout { path: PathBuf, tarball: PathBuf },
    #[error("Cannot write {path:?}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("Cannot read {path:?}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "Kernel config options requested in guest/kernel/config/ are not in the final .config \
         (olddefconfig dropped them: a dependency is missing, add it to a fragment): {list}"
    )]
    DroppedOptions { list: String },
    #[error("Cannot read build metadata {path:?}")]
    Meta {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

/// What to build and where.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// The cache root (see [`crate::cache_root`]); artifacts go under `kernel/`.
    pub cache_root: PathBuf,
    /// The kernel source tarball.
    pub source: PathBuf,
    /// Configuration fragments merged over tinyconfig, in order.
    pub fragments: Vec<Fragment>,
    /// `make -j` (default: the number of CPUs).
    pub jobs: usize,
    /// Show a spinner with the current step and make's last line on stderr.
    pub progress: bool,
}

impl BuildOptions {
    /// Defaults: Debian's tarball, the shipped fragments, all CPUs, a spinner.
    pub fn new(cache_root: PathBuf) -> Self {
        Self {
            cache_root,
            source: PathBuf::from(DEFAULT_SOURCE),
            fragments: fragments::default_fragments(),
            jobs: std::thread::available_parallelism().map_or(1, |n| n.get()),
            progress: true,
        }
    }

    /// The source package's name, e.g. `linux-source-6.1`.
    fn source_name(&self) -> String {
        let name = self
            .source
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        name.strip_suffix(".tar.xz").unwrap_or(&name).to_string()
    }

    /// The cache key of this configuration.
    pub fn config_hash(&self) -> String {
        fragments::config_hash(&self.source_name(), &self.fragments)
    }

    fn kernel_root(&self) -> PathBuf {
        self.cache_root.join("kernel")
    }

    /// Where the artifacts of this configuration are (or will be).
    pub fn artifact_dir(&self) -> PathBuf {
        self.kernel_root().join(self.config_hash())
    }
}

/// Recorded next to the artifacts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KernelMeta {
    /// `make kernelrelease`, e.g. `6.1.192`.
    pub kernel_version: String,
    /// The cache key (hash of recipe, source name and fragments).
    pub config_hash: String,
    /// SHA-256 of the final `.config`.
    pub config_sha256: String,
    /// The source tarball used.
    pub source: String,
    /// Fragment files merged, in order.
    pub fragments: Vec<String>,
    /// Wall time of the build that produced this entry.
    pub build_seconds: f64,
}

/// A built guest kernel.
#[derive(Debug, Clone)]
pub struct GuestKernel {
    pub dir: PathBuf,
    /// Uncompressed ELF with the PVH note: what the monitor loads.
    pub vmlinux: PathBuf,
    /// Self-decompressing image (QEMU `-kernel`, and monitors without ELF loading).
    pub bz_image: PathBuf,
    /// The final `.config`.
    pub config: PathBuf,
    pub meta: KernelMeta,
    /// True if this call found it in the cache.
    pub cached: bool,
}

fn artifacts_in(dir: &Path, meta: KernelMeta, cached: bool) -> GuestKernel {
    GuestKernel {
        vmlinux: dir.join("vmlinux"),
        bz_image: dir.join("bzImage"),
        config: dir.join("config"),
        dir: dir.to_path_buf(),
        meta,
        cached,
    }
}

/// Step 1: the cached kernel for these options, if complete. Reads one small
/// JSON file; no source, no tools needed.
pub fn lookup(opts: &BuildOptions) -> Result<Option<GuestKernel>, KernelError> {
    let dir = opts.artifact_dir();
    let meta_path = dir.join("meta.json");
    let text = match fs::read_to_string(&meta_path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(KernelError::Read {
                path: meta_path,
                source,
            })
        }
    };
    let meta: KernelMeta = serde_json::from_str(&text).map_err(|source| KernelError::Meta {
        path: meta_path,
        source,
    })?;
    let k = artifacts_in(&dir, meta, true);
    if k.vmlinux.is_file() && k.bz_image.is_file() && k.config.is_file() {
        Ok(Some(k))
    } else {
        Ok(None)
    }
}

/// Returns the cached kernel, or builds it (about 2-3 minutes on 2 cores).
pub fn build(opts: &BuildOptions) -> Result<GuestKernel, KernelError> {
    if let Some(k) = lookup(opts)? {
        return Ok(k);
    }
    let started = Instant::now();
    check_source(&opts.source)?;
    check_build_deps()?;
    let root = opts.kernel_root();
    create_dir(&root)?;
    let _lock = lock(&root.join(".build.lock"))?;
    // Another process may have finished the same build while we waited.
    if let Some(k) = lookup(opts)? {
        return Ok(k);
    }
    let progress = Progress::new(opts.progress);
    let build_dir = root.join("build");
    create_dir(&build_dir)?;
    let log_path = build_dir.join("isolab-build.log");
    let mut log = File::create(&log_path).map_err(|source| KernelError::Write {
        path: log_path.clone(),
        source,
    })?;
    let mut ctx = Ctx {
        progress: &progress,
        log: &mut log,
        log_path: &log_path,
    };

    ctx.progress.step("unpacking the kernel source");
    let src = unpack(&opts.source, &root.join("src"))?;
    ctx.progress.step("configuring (tinyconfig + fragments)");
    configure(&mut ctx, &src, &build_dir, &opts.fragments)?;
    ctx.progress.step("checking the final .config");
    let config_text = verify_config(&build_dir, &opts.fragments)?;
    ctx.progress.step("building vmlinux and bzImage");
    make(&mut ctx, &src, &build_dir, opts.jobs)?;
    ctx.progress.step("installing into the cache");
    let meta = KernelMeta {
        kernel_version: kernel_release(&build_dir)?,
        config_hash: opts.config_hash(),
        config_sha256: sha256_hex(config_text.as_bytes()),
        source: opts.source.display().to_string(),
        fragments: opts.fragments.iter().map(|f| f.name.clone()).collect(),
        build_seconds: (started.elapsed().as_secs_f64() * 10.0).round() / 10.0,
    };
    let k = install(&build_dir, &opts.artifact_dir(), meta)?;
    progress.finish(&format!(
        "guest kernel {} built in {:.0} s",
        k.meta.kernel_version, k.meta.build_seconds
    ));
    Ok(k)
}

/// Step 2a.
fn check_source(path: &Path) -> Result<(), KernelError> {
    if path.is_file() {
        Ok(())
    } else {
        Err(KernelError::SourceMissing {
            path: path.to_path_buf(),
        })
    }
}

fn in_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(program).is_file()))
}

/// Step 2b: the tools the kernel build runs, and the headers objtool and the
/// certificate tooling compile against.
fn check_build_deps() -> Result<(), KernelError> {
    let mut missing: Vec<String> = ["make", "gcc", "flex", "bison", "bc", "tar", "xz", "perl"]
        .into_iter()
        .filter(|p| !in_path(p))
        .map(String::from)
        .collect();
    for (header, package) in [
        ("/usr/include/libelf.h", "libelf-dev"),
        ("/usr/include/openssl/ssl.h", "libssl-dev"),
    ] {
        if !Path::new(header).is_file() {
            missing.push(format!("{package} ({header})"));
        }
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(KernelError::MissingBuildDeps {
            missing: missing.join(", "),
        })
    }
}

fn create_dir(path: &Path) -> Result<(), KernelError> {
    fs::create_dir_all(path).map_err(|source| KernelError::CreateDir {
        path: path.to_path_buf(),
        source,
    })
}

/// Step 3: an exclusive flock, released when the returned guard drops.
fn lock(path: &Path) -> Result<nix::fcntl::Flock<File>, KernelError> {
    let f = File::create(path).map_err(|source| KernelError::Lock {
        path: path.to_path_buf(),
        source,
    })?;
    nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusive).map_err(|(_, e)| {
        KernelError::Lock {
            path: path.to_path_buf(),
            source: e.into(),
        }
    })
}

fn tarball_stamp(tarball: &Path) -> Result<String, KernelError> {
    let md = fs::metadata(tarball).map_err(|source| KernelError::Read {
        path: tarball.to_path_buf(),
        source,
    })?;
    let mtime = md
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs());
    Ok(format!("{}:{}", md.len(), mtime))
}

/// Step 4: unpacks once per tarball; returns the source tree.
fn unpack(tarball: &Path, src_root: &Path) -> Result<PathBuf, KernelError> {
    let name = tarball
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let stem = name.strip_suffix(".tar.xz").unwrap_or(&name).to_string();
    let tree = src_root.join(&stem);
    let marker = tree.join(UNPACKED_MARKER);
    let stamp = tarball_stamp(tarball)?;
    if fs::read_to_string(&marker).is_ok_and(|s| s.trim() == stamp) {
        return Ok(tree);
    }
    if tree.exists() {
        fs::remove_dir_all(&tree).map_err(|source| KernelError::Write {
            path: tree.clone(),
            source,
        })?;
    }
    create_dir(src_root)?;
    let out = Command::new("tar")
        .arg("-xJf")
        .arg(tarball)
        .arg("-C")
        .arg(src_root)
        .stdin(Stdio::null())
        .output()
        .map_err(|source| KernelError::Spawn {
            step: "unpacking",
            program: "tar".into(),
            source,
        })?;
    if !out.status.success() {
        return Err(KernelError::StepFailed {
            step: "unpacking",
            status: out.status.to_string(),
            log: tarball.to_path_buf(),
            tail: String::from_utf8_lossy(&out.stderr).into_owned(),
        });
    }
    if !tree.join("Makefile").is_file() {
        return Err(KernelError::BadSourceLayout {
            path: tree.join("Makefile"),
            tarball: tarball.to_path_buf(),
        });
    }
    fs::write(&marker, &stamp).map_err(|source| KernelError::Write {
        path: marker,
        source,
    })?;
    Ok(tree)
}

/// Step 5.
fn configure(
    ctx: &mut Ctx<'_>,
    src: &Path,
    build: &Path,
    frags: &[Fragment],
) -> Result<(), KernelError> {
    let frag_dir = build.join("isolab-fragments");
    if frag_dir.exists() {
        fs::remove_dir_all(&frag_dir).map_err(|source| KernelError::Write {
            path: frag_dir.clone(),
            source,
        })?;
    }
    create_dir(&frag_dir)?;
    let mut frag_paths = Vec::new();
    for f in frags {
        let p = frag_dir.join(&f.name);
        fs::write(&p, &f.text).map_err(|source| KernelError::Write {
            path: p.clone(),
            source,
        })?;
        frag_paths.push(p);
    }
    let mut tiny = Command::new("make");
    tiny.current_dir(src)
        .arg("ARCH=x86_64")
        .arg(format!("O={}", build.display()))
        .arg("tinyconfig");
    ctx.run("tinyconfig", tiny)?;
    // -n: fill everything the fragments do not mention with allnoconfig, as
    // tinyconfig itself does; -O: the output directory.
    let mut merge = Command::new(src.join("scripts/kconfig/merge_config.sh"));
    merge
        .current_dir(src)
        .env("ARCH", "x86_64")
        .arg("-n")
        .arg("-O")
        .arg(build)
        .arg(build.join(".config"))
        .args(&frag_paths);
    ctx.run("merge_config", merge)
}

/// Step 6: returns the final `.config` text.
fn verify_config(build: &Path, frags: &[Fragment]) -> Result<String, KernelError> {
    let path = build.join(".config");
    let text = fs::read_to_string(&path).map_err(|source| KernelError::Read { path, source })?;
    let dropped = fragments::verify(frags, &text);
    if dropped.is_empty() {
        Ok(text)
    } else {
        let list: Vec<String> = dropped.iter().map(ToString::to_string).collect();
        Err(KernelError::DroppedOptions {
            list: list.join("; "),
        })
    }
}

/// Step 7.
fn make(ctx: &mut Ctx<'_>, src: &Path, build: &Path, jobs: usize) -> Result<(), KernelError> {
    let mut cmd = Command::new("make");
    cmd.current_dir(src)
        .arg("ARCH=x86_64")
        .arg(format!("O={}", build.display()))
        .arg(format!("-j{}", jobs.max(1)))
        .arg("vmlinux")
        .arg("bzImage");
    ctx.run("make", cmd)
}

fn kernel_release(build: &Path) -> Result<String, KernelError> {
    let path = build.join("include/config/kernel.release");
    fs::read_to_string(&path)
        .map(|s| s.trim().to_string())
        .map_err(|source| KernelError::Read { path, source })
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Step 8: copy into a temporary directory next to the final one, then rename,
/// so a reader never sees half an entry.
fn install(build: &Path, dest: &Path, meta: KernelMeta) -> Result<GuestKernel, KernelError> {
    let parent = dest.parent().unwrap_or(Path::new("."));
    let tmp = parent.join(format!(".tmp-{}-{}", meta.config_hash, std::process::id()));
    if tmp.exists() {
        let _ = fs::remove_dir_all(&tmp);
    }
    create_dir(&tmp)?;
    let copy = |from: &str, to: &str| -> Result<(), KernelError> {
        fs::copy(build.join(from), tmp.join(to))
            .map(|_| ())
            .map_err(|source| KernelError::Write {
                path: tmp.join(to),
                source,
            })
    };
    let result = (|| {
        copy("vmlinux", "vmlinux")?;
        copy("arch/x86/boot/bzImage", "bzImage")?;
        copy(".config", "config")?;
        let meta_path = tmp.join("meta.json");
        let json = serde_json::to_string_pretty(&meta).map_err(|source| KernelError::Meta {
            path: meta_path.clone(),
            source,
        })?;
        fs::write(&meta_path, json + "\n").map_err(|source| KernelError::Write {
            path: meta_path,
            source,
        })?;
        if dest.exists() {
            fs::remove_dir_all(dest).map_err(|source| KernelError::Write {
                path: dest.to_path_buf(),
                source,
            })?;
        }
        fs::rename(&tmp, dest).map_err(|source| KernelError::Write {
            path: dest.to_path_buf(),
            source,
        })
    })();
    if let Err(e) = result {
        let _ = fs::remove_dir_all(&tmp);
        return Err(e);
    }
    Ok(artifacts_in(dest, meta, false))
}

/// A spinner (or nothing) showing the step and the build's last line.
struct Progress {
    bar: ProgressBar,
    step: std::cell::RefCell<String>,
}

impl Progress {
    fn new(show: bool) -> Self {
        let bar = if show {
            let b = ProgressBar::new_spinner();
            if let Ok(style) = ProgressStyle::with_template("{spinner} [{elapsed}] {msg}") {
                b.set_style(style);
            }
            b.enable_steady_tick(Duration::from_millis(120));
            b
        } else {
            ProgressBar::hidden()
        };
        Self {
            bar,
            step: std::cell::RefCell::new(String::new()),
        }
    }

    fn step(&self, step: &str) {
        *self.step.borrow_mut() = step.to_string();
        self.bar.set_message(format!("guest kernel: {step}"));
    }

    fn line(&self, line: &str) {
        let mut line = line.trim().to_string();
        line.truncate(70);
        self.bar
            .set_message(format!("guest kernel: {}: {line}", self.step.borrow()));
    }

    fn finish(&self, msg: &str) {
        self.bar.finish_and_clear();
        if !self.bar.is_hidden() {
            eprintln!("{msg}");
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if !self.bar.is_finished() {
            self.bar.finish_and_clear();
        }
    }
}

struct Ctx<'a> {
    progress: &'a Progress,
    log: &'a mut File,
    log_path: &'a Path,
}

impl Ctx<'_> {
    /// Runs a build command with stdout and stderr merged into one pipe,
    /// teeing every line to the log and the spinner.
    fn run(&mut self, step: &'static str, mut cmd: Command) -> Result<(), KernelError> {
        let program = cmd.get_program().to_string_lossy().into_owned();
        let spawn_err = |source| KernelError::Spawn {
            step,
            program: program.clone(),
            source,
        };
        let (r, w) = nix::unistd::pipe().map_err(|e| spawn_err(e.into()))?;
        let w2 = w.try_clone().map_err(spawn_err)?;
        let _ = writeln!(self.log, "==> {step}: {cmd:?}");
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::from(w))
            .stderr(Stdio::from(w2))
            .spawn()
            .map_err(spawn_err)?;
        // `cmd` still holds the write ends; drop it so EOF arrives.
        drop(cmd);
        let mut tail: std::collections::VecDeque<String> = std::collections::VecDeque::new();
        let mut reader = BufReader::new(File::from(r));
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match reader.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let line = String::from_utf8_lossy(&buf).trim_end().to_string();
                    let _ = writeln!(self.log, "{line}");
                    self.progress.line(&line);
                    if tail.len() == TAIL_LINES {
                        tail.pop_front();
                    }
                    tail.push_back(line);
                }
            }
        }
        let status = child.wait().map_err(spawn_err)?;
        if status.success() {
            Ok(())
        } else {
            Err(KernelError::StepFailed {
                step,
                status: status.to_string(),
                log: self.log_path.to_path_buf(),
                tail: Vec::from(tail).join("\n"),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_source_says_what_to_install() {
        let e = check_source(Path::new("/nonexistent/linux-source-6.1.tar.xz")).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("/nonexistent/linux-source-6.1.tar.xz"),
            "{msg}"
        );
        assert!(msg.contains("apt-get install linux-source-6.1"), "{msg}");
    }

    #[test]
    fn artifact_dir_is_keyed_by_config_hash_under_kernel() {
        let o = BuildOptions::new(PathBuf::from("/c"));
        let d = o.artifact_dir();
        assert_eq!(d.parent().unwrap(), Path::new("/c/kernel"));
        assert_eq!(d.file_name().unwrap().to_string_lossy(), o.config_hash());
        assert_eq!(o.source_name(), "linux-source-6.1");
    }

    #[test]
    fn lookup_returns_a_complete_entry_and_ignores_partial_ones() {
        let tmp = tempfile::tempdir().unwrap();
        let o = BuildOptions::new(tmp.path().to_path_buf());
        assert!(lookup(&o).unwrap().is_none());
        let dir = o.artifact_dir();
        fs::create_dir_all(&dir).unwrap();
        let meta = KernelMeta {
            kernel_version: "6.1.0".into(),
            config_hash: o.config_hash(),
            config_sha256: "x".into(),
            source: DEFAULT_SOURCE.into(),
            fragments: vec![],
            build_seconds: 1.0,
        };
        fs::write(dir.join("meta.json"), serde_json::to_string(&meta).unwrap()).unwrap();
        assert!(lookup(&o).unwrap().is_none(), "no vmlinux yet");
        for f in ["vmlinux", "bzImage", "config"] {
            fs::write(dir.join(f), b"x").unwrap();
        }
        let k = lookup(&o).unwrap().unwrap();
        assert!(k.cached);
        assert_eq!(k.meta, meta);
        assert_eq!(k.vmlinux, dir.join("vmlinux"));
    }

    #[test]
    fn verify_config_names_dropped_options() {
        let tmp = tempfile::tempdir().unwrap();
        fs::write(tmp.path().join(".config"), "CONFIG_A=y\n").unwrap();
        let frags = vec![Fragment {
            name: "f.config".into(),
            text: "CONFIG_A=y\nCONFIG_VIRTIO_NET=y\n".into(),
        }];
        let e = verify_config(tmp.path(), &frags).unwrap_err();
        assert!(
            e.to_string()
                .contains("CONFIG_VIRTIO_NET (from f.config: wanted y, got not set)"),
            "{e}"
        );
    }

    #[test]
    fn failing_step_reports_status_and_output_tail() {
        let tmp = tempfile::tempdir().unwrap();
        let log_path = tmp.path().join("log");
        let mut log = File::create(&log_path).unwrap();
        let progress = Progress::new(false);
        let mut ctx = Ctx {
            progress: &progress,
            log: &mut log,
            log_path: &log_path,
        };
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo compiling; echo 'fatal: boom' >&2; exit 3"]);
        let e = ctx.run("make", cmd).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("make failed") && msg.contains("fatal: boom"),
            "{msg}"
        );
        let logged = fs::read_to_string(&log_path).unwrap();
        assert!(logged.contains("compiling") && logged.contains("fatal: boom"));
    }
}
