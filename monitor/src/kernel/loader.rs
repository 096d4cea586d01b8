//! Loading the kernel programs: offsets from BTF, settings and scopes into
//! their maps, attach order, and access to the ring buffer and the lost
//! counters. Errors here are "the kernel side could not be loaded" (exit 3).
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use aya::{
    Ebpf, EbpfLoader,
    maps::{
        Array, HashMap, MapData, PerCpuArray, RingBuf,
        lpm_trie::{Key, LpmTrie},
    },
    programs::{
        BtfTracePoint, CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, CgroupSock,
        CgroupSockAddr, RawTracePoint,
    },
};
use monitor_common::{
    ACTION_KEY_ANY_BYTES, ACTION_KEY_PORT_BYTES, BTF_ID_WORD_SLOT, COMM_LEN, KernelOffsets,
    LOST_REASONS, ListenerKey, MAX_LAUNCHERS, MAX_RUNNERS, MAX_SCOPES, PT_REGS_BX, PT_REGS_CX,
    PT_REGS_DI, PT_REGS_DX, PT_REGS_ORIG_AX, PT_REGS_R10, PT_REGS_SI, RUNNER_PATH_LEN, Scope,
    Settings, TASK_THREAD_INFO_STATUS,
};

use crate::kernel::{
    btf::Btf,
    kfuncs::{self, Kfuncs},
    parallel_load,
};

/// Process tracking programs and their raw tracepoints, attached before the
/// syscall hook so that no exec of a monitored process is missed once file
/// events flow.
/// The cgroup programs come first of all: a cgroup created below a scope is
/// known (id and path) before any process in it can run. Last, io_uring
/// opens: their names at submission, then their completions.
const PROCESS_PROGRAMS: [(&str, &str); 8] = [
    ("cgroup_mkdir", "cgroup_mkdir"),
    ("cgroup_rmdir", "cgroup_rmdir"),
    ("cgroup_attach", "cgroup_attach_task"),
    ("proc_fork", "sched_process_fork"),
    ("proc_exec", "sched_process_exec"),
    ("proc_exit", "sched_process_exit"),
    ("uring_submit", "io_uring_submit_req"),
    ("uring_complete", "io_uring_complete"),
];

/// Socket-address hooks (every egress route; enforcement) attached to each
/// monitored cgroup scope.
const SOCK_ADDR_PROGRAMS: [&str; 4] = [
    "sock_connect4",
    "sock_connect6",
    "sock_sendmsg4",
    "sock_sendmsg6",
];
/// Socket hooks that track the listeners of monitored actions.
const SOCK_PROGRAMS: [&str; 3] = ["sock_post_bind4", "sock_post_bind6", "sock_release"];

/// The compiled allow list (see `policy::kernel_rules`): (prefix length,
/// key, 1 = allowed / 0 = not) for the any-port and the per-port trie.
pub struct AllowEntries<'a> {
    pub any_port: &'a [(u32, [u8; 16], u8)],
    pub by_port: &'a [(u32, [u8; 18], u8)],
    /// The `@bazel` tier (`scope = "@bazel"` rules), for a Bazel job's own
    /// processes only.
    pub server_any_port: &'a [(u32, [u8; 16], u8)],
    pub server_by_port: &'a [(u32, [u8; 18], u8)],
}

/// A key of an allow trie: (prefix length, data).
type TrieKey<const N: usize> = (u32, [u8; N]);

/// One action's keys in the action tier.
type ActionKeys = (
    Vec<TrieKey<ACTION_KEY_ANY_BYTES>>,
    Vec<TrieKey<ACTION_KEY_PORT_BYTES>>,
);

/// Which program carries the syscall hook.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyscallHook {
    /// `tp_btf/sys_exit`: registers read with plain loads.
    Btf,
    /// `raw_tp/sys_exit`: registers read with probe reads (fallback).
    Raw,
}

impl SyscallHook {
    /// The `hook` label of `build_info`.
    pub fn as_label(self) -> &'static str {
        match self {
            SyscallHook::Btf => "tp_btf",
            SyscallHook::Raw => "raw_tp",
        }
    }
}

/// `MONITOR_SYSCALL_HOOK=raw|btf` forces one hook (troubleshooting and
/// tests); by default the BTF tracepoint is tried first.
const HOOK_ENV: &str = "MONITOR_SYSCALL_HOOK";

/// `MONITOR_RING_BYTES=N` (hidden; tests and troubleshooting) sizes the
/// events ring buffer (a power of two, at least the page size) instead of
/// `RING_BYTES`: a tiny ring forces losses, to check they are reported.
const RING_ENV: &str = "MONITOR_RING_BYTES";

/// The ring size to use: `RING_BYTES` unless overridden by `RING_ENV`.
fn ring_bytes() -> anyhow::Result<u32> {
    let Ok(text) = std::env::var(RING_ENV) else {
        return Ok(monitor_common::RING_BYTES);
    };
    let page = page_size();
    match text.parse::<u32>() {
        Ok(n) if n.is_power_of_two() && n >= page => Ok(n),
        _ => bail!("{RING_ENV}={text}: expected a power of two of at least {page} bytes"),
    }
}

fn page_size() -> u32 {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if n > 0 { n as u32 } else { 4096 }
}

/// Default: wake the reader when 2 MiB are waiting (about 10 ms of events
/// at 1.4M events/s); below that it drains on its own 10 ms timer. Measured
/// against 256 KiB: slightly cheaper for monitored actions, within noise.
pub const DEFAULT_WAKEUP_THRESHOLD: u64 = 2 * 1024 * 1024;

