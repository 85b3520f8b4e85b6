//! The legacy x_tables (iptables-legacy, ip6tables-legacy), read as libiptc
//! does: getsockopt(IPT_SO_GET_INFO) then getsockopt(IPT_SO_GET_ENTRIES) on
//! a raw socket, per table, and a walk of the blob of `ipt_entry` /
//! `ip6t_entry` records with their `xt_entry_match` and `xt_entry_target`
//! (include/uapi/linux/netfilter_ipv4/ip_tables.h, netfilter_ipv6/ip6_tables.h,
//! netfilter/x_tables.h). Every offset and size is checked against the blob.
use std::{
    net::{Ipv4Addr, Ipv6Addr},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

use super::{ChainInfo, ChainRules, Counters, Fields, Reading};

/// Largest table blob read; the kernel says the size first, so a bigger
/// table is refused (a source failure) before any memory is taken.
pub const MAX_TABLE_BYTES: usize = 32 << 20;
/// Tables listed in ip_tables_names that are read.
const MAX_TABLES: usize = 16;

const TABLE_NAME_LEN: usize = 32;
/// struct ipt_getinfo: name[32], valid_hooks, hook_entry[5], underflow[5],
/// num_entries, size.
pub const GETINFO_LEN: usize = 84;
/// struct ipt_get_entries before its entries: name[32], size, padding to 8.
pub const GET_ENTRIES_HDR: usize = 40;
const XT_ENTRY_HDR: usize = 32;
const NF_INET_NUMHOOKS: usize = 5;
const HOOKS: [&str; NF_INET_NUMHOOKS] = ["PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"];

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum XtError {
    #[error("{what}: {have} bytes where {need} are needed")]
    Short { what: &'static str, need: usize, have: usize },
    #[error("entry at offset {offset}: {why}")]
    Entry { offset: usize, why: String },
    #[error("{0}")]
    Invalid(String),
}

/// The IP family: where the fields of an entry lie.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    /// sizeof(struct ipt_entry) 112, sizeof(struct ip6t_entry) 168.
    fn entry_len(self) -> usize {
        match self {
            Family::V4 => 112,
            Family::V6 => 168,
        }
    }
    /// Offset of target_offset (next_offset follows), and of the counters.
    fn offsets(self) -> (usize, usize) {
        match self {
            Family::V4 => (88, 96),
            Family::V6 => (140, 152),
        }
    }
    fn backend(self) -> &'static str {
        match self {
            Family::V4 => "iptables-legacy",
            Family::V6 => "ip6tables-legacy",
        }
    }
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_ne_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_ne_bytes(a)
}

fn cstr(b: &[u8]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

/// One table as read: its chains in blob order.
#[derive(Debug, Clone, PartialEq)]
pub struct XtTable {
    pub name: String,
    pub chains: Vec<ChainRules>,
}

struct Entry<'a> {
    offset: usize,
    bytes: &'a [u8],
    target_offset: usize,
}

impl Entry<'_> {
    fn target_name(&self) -> String {
        cstr(&self.bytes[self.target_offset + 2..self.target_offset + 31])
    }
    fn target_data(&self) -> &[u8] {
        &self.bytes[self.target_offset + XT_ENTRY_HDR..]
    }
    /// The standard target's verdict, if this is one.
    fn standard_verdict(&self) -> Option<i32> {
        let d = self.target_data();
        (self.target_name().is_empty() && d.len() >= 4).then(|| u32_at(d, 0) as i32)
    }
}

/// Chain priorities of the legacy tables, fixed in the kernel
/// (include/uapi/linux/netfilter_ipv4.h, nf_ip_hook_priorities).
fn table_priority(table: &str, hook: usize) -> Option<i32> {
    Some(match table {
        "raw" => -300,
        "mangle" => -150,
        "nat" if hook == 0 || hook == 3 => -100,
        "nat" => 100,
        "filter" => 0,
        "security" => 50,
        _ => return None,
    })
}

