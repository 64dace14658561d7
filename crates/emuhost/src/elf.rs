//! Just enough ELF64 reading for two questions: what is in a named section
//! (a module's `.modinfo`), and does a program ask for a dynamic loader
//! (`PT_INTERP`), i.e. can it run in an initramfs without its libraries.

fn le_u16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(
        b.get(at..at.checked_add(2)?)?.try_into().ok()?,
    ))
}
fn le_u32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(
        b.get(at..at.checked_add(4)?)?.try_into().ok()?,
    ))
}
fn le_u64(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(
        b.get(at..at.checked_add(8)?)?.try_into().ok()?,
    ))
}

fn check_ident(elf: &[u8]) -> Result<(), &'static str> {
    // e_ident: magic, ELFCLASS64 (2), ELFDATA2LSB (1).
    if elf.len() < 64 || &elf[..4] != b"\x7fELF" || elf[4] != 2 || elf[5] != 1 {
        return Err("not a 64-bit little-endian ELF file");
    }
    Ok(())
}

/// The contents of the named section.
pub fn section<'a>(elf: &'a [u8], wanted: &str) -> Result<&'a [u8], &'static str> {
    check_ident(elf)?;
    let short = "truncated section headers";
    let shoff = le_u64(elf, 0x28).ok_or(short)? as usize;
    let shentsize = le_u16(elf, 0x3a).ok_or(short)? as usize;
    let shnum = le_u16(elf, 0x3c).ok_or(short)? as usize;
    let shstrndx = le_u16(elf, 0x3e).ok_or(short)? as usize;
    if shentsize < 64 {
        return Err("section header entries too small");
    }
    let header = |i: usize| -> Option<(u32, &'a [u8])> {
        let h = shoff.checked_add(i.checked_mul(shentsize)?)?;
        let name = le_u32(elf, h)?;
        let off = le_u64(elf, h + 24)? as usize;
        let size = le_u64(elf, h + 32)? as usize;
        Some((name, elf.get(off..off.checked_add(size)?)?))
    };
    let (_, names) = header(shstrndx).ok_or(short)?;
    for i in 0..shnum {
        let (name_off, data) = header(i).ok_or(short)?;
        let name = names
            .get(name_off as usize..)
            .and_then(|s| s.split(|&c| c == 0).next())
            .ok_or("bad section name")?;
        if name == wanted.as_bytes() {
            return Ok(data);
        }
    }
    Err("section not found")
}

/// True when the program has a `PT_INTERP` header (needs `ld.so` and
/// shared libraries to start).
pub fn has_interpreter(elf: &[u8]) -> Result<bool, &'static str> {
    check_ident(elf)?;
    let short = "truncated program headers";
    let phoff = le_u64(elf, 0x20).ok_or(short)? as usize;
    let phentsize = le_u16(elf, 0x36).ok_or(short)? as usize;
    let phnum = le_u16(elf, 0x38).ok_or(short)? as usize;
    const PT_INTERP: u32 = 3;
    for i in 0..phnum {
        let h = phoff
            .checked_add(i.checked_mul(phentsize).ok_or(short)?)
            .ok_or(short)?;
        if le_u32(elf, h).ok_or(short)? == PT_INTERP {
            return Ok(true);
        }
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn real_programs_on_this_host_are_classified() {
        // /bin/sh (dash or bash) is dynamically linked on every Debian.
        if let Ok(sh) = std::fs::read("/bin/sh") {
            assert_eq!(has_interpreter(&sh), Ok(true));
        }
        assert!(has_interpreter(b"#!/bin/sh\n").is_err());
    }

    #[test]
    fn missing_section_is_an_error() {
        let m = crate::modules::tests::fake_module(&["a=b"]);
        assert!(section(&m, ".modinfo").is_ok());
        assert_eq!(section(&m, ".text"), Err("section not found"));
    }
}
