//! Writes the decoder's seed corpus (fuzz/corpus/decode/): one valid record
//! of each kind, built from monitor-common's layouts so that the seeds follow
//! them when they change. Run from fuzz/: `cargo run -p decode-seeds`.

use std::{fs, path::Path};

use monitor_common::{
    AF_INET, CgroupEvent, ConnectEvent, EventHeader, EventKind, ExitEvent, FLAG_DIR_UNRESOLVED,
    FileEvent, SYSCALL_OPENAT,
};

/// The bytes of a plain-data `#[repr(C)]` value.
fn bytes_of<T: Copy>(value: &T) -> Vec<u8> {
    // SAFETY: T is plain data; every byte of it is initialised (zeroed first).
    unsafe { std::slice::from_raw_parts((value as *const T).cast::<u8>(), size_of::<T>()) }.to_vec()
}

fn zeroed<T: Copy>() -> T {
    // SAFETY: only used for monitor-common's plain-data event structs.
    unsafe { std::mem::zeroed() }
}

fn header(kind: EventKind, flags: u32) -> EventHeader {
    let mut header: EventHeader = zeroed();
    header.kind = kind as u32;
    header.flags = flags;
    header.ktime_ns = 1_000_000_000;
    header.action_cgroup_id = 7;
    header.pid = 42;
    header.tid = 42;
    header.ppid = 1;
    header.comm[..3].copy_from_slice(b"cat");
    header
}

/// A file-layout record: fixed part, then the path, then the directory
/// components (leaf first, NUL-terminated).
fn path_record(kind: EventKind, flags: u32, path: &[u8], dir: &[u8]) -> Vec<u8> {
    let mut event: FileEvent = zeroed();
    event.header = header(kind, flags);
    event.syscall = SYSCALL_OPENAT;
    event.dirfd = -100;
    event.result = 3;
    event.path_len = path.len() as u32;
    event.dir_len = dir.len() as u32;
    let mut out = bytes_of(&event);
    out.extend_from_slice(path);
    out.extend_from_slice(dir);
    out
}

fn main() -> std::io::Result<()> {
    let dir = Path::new("corpus/decode");
    fs::create_dir_all(dir)?;
    let mut connect: ConnectEvent = zeroed();
    connect.header = header(EventKind::Connect, 0);
    connect.family = AF_INET;
    connect.sock_type = 1;
    connect.port = 8080;
    connect.addr[..4].copy_from_slice(&[127, 0, 0, 1]);
    connect.result = -111;
    let mut cgroup: CgroupEvent = zeroed();
    cgroup.header = header(EventKind::CgroupMkdir, 0);
    cgroup.cgroup_id = 99;
    cgroup.level = 3;
    cgroup.path_len = 9;
    let mut cgroup = bytes_of(&cgroup);
    cgroup.extend_from_slice(b"/build/a7");
    let exit = ExitEvent {
        header: header(EventKind::Exit, 0),
    };
    let seeds: [(&str, Vec<u8>); 7] = [
        (
            "file-absolute",
            path_record(EventKind::FileOpen, 0, b"/etc//passwd", b""),
        ),
        (
            "file-relative",
            path_record(EventKind::FileOpen, 0, b"../x/./y", b"work\0home\0"),
        ),
        (
            "file-unresolved",
            path_record(EventKind::FileOpen, FLAG_DIR_UNRESOLVED, b"rel", b""),
        ),
        (
            "exec",
            path_record(EventKind::Exec, 0, b"", b"cat\0bin\0usr\0"),
        ),
        (
            "launch",
            path_record(
                EventKind::Launch,
                0,
                b"linux-sandbox\0-W\0/sb\0--\0/bin/true\0",
                b"sb\0",
            ),
        ),
        ("connect", bytes_of(&connect)),
        ("cgroup-mkdir", cgroup),
    ];
    for (name, bytes) in seeds.iter().chain([("exit", bytes_of(&exit))].iter()) {
        fs::write(dir.join(name), bytes)?;
    }
    Ok(())
}
