//! Turning ring-buffer records into typed events: fixed parts read from the
//! `#[repr(C)]` layouts of monitor-common, paths made absolute and
//! normalised, kernel timestamps turned into wall-clock time.
use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    sync::OnceLock,
    time::{Duration, SystemTime},
};

use monitor_common::{
    AF_INET, AF_INET6, CgroupEvent, ConnectEvent, DnsEvent, EventHeader, EventKind,
    FLAG_DIR_INTERNAL, FLAG_DIR_TRUNCATED, FLAG_DIR_UNRESOLVED, FLAG_OBJECT, FLAG_PATH_TRUNCATED,
    FLAG_PATH_UNREADABLE, FLAG_SEEN_BY_SOCK_HOOK, FLAG_TRACKED, FileEvent, SOCK_OP_CONNECT,
    SeenKey, SockEvent, UnixConnectEvent, WorkerExitEvent,
};

use crate::events::paths;

/// Who did it: the common part of every event.
#[derive(Clone, Copy, Debug)]
pub struct Origin {
    pub time: SystemTime,
    /// `bpf_ktime_get_ns()` of the event (CLOCK_MONOTONIC).
    pub ktime_ns: u64,
    pub action_cgroup_id: u64,
    /// cgroup ancestors one and two levels below the matched scope.
    pub child_cgroup_id: u64,
    pub grandchild_cgroup_id: u64,
    /// tgid of the sandbox launcher whose tree the process is in, or 0.
    pub launcher: u32,
    pub pid: u32,
    pub tid: u32,
    pub ppid: u32,
    pub scope: u32,
    /// The thread's name as the kernel has it (NUL-padded).
    pub comm: [u8; monitor_common::COMM_LEN],
}

impl Origin {
    /// The name for humans (non-UTF-8 bytes escaped).
    pub fn comm_str(&self) -> String {
        let len = self
            .comm
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(self.comm.len());
        paths::escape_for_display(&self.comm[..len])
    }
}

/// What the kernel says an opened file (or executable) is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Identity {
    /// Device in `stat(2)`'s `st_dev` encoding.
    pub dev: u64,
    pub ino: u64,
    pub nlink: u32,
    pub f_mode: u32,
    pub fs_magic: u32,
    /// For a per-process procfs entry: that process's tgid; else 0.
    pub proc_tgid: u32,
    /// `st_mode`: file type and permissions.
    pub mode: u32,
    /// On a mount attached to no namespace (pipe, socket, memfd, nsfs):
    /// reachable by no path.
    pub internal: bool,
}

impl Identity {
    /// `major:minor`, as in `/proc/self/mountinfo`.
    pub fn dev_string(&self) -> String {
        format!("{}:{}", libc::major(self.dev), libc::minor(self.dev))
    }

    pub fn is_dir(&self) -> bool {
        self.mode & libc::S_IFMT == libc::S_IFDIR
    }

    pub fn is_char_device(&self) -> bool {
        self.mode & libc::S_IFMT == libc::S_IFCHR
    }

    /// The open created the file (`FMODE_CREATED`), as opposed to `O_CREAT`
    /// being passed for a file that already existed.
    pub fn created(&self) -> bool {
        self.f_mode & monitor_common::FMODE_CREATED != 0
    }
}

fn identity(ev: &FileEvent) -> Identity {
    // The kernel's s_dev is major << 20 | minor.
    let dev = libc::makedev(ev.dev >> 20, ev.dev & 0xfffff);
    Identity {
        dev,
        ino: ev.ino,
        nlink: ev.nlink,
        f_mode: ev.f_mode,
        fs_magic: ev.fs_magic,
        proc_tgid: ev.proc_tgid,
        mode: ev.i_mode,
        internal: ev.header.flags & FLAG_DIR_INTERNAL != 0,
    }
}

