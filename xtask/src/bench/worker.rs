//! `cargo xtask bench-worker`: the process the benchmark times. It joins a
//! cgroup (and sets its audit login uid) first thing, then repeats one
//! operation: `open`+`close` of one file, of many distinct files once each,
//! or a TCP `connect` to a closed loopback port.

use std::{
    ffi::{CStr, CString},
    fs, io,
    net::{Ipv4Addr, SocketAddrV4},
    os::unix::ffi::OsStrExt as _,
    path::{Path, PathBuf},
    process, thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow};

/// Operations per batch in rate-limited worker runs.
pub const BATCH: u64 = 1000;

/// What the worker repeats.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Workload {
    /// `open(O_RDONLY)`+`close` of one file, again and again.
    Repeat,
    /// `open(O_RDONLY)`+`close` of `<path>/f<i>`, each file once.
    Distinct,
    /// `socket`+`connect`+`close` to 127.0.0.1:`<port>` (nothing listens).
    Connect,
    /// `open(O_RDONLY)` of `<path>/f<i>`, each once, in a directory that
    /// does not exist: every open fails with ENOENT (the alert storm).
    Missing,
    /// `getppid`, a syscall no hook of the monitor watches: what any
    /// program on `sys_exit` costs one syscall (`entry.rs`).
    Getppid,
    /// `fstat` of an open file + `rt_sigprocmask`: unwatched native
    /// syscalls whose numbers are watched ia32 ones (`open`, `mknod`), so
    /// the hook checks their ABI.
    Shared,
    /// A signal sent to the worker's own thread (`tgkill`) and its empty
    /// handler's return (`rt_sigreturn`, the number of ia32 `chmod`, so
    /// the hook checks its ABI).
    Signal,
}

pub const WORKLOADS: [Workload; 3] = [Workload::Repeat, Workload::Distinct, Workload::Connect];

impl Workload {
    pub fn index(self) -> usize {
        WORKLOADS.iter().position(|w| *w == self).expect("listed")
    }

    /// The option value (`--workload`).
    pub fn arg(self) -> &'static str {
        match self {
            Self::Repeat => "repeat",
            Self::Distinct => "distinct",
            Self::Connect => "connect",
            Self::Missing => "missing",
            Self::Getppid => "getppid",
            Self::Shared => "shared",
            Self::Signal => "signal",
        }
    }

    pub fn title(self) -> &'static str {
        match self {
            Self::Repeat => "open+close, same file repeatedly",
            Self::Distinct => "open+close, distinct files (first access each)",
            Self::Connect => "connect to loopback (refused)",
            Self::Missing => "open of distinct missing paths",
            Self::Getppid => "getppid (unwatched)",
            Self::Shared => "fstat+rt_sigprocmask (numbers of watched ia32 calls)",
            Self::Signal => "tgkill+rt_sigreturn (a signal handled; ia32 chmod's number)",
        }
    }

    pub fn short(self) -> &'static str {
        match self {
            Self::Repeat => "same file",
            Self::Distinct => "distinct files",
            Self::Connect => "connect",
            Self::Missing => "missing paths",
            Self::Getppid => "getppid",
            Self::Shared => "fstat+sigprocmask",
            Self::Signal => "signal",
        }
    }
}

/// The name of the i-th file of the distinct-files workload.
pub fn distinct_file(dir: &Path, i: u64) -> PathBuf {
    dir.join(format!("f{i}"))
}

#[derive(clap::Args)]
pub struct WorkerOptions {
    /// The file to open (repeat) or the directory of f0, f1, … (distinct).
    #[arg(long)]
    path: PathBuf,
    #[arg(long, value_enum, default_value_t = Workload::Repeat)]
    workload: Workload,
    /// Loopback port to connect to (connect).
    #[arg(long, default_value_t = 9)]
    port: u16,
    /// Timed operations (ignored with --duration-ms).
    #[arg(long, default_value_t = 200_000)]
    iterations: u64,
    /// Join this cgroup (write our pid to its cgroup.procs) before anything
    /// else.
    #[arg(long)]
    cgroup: Option<PathBuf>,
    /// Set our audit login uid (/proc/self/loginuid) first: audit rules
    /// scoped with `-F auid=N` then match this process only.
    #[arg(long)]
    loginuid: Option<u32>,
    /// Untimed operations first (repeat and connect only).
    #[arg(long, default_value_t = 10_000)]
    warmup: u64,
    /// Throughput mode: repeat for this long instead of --iterations.
    #[arg(long)]
    duration_ms: Option<u64>,
    /// Throughput mode: target operations per second, in batches of 1000
    /// with sleeps between them; 0 = as fast as possible.
    #[arg(long, default_value_t = 0)]
    rate: u64,
}

