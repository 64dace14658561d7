//! `workload`: see the library docs and docs/contracts.md.
//!
//! Exit status: 0 success, 1 the workload failed after starting (its result
//! line says `"ok": false`), 2 usage error (one line on stderr, no result
//! line: nothing ran).

use std::process::ExitCode;

use isolab_workload::{failure, parse, result, run};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mode = match parse(&args) {
        Ok(mode) => mode,
        Err(err) => {
            eprintln!("{err}");
            return ExitCode::from(2);
        }
    };
    match run(&mode) {
        Ok(out) => {
            let ok = out.get("ok") == Some(&serde_json::Value::Bool(true));
            result::emit(&out);
            if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(err) => {
            let out = failure(mode.name(), &err);
            eprintln!(
                "workload {}: {}",
                mode.name(),
                out["error"].as_str().unwrap_or_default()
            );
            result::emit(&out);
            ExitCode::FAILURE
        }
    }
}
