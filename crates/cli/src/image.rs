//! `--image REF | --bundle DIR [--ready RULE] [-- ARGS]`: a user's own
//! workload for `bench container run` and `bench compare`. The image is
//! unpacked (digests verified) into the one cache root's image store, or
//! found there; a bundle is read in place. Bad input is one line, exit 2,
//! and nothing is left behind (the store unpacks into a temporary
//! directory it renames only when complete).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use isolab_harness::image::{ImageWorkload, ReadyRule};
use isolab_harness::modes::{Context, InstanceSpec, ModeKind};
use isolab_harness::Workload;
use isolab_image::{Bundle, ImageRef, ImageStore};

use crate::exit;

/// Where a user's workload comes from, and when it is ready.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ImageArgs {
    /// Run an OCI image instead of a built-in workload: an OCI layout
    /// directory, an oci-archive or docker-archive tarball (`podman save`,
    /// `docker save`, `skopeo copy`), optionally REF:TAG.
    #[arg(long, value_name = "REF", conflicts_with = "bundle")]
    pub image: Option<String>,
    /// Run an OCI runtime bundle (config.json + rootfs) instead.
    #[arg(long, value_name = "DIR")]
    pub bundle: Option<PathBuf>,
    /// When the image's program is ready: http:PORT/PATH, tcp:PORT, exit
    /// or log:TEXT (default: http on its lowest exposed TCP port, else
    /// exit).
    #[arg(long, value_name = "RULE", allow_hyphen_values = true,
          value_parser = ready_rule)]
    pub ready: Option<ReadyRule>,
    /// Inside the emulated host: an image already in the cache, by key
    /// (`sha256-<hex>`), carried in unpacked by `--host emulated`.
    #[arg(long, value_name = "KEY", hide = true,
          conflicts_with_all = ["image", "bundle"])]
    pub image_key: Option<String>,
    /// With `--image-key`: the name the image goes by (the outer REF).
    #[arg(long, value_name = "NAME", hide = true, requires = "image_key")]
    pub image_label: Option<String>,
}

fn ready_rule(s: &str) -> Result<ReadyRule, String> {
    s.parse()
        .map_err(|e: isolab_harness::image::BadReadyRule| e.to_string())
}

impl ImageArgs {
    /// Unpack (or find) the image or read the bundle; `args` replace its
    /// command when given. `None` when neither was asked for.
    pub fn load(&self, args: &[String]) -> anyhow::Result<Option<Arc<ImageWorkload>>> {
        self.load_in(args, None)
    }

    /// As [`ImageArgs::load`], with the image store under `cache` (the one
    /// cache root when `None`).
    pub fn load_in(
        &self,
        args: &[String],
        cache: Option<&std::path::Path>,
    ) -> anyhow::Result<Option<Arc<ImageWorkload>>> {
        let over = (!args.is_empty()).then_some(args);
        let (label, key, run) = match (&self.image, &self.bundle) {
            (None, None) if self.image_key.is_some() => {
                let key = self.image_key.clone().unwrap_or_default();
                let root = match cache {
                    Some(c) => c.to_path_buf(),
                    None => isolab_guest_kernel::cache_root()
                        .map_err(|e| exit::host(format!("no cache root for images: {e}")))?,
                };
                let img = ImageStore::new(&root).lookup(&key).ok_or_else(|| {
                    exit::usage(format!(
                        "--image-key {key}: no such image in {}: give --image REF",
                        root.join("images").display()
                    ))
                })?;
                let label = self.image_label.clone().unwrap_or_else(|| key.clone());
                let run = img
                    .run_spec(over)
                    .map_err(|e| image_error(&label, &e, e.is_usage()))?;
                (label, Some(key), run)
            }
            (None, None) => {
                if self.ready.is_some() {
                    return Err(exit::usage(
                        "--ready applies to --image or --bundle: name the image to run",
                    ));
                }
                return Ok(None);
            }
            (Some(r), _) => {
                let reference = ImageRef::parse(r).map_err(|e| image_error(r, &e, e.is_usage()))?;
                let root = match cache {
                    Some(c) => c.to_path_buf(),
                    None => isolab_guest_kernel::cache_root()
                        .map_err(|e| exit::host(format!("no cache root for images: {e}")))?,
                };
                let img = ImageStore::new(&root)
                    .unpack(&reference)
                    .map_err(|e| image_error(r, &e, e.is_usage()))?;
                let run = img
                    .run_spec(over)
                    .map_err(|e| image_error(r, &e, e.is_usage()))?;
                (r.clone(), Some(img.key), run)
            }
            (None, Some(dir)) => {
                let shown = dir.display().to_string();
                let b = Bundle::open(dir).map_err(|e| image_error(&shown, &e, e.is_usage()))?;
                let run = b
                    .run_spec(over)
                    .map_err(|e| image_error(&shown, &e, e.is_usage()))?;
                (shown, None, run)
            }
        };
        let ready = self
            .ready
            .clone()
            .unwrap_or_else(|| ReadyRule::default_for(&run));
        Ok(Some(Arc::new(ImageWorkload {
            label,
            key,
            run,
            ready,
        })))
    }
}

/// One line naming the image and what was wrong with it.
fn image_error(what: &str, e: &dyn std::error::Error, usage: bool) -> anyhow::Error {
    let msg = format!("{what}: {}", isolab_harness::chain(e));
    if usage {
        exit::usage(msg)
    } else {
        anyhow::anyhow!(msg)
    }
}

/// The built-in workload that stands for an image's kind of run: a server
/// (stopped after it is ready) or a program that ends by itself.
pub fn stand_in(image: &ImageWorkload) -> Workload {
    if image.ready == ReadyRule::Exit {
        Workload::Noop
    } else {
        Workload::Api
    }
}