pub struct Kernel {
    /// `None` once detached.
    ebpf: Option<Ebpf>,
    settings_map: Array<MapData, Settings>,
    scopes_map: Array<MapData, Scope>,
    lost_map: PerCpuArray<MapData, u64>,
    runner_paths: HashMap<MapData, [u8; RUNNER_PATH_LEN], u8>,
    runners: HashMap<MapData, u32, u8>,
    settings: Settings,
    pub events: Option<RingBuf<MapData>>,
    /// Size of the events ring buffer in bytes.
    pub ring_bytes: u32,
    pub syscall_hook: SyscallHook,
    /// Cgroups the socket hooks are attached to.
    pub sock_hooks: Vec<PathBuf>,
    /// The trie keys written by the last `set_network_policy` (removed when
    /// a reload no longer lists them).
    allow_keys: [(Vec<TrieKey<16>>, Vec<TrieKey<18>>); 2],
    /// The keys written by the last `set_allowed_dirs`.
    allowed_dir_keys: Vec<TrieKey<{ monitor_common::ALLOWED_DIR_BYTES }>>,
    /// The action tier's keys, per action cgroup id (removed with it).
    action_keys: std::collections::HashMap<u64, ActionKeys>,
    /// The counts of repeated opens (taken by the pipeline).
    pub seen: Option<crate::kernel::seen::SeenCounts>,
    /// Sandboxes whose failed probes the kernel counts.
    pub sandboxes: crate::kernel::sandboxes::SandboxMaps,
}

impl Kernel {
    /// Loads and attaches everything. `scopes` may be empty and set later.
    /// `launchers`: process names that start a lineage action (compared with
    /// the kernel's 15-byte comm, so longer names are cut to 15 bytes).
    pub fn load(
        scopes: &[Scope],
        launchers: &[String],
        wakeup_threshold: u64,
    ) -> anyhow::Result<Kernel> {
        crate::kernel::privileges::check()?;
        raise_memlock_limit();
        // aya parses the kernel's BTF twice (its loader, always, and the
        // BTF tracepoint's target lookup): ~30 ms each, on threads while
        // the offsets are read (one after another they were a third of a
        // start's wall time).
        let loader = std::thread::spawn(EbpfLoader::new);
        let aya_btf = std::thread::spawn(aya_kernel_btf);
        let btf = kernel_btf()?;
        let offsets = offsets_from(&btf)?;
        let kfuncs = Kfuncs::from_btf(&btf);
        drop(btf);
        let ring_bytes = ring_bytes()?;
        let loader = loader
            .join()
            .map_err(|_| anyhow::anyhow!("aya's loader panicked"))?;
        let aya_btf = aya_btf
            .join()
            .map_err(|_| anyhow::anyhow!("reading kernel BTF with aya panicked"))?;
        let mut ebpf = load_object(loader, &offsets, &kfuncs, ring_bytes)?;
        load_programs_in_parallel(&mut ebpf, &kfuncs, aya_btf.as_ref());
        let take = |ebpf: &mut Ebpf, name: &str| {
            ebpf.take_map(name)
                .with_context(|| format!("map {name} missing from the kernel object"))
        };
        let settings_map = Array::try_from(take(&mut ebpf, "SETTINGS")?)?;
        let scopes_map = Array::try_from(take(&mut ebpf, "SCOPES")?)?;
        let lost_map = PerCpuArray::try_from(take(&mut ebpf, "LOST")?)?;
        let events = RingBuf::try_from(take(&mut ebpf, "EVENTS")?)?;
        let runner_paths = HashMap::try_from(take(&mut ebpf, "RUNNER_PATHS")?)?;
        let runners = HashMap::try_from(take(&mut ebpf, "RUNNERS")?)?;
        let seen = seen_counts(take(&mut ebpf, "SEEN")?, take(&mut ebpf, "SEEN_FILTER")?)?;
        let sandboxes = crate::kernel::sandboxes::SandboxMaps::new(
            take(&mut ebpf, "SANDBOX_DIRS")?,
            take(&mut ebpf, "PROBES_FOLDED")?,
        )?;
        let settings = initial_settings(offsets, launchers, wakeup_threshold)?;
        let mut kernel = Kernel {
            ebpf: None,
            settings_map,
            scopes_map,
            lost_map,
            runner_paths,
            runners,
            settings,
            events: Some(events),
            ring_bytes,
            syscall_hook: SyscallHook::Btf,
            sock_hooks: Vec::new(),
            allow_keys: Default::default(),
            allowed_dir_keys: Vec::new(),
            action_keys: Default::default(),
            seen: Some(seen),
            sandboxes,
        };
        kernel.set_scopes(scopes)?;
        for (program, hook) in PROCESS_PROGRAMS {
            attach_raw(&mut ebpf, program, hook)?;
        }
        kernel.syscall_hook = attach_syscall_hook(&mut ebpf, &kfuncs, aya_btf.as_ref())?;
        kernel.ebpf = Some(ebpf);
        Ok(kernel)
    }

    /// Replaces the kernel filter's scopes. Entries are written before the
    /// count grows, so the kernel never reads a half-written entry.
    pub fn set_scopes(&mut self, scopes: &[Scope]) -> anyhow::Result<()> {
        if scopes.len() > MAX_SCOPES as usize {
            bail!(
                "at most {MAX_SCOPES} cgroup scopes can be monitored, {} given",
                scopes.len()
            );
        }
        for (i, scope) in deepest_first(scopes).iter().enumerate() {
            self.scopes_map.set(i as u32, scope, 0)?;
        }
        self.settings.scope_count = scopes.len() as u32;
        self.write_settings()?;
        Ok(())
    }

