//! Minimal reader for the kernel's BTF (`/sys/kernel/btf/vmlinux`).
//!
//! The Rust BPF target emits no CO-RE relocations, so the agent looks up struct
//! member offsets of the running kernel itself at load time and hands them to the
//! eBPF program. Aya parses BTF too but does not expose member offsets publicly,
//! hence this small parser. Format: linux `Documentation/bpf/btf.rst`.

use std::collections::HashMap;
use std::fmt;
use std::io::Read;
use std::ops::Range;
use std::path::{Path, PathBuf};

const VMLINUX_BTF_PATH: &str = "/sys/kernel/btf/vmlinux";

const BTF_MAGIC: u16 = 0xEB9F;
const BTF_VERSION: u8 = 1;
/// Size of the version-1 header; `hdr_len` may be larger (newer kernels may append fields).
const HEADER_LEN: usize = 24;
/// Size of `struct btf_type`.
const TYPE_LEN: usize = 12;
/// Size of `struct btf_member`.
const MEMBER_LEN: usize = 12;

const KIND_INT: u32 = 1;
const KIND_PTR: u32 = 2;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_FWD: u32 = 7;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_FUNC: u32 = 12;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_FLOAT: u32 = 16;
const KIND_DECL_TAG: u32 = 17;
const KIND_TYPE_TAG: u32 = 18;
const KIND_ENUM64: u32 = 19;

/// Real kernels nest anonymous structs/unions a handful of levels deep; anything
/// deeper than this is a cycle in corrupt data, which would otherwise recurse forever.
const MAX_DEPTH: u32 = 32;
/// Caps total work of one member search so that corrupt data with heavy fan-out
/// (many anonymous members sharing one type) cannot blow up exponentially.
const MAX_SEARCH_STEPS: u32 = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    #[error("reading BTF from {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("BTF data truncated: {what} needs {needed} bytes, only {available} present")]
    Truncated { what: &'static str, needed: u64, available: usize },
    #[error("bad BTF magic {0:#06x}, expected 0xeb9f")]
    BadMagic(u16),
    #[error("BTF data is big-endian; only little-endian BTF is supported")]
    BigEndian,
    #[error("unsupported BTF version {0}, only version 1 is supported")]
    UnsupportedVersion(u8),
    #[error("BTF header length {0} is shorter than the 24-byte version-1 header")]
    BadHeaderLen(u32),
    #[error("BTF type id {type_id} (kind {kind}) extends past the end of the type section")]
    TruncatedType { type_id: u32, kind: u32 },
    #[error("unknown BTF kind {kind} at type id {type_id}")]
    UnknownKind { kind: u32, type_id: u32 },
    #[error("BTF string offset {0} is outside the string section or unterminated")]
    BadStringOffset(u32),
    #[error("BTF string at offset {0} is not valid UTF-8")]
    BadString(u32),
    #[error("BTF references type id {0}, which does not exist")]
    BadTypeId(u32),
    #[error("BTF type graph at type id {0} is cyclic or nested too deeply")]
    TypeLoop(u32),
    #[error("struct \"{0}\" not found in BTF")]
    StructNotFound(String),
    #[error("member \"{member}\" not found in struct \"{struct_name}\"")]
    MemberNotFound { struct_name: String, member: String },
    #[error("member \"{member}\" of struct \"{struct_name}\" is a bitfield and has no byte offset")]
    Bitfield { struct_name: String, member: String },
    #[error("offset of member \"{member}\" of struct \"{struct_name}\" does not fit in u32")]
    OffsetOverflow { struct_name: String, member: String },
}

/// Parsed BTF: the raw bytes, where its type and string sections are, plus
/// indexes built once at parse time. The sections stay where they were
/// read or mapped: vmlinux BTF is megabytes, and a copy of it would be the
/// agent's peak memory.
pub struct Btf {
    data: Bytes,
    /// The type section's place in `data`.
    types: Range<usize>,
    /// The string section's place in `data`.
    strings: Range<usize>,
    /// Byte position in `types` of each type id's `btf_type` (index 0 = void, unused).
    /// Every record and its trailing data were bounds-checked while building this.
    offsets: Vec<u32>,
    /// Struct name -> type id, so lookups need no scan of the ~100k vmlinux types.
    structs: HashMap<Box<str>, u32>,
}

impl fmt::Debug for Btf {
    // Deliberately terse: the raw sections are megabytes.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Btf")
            .field("types", &(self.offsets.len() - 1))
            .field("named_structs", &self.structs.len())
            .field("string_bytes", &self.strings().len())
            .finish()
    }
}

/// A decoded `struct btf_type` header.
#[derive(Clone, Copy)]
struct TypeRef {
    info: u32,
    size_or_type: u32,
    /// Position in the type section of the kind-specific trailing data.
    data_pos: usize,
}

impl TypeRef {
    fn kind(self) -> u32 {
        (self.info >> 24) & 0x1f
    }
    fn vlen(self) -> usize {
        (self.info & 0xffff) as usize
    }
    fn kind_flag(self) -> bool {
        self.info >> 31 != 0
    }
}

/// Where a member was found: offset in bits from the start of the searched struct.
struct Found {
    bits: u64,
    bitfield: bool,
    /// Type id of the member, to descend into it.
    type_id: u32,
}

/// Reads a little-endian u32; callers guarantee `pos + 4 <= data.len()`.
fn le32(data: &[u8], pos: usize) -> u32 {
    u32::from_le_bytes([data[pos], data[pos + 1], data[pos + 2], data[pos + 3]])
}

