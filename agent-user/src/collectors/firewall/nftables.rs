//! nf_tables, read over NETLINK_NETFILTER as `nft list ruleset` does: dumps
//! of tables, chains, rules, sets and set elements (NFT_MSG_GET* with
//! NLM_F_DUMP), then a pure parser of the messages and of each rule's
//! expressions (include/uapi/linux/netfilter/nf_tables.h) into
//! [`Fields`]. Every length and offset is checked; a message that does not
//! parse is an error of its own and the others still count.
use std::{
    collections::HashMap,
    net::{Ipv4Addr, Ipv6Addr},
};

use super::{ChainInfo, ChainRules, Counters, Fields, Reading};

/// Bytes of netlink messages read in one dump. A ruleset of 10,000 simple
/// rules is about 2 MB; past the bound the dump is cut, and the cut is a
/// source failure.
pub const MAX_DUMP_BYTES: usize = 32 << 20;

const NETLINK_NETFILTER: i32 = 12;
const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFT_MSG_NEWTABLE: u16 = 0;
const NFT_MSG_GETTABLE: u16 = 1;
const NFT_MSG_NEWCHAIN: u16 = 3;
const NFT_MSG_GETCHAIN: u16 = 4;
const NFT_MSG_NEWRULE: u16 = 6;
const NFT_MSG_GETRULE: u16 = 7;
const NFT_MSG_NEWSET: u16 = 9;
const NFT_MSG_GETSET: u16 = 10;
const NFT_MSG_NEWSETELEM: u16 = 12;
const NFT_MSG_GETSETELEM: u16 = 13;
const NLMSG_NOOP: u16 = 1;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_DUMP_INTR: u16 = 0x10;
const NLM_F_DUMP: u16 = 0x300;
const NLA_TYPE_MASK: u16 = 0x3fff;
const NLMSG_HDRLEN: usize = 16;
const NFGENMSG_LEN: usize = 4;

const NFT_TABLE_F_DORMANT: u32 = 1;
const NFT_SET_ANONYMOUS: u32 = 0x1;
const NFT_SET_ELEM_INTERVAL_END: u32 = 0x1;
const NFT_LOOKUP_F_INV: u32 = 0x1;

/// Why a dump or part of it could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NftError {
    #[error("{what}: {have} bytes where {need} are needed")]
    Short { what: &'static str, need: usize, have: usize },
    #[error("{what}: {why}")]
    Invalid { what: &'static str, why: String },
    #[error("the kernel refused the request: {}", std::io::Error::from_raw_os_error(*.0))]
    Kernel(i32),
    #[error("the ruleset changed during the dump")]
    Interrupted,
}

fn short(what: &'static str, need: usize, have: usize) -> NftError {
    NftError::Short { what, need, have }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table {
    pub family: u8,
    pub name: String,
    pub flags: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chain {
    pub family: u8,
    pub table: String,
    pub name: String,
    /// Hook number and priority: a base chain.
    pub hook: Option<(u32, i32)>,
    pub policy: Option<u32>,
    pub counters: Option<Counters>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub family: u8,
    pub table: String,
    pub chain: String,
    pub handle: u64,
    pub exprs: Vec<Expr>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Set {
    pub family: u8,
    pub table: String,
    pub name: String,
    pub flags: u32,
    pub key_len: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Element {
    pub key: Vec<u8>,
    pub key_end: Option<Vec<u8>>,
    pub flags: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetElements {
    pub family: u8,
    pub table: String,
    pub set: String,
    pub elements: Vec<Element>,
}

/// Immediate data: a value, or a verdict (code, jump target).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Data {
    Value(Vec<u8>),
    Verdict(i32, Option<String>),
}

/// The expressions the mapping reads; the rest keep their name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expr {
    Payload {
        dreg: u32,
        base: u32,
        offset: u32,
        len: u32,
    },
    Cmp {
        sreg: u32,
        op: u32,
        data: Vec<u8>,
    },
    Meta {
        dreg: u32,
        key: u32,
    },
    Ct {
        dreg: u32,
        key: u32,
    },
    Bitwise {
        sreg: u32,
        dreg: u32,
        mask: Vec<u8>,
        xor: Vec<u8>,
    },
    Range {
        sreg: u32,
        op: u32,
        from: Vec<u8>,
        to: Vec<u8>,
    },
    Lookup {
        sreg: u32,
        set: String,
        dreg: Option<u32>,
        flags: u32,
    },
    Immediate {
        dreg: u32,
        data: Data,
    },
    Counter(Counters),
    Reject,
    Nat(u32),
    /// Any other expression, or one of the above used in a way the
    /// mapping does not read (a payload write, a meta set): by name.
    Other(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Object {
    Table(Table),
    Chain(Chain),
    Rule(Rule),
    Set(Set),
    Elements(SetElements),
}

/// The objects of one or more dumps, and the messages that did not parse.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Dump {
    pub objects: Vec<Object>,
    pub errors: Vec<NftError>,
}

/// Attributes of one nested block, in order.
fn attrs(mut buf: &[u8]) -> Result<Vec<(u16, &[u8])>, NftError> {
    let mut out = Vec::new();
    while !buf.is_empty() {
        if buf.len() < 4 {
            return Err(short("attribute header", 4, buf.len()));
        }
        let len = u16::from_ne_bytes([buf[0], buf[1]]) as usize;
        let kind = u16::from_ne_bytes([buf[2], buf[3]]) & NLA_TYPE_MASK;
        if len < 4 || len > buf.len() {
            return Err(NftError::Invalid { what: "attribute", why: format!("length {len} in {} bytes", buf.len()) });
        }
        out.push((kind, &buf[4..len]));
        let next = (len + 3) & !3;
        buf = buf.get(next..).unwrap_or(&[]);
    }
    Ok(out)
}

fn find<'a>(a: &[(u16, &'a [u8])], kind: u16) -> Option<&'a [u8]> {
    a.iter().find(|(k, _)| *k == kind).map(|(_, v)| *v)
}

fn be32(v: &[u8], what: &'static str) -> Result<u32, NftError> {
    v.get(..4).map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]])).ok_or(short(what, 4, v.len()))
}