    /// Worker runners (`attribution.worker_runners`): the paths they are
    /// exec'd by. Set before any runner starts: a runner already running is
    /// not recognised.
    pub fn set_runners(&mut self, runners: &[std::path::PathBuf]) -> anyhow::Result<()> {
        if runners.len() > MAX_RUNNERS as usize {
            bail!(
                "at most {MAX_RUNNERS} attribution.worker_runners are supported, {} given",
                runners.len()
            );
        }
        for runner in runners {
            let bytes = runner.as_os_str().as_encoded_bytes();
            if bytes.len() >= RUNNER_PATH_LEN {
                bail!(
                    "worker runner path {} is longer than {} bytes",
                    runner.display(),
                    RUNNER_PATH_LEN - 1
                );
            }
            let mut key = [0u8; RUNNER_PATH_LEN];
            key[..bytes.len()].copy_from_slice(bytes);
            self.runner_paths.insert(key, 1, 0)?;
        }
        self.settings.runner_count = runners.len() as u32;
        self.write_settings()?;
        Ok(())
    }

    /// Writes the allow list into the kernel's tries and turns enforcement
    /// on or off. Call before `attach_sock_hooks`, so that no call is judged
    /// against an empty list. Called again (config reload), the new entries
    /// are written first and only then are the ones no longer listed
    /// removed, so a destination allowed before and after is never refused.
    pub fn set_network_policy(
        &mut self,
        allow: AllowEntries<'_>,
        enforce: bool,
    ) -> anyhow::Result<()> {
        let ebpf = self.ebpf.as_mut().context("kernel programs detached")?;
        let limit = monitor_common::MAX_ALLOW_RULES as usize;
        if allow.any_port.len() > limit || allow.by_port.len() > limit {
            bail!(
                "network.allow: at most {limit} rules with and {limit} without a port are supported"
            );
        }
        if allow.server_any_port.len() > limit || allow.server_by_port.len() > limit {
            bail!(
                "network.rule with scope = \"@bazel\": at most {limit} destinations with and {limit} without a port are supported"
            );
        }
        let tiers = [
            ("ALLOW_ANY", "ALLOW_PORT", allow.any_port, allow.by_port),
            (
                "SERVER_ALLOW_ANY",
                "SERVER_ALLOW_PORT",
                allow.server_any_port,
                allow.server_by_port,
            ),
        ];
        for (i, (any_name, port_name, any, by_port)) in tiers.into_iter().enumerate() {
            let before = &self.allow_keys[i];
            let any_keys = replace_trie(ebpf, any_name, any, &before.0)?;
            let port_keys = replace_trie(ebpf, port_name, by_port, &before.1)?;
            self.allow_keys[i] = (any_keys, port_keys);
        }
        self.settings.enforce = u32::from(enforce);
        self.write_settings()?;
        Ok(())
    }

    /// Writes `files.allow`'s directories into the kernel
    /// (`policy::kernel_allowed`): failed reads below them are counted
    /// there from now on. Again on reload: new entries first, then the
    /// ones no longer listed removed.
    pub fn set_allowed_dirs(
        &mut self,
        dirs: &[(u32, [u8; monitor_common::ALLOWED_DIR_BYTES], u8)],
    ) -> anyhow::Result<()> {
        let ebpf = self.ebpf.as_mut().context("kernel programs detached")?;
        self.allowed_dir_keys = replace_trie(ebpf, "ALLOWED_DIRS", dirs, &self.allowed_dir_keys)
            .context("files.allow")?;
        Ok(())
    }

    /// Grants `rules` to one action in the kernel (the action tier: its
    /// declaration's `network` and the scoped rules its label and mnemonic
    /// match), replacing what it was granted before; empty rules revoke.
    pub fn set_action_allow(
        &mut self,
        action: u64,
        any_port: &[(u32, [u8; 16], u8)],
        by_port: &[(u32, [u8; 18], u8)],
    ) -> anyhow::Result<()> {
        let ebpf = self.ebpf.as_mut().context("kernel programs detached")?;
        let before = self.action_keys.remove(&action).unwrap_or_default();
        let used: usize = self
            .action_keys
            .values()
            .map(|k| k.0.len() + k.1.len())
            .sum();
        let adding = any_port.len() + by_port.len();
        if used + adding > monitor_common::MAX_ACTION_RULES as usize {
            bail!(
                "the kernel's per-action allow lists are full ({used} entries): action {action}'s network is judged in userspace only"
            );
        }
        let prefix = |len: u32| 64 + len;
        let any: Vec<_> = any_port
            .iter()
            .map(|(len, key, v)| (prefix(*len), action_key(action, key), *v))
            .collect();
        let by_port: Vec<_> = by_port
            .iter()
            .map(|(len, key, v)| (prefix(*len), action_key(action, key), *v))
            .collect();
        let any_keys = replace_trie(ebpf, "ACTION_ALLOW_ANY", &any, &before.0)?;
        let port_keys = replace_trie(ebpf, "ACTION_ALLOW_PORT", &by_port, &before.1)?;
        if !any_keys.is_empty() || !port_keys.is_empty() {
            self.action_keys.insert(action, (any_keys, port_keys));
        }
        Ok(())
    }

    /// Marks a runner that was already running when the programs attached
    /// (its exec was not seen). Actions it forks from now on are followed.
    pub fn mark_runner(&mut self, tgid: u32) -> anyhow::Result<()> {
        self.runners.insert(tgid, 1, 0)?;
        // A runner's own syscalls are no action's: verdicts kept from
        // before are stale.
        self.write_settings()
    }

