//! Where the running kernel keeps the socket fields socket acceleration
//! reads, found in its BTF (`/sys/kernel/btf/vmlinux`).
//!
//! The `sk_msg` program decides per send whether the peer socket has room
//! (`sk_rmem_alloc`) and whether bytes sent through TCP were all read
//! (`write_seq`, `copied_seq`). Those fields' offsets differ between kernel
//! builds; the programs are written once, so the daemon looks the offsets up
//! here and hands them to the programs as load-time constants. Only the
//! parts of the BTF format needed to walk struct members are read.

use std::path::Path;

/// The kernel's own BTF.
pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

/// Why the layout could not be found.
#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    /// The BTF file could not be read (a kernel built without BTF).
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The data is not BTF, or is cut short.
    #[error("the kernel's BTF is malformed: {0}")]
    Malformed(&'static str),
    /// A struct or member is not where the programs expect it.
    #[error("the kernel's BTF has no {0}")]
    Missing(String),
}

/// The first Linux release that accounts bytes redirected into a socket's
/// receive queue in its `sk_rmem_alloc` (commit d888b7af7c14, 6.13): without
/// it the programs cannot see a peer's backlog, so a receiver that stops
/// reading would let its sender queue without bound.
pub const MIN_RELEASE: (u32, u32) = (6, 13);

/// Why socket acceleration cannot run on the kernel with release string
/// `release` (as `uname -r` prints it), if it cannot.
pub fn release_refusal(release: &str) -> Option<String> {
    let mut numbers = release
        .split(|c: char| !c.is_ascii_digit())
        .map(|part| part.parse::<u32>().ok());
    let version = (numbers.next().flatten(), numbers.next().flatten());
    match version {
        (Some(major), Some(minor)) if (major, minor) >= MIN_RELEASE => None,
        (Some(_), Some(_)) => Some(format!(
            "Linux {release} does not account redirected bytes at the receiver (Linux {}.{}+ \
             does), so a receiver that stops reading could not slow its sender",
            MIN_RELEASE.0, MIN_RELEASE.1
        )),
        _ => Some(format!("cannot read the kernel release from {release:?}")),
    }
}

/// The running kernel's release (`/proc/sys/kernel/osrelease`).
pub fn running_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_owned()
}

/// Byte offsets in `struct tcp_sock` (which begins with `struct sock`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SocketLayout {
    /// `sk_rmem_alloc` (`sk_backlog.rmem_alloc`): bytes queued for reading.
    pub rmem_alloc: u32,
    /// `write_seq`: the sequence number after the last byte written to TCP.
    pub write_seq: u32,
    /// `copied_seq`: the sequence number after the last byte read from TCP.
    pub copied_seq: u32,
}

impl SocketLayout {
    /// The layout of the running kernel.
    pub fn of_running_kernel() -> Result<Self, LayoutError> {
        Self::from_file(Path::new(VMLINUX_BTF))
    }

    /// The layout described by the BTF in `path`.
    pub fn from_file(path: &Path) -> Result<Self, LayoutError> {
        let data = std::fs::read(path).map_err(|source| LayoutError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_btf(&data)
    }

    /// The layout described by `btf` (raw BTF, as in `/sys/kernel/btf/vmlinux`).
    pub fn from_btf(btf: &[u8]) -> Result<Self, LayoutError> {
        let btf = Btf::parse(btf)?;
        let sock = btf.struct_named("sock")?;
        let backlog = btf.member(sock, "sk_backlog")?;
        let rmem_alloc = backlog.offset + btf.member(backlog.type_id, "rmem_alloc")?.offset;
        let tcp_sock = btf.struct_named("tcp_sock")?;
        Ok(Self {
            rmem_alloc,
            write_seq: btf.member(tcp_sock, "write_seq")?.offset,
            copied_seq: btf.member(tcp_sock, "copied_seq")?.offset,
        })
    }
}

/// `BTF_KIND_*` values used here.
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_TYPE_TAG: u32 = 18;

/// One type record: where its members start, if it has any.
#[derive(Clone, Copy)]
struct Type {
    name_off: u32,
    kind: u32,
    kind_flag: bool,
    vlen: u32,
    /// `size` or `type`, by kind.
    size_or_type: u32,
    /// Offset of the first trailing record (members) in the type section.
    trailer: usize,
}

/// A member found: its byte offset in its struct, and its type.
struct Member {
    offset: u32,
    type_id: u32,
}

/// A parsed BTF blob: the type table and the string section.
struct Btf<'a> {
    types: Vec<Type>,
    type_section: &'a [u8],
    strings: &'a [u8],
}

