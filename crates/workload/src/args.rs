//! Command-line parsing for `workload <name> [--flag value]...`.
//!
//! Hand-rolled on purpose: the binary is measured for startup time and
//! resident memory, and a dozen flags do not justify an argument framework.
//! Every failure is a [`UsageError`], which `main` prints as one line and
//! maps to exit status 2.

use std::net::IpAddr;
use std::str::FromStr;

/// A usage error: what was wrong and what to do, in one line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

impl UsageError {
    fn new(msg: impl Into<String>) -> Self {
        Self(msg.into())
    }
}

use crate::workload::Workload;

/// Default TCP port of the servers (api, cache).
pub const DEFAULT_PORT: u16 = crate::workload::HTTP_PORT;
/// Default bind address of the servers.
pub const DEFAULT_BIND: &str = "0.0.0.0";
/// Default working set of `cache`.
pub const DEFAULT_CACHE_MIB: u64 = 64;
/// Largest working set `cache` accepts (it is touched before ready).
pub const MAX_CACHE_MIB: u64 = 16 * 1024;
/// Default `worker` duration when neither `--duration-ms` nor `--count` is given.
pub const DEFAULT_WORKER_MS: u64 = 1000;
/// Default growth step of `hog`.
pub const DEFAULT_HOG_STEP_MIB: u64 = 4;
/// Default size at which `hog` stops by itself.
pub const DEFAULT_HOG_MAX_MIB: u64 = 512;
/// Most spinning threads `worker --threads` accepts.
pub const MAX_WORKER_THREADS: u32 = 256;
/// `hog` never grows beyond this, whatever `--max-mib` says.
pub const HOG_HARD_CAP_MIB: u64 = 2048;
/// Default number of children `forkloop` stops at.
pub const DEFAULT_FORK_MAX: u64 = 1024;
/// `forkloop` never forks more than this, whatever `--max` says.
pub const FORK_HARD_CAP: u64 = 4096;

/// Where a server listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listen {
    /// Address to bind (`--bind`).
    pub bind: IpAddr,
    /// Port (`--port`); 0 picks a free one, reported on stderr.
    pub port: u16,
}

/// How long `worker` runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkerLimit {
    /// Run for this many milliseconds.
    DurationMs(u64),
    /// Run exactly this many operations.
    Count(u64),
}

/// A fully parsed command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// Signal ready and exit 0.
    Noop,
    /// HTTP JSON API.
    Api { listen: Listen },
    /// CPU-bound hashing, on `threads` threads (each its own chain; the
    /// limit applies to each).
    Worker { limit: WorkerLimit, threads: u32 },
    /// Touched working set plus a key/value HTTP store.
    Cache { mib: u64, listen: Listen },
    /// Memory growth until killed or capped.
    Hog { step_mib: u64, max_mib: u64 },
    /// Forks sleeping children until refused or capped.
    Forkloop { max: u64 },
    /// Prints observed facts about its surroundings.
    Probe,
    /// Tries kernel settings; writes only with `change`.
    Knob { change: bool },
}

impl Mode {
    /// The workload's name, as in its result line.
    pub fn name(&self) -> &'static str {
        self.workload().name()
    }

    /// Which workload this is.
    pub fn workload(&self) -> Workload {
        match self {
            Mode::Noop => Workload::Noop,
            Mode::Api { .. } => Workload::Api,
            Mode::Worker { .. } => Workload::Worker,
            Mode::Cache { .. } => Workload::Cache,
            Mode::Hog { .. } => Workload::Hog,
            Mode::Forkloop { .. } => Workload::Forkloop,
            Mode::Probe => Workload::Probe,
            Mode::Knob { .. } => Workload::Knob,
        }
    }
}

/// The flags after the workload name, as `(flag, value)` pairs.
struct Flags {
    workload: Workload,
    pairs: Vec<(String, String)>,
}

impl Flags {
    fn split(workload: Workload, rest: &[String]) -> Result<Self, UsageError> {
        let mut pairs = Vec::new();
        let mut it = rest.iter();
        while let Some(arg) = it.next() {
            let Some(flag) = arg.strip_prefix("--") else {
                return Err(UsageError::new(format!(
                    "workload {workload}: unexpected argument {arg:?}; flags look like --name VALUE"
                )));
            };
            let (name, value) = match flag.split_once('=') {
                Some((n, v)) => (n.to_owned(), v.to_owned()),
                None => {
                    let value = it.next().ok_or_else(|| {
                        UsageError::new(format!("workload {workload}: --{flag} needs a value"))
                    })?;
                    (flag.to_owned(), value.clone())
                }
            };
            pairs.push((name, value));
        }
        Ok(Self { workload, pairs })
    }