    /// Writes the settings with a new `filter_generation`: the syscall
    /// hook's kept verdicts were worked out from what came before (this
    /// write, or the scopes or runners written just before it).
    fn write_settings(&mut self) -> anyhow::Result<()> {
        self.settings.filter_generation += 1;
        self.settings_map.set(0, self.settings, 0)?;
        Ok(())
    }

    /// Attaches the socket hooks to each cgroup. aya attaches through a BPF
    /// link where the kernel has them, and cgroup links are always one of
    /// possibly several programs ("multi" with flags 0): other tools'
    /// programs keep running, and any of them refusing refuses the call.
    pub fn attach_sock_hooks(&mut self, cgroups: &[PathBuf]) -> anyhow::Result<()> {
        let ebpf = self.ebpf.as_mut().context("kernel programs detached")?;
        // Each cgroup directory opened once, for every program.
        let files = cgroups
            .iter()
            .map(|cgroup| {
                std::fs::File::open(cgroup)
                    .map(|file| (cgroup, file))
                    .with_context(|| format!("opening cgroup {}", cgroup.display()))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let attach_failed =
            |name: &str, cgroup: &Path| format!("attaching {name} to {}", cgroup.display());
        for name in SOCK_ADDR_PROGRAMS {
            let prog: &mut CgroupSockAddr = loadable(ebpf, name)?;
            if prog.fd().is_err() {
                prog.load()
                    .with_context(|| format!("the kernel refused program {name}"))?;
            }
            for (cgroup, file) in &files {
                prog.attach(file, CgroupAttachMode::Single)
                    .with_context(|| attach_failed(name, cgroup))?;
            }
        }
        for name in SOCK_PROGRAMS {
            let prog: &mut CgroupSock = loadable(ebpf, name)?;
            if prog.fd().is_err() {
                prog.load()
                    .with_context(|| format!("the kernel refused program {name}"))?;
            }
            for (cgroup, file) in &files {
                prog.attach(file, CgroupAttachMode::Single)
                    .with_context(|| attach_failed(name, cgroup))?;
            }
        }
        // The egress backstop, and the DNS answers coming in.
        for (name, direction) in [
            ("sock_skb_egress", CgroupSkbAttachType::Egress),
            ("sock_skb_ingress", CgroupSkbAttachType::Ingress),
        ] {
            let prog: &mut CgroupSkb = loadable(ebpf, name)?;
            if prog.fd().is_err() {
                prog.load()
                    .with_context(|| format!("the kernel refused program {name}"))?;
            }
            for (cgroup, file) in &files {
                prog.attach(file, direction, CgroupAttachMode::Single)
                    .with_context(|| attach_failed(name, cgroup))?;
            }
        }
        self.sock_hooks = cgroups.to_vec();
        Ok(())
    }

    /// Seeds the kernel's listener maps with sockets bound before the
    /// socket hooks attached (see `actions::listeners`); returns how many
    /// were written.
    pub fn seed_listeners(&mut self, bound: &[(ListenerKey, u64)]) -> anyhow::Result<usize> {
        let ebpf = self.ebpf.as_mut().context("kernel programs detached")?;
        let mut listeners: HashMap<_, ListenerKey, u8> =
            HashMap::try_from(ebpf.map_mut("LISTENERS").context("map LISTENERS missing")?)?;
        for (key, _) in bound {
            listeners.insert(key, 1, 0)?;
        }
        let mut by_cookie: HashMap<_, u64, ListenerKey> =
            HashMap::try_from(ebpf.map_mut("BOUND").context("map BOUND missing")?)?;
        for (key, cookie) in bound {
            by_cookie.insert(cookie, key, 0)?;
        }
        Ok(bound.len())
    }

    /// Events the kernel could not deliver, per `LOST_*` reason, summed over
    /// CPUs since load.
    pub fn lost_counts(&self) -> [u64; LOST_REASONS as usize] {
        let mut out = [0; LOST_REASONS as usize];
        for (reason, slot) in out.iter_mut().enumerate() {
            if let Ok(values) = self.lost_map.get(&(reason as u32), 0) {
                *slot = values.iter().sum();
            }
        }
        out
    }

    /// Loads only the empty `floor` program on the same hook, for
    /// benchmarks: the cost any syscall hook puts on every process. The
    /// returned object keeps it attached until dropped.
    pub fn load_floor() -> anyhow::Result<Ebpf> {
        let object = crate::ebpf_object();
        if object.is_empty() {
            bail!("this monitor binary carries no kernel programs");
        }
        raise_memlock_limit();
        let mut ebpf = EbpfLoader::new()
            .load(object)
            .context("loading the kernel programs failed")?;
        let prog: &mut RawTracePoint = ebpf
            .program_mut("floor")
            .context("program floor missing")?
            .try_into()?;
        prog.load().context("the kernel refused program floor")?;
        prog.attach("sys_exit")
            .context("attaching floor to sys_exit failed")?;
        Ok(ebpf)
    }

    /// Detaches every program; the ring buffer stays readable so that what
    /// is already in it can be drained.
    pub fn detach(&mut self) {
        self.ebpf = None;
    }
}

/// The `SEEN` array and its filter, mapped.
fn seen_counts(
    map: aya::maps::Map,
    filter: aya::maps::Map,
) -> anyhow::Result<crate::kernel::seen::SeenCounts> {
    let filter = crate::kernel::seen::FilterCells::new(filter).context("mapping SEEN_FILTER")?;
    crate::kernel::seen::SeenCounts::new(map, filter).context("mapping SEEN")
}

/// A program of the object, as its type.
fn loadable<'a, P>(ebpf: &'a mut Ebpf, name: &str) -> anyhow::Result<&'a mut P>
where
    &'a mut P: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    let program = ebpf
        .program_mut(name)
        .with_context(|| format!("program {name} missing from the kernel object"))?;
    Ok(program.try_into()?)
}

