//! Where a monitored open's time goes: the worker runs in the action cgroup
//! under `perf record` (a software clock: these VMs have no PMU), and its
//! samples are sorted by kernel symbol into the parts of the hook (program
//! bodies, kernel reads, maps, ring buffer, clock and task helpers), the
//! tracepoint's own entry, and the rest (the syscall itself and the
//! worker's loop). perf samples and resolves symbols; this module only
//! classifies its report.

use std::{ffi::OsString, fs, path::Path, process::Command};

use anyhow::{Context as _, Result, ensure};

use super::{
    Bench, Placement,
    worker::{WorkerReport, Workload},
};
use crate::util::output;

pub const PERF: &str = "/usr/bin/perf";
/// Sampling rate (Hz) of the software clock.
const FREQUENCY: &str = "4999";

/// A part of the time a monitored operation takes.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Part {
    /// The JIT-compiled programs' own instructions (`bpf_prog_*`, `bpf_loop`).
    Programs,
    /// Probe reads of kernel and user memory (struct fields, names).
    KernelReads,
    /// Hash and array map lookups and updates (repeat counts, lineage).
    Maps,
    /// Reserving and copying records into the ring buffer.
    RingBuffer,
    /// Timestamps, the current task, its cgroup ancestors.
    ClockAndTask,
    /// Running any program on the tracepoint at all (the floor's part).
    TracepointEntry,
    /// The syscall itself and the worker's loop.
    Rest,
}

pub const HOOK_PARTS: [Part; 5] = [
    Part::Programs,
    Part::KernelReads,
    Part::Maps,
    Part::RingBuffer,
    Part::ClockAndTask,
];

impl Part {
    pub fn title(self) -> &'static str {
        match self {
            Self::Programs => "program instructions",
            Self::KernelReads => "probe reads",
            Self::Maps => "maps",
            Self::RingBuffer => "ring buffer",
            Self::ClockAndTask => "clock, task, cgroup helpers",
            Self::TracepointEntry => "tracepoint entry (floor)",
            Self::Rest => "syscall and loop",
        }
    }
}

/// The part a sampled kernel or user symbol belongs to.
pub fn classify(symbol: &str) -> Part {
    let has = |parts: &[&str]| parts.iter().any(|p| symbol.contains(p));
    if symbol.starts_with("bpf_prog_") || symbol == "bpf_loop" {
        Part::Programs
    } else if has(&["ringbuf"]) {
        Part::RingBuffer
    } else if has(&["bpf_probe_read", "_nofault", "__virt_addr_valid"]) {
        Part::KernelReads
    } else if has(&[
        "htab_",
        "lookup_nulls_elem",
        "lookup_elem_raw",
        "array_map",
        "pcpu_freelist",
        "jhash",
    ]) {
        Part::Maps
    } else if has(&[
        "pvclock",
        "read_tsc",
        "ktime_get",
        "sched_clock",
        "bpf_get_current",
        "bpf_ktime",
    ]) {
        Part::ClockAndTask
    } else if has(&[
        "bpf_trace_run",
        "__bpf_trace_",
        "__traceiter_",
        "syscall_exit_work",
        "syscall_trace_enter",
    ]) {
        Part::TracepointEntry
    } else {
        Part::Rest
    }
}

/// `(percent, symbol)` of each line of `perf report --sort sym --stdio
/// -g none`: `   12.34%  [k] copy_from_kernel_nofault`.
pub fn parse_report(text: &str) -> Vec<(f64, String)> {
    text.lines()
        .filter_map(|line| {
            let line = line.trim_start();
            let (percent, rest) = line.split_once('%')?;
            let percent: f64 = percent.trim().parse().ok()?;
            let symbol = rest.split_once(']')?.1.trim();
            (!symbol.is_empty()).then(|| (percent, symbol.to_owned()))
        })
        .collect()
}

/// Each part's share (0..=1) of the samples.
pub fn shares(samples: &[(f64, String)]) -> Vec<(Part, f64)> {
    shares_by(samples, |symbol| Some(classify(symbol)))
}