/// What `bench container run --image` needs besides the image.
pub struct ContainerRun {
    pub memory: Option<u64>,
    pub cpus: Option<f64>,
    pub pids: Option<u64>,
    pub hostname: Option<String>,
    pub privileged: bool,
    /// On the workbench bridge (`--net`), else loopback in its own netns.
    pub bridge: bool,
    pub json: bool,
}

/// `bench container run --image`: launch it in our container, wait for
/// its rule, then stop it (a server) or collect its exit.
pub fn run_container(image: Arc<ImageWorkload>, opts: ContainerRun) -> anyhow::Result<ExitCode> {
    isolab_harness::install_interrupt_handler();
    let workload = stand_in(&image);
    let ctx = Context::new(workload)?;
    let launcher = ctx.launcher(ModeKind::Container);
    if let Some(reason) = launcher.unavailable() {
        return Err(exit::host(reason));
    }
    let mut spec = InstanceSpec::new(workload, &[]);
    spec.memory_bytes = opts.memory;
    spec.cpus = opts.cpus;
    spec.pids = opts.pids;
    spec.hostname = opts.hostname;
    spec.privileged = opts.privileged;
    spec.keep_stderr = true;
    spec.loopback_http = !opts.bridge;
    spec.image = Some(Arc::clone(&image));
    let mut inst = launcher.launch(&spec)?;
    let launched = inst.launched_at();
    let ready = inst.wait_ready(Duration::from_secs(60));
    let memory = inst.memory();
    let outcome = if workload == Workload::Noop || ready.is_err() {
        inst.wait_exit(Duration::from_secs(1))?
    } else {
        inst.stop()?
    };
    let ready_ms = ready
        .as_ref()
        .ok()
        .map(|at| (*at - launched).as_secs_f64() * 1e3);
    let mut out = std::io::stdout().lock();
    let printed = if opts.json {
        writeln!(
            out,
            "{}",
            serde_json::json!({
                "image": image.label,
                "key": image.key,
                "args": image.run.args,
                "ready_rule": image.ready.to_string(),
                "launch_to_ready_ms": ready_ms,
                "pss_bytes": memory.pss,
                "cgroup_current_bytes": memory.cgroup_current,
                "status": outcome.status,
            })
        )
    } else {
        let key = image
            .key
            .as_deref()
            .map_or(String::new(), |k| format!(" ({k})"));
        writeln!(
            out,
            "image {}{key}: {}",
            image.label,
            image.run.args.join(" ")
        )
        .and_then(|()| match ready_ms {
            Some(ms) => writeln!(out, "  launch -> ready   {ms:.2} ms ({})", image.ready),
            None => writeln!(out, "  launch -> ready   never ({})", image.ready),
        })
        .and_then(|()| {
            writeln!(
                out,
                "  memory at ready   pss {:.1} MiB, cgroup {}",
                memory.pss as f64 / (1 << 20) as f64,
                memory.cgroup_current.map_or("n/a".into(), |b| format!(
                    "{:.1} MiB",
                    b as f64 / (1 << 20) as f64
                ))
            )
        })
        .and_then(|()| {
            writeln!(
                out,
                "  {}            {}",
                if workload == Workload::Noop {
                    "exit"
                } else {
                    "stop"
                },
                outcome
                    .status
                    .map_or("unknown".into(), |s| format!("status {s}"))
            )
        })
    };
    if let Err(e) = printed {
        if e.kind() != std::io::ErrorKind::BrokenPipe {
            return Err(anyhow::Error::new(e).context("cannot print the outcome"));
        }
    }
    ready?;
    if workload == Workload::Noop {
        return Ok(ExitCode::from(
            outcome.status.unwrap_or(1).clamp(0, 255) as u8
        ));
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_without_an_image_is_a_usage_error() {
        let a = ImageArgs {
            ready: Some(ReadyRule::Exit),
            ..Default::default()
        };
        let e = a.load(&[]).unwrap_err();
        assert_eq!(exit::code_for(&e), exit::USAGE);
        assert!(ImageArgs::default().load(&[]).unwrap().is_none());
    }

    #[test]
    fn an_image_key_not_complete_in_the_cache_is_one_usage_line() {
        let d = tempfile::tempdir().unwrap();
        // An entry without meta.json is incomplete: not found.
        let dir = d.path().join("images/sha256-ab");
        std::fs::create_dir_all(dir.join("rootfs")).unwrap();
        std::fs::write(dir.join("config.json"), "{}").unwrap();
        for key in ["sha256-ab", "sha256-cd"] {
            let a = ImageArgs {
                image_key: Some(key.into()),
                image_label: Some("busybox.tar".into()),
                ..Default::default()
            };
            let e = a.load_in(&[], Some(d.path())).unwrap_err();
            assert_eq!(exit::code_for(&e), exit::USAGE, "{e:#}");
            assert!(format!("{e:#}").contains(key), "{e:#}");
            assert!(!format!("{e:#}").contains('\n'));
        }
    }

    #[test]
    fn a_missing_image_or_bundle_is_one_usage_line() {
        for a in [
            ImageArgs {
                image: Some("/nonexistent/image.tar".into()),
                ..Default::default()
            },
            ImageArgs {
                bundle: Some("/nonexistent/bundle".into()),
                ..Default::default()
            },
        ] {
            let e = a.load(&[]).unwrap_err();
            assert_eq!(exit::code_for(&e), exit::USAGE, "{e:#}");
            assert!(format!("{e:#}").contains("/nonexistent/"), "{e:#}");
            assert!(!format!("{e:#}").contains('\n'));
        }
    }
}