    /// Takes the last value given for `name`, parsed.
    fn take<T: FromStr>(&mut self, name: &str, what: &str) -> Result<Option<T>, UsageError> {
        let mut found = None;
        self.pairs.retain(|(n, v)| {
            if n == name {
                found = Some(v.clone());
                false
            } else {
                true
            }
        });
        match found {
            None => Ok(None),
            Some(v) => v.trim().parse::<T>().map(Some).map_err(|_| {
                UsageError::new(format!(
                    "workload {}: --{name} {v:?} is not {what}",
                    self.workload
                ))
            }),
        }
    }

    /// Fails on any flag nobody took.
    fn finish(self, known: &str) -> Result<(), UsageError> {
        match self.pairs.first() {
            None => Ok(()),
            Some((n, _)) => Err(UsageError::new(format!(
                "workload {}: unknown flag --{n}; it accepts {known}",
                self.workload
            ))),
        }
    }

    fn listen(&mut self) -> Result<Listen, UsageError> {
        Ok(Listen {
            port: self
                .take("port", "a TCP port (0-65535)")?
                .unwrap_or(DEFAULT_PORT),
            bind: self
                .take("bind", "an IP address")?
                .unwrap_or_else(|| DEFAULT_BIND.parse().expect("valid default bind address")),
        })
    }
}

/// `knob [--change]`: a flag without a value, unlike every other workload's.
fn knob_mode(rest: &[String]) -> Result<Mode, UsageError> {
    match rest {
        [] => Ok(Mode::Knob { change: false }),
        [flag] if flag == "--change" => Ok(Mode::Knob { change: true }),
        _ => Err(UsageError::new(format!(
            "workload knob: unexpected arguments {rest:?}; it accepts only --change"
        ))),
    }
}

