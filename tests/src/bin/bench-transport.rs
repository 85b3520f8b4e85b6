//! `cargo xtask bench transport`: what MQTT costs with and without
//! aggregation, how fast the agent empties a backlog, and its memory with a
//! full local cache. Real agent, real mosquitto, real processes.
//!
//! The workload is the issue's hour (100k execs of 20 distinct commands)
//! compressed in time: `--execs N` execs (default 20000) spread over 20
//! command lines, with the aggregation window scaled down to `--window`
//! seconds. Connection load joins `Workload` once the network collector exists.
use std::{
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use tests::{
    marker,
    mosquitto::{self, Auth, Broker, Subscriber},
    Agent,
};

struct Workload {
    execs: usize,
    distinct: usize,
}

impl Workload {
    /// Runs the execs, round robin over the distinct command lines.
    fn run(&self, tag: &str) -> Result<Duration> {
        let started = Instant::now();
        for i in 0..self.execs {
            let status = Command::new("/bin/true").arg(format!("{tag}-cmd{}", i % self.distinct)).status()?;
            if !status.success() {
                bail!("/bin/true failed");
            }
        }
        Ok(started.elapsed())
    }
}

/// Size of a QoS 1 PUBLISH packet carrying `payload` on `topic` (MQTT 3.1.1
/// section 3.3), plus the 4-byte PUBACK that answers it.
fn wire_bytes(topic: &str, payload: usize) -> usize {
    let remaining = 2 + topic.len() + 2 + payload;
    let len_bytes = match remaining {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    };
    1 + len_bytes + remaining + 4
}

struct Traffic {
    messages: usize,
    payload: usize,
    wire: usize,
    events: usize,
    hits: u64,
    /// If every event had gone in an envelope of its own.
    single_messages: usize,
    single_wire: usize,
}

fn traffic(sub: &Subscriber, tag: &str) -> Traffic {
    let topic = sub.topic("events");
    let msgs = sub.on("events");
    let mut t = Traffic { messages: 0, payload: 0, wire: 0, events: 0, hits: 0, single_messages: 0, single_wire: 0 };
    for m in &msgs {
        t.messages += 1;
        t.payload += m.payload.len();
        t.wire += wire_bytes(&topic, m.payload.len());
        let env = m.json();
        let events = env["events"].as_array().unwrap();
        let overhead = m.payload.len()
            - events.iter().map(|e| e.to_string().len()).sum::<usize>()
            - events.len().saturating_sub(1);
        for e in events {
            t.events += 1;
            t.single_messages += 1;
            t.single_wire += wire_bytes(&topic, overhead + e.to_string().len());
            if e["payload"]["commandline"].as_str().is_some_and(|c| c.contains(tag)) {
                t.hits += e["payload"]["hit_count"].as_u64().unwrap_or(0);
            }
        }
    }
    t
}

/// A `/proc/PID/status` figure in KiB (`VmRSS`, `VmHWM`, `RssAnon`).
fn status_kib(pid: u32, field: &str) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.strip_prefix(field).is_some_and(|r| r.starts_with(':')))
        .with_context(|| format!("no {field}"))?;
    Ok(line.split_whitespace().nth(1).with_context(|| format!("{field} value"))?.parse()?)
}

fn rss_kib(pid: u32) -> Result<u64> {
    status_kib(pid, "VmRSS")
}

fn agent_pid(agent: &Agent) -> Result<u32> {
    Ok(agent.pid())
}

/// Waits until the subscriber has seen nothing new for `quiet`.
fn settle(sub: &Subscriber, quiet: Duration, limit: Duration) -> Instant {
    let started = Instant::now();
    let mut last_count = sub.messages().len();
    let mut last_change = Instant::now();
    while started.elapsed() < limit && last_change.elapsed() < quiet {
        std::thread::sleep(Duration::from_millis(50));
        let n = sub.messages().len();
        if n != last_count {
            last_count = n;
            last_change = Instant::now();
        }
    }
    last_change
}

fn write_config(json: &str) -> Result<std::path::PathBuf> {
    let p = std::env::temp_dir().join(format!("{}.json", marker("bench-cfg")));
    std::fs::write(&p, json)?;
    Ok(p)
}

