//! End to end over MQTT: the real agent binary, a real mosquitto started
//! here, real processes, and a subscriber that checks what arrived.
use std::{
    path::PathBuf,
    process::Command,
    time::{Duration, Instant},
};

use serde_json::Value;
use tests::{
    assert_windows_account_for_every_event, hits, marker,
    mosquitto::{self, Auth, Broker, Pki, Subscriber, PASSWORD, USER},
    payloads, privileged, run, skip, Agent,
};

const WAIT: Duration = Duration::from_secs(40);

/// Root, BTF and a broker binary, or a printed reason to skip.
fn ready(test: &str) -> bool {
    if !privileged(test) {
        return false;
    }
    if let Err(why) = mosquitto::ensure_installed() {
        skip(test, &why);
        return false;
    }
    true
}

/// Every snapshot event type (README, event table).
const SNAPSHOT_TYPES: [&str; 7] = [
    "SystemInformation",
    "LocalUsers",
    "ListeningPorts",
    "ConnectedHardware",
    "FirewallConfiguration",
    "OSBaseline",
    "SBoM",
];

/// A configuration file for the agent. These tests are about carrying
/// process events: the network collector is switched off, or the agent's own
/// connection to the broker would add ConnectionCreate events to every count,
/// and so are the snapshot collectors, whose inventories of this machine
/// would be in every count too, unless the test names them. Other files (a
/// password) are written as they are.
fn temp_file(tag: &str, content: &str) -> PathBuf {
    let content = match serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(content) {
        Ok(mut config) => {
            config.entry("eventPriorityConnectionCreate").or_insert_with(|| "Off".into());
            for t in SNAPSHOT_TYPES {
                config.entry(format!("eventPriority{t}")).or_insert_with(|| "Off".into());
            }
            serde_json::Value::Object(config).to_string()
        }
        Err(_) => content.to_string(),
    };
    let p = std::env::temp_dir().join(format!("{}.json", marker(tag)));
    std::fs::write(&p, content).unwrap();
    p
}

/// A private broker (stopped on Drop), a device id of its own, and a
/// subscriber to that device's topics: how the tests here start.
fn broker_with_subscriber(auth: Auth, pki: Option<&Pki>) -> (Broker, String, Subscriber) {
    let broker = Broker::start(auth, pki).unwrap();
    let device = marker("dev");
    let sub = Subscriber::connect(&broker, &device).unwrap();
    (broker, device, sub)
}

/// The flags that point the agent at `broker` as `device`.
fn mqtt_args(broker: &Broker, device: &str, config: Option<&PathBuf>) -> Vec<String> {
    let mut a = vec![
        "--interval".into(),
        "PT1S".into(),
        "--mqtt-url".into(),
        broker.url(),
        "--device-id".into(),
        device.into(),
    ];
    let c = config.cloned().unwrap_or_else(|| temp_file("cfg", "{}"));
    a.extend(["--config".into(), c.display().to_string()]);
    a
}

fn start(args: &[String]) -> Agent {
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    Agent::start(&a).unwrap()
}

fn exec_true(m: &str, n: usize) {
    for _ in 0..n {
        assert!(run(Command::new("/bin/true").args([m, "arg"])).unwrap().success());
    }
}

fn cmdline(m: &str) -> String {
    format!("/bin/true {m} arg")
}

fn marker_hits(events: &[Value], m: &str) -> u64 {
    let c = cmdline(m);
    hits(events, "ProcessCreate", |p| p["commandline"] == c.as_str() && p["type"] == "exec")
}

/// Whether a marker's ProcessCreate has arrived in some envelope.
fn arrived(sub: &Subscriber, m: &str) -> impl Fn(&[mosquitto::Msg]) -> bool {
    let c = cmdline(m);
    let events_topic = sub.topic("events");
    move |msgs| {
        msgs.iter()
            .filter(|x| x.topic == events_topic)
            .any(|x| x.json()["events"].as_array().unwrap().iter().any(|e| e["payload"]["commandline"] == c.as_str()))
    }
}

/// High priority every second for process events: what the tests wait on.
const FAST: &str = r#"{"eventPriorityProcessCreate":"High","eventPriorityProcessTerminate":"High",
    "eventPriorityDroppedEventsStatistics":"High","highPriorityMessageFrequency":"PT1S"}"#;

