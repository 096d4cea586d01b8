//! Persistent workers with real Bazel (Debian's bazel-bootstrap 4.2.3): the
//! fixture in `tests/bazel/worker_workspace` has a Python worker speaking
//! Bazel's proto worker protocol and a `concat` rule that runs in it
//! (`supports-workers`). `//:clean` reads its declared input; `//:sneaky`
//! also reads `undeclared.txt` by absolute path. Both run in ONE worker
//! process (`--worker_max_instances=1`): with `--worker_sandboxing` each
//! access is attributed to its request; without it the worker is a scope of
//! its own, its spawns counted as not attributable. `//:late` reads the
//! undeclared file before it opens its output, after `//:clean`'s request:
//! between two requests, blamed on neither.
use std::{
    fs,
    path::{Path, PathBuf},
};

use monitor_integration_tests::{
    bazel::{BAZEL, copy_tree, startup_args},
    *,
};
use serde_json::{Value, json};

/// The two targets one worker serves in the first tests.
const TWO: [&str; 2] = ["//:clean", "//:sneaky"];

struct Build {
    _tmp: tempfile::TempDir,
    ws: PathBuf,
    code: Option<i32>,
    stderr: String,
    report: Value,
}

impl Build {
    fn alerts(&self) -> Vec<&Value> {
        self.report["alerts"]
            .as_array()
            .map(|a| a.iter().collect())
            .unwrap_or_default()
    }

    /// The report's `bazel.workers`: every worker process seen.
    fn workers(&self) -> &Vec<Value> {
        self.report["bazel"]["workers"]
            .as_array()
            .unwrap_or_else(|| panic!("no bazel.workers: {:#}", self.report))
    }

    /// The one worker process, which served both targets (sorted labels).
    fn only_worker(&self) -> (&Value, Vec<String>) {
        let workers = self.workers();
        assert_eq!(workers.len(), 1, "one worker process: {workers:#?}");
        let mut labels: Vec<String> = workers[0]["served"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["label"].as_str().unwrap_or("?").to_owned())
            .collect();
        labels.sort();
        (&workers[0], labels)
    }

    fn undeclared_alerts(&self) -> Vec<&Value> {
        let path = self.ws.join("undeclared.txt");
        self.alerts()
            .into_iter()
            .filter(|a| a["file"]["path"] == path.display().to_string())
            .collect()
    }

    fn completeness(&self) -> &Value {
        &self.report["completeness"]
    }
}

/// Builds `targets` of the fixture under `monitor exec` (with
/// `monitor_args`), the worker strategy for its rule, one worker process,
/// and `extra` build flags.
fn build(targets: &[&str], extra: &[&str], monitor_args: &[&str]) -> Build {
    bazel::require_bazel();
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let ws = t.join("ws");
    copy_tree(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("bazel/worker_workspace"),
        &ws,
    );
    let report = t.join("report.json");
    let startup = startup_args(t);
    let out = bazel::monitor_exec(t, &ws, None)
        .args(monitor_args)
        .arg("--report")
        .arg(&report)
        .arg("--")
        .arg(BAZEL)
        .args(&startup)
        .arg("build")
        .args([
            "--symlink_prefix=/",
            "--strategy=FixtureConcat=worker",
            "--worker_max_instances=1",
        ])
        .arg(format!(
            "--define=MONITOR_FIXTURE_UNDECLARED={}",
            ws.join("undeclared.txt").display()
        ))
        .args(extra)
        .args(targets)
        .output()
        .unwrap();
    bazel::shutdown(&ws, t, &startup);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        stderr.contains("Build completed successfully"),
        "the build failed:\n{stderr}"
    );
    let report = bazel::read_report(&report, &stderr);
    Build {
        _tmp: tmp,
        ws,
        code: out.status.code(),
        stderr,
        report,
    }
}

