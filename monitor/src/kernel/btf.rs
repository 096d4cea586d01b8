//! Kernel struct member offsets from the running kernel's BTF.
//!
//! The kernel programs are built with aya and cannot use CO-RE relocations,
//! so userspace looks up the byte offsets of the few kernel struct members
//! they dereference (e.g. `task_struct.real_parent`, `dentry.d_name`) in
//! `/sys/kernel/btf/vmlinux` and hands them to the programs.
//!
//! This is a small, self-contained parser of the raw BTF format (see the
//! kernel's `Documentation/bpf/btf.rst`). It makes one linear pass over the
//! type section, remembering where each type record starts and indexing the
//! names of structs and unions; member lookups then walk only the records
//! they need.

use std::collections::HashMap;
use std::fmt;
use std::io;

/// Where the running kernel exposes its own BTF.
pub const SYS_FS_VMLINUX: &str = "/sys/kernel/btf/vmlinux";

const BTF_MAGIC: u16 = 0xEB9F;
const BTF_VERSION: u8 = 1;
/// `struct btf_header` up to and including `str_len`.
const HEADER_LEN: usize = 24;
/// `struct btf_type`: name_off, info, size_or_type.
const TYPE_LEN: usize = 12;
/// `struct btf_member`: name_off, type, offset.
const MEMBER_LEN: usize = 12;
/// Bound on typedef/modifier chains and anonymous-member nesting, so that a
/// malformed (cyclic) blob cannot make a lookup loop forever.
const MAX_DEPTH: usize = 64;

mod kind {
    pub const INT: u32 = 1;
    pub const PTR: u32 = 2;
    pub const ARRAY: u32 = 3;
    pub const STRUCT: u32 = 4;
    pub const UNION: u32 = 5;
    pub const ENUM: u32 = 6;
    pub const FWD: u32 = 7;
    pub const TYPEDEF: u32 = 8;
    pub const VOLATILE: u32 = 9;
    pub const CONST: u32 = 10;
    pub const RESTRICT: u32 = 11;
    pub const FUNC: u32 = 12;
    pub const FUNC_PROTO: u32 = 13;
    pub const VAR: u32 = 14;
    pub const DATASEC: u32 = 15;
    pub const FLOAT: u32 = 16;
    pub const DECL_TAG: u32 = 17;
    pub const TYPE_TAG: u32 = 18;
    pub const ENUM64: u32 = 19;

    pub fn name(kind: u32) -> &'static str {
        match kind {
            0 => "void",
            INT => "int",
            PTR => "pointer",
            ARRAY => "array",
            STRUCT => "struct",
            UNION => "union",
            ENUM => "enum",
            FWD => "forward declaration",
            TYPEDEF => "typedef",
            VOLATILE => "volatile",
            CONST => "const",
            RESTRICT => "restrict",
            FUNC => "function",
            FUNC_PROTO => "function prototype",
            VAR => "variable",
            DATASEC => "data section",
            FLOAT => "float",
            DECL_TAG => "decl tag",
            TYPE_TAG => "type tag",
            ENUM64 => "enum64",
            _ => "unknown kind",
        }
    }
}

/// Errors from loading BTF or looking up a member offset in it.
#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    #[error(
        "kernel BTF is missing: {path} does not exist (the kernel must be built with \
         CONFIG_DEBUG_INFO_BTF=y)"
    )]
    Missing { path: String },

    #[error("cannot read kernel BTF from {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: io::Error,
    },

    #[error("not BTF data: magic is {magic:#06x}, expected 0xeb9f")]
    BadMagic { magic: u16 },

    #[error("BTF data is big-endian; only little-endian BTF is supported")]
    BigEndian,

    #[error("unsupported BTF version {version} (only version 1 is supported)")]
    UnsupportedVersion { version: u8 },

    #[error("malformed BTF: {0}")]
    Malformed(String),

    #[error("BTF has no struct or union named `{type_name}`")]
    TypeNotFound { type_name: String },

    #[error("`{path}`: empty member name in the path")]
    EmptyMember { path: String },

    #[error("`{path}`: {container} has no member `{member}`")]
    MemberNotFound {
        /// The whole lookup, `type_name.member_path`.
        path: String,
        container: String,
        member: String,
    },

    #[error("`{path}`: member `{member}` of {container} is a bitfield, which has no byte offset")]
    Bitfield {
        path: String,
        container: String,
        member: String,
    },

    #[error(
        "`{path}`: member `{member}` of {container} is a {kind}, not a struct or union, so \
         `{next}` cannot be looked up inside it"
    )]
    NotComposite {
        path: String,
        container: String,
        member: String,
        kind: &'static str,
        next: String,
    },

    #[error("`{path}`: offset of {bits} bits does not fit in a u32 byte offset")]
    OffsetOverflow { path: String, bits: u64 },
}