/// The programs every start loads, the slowest to verify first (measured
/// with strace on BPF_PROG_LOAD): the syscall hook's, then the rest.
fn programs_to_load(kfuncs: &Kfuncs) -> Vec<&'static str> {
    let syscall = match std::env::var(HOOK_ENV).as_deref() {
        Ok("raw") => "sys_exit",
        _ if !kfuncs.casts_available() => "sys_exit",
        _ => "sys_exit_btf",
    };
    let slowest = [
        "uring_submit",
        "uring_complete",
        "proc_exec",
        "sock_skb_egress",
    ];
    let rest = PROCESS_PROGRAMS
        .iter()
        .map(|(name, _)| *name)
        .chain(SOCK_ADDR_PROGRAMS)
        .chain(SOCK_PROGRAMS)
        .chain(["sock_skb_ingress"]);
    let mut names = vec![syscall];
    for name in slowest.into_iter().chain(rest) {
        if !names.contains(&name) {
            names.push(name);
        }
    }
    names
}

/// Verification is most of a start: the programs are loaded on every CPU
/// at once before anything is attached (`parallel_load`).
fn load_programs_in_parallel(ebpf: &mut Ebpf, kfuncs: &Kfuncs, btf: Option<&aya::Btf>) {
    let names = programs_to_load(kfuncs);
    parallel_load::load_programs(ebpf, &names, btf);
}

/// The kernel's BTF as aya reads it, for the BTF tracepoint (`None`: the
/// raw tracepoint is the hook).
fn aya_kernel_btf() -> Option<aya::Btf> {
    aya::Btf::from_sys_fs()
        .inspect_err(|e| log::debug!("aya could not read kernel BTF: {e}"))
        .ok()
}

fn attach_raw(ebpf: &mut Ebpf, program: &str, hook: &str) -> anyhow::Result<()> {
    let prog: &mut RawTracePoint = ebpf
        .program_mut(program)
        .with_context(|| format!("program {program} missing from the kernel object"))?
        .try_into()?;
    if prog.fd().is_err() {
        prog.load()
            .with_context(|| format!("the kernel refused program {program}"))?;
    }
    prog.attach(hook)
        .with_context(|| format!("attaching {program} to raw tracepoint {hook} failed"))?;
    Ok(())
}

fn attach_btf(ebpf: &mut Ebpf, btf: Option<&aya::Btf>) -> anyhow::Result<()> {
    let prog: &mut BtfTracePoint = ebpf
        .program_mut("sys_exit_btf")
        .context("program sys_exit_btf missing from the kernel object")?
        .try_into()?;
    if prog.fd().is_err() {
        let btf = btf.context("aya could not read kernel BTF")?;
        prog.load(parallel_load::SYSCALL_TRACEPOINT, btf)
            .context("the kernel refused program sys_exit_btf")?;
    }
    prog.attach().context("attaching sys_exit_btf failed")?;
    Ok(())
}

/// Attaches the syscall hook: the BTF tracepoint when the kernel takes it
/// (and has the kfunc its reads use), else the raw tracepoint (one of the
/// two, never both).
fn attach_syscall_hook(
    ebpf: &mut Ebpf,
    kfuncs: &Kfuncs,
    btf: Option<&aya::Btf>,
) -> anyhow::Result<SyscallHook> {
    let forced = std::env::var(HOOK_ENV).ok();
    let no_cast = !kfuncs.casts_available();
    const NO_CAST: &str = "the kernel has no bpf_rdonly_cast kfunc (before 6.2), or its BTF lacks a struct the BTF tracepoint's reads are cast to";
    match forced.as_deref() {
        Some("raw") => {}
        Some("btf") if no_cast => bail!("{HOOK_ENV}=btf: {NO_CAST}"),
        Some("btf") => {
            attach_btf(ebpf, btf)?;
            return Ok(SyscallHook::Btf);
        }
        Some(other) if !other.is_empty() => bail!("{HOOK_ENV}={other}: expected `btf` or `raw`"),
        _ if no_cast => log::warn!("{NO_CAST}; using the raw tracepoint"),
        _ => match attach_btf(ebpf, btf) {
            Ok(()) => return Ok(SyscallHook::Btf),
            Err(e) => log::warn!("BTF tracepoint unavailable ({e:#}); using the raw tracepoint"),
        },
    }
    attach_raw(ebpf, "sys_exit", "sys_exit")?;
    Ok(SyscallHook::Raw)
}

/// The identity of the monitor's root directory, `s_dev` as the kernel
/// encodes it (major << 20 | minor).
fn host_root() -> anyhow::Result<(u32, u64)> {
    use std::os::unix::fs::MetadataExt as _;
    let meta = std::fs::metadata("/").context("stat of the root directory")?;
    Ok((crate::kernel::sandboxes::kernel_dev(meta.dev()), meta.ino()))
}

fn raise_memlock_limit() {
    let rlim = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: plain syscall with a valid pointer.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &rlim) } != 0 {
        log::debug!("could not raise RLIMIT_MEMLOCK (kernels since 5.11 do not need it)");
    }
}

