//! Privileged: the user-space collectors' shared machinery in the real
//! agent: Diagnostic events from its own warnings, and the snapshot command.
use std::{path::PathBuf, process::Command, time::Duration};

use serde_json::Value;
use tests::{hitcount_bin, marker, payloads, privileged, Agent};

fn config_file(content: &str) -> PathBuf {
    let p = std::env::temp_dir().join(format!("{}.json", marker("collectors-config")));
    std::fs::write(&p, content).unwrap();
    p
}

/// Warnings logged by the agent whose message names `m`.
fn diagnostics_naming<'a>(events: &'a [Value], m: &str) -> Vec<&'a Value> {
    payloads(events, "Diagnostic")
        .into_iter()
        .filter(|p| p["message"].as_str().is_some_and(|s| s.contains(m)))
        .collect()
}

#[test]
fn diagnostic_events_follow_their_priority() {
    if !privileged("diagnostic_events_follow_their_priority") {
        return;
    }
    // The agent warns at start that it cannot read this passwd file.
    let m = marker("diag");
    let missing = format!("/nonexistent/{m}");
    let on = config_file(r#"{"eventPriorityDiagnostic":"High","eventPriorityConnectionCreate":"Off"}"#);
    let agent = Agent::start(&["--interval", "PT2S", "--passwd", &missing, "--config", on.to_str().unwrap()]).unwrap();
    std::thread::sleep(Duration::from_secs(3));
    let events = agent.stop().unwrap();
    let mine = diagnostics_naming(&events, &m);
    assert_eq!(mine.len(), 1, "one record for one warning: {mine:?}");
    assert_eq!(mine[0]["severity"], "Warning");
    assert_eq!(mine[0]["hit_count"], 1);
    assert_eq!(mine[0]["target"], "hitcount");
    assert!(mine[0]["timestamp"].is_string());
    let stats: Vec<&Value> = payloads(&events, "DroppedEventsStatistics")
        .into_iter()
        .filter(|s| s["source_event_type"] == "Diagnostic")
        .collect();
    assert!(stats.len() >= 2, "one per window, zeros included: {stats:?}");
    let sent: u64 = payloads(&events, "Diagnostic").iter().map(|p| p["hit_count"].as_u64().unwrap()).sum();
    let seen: u64 = stats.iter().map(|s| s["events_seen"].as_u64().unwrap()).sum();
    let dropped: u64 = stats.iter().map(|s| s["dropped_events"].as_u64().unwrap()).sum();
    assert_eq!(sent + dropped, seen, "every diagnostic is accounted for");

    // Off, the default: the same warning is logged, and is no event.
    let off = config_file(r#"{"eventPriorityConnectionCreate":"Off"}"#);
    let agent = Agent::start(&["--interval", "PT2S", "--passwd", &missing, "--config", off.to_str().unwrap()]).unwrap();
    std::thread::sleep(Duration::from_secs(3));
    let logs = agent.stderr();
    let events = agent.stop().unwrap();
    assert!(logs.iter().any(|l| l.contains(&m)), "the warning is still logged: {logs:?}");
    assert!(payloads(&events, "Diagnostic").is_empty());
    assert!(!payloads(&events, "DroppedEventsStatistics").iter().any(|s| s["source_event_type"] == "Diagnostic"));
    let _ = std::fs::remove_file(on);
    let _ = std::fs::remove_file(off);
}

#[test]
fn snapshot_command_refuses_unknown_and_non_snapshot_types() {
    if !privileged("snapshot_command_refuses_unknown_and_non_snapshot_types") {
        return;
    }
    for (only, expect) in
        [("Bogus", "unknown event type \"Bogus\""), ("ProcessCreate", "ProcessCreate is not a snapshot")]
    {
        let out = Command::new(hitcount_bin()).args(["snapshot", "--only", only]).output().unwrap();
        assert_eq!(out.status.code(), Some(1), "{out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(expect), "{err}");
    }
}

/// snapshotDeltas end to end. A consumer that applies every LocalUsers
/// snapshot to its own copy (a full one replaces it, a delta's changes are
/// applied) holds, after each, the set whose digest the agent reports
/// (sha256sum as the oracle), and in the end the host's users: one added
/// and one removed while the agent ran.
#[test]
fn deltas_rebuild_the_set_whose_digest_the_agent_reports() {
    if !privileged("deltas_rebuild_the_set_whose_digest_the_agent_reports") {
        return;
    }
    let root = std::env::temp_dir().join(marker("deltas-root"));
    std::fs::create_dir_all(root.join("etc")).unwrap();
    let user = |name: &str, id: u32| format!("{name}:x:{id}:{id}:{name}:/home/{name}:/bin/sh\n");
    let passwd = |users: &[(&str, u32)]| {
        // Replaced whole (rename), as useradd does: never read half-written.
        let tmp = root.join("etc/passwd.new");
        std::fs::write(&tmp, users.iter().map(|(n, i)| user(n, *i)).collect::<String>()).unwrap();
        std::fs::rename(&tmp, root.join("etc/passwd")).unwrap();
    };
    passwd(&[("alice", 1001), ("bob", 1002)]);
    // The malformed line makes every LocalUsers snapshot log a warning
    // naming /etc/group: the test counts them to know a snapshot was taken.
    std::fs::write(root.join("etc/group"), "alice:x:1001:\nbob:x:1002:\nbroken\n").unwrap();
    let config = config_file(r#"{"snapshotFrequency":"PT1S","snapshotDeltas":true,"snapshotFullEvery":1000}"#);
    let agent = Agent::start(&[
        "--interval",
        "PT1S",
        "--host-root",
        root.to_str().unwrap(),
        "--config",
        config.to_str().unwrap(),
    ])
    .unwrap();
    let taken = || agent.stderr().iter().filter(|l| l.contains("LocalUsers: cannot read /etc/group")).count();
    let after_next_snapshot = |seen: usize| {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while taken() <= seen {
            assert!(std::time::Instant::now() < deadline, "no LocalUsers snapshot in 60 s: {:?}", agent.stderr());
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    after_next_snapshot(0);
    passwd(&[("alice", 1001), ("bob", 1002), ("carol", 1003)]);
    after_next_snapshot(taken());
    passwd(&[("bob", 1002), ("carol", 1003)]);
    after_next_snapshot(taken());
    // One more, so that the last change is not only in the last snapshot.
    after_next_snapshot(taken());
    let events = agent.stop().unwrap();

    let mut snapshots: Vec<&Value> = events.iter().filter(|e| e["event_type"] == "LocalUsers").collect();
    snapshots.sort_by_key(|e| e["snapshot"]["sequence"].as_u64().unwrap());
    let mut set: std::collections::BTreeMap<String, Value> = Default::default();
    let mut modes = Vec::new();
    let mut changes = Vec::new();
    let mut i = 0;
    while i < snapshots.len() {
        let info = &snapshots[i]["snapshot"];
        let sequence = info["sequence"].as_u64().unwrap();
        let these: Vec<&Value> =
            snapshots[i..].iter().copied().take_while(|e| e["snapshot"]["sequence"] == sequence).collect();
        i += these.len();
        assert_eq!(these.len() as u64, info["events"].as_u64().unwrap(), "snapshot {sequence}: {these:?}");
        modes.push(info["mode"].as_str().unwrap().to_string());
        if info["mode"] == "full" {
            set.clear();
        }
        for e in these {
            let payload = &e["payload"];
            if payload.is_null() {
                continue;
            }
            let name = payload["user_name"].as_str().unwrap().to_string();
            match e["snapshot"]["change"].as_str() {
                Some("removed") => {
                    assert_eq!(set.remove(&name).as_ref(), Some(payload), "a removal carries the last payload sent");
                    changes.push(format!("removed {name}"));
                }
                Some(c) => {
                    changes.push(format!("{c} {name}"));
                    set.insert(name, payload.clone());
                }
                None => {
                    set.insert(name, payload.clone());
                }
            }
        }
        assert_eq!(set.len() as u64, info["items"].as_u64().unwrap(), "snapshot {sequence}");
        assert_eq!(info["digest"].as_str().unwrap(), sha256_of_set(&set), "snapshot {sequence}: {set:?}");
        assert_eq!(info["failed_sources"][0]["source"], "/etc/group");
    }
    assert!(modes.len() >= 4, "{modes:?}");
    assert_eq!(modes[0], "full");
    assert!(modes[1..].iter().all(|m| m == "delta"), "snapshotFullEvery 1000: {modes:?}");
    assert_eq!(changes, ["added carol", "removed alice"]);
    assert_eq!(set.keys().collect::<Vec<_>>(), ["bob", "carol"]);
    let _ = std::fs::remove_dir_all(&root);
    let _ = std::fs::remove_file(config);
}

/// The snapshot digest (README, Snapshots) computed by sha256sum: for each
/// item by identity, the identity, a NUL, the payload as compact JSON with
/// sorted keys (serde_json's map is sorted), a newline.
fn sha256_of_set(set: &std::collections::BTreeMap<String, Value>) -> String {
    use std::io::Write;
    let mut input = Vec::new();
    for (k, v) in set {
        input.extend_from_slice(k.as_bytes());
        input.push(0);
        input.extend_from_slice(serde_json::to_string(v).unwrap().as_bytes());
        input.push(b'\n');
    }
    let mut child = Command::new("sha256sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(&input).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap().split_whitespace().next().unwrap().to_string()
}
