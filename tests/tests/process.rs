//! Privileged: the real programs in this kernel, real processes, exact counts.
use std::{
    os::unix::process::CommandExt,
    process::Command,
    time::{Duration, Instant},
};

use serde_json::Value;
use tests::{assert_windows_account_for_every_event, helper_bin, hits, marker, payloads, privileged, run, Agent};

const TEST_UID: u32 = 4242;

fn exec_true(marker: &str, uid: Option<u32>) {
    let mut cmd = Command::new("/bin/true");
    cmd.args([marker, "arg"]);
    if let Some(uid) = uid {
        cmd.uid(uid);
    }
    assert!(run(&mut cmd).unwrap().success());
}

#[test]
fn exec_hits_are_exact_per_command_line_and_uid() {
    if !privileged("exec_hits_are_exact_per_command_line_and_uid") {
        return;
    }
    let agent = Agent::start(&["--interval", "PT2S"]).unwrap();
    let m = marker("exec");
    for _ in 0..40 {
        exec_true(&m, Some(TEST_UID));
    }
    for _ in 0..10 {
        exec_true(&m, None);
    }
    let events = agent.stop().unwrap();
    let cmdline = format!("/bin/true {m} arg");
    let mine = |uid: u32| {
        let cmdline = cmdline.clone();
        move |p: &Value| p["commandline"] == cmdline.as_str() && p["uid"] == uid && p["type"] == "exec"
    };
    assert_eq!(hits(&events, "ProcessCreate", mine(TEST_UID)), 40);
    assert_eq!(hits(&events, "ProcessCreate", mine(0)), 10);
    let rec = payloads(&events, "ProcessCreate").into_iter().find(|p| mine(0)(p)).unwrap().clone();
    assert_eq!(rec["executable"], "/bin/true");
    assert_eq!(rec["user_name"], "root");
    assert_eq!(rec["truncated"], false);
    assert!(rec["process_id"].as_u64().unwrap() > 0);
    assert_eq!(rec["parent_process_id"], std::process::id(), "parent of the first occurrence is this test");
    assert_windows_account_for_every_event(&events, "ProcessCreate");
}

#[test]
fn forks_carry_the_parent_command_line() {
    if !privileged("forks_carry_the_parent_command_line") {
        return;
    }
    let agent = Agent::start(&["--interval", "PT2S"]).unwrap();
    let m = marker("fork");
    let forker = helper_bin("forker");
    assert!(run(Command::new(&forker).args([&m, "25", "0"])).unwrap().success());
    let events = agent.stop().unwrap();
    let cmdline = format!("{} {m} 25 0", forker.display());
    let of = |kind: &'static str| {
        let c = cmdline.clone();
        move |p: &Value| p["commandline"] == c.as_str() && p["type"] == kind
    };
    assert_eq!(hits(&events, "ProcessCreate", of("fork")), 25);
    assert_eq!(hits(&events, "ProcessCreate", of("exec")), 1);
    let fork = payloads(&events, "ProcessCreate").into_iter().find(|p| of("fork")(p)).unwrap().clone();
    assert_eq!(fork["executable"], forker.display().to_string(), "a forked child runs its parent's image");
    assert_windows_account_for_every_event(&events, "ProcessCreate");
}

#[test]
fn exits_aggregate_by_executable_and_status() {
    if !privileged("exits_aggregate_by_executable_and_status") {
        return;
    }
    let agent = Agent::start(&["--interval", "PT2S"]).unwrap();
    let forker = helper_bin("forker");
    assert!(run(Command::new(&forker).args([&marker("exit"), "12", "7"])).unwrap().success());
    assert!(run(Command::new(&forker).args([&marker("exit"), "5", "kill9"])).unwrap().success());
    let events = agent.stop().unwrap();
    let exe = forker.display().to_string();
    let with = |status: u64| {
        let exe = exe.clone();
        move |p: &Value| p["executable"] == exe.as_str() && p["exit_status"] == status
    };
    assert_eq!(hits(&events, "ProcessTerminate", with(7)), 12);
    assert_eq!(hits(&events, "ProcessTerminate", with(137)), 5);
    // The two forker parents themselves exit 0.
    assert_eq!(hits(&events, "ProcessTerminate", with(0)), 2);
    let killed = payloads(&events, "ProcessTerminate").into_iter().find(|p| with(137)(p)).unwrap().clone();
    assert_eq!(killed["signal"], 9);
    assert_windows_account_for_every_event(&events, "ProcessTerminate");
}