/// A process made a name: a symlink, a link or a rename
/// (`EventKind::LinkMade`), at `origin.ktime_ns`.
#[derive(Clone, Debug)]
pub struct LinkMade {
    pub origin: Origin,
    pub syscall: u32,
    /// The new name as passed (empty when unreadable).
    pub name: Vec<u8>,
}

#[derive(Clone, Debug)]
pub struct FileOpen {
    pub origin: Origin,
    /// Absolute, normalised path (raw bytes: may be non-UTF-8): for a
    /// successful open the path of the object the kernel opened, else the
    /// name passed, resolved against the cwd or dirfd.
    pub path: Vec<u8>,
    /// The name passed, as passed, when it names something else than
    /// `path` (for a relative name: when `path` does not end with it).
    pub requested: Option<Vec<u8>>,
    /// The opened object's identity (successful opens only).
    pub object: Option<Identity>,
    pub open_flags: u64,
    pub result: i64,
    /// The path was longer than the kernel buffer: `path` is its beginning.
    pub truncated: bool,
    /// A relative path whose base directory could not be resolved; `path`
    /// is then the relative path as passed.
    pub unresolved: bool,
    /// The path pointer could not be read.
    pub unreadable: bool,
    /// The kernel counts this process's repeats of this access under this
    /// key (`FLAG_TRACKED`); they are taken when the process ends.
    pub tracked: Option<SeenKey>,
}

/// Repeats of a tracked access (`FileOpen::tracked`), taken from the
/// kernel's count when the process ended: judged as the first was.
#[derive(Clone, Debug)]
pub struct Repeats {
    pub origin: Origin,
    pub key: SeenKey,
    pub count: u64,
}

/// A connect or a datagram sent to an address.
#[derive(Clone, Debug)]
pub struct Connect {
    pub origin: Origin,
    pub addr: IpAddr,
    pub port: u16,
    pub sock_type: u16,
    /// IP protocol (6 TCP, 17 UDP, …) when the socket hook saw it, else 0.
    pub protocol: u16,
    /// A datagram send (`sendto`/`sendmsg`) rather than a connect.
    pub send: bool,
    /// The syscall's result (0 or -errno), when known: io_uring and
    /// datagram sends have none.
    pub result: Option<i64>,
    pub netns: u32,
    /// The socket hook's verdict bits (`SOCK_*`), or `None` for a connect
    /// seen only at the syscall (a socket from outside the monitored
    /// cgroups).
    pub kernel_verdict: Option<u32>,
}

/// A `connect(2)` on a unix socket.
#[derive(Clone, Debug)]
pub struct UnixConnect {
    pub origin: Origin,
    /// The socket path; an abstract name starts with `@` (its leading NUL).
    pub path: Vec<u8>,
    pub result: i64,
    /// tgid of the listening process (0: unknown).
    pub peer_tgid: u32,
    /// The listener is a live process of the same action (set when the
    /// event is read, while the listener still runs): not egress.
    pub peer_in_action: bool,
}

/// The result of a `connect(2)` the socket hook already reported.
#[derive(Clone, Debug)]
pub struct ConnectResult {
    pub origin: Origin,
    pub addr: IpAddr,
    pub port: u16,
    pub result: i64,
}

#[derive(Clone, Debug)]
pub struct Exec {
    pub origin: Origin,
    pub exe: Option<Vec<u8>>,
    pub identity: Option<Identity>,
}

/// A sandbox launcher started (a new lineage action).
#[derive(Clone, Debug)]
pub struct Launch {
    pub origin: Origin,
    /// NUL-separated, as in `/proc/<pid>/cmdline`.
    pub argv: Vec<u8>,
    pub argv_truncated: bool,
    pub cwd: Option<Vec<u8>>,
}

/// A cgroup below a monitored scope was created or removed.
#[derive(Clone, Debug)]
pub struct CgroupChange {
    pub origin: Origin,
    pub created: bool,
    pub cgroup_id: u64,
    pub level: u32,
    /// Relative to the cgroup2 root (`/a/b`), raw bytes.
    pub path: Vec<u8>,
}

