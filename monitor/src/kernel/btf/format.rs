//! A reader of raw BTF (`/sys/kernel/btf/vmlinux`, kernel
//! `Documentation/bpf/btf.rst`): one pass records where each type starts;
//! a type is decoded only when asked for.
//!
//! Hand-written, though crates exist: the two measured decode all of
//! vmlinux's ~127,000 types into owned values before the first lookup.
//! btfparse 1.3 took 165 ms and btf-rs 2.0 70 ms (release builds, this
//! machine, kernel 6.18) of a 370 ms `monitor exec` start, and the start
//! waits for it: the programs load with the offsets found. This reader's
//! pass takes a few ms. It is checked type by type, member by member,
//! against btfparse on the running kernel (`agrees_with_btfparse_on_the_
//! running_kernel`, btfparse a dev-dependency).
use std::ops::Range;

/// `struct btf_header` up to and including `str_len`.
const HEADER_LEN: usize = 24;
const MAGIC: u16 = 0xEB9F;
/// `struct btf_type`: name_off, info, size/type.
const TYPE_LEN: usize = 12;

/// BTF kinds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Int,
    Ptr,
    Array,
    Struct,
    Union,
    Enum,
    Fwd,
    Typedef,
    Volatile,
    Const,
    Restrict,
    Func,
    FuncProto,
    Var,
    DataSec,
    Float,
    DeclTag,
    TypeTag,
    Enum64,
}

impl Kind {
    fn from_number(n: u32) -> Option<Kind> {
        use Kind::*;
        const KINDS: [Kind; 19] = [
            Int, Ptr, Array, Struct, Union, Enum, Fwd, Typedef, Volatile, Const, Restrict, Func,
            FuncProto, Var, DataSec, Float, DeclTag, TypeTag, Enum64,
        ];
        KINDS.get(n.checked_sub(1)? as usize).copied()
    }

    /// Bytes that follow the common `struct btf_type` for `vlen` entries.
    fn extra_len(self, vlen: usize) -> usize {
        use Kind::*;
        match self {
            Int | Var | DeclTag => 4,
            Array => 12,
            Struct | Union | DataSec | Enum64 => 12 * vlen,
            Enum | FuncProto => 8 * vlen,
            Ptr | Fwd | Typedef | Volatile | Const | Restrict | Func | Float | TypeTag => 0,
        }
    }

    pub fn name(self) -> &'static str {
        use Kind::*;
        match self {
            Int => "int",
            Ptr => "pointer",
            Array => "array",
            Struct => "struct",
            Union => "union",
            Enum => "enum",
            Fwd => "forward declaration",
            Typedef => "typedef",
            Volatile => "volatile",
            Const => "const",
            Restrict => "restrict",
            Func => "function",
            FuncProto => "function prototype",
            Var => "variable",
            DataSec => "data section",
            Float => "float",
            DeclTag => "decl tag",
            TypeTag => "type tag",
            Enum64 => "enum64",
        }
    }
}

/// Raw BTF and where each of its types starts.
pub struct RawBtf {
    data: Vec<u8>,
    strings: Range<usize>,
    /// Byte position in `data` of type id `i + 1` (id 0 is void).
    starts: Vec<u32>,
}

/// One type, decoded.
#[derive(Clone, Copy)]
pub struct Type<'a> {
    pub kind: Kind,
    pub name_off: u32,
    info: u32,
    /// `size` for ints, structs, unions, enums; the referenced type id for
    /// pointers, modifiers, typedefs and functions.
    pub size_or_type: u32,
    extra: &'a [u8],
}

/// Where a member sits in its struct or union.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Offset {
    Bytes(u32),
    /// A bitfield, or a member not on a byte boundary.
    Bits {
        offset: u32,
        size: u32,
    },
}

#[derive(Clone, Copy, Debug)]
pub struct Member {
    pub name_off: u32,
    pub type_id: u32,
    pub offset: Offset,
}

fn word(bytes: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
}

impl RawBtf {
    /// Checks the header and finds every type; `Err` says what is wrong.
    pub fn parse(data: Vec<u8>) -> Result<RawBtf, String> {
        let short = || "shorter than its header".to_owned();
        let magic = u16::from_le_bytes(data.get(0..2).ok_or_else(short)?.try_into().unwrap());
        if magic != MAGIC {
            return Err(format!("bad magic {magic:#06x} (little-endian BTF only)"));
        }
        let field = |i: usize| word(&data, 4 + 4 * i).map(|w| w as usize).ok_or_else(short);
        let (hdr_len, type_off, type_len) = (field(0)?, field(1)?, field(2)?);
        let (str_off, str_len) = (field(3)?, field(4)?);
        if hdr_len < HEADER_LEN {
            return Err(format!("header of {hdr_len} bytes"));
        }
        let section = |off: usize, len: usize, what: &str| {
            let start = hdr_len.checked_add(off);
            let end = start.and_then(|s| s.checked_add(len));
            match (start, end) {
                (Some(start), Some(end)) if end <= data.len() => Ok(start..end),
                _ => Err(format!("{what} section past the end")),
            }
        };
        let types = section(type_off, type_len, "type")?;
        let strings = section(str_off, str_len, "string")?;
        let starts = type_starts(&data, types)?;
        Ok(RawBtf {
            data,
            strings,
            starts,
        })
    }

