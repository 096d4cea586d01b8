//! Loading the programs on every CPU at once. A start is mostly the
//! kernel verifying the programs (`BPF_PROG_LOAD`, CPU-bound), and each
//! program is verified on its own, so threads cut the start's wall time,
//! not its CPU time. Attaching stays in order, afterwards (`loader`).
use std::{collections::VecDeque, sync::Mutex};

use aya::{
    Btf, Ebpf,
    programs::{Program, ProgramError},
};

/// The tracepoint the BTF syscall hook attaches to.
pub const SYSCALL_TRACEPOINT: &str = "sys_exit";

/// Loads the programs named in `names` (the slowest to verify first), on
/// up to one thread per CPU. One that fails stays unloaded: its attach step
/// loads it again and reports the kernel's refusal in context.
pub fn load_programs(ebpf: &mut Ebpf, names: &[&str], btf: Option<&Btf>) {
    let mut programs: Vec<(&str, &mut Program)> = ebpf
        .programs_mut()
        .filter(|(name, _)| names.contains(name))
        .collect();
    programs.sort_by_key(|(name, _)| names.iter().position(|n| n == name));
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(programs.len());
    let queue = Mutex::new(VecDeque::from(programs));
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| {
                loop {
                    let next = queue.lock().map(|mut q| q.pop_front());
                    let Ok(Some((name, program))) = next else {
                        break;
                    };
                    if let Err(error) = load(program, btf) {
                        log::debug!("loading {name} in parallel failed ({error}); it is retried when attached");
                    }
                }
            });
        }
    });
}

/// Loads one program of any type the monitor attaches at start.
fn load(program: &mut Program, btf: Option<&Btf>) -> Result<(), ProgramError> {
    match program {
        Program::RawTracePoint(p) => p.load(),
        Program::BtfTracePoint(p) => match btf {
            Some(btf) => p.load(SYSCALL_TRACEPOINT, btf),
            None => Ok(()),
        },
        Program::CgroupSockAddr(p) => p.load(),
        Program::CgroupSock(p) => p.load(),
        Program::CgroupSkb(p) => p.load(),
        _ => Ok(()),
    }
}
