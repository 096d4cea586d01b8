//! `monitor exec -- CMD`: the CI sidecar. Runs CMD in a fresh cgroup of its
//! own, monitors it (network policy for the whole tree; sandboxed spawns
//! inside it against what they declared; configured parents as usual),
//! prints a readable summary and exits 1 on violations.
//!
//! For `bazel build|test|run|coverage` it also asks Bazel for its
//! execution log (unless one is given) to label spawns with their targets,
//! or for its JSON trace profile (`[bazel] label_source = "trace_profile"`),
//! and stops the Bazel server the build started when the command ends, so
//! that no unmonitored server serves the next build.
use std::{
    collections::BTreeMap,
    ffi::OsString,
    os::unix::{ffi::OsStrExt as _, process::ExitStatusExt as _},
    path::{Path, PathBuf},
    process::ExitStatus,
};

use anyhow::Context as _;

use crate::{
    actions::cgroup,
    actions::registry::{Scope, ScopeKind},
    bazel::{
        execlog::{ExecLogFile, LogFormat},
        log_flags::{BINARY_LOG_FLAG, LogChoice, LogFlags, NO_SORT_FLAG, RAW_LOG_FLAG},
        trace_profile::PROFILE_FLAGS,
    },
    commands::{
        outcome::{self, ExitPolicy},
        start::{self, StartError},
    },
    config::{Config, LabelSource},
    output::{alert::Alert, completeness::Completeness},
};

pub struct ExecOptions {
    pub report: Option<PathBuf>,
    /// `--markdown FILE`: a summary for `$GITHUB_STEP_SUMMARY`.
    pub markdown: Option<PathBuf>,
    /// `--sarif FILE`: SARIF 2.1.0 for code-scanning UIs.
    pub sarif: Option<PathBuf>,
    /// `--learn FILE`: the policy under which this job runs clean.
    pub learn: Option<PathBuf>,
    pub command: Vec<OsString>,
    pub exit: ExitPolicy,
}

/// How often the ring reader drains while a job runs. Its alerts are held
/// until the command ends, and a sandbox launch wakes the reader at once,
/// so draining less often than `monitor run` (10 ms) only saves wakeups.
const EXEC_DRAIN_INTERVAL: std::time::Duration = std::time::Duration::from_millis(50);

/// Returns the process exit code.
pub async fn exec(mut config: Config, mut opts: ExecOptions) -> Result<u8, StartError> {
    // The policy as given, before the sidecar's own alert settings.
    let given = config.clone();
    // Alerts of a sidecar go to the report and the alert file; stdout
    // belongs to the command. They are held until the command ends, so that
    // labels learnt from Bazel's execution log reach every one of them.
    config.alerts.stdout = false;
    config.alerts.fold_window_ms = HOLD_ALERTS_MS;
    let bazel = is_bazel(&opts.command);
    let scratch = tempdir_for_exec().map_err(StartError::Kernel)?;
    let root = cgroup::v2_root().map_err(StartError::Kernel)?;
    let job_id = format!("exec-{}", std::process::id());
    let job_dir = root.join("build-monitor").join(&job_id);
    let command_dir = make_job_cgroups(&job_dir)?;
    let _cleanup = CgroupGuard(job_dir.clone());
    let mut scopes = start::parent_scopes(&config, &root)?;
    scopes.push(job_scope(&root, &job_dir, job_id, bazel)?);
    let mut running = start::start(&config, scopes, true, false).await?;
    let started = crate::output::self_cost::Usage::now();
    // Watched from here: the release is asked inside the job.
    let trace = bazel
        .then(|| trace_profile_of(&config, &mut opts.command, scratch.path()))
        .flatten();
    let (exec_log, added_log) = if bazel && trace.is_none() {
        execution_log_of(&mut opts.command, scratch.path(), &command_dir).await
    } else {
        (None, None)
    };
    let fetch_log = (exec_log.is_some() || trace.is_some())
        .then(|| fetch_log(&config, &mut opts.command, scratch.path()))
        .flatten();
    running.pipeline.set_exec_log(exec_log);
    if let Some(trace) = trace {
        running.pipeline.set_trace_profile(trace);
    }
    running.pipeline.set_fetch_log(fetch_log);
    running.pipeline.set_drain_interval(EXEC_DRAIN_INTERVAL);

    let mut child = spawn_in_cgroup(&opts.command, &command_dir)
        .map_err(|e| StartError::Config(e.context(format!("cannot run {:?}", opts.command[0]))))?;
    let mut status: Option<std::io::Result<ExitStatus>> = None;
    let stop = async {
        let mut ended = child.wait().await;
        if let Some(again) = command_again(added_log, &ended, &opts.command).await {
            ended = match spawn_in_cgroup(&again, &command_dir) {
                Ok(mut child) => child.wait().await,
                Err(e) => Err(std::io::Error::other(e)),
            };
        }
        status = Some(ended);
    };
    let start::Running {
        kernel, pipeline, ..
    } = &mut running;
    pipeline
        .run(kernel, stop)
        .await
        .map_err(StartError::Kernel)?;
    running.stop_metrics().await;
    stop_leftovers(&job_dir);
    drop(scratch);

    let status = status
        .expect("the command was awaited")
        .map_err(|e| StartError::Kernel(e.into()))?;
    let code = status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0)) as u8;
    let bazel_section = running.pipeline.bazel_section.take().map(|mut section| {
        section["fetches"] =
            serde_json::to_value(&running.pipeline.fetches).expect("fetches serialise");
        section
    });
    let outcome = report_run(&running, &opts, &given, code, bazel_section, started);
    running.pipeline.handler.forget_actions();
    outcome
}