/// Returns the NUL-terminated string at `off` (without the NUL), unvalidated.
fn str_bytes(strings: &[u8], off: u32) -> Result<&[u8], BtfError> {
    // Offset 0 is the empty name by definition; accepting it even with an empty
    // string section keeps anonymous types working on minimal blobs.
    if off == 0 && strings.is_empty() {
        return Ok(&[]);
    }
    let tail = strings.get(off as usize..).ok_or(BtfError::BadStringOffset(off))?;
    let end = tail.iter().position(|&b| b == 0).ok_or(BtfError::BadStringOffset(off))?;
    Ok(&tail[..end])
}

/// Where a section is in the whole of the BTF bytes, checked to lie inside them.
fn section(body: &[u8], hdr_len: usize, what: &'static str, off: u32, len: u32) -> Result<Range<usize>, BtfError> {
    let start = off as usize;
    let end = start + len as usize; // u32 + u32 cannot overflow usize on 64-bit
    body.get(start..end).map(|_| hdr_len + start..hdr_len + end).ok_or(BtfError::Truncated {
        what,
        needed: hdr_len as u64 + end as u64,
        available: hdr_len + body.len(),
    })
}

/// The bytes of a BTF file: mapped where the kernel lets it be mapped
/// (vmlinux BTF since Linux 6.16), else read into memory.
enum Bytes {
    Read(Vec<u8>),
    Mapped(Mapping),
}

impl std::ops::Deref for Bytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Bytes::Read(v) => v,
            Bytes::Mapped(m) => m.bytes(),
        }
    }
}

/// A whole sysfs file mapped read-only and private, unmapped on drop. For
/// /sys/kernel/btf/vmlinux the kernel maps its own copy of the BTF
/// (remap_pfn_range), which the agent's RSS does not count: 5.5 MiB less
/// peak memory than reading it. Only sysfs files are mapped: their size is
/// the kernel's and cannot shrink under the mapping, where a regular file
/// truncated by someone else would kill the agent with SIGBUS.
struct Mapping {
    ptr: *const u8,
    len: usize,
}

// SAFETY: the mapping is read-only and owned by this value alone.
unsafe impl Send for Mapping {}
unsafe impl Sync for Mapping {}

impl Mapping {
    /// None when the file cannot be mapped (not on sysfs, an older kernel's
    /// sysfs, an empty file): the caller reads it instead.
    fn of(file: &std::fs::File) -> Option<Mapping> {
        use std::os::fd::AsRawFd;
        if !on_sysfs(file) {
            return None;
        }
        let len = usize::try_from(file.metadata().ok()?.len()).ok().filter(|&len| len > 0)?;
        // SAFETY: a new mapping of `len` bytes of an open file, read-only;
        // the kernel checks the file and the length.
        let ptr =
            unsafe { libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ, libc::MAP_PRIVATE, file.as_raw_fd(), 0) };
        (ptr != libc::MAP_FAILED).then_some(Mapping { ptr: ptr as *const u8, len })
    }

    fn bytes(&self) -> &[u8] {
        // SAFETY: `len` readable bytes at `ptr` for as long as self lives.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

/// Whether an open file is on sysfs (statfs(2)'s f_type).
// f_type and SYSFS_MAGIC have different integer types across targets.
#[allow(clippy::unnecessary_cast)]
fn on_sysfs(file: &std::fs::File) -> bool {
    use std::os::fd::AsRawFd;
    let mut st = std::mem::MaybeUninit::<libc::statfs>::uninit();
    // SAFETY: fstatfs fills `st` for an open descriptor, or fails.
    if unsafe { libc::fstatfs(file.as_raw_fd(), st.as_mut_ptr()) } != 0 {
        return false;
    }
    // SAFETY: fstatfs succeeded, so `st` is initialised.
    let st = unsafe { st.assume_init() };
    st.f_type as u64 == libc::SYSFS_MAGIC as u64
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `of`, unmapped once.
        unsafe { libc::munmap(self.ptr as *mut libc::c_void, self.len) };
    }
}

impl Btf {
    /// Parses raw BTF bytes (little-endian host, as in /sys/kernel/btf/vmlinux).
    pub fn parse(bytes: &[u8]) -> Result<Btf, BtfError> {
        Self::parse_owned(Bytes::Read(bytes.to_vec()))
    }

