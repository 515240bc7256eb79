//! Running one measurement in a fresh child process: its own report (time, bytes,
//! items) on stdout, its peak RSS from the kernel (`wait4`), optionally pinned to one
//! core the way `taskset -c 0` would.

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

use serde::{Deserialize, Serialize};

/// What a child prints as its last stdout line.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Report {
    /// Time of the measured work alone (set-up excluded).
    pub seconds: f64,
    /// Bytes the work produced (build) or consumed (parse, collect).
    pub bytes: u64,
    /// Requests built or results parsed.
    pub items: u64,
}

impl Report {
    pub fn print(&self) {
        println!(
            "{}",
            serde_json::to_string(self).expect("a report serialises")
        );
    }
}

/// One finished run: the child's report and its peak resident set.
#[derive(Debug, Clone, Copy)]
pub struct Run {
    pub report: Report,
    pub peak_rss_bytes: u64,
}

/// Runs `command` to completion; `pin` restricts it to CPU 0 before it starts.
pub fn run_child(mut command: Command, pin: bool) -> Result<Run, String> {
    if pin {
        // SAFETY: only async-signal-safe calls between fork and exec (sched_setaffinity
        // on a stack-local set).
        unsafe {
            command.pre_exec(|| {
                let mut set: libc::cpu_set_t = std::mem::zeroed();
                libc::CPU_SET(0, &mut set);
                if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    let description = format!("{command:?}");
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("starting {description}: {e}"))?;
    let mut stdout = String::new();
    if let Some(mut out) = child.stdout.take() {
        out.read_to_string(&mut stdout)
            .map_err(|e| format!("reading the output of {description}: {e}"))?;
    }
    let (status, peak_rss_bytes) = wait_with_rusage(child.id())?;
    if status != 0 {
        return Err(format!("{description} failed ({status}): {stdout}"));
    }
    let last = stdout.lines().last().unwrap_or_default();
    let report = serde_json::from_str(last)
        .map_err(|e| format!("{description} printed no report ({e}): {stdout}"))?;
    Ok(Run {
        report,
        peak_rss_bytes,
    })
}

/// Reaps the child and answers its exit code (or 128 + signal) and peak RSS in bytes.
fn wait_with_rusage(pid: u32) -> Result<(i32, u64), String> {
    let mut status = 0;
    // SAFETY: rusage is plain old data that wait4 fills in.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // The pid fits: it came from spawn.
    let reaped = unsafe { libc::wait4(pid as libc::pid_t, &mut status, 0, &mut usage) };
    if reaped < 0 {
        return Err(format!(
            "waiting for process {pid}: {}",
            std::io::Error::last_os_error()
        ));
    }
    let code = if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        128 + libc::WTERMSIG(status)
    };
    // Linux reports ru_maxrss in KiB.
    Ok((code, usage.ru_maxrss.max(0) as u64 * 1024))
}

/// Median, min and max of a sample.
#[derive(Debug, Clone, Copy)]
pub struct Stats {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Stats {
    pub fn of(values: impl IntoIterator<Item = f64>) -> Option<Self> {
        let mut sorted: Vec<f64> = values.into_iter().collect();
        if sorted.is_empty() {
            return None;
        }
        sorted.sort_by(f64::total_cmp);
        let n = sorted.len();
        let median = if n % 2 == 1 {
            sorted[n / 2]
        } else {
            (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
        };
        Some(Self {
            median,
            min: sorted[0],
            max: sorted[n - 1],
        })
    }
}

/// Throughput, rate and memory of a set of runs of one measurement.
#[derive(Debug, Clone, Copy)]
pub struct Figures {
    pub mb_per_s: Stats,
    pub items_per_s: Stats,
    pub rss_mib: Stats,
    pub seconds: Stats,
}

impl Figures {
    pub fn of(runs: &[Run]) -> Option<Self> {
        Some(Self {
            mb_per_s: Stats::of(
                runs.iter()
                    .map(|r| r.report.bytes as f64 / 1e6 / r.report.seconds),
            )?,
            items_per_s: Stats::of(
                runs.iter()
                    .map(|r| r.report.items as f64 / r.report.seconds),
            )?,
            rss_mib: Stats::of(
                runs.iter()
                    .map(|r| r.peak_rss_bytes as f64 / (1024.0 * 1024.0)),
            )?,
            seconds: Stats::of(runs.iter().map(|r| r.report.seconds))?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_min_max() {
        let s = Stats::of([3.0, 1.0, 2.0]).unwrap();
        assert_eq!((s.median, s.min, s.max), (2.0, 1.0, 3.0));
        assert_eq!(Stats::of([4.0, 1.0, 2.0, 3.0]).unwrap().median, 2.5);
        assert!(Stats::of([]).is_none());
    }
}
