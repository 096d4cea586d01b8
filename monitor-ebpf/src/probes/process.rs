//! Process lifecycle of monitored tasks.
//!
//! * exec: report the executable (from `mm->exe_file`); when the new program
//!   is a sandbox launcher (matched by comm against the configured names),
//!   start a lineage action: remember the launcher's tgid and report its argv
//!   and working directory at once (userspace reads the sandbox from them
//!   while it still exists).
//! * fork: a child of a lineage process joins its lineage, in the kernel, so
//!   no short-lived child is missed.
//! * exit: forget the process.
use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, generated::bpf_probe_read_user},
    macros::raw_tracepoint,
    programs::RawTracePointContext,
};
use monitor_common::{
    COMM_LEN, EventKind, ExitEvent, FLAG_PATH_TRUNCATED, FLAG_PATH_UNREADABLE, FileEvent,
    PATH_CAPACITY, Settings, WorkerExitEvent,
};

use crate::{
    dpath::walk_dir,
    emit::{fill_header, submit, submit_with},
    escapes,
    filter::{self, Match},
    lineage,
    maps::{SCRATCH, SETTINGS, Scratch},
    object::{self, Copied, Reader},
    probes::files::clear_identity,
    task::{current_task, parent_tgid, read},
    verdicts, workers,
};

#[raw_tracepoint(tracepoint = "sched_process_exec")]
pub fn proc_exec(ctx: RawTracePointContext) -> i32 {
    let _ = try_proc_exec(&ctx);
    // After the runner and lineage entries: kept verdicts are stale.
    verdicts::changed();
    0
}

#[inline(always)]
fn try_proc_exec(ctx: &RawTracePointContext) -> Option<()> {
    let settings = SETTINGS.get(0)?;
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    if workers::enabled(settings) {
        // sched_process_exec(p, old_pid, bprm)
        workers::on_exec_any(settings, tgid, ctx.arg(2));
        if workers::is_runner(tgid) {
            return None;
        }
    }
    let mut m = filter::action_of(settings, pid_tgid)
        .or_else(|| workers::lineage_match(settings, pid_tgid))?;
    on_exec(settings, &mut m, tgid)
}

/// `sched_process_fork(parent, child)`: runs for every fork on the host, so
/// it only does a lineage lookup and the action filter (`escapes`: a child
/// created outside its parent's action).
#[raw_tracepoint(tracepoint = "sched_process_fork")]
pub fn proc_fork(ctx: RawTracePointContext) -> i32 {
    if let Some(settings) = SETTINGS.get(0) {
        let pid_tgid = bpf_get_current_pid_tgid();
        on_fork(pid_tgid, ctx.arg(1), settings);
    }
    // A new task (its pid perhaps reused), after its lineage and escape
    // entries: kept verdicts are stale.
    verdicts::changed();
    0
}

#[raw_tracepoint(tracepoint = "sched_process_exit")]
pub fn proc_exit(_ctx: RawTracePointContext) -> i32 {
    let _ = try_proc_exit();
    0
}

#[inline(always)]
fn try_proc_exit() -> Option<()> {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    let settings = SETTINGS.get(0)?;
    // Threads end too; only the end of the whole process matters: its
    // last thread, which is not always the first one (a main thread that
    // calls `pthread_exit` ends before the others). Each exiting thread
    // has taken itself off `live` by now.
    let o = &settings.offsets;
    let signal: u64 = read(current_task(), o.task_signal);
    if read::<i32>(signal, o.signal_live) != 0 {
        return None;
    }
    if workers::enabled(settings) && workers::is_runner(tgid) {
        workers::on_exit(tgid);
        return None;
    }
    if let Some(mut m) =
        filter::action_of(settings, pid_tgid).or_else(|| workers::lineage_match(settings, pid_tgid))
    {
        on_exit(settings, &mut m, tgid);
    }
    // Whatever cgroup it ended in: a tgid left behind would make the next
    // process with that number a mover, or a left one, of an old action.
    escapes::forget(tgid);
    Some(())
}

