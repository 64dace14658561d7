//! Global descriptor table entries and their KVM segment form.
//!
//! KVM takes segment registers already "loaded" (`kvm_segment`), but the
//! guest may reload them from the GDT, so both forms must agree: every
//! segment here is derived from the very descriptor written to guest memory.

use kvm_bindings::kvm_segment;

/// Flags of a 64-bit code segment: G=1, L=1, P=1, DPL=0, S=1, type=0xb
/// (execute/read, accessed).
pub const CODE64_FLAGS: u16 = 0xa09b;
/// Flags of a 32-bit flat code segment (PVH entry): G=1, D=1, P=1, type=0xb.
pub const CODE32_FLAGS: u16 = 0xc09b;
/// Flags of a flat data segment: G=1, D/B=1, P=1, S=1, type=3 (read/write, accessed).
pub const DATA_FLAGS: u16 = 0xc093;
/// Flags of the 64-bit boot TSS: G=1, P=1, type=0xb (busy TSS).
pub const TSS64_FLAGS: u16 = 0x808b;
/// Flags of the PVH boot TSS: byte granular, P=1, type=0xb.
pub const TSS32_FLAGS: u16 = 0x008b;

/// GDT slot of the code segment (selector 0x08).
pub const CODE_INDEX: u8 = 1;
/// GDT slot of the data segment (selector 0x10).
pub const DATA_INDEX: u8 = 2;
/// GDT slot of the TSS (selector 0x18).
pub const TSS_INDEX: u8 = 3;

/// Encodes a segment descriptor from its 16 flag bits (access byte in bits
/// 0-7, G/DB/L/AVL in bits 12-15), base and 20-bit limit.
pub fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    let base = u64::from(base);
    let limit = u64::from(limit);
    let flags = u64::from(flags);
    ((base & 0xff00_0000) << 32)
        | ((flags & 0xf0ff) << 40)
        | ((limit & 0x000f_0000) << 32)
        | ((base & 0x00ff_ffff) << 16)
        | (limit & 0x0000_ffff)
}

/// Decodes a descriptor into the register form KVM expects, for the given
/// GDT slot.
pub fn segment_from_gdt(entry: u64, index: u8) -> kvm_segment {
    let base = ((entry >> 16) & 0x00ff_ffff) | ((entry >> 32) & 0xff00_0000);
    let raw_limit = (entry & 0xffff) | ((entry >> 32) & 0x000f_0000);
    let g = ((entry >> 55) & 1) as u8;
    // With G=1 the limit counts 4 KiB pages; KVM wants it in bytes.
    let limit = if g == 1 {
        (raw_limit << 12) | 0xfff
    } else {
        raw_limit
    };
    let present = ((entry >> 47) & 1) as u8;
    kvm_segment {
        base,
        limit: limit as u32,
        selector: u16::from(index) * 8,
        type_: ((entry >> 40) & 0xf) as u8,
        present,
        dpl: ((entry >> 45) & 0x3) as u8,
        db: ((entry >> 54) & 1) as u8,
        s: ((entry >> 44) & 1) as u8,
        l: ((entry >> 53) & 1) as u8,
        g,
        avl: ((entry >> 52) & 1) as u8,
        unusable: u8::from(present == 0),
        padding: 0,
    }
}

/// The four-entry GDT for the Linux 64-bit boot protocol.
pub fn long_mode_gdt() -> [u64; 4] {
    [
        0,
        gdt_entry(CODE64_FLAGS, 0, 0xfffff),
        gdt_entry(DATA_FLAGS, 0, 0xfffff),
        gdt_entry(TSS64_FLAGS, 0, 0xfffff),
    ]
}

/// The four-entry GDT for the PVH entry (32-bit protected mode, flat).
pub fn pvh_gdt() -> [u64; 4] {
    [
        0,
        gdt_entry(CODE32_FLAGS, 0, 0xfffff),
        gdt_entry(DATA_FLAGS, 0, 0xfffff),
        gdt_entry(TSS32_FLAGS, 0, 0x67),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code64_descriptor_is_the_canonical_flat_long_mode_value() {
        // The well-known encoding of a flat 64-bit kernel code segment.
        assert_eq!(gdt_entry(CODE64_FLAGS, 0, 0xfffff), 0x00af_9b00_0000_ffff);
        assert_eq!(gdt_entry(DATA_FLAGS, 0, 0xfffff), 0x00cf_9300_0000_ffff);
    }

    #[test]
    fn decoded_code_segment_is_long_mode_and_flat() {
        let flat_code = kvm_segment {
            base: 0,
            limit: 0xffff_ffff,
            selector: 0x08,
            type_: 0xb,
            present: 1,
            dpl: 0,
            db: 0,
            s: 1,
            l: 1,
            g: 1,
            avl: 0,
            unusable: 0,
            padding: 0,
        };
        assert_eq!(segment_from_gdt(long_mode_gdt()[1], CODE_INDEX), flat_code);
    }

    #[test]
    fn decoding_recovers_base_and_byte_granular_limit() {
        let e = gdt_entry(TSS32_FLAGS, 0x1234_5678, 0x67);
        let seg = segment_from_gdt(e, TSS_INDEX);
        assert_eq!(
            (seg.base, seg.limit, seg.g, seg.selector, seg.s),
            (0x1234_5678, 0x67, 0, 0x18, 0)
        );
    }

    #[test]
    fn pvh_code_segment_is_32_bit() {
        let seg = segment_from_gdt(pvh_gdt()[1], CODE_INDEX);
        assert_eq!(seg.l, 0);
        assert_eq!(seg.db, 1);
    }

    #[test]
    fn null_descriptor_is_unusable() {
        assert_eq!(segment_from_gdt(0, 0).unusable, 1);
    }
}