/// Parses one table: the getinfo reply (84 bytes) followed by the
/// get_entries reply (40 bytes of header, then the entries).
pub fn parse_table(family: Family, buf: &[u8]) -> Result<XtTable, XtError> {
    if buf.len() < GETINFO_LEN + GET_ENTRIES_HDR {
        return Err(XtError::Short { what: "x_tables table", need: GETINFO_LEN + GET_ENTRIES_HDR, have: buf.len() });
    }
    let info = &buf[..GETINFO_LEN];
    let name = cstr(&info[..TABLE_NAME_LEN]);
    let valid_hooks = u32_at(info, 32);
    let hook_entry: Vec<usize> = (0..NF_INET_NUMHOOKS).map(|h| u32_at(info, 36 + 4 * h) as usize).collect();
    let underflow: Vec<usize> = (0..NF_INET_NUMHOOKS).map(|h| u32_at(info, 56 + 4 * h) as usize).collect();
    let size = u32_at(info, 80) as usize;
    let hdr = &buf[GETINFO_LEN..GETINFO_LEN + GET_ENTRIES_HDR];
    if u32_at(hdr, 32) as usize != size {
        return Err(XtError::Invalid(format!("entries of {} bytes where the table has {size}", u32_at(hdr, 32))));
    }
    let blob = &buf[GETINFO_LEN + GET_ENTRIES_HDR..];
    if blob.len() != size {
        return Err(XtError::Short { what: "x_tables entries", need: size, have: blob.len() });
    }
    let entries = walk(family, blob)?;
    let (elen, (_, counters_at)) = (family.entry_len(), family.offsets());

    // Where each chain starts: built-in chains at their hook entry, user
    // chains after their ERROR head entry (which names them).
    let mut starts: Vec<(usize, String, Option<usize>)> = Vec::new();
    for (h, hook) in HOOKS.iter().enumerate() {
        if valid_hooks & (1 << h) != 0 {
            starts.push((hook_entry[h], (*hook).to_string(), Some(h)));
        }
    }
    for e in &entries {
        if e.target_name() == "ERROR" {
            let chain = cstr(&e.target_data()[..e.target_data().len().min(30)]);
            if chain != "ERROR" {
                starts.push((e.offset + e.bytes.len(), chain, None));
            }
        }
    }
    let chain_at = |off: usize| starts.iter().find(|(o, _, _)| *o == off).map(|(_, n, _)| n.clone());

    let mut chains: Vec<ChainRules> = Vec::new();
    let mut current: Option<(usize, Option<usize>)> = None;
    let mut position = 0u64;
    for (i, e) in entries.iter().enumerate() {
        if let Some(idx) = starts.iter().position(|(o, _, _)| *o == e.offset) {
            let (_, chain, hook) = &starts[idx];
            chains.push(ChainRules {
                info: ChainInfo {
                    backend: family.backend(),
                    family: match family {
                        Family::V4 => "ip".into(),
                        Family::V6 => "ip6".into(),
                    },
                    table: name.clone(),
                    chain: chain.clone(),
                    hook: hook.map(|h| HOOKS[h].to_ascii_lowercase()),
                    chain_priority: hook.and_then(|h| table_priority(&name, h)),
                    enabled: true,
                },
                rules: Vec::new(),
                policy: None,
            });
            current = Some((chains.len() - 1, *hook));
            position = 0;
        }
        if e.target_name() == "ERROR" {
            current = None;
            continue;
        }
        let Some((ci, hook)) = current else { continue };
        let counters = Counters { packets: u64_at(e.bytes, counters_at), bytes: u64_at(e.bytes, counters_at + 8) };
        // A built-in chain ends at its underflow: the policy.
        if let Some(h) = hook {
            if e.offset == underflow[h] {
                let v = e.standard_verdict().map(|v| standard(v, None)).unwrap_or_else(|| e.target_name());
                chains[ci].policy = Some((v, Some(counters)));
                current = None;
                continue;
            }
        }
        // A user chain ends with an unconditional RETURN that iptables
        // adds and never shows: the entry before the next ERROR head.
        let last_of_user_chain = hook.is_none() && entries.get(i + 1).is_some_and(|n| n.target_name() == "ERROR");
        if last_of_user_chain && e.standard_verdict() == Some(-5) && e.target_offset == elen {
            continue;
        }
        position += 1;
        let mut f = entry_fields(family, e, &chain_at)
            .map_err(|why| XtError::Entry { offset: e.offset, why })
            .unwrap_or_else(|err| Fields { unparsed: vec![err.to_string()], ..Fields::default() });
        f.counters = Some(counters);
        chains[ci].rules.push((position, f));
    }
    Ok(XtTable { name, chains })
}

