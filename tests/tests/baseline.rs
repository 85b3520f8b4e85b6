//! Privileged: the OSBaseline collector on this machine's real kernel,
//! through `hitcount snapshot --only OSBaseline`, with sysctl(8) as the
//! oracle of what the kernel holds: the ICMP redirect check follows the four
//! accept_redirects keys as sysctl sets them, and the configuration removes
//! checks and groups, or refuses names it does not know.
use std::{path::PathBuf, process::Command};

use serde_json::Value;
use tests::{hitcount_bin, marker, payloads, privileged};

const REDIRECTS: [&str; 4] = [
    "net.ipv4.conf.all.accept_redirects",
    "net.ipv4.conf.default.accept_redirects",
    "net.ipv6.conf.all.accept_redirects",
    "net.ipv6.conf.default.accept_redirects",
];

fn sysctl_get(key: &str) -> String {
    let out = Command::new("sysctl").args(["-n", key]).output().unwrap();
    assert!(out.status.success(), "sysctl -n {key}: {out:?}");
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

fn sysctl_set(key: &str, value: &str) {
    let out = Command::new("sysctl").args(["-w", &format!("{key}={value}")]).output().unwrap();
    assert!(out.status.success(), "sysctl -w {key}={value}: {out:?}");
    assert_eq!(sysctl_get(key), value, "{key} as sysctl reads it back");
}

/// The four keys' values at the start, written back on drop, also when an
/// assertion failed (this machine boots with all four at 1).
struct Saved(Vec<(&'static str, String)>);

impl Saved {
    fn take() -> Saved {
        Saved(REDIRECTS.iter().map(|k| (*k, sysctl_get(k))).collect())
    }
}

impl Drop for Saved {
    fn drop(&mut self) {
        for (k, v) in &self.0 {
            let _ = Command::new("sysctl").args(["-w", &format!("{k}={v}")]).output();
        }
    }
}

fn config_file(content: &str) -> PathBuf {
    let p = std::env::temp_dir().join(format!("{}.json", marker("baseline-config")));
    std::fs::write(&p, content).unwrap();
    p
}

/// One `hitcount snapshot --only OSBaseline` with an optional configuration:
/// the findings.
fn findings(config: Option<&str>) -> Vec<Value> {
    let mut cmd = Command::new(hitcount_bin());
    cmd.args(["snapshot", "--only", "OSBaseline"]);
    let file = config.map(config_file);
    if let Some(f) = &file {
        cmd.arg("--config").arg(f);
    }
    let out = cmd.output().unwrap();
    if let Some(f) = file {
        let _ = std::fs::remove_file(f);
    }
    assert!(out.status.success(), "hitcount snapshot: {out:?}");
    let events: Vec<Value> =
        String::from_utf8(out.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let found: Vec<Value> = payloads(&events, "OSBaseline").into_iter().filter(|p| !p.is_null()).cloned().collect();
    let info = &events.iter().find(|e| e["event_type"] == "OSBaseline").expect("a snapshot event")["snapshot"];
    assert_eq!(info["items"].as_u64(), Some(found.len() as u64), "a full snapshot sends every finding");
    found
}

/// Findings whose evidence names an accept_redirects key.
fn about_redirects(found: &[Value]) -> Vec<&Value> {
    found.iter().filter(|p| p["reason"].as_str().is_some_and(|r| r.contains("accept_redirects"))).collect()
}

#[test]
fn accept_redirects_fail_exactly_when_sysctl_sets_one_and_name_that_key() {
    if !privileged("accept_redirects_fail_exactly_when_sysctl_sets_one_and_name_that_key") {
        return;
    }
    let _saved = Saved::take();
    for k in REDIRECTS {
        sysctl_set(k, "0");
    }
    let found = findings(None);
    assert_eq!(about_redirects(&found), Vec::<&Value>::new(), "all four at 0");
    assert!(found.iter().all(|p| p["cis_number"] != "3.3.5"));

    sysctl_set("net.ipv4.conf.all.accept_redirects", "1");
    let found = findings(None);
    let hits = about_redirects(&found);
    assert_eq!(hits.len(), 1, "{hits:?}");
    let p = hits[0];
    assert_eq!(p["check_result"], "Fail");
    assert_eq!(p["cis_number"], "3.3.5");
    assert_eq!(p["group"], "NetworkParameters");
    assert_eq!(p["severity"], "Important");
    assert!(p["check_id"].as_str().unwrap().ends_with("-NetworkParameters-3.3.5"), "{p}");
    assert_eq!(
        p["reason"],
        "net.ipv4.conf.all.accept_redirects = 1 (/proc/sys/net/ipv4/conf/all/accept_redirects), expected 0"
    );

    // The same with the check, then its group, disabled: its event is gone
    // and nothing else changes.
    let ids = |f: &[Value]| f.iter().map(|p| p["check_id"].as_str().unwrap().to_string()).collect::<Vec<_>>();
    let all = ids(&found);
    let without_check = ids(&findings(Some(r#"{"baselineChecksDisabled":["3.3.5"]}"#)));
    let expected: Vec<String> = all.iter().filter(|i| !i.ends_with("-3.3.5")).cloned().collect();
    assert_eq!(without_check, expected);
    let without_group = ids(&findings(Some(r#"{"baselineGroupsDisabled":["NetworkParameters"]}"#)));
    let expected: Vec<String> = all.iter().filter(|i| !i.contains("-NetworkParameters-")).cloned().collect();
    assert_eq!(without_group, expected);
    assert!(without_group.len() < without_check.len(), "this machine fails other network checks too: {all:?}");
}

#[test]
fn an_unknown_group_name_is_refused_naming_it() {
    if !privileged("an_unknown_group_name_is_refused_naming_it") {
        return;
    }
    let f = config_file(r#"{"baselineGroupsDisabled":["NetworkParameters","NoSuchGroup"]}"#);
    let out =
        Command::new(hitcount_bin()).args(["snapshot", "--only", "OSBaseline", "--config"]).arg(&f).output().unwrap();
    let _ = std::fs::remove_file(&f);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(out.stdout.is_empty(), "nothing collected with a refused configuration");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("baselineGroupsDisabled: unknown groups: \"NoSuchGroup\""), "{stderr}");
}