fn be64(v: &[u8], what: &'static str) -> Result<u64, NftError> {
    let b: [u8; 8] = v.get(..8).and_then(|b| b.try_into().ok()).ok_or(short(what, 8, v.len()))?;
    Ok(u64::from_be_bytes(b))
}

fn u32_of(a: &[(u16, &[u8])], kind: u16, what: &'static str) -> Result<u32, NftError> {
    be32(find(a, kind).ok_or(NftError::Invalid { what, why: "missing".into() })?, what)
}

fn opt_u32(a: &[(u16, &[u8])], kind: u16, what: &'static str) -> Result<Option<u32>, NftError> {
    find(a, kind).map(|v| be32(v, what)).transpose()
}

/// A NUL-terminated string attribute.
fn string(v: &[u8]) -> String {
    let end = v.iter().position(|&b| b == 0).unwrap_or(v.len());
    String::from_utf8_lossy(&v[..end]).into_owned()
}

fn str_of(a: &[(u16, &[u8])], kind: u16, what: &'static str) -> Result<String, NftError> {
    find(a, kind).map(string).ok_or(NftError::Invalid { what, why: "missing".into() })
}

fn counters(v: &[u8]) -> Result<Counters, NftError> {
    let a = attrs(v)?;
    // NFTA_COUNTER_BYTES 1, NFTA_COUNTER_PACKETS 2
    let bytes = find(&a, 1).map(|v| be64(v, "counter bytes")).transpose()?.unwrap_or(0);
    let packets = find(&a, 2).map(|v| be64(v, "counter packets")).transpose()?.unwrap_or(0);
    Ok(Counters { packets, bytes })
}

/// NFTA_DATA_VALUE 1 or NFTA_DATA_VERDICT 2 (NFTA_VERDICT_CODE 1, _CHAIN 2).
fn data(v: &[u8]) -> Result<Data, NftError> {
    let a = attrs(v)?;
    if let Some(value) = find(&a, 1) {
        return Ok(Data::Value(value.to_vec()));
    }
    if let Some(verdict) = find(&a, 2) {
        let va = attrs(verdict)?;
        let code = u32_of(&va, 1, "verdict code")? as i32;
        return Ok(Data::Verdict(code, find(&va, 2).map(string)));
    }
    Err(NftError::Invalid { what: "data", why: "neither a value nor a verdict".into() })
}

fn value(v: Option<&[u8]>, what: &'static str) -> Result<Vec<u8>, NftError> {
    match v.map(data).transpose()? {
        Some(Data::Value(b)) => Ok(b),
        _ => Err(NftError::Invalid { what, why: "no value".into() }),
    }
}

fn expr(name: &str, d: &[u8]) -> Result<Expr, NftError> {
    let a = attrs(d)?;
    let reg = |k, what| opt_u32(&a, k, what);
    Ok(match name {
        // NFTA_PAYLOAD_DREG 1, BASE 2, OFFSET 3, LEN 4 (SREG 5: a write)
        "payload" => match reg(1, "payload dreg")? {
            Some(dreg) => Expr::Payload {
                dreg,
                base: u32_of(&a, 2, "payload base")?,
                offset: u32_of(&a, 3, "payload offset")?,
                len: u32_of(&a, 4, "payload len")?,
            },
            None => Expr::Other("payload set".into()),
        },
        // NFTA_CMP_SREG 1, OP 2, DATA 3
        "cmp" => Expr::Cmp {
            sreg: u32_of(&a, 1, "cmp sreg")?,
            op: u32_of(&a, 2, "cmp op")?,
            data: value(find(&a, 3), "cmp data")?,
        },
        // NFTA_META_DREG 1, KEY 2 (SREG 3: a set)
        "meta" => match reg(1, "meta dreg")? {
            Some(dreg) => Expr::Meta { dreg, key: u32_of(&a, 2, "meta key")? },
            None => Expr::Other("meta set".into()),
        },
        // NFTA_CT_DREG 1, KEY 2
        "ct" => match reg(1, "ct dreg")? {
            Some(dreg) => Expr::Ct { dreg, key: u32_of(&a, 2, "ct key")? },
            None => Expr::Other("ct set".into()),
        },
        // NFTA_BITWISE_SREG 1, DREG 2, LEN 3, MASK 4, XOR 5 (OP 6: shifts)
        "bitwise" => match opt_u32(&a, 6, "bitwise op")? {
            None | Some(0) => Expr::Bitwise {
                sreg: u32_of(&a, 1, "bitwise sreg")?,
                dreg: u32_of(&a, 2, "bitwise dreg")?,
                mask: value(find(&a, 4), "bitwise mask")?,
                xor: value(find(&a, 5), "bitwise xor")?,
            },
            Some(_) => Expr::Other("bitwise shift".into()),
        },
        // NFTA_RANGE_SREG 1, OP 2, FROM_DATA 3, TO_DATA 4
        "range" => Expr::Range {
            sreg: u32_of(&a, 1, "range sreg")?,
            op: u32_of(&a, 2, "range op")?,
            from: value(find(&a, 3), "range from")?,
            to: value(find(&a, 4), "range to")?,
        },
        // NFTA_LOOKUP_SET 1, SREG 2, DREG 3, FLAGS 5
        "lookup" => Expr::Lookup {
            sreg: u32_of(&a, 2, "lookup sreg")?,
            set: str_of(&a, 1, "lookup set")?,
            dreg: reg(3, "lookup dreg")?,
            flags: reg(5, "lookup flags")?.unwrap_or(0),
        },
        // NFTA_IMMEDIATE_DREG 1, DATA 2
        "immediate" => Expr::Immediate {
            dreg: u32_of(&a, 1, "immediate dreg")?,
            data: data(find(&a, 2).ok_or(NftError::Invalid { what: "immediate", why: "no data".into() })?)?,
        },
        "counter" => Expr::Counter(counters(d)?),
        "reject" => Expr::Reject,
        // NFTA_NAT_TYPE 1: NFT_NAT_SNAT 0, NFT_NAT_DNAT 1
        "nat" => Expr::Nat(u32_of(&a, 1, "nat type")?),
        // The x_tables compatibility of iptables-nft: NFTA_MATCH_NAME 1.
        "match" | "target" => Expr::Other(format!("{name} {}", find(&a, 1).map(string).unwrap_or_default())),
        other => Expr::Other(other.to_string()),
    })
}