/// A DNS answer delivered to a socket of a monitored action
/// (`EventKind::DnsAnswer`); `origin` has the action, no process.
#[derive(Clone, Debug)]
pub struct DnsAnswer {
    pub origin: Origin,
    pub server: IpAddr,
    /// The UDP payload as copied (at most `DNS_CAPTURE` bytes).
    pub payload: Vec<u8>,
    /// The packet carried more than was copied.
    pub cut: bool,
}

#[derive(Clone, Debug)]
pub enum Event {
    File(FileOpen),
    Connect(Connect),
    /// Joined with the hook's `Connect` of the same thread (`events::netjoin`).
    ConnectResult(ConnectResult),
    UnixConnect(UnixConnect),
    DnsAnswer(DnsAnswer),
    Exec(Exec),
    Exit(Origin),
    Launch(Launch),
    /// The process set up an io_uring: its opens through it are not seen.
    IoUring(Origin),
    /// The process made a symlink, a link or a rename.
    LinkMade(LinkMade),
    /// Repeats of a tracked open, counted by the kernel (never decoded:
    /// made when the process ends).
    Repeats(Repeats),
    Cgroup(CgroupChange),
    /// A worker runner's child exec'd its command: a remote-execution
    /// action rooted at `origin.pid`, working in its input root (`cwd`).
    WorkerLaunch(Launch),
    /// A worker action's root process ended with this `wait` status.
    WorkerExit {
        origin: Origin,
        status: i32,
    },
}

impl Event {
    pub fn origin(&self) -> &Origin {
        match self {
            Event::File(e) => &e.origin,
            Event::Connect(e) => &e.origin,
            Event::ConnectResult(e) => &e.origin,
            Event::UnixConnect(e) => &e.origin,
            Event::DnsAnswer(e) => &e.origin,
            Event::Exec(e) => &e.origin,
            Event::Exit(o) => o,
            Event::Launch(e) => &e.origin,
            Event::IoUring(o) => o,
            Event::LinkMade(l) => &l.origin,
            Event::Repeats(r) => &r.origin,
            Event::Cgroup(c) => &c.origin,
            Event::WorkerLaunch(e) => &e.origin,
            Event::WorkerExit { origin, .. } => origin,
        }
    }

    /// Index into the `kind` labels of `build_monitor_events_total`:
    /// file, net, exec, exit, launch, io_uring, cgroup.
    pub fn metric_index(&self) -> usize {
        match self {
            Event::File(_) | Event::LinkMade(_) | Event::Repeats(_) => 0,
            Event::Connect(_)
            | Event::ConnectResult(_)
            | Event::UnixConnect(_)
            | Event::DnsAnswer(_) => 1,
            Event::Exec(_) => 2,
            Event::Exit(_) => 3,
            Event::Launch(_) => 4,
            Event::IoUring(_) => 5,
            Event::Cgroup(_) => 6,
            Event::WorkerLaunch(_) => 4,
            Event::WorkerExit { .. } => 3,
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("record of {0} bytes is shorter than its header")]
    Short(usize),
    #[error("unknown event kind {0}")]
    UnknownKind(u32),
    #[error("record lengths do not add up ({0} bytes)")]
    BadLength(usize),
}

fn read<T: Copy>(bytes: &[u8]) -> Result<T, DecodeError> {
    if bytes.len() < size_of::<T>() {
        return Err(DecodeError::Short(bytes.len()));
    }
    // SAFETY: length checked; T is a #[repr(C)] plain-data type and the
    // read is unaligned-safe.
    Ok(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) })
}

