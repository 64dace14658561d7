//! `isolab-init`: the guest's `/init` (PID 1 in the microVM).
//!
//! Steps, in order (each one function):
//! 1. write `MARK_INIT` (first userspace work; Firecracker's boot-timer value);
//! 2. mount /proc, /sys, /dev (devtmpfs), /tmp;
//! 3. read the `isolab.*` parameters from /proc/cmdline;
//! 4. set the hostname; configure lo and eth0 when `isolab.ip=` is given;
//! 5. start `/workload <name> <args>` with the ready pipe and piped stdout;
//!    or, with `isolab.root=<device>` (an OCI image's disk): read the guest
//!    spec `/isolab/spec`, mount the disk read-only under a tmpfs overlay
//!    at `/mnt/root` and start the spec's command chrooted there, with its
//!    environment, working directory and user, stdout and stderr piped;
//! 6. relay ready, stdout and the exit status to the marker ports;
//! 7. sync and `reboot(RB_AUTOBOOT)` (with `reboot=k` the monitor sees the
//!    i8042 reset). Init never returns; any failure is printed on the
//!    console, reported as status 255, and the VM is rebooted all the same.
//!
//! Human-readable progress lines (`isolab-init: ...`) go to the console when
//! `isolab.console=1`, so a test can follow a boot without the monitor.

mod cmdline;
mod error;
mod markers;
mod mounts;
mod net;
mod rootfs;
mod supervise;

use isolab_guest_spec::{GuestSpec, MAX_SPEC_BYTES, SPEC_PATH};
use std::io::Write;

use error::InitError;
use markers::{IoPorts, Ports, MARK_EXITED, MARK_INIT, PORT_EVENT, PORT_STATUS};

const WORKLOAD: &str = "/workload";
/// Status reported when init itself failed.
const INIT_FAILED: u8 = 255;

fn say(console: bool, msg: &str) {
    if console {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "isolab-init: {msg}");
        let _ = out.flush();
    }
}

fn run(ports: &mut IoPorts) -> Result<u8, InitError> {
    mounts::mount_all()?;
    let line = std::fs::read_to_string("/proc/cmdline").map_err(InitError::ReadCmdline)?;
    let cfg = cmdline::parse(&line)?;
    let console = cfg.console;
    say(console, "init reached");

    nix::unistd::sethostname(&cfg.hostname).map_err(|source| InitError::Hostname {
        name: cfg.hostname.clone(),
        source,
    })?;
    if let Some(net) = &cfg.net {
        net::configure(net)?;
        say(console, &format!("eth0 {}/{} up", net.addr, net.prefix));
    }

    let w = match &cfg.root {
        Some(disk) => start_image(disk, console, ports)?,
        None => {
            let mut argv = vec![cfg.workload.clone()];
            argv.extend(cfg.args.iter().cloned());
            let w = supervise::start(WORKLOAD, &argv, ports)?;
            say(console, &format!("started {WORKLOAD} {}", argv.join(" ")));
            w
        }
    };
    let mut stdout = std::io::stdout();
    let show = console;
    let status = supervise::supervise(
        w,
        ports,
        show.then_some(&mut stdout),
        || say(show, "ready"),
        true,
    )?;
    say(console, &format!("workload exited with status {status}"));
    Ok(status)
}

/// Step 5 for an image: spec, root disk and overlay, then its command.
fn start_image(
    disk: &cmdline::RootDisk,
    console: bool,
    ports: &mut IoPorts,
) -> Result<supervise::Workload, InitError> {
    let bytes = read_spec()?;
    let spec = GuestSpec::decode(&bytes)?;
    let root = rootfs::prepare(&disk.device, &disk.fstype)?;
    say(
        console,
        &format!(
            "root {} ({}) mounted read-only under a tmpfs overlay at {root}",
            disk.device, disk.fstype
        ),
    );
    let w = supervise::launch(
        &supervise::Launch {
            argv: &spec.args,
            env: &spec.env,
            root: Some(root),
            cwd: &spec.cwd,
            ids: Some((spec.uid, spec.gid, &spec.additional_gids)),
            ready_fd: spec.ready_fd,
            merge_stderr: true,
        },
        ports,
    )?;
    say(
        console,
        &format!(
            "started {} as {}:{} in {}",
            spec.args.join(" "),
            spec.uid,
            spec.gid,
            spec.cwd
        ),
    );
    Ok(w)
}

fn read_spec() -> Result<Vec<u8>, InitError> {
    use std::io::Read;
    let path = SPEC_PATH;
    let err = |source| InitError::ReadSpec { path, source };
    let mut bytes = Vec::new();
    // One byte past the limit, so that decoding refuses a larger spec.
    std::fs::File::open(path)
        .map_err(err)?
        .take(MAX_SPEC_BYTES as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(err)?;
    Ok(bytes)
}

fn finish() -> ! {
    nix::unistd::sync();
    let err = match nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_AUTOBOOT) {
        Err(e) => e,
        Ok(never) => match never {},
    };
    eprintln!("isolab-init: reboot failed: {err}");
    loop {
        nix::unistd::pause();
    }
}

fn main() {
    let pid = nix::unistd::getpid().as_raw();
    if pid != 1 {
        eprintln!("isolab-init: error: {}", InitError::NotPid1 { pid });
        std::process::exit(2);
    }
    let (mut ports, port_err) = IoPorts::open();
    ports.outb(PORT_EVENT, MARK_INIT);
    if let Some(e) = port_err {
        eprintln!(
            "isolab-init: warning: no access to marker ports 0x3f0-0x3f2 ({e}); markers are off"
        );
    }
    if let Err(e) = run(&mut ports) {
        // Printed whatever isolab.console says: failures are rare and the
        // console is the only place a person can see them.
        eprintln!("isolab-init: error: {e}");
        eprintln!("isolab-init: reporting status {INIT_FAILED} and rebooting");
        ports.outb(PORT_STATUS, INIT_FAILED);
        ports.outb(PORT_EVENT, MARK_EXITED);
    }
    finish()
}
