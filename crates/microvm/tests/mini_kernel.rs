//! Privileged: the whole `isolab_microvm::run` boot sequence (all 14 steps)
//! with a hand-made "kernel": an ELF with a Xen PVH note whose 32-bit entry
//! plays the guest init's part of the marker ABI (init reached, workload
//! started, ready, two output bytes, status 7, exited) and then reboots
//! through the i8042. PVH starts in 32-bit protected mode, which PVM KVM
//! accepts, so this runs natively on the project's hosts (with
//! `allow_pvm`) as well as on hardware KVM.

use std::io::Write;
use std::time::Instant;

use isolab_microvm::{RunHooks, StopReason, VmConfig};

const LOAD: u64 = 0x10_0000;

/// 32-bit code at 1 MiB.
fn guest_code() -> Vec<u8> {
    let mut c = Vec::new();
    let dx = |c: &mut Vec<u8>, port: u16| {
        c.extend_from_slice(&[0x66, 0xba]); // mov dx, imm16
        c.extend_from_slice(&port.to_le_bytes());
    };
    let out = |c: &mut Vec<u8>, v: u8| c.extend_from_slice(&[0xb0, v, 0xee]); // mov al, v; out dx, al
    dx(&mut c, 0x3f0);
    out(&mut c, 123); // init reached
    out(&mut c, 0x01); // workload started
    out(&mut c, 0x02); // workload ready
    dx(&mut c, 0x3f2);
    out(&mut c, b'h');
    out(&mut c, b'i');
    dx(&mut c, 0x3f1);
    out(&mut c, 7); // exit status
    dx(&mut c, 0x3f0);
    out(&mut c, 0x03); // workload exited
    c.extend_from_slice(&[0xb0, 0xfe, 0xe6, 0x64]); // mov al, 0xfe; out 0x64, al
    c.extend_from_slice(&[0xeb, 0xfe]); // jmp $
    c
}

/// A minimal ELF64 executable: one PT_LOAD at 1 MiB and a PT_NOTE carrying
/// XEN_ELFNOTE_PHYS32_ENTRY (type 18, name "Xen") = 1 MiB.
fn pvh_elf() -> Vec<u8> {
    let code = guest_code();
    let (phoff, note_off, code_off) = (64u64, 176u64, 0x200u64);
    let mut e = Vec::new();
    e.extend_from_slice(b"\x7fELF");
    e.extend_from_slice(&[2, 1, 1, 0]); // 64-bit, little endian, version 1, SysV
    e.extend_from_slice(&[0; 8]);
    e.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    e.extend_from_slice(&0x3eu16.to_le_bytes()); // x86-64
    e.extend_from_slice(&1u32.to_le_bytes());
    e.extend_from_slice(&LOAD.to_le_bytes()); // e_entry
    e.extend_from_slice(&phoff.to_le_bytes());
    e.extend_from_slice(&0u64.to_le_bytes()); // no section headers
    e.extend_from_slice(&0u32.to_le_bytes());
    for v in [64u16, 56, 2, 64, 0, 0] {
        e.extend_from_slice(&v.to_le_bytes()); // ehsize, phentsize, phnum, shentsize, shnum, shstrndx
    }
    let phdr =
        |e: &mut Vec<u8>, ty: u32, flags: u32, off: u64, addr: u64, size: u64, align: u64| {
            e.extend_from_slice(&ty.to_le_bytes());
            e.extend_from_slice(&flags.to_le_bytes());
            for v in [off, addr, addr, size, size, align] {
                e.extend_from_slice(&v.to_le_bytes());
            }
        };
    phdr(&mut e, 1, 5, code_off, LOAD, code.len() as u64, 0x1000); // PT_LOAD r-x
    phdr(&mut e, 4, 4, note_off, 0, 20, 4); // PT_NOTE
    assert_eq!(e.len() as u64, note_off);
    for v in [4u32, 4, 18] {
        e.extend_from_slice(&v.to_le_bytes()); // namesz, descsz, type
    }
    e.extend_from_slice(b"Xen\0");
    e.extend_from_slice(&(LOAD as u32).to_le_bytes());
    e.resize(code_off as usize, 0);
    e.extend_from_slice(&code);
    e
}

#[test]
fn full_boot_sequence_reports_markers_status_and_memory() {
    let test = "full_boot_sequence_reports_markers_status_and_memory";
    if !isolab_testkit::require(test, isolab_testkit::missing_kvm()) {
        return;
    }
    let mut k = tempfile::NamedTempFile::new().unwrap();
    k.write_all(&pvh_elf()).unwrap();
    for vcpus in [1u8, 2] {
        let mut cfg = VmConfig::new(k.path(), "noop");
        cfg.memory_mib = 32;
        cfg.vcpus = vcpus;
        cfg.allow_pvm = true;
        let readies = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let r2 = readies.clone();
        let hooks = RunHooks {
            on_ready: Some(Box::new(move || {
                r2.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            })),
            mmio_devices: Vec::new(),
        };
        let r = isolab_microvm::run(&cfg, Instant::now(), hooks)
            .unwrap_or_else(|e| panic!("{vcpus} vCPU: {e:#?}"));
        assert_eq!(r.boot_protocol, "pvh");
        assert_eq!(r.stop_reason, StopReason::WorkloadExited);
        assert_eq!(r.exit_status, Some(7));
        assert_eq!(r.workload_output, "hi");
        assert_eq!(readies.load(std::sync::atomic::Ordering::SeqCst), 1);
        let p = &r.phases;
        for v in [
            p.vmm_setup_ms,
            p.kernel_boot_ms,
            p.init_ms,
            p.workload_ready_ms,
            p.total_ms,
        ] {
            assert!(v.is_some(), "{p:?}");
        }
        let m = r.memory_at_ready.expect("sampled at ready");
        assert!(m.vmm_overhead_kib > 0 && m.guest_touched_kib > 0, "{m:?}");
        assert!(m.guest_touched_kib <= 32 * 1024);
        assert!(r.cmdline.contains("isolab.workload=noop"));
    }
}
