//! Privileged: the inventory snapshots (ListeningPorts, LocalUsers) of the
//! real machine, taken with `hitcount snapshot --only TYPE`, against what
//! the kernel and the system's own tools report (`ss`, /proc, `id`,
//! `getent`).
use std::{
    collections::{BTreeMap, BTreeSet},
    net::{TcpListener, TcpStream, UdpSocket},
    process::Command,
};

use serde_json::Value;
use tests::{helper_bin, marker, own_netns, privileged, run, NetNs, Peer};

/// One snapshot of `only`: (payloads, the snapshot object of its first event).
fn snapshot(only: &str) -> (Vec<Value>, Value) {
    let out = Command::new(tests::hitcount_bin()).args(["snapshot", "--only", only]).output().unwrap();
    assert!(out.status.success(), "hitcount snapshot --only {only}: {out:?}");
    let events: Vec<Value> =
        String::from_utf8(out.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let mine: Vec<&Value> = events.iter().filter(|e| e["event_type"] == only).collect();
    assert!(!mine.is_empty(), "a snapshot always sends an event: {events:?}");
    let info = mine[0]["snapshot"].clone();
    let payloads: Vec<Value> = mine.iter().map(|e| e["payload"].clone()).filter(|p| !p.is_null()).collect();
    assert_eq!(info["items"].as_u64(), Some(payloads.len() as u64), "a full snapshot sends every item");
    (payloads, info)
}

/// A port nobody uses now, for `proto` on loopback.
fn free_port(udp: bool) -> u16 {
    if udp {
        UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
    } else {
        TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
    }
}

fn netns_of(pid: u32) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(format!("/proc/{pid}/ns/net")).unwrap().ino()
}

/// The ListeningPorts payloads of one socket.
fn sockets<'a>(ports: &'a [Value], netns: u64, proto: &str, addr: &str, port: u16) -> Vec<&'a Value> {
    ports
        .iter()
        .filter(|p| {
            p["netns"] == netns
                && p["transport_protocol"] == proto
                && p["local_address"] == addr
                && p["local_port"] == port
        })
        .collect()
}

/// A listener of `ss -H -l -n -t -u -p`: (protocol, address, port) and
/// the pids holding it.
type SsSocket = ((String, String, u16), BTreeSet<u32>);

/// `ss`'s listeners, run in namespace `ns` (None: this one).
fn ss(ns: Option<&str>) -> Vec<SsSocket> {
    let mut cmd = match ns {
        Some(name) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", name, "ss"]);
            c
        }
        None => Command::new("ss"),
    };
    let out = cmd.args(["-H", "-l", "-n", "-t", "-u", "-p"]).output().unwrap();
    assert!(out.status.success(), "ss: {out:?}");
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let (addr, port) = f[4].rsplit_once(':').unwrap();
            // `[::1]`, `127.0.0.1%lo` (bound to a device), `*` (IPv6 any, dual stack).
            let addr = addr.trim_start_matches('[').trim_end_matches(']');
            let addr = addr.split('%').next().unwrap();
            let addr = if addr == "*" { "::" } else { addr };
            let pids = l.split("pid=").skip(1).map(|s| s.split(',').next().unwrap().parse().unwrap()).collect();
            ((f[0].to_uppercase(), addr.to_string(), port.parse().unwrap()), pids)
        })
        .collect()
}