#[test]
fn envelopes_arrive_under_the_size_bound_with_status_and_reported() {
    if !ready("envelopes_arrive_under_the_size_bound_with_status_and_reported") {
        return;
    }
    let (broker, device, sub) = broker_with_subscriber(Auth::Plain, None);
    let cfg = temp_file("cfg", FAST);
    let agent = start(&mqtt_args(&broker, &device, Some(&cfg)));
    sub.wait_until("status online", WAIT, |m| {
        m.iter().any(|x| x.topic.ends_with("/status") && x.status_state() == "online")
    })
    .unwrap();
    let m = marker("env");
    exec_true(&m, 25);
    sub.wait_until("the marker's events", WAIT, arrived(&sub, &m)).unwrap();
    agent.stop().unwrap();
    sub.wait_until("status offline", WAIT, |m| {
        m.iter().rfind(|x| x.topic.ends_with("/status")).is_some_and(|x| x.status_state() == "offline")
    })
    .unwrap();

    for msg in sub.on("events") {
        assert!(msg.payload.len() <= 204_800, "default maxMessageSizeInBytes");
        let env = msg.json();
        assert_eq!(env["schema_version"], 1);
        assert_eq!(env["device_id"], device.as_str());
        assert_eq!(env["agent_version"], env!("CARGO_PKG_VERSION"));
        assert!(env["sent_at"].as_str().unwrap().ends_with('Z'), "{}", env["sent_at"]);
        assert!(["high", "medium", "low"].contains(&env["priority"].as_str().unwrap()));
        assert!(!env["events"].as_array().unwrap().is_empty());
        assert!(!msg.retain, "events are not retained");
    }
    let events = sub.events();
    assert_eq!(marker_hits(&events, &m), 25);
    assert_windows_account_for_every_event(&events, "ProcessCreate");
    assert_windows_account_for_every_event(&events, "ProcessTerminate");
    // Reported: every property, the file's values over the defaults.
    let reported = sub.reported().expect("a reported configuration");
    // Retained: a subscriber arriving after the agent left still gets the
    // reported configuration and the offline status.
    let late = Subscriber::connect(&broker, &device).unwrap();
    late.wait_until("retained reported and status", WAIT, |m| m.len() >= 2).unwrap();
    let status = late.on("status");
    assert_eq!((status.len(), status[0].status_state().as_str(), status[0].retain), (1, "offline", true));
    let late_reported = late.on("config/reported");
    assert!(late_reported[0].retain);
    assert_eq!(late_reported[0].json(), reported);
    assert_eq!(reported["eventPriorityProcessCreate"], "High");
    assert_eq!(reported["mediumPriorityMessageFrequency"], "PT1H");
    assert_eq!(reported["maxLocalCacheSizeInBytes"], 2_560_000);
    assert_eq!(reported["eventPriorityLogin"], "High", "a property the file leaves out is reported at its default");
    let schema = Command::new(tests::hitcount_bin()).args(["config", "schema"]).output().unwrap();
    let schema: Value = serde_json::from_slice(&schema.stdout).unwrap();
    let mut properties: Vec<&String> = schema["properties"].as_object().unwrap().keys().collect();
    let mut keys: Vec<&String> = reported.as_object().unwrap().keys().collect();
    properties.sort();
    keys.sort();
    assert_eq!(keys, properties, "the reported configuration has every property of the schema");
    std::fs::remove_file(cfg).unwrap();
}

#[test]
fn a_large_batch_is_split_and_no_event_is_cut() {
    if !ready("a_large_batch_is_split_and_no_event_is_cut") {
        return;
    }
    let (broker, device, sub) = broker_with_subscriber(Auth::Plain, None);
    let cfg = temp_file(
        "cfg",
        r#"{"eventPriorityProcessCreate":"High","highPriorityMessageFrequency":"PT1H","maxMessageSizeInBytes":8193,
            "cacheSizeProcessCreate":4096,"aggregationIntervalProcessCreate":"PT1H"}"#,
    );
    let mut args = mqtt_args(&broker, &device, Some(&cfg));
    args.drain(0..2); // the file's one-hour window, not --interval
    let agent = start(&args);
    // 300 distinct command lines in one window: about 150 KB of events.
    let markers: Vec<String> = (0..300).map(|i| format!("{}-{}", marker("split"), "p".repeat(i % 50))).collect();
    for m in &markers {
        exec_true(m, 1);
    }
    agent.stop().unwrap();
    sub.wait_until("every marker", WAIT, |_| {
        let ev = sub.events();
        markers.iter().all(|m| marker_hits(&ev, m) == 1)
    })
    .unwrap();
    let msgs = sub.on("events");
    let biggest = msgs.iter().map(|m| m.payload.len()).max().unwrap();
    assert!(biggest <= 8193, "a message of {biggest} bytes");
    let with_markers = msgs
        .iter()
        .filter(|m| {
            m.json()["events"]
                .as_array()
                .unwrap()
                .iter()
                .any(|e| e["payload"]["commandline"].as_str().is_some_and(|c| c.contains("-split-")))
        })
        .count();
    assert!(with_markers >= 15, "150 KB in messages of 8 KB needs many messages, got {with_markers}");
    let events = sub.events();
    for m in &markers {
        assert_eq!(marker_hits(&events, m), 1, "{m}");
    }
    std::fs::remove_file(cfg).unwrap();
}

#[test]
fn priorities_go_out_at_their_frequencies() {
    if !ready("priorities_go_out_at_their_frequencies") {
        return;
    }
    let (broker, device, sub) = broker_with_subscriber(Auth::Plain, None);
    // High every 1 s, Medium every 2 s, Low only once an hour: Low events
    // can only arrive with the final flush at SIGTERM.
    let cfg = temp_file(
        "cfg",
        r#"{"eventPriorityProcessCreate":"High","eventPriorityProcessTerminate":"Medium",
            "eventPriorityDroppedEventsStatistics":"Low","highPriorityMessageFrequency":"PT1S",
            "mediumPriorityMessageFrequency":"PT2S","lowPriorityMessageFrequency":"PT1H"}"#,
    );
    let agent = start(&mqtt_args(&broker, &device, Some(&cfg)));
    let m = marker("prio");
    exec_true(&m, 5);
    sub.wait_until("high and medium envelopes", WAIT, |msgs| {
        let envs: Vec<Value> = msgs.iter().filter(|x| x.topic.ends_with("/events")).map(|x| x.json()).collect();
        let has = |p: &str| envs.iter().any(|e| e["priority"] == p);
        has("high") && has("medium") && arrived(&sub, &m)(msgs)
    })
    .unwrap();
    // A few more Low windows close while we look: none may leave before SIGTERM.
    std::thread::sleep(Duration::from_secs(3));
    let before: Vec<Value> = sub.envelopes();
    assert!(before.iter().all(|e| e["priority"] != "low"), "a low envelope before its hour");
    agent.stop().unwrap();
    sub.wait_until("the low envelopes flushed at SIGTERM", WAIT, |msgs| {
        msgs.iter().filter(|x| x.topic.ends_with("/events")).any(|x| x.json()["priority"] == "low")
    })
    .unwrap();
    // Every event travels in an envelope of its own type's priority.
    let expected = |t: &str| match t {
        "ProcessCreate" => "high",
        "ProcessTerminate" => "medium",
        "DroppedEventsStatistics" => "low",
        other => panic!("unexpected {other}"),
    };
    for env in sub.envelopes() {
        for e in env["events"].as_array().unwrap() {
            assert_eq!(env["priority"], expected(e["event_type"].as_str().unwrap()), "{e}");
        }
    }
    let events = sub.events();
    assert_eq!(marker_hits(&events, &m), 5);
    assert_windows_account_for_every_event(&events, "ProcessCreate");
    std::fs::remove_file(cfg).unwrap();
}

