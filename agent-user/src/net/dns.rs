//! Host names from the device's own DNS answers. Pure: a DNS message parser
//! (RFC 1035, with name compression) and a bounded, TTL-honouring cache.
use std::{
    collections::{HashMap, VecDeque},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DnsError {
    #[error("message truncated at byte {0}")]
    Truncated(usize),
    #[error("not a response")]
    NotResponse,
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

const TYPE_A: u16 = 1;
const TYPE_AAAA: u16 = 28;
const CLASS_IN: u16 = 1;
/// RFC 1035 3.1: a name is at most 255 bytes.
const NAME_MAX: usize = 255;
/// Compression pointers followed per name before giving up (loops).
const MAX_JUMPS: usize = 32;

fn u16_at(m: &[u8], at: usize) -> Result<u16, DnsError> {
    m.get(at..at + 2).map(|b| u16::from_be_bytes([b[0], b[1]])).ok_or(DnsError::Truncated(at))
}

fn u32_at(m: &[u8], at: usize) -> Result<u32, DnsError> {
    m.get(at..at + 4).map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]])).ok_or(DnsError::Truncated(at))
}

/// Reads the (possibly compressed) name at `at`; returns it, lower-cased
/// and dot-separated, and the position after it in the message.
pub fn read_name(m: &[u8], mut at: usize) -> Result<(String, usize), DnsError> {
    let mut name = String::new();
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
                if !name.is_empty() {
                    name.push('.');
                }
                for &b in label {
                    name.push(b.to_ascii_lowercase() as char);
                }
                if name.len() > NAME_MAX {
                    return Err(DnsError::BadName(at));
                }
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

/// The A and AAAA answers of a DNS response. Records that do not fit (a
/// message cut at the kernel's copy limit) are skipped, not an error: the
/// ones before them are still good.
pub fn parse_answers(m: &[u8]) -> Result<Vec<Answer>, DnsError> {
    let flags = u16_at(m, 2)?;
    if flags & 0x8000 == 0 {
        return Err(DnsError::NotResponse);
    }
    let qdcount = u16_at(m, 4)?;
    let ancount = u16_at(m, 6)?;
    let mut at = 12;
    let mut question = None;
    for _ in 0..qdcount {
        let (name, next) = read_name(m, at)?;
        question.get_or_insert(name);
        at = next + 4; // type, class
    }
    let mut out = Vec::new();
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
            let name = question.clone().unwrap_or(owner);
            out.push(Answer { name, addr, ttl });
        }
        at = rdata_at + rdlen as usize;
    }
    Ok(out)
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
        let a = parse_answers(&m).unwrap();
        assert_eq!(
            a,
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
        let a = parse_answers(&m).unwrap();
        assert_eq!(a, vec![Answer { name: "www.example.com".into(), addr: "1.2.3.4".parse().unwrap(), ttl: 20 }]);
    }

    #[test]
    fn refuses_queries_loops_and_garbage() {
        let mut q = response("a.b", &[]);
        q[2] = 0x01; // QR clear: a query
        assert_eq!(parse_answers(&q), Err(DnsError::NotResponse));
        assert!(parse_answers(&[0; 5]).is_err());
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
        assert_eq!(parse_answers(&m).unwrap(), vec![Answer { name: "x.y".into(), addr: v4, ttl: 5 }]);
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
}
