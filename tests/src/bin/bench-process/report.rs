//! The figures of a benchmark run: a table for people, one JSON line for
//! copying into the README or comparing runs.
use std::{collections::BTreeMap, fmt::Write, path::PathBuf, time::Duration};

use anyhow::{Context, Result};
use serde_json::{json, Map, Value};
// `::tests` is the crate: the unit tests' module below shadows the bare name.
use ::tests::bench::{bpf::MapMemory, median, procfs};

use crate::{storm::Spawn, Options, Run, Setup, WatcherUsage, HOOKS};

/// Goals from the issue, printed next to the figures they apply to.
const GOAL_EXEC_NS: f64 = 1000.0;
/// Hitcount's exec program may cost at most this times bpftrace's.
const GOAL_EXEC_VS_BPFTRACE: f64 = 1.0;
const GOAL_STORM_RATIO: f64 = 1.03;
const GOAL_HWM_KIB: u64 = 12 * 1024;
const GOAL_MAP_KIB: u64 = 4 * 1024;
/// Maps listed one by one in the table, largest first.
const MAPS_LISTED: usize = 8;

pub struct Report {
    execs: u64,
    threads: usize,
    spawn: Spawn,
    interval: String,
    agent: PathBuf,
    kernel_release: String,
    cpus: usize,
    loadavg: String,
    /// The storms run with BPF statistics on, one per watcher.
    cost: BTreeMap<Setup, Run>,
    /// The timed storms, in the order they ran.
    runs: BTreeMap<Setup, Vec<Run>>,
}

impl Report {
    pub fn new(options: &Options, threads: usize, agent: PathBuf) -> Result<Report> {
        let read =
            |p: &str| std::fs::read_to_string(p).with_context(|| format!("reading {p}")).map(|s| s.trim().into());
        Ok(Report {
            execs: options.execs,
            threads,
            spawn: options.spawn,
            interval: options.interval.clone(),
            agent,
            kernel_release: read("/proc/sys/kernel/osrelease")?,
            cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
            loadavg: read("/proc/loadavg")?,
            cost: BTreeMap::new(),
            runs: BTreeMap::new(),
        })
    }

    pub fn add_cost_run(&mut self, setup: Setup, run: Run) {
        self.cost.insert(setup, run);
    }

    pub fn add_run(&mut self, setup: Setup, run: Run) {
        self.runs.entry(setup).or_default().push(run);
    }

    pub fn header(&self) -> String {
        format!(
            "process benchmark: {} spawns of {} per storm from {} threads ({}); agent {} (--interval {})\n\
             kernel {}, {} CPUs, load average at start {}",
            self.execs,
            crate::storm::PROGRAM,
            self.threads,
            self.spawn.name(),
            self.agent.display(),
            self.interval,
            self.kernel_release,
            self.cpus,
            self.loadavg
        )
    }

    fn kernel(&self, setup: Setup, hook: &str) -> Option<f64> {
        self.cost.get(&setup)?.watcher.as_ref()?.kernel.get(hook)?.ns_per_run()
    }

    /// One fork, one exec and one exit per spawned process.
    fn kernel_per_process(&self, setup: Setup) -> Option<f64> {
        HOOKS.iter().map(|(hook, _)| self.kernel(setup, hook)).sum()
    }

    fn walls(&self, setup: Setup) -> Vec<f64> {
        self.runs.get(&setup).map_or(Vec::new(), |runs| runs.iter().map(|r| r.wall.as_secs_f64()).collect())
    }

    fn median_wall(&self, setup: Setup) -> Option<f64> {
        median(&self.walls(setup))
    }

    fn ratio(&self, a: Setup, b: Setup) -> Option<f64> {
        Some(self.median_wall(a)? / self.median_wall(b)?)
    }

