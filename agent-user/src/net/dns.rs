//! Host names from the device's own DNS answers. Pure: a DNS message parser
//! (RFC 1035, with name compression), the table of queries waiting for an
//! answer, and a bounded, TTL-honouring cache.
//!
//! An answer names addresses only when it answers a query this device sent:
//! same 5-tuple (and namespace), transaction id and question (name, type,
//! class), within [`ANSWER_WINDOW_NS`]. Otherwise one datagram from port 53
//! to any open port could name any address.
use std::{
    collections::{HashMap, VecDeque},
    fmt::Write as _,
    hash::Hash,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DnsError {
    #[error("message truncated at byte {0}")]
    Truncated(usize),
    #[error("not a response")]
    NotResponse,
    #[error("not a query")]
    NotQuery,
    #[error("{0} questions, not 1")]
    QuestionCount(u16),
    #[error("bad name at byte {0}")]
    BadName(usize),
}

/// One address learned from an answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// The name the client asked for (the question), not a CNAME target:
    /// that is the name a program used to reach the address.
    pub name: String,
    pub addr: IpAddr,
    pub ttl: u32,
}

/// The question of a query or response (RFC 1035 4.1.2). `name` is in
/// presentation form, lower-cased (see [`read_name`]), so two questions are
/// equal exactly when their wire names are equal ignoring ASCII case.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Question {
    pub name: String,
    pub qtype: u16,
    pub qclass: u16,
}

/// A response: its id and question, to match it to a query, and its addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub id: u16,
    /// None when the response does not carry exactly one question: it then
    /// matches no query.
    pub question: Option<Question>,
    pub answers: Vec<Answer>,
}

const TYPE_A: u16 = 1;
const TYPE_AAAA: u16 = 28;
const CLASS_IN: u16 = 1;
/// RFC 1035 3.1: a name is at most 255 bytes on the wire (length bytes included).
const NAME_MAX: usize = 255;
/// Compression pointers followed per name before giving up (loops).
const MAX_JUMPS: usize = 32;
/// How long after its query an answer is accepted. Stub resolvers give up
/// sooner (glibc: 5 s per try, by default) and send a new query.
pub const ANSWER_WINDOW_NS: u64 = 5_000_000_000;
/// Queries waiting for their answer, at most. When full the oldest goes
/// (counted): its answer will name nothing.
pub const QUERY_TABLE_ENTRIES: usize = 1024;

fn u16_at(m: &[u8], at: usize) -> Result<u16, DnsError> {
    m.get(at..at + 2).map(|b| u16::from_be_bytes([b[0], b[1]])).ok_or(DnsError::Truncated(at))
}

fn u32_at(m: &[u8], at: usize) -> Result<u32, DnsError> {
    m.get(at..at + 4).map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]])).ok_or(DnsError::Truncated(at))
}

/// Appends one label in presentation form (RFC 1035 5.1, RFC 4343 2.1),
/// lower-cased: a dot inside the label becomes `\.` and a backslash `\\`,
/// so neither can pass for a label boundary; a byte outside printable
/// ASCII (space and controls included) becomes `\DDD`, so none reaches a
/// log or a terminal raw.
pub fn push_label(name: &mut String, label: &[u8]) {
    for &b in label {
        match b {
            b'.' | b'\\' => {
                name.push('\\');
                name.push(b as char);
            }
            0x21..=0x7e => name.push(b.to_ascii_lowercase() as char),
            _ => {
                let _ = write!(name, "\\{b:03}");
            }
        }
    }
}

/// Reads the (possibly compressed) name at `at`; returns it in presentation
/// form ([`push_label`]: lower-cased, labels separated by dots, no trailing
/// dot) and the position after it in the message.
pub fn read_name(m: &[u8], mut at: usize) -> Result<(String, usize), DnsError> {
    let mut name = String::new();
    let mut wire = 1; // the root label
    let mut end = None;
    let mut jumps = 0;
    loop {
        let len = *m.get(at).ok_or(DnsError::Truncated(at))? as usize;
        match len & 0xc0 {
            0x00 if len == 0 => {
                return Ok((name, end.unwrap_or(at + 1)));
            }
            0x00 => {
                let label = m.get(at + 1..at + 1 + len).ok_or(DnsError::Truncated(at))?;
                wire += 1 + len;
                if wire > NAME_MAX {
                    return Err(DnsError::BadName(at));
                }
                if !name.is_empty() {
                    name.push('.');
                }
                push_label(&mut name, label);
                at += 1 + len;
            }
            0xc0 => {
                let target = (u16_at(m, at)? & 0x3fff) as usize;
                end.get_or_insert(at + 2);
                jumps += 1;
                if jumps > MAX_JUMPS {
                    return Err(DnsError::BadName(at));
                }
                at = target;
            }
            _ => return Err(DnsError::BadName(at)), // 0x40/0x80: reserved label types
        }
    }
}

