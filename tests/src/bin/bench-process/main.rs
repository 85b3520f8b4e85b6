//! `cargo xtask bench process`: what watching process events costs.
//!
//! 1. Kernel time per event of each program, from the kernel's own BPF
//!    run-time statistics, for hitcount and for a bpftrace one-liner doing
//!    the same aggregation.
//! 2. A spawn storm timed with no watcher, with hitcount and with bpftrace,
//!    interleaved over several rounds in rotating order so that a noisy
//!    neighbour slows every setup alike; medians and their ratios.
//! 3. The agent's memory and CPU time during the storm.
//!
//! Every hitcount run must report exactly as many execs of the storm's
//! command line as were made: counting is the product.
mod against;
mod report;
mod storm;

use std::{collections::BTreeMap, path::PathBuf, process::ExitCode, time::Duration};

use agent_common::programs;
use anyhow::{bail, Context, Result};
use clap::Parser;
use serde_json::Value;
use tests::{
    bench::{
        bpf::{Bpftool, MapMemory, ProgStats, RunTimeStats},
        bpftrace::{self, Bpftrace},
        catch_interrupts, check_interrupted, procfs, require_root, tools,
    },
    hits, marker, Agent,
};

use crate::report::Report;
use crate::storm::{Spawn, Storm};

#[derive(Parser)]
#[command(name = "bench-process", about = "Cost of watching process events: kernel time, slowdown, agent RSS and CPU")]
struct Options {
    /// Processes spawned per storm (about 9 s on 2 busy vCPUs).
    #[arg(long, default_value_t = 8_000)]
    execs: u64,
    /// Threads spawning them (default: one per CPU).
    #[arg(long)]
    threads: Option<usize>,
    /// Rounds of [none, hitcount, bpftrace], each round in a rotated order.
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// The agent's aggregation interval (ISO 8601): short, so that the agent
    /// reports several windows during a storm.
    #[arg(long, default_value = "PT1S")]
    interval: String,
    /// How the storm starts each process.
    #[arg(long, value_enum, default_value = "posix-spawn")]
    spawn: Spawn,
    /// Instead of the comparison with bpftrace: the kernel time of another
    /// build's process programs as a ratio to this build's, both loaded at
    /// once, over --rounds pairs of storms (against.rs).
    #[arg(long, value_name = "HITCOUNT_BINARY")]
    against: Option<PathBuf>,
}

/// The tracepoints both watchers hook, and the program hitcount attaches to
/// each.
const HOOKS: [(&str, &str); 3] = [
    ("sched_process_exec", programs::PROCESS_EXEC),
    ("sched_process_fork", programs::PROCESS_FORK),
    ("sched_process_exit", programs::PROCESS_EXIT),
];

/// The bpftrace equivalent of hitcount's process aggregation.
const BPFTRACE_SCRIPT: &str = "tracepoint:sched:sched_process_exec { @[comm, uid] = count(); } \
     tracepoint:sched:sched_process_fork { @f[comm] = count(); } \
     tracepoint:sched:sched_process_exit { @e[comm] = count(); }";

/// Lets a watcher finish starting up (its runtime, its first drain) before
/// the clock starts; every setup waits the same.
const SETTLE: Duration = Duration::from_millis(500);

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Setup {
    None,
    Hitcount,
    Bpftrace,
}

impl Setup {
    pub const ALL: [Setup; 3] = [Setup::None, Setup::Hitcount, Setup::Bpftrace];

    pub fn name(self) -> &'static str {
        match self {
            Setup::None => "none",
            Setup::Hitcount => "hitcount",
            Setup::Bpftrace => "bpftrace",
        }
    }
}

/// One storm under one setup.
pub struct Run {
    pub wall: Duration,
    /// The watching process, measured over the storm; None without one.
    pub watcher: Option<WatcherUsage>,
}

pub struct WatcherUsage {
    pub cpu: Cpu,
    pub memory: procfs::Memory,
    /// Execs of the storm's command line (hitcount) or program (bpftrace)
    /// that the watcher counted.
    pub execs_counted: u64,
    /// Hook -> its program's statistics; empty unless statistics were on.
    pub kernel: BTreeMap<String, ProgStats>,
    /// Every map the watcher holds, by id, at the end of the storm.
    pub maps: BTreeMap<u32, MapMemory>,
}

/// CPU time of a process, both ways procfs tells it.
#[derive(Clone, Copy)]
pub struct Cpu {
    /// utime + stime, in clock ticks.
    pub ticks: Duration,
    /// The same to the nanosecond, where the kernel tells.
    pub exact: Option<Duration>,
}

impl Cpu {
    fn of(pid: u32) -> Result<Cpu> {
        Ok(Cpu { ticks: procfs::cpu_time(pid)?, exact: procfs::exact_cpu_time(pid)? })
    }

    fn since(self, before: Cpu) -> Cpu {
        Cpu { ticks: self.ticks - before.ticks, exact: self.exact.zip(before.exact).map(|(now, then)| now - then) }
    }
}

enum Watcher {
    Hitcount(Agent),
    Bpftrace(Bpftrace),
}

impl Watcher {
    fn pid(&self) -> u32 {
        match self {
            Watcher::Hitcount(a) => a.pid(),
            Watcher::Bpftrace(b) => b.pid(),
        }
    }
}

struct Bench {
    options: Options,
    storm: Storm,
    bpftool: Bpftool,
    bpftrace: PathBuf,
}

