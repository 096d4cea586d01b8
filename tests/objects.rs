//! The object, not the name: hostile actions whose declaration covers a
//! directory D reach a secret outside it by symlink, `..` through a
//! symlinked directory, `/proc/self/{root,fd}`, a path buffer rewritten
//! while the open blocks, a hard link, a bind mount, exec; each must alert on
//! the secret itself. The same programs pointed at declared files are the
//! positive controls of each run: they must raise nothing.
use std::{
    ffi::CString,
    fs,
    os::unix::{ffi::OsStrExt as _, fs::MetadataExt as _},
    path::{Path, PathBuf},
    process::Command,
    thread,
    time::{Duration, Instant},
};

use monitor_integration_tests::*;
use serde_json::Value;

fn s(p: &Path) -> String {
    p.display().to_string()
}

fn mkfifo(path: &Path) {
    let c = CString::new(path.as_os_str().as_bytes()).unwrap();
    // SAFETY: plain mkfifo(3) on a NUL-terminated path.
    assert_eq!(
        unsafe { libc::mkfifo(c.as_ptr(), 0o600) },
        0,
        "mkfifo {path:?}"
    );
}

/// Writes a declaration file with inputs, outputs and writable patterns,
/// then waits until the daemon says it read it (so that what the action
/// does afterwards is judged against it, and entries the action plants are
/// newer than the declaration).
fn declare(
    daemon: &Daemon,
    cgroup: &Path,
    inputs: &[String],
    outputs: &[String],
    writable: &[String],
) {
    let name = cgroup.file_name().unwrap().to_string_lossy().to_string();
    let text = serde_json::json!({
        "cgroup": s(cgroup), "label": format!("//objects:{name}"), "mnemonic": "Genrule",
        "inputs": inputs, "outputs": outputs, "writable": writable,
    });
    let tmp = daemon.declarations.join(format!(".{name}.tmp"));
    fs::write(&tmp, text.to_string()).unwrap();
    let file = daemon.declarations.join(format!("{name}.json"));
    fs::rename(&tmp, &file).unwrap();
    let needle = format!("declaration {} read", file.display());
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if fs::read_to_string(daemon.dir.path().join("monitor.stderr"))
            .is_ok_and(|e| e.contains(&needle))
        {
            return;
        }
        thread::sleep(Duration::from_millis(20));
    }
    panic!(
        "declaration never read: {}",
        fs::read_to_string(daemon.dir.path().join("monitor.stderr")).unwrap_or_default()
    );
}

/// File alerts (any kind) whose object path is `path`.
fn on<'a>(alerts: &'a [Value], path: &Path) -> Vec<&'a Value> {
    let p = s(path);
    alerts
        .iter()
        .filter(|a| a["file"]["path"] == p.as_str())
        .collect()
}

/// The ops of the alerts on `path`, sorted; each must be an undeclared
/// write.
fn write_ops_on(alerts: &[Value], path: &Path) -> Vec<String> {
    let mut ops: Vec<String> = on(alerts, path)
        .iter()
        .inspect(|a| assert_eq!(a["kind"], "undeclared_write", "{a}"))
        .map(|a| a["file"]["op"].as_str().unwrap().to_string())
        .collect();
    ops.sort();
    ops
}

fn one_read_alert<'a>(alerts: &'a [Value], path: &Path) -> &'a Value {
    let hits: Vec<_> = on(alerts, path)
        .into_iter()
        .filter(|a| a["kind"] == "undeclared_file")
        .collect();
    assert_eq!(hits.len(), 1, "one read alert on {path:?}: {alerts:#?}");
    hits[0]
}

fn under<'a>(alerts: &'a [Value], dir: &Path) -> Vec<&'a Value> {
    let prefix = format!("{}/", dir.display());
    alerts
        .iter()
        .filter(|a| {
            a["file"]["path"]
                .as_str()
                .is_some_and(|p| p.starts_with(&prefix))
        })
        .collect()
}

