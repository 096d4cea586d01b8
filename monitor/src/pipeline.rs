//! The event loop: drain the ring buffer (woken in batches by the kernel,
//! and on a short timer), decode, enrich with process info, route through
//! the registry, judge, fold, and write alerts. One task owns all state.
use std::{
    future::Future,
    sync::Arc,
    time::{Duration, Instant},
};

use std::os::unix::ffi::OsStrExt as _;

use monitor_common::{LOST_LINEAGE_FULL, LOST_REASONS, LOST_RINGBUF_FULL};
use tokio::io::unix::AsyncFd;

use crate::{
    actions::registry::{ActionView, Registry},
    events::decode::{self, Event},
    events::processes::ProcessTable,
    kernel::loader::Kernel,
    kernel::ring::EventRing,
    output::alert::{Alert, ProcessInfo},
    output::fold::Folder,
    output::metrics::Metrics,
    output::sinks::AlertSinks,
    policy::judge::Policy,
};

/// How often the reader drains without being woken: bounds alert latency
/// while the kernel batches wakeups.
const DRAIN_INTERVAL: Duration = Duration::from_millis(10);
/// How often cgroups and declarations are rescanned.
const RESCAN_INTERVAL: Duration = Duration::from_millis(100);
/// The kernel's loss counters and their `events_lost_total` reasons.
const LOST_NAMES: [(u32, &str); LOST_REASONS as usize] = [
    (LOST_RINGBUF_FULL, "ringbuf_full"),
    (LOST_LINEAGE_FULL, "lineage_full"),
];
/// Records handled per wakeup before the loop looks at its timers again.
const DRAIN_BATCH: usize = 8192;

/// The spawn a launcher describes; what the kernel could not capture whole
/// (a very long argv) is read from /proc while the launcher still runs.
fn spawn_of(launch: &decode::Launch) -> crate::bazel::sandbox::Spawn {
    let pid = launch.origin.pid;
    let argv = if launch.argv_truncated {
        std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_else(|_| launch.argv.clone())
    } else {
        launch.argv.clone()
    };
    let cwd = match &launch.cwd {
        Some(cwd) => std::path::PathBuf::from(std::ffi::OsStr::from_bytes(cwd)),
        None => std::fs::read_link(format!("/proc/{pid}/cwd")).unwrap_or_default(),
    };
    let mut spawn = crate::bazel::sandbox::parse_launch(&argv, &cwd);
    // The kernel matched the launcher by comm; a script launcher has the
    // interpreter as argv[0].
    spawn.launcher = launch.origin.comm_str();
    spawn
}

/// An event with the process facts resolved at the time it was read.
pub struct Observed {
    pub event: Event,
    pub exe: Option<Arc<str>>,
}

impl Observed {
    /// The alert's process object (built only for violations).
    fn process(&self) -> ProcessInfo {
        let o = self.event.origin();
        ProcessInfo {
            pid: o.pid,
            ppid: o.ppid,
            comm: o.comm_str(),
            exe: self.exe.as_deref().map(str::to_owned),
        }
    }
}

pub struct Pipeline {
    pub registry: Registry<Observed>,
    pub policy: Policy,
    pub processes: ProcessTable,
    pub folder: Folder,
    pub sinks: AlertSinks,
    pub metrics: Arc<Metrics>,
    pub fold_window: Duration,
    /// Every alert written, kept for `monitor exec`'s summary and report.
    pub keep_alerts: bool,
    pub alerts: Vec<Alert>,
    pub violations: u64,
    /// Bazel's JSON execution log, read at the end to label spawns whose
    /// alerts are still pending (`monitor exec` holds them until then).
    pub exec_log: Option<std::path::PathBuf>,

    /// Processes that set up an io_uring (file opens through it are not
    /// seen): warned about once each.
    pub io_uring_processes: u64,
    /// Sandboxed spawns seen starting (launchers working in a sandbox dir).
    sandboxed_launches: usize,
    /// Sandboxed spawns in the execution log that were never seen: they ran
    /// outside the monitored job (a Bazel server started elsewhere).
    pub unmonitored_spawns: usize,
    /// The command line of every spawn that raised an alert, by action id.
    spawn_commands: std::collections::HashMap<String, Vec<String>>,
    lost_seen: [u64; LOST_REASONS as usize],
    /// Reused buffer of events ready to judge (the per-event hot path).
    ready: Vec<(Observed, Arc<ActionView>)>,
    /// `events_total` by kind, resolved once (the per-event hot path).
    event_counters: [prometheus::IntCounter; 6],
}

