//! `cargo xtask fuzz [--seconds N] [TARGET…]`: the cargo-fuzz targets in
//! `fuzz/` (libFuzzer, nightly toolchain), each replaying its committed
//! regression inputs first and then fuzzing for a bounded time.
//! `cargo xtask test` runs every target for a few seconds.
//!
//! The fuzz build never builds the kernel programs (`MONITOR_SKIP_EBPF_BUILD`):
//! the targets exercise pure userspace parsing. Inputs libFuzzer finds go to
//! `target/fuzz/corpus/<target>/`, crash inputs to
//! `target/fuzz/artifacts/<target>/`; the committed seeds in
//! `fuzz/corpus/<target>/` are only read.

use std::{
    fs,
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result, anyhow, bail};

use crate::{
    setup,
    util::{display, exec, target_dir, workspace_root},
};

/// Every fuzz target (a `[[bin]]` of fuzz/Cargo.toml).
pub const TARGETS: &[&str] = &[
    "decode",
    "config",
    "declarations",
    "paths",
    "execlog",
    "dns",
];
pub const CARGO_FUZZ_VERSION: &str = "0.13.2";
/// Inputs that take longer than this count as a crash (a hang).
const INPUT_TIMEOUT_SECONDS: u64 = 10;

#[derive(clap::Args)]
pub struct Options {
    /// How long to fuzz each target, in seconds.
    #[arg(long, default_value_t = 60)]
    seconds: u64,
    /// Targets to run (default: all): decode, config, declarations, paths, execlog, dns.
    targets: Vec<String>,
}

/// How one target's run ended: the executions libFuzzer reported, or why it
/// failed (a crash names its input).
pub struct Outcome {
    pub target: &'static str,
    pub result: Result<u64>,
}

pub fn run(options: Options) -> Result<()> {
    let targets = select(&options.targets)?;
    let outcomes = fuzz(&targets, options.seconds)?;
    let mut failed = 0;
    for Outcome { target, result } in &outcomes {
        match result {
            Ok(runs) => println!("fuzz: {target}: {runs} executions, no crash"),
            Err(error) => {
                failed += 1;
                eprintln!("fuzz: {target}: FAILED: {error:#}");
            }
        }
    }
    if failed > 0 {
        bail!("{failed} of {} fuzz targets failed", outcomes.len());
    }
    Ok(())
}

fn select(names: &[String]) -> Result<Vec<&'static str>> {
    if names.is_empty() {
        return Ok(TARGETS.to_vec());
    }
    names
        .iter()
        .map(|name| {
            TARGETS
                .iter()
                .copied()
                .find(|target| target == name)
                .ok_or_else(|| anyhow!("no fuzz target {name:?}; there are {}", TARGETS.join(", ")))
        })
        .collect()
}

/// Installs what is missing, builds every target, then runs each of
/// `targets` for `seconds`. `Err` only when nothing could run (install or
/// build failed); each target's own failure is in its [`Outcome`].
pub fn fuzz(targets: &[&'static str], seconds: u64) -> Result<Vec<Outcome>> {
    setup::nightly().context("fuzz: rustup nightly toolchain")?;
    install_cargo_fuzz().context("fuzz: cargo-fuzz")?;
    exec(cargo_fuzz().arg("build")).context("fuzz: building the targets")?;
    let work = target_dir()?.join("fuzz");
    Ok(targets
        .iter()
        .map(|&target| Outcome {
            target,
            result: fuzz_target(target, seconds, &work),
        })
        .collect())
}

/// `cargo fuzz --version` says the pinned version, or it is installed.
fn install_cargo_fuzz() -> Result<()> {
    let wanted = format!("cargo-fuzz {CARGO_FUZZ_VERSION}");
    let found = Command::new("cargo")
        .args(["fuzz", "--version"])
        .stderr(Stdio::null())
        .output()
        .ok()
        .filter(|out| out.status.success())
        .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_owned());
    if found.as_deref() == Some(wanted.as_str()) {
        println!("fuzz: {wanted}: ok");
        return Ok(());
    }
    println!("fuzz: installing {wanted} (found {found:?}; a few minutes)");
    exec(Command::new("cargo").args([
        "install",
        "cargo-fuzz",
        "--locked",
        "--version",
        CARGO_FUZZ_VERSION,
    ]))
}

/// `cargo +nightly fuzz`, from the workspace root, without the eBPF build.
fn cargo_fuzz() -> Command {
    let mut cmd = Command::new("cargo");
    cmd.current_dir(workspace_root())
        .env("MONITOR_SKIP_EBPF_BUILD", "1")
        .args(["+nightly", "fuzz"]);
    cmd
}