/// Header fields: id, flags, question and answer counts.
fn header(m: &[u8]) -> Result<(u16, u16, u16, u16), DnsError> {
    Ok((u16_at(m, 0)?, u16_at(m, 2)?, u16_at(m, 4)?, u16_at(m, 6)?))
}

fn read_question(m: &[u8], at: usize) -> Result<(Question, usize), DnsError> {
    let (name, next) = read_name(m, at)?;
    Ok((Question { name, qtype: u16_at(m, next)?, qclass: u16_at(m, next + 2)? }, next + 4))
}

/// The id and question of a query this device sent (QR clear, one question).
pub fn parse_query(m: &[u8]) -> Result<(u16, Question), DnsError> {
    let (id, flags, qdcount, _) = header(m)?;
    if flags & 0x8000 != 0 {
        return Err(DnsError::NotQuery);
    }
    if qdcount != 1 {
        return Err(DnsError::QuestionCount(qdcount));
    }
    Ok((id, read_question(m, 12)?.0))
}

/// The id, question and A and AAAA answers of a DNS response. Records that
/// do not fit (a message cut at the kernel's copy limit) are skipped, not an
/// error: the ones before them are still good.
pub fn parse_response(m: &[u8]) -> Result<Response, DnsError> {
    let (id, flags, qdcount, ancount) = header(m)?;
    if flags & 0x8000 == 0 {
        return Err(DnsError::NotResponse);
    }
    let mut at = 12;
    let mut questions = Vec::new();
    for _ in 0..qdcount {
        let (q, next) = read_question(m, at)?;
        questions.push(q);
        at = next;
    }
    let question = if questions.len() == 1 { questions.pop() } else { None };
    let mut answers = Vec::new();
    for _ in 0..ancount {
        let Ok((owner, next)) = read_name(m, at) else { break };
        let (Ok(ty), Ok(class), Ok(ttl), Ok(rdlen)) =
            (u16_at(m, next), u16_at(m, next + 2), u32_at(m, next + 4), u16_at(m, next + 8))
        else {
            break;
        };
        let rdata_at = next + 10;
        let Some(rdata) = m.get(rdata_at..rdata_at + rdlen as usize) else { break };
        let addr = match (ty, class, rdata.len()) {
            (TYPE_A, CLASS_IN, 4) => Some(IpAddr::V4(Ipv4Addr::new(rdata[0], rdata[1], rdata[2], rdata[3]))),
            (TYPE_AAAA, CLASS_IN, 16) => {
                let b: [u8; 16] = rdata.try_into().expect("length checked");
                Some(IpAddr::V6(Ipv6Addr::from(b)))
            }
            _ => None,
        };
        if let Some(addr) = addr {
            let name = question.as_ref().map_or(owner, |q| q.name.clone());
            answers.push(Answer { name, addr, ttl });
        }
        at = rdata_at + rdlen as usize;
    }
    Ok(Response { id, question, answers })
}

/// Queries sent and not answered yet, keyed by flow `F` (the 5-tuple and
/// namespace), transaction id and question. Bounded: when full, the oldest
/// query goes and is counted. Each query is answered once: a second answer
/// (a spoofer racing the resolver, or a duplicate) matches nothing.
#[derive(Debug)]
pub struct QueryTable<F> {
    capacity: usize,
    waiting: HashMap<(F, u16, Question), u64>,
    lost: u64,
}

impl<F: Hash + Eq + Clone> QueryTable<F> {
    pub fn new(capacity: usize) -> Self {
        QueryTable { capacity: capacity.max(1), waiting: HashMap::new(), lost: 0 }
    }

    pub fn len(&self) -> usize {
        self.waiting.len()
    }

