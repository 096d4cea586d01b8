//! Kernel struct member offsets from the running kernel's BTF.
//!
//! The kernel programs are built with aya and cannot use CO-RE relocations,
//! so userspace looks up the byte offsets of the few kernel struct members
//! they dereference (e.g. `task_struct.real_parent`, `dentry.d_name`) in
//! `/sys/kernel/btf/vmlinux` and hands them to the programs.
//!
//! Reading BTF is `format.rs`'s (why by hand: there). The walk here finds
//! a member, inside anonymous members too (`qstr.len`, the `mm_struct`
//! fields in its anonymous struct), past unnamed bitfields (`unsigned :5;`
//! padding, at which btfparse's own `offset_of` gave up on the whole
//! struct), and adds what a loader needs: choosing *the* struct of a name
//! (BTF has forward declarations and duplicates), refusing bitfields
//! (incl. old-style ones), refusing to step through pointers, and errors
//! that name the container and member.

use std::collections::HashMap;
use std::fmt;
use std::io;

mod format;

use format::{Kind, Offset, RawBtf, Type};

/// Where the running kernel exposes its own BTF.
pub const SYS_FS_VMLINUX: &str = "/sys/kernel/btf/vmlinux";

/// Bound on typedef/modifier chains, so that a malformed (cyclic) blob
/// cannot make a lookup loop forever.
const MAX_DEPTH: usize = 64;

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
}

/// Parsed BTF and, for each struct/union name, the type that name means.
pub struct Btf {
    types: RawBtf,
    /// Struct/union name → (type id, preference rank; lower is better).
    composites: HashMap<String, (u32, u8)>,
}

impl fmt::Debug for Btf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Btf")
            .field("types", &self.types.len())
            .field("named_structs_and_unions", &self.composites.len())
            .finish()
    }
}

/// A struct or union: its type id and how to name it in errors.
#[derive(Clone, Copy)]
struct Composite {
    id: u32,
}

