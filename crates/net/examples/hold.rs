//! Creates a workbench network and holds it until stdin closes, so it can be
//! inspected: `ip -n isolab0 addr`, `ip -n isolab0 link`, `ls /run/netns`.
//!
//! ```text
//! cargo run -p isolab-net --example hold -- [NAME [SUBNET]]
//! ```
//!
//! Prints `ready <path>` once the namespace and bridge exist. Ending it with
//! Ctrl-D removes everything; killing it leaves a stale name that the next
//! run removes (the privileged tests use this to play a killed run).

use std::io::Read;
use std::process::ExitCode;

use isolab_net::{Workbench, WorkbenchConfig};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut config = WorkbenchConfig::default();
    if let Some(name) = args.first() {
        config.name = name.clone();
        config.bridge = format!("br{name}");
    }
    if let Some(subnet) = args.get(1) {
        match subnet.parse() {
            Ok(s) => config.subnet = s,
            Err(err) => {
                eprintln!("error: {err}");
                return ExitCode::from(2);
            }
        }
    }
    let wb = match Workbench::create(config) {
        Ok(wb) => wb,
        Err(err) => {
            let mut line = err.to_string();
            let mut src = std::error::Error::source(&err);
            while let Some(s) = src {
                line.push_str(&format!(": {s}"));
                src = s.source();
            }
            eprintln!("error: {line}");
            return ExitCode::FAILURE;
        }
    };
    println!(
        "ready {} bridge {} {}/{} stale_removed={}",
        wb.netns_path().display(),
        wb.config().bridge,
        wb.bridge_addr(),
        wb.config().subnet.prefix(),
        wb.removed_stale()
    );
    let mut sink = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut sink);
    match wb.destroy() {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::FAILURE
        }
    }
}
