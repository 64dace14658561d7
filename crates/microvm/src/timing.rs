//! Boot timeline: host-side CLOCK_MONOTONIC stamps from monitor start to the
//! guest's markers, and the phases derived from them.

use std::time::Instant;

use crate::devices::marker::MarkerLog;

/// Raw stamps of one run.
#[derive(Debug, Clone)]
pub struct Timeline {
    /// Monitor start (the caller's earliest stamp, e.g. at `main`).
    pub start: Instant,
    /// KVM_CREATE_VM returned.
    pub vm_created: Option<Instant>,
    /// Setup steps done, in boot order (see [`Setup`]).
    pub setup: Setup,
    /// The boot vCPU entered KVM_RUN for the first time.
    pub first_run: Option<Instant>,
    /// The VM stopped (all vCPU threads joined).
    pub stopped: Option<Instant>,
    /// Process age when the monitor started, from /proc/self/stat (10 ms
    /// resolution): the exec and runtime start-up cost before `start`.
    pub exec_to_start_ms: Option<f64>,
}

impl Timeline {
    /// A timeline starting at `start`.
    pub fn new(start: Instant) -> Self {
        Self {
            start,
            vm_created: None,
            setup: Setup::default(),
            first_run: None,
            stopped: None,
            exec_to_start_ms: process_age_ms(),
        }
    }
}

/// When each setup step between VM creation and the first `KVM_RUN` ended.
#[derive(Debug, Clone, Copy, Default)]
pub struct Setup {
    /// Guest RAM mapped and registered (step 5).
    pub memory: Option<Instant>,
    /// Kernel loaded (step 6).
    pub kernel: Option<Instant>,
    /// Initramfs loaded (step 7).
    pub initrd: Option<Instant>,
    /// Devices attached, command line, boot info and MP table written
    /// (steps 8-11).
    pub devices: Option<Instant>,
    /// vCPUs created and configured (step 12).
    pub vcpus: Option<Instant>,
}

/// Phases in milliseconds; `None` where a marker never arrived.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Phases {
    /// exec to monitor start (coarse, from /proc/self/stat); meaningful for
    /// one VM per process, as `bench vm run` runs them.
    pub exec_to_monitor_ms: Option<f64>,
    /// Monitor start to KVM_CREATE_VM done.
    pub vm_create_ms: Option<f64>,
    /// VMM setup: monitor start to the first KVM_RUN.
    pub vmm_setup_ms: Option<f64>,
    /// Of VMM setup: guest RAM mapped and registered (after VM creation).
    #[serde(default)]
    pub memory_setup_ms: Option<f64>,
    /// Of VMM setup: kernel image loaded.
    #[serde(default)]
    pub kernel_load_ms: Option<f64>,
    /// Of VMM setup: initramfs loaded.
    #[serde(default)]
    pub initrd_load_ms: Option<f64>,
    /// Of VMM setup: devices, command line, boot info, MP table.
    #[serde(default)]
    pub device_setup_ms: Option<f64>,
    /// Of VMM setup: vCPUs created and configured.
    #[serde(default)]
    pub vcpu_setup_ms: Option<f64>,
    /// Of VMM setup: vCPU threads started (and confined) to the first KVM_RUN.
    #[serde(default)]
    pub vcpu_start_ms: Option<f64>,
    /// Kernel boot: first KVM_RUN to the init-reached marker.
    pub kernel_boot_ms: Option<f64>,
    /// Init: init reached to workload exec'd.
    pub init_ms: Option<f64>,
    /// Workload start-up: exec'd to ready.
    pub workload_ready_ms: Option<f64>,
    /// Monitor start to workload ready: the startup figure to compare.
    pub start_to_ready_ms: Option<f64>,
    /// Workload ready to workload exited.
    pub workload_run_ms: Option<f64>,
    /// Workload exited to VM stopped (sync, reboot, teardown of vCPUs).
    pub shutdown_ms: Option<f64>,
    /// Monitor start to VM stopped.
    pub total_ms: Option<f64>,
}

fn span(a: Option<Instant>, b: Option<Instant>) -> Option<f64> {
    let (a, b) = (a?, b?);
    Some(b.checked_duration_since(a)?.as_secs_f64() * 1e3)
}