/// The worker really served both requests: their outputs hold what each
/// read (for `//:sneaky`, the undeclared file's text too).
fn check_outputs(b: &Build) {
    let bin =
        b.ws.parent()
            .unwrap()
            .join("ob/execroot/worker_fixture/bazel-out/k8-fastbuild/bin");
    let sneaky = fs::read_to_string(bin.join("sneaky.out")).unwrap();
    assert!(sneaky.contains("declared input of sneaky"), "{sneaky}");
    assert!(sneaky.contains("did not declare"), "read it: {sneaky}");
    let clean = fs::read_to_string(bin.join("clean.out")).unwrap();
    assert_eq!(clean, "declared input of clean\n");
}

#[test]
fn worker_sandboxing_attributes_each_request_of_one_worker() {
    let b = build(&TWO, &["--worker_sandboxing"], &[]);
    check_outputs(&b);
    let (worker, labels) = b.only_worker();
    assert_eq!(labels, ["//:clean", "//:sneaky"], "{worker:#}");
    assert_eq!(worker["attribution"], "per_request", "{worker:#}");
    assert_eq!(worker["sandboxed"], true);
    assert_eq!(worker["mnemonic"], "FixtureConcat");
    assert_eq!(worker["events_unattributed"], 0, "{worker:#}");
    for served in worker["served"].as_array().unwrap() {
        // Each request's own accesses (its output, its input) were its.
        assert!(
            served["events_attributed"].as_u64().unwrap() >= 3,
            "{served}"
        );
        assert_eq!(served["declared_by"], "execution_log");
    }
    // The undeclared read is //:sneaky's, and nothing else is an alert:
    // //:clean's reads (in the same process) are judged against its own.
    let undeclared = b.undeclared_alerts();
    assert_eq!(undeclared.len(), 1, "{:#?}", b.alerts());
    assert_eq!(undeclared[0]["kind"], "undeclared_file");
    assert_eq!(undeclared[0]["action"]["label"], "//:sneaky");
    assert_eq!(undeclared[0]["action"]["mnemonic"], "FixtureConcat");
    assert_eq!(b.alerts().len(), 1, "{:#?}", b.alerts());
    assert_eq!(b.report["violations"], 1);
    assert_eq!(b.completeness()["worker_spawns_unattributable"], 0);
    assert_eq!(b.completeness()["complete"], true, "{}", b.completeness());
    assert!(
        b.stderr.contains(
            "monitor: 1 persistent worker(s) served 2 spawn(s); 0 spawn(s) not attributable to one action"
        ),
        "{}",
        b.stderr
    );
    assert_eq!(b.code, Some(1), "a violation: {}", b.stderr);
}

#[test]
fn without_worker_sandboxing_the_worker_is_a_scope_and_not_attributable() {
    let md = tempfile::tempdir().unwrap();
    let markdown = md.path().join("summary.md");
    let b = build(&TWO, &[], &["--markdown", markdown.to_str().unwrap()]);
    check_outputs(&b);
    let (worker, labels) = b.only_worker();
    assert_eq!(labels, ["//:clean", "//:sneaky"], "{worker:#}");
    assert_eq!(worker["attribution"], "worker_scope", "{worker:#}");
    assert_eq!(worker["sandboxed"], false);
    assert_eq!(worker["mnemonic"], "FixtureConcat");
    assert!(worker["events_unattributed"].as_u64().unwrap() > 0);
    // The read is reported (no action it served declared it), for the
    // worker scope, not for a target it cannot be tied to.
    let undeclared = check_blamed_on_the_worker_scope(&b, worker);
    assert_eq!(undeclared["action"]["mnemonic"], "FixtureConcat");
    let c = b.completeness();
    assert_eq!(b.report["bazel"]["worker_spawns_unattributable"], 2);
    assert_eq!(
        c["gaps"],
        json!(["2 spawn(s) run by a persistent worker could not be attributed to one action"])
    );
    let summary = fs::read_to_string(&markdown).unwrap();
    assert!(
        summary.contains("| Persistent-worker spawns not attributable to one action | 2 |"),
        "{summary}"
    );
    assert!(
        b.stderr
            .contains("2 spawn(s) not attributable to one action"),
        "{}",
        b.stderr
    );
    assert_eq!(b.code, Some(1), "{}", b.stderr);
}

