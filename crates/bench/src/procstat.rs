//! CPU time and memory of processes, read from `/proc` (Linux only; no extra crate needed).
//!
//! CPU is `utime + stime` from `/proc/<pid>/stat`, which sums every thread of the
//! process, in clock ticks. Memory is `VmRSS` and `VmHWM` (peak RSS) from `/proc/<pid>/status`.

use std::path::Path;

use serde::Serialize;

use crate::BenchError;

/// Linux reports `/proc` times in USER_HZ ticks, which is 100 on every mainstream
/// architecture; `unsafe` is forbidden so `sysconf(_SC_CLK_TCK)` is not an option.
const TICKS_PER_SECOND: f64 = 100.0;

/// A process the bench measures, under a readable label.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    pub label: String,
    pub pid: u32,
}

impl Probe {
    pub fn new(label: impl Into<String>, pid: u32) -> Probe {
        Probe {
            label: label.into(),
            pid,
        }
    }

    /// The bench process itself.
    pub fn this_process(label: impl Into<String>) -> Probe {
        Probe::new(label, std::process::id())
    }
}

/// Resident memory of one process, in KiB.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
pub struct Memory {
    pub rss_kib: u64,
    /// Peak resident set size since the process started.
    pub peak_kib: u64,
}

/// Fields of `/proc/<pid>/stat` after the `(comm)` field, which may itself hold spaces.
fn stat_fields(pid: u32) -> Result<Vec<String>, BenchError> {
    let path = format!("/proc/{pid}/stat");
    let text = std::fs::read_to_string(&path)
        .map_err(|e| BenchError::Proc(format!("reading {path}: {e}")))?;
    let rest = text
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .ok_or_else(|| BenchError::Proc(format!("{path} has no (comm) field")))?;
    Ok(rest.split_whitespace().map(str::to_owned).collect())
}

fn field(fields: &[String], stat_index: usize) -> Option<u64> {
    // `stat_index` is the 1-based field number of proc(5); the slice starts at field 3.
    fields.get(stat_index.checked_sub(3)?)?.parse().ok()
}

/// CPU seconds (user + system) the process has used so far.
pub fn cpu_seconds(pid: u32) -> Result<f64, BenchError> {
    let fields = stat_fields(pid)?;
    let utime = field(&fields, 14);
    let stime = field(&fields, 15);
    match (utime, stime) {
        (Some(u), Some(s)) => Ok((u + s) as f64 / TICKS_PER_SECOND),
        _ => Err(BenchError::Proc(format!(
            "/proc/{pid}/stat has no utime/stime"
        ))),
    }
}

/// Current and peak resident memory.
pub fn memory(pid: u32) -> Result<Memory, BenchError> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path)
        .map_err(|e| BenchError::Proc(format!("reading {path}: {e}")))?;
    let kib = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    Ok(Memory {
        rss_kib: kib("VmRSS:"),
        peak_kib: kib("VmHWM:"),
    })
}

/// The direct children of `parent`: (pid, argv).
fn children(parent: u32) -> Vec<(u32, Vec<String>)> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            stat_fields(*pid)
                .ok()
                .and_then(|f| field(&f, 4))
                .is_some_and(|ppid| ppid == u64::from(parent))
        })
        .filter_map(|pid| {
            let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let argv = raw
                .split(|b| *b == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            Some((pid, argv))
        })
        .collect()
}

fn program_name(argv: &[String]) -> Option<&str> {
    Path::new(argv.first()?).file_name()?.to_str()
}

/// Every child of the bench running `program` (by the file name of `argv[0]`), or the
/// `shop run --services <program>` fallback the harness uses when the service binary is
/// missing; a cluster's nodes are three such children.
pub fn find_children(program: &str) -> Vec<u32> {
    let mut found: Vec<u32> = children(std::process::id())
        .into_iter()
        .filter(|(_, argv)| {
            program_name(argv) == Some(program)
                || argv
                    .windows(2)
                    .any(|w| w[0] == "--services" && w[1] == program)
        })
        .map(|(pid, _)| pid)
        .collect();
    found.sort_unstable();
    found
}

/// The bench's one child running `program` (see [`find_children`]).
pub fn find_child(program: &str) -> Result<u32, BenchError> {
    let found = find_children(program).into_iter().next();
    found.ok_or_else(|| {
        BenchError::Proc(format!(
            "no child process of the bench runs {program}; was it started?"
        ))
    })
}

/// CPU seconds of each probe at one instant.
#[derive(Debug, Clone)]
pub struct CpuSnapshot(Vec<(Probe, f64)>);

impl CpuSnapshot {
    pub fn take(probes: &[Probe]) -> Result<CpuSnapshot, BenchError> {
        probes
            .iter()
            .map(|p| Ok((p.clone(), cpu_seconds(p.pid)?)))
            .collect::<Result<Vec<_>, BenchError>>()
            .map(CpuSnapshot)
    }

    /// CPU seconds each label used between `earlier` and `self`, in the order labels
    /// first appear. Probes that share a label (a cluster's three `nats-server` nodes)
    /// are summed under it.
    pub fn since(&self, earlier: &CpuSnapshot) -> Vec<(String, f64)> {
        let mut used: Vec<(String, f64)> = Vec::new();
        for (probe, now) in &self.0 {
            let before = earlier
                .0
                .iter()
                .find(|(p, _)| p == probe)
                .map_or(0.0, |(_, s)| *s);
            let delta = (now - before).max(0.0);
            match used.iter_mut().find(|(label, _)| *label == probe.label) {
                Some((_, total)) => *total += delta,
                None => used.push((probe.label.clone(), delta)),
            }
        }
        used
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probes_sharing_a_label_are_summed_and_others_kept_apart() {
        let node = |pid| Probe::new("nats-server", pid);
        let bench = Probe::new("bench", 1);
        let before = CpuSnapshot(vec![
            (bench.clone(), 1.0),
            (node(10), 2.0),
            (node(11), 3.0),
            (node(12), 4.0),
        ]);
        let after = CpuSnapshot(vec![
            (bench, 1.5),
            (node(10), 2.25),
            (node(11), 3.5),
            (node(12), 5.0),
        ]);
        assert_eq!(
            after.since(&before),
            vec![("bench".to_owned(), 0.5), ("nats-server".to_owned(), 1.75)]
        );
    }

    #[test]
    fn the_bench_can_measure_itself() {
        let me = std::process::id();
        assert!(cpu_seconds(me).is_ok());
        let memory = memory(me).expect("status readable");
        assert!(memory.peak_kib >= memory.rss_kib && memory.rss_kib > 0);
    }
}
