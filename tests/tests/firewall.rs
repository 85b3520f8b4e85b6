//! Privileged: FirewallConfiguration against real rules in a network
//! namespace the test creates, nftables (including iptables-nft) and the
//! legacy x_tables side by side; `nft -j list ruleset` is the oracle of the
//! nftables part, rule for rule.
use std::{
    collections::BTreeMap,
    os::unix::fs::MetadataExt,
    process::{Command, Stdio},
};

use serde_json::{json, Value};
use tests::{hitcount_bin, marker, privileged, BareNetns};

/// The test's namespace: a failed command fails the test.
struct Netns(BareNetns);

impl Netns {
    fn new() -> Netns {
        Netns(BareNetns::new("fw").expect("a test namespace"))
    }

    fn inode(&self) -> u64 {
        self.0.inode()
    }

    fn run(&self, cmd: &[&str]) -> String {
        self.0.run(cmd).unwrap()
    }

    fn sh(&self, script: &str) {
        for line in script.lines().map(str::trim).filter(|l| !l.is_empty()) {
            self.run(&["sh", "-c", line]);
        }
    }
}

/// The payloads of one FirewallConfiguration snapshot, after checking that
/// no source failed.
fn rules_of(lines: &str) -> Vec<Value> {
    let events: Vec<Value> = lines.lines().map(|l| serde_json::from_str(l).expect("JSON line")).collect();
    let fw: Vec<&Value> = events.iter().filter(|e| e["event_type"] == "FirewallConfiguration").collect();
    assert!(!fw.is_empty(), "no FirewallConfiguration event: {lines}");
    for e in &fw {
        assert_eq!(e["snapshot"]["failed_sources"], json!([]), "{e}");
    }
    fw.iter().filter(|e| !e["payload"].is_null()).map(|e| e["payload"].clone()).collect()
}

fn snapshot_in(ns: &Netns) -> Vec<Value> {
    rules_of(&ns.run(&[hitcount_bin().to_str().unwrap(), "snapshot", "--only", "FirewallConfiguration"]))
}

/// The one rule matching every `(field, value)`; fails unless exactly one.
fn one<'a>(rules: &'a [Value], want: &[(&str, Value)]) -> &'a Value {
    let found: Vec<&Value> = rules.iter().filter(|r| want.iter().all(|(k, v)| r[*k] == *v)).collect();
    assert_eq!(found.len(), 1, "rules with {want:?}: {found:#?}");
    found[0]
}

const SETUP: &str = r#"
    nft add table inet hc
    nft add chain inet hc input '{ type filter hook input priority 0; policy drop; }'
    nft add chain inet hc web
    nft add set inet hc webports '{ type inet_service; }'
    nft add element inet hc webports '{ 80, 443, 8443 }'
    nft add rule inet hc input ip saddr 10.250.0.0/24 tcp dport 2222 accept
    nft add rule inet hc input tcp dport @webports counter jump web
    nft add rule inet hc input iifname "veth*" ct state established,related accept
    nft add rule inet hc web ip6 saddr fd00::/8 udp sport 1000-2000 drop
    nft add rule inet hc web tcp dport '{ 22, 8000-8080 }' log accept
    iptables-nft -A INPUT -p udp --dport 53 -j ACCEPT
    iptables-legacy -A INPUT -s 10.9.8.7 -p tcp --dport 22 -j DROP
    iptables-legacy -N HCUSER
    iptables-legacy -A HCUSER -m conntrack --ctstate NEW -j ACCEPT
    iptables-legacy -A INPUT -p tcp -m multiport --dports 80,443 -j HCUSER
    iptables-legacy -P FORWARD DROP
    ip6tables-legacy -A INPUT -s 2001:db8::/32 -p udp --dport 123 -j ACCEPT
"#;

/// Fields the oracle's JSON says a rule has, the way the collector writes them.
fn oracle_value(right: &Value) -> String {
    match right {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Array(a) => a.iter().map(oracle_value).collect::<Vec<_>>().join(","),
        Value::Object(o) => {
            if let Some(p) = o.get("prefix") {
                format!("{}/{}", p["addr"].as_str().unwrap(), p["len"])
            } else if let Some(r) = o.get("range") {
                format!("{}-{}", oracle_value(&r[0]), oracle_value(&r[1]))
            } else if let Some(s) = o.get("set") {
                let items: Vec<String> = s.as_array().unwrap().iter().map(oracle_value).collect();
                format!("{{{}}}", items.join(", "))
            } else {
                panic!("oracle value not handled by this test: {right}")
            }
        }
        other => panic!("oracle value not handled by this test: {other}"),
    }
}