    pub fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }

    /// Records a query sent at `ts_ns`. A retry of the same query (same
    /// flow, id and question) restarts its window.
    pub fn insert(&mut self, flow: F, id: u16, question: Question, ts_ns: u64) {
        let key = (flow, id, question);
        if let Some(t) = self.waiting.get_mut(&key) {
            *t = ts_ns;
            return;
        }
        if self.waiting.len() >= self.capacity {
            self.expire(ts_ns);
        }
        if self.waiting.len() >= self.capacity {
            // Rare (more than `capacity` queries within the window): a scan
            // is cheaper than keeping an order that matched entries leave.
            if let Some(oldest) = self.waiting.iter().min_by_key(|(_, &t)| t).map(|(k, _)| k.clone()) {
                self.waiting.remove(&oldest);
                self.lost += 1;
            }
        }
        self.waiting.insert(key, ts_ns);
    }

    /// Whether an answer received at `ts_ns` answers a waiting query; the
    /// query is then answered and leaves the table.
    pub fn answer(&mut self, flow: F, id: u16, question: Question, ts_ns: u64) -> bool {
        let key = (flow, id, question);
        match self.waiting.get(&key) {
            Some(&sent) if sent <= ts_ns && ts_ns - sent <= ANSWER_WINDOW_NS => {
                self.waiting.remove(&key);
                true
            }
            _ => false,
        }
    }

    /// Drops queries whose window closed before `now_ns`: unanswered, which
    /// loses nothing.
    pub fn expire(&mut self, now_ns: u64) {
        self.waiting.retain(|_, &mut sent| sent.saturating_add(ANSWER_WINDOW_NS) >= now_ns);
    }

    /// Queries pushed out of the full table since the last call.
    pub fn take_lost(&mut self) -> u64 {
        std::mem::take(&mut self.lost)
    }
}

#[derive(Debug, Clone)]
struct Entry {
    name: String,
    /// Boot-clock ns after which the answer is stale (TTL expired).
    expires_ns: u64,
}

/// Address -> host name, per network namespace, from answers seen. Holds at
/// most `capacity` addresses; when full the oldest entry is dropped (counted).
#[derive(Debug)]
pub struct DnsCache {
    capacity: usize,
    entries: HashMap<(u32, IpAddr), Entry>,
    order: VecDeque<(u32, IpAddr)>,
    evicted: u64,
}