pub fn decode(bytes: &[u8]) -> Result<Event, DecodeError> {
    let header: EventHeader = read(bytes)?;
    let origin = origin(&header);
    match EventKind::from_u32(header.kind) {
        Some(EventKind::FileOpen) => decode_file(bytes, origin, header.flags).map(Event::File),
        Some(EventKind::Exec) => {
            let (ev, dir, _) = split_path_event(bytes)?;
            let resolved = ev.header.flags & FLAG_DIR_UNRESOLVED == 0;
            let exe = resolved.then(|| paths::dir_from_components(dir));
            let identity = (resolved && ev.ino != 0).then(|| identity(&ev));
            Ok(Event::Exec(Exec {
                origin,
                exe,
                identity,
            }))
        }
        Some(
            kind @ (EventKind::Connect
            | EventKind::SockAddr
            | EventKind::UnixConnect
            | EventKind::DnsAnswer),
        ) => decode_net(kind, bytes, origin, header.flags),
        Some(EventKind::Exit) => Ok(Event::Exit(origin)),
        Some(EventKind::IoUring) => Ok(Event::IoUring(origin)),
        Some(EventKind::LinkMade) => {
            let (ev, _, name) = split_path_event(bytes)?;
            Ok(Event::LinkMade(LinkMade {
                origin,
                syscall: ev.syscall,
                name: name.to_vec(),
            }))
        }
        Some(EventKind::Launch) => decode_launch(bytes, origin).map(Event::Launch),
        Some(EventKind::WorkerLaunch) => decode_launch(bytes, origin).map(Event::WorkerLaunch),
        Some(EventKind::WorkerExit) => {
            let ev: WorkerExitEvent = read(bytes)?;
            Ok(Event::WorkerExit {
                origin,
                status: ev.exit_code,
            })
        }
        Some(kind @ (EventKind::CgroupMkdir | EventKind::CgroupRmdir)) => {
            let ev: CgroupEvent = read(bytes)?;
            let fixed = size_of::<CgroupEvent>();
            let end = fixed + ev.path_len as usize;
            let path = bytes
                .get(fixed..end)
                .ok_or(DecodeError::BadLength(bytes.len()))?;
            Ok(Event::Cgroup(CgroupChange {
                origin,
                created: kind == EventKind::CgroupMkdir,
                cgroup_id: ev.cgroup_id,
                level: ev.level,
                path: path.to_vec(),
            }))
        }
        None => Err(DecodeError::UnknownKind(header.kind)),
    }
}

fn decode_launch(bytes: &[u8], origin: Origin) -> Result<Launch, DecodeError> {
    let (ev, dir, argv) = split_path_event(bytes)?;
    let flags = ev.header.flags;
    Ok(Launch {
        origin,
        argv: argv.to_vec(),
        argv_truncated: flags & (FLAG_PATH_TRUNCATED | FLAG_PATH_UNREADABLE) != 0,
        cwd: (flags & (FLAG_DIR_UNRESOLVED | FLAG_DIR_TRUNCATED) == 0)
            .then(|| paths::dir_from_components(dir)),
    })
}

/// The network family: a syscall connect (or the result of one the socket
/// hook reported), a socket-hook event, a unix-socket connect.
fn decode_net(
    kind: EventKind,
    bytes: &[u8],
    origin: Origin,
    flags: u32,
) -> Result<Event, DecodeError> {
    match kind {
        EventKind::Connect => {
            let ev: ConnectEvent = read(bytes)?;
            let addr = ip(ev.family, &ev.addr)?;
            if flags & FLAG_SEEN_BY_SOCK_HOOK != 0 {
                return Ok(Event::ConnectResult(ConnectResult {
                    origin,
                    addr,
                    port: ev.port,
                    result: ev.result,
                }));
            }
            Ok(Event::Connect(Connect {
                origin,
                addr,
                port: ev.port,
                sock_type: ev.sock_type,
                protocol: 0,
                send: false,
                result: Some(ev.result),
                netns: ev.netns,
                kernel_verdict: None,
            }))
        }
        EventKind::SockAddr => {
            let ev: SockEvent = read(bytes)?;
            Ok(Event::Connect(Connect {
                origin,
                addr: ip(ev.family, &ev.addr)?,
                port: ev.port,
                sock_type: ev.sock_type,
                protocol: ev.protocol,
                // Datagram sends and backstop packets alike.
                send: ev.op != SOCK_OP_CONNECT,
                result: None,
                netns: ev.netns,
                kernel_verdict: Some(ev.verdict),
            }))
        }
        EventKind::UnixConnect => {
            let ev: UnixConnectEvent = read(bytes)?;
            Ok(Event::UnixConnect(UnixConnect {
                origin,
                path: unix_path(&ev.path[..(ev.path_len as usize).min(ev.path.len())]),
                result: ev.result,
                peer_tgid: ev.peer_tgid,
                peer_in_action: false,
            }))
        }
        EventKind::DnsAnswer => {
            let ev: DnsEvent = read(bytes)?;
            let captured = (ev.captured as usize).min(ev.data.len());
            Ok(Event::DnsAnswer(DnsAnswer {
                origin,
                server: ip(ev.family, &ev.server)?,
                payload: ev.data[..captured].to_vec(),
                cut: ev.wire_len > ev.captured,
            }))
        }
        _ => Err(DecodeError::UnknownKind(kind as u32)),
    }
}

