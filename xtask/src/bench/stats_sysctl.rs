//! `kernel.bpf_stats_enabled`: on only where the programs' run time is
//! counted, off everywhere something is timed. On, every program run reads
//! the clock twice; in these VMs each read is a `pvclock` read, measured at
//! 8.7 % of a monitored open's samples. A run killed while it held the
//! setting on leaves it on for whatever runs next: the timed commands turn
//! it off themselves (and say so) rather than trust what they find.

use std::fs;

use anyhow::{Context as _, Result, ensure};

const STATS_SYSCTL: &str = "/proc/sys/kernel/bpf_stats_enabled";

/// The setting held at a value while this lives; what was there before is
/// written back when it is dropped.
pub(crate) struct StatsSetting {
    previous: String,
}

impl StatsSetting {
    /// Counting on (bpf_stats, `bench-ab`).
    pub(crate) fn on() -> Result<Self> {
        Self::set("1")
    }

    /// Counting off, for timed runs; logs when it was found on.
    pub(crate) fn off() -> Result<Self> {
        let setting = Self::set("0")?;
        if setting.was_on() {
            println!(
                "kernel.bpf_stats_enabled was 1 (left on by an interrupted run?): \
                 set to 0 while timing, written back at the end"
            );
        }
        Ok(setting)
    }

    /// Whether the setting was on before this guard.
    pub(crate) fn was_on(&self) -> bool {
        self.previous.trim() != "0"
    }

    fn set(value: &str) -> Result<Self> {
        let previous =
            fs::read_to_string(STATS_SYSCTL).with_context(|| format!("reading {STATS_SYSCTL}"))?;
        fs::write(STATS_SYSCTL, value)
            .with_context(|| format!("writing {value} to {STATS_SYSCTL}"))?;
        Ok(Self { previous })
    }
}

impl Drop for StatsSetting {
    fn drop(&mut self) {
        let _ = fs::write(STATS_SYSCTL, self.previous.trim());
    }
}

/// Fails unless counting is off: called before each timed round and build,
/// so that nothing timed runs with the clock reads in it.
pub(crate) fn ensure_off() -> Result<()> {
    let value =
        fs::read_to_string(STATS_SYSCTL).with_context(|| format!("reading {STATS_SYSCTL}"))?;
    ensure!(
        value.trim() == "0",
        "{STATS_SYSCTL} is {} during a timed run: every program run would also read the clock",
        value.trim()
    );
    Ok(())
}
