//! The demos: what each one runs in each mode, the safety caps that keep
//! the host out of danger, the explanation a teacher reads out, and three
//! knowledge-check questions with the answer the demo's evidence supports.
//!
//! Safety caps: every hog and fork loop has a cap in every mode, the plain
//! process included, and a limit below it where the mode has one (cgroup,
//! guest RAM), so the limit is what the demo shows and the cap is the net.

use super::passes::Pass;
use crate::modes::{InstanceSpec, Isolation};
use crate::Workload;

/// The hostname every demo container gets, so the tables read the same on
/// every run.
pub const DEMO_HOSTNAME: &str = "isolab-demo";

/// Hog cap for the plain process: it has no limit, so the cap *is* the stop.
pub const PROCESS_HOG_MAX_MIB: u64 = 64;
/// Container memory limit in the memory demo.
pub const CONTAINER_MEMORY_MIB: u64 = 32;
/// Hog cap inside the container: far above the limit, never reached.
pub const CONTAINER_HOG_MAX_MIB: u64 = 256;
/// Guest RAM of the microVM in the memory demo.
pub const VM_MEMORY_MIB: u64 = 128;
/// Hog cap inside the guest: above guest RAM, so the guest's OOM killer acts.
pub const VM_HOG_MAX_MIB: u64 = 512;
/// Fork-loop cap for the plain process (no pids limit there).
pub const PROCESS_FORK_MAX: u64 = 64;
/// Container pids.max in the fork-bomb demo.
pub const CONTAINER_PIDS: u64 = 32;
/// Fork-loop cap inside the container and the guest.
pub const CONFINED_FORK_MAX: u64 = 256;
/// CPU limit of the container in the cpu demo (CPUs).
pub const CONTAINER_CPUS: f64 = 0.2;
/// How long the CPU spinner runs.
pub const SPIN_MS: u64 = 2000;

/// One knowledge-check question and the answer the demo supports.
#[derive(Debug, Clone, Copy)]
pub struct Question {
    pub question: &'static str,
    pub answer: &'static str,
}

/// One classroom demo.
#[derive(Debug, Clone, Copy)]
pub struct Demo {
    /// Name on the command line.
    pub name: &'static str,
    /// Other accepted names.
    pub aliases: &'static [&'static str],
    /// Heading.
    pub title: &'static str,
    /// One line for `bench demo list`.
    pub summary: &'static str,
    /// The misconception it corrects, as people say it.
    pub misconception: &'static str,
    /// What the facts show and which kernel mechanism causes them.
    pub explanation: &'static str,
    pub questions: [Question; 3],
}

const fn q(question: &'static str, answer: &'static str) -> Question {
    Question { question, answer }
}

const A_KERNEL: &str = "a container has its own kernel";
const A_SAFE: &str = "if it runs in a container it cannot hurt the host";
const A_LIMITS: &str = "resource limits are optional tuning";
const A_TINY_VM: &str = "a container is a tiny VM";