/// A `sun_path` as people write it: up to its NUL for a path, `@name` for
/// an abstract socket (leading NUL; the rest is the name, NULs and all).
fn unix_path(raw: &[u8]) -> Vec<u8> {
    match raw.split_first() {
        Some((0, name)) => {
            let mut out = b"@".to_vec();
            out.extend_from_slice(name);
            out
        }
        _ => raw.split(|&b| b == 0).next().unwrap_or_default().to_vec(),
    }
}

/// An address from the kernel's 16 bytes (IPv4 in the first four).
fn ip(family: u16, bytes: &[u8; 16]) -> Result<IpAddr, DecodeError> {
    match family {
        AF_INET => Ok(IpAddr::V4(Ipv4Addr::new(
            bytes[0], bytes[1], bytes[2], bytes[3],
        ))),
        AF_INET6 => Ok(IpAddr::V6(Ipv6Addr::from(*bytes))),
        other => Err(DecodeError::UnknownKind(other as u32)),
    }
}

/// Splits a file-layout record into its fixed part, directory components
/// and path bytes (the record holds the path first, then the directory).
fn split_path_event(bytes: &[u8]) -> Result<(FileEvent, &[u8], &[u8]), DecodeError> {
    let ev: FileEvent = read(bytes)?;
    let fixed = size_of::<FileEvent>();
    let path_end = fixed + ev.path_len as usize;
    let dir_end = path_end + ev.dir_len as usize;
    if bytes.len() < dir_end {
        return Err(DecodeError::BadLength(bytes.len()));
    }
    Ok((ev, &bytes[path_end..dir_end], &bytes[fixed..path_end]))
}

fn decode_file(bytes: &[u8], origin: Origin, flags: u32) -> Result<FileOpen, DecodeError> {
    let (ev, dir, raw) = split_path_event(bytes)?;
    if flags & FLAG_OBJECT != 0 && flags & FLAG_DIR_UNRESOLVED == 0 {
        return Ok(decode_object(&ev, dir, raw, origin, flags));
    }
    let unresolved = flags & FLAG_DIR_UNRESOLVED != 0 && !raw.starts_with(b"/");
    let path = if unresolved || flags & FLAG_OBJECT != 0 && !raw.starts_with(b"/") {
        raw.to_vec()
    } else if raw.starts_with(b"/") {
        // The common case: no base directory to build (the kernel sent none).
        paths::normalize(raw)
    } else {
        paths::resolve(&paths::dir_from_components(dir), raw)
    };
    Ok(FileOpen {
        tracked: seen_key(&ev, &origin, flags),
        origin,
        path,
        requested: None,
        object: None,
        open_flags: ev.open_flags,
        result: ev.result,
        truncated: flags & (FLAG_PATH_TRUNCATED | FLAG_DIR_TRUNCATED) != 0,
        unresolved: unresolved || flags & FLAG_OBJECT != 0 && !raw.starts_with(b"/"),
        unreadable: flags & FLAG_PATH_UNREADABLE != 0,
    })
}

