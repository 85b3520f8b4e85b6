//! `cargo xtask bench snapshot`: what the snapshot collectors cost on this
//! machine. CPU time and peak memory of one full snapshot (`hitcount
//! snapshot`, every snapshot type on), side by side with the same binary
//! doing no work (`hitcount config defaults`), interleaved; then the bytes
//! of snapshot traffic a day at the defaults (snapshotFrequency PT13H plus
//! one at start), with and without snapshotDeltas, from a running agent
//! taking a snapshot every second. Then SBoM alone (`hitcount snapshot
//! --only SBoM`) on this machine and on a generated fake root holding a
//! dpkg database of 5,000 packages shaped like real stanzas; OSBaseline
//! alone (its full table of checks) on this machine. Last, FirewallConfiguration with 10,000
//! nftables rules loaded in a test namespace (`nft -f` of a generated file)
//! against the same command in an empty namespace.
use std::{
    io::{BufRead, BufReader, Write},
    os::unix::process::ExitStatusExt,
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{bail, Context, Result};
use clap::Parser;
use serde_json::Value;
use tests::{bench::median, hitcount_bin, marker, Agent, BareNetns};

#[derive(Parser)]
struct Args {
    /// Runs of each command for the CPU and memory figures.
    #[arg(long, default_value_t = 15)]
    runs: usize,
    /// Snapshots taken by the running agent for the traffic figures.
    #[arg(long, default_value_t = 10)]
    snapshots: u64,
    /// Packages in the generated dpkg database of the SBoM figures.
    #[arg(long, default_value_t = 5000)]
    packages: usize,
    /// nftables rules loaded for the FirewallConfiguration figures.
    #[arg(long, default_value_t = 10_000)]
    firewall_rules: usize,
}

/// An nft script of `n` distinct rules (source prefix and port vary) in one
/// base chain of an inet table.
fn ruleset(n: usize) -> String {
    let mut s =
        String::from("table inet hcbench {\n  chain input {\n    type filter hook input priority 0; policy accept;\n");
    for i in 0..n {
        s += &format!(
            "    ip saddr 10.{}.{}.0/24 tcp dport {} counter accept\n",
            i / 256 % 256,
            i % 256,
            1024 + i % 60000
        );
    }
    s + "  }\n}\n"
}

/// FirewallConfiguration with `rules` rules loaded vs none: wall time, CPU
/// and peak RSS of `hitcount snapshot --only FirewallConfiguration`.
fn firewall(spawner: &mut Spawner, runs: usize, rules: usize) -> Result<()> {
    let empty = BareNetns::new("fwb")?;
    let full = BareNetns::new("fwb")?;
    let script = std::env::temp_dir().join(format!("{}.nft", marker("bench-fw")));
    std::fs::write(&script, ruleset(rules))?;
    let loaded = full.run(&["nft", "-f", script.to_str().unwrap()]);
    let _ = std::fs::remove_file(&script);
    loaded?;
    let bin = hitcount_bin();
    let args = [bin.to_str().unwrap(), "snapshot", "--only", "FirewallConfiguration"];
    let (full_argv, empty_argv) = (full.argv(&args), empty.argv(&args));
    let (mut wall, mut cpu, mut rss, mut base_wall, mut base_cpu, mut base_rss) =
        (vec![], vec![], vec![], vec![], vec![], vec![]);
    let mut out = 0;
    for _ in 0..runs {
        let t = std::time::Instant::now();
        let s = spawner.measure(&full_argv)?;
        wall.push(t.elapsed().as_secs_f64() * 1e3);
        let t = std::time::Instant::now();
        let b = spawner.measure(&empty_argv)?;
        base_wall.push(t.elapsed().as_secs_f64() * 1e3);
        cpu.push(s.cpu.as_secs_f64() * 1e3);
        rss.push(s.max_rss_kib as f64);
        base_cpu.push(b.cpu.as_secs_f64() * 1e3);
        base_rss.push(b.max_rss_kib as f64);
        out = s.stdout_bytes;
    }
    let m = |v: &[f64]| median(v).unwrap_or(0.0);
    println!(
        "FirewallConfiguration, {rules} nftables rules vs an empty namespace ({runs} runs, medians, interleaved):"
    );
    println!(
        "  wall: {:.1} ms (empty {:.1} ms, ratio {:.2}); CPU: {:.1} ms (empty {:.1} ms, ratio {:.2}); peak RSS: {:.1} MiB (empty {:.1} MiB, ratio {:.2}); output {} bytes",
        m(&wall),
        m(&base_wall),
        m(&wall) / m(&base_wall).max(1e-9),
        m(&cpu),
        m(&base_cpu),
        m(&cpu) / m(&base_cpu).max(1e-9),
        m(&rss) / 1024.0,
        m(&base_rss) / 1024.0,
        m(&rss) / m(&base_rss).max(1e-9),
        out
    );
    Ok(())
}

/// Every snapshot type on, kernel collectors off.
const ALL_ON: &str = r#""eventPriorityProcessCreate":"Off","eventPriorityProcessTerminate":"Off",
    "eventPriorityConnectionCreate":"Off","eventPrioritySystemInformation":"Low","eventPriorityLocalUsers":"Low",
    "eventPriorityListeningPorts":"Low","eventPriorityConnectedHardware":"Low","eventPriorityFirewallConfiguration":"Low",
    "eventPriorityOSBaseline":"Low","eventPrioritySBoM":"Low""#;

struct Usage {
    cpu: Duration,
    max_rss_kib: u64,
    stdout_bytes: usize,
}

/// Runs the measured commands from a process forked at start, while the
/// bench was small. A child's peak RSS (wait4's ru_maxrss) is at least the
/// memory of the process that spawned it: Linux keeps the old mm's
/// high-water mark across execve, and a vfork child's old mm is its
/// parent's. The bench grows to tens of MiB (the traffic figures parse
/// every event), which had made every later peak its own: the empty
/// namespace's FirewallConfiguration measured 88 MiB.
struct Spawner {
    requests: std::io::PipeWriter,
    replies: BufReader<std::io::PipeReader>,
}

impl Spawner {
    /// Forks the spawner. Called first thing in main: one thread, little memory.
    fn fork() -> Result<Spawner> {
        let (req_r, req_w) = std::io::pipe()?;
        let (rep_r, rep_w) = std::io::pipe()?;
        // SAFETY: the process has one thread (nothing has started another
        // yet), so the child may allocate and spawn after fork.
        match unsafe { libc::fork() } {
            -1 => bail!("fork: {}", std::io::Error::last_os_error()),
            0 => {
                drop((req_w, rep_r));
                serve(req_r, rep_w)
            }
            _ => Ok(Spawner { requests: req_w, replies: BufReader::new(rep_r) }),
        }
    }

    /// Runs `argv` to its end and returns its own CPU time and peak RSS.
    fn measure(&mut self, argv: &[impl AsRef<str>]) -> Result<Usage> {
        let argv: Vec<&str> = argv.iter().map(AsRef::as_ref).collect();
        assert!(argv.iter().all(|a| !a.contains(['\0', '\n'])), "{argv:?}");
        writeln!(self.requests, "{}", argv.join("\0"))?;
        let mut reply = String::new();
        self.replies.read_line(&mut reply)?;
        let fields: Vec<&str> = reply.split_whitespace().collect();
        match fields.as_slice() {
            ["ok", cpu_ns, rss, bytes] => Ok(Usage {
                cpu: Duration::from_nanos(cpu_ns.parse()?),
                max_rss_kib: rss.parse()?,
                stdout_bytes: bytes.parse()?,
            }),
            _ => bail!("{argv:?}: {}", reply.trim()),
        }
    }
}

/// The spawner's loop: one request (argv, NUL-separated) per line, one
/// reply per request; exits when the bench closes its end.
fn serve(requests: std::io::PipeReader, mut replies: std::io::PipeWriter) -> ! {
    use std::os::unix::ffi::OsStrExt;
    let mut requests = BufReader::new(requests);
    let mut line = Vec::new();
    loop {
        line.clear();
        if !matches!(requests.read_until(b'\n', &mut line), Ok(n) if n > 0) {
            // SAFETY: ends the forked child without running the parent's exit handlers.
            unsafe { libc::_exit(0) }
        }
        line.pop();
        let argv: Vec<&std::ffi::OsStr> = line.split(|&b| b == 0).map(std::ffi::OsStr::from_bytes).collect();
        let reply = match run_measured(Command::new(argv[0]).args(&argv[1..])) {
            Ok(u) => format!("ok {} {} {}\n", u.cpu.as_nanos(), u.max_rss_kib, u.stdout_bytes),
            Err(e) => format!("error {e:#}\n").replace('\n', " ") + "\n",
        };
        if replies.write_all(reply.as_bytes()).is_err() {
            // SAFETY: as above.
            unsafe { libc::_exit(1) }
        }
    }
}

/// Runs `cmd` to its end, counting its stdout through one fixed buffer (so
/// that the spawner stays small), and returns its CPU time and peak RSS (wait4).
fn run_measured(cmd: &mut Command) -> Result<Usage> {
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::null()).spawn().context("spawn")?;
    let pid = child.id() as i32;
    let mut out = child.stdout.take().unwrap();
    let (mut buf, mut bytes) = ([0u8; 64 << 10], 0);
    loop {
        match std::io::Read::read(&mut out, &mut buf) {
            Ok(0) => break,
            Ok(n) => bytes += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e).context("reading stdout"),
        }
    }
    let mut status = 0;
    // SAFETY: an all-zero rusage is valid; wait4 fills it for our own child.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: pid is our child, the out-pointers are valid.
    if unsafe { libc::wait4(pid, &mut status, 0, &mut ru) } != pid {
        bail!("wait4: {}", std::io::Error::last_os_error());
    }
    if !std::process::ExitStatus::from_raw(status).success() {
        bail!("{cmd:?} failed");
    }
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    Ok(Usage { cpu: tv(ru.ru_utime) + tv(ru.ru_stime), max_rss_kib: ru.ru_maxrss as u64, stdout_bytes: bytes })
}