/// One `nft -j` rule as the fields the collector must report for it.
fn oracle_fields(rule: &Value) -> BTreeMap<String, Value> {
    let mut f = BTreeMap::new();
    for k in ["protocol", "source_address", "destination_address", "source_port", "destination_port"] {
        f.insert(k.to_string(), Value::Null);
    }
    f.insert("in".into(), Value::Null);
    f.insert("conntrack_state".into(), Value::Null);
    f.insert("counted".into(), json!(false));
    f.insert("verdict".into(), json!("continue"));
    for e in rule["expr"].as_array().unwrap() {
        if let Some(m) = e.get("match") {
            let (left, right) = (&m["left"], &m["right"]);
            let neg = if m["op"] == "!=" { "!" } else { "" };
            let v = json!(format!("{neg}{}", oracle_value(right)));
            if let Some(p) = left.get("payload") {
                let (proto, field) = (p["protocol"].as_str().unwrap(), p["field"].as_str().unwrap());
                let key = match field {
                    "saddr" => "source_address",
                    "daddr" => "destination_address",
                    "sport" => "source_port",
                    "dport" => "destination_port",
                    other => panic!("payload field {other}"),
                };
                if proto == "tcp" || proto == "udp" {
                    f.insert("protocol".into(), json!(proto));
                }
                f.insert(key.into(), v);
            } else if left["meta"]["key"] == "iifname" {
                // nft shows a wildcard as "veth*", as the collector does.
                f.insert("in".into(), v);
            } else if left["ct"]["key"] == "state" {
                f.insert("conntrack_state".into(), json!(oracle_value(right)));
            } else {
                panic!("oracle match not handled by this test: {m}");
            }
        } else if e.get("counter").is_some() {
            f.insert("counted".into(), json!(true));
        } else if let Some(j) = e.get("jump") {
            f.insert("verdict".into(), json!(format!("jump {}", j["target"].as_str().unwrap())));
        } else if e.get("log").is_some() {
        } else {
            let (k, _) = e.as_object().unwrap().iter().next().unwrap();
            f.insert("verdict".into(), json!(k));
        }
    }
    f
}

fn collected_fields(r: &Value) -> BTreeMap<String, Value> {
    let mut f = BTreeMap::new();
    for k in [
        "protocol",
        "source_address",
        "destination_address",
        "source_port",
        "destination_port",
        "conntrack_state",
        "verdict",
    ] {
        f.insert(k.to_string(), r[k].clone());
    }
    f.insert("in".into(), r["interfaces"]["in"].clone());
    f.insert("counted".into(), json!(!r["counters"].is_null()));
    f
}

/// The oracle and the collector agree on every nftables chain, rule for
/// rule, and on every base chain's policy.
fn agrees_with_nft(ns: &Netns, rules: &[Value]) {
    let oracle: Value = serde_json::from_str(&ns.run(&["nft", "-j", "list", "ruleset"])).unwrap();
    let items = oracle["nftables"].as_array().unwrap();
    let mut chains = 0;
    for c in items.iter().filter_map(|i| i.get("chain")) {
        chains += 1;
        let same_chain = |r: &&Value| {
            r["backend"] == "nftables"
                && r["family"] == c["family"]
                && r["table"] == c["table"]
                && r["chain_name"] == c["name"]
        };
        let mut mine: Vec<&Value> = rules.iter().filter(same_chain).filter(|r| r["is_policy"] == false).collect();
        mine.sort_by_key(|r| r["priority"].as_u64());
        let theirs: Vec<&Value> = items
            .iter()
            .filter_map(|i| i.get("rule"))
            .filter(|r| r["family"] == c["family"] && r["table"] == c["table"] && r["chain"] == c["name"])
            .collect();
        assert_eq!(mine.len(), theirs.len(), "rules of chain {c}: {mine:#?}");
        for (n, (m, t)) in mine.iter().zip(&theirs).enumerate() {
            assert_eq!(m["priority"], n as u64 + 1);
            assert_eq!(collected_fields(m), oracle_fields(t), "rule {n} of {c}: oracle {t}");
        }
        let policies: Vec<&Value> = rules.iter().filter(same_chain).filter(|r| r["is_policy"] == true).collect();
        match c.get("policy") {
            Some(p) => {
                assert_eq!(policies.len(), 1, "policy of {c}");
                assert_eq!(policies[0]["verdict"], *p);
                assert_eq!(policies[0]["priority"], theirs.len() as u64 + 1, "the policy is last in its chain");
                assert_eq!(policies[0]["hook"], c["hook"]);
                assert_eq!(policies[0]["chain_priority"], c["prio"]);
            }
            None => assert!(policies.is_empty(), "a user chain has no policy: {policies:?}"),
        }
    }
    let nft_chains =
        rules.iter().filter(|r| r["backend"] == "nftables").map(|r| (&r["family"], &r["table"], &r["chain_name"]));
    let distinct: std::collections::BTreeSet<String> = nft_chains.map(|(a, b, c)| format!("{a}/{b}/{c}")).collect();
    assert_eq!(distinct.len(), chains, "no nftables chain the oracle does not list (empty user chains aside)");
}

