//! The daemon's largest part on a Bazel build, reading sandboxes, measured
//! apart from any build: `monitor/examples/sandbox_read.rs` lays sandboxes
//! out as the bench build's large-sandbox genrules have them (fresh links
//! each round, each read once) and prints each round's CPU time. A build's
//! daemon CPU swings with its other parts by more than this part changes;
//! this row does not.
use std::{fmt::Write as _, process::Command};

use anyhow::{Context as _, Result, ensure};

use super::{builds::build_fs::BuildFs, stats};
use crate::util::{cargo, exec, output, target_dir};

/// Two `sandbox_read` runs' rounds: links read back, and their targets
/// given as the kernel reports Bazel's calls (`made`).
pub struct SandboxReads {
    pub sandboxes: usize,
    pub inputs: usize,
    /// Per round after the first (which also warms the page cache):
    /// (user, system) ms of CPU.
    pub rounds: Vec<(f64, f64)>,
    /// The same, targets as made (as `monitor exec` reads a build's).
    pub made_rounds: Vec<(f64, f64)>,
}

/// Builds the example and runs it: 200 sandboxes of 300 inputs (the
/// bench build's) for 6 rounds, or 50 for 3 with `quick`.
pub fn run(quick: bool) -> Result<SandboxReads> {
    exec(cargo().args([
        "build",
        "--release",
        "-p",
        "monitor",
        "--example",
        "sandbox_read",
    ]))?;
    let example = target_dir()?.join("release/examples/sandbox_read");
    let (sandboxes, inputs, rounds) = if quick { (50, 300, 3) } else { (200, 300, 6) };
    println!("bench: sandbox reads, {sandboxes} sandboxes x {inputs} inputs, {rounds} rounds");
    // On the file system the bench's builds use: on this VM's host one
    // (ext4 without a journal), making the links took minutes and the
    // reads' system time carried that file system's slow paths.
    let fs = BuildFs::create(&target_dir()?.join("bench-sandbox-reads"))?;
    let tmp = fs.path().join("tmp");
    std::fs::create_dir_all(&tmp)?;
    let run = |made: bool| -> Result<Vec<(f64, f64)>> {
        let mut args = vec![
            sandboxes.to_string(),
            inputs.to_string(),
            rounds.to_string(),
        ];
        if made {
            args.push("made".into());
        }
        let text = output(Command::new(&example).args(&args).env("TMPDIR", &tmp))
            .with_context(|| format!("running {}", example.display()))?;
        let rounds = parse_rounds(&text);
        ensure!(
            !rounds.is_empty(),
            "{} printed no round after the first:\n{text}",
            example.display()
        );
        Ok(rounds)
    };
    Ok(SandboxReads {
        sandboxes,
        inputs,
        rounds: run(false)?,
        made_rounds: run(true)?,
    })
}

/// (user, system) ms of each `round N: wall W ms, user U ms, sys S ms, …`
/// line but round 0's.
fn parse_rounds(text: &str) -> Vec<(f64, f64)> {
    text.lines()
        .filter_map(|line| {
            let rest = line.strip_prefix("round ")?;
            let (round, rest) = rest.split_once(':')?;
            let ms = |key: &str| -> Option<f64> {
                let after = rest.split_once(key)?.1;
                after.trim_start().split(' ').next()?.parse().ok()
            };
            (round.trim() != "0").then_some(())?;
            Some((ms("user")?, ms("sys")?))
        })
        .collect()
}

pub fn write(md: &mut String, reads: &SandboxReads) -> Result<()> {
    writeln!(md, "## Sandbox reads (the daemon, apart from a build)\n")?;
    writeln!(
        md,
        "`monitor/examples/sandbox_read.rs`: {} sandboxes of {} input links each, laid out as the \
         bench build's large-sandbox genrules have them under Bazel 4 and made afresh each round, \
         on a fresh journaled ext4 as the builds' (since 2026-12-04 evening; the host's before), \
         each read once into its declaration as the daemon reads a sandbox at its spawn's launch \
         (its links' targets, their times, the targets' identities, the compiled matcher; a tree \
         the same as one read before shares that one's links' part, since 2026-12-04 evening, as \
         on a build). Once with each link read back, once with the targets given as the kernel \
         reports Bazel's `symlink` calls (as `monitor exec` reads a build's sandboxes; since \
         2026-12-04 evening). CPU time of the reads, rounds after the first; see \
         [profiles/sandbox-reads.md](profiles/sandbox-reads.md).\n",
        reads.sandboxes, reads.inputs
    )?;
    writeln!(
        md,
        "| | links read back | targets as made (`monitor exec`) |\n| --- | --- | --- |"
    )?;
    let links = (reads.sandboxes * reads.inputs) as f64;
    let cpu = |rounds: &[(f64, f64)]| -> Vec<f64> { rounds.iter().map(|(u, s)| u + s).collect() };
    let (back, made) = (cpu(&reads.rounds), cpu(&reads.made_rounds));
    writeln!(
        md,
        "| CPU per round, median (min–max) | {}, {} rounds | {}, {} rounds |",
        stats::median_range(&back, 0, " ms"),
        back.len(),
        stats::median_range(&made, 0, " ms"),
        made.len()
    )?;
    let split = |rounds: &[(f64, f64)]| {
        let user: Vec<f64> = rounds.iter().map(|r| r.0).collect();
        let sys: Vec<f64> = rounds.iter().map(|r| r.1).collect();
        format!(
            "{:.0} / {:.0} ms",
            stats::median(&user),
            stats::median(&sys)
        )
    };
    writeln!(
        md,
        "| of it user / system | {} | {} |",
        split(&reads.rounds),
        split(&reads.made_rounds)
    )?;
    writeln!(
        md,
        "| CPU per link | {:.2} µs | {:.2} µs |\n",
        stats::median(&back) * 1000.0 / links,
        stats::median(&made) * 1000.0 / links
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounds_after_the_first_are_read() {
        let text = "200 sandboxes x 300 inputs, 3 rounds\n\
                    round 0: wall 548 ms, user 187 ms, sys 300 ms, 9.14 us per link\n\
                    round 1: wall 341 ms, user 133 ms, sys 208 ms, 5.68 us per link\n\
                    round 2: wall 432 ms, user 149 ms, sys 282 ms, 7.20 us per link\n";
        assert_eq!(parse_rounds(text), vec![(133.0, 208.0), (149.0, 282.0)]);
        assert!(parse_rounds("round 1: garbled\n").is_empty());
    }
}