pub fn on_exec(settings: &Settings, m: &mut Match, tgid: u32) -> Option<()> {
    let o = &settings.offsets;
    let scratch = SCRATCH.get_ptr_mut(0)?;
    // SAFETY: per-CPU scratch, used by this program only while it runs.
    let scratch = unsafe { &mut *scratch };
    let mm: u64 = read(current_task(), o.task_mm);
    // Once, before the paths part: the verifier checks the reads once, not
    // on each path (as in `files::report`).
    let ppid = parent_tgid();

    let worker_launch = workers::enabled(settings) && workers::first_exec_of_root(tgid);
    let by_comm = is_launcher(
        settings,
        &aya_ebpf::helpers::bpf_get_current_comm().unwrap_or_default(),
    );
    let worker = is_persistent_worker(settings, mm, tgid, by_comm);
    let launcher = by_comm || worker;
    if launcher {
        // A launcher inside a lineage starts a new, innermost action.
        lineage::join(tgid, if worker { tgid | lineage::TIMED } else { tgid });
        m.launcher = tgid;
    } else {
        // SAFETY: the value is copied out at once.
        m.launcher = lineage::launcher_of(tgid);
    }

    start_event(scratch, EventKind::Exec, m, ppid);
    let exe: u64 = read(mm, o.mm_exe_file);
    let exe_path = if exe == 0 {
        0
    } else {
        let id = Copied::identity(exe, &mut scratch.windows);
        object::describe::<Copied>(o, &id, &mut scratch.windows, &mut scratch.event);
        exe + o.file_path as u64
    };
    let ev = &mut scratch.event;
    let len = walk_dir::<Copied>(exe_path, 0, &mut ev.header.flags, &mut ev.bind_at);
    scratch.event.dir_len = len as u32;
    submit(
        settings,
        (scratch as *const Scratch).cast(),
        core::mem::size_of::<FileEvent>() + len,
    );

    if launcher {
        launch_event(settings, scratch, m, ppid, mm, EventKind::Launch);
    } else if worker_launch {
        launch_event(settings, scratch, m, ppid, mm, EventKind::WorkerLaunch);
    }
    Some(())
}

/// The launcher's argv (from `mm->arg_start..arg_end`) and cwd; `ppid`:
/// its parent's tgid.
fn launch_event(
    settings: &Settings,
    scratch: &mut Scratch,
    m: &Match,
    ppid: u32,
    mm: u64,
    kind: EventKind,
) {
    let o = &settings.offsets;
    start_event(scratch, kind, m, ppid);
    let start: u64 = read(mm, o.mm_arg_start);
    let end: u64 = read(mm, o.mm_arg_end);
    let mut len = end.saturating_sub(start) as usize;
    if len >= PATH_CAPACITY {
        len = PATH_CAPACITY - 1;
        scratch.event.header.flags |= FLAG_PATH_TRUNCATED;
    }
    let data = scratch.data.as_mut_ptr();
    // SAFETY: len < PATH_CAPACITY fits at the start of `data`.
    if len == 0 || unsafe { bpf_probe_read_user(data.cast(), len as u32, start as *const _) } != 0 {
        scratch.event.header.flags |= FLAG_PATH_UNREADABLE;
        len = 0;
    }
    let fs: u64 = read(current_task(), o.task_fs);
    let cwd = if fs == 0 { 0 } else { fs + o.fs_pwd as u64 };
    let ev = &mut scratch.event;
    let dir_len = walk_dir::<Copied>(cwd, len, &mut ev.header.flags, &mut ev.bind_at);
    scratch.event.path_len = len as u32;
    scratch.event.dir_len = dir_len as u32;
    let total = core::mem::size_of::<FileEvent>() + len + dir_len;
    submit_with(settings, (scratch as *const Scratch).cast(), total, true);
}

fn start_event(scratch: &mut Scratch, kind: EventKind, m: &Match, ppid: u32) {
    let ev: &mut FileEvent = &mut scratch.event;
    fill_header(&mut ev.header, kind as u32, m, ppid);
    crate::zero_fields!(ev.syscall, ev.dirfd, ev.open_flags, ev.mode, ev.result);
    clear_identity(ev);
}

const _: () = assert!(
    monitor_common::MAX_LAUNCHERS == 4,
    "is_launcher checks four slots"
);

fn is_launcher(settings: &Settings, comm: &[u8; COMM_LEN]) -> bool {
    // Constant indices: a loop bounded by `launcher_count` compiles to an
    // equality test the verifier cannot bound.
    let n = settings.launcher_count;
    let l = &settings.launchers;
    (n > 0 && l[0] == *comm)
        || (n > 1 && l[1] == *comm)
        || (n > 2 && l[2] == *comm)
        || (n > 3 && l[3] == *comm)
}

/// The last argument Bazel gives every persistent worker it starts.
const PERSISTENT_WORKER_ARG: &[u8; 20] = b"--persistent_worker\0";