/// Parsed BTF: the raw bytes plus an index of type records and of
/// struct/union names.
pub struct Btf {
    data: Vec<u8>,
    /// Absolute offset of the string section in `data`.
    str_start: usize,
    /// Length of the string section.
    str_len: usize,
    /// Absolute offset in `data` of the record of each type id; index 0 is
    /// the implicit `void` and holds a dummy value.
    type_offsets: Vec<usize>,
    /// Struct/union name → (type id, preference rank; lower is better).
    composites: HashMap<String, (u32, u8)>,
}

impl fmt::Debug for Btf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Btf")
            .field("bytes", &self.data.len())
            .field("types", &(self.type_offsets.len() - 1))
            .field("named_structs_and_unions", &self.composites.len())
            .finish()
    }
}

/// One `btf_type` record, decoded.
#[derive(Clone, Copy, Debug)]
struct TypeRec {
    id: u32,
    name_off: u32,
    kind: u32,
    vlen: usize,
    kind_flag: bool,
    size_or_type: u32,
    /// Absolute offset of the kind-specific data following the record.
    extra: usize,
}

impl TypeRec {
    fn is_composite(&self) -> bool {
        self.kind == kind::STRUCT || self.kind == kind::UNION
    }
}

/// A member found by name, possibly inside anonymous members.
struct Found {
    /// Bit offset from the start of the containing struct/union.
    bit_offset: u64,
    /// Bitfield size in bits (0 for an ordinary member).
    bitfield_size: u32,
    type_id: u32,
}

fn malformed(msg: impl Into<String>) -> BtfError {
    BtfError::Malformed(msg.into())
}

fn read_u32(data: &[u8], off: usize) -> Option<u32> {
    let bytes = data.get(off..off.checked_add(4)?)?;
    Some(u32::from_le_bytes(bytes.try_into().ok()?))
}

/// Size of the kind-specific data that follows a `btf_type` record.
fn extra_len(kind: u32, vlen: usize) -> Option<usize> {
    Some(match kind {
        kind::INT => 4,
        kind::ARRAY => 12,
        kind::STRUCT | kind::UNION => 12 * vlen,
        kind::ENUM => 8 * vlen,
        kind::FUNC_PROTO => 8 * vlen,
        kind::VAR => 4,
        kind::DATASEC => 12 * vlen,
        kind::DECL_TAG => 4,
        kind::ENUM64 => 12 * vlen,
        kind::PTR
        | kind::FWD
        | kind::TYPEDEF
        | kind::VOLATILE
        | kind::CONST
        | kind::RESTRICT
        | kind::FUNC
        | kind::FLOAT
        | kind::TYPE_TAG => 0,
        _ => return None,
    })
}