/// The job's cgroup as a scope: its processes are a Bazel server's, or
/// the command's.
fn job_scope(root: &Path, job_dir: &Path, id: String, bazel: bool) -> Result<Scope, StartError> {
    let (label, mnemonic) = if bazel {
        (Some("@bazel".into()), "BazelServer")
    } else {
        (None, "Command")
    };
    Ok(Scope {
        path: job_dir.to_path_buf(),
        id: cgroup::id_of(job_dir).map_err(StartError::Kernel)?,
        level: cgroup::level_of(root, job_dir).map_err(StartError::Kernel)?,
        kind: ScopeKind::Job {
            id,
            label,
            mnemonic: Some(mnemonic.into()),
        },
    })
}

/// Creates the job's cgroup and, one level down, the command's (so that
/// cgroups Bazel 7+ creates next to its server's, per-spawn slices, land
/// inside the job); returns the command's.
fn make_job_cgroups(job_dir: &Path) -> Result<PathBuf, StartError> {
    let command_dir = job_dir.join("cmd");
    for dir in [job_dir, &command_dir] {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create cgroup {}", dir.display()))
            .map_err(StartError::Kernel)?;
    }
    Ok(command_dir)
}

/// Asks Bazel for its workspace rules log (the repository behind each
/// fetch), judged by `[bazel.downloader]`, else by the downloader config
/// given to Bazel.
fn fetch_log(
    config: &Config,
    command: &mut Vec<OsString>,
    scratch: &Path,
) -> Option<crate::pipeline::FetchLog> {
    let path = add_bazel_flag(command, WORKSPACE_LOG_FLAG, scratch, "workspace_rules.log")?;
    let rules = config
        .bazel
        .downloader
        .clone()
        .or_else(|| bazels_downloader_config(command));
    Some(crate::pipeline::FetchLog {
        path,
        rules: crate::policy::downloader::Downloader::new(&rules.clone().unwrap_or_default()),
        configured: rules.is_some(),
    })
}

/// Everything said and written once the command has ended; returns the
/// exit code (see `outcome`).
fn report_run(
    running: &start::Running,
    opts: &ExecOptions,
    given: &Config,
    code: u8,
    bazel_section: Option<serde_json::Value>,
    started: crate::output::self_cost::Usage,
) -> Result<u8, StartError> {
    let completeness = completeness(running);
    let lost: u64 = completeness.events_lost.values().sum();
    let run = &running.pipeline.handler.summary;
    eprint!("{}", summary(&run.alerts, run.violations, lost));
    if run.allowed_by_scoped_rules > 0 {
        eprintln!(
            "monitor: {} connect(s) allowed by target-scoped [[network.rule]] entries once Bazel's execution log named their targets",
            run.allowed_by_scoped_rules
        );
    }
    coverage_warnings(run);
    if let Some(section) = &bazel_section {
        eprint!("{}", crate::bazel::report::summary_lines(section));
    }
    eprint!(
        "{}",
        crate::policy::fetches::summary_lines(&running.pipeline.fetches)
    );
    if let Some(path) = &opts.report {
        let sections = Sections {
            bazel: bazel_section,
            events: events_by_kind(&running.metrics),
            monitor: crate::output::self_cost::SelfCost::between(
                started,
                crate::output::self_cost::Usage::now(),
            ),
        };
        write_report(path, &opts.command, code, run, &completeness, sections)
            .map_err(StartError::Config)?;
    }
    write_summaries(opts, code, run, &completeness, &running.pipeline.fetches)
        .map_err(StartError::Config)?;
    if let Some(path) = &opts.learn {
        let text = crate::output::learn::learned_config(given, &run.alerts);
        std::fs::write(path, text)
            .with_context(|| format!("--learn: cannot write {}", path.display()))
            .map_err(StartError::Config)?;
        eprintln!(
            "monitor: wrote the learned policy to {} (run again with --config {0})",
            path.display()
        );
    }
    let gaps = completeness.gaps();
    let exit = outcome::exit_code(code, run.violations, &gaps, opts.exit);
    if !gaps.is_empty() {
        let verdict = if opts.exit.allow_incomplete {
            "accepted (--allow-incomplete)"
        } else if exit == 1 && code == 0 && run.violations == 0 {
            "exiting 1; pass --allow-incomplete to accept"
        } else {
            "see the report"
        };
        eprintln!(
            "monitor: monitoring was incomplete: {}; {verdict}",
            gaps.join("; ")
        );
    }
    Ok(exit)
}