/// Every demo, in teaching order.
pub const DEMOS: &[Demo] = &[
    Demo {
        name: "kernel",
        aliases: &[],
        title: "Whose kernel answers?",
        summary: "kernel release, version, boot id and uptime seen from each mode",
        misconception: A_KERNEL,
        explanation: "uname(2), /proc/sys/kernel/random/boot_id and /proc/uptime are answered by \
            whichever kernel the program's system calls enter. The process and the container \
            report the host's release, version, boot id and uptime because there is only one \
            kernel under them: namespaces change what a process can see, not which kernel \
            serves it. The microVM's guest runs a kernel of its own, booted a moment ago, so \
            its release, boot id and uptime are different.",
        questions: [
            q("A container image is built on a \"Debian 12\" base. Which kernel runs its system calls?",
              "The host's kernel: the container's kernel release and boot id in the table are the host's."),
            q("Why is the microVM's uptime a few seconds while the container's equals the host's?",
              "The guest kernel booted when the VM started; the container shares the host kernel, which booted with the machine."),
            q("A kernel vulnerability is found in the host's kernel. Which columns run on it?",
              "Process and container: both enter the host kernel directly. The microVM's guest code enters its own kernel, and reaches the host only through the VMM's narrow device interface."),
        ],
    },
    Demo {
        name: "pids",
        aliases: &["pid"],
        title: "Who is PID 1?",
        summary: "the probe's own PID, PID 1's name and how many processes it can see",
        misconception: A_TINY_VM,
        explanation: "A PID namespace gives the container its own process numbering: its init is \
            PID 1 and /proc, mounted fresh inside, lists only the namespace's processes. The host \
            still sees every one of them under ordinary host PIDs: they are host processes with a \
            restricted view. In the microVM the guest kernel has its own process table; PID 1 is \
            the guest's init and the host sees only the VMM process.",
        questions: [
            q("The container shows only a couple of processes. Does the host see them?",
              "Yes: they are ordinary host processes with host PIDs; the PID namespace only renumbers and filters the container's view."),
            q("Which kernel object makes the container's init PID 1?",
              "A PID namespace, created by clone(CLONE_NEWPID); the first process in it gets PID 1."),
            q("In the microVM, what does the host see instead of the guest's processes?",
              "One VMM process (plus its vCPU threads); the guest's processes exist only in the guest kernel's memory."),
        ],
    },
    Demo {
        name: "filesystem",
        aliases: &["fs", "mounts"],
        title: "Which files are there?",
        summary: "the mount table it sees and whether the host's root is reachable",
        misconception: A_SAFE,
        explanation: "A mount namespace plus pivot_root gives the container a different root: an \
            overlay of a small image, a fresh /proc and a minimal /dev, so host paths such as \
            /etc/passwd or /home are not reachable by name. The isolation is only as good as what \
            is mounted: a bind mount of a host directory would put it right back. The guest of \
            the microVM has no host filesystem at all, only its initramfs.",
        questions: [
            q("The container cannot see /home. Which two kernel mechanisms hide it?",
              "A mount namespace (its own mount table) and pivot_root into the overlay root, after which the old root is unmounted."),
            q("What would make host files visible inside the container again?",
              "Any mount of host paths into it (a bind mount or volume); the same host kernel serves both, so it is a configuration choice, not a hardware boundary."),
            q("Why does the microVM show so few mounts and no host paths?",
              "Its kernel only knows the devices the VMM gives it: the initramfs it booted from; no host filesystem exists in it."),
        ],
    },
    Demo {
        name: "network",
        aliases: &["hostname", "net"],
        title: "What is my name, and which networks exist?",
        summary: "hostname and network interfaces it sees",
        misconception: A_TINY_VM,
        explanation: "A UTS namespace gives the container its own hostname and a network \
            namespace its own interface list, which starts with only loopback until someone \
            plugs in a veth. The process sees the host's name and every host interface. The \
            microVM's guest kernel has its own network stack; its interfaces are whatever \
            virtual devices the VMM emulates.",
        questions: [
            q("The container has only `lo`. Is it off the network for good?",
              "Only until a veth pair or similar is moved into its network namespace; the namespace is an empty view, not a missing network stack."),
            q("Which namespace lets the container have a hostname different from the host's?",
              "The UTS namespace (CLONE_NEWUTS); sethostname inside changes only that namespace."),
            q("Is the container's network stack a separate kernel's?",
              "No: it is the host kernel's stack, partitioned by a network namespace; the microVM's guest runs a separate stack in its own kernel."),
        ],
    },
    Demo {
        name: "memory",
        aliases: &["oom", "memory-limit"],
        title: "What stops a memory hog?",
        summary: "a memory hog: unlimited process (safety-capped), cgroup OOM kill, guest OOM killer",
        misconception: A_LIMITS,
        explanation: "The hog touches memory step by step. As a plain process nothing stops it but \
            its own safety cap: without a limit, only the whole machine running out of memory \
            would, and then the host's OOM killer may pick any victim. In the container, the \
            memory cgroup charges every page to the container and, at the limit, the kernel's \
            OOM killer kills the hog inside that cgroup and counts it in the cgroup's oom_kill \
            counter: the host is unaffected. In the microVM the guest kernel runs out of its own \
            RAM and its own OOM killer acts; the host only ever sees the VMM's resident memory, \
            bounded by the guest RAM it was given.",
        questions: [
            q("What would have stopped the plain-process hog without its safety cap?",
              "Nothing short of the host running out of memory; then the host's OOM killer chooses a victim, which may be another service."),
            q("Where did the container's OOM kill happen and how do you know?",
              "In the host kernel, scoped to the container's memory cgroup: its oom_kill counter went up and the workload died with SIGKILL (status 137)."),
            q("Are memory limits optional tuning for a container?",
              "No: without one a container's memory is the host's memory. The limit is what turns a runaway into a contained OOM kill."),
        ],
    },
    Demo {
        name: "cpu",
        aliases: &["cpu-limit"],
        title: "What does a CPU limit do?",
        summary: "a spinner under a 20% CPU limit: cgroup throttling counters vs the guest's CPUs",
        misconception: A_LIMITS,
        explanation: "The spinner hashes for two seconds. As a process it gets a full CPU. In the \
            container the CFS bandwidth controller gives the cgroup 20 ms of CPU per 100 ms \
            period; when the quota runs out the cgroup is throttled until the next period, which \
            the nr_throttled and throttled_time counters show. The container still sees every \
            host CPU: the limit is time, not hardware. In the microVM the guest sees only the \
            vCPUs it was given, and those run as threads the host schedules.",
        questions: [
            q("The container sees all host CPUs. Why does it do only a fifth of the work?",
              "CFS bandwidth control: its cgroup gets 20 ms of CPU time per 100 ms period and is throttled for the rest, as the throttled-periods counter shows."),
            q("What does the microVM's guest see instead?",
              "Only its vCPUs; the guest kernel schedules onto them, and the host schedules the vCPU threads."),
            q("A neighbour's container spins without a CPU limit. What happens to yours?",
              "It competes for the same host CPUs through the same scheduler; only a limit (or cpuset) bounds its share."),
        ],
    },
    Demo {
        name: "forkbomb",
        aliases: &["fork", "fork-bomb", "pids-limit"],
        title: "What stops a fork bomb?",
        summary: "a fork loop: pids.max in the container, the guest's own limits in the microVM",
        misconception: A_SAFE,
        explanation: "The fork loop keeps forking sleeping children. Every child is a task in the \
            one host kernel: as a plain process only its safety cap stops it, and an uncapped \
            fork bomb would exhaust the host's PID space or memory for everyone. In the container \
            the pids cgroup refuses fork with EAGAIN at pids.max, so the bomb stops at the limit \
            and the rest of the host keeps working. In the microVM the children are guest tasks: \
            they can exhaust only the guest's memory and PIDs.",
        questions: [
            q("Would an uncapped fork bomb in a container without pids.max hurt the host?",
              "Yes: its children are host-kernel tasks drawing on the host's PID space and kernel memory."),
            q("What error did fork return in the container, and which controller caused it?",
              "EAGAIN, from the pids cgroup controller once the cgroup's task count reached pids.max."),
            q("Where do the microVM's forked children live?",
              "In the guest kernel's process table and guest RAM; the host sees the same VMM process as before."),
        ],
    },
    Demo {
        name: "knobs",
        aliases: &["sysctl", "kernel-knobs"],
        title: "Who can turn the kernel's knobs?",
        summary: "try to change kernel settings: refused or confined in the container, guest-only in the microVM",
        misconception: A_KERNEL,
        explanation: "The knob workload tries three kernel settings: the domain name (owned by the \
            UTS namespace), the default IP TTL (owned by the network namespace) and vm.swappiness \
            (global: one value per kernel). As a root process on the host every setting is writable \
            (the demo only opens each one for writing and writes nothing: host settings are \
            never written). In the container, \
            /proc/sys is mounted read-only, so the sysctl writes are refused, and even the \
            domain name, which its own UTS namespace owns, cannot be set: the container keeps \
            Docker's default capabilities, which leave out CAP_SYS_ADMIN (with it, the change \
            would stay inside that UTS namespace). In the microVM every write succeeds, and \
            changes only the guest's kernel. The host's values are read before and after: they \
            did not move.",
        questions: [
            q("The domain name belongs to the container's own UTS namespace. Why is setting it refused anyway, and what would it change if allowed?",
              "setdomainname(2) needs CAP_SYS_ADMIN, which the container's default capability set drops; with it, only the container's UTS namespace would change, while vm.swappiness, a single host-kernel setting, stays out of reach behind a read-only /proc/sys."),
            q("If /proc/sys were writable inside the container, whose vm.swappiness would change?",
              "The host's: there is only one kernel, and that setting is not namespaced."),
            q("Why may the microVM set anything it likes?",
              "It changes its own guest kernel; the host kernel's settings are not reachable from the guest."),
        ],
    },
    Demo {
        name: "capabilities",
        aliases: &["caps", "seccomp"],
        title: "With which privileges does it run?",
        summary: "capability sets, no_new_privs and seccomp status in each mode",
        misconception: A_SAFE,
        explanation: "Root on Linux is a set of capabilities. The plain process inherits all of \
            them. The container's root is still the host kernel's root, so what confines it is \
            which capabilities remain in its sets and bounding set, whether no_new_privs is set \
            and whether a seccomp filter narrows the system calls it may make: this table shows \
            exactly what this workbench's container keeps. By default that is Docker's profile: \
            14 capabilities and a seccomp filter (mode 2). Beside it, the same container run \
            with --privileged keeps every capability of the host's root and has no filter: the \
            namespaces are the same, only the privileges differ. The guest's root holds every \
            capability too, but over the guest kernel only.",
        questions: [
            q("Is root in a container the same as root on the host?",
              "It is the same kernel's root (unless a user namespace maps it to an unprivileged id); only the capability sets, seccomp and namespaces limit what it can do to the host."),
            q("What does no_new_privs prevent?",
              "Gaining privileges on execve, e.g. through setuid binaries or file capabilities."),
            q("Why is a full capability set in the microVM's guest less dangerous?",
              "The capabilities act on the guest kernel; the host kernel is reached only through the VMM's devices."),
        ],
    },
    Demo {
        name: "noisy-neighbour",
        aliases: &["noisy", "neighbour", "neighbor", "noisy-neighbor"],
        title: "Does a noisy neighbour slow me down?",
        summary: "a tenant api alone, then beside a cpu, memory and fork storm of the same mode: its p99 and what stopped the storm",
        misconception: A_LIMITS,
        explanation: "The tenant answers the same short request run alone and then while a \
            neighbour of the same mode spins on every CPU, allocates memory until something \
            stops it, or forks as fast as it can. Both get the same limits. The plain process has \
            none: its storms stop only at the harness's safety caps, and until then they compete \
            for the host's CPUs, memory and PIDs like any other program. In the container the \
            neighbour's cgroup throttles its CPU time (cpu.max), OOM-kills it inside its own \
            memory limit and refuses its forks at pids.max, so the storm is contained; the \
            tenant still shares the host's scheduler, caches and kernel, which is what its p99 \
            ratio shows. A microVM's neighbour storms inside its own guest kernel, on vCPU \
            threads the host schedules. The ratio is p99 with the neighbour over p99 alone, with \
            a bootstrap interval: an interval that includes 1 means no measurable slowdown.",
        questions: [
            q("What stopped the container's memory neighbour, and where?",
              "The host kernel's OOM killer, scoped to the neighbour's memory cgroup: its oom_kill counter rose and the neighbour died with SIGKILL; the tenant's cgroup was untouched."),
            q("Why does the plain process's neighbour need a safety cap from the harness?",
              "A plain process has no limit at all: without the cap a memory or fork storm would take the host's memory or PID space from every other program."),
            q("The container's neighbour was contained, yet the tenant's p99 may still rise beside it. Why?",
              "Limits bound how much the neighbour takes, not what it shares: both run on the same host kernel, scheduler, caches and memory bandwidth."),
        ],
    },
    Demo {
        name: "attack-surface",
        aliases: &["surface", "syscalls"],
        title: "How much of the host kernel does it reach?",
        summary: "host system calls that serve a short request run, per mode, counted by a ptrace tracer",
        misconception: A_SAFE,
        explanation: "Every host process and thread of the instance is traced (ptrace, following \
            forks and threads) while it answers a short request run, and each system call it \
            makes into the host kernel is counted by name. The plain process and the container \
            call the same host kernel directly: namespaces and cgroups change what the calls see and \
            may use, not which kernel serves them, so a bug behind any of those calls is \
            reachable from inside the container (a seccomp filter narrows the list; it does not \
            add a second kernel). A microVM's guest makes its calls into its own kernel; the host \
            sees only the monitor's calls (KVM_RUN, the virtio device's reads and writes). The \
            Horizontal Attack Profile method counts the host kernel functions run on the \
            instance's behalf with ftrace; that needs writing the kernel's tracing settings, so \
            it is measured only in a kernel of our own.",
        questions: [
            q("Which kernel runs the container's system calls, and what does that mean for a kernel bug?",
              "The host's: every call in the container's column enters the host kernel, so a bug in any of them is reachable from inside the container."),
            q("What narrows the set of host calls a container can make, short of a VM?",
              "A seccomp filter (the container's default profile has one): it refuses calls outside its list, but the calls it allows still reach the host kernel."),
            q("Where do a microVM guest's system calls go?",
              "Into the guest's own kernel; the host kernel sees only the monitor's calls: KVM_RUN on its vCPU threads and the device emulation's reads and writes."),
        ],
    },
];

