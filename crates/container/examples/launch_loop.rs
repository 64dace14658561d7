//! Launches `noop` containers one after another until killed: the launcher
//! that `tests/crash.rs` SIGKILLs at random points to check that the next
//! start leaves nothing of it behind.
//!
//! `launch_loop <workload-bin> <run-dir> [--hold]` (root required). Prints
//! one line per finished launch. With `--hold` it starts one long `worker`
//! container instead and sleeps until killed.

fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(bin), Some(run_dir)) = (args.next(), args.next()) else {
        eprintln!("usage: launch_loop <workload-bin> <run-dir>");
        std::process::exit(2);
    };
    let hold = args.next().is_some_and(|a| a == "--hold");
    let mut cfg = isolab_container::ContainerConfig::new(bin, "noop");
    cfg.run_dir = run_dir.into();
    cfg.quiet_stderr = true;
    if hold {
        cfg.workload = "worker".into();
        cfg.args = vec!["--duration-ms".into(), "60000".into()];
        let running = isolab_container::start(&cfg).unwrap_or_else(|e| {
            eprintln!("launch_loop: {e}");
            std::process::exit(1);
        });
        println!("{}", running.id());
        std::thread::sleep(std::time::Duration::from_secs(120));
        return;
    }
    loop {
        match isolab_container::run(&cfg) {
            Ok(o) => println!("{} {}", o.id, o.exit_code),
            Err(e) => {
                eprintln!("launch_loop: {e}");
                std::process::exit(1);
            }
        }
    }
}
