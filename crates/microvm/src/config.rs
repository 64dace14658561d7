//! What a caller asks for (`VmConfig`), and its validation. Everything here
//! is checked before any KVM work, so bad input changes nothing on the host.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::arch::layout::{HIMEM_START, MAX_GUEST_RAM, MIN_GUEST_RAM};
use crate::arch::mptable::MAX_SUPPORTED_CPUS;
use crate::loader::{self, KernelFormat, LoaderError};
pub use crate::vstate::memory::HugePages;

/// Default guest RAM in MiB.
pub const DEFAULT_MEMORY_MIB: u64 = 128;
/// Default vCPU count.
pub const DEFAULT_VCPUS: u8 = 1;

/// Where the guest's serial console goes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Console {
    /// No console: the kernel is told there is no UART (fastest boot).
    #[default]
    Off,
    /// The monitor's stdout.
    Stdout,
    /// A file, created or truncated.
    File(PathBuf),
}

/// One microVM run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmConfig {
    /// Guest kernel: `vmlinux` (ELF) or `bzImage`.
    pub kernel: PathBuf,
    /// Initramfs (newc cpio, optionally compressed) with `/init` and `/workload`.
    #[serde(default)]
    pub initrd: Option<PathBuf>,
    /// Guest RAM in MiB (default 128, at least 32, below 3072).
    #[serde(default = "default_memory")]
    pub memory_mib: u64,
    /// vCPUs (default 1).
    #[serde(default = "default_vcpus")]
    pub vcpus: u8,
    /// Workload name, passed as `isolab.workload=`.
    pub workload: String,
    /// Further workload arguments, each passed as `isolab.arg=`.
    #[serde(default)]
    pub workload_args: Vec<String>,
    /// Serial console (default off).
    #[serde(default)]
    pub console: Console,
    /// Appended verbatim to the kernel command line.
    #[serde(default)]
    pub cmdline_extra: Option<String>,
    /// Boot even on a PVM host (needs a PVM-capable guest kernel).
    #[serde(default)]
    pub allow_pvm: bool,
    /// How guest RAM is backed (default `host`: ordinary memory, 2 MiB
    /// aligned, transparent huge pages as the host's setting decides).
    #[serde(default)]
    pub huge_pages: HugePages,
    /// Confine the monitor (default false): per-thread seccomp filters and
    /// no capabilities, from just before the guest runs (see
    /// [`crate::seccomp`]). Irreversible for the calling thread, so meant
    /// for a process that runs one VM (`isolab-vmm` turns it on); a
    /// forbidden syscall ends the process with status 159.
    #[serde(default)]
    pub seccomp: bool,
    /// Count the workload ready when this text first appears in its output
    /// (the marker port), for a program that knows nothing of the ready
    /// marker (an image's, `--ready log:TEXT`); at most
    /// [`MAX_READY_TEXT`] bytes.
    #[serde(default)]
    pub ready_on_output: Option<String>,
}

/// Longest `ready_on_output` text.
pub const MAX_READY_TEXT: usize = 256;

fn default_memory() -> u64 {
    DEFAULT_MEMORY_MIB
}
fn default_vcpus() -> u8 {
    DEFAULT_VCPUS
}

/// Invalid configurations (usage errors).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Guest memory below the minimum.
    #[error("Guest memory {mib} MiB is below the minimum of {} MiB: pass --memory {}M or more", MIN_GUEST_RAM >> 20, MIN_GUEST_RAM >> 20)]
    MemoryTooSmall { mib: u64 },
    /// Guest memory reaching into the MMIO gap.
    #[error("Guest memory {mib} MiB is above the maximum of {} MiB (RAM must stay below the 3 GiB MMIO gap)", (MAX_GUEST_RAM >> 20) - 1)]
    MemoryTooLarge { mib: u64 },
    /// Zero vCPUs.
    #[error("A VM needs at least one vCPU: pass --vcpus 1 or more")]
    NoVcpus,
    /// More vCPUs than the MP table or KVM allow.
    #[error("{vcpus} vCPUs is above the maximum of {max} on this host")]
    TooManyVcpus { vcpus: u64, max: u64 },
    /// Kernel image problems.
    #[error("Bad --kernel")]
    Kernel(#[source] LoaderError),
    /// The initramfs is missing or unreadable.
    #[error("Cannot read initramfs {path}: pass an existing --initrd")]
    InitrdUnreadable {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The initramfs cannot fit.
    #[error("Initramfs {path} ({size_mib} MiB) plus the kernel does not fit in {mem_mib} MiB of guest RAM: raise --memory")]
    InitrdTooLarge {
        path: PathBuf,
        size_mib: u64,
        mem_mib: u64,
    },
    /// The workload name is unusable on the kernel command line.
    #[error("Workload name {name:?} must be non-empty and free of spaces, quotes and control characters")]
    BadWorkload { name: String },
    /// A workload argument is unusable on the kernel command line.
    #[error("Workload argument {arg:?} cannot go on the kernel command line (no spaces, quotes or control characters)")]
    BadArg { arg: String },
    /// Extra command line with control characters.
    #[error("--cmdline-extra must be printable ASCII")]
    BadCmdlineExtra,
    /// The ready text is empty or too long.
    #[error("The ready text must be 1 to {MAX_READY_TEXT} bytes, not {len}")]
    BadReadyText { len: usize },
    /// Guest RAM is not a whole number of the chosen huge pages.
    #[error("Guest memory {mib} MiB is not a multiple of the {} hugetlb page: pass a multiple of {} MiB", .huge_pages.name(), .huge_pages.granule() >> 20)]
    NotHugePageMultiple { mib: u64, huge_pages: HugePages },
}

fn cmdline_safe(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_graphic() && c != '"' && c != '\'')
}