/// The kernel object with its maps created, its ring `ring_bytes` and the
/// offsets the verifier must know set as read-only globals, not SETTINGS
/// fields (monitor-ebpf/src/offsets.rs); no program loaded yet.
fn load_object(
    loader: EbpfLoader<'static>,
    offsets: &KernelOffsets,
    kfuncs: &Kfuncs,
    ring_bytes: u32,
) -> anyhow::Result<Ebpf> {
    let object = crate::ebpf_object();
    if object.is_empty() {
        bail!(
            "this monitor binary was built with MONITOR_SKIP_EBPF_BUILD and carries no kernel programs; rebuild it without that variable"
        );
    }
    let constants = monitor_common::load_time_offsets(offsets);
    // Borrows from here on live as long as this function.
    let mut loader: EbpfLoader<'_> = loader;
    loader.map_max_entries("EVENTS", ring_bytes);
    for (name, value) in &constants {
        loader.override_global(name, value, true);
    }
    for (global, id) in &kfuncs.cast_types {
        loader.override_global(global, id, true);
    }
    let word_slot = kfuncs.word_slot.unwrap_or(0);
    loader.override_global(BTF_ID_WORD_SLOT, &word_slot, true);
    let (object, sites) = kfuncs::patch(object, kfuncs)?;
    log::debug!("{sites} kfunc call sites rewritten in the kernel object");
    loader
        .load(&object)
        .context("loading the kernel programs failed")
}

/// The syscall hook reads the saved user registers at fixed offsets (the
/// x86_64 ptrace ABI), and the task's compat status at a constant offset:
/// check them against BTF before loading.
fn check_fixed_offsets(btf: &Btf) -> anyhow::Result<()> {
    let off = |ty: &str, member: &str| {
        btf.member_offset(ty, member)
            .with_context(|| format!("reading the offset of {ty}.{member} from kernel BTF"))
    };
    for (member, expected) in [
        ("bx", PT_REGS_BX),
        ("cx", PT_REGS_CX),
        ("r10", PT_REGS_R10),
        ("dx", PT_REGS_DX),
        ("si", PT_REGS_SI),
        ("di", PT_REGS_DI),
        ("orig_ax", PT_REGS_ORIG_AX),
    ] {
        let found = off("pt_regs", member)?;
        if found != expected {
            bail!(
                "unsupported kernel: pt_regs.{member} is at offset {found}, the programs expect {expected} (x86_64 only)"
            );
        }
    }
    // `object::identity` takes a `struct path` as two adjacent words.
    let (mnt, dentry) = (off("path", "mnt")?, off("path", "dentry")?);
    if !matches!((mnt, dentry), (0, 8) | (8, 0)) {
        bail!(
            "unsupported kernel: struct path has mnt at offset {mnt} and dentry at {dentry}, the programs expect the two pointers alone"
        );
    }
    // `dpath` reads a dentry's parent and name address in one read.
    let (parent, name) = (
        off("dentry", "d_parent")?,
        off("dentry", "d_name")? + off("qstr", "name")?,
    );
    if name != parent + 16 {
        bail!(
            "unsupported kernel: dentry.d_name.name is at offset {name}, the programs expect it 16 bytes after d_parent ({parent})"
        );
    }
    let status = off("task_struct", "thread_info.status")?;
    if status != TASK_THREAD_INFO_STATUS {
        bail!(
            "unsupported kernel: task_struct.thread_info.status is at offset {status}, the programs expect {TASK_THREAD_INFO_STATUS}"
        );
    }
    Ok(())
}

/// The running kernel's BTF.
fn kernel_btf() -> anyhow::Result<Btf> {
    if !Path::new(crate::kernel::btf::SYS_FS_VMLINUX).exists() {
        bail!(
            "kernel BTF is missing at {} (the kernel must be built with CONFIG_DEBUG_INFO_BTF=y)",
            crate::kernel::btf::SYS_FS_VMLINUX
        );
    }
    Ok(Btf::from_sys_fs()?)
}

/// Reads the struct offsets the kernel programs need from the running
/// kernel's BTF, and checks the syscall register layout they assume.
pub fn kernel_offsets() -> anyhow::Result<KernelOffsets> {
    offsets_from(&kernel_btf()?)
}