#[test]
fn broker_outage_loses_nothing_within_the_cache_bound() {
    if !ready("broker_outage_loses_nothing_within_the_cache_bound") {
        return;
    }
    let (mut broker, device, sub) = broker_with_subscriber(Auth::Plain, None);
    let cfg = temp_file("cfg", FAST);
    let agent = start(&mqtt_args(&broker, &device, Some(&cfg)));
    let before = marker("before");
    exec_true(&before, 10);
    sub.wait_until("events before the outage", WAIT, arrived(&sub, &before)).unwrap();
    broker.stop();
    agent.wait_for_log("MQTT connection lost", WAIT).unwrap();
    let during = marker("during");
    let started = Instant::now();
    let mut n = 0;
    // Several windows' worth while the broker is away.
    while started.elapsed() < Duration::from_secs(4) {
        exec_true(&during, 1);
        n += 1;
    }
    broker.restart().unwrap();
    sub.wait_until("events from the outage", WAIT, arrived(&sub, &during)).unwrap();
    let after = marker("after");
    exec_true(&after, 3);
    sub.wait_until("events after the outage", WAIT, arrived(&sub, &after)).unwrap();
    agent.stop().unwrap();
    std::thread::sleep(Duration::from_secs(1));
    let events = sub.events();
    assert_eq!(marker_hits(&events, &before), 10);
    assert_eq!(marker_hits(&events, &during), n as u64);
    assert_eq!(marker_hits(&events, &after), 3);
    assert_windows_account_for_every_event(&events, "ProcessCreate");
    for p in payloads(&events, "DroppedEventsStatistics") {
        assert_eq!(p["transport_cache_full"], 0, "nothing dropped within the bound: {p}");
    }
    std::fs::remove_file(cfg).unwrap();
}

#[test]
fn past_the_cache_bound_the_exact_dropped_count_is_reported() {
    if !ready("past_the_cache_bound_the_exact_dropped_count_is_reported") {
        return;
    }
    let (mut broker, device, sub) = broker_with_subscriber(Auth::Plain, None);
    broker.stop();
    // 16 KB of cache against ~100 KB of distinct records.
    let cfg = temp_file(
        "cfg",
        r#"{"eventPriorityProcessCreate":"High","eventPriorityProcessTerminate":"High",
            "eventPriorityDroppedEventsStatistics":"High","highPriorityMessageFrequency":"PT1S",
            "maxLocalCacheSizeInBytes":16384,"cacheSizeProcessCreate":4096}"#,
    );
    let agent = start(&mqtt_args(&broker, &device, Some(&cfg)));
    let markers: Vec<String> = (0..250).map(|i| format!("{}-{i}", marker("drop"))).collect();
    for m in &markers {
        exec_true(m, 2);
    }
    // Let the last of those windows close into the cache, then reconnect.
    std::thread::sleep(Duration::from_secs(2));
    broker.restart().unwrap();
    // The agent reconnects after its backoff (up to 10 s), and until then
    // the 16 KB cache also takes every other exec on the host and drops its
    // oldest: a marker made before the reconnect can be pushed out (counted).
    agent.wait_for_log("connected to the MQTT broker", WAIT).unwrap();
    // Connected, an event can still be dropped when the host makes events
    // faster than one cache a second: a marker each second until one arrives.
    let last = marker("last");
    let deadline = Instant::now() + WAIT;
    loop {
        exec_true(&last, 1);
        if sub.wait_until("events after reconnecting", Duration::from_secs(1), arrived(&sub, &last)).is_ok() {
            break;
        }
        assert!(Instant::now() < deadline, "no marker made after reconnecting arrived within {WAIT:?}");
    }
    agent.stop().unwrap();
    std::thread::sleep(Duration::from_secs(1));
    let events = sub.events();
    let received: u64 = markers.iter().map(|m| marker_hits(&events, m)).sum();
    assert!(received < 500, "the cache could not hold everything, yet {received} of 500 arrived");
    // Exact, for each type over the whole run: what the kernel saw is what
    // arrived, plus what the windows dropped, plus what the cache dropped.
    // (The per-window identity cannot hold here: records of a window were
    // dropped on the way. It holds for the run.)
    for source in ["ProcessCreate", "ProcessTerminate"] {
        let arrived_hits = hits(&events, source, |_| true);
        let stats: Vec<&Value> = payloads(&events, "DroppedEventsStatistics")
            .into_iter()
            .filter(|p| p["source_event_type"] == source)
            .collect();
        let sum = |field: &str| stats.iter().map(|p| p[field].as_u64().unwrap()).sum::<u64>();
        let (seen, window_dropped) = (sum("events_seen"), sum("dropped_events"));
        let transport_hits: u64 = stats.iter().map(|p| p["transport_cache_full_hits"].as_u64().unwrap()).sum();
        let transport_records: u64 = stats.iter().map(|p| p["transport_cache_full"].as_u64().unwrap()).sum();
        assert_eq!(seen, arrived_hits + window_dropped + transport_hits, "{source}");
        if source == "ProcessCreate" {
            assert!(transport_records > 0, "the cache dropped ProcessCreate records");
            let missing = 500 - received;
            assert!(
                transport_hits >= missing,
                "{transport_hits} dropped hits cannot cover {missing} missing marker execs"
            );
        }
    }
    std::fs::remove_file(cfg).unwrap();
}

/// A spool directory of its own (not created), the FAST configuration, and
/// the agent's flags with both.
fn spool_args(broker: &Broker, device: &str) -> (PathBuf, PathBuf, Vec<String>) {
    let spool = std::env::temp_dir().join(marker("spool"));
    let cfg = temp_file("cfg", FAST);
    let mut args = mqtt_args(broker, device, Some(&cfg));
    args.extend(["--spool-dir".into(), spool.display().to_string()]);
    (spool, cfg, args)
}

