//! `network.allow` compiled into the kernel's longest-prefix-match tries, so
//! that the socket hooks decide (and, with enforcement, refuse) in the
//! kernel, before anything leaves.
//!
//! Addresses are keyed as IPv6, IPv4 as `::ffff:a.b.c.d` (prefix + 96): one
//! lookup serves IPv4, IPv6 and IPv4-mapped destinations. Rules without a
//! port go in the "any port" trie; rules with one in the "port" trie, keyed
//! port first, so a prefix of 16 + n bits means "this port, these n bits".
//!
//! An IPv6 rule shorter than /96 (e.g. `::/0`) would cover the mapped IPv4
//! range, which the userspace matcher (and the config's meaning) keeps
//! apart: a value-0 entry for `::ffff:0:0/96` stops such a match, while
//! IPv4 rules (longer prefixes in that range) still win.
use std::net::IpAddr;

use crate::policy::matchers::NetRule;

pub type AnyEntry = (u32, [u8; 16], u8);
pub type PortEntry = (u32, [u8; 18], u8);

/// Entries for the two tries; later entries overwrite earlier ones.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct KernelRules {
    pub any_port: Vec<AnyEntry>,
    pub by_port: Vec<PortEntry>,
}

const MAPPED_PREFIX: ([u8; 16], u32) = ([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0, 0, 0, 0], 96);

/// The rule's block as a 16-byte key and its prefix length.
fn key_of(rule: &NetRule) -> ([u8; 16], u32) {
    match rule.cidr.addr() {
        IpAddr::V4(v4) => (
            v4.to_ipv6_mapped().octets(),
            96 + u32::from(rule.cidr.prefix()),
        ),
        IpAddr::V6(v6) => (v6.octets(), u32::from(rule.cidr.prefix())),
    }
}

fn port_key(port: u16, addr: &[u8; 16]) -> [u8; 18] {
    let mut k = [0u8; 18];
    k[..2].copy_from_slice(&port.to_be_bytes());
    k[2..].copy_from_slice(addr);
    k
}

/// The kernel's two tiers: job-wide (`network.allow`) and the Bazel
/// server's own (`scope = "@bazel"` rules), consulted after the first.
/// Target- and mnemonic-scoped rules have no kernel tier: the spawn's label
/// is not known when it connects.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct KernelTiers {
    pub job: KernelRules,
    pub bazel: KernelRules,
}

impl KernelTiers {
    /// Both tiers, as the loader writes them.
    pub fn entries(&self) -> crate::kernel::loader::AllowEntries<'_> {
        crate::kernel::loader::AllowEntries {
            any_port: &self.job.any_port,
            by_port: &self.job.by_port,
            server_any_port: &self.bazel.any_port,
            server_by_port: &self.bazel.by_port,
        }
    }
}

pub fn compile_tiers(network: &crate::config::Network) -> KernelTiers {
    let bazel: Vec<NetRule> = network
        .rule
        .iter()
        .filter(|r| r.scope.as_deref() == Some(crate::policy::scoped::BAZEL_SCOPE))
        .flat_map(|r| r.allow.iter().cloned())
        .collect();
    KernelTiers {
        job: compile(&network.allow),
        bazel: compile(&bazel),
    }
}

