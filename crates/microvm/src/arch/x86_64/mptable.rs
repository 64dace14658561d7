//! The Intel MultiProcessor Specification 1.4 table at the EBDA.
//!
//! Without ACPI, this is how Linux learns how many CPUs there are, where the
//! IOAPIC is and how the legacy IRQs are wired. It is written even for one
//! vCPU: without it a kernel without ACPI falls back to PIC-only mode.
//! The table is serialised by hand (little endian, packed) so the exact byte
//! layout is visible and unit-tested.

use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

use super::layout::{APIC_ADDR, IOAPIC_ADDR, IRQ_MAX, MPTABLE_START};

/// Local APIC version reported for each CPU and the IOAPIC (what KVM emulates).
const APIC_VERSION: u8 = 0x14;
/// MP spec revision 1.4.
const MP_SPEC_REV: u8 = 4;
/// Processor entry flags: enabled, bootstrap processor.
const CPU_ENABLED: u8 = 1;
const CPU_BOOTPROCESSOR: u8 = 2;
/// Processor signature stepping/model/family as reported by a generic P6.
const CPU_STEPPING: u32 = 0x600;
/// Feature flags: FPU and APIC present.
const CPU_FEATURE_APIC: u32 = 0x200;
const CPU_FEATURE_FPU: u32 = 0x001;
/// Entry types.
const MP_PROCESSOR: u8 = 0;
const MP_BUS: u8 = 1;
const MP_IOAPIC: u8 = 2;
const MP_INTSRC: u8 = 3;
const MP_LINTSRC: u8 = 4;
/// Interrupt types.
const MP_INT: u8 = 0;
const MP_NMI: u8 = 1;
const MP_EXTINT: u8 = 3;
/// IOAPIC entry flag: usable.
const MPC_APIC_USABLE: u8 = 1;
/// Size of the floating pointer structure.
pub const MPF_SIZE: usize = 16;
/// Size of the configuration table header.
pub const MPC_HEADER_SIZE: usize = 44;
/// Size of a processor entry; every other entry is 8 bytes.
pub const MPC_CPU_SIZE: usize = 20;
/// Largest vCPU count we describe: APIC ids are 8 bits and one id goes to
/// the IOAPIC.
pub const MAX_SUPPORTED_CPUS: u8 = 254;

/// Failures building or writing the MP table.
#[derive(Debug, thiserror::Error)]
pub enum MptableError {
    /// More vCPUs than the table can describe.
    #[error("{cpus} vCPUs do not fit an MP table (at most {MAX_SUPPORTED_CPUS})")]
    TooManyCpus { cpus: u8 },
    /// The table does not fit below the BIOS area.
    #[error("MP table of {size} bytes does not fit in the EBDA")]
    TooLarge { size: usize },
    /// Writing guest memory failed.
    #[error("Failed to write the MP table at {MPTABLE_START:#x}")]
    Write {
        #[source]
        source: vm_memory::GuestMemoryError,
    },
}

fn checksum(bytes: &[u8]) -> u8 {
    // The spec wants every table's bytes to sum to zero modulo 256.
    0u8.wrapping_sub(bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b)))
}

/// Serialises the floating pointer plus the configuration table for
/// `num_cpus` CPUs, as it must appear at `base`.
pub fn build(num_cpus: u8, base: u64) -> Result<Vec<u8>, MptableError> {
    if num_cpus == 0 || num_cpus > MAX_SUPPORTED_CPUS {
        return Err(MptableError::TooManyCpus { cpus: num_cpus });
    }
    let ioapic_id = num_cpus + 1;
    let mut entries: Vec<u8> = Vec::new();
    let mut count: u16 = 0;

    for cpu in 0..num_cpus {
        entries.push(MP_PROCESSOR);
        entries.push(cpu); // local APIC id
        entries.push(APIC_VERSION);
        entries.push(CPU_ENABLED | if cpu == 0 { CPU_BOOTPROCESSOR } else { 0 });
        entries.extend_from_slice(&CPU_STEPPING.to_le_bytes());
        entries.extend_from_slice(&(CPU_FEATURE_APIC | CPU_FEATURE_FPU).to_le_bytes());
        entries.extend_from_slice(&[0u8; 8]);
        count += 1;
    }
    // Bus 0: ISA.
    entries.push(MP_BUS);
    entries.push(0);
    entries.extend_from_slice(b"ISA   ");
    count += 1;
    // The IOAPIC.
    entries.push(MP_IOAPIC);
    entries.push(ioapic_id);
    entries.push(APIC_VERSION);
    entries.push(MPC_APIC_USABLE);
    entries.extend_from_slice(&IOAPIC_ADDR.to_le_bytes());
    count += 1;
    // ISA IRQ i -> IOAPIC pin i, bus-default polarity and trigger.
    for irq in 0..=IRQ_MAX as u8 {
        entries.extend_from_slice(&[MP_INTSRC, MP_INT, 0, 0, 0, irq, ioapic_id, irq]);
        count += 1;
    }
    // LINT0 of every local APIC is ExtINT, LINT1 is NMI.
    entries.extend_from_slice(&[MP_LINTSRC, MP_EXTINT, 0, 0, 0, 0, 0, 0]);
    entries.extend_from_slice(&[MP_LINTSRC, MP_NMI, 0, 0, 0, 0, 0xff, 1]);
    count += 2;

    let table_len = MPC_HEADER_SIZE + entries.len();
    let mut header = Vec::with_capacity(table_len);
    header.extend_from_slice(b"PCMP");
    header.extend_from_slice(&(table_len as u16).to_le_bytes());
    header.push(MP_SPEC_REV);
    header.push(0); // checksum, below
    header.extend_from_slice(b"ISOLAB  "); // OEM id, 8 bytes
    header.extend_from_slice(b"MICROVM     "); // product id, 12 bytes
    header.extend_from_slice(&0u32.to_le_bytes()); // OEM table pointer
    header.extend_from_slice(&0u16.to_le_bytes()); // OEM table size
    header.extend_from_slice(&count.to_le_bytes());
    header.extend_from_slice(&APIC_ADDR.to_le_bytes());
    header.extend_from_slice(&[0u8; 4]); // extended table length/checksum
    debug_assert_eq!(header.len(), MPC_HEADER_SIZE);
    header.extend_from_slice(&entries);
    header[7] = checksum(&header);

    let mut mpf = Vec::with_capacity(MPF_SIZE);
    mpf.extend_from_slice(b"_MP_");
    mpf.extend_from_slice(&((base + MPF_SIZE as u64) as u32).to_le_bytes());
    mpf.push(1); // length in 16-byte paragraphs
    mpf.push(MP_SPEC_REV);
    mpf.push(0); // checksum, below
    mpf.extend_from_slice(&[0u8; 5]); // no default configuration, no IMCR
    mpf[10] = checksum(&mpf);

    mpf.extend_from_slice(&header);
    Ok(mpf)
}

