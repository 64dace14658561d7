//! Parsers for the amounts users type: memory sizes (`64M`), CPU amounts
//! (`0.5`) and CPU lists (`0-2,4`). The CLI and the harness share them.

use std::collections::BTreeSet;
use std::fmt;

/// Why a user-typed amount was refused. The message names the value and
/// says what would be accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnitError {
    #[error("Invalid size '{0}': use a number with an optional K, M or G suffix (binary units), e.g. 64M")]
    Size(String),
    #[error("Invalid size '{0}': a memory limit must be greater than zero")]
    ZeroSize(String),
    #[error("Invalid CPU amount '{0}': use a positive number of CPUs, e.g. 0.5 or 2")]
    Cpus(String),
    #[error(
        "Invalid CPU amount '{0}': it must be at least 0.01 CPU (a 1 ms quota per 100 ms period)"
    )]
    CpusTooSmall(String),
    #[error("Invalid CPU list '{0}': use CPU numbers and ranges, e.g. 0 or 0-1,3")]
    CpuList(String),
}

/// Parses a size in bytes: `4096`, `512K`, `64M`, `1G` (also `64MiB`, `64m`).
/// Zero is refused: a zero memory limit would only kill the workload.
pub fn parse_size(text: &str) -> Result<u64, UnitError> {
    let t = text.trim();
    let digits_end = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, suffix) = t.split_at(digits_end);
    if num.is_empty() {
        return Err(UnitError::Size(text.into()));
    }
    let n: u64 = num.parse().map_err(|_| UnitError::Size(text.into()))?;
    let shift = match suffix.to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        _ => return Err(UnitError::Size(text.into())),
    };
    let bytes = n
        .checked_mul(1u64 << shift)
        .ok_or_else(|| UnitError::Size(text.into()))?;
    if bytes == 0 {
        return Err(UnitError::ZeroSize(text.into()));
    }
    Ok(bytes)
}

/// Parses a CPU amount: a positive, finite number of CPUs, at least 0.01.
pub fn parse_cpus(text: &str) -> Result<f64, UnitError> {
    let v: f64 = text
        .trim()
        .parse()
        .map_err(|_| UnitError::Cpus(text.into()))?;
    if !v.is_finite() || v <= 0.0 {
        return Err(UnitError::Cpus(text.into()));
    }
    if quota_us(v, crate::CPU_PERIOD_US) < 1000 {
        return Err(UnitError::CpusTooSmall(text.into()));
    }
    Ok(v)
}

/// CFS quota in microseconds for `cpus` CPUs per `period_us`.
pub fn quota_us(cpus: f64, period_us: u64) -> u64 {
    (cpus * period_us as f64).round() as u64
}

/// A set of CPU numbers, written in the kernel's list format.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct CpuSet(BTreeSet<u32>);

impl CpuSet {
    /// Parses the kernel list format (`0-2,4`).
    pub fn parse(text: &str) -> Result<Self, UnitError> {
        let err = || UnitError::CpuList(text.into());
        let mut set = BTreeSet::new();
        for part in text.trim().split(',') {
            let part = part.trim();
            let (a, b) = match part.split_once('-') {
                Some((a, b)) => (a, b),
                None => (part, part),
            };
            let a: u32 = a.trim().parse().map_err(|_| err())?;
            let b: u32 = b.trim().parse().map_err(|_| err())?;
            if a > b || b - a > 4096 {
                return Err(err());
            }
            set.extend(a..=b);
        }
        if set.is_empty() {
            return Err(err());
        }
        Ok(Self(set))
    }

    /// The host's online CPUs, from `<sys_root>/devices/system/cpu/online`.
    pub fn online(sys_root: &std::path::Path) -> Option<Self> {
        let text = std::fs::read_to_string(sys_root.join("devices/system/cpu/online")).ok()?;
        Self::parse(text.trim()).ok()
    }

    /// Whether every CPU of `self` is in `other`.
    pub fn is_subset(&self, other: &CpuSet) -> bool {
        self.0.is_subset(&other.0)
    }

    pub fn cpus(&self) -> impl Iterator<Item = u32> + '_ {
        self.0.iter().copied()
    }

    /// Number of CPUs in the set.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Display for CpuSet {
    /// Kernel list format with ranges collapsed: `0-2,4`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        let mut iter = self.0.iter().copied().peekable();
        while let Some(start) = iter.next() {
            let mut end = start;
            while iter.peek() == Some(&(end + 1)) {
                end = iter.next().unwrap_or(end);
            }
            if !first {
                f.write_str(",")?;
            }
            first = false;
            if start == end {
                write!(f, "{start}")?;
            } else {
                write!(f, "{start}-{end}")?;
            }
        }
        Ok(())
    }
}

impl TryFrom<String> for CpuSet {
    type Error = UnitError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s)
    }
}

impl From<CpuSet> for String {
    fn from(c: CpuSet) -> String {
        c.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_use_binary_suffixes() {
        assert_eq!(parse_size("64M"), Ok(64 << 20));
        assert_eq!(parse_size("64MiB"), Ok(64 << 20));
        assert_eq!(parse_size("512k"), Ok(512 << 10));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert_eq!(parse_size("4096"), Ok(4096));
    }

    #[test]
    fn bad_sizes_name_the_value() {
        for bad in ["64X", "", "M", "-1M", "1.5G", "99999999999999999999"] {
            let e = parse_size(bad).unwrap_err();
            assert!(e.to_string().contains(&format!("'{bad}'")), "{e}");
        }
        assert_eq!(parse_size("0"), Err(UnitError::ZeroSize("0".into())));
        assert_eq!(parse_size("0M"), Err(UnitError::ZeroSize("0M".into())));
    }

    #[test]
    fn cpus_must_be_positive_and_at_least_one_ms_per_period() {
        assert_eq!(parse_cpus("0.5"), Ok(0.5));
        assert_eq!(parse_cpus("2"), Ok(2.0));
        assert_eq!(quota_us(0.2, 100_000), 20_000);
        assert_eq!(quota_us(1.5, 100_000), 150_000);
        for bad in ["0", "-1", "-0.5", "abc", "NaN", "inf", ""] {
            assert!(matches!(parse_cpus(bad), Err(UnitError::Cpus(_))), "{bad}");
        }
        assert!(matches!(
            parse_cpus("0.001"),
            Err(UnitError::CpusTooSmall(_))
        ));
    }

    #[test]
    fn online_cpus_come_from_sysfs() {
        let sys = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(sys.path().join("devices/system/cpu")).unwrap();
        std::fs::write(sys.path().join("devices/system/cpu/online"), "0-3,6\n").unwrap();
        assert_eq!(CpuSet::online(sys.path()).unwrap().to_string(), "0-3,6");
        assert!(CpuSet::online(std::path::Path::new("/nonexistent")).is_none());
    }

    #[test]
    fn cpu_lists_round_trip_in_kernel_format() {
        let s = CpuSet::parse("0-2,4").unwrap();
        assert_eq!(s.cpus().collect::<Vec<_>>(), vec![0, 1, 2, 4]);
        assert_eq!(s.to_string(), "0-2,4");
        assert_eq!(CpuSet::parse("3,1,2").unwrap().to_string(), "1-3");
        assert!(CpuSet::parse("0")
            .unwrap()
            .is_subset(&CpuSet::parse("0-1").unwrap()));
        assert!(!CpuSet::parse("7")
            .unwrap()
            .is_subset(&CpuSet::parse("0-1").unwrap()));
        for bad in ["", "a", "2-1", "0,,1", "-1"] {
            assert!(CpuSet::parse(bad).is_err(), "{bad}");
        }
    }
}
