//! The network collector's userspace half. Pure: kernel records in, window
//! records out.
//!
//! The kernel keeps two record families per generation: connection records
//! (a hit per TCP connect/accept or new UDP/ICMP flow, with direction and
//! owner) and traffic records (payload bytes per 5-tuple, from every packet).
//! [`NetState::ingest`] joins them by 5-tuple and namespace: a traffic record
//! with no connection record in the same drain is a connection that started
//! earlier (hit_count 0), whose direction and owner are remembered from when
//! it started, if the agent saw that.
pub mod appproto;
pub mod dns;

use std::{
    collections::{HashMap, VecDeque},
    ffi::CStr,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use agent_common::{
    ConnKey, ConnValue, DnsEvent, TrafficValue, AF_INET, AF_INET6, DIR_IN, DNS_KIND_QUERY, IPPROTO_ICMP,
    IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP,
};

use crate::aggregate::Aggregate;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    Tcp,
    Udp,
    Icmp,
}

impl Transport {
    pub fn name(self) -> &'static str {
        match self {
            Transport::Tcp => "TCP",
            Transport::Udp => "UDP",
            Transport::Icmp => "ICMP",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    In,
    Out,
}

impl Direction {
    pub fn name(self) -> &'static str {
        match self {
            Direction::In => "in",
            Direction::Out => "out",
        }
    }
}

/// The identity of a record (seed 002: local and remote address and port,
/// transport protocol), within one network namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Tuple {
    pub netns: u32,
    pub transport: Transport,
    pub local: IpAddr,
    pub local_port: u16,
    pub remote: IpAddr,
    pub remote_port: u16,
}

impl Tuple {
    pub fn from_key(k: &ConnKey) -> Option<Tuple> {
        let addr = |a: &[u8; 16]| match k.family {
            AF_INET => Some(IpAddr::V4(Ipv4Addr::new(a[0], a[1], a[2], a[3]))),
            AF_INET6 => Some(IpAddr::V6(Ipv6Addr::from(*a))),
            _ => None,
        };
        let transport = match k.proto {
            IPPROTO_TCP => Transport::Tcp,
            IPPROTO_UDP => Transport::Udp,
            IPPROTO_ICMP | IPPROTO_ICMPV6 => Transport::Icmp,
            _ => return None,
        };
        Some(Tuple {
            netns: k.netns,
            transport,
            local: addr(&k.laddr)?,
            local_port: k.lport,
            remote: addr(&k.raddr)?,
            remote_port: k.rport,
        })
    }

    fn with_local_port(self, local_port: u16) -> Tuple {
        Tuple { local_port, ..self }
    }
}

/// Who owned the socket, at the first occurrence.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Owner {
    pub pid: u32,
    pub uid: u32,
    /// argv as laid out in memory (NUL-separated); empty when unknown.
    pub argv: Vec<u8>,
    pub comm: String,
}

impl Owner {
    /// `argv` is the owner's command line, from ARGV.
    fn from_kernel(o: &agent_common::Owner, argv: Vec<u8>) -> Owner {
        Owner { pid: o.process.tgid, uid: o.uid, argv, comm: c_string(&o.comm) }
    }
}

fn c_string(bytes: &[u8]) -> String {
    match CStr::from_bytes_until_nul(bytes) {
        Ok(s) => s.to_string_lossy().into_owned(),
        Err(_) => String::from_utf8_lossy(bytes).into_owned(),
    }
}

/// A ConnectionCreate record of a window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnRecord {
    pub tuple: Tuple,
    /// Non-zero only in per-event mode (part of the identity).
    pub nonce: u64,
    pub direction: Direction,
    /// Connection events: TCP connects and accepts, new UDP/ICMP flows.
    pub hit_count: u64,
    pub first_seen_ns: u64,
    pub owner: Owner,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub dns_queries: u64,
    /// First payload bytes (either direction), for the application protocol.
    pub head: Vec<u8>,
    pub host_name: Option<String>,
    /// A rollup (ports 0) of records pushed out of a full cache (or the
    /// kernel's full staging map).
    pub rollup: bool,
}

