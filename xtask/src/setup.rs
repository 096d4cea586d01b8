//! `cargo xtask setup`: everything building and testing need, each step
//! checked before it is done, so that a warm machine pays nothing and root is
//! needed only when something must be installed.

use std::{
    env,
    ffi::OsString,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result, bail};

use crate::util::{display, exec, is_root, output};

/// Debian packages the build and the tests need. Add new ones here.
pub const DEBIAN_PACKAGES: &[&str] = &[
    // LLVM matching rustc's, for bpf-linker.
    "llvm-22-dev",
    "libpolly-22-dev",
    "zlib1g-dev",
    "libzstd-dev",
    // Benchmark baseline and test tools.
    "bpftrace",
    "bazel-bootstrap", // Bazel 4.2.3: tests/bazel (docs/bazel-4.2.3.md)
    "iproute2",
    "python3",
    "gcc",        // builds the test programs: tests/{egress,objects,repeats}.rs
    "libc6-dev",  // libc.a: tests/repeats.rs links its program statically
    "prometheus", // promtool and a real server: tests/deploy.rs
    // REAPI end-to-end (tests/reapi.rs): BuildGrid's database and its venv.
    "postgresql",
    "python3-venv",            // also the kubernetes-validate venv (below)
    "prometheus-alertmanager", // a real Alertmanager: tests/delivery.rs
    "openssl",                 // a TLS receiver's certificate: tests/delivery.rs
    "systemd", // systemd-analyze verify/security on deploy/monitor.service: tests/deploy.rs
    // The peers `cargo xtask bench` compares against (BENCHMARKS.md).
    "strace",
    "auditd",
    "fatrace",
    "linux-perf", // perf: the bench's split of a monitored open's time
    // The bench's builds write to a journaled ext4 on a loop device
    // (xtask/src/bench/builds/build_fs.rs): mkfs.ext4, losetup.
    "e2fsprogs",
    "mount",
];

/// The Python venv the project owns for BuildGrid (tests/reapi.rs finds it
/// here, or at `$MONITOR_REAPI_VENV`).
pub const REAPI_VENV: &str = "/opt/build-monitor/reapi-venv";
/// What goes into it: BuildGrid with its SQL extras, and psycopg2 (the
/// `postgresql+psycopg2://` driver; psycopg 3 stalls its LISTEN/NOTIFY).
const REAPI_REQUIREMENTS: &[&str] = &["buildgrid[database]==0.4.4", "psycopg2-binary==2.9.13"];

pub const BPF_LINKER_VERSION: &str = "0.13.0";
const LLVM_BIN: &str = "/usr/lib/llvm-22/bin";
const TRACEFS: &str = "/sys/kernel/tracing";

pub fn run() -> Result<()> {
    debian_packages().context("setup: Debian packages")?;
    nightly().context("setup: rustup nightly toolchain")?;
    bpf_linker().context("setup: bpf-linker")?;
    tracefs().context("setup: tracefs")?;
    reapi_venv().context("setup: BuildGrid venv")?;
    kubernetes_validate().context("setup: kubernetes-validate")?;
    Ok(())
}

fn is_installed(package: &str) -> Result<bool> {
    let mut cmd = Command::new("dpkg-query");
    cmd.args(["-W", "-f=${Status}", package]);
    let out = cmd
        .stderr(Stdio::null())
        .output()
        .with_context(|| format!("failed to start `{}`", display(&cmd)))?;
    // dpkg-query fails for packages it has never heard of: not installed.
    Ok(out.status.success()
        && String::from_utf8_lossy(&out.stdout).trim() == "install ok installed")
}

