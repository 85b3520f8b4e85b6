//! ListeningPorts: one event per socket that waits for peers: TCP in
//! LISTEN, UDP and raw sockets not connected, IPv4 and IPv6, in every
//! network namespace that has a process, with the process that owns it.
//! Tables, namespaces and owners come from /proc (`procfs`, the walk the
//! listener seeding uses too; the table parser is `listeners`).
use std::collections::{HashMap, HashSet};

use serde::Serialize;

use super::{Context, Snapshot, Taken};
use crate::{
    events::EventType,
    hostfs::HostFs,
    listeners::{self, SocketLine, TCP_CLOSE, TCP_LISTEN},
    procfs,
    report::commandline,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Transport {
    Tcp,
    Udp,
    Raw,
}

impl Transport {
    pub fn name(self) -> &'static str {
        match self {
            Transport::Tcp => "TCP",
            Transport::Udp => "UDP",
            Transport::Raw => "RAW",
        }
    }

    /// Whether a socket of this table waits for peers. UDP and raw sockets
    /// are TCP_ESTABLISHED once connect()ed (`ip4_datagram_connect`), which
    /// also fixes their remote address: those only talk to that peer.
    pub fn is_listening(self, s: &SocketLine) -> bool {
        match self {
            Transport::Tcp => s.state == TCP_LISTEN,
            Transport::Udp | Transport::Raw => s.state == TCP_CLOSE && s.remote.0.is_unspecified() && s.remote.1 == 0,
        }
    }
}

/// The tables of one namespace, as /proc/PID/net names them.
pub const TABLES: [(&str, Transport); 6] = [
    ("tcp", Transport::Tcp),
    ("tcp6", Transport::Tcp),
    ("udp", Transport::Udp),
    ("udp6", Transport::Udp),
    ("raw", Transport::Raw),
    ("raw6", Transport::Raw),
];

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ListeningPort {
    /// `TCP`, `UDP` or `RAW`.
    pub transport_protocol: &'static str,
    pub local_address: String,
    /// 0 for a raw socket (its protocol is `raw_protocol`).
    pub local_port: u16,
    /// The unspecified address and port 0: nothing is connected.
    pub remote_address: String,
    pub remote_port: u16,
    /// A raw socket's IP protocol (1 ICMP, 58 ICMPv6, 255 IPPROTO_RAW...); null otherwise.
    pub raw_protocol: Option<u16>,
    /// The owner; 0, "", "" when unknown.
    pub process_id: u32,
    /// The socket's uid from the table (its creator's), known even without an owner.
    pub uid: u32,
    pub commandline: String,
    pub executable: String,
    /// Inode of the network namespace (as in /proc/PID/ns/net, and ConnectionCreate's `netns`).
    pub netns: u32,
}

/// A listening socket found in a namespace's tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Found {
    pub netns: u64,
    pub transport: Transport,
    pub socket: SocketLine,
}

/// The listening sockets of one table's text.
pub fn listening(netns: u64, transport: Transport, table: &str) -> impl Iterator<Item = Found> + '_ {
    table
        .lines()
        .filter_map(listeners::parse_socket_line)
        .filter(move |s| transport.is_listening(s))
        .map(move |socket| Found { netns, transport, socket })
}

/// The item's identity: namespace, protocol, local address and port (a raw
/// socket's protocol), so that a server restarted on the same address is
/// the same item, "changed". Sockets sharing all of that (SO_REUSEPORT
/// groups, one raw protocol opened twice) get `#2`, `#3`... in inode order.
pub fn keys(found: &[Found]) -> Vec<String> {
    let base = |f: &Found| {
        let (addr, port) = f.socket.local;
        format!("{} {} {addr} {port}", f.netns, f.transport.name())
    };
    let mut order: Vec<usize> = (0..found.len()).collect();
    order.sort_by_key(|&i| (base(&found[i]), found[i].socket.inode));
    let mut keys = vec![String::new(); found.len()];
    let mut seen: HashMap<String, usize> = HashMap::new();
    for i in order {
        let b = base(&found[i]);
        let n = seen.entry(b.clone()).or_insert(0);
        *n += 1;
        keys[i] = if *n == 1 { b } else { format!("{b} #{n}") };
    }
    keys
}

/// The process that owns a socket, as the payload shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Owner {
    pub pid: u32,
    pub commandline: String,
    pub executable: String,
}

