//! `bench demo` as a user runs it: the list, usage errors (exit 2, one line,
//! nothing run), and a handout written with `--out`. The process column
//! needs only the `workload` binary next to `bench`; without it the tests
//! that run demos print `SKIPPED <test>: <reason>` (strict mode: fail).

use std::process::Command;

fn bench() -> Command {
    Command::new(env!("CARGO_BIN_EXE_bench"))
}

/// `bench <args>`, which must succeed; its stdout.
fn bench_ok(args: &[&std::ffi::OsStr]) -> String {
    let out = bench().args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The workload binary beside `bench`, or the skip line.
fn workload_built(test: &str) -> bool {
    isolab_testkit::require(
        test,
        isolab_testkit::missing_binary("workload", "isolab-workload"),
    )
}

#[test]
fn list_names_every_demo() {
    let out = bench().args(["demo", "list"]).output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    for name in [
        "kernel",
        "pids",
        "filesystem",
        "network",
        "memory",
        "cpu",
        "forkbomb",
        "knobs",
        "capabilities",
        "noisy-neighbour",
        "attack-surface",
    ] {
        assert!(
            text.lines().any(|l| l.trim_start().starts_with(name)),
            "{name} missing:\n{text}"
        );
    }
}

#[test]
fn bad_input_is_one_line_and_exit_2() {
    for (args, needle) in [
        (&["demo", "nope"][..], "unknown demo 'nope'"),
        (
            &["demo", "noisy-neighbour", "--modes", "process,docker"][..],
            "unknown mode 'docker'",
        ),
        (
            &["demo", "kernel", "--modes", "process,docker"][..],
            "unknown mode 'docker'",
        ),
        (&["demo", "kernel", "--modes", ","][..], "--modes is empty"),
        (
            &["demo", "kernel", "--out", "/nonexistent-dir/x.md"][..],
            "/nonexistent-dir is not an existing directory",
        ),
        (&["demo", "kernel", "--format", "pdf"][..], "pdf"),
    ] {
        let out = bench().args(args).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: {err}");
        assert!(out.stdout.is_empty(), "{args:?} ran something");
    }
}

#[test]
fn markdown_handout_is_written_with_every_section() {
    let test = "markdown_handout_is_written_with_every_section";
    if !workload_built(test) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("handout.md");
    let stdout = bench_ok(&[
        "demo".as_ref(),
        "all".as_ref(),
        "--modes".as_ref(),
        "process".as_ref(),
        "--format".as_ref(),
        "markdown".as_ref(),
        "--out".as_ref(),
        file.as_os_str(),
    ]);
    assert!(stdout.is_empty(), "the handout went to the file");
    let md = std::fs::read_to_string(&file).unwrap();
    assert!(md.starts_with("# "));
    let release = nix::sys::utsname::uname().unwrap();
    let release = release.release().to_string_lossy();
    assert!(
        md.contains(&format!("| kernel release | {release} |")),
        "{md}"
    );
    let demos = 11;
    for n in 1..=demos {
        assert!(md.contains(&format!("\n## {n}. ")), "section {n} missing");
    }
    assert_eq!(md.matches("### Knowledge check").count(), demos);
    assert_eq!(md.matches("*Answer:*").count(), 3 * demos);
}

#[test]
fn table_shows_the_hosts_kernel_in_the_process_column() {
    let test = "table_shows_the_hosts_kernel_in_the_process_column";
    if !workload_built(test) {
        return;
    }
    let text = bench_ok(&["demo", "kernel", "--modes", "process"].map(AsRef::as_ref));
    let boot_id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap();
    assert!(text.contains(boot_id.trim()), "{text}");
    assert!(text.contains("Host unchanged"), "{text}");
}

#[test]
fn capabilities_shows_the_default_container_beside_a_privileged_one() {
    let test = "capabilities_shows_the_default_container_beside_a_privileged_one";
    if !workload_built(test) || !isolab_testkit::require(test, isolab_testkit::missing_container())
    {
        return;
    }
    let text =
        bench_ok(&["demo", "capabilities", "--modes", "process,container"].map(AsRef::as_ref));
    let row = |label: &str| {
        text.lines()
            .find(|l| l.contains('|') && l.trim_start().starts_with(label))
            .unwrap_or_else(|| panic!("no {label} row:\n{text}"))
            .split('|')
            .skip(1)
            .map(|c| c.trim().to_owned())
            .collect::<Vec<_>>()
    };
    let header = row("| process");
    assert_eq!(
        header,
        ["process", "container", "container --privileged"],
        "{text}"
    );
    let bnd = row("bounding set");
    assert_eq!(bnd[1], "14 (0x00000000a80425fb)", "{text}");
    assert_eq!(bnd[2], bnd[0], "privileged keeps the host's set: {text}");
    assert_eq!(row("seccomp")[1..], ["2 (filter)", "0 (off)"], "{text}");
    assert!(!text.contains("[NOT OBSERVED]"), "{text}");
}

#[test]
fn attack_surface_table_counts_host_system_calls_per_mode() {
    let test = "attack_surface_table_counts_host_system_calls_per_mode";
    if !workload_built(test)
        || !isolab_testkit::require(
            test,
            isolab_testkit::first_missing([
                isolab_testkit::missing_container(),
                isolab_testkit::missing_binary("isolab-trace", "isolab-isolation"),
            ]),
        )
    {
        return;
    }
    let text =
        bench_ok(&["demo", "attack-surface", "--modes", "process,container"].map(AsRef::as_ref));
    let row = |label: &str| {
        text.lines()
            .find(|l| l.contains('|') && l.trim_start().starts_with(label))
            .unwrap_or_else(|| panic!("no {label} row:\n{text}"))
            .split('|')
            .skip(1)
            .map(|c| c.trim().to_owned())
            .collect::<Vec<_>>()
    };
    for label in ["distinct host system calls", "host system calls in all"] {
        let cells = row(label);
        assert_eq!(cells.len(), 2, "{text}");
        for c in &cells {
            assert!(
                c.parse::<u64>().is_ok_and(|n| n > 0),
                "{label}: {c}\n{text}"
            );
        }
    }
    assert!(row("host kernel functions (ftrace)")[0].starts_with("not measured"));
    assert!(
        text.contains("Conclusion (generated from the numbers above):"),
        "{text}"
    );
    assert!(text.contains("container made: "), "{text}");
}