    /// The number of types (ids run from 1 to this).
    pub fn len(&self) -> u32 {
        self.starts.len() as u32
    }

    /// Type `id` (`None` for void, 0, and ids past the last).
    pub fn get(&self, id: u32) -> Option<Type<'_>> {
        let start = *self.starts.get((id as usize).checked_sub(1)?)? as usize;
        // Checked by `type_starts`: the record and its extra bytes fit.
        let info = word(&self.data, start + 4)?;
        let kind = Kind::from_number((info >> 24) & 0x1f)?;
        let extra_start = start + TYPE_LEN;
        let vlen = (info & 0xffff) as usize;
        Some(Type {
            kind,
            name_off: word(&self.data, start)?,
            info,
            size_or_type: word(&self.data, start + 8)?,
            extra: self
                .data
                .get(extra_start..extra_start + kind.extra_len(vlen))?,
        })
    }

    /// The string at `off` of the string section (`None` if it is not
    /// there or not UTF-8; BTF names are C identifiers).
    pub fn string(&self, off: u32) -> Option<&str> {
        let strings = self.data.get(self.strings.clone())?;
        let rest = strings.get(off as usize..)?;
        let end = rest.iter().position(|&b| b == 0)?;
        std::str::from_utf8(&rest[..end]).ok()
    }

    /// `ty`'s name; `None` when it has none.
    pub fn name_of(&self, ty: &Type<'_>) -> Option<&str> {
        self.string(ty.name_off).filter(|n| !n.is_empty())
    }
}

/// One pass over the type section: where each record starts, each checked
/// to fit with the bytes its kind and `vlen` say follow it.
fn type_starts(data: &[u8], types: Range<usize>) -> Result<Vec<u32>, String> {
    if types.end > u32::MAX as usize {
        return Err("type section beyond 4 GiB".to_owned());
    }
    let mut starts = Vec::with_capacity(types.len() / 24);
    let mut pos = types.start;
    while pos < types.end {
        let at = |what: &str| format!("type {} at byte {pos}: {what}", starts.len() + 1);
        if pos + TYPE_LEN > types.end {
            return Err(at("cut short"));
        }
        let info = word(data, pos + 4).ok_or_else(|| at("cut short"))?;
        let kind_number = (info >> 24) & 0x1f;
        let kind = Kind::from_number(kind_number)
            .ok_or_else(|| at(&format!("unknown kind {kind_number}")))?;
        let next = pos + TYPE_LEN + kind.extra_len((info & 0xffff) as usize);
        if next > types.end {
            return Err(at("its members run past the section"));
        }
        starts.push(pos as u32);
        pos = next;
    }
    Ok(starts)
}

impl Type<'_> {
    fn vlen(&self) -> usize {
        (self.info & 0xffff) as usize
    }

    fn kind_flag(&self) -> bool {
        self.info >> 31 != 0
    }

    /// A struct's or union's members (none for other kinds).
    pub fn members(&self) -> impl Iterator<Item = Member> + '_ {
        let is_composite = matches!(self.kind, Kind::Struct | Kind::Union);
        let count = if is_composite { self.vlen() } else { 0 };
        (0..count).filter_map(move |i| {
            let raw = word(self.extra, 12 * i + 8)?;
            let (bit_offset, size) = if self.kind_flag() {
                (raw & 0xff_ffff, raw >> 24)
            } else {
                (raw, 0)
            };
            let offset = if size == 0 && bit_offset % 8 == 0 {
                Offset::Bytes(bit_offset / 8)
            } else {
                Offset::Bits {
                    offset: bit_offset,
                    size,
                }
            };
            Some(Member {
                name_off: word(self.extra, 12 * i)?,
                type_id: word(self.extra, 12 * i + 4)?,
                offset,
            })
        })
    }

    /// Whether an int's value does not fill its storage: an old-style
    /// bitfield (before BTF's kind_flag). `false` for other kinds.
    pub fn is_partial_int(&self) -> bool {
        let Some(encoding) = word(self.extra, 0).filter(|_| self.kind == Kind::Int) else {
            return false;
        };
        let (bits, offset) = (encoding & 0xff, (encoding >> 16) & 0xff);
        offset != 0 || bits != self.size_or_type * 8
    }
}