/// The coverage warnings of the summary.
fn coverage_warnings(run: &crate::output::summary::RunSummary) {
    if run.io_uring_processes > 0 {
        eprintln!(
            "monitor: WARNING: {} process(es) set up an io_uring; their ring renames, links, unlinks and mkdirs are not monitored (ring opens are)",
            run.io_uring_processes
        );
    }
    let unmonitored = run.unmonitored_spawns;
    if unmonitored > 0 {
        eprintln!(
            "monitor: WARNING: {unmonitored} spawn(s) Bazel ran (its execution log or trace profile says) were NOT monitored: \
             they ran outside this job, in a Bazel server started before it. Use a dedicated \
             --output_base or run `bazel shutdown` first."
        );
    }
}

/// `--markdown` and `--sarif`, when asked for.
fn write_summaries(
    opts: &ExecOptions,
    code: u8,
    run: &crate::output::summary::RunSummary,
    completeness: &Completeness,
    fetches: &[crate::policy::fetches::Fetch],
) -> anyhow::Result<()> {
    if let Some(path) = &opts.markdown {
        let command: Vec<String> = opts
            .command
            .iter()
            .map(|c| crate::events::paths::escape_for_display(c.as_bytes()))
            .collect();
        let text = crate::output::markdown::render(
            &run.alerts,
            &crate::output::markdown::RunFacts {
                command: &command.join(" "),
                command_exit_status: code,
                violations: run.violations,
                completeness,
                inventory: &run.inventory,
                fetches,
            },
        );
        std::fs::write(path, text)
            .with_context(|| format!("--markdown: cannot write {}", path.display()))?;
    }
    if let Some(path) = &opts.sarif {
        let cwd = std::env::current_dir().unwrap_or_default();
        let workspace = crate::output::sarif::workspace_root(&cwd);
        let sarif = crate::output::sarif::render(&run.alerts, workspace.as_deref());
        std::fs::write(path, serde_json::to_vec_pretty(&sarif)?)
            .with_context(|| format!("--sarif: cannot write {}", path.display()))?;
    }
    Ok(())
}

/// What the run watched, from the pipeline's counts and the metrics.
fn completeness(running: &start::Running) -> Completeness {
    let m = &running.metrics;
    let count = |v: &prometheus::IntCounterVec, label: &str| v.with_label_values(&[label]).get();
    let events_by_kind = [
        "file", "net", "exec", "exit", "launch", "io_uring", "cgroup",
    ]
    .iter()
    .map(|k| (k.to_string(), count(&m.events_total, k)))
    .collect();
    let events_lost = crate::output::metrics::LOST_REASONS
        .iter()
        .map(|r| (r.to_string(), count(&m.events_lost_total, r)))
        .collect();
    let kernel = &running.kernel;
    let mut hooks = vec![
        format!("sys_exit ({:?} tracepoint)", kernel.syscall_hook),
        "sched_process_fork, sched_process_exec, sched_process_exit".to_string(),
    ];
    if !kernel.sock_hooks.is_empty() {
        hooks.push(format!(
            "cgroup connect4, connect6, sendmsg4, sendmsg6, post_bind4, post_bind6, sock_release, skb egress, skb ingress (DNS answers) on {} cgroup(s)",
            kernel.sock_hooks.len()
        ));
    }
    Completeness {
        spawns_monitored: running.pipeline.handler.summary.sandboxed_launches,
        spawns_unmonitored: running.pipeline.handler.summary.unmonitored_spawns,
        worker_spawns_unattributable: running
            .pipeline
            .handler
            .summary
            .worker_spawns_unattributable,
        events_by_kind,
        probes_folded: m.probes_folded_total.get(),
        repeats_counted: m.repeats_total.get(),
        events_lost,
        hooks,
        enforced: running.enforce,
        dns: running.pipeline.handler.summary.inventory.names.counts,
    }
}