fn offsets_from(btf: &Btf) -> anyhow::Result<KernelOffsets> {
    let off = |ty: &str, member: &str| {
        btf.member_offset(ty, member)
            .with_context(|| format!("reading the offset of {ty}.{member} from kernel BTF"))
    };
    check_fixed_offsets(btf)?;
    let mut offsets = KernelOffsets {
        task_real_parent: off("task_struct", "real_parent")?,
        task_tgid: off("task_struct", "tgid")?,
        task_comm: off("task_struct", "comm")?,
        task_pid: off("task_struct", "pid")?,
        task_fs: off("task_struct", "fs")?,
        task_files: off("task_struct", "files")?,
        task_mm: off("task_struct", "mm")?,
        task_nsproxy: off("task_struct", "nsproxy")?,
        fs_pwd: off("fs_struct", "pwd")?,
        fs_root: off("fs_struct", "root")?,
        dentry_inode: off("dentry", "d_inode")?,
        path_mnt: off("path", "mnt")?,
        path_dentry: off("path", "dentry")?,
        dentry_parent: off("dentry", "d_parent")?,
        dentry_name: off("dentry", "d_name")?,
        dentry_inline_name: off("dentry", "d_shortname").or_else(|_| off("dentry", "d_iname"))?,
        qstr_len: off("qstr", "len")?,
        qstr_name: off("qstr", "name")?,
        mount_mnt: off("mount", "mnt")?,
        mount_parent: off("mount", "mnt_parent")?,
        mount_mountpoint: off("mount", "mnt_mountpoint")?,
        vfsmount_root: off("vfsmount", "mnt_root")?,
        files_fdt: off("files_struct", "fdt")?,
        fdtable_max_fds: off("fdtable", "max_fds")?,
        fdtable_fd: off("fdtable", "fd")?,
        file_path: off("file", "f_path")?,
        file_private_data: off("file", "private_data")?,
        socket_type: off("socket", "type")?,
        mm_exe_file: off("mm_struct", "exe_file")?,
        nsproxy_net_ns: off("nsproxy", "net_ns")?,
        net_ns_inum: off("net", "ns.inum")?,
        mm_arg_start: off("mm_struct", "arg_start")?,
        mm_arg_end: off("mm_struct", "arg_end")?,
        cgroup_kn: off("cgroup", "kn")?,
        cgroup_root: off("cgroup", "root")?,
        cgroup_level: off("cgroup", "level")?,
        cgroup_ancestors: off("cgroup", "ancestors")?,
        cgroup_root_hierarchy_id: off("cgroup_root", "hierarchy_id")?,
        kernfs_node_id: off("kernfs_node", "id")?,
        file_f_inode: off("file", "f_inode")?,
        file_f_mode: off("file", "f_mode")?,
        inode_i_ino: off("inode", "i_ino")?,
        inode_i_sb: off("inode", "i_sb")?,
        inode_i_nlink: off("inode", "i_nlink")?,
        inode_i_mode: off("inode", "i_mode")?,
        sb_s_dev: off("super_block", "s_dev")?,
        sb_s_magic: off("super_block", "s_magic")?,
        proc_inode_pid: off("proc_inode", "pid")?,
        proc_inode_vfs_inode: off("proc_inode", "vfs_inode")?,
        pid_tasks: off("pid", "tasks")?,
        task_pid_links: off("task_struct", "pid_links")?,
        mount_mnt_ns: off("mount", "mnt_ns")?,
        mnt_ns_id: off("mnt_namespace", "seq").or_else(|_| off("mnt_namespace", "ns.ns_id"))?,
        vfsmount_mnt_flags: off("vfsmount", "mnt_flags")?,
        binprm_filename: off("linux_binprm", "filename")?,
        task_exit_code: off("task_struct", "exit_code")?,
        task_signal: off("task_struct", "signal")?,
        signal_live: off("signal_struct", "live")?,
        socket_sk: off("socket", "sk")?,
        sock_peer_pid: off("sock", "sk_peer_pid")?,
        pid_nr: off("pid", "numbers")? + off("upid", "nr")?,
        inode_i_generation: off("inode", "i_generation")?,
        file_f_flags: off("file", "f_flags")?,
        task_cgroups: off("task_struct", "cgroups")?,
        css_set_dfl_cgrp: off("css_set", "dfl_cgrp")?,
        // The io_uring ones: `uring_offsets`.
        ..Default::default()
    };
    uring_offsets(btf, &mut offsets)?;
    Ok(offsets)
}

/// Where io_uring requests, open requests and a ring's fixed-file table
/// keep what `probes/uring.rs` reads.
fn uring_offsets(btf: &Btf, o: &mut KernelOffsets) -> anyhow::Result<()> {
    let off = |ty: &str, member: &str| {
        btf.member_offset(ty, member)
            .with_context(|| format!("reading the offset of {ty}.{member} from kernel BTF"))
    };
    o.io_kiocb_opcode = off("io_kiocb", "opcode")?;
    o.io_kiocb_flags = off("io_kiocb", "flags")?;
    o.io_kiocb_cmd = off("io_kiocb", "cmd")?;
    o.io_kiocb_ctx = off("io_kiocb", "ctx")?;
    o.io_open_file_slot = off("io_open", "file_slot")?;
    o.io_open_dfd = off("io_open", "dfd")?;
    o.io_open_filename = off("io_open", "filename")?;
    o.io_open_how_flags = off("io_open", "how.flags")?;
    o.io_open_how_mode = off("io_open", "how.mode")?;
    o.filename_name = off("filename", "name")?;
    o.ring_files_nr = off("io_ring_ctx", "file_table.data.nr")?;
    o.ring_files_nodes = off("io_ring_ctx", "file_table.data.nodes")?;
    o.rsrc_node_file_ptr = off("io_rsrc_node", "file_ptr")?;
    o.io_unlink_dfd = off("io_unlink", "dfd")?;
    o.io_unlink_filename = off("io_unlink", "filename")?;
    o.io_mkdir_dfd = off("io_mkdir", "dfd")?;
    o.io_mkdir_filename = off("io_mkdir", "filename")?;
    o.io_rename_new_dfd = off("io_rename", "new_dfd")?;
    o.io_rename_newpath = off("io_rename", "newpath")?;
    o.io_rename_old_dfd = off("io_rename", "old_dfd")?;
    o.io_rename_oldpath = off("io_rename", "oldpath")?;
    o.io_link_new_dfd = off("io_link", "new_dfd")?;
    o.io_link_newpath = off("io_link", "newpath")?;
    o.io_kiocb_file = off("io_kiocb", "file")?;
    // IORING_OP_SOCKET came with 5.19; its domain, type and protocol are
    // read as three ints in a row.
    let socket = (
        btf.member_offset("io_socket", "domain"),
        btf.member_offset("io_socket", "type"),
        btf.member_offset("io_socket", "protocol"),
    );
    if let (Ok(domain), Ok(ty), Ok(protocol)) = socket
        && ty == domain + 4
        && protocol == domain + 8
    {
        o.io_socket_domain = domain;
    }
    // io_uring's xattr requests came with 5.19.
    o.io_xattr_filename = btf.member_offset("io_xattr", "filename").unwrap_or(0);
    // A bound unix socket's name (for IORING_OP_BIND, 6.11+); without
    // these, io_uring binds are not judged (every kernel here has them).
    let bound = (
        off("sock", "__sk_common.skc_family"),
        off("unix_sock", "addr"),
        off("unix_address", "len"),
        off("unix_address", "name"),
    );
    match bound {
        (Ok(family), Ok(addr), Ok(len), Ok(name)) => {
            o.sock_family = family;
            o.unix_sock_addr = addr;
            o.unix_address_len = len;
            o.unix_address_name = name;
        }
        other => log::warn!("io_uring binds are not judged: {other:?}"),
    }
    Ok(())
}