/// A record's identity: the 5-tuple (and nonce); a rollup's adds direction
/// and the owner's uid and comm, and has ports 0.
pub type ConnIdentity = (Tuple, u64, Option<(Direction, u32, String)>);

impl Aggregate for ConnRecord {
    type Key = ConnIdentity;
    fn key(&self) -> ConnIdentity {
        let rollup = self.rollup.then(|| (self.direction, self.owner.uid, self.owner.comm.clone()));
        (self.tuple, self.nonce, rollup)
    }
    /// Per namespace, protocol, local and remote address, direction, owner
    /// uid and program: a storm of ports folds into one record, a new peer
    /// or program stays apart.
    fn rolled_up(mut self) -> Option<Self> {
        (self.tuple.local_port, self.tuple.remote_port, self.nonce, self.rollup) = (0, 0, 0, true);
        Some(self)
    }
    fn is_rollup(&self) -> bool {
        self.rollup
    }
    fn hits(&self) -> u64 {
        self.hit_count
    }
    fn absorb(&mut self, later: Self) {
        // Details come from a connection event when there is one (a
        // bytes-only record knows no owner), else from the earliest.
        let (mine, theirs) = (self.hit_count > 0, later.hit_count > 0);
        let take = (theirs && !mine) || (theirs == mine && later.first_seen_ns < self.first_seen_ns);
        self.hit_count += later.hit_count;
        self.bytes_in += later.bytes_in;
        self.bytes_out += later.bytes_out;
        self.dns_queries += later.dns_queries;
        if self.host_name.is_none() {
            self.host_name = later.host_name.clone();
        }
        if self.head.is_empty() {
            self.head = later.head.clone();
        }
        if take {
            self.direction = later.direction;
            self.first_seen_ns = later.first_seen_ns;
            self.owner = later.owner;
        }
    }
    fn first_seen_ns(&self) -> u64 {
        self.first_seen_ns
    }
}

/// Bytes of one 5-tuple between two drains.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrafficSample {
    pub tuple: Tuple,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub dns_queries: u64,
    pub first_seen_ns: u64,
    pub head: Vec<u8>,
}

/// `argv`: the owner's command line.
pub fn conn_record(k: &ConnKey, v: &ConnValue, argv: Vec<u8>) -> Option<ConnRecord> {
    Some(ConnRecord {
        tuple: Tuple::from_key(k)?,
        nonce: k.nonce,
        direction: if v.direction == DIR_IN { Direction::In } else { Direction::Out },
        hit_count: v.hit_count,
        first_seen_ns: v.first_seen_ns,
        owner: Owner::from_kernel(&v.owner, argv),
        bytes_in: 0,
        bytes_out: 0,
        dns_queries: 0,
        head: Vec::new(),
        host_name: None,
        rollup: false,
    })
}

pub fn traffic_sample(k: &ConnKey, v: &TrafficValue) -> Option<TrafficSample> {
    let head_len = (v.head_len as usize).min(v.head.len());
    Some(TrafficSample {
        tuple: Tuple::from_key(k)?,
        bytes_in: v.bytes_in,
        bytes_out: v.bytes_out,
        dns_queries: v.dns_queries,
        first_seen_ns: v.first_seen_ns,
        head: v.head[..head_len].to_vec(),
    })
}

/// A DNS message sent or received by the device, as the kernel copied it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsMessage {
    /// The 5-tuple and namespace, oriented from the device's socket: equal
    /// for a query and its answer.
    pub flow: Tuple,
    /// A query sent (to port 53), else an answer received (from port 53).
    pub query: bool,
    pub ts_ns: u64,
    pub data: Vec<u8>,
}

/// Decodes one ring buffer item ([`DnsEvent`]).
pub fn dns_message(item: &[u8]) -> Option<DnsMessage> {
    if item.len() < std::mem::size_of::<DnsEvent>() {
        return None;
    }
    // SAFETY: DnsEvent is repr(C) plain data of this size; read_unaligned
    // copes with the ring buffer's 8-byte alignment.
    let ev: DnsEvent = unsafe { std::ptr::read_unaligned(item.as_ptr() as *const DnsEvent) };
    let len = (ev.len as usize).min(ev.data.len());
    Some(DnsMessage {
        flow: Tuple::from_key(&ev.key)?,
        query: ev.kind == DNS_KIND_QUERY,
        ts_ns: ev.ts_ns,
        data: ev.data[..len].to_vec(),
    })
}