impl Btf {
    /// Parses raw BTF (as found in `/sys/kernel/btf/vmlinux` or a `.BTF`
    /// ELF section).
    pub fn from_bytes(data: Vec<u8>) -> Result<Btf, BtfError> {
        if data.len() < HEADER_LEN {
            return Err(malformed(format!(
                "{} bytes is too short for the {HEADER_LEN}-byte header",
                data.len()
            )));
        }
        let magic = u16::from_le_bytes([data[0], data[1]]);
        if magic != BTF_MAGIC {
            if magic == BTF_MAGIC.swap_bytes() {
                return Err(BtfError::BigEndian);
            }
            return Err(BtfError::BadMagic { magic });
        }
        let version = data[2];
        if version != BTF_VERSION {
            return Err(BtfError::UnsupportedVersion { version });
        }
        let field = |off: usize| read_u32(&data, off).unwrap_or(0) as usize;
        let hdr_len = field(4);
        let type_off = field(8);
        let type_len = field(12);
        let str_off = field(16);
        let str_len = field(20);
        if hdr_len < HEADER_LEN || hdr_len > data.len() {
            return Err(malformed(format!(
                "header length {hdr_len} is out of range (data is {} bytes)",
                data.len()
            )));
        }
        let section = |name: &str, off: usize, len: usize| -> Result<usize, BtfError> {
            let start = hdr_len.checked_add(off);
            match start.and_then(|s| s.checked_add(len)) {
                Some(end) if end <= data.len() => Ok(hdr_len + off),
                _ => Err(malformed(format!(
                    "{name} section (offset {off}, length {len}) lies outside the {} bytes of data",
                    data.len()
                ))),
            }
        };
        let type_start = section("type", type_off, type_len)?;
        let str_start = section("string", str_off, str_len)?;
        if type_len % 4 != 0 {
            return Err(malformed(format!(
                "type section length {type_len} is not a multiple of 4"
            )));
        }
        if str_len > 0 && data[str_start] != 0 {
            return Err(malformed(
                "string section does not start with an empty string",
            ));
        }

        let mut btf = Btf {
            data: Vec::new(),
            str_start,
            str_len,
            // Roughly one type per 40 bytes on vmlinux; avoids most regrowth.
            type_offsets: Vec::with_capacity(type_len / 32 + 1),
            composites: HashMap::new(),
        };
        btf.type_offsets.push(0); // id 0: void

        let type_end = type_start + type_len;
        let mut pos = type_start;
        while pos < type_end {
            let id = btf.type_offsets.len();
            if pos + TYPE_LEN > type_end {
                return Err(malformed(format!(
                    "type {id} at section offset {} is truncated",
                    pos - type_start
                )));
            }
            let info = read_u32(&data, pos + 4).unwrap_or(0);
            let kind = (info >> 24) & 0x1f;
            let vlen = (info & 0xffff) as usize;
            let extra = extra_len(kind, vlen)
                .ok_or_else(|| malformed(format!("type {id} has unknown kind {kind}")))?;
            let next = pos + TYPE_LEN + extra;
            if next > type_end {
                return Err(malformed(format!(
                    "type {id} ({}) runs past the end of the type section",
                    kind::name(kind)
                )));
            }
            btf.type_offsets.push(pos);
            pos = next;
        }
        if btf.type_offsets.len() > u32::MAX as usize {
            return Err(malformed("too many types"));
        }
        btf.data = data;
        btf.index_composites();
        Ok(btf)
    }

    /// Reads and parses the running kernel's BTF from
    /// `/sys/kernel/btf/vmlinux`.
    pub fn from_sys_fs() -> Result<Btf, BtfError> {
        let data = std::fs::read(SYS_FS_VMLINUX).map_err(|source| {
            if source.kind() == io::ErrorKind::NotFound {
                BtfError::Missing {
                    path: SYS_FS_VMLINUX.to_owned(),
                }
            } else {
                BtfError::Read {
                    path: SYS_FS_VMLINUX.to_owned(),
                    source,
                }
            }
        })?;
        Btf::from_bytes(data)
    }

    /// Byte offset of `member_path` (dot-separated, e.g. "pwd.dentry" or
    /// "d_name.name") inside the struct or union named `type_name`.
    ///
    /// Members inside anonymous struct/union members are found
    /// transparently (e.g. qstr's `len` lives in an anonymous
    /// union->struct; task_struct fields may be in anonymous structs);
    /// intermediate members are followed through
    /// typedef/const/volatile/restrict/type_tag to their struct/union.
    /// Bitfield members are an error (not byte-addressable). Pointers are
    /// never followed: every step of the path must be embedded in its
    /// parent.
    pub fn member_offset(&self, type_name: &str, member_path: &str) -> Result<u32, BtfError> {
        let &(root_id, _) =
            self.composites
                .get(type_name)
                .ok_or_else(|| BtfError::TypeNotFound {
                    type_name: type_name.to_owned(),
                })?;
        let full_path = || format!("{type_name}.{member_path}");
        let mut container = self.type_rec(root_id)?;
        let mut total_bits: u64 = 0;
        let mut parts = member_path.split('.').peekable();
        while let Some(member) = parts.next() {
            if member.is_empty() {
                return Err(BtfError::EmptyMember { path: full_path() });
            }
            let found = self.find_member(container, member, 0)?.ok_or_else(|| {
                BtfError::MemberNotFound {
                    path: full_path(),
                    container: self.describe(container),
                    member: member.to_owned(),
                }
            })?;
            if found.bitfield_size != 0
                || found.bit_offset % 8 != 0
                || self.is_legacy_bitfield(found.type_id)?
            {
                return Err(BtfError::Bitfield {
                    path: full_path(),
                    container: self.describe(container),
                    member: member.to_owned(),
                });
            }
            total_bits += found.bit_offset;
            if let Some(&next) = parts.peek() {
                let target = self.skip_modifiers(found.type_id)?;
                match target {
                    Some(rec) if rec.is_composite() => container = rec,
                    other => {
                        return Err(BtfError::NotComposite {
                            path: full_path(),
                            container: self.describe(container),
                            member: member.to_owned(),
                            kind: kind::name(other.map_or(0, |r| r.kind)),
                            next: next.to_owned(),
                        });
                    }
                }
            }
        }
        u32::try_from(total_bits / 8).map_err(|_| BtfError::OffsetOverflow {
            path: full_path(),
            bits: total_bits,
        })
    }

