//! Reading fields of `/proc/<pid>/status` (resident size, capabilities,
//! NoNewPrivs, Seccomp). Parsing is separate from reading so it is
//! unit-tested on literal text.

use std::path::Path;

/// The value of `field` in status text (`Name:\tvalue`), trimmed.
pub fn field<'a>(status: &'a str, field: &str) -> Option<&'a str> {
    status.lines().find_map(|line| {
        let (k, v) = line.split_once(':')?;
        (k == field).then(|| v.trim())
    })
}

/// A `kB` field (`VmRSS:   1234 kB`) in KiB.
pub fn kib(status: &str, name: &str) -> Option<u64> {
    field(status, name)?.split_whitespace().next()?.parse().ok()
}

/// The status text of this process under `proc_root` (normally `/proc`).
pub fn read_self(proc_root: &Path) -> std::io::Result<String> {
    std::fs::read_to_string(proc_root.join("self/status"))
}

/// This process's resident set size in KiB, if `/proc` says.
pub fn self_rss_kib() -> Option<u64> {
    kib(&read_self(Path::new("/proc")).ok()?, "VmRSS")
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "Name:\tworkload\nVmRSS:\t    2048 kB\nCapEff:\t000001ffffffffff\nNoNewPrivs:\t0\nSeccomp:\t2\n";

    #[test]
    fn reads_fields() {
        assert_eq!(kib(SAMPLE, "VmRSS"), Some(2048));
        assert_eq!(field(SAMPLE, "CapEff"), Some("000001ffffffffff"));
        assert_eq!(field(SAMPLE, "Seccomp"), Some("2"));
        assert_eq!(field(SAMPLE, "VmSwap"), None);
    }
}
