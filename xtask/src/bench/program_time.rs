//! What the kernel programs themselves cost per operation, by the kernel's
//! own accounting: with `kernel.bpf_stats_enabled` set, each program's fd
//! shows its run count and summed run time (`run_cnt`, `run_time_ns` in
//! `/proc/<pid>/fdinfo`). The timed rows swing by ±15 % from run to run on
//! these VMs; this count swings far less (it still rises a little when the
//! other vCPU is busy), so it says what the hooks cost where the timed
//! medians cannot tell a few points from noise. Two things are in it
//! that are not the programs': the clock read around each run (the floor's
//! row, an empty program, is that bias) and other processes' syscalls
//! running the same hook meanwhile (the runs-per-operation column shows
//! how many there were).

use std::{collections::BTreeMap, fs, path::Path, time::Duration};

use anyhow::{Context as _, Result, ensure};

use super::{
    Bench, Placement, Setup, stats_sysctl::StatsSetting, worker::WORKLOADS, worker::Workload,
};

/// The programs' run time per workload, and what verifying them took.
pub struct ProgramTime {
    pub rows: Vec<ProgramRow>,
    /// The monitor's programs, all together (fdinfo `verified_insns`).
    pub verified_insns: u64,
}

/// One setup's programs on one workload.
pub struct ProgramRow {
    pub setup: Setup,
    pub workload: Workload,
    /// Program run time per operation (ns), every program of the setup.
    pub ns_per_op: f64,
    /// Program runs per operation (2 per open+close, 3 per connect, from
    /// the worker alone).
    pub runs_per_op: f64,
}

/// One program's line of accounting, from its fd's fdinfo.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub struct ProgramInfo {
    pub id: u32,
    pub run_time_ns: u64,
    pub run_cnt: u64,
    /// Instructions the verifier processed when it was loaded.
    pub verified_insns: u64,
}

/// The `ProgramInfo` of one fdinfo text, `None` for an fd that is no
/// program.
pub fn parse_fdinfo(text: &str) -> Option<ProgramInfo> {
    let field = |name: &str| {
        text.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
            .and_then(|value| value.trim().parse::<u64>().ok())
    };
    Some(ProgramInfo {
        id: u32::try_from(field("prog_id")?).ok()?,
        run_time_ns: field("run_time_ns").unwrap_or(0),
        run_cnt: field("run_cnt")?,
        verified_insns: field("verified_insns").unwrap_or(0),
    })
}

/// Every program `pid` holds, once each however many fds it has.
fn programs_of(pid: u32) -> Result<BTreeMap<u32, ProgramInfo>> {
    let dir = format!("/proc/{pid}/fdinfo");
    let mut programs = BTreeMap::new();
    for entry in fs::read_dir(&dir).with_context(|| format!("listing {dir}"))? {
        // An fd closed meanwhile is no program of the setup's.
        let Ok(text) = fs::read_to_string(entry?.path()) else {
            continue;
        };
        if let Some(info) = parse_fdinfo(&text) {
            programs.insert(info.id, info);
        }
    }
    ensure!(!programs.is_empty(), "process {pid} holds no BPF program");
    Ok(programs)
}

/// Summed `(run_time_ns, run_cnt)` of every program `pid` holds.
pub(crate) fn held_programs(pid: u32) -> Result<(u64, u64)> {
    Ok(programs_of(pid)?
        .values()
        .fold((0, 0), |(t, r), p| (t + p.run_time_ns, r + p.run_cnt)))
}

/// An empty program on the monitor's hook, run beside the monitor's own
/// while bpf_stats is on: its time per run is what the accounting itself
/// adds to every run (the clock reads around it; the empty body is
/// nothing), to be taken out of the monitor's programs' time. Measured in
/// the same build, so it meets the same phase of the machine.
pub(crate) struct StatsBias {
    floor: testkit::daemon::Daemon,
    before: (u64, u64),
}

impl StatsBias {
    /// Starts `monitor bench-floor` (its stderr to `stderr_path`) and takes
    /// its first reading once it is attached.
    pub(crate) fn start(monitor_bin: &Path, stderr_path: &Path) -> Result<Self> {
        let floor = super::start_floor_program(monitor_bin, stderr_path)?;
        let before = held_programs(floor.id())?;
        Ok(Self { floor, before })
    }

    /// ns per run of the empty program since `start`; it is stopped.
    pub(crate) fn finish(self) -> Result<f64> {
        let (ns, runs) = held_programs(self.floor.id())?;
        let status = self.floor.stop(libc::SIGTERM, Duration::from_secs(10))?;
        ensure!(status.success(), "monitor bench-floor exited with {status}");
        let runs = runs.saturating_sub(self.before.1);
        ensure!(runs > 0, "the empty program never ran");
        Ok(ns.saturating_sub(self.before.0) as f64 / runs as f64)
    }
}

/// Programs' counted time: `runs` runs in `seconds`, and the accounting's
/// own time per run (`bias_ns_per_run`, [`StatsBias`]) when it was measured.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CountedPrograms {
    pub seconds: f64,
    pub runs: u64,
    pub bias_ns_per_run: Option<f64>,
}

impl CountedPrograms {
    /// The programs' own time: the counted time less the accounting's
    /// (all of it when the bias was not measured).
    pub fn own_s(&self) -> f64 {
        let bias = self.bias_ns_per_run.unwrap_or(0.0) * self.runs as f64 / 1e9;
        (self.seconds - bias).max(0.0)
    }
}

