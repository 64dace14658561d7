//! The value parsers every subcommand shares, so a value means the same
//! wherever it is typed, and bad values fail in clap with exit 2:
//!
//! - workloads: [`isolab_harness::Workload`]'s one list;
//! - sizes: [`isolab_cgroups::parse_size`], one rule everywhere — binary
//!   suffixes `K`, `M`, `G`, `T` (`64M`, `1G`, also `64MiB`), and a bare
//!   number is **bytes** (`--memory 64` is 64 bytes, never 64 MiB). Where a
//!   size is kept in whole MiB (guest RAM, the emulated host's RAM) a value
//!   that is not a whole number of MiB is refused rather than rounded;
//! - CPU amounts: [`isolab_cgroups::parse_cpus`], at most [`MAX_CPUS`];
//! - counts and durations: bounded ranges (`clap::value_parser!(..).range`)
//!   at their use sites, so nothing overflows or wraps.

use isolab_harness::Workload;

/// The most CPUs a `--cpus` limit may name.
pub const MAX_CPUS: f64 = 1024.0;
/// The most processes a `--pids` limit may allow (the kernel's PID_MAX_LIMIT).
pub const MAX_PIDS: u64 = 4 * 1024 * 1024;

/// `--workload`: a name from the one list.
pub fn workload(s: &str) -> Result<Workload, String> {
    s.parse()
        .map_err(|e: isolab_harness::UnknownWorkload| e.to_string())
}

/// A size in bytes.
pub fn size(s: &str) -> Result<u64, String> {
    isolab_cgroups::parse_size(s).map_err(|e| e.to_string())
}

/// A size in whole MiB.
pub fn mib(s: &str) -> Result<u64, String> {
    let bytes = size(s)?;
    if bytes % (1 << 20) != 0 {
        return Err(format!(
            "Invalid size '{s}': it must be a whole number of MiB (a bare number is bytes), e.g. 128M or 1G"
        ));
    }
    Ok(bytes >> 20)
}

/// A CPU amount.
pub fn cpus(s: &str) -> Result<f64, String> {
    let v = isolab_cgroups::parse_cpus(s).map_err(|e| e.to_string())?;
    if v > MAX_CPUS {
        return Err(format!("Invalid CPU amount '{s}': at most {MAX_CPUS} CPUs"));
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bare_number_is_bytes_everywhere() {
        assert_eq!(size("64"), Ok(64));
        assert_eq!(size("64M"), Ok(64 << 20));
        assert_eq!(mib("128M"), Ok(128));
        assert_eq!(mib("1G"), Ok(1024));
        let e = mib("128").unwrap_err();
        assert!(
            e.contains("'128'") && e.contains("bare number is bytes"),
            "{e}"
        );
        assert!(mib("1500K").is_err());
        assert!(size("4X").unwrap_err().contains("'4X'"));
    }

    #[test]
    fn cpus_and_workloads_are_bounded_and_named() {
        assert_eq!(cpus("0.5"), Ok(0.5));
        assert!(cpus("1e9").unwrap_err().contains("at most 1024"));
        assert!(cpus("0").is_err());
        assert_eq!(workload("api"), Ok(Workload::Api));
        assert!(workload("nope")
            .unwrap_err()
            .contains("unknown workload 'nope'"));
    }
}