fn debian_packages() -> Result<()> {
    let mut missing = Vec::new();
    for package in DEBIAN_PACKAGES {
        if !is_installed(package)? {
            missing.push(*package);
        }
    }
    if missing.is_empty() {
        println!("setup: Debian packages: ok ({})", DEBIAN_PACKAGES.join(" "));
        return Ok(());
    }
    if !is_root() {
        bail!(
            "missing {}; installing them needs root: run `sudo cargo xtask setup` or \
             `sudo apt-get install {}`",
            missing.join(" "),
            missing.join(" ")
        );
    }
    println!("setup: Debian packages: installing {}", missing.join(" "));
    exec(Command::new("apt-get").arg("update"))?;
    exec(
        Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y"])
            .args(&missing),
    )?;
    let still_missing: Vec<_> = missing
        .iter()
        .filter(|package| !is_installed(package).unwrap_or(false))
        .collect();
    if !still_missing.is_empty() {
        bail!("apt-get install succeeded but {still_missing:?} are still not installed");
    }
    println!("setup: Debian packages: installed {}", missing.join(" "));
    Ok(())
}

/// The nightly toolchain with rust-src (the eBPF build and `cargo fuzz`).
pub fn nightly() -> Result<()> {
    let toolchains = output(Command::new("rustup").args(["toolchain", "list"]))?;
    let has_nightly = toolchains.lines().any(|line| {
        line.starts_with("nightly-") || line.split_whitespace().next() == Some("nightly")
    });
    if has_nightly {
        println!("setup: rustup nightly toolchain: ok");
    } else {
        println!("setup: rustup nightly toolchain: installing");
        exec(Command::new("rustup").args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
        ]))?;
    }
    let components = output(Command::new("rustup").args([
        "component",
        "list",
        "--installed",
        "--toolchain",
        "nightly",
    ]))?;
    if components.lines().any(|line| line.trim() == "rust-src") {
        println!("setup: nightly rust-src: ok");
    } else {
        println!("setup: nightly rust-src: installing");
        exec(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            "nightly",
        ]))?;
    }
    Ok(())
}

