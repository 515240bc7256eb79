//! The scale bench's driver (`batchline-bench scale`, `make bench-scale`) at 2,000
//! rows: the same drive (submit from the S3 event, poll on a timer, collect per ready
//! message, each in a child process), the same quota of a fifth of the job's tokens,
//! a small poll tick. Keeps the driver working, and checks the invariant it reports.

use std::process::Command;

#[test]
fn the_scale_driver_runs_a_small_job_under_the_quota() {
    let output = Command::new(env!("CARGO_BIN_EXE_batchline-bench"))
        .args(["scale", "--rows", "2000", "--poll-every", "0.3"])
        .args(["--step-ms", "150", "--tick-jobs", "3", "--tick-parts", "4"])
        .args(["--timeout", "120"])
        .output()
        .expect("running batchline-bench scale");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    let line = |start: &str| {
        stdout
            .lines()
            .find(|line| line.starts_with(start))
            .unwrap_or_else(|| panic!("no line {start:?} in\n{stdout}"))
    };
    let invariant = line("| invariant:");
    assert!(
        invariant.contains("2000 + 0 = 2000") && invariant.contains("`invariant_holds` true"),
        "{invariant}"
    );
    // Parts waited for the quota, and no batch went past it.
    let quota = line("| emulator `openai_enqueued_tokens`");
    assert!(quota.contains("refused 0"), "{quota}");
    let waits = line("| summary `quota_waits`");
    assert!(
        waits.contains("\"given_up\":0") && !waits.contains("\"parts\":0"),
        "{waits}"
    );
    for function in ["submit", "poll", "collect"] {
        let memory = line(&format!("| peak memory of {function}"));
        assert!(memory.ends_with("| PASS |"), "{memory}");
    }
    let tick = line("| poll tick over 12 open parts <");
    assert!(tick.contains("not measured at 10,000"), "{tick}");
}