/// Events received, by kind (the report's `events`): what a benchmark
/// divides by the build time.
fn events_by_kind(metrics: &crate::output::metrics::Metrics) -> BTreeMap<&'static str, u64> {
    crate::pipeline::handle::EVENT_KINDS
        .iter()
        .map(|kind| (*kind, metrics.events_total.with_label_values(&[kind]).get()))
        .collect()
}

/// Alerts are held this long at most before being written (in practice:
/// until the command ends).
const HOLD_ALERTS_MS: u64 = 24 * 3600 * 1000;

fn is_bazel(command: &[OsString]) -> bool {
    Path::new(&command[0])
        .file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n == "bazel" || n == "bazelisk" || n.starts_with("bazel-"))
}

/// The execution log a Bazel command (`build`, `test`, `run`, `coverage`)
/// writes: the one the user asked for, else one added, unsorted where this
/// Bazel says it can be (asked in the command's `cgroup`, see
/// [`LogChoice::choose`]); with how it was added, when it was.
async fn execution_log_of(
    command: &mut Vec<OsString>,
    scratch: &Path,
    cgroup: &Path,
) -> (Option<ExecLogFile>, Option<AddedLog>) {
    let Some(verb) = bazel_verb(command) else {
        return (None, None);
    };
    if let Some(given) = given_execution_log(command, verb) {
        return (Some(given), None);
    }
    let (asked, cgroup) = (command[..=verb].to_vec(), cgroup.to_path_buf());
    let Ok(choice) = tokio::task::spawn_blocking(move || LogChoice::choose(&asked, &cgroup)).await
    else {
        return (
            Some(add_execution_log(command, verb, scratch, LogFlags::Sorted)),
            None,
        );
    };
    let log = add_execution_log(command, verb, scratch, choice.flags);
    let added = AddedLog {
        choice,
        verb,
        log: log.path.clone(),
    };
    (Some(log), Some(added))
}

/// The trace profile a Bazel command will write for its labels, added
/// to it, when `[bazel] label_source = "trace_profile"` and nothing needs
/// the execution log instead (each says so on stderr): the user asked for
/// an execution log (read, as Bazel writes it anyway) or a profile of
/// their own (kept as asked), or a network rule is scoped by mnemonic
/// (the profile names none).
fn trace_profile_of(
    config: &Config,
    command: &mut Vec<OsString>,
    scratch: &Path,
) -> Option<PathBuf> {
    if config.bazel.label_source != LabelSource::TraceProfile {
        return None;
    }
    let verb = bazel_verb(command)?;
    let instead = if given_execution_log(command, verb).is_some() {
        Some("the command asks for an execution log: its labels are read from it")
    } else if flag_value(command, verb, "--profile").is_some() {
        Some("the command asks for a profile of its own: labels come from an execution log")
    } else if config.network.rule.iter().any(|r| !r.mnemonics.is_empty()) {
        Some(
            "a [[network.rule]] is scoped by mnemonic, which not every Bazel's trace profile names (4.2.3's does not): labels come from an execution log",
        )
    } else {
        None
    };
    if let Some(why) = instead {
        eprintln!("monitor: label_source = \"trace_profile\": {why}");
        return None;
    }
    let path = scratch.join("trace_profile.json");
    let mut flags = vec![OsString::from(format!("--profile={}", path.display()))];
    flags.extend(PROFILE_FLAGS.map(OsString::from));
    command.splice(verb + 1..verb + 1, flags);
    Some(path)
}

/// An execution log `monitor exec` added to a Bazel command.
/// Its arguments are `log_flag_args(log, choice.flags)`, first after the
/// verb (or after other flags `monitor exec` added there).
struct AddedLog {
    choice: LogChoice,
    verb: usize,
    log: PathBuf,
}

/// The command to run once more when `ran` ended as a Bazel refusing the
/// log flags kept for it does (exit code 2, no log written) and, asked
/// again, it takes others (see [`crate::bazel::log_flags`]): `ran` with
/// those flags in place of the refused ones, everything else as it was.
async fn command_again(
    added: Option<AddedLog>,
    status: &std::io::Result<ExitStatus>,
    ran: &[OsString],
) -> Option<Vec<OsString>> {
    let added = added?;
    let refused = matches!(status, Ok(s) if s.code() == Some(2)) && !added.log.exists();
    if !refused {
        return None;
    }
    let (flags, added) = tokio::task::spawn_blocking(move || (added.choice.recheck(), added))
        .await
        .ok()?;
    let flags = flags?;
    eprintln!(
        "monitor: Bazel refused the execution log flags kept for it; asked again, it takes {flags:?}: running the command once more"
    );
    let mut command = ran.to_vec();
    for refused in log_flag_args(&added.log, added.choice.flags) {
        if let Some(i) = command.iter().skip(added.verb).position(|a| *a == refused) {
            command.remove(added.verb + i);
        }
    }
    let verb = added.verb;
    command.splice(verb + 1..verb + 1, log_flag_args(&added.log, flags));
    Some(command)
}

