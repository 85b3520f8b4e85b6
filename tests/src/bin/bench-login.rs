//! `cargo xtask bench login`: what the Login collector costs during a
//! password brute force. A private sshd (a copy of the system's, so that
//! OpenSSH names its PAM service after the copy and uses a PAM file of the
//! benchmark's without pam_unix's failure delay) in a test namespace, and
//! `--attempts` wrong passwords from `--parallel` clients at once, three
//! times over in one run: with no watcher, with the agent (default
//! sources: pam and utmp), and with bpftrace counting the same failures
//! on one uretprobe (the peer a person would reach for). Reported side by
//! side: the CPU time sshd and its clients spent per attempt in each phase
//! (what the uprobes add to the work itself), the BPF time per attempt
//! (bpf_stats) of each watcher, and the agent's CPU time during the
//! attack against its idle time over as long. The agent and bpftrace must
//! each count exactly `--attempts` failures.
use std::{
    path::{Path, PathBuf},
    sync::atomic::{AtomicUsize, Ordering},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use clap::Parser;
use tests::{
    bench::{
        bpf::{Bpftool, RunTimeStats},
        bpftrace::Bpftrace,
        procfs, require_root, tools,
    },
    payloads,
    sshd::{Sshd, TestUser},
    Agent,
};

#[derive(Parser)]
struct Args {
    /// Wrong passwords tried in each phase.
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

/// CPU time of the waited-for children of this process so far (the clients).
fn children_cpu() -> Duration {
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: a valid out-pointer.
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut u) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(u.ru_utime) + tv(u.ru_stime)
}

/// utime + stime + cutime + cstime of `pid` (/proc/PID/stat fields 14-17):
/// the listening sshd and every connection it forked and reaped.
fn tree_cpu(pid: u32) -> Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let f: Vec<u64> = procfs::stat_fields(&stat)?.iter().skip(11).take(4).map(|v| v.parse().unwrap_or(0)).collect();
    Ok(procfs::clock_tick()? * u32::try_from(f.iter().sum::<u64>())?)
}

/// run_time_ns and run_cnt summed over the programs `pick` chooses.
fn bpf_time(bpftool: &Bpftool, pick: impl Fn(&tests::bench::bpf::ProgStats) -> bool) -> Result<(u64, u64)> {
    Ok(bpftool.programs()?.values().filter(|p| pick(p)).fold((0, 0), |(t, c), p| (t + p.run_time_ns, c + p.run_cnt)))
}

fn agent_cpu(pid: u32) -> Result<Duration> {
    procfs::exact_cpu_time(pid)?.map_or_else(|| procfs::cpu_time(pid), Ok)
}

/// One phase: `n` wrong passwords, `parallel` at once. Returns the wall
/// time and the CPU time of sshd plus its clients.
fn attack(sshd: &Sshd, user: &str, n: usize, parallel: usize) -> Result<(Duration, Duration)> {
    let (clients, tree) = (children_cpu(), tree_cpu(sshd.pid())?);
    let done = AtomicUsize::new(0);
    let started = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..parallel {
            s.spawn(|| {
                while done.fetch_add(1, Ordering::Relaxed) < n {
                    let (ok, _) = sshd.ssh(user, "wrong-password", &[], &["true"], "").unwrap_or((true, String::new()));
                    assert!(!ok, "a wrong password was accepted");
                }
            });
        }
    });
    let wall = started.elapsed();
    // The last connections' sshd processes are reaped a moment after the clients end.
    std::thread::sleep(Duration::from_secs(1));
    Ok((wall, children_cpu() - clients + (tree_cpu(sshd.pid())? - tree)))
}

fn libpam() -> Result<PathBuf> {
    tests::sshd::system_libpam().context("su loads no libpam.so.0 here")
}

