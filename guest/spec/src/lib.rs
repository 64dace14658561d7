//! The guest spec: what the guest init runs when the root is an image's
//! disk (docs/contracts.md, "Guest spec"). One definition of the format:
//! `isolab_image` encodes it into a second cpio archive appended to the
//! initramfs, `isolab-init` decodes it from `/isolab/spec`. It travels as
//! a file because an image's command and environment do not fit the
//! 2048-byte kernel command line (nor survive its lack of quoting).
//!
//! Format: the line `isolab-spec 1\n`, then records `KEY=VALUE\0`, in
//! order. Values may hold any byte but NUL, which no argument or
//! environment entry can contain. Keys: `arg` (repeated, at least once),
//! `env` (repeated, `NAME=VALUE`), `cwd` (absolute), `uid`, `gid`,
//! `group` (repeated, supplementary gids), `ready` (`1`: hand the command
//! `ISOLAB_READY_FD` like the built-in workload).
//!
//! Std only: the guest init is a small static binary.

use std::fmt;

/// First line of a spec file.
pub const MAGIC: &[u8] = b"isolab-spec 1\n";
/// Where the guest init finds the spec (the initramfs member is this
/// path without the leading `/`).
pub const SPEC_PATH: &str = "/isolab/spec";
/// Largest spec: the writer refuses larger ones, the init reads no more.
pub const MAX_SPEC_BYTES: usize = 1 << 20;

/// What the guest init runs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GuestSpec {
    pub args: Vec<String>,
    /// `NAME=VALUE`, in order.
    pub env: Vec<String>,
    pub cwd: String,
    pub uid: u32,
    pub gid: u32,
    pub additional_gids: Vec<u32>,
    /// Hand the command an `ISOLAB_READY_FD` (images built around the
    /// workbench's own workload); off for foreign programs.
    pub ready_fd: bool,
}

/// A spec that cannot be encoded, or bytes that do not decode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FormatError {
    /// A value has a NUL byte (encode).
    Nul { key: &'static str, value: String },
    /// No command (encode).
    NoCommand,
    /// Larger than [`MAX_SPEC_BYTES`] (encode).
    TooLarge { size: usize },
    /// A spec file that does not parse (decode).
    Malformed { reason: String },
}

impl fmt::Display for FormatError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Nul { key, value } => write!(f, "{key} value {value:?} contains a NUL byte"),
            Self::NoCommand => f.write_str("The guest spec has no command"),
            Self::TooLarge { size } => write!(
                f,
                "The guest spec is {size} bytes; the guest init reads at most {MAX_SPEC_BYTES}"
            ),
            Self::Malformed { reason } => write!(f, "Invalid guest spec: {reason}"),
        }
    }
}

impl std::error::Error for FormatError {}

impl GuestSpec {
    /// The spec file's bytes.
    pub fn encode(&self) -> Result<Vec<u8>, FormatError> {
        if self.args.is_empty() {
            return Err(FormatError::NoCommand);
        }
        let mut out = MAGIC.to_vec();
        let mut put = |key: &'static str, value: &str| {
            if value.contains('\0') {
                return Err(FormatError::Nul {
                    key,
                    value: value.to_string(),
                });
            }
            out.extend_from_slice(key.as_bytes());
            out.push(b'=');
            out.extend_from_slice(value.as_bytes());
            out.push(0);
            Ok(())
        };
        for a in &self.args {
            put("arg", a)?;
        }
        for e in &self.env {
            put("env", e)?;
        }
        put("cwd", if self.cwd.is_empty() { "/" } else { &self.cwd })?;
        put("uid", &self.uid.to_string())?;
        put("gid", &self.gid.to_string())?;
        for g in &self.additional_gids {
            put("group", &g.to_string())?;
        }
        if self.ready_fd {
            put("ready", "1")?;
        }
        if out.len() > MAX_SPEC_BYTES {
            return Err(FormatError::TooLarge { size: out.len() });
        }
        Ok(out)
    }

    /// Parses a spec file's bytes; every failure is
    /// [`FormatError::Malformed`], its reason one line.
    pub fn decode(bytes: &[u8]) -> Result<GuestSpec, FormatError> {
        let bad = |reason: String| FormatError::Malformed { reason };
        if bytes.len() > MAX_SPEC_BYTES {
            return Err(bad(format!("larger than {MAX_SPEC_BYTES} bytes")));
        }
        let body = bytes
            .strip_prefix(MAGIC)
            .ok_or_else(|| bad("missing the 'isolab-spec 1' line".into()))?;
        let body = body
            .strip_suffix(&[0])
            .ok_or_else(|| bad("last record is not NUL-terminated".into()))?;
        let mut s = GuestSpec {
            cwd: "/".into(),
            ..GuestSpec::default()
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
                "group" => s.additional_gids.push(num(v)?),
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
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The documented example, byte for byte.
    const GOLDEN: &[u8] = b"isolab-spec 1\narg=/bin/httpd\0arg=-f\0arg=a b\0env=PATH=/bin\0env=X=1=2\0cwd=/www\0uid=33\0gid=33\0group=4\0group=5\0ready=1\0";

    fn spec() -> GuestSpec {
        GuestSpec {
            args: vec!["/bin/httpd".into(), "-f".into(), "a b".into()],
            env: vec!["PATH=/bin".into(), "X=1=2".into()],
            cwd: "/www".into(),
            uid: 33,
            gid: 33,
            additional_gids: vec![4, 5],
            ready_fd: true,
        }
    }

    #[test]
    fn encodes_and_decodes_the_documented_format() {
        assert_eq!(spec().encode().unwrap(), GOLDEN);
        assert_eq!(GuestSpec::decode(GOLDEN).unwrap(), spec());
    }

    #[test]
    fn unencodable_specs_are_refused() {
        let mut s = spec();
        s.args.push("a\0b".into());
        assert!(matches!(s.encode(), Err(FormatError::Nul { .. })));
        assert_eq!(GuestSpec::default().encode(), Err(FormatError::NoCommand));
        let mut big = spec();
        big.env.push("X=".to_string() + &"y".repeat(MAX_SPEC_BYTES));
        assert!(matches!(big.encode(), Err(FormatError::TooLarge { .. })));
    }

    #[test]
    fn bad_specs_say_why() {
        let big = [MAGIC, &vec![b'x'; MAX_SPEC_BYTES]].concat();
        for (bytes, why) in [
            (&b"nope"[..], "isolab-spec 1"),
            (b"isolab-spec 2\narg=x\0", "isolab-spec 1"),
            (b"isolab-spec 1\narg=x", "NUL"),
            (b"isolab-spec 1\narg=\xff\0", "UTF-8"),
            (b"isolab-spec 1\narg\0", "no '='"),
            (b"isolab-spec 1\nuid=x\0arg=a\0", "not a number"),
            (b"isolab-spec 1\nenv=A=1\0", "no command"),
            (b"isolab-spec 1\narg=\0", "no command"),
            (b"isolab-spec 1\narg=a\0nope=1\0", "unknown key"),
            (b"isolab-spec 1\narg=a\0cwd=rel\0", "not absolute"),
            (&big, "larger than"),
        ] {
            let e = GuestSpec::decode(bytes).unwrap_err();
            assert!(matches!(e, FormatError::Malformed { .. }));
            assert!(e.to_string().contains(why), "{e} should mention {why}");
        }
    }
}