    /// Fills `composites`: for each struct/union name, the best candidate
    /// is a non-empty STRUCT, then a non-empty UNION, then empty ones; ties
    /// go to the lowest id. (FWD records are never indexed.)
    fn index_composites(&mut self) {
        let mut composites: HashMap<String, (u32, u8)> = HashMap::new();
        for id in 1..self.type_offsets.len() as u32 {
            let rec = self.rec_unchecked(id);
            if !rec.is_composite() || rec.name_off == 0 {
                continue;
            }
            let Some(name) = self.str_at(rec.name_off) else {
                continue;
            };
            if name.is_empty() {
                continue;
            }
            let rank = match (rec.kind == kind::STRUCT, rec.vlen > 0) {
                (true, true) => 0,
                (false, true) => 1,
                (true, false) => 2,
                (false, false) => 3,
            };
            match composites.get_mut(name) {
                Some(entry) => {
                    if rank < entry.1 {
                        *entry = (id, rank);
                    }
                }
                None => {
                    composites.insert(name.to_owned(), (id, rank));
                }
            }
        }
        self.composites = composites;
    }

    /// Decodes the record of `id`, which must be a valid non-void id.
    fn rec_unchecked(&self, id: u32) -> TypeRec {
        let pos = self.type_offsets[id as usize];
        // Bounds were checked while parsing.
        let word = |off: usize| read_u32(&self.data, pos + off).unwrap_or(0);
        let info = word(4);
        TypeRec {
            id,
            name_off: word(0),
            kind: (info >> 24) & 0x1f,
            vlen: (info & 0xffff) as usize,
            kind_flag: info >> 31 != 0,
            size_or_type: word(8),
            extra: pos + TYPE_LEN,
        }
    }

    /// The record of `id`; `None` for void (id 0).
    fn type_opt(&self, id: u32) -> Result<Option<TypeRec>, BtfError> {
        if id == 0 {
            return Ok(None);
        }
        if id as usize >= self.type_offsets.len() {
            return Err(malformed(format!(
                "reference to type id {id}, but there are only {} types",
                self.type_offsets.len() - 1
            )));
        }
        Ok(Some(self.rec_unchecked(id)))
    }

    fn type_rec(&self, id: u32) -> Result<TypeRec, BtfError> {
        self.type_opt(id)?
            .ok_or_else(|| malformed("unexpected reference to void"))
    }

    /// Follows typedef/const/volatile/restrict/type_tag to the underlying
    /// type; `None` means void.
    fn skip_modifiers(&self, mut id: u32) -> Result<Option<TypeRec>, BtfError> {
        for _ in 0..MAX_DEPTH {
            let Some(rec) = self.type_opt(id)? else {
                return Ok(None);
            };
            match rec.kind {
                kind::TYPEDEF | kind::VOLATILE | kind::CONST | kind::RESTRICT | kind::TYPE_TAG => {
                    id = rec.size_or_type;
                }
                _ => return Ok(Some(rec)),
            }
        }
        Err(malformed(format!(
            "type chain starting at id {id} is longer than {MAX_DEPTH} (cycle?)"
        )))
    }