/// Splits the blob into entries, each checked to lie inside it.
fn walk(family: Family, blob: &[u8]) -> Result<Vec<Entry<'_>>, XtError> {
    let (elen, (to_at, _)) = (family.entry_len(), family.offsets());
    let mut out = Vec::new();
    let mut off = 0;
    while off < blob.len() {
        let rest = &blob[off..];
        if rest.len() < elen {
            return Err(XtError::Entry { offset: off, why: format!("{} bytes left, an entry has {elen}", rest.len()) });
        }
        let target_offset = u16_at(rest, to_at) as usize;
        let next = u16_at(rest, to_at + 2) as usize;
        if next < elen + XT_ENTRY_HDR || next > rest.len() || !next.is_multiple_of(8) {
            return Err(XtError::Entry { offset: off, why: format!("next_offset {next} in {} bytes", rest.len()) });
        }
        if target_offset < elen || target_offset + XT_ENTRY_HDR > next {
            return Err(XtError::Entry { offset: off, why: format!("target_offset {target_offset} of {next}") });
        }
        let target_size = u16_at(rest, target_offset) as usize;
        if target_size < XT_ENTRY_HDR || target_offset + target_size > next {
            return Err(XtError::Entry { offset: off, why: format!("target of {target_size} bytes") });
        }
        out.push(Entry { offset: off, bytes: &rest[..next], target_offset });
        off += next;
    }
    Ok(out)
}

/// A standard verdict: negative ones are -NF_x-1, others jump to an offset.
fn standard(v: i32, chain_at: Option<&dyn Fn(usize) -> Option<String>>) -> String {
    match v {
        -1 => "drop".into(),
        -2 => "accept".into(),
        -4 => "queue".into(),
        -5 => "return".into(),
        v if v >= 0 => match chain_at.and_then(|f| f(v as usize)) {
            Some(c) => format!("jump {c}"),
            None => format!("jump @{v}"),
        },
        v => format!("verdict {v}"),
    }
}

fn port_range(lo: u16, hi: u16, inv: bool) -> Option<String> {
    if lo == 0 && hi == 0xffff && !inv {
        return None;
    }
    let neg = if inv { "!" } else { "" };
    Some(if lo == hi { format!("{neg}{lo}") } else { format!("{neg}{lo}-{hi}") })
}

fn addr(family: Family, a: &[u8]) -> String {
    match family {
        Family::V4 => Ipv4Addr::new(a[0], a[1], a[2], a[3]).to_string(),
        Family::V6 => {
            let mut b = [0u8; 16];
            b.copy_from_slice(&a[..16]);
            Ipv6Addr::from(b).to_string()
        }
    }
}

fn prefix(family: Family, a: &[u8], mask: &[u8], inv: bool) -> Option<String> {
    if mask.iter().all(|b| *b == 0) && !inv {
        return None;
    }
    let bits: u32 = mask.iter().map(|b| b.count_ones()).sum();
    let full = mask.len() as u32 * 8;
    let neg = if inv { "!" } else { "" };
    let a = addr(family, a);
    Some(if bits == full { format!("{neg}{a}") } else { format!("{neg}{a}/{bits}") })
}

/// An interface as iptables shows it: `eth+` when the mask stops before
/// the name's end (a wildcard).
fn interface(name: &[u8], mask: &[u8], inv: bool) -> Option<String> {
    let n = cstr(name);
    if n.is_empty() {
        return None;
    }
    let masked = mask.iter().take_while(|b| **b == 0xff).count();
    let neg = if inv { "!" } else { "" };
    // iptables keeps the `+` in the name; add it only when it did not.
    Some(if masked <= n.len() && !n.ends_with('+') { format!("{neg}{n}+") } else { format!("{neg}{n}") })
}