#[test]
fn with_a_spool_dir_an_agent_restart_loses_nothing() {
    if !ready("with_a_spool_dir_an_agent_restart_loses_nothing") {
        return;
    }
    let (mut broker, device, sub) = broker_with_subscriber(Auth::Plain, None);
    broker.stop();
    let (spool, cfg, args) = spool_args(&broker, &device);
    let first = start(&args);
    let m = marker("spooled");
    exec_true(&m, 12);
    let logs = first.stop_logs().unwrap();
    assert!(logs.iter().any(|l| l.contains("unsent events kept for the next start")), "{logs:#?}");
    assert!(spool.join("queue.jsonl").exists());
    broker.restart().unwrap();
    let second = start(&args);
    sub.wait_until("the spooled events", WAIT, arrived(&sub, &m)).unwrap();
    let logs = second.stop_logs().unwrap();
    assert!(logs.iter().any(|l| l.contains("events from the previous run queued")), "{logs:#?}");
    let events = sub.events();
    assert_eq!(marker_hits(&events, &m), 12);
    assert_windows_account_for_every_event(&events, "ProcessCreate");
    std::fs::remove_file(cfg).unwrap();
    let _ = std::fs::remove_dir_all(spool);
}

/// Hits of a marker's ProcessCreate entries in a spool journal, read as
/// the README documents it (no tombstones while the broker is down).
fn journal_hits(spool: &std::path::Path, m: &str) -> u64 {
    let c = cmdline(m);
    let text = std::fs::read_to_string(spool.join("queue.jsonl")).unwrap_or_default();
    text.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|r| r["event"]["payload"]["commandline"] == c.as_str())
        .map(|r| r["hits"].as_u64().unwrap())
        .sum()
}

#[test]
fn with_a_spool_dir_a_sigkill_during_an_outage_loses_nothing() {
    if !ready("with_a_spool_dir_a_sigkill_during_an_outage_loses_nothing") {
        return;
    }
    let (mut broker, device, sub) = broker_with_subscriber(Auth::Plain, None);
    broker.stop();
    let (spool, cfg, args) = spool_args(&broker, &device);
    let first = start(&args);
    let m = marker("killed");
    exec_true(&m, 30);
    // Every marker exec has entered the cache once the journal holds them.
    let deadline = Instant::now() + WAIT;
    while journal_hits(&spool, &m) < 30 {
        assert!(Instant::now() < deadline, "the journal holds {} of 30 marker execs", journal_hits(&spool, &m));
        std::thread::sleep(Duration::from_millis(100));
    }
    // SIGKILL: no shutdown, no rewrite; the journal is all there is.
    drop(first);
    broker.restart().unwrap();
    let second = start(&args);
    sub.wait_until("the journaled events", WAIT, arrived(&sub, &m)).unwrap();
    // The drop counts of the windows that follow account for the restart.
    let after = marker("after");
    exec_true(&after, 2);
    sub.wait_until("events after the restart", WAIT, arrived(&sub, &after)).unwrap();
    let logs = second.stop_logs().unwrap();
    assert!(logs.iter().any(|l| l.contains("events from the previous run queued for sending")), "{logs:#?}");
    assert!(!logs.iter().any(|l| l.contains("unreadable records lost")), "{logs:#?}");
    let events = sub.events();
    assert_eq!(marker_hits(&events, &m), 30);
    assert_eq!(marker_hits(&events, &after), 2);
    assert_windows_account_for_every_event(&events, "ProcessCreate");
    for p in payloads(&events, "DroppedEventsStatistics") {
        assert_eq!(p["spool_records_lost"], 0, "{p}");
        assert_eq!(p["transport_cache_full"], 0, "{p}");
    }
    std::fs::remove_file(cfg).unwrap();
    let _ = std::fs::remove_dir_all(spool);
}