    /// The watcher's usage over the timed storms: memory at its highest,
    /// CPU as a median.
    fn usage(&self, setup: Setup) -> Option<Usage> {
        let runs: Vec<_> = self.runs.get(&setup)?.iter().filter_map(|r| Some((r.wall, r.watcher.as_ref()?))).collect();
        let med = |f: &dyn Fn(Duration, &WatcherUsage) -> Option<f64>| {
            median(&runs.iter().filter_map(|(wall, w)| f(*wall, w)).collect::<Vec<_>>())
        };
        let pct = |cpu: Duration, wall: Duration| 100.0 * cpu.as_secs_f64() / wall.as_secs_f64();
        Some(Usage {
            hwm_kib: runs.iter().map(|(_, w)| w.memory.hwm_kib).max()?,
            rss_kib: runs.iter().map(|(_, w)| w.memory.rss_kib).max()?,
            cpu_ms: med(&|_, w| Some(w.cpu.ticks.as_secs_f64() * 1e3))?,
            cpu_pct: med(&|wall, w| Some(pct(w.cpu.ticks, wall)))?,
            exact_cpu_ms: med(&|_, w| Some(w.cpu.exact?.as_secs_f64() * 1e3)),
            exact_cpu_pct: med(&|wall, w| Some(pct(w.cpu.exact?, wall))),
        })
    }

    /// What hitcount counted in each of its runs, cost runs first.
    fn hitcount_counts(&self) -> Vec<u64> {
        let cost = self.cost.get(&Setup::Hitcount).into_iter();
        let timed = self.runs.get(&Setup::Hitcount).into_iter().flatten();
        cost.chain(timed).filter_map(|r| Some(r.watcher.as_ref()?.execs_counted)).collect()
    }

    /// The maps the watcher held in its cost run, largest first.
    fn maps(&self, setup: Setup) -> Vec<&MapMemory> {
        let run = self.cost.get(&setup).and_then(|r| r.watcher.as_ref());
        let mut maps: Vec<&MapMemory> = run.into_iter().flat_map(|w| w.maps.values()).collect();
        maps.sort_by(|a, b| b.bytes.cmp(&a.bytes).then(a.name.cmp(&b.name)));
        maps
    }

    fn map_kib(&self, setup: Setup) -> Option<u64> {
        let maps = self.maps(setup);
        (!maps.is_empty()).then(|| maps.iter().map(|m| m.bytes).sum::<u64>() / 1024)
    }

