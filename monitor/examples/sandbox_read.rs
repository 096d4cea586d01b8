//! What reading a Bazel sandbox costs the daemon, apart from any build:
//! a tree laid out as Bazel 4 lays it (a source tree; a main execroot
//! linking the source packages; sandboxes whose inputs link into the main
//! execroot), each sandbox read into its declaration (`spawn_declaration`)
//! as the daemon reads one at its spawn's launch.
//!
//! `cargo run --release -p monitor --example sandbox_read -- [SANDBOXES] [INPUTS] [ROUNDS] [made]`
//! (default 200 sandboxes of 300 inputs, as the bench build; 5 rounds).
//! With `made`, each read is given its links' targets as the kernel
//! reports Bazel's `symlink` calls in `monitor exec` (`made_links`), so
//! no link is read back.
//! Each round makes its sandboxes afresh (not timed) and reads each once,
//! as the daemon reads a build's; it prints the reads' user and system
//! CPU time and the wall time per link. Run it under `perf record` for
//! where the time goes.
use std::{
    fs,
    os::unix::fs::symlink,
    path::Path,
    time::{Duration, Instant, SystemTime},
};

use monitor::bazel::{
    sandbox::{Spawn, made_links::Targets, parse_launch},
    spawns::spawn_declaration,
};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let number = |i: usize, default| args.get(i).and_then(|a| a.parse().ok()).unwrap_or(default);
    let (sandboxes, inputs, rounds) = (number(0, 200), number(1, 300), number(2, 5));
    let made = args.get(3).is_some_and(|a| a == "made");
    let tmp = tempfile::tempdir().expect("a scratch directory");
    // As deep as Bazel's output base: the links' targets are too long to
    // be kept in their inodes, as on a real build.
    let root = tmp
        .path()
        .join("bazel/_bazel_root/0123456789abcdef0123456789abcdef");
    lay_out_sources(&root, inputs);
    let how = if made {
        "targets as made"
    } else {
        "links read back"
    };
    println!("{sandboxes} sandboxes x {inputs} inputs, {rounds} rounds, {how}");
    for round in 0..rounds {
        // Fresh links each round, read once each, as a build's are.
        let spawns = lay_out_sandboxes(&root, round, sandboxes, inputs, made);
        let (user0, sys0) = cpu_times();
        let start = Instant::now();
        for (spawn, targets) in &spawns {
            std::hint::black_box(spawn_declaration(Path::new("/"), spawn, targets));
        }
        let wall = start.elapsed();
        let (user1, sys1) = cpu_times();
        let links = (sandboxes * inputs) as f64;
        println!(
            "round {round}: wall {:.0} ms, user {:.0} ms, sys {:.0} ms, {:.2} us per link",
            wall.as_secs_f64() * 1e3,
            (user1 - user0).as_secs_f64() * 1e3,
            (sys1 - sys0).as_secs_f64() * 1e3,
            wall.as_secs_f64() * 1e6 / links,
        );
        fs::remove_dir_all(root.join(format!("ob/sandbox/{round}"))).expect("sandboxes removed");
    }
}

/// The source tree and the main execroot under `root`, as the bench
/// build's `sb<i>` genrules have them: every input in one source
/// directory, which Bazel 4's main execroot links whole.
fn lay_out_sources(root: &Path, inputs: usize) {
    let src = root.join("workspace");
    let main = root.join("ob/execroot/ws");
    fs::create_dir_all(src.join("in")).expect("the source directory");
    fs::create_dir_all(&main).expect("the main execroot");
    symlink(src.join("in"), main.join("in")).expect("the source link");
    for i in 0..inputs {
        fs::write(src.join(input_name(i)), b"x").expect("an input");
    }
}

/// Round `round`'s sandboxes, each linking every input into the main
/// execroot; the spawns that read them, each launched just after its
/// links were made (as Bazel's are: their links are recent), with the
/// links' targets when `made`.
fn lay_out_sandboxes(
    root: &Path,
    round: usize,
    sandboxes: usize,
    inputs: usize,
    made: bool,
) -> Vec<(Spawn, Targets)> {
    let main = root.join("ob/execroot/ws");
    (0..sandboxes)
        .map(|s| {
            let dir = format!("ob/sandbox/{round}/linux-sandbox/{s}/execroot/ws");
            let execroot = root.join(dir);
            fs::create_dir_all(execroot.join("in")).expect("a sandbox directory");
            let mut targets = Targets::default();
            for i in 0..inputs {
                let name = input_name(i);
                let (link, target) = (execroot.join(&name), main.join(&name));
                symlink(&target, &link).expect("an input link");
                if made {
                    let bytes = |p: &Path| p.as_os_str().as_encoded_bytes().to_vec();
                    targets.insert(bytes(&link), bytes(&target));
                }
            }
            let argv = format!("linux-sandbox\0-W\0{}\0--\0true\0", execroot.display());
            let mut spawn = parse_launch(argv.as_bytes(), Path::new("/"));
            spawn.launched_at = Some(SystemTime::now() + Duration::from_millis(1));
            (spawn, targets)
        })
        .collect()
}

fn input_name(i: usize) -> String {
    format!("in/input_file_{i}.txt")
}

/// This process's user and system CPU time.
fn cpu_times() -> (Duration, Duration) {
    // SAFETY: `getrusage` fills the zeroed struct it is handed.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let d = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
    };
    (d(usage.ru_utime), d(usage.ru_stime))
}