/// Checks the snapshot's TCP and UDP listeners of `netns` against `ss`
/// run before and after it: every socket in both runs is reported once per
/// time ss lists it, owned by one of the processes ss names (none when ss
/// names none), and nothing is reported that neither run listed. Other
/// engineers' processes may open and close sockets meanwhile; only those
/// can differ.
fn assert_matches_ss(ports: &[Value], netns: u64, before: &[SsSocket], after: &[SsSocket]) {
    let count = |list: &[SsSocket]| {
        let mut m: BTreeMap<(String, String, u16), usize> = BTreeMap::new();
        for (k, _) in list {
            *m.entry(k.clone()).or_default() += 1;
        }
        m
    };
    let (b, a) = (count(before), count(after));
    let mut mine: BTreeMap<(String, String, u16), Vec<&Value>> = BTreeMap::new();
    for p in ports.iter().filter(|p| p["netns"] == netns && p["transport_protocol"] != "RAW") {
        let key = (
            p["transport_protocol"].as_str().unwrap().to_string(),
            p["local_address"].as_str().unwrap().to_string(),
            p["local_port"].as_u64().unwrap() as u16,
        );
        mine.entry(key).or_default().push(p);
    }
    for (key, n) in &b {
        if a.get(key) == Some(n) {
            assert_eq!(mine.get(key).map_or(0, Vec::len), *n, "{key:?}: ss lists it {n} times, before and after");
            let holders: BTreeSet<u32> =
                before.iter().chain(after).filter(|(k, _)| k == key).flat_map(|(_, p)| p.clone()).collect();
            for p in &mine[key] {
                let pid = p["process_id"].as_u64().unwrap() as u32;
                if holders.is_empty() {
                    assert_eq!(pid, 0, "{key:?}: ss knows no owner: {p}");
                } else {
                    assert!(holders.contains(&pid), "{key:?}: owner {pid} is not among ss's {holders:?}");
                }
            }
        }
    }
    for (key, got) in &mine {
        let most = b.get(key).copied().unwrap_or(0).max(a.get(key).copied().unwrap_or(0));
        assert!(got.len() <= most, "{key:?}: reported {} times, ss listed it at most {most}: {got:?}", got.len());
    }
}

/// The owner fields of a socket held by the helper `pid`, started as `args`.
fn assert_owned_by(p: &Value, pid: u32, args: &[&str], netns: u64) {
    let exe = helper_bin("net-peer");
    assert_eq!(p["process_id"], pid, "{p}");
    assert_eq!(p["uid"], 0, "{p}");
    assert_eq!(p["commandline"], format!("{} {}", exe.display(), args.join(" ")), "{p}");
    let real_exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap();
    assert_eq!(p["executable"], real_exe.to_str().unwrap(), "{p}");
    assert_eq!(p["netns"], netns, "{p}");
    assert_eq!((&p["remote_port"], &p["raw_protocol"]), (&Value::from(0), &Value::Null), "{p}");
}