    fn goals(&self) -> [(&'static str, String, Option<bool>); 5] {
        let exec = self.kernel(Setup::Hitcount, "sched_process_exec");
        let exec_ratio = exec.zip(self.kernel(Setup::Bpftrace, "sched_process_exec")).map(|(h, b)| h / b);
        let ratio = self.ratio(Setup::Hitcount, Setup::None);
        let hwm = self.usage(Setup::Hitcount).map(|u| u.hwm_kib);
        [
            ("exec_ns", format!("exec < {GOAL_EXEC_NS} ns in kernel"), exec.map(|ns| ns < GOAL_EXEC_NS)),
            (
                "exec_vs_bpftrace",
                format!("exec <= {GOAL_EXEC_VS_BPFTRACE} x bpftrace"),
                exec_ratio.map(|r| r <= GOAL_EXEC_VS_BPFTRACE),
            ),
            ("storm_ratio", format!("storm <= {GOAL_STORM_RATIO} x none"), ratio.map(|r| r <= GOAL_STORM_RATIO)),
            ("vm_hwm", format!("VmHWM <= {} MiB", GOAL_HWM_KIB / 1024), hwm.map(|k| k <= GOAL_HWM_KIB)),
            (
                "map_memory",
                format!("map memory <= {} MiB", GOAL_MAP_KIB / 1024),
                self.map_kib(Setup::Hitcount).map(|k| k <= GOAL_MAP_KIB),
            ),
        ]
    }

    pub fn table(&self) -> String {
        let mut t = String::new();
        let goals = self.goals();
        let verdict = |i: usize| {
            let (_, what, met) = &goals[i];
            let met = match met {
                Some(true) => "met",
                Some(false) => "MISSED",
                None => "not measured",
            };
            format!("goal {what}: {met}")
        };
        let ns = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.0} ns"));

        let _ = writeln!(t, "Kernel time per event (BPF run-time statistics over one storm each)");
        let _ = writeln!(t, "  {:<20} {:>10} {:>10}", "hook", "hitcount", "bpftrace");
        for (hook, _) in HOOKS {
            let row = format!(
                "  {hook:<20} {:>10} {:>10}",
                ns(self.kernel(Setup::Hitcount, hook)),
                ns(self.kernel(Setup::Bpftrace, hook))
            );
            let goal = if hook == "sched_process_exec" {
                let ratio = self.kernel(Setup::Hitcount, hook).zip(self.kernel(Setup::Bpftrace, hook));
                let ratio = ratio.map_or(String::new(), |(h, b)| format!("  {:.2} x bpftrace", h / b));
                format!("{ratio}   {}; {}", verdict(0), verdict(1))
            } else {
                String::new()
            };
            let _ = writeln!(t, "{row}{goal}");
        }
        let _ = writeln!(
            t,
            "  {:<20} {:>10} {:>10}",
            "per process (sum)",
            ns(self.kernel_per_process(Setup::Hitcount)),
            ns(self.kernel_per_process(Setup::Bpftrace))
        );

        let rounds = self.walls(Setup::None).len();
        let _ = writeln!(t, "\nStorm of {} spawns, median of {rounds} rounds", self.execs);
        for setup in Setup::ALL {
            let all: Vec<String> = self.walls(setup).iter().map(|w| format!("{w:.2}")).collect();
            let median = self.median_wall(setup).map_or("-".into(), |m| format!("{m:.3} s"));
            let mut row = format!("  {:<10} {median:>9}  [{}]", setup.name(), all.join(" "));
            if setup != Setup::None {
                if let Some(r) = self.ratio(setup, Setup::None) {
                    let _ = write!(row, "  {r:.3} x none");
                }
            }
            if setup == Setup::Hitcount {
                let _ = write!(row, "   {}", verdict(2));
            }
            let _ = writeln!(t, "{row}");
        }
        if let Some(r) = self.ratio(Setup::Hitcount, Setup::Bpftrace) {
            let _ = writeln!(t, "  hitcount / bpftrace {r:.3}");
        }

        let tick = procfs::clock_tick().map_or(String::new(), |d| format!(", {} ms ticks", d.as_millis()));
        let _ = writeln!(t, "\nWatcher process during the storm (memory: highest of the rounds; CPU: median)");
        for setup in [Setup::Hitcount, Setup::Bpftrace] {
            let Some(u) = self.usage(setup) else { continue };
            let mib = |kib: u64| kib as f64 / 1024.0;
            // The exact figure first when there is one: ticks round a quiet
            // agent's CPU time down to 0.
            let cpu = match (u.exact_cpu_ms, u.exact_cpu_pct) {
                (Some(ms), Some(pct)) => {
                    format!("CPU {ms:>6.1} ms = {pct:.2} % of the storm (utime+stime {:.0} ms{tick})", u.cpu_ms)
                }
                _ => format!("CPU {:>6.0} ms{tick} = {:.2} % of the storm", u.cpu_ms, u.cpu_pct),
            };
            let mut row = format!(
                "  {:<10} VmHWM {:>6.1} MiB  VmRSS {:>6.1} MiB  {cpu}",
                setup.name(),
                mib(u.hwm_kib),
                mib(u.rss_kib)
            );
            if setup == Setup::Hitcount {
                let _ = write!(row, "   {}", verdict(3));
            }
            let _ = writeln!(t, "{row}");
        }

        let _ = writeln!(t, "\nKernel map memory (memlock of every map fd the watcher holds, after its cost storm)");
        for setup in [Setup::Hitcount, Setup::Bpftrace] {
            let Some(kib) = self.map_kib(setup) else { continue };
            let maps = self.maps(setup);
            let mut row = format!("  {:<10} {:>8.2} MiB in {} maps", setup.name(), kib as f64 / 1024.0, maps.len());
            if setup == Setup::Hitcount {
                let _ = write!(row, "   {}", verdict(4));
            }
            let _ = writeln!(t, "{row}");
            let listed: Vec<String> =
                maps.iter().take(MAPS_LISTED).map(|m| format!("{} {} KiB", m.name, m.bytes / 1024)).collect();
            let _ = writeln!(t, "    largest: {}", listed.join(", "));
        }

        let counts = self.hitcount_counts();
        let _ = write!(
            t,
            "\nCounting: hitcount reported exactly {} execs of the storm's command line in each of its {} runs",
            self.execs,
            counts.len()
        );
        t
    }

