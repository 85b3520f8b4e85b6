//! Helpers for the privileged tests: run the real agent binary, cause real
//! events, read what it printed. [`bench`] holds what the benchmarks add.
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

pub mod bench;
pub mod mosquitto;
pub mod sshd;
pub mod tcp;

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

/// Whether this kernel has the tracepoint `category/name`.
pub fn has_tracepoint(category: &str, name: &str) -> bool {
    std::path::Path::new("/sys/kernel/tracing/events").join(category).join(name).is_dir()
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
        let mut cmd = Command::new(hitcount_bin());
        cmd.arg("run").args(args).envs(env.iter().copied());
        Agent::spawn(cmd)
    }

    /// Starts `cmd`, which runs the agent (directly, or in a container whose
    /// output it passes through), and waits until its programs are attached.
    pub fn spawn(mut cmd: Command) -> Result<Agent> {
        let mut child =
            cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().with_context(|| format!("starting {cmd:?}"))?;
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

    /// The agent's process id, for reading its /proc entries.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running until stop").id()
    }

    pub fn stderr(&self) -> Vec<String> {
        self.stderr_lines.lock().unwrap().clone()
    }

    /// Stops the agent (SIGSTOP) until the guard is dropped (SIGCONT),
    /// once every thread of it is stopped: its programs go on counting in
    /// the kernel, and nothing drains their maps meanwhile.
    pub fn pause(&self) -> Result<Paused> {
        let pid = self.pid();
        // SAFETY: plain kill(2) on our own child.
        unsafe { libc::kill(pid as i32, libc::SIGSTOP) };
        let paused = Paused { pid };
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !all_threads_stopped(pid)? {
            if std::time::Instant::now() > deadline {
                bail!("agent {pid} not stopped 10 s after SIGSTOP");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(paused)
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
    pub fn stop(self) -> Result<Vec<Value>> {
        self.stop_with(|child| {
            // SAFETY: plain kill(2) on our own child.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            Ok(())
        })
    }

    /// Like `stop`, with `terminate` asking the agent to end (for a
    /// container, `podman stop`); then waits for the spawned command.
    pub fn stop_with(mut self, terminate: impl FnOnce(&Child) -> Result<()>) -> Result<Vec<Value>> {
        // Taken only afterwards, so that Drop still reaps it if terminate fails.
        terminate(self.child.as_ref().unwrap())?;
        let mut child = self.child.take().unwrap();
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

/// An agent stopped by [`Agent::pause`]; continued on drop.
pub struct Paused {
    pid: u32,
}

impl Drop for Paused {
    fn drop(&mut self) {
        // SAFETY: plain kill(2) on our own child.
        unsafe { libc::kill(self.pid as i32, libc::SIGCONT) };
    }
}

/// Whether every thread of `pid` is in state T (stopped), from
/// /proc/PID/task/*/stat.
fn all_threads_stopped(pid: u32) -> Result<bool> {
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let stat = std::fs::read_to_string(task?.path().join("stat"))?;
        if bench::procfs::stat_fields(&stat)?.first() != Some(&"T") {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Runs `cmd` to completion, failing on a spawn error.
pub fn run(cmd: &mut Command) -> Result<std::process::ExitStatus> {
    cmd.stdout(Stdio::null()).stderr(Stdio::null()).status().with_context(|| format!("running {cmd:?}"))
}

/// podman with the flags `cargo xtask image` built the image with
/// (`PODMAN_GLOBAL_ARGS` in xtask/src/image.rs): under another storage driver
/// podman would not find the image.
pub fn podman() -> Command {
    let mut podman = Command::new("podman");
    podman.args(["--storage-driver", "vfs", "--cgroup-manager", "cgroupfs", "--runtime", "runc"]);
    podman
}

/// The image built by `cargo xtask test` (HITCOUNT_IMAGE); records a skip
/// when there is none, or when the test lacks the privileges to load BPF.
pub fn container_image(test: &str) -> Option<String> {
    if !privileged(test) {
        return None;
    }
    match std::env::var("HITCOUNT_IMAGE") {
        Ok(image) if !image.is_empty() => Some(image),
        _ => {
            skip(
                test,
                "HITCOUNT_IMAGE is not set (run through `cargo xtask test`, which builds the image with podman)",
            );
            None
        }
    }
}

/// A uniquely named container; dropping it removes the container whether
/// or not it still runs, so a failed test leaves nothing behind.
pub struct Container {
    pub name: String,
}

impl Container {
    pub fn new(tag: &str) -> Container {
        Container { name: marker(tag) }
    }

    /// `podman run` of `image` under this name, privileged and in the host's
    /// PID and network namespaces as deploy/daemonset.yaml runs it, with
    /// `mounts` (`-v` arguments) and the agent's `args`.
    pub fn run_command(&self, image: &str, mounts: &[&str], args: &[&str]) -> Command {
        let mut cmd = podman();
        cmd.args(["run", "--rm", "--name", &self.name, "--privileged", "--pid=host", "--network=host"])
            // podman asks for nofile=1048576 by default, above these machines'
            // hard limit, and runc cannot raise a hard limit (EPERM).
            .args(["--ulimit", "nofile=20000:20000", "--ulimit", "nproc=4096:4096"])
            .args(mounts.iter().flat_map(|m| ["--volume", m]))
            .arg(image)
            .args(args);
        cmd
    }

    /// SIGTERM to the agent, SIGKILL after 10 s: what an operator or the
    /// kubelet does.
    pub fn stop(&self) -> Result<()> {
        let status = podman().args(["stop", "--time", "10", &self.name]).stdout(Stdio::null()).status()?;
        if !status.success() {
            bail!("podman stop {} failed with {status}", self.name);
        }
        Ok(())
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = podman()
            .args(["rm", "--force", "--ignore", "--time", "0", &self.name])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// A "remote host": a network namespace joined to this one by a veth pair,
/// on 10.200.N.0/30 (this side .1, the peer .2) and fd00:200:N::/126 (::1,
/// ::2). Helpers started with [`NetNs::spawn`] run inside it. Dropping it
/// kills them and deletes the namespace (which deletes both veth ends).
pub struct NetNs {
    pub name: String,
    pub host_if: String,
    pub index: u8,
    children: Vec<Helper>,
}

impl NetNs {
    pub fn new(index: u8) -> Result<NetNs> {
        let tag = std::process::id() % 100_000;
        let name = format!("hc{index}n{tag}");
        let host_if = format!("hc{index}h{tag}");
        let peer_if = format!("hc{index}p{tag}");
        // Leftovers of a run that was killed before its guard ran.
        let _ = run(Command::new("ip").args(["netns", "del", &name]));
        let _ = run(Command::new("ip").args(["link", "del", &host_if]));
        let ns = NetNs { name: name.clone(), host_if: host_if.clone(), index, children: Vec::new() };
        let v4 = |h| format!("10.200.{index}.{h}/30");
        let v6 = |h| format!("fd00:200:{index}::{h}/126");
        let steps: Vec<Vec<String>> = vec![
            vec!["netns".into(), "add".into(), name.clone()],
            vec![
                "link".into(),
                "add".into(),
                host_if.clone(),
                "type".into(),
                "veth".into(),
                "peer".into(),
                "name".into(),
                peer_if.clone(),
            ],
            vec!["link".into(), "set".into(), peer_if.clone(), "netns".into(), name.clone()],
            vec!["addr".into(), "add".into(), v4(1), "dev".into(), host_if.clone()],
            vec!["-6".into(), "addr".into(), "add".into(), v6(1), "dev".into(), host_if.clone(), "nodad".into()],
            vec!["link".into(), "set".into(), host_if.clone(), "up".into()],
            vec!["-n".into(), name.clone(), "addr".into(), "add".into(), v4(2), "dev".into(), peer_if.clone()],
            vec![
                "-n".into(),
                name.clone(),
                "-6".into(),
                "addr".into(),
                "add".into(),
                v6(2),
                "dev".into(),
                peer_if.clone(),
                "nodad".into(),
            ],
            vec!["-n".into(), name.clone(), "link".into(), "set".into(), peer_if.clone(), "up".into()],
            vec!["-n".into(), name.clone(), "link".into(), "set".into(), "lo".into(), "up".into()],
        ];
        for s in steps {
            let out = Command::new("ip").args(&s).output().with_context(|| format!("ip {s:?}"))?;
            if !out.status.success() {
                bail!("ip {}: {}", s.join(" "), String::from_utf8_lossy(&out.stderr));
            }
        }
        Ok(ns)
    }

    pub fn host_v4(&self) -> String {
        format!("10.200.{}.1", self.index)
    }
    pub fn peer_v4(&self) -> String {
        format!("10.200.{}.2", self.index)
    }
    pub fn host_v6(&self) -> String {
        format!("fd00:200:{}::1", self.index)
    }
    pub fn peer_v6(&self) -> String {
        format!("fd00:200:{}::2", self.index)
    }

    /// Network namespace inode of the peer side, as reported in `netns`.
    pub fn inode(&self) -> u64 {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(format!("/run/netns/{}", self.name)).map(|m| m.ino()).unwrap_or(0)
    }

    /// Starts `net-peer ARGS` inside the namespace, waits for its `ready`,
    /// and returns its pid (`ip netns exec` execs the helper in place).
    pub fn spawn(&mut self, args: &[&str]) -> Result<u32> {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).arg(helper_bin("net-peer")).args(args);
        let helper = start_ready(cmd, args)?;
        let pid = helper.child.id();
        self.children.push(helper);
        Ok(pid)
    }

    /// The counts the helper `spawn` started as `pid` reported for its
    /// next `n` TCP connections (see [`tcp::report_line`]); waits for them.
    pub fn tcp_counts(&self, pid: u32, n: usize) -> Vec<tcp::TcpCounts> {
        let helper = self.children.iter().find(|h| h.child.id() == pid).expect("a helper of this namespace");
        helper.tcp_counts(n)
    }

    /// Kills the helper `spawn` started as `pid`, and waits until it is
    /// gone (its sockets closed).
    pub fn kill(&mut self, pid: u32) {
        if let Some(i) = self.children.iter().position(|h| h.child.id() == pid) {
            drop(self.children.remove(i));
        }
    }

    /// Runs `net-peer ARGS` inside the namespace to completion; the counts
    /// of the TCP connections it reported.
    pub fn run(&self, args: &[&str]) -> Result<Vec<tcp::TcpCounts>> {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.name])
            .arg(helper_bin("net-peer"))
            .args(args)
            .stderr(Stdio::inherit())
            .output()?;
        if !out.status.success() {
            bail!("net-peer {args:?}: {}", out.status);
        }
        Ok(String::from_utf8_lossy(&out.stdout).lines().filter_map(tcp::parse_report_line).collect())
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        // The helpers go first: the namespace is deleted once nothing is in it.
        self.children.clear();
        let _ = run(Command::new("ip").args(["netns", "del", &self.name]));
        let _ = run(Command::new("ip").args(["link", "del", &self.host_if]));
    }
}

/// A running `net-peer`. Its output is read to the end by a thread, so
/// that a helper reporting every connection never blocks on a full pipe.
struct Helper {
    child: Child,
    // A Mutex: a NetNs is shared by threads (a Receiver is not Sync).
    lines: Mutex<mpsc::Receiver<String>>,
}

impl Helper {
    /// The next `n` TCP connection reports; panics after 30 s without one.
    fn tcp_counts(&self, n: usize) -> Vec<tcp::TcpCounts> {
        let lines = self.lines.lock().unwrap();
        let mut counts = Vec::new();
        while counts.len() < n {
            match lines.recv_timeout(Duration::from_secs(30)) {
                Ok(line) => counts.extend(tcp::parse_report_line(&line)),
                Err(e) => panic!("net-peer reported {} of {n} connections: {e}", counts.len()),
            }
        }
        counts
    }
}

impl Drop for Helper {
    /// Killed, and waited for: its sockets are closed when this returns.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `cmd` (a `net-peer`) and waits for its `ready` line; killed
/// again when it says anything else.
fn start_ready(mut cmd: Command, args: &[&str]) -> Result<Helper> {
    let mut child = cmd.stdout(Stdio::piped()).spawn().context("starting net-peer")?;
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    let read = out.read_line(&mut line);
    if read.is_err() || line.trim() != "ready" {
        let _ = child.kill();
        let _ = child.wait();
        bail!("net-peer {args:?} did not start: {line:?} {read:?}");
    }
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in out.lines() {
            let Ok(line) = line else { break };
            // The receiver may be gone (the helper outlived its NetNs): keep draining.
            let _ = tx.send(line);
        }
    });
    Ok(Helper { child, lines: Mutex::new(lines) })
}

/// A `net-peer` helper in this process's network namespace: a server that
/// is already running when the agent starts. Dropping it kills it.
pub struct Peer {
    helper: Helper,
}

impl Peer {
    pub fn spawn(args: &[&str]) -> Result<Peer> {
        let mut cmd = Command::new(helper_bin("net-peer"));
        cmd.args(args);
        Ok(Peer { helper: start_ready(cmd, args)? })
    }

    pub fn pid(&self) -> u32 {
        self.helper.child.id()
    }
}

/// Inode of this process's network namespace.
pub fn own_netns() -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self/ns/net").map(|m| m.ino()).unwrap_or(0)
}

/// A bare network namespace (no links), for state that lives in one: its
/// firewall rules, say. Commands run in it with [`BareNetns::run`];
/// dropping it deletes the namespace and everything in it.
pub struct BareNetns {
    pub name: String,
}

impl BareNetns {
    pub fn new(tag: &str) -> Result<BareNetns> {
        // `ip netns` names are short: the marker's tail is unique enough.
        let m = marker(tag);
        let name = format!("hc{tag}{}", &m[m.len().saturating_sub(9)..]);
        let ok = Command::new("ip").args(["netns", "add", &name]).status().context("ip netns add")?.success();
        if !ok {
            bail!("ip netns add {name} failed");
        }
        Ok(BareNetns { name })
    }

    /// Inode of the namespace, as reported in `netns`.
    pub fn inode(&self) -> u64 {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(format!("/run/netns/{}", self.name)).map(|m| m.ino()).unwrap_or(0)
    }

    /// `cmd` run in the namespace; its stdout, or why it failed.
    pub fn run(&self, cmd: &[&str]) -> Result<String> {
        let out = Command::new("ip").args(["netns", "exec", &self.name]).args(cmd).output().context("ip netns exec")?;
        if !out.status.success() {
            bail!("{cmd:?} in {}: {}", self.name, String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// A command that runs `args` in the namespace (`ip netns exec` execs in place).
    pub fn command(&self, args: &[&str]) -> Command {
        let argv = self.argv(args);
        let mut c = Command::new(&argv[0]);
        c.args(&argv[1..]);
        c
    }

    /// The argv of [`BareNetns::command`], for a caller that spawns it elsewhere.
    pub fn argv(&self, args: &[&str]) -> Vec<String> {
        ["ip", "netns", "exec", &self.name].iter().chain(args).map(|a| a.to_string()).collect()
    }
}

impl Drop for BareNetns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
    }
}