fn main() -> Result<()> {
    let mut execs = 20_000;
    let mut window = 10u64;
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--execs" => execs = it.next().context("--execs N")?.parse()?,
            "--window" => window = it.next().context("--window SECONDS")?.parse()?,
            other => bail!("unknown argument {other}; usage: bench-transport [--execs N] [--window SECONDS]"),
        }
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the transport benchmark loads the agent's programs: run as root");
    }
    mosquitto::ensure_installed().map_err(anyhow::Error::msg)?;
    let workload = Workload { execs, distinct: 20 };
    // Every event High, sent each second; a local cache that a per-event
    // window does not fill, so the figures are about the wire alone.
    let config = |cache_bytes: u64| {
        write_config(&format!(
            r#"{{"eventPriorityProcessCreate":"High","eventPriorityProcessTerminate":"High",
                "eventPriorityDroppedEventsStatistics":"High","highPriorityMessageFrequency":"PT1S",
                "cacheSizeProcessCreate":65536,"cacheSizeProcessTerminate":65536,
                "maxLocalCacheSizeInBytes":{cache_bytes}}}"#
        ))
    };
    let cfg = config(256 << 20)?;

    let interval = format!("PT{window}S");
    println!("workload: {execs} execs of 20 distinct command lines; aggregation window {interval}");

    let mut rows = Vec::new();
    for (name, extra) in [("aggregated", vec![]), ("one record per event", vec!["--no-aggregation"])] {
        let mut broker = Broker::start(Auth::Plain, None)?;
        let device = marker("bench");
        let sub = Subscriber::connect(&broker, &device)?;
        let mut a = vec!["--config", cfg.to_str().unwrap(), "--interval", &interval, "--mqtt-url"];
        let url = broker.url();
        a.extend([url.as_str(), "--device-id", &device]);
        a.extend(extra);
        let agent = Agent::start(&a)?;
        let pid = agent_pid(&agent)?;
        let tag = marker("w");
        let took = workload.run(&tag)?;
        let rss = rss_kib(pid)?;
        agent.stop()?;
        settle(&sub, Duration::from_secs(3), Duration::from_secs(120));
        let t = traffic(&sub, &tag);
        println!(
            "{name}: {} messages, {} payload bytes, {} wire bytes, {} events, {} of {execs} marker execs counted; \
             workload {:.1} s; RSS {rss} KiB",
            t.messages,
            t.payload,
            t.wire,
            t.events,
            t.hits,
            took.as_secs_f64()
        );
        broker.stop();
        rows.push((name, t));
    }
    let (agg, per) = (&rows[0].1, &rows[1].1);
    println!();
    println!("| mode | messages | bytes on the wire | events |");
    println!("| --- | ---: | ---: | ---: |");
    println!("| aggregated, batched | {} | {} | {} |", agg.messages, agg.wire, agg.events);
    println!("| per event, batched | {} | {} | {} |", per.messages, per.wire, per.events);
    println!("| per event, one event per message | {} | {} | {} |", per.single_messages, per.single_wire, per.events);
    println!(
        "ratio one-event-per-message / aggregated: {:.0}x messages, {:.0}x bytes",
        per.single_messages as f64 / agg.messages.max(1) as f64,
        per.single_wire as f64 / agg.wire.max(1) as f64
    );

    // Backlog: the broker is down while per-event records fill the local
    // cache; then it comes back and the agent empties it. Once with the
    // default cache (2560000 bytes) and once with a large one, for a backlog
    // long enough to time.
    println!();
    for cache_bytes in [2_560_000u64, 64 << 20] {
        let cfg = config(cache_bytes)?;
        let mut broker = Broker::start(Auth::Plain, None)?;
        let device = marker("bench");
        let sub = Subscriber::connect(&broker, &device)?;
        broker.stop();
        let url = broker.url();
        let a = vec![
            "--config",
            cfg.to_str().unwrap(),
            "--interval",
            &interval,
            "--mqtt-url",
            &url,
            "--device-id",
            &device,
            "--no-aggregation",
        ];
        let agent = Agent::start(&a)?;
        let pid = agent_pid(&agent)?;
        let idle_rss = rss_kib(pid)?;
        workload.run(&marker("fill"))?;
        // Let the last windows close into the cache.
        std::thread::sleep(Duration::from_secs(window + 2));
        let full_rss = rss_kib(pid)?;
        let (hwm, anon) = (status_kib(pid, "VmHWM")?, status_kib(pid, "RssAnon")?);
        broker.restart()?;
        // Reconnecting waits out the backoff (at most 10 s).
        agent.wait_for_log("connected to the MQTT broker", Duration::from_secs(60))?;
        settle(&sub, Duration::from_secs(3), Duration::from_secs(300));
        let msgs = sub.on("events");
        let t = traffic(&sub, "fill");
        let secs = match (msgs.first(), msgs.last()) {
            (Some(f), Some(l)) => l.at.duration_since(f.at).as_secs_f64(),
            _ => 0.0,
        };
        println!(
            "cache {cache_bytes} bytes: RSS {idle_rss} KiB at start, {full_rss} KiB with the cache full (peak \
             {hwm} KiB, anonymous {anon} KiB); backlog of {} \
             messages ({} payload bytes, {} events) received in {secs:.3} s: {:.0} messages/s, {:.1} MB/s, {:.0} \
             events/s",
            t.messages,
            t.payload,
            t.events,
            t.messages as f64 / secs,
            t.payload as f64 / secs / 1e6,
            t.events as f64 / secs
        );
        agent.stop()?;
        std::fs::remove_file(cfg)?;
    }
    std::fs::remove_file(cfg)?;
    Ok(())
}