fn parse_rule(family: u8, a: &[(u16, &[u8])]) -> Result<Rule, NftError> {
    // NFTA_RULE_TABLE 1, CHAIN 2, HANDLE 3, EXPRESSIONS 4
    let mut exprs = Vec::new();
    if let Some(list) = find(a, 4) {
        for (_, elem) in attrs(list)? {
            // NFTA_EXPR_NAME 1, NFTA_EXPR_DATA 2
            let ea = attrs(elem)?;
            let name = str_of(&ea, 1, "expression name")?;
            exprs.push(expr(&name, find(&ea, 2).unwrap_or(&[]))?);
        }
    }
    Ok(Rule {
        family,
        table: str_of(a, 1, "rule table")?,
        chain: str_of(a, 2, "rule chain")?,
        handle: find(a, 3).map(|v| be64(v, "rule handle")).transpose()?.unwrap_or(0),
        exprs,
    })
}

fn parse_chain(family: u8, a: &[(u16, &[u8])]) -> Result<Chain, NftError> {
    // NFTA_CHAIN_TABLE 1, NAME 3, HOOK 4 (HOOKNUM 1, PRIORITY 2), POLICY 5, COUNTERS 8
    let hook = match find(a, 4) {
        Some(h) => {
            let ha = attrs(h)?;
            Some((u32_of(&ha, 1, "hook number")?, u32_of(&ha, 2, "hook priority")? as i32))
        }
        None => None,
    };
    Ok(Chain {
        family,
        table: str_of(a, 1, "chain table")?,
        name: str_of(a, 3, "chain name")?,
        hook,
        policy: opt_u32(a, 5, "chain policy")?,
        counters: find(a, 8).map(counters).transpose()?,
    })
}

fn parse_elements(family: u8, a: &[(u16, &[u8])]) -> Result<SetElements, NftError> {
    // NFTA_SET_ELEM_LIST_TABLE 1, SET 2, ELEMENTS 3; each element:
    // NFTA_SET_ELEM_KEY 1, FLAGS 3, KEY_END 10
    let mut elements = Vec::new();
    if let Some(list) = find(a, 3) {
        for (_, e) in attrs(list)? {
            let ea = attrs(e)?;
            elements.push(Element {
                key: find(&ea, 1).map(|k| value(Some(k), "element key")).transpose()?.unwrap_or_default(),
                key_end: find(&ea, 10).map(|k| value(Some(k), "element key end")).transpose()?,
                flags: opt_u32(&ea, 3, "element flags")?.unwrap_or(0),
            });
        }
    }
    Ok(SetElements { family, table: str_of(a, 1, "element table")?, set: str_of(a, 2, "element set")?, elements })
}

fn parse_object(kind: u16, family: u8, body: &[u8]) -> Result<Option<Object>, NftError> {
    let a = attrs(body)?;
    Ok(Some(match kind {
        NFT_MSG_NEWTABLE => Object::Table(Table {
            family,
            name: str_of(&a, 1, "table name")?,
            flags: opt_u32(&a, 2, "table flags")?.unwrap_or(0),
        }),
        NFT_MSG_NEWCHAIN => Object::Chain(parse_chain(family, &a)?),
        NFT_MSG_NEWRULE => Object::Rule(parse_rule(family, &a)?),
        // NFTA_SET_TABLE 1, NAME 2, FLAGS 3, KEY_LEN 5
        NFT_MSG_NEWSET => Object::Set(Set {
            family,
            table: str_of(&a, 1, "set table")?,
            name: str_of(&a, 2, "set name")?,
            flags: opt_u32(&a, 3, "set flags")?.unwrap_or(0),
            key_len: opt_u32(&a, 5, "set key length")?.unwrap_or(0),
        }),
        NFT_MSG_NEWSETELEM => Object::Elements(parse_elements(family, &a)?),
        _ => return Ok(None),
    }))
}