/// What the worker prints, one line: `opens=N elapsed_ns=T ns_per_pair=X`.
/// `opens` counts every operation after joining the cgroup (warm-up
/// included); the time covers the timed part only.
#[derive(Debug, Clone, Copy)]
pub struct WorkerReport {
    pub opens: u64,
    pub elapsed_ns: u64,
    pub ns_per_pair: f64,
}

impl WorkerReport {
    pub fn parse(text: &str) -> Result<Self> {
        let field = |name: &str| {
            text.split_whitespace()
                .find_map(|word| word.strip_prefix(name)?.strip_prefix('='))
                .ok_or_else(|| anyhow!("the worker printed no {name}= in {text:?}"))
        };
        Ok(Self {
            opens: field("opens")?.parse()?,
            elapsed_ns: field("elapsed_ns")?.parse()?,
            ns_per_pair: field("ns_per_pair")?.parse()?,
        })
    }
}

pub fn open_close(path: &CStr) -> Result<()> {
    // SAFETY: `path` is a valid NUL-terminated string; the fd is ours.
    let fd = unsafe { libc::open(path.as_ptr(), libc::O_RDONLY) };
    if fd < 0 {
        return Err(io::Error::last_os_error()).with_context(|| format!("open({path:?})"));
    }
    // SAFETY: closing the fd just opened.
    unsafe { libc::close(fd) };
    Ok(())
}

/// `fstat` of `file`, then an `rt_sigprocmask` that changes nothing.
fn fstat_sigprocmask(file: &std::fs::File) -> Result<()> {
    use std::os::fd::AsRawFd as _;
    let mut stat = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: a valid descriptor and room for the answer.
    if unsafe { libc::fstat(file.as_raw_fd(), stat.as_mut_ptr()) } != 0 {
        return Err(io::Error::last_os_error()).context("fstat");
    }
    let mut empty = std::mem::MaybeUninit::<libc::sigset_t>::uninit();
    // SAFETY: sigemptyset initialises the set; blocking no signal changes nothing.
    unsafe {
        libc::sigemptyset(empty.as_mut_ptr());
        libc::sigprocmask(libc::SIG_BLOCK, empty.as_ptr(), std::ptr::null_mut());
    }
    Ok(())
}

extern "C" fn ignore_signal(_: libc::c_int) {}

/// `SIGUSR1` handled by a function that does nothing: each one sent costs
/// its delivery and the handler's `rt_sigreturn`.
fn install_empty_handler() -> Result<()> {
    // SAFETY: a zeroed sigaction with a valid handler and an empty mask.
    let installed = unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = ignore_signal as *const () as usize;
        action.sa_flags = libc::SA_RESTART;
        libc::sigemptyset(&mut action.sa_mask);
        libc::sigaction(libc::SIGUSR1, &action, std::ptr::null_mut())
    };
    if installed != 0 {
        return Err(io::Error::last_os_error()).context("sigaction(SIGUSR1)");
    }
    Ok(())
}

/// One open of a path that must not exist (ENOENT expected).
pub fn open_missing(path: &CStr) -> Result<()> {
    match open_close(path) {
        Err(e)
            if e.downcast_ref::<io::Error>()
                .and_then(io::Error::raw_os_error)
                == Some(libc::ENOENT) =>
        {
            Ok(())
        }
        Err(e) => Err(e),
        Ok(()) => Err(anyhow!("open({path:?}) succeeded; the path must not exist")),
    }
}