pub fn payload(f: &Found, owner: &Owner) -> ListeningPort {
    let s = &f.socket;
    let raw = f.transport == Transport::Raw;
    ListeningPort {
        transport_protocol: f.transport.name(),
        local_address: s.local.0.to_string(),
        local_port: if raw { 0 } else { s.local.1 },
        remote_address: s.remote.0.to_string(),
        remote_port: s.remote.1,
        raw_protocol: raw.then_some(s.local.1),
        process_id: owner.pid,
        uid: s.uid,
        commandline: owner.commandline.clone(),
        executable: owner.executable.clone(),
        // As the kernel programs key it (`ns.inum` is an unsigned int).
        netns: f.netns as u32,
    }
}

pub struct ListeningPorts;

impl Snapshot for ListeningPorts {
    fn event_type(&self) -> EventType {
        EventType::ListeningPorts
    }

    fn take(&mut self, cx: &Context<'_>) -> Taken {
        let mut taken = Taken::default();
        let host = cx.host;
        let pids = match procfs::pids(host) {
            Ok(p) => p,
            Err(e) => {
                taken.fail_host(&e);
                return taken;
            }
        };
        let mut found = Vec::new();
        for ns in procfs::net_namespaces(host, &pids) {
            match namespace_tables(host, &ns) {
                Ok(tables) => {
                    for (transport, text) in tables {
                        found.extend(listening(ns.inode, transport, &text));
                    }
                }
                Err(e) => taken.fail_host(&e),
            }
        }
        let wanted: HashSet<u64> = found.iter().map(|f| f.socket.inode).filter(|&i| i != 0).collect();
        let holders =
            if wanted.is_empty() { procfs::Holders::default() } else { procfs::socket_holders(host, &pids, &wanted) };
        if holders.denied > 0 {
            taken.fail(
                "/proc/PID/fd",
                format!(
                    "permission denied for {} processes (other users' processes need CAP_SYS_PTRACE): \
                     sockets only they hold have no owner",
                    holders.denied
                ),
            );
        }
        let mut owners = procfs::Owners::new(host);
        let mut known: HashMap<u32, Option<Owner>> = HashMap::new();
        for (f, key) in found.iter().zip(keys(&found)) {
            let holding = holders.by_inode.get(&f.socket.inode).map(Vec::as_slice).unwrap_or_default();
            let owner = owners
                .choose(holding)
                .and_then(|(pid, _)| {
                    known.entry(pid).or_insert_with(|| read_owner(host, pid, cx.config.cmdline_max)).clone()
                })
                .unwrap_or_default();
            taken.push(key, &payload(f, &owner));
        }
        taken
    }
}

/// The six tables of a namespace, from the first of its processes that
/// can read them (one may exit mid-read); a table the kernel lacks (no
/// IPv6) is empty. The error is the last process's.
fn namespace_tables(
    host: &HostFs,
    ns: &procfs::Namespace,
) -> Result<Vec<(Transport, String)>, crate::hostfs::HostError> {
    let mut last = None;
    for &pid in &ns.pids {
        let tables: Result<Vec<_>, _> = TABLES
            .iter()
            .map(|&(name, t)| procfs::net_table(host, pid, name).map(|text| (t, text.unwrap_or_default())))
            .collect();
        match tables {
            Ok(t) => return Ok(t),
            Err(e) => last = Some(e),
        }
    }
    Err(last.expect("a namespace has a process"))
}

