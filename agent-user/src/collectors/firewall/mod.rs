//! FirewallConfiguration: every rule the kernel enforces, one event per rule
//! and one per base chain's policy (the last rule of its chain). Both rule
//! stores of a network namespace are read from the kernel itself, as no
//! `nft` or `iptables` binary exists in a FROM scratch image: nf_tables over
//! netlink ([`nftables`]) and the legacy x_tables through getsockopt
//! ([`xtables`]), because each tool shows only its own rules.
//!
//! The parsers are pure functions on the kernel's bytes
//! ([`nftables::parse_dump`], [`xtables::parse_ipv4_table`],
//! [`xtables::parse_ipv6_table`]); the socket code only fetches those bytes.
use std::os::fd::{AsRawFd, OwnedFd};

use serde::Serialize;

use super::{Context, Snapshot, Taken};
use crate::events::EventType;

pub mod nftables;
pub mod xtables;

/// Rules reported in one snapshot, over every namespace and backend; past
/// it the rules are counted in a source failure, not held in memory.
pub const MAX_RULES: usize = 65_536;
/// Network namespaces read with `firewallAllNamespaces`.
pub const MAX_NAMESPACES: usize = 4096;

/// One rule, or one base chain's policy. The legacy agent's fields first.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FirewallRule {
    /// False when the kernel holds the rule but does not apply it (an
    /// nftables table marked dormant).
    pub enabled: bool,
    /// Position in its chain, from 1; a policy comes after the last rule.
    pub priority: u32,
    pub chain_name: String,
    /// In for input hooks, Out for output hooks, null otherwise.
    pub direction: Option<&'static str>,
    /// Allow (accept), Deny (drop, reject) or Other.
    pub action: &'static str,
    pub protocol: Option<String>,
    pub source_address: Option<String>,
    pub source_port: Option<String>,
    pub destination_address: Option<String>,
    pub destination_port: Option<String>,
    /// nftables | iptables-legacy | ip6tables-legacy
    pub backend: &'static str,
    /// nftables family names: ip, ip6, inet, arp, bridge, netdev.
    pub family: String,
    pub table: String,
    /// The base chain's hook (input, output, forward, prerouting,
    /// postrouting, ingress, egress); null for a user chain.
    pub hook: Option<String>,
    pub chain_priority: Option<i32>,
    pub is_policy: bool,
    /// The raw verdict: accept, drop, reject, return, continue, jump X, ...
    pub verdict: String,
    pub interfaces: Interfaces,
    /// Conntrack states matched (established,related), `!` when negated.
    pub conntrack_state: Option<String>,
    pub counters: Option<Counters>,
    /// The expressions (nftables) or matches (x_tables) not mapped to a
    /// field, by name: the rule is reported all the same.
    pub unparsed: Vec<String>,
    /// Inode of the network namespace the rule lives in.
    pub netns: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Interfaces {
    #[serde(rename = "in")]
    pub input: Option<String>,
    #[serde(rename = "out")]
    pub output: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Counters {
    pub packets: u64,
    pub bytes: u64,
}

/// What a rule's matches and verdict came to, before the chain's context
/// (table, hook, position) is added. Both backends fill one.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Fields {
    pub protocol: Option<String>,
    pub source_address: Option<String>,
    pub source_port: Option<String>,
    pub destination_address: Option<String>,
    pub destination_port: Option<String>,
    pub interfaces: Interfaces,
    pub conntrack_state: Option<String>,
    pub counters: Option<Counters>,
    /// None: the rule falls through (continue).
    pub verdict: Option<String>,
    pub unparsed: Vec<String>,
}

/// Where a rule sits: what every rule of one chain shares.
#[derive(Debug, Clone, PartialEq)]
pub struct ChainInfo {
    pub backend: &'static str,
    pub family: String,
    pub table: String,
    pub chain: String,
    pub hook: Option<String>,
    pub chain_priority: Option<i32>,
    pub enabled: bool,
}

