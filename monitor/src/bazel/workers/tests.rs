use super::*;

fn entry(label: &str, mnemonic: &str, out: &str) -> SpawnEntry {
    SpawnEntry {
        label: Some(label.into()),
        mnemonic: Some(mnemonic.into()),
        inputs: vec![format!("{}.in", label.trim_start_matches("//:"))],
        outputs: vec![out.into()],
        runner: Some("worker".into()),
        ..Default::default()
    }
}

const W: &str = "/ob/bazel-workers/worker-3-Concat/ws";

fn sandboxed() -> WorkerPlace {
    place_of(Path::new(W))
}

#[test]
fn recognises_worker_command_lines_and_places() {
    assert!(is_worker_argv(
        b"/usr/bin/python3\0w.py\0--persistent_worker\0"
    ));
    assert!(is_worker_argv(b"w\0--persistent_worker"));
    assert!(!is_worker_argv(b"w\0--persistent_worker\0x\0"));
    assert!(!is_worker_argv(b"process-wrapper\0/bin/true\0"));
    let p = sandboxed();
    assert!(p.sandboxed);
    assert_eq!(p.mnemonic.as_deref(), Some("Concat"));
    assert_eq!(p.execroot, Path::new("/ob/execroot/ws"));
    let plain = place_of(Path::new("/ob/execroot/ws"));
    assert!(!plain.sandboxed);
    assert_eq!(plain.dir, plain.execroot);
    assert!(!place_of(Path::new("/ob/bazel-workers/worker-x-Concat/ws")).sandboxed);
    assert!(!place_of(Path::new("/ob/other/worker-1-Concat/ws")).sandboxed);
}

/// Two requests served in turn: each is placed by its output's opens; an
/// access before the first or after the last output is the first's or
/// last's, between them nobody's.
#[test]
fn requests_are_placed_by_their_outputs_and_gaps_are_unattributable() {
    let log = ExecLog::new(vec![
        entry("//:a", "Concat", "bin/a.out"),
        entry("//:b", "Concat", "bin/b.out"),
        entry("//:g", "Genrule", "bin/g.out"),
    ]);
    let place = sandboxed();
    let a = format!("{W}/bin/a.out");
    let b = format!("{W}/bin/b.out");
    let g = format!("{W}/bin/g.out");
    let opens: Vec<(u64, &[u8])> = vec![
        (10, b"/usr/lib/x".as_slice()),
        (20, a.as_bytes()),
        (25, a.as_bytes()),
        (40, b.as_bytes()),
        (50, g.as_bytes()),
    ];
    let tree = format!("{W}/bin/b.out/x/y.class");
    let below: Vec<(u64, &[u8])> = vec![(45, tree.as_bytes())];
    assert_eq!(
        super::served(&below, &place, &log)[0].entry,
        1,
        "a file below a tree-artifact output"
    );
    let served = served(&opens, &place, &log);
    assert_eq!(
        served,
        vec![
            Served {
                entry: 0,
                first: 20,
                last: 25
            },
            Served {
                entry: 1,
                first: 40,
                last: 40
            }
        ],
        "a Genrule entry is no worker request"
    );
    let plan = Plan::new(&place, served.clone(), true);
    assert!(plan.attributable);
    assert_eq!(plan.request_at(5), Some(0), "start-up: the first request");
    assert_eq!(plan.request_at(22), Some(0));
    assert_eq!(plan.request_at(30), None, "between two requests");
    assert_eq!(plan.neighbours(30), vec![0, 1]);
    assert_eq!(plan.request_at(40), Some(1));
    assert_eq!(plan.request_at(99), Some(1));
    // An unplaced worker request of the same mnemonic could be at either end.
    let unsure = Plan::new(&place, served.clone(), false);
    assert_eq!(unsure.request_at(5), None);
    assert_eq!(unsure.request_at(99), None);
    assert_eq!(unsure.request_at(22), Some(0));
    // Overlapping windows (not one request at a time): nothing is attributed.
    let mut overlapping = served.clone();
    overlapping[0].last = 45;
    assert_eq!(Plan::new(&place, overlapping, true).request_at(22), None);
    // Without worker sandboxing: the worker scope only.
    let plain = WorkerPlace {
        sandboxed: false,
        ..place.clone()
    };
    let plan = Plan::new(&plain, served, true);
    assert!(!plan.attributable);
    assert_eq!(plan.request_at(22), None);
    assert_eq!(plan.neighbours(22), vec![0, 1]);
}

#[test]
fn a_request_declares_its_inputs_and_outputs_in_both_trees_the_scope_all() {
    let a = entry("//:a", "Concat", "bin/a.out");
    let b = entry("//:b", "Concat", "bin/b.out");
    let place = sandboxed();
    let d = request_declaration(&[&a], &place, Path::new("/cg"), Path::new("/log"));
    assert_eq!(d.label.as_deref(), Some("//:a"));
    let input = |d: &Declaration, p: &str| d.inputs.matches(p.as_bytes());
    assert!(input(&d, &format!("{W}/a.in")));
    assert!(input(&d, "/ob/execroot/ws/a.in"));
    assert!(!input(&d, &format!("{W}/b.in")));
    assert!(d.outputs.matches(format!("{W}/bin/a.out").as_bytes()));
    let scope = request_declaration(&[&a, &b], &place, Path::new("/cg"), Path::new("/log"));
    assert_eq!(scope.label, None, "the scope is no one target");
    assert_eq!(scope.mnemonic.as_deref(), Some("Concat"));
    assert!(input(&scope, &format!("{W}/a.in")) && input(&scope, &format!("{W}/b.in")));
    assert!(!input(&scope, "/ws/undeclared.txt"));
}