#[test]
fn a_damaged_spool_is_counted_and_the_agent_starts() {
    if !ready("a_damaged_spool_is_counted_and_the_agent_starts") {
        return;
    }
    let (broker, device, sub) = broker_with_subscriber(Auth::Plain, None);
    let (spool, cfg, args) = spool_args(&broker, &device);
    std::fs::create_dir(&spool).unwrap();
    // A foreign head, then two records that are not events, then a truncated one.
    std::fs::write(
        spool.join("queue.jsonl"),
        "garbage\n\u{7f}ELF\n{\"seq\":1}\n{\"seq\":2,\"event_type\":\"ProcessCreate\",\"pri",
    )
    .unwrap();
    let agent = start(&args);
    let m = marker("after-damage");
    exec_true(&m, 3);
    sub.wait_until("events after a damaged spool", WAIT, arrived(&sub, &m)).unwrap();
    let lost_reported = |msgs: &[mosquitto::Msg]| -> u64 {
        msgs.iter()
            .filter(|x| x.topic.ends_with("/events"))
            .flat_map(|x| x.json()["events"].as_array().unwrap().clone())
            .filter(|e| e["event_type"] == "DroppedEventsStatistics")
            .map(|e| e["payload"]["spool_records_lost"].as_u64().unwrap())
            .sum()
    };
    // At least once: a repeated envelope may count twice here, not below.
    sub.wait_until("the lost records reported", WAIT, |msgs| lost_reported(msgs) >= 3).unwrap();
    let logs = agent.stop_logs().unwrap();
    assert!(logs.iter().any(|l| l.contains("3 unreadable records lost")), "{logs:#?}");
    let events = sub.events();
    assert_eq!(marker_hits(&events, &m), 3);
    let lost: u64 =
        payloads(&events, "DroppedEventsStatistics").iter().map(|p| p["spool_records_lost"].as_u64().unwrap()).sum();
    assert_eq!(lost, 3, "counted once");
    // World-writable: refused at start, with the reason.
    std::fs::set_permissions(&spool, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    let err = format!("{:#}", tests::Agent::start(&a).err().expect("a world-writable spool is refused"));
    assert!(err.contains("lets group or others write it"), "{err}");
    std::fs::remove_file(cfg).unwrap();
    let _ = std::fs::remove_dir_all(spool);
}

#[test]
fn desired_config_changes_behaviour_and_the_reported_config() {
    if !ready("desired_config_changes_behaviour_and_the_reported_config") {
        return;
    }
    let (broker, device, sub) = broker_with_subscriber(Auth::Plain, None);
    // Defaults: ProcessCreate is Medium, sent once an hour; windows of an hour.
    let mut args = mqtt_args(&broker, &device, None);
    args.drain(0..2);
    let agent = start(&args);
    let subscriber = &sub;
    let reported_with = |key: &'static str, value: &'static str| {
        move |_: &[mosquitto::Msg]| subscriber.reported().is_some_and(|r| r[key] == value)
    };
    sub.wait_until("the initial reported config", WAIT, reported_with("eventPriorityProcessCreate", "Medium")).unwrap();
    // Data of the open window goes out before a change applies.
    let pending = marker("pending");
    exec_true(&pending, 4);
    std::thread::sleep(Duration::from_millis(1500));
    assert!(!arrived(&sub, &pending)(&sub.messages()), "a one-hour window sent early");
    sub.publish_desired(
        r#"{"eventPriorityProcessCreate":"High","highPriorityMessageFrequency":"PT1S",
        "aggregationIntervalProcessCreate":"PT1S"}"#,
    )
    .unwrap();
    sub.wait_until("data sent before the change", WAIT, arrived(&sub, &pending)).unwrap();
    sub.wait_until("reported High", WAIT, reported_with("eventPriorityProcessCreate", "High")).unwrap();
    let reported = sub.reported().unwrap();
    assert_eq!(reported["highPriorityMessageFrequency"], "PT1S");
    assert_eq!(reported["aggregationIntervalProcessCreate"], "PT1S");
    assert_eq!(reported["cacheSizeProcessCreate"], 256, "defaults filled in");
    let on = marker("on");
    exec_true(&on, 5);
    sub.wait_until("events at the new priority", WAIT, arrived(&sub, &on)).unwrap();

    // Both process types Off: the programs are detached, nothing is collected.
    sub.publish_desired(r#"{"eventPriorityProcessCreate":"Off","eventPriorityProcessTerminate":"Off"}"#).unwrap();
    sub.wait_until("reported Off", WAIT, reported_with("eventPriorityProcessCreate", "Off")).unwrap();
    agent.wait_for_log("detached sched_process_exec", WAIT).unwrap();
    agent.wait_for_log("detached sched_process_exit", WAIT).unwrap();
    let off = marker("off");
    exec_true(&off, 5);
    // Back on: attached again.
    sub.publish_desired(
        r#"{"eventPriorityProcessCreate":"High","highPriorityMessageFrequency":"PT1S",
        "aggregationIntervalProcessCreate":"PT1S"}"#,
    )
    .unwrap();
    sub.wait_until("reported High again", WAIT, reported_with("eventPriorityProcessCreate", "High")).unwrap();
    let back = marker("back");
    exec_true(&back, 3);
    sub.wait_until("events after re-enabling", WAIT, arrived(&sub, &back)).unwrap();
    let logs = agent.stop_logs().unwrap();
    let attached = logs.iter().filter(|l| l.contains("attached sched_process_exec to")).count();
    assert_eq!(attached, 2, "attached at start and after re-enabling: {logs:#?}");
    let events = sub.events();
    assert_eq!(marker_hits(&events, &pending), 4);
    assert_eq!(marker_hits(&events, &on), 5);
    assert_eq!(marker_hits(&events, &off), 0, "collected while Off");
    assert_eq!(marker_hits(&events, &back), 3);
}

#[test]
fn invalid_desired_config_changes_nothing_and_yields_configuration_error() {
    if !ready("invalid_desired_config_changes_nothing_and_yields_configuration_error") {
        return;
    }
    let (broker, device, sub) = broker_with_subscriber(Auth::Plain, None);
    let cfg = temp_file("cfg", r#"{"eventPriorityConfigurationError":"High","highPriorityMessageFrequency":"PT1S"}"#);
    let agent = start(&mqtt_args(&broker, &device, Some(&cfg)));
    sub.wait_until("the initial reported config", WAIT, |_| sub.reported().is_some()).unwrap();
    let initial = sub.reported().unwrap();
    let errors_of = configuration_errors;
    sub.publish_desired(
        r#"{"cacheSizeProcessCreate":0,"bogus":1,"highPriorityMessageFrequency":"7 minutes",
            "maxMessageSizeInBytes":300000,"eventPriorityLogin":"Sometimes"}"#,
    )
    .unwrap();
    sub.wait_until("a ConfigurationError", WAIT, |m| !errors_of(m).is_empty()).unwrap();
    sub.publish_desired("{not json").unwrap();
    sub.wait_until("a second ConfigurationError", WAIT, |m| errors_of(m).len() >= 2).unwrap();
    // Still collecting with the old configuration: ProcessCreate Medium,
    // hourly, so the marker waits until the final flush.
    let m = marker("still");
    exec_true(&m, 2);
    std::thread::sleep(Duration::from_secs(2));
    assert!(!arrived(&sub, &m)(&sub.messages()), "sent early: the invalid configuration changed something");
    agent.stop().unwrap();
    sub.wait_until("the final flush", WAIT, arrived(&sub, &m)).unwrap();
    let errors = errors_of(&sub.messages());
    let first = &errors[0]["payload"];
    assert_eq!(first["source"], "desired configuration (MQTT)");
    let fields: Vec<&str> = first["errors"].as_array().unwrap().iter().map(|e| e["field"].as_str().unwrap()).collect();
    assert_eq!(
        fields,
        [
            "bogus",
            "cacheSizeProcessCreate",
            "eventPriorityLogin",
            "highPriorityMessageFrequency",
            "maxMessageSizeInBytes"
        ]
    );
    for e in first["errors"].as_array().unwrap() {
        assert!(!e["reason"].as_str().unwrap().is_empty());
    }
    assert_eq!(errors[1]["payload"]["errors"][0]["field"], "(document)");
    assert_eq!(sub.reported().unwrap(), initial, "the reported configuration did not change");
    assert_eq!(sub.on("config/reported").len(), 1, "nothing was republished");
    assert_eq!(marker_hits(&sub.events(), &m), 2);
    std::fs::remove_file(cfg).unwrap();
}

