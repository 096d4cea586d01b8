//! DNS answers to the job: a `cgroup_skb/ingress` program on every
//! monitored scope copies the payload of UDP packets from port 53 (IPv4
//! and IPv6) delivered to the scope's sockets, so userspace can name the
//! addresses the job then connects to. It never drops a packet, and any
//! other packet leaves after the protocol and port checks.
//!
//! Not seen: DNS over TCP/53, DoT, DoH (encrypted or on another
//! transport), and names a cache (nscd, systemd-resolved) answers over a
//! unix socket. IPv6 packets with extension headers before UDP are skipped.
use aya_ebpf::{
    bindings::__sk_buff,
    helpers::generated::{bpf_skb_ancestor_cgroup_id, bpf_skb_load_bytes},
    macros::{cgroup_skb, map},
    maps::PerCpuArray,
    programs::SkBuffContext,
};
use monitor_common::{
    AF_INET, AF_INET6, DNS_CAPTURE, DnsEvent, EventKind, MAX_SCOPES, SCOPE_CHILDREN_ARE_ACTIONS,
    Settings,
};

use crate::{
    emit::{self, submit},
    maps::{SCOPES, SETTINGS},
};

/// Room to build one answer event (too large for the stack).
#[map]
static DNS_SCRATCH: PerCpuArray<DnsEvent> = PerCpuArray::with_max_entries(1, 0);

const ETH_P_IP: u32 = 0x0800;
const ETH_P_IPV6: u32 = 0x86DD;
const IPPROTO_UDP: u8 = 17;
const DNS_PORT: u16 = 53;
const UDP_HEADER: usize = 8;
const DNS_HEADER: usize = 12;

#[cgroup_skb(ingress)]
pub fn sock_skb_ingress(ctx: SkBuffContext) -> i32 {
    let _ = on_ingress(&ctx);
    // Never drop: this program only watches.
    1
}

/// Where the UDP header starts, when the packet is UDP (else `None`).
#[inline(always)]
fn udp_offset(ctx: &SkBuffContext) -> Option<(bool, usize)> {
    let ethertype = u16::from_be(ctx.skb.protocol() as u16) as u32;
    match ethertype {
        ETH_P_IP => {
            let protocol: u8 = ctx.load(9).ok()?;
            if protocol != IPPROTO_UDP {
                return None;
            }
            let first: u8 = ctx.load(0).ok()?;
            Some((false, ((first & 0x0f) as usize) * 4))
        }
        ETH_P_IPV6 => {
            let next: u8 = ctx.load(6).ok()?;
            (next == IPPROTO_UDP).then_some((true, 40))
        }
        _ => None,
    }
}

#[inline(always)]
fn on_ingress(ctx: &SkBuffContext) -> Option<()> {
    let (v6, l4) = udp_offset(ctx)?;
    let source_port: u16 = u16::from_be(ctx.load(l4).ok()?);
    if source_port != DNS_PORT {
        return None;
    }
    let settings = SETTINGS.get(0)?;
    let ev = DNS_SCRATCH.get_ptr_mut(0)?;
    // SAFETY: the per-CPU slot is ours while the program runs.
    let ev = unsafe { &mut *ev };
    skb_action(ctx, settings, ev)?;
    let payload = l4 + UDP_HEADER;
    let wire_len = (ctx.len() as usize).saturating_sub(payload);
    ev.wire_len = wire_len as u32;
    ev.family = if v6 { AF_INET6 } else { AF_INET };
    ev.server = [0; 16];
    if v6 {
        ev.server = ctx.load::<[u8; 16]>(8).ok()?;
    } else {
        let ip: [u8; 4] = ctx.load(12).ok()?;
        ev.server[..4].copy_from_slice(&ip);
    }
    ev.captured = copy_payload(ctx, payload, wire_len, ev);
    submit(
        settings,
        (ev as *const DnsEvent).cast(),
        core::mem::size_of::<DnsEvent>(),
    );
    Some(())
}

/// Copies up to `DNS_CAPTURE` bytes of the payload; how many. A payload
/// shorter than a DNS header is not copied (userspace counts it
/// malformed). The bounds are checked on the very length passed, as the
/// verifier wants it (1..=capacity).
#[inline(always)]
fn copy_payload(ctx: &SkBuffContext, payload: usize, wire_len: usize, ev: &mut DnsEvent) -> u32 {
    let len = wire_len.min(DNS_CAPTURE);
    if len < DNS_HEADER {
        return 0;
    }
    // SAFETY: `len` bytes fit in `data`; the helper checks the packet.
    let read = unsafe {
        bpf_skb_load_bytes(
            ctx.skb.skb.cast(),
            payload as u32,
            ev.data.as_mut_ptr().cast(),
            len as u32,
        )
    };
    if read == 0 { len as u32 } else { 0 }
}

/// The action of the socket the packet is delivered to, from its cgroup
/// (the task running now is whoever sent it, or none): the deepest scope
/// the socket's cgroup is under, as `filter::current_action` does for
/// tasks. Fills the event's header.
#[inline(always)]
fn skb_action(ctx: &SkBuffContext, settings: &Settings, ev: &mut DnsEvent) -> Option<()> {
    let skb = ctx.skb.skb as *mut __sk_buff;
    let ancestor = |level: u32| -> u64 {
        // SAFETY: plain helper call on the program's own context.
        unsafe { bpf_skb_ancestor_cgroup_id(skb, level as i32) }
    };
    let mut found = false;
    let (mut action, mut best_level, mut best_scope) = (0u64, 0u32, 0u32);
    for i in 0..MAX_SCOPES {
        if i >= settings.scope_count {
            break;
        }
        let Some(scope) = SCOPES.get(i) else { break };
        let id = ancestor(scope.level);
        if id == 0 || id != scope.cgroup_id || found && scope.level < best_level {
            continue;
        }
        let this = if scope.flags & SCOPE_CHILDREN_ARE_ACTIONS != 0 {
            ancestor(scope.level + 1)
        } else {
            id
        };
        if this == 0 {
            continue;
        }
        (found, action, best_level, best_scope) = (true, this, scope.level, i);
    }
    if !found {
        return None;
    }
    let h = &mut ev.header;
    h.kind = EventKind::DnsAnswer as u32;
    h.flags = 0;
    h.ktime_ns = emit::clock();
    h.action_cgroup_id = action;
    h.child_cgroup_id = ancestor(best_level + 1);
    h.grandchild_cgroup_id = ancestor(best_level + 2);
    (h.pid, h.tid, h.ppid, h.launcher) = (0, 0, 0, 0);
    h.scope = best_scope;
    h.comm = [0; monitor_common::COMM_LEN];
    Some(())
}