/// Bytes of the snapshot events (and their statistics) of snapshot number `n`.
fn snapshot_bytes(lines: &[String], sequence: u64) -> usize {
    let mut bytes = 0;
    for l in lines {
        let Ok(v) = serde_json::from_str::<Value>(l) else { continue };
        if v["snapshot"]["sequence"] == sequence {
            bytes += l.len() + 1;
        }
    }
    bytes
}

fn traffic(config: &str, snapshots: u64) -> Result<(Vec<usize>, u64)> {
    let path = std::env::temp_dir().join(format!("{}.json", marker("bench-snapshot")));
    std::fs::write(&path, config)?;
    let agent = Agent::start(&["--config", path.to_str().unwrap()])?;
    // A snapshot of everything takes a while on a busy machine: leave time
    // for `snapshots` of them, and count only those that were taken.
    std::thread::sleep(Duration::from_secs(2 * snapshots + 3));
    let events = agent.stop()?;
    let _ = std::fs::remove_file(&path);
    let lines: Vec<String> = events.iter().map(|e| e.to_string()).collect();
    let per: Vec<usize> = (1..=snapshots).map(|n| snapshot_bytes(&lines, n)).take_while(|&b| b > 0).collect();
    let items = events.iter().filter(|e| e["snapshot"]["sequence"] == 1).count() as u64;
    Ok((per, items))
}

