//! Types shared by the kernel programs and userspace: event layouts, map
//! keys and values, limits. No logic lives here.
//!
//! Every event starts with an [`EventHeader`]; its `kind` says which struct
//! follows. File and exec events carry variable-length bytes after their fixed
//! part (see [`FileEvent`]), so the ring-buffer record is only as long as the
//! path it carries.
#![no_std]

pub mod names;

/// Bytes reserved for the path string a process passed to the syscall. One
/// more than `PATH_MAX`, so that a path the kernel would refuse with
/// `ENAMETOOLONG` shows up as truncated rather than silently cut.
pub const PATH_CAPACITY: usize = 4096;
/// Bytes reserved for a directory resolved in the kernel (components stored
/// leaf first, each followed by a NUL byte).
pub const DIR_CAPACITY: usize = 4096;
/// Longest single path component the kernel accepts (`NAME_MAX` + NUL).
pub const NAME_CAPACITY: usize = 256;
/// How many directory levels the kernel walks before marking a directory
/// truncated.
pub const MAX_DIR_DEPTH: u32 = 48;
/// How many cgroup scopes (parents of actions, or action roots) the kernel
/// filter checks.
pub const MAX_SCOPES: u32 = 16;
pub const COMM_LEN: usize = 16;
/// Size of the events ring buffer (a power of two, a multiple of the page
/// size).
pub const RING_BYTES: u32 = 16 * 1024 * 1024;

/// What an event is; the numbering leaves room per hook family.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    FileOpen = 1,
    /// A monitored process set up an io_uring (`header` only): file opens
    /// it submits through the ring bypass the syscall hook.
    IoUring = 2,
    /// A monitored process made a name: a successful symlink, link or
    /// rename (any of their syscalls). File-event layout: `syscall` holds
    /// the syscall number, `path` the new name as passed; no `dir`.
    LinkMade = 3,
    /// A process outside every action (the Bazel server populating a
    /// sandbox) made a symlink by an absolute name. File-event layout:
    /// `syscall` holds the syscall number, `path` the link's name as passed,
    /// `dir` its target as passed (raw bytes, not components).
    SymlinkMade = 4,
    Connect = 100,
    /// A connect or datagram send seen by a cgroup socket-address hook
    /// ([`SockEvent`]): every route (syscall, io_uring, TCP fast open) and
    /// the verdict the kernel applied.
    SockAddr = 101,
    /// A `connect(2)` on a unix socket ([`UnixConnectEvent`]), seen at the
    /// syscall (aya 0.14 cannot attach `cgroup/connect_unix`): observed,
    /// never blocked.
    UnixConnect = 102,
    /// A UDP packet from port 53 delivered to a socket of a monitored
    /// scope ([`DnsEvent`]), seen by the `cgroup_skb/ingress` program: the
    /// DNS answer the job's resolver got.
    DnsAnswer = 103,
    Exec = 200,
    Exit = 201,
    /// A sandbox launcher (`attribution.sandbox_launchers`) started: a new
    /// lineage action. File-event layout: `path` holds the argv (NUL after
    /// each argument), `dir` the working directory's components.
    Launch = 202,
    /// A cgroup was created below a monitored scope ([`CgroupEvent`]).
    CgroupMkdir = 300,
    /// A cgroup below a monitored scope was removed ([`CgroupEvent`]).
    CgroupRmdir = 301,
    /// A process forked by a worker runner (`attribution.worker_runners`)
    /// exec'd its command: a new remote-execution action, rooted at that
    /// process. Launch layout: `path` holds the argv, `dir` the working
    /// directory (the action's input root).
    WorkerLaunch = 400,
    /// A worker action's root process ended ([`WorkerExitEvent`]).
    WorkerExit = 401,
}

impl EventKind {
    pub fn from_u32(v: u32) -> Option<Self> {
        match v {
            1 => Some(Self::FileOpen),
            2 => Some(Self::IoUring),
            3 => Some(Self::LinkMade),
            4 => Some(Self::SymlinkMade),
            100 => Some(Self::Connect),
            101 => Some(Self::SockAddr),
            102 => Some(Self::UnixConnect),
            103 => Some(Self::DnsAnswer),
            200 => Some(Self::Exec),
            201 => Some(Self::Exit),
            202 => Some(Self::Launch),
            300 => Some(Self::CgroupMkdir),
            301 => Some(Self::CgroupRmdir),
            400 => Some(Self::WorkerLaunch),
            401 => Some(Self::WorkerExit),
            _ => None,
        }
    }
}

/// `EventHeader::flags`: the path string was longer than [`PATH_CAPACITY`].
pub const FLAG_PATH_TRUNCATED: u32 = 1 << 0;
/// The resolved directory did not fit (too deep or too long).
pub const FLAG_DIR_TRUNCATED: u32 = 1 << 1;
/// The path was relative but its base directory could not be resolved
/// (bad dirfd, fd table unreadable).
pub const FLAG_DIR_UNRESOLVED: u32 = 1 << 2;
/// The user-space path could not be read at all.
pub const FLAG_PATH_UNREADABLE: u32 = 1 << 3;
/// A successful open: `dir` holds the path of the object opened (the
/// `struct file` behind the returned fd), not a base directory, and the
/// identity fields of [`FileEvent`] are filled in.
pub const FLAG_OBJECT: u32 = 1 << 4;
/// The walk ended at a kernel-internal mount (pipes, sockets, memfds,
/// namespace files): the object is no file-system access.
pub const FLAG_DIR_INTERNAL: u32 = 1 << 5;
/// On a `FileOpen` event: the object is in the kernel's `SEEN` map; the
/// process's repeats of this access are counted there.
pub const FLAG_TRACKED: u32 = 1 << 7;
/// On a failed `FileOpen` with an absolute name: the task is in a chroot
/// (a hermetic sandbox), and `dir` holds its root, under which the kernel
/// looked the name up.
pub const FLAG_NAME_UNDER_ROOT: u32 = 1 << 8;
/// The walk ended at the root of a mount tree no namespace holds: a clone
/// (`open_tree` with `OPEN_TREE_CLONE`, `fsmount`: an anonymous namespace)
/// or a lazily unmounted tree (none). `dir` is the path inside that tree,
/// not the file's: no path names it.
pub const FLAG_DIR_DETACHED: u32 = 1 << 9;
/// On a `Connect` event: the socket-address hook already reported this
/// connect (a [`SockEvent`] of the same thread); this event only brings the
/// syscall's result.
pub const FLAG_SEEN_BY_SOCK_HOOK: u32 = 1 << 6;

