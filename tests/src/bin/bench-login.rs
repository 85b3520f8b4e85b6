//! `cargo xtask bench login`: what the Login collector costs during a
//! password brute force. A private sshd (a copy of the system's, so that
//! OpenSSH names its PAM service after the copy and uses a PAM file of the
//! benchmark's without pam_unix's failure delay) in a test namespace; an
//! agent with the default sources (pam and utmp); `--attempts` wrong
//! passwords from `--parallel` clients at once. Reported side by side from
//! the one run: the kernel time of the PAM uprobes per attempt (bpf_stats),
//! the agent's CPU time during the attack against its idle CPU time over as
//! long a period, and against the CPU time sshd itself spent on the
//! attempts. The agent must report exactly `--attempts` failed logins.
use std::{
    path::PathBuf,
    sync::atomic::{AtomicUsize, Ordering},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use clap::Parser;
use tests::{
    bench::{
        bpf::{Bpftool, RunTimeStats},
        procfs, require_root, tools,
    },
    payloads,
    sshd::{Sshd, TestUser},
    Agent,
};

#[derive(Parser)]
struct Args {
    /// Wrong passwords tried.
    #[arg(long, default_value_t = 1000)]
    attempts: usize,
    /// Clients at once (sshd's MaxStartups starts refusing past 10).
    #[arg(long, default_value_t = 4)]
    parallel: usize,
}

/// The program name, and so the PAM service, of the benchmark's sshd.
const SERVICE: &str = "hcbench-sshd";

/// The copied sshd and its PAM file, removed on drop.
struct PrivateSshd {
    dir: PathBuf,
    pam_file: PathBuf,
}

impl PrivateSshd {
    fn new() -> Result<PrivateSshd> {
        let dir = std::env::temp_dir().join(format!("hc-bench-login-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        std::fs::copy("/usr/sbin/sshd", dir.join(SERVICE)).context("copying /usr/sbin/sshd")?;
        let pam_file = PathBuf::from("/etc/pam.d").join(SERVICE);
        // pam_unix waits 2 s after a failure unless told not to: the attack
        // would measure the delay, not the work.
        std::fs::write(
            &pam_file,
            "auth required pam_unix.so nodelay\naccount required pam_unix.so\nsession required pam_unix.so\n",
        )?;
        Ok(PrivateSshd { dir, pam_file })
    }

    fn program(&self) -> PathBuf {
        self.dir.join(SERVICE)
    }
}

impl Drop for PrivateSshd {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.pam_file);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// CPU time of the waited-for children of this process so far.
fn children_cpu() -> Duration {
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: a valid out-pointer.
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut u) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(u.ru_utime) + tv(u.ru_stime)
}

/// run_time_ns and run_cnt summed over the loaded PAM programs.
fn pam_stats(bpftool: &Bpftool) -> Result<(u64, u64)> {
    let progs = bpftool.programs()?;
    let pam = progs.values().filter(|p| p.name.starts_with("pam_"));
    Ok(pam.fold((0, 0), |(t, c), p| (t + p.run_time_ns, c + p.run_cnt)))
}

fn agent_cpu(pid: u32) -> Result<Duration> {
    procfs::exact_cpu_time(pid)?.map_or_else(|| procfs::cpu_time(pid), Ok)
}

fn main() -> Result<()> {
    let args = Args::parse();
    require_root()?;
    for tool in ["/usr/sbin/sshd", "/usr/bin/sshpass"] {
        if !std::path::Path::new(tool).exists() {
            bail!("no {tool}: apt-get install openssh-server sshpass (cargo xtask test installs both)");
        }
    }
    let bpftool = Bpftool::new(tools::ensure_installed("bpftool", "bpftool")?);
    let _stats = RunTimeStats::enable()?;
    let private = PrivateSshd::new()?;
    let user = TestUser::new("lb")?;
    let sshd = Sshd::start_program(70, &private.program())?;
    let agent = Agent::start(&["--interval", "PT1H"])?;
    let pid = agent.pid();

    let (t0, c0) = (pam_stats(&bpftool)?, agent_cpu(pid)?);
    let done = AtomicUsize::new(0);
    let clients_before = children_cpu();
    let started = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..args.parallel {
            s.spawn(|| {
                while done.fetch_add(1, Ordering::Relaxed) < args.attempts {
                    let (ok, _) =
                        sshd.ssh(&user.name, "wrong-password", &[], &["true"], "").unwrap_or((true, String::new()));
                    assert!(!ok, "a wrong password was accepted");
                }
            });
        }
    });
    let attack = started.elapsed();
    let clients = children_cpu() - clients_before;
    let (t1, c1) = (pam_stats(&bpftool)?, agent_cpu(pid)?);
    // Idle for as long, right after: what the agent costs doing nothing.
    std::thread::sleep(attack);
    let c2 = agent_cpu(pid)?;
    let failed_in_log = sshd.count(&format!("Failed password for {} from", user.name));
    let sshd_before = children_cpu();
    drop(sshd);
    let sshd_cpu = children_cpu() - sshd_before;
    let events = agent.stop()?;
    let reported: u64 = payloads(&events, "Login")
        .iter()
        .filter(|p| p["user_name"] == user.name.as_str() && p["operation"] == "LoginFailed")
        .map(|p| p["hit_count"].as_u64().unwrap_or(0))
        .sum();

    let (run_ns, runs) = (t1.0 - t0.0, t1.1 - t0.1);
    let attack_cpu = c1 - c0;
    let idle_cpu = c2 - c1;
    let per_attempt_ns = run_ns as f64 / args.attempts as f64;
    println!(
        "attempts: {} ({} in sshd's log), {} clients at once, {:.1} s",
        args.attempts,
        failed_in_log,
        args.parallel,
        attack.as_secs_f64()
    );
    println!("LoginFailed reported: hit_count {reported} of {}", args.attempts);
    println!(
        "PAM uprobes (bpf_stats): {runs} runs, {:.0} ns per run, {per_attempt_ns:.0} ns per attempt",
        run_ns as f64 / runs.max(1) as f64
    );
    println!(
        "agent CPU: {:.1} ms during the attack, {:.1} ms idle as long: {:.2} ms per 1,000 attempts above idle",
        attack_cpu.as_secs_f64() * 1e3,
        idle_cpu.as_secs_f64() * 1e3,
        (attack_cpu.saturating_sub(idle_cpu)).as_secs_f64() * 1e3 * 1000.0 / args.attempts as f64
    );
    println!(
        "sshd CPU {:.0} ms, clients (ssh, sshpass) {:.0} ms: agent / sshd = {:.4}",
        sshd_cpu.as_secs_f64() * 1e3,
        clients.as_secs_f64() * 1e3,
        attack_cpu.as_secs_f64() / sshd_cpu.as_secs_f64().max(1e-9)
    );
    println!(
        "{}",
        serde_json::json!({
            "attempts": args.attempts,
            "reported": reported,
            "uprobe_runs": runs,
            "uprobe_ns_per_attempt": per_attempt_ns.round(),
            "agent_cpu_attack_ms": (attack_cpu.as_secs_f64() * 1e3),
            "agent_cpu_idle_ms": (idle_cpu.as_secs_f64() * 1e3),
            "sshd_cpu_ms": (sshd_cpu.as_secs_f64() * 1e3),
            "agent_over_sshd": attack_cpu.as_secs_f64() / sshd_cpu.as_secs_f64().max(1e-9),
        })
    );
    if reported != args.attempts as u64 {
        bail!("the agent reported {reported} failed logins of {}", args.attempts);
    }
    Ok(())
}
