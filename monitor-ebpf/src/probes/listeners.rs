//! The listeners of monitored actions: loopback traffic to a socket the
//! same action bound is its own (the Bazel client and its server), never
//! egress, never blocked.
//!
//! A listener is keyed by what it really accepts: network namespace,
//! action, protocol, local address (or the wildcard of its family) and
//! port. A key of the port alone let an action bind any free address or
//! the other protocol on a host service's port (UDP `127.0.0.2:5432`) and
//! then reach the service (TCP `127.0.0.1:5432`) as "its own".
//!
//! One exception keeps glibc quiet: `getaddrinfo` sorts its answers by
//! connecting a UDP socket to each (RFC 3484; nothing is sent), so a UDP
//! connect to the action's own TCP listener passes too, and its socket is
//! remembered as a probe: a datagram it ever sends is judged by the
//! `cgroup_skb/egress` backstop like any packet (`sock.rs`).
use aya_ebpf::{
    bindings::bpf_sock,
    helpers::{
        bpf_get_current_pid_tgid,
        generated::{bpf_get_netns_cookie, bpf_get_socket_cookie},
    },
    macros::{cgroup_sock, map},
    maps::{Array, LruHashMap},
    programs::SockContext,
};
use monitor_common::{ListenerKey, MAX_LISTENERS};

use crate::{filter, maps::SETTINGS};

/// Sockets monitored actions have bound (their listeners).
#[map]
static LISTENERS: LruHashMap<ListenerKey, u8> = LruHashMap::with_max_entries(MAX_LISTENERS, 0);

/// Socket cookie → its `LISTENERS` key, to forget it when released.
#[map]
static BOUND: LruHashMap<u64, ListenerKey> = LruHashMap::with_max_entries(MAX_LISTENERS, 0);

/// Cookies of UDP sockets let through as `getaddrinfo` probes.
#[map]
static PROBES: LruHashMap<u64, u8> = LruHashMap::with_max_entries(MAX_LISTENERS, 0);

/// Latches, set once: has any socket been put in `BOUND` (0) or `PROBES`
/// (1)? Until then the release of every socket in the monitored cgroups
/// skips the cookie and both lookups (326-337 -> 63 ns per connect+close,
/// bpf_stats).
#[map]
static IN_USE: Array<u64> = Array::with_max_entries(2, 0);
const BOUND_IN_USE: u32 = 0;
const PROBES_IN_USE: u32 = 1;

#[inline(always)]
fn in_use(which: u32) -> bool {
    IN_USE.get(which).is_some_and(|used| *used != 0)
}

/// Sets a latch before the map it guards gets its entry.
#[inline(always)]
fn mark_in_use(which: u32) {
    if let Some(used) = IN_USE.get_ptr_mut(which) {
        // SAFETY: an aligned map value; every writer stores the same 1.
        unsafe { core::ptr::write_volatile(used, 1) };
    }
}

pub const IPPROTO_TCP: u16 = 6;
pub const IPPROTO_UDP: u16 = 17;
const ALLOW: i32 = 1;

/// `0.0.0.0` as the tries and keys write IPv4: `::ffff:0.0.0.0`.
const V4_ANY: [u8; 16] = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0, 0, 0, 0];

#[cgroup_sock(post_bind4)]
pub fn sock_post_bind4(ctx: SockContext) -> i32 {
    on_bind(&ctx, false);
    ALLOW
}

#[cgroup_sock(post_bind6)]
pub fn sock_post_bind6(ctx: SockContext) -> i32 {
    on_bind(&ctx, true);
    ALLOW
}

#[cgroup_sock(sock_release)]
pub fn sock_release(ctx: SockContext) -> i32 {
    let (bound, probes) = (in_use(BOUND_IN_USE), in_use(PROBES_IN_USE));
    if !bound && !probes {
        return ALLOW;
    }
    // SAFETY: plain helper call on the program's own context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.sock.cast()) };
    // SAFETY: the value is copied out at once.
    if let Some(key) = bound
        .then(|| unsafe { BOUND.get(&cookie) }.copied())
        .flatten()
    {
        let _ = LISTENERS.remove(&key);
        let _ = BOUND.remove(&cookie);
    }
    if probes {
        let _ = PROBES.remove(&cookie);
    }
    ALLOW
}