const JSON_LOG_FLAG: &str = "--execution_log_json_file";

/// The execution log the user asked for after the Bazel command at
/// `verb`, in any format (that one is read).
fn given_execution_log(command: &[OsString], verb: usize) -> Option<ExecLogFile> {
    if let Some(path) = flag_value(command, verb, JSON_LOG_FLAG) {
        return Some(ExecLogFile {
            path,
            format: LogFormat::Json,
        });
    }
    [BINARY_LOG_FLAG, RAW_LOG_FLAG].iter().find_map(|flag| {
        Some(ExecLogFile {
            path: flag_value(command, verb, flag)?,
            format: LogFormat::Binary,
        })
    })
}

/// Adds an execution log right after the Bazel command at `verb`; returns
/// the log Bazel will write. Binary, not JSON: Bazel renders the JSON log
/// at the end of the build, which the user would wait for (see
/// `bazel/execlog/binary.rs`). Unsorted where `flags` can ask for it: the
/// sort at the end holds the whole log in Bazel's memory
/// (bazelbuild/bazel#17111), took 0.6 % more of the bench build's CPU
/// than the unsorted log (two series of 8 pairs side by side, Bazel
/// 4.2.3: `profiles/bazel-flags-sorted-vs-raw-log.md`)
/// and, before Bazel 7, leaves a raw copy in the server's temporary
/// directory; the join does not need the order.
fn add_execution_log(
    command: &mut Vec<OsString>,
    verb: usize,
    scratch: &Path,
    flags: LogFlags,
) -> ExecLogFile {
    let path = scratch.join("execution_log.bin");
    command.splice(verb + 1..verb + 1, log_flag_args(&path, flags));
    ExecLogFile {
        path,
        format: LogFormat::Binary,
    }
}

/// The arguments that ask for the log at `path` with `flags`.
fn log_flag_args(path: &Path, flags: LogFlags) -> Vec<OsString> {
    let with_path = |flag: &str| OsString::from(format!("{flag}={}", path.display()));
    match flags {
        LogFlags::Raw => vec![with_path(RAW_LOG_FLAG)],
        LogFlags::BinaryUnsorted => vec![with_path(BINARY_LOG_FLAG), NO_SORT_FLAG.into()],
        LogFlags::Sorted => vec![with_path(BINARY_LOG_FLAG)],
    }
}

/// Bazel's workspace rules log: the repository behind each fetch.
const WORKSPACE_LOG_FLAG: &str = "--experimental_workspace_rules_log_file";

/// Adds `FLAG=<scratch>/<file>` after the Bazel command (`build`, `test`,
/// `run`, `coverage`: the commands that take it) unless the user gave
/// FLAG; returns the file Bazel will write.
fn add_bazel_flag(
    command: &mut Vec<OsString>,
    flag: &str,
    scratch: &Path,
    file: &str,
) -> Option<PathBuf> {
    let verb = bazel_verb(command)?;
    Some(flag_or_add(command, verb, flag, scratch, file))
}

/// The file the user gave FLAG, else `<scratch>/<file>`, added as
/// `FLAG=…` right after the Bazel command at `verb`.
fn flag_or_add(
    command: &mut Vec<OsString>,
    verb: usize,
    flag: &str,
    scratch: &Path,
    file: &str,
) -> PathBuf {
    if let Some(path) = flag_value(command, verb, flag) {
        return path;
    }
    let path = scratch.join(file);
    command.insert(
        verb + 1,
        OsString::from(format!("{flag}={}", path.display())),
    );
    path
}

/// The index of the Bazel command when it is one that takes the log flags
/// (`build`, `test`, `run`, `coverage`).
fn bazel_verb(command: &[OsString]) -> Option<usize> {
    let verb = command
        .iter()
        .skip(1)
        .position(|a| !a.as_bytes().starts_with(b"-"))?
        + 1;
    matches!(
        command[verb].to_str(),
        Some("build" | "test" | "run" | "coverage")
    )
    .then_some(verb)
}