impl Bench {
    fn run(&self, setup: Setup, with_kernel_stats: bool) -> Result<Run> {
        let marker = marker("bench");
        let watcher = match setup {
            Setup::None => None,
            Setup::Hitcount => Some(Watcher::Hitcount(Agent::start(&["--interval", &self.options.interval])?)),
            Setup::Bpftrace => {
                let hooks = HOOKS.map(|(hook, _)| hook);
                Some(Watcher::Bpftrace(Bpftrace::start(&self.bpftrace, &self.bpftool, BPFTRACE_SCRIPT, &hooks)?))
            }
        };
        std::thread::sleep(SETTLE);
        check_interrupted()?;
        let cpu_before = watcher.as_ref().map(|w| Cpu::of(w.pid())).transpose()?;
        let wall = self.storm.run(&marker)?;
        let Some(watcher) = watcher else { return Ok(Run { wall, watcher: None }) };
        let pid = watcher.pid();
        let cpu = Cpu::of(pid)?.since(cpu_before.expect("measured with the watcher"));
        let memory = procfs::memory(pid)?;
        let kernel = if with_kernel_stats { self.kernel_stats(setup, pid)? } else { BTreeMap::new() };
        let maps = self.bpftool.maps_of(pid)?;
        let execs_counted = match watcher {
            Watcher::Hitcount(agent) => self.hitcount_execs(agent, &marker)?,
            Watcher::Bpftrace(bt) => self.bpftrace_execs(bt)?,
        };
        Ok(Run { wall, watcher: Some(WatcherUsage { cpu, memory, execs_counted, kernel, maps }) })
    }

    /// Stops the agent and checks that it counted every exec of the storm.
    fn hitcount_execs(&self, agent: Agent, marker: &str) -> Result<u64> {
        let events = agent.stop()?;
        let cmdline = format!("{} {marker}", storm::PROGRAM);
        let counted = hits(&events, "ProcessCreate", |p| p["commandline"] == cmdline.as_str() && p["type"] == "exec");
        if counted != self.storm.execs {
            let dropped: u64 = tests::payloads(&events, "DroppedEventsStatistics")
                .iter()
                .filter(|p| p["source_event_type"] == "ProcessCreate")
                .map(|p| p["dropped_events"].as_u64().unwrap_or(0))
                .sum();
            bail!(
                "hitcount reported {counted} execs of `{cmdline}`, but the storm made {} \
                 (dropped events it reported meanwhile: {dropped})",
                self.storm.execs
            );
        }
        Ok(counted)
    }

    /// Stops bpftrace and checks that it was attached for the whole storm:
    /// its count of `true` execs covers the storm's, plus any other `true`
    /// that ran on the machine meanwhile.
    fn bpftrace_execs(&self, bt: Bpftrace) -> Result<u64> {
        let comm = storm::PROGRAM.rsplit('/').next().expect("a path");
        let counted = bpftrace::map_sum(&bt.stop()?, "", comm);
        if counted < self.storm.execs {
            bail!("bpftrace counted {counted} execs of {comm}, fewer than the storm's {}", self.storm.execs);
        }
        Ok(counted)
    }

    /// Statistics of the program `pid` has attached to each hook. For
    /// hitcount, the program name is checked too: the kernel keeps its
    /// first 15 bytes.
    fn kernel_stats(&self, setup: Setup, pid: u32) -> Result<BTreeMap<String, ProgStats>> {
        let attached = self.bpftool.attachments(pid)?;
        let progs = self.bpftool.programs()?;
        let mut stats = BTreeMap::new();
        for (hook, program) in HOOKS {
            let id =
                attached.get(hook).with_context(|| format!("{} has no program attached to {hook}", setup.name()))?;
            let prog = progs.get(id).with_context(|| format!("bpftool does not list program {id}"))?;
            if setup == Setup::Hitcount && (prog.name.is_empty() || !program.starts_with(&prog.name)) {
                bail!("program {id} on {hook} is named {:?}, expected a prefix of {program:?}", prog.name);
            }
            stats.insert(hook.to_string(), prog.clone());
        }
        Ok(stats)
    }
}

fn main() -> ExitCode {
    match bench(Options::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn bench(options: Options) -> Result<()> {
    require_root()?;
    catch_interrupts();
    if options.execs == 0 || options.rounds == 0 || options.threads == Some(0) {
        bail!("--execs, --rounds and --threads must be at least 1");
    }
    let bpftool = Bpftool::new(tools::ensure_installed("bpftool", "bpftool")?);
    let bpftrace = tools::ensure_installed("bpftrace", "bpftrace")?;
    let threads = options.threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()));
    let storm = Storm { execs: options.execs, threads, spawn: options.spawn };
    let bench = Bench { storm, bpftool, bpftrace, options };
    if let Some(other) = &bench.options.against {
        return against::run(&bench, &tests::hitcount_bin(), other);
    }
    let mut report = Report::new(&bench.options, threads, tests::hitcount_bin())?;
    println!("{}", report.header());

    println!("kernel cost: one storm each for hitcount and bpftrace with kernel.bpf_stats_enabled=1");
    {
        let _stats = RunTimeStats::enable()?;
        for setup in [Setup::Hitcount, Setup::Bpftrace] {
            let run = bench.run(setup, true)?;
            println!("  {:<8} {:>7.3} s", setup.name(), run.wall.as_secs_f64());
            report.add_cost_run(setup, run);
        }
    }

    let rounds = bench.options.rounds;
    println!("storm: {rounds} rounds of {:?} in rotating order", Setup::ALL.map(Setup::name));
    for round in 0..rounds {
        for i in 0..Setup::ALL.len() {
            let setup = Setup::ALL[(round + i) % Setup::ALL.len()];
            let run = bench.run(setup, false)?;
            println!("  round {}/{rounds} {:<8} {:>7.3} s", round + 1, setup.name(), run.wall.as_secs_f64());
            report.add_run(setup, run);
        }
    }

    println!();
    println!("{}", report.table());
    let json: Value = report.json();
    println!("{json}");
    Ok(())
}