impl Btf {
    /// Parses raw BTF (as found in `/sys/kernel/btf/vmlinux` or a `.BTF`
    /// ELF section).
    pub fn from_bytes(data: Vec<u8>) -> Result<Btf, BtfError> {
        let types = RawBtf::parse(data).map_err(BtfError::Malformed)?;
        let composites = index_composites(&types);
        Ok(Btf { types, composites })
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

    /// The type id of the struct or union named `type_name`.
    pub fn composite_id(&self, type_name: &str) -> Result<u32, BtfError> {
        self.composites
            .get(type_name)
            .map(|&(id, _)| id)
            .ok_or_else(|| BtfError::TypeNotFound {
                type_name: type_name.to_owned(),
            })
    }

    /// The type id of the kernel function `name` (a kfunc), if the kernel
    /// has it.
    pub fn function_id(&self, name: &str) -> Option<u32> {
        (1..=self.types.len()).find(|&id| {
            self.types.get(id).is_some_and(|ty| {
                ty.kind == Kind::Func && self.types.string(ty.name_off) == Some(name)
            })
        })
    }

    /// The id of the struct `type_name` when its `member` is an 8-byte
    /// integer at offset 0 (through typedefs): a typed load at offset 0
    /// of a pointer cast to it reads a plain number (`kfunc::word_at`).
    pub fn word_member_at_start(&self, type_name: &str, member: &str) -> Option<u32> {
        let id = self.composite_id(type_name).ok()?;
        let (member_type, offset) = self
            .step(Composite { id }, member, &|| member.to_owned())
            .ok()?;
        let (_, int) = self.skip_modifiers(member_type)?;
        let whole_word = int.kind == Kind::Int && int.size_or_type == 8 && !int.is_partial_int();
        (offset == 0 && whole_word).then_some(id)
    }

    /// Byte offset of `member_path` (dot-separated, e.g. "pwd.dentry" or
    /// "d_name.name") inside the struct or union named `type_name`.
    ///
    /// Members inside anonymous struct/union members are found
    /// transparently; intermediate members are followed through
    /// typedef/const/volatile/restrict/type_tag to their struct/union.
    /// Bitfield members are an error (not byte-addressable). Pointers are
    /// never followed: every step of the path must be embedded in its
    /// parent.
    pub fn member_offset(&self, type_name: &str, member_path: &str) -> Result<u32, BtfError> {
        let &(root, _) = self
            .composites
            .get(type_name)
            .ok_or_else(|| BtfError::TypeNotFound {
                type_name: type_name.to_owned(),
            })?;
        let full_path = || format!("{type_name}.{member_path}");
        let steps: Vec<&str> = member_path.split('.').collect();
        if steps.iter().any(|s| s.is_empty()) {
            return Err(BtfError::EmptyMember { path: full_path() });
        }
        let mut container = Composite { id: root };
        let mut total: u32 = 0;
        for (i, &member) in steps.iter().enumerate() {
            let (type_id, offset) = self.step(container, member, &full_path)?;
            total = total.checked_add(offset).ok_or_else(|| {
                BtfError::Malformed(format!("`{}`: offset overflows", full_path()))
            })?;
            if let Some(&next) = steps.get(i + 1) {
                container = match self.skip_modifiers(type_id) {
                    Some((id, ty)) if matches!(ty.kind, Kind::Struct | Kind::Union) => {
                        Composite { id }
                    }
                    other => {
                        return Err(BtfError::NotComposite {
                            path: full_path(),
                            container: self.describe(container),
                            member: member.to_owned(),
                            kind: other.map_or("void", |(_, t)| t.kind.name()),
                            next: next.to_owned(),
                        });
                    }
                };
            }
        }
        Ok(total)
    }

    /// One member of `container`: its type id and byte offset.
    fn step(
        &self,
        container: Composite,
        member: &str,
        full_path: &dyn Fn() -> String,
    ) -> Result<(u32, u32), BtfError> {
        let bitfield = || BtfError::Bitfield {
            path: full_path(),
            container: self.describe(container),
            member: member.to_owned(),
        };
        let found = self.find_member(container.id, member, 0);
        match found {
            None => Err(BtfError::MemberNotFound {
                path: full_path(),
                container: self.describe(container),
                member: member.to_owned(),
            }),
            Some((_, Offset::Bits { .. })) => Err(bitfield()),
            Some((type_id, Offset::Bytes(_))) if self.is_legacy_bitfield(type_id) => {
                Err(bitfield())
            }
            Some((type_id, Offset::Bytes(offset))) => Ok((type_id, offset)),
        }
    }

    /// `name` among the members of struct/union `id`, looking inside its
    /// anonymous struct/union members: the type id and offset from the
    /// start of `id`.
    fn find_member(&self, id: u32, name: &str, depth: usize) -> Option<(u32, Offset)> {
        let ty = self.types.get(id)?;
        for m in ty.members() {
            match self.types.string(m.name_off).filter(|n| !n.is_empty()) {
                Some(n) if n == name => return Some((m.type_id, m.offset)),
                Some(_) => {}
                None if depth < MAX_DEPTH => {
                    let Some((inner, inner_ty)) = self.skip_modifiers(m.type_id) else {
                        continue;
                    };
                    if !matches!(inner_ty.kind, Kind::Struct | Kind::Union) {
                        continue; // unnamed padding bitfield
                    }
                    let Offset::Bytes(base) = m.offset else {
                        continue;
                    };
                    if let Some((tid, offset)) = self.find_member(inner, name, depth + 1) {
                        return Some((tid, add(base, offset)?));
                    }
                }
                None => {}
            }
        }
        None
    }

    /// Follows typedef/const/volatile/restrict/type_tag to the real type;
    /// `None` for void, a dangling id or a cycle.
    fn skip_modifiers(&self, mut id: u32) -> Option<(u32, Type<'_>)> {
        for _ in 0..MAX_DEPTH {
            let ty = self.types.get(id)?;
            match ty.kind {
                Kind::Typedef | Kind::Const | Kind::Volatile | Kind::Restrict | Kind::TypeTag => {
                    id = ty.size_or_type;
                }
                _ => return Some((id, ty)),
            }
        }
        None
    }

    /// An int narrower than its storage is an old-style bitfield (before
    /// BTF's kind_flag); it has no byte offset of its own either.
    fn is_legacy_bitfield(&self, id: u32) -> bool {
        self.skip_modifiers(id)
            .is_some_and(|(_, ty)| ty.is_partial_int())
    }

    fn describe(&self, container: Composite) -> String {
        let ty = self.types.get(container.id);
        let what = ty.map_or("type", |t| t.kind.name());
        match ty.as_ref().and_then(|t| self.types.name_of(t)) {
            Some(name) => format!("{what} {name}"),
            None => format!("anonymous {what} (BTF type id {})", container.id),
        }
    }
}

/// For each struct/union name, the best candidate: a non-empty STRUCT, then
/// a non-empty UNION, then empty ones; ties go to the lowest id. Forward
/// declarations, typedefs and everything else are never candidates.
fn index_composites(types: &RawBtf) -> HashMap<String, (u32, u8)> {
    let mut composites: HashMap<String, (u32, u8)> = HashMap::new();
    for id in 1..=types.len() {
        let Some(ty) = types.get(id) else { continue };
        let empty = ty.members().next().is_none();
        let rank = match ty.kind {
            Kind::Struct => {
                if empty {
                    2
                } else {
                    0
                }
            }
            Kind::Union => {
                if empty {
                    3
                } else {
                    1
                }
            }
            _ => continue,
        };
        let Some(name) = types.name_of(&ty) else {
            continue;
        };
        // Ids come in ascending order, so only a strictly better rank wins.
        match composites.get(name) {
            Some(&(_, best)) if best <= rank => {}
            _ => {
                composites.insert(name.to_owned(), (id, rank));
            }
        }
    }
    composites
}

/// `base` bytes plus an offset found below it.
fn add(base: u32, offset: Offset) -> Option<Offset> {
    Some(match offset {
        Offset::Bytes(o) => Offset::Bytes(base.checked_add(o)?),
        Offset::Bits { offset, size } => Offset::Bits {
            offset: base.checked_mul(8)?.checked_add(offset)?,
            size,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const BTF_MAGIC: u16 = 0xEB9F;
    /// `struct btf_header` up to and including `str_len`.
    const HEADER_LEN: usize = 24;

    /// BTF kind numbers (kernel `Documentation/bpf/btf.rst`).
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
    }

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

    /// The bytes btfparse reads from.
    struct Bytes(Vec<u8>);

    impl btfparse::Readable for Bytes {
        fn read(&self, offset: u64, buffer: &mut [u8]) -> btfparse::Result<()> {
            let start = usize::try_from(offset).ok();
            let bytes = start.and_then(|s| self.0.get(s..s.checked_add(buffer.len())?));
            let bytes = bytes.ok_or_else(|| {
                btfparse::Error::new(btfparse::ErrorKind::InvalidOffset, "read past the end")
            })?;
            buffer.copy_from_slice(bytes);
            Ok(())
        }
    }

    /// Our kind for btfparse's.
    fn their_kind(ty: &btfparse::TypeVariant) -> Option<Kind> {
        use btfparse::TypeVariant as T;
        Some(match ty {
            T::Void => return None,
            T::Int(_) => Kind::Int,
            T::Ptr(_) => Kind::Ptr,
            T::Array(_) => Kind::Array,
            T::Struct(_) => Kind::Struct,
            T::Union(_) => Kind::Union,
            T::Enum(_) => Kind::Enum,
            T::Enum64(_) => Kind::Enum64,
            T::Fwd(_) => Kind::Fwd,
            T::Typedef(_) => Kind::Typedef,
            T::Volatile(_) => Kind::Volatile,
            T::Const(_) => Kind::Const,
            T::Restrict(_) => Kind::Restrict,
            T::Func(_) => Kind::Func,
            T::FuncProto(_) => Kind::FuncProto,
            T::Var(_) => Kind::Var,
            T::DataSec(_) => Kind::DataSec,
            T::Float(_) => Kind::Float,
            T::DeclTag(_) => Kind::DeclTag,
            T::TypeTag(_) => Kind::TypeTag,
        })
    }

    /// The hand-written reader against btfparse on the running kernel's
    /// BTF (~127,000 types): every type's kind and name, and every struct's
    /// and union's members (name, type, offset), agree.
    #[test]
    fn agrees_with_btfparse_on_the_running_kernel() {
        let data = std::fs::read(SYS_FS_VMLINUX).expect("kernel BTF");
        let ours = RawBtf::parse(data.clone()).unwrap();
        let theirs = btfparse::TypeInformation::new(&Bytes(data)).unwrap();
        let mut compared = (0, 0);
        for (&id, variant) in theirs.get() {
            let Some(kind) = their_kind(variant) else {
                continue;
            };
            let ty = ours.get(id).unwrap_or_else(|| panic!("type {id} missing"));
            assert_eq!(ty.kind, kind, "type {id}");
            let their_name = theirs.name_of(id).filter(|n| !n.is_empty());
            assert_eq!(ours.name_of(&ty), their_name.as_deref(), "type {id}");
            let their_members = match variant {
                btfparse::TypeVariant::Struct(s) => s.member_list(),
                btfparse::TypeVariant::Union(u) => u.member_list(),
                _ => {
                    compared.0 += 1;
                    continue;
                }
            };
            let our_members: Vec<_> = ty.members().collect();
            assert_eq!(our_members.len(), their_members.len(), "type {id}");
            for (m, t) in our_members.iter().zip(their_members) {
                let name = ours.string(m.name_off).filter(|n| !n.is_empty());
                assert_eq!(name, t.name().as_deref().filter(|n| !n.is_empty()));
                assert_eq!(m.type_id, t.tid(), "type {id} member {name:?}");
                let offset = match t.offset() {
                    btfparse::Offset::ByteOffset(o) => Offset::Bytes(o),
                    btfparse::Offset::BitOffsetAndSize(offset, size) => {
                        Offset::Bits { offset, size }
                    }
                };
                assert_eq!(m.offset, offset, "type {id} member {name:?}");
                compared.1 += 1;
            }
            compared.0 += 1;
        }
        assert_eq!(compared.0, ours.len(), "types compared");
        assert!(compared.0 > 10_000 && compared.1 > 50_000, "{compared:?}");
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
        let malformed = |data: Vec<u8>| match Btf::from_bytes(data) {
            Err(BtfError::Malformed(reason)) => reason,
            other => panic!("expected Malformed, got {other:?}"),
        };

        malformed(good[..10].to_vec());
        let mut bad_magic = good.clone();
        bad_magic[0] = 0x12;
        malformed(bad_magic);
        // Sections claiming more bytes than exist.
        malformed(good[..good.len() - 3].to_vec());
        // Unknown kind 31 in the first type.
        let mut unknown = good.clone();
        unknown[HEADER_LEN + 7] = 31;
        malformed(unknown);

        // A member referencing a type id that does not exist is not found
        // (and does not panic).
        let dangling = {
            let mut b = Builder::new();
            b.composite(kind::STRUCT, "s", 4, false, &[("", 99, 0, 0)]);
            b.build()
        };
        let btf = Btf::from_bytes(dangling).unwrap();
        assert!(matches!(
            btf.member_offset("s", "i"),
            Err(BtfError::MemberNotFound { .. })
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
        ("mm_struct", "arg_start"),
        ("mm_struct", "arg_end"),
        ("pt_regs", "r10"),
        ("pt_regs", "dx"),
        ("pt_regs", "si"),
        ("pt_regs", "di"),
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

    #[test]
    fn kfunc_and_cast_types_of_the_running_kernel() {
        let btf = Btf::from_sys_fs().expect("kernel BTF at /sys/kernel/btf/vmlinux");
        assert!(btf.function_id("bpf_rdonly_cast").is_some(), "6.2+ has it");
        assert_eq!(btf.function_id("no_such_kfunc"), None);
        // A struct is not a function.
        assert_eq!(btf.function_id("file"), None);
        let timespec = btf.composite_id("timespec64").unwrap();
        assert_eq!(
            btf.word_member_at_start("timespec64", "tv_sec"),
            Some(timespec)
        );
        // Not at offset 0; a pointer; a 4-byte integer.
        assert_eq!(btf.word_member_at_start("timespec64", "tv_nsec"), None);
        assert_eq!(btf.word_member_at_start("kiocb", "ki_filp"), None);
        assert_eq!(btf.word_member_at_start("qstr", "hash"), None);
    }
}