/// ConfigurationError events received so far.
fn configuration_errors(msgs: &[mosquitto::Msg]) -> Vec<Value> {
    msgs.iter()
        .filter(|x| x.topic.ends_with("/events"))
        .flat_map(|x| x.json()["events"].as_array().unwrap().clone())
        .filter(|e| e["event_type"] == "ConfigurationError")
        .collect()
}

/// A retained desired configuration of `bytes` bytes (valid JSON, one
/// unknown property), as an operator's mistake or an attacker would send.
fn desired_of_size(bytes: usize) -> String {
    let filler = bytes - r#"{"x":""}"#.len();
    format!(r#"{{"x":"{}"}}"#, "a".repeat(filler))
}

/// Issue 9.1: a desired configuration over the old 300 KiB packet limit cut
/// the agent off the broker for good (dropped, re-delivered, forever). Now
/// it is read, acknowledged, refused by its size, and events keep flowing
/// over the same connection.
#[test]
fn oversized_desired_configurations_are_refused_and_events_keep_flowing() {
    if !ready("oversized_desired_configurations_are_refused_and_events_keep_flowing") {
        return;
    }
    let (broker, device, sub) = broker_with_subscriber(Auth::Plain, None);
    let cfg = temp_file(
        "cfg",
        r#"{"eventPriorityProcessCreate":"High","eventPriorityProcessTerminate":"High",
            "eventPriorityDroppedEventsStatistics":"High","eventPriorityConfigurationError":"High",
            "highPriorityMessageFrequency":"PT1S"}"#,
    );
    let agent = start(&mqtt_args(&broker, &device, Some(&cfg)));
    sub.wait_until("the initial reported config", WAIT, |_| sub.reported().is_some()).unwrap();
    for (n, bytes) in [(1, 400_000), (2, 2_000_000)] {
        sub.publish_desired(&desired_of_size(bytes)).unwrap();
        sub.wait_until(&format!("ConfigurationError {n}"), WAIT, |m| configuration_errors(m).len() >= n).unwrap();
        let m = marker("after");
        exec_true(&m, 3);
        sub.wait_until("events after the oversized configuration", WAIT, arrived(&sub, &m)).unwrap();
    }
    let logs = agent.stop_logs().unwrap();
    assert!(!logs.iter().any(|l| l.contains("MQTT connection lost")), "{logs:#?}");
    let errors = configuration_errors(&sub.messages());
    assert_eq!(errors.len(), 2, "one ConfigurationError per payload: {errors:#?}");
    for (e, bytes) in errors.iter().zip([400_000, 2_000_000]) {
        let p = &e["payload"];
        assert_eq!(p["source"], "desired configuration (MQTT)");
        assert_eq!(p["error_count"], 1);
        assert_eq!(p["errors"][0]["field"], "(document)");
        assert_eq!(
            p["errors"][0]["reason"],
            format!("{bytes} bytes, more than the 65536 bytes a configuration may have").as_str()
        );
    }
    // ConfigurationError is counted like any other type.
    let seen: u64 = payloads(&sub.events(), "DroppedEventsStatistics")
        .iter()
        .filter(|p| p["source_event_type"] == "ConfigurationError")
        .map(|p| p["events_seen"].as_u64().unwrap())
        .sum();
    assert_eq!(seen, 2);
    assert_eq!(sub.reported().unwrap()["eventPriorityConfigurationError"], "High", "the configuration stayed");
    std::fs::remove_file(cfg).unwrap();
}

/// Above the client's read limit (4 MiB) rumqttc cannot read the packet: one
/// reconnect with a clean session discards it, the desired topic is left
/// unsubscribed until restart, and events keep flowing; no reconnect loop.
#[test]
fn a_desired_configuration_over_the_read_limit_costs_one_reconnect() {
    if !ready("a_desired_configuration_over_the_read_limit_costs_one_reconnect") {
        return;
    }
    let (broker, device, sub) = broker_with_subscriber(Auth::Plain, None);
    let cfg = temp_file("cfg", FAST);
    let agent = start(&mqtt_args(&broker, &device, Some(&cfg)));
    sub.wait_until("the initial reported config", WAIT, |_| sub.reported().is_some()).unwrap();
    sub.publish_desired(&desired_of_size(5_000_000)).unwrap();
    agent.wait_for_log("more than the 4194304 bytes this client reads", WAIT).unwrap();
    let m = marker("past");
    exec_true(&m, 3);
    sub.wait_until("events after the unreadable configuration", WAIT, arrived(&sub, &m)).unwrap();
    // Long enough for several reconnects, had the broker sent it again.
    std::thread::sleep(Duration::from_secs(5));
    let m2 = marker("later");
    exec_true(&m2, 2);
    sub.wait_until("events later on", WAIT, arrived(&sub, &m2)).unwrap();
    let logs = agent.stop_logs().unwrap();
    let lost = logs.iter().filter(|l| l.contains("MQTT connection lost")).count();
    assert_eq!(lost, 1, "{logs:#?}");
    assert!(logs.iter().any(|l| l.contains("not subscribed to") && l.contains("too large to read")), "{logs:#?}");
    let events = sub.events();
    assert_eq!((marker_hits(&events, &m), marker_hits(&events, &m2)), (3, 2));
    std::fs::remove_file(cfg).unwrap();
}