fn word(data: &[u8], at: usize) -> Result<u32, LayoutError> {
    data.get(at..at + 4)
        .map(|bytes| u32::from_le_bytes(bytes.try_into().expect("four bytes")))
        .ok_or(LayoutError::Malformed("cut short"))
}

impl<'a> Btf<'a> {
    fn parse(data: &'a [u8]) -> Result<Self, LayoutError> {
        const MAGIC: u16 = 0xeb9f;
        let magic = data
            .get(0..2)
            .map(|bytes| u16::from_le_bytes([bytes[0], bytes[1]]));
        if magic != Some(MAGIC) {
            return Err(LayoutError::Malformed(
                "no BTF magic (or not little-endian)",
            ));
        }
        let header_len = word(data, 4)? as usize;
        let (type_off, type_len) = (word(data, 8)? as usize, word(data, 12)? as usize);
        let (str_off, str_len) = (word(data, 16)? as usize, word(data, 20)? as usize);
        let section = |off: usize, len: usize| {
            data.get(header_len + off..header_len + off + len)
                .ok_or(LayoutError::Malformed("a section lies past the end"))
        };
        let type_section = section(type_off, type_len)?;
        let strings = section(str_off, str_len)?;
        // Type ids start at 1; id 0 is `void`.
        let mut types = vec![Type {
            name_off: 0,
            kind: 0,
            kind_flag: false,
            vlen: 0,
            size_or_type: 0,
            trailer: 0,
        }];
        let mut at = 0;
        while at < type_section.len() {
            let info = word(type_section, at + 4)?;
            let record = Type {
                name_off: word(type_section, at)?,
                kind: (info >> 24) & 0x1f,
                kind_flag: info >> 31 == 1,
                vlen: info & 0xffff,
                size_or_type: word(type_section, at + 8)?,
                trailer: at + 12,
            };
            let vlen = record.vlen as usize;
            let trailing = match record.kind {
                1 | 14 | 17 => 4,             // INT, VAR, DECL_TAG
                3 => 12,                      // ARRAY
                4 | 5 | 15 | 19 => 12 * vlen, // STRUCT, UNION, DATASEC, ENUM64
                6 | 13 => 8 * vlen,           // ENUM, FUNC_PROTO
                2 | 7..=12 | 16 | 18 => 0,    // PTR, FWD, TYPEDEF, modifiers, FUNC, FLOAT, TYPE_TAG
                _ => return Err(LayoutError::Malformed("a type of unknown kind")),
            };
            types.push(record);
            at = record.trailer + trailing;
        }
        Ok(Self {
            types,
            type_section,
            strings,
        })
    }

    fn name(&self, offset: u32) -> &[u8] {
        let rest = self.strings.get(offset as usize..).unwrap_or_default();
        let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
        &rest[..end]
    }

    /// The id of the struct called `name`.
    fn struct_named(&self, name: &str) -> Result<u32, LayoutError> {
        self.types
            .iter()
            .position(|t| t.kind == KIND_STRUCT && self.name(t.name_off) == name.as_bytes())
            .map(|id| id as u32)
            .ok_or_else(|| LayoutError::Missing(format!("struct {name}")))
    }

    /// `id` with typedefs and qualifiers peeled off.
    fn resolve(&self, mut id: u32) -> Result<&Type, LayoutError> {
        // Chains are short; the bound only guards against a cycle.
        for _ in 0..32 {
            let t = self
                .types
                .get(id as usize)
                .ok_or(LayoutError::Malformed("a type id out of range"))?;
            match t.kind {
                KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => {
                    id = t.size_or_type
                }
                _ => return Ok(t),
            }
        }
        Err(LayoutError::Malformed("a cycle of typedefs"))
    }