/// Instructions the verifier processed for every program `pid` holds: its
/// start's verification work, the same on every run of one kernel.
pub(crate) fn verified_instructions(pid: u32) -> Result<u64> {
    Ok(programs_of(pid)?.values().map(|p| p.verified_insns).sum())
}

/// Polls the programs `pid` holds every `PERIOD` until it exits; the
/// reading with the most runs is what its programs ran (all but the last
/// period's).
pub(crate) struct ProgramSampler {
    thread: std::thread::JoinHandle<Option<(u64, u64)>>,
}

impl ProgramSampler {
    const PERIOD: Duration = Duration::from_millis(100);

    pub(crate) fn start(pid: u32) -> Self {
        let thread = std::thread::spawn(move || {
            let mut last: Option<(u64, u64)> = None;
            // Until it is reaped (a zombie holds no fd: its readings fail).
            // The programs' counts only grow while they are held: a
            // reading taken after the monitor closed them (it writes its
            // report after) sums to less, and is not the answer (the
            // 16:25 bench counted 0 runs that way).
            while Path::new(&format!("/proc/{pid}")).exists() {
                if let Ok(reading) = held_programs(pid) {
                    last = Some(with_more_runs(last, reading));
                }
                std::thread::sleep(Self::PERIOD);
            }
            last
        });
        Self { thread }
    }

    /// `(run_time_ns, run_cnt)` at the last reading, `None` if the process
    /// never held a program.
    pub(crate) fn finish(self) -> Option<(u64, u64)> {
        self.thread.join().ok().flatten()
    }
}

impl Bench {
    /// One run per workload for the floor, the monitor outside and the
    /// monitor inside, with the programs' run time counted.
    pub(super) fn program_time(&self) -> Result<ProgramTime> {
        let _stats = StatsSetting::on()?;
        let mut rows = self.with_floor("stats", |pid| {
            WORKLOADS
                .iter()
                .map(|&w| self.counted_run(pid, Setup::Floor, w, &Placement::default()))
                .collect::<Result<Vec<_>>>()
        })?;
        let monitor = self.start_monitor("stats")?;
        let pid = monitor.daemon.id();
        let verified_insns = verified_instructions(pid)?;
        for workload in WORKLOADS {
            let outside = Placement::default();
            rows.push(self.counted_run(pid, Setup::MonitorOutside, workload, &outside)?);
            rows.push(self.counted_run(pid, Setup::MonitorInside, workload, &self.inside())?);
        }
        Self::stop_monitor(monitor)?;
        Ok(ProgramTime {
            rows,
            verified_insns,
        })
    }

    fn counted_run(
        &self,
        pid: u32,
        setup: Setup,
        workload: Workload,
        placement: &Placement<'_>,
    ) -> Result<ProgramRow> {
        let (time_before, runs_before) = held_programs(pid)?;
        let report = self.timed_run(workload, placement)?;
        let (time_after, runs_after) = held_programs(pid)?;
        let ops = report.opens.max(1) as f64;
        Ok(ProgramRow {
            setup,
            workload,
            ns_per_op: time_after.saturating_sub(time_before) as f64 / ops,
            runs_per_op: runs_after.saturating_sub(runs_before) as f64 / ops,
        })
    }
}

/// Of the reading kept so far and a new one, the one with more runs.
fn with_more_runs(kept: Option<(u64, u64)>, reading: (u64, u64)) -> (u64, u64) {
    match kept {
        Some(kept) if kept.1 > reading.1 => kept,
        _ => reading,
    }
}

/// The row of `setup` on `workload`.
pub fn find(rows: &[ProgramRow], setup: Setup, workload: Workload) -> Option<&ProgramRow> {
    rows.iter()
        .find(|r| r.setup == setup && r.workload == workload)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_program_fdinfo_gives_its_id_time_and_runs() {
        let text = "pos:\t0\nflags:\t02000002\nmnt_id:\t16\nino:\t2071\n\
                    prog_type:\t26\nprog_jited:\t1\nprog_tag:\t8db25b5707e68bc8\n\
                    memlock:\t4096\nprog_id:\t1234\nrun_time_ns:\t987654\n\
                    run_cnt:\t4321\nrecursion_misses:\t0\nverified_insns:\t5000\n";
        let expected = ProgramInfo {
            id: 1234,
            run_time_ns: 987654,
            run_cnt: 4321,
            verified_insns: 5000,
        };
        assert_eq!(parse_fdinfo(text), Some(expected));
    }

    #[test]
    fn a_reading_after_the_programs_were_closed_is_not_kept() {
        let kept = with_more_runs(None, (10, 100));
        let kept = with_more_runs(Some(kept), (25, 300));
        assert_eq!(with_more_runs(Some(kept), (0, 0)), (25, 300));
        assert_eq!(with_more_runs(Some(kept), (30, 301)), (30, 301));
    }

    #[test]
    fn other_fds_are_no_program() {
        let map = "pos:\t0\nflags:\t02000002\nmap_type:\t1\nkey_size:\t4\nmap_id:\t77\n";
        assert_eq!(parse_fdinfo(map), None);
        assert_eq!(
            parse_fdinfo("pos:\t0\nflags:\t0100002\nmnt_id:\t30\n"),
            None
        );
    }
}
