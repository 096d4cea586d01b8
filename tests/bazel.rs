//! End to end with real Bazel (Debian's bazel-bootstrap 4.2.3, installed by
//! `cargo xtask setup`): the fixture in `tests/bazel/workspace` built under
//! `monitor exec`, once per sandbox strategy. Each genrule is one case:
//! (a) `clean` reads only its srcs, (b) `abs_workspace` reads a workspace
//! file by absolute path, (c) `host_file` reads a host file, (d)
//! `net_default` connects from the default no-network sandbox, (e)
//! `net_requires` connects with `requires-network`.
use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use monitor_integration_tests::{
    bazel::{BAZEL, copy_tree, monitor_exec, startup_args},
    *,
};
use serde_json::Value;

struct Build {
    _tmp: tempfile::TempDir,
    ws: PathBuf,
    ob: PathBuf,
    host_file: PathBuf,
    port: u16,
    code: Option<i32>,
    stderr: String,
    alerts: Vec<Value>,
    report: Value,
}

impl Build {
    /// The command `monitor exec` ran (the report's `command`).
    fn command(&self) -> Vec<&str> {
        self.report["command"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap())
            .collect()
    }

    /// The report's `bazel.spawns` rows of one target.
    fn spawns_of(&self, label: &str) -> Vec<&Value> {
        self.report["bazel"]["spawns"]
            .as_array()
            .unwrap_or_else(|| panic!("no bazel.spawns: {:#}", self.report))
            .iter()
            .filter(|s| s["label"] == label)
            .collect()
    }

    /// Every target's spawn (the fixture's six genrules) ran with this
    /// isolation and had its declaration from `declared_by`.
    fn check_spawns(&self, isolation: &str, declared_by: &str) {
        assert_eq!(
            self.report["bazel"]["unseen_spawns"],
            serde_json::json!({}),
            "every spawn was seen starting"
        );
        self.check_spawns_as(isolation, declared_by, Some("Genrule"));
    }

    /// [`Build::check_spawns`]' rows, with this `mnemonic` (none from a
    /// trace profile).
    fn check_spawns_as(&self, isolation: &str, declared_by: &str, mnemonic: Option<&str>) {
        for label in TARGETS {
            let rows = self.spawns_of(label);
            assert_eq!(rows.len(), 1, "{label}: {:#}", self.report["bazel"]);
            assert_eq!(rows[0]["isolation"], isolation, "{label}: {}", rows[0]);
            assert_eq!(rows[0]["declared_by"], declared_by, "{label}: {}", rows[0]);
            assert_eq!(rows[0]["mnemonic"].as_str(), mnemonic, "{label}");
            assert_eq!(rows[0]["events_dropped"], 0, "{label}");
        }
    }

    /// `//:unread` declared three inputs (and genrule-setup.sh) and read one
    /// (and the setup script): exactly two unread, listed first.
    fn check_unread(&self) {
        let unread = self.report["bazel"]["unread_inputs"]
            .as_array()
            .unwrap_or_else(|| panic!("no bazel.unread_inputs: {:#}", self.report));
        let row = unread
            .iter()
            .find(|r| r["label"] == "//:unread")
            .unwrap_or_else(|| panic!("//:unread not listed: {unread:#?}"));
        assert_eq!(row["unread"], 2, "{row}");
        assert_eq!(
            row["inputs"],
            serde_json::json!(["unread_a.txt", "unread_b.txt"])
        );
        assert_eq!(row["declared"], 4, "three srcs and genrule-setup.sh: {row}");
        assert_eq!(unread[0]["unread"], 2, "largest first: {unread:#?}");
        // Positive control beside it: //:clean read its only src.
        assert!(
            unread.iter().all(|r| r["label"] != "//:clean"),
            "{unread:#?}"
        );
        assert!(
            self.stderr
                .contains("//:unread: 2 of 4 declared input(s) unread"),
            "{}",
            self.stderr
        );
    }

    fn alerts_of(&self, label: &str) -> Vec<&Value> {
        self.alerts
            .iter()
            .filter(|a| a["action"]["label"] == label)
            .collect()
    }
}

fn copy_fixture(to: &Path) {
    copy_tree(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("bazel/workspace"),
        to,
    );
}