/// Derives the phases from the host stamps and the guest markers.
pub fn phases(t: &Timeline, m: &MarkerLog) -> Phases {
    let s = Some(t.start);
    Phases {
        exec_to_monitor_ms: t.exec_to_start_ms,
        vm_create_ms: span(s, t.vm_created),
        vmm_setup_ms: span(s, t.first_run),
        memory_setup_ms: span(t.vm_created, t.setup.memory),
        kernel_load_ms: span(t.setup.memory, t.setup.kernel),
        initrd_load_ms: span(t.setup.kernel, t.setup.initrd),
        device_setup_ms: span(t.setup.initrd, t.setup.devices),
        vcpu_setup_ms: span(t.setup.devices, t.setup.vcpus),
        vcpu_start_ms: span(t.setup.vcpus, t.first_run),
        kernel_boot_ms: span(t.first_run, m.init_reached),
        init_ms: span(m.init_reached, m.workload_started),
        workload_ready_ms: span(m.workload_started, m.workload_ready),
        start_to_ready_ms: span(s, m.workload_ready),
        workload_run_ms: span(m.workload_ready, m.workload_exited),
        shutdown_ms: span(m.workload_exited, t.stopped),
        total_ms: span(s, t.stopped),
    }
}

/// How long this process has existed, from `/proc/self/stat` field 22
/// (start time in clock ticks since boot) against CLOCK_BOOTTIME.
pub fn process_age_ms() -> Option<f64> {
    use std::io::Read;
    // One read into a stack buffer (the line is ~300 bytes): this runs at
    // every monitor start, where each system call counts.
    let mut buf = [0u8; 1024];
    let n = std::fs::File::open("/proc/self/stat")
        .ok()?
        .read(&mut buf)
        .ok()?;
    let stat = std::str::from_utf8(&buf[..n]).ok()?;
    parse_age_ms(stat, boottime_secs()?, clock_ticks()?)
}

/// Pure part of [`process_age_ms`].
pub fn parse_age_ms(stat: &str, now_since_boot_s: f64, ticks_per_s: f64) -> Option<f64> {
    // The command name (field 2) may contain spaces; fields resume after ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    // After ')' comes field 3; starttime is field 22.
    let start_ticks: f64 = rest.split_whitespace().nth(19)?.parse().ok()?;
    Some(((now_since_boot_s - start_ticks / ticks_per_s) * 1e3).max(0.0))
}

fn boottime_secs() -> Option<f64> {
    let ts = nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME).ok()?;
    Some(ts.tv_sec() as f64 + ts.tv_nsec() as f64 * 1e-9)
}

fn clock_ticks() -> Option<f64> {
    // SAFETY: sysconf only reads a configuration value.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    (t > 0).then_some(t as f64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn phases_chain_from_start_to_stop() {
        let t0 = Instant::now();
        let at = |ms| Some(t0 + Duration::from_millis(ms));
        let t = Timeline {
            start: t0,
            vm_created: at(2),
            setup: Setup {
                memory: at(3),
                kernel: at(3),
                initrd: at(4),
                devices: at(4),
                vcpus: at(4),
            },
            first_run: at(5),
            stopped: at(400),
            exec_to_start_ms: Some(10.0),
        };
        let m = MarkerLog {
            init_reached: at(105),
            workload_started: at(110),
            workload_ready: at(111),
            workload_exited: at(300),
            ..Default::default()
        };
        let p = phases(&t, &m);
        let r = |v: Option<f64>| v.map(|x| x.round() as i64);
        assert_eq!(r(p.vmm_setup_ms), Some(5));
        assert_eq!(r(p.memory_setup_ms), Some(1));
        assert_eq!(r(p.initrd_load_ms), Some(1));
        assert_eq!(r(p.vcpu_start_ms), Some(1));
        assert_eq!(r(p.kernel_boot_ms), Some(100));
        assert_eq!(r(p.init_ms), Some(5));
        assert_eq!(r(p.workload_ready_ms), Some(1));
        assert_eq!(r(p.start_to_ready_ms), Some(111));
        assert_eq!(r(p.shutdown_ms), Some(100));
        assert_eq!(r(p.total_ms), Some(400));
    }

    #[test]
    fn missing_markers_leave_phases_empty() {
        let t = Timeline::new(Instant::now());
        let p = phases(&t, &MarkerLog::default());
        assert_eq!(p.kernel_boot_ms, None);
        assert_eq!(p.vmm_setup_ms, None);
    }

    #[test]
    fn stat_start_time_is_read_after_the_command_name() {
        let stat = "42 (a b) c) S 1 42 42 0 -1 4194560 100 0 0 0 0 0 0 0 20 0 1 0 500 1000 100";
        // starttime 500 ticks at 100 Hz = 5 s after boot; now 7.5 s.
        assert_eq!(parse_age_ms(stat, 7.5, 100.0), Some(2500.0));
        assert_eq!(parse_age_ms("garbage", 1.0, 100.0), None);
    }
}
