//! The tools a user would pick instead of the monitor, on the same
//! workloads: strace (`-f -e trace=%file,%network`), the Linux audit
//! subsystem (auditd with syscall rules scoped by audit login uid) and
//! fatrace (fanotify on the mount, filtered by command name).

use std::{
    ffi::OsString,
    fs::{self, File},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};

use super::{
    Bench, Placement, Record, Setup,
    worker::{WORKLOADS, Workload},
};
use crate::util::{Daemon, exec, output};

pub const STRACE: &str = "/usr/bin/strace";
pub const AUDITD: &str = "/usr/sbin/auditd";
pub const AUDITCTL: &str = "/usr/sbin/auditctl";
pub const FATRACE: &str = "/usr/sbin/fatrace";
/// The audit key of the benchmark's rule, and the login uid it is scoped to.
const AUDIT_KEY: &str = "monitor-bench";
const AUDIT_LOGINUID: u32 = 4_242_424;

impl Bench {
    /// Does a line a tracer printed record an operation of `workload`?
    fn records(&self, workload: Workload, line: &str) -> bool {
        match workload {
            Workload::Repeat => line.contains(self.file.to_str().unwrap_or("\0")),
            Workload::Distinct => line.contains(&format!("{}/f", self.distinct_dir.display())),
            // Not peer workloads (the monitor's alert storm, the entry).
            Workload::Missing | Workload::Getppid | Workload::Shared | Workload::Signal => false,
            // strace prints `connect(`, bpftrace `<pid> connect <ret>`.
            Workload::Connect => line.contains("connect(") || line.contains(" connect "),
        }
    }

    pub(super) fn count_records(&self, workload: Workload, path: &Path) -> Result<u64> {
        let text = fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let text = String::from_utf8_lossy(&text);
        Ok(text.lines().filter(|l| self.records(workload, l)).count() as u64)
    }

    /// strace on the worker, each workload once; events are the lines it
    /// wrote for the workload's files or connects.
    pub(super) fn strace_round(&self, tag: &str, record: &mut Record<'_>) -> Result<()> {
        for workload in WORKLOADS {
            let out = self
                .tmp
                .join(format!("strace-{tag}-{}.txt", workload.arg()));
            let wrapper: Vec<OsString> = ["-f", "-qq", "-e", "trace=%file,%network", "-o"]
                .iter()
                .map(OsString::from)
                .chain([out.clone().into_os_string()])
                .collect();
            let mut prefix = vec![OsString::from(STRACE)];
            prefix.extend(wrapper);
            let report = self.timed_run(
                workload,
                &Placement {
                    wrapper: &prefix,
                    ..Placement::default()
                },
            )?;
            let seen = self.count_records(workload, &out)?;
            fs::remove_file(&out).with_context(|| format!("removing {}", out.display()))?;
            record(Setup::StraceInside, workload, report, Some(seen));
        }
        Ok(())
    }

    /// fatrace watching the temporary directory's mount for open events of
    /// processes named like the worker; events are the lines it printed.
    pub(super) fn fatrace_round(&self, tag: &str, record: &mut Record<'_>) -> Result<()> {
        let out = self.tmp.join(format!("fatrace-{tag}.txt"));
        let comm = self
            .worker_exe
            .file_name()
            .and_then(|n| n.to_str())
            .map(|n| n.chars().take(15).collect::<String>())
            .unwrap_or_else(|| "xtask".to_owned());
        let mut cmd = Command::new(FATRACE);
        cmd.args(["-c", "-f", "O", "-C", &comm, "-o"])
            .arg(&out)
            .current_dir(&self.tmp)
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        let mut fatrace = Daemon::spawn("fatrace", &mut cmd)?;
        let probe = self.tmp.join("fatrace-probe.txt");
        self.wait_for_line(&mut fatrace, &out, &probe)?;
        let mut runs = Vec::new();
        for workload in WORKLOADS {
            let before = self.count_records(workload, &out)?;
            let report = self.timed_run(workload, &Placement::default())?;
            runs.push((workload, report, before));
        }
        // It looks at the signal only between batches of events, and on a
        // quiet mount the next batch may not come (a bench at 22:19 on
        // 2026-12-01 had it killed after 10 s): opening the probe, on the
        // mount it watches, brings one.
        let status = fatrace.stop_nudging(libc::SIGINT, Duration::from_secs(30), || {
            let _ = fs::read(&probe);
        })?;
        ensure!(
            status.success(),
            "fatrace exited with {status} after SIGINT"
        );
        for (workload, report, before) in runs {
            let seen = self.count_records(workload, &out)? - before;
            let seen = (workload != Workload::Connect).then_some(seen);
            record(Setup::FatraceInside, workload, report, seen);
        }
        fs::remove_file(&out).with_context(|| format!("removing {}", out.display()))
    }