/// A successful open: the path is the object's, walked by the kernel; the
/// name passed is kept when it says something else.
fn decode_object(ev: &FileEvent, dir: &[u8], raw: &[u8], origin: Origin, flags: u32) -> FileOpen {
    let path = paths::dir_from_components(dir);
    let requested = if flags & FLAG_PATH_UNREADABLE != 0 {
        None
    } else if raw.starts_with(b"/") {
        (paths::normalize(raw) != path).then(|| raw.to_vec())
    } else {
        (!names_same_object(&path, raw)).then(|| raw.to_vec())
    };
    FileOpen {
        origin,
        path,
        requested,
        object: Some(identity(ev)),
        open_flags: ev.open_flags,
        result: ev.result,
        truncated: flags & FLAG_DIR_TRUNCATED != 0,
        unresolved: false,
        unreadable: false,
        tracked: seen_key(ev, &origin, flags),
    }
}

/// The kernel's key of a tracked open (as `seen::key_of` built it).
fn seen_key(ev: &FileEvent, origin: &Origin, flags: u32) -> Option<SeenKey> {
    (flags & FLAG_TRACKED != 0).then_some(SeenKey {
        action_cgroup_id: origin.action_cgroup_id,
        ino: ev.ino,
        dentry: ev.dentry,
        mnt: ev.mnt,
        tgid: origin.pid,
        dev: ev.dev,
        generation: ev.generation,
        access_class: ev.access_class,
    })
}

/// A relative name without `..` whose components end the object path names
/// nothing else (its base directory is not walked for successful opens).
fn names_same_object(object: &[u8], relative: &[u8]) -> bool {
    let rel = paths::normalize(relative);
    if relative.split(|&b| b == b'/').any(|c| c == b"..") {
        return false;
    }
    rel == b"/" || object.ends_with(&rel)
}

fn origin(h: &EventHeader) -> Origin {
    Origin {
        time: wall_clock(h.ktime_ns),
        ktime_ns: h.ktime_ns,
        action_cgroup_id: h.action_cgroup_id,
        child_cgroup_id: h.child_cgroup_id,
        grandchild_cgroup_id: h.grandchild_cgroup_id,
        launcher: h.launcher,
        pid: h.pid,
        tid: h.tid,
        ppid: h.ppid,
        scope: h.scope,
        comm: h.comm,
    }
}

/// The wall-clock time of a recent `bpf_ktime_get_ns()` stamp, measured
/// back from now (no drift between the clocks since start-up): for
/// comparing with file timestamps.
pub fn wall_clock_recent(ktime_ns: u64) -> SystemTime {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer to a timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    let now = SystemTime::now();
    let mono = Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32);
    now - mono.saturating_sub(Duration::from_nanos(ktime_ns))
}

/// Converts a `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) stamp to wall-clock
/// time, with the offset between the two clocks taken once.
pub fn wall_clock(ktime_ns: u64) -> SystemTime {
    static BOOT: OnceLock<SystemTime> = OnceLock::new();
    let boot = *BOOT.get_or_init(|| {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: valid pointer to a timespec.
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
        let mono = Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32);
        SystemTime::now() - mono
    });
    boot + Duration::from_nanos(ktime_ns)
}

#[cfg(test)]
mod tests {
    use monitor_common::{EventKind, SYSCALL_OPENAT};

    use super::*;