impl DnsCache {
    pub fn new(capacity: usize) -> Self {
        DnsCache { capacity: capacity.max(1), entries: HashMap::new(), order: VecDeque::new(), evicted: 0 }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Records `answer`, seen at `at_ns` in namespace `netns`.
    pub fn insert(&mut self, netns: u32, answer: &Answer, at_ns: u64) {
        let key = (netns, answer.addr);
        let entry = Entry { name: answer.name.clone(), expires_ns: at_ns + u64::from(answer.ttl) * 1_000_000_000 };
        if let Some(e) = self.entries.get_mut(&key) {
            *e = entry;
            return;
        }
        while self.entries.len() >= self.capacity {
            match self.order.pop_front() {
                Some(old) => {
                    if self.entries.remove(&old).is_some() {
                        self.evicted += 1;
                    }
                }
                None => break,
            }
        }
        self.order.push_back(key);
        self.entries.insert(key, entry);
    }

    /// The name `addr` had at time `at_ns`, if an answer covered it then.
    pub fn lookup(&self, netns: u32, addr: IpAddr, at_ns: u64) -> Option<&str> {
        self.entries.get(&(netns, addr)).filter(|e| at_ns <= e.expires_ns).map(|e| e.name.as_str())
    }

    /// Drops entries that expired before `now_ns` (they can serve no later
    /// connection), so stale names do not hold places.
    pub fn expire(&mut self, now_ns: u64) {
        self.entries.retain(|_, e| e.expires_ns >= now_ns);
        let entries = &self.entries;
        self.order.retain(|k| entries.contains_key(k));
    }

    /// Entries pushed out of a full cache since the last call.
    pub fn take_evicted(&mut self) -> u64 {
        std::mem::take(&mut self.evicted)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Builds a response for `qname` with `answers` (each an A or AAAA record
    /// whose owner is a compression pointer to the question).
    pub fn response(qname: &str, answers: &[(IpAddr, u32)]) -> Vec<u8> {
        let mut m = vec![0x12, 0x34, 0x81, 0x80, 0, 1, 0, answers.len() as u8, 0, 0, 0, 0];
        for label in qname.split('.') {
            m.push(label.len() as u8);
            m.extend_from_slice(label.as_bytes());
        }
        m.extend_from_slice(&[0, 0, 1, 0, 1]);
        for (addr, ttl) in answers {
            m.extend_from_slice(&[0xc0, 12]);
            let (ty, data) = match addr {
                IpAddr::V4(a) => (TYPE_A, a.octets().to_vec()),
                IpAddr::V6(a) => (TYPE_AAAA, a.octets().to_vec()),
            };
            m.extend_from_slice(&ty.to_be_bytes());
            m.extend_from_slice(&CLASS_IN.to_be_bytes());
            m.extend_from_slice(&ttl.to_be_bytes());
            m.extend_from_slice(&(data.len() as u16).to_be_bytes());
            m.extend_from_slice(&data);
        }
        m
    }

    #[test]
    fn parses_a_and_aaaa_with_compression() {
        let v4: IpAddr = "10.1.2.3".parse().unwrap();
        let v6: IpAddr = "fd00::7".parse().unwrap();
        let m = response("Api.Example.com", &[(v4, 60), (v6, 30)]);
        let r = parse_response(&m).unwrap();
        assert_eq!(r.id, 0x1234);
        assert_eq!(r.question, Some(Question { name: "api.example.com".into(), qtype: TYPE_A, qclass: CLASS_IN }));
        assert_eq!(
            r.answers,
            vec![
                Answer { name: "api.example.com".into(), addr: v4, ttl: 60 },
                Answer { name: "api.example.com".into(), addr: v6, ttl: 30 },
            ]
        );
    }

    #[test]
    fn cname_chains_report_the_question_name() {
        // www.example.com CNAME cdn.example.net; cdn.example.net A 1.2.3.4
        let mut m = vec![0, 1, 0x81, 0x80, 0, 1, 0, 2, 0, 0, 0, 0];
        m.extend_from_slice(b"\x03www\x07example\x03com\x00\x00\x01\x00\x01");
        // CNAME, owner -> question
        m.extend_from_slice(&[0xc0, 12, 0, 5, 0, 1, 0, 0, 0, 10]);
        let cname = b"\x03cdn\xc0\x10"; // "cdn" + pointer to "example.com"
        m.extend_from_slice(&(cname.len() as u16).to_be_bytes());
        let cname_at = m.len();
        m.extend_from_slice(cname);
        m.extend_from_slice(&[0xc0, cname_at as u8, 0, 1, 0, 1, 0, 0, 0, 20, 0, 4, 1, 2, 3, 4]);
        assert_eq!(read_name(&m, cname_at).unwrap().0, "cdn.example.com");
        let a = parse_response(&m).unwrap().answers;
        assert_eq!(a, vec![Answer { name: "www.example.com".into(), addr: "1.2.3.4".parse().unwrap(), ttl: 20 }]);
    }

    #[test]
    fn refuses_queries_loops_and_garbage() {
        let mut q = response("a.b", &[]);
        q[2] = 0x01; // QR clear: a query
        assert_eq!(parse_response(&q), Err(DnsError::NotResponse));
        assert!(parse_response(&[0; 5]).is_err());
        assert_eq!(parse_query(&response("a.b", &[])), Err(DnsError::NotQuery));
        // A pointer to itself.
        let mut m = vec![0, 0, 0x81, 0x80, 0, 1, 0, 0, 0, 0, 0, 0, 0xc0, 12];
        assert_eq!(read_name(&m, 12), Err(DnsError::BadName(12)));
        m.truncate(13);
        assert!(read_name(&m, 12).is_err());
    }

    #[test]
    fn a_cut_answer_keeps_the_ones_before() {
        let v4: IpAddr = "10.0.0.1".parse().unwrap();
        let mut m = response("x.y", &[(v4, 5), ("10.0.0.2".parse().unwrap(), 5)]);
        m.truncate(m.len() - 2);
        assert_eq!(parse_response(&m).unwrap().answers, vec![Answer { name: "x.y".into(), addr: v4, ttl: 5 }]);
    }

    #[test]
    fn cache_honours_ttl_and_namespace() {
        let mut c = DnsCache::new(4);
        let addr: IpAddr = "10.0.0.1".parse().unwrap();
        c.insert(7, &Answer { name: "a.test".into(), addr, ttl: 2 }, 1_000_000_000);
        assert_eq!(c.lookup(7, addr, 2_000_000_000), Some("a.test"));
        assert_eq!(c.lookup(7, addr, 3_000_000_000), Some("a.test"), "valid through the last second");
        assert_eq!(c.lookup(7, addr, 3_000_000_001), None, "expired");
        assert_eq!(c.lookup(8, addr, 2_000_000_000), None, "another namespace");
        c.expire(4_000_000_000);
        assert!(c.is_empty());
    }

    #[test]
    fn full_cache_drops_the_oldest_and_counts() {
        let mut c = DnsCache::new(2);
        let a = |i: u8| Answer { name: format!("h{i}"), addr: IpAddr::V4(Ipv4Addr::new(10, 0, 0, i)), ttl: 100 };
        c.insert(1, &a(1), 0);
        c.insert(1, &a(2), 0);
        c.insert(1, &a(1), 5); // refresh, no eviction
        c.insert(1, &a(3), 0);
        assert_eq!(c.len(), 2);
        assert_eq!(c.lookup(1, a(1).addr, 0), None, "oldest inserted goes first");
        assert_eq!(c.lookup(1, a(3).addr, 0), Some("h3"));
        assert_eq!(c.take_evicted(), 1);
        assert_eq!(c.take_evicted(), 0);
    }

    /// Queries as glibc 2.36 sent them (`getent ahosts WWW.Example.COM`,
    /// captured on a UDP socket standing in for the resolver): A, then AAAA.
    const GLIBC_QUERY_A: &str = "448a0100000100000000000003575757074578616d706c6503434f4d0000010001";
    const GLIBC_QUERY_AAAA: &str = "558f0100000100000000000003575757074578616d706c6503434f4d00001c0001";

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
    }

    /// A resolver's answer to `query`: header and question echoed (QR, RA
    /// set), then `answers` records of type `ty` (4 or 16 bytes) owned by
    /// a pointer to the question.
    pub fn answer_to(query: &[u8], ty: u16, answers: &[(&[u8], u32)]) -> Vec<u8> {
        let mut m = query.to_vec();
        m[2] |= 0x80;
        m[3] = 0x80;
        m[6..8].copy_from_slice(&(answers.len() as u16).to_be_bytes());
        for (data, ttl) in answers {
            m.extend_from_slice(&[0xc0, 12]);
            m.extend_from_slice(&ty.to_be_bytes());
            m.extend_from_slice(&CLASS_IN.to_be_bytes());
            m.extend_from_slice(&ttl.to_be_bytes());
            m.extend_from_slice(&(data.len() as u16).to_be_bytes());
            m.extend_from_slice(data);
        }
        m
    }

    #[test]
    fn real_queries_parse_and_case_does_not_matter() {
        let (id, q) = parse_query(&hex(GLIBC_QUERY_A)).unwrap();
        assert_eq!((id, q), (0x448a, Question { name: "www.example.com".into(), qtype: TYPE_A, qclass: CLASS_IN }));
        let (id, q) = parse_query(&hex(GLIBC_QUERY_AAAA)).unwrap();
        assert_eq!((id, q.qtype), (0x558f, TYPE_AAAA));
        // A resolver echoing the question in another case (0x20 randomisation) still matches.
        let mut lower = answer_to(&hex(GLIBC_QUERY_A), TYPE_A, &[(&[93, 184, 215, 14], 60)]);
        lower[13..16].copy_from_slice(b"www");
        assert_eq!(parse_response(&lower).unwrap().question, Some(parse_query(&hex(GLIBC_QUERY_A)).unwrap().1));
        let mut two = hex(GLIBC_QUERY_A);
        two[5] = 2;
        assert_eq!(parse_query(&two), Err(DnsError::QuestionCount(2)));
    }

    /// Builds a name from raw labels (each may hold any byte).
    fn wire_name(labels: &[&[u8]]) -> Vec<u8> {
        let mut m = vec![0; 12];
        for l in labels {
            m.push(l.len() as u8);
            m.extend_from_slice(l);
        }
        m.push(0);
        m
    }

    #[test]
    fn names_are_in_presentation_form() {
        let name = |labels: &[&[u8]]| read_name(&wire_name(labels), 12).unwrap().0;
        // One label "evil.com": not two labels.
        assert_eq!(name(&[b"evil.com", b"attacker", b"net"]), "evil\\.com.attacker.net");
        assert_ne!(name(&[b"evil.com"]), name(&[b"evil", b"com"]));
        assert_eq!(name(&[b"a\\b", b"c"]), "a\\\\b.c");
        // Controls, space, DEL and bytes above ASCII: never raw.
        assert_eq!(name(&[b"x\n\x1b[2J", b"y z\x7f\xff"]), "x\\010\\027[2j.y\\032z\\127\\255");
        assert_eq!(name(&[b"Mixed-Case_1"]), "mixed-case_1");
        assert_eq!(name(&[]), "");
        // Escaping keeps distinct wire names distinct: "\\." in a label is
        // not an escaped dot.
        assert_ne!(name(&[b"a\\.b"]), name(&[b"a.b"]));
        assert_eq!(name(&[b"a\\.b"]), "a\\\\\\.b");
    }

    #[test]
    fn the_name_bound_is_the_wire_length() {
        let l63 = [b'a'; 63];
        let l61 = [b'b'; 61];
        // 4 * 64 + 1 = 257 bytes on the wire: too long.
        assert_eq!(read_name(&wire_name(&[&l63, &l63, &l63, &l63]), 12), Err(DnsError::BadName(12 + 3 * 64)));
        // 3 * 64 + 62 + 1 = 255: the longest name there is.
        let (n, _) = read_name(&wire_name(&[&l63, &l63, &l63, &l61]), 12).unwrap();
        assert_eq!(n.len(), 3 * 64 + 61);
        // Escapes do not count against it: 63 control bytes are 252 characters.
        let (n, _) = read_name(&wire_name(&[&[1u8; 63]]), 12).unwrap();
        assert_eq!(n.len(), 252);
    }

    #[test]
    fn an_answer_matches_only_its_own_query_within_the_window() {
        let (id, q) = parse_query(&hex(GLIBC_QUERY_A)).unwrap();
        let s = 1_000_000_000;
        let mut t = QueryTable::new(8);
        // Nothing asked: nothing matches.
        assert!(!t.answer("flow", id, q.clone(), s));
        t.insert("flow", id, q.clone(), s);
        assert!(!t.answer("other flow", id, q.clone(), s + 1), "another 5-tuple");
        assert!(!t.answer("flow", id ^ 1, q.clone(), s + 1), "another id");
        let other_type = Question { qtype: TYPE_AAAA, ..q.clone() };
        assert!(!t.answer("flow", id, other_type, s + 1), "another question type");
        let other_name = Question { name: "www.example.org".into(), ..q.clone() };
        assert!(!t.answer("flow", id, other_name, s + 1), "another question name");
        assert!(!t.answer("flow", id, q.clone(), s - 1), "before the query");
        assert!(t.answer("flow", id, q.clone(), s + ANSWER_WINDOW_NS), "the last instant of the window");
        assert!(!t.answer("flow", id, q.clone(), s + ANSWER_WINDOW_NS), "answered once only");
        t.insert("flow", id, q.clone(), s);
        assert!(!t.answer("flow", id, q.clone(), s + ANSWER_WINDOW_NS + 1), "too late");
        // A retry restarts the window.
        t.insert("flow", id, q.clone(), s + 4 * ANSWER_WINDOW_NS);
        assert!(t.answer("flow", id, q.clone(), s + 5 * ANSWER_WINDOW_NS));
        assert_eq!(t.take_lost(), 0);
    }

    #[test]
    fn a_full_query_table_drops_the_oldest_and_counts() {
        let q = |i: u16| Question { name: format!("h{i}.test"), qtype: TYPE_A, qclass: CLASS_IN };
        let mut t = QueryTable::new(2);
        t.insert(1, 1, q(1), 10);
        t.insert(1, 2, q(2), 20);
        t.insert(1, 3, q(3), 30);
        assert_eq!((t.len(), t.take_lost()), (2, 1));
        assert!(!t.answer(1, 1, q(1), 40), "the oldest went");
        assert!(t.answer(1, 2, q(2), 40) && t.answer(1, 3, q(3), 40));
        // Expired queries make room without a loss.
        t.insert(1, 4, q(4), 50);
        t.insert(1, 5, q(5), 60);
        t.insert(1, 6, q(6), 60 + ANSWER_WINDOW_NS + 1);
        assert_eq!((t.len(), t.take_lost()), (1, 0));
        t.expire(u64::MAX);
        assert!(t.is_empty());
    }
}
