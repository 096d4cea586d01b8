//! Repository fetches with real Bazel 4.2.3 under `monitor exec`: the
//! fixture in `tests/bazel/fetch_workspace` fetches three repositories
//! from a loopback HTTP server this test runs — `@allowed_file` through
//! Bazel's downloader from 127.0.0.1, `@denied_archive` through it from
//! `localhost`, `@bypass` with a repository rule running curl itself.
//! Judged against `[bazel.downloader]` rules allowing only 127.0.0.1, and
//! under `--enforce` with a `scope = "@bazel"` rule.
use std::{
    fs,
    io::{BufRead as _, BufReader, Write as _},
    net::TcpListener,
    path::{Path, PathBuf},
    process::Command,
    sync::{Arc, Mutex},
};

use monitor_integration_tests::{
    bazel::{BAZEL, startup_args},
    *,
};
use serde_json::Value;

/// A minimal HTTP/1.1 server on 127.0.0.1 serving the files of one
/// directory (`Connection: close`), remembering each request as
/// `HOST PATH` (the `Host` header says which URL the client was fetching).
struct FileServer {
    port: u16,
    served: Arc<Mutex<Vec<String>>>,
}

impl FileServer {
    fn start(root: PathBuf) -> FileServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let served = Arc::new(Mutex::new(Vec::new()));
        let log = served.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let mut reader = BufReader::new(stream);
                let mut request = String::new();
                let _ = reader.read_line(&mut request);
                // The headers, up to the empty line.
                let mut line = String::new();
                let mut host = String::new();
                while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                    if line.to_ascii_lowercase().starts_with("host:") {
                        host = line[5..].trim().to_string();
                    }
                    line.clear();
                }
                let path = request.split(' ').nth(1).unwrap_or("/").to_string();
                let body = fs::read(root.join(path.trim_start_matches('/')));
                log.lock().unwrap().push(format!("{host} {path}"));
                let mut stream = reader.into_inner();
                let _ = match body {
                    Ok(body) => stream
                        .write_all(
                            format!(
                                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                                body.len()
                            )
                            .as_bytes(),
                        )
                        .and_then(|()| stream.write_all(&body)),
                    Err(_) => stream.write_all(
                        b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                    ),
                };
            }
        });
        FileServer { port, served }
    }

    fn served(&self) -> Vec<String> {
        self.served.lock().unwrap().clone()
    }
}

struct Build {
    _tmp: tempfile::TempDir,
    server: FileServer,
    code: Option<i32>,
    stderr: String,
    report: Value,
    markdown: String,
}

impl Build {
    fn fetch(&self, repository: &str) -> &Value {
        self.report["bazel"]["fetches"]
            .as_array()
            .and_then(|f| f.iter().find(|f| f["repository"] == repository))
            .unwrap_or_else(|| {
                panic!(
                    "no fetch of {repository} in the report: {:#}\nstderr:\n{}",
                    self.report["bazel"]["fetches"], self.stderr
                )
            })
    }

    fn alerts(&self, kind: &str) -> Vec<&Value> {
        self.report["alerts"]
            .as_array()
            .map(|a| a.iter().filter(|a| a["kind"] == kind).collect())
            .unwrap_or_default()
    }
}

fn sha256(path: &Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    String::from_utf8(out.stdout).unwrap()[..64].to_string()
}

/// The files the server serves, and the workspace fetching them.
fn fixture(t: &Path, port: u16) -> PathBuf {
    let served = t.join("served");
    fs::create_dir_all(&served).unwrap();
    fs::write(served.join("allowed.txt"), "allowed\n").unwrap();
    fs::write(served.join("bypass.txt"), "bypass\n").unwrap();
    fs::write(served.join("payload.txt"), "payload\n").unwrap();
    let tar = Command::new("tar")
        .current_dir(&served)
        .args(["cf", "denied.tar", "payload.txt"])
        .status()
        .unwrap();
    assert!(tar.success());
    let ws = t.join("ws");
    fs::create_dir_all(&ws).unwrap();
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("bazel/fetch_workspace");
    for name in ["BUILD", "bypass.bzl"] {
        fs::copy(fixture.join(name), ws.join(name)).unwrap();
    }
    let workspace = fs::read_to_string(fixture.join("WORKSPACE.in"))
        .unwrap()
        .replace("@PORT@", &port.to_string())
        .replace("@SHA_ALLOWED@", &sha256(&served.join("allowed.txt")))
        .replace("@SHA_DENIED@", &sha256(&served.join("denied.tar")));
    fs::write(ws.join("WORKSPACE"), workspace).unwrap();
    // Bazel's own downloader config, for the test that hands it to Bazel.
    fs::write(
        ws.join("downloader.cfg"),
        format!("rewrite localhost:{port}/(.*) 127.0.0.1:{port}/$1\nallow 127.0.0.1\nblock *\n"),
    )
    .unwrap();
    ws
}

