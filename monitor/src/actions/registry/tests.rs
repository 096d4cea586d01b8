//! Hold/release logic of the registry, driven by calls alone (no kernel, no
//! file system): what is held, when it is released, against what.
use super::*;
use crate::{
    events::decode::Launch,
    policy::matchers::{NetMatcher, PathMatcher},
};

const PARENT_ID: u64 = 100;
const WAIT: Duration = Duration::from_millis(2000);

fn registry() -> Registry<u32> {
    let scopes = vec![
        Scope {
            path: "/cg/parent".into(),
            id: PARENT_ID,
            level: 1,
            kind: ScopeKind::Parent,
        },
        Scope {
            path: "/cg/job".into(),
            id: 200,
            level: 1,
            kind: ScopeKind::Job {
                id: "exec-1".into(),
                label: Some("@bazel".into()),
                mnemonic: Some("BazelServer".into()),
            },
        },
    ];
    Registry::new(scopes, WAIT, Arc::new(Metrics::new()))
}

fn origin(scope: u32, action: u64, pid: u32) -> Origin {
    Origin {
        time: std::time::SystemTime::UNIX_EPOCH,
        ktime_ns: 0,
        action_cgroup_id: action,
        child_cgroup_id: action,
        grandchild_cgroup_id: 0,
        launcher: 0,
        pid,
        tid: pid,
        ppid: 1,
        scope,
        comm: [0; 16],
    }
}

fn declaration(cgroup: &str, label: &str) -> Declaration {
    Declaration {
        cgroup: cgroup.into(),
        label: Some(label.into()),
        mnemonic: Some("Genrule".into()),
        inputs: PathMatcher::new(&["/in/**".to_string()]).unwrap(),
        outputs: PathMatcher::new(&[]).unwrap(),
        writable: PathMatcher::new(&[]).unwrap(),
        identities: Default::default(),
        links: Default::default(),
        network: NetMatcher::default(),
        source: "/decl/a.json".into(),
    }
}

/// Routes one event; returns (ready items, needs issued).
fn route(
    r: &mut Registry<u32>,
    o: &Origin,
    item: u32,
    now: Instant,
) -> (Vec<(u32, Arc<ActionView>)>, Vec<Need>) {
    let (mut ready, mut needs) = (Vec::new(), Vec::new());
    r.route(o, item, now, &mut ready, &mut needs);
    (ready, needs)
}

fn items(ready: &[(u32, Arc<ActionView>)]) -> Vec<u32> {
    ready.iter().map(|(i, _)| *i).collect()
}

#[test]
fn events_wait_for_the_declaration_and_are_released_in_order() {
    let mut r = registry();
    let t0 = Instant::now();
    r.cgroup_created(7, "/cg/parent/a".into(), t0);
    let o = origin(0, 7, 42);
    let (ready, needs) = route(&mut r, &o, 1, t0);
    assert!(ready.is_empty(), "held until declared");
    // One lookup of the Bazel sandbox its process may work in.
    assert!(matches!(
        needs.as_slice(),
        [Need::ScopeSpawn {
            key: 7,
            pid: 42,
            ..
        }]
    ));
    assert!(
        r.spawn_read(7, None).is_empty(),
        "no sandbox: still waiting"
    );
    let (ready, needs) = route(&mut r, &o, 2, t0);
    assert!(ready.is_empty() && needs.is_empty(), "asked once only");
    let released = r.declaration_set(Arc::new(declaration("/cg/parent/a", "//a")));
    assert_eq!(items(&released), [1, 2]);
    let view = &released[0].1;
    assert_eq!(view.info.label.as_deref(), Some("//a"));
    assert_eq!(view.info.id, "a");
    assert_eq!(view.info.cgroup_id, 7);
    assert!(view.judge_files);
    // Later events go straight through.
    assert_eq!(items(&route(&mut r, &o, 3, t0).0), [3]);
}

