//! What any program on `sys_exit` costs one syscall, measured apart:
//! `getppid` (no hook of the monitor watches it) timed bare and with the
//! empty program attached, in pairs whose order alternates. The builds'
//! side-by-side total charges the neighbour this for each of its syscalls;
//! taken from the open+close rows instead, it moved with their noise (0,
//! 16 and 160 ns per syscall in three runs). A `getppid` in the worker's
//! loop is 115–180 ns and the entry 25–35 more, so it stands out of the
//! noise in a few pairs.

use std::fmt::Write as _;

use anyhow::{Result, ensure};

use super::{Bench, Placement, stats, worker::Workload};

/// `getppid` calls per run for each open+close pair of the other rows
/// (200,000 pairs: 3,000,000 calls, ~0.5 s).
pub const CALLS_PER_PAIR: u64 = 15;

/// ns per `getppid`, bare and with the empty program, per pair.
pub struct EntryCost {
    pub pairs: Vec<(f64, f64)>,
    pub calls: u64,
}

impl EntryCost {
    /// Each pair's floor minus bare: ns the empty program adds to one
    /// syscall.
    pub fn added(&self) -> Vec<f64> {
        self.pairs
            .iter()
            .map(|(bare, floor)| floor - bare)
            .collect()
    }

    /// The median of `added`, never below 0; `None` without pairs.
    pub fn ns_per_syscall(&self) -> Option<f64> {
        let added = self.added();
        (!added.is_empty()).then(|| stats::median(&added).max(0.0))
    }
}

/// `pairs` pairs of one bare and one floor run, the floor attached afresh
/// for each; even pairs time bare first.
pub fn measure(bench: &Bench, pairs: usize) -> Result<EntryCost> {
    ensure!(pairs > 0, "the entry needs at least one pair");
    let time = || bench.timed_run(Workload::Getppid, &Placement::default());
    let with_floor = |pair: usize| bench.with_floor(&format!("entry{pair}"), |_| time());
    let mut timed = Vec::with_capacity(pairs);
    for pair in 0..pairs {
        let (bare, floor) = if pair % 2 == 0 {
            let bare = time()?;
            (bare, with_floor(pair)?)
        } else {
            let floor = with_floor(pair)?;
            (time()?, floor)
        };
        let (bare, floor) = (bare.ns_per_pair, floor.ns_per_pair);
        println!(
            "bench: entry pair {}/{pairs}: getppid bare {bare:.1} ns, with the empty program {floor:.1} ns",
            pair + 1
        );
        timed.push((bare, floor));
    }
    Ok(EntryCost {
        pairs: timed,
        calls: bench.ops(Workload::Getppid),
    })
}

/// The report's section on the entry.
pub fn write(md: &mut String, entry: &EntryCost) -> Result<()> {
    let Some(ns) = entry.ns_per_syscall() else {
        return Ok(());
    };
    let added = entry.added();
    let bare: Vec<f64> = entry.pairs.iter().map(|p| p.0).collect();
    writeln!(
        md,
        "## The tracepoint's own entry (any program on `sys_exit`)\n"
    )?;
    writeln!(
        md,
        "{} pairs of runs of {} `getppid` calls (a syscall no hook of the monitor watches), one \
         bare and one with the empty program attached, the order alternated: the program adds \
         **{ns:.1} ns per syscall** (median of the pairs' differences; {:.1} to {:.1}), on a \
         bare `getppid` of {:.1} ns (median). The side-by-side builds charge the neighbour this \
         for each syscall exit.\n",
        entry.pairs.len(),
        entry.calls,
        stats::min(&added),
        stats::max(&added),
        stats::median(&bare)
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_entry_is_the_median_difference_and_never_negative() {
        let entry = EntryCost {
            pairs: vec![(100.0, 125.0), (110.0, 120.0), (90.0, 150.0)],
            calls: 3,
        };
        assert_eq!(entry.added(), vec![25.0, 10.0, 60.0]);
        assert_eq!(entry.ns_per_syscall(), Some(25.0));
        let faster = EntryCost {
            pairs: vec![(120.0, 100.0)],
            calls: 1,
        };
        assert_eq!(faster.ns_per_syscall(), Some(0.0));
        let none = EntryCost {
            pairs: Vec::new(),
            calls: 0,
        };
        assert_eq!(none.ns_per_syscall(), None);
        let mut md = String::new();
        write(&mut md, &entry).unwrap();
        assert!(md.contains("**25.0 ns per syscall**"), "{md}");
        let mut empty = String::new();
        write(&mut empty, &none).unwrap();
        assert!(empty.is_empty());
    }
}
