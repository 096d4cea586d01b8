//! Packet sockets (`AF_PACKET`, and the old `AF_INET`/`SOCK_PACKET`, which
//! the kernel turns into one) send raw frames below the IP stack: neither
//! the socket-address hooks nor the `cgroup_skb/egress` backstop ever see
//! their traffic. They are caught when they are made, at the exit of a
//! monitored task's `socket(2)`. No hook can refuse the call there (the BPF
//! LSM's `socket_create` needs BPF trampolines, which kernels like this
//! project's CI refuse), so under enforcement the process is killed
//! (`SIGKILL`, delivered before the call returns to it): it never gets to
//! send from the socket. Sockets made through io_uring
//! (`IORING_OP_SOCKET`) are judged at the request's completion the same
//! way (`uring.rs`); there the kill comes after the socket exists, and a
//! request linked to it in the same submission may run first.
use aya_ebpf::helpers::generated::bpf_send_signal;
use monitor_common::{
    AF_INET, AF_PACKET, EventKind, SOCK_BLOCKED, SOCK_OP_PACKET_SOCKET, Settings, SockEvent,
};

use crate::{
    emit::{fill_header, submit},
    filter::Match,
    probes::syscalls::Syscall,
    task::{netns_inum, parent_tgid},
};

/// `SOCK_PACKET`, the type `AF_INET` packet sockets were once made with.
const SOCK_PACKET: u64 = 10;
/// The socket type without `SOCK_NONBLOCK`/`SOCK_CLOEXEC`.
const SOCK_TYPE_MASK: u64 = 0xf;
const SIGKILL: u32 = 9;

/// `socket(family, type, protocol)` returned `call.ret`.
pub fn on_exit(settings: &Settings, call: &Syscall) -> Option<()> {
    if call.ret < 0 {
        return None;
    }
    let (family, sock_type, protocol) = (call.args[0], call.args[1], call.args[2]);
    on_made(settings, &call.m, family, sock_type, protocol)
}

/// A socket of `family`, `sock_type` and `protocol` was made by the
/// current task (matched as `m`): a packet socket is reported, and under
/// enforcement its process killed.
#[inline(always)]
pub fn on_made(
    settings: &Settings,
    m: &Match,
    family: u64,
    sock_type: u64,
    protocol: u64,
) -> Option<()> {
    let packet = family == AF_PACKET as u64
        || family == AF_INET as u64 && sock_type & SOCK_TYPE_MASK == SOCK_PACKET;
    if !packet {
        return None;
    }
    let verdict = if settings.enforce != 0 {
        // SAFETY: plain helper call; the signal goes to the current process.
        unsafe { bpf_send_signal(SIGKILL) };
        SOCK_BLOCKED
    } else {
        0
    };
    let ev = crate::emit::zeroed_in_scratch::<SockEvent>()?;
    fill_header(&mut ev.header, EventKind::SockAddr as u32, m, parent_tgid());
    ev.op = SOCK_OP_PACKET_SOCKET;
    ev.family = AF_PACKET;
    ev.sock_type = (sock_type & SOCK_TYPE_MASK) as u16;
    // The Ethernet protocol asked for, passed in network byte order.
    ev.protocol = u16::from_be(protocol as u16);
    ev.verdict = verdict;
    ev.netns = netns_inum();
    submit(
        settings,
        (ev as *const SockEvent).cast(),
        core::mem::size_of::<SockEvent>(),
    );
    Some(())
}