#[test]
fn firewall_rules_of_every_backend_and_their_policies() {
    if !privileged("firewall_rules_of_every_backend_and_their_policies") {
        return;
    }
    let ns = Netns::new();
    ns.sh(SETUP);
    let rules = snapshot_in(&ns);
    for r in &rules {
        assert_eq!(r["netns"], ns.inode(), "{r}");
        assert_eq!(r["enabled"], true);
    }

    // The inet table: a drop policy, TCP 2222 from 10.250.0.0/24, a named set, a jump.
    let accept_2222 = one(&rules, &[("backend", json!("nftables")), ("destination_port", json!("2222"))]);
    for (k, v) in [
        ("family", json!("inet")),
        ("table", json!("hc")),
        ("chain_name", json!("input")),
        ("hook", json!("input")),
        ("direction", json!("In")),
        ("chain_priority", json!(0)),
        ("priority", json!(1)),
        ("protocol", json!("tcp")),
        ("source_address", json!("10.250.0.0/24")),
        ("action", json!("Allow")),
        ("verdict", json!("accept")),
        ("is_policy", json!(false)),
        ("unparsed", json!([])),
    ] {
        assert_eq!(accept_2222[k], v, "{k} of {accept_2222}");
    }
    let policy = one(&rules, &[("table", json!("hc")), ("chain_name", json!("input")), ("is_policy", json!(true))]);
    assert_eq!(
        (&policy["verdict"], &policy["action"], &policy["priority"]),
        (&json!("drop"), &json!("Deny"), &json!(4))
    );
    let jump = one(&rules, &[("destination_port", json!("@webports"))]);
    assert_eq!((&jump["verdict"], &jump["action"]), (&json!("jump web"), &json!("Other")));
    assert_eq!(jump["counters"], json!({"packets": 0, "bytes": 0}));
    let in_web = one(&rules, &[("chain_name", json!("web")), ("source_port", json!("1000-2000"))]);
    assert_eq!(
        (&in_web["source_address"], &in_web["hook"], &in_web["direction"]),
        (&json!("fd00::/8"), &Value::Null, &Value::Null)
    );
    let logged = one(&rules, &[("chain_name", json!("web")), ("destination_port", json!("{22, 8000-8080}"))]);
    assert_eq!(logged["unparsed"], json!(["log"]), "an expression not mapped is named, and the rule kept");

    // iptables-nft: an nftables rule in the ip filter table.
    let dns = one(&rules, &[("destination_port", json!("53"))]);
    assert_eq!((&dns["backend"], &dns["family"], &dns["table"]), (&json!("nftables"), &json!("ip"), &json!("filter")));
    assert_eq!(
        (&dns["protocol"], &dns["verdict"], &dns["chain_name"]),
        (&json!("udp"), &json!("accept"), &json!("INPUT"))
    );

    // iptables-legacy: only this collector and iptables-legacy-save see it.
    let ssh = one(&rules, &[("backend", json!("iptables-legacy")), ("destination_port", json!("22"))]);
    for (k, v) in [
        ("family", json!("ip")),
        ("table", json!("filter")),
        ("chain_name", json!("INPUT")),
        ("priority", json!(1)),
        ("protocol", json!("tcp")),
        ("source_address", json!("10.9.8.7")),
        ("action", json!("Deny")),
        ("verdict", json!("drop")),
        ("counters", json!({"packets": 0, "bytes": 0})),
    ] {
        assert_eq!(ssh[k], v, "{k} of {ssh}");
    }
    let to_user = one(&rules, &[("backend", json!("iptables-legacy")), ("destination_port", json!("{80, 443}"))]);
    assert_eq!(to_user["verdict"], "jump HCUSER");
    let user = one(&rules, &[("backend", json!("iptables-legacy")), ("chain_name", json!("HCUSER"))]);
    assert_eq!(
        (&user["conntrack_state"], &user["verdict"], &user["hook"]),
        (&json!("new"), &json!("accept"), &Value::Null)
    );
    let fwd = one(&rules, &[("backend", json!("iptables-legacy")), ("chain_name", json!("FORWARD"))]);
    assert_eq!((&fwd["is_policy"], &fwd["verdict"]), (&json!(true), &json!("drop")));
    let ntp = one(&rules, &[("backend", json!("ip6tables-legacy")), ("is_policy", json!(false))]);
    assert_eq!(
        (&ntp["source_address"], &ntp["protocol"], &ntp["destination_port"]),
        (&json!("2001:db8::/32"), &json!("udp"), &json!("123"))
    );
    assert_eq!(ntp["family"], "ip6");
    // Every legacy base chain's policy: INPUT, FORWARD, OUTPUT, for v4 and v6.
    for backend in ["iptables-legacy", "ip6tables-legacy"] {
        for chain in ["INPUT", "FORWARD", "OUTPUT"] {
            one(&rules, &[("backend", json!(backend)), ("chain_name", json!(chain)), ("is_policy", json!(true))]);
        }
    }
    let legacy_save = ns.run(&["iptables-legacy-save"]);
    let legacy_rules = legacy_save.lines().filter(|l| l.starts_with("-A ")).count();
    let legacy_mine = rules.iter().filter(|r| r["backend"] == "iptables-legacy" && r["is_policy"] == false).count();
    assert_eq!(legacy_mine, legacy_rules, "every iptables-legacy-save rule: {legacy_save}");

    agrees_with_nft(&ns, &rules);

    // Flushing every rule leaves the policies alone, each now first in its chain.
    let policies: Vec<Value> = rules.iter().filter(|r| r["is_policy"] == true).cloned().collect();
    ns.sh("nft flush table inet hc\niptables-nft -F\niptables-legacy -F\nip6tables-legacy -F");
    let after = snapshot_in(&ns);
    assert!(after.iter().all(|r| r["is_policy"] == true), "only policies are left: {after:#?}");
    let key =
        |r: &Value| format!("{}/{}/{}/{}/{}", r["backend"], r["family"], r["table"], r["chain_name"], r["verdict"]);
    let mut before: Vec<String> = policies.iter().map(key).collect();
    let mut now: Vec<String> = after.iter().map(key).collect();
    before.sort();
    now.sort();
    assert_eq!(now, before);
    assert!(after.iter().all(|r| r["priority"] == 1 && r["counters"].is_null() == (r["backend"] == "nftables")));
}