/// Parses netlink messages as the kernel sent them (one dump's replies, or
/// several dumps one after another). A message whose attributes do not
/// parse is an error in [`Dump::errors`] and the others still count; a
/// broken message header ends the parse there (nothing after it can be
/// found). An error reply from the kernel is `Err`.
pub fn parse_dump(mut buf: &[u8]) -> Result<Dump, NftError> {
    let mut dump = Dump::default();
    while !buf.is_empty() {
        if buf.len() < NLMSG_HDRLEN {
            dump.errors.push(short("netlink header", NLMSG_HDRLEN, buf.len()));
            break;
        }
        let len = u32::from_ne_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
        let kind = u16::from_ne_bytes([buf[4], buf[5]]);
        let flags = u16::from_ne_bytes([buf[6], buf[7]]);
        if len < NLMSG_HDRLEN || len > buf.len() {
            dump.errors.push(NftError::Invalid {
                what: "netlink message",
                why: format!("length {len} in {} bytes", buf.len()),
            });
            break;
        }
        let body = &buf[NLMSG_HDRLEN..len];
        buf = buf.get((len + 3) & !3..).unwrap_or(&[]);
        match kind {
            NLMSG_NOOP => continue,
            // Both carry an int: 0, or a negative errno.
            NLMSG_DONE | NLMSG_ERROR => {
                let code = body.get(..4).map(|b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]])).unwrap_or(0);
                if code < 0 {
                    // i32::MIN has no positive counterpart: no errno is that large.
                    return Err(match code.checked_neg() {
                        Some(errno) => NftError::Kernel(errno),
                        None => NftError::Invalid { what: "netlink error", why: format!("code {code} is no errno") },
                    });
                }
                continue;
            }
            _ => {}
        }
        if flags & NLM_F_DUMP_INTR != 0 {
            return Err(NftError::Interrupted);
        }
        if kind >> 8 != NFNL_SUBSYS_NFTABLES {
            continue;
        }
        if body.len() < NFGENMSG_LEN {
            dump.errors.push(short("nfgenmsg", NFGENMSG_LEN, body.len()));
            continue;
        }
        match parse_object(kind & 0xff, body[0], &body[NFGENMSG_LEN..]) {
            Ok(Some(o)) => dump.objects.push(o),
            Ok(None) => {}
            Err(e) => dump.errors.push(e),
        }
    }
    Ok(dump)
}

// ---- The kernel side: one netlink socket per dump. ----

fn request(kind: u16, family: u8, seq: u32, attributes: &[u8]) -> Vec<u8> {
    let len = NLMSG_HDRLEN + NFGENMSG_LEN + attributes.len();
    let mut m = Vec::with_capacity(len);
    m.extend_from_slice(&(len as u32).to_ne_bytes());
    m.extend_from_slice(&((NFNL_SUBSYS_NFTABLES << 8) | kind).to_ne_bytes());
    m.extend_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    m.extend_from_slice(&seq.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes());
    // nfgenmsg: family, version NFNETLINK_V0, res_id 0
    m.extend_from_slice(&[family, 0, 0, 0]);
    m.extend_from_slice(attributes);
    m
}

fn string_attr(out: &mut Vec<u8>, kind: u16, s: &str) {
    let len = 4 + s.len() + 1;
    out.extend_from_slice(&(len as u16).to_ne_bytes());
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(s.as_bytes());
    out.push(0);
    out.resize((out.len() + 3) & !3, 0);
}

/// What one dump brought back: the raw replies, and whether the bound cut it.
pub struct Raw {
    pub bytes: Vec<u8>,
    pub cut: bool,
}

/// Sends one dump request and reads its replies up to NLMSG_DONE or the
/// bound. The replies are returned raw, for [`parse_dump`].
pub fn fetch(kind: u16, family: u8, attributes: &[u8], bound: usize) -> std::io::Result<Raw> {
    let socket = crate::netlink::Socket::open(NETLINK_NETFILTER, 0)?;
    let seq = 1;
    socket.send(&request(kind, family, seq, attributes))?;
    // Dump replies are at most 32 KiB each (netlink caps max_recvmsg_len).
    let mut chunk = vec![0u8; 64 << 10];
    let mut raw = Raw { bytes: Vec::new(), cut: false };
    loop {
        let n = socket.recv(&mut chunk, true)?;
        let got = &chunk[..n];
        if n == 0 {
            return Ok(raw);
        }
        if raw.bytes.len() + got.len() > bound {
            raw.cut = true;
            return Ok(raw);
        }
        raw.bytes.extend_from_slice(got);
        if ends_dump(got, seq) {
            return Ok(raw);
        }
    }
}

/// True when `chunk` holds the end of our dump (DONE, or an error reply).
fn ends_dump(chunk: &[u8], seq: u32) -> bool {
    crate::netlink::messages(chunk).any(|m| match m {
        Ok(m) => m.seq == seq && (m.kind == NLMSG_DONE || m.kind == NLMSG_ERROR),
        // A broken header: the parser will say so; stop reading.
        Err(_) => true,
    })
}

/// The four dumps (tables, chains, rules, sets) plus one element dump per
/// set, concatenated as received. `budget` bounds the bytes over all of them.
pub fn fetch_ruleset(failures: &mut Vec<(String, String)>) -> Option<Vec<u8>> {
    let mut all = Vec::new();
    for (kind, what) in [
        (NFT_MSG_GETTABLE, "tables"),
        (NFT_MSG_GETCHAIN, "chains"),
        (NFT_MSG_GETRULE, "rules"),
        (NFT_MSG_GETSET, "sets"),
    ] {
        match fetch(kind, 0, &[], MAX_DUMP_BYTES) {
            Ok(raw) => {
                if raw.cut {
                    failures.push((
                        format!("nftables {what}"),
                        format!("dump larger than {MAX_DUMP_BYTES} bytes; the rest not read"),
                    ));
                }
                all.extend_from_slice(&raw.bytes);
            }
            // No nf_tables in this kernel: nothing to report, no failure.
            Err(e) if e.raw_os_error() == Some(libc::EPROTONOSUPPORT) => return None,
            Err(e) => {
                failures.push((format!("nftables {what}"), e.to_string()));
                return None;
            }
        }
    }
    // Sets name their elements only in a dump of their own.
    let sets: Vec<Set> = match parse_dump(&all) {
        Ok(d) => d.objects.into_iter().filter_map(|o| if let Object::Set(s) = o { Some(s) } else { None }).collect(),
        Err(_) => vec![],
    };
    for s in sets {
        let mut a = Vec::new();
        // NFTA_SET_ELEM_LIST_TABLE 1, NFTA_SET_ELEM_LIST_SET 2
        string_attr(&mut a, 1, &s.table);
        string_attr(&mut a, 2, &s.name);
        match fetch(NFT_MSG_GETSETELEM, s.family, &a, MAX_DUMP_BYTES) {
            Ok(raw) => {
                if raw.cut {
                    failures.push((
                        format!("nftables set {} {}", s.table, s.name),
                        format!("elements larger than {MAX_DUMP_BYTES} bytes; the rest not read"),
                    ));
                }
                all.extend_from_slice(&raw.bytes);
            }
            Err(e) => failures.push((format!("nftables set {} {}", s.table, s.name), e.to_string())),
        }
    }
    Some(all)
}