/// Builds `targets` of the fixture under `monitor exec` with `config`
/// (`$PORT` stands for the server's port) and `monitor_args`; every Bazel
/// file (output base, repository cache) is in the test's temp dir, so
/// every fetch goes to the network.
fn build(config: &str, monitor_args: &[&str], bazel_args: &[&str]) -> Build {
    bazel::require_bazel();
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let server = FileServer::start(t.join("served"));
    let ws = fixture(t, server.port);
    let config = config.replace("$PORT", &server.port.to_string());
    let report = t.join("report.json");
    let markdown = t.join("summary.md");
    let startup = startup_args(t);
    let out = bazel::monitor_exec(t, &ws, Some(&config))
        .arg("--report")
        .arg(&report)
        .arg("--markdown")
        .arg(&markdown)
        .args(monitor_args)
        .arg("--")
        .arg(BAZEL)
        .args(&startup)
        .arg("build")
        .args(bazel_args)
        .output()
        .unwrap();
    bazel::shutdown(&ws, t, &startup);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let report = bazel::read_report(&report, &stderr);
    Build {
        markdown: fs::read_to_string(&markdown).unwrap_or_default(),
        _tmp: tmp,
        server,
        code: out.status.code(),
        stderr,
        report,
    }
}

/// The policy of the first test: the connects themselves are allowed, so
/// only the downloader rules decide.
const DOWNLOADER_POLICY: &str = r#"
[network]
allow = [{ cidr = "127.0.0.1/32", port = $PORT }]

[bazel.downloader]
allow = ["127.0.0.1"]
block = ["*"]
"#;