/// The agent's TLS and auth flags for `broker`.
fn tls_args(broker: &Broker, device: &str, cfg: &PathBuf, extra: &[String]) -> Vec<String> {
    let mut a = mqtt_args(broker, device, Some(cfg));
    a.extend(extra.iter().cloned());
    a
}

#[test]
fn tls_with_password_and_mutual_tls_deliver_events() {
    if !ready("tls_with_password_and_mutual_tls_deliver_events") {
        return;
    }
    let pki = Pki::new().unwrap();
    let cfg = temp_file("cfg", FAST);
    let pw_file = temp_file("pw", &format!("{PASSWORD}\n"));
    let ca = pki.ca.display().to_string();
    let cases: Vec<(Auth, Vec<String>)> = vec![
        (
            Auth::TlsPassword,
            vec![
                "--mqtt-ca-file".into(),
                ca.clone(),
                "--mqtt-username".into(),
                USER.into(),
                "--mqtt-password-file".into(),
                pw_file.display().to_string(),
            ],
        ),
        (
            Auth::MutualTls,
            vec![
                "--mqtt-ca-file".into(),
                ca.clone(),
                "--mqtt-client-cert".into(),
                pki.client_cert.display().to_string(),
                "--mqtt-client-key".into(),
                pki.client_key.display().to_string(),
            ],
        ),
    ];
    for (auth, extra) in cases {
        let (broker, device, sub) = broker_with_subscriber(auth, Some(&pki));
        let agent = start(&tls_args(&broker, &device, &cfg, &extra));
        let m = marker("tls");
        exec_true(&m, 3);
        sub.wait_until("events over TLS", WAIT, arrived(&sub, &m))
            .unwrap_or_else(|e| panic!("{auth:?}: {e}; broker log: {}", broker.log()));
        let logs = agent.stop_logs().unwrap();
        assert!(logs.iter().any(|l| l.contains("connected to the MQTT broker")), "{auth:?}");
        assert!(!logs.iter().any(|l| l.contains(PASSWORD)), "{auth:?}: the password was logged");
        assert_eq!(marker_hits(&sub.events(), &m), 3, "{auth:?}");
    }
    std::fs::remove_file(cfg).unwrap();
    std::fs::remove_file(pw_file).unwrap();
}

#[test]
fn auth_failures_are_clear_errors_without_secrets_or_crashes() {
    if !ready("auth_failures_are_clear_errors_without_secrets_or_crashes") {
        return;
    }
    let pki = Pki::new().unwrap();
    let cfg = temp_file("cfg", FAST);
    let wrong_password = "not-the-Pa55-but-secret";
    let ca = pki.ca.display().to_string();
    let other_ca = pki.other_ca.display().to_string();
    let password_broker = Broker::start(Auth::TlsPassword, Some(&pki)).unwrap();
    let mtls_broker = Broker::start(Auth::MutualTls, Some(&pki)).unwrap();
    let user = |ca: &str| vec!["--mqtt-ca-file".to_string(), ca.to_string(), "--mqtt-username".into(), USER.into()];
    // (broker, flags, environment, what the log must say)
    type Case<'a> = (&'a Broker, Vec<String>, Vec<(&'a str, &'a str)>, &'a str);
    let cases: Vec<Case> = vec![
        (&password_broker, user(&ca), vec![("HITCOUNT_MQTT_PASSWORD", wrong_password)], "--mqtt-password-file"),
        (&password_broker, user(&other_ca), vec![("HITCOUNT_MQTT_PASSWORD", PASSWORD)], "--mqtt-ca-file"),
        (&mtls_broker, vec!["--mqtt-ca-file".into(), ca.clone()], vec![], "--mqtt-client-cert"),
    ];
    for (broker, extra, env, expected) in cases {
        let device = marker("dev");
        let args = tls_args(broker, &device, &cfg, &extra);
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        // Debug logging everywhere: a secret must not appear at any level.
        let mut env = env.clone();
        env.push(("RUST_LOG", "trace"));
        let mut agent = Agent::start_with(&a, &env).unwrap();
        let line = agent.wait_for_log(expected, WAIT).unwrap();
        // Still collecting, and retrying with backoff, not crashed.
        std::thread::sleep(Duration::from_secs(3));
        assert!(agent.is_running(), "the agent exited after: {line}");
        let logs = agent.stop_logs().unwrap();
        for secret in [PASSWORD, wrong_password] {
            assert!(!logs.iter().any(|l| l.contains(secret)), "a password was logged: {logs:#?}");
        }
        let repeats = logs.iter().filter(|l| l.contains(expected) && l.contains("WARN")).count();
        assert_eq!(repeats, 1, "the same error is warned about once, not on every retry: {logs:#?}");
        assert!(!logs.iter().any(|l| l.contains("connected to the MQTT broker")));
    }
    std::fs::remove_file(cfg).unwrap();
}

#[test]
fn the_last_will_marks_a_vanished_agent_offline() {
    if !ready("the_last_will_marks_a_vanished_agent_offline") {
        return;
    }
    let (broker, device, sub) = broker_with_subscriber(Auth::Plain, None);
    let agent = start(&mqtt_args(&broker, &device, None));
    let last_status = |msgs: &[mosquitto::Msg]| {
        msgs.iter().rfind(|x| x.topic.ends_with("/status")).map(mosquitto::Msg::status_state).unwrap_or_default()
    };
    sub.wait_until("status online", WAIT, |m| last_status(m) == "online").unwrap();
    // SIGKILL: no chance to say goodbye; the broker publishes the will.
    drop(agent);
    sub.wait_until("the last will", WAIT, |m| last_status(m) == "offline").unwrap();
    let late = Subscriber::connect(&broker, &device).unwrap();
    late.wait_until("the retained will", WAIT, |m| last_status(m) == "offline").unwrap();
    assert!(late.on("status")[0].retain);
}