/// Reads nf_tables of the calling thread's namespace into `out`.
pub fn read(out: &mut Reading) {
    // A ruleset changed mid-dump is read again, a few times at most.
    for attempt in 0..3 {
        let mut failures = Vec::new();
        let Some(bytes) = fetch_ruleset(&mut failures) else {
            out.failures.extend(failures);
            return;
        };
        match parse_dump(&bytes) {
            Ok(d) => {
                out.failures.extend(failures);
                out.failures.extend(d.errors.iter().map(|e| ("nftables".to_string(), e.to_string())));
                out.chains.extend(chains(&d.objects));
                return;
            }
            Err(NftError::Interrupted) if attempt < 2 => continue,
            Err(e) => {
                out.failures.extend(failures);
                out.failures.push(("nftables".into(), e.to_string()));
                return;
            }
        }
    }
}

// ---- From objects to chains of fields. ----

pub fn family_name(f: u8) -> String {
    match f {
        1 => "inet".into(),
        2 => "ip".into(),
        3 => "arp".into(),
        5 => "netdev".into(),
        7 => "bridge".into(),
        10 => "ip6".into(),
        n => n.to_string(),
    }
}

/// Hook names by family (include/uapi/linux/netfilter.h: nf_inet_hooks,
/// nf_dev_hooks; arp: NF_ARP_IN 0, OUT 1, FORWARD 2).
pub fn hook_name(family: u8, hook: u32) -> String {
    let name = match (family, hook) {
        (5, 0) => "ingress",
        (5, 1) => "egress",
        (3, 0) => "input",
        (3, 1) => "output",
        (3, 2) => "forward",
        (_, 0) => "prerouting",
        (_, 1) => "input",
        (_, 2) => "forward",
        (_, 3) => "output",
        (_, 4) => "postrouting",
        (_, 5) => "ingress",
        _ => return hook.to_string(),
    };
    name.into()
}

pub fn verdict(code: i32, chain: Option<&str>) -> String {
    let chain = chain.unwrap_or("?");
    match code {
        -1 => "continue".into(),
        -2 => "break".into(),
        -3 => format!("jump {chain}"),
        -4 => format!("goto {chain}"),
        -5 => "return".into(),
        // NF_DROP 0 (an errno in the high bits), NF_ACCEPT 1, NF_STOLEN 2,
        // NF_QUEUE 3 (the queue number in the high bits), NF_REPEAT 4, NF_STOP 5
        c if c >= 0 => match c & 0xff {
            0 => "drop".into(),
            1 => "accept".into(),
            2 => "stolen".into(),
            3 => "queue".into(),
            4 => "repeat".into(),
            5 => "stop".into(),
            _ => format!("verdict {c}"),
        },
        c => format!("verdict {c}"),
    }
}

/// Groups the dump's rules under their chains, chains in dump order.
pub fn chains(objects: &[Object]) -> Vec<ChainRules> {
    let mut tables: HashMap<(u8, &str), u32> = HashMap::new();
    let mut sets: HashMap<(u8, &str), TableSets<'_>> = HashMap::new();
    for o in objects {
        match o {
            Object::Table(t) => {
                tables.insert((t.family, &t.name), t.flags);
            }
            Object::Set(s) => {
                sets.entry((s.family, &s.table)).or_default().insert(&s.name, (s, Vec::new()));
            }
            _ => {}
        }
    }
    for o in objects {
        if let Object::Elements(e) = o {
            if let Some(entry) = sets.get_mut(&(e.family, e.table.as_str())).and_then(|t| t.get_mut(e.set.as_str())) {
                entry.1.extend(e.elements.iter());
            }
        }
    }
    let mut out: Vec<ChainRules> = Vec::new();
    let mut index: HashMap<(u8, &str, &str), usize> = HashMap::new();
    for o in objects {
        if let Object::Chain(c) = o {
            let enabled = tables.get(&(c.family, c.table.as_str())).is_none_or(|f| f & NFT_TABLE_F_DORMANT == 0);
            let info = ChainInfo {
                backend: "nftables",
                family: family_name(c.family),
                table: c.table.clone(),
                chain: c.name.clone(),
                hook: c.hook.map(|(h, _)| hook_name(c.family, h)),
                chain_priority: c.hook.map(|(_, p)| p),
                enabled,
            };
            let policy = match (c.hook, c.policy) {
                (Some(_), Some(p)) => Some((verdict(p as i32, None), c.counters)),
                (Some(_), None) => Some(("accept".into(), c.counters)),
                _ => None,
            };
            index.insert((c.family, &c.table, &c.name), out.len());
            out.push(ChainRules { info, rules: Vec::new(), policy });
        }
    }
    for o in objects {
        if let Object::Rule(r) = o {
            let Some(&i) = index.get(&(r.family, r.table.as_str(), r.chain.as_str())) else { continue };
            let none = TableSets::new();
            let table_sets = sets.get(&(r.family, r.table.as_str())).unwrap_or(&none);
            out[i].rules.push((r.handle, rule_fields(r.family, &r.exprs, table_sets)));
        }
    }
    out
}

// ---- One rule's expressions to fields. ----

