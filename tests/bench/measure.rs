//! Running one measurement in a fresh child process that reports its own time, bytes,
//! items and peak RSS, optionally pinned to one core the way `taskset -c 0` would.
//!
//! Peak RSS is the child's `VmHWM` from `/proc/self/status`, read at its end. The
//! kernel's `ru_maxrss` (wait4, getrusage) is no good here: it keeps the high-water
//! mark of the address space the child had between fork and exec, which is a copy
//! of this process, and this process holds the collect benchmark's gigabyte.

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
    /// The child's peak resident set (`VmHWM`), in bytes.
    pub peak_rss_bytes: u64,
    /// CPU time (user + system) the whole child used; Rust children only.
    #[serde(default)]
    pub cpu_seconds: f64,
}

impl Report {
    pub fn print(&self) {
        println!(
            "{}",
            serde_json::to_string(self).expect("a report serialises")
        );
    }
}

/// This process's peak resident set so far, from `VmHWM` in `/proc/self/status`.
pub fn own_peak_rss_bytes() -> Result<u64, String> {
    let status = std::fs::read_to_string("/proc/self/status")
        .map_err(|e| format!("/proc/self/status: {e}"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|value| value.trim().strip_suffix("kB"))
        .and_then(|kib| kib.trim().parse::<u64>().ok())
        .map(|kib| kib * 1024)
        .ok_or_else(|| "no VmHWM in /proc/self/status".to_string())
}

/// CPU time (user + system) this process has used so far.
pub fn own_cpu_seconds() -> f64 {
    // SAFETY: rusage is plain old data that getrusage fills in.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } != 0 {
        return 0.0;
    }
    let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    seconds(usage.ru_utime) + seconds(usage.ru_stime)
}

/// Runs `command` to completion; `pin` restricts it to CPU 0 before it starts.
pub fn run_child(command: Command, pin: bool) -> Result<Report, String> {
    run_child_as(command, pin)
}

/// [`run_child`] for a child whose report is some other JSON object (a last stdout
/// line that deserialises as `T`).
pub fn run_child_as<T: serde::de::DeserializeOwned>(
    mut command: Command,
    pin: bool,
) -> Result<T, String> {
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
    let status = child
        .wait()
        .map_err(|e| format!("waiting for {description}: {e}"))?;
    if !status.success() {
        return Err(format!("{description} failed ({status}): {stdout}"));
    }
    let last = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(last)
        .map_err(|e| format!("{description} printed no report ({e}): {stdout}"))
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
    pub cpu_seconds: Stats,
}

impl Figures {
    pub fn of(runs: &[Report]) -> Option<Self> {
        Some(Self {
            mb_per_s: Stats::of(runs.iter().map(|r| r.bytes as f64 / 1e6 / r.seconds))?,
            items_per_s: Stats::of(runs.iter().map(|r| r.items as f64 / r.seconds))?,
            rss_mib: Stats::of(
                runs.iter()
                    .map(|r| r.peak_rss_bytes as f64 / (1024.0 * 1024.0)),
            )?,
            seconds: Stats::of(runs.iter().map(|r| r.seconds))?,
            cpu_seconds: Stats::of(runs.iter().map(|r| r.cpu_seconds))?,
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