#[test]
fn fetches_are_attributed_to_their_repository_and_judged_by_the_downloader_rules() {
    let b = build(DOWNLOADER_POLICY, &[], &["//:fetched"]);
    assert_eq!(
        b.code,
        Some(1),
        "the build succeeds, the fetch violations exit 1:\n{}",
        b.stderr
    );
    let port = b.server.port;
    let mut served = b.server.served();
    served.sort();
    assert_eq!(
        served,
        [
            format!("127.0.0.1:{port} /allowed.txt"),
            format!("127.0.0.1:{port} /bypass.txt"),
            format!("localhost:{port} /denied.tar"),
        ],
        "{}",
        b.stderr
    );

    // Through the downloader from an allowed host: attributed, connected
    // (by the server JVM), no alert.
    let allowed = b.fetch("@allowed_file");
    assert_eq!(allowed["via"], "downloader");
    assert_eq!(allowed["verdict"], "allowed");
    assert_eq!(
        allowed["url"],
        format!("http://127.0.0.1:{port}/allowed.txt")
    );
    assert!(
        !allowed["connections"].as_array().unwrap().is_empty(),
        "the JVM's connect is joined: {allowed:#}"
    );

    check_denied(&b);
    check_bypass(&b);
    assert_eq!(
        b.report["violations"],
        b.report["alerts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["count"].as_u64().unwrap())
            .sum::<u64>()
    );
}

/// From localhost: not allowed, alerted with the repository and URL.
fn check_denied(b: &Build) {
    let port = b.server.port;
    let denied = b.fetch("@denied_archive");
    assert_eq!(
        (&denied["via"], &denied["verdict"], &denied["host"]),
        (
            &"downloader".into(),
            &"not_allowed".into(),
            &"localhost".into()
        )
    );
    let not_allowed = b.alerts("fetch_not_allowed");
    assert_eq!(not_allowed.len(), 1, "{not_allowed:#?}\n{}", b.stderr);
    let a = not_allowed[0];
    assert_eq!(a["fetch"]["repository"], "@denied_archive");
    assert_eq!(
        a["fetch"]["url"],
        format!("http://localhost:{port}/denied.tar")
    );
    assert_eq!(a["net"]["port"], port);
    assert_eq!(a["action"]["label"], "@bazel");
    assert!(
        a["process"]["exe"]
            .as_str()
            .unwrap_or_default()
            .ends_with("/java"),
        "{a:#}"
    );
}

/// Around the downloader: curl, attributed to its repository; on stderr
/// and in the Markdown summary too.
fn check_bypass(b: &Build) {
    let port = b.server.port;
    let bypass = b.fetch("@bypass");
    assert_eq!(bypass["via"], "bypass");
    assert!(
        bypass["processes"]
            .as_array()
            .unwrap()
            .contains(&"curl".into())
    );
    let bypassed = b.alerts("fetch_bypassed_downloader");
    assert_eq!(bypassed.len(), 1, "{bypassed:#?}\n{}", b.stderr);
    let a = bypassed[0];
    assert_eq!(a["process"]["comm"], "curl");
    assert_eq!(a["fetch"]["repository"], "@bypass");
    assert_eq!(
        a["fetch"]["url"],
        format!("http://127.0.0.1:{port}/bypass.txt")
    );
    assert_eq!(a["action"]["label"], "@bypass");
    assert_eq!(a["action"]["mnemonic"], "RepositoryRule");
    assert!(
        b.stderr
            .contains("monitor: WARNING: curl of repository @bypass fetched"),
        "{}",
        b.stderr
    );
    let row = format!("| @bypass | **bypass** | `http://127.0.0.1:{port}/bypass.txt` |");
    assert!(
        b.markdown.contains("### Repository fetches"),
        "{}",
        b.markdown
    );
    assert!(b.markdown.contains(&row), "{}", b.markdown);
}

#[test]
fn under_enforce_the_bazel_scope_admits_the_servers_own_fetch() {
    let config = r#"
[[network.rule]]
scope = "@bazel"
allow = [{ cidr = "127.0.0.1/32", port = $PORT }]
"#;
    let b = build(
        config,
        &["--enforce"],
        &[
            "--keep_going",
            "@allowed_file//file",
            "@bypass//:fetched.txt",
        ],
    );
    // The server's own fetch went through: the file was served, the
    // connect is joined to its repository, nothing was blocked for it.
    let port = b.server.port;
    let served = b.server.served();
    assert!(
        served.contains(&format!("127.0.0.1:{port} /allowed.txt")),
        "{served:?}\n{}",
        b.stderr
    );
    let allowed = b.fetch("@allowed_file");
    assert!(
        !allowed["connections"].as_array().unwrap().is_empty(),
        "{allowed:#}\n{}",
        b.stderr
    );
    let blocked: Vec<&Value> = b
        .alerts("network_egress")
        .into_iter()
        .filter(|a| a["verdict"] == "blocked")
        .collect();
    assert!(
        blocked.iter().all(|a| a["action"]["label"] != "@bazel"),
        "the server was blocked: {blocked:#?}"
    );
    // Positive control, same run: a repository rule's own curl runs in a
    // launcher's tree, outside the @bazel tier — blocked, never served.
    assert!(
        blocked
            .iter()
            .any(|a| a["process"]["comm"] == "curl" && a["action"]["label"] == "@bypass"),
        "the bypass was not blocked: {:#?}\n{}",
        b.report["alerts"],
        b.stderr
    );
    assert!(
        !served.iter().any(|s| s.ends_with("/bypass.txt")),
        "{served:?}"
    );
    assert_eq!(b.fetch("@bypass")["via"], "bypass");
    assert_ne!(
        b.code,
        Some(0),
        "the @bypass fetch failed, so did the build"
    );
}

#[test]
fn bazels_own_downloader_config_is_judged_with_its_rewrites() {
    // No [bazel.downloader]: the rules are the file given to Bazel, which
    // rewrites the localhost URL to the allowed 127.0.0.1.
    let b = build(
        DOWNLOADER_POLICY
            .split("[bazel.downloader]")
            .next()
            .unwrap(),
        &[],
        &[
            "--experimental_downloader_config=downloader.cfg",
            "//:fetched",
        ],
    );
    let port = b.server.port;
    // Bazel applied the rewrite: the archive was asked of 127.0.0.1.
    let served = b.server.served();
    assert!(
        served.contains(&format!("127.0.0.1:{port} /denied.tar")),
        "{served:?}\n{}",
        b.stderr
    );
    let denied = b.fetch("@denied_archive");
    assert_eq!(denied["url"], format!("http://localhost:{port}/denied.tar"));
    assert_eq!(
        denied["fetched_url"],
        format!("http://127.0.0.1:{port}/denied.tar")
    );
    assert_eq!(
        (&denied["host"], &denied["verdict"]),
        (&"127.0.0.1".into(), &"allowed".into())
    );
    assert!(
        !denied["connections"].as_array().unwrap().is_empty(),
        "{denied:#}"
    );
    assert!(
        b.alerts("fetch_not_allowed").is_empty(),
        "{:#?}",
        b.report["alerts"]
    );
    // Positive control, same run: the rules are in force (from Bazel's
    // file), so the curl bypass is a violation.
    let bypassed = b.alerts("fetch_bypassed_downloader");
    assert_eq!(bypassed.len(), 1, "{:#?}\n{}", b.report["alerts"], b.stderr);
    assert_eq!(bypassed[0]["fetch"]["repository"], "@bypass");
}