fn run_ok(cgroup: &Path, cmd: &mut Command) {
    let out = run_in(cgroup, cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Opens `path` read-only without O_CLOEXEC, so children inherit the fd.
fn inheritable_fd(path: &Path) -> i32 {
    let c = CString::new(path.as_os_str().as_bytes()).unwrap();
    // SAFETY: plain open(2).
    let fd = unsafe { libc::open(c.as_ptr(), libc::O_RDONLY) };
    assert!(fd >= 0, "open {path:?}");
    fd
}

fn compile_fifo_race(out: &Path) {
    compile_c("fixtures/fifo_race.c", out, &["-pthread"]);
}

/// The files of one scene: D (declared inputs), W (declared outputs), the
/// secrets outside both.
struct Scene {
    _tmp: tempfile::TempDir,
    d: PathBuf,
    w: PathBuf,
    secret: PathBuf,
}

fn scene() -> Scene {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("decl");
    let w = tmp.path().join("work");
    let secret = tmp.path().join("secret");
    write(&d.join("ok.txt"), "ok");
    write(&d.join("inner/ok2.txt"), "ok2");
    fs::create_dir_all(d.join("inner/deep")).unwrap();
    fs::create_dir_all(&w).unwrap();
    for name in ["one", "two", "three", "four", "six", "seven"] {
        write(&secret.join(name), "secret");
    }
    fs::create_dir_all(secret.join("a")).unwrap();
    Scene {
        _tmp: tmp,
        d,
        w,
        secret,
    }
}

fn declare_scene(daemon: &Daemon, cgroup: &Path, sc: &Scene, writable: &[String]) {
    declare(
        daemon,
        cgroup,
        &[format!("{}/**", s(&sc.d)), format!("{}/**", s(&sc.w))],
        &[format!("{}/**", s(&sc.w))],
        writable,
    );
}

const DISGUISES: &str = r#"
import os, sys
d, s, fd_secret, fd_ok = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
def read(p):
    with open(p, 'rb') as f: f.read()
os.symlink(s + '/one', d + '/link')
read(d + '/link')
os.symlink(d + '/ok.txt', d + '/link-ok')
read(d + '/link-ok')
read('/proc/self/root' + s + '/two')
read('/proc/self/root' + d + '/ok.txt')
read('/proc/self/fd/%d' % fd_secret)
read('/proc/self/fd/%d' % fd_ok)
os.symlink(s + '/a', d + '/sub')
read(d + '/sub/../four')
os.symlink(d + '/inner/deep', d + '/sub-ok')
read(d + '/sub-ok/../ok2.txt')
"#;

/// Each disguise alerted on the secret's real path, with the name passed.
fn assert_disguises_seen(alerts: &[Value], sc: &Scene, fd_secret: i32) {
    let (d, secret) = (&sc.d, &sc.secret);
    let link = one_read_alert(alerts, &secret.join("one"));
    assert_eq!(link["file"]["requested_path"], s(&d.join("link")));
    let ino = fs::metadata(secret.join("one")).unwrap().ino();
    assert_eq!(link["file"]["ino"], ino);
    assert!(
        link["file"]["dev"]
            .as_str()
            .is_some_and(|v| v.contains(':'))
    );
    assert!(
        link["message"]
            .as_str()
            .unwrap()
            .contains(&format!("as {}", d.join("link").display())),
        "{}",
        link["message"]
    );
    let root = one_read_alert(alerts, &secret.join("two"));
    assert_eq!(
        root["file"]["requested_path"],
        format!("/proc/self/root{}", secret.join("two").display())
    );
    let fd = one_read_alert(alerts, &secret.join("three"));
    assert_eq!(
        fd["file"]["requested_path"],
        format!("/proc/self/fd/{fd_secret}")
    );
    let dotdot = one_read_alert(alerts, &secret.join("four"));
    assert_eq!(
        dotdot["file"]["requested_path"],
        format!("{}/sub/../four", d.display())
    );
    let raced = one_read_alert(alerts, &secret.join("fifo"));
    assert_eq!(raced["file"]["requested_path"], s(&d.join("ok.txt")));
    assert_eq!(raced["process"]["comm"], "fifo_race");
}

#[test]
fn disguised_names_alert_on_the_object_actually_opened() {
    require_root();
    let parent = test_parent("objects");
    let daemon = Daemon::start(&parent.path, "");
    let action = parent.child("disguise");
    let sc = scene();
    let (d, w, secret) = (&sc.d, &sc.w, &sc.secret);
    let race = d.join("bin/fifo_race");
    fs::create_dir_all(race.parent().unwrap()).unwrap();
    compile_fifo_race(&race);
    mkfifo(&secret.join("fifo"));
    mkfifo(&w.join("pipe"));
    declare_scene(&daemon, &action.path, &sc, &[]);

    // Descriptors opened outside the action, inherited by it.
    let fd_secret = inheritable_fd(&secret.join("three"));
    let fd_ok = inheritable_fd(&d.join("ok.txt"));
    let args = [s(d), s(secret), fd_secret.to_string(), fd_ok.to_string()];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    run_ok(&action.path, &mut python(DISGUISES, &args));
    // SAFETY: closing our own descriptors.
    unsafe {
        libc::close(fd_secret);
        libc::close(fd_ok);
    }
    // A buffer rewritten while the open blocks on a FIFO: the secret's,
    // then a declared one's.
    run_ok(
        &action.path,
        Command::new(&race)
            .arg(secret.join("fifo"))
            .arg(d.join("ok.txt")),
    );
    run_ok(
        &action.path,
        Command::new(&race)
            .arg(w.join("pipe"))
            .arg(d.join("ok.txt")),
    );
    let (status, alerts, stderr) = daemon.stop();
    assert!(status.success(), "{stderr}");

    assert_disguises_seen(&alerts, &sc, fd_secret);
    // Positive controls: the same routes to declared files. The links the
    // action made in D to set its disguises up are writes of names there.
    let reads_in_d: Vec<_> = under(&alerts, d)
        .into_iter()
        .filter(|a| a["kind"] != "undeclared_write" || a["file"]["op"] == "open")
        .collect();
    assert!(reads_in_d.is_empty(), "declared alerted: {reads_in_d:#?}");
    assert!(
        on(&alerts, &d.join("link"))
            .iter()
            .any(|a| a["file"]["op"] == "symlink"),
        "{alerts:#?}"
    );
    assert!(
        under(&alerts, w).is_empty(),
        "declared alerted: {alerts:#?}"
    );
}

#[test]
fn own_proc_entries_pass_and_other_processes_entries_do_not() {
    require_root();
    let parent = test_parent("ownproc");
    let daemon = Daemon::start(&parent.path, "");
    let action = parent.child("ownproc");
    let sc = scene();
    declare_scene(&daemon, &action.path, &sc, &[]);
    let me = std::process::id();
    let script = r#"
import os, sys, threading
for p in ['/proc/self/status', '/proc/self/maps', '/proc/self/cmdline',
          '/proc/thread-self/stat', '/proc/self/mountinfo', '/proc/%d/stat' % os.getpid()]:
    open(p, 'rb').read()
os.listdir('/proc/self/fd')
t = threading.Thread(target=lambda: open('/proc/thread-self/status').read())
t.start(); t.join()
for tid in os.listdir('/proc/self/task'):
    try: open('/proc/self/task/%s/stat' % tid).read()
    except FileNotFoundError: pass  # a thread that just ended
try: open('/proc/self/no-such-entry')
except OSError: pass
open('/proc/%s/status' % sys.argv[1]).read()
"#;
    let me_text = me.to_string();
    run_ok(
        &action.path,
        python(script, &[&me_text]).current_dir(sc.d.join("inner")),
    );
    run_ok(
        &action.path,
        Command::new("/bin/sh")
            .current_dir(sc.d.join("inner"))
            .arg("-c")
            .arg(
                "read l < /proc/self/status; cat /proc/self/status /proc/self/cmdline > /dev/null; \
             ls /proc/self/fd /proc/self/ > /dev/null; echo x | cat /proc/self/fd/0 > /dev/null",
            ),
    );
    let (status, alerts, stderr) = daemon.stop();
    assert!(status.success(), "{stderr}");
    // Positive control: another process's entry (the test's own) alerts.
    let other = one_read_alert(&alerts, &PathBuf::from(format!("/proc/{me}/status")));
    assert_eq!(other["process"]["comm"], "python3");
    let proc_alerts: Vec<_> = alerts
        .iter()
        .filter(|a| {
            a["file"]["path"]
                .as_str()
                .is_some_and(|p| p.starts_with("/proc/"))
        })
        .collect();
    assert_eq!(
        proc_alerts.len(),
        1,
        "own /proc entries alerted: {proc_alerts:#?}"
    );
    assert_eq!(alerts.len(), 1, "unexpected alerts: {alerts:#?}");
}

#[test]
fn hard_links_and_bind_mounts_over_declared_names_alert_on_the_secret() {
    require_root();
    let parent = test_parent("links");
    let daemon = Daemon::start(&parent.path, "");
    let action = parent.child("links");
    let sc = scene();
    let (d, secret) = (&sc.d, &sc.secret);
    write(&d.join("z"), "declared z");
    write(&d.join("z2"), "declared z2");
    // A declared file with a second declared name, both older than the
    // declaration.
    fs::hard_link(d.join("ok.txt"), d.join("ok-twin.txt")).unwrap();
    declare_scene(&daemon, &action.path, &sc, &[]);
    let script = format!(
        "ln {six} {d}/x && cat {d}/x && cat {d}/ok-twin.txt {d}/ok.txt && \
         unshare -Urm sh -c 'mount --bind {seven} {d}/z && cat {d}/z && \
                             mount --bind {d}/ok.txt {d}/z2 && cat {d}/z2'",
        six = secret.join("six").display(),
        seven = secret.join("seven").display(),
        d = d.display()
    );
    run_ok(
        &action.path,
        Command::new("/bin/sh")
            .current_dir(d.join("inner"))
            .arg("-c")
            .arg(&script),
    );
    let (status, alerts, stderr) = daemon.stop();
    assert!(status.success(), "{stderr}");

    let secret_id = |name: &str| {
        let m = fs::metadata(secret.join(name)).unwrap();
        (
            m.ino(),
            format!("{}:{}", libc::major(m.dev()), libc::minor(m.dev())),
        )
    };
    let linked = one_read_alert(&alerts, &d.join("x"));
    let (ino, dev) = secret_id("six");
    assert_eq!(linked["file"]["ino"], ino, "{linked:#}");
    assert_eq!(linked["file"]["dev"], dev.as_str());
    assert!(
        linked["message"].as_str().unwrap().contains("hard link"),
        "{}",
        linked["message"]
    );
    let mounted = one_read_alert(&alerts, &d.join("z"));
    let (ino, dev) = secret_id("seven");
    assert_eq!(mounted["file"]["ino"], ino, "{mounted:#}");
    assert_eq!(mounted["file"]["dev"], dev.as_str());
    assert!(
        mounted["message"]
            .as_str()
            .unwrap()
            .contains("mounted over"),
        "{}",
        mounted["message"]
    );
    // Positive controls: a declared file under two declared names, and a
    // declared file mounted over another declared name.
    for ok in ["ok.txt", "ok-twin.txt", "z2"] {
        assert!(on(&alerts, &d.join(ok)).is_empty(), "{ok}: {alerts:#?}");
    }
}

#[test]
fn exec_of_undeclared_programs_and_interpreters_alerts() {
    require_root();
    let parent = test_parent("exec");
    let daemon = Daemon::start(&parent.path, "");
    let action = parent.child("exec");
    let sc = scene();
    let (d, secret) = (&sc.d, &sc.secret);
    let copy = |from: &str, to: &Path| {
        fs::copy(from, to).unwrap();
    };
    copy("/usr/bin/true", &secret.join("tool"));
    copy("/usr/bin/true", &d.join("tool"));
    copy("/usr/bin/dash", &secret.join("interp"));
    write(
        &d.join("undeclared-interp.sh"),
        &format!("#!{}\nexit 0\n", secret.join("interp").display()),
    );
    write(&d.join("ok.sh"), "#!/bin/sh\nexit 0\n");
    for f in ["tool", "undeclared-interp.sh", "ok.sh"] {
        fs::set_permissions(
            d.join(f),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
    }
    declare_scene(&daemon, &action.path, &sc, &[]);
    for prog in [
        secret.join("tool"),
        d.join("tool"),
        d.join("undeclared-interp.sh"),
        d.join("ok.sh"),
    ] {
        run_ok(
            &action.path,
            Command::new(&prog).current_dir(d.join("inner")),
        );
    }
    let (status, alerts, stderr) = daemon.stop();
    assert!(status.success(), "{stderr}");
    let tool = one_read_alert(&alerts, &secret.join("tool"));
    assert_eq!(tool["file"]["op"], "exec");
    assert!(tool["message"].as_str().unwrap().contains(" executed "));
    let interp = one_read_alert(&alerts, &secret.join("interp"));
    assert_eq!(interp["file"]["op"], "exec");
    // Positive controls: a declared program, a declared script run by an
    // allowed interpreter.
    assert!(
        under(&alerts, d).is_empty(),
        "declared alerted: {alerts:#?}"
    );
    assert_eq!(alerts.len(), 2, "unexpected alerts: {alerts:#?}");
}

const WRITES: &str = r#"
import os, sys
d, w, t, elsewhere = sys.argv[1:5]
open(d + '/new.txt', 'w').write('poison')             # into declared inputs
open(elsewhere + '/out.txt', 'w').write('x')          # undeclared directory
open(w + '/out.txt', 'w').write('fine')               # declared output
open(t + '/mine.txt', 'w').write('mine')              # created in a writable dir...
open(t + '/mine.txt').read()                          # ...and read back
os.close(os.open(t + '/left-append.txt', os.O_RDONLY | os.O_APPEND))
os.close(os.open(t + '/left-rdwr.txt', os.O_RDWR | os.O_CREAT))
os.close(os.open(t + '/left-wronly.txt', os.O_WRONLY | os.O_APPEND))
"#;

/// execveat, by directory fd and name and by `AT_EMPTY_PATH` (fexecve):
/// the program file is judged as with execve.
#[test]
fn execveat_of_undeclared_programs_alerts() {
    require_root();
    let parent = test_parent("execveat");
    let daemon = Daemon::start(&parent.path, "");
    let action = parent.child("execveat");
    let sc = scene();
    let (d, secret) = (&sc.d, &sc.secret);
    let program = d.join("bin/execveat");
    compile_c("fixtures/execveat.c", &program, &[]);
    for tool in [secret.join("by-dir"), secret.join("by-fd"), d.join("tool")] {
        fs::copy("/usr/bin/true", tool).unwrap();
    }
    declare_scene(&daemon, &action.path, &sc, &[]);
    let runs: [&[String]; 3] = [
        &["dir".into(), s(secret), "by-dir".into()],
        &["fd".into(), s(&secret.join("by-fd"))],
        &["dir".into(), s(d), "tool".into()],
    ];
    for args in runs {
        run_ok(&action.path, Command::new(&program).args(args));
    }
    let (status, alerts, stderr) = daemon.stop();
    assert!(status.success(), "{stderr}");
    for name in ["by-dir", "by-fd"] {
        assert!(
            on(&alerts, &secret.join(name))
                .iter()
                .any(|a| a["file"]["op"] == "exec"),
            "exec of {name}: {alerts:#?}"
        );
    }
    // Positive control: a declared program run the same way.
    assert!(under(&alerts, d).is_empty(), "{alerts:#?}");
}

#[test]
fn writes_are_judged_and_read_back_needs_the_kernel_to_have_created_the_file() {
    require_root();
    let parent = test_parent("writes");
    let daemon = Daemon::start(&parent.path, "");
    let action = parent.child("writes");
    let sc = scene();
    let (d, w) = (&sc.d, &sc.w);
    let t = sc.secret.join("writable");
    let elsewhere = sc.secret.join("elsewhere");
    fs::create_dir_all(&elsewhere).unwrap();
    // Files another action left in the writable directory.
    for name in ["left-append.txt", "left-rdwr.txt", "left-wronly.txt"] {
        write(&t.join(name), "left by another action");
    }
    declare_scene(&daemon, &action.path, &sc, &[format!("{}/**", t.display())]);
    let args = [s(d), s(w), s(&t), s(&elsewhere)];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    run_ok(
        &action.path,
        python(WRITES, &args).current_dir(d.join("inner")),
    );
    let (status, alerts, stderr) = daemon.stop();
    assert!(status.success(), "{stderr}");
    let kind_on = |p: &Path| -> Vec<String> {
        on(&alerts, p)
            .iter()
            .map(|a| a["kind"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(kind_on(&d.join("new.txt")), ["undeclared_write"]);
    assert_eq!(kind_on(&elsewhere.join("out.txt")), ["undeclared_write"]);
    assert_eq!(kind_on(&t.join("left-append.txt")), ["undeclared_file"]);
    assert_eq!(kind_on(&t.join("left-rdwr.txt")), ["undeclared_file"]);
    // Positive controls: declared output, own file read back, a write-only
    // append in the writable directory.
    for p in [
        w.join("out.txt"),
        t.join("mine.txt"),
        t.join("left-wronly.txt"),
    ] {
        assert!(on(&alerts, &p).is_empty(), "{p:?}: {alerts:#?}");
    }
    assert_eq!(alerts.len(), 4, "unexpected alerts: {alerts:#?}");
}

/// A file the action created in its writable directory may be read back;
/// a secret mounted over that name (or linked there) is not that file. Both
/// alert on the secret; the file read back before the mount is the
/// positive control.
#[test]
fn what_is_read_back_must_be_the_file_the_action_created() {
    require_root();
    let parent = test_parent("readback");
    let daemon = Daemon::start(&parent.path, "");
    let action = parent.child("readback");
    let sc = scene();
    let t = sc.secret.join("writable");
    fs::create_dir_all(&t).unwrap();
    declare_scene(&daemon, &action.path, &sc, &[format!("{}/**", t.display())]);
    let seven = sc.secret.join("seven");
    let script = format!(
        "echo mine > {t}/x && cat {t}/x > /dev/null && echo mine > {t}/y && \
         ln -f {six} {t}/y && cat {t}/y > /dev/null && \
         unshare -Urm sh -c 'mount --bind {seven} {t}/x && cat {t}/x > /dev/null'",
        t = t.display(),
        six = sc.secret.join("six").display(),
        seven = seven.display(),
    );
    run_ok(&action.path, Command::new("/bin/sh").arg("-c").arg(&script));
    let (status, alerts, stderr) = daemon.stop();
    assert!(status.success(), "{stderr}");
    for (name, secret) in [("x", &seven), ("y", &sc.secret.join("six"))] {
        let read = one_read_alert(&alerts, &t.join(name));
        let ino = fs::metadata(secret).unwrap().ino();
        assert_eq!(read["file"]["ino"], ino, "{read:#}");
        assert!(
            read["message"]
                .as_str()
                .unwrap()
                .contains("not the file the action created"),
            "{read:#}"
        );
        assert_eq!(
            read["count"], 1,
            "the read back before is no alert: {read:#}"
        );
    }
}

/// Name changes are writes too: `unlink`, `rmdir`, `mkdir`, `truncate`,
/// `mknod` (a regular file or a FIFO made without an open; `mknodat` from
/// glibc, the old `mknod` by number), a unix socket's `bind` (by the bytes
/// its address length gives, not read on to a later NUL; an abstract name
/// makes no file), and the names `link`, `symlink` and `rename` write (a rename's old name as well), by relative and absolute
/// names. Outside the outputs each is an
/// `undeclared_write` with its `op`, declared inputs included (changing the
/// sources is how caches get poisoned); in the outputs none alerts (the
/// positive control is that each route alerts outside them).
#[test]
fn name_changes_outside_the_outputs_are_undeclared_writes() {
    require_root();
    let parent = test_parent("names");
    let daemon = Daemon::start(&parent.path, "");
    let action = parent.child("names");
    let sc = scene();
    let (d, w, secret) = (&sc.d, &sc.w, &sc.secret);
    declare_scene(&daemon, &action.path, &sc, &[]);
    let script = "import os, sys\n\
        d, w, x = sys.argv[1:4]\n\
        os.chdir(x)\n\
        os.unlink('one'); os.mkdir(x + '/made'); os.rmdir('a'); os.truncate('two', 0)\n\
        os.link(d + '/ok.txt', 'hl'); os.symlink('nowhere', x + '/sl')\n\
        os.rename('three', 'moved'); os.rename(x + '/four', w + '/four')\n\
        os.unlink(d + '/inner/ok2.txt')\n\
        os.mkdir(w + '/dir'); os.rename(w + '/dir', w + '/dir2'); os.rmdir(w + '/dir2')\n\
        os.symlink('x', w + '/sl'); os.unlink(w + '/sl'); os.unlink(w + '/four')\n\
        import ctypes, stat\n\
        os.mknod('nod', 0o600 | stat.S_IFREG); os.mkfifo(x + '/fifo')\n\
        libc = ctypes.CDLL(None, use_errno=True)\n\
        assert libc.syscall(133, (x + '/old').encode(), 0o100600, 0) == 0, ctypes.get_errno()\n\
        os.mknod(w + '/nod', 0o600 | stat.S_IFREG); os.unlink(w + '/nod')\n\
        import socket\n\
        socket.socket(socket.AF_UNIX).bind('sock')\n\
        socket.socket(socket.AF_UNIX).bind('\\0monitor-test-abstract-%d' % os.getpid())\n\
        socket.socket(socket.AF_UNIX).bind(w + '/sock')\n\
        # Made: `short`; the bytes after it (no NUL) name a path in the outputs.\n\
        tail = ('/' + '../' * 40 + w.lstrip('/') + '/y').encode()\n\
        raw = ctypes.create_string_buffer(b'\\x01\\x00short' + tail)\n\
        s = socket.socket(socket.AF_UNIX)\n\
        assert libc.bind(s.fileno(), raw, 2 + len('short')) == 0, ctypes.get_errno()\n";
    run_ok(
        &action.path,
        &mut python(script, &[&s(d), &s(w), &s(secret)]),
    );
    let (status, alerts, stderr) = daemon.stop();
    assert!(status.success(), "{stderr}");
    for (name, op) in [
        ("one", "unlink"),
        ("made", "mkdir"),
        ("a", "rmdir"),
        ("two", "truncate"),
        ("hl", "link"),
        ("sl", "symlink"),
        ("three", "rename_from"),
        ("moved", "rename"),
        ("four", "rename_from"),
        ("nod", "mknod"),
        ("fifo", "mknod"),
        ("old", "mknod"),
        ("sock", "bind"),
        ("short", "bind"),
    ] {
        assert_eq!(
            write_ops_on(&alerts, &secret.join(name)),
            [op],
            "{name}: {alerts:#?}"
        );
    }
    assert_eq!(write_ops_on(&alerts, &d.join("inner/ok2.txt")), ["unlink"]);
    // The abstract name made no file; the outputs' socket is no alert.
    let binds = alerts.iter().filter(|a| a["file"]["op"] == "bind").count();
    assert_eq!(binds, 2, "{alerts:#?}");
    assert!(under(&alerts, w).is_empty(), "{alerts:#?}");
    // Not in a chroot: an absolute name is the path, with no other name.
    let made = on(&alerts, &secret.join("made"));
    assert!(made[0]["file"]["requested_path"].is_null(), "{made:#?}");
}

/// Changes of a file's metadata alone are writes too: its mode, owner,
/// timestamps and extended attributes (a digest kept in one is what Bazel
/// trusts with `--unix_digest_hash_attribute_name`). By name (`chmod`,
/// `chown`, `lchown` of a link, `utime`, `setxattr`, `removexattr`) they
/// are judged on the name; through a descriptor (`fchmod`, `fsetxattr`,
/// `futimens`, `fchmodat2` on an empty name with `AT_EMPTY_PATH`) on its
/// object, a declared input opened read-only included (the read is no
/// alert, the change is). In the outputs none alerts (the positive control
/// is that each route alerts outside them).
#[test]
fn metadata_changes_outside_the_outputs_are_undeclared_writes() {
    require_root();
    let parent = test_parent("metadata");
    let daemon = Daemon::start(&parent.path, "");
    let action = parent.child("metadata");
    let sc = scene();
    let (d, w, secret) = (&sc.d, &sc.w, &sc.secret);
    for name in ["m1", "m2", "m3", "m4"] {
        write(&d.join(name), "declared input");
    }
    write(&w.join("out"), "output");
    std::os::unix::fs::symlink(secret.join("six"), secret.join("link")).unwrap();
    let seven = std::ffi::CString::new(s(&secret.join("seven"))).unwrap();
    // SAFETY: valid C strings and a 3-byte value.
    let set = unsafe {
        libc::setxattr(
            seven.as_ptr(),
            c"user.checksum".as_ptr(),
            b"old".as_ptr().cast(),
            3,
            0,
        )
    };
    assert_eq!(set, 0, "setxattr on the secret, before the action");
    declare_scene(&daemon, &action.path, &sc, &[]);
    let script = "import ctypes, os, sys\n\
        d, w, x = sys.argv[1:4]\n\
        uid, gid = os.getuid(), os.getgid()\n\
        os.chmod(x + '/one', 0o600); os.chown(x + '/two', uid, gid)\n\
        os.lchown(x + '/link', uid, gid)\n\
        os.utime(x + '/three'); os.setxattr(x + '/four', 'user.checksum', b'forged')\n\
        os.removexattr(x + '/seven', 'user.checksum')\n\
        def fd(p): return os.open(p, os.O_RDONLY)\n\
        os.fchmod(fd(d + '/m1'), 0o644); os.setxattr(fd(d + '/m2'), 'user.checksum', b'forged')\n\
        os.utime(fd(d + '/m3'))\n\
        libc = ctypes.CDLL(None, use_errno=True)\n\
        # fchmodat2(fd, \"\", mode, AT_EMPTY_PATH)\n\
        assert libc.syscall(452, fd(d + '/m4'), b'', 0o644, 0x1000) == 0, ctypes.get_errno()\n\
        os.chmod(w + '/out', 0o600); os.setxattr(w + '/out', 'user.checksum', b'mine')\n\
        os.fchmod(fd(w + '/out'), 0o644); os.utime(w + '/out')\n";
    run_ok(
        &action.path,
        &mut python(script, &[&s(d), &s(w), &s(secret)]),
    );
    let (status, alerts, stderr) = daemon.stop();
    assert!(status.success(), "{stderr}");
    for (path, ops) in [
        (secret.join("one"), &["chmod"][..]),
        (secret.join("two"), &["chown"]),
        (secret.join("three"), &["utimes"]),
        (secret.join("four"), &["setxattr"]),
        (secret.join("seven"), &["removexattr"]),
        (d.join("m1"), &["chmod"]),
        (d.join("m2"), &["setxattr"]),
        (d.join("m3"), &["utimes"]),
        (d.join("m4"), &["chmod"]),
    ] {
        assert_eq!(write_ops_on(&alerts, &path), ops, "{path:?}: {alerts:#?}");
    }
    // lchown changed the link, not the file it leads to.
    assert_eq!(write_ops_on(&alerts, &secret.join("link")), ["chown"]);
    assert!(on(&alerts, &secret.join("six")).is_empty(), "{alerts:#?}");
    // An object changed through a descriptor is named by the kernel.
    let by_fd = on(&alerts, &d.join("m2"));
    assert!(by_fd[0]["file"]["ino"].is_number(), "{by_fd:#?}");
    assert!(under(&alerts, w).is_empty(), "{alerts:#?}");
}

/// The same name changes submitted through io_uring (`UNLINKAT`,
/// `MKDIRAT`, `RENAMEAT`, `LINKAT`, `SYMLINKAT`) never pass the syscall
/// hook: they are judged at submission on the name they write (so is
/// `SETXATTR`'s file; `FSETXATTR` at its completion, on its object); a unix
/// socket's `BIND` at its completion, on the name the socket got (the
/// address length's bytes of the one passed; a relative one against the
/// binder's working directory); a `BIND` or `FSETXATTR` whose success
/// posts no completion at submission, unnamed. Outside the outputs each
/// alerts with its op; in the outputs none does, nor does an abstract
/// socket name.
#[test]
fn io_uring_name_changes_outside_the_outputs_are_undeclared_writes() {
    require_root();
    let parent = test_parent("uring-names");
    let daemon = Daemon::start(&parent.path, "");
    let action = parent.child("uring-names");
    let sc = scene();
    let (d, w, secret) = (&sc.d, &sc.w, &sc.secret);
    let program = d.join("bin/uring_open");
    compile_c("fixtures/uring_open.c", &program, &[]);
    declare_scene(&daemon, &action.path, &sc, &[]);
    let op = |op: &str, paths: &[PathBuf]| {
        let paths: Vec<String> = paths.iter().map(|p| s(p)).collect();
        format!("{op}:{}", paths.join(":"))
    };
    write(&w.join("mine"), "mine");
    run_ok(
        &action.path,
        Command::new(&program).current_dir(secret).args([
            op("unlink", &[secret.join("one")]),
            op("mkdir", &[secret.join("made")]),
            op("rename", &[secret.join("two"), secret.join("moved")]),
            op("link", &[d.join("ok.txt"), secret.join("hl")]),
            op("symlink", &[d.join("ok.txt"), secret.join("sl")]),
            op("mkdir", &[w.join("dir")]),
            op("rename", &[w.join("mine"), w.join("mine2")]),
            op("link", &[w.join("mine2"), w.join("mine3")]),
            op("symlink", &[d.join("ok.txt"), w.join("sl")]),
            op("unlink", &[w.join("mine3")]),
            op("bind", &[secret.join("sock")]),
            "bind:relative-sock".to_string(),
            op("setxattr", &[secret.join("six")]),
            op("fsetxattr", &[d.join("ok.txt")]),
            op("setxattr", &[w.join("mine2")]),
            op("bindskip", &[secret.join("skipped-sock")]),
            op("fsetxattrskip", &[d.join("inner/ok2.txt")]),
            op("bind", &[w.join("sock")]),
            format!("bindabstract:monitor-test-uring-{}", std::process::id()),
            format!(
                "bindcut:{}:{}",
                s(&secret.join("short")).len(),
                s(&secret.join("short-and-more"))
            ),
        ]),
    );
    let (status, alerts, stderr) = daemon.stop();
    assert!(status.success(), "{stderr}");
    for (name, op) in [
        ("one", "unlink"),
        ("made", "mkdir"),
        ("moved", "rename"),
        ("two", "rename_from"),
        ("hl", "link"),
        ("sl", "symlink"),
        ("sock", "bind"),
        ("relative-sock", "bind"),
        ("short", "bind"),
        ("six", "setxattr"),
    ] {
        let hits = on(&alerts, &secret.join(name));
        assert_eq!(hits.len(), 1, "{name}: {alerts:#?}");
        assert_eq!(hits[0]["kind"], "undeclared_write");
        assert_eq!(hits[0]["file"]["op"], op, "{name}");
        assert_eq!(hits[0]["count"], 1, "{name}");
    }
    assert!(secret.join("short").exists(), "the cut bind made 'short'");
    check_unnamed_and_by_descriptor(&alerts, &sc);
    let binds = alerts.iter().filter(|a| a["file"]["op"] == "bind").count();
    assert_eq!(binds, 4, "no file for the abstract name: {alerts:#?}");
    assert!(under(&alerts, w).is_empty(), "{alerts:#?}");
}

/// The io_uring test's requests with no name to judge: a bind and an
/// fsetxattr whose success posts no completion, judged at submission
/// before any name is there to read (one unnamed write: the two fold into
/// it); and an fsetxattr through a descriptor, on the declared input it
/// changed.
fn check_unnamed_and_by_descriptor(alerts: &[Value], sc: &Scene) {
    assert!(
        sc.secret.join("skipped-sock").exists(),
        "the skipped bind ran"
    );
    let unnamed: Vec<&Value> = alerts.iter().filter(|a| a["file"]["path"] == "").collect();
    assert_eq!(unnamed.len(), 1, "{alerts:#?}");
    assert_eq!(unnamed[0]["kind"], "undeclared_write");
    assert_eq!(unnamed[0]["file"]["op"], "bind");
    assert_eq!(unnamed[0]["count"], 2, "{unnamed:#?}");
    assert!(
        unnamed[0]["message"]
            .as_str()
            .unwrap()
            .contains("a file whose name was not seen"),
        "{unnamed:#?}"
    );
    let changed = on(alerts, &sc.d.join("ok.txt"));
    assert_eq!(changed.len(), 1, "{alerts:#?}");
    assert_eq!(changed[0]["kind"], "undeclared_write");
    assert_eq!(changed[0]["file"]["op"], "setxattr");
    assert!(changed[0]["file"]["ino"].is_number(), "{changed:#?}");
}

/// `open_by_handle_at` passes no name at all: the object it opened is
/// judged. The same route to a declared file is the positive control.
#[test]
fn opens_by_file_handle_are_judged_on_the_object() {
    require_root();
    let parent = test_parent("by-handle");
    let daemon = Daemon::start(&parent.path, "");
    let action = parent.child("handle");
    let sc = scene();
    let program = sc.d.join("bin/by_handle");
    compile_c("fixtures/by_handle.c", &program, &[]);
    declare_scene(&daemon, &action.path, &sc, &[]);
    // The mount fd, opened outside the action and inherited.
    let mount_fd = inheritable_fd(&sc.d);
    run_ok(
        &action.path,
        Command::new(&program)
            .arg(mount_fd.to_string())
            .arg(sc.d.join("ok.txt"))
            .arg(sc.secret.join("one")),
    );
    // SAFETY: closing our own descriptor.
    unsafe { libc::close(mount_fd) };
    let (status, alerts, stderr) = daemon.stop();
    assert!(status.success(), "{stderr}");
    one_read_alert(&alerts, &sc.secret.join("one"));
    assert!(under(&alerts, &sc.d).is_empty(), "{alerts:#?}");
}

/// `pidfd_getfd` takes a file another process opened: no open, no name.
/// It is judged as a read of that file (`op` "pidfd_getfd"). The holder
/// opened a secret and a declared file outside every action; taking the
/// declared one is the positive control.
#[test]
fn files_taken_from_another_process_are_judged_on_the_object() {
    require_root();
    let parent = test_parent("getfd");
    let daemon = Daemon::start(&parent.path, "");
    let action = parent.child("getfd");
    let sc = scene();
    let program = sc.d.join("bin/take_fd");
    compile_c("fixtures/take_fd.c", &program, &[]);
    declare_scene(&daemon, &action.path, &sc, &[]);
    let (secret, ok) = (sc.secret.join("one"), sc.d.join("ok.txt"));
    let mut holder = Command::new("/bin/sh")
        .arg("-c")
        .arg(format!(
            "exec 7<{} 8<{}; exec sleep 60",
            secret.display(),
            ok.display()
        ))
        .spawn()
        .unwrap();
    let pid = holder.id().to_string();
    let held = Path::new("/proc").join(&pid).join("fd/8");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !held.exists() {
        assert!(
            Instant::now() < deadline,
            "the holder never opened its files"
        );
        thread::sleep(Duration::from_millis(10));
    }
    for fd in ["7", "8"] {
        run_ok(&action.path, Command::new(&program).args([&pid, fd]));
    }
    let _ = holder.kill();
    let _ = holder.wait();
    let (status, alerts, stderr) = daemon.stop();
    assert!(status.success(), "{stderr}");
    let taken = one_read_alert(&alerts, &secret);
    assert_eq!(taken["file"]["op"], "pidfd_getfd", "{taken:#}");
    assert!(on(&alerts, &ok).is_empty(), "{alerts:#?}");
}

/// Opens submitted through io_uring never pass the syscall hook: they are
/// judged at their completion, on the object. The same ring opening a
/// declared file is the positive control.
#[test]
fn io_uring_opens_are_judged_on_the_object() {
    require_root();
    let parent = test_parent("uring-open");
    let daemon = Daemon::start(&parent.path, "");
    let action = parent.child("uring");
    let sc = scene();
    let program = sc.d.join("bin/uring_open");
    compile_c("fixtures/uring_open.c", &program, &[]);
    declare_scene(&daemon, &action.path, &sc, &[]);
    run_ok(
        &action.path,
        Command::new(&program)
            .arg(sc.d.join("ok.txt"))
            .arg(sc.secret.join("two")),
    );
    let (status, alerts, stderr) = daemon.stop();
    assert!(status.success(), "{stderr}");
    let alert = one_read_alert(&alerts, &sc.secret.join("two"));
    // The ring's completion program reads the parent by probe reads: the
    // program was started by this test.
    assert_eq!(alert["process"]["ppid"], std::process::id(), "{alert}");
    // The opened file's flags (the kernel adds O_LARGEFILE).
    assert!(
        alert["file"]["flags"]
            .as_str()
            .is_some_and(|f| f.starts_with("O_RDONLY")),
        "{alert}"
    );
    assert!(under(&alerts, &sc.d).is_empty(), "{alerts:#?}");
}

/// Direct descriptors never enter the fd table: an open into a fixed-file
/// slot (at an index given, or one the kernel picks) is judged on the file
/// in the slot. A failed ring open is reported with the kernel's copy of
/// its name, resolved against the request's dirfd; a successful one through
/// a symlink carries the name passed; one whose success posts no completion
/// (`IOSQE_CQE_SKIP_SUCCESS`) is judged by that name at submission. The
/// same ring opening declared files into slots, and failing on a missing
/// declared name, raises nothing.
#[test]
fn io_uring_fixed_slots_and_failed_opens_are_judged() {
    require_root();
    let parent = test_parent("uring-fixed");
    let daemon = Daemon::start(&parent.path, "");
    let action = parent.child("uring-fixed");
    let sc = scene();
    let (d, secret) = (&sc.d, &sc.secret);
    let program = d.join("bin/uring_open");
    compile_c("fixtures/uring_open.c", &program, &[]);
    declare_scene(&daemon, &action.path, &sc, &[]);
    // Planted by the action in its outputs (a link there before the launch
    // would declare its target).
    let link = sc.w.join("link");
    run_ok(
        &action.path,
        Command::new("ln")
            .arg("-s")
            .arg(secret.join("six"))
            .arg(&link),
    );
    let op = |op: &str, p: PathBuf| format!("{op}:{}", p.display());
    run_ok(
        &action.path,
        Command::new(&program).args([
            op("fixed", d.join("ok.txt")),
            op("alloc", d.join("inner/ok2.txt")),
            op("missing", d.join("absent")),
            op("skip", d.join("ok.txt")),
            op("fixed", secret.join("three")),
            op("skip", secret.join("seven")),
            op("alloc", secret.join("four")),
            s(&link),
            op("missing", secret.join("absent")),
            format!("at:{}:absent-too", s(secret)),
        ]),
    );
    let (status, alerts, stderr) = daemon.stop();
    assert!(status.success(), "{stderr}");
    for name in ["three", "four"] {
        let alert = one_read_alert(&alerts, &secret.join(name));
        let m = fs::metadata(secret.join(name)).unwrap();
        let dev = format!("{}:{}", libc::major(m.dev()), libc::minor(m.dev()));
        assert_eq!(alert["file"]["ino"], m.ino(), "{alert:#}");
        assert_eq!(alert["file"]["dev"], dev.as_str(), "{alert:#}");
    }
    // No completion posted: judged by the name kept at submission.
    one_read_alert(&alerts, &secret.join("seven"));
    let linked = one_read_alert(&alerts, &secret.join("six"));
    assert_eq!(linked["file"]["requested_path"], s(&link));
    for probe in [secret.join("absent"), secret.join("absent-too")] {
        assert!(
            on(&alerts, &probe)
                .iter()
                .any(|a| a["file"]["result"] == -2),
            "the failed ring open of {probe:?} by its name: {alerts:#?}"
        );
    }
    assert!(under(&alerts, d).is_empty(), "{alerts:#?}");
}

/// A spawn in a chroot (what Bazel's hermetic linux sandbox gives it) names
/// files as it sees them; alerts carry the host path, with the name the
/// spawn passed as `requested_path`. A failed absolute name is reported
/// under the chroot, where the kernel looked it up, not as the host file of
/// that name: also one below a `files.allow` directory (`/usr/**`), which
/// the kernel counts without reporting only outside a chroot. Control: a
/// declared file opened through the chroot.
#[test]
fn chrooted_spawns_are_reported_with_host_paths() {
    require_root();
    let parent = test_parent("chroot");
    let daemon = Daemon::start(&parent.path, "");
    let action = parent.child("chroot");
    let sc = scene();
    let root = sc.secret.join("hermetic");
    write(&root.join("etc/tool.conf"), "declared");
    write(&root.join("secret.txt"), "secret");
    let program = sc.d.join("bin/chroot_open");
    compile_c("fixtures/chroot_open.c", &program, &[]);
    let declared = format!("{}/**", s(&root.join("etc")));
    declare(
        &daemon,
        &action.path,
        &[format!("{}/**", s(&sc.d)), declared],
        &[],
        &[],
    );
    run_ok(
        &action.path,
        Command::new(&program).arg(&root).args([
            "/etc/tool.conf",
            "/secret.txt",
            "/home/u/.aws/credentials",
            "rel-missing",
            "/usr/include/monitor-probe-chroot.h",
        ]),
    );
    let (status, alerts, stderr) = daemon.stop();
    assert!(status.success(), "{stderr}");
    let read = one_read_alert(&alerts, &root.join("secret.txt"));
    assert_eq!(read["file"]["requested_path"], "/secret.txt", "{read}");
    let probe = one_read_alert(&alerts, &root.join("home/u/.aws/credentials"));
    assert_eq!(probe["file"]["result"], -2, "{probe}");
    assert_eq!(probe["file"]["requested_path"], "/home/u/.aws/credentials");
    assert_eq!(
        on(&alerts, &root.join("rel-missing")).len(),
        1,
        "{alerts:#?}"
    );
    assert!(
        on(&alerts, &root.join("etc/tool.conf")).is_empty(),
        "{alerts:#?}"
    );
    assert!(on(&alerts, Path::new("/home/u/.aws/credentials")).is_empty());
    let allowed_outside = one_read_alert(&alerts, &root.join("usr/include/monitor-probe-chroot.h"));
    assert_eq!(allowed_outside["file"]["result"], -2, "{allowed_outside}");
}

/// `int $0x80` from a 64-bit action: ia32 `open` is number 5 (native
/// `fstat`), its arguments are in ebx/ecx/edx. Each route alerts on the
/// secret (metadata changes too: `chmod` is native `rt_sigreturn`'s
/// number, `fsetxattr` on a descriptor `clock_gettime`'s); a failed probe
/// keeps the name passed, also when the caller puts garbage in rbx's upper
/// half (the kernel reads only ebx).
#[test]
fn ia32_syscalls_are_judged_like_native_ones() {
    require_root();
    let parent = test_parent("ia32");
    let daemon = Daemon::start(&parent.path, "");
    let action = parent.child("ia32");
    let sc = scene();
    let program = sc.d.join("bin/ia32");
    compile_c("fixtures/ia32.c", &program, &["-static"]);
    declare_scene(&daemon, &action.path, &sc, &[]);
    let (secret, d) = (&sc.secret, &sc.d);
    let op = |op: &str, p: PathBuf| format!("{op}:{}", p.display());
    run_ok(
        &action.path,
        Command::new(&program).args([
            op("open", d.join("ok.txt")),
            op("openat2", d.join("inner/ok2.txt")),
            op("open", secret.join("one")),
            op("openat", secret.join("two")),
            op("openat2", secret.join("three")),
            op("high", secret.join("four")),
            op("creat", secret.join("made")),
            op("high", secret.join("missing")),
            op("mknod", secret.join("nod")),
            op("mknodat", secret.join("nodat")),
            op("mknod", sc.w.join("nod")),
            op("bind-unix", secret.join("sock")),
            op("bind-socketcall", secret.join("sock2")),
            op("meta-chmod", secret.join("seven")),
            op("meta-lchown32", secret.join("a")),
            op("meta-fsetxattr", secret.join("six")),
            op("meta-chmod", sc.w.join("nod")),
        ]),
    );
    let (status, alerts, stderr) = daemon.stop();
    assert!(status.success(), "{stderr}");
    for name in ["one", "two", "three", "four"] {
        one_read_alert(&alerts, &secret.join(name));
    }
    assert!(
        on(&alerts, &secret.join("made"))
            .iter()
            .any(|a| a["kind"] == "undeclared_write"),
        "{alerts:#?}"
    );
    let probe = on(&alerts, &secret.join("missing"));
    assert!(
        probe.iter().any(|a| a["file"]["result"] == -2),
        "the failed probe by its name: {alerts:#?}"
    );
    for (name, op) in [
        ("nod", "mknod"),
        ("nodat", "mknod"),
        ("sock", "bind"),
        ("sock2", "bind"),
        ("seven", "chmod"),
        ("a", "chown"),
        ("six", "setxattr"),
    ] {
        let made = on(&alerts, &secret.join(name));
        assert!(
            made.iter()
                .any(|a| a["kind"] == "undeclared_write" && a["file"]["op"] == op),
            "{name}: {alerts:#?}"
        );
    }
    assert!(under(&alerts, d).is_empty(), "{alerts:#?}");
    assert!(under(&alerts, &sc.w).is_empty(), "{alerts:#?}");
}

/// A processwrapper-style sandbox as Bazel leaves it before a launch: its
/// execroot links `pkg/in.txt` to a workspace file; a secret lies outside;
/// a shell script named `process-wrapper` runs what follows `--`.
struct FakeSandbox {
    _tmp: tempfile::TempDir,
    source: PathBuf,
    secret: PathBuf,
    execroot: PathBuf,
    launcher: PathBuf,
}

impl FakeSandbox {
    /// Runs `script` with `sh -c` under the launcher, in the execroot, in
    /// the action cgroup `job`.
    fn run(&self, job: &Path, script: &str) {
        run_ok(
            job,
            Command::new(&self.launcher)
                .current_dir(&self.execroot)
                .args(["--timeout=0", "--", "/bin/sh", "-c"])
                .arg(script),
        );
    }

    fn new() -> FakeSandbox {
        let tmp = tempfile::tempdir().unwrap();
        let source = tmp.path().join("workspace/pkg/in.txt");
        let secret = tmp.path().join("home/secret.txt");
        write(&source, "in");
        write(&secret, "secret");
        let execroot = tmp
            .path()
            .join("ob/sandbox/processwrapper-sandbox/9/execroot/ws");
        fs::create_dir_all(execroot.join("pkg")).unwrap();
        std::os::unix::fs::symlink(&source, execroot.join("pkg/in.txt")).unwrap();
        let launcher = tmp.path().join("bin/process-wrapper");
        write(
            &launcher,
            "#!/bin/sh\nwhile [ \"$1\" != \"--\" ]; do shift; done\nshift\nexec \"$@\"\n",
        );
        fs::set_permissions(
            &launcher,
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        FakeSandbox {
            _tmp: tmp,
            source,
            secret,
            execroot,
            launcher,
        }
    }
}

/// A sandbox-style declared tree (`…/sandbox/<strategy>/<id>/execroot/ws`,
/// `pkg/in.txt` a symlink to the real source, as Bazel makes it): a link the
/// spawn plants there after its launch declares nothing.
#[test]
fn a_symlink_planted_in_the_sandbox_after_the_launch_declares_nothing() {
    require_root();
    let parent = test_parent("planted");
    let daemon = Daemon::start(&parent.path, "");
    let job = parent.child("job");
    declare(&daemon, &job.path, &[], &[], &[]);
    let sb = FakeSandbox::new();
    let (source, secret) = (&sb.source, &sb.secret);
    sb.run(
        &job.path,
        &format!(
            "ln -s {} pkg/planted.txt && cat pkg/planted.txt pkg/in.txt > /dev/null",
            secret.display()
        ),
    );
    let (status, alerts, stderr) = daemon.stop();
    assert!(status.success(), "{stderr}");
    assert!(
        !on(&alerts, secret).is_empty(),
        "no alert on the secret; monitor said:\n{stderr}"
    );
    let planted = one_read_alert(&alerts, secret);
    assert_eq!(planted["file"]["requested_path"], "pkg/planted.txt");
    assert!(
        planted["action"]["id"]
            .as_str()
            .unwrap()
            .starts_with("process-wrapper-"),
        "{planted}"
    );
    // Positive control: the link Bazel made before the launch declares.
    assert!(on(&alerts, source).is_empty(), "{alerts:#?}");
}

/// A hard link to a secret made inside the sandbox is a path below the
/// sandbox (declared by path), but not a file the sandbox declared: it
/// alerts. Controls: the input Bazel linked, and a file the action made
/// with a second name of its own.
#[test]
fn a_hard_link_planted_in_the_sandbox_alerts() {
    require_root();
    let parent = test_parent("hardlink");
    let daemon = Daemon::start(&parent.path, "");
    let job = parent.child("job");
    declare(&daemon, &job.path, &[], &[], &[]);
    let sb = FakeSandbox::new();
    let (source, secret, execroot) = (&sb.source, &sb.secret, &sb.execroot);
    sb.run(
        &job.path,
        &format!(
            "ln {} pkg/planted.txt && echo own > pkg/own.txt && ln pkg/own.txt pkg/own2.txt \
         && cat pkg/planted.txt pkg/in.txt pkg/own2.txt > /dev/null",
            secret.display()
        ),
    );
    let (status, alerts, stderr) = daemon.stop();
    assert!(status.success(), "{stderr}");
    let planted = one_read_alert(&alerts, &execroot.join("pkg/planted.txt"));
    assert!(
        planted["message"]
            .as_str()
            .unwrap()
            .contains("(a hard link to a file that was not declared)"),
        "{planted}"
    );
    assert!(on(&alerts, source).is_empty(), "{alerts:#?}");
    assert!(
        on(&alerts, &execroot.join("pkg/own2.txt")).is_empty(),
        "{alerts:#?}"
    );
}

/// The same plant in a source directory the sandbox links whole (its files
/// are not recorded one by one): a file there with several names, named as
/// a hard link the action made (the kernel reports every `link`), alerts.
/// Control: a file of that directory.
#[test]
fn a_hard_link_planted_in_a_linked_source_directory_alerts() {
    require_root();
    let parent = test_parent("hardlink-dir");
    let daemon = Daemon::start(&parent.path, "");
    let job = parent.child("job");
    declare(&daemon, &job.path, &[], &[], &[]);
    let sb = FakeSandbox::new();
    let lib = sb.source.parent().unwrap().join("lib");
    write(&lib.join("f"), "f");
    std::os::unix::fs::symlink(&lib, sb.execroot.join("lib")).unwrap();
    sb.run(
        &job.path,
        &format!(
            "ln {} lib/x && cat lib/x lib/f > /dev/null",
            sb.secret.display()
        ),
    );
    let (status, alerts, stderr) = daemon.stop();
    assert!(status.success(), "{stderr}");
    let planted = one_read_alert(&alerts, &lib.join("x"));
    assert!(
        planted["message"]
            .as_str()
            .unwrap()
            .contains("a hard link the spawn made, in a directory its sandbox links"),
        "{planted}"
    );
    assert!(on(&alerts, &lib.join("f")).is_empty(), "{alerts:#?}");
}

/// The same plant made by a compiled launcher in its first microseconds:
/// the link's file time (a clock tick coarse) is not after the launch, so
/// only the kernel's report of the name it made gives it away. The link
/// Bazel made just before the launch (as recent, by another name) still
/// declares its target: the positive control.
#[test]
fn a_symlink_planted_within_the_launch_tick_declares_nothing() {
    require_root();
    let parent = test_parent("planted-fast");
    let daemon = Daemon::start(&parent.path, "");
    let job = parent.child("job");
    declare(&daemon, &job.path, &[], &[], &[]);
    let tmp = tempfile::tempdir().unwrap();
    let launcher = tmp.path().join("bin/process-wrapper");
    compile_c("fixtures/fast_plant.c", &launcher, &[]);
    let source = tmp.path().join("workspace/pkg/in.txt");
    let secret = tmp.path().join("home/secret.txt");
    write(&source, "in");
    write(&secret, "secret");
    let execroot = tmp
        .path()
        .join("ob/sandbox/processwrapper-sandbox/7/execroot/ws");
    fs::create_dir_all(execroot.join("pkg")).unwrap();
    std::os::unix::fs::symlink(&source, execroot.join("pkg/in.txt")).unwrap();
    run_ok(
        &job.path,
        Command::new(&launcher)
            .current_dir(&execroot)
            .arg(&secret)
            .args(["pkg/planted.txt", "pkg/in.txt"]),
    );
    let (status, alerts, stderr) = daemon.stop();
    assert!(status.success(), "{stderr}");
    let planted = one_read_alert(&alerts, &secret);
    assert_eq!(planted["file"]["requested_path"], "pkg/planted.txt");
    assert!(on(&alerts, &source).is_empty(), "{alerts:#?}");
}

/// A g++ action (driver, cc1plus, as, ld, then the program) raises nothing:
/// its /proc reads are its own, its temporaries go to its outputs. The
/// same action reading a secret is the positive control.
#[test]
fn a_gxx_action_raises_nothing_but_its_secret_read() {
    require_root();
    let parent = test_parent("gxx");
    let daemon = Daemon::start(&parent.path, "");
    let action = parent.child("gxx");
    let sc = scene();
    write(
        &sc.d.join("m.cc"),
        "#include <iostream>\nint main() { std::cout << \"hi\" << std::endl; }\n",
    );
    declare_scene(&daemon, &action.path, &sc, &[]);
    let out = sc.w.join("m");
    run_ok(
        &action.path,
        // run_in clears the environment: TMPDIR goes through env(1).
        Command::new("/usr/bin/env")
            .current_dir(&sc.d)
            .arg(format!("TMPDIR={}", sc.w.display()))
            .args(["/usr/bin/g++", "-O1", "-o"])
            .arg(&out)
            .arg("m.cc"),
    );
    run_ok(&action.path, Command::new(&out).current_dir(&sc.d));
    run_ok(
        &action.path,
        Command::new("/bin/cat").arg(sc.secret.join("one")),
    );
    let (status, alerts, stderr) = daemon.stop();
    assert!(status.success(), "{stderr}");
    one_read_alert(&alerts, &sc.secret.join("one"));
    assert_eq!(alerts.len(), 1, "unexpected alerts: {alerts:#?}");
}

/// Bind mounts the spawn makes in a mount namespace of its own put a
/// secret under a name its sandbox declares: a new name in its writable
/// execroot (declared as an output), a directory there, and a linked
/// input's real path, and the directory above another input's real path.
/// Each read is of something else and alerts; so does a write through such
/// a mount to a file outside. Controls in the same run: the linked inputs
/// read before the mounts, and a file the spawn wrote itself.
#[test]
fn bind_mounts_over_names_the_sandbox_declares_alert_on_the_secret() {
    require_root();
    let parent = test_parent("sandbox-binds");
    let daemon = Daemon::start(&parent.path, "");
    let job = parent.child("job");
    declare(&daemon, &job.path, &[], &[], &[]);
    let sb = FakeSandbox::new();
    let (source, secret, execroot) = (&sb.source, &sb.secret, &sb.execroot);
    let secret_dir = secret.parent().unwrap();
    let victim = secret_dir.join("victim.txt");
    write(&victim, "victim");
    // A second input, and a look-alike of its directory to mount over it.
    let workspace_pkg = source.parent().unwrap();
    let two = workspace_pkg.join("two.txt");
    write(&two, "two");
    std::os::unix::fs::symlink(&two, execroot.join("pkg/two.txt")).unwrap();
    let fake_pkg = secret_dir.join("fake/pkg");
    write(&fake_pkg.join("two.txt"), "fake");
    let script = format!(
        "cat pkg/in.txt pkg/two.txt > /dev/null && echo own > pkg/own.txt && \
         cat pkg/own.txt > /dev/null && \
         unshare -Urm sh -c 'touch pkg/leak && mount --bind {secret} pkg/leak && cat pkg/leak && \
                             mkdir pkg/d && mount --bind {dir} pkg/d && cat pkg/d/secret.txt && \
                             mount --bind {secret} pkg/in.txt && cat pkg/in.txt && \
                             touch pkg/out && mount --bind {victim} pkg/out && echo x > pkg/out && \
                             mount --bind {fake_pkg} {workspace_pkg} && cat pkg/two.txt' \
         > /dev/null",
        secret = secret.display(),
        dir = secret_dir.display(),
        victim = victim.display(),
        fake_pkg = fake_pkg.display(),
        workspace_pkg = workspace_pkg.display(),
    );
    sb.run(&job.path, &script);
    let (status, alerts, stderr) = daemon.stop();
    assert!(status.success(), "{stderr}");
    let secret_ino = fs::metadata(secret).unwrap().ino();
    for name in ["pkg/leak", "pkg/d/secret.txt"] {
        let mounted = one_read_alert(&alerts, &execroot.join(name));
        assert_eq!(mounted["file"]["ino"], secret_ino, "{mounted:#}");
        assert!(
            mounted["message"].as_str().unwrap().contains("mounted"),
            "{mounted:#}"
        );
    }
    let written: Vec<_> = on(&alerts, &execroot.join("pkg/out"))
        .into_iter()
        .filter(|a| a["kind"] == "undeclared_write")
        .collect();
    assert_eq!(written.len(), 1, "{alerts:#?}");
    assert_eq!(
        written[0]["file"]["ino"],
        fs::metadata(&victim).unwrap().ino(),
        "{:#}",
        written[0]
    );
    let over_input = on(&alerts, source);
    assert_eq!(over_input.len(), 1, "{alerts:#?}");
    assert_eq!(
        over_input[0]["file"]["ino"], secret_ino,
        "{:#}",
        over_input[0]
    );
    let over_dir = on(&alerts, &two);
    assert_eq!(over_dir.len(), 1, "{alerts:#?}");
    let fake_ino = fs::metadata(fake_pkg.join("two.txt")).unwrap().ino();
    assert_eq!(over_dir[0]["file"]["ino"], fake_ino, "{:#}", over_dir[0]);
    assert!(
        on(&alerts, &execroot.join("pkg/own.txt")).is_empty(),
        "{alerts:#?}"
    );
}

/// A mount tree no namespace holds gives its files paths of the spawn's
/// choosing: a clone (`open_tree` with `OPEN_TREE_CLONE`, allowed in a
/// mount namespace of the spawn's own) names a file by its path inside the
/// clone, a lazily unmounted tree (`umount -l`) by none. Three routes, each
/// read of the secret alerts on it: a hard link to it at the declared
/// input's path inside a clone of a directory the spawn made, a clone of
/// its directory, and its directory bound and lazily unmounted under the
/// reader's feet. Control: the input itself, read by name.
#[test]
fn opens_in_a_mount_tree_no_namespace_holds_alert_on_the_object() {
    require_root();
    let parent = test_parent("clone-tree");
    let daemon = Daemon::start(&parent.path, "");
    let job = parent.child("job");
    declare(&daemon, &job.path, &[], &[], &[]);
    let sb = FakeSandbox::new();
    let (source, secret, launcher) = (&sb.source, &sb.secret, &sb.launcher);
    let tool = launcher.parent().unwrap().join("detached_open");
    compile_c("fixtures/detached_open.c", &tool, &[]);
    let look_alike = format!("pkg/x{}", source.display());
    let script = format!(
        "cat pkg/in.txt > /dev/null && mkdir -p $(dirname {look_alike}) pkg/m && \
         ln {secret} {look_alike} && \
         unshare -Urm sh -c '{tool} pkg/x {source_rel} && {tool} {secret_dir} secret.txt && \
                             mount --bind {secret_dir} pkg/m && cd pkg/m && umount -l . && \
                             cat secret.txt > /dev/null'",
        secret = secret.display(),
        tool = tool.display(),
        source_rel = source.display().to_string().trim_start_matches('/'),
        secret_dir = secret.parent().unwrap().display(),
    );
    sb.run(&job.path, &script);
    let (status, alerts, stderr) = daemon.stop();
    assert!(status.success(), "{stderr}");
    let secret_ino = fs::metadata(secret).unwrap().ino();
    let on_secret: Vec<_> = alerts
        .iter()
        .filter(|a| a["kind"] == "undeclared_file" && a["file"]["ino"] == secret_ino)
        .collect();
    // The clone of its directory and the unmounted tree both name it
    // `/secret.txt`: one alert, counted twice.
    let reads: u64 = on_secret.iter().map(|a| a["count"].as_u64().unwrap()).sum();
    assert_eq!(reads, 3, "{alerts:#?}");
    for alert in on_secret {
        let message = alert["message"].as_str().unwrap();
        assert!(
            message.contains("mount tree no namespace holds"),
            "{alert:#}"
        );
    }
    let source_ino = fs::metadata(source).unwrap().ino();
    assert!(
        !alerts.iter().any(|a| a["file"]["ino"] == source_ino),
        "{alerts:#?}"
    );
}

/// In `monitor exec`, a link the job made outside every action (as the
/// Bazel server populates a sandbox) declares the target its `symlink`
/// call gave, as the kernel saw the call; the link is not read back. A
/// link swapped in by a rename before the launch (no `symlink` call at
/// that name) declares nothing of its own: the secret it leads to alerts.
/// Read back, it would have declared the secret. Control: the link made
/// in place, whose source the action reads too, raises nothing.
#[test]
fn a_sandbox_link_declares_the_target_its_symlink_call_gave() {
    require_root();
    let sb = FakeSandbox::new();
    let other = sb.source.with_file_name("other.txt");
    write(&other, "other");
    fs::remove_file(sb.execroot.join("pkg/in.txt")).unwrap();
    // The launcher inside the sandbox directory, where its shell may read it.
    let launcher = sb.execroot.join("../process-wrapper");
    fs::copy(&sb.launcher, &launcher).unwrap();
    // One long-lived process makes the links and starts the spawn, as the
    // Bazel server does (what a process made goes when it ends).
    let server = "import os, subprocess, sys\n\
        e, source, other, secret, launcher = sys.argv[1:]\n\
        os.symlink(source, e + '/pkg/in.txt')\n\
        os.symlink(other, e + '/pkg/swapped.txt')\n\
        os.symlink(secret, e + '/pkg/tmp')\n\
        os.rename(e + '/pkg/tmp', e + '/pkg/swapped.txt')\n\
        subprocess.run([launcher, '--timeout=0', '--', '/bin/sh', '-c', \
            'cat pkg/in.txt pkg/swapped.txt > /dev/null'], cwd=e, check=True)\n";
    let report = sb._tmp.path().join("report.json");
    let out = Command::new(monitor_bin())
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .args(["exec", "--report"])
        .arg(&report)
        .args(["--", "/usr/bin/python3", "-S", "-c", server])
        .args([&sb.execroot, &sb.source, &other, &sb.secret, &launcher])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let report: Value = serde_json::from_slice(&fs::read(&report).unwrap())
        .unwrap_or_else(|e| panic!("no report ({e}): {stderr}"));
    let alerts = report["alerts"].as_array().unwrap();
    let swapped = one_read_alert(alerts, &sb.secret);
    assert_eq!(swapped["file"]["requested_path"], "pkg/swapped.txt");
    assert_eq!(alerts.len(), 1, "{alerts:#?}\n{stderr}");
    assert!(on(alerts, &sb.source).is_empty(), "{alerts:#?}");
}
