//! Repeated opens are counted in the kernel, not reported one by one
//! (`monitor-ebpf/src/seen.rs`): counts and `events_total` stay exact, a
//! new object behind the same name is a new object, and a failed probe is
//! reported beside the later successful open. A static C program makes
//! the opens, so no loader open blurs the numbers.
use std::{
    io::{BufRead as _, BufReader, Write as _},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use monitor_integration_tests::*;
use serde_json::Value;

/// Static: no loader opens (libc6-dev has libc.a).
fn compile_reopen(dir: &Path) -> PathBuf {
    let out = dir.join("reopen");
    compile_c("fixtures/reopen.c", &out, &["-static"]);
    out
}

fn count_sum(alerts: &[&Value]) -> u64 {
    alerts.iter().map(|a| a["count"].as_u64().unwrap()).sum()
}

fn file_events(daemon: &Daemon) -> f64 {
    metric(
        &daemon.metrics_text(),
        "build_monitor_events_total",
        &[("kind", "file")],
    )
}

/// Runs `cmd` in `action`, which makes `opens` opens: every one is counted
/// in `events_total` exactly once the process's repeats are taken at its
/// end. Returns `build_monitor_repeats_total` then.
fn run_counting(daemon: &Daemon, action: &Path, cmd: &mut Command, opens: f64) -> f64 {
    let before = file_events(daemon);
    run_ok_in(action, cmd);
    daemon.wait_for_metric(
        "build_monitor_events_total",
        &[("kind", "file")],
        before + opens,
    );
    assert_eq!(file_events(daemon), before + opens);
    metric(&daemon.metrics_text(), "build_monitor_repeats_total", &[])
}

#[test]
fn repeated_opens_cost_two_events_and_counts_stay_exact() {
    require_root();
    let parent = test_parent("repeats");
    let daemon = Daemon::start(&parent.path, "");
    let action = parent.child("reopen");
    let tmp = tempfile::tempdir().unwrap();
    let program = compile_reopen(tmp.path());
    let declared = tmp.path().join("d/ok.txt");
    let secret = tmp.path().join("secret.txt");
    write(&declared, "ok");
    write(&secret, "secret");
    daemon.declare_read(&action.path, &[&declared, &program]);
    let repeats = run_counting(
        &daemon,
        &action.path,
        Command::new(&program)
            // One CPU: the counting starts at the second open on a CPU.
            .arg("c:0")
            .arg(format!("o:{}:10000", declared.display()))
            .arg(format!("o:{}:1000", secret.display())),
        11_000.0,
    );
    // Reported in full: the first two opens of each (the second starts the
    // counting); the rest only counted.
    assert_eq!(repeats, 9_998.0 + 998.0);
    let (status, alerts, stderr) = daemon.stop();
    assert!(status.success(), "{stderr}");
    assert_eq!(
        count_sum(&file_alerts(&alerts, &secret)),
        1_000,
        "{alerts:#?}"
    );
    // Positive control of "nothing": the declared file raised nothing.
    assert!(file_alerts(&alerts, &declared).is_empty(), "{alerts:#?}");
}

/// The counting starts at a process's second open of an object on one
/// CPU: an object opened twice is reported twice and counts no repeat; one
/// opened on CPUs 0 and 1 in turn is reported three times (its first open
/// on each CPU, then its second on CPU 0) and the rest counted. Counts
/// stay exact either way.
#[test]
fn counting_starts_at_the_second_open_on_one_cpu() {
    require_root();
    let parent = test_parent("repeats-cpus");
    let daemon = Daemon::start(&parent.path, "");
    let action = parent.child("reopen");
    let tmp = tempfile::tempdir().unwrap();
    let program = compile_reopen(tmp.path());
    let twice = tmp.path().join("twice.txt");
    let hopping = tmp.path().join("hopping.txt");
    write(&twice, "twice");
    write(&hopping, "hopping");
    daemon.declare_read(&action.path, &[&program]);
    let repeats = run_counting(
        &daemon,
        &action.path,
        Command::new(&program)
            .arg("c:0")
            .arg(format!("o:{}:2", twice.display()))
            .arg(format!("h:{}:1000", hopping.display())),
        1_002.0,
    );
    assert_eq!(repeats, 997.0);
    let (status, alerts, stderr) = daemon.stop();
    assert!(status.success(), "{stderr}");
    assert_eq!(count_sum(&file_alerts(&alerts, &twice)), 2, "{alerts:#?}");
    assert_eq!(
        count_sum(&file_alerts(&alerts, &hopping)),
        1_000,
        "{alerts:#?}"
    );
}

/// A declared file replaced (from outside the action) between two batches
/// of one process's opens: the new object under the declared name is not
/// the declared one, so the second batch alerts; the first batch is its
/// positive control. A failed probe of a missing file and its successful
/// open once it exists are both counted.
#[test]
fn a_new_object_behind_the_same_name_and_a_failed_probe_are_reported() {
    require_root();
    let parent = test_parent("repeats-new");
    let daemon = Daemon::start(&parent.path, "");
    let action = parent.child("reopen");
    let tmp = tempfile::tempdir().unwrap();
    let program = compile_reopen(tmp.path());
    let declared = tmp.path().join("d/x.txt");
    let late = tmp.path().join("late.txt");
    write(&declared, "first object");
    daemon.declare_read(&action.path, &[&declared, &program]);
    let mut cmd = Command::new(&program);
    cmd.arg(format!("o:{}:5", declared.display()))
        .arg(format!("o:{}:1", late.display()))
        .arg("w")
        .arg(format!("o:{}:5", declared.display()))
        .arg(format!("o:{}:1", late.display()))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped());
    let mut child = in_cgroup(&mut cmd, &action.path).spawn().unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line, "ready\n");
    // A new object under the declared name, and the missing file created.
    let replacement = tmp.path().join("d/x.txt.new");
    write(&replacement, "second object");
    std::fs::rename(&replacement, &declared).unwrap();
    write(&late, "now here");
    child.stdin.as_mut().unwrap().write_all(b"go\n").unwrap();
    assert!(child.wait().unwrap().success());
    let (status, alerts, stderr) = daemon.stop();
    assert!(status.success(), "{stderr}");
    assert_eq!(
        count_sum(&file_alerts(&alerts, &declared)),
        5,
        "{alerts:#?}"
    );
    let late_alerts = file_alerts(&alerts, &late);
    assert_eq!(count_sum(&late_alerts), 2, "{alerts:#?}");
    // The first is the failed probe (ENOENT).
    assert_eq!(late_alerts[0]["file"]["result"], -2, "{alerts:#?}");
}

