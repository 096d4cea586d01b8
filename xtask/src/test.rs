//! `cargo xtask test`: setup, build every target (fails fast), then the unit
//! tests and the integration tests. Both test phases run even if the first
//! fails; all failures are reported at the end. The integration tests load
//! eBPF programs: without root that phase fails, it is never skipped.

use anyhow::{Result, bail};

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

    println!("test: unit tests");
    if let Err(error) =
        exec(cargo().args(["test", "--workspace", "--exclude", INTEGRATION_PACKAGE]))
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
        exec(cargo().env("MONITOR_BIN", &monitor_bin).args([
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

    if failures.is_empty() {
        println!("test: all phases passed");
        return Ok(());
    }
    eprintln!("test: {} phase(s) failed:", failures.len());
    for failure in &failures {
        eprintln!("  - {failure}");
    }
    bail!("{} of 2 test phases failed", failures.len())
}
