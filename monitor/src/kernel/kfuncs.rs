//! Kernel functions (kfuncs) for the programs. aya 0.14 cannot emit a kfunc
//! call, so the programs call a helper number no kernel has
//! (`monitor_common::KFUNC_MARK_*`, see `monitor-ebpf/src/kfunc.rs`) and
//! this module rewrites each such call in the object's code into the kfunc
//! call, with the kfunc's BTF id in the running kernel, before aya parses
//! the object. The ELF sections are found with the `object` crate; the
//! rewrite itself is one instruction field, no parser of its own.
use anyhow::Context as _;
use monitor_common::{CAST_TYPES, KFUNC_MARK_RDONLY_CAST};
use object::{Object as _, ObjectSection as _, SectionFlags, elf::SHF_EXECINSTR};

use crate::kernel::btf::Btf;

/// `BPF_JMP | BPF_CALL`.
const CALL: u8 = 0x85;
/// `BPF_LD | BPF_IMM | BPF_DW`: the one instruction two slots long.
const LOAD_IMM64: u8 = 0x18;
/// The source register field of a call to a kernel function
/// (`BPF_PSEUDO_KFUNC_CALL`), in the register byte's high nibble.
const KFUNC_CALL_REGS: u8 = 2 << 4;
const INSN: usize = 8;

/// The BTF ids the programs' kfunc calls need, from the running kernel.
#[derive(Clone, Debug)]
pub struct Kfuncs {
    /// `bpf_rdonly_cast` (kernel 6.2+); `None` before.
    pub rdonly_cast: Option<u32>,
    /// Each read-only global of `CAST_TYPES` with its struct's id, for the
    /// structs the kernel's BTF has.
    pub cast_types: Vec<(&'static str, u32)>,
    /// A struct whose first member is an 8-byte integer: any kernel
    /// address cast to it reads the word there as a plain number
    /// (`kfunc::word_at`); `None` if the kernel has none of those known.
    pub word_slot: Option<u32>,
}

/// Structs whose first member has long been an 8-byte integer.
const WORD_SLOT_TYPES: [(&str, &str); 2] =
    [("timespec64", "tv_sec"), ("__kernel_timespec", "tv_sec")];

impl Kfuncs {
    pub fn from_btf(btf: &Btf) -> Kfuncs {
        Kfuncs {
            rdonly_cast: btf.function_id("bpf_rdonly_cast"),
            cast_types: CAST_TYPES
                .iter()
                .filter_map(|&(global, name)| match btf.composite_id(name) {
                    Ok(id) => Some((global, id)),
                    Err(e) => {
                        log::debug!("no BTF id for struct {name} ({e}): no typed reads");
                        None
                    }
                })
                .collect(),
            word_slot: WORD_SLOT_TYPES
                .iter()
                .find_map(|(ty, member)| btf.word_member_at_start(ty, member)),
        }
    }

    /// Whether the BTF tracepoint's typed reads can be loaded: else the
    /// syscall hook is the raw tracepoint, as on kernels without the kfunc.
    pub fn casts_available(&self) -> bool {
        self.rdonly_cast.is_some()
            && self.word_slot.is_some()
            && self.cast_types.len() == CAST_TYPES.len()
    }
}

/// `object` with every marked call rewritten into its kfunc call, and how
/// many were. Without the kfunc the marks stay as they are: only the BTF
/// tracepoint has them, and the loader does not load it then.
pub fn patch(object: &[u8], kfuncs: &Kfuncs) -> anyhow::Result<(Vec<u8>, usize)> {
    let mut patched = object.to_vec();
    let Some(rdonly_cast) = kfuncs.rdonly_cast else {
        return Ok((patched, 0));
    };
    let file = object::File::parse(object).context("parsing the kernel object")?;
    let mut sites = 0;
    for section in file.sections() {
        let executable = matches!(section.flags(), SectionFlags::Elf { sh_flags } if sh_flags & u64::from(SHF_EXECINSTR) != 0);
        let Some((start, size)) = section.file_range().filter(|_| executable) else {
            continue;
        };
        let range = usize::try_from(start)?..usize::try_from(start + size)?;
        let code = patched
            .get_mut(range)
            .context("a code section lies outside the kernel object")?;
        sites += rewrite_calls(code, KFUNC_MARK_RDONLY_CAST, rdonly_cast);
    }
    Ok((patched, sites))
}

/// Rewrites each helper call of number `mark` in `code` (BPF instructions)
/// into a call of the kernel function `btf_id`; returns how many.
fn rewrite_calls(code: &mut [u8], mark: i32, btf_id: u32) -> usize {
    let mut sites = 0;
    let mut at = 0;
    while at + INSN <= code.len() {
        let insn = &mut code[at..at + INSN];
        let imm = i32::from_le_bytes([insn[4], insn[5], insn[6], insn[7]]);
        let step = if insn[0] == LOAD_IMM64 {
            2 * INSN
        } else {
            INSN
        };
        if insn[0] == CALL && insn[1] == 0 && imm == mark {
            insn[1] = KFUNC_CALL_REGS;
            insn[4..8].copy_from_slice(&btf_id.to_le_bytes());
            sites += 1;
        }
        at += step;
    }
    sites
}

#[cfg(test)]
mod tests {
    use super::*;

