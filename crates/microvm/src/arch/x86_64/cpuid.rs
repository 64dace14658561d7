//! CPUID normalisation: KVM reports what the host can offer
//! (`KVM_GET_SUPPORTED_CPUID`); each vCPU must then see its own APIC id and a
//! topology that matches the vCPU count, and know it runs under a hypervisor.

use kvm_bindings::kvm_cpuid_entry2;

/// Leaf 1 ECX bit 31: "running under a hypervisor".
const ECX_HYPERVISOR: u32 = 1 << 31;
/// Leaf 1 ECX bit 24: TSC-deadline timer (emulated by KVM's in-kernel LAPIC).
const ECX_TSC_DEADLINE: u32 = 1 << 24;
/// Leaf 1 ECX bit 15: perfmon/debug capability MSR; not emulated.
const ECX_PDCM: u32 = 1 << 15;
/// Leaf 0x80000001 ECX bits 23, 24, 28: AMD core, northbridge and
/// last-level-cache performance counters; hidden with the rest of the PMU.
const ECX_AMD_PERFCTR_CORE_NB_LLC: u32 = (1 << 23) | (1 << 24) | (1 << 28);
/// Leaf 1 EDX bit 28: max logical processor count field is valid.
const EDX_HTT: u32 = 1 << 28;
/// CLFLUSH line size in 8-byte units (64 bytes).
const CLFLUSH_SIZE: u32 = 8;
/// Leaf 0xB/0x1F level types.
const LEVEL_TYPE_SMT: u32 = 1;
const LEVEL_TYPE_CORE: u32 = 2;

/// Number of APIC-id bits needed to number `count` vCPUs.
fn id_bits(count: u8) -> u32 {
    if count <= 1 {
        0
    } else {
        u32::BITS - u32::from(count - 1).leading_zeros()
    }
}

/// Rewrites `entries` in place for vCPU `index` of `count`: one socket,
/// `count` cores, one thread per core, APIC id = index.
pub fn normalize(entries: &mut [kvm_cpuid_entry2], index: u8, count: u8) {
    let apic_id = u32::from(index);
    let count32 = u32::from(count);
    for e in entries.iter_mut() {
        match e.function {
            0x1 => {
                e.ebx = (apic_id << 24) | (count32 << 16) | (CLFLUSH_SIZE << 8) | (e.ebx & 0xff);
                e.ecx |= ECX_HYPERVISOR | ECX_TSC_DEADLINE;
                e.ecx &= !ECX_PDCM;
                if count > 1 {
                    e.edx |= EDX_HTT;
                } else {
                    e.edx &= !EDX_HTT;
                }
            }
            0x4 => {
                // Deterministic cache parameters (Intel): cores per package,
                // and how many logical CPUs share this cache level.
                let level = (e.eax >> 5) & 0x7;
                let sharing = if level >= 3 { count32 - 1 } else { 0 };
                e.eax &= 0x3fff;
                e.eax |= ((count32 - 1) << 26) | (sharing << 14);
            }
            0xa => {
                // Architectural perfmon: not offered to the guest.
                e.eax = 0;
                e.ebx = 0;
                e.ecx = 0;
                e.edx = 0;
            }
            0xb | 0x1f => {
                e.edx = apic_id;
                match e.index {
                    0 => {
                        e.eax = 0;
                        e.ebx = 1;
                        e.ecx = (LEVEL_TYPE_SMT << 8) | e.index;
                    }
                    1 => {
                        e.eax = id_bits(count);
                        e.ebx = count32;
                        e.ecx = (LEVEL_TYPE_CORE << 8) | e.index;
                    }
                    _ => {
                        e.eax = 0;
                        e.ebx = 0;
                        e.ecx = e.index;
                    }
                }
            }
            0x8000_0001 => {
                // The guest has no PMU (see vstate::vm::hide_pmu_msrs).
                e.ecx &= !ECX_AMD_PERFCTR_CORE_NB_LLC;
            }
            0x8000_0022 => {
                // AMD PerfMonV2: not offered either.
                e.eax = 0;
                e.ebx = 0;
                e.ecx = 0;
                e.edx = 0;
            }
            0x8000_0008 => {
                // AMD: number of cores - 1 and the APIC-id size.
                e.ecx = (e.ecx & !0xf0ff) | (id_bits(count) << 12) | (count32 - 1);
            }
            0x8000_001e => {
                // AMD: extended APIC id, one thread per core, node 0.
                e.eax = apic_id;
                e.ebx = apic_id & 0xff;
                e.ecx = 0;
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(function: u32, index: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            ..Default::default()
        }
    }

    #[test]
    fn leaf1_carries_apic_id_count_and_hypervisor_bit() {
        let mut e = [entry(1, 0)];
        e[0].ecx = ECX_PDCM;
        normalize(&mut e, 3, 4);
        assert_eq!(e[0].ebx >> 24, 3);
        assert_eq!((e[0].ebx >> 16) & 0xff, 4);
        assert_eq!((e[0].ebx >> 8) & 0xff, 8);
        assert_ne!(e[0].ecx & ECX_HYPERVISOR, 0);
        assert_ne!(e[0].ecx & ECX_TSC_DEADLINE, 0);
        assert_eq!(e[0].ecx & ECX_PDCM, 0);
        assert_ne!(e[0].edx & EDX_HTT, 0);
    }

    #[test]
    fn single_vcpu_clears_htt() {
        let mut e = [entry(1, 0)];
        e[0].edx = EDX_HTT;
        normalize(&mut e, 0, 1);
        assert_eq!(e[0].edx & EDX_HTT, 0);
    }

    #[test]
    fn topology_leaf_describes_cores() {
        let mut e = [entry(0xb, 0), entry(0xb, 1), entry(0xb, 2)];
        normalize(&mut e, 1, 2);
        assert_eq!((e[0].ebx, e[0].ecx >> 8, e[0].edx), (1, 1, 1));
        assert_eq!((e[1].eax, e[1].ebx, e[1].ecx >> 8), (1, 2, 2));
        assert_eq!(e[2].ecx >> 8, 0, "level 2 marks the end");
    }

    #[test]
    fn perfmon_is_hidden() {
        let mut e = [entry(0xa, 0)];
        e[0].eax = 0x0760_3104;
        normalize(&mut e, 0, 1);
        assert_eq!(e[0].eax, 0);
    }

    #[test]
    fn amd_perf_counter_bits_are_hidden() {
        let mut e = [entry(0x8000_0001, 0), entry(0x8000_0022, 0)];
        e[0].ecx = ECX_AMD_PERFCTR_CORE_NB_LLC | 1;
        e[1].eax = 1;
        normalize(&mut e, 0, 1);
        assert_eq!(e[0].ecx, 1, "other bits kept");
        assert_eq!(e[1].eax, 0);
    }

    #[test]
    fn id_bits_rounds_up() {
        assert_eq!(id_bits(1), 0);
        assert_eq!(id_bits(2), 1);
        assert_eq!(id_bits(3), 2);
        assert_eq!(id_bits(4), 2);
        assert_eq!(id_bits(5), 3);
    }
}