/// Common first part of every event.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct EventHeader {
    pub kind: u32,
    pub flags: u32,
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC). A file open's is the clock
    /// read of the CPU's current kernel tick (up to one tick early) unless
    /// the task is in a persistent worker's tree (`emit::file_time`).
    pub ktime_ns: u64,
    /// The cgroup id of the action the task belongs to (the leaf itself or an
    /// ancestor), as the kernel filter matched it.
    pub action_cgroup_id: u64,
    /// The task's cgroup ancestors one and two levels below the matched
    /// scope (0 when the task is not that deep): userspace recognises Bazel's
    /// per-spawn cgroups (`blaze_*_spawns.slice/sandbox_*.scope`) from them.
    pub child_cgroup_id: u64,
    pub grandchild_cgroup_id: u64,
    /// Process id (kernel tgid).
    pub pid: u32,
    /// Thread id (kernel pid).
    pub tid: u32,
    /// Parent process id (tgid of `real_parent`).
    pub ppid: u32,
    /// Index of the scope entry that matched (see [`Scope`]).
    pub scope: u32,
    /// tgid of the sandbox launcher whose process tree the task is in (its
    /// lineage action), or 0.
    pub launcher: u32,
    pub _pad: u32,
    pub comm: [u8; COMM_LEN],
}

/// Which syscall produced a [`FileEvent`].
pub const SYSCALL_OPEN: u32 = 0;
pub const SYSCALL_OPENAT: u32 = 1;
pub const SYSCALL_OPENAT2: u32 = 2;
pub const SYSCALL_CREAT: u32 = 3;
/// `open_by_handle_at`: no name is passed (`path` is empty).
pub const SYSCALL_OPEN_BY_HANDLE_AT: u32 = 4;
/// An `IORING_OP_OPENAT`/`OPENAT2` request, seen at its completion: no
/// name (`path` is empty); `open_flags` are the opened file's `f_flags`.
pub const SYSCALL_IO_URING_OPEN: u32 = 5;
/// `pidfd_getfd`: a descriptor taken from another process, judged as an
/// open of its file with that file's own flags (`path` is empty).
pub const SYSCALL_PIDFD_GETFD: u32 = 6;
/// Name-changing calls, judged as writes of the name (no object: the path
/// is the name passed, resolved like a failed open's).
pub const SYSCALL_UNLINK: u32 = 16;
pub const SYSCALL_RMDIR: u32 = 17;
pub const SYSCALL_MKDIR: u32 = 18;
pub const SYSCALL_TRUNCATE: u32 = 19;
/// The new name of a `link`/`linkat`.
pub const SYSCALL_LINK: u32 = 20;
/// The new name of a `symlink`/`symlinkat`.
pub const SYSCALL_SYMLINK: u32 = 21;
/// The new name of a `rename` family call.
pub const SYSCALL_RENAME: u32 = 22;
/// The old name of a `rename` family call.
pub const SYSCALL_RENAME_FROM: u32 = 23;
/// The name a `mknod`/`mknodat` made (a regular file, a FIFO, a device
/// node or a socket file: a file made without an open).
pub const SYSCALL_MKNOD: u32 = 24;
/// The name a unix socket's `bind` made in the file system (a socket
/// file; abstract names make none).
pub const SYSCALL_BIND: u32 = 25;
/// Changes of a file's metadata alone, judged as writes of the file: by
/// name (the name passed, as for the calls above) or, for the calls that
/// take a descriptor (`fchmod`, an `*at` call on an empty or NULL name),
/// on its object. Mode (`chmod` family), owner (`chown` family),
/// timestamps (`utime`, `utimes`, `futimesat`, `utimensat`), extended
/// attributes set or removed (`setxattr`, `removexattr` families).
pub const SYSCALL_CHMOD: u32 = 26;
pub const SYSCALL_CHOWN: u32 = 27;
pub const SYSCALL_UTIMES: u32 = 28;
pub const SYSCALL_SETXATTR: u32 = 29;
pub const SYSCALL_REMOVEXATTR: u32 = 30;

