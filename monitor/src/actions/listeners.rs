//! Sockets that monitored actions bound before the socket hooks attached.
//!
//! The kernel learns an action's listeners when they are bound
//! (`post_bind4/6`, `probes/sock.rs`): a loopback connect to one of them is
//! the action's own traffic, never egress, never blocked. A node agent
//! started (or restarted) while actions run never saw their binds, so under
//! enforcement it would refuse, say, a Bazel client talking to its server.
//! At attach, every bound inet socket of every process below a scope is
//! read — through a copy of its descriptor taken with `pidfd_getfd`, which
//! gives the kernel's own cookies — and seeded into the same maps.
use std::{
    collections::BTreeMap,
    fs,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    path::Path,
};

use monitor_common::ListenerKey;

use crate::actions::{
    cgroup,
    registry::{Scope, ScopeKind},
};

/// One bound socket, as the kernel keys it: its `LISTENERS` key, and the
/// socket cookie its release is matched by.
pub type Bound = (ListenerKey, u64);

/// Every bound inet socket of the processes below `scopes`, keyed by the
/// action each process belongs to (the deepest scope wins, as in the
/// kernel filter). Processes that end meanwhile are skipped.
pub fn bound_before_attach(scopes: &[Scope]) -> Vec<Bound> {
    let mut action_of: BTreeMap<i32, (u32, u64)> = BTreeMap::new();
    for scope in scopes {
        let mut found = Vec::new();
        processes_below(&scope.path, None, &mut found);
        for (pid, child) in found {
            let action = match (&scope.kind, child) {
                (ScopeKind::Parent, Some(child)) => child,
                // In the parent itself: not inside any action.
                (ScopeKind::Parent, None) => continue,
                (ScopeKind::Job { .. }, _) => scope.id,
            };
            let entry = action_of.entry(pid).or_insert((scope.level, action));
            if scope.level >= entry.0 {
                *entry = (scope.level, action);
            }
        }
    }
    action_of
        .into_iter()
        .flat_map(|(pid, (_, action))| bound_sockets(pid, action))
        .collect()
}

/// The processes in `dir` and below, each with the id of the first-level
/// child cgroup of the walk's start it is in (`None`: in the start itself).
fn processes_below(dir: &Path, child: Option<u64>, out: &mut Vec<(i32, Option<u64>)>) {
    if let Ok(procs) = fs::read_to_string(dir.join("cgroup.procs")) {
        out.extend(
            procs
                .lines()
                .filter_map(|l| l.parse().ok())
                .map(|p| (p, child)),
        );
    }
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if !entry.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let Ok(id) = cgroup::id_of(&path) else {
            continue;
        };
        processes_below(&path, Some(child.unwrap_or(id)), out);
    }
}

/// The bound inet sockets among `pid`'s descriptors.
fn bound_sockets(pid: i32, action: u64) -> Vec<Bound> {
    let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Vec::new();
    };
    let Some(pidfd) = pidfd_open(pid) else {
        return Vec::new();
    };
    fds.flatten()
        .filter(|e| {
            fs::read_link(e.path()).is_ok_and(|t| t.to_string_lossy().starts_with("socket:"))
        })
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|fd| bound_socket(&pidfd, fd, action))
        .collect()
}

fn pidfd_open(pid: i32) -> Option<OwnedFd> {
    // SAFETY: plain syscall; a non-negative result is a new descriptor we own.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    // SAFETY: as above.
    (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// The socket behind the process's `fd`, if it is an inet socket bound to
/// a port.
fn bound_socket(pidfd: &OwnedFd, fd: i32, action: u64) -> Option<Bound> {
    // SAFETY: plain syscall; a non-negative result is a new descriptor we own.
    let copy = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), fd, 0) };
    if copy < 0 {
        return None;
    }
    // SAFETY: as above.
    let copy = unsafe { OwnedFd::from_raw_fd(copy as i32) };
    if !is_listening(&copy)? {
        return None;
    }
    let (addr, port) = local_address(&copy)?;
    Some((
        ListenerKey {
            netns_cookie: sockopt_u64(&copy, libc::SO_NETNS_COOKIE)?,
            action_cgroup_id: action,
            addr,
            port,
            protocol: sockopt_u64(&copy, libc::SO_PROTOCOL)? as u16,
            _pad: 0,
        },
        sockopt_u64(&copy, libc::SO_COOKIE)?,
    ))
}

/// A TCP socket in `listen`, or an unconnected datagram socket: what an
/// action's peers can reach (an outgoing connection's local port is not).
fn is_listening(sock: &OwnedFd) -> Option<bool> {
    match sockopt_u64(sock, libc::SO_TYPE)? as i32 {
        libc::SOCK_STREAM => Some(sockopt_u64(sock, libc::SO_ACCEPTCONN)? != 0),
        libc::SOCK_DGRAM => {
            // SAFETY: all-zero is a valid sockaddr_storage.
            let mut peer: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
            let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            // SAFETY: `peer` has room for `len` bytes.
            let r =
                unsafe { libc::getpeername(sock.as_raw_fd(), (&raw mut peer).cast(), &mut len) };
            Some(r != 0)
        }
        _ => Some(false),
    }
}

/// The local address (as the kernel keys it: IPv4 as `::ffff:a.b.c.d`)
/// and port of an inet socket (`None`: another family, or unbound).
fn local_address(sock: &OwnedFd) -> Option<([u8; 16], u16)> {
    // SAFETY: all-zero is a valid sockaddr_storage.
    let mut addr: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: `addr` has room for `len` bytes.
    let r = unsafe { libc::getsockname(sock.as_raw_fd(), (&raw mut addr).cast(), &mut len) };
    if r != 0 {
        return None;
    }
    let (ip, port) = match addr.ss_family as i32 {
        libc::AF_INET => {
            // SAFETY: the kernel wrote a sockaddr_in.
            let a = unsafe { *(&raw const addr).cast::<libc::sockaddr_in>() };
            let v4 = std::net::Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr));
            (v4.to_ipv6_mapped().octets(), a.sin_port)
        }
        libc::AF_INET6 => {
            // SAFETY: the kernel wrote a sockaddr_in6.
            let a = unsafe { *(&raw const addr).cast::<libc::sockaddr_in6>() };
            (a.sin6_addr.s6_addr, a.sin6_port)
        }
        _ => return None,
    };
    let port = u16::from_be(port);
    (port != 0).then_some((ip, port))
}

/// An integer socket option (`int` ones fill the low half; x86_64 is
/// little-endian).
fn sockopt_u64(sock: &OwnedFd, option: i32) -> Option<u64> {
    let mut value = 0u64;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: `value` has room for `len` bytes.
    let r = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            option,
            (&raw mut value).cast(),
            &mut len,
        )
    };
    (r == 0).then_some(value)
}