impl Pipeline {
    pub fn new(
        registry: Registry<Observed>,
        policy: Policy,
        sinks: AlertSinks,
        metrics: Arc<Metrics>,
        fold_window: Duration,
        keep_alerts: bool,
    ) -> Self {
        let event_counters = ["file", "net", "exec", "exit", "launch", "io_uring"]
            .map(|kind| metrics.events_total.with_label_values(&[kind]));
        Pipeline {
            registry,
            policy,
            processes: ProcessTable::default(),
            folder: Folder::default(),
            sinks,
            metrics,
            fold_window,
            keep_alerts,
            alerts: Vec::new(),
            violations: 0,
            exec_log: None,
            sandboxed_launches: 0,
            io_uring_processes: 0,
            unmonitored_spawns: 0,

            spawn_commands: std::collections::HashMap::new(),
            lost_seen: [0; LOST_REASONS as usize],
            event_counters,
            ready: Vec::new(),
        }
    }

    fn handle_record(&mut self, bytes: &[u8], now: Instant) {
        let event = match decode::decode(bytes) {
            Ok(event) => event,
            Err(e) => {
                log::warn!("undecodable event: {e}");
                self.metrics
                    .events_lost_total
                    .with_label_values(&["decode_error"])
                    .inc();
                return;
            }
        };
        self.event_counters[event.metric_index()].inc();
        let (pid, ppid) = (event.origin().pid, event.origin().ppid);
        match &event {
            Event::Exec(exec) => {
                self.processes.exec(pid, exec.exe.as_deref());
                return;
            }
            Event::Exit(origin) => {
                self.processes.exit(pid);
                self.registry.exit(origin, now);
                return;
            }
            Event::IoUring(o) => {
                if self.processes.note_io_uring(pid) {
                    self.io_uring_processes += 1;
                    log::warn!(
                        "process {pid} ({}) of monitored cgroup {} set up an io_uring: file opens it submits through the ring are not seen",
                        o.comm_str(),
                        o.action_cgroup_id
                    );
                }
                return;
            }
            Event::Launch(launch) => {
                let spawn = spawn_of(launch);
                if spawn.sandbox_dir.is_some() {
                    self.sandboxed_launches += 1;
                }
                self.registry.launch(&launch.origin, spawn);
                return;
            }
            Event::File(_) | Event::Connect(_) => {}
        }
        let exe = self.processes.exe(pid, ppid);
        let origin = *event.origin();
        let mut ready = std::mem::take(&mut self.ready);
        self.registry
            .route(&origin, Observed { event, exe }, now, &mut ready);
        self.judge_all(ready.drain(..));
        self.ready = ready;
    }

    fn judge_all(&mut self, ready: impl IntoIterator<Item = (Observed, Arc<ActionView>)>) {
        for (observed, action) in ready {
            let violation = match &observed.event {
                Event::File(f) => self.policy.judge_file(f, || observed.process(), &action),
                Event::Connect(c) => self.policy.judge_connect(c, || observed.process(), &action),
                Event::Exec(_) | Event::Exit(_) | Event::Launch(_) | Event::IoUring(_) => None,
            };
            if let Some(v) = violation {
                self.violations += 1;
                // Kept only when a log will be read (`monitor exec`).
                if self.exec_log.is_some()
                    && let Some(spawn) = &action.spawn
                    && !self.spawn_commands.contains_key(&action.info.id)
                {
                    self.spawn_commands
                        .insert(action.info.id.clone(), spawn.command.clone());
                }
                let mnemonic = v.alert.action.mnemonic.as_deref().unwrap_or("unknown");
                self.metrics
                    .violations_total
                    .with_label_values(&[v.alert.kind.as_str(), mnemonic])
                    .inc();
                self.folder.add(v.target, v.alert);
            }
        }
    }

    fn tick(&mut self, now: Instant) {
        let ready = self.registry.tick(now);
        self.judge_all(ready);
    }