/// The facts validation established.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validated {
    /// Kernel image format.
    pub kernel_format: KernelFormat,
    /// Guest RAM in bytes.
    pub mem_bytes: u64,
}

impl VmConfig {
    /// A config with defaults for everything but the kernel and workload.
    pub fn new(kernel: impl Into<PathBuf>, workload: impl Into<String>) -> Self {
        Self {
            kernel: kernel.into(),
            initrd: None,
            memory_mib: DEFAULT_MEMORY_MIB,
            vcpus: DEFAULT_VCPUS,
            workload: workload.into(),
            workload_args: Vec::new(),
            console: Console::Off,
            cmdline_extra: None,
            allow_pvm: false,
            huge_pages: HugePages::Host,
            seccomp: false,
            ready_on_output: None,
        }
    }

    /// Checks everything that can be checked without KVM.
    pub fn validate(&self) -> Result<Validated, ConfigError> {
        let mem_bytes = self.validate_shape()?;
        let kernel_format = loader::validate_kernel(&self.kernel).map_err(ConfigError::Kernel)?;
        if let Some(initrd) = &self.initrd {
            self.validate_initrd(initrd, mem_bytes)?;
        }
        Ok(Validated {
            kernel_format,
            mem_bytes,
        })
    }

    /// Checks the values that need no file: memory, vCPUs, workload name,
    /// arguments, extra command line. Returns guest RAM in bytes.
    pub fn validate_shape(&self) -> Result<u64, ConfigError> {
        let mem_bytes = self.memory_mib.saturating_mul(1 << 20);
        if mem_bytes < MIN_GUEST_RAM {
            return Err(ConfigError::MemoryTooSmall {
                mib: self.memory_mib,
            });
        }
        if mem_bytes >= MAX_GUEST_RAM {
            return Err(ConfigError::MemoryTooLarge {
                mib: self.memory_mib,
            });
        }
        if mem_bytes % self.huge_pages.granule() != 0 {
            return Err(ConfigError::NotHugePageMultiple {
                mib: self.memory_mib,
                huge_pages: self.huge_pages,
            });
        }
        self.validate_vcpus(usize::from(MAX_SUPPORTED_CPUS))?;
        if !cmdline_safe(&self.workload) {
            return Err(ConfigError::BadWorkload {
                name: self.workload.clone(),
            });
        }
        if let Some(arg) = self.workload_args.iter().find(|a| !cmdline_safe(a)) {
            return Err(ConfigError::BadArg { arg: arg.clone() });
        }
        if let Some(extra) = &self.cmdline_extra {
            if !extra.chars().all(|c| c.is_ascii_graphic() || c == ' ') {
                return Err(ConfigError::BadCmdlineExtra);
            }
        }
        if let Some(t) = &self.ready_on_output {
            if t.is_empty() || t.len() > MAX_READY_TEXT {
                return Err(ConfigError::BadReadyText { len: t.len() });
            }
        }
        Ok(mem_bytes)
    }

    /// Checks the vCPU count against `max` (KVM's limit once known).
    pub fn validate_vcpus(&self, max: usize) -> Result<(), ConfigError> {
        if self.vcpus == 0 {
            return Err(ConfigError::NoVcpus);
        }
        let max = max.min(usize::from(MAX_SUPPORTED_CPUS));
        if usize::from(self.vcpus) > max {
            return Err(ConfigError::TooManyVcpus {
                vcpus: u64::from(self.vcpus),
                max: max as u64,
            });
        }
        Ok(())
    }