#[test]
fn long_command_lines_are_truncated_at_the_limit() {
    if !privileged("long_command_lines_are_truncated_at_the_limit") {
        return;
    }
    let agent = Agent::start(&["--interval", "PT2S", "--commandline-max-bytes", "64"]).unwrap();
    let m = marker("trunc");
    let long = "x".repeat(200);
    for _ in 0..3 {
        assert!(run(Command::new("/bin/true").args([&m, &long])).unwrap().success());
    }
    let short = marker("short");
    assert!(run(Command::new("/bin/true").arg(&short)).unwrap().success());
    let events = agent.stop().unwrap();
    let full = format!("/bin/true {m} {long}");
    let expected = &full[..64];
    let rec: Vec<_> = payloads(&events, "ProcessCreate").into_iter().filter(|p| p["commandline"] == expected).collect();
    assert!(!rec.is_empty(), "no record with the first 64 bytes of the command line");
    assert_eq!(rec.iter().map(|p| p["hit_count"].as_u64().unwrap()).sum::<u64>(), 3);
    assert!(rec.iter().all(|p| p["truncated"] == true));
    let short_rec = payloads(&events, "ProcessCreate")
        .into_iter()
        .find(|p| p["commandline"] == format!("/bin/true {short}"))
        .unwrap()
        .clone();
    assert_eq!(short_rec["truncated"], false);
}

#[test]
fn aggregation_off_reports_every_event_alone() {
    if !privileged("aggregation_off_reports_every_event_alone") {
        return;
    }
    let agent = Agent::start(&["--interval", "PT2S", "--no-aggregation", "--cache-size", "4096"]).unwrap();
    let m = marker("peragg");
    for _ in 0..7 {
        exec_true(&m, None);
    }
    let events = agent.stop().unwrap();
    let cmdline = format!("/bin/true {m} arg");
    let recs: Vec<_> =
        payloads(&events, "ProcessCreate").into_iter().filter(|p| p["commandline"] == cmdline.as_str()).collect();
    assert_eq!(recs.len(), 7);
    assert!(recs.iter().all(|p| p["hit_count"] == 1));
    let mut pids: Vec<_> = recs.iter().map(|p| p["process_id"].as_u64().unwrap()).collect();
    pids.sort();
    pids.dedup();
    assert_eq!(pids.len(), 7, "each record is one process");
}

#[test]
fn full_cache_discards_oldest_and_counts_every_lost_event() {
    if !privileged("full_cache_discards_oldest_and_counts_every_lost_event") {
        return;
    }
    // One window (PT1H, flushed by SIGTERM) with room for 8 records.
    let agent = Agent::start(&["--cache-size", "8"]).unwrap();
    let markers: Vec<String> = (0..30).map(|i| marker(&format!("full{i}"))).collect();
    for m in &markers {
        for _ in 0..3 {
            exec_true(m, None);
        }
    }
    let events = agent.stop().unwrap();
    assert!(payloads(&events, "ProcessCreate").iter().filter(|p| p["rollup"] != true).count() <= 8);
    // The newest records stay, the oldest gave way: what is left of the
    // markers is an unbroken run ending with the last one, 3 hits each.
    let kept: Vec<usize> = (0..30)
        .filter(|&i| {
            hits(&events, "ProcessCreate", |p| p["commandline"] == format!("/bin/true {} arg", markers[i])) > 0
        })
        .collect();
    assert!(!kept.is_empty() && kept.len() <= 8, "{kept:?}");
    assert_eq!(*kept.last().unwrap(), 29, "{kept:?}");
    assert_eq!(kept, (kept[0]..30).collect::<Vec<_>>(), "kept markers are not the newest run");
    for &i in &kept {
        assert_eq!(hits(&events, "ProcessCreate", |p| p["commandline"] == format!("/bin/true {} arg", markers[i])), 3);
    }
    // Everything missing from the output is counted as dropped, exactly.
    let (seen, _) = assert_windows_account_for_every_event(&events, "ProcessCreate");
    assert!(seen >= 90, "{seen}");
    // The markers pushed out are folded into the rollup of their executable.
    let rolled = hits(&events, "ProcessCreate", |p| p["rollup"] == true && p["executable"] == "/bin/true");
    assert!(rolled >= 3 * (30 - kept.len() as u64), "rolled up {rolled}");
    assert!(
        payloads(&events, "ProcessCreate")
            .iter()
            .filter(|p| p["rollup"] == true && p["executable"] != "")
            .all(|p| p["commandline"] == p["executable"]),
        "a rollup's command line is its executable"
    );
    assert!(agent_warning_seen(&events), "the cache-full statistics are missing");
}