    /// Parses BTF bytes, keeping them.
    fn parse_owned(data: Bytes) -> Result<Btf, BtfError> {
        let bytes: &[u8] = &data;
        if bytes.len() < HEADER_LEN {
            return Err(BtfError::Truncated { what: "header", needed: HEADER_LEN as u64, available: bytes.len() });
        }
        let magic = u16::from_le_bytes([bytes[0], bytes[1]]);
        if magic == BTF_MAGIC.swap_bytes() {
            return Err(BtfError::BigEndian);
        }
        if magic != BTF_MAGIC {
            return Err(BtfError::BadMagic(magic));
        }
        if bytes[2] != BTF_VERSION {
            return Err(BtfError::UnsupportedVersion(bytes[2]));
        }
        let hdr_len_raw = le32(bytes, 4);
        let hdr_len = hdr_len_raw as usize;
        if hdr_len < HEADER_LEN {
            return Err(BtfError::BadHeaderLen(hdr_len_raw));
        }
        let body = bytes.get(hdr_len..).ok_or(BtfError::Truncated {
            what: "header",
            needed: hdr_len as u64,
            available: bytes.len(),
        })?;
        let types_at = section(body, hdr_len, "type section", le32(bytes, 8), le32(bytes, 12))?;
        let strings_at = section(body, hdr_len, "string section", le32(bytes, 16), le32(bytes, 20))?;
        let (types, strings) = (&bytes[types_at.clone()], &bytes[strings_at.clone()]);

        let mut offsets = vec![0u32];
        let mut structs: HashMap<Box<str>, u32> = HashMap::new();
        let mut pos = 0usize;
        while pos < types.len() {
            let type_id = offsets.len() as u32;
            if types.len() - pos < TYPE_LEN {
                return Err(BtfError::TruncatedType { type_id, kind: 0 });
            }
            let name_off = le32(types, pos);
            let ty = TypeRef { info: le32(types, pos + 4), size_or_type: 0, data_pos: 0 };
            let kind = ty.kind();
            let vlen = ty.vlen();
            let trailing = match kind {
                KIND_PTR | KIND_FWD | KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_FUNC
                | KIND_FLOAT | KIND_TYPE_TAG => 0,
                KIND_INT | KIND_VAR | KIND_DECL_TAG => 4,
                KIND_ARRAY => 12,
                KIND_ENUM | KIND_FUNC_PROTO => 8 * vlen,
                KIND_STRUCT | KIND_UNION | KIND_DATASEC | KIND_ENUM64 => 12 * vlen,
                _ => return Err(BtfError::UnknownKind { kind, type_id }),
            };
            let end = pos + TYPE_LEN + trailing;
            if end > types.len() {
                return Err(BtfError::TruncatedType { type_id, kind });
            }
            if kind == KIND_STRUCT && name_off != 0 {
                let raw = str_bytes(strings, name_off)?;
                let name = std::str::from_utf8(raw).map_err(|_| BtfError::BadString(name_off))?;
                // Several structs may share a name; the first one with members wins,
                // an empty one is kept only until a non-empty one shows up.
                let replace = match structs.get(name) {
                    None => true,
                    Some(&prev) => {
                        let prev_info = le32(types, offsets[prev as usize] as usize + 4);
                        vlen > 0 && prev_info & 0xffff == 0
                    }
                };
                if replace {
                    structs.insert(name.into(), type_id);
                }
            }
            // type_len is a u32, so positions within it fit in u32.
            offsets.push(pos as u32);
            pos = end;
        }

        offsets.shrink_to_fit();
        Ok(Btf { data, types: types_at, strings: strings_at, offsets, structs })
    }

    /// Reads and parses /sys/kernel/btf/vmlinux.
    pub fn from_sys_fs() -> Result<Btf, BtfError> {
        Self::from_file(Path::new(VMLINUX_BTF_PATH))
    }

    fn from_file(path: &Path) -> Result<Btf, BtfError> {
        let io = |source| BtfError::Io { path: path.to_path_buf(), source };
        let mut file = std::fs::File::open(path).map_err(io)?;
        let data = match Mapping::of(&file) {
            Some(mapping) => Bytes::Mapped(mapping),
            None => {
                let mut bytes = Vec::new();
                file.read_to_end(&mut bytes).map_err(io)?;
                Bytes::Read(bytes)
            }
        };
        Self::parse_owned(data)
    }

    fn types(&self) -> &[u8] {
        &self.data[self.types.clone()]
    }

    fn strings(&self) -> &[u8] {
        &self.data[self.strings.clone()]
    }

    /// Byte offset of `member` in `struct struct_name`. Members of anonymous struct/union
    /// members are searched too (recursively, summing offsets), since e.g. mm_struct's
    /// arg_start lives in an anonymous struct in recent kernels. Errors on bitfields.
    pub fn member_offset(&self, struct_name: &str, member: &str) -> Result<u32, BtfError> {
        let &id = self.structs.get(struct_name).ok_or_else(|| BtfError::StructNotFound(struct_name.to_string()))?;
        let mut steps = 0;
        let found = self.find_member(id, member.as_bytes(), 0, &mut steps)?;
        let names = || (struct_name.to_string(), member.to_string());
        match found {
            None => {
                let (struct_name, member) = names();
                Err(BtfError::MemberNotFound { struct_name, member })
            }
            Some(Found { bitfield: true, .. }) => {
                let (struct_name, member) = names();
                Err(BtfError::Bitfield { struct_name, member })
            }
            Some(Found { bits, .. }) => u32::try_from(bits / 8).map_err(|_| {
                let (struct_name, member) = names();
                BtfError::OffsetOverflow { struct_name, member }
            }),
        }
    }

    /// Byte offset of `path[last]` reached from `struct struct_name` through
    /// embedded struct members: `("sock_common", ["skc_net", "net"])` is
    /// `offsetof(struct sock_common, skc_net.net)`. Members whose type is a
    /// typedef of an anonymous struct (`possible_net_t`) are followed too.
    pub fn member_path_offset(&self, struct_name: &str, path: &[&str]) -> Result<u32, BtfError> {
        let &root = self.structs.get(struct_name).ok_or_else(|| BtfError::StructNotFound(struct_name.to_string()))?;
        let not_found = |_stopped_at: &str| BtfError::MemberNotFound {
            struct_name: struct_name.to_string(),
            member: path.join("."),
        };
        let mut id = root;
        let mut bits = 0u64;
        for (i, member) in path.iter().enumerate() {
            let mut steps = 0;
            let f = self.find_member(id, member.as_bytes(), 0, &mut steps)?.ok_or_else(|| not_found(member))?;
            if f.bitfield {
                return Err(BtfError::Bitfield { struct_name: struct_name.to_string(), member: path.join(".") });
            }
            bits += f.bits;
            if i + 1 < path.len() {
                match self.resolve(f.type_id)? {
                    Some((inner, t)) if matches!(t.kind(), KIND_STRUCT | KIND_UNION) => id = inner,
                    _ => return Err(not_found(member)),
                }
            }
        }
        u32::try_from(bits / 8)
            .map_err(|_| BtfError::OffsetOverflow { struct_name: struct_name.to_string(), member: path.join(".") })
    }