fn main() -> Result<()> {
    let args = Args::parse();
    require_root()?;
    for tool in ["/usr/sbin/sshd", "/usr/bin/sshpass"] {
        if !Path::new(tool).exists() {
            bail!("no {tool}: apt-get install openssh-server sshpass (cargo xtask test installs both)");
        }
    }
    let bpftool = Bpftool::new(tools::ensure_installed("bpftool", "bpftool")?);
    let bpftrace_bin = tools::ensure_installed("bpftrace", "bpftrace")?;
    let _stats = RunTimeStats::enable()?;
    let private = PrivateSshd::new()?;
    let user = TestUser::new("lb")?;
    let sshd = Sshd::start_program(70, &private.program())?;
    let n = args.attempts;
    let per = |d: Duration| d.as_secs_f64() * 1e6 / n as f64;

    // 1. No watcher.
    let (wall_none, cpu_none) = attack(&sshd, &user.name, n, args.parallel)?;

    // 2. The agent.
    // No state directory: the first phase's attempts, made while no agent
    // ran, would otherwise be reported from btmp when it starts (as they
    // should be in use), and this phase counts only its own.
    let agent = Agent::start(&["--interval", "PT1H", "--state-dir", ""])?;
    let pid = agent.pid();
    let pam = |p: &tests::bench::bpf::ProgStats| p.name.starts_with("pam_");
    let (t0, c0) = (bpf_time(&bpftool, pam)?, agent_cpu(pid)?);
    let (wall_hc, cpu_hc) = attack(&sshd, &user.name, n, args.parallel)?;
    let (t1, c1) = (bpf_time(&bpftool, pam)?, agent_cpu(pid)?);
    std::thread::sleep(wall_hc);
    let c2 = agent_cpu(pid)?;
    let events = agent.stop()?;
    let failed: Vec<&serde_json::Value> = payloads(&events, "Login")
        .into_iter()
        .filter(|p| p["user_name"] == user.name.as_str() && p["operation"] == "LoginFailed")
        .collect();
    let reported: u64 = failed.iter().map(|p| p["hit_count"].as_u64().unwrap_or(0)).sum();
    for p in &failed {
        println!("LoginFailed from {}: executable {}, hit_count {}", p["source"], p["executable"], p["hit_count"]);
    }

    // 3. bpftrace: failed pam_authenticate calls counted on one uretprobe.
    let before: Vec<u32> = bpftool.programs()?.keys().copied().collect();
    let script = format!("uretprobe:{}:pam_authenticate /retval != 0/ {{ @failed = count(); }}", libpam()?.display());
    let bt = Bpftrace::start(&bpftrace_bin, &bpftool, &script, &[])?;
    // "Attaching" is printed before the probe is: give it a moment.
    std::thread::sleep(Duration::from_secs(2));
    let theirs: Vec<u32> = bpftool.programs()?.keys().copied().filter(|id| !before.contains(id)).collect();
    let mine = |p: &tests::bench::bpf::ProgStats| theirs.contains(&p.id);
    let b0 = bpf_time(&bpftool, mine)?;
    let (wall_bt, cpu_bt) = attack(&sshd, &user.name, n, args.parallel)?;
    let b1 = bpf_time(&bpftool, mine)?;
    let out = bt.stop()?;
    let counted: u64 =
        out.iter().find_map(|l| l.strip_prefix("@failed: ")).and_then(|v| v.trim().parse().ok()).unwrap_or(0);
    let failed_in_log = sshd.count(&format!("Failed password for {} from", user.name));

    let (hc_ns, hc_runs) = (t1.0 - t0.0, t1.1 - t0.1);
    let (bt_ns, bt_runs) = (b1.0 - b0.0, b1.1 - b0.1);
    let (attack_cpu, idle_cpu) = (c1 - c0, c2 - c1);
    println!("{n} wrong passwords per phase, {} clients at once; sshd's log: {failed_in_log} failures", args.parallel);
    println!("counted: Hitcount LoginFailed hit_count {reported}, bpftrace @failed {counted}");
    println!(
        "sshd + clients CPU per attempt: none {:.0} µs, Hitcount {:.0} µs ({:.3}x), bpftrace {:.0} µs ({:.3}x); wall {:.1} / {:.1} / {:.1} s",
        per(cpu_none),
        per(cpu_hc),
        cpu_hc.as_secs_f64() / cpu_none.as_secs_f64(),
        per(cpu_bt),
        cpu_bt.as_secs_f64() / cpu_none.as_secs_f64(),
        wall_none.as_secs_f64(),
        wall_hc.as_secs_f64(),
        wall_bt.as_secs_f64()
    );
    println!(
        "BPF time per attempt (bpf_stats): Hitcount {:.0} ns ({:.1} runs of {:.0} ns), bpftrace {:.0} ns ({:.1} runs of {:.0} ns)",
        hc_ns as f64 / n as f64,
        hc_runs as f64 / n as f64,
        hc_ns as f64 / hc_runs.max(1) as f64,
        bt_ns as f64 / n as f64,
        bt_runs as f64 / n as f64,
        bt_ns as f64 / bt_runs.max(1) as f64
    );
    println!(
        "agent CPU: {:.1} ms during the attack, {:.1} ms idle as long: {:.1} ms per 1,000 attempts above idle, {:.4} of sshd's",
        attack_cpu.as_secs_f64() * 1e3,
        idle_cpu.as_secs_f64() * 1e3,
        attack_cpu.saturating_sub(idle_cpu).as_secs_f64() * 1e6 / n as f64,
        attack_cpu.as_secs_f64() / cpu_hc.as_secs_f64()
    );
    println!(
        "{}",
        serde_json::json!({
            "attempts": n,
            "reported": reported,
            "bpftrace_counted": counted,
            "sshd_cpu_us_per_attempt_none": per(cpu_none),
            "sshd_cpu_us_per_attempt_hitcount": per(cpu_hc),
            "sshd_cpu_us_per_attempt_bpftrace": per(cpu_bt),
            "uprobe_ns_per_attempt": hc_ns as f64 / n as f64,
            "uprobe_runs_per_attempt": hc_runs as f64 / n as f64,
            "bpftrace_ns_per_attempt": bt_ns as f64 / n as f64,
            "agent_cpu_attack_ms": attack_cpu.as_secs_f64() * 1e3,
            "agent_cpu_idle_ms": idle_cpu.as_secs_f64() * 1e3,
        })
    );
    if reported != n as u64 || counted != n as u64 {
        bail!("counted {reported} (Hitcount) and {counted} (bpftrace) failed logins of {n}");
    }
    Ok(())
}