    /// Looks for `name` among the members of `container`, descending into
    /// anonymous struct/union members.
    fn find_member(
        &self,
        container: TypeRec,
        name: &str,
        depth: usize,
    ) -> Result<Option<Found>, BtfError> {
        if depth > MAX_DEPTH {
            return Err(malformed(format!(
                "anonymous members nested deeper than {MAX_DEPTH} below type {} (cycle?)",
                container.id
            )));
        }
        for i in 0..container.vlen {
            let m = container.extra + i * MEMBER_LEN;
            let name_off = read_u32(&self.data, m).unwrap_or(0);
            let type_id = read_u32(&self.data, m + 4).unwrap_or(0);
            let raw_offset = read_u32(&self.data, m + 8).unwrap_or(0);
            let (bit_offset, bitfield_size) = if container.kind_flag {
                (raw_offset & 0x00ff_ffff, raw_offset >> 24)
            } else {
                (raw_offset, 0)
            };
            let member_name = self.str_at(name_off).unwrap_or("");
            if member_name.is_empty() {
                if bitfield_size != 0 {
                    continue; // unnamed padding bitfield
                }
                if let Some(inner) = self.skip_modifiers(type_id)?
                    && inner.is_composite()
                    && let Some(found) = self.find_member(inner, name, depth + 1)?
                {
                    return Ok(Some(Found {
                        bit_offset: found.bit_offset + u64::from(bit_offset),
                        ..found
                    }));
                }
            } else if member_name == name {
                return Ok(Some(Found {
                    bit_offset: u64::from(bit_offset),
                    bitfield_size,
                    type_id,
                }));
            }
        }
        Ok(None)
    }

    /// Old-style bitfields (struct without kind_flag) are encoded in the
    /// member's INT type: a bit offset or a bit count narrower than the
    /// int's size.
    fn is_legacy_bitfield(&self, type_id: u32) -> Result<bool, BtfError> {
        let Some(rec) = self.skip_modifiers(type_id)? else {
            return Ok(false);
        };
        if rec.kind != kind::INT {
            return Ok(false);
        }
        let encoding = read_u32(&self.data, rec.extra).unwrap_or(0);
        let bits = encoding & 0xff;
        let offset = (encoding >> 16) & 0xff;
        Ok(offset != 0 || u64::from(bits) != u64::from(rec.size_or_type) * 8)
    }

    /// The NUL-terminated string at `off` in the string section.
    fn str_at(&self, off: u32) -> Option<&str> {
        let off = off as usize;
        if off >= self.str_len {
            return None;
        }
        let section = &self.data[self.str_start + off..self.str_start + self.str_len];
        let end = section.iter().position(|&b| b == 0)?;
        std::str::from_utf8(&section[..end]).ok()
    }