/// A file open, reported at syscall exit with its result. A successful exec
/// uses the same layout (kind `Exec`): `dir` holds the executable's path
/// components, `path` is empty and the identity fields describe the
/// executable.
///
/// Followed in the record by `path_len` bytes of the path as passed (no
/// NUL), then `dir_len` bytes of directory components (leaf first, NUL after
/// each). With [`FLAG_OBJECT`] (a successful open) they are the path of the
/// object actually opened, walked from its `struct file`; otherwise the
/// resolved base directory of a relative name (empty for an absolute one).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct FileEvent {
    pub header: EventHeader,
    pub syscall: u32,
    pub dirfd: i32,
    pub open_flags: u64,
    pub mode: u32,
    pub path_len: u32,
    pub dir_len: u32,
    /// 0, or 1 + the bytes of the directory components (leaf first) that
    /// lie below the root of the first mount the walk crossed whose root
    /// is not the dentry it is mounted on (a bind mount, another file
    /// system); the rest of the components name where it is mounted.
    pub bind_at: u32,
    /// Syscall return value: fd (>= 0) or -errno.
    pub result: i64,
    /// Identity of the object (with [`FLAG_OBJECT`], and for exec): inode
    /// number, its super block's `s_dev` (kernel encoding: major << 20 |
    /// minor), `f_mode` of the open file (bit 20: the kernel created it),
    /// the file system's magic (low 32 bits of `s_magic`) and link count.
    pub ino: u64,
    pub dev: u32,
    pub f_mode: u32,
    pub fs_magic: u32,
    pub nlink: u32,
    /// For an object on procfs that belongs to a process (`/proc/<pid>/…`):
    /// that process's tgid (host view); 0 otherwise.
    pub proc_tgid: u32,
    /// `i_mode` of the inode (file type and permissions).
    pub i_mode: u32,
    /// With [`FLAG_TRACKED`]: the rest of the object's [`SeenKey`].
    pub generation: u32,
    pub access_class: u32,
    pub dentry: u64,
    pub mnt: u64,
}

/// One thread's access of one kind to one object, as the kernel
/// de-duplicates successful opens: the first is reported in full (with
/// [`FLAG_TRACKED`]), repeats only counted in the `SEEN` map under this key
/// until userspace takes the count (when the thread's process ends). By
/// thread, not process: no two CPUs ever add to one key at once, so the
/// kernel adds with a plain store, not an atomic instruction (the locked
/// compare-and-exchange was 6 % of a repeat's hook samples). The dentry and
/// mount name the path the object was reached by (and so its file system:
/// no device number, which would cost one more kernel read per open); the
/// generation tells a reused inode number apart.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SeenKey {
    pub action_cgroup_id: u64,
    pub ino: u64,
    pub dentry: u64,
    pub mnt: u64,
    /// The thread's id (the kernel's `pid`).
    pub tid: u32,
    pub _pad: u32,
    pub generation: u32,
    /// The open flags that bear on the verdict ([`ACCESS_CLASS_FLAGS`]),
    /// plus [`ACCESS_CREATED`] when the open created the file.
    pub access_class: u32,
}

/// A `SEEN` entry: the whole key and the repeats counted under it. `SEEN`
/// is an array indexed by the key's [`seen_index`] (its slot's low bits): a
/// different key on a taken entry is never counted, only reported in full.
/// The first word (`action_cgroup_id`, never 0 for a key) is 0 for a free
/// entry and [`SEEN_RETIRED`] for one taken and not yet free again.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SeenEntry {
    pub key: SeenKey,
    pub count: u64,
}

/// The `SEEN` slot of `key`: its words but the generation, mixed (one
/// round of a multiplicative hash); never 0 (an empty `RECENT` slot in the
/// kernel). The generation is left out so that the kernel reads it only
/// when it compares or claims a whole key (keys that differ by it alone
/// share a slot, and are told apart there). The kernel and userspace both
/// call this, so they agree on where a key
/// lives. Each field is read with a volatile load: in the kernel the key
/// sits in map memory, where the dentry and mount, stored from typed
/// pointers, read back as plain numbers (a register still holding the
/// pointer would allow no arithmetic).
#[inline(always)]
pub fn seen_slot(key: &SeenKey) -> u64 {
    // SAFETY: a live, aligned key of six u64 words (repr(C), 48 bytes).
    let words = key as *const SeenKey as *const u64;
    let word = |i: usize| unsafe { core::ptr::read_volatile(words.add(i)) };
    let mut h = word(0)
        ^ word(1).rotate_left(13)
        ^ word(2).rotate_left(26)
        ^ word(3).rotate_left(39)
        ^ word(4).rotate_left(52)
        ^ (word(5) >> 32).rotate_left(7);
    // One multiply round, its high bits folded down: the slot's index is
    // its low bits. A collision only costs reports (a key whose entry
    // holds another is reported in full), never hides one.
    h ^= h >> 32;
    h = h.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    h ^= h >> 29;
    h | 1
}

// The kernel writes a key as these six words (`monitor-ebpf/src/seen.rs`).
const _: () = {
    assert!(core::mem::size_of::<SeenKey>() == 48);
    assert!(core::mem::offset_of!(SeenKey, tid) == 32);
    assert!(core::mem::offset_of!(SeenKey, generation) == 40);
    assert!(core::mem::offset_of!(SeenKey, access_class) == 44);
    // An entry is seven words (userspace maps the array: no padding).
    assert!(core::mem::size_of::<SeenEntry>() == 56);
    // A filter cell groups whole entries (see `seen_index`).
    assert!((SEEN_ENTRIES as usize).is_multiple_of(SEEN_FILTER_CELLS));
};

/// `O_ACCMODE | O_CREAT | O_TRUNC | O_APPEND | O_DIRECTORY | O_PATH |
/// __O_TMPFILE`.
pub const ACCESS_CLASS_FLAGS: u32 =
    0o3 | 0o100 | 0o1000 | 0o2000 | 0o200000 | 0o10000000 | 0o20000000;