/// The legacy agent's three actions, from the raw verdict.
pub fn action(verdict: &str) -> &'static str {
    match verdict {
        "accept" => "Allow",
        "drop" | "reject" => "Deny",
        _ => "Other",
    }
}

pub fn direction(hook: Option<&str>) -> Option<&'static str> {
    match hook {
        Some("input") => Some("In"),
        Some("output") => Some("Out"),
        _ => None,
    }
}

/// Names of conntrack state bits, shared by nftables (`ct state`) and
/// x_tables (`state`, `conntrack`): include/uapi/linux/netfilter/nf_conntrack_common.h.
pub fn ct_states(mask: u32) -> String {
    const NAMES: [(u32, &str); 5] = [(1, "invalid"), (2, "established"), (4, "related"), (8, "new"), (64, "untracked")];
    let mut names: Vec<String> = NAMES.iter().filter(|(b, _)| mask & b != 0).map(|(_, n)| (*n).to_string()).collect();
    let rest = mask & !NAMES.iter().map(|(b, _)| b).sum::<u32>();
    if rest != 0 {
        names.push(format!("0x{rest:x}"));
    }
    names.join(",")
}

/// IP protocol numbers as nft and iptables name them.
pub fn protocol_name(p: u8) -> String {
    match p {
        1 => "icmp".into(),
        2 => "igmp".into(),
        6 => "tcp".into(),
        17 => "udp".into(),
        33 => "dccp".into(),
        47 => "gre".into(),
        50 => "esp".into(),
        51 => "ah".into(),
        58 => "ipv6-icmp".into(),
        132 => "sctp".into(),
        136 => "udplite".into(),
        n => n.to_string(),
    }
}

impl ChainInfo {
    fn rule(&self, priority: u32, f: Fields, netns: u64) -> FirewallRule {
        let verdict = f.verdict.unwrap_or_else(|| "continue".into());
        FirewallRule {
            enabled: self.enabled,
            priority,
            chain_name: self.chain.clone(),
            direction: direction(self.hook.as_deref()),
            action: action(&verdict),
            protocol: f.protocol,
            source_address: f.source_address,
            source_port: f.source_port,
            destination_address: f.destination_address,
            destination_port: f.destination_port,
            backend: self.backend,
            family: self.family.clone(),
            table: self.table.clone(),
            hook: self.hook.clone(),
            chain_priority: self.chain_priority,
            is_policy: false,
            verdict,
            interfaces: f.interfaces,
            conntrack_state: f.conntrack_state,
            counters: f.counters,
            unparsed: f.unparsed,
            netns,
        }
    }
}

/// One chain as a backend read it: its rules in order, its policy if it is
/// a base chain.
#[derive(Debug, Clone, PartialEq)]
pub struct ChainRules {
    pub info: ChainInfo,
    /// Each rule's identity within the chain (an nftables handle, an
    /// x_tables position) and its fields.
    pub rules: Vec<(u64, Fields)>,
    pub policy: Option<(String, Option<Counters>)>,
}

/// Every backend's reading of one namespace.
#[derive(Debug, Default)]
pub struct Reading {
    pub chains: Vec<ChainRules>,
    pub failures: Vec<(String, String)>,
}

/// Turns chains into events, stopping at [`MAX_RULES`] and counting the rest.
fn emit(taken: &mut Taken, reading: Reading, netns: u64, budget: &mut usize, past: &mut usize) {
    for (source, reason) in reading.failures {
        taken.fail(format!("{source} (netns {netns})"), reason);
    }
    for c in reading.chains {
        let i = &c.info;
        let base = format!("{netns}/{}/{}/{}/{}", i.backend, i.family, i.table, i.chain);
        let n = c.rules.len() as u32;
        for (pos, (id, fields)) in c.rules.into_iter().enumerate() {
            if *budget == 0 {
                *past += 1;
                continue;
            }
            *budget -= 1;
            taken.push(format!("{base}/{id}"), &i.rule(pos as u32 + 1, fields, netns));
        }
        if let Some((verdict, counters)) = c.policy {
            if *budget == 0 {
                *past += 1;
                continue;
            }
            *budget -= 1;
            let fields = Fields { verdict: Some(verdict), counters, ..Fields::default() };
            let mut rule = i.rule(n + 1, fields, netns);
            rule.is_policy = true;
            taken.push(format!("{base}/policy"), &rule);
        }
    }
}