/// Parses `argv` without the program name: `<workload> [flags]`.
pub fn parse(args: &[String]) -> Result<Mode, UsageError> {
    let Some(first) = args.first() else {
        return Err(UsageError::new(format!(
            "workload: missing workload name; usage: workload <{}> [flags]",
            Workload::names().replace(", ", "|")
        )));
    };
    let name: Workload = first
        .parse()
        .map_err(|e| UsageError::new(format!("workload: {e}")))?;
    if name == Workload::Knob {
        return knob_mode(&args[1..]);
    }
    let mut f = Flags::split(name, &args[1..])?;
    let cmd = match name {
        Workload::Noop => {
            f.finish("no flags")?;
            Mode::Noop
        }
        Workload::Probe => {
            f.finish("no flags")?;
            Mode::Probe
        }
        Workload::Api => {
            let listen = f.listen()?;
            f.finish("--port, --bind")?;
            Mode::Api { listen }
        }
        Workload::Cache => {
            let mib = f
                .take::<u64>("mib", "a size in MiB (a whole number)")?
                .unwrap_or(DEFAULT_CACHE_MIB);
            if mib > MAX_CACHE_MIB {
                return Err(UsageError::new(format!(
                    "workload cache: --mib {mib} is above the limit of {MAX_CACHE_MIB} MiB"
                )));
            }
            let listen = f.listen()?;
            f.finish("--mib, --port, --bind")?;
            Mode::Cache { mib, listen }
        }
        Workload::Worker => {
            let dur = f.take::<u64>("duration-ms", "a duration in milliseconds")?;
            let count = f.take::<u64>("count", "a number of operations")?;
            let threads = f
                .take::<u32>("threads", "a number of threads")?
                .unwrap_or(1);
            f.finish("--duration-ms or --count, --threads")?;
            if threads == 0 || threads > MAX_WORKER_THREADS {
                return Err(UsageError::new(format!(
                    "workload worker: --threads {threads} is outside 1..={MAX_WORKER_THREADS}"
                )));
            }
            let limit = match (dur, count) {
                (Some(_), Some(_)) => {
                    return Err(UsageError::new(
                        "workload worker: give either --duration-ms or --count, not both",
                    ))
                }
                (Some(ms), None) => WorkerLimit::DurationMs(ms),
                (None, Some(n)) => WorkerLimit::Count(n),
                (None, None) => WorkerLimit::DurationMs(DEFAULT_WORKER_MS),
            };
            Mode::Worker { limit, threads }
        }
        Workload::Hog => {
            let step_mib = f
                .take::<u64>("step-mib", "a size in MiB (a whole number)")?
                .unwrap_or(DEFAULT_HOG_STEP_MIB);
            let max_mib = f
                .take::<u64>("max-mib", "a size in MiB (a whole number)")?
                .unwrap_or(DEFAULT_HOG_MAX_MIB);
            f.finish("--step-mib, --max-mib")?;
            if step_mib == 0 {
                return Err(UsageError::new(
                    "workload hog: --step-mib must be at least 1",
                ));
            }
            if max_mib > HOG_HARD_CAP_MIB {
                return Err(UsageError::new(format!(
                    "workload hog: --max-mib {max_mib} is above the hard safety cap of {HOG_HARD_CAP_MIB} MiB; use a cgroup limit to see it killed earlier"
                )));
            }
            Mode::Hog { step_mib, max_mib }
        }
        Workload::Forkloop => {
            let max = f
                .take::<u64>("max", "a number of children")?
                .unwrap_or(DEFAULT_FORK_MAX);
            f.finish("--max")?;
            if max > FORK_HARD_CAP {
                return Err(UsageError::new(format!(
                    "workload forkloop: --max {max} is above the hard safety cap of {FORK_HARD_CAP}; use a pids cgroup limit to see fork refused earlier"
                )));
            }
            Mode::Forkloop { max }
        }
        Workload::Knob => return knob_mode(&args[1..]),
    };
    Ok(cmd)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Result<Mode, UsageError> {
        let v: Vec<String> = s.split_whitespace().map(str::to_owned).collect();
        parse(&v)
    }

    #[test]
    fn defaults() {
        assert_eq!(p("noop").unwrap(), Mode::Noop);
        assert_eq!(
            p("api").unwrap(),
            Mode::Api {
                listen: Listen {
                    bind: "0.0.0.0".parse().unwrap(),
                    port: 8080
                }
            }
        );
        assert_eq!(
            p("hog").unwrap(),
            Mode::Hog {
                step_mib: 4,
                max_mib: 512
            }
        );
        assert_eq!(p("forkloop").unwrap(), Mode::Forkloop { max: 1024 });
        assert_eq!(
            p("worker").unwrap(),
            Mode::Worker {
                limit: WorkerLimit::DurationMs(1000),
                threads: 1
            }
        );
    }

    #[test]
    fn flags_with_space_and_equals() {
        assert_eq!(
            p("cache --mib 16 --port=0 --bind 127.0.0.1").unwrap(),
            Mode::Cache {
                mib: 16,
                listen: Listen {
                    bind: "127.0.0.1".parse().unwrap(),
                    port: 0
                }
            }
        );
        assert_eq!(
            p("worker --count 10").unwrap(),
            Mode::Worker {
                limit: WorkerLimit::Count(10),
                threads: 1
            }
        );
        assert_eq!(
            p("worker --count 10 --threads 3").unwrap(),
            Mode::Worker {
                limit: WorkerLimit::Count(10),
                threads: 3
            }
        );
        assert!(p("worker --threads 0").is_err());
    }

    #[test]
    fn rejects_bad_input_with_a_named_reason() {
        assert!(p("").unwrap_err().0.contains("missing workload"));
        assert!(p("nope").unwrap_err().0.contains("unknown workload 'nope'"));
        assert_eq!(p("knob --change").unwrap(), Mode::Knob { change: true });
        assert!(p("knob --chnage").unwrap_err().0.contains("only --change"));
        assert!(p("cache --mib 12x")
            .unwrap_err()
            .0
            .contains("--mib \"12x\""));
        assert!(p("api --port 70000").unwrap_err().0.contains("--port"));
        assert!(p("api --colour red")
            .unwrap_err()
            .0
            .contains("unknown flag --colour"));
        assert!(p("api --port").unwrap_err().0.contains("needs a value"));
        assert!(p("hog --max-mib 4096")
            .unwrap_err()
            .0
            .contains("hard safety cap"));
        assert!(p("hog --step-mib 0").is_err());
        assert!(p("forkloop --max 100000")
            .unwrap_err()
            .0
            .contains("hard safety cap"));
        assert!(p("worker --count 1 --duration-ms 1").is_err());
        assert!(p("noop extra")
            .unwrap_err()
            .0
            .contains("unexpected argument"));
    }
}