/// In an access class: the kernel created the file (`FMODE_CREATED`).
pub const ACCESS_CREATED: u32 = 1 << 31;
/// Entries of the `SEEN` array (a power of two).
pub const SEEN_ENTRIES: u32 = 65536;
/// The first word of a `SEEN` entry userspace took: no key matches it, and
/// the kernel claims only free (0) entries.
pub const SEEN_RETIRED: u64 = u64::MAX;
/// What userspace leaves in a taken entry's count: a repeat the kernel adds
/// after the take finds the count at or above it and is reported in full
/// instead (it was not in the count taken).
pub const SEEN_TAKEN: u64 = 1 << 62;

/// Where in `SEEN` the key with `slot` lives.
#[inline(always)]
pub fn seen_index(slot: u64) -> u32 {
    slot as u32 & (SEEN_ENTRIES - 1)
}
/// Cells of `SEEN_FILTER` (a power of two): how many `SEEN` entries each
/// group of slots holds (a slot's group: the slot modulo this).
pub const SEEN_FILTER_CELLS: usize = 8192;

/// A sandbox directory, as the kernel names its inode: a failed open of a
/// name below it, relative to a directory inside it, is counted in
/// `PROBES_FOLDED` instead of reported (`monitor-ebpf/src/sandbox.rs`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SandboxDir {
    pub ino: u64,
    /// `sb->s_dev` (`MAJOR << 20 | MINOR`).
    pub dev: u32,
    pub _pad: u32,
}

/// Sandboxes registered in the kernel at once; past it, an action's
/// failed probes are reported as without it.
pub const MAX_SANDBOX_DIRS: u32 = 4096;
/// A sandbox's key for an action of a sandbox launcher's process tree:
/// this bit and the launcher's tgid (cgroup ids never have it set). Other
/// actions are keyed by their cgroup id.
pub const LINEAGE_KEY: u64 = 1 << 63;
/// Longest name a failed probe may have to be counted in the kernel (the
/// check for `..` reads it byte by byte).
pub const MAX_FOLDED_NAME: usize = 256;
/// Directories walked up from a probe's base to find its sandbox.
pub const MAX_FOLD_DEPTH: u32 = 16;

/// `f_mode` bit: the open created the file (`FMODE_CREATED`, a macro, not
/// in BTF).
pub const FMODE_CREATED: u32 = 1 << 20;
/// `s_magic` of procfs.
pub const PROC_SUPER_MAGIC: u32 = 0x9fa0;

pub const AF_UNIX: u16 = 1;
pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;
pub const AF_PACKET: u16 = 17;

/// A connect on an inet socket, reported at syscall exit with its result.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ConnectEvent {
    pub header: EventHeader,
    pub fd: i32,
    pub family: u16,
    /// Socket type (`SOCK_STREAM` = 1, `SOCK_DGRAM` = 2, `SOCK_RAW` = 3), or 0
    /// when unknown.
    pub sock_type: u16,
    /// Destination port in host byte order.
    pub port: u16,
    pub _pad: [u8; 6],
    /// IPv4 in the first 4 bytes, or IPv6.
    pub addr: [u8; 16],
    pub result: i64,
    /// Inode number of the task's network namespace.
    pub netns: u32,
    pub _pad2: u32,
}

/// A cgroup created or removed below a monitored scope (from the
/// `cgroup_mkdir`/`cgroup_rmdir` tracepoints): its id and path arrive
/// together, even for a cgroup that lives a millisecond. The header carries
/// the kind, time and creating task; its action fields are 0.
///
/// Followed in the record by `path_len` bytes of the cgroup's path relative
/// to the cgroup2 root (`/a/b`, no NUL).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct CgroupEvent {
    pub header: EventHeader,
    pub cgroup_id: u64,
    /// Depth below the cgroup2 root (root = 0).
    pub level: u32,
    pub path_len: u32,
}

/// `sizeof(sockaddr_un.sun_path)`.
pub const UNIX_PATH_CAPACITY: usize = 108;

/// A connect on a unix socket, reported at syscall exit with its result.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct UnixConnectEvent {
    pub header: EventHeader,
    pub result: i64,
    /// Bytes of `path` that are the address (`addrlen` - 2, at most
    /// [`UNIX_PATH_CAPACITY`]); a leading NUL is an abstract name.
    pub path_len: u32,
    /// tgid of the process that listens on the socket (its peer
    /// credentials), or 0 when unknown (e.g. the connect failed).
    pub peer_tgid: u32,
    pub path: [u8; UNIX_PATH_CAPACITY],
    pub _pad2: [u8; 4],
}

/// [`SockEvent::op`]: a connect (`connect(2)`, io_uring, TCP fast open).
pub const SOCK_OP_CONNECT: u16 = 0;
/// [`SockEvent::op`]: a datagram sent to an address (`sendto`, `sendmsg`).
pub const SOCK_OP_SENDMSG: u16 = 1;
/// [`SockEvent::op`]: a packet of a socket the address hooks do not see
/// (ICMP "ping", raw), caught leaving by the `cgroup_skb/egress` backstop.
pub const SOCK_OP_PACKET: u16 = 2;
/// [`SockEvent::op`]: a packet socket (`AF_PACKET`) made, caught at the
/// `socket_create` LSM hook: no destination; `protocol` is the Ethernet
/// protocol asked for.
pub const SOCK_OP_PACKET_SOCKET: u16 = 3;

/// [`SockEvent::verdict`] bits.
/// The destination is allowed by `network.allow` (as compiled into the
/// kernel's allow maps).
pub const SOCK_ALLOWED: u32 = 1 << 0;
/// The destination is a loopback port the same action listens on (its own
/// traffic, e.g. the Bazel client and server): never egress.
pub const SOCK_INTERNAL: u32 = 1 << 1;
/// The kernel refused the call (enforcement on, destination not allowed).
pub const SOCK_BLOCKED: u32 = 1 << 2;

