//! Helpers for the privileged tests: run the real agent binary, cause real
//! events, read what it printed.
use std::{
    io::{BufRead, BufReader},
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicU64, Ordering},
        mpsc, Arc, Mutex,
    },
    thread::JoinHandle,
    time::Duration,
};

use anyhow::{bail, Context, Result};
use serde_json::Value;

pub mod mosquitto;

/// Returns false (after recording why) when this test cannot run here.
/// `cargo xtask test` counts the recorded skips and fails CI when the
/// privileged tier ran nothing.
pub fn privileged(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if root && std::path::Path::new("/sys/kernel/btf/vmlinux").exists() {
        return true;
    }
    let why = if root { "no /sys/kernel/btf/vmlinux" } else { "not root" };
    skip(test, why);
    false
}

pub fn skip(test: &str, why: &str) {
    println!("SKIP {test}: {why}");
    if let Ok(log) = std::env::var("HITCOUNT_SKIP_LOG") {
        use std::io::Write;
        if let Ok(mut f) = std::fs::OpenOptions::new().append(true).create(true).open(log) {
            let _ = writeln!(f, "{test}: {why}");
        }
    }
}

/// The agent binary built by `cargo xtask build`.
pub fn hitcount_bin() -> PathBuf {
    match std::env::var_os("HITCOUNT_BIN") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/release/hitcount"),
    }
}

/// A helper binary of this crate (`forker`, ...), built next to the tests.
pub fn helper_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    // target/<profile>/deps/<test> -> target/<profile>/<name>
    let dir = exe.parent().and_then(|d| d.parent()).expect("target dir");
    dir.join(name)
}

/// A string no other test or process uses.
pub fn marker(tag: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    format!("hc-{tag}-{}-{nanos}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

/// The running agent. Dropping it kills it; `stop` ends it the way an
/// operator would (SIGTERM) and returns everything it printed.
pub struct Agent {
    child: Option<Child>,
    stdout: Option<JoinHandle<Vec<String>>>,
    stderr_lines: Arc<Mutex<Vec<String>>>,
    stderr_reader: Option<JoinHandle<()>>,
}

impl Agent {
    /// Starts `hitcount run ARGS` and waits until its programs are attached.
    pub fn start(args: &[&str]) -> Result<Agent> {
        Agent::start_with(args, &[])
    }

    /// Like [`Agent::start`], with extra environment variables.
    pub fn start_with(args: &[&str], env: &[(&str, &str)]) -> Result<Agent> {
        let mut child = Command::new(hitcount_bin())
            .arg("run")
            .args(args)
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {}", hitcount_bin().display()))?;
        let out = child.stdout.take().unwrap();
        let stdout = std::thread::spawn(move || BufReader::new(out).lines().map_while(|l| l.ok()).collect());
        let err = child.stderr.take().unwrap();
        let stderr_lines = Arc::new(Mutex::new(Vec::new()));
        let (ready_tx, ready_rx) = mpsc::channel();
        let lines = stderr_lines.clone();
        let stderr_reader = std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(|l| l.ok()) {
                eprintln!("agent: {line}");
                if line.contains("collecting:") {
                    let _ = ready_tx.send(());
                }
                lines.lock().unwrap().push(line);
            }
        });
        let mut agent =
            Agent { child: Some(child), stdout: Some(stdout), stderr_lines, stderr_reader: Some(stderr_reader) };
        if ready_rx.recv_timeout(Duration::from_secs(60)).is_err() {
            let status = agent.child.as_mut().unwrap().try_wait()?;
            bail!("agent did not become ready (exit: {status:?}); stderr: {:?}", agent.stderr());
        }
        Ok(agent)
    }

    pub fn stderr(&self) -> Vec<String> {
        self.stderr_lines.lock().unwrap().clone()
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// Waits until a stderr line contains `needle`.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> Result<String> {
        let started = std::time::Instant::now();
        while started.elapsed() < timeout {
            if let Some(l) = self.stderr().into_iter().find(|l| l.contains(needle)) {
                return Ok(l);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!("no log line with {needle:?} within {timeout:?}; stderr: {:#?}", self.stderr())
    }

    /// SIGTERM, wait for a clean exit, and return every stderr line.
    pub fn stop_logs(self) -> Result<Vec<String>> {
        let lines = self.stderr_lines.clone();
        self.stop()?;
        let out = lines.lock().unwrap().clone();
        Ok(out)
    }

    /// SIGTERM, wait, and parse every stdout line as one JSON event.
    pub fn stop(mut self) -> Result<Vec<Value>> {
        let mut child = self.child.take().unwrap();
        // SAFETY: plain kill(2) on our own child.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let status = child.wait()?;
        let lines = self.stdout.take().unwrap().join().expect("stdout reader");
        // Every stderr line is read before the caller looks at them.
        let _ = self.stderr_reader.take().unwrap().join();
        if !status.success() {
            bail!("agent exited with {status}; stderr: {:?}", self.stderr());
        }
        lines.iter().map(|l| serde_json::from_str(l).with_context(|| format!("stdout line is not JSON: {l}"))).collect()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Payloads of every event of `event_type`.
pub fn payloads<'a>(events: &'a [Value], event_type: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["event_type"] == event_type).map(|e| &e["payload"]).collect()
}

/// Sum of `hit_count` over payloads matching `pred`.
pub fn hits(events: &[Value], event_type: &str, pred: impl Fn(&Value) -> bool) -> u64 {
    payloads(events, event_type).into_iter().filter(|p| pred(p)).map(|p| p["hit_count"].as_u64().unwrap()).sum()
}

/// Checks, window by window, that reported hits plus dropped events equal
/// the events the kernel saw: nothing is lost without being counted.
/// Returns (total seen, total dropped) for `source`.
pub fn assert_windows_account_for_every_event(events: &[Value], source: &str) -> (u64, u64) {
    let (mut seen, mut dropped) = (0, 0);
    for stats in events
        .iter()
        .filter(|e| e["event_type"] == "DroppedEventsStatistics" && e["payload"]["source_event_type"] == source)
    {
        let p = &stats["payload"];
        let window_hits: u64 = events
            .iter()
            .filter(|e| e["event_type"] == source && e["window_start"] == stats["window_start"])
            .map(|e| e["payload"]["hit_count"].as_u64().unwrap())
            .sum();
        let s = p["events_seen"].as_u64().unwrap();
        let d = p["dropped_events"].as_u64().unwrap();
        assert_eq!(
            window_hits + d,
            s,
            "{source} window {}: {window_hits} reported + {d} dropped != {s} seen",
            stats["window_start"]
        );
        assert_eq!(
            d,
            p["cache_full"].as_u64().unwrap()
                + p["kernel_map_full"].as_u64().unwrap()
                + p["kernel_insert_race"].as_u64().unwrap()
        );
        seen += s;
        dropped += d;
    }
    (seen, dropped)
}

/// Runs `cmd` to completion, failing on a spawn error.
pub fn run(cmd: &mut Command) -> Result<std::process::ExitStatus> {
    cmd.stdout(Stdio::null()).stderr(Stdio::null()).status().with_context(|| format!("running {cmd:?}"))
}