#[test]
fn a_declaration_known_before_the_first_event_is_used_at_once() {
    let mut r = registry();
    let t0 = Instant::now();
    assert!(
        r.declaration_set(Arc::new(declaration("/cg/parent/b", "//b")))
            .is_empty()
    );
    r.cgroup_created(8, "/cg/parent/b".into(), t0);
    let (ready, needs) = route(&mut r, &origin(0, 8, 1), 1, t0);
    assert_eq!(items(&ready), [1]);
    assert!(needs.is_empty());
    assert_eq!(ready[0].1.info.label.as_deref(), Some("//b"));
}

#[test]
fn at_the_deadline_held_events_are_judged_without_a_declaration() {
    let mut r = registry();
    let t0 = Instant::now();
    r.cgroup_created(7, "/cg/parent/a".into(), t0);
    let _ = route(&mut r, &origin(0, 7, 42), 1, t0);
    r.spawn_read(7, None);
    assert!(r.tick(t0 + WAIT / 2).is_empty(), "still within the wait");
    let released = r.tick(t0 + WAIT);
    assert_eq!(items(&released), [1]);
    assert!(released[0].1.declaration.is_none());
    // A declaration that shows up later applies from then on.
    r.declaration_set(Arc::new(declaration("/cg/parent/a", "//late")));
    let ready = route(&mut r, &origin(0, 7, 42), 2, t0 + WAIT).0;
    assert_eq!(ready[0].1.info.label.as_deref(), Some("//late"));
}

#[test]
fn an_unanswered_read_holds_past_the_deadline_until_it_answers() {
    let mut r = registry();
    let t0 = Instant::now();
    r.cgroup_created(9, "/cg/parent/blaze_1_spawns.slice".into(), t0);
    r.cgroup_created(
        10,
        "/cg/parent/blaze_1_spawns.slice/sandbox_3.scope".into(),
        t0,
    );
    let mut o = origin(0, 9, 42);
    o.child_cgroup_id = 9;
    o.grandchild_cgroup_id = 10;
    let (ready, needs) = route(&mut r, &o, 1, t0);
    assert!(ready.is_empty());
    // The spawn scope, not the slice, is the action.
    assert!(matches!(
        needs.as_slice(),
        [Need::ScopeSpawn { key: 10, .. }]
    ));
    assert!(
        r.tick(t0 + WAIT * 3).is_empty(),
        "a read in flight is waited for"
    );
    let spawn = Spawn {
        launcher: "linux-sandbox".into(),
        ..Default::default()
    };
    let released = r.spawn_read(10, Some((spawn, declaration("/cg/x", "//spawn"))));
    assert_eq!(items(&released), [1]);
    assert!(released[0].1.spawn.is_some());
}

#[test]
fn a_lineage_action_is_held_until_its_sandbox_is_read() {
    let mut r = registry();
    let t0 = Instant::now();
    r.cgroup_created(7, "/cg/parent/a".into(), t0);
    let launch = Launch {
        origin: origin(0, 7, 50),
        argv: b"linux-sandbox\0-W\0/s\0".to_vec(),
        argv_truncated: false,
        cwd: None,
    };
    let need = r.launch(launch);
    let Need::LaunchSpawn { key, cgroup, .. } = need else {
        panic!("expected a sandbox read, got {need:?}");
    };
    assert_eq!(cgroup, Path::new("/cg/parent/a"));
    let mut o = origin(0, 7, 51);
    o.launcher = 50;
    let (ready, needs) = route(&mut r, &o, 1, t0);
    assert!(ready.is_empty() && needs.is_empty());
    let spawn = Spawn {
        launcher: "linux-sandbox".into(),
        ..Default::default()
    };
    let released = r.spawn_read(key, Some((spawn, declaration("/cg/parent/a", "//x"))));
    assert_eq!(items(&released), [1]);
    let info = &released[0].1.info;
    assert_eq!(info.id, "linux-sandbox-50");
    assert_eq!(info.cgroup_id, 7, "the launcher's cgroup, not its pid");
    assert_eq!(info.cgroup, "/cg/parent/a");
}