/// The fields of one entry: its IP header match, its matches, its target.
fn entry_fields(family: Family, e: &Entry<'_>, chain_at: &dyn Fn(usize) -> Option<String>) -> Result<Fields, String> {
    let b = e.bytes;
    let mut f = Fields::default();
    // ipt_ip: src 0, dst 4, smsk 8, dmsk 12, iniface 16, outiface 32,
    // masks 48 and 64, proto 80, flags 82, invflags 83. ip6t_ip6: src 0,
    // dst 16, smsk 32, dmsk 48, iniface 64, outiface 80, masks 96 and 112,
    // proto 128, tos 130, flags 131, invflags 132.
    let (alen, ifb, proto_at, flags_at, inv_at) = match family {
        Family::V4 => (4, 16, 80, 82, 83),
        Family::V6 => (16, 64, 128, 131, 132),
    };
    let (flags, inv) = (b[flags_at], b[inv_at]);
    // IPT_INV_VIA_IN 1, VIA_OUT 2, SRCIP 8, DSTIP 0x10, PROTO 0x40
    f.source_address = prefix(family, &b[0..alen], &b[2 * alen..3 * alen], inv & 0x08 != 0);
    f.destination_address = prefix(family, &b[alen..2 * alen], &b[3 * alen..4 * alen], inv & 0x10 != 0);
    f.interfaces.input = interface(&b[ifb..ifb + 16], &b[ifb + 32..ifb + 48], inv & 0x01 != 0);
    f.interfaces.output = interface(&b[ifb + 16..ifb + 32], &b[ifb + 48..ifb + 64], inv & 0x02 != 0);
    let proto = u16_at(b, proto_at);
    // ip6tables says a protocol is given with IP6T_F_PROTO; iptables by a non-zero one.
    let has_proto = match family {
        Family::V4 => proto != 0,
        Family::V6 => flags & 0x01 != 0,
    };
    if has_proto {
        let neg = if inv & 0x40 != 0 { "!" } else { "" };
        f.protocol = Some(format!("{neg}{}", super::protocol_name(proto as u8)));
    }
    // IPT_F_FRAG 1, IPT_INV_FRAG 0x20: `-f`
    if family == Family::V4 && (inv & 0x20 != 0 || flags & 0x01 != 0) {
        f.unparsed.push("fragment".into());
    }
    // Matches lie between the entry header and the target.
    let mut off = family.entry_len();
    while off < e.target_offset {
        if off + XT_ENTRY_HDR > e.target_offset {
            return Err(format!("match header at {off} past the target at {}", e.target_offset));
        }
        let size = u16_at(b, off) as usize;
        if size < XT_ENTRY_HDR || off + size > e.target_offset {
            return Err(format!("match of {size} bytes at {off}"));
        }
        let name = cstr(&b[off + 2..off + 31]);
        let revision = b[off + 31];
        let data = &b[off + XT_ENTRY_HDR..off + size];
        if !decode_match(family, &name, revision, data, &mut f) {
            f.unparsed.push(name);
        }
        off += size;
    }
    let goto = match family {
        Family::V4 => flags & 0x02 != 0,
        Family::V6 => flags & 0x04 != 0,
    };
    let verdict = match e.standard_verdict() {
        Some(v) if v >= 0 && v as usize == e.offset + b.len() => "continue".into(),
        Some(v) => {
            let s = standard(v, Some(chain_at));
            if goto {
                s.replacen("jump", "goto", 1)
            } else {
                s
            }
        }
        None => e.target_name().to_ascii_lowercase(),
    };
    f.verdict = Some(verdict);
    Ok(f)
}

fn list_ports(ports: &[u16], ranges: Option<&[u8]>) -> String {
    let mut parts = Vec::new();
    let mut i = 0;
    while i < ports.len() {
        if ranges.is_some_and(|r| r.get(i) == Some(&1)) && i + 1 < ports.len() {
            parts.push(format!("{}-{}", ports[i], ports[i + 1]));
            i += 2;
        } else {
            parts.push(ports[i].to_string());
            i += 1;
        }
    }
    format!("{{{}}}", parts.join(", "))
}