    fn file_record(flags: u32, dir: &[u8], path: &[u8]) -> Vec<u8> {
        // SAFETY: all-zero is a valid FileEvent.
        let mut ev: FileEvent = unsafe { std::mem::zeroed() };
        ev.header.kind = EventKind::FileOpen as u32;
        ev.header.flags = flags;
        ev.header.pid = 42;
        ev.header.comm[..3].copy_from_slice(b"cat");
        ev.syscall = SYSCALL_OPENAT;
        ev.open_flags = 0o2000000;
        ev.result = -2;
        ev.dir_len = dir.len() as u32;
        ev.path_len = path.len() as u32;
        // SAFETY: plain data viewed as bytes.
        let mut out = unsafe {
            std::slice::from_raw_parts(
                (&ev as *const FileEvent).cast::<u8>(),
                size_of::<FileEvent>(),
            )
        }
        .to_vec();
        out.extend_from_slice(path);
        out.extend_from_slice(dir);
        out
    }

    #[test]
    fn relative_path_is_joined_with_reversed_dir_components() {
        let rec = file_record(0, b"work\0home\0", b"../etc/./passwd");
        let Event::File(f) = decode(&rec).unwrap() else {
            panic!("not a file event")
        };
        assert_eq!(f.path, b"/home/etc/passwd");
        assert_eq!(f.origin.comm_str(), "cat");
        assert_eq!(f.origin.pid, 42);
        assert_eq!(f.result, -2);
        assert!(!f.truncated && !f.unresolved);
    }

    #[test]
    fn absolute_path_ignores_dir_and_keeps_non_utf8_bytes() {
        let rec = file_record(0, b"", b"/tmp//\xff\xfe");
        let Event::File(f) = decode(&rec).unwrap() else {
            panic!("not a file event")
        };
        assert_eq!(f.path, b"/tmp/\xff\xfe");
    }

    #[test]
    fn flags_mark_truncated_and_unresolved() {
        let rec = file_record(FLAG_PATH_TRUNCATED, b"", b"/a");
        let Event::File(f) = decode(&rec).unwrap() else {
            panic!()
        };
        assert!(f.truncated);
        let rec = file_record(FLAG_DIR_UNRESOLVED, b"", b"rel/x");
        let Event::File(f) = decode(&rec).unwrap() else {
            panic!()
        };
        assert!(f.unresolved);
        assert_eq!(f.path, b"rel/x");
    }

    #[test]
    fn unix_paths_stop_at_nul_and_abstract_names_get_an_at() {
        assert_eq!(unix_path(b"/run/x.sock\0\0junk"), b"/run/x.sock");
        assert_eq!(unix_path(b"\0abstract"), b"@abstract");
        assert_eq!(unix_path(b""), b"");
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert_eq!(decode(&[1, 2, 3]).unwrap_err(), DecodeError::Short(3));
        let mut rec = file_record(0, b"", b"/abc");
        rec.truncate(rec.len() - 2);
        assert!(matches!(decode(&rec), Err(DecodeError::BadLength(_))));
        let mut rec = file_record(0, b"", b"/abc");
        rec[0] = 77;
        assert_eq!(decode(&rec).unwrap_err(), DecodeError::UnknownKind(77));
    }

    #[test]
    fn dns_answers_keep_what_was_copied_and_say_when_it_was_cut() {
        // SAFETY: all-zero is a valid DnsEvent.
        let mut ev: DnsEvent = unsafe { std::mem::zeroed() };
        ev.header.kind = EventKind::DnsAnswer as u32;
        ev.family = AF_INET6;
        ev.server[15] = 1;
        ev.wire_len = 2000;
        ev.captured = 3;
        ev.data[..4].copy_from_slice(b"abcd");
        // SAFETY: plain data viewed as bytes.
        let rec = unsafe {
            std::slice::from_raw_parts((&ev as *const DnsEvent).cast::<u8>(), size_of::<DnsEvent>())
        };
        let Event::DnsAnswer(a) = decode(rec).unwrap() else {
            panic!("not a DNS answer")
        };
        assert_eq!(a.server, "::1".parse::<IpAddr>().unwrap());
        assert_eq!(a.payload, b"abc");
        assert!(a.cut);
        assert_eq!(
            decode(&rec[..rec.len() - 1]).unwrap_err(),
            DecodeError::Short(rec.len() - 1)
        );
    }
}