/// What the kernel's sandbox registrations follow: a lineage action has
/// ended once its launcher exits, also when that comes before its sandbox
/// was read; an unknown key has ended.
#[test]
fn a_lineage_action_ends_with_its_launcher_even_before_its_sandbox_is_read() {
    let mut r = registry();
    let t0 = Instant::now();
    assert!(r.has_ended(LINEAGE_KEY | 50), "unknown");
    let launch = Launch {
        origin: origin(0, 7, 50),
        argv: b"linux-sandbox\0-W\0/s\0".to_vec(),
        argv_truncated: false,
        cwd: None,
    };
    let Need::LaunchSpawn { key, .. } = r.launch(launch) else {
        panic!("expected a sandbox read");
    };
    assert!(!r.has_ended(key), "running");
    let mut child = origin(0, 7, 51);
    child.launcher = 50;
    r.exit(&child, t0);
    assert!(!r.has_ended(key), "a child's exit ends nothing");
    let mut launcher = origin(0, 7, 50);
    launcher.launcher = 50;
    r.exit(&launcher, t0);
    assert!(r.has_ended(key), "the launcher exited");
    r.spawn_read(key, None);
    assert!(r.has_ended(key), "a late read does not revive it");
}

#[test]
fn a_lineage_whose_launch_was_not_seen_is_judged_at_once() {
    let mut r = registry();
    let mut o = origin(0, 7, 51);
    o.launcher = 77;
    let (ready, _) = route(&mut r, &o, 1, Instant::now());
    assert_eq!(items(&ready), [1]);
    assert!(ready[0].1.declaration.is_none());
}

#[test]
fn the_job_itself_is_judged_at_once_on_the_network_only() {
    let mut r = registry();
    let (ready, needs) = route(&mut r, &origin(1, 200, 5), 1, Instant::now());
    assert_eq!(items(&ready), [1]);
    assert!(needs.is_empty());
    let view = &ready[0].1;
    assert!(!view.judge_files);
    assert_eq!(view.info.id, "exec-1");
    assert_eq!(view.info.label.as_deref(), Some("@bazel"));
}

#[test]
fn too_many_held_events_are_judged_without_waiting() {
    let mut r = registry();
    let t0 = Instant::now();
    let o = origin(0, 7, 1);
    let mut released = Vec::new();
    for i in 0..MAX_HELD_PER_ACTION as u32 {
        released.extend(items(&route(&mut r, &o, i, t0).0));
    }
    assert_eq!(released.len(), MAX_HELD_PER_ACTION, "released, in order");
    assert!(released.windows(2).all(|w| w[0] < w[1]));
}

#[test]
fn release_all_judges_what_is_held_with_what_is_known() {
    let mut r = registry();
    let t0 = Instant::now();
    r.cgroup_created(7, "/cg/parent/a".into(), t0);
    let _ = route(&mut r, &origin(0, 7, 1), 1, t0);
    let _ = route(&mut r, &origin(0, 8, 1), 2, t0);
    let mut released = items(&r.release_all());
    released.sort();
    assert_eq!(released, [1, 2]);
}

#[test]
fn cgroups_missing_from_a_later_scan_end_and_are_forgotten() {
    let mut r = registry();
    let t0 = Instant::now();
    r.cgroup_created(7, "/cg/parent/a".into(), t0);
    let _ = route(&mut r, &origin(0, 7, 1), 1, t0);
    r.spawn_read(7, None);
    let _ = r.tick(t0 + WAIT);
    assert_eq!(r.metrics.actions_active.get(), 1);
    // A cgroup created after the scan started is not taken for gone.
    let scan_start = t0 + Duration::from_secs(1);
    r.cgroup_created(
        11,
        "/cg/parent/new".into(),
        scan_start + Duration::from_millis(1),
    );
    r.cgroups_scanned(Vec::new(), scan_start);
    assert!(r.cgroups.contains_key(&11));
    let _ = r.tick(scan_start);
    assert_eq!(r.metrics.actions_active.get(), 0, "action 7 ended");
    let _ = r.tick(scan_start + FORGET_AFTER + Duration::from_secs(1));
    assert!(
        !r.actions.contains_key(&7),
        "forgotten a while after it ended"
    );
    assert!(!r.cgroups.contains_key(&7));
}

fn worker_origin(root: u32, pid: u32) -> Origin {
    Origin {
        launcher: root,
        scope: monitor_common::SCOPE_NONE,
        ..origin(0, 0, pid)
    }
}