    pub fn json(&self) -> Value {
        let round = |v: f64, digits: i32| {
            let scale = 10f64.powi(digits);
            (v * scale).round() / scale
        };
        let mut kernel = Map::new();
        for setup in [Setup::Hitcount, Setup::Bpftrace] {
            let mut hooks = Map::new();
            let stats = self.cost.get(&setup).and_then(|r| r.watcher.as_ref()).map(|w| &w.kernel);
            for (hook, prog) in stats.into_iter().flatten() {
                hooks.insert(
                    hook.clone(),
                    json!({
                        "ns_per_event": prog.ns_per_run().map(|v| round(v, 1)),
                        "run_time_ns": prog.run_time_ns,
                        "run_cnt": prog.run_cnt,
                    }),
                );
            }
            hooks.insert("per_process_ns".into(), json!(self.kernel_per_process(setup).map(|v| round(v, 1))));
            kernel.insert(setup.name().into(), Value::Object(hooks));
        }
        let mut storm = Map::new();
        for setup in Setup::ALL {
            let runs: Vec<f64> = self.walls(setup).into_iter().map(|w| round(w, 3)).collect();
            storm.insert(
                setup.name().into(),
                json!({ "median": self.median_wall(setup).map(|m| round(m, 3)), "runs": runs }),
            );
        }
        let mut watcher = Map::new();
        for setup in [Setup::Hitcount, Setup::Bpftrace] {
            if let Some(u) = self.usage(setup) {
                watcher.insert(
                    setup.name().into(),
                    json!({
                        "vm_hwm_kib": u.hwm_kib,
                        "vm_rss_kib": u.rss_kib,
                        "cpu_ms": round(u.cpu_ms, 0),
                        "cpu_pct_of_storm": round(u.cpu_pct, 2),
                        "exact_cpu_ms": u.exact_cpu_ms.map(|v| round(v, 1)),
                        "exact_cpu_pct_of_storm": u.exact_cpu_pct.map(|v| round(v, 3)),
                    }),
                );
            }
        }
        let mut map_memory = Map::new();
        for setup in [Setup::Hitcount, Setup::Bpftrace] {
            let maps: Map<String, Value> = self.maps(setup).iter().map(|m| (m.name.clone(), json!(m.bytes))).collect();
            map_memory.insert(setup.name().into(), json!({ "total_kib": self.map_kib(setup), "bytes_by_map": maps }));
        }
        let ratio = |a, b| self.ratio(a, b).map(|r| round(r, 4));
        let goals: Map<String, Value> =
            self.goals().into_iter().map(|(key, _, met)| (key.into(), json!(met))).collect();
        json!({
            "bench": "process",
            "kernel_release": self.kernel_release,
            "cpus": self.cpus,
            "loadavg_at_start": self.loadavg,
            "execs_per_storm": self.execs,
            "threads": self.threads,
            "spawn": self.spawn.name(),
            "agent_interval": self.interval,
            "kernel": kernel,
            "storm_s": storm,
            "ratio": {
                "hitcount_none": ratio(Setup::Hitcount, Setup::None),
                "bpftrace_none": ratio(Setup::Bpftrace, Setup::None),
                "hitcount_bpftrace": ratio(Setup::Hitcount, Setup::Bpftrace),
            },
            "watcher": watcher,
            "map_memory": map_memory,
            "hitcount_exec_hits": self.hitcount_counts(),
            "goals_met": goals,
        })
    }
}

struct Usage {
    hwm_kib: u64,
    rss_kib: u64,
    /// utime + stime.
    cpu_ms: f64,
    cpu_pct: f64,
    /// From schedstat, not rounded to ticks.
    exact_cpu_ms: Option<f64>,
    exact_cpu_pct: Option<f64>,
}

#[cfg(test)]
mod tests {
    use ::tests::bench::{
        bpf::{MapMemory, ProgStats},
        procfs::Memory,
    };

    use super::*;
    use crate::Cpu;

    fn run(wall: f64) -> Run {
        Run { wall: Duration::from_secs_f64(wall), watcher: None }
    }