/// `pid` as an owner: its command line as ProcessCreate joins it (at most
/// processCommandLineMaxBytes bytes) and its executable; None when it exited.
fn read_owner(host: &HostFs, pid: u32, cmdline_max: u32) -> Option<Owner> {
    let comm = procfs::comm(host, pid)?;
    let argv = procfs::cmdline(host, pid, cmdline_max)?;
    let comm = String::from_utf8_lossy(comm.strip_suffix(b"\n").unwrap_or(&comm)).into_owned();
    Some(Owner {
        pid,
        commandline: commandline(&argv, &comm),
        executable: procfs::executable(host, pid).unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use serde_json::{json, Value};

    use super::*;
    use crate::config::Config;

    fn take(case: &str, config: &Config) -> Taken {
        let root = format!("{}/fixtures/listening_ports/{case}", env!("CARGO_MANIFEST_DIR"));
        ListeningPorts.take(&Context::new(&HostFs::new(root), config))
    }

    fn by_key(t: &Taken) -> BTreeMap<String, Value> {
        t.items.iter().map(|i| (i.key.clone(), i.payload.clone())).collect()
    }

    fn port(proto: &str, addr: &str, port: u16, remote: &str, owner: (u32, u32, &str, &str), netns: u32) -> Value {
        let raw = proto == "RAW";
        json!({
            "transport_protocol": proto, "local_address": addr, "local_port": if raw { 0 } else { port },
            "remote_address": remote, "remote_port": 0, "raw_protocol": if raw { json!(port) } else { json!(null) },
            "process_id": owner.0, "uid": owner.1, "commandline": owner.2, "executable": owner.3, "netns": netns,
        })
    }

    /// Two namespaces: the host's (hand-made tables: an SO_REUSEPORT pair,
    /// a listener nobody holds, a kernel UDP socket, a TIME_WAIT entry, a
    /// cut line) and one whose tables were copied from a real namespace
    /// (listeners, connected TCP and UDP sockets, raw sockets, v4 and v6).
    #[test]
    fn listeners_of_every_namespace_with_their_owners() {
        let t = take("two_namespaces", &Config::default());
        assert_eq!(t.failures, []);
        let root = 4_026_531_840;
        let ns = 4_026_532_500;
        let sshd = (1, 0, "/usr/sbin/sshd -D", "/usr/sbin/sshd");
        let master = (2, 33, "nginx: master process /usr/sbin/nginx", "/usr/sbin/nginx");
        let nobody = |uid| (0, uid, "", "");
        let py = (100, 0, "python3 /tmp/mk.py", "/usr/bin/python3.11");
        let expected: BTreeMap<String, Value> = [
            ("4026531840 TCP 0.0.0.0 22", port("TCP", "0.0.0.0", 22, "0.0.0.0", sshd, root)),
            // The master, not its worker, and the table's uid, not the owner's.
            ("4026531840 TCP 0.0.0.0 80", port("TCP", "0.0.0.0", 80, "0.0.0.0", master, root)),
            ("4026531840 TCP 0.0.0.0 80 #2", port("TCP", "0.0.0.0", 80, "0.0.0.0", master, root)),
            ("4026531840 TCP 127.0.0.1 8081", port("TCP", "127.0.0.1", 8081, "0.0.0.0", nobody(1000), root)),
            ("4026531840 UDP 0.0.0.0 4789", port("UDP", "0.0.0.0", 4789, "0.0.0.0", nobody(0), root)),
            ("4026532500 TCP 127.0.0.1 8080", port("TCP", "127.0.0.1", 8080, "0.0.0.0", py, ns)),
            ("4026532500 TCP 2001:db8:1:2::abcd 443", port("TCP", "2001:db8:1:2::abcd", 443, "::", py, ns)),
            ("4026532500 TCP ::ffff:127.0.0.1 8443", port("TCP", "::ffff:127.0.0.1", 8443, "::", py, ns)),
            ("4026532500 UDP 0.0.0.0 5353", port("UDP", "0.0.0.0", 5353, "0.0.0.0", py, ns)),
            ("4026532500 UDP 2001:db8:1:2::abcd 547", port("UDP", "2001:db8:1:2::abcd", 547, "::", py, ns)),
            ("4026532500 RAW 0.0.0.0 1", port("RAW", "0.0.0.0", 1, "0.0.0.0", py, ns)),
            ("4026532500 RAW :: 58", port("RAW", "::", 58, "::", py, ns)),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let got = by_key(&t);
        assert_eq!(got.len(), t.items.len(), "keys are unique");
        for (k, v) in &expected {
            assert_eq!(got.get(k), Some(v), "{k}");
        }
        assert_eq!(got.keys().collect::<Vec<_>>(), expected.keys().collect::<Vec<_>>());
    }

    #[test]
    fn command_lines_are_bounded_like_process_create() {
        let mut config = Config::default();
        config.cmdline_max = 10;
        let got = by_key(&take("two_namespaces", &config));
        assert_eq!(got["4026532500 UDP 0.0.0.0 5353"]["commandline"], "python3 /t");
    }

    #[test]
    fn an_unreadable_proc_is_a_failure_not_a_crash() {
        let t = take("missing", &Config::default());
        assert!(t.items.is_empty());
        assert_eq!(t.failures.len(), 1);
        assert_eq!(t.failures[0].source, "/proc");
    }

    #[test]
    fn connected_datagram_sockets_do_not_listen() {
        let line = |st: &str, rem: &str| {
            listeners::parse_socket_line(&format!(
                " 1: 0100007F:9C40 {rem} {st} 00000000:00000000 00:00000000 00000000     0        0 7 2 0 0"
            ))
            .unwrap()
        };
        assert!(Transport::Udp.is_listening(&line("07", "00000000:0000")));
        assert!(!Transport::Udp.is_listening(&line("01", "0100007F:14E9")));
        // Disconnected again (connect(AF_UNSPEC)): listening once more.
        assert!(Transport::Raw.is_listening(&line("07", "00000000:0000")));
        assert!(!Transport::Raw.is_listening(&line("07", "0100007F:0000")));
        assert!(!Transport::Tcp.is_listening(&line("07", "00000000:0000")), "a closed TCP socket");
        assert!(Transport::Tcp.is_listening(&line("0A", "00000000:0000")));
    }
}
