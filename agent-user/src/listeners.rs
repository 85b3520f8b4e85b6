//! Sockets of the /proc/net tables and their owners, the pure half (parsing,
//! choosing an owner) of two users: the ListeningPorts collector, and the
//! seeding of listeners that were open before the network collector
//! started (the kernel program learns a listener's owner only when the
//! socket goes to LISTEN; for older listeners the agent reads /proc once
//! after attaching and seeds the `LISTENERS` map). The /proc walk is
//! `procfs`; the map insertion `ebpf::Programs::seed_listeners`.
use std::{
    collections::HashMap,
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use agent_common::{Argv, ListenKey, Owner, ProcId, CMDLINE_CAP, COMM_LEN};

/// `TCP_LISTEN` and `TCP_CLOSE` in include/net/tcp_states.h.
pub const TCP_LISTEN: u8 = 0x0A;
pub const TCP_CLOSE: u8 = 0x07;

/// A listening socket in one /proc/<pid>/net/tcp or tcp6 table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Listener {
    /// Local port, host byte order.
    pub port: u16,
    /// Socket inode, as in the `socket:[INODE]` links of /proc/<pid>/fd.
    pub inode: u64,
}

/// The listening sockets of a /proc/<pid>/net/tcp or tcp6 table (see
/// [`parse_socket_line`]), those with a socket file.
pub fn parse_tcp_table(text: &str) -> Vec<Listener> {
    text.lines()
        .filter_map(parse_socket_line)
        // Inode 0: no socket file (never a live listener); nobody can hold it.
        .filter(|s| s.state == TCP_LISTEN && s.inode != 0)
        .map(|s| Listener { port: s.local.1, inode: s.inode })
        .collect()
}

/// One socket of a /proc/<pid>/net/{tcp,tcp6,udp,udp6,raw,raw6} table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SocketLine {
    /// Address and port (host byte order); a raw socket's "port" is its
    /// IP protocol number.
    pub local: (IpAddr, u16),
    pub remote: (IpAddr, u16),
    /// `TCP_*` of include/net/tcp_states.h (UDP and raw sockets use
    /// TCP_ESTABLISHED when connected, TCP_CLOSE otherwise).
    pub state: u8,
    /// The socket's uid (`sock_i_uid`: the creator's, or a later fchown).
    pub uid: u32,
    /// As in the `socket:[INODE]` links of /proc/<pid>/fd; 0 for a socket
    /// without a file (a kernel socket, a TCP request or time-wait entry).
    pub inode: u64,
}

/// One line of a socket table. The six tables share one layout
/// (`get_tcp4_sock` in net/ipv4/tcp_ipv4.c, `udp4_format_sock` in
/// net/ipv4/udp.c, `raw_sock_seq_show` in net/ipv4/raw.c and their IPv6
/// twins): `sl: local rem st tx:rx tr:when retrnsmt uid timeout inode ...`,
/// ports in hex after the address. The header and malformed lines are None.
pub fn parse_socket_line(line: &str) -> Option<SocketLine> {
    let f: Vec<&str> = line.split_whitespace().take(10).collect();
    if f.len() < 10 || !f[0].ends_with(':') {
        return None;
    }
    Some(SocketLine {
        local: parse_endpoint(f[1])?,
        remote: parse_endpoint(f[2])?,
        state: u8::from_str_radix(f[3], 16).ok()?,
        uid: f[7].parse().ok()?,
        inode: f[9].parse().ok()?,
    })
}

/// `ADDR:PORT` as the tables print it: the port as 4 hex digits, the
/// address as the raw bytes of the kernel's `__be32` (8 hex digits) or of
/// `s6_addr32[0..4]` (32), each 32-bit word printed with `%08X` as a
/// native-endian integer. So every word's native bytes are the address's
/// bytes in network order: 127.0.0.1 is `0100007F` on a little-endian host.
/// (Reading the 32 digits as one big-endian number, as the legacy C agent
/// did, scrambles every IPv6 address.)
pub fn parse_endpoint(s: &str) -> Option<(IpAddr, u16)> {
    let (addr, port) = s.split_once(':')?;
    if port.len() != 4 {
        return None;
    }
    let port = u16::from_str_radix(port, 16).ok()?;
    let word = |i: usize| -> Option<[u8; 4]> {
        let hex = addr.get(8 * i..8 * i + 8)?;
        Some(u32::from_str_radix(hex, 16).ok()?.to_ne_bytes())
    };
    let ip = match addr.len() {
        8 => IpAddr::V4(Ipv4Addr::from(word(0)?)),
        32 => {
            let mut b = [0u8; 16];
            for i in 0..4 {
                b[4 * i..4 * i + 4].copy_from_slice(&word(i)?);
            }
            IpAddr::V6(Ipv6Addr::from(b))
        }
        _ => return None,
    };
    Some((ip, port))
}

