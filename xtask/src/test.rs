//! `cargo xtask test`: setup, build every target (fails fast), then the unit
//! tests, the function-length lint, a short run of every fuzz target (its
//! regression inputs first) and the integration tests. Every phase runs even if an earlier one fails; all
//! failures are reported at the end. The integration tests load eBPF
//! programs: without root that phase fails, it is never skipped.

use std::{
    io::{BufRead as _, BufReader},
    path::Path,
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result, bail};

use crate::{
    fuzz, setup,
    util::{cargo, exec, is_root, target_dir},
};

const INTEGRATION_PACKAGE: &str = "monitor-integration-tests";
/// How long each fuzz target runs here (`cargo xtask fuzz` runs longer).
const CI_FUZZ_SECONDS: u64 = 5;
const PHASES: usize = 4;

pub fn run() -> Result<()> {
    setup::run()?;
    exec(cargo().args(["build", "--workspace", "--all-targets"]))?;
    let monitor_bin = target_dir()?.join("debug").join("monitor");

    let mut failures = Vec::new();
    let mut tally = Tally::default();

    println!("test: unit tests");
    if let Err(error) =
        tally.run(cargo().args(["test", "--workspace", "--exclude", INTEGRATION_PACKAGE]))
    {
        failures.push(format!("unit tests: {error:#}"));
    }

    println!(
        "test: lint (functions over {} lines)",
        crate::lint::MAX_LINES
    );
    match crate::lint::run(crate::lint::Options::default()) {
        Ok(()) => tally.passed += 1,
        Err(error) => {
            tally.failed += 1;
            eprintln!("test: FAILED: lint: {error:#}");
            failures.push(format!("lint: {error:#}"));
        }
    }

    println!("test: fuzz targets ({CI_FUZZ_SECONDS} s each, regression inputs first)");
    if let Err(error) = fuzz_phase(&mut tally) {
        eprintln!("test: FAILED: fuzz: {error:#}");
        failures.push(format!("fuzz targets: {error:#}"));
    }

    println!(
        "test: integration tests (MONITOR_BIN={})",
        monitor_bin.display()
    );
    if let Err(error) = integration_phase(&mut tally, &monitor_bin) {
        eprintln!("test: FAILED: {error:#}");
        failures.push(format!("integration tests: {error:#}"));
    }

    let closing = format!("summary: {} passed, {} failed", tally.passed, tally.failed);
    if failures.is_empty() {
        println!("test: all phases passed");
        // The closing line counts every cargo test binary (cargo's own last
        // line is often a doc-test run of 0 tests) and each fuzz target as
        // one test.
        println!("{closing}");
        return Ok(());
    }
    eprintln!("test: {} phase(s) failed:", failures.len());
    for failure in &failures {
        eprintln!("  - {failure}");
    }
    println!("{closing}");
    bail!("{} of {PHASES} test phases failed", failures.len())
}

/// Each fuzz target is one test: passed when its regression inputs and its
/// short run found no crash. A failed install or build fails them all.
fn fuzz_phase(tally: &mut Tally) -> Result<()> {
    let outcomes = fuzz::fuzz(fuzz::TARGETS, CI_FUZZ_SECONDS).inspect_err(|_| {
        tally.failed += fuzz::TARGETS.len() as u64;
    })?;
    let mut crashed = Vec::new();
    for fuzz::Outcome { target, result } in outcomes {
        match result {
            Ok(runs) => {
                tally.passed += 1;
                println!("test: fuzz {target}: ok ({runs} executions)");
            }
            Err(error) => {
                tally.failed += 1;
                crashed.push(format!("{target}: {error:#}"));
            }
        }
    }
    if !crashed.is_empty() {
        bail!("{}", crashed.join("; "));
    }
    Ok(())
}

fn integration_phase(tally: &mut Tally, monitor_bin: &Path) -> Result<()> {
    if !is_root() {
        Err(anyhow::anyhow!(
            "integration tests need root (they load eBPF programs): run `sudo -E cargo xtask test`"
        ))
    } else if !monitor_bin.is_file() {
        Err(anyhow::anyhow!(
            "{} does not exist after the build",
            monitor_bin.display()
        ))
    } else {
        tally.run(cargo().env("MONITOR_BIN", monitor_bin).args([
            "test",
            "-p",
            INTEGRATION_PACKAGE,
            "--",
            "--test-threads=1",
        ]))
    }
}

/// Passed/failed counts summed over cargo's "test result:" lines.
#[derive(Default)]
struct Tally {
    passed: u64,
    failed: u64,
}

impl Tally {
    /// Runs `cmd`, echoing its stdout while counting test results; fails
    /// like `exec` when the command does.
    fn run(&mut self, cmd: &mut Command) -> Result<()> {
        let shown = crate::util::display(cmd);
        let mut child = cmd
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot run `{shown}`"))?;
        let stdout = child.stdout.take().expect("piped stdout");
        for line in BufReader::new(stdout).lines() {
            let line = line?;
            println!("{line}");
            self.count(&line);
        }
        let status = child.wait()?;
        if !status.success() {
            bail!("`{shown}` failed: {status}");
        }
        Ok(())
    }

    fn count(&mut self, line: &str) {
        let Some(rest) = line.strip_prefix("test result: ") else {
            return;
        };
        for part in rest.split(';') {
            let mut words = part.split_whitespace().rev();
            let (Some(what), Some(n)) = (words.next(), words.next()) else {
                continue;
            };
            let Ok(n) = n.parse::<u64>() else { continue };
            match what {
                "passed" => self.passed += n,
                "failed" => self.failed += n,
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Tally;

    #[test]
    fn counts_cargo_result_lines() {
        let mut t = Tally::default();
        t.count("test result: ok. 63 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.05s");
        t.count("test result: FAILED. 9 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out");
        t.count("running 3 tests");
        assert_eq!((t.passed, t.failed), (72, 1));
    }
}
