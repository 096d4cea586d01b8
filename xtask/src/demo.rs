//! `cargo xtask demo`: a short live demonstration on this machine only
//! (loopback). One action, in its own cgroup, reads a declared and an
//! undeclared file and connects to an allowed and a denied port; the monitor
//! must raise exactly one `undeclared_file` and one `network_egress` alert.

use std::{
    collections::BTreeMap,
    fs, io,
    net::{SocketAddr, TcpListener},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread,
    time::Duration,
};

use anyhow::{Context as _, Result, anyhow, bail, ensure};
use serde_json::{Value, json};

use crate::{
    setup,
    util::{
        CgroupGuard, Daemon, cargo, display, exec, free_port, get_metrics, is_root,
        join_cgroup_on_spawn, metric_sum, poll_until, quoted, target_dir, wait_healthz,
        write_atomic,
    },
};

/// Debian's interpreter, not whatever `python3` is first on PATH: a pyenv or
/// venv shim would open many files outside `/usr` and raise alerts of its own.
const PYTHON: &str = "/usr/bin/python3";
const ACTION: &str = "demo-action-1";

pub fn run() -> Result<()> {
    match demo() {
        Ok(summary) => {
            println!("{summary}");
            println!("DEMO OK");
            Ok(())
        }
        Err(error) => {
            println!("DEMO FAILED: {error:#}");
            bail!("the demo failed")
        }
    }
}

/// Binds 127.0.0.1:0 and accepts (and closes) connections in a thread for the
/// rest of the process; returns the port.
fn spawn_listener() -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("binding a listener on 127.0.0.1:0")?;
    let port = listener.local_addr()?.port();
    thread::spawn(move || {
        for stream in listener.incoming() {
            drop(stream);
        }
    });
    Ok(port)
}

/// The demo's files, all in one temporary directory.
struct DemoFiles {
    declarations: PathBuf,
    declared: PathBuf,
    undeclared: PathBuf,
    alerts: PathBuf,
    config: PathBuf,
}

fn demo() -> Result<String> {
    ensure!(
        is_root(),
        "the demo needs root (it loads eBPF programs and creates cgroups): run `sudo -E cargo xtask demo`"
    );
    setup::run()?;
    let monitor_bin = build_monitor()?;
    let tmp_dir = tempfile::Builder::new()
        .prefix("monitor-demo-")
        .tempdir()
        .context("creating a temporary directory")?;
    let files = create_files(tmp_dir.path())?;

    // Locals drop in reverse order: the monitor stops before the cgroups
    // are removed, and those before the temporary directory.
    let cgroups = CgroupGuard::create_fresh("monitor-demo")?;
    let allowed_port = spawn_listener()?;
    let denied_port = spawn_listener()?;
    let metrics_addr = SocketAddr::from(([127, 0, 0, 1], free_port()?));
    write_config(&files, cgroups.path(), allowed_port, metrics_addr)?;
    println!("demo: allowed port {allowed_port}, denied port {denied_port}");

    let monitor = start_monitor(&monitor_bin, &files.config, metrics_addr)?;
    let action = cgroups.create_child(ACTION)?;
    declare_action(&files, &action)?;
    run_action(&files, &action, allowed_port, denied_port)?;

    print_metrics(metrics_addr)?;

    let status = monitor.stop(libc::SIGTERM, Duration::from_secs(15))?;
    ensure!(
        status.success(),
        "the monitor exited with {status} after SIGTERM (expected 0)"
    );
    println!("demo: the monitor stopped cleanly");

    let text = read_alerts(&files.alerts)?;
    summarise(&text, &files.undeclared, denied_port)
}

/// Builds the monitor (debug) and returns its binary.
fn build_monitor() -> Result<PathBuf> {
    // Only the monitor: rebuilding xtask here would replace the running binary.
    exec(cargo().args(["build", "-p", "monitor"]))?;
    let monitor_bin = target_dir()?.join("debug").join("monitor");
    ensure!(
        monitor_bin.is_file(),
        "{} does not exist after the build",
        monitor_bin.display()
    );
    Ok(monitor_bin)
}