/// One TCP connect attempt to `addr`; refused is the expected outcome.
pub fn connect_close(addr: SocketAddrV4) -> Result<()> {
    // SAFETY: plain socket(2); the fd is ours and closed below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error()).context("socket(AF_INET, SOCK_STREAM)");
    }
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: addr.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*addr.ip()).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: `sin` is a valid sockaddr_in of the size passed.
    let rc = unsafe {
        libc::connect(
            fd,
            (&sin as *const libc::sockaddr_in).cast(),
            size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    let error = (rc < 0).then(io::Error::last_os_error);
    // SAFETY: closing the fd opened above.
    unsafe { libc::close(fd) };
    match error {
        Some(e) if e.raw_os_error() != Some(libc::ECONNREFUSED) => {
            Err(e).with_context(|| format!("connect({addr})"))
        }
        _ => Ok(()),
    }
}

/// The operation a worker repeats, prepared before timing.
enum Operation {
    Open(CString),
    OpenEach(Vec<CString>),
    /// Opens that must fail with ENOENT.
    Miss(Vec<CString>),
    Connect(SocketAddrV4),
    Getppid,
    /// `fstat` of this descriptor, then `rt_sigprocmask`.
    Shared(std::fs::File),
    /// `SIGUSR1` to (this process, this thread), its handler installed.
    Signal(libc::pid_t, libc::pid_t),
}

impl Operation {
    fn prepare(options: &WorkerOptions) -> Result<Self> {
        let c_path = |path: &Path| {
            CString::new(path.as_os_str().as_bytes())
                .with_context(|| format!("{} contains a NUL byte", path.display()))
        };
        Ok(match options.workload {
            Workload::Repeat => Self::Open(c_path(&options.path)?),
            Workload::Distinct => Self::OpenEach(
                (0..options.iterations)
                    .map(|i| c_path(&distinct_file(&options.path, i)))
                    .collect::<Result<_>>()?,
            ),
            Workload::Missing => Self::Miss(
                (0..options.iterations)
                    .map(|i| c_path(&distinct_file(&options.path, i)))
                    .collect::<Result<_>>()?,
            ),
            Workload::Connect => {
                Self::Connect(SocketAddrV4::new(Ipv4Addr::LOCALHOST, options.port))
            }
            Workload::Getppid => Self::Getppid,
            Workload::Shared => Self::Shared(
                std::fs::File::open(&options.path)
                    .with_context(|| format!("opening {}", options.path.display()))?,
            ),
            Workload::Signal => {
                install_empty_handler()?;
                // SAFETY: plain syscalls without arguments.
                unsafe { Self::Signal(libc::getpid(), libc::gettid()) }
            }
        })
    }

    /// The `i`-th operation.
    fn run(&self, i: u64) -> Result<()> {
        match self {
            Self::Open(path) => open_close(path),
            Self::OpenEach(paths) => open_close(&paths[i as usize % paths.len()]),
            Self::Miss(paths) => open_missing(&paths[i as usize % paths.len()]),
            Self::Connect(addr) => connect_close(*addr),
            Self::Getppid => {
                // SAFETY: plain syscall, no arguments (glibc does not cache it).
                unsafe { libc::getppid() };
                Ok(())
            }
            Self::Shared(file) => fstat_sigprocmask(file),
            Self::Signal(pid, tid) => {
                // SAFETY: a signal to this thread, whose handler does nothing.
                let sent = unsafe { libc::syscall(libc::SYS_tgkill, *pid, *tid, libc::SIGUSR1) };
                if sent != 0 {
                    return Err(io::Error::last_os_error()).context("tgkill");
                }
                Ok(())
            }
        }
    }
}

/// `cargo xtask bench-worker`.
pub fn worker(options: WorkerOptions) -> Result<()> {
    if let Some(uid) = options.loginuid {
        fs::write("/proc/self/loginuid", uid.to_string())
            .context("setting the audit login uid (/proc/self/loginuid)")?;
    }
    if let Some(dir) = &options.cgroup {
        let procs = dir.join("cgroup.procs");
        fs::write(&procs, process::id().to_string())
            .with_context(|| format!("joining cgroup {}", procs.display()))?;
    }
    let operation = Operation::prepare(&options)?;
    let warmup = match options.workload {
        Workload::Distinct => 0,
        _ => options.warmup,
    };
    for i in 0..warmup {
        operation.run(i)?;
    }
    let start = Instant::now();
    let timed = match options.duration_ms {
        None => {
            for i in 0..options.iterations {
                operation.run(i)?;
            }
            options.iterations
        }
        Some(ms) => paced(&operation, start, Duration::from_millis(ms), options.rate)?,
    };
    let elapsed = start.elapsed();
    let ns_per_pair = elapsed.as_nanos() as f64 / timed.max(1) as f64;
    println!(
        "opens={} elapsed_ns={} ns_per_pair={ns_per_pair:.1}",
        warmup + timed,
        elapsed.as_nanos()
    );
    Ok(())
}

/// Throughput mode: batches until `duration` has passed, at `rate` per
/// second (0 = unlimited); returns the operations done.
fn paced(operation: &Operation, start: Instant, duration: Duration, rate: u64) -> Result<u64> {
    let mut done = 0u64;
    while start.elapsed() < duration {
        for i in 0..BATCH {
            operation.run(done + i)?;
        }
        done += BATCH;
        if rate > 0 {
            let due = Duration::from_secs_f64(done as f64 / rate as f64);
            let elapsed = start.elapsed();
            if due > elapsed {
                thread::sleep(due - elapsed);
            }
        }
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_worker_report() {
        let report =
            WorkerReport::parse("opens=210000 elapsed_ns=400000000 ns_per_pair=2000.0\n").unwrap();
        assert_eq!(report.opens, 210_000);
        assert_eq!(report.elapsed_ns, 400_000_000);
        assert!((report.ns_per_pair - 2000.0).abs() < 1e-9);
        assert!(WorkerReport::parse("garbage").is_err());
    }

    #[test]
    fn the_worker_opens_and_closes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        fs::write(&path, "x").unwrap();
        open_close(&CString::new(path.as_os_str().as_bytes()).unwrap()).unwrap();
        let missing = CString::new(dir.path().join("missing").as_os_str().as_bytes()).unwrap();
        assert!(open_close(&missing).is_err());
    }

    #[test]
    fn a_refused_connect_is_fine_and_a_listening_port_too() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        connect_close(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port)).unwrap();
        drop(listener);
        connect_close(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port)).unwrap();
    }
}