/// A dpkg status file of `n` installed packages, each stanza shaped like a
/// real one (~900 bytes: depends, conffiles, a multi-line description).
fn dpkg_status(n: usize) -> String {
    let mut s = String::with_capacity(n * 1000);
    for i in 0..n {
        s.push_str(&format!(
            "Package: bench-package-{i}\nStatus: install ok installed\nPriority: optional\nSection: libs\n\
             Installed-Size: {}\nMaintainer: Bench Maintainers <bench-{}@lists.example.invalid>\n\
             Architecture: amd64\nMulti-Arch: same\nSource: bench-source-{}\nVersion: 1:{}.{}.{}-{}+deb12u{}\n\
             Depends: libc6 (>= 2.34), libgcc-s1 (>= 3.0), libstdc++6 (>= 12), zlib1g (>= 1:1.2.0)\n\
             Conffiles:\n /etc/bench-{i}/main.conf 0ab612e5ba5d8ba5d4a5ba0c8a1b9f0b\n\
             Description: benchmark package number {i} of a generated database\n \
             This long description has several lines, as real ones do, so that the\n \
             parser skips as many bytes per package as it would on a real host.\n .\n \
             A last paragraph after an empty line, to be folded or skipped.\nHomepage: https://example.invalid/{i}\n\n",
            100 + i % 9000,
            i % 97,
            i / 3,
            i % 7,
            i % 31,
            i % 101,
            1 + i % 5,
            i % 9
        ));
    }
    s
}