/// Direction and owner of connections seen starting, so that their bytes in
/// later windows are reported with them. Bounded; the oldest entry goes.
#[derive(Debug)]
struct Memory {
    capacity: usize,
    known: HashMap<Tuple, (Direction, Owner)>,
    order: VecDeque<Tuple>,
}

impl Memory {
    fn new(capacity: usize) -> Memory {
        Memory { capacity, known: HashMap::new(), order: VecDeque::new() }
    }

    fn remember(&mut self, t: Tuple, direction: Direction, owner: &Owner) {
        if self.known.insert(t, (direction, owner.clone())).is_none() {
            self.order.push_back(t);
            while self.order.len() > self.capacity {
                if let Some(old) = self.order.pop_front() {
                    self.known.remove(&old);
                }
            }
        }
    }

    fn get(&self, t: &Tuple) -> Option<&(Direction, Owner)> {
        self.known.get(t)
    }
}

/// Connections remembered across windows for their direction and owner.
pub const MEMORY_ENTRIES: usize = 4096;

/// A connection the agent did not see start: the side with the lower port is
/// taken to be the server (services listen on low, well-known ports;
/// clients use ephemeral ones).
pub fn guess_direction(t: &Tuple) -> Direction {
    if t.local_port != 0 && t.local_port < t.remote_port {
        Direction::In
    } else {
        Direction::Out
    }
}

/// What one drain produced for the network collector.
#[derive(Debug, Default)]
pub struct NetDrained {
    pub connections: Vec<ConnRecord>,
    pub traffic: Vec<TrafficSample>,
    pub dns: Vec<DnsMessage>,
    /// Connection records whose owner's command line was gone from ARGV.
    pub argv_lost: u64,
}

/// What the DNS side of the collector lost or refused since the last call.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DnsLosses {
    /// Names pushed out of the full name cache.
    pub cache_full: u64,
    /// Answers that did not parse (or queries, which then match nothing).
    pub unparsed: u64,
    /// Answers to no query this device sent on that 5-tuple with that id
    /// and question within the window: they named nothing.
    pub unsolicited: u64,
    /// Queries pushed out of the full table of queries waiting for an answer.
    pub query_table_full: u64,
}

/// The collector's state between drains.
#[derive(Debug)]
pub struct NetState {
    memory: Memory,
    dns: dns::DnsCache,
    queries: dns::QueryTable<Tuple>,
    losses: DnsLosses,
    /// Connection records whose owner's command line was gone, since the last take.
    argv_lost: u64,
}

impl NetState {
    pub fn new(dns_cache_size: usize) -> NetState {
        NetState {
            memory: Memory::new(MEMORY_ENTRIES),
            dns: dns::DnsCache::new(dns_cache_size),
            queries: dns::QueryTable::new(dns::QUERY_TABLE_ENTRIES),
            losses: DnsLosses::default(),
            argv_lost: 0,
        }
    }

    /// A DNS message: a query waits for its answer; an answer names its
    /// addresses only if it answers a waiting query (the kernel copies both
    /// in the order they passed, so a query comes before its answer).
    fn dns_message(&mut self, m: &DnsMessage) {
        if m.query {
            match dns::parse_query(&m.data) {
                Ok((id, question)) => self.queries.insert(m.flow, id, question, m.ts_ns),
                Err(_) => self.losses.unparsed += 1,
            }
            return;
        }
        let Ok(r) = dns::parse_response(&m.data) else {
            self.losses.unparsed += 1;
            return;
        };
        let matched = r.question.is_some_and(|q| self.queries.answer(m.flow, r.id, q, m.ts_ns));
        if matched {
            r.answers.iter().for_each(|a| self.dns.insert(m.flow.netns, a, m.ts_ns));
        } else {
            self.losses.unsolicited += 1;
        }
    }