/// The file the user gave FLAG (`FLAG=file` or `FLAG file`) among the
/// options after the Bazel command at `verb`, if they did.
fn flag_value(command: &[OsString], verb: usize, flag: &str) -> Option<PathBuf> {
    for (i, arg) in command.iter().enumerate().skip(verb) {
        let Some(arg) = arg.to_str() else { continue };
        if let Some(path) = arg.strip_prefix(flag).and_then(|r| r.strip_prefix('=')) {
            return Some(PathBuf::from(path));
        }
        if arg == flag {
            return command.get(i + 1).map(PathBuf::from);
        }
        if arg == "--" {
            break;
        }
    }
    None
}

/// The downloader config given to Bazel on its command line, as rules
/// (used when the policy has no `[bazel.downloader]`): the rules Bazel
/// really applied. A file that cannot be used is warned about.
fn bazels_downloader_config(
    command: &[OsString],
) -> Option<crate::policy::downloader::DownloaderConfig> {
    const FLAGS: [&str; 2] = ["--experimental_downloader_config", "--downloader_config"];
    let mut args = command.iter().skip(1).filter_map(|a| a.to_str());
    let mut path = None;
    while let Some(arg) = args.next() {
        if arg == "--" {
            break;
        }
        for flag in FLAGS {
            if let Some(value) = arg.strip_prefix(flag).and_then(|r| r.strip_prefix('=')) {
                path = Some(value.to_string());
            } else if arg == flag {
                path = args.next().map(str::to_string);
            }
        }
    }
    let path = path?;
    let parsed = std::fs::read_to_string(&path)
        .map_err(|e| e.to_string())
        .and_then(|text| crate::policy::downloader::parse_bazel_file(&text));
    match parsed {
        Ok(rules) => Some(rules),
        Err(why) => {
            eprintln!(
                "monitor: WARNING: cannot judge fetches by Bazel's downloader config {path}: {why}"
            );
            None
        }
    }
}

/// A fresh private directory (random name, mode 0700, created exclusively):
/// a predictable `/tmp` name could be pre-created by another user.
fn tempdir_for_exec() -> anyhow::Result<tempfile::TempDir> {
    tempfile::Builder::new()
        .prefix("monitor-exec-")
        .tempdir()
        .with_context(|| {
            format!(
                "cannot create a scratch directory in {}",
                std::env::temp_dir().display()
            )
        })
}

/// Ends what the command left running in its cgroup (a Bazel server), so
/// the cgroup can go and no unmonitored server serves the next build.
fn stop_leftovers(job: &Path) {
    let procs = || std::fs::read_to_string(job.join("cmd/cgroup.procs")).unwrap_or_default();
    if procs().trim().is_empty() {
        return;
    }
    log::info!(
        "stopping processes the command left running in {}",
        job.display()
    );
    let kill = job.join("cgroup.kill");
    if std::fs::write(&kill, "1").is_err() {
        log::warn!(
            "cannot write {} (kernel before 5.14?); leaving them running",
            kill.display()
        );
        return;
    }
    // Polled finely: the build's wall time waits for this (a killed Bazel
    // server is gone in a few ms; 20 ms steps added 20-40 ms).
    testkit::wait::poll_every(
        std::time::Duration::from_millis(2),
        std::time::Duration::from_secs(2),
        || procs().trim().is_empty().then_some(()),
    );
}

fn spawn_in_cgroup(command: &[OsString], cgroup: &Path) -> anyhow::Result<tokio::process::Child> {
    let mut cmd = tokio::process::Command::new(&command[0]);
    cmd.args(&command[1..]);
    testkit::cgroup::join_on_spawn(cmd.as_std_mut(), cgroup)?;
    Ok(cmd.spawn()?)
}

/// Readable summary, grouped by target label (or action id).
pub fn summary(alerts: &[Alert], violations: u64, lost: u64) -> String {
    let mut by_target: BTreeMap<String, Vec<&Alert>> = BTreeMap::new();
    for a in alerts {
        let who = match (&a.action.label, &a.action.mnemonic) {
            (Some(l), Some(m)) => format!("{l} ({m})"),
            (Some(l), None) => l.clone(),
            (None, Some(m)) => format!("{} ({m})", a.action.id),
            (None, None) => a.action.id.clone(),
        };
        by_target.entry(who).or_default().push(a);
    }
    let mut out = String::new();
    if violations == 0 {
        out.push_str("monitor: no violations\n");
    } else {
        out.push_str(&format!(
            "monitor: {violations} violation(s) in {} target(s)\n",
            by_target.len()
        ));
        for (who, alerts) in &by_target {
            out.push_str(&format!("  {who}\n"));
            for a in alerts {
                out.push_str(&format!("    - {}\n", a.message()));
            }
        }
        out.push_str(
            "monitor: to allow what this job did, add the destinations to `[network] allow` \
             (e.g. `{ cidr = \"10.0.0.1/32\", port = 443 }`) or, for some targets only, to a \
             `[[network.rule]]` with `targets = [...]`, and the files to `[files] allow` \
             in a config file, or let `--learn policy.toml` write one, then pass `--config`\n",
        );
    }
    if lost > 0 {
        out.push_str(&format!("monitor: WARNING: {lost} event(s) could not be delivered; see build_monitor_events_lost_total\n"));
    }
    out
}