    /// Opens `probe` (one worker run each) until the tracer writing `out`
    /// has printed a line for it: then it is attached.
    fn wait_for_line(&self, daemon: &mut Daemon, out: &Path, probe: &Path) -> Result<()> {
        fs::write(probe, "probe\n").with_context(|| format!("writing {}", probe.display()))?;
        let needle = probe.to_string_lossy().into_owned();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = daemon.try_wait()? {
                bail!(
                    "{} exited ({status}) before tracing anything",
                    daemon.name()
                );
            }
            let mut cmd = Command::new(&self.worker_exe);
            cmd.arg("bench-worker")
                .arg("--path")
                .arg(probe)
                .args(["--iterations", "1", "--warmup", "0"])
                .stdin(Stdio::null())
                .stdout(Stdio::null());
            exec(&mut cmd).context("running the readiness probe")?;
            thread::sleep(Duration::from_millis(200));
            if fs::read_to_string(out).is_ok_and(|t| t.contains(&needle)) {
                return Ok(());
            }
            ensure!(
                Instant::now() < deadline,
                "{} printed no line for {} within 30 s",
                daemon.name(),
                probe.display()
            );
        }
    }

    /// auditd with one rule for open, openat, openat2, creat and connect,
    /// scoped to the audit login uid the inside runs set; the outside runs
    /// pay what an audit rule costs everyone else.
    pub(super) fn audit_round(&self, tag: &str, record: &mut Record<'_>) -> Result<()> {
        let audit = Audit::start(&self.tmp.join(format!("audit-{tag}")))?;
        for workload in WORKLOADS {
            let report = self.timed_run(workload, &Placement::default())?;
            record(Setup::AuditOutside, workload, report, None);
        }
        for workload in WORKLOADS {
            let before = audit.syscall_records()?;
            let inside = Placement {
                loginuid: Some(AUDIT_LOGINUID),
                ..Placement::default()
            };
            let report = self.timed_run(workload, &inside)?;
            let after = audit.settled(before + report.opens)?;
            record(Setup::AuditInside, workload, report, Some(after - before));
        }
        audit.stop()
    }
}

/// A running auditd with the benchmark's rule; the rule is removed and the
/// audit status restored on stop or drop.
struct Audit {
    dir: PathBuf,
    daemon: Option<Daemon>,
    enabled_before: String,
}

/// `auditd.conf` writing RAW records to `log`, ignoring disk space.
fn auditd_conf(dir: &Path) -> String {
    format!(
        "local_events = yes\nwrite_logs = yes\nlog_file = {log}\nlog_group = root\n\
         log_format = RAW\nflush = NONE\nfreq = 0\nmax_log_file = 0\nnum_logs = 1\n\
         max_log_file_action = IGNORE\nspace_left = 2\nspace_left_action = IGNORE\n\
         admin_space_left = 1\nadmin_space_left_action = IGNORE\ndisk_full_action = IGNORE\n\
         disk_error_action = IGNORE\nname_format = NONE\nplugin_dir = {plugins}\n\
         q_depth = 2000\noverflow_action = IGNORE\nend_of_event_timeout = 2\n",
        log = dir.join("audit.log").display(),
        plugins = dir.join("plugins").display(),
    )
}