    /// Turns one drain into window records: DNS answers first (they precede
    /// the connections they name), then connection and traffic records
    /// joined by 5-tuple, then host names.
    pub fn ingest(&mut self, d: NetDrained, now_ns: u64) -> Vec<ConnRecord> {
        self.argv_lost += d.argv_lost;
        for m in &d.dns {
            self.dns_message(m);
        }
        let mut out = d.connections;
        let mut index: HashMap<Tuple, usize> = HashMap::new();
        // Kernel rollups (ports 0) stand for many 5-tuples: no traffic
        // record joins them, and they are no connection to remember.
        for (i, r) in out.iter().enumerate().filter(|(_, r)| !r.rollup) {
            index.entry(r.tuple).or_insert(i);
            self.memory.remember(r.tuple, r.direction, &r.owner);
        }
        for t in d.traffic {
            // With aggregateEphemeralPorts an outbound record has local port 0.
            let zeroed = t.tuple.with_local_port(0);
            let target =
                index.get(&t.tuple).or_else(|| index.get(&zeroed).filter(|&&i| out[i].direction == Direction::Out));
            if let Some(&i) = target {
                let r = &mut out[i];
                r.bytes_in += t.bytes_in;
                r.bytes_out += t.bytes_out;
                r.dns_queries += t.dns_queries;
                if r.head.is_empty() {
                    r.head = t.head;
                }
                continue;
            }
            if t.bytes_in == 0 && t.bytes_out == 0 && t.dns_queries == 0 {
                continue; // handshakes, resets: nothing to report without a connection event
            }
            let (tuple, direction, owner) = match self.memory.get(&t.tuple) {
                Some((d, o)) => (t.tuple, *d, o.clone()),
                None => match self.memory.get(&zeroed).filter(|(d, _)| *d == Direction::Out) {
                    Some((d, o)) => (zeroed, *d, o.clone()),
                    None => (t.tuple, guess_direction(&t.tuple), Owner::default()),
                },
            };
            index.insert(tuple, out.len());
            out.push(ConnRecord {
                tuple,
                nonce: 0,
                direction,
                hit_count: 0,
                first_seen_ns: t.first_seen_ns,
                owner,
                bytes_in: t.bytes_in,
                bytes_out: t.bytes_out,
                dns_queries: t.dns_queries,
                head: t.head,
                host_name: None,
                rollup: false,
            });
        }
        for r in &mut out {
            let at = r.first_seen_ns.max(1);
            r.host_name = self.dns.lookup(r.tuple.netns, r.tuple.remote, at).map(str::to_string);
        }
        self.dns.expire(now_ns);
        // A query still waiting may be answered in the next drain. A second
        // of slack: an answer reserved in the ring before this drain but
        // committed after it is read by the next one.
        self.queries.expire(now_ns.saturating_sub(1_000_000_000));
        out
    }

    /// What DNS lost or refused since the last call.
    /// Connection records reported without their owner's command line
    /// since the last call.
    pub fn take_argv_lost(&mut self) -> u64 {
        std::mem::take(&mut self.argv_lost)
    }