/// The report's sections beside the run's summary.
struct Sections {
    bazel: Option<serde_json::Value>,
    events: BTreeMap<&'static str, u64>,
    /// What the monitor itself cost.
    monitor: crate::output::self_cost::SelfCost,
}

fn write_report(
    path: &Path,
    command: &[OsString],
    exit_status: u8,
    run: &crate::output::summary::RunSummary,
    completeness: &Completeness,
    sections: Sections,
) -> anyhow::Result<()> {
    let violations = run.violations;
    let alerts: Vec<serde_json::Value> = run
        .alerts
        .iter()
        .map(|a| serde_json::from_str(&a.to_json_line()))
        .collect::<Result<_, _>>()?;
    let mut report = serde_json::json!({
        "schema": "monitor.report/v1",
        "command": command.iter().map(|c| crate::events::paths::escape_for_display(c.as_bytes())).collect::<Vec<_>>(),
        "command_exit_status": exit_status,
        "violations": violations,
        "allowed_by_target_rules": run.allowed_by_scoped_rules,
        "events_lost": completeness.events_lost.values().sum::<u64>(),
        "unmonitored_spawns": completeness.spawns_unmonitored,
        "completeness": completeness.to_json(),
        "egress": run.inventory.to_json(),
        "events": sections.events,
        "monitor": sections.monitor,
        "alerts": alerts,
    });
    if let Some(section) = sections.bazel {
        report["bazel"] = section;
    }
    std::fs::write(path, serde_json::to_vec_pretty(&report)?)
        .with_context(|| format!("--report: cannot write {}", path.display()))
}

struct CgroupGuard(PathBuf);