/// Median CPU (ms) and peak RSS (KiB) of `hitcount snapshot --only TYPE
/// [--host-root root]` and of the no-work baseline, interleaved.
fn alone_figures(
    spawner: &mut Spawner,
    only: &str,
    runs: usize,
    root: Option<&std::path::Path>,
) -> Result<(f64, f64, f64, f64, usize)> {
    let (mut cpu, mut base_cpu, mut rss, mut base_rss) = (vec![], vec![], vec![], vec![]);
    let mut bytes = 0;
    let bin = hitcount_bin();
    let bin = bin.to_str().unwrap();
    let mut argv = vec![bin, "snapshot", "--only", only];
    if let Some(r) = root {
        argv.extend(["--host-root", r.to_str().unwrap()]);
    }
    for _ in 0..runs {
        let s = spawner.measure(&argv)?;
        let b = spawner.measure(&[bin, "config", "defaults"])?;
        cpu.push(s.cpu.as_secs_f64() * 1e3);
        base_cpu.push(b.cpu.as_secs_f64() * 1e3);
        rss.push(s.max_rss_kib as f64);
        base_rss.push(b.max_rss_kib as f64);
        bytes = s.stdout_bytes;
    }
    let m = |v: &[f64]| median(v).unwrap_or(0.0);
    Ok((m(&cpu), m(&base_cpu), m(&rss), m(&base_rss), bytes))
}

fn print_alone(what: &str, (cpu, base_cpu, rss, base_rss, bytes): (f64, f64, f64, f64, usize)) {
    println!(
        "  {what}: CPU {cpu:.1} ms (baseline {base_cpu:.1} ms, ratio {:.2}, extra {:.1} ms); peak RSS {:.2} MiB \
         (baseline {:.2} MiB, ratio {:.2}, extra {:.2} MiB); output {bytes} bytes",
        cpu / base_cpu.max(1e-9),
        cpu - base_cpu,
        rss / 1024.0,
        base_rss / 1024.0,
        rss / base_rss.max(1e-9),
        (rss - base_rss) / 1024.0
    );
}

