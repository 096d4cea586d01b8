//! `monitor`: watches what build actions open and connect to.
use std::{ffi::OsString, path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};
use monitor::{
    commands::{exec, run as daemon, start::StartError},
    config::Config,
};

#[derive(Parser)]
#[command(
    name = "monitor",
    version,
    about = "Watches, from the kernel, what build actions open and connect to, and reports what they did not declare."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run as a node agent until SIGTERM/SIGINT.
    Run {
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Run CMD in a fresh cgroup and report what it did; exit 1 on violations.
    Exec(ExecArgs),
    /// Validate a config file and print the effective config.
    CheckConfig { file: PathBuf },
    /// Benchmark helper: attach only an empty program to the same hook until
    /// SIGTERM/SIGINT (the cost floor of any syscall hook).
    #[command(hide = true)]
    BenchFloor,
}

#[derive(clap::Args)]
struct ExecArgs {
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Write the full JSON report here.
    #[arg(long, value_name = "FILE")]
    report: Option<PathBuf>,
    /// Write a Markdown summary here (e.g. "$GITHUB_STEP_SUMMARY").
    #[arg(long, value_name = "FILE")]
    markdown: Option<PathBuf>,
    /// Write the findings as SARIF 2.1.0 here (code-scanning UIs).
    #[arg(long, value_name = "FILE")]
    sarif: Option<PathBuf>,
    /// Write the policy under which this job runs clean here (a config
    /// file: the given one plus every destination and file it needed).
    #[arg(long, value_name = "FILE")]
    learn: Option<PathBuf>,
    /// Refuse, in the kernel, every connect and datagram send the
    /// network policy does not allow (the process gets EPERM; the alert
    /// says "blocked"). Same as `[network] enforce = true`.
    #[arg(long)]
    enforce: bool,
    /// Exit code when there were violations (and the command itself
    /// succeeded), to tell them apart from the command's own exit 1.
    #[arg(long, value_name = "N", default_value_t = 1,
          value_parser = clap::value_parser!(u8).range(1..))]
    violation_exit_code: u8,
    /// Exit 0 even when monitoring was incomplete (events lost, spawns
    /// not monitored); the report and summary still say so.
    #[arg(long)]
    allow_incomplete: bool,
    #[arg(last = true, required = true, value_name = "CMD")]
    command: Vec<OsString>,
}

fn load_config(path: Option<&PathBuf>) -> Result<Config, ExitCode> {
    match path {
        None => Ok(Config::default()),
        Some(path) => Config::load(path).map_err(|e| {
            eprintln!("monitor: {e}");
            ExitCode::from(2)
        }),
    }
}

fn fail(e: StartError) -> ExitCode {
    eprintln!("monitor: {e}");
    ExitCode::from(e.exit_code())
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_target(false)
        .init();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("monitor: cannot start the async runtime: {e}");
            return ExitCode::from(3);
        }
    };
    match cli.command {
        Command::CheckConfig { file } => match load_config(Some(&file)) {
            Ok(config) => {
                print!("{}", config.to_toml());
                ExitCode::SUCCESS
            }
            Err(code) => code,
        },
        Command::Run { config } => {
            let path = config;
            let config = match load_config(Some(&path)) {
                Ok(c) => c,
                Err(code) => return code,
            };
            match runtime.block_on(daemon::run(config, path)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(e),
            }
        }
        Command::BenchFloor => match monitor::kernel::loader::Kernel::load_floor() {
            Ok(ebpf) => {
                eprintln!("monitor: floor program attached");
                runtime.block_on(monitor::commands::start::termination_signal());
                drop(ebpf);
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("monitor: {e:#}");
                ExitCode::from(3)
            }
        },
        Command::Exec(args) => run_exec(&runtime, args),
    }
}

fn run_exec(runtime: &tokio::runtime::Runtime, args: ExecArgs) -> ExitCode {
    let mut config = match load_config(args.config.as_ref()) {
        Ok(c) => c,
        Err(code) => return code,
    };
    config.network.enforce |= args.enforce;
    let opts = exec::ExecOptions {
        report: args.report,
        markdown: args.markdown,
        sarif: args.sarif,
        learn: args.learn,
        command: args.command,
        exit: monitor::commands::outcome::ExitPolicy {
            violation_code: args.violation_exit_code,
            allow_incomplete: args.allow_incomplete,
        },
    };
    match runtime.block_on(exec::exec(config, opts)) {
        Ok(code) => ExitCode::from(code),
        Err(e) => fail(e),
    }
}