pub fn compile(rules: &[NetRule]) -> KernelRules {
    let mut out = KernelRules::default();
    let (mapped, mapped_len) = MAPPED_PREFIX;
    // Deny markers first, so that an IPv4 rule for the whole mapped range
    // (`0.0.0.0/0`) overwrites them.
    if rules
        .iter()
        .any(|r| r.port.is_none() && r.cidr.addr().is_ipv6() && r.cidr.prefix() < 96)
    {
        out.any_port.push((mapped_len, mapped, 0));
    }
    for r in rules {
        if let (Some(port), IpAddr::V6(_)) = (r.port, r.cidr.addr())
            && r.cidr.prefix() < 96
        {
            out.by_port
                .push((16 + mapped_len, port_key(port, &mapped), 0));
        }
    }
    for r in rules {
        let (addr, len) = key_of(r);
        match r.port {
            None => out.any_port.push((len, addr, 1)),
            Some(port) => out.by_port.push((16 + len, port_key(port, &addr), 1)),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(cidr: &str, port: Option<u16>) -> NetRule {
        NetRule {
            cidr: cidr.parse().unwrap(),
            port,
        }
    }

    /// The kernel's lookup, done the same way on the compiled entries.
    fn allows(k: &KernelRules, ip: IpAddr, port: u16) -> bool {
        let addr = match ip {
            IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
            IpAddr::V6(v6) => v6.octets(),
        };
        let bits = |a: &[u8], n: u32| -> Vec<bool> {
            (0..n as usize)
                .map(|i| a[i / 8] & (0x80 >> (i % 8)) != 0)
                .collect()
        };
        let longest = |entries: Vec<(u32, Vec<u8>, u8)>, key: Vec<u8>| {
            entries
                .into_iter()
                .filter(|(len, data, _)| bits(data, *len) == bits(&key, *len))
                .max_by_key(|(len, _, _)| *len)
                .is_some_and(|(_, _, v)| v != 0)
        };
        let last_wins = |v: Vec<(u32, Vec<u8>, u8)>| {
            let mut m = std::collections::HashMap::new();
            for (l, d, val) in v {
                m.insert((l, d), val);
            }
            m.into_iter()
                .map(|((l, d), v)| (l, d, v))
                .collect::<Vec<_>>()
        };
        let any = last_wins(
            k.any_port
                .iter()
                .map(|(l, d, v)| (*l, d.to_vec(), *v))
                .collect(),
        );
        let by_port = last_wins(
            k.by_port
                .iter()
                .map(|(l, d, v)| (*l, d.to_vec(), *v))
                .collect(),
        );
        longest(any, addr.to_vec()) || longest(by_port, port_key(port, &addr).to_vec())
    }

    #[test]
    fn compiled_tries_agree_with_the_matcher() {
        let rules = vec![
            rule("127.0.0.1/32", Some(8080)),
            rule("10.0.0.0/8", None),
            rule("2001:db8::/32", Some(443)),
            rule("::/0", Some(53)),
            rule("fd00::/8", None),
        ];
        let k = compile(&rules);
        let m = crate::policy::matchers::NetMatcher::new(rules);
        for (ip, port) in [
            ("127.0.0.1", 8080),
            ("127.0.0.1", 8081),
            ("127.0.0.2", 8080),
            ("10.9.9.9", 1),
            ("11.0.0.1", 1),
            ("::ffff:10.1.1.1", 22),
            ("::ffff:127.0.0.1", 8080),
            ("2001:db8::1", 443),
            ("2001:db8::1", 80),
            ("2001:db9::1", 443),
            ("::1", 53),
            ("1.2.3.4", 53),
            ("fd12::1", 9),
            ("::ffff:1.2.3.4", 53),
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(allows(&k, ip, port), m.allows(ip, port), "{ip} port {port}");
        }
    }

    #[test]
    fn an_ipv4_wildcard_beats_the_mapped_range_marker() {
        let rules = vec![rule("::/0", None), rule("0.0.0.0/0", None)];
        let k = compile(&rules);
        assert!(allows(&k, "1.2.3.4".parse().unwrap(), 9));
        assert!(allows(&k, "2001:db8::1".parse().unwrap(), 9));
        let k = compile(&[rule("::/0", None)]);
        assert!(!allows(&k, "1.2.3.4".parse().unwrap(), 9));
        assert!(compile(&[]).any_port.is_empty());
    }

    #[test]
    fn only_job_wide_and_bazel_rules_reach_the_kernel() {
        let config = crate::config::Config::parse(
            "[network]\nallow = [{ cidr = \"10.0.0.0/8\" }]\n\
             [[network.rule]]\nscope = \"@bazel\"\nallow = [{ cidr = \"127.0.0.1\", port = 443 }]\n\
             [[network.rule]]\ntargets = [\"//net:*\"]\nallow = [{ cidr = \"127.0.0.2\", port = 80 }]\n",
            std::path::Path::new("t.toml"),
        )
        .unwrap();
        let tiers = compile_tiers(&config.network);
        assert_eq!(tiers.job, compile(&[rule("10.0.0.0/8", None)]));
        assert_eq!(tiers.bazel, compile(&[rule("127.0.0.1/32", Some(443))]));
        let ip = |s: &str| s.parse().unwrap();
        assert!(allows(&tiers.bazel, ip("127.0.0.1"), 443));
        assert!(
            !allows(&tiers.bazel, ip("127.0.0.2"), 80),
            "target rules: no tier"
        );
        assert!(!allows(&tiers.job, ip("127.0.0.2"), 80));
    }
}