/// A destination seen by a cgroup socket-address hook (`connect4/6`,
/// `sendmsg4/6`), before the call goes on: the address is the one the
/// kernel will use.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct SockEvent {
    pub header: EventHeader,
    /// `SOCK_OP_*`.
    pub op: u16,
    /// `AF_INET` or `AF_INET6` (IPv4-mapped addresses keep `AF_INET6`).
    pub family: u16,
    /// Socket type (`SOCK_STREAM` = 1, `SOCK_DGRAM` = 2, …).
    pub sock_type: u16,
    /// IP protocol (6 TCP, 17 UDP, 1 ICMP, …).
    pub protocol: u16,
    /// Destination port in host byte order.
    pub port: u16,
    pub _pad: u16,
    /// `SOCK_*` verdict bits.
    pub verdict: u32,
    /// IPv4 in the first 4 bytes, or IPv6.
    pub addr: [u8; 16],
    /// Inode number of the task's network namespace.
    pub netns: u32,
    pub _pad2: u32,
}

/// Bytes of a DNS answer the kernel copies: 1232, the EDNS buffer size
/// resolvers have advertised since DNS Flag Day 2020, so that nearly every
/// UDP answer fits whole (classic DNS answers are at most 512).
pub const DNS_CAPTURE: usize = 1232;

/// A UDP packet from port 53 delivered to a socket of a monitored scope
/// (the `cgroup_skb/ingress` program). The packet arrives in softirq
/// context: the header's action fields come from the socket's cgroup; its
/// pid, tid, ppid and comm are 0.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct DnsEvent {
    pub header: EventHeader,
    /// `AF_INET` or `AF_INET6`.
    pub family: u16,
    pub _pad: u16,
    /// Bytes of UDP payload the packet carried.
    pub wire_len: u32,
    /// Bytes of it copied into `data` (at most [`DNS_CAPTURE`]).
    pub captured: u32,
    pub _pad2: u32,
    /// The answering server's address (IPv4 in the first 4 bytes).
    pub server: [u8; 16],
    pub data: [u8; DNS_CAPTURE],
}

/// Key of the kernel's allow-list tries: `port` (network byte order; only
/// in the port trie) then the address as IPv6 (IPv4 as `::ffff:a.b.c.d`).
pub const ALLOW_KEY_ANY_BYTES: usize = 16;
pub const ALLOW_KEY_PORT_BYTES: usize = 18;
/// How many allow-list prefixes each trie holds.
pub const MAX_ALLOW_RULES: u32 = 1024;
/// The action tier's keys: the action's cgroup id (big-endian, so that a
/// prefix of 64 bits is "this action"), then an allow key as above.
pub const ACTION_KEY_ANY_BYTES: usize = 8 + ALLOW_KEY_ANY_BYTES;
pub const ACTION_KEY_PORT_BYTES: usize = 8 + ALLOW_KEY_PORT_BYTES;
/// Entries of the action tier, all actions together.
pub const MAX_ACTION_RULES: u32 = 16384;

/// A listening (bound) socket of a monitored action: loopback connects to it
/// are the action's own traffic.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ListenerKey {
    pub netns_cookie: u64,
    pub action_cgroup_id: u64,
    /// The local address as the allow tries write it (IPv4 as
    /// `::ffff:a.b.c.d`); a wildcard bind is `::ffff:0.0.0.0` or `::`.
    pub addr: [u8; 16],
    pub port: u16,
    /// `IPPROTO_TCP` or `IPPROTO_UDP`.
    pub protocol: u16,
    pub _pad: u32,
}
/// How many bound sockets of monitored actions are remembered.
pub const MAX_LISTENERS: u32 = 16384;

/// A monitored process ended (`header` only).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ExitEvent {
    pub header: EventHeader,
}

/// The root of a worker action ended, with its exit status.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct WorkerExitEvent {
    pub header: EventHeader,
    /// `task->exit_code` as `wait` reports it (`code << 8`, or the signal).
    pub exit_code: i32,
    pub _pad: u32,
}

/// `EventHeader::scope` of a worker action's process outside every
/// monitored cgroup (worker lineage is followed wherever it runs).
pub const SCOPE_NONE: u32 = u32::MAX;

/// Scope flag: the cgroup's *children* are actions (a configured parent);
/// without it the cgroup itself is one action (e.g. `monitor exec`'s job).
pub const SCOPE_CHILDREN_ARE_ACTIONS: u32 = 1 << 0;
/// Scope flag: report file opens (without it, only network and process
/// events: a job judged against the network policy only).
pub const SCOPE_FILES: u32 = 1 << 1;
/// Scope flag: the job is a Bazel build; its processes outside every
/// sandbox launcher's tree (the server, the client, repository rules) may
/// also use the `@bazel` tier's allow tries (`scope = "@bazel"` rules).
pub const SCOPE_BAZEL_SERVER: u32 = 1 << 2;

/// One entry of the kernel filter: a task belongs to an action when its cgroup
/// ancestor at `level` is `cgroup_id`. The kernel's entries are ordered
/// deepest first (the first match is the deepest).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Scope {
    pub cgroup_id: u64,
    /// Depth of `cgroup_id` below the cgroup v2 root (root = 0).
    pub level: u32,
    pub flags: u32,
    /// The scope's position in the list userspace was given (events name
    /// their scope by it).
    pub index: u32,
    pub _pad: u32,
}