/// Replays `fuzz/regressions/<target>/` (if any), then fuzzes from the
/// committed seeds plus what earlier runs found. Returns the executions.
fn fuzz_target(target: &str, seconds: u64, work: &Path) -> Result<u64> {
    let artifacts = work.join("artifacts").join(target);
    if artifacts.exists() {
        fs::remove_dir_all(&artifacts)
            .with_context(|| format!("removing {}", artifacts.display()))?;
    }
    fs::create_dir_all(&artifacts).with_context(|| format!("creating {}", artifacts.display()))?;
    let fuzz_dir = workspace_root().join("fuzz");
    let regressions = fuzz_dir.join("regressions").join(target);
    if regressions.is_dir() {
        let count = fs::read_dir(&regressions)?.count();
        println!("fuzz: {target}: replaying {count} regression input(s)");
        libfuzzer(target, &[regressions], &artifacts, "-runs=0")
            .context("a regression input fails again")?;
    }
    let found = work.join("corpus").join(target);
    fs::create_dir_all(&found).with_context(|| format!("creating {}", found.display()))?;
    let seeds = fuzz_dir.join("corpus").join(target);
    println!("fuzz: {target}: fuzzing for {seconds} s");
    libfuzzer(
        target,
        &[found, seeds],
        &artifacts,
        &format!("-max_total_time={seconds}"),
    )
}

/// One `cargo fuzz run`: libFuzzer's output is echoed without its progress
/// lines; returns the executions from its closing `Done N runs` line. On
/// failure the error names the crash input libFuzzer wrote.
fn libfuzzer(target: &str, corpora: &[PathBuf], artifacts: &Path, flag: &str) -> Result<u64> {
    let mut cmd = cargo_fuzz();
    cmd.args(["run", target])
        .args(corpora)
        .arg("--")
        .arg(format!("-artifact_prefix={}/", artifacts.display()))
        .arg(format!("-timeout={INPUT_TIMEOUT_SECONDS}"))
        .arg(flag)
        .stderr(Stdio::piped());
    let shown = display(&cmd);
    let mut child = cmd
        .spawn()
        .with_context(|| format!("failed to start `{shown}`"))?;
    let stderr = child.stderr.take().expect("piped stderr");
    let mut runs = None;
    let mut in_dictionary = false;
    for line in BufReader::new(stderr).lines() {
        let line = line?;
        if let Some(n) = done_runs(&line) {
            runs = Some(n);
        }
        // The closing "Recommended dictionary" block is long and not needed.
        if line.starts_with("###### ") {
            in_dictionary = !line.contains("End of");
            continue;
        }
        if !in_dictionary && !is_progress(&line) {
            eprintln!("{line}");
        }
    }
    let status = child.wait()?;
    if !status.success() {
        bail!(
            "{}",
            crash_report(target, artifacts, &format!("`{shown}` failed: {status}"))
        );
    }
    runs.ok_or_else(|| anyhow!("`{shown}` printed no `Done N runs` line"))
}

/// libFuzzer's `#1234\tNEW cov: …` lines: many, and only interesting live.
fn is_progress(line: &str) -> bool {
    line.strip_prefix('#')
        .is_some_and(|rest| rest.starts_with(|c: char| c.is_ascii_digit()))
}

/// N from `Done N runs in S second(s)`.
fn done_runs(line: &str) -> Option<u64> {
    line.strip_prefix("Done ")?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// What failed, where the crash input is and how to keep it.
fn crash_report(target: &str, artifacts: &Path, failure: &str) -> String {
    let inputs: Vec<PathBuf> = fs::read_dir(artifacts)
        .map(|entries| entries.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    let Some(first) = inputs.first() else {
        return format!(
            "{failure} (no crash input was written to {})",
            artifacts.display()
        );
    };
    let listed: Vec<String> = inputs.iter().map(|p| p.display().to_string()).collect();
    format!(
        "{failure}; crash input: {}; reproduce: `cargo +nightly fuzz run {target} {}`; \
         once fixed, keep it: `cp {} fuzz/regressions/{target}/`",
        listed.join(", "),
        first.display(),
        first.display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_libfuzzer_lines() {
        assert_eq!(done_runs("Done 123456 runs in 5 second(s)"), Some(123456));
        assert_eq!(done_runs("INFO: Done"), None);
        assert!(is_progress(
            "#2048\tpulse  cov: 10 ft: 12 corp: 3/40b exec/s: 1024"
        ));
        assert!(!is_progress("#![no_main]"));
        assert!(!is_progress("==123== ERROR: libFuzzer: deadly signal"));
    }

    #[test]
    fn selects_known_targets_only() {
        assert_eq!(select(&[]).unwrap(), TARGETS);
        assert_eq!(select(&["paths".into()]).unwrap(), ["paths"]);
        assert!(select(&["nope".into()]).is_err());
    }
}