    pub fn take_dns_losses(&mut self) -> DnsLosses {
        let mut l = std::mem::take(&mut self.losses);
        l.cache_full = self.dns.take_evicted();
        l.query_table_full = self.queries.take_lost();
        l
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::WindowCache;

    fn tuple(lport: u16, rport: u16) -> Tuple {
        Tuple {
            netns: 1,
            transport: Transport::Tcp,
            local: "10.0.0.1".parse().unwrap(),
            local_port: lport,
            remote: "10.0.0.2".parse().unwrap(),
            remote_port: rport,
        }
    }

    fn conn(t: Tuple, dir: Direction, hits: u64, at: u64, pid: u32) -> ConnRecord {
        ConnRecord {
            tuple: t,
            nonce: 0,
            direction: dir,
            hit_count: hits,
            first_seen_ns: at,
            owner: Owner { pid, uid: 0, argv: b"curl\0x\0".to_vec(), comm: "curl".into() },
            bytes_in: 0,
            bytes_out: 0,
            dns_queries: 0,
            head: vec![],
            host_name: None,
            rollup: false,
        }
    }

    fn traffic(t: Tuple, bytes_in: u64, bytes_out: u64, at: u64) -> TrafficSample {
        TrafficSample { tuple: t, bytes_in, bytes_out, dns_queries: 0, first_seen_ns: at, head: b"GET / HT".to_vec() }
    }

    #[test]
    fn key_conversion() {
        let mut k = ConnKey::zeroed();
        k.family = AF_INET;
        k.proto = IPPROTO_ICMP;
        k.laddr[..4].copy_from_slice(&[10, 200, 0, 1]);
        k.raddr[..4].copy_from_slice(&[10, 200, 0, 2]);
        k.netns = 9;
        let t = Tuple::from_key(&k).unwrap();
        assert_eq!(
            (t.transport, t.local.to_string(), t.remote.to_string()),
            (Transport::Icmp, "10.200.0.1".into(), "10.200.0.2".into())
        );
        k.family = AF_INET6;
        k.proto = IPPROTO_ICMPV6;
        k.laddr = "fd00::1".parse::<Ipv6Addr>().unwrap().octets();
        assert_eq!(Tuple::from_key(&k).unwrap().local.to_string(), "fd00::1");
        k.family = 99;
        assert!(Tuple::from_key(&k).is_none());
    }

    #[test]
    fn joins_bytes_to_connections_and_keeps_long_lived_ones() {
        let mut s = NetState::new(16);
        let t = tuple(40000, 80);
        let first = s.ingest(
            NetDrained {
                connections: vec![conn(t, Direction::Out, 1, 10, 77)],
                traffic: vec![traffic(t, 5, 7, 9)],
                dns: vec![],
                argv_lost: 2,
            },
            20,
        );
        assert_eq!(first.len(), 1);
        assert_eq!((first[0].hit_count, first[0].bytes_in, first[0].bytes_out), (1, 5, 7));
        assert_eq!(first[0].head, b"GET / HT");
        // Owners without their command line are counted once.
        assert_eq!((s.take_argv_lost(), s.take_argv_lost()), (2, 0));
        // A later drain with bytes only: hit_count 0, direction and owner remembered.
        let later = s.ingest(NetDrained { traffic: vec![traffic(t, 100, 0, 30)], ..Default::default() }, 40);
        assert_eq!(later.len(), 1);
        assert_eq!(
            (later[0].hit_count, later[0].bytes_in, later[0].direction, later[0].owner.pid),
            (0, 100, Direction::Out, 77)
        );
        // Never seen starting: direction guessed from the ports.
        let unknown =
            s.ingest(NetDrained { traffic: vec![traffic(tuple(22, 50000), 1, 1, 50)], ..Default::default() }, 60);
        assert_eq!((unknown[0].direction, unknown[0].owner.pid), (Direction::In, 0));
        // Payload-less packets alone make no record.
        assert!(s
            .ingest(NetDrained { traffic: vec![traffic(tuple(1, 2), 0, 0, 70)], ..Default::default() }, 80)
            .is_empty());
    }

    #[test]
    fn ephemeral_aggregation_joins_bytes_to_the_port_zero_record() {
        let mut s = NetState::new(16);
        let agg = tuple(0, 443);
        let out = s.ingest(
            NetDrained {
                connections: vec![conn(agg, Direction::Out, 3, 10, 5)],
                traffic: vec![traffic(tuple(40001, 443), 1, 2, 9), traffic(tuple(40002, 443), 10, 20, 11)],
                ..Default::default()
            },
            20,
        );
        assert_eq!(out.len(), 1);
        assert_eq!((out[0].hit_count, out[0].bytes_in, out[0].bytes_out), (3, 11, 22));
        let later =
            s.ingest(NetDrained { traffic: vec![traffic(tuple(40003, 443), 4, 4, 30)], ..Default::default() }, 40);
        assert_eq!(later[0].tuple, agg);
    }

    /// The UDP flow to the resolver 10.0.0.53 from port `lport`, in `netns`.
    fn resolver_flow(netns: u32, lport: u16) -> Tuple {
        Tuple {
            netns,
            transport: Transport::Udp,
            local: "10.0.0.1".parse().unwrap(),
            local_port: lport,
            remote: "10.0.0.53".parse().unwrap(),
            remote_port: 53,
        }
    }

    /// A query for `name` (id 0x1234) sent on `flow` at `ts_ns`.
    fn sent(flow: Tuple, name: &str, ts_ns: u64) -> DnsMessage {
        let mut data = dns::tests::response(name, &[]);
        data[2..4].copy_from_slice(&[0x01, 0x00]); // QR clear, RD
        DnsMessage { flow, query: true, ts_ns, data }
    }

    /// An answer (id 0x1234) naming `addr` for `name`, received on `flow` at `ts_ns`.
    fn received(flow: Tuple, name: &str, addr: IpAddr, ts_ns: u64) -> DnsMessage {
        DnsMessage { flow, query: false, ts_ns, data: dns::tests::response(name, &[(addr, 10)]) }
    }

    const S: u64 = 1_000_000_000;

    #[test]
    fn host_names_come_from_earlier_answers_within_ttl() {
        let mut s = NetState::new(16);
        let t = tuple(40000, 80);
        let flow = resolver_flow(1, 5000);
        let dns = vec![sent(flow, "svc.test", S / 2), received(flow, "svc.test", t.remote, S)];
        let r = s.ingest(
            NetDrained { connections: vec![conn(t, Direction::Out, 1, 2 * S, 1)], dns, ..Default::default() },
            3 * S,
        );
        assert_eq!(r[0].host_name.as_deref(), Some("svc.test"));
        // After the TTL the name no longer applies.
        let r = s.ingest(
            NetDrained { connections: vec![conn(t, Direction::Out, 1, 12 * S, 1)], ..Default::default() },
            12 * S,
        );
        assert_eq!(r[0].host_name, None);
        // Another namespace did not resolve it.
        let mut other = t;
        other.netns = 2;
        let dns = vec![sent(flow, "svc.test", 20 * S), received(flow, "svc.test", t.remote, 20 * S)];
        let r = s.ingest(
            NetDrained { connections: vec![conn(other, Direction::Out, 1, 21 * S, 1)], dns, ..Default::default() },
            21 * S,
        );
        assert_eq!(r[0].host_name, None);
        assert_eq!(s.take_dns_losses(), DnsLosses::default());
    }

    /// Ingests `dns` and returns the host name a connection to `addr` right after gets.
    fn name_after(s: &mut NetState, dns: Vec<DnsMessage>, addr: IpAddr, at: u64) -> Option<String> {
        let mut t = tuple(40000, 80);
        t.remote = addr;
        let r = s
            .ingest(NetDrained { connections: vec![conn(t, Direction::Out, 1, at, 1)], dns, ..Default::default() }, at);
        r[0].host_name.clone()
    }

    #[test]
    fn only_answers_to_queries_sent_name_anything() {
        let mut s = NetState::new(16);
        let flow = resolver_flow(1, 5000);
        let addr = |i: u8| IpAddr::V4(Ipv4Addr::new(10, 9, 0, i));
        // No query at all: one forged datagram from port 53.
        assert_eq!(name_after(&mut s, vec![received(flow, "bank.test", addr(1), S)], addr(1), 2 * S), None);
        assert_eq!(s.take_dns_losses(), DnsLosses { unsolicited: 1, ..Default::default() });
        // A query, but the answer comes to another port, from another
        // namespace, for another name, or too late.
        let mut other_ns = flow;
        other_ns.netns = 2;
        let dns = vec![
            sent(flow, "a.test", 10 * S),
            received(resolver_flow(1, 5001), "a.test", addr(2), 10 * S + 1),
            received(other_ns, "a.test", addr(3), 10 * S + 2),
            received(flow, "b.test", addr(4), 10 * S + 3),
            sent(flow, "c.test", 10 * S),
            received(flow, "c.test", addr(5), 10 * S + dns::ANSWER_WINDOW_NS + 1),
        ];
        for i in 2..=5 {
            assert_eq!(name_after(&mut s, dns.clone(), addr(i), 16 * S), None, "10.9.0.{i}");
            s = NetState::new(16);
        }
        name_after(&mut s, dns, addr(1), 16 * S);
        assert_eq!(s.take_dns_losses(), DnsLosses { unsolicited: 4, ..Default::default() });
        // The real answer names the address; a second answer to the same
        // query (a spoofer racing the resolver) is refused.
        let dns = vec![
            sent(flow, "a.test", 20 * S),
            received(flow, "a.test", addr(6), 20 * S + 1),
            received(flow, "a.test", addr(7), 20 * S + 2),
        ];
        assert_eq!(name_after(&mut s, dns.clone(), addr(6), 21 * S).as_deref(), Some("a.test"));
        assert_eq!(name_after(&mut s, vec![], addr(7), 21 * S), None);
        assert_eq!(s.take_dns_losses(), DnsLosses { unsolicited: 1, ..Default::default() });
    }

    #[test]
    fn a_query_is_answered_in_a_later_drain() {
        let mut s = NetState::new(16);
        let flow = resolver_flow(1, 5000);
        let addr: IpAddr = "10.9.0.9".parse().unwrap();
        assert_eq!(name_after(&mut s, vec![sent(flow, "late.test", S)], addr, S + 1), None);
        let dns = vec![received(flow, "late.test", addr, 5 * S)];
        assert_eq!(name_after(&mut s, dns, addr, 6 * S + S / 2).as_deref(), Some("late.test"));
        assert_eq!(s.take_dns_losses(), DnsLosses::default());
        // Unparsable messages are counted apart from unsolicited ones.
        let garbage = DnsMessage { flow, query: false, ts_ns: 7 * S, data: vec![0; 5] };
        let mut query_garbage = garbage.clone();
        query_garbage.query = true;
        name_after(&mut s, vec![garbage, query_garbage], addr, 8 * S);
        assert_eq!(s.take_dns_losses(), DnsLosses { unparsed: 2, ..Default::default() });
    }

    #[test]
    fn a_forged_label_with_a_dot_is_named_escaped() {
        let mut s = NetState::new(16);
        let flow = resolver_flow(1, 5000);
        let addr: IpAddr = "10.9.0.10".parse().unwrap();
        // "evil.com" is one label of the question: the query really asked it.
        let name = "evil.com.example.net";
        let mut q = sent(flow, name, S);
        let mut a = received(flow, name, addr, S + 1);
        for m in [&mut q.data, &mut a.data] {
            // Labels 4 "evil", 3 "com" become one label of 8 bytes.
            assert_eq!(&m[12..21], b"\x04evil\x03com");
            m.splice(12..21, *b"\x08evil.com");
        }
        assert_eq!(name_after(&mut s, vec![q, a], addr, 2 * S).as_deref(), Some("evil\\.com.example.net"));
    }

    #[test]
    fn window_merges_prefer_connection_details() {
        let t = tuple(40000, 80);
        let mut bytes_first = conn(t, Direction::In, 0, 5, 0);
        bytes_first.bytes_out = 10;
        bytes_first.owner = Owner::default();
        let mut c = WindowCache::new(4);
        c.add(bytes_first);
        c.add(conn(t, Direction::Out, 1, 7, 42));
        let (out, ev) = c.take();
        assert_eq!(out.len(), 1);
        assert_eq!(
            (out[0].hit_count, out[0].bytes_out, out[0].direction, out[0].owner.pid, out[0].first_seen_ns),
            (1, 10, Direction::Out, 42, 7)
        );
        assert_eq!(ev.hits, 0);
    }

    #[test]
    fn port_storm_cannot_hide_a_connection_to_a_new_address() {
        let mut c = WindowCache::new(256);
        let marker = Tuple { remote: "10.0.0.9".parse().unwrap(), ..tuple(41000, 22) };
        let mut added = 0;
        for port in 0..20_000u16 {
            c.add(conn(tuple(30000 + port % 30000, 1000 + port), Direction::Out, 1, port as u64, 5));
            added += 1;
            if port == 100 {
                c.add(conn(marker, Direction::Out, 1, port as u64, 6));
                added += 1;
            }
        }
        let (out, ev) = c.take();
        let rollups: Vec<_> = out.iter().filter(|r| r.rollup).collect();
        assert_eq!(out.len() - rollups.len(), 256);
        let got: Vec<_> = rollups.iter().map(|r| (r.tuple.remote.to_string(), r.hit_count)).collect();
        assert_eq!(got, [("10.0.0.2".into(), 20_000 - 256), ("10.0.0.9".into(), 1)]);
        assert!(rollups.iter().all(|r| (r.tuple.local_port, r.tuple.remote_port, r.nonce) == (0, 0, 0)));
        assert_eq!(rollups[1].owner.pid, 6, "the marker's own owner");
        assert_eq!((ev.hits, ev.rolled_up), (0, 20_000 - 256 + 1));
        assert_eq!(out.iter().map(|r| r.hit_count).sum::<u64>() + ev.hits, added);
    }

    #[test]
    fn connection_rollups_keep_direction_and_program_apart() {
        let mut c = WindowCache::new(1);
        let mut root = conn(tuple(40001, 80), Direction::Out, 1, 1, 1);
        root.owner.uid = 1000;
        let mut other_program = conn(tuple(40002, 80), Direction::Out, 1, 2, 2);
        other_program.owner.comm = "nc".into();
        let inbound = conn(tuple(80, 40003), Direction::In, 1, 3, 3);
        let per_event = ConnRecord { nonce: 77, ..conn(tuple(40004, 81), Direction::Out, 1, 4, 4) };
        let same = conn(tuple(40005, 82), Direction::Out, 2, 5, 5);
        c.add_batch(vec![root, other_program, inbound, per_event, same, conn(tuple(1, 1), Direction::Out, 1, 9, 9)]);
        let (out, ev) = c.take();
        let got: Vec<_> = out
            .iter()
            .filter(|r| r.rollup)
            .map(|r| (r.direction, r.owner.uid, r.owner.comm.clone(), r.hit_count))
            .collect();
        assert_eq!(
            got,
            [
                (Direction::Out, 1000, "curl".into(), 1),
                (Direction::Out, 0, "nc".into(), 1),
                (Direction::In, 0, "curl".into(), 1),
                (Direction::Out, 0, "curl".into(), 3),
            ]
        );
        assert_eq!(ev.hits, 0);
    }

    #[test]
    fn kernel_rollups_join_no_traffic() {
        let mut s = NetState::new(16);
        let icmp = Tuple { transport: Transport::Icmp, ..tuple(0, 0) };
        let mut kernel_rollup = conn(icmp, Direction::Out, 9, 1, 1);
        kernel_rollup.rollup = true;
        let out = s.ingest(
            NetDrained {
                connections: vec![kernel_rollup],
                traffic: vec![traffic(icmp, 64, 64, 2)],
                ..Default::default()
            },
            3,
        );
        assert_eq!(out.len(), 2, "the ICMP flow's bytes are its own record: {out:#?}");
        assert_eq!((out[0].rollup, out[0].bytes_in, out[0].hit_count), (true, 0, 9));
        assert_eq!((out[1].rollup, out[1].bytes_in, out[1].hit_count), (false, 64, 0));
    }

    #[test]
    fn dns_ring_items_decode() {
        let flow = resolver_flow(3, 5000);
        let mut key = ConnKey::zeroed();
        (key.netns, key.family, key.proto, key.lport, key.rport) = (3, AF_INET, IPPROTO_UDP, 5000, 53);
        key.laddr[..4].copy_from_slice(&[10, 0, 0, 1]);
        key.raddr[..4].copy_from_slice(&[10, 0, 0, 53]);
        let mut ev = DnsEvent {
            ts_ns: 5,
            key,
            len: 4,
            kind: agent_common::DNS_KIND_ANSWER,
            _pad: [0; 5],
            data: [0; agent_common::DNS_CAP],
        };
        ev.data[..4].copy_from_slice(b"abcd");
        let decode = |ev: &DnsEvent| {
            // SAFETY: plain data viewed as bytes.
            let bytes = unsafe {
                std::slice::from_raw_parts(ev as *const DnsEvent as *const u8, std::mem::size_of::<DnsEvent>())
            };
            assert_eq!(dns_message(&bytes[..10]), None);
            dns_message(bytes)
        };
        assert_eq!(decode(&ev), Some(DnsMessage { flow, query: false, ts_ns: 5, data: b"abcd".to_vec() }));
        ev.kind = DNS_KIND_QUERY;
        assert_eq!(decode(&ev).map(|m| m.query), Some(true));
        ev.key.family = 0;
        assert_eq!(decode(&ev), None, "no address family");
    }
}
