//! The seam between a demo and the ways of running it: a [`ModeRunner`]
//! runs one [`Job`] to its end and returns what was observed, or says in one
//! line why the mode cannot run here.

use serde::Serialize;
use serde_json::Value;

use isolab_cgroups::Stats;

/// The three columns of every demo.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DemoMode {
    Process,
    Container,
    Microvm,
}

impl DemoMode {
    pub const ALL: [DemoMode; 3] = [DemoMode::Process, DemoMode::Container, DemoMode::Microvm];

    pub fn name(self) -> &'static str {
        match self {
            DemoMode::Process => "process",
            DemoMode::Container => "container",
            DemoMode::Microvm => "microvm",
        }
    }

    /// Parses a mode as typed on the command line (`vm` is accepted).
    pub fn parse(s: &str) -> Option<Self> {
        match s.trim() {
            "process" => Some(DemoMode::Process),
            "container" => Some(DemoMode::Container),
            "microvm" | "vm" => Some(DemoMode::Microvm),
            _ => None,
        }
    }
}

/// What to run in one mode: the workload and its arguments, plus the limits
/// the mode applies around it (a cgroup for the container, guest RAM and
/// vCPUs for the microVM; the plain process gets none, by design).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Job {
    /// First argument of `workload` (`probe`, `hog`, ...).
    pub workload: String,
    /// Further arguments, including the workload's own safety caps.
    pub args: Vec<String>,
    /// Container: memory.max / memory.limit_in_bytes.
    pub memory_bytes: Option<u64>,
    /// Container: CPU bandwidth in CPUs.
    pub cpus: Option<f64>,
    /// Container: pids.max.
    pub pids: Option<u64>,
    /// MicroVM: guest RAM in MiB.
    pub vm_memory_mib: Option<u64>,
    /// MicroVM: vCPUs.
    pub vm_vcpus: Option<u8>,
}

impl Job {
    pub fn new(workload: &str, args: &[&str]) -> Self {
        Self {
            workload: workload.to_owned(),
            args: args.iter().map(|s| (*s).to_owned()).collect(),
            ..Self::default()
        }
    }
}

/// What one finished run observed.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RunRecord {
    /// Shell-style status: exit code, or 128+N for signal N.
    pub status: Option<i32>,
    /// The workload's JSON result line, if it printed one (a killed workload
    /// prints none).
    pub result: Option<Value>,
    /// The instance's cgroup statistics (container mode).
    pub cgroup: Option<Stats>,
    /// Peak resident memory of the host process that held the workload,
    /// KiB (process mode: the kernel's figure for the child, which also
    /// counts pages it shared with `bench` before exec; microVM: the
    /// monitor's resident memory at the end).
    pub host_peak_rss_kib: Option<u64>,
    /// CPU time the workload used (user + system), where the mode measures
    /// it: the process's rusage, the container's cgroup.
    pub cpu_time_us: Option<u64>,
    /// The last lines the workload wrote to stderr, where the mode keeps
    /// them (the hog's progress, for instance).
    pub stderr_tail: Vec<String>,
    /// A caveat printed under the column (the emulated host's label).
    pub label: Option<String>,
    /// The monitor's own report (microVM mode), as `bench vm run --json`
    /// printed it.
    pub vm_report: Option<Value>,
}

impl RunRecord {
    /// A field of the result line.
    pub fn fact(&self, key: &str) -> Option<&Value> {
        self.result.as_ref()?.get(key).filter(|v| !v.is_null())
    }

    /// The highest `hog: N MiB` progress line on stderr.
    pub fn hog_progress_mib(&self) -> Option<u64> {
        self.stderr_tail
            .iter()
            .filter_map(|l| l.strip_prefix("hog: ")?.strip_suffix(" MiB")?.parse().ok())
            .max()
    }
}

/// The outcome of one column.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "lowercase", tag = "kind")]
pub enum ModeRun {
    /// It ran; these are the observations.
    Ran(Box<RunRecord>),
    /// It could not run here; one line saying why and what to do.
    Unavailable { reason: String },
}

impl ModeRun {
    pub fn record(&self) -> Option<&RunRecord> {
        match self {
            ModeRun::Ran(r) => Some(r.as_ref()),
            ModeRun::Unavailable { .. } => None,
        }
    }
}

/// Runs jobs in one mode.
pub trait ModeRunner {
    fn mode(&self) -> DemoMode;
    /// Runs the job to its end. A mode that cannot run on this host answers
    /// [`ModeRun::Unavailable`]; `Err` is a failure of the run itself.
    fn run(&self, job: &Job) -> Result<ModeRun, super::DemoError>;
}

/// Keeps the last `n` lines of a text.
pub(crate) fn tail_lines(text: &str, n: usize) -> Vec<String> {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..]
        .iter()
        .map(|s| (*s).to_owned())
        .collect()
}

/// The last line of `stdout` that parses as a JSON object.
pub(crate) fn last_json_object(stdout: &str) -> Option<Value> {
    stdout
        .lines()
        .rev()
        .filter_map(|l| serde_json::from_str::<Value>(l.trim()).ok())
        .find(Value::is_object)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_parse_as_typed() {
        assert_eq!(DemoMode::parse("vm"), Some(DemoMode::Microvm));
        assert_eq!(DemoMode::parse(" container "), Some(DemoMode::Container));
        assert_eq!(DemoMode::parse("docker"), None);
    }

    #[test]
    fn hog_progress_is_the_highest_line() {
        let r = RunRecord {
            stderr_tail: tail_lines("hog: 4 MiB\nhog: 8 MiB\nnoise\nhog: 12 MiB\n", 3),
            ..RunRecord::default()
        };
        assert_eq!(r.hog_progress_mib(), Some(12));
    }

    #[test]
    fn result_line_is_the_last_object() {
        let v = last_json_object("{\"a\":1}\nnot json\n{\"b\":2}\n[1]\n").unwrap();
        assert_eq!(v["b"], 2);
        assert!(last_json_object("nothing here").is_none());
    }
}