#[test]
fn while_connected_a_window_larger_than_the_cache_is_not_dropped() {
    if !ready("while_connected_a_window_larger_than_the_cache_is_not_dropped") {
        return;
    }
    let (broker, device, sub) = broker_with_subscriber(Auth::Plain, None);
    // One window of ~150 KB of distinct records against a 16 KB cache.
    let cfg = temp_file(
        "cfg",
        r#"{"eventPriorityProcessCreate":"High","eventPriorityDroppedEventsStatistics":"High",
            "highPriorityMessageFrequency":"PT1S","maxLocalCacheSizeInBytes":16384,"maxMessageSizeInBytes":8193,
            "cacheSizeProcessCreate":4096,"aggregationIntervalProcessCreate":"PT1H"}"#,
    );
    let mut args = mqtt_args(&broker, &device, Some(&cfg));
    args.drain(0..2);
    let agent = start(&args);
    sub.wait_until("status online", WAIT, |m| m.iter().any(|x| x.topic.ends_with("/status"))).unwrap();
    let markers: Vec<String> = (0..300).map(|i| format!("{}-{}", marker("big"), "q".repeat(i % 50))).collect();
    for m in &markers {
        exec_true(m, 1);
    }
    agent.stop().unwrap();
    sub.wait_until("every marker", WAIT, |_| {
        let ev = sub.events();
        markers.iter().all(|m| marker_hits(&ev, m) == 1)
    })
    .unwrap();
    let events = sub.events();
    assert_windows_account_for_every_event(&events, "ProcessCreate");
    for p in payloads(&events, "DroppedEventsStatistics") {
        assert_eq!(p["transport_cache_full"], 0, "{p}");
    }
    std::fs::remove_file(cfg).unwrap();
}

/// Events of `t` whose snapshot has `sequence`.
fn snapshot_events(events: &[Value], t: &str, sequence: u64) -> Vec<Value> {
    events.iter().filter(|e| e["event_type"] == t && e["snapshot"]["sequence"] == sequence).cloned().collect()
}

#[test]
fn a_desired_change_is_reported_and_snapshots_are_taken_again() {
    if !ready("a_desired_change_is_reported_and_snapshots_are_taken_again") {
        return;
    }
    let (broker, device, sub) = broker_with_subscriber(Auth::Plain, None);
    let cfg = temp_file("cfg", r#"{"eventPriorityLocalUsers":"High","highPriorityMessageFrequency":"PT1S"}"#);
    let agent = start(&mqtt_args(&broker, &device, Some(&cfg)));
    let first = |_: &[mosquitto::Msg]| !snapshot_events(&sub.events(), "LocalUsers", 1).is_empty();
    sub.wait_until("the snapshot taken at start", WAIT, first).unwrap();

    sub.publish_desired(r#"{"eventPriorityProcessTerminate":"Off"}"#).unwrap();
    let second = |_: &[mosquitto::Msg]| !snapshot_events(&sub.events(), "LocalUsers", 2).is_empty();
    sub.wait_until("a snapshot right after the change", WAIT, second).unwrap();
    let changes: Vec<Value> = sub
        .events()
        .into_iter()
        .filter(|e| e["event_type"] == "ConfigurationChange")
        .map(|e| e["payload"]["changes"].clone())
        .collect();
    assert_eq!(
        changes,
        [serde_json::json!([{"property": "eventPriorityProcessTerminate", "from": "Low", "to": "Off"}])],
        "exactly one change, named with its values"
    );
    let users = snapshot_events(&sub.events(), "LocalUsers", 2);
    assert!(users.iter().any(|e| e["payload"]["user_name"] == "root"), "{users:?}");
    assert_eq!(users.len() as u64, users[0]["snapshot"]["items"].as_u64().unwrap(), "a full snapshot");

    // Everything that can be switched off, off: the change is still seen.
    let all_off: serde_json::Map<String, Value> = [
        "Diagnostic",
        "ConfigurationError",
        "DroppedEventsStatistics",
        "ProcessCreate",
        "ProcessTerminate",
        "ConnectionCreate",
        "Login",
    ]
    .iter()
    .copied()
    .chain(SNAPSHOT_TYPES)
    .map(|t| (format!("eventPriority{t}"), Value::from("Off")))
    .collect();
    sub.publish_desired(&Value::Object(all_off).to_string()).unwrap();
    let blinded =
        |_: &[mosquitto::Msg]| sub.events().iter().filter(|e| e["event_type"] == "ConfigurationChange").count() == 2;
    sub.wait_until("the change that switches everything off", WAIT, blinded).unwrap();
    let last = sub.events().into_iter().rfind(|e| e["event_type"] == "ConfigurationChange").unwrap();
    let properties: Vec<&str> =
        last["payload"]["changes"].as_array().unwrap().iter().map(|c| c["property"].as_str().unwrap()).collect();
    for p in ["eventPriorityProcessCreate", "eventPriorityDroppedEventsStatistics", "eventPriorityLocalUsers"] {
        assert!(properties.contains(&p), "{p} missing from {properties:?}");
    }
    // The status says the agent is online and collecting nothing.
    let all_off = |m: &[mosquitto::Msg]| {
        m.iter()
            .rfind(|x| x.topic.ends_with("/status"))
            .is_some_and(|x| x.json()["event_types_off"].as_array().is_some_and(|a| a.len() > 10))
    };
    sub.wait_until("a status naming the types off", WAIT, all_off).unwrap();
    let status = sub.on("status").last().unwrap().json();
    assert_eq!(status["state"], "online");
    let off = status["event_types_off"].as_array().unwrap();
    assert!(
        off.contains(&Value::from("ProcessCreate")) && off.contains(&Value::from("DroppedEventsStatistics")),
        "{status}"
    );
    assert!(!off.contains(&Value::from("ConfigurationChange")), "never off");
    agent.stop_logs().unwrap();
}
