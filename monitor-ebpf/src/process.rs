//! Process lifecycle of monitored tasks: exec (with the executable's path
//! resolved from `mm->exe_file`) and exit, so userspace knows each pid's
//! executable and can forget it when the process ends.
use monitor_common::{
    DIR_CAPACITY, EventKind, ExitEvent, FLAG_DIR_TRUNCATED, FLAG_DIR_UNRESOLVED, FileEvent,
    Settings,
};

use crate::{
    dpath::walk_path,
    emit::{fill_header, submit},
    filter::Match,
    maps::{SCRATCH, Scratch},
    task::{current_task, read},
};

pub fn on_exec(settings: &Settings, m: &Match) -> Option<()> {
    let o = &settings.offsets;
    let scratch = SCRATCH.get_ptr_mut(0)?;
    // SAFETY: per-CPU scratch, used by this program only while it runs.
    let scratch = unsafe { &mut *scratch };
    let ev: &mut FileEvent = &mut scratch.event;
    fill_header(&mut ev.header, EventKind::Exec as u32, m, o);
    ev.syscall = 0;
    ev.dirfd = 0;
    ev.open_flags = 0;
    ev.mode = 0;
    ev.result = 0;
    ev.path_len = 0;
    ev.dir_len = 0;
    let mm: u64 = read(current_task(), o.task_mm);
    let exe: u64 = read(mm, o.mm_exe_file);
    let mut len = 0usize;
    if exe == 0 {
        ev.header.flags |= FLAG_DIR_UNRESOLVED;
    } else {
        match walk_path(o, exe + o.file_path as u64, 0) {
            None => scratch.event.header.flags |= FLAG_DIR_UNRESOLVED,
            Some(w) => {
                len = w.len as usize & (DIR_CAPACITY - 1);
                if w.truncated {
                    scratch.event.header.flags |= FLAG_DIR_TRUNCATED;
                }
            }
        }
    }
    scratch.event.dir_len = len as u32;
    let total = core::mem::size_of::<FileEvent>() + len;
    submit(settings, (scratch as *const Scratch).cast(), total);
    Some(())
}

pub fn on_exit(settings: &Settings, m: &Match) {
    // SAFETY: all-zero is a valid ExitEvent.
    let mut ev: ExitEvent = unsafe { core::mem::zeroed() };
    fill_header(&mut ev.header, EventKind::Exit as u32, m, &settings.offsets);
    submit(
        settings,
        (&ev as *const ExitEvent).cast(),
        core::mem::size_of::<ExitEvent>(),
    );
}
