//! bpftrace as the peer to compare with: the same aggregation as a one-liner,
//! what a person would reach for instead of an agent.
use std::{
    io::{BufRead, BufReader},
    path::Path,
    process::{Child, Command, Stdio},
    sync::{mpsc, Arc, Mutex},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use super::{bpf::Bpftool, check_interrupted};

/// Compiling a script with LLVM takes seconds, longer on a busy machine.
const START_TIMEOUT: Duration = Duration::from_secs(120);

/// A running `bpftrace -e SCRIPT`. Dropping it kills it; `stop` ends it with
/// SIGINT, which makes it print its maps.
pub struct Bpftrace {
    child: Option<Child>,
    stdout: Option<JoinHandle<Vec<String>>>,
    stderr: Arc<Mutex<Vec<String>>>,
}

impl Bpftrace {
    /// Starts the script and returns once a program is attached to every
    /// tracepoint in `hooks`. bpftrace prints "Attaching N probes..." before
    /// it attaches them, so that line alone is not enough.
    pub fn start(bpftrace: &Path, bpftool: &Bpftool, script: &str, hooks: &[&str]) -> Result<Bpftrace> {
        let mut child = Command::new(bpftrace)
            .args(["-e", script])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {}", bpftrace.display()))?;
        let (attaching_tx, attaching_rx) = mpsc::channel();
        let out = child.stdout.take().expect("piped");
        let stdout = std::thread::spawn(move || {
            let mut lines = Vec::new();
            for line in BufReader::new(out).lines().map_while(|l| l.ok()) {
                if line.starts_with("Attaching") {
                    let _ = attaching_tx.send(());
                }
                lines.push(line);
            }
            lines
        });
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let lines = stderr.clone();
        let err = child.stderr.take().expect("piped");
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(|l| l.ok()) {
                lines.lock().unwrap().push(line);
            }
        });
        let mut bt = Bpftrace { child: Some(child), stdout: Some(stdout), stderr };
        // Disconnected (bpftrace exited) or timed out: either way it never got there.
        if attaching_rx.recv_timeout(START_TIMEOUT).is_err() {
            bail!("bpftrace did not start attaching its probes; stderr: {:?}", bt.stderr());
        }
        let started = Instant::now();
        loop {
            let attached = bpftool.attachments(bt.pid())?;
            if hooks.iter().all(|h| attached.contains_key(*h)) {
                return Ok(bt);
            }
            if let Some(status) = bt.child.as_mut().expect("running").try_wait()? {
                bail!("bpftrace exited ({status}) while attaching; stderr: {:?}", bt.stderr());
            }
            if started.elapsed() > START_TIMEOUT {
                bail!("bpftrace attached only {:?} of {hooks:?}", attached.keys().collect::<Vec<_>>());
            }
            check_interrupted()?;
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running until stop").id()
    }

    pub fn stderr(&self) -> Vec<String> {
        self.stderr.lock().unwrap().clone()
    }

    /// SIGINT, wait, and return what it printed on stdout (its maps).
    pub fn stop(mut self) -> Result<Vec<String>> {
        let mut child = self.child.take().expect("running until stop");
        // SAFETY: plain kill(2) on our own child.
        unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
        let status = child.wait()?;
        let lines = self.stdout.take().expect("reader").join().expect("stdout reader");
        if !status.success() {
            bail!("bpftrace exited with {status}; stderr: {:?}", self.stderr());
        }
        Ok(lines)
    }
}

impl Drop for Bpftrace {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The sum of a printed map's values over keys whose first element is
/// `first`: `@name[first, ...]: N` lines, as bpftrace prints them on exit.
pub fn map_sum(output: &[String], name: &str, first: &str) -> u64 {
    let prefix = format!("@{name}[");
    output
        .iter()
        .filter_map(|l| {
            let (key, value) = l.strip_prefix(&prefix)?.split_once("]: ")?;
            (key.split(", ").next() == Some(first)).then(|| value.trim().parse::<u64>().ok())?
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::map_sum;

    #[test]
    fn map_sum_matches_the_first_key_element() {
        let out: Vec<String> =
            ["Attaching 3 probes...", "", "@[true, 0]: 7", "@[true, 1000]: 2", "@[truex, 0]: 5", "@e[true]: 9"]
                .map(String::from)
                .into();
        assert_eq!(map_sum(&out, "", "true"), 9);
        assert_eq!(map_sum(&out, "e", "true"), 9);
        assert_eq!(map_sum(&out, "f", "true"), 0);
    }
}