impl Demo {
    /// The isolation pass the demo runs in each column instead of one job
    /// (the noisy-neighbour and attack-surface demos).
    pub fn pass(&self) -> Option<Pass> {
        match self.name {
            "noisy-neighbour" => Some(Pass::Neighbours),
            "attack-surface" => Some(Pass::Surface),
            _ => None,
        }
    }

    /// Looks a demo up by name or alias.
    pub fn find(name: &str) -> Option<&'static Demo> {
        let name = name.trim();
        DEMOS
            .iter()
            .find(|d| d.name == name || d.aliases.contains(&name))
    }

    /// What this demo runs in a mode of the given isolation, safety caps
    /// included; its limits are the mode's (a cgroup for a container, guest
    /// RAM and vCPUs for a VM; the plain process gets none, by design).
    pub fn spec(&self, isolation: Isolation) -> InstanceSpec {
        use Isolation::{Container, None as Plain, Vm};
        let s = |v: u64| v.to_string();
        let job = |w: Workload, args: &[&str]| InstanceSpec::new(w, args);
        let mut spec = match (self.name, isolation) {
            ("memory", Plain) => job(
                Workload::Hog,
                &["--step-mib", "4", "--max-mib", &s(PROCESS_HOG_MAX_MIB)],
            ),
            ("memory", Container) => InstanceSpec {
                memory_bytes: Some(CONTAINER_MEMORY_MIB << 20),
                ..job(
                    Workload::Hog,
                    &["--step-mib", "4", "--max-mib", &s(CONTAINER_HOG_MAX_MIB)],
                )
            },
            ("memory", Vm) => InstanceSpec {
                memory_bytes: Some(VM_MEMORY_MIB << 20),
                ..job(
                    Workload::Hog,
                    &["--step-mib", "4", "--max-mib", &s(VM_HOG_MAX_MIB)],
                )
            },
            ("cpu", Container) => InstanceSpec {
                cpus: Some(CONTAINER_CPUS),
                ..job(Workload::Worker, &["--duration-ms", &s(SPIN_MS)])
            },
            ("cpu", Vm) => InstanceSpec {
                vcpus: Some(1),
                ..job(Workload::Worker, &["--duration-ms", &s(SPIN_MS)])
            },
            ("cpu", Plain) => job(Workload::Worker, &["--duration-ms", &s(SPIN_MS)]),
            ("forkbomb", Plain) => job(Workload::Forkloop, &["--max", &s(PROCESS_FORK_MAX)]),
            ("forkbomb", Container) => InstanceSpec {
                pids: Some(CONTAINER_PIDS),
                ..job(Workload::Forkloop, &["--max", &s(CONFINED_FORK_MAX)])
            },
            ("forkbomb", Vm) => job(Workload::Forkloop, &["--max", &s(CONFINED_FORK_MAX)]),
            // On the host, knob only opens the files for writing.
            ("knobs", Plain) => job(Workload::Knob, &[]),
            ("knobs", _) => job(Workload::Knob, &["--change"]),
            _ => job(Workload::Probe, &[]),
        };
        spec.keep_stderr = true;
        if isolation == Container {
            spec.hostname = Some(DEMO_HOSTNAME.to_owned());
        }
        spec
    }

    /// A second column beside a container-isolation column, running the
    /// same job under the `privileged` profile, for demos that contrast the
    /// default confinement with none (the capabilities demo).
    pub fn privileged_twin(&self, isolation: Isolation) -> Option<InstanceSpec> {
        (self.name == "capabilities" && isolation == Isolation::Container).then(|| InstanceSpec {
            privileged: true,
            ..self.spec(isolation)
        })
    }

    /// The probe run beside the demo's own, for demos whose table also
    /// shows where it ran (the CPUs the cpu demo's spinner sees).
    pub fn companion_probe(&self, isolation: Isolation) -> Option<InstanceSpec> {
        (self.name == "cpu").then(|| InstanceSpec {
            workload: Workload::Probe,
            args: vec![],
            ..self.spec(isolation)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_aliases_are_unique() {
        let mut all: Vec<&str> = DEMOS
            .iter()
            .flat_map(|d| std::iter::once(d.name).chain(d.aliases.iter().copied()))
            .collect();
        let n = all.len();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), n);
        assert_eq!(Demo::find("hostname").unwrap().name, "network");
        assert!(Demo::find("nope").is_none());
    }

    #[test]
    fn every_hog_and_fork_loop_is_capped_in_every_mode() {
        for d in DEMOS {
            for m in [Isolation::None, Isolation::Container, Isolation::Vm] {
                let j = d.spec(m);
                match j.workload {
                    Workload::Hog => {
                        assert!(j.args.contains(&"--max-mib".to_owned()), "{} {m:?}", d.name)
                    }
                    Workload::Forkloop => {
                        assert!(j.args.contains(&"--max".to_owned()), "{} {m:?}", d.name)
                    }
                    _ => {}
                }
            }
        }
        // The process hog's cap is the only stop it has: keep it small.
        assert!(Demo::find("memory")
            .unwrap()
            .spec(Isolation::None)
            .args
            .contains(&"64".to_owned()));
    }

    #[test]
    fn only_the_capabilities_demo_adds_a_privileged_container() {
        for d in DEMOS {
            for m in [Isolation::None, Isolation::Container, Isolation::Vm] {
                let twin = d.privileged_twin(m);
                let expected = d.name == "capabilities" && m == Isolation::Container;
                assert_eq!(twin.is_some(), expected, "{} {m:?}", d.name);
                assert!(!d.spec(m).privileged, "{} {m:?}: default profile", d.name);
                if let Some(t) = twin {
                    assert!(t.privileged);
                    assert_eq!(t.workload, Workload::Probe);
                }
            }
        }
    }

    #[test]
    fn the_host_process_never_changes_a_knob() {
        let j = Demo::find("knobs").unwrap().spec(Isolation::None);
        assert!(!j.args.iter().any(|a| a == "--change"));
    }

    #[test]
    fn all_four_misconceptions_are_covered() {
        for m in [A_KERNEL, A_SAFE, A_LIMITS, A_TINY_VM] {
            assert!(DEMOS.iter().any(|d| d.misconception == m), "{m}");
        }
    }
}
