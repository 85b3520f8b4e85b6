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