fn main() -> Result<()> {
    let mut spawner = Spawner::fork()?;
    let args = Args::parse();
    tests::bench::require_root()?;
    let bin = hitcount_bin();
    let cfg = std::env::temp_dir().join(format!("{}.json", marker("bench-snapshot-all")));
    std::fs::write(&cfg, format!("{{{ALL_ON}}}"))?;
    let (mut snap_cpu, mut base_cpu, mut snap_rss, mut base_rss) = (vec![], vec![], vec![], vec![]);
    let mut out_bytes = 0;
    for _ in 0..args.runs {
        let bin = bin.to_str().unwrap();
        let s = spawner.measure(&[bin, "snapshot", "--config", cfg.to_str().unwrap()])?;
        let b = spawner.measure(&[bin, "config", "defaults"])?;
        snap_cpu.push(s.cpu.as_secs_f64() * 1e3);
        base_cpu.push(b.cpu.as_secs_f64() * 1e3);
        snap_rss.push(s.max_rss_kib as f64);
        base_rss.push(b.max_rss_kib as f64);
        out_bytes = s.stdout_bytes;
    }
    let _ = std::fs::remove_file(&cfg);
    let m = |v: &[f64]| median(v).unwrap_or(0.0);
    println!(
        "one full snapshot, every snapshot type ({} runs, medians, interleaved with `hitcount config defaults`):",
        args.runs
    );
    println!(
        "  CPU: {:.1} ms (no-work baseline {:.1} ms, ratio {:.2}); peak RSS: {:.1} MiB (baseline {:.1} MiB, ratio {:.2}); output {} bytes",
        m(&snap_cpu),
        m(&base_cpu),
        m(&snap_cpu) / m(&base_cpu).max(1e-9),
        m(&snap_rss) / 1024.0,
        m(&base_rss) / 1024.0,
        m(&snap_rss) / m(&base_rss).max(1e-9),
        out_bytes
    );

    println!(
        "SBoM alone (`hitcount snapshot --only SBoM`, {} runs, medians, interleaved with the baseline):",
        args.runs
    );
    print_alone("this machine", alone_figures(&mut spawner, "SBoM", args.runs, None)?);
    let root = std::env::temp_dir().join(marker("bench-sbom-root"));
    std::fs::create_dir_all(root.join("var/lib/dpkg"))?;
    std::fs::write(root.join("var/lib/dpkg/status"), dpkg_status(args.packages))?;
    let fixture = alone_figures(&mut spawner, "SBoM", args.runs, Some(&root));
    let _ = std::fs::remove_dir_all(&root);
    print_alone(&format!("generated root, {} dpkg packages", args.packages), fixture?);
    println!(
        "OSBaseline alone (`hitcount snapshot --only OSBaseline`: every check, {} runs, medians, interleaved with the baseline):",
        args.runs
    );
    print_alone("this machine", alone_figures(&mut spawner, "OSBaseline", args.runs, None)?);

    let every_second = format!("{{{ALL_ON},\"snapshotFrequency\":\"PT1S\"");
    let (full, items) = traffic(&format!("{every_second}}}"), args.snapshots)?;
    let (delta, _) =
        traffic(&format!("{every_second},\"snapshotDeltas\":true,\"snapshotFullEvery\":8}}"), args.snapshots)?;
    println!(
        "snapshot traffic (stdout JSON bytes per snapshot, {} snapshots a second apart, {items} events in the first):",
        args.snapshots
    );
    println!("  full every time: {full:?}");
    println!("  snapshotDeltas (full every 8): {delta:?}");
    // A day at the defaults: one at start, then every 13 hours.
    let per_day = 1.0 + 24.0 / 13.0;
    let full_avg = full.iter().sum::<usize>() as f64 / full.len().max(1) as f64;
    // With deltas (full every 8), snapshots 2..=8 are deltas of a quiet machine.
    let steady_delta: Vec<usize> = delta.iter().skip(1).take(7).copied().collect();
    let delta_avg = steady_delta.iter().sum::<usize>() as f64 / steady_delta.len().max(1) as f64;
    let mixed = (full_avg + 7.0 * delta_avg) / 8.0;
    println!(
        "  bytes a day at PT13H: {:.0} without deltas, {:.0} with (ratio {:.3}); a quiet delta is {:.0} bytes, a full snapshot {:.0}",
        full_avg * per_day,
        mixed * per_day,
        mixed / full_avg.max(1e-9),
        delta_avg,
        full_avg
    );
    firewall(&mut spawner, args.runs, args.firewall_rules)
}