    fn flush_alerts(&mut self) {
        let alerts = self.folder.take();
        if alerts.is_empty() {
            return;
        }
        self.sinks.write(&alerts);
        if self.keep_alerts {
            self.alerts.extend(alerts);
        }
    }

    /// Labels pending spawn alerts from Bazel's execution log, joined on the
    /// spawn's command line (no log records a pid or sandbox id).
    fn label_from_exec_log(&mut self) {
        let Some(path) = &self.exec_log else { return };
        let log = match crate::bazel::execlog::ExecLog::load_json(path) {
            Ok((log, None)) => log,
            Ok((log, Some(e))) => {
                log::warn!(
                    "execution log {}: {e}; using the {} entries before it",
                    path.display(),
                    log.entries.len()
                );
                log
            }
            Err(e) => {
                log::warn!("no labels for spawns: {e}");
                return;
            }
        };
        let ran = log.entries.iter().filter(|e| e.ran_sandboxed()).count();
        self.unmonitored_spawns = ran.saturating_sub(self.sandboxed_launches);
        for alert in self.folder.pending_mut() {
            let Some(command) = self.spawn_commands.get(&alert.action.id) else {
                continue;
            };
            if let Some(entry) = log.find_by_command(command, None) {
                alert.action.label = entry.label.clone().or(alert.action.label.take());
                alert.action.mnemonic = entry.mnemonic.clone().or(alert.action.mnemonic.take());
            }
        }
    }

    /// Copies the kernel's lost-event counters into the metrics.
    fn sync_lost(&mut self, kernel: &Kernel) {
        let now = kernel.lost_counts();
        for (reason, name) in LOST_NAMES {
            let i = reason as usize;
            let delta = now[i].saturating_sub(self.lost_seen[i]);
            if delta > 0 {
                log::warn!("kernel could not deliver {delta} events ({name})");
                self.metrics
                    .events_lost_total
                    .with_label_values(&[name])
                    .inc_by(delta);
            }
            self.lost_seen[i] = now[i];
        }
    }

    fn drain(&mut self, ring: &mut EventRing, limit: usize) -> usize {
        let now = Instant::now();
        ring.drain(limit, |record| self.handle_record(record, now))
    }

    /// Runs until `stop` completes, then detaches the programs, drains what
    /// is left, judges every held event and flushes every alert.
    pub async fn run(
        &mut self,
        kernel: &mut Kernel,
        stop: impl Future<Output = ()>,
    ) -> anyhow::Result<()> {
        let ring = kernel.events.take().expect("ring buffer taken once");
        let ring = EventRing::new(ring, monitor_common::RING_BYTES as u64)?;
        // SAFETY: the ring buffer map owns its fd and keeps it open for as
        // long as the AsyncFd owns the map.
        let mut ring =
            unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
                .map_err(std::io::Error::from)?;
        let mut drain_timer = tokio::time::interval(DRAIN_INTERVAL);
        drain_timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_rescan = Instant::now();
        let mut last_flush = Instant::now();
        tokio::pin!(stop);
        loop {
            tokio::select! {
                biased;
                () = &mut stop => break,
                guard = ring.readable_mut() => {
                    let mut guard = guard?;
                    if self.drain(guard.get_inner_mut(), DRAIN_BATCH) < DRAIN_BATCH {
                        guard.clear_ready();
                    }
                }
                _ = drain_timer.tick() => {
                    while self.drain(ring.get_mut(), DRAIN_BATCH) == DRAIN_BATCH {}
                    let now = Instant::now();
                    if now.duration_since(last_rescan) >= RESCAN_INTERVAL {
                        last_rescan = now;
                        self.tick(now);
                        self.sync_lost(kernel);
                    }
                    if now.duration_since(last_flush) >= self.fold_window {
                        last_flush = now;
                        self.flush_alerts();
                    }
                }
            }
        }
        kernel.detach();
        while self.drain(ring.get_mut(), usize::MAX) > 0 {}
        self.sync_lost(kernel);
        let ready = self.registry.release_all();
        self.judge_all(ready);
        self.label_from_exec_log();
        self.flush_alerts();
        self.sinks.flush();
        Ok(())
    }
}