/// What a register holds.
#[derive(Debug, Clone, PartialEq)]
enum Reg {
    Payload { base: u32, offset: u32, len: u32 },
    Meta(u32),
    Ct(u32),
    Masked(Box<Reg>, Vec<u8>),
    Value,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Field {
    Protocol,
    L3,
    SourceAddress,
    DestinationAddress,
    SourcePort,
    DestinationPort,
    InInterface,
    OutInterface,
    InIndex,
    OutIndex,
    CtState,
}

// nft_meta_keys
const META_IIF: u32 = 4;
const META_OIF: u32 = 5;
const META_IIFNAME: u32 = 6;
const META_OIFNAME: u32 = 7;
const META_NFPROTO: u32 = 15;
const META_L4PROTO: u32 = 16;
const CT_STATE: u32 = 0;
// nft_payload_bases
const BASE_NETWORK: u32 = 1;
const BASE_TRANSPORT: u32 = 2;
const NFPROTO_IPV4: u8 = 2;
const NFPROTO_IPV6: u8 = 10;

impl Reg {
    /// The field a register's value is, and how many bytes the whole
    /// field has (a shorter load is a prefix).
    fn field(&self, l3: Option<u8>) -> Option<(Field, u32)> {
        match self {
            Reg::Masked(r, _) => r.field(l3),
            Reg::Meta(META_L4PROTO) => Some((Field::Protocol, 1)),
            Reg::Meta(META_NFPROTO) => Some((Field::L3, 1)),
            Reg::Meta(META_IIFNAME) => Some((Field::InInterface, 16)),
            Reg::Meta(META_OIFNAME) => Some((Field::OutInterface, 16)),
            Reg::Meta(META_IIF) => Some((Field::InIndex, 4)),
            Reg::Meta(META_OIF) => Some((Field::OutIndex, 4)),
            Reg::Ct(CT_STATE) => Some((Field::CtState, 4)),
            Reg::Payload { base: BASE_TRANSPORT, offset: 0, len: 2 } => Some((Field::SourcePort, 2)),
            Reg::Payload { base: BASE_TRANSPORT, offset: 2, len: 2 } => Some((Field::DestinationPort, 2)),
            Reg::Payload { base: BASE_NETWORK, offset, len } => match (l3, offset) {
                (Some(NFPROTO_IPV4), 9) if *len == 1 => Some((Field::Protocol, 1)),
                (Some(NFPROTO_IPV4), 12) if *len <= 4 => Some((Field::SourceAddress, 4)),
                (Some(NFPROTO_IPV4), 16) if *len <= 4 => Some((Field::DestinationAddress, 4)),
                (Some(NFPROTO_IPV6), 6) if *len == 1 => Some((Field::Protocol, 1)),
                (Some(NFPROTO_IPV6), 8) if *len <= 16 => Some((Field::SourceAddress, 16)),
                (Some(NFPROTO_IPV6), 24) if *len <= 16 => Some((Field::DestinationAddress, 16)),
                _ => None,
            },
            _ => None,
        }
    }