/// An allow key prefixed with the action's cgroup id (big-endian).
fn action_key<const N: usize, const M: usize>(action: u64, key: &[u8; N]) -> [u8; M] {
    let mut out = [0u8; M];
    out[..8].copy_from_slice(&action.to_be_bytes());
    out[8..].copy_from_slice(key);
    out
}

/// Writes `entries` into the LPM trie `name`, then removes the keys of
/// `before` that `entries` no longer has. Returns the keys now in the trie.
fn replace_trie<const N: usize>(
    ebpf: &mut Ebpf,
    name: &str,
    entries: &[(u32, [u8; N], u8)],
    before: &[TrieKey<N>],
) -> anyhow::Result<Vec<TrieKey<N>>> {
    let mut trie: LpmTrie<_, [u8; N], u8> = LpmTrie::try_from(
        ebpf.map_mut(name)
            .with_context(|| format!("map {name} missing from the kernel object"))?,
    )?;
    for (len, key, value) in entries {
        trie.insert(&Key::new(*len, *key), value, 0)
            .context("writing the allow list into the kernel")?;
    }
    let now: Vec<TrieKey<N>> = entries.iter().map(|(len, key, _)| (*len, *key)).collect();
    for stale in before.iter().filter(|k| !now.contains(k)) {
        trie.remove(&Key::new(stale.0, stale.1))
            .context("removing a reloaded-away rule from the kernel")?;
    }
    Ok(now)
}

/// The order the kernel filter takes scopes in: deepest first, so the
/// first match is the deepest (`monitor-ebpf/src/filter.rs`); of two at one
/// depth (one cgroup given twice), the one given last, as before. Each
/// keeps its position in `scopes` as its `index` (events name it by that).
fn deepest_first(scopes: &[Scope]) -> Vec<Scope> {
    let mut sorted: Vec<Scope> = scopes
        .iter()
        .zip(0..)
        .map(|(scope, index)| Scope { index, ..*scope })
        .collect();
    sorted.sort_by_key(|s| std::cmp::Reverse((s.level, s.index)));
    sorted
}

/// The settings the kernel starts with: no scope yet, the monitor's own
/// tgid, the host root and the launcher names (cut to the kernel's comm).
fn initial_settings(
    offsets: KernelOffsets,
    launchers: &[String],
    wakeup_threshold: u64,
) -> anyhow::Result<Settings> {
    let (host_root_dev, host_root_ino) = host_root()?;
    let mut settings = Settings {
        offsets,
        scope_count: 0,
        monitor_tgid: std::process::id(),
        wakeup_threshold,
        host_root_dev,
        host_root_ino,
        ..Default::default()
    };
    if launchers.len() > MAX_LAUNCHERS {
        bail!(
            "at most {MAX_LAUNCHERS} attribution.sandbox_launchers are supported, {} given",
            launchers.len()
        );
    }
    for (slot, name) in settings.launchers.iter_mut().zip(launchers) {
        let bytes = &name.as_bytes()[..name.len().min(COMM_LEN - 1)];
        slot[..bytes.len()].copy_from_slice(bytes);
    }
    settings.launcher_count = launchers.len() as u32;
    Ok(settings)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kfuncs(rdonly_cast: Option<u32>) -> Kfuncs {
        Kfuncs {
            rdonly_cast,
            cast_types: monitor_common::CAST_TYPES
                .iter()
                .map(|&(global, _)| (global, 1))
                .collect(),
            word_slot: Some(1),
        }
    }

    #[test]
    fn scopes_go_to_the_kernel_deepest_first_keeping_their_index() {
        let scope = |cgroup_id, level| Scope {
            cgroup_id,
            level,
            ..Default::default()
        };
        let given = [scope(10, 2), scope(11, 5), scope(12, 3), scope(11, 5)];
        let order: Vec<(u64, u32)> = deepest_first(&given)
            .iter()
            .map(|s| (s.cgroup_id, s.index))
            .collect();
        // Of the cgroup given twice, the last one first (it won before).
        assert_eq!(order, [(11, 3), (11, 1), (12, 2), (10, 0)]);
    }

    #[test]
    fn every_attached_program_is_loaded_once_with_the_syscall_hook_first() {
        // The test runs without MONITOR_SYSCALL_HOOK set.
        assert!(std::env::var_os(HOOK_ENV).is_none());
        let with_casts = programs_to_load(&kfuncs(Some(7)));
        assert_eq!(with_casts[0], "sys_exit_btf");
        assert!(!with_casts.contains(&"sys_exit"));
        let without = programs_to_load(&kfuncs(None));
        assert_eq!(without[0], "sys_exit");
        assert!(!without.contains(&"sys_exit_btf"));
        for names in [&with_casts, &without] {
            let mut unique = names.clone();
            unique.sort();
            unique.dedup();
            assert_eq!(unique.len(), names.len(), "{names:?}");
            let attached = PROCESS_PROGRAMS
                .iter()
                .map(|(name, _)| *name)
                .chain(SOCK_ADDR_PROGRAMS)
                .chain(SOCK_PROGRAMS)
                .chain(["sock_skb_egress", "sock_skb_ingress"]);
            for name in attached {
                assert!(names.contains(&name), "{name} is not loaded: {names:?}");
            }
            assert!(!names.contains(&"floor"));
        }
    }
}
