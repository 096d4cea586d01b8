//! `perf record` attached to a running process, and its samples turned
//! into folded stacks and a flame graph (inferno).

use std::{
    fs,
    io::{BufReader, BufWriter},
    path::Path,
    process::{Child, Command, Stdio},
};

use anyhow::{Context as _, Result, ensure};
use inferno::collapse::Collapse as _;

use crate::{
    bench::kernel_profile::PERF,
    util::{cgroup2_root, display},
};

/// What `perf` samples.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum Event {
    /// CPU time (a software clock: the VM has no hardware counters).
    CpuClock,
    /// Every page fault: where the daemon's resident memory is first
    /// touched (what its RSS grows by).
    PageFaults,
}

impl Event {
    fn args(self) -> [&'static str; 4] {
        match self {
            Event::CpuClock => ["-e", "cpu-clock", "-F", "499"],
            Event::PageFaults => ["-e", "page-faults", "-c", "1"],
        }
    }

    /// How counts are shown: (unit, counts per unit).
    pub fn unit(self) -> (&'static str, f64) {
        match self {
            Event::CpuClock => ("ms of CPU", 1e6),
            Event::PageFaults => ("page faults", 1.0),
        }
    }
}

/// A recording to make of each monitored build's daemon.
#[derive(Clone, Debug)]
pub struct Recording {
    pub out: std::path::PathBuf,
    pub event: Event,
}

/// Starts recording what runs in `cgroup` (the daemon's own: its threads,
/// not the build it starts, which `monitor exec` moves out) into `out`,
/// until [`finish`]. DWARF call graphs: the release binary has no frame pointers, but its
/// `.eh_frame` unwinds.
pub fn record(cgroup: &Path, recording: &Recording) -> Result<Child> {
    ensure!(
        Path::new(PERF).is_file(),
        "{PERF} is missing (apt-get install linux-perf)"
    );
    let mut cmd = Command::new(PERF);
    cmd.arg("record")
        .args(recording.event.args())
        .args(["--call-graph", "dwarf,16384", "-q", "-o"])
        .arg(&recording.out)
        .arg("-a")
        .arg("-G")
        .arg(cgroup.strip_prefix(cgroup2_root()?)?)
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    cmd.spawn()
        .with_context(|| format!("starting `{}`", display(&cmd)))
}

/// Stops `perf record` (SIGINT) and waits for it to write its file.
pub fn finish(mut perf: Child) -> Result<()> {
    // SAFETY: signalling our own child, which has not been reaped yet.
    unsafe { libc::kill(perf.id() as libc::pid_t, libc::SIGINT) };
    let status = perf.wait().context("waiting for perf record")?;
    ensure!(
        status.success() || status.code() == Some(130) || status.code().is_none(),
        "perf record failed: {status}"
    );
    Ok(())
}

/// `perf script` of `data`, folded into one line per distinct stack
/// (`frame;frame;… count`, outermost first).
pub fn folded_stacks(data: &Path) -> Result<String> {
    let mut cmd = Command::new(PERF);
    cmd.args(["script", "--no-inline", "-i"])
        .arg(data)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut child = cmd
        .spawn()
        .with_context(|| format!("starting `{}`", display(&cmd)))?;
    let script = BufReader::new(child.stdout.take().expect("piped stdout"));
    let mut folded = Vec::new();
    let mut folder = inferno::collapse::perf::Folder::default();
    folder
        .collapse(script, &mut folded)
        .context("folding the output of perf script")?;
    let status = child.wait()?;
    ensure!(status.success(), "`{}` failed: {status}", display(&cmd));
    String::from_utf8(folded).context("folded stacks are not UTF-8")
}

/// Writes the flame graph of `folded` to `svg`.
pub fn flame_graph(folded: &str, title: &str, event: Event, svg: &Path) -> Result<()> {
    if let Some(dir) = svg.parent() {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let mut options = inferno::flamegraph::Options::default();
    options.title = title.to_owned();
    options.count_name = match event {
        Event::CpuClock => "ns of CPU",
        Event::PageFaults => "page faults",
    }
    .to_owned();
    let file = fs::File::create(svg).with_context(|| format!("creating {}", svg.display()))?;
    inferno::flamegraph::from_lines(&mut options, folded.lines(), BufWriter::new(file))
        .with_context(|| format!("writing {}", svg.display()))
}
