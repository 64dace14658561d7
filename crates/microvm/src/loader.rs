//! Kernel and initramfs loading.
//!
//! `vmlinux` (ELF) is preferred: it needs no decompression. An ELF with a
//! PVH note is entered through PVH (32-bit, no page tables needed), else at
//! its 64-bit entry point. A `bzImage` is entered at its load address +
//! 0x200 (the 64-bit entry of boot protocol >= 2.12). The initramfs goes at
//! the top of guest RAM, page-aligned, as a boot loader would put it.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use linux_loader::loader::bootparam::setup_header;
use linux_loader::loader::elf::PvhBootCapability;
use linux_loader::loader::{BzImage, Elf, KernelLoader};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

use crate::arch::bootparams::InitrdPlacement;
use crate::arch::layout::{HIMEM_START, PAGE_SIZE};
use crate::arch::regs::{BootProtocol, EntryPoint};

/// Offset of the 64-bit entry from a bzImage's protected-mode load address.
const BZIMAGE_64BIT_ENTRY_OFFSET: u64 = 0x200;
/// Offset of the "HdrS" magic in a bzImage.
const BZIMAGE_HDRS_OFFSET: usize = 0x202;

/// Kernel image formats we boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KernelFormat {
    /// Uncompressed ELF `vmlinux`.
    Elf,
    /// Compressed `bzImage`.
    BzImage,
}

/// Failures validating or loading images.
#[derive(Debug, thiserror::Error)]
pub enum LoaderError {
    /// The kernel file could not be opened or read.
    #[error("Cannot read kernel {path}")]
    ReadKernel {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The kernel file is empty.
    #[error("Kernel {path} is empty")]
    EmptyKernel { path: PathBuf },
    /// Neither ELF nor bzImage.
    #[error(
        "Kernel {path} is neither an ELF vmlinux nor a bzImage (no ELF magic, no HdrS header)"
    )]
    UnknownKernelFormat { path: PathBuf },
    /// linux-loader refused the image.
    #[error("Failed to load kernel {path} into guest memory")]
    LoadKernel {
        path: PathBuf,
        #[source]
        source: linux_loader::loader::Error,
    },
    /// The initramfs could not be opened or read.
    #[error("Cannot read initramfs {path}")]
    ReadInitrd {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The initramfs does not fit between the kernel and the top of RAM.
    #[error("Initramfs {path} ({size} bytes) does not fit in guest RAM above the kernel (ends at {kernel_end:#x}, RAM ends at {mem_end:#x})")]
    InitrdTooLarge {
        path: PathBuf,
        size: u64,
        kernel_end: u64,
        mem_end: u64,
    },
    /// Copying the initramfs into guest memory failed.
    #[error("Failed to copy initramfs {path} into guest memory at {addr:#x}")]
    WriteInitrd {
        path: PathBuf,
        addr: u64,
        #[source]
        source: vm_memory::GuestMemoryError,
    },
}

/// Recognises a kernel image from its first bytes.
pub fn sniff_format(head: &[u8]) -> Option<KernelFormat> {
    if head.starts_with(b"\x7fELF") {
        Some(KernelFormat::Elf)
    } else if head.get(BZIMAGE_HDRS_OFFSET..BZIMAGE_HDRS_OFFSET + 4) == Some(b"HdrS") {
        Some(KernelFormat::BzImage)
    } else {
        None
    }
}

/// Checks that `path` is a readable, non-empty kernel image of a known format.
pub fn validate_kernel(path: &Path) -> Result<KernelFormat, LoaderError> {
    let read_err = |source| LoaderError::ReadKernel {
        path: path.to_path_buf(),
        source,
    };
    // A regular file only: opening a FIFO would block until a writer came.
    let meta = std::fs::metadata(path).map_err(read_err)?;
    if !meta.is_file() {
        return Err(read_err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a regular file",
        )));
    }
    let mut f = File::open(path).map_err(read_err)?;
    let mut head = Vec::with_capacity(0x210);
    f.by_ref()
        .take(0x210)
        .read_to_end(&mut head)
        .map_err(read_err)?;
    if head.is_empty() {
        return Err(LoaderError::EmptyKernel {
            path: path.to_path_buf(),
        });
    }
    sniff_format(&head).ok_or_else(|| LoaderError::UnknownKernelFormat {
        path: path.to_path_buf(),
    })
}

/// A kernel in guest memory.
#[derive(Debug, Clone, Copy)]
pub struct LoadedKernel {
    /// Where and how to enter it.
    pub entry: EntryPoint,
    /// The bzImage setup header, to be copied into the zero page.
    pub setup_header: Option<setup_header>,
    /// First guest-physical byte after the kernel image.
    pub end: u64,
    /// What the file was.
    pub format: KernelFormat,
}