/// A socket of a monitored action was bound: remember it as one of the
/// action's listeners. `v6` is constant per program (the verifier refuses
/// a `post_bind4` program that reads `src_ip6`).
#[inline(always)]
fn on_bind(ctx: &SockContext, v6: bool) -> Option<()> {
    let settings = SETTINGS.get(0)?;
    let m = filter::current_action(settings, bpf_get_current_pid_tgid())?;
    let sk = ctx.sock as *const bpf_sock;
    let mut addr = V4_ANY;
    // SAFETY: field addresses inside the context.
    let (port, protocol) = unsafe {
        if v6 {
            for (i, w) in (*sk).src_ip6.iter().enumerate() {
                addr[i * 4..i * 4 + 4].copy_from_slice(&ctx_u32(w).to_ne_bytes());
            }
        } else {
            addr[12..16].copy_from_slice(&ctx_u32(&(*sk).src_ip4).to_ne_bytes());
        }
        (ctx_u32(&(*sk).src_port), ctx_u32(&(*sk).protocol))
    };
    let key = ListenerKey {
        // SAFETY: plain helper call on the program's own context.
        netns_cookie: unsafe { bpf_get_netns_cookie(ctx.sock.cast()) },
        action_cgroup_id: m.action_cgroup_id,
        addr,
        port: port as u16,
        protocol: protocol as u16,
        _pad: 0,
    };
    // SAFETY: plain helper call on the program's own context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.sock.cast()) };
    mark_in_use(BOUND_IN_USE);
    let _ = LISTENERS.insert(&key, &1, 0);
    let _ = BOUND.insert(&cookie, &key, 0);
    Some(())
}

/// Does the action listen on `dest:port` (`dest` as the tries write it)
/// for `protocol`: bound to that address, to its family's wildcard, or to
/// the IPv6 wildcard (which takes IPv4 too, unless `IPV6_V6ONLY`)?
#[inline(always)]
pub fn is_own(netns_cookie: u64, action: u64, dest: &[u8; 16], port: u16, protocol: u16) -> bool {
    let mut key = ListenerKey {
        netns_cookie,
        action_cgroup_id: action,
        addr: *dest,
        port,
        protocol,
        _pad: 0,
    };
    // SAFETY (all three): only presence is checked.
    if unsafe { LISTENERS.get(&key) }.is_some() {
        return true;
    }
    if is_v4_mapped(dest) {
        key.addr = V4_ANY;
        if unsafe { LISTENERS.get(&key) }.is_some() {
            return true;
        }
    }
    // Volatile: a plain zeroing is a call of the byte-wise `memset`.
    crate::zero_fields!(key.addr);
    unsafe { LISTENERS.get(&key) }.is_some()
}

/// `::ffff:a.b.c.d`? Byte by byte: a slice comparison is a call of the
/// BPF target's byte-wise `memcmp`.
#[inline(always)]
pub fn is_v4_mapped(a: &[u8; 16]) -> bool {
    let zero10 = a[0] | a[1] | a[2] | a[3] | a[4] | a[5] | a[6] | a[7] | a[8] | a[9] == 0;
    zero10 && a[10] == 0xff && a[11] == 0xff
}

/// Remembers a UDP socket let through as a `getaddrinfo` probe.
#[inline(always)]
pub fn note_probe(cookie: u64) {
    mark_in_use(PROBES_IN_USE);
    let _ = PROBES.insert(&cookie, &1, 0);
}

/// Was this socket let through as a probe?
#[inline(always)]
pub fn is_probe(cookie: u64) -> bool {
    // SAFETY: only presence is checked.
    unsafe { PROBES.get(&cookie) }.is_some()
}

/// Reads a context field with one load of its own size.
#[inline(always)]
fn ctx_u32(p: *const u32) -> u32 {
    // SAFETY: `p` points into the program's context.
    unsafe { core::ptr::read_volatile(p) }
}