fn audit_status(key: &str) -> Result<String> {
    let text = output(Command::new(AUDITCTL).arg("-s").stdin(Stdio::null()))?;
    Ok(text
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(' ').map(str::to_owned))
        .unwrap_or_default())
}

impl Audit {
    fn start(dir: &Path) -> Result<Self> {
        ensure!(
            audit_status("pid")?.trim() == "0",
            "another audit daemon is running (auditctl -s: pid {}); the benchmark needs its own",
            audit_status("pid")?
        );
        fs::create_dir_all(dir.join("plugins"))
            .with_context(|| format!("creating {}", dir.display()))?;
        fs::write(dir.join("auditd.conf"), auditd_conf(dir))?;
        let log = File::create(dir.join("auditd.stderr"))?;
        let mut cmd = Command::new(AUDITD);
        cmd.arg("-n")
            .arg("-c")
            .arg(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        let mut audit = Audit {
            dir: dir.to_path_buf(),
            enabled_before: audit_status("enabled")?,
            daemon: Some(Daemon::spawn("auditd", &mut cmd)?),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while audit_status("pid")?.trim() == "0" {
            if let Some(status) = audit.daemon.as_mut().expect("started").try_wait()? {
                bail!(
                    "auditd exited ({status}); see {}",
                    dir.join("auditd.stderr").display()
                );
            }
            ensure!(
                Instant::now() < deadline,
                "auditd did not register within 20 s"
            );
            thread::sleep(Duration::from_millis(50));
        }
        exec(
            Command::new(AUDITCTL)
                .args([
                    "-a",
                    "always,exit",
                    "-F",
                    "arch=b64",
                    "-S",
                    "open,openat,openat2,creat,connect",
                    "-F",
                    &format!("auid={AUDIT_LOGINUID}"),
                    "-k",
                    AUDIT_KEY,
                ])
                .stdout(Stdio::null()),
        )?;
        Ok(audit)
    }

    /// SYSCALL records carrying the benchmark's key written so far.
    fn syscall_records(&self) -> Result<u64> {
        let log = self.dir.join("audit.log");
        let text = fs::read(&log).unwrap_or_default();
        let needle = format!("key=\"{AUDIT_KEY}\"");
        Ok(String::from_utf8_lossy(&text)
            .lines()
            .filter(|l| l.starts_with("type=SYSCALL") && l.contains(&needle))
            .count() as u64)
    }

    /// Waits until `target` records are written or the count stops moving
    /// for a second.
    fn settled(&self, target: u64) -> Result<u64> {
        let mut last = self.syscall_records()?;
        let mut changed = Instant::now();
        while last < target && changed.elapsed() < Duration::from_secs(1) {
            thread::sleep(Duration::from_millis(100));
            let now = self.syscall_records()?;
            if now != last {
                (last, changed) = (now, Instant::now());
            }
        }
        Ok(last)
    }

    fn stop(mut self) -> Result<()> {
        self.restore()
    }

    fn restore(&mut self) -> Result<()> {
        let Some(daemon) = self.daemon.take() else {
            return Ok(());
        };
        let removed = exec(
            Command::new(AUDITCTL)
                .args(["-D", "-k", AUDIT_KEY])
                .stdout(Stdio::null()),
        );
        let stopped = daemon.stop(libc::SIGTERM, Duration::from_secs(10));
        let enabled = exec(
            Command::new(AUDITCTL)
                .args(["-e", self.enabled_before.trim()])
                .stdout(Stdio::null()),
        );
        removed.context("removing the benchmark's audit rule")?;
        stopped.context("stopping auditd")?;
        enabled.context("restoring the audit enabled flag")?;
        let _ = fs::remove_file(self.dir.join("audit.log"));
        Ok(())
    }
}

impl Drop for Audit {
    fn drop(&mut self) {
        if let Err(error) = self.restore() {
            eprintln!("warning: restoring the audit state: {error:#}");
        }
    }
}