fn agent_warning_seen(events: &[Value]) -> bool {
    payloads(events, "DroppedEventsStatistics")
        .iter()
        .any(|p| p["records_evicted"].as_u64().unwrap() > 0 || p["kernel_map_full"].as_u64().unwrap() > 0)
}

#[test]
fn drain_is_lossless_across_interval_boundaries() {
    if !privileged("drain_is_lossless_across_interval_boundaries") {
        return;
    }
    let agent = Agent::start(&["--interval", "PT1S", "--cache-size", "4096"]).unwrap();
    let m = marker("stream");
    let started = Instant::now();
    let mut generated = 0u64;
    // A steady stream through at least six drains and five window ends.
    while started.elapsed() < Duration::from_secs(7) {
        exec_true(&m, None);
        generated += 1;
    }
    let events = agent.stop().unwrap();
    let cmdline = format!("/bin/true {m} arg");
    let mine = |p: &Value| p["commandline"] == cmdline.as_str() && p["type"] == "exec";
    assert_eq!(hits(&events, "ProcessCreate", mine), generated);
    let windows: std::collections::HashSet<_> = events
        .iter()
        .filter(|e| e["event_type"] == "ProcessCreate" && mine(&e["payload"]))
        .map(|e| e["window_start"].as_str().unwrap().to_string())
        .collect();
    assert!(windows.len() >= 5, "the stream spans only {} windows", windows.len());
    let (_, dropped) = assert_windows_account_for_every_event(&events, "ProcessCreate");
    assert_eq!(dropped, 0);
}

#[test]
fn sigterm_reports_a_window_that_has_not_ended() {
    if !privileged("sigterm_reports_a_window_that_has_not_ended") {
        return;
    }
    // Default interval (PT1H): only the final drain can report these.
    let agent = Agent::start(&[]).unwrap();
    let m = marker("final");
    for _ in 0..5 {
        exec_true(&m, None);
    }
    let events = agent.stop().unwrap();
    assert_eq!(hits(&events, "ProcessCreate", |p| p["commandline"] == format!("/bin/true {m} arg")), 5);
    assert_windows_account_for_every_event(&events, "ProcessCreate");
    assert_windows_account_for_every_event(&events, "ProcessTerminate");
}

#[test]
fn disabled_collector_reports_nothing() {
    if !privileged("disabled_collector_reports_nothing") {
        return;
    }
    let dir = std::env::temp_dir().join(marker("cfg"));
    std::fs::write(&dir, r#"{"eventPriorityProcessCreate":"Off","aggregationIntervalProcessTerminate":"PT1S"}"#)
        .unwrap();
    let agent = Agent::start(&["--config", dir.to_str().unwrap()]).unwrap();
    let m = marker("off");
    for _ in 0..3 {
        exec_true(&m, None);
    }
    let events = agent.stop().unwrap();
    std::fs::remove_file(&dir).unwrap();
    assert!(payloads(&events, "ProcessCreate").is_empty());
    assert!(payloads(&events, "DroppedEventsStatistics").iter().all(|p| p["source_event_type"] != "ProcessCreate"));
    // The other collector still works: /bin/true exits 0 three times.
    assert!(hits(&events, "ProcessTerminate", |p| p["executable"] == "/bin/true" && p["exit_status"] == 0) >= 3);
}
