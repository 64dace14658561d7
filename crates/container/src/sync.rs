//! The wire format between the launcher and the container's init: fixed
//! 8-byte messages (no allocation on the child side).
//!
//! - launcher -> init over the SOCK_SEQPACKET socketpair: `GO` once the child
//!   is in its cgroup (and has its id maps and network); `N` with the
//!   network namespace the launcher made concurrently (`SCM_RIGHTS`);
//! - init/workload -> launcher over the same socket: a failure
//!   (`F`, step, errno); end-of-file means the workload was exec'd (the
//!   socket is close-on-exec and init closes its end after forking);
//! - init -> launcher over the status pipe: the workload's end (`X`, kind, value).

use crate::error::ChildStep;

pub(crate) const MSG_LEN: usize = 8;
pub(crate) const GO: u8 = b'G';
/// launcher -> child: one byte with a network namespace fd (`SCM_RIGHTS`).
pub(crate) const NETNS: u8 = b'N';

const FAILURE: u8 = b'F';
const STATUS: u8 = b'X';

pub(crate) fn failure(step: ChildStep, errno: nix::Error) -> [u8; MSG_LEN] {
    let e = (errno as i32).to_le_bytes();
    [FAILURE, step as u8, 0, 0, e[0], e[1], e[2], e[3]]
}

pub(crate) fn parse_failure(msg: &[u8]) -> Option<(ChildStep, nix::Error)> {
    if msg.len() != MSG_LEN || msg[0] != FAILURE {
        return None;
    }
    let step = ChildStep::from_u8(msg[1])?;
    let errno = i32::from_le_bytes([msg[4], msg[5], msg[6], msg[7]]);
    Some((step, nix::Error::from_raw(errno)))
}

/// How the workload ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase", tag = "kind", content = "value")]
pub enum ExitStatus {
    /// It called exit with this code.
    Exited(i32),
    /// It was killed by this signal.
    Signaled(i32),
}

impl ExitStatus {
    /// Shell convention: the code, or 128+N for signal N.
    pub fn code(self) -> i32 {
        match self {
            Self::Exited(c) => c,
            Self::Signaled(s) => 128 + s,
        }
    }
}

impl std::fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Exited(c) => write!(f, "exited with code {c}"),
            Self::Signaled(s) => match nix::sys::signal::Signal::try_from(*s) {
                Ok(sig) => write!(f, "killed by {}", sig.as_str()),
                Err(_) => write!(f, "killed by signal {s}"),
            },
        }
    }
}

pub(crate) fn status(s: ExitStatus) -> [u8; MSG_LEN] {
    let (kind, v) = match s {
        ExitStatus::Exited(c) => (0u8, c),
        ExitStatus::Signaled(n) => (1u8, n),
    };
    let v = v.to_le_bytes();
    [STATUS, kind, 0, 0, v[0], v[1], v[2], v[3]]
}

pub(crate) fn parse_status(msg: &[u8]) -> Option<ExitStatus> {
    if msg.len() != MSG_LEN || msg[0] != STATUS {
        return None;
    }
    let v = i32::from_le_bytes([msg[4], msg[5], msg[6], msg[7]]);
    match msg[1] {
        0 => Some(ExitStatus::Exited(v)),
        1 => Some(ExitStatus::Signaled(v)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_and_statuses_round_trip() {
        let m = failure(ChildStep::Exec, nix::Error::ENOENT);
        assert_eq!(
            parse_failure(&m),
            Some((ChildStep::Exec, nix::Error::ENOENT))
        );
        assert_eq!(parse_status(&m), None);
        for s in [
            ExitStatus::Exited(0),
            ExitStatus::Exited(3),
            ExitStatus::Signaled(9),
        ] {
            assert_eq!(parse_status(&status(s)), Some(s));
        }
        assert_eq!(parse_failure(&[b'F', 1, 0]), None);
    }

    #[test]
    fn exit_codes_follow_the_shell() {
        assert_eq!(ExitStatus::Signaled(9).code(), 137);
        assert_eq!(ExitStatus::Exited(2).code(), 2);
        assert_eq!(ExitStatus::Signaled(9).to_string(), "killed by SIGKILL");
    }
}
