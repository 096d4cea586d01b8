//! `connect` on inet and unix sockets, reported at exit with the result.
//! Other families (AF_UNSPEC disconnects, netlink …) are skipped. An inet
//! connect the socket-address hook already reported (`sock.rs`) is marked `FLAG_SEEN_BY_SOCK_HOOK`: this event then only
//! brings its result. Without the mark it is a connect the hook did not see
//! (a socket created outside the monitored cgroups).
use aya_ebpf::helpers::{bpf_probe_read_user, generated};
use monitor_common::{
    AF_INET, AF_INET6, AF_UNIX, ConnectEvent, EventKind, FLAG_SEEN_BY_SOCK_HOOK, Settings,
    UNIX_PATH_CAPACITY, UnixConnectEvent,
};

use crate::{
    emit::{fill_header, submit},
    maps::SCRATCH,
    probes::{sock::SEEN_CONNECT, syscalls::Syscall},
    task::{file_of_fd_read, netns_inum, parent_tgid, read},
};

pub fn on_exit(settings: &Settings, call: &Syscall) -> Option<()> {
    let ret = call.ret;
    let o = &settings.offsets;
    let fd = call.args[0] as i32;
    let uaddr = call.args[1];
    // The family alone first: a unix address may be as short as it (and
    // end where readable memory ends). Then one read for port and address:
    // sockaddr_in is { family, port, addr[4] }, sockaddr_in6 { family,
    // port, flowinfo, addr[16] }.
    // SAFETY: bpf_probe_read_user checks every address.
    let family = unsafe { bpf_probe_read_user(uaddr as *const u16) }.ok()?;
    let mut addr = [0u8; 16];
    let port = match family {
        AF_INET => {
            let head = unsafe { bpf_probe_read_user(uaddr as *const [u8; 8]) }.ok()?;
            addr[..4].copy_from_slice(&head[4..8]);
            u16::from_be_bytes([head[2], head[3]])
        }
        AF_INET6 => {
            let head = unsafe { bpf_probe_read_user(uaddr as *const [u8; 24]) }.ok()?;
            addr.copy_from_slice(&head[8..24]);
            u16::from_be_bytes([head[2], head[3]])
        }
        AF_UNIX => return on_unix_connect(settings, call, uaddr),
        _ => return None,
    };
    let socket: u64 = read(file_of_fd_read(fd), o.file_private_data);
    let sock_type: i16 = read(socket, o.socket_type);

    let ev = crate::emit::zeroed_in_scratch::<ConnectEvent>()?;
    fill_header(
        &mut ev.header,
        EventKind::Connect as u32,
        &call.m,
        parent_tgid(),
    );
    ev.fd = fd;
    ev.family = family;
    ev.sock_type = sock_type as u16;
    ev.port = port;
    ev.addr = addr;
    ev.result = ret;
    ev.netns = netns_inum();
    let pid_tgid = call.m.pid_tgid;
    // SAFETY: the value is copied out at once.
    if let Some(seen) = unsafe { SEEN_CONNECT.get(&pid_tgid) }.copied() {
        if seen.addr == addr && seen.port == port {
            ev.header.flags |= FLAG_SEEN_BY_SOCK_HOOK;
        }
        let _ = SEEN_CONNECT.remove(&pid_tgid);
    }
    submit(
        settings,
        (ev as *const ConnectEvent).cast(),
        core::mem::size_of::<ConnectEvent>(),
    );
    Some(())
}

/// A unix-socket connect: the socket path (or abstract name) and result.
/// Built in the per-CPU scratch buffer: the event does not fit the stack
/// beside the syscall dispatch.
fn on_unix_connect(settings: &Settings, call: &Syscall, uaddr: u64) -> Option<()> {
    let scratch = SCRATCH.get_ptr_mut(0)?;
    // SAFETY: per-CPU scratch, used by this program only while it runs; the
    // data area is 8-byte aligned and larger than the event.
    let ev = unsafe { &mut *((*scratch).data.as_mut_ptr() as *mut UnixConnectEvent) };
    fill_header(
        &mut ev.header,
        EventKind::UnixConnect as u32,
        &call.m,
        parent_tgid(),
    );
    ev.result = call.ret;
    let addrlen = call.args[2] as usize;
    ev.path_len = addrlen.saturating_sub(2).min(UNIX_PATH_CAPACITY) as u32;
    // The listener's tgid, from the peer credentials the connect copied
    // onto this socket: userspace tells the job's own listeners by it.
    let o = &settings.offsets;
    let socket: u64 = read(file_of_fd_read(call.args[0] as i32), o.file_private_data);
    let sk: u64 = read(socket, o.socket_sk);
    let peer: u64 = read(sk, o.sock_peer_pid);
    ev.peer_tgid = if call.ret == 0 {
        read(peer, o.pid_nr)
    } else {
        0
    };
    // Exactly the length the caller gave: a fixed-size read would fault on
    // an address placed at the end of readable memory and lose the path (a
    // hostile route, tested in egress.rs).
    // `path_len` is at most UNIX_PATH_CAPACITY (108) already; the mask is
    // the bound the verifier sees on the register the helper gets (a
    // compare is made on a copy).
    let len = ev.path_len & 0x7f;
    if len > 0 {
        // SAFETY: the helper checks the user address and writes `len`
        // (at most UNIX_PATH_CAPACITY) bytes into `path`, inside the
        // scratch map value; on failure it zeroes them.
        unsafe {
            generated::bpf_probe_read_user(
                ev.path.as_mut_ptr().cast(),
                len,
                (uaddr + 2) as *const _,
            )
        };
    }
    submit(
        settings,
        (ev as *const UnixConnectEvent).cast(),
        core::mem::size_of::<UnixConnectEvent>(),
    );
    Some(())
}