    fn insn(code: u8, regs: u8, imm: i32) -> [u8; 8] {
        let mut i = [code, regs, 0, 0, 0, 0, 0, 0];
        i[4..].copy_from_slice(&imm.to_le_bytes());
        i
    }

    #[test]
    fn marked_helper_calls_become_kfunc_calls_and_nothing_else_changes() {
        let mark = KFUNC_MARK_RDONLY_CAST;
        let helper = insn(CALL, 0, 113); // bpf_probe_read_kernel
        let subprogram = insn(CALL, 0x10, mark); // a pseudo call: not ours
        let marked = insn(CALL, 0, mark);
        // A 64-bit immediate load whose second slot looks like a marked call.
        let wide = [insn(LOAD_IMM64, 1, 0), insn(CALL, 0, mark)];
        let mut code: Vec<u8> = [helper, marked, subprogram, wide[0], wide[1], marked].concat();
        let before = code.clone();
        assert_eq!(rewrite_calls(&mut code, mark, 65504), 2);
        let kfunc = insn(CALL, KFUNC_CALL_REGS, 65504);
        assert_eq!(&code[8..16], &kfunc);
        assert_eq!(&code[40..48], &kfunc);
        assert_eq!(&code[..8], &before[..8]);
        assert_eq!(&code[16..40], &before[16..40]);
    }

    #[test]
    fn the_built_object_has_marked_calls_and_none_survive_the_patch() {
        let object = crate::ebpf_object();
        if object.is_empty() {
            panic!("this test needs the kernel object (built without MONITOR_SKIP_EBPF_BUILD)");
        }
        let kfuncs = Kfuncs {
            rdonly_cast: Some(65504),
            cast_types: vec![("BTF_ID_STRUCT_FILE", 1)],
            word_slot: Some(2),
        };
        let (patched, sites) = patch(object, &kfuncs).unwrap();
        assert!(sites > 0, "no marked call in the kernel object");
        let (_, again) = patch(&patched, &kfuncs).unwrap();
        assert_eq!(again, 0, "a marked call survived the patch");
        let none = Kfuncs {
            rdonly_cast: None,
            ..kfuncs.clone()
        };
        assert_eq!(patch(object, &none).unwrap(), (object.to_vec(), 0));
    }

    #[test]
    fn typed_reads_need_the_kfunc_the_slot_type_and_every_cast_type() {
        let all = Kfuncs {
            rdonly_cast: Some(7),
            cast_types: CAST_TYPES.iter().map(|&(global, _)| (global, 1)).collect(),
            word_slot: Some(2),
        };
        assert!(all.casts_available());
        let mut one_short = all.clone();
        one_short.cast_types.pop();
        assert!(!one_short.casts_available());
        assert!(
            !Kfuncs {
                word_slot: None,
                ..all.clone()
            }
            .casts_available()
        );
        assert!(
            !Kfuncs {
                rdonly_cast: None,
                ..all
            }
            .casts_available()
        );
    }
}