fn worker_spawn(root: &str) -> Spawn {
    Spawn {
        launcher: "reapi".into(),
        execroot: root.into(),
        sandbox_dir: Some(root.into()),
        sandbox_id: None,
        writable: Vec::new(),
        command: vec!["/bin/bash".into()],
        own_network: false,
        launched_at: None,
        launch_ktime_ns: 0,
        persistent_worker: false,
    }
}

#[test]
fn worker_actions_outside_every_scope_wait_for_their_record_and_carry_their_identity() {
    let mut r = registry();
    let t0 = Instant::now();
    let launch = Launch {
        origin: worker_origin(42, 42),
        argv: b"/bin/bash\0".to_vec(),
        argv_truncated: false,
        cwd: Some(b"/w/action-1".to_vec()),
    };
    let need = r.worker_launch(launch, Path::new("/records"));
    assert!(matches!(&need, Need::WorkerSpawn { key, records_dir, .. }
        if *key == LINEAGE_KEY | 42 && records_dir == Path::new("/records")));
    let (ready, _) = route(&mut r, &worker_origin(42, 43), 2, t0);
    assert!(ready.is_empty(), "held while the record is read");
    assert!(!r.is_settled(42));
    // Long past the declaration wait, still held: the read decides.
    assert!(r.tick(t0 + WAIT * 3).is_empty());

    let mut declaration = declaration("", "//:leaky");
    declaration.inputs = PathMatcher::new(&["/w/action-1/**".to_string()]).unwrap();
    let identity = WorkerIdentity {
        root_pid: 42,
        digest: "abc/144".into(),
        invocation_id: Some("inv-1".into()),
    };
    let ready = r.worker_read(
        LINEAGE_KEY | 42,
        (worker_spawn("/w/action-1"), declaration),
        Some(identity.clone()),
    );
    assert_eq!(items(&ready), vec![2]);
    let info = &ready[0].1.info;
    assert_eq!(info.id, "reapi-42");
    assert_eq!(info.label.as_deref(), Some("//:leaky"));
    assert_eq!(info.worker.as_deref(), Some(&identity));
    assert!(r.is_settled(42));
    // Later events go straight through, with the same identity.
    let (ready, _) = route(&mut r, &worker_origin(42, 44), 3, t0);
    assert_eq!(items(&ready), vec![3]);
    assert_eq!(ready[0].1.info.worker.as_deref(), Some(&identity));
}

#[test]
fn a_worker_action_without_a_record_is_judged_on_its_input_root_alone() {
    let mut r = registry();
    let t0 = Instant::now();
    let launch = Launch {
        origin: worker_origin(7, 7),
        argv: Vec::new(),
        argv_truncated: false,
        cwd: None,
    };
    r.worker_launch(launch, Path::new("/records"));
    route(&mut r, &worker_origin(7, 8), 1, t0);
    let ready = r.worker_read(
        LINEAGE_KEY | 7,
        (worker_spawn("/w/x"), declaration("", "x")),
        None,
    );
    assert_eq!(items(&ready), vec![1]);
    assert!(ready[0].1.info.worker.is_none());
    assert!(r.release_all().is_empty());
}