    fn describe(&self) -> String {
        match self {
            Reg::Payload { base, offset, len } => {
                let b = ["link", "network", "transport", "inner"].get(*base as usize).copied().unwrap_or("?");
                format!("payload {b}+{offset}/{len}")
            }
            Reg::Meta(k) => format!("meta key {k}"),
            Reg::Ct(k) => format!("ct key {k}"),
            Reg::Masked(r, _) => format!("{} masked", r.describe()),
            Reg::Value => "value".into(),
        }
    }
}

/// A value of `field` as nft prints it; `bits` the prefix of an address.
fn render(field: Field, v: &[u8], bits: Option<u32>) -> String {
    render_w(field, v, bits, v.len() as u32)
}

/// As [`render`], for a field of `width` bytes (an address loaded in
/// part is still v4 or v6 by its field, not by its length).
fn render_w(field: Field, v: &[u8], bits: Option<u32>, width: u32) -> String {
    let u = |n: usize| v.iter().take(n).fold(0u64, |a, b| (a << 8) | u64::from(*b));
    match field {
        Field::Protocol => v.first().map(|p| super::protocol_name(*p)).unwrap_or_default(),
        Field::L3 => match v.first() {
            Some(&NFPROTO_IPV4) => "ipv4".into(),
            Some(&NFPROTO_IPV6) => "ipv6".into(),
            other => format!("{other:?}"),
        },
        Field::SourcePort | Field::DestinationPort => u(2).to_string(),
        Field::SourceAddress | Field::DestinationAddress => {
            let addr = if width <= 4 {
                let mut b = [0u8; 4];
                let n = v.len().min(4);
                b[..n].copy_from_slice(&v[..n]);
                Ipv4Addr::from(b).to_string()
            } else {
                let mut b = [0u8; 16];
                let n = v.len().min(16);
                b[..n].copy_from_slice(&v[..n]);
                Ipv6Addr::from(b).to_string()
            };
            match bits {
                Some(b) => format!("{addr}/{b}"),
                None => addr,
            }
        }
        Field::InInterface | Field::OutInterface => {
            // A name shorter than the field with no NUL is a wildcard.
            let name = string(v);
            if v.contains(&0) {
                name
            } else {
                format!("{name}*")
            }
        }
        Field::InIndex | Field::OutIndex => {
            let b: [u8; 4] = v.get(..4).and_then(|b| b.try_into().ok()).unwrap_or_default();
            format!("#{}", u32::from_ne_bytes(b))
        }
        Field::CtState => {
            let b: [u8; 4] = v.get(..4).and_then(|b| b.try_into().ok()).unwrap_or_default();
            super::ct_states(u32::from_ne_bytes(b))
        }
    }
}

fn leading_ones(mask: &[u8]) -> u32 {
    let mut n = 0;
    for b in mask {
        n += b.leading_ones();
        if *b != 0xff {
            break;
        }
    }
    n
}

fn as_u128(v: &[u8]) -> u128 {
    v.iter().take(16).fold(0u128, |a, b| (a << 8) | u128::from(*b))
}

/// An inclusive range of one field: a prefix when it is one, else lo-hi.
fn render_range(field: Field, lo: &[u8], hi: &[u8]) -> String {
    if lo == hi {
        return render(field, lo, None);
    }
    if matches!(field, Field::SourceAddress | Field::DestinationAddress) && lo.len() == hi.len() && lo.len() <= 16 {
        let width = lo.len() as u32 * 8;
        let (l, h) = (as_u128(lo), as_u128(hi));
        let span = h.wrapping_sub(l).wrapping_add(1);
        if h > l && span.is_power_of_two() && l % span == 0 {
            return render(field, lo, Some(width - span.trailing_zeros()));
        }
    }
    format!("{}-{}", render(field, lo, None), render(field, hi, None))
}

/// A set's elements as `{a, b, lo-hi}`; interval sets hold each range as a
/// start element and an end element one past it (NFT_SET_ELEM_INTERVAL_END).
fn render_set(field: Field, width: u32, set: &Set, elements: &[&Element]) -> String {
    let mut els: Vec<&Element> = elements.to_vec();
    els.sort_by(|a, b| a.key.cmp(&b.key));
    let mut parts = Vec::new();
    let mut i = 0;
    while i < els.len() {
        let e = els[i];
        i += 1;
        if e.flags & NFT_SET_ELEM_INTERVAL_END != 0 {
            continue;
        }
        if e.key.len() as u32 != width {
            parts.push(e.key.iter().map(|b| format!("{b:02x}")).collect::<String>());
            continue;
        }
        if let Some(end) = &e.key_end {
            parts.push(render_range(field, &e.key, end));
        } else if set.flags & 0x4 != 0 {
            // NFT_SET_INTERVAL: the end element (exclusive) follows, or
            // the range runs to the top of the field.
            let hi = match els.get(i) {
                Some(n) if n.flags & NFT_SET_ELEM_INTERVAL_END != 0 => {
                    i += 1;
                    minus_one(&n.key)
                }
                _ => vec![0xff; e.key.len()],
            };
            parts.push(render_range(field, &e.key, &hi));
        } else {
            parts.push(render(field, &e.key, None));
        }
    }
    format!("{{{}}}", parts.join(", "))
}

fn minus_one(v: &[u8]) -> Vec<u8> {
    let mut out = v.to_vec();
    for b in out.iter_mut().rev() {
        let (n, borrow) = b.overflowing_sub(1);
        *b = n;
        if !borrow {
            break;
        }
    }
    out
}

/// A table's sets by name, with their elements.
pub type TableSets<'a> = HashMap<&'a str, (&'a Set, Vec<&'a Element>)>;

/// The fields of one rule. Expressions the mapping cannot read are named
/// in `unparsed`; the rule is never dropped.
pub fn rule_fields(family: u8, exprs: &[Expr], sets: &TableSets<'_>) -> Fields {
    let mut f = Fields::default();
    let mut regs: HashMap<u32, Reg> = HashMap::new();
    // ip and ip6 tables know their network header; inet, bridge and netdev
    // learn it from a `meta nfproto` (or ether type) match.
    let mut l3 = match family {
        NFPROTO_IPV4 | NFPROTO_IPV6 => Some(family),
        _ => None,
    };
    let mut low: HashMap<Field, String> = HashMap::new();
    let set_field = |f: &mut Fields, field: Field, s: String| {
        let slot = match field {
            Field::Protocol => &mut f.protocol,
            Field::SourceAddress => &mut f.source_address,
            Field::DestinationAddress => &mut f.destination_address,
            Field::SourcePort => &mut f.source_port,
            Field::DestinationPort => &mut f.destination_port,
            Field::InInterface | Field::InIndex => &mut f.interfaces.input,
            Field::OutInterface | Field::OutIndex => &mut f.interfaces.output,
            Field::CtState => &mut f.conntrack_state,
            Field::L3 => return,
        };
        *slot = Some(s);
    };
    for e in exprs {
        match e {
            Expr::Payload { dreg, base, offset, len } => {
                regs.insert(*dreg, Reg::Payload { base: *base, offset: *offset, len: *len });
            }
            Expr::Meta { dreg, key } => {
                regs.insert(*dreg, Reg::Meta(*key));
            }
            Expr::Ct { dreg, key } => {
                regs.insert(*dreg, Reg::Ct(*key));
            }
            Expr::Bitwise { sreg, dreg, mask, xor } => {
                let inner = regs.get(sreg).cloned().unwrap_or(Reg::Value);
                if xor.iter().any(|b| *b != 0) {
                    f.unparsed.push(format!("bitwise xor on {}", inner.describe()));
                }
                regs.insert(*dreg, Reg::Masked(Box::new(inner), mask.clone()));
            }
            Expr::Cmp { sreg, op, data } => {
                let Some(reg) = regs.get(sreg) else {
                    f.unparsed.push("cmp".into());
                    continue;
                };
                let Some((field, width)) = reg.field(l3) else {
                    f.unparsed.push(format!("cmp on {}", reg.describe()));
                    continue;
                };
                if field == Field::L3 && *op == 0 {
                    l3 = data.first().copied();
                    continue;
                }
                let s = match (reg, field) {
                    // ct state established,related: (state & mask) != 0
                    (Reg::Masked(_, mask), Field::CtState) => {
                        let states = render(field, mask, None);
                        match (*op, data.iter().all(|b| *b == 0)) {
                            (1, true) => set_field(&mut f, field, states),
                            (0, true) => set_field(&mut f, field, format!("!{states}")),
                            _ => f.unparsed.push("ct state comparison".into()),
                        }
                        continue;
                    }
                    (Reg::Masked(_, mask), _) => {
                        let bits = leading_ones(mask);
                        let prefix = (bits < width * 8).then_some(bits);
                        render_w(field, data, prefix, width)
                    }
                    (Reg::Payload { len, .. }, _) if *len < width => render_w(field, data, Some(len * 8), width),
                    _ => render_w(field, data, None, width),
                };
                // nft_cmp_ops: EQ 0, NEQ 1, LT 2, LTE 3, GT 4, GTE 5
                match op {
                    0 => set_field(&mut f, field, s),
                    1 => set_field(&mut f, field, format!("!{s}")),
                    4 | 5 => {
                        low.insert(field, if *op == 4 { format!(">{s}") } else { s });
                    }
                    2 | 3 => {
                        let hi = if *op == 2 { format!("<{s}") } else { s };
                        match low.remove(&field) {
                            Some(lo) if *op == 3 && !lo.starts_with('>') => {
                                set_field(&mut f, field, format!("{lo}-{hi}"))
                            }
                            Some(lo) => set_field(&mut f, field, format!("{lo} {hi}")),
                            None if *op == 3 => set_field(&mut f, field, format!("<={hi}")),
                            None => set_field(&mut f, field, hi),
                        }
                    }
                    _ => f.unparsed.push(format!("cmp op {op}")),
                }
            }
            Expr::Range { sreg, op, from, to } => match regs.get(sreg).and_then(|r| r.field(l3)) {
                Some((field, _)) => {
                    let s = render_range(field, from, to);
                    set_field(&mut f, field, if *op == 1 { format!("!{s}") } else { s });
                }
                None => f.unparsed.push("range".into()),
            },
            Expr::Lookup { sreg, set, dreg, flags } => {
                let field = regs.get(sreg).and_then(|r| r.field(l3));
                let found = sets.get(set.as_str()).map(|(s, e)| (*s, e.as_slice()));
                let neg = if flags & NFT_LOOKUP_F_INV != 0 { "!" } else { "" };
                let shown = match found {
                    Some((s, els)) if s.flags & NFT_SET_ANONYMOUS != 0 || s.name.starts_with("__set") => match field {
                        Some((fl, w)) => render_set(fl, w, s, els),
                        None => format!("@{set}"),
                    },
                    _ => format!("@{set}"),
                };
                match (dreg, field) {
                    // A verdict map: the verdict depends on the key.
                    (Some(0), _) => f.verdict = Some(format!("vmap {shown}")),
                    (Some(_), _) => f.unparsed.push(format!("map @{set}")),
                    (None, Some((Field::L3, _))) => f.unparsed.push(format!("lookup nfproto @{set}")),
                    (None, Some((fl, _))) => set_field(&mut f, fl, format!("{neg}{shown}")),
                    (None, None) => f.unparsed.push(format!("lookup @{set}")),
                }
            }
            Expr::Immediate { dreg, data } => match data {
                Data::Verdict(code, chain) => f.verdict = Some(verdict(*code, chain.as_deref())),
                Data::Value(_) => {
                    regs.insert(*dreg, Reg::Value);
                }
            },
            Expr::Counter(c) => f.counters = Some(*c),
            Expr::Reject => f.verdict = Some("reject".into()),
            Expr::Nat(kind) => f.verdict = Some(if *kind == 0 { "snat" } else { "dnat" }.into()),
            Expr::Other(name) => match name.as_str() {
                "masq" => f.verdict = Some("masquerade".into()),
                "redir" => f.verdict = Some("redirect".into()),
                "queue" => f.verdict = Some("queue".into()),
                _ => f.unparsed.push(name.clone()),
            },
        }
    }
    for (field, lo) in low {
        set_field(&mut f, field, format!(">={lo}"));
    }
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_length_checks_refuse_what_does_not_fit() {
        assert!(attrs(&[8, 0, 1, 0, 1, 2]).is_err(), "an attribute longer than its buffer");
        assert!(attrs(&[2, 0, 1, 0]).is_err(), "an attribute shorter than its header");
        assert_eq!(attrs(&[]).unwrap(), vec![]);
        let d = parse_dump(&[0xff, 0xff, 0, 0, 16, 10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]).unwrap();
        assert!(d.objects.is_empty());
        assert_eq!(d.errors.len(), 1, "a message longer than the buffer");
        let d = parse_dump(&[1, 2, 3]).unwrap();
        assert_eq!(d.errors, vec![short("netlink header", 16, 3)]);
    }

    #[test]
    fn kernel_errors_and_interrupted_dumps_are_errors() {
        let mut m = vec![20, 0, 0, 0, 2, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0];
        m.extend_from_slice(&(-libc::EPERM).to_ne_bytes());
        assert_eq!(parse_dump(&m), Err(NftError::Kernel(libc::EPERM)));
        let m = [20u8, 0, 0, 0, 1, 10, 0x12, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0];
        assert_eq!(parse_dump(&m), Err(NftError::Interrupted));
    }

    #[test]
    fn an_error_code_without_an_errno_is_invalid_not_a_panic() {
        // Found by the firewall fuzz target: negating i32::MIN overflowed.
        let mut m = vec![20, 0, 0, 0, 2, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0];
        m.extend_from_slice(&i32::MIN.to_ne_bytes());
        assert!(matches!(parse_dump(&m), Err(NftError::Invalid { what: "netlink error", .. })));
    }

    #[test]
    fn verdicts_and_ranges() {
        assert_eq!(verdict(1, None), "accept");
        assert_eq!(verdict(0, None), "drop");
        assert_eq!(verdict(-3, Some("web")), "jump web");
        assert_eq!(verdict(-5, None), "return");
        assert_eq!(verdict((5 << 16) | 3, None), "queue");
        assert_eq!(render_range(Field::SourceAddress, &[10, 0, 0, 0], &[10, 0, 0, 255]), "10.0.0.0/24");
        assert_eq!(render_range(Field::SourceAddress, &[10, 0, 0, 1], &[10, 0, 0, 5]), "10.0.0.1-10.0.0.5");
        assert_eq!(render_range(Field::DestinationPort, &[3, 232], &[7, 208]), "1000-2000");
        assert_eq!(minus_one(&[1, 0]), vec![0, 255]);
    }
}