impl Drop for CgroupGuard {
    fn drop(&mut self) {
        // Children first: the command's own cgroup and any Bazel spawn slices.
        cgroup::remove_tree(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<OsString> {
        a.iter().map(OsString::from).collect()
    }

    #[test]
    fn execution_log_flag_goes_after_the_bazel_command() {
        let mut cmd = args(&[
            "bazel",
            "--output_base=/ob",
            "build",
            "--config=ci",
            "//...",
        ]);
        let verb = bazel_verb(&cmd).unwrap();
        let log = add_execution_log(&mut cmd, verb, Path::new("/s"), LogFlags::Sorted);
        assert_eq!(log.path, Path::new("/s/execution_log.bin"));
        assert_eq!(log.format, LogFormat::Binary);
        assert_eq!(
            cmd,
            args(&[
                "bazel",
                "--output_base=/ob",
                "build",
                "--execution_log_binary_file=/s/execution_log.bin",
                "--config=ci",
                "//..."
            ])
        );
    }

    #[test]
    fn trace_profile_flags_go_after_the_bazel_command_unless_something_needs_the_log() {
        let parse = |text: &str| Config::parse(text, Path::new("monitor.toml")).unwrap();
        let trace = parse("[bazel]\nlabel_source = \"trace_profile\"\n");
        let mut cmd = args(&["bazel", "--output_base=/ob", "build", "//..."]);
        let path = trace_profile_of(&trace, &mut cmd, Path::new("/s"));
        assert_eq!(path.as_deref(), Some(Path::new("/s/trace_profile.json")));
        let mut expected = args(&[
            "bazel",
            "--output_base=/ob",
            "build",
            "--profile=/s/trace_profile.json",
        ]);
        expected.extend(PROFILE_FLAGS.map(OsString::from));
        expected.push("//...".into());
        assert_eq!(cmd, expected);
        // The default asks for none; nor does a command that is no build.
        let mut cmd = args(&["bazel", "build", "//..."]);
        assert_eq!(
            trace_profile_of(&Config::default(), &mut cmd, Path::new("/s")),
            None
        );
        let mut cmd = args(&["bazel", "query", "//..."]);
        assert_eq!(trace_profile_of(&trace, &mut cmd, Path::new("/s")), None);
        assert_eq!(cmd, args(&["bazel", "query", "//..."]));
        // What needs the execution log instead: left as it was.
        let mnemonic_rule = parse(
            "[bazel]\nlabel_source = \"trace_profile\"\n[[network.rule]]\nmnemonics = [\"Genrule\"]\nallow = [{ cidr = \"127.0.0.1/32\" }]\n",
        );
        for (config, given) in [
            (
                &trace,
                &["bazel", "build", "--profile=/mine.gz", "//..."][..],
            ),
            (
                &trace,
                &[
                    "bazel",
                    "build",
                    "--execution_log_json_file=/l.json",
                    "//...",
                ][..],
            ),
            (&mnemonic_rule, &["bazel", "build", "//..."][..]),
        ] {
            let mut cmd = args(given);
            assert_eq!(
                trace_profile_of(config, &mut cmd, Path::new("/s")),
                None,
                "{given:?}"
            );
            assert_eq!(cmd, args(given));
        }
    }

    /// The log `monitor exec` takes for `cmd`, with no cgroup to ask a
    /// release in (a release asked would be none).
    fn log_of(cmd: &mut Vec<OsString>) -> Option<ExecLogFile> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        runtime
            .block_on(execution_log_of(
                cmd,
                Path::new("/s"),
                Path::new("/nonexistent/cgroup"),
            ))
            .0
    }

    #[test]
    fn a_log_the_user_asked_for_is_used_as_is() {
        let mut cmd = args(&[
            "bazel",
            "test",
            "--execution_log_json_file=/mine.json",
            "//t",
        ]);
        let json = |path: &str| ExecLogFile {
            path: PathBuf::from(path),
            format: LogFormat::Json,
        };
        assert_eq!(log_of(&mut cmd), Some(json("/mine.json")));
        assert_eq!(cmd.len(), 4);
        let mut cmd = args(&["bazel", "build", "--execution_log_json_file", "/other.json"]);
        assert_eq!(log_of(&mut cmd), Some(json("/other.json")));
        let binary = |path: &str| ExecLogFile {
            path: PathBuf::from(path),
            format: LogFormat::Binary,
        };
        for given in [
            "--execution_log_binary_file=/b.log",
            "--experimental_execution_log_file=/b.log",
        ] {
            let mut cmd = args(&["bazel", "build", given]);
            assert_eq!(log_of(&mut cmd), Some(binary("/b.log")));
            assert_eq!(cmd.len(), 3);
        }
    }

    /// The flags added for `flags`, between the command and its target.
    fn added_for(flags: LogFlags) -> Vec<OsString> {
        let mut cmd = args(&["bazel", "build", "//..."]);
        let log = add_execution_log(&mut cmd, 1, Path::new("/s"), flags);
        assert_eq!(log.path, Path::new("/s/execution_log.bin"));
        assert_eq!(log.format, LogFormat::Binary);
        assert_eq!(cmd[..2], args(&["bazel", "build"]));
        assert_eq!(cmd.last().unwrap(), "//...");
        cmd[2..cmd.len() - 1].to_vec()
    }

    #[test]
    fn each_kind_of_log_flags_adds_its_flags() {
        let raw = args(&["--experimental_execution_log_file=/s/execution_log.bin"]);
        assert_eq!(added_for(LogFlags::Raw), raw);
        let no_sort = args(&[
            "--execution_log_binary_file=/s/execution_log.bin",
            "--noexecution_log_sort",
        ]);
        assert_eq!(added_for(LogFlags::BinaryUnsorted), no_sort);
        let sorted = args(&["--execution_log_binary_file=/s/execution_log.bin"]);
        assert_eq!(added_for(LogFlags::Sorted), sorted);
    }

    #[test]
    fn a_bazel_that_cannot_be_asked_gets_the_sorted_log() {
        // Here: no cgroup to run it in.
        let mut cmd = args(&["bazel", "build", "//..."]);
        assert!(log_of(&mut cmd).is_some());
        assert_eq!(
            cmd,
            args(&[
                "bazel",
                "build",
                "--execution_log_binary_file=/s/execution_log.bin",
                "//..."
            ])
        );
    }

    #[test]
    fn other_bazel_commands_and_other_tools_are_left_alone() {
        let mut cmd = args(&["bazel", "shutdown"]);
        assert_eq!(log_of(&mut cmd), None);
        assert_eq!(cmd, args(&["bazel", "shutdown"]));
        assert!(is_bazel(&args(&["/usr/bin/bazel", "build"])));
        assert!(is_bazel(&args(&["bazelisk"])));
        assert!(!is_bazel(&args(&["make"])));
    }
}