/// The samples' shares (0..=1 of all of them) summed by `key` of their
/// symbol, in the order keys first appear; symbols without a key left out.
fn shares_by<K: PartialEq>(
    samples: &[(f64, String)],
    key: impl Fn(&str) -> Option<K>,
) -> Vec<(K, f64)> {
    let total: f64 = samples.iter().map(|(p, _)| p).sum();
    let mut sums: Vec<(K, f64)> = Vec::new();
    for (percent, symbol) in samples {
        let Some(k) = key(symbol) else { continue };
        match sums.iter_mut().find(|(known, _)| *known == k) {
            Some((_, share)) => *share += percent / total,
            None => sums.push((k, percent / total)),
        }
    }
    sums
}

/// The name of a JIT-compiled program or of one of its BPF global
/// functions (`bpf_prog_<tag>_<name>`, the kernel names each apart), or
/// `None` for any other symbol.
fn program_name(symbol: &str) -> Option<String> {
    let rest = symbol.strip_prefix("bpf_prog_")?;
    Some(unescape(
        rest.split_once('_').map_or(rest, |(_, name)| name),
    ))
}

/// BTF names keep only `[A-Za-z0-9_]`: the compiler writes any other
/// byte as `_XX_` (hex), so `step<…::Typed>` comes out as
/// `step_3C_…_3A__3A_Typed_3E_`.
fn unescape(name: &str) -> String {
    let bytes = name.as_bytes();
    let mut out = String::with_capacity(name.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = bytes.get(i..i + 4).filter(|w| w[0] == b'_' && w[3] == b'_');
        let byte = escaped
            .and_then(|w| std::str::from_utf8(&w[1..3]).ok())
            .and_then(|hex| u8::from_str_radix(hex, 16).ok())
            .filter(|b| b.is_ascii_punctuation());
        match byte {
            Some(b) => {
                out.push(b as char);
                i += 4;
            }
            None => {
                out.push(bytes[i] as char);
                i += 1;
            }
        }
    }
    out
}

/// Each program's and global function's share (0..=1) of all the
/// samples, largest first: which code the program instructions are.
pub fn program_shares(samples: &[(f64, String)]) -> Vec<(String, f64)> {
    let mut programs = shares_by(samples, program_name);
    programs.sort_by(|a, b| b.1.total_cmp(&a.1));
    programs
}

/// One workload's time per operation, split into parts.
pub struct ProfileRow {
    pub workload: Workload,
    pub ns_per_op: f64,
    pub shares: Vec<(Part, f64)>,
    /// The program instructions' share by JIT symbol (`program_shares`).
    pub programs: Vec<(String, f64)>,
}

impl ProfileRow {
    /// Nanoseconds per operation spent in `part`.
    pub fn ns(&self, part: Part) -> f64 {
        let share = self
            .shares
            .iter()
            .find(|(p, _)| *p == part)
            .map_or(0.0, |(_, s)| *s);
        share * self.ns_per_op
    }

    pub fn hook_ns(&self) -> f64 {
        HOOK_PARTS.iter().map(|p| self.ns(*p)).sum()
    }
}

impl Bench {
    /// The worker in the action cgroup under `perf record`, once per
    /// workload, with the monitor attached.
    pub(super) fn kernel_profile(&self) -> Result<Vec<ProfileRow>> {
        ensure!(
            Path::new(PERF).is_file(),
            "{PERF} is missing (`cargo xtask setup` installs linux-perf)"
        );
        let monitor = self.start_monitor("profile")?;
        let mut rows = Vec::new();
        for workload in [Workload::Repeat, Workload::Distinct] {
            rows.push(self.profile_run(workload)?);
        }
        Self::stop_monitor(monitor)?;
        Ok(rows)
    }

