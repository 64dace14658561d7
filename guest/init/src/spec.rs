//! The guest spec: what to run when the root is an image's disk
//! (docs/contracts.md, "Guest spec"). It arrives as `/isolab/spec` in a
//! second cpio archive appended to the initramfs, because an image's
//! command and environment do not fit the 2048-byte kernel command line
//! (nor survive its lack of quoting).
//!
//! Format: the line `isolab-spec 1\n`, then records `KEY=VALUE\0`. Keys:
//! `arg` (repeated, at least one), `env` (repeated, `NAME=VALUE`), `cwd`,
//! `uid`, `gid`, `group` (repeated), `ready` (`1`: pass `ISOLAB_READY_FD`).
//! The writer is `isolab_image::GuestSpec::encode`; both sides test the
//! same golden bytes.

use std::fmt;

/// Where the spec is in the initramfs.
pub const SPEC_PATH: &str = "/isolab/spec";
const MAGIC: &[u8] = b"isolab-spec 1\n";
/// Larger specs are refused (the writer refuses them too).
pub const MAX_SPEC_BYTES: u64 = 1 << 20;

/// What the spec asks init to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spec {
    pub args: Vec<String>,
    /// `NAME=VALUE`, in order.
    pub env: Vec<String>,
    pub cwd: String,
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
    pub ready_fd: bool,
}

/// A spec file that does not parse.
#[derive(Debug, PartialEq, Eq)]
pub struct SpecError(pub String);

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for SpecError {}

/// Parses the spec file's bytes.
pub fn parse(bytes: &[u8]) -> Result<Spec, SpecError> {
    let bad = |m: String| SpecError(m);
    let body = bytes
        .strip_prefix(MAGIC)
        .ok_or_else(|| bad("missing the 'isolab-spec 1' line".into()))?;
    let body = body
        .strip_suffix(&[0])
        .ok_or_else(|| bad("last record is not NUL-terminated".into()))?;
    let mut s = Spec {
        args: Vec::new(),
        env: Vec::new(),
        cwd: "/".into(),
        uid: 0,
        gid: 0,
        groups: Vec::new(),
        ready_fd: false,
    };
    for rec in body.split(|&b| b == 0) {
        let rec = std::str::from_utf8(rec).map_err(|_| bad("a record is not UTF-8".into()))?;
        let (k, v) = rec
            .split_once('=')
            .ok_or_else(|| bad(format!("record {rec:?} has no '='")))?;
        let num = |v: &str| {
            v.parse::<u32>()
                .map_err(|_| bad(format!("{k}={v:?} is not a number")))
        };
        match k {
            "arg" => s.args.push(v.into()),
            "env" => s.env.push(v.into()),
            "cwd" => s.cwd = v.into(),
            "uid" => s.uid = num(v)?,
            "gid" => s.gid = num(v)?,
            "group" => s.groups.push(num(v)?),
            "ready" => s.ready_fd = v == "1",
            _ => return Err(bad(format!("unknown key {k:?}"))),
        }
    }
    if s.args.first().is_none_or(|a| a.is_empty()) {
        return Err(bad("no command (no arg= record)".into()));
    }
    if !s.cwd.starts_with('/') {
        return Err(bad(format!("cwd {:?} is not absolute", s.cwd)));
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The same bytes `isolab_image::guest_spec` encodes in its test.
    const GOLDEN: &[u8] = b"isolab-spec 1\narg=/bin/httpd\0arg=-f\0arg=a b\0env=PATH=/bin\0env=X=1=2\0cwd=/www\0uid=33\0gid=33\0group=4\0group=5\0ready=1\0";

    #[test]
    fn parses_the_golden_spec() {
        let s = parse(GOLDEN).unwrap();
        assert_eq!(s.args, ["/bin/httpd", "-f", "a b"]);
        assert_eq!(s.env, ["PATH=/bin", "X=1=2"]);
        assert_eq!((s.cwd.as_str(), s.uid, s.gid), ("/www", 33, 33));
        assert_eq!(s.groups, [4, 5]);
        assert!(s.ready_fd);
    }

    #[test]
    fn bad_specs_say_why() {
        for (bytes, why) in [
            (&b"isolab-spec 2\narg=x\0"[..], "isolab-spec 1"),
            (b"isolab-spec 1\narg=x", "NUL"),
            (b"isolab-spec 1\nuid=x\0arg=a\0", "not a number"),
            (b"isolab-spec 1\nenv=A=1\0", "no command"),
            (b"isolab-spec 1\narg=a\0nope=1\0", "unknown key"),
            (b"isolab-spec 1\narg=a\0cwd=rel\0", "not absolute"),
        ] {
            let e = parse(bytes).unwrap_err();
            assert!(e.to_string().contains(why), "{e} should mention {why}");
        }
    }
}
