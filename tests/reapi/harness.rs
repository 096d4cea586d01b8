//! The REAPI farm the test starts and stops itself, offline and on loopback
//! only: a PostgreSQL cluster initialised for this run, BuildGrid 0.4.4
//! (from the venv `cargo xtask setup` installs) on it, and the test suite's
//! own Remote Workers API bot (`tests/reapi/bot.py`). Every process is
//! killed when its guard drops, also when the test panics.
use std::{
    fs,
    net::{SocketAddr, TcpStream},
    os::unix::{fs::PermissionsExt as _, process::CommandExt as _},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use monitor_integration_tests::free_port;

/// Where `cargo xtask setup` puts BuildGrid (xtask/src/setup.rs).
const DEFAULT_VENV: &str = "/opt/build-monitor/reapi-venv";
const PG_BIN: &str = "/usr/lib/postgresql/15/bin";
pub const INSTANCE: &str = "main";

pub fn venv() -> PathBuf {
    let venv = std::env::var_os("MONITOR_REAPI_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_VENV));
    assert!(
        venv.join("bin/bgd").is_file(),
        "{} has no BuildGrid: run `cargo xtask setup`",
        venv.display()
    );
    venv
}

/// A child process killed (with its process group) on drop.
pub struct Guard {
    pub name: &'static str,
    child: Child,
    pub log: PathBuf,
}

impl Guard {
    fn spawn(name: &'static str, cmd: &mut Command, log: PathBuf) -> Guard {
        let out = fs::File::create(&log).unwrap();
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name}: {e}"));
        Guard { name, child, log }
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Panics (with its log) if the process has exited.
    pub fn check_running(&mut self) {
        if let Some(status) = self.child.try_wait().unwrap() {
            panic!("{} exited ({status}):\n{}", self.name, self.log_text());
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        // SAFETY: plain kill(2) of the group this guard started.
        unsafe { libc::kill(-(self.child.id() as i32), libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

fn run(what: &str, cmd: &mut Command) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot start: {e}"));
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Polls until `addr` accepts a TCP connection.
fn wait_listening(guard: &mut Guard, addr: SocketAddr, limit: Duration) {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        guard.check_running();
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return;
        }
        thread::sleep(Duration::from_millis(100));
    }
    panic!(
        "{} did not listen on {addr} within {limit:?}:\n{}",
        guard.name,
        guard.log_text()
    );
}

/// A PostgreSQL cluster of this run (initdb in `dir`, loopback port), run as
/// the `postgres` user; stopped on drop.
pub struct Postgres {
    data: PathBuf,
    pub url: String,
}

impl Postgres {
    pub fn start(dir: &Path) -> Postgres {
        let data = dir.join("pg");
        fs::create_dir_all(&data).unwrap();
        // The server runs as `postgres`: it must reach and own its files.
        fs::set_permissions(dir, fs::Permissions::from_mode(0o755)).unwrap();
        run("chown", Command::new("chown").arg("postgres:").arg(&data));
        let as_pg = |tool: &str| {
            let mut cmd = Command::new("runuser");
            cmd.args(["-u", "postgres", "--"])
                .arg(Path::new(PG_BIN).join(tool));
            cmd.current_dir("/");
            cmd
        };
        run(
            "initdb",
            as_pg("initdb")
                .args(["--no-sync", "-U", "bgd", "--auth=trust", "-E", "UTF8", "-D"])
                .arg(&data),
        );
        let port = free_port();
        let options = format!(
            "-h 127.0.0.1 -p {port} -k {} -c fsync=off -c synchronous_commit=off -c full_page_writes=off",
            data.display()
        );
        run(
            "pg_ctl start",
            as_pg("pg_ctl")
                .args(["-w", "-t", "60", "-D"])
                .arg(&data)
                .arg("-l")
                .arg(data.join("server.log"))
                .args(["-o", &options, "start"]),
        );
        let pg = Postgres {
            data,
            url: format!("postgresql+psycopg2://bgd@127.0.0.1:{port}/bgd"),
        };
        run(
            "createdb",
            as_pg("createdb").args([
                "-h",
                "127.0.0.1",
                "-p",
                &port.to_string(),
                "-U",
                "bgd",
                "bgd",
            ]),
        );
        pg
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(Path::new(PG_BIN).join("pg_ctl"))
            .args(["-m", "immediate", "-w", "-D"])
            .arg(&self.data)
            .arg("stop")
            .current_dir("/")
            .output();
    }
}

/// BuildGrid on a fresh database: schema by `bgd migrate apply`, then the
/// server with CAS, action cache, execution and bots on one loopback port.
pub fn buildgrid(dir: &Path, pg: &Postgres) -> (Guard, u16) {
    let bgd = venv().join("bin/bgd");
    run(
        "bgd migrate apply",
        Command::new(&bgd).args(["migrate", "apply", &pg.url]),
    );
    let port = free_port();
    let cas = dir.join("cas");
    fs::create_dir_all(&cas).unwrap();
    let template = include_str!("bgd.yml.template");
    let config = template
        .replace("@PORT@", &port.to_string())
        .replace("@DB_URL@", &pg.url)
        .replace("@CAS@", &cas.display().to_string());
    let config_path = dir.join("bgd.yml");
    fs::write(&config_path, config).unwrap();
    let mut guard = Guard::spawn(
        "BuildGrid",
        Command::new(&bgd)
            .args(["server", "start"])
            .arg(&config_path)
            .current_dir(dir),
        dir.join("bgd.log"),
    );
    wait_listening(
        &mut guard,
        SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_secs(60),
    );
    (guard, port)
}

/// The bot script, installed as an executable with the venv's interpreter
/// on its `#!` line: the path the agent's `worker_runners` names.
pub fn install_bot(dir: &Path) -> PathBuf {
    let source = include_str!("bot.py");
    let bot = dir.join("bot.py");
    let python = venv().join("bin/python3");
    fs::write(&bot, format!("#!{}\n{source}", python.display())).unwrap();
    fs::set_permissions(&bot, fs::Permissions::from_mode(0o755)).unwrap();
    bot
}

/// Starts the bot (exec'd by its path) and waits until it asks for a bot
/// session (BuildGrid answers that call only when it has work for the bot).
pub fn start_bot(bot: &Path, dir: &Path, port: u16, records: &Path) -> Guard {
    let work = dir.join("work");
    fs::create_dir_all(&work).unwrap();
    let mut guard = Guard::spawn(
        "bot",
        Command::new(bot)
            .arg("--server")
            .arg(format!("127.0.0.1:{port}"))
            .args(["--instance", INSTANCE, "--work-dir"])
            .arg(&work)
            .arg("--records-dir")
            .arg(records),
        dir.join("bot.log"),
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while !guard.log_text().contains("bot: started") {
        guard.check_running();
        assert!(
            Instant::now() < deadline,
            "bot did not start:\n{}",
            guard.log_text()
        );
        thread::sleep(Duration::from_millis(100));
    }
    guard
}
