//! `cargo xtask …`: the project's developer commands (see `--help`).
//!
//! One module per command; shared helpers (running commands, cgroups, the
//! monitor's HTTP endpoints) live in `util`.

mod bench;
mod build;
mod demo;
mod fuzz;
mod lint;
mod profile;
mod setup;
mod test;
mod util;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    bin_name = "cargo xtask",
    about = "Developer commands for the build-action monitor"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install what building and testing need (LLVM 22, bpf-linker, nightly
    /// rust-src, bpftrace, …) and mount tracefs. Idempotent; quick when done.
    Setup,
    /// Build the workspace's default members.
    Build(build::Options),
    /// Setup, build everything, run the unit tests, then the integration tests
    /// (as root); reports every failing phase at the end.
    Test,
    /// A live demonstration on this machine: one action, one undeclared file
    /// read, one denied connection, and the alerts and metrics they produce.
    Demo,
    /// Measure the monitor's overhead next to bpftrace, and its lossless event
    /// rate; writes BENCHMARKS.md.
    Bench(bench::Options),
    /// Run the cargo-fuzz targets in fuzz/ (decoder, config, declarations,
    /// paths, execution log), each replaying its regression inputs and then
    /// fuzzing for a bounded time; fails on a crash and names its input.
    Fuzz(fuzz::Options),
    /// List every function over ~80 lines in the workspace; fails if any.
    Lint(lint::Options),
    /// Which of two monitor binaries' programs cost less per operation:
    /// both attached at once, the order swapped each round (see
    /// xtask/src/bench/ab.rs).
    BenchAb(bench::AbOptions),
    /// What a set of Bazel flags costs the bench's build against another
    /// set: builds side by side, one per CPU, no monitor (see
    /// xtask/src/bench/builds/flags.rs).
    BenchFlags(bench::builds::flags::FlagOptions),
    /// One bench build under `monitor exec`: the daemon's CPU time, peak
    /// RSS and events; with `--perf`, a flame graph of where its CPU goes.
    ProfileBuild(profile::Options),
    /// The process `bench` times (internal).
    #[command(hide = true)]
    BenchWorker(bench::WorkerOptions),
}

fn main() -> ExitCode {
    let Cli { command } = Cli::parse();
    let result = match command {
        Command::Setup => setup::run(),
        Command::Build(options) => build::run(options),
        Command::Test => test::run(),
        Command::Demo => demo::run(),
        Command::Bench(options) => bench::run(options),
        Command::Fuzz(options) => fuzz::run(options),
        Command::Lint(options) => lint::run(options),
        Command::BenchAb(options) => bench::run_ab(options),
        Command::BenchFlags(options) => bench::builds::flags::run(options),
        Command::ProfileBuild(options) => profile::run(options),
        Command::BenchWorker(options) => bench::worker(options),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