/// The version line of the bpf-linker on PATH, if any.
fn bpf_linker_version() -> Option<String> {
    let out = Command::new("bpf-linker")
        .arg("--version")
        .stderr(Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

fn bpf_linker() -> Result<()> {
    let wanted = format!("bpf-linker {BPF_LINKER_VERSION}");
    let found = bpf_linker_version();
    if found.as_deref() == Some(wanted.as_str()) {
        println!("setup: {wanted}: ok");
        return Ok(());
    }
    match &found {
        Some(other) => println!("setup: bpf-linker: found {other:?}, installing {wanted}"),
        None => println!("setup: bpf-linker: installing {wanted} (about a minute)"),
    }
    // Without LLVM 22's bin directory first on PATH the build finds no LLVM
    // (`unable to find library -lLLVM`).
    let mut path = OsString::from(LLVM_BIN);
    if let Some(old) = env::var_os("PATH") {
        path.push(":");
        path.push(old);
    }
    exec(Command::new("cargo").env("PATH", path).args([
        "install",
        "bpf-linker",
        "--version",
        BPF_LINKER_VERSION,
        "--no-default-features",
        "--features",
        "llvm-22",
    ]))?;
    if bpf_linker_version().as_deref() != Some(wanted.as_str()) {
        let cargo_bin = env::var_os("CARGO_HOME")
            .map(PathBuf::from)
            .or_else(|| env::var_os("HOME").map(|home| Path::new(&home).join(".cargo")))
            .map(|home| home.join("bin").display().to_string())
            .unwrap_or_else(|| "cargo's bin directory".to_owned());
        bail!(
            "installed {wanted}, but `bpf-linker --version` does not say so: is {cargo_bin} on PATH?"
        );
    }
    println!("setup: {wanted}: installed");
    Ok(())
}

fn tracefs() -> Result<()> {
    let events = Path::new(TRACEFS).join("events");
    if events.exists() {
        println!("setup: tracefs: ok ({TRACEFS})");
        return Ok(());
    }
    if !is_root() {
        bail!(
            "tracefs is not mounted ({} is missing) and mounting it needs root: run \
             `sudo mount -t tracefs tracefs {TRACEFS}` or `sudo cargo xtask setup`",
            events.display()
        );
    }
    exec(Command::new("mount").args(["-t", "tracefs", "tracefs", TRACEFS]))?;
    if !events.exists() {
        bail!(
            "mounted tracefs on {TRACEFS}, but {} is still missing",
            events.display()
        );
    }
    println!("setup: tracefs: mounted on {TRACEFS}");
    Ok(())
}

/// BuildGrid in a venv of its own. A stamp file records what was installed,
/// so a warm machine only reads it.
fn reapi_venv() -> Result<()> {
    let venv = Path::new(REAPI_VENV);
    let stamp = venv.join("build-monitor.requirements");
    let wanted = REAPI_REQUIREMENTS.join("\n");
    let bgd = venv.join("bin").join("bgd");
    if bgd.is_file() && std::fs::read_to_string(&stamp).ok().as_deref() == Some(wanted.as_str()) {
        println!("setup: BuildGrid venv: ok ({REAPI_VENV})");
        return Ok(());
    }
    if !is_root() {
        bail!(
            "{REAPI_VENV} is missing or stale; creating it needs root: run `sudo cargo xtask setup`"
        );
    }
    println!(
        "setup: BuildGrid venv: installing {} into {REAPI_VENV}",
        REAPI_REQUIREMENTS.join(" ")
    );
    // Debian's interpreter (python3-venv), not whatever `python3` is first on PATH.
    exec(
        Command::new("/usr/bin/python3")
            .args(["-m", "venv"])
            .arg(venv),
    )?;
    exec(
        Command::new(venv.join("bin").join("pip"))
            .args(["install", "--quiet"])
            .args(REAPI_REQUIREMENTS),
    )?;
    if !bgd.is_file() {
        bail!("pip installed BuildGrid but {} is missing", bgd.display());
    }
    std::fs::write(&stamp, wanted).with_context(|| format!("writing {}", stamp.display()))?;
    println!("setup: BuildGrid venv: installed");
    Ok(())
}

/// PyPI's kubernetes-validate, pinned, in a virtualenv of the project's own
/// (tests/deploy.rs validates deploy/kubernetes/ with it, offline).
fn kubernetes_validate() -> Result<()> {
    use testkit::tools::{
        KUBERNETES_VALIDATE_VERSION, kubernetes_validate, kubernetes_validate_venv,
    };
    let tool = kubernetes_validate();
    let version = |tool: &Path| {
        Command::new(tool)
            .arg("--version")
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
    };
    let venv = kubernetes_validate_venv();
    // Written once the install was verified: a warm check costs a stat, not
    // a Python start.
    let marker = venv.join(".verified");
    if marker.exists() && tool.exists() {
        println!("setup: kubernetes-validate {KUBERNETES_VALIDATE_VERSION}: ok");
        return Ok(());
    }
    println!(
        "setup: kubernetes-validate: installing {KUBERNETES_VALIDATE_VERSION} into {}",
        venv.display()
    );
    exec(
        Command::new("/usr/bin/python3")
            .args(["-m", "venv", "--clear"])
            .arg(&venv),
    )?;
    exec(Command::new(venv.join("bin/pip")).args([
        "install",
        "--quiet",
        "--disable-pip-version-check",
        &format!("kubernetes-validate=={KUBERNETES_VALIDATE_VERSION}"),
    ]))?;
    if version(&tool).as_deref() != Some(KUBERNETES_VALIDATE_VERSION) {
        bail!(
            "installed kubernetes-validate, but `{} --version` does not say {KUBERNETES_VALIDATE_VERSION}",
            tool.display()
        );
    }
    std::fs::write(&marker, KUBERNETES_VALIDATE_VERSION)?;
    println!("setup: kubernetes-validate {KUBERNETES_VALIDATE_VERSION}: installed");
    Ok(())
}