/// Kernel structure offsets, read by userspace from the running kernel's BTF
/// before the programs run (the Rust BPF target has no CO-RE relocations).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct KernelOffsets {
    pub task_real_parent: u32,
    pub task_tgid: u32,
    pub task_fs: u32,
    pub task_files: u32,
    pub task_mm: u32,
    pub task_nsproxy: u32,
    pub fs_pwd: u32,
    /// `fs_struct.root`: the task's root (a chroot moves it).
    pub fs_root: u32,
    pub dentry_inode: u32,
    pub path_mnt: u32,
    pub path_dentry: u32,
    pub dentry_parent: u32,
    pub dentry_name: u32,
    pub qstr_len: u32,
    pub qstr_name: u32,
    /// Offset of `struct vfsmount mnt` inside `struct mount`.
    pub mount_mnt: u32,
    pub mount_parent: u32,
    pub mount_mountpoint: u32,
    pub vfsmount_root: u32,
    pub files_fdt: u32,
    pub fdtable_max_fds: u32,
    pub fdtable_fd: u32,
    pub file_path: u32,
    pub file_private_data: u32,
    pub socket_type: u32,
    pub mm_exe_file: u32,
    pub nsproxy_net_ns: u32,
    pub net_ns_inum: u32,
    pub mm_arg_start: u32,
    pub mm_arg_end: u32,
    pub cgroup_kn: u32,
    pub cgroup_root: u32,
    pub cgroup_level: u32,
    pub cgroup_ancestors: u32,
    pub cgroup_root_hierarchy_id: u32,
    pub kernfs_node_id: u32,
    pub file_f_inode: u32,
    pub file_f_mode: u32,
    pub inode_i_ino: u32,
    pub inode_i_sb: u32,
    pub inode_i_nlink: u32,
    pub inode_i_mode: u32,
    pub sb_s_dev: u32,
    pub sb_s_magic: u32,
    /// `struct proc_inode`: its `pid` and where the embedded inode starts.
    pub proc_inode_pid: u32,
    pub proc_inode_vfs_inode: u32,
    /// `struct pid.tasks[PIDTYPE_PID]` and `task_struct.pid_links[PIDTYPE_PID]`.
    pub pid_tasks: u32,
    pub task_pid_links: u32,
    pub mount_mnt_ns: u32,
    /// `mnt_namespace.seq`, or `ns.ns_id` where ns_common has the id:
    /// 0 for an anonymous namespace (a detached clone's).
    pub mnt_ns_id: u32,
    pub vfsmount_mnt_flags: u32,
    pub binprm_filename: u32,
    pub task_exit_code: u32,
    /// `task_struct.signal` and `signal_struct.live` (the threads of the
    /// process not yet exiting).
    pub task_signal: u32,
    pub signal_live: u32,
    pub socket_sk: u32,
    pub sock_peer_pid: u32,
    /// Offset of `numbers[0].nr` in `struct pid` (the pid in the initial
    /// namespace).
    pub pid_nr: u32,
    pub inode_i_generation: u32,
    pub file_f_flags: u32,
    pub io_kiocb_opcode: u32,
    /// `io_kiocb.flags` (`REQ_F_*`).
    pub io_kiocb_flags: u32,
    /// Where a request's per-opcode data (`struct io_open` for opens) is.
    pub io_kiocb_cmd: u32,
    pub io_kiocb_ctx: u32,
    pub io_open_file_slot: u32,
    pub io_open_dfd: u32,
    pub io_open_filename: u32,
    /// `io_open.how.flags` and `.mode` (the `struct open_how` passed).
    pub io_open_how_flags: u32,
    pub io_open_how_mode: u32,
    /// `struct filename.name`: the kernel's copy of a name passed.
    pub filename_name: u32,
    /// `io_ring_ctx.file_table.data.{nr,nodes}`: the fixed-file slots.
    pub ring_files_nr: u32,
    pub ring_files_nodes: u32,
    /// `io_rsrc_node.file_ptr`: the slot's `struct file *`, flag bits low.
    pub rsrc_node_file_ptr: u32,
    /// The written name of io_uring's name-changing requests: `io_unlink`,
    /// `io_mkdir` (dfd, filename), `io_rename`, `io_link` (new_dfd,
    /// newpath; `io_link` serves `SYMLINKAT` too).
    pub io_unlink_dfd: u32,
    pub io_unlink_filename: u32,
    pub io_mkdir_dfd: u32,
    pub io_mkdir_filename: u32,
    pub io_rename_new_dfd: u32,
    pub io_rename_newpath: u32,
    pub io_rename_old_dfd: u32,
    pub io_rename_oldpath: u32,
    pub io_link_new_dfd: u32,
    pub io_link_newpath: u32,
    /// `io_xattr.filename`: the name a `SETXATTR` request changes (0: not
    /// read).
    pub io_xattr_filename: u32,
    /// The file a request works on (`io_kiocb.file`): an `FSETXATTR`'s.
    pub io_kiocb_file: u32,
    /// `io_socket.domain`, followed by `type` and `protocol` (ints; the
    /// loader checks they follow): a `SOCKET` request's (0: not read).
    pub io_socket_domain: u32,
    /// A completed `IORING_OP_BIND`'s socket and the name the kernel gave
    /// it: `sock.__sk_common.skc_family`, `unix_sock.addr` and
    /// `unix_address.{len,name}` (`unix_sock_addr` 0: not read).
    pub sock_family: u32,
    pub unix_sock_addr: u32,
    pub unix_address_len: u32,
    pub unix_address_name: u32,
    /// `task_struct.cgroups` and `css_set.dfl_cgrp`: a new child's cgroup
    /// v2 (`escapes.rs`: a child created straight into another cgroup).
    pub task_cgroups: u32,
    pub css_set_dfl_cgrp: u32,
    /// `task_struct.comm`: read with two typed loads by the BTF
    /// tracepoint (`bpf_get_current_comm` is a call and a copy loop).
    pub task_comm: u32,
    /// `task_struct.pid` (the thread id), for the same typed loads.
    pub task_pid: u32,
    /// `dentry.d_shortname` (`d_iname` before 6.14): where a short name
    /// is kept inline, which the BTF tracepoint's walk copies with loads.
    pub dentry_inline_name: u32,
}

