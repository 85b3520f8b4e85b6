//! `cargo xtask bench net`: what the network collector costs.
//!
//! Two loopback workloads, a connect+close storm and a bulk transfer, each
//! timed with no agent, with Hitcount counting TCP bytes per call (the
//! default on 6.3+) and per packet (`--tcp-bytes packets`, the fallback), and
//! with bpftrace counting on the same tracepoints (TCP state changes, and
//! bytes through sock_send_length / sock_recv_length, since bpftrace cannot
//! attach cgroup_skb). Rounds are
//! interleaved so that drift of a shared machine hits every mode alike; the
//! medians and their ratios come from one run. Then, with
//! kernel.bpf_stats_enabled=1, the kernel time per run of each program.
//!
//! Arguments: [ROUNDS] [CONNECTS] [BULK_MIB]
use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{Shutdown, TcpListener, TcpStream},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use tests::hitcount_bin;

const BPFTRACE: &str = r#"
tracepoint:sock:inet_sock_set_state { @states[args->oldstate, args->newstate] = count(); }
tracepoint:sock:sock_send_length { @tx[args->family, args->protocol] = sum(args->ret); }
tracepoint:sock:sock_recv_length { @rx[args->family, args->protocol] = sum(args->ret); }
"#;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Mode {
    None,
    /// TCP bytes per send/receive call.
    Hitcount,
    /// TCP bytes per packet.
    HitcountPackets,
    Bpftrace,
}

const MODES: [Mode; 4] = [Mode::None, Mode::Hitcount, Mode::HitcountPackets, Mode::Bpftrace];

/// A running observer; dropping it stops it.
struct Observer(Option<Child>);

impl Drop for Observer {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            // SAFETY: kill(2) on our child.
            unsafe { libc::kill(c.id() as i32, libc::SIGINT) };
            let _ = c.wait();
        }
    }
}

fn wait_for(child: &mut Child, stream_is_stderr: bool, needle: &str) -> Result<()> {
    let reader: Box<dyn Read + Send> = if stream_is_stderr {
        Box::new(child.stderr.take().context("stderr")?)
    } else {
        Box::new(child.stdout.take().context("stdout")?)
    };
    let mut lines = BufReader::new(reader).lines();
    for line in lines.by_ref() {
        if line?.contains(needle) {
            // Keep draining so the child never blocks on a full pipe.
            std::thread::spawn(move || for _ in lines {});
            return Ok(());
        }
    }
    bail!("observer exited before printing {needle:?}")
}

fn start(mode: Mode) -> Result<Observer> {
    match mode {
        Mode::None => Ok(Observer(None)),
        Mode::Hitcount | Mode::HitcountPackets => {
            let tcp_bytes = if mode == Mode::Hitcount { "calls" } else { "packets" };
            let mut c = Command::new(hitcount_bin())
                .args(["run", "--interval", "PT1H", "--tcp-bytes", tcp_bytes])
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .context("starting hitcount")?;
            wait_for(&mut c, true, "collecting:")?;
            Ok(Observer(Some(c)))
        }
        Mode::Bpftrace => {
            let mut c = Command::new("bpftrace")
                .args(["-e", BPFTRACE])
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .context("starting bpftrace (apt-get install bpftrace)")?;
            wait_for(&mut c, false, "Attaching")?;
            Ok(Observer(Some(c)))
        }
    }
}

/// `n` loopback connections in lockstep: the client connects and waits for
/// the server to accept and close. One connection at a time never overflows
/// the accept backlog; with a free-running client the backlog filled, SYNs
/// were dropped and one-second retransmissions decided the timing.
fn storm(n: usize) -> Result<Duration> {
    let l = TcpListener::bind("127.0.0.1:0")?;
    let addr = l.local_addr()?;
    let server = std::thread::spawn(move || {
        for _ in 0..n {
            let _ = l.accept().map(|(c, _)| drop(c));
        }
    });
    let t = Instant::now();
    let mut byte = [0u8; 1];
    for _ in 0..n {
        let mut c = TcpStream::connect(addr)?;
        // EOF: the server has accepted and closed this connection.
        if c.read(&mut byte)? != 0 {
            bail!("storm server sent data");
        }
    }
    server.join().expect("server thread");
    Ok(t.elapsed())
}

/// `mib` MiB through one loopback connection. Returns the time.
fn bulk(mib: usize) -> Result<Duration> {
    let l = TcpListener::bind("127.0.0.1:0")?;
    let addr = l.local_addr()?;
    let server = std::thread::spawn(move || -> std::io::Result<u64> {
        let (mut c, _) = l.accept()?;
        let mut buf = vec![0u8; 256 << 10];
        let mut total = 0u64;
        loop {
            let n = c.read(&mut buf)?;
            if n == 0 {
                return Ok(total);
            }
            total += n as u64;
        }
    });
    let buf = vec![7u8; 256 << 10];
    let t = Instant::now();
    let mut c = TcpStream::connect(addr)?;
    for _ in 0..mib * 4 {
        c.write_all(&buf)?;
    }
    c.shutdown(Shutdown::Write)?;
    let got = server.join().expect("server thread")?;
    let d = t.elapsed();
    if got != (mib as u64) << 20 {
        bail!("bulk transfer lost data: {got}");
    }
    Ok(d)
}

/// CPU time (user + system) of this process so far, in seconds: both ends of
/// every workload run in it, and the programs run in their threads'
/// context (loopback receive processing included), so this is what the
/// watching costs the workload, less sensitive than wall time to where a
/// shared 2-vCPU VM schedules the two threads.
fn cpu_seconds() -> f64 {
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage fills the struct we own.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    t(ru.ru_utime) + t(ru.ru_stime)
}