    /// The member `name` of the struct or union `id`.
    fn member(&self, id: u32, name: &str) -> Result<Member, LayoutError> {
        let t = self.resolve(id)?;
        if t.kind != KIND_STRUCT && t.kind != KIND_UNION {
            return Err(LayoutError::Missing(format!("{name} (not in a struct)")));
        }
        for index in 0..t.vlen as usize {
            let at = t.trailer + 12 * index;
            if self.name(word(self.type_section, at)?) != name.as_bytes() {
                continue;
            }
            let offset = word(self.type_section, at + 8)?;
            // With kind_flag, the low 24 bits are the offset, the rest a bitfield size.
            let bits = if t.kind_flag {
                offset & 0xff_ffff
            } else {
                offset
            };
            if bits % 8 != 0 {
                return Err(LayoutError::Missing(format!("{name} at a byte offset")));
            }
            return Ok(Member {
                offset: bits / 8,
                type_id: word(self.type_section, at + 4)?,
            });
        }
        Err(LayoutError::Missing(format!("member {name}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_running_kernels_socket_layout_is_found_and_plausible() {
        // Every kernel these tests run on has BTF (the daemon needs it too).
        let layout = SocketLayout::of_running_kernel().expect("the kernel's BTF");
        // `struct sock` is hundreds of bytes; TCP's sequence numbers come after it.
        assert!(
            layout.rmem_alloc > 0 && layout.rmem_alloc < 1024,
            "{layout:?}"
        );
        assert!(layout.write_seq > layout.rmem_alloc, "{layout:?}");
        assert!(layout.copied_seq > layout.rmem_alloc, "{layout:?}");
        assert_ne!(layout.write_seq, layout.copied_seq);
    }

    #[test]
    fn kernels_before_the_receive_accounting_are_refused() {
        assert_eq!(release_refusal("6.18.44-fc-v1300"), None);
        assert_eq!(release_refusal("6.13.0"), None);
        assert_eq!(release_refusal("7.0.1"), None);
        assert!(release_refusal("6.12.9-amd64").unwrap().contains("6.13+"));
        assert!(release_refusal("5.15.0-91-generic").is_some());
        assert!(release_refusal("").is_some());
    }

    #[test]
    fn malformed_btf_is_refused_with_a_reason() {
        assert!(matches!(
            SocketLayout::from_btf(b"not btf"),
            Err(LayoutError::Malformed(_))
        ));
        // The magic alone, then nothing.
        assert!(matches!(
            SocketLayout::from_btf(&[0x9f, 0xeb, 1, 0]),
            Err(LayoutError::Malformed(_))
        ));
    }

    #[test]
    fn btf_without_the_socket_structs_names_what_is_missing() {
        // A header and one INT type called "int": no `struct sock`.
        let strings = b"\0int\0";
        let mut types = Vec::new();
        types.extend_from_slice(&1u32.to_le_bytes()); // name "int"
        types.extend_from_slice(&(1u32 << 24).to_le_bytes()); // INT
        types.extend_from_slice(&4u32.to_le_bytes()); // size
        types.extend_from_slice(&32u32.to_le_bytes()); // encoding
        let mut btf = Vec::new();
        btf.extend_from_slice(&0xeb9f_u16.to_le_bytes());
        btf.extend_from_slice(&[1, 0]);
        for value in [
            24,
            0,
            types.len() as u32,
            types.len() as u32,
            strings.len() as u32,
        ] {
            btf.extend_from_slice(&value.to_le_bytes());
        }
        btf.extend_from_slice(&types);
        btf.extend_from_slice(strings);
        match SocketLayout::from_btf(&btf) {
            Err(LayoutError::Missing(what)) => assert_eq!(what, "struct sock"),
            other => panic!("{other:?}"),
        }
    }
}
