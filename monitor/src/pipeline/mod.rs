//! The event loop, and only the loop. Four parties, none waiting on another:
//!
//! * the ring reader thread (`reader`) reads, decodes and hands
//!   batches of events over;
//! * the watcher (`actions::watch`) reads declaration files on inotify,
//!   rescans as a safety net, and does the slow reads the registry asks for
//!   (sandbox trees, `/proc`) on the blocking pool;
//! * this loop routes events and updates through `handle::Handler`
//!   (registry → policy → folder) and ticks the held-event deadlines;
//! * the sink thread (`output::writer`) writes the alerts of each fold
//!   window.
//!
//! At stop: detach the programs, let the reader drain the ring to the end,
//! wait for outstanding reads, judge everything held, label from Bazel's
//! execution log, write the last alerts.
pub mod handle;
pub mod reader;
pub mod reload;
pub mod repeats;
pub mod workers;

use std::{
    future::Future,
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use monitor_common::{LOST_LINEAGE_FULL, LOST_REASONS, LOST_RINGBUF_FULL};
use tokio::sync::mpsc;

use crate::{
    actions::watch::{self, Update},
    bazel::{
        execlog::{ExecLog, ExecLogFile},
        labels::{TraceLabels, labels_from_log, labels_from_trace, load_log},
        report::BazelRecord,
        report::DeclaredBy,
        trace_profile::TraceProfile,
        unsandboxed::declaration_from_log,
    },
    events::decode::Event,
    kernel::{loader::Kernel, ring::EventRing},
    output::{metrics::Metrics, writer::SinkWriter},
    pipeline::{
        handle::{Handler, TICK},
        reader::Reader,
        reload::{Reload, next_reload},
    },
};

/// Batches of decoded events in flight between the reader and this loop
/// (each up to 4096 events). When full, the reader waits and the kernel
/// counts what the ring cannot hold.
const BATCHES_IN_FLIGHT: usize = 256;
/// How long a stop waits for outstanding sandbox reads.
const READS_AT_STOP: Duration = Duration::from_secs(10);
/// The kernel's loss counters and their `events_lost_total` reasons.
const LOST_NAMES: [(u32, &str); LOST_REASONS as usize] = [
    (LOST_RINGBUF_FULL, "ringbuf_full"),
    (LOST_LINEAGE_FULL, "lineage_full"),
];

pub struct Pipeline {
    pub handler: Handler,
    sinks: SinkWriter,
    metrics: Arc<Metrics>,
    fold_window: Duration,
    declarations_dir: PathBuf,
    /// Bazel's JSON execution log, read at the end to label spawns whose
    /// alerts are still pending (`monitor exec` holds them until then).
    exec_log: Option<ExecLogFile>,
    /// Bazel's JSON trace profile, read at the end instead of an execution
    /// log for the labels alone (`[bazel] label_source = "trace_profile"`).
    trace_profile: Option<PathBuf>,
    lost_seen: [u64; LOST_REASONS as usize],
    /// The kernel's count of failed probes it did not report, as last added.
    folded_seen: u64,
    /// Needs handed to the watcher side and not answered yet.
    outstanding: usize,
    /// Config reloads (`monitor run` on SIGHUP), applied between events.
    reloads: Option<mpsc::UnboundedReceiver<Reload>>,
    /// The report's `bazel` section (spawns, isolation, unread inputs),
    /// built at the end when an execution log was read.
    pub bazel_section: Option<serde_json::Value>,
    /// Bazel's workspace rules log and the downloader rules its fetches
    /// are judged against (`monitor exec` of a Bazel build).
    fetch_log: Option<FetchLog>,
    /// The repository fetches, judged at the end.
    pub fetches: Vec<crate::policy::fetches::Fetch>,
    /// How often the ring reader drains while records come (it is also
    /// woken by the kernel: a batch crossed the threshold, or a launch).
    drain_interval: Duration,
}

/// Where the fetches come from and what judges them.
pub struct FetchLog {
    pub path: PathBuf,
    pub rules: crate::policy::downloader::Downloader,
    /// `[bazel.downloader]` was given (else Bazel's default: any URL).
    pub configured: bool,
}

impl Pipeline {
    pub fn new(
        handler: Handler,
        sinks: SinkWriter,
        metrics: Arc<Metrics>,
        fold_window: Duration,
        declarations_dir: PathBuf,
    ) -> Self {
        Pipeline {
            handler,
            sinks,
            metrics,
            fold_window,
            declarations_dir,
            exec_log: None,
            trace_profile: None,
            lost_seen: [0; LOST_REASONS as usize],
            folded_seen: 0,
            outstanding: 0,
            reloads: None,
            bazel_section: None,
            fetch_log: None,
            fetches: Vec::new(),
            drain_interval: reader::DRAIN_INTERVAL,
        }
    }

    /// See [`Pipeline::drain_interval`].
    pub fn set_drain_interval(&mut self, interval: Duration) {
        self.drain_interval = interval;
    }

    /// Reloads arriving here are applied while running.
    pub fn set_reloads(&mut self, reloads: mpsc::UnboundedReceiver<Reload>) {
        self.reloads = Some(reloads);
    }

    /// Alerts will be labelled from this execution log when the run ends.
    pub fn set_exec_log(&mut self, log: Option<ExecLogFile>) {
        self.handler.keep_spawn_commands = log.is_some();
        self.handler.spawns.keep_opened(true);
        self.handler.registry.defer_unsandboxed = log.is_some();
        self.exec_log = log;
    }

    /// Alerts will be labelled from this trace profile when the run ends.
    /// No spawn waits for it: one that runs without a sandbox tree is
    /// declared by the tree it works in, as without any record.
    pub fn set_trace_profile(&mut self, profile: PathBuf) {
        self.handler.keep_spawn_commands = true;
        // The profile lists no inputs: no unread-input check to keep for.
        self.handler.spawns.keep_opened(false);
        self.handler.registry.defer_unsandboxed = false;
        self.exec_log = None;
        self.trace_profile = Some(profile);
    }

    /// Repository fetches will be read from this log and judged at the end.
    pub fn set_fetch_log(&mut self, log: Option<FetchLog>) {
        self.fetch_log = log;
    }

    /// Runs until `stop` completes, then detaches the programs, drains what
    /// is left, judges every held event and writes every alert.
    pub async fn run(
        &mut self,
        kernel: &mut Kernel,
        stop: impl Future<Output = ()>,
    ) -> anyhow::Result<()> {
        let ring = kernel.events.take().expect("ring buffer taken once");
        self.handler.repeats.counts = kernel.seen.take();
        let ring = EventRing::new(ring, u64::from(kernel.ring_bytes))?;
        let (batch_tx, mut batches) = mpsc::channel(BATCHES_IN_FLIGHT);
        let mut reader = Reader::start(ring, batch_tx, self.metrics.clone(), self.drain_interval);
        let (update_tx, mut updates) = mpsc::unbounded_channel();
        let mut reloads = self.reloads.take();
        let mut watcher = watch::start(
            self.handler.registry.scopes().to_vec(),
            self.declarations_dir.clone(),
            update_tx.clone(),
            self.metrics.clone(),
        );
        let mut ticker = tokio::time::interval(TICK);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_flush = Instant::now();
        tokio::pin!(stop);
        loop {
            tokio::select! {
                biased;
                () = &mut stop => break,
                Some(batch) = batches.recv() => {
                    self.events(batch, &update_tx);
                    self.write_grants(kernel);
                }
                Some(update) = updates.recv() => {
                    self.update(update, &update_tx);
                    self.write_grants(kernel);
                }
                Some(reload) = next_reload(&mut reloads) => {
                    // Re-reading declarations (perhaps from a new directory)
                    // is a fresh watcher; the old one is joined first.
                    drop(watcher);
                    self.reload(reload, kernel);
                    watcher = watch::start(
                        self.handler.registry.scopes().to_vec(),
                        self.declarations_dir.clone(),
                        update_tx.clone(),
                        self.metrics.clone(),
                    );
                }
                _ = ticker.tick() => {
                    let now = Instant::now();
                    self.handler.tick(now);
                    self.sync_kernel_counts(kernel);
                    if now.duration_since(last_flush) >= self.fold_window {
                        last_flush = now;
                        self.flush_alerts();
                    }
                }
            }
        }
        kernel.detach();
        reader.finish();
        while let Some(batch) = batches.recv().await {
            self.events(batch, &update_tx);
        }
        reader.join();
        self.sync_kernel_counts(kernel);
        self.await_outstanding(&mut updates, &update_tx).await;
        drop(watcher);
        self.finish();
        Ok(())
    }

    fn events(&mut self, batch: Vec<Event>, updates: &mpsc::UnboundedSender<Update>) {
        let now = Instant::now();
        for event in batch {
            self.handler.event(event, now);
        }
        self.serve_needs(updates);
    }

    fn update(&mut self, update: Update, updates: &mpsc::UnboundedSender<Update>) {
        if matches!(update, Update::SpawnRead { .. } | Update::WorkerRead { .. }) {
            self.outstanding = self.outstanding.saturating_sub(1);
        }
        self.handler.update(update, Instant::now());
        self.serve_needs(updates);
    }

    /// Writes the declared network grants into the kernel's action tier,
    /// and the sandboxes whose failed probes it may count.
    fn write_grants(&mut self, kernel: &mut Kernel) {
        for (action, rules) in self.handler.grants.pending.drain(..) {
            if let Err(e) = kernel.set_action_allow(action, &rules.any_port, &rules.by_port) {
                log::warn!(
                    "declared network of cgroup id {action} not enforced in the kernel: {e:#}"
                );
            }
        }
        for (action, dir) in self.handler.sandboxes.pending.drain(..) {
            if let Err(e) = kernel.sandboxes.set(action, dir) {
                // Registering failed: its probes are reported, as before.
                log::warn!("sandbox of action {action:#x} in the kernel: {e:#}");
            }
        }
    }

    fn serve_needs(&mut self, updates: &mpsc::UnboundedSender<Update>) {
        for need in self.handler.needs.drain(..) {
            self.outstanding += 1;
            watch::serve(need, updates.clone(), self.handler.made_links.clone());
        }
    }

    /// Sandbox reads still running at stop are waited for (bounded), so the
    /// spawns they belong to are judged against what they declared.
    async fn await_outstanding(
        &mut self,
        updates: &mut mpsc::UnboundedReceiver<Update>,
        update_tx: &mpsc::UnboundedSender<Update>,
    ) {
        let deadline = tokio::time::Instant::now() + READS_AT_STOP;
        while self.outstanding > 0 {
            match tokio::time::timeout_at(deadline, updates.recv()).await {
                Ok(Some(update)) => self.update(update, update_tx),
                Ok(None) | Err(_) => {
                    log::warn!(
                        "{} sandbox read(s) did not finish in time; their spawns are judged without them",
                        self.outstanding
                    );
                    return;
                }
            }
        }
    }

    /// Judges what is still held, labels from the execution log, writes the
    /// last alerts and waits for the sinks.
    fn finish(&mut self) {
        let log = self.exec_log.as_ref().and_then(load_log);
        let mut worker_outcome = None;
        if let Some(file) = &self.exec_log {
            let path = file.path.clone();
            worker_outcome = Some(workers::attribute(&mut self.handler, log.as_ref(), &path));
            self.declare_unsandboxed(log.as_ref(), &path);
        }
        self.handler.release_all();
        let traced = self
            .trace_profile
            .clone()
            .map(|p| self.label_from_trace(&p));
        let labels = match (&log, &traced) {
            (Some(log), _) => Some(self.label_pending(log)),
            (None, Some(traced)) => Some(traced.by_action.clone()),
            (None, None) => None,
        };
        self.handler.resolve_held(labels.as_ref());
        self.judge_fetches();
        if self.exec_log.is_some() {
            let mut section = self.handler.spawns.section(BazelRecord::Log(log.as_ref()));
            let outcome = worker_outcome.unwrap_or_default();
            self.handler.summary.worker_spawns_unattributable = outcome.unattributable;
            section["workers"] = serde_json::Value::from(outcome.workers);
            section["worker_spawns_unattributable"] = outcome.unattributable.into();
            self.bazel_section = Some(section);
        } else if let Some(traced) = &traced {
            let mut section = self.handler.spawns.section(BazelRecord::Trace(traced));
            section["spawns_label_ambiguous"] = traced.ambiguous.into();
            self.bazel_section = Some(section);
        }
        self.flush_alerts();
        self.sinks.finish();
    }

    /// Labels the spawns' pending alerts from Bazel's trace profile at
    /// `path` (see [`labels_from_trace`]), and counts the profile's local
    /// runs that no launcher seen accounts for. A profile cut short labels
    /// what it holds (warned); one that cannot be read labels nothing.
    fn label_from_trace(&mut self, path: &std::path::Path) -> TraceLabels {
        let profile = match TraceProfile::load(path) {
            Ok((profile, cut)) => {
                if let Some(cut) = cut {
                    log::warn!(
                        "trace profile {}: {cut}; using the actions before it",
                        path.display()
                    );
                }
                profile
            }
            Err(e) => {
                log::warn!(
                    "no labels for spawns: trace profile {}: {e}",
                    path.display()
                );
                TraceProfile::default()
            }
        };
        let traced = labels_from_trace(&profile, &self.handler.spawns);
        let summary = &mut self.handler.summary;
        let launched = self.handler.spawns.records().count();
        summary.unmonitored_spawns = traced.local_runs.saturating_sub(launched);
        summary.inventory.relabel(&traced.by_action);
        label_alerts(self.handler.folder.pending_mut(), &traced.by_action);
        traced
    }

    /// Joins the workspace rules log with the job's connects, judges each
    /// fetch against the downloader rules and counts the violations.
    fn judge_fetches(&mut self) {
        let Some(f) = &self.fetch_log else { return };
        let Some(log) = crate::bazel::fetches::WorkspaceLog::load(&f.path) else {
            return;
        };
        if log.undecoded_bytes > 0 {
            log::warn!(
                "{}: the last {} byte(s) were no complete event (Bazel stopped while writing?)",
                f.path.display(),
                log.undecoded_bytes
            );
        }
        let summary = &self.handler.summary;
        if summary.server_connects.dropped > 0 {
            log::warn!(
                "{} connect(s) of the Bazel job were not joined with its fetches (more than 4096 distinct)",
                summary.server_connects.dropped
            );
        }
        let names = |a| summary.inventory.names.of(a);
        self.fetches =
            crate::policy::fetches::join(&log, &summary.server_connects, &f.rules, &names);
        for v in crate::policy::fetches::fetch_violations(&self.fetches, f.configured) {
            self.handler.count_violation(v);
        }
        self.label_repository_commands(&log);
    }

    /// The alerts and inventory entries of repository rules' commands are
    /// named by their repository (mnemonic `RepositoryRule`).
    fn label_repository_commands(&mut self, log: &crate::bazel::fetches::WorkspaceLog) {
        let summary = &mut self.handler.summary;
        let repos = crate::bazel::fetches::repository_commands(log, &summary.spawn_commands);
        let mnemonic = Some("RepositoryRule".to_string());
        let by_action = repos
            .iter()
            .map(|(id, repo)| (id.clone(), (Some(repo.clone()), mnemonic.clone())))
            .collect();
        summary.inventory.relabel(&by_action);
        for alert in self.handler.folder.pending_mut() {
            if let Some(repo) = repos.get(&alert.action.id) {
                alert.action.label = Some(repo.clone());
                alert.action.mnemonic.clone_from(&mnemonic);
            }
        }
    }

    /// Spawns that ran without a sandbox tree are declared by their
    /// execution log entry (inputs and outputs, below the execroot they
    /// worked in) and judged now; without an entry, against the host
    /// policy alone.
    fn declare_unsandboxed(&mut self, log: Option<&ExecLog>, path: &std::path::Path) {
        for (key, cgroup, spawn) in self.handler.registry.deferred() {
            let entry = log.and_then(|l| l.find_by_command(&spawn.command, None));
            let declaration =
                entry.map(|e| declaration_from_log(e, &spawn.execroot, &cgroup, path));
            let by = match entry {
                Some(_) => DeclaredBy::ExecutionLog,
                None => DeclaredBy::None,
            };
            let ready = self.handler.registry.declare_deferred(key, declaration);
            self.handler.judge_ready(ready);
            self.handler.spawn_resolved(key, by);
        }
    }

    /// Labels the spawns' pending alerts from Bazel's execution log, and
    /// counts the sandboxed spawns in it that were never seen starting (they
    /// ran outside the monitored job). Returns the labels by action id.
    fn label_pending(&mut self, log: &ExecLog) -> crate::pipeline::handle::Labels {
        let summary = &mut self.handler.summary;
        let labels = labels_from_log(log, &summary.spawn_commands);
        {
            summary.unmonitored_spawns = labels
                .sandboxed_in_log
                .saturating_sub(summary.sandboxed_launches);
            summary.inventory.relabel(&labels.by_action);
            label_alerts(self.handler.folder.pending_mut(), &labels.by_action);
        }
        labels.by_action
    }

    fn flush_alerts(&mut self) {
        let alerts = self.handler.folder.take();
        if alerts.is_empty() {
            return;
        }
        self.handler.summary.written(&alerts);
        self.sinks.write(alerts);
    }

    /// Adds what the kernel counted and did not report: failed probes (to
    /// `events_total`) and lost events.
    fn sync_kernel_counts(&mut self, kernel: &Kernel) {
        let folded = kernel.sandboxes.folded();
        let delta = folded.saturating_sub(self.folded_seen);
        self.folded_seen = folded;
        self.metrics.probes_folded_total.inc_by(delta);
        self.metrics
            .events_total
            .with_label_values(&["file"])
            .inc_by(delta);
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
        let strays = self.handler.repeats.take_strays();
        if strays > 0 {
            log::warn!("{strays} repeats were counted after their process's count was taken");
            self.metrics
                .events_lost_total
                .with_label_values(&["repeat_after_take"])
                .inc_by(strays);
        }
    }
}

/// Puts each spawn's label and mnemonic (by action id, as the execution
/// log or the trace profile gives them) on its pending alerts; what a
/// record does not name keeps what the alert had.
fn label_alerts<'a>(
    alerts: impl Iterator<Item = &'a mut crate::output::alert::Alert>,
    by_action: &std::collections::HashMap<String, (Option<String>, Option<String>)>,
) {
    for alert in alerts {
        if let Some((label, mnemonic)) = by_action.get(&alert.action.id) {
            alert.action.label = label.clone().or(alert.action.label.take());
            alert.action.mnemonic = mnemonic.clone().or(alert.action.mnemonic.take());
        }
    }
}
