//! `cargo xtask test`: setup, build every target (fails fast), then the unit
//! tests and the integration tests. Both test phases run even if the first
//! fails; all failures are reported at the end. The integration tests load
//! eBPF programs: without root that phase fails, it is never skipped.

use std::{
    io::{BufRead as _, BufReader},
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result, bail};

use crate::{
    setup,
    util::{cargo, exec, is_root, target_dir},
};

const INTEGRATION_PACKAGE: &str = "monitor-integration-tests";

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
        "test: integration tests (MONITOR_BIN={})",
        monitor_bin.display()
    );
    let integration = if !is_root() {
        Err(anyhow::anyhow!(
            "integration tests need root (they load eBPF programs): run `sudo -E cargo xtask test`"
        ))
    } else if !monitor_bin.is_file() {
        Err(anyhow::anyhow!(
            "{} does not exist after the build",
            monitor_bin.display()
        ))
    } else {
        tally.run(cargo().env("MONITOR_BIN", &monitor_bin).args([
            "test",
            "-p",
            INTEGRATION_PACKAGE,
            "--",
            "--test-threads=1",
        ]))
    };
    if let Err(error) = integration {
        eprintln!("test: FAILED: {error:#}");
        failures.push(format!("integration tests: {error:#}"));
    }

    let closing = format!("summary: {} passed, {} failed", tally.passed, tally.failed);
    if failures.is_empty() {
        println!("test: all phases passed");
        // The closing line counts every cargo test binary (cargo's own last
        // line is often a doc-test run of 0 tests).
        println!("{closing}");
        return Ok(());
    }
    eprintln!("test: {} phase(s) failed:", failures.len());
    for failure in &failures {
        eprintln!("  - {failure}");
    }
    println!("{closing}");
    bail!("{} of 2 test phases failed", failures.len())
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