/// The repeat filter (`SEEN_FILTER` in `monitor-ebpf/src/seen.rs`): the
/// kernel adds one to a group's cell for each key it starts counting, and
/// the daemon takes it off when it takes the key's count at the process's
/// end. Cells left too high would make the kernel look up every first
/// access again. Read here from the daemon's own map descriptor.
#[test]
fn the_repeat_filter_counts_a_tracked_key_until_the_daemon_takes_it() {
    require_root();
    let parent = test_parent("repeats-filter");
    let daemon = Daemon::start(&parent.path, "");
    let action = parent.child("hold");
    let tmp = tempfile::tempdir().unwrap();
    let program = compile_reopen(tmp.path());
    let held = tmp.path().join("held.txt");
    write(&held, "held");
    let filter = FilterView::of(daemon.pid());
    assert_eq!(filter.sum(), 0, "cells counted before any action ran");
    let mut child = in_cgroup(
        Command::new(&program).args(["c:0", &format!("o:{}:10", held.display()), "w"]),
        &action.path,
    )
    .stdin(Stdio::piped())
    .stdout(Stdio::piped())
    .spawn()
    .unwrap();
    let mut ready = String::new();
    BufReader::new(child.stdout.as_mut().unwrap())
        .read_line(&mut ready)
        .unwrap();
    assert_eq!(ready, "ready\n");
    // Positive control: the process that opened the file ten times on one
    // CPU holds a counted key.
    assert!(filter.sum() >= 1, "no cell counts the held key");
    child.stdin.as_mut().unwrap().write_all(b"\n").unwrap();
    assert!(child.wait().unwrap().success());
    assert!(
        wait_until(Duration::from_secs(10), || filter.sum() == 0),
        "cells still count {} keys after the process ended",
        filter.sum()
    );
    let (status, _, stderr) = daemon.stop();
    assert!(status.success(), "{stderr}");
}

/// The daemon's `SEEN_FILTER` map, mapped read-only through a duplicate of
/// its descriptor (`pidfd_getfd`): the one mmapable array whose one value
/// is 32 KiB.
struct FilterView {
    ptr: *const u32,
    cells: usize,
}