/// `monitor exec` of Bazel: a launcher in the main execroot (no sandbox
/// tree) is held past any deadline until the execution log declares it;
/// beyond the cap, events are dropped and counted, never judged early.
#[test]
fn unsandboxed_spawns_wait_for_the_execution_log() {
    let mut r = registry();
    r.defer_unsandboxed = true;
    let t0 = Instant::now();
    let launch = Launch {
        origin: origin(1, 200, 60),
        argv: b"process-wrapper\0--timeout=0\0/bin/true\0".to_vec(),
        argv_truncated: false,
        cwd: None,
    };
    let Need::LaunchSpawn { key, .. } = r.launch(launch) else {
        panic!("expected a sandbox read");
    };
    let spawn = crate::bazel::sandbox::parse_launch(
        b"process-wrapper\0--timeout=0\0/bin/true\0",
        Path::new("/ob/execroot/ws"),
    );
    let mut o = origin(1, 200, 61);
    o.launcher = 60;
    let (ready, _) = route(&mut r, &o, 1, t0);
    assert!(ready.is_empty());
    let read = r.spawn_read(
        key,
        Some((spawn.clone(), declaration("/cg/job", "//tree:all"))),
    );
    assert!(read.is_empty(), "the tree read does not declare it");
    assert!(
        r.tick(t0 + WAIT * 10).is_empty(),
        "no deadline while deferred"
    );
    for i in 0..MAX_HELD_PER_ACTION as u32 + 5 {
        let (ready, _) = route(&mut r, &o, 2 + i, t0);
        assert!(ready.is_empty());
    }
    assert_eq!(r.dropped(key), 5 + 1, "the first event was held too");
    let deferred = r.deferred();
    assert_eq!(deferred.len(), 1);
    assert_eq!(deferred[0].2, spawn);
    let ready = r.declare_deferred(key, Some(declaration("/cg/job", "//:from_log")));
    assert_eq!(ready.len(), MAX_HELD_PER_ACTION);
    assert_eq!(ready[0].0, 1, "in order");
    let view = &ready[0].1;
    assert_eq!(view.info.label.as_deref(), Some("//:from_log"));
    assert_eq!(view.info.id, "process-wrapper-60");
    assert!(r.deferred().is_empty());
    assert!(r.view(key).is_some());

    // Without deferral the tree read declares it at once.
    let mut r = registry();
    let launch = Launch {
        origin: origin(1, 200, 70),
        argv: Vec::new(),
        argv_truncated: false,
        cwd: None,
    };
    let Need::LaunchSpawn { key, .. } = r.launch(launch) else {
        panic!("expected a sandbox read");
    };
    let mut o = origin(1, 200, 71);
    o.launcher = 70;
    route(&mut r, &o, 1, t0);
    let ready = r.spawn_read(key, Some((spawn, declaration("/cg/job", "//tree:all"))));
    assert_eq!(items(&ready), vec![1]);
}

/// A persistent worker is deferred like an unsandboxed spawn; its held
/// events are taken whole (to be split among its requests), an ordinary
/// deferred spawn's are not.
#[test]
fn a_persistent_workers_held_events_are_taken_whole() {
    let mut r = registry();
    r.defer_unsandboxed = true;
    let t0 = Instant::now();
    let argv = b"/usr/bin/python3\0tools/worker.py\0--persistent_worker\0";
    let launch = Launch {
        origin: origin(1, 200, 80),
        argv: argv.to_vec(),
        argv_truncated: false,
        cwd: None,
    };
    let Need::LaunchSpawn { key, .. } = r.launch(launch) else {
        panic!("expected a sandbox read");
    };
    let mut spawn = crate::bazel::sandbox::parse_launch(argv, Path::new("/ob/execroot/ws"));
    spawn.persistent_worker = crate::bazel::workers::is_worker_argv(argv);
    let mut o = origin(1, 200, 80);
    o.launcher = 80;
    for i in 0..3 {
        assert!(route(&mut r, &o, i, t0).0.is_empty());
    }
    assert!(
        r.spawn_read(key, Some((spawn, declaration("/cg/job", "//tree:all"))))
            .is_empty(),
        "held for the execution log"
    );
    let (spawn, held) = r.take_worker(key).expect("a deferred worker");
    assert!(spawn.persistent_worker);
    assert_eq!(held, vec![0, 1, 2], "in order");
    assert!(r.take_worker(key).is_none(), "taken once");
    assert!(r.deferred().is_empty());

    // An unsandboxed spawn that is no worker stays for declare_deferred.
    let launch = Launch {
        origin: origin(1, 200, 90),
        argv: b"process-wrapper\0/bin/true\0".to_vec(),
        argv_truncated: false,
        cwd: None,
    };
    let Need::LaunchSpawn { key, .. } = r.launch(launch) else {
        panic!("expected a sandbox read");
    };
    let spawn = crate::bazel::sandbox::parse_launch(
        b"process-wrapper\0/bin/true\0",
        Path::new("/ob/execroot/ws"),
    );
    r.spawn_read(key, Some((spawn, declaration("/cg/job", "//tree:all"))));
    assert!(r.take_worker(key).is_none());
    assert_eq!(r.deferred().len(), 1);
}