/// Builds the table for `num_cpus` and writes it at [`MPTABLE_START`].
pub fn setup_mptable<M: GuestMemoryBackend>(mem: &M, num_cpus: u8) -> Result<(), MptableError> {
    let bytes = build(num_cpus, MPTABLE_START)?;
    let room = (super::layout::BIOS_END - MPTABLE_START) as usize;
    if bytes.len() > room {
        return Err(MptableError::TooLarge { size: bytes.len() });
    }
    mem.write_slice(&bytes, GuestAddress(MPTABLE_START))
        .map_err(|source| MptableError::Write { source })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(b: &[u8]) -> u8 {
        b.iter().fold(0u8, |a, x| a.wrapping_add(*x))
    }

    #[test]
    fn floating_pointer_points_at_config_table_and_sums_to_zero() {
        let t = build(1, MPTABLE_START).unwrap();
        assert_eq!(&t[0..4], b"_MP_");
        let ptr = u32::from_le_bytes(t[4..8].try_into().unwrap());
        assert_eq!(u64::from(ptr), MPTABLE_START + 16);
        assert_eq!(t[9], 4);
        assert_eq!(sum(&t[..16]), 0);
        assert_eq!(&t[16..20], b"PCMP");
    }

    #[test]
    fn config_table_length_count_and_checksum_are_consistent() {
        for cpus in [1u8, 2, 8] {
            let t = build(cpus, MPTABLE_START).unwrap();
            let cfg = &t[16..];
            let len = usize::from(u16::from_le_bytes([cfg[4], cfg[5]]));
            assert_eq!(len, cfg.len());
            assert_eq!(sum(cfg), 0, "checksum for {cpus} cpus");
            let count = u16::from_le_bytes([cfg[34], cfg[35]]);
            // cpus + bus + ioapic + 24 intsrc + 2 lintsrc
            assert_eq!(usize::from(count), usize::from(cpus) + 1 + 1 + 24 + 2);
            assert_eq!(len, 44 + 20 * usize::from(cpus) + 8 * 28);
            let lapic = u32::from_le_bytes(cfg[36..40].try_into().unwrap());
            assert_eq!(lapic, 0xfee0_0000);
        }
    }

    #[test]
    fn processors_have_sequential_apic_ids_and_one_bsp() {
        let t = build(2, MPTABLE_START).unwrap();
        let cpu0 = &t[16 + 44..16 + 64];
        let cpu1 = &t[16 + 64..16 + 84];
        assert_eq!((cpu0[0], cpu0[1], cpu0[3]), (0, 0, 3));
        assert_eq!((cpu1[0], cpu1[1], cpu1[3]), (0, 1, 1));
        let ioapic = &t[16 + 84 + 8..16 + 84 + 16];
        assert_eq!(ioapic[0], 2);
        assert_eq!(ioapic[1], 3, "IOAPIC id follows the CPUs");
        assert_eq!(
            u32::from_le_bytes(ioapic[4..8].try_into().unwrap()),
            0xfec0_0000
        );
    }

    #[test]
    fn refuses_zero_and_too_many_cpus() {
        assert!(build(0, MPTABLE_START).is_err());
        assert!(build(255, MPTABLE_START).is_err());
    }

    #[test]
    fn largest_table_fits_below_the_bios_area() {
        let t = build(MAX_SUPPORTED_CPUS, MPTABLE_START).unwrap();
        assert!(MPTABLE_START + t.len() as u64 <= super::super::layout::BIOS_END);
    }
}