/// x86_64 `task_struct.thread_info.status` (`TS_COMPAT` while a 32-bit
/// syscall runs): a constant, as the BTF load that reads it must be;
/// userspace checks it against BTF before loading.
pub const TASK_THREAD_INFO_STATUS: u32 = 16;

/// x86_64 `struct pt_regs` offsets (the ptrace ABI; userspace checks them
/// against BTF before loading).
pub const PT_REGS_BX: u32 = 40;
pub const PT_REGS_R10: u32 = 56;
pub const PT_REGS_CX: u32 = 88;
pub const PT_REGS_DX: u32 = 96;
pub const PT_REGS_SI: u32 = 104;
pub const PT_REGS_DI: u32 = 112;
pub const PT_REGS_ORIG_AX: u32 = 120;

/// x86_64 syscall numbers the kernel side dispatches on.
pub const NR_OPEN: u64 = 2;
pub const NR_CONNECT: u64 = 42;
pub const NR_BIND: u64 = 49;
/// `socket(2)`: watched for packet sockets (`AF_PACKET`) only.
pub const NR_SOCKET: u64 = 41;
pub const NR_CREAT: u64 = 85;
pub const NR_OPENAT: u64 = 257;
pub const NR_OPENAT2: u64 = 437;
pub const NR_OPEN_BY_HANDLE_AT: u64 = 304;
/// The same number on every architecture (424 and up are shared).
pub const NR_PIDFD_GETFD: u64 = 438;
pub const NR_RENAME: u64 = 82;
pub const NR_LINK: u64 = 86;
pub const NR_SYMLINK: u64 = 88;
pub const NR_RENAMEAT: u64 = 264;
pub const NR_LINKAT: u64 = 265;
pub const NR_SYMLINKAT: u64 = 266;
pub const NR_RENAMEAT2: u64 = 316;
pub const NR_TRUNCATE: u64 = 76;
pub const NR_MKDIR: u64 = 83;
pub const NR_RMDIR: u64 = 84;
pub const NR_UNLINK: u64 = 87;
pub const NR_MKDIRAT: u64 = 258;
pub const NR_MKNOD: u64 = 133;
pub const NR_MKNODAT: u64 = 259;
pub const NR_UNLINKAT: u64 = 263;
pub const NR_IO_URING_SETUP: u64 = 425;
pub const NR_CHMOD: u64 = 90;
pub const NR_FCHMOD: u64 = 91;
pub const NR_CHOWN: u64 = 92;
pub const NR_FCHOWN: u64 = 93;
pub const NR_LCHOWN: u64 = 94;
pub const NR_UTIME: u64 = 132;
pub const NR_SETXATTR: u64 = 188;
pub const NR_LSETXATTR: u64 = 189;
pub const NR_FSETXATTR: u64 = 190;
pub const NR_REMOVEXATTR: u64 = 197;
pub const NR_LREMOVEXATTR: u64 = 198;
pub const NR_FREMOVEXATTR: u64 = 199;
pub const NR_UTIMES: u64 = 235;
pub const NR_FCHOWNAT: u64 = 260;
pub const NR_FUTIMESAT: u64 = 261;
pub const NR_FCHMODAT: u64 = 268;
pub const NR_UTIMENSAT: u64 = 280;
/// 6.6+ (`fchmodat` with flags); the same number on every architecture.
pub const NR_FCHMODAT2: u64 = 452;
/// 6.13+.
pub const NR_SETXATTRAT: u64 = 463;
pub const NR_REMOVEXATTRAT: u64 = 466;

/// Runtime settings written by userspace into a one-entry map before attach.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Settings {
    pub offsets: KernelOffsets,
    /// How many entries of the scope map are valid.
    pub scope_count: u32,
    /// The monitor's own tgid: never reported.
    pub monitor_tgid: u32,
    /// Submit without waking the reader until this many bytes are waiting.
    pub wakeup_threshold: u64,
    /// Process names (comm, NUL-padded) that start a lineage action when a
    /// monitored task execs them.
    pub launchers: [[u8; COMM_LEN]; MAX_LAUNCHERS],
    pub launcher_count: u32,
    /// How many worker runner paths are in `RUNNER_PATHS` (0: worker
    /// attribution off, and its lookups skipped).
    pub runner_count: u32,
    /// Non-zero: the socket-address hooks refuse destinations outside the
    /// allow list (`--enforce`).
    pub enforce: u32,
    pub _pad_enforce: u32,
    /// The identity of the monitor's own root directory (`s_dev` in the
    /// kernel's encoding, inode): a task whose root is another directory is
    /// in a chroot (`files::chroot_root`).
    pub host_root_ino: u64,
    pub host_root_dev: u32,
    pub _pad_root: u32,
    /// Raised by userspace with every change of what decides a task's
    /// action (these settings, the scopes, the runners): the syscall
    /// hook's remembered verdicts from before no longer hold
    /// (`monitor-ebpf/src/verdicts.rs`).
    pub filter_generation: u64,
}

/// How many sandbox launcher names the kernel matches.
pub const MAX_LAUNCHERS: usize = 4;
/// How many worker runner executables the kernel matches.
pub const MAX_RUNNERS: u32 = 8;
/// Bytes of a runner path key (NUL-padded; longer paths are refused).
pub const RUNNER_PATH_LEN: usize = 256;
/// How many processes lineage tracking can hold at once.
pub const MAX_LINEAGE: u32 = 65536;