    fn validate_initrd(&self, initrd: &Path, mem_bytes: u64) -> Result<(), ConfigError> {
        let meta = std::fs::metadata(initrd)
            .and_then(|m| {
                if m.is_file() {
                    Ok(m)
                } else {
                    Err(std::io::Error::other("not a regular file"))
                }
            })
            .map_err(|source| ConfigError::InitrdUnreadable {
                path: initrd.to_path_buf(),
                source,
            })?;
        let kernel_size = std::fs::metadata(&self.kernel)
            .map(|m| m.len())
            .unwrap_or(0);
        if HIMEM_START + kernel_size + meta.len() > mem_bytes {
            return Err(ConfigError::InitrdTooLarge {
                path: initrd.to_path_buf(),
                size_mib: meta.len().div_ceil(1 << 20),
                mem_mib: self.memory_mib,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn elf() -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(b"\x7fELF\x02\x01\x01").unwrap();
        f.write_all(&[0u8; 1024]).unwrap();
        f
    }

    #[test]
    fn memory_bounds_are_enforced() {
        let k = elf();
        let mut c = VmConfig::new(k.path(), "noop");
        c.memory_mib = 0;
        assert!(matches!(
            c.validate(),
            Err(ConfigError::MemoryTooSmall { mib: 0 })
        ));
        c.memory_mib = 16;
        let e = c.validate().unwrap_err();
        assert!(e.to_string().contains("minimum of 32 MiB"), "{e}");
        c.memory_mib = 4096;
        assert!(matches!(
            c.validate(),
            Err(ConfigError::MemoryTooLarge { .. })
        ));
        c.memory_mib = 64;
        assert_eq!(c.validate().unwrap().mem_bytes, 64 << 20);
        c.huge_pages = HugePages::Hugetlb1g;
        let e = c.validate().unwrap_err();
        assert!(e.to_string().contains("multiple of 1024 MiB"), "{e}");
        c.huge_pages = HugePages::Hugetlb2m;
        c.memory_mib = 65;
        assert!(matches!(
            c.validate(),
            Err(ConfigError::NotHugePageMultiple { mib: 65, .. })
        ));
    }

    #[test]
    fn vcpu_bounds_are_enforced() {
        let k = elf();
        let mut c = VmConfig::new(k.path(), "noop");
        c.vcpus = 0;
        assert!(matches!(c.validate(), Err(ConfigError::NoVcpus)));
        c.vcpus = 255;
        assert!(matches!(
            c.validate(),
            Err(ConfigError::TooManyVcpus { max: 254, .. })
        ));
        c.vcpus = 8;
        assert!(matches!(
            c.validate_vcpus(4),
            Err(ConfigError::TooManyVcpus { vcpus: 8, max: 4 })
        ));
    }

    #[test]
    fn bad_kernels_are_named() {
        let d = tempfile::tempdir().unwrap();
        let c = VmConfig::new(d.path().join("missing"), "noop");
        let e = c.validate().unwrap_err();
        assert!(matches!(
            e,
            ConfigError::Kernel(LoaderError::ReadKernel { .. })
        ));
        let junk = d.path().join("junk");
        std::fs::write(&junk, b"not a kernel at all").unwrap();
        let c = VmConfig::new(&junk, "noop");
        assert!(matches!(
            c.validate(),
            Err(ConfigError::Kernel(LoaderError::UnknownKernelFormat { .. }))
        ));
    }

    #[test]
    fn initrd_larger_than_ram_is_refused() {
        let k = elf();
        let d = tempfile::tempdir().unwrap();
        let big = d.path().join("big.cpio");
        let f = std::fs::File::create(&big).unwrap();
        f.set_len(40 << 20).unwrap(); // sparse
        let mut c = VmConfig::new(k.path(), "noop");
        c.memory_mib = 32;
        c.initrd = Some(big);
        let e = c.validate().unwrap_err();
        assert!(
            matches!(
                e,
                ConfigError::InitrdTooLarge {
                    size_mib: 40,
                    mem_mib: 32,
                    ..
                }
            ),
            "{e}"
        );
        c.initrd = Some(d.path().join("absent"));
        assert!(matches!(
            c.validate(),
            Err(ConfigError::InitrdUnreadable { .. })
        ));
        c.initrd = Some(d.path().to_path_buf());
        assert!(matches!(
            c.validate(),
            Err(ConfigError::InitrdUnreadable { .. })
        ));
    }

    #[test]
    fn workload_and_args_must_survive_the_cmdline() {
        let k = elf();
        let mut c = VmConfig::new(k.path(), "no op");
        assert!(matches!(c.validate(), Err(ConfigError::BadWorkload { .. })));
        c.workload = "api".into();
        c.workload_args = vec!["--port".into(), "a b".into()];
        assert!(matches!(c.validate(), Err(ConfigError::BadArg { .. })));
        c.workload_args = vec!["--port".into(), "8080".into()];
        c.validate().unwrap();
    }

    #[test]
    fn serde_rejects_unknown_fields_and_fills_defaults() {
        let c: VmConfig = serde_json::from_str(r#"{"kernel":"/k","workload":"noop"}"#).unwrap();
        assert_eq!(
            (c.memory_mib, c.vcpus, c.console.clone(), c.huge_pages),
            (128, 1, Console::Off, HugePages::Host)
        );
        let c: VmConfig =
            serde_json::from_str(r#"{"kernel":"/k","workload":"noop","huge_pages":"hugetlb_2m"}"#)
                .unwrap();
        assert_eq!(c.huge_pages, HugePages::Hugetlb2m);
        assert!(
            serde_json::from_str::<VmConfig>(r#"{"kernel":"/k","workload":"noop","mem":1}"#)
                .is_err()
        );
    }
}