/// A clean worker build: complete and exit 0 with worker sandboxing; without
/// it, incomplete, so exit 1 unless `--allow-incomplete`.
#[test]
fn unattributable_worker_spawns_make_a_clean_build_incomplete() {
    let sandboxed = build(&["//:clean"], &["--worker_sandboxing"], &[]);
    assert_eq!(
        sandboxed.report["violations"],
        0,
        "{:#?}",
        sandboxed.alerts()
    );
    assert_eq!(sandboxed.only_worker().1, ["//:clean"]);
    assert_eq!(sandboxed.completeness()["complete"], true);
    assert_eq!(sandboxed.code, Some(0), "{}", sandboxed.stderr);

    let plain = build(&["//:clean"], &[], &[]);
    assert_eq!(plain.report["violations"], 0, "{:#?}", plain.alerts());
    assert_eq!(plain.only_worker().1, ["//:clean"]);
    assert_eq!(plain.completeness()["worker_spawns_unattributable"], 1);
    assert_eq!(plain.code, Some(1), "{}", plain.stderr);
    assert!(
        plain
            .stderr
            .contains("monitoring was incomplete: 1 spawn(s) run by a persistent worker"),
        "{}",
        plain.stderr
    );

    let accepted = build(&["//:clean"], &[], &["--allow-incomplete"]);
    assert_eq!(accepted.completeness()["complete"], false);
    assert_eq!(accepted.code, Some(0), "{}", accepted.stderr);
}

/// `//:late` runs after `//:clean` in the same (sandboxed) worker and opens
/// its output only at the end: its undeclared read lies between the two
/// requests' output opens. It is reported for the worker scope, blamed on
/// neither target, and both spawns are counted as not attributable.
#[test]
fn a_read_between_two_requests_is_blamed_on_neither() {
    let b = build(&["//:late"], &["--worker_sandboxing"], &[]);
    let bin =
        b.ws.parent()
            .unwrap()
            .join("ob/execroot/worker_fixture/bazel-out/k8-fastbuild/bin");
    let late = fs::read_to_string(bin.join("late.out")).unwrap();
    assert!(late.contains("did not declare"), "read it: {late}");
    let (worker, _) = b.only_worker();
    let served: Vec<&Value> = worker["served"].as_array().unwrap().iter().collect();
    assert_eq!(served.len(), 2, "{worker:#}");
    assert_eq!(served[0]["label"], "//:clean", "served first: {worker:#}");
    assert_eq!(served[1]["label"], "//:late");
    assert_eq!(worker["attribution"], "per_request");
    assert!(
        worker["events_unattributed"].as_u64().unwrap() > 0,
        "{worker:#}"
    );
    check_blamed_on_the_worker_scope(&b, worker);
    assert_eq!(b.code, Some(1), "{}", b.stderr);
}

/// The one undeclared read is the worker scope's (no label, the worker's
/// id), no alert names a target, and both spawns are counted as not
/// attributable: the run is incomplete. Returns that alert.
fn check_blamed_on_the_worker_scope<'a>(b: &'a Build, worker: &Value) -> &'a Value {
    let undeclared = b.undeclared_alerts();
    assert_eq!(undeclared.len(), 1, "{:#?}", b.alerts());
    assert_eq!(undeclared[0]["action"]["label"], Value::Null);
    assert_eq!(undeclared[0]["action"]["id"], worker["id"]);
    assert!(
        b.alerts().iter().all(|a| a["action"]["label"].is_null()),
        "{:#?}",
        b.alerts()
    );
    let c = b.completeness();
    assert_eq!(c["worker_spawns_unattributable"], 2, "{c}");
    assert_eq!(c["complete"], false);
    undeclared[0]
}