    /// A run with a watcher of peak RSS `hwm_kib` and (hook, run_time_ns, run_cnt) statistics.
    fn watched(wall: f64, hwm_kib: u64, kernel: &[(&str, u64, u64)]) -> Run {
        let kernel = kernel.iter().map(|&(hook, run_time_ns, run_cnt)| {
            (hook.to_string(), ProgStats { id: 1, name: hook[..15].into(), run_time_ns, run_cnt })
        });
        let cpu = Cpu { ticks: Duration::from_millis(10), exact: Some(Duration::from_millis(4)) };
        let memory = Memory { hwm_kib, rss_kib: hwm_kib / 2 };
        let maps = [(1, "SOCK_OWNER", 3 << 20), (2, "CONTROL", 4096)]
            .map(|(id, name, bytes)| (id, MapMemory { id, name: name.into(), bytes }));
        let watcher = WatcherUsage { cpu, memory, execs_counted: 100, kernel: kernel.collect(), maps: maps.into() };
        Run { watcher: Some(watcher), ..run(wall) }
    }

    fn report() -> Report {
        let mut r = Report {
            execs: 100,
            threads: 2,
            spawn: Spawn::PosixSpawn,
            interval: "PT1S".into(),
            agent: "hitcount".into(),
            kernel_release: "6.18".into(),
            cpus: 2,
            loadavg: "0.00".into(),
            cost: BTreeMap::new(),
            runs: BTreeMap::new(),
        };
        let kernel: &[_] =
            &[("sched_process_exec", 80_000, 100), ("sched_process_fork", 50_000, 100), ("sched_process_exit", 0, 0)];
        r.add_cost_run(Setup::Hitcount, watched(1.0, 1000, kernel));
        for (none, hitcount, bpftrace) in [(10.0, 10.3, 10.9), (11.0, 11.2, 12.0), (12.0, 12.5, 13.0)] {
            r.add_run(Setup::None, run(none));
            r.add_run(Setup::Hitcount, watched(hitcount, 20_000, &[]));
            r.add_run(Setup::Bpftrace, watched(bpftrace, 90_000, &[]));
        }
        r
    }

    #[test]
    fn figures_are_medians_and_ratios_of_medians() {
        let json = report().json();
        assert_eq!(json["storm_s"]["none"]["median"], 11.0);
        assert_eq!(json["storm_s"]["hitcount"]["runs"], json!([10.3, 11.2, 12.5]));
        assert_eq!(json["ratio"]["hitcount_none"], 1.0182);
        assert_eq!(json["ratio"]["hitcount_bpftrace"], 0.9333);
        assert_eq!(json["kernel"]["hitcount"]["sched_process_exec"]["ns_per_event"], 800.0);
        // A hook that never ran has no per-event figure, and so no sum.
        assert_eq!(json["kernel"]["hitcount"]["per_process_ns"], Value::Null);
        assert_eq!(json["watcher"]["hitcount"]["vm_hwm_kib"], 20_000);
        assert_eq!(json["watcher"]["hitcount"]["exact_cpu_ms"], 4.0);
        assert_eq!(json["map_memory"]["hitcount"]["total_kib"], 3076);
        assert_eq!(json["map_memory"]["hitcount"]["bytes_by_map"]["SOCK_OWNER"], 3 << 20);
        // bpftrace had no cost run here: no exec ratio.
        assert_eq!(
            json["goals_met"],
            json!({"exec_ns": true, "exec_vs_bpftrace": null, "storm_ratio": true, "vm_hwm": false, "map_memory": true})
        );
    }

    #[test]
    fn table_shows_each_goal_next_to_its_figure() {
        let table = report().table();
        let line = |start: &str, has: &str| {
            table.lines().find(|l| l.trim_start().starts_with(start) && l.contains(has)).unwrap().to_string()
        };
        let exec = line("sched_process_exec", "ns");
        assert!(
            exec.ends_with("goal exec < 1000 ns in kernel: met; goal exec <= 1 x bpftrace: not measured"),
            "{exec}"
        );
        assert!(line("hitcount", "x none").ends_with("goal storm <= 1.03 x none: met"), "{table}");
        assert!(line("hitcount", "1.018 x none").contains("11.200 s"), "{table}");
        assert!(line("hitcount", "VmHWM").ends_with("goal VmHWM <= 12 MiB: MISSED"), "{table}");
        assert!(line("hitcount", "in 2 maps").ends_with("goal map memory <= 4 MiB: met"), "{table}");
        assert!(line("largest:", "SOCK_OWNER").ends_with("SOCK_OWNER 3072 KiB, CONTROL 4 KiB"), "{table}");
        assert!(table.ends_with("in each of its 4 runs"), "{table}");
    }
}