#[test]
fn every_namespace_with_firewall_all_namespaces() {
    if !privileged("every_namespace_with_firewall_all_namespaces") {
        return;
    }
    let ns = Netns::new();
    ns.sh("iptables-legacy -A INPUT -p tcp --dport 2323 -j REJECT");
    // A namespace is found through a process in it.
    let mut holder = ns.0.command(&["sleep", "30"]).stdout(Stdio::null()).spawn().expect("a process in the namespace");
    std::thread::sleep(std::time::Duration::from_millis(300));
    let cfg = std::env::temp_dir().join(format!("{}.json", marker("fw-all")));
    let run = |content: &str| {
        std::fs::write(&cfg, content).unwrap();
        let out = Command::new(hitcount_bin())
            .args(["snapshot", "--only", "FirewallConfiguration", "--config", cfg.to_str().unwrap()])
            .output()
            .expect("hitcount snapshot");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        rules_of(&String::from_utf8_lossy(&out.stdout))
    };
    let all = run(r#"{"firewallAllNamespaces":true}"#);
    let own = run(r#"{}"#);
    let _ = holder.kill();
    let _ = holder.wait();
    let _ = std::fs::remove_file(&cfg);
    let reject = one(&all, &[("destination_port", json!("2323"))]);
    assert_eq!(
        (&reject["netns"], &reject["verdict"], &reject["action"]),
        (&json!(ns.inode()), &json!("reject"), &json!("Deny"))
    );
    let mine = std::fs::metadata("/proc/self/ns/net").unwrap().ino();
    assert!(own.iter().all(|r| r["netns"] == mine), "by default only the agent's own namespace");
    let own_in_all = all.iter().filter(|r| r["netns"] == mine).count();
    assert_eq!(own_in_all, own.len(), "the agent's own namespace is one of all");
}