/// Reads both backends in the calling thread's network namespace.
pub fn read_here() -> Reading {
    let mut r = Reading::default();
    nftables::read(&mut r);
    xtables::read(&mut r);
    r
}

/// Inode of the calling thread's network namespace.
fn own_netns() -> std::io::Result<u64> {
    use std::os::unix::fs::MetadataExt;
    // thread-self, not self: a namespace entered by setns is per thread.
    Ok(std::fs::metadata("/proc/thread-self/ns/net")?.ino())
}

/// The distinct network namespaces of the host's processes, by inode,
/// each with a path that opens it.
fn namespaces(cx: &Context<'_>, taken: &mut Taken) -> Vec<(u64, std::path::PathBuf)> {
    let mut found: Vec<(u64, std::path::PathBuf)> = Vec::new();
    let pids = match cx.host.read_dir("/proc") {
        Ok(p) => p,
        Err(e) => {
            taken.fail_host(&e);
            return found;
        }
    };
    for pid in pids.iter().filter(|p| p.bytes().all(|b| b.is_ascii_digit())) {
        let link = format!("/proc/{pid}/ns/net");
        // Processes come and go: one that ended is not a failure.
        let Ok(target) = cx.host.read_link(&link) else { continue };
        let Some(ino) = parse_ns_link(&target.to_string_lossy()) else { continue };
        if found.iter().any(|(i, _)| *i == ino) {
            continue;
        }
        if found.len() == MAX_NAMESPACES {
            taken.fail("/proc/*/ns/net", format!("more than {MAX_NAMESPACES} network namespaces; the rest not read"));
            break;
        }
        if let Ok(path) = cx.host.resolve(&link) {
            found.push((ino, path));
        }
    }
    found
}

/// `net:[4026531840]` -> 4026531840
fn parse_ns_link(s: &str) -> Option<u64> {
    s.strip_prefix("net:[")?.strip_suffix(']')?.parse().ok()
}