/// Loads the kernel at 1 MiB (or where its ELF headers say).
pub fn load_kernel<M: GuestMemoryBackend>(
    mem: &M,
    path: &Path,
) -> Result<LoadedKernel, LoaderError> {
    let format = validate_kernel(path)?;
    let mut f = File::open(path).map_err(|source| LoaderError::ReadKernel {
        path: path.to_path_buf(),
        source,
    })?;
    let load_err = |source| LoaderError::LoadKernel {
        path: path.to_path_buf(),
        source,
    };
    let himem = Some(GuestAddress(HIMEM_START));
    match format {
        KernelFormat::Elf => {
            let r = Elf::load(mem, None, &mut f, himem).map_err(load_err)?;
            let entry = match r.pvh_boot_cap {
                PvhBootCapability::PvhEntryPresent(addr) => EntryPoint {
                    addr,
                    protocol: BootProtocol::Pvh,
                },
                _ => EntryPoint {
                    addr: r.kernel_load,
                    protocol: BootProtocol::Linux64,
                },
            };
            Ok(LoadedKernel {
                entry,
                setup_header: None,
                end: r.kernel_end,
                format,
            })
        }
        KernelFormat::BzImage => {
            let r = BzImage::load(mem, None, &mut f, himem).map_err(load_err)?;
            Ok(LoadedKernel {
                entry: EntryPoint {
                    addr: GuestAddress(r.kernel_load.0 + BZIMAGE_64BIT_ENTRY_OFFSET),
                    protocol: BootProtocol::Linux64,
                },
                setup_header: r.setup_header,
                end: r.kernel_end,
                format,
            })
        }
    }
}

/// Where an initramfs of `size` bytes goes: the highest page-aligned
/// address where it still ends inside RAM, or `None` if it would overlap the
/// kernel.
pub fn initrd_address(mem_end: u64, size: u64, kernel_end: u64) -> Option<u64> {
    let start = mem_end.checked_sub(size)? & !(PAGE_SIZE - 1);
    (start >= kernel_end).then_some(start)
}

/// Copies the initramfs to the top of RAM.
pub fn load_initrd<M: GuestMemoryBackend>(
    mem: &M,
    path: &Path,
    mem_end: u64,
    kernel_end: u64,
) -> Result<InitrdPlacement, LoaderError> {
    let read_err = |source| LoaderError::ReadInitrd {
        path: path.to_path_buf(),
        source,
    };
    let mut f = File::open(path).map_err(read_err)?;
    let size = f.metadata().map_err(read_err)?.len();
    let addr = initrd_address(mem_end, size, kernel_end).ok_or(LoaderError::InitrdTooLarge {
        path: path.to_path_buf(),
        size,
        kernel_end,
        mem_end,
    })?;
    mem.read_exact_volatile_from(GuestAddress(addr), &mut f, size as usize)
        .map_err(|source| LoaderError::WriteInitrd {
            path: path.to_path_buf(),
            addr,
            source,
        })?;
    Ok(InitrdPlacement { addr, size })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vstate::memory::create_guest_memory;
    use std::io::Write;

    #[test]
    fn sniffs_elf_and_bzimage_and_rejects_garbage() {
        assert_eq!(sniff_format(b"\x7fELF\x02\x01"), Some(KernelFormat::Elf));
        let mut bz = vec![0u8; 0x300];
        bz[0x202..0x206].copy_from_slice(b"HdrS");
        assert_eq!(sniff_format(&bz), Some(KernelFormat::BzImage));
        assert_eq!(sniff_format(b"#!/bin/sh\necho hi\n"), None);
        assert_eq!(sniff_format(&[]), None);
    }

    #[test]
    fn validate_names_missing_empty_and_garbage_files() {
        let d = tempfile::tempdir().unwrap();
        let missing = d.path().join("nope");
        assert!(matches!(
            validate_kernel(&missing),
            Err(LoaderError::ReadKernel { .. })
        ));
        let empty = d.path().join("empty");
        std::fs::write(&empty, b"").unwrap();
        let e = validate_kernel(&empty).unwrap_err();
        assert!(e.to_string().contains("is empty"), "{e}");
        let junk = d.path().join("junk");
        std::fs::write(&junk, vec![0x42u8; 4096]).unwrap();
        let e = validate_kernel(&junk).unwrap_err();
        assert!(matches!(e, LoaderError::UnknownKernelFormat { .. }));
        assert!(e.to_string().contains("junk"));
        // A FIFO is refused before the open, which would block for a writer.
        let fifo = d.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
        assert!(matches!(
            validate_kernel(&fifo),
            Err(LoaderError::ReadKernel { .. })
        ));
        assert!(matches!(
            validate_kernel(d.path()),
            Err(LoaderError::ReadKernel { .. })
        ));
    }

    #[test]
    fn initrd_goes_page_aligned_to_the_top_of_ram() {
        assert_eq!(
            initrd_address(0x400_0000, 0x1800, 0x20_0000),
            Some(0x3ff_e000)
        );
        assert_eq!(
            initrd_address(0x400_0000, 0x1000, 0x20_0000),
            Some(0x3ff_f000)
        );
        assert_eq!(initrd_address(0x400_0000, 0x400_0000, 0x20_0000), None);
        assert_eq!(initrd_address(0x400_0000, 0x500_0000, 0), None);
    }

    #[test]
    fn initrd_bytes_land_at_the_placement() {
        let mem = create_guest_memory(4 << 20, Default::default()).unwrap();
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(b"070701cpio-bytes").unwrap();
        let p = load_initrd(&mem, f.path(), 4 << 20, 0x20_0000).unwrap();
        assert_eq!(p.addr, (4 << 20) - 0x1000);
        assert_eq!(p.size, 16);
        let mut back = [0u8; 16];
        mem.read_slice(&mut back, GuestAddress(p.addr)).unwrap();
        assert_eq!(&back, b"070701cpio-bytes");
    }

    #[test]
    fn garbage_kernel_is_refused_before_loading() {
        let mem = create_guest_memory(4 << 20, Default::default()).unwrap();
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(&[0u8; 1024]).unwrap();
        assert!(matches!(
            load_kernel(&mem, f.path()),
            Err(LoaderError::UnknownKernelFormat { .. })
        ));
    }
}