/// The fixture's targets.
const TARGETS: [&str; 6] = [
    "//:clean",
    "//:abs_workspace",
    "//:host_file",
    "//:net_default",
    "//:net_requires",
    "//:unread",
];

/// Builds the fixture under `monitor exec` with `strategy`; the output base
/// and every Bazel file stay in the test's temp dir, and the server is gone
/// afterwards.
fn build(strategy: &str, extra: &[&str]) -> Build {
    build_opts(Opts {
        strategy: Some(strategy),
        extra,
        ..Opts::default()
    })
}

/// `server_outside`: start the Bazel server before `monitor exec`, outside
/// the job, as a CI runner with a warm server would.
fn build_with(strategy: &str, extra: &[&str], server_outside: bool) -> Build {
    build_opts(Opts {
        strategy: Some(strategy),
        extra,
        server_outside,
        ..Opts::default()
    })
}

#[derive(Default)]
struct Opts<'a> {
    /// `--spawn_strategy`; None: Bazel's default.
    strategy: Option<&'a str>,
    extra: &'a [&'a str],
    server_outside: bool,
    /// A `monitor exec --config` file's text.
    config: Option<&'a str>,
    /// Run Bazel in a user namespace of its own where no further user
    /// namespace may be created (`user.max_user_namespaces=0` there), as
    /// under Ubuntu 24's AppArmor policy: linux-sandbox cannot work. The
    /// limit is per user namespace, so the host's setting (and every other
    /// build on the machine) is untouched, whatever happens to the test.
    no_user_namespaces: bool,
    /// Extra `monitor exec` options (e.g. `--enforce`).
    monitor: &'a [&'a str],
    /// The targets to build; empty: `//:all`.
    targets: &'a [&'a str],
    /// The listener the fixture connects to (a build before's); None: a
    /// new one. `$PORT` in `config` stands for its port.
    port: Option<u16>,
}