/// Fills fields from one match; false when the match is not one we read.
fn decode_match(family: Family, name: &str, revision: u8, d: &[u8], f: &mut Fields) -> bool {
    let need = |n: usize| d.len() >= n;
    match name {
        // xt_tcp: spts[2] 0, dpts[2] 4, option 8, flg_mask 9, flg_cmp 10, invflags 11
        "tcp" if need(12) => {
            f.source_port = port_range(u16_at(d, 0), u16_at(d, 2), d[11] & 0x01 != 0);
            f.destination_port = port_range(u16_at(d, 4), u16_at(d, 6), d[11] & 0x02 != 0);
            if d[9] != 0 || d[8] != 0 {
                f.unparsed.push("tcp flags".into());
            }
            true
        }
        // xt_udp: spts[2] 0, dpts[2] 4, invflags 8
        "udp" if need(9) => {
            f.source_port = port_range(u16_at(d, 0), u16_at(d, 2), d[8] & 0x01 != 0);
            f.destination_port = port_range(u16_at(d, 4), u16_at(d, 6), d[8] & 0x02 != 0);
            true
        }
        // xt_multiport (rev 0): flags 0, count 1, ports[15] 2; v1 adds
        // pflags[15] 32 (a range starts here) and invert 47.
        "multiport" if need(32) => {
            let count = (d[1] as usize).min(15);
            let ports: Vec<u16> = (0..count).map(|i| u16_at(d, 2 + 2 * i)).collect();
            let (ranges, inv) = if revision >= 1 && need(48) { (Some(&d[32..47]), d[47] != 0) } else { (None, false) };
            let s = format!("{}{}", if inv { "!" } else { "" }, list_ports(&ports, ranges));
            match d[0] {
                0 => f.source_port = Some(s),
                1 => f.destination_port = Some(s),
                _ => return false,
            }
            true
        }
        // xt_iprange_mtinfo (rev 1): src_min 0, src_max 16, dst_min 32,
        // dst_max 48 (nf_inet_addr), flags 64: SRC 1, DST 2, SRC_INV 0x10, DST_INV 0x20
        "iprange" if revision >= 1 && need(65) => {
            let alen = if family == Family::V4 { 4 } else { 16 };
            let flags = d[64];
            let r = |lo: usize, inv: bool| {
                format!(
                    "{}{}-{}",
                    if inv { "!" } else { "" },
                    addr(family, &d[lo..lo + alen]),
                    addr(family, &d[lo + 16..])
                )
            };
            if flags & 1 != 0 {
                f.source_address = Some(r(0, flags & 0x10 != 0));
            }
            if flags & 2 != 0 {
                f.destination_address = Some(r(32, flags & 0x20 != 0));
            }
            true
        }
        // xt_state_info: statemask
        "state" if need(4) => {
            f.conntrack_state = Some(super::ct_states(u32_at(d, 0)));
            true
        }
        // xt_conntrack_mtinfo1: match_flags u8 146, invert_flags u8 147,
        // state_mask u8 148; mtinfo2 and 3: u16 at 146, 148, 150.
        "conntrack" => {
            let (mflags, iflags, state) = match revision {
                1 if need(150) => (u16::from(d[146]), u16::from(d[147]), u32::from(d[148])),
                2 | 3 if need(154) => (u16_at(d, 146), u16_at(d, 148), u32::from(u16_at(d, 150))),
                _ => return false,
            };
            // XT_CONNTRACK_STATE 1; the other criteria are not mapped.
            if mflags & 1 != 0 {
                let neg = if iflags & 1 != 0 { "!" } else { "" };
                f.conntrack_state = Some(format!("{neg}{}", super::ct_states(state)));
            }
            // XT_CONNTRACK_STATE_ALIAS (1 << 13): `-m state` spelled as conntrack.
            if mflags & !(1 | 1 << 13) != 0 {
                f.unparsed.push("conntrack (not state)".into());
            }
            true
        }
        _ => false,
    }
}