/// The inode of a /proc/<pid>/fd link that is a socket: `socket:[12345]`.
pub fn socket_inode(link: &[u8]) -> Option<u64> {
    let digits = link.strip_prefix(b"socket:[")?.strip_suffix(b"]")?;
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// What the owner choice and the record need from /proc/<pid>/status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Status {
    /// Real uid (first of `Uid:`), as the kernel program reads `cred->uid`.
    pub uid: u32,
    pub ppid: u32,
}

pub fn parse_status(text: &str) -> Option<Status> {
    let field = |name: &str| {
        text.lines().find_map(|l| l.strip_prefix(name)).and_then(|v| v.split_whitespace().next()?.parse().ok())
    };
    Some(Status { uid: field("Uid:")?, ppid: field("PPid:")? })
}

/// The owner among the processes holding one listening socket: forked
/// servers (a master and its workers) all hold it, and the one that called
/// listen() is normally the ancestor. So: the holders whose parent does not
/// hold it, and of those the lowest pid. Deterministic, whatever order /proc
/// listed them in. `holders` is (pid, ppid).
pub fn choose_owner(holders: &[(u32, u32)]) -> Option<u32> {
    let holds = |pid: u32| holders.iter().any(|&(p, _)| p == pid);
    let eldest = holders.iter().filter(|&&(_, ppid)| !holds(ppid)).map(|&(p, _)| p).min();
    // A cycle of parents is impossible; the fallback only keeps this total.
    eldest.or_else(|| holders.iter().map(|&(p, _)| p).min())
}

/// The owner and its command line as the kernel program records them
/// (`current_owner` in agent-ebpf/src/net.rs): `comm` NUL-padded to 16
/// bytes (at most 15 characters, as TASK_COMM_LEN allows), the raw argv
/// bytes of /proc/<pid>/cmdline cut to `cmdline_max` (itself at most
/// CMDLINE_CAP). The process's start time is 0: a seeded owner's ARGV
/// entry is its own, apart from the one the kernel makes if the same
/// process opens a socket later.
pub fn kernel_owner(pid: u32, status: Status, comm: &[u8], cmdline: &[u8], cmdline_max: u32) -> (Owner, Argv) {
    let mut o = Owner::zeroed();
    o.process = ProcId { tgid: pid, _pad: 0, start_ns: 0 };
    o.uid = status.uid;
    let comm = comm.strip_suffix(b"\n").unwrap_or(comm);
    let n = comm.len().min(COMM_LEN - 1);
    o.comm[..n].copy_from_slice(&comm[..n]);
    let mut argv = Argv { len: 0, _pad: 0, bytes: [0; CMDLINE_CAP] };
    let n = cmdline.len().min(cmdline_max as usize).min(CMDLINE_CAP);
    argv.bytes[..n].copy_from_slice(&cmdline[..n]);
    argv.len = n as u32;
    (o, argv)
}

/// One entry per key. Listeners that share a key (SO_REUSEPORT groups, or
/// one port on several addresses) share one kernel entry too; the first
/// with a known owner is kept, else the first.
pub fn one_per_key<T>(found: Vec<(ListenKey, Option<T>)>) -> Vec<(ListenKey, Option<T>)> {
    let mut out: Vec<(ListenKey, Option<T>)> = Vec::with_capacity(found.len());
    let mut at: HashMap<ListenKey, usize> = HashMap::new();
    for (key, owner) in found {
        match at.get(&key) {
            Some(&i) => {
                if out[i].1.is_none() {
                    out[i].1 = owner;
                }
            }
            None => {
                at.insert(key, out.len());
                out.push((key, owner));
            }
        }
    }
    out
}

/// What one seeding did, for its log line.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SeedReport {
    /// Network namespaces whose TCP tables were read.
    pub namespaces: usize,
    /// Distinct listeners (namespace, family, port) found.
    pub listeners: usize,
    /// Written to the map with their owner.
    pub seeded: usize,
    /// Already in the map: the kernel saw them listen after the programs
    /// were attached, and its entry wins.
    pub known: usize,
    /// No owner found: a kernel socket (no file descriptor), every holder
    /// exited during the scan, lives in another PID namespace, or has a
    /// /proc/<pid>/fd the agent may not read.
    pub unattributed: usize,
    /// The map refused the entry (full, or another error).
    pub failed: usize,
    /// Processes whose /proc/<pid>/fd the agent was denied (without
    /// CAP_SYS_PTRACE: other users' processes, or ones with capabilities
    /// the agent lacks). Listeners they hold are among `unattributed`.
    pub denied: usize,
}