    /// Whether a struct with this name exists.
    pub fn has_struct(&self, name: &str) -> bool {
        self.structs.contains_key(name)
    }

    /// The type id of the function `name` (a `BTF_KIND_FUNC`), which
    /// fentry and LSM programs name as their attach point.
    pub fn func_id(&self, name: &str) -> Option<u32> {
        let id = self.offsets[1..].iter().position(|&pos| {
            let pos = pos as usize;
            let kind = (le32(self.types(), pos + 4) >> 24) & 0x1f;
            kind == KIND_FUNC && str_bytes(self.strings(), le32(self.types(), pos)).is_ok_and(|n| n == name.as_bytes())
        })?;
        Some(id as u32 + 1)
    }

    /// Whether `enum enum_name` has an enumerator `value`: the kernel's own
    /// `enum bpf_func_id` tells which BPF helpers it has. One scan of the
    /// types, done once at load time.
    pub fn has_enumerator(&self, enum_name: &str, value: &str) -> bool {
        let name_is = |off: u32, want: &str| str_bytes(self.strings(), off).is_ok_and(|n| n == want.as_bytes());
        self.offsets[1..].iter().any(|&pos| {
            let pos = pos as usize;
            let ty = TypeRef { info: le32(self.types(), pos + 4), size_or_type: 0, data_pos: pos + TYPE_LEN };
            let entry_len = match ty.kind() {
                KIND_ENUM => 8,
                KIND_ENUM64 => 12,
                _ => return false,
            };
            // Bounds of every record were checked while building `offsets`.
            name_is(le32(self.types(), pos), enum_name)
                && (0..ty.vlen()).any(|i| name_is(le32(self.types(), ty.data_pos + i * entry_len), value))
        })
    }

    fn ty(&self, id: u32) -> Result<TypeRef, BtfError> {
        if id == 0 {
            return Err(BtfError::BadTypeId(id));
        }
        let pos = *self.offsets.get(id as usize).ok_or(BtfError::BadTypeId(id))? as usize;
        Ok(TypeRef {
            info: le32(self.types(), pos + 4),
            size_or_type: le32(self.types(), pos + 8),
            data_pos: pos + TYPE_LEN,
        })
    }

    /// Follows typedef/cv-qualifier/type-tag chains to the underlying type;
    /// `None` for void.
    fn resolve(&self, mut id: u32) -> Result<Option<(u32, TypeRef)>, BtfError> {
        for _ in 0..MAX_DEPTH {
            if id == 0 {
                return Ok(None);
            }
            let ty = self.ty(id)?;
            match ty.kind() {
                KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => {
                    id = ty.size_or_type;
                }
                _ => return Ok(Some((id, ty))),
            }
        }
        Err(BtfError::TypeLoop(id))
    }

    /// Without kind_flag, a bitfield may still sit on a byte boundary; its INT type
    /// then encodes fewer bits than the type's size (or a nonzero bit offset).
    fn is_int_bitfield(&self, type_id: u32) -> Result<bool, BtfError> {
        match self.resolve(type_id)? {
            Some((_, ty)) if ty.kind() == KIND_INT => {
                let enc = le32(self.types(), ty.data_pos);
                let nr_bits = u64::from(enc & 0xff);
                let bit_off = (enc >> 16) & 0xff;
                Ok(bit_off != 0 || nr_bits != u64::from(ty.size_or_type) * 8)
            }
            _ => Ok(false),
        }
    }