/// `bazel-nouserns` (a name `monitor exec` recognises as Bazel): Bazel in
/// a user namespace whose `max_user_namespaces` is 0.
fn no_userns_bazel(t: &Path) -> PathBuf {
    let bin = t.join("bin");
    fs::create_dir_all(&bin).unwrap();
    let script = bin.join("bazel-nouserns");
    fs::write(
        &script,
        format!(
            "#!/bin/sh\nexec unshare --user --map-root-user sh -c 'echo 0 > /proc/sys/user/max_user_namespaces && exec {BAZEL} \"$@\"' sh \"$@\"\n"
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt as _;
    fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).unwrap();
    script
}

fn build_opts(o: Opts) -> Build {
    let Opts {
        strategy,
        extra,
        server_outside,
        config,
        no_user_namespaces,
        monitor: monitor_args,
        targets,
        port,
    } = o;
    bazel::require_bazel();
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let ws = t.join("ws");
    copy_fixture(&ws);
    let host_file = t.join("host-secret.txt");
    fs::write(&host_file, "host secret\n").unwrap();
    let port = port.unwrap_or_else(listener);
    let report = t.join("report.json");
    if server_outside {
        start_server(t, &ws);
    }
    let startup = startup_args(t);
    let config = config.map(|c| c.replace("$PORT", &port.to_string()));
    let mut monitor = monitor_exec(t, &ws, config.as_deref());
    monitor.args(monitor_args);
    let bazel = if no_user_namespaces {
        no_userns_bazel(t)
    } else {
        PathBuf::from(BAZEL)
    };
    let strategy = strategy.map(|s| format!("--spawn_strategy={s}"));
    let out = monitor
        .arg("--report")
        .arg(&report)
        .arg("--")
        .arg(&bazel)
        .args(&startup)
        .arg("build")
        .args(strategy)
        .args(fixture_flags(&ws, &host_file, port))
        .args(extra)
        .args(if targets.is_empty() {
            &["//:all"]
        } else {
            targets
        })
        .output()
        .unwrap();
    bazel::shutdown(&ws, t, &startup);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let report = bazel::read_report(&report, &stderr);
    let alerts = report["alerts"].as_array().cloned().unwrap_or_default();
    Build {
        ob: t.join("ob"),
        _tmp: tmp,
        ws,
        host_file,
        port,
        code: out.status.code(),
        stderr,
        alerts,
        report,
    }
}

/// The build flags the fixture's rules read (paths and port by action_env).
fn fixture_flags(ws: &Path, host_file: &Path, port: u16) -> [String; 6] {
    [
        "--sandbox_default_allow_network=false".into(),
        "--symlink_prefix=/".into(),
        "--incompatible_strict_action_env".into(),
        format!(
            "--action_env=MONITOR_FIXTURE_WORKSPACE_FILE={}",
            ws.join("undeclared.txt").display()
        ),
        format!(
            "--action_env=MONITOR_FIXTURE_HOST_FILE={}",
            host_file.display()
        ),
        format!("--action_env=MONITOR_FIXTURE_PORT={port}"),
    ]
}

/// Starts a Bazel server for the workspace, outside any monitored job.
fn start_server(t: &Path, ws: &Path) {
    let out = Command::new(BAZEL)
        .current_dir(ws)
        .env("HOME", t)
        .args(startup_args(t))
        .args(["info", "output_base"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "starting a Bazel server: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn check_common(b: &Build) {
    assert_eq!(b.code, Some(1), "violations must exit 1:\n{}", b.stderr);
    assert_eq!(b.report["unmonitored_spawns"], 0, "every spawn was seen");
    assert!(
        b.alerts_of("//:clean").is_empty(),
        "(a) clean raised alerts: {:#?}",
        b.alerts_of("//:clean")
    );

    let abs = b.alerts_of("//:abs_workspace");
    assert_eq!(abs.len(), 1, "(b) {abs:#?}\nall: {:#?}", b.alerts);
    assert_eq!(abs[0]["kind"], "undeclared_file");
    assert_eq!(
        abs[0]["file"]["path"],
        b.ws.join("undeclared.txt").display().to_string()
    );
    assert_eq!(abs[0]["action"]["mnemonic"], "Genrule");

    let host = b.alerts_of("//:host_file");
    assert_eq!(host.len(), 1, "(c) {host:#?}");
    assert_eq!(host[0]["kind"], "undeclared_file");
    assert_eq!(host[0]["file"]["path"], b.host_file.display().to_string());
    assert_eq!(host[0]["action"]["mnemonic"], "Genrule");

    for label in ["//:net_default", "//:net_requires"] {
        let net = b.alerts_of(label);
        assert_eq!(net.len(), 1, "{label}: {net:#?}");
        assert_eq!(net[0]["kind"], "network_egress");
        assert_eq!(net[0]["net"]["port"], b.port);
        assert_eq!(net[0]["action"]["mnemonic"], "Genrule");
    }
    // Nothing else: no alert without a target, none from Bazel itself.
    let expected = [
        "//:abs_workspace",
        "//:host_file",
        "//:net_default",
        "//:net_requires",
    ];
    let stray: Vec<&Value> = b
        .alerts
        .iter()
        .filter(|a| !expected.contains(&a["action"]["label"].as_str().unwrap_or("")))
        .collect();
    assert!(stray.is_empty(), "unexpected alerts: {stray:#?}");
    assert!(
        b.stderr.contains("//:abs_workspace (Genrule)"),
        "summary not grouped by target:\n{}",
        b.stderr
    );
}

#[test]
fn linux_sandbox_spawns_are_judged_against_what_bazel_declared() {
    let b = build("linux-sandbox", &[]);
    check_common(&b);
    b.check_spawns("linux-sandbox", "sandbox_tree");
    // Debian's Bazel names no release: asked, it takes the unsorted log
    // (the server that answered, started inside the job, ran the spawns:
    // none went unmonitored above).
    let command = b.command();
    assert!(
        command
            .iter()
            .any(|a| a.starts_with("--experimental_execution_log_file=")),
        "{command:?}"
    );
    b.check_unread();
    assert_eq!(b.spawns_of("//:net_default")[0]["network_namespace"], true);
    assert_eq!(
        b.spawns_of("//:net_requires")[0]["network_namespace"],
        false
    );
    let d = &b.alerts_of("//:net_default")[0];
    assert_eq!(
        d["net"]["result"], -111,
        "ECONNREFUSED inside the sandbox's own network namespace"
    );
    assert!(
        d["message"]
            .as_str()
            .unwrap()
            .contains("network namespace of its own"),
        "{d}"
    );
    let e = &b.alerts_of("//:net_requires")[0];
    assert_eq!(
        e["net"]["result"], 0,
        "requires-network reaches the host listener"
    );
    assert!(
        !e["message"]
            .as_str()
            .unwrap()
            .contains("network namespace of its own"),
        "{e}"
    );
}

/// `[bazel] label_source = "trace_profile"`: Bazel writes its JSON trace
/// profile instead of the execution log, and each spawn is labelled by the
/// primary output it wrote. The same alerts as with the log, labelled the
/// same (without mnemonics: Bazel 4.2.3's profile names none; newer
/// Bazels' `args.mnemonic` is read, `bazel::labels` tests).
#[test]
fn trace_profile_labels_each_spawn_by_the_output_it_wrote() {
    let b = build_opts(Opts {
        strategy: Some("linux-sandbox"),
        config: Some("[bazel]\nlabel_source = \"trace_profile\"\n[metrics]\nlisten = \"off\"\n"),
        ..Opts::default()
    });
    assert_eq!(b.code, Some(1), "violations must exit 1:\n{}", b.stderr);
    let command = b.command();
    assert!(
        command.iter().any(|a| a.starts_with("--profile=")),
        "{command:?}"
    );
    assert!(
        !command.iter().any(|a| a.contains("execution_log")),
        "no execution log asked for: {command:?}"
    );
    let bazel = &b.report["bazel"];
    assert_eq!(bazel["label_source"], "trace_profile", "{bazel:#}");
    assert_eq!(bazel["spawns_label_ambiguous"], 0, "{bazel:#}");
    assert_eq!(bazel["unseen_spawns"], serde_json::json!({"subprocess": 0}));
    assert_eq!(b.report["unmonitored_spawns"], 0, "every spawn was seen");
    b.check_spawns_as("linux-sandbox", "sandbox_tree", None);
    assert!(b.alerts_of("//:clean").is_empty(), "{:#?}", b.alerts);
    let kinds = [
        ("//:abs_workspace", "undeclared_file"),
        ("//:host_file", "undeclared_file"),
        ("//:net_default", "network_egress"),
        ("//:net_requires", "network_egress"),
    ];
    for (label, kind) in kinds {
        let alerts = b.alerts_of(label);
        assert_eq!(alerts.len(), 1, "{label}: {:#?}", b.alerts);
        assert_eq!(alerts[0]["kind"], kind, "{label}");
    }
    assert_eq!(
        b.alerts.len(),
        kinds.len(),
        "no unlabelled alert: {:#?}",
        b.alerts
    );
}

#[test]
fn processwrapper_sandbox_spawns_are_judged_against_what_bazel_declared() {
    // Upstream's default (Debian's bazelrc keeps sandboxes): each sandbox is
    // deleted right after its spawn, so it must be read at launch.
    let b = build("processwrapper-sandbox", &["--nosandbox_debug"]);
    check_common(&b);
    b.check_spawns("process-wrapper", "sandbox_tree");
    // processwrapper-sandbox isolates nothing: both connects reach the host.
    for label in ["//:net_default", "//:net_requires"] {
        assert_eq!(b.alerts_of(label)[0]["net"]["result"], 0, "{label}");
    }
}

/// A Bazel server already running outside the job serves the build: its
/// spawns are not monitored, and `monitor exec` must say so, not pass quietly.
#[test]
fn spawns_of_a_server_started_outside_the_job_are_reported_unmonitored() {
    let b = build_with("processwrapper-sandbox", &[], true);
    assert_eq!(b.report["unmonitored_spawns"], 6, "{}", b.stderr);
    assert_eq!(
        b.report["bazel"]["unseen_spawns"]["processwrapper-sandbox"], 6,
        "{:#}",
        b.report["bazel"]
    );
    assert!(
        b.stderr.contains("were never seen starting"),
        "{}",
        b.stderr
    );
    assert!(b.stderr.contains("were NOT monitored"), "{}", b.stderr);
    assert!(
        b.alerts_of("//:abs_workspace").is_empty(),
        "the spawns ran unseen: {:#?}",
        b.alerts
    );
}

/// `--enforce` with no config (no egress allowed): the Bazel client and
/// server talk over loopback undisturbed and the build succeeds, while the
/// spawns' connects to the host listener are refused in the kernel.
#[test]
fn enforced_build_with_no_config_succeeds_and_blocks_spawn_egress() {
    let out = tempfile::tempdir().unwrap();
    let md = out.path().join("summary.md");
    let sarif = out.path().join("findings.sarif");
    let (md_arg, sarif_arg) = (md.display().to_string(), sarif.display().to_string());
    let b = build_opts(Opts {
        strategy: Some("processwrapper-sandbox"),
        monitor: &["--enforce", "--markdown", &md_arg, "--sarif", &sarif_arg],
        ..Opts::default()
    });
    assert!(
        b.stderr.contains("Build completed successfully"),
        "the build must succeed under --enforce:\n{}",
        b.stderr
    );
    assert_eq!(b.code, Some(1), "violations exit 1:\n{}", b.stderr);
    for label in ["//:net_default", "//:net_requires"] {
        let net = b.alerts_of(label);
        assert_eq!(net.len(), 1, "{label}: {:#?}", b.alerts);
        assert_eq!(net[0]["verdict"], "blocked", "{label}");
        assert_eq!(net[0]["net"]["port"], b.port, "{label}");
        assert_eq!(net[0]["net"]["result"], -1, "{label}: EPERM");
        let out = b.ob.join(format!(
            "execroot/fixture/bazel-out/k8-fastbuild/bin/{}.out",
            &label[3..]
        ));
        let text = fs::read_to_string(&out).unwrap_or_else(|e| panic!("{}: {e}", out.display()));
        assert!(text.contains("failed"), "{label} connected anyway: {text}");
    }
    let clean =
        b.ob.join("execroot/fixture/bazel-out/k8-fastbuild/bin/clean.out");
    assert!(clean.exists(), "positive control: the clean rule's output");
    let stray: Vec<&Value> = b
        .alerts
        .iter()
        .filter(|a| a["kind"] == "network_egress" && a["net"]["port"] != b.port)
        .collect();
    assert!(stray.is_empty(), "Bazel's own traffic alerted: {stray:#?}");
    check_markdown(&b, &fs::read_to_string(&md).expect("--markdown written"));
    check_sarif(&b, &fs::read(&sarif).expect("--sarif written"));
}

/// The scoped-rule tests' policy: `//:net_requires` may reach the test's
/// port; and the two network genrules they build.
const NET_REQUIRES_RULE: &str = "[[network.rule]]\ntargets = [\"//:net_requires\"]\n\
                                 allow = [{ cidr = \"127.0.0.1/32\", port = $PORT }]\n";
const NET_TARGETS: [&str; 2] = ["//:net_default", "//:net_requires"];

/// Issue 11 item 3, target-scoped rules: under processwrapper-sandbox both
/// network genrules make the same loopback connect (to the test's
/// listener). A `[[network.rule]]` scoped to `//:net_requires` allows it for
/// that label only: its alert, raised before Bazel's execution log named
/// the spawn, is dropped when the label is joined, while `//:net_default`'s
/// stays (the positive control). `--learn` writes a rule scoped to
/// `//:net_default` (not job-wide), and a rebuild under it is clean.
#[test]
fn a_target_scoped_rule_allows_a_connect_for_one_label_and_not_another() {
    let out = tempfile::tempdir().unwrap();
    let learned = out.path().join("learned.toml");
    let learned_arg = learned.display().to_string();
    let b = build_opts(Opts {
        strategy: Some("processwrapper-sandbox"),
        config: Some(NET_REQUIRES_RULE),
        monitor: &["--learn", &learned_arg],
        targets: &NET_TARGETS,
        ..Opts::default()
    });
    assert_eq!(
        b.code,
        Some(1),
        "net_default's connect is a violation:\n{}",
        b.stderr
    );
    for label in NET_TARGETS {
        assert_eq!(
            connected(&b, label),
            "connected",
            "{label} reached the listener"
        );
    }
    let other = b.alerts_of("//:net_default");
    assert_eq!(other.len(), 1, "positive control: {:#?}", b.alerts);
    assert_eq!(other[0]["kind"], "network_egress");
    assert_eq!(other[0]["net"]["port"], b.port);
    assert_eq!(other[0]["net"]["result"], 0);
    assert!(b.alerts_of("//:net_requires").is_empty(), "{:#?}", b.alerts);
    assert_eq!(b.alerts.len(), 1, "nothing else: {:#?}", b.alerts);
    assert_eq!(
        b.report["violations"], 1,
        "the allowed connect is not counted"
    );
    assert!(
        b.stderr.contains("1 connect(s) allowed by target-scoped"),
        "{}",
        b.stderr
    );
    assert_eq!(b.report["allowed_by_target_rules"], 1);
    let dest = egress_to(&b, b.port);
    assert_eq!(dest["verdict"], "observed", "the worst verdict: {dest}");
    assert_eq!(dest["count"], 2, "both connects: {dest}");

    let text = fs::read_to_string(&learned).expect("--learn written");
    let rules = text.split("[[network.rule]]").count() - 1;
    assert_eq!(rules, 2, "the given rule and a learned one:\n{text}");
    assert!(text.contains("\"//:net_default\""), "{text}");
    assert!(
        text.contains("allow = []"),
        "nothing learned job-wide:\n{text}"
    );
    check_learned_rebuild(&text, &NET_TARGETS, b.port);
}

/// A rebuild under the learned policy (same listener, fresh output base):
/// no violation, both connects made and allowed.
fn check_learned_rebuild(text: &str, targets: &[&str], port: u16) {
    let again = build_opts(Opts {
        strategy: Some("processwrapper-sandbox"),
        config: Some(text),
        targets,
        port: Some(port),
        ..Opts::default()
    });
    assert_eq!(
        again.report["violations"], 0,
        "{:#?}\n{}",
        again.alerts, again.stderr
    );
    assert_eq!(again.code, Some(0), "{}", again.stderr);
    for &label in targets {
        assert_eq!(connected(&again, label), "connected", "{label} ran again");
    }
    let dest = egress_to(&again, port);
    assert_eq!(dest["verdict"], "allowed", "{dest}");
    assert_eq!(dest["count"], 2, "both connects seen and allowed: {dest}");
    assert!(
        again
            .stderr
            .contains("2 connect(s) allowed by target-scoped"),
        "{}",
        again.stderr
    );
}

/// Under `--enforce` the kernel decides at connect time, when Bazel 4.2.3
/// has not named the spawn: a target-scoped rule cannot admit, so the
/// connect it would allow is blocked like any other (docs/config.md).
#[test]
fn under_enforce_a_target_scoped_rule_cannot_admit() {
    let b = build_opts(Opts {
        strategy: Some("processwrapper-sandbox"),
        config: Some(NET_REQUIRES_RULE),
        monitor: &["--enforce"],
        targets: &NET_TARGETS,
        ..Opts::default()
    });
    assert!(
        b.stderr.contains("Build completed successfully"),
        "{}",
        b.stderr
    );
    for label in NET_TARGETS {
        assert_eq!(connected(&b, label), "failed", "{label} was let through");
        let net = b.alerts_of(label);
        assert_eq!(net.len(), 1, "{label}: {:#?}", b.alerts);
        assert_eq!(net[0]["verdict"], "blocked", "{label}");
        assert_eq!(net[0]["net"]["port"], b.port, "{label}");
    }
    assert_eq!(b.report["violations"], 2);
    assert_eq!(b.code, Some(1));
}

/// The last line a network genrule wrote: `connected` or `failed`.
fn connected(b: &Build, label: &str) -> String {
    let out = b.ob.join(format!(
        "execroot/fixture/bazel-out/k8-fastbuild/bin/{}.out",
        &label[3..]
    ));
    let text = fs::read_to_string(&out).unwrap_or_else(|e| panic!("{}: {e}", out.display()));
    text.lines().last().unwrap_or_default().to_string()
}

/// The report's egress inventory row for the test's listener.
fn egress_to(b: &Build, port: u16) -> &Value {
    let want = format!("127.0.0.1:{port}");
    b.report["egress"]
        .as_array()
        .and_then(|rows| rows.iter().find(|r| r["destination"] == want.as_str()))
        .unwrap_or_else(|| panic!("{want} not in the inventory: {:#}", b.report["egress"]))
}

fn check_markdown(b: &Build, md: &str) {
    let headline = format!("## build-monitor: {} violation(s)", b.report["violations"]);
    assert!(md.starts_with(&headline), "{md}");
    assert!(md.contains("### Violations by target"), "{md}");
    assert!(
        md.contains("| //:net_requires (Genrule) | network_egress | `tcp 127.0.0.1:"),
        "{md}"
    );
    assert!(md.contains("### Egress inventory"), "{md}");
    let row = format!(
        "| `127.0.0.1:{}` |  | tcp | //:net_default (Genrule), //:net_requires (Genrule) | bash | blocked | 2 |",
        b.port
    );
    assert!(md.contains(&row), "inventory row, labelled: {row}\n{md}");
    assert!(md.contains("### Completeness: complete"), "{md}");
    assert!(md.contains("| Sandboxed spawns monitored | 6 |"), "{md}");
    assert!(md.contains("| Egress enforced | yes |"), "{md}");
}

fn check_sarif(b: &Build, bytes: &[u8]) {
    let s: Value = serde_json::from_slice(bytes).expect("SARIF is JSON");
    assert_eq!(s["version"], "2.1.0");
    assert_eq!(
        s["$schema"],
        "https://json.schemastore.org/sarif-2.1.0.json"
    );
    let run = &s["runs"][0];
    assert_eq!(run["tool"]["driver"]["name"], "build-monitor");
    let results = run["results"].as_array().unwrap();
    assert_eq!(results.len(), b.alerts.len(), "{s:#}");
    let r = results
        .iter()
        .find(|r| {
            r["message"]["text"]
                .as_str()
                .unwrap()
                .starts_with("//:net_requires")
        })
        .expect("a result for //:net_requires");
    assert_eq!(r["ruleId"], "network_egress");
    assert_eq!(r["level"], "error");
    let loc = &r["locations"][0]["physicalLocation"];
    assert_eq!(loc["artifactLocation"]["uri"], "BUILD");
    let build = fs::read_to_string(b.ws.join("BUILD")).unwrap();
    let line = build
        .lines()
        .position(|l| l.contains("name = \"net_requires\""))
        .unwrap()
        + 1;
    assert_eq!(loc["region"]["startLine"], line);
}

/// `local` and `standalone` run each spawn through process-wrapper in the
/// main execroot, whose symlink forest reaches the whole workspace: the
/// declaration is the spawn's execution-log entry (inputs and outputs).
fn check_unsandboxed(strategy: &str) {
    let b = build(strategy, &[]);
    check_common(&b);
    b.check_spawns("none", "execution_log");
    for label in TARGETS {
        assert_eq!(b.spawns_of(label)[0]["runner"], "local", "{label}");
        assert_eq!(
            b.spawns_of(label)[0]["launcher"],
            "process-wrapper",
            "{label}"
        );
    }
    b.check_unread();
    // The read went through the main execroot's link to the workspace.
    assert!(
        b.alerts_of("//:abs_workspace")[0]["action"]["id"]
            .as_str()
            .unwrap()
            .starts_with("process-wrapper-"),
        "{:#?}",
        b.alerts
    );
}

/// With labels from the trace profile there is no execution log to
/// declare a `local` spawn: it is judged against the tree it works in
/// (the main execroot, whose links reach the whole workspace), labelled
/// from the profile, and the summary says so. The host file outside the
/// workspace is still an alert (the positive control); the workspace file
/// read by absolute path is not: the coverage this mode gives up
/// (docs/config.md).
#[test]
fn trace_profile_judges_local_spawns_against_their_working_tree() {
    let b = build_opts(Opts {
        strategy: Some("local"),
        config: Some("[bazel]\nlabel_source = \"trace_profile\"\n[metrics]\nlisten = \"off\"\n"),
        ..Opts::default()
    });
    assert_eq!(b.code, Some(1), "{}", b.stderr);
    assert_eq!(b.report["bazel"]["label_source"], "trace_profile");
    b.check_spawns_as("none", "working_tree", None);
    let host = b.alerts_of("//:host_file");
    assert_eq!(host.len(), 1, "{:#?}", b.alerts);
    assert_eq!(host[0]["file"]["path"], b.host_file.display().to_string());
    assert!(
        b.alerts_of("//:abs_workspace").is_empty(),
        "{:#?}",
        b.alerts
    );
    assert!(
        b.stderr.contains("judged against the tree they worked in"),
        "{}",
        b.stderr
    );
}

/// A genrule sets an extended attribute on a workspace source it did not
/// declare (`//:xattr_source`): the digest Bazel trusts instead of the
/// bytes with `--unix_digest_hash_attribute_name`, changed without a
/// write. Outside linux-sandbox (whose read-only sources refuse it) the
/// change happens (the positive control: the attribute is there) and is
/// an `undeclared_write` of that source, labelled.
#[test]
fn a_source_changed_by_its_metadata_alone_is_an_undeclared_write() {
    for strategy in ["processwrapper-sandbox", "local"] {
        let b = build_opts(Opts {
            strategy: Some(strategy),
            targets: &["//:xattr_source"],
            ..Opts::default()
        });
        assert_eq!(b.code, Some(1), "{strategy}: {}", b.stderr);
        let source = b.ws.join("undeclared.txt");
        let name = std::ffi::CString::new(source.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: valid C strings; a NULL buffer of size 0 asks the size.
        let size = unsafe {
            libc::getxattr(
                name.as_ptr(),
                c"user.checksum".as_ptr(),
                std::ptr::null_mut(),
                0,
            )
        };
        assert_eq!(size, 6, "{strategy}: the genrule set the attribute");
        let alerts = b.alerts_of("//:xattr_source");
        assert_eq!(alerts.len(), 1, "{strategy}: {:#?}", b.alerts);
        assert_eq!(alerts[0]["kind"], "undeclared_write");
        assert_eq!(alerts[0]["file"]["op"], "setxattr");
        assert_eq!(alerts[0]["file"]["path"], source.display().to_string());
        assert_eq!(b.alerts.len(), 1, "{strategy}: {:#?}", b.alerts);
    }
}

#[test]
fn local_spawns_are_judged_against_their_execution_log_entry() {
    check_unsandboxed("local");
}

#[test]
fn standalone_spawns_are_judged_against_their_execution_log_entry() {
    check_unsandboxed("standalone");
}

/// The unsorted binary log (`--experimental_execution_log_file`, what
/// `monitor exec` adds for a Bazel before 7, Debian's included) is read
/// like the sorted one: given by the user here, relative to the
/// workspace, it declares local spawns and labels them, and no log is
/// added beside it.
#[test]
fn local_spawns_are_judged_against_the_unsorted_execution_log() {
    let b = build(
        "local",
        &["--experimental_execution_log_file=unsorted-exec.log"],
    );
    check_common(&b);
    b.check_spawns("none", "execution_log");
    let command = b.command();
    let logs: Vec<&str> = command
        .iter()
        .copied()
        .filter(|a| a.contains("execution_log"))
        .collect();
    assert_eq!(
        logs,
        ["--experimental_execution_log_file=unsorted-exec.log"],
        "{command:?}"
    );
    assert!(b.ws.join("unsorted-exec.log").metadata().unwrap().len() > 0);
}

/// Without user namespaces Bazel quietly runs its default strategy under
/// processwrapper-sandbox; the report says so, and `require_isolation =
/// "linux-sandbox"` turns each spawn into a violation.
#[test]
fn fallback_to_processwrapper_is_reported_and_violates_required_isolation() {
    let b = build_opts(Opts {
        no_user_namespaces: true,
        config: Some(
            "[metrics]\nlisten = \"off\"\n[bazel]\nrequire_isolation = \"linux-sandbox\"\n",
        ),
        ..Opts::default()
    });
    assert_eq!(b.code, Some(1), "{}", b.stderr);
    b.check_spawns("process-wrapper", "sandbox_tree");
    for label in TARGETS {
        assert_eq!(
            b.spawns_of(label)[0]["runner"],
            "processwrapper-sandbox",
            "{label}"
        );
        let weak: Vec<&Value> = b
            .alerts_of(label)
            .into_iter()
            .filter(|a| a["kind"] == "weak_isolation")
            .collect();
        assert_eq!(weak.len(), 1, "{label}: {:#?}", b.alerts);
        assert_eq!(weak[0]["isolation"]["ran"], "process-wrapper");
        assert_eq!(weak[0]["isolation"]["required"], "linux-sandbox");
        assert_eq!(weak[0]["action"]["mnemonic"], "Genrule");
    }
    // The file verdicts still hold under the fallback.
    let abs: Vec<&Value> = b
        .alerts_of("//:abs_workspace")
        .into_iter()
        .filter(|a| a["kind"] == "undeclared_file")
        .collect();
    assert_eq!(abs.len(), 1, "{:#?}", b.alerts);
    assert!(
        b.stderr.contains("weaker than the required linux-sandbox"),
        "{}",
        b.stderr
    );
}