impl fmt::Display for SeedReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} TCP listeners open before the network collector started, in {} network namespaces: {} seeded \
             with their owner, {} already recorded by the kernel, {} with no owner found, {} not stored",
            self.listeners, self.namespaces, self.seeded, self.known, self.unattributed, self.failed
        )?;
        if self.denied > 0 {
            write!(f, "; /proc/PID/fd of {} processes was not readable", self.denied)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Lines as a 6.x kernel prints them (one LISTEN, one ESTABLISHED, one
    // SYN_RECV request with inode 0).
    const TCP: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:07E8 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1588 1 0000000010001c6b 100 0 0 10 0
   1: 0100007F:AE1F 0100007F:8AD6 06 00000000:00000000 03:000001F0 00000000     0        0 0 3 0000000013f1dd09
   2: 0100007F:0016 0100007F:8AD8 01 00000000:00000000 00:00000000 00000000  1000        0 4242 1 0000000010001c6b 20 4 30 10 -1
   3: 0100007F:1F90 0100007F:8AD9 03 00000000:00000000 01:00000064 00000000     0        0 0 1 0000000000000000
";
    const TCP6: &str = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000000000000:1C21 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 99887766 1 00000000a1b2c3d4 100 0 0 10 0
";

    #[test]
    fn only_listening_sockets_with_port_and_inode() {
        assert_eq!(parse_tcp_table(TCP), vec![Listener { port: 2024, inode: 1588 }]);
        assert_eq!(parse_tcp_table(TCP6), vec![Listener { port: 7201, inode: 99_887_766 }]);
        assert!(parse_tcp_table("").is_empty());
        // Cut short (a process that exited mid-read), or garbage: skipped.
        assert!(parse_tcp_table("   0: 00000000:07E8 00000000:0000 0A 00000000:00000000").is_empty());
        assert!(parse_tcp_table("   0: 00000000:ZZZZ 00000000:0000 0A 0:0 0:0 0 0 0 17 1").is_empty());
        assert!(parse_tcp_table("   0: 00000000:0050 00000000:0000 0A 0:0 0:0 0 0 0 0 1").is_empty(), "inode 0");
    }

    #[test]
    fn addresses_are_words_of_network_order_bytes() {
        let ep = |s| parse_endpoint(s).map(|(ip, port)| (ip.to_string(), port));
        assert_eq!(ep("0100007F:1F90"), Some(("127.0.0.1".into(), 8080)));
        // Copied from tcp6 on this (little-endian) machine: 2001:db8:1:2::abcd port 443.
        assert_eq!(ep("B80D01200200010000000000CDAB0000:01BB"), Some(("2001:db8:1:2::abcd".into(), 443)));
        assert_eq!(ep("0000000000000000FFFF00000100007F:20FB"), Some(("::ffff:127.0.0.1".into(), 8443)));
        assert_eq!(ep("00000000000000000000000001000000:0000"), Some(("::1".into(), 0)));
        for bad in ["0100007F", "0100007:1F90", "0100007F:1F9G", "0100007F:10000", "XX00007F:0050", "B80D0120:01BB0"] {
            assert_eq!(ep(bad), None, "{bad}");
        }
    }

    #[test]
    fn socket_lines_of_every_table() {
        let udp6 = " 6063: B80D01200200010000000000CDAB0000:9C41 B80D01200200010000000000CDAB0000:0223 01 \
                    00000000:00000000 00:00000000 00000000  1000        0 53931 2 000000000121a406 0";
        let s = parse_socket_line(udp6).unwrap();
        assert_eq!((s.local.1, s.remote.1, s.state, s.uid, s.inode), (40001, 547, 1, 1000, 53931));
        assert_eq!(s.remote.0, "2001:db8:1:2::abcd".parse::<IpAddr>().unwrap());
        let raw =
            "  19: 00000000:0001 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 53932 2 0 0";
        assert_eq!(parse_socket_line(raw).unwrap().local.1, 1, "a raw socket's port is its protocol");
        assert_eq!(parse_socket_line(TCP.lines().next().unwrap()), None, "the header");
        assert_eq!(parse_socket_line("   0: 00000000:07E8 00000000:0000 0A 00000000:00000000"), None);
        assert_eq!(parse_socket_line("   0: 00000000:07E8 00000000:0000 0A 0:0 0:0 0 -1 0 17 1"), None, "uid");
    }

    #[test]
    fn socket_links() {
        assert_eq!(socket_inode(b"socket:[1588]"), Some(1588));
        assert_eq!(socket_inode(b"pipe:[1588]"), None);
        assert_eq!(socket_inode(b"/dev/null"), None);
        assert_eq!(socket_inode(b"socket:[]"), None);
        assert_eq!(socket_inode(b"socket:[12"), None);
        assert_eq!(socket_inode(b"anon_inode:[eventpoll]"), None);
    }

    #[test]
    fn status_gives_the_real_uid_and_the_parent() {
        let s = "Name:\tnginx\nUmask:\t0022\nState:\tS (sleeping)\nTgid:\t812\nNgid:\t0\nPid:\t812\nPPid:\t1\n\
                 TracerPid:\t0\nUid:\t33\t0\t0\t0\nGid:\t33\t33\t33\t33\n";
        assert_eq!(parse_status(s), Some(Status { uid: 33, ppid: 1 }));
        assert_eq!(parse_status("Name:\tx\nPPid:\t1\n"), None, "no Uid line");
        assert_eq!(parse_status(""), None);
    }

    #[test]
    fn the_eldest_holder_owns_the_listener() {
        // A master (100, child of init) and its workers.
        assert_eq!(choose_owner(&[(104, 100), (100, 1), (101, 100)]), Some(100));
        // pids wrapped around: the master has the higher pid, still the owner.
        assert_eq!(choose_owner(&[(5, 32000), (32000, 1), (6, 32000)]), Some(32000));
        // Two unrelated processes (a socket passed over a unix socket): the lower pid.
        assert_eq!(choose_owner(&[(300, 1), (200, 2)]), Some(200));
        // Only some workers visible (the master exited mid-scan): the lowest.
        assert_eq!(choose_owner(&[(105, 100), (103, 100)]), Some(103));
        assert_eq!(choose_owner(&[]), None);
        // Order does not matter.
        assert_eq!(choose_owner(&[(101, 100), (100, 1)]), choose_owner(&[(100, 1), (101, 100)]));
    }

    #[test]
    fn owner_matches_what_the_kernel_records() {
        let st = Status { uid: 1000, ppid: 1 };
        let (o, a) = kernel_owner(42, st, b"python3\n", b"python3\0-m\0http.server\0", 256);
        assert_eq!((o.process, o.uid, a.len), (ProcId { tgid: 42, _pad: 0, start_ns: 0 }, 1000, 23));
        assert_eq!(&o.comm, b"python3\0\0\0\0\0\0\0\0\0");
        assert_eq!(&a.bytes[..23], b"python3\0-m\0http.server\0");
        assert!(a.bytes[23..].iter().all(|&b| b == 0));
        // Cut to the configured maximum, raw bytes (NULs included).
        let (_, a) = kernel_owner(42, st, b"x\n", b"python3\0-m\0http.server\0", 10);
        assert_eq!(&a.bytes[..a.len as usize], b"python3\0-m");
        // Never past CMDLINE_CAP; comm at most 15 bytes and NUL-terminated.
        let long = vec![b'a'; 2 * CMDLINE_CAP];
        let (o, a) = kernel_owner(1, st, b"abcdefghijklmnopqrstuvwxyz", &long, u32::MAX);
        assert_eq!(a.len as usize, CMDLINE_CAP);
        assert_eq!(&o.comm, b"abcdefghijklmno\0");
        // A kernel thread or a zombie: empty command line.
        assert_eq!(kernel_owner(2, st, b"kthreadd\n", b"", 256).1.len, 0);
    }

    #[test]
    fn the_report_names_every_count() {
        let r = SeedReport { namespaces: 2, listeners: 9, seeded: 5, known: 1, unattributed: 3, failed: 0, denied: 0 };
        let line = r.to_string();
        assert!(line.starts_with("9 TCP listeners open before the network collector started, in 2 network"), "{line}");
        assert!(line.ends_with(
            "5 seeded with their owner, 1 already recorded by the kernel, 3 with no owner found, 0 not stored"
        ));
        let r = SeedReport { denied: 4, ..r };
        assert!(r.to_string().ends_with("; /proc/PID/fd of 4 processes was not readable"));
    }

    #[test]
    fn one_entry_per_key_preferring_a_known_owner() {
        let k = |port| ListenKey { netns: 1, family: 10, port };
        let v4 = ListenKey { netns: 1, family: 2, port: 80 };
        let other_ns = ListenKey { netns: 2, family: 10, port: 80 };
        let found = vec![(k(80), None), (v4, Some("a")), (k(80), Some("b")), (k(80), Some("c")), (other_ns, None)];
        assert_eq!(one_per_key(found), vec![(k(80), Some("b")), (v4, Some("a")), (other_ns, None)]);
    }
}