fn setns(fd: &OwnedFd) -> std::io::Result<()> {
    // SAFETY: fd is an open namespace file; setns changes only this thread.
    if unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Reads every namespace on a thread of its own, so the agent's other
/// threads never leave their namespace; the thread enters each in turn.
fn read_all(list: Vec<(u64, std::path::PathBuf)>) -> Vec<(u64, Result<Reading, String>)> {
    let worker = std::thread::Builder::new().name("hitcount-netns".into()).spawn(move || {
        let home = std::fs::File::open("/proc/thread-self/ns/net").map(OwnedFd::from);
        let mut out = Vec::new();
        for (ino, path) in list {
            let entered = std::fs::File::open(&path).map(OwnedFd::from).and_then(|fd| setns(&fd));
            match entered {
                Ok(()) => out.push((ino, Ok(read_here()))),
                Err(e) => out.push((ino, Err(format!("cannot enter {}: {e}", path.display())))),
            }
        }
        // The thread ends here anyway; going back keeps it harmless if it
        // is ever reused.
        if let Ok(home) = home {
            let _ = setns(&home);
        }
        out
    });
    match worker {
        Ok(h) => h.join().unwrap_or_default(),
        Err(e) => vec![(0, Err(format!("cannot start the namespace thread: {e}")))],
    }
}

pub struct FirewallConfiguration;

impl Snapshot for FirewallConfiguration {
    fn event_type(&self) -> EventType {
        EventType::FirewallConfiguration
    }

    fn take(&mut self, cx: &Context<'_>) -> Taken {
        let mut taken = Taken::default();
        let (mut budget, mut past) = (MAX_RULES, 0);
        if cx.config.firewall_all_namespaces {
            for (ino, r) in read_all(namespaces(cx, &mut taken)) {
                match r {
                    Ok(reading) => emit(&mut taken, reading, ino, &mut budget, &mut past),
                    Err(e) => taken.fail(format!("netns {ino}"), e),
                }
            }
        } else {
            let ino = match own_netns() {
                Ok(i) => i,
                Err(e) => {
                    taken.fail("/proc/thread-self/ns/net", e);
                    0
                }
            };
            emit(&mut taken, read_here(), ino, &mut budget, &mut past);
        }
        if past > 0 {
            taken.fail(
                "firewall rules",
                format!("{past} rules past the bound of {MAX_RULES} per snapshot not reported"),
            );
        }
        taken
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespace_links_and_names() {
        assert_eq!(parse_ns_link("net:[4026531840]"), Some(4026531840));
        assert_eq!(parse_ns_link("mnt:[4026531840]"), None);
        assert_eq!(parse_ns_link("net:[x]"), None);
        assert_eq!(ct_states(6), "established,related");
        assert_eq!(ct_states(8 | 256), "new,0x100");
        assert_eq!(action("accept"), "Allow");
        assert_eq!(action("reject"), "Deny");
        assert_eq!(action("jump x"), "Other");
    }

    #[test]
    fn the_rule_bound_counts_what_lies_past_it() {
        let info = ChainInfo {
            backend: "nftables",
            family: "inet".into(),
            table: "t".into(),
            chain: "input".into(),
            hook: Some("input".into()),
            chain_priority: Some(0),
            enabled: true,
        };
        let rules = (0..5).map(|h| (h, Fields::default())).collect();
        let chain = ChainRules { info, rules, policy: Some(("drop".into(), None)) };
        let mut taken = Taken::default();
        let (mut budget, mut past) = (4, 0);
        emit(&mut taken, Reading { chains: vec![chain], failures: vec![] }, 7, &mut budget, &mut past);
        assert_eq!(taken.items.len(), 4);
        assert_eq!(past, 2, "one rule and the policy past the bound");
        assert_eq!(taken.items[0].payload["priority"], 1);
        assert_eq!(taken.items[0].payload["verdict"], "continue");
        assert_eq!(taken.items[0].payload["direction"], "In");
        assert_eq!(taken.items[0].key, "7/nftables/inet/t/input/0");
    }
}

/// Writes the fixtures of the unit tests from the kernel of the namespace
/// it runs in: `ip netns exec NS cargo test -p agent-user --lib
/// capture_firewall_fixtures -- --ignored` (as root, after loading the rules
/// of agent-user/fixtures/firewall/README.md).
#[cfg(test)]
#[test]
#[ignore]
fn capture_firewall_fixtures() {
    let dir = format!("{}/fixtures/firewall", env!("CARGO_MANIFEST_DIR"));
    let mut failures = Vec::new();
    let nft = nftables::fetch_ruleset(&mut failures).expect("nf_tables dump");
    assert!(failures.is_empty(), "{failures:?}");
    std::fs::write(format!("{dir}/nftables-ruleset.bin"), nft).unwrap();
    let v4 = xtables::fetch_table(xtables::Family::V4, "filter").expect("iptables filter");
    std::fs::write(format!("{dir}/iptables-filter.bin"), v4).unwrap();
    let v6 = xtables::fetch_table(xtables::Family::V6, "filter").expect("ip6tables filter");
    std::fs::write(format!("{dir}/ip6tables-filter.bin"), v6).unwrap();
}

#[cfg(test)]
mod fixture_tests {
    use super::*;

    fn fixture(name: &str) -> Vec<u8> {
        let p = format!("{}/fixtures/firewall/{name}", env!("CARGO_MANIFEST_DIR"));
        std::fs::read(&p).unwrap_or_else(|e| panic!("{p}: {e}"))
    }

    /// (chain, priority, protocol, source, source port, destination port,
    /// input interface, conntrack state, verdict, unparsed) of every rule.
    type Row = (
        String,
        u32,
        Option<String>,
        Option<String>,
        Option<String>,
        Option<String>,
        Option<String>,
        Option<String>,
        String,
        Vec<String>,
    );

    fn rows(chains: Vec<ChainRules>) -> Vec<Row> {
        let mut taken = Taken::default();
        emit(&mut taken, Reading { chains, failures: vec![] }, 1, &mut usize::MAX.clone(), &mut 0);
        let s = |v: &serde_json::Value| v.as_str().map(String::from);
        taken
            .items
            .iter()
            .map(|i| {
                let p = &i.payload;
                (
                    format!(
                        "{}/{}/{}",
                        p["family"].as_str().unwrap(),
                        p["table"].as_str().unwrap(),
                        p["chain_name"].as_str().unwrap()
                    ),
                    p["priority"].as_u64().unwrap() as u32,
                    s(&p["protocol"]),
                    s(&p["source_address"]).or(s(&p["destination_address"])),
                    s(&p["source_port"]),
                    s(&p["destination_port"]),
                    s(&p["interfaces"]["in"]),
                    s(&p["conntrack_state"]),
                    p["verdict"].as_str().unwrap().to_string(),
                    p["unparsed"].as_array().unwrap().iter().map(|u| u.as_str().unwrap().to_string()).collect(),
                )
            })
            .collect()
    }

    #[allow(clippy::too_many_arguments)]
    fn row(
        c: &str,
        n: u32,
        proto: Option<&str>,
        addr: Option<&str>,
        sport: Option<&str>,
        dport: Option<&str>,
        iif: Option<&str>,
        ct: Option<&str>,
        v: &str,
        unparsed: &[&str],
    ) -> Row {
        let o = |x: Option<&str>| x.map(String::from);
        (
            c.into(),
            n,
            o(proto),
            o(addr),
            o(sport),
            o(dport),
            o(iif),
            o(ct),
            v.into(),
            unparsed.iter().map(|u| u.to_string()).collect(),
        )
    }

    #[test]
    fn the_captured_nftables_ruleset_decodes_rule_for_rule() {
        let dump = nftables::parse_dump(&fixture("nftables-ruleset.bin")).unwrap();
        assert_eq!(dump.errors, vec![]);
        let n = None;
        assert_eq!(
            rows(nftables::chains(&dump.objects)),
            vec![
                row("inet/t/input", 1, Some("tcp"), Some("10.250.0.0/24"), n, Some("2222"), n, n, "accept", &[]),
                row("inet/t/input", 2, Some("tcp"), n, n, Some("@ports"), n, n, "accept", &[]),
                row("inet/t/input", 3, n, Some("fd00::/8"), n, n, n, n, "jump web", &[]),
                row("inet/t/input", 4, n, Some("10.1.2.0/23"), n, n, n, n, "reject", &[]),
                row("inet/t/input", 5, n, n, n, n, n, n, "drop", &[]),
                row(
                    "inet/t/web",
                    1,
                    Some("tcp"),
                    n,
                    n,
                    Some("{8080, 9000-9100}"),
                    n,
                    Some("established,related"),
                    "accept",
                    &[]
                ),
                row("inet/t/web", 2, Some("udp"), n, Some("1000-2000"), n, Some("eth*"), n, "drop", &["log"]),
                row("ip/filter/INPUT", 1, Some("udp"), n, n, Some("53"), n, n, "accept", &[]),
                row("ip/filter/INPUT", 2, n, n, n, n, n, n, "accept", &[]),
            ]
        );
    }

    #[test]
    fn the_captured_xtables_blobs_decode_rule_for_rule() {
        let v4 = xtables::parse_ipv4_table(&fixture("iptables-filter.bin")).unwrap();
        assert_eq!(v4.name, "filter");
        let n = None;
        assert_eq!(
            rows(v4.chains),
            vec![
                row("ip/filter/INPUT", 1, Some("tcp"), Some("10.0.0.5"), n, Some("22"), n, n, "drop", &[]),
                row(
                    "ip/filter/INPUT",
                    2,
                    Some("tcp"),
                    n,
                    n,
                    Some("{80, 443, 1000-2000}"),
                    Some("eth+"),
                    n,
                    "jump LOGDROP",
                    &[]
                ),
                row("ip/filter/INPUT", 3, n, Some("10.0.0.1-10.0.0.9"), n, n, n, Some("established"), "accept", &[]),
                row("ip/filter/INPUT", 4, n, n, n, n, n, n, "accept", &[]),
                row("ip/filter/FORWARD", 1, n, n, n, n, n, n, "drop", &[]),
                row("ip/filter/OUTPUT", 1, n, n, n, n, n, n, "accept", &[]),
                row("ip/filter/LOGDROP", 1, n, n, n, n, n, Some("new"), "drop", &[]),
            ]
        );
        let v6 = xtables::parse_ipv6_table(&fixture("ip6tables-filter.bin")).unwrap();
        assert_eq!(
            rows(v6.chains),
            vec![
                row("ip6/filter/INPUT", 1, Some("udp"), Some("2001:db8::/32"), Some("123"), n, n, n, "accept", &[]),
                row("ip6/filter/INPUT", 2, n, n, n, n, n, n, "accept", &[]),
                row("ip6/filter/FORWARD", 1, n, n, n, n, n, n, "accept", &[]),
                row("ip6/filter/OUTPUT", 1, n, n, n, n, n, n, "accept", &[]),
            ]
        );
    }

    #[test]
    fn truncated_and_corrupted_dumps_never_panic_and_lose_only_their_part() {
        let full = fixture("nftables-ruleset.bin");
        let whole = nftables::parse_dump(&full).unwrap().objects.len();
        // Message boundaries: a cut there loses whole messages; anywhere
        // else the cut message is an error, never silently dropped.
        let mut bounds = vec![0];
        while *bounds.last().unwrap() < full.len() {
            let at = *bounds.last().unwrap();
            let len = u32::from_ne_bytes(full[at..at + 4].try_into().unwrap()) as usize;
            bounds.push(at + ((len + 3) & !3));
        }
        assert!(bounds.len() > 10, "the fixture holds many messages");
        for cut in 0..full.len() {
            let d = nftables::parse_dump(&full[..cut]).unwrap();
            assert!(d.objects.len() <= whole);
            assert_eq!(d.errors.is_empty(), bounds.contains(&cut), "cut at {cut}: {:?}", d.errors);
        }
        for i in 0..full.len() {
            let mut bad = full.clone();
            bad[i] ^= 0xff;
            if let Ok(d) = nftables::parse_dump(&bad) {
                let _ = nftables::chains(&d.objects);
            }
        }
    }

    #[test]
    fn truncated_and_corrupted_tables_are_refused_or_decoded_never_a_panic() {
        for (name, family) in
            [("iptables-filter.bin", xtables::Family::V4), ("ip6tables-filter.bin", xtables::Family::V6)]
        {
            let full = fixture(name);
            for cut in 0..full.len() {
                assert!(xtables::parse_table(family, &full[..cut]).is_err(), "{name} cut at {cut}");
            }
            for i in 0..full.len() {
                for x in [0xff, 0x01, 0x80] {
                    let mut bad = full.clone();
                    bad[i] ^= x;
                    let _ = xtables::parse_table(family, &bad);
                }
            }
        }
        // A next_offset that runs past the blob is an entry error.
        let mut bad = fixture("iptables-filter.bin");
        let at = xtables::GETINFO_LEN + xtables::GET_ENTRIES_HDR + 90;
        bad[at..at + 2].copy_from_slice(&0xfff8u16.to_ne_bytes());
        let e = xtables::parse_ipv4_table(&bad).unwrap_err();
        assert!(e.to_string().contains("next_offset 65528"), "{e}");
    }
}
