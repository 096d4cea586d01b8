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
    Exec {
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// Write the full JSON report here.
        #[arg(long, value_name = "FILE")]
        report: Option<PathBuf>,
        /// Block disallowed egress (not available yet).
        #[arg(long)]
        enforce: bool,
        #[arg(last = true, required = true, value_name = "CMD")]
        command: Vec<OsString>,
    },
    /// Validate a config file and print the effective config.
    CheckConfig { file: PathBuf },
    /// Benchmark helper: attach only an empty program to the same hook until
    /// SIGTERM/SIGINT (the cost floor of any syscall hook).
    #[command(hide = true)]
    BenchFloor,
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
        Command::Exec {
            config,
            report,
            enforce,
            command,
        } => {
            if enforce {
                eprintln!(
                    "monitor: --enforce is not available yet: egress is reported, not blocked"
                );
                return ExitCode::from(2);
            }
            let config = match load_config(config.as_ref()) {
                Ok(c) => c,
                Err(code) => return code,
            };
            match runtime.block_on(exec::exec(config, exec::ExecOptions { report, command })) {
                Ok(code) => ExitCode::from(code),
                Err(e) => fail(e),
            }
        }
    }
}