/// Runs `f`, returning its wall time and the CPU time it took.
fn timed(f: impl FnOnce() -> Result<Duration>) -> Result<(f64, f64)> {
    let cpu = cpu_seconds();
    let wall = f()?.as_secs_f64();
    Ok((wall, cpu_seconds() - cpu))
}

/// The median of each mode's samples (in `MODES` order), in the unit of the table.
fn medians(samples: &mut [Vec<f64>], unit: impl Fn(f64) -> f64) -> [f64; MODES.len()] {
    std::array::from_fn(|i| unit(median(&mut samples[i])))
}

/// One table row: each mode's figure, then each observer's over no agent's.
fn row(label: &str, v: [f64; MODES.len()], decimals: usize) {
    println!(
        "| {label} | {:.d$} | {:.d$} | {:.d$} | {:.d$} | {:.3} | {:.3} | {:.3} |",
        v[0],
        v[1],
        v[2],
        v[3],
        v[1] / v[0],
        v[2] / v[0],
        v[3] / v[0],
        d = decimals
    );
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// run_time_ns / run_cnt of this agent's programs, from bpftool.
fn program_costs() -> Result<Vec<(String, u64, u64)>> {
    let out = Command::new("bpftool")
        .args(["prog", "show", "--json"])
        .output()
        .context("bpftool (apt-get install bpftool)")?;
    let progs: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let names = ["inet_sock_set_s", "skb_ingress", "skb_egress", "sock_create", "sock_send_lengt", "sock_recv_lengt"];
    let mut rows = Vec::new();
    for p in progs.as_array().into_iter().flatten() {
        let name = p["name"].as_str().unwrap_or("");
        if names.contains(&name) {
            rows.push((name.to_string(), p["run_time_ns"].as_u64().unwrap_or(0), p["run_cnt"].as_u64().unwrap_or(0)));
        }
    }
    Ok(rows)
}

fn main() -> Result<()> {
    let args: Vec<usize> = std::env::args().skip(1).map(|a| a.parse().expect("number")).collect();
    let rounds = args.first().copied().unwrap_or(7);
    let connects = args.get(1).copied().unwrap_or(3000);
    let mib = args.get(2).copied().unwrap_or(1024);
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the benchmark loads BPF programs: run it as root");
    }
    let n = MODES.len();
    let mut storm_s: Vec<Vec<f64>> = vec![Vec::new(); n];
    let mut bulk_s: Vec<Vec<f64>> = vec![Vec::new(); n];
    let mut storm_cpu: Vec<Vec<f64>> = vec![Vec::new(); n];
    let mut bulk_cpu: Vec<Vec<f64>> = vec![Vec::new(); n];
    storm(connects / 4)?; // warm-up: page cache, port ranges
    for r in 0..rounds {
        for k in 0..n {
            let i = (r + k) % n; // rotate the order every round
            let obs = start(MODES[i])?;
            std::thread::sleep(Duration::from_millis(300));
            let (wall, cpu) = timed(|| storm(connects))?;
            storm_s[i].push(wall);
            storm_cpu[i].push(cpu);
            let (wall, cpu) = timed(|| bulk(mib))?;
            bulk_s[i].push(wall);
            bulk_cpu[i].push(cpu);
            drop(obs);
            // Let TIME_WAIT sockets of the storm drain out of the way.
            std::thread::sleep(Duration::from_millis(300));
        }
        eprintln!("round {}/{rounds} done", r + 1);
    }
    println!("network benchmark: {rounds} interleaved rounds, medians; ratios against no agent");
    println!("| workload | no agent | Hitcount | Hitcount, bytes per packet | bpftrace | Hitcount / none | per packet / none | bpftrace / none |");
    println!("| --- | --- | --- | --- | --- | --- | --- | --- |");
    let per_connection = |d: f64| d / connects as f64 * 1e6;
    let gbps = |d: f64| (mib as f64 * 8.0 / 1024.0) / d;
    let ms_per_gib = |c: f64| c * 1e3 / (mib as f64 / 1024.0);
    row(&format!("connect+close storm ({connects}, µs per connection)"), medians(&mut storm_s, per_connection), 1);
    row(&format!("bulk transfer ({mib} MiB, Gbit/s)"), medians(&mut bulk_s, gbps), 2);
    row("storm CPU (µs per connection, both ends)", medians(&mut storm_cpu, per_connection), 1);
    row("bulk CPU (ms per GiB, both ends)", medians(&mut bulk_cpu, ms_per_gib), 0);

    // Kernel cost per program run, in both byte modes.
    let stats = "/proc/sys/kernel/bpf_stats_enabled";
    let before = std::fs::read_to_string(stats).unwrap_or_default();
    std::fs::write(stats, "1").context("enabling kernel.bpf_stats_enabled")?;
    let mut tables = Vec::new();
    for mode in [Mode::Hitcount, Mode::HitcountPackets] {
        let obs = start(mode)?;
        storm(connects)?;
        bulk(mib / 4)?;
        tables.push((mode, program_costs()));
        drop(obs);
    }
    let _ = std::fs::write(stats, before.trim());
    for (mode, costs) in tables {
        println!("\n{mode:?}: storm of {connects} and {} MiB bulk", mib / 4);
        println!("| program | runs | ns per run |");
        println!("| --- | --- | --- |");
        for (name, ns, cnt) in costs? {
            if cnt > 0 {
                println!("| {name} | {cnt} | {:.0} |", ns as f64 / cnt as f64);
            }
        }
    }
    Ok(())
}