    /// Depth-first search of struct/union `id` for `member`, descending into
    /// anonymous struct/union members the way C name lookup does.
    fn find_member(&self, id: u32, member: &[u8], depth: u32, steps: &mut u32) -> Result<Option<Found>, BtfError> {
        if depth >= MAX_DEPTH {
            return Err(BtfError::TypeLoop(id));
        }
        let ty = self.ty(id)?;
        let kind_flag = ty.kind_flag();
        for i in 0..ty.vlen() {
            *steps += 1;
            if *steps > MAX_SEARCH_STEPS {
                return Err(BtfError::TypeLoop(id));
            }
            let pos = ty.data_pos + i * MEMBER_LEN;
            let name_off = le32(self.types(), pos);
            let m_type = le32(self.types(), pos + 4);
            let raw_off = le32(self.types(), pos + 8);
            // With kind_flag the offset word packs bitfield size (high 8 bits) and
            // bit offset (low 24 bits).
            let (bit_off, bitfield_size) =
                if kind_flag { (raw_off & 0x00ff_ffff, raw_off >> 24) } else { (raw_off, 0) };
            let misaligned = bitfield_size != 0 || bit_off % 8 != 0;
            if name_off != 0 {
                if str_bytes(self.strings(), name_off)? == member {
                    let bitfield = misaligned || self.is_int_bitfield(m_type)?;
                    return Ok(Some(Found { bits: u64::from(bit_off), bitfield, type_id: m_type }));
                }
                continue;
            }
            // Anonymous member: only struct/union ones contribute names (an unnamed
            // INT is padding like `int :3;`).
            if let Some((inner_id, inner)) = self.resolve(m_type)? {
                if matches!(inner.kind(), KIND_STRUCT | KIND_UNION) {
                    if let Some(f) = self.find_member(inner_id, member, depth + 1, steps)? {
                        return Ok(Some(Found {
                            bits: u64::from(bit_off) + f.bits,
                            bitfield: f.bitfield || misaligned,
                            type_id: f.type_id,
                        }));
                    }
                }
            }
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Tiny BTF writer: types get ids in the order they are added, starting at 1.
    struct Builder {
        strings: Vec<u8>,
        types: Vec<u8>,
        next_id: u32,
    }

    impl Builder {
        fn new() -> Self {
            Builder { strings: vec![0], types: Vec::new(), next_id: 1 }
        }

        fn name(&mut self, s: &str) -> u32 {
            if s.is_empty() {
                return 0;
            }
            let off = self.strings.len() as u32;
            self.strings.extend_from_slice(s.as_bytes());
            self.strings.push(0);
            off
        }

        fn raw(
            &mut self,
            name: &str,
            kind: u32,
            kind_flag: bool,
            vlen: u32,
            size_or_type: u32,
            trailing: &[u32],
        ) -> u32 {
            let name_off = self.name(name);
            let info = (u32::from(kind_flag) << 31) | (kind << 24) | vlen;
            for w in [name_off, info, size_or_type].iter().chain(trailing) {
                self.types.extend_from_slice(&w.to_le_bytes());
            }
            self.next_id += 1;
            self.next_id - 1
        }

        fn int(&mut self, name: &str, size: u32) -> u32 {
            self.raw(name, KIND_INT, false, 0, size, &[size * 8])
        }

        fn modifier(&mut self, kind: u32, name: &str, target: u32) -> u32 {
            self.raw(name, kind, false, 0, target, &[])
        }

        /// members: (name, type id, offset word as stored in btf_member.offset)
        fn composite(
            &mut self,
            kind: u32,
            name: &str,
            kind_flag: bool,
            size: u32,
            members: &[(&str, u32, u32)],
        ) -> u32 {
            let mut trailing = Vec::new();
            for &(m, ty, off) in members {
                let n = self.name(m);
                trailing.extend_from_slice(&[n, ty, off]);
            }
            self.raw(name, kind, kind_flag, members.len() as u32, size, &trailing)
        }

        fn strukt(&mut self, name: &str, size: u32, members: &[(&str, u32, u32)]) -> u32 {
            self.composite(KIND_STRUCT, name, false, size, members)
        }

        fn union(&mut self, name: &str, size: u32, members: &[(&str, u32, u32)]) -> u32 {
            self.composite(KIND_UNION, name, false, size, members)
        }

        fn finish(&self) -> Vec<u8> {
            let mut out = Vec::new();
            out.extend_from_slice(&BTF_MAGIC.to_le_bytes());
            out.push(BTF_VERSION);
            out.push(0);
            let (tl, sl) = (self.types.len() as u32, self.strings.len() as u32);
            for w in [HEADER_LEN as u32, 0, tl, tl, sl] {
                out.extend_from_slice(&w.to_le_bytes());
            }
            out.extend_from_slice(&self.types);
            out.extend_from_slice(&self.strings);
            out
        }
    }

    fn simple() -> Vec<u8> {
        let mut b = Builder::new();
        let int = b.int("int", 4);
        let long = b.int("long", 8);
        let ptr = b.modifier(KIND_PTR, "", int);
        b.strukt("foo", 24, &[("a", int, 0), ("b", long, 64), ("c", ptr, 128)]);
        b.finish()
    }

    #[test]
    fn simple_member_offset() {
        let btf = Btf::parse(&simple()).unwrap();
        assert!(btf.has_struct("foo"));
        assert!(!btf.has_struct("bar"));
        assert_eq!(btf.member_offset("foo", "a").unwrap(), 0);
        assert_eq!(btf.member_offset("foo", "b").unwrap(), 8);
        assert_eq!(btf.member_offset("foo", "c").unwrap(), 16);
    }

    #[test]
    fn anonymous_struct_inside_union_sums_offsets() {
        // struct outer {
        //     long x;                       // 0
        //     union {                       // 8
        //         long u;
        //         struct { int p; int q; }; // q at 8 + 0 + 4 = 12
        //     };
        //     struct { struct { int deep; } /* at +4 */; } /* at 16 */; // deep at 20
        // };
        let mut b = Builder::new();
        let int = b.int("int", 4);
        let long = b.int("long", 8);
        let pq = b.strukt("", 8, &[("p", int, 0), ("q", int, 32)]);
        let un = b.union("", 8, &[("u", long, 0), ("", pq, 0)]);
        let inner = b.strukt("", 4, &[("deep", int, 0)]);
        let wrap = b.strukt("", 8, &[("", inner, 32)]);
        b.strukt("outer", 24, &[("x", long, 0), ("", un, 64), ("", wrap, 128)]);
        let btf = Btf::parse(&b.finish()).unwrap();
        assert_eq!(btf.member_offset("outer", "x").unwrap(), 0);
        assert_eq!(btf.member_offset("outer", "u").unwrap(), 8);
        assert_eq!(btf.member_offset("outer", "p").unwrap(), 8);
        assert_eq!(btf.member_offset("outer", "q").unwrap(), 12);
        assert_eq!(btf.member_offset("outer", "deep").unwrap(), 20);
        // Anonymous types are not indexed by name.
        assert!(!btf.has_struct(""));
    }

    #[test]
    fn member_path_follows_typedefs_of_anonymous_structs() {
        // typedef struct { struct net *net; } possible_net_t;
        // struct ns_common { int a; union { int x; struct { int pad; unsigned int inum; }; }; };
        // struct sock_common { long a; possible_net_t skc_net; };   skc_net.net at 8
        // struct net { long a; long b; struct ns_common ns; };      ns.inum at 16 + 4 + 4 = 24
        let mut b = Builder::new();
        let int = b.int("int", 4);
        let long = b.int("long", 8);
        let anon_net = b.strukt("", 8, &[("net", long, 0)]);
        let possible = b.modifier(KIND_TYPEDEF, "possible_net_t", anon_net);
        b.strukt("sock_common", 16, &[("a", long, 0), ("skc_net", possible, 64)]);
        let padinum = b.strukt("", 8, &[("pad", int, 0), ("inum", int, 32)]);
        let un = b.union("", 8, &[("x", int, 0), ("", padinum, 0)]);
        let ns = b.strukt("ns_common", 12, &[("a", int, 0), ("", un, 32)]);
        b.strukt("net", 28, &[("a", long, 0), ("b", long, 64), ("ns", ns, 128)]);
        let btf = Btf::parse(&b.finish()).unwrap();
        assert_eq!(btf.member_path_offset("sock_common", &["skc_net", "net"]).unwrap(), 8);
        assert_eq!(btf.member_path_offset("net", &["ns", "inum"]).unwrap(), 24);
        assert_eq!(btf.member_path_offset("net", &["b"]).unwrap(), 8);
        let e = btf.member_path_offset("net", &["b", "inum"]).unwrap_err();
        assert!(matches!(e, BtfError::MemberNotFound { ref member, .. } if member == "b.inum"), "{e}");
    }

    #[test]
    fn enumerators_are_found_by_enum_and_name() {
        let mut b = Builder::new();
        let (x, y, z) = (b.name("BPF_FUNC_unspec"), b.name("BPF_FUNC_get_current_task_btf"), b.name("OTHER"));
        b.raw("bpf_func_id", KIND_ENUM, false, 2, 4, &[x, 0, y, 158]);
        b.raw("wide", KIND_ENUM64, false, 1, 8, &[z, 1, 0]);
        let btf = Btf::parse(&b.finish()).unwrap();
        assert!(btf.has_enumerator("bpf_func_id", "BPF_FUNC_get_current_task_btf"));
        assert!(btf.has_enumerator("bpf_func_id", "BPF_FUNC_unspec"));
        assert!(btf.has_enumerator("wide", "OTHER"));
        assert!(!btf.has_enumerator("bpf_func_id", "OTHER"), "an enumerator of another enum");
        assert!(!btf.has_enumerator("bpf_func_id", "BPF_FUNC_loop"));
        assert!(!btf.has_enumerator("missing", "BPF_FUNC_unspec"));
    }

    #[test]
    fn functions_are_found_by_name() {
        let mut b = Builder::new();
        let proto = b.raw("", KIND_FUNC_PROTO, false, 0, 0, &[]);
        let _other = b.int("vfs_read", 8);
        let f = b.raw("vfs_read", KIND_FUNC, false, 0, proto, &[]);
        let btf = Btf::parse(&b.finish()).unwrap();
        assert_eq!(btf.func_id("vfs_read"), Some(f), "the function, not the int of the same name");
        assert_eq!(btf.func_id("vfs_write"), None);
    }

    #[test]
    fn missing_struct() {
        let btf = Btf::parse(&simple()).unwrap();
        let err = btf.member_offset("task_struct", "pid").unwrap_err();
        assert!(matches!(err, BtfError::StructNotFound(ref s) if s == "task_struct"), "{err}");
        assert_eq!(err.to_string(), "struct \"task_struct\" not found in BTF");
    }

    #[test]
    fn missing_member() {
        let btf = Btf::parse(&simple()).unwrap();
        let err = btf.member_offset("foo", "zzz").unwrap_err();
        assert!(
            matches!(err, BtfError::MemberNotFound { ref struct_name, ref member }
                if struct_name == "foo" && member == "zzz"),
            "{err}"
        );
        assert_eq!(err.to_string(), "member \"zzz\" not found in struct \"foo\"");
    }

    #[test]
    fn bitfields_are_rejected() {
        let mut b = Builder::new();
        let int = b.int("int", 4);
        let int3 = b.raw("", KIND_INT, false, 0, 4, &[3]); // 3-bit int, as for bitfields
                                                           // kind_flag set: offset word = bitfield size << 24 | bit offset.
        b.composite(
            KIND_STRUCT,
            "kf",
            true,
            8,
            &[("bf", int, (3 << 24) | 32), ("plain", int, 0), ("", int, (5 << 24) | 35)],
        );
        // kind_flag clear: misaligned offset, or byte-aligned narrow INT.
        b.strukt("nokf", 8, &[("a", int, 0), ("odd", int, 35), ("narrow", int3, 40)]);
        // A bitfield reached through an anonymous struct.
        let anon = b.composite(KIND_STRUCT, "", true, 4, &[("x", int, 1 << 24)]);
        b.strukt("outer", 4, &[("", anon, 0)]);
        let btf = Btf::parse(&b.finish()).unwrap();

        for (s, m) in [("kf", "bf"), ("nokf", "odd"), ("nokf", "narrow"), ("outer", "x")] {
            let err = btf.member_offset(s, m).unwrap_err();
            assert!(matches!(err, BtfError::Bitfield { .. }), "{s}.{m}: {err}");
        }
        // Ordinary members of a kind_flag struct have bitfield size 0 and are fine;
        // the unnamed padding bitfield is skipped, not descended into.
        assert_eq!(btf.member_offset("kf", "plain").unwrap(), 0);
        assert_eq!(btf.member_offset("nokf", "a").unwrap(), 0);
        let msg = btf.member_offset("kf", "bf").unwrap_err().to_string();
        assert!(msg.contains("bitfield"), "{msg}");
    }

    #[test]
    fn bad_magic_version_and_endianness() {
        let mut data = simple();
        data[0] = 0x34;
        data[1] = 0x12;
        let err = Btf::parse(&data).unwrap_err();
        assert!(matches!(err, BtfError::BadMagic(0x1234)), "{err}");
        assert!(err.to_string().contains("0x1234"), "{err}");

        let mut data = simple();
        data.swap(0, 1);
        assert!(matches!(Btf::parse(&data).unwrap_err(), BtfError::BigEndian));

        let mut data = simple();
        data[2] = 2;
        assert!(matches!(Btf::parse(&data).unwrap_err(), BtfError::UnsupportedVersion(2)));

        let mut data = simple();
        data[4..8].copy_from_slice(&8u32.to_le_bytes());
        assert!(matches!(Btf::parse(&data).unwrap_err(), BtfError::BadHeaderLen(8)));
    }

    #[test]
    fn truncated_input() {
        let data = simple();
        // Short header.
        let err = Btf::parse(&data[..10]).unwrap_err();
        assert!(matches!(err, BtfError::Truncated { what: "header", .. }), "{err}");
        assert!(Btf::parse(&[]).is_err());
        // Header intact but the string section is cut off.
        let err = Btf::parse(&data[..data.len() - 1]).unwrap_err();
        assert!(matches!(err, BtfError::Truncated { what: "string section", .. }), "{err}");
        // A struct whose vlen claims more members than the type section holds.
        let mut b = Builder::new();
        let int = b.int("int", 4);
        b.strukt("foo", 4, &[("a", int, 0)]);
        let mut data = b.finish();
        let info_pos = HEADER_LEN + 16 + 4; // second type's info word
        data[info_pos] = 2; // vlen 1 -> 2
        let err = Btf::parse(&data).unwrap_err();
        assert!(matches!(err, BtfError::TruncatedType { type_id: 2, kind: KIND_STRUCT }), "{err}");
    }

    #[test]
    fn unknown_kind() {
        let mut b = Builder::new();
        b.int("int", 4);
        b.raw("", 25, false, 0, 0, &[]);
        let err = Btf::parse(&b.finish()).unwrap_err();
        assert!(matches!(err, BtfError::UnknownKind { kind: 25, type_id: 2 }), "{err}");
        assert_eq!(err.to_string(), "unknown BTF kind 25 at type id 2");
    }

    #[test]
    fn modifiers_on_anonymous_member_types() {
        // struct s { int a; const struct { int b; }; typedef'd volatile union { int c; }; }
        let mut b = Builder::new();
        let int = b.int("int", 4);
        let sb = b.strukt("", 4, &[("b", int, 0)]);
        let c_sb = b.modifier(KIND_CONST, "", sb);
        let uc = b.union("", 4, &[("c", int, 0)]);
        let v_uc = b.modifier(KIND_VOLATILE, "", uc);
        let td = b.modifier(KIND_TYPEDEF, "uc_t", v_uc);
        let tag = b.modifier(KIND_TYPE_TAG, "user", td);
        b.strukt("s", 12, &[("a", int, 0), ("", c_sb, 32), ("", tag, 64)]);
        let btf = Btf::parse(&b.finish()).unwrap();
        assert_eq!(btf.member_offset("s", "b").unwrap(), 4);
        assert_eq!(btf.member_offset("s", "c").unwrap(), 8);
    }

    #[test]
    fn every_kind_with_trailing_data_is_skipped() {
        let mut b = Builder::new();
        let int = b.int("int", 4); // 1: INT, +4
        b.modifier(KIND_PTR, "", int);
        b.raw("", KIND_ARRAY, false, 0, 0, &[int, int, 4]); // +12
        b.raw("e", KIND_ENUM, false, 2, 4, &[0, 1, 0, 2]); // +8*vlen
        b.raw("fwd", KIND_FWD, false, 0, 0, &[]);
        b.modifier(KIND_RESTRICT, "", int);
        let proto = b.raw("", KIND_FUNC_PROTO, false, 3, int, &[0, int, 0, int, 0, int]); // +8*vlen
        b.raw("f", KIND_FUNC, false, 0, proto, &[]);
        let var = b.raw("v", KIND_VAR, false, 0, int, &[1]); // +4
        b.raw(".data", KIND_DATASEC, false, 1, 4, &[var, 0, 4]); // +12*vlen
        b.raw("float", KIND_FLOAT, false, 0, 4, &[]);
        b.raw("tag", KIND_DECL_TAG, false, 0, int, &[u32::MAX]); // +4
        b.raw("e64", KIND_ENUM64, false, 2, 8, &[0, 1, 0, 0, 2, 0]); // +12*vlen
        b.strukt("after", 8, &[("x", int, 0), ("y", int, 32)]);
        let btf = Btf::parse(&b.finish()).unwrap();
        assert_eq!(btf.member_offset("after", "y").unwrap(), 4);
    }

    #[test]
    fn duplicate_names_prefer_first_struct_with_members() {
        let mut b = Builder::new();
        let int = b.int("int", 4);
        b.raw("dup", KIND_FWD, false, 0, 0, &[]);
        b.strukt("dup", 0, &[]);
        b.strukt("dup", 8, &[("a", int, 0), ("b", int, 32)]);
        b.strukt("dup", 8, &[("b", int, 0)]);
        b.strukt("empty", 0, &[]);
        let btf = Btf::parse(&b.finish()).unwrap();
        assert_eq!(btf.member_offset("dup", "b").unwrap(), 4);
        assert!(btf.has_struct("empty"));
        assert!(matches!(btf.member_offset("empty", "a").unwrap_err(), BtfError::MemberNotFound { .. }));
        // A forward declaration alone does not count as a struct.
        let mut b = Builder::new();
        b.raw("only_fwd", KIND_FWD, false, 0, 0, &[]);
        assert!(!Btf::parse(&b.finish()).unwrap().has_struct("only_fwd"));
    }

    #[test]
    fn cycles_and_bad_ids_error_instead_of_hanging() {
        // Type 1: struct loop { <anonymous member of type 1> }.
        let mut b = Builder::new();
        b.strukt("loop", 4, &[("", 1, 0)]);
        // Type 2/3: typedef cycle used as an anonymous member.
        b.modifier(KIND_TYPEDEF, "t2", 3);
        b.modifier(KIND_TYPEDEF, "t3", 2);
        b.strukt("tdloop", 4, &[("", 2, 0)]);
        b.strukt("dangling", 4, &[("", 99, 0)]);
        let btf = Btf::parse(&b.finish()).unwrap();
        assert!(matches!(btf.member_offset("loop", "x").unwrap_err(), BtfError::TypeLoop(_)));
        assert!(matches!(btf.member_offset("tdloop", "x").unwrap_err(), BtfError::TypeLoop(_)));
        assert!(matches!(btf.member_offset("dangling", "x").unwrap_err(), BtfError::BadTypeId(99)));
    }

    #[test]
    fn longer_header_is_accepted() {
        let mut data = simple();
        // Grow hdr_len to 32 and insert 8 zero bytes; section offsets stay relative.
        data[4..8].copy_from_slice(&32u32.to_le_bytes());
        data.splice(HEADER_LEN..HEADER_LEN, [0u8; 8]);
        let btf = Btf::parse(&data).unwrap();
        assert_eq!(btf.member_offset("foo", "c").unwrap(), 16);
    }

    #[test]
    fn io_error_names_the_path() {
        let err = Btf::from_file(Path::new("/nonexistent/btf/vmlinux")).unwrap_err();
        assert!(matches!(err, BtfError::Io { .. }));
        assert!(err.to_string().contains("/nonexistent/btf/vmlinux"), "{err}");
    }

    #[test]
    fn a_regular_file_is_read_not_mapped() {
        let dir = std::env::temp_dir().join(format!("hitcount-btf-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("simple.btf");
        std::fs::write(&path, simple()).unwrap();
        let read = Btf::from_file(&path).unwrap();
        assert!(matches!(read.data, Bytes::Read(_)), "a regular file can shrink under a mapping");
        assert_eq!(&*read.data, &simple()[..]);
        assert_eq!(read.member_offset("foo", "c").unwrap(), 16);
        // An empty file is refused as BTF.
        std::fs::write(&path, b"").unwrap();
        assert!(matches!(Btf::from_file(&path), Err(BtfError::Truncated { what: "header", .. })));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// The running kernel's BTF, mapped (Linux 6.16+) or read: the same bytes.
    #[test]
    fn vmlinux_btf_mapped_or_read_is_the_file() {
        let path = Path::new(VMLINUX_BTF_PATH);
        let Ok(read) = std::fs::read(path) else { return };
        let btf = Btf::from_file(path).unwrap();
        assert!(*btf.data == read[..]);
        let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
        let mut v = release.split(|c: char| !c.is_ascii_digit()).map(|n| n.parse::<u32>().unwrap_or(0));
        if (v.next().unwrap_or(0), v.next().unwrap_or(0)) >= (6, 16) {
            assert!(matches!(btf.data, Bytes::Mapped(_)), "sysfs maps the BTF since 6.16 ({release})");
        }
    }

    #[test]
    fn running_kernel_vmlinux() {
        if std::fs::File::open(VMLINUX_BTF_PATH).is_err() {
            println!("{VMLINUX_BTF_PATH} not readable; skipping");
            return;
        }
        let start = std::time::Instant::now();
        let btf = Btf::from_sys_fs().unwrap();
        println!("parsed {btf:?} in {:?}", start.elapsed());
        assert!(btf.has_struct("task_struct"));
        assert!(btf.has_struct("mm_struct"));
        for m in ["mm", "real_parent", "tgid", "pid", "exit_code"] {
            let off = btf.member_offset("task_struct", m).unwrap();
            println!("task_struct.{m} = {off}");
        }
        let start = btf.member_offset("mm_struct", "arg_start").unwrap();
        let end = btf.member_offset("mm_struct", "arg_end").unwrap();
        println!("mm_struct.arg_start = {start}, arg_end = {end}");
        assert!(start < end);
        assert_eq!(end - start, 8);
    }
}
