//! The noisy neighbour: its kind, what was observed about it, and its fate
//! as one typed outcome.
//!
//! Observations come from the neighbour's cgroup (`cpu.stat`,
//! `memory.events` / `memory.oom_control`, `pids.events`; v1 and v2 use the
//! same keys for what is read here, except v1's throttled time in ns), from
//! its exit, from the guest's console for a microVM (guest OOM), and from
//! the harness's own caps for the plain process. The parsers are pure.

use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// What the neighbour does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NeighbourKind {
    /// Spinners on every CPU it can see.
    Cpu,
    /// Allocates and touches memory until a limit stops it.
    Memory,
    /// A fork storm.
    Fork,
}

impl NeighbourKind {
    pub const ALL: [NeighbourKind; 3] = [Self::Cpu, Self::Memory, Self::Fork];

    pub fn name(self) -> &'static str {
        match self {
            Self::Cpu => "cpu",
            Self::Memory => "memory",
            Self::Fork => "fork",
        }
    }
}

impl std::fmt::Display for NeighbourKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// An unknown neighbour kind (a usage error: exit 2).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("Unknown neighbour kind {given:?}: choose one of cpu, memory, fork")]
pub struct UnknownNeighbour {
    pub given: String,
}

impl FromStr for NeighbourKind {
    type Err = UnknownNeighbour;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| UnknownNeighbour {
                given: s.to_owned(),
            })
    }
}

/// How the neighbour process ended, if it did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NeighbourExit {
    Code(i32),
    Signal(i32),
}

/// What was observed about the neighbour during the tenant's run.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NeighbourObservation {
    /// CFS periods in which its cgroup was throttled.
    pub throttled_periods: Option<u64>,
    /// Total throttled time, microseconds.
    pub throttled_us: Option<u64>,
    /// OOM kills in its cgroup.
    pub oom_kills: Option<u64>,
    /// Forks refused at its cgroup's pids.max.
    pub forks_refused: Option<u64>,
    /// The guest kernel's OOM killer acted (microVM neighbour).
    pub guest_oom: Option<bool>,
    /// The harness's own safety cap stopped it (plain process: a fraction
    /// of MemAvailable, a process-count ceiling).
    pub capped_by_harness: bool,
    pub exit: Option<NeighbourExit>,
}

/// The neighbour's fate, in one word per case.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "fate")]
pub enum NeighbourFate {
    /// Its CPU limit held it back.
    Throttled { periods: u64 },
    /// Its memory limit killed it inside its cgroup.
    OomKilled { kills: u64 },
    /// Its pids limit refused its forks.
    ForksRefused { refused: u64 },
    /// The guest kernel killed it inside the VM.
    GuestOom,
    /// No limit of the mode acted; the harness's safety cap stopped it.
    CappedByHarness,
    /// Nothing stopped or slowed it that we could see.
    Unchecked,
}

impl NeighbourFate {
    /// Classifies what was observed for a neighbour of `kind`: the limit
    /// that matches the kind wins, then any other limit seen acting.
    pub fn of(kind: NeighbourKind, o: &NeighbourObservation) -> Self {
        let throttled = o
            .throttled_periods
            .filter(|&n| n > 0)
            .map(|periods| Self::Throttled { periods });
        let oom = o
            .oom_kills
            .filter(|&n| n > 0)
            .map(|kills| Self::OomKilled { kills });
        let forks = o
            .forks_refused
            .filter(|&n| n > 0)
            .map(|refused| Self::ForksRefused { refused });
        let guest = (o.guest_oom == Some(true)).then_some(Self::GuestOom);
        let order = match kind {
            NeighbourKind::Cpu => [throttled, oom, guest, forks],
            NeighbourKind::Memory => [oom, guest, throttled, forks],
            NeighbourKind::Fork => [forks, guest, oom, throttled],
        };
        order
            .into_iter()
            .flatten()
            .next()
            .unwrap_or(if o.capped_by_harness {
                Self::CappedByHarness
            } else {
                Self::Unchecked
            })
    }
}