#[test]
fn listeners_of_both_namespaces_appear_with_their_owners_and_connected_sockets_do_not() {
    if !privileged("listeners_of_both_namespaces_appear_with_their_owners_and_connected_sockets_do_not") {
        return;
    }
    let tag = marker("inventory-ports");
    let here = own_netns();
    let (t4, t6, u4, u6) = (free_port(false), free_port(false), free_port(true), free_port(true));
    let (t4s, t6s, u4s, u6s) = (t4.to_string(), t6.to_string(), u4.to_string(), u6.to_string());
    let args_t4 = ["tcp-server", "127.0.0.1", &t4s, "0", &tag];
    let args_t6 = ["tcp-server", "::1", &t6s, "0", &tag];
    let args_u4 = ["udp-server", "127.0.0.1", &u4s];
    let args_u6 = ["udp-server", "::1", &u6s];
    let peers: Vec<Peer> =
        [&args_t4[..], &args_t6, &args_u4, &args_u6].iter().map(|a| Peer::spawn(a).unwrap()).collect();
    let mut ns = NetNs::new(41).unwrap();
    let (nt, nu) = ("7411".to_string(), "7412".to_string());
    let args_nt = ["tcp-server", "0.0.0.0", &nt, "0", &tag];
    let args_nu = ["udp-server", "::", &nu];
    let in_ns_tcp = ns.spawn(&args_nt).unwrap();
    let in_ns_udp = ns.spawn(&args_nu).unwrap();
    let ns_inode = netns_of(in_ns_tcp);
    assert_eq!(ns_inode, ns.inode());
    assert_ne!(ns_inode, here);

    // Connected sockets of this process: a TCP client (its peer, the
    // accepted socket, is established too) and a connected UDP socket.
    let client = TcpStream::connect(("127.0.0.1", t4)).unwrap();
    let connected = UdpSocket::bind("127.0.0.1:0").unwrap();
    connected.connect(("127.0.0.1", u4)).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(100)); // the server accepts

    let (ss_here, ss_ns) = (ss(None), ss(Some(&ns.name)));
    let (ports, info) = snapshot("ListeningPorts");
    let (ss_here_after, ss_ns_after) = (ss(None), ss(Some(&ns.name)));

    for (proto, addr, port, args, pid, netns) in [
        ("TCP", "127.0.0.1", t4, &args_t4[..], peers[0].pid(), here),
        ("TCP", "::1", t6, &args_t6, peers[1].pid(), here),
        ("UDP", "127.0.0.1", u4, &args_u4, peers[2].pid(), here),
        ("UDP", "::1", u6, &args_u6, peers[3].pid(), here),
        ("TCP", "0.0.0.0", 7411, &args_nt, in_ns_tcp, ns_inode),
        ("UDP", "::", 7412, &args_nu, in_ns_udp, ns_inode),
    ] {
        let found = sockets(&ports, netns, proto, addr, port);
        assert_eq!(found.len(), 1, "{proto} {addr}:{port} in {netns}: {found:?}");
        assert_owned_by(found[0], pid, args, netns);
    }
    let in_ns: Vec<&Value> = ports.iter().filter(|p| p["netns"] == ns_inode).collect();
    assert_eq!(in_ns.len(), 2, "the test namespace has these two listeners only: {in_ns:?}");
    // Nothing of the connected sockets: no socket on their local ports.
    for port in [client.local_addr().unwrap().port(), connected.local_addr().unwrap().port()] {
        let on: Vec<&Value> = ports.iter().filter(|p| p["netns"] == here && p["local_port"] == port).collect();
        assert!(on.is_empty(), "connected socket on port {port} reported: {on:?}");
    }
    // The accepted socket shares the listener's port, but is not listed.
    assert_eq!(sockets(&ports, here, "TCP", "127.0.0.1", t4).len(), 1);

    assert_matches_ss(&ports, here, &ss_here, &ss_here_after);
    assert_matches_ss(&ports, ns_inode, &ss_ns, &ss_ns_after);
    // Every failure names what could not be read (this machine's PID 1 hides its fds even from root).
    for f in info["failed_sources"].as_array().unwrap() {
        assert_eq!(f["source"], "/proc/PID/fd", "{f}");
    }
    drop(peers);
}

/// Removes the test's user and groups however the test ends.
struct UserGuard {
    user: String,
    groups: Vec<String>,
}

impl Drop for UserGuard {
    fn drop(&mut self) {
        let _ = run(Command::new("userdel").arg(&self.user));
        for g in &self.groups {
            let _ = run(Command::new("groupdel").arg(g));
        }
    }
}

fn ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

fn user<'a>(users: &'a [Value], name: &str) -> Option<&'a Value> {
    users.iter().find(|u| u["user_name"] == name)
}