impl FilterView {
    fn of(daemon: u32) -> FilterView {
        let fd = Self::daemon_fd(daemon).expect("the daemon holds no SEEN_FILTER map");
        // SAFETY: plain syscalls; the fds are closed when the test ends.
        let (pidfd, ours) = unsafe {
            let pidfd = libc::syscall(libc::SYS_pidfd_open, daemon, 0) as libc::c_int;
            assert!(
                pidfd >= 0,
                "pidfd_open: {}",
                std::io::Error::last_os_error()
            );
            let ours = libc::syscall(libc::SYS_pidfd_getfd, pidfd, fd, 0) as libc::c_int;
            (pidfd, ours)
        };
        assert!(
            ours >= 0,
            "pidfd_getfd: {}",
            std::io::Error::last_os_error()
        );
        let len = 32 * 1024;
        // SAFETY: a shared read-only mapping of an mmapable array's value.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED,
                ours,
                0,
            )
        };
        assert_ne!(ptr, libc::MAP_FAILED, "{}", std::io::Error::last_os_error());
        // SAFETY: our own descriptors; the mapping outlives them.
        unsafe {
            libc::close(ours);
            libc::close(pidfd);
        }
        FilterView {
            ptr: ptr.cast(),
            cells: len / 4,
        }
    }

    /// The daemon's descriptor of the map, from its fdinfo.
    fn daemon_fd(daemon: u32) -> Option<libc::c_int> {
        let dir = std::fs::read_dir(format!("/proc/{daemon}/fdinfo")).ok()?;
        dir.flatten().find_map(|entry| {
            let info = std::fs::read_to_string(entry.path()).ok()?;
            let is = |field: &str, value: &str| {
                info.lines()
                    .any(|l| l.strip_prefix(field).is_some_and(|v| v.trim() == value))
            };
            let filter = is("map_type:", "2")
                && is("max_entries:", "1")
                && is("value_size:", "32768")
                && is("map_flags:", "0x400");
            filter.then(|| entry.file_name().to_str()?.parse().ok())?
        })
    }

    fn sum(&self) -> u64 {
        (0..self.cells)
            // SAFETY: `cells` mapped u32s; the kernel and daemon change
            // them atomically, a volatile read sees a whole value.
            .map(|i| unsafe { std::ptr::read_volatile(self.ptr.add(i)) } as u64)
            .sum()
    }
}

/// Two threads of one process repeat the same open on two CPUs at once
/// (their adds race: one that loses is reported in full), and in a second
/// process the main thread ends first: the process ends with its last
/// thread, so its count is taken once both are done (before, it was taken
/// at the main thread's end and the rest stayed in the kernel until the
/// daemon stopped). `events_total` reaches exactly the opens made while the
/// daemon runs, and the alerts' counts sum to them.
#[test]
fn threads_repeating_at_once_and_a_take_while_they_run_keep_counts_exact() {
    require_root();
    let parent = test_parent("repeats-threads");
    let daemon = Daemon::start(&parent.path, "");
    let action = parent.child("threads");
    let tmp = tempfile::tempdir().unwrap();
    let program = tmp.path().join("threads_reopen");
    compile_c(
        "fixtures/threads_reopen.c",
        &program,
        &["-static", "-pthread"],
    );
    let secret = tmp.path().join("secret.txt");
    write(&secret, "secret");
    daemon.declare_read(&action.path, &[&program]);
    let per_thread: u32 = 20_000;
    let mut repeats = 0.0;
    for leader in ["leader-waits", "leader-exits"] {
        repeats = run_counting(
            &daemon,
            &action.path,
            Command::new(&program)
                .arg(&secret)
                .arg(per_thread.to_string())
                .arg(leader),
            f64::from(2 * per_thread),
        );
    }
    // Positive control: the kernel did count repeats (not all reported).
    assert!(repeats > 0.0, "no repeat was counted");
    // Each thread adds to its own keys without an atomic: no add may land
    // after its count was taken (counted as lost if one did).
    let text = daemon.metrics_text();
    assert_eq!(
        metric(
            &text,
            "build_monitor_events_lost_total",
            &[("reason", "repeat_after_take")]
        ),
        0.0,
        "{text}"
    );
    let (status, alerts, stderr) = daemon.stop();
    assert!(status.success(), "{stderr}");
    assert_eq!(
        count_sum(&file_alerts(&alerts, &secret)),
        u64::from(4 * per_thread),
        "{alerts:#?}"
    );
}