fn key(text: &str, name: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let mut w = l.split_whitespace();
        (w.next()? == name).then(|| w.next()?.parse().ok())?
    })
}

/// `nr_throttled` and throttled time (µs) from `cpu.stat` (v2:
/// `throttled_usec`; v1: `throttled_time` in ns).
pub fn parse_cpu_stat(text: &str) -> (Option<u64>, Option<u64>) {
    let us =
        key(text, "throttled_usec").or_else(|| key(text, "throttled_time").map(|ns| ns / 1000));
    (key(text, "nr_throttled"), us)
}

/// `oom_kill` from v2 `memory.events` or v1 `memory.oom_control`.
pub fn parse_oom_kills(text: &str) -> Option<u64> {
    key(text, "oom_kill")
}

/// `max` (forks refused at pids.max) from `pids.events` (v1 and v2).
pub fn parse_forks_refused(text: &str) -> Option<u64> {
    key(text, "max")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_parse_and_an_unknown_one_is_a_one_line_usage_error() {
        assert_eq!("cpu".parse::<NeighbourKind>().unwrap(), NeighbourKind::Cpu);
        assert_eq!("fork".parse::<NeighbourKind>().unwrap().to_string(), "fork");
        let e = "disk".parse::<NeighbourKind>().unwrap_err();
        assert_eq!(
            e.to_string(),
            "Unknown neighbour kind \"disk\": choose one of cpu, memory, fork"
        );
    }

    #[test]
    fn cgroup_files_of_both_versions_parse() {
        let v2 = "usage_usec 100\nnr_periods 50\nnr_throttled 12\nthrottled_usec 3400\n";
        assert_eq!(parse_cpu_stat(v2), (Some(12), Some(3400)));
        let v1 = "nr_periods 50\nnr_throttled 7\nthrottled_time 5000000\n";
        assert_eq!(parse_cpu_stat(v1), (Some(7), Some(5000)));
        assert_eq!(
            parse_oom_kills("low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n"),
            Some(1)
        );
        assert_eq!(
            parse_oom_kills("oom_kill_disable 0\nunder_oom 0\noom_kill 2\n"),
            Some(2)
        );
        assert_eq!(parse_forks_refused("max 31\n"), Some(31));
        assert_eq!(parse_forks_refused(""), None);
    }

    #[test]
    fn the_limit_matching_the_kind_decides_the_fate() {
        let o = NeighbourObservation {
            oom_kills: Some(1),
            throttled_periods: Some(4),
            exit: Some(NeighbourExit::Signal(9)),
            ..Default::default()
        };
        assert_eq!(
            NeighbourFate::of(NeighbourKind::Memory, &o),
            NeighbourFate::OomKilled { kills: 1 }
        );
        assert_eq!(
            NeighbourFate::of(NeighbourKind::Cpu, &o),
            NeighbourFate::Throttled { periods: 4 }
        );
        let f = NeighbourObservation {
            forks_refused: Some(900),
            ..Default::default()
        };
        assert_eq!(
            NeighbourFate::of(NeighbourKind::Fork, &f),
            NeighbourFate::ForksRefused { refused: 900 }
        );
        let vm = NeighbourObservation {
            guest_oom: Some(true),
            oom_kills: Some(0),
            ..Default::default()
        };
        assert_eq!(
            NeighbourFate::of(NeighbourKind::Memory, &vm),
            NeighbourFate::GuestOom
        );
        let plain = NeighbourObservation {
            capped_by_harness: true,
            throttled_periods: Some(0),
            ..Default::default()
        };
        assert_eq!(
            NeighbourFate::of(NeighbourKind::Cpu, &plain),
            NeighbourFate::CappedByHarness
        );
        assert_eq!(
            NeighbourFate::of(NeighbourKind::Cpu, &NeighbourObservation::default()),
            NeighbourFate::Unchecked
        );
        let json = serde_json::to_string(&NeighbourFate::OomKilled { kills: 2 }).unwrap();
        assert_eq!(json, r#"{"fate":"oom_killed","kills":2}"#);
    }
}