pub fn parse_ipv4_table(buf: &[u8]) -> Result<XtTable, XtError> {
    parse_table(Family::V4, buf)
}

pub fn parse_ipv6_table(buf: &[u8]) -> Result<XtTable, XtError> {
    parse_table(Family::V6, buf)
}

// ---- The kernel side. ----

/// IPT_SO_GET_INFO / IP6T_SO_GET_INFO (IPT_BASE_CTL 64), _GET_ENTRIES 65.
const SO_GET_INFO: i32 = 64;
const SO_GET_ENTRIES: i32 = 65;

fn getsockopt(fd: &OwnedFd, level: i32, opt: i32, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut len = buf.len() as libc::socklen_t;
    // SAFETY: buf is writable for len bytes; the kernel writes at most len.
    if unsafe { libc::getsockopt(fd.as_raw_fd(), level, opt, buf.as_mut_ptr().cast(), &mut len) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(len as usize)
}

/// Fetches one table as [`parse_table`] takes it.
pub fn fetch_table(family: Family, table: &str) -> std::io::Result<Vec<u8>> {
    let (domain, level) = match family {
        Family::V4 => (libc::AF_INET, libc::IPPROTO_IP),
        Family::V6 => (libc::AF_INET6, libc::IPPROTO_IPV6),
    };
    // SAFETY: plain socket(2); the fd is owned below.
    let fd = unsafe { libc::socket(domain, libc::SOCK_RAW | libc::SOCK_CLOEXEC, libc::IPPROTO_RAW) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd was just opened and is ours alone.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    if table.len() >= TABLE_NAME_LEN {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, "table name too long"));
    }
    // The table can change between the two calls (EAGAIN): read again.
    for _ in 0..3 {
        let mut info = vec![0u8; GETINFO_LEN];
        info[..table.len()].copy_from_slice(table.as_bytes());
        getsockopt(&fd, level, SO_GET_INFO, &mut info)?;
        let size = u32_at(&info, 80) as usize;
        if size > MAX_TABLE_BYTES {
            return Err(std::io::Error::other(format!(
                "table of {size} bytes is larger than the bound of {MAX_TABLE_BYTES}; not read"
            )));
        }
        let mut entries = vec![0u8; GET_ENTRIES_HDR + size];
        entries[..table.len()].copy_from_slice(table.as_bytes());
        entries[32..36].copy_from_slice(&(size as u32).to_ne_bytes());
        match getsockopt(&fd, level, SO_GET_ENTRIES, &mut entries) {
            Ok(_) => {
                info.extend_from_slice(&entries);
                return Ok(info);
            }
            Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => continue,
            Err(e) => return Err(e),
        }
    }
    Err(std::io::Error::other("the table kept changing while it was read"))
}

/// The legacy tables that exist in the calling thread's namespace. Only
/// these are read: asking for another would make the kernel create it.
fn table_names(family: Family) -> Vec<String> {
    let file = match family {
        Family::V4 => "/proc/thread-self/net/ip_tables_names",
        Family::V6 => "/proc/thread-self/net/ip6_tables_names",
    };
    // The kernel's view of this thread's namespace, not a host file: no
    // HostFs. Absent when x_tables is not in the kernel.
    let text =
        crate::limits::read_to_string_bounded("x_tables names", std::path::Path::new(file), 4096).unwrap_or_default();
    let mut names: Vec<String> = text.lines().map(str::trim).filter(|l| !l.is_empty()).map(String::from).collect();
    names.truncate(MAX_TABLES);
    names
}

/// Reads the legacy tables of the calling thread's namespace into `out`.
pub fn read(out: &mut Reading) {
    for family in [Family::V4, Family::V6] {
        for table in table_names(family) {
            let source = format!("{} table {table}", family.backend());
            match fetch_table(family, &table) {
                Ok(buf) => match parse_table(family, &buf) {
                    Ok(t) => out.chains.extend(t.chains),
                    Err(e) => out.failures.push((source, e.to_string())),
                },
                Err(e) => out.failures.push((source, e.to_string())),
            }
        }
    }
}
