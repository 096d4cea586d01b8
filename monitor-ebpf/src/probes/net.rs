//! `connect` on inet sockets, reported at exit with the result. Other
//! families (unix sockets, AF_UNSPEC disconnects) are not egress and are
//! skipped here.
use aya_ebpf::helpers::bpf_probe_read_user;
use monitor_common::{AF_INET, AF_INET6, ConnectEvent, EventKind, Settings};

use crate::{
    emit::{fill_header, submit},
    probes::syscalls::Syscall,
    task::{file_of_fd, netns_inum, read},
};

pub fn on_exit(settings: &Settings, call: &Syscall) -> Option<()> {
    let ret = call.ret;
    let o = &settings.offsets;
    let fd = call.args[0] as i32;
    let uaddr = call.args[1];
    // SAFETY: bpf_probe_read_user checks every address.
    let family = unsafe { bpf_probe_read_user(uaddr as *const u16) }.ok()?;
    let mut addr = [0u8; 16];
    match family {
        AF_INET => {
            let a: [u8; 4] = unsafe { bpf_probe_read_user((uaddr + 4) as *const [u8; 4]) }.ok()?;
            addr[..4].copy_from_slice(&a);
        }
        AF_INET6 => {
            addr = unsafe { bpf_probe_read_user((uaddr + 8) as *const [u8; 16]) }.ok()?;
        }
        _ => return None,
    }
    let port = u16::from_be(unsafe { bpf_probe_read_user((uaddr + 2) as *const u16) }.ok()?);
    let socket: u64 = read(file_of_fd(o, fd), o.file_private_data);
    let sock_type: i16 = read(socket, o.socket_type);

    // SAFETY: all-zero is a valid ConnectEvent.
    let mut ev: ConnectEvent = unsafe { core::mem::zeroed() };
    fill_header(&mut ev.header, EventKind::Connect as u32, &call.m, o);
    ev.fd = fd;
    ev.family = family;
    ev.sock_type = sock_type as u16;
    ev.port = port;
    ev.addr = addr;
    ev.result = ret;
    ev.netns = netns_inum(o);
    submit(
        settings,
        (&ev as *const ConnectEvent).cast(),
        core::mem::size_of::<ConnectEvent>(),
    );
    Some(())
}