#[test]
fn a_user_created_with_useradd_appears_with_its_groups_and_goes_with_userdel() {
    if !privileged("a_user_created_with_useradd_appears_with_its_groups_and_goes_with_userdel") {
        return;
    }
    // useradd takes at most 32 characters: a shorter unique name than marker's.
    let m = marker("u");
    let id = m.rsplit('-').take(2).collect::<Vec<_>>().join("");
    let name = format!("hcu{}{}", std::process::id() % 100_000, &id[id.len().saturating_sub(8)..]);
    let extra = format!("{name}g");
    let _guard = UserGuard { user: name.clone(), groups: vec![extra.clone(), name.clone()] };
    ok(Command::new("groupadd").arg(&extra));
    ok(Command::new("useradd").args(["-M", "-U", "-s", "/bin/sh", "-c", "Inventory Test,,,", &name]));
    ok(Command::new("usermod").args(["-a", "-G", &extra, &name]));

    let (users, info) = snapshot("LocalUsers");
    assert_eq!(info["failed_sources"], serde_json::json!([]), "root reads passwd, group and shadow");
    let u = user(&users, &name).unwrap_or_else(|| panic!("{name} not in the snapshot"));
    let uid: u64 = ok(Command::new("id").args(["-u", &name])).parse().unwrap();
    let gid: u64 = ok(Command::new("id").args(["-g", &name])).parse().unwrap();
    // `id -G` and `-Gn`: primary first, then the rest (in getgrouplist's order).
    let gids: Vec<u64> = ok(Command::new("id").args(["-G", &name])).split(' ').map(|g| g.parse().unwrap()).collect();
    let gnames: Vec<String> = ok(Command::new("id").args(["-Gn", &name])).split(' ').map(String::from).collect();
    let mut expected: Vec<(u64, String)> = gids.iter().copied().zip(gnames).collect();
    expected[1..].sort();
    assert_eq!(expected.len(), 2, "its own group and {extra}: {expected:?}");
    let got: Vec<(u64, String)> = u["group_ids"]
        .as_array()
        .unwrap()
        .iter()
        .zip(u["group_names"].as_array().unwrap())
        .map(|(g, n)| (g.as_u64().unwrap(), n.as_str().unwrap().to_string()))
        .collect();
    assert_eq!(got, expected);
    assert_eq!((u["user_id"].as_u64(), u["primary_group_id"].as_u64()), (Some(uid), Some(gid)));
    let pw: Vec<String> = ok(Command::new("getent").args(["passwd", &name])).split(':').map(String::from).collect();
    assert_eq!(
        (&u["gecos"], &u["home"], &u["shell"]),
        (&Value::from(pw[4].clone()), &Value::from(pw[5].clone()), &Value::from(pw[6].clone()))
    );
    assert_eq!(u["login_shell"], true);
    let sp: Vec<String> = ok(Command::new("getent").args(["shadow", &name])).split(':').map(String::from).collect();
    assert_eq!(sp[1], "!", "useradd leaves the password unset");
    assert_eq!(u["password"], "none");
    assert_eq!(u["password_last_change"].as_u64(), Some(sp[2].parse().unwrap()));

    // A hash, then the same hash locked.
    let hash =
        "$6$inventorysalt$4Y8Kp5yq0m3VvOq3kXJ1rD2y7Yb6Z5Xl0k9b3pQ5cJ6gW1uQmA8eS0oR7tN2lH4fV9dC3xB6zE1wL5jK8hG2s.";
    ok(Command::new("usermod").args(["-p", hash, &name]));
    assert_eq!(user(&snapshot("LocalUsers").0, &name).unwrap()["password"], "set");
    ok(Command::new("usermod").args(["-L", &name]));
    assert_eq!(ok(Command::new("getent").args(["shadow", &name])).split(':').nth(1).unwrap(), format!("!{hash}"));
    assert_eq!(user(&snapshot("LocalUsers").0, &name).unwrap()["password"], "locked");

    ok(Command::new("userdel").arg(&name));
    let (users, _) = snapshot("LocalUsers");
    assert!(user(&users, &name).is_none(), "{name} is gone after userdel");
    assert!(user(&users, "root").is_some());
    // The remaining set is what getent lists from the files.
    let listed: BTreeSet<String> = ok(Command::new("getent").args(["-s", "files", "passwd"]))
        .lines()
        .filter_map(|l| l.split(':').next().map(String::from))
        .collect();
    let reported: BTreeSet<String> = users.iter().map(|u| u["user_name"].as_str().unwrap().to_string()).collect();
    assert_eq!(reported, listed);
}