/// A Bazel persistent worker (argv ends with `--persistent_worker`) started
/// outside every lineage, or a launcher (`by_comm`) starting one: it is an
/// action of its own, like a launcher, so its files are reported
/// (userspace splits them among the requests it served, by time: its tree
/// is `lineage::TIMED`, as userspace's `is_worker_argv` sees any launch).
/// Costs one 20-byte read per exec in a monitored job outside every
/// lineage and per launcher's exec, only when sandbox launchers are
/// configured.
fn is_persistent_worker(settings: &Settings, mm: u64, tgid: u32, by_comm: bool) -> bool {
    if settings.launcher_count == 0 || mm == 0 || !by_comm && lineage::launcher_of(tgid) != 0 {
        return false;
    }
    let end: u64 = read(mm, settings.offsets.mm_arg_end);
    let mut tail = [0u8; 20];
    if end < tail.len() as u64 {
        return false;
    }
    let from = (end - tail.len() as u64) as *const core::ffi::c_void;
    // SAFETY: reads 20 bytes of user memory into a local buffer.
    let ok = unsafe { bpf_probe_read_user(tail.as_mut_ptr().cast(), tail.len() as u32, from) } == 0;
    ok && tail == *PERSISTENT_WORKER_ARG
}

/// A new process forked by a lineage process joins its lineage; one forked
/// by a runner roots a worker action; `escapes` follows one that leaves its
/// parent's action. A new thread is none of these.
pub fn on_fork(pid_tgid: u64, child_task: u64, settings: &Settings) {
    let parent_tgid = (pid_tgid >> 32) as u32;
    let child_tgid = read::<i32>(child_task, settings.offsets.task_tgid) as u32;
    if child_tgid == 0 || child_tgid == parent_tgid {
        return; // a thread, not a process
    }
    if workers::enabled(settings) && workers::is_runner(parent_tgid) {
        workers::on_fork(parent_tgid, child_tgid);
        return;
    }
    escapes::on_fork(settings, pid_tgid, child_task, child_tgid);
    // The entry, not just the launcher: a worker's children stay timed.
    let entry = lineage::entry_of(parent_tgid);
    if entry != 0 {
        lineage::join(child_tgid, entry);
    }
}

pub fn on_exit(settings: &Settings, m: &mut Match, tgid: u32) {
    // SAFETY: the value is copied out at once.
    m.launcher = lineage::launcher_of(tgid);
    if m.launcher != 0 {
        lineage::leave(tgid);
    }
    // Before the plain exit: userspace still knows the process then.
    if workers::enabled(settings) && workers::is_root(tgid) {
        worker_exit(settings, m);
        workers::on_exit(tgid);
    }
    let mut slot = core::mem::MaybeUninit::<ExitEvent>::uninit();
    let ev = crate::emit::zeroed_in(&mut slot);
    fill_header(&mut ev.header, EventKind::Exit as u32, m, parent_tgid());
    submit(
        settings,
        (ev as *const ExitEvent).cast(),
        core::mem::size_of::<ExitEvent>(),
    );
}

/// A worker action's root ended: its exit status decides whether its result
/// may now be in the action cache. Urgent: the action is over.
fn worker_exit(settings: &Settings, m: &Match) {
    let mut slot = core::mem::MaybeUninit::<WorkerExitEvent>::uninit();
    let ev = crate::emit::zeroed_in(&mut slot);
    fill_header(
        &mut ev.header,
        EventKind::WorkerExit as u32,
        m,
        parent_tgid(),
    );
    ev.exit_code = read(current_task(), settings.offsets.task_exit_code);
    submit_with(
        settings,
        (ev as *const WorkerExitEvent).cast(),
        core::mem::size_of::<WorkerExitEvent>(),
        true,
    );
}

/// A monitored process set up an io_uring: its file opens through the ring
/// are not seen by the syscall hook, so say so rather than stay silent.
pub fn on_io_uring(settings: &Settings, call: &crate::probes::syscalls::Syscall) -> Option<()> {
    if call.ret < 0 {
        return None;
    }
    let mut slot = core::mem::MaybeUninit::<ExitEvent>::uninit();
    let ev = crate::emit::zeroed_in(&mut slot);
    fill_header(
        &mut ev.header,
        EventKind::IoUring as u32,
        &call.m,
        parent_tgid(),
    );
    submit(
        settings,
        (ev as *const ExitEvent).cast(),
        core::mem::size_of::<ExitEvent>(),
    );
    Some(())
}