    /// "struct foo", "union bar" or "anonymous struct (type id N)".
    fn describe(&self, rec: TypeRec) -> String {
        let what = kind::name(rec.kind);
        match self.str_at(rec.name_off) {
            Some(name) if !name.is_empty() => format!("{what} {name}"),
            _ => format!("anonymous {what} (BTF type id {})", rec.id),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds raw little-endian BTF blobs by hand.
    struct Builder {
        types: Vec<u8>,
        strings: Vec<u8>,
        next_id: u32,
    }

    /// (name, type id, bit offset, bitfield size)
    type Member<'a> = (&'a str, u32, u32, u32);

    impl Builder {
        fn new() -> Self {
            Builder {
                types: Vec::new(),
                strings: vec![0],
                next_id: 1,
            }
        }

        fn s(&mut self, name: &str) -> u32 {
            if name.is_empty() {
                return 0;
            }
            let off = self.strings.len() as u32;
            self.strings.extend_from_slice(name.as_bytes());
            self.strings.push(0);
            off
        }

        fn words(&mut self, words: &[u32]) {
            for w in words {
                self.types.extend_from_slice(&w.to_le_bytes());
            }
        }

        fn header(&mut self, name: &str, kind: u32, vlen: u32, kind_flag: bool, sot: u32) -> u32 {
            let name_off = self.s(name);
            let info = (u32::from(kind_flag) << 31) | (kind << 24) | vlen;
            self.words(&[name_off, info, sot]);
            let id = self.next_id;
            self.next_id += 1;
            id
        }

        fn int(&mut self, name: &str, size: u32, bits: u32, bit_off: u32) -> u32 {
            let id = self.header(name, kind::INT, 0, false, size);
            self.words(&[(bit_off << 16) | bits]);
            id
        }

        fn ptr(&mut self, to: u32) -> u32 {
            self.header("", kind::PTR, 0, false, to)
        }

        fn modifier(&mut self, kind: u32, name: &str, to: u32) -> u32 {
            self.header(name, kind, 0, false, to)
        }

        fn fwd(&mut self, name: &str) -> u32 {
            self.header(name, kind::FWD, 0, false, 0)
        }

        fn array(&mut self, elem: u32, index: u32, n: u32) -> u32 {
            let id = self.header("", kind::ARRAY, 0, false, 0);
            self.words(&[elem, index, n]);
            id
        }

        fn enumeration(&mut self, name: &str, values: &[(&str, u32)]) -> u32 {
            let id = self.header(name, kind::ENUM, values.len() as u32, false, 4);
            for &(n, v) in values {
                let off = self.s(n);
                self.words(&[off, v]);
            }
            id
        }

        fn composite(
            &mut self,
            kind: u32,
            name: &str,
            size: u32,
            kind_flag: bool,
            members: &[Member<'_>],
        ) -> u32 {
            let id = self.header(name, kind, members.len() as u32, kind_flag, size);
            for &(n, ty, bit_off, bits) in members {
                let off = self.s(n);
                let offset = if kind_flag {
                    (bits << 24) | bit_off
                } else {
                    bit_off
                };
                self.words(&[off, ty, offset]);
            }
            id
        }

        fn build(&self) -> Vec<u8> {
            let mut out = Vec::new();
            out.extend_from_slice(&BTF_MAGIC.to_le_bytes());
            out.push(1); // version
            out.push(0); // flags
            let type_len = self.types.len() as u32;
            for w in [
                HEADER_LEN as u32,
                0,
                type_len,
                type_len,
                self.strings.len() as u32,
            ] {
                out.extend_from_slice(&w.to_le_bytes());
            }
            out.extend_from_slice(&self.types);
            out.extend_from_slice(&self.strings);
            out
        }
    }

    /// ```c
    /// struct inner { int a; long b; };               // size 16
    /// typedef struct inner inner_t;
    /// struct outer {                                 // kind_flag set
    ///     int x;                                     // 0
    ///     union {                                    // 8
    ///         struct { int len; int hash; };         // 8, 12
    ///         long hash_len;                         // 8
    ///     };
    ///     const inner_t nested;                      // 16 (a 16, b 24)
    ///     unsigned flag : 3;                         // bit 256
    ///     unsigned : 5;                              // unnamed padding
    ///     char *name;                                // 40
    ///     int arr[4];                                // 48
    ///     volatile struct inner *ip;                 // 64
    /// };
    /// union u { int i; struct inner in; };
    /// struct legacy { unsigned lo : 4; int whole; }; // old-style bitfield
    /// ```
    /// plus a FWD `outer` and an empty STRUCT `outer` before the real one.
    fn sample() -> Btf {
        let mut b = Builder::new();
        let fwd = b.fwd("outer");
        let empty = b.composite(kind::STRUCT, "outer", 0, false, &[]);
        assert_eq!((fwd, empty), (1, 2));
        let int = b.int("int", 4, 32, 0);
        let long = b.int("long", 8, 64, 0);
        let uint = b.int("unsigned int", 4, 32, 0);
        let chr = b.int("char", 1, 8, 0);
        let inner = b.composite(
            kind::STRUCT,
            "inner",
            16,
            false,
            &[("a", int, 0, 0), ("b", long, 64, 0)],
        );
        let inner_t = b.modifier(kind::TYPEDEF, "inner_t", inner);
        let const_inner_t = b.modifier(kind::CONST, "", inner_t);
        let anon_struct = b.composite(
            kind::STRUCT,
            "",
            8,
            false,
            &[("len", int, 0, 0), ("hash", int, 32, 0)],
        );
        let anon_union = b.composite(
            kind::UNION,
            "",
            8,
            false,
            &[("", anon_struct, 0, 0), ("hash_len", long, 0, 0)],
        );
        let char_ptr = b.ptr(chr);
        let arr = b.array(int, int, 4);
        let vol_inner = b.modifier(kind::VOLATILE, "", inner);
        let inner_ptr = b.ptr(vol_inner);
        b.enumeration("colour", &[("RED", 0), ("GREEN", 1)]);
        b.composite(
            kind::STRUCT,
            "outer",
            72,
            true,
            &[
                ("x", int, 0, 0),
                ("", anon_union, 64, 0),
                ("nested", const_inner_t, 128, 0),
                ("flag", uint, 256, 3),
                ("", uint, 259, 5),
                ("name", char_ptr, 320, 0),
                ("arr", arr, 384, 0),
                ("ip", inner_ptr, 512, 0),
            ],
        );
        b.composite(
            kind::UNION,
            "u",
            16,
            false,
            &[("i", int, 0, 0), ("in", inner, 0, 0)],
        );
        let nibble = b.int("unsigned int", 4, 4, 0);
        b.composite(
            kind::STRUCT,
            "legacy",
            8,
            false,
            &[("lo", nibble, 0, 0), ("whole", int, 32, 0)],
        );
        // A later, non-empty duplicate must not win over the first one.
        b.composite(kind::STRUCT, "inner", 4, false, &[("zz", int, 0, 0)]);
        Btf::from_bytes(b.build()).expect("sample BTF parses")
    }

    #[test]
    fn offsets_in_hand_built_btf() {
        let btf = sample();
        let off = |t: &str, m: &str| btf.member_offset(t, m).unwrap();
        assert_eq!(off("outer", "x"), 0);
        assert_eq!(off("outer", "len"), 8);
        assert_eq!(off("outer", "hash"), 12);
        assert_eq!(off("outer", "hash_len"), 8);
        assert_eq!(off("outer", "nested"), 16);
        assert_eq!(off("outer", "nested.a"), 16);
        assert_eq!(off("outer", "nested.b"), 24);
        assert_eq!(off("outer", "name"), 40);
        assert_eq!(off("outer", "arr"), 48);
        assert_eq!(off("outer", "ip"), 64);
        assert_eq!(off("inner", "b"), 8);
        assert_eq!(off("u", "in.b"), 8);
        assert_eq!(off("legacy", "whole"), 4);
    }

    fn err(btf: &Btf, t: &str, m: &str) -> BtfError {
        btf.member_offset(t, m).unwrap_err()
    }

    #[test]
    fn lookup_errors_name_the_culprit() {
        let btf = sample();

        let e = err(&btf, "nope", "x");
        assert!(matches!(e, BtfError::TypeNotFound { .. }), "{e:?}");
        assert!(e.to_string().contains("`nope`"), "{e}");

        // Typedefs and enums are not indexed.
        assert!(matches!(
            err(&btf, "inner_t", "a"),
            BtfError::TypeNotFound { .. }
        ));
        assert!(matches!(
            err(&btf, "colour", "RED"),
            BtfError::TypeNotFound { .. }
        ));

        let e = err(&btf, "outer", "missing");
        assert!(matches!(e, BtfError::MemberNotFound { .. }), "{e:?}");
        let msg = e.to_string();
        assert!(
            msg.contains("struct outer") && msg.contains("`missing`"),
            "{msg}"
        );

        let e = err(&btf, "outer", "nested.zz");
        let msg = e.to_string();
        assert!(
            msg.contains("struct inner") && msg.contains("`zz`"),
            "{msg}"
        );

        let e = err(&btf, "outer", "flag");
        assert!(matches!(e, BtfError::Bitfield { .. }), "{e:?}");
        assert!(e.to_string().contains("`flag`"), "{e}");
        let e = err(&btf, "legacy", "lo");
        assert!(matches!(e, BtfError::Bitfield { .. }), "{e:?}");

        // Descending through a scalar, an array or a pointer is refused.
        let e = err(&btf, "outer", "x.y");
        assert!(matches!(e, BtfError::NotComposite { .. }), "{e:?}");
        assert!(e.to_string().contains("`x`") && e.to_string().contains("`y`"));
        assert!(matches!(
            err(&btf, "outer", "arr.a"),
            BtfError::NotComposite { kind: "array", .. }
        ));
        let e = err(&btf, "outer", "ip.b");
        assert!(
            matches!(
                e,
                BtfError::NotComposite {
                    kind: "pointer",
                    ..
                }
            ),
            "{e:?}"
        );

        assert!(matches!(
            err(&btf, "outer", ""),
            BtfError::EmptyMember { .. }
        ));
        assert!(matches!(
            err(&btf, "outer", "nested..a"),
            BtfError::EmptyMember { .. }
        ));
    }

    #[test]
    fn rejects_bad_blobs() {
        let good = {
            let mut b = Builder::new();
            let int = b.int("int", 4, 32, 0);
            b.composite(kind::STRUCT, "s", 4, false, &[("i", int, 0, 0)]);
            b.build()
        };
        assert_eq!(
            Btf::from_bytes(good.clone())
                .unwrap()
                .member_offset("s", "i")
                .unwrap(),
            0
        );

        assert!(matches!(
            Btf::from_bytes(good[..10].to_vec()),
            Err(BtfError::Malformed(_))
        ));

        let mut swapped = good.clone();
        swapped.swap(0, 1);
        assert!(matches!(Btf::from_bytes(swapped), Err(BtfError::BigEndian)));

        let mut bad_magic = good.clone();
        bad_magic[0] = 0x12;
        assert!(matches!(
            Btf::from_bytes(bad_magic),
            Err(BtfError::BadMagic { .. })
        ));

        let mut bad_version = good.clone();
        bad_version[2] = 7;
        assert!(matches!(
            Btf::from_bytes(bad_version),
            Err(BtfError::UnsupportedVersion { version: 7 })
        ));

        // Sections claiming more bytes than exist.
        let truncated = good[..good.len() - 3].to_vec();
        assert!(matches!(
            Btf::from_bytes(truncated),
            Err(BtfError::Malformed(_))
        ));

        // Unknown kind 31 in the first type.
        let mut unknown = good.clone();
        unknown[HEADER_LEN + 7] = 31;
        let e = Btf::from_bytes(unknown).unwrap_err();
        assert!(e.to_string().contains("unknown kind"), "{e}");

        // A member referencing a type id that does not exist.
        let dangling = {
            let mut b = Builder::new();
            b.composite(kind::STRUCT, "s", 4, false, &[("", 99, 0, 0)]);
            b.build()
        };
        let btf = Btf::from_bytes(dangling).unwrap();
        assert!(matches!(
            btf.member_offset("s", "i"),
            Err(BtfError::Malformed(_))
        ));
    }

    /// The product reads these from the running kernel; they must all exist.
    const KERNEL_MEMBERS: &[(&str, &str)] = &[
        ("task_struct", "real_parent"),
        ("task_struct", "tgid"),
        ("task_struct", "fs"),
        ("task_struct", "files"),
        ("task_struct", "mm"),
        ("task_struct", "nsproxy"),
        ("fs_struct", "pwd"),
        ("path", "mnt"),
        ("path", "dentry"),
        ("dentry", "d_parent"),
        ("dentry", "d_name"),
        ("qstr", "len"),
        ("qstr", "name"),
        ("mount", "mnt"),
        ("mount", "mnt_parent"),
        ("mount", "mnt_mountpoint"),
        ("vfsmount", "mnt_root"),
        ("files_struct", "fdt"),
        ("fdtable", "max_fds"),
        ("fdtable", "fd"),
        ("file", "f_path"),
        ("file", "private_data"),
        ("socket", "type"),
        ("mm_struct", "exe_file"),
        ("nsproxy", "net_ns"),
        ("net", "ns.inum"),
        ("pt_regs", "orig_ax"),
    ];

    #[test]
    fn running_kernel_btf() {
        let start = std::time::Instant::now();
        let btf = Btf::from_sys_fs().expect("kernel BTF at /sys/kernel/btf/vmlinux");
        eprintln!("parsed {btf:?} in {:?}", start.elapsed());
        for &(ty, member) in KERNEL_MEMBERS {
            let off = btf
                .member_offset(ty, member)
                .unwrap_or_else(|e| panic!("{ty}.{member}: {e}"));
            eprintln!("{ty}.{member} = {off}");
            assert!(off < 16384, "{ty}.{member} = {off} is implausible");
        }
        if cfg!(target_arch = "x86_64") {
            assert_eq!(btf.member_offset("qstr", "len").unwrap(), 4);
            assert_eq!(btf.member_offset("qstr", "name").unwrap(), 8);
            assert_eq!(btf.member_offset("path", "mnt").unwrap(), 0);
            assert_eq!(btf.member_offset("path", "dentry").unwrap(), 8);
        }
        // Nested paths agree with the sum of their steps.
        let d_name = btf.member_offset("dentry", "d_name").unwrap();
        let name = btf.member_offset("qstr", "name").unwrap();
        assert_eq!(
            btf.member_offset("dentry", "d_name.name").unwrap(),
            d_name + name
        );
        assert!(matches!(
            btf.member_offset("task_struct", "no_such_member"),
            Err(BtfError::MemberNotFound { .. })
        ));
    }
}
