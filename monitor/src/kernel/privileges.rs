//! Which capabilities the monitor needs, checked before anything is
//! loaded, so that a missing one is named (exit 3) instead of surfacing as
//! an `EPERM` from some map or program later. Root is not required: a
//! user with these capabilities (and the cgroup parents delegated to it)
//! runs the agent (README, deploy/monitor.service).
//!
//! Measured on kernel 6.18 (as a non-root user, dropping one capability at
//! a time): loading and attaching the programs needs CAP_BPF (maps) and
//! CAP_PERFMON (tracing programs); CAP_SYS_ADMIN is not needed (it implies
//! both, and is required instead on kernels older than 5.8, which lack
//! them); CAP_SYS_RESOURCE is not needed (kernels since 5.11 charge BPF
//! memory to the cgroup instead of RLIMIT_MEMLOCK).
use anyhow::bail;

pub const CAP_DAC_READ_SEARCH: u32 = 2;
pub const CAP_NET_ADMIN: u32 = 12;
pub const CAP_SYS_PTRACE: u32 = 19;
pub const CAP_SYS_ADMIN: u32 = 21;
pub const CAP_PERFMON: u32 = 38;
pub const CAP_BPF: u32 = 39;

/// A capability the monitor needs, and what for (said when it is missing).
#[derive(Debug, PartialEq, Eq)]
pub struct Needed {
    pub cap: u32,
    pub name: &'static str,
    pub why: &'static str,
}

pub const NEEDED: [Needed; 5] = [
    Needed {
        cap: CAP_BPF,
        name: "CAP_BPF",
        why: "creating the eBPF maps and loading the programs",
    },
    Needed {
        cap: CAP_PERFMON,
        name: "CAP_PERFMON",
        why: "loading tracing programs that read kernel memory",
    },
    Needed {
        cap: CAP_NET_ADMIN,
        name: "CAP_NET_ADMIN",
        why: "loading the cgroup socket hooks",
    },
    Needed {
        cap: CAP_DAC_READ_SEARCH,
        name: "CAP_DAC_READ_SEARCH",
        why: "reading Bazel sandbox trees owned by other users",
    },
    Needed {
        cap: CAP_SYS_PTRACE,
        name: "CAP_SYS_PTRACE",
        why: "reading other users' /proc/<pid>/cwd and exe",
    },
];

const SYS_ADMIN: Needed = Needed {
    cap: CAP_SYS_ADMIN,
    name: "CAP_SYS_ADMIN",
    why: "loading eBPF programs on a kernel without CAP_BPF and CAP_PERFMON (before 5.8)",
};

fn has(effective: u64, cap: u32) -> bool {
    effective & (1u64 << cap) != 0
}

/// The capabilities missing from `effective` (a `CapEff` bit set), on a
/// kernel whose highest capability is `last_cap`. CAP_SYS_ADMIN stands in
/// for CAP_BPF and CAP_PERFMON, as in the kernel.
pub fn missing(effective: u64, last_cap: u32) -> Vec<&'static Needed> {
    let old_kernel = last_cap < CAP_BPF;
    let mut out = Vec::new();
    if old_kernel && !has(effective, CAP_SYS_ADMIN) {
        out.push(&SYS_ADMIN);
    }
    for needed in &NEEDED {
        let bpf_family = needed.cap == CAP_BPF || needed.cap == CAP_PERFMON;
        if bpf_family && (old_kernel || has(effective, CAP_SYS_ADMIN)) {
            continue;
        }
        if !has(effective, needed.cap) {
            out.push(needed);
        }
    }
    out
}

/// `CapEff` of this process, from `/proc/self/status`.
fn effective_caps() -> anyhow::Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let hex = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .map(str::trim)
        .ok_or_else(|| anyhow::anyhow!("no CapEff in /proc/self/status"))?;
    Ok(u64::from_str_radix(hex, 16)?)
}

fn last_cap() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(CAP_BPF)
}

/// Fails naming the first missing capability (and every other one).
pub fn check() -> anyhow::Result<()> {
    let effective = effective_caps()?;
    let missing = missing(effective, last_cap());
    let Some(first) = missing.first() else {
        return Ok(());
    };
    let all: Vec<&str> = missing.iter().map(|n| n.name).collect();
    bail!(
        "missing capability {} (needed for {}); missing: {}. Run as root or grant them \
         (systemd: AmbientCapabilities=; Kubernetes: securityContext.capabilities.add)",
        first.name,
        first.why,
        all.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(caps: &[u32]) -> u64 {
        caps.iter().fold(0, |acc, c| acc | 1 << c)
    }

    const ALL: [u32; 5] = [
        CAP_BPF,
        CAP_PERFMON,
        CAP_NET_ADMIN,
        CAP_DAC_READ_SEARCH,
        CAP_SYS_PTRACE,
    ];

    #[test]
    fn the_listed_set_is_enough_and_each_one_is_named_when_missing() {
        assert!(missing(set(&ALL), 40).is_empty());
        assert!(missing(u64::MAX, 40).is_empty(), "root");
        for cap in ALL {
            let without: Vec<u32> = ALL.iter().copied().filter(|c| *c != cap).collect();
            let names: Vec<u32> = missing(set(&without), 40).iter().map(|n| n.cap).collect();
            assert_eq!(names, vec![cap]);
        }
    }

    #[test]
    fn sys_admin_stands_in_for_bpf_and_perfmon_and_is_needed_on_old_kernels() {
        let admin = set(&[
            CAP_SYS_ADMIN,
            CAP_NET_ADMIN,
            CAP_DAC_READ_SEARCH,
            CAP_SYS_PTRACE,
        ]);
        assert!(missing(admin, 40).is_empty());
        let without_admin = set(&[CAP_NET_ADMIN, CAP_DAC_READ_SEARCH, CAP_SYS_PTRACE]);
        let names: Vec<&str> = missing(without_admin, 37).iter().map(|n| n.name).collect();
        assert_eq!(names, vec!["CAP_SYS_ADMIN"]);
    }
}