    fn profile_run(&self, workload: Workload) -> Result<ProfileRow> {
        let data = self.tmp.join(format!("perf-{}.data", workload.arg()));
        let wrapper: Vec<OsString> = [PERF, "record", "-q", "-e", "cpu-clock", "-F", FREQUENCY]
            .iter()
            .map(OsString::from)
            .chain(["-o".into(), data.clone().into_os_string(), "--".into()])
            .collect();
        let report: WorkerReport = self.timed_run(
            workload,
            &Placement {
                cgroup: Some(&self.action_cgroup),
                wrapper: &wrapper,
                ..Placement::default()
            },
        )?;
        let text = output(
            Command::new(PERF)
                .args([
                    "report",
                    "--stdio",
                    "--no-children",
                    "--sort",
                    "sym",
                    "-g",
                    "none",
                ])
                .args(["--percentage", "relative", "-i"])
                .arg(&data),
        )
        .with_context(|| format!("reading {}", data.display()))?;
        let _ = fs::remove_file(&data);
        let samples = parse_report(&text);
        ensure!(
            !samples.is_empty(),
            "perf recorded no samples of the {} worker",
            workload.arg()
        );
        Ok(ProfileRow {
            workload,
            ns_per_op: report.ns_per_pair,
            shares: shares(&samples),
            programs: program_shares(&samples),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symbols_fall_into_their_parts() {
        assert_eq!(classify("bpf_prog_21d3a8dea53c3d7b_report"), Part::Programs);
        assert_eq!(classify("copy_from_kernel_nofault"), Part::KernelReads);
        assert_eq!(classify("strncpy_from_user_nofault"), Part::KernelReads);
        assert_eq!(classify("lookup_nulls_elem_raw"), Part::Maps);
        assert_eq!(classify("__bpf_ringbuf_reserve"), Part::RingBuffer);
        assert_eq!(
            classify("pvclock_clocksource_read_nowd"),
            Part::ClockAndTask
        );
        assert_eq!(
            classify("bpf_get_current_ancestor_cgroup_id"),
            Part::ClockAndTask
        );
        assert_eq!(classify("bpf_trace_run2"), Part::TracepointEntry);
        assert_eq!(classify("path_openat"), Part::Rest);
        assert_eq!(classify("__GI___libc_open"), Part::Rest);
    }

    #[test]
    fn a_report_is_split_into_shares_that_sum_to_one() {
        let text = "# Samples: 8K of event 'cpu-clock'\n\
                    #\n\
                    \x20   30.00%  [k] copy_from_kernel_nofault\n\
                    \x20   10.00%  [k] bpf_prog_abc_report\n\
                    \x20   60.00%  [.] __GI___libc_open\n\
                    \n";
        let samples = parse_report(text);
        assert_eq!(samples.len(), 3);
        let shares = shares(&samples);
        let total: f64 = shares.iter().map(|(_, s)| s).sum();
        assert!((total - 1.0).abs() < 1e-9);
        let row = ProfileRow {
            workload: Workload::Repeat,
            ns_per_op: 1000.0,
            shares,
            programs: program_shares(&samples),
        };
        assert!((row.ns(Part::KernelReads) - 300.0).abs() < 1e-6);
        assert!((row.hook_ns() - 400.0).abs() < 1e-6);
        assert!((row.ns(Part::Rest) - 600.0).abs() < 1e-6);
    }

    #[test]
    fn program_instructions_are_split_by_program_and_global_function() {
        let text = "\x20   20.00%  [k] bpf_prog_0123456789abcdef_sys_exit_btf\n\
                    \x20   10.00%  [k] bpf_prog_fedcba9876543210_dpath_walk_cast\n\
                    \x20    5.00%  [k] bpf_prog_0011223344556677_sys_exit_btf\n\
                    \x20    4.00%  [k] bpf_prog_8899aabbccddeeff_step_3C_a_3A__3A_Typed_3E_\n\
                    \x20   61.00%  [k] do_sys_openat2\n";
        let programs = program_shares(&parse_report(text));
        assert_eq!(programs.len(), 3, "{programs:?}");
        assert_eq!(programs[0].0, "sys_exit_btf");
        assert!((programs[0].1 - 0.25).abs() < 1e-9);
        assert_eq!(programs[1].0, "dpath_walk_cast");
        assert!((programs[1].1 - 0.10).abs() < 1e-9);
        assert_eq!(programs[2].0, "step<a::Typed>");
    }
}