/// The directories (declarations, sources, secrets) in `tmp_dir` and the
/// names of the files the demo writes there.
fn create_files(tmp_dir: &Path) -> Result<DemoFiles> {
    let tmp = tmp_dir
        .canonicalize()
        .context("canonicalising the temporary directory")?;
    let declarations = tmp.join("declarations");
    let src = tmp.join("src");
    let secret = tmp.join("secret");
    for dir in [&declarations, &src, &secret] {
        fs::create_dir(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    Ok(DemoFiles {
        declarations,
        declared: src.join("declared.txt"),
        undeclared: secret.join("undeclared.txt"),
        alerts: tmp.join("alerts.jsonl"),
        config: tmp.join("monitor.toml"),
    })
}

/// The monitor's config: one cgroup parent, one allowed port, alerts to
/// stdout and a file, a short fold window.
fn write_config(
    files: &DemoFiles,
    parent: &Path,
    allowed_port: u16,
    metrics_addr: SocketAddr,
) -> Result<()> {
    let config = format!(
        r#"[attribution]
cgroup_parents = [{parent}]
declarations_dir = {declarations}

[network]
allow = [{{ cidr = "127.0.0.1/32", port = {allowed_port} }}]

[alerts]
stdout = true
file = {alerts}
fold_window_ms = 300

[metrics]
listen = "{metrics_addr}"
"#,
        parent = quoted(parent)?,
        declarations = quoted(&files.declarations)?,
        alerts = quoted(&files.alerts)?,
    );
    fs::write(&files.config, &config)
        .with_context(|| format!("writing {}", files.config.display()))?;
    println!("demo: config {}:\n{config}", files.config.display());
    Ok(())
}

/// Starts `monitor run` and waits until `/healthz` answers.
fn start_monitor(monitor_bin: &Path, config: &Path, metrics_addr: SocketAddr) -> Result<Daemon> {
    let mut cmd = Command::new(monitor_bin);
    cmd.arg("run")
        .arg("--config")
        .arg(config)
        .stdin(Stdio::null());
    println!("demo: starting `{}`", display(&cmd));
    let mut monitor = Daemon::spawn("the monitor", &mut cmd)?;
    wait_healthz(&mut monitor, metrics_addr, Duration::from_secs(20))?;
    println!("demo: the monitor is up (http://{metrics_addr}/healthz answers)");
    Ok(monitor)
}

/// Writes both input files and the action's declaration (only the declared
/// file is an input).
fn declare_action(files: &DemoFiles, action: &Path) -> Result<()> {
    fs::write(&files.declared, "declared input\n")
        .with_context(|| format!("writing {}", files.declared.display()))?;
    fs::write(&files.undeclared, "not for this action\n")
        .with_context(|| format!("writing {}", files.undeclared.display()))?;
    let declaration = json!({
        "cgroup": action,
        "label": "//demo:hello",
        "mnemonic": "Genrule",
        "inputs": [files.declared],
    });
    let declaration_path = files.declarations.join(format!("{ACTION}.json"));
    write_atomic(
        &declaration_path,
        serde_json::to_string_pretty(&declaration)?.as_bytes(),
    )?;
    println!(
        "demo: action cgroup {} declared in {}",
        action.display(),
        declaration_path.display()
    );
    Ok(())
}

/// The action: Python in the action cgroup reads both files and connects
/// to both ports.
fn run_action(files: &DemoFiles, action: &Path, allowed_port: u16, denied_port: u16) -> Result<()> {
    let script = format!(
        r#"import socket
open({declared}).read()
open({undeclared}).read()
print("demo action: read declared.txt and undeclared.txt")
for port in ({allowed_port}, {denied_port}):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
        print(f"demo action: connected to 127.0.0.1:{{port}}")
    except OSError as error:
        print(f"demo action: connecting to 127.0.0.1:{{port}} failed: {{error}}")
"#,
        declared = quoted(&files.declared)?,
        undeclared = quoted(&files.undeclared)?,
    );
    let mut child = Command::new(PYTHON);
    // -I -S: no user site, no cwd on sys.path, no site import: the
    // interpreter opens only its own files under /usr and /lib. TZ avoids
    // /etc/localtime. A clean environment: `cargo run` sets LD_LIBRARY_PATH,
    // which would send the dynamic loader probing target/ (undeclared opens
    // the monitor rightly reports).
    child
        .args(["-I", "-S", "-c", &script])
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("TZ", "UTC")
        .env("LC_ALL", "C")
        .stdin(Stdio::null());
    join_cgroup_on_spawn(&mut child, action)?;
    println!(
        "demo: running the action ({PYTHON}) in {}",
        action.display()
    );
    let status = child
        .status()
        .with_context(|| format!("failed to start {PYTHON} in cgroup {}", action.display()))?;
    ensure!(
        status.success(),
        "the demo action ({PYTHON} -c …) failed: {status}"
    );
    Ok(())
}

/// Prints the monitor's own metrics once both alerts (the undeclared file,
/// the denied port) are written, i.e. the fold window (300 ms) has closed;
/// past 10 s as they are (the checks of the alerts say what is missing).
fn print_metrics(metrics_addr: SocketAddr) -> Result<()> {
    let written = |text: &String| {
        metric_sum(text, "build_monitor_alerts_total", Some(("sink", "file"))) >= 2.0
    };
    let metrics = match poll_until(Duration::from_secs(10), || {
        get_metrics(metrics_addr).ok().filter(written)
    }) {
        Some(metrics) => metrics,
        None => get_metrics(metrics_addr)?,
    };
    println!("demo: metrics (http://{metrics_addr}/metrics):");
    for line in metrics
        .lines()
        .filter(|line| line.starts_with("build_monitor_"))
    {
        println!("  {line}");
    }
    Ok(())
}

/// The alerts file, printed; empty when the monitor wrote none.
fn read_alerts(alerts: &Path) -> Result<String> {
    let text = match fs::read_to_string(alerts) {
        Ok(text) => text,
        // A monitor may create the file with its first alert.
        Err(error) if error.kind() == io::ErrorKind::NotFound => {
            println!(
                "demo: the monitor wrote no alerts file ({})",
                alerts.display()
            );
            String::new()
        }
        Err(error) => {
            return Err(error)
                .with_context(|| format!("reading the alerts file {}", alerts.display()));
        }
    };
    println!("demo: alerts file {}:", alerts.display());
    for line in text.lines() {
        println!("  {line}");
    }
    Ok(text)
}

/// Counts the alerts by kind and checks that exactly the two expected ones
/// were raised.
fn summarise(alerts: &str, undeclared: &Path, denied_port: u16) -> Result<String> {
    let mut kinds = BTreeMap::<String, Vec<Value>>::new();
    for (number, line) in alerts.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let alert: Value = serde_json::from_str(line)
            .with_context(|| format!("alert line {} is not JSON: {line}", number + 1))?;
        let kind = alert["kind"].as_str().unwrap_or("<no kind>").to_owned();
        kinds.entry(kind).or_default().push(alert);
    }
    let mut summary = String::from("demo: alerts by kind:");
    for (kind, list) in &kinds {
        summary.push_str(&format!("\n  {kind}: {}", list.len()));
    }
    if kinds.is_empty() {
        summary.push_str("\n  (none)");
    }

    let mut problems = Vec::new();
    let target = |alert: &Value| match alert["kind"].as_str() {
        Some("undeclared_file") => alert["file"]["path"].to_string(),
        Some("network_egress") => format!("{}:{}", alert["net"]["addr"], alert["net"]["port"]),
        _ => alert.to_string(),
    };
    let files = kinds
        .get("undeclared_file")
        .map(Vec::as_slice)
        .unwrap_or_default();
    let undeclared = undeclared.to_string_lossy();
    if files.len() != 1 || files[0]["file"]["path"].as_str() != Some(&*undeclared) {
        let seen: Vec<_> = files.iter().map(target).collect();
        problems.push(format!(
            "expected exactly 1 undeclared_file alert, for {undeclared}; got {}: {seen:?}",
            files.len()
        ));
    }
    let egress = kinds
        .get("network_egress")
        .map(Vec::as_slice)
        .unwrap_or_default();
    if egress.len() != 1 || egress[0]["net"]["port"].as_u64() != Some(u64::from(denied_port)) {
        let seen: Vec<_> = egress.iter().map(target).collect();
        problems.push(format!(
            "expected exactly 1 network_egress alert, for 127.0.0.1:{denied_port}; got {}: {seen:?}",
            egress.len()
        ));
    }
    for (kind, list) in &kinds {
        if kind != "undeclared_file" && kind != "network_egress" {
            problems.push(format!("unexpected {} alert(s) of kind {kind}", list.len()));
        }
    }
    if problems.is_empty() {
        Ok(summary)
    } else {
        println!("{summary}");
        Err(anyhow!(problems.join("; ")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_exactly_the_two_expected_alerts() {
        let alerts = r#"{"kind":"undeclared_file","file":{"path":"/tmp/x/secret/undeclared.txt"}}
{"kind":"network_egress","net":{"addr":"127.0.0.1","port":4242}}
"#;
        let undeclared = Path::new("/tmp/x/secret/undeclared.txt");
        assert!(summarise(alerts, undeclared, 4242).is_ok());
        assert!(summarise(alerts, undeclared, 4243).is_err());
        let extra = format!(
            "{alerts}{}\n",
            r#"{"kind":"undeclared_file","file":{"path":"/etc/localtime"}}"#
        );
        let error = summarise(&extra, undeclared, 4242).unwrap_err().to_string();
        assert!(error.contains("/etc/localtime"), "{error}");
    }
}