/// Indexes of the per-CPU lost-event counters.
pub const LOST_RINGBUF_FULL: u32 = 0;
/// A process of a lineage action could not be tracked (map full).
pub const LOST_LINEAGE_FULL: u32 = 1;
pub const LOST_REASONS: u32 = 2;

/// The helper number the programs call `bpf_rdonly_cast` by: aya 0.14 cannot
/// emit a kfunc call, so the programs call this (unused) helper number and
/// the loader rewrites each such call into the kfunc call
/// (`monitor/src/kernel/kfuncs.rs`). No kernel has a helper this high.
pub const KFUNC_MARK_RDONLY_CAST: i32 = 0x4b46_0001;

/// The read-only globals holding the kernel BTF ids of the structs the
/// programs cast kernel addresses to (set by the loader), with those
/// structs' names.
pub const CAST_TYPES: [(&str, &str); 3] = [
    ("BTF_ID_STRUCT_TASK", "task_struct"),
    ("BTF_ID_STRUCT_FILE", "file"),
    ("BTF_ID_STRUCT_PATH", "path"),
];

/// The read-only global holding the kernel BTF id of a struct whose first
/// member is an 8-byte integer: a kernel address cast to it reads the word
/// there as a plain number (`monitor-ebpf/src/kfunc.rs`, `word_at`).
pub const BTF_ID_WORD_SLOT: &str = "BTF_ID_WORD_SLOT";

/// The offsets the programs take as load-time constants (frozen read-only
/// globals of these names, `monitor-ebpf/src/offsets.rs`), with their
/// values on the kernel `o` describes.
#[cfg(feature = "user")]
pub fn load_time_offsets(o: &KernelOffsets) -> [(&'static str, u32); 39] {
    [
        ("OFF_TASK_FILES", o.task_files),
        ("OFF_TASK_REAL_PARENT", o.task_real_parent),
        ("OFF_TASK_TGID", o.task_tgid),
        ("OFF_TASK_COMM", o.task_comm),
        ("OFF_TASK_PID", o.task_pid),
        ("OFF_TASK_CGROUPS", o.task_cgroups),
        ("OFF_CSS_SET_DFL_CGRP", o.css_set_dfl_cgrp),
        ("OFF_CGROUP_LEVEL", o.cgroup_level),
        ("OFF_CGROUP_ANCESTORS", o.cgroup_ancestors),
        ("OFF_CGROUP_KN", o.cgroup_kn),
        ("OFF_KERNFS_NODE_ID", o.kernfs_node_id),
        ("OFF_TASK_NSPROXY", o.task_nsproxy),
        ("OFF_NSPROXY_NET_NS", o.nsproxy_net_ns),
        ("OFF_NET_NS_INUM", o.net_ns_inum),
        ("OFF_FILES_FDT", o.files_fdt),
        ("OFF_FDTABLE_MAX_FDS", o.fdtable_max_fds),
        ("OFF_FDTABLE_FD", o.fdtable_fd),
        ("OFF_FILE_F_INODE", o.file_f_inode),
        ("OFF_FILE_F_MODE", o.file_f_mode),
        ("OFF_FILE_PATH", o.file_path),
        ("OFF_PATH_MNT", o.path_mnt),
        ("OFF_INODE_I_SB", o.inode_i_sb),
        ("OFF_INODE_I_INO", o.inode_i_ino),
        ("OFF_INODE_I_NLINK", o.inode_i_nlink),
        ("OFF_INODE_I_MODE", o.inode_i_mode),
        ("OFF_INODE_I_GENERATION", o.inode_i_generation),
        ("OFF_SB_S_DEV", o.sb_s_dev),
        ("OFF_SB_S_MAGIC", o.sb_s_magic),
        ("OFF_PATH_DENTRY", o.path_dentry),
        ("OFF_DENTRY_PARENT", o.dentry_parent),
        ("OFF_DENTRY_INODE", o.dentry_inode),
        ("OFF_DENTRY_NAME_NAME", o.dentry_name + o.qstr_name),
        ("OFF_DENTRY_INLINE_NAME", o.dentry_inline_name),
        ("OFF_MOUNT_PARENT", o.mount_parent),
        ("OFF_MOUNT_MOUNTPOINT", o.mount_mountpoint),
        ("OFF_MOUNT_MNT_NS", o.mount_mnt_ns),
        ("OFF_MNT_NS_ID", o.mnt_ns_id),
        ("OFF_VFSMOUNT_ROOT", o.vfsmount_root),
        ("OFF_VFSMOUNT_MNT_FLAGS", o.vfsmount_mnt_flags),
    ]
}

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: all are #[repr(C)] plain data with explicit padding fields.
    unsafe impl aya::Pod for Scope {}
    unsafe impl aya::Pod for KernelOffsets {}
    unsafe impl aya::Pod for Settings {}
    unsafe impl aya::Pod for ListenerKey {}
    unsafe impl aya::Pod for SeenKey {}
    unsafe impl aya::Pod for SeenEntry {}
    unsafe impl aya::Pod for SandboxDir {}
}

/// Bytes of a directory `ALLOWED_DIRS` can hold (with its trailing `/`):
/// a `files.allow` `dir/**` pattern with a longer `dir` is not written
/// there (its failed probes are reported and judged in userspace).
pub const ALLOWED_DIR_BYTES: usize = 64;
/// Directories `ALLOWED_DIRS` holds at most.
pub const MAX_ALLOWED_DIRS: u32 = 64;
