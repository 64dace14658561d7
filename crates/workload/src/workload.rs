//! The one list of workload names: what `workload <name>` accepts, what
//! `bench` offers (`--workload`), what the guest init passes on
//! (`isolab.workload=`), and which of them serve HTTP. Every other crate
//! parses names through [`Workload`]'s `FromStr` and lists them with
//! [`Workload::names`], so a new workload is added here once.

use std::fmt;
use std::str::FromStr;

/// The port the HTTP workloads (api, cache) listen on by default, on every
/// address (`0.0.0.0`).
pub const HTTP_PORT: u16 = 8080;

/// A workload of the `workload` binary, selected by its first argument.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Workload {
    /// Signals ready and exits 0.
    Noop,
    /// An HTTP JSON API.
    Api,
    /// CPU-bound hashing for a duration or a count.
    Worker,
    /// A touched working set plus a key/value HTTP store.
    Cache,
    /// Grows its memory until killed or capped.
    Hog,
    /// Forks sleeping children until refused or capped.
    Forkloop,
    /// Prints one JSON line of what it observes ([`crate::probe::ProbeReport`]).
    Probe,
    /// Tries to change kernel settings and reports what the kernel allowed.
    Knob,
}

/// A name that is not a workload; the message lists the choices.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown workload '{0}': choose one of {names}", names = Workload::names())]
pub struct UnknownWorkload(pub String);

impl Workload {
    /// Every workload, in the order help texts list them.
    pub const ALL: [Workload; 8] = [
        Workload::Noop,
        Workload::Api,
        Workload::Worker,
        Workload::Cache,
        Workload::Hog,
        Workload::Forkloop,
        Workload::Probe,
        Workload::Knob,
    ];

    /// The name on the command line and in the result line.
    pub fn name(self) -> &'static str {
        match self {
            Workload::Noop => "noop",
            Workload::Api => "api",
            Workload::Worker => "worker",
            Workload::Cache => "cache",
            Workload::Hog => "hog",
            Workload::Forkloop => "forkloop",
            Workload::Probe => "probe",
            Workload::Knob => "knob",
        }
    }

    /// Whether it answers `GET /health` on [`HTTP_PORT`] until stopped.
    pub fn serves_http(self) -> bool {
        matches!(self, Workload::Api | Workload::Cache)
    }

    /// The names of `list`, comma-separated, for help texts and errors.
    pub fn list(list: &[Workload]) -> String {
        list.iter().map(|w| w.name()).collect::<Vec<_>>().join(", ")
    }

    /// Every name, comma-separated.
    pub fn names() -> String {
        Self::list(&Self::ALL)
    }
}

impl fmt::Display for Workload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Workload {
    type Err = UnknownWorkload;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|w| w.name() == s.trim())
            .ok_or_else(|| UnknownWorkload(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknowns_list_the_choices() {
        for w in Workload::ALL {
            assert_eq!(w.name().parse::<Workload>(), Ok(w));
            assert_eq!(
                serde_json::to_value(w).unwrap(),
                serde_json::Value::from(w.name())
            );
        }
        let e = "nope".parse::<Workload>().unwrap_err();
        assert_eq!(
            e.to_string(),
            "unknown workload 'nope': choose one of noop, api, worker, cache, hog, forkloop, probe, knob"
        );
        assert!(Workload::Api.serves_http() && !Workload::Noop.serves_http());
    }
}
