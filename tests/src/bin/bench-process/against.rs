//! `--against BIN`: the kernel cost of this build's process programs as a
//! ratio to another build's, both loaded at once and timed over the same
//! storms.
//!
//! Run one after the other, two builds' figures differ by more than most
//! changes do (the machine's state moves between runs). Loaded together,
//! both see every exec under the same conditions, but the program attached
//! second runs on caches the first one warmed (the task, its mm, the argv
//! pages): about 0.7-0.9 x, measured with the same build twice. So each
//! round runs two storms, one in each attach order, and the order cancels
//! out: with c1 = B/A when A attached first and c2 = A/B when B attached
//! first, B/A is sqrt(c1 / c2) and the order's own factor sqrt(c1 * c2).
use std::{collections::BTreeMap, path::Path, process::Command};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use tests::{
    bench::{bpf::RunTimeStats, check_interrupted, median},
    marker, Agent,
};

use crate::{Bench, HOOKS, SETTLE};

/// Per hook, this build's ns per run and the other's, from one storm.
type Costs = BTreeMap<&'static str, (f64, f64)>;

/// One round: the order-corrected ratio (other / this) and the order's factor.
struct Round {
    ratio: BTreeMap<&'static str, f64>,
    order: BTreeMap<&'static str, f64>,
}

pub fn run(bench: &Bench, this: &Path, other: &Path) -> Result<()> {
    println!(
        "side by side: {} (A) and {} (B), both loaded, {} rounds of two storms (A attached first, then B first) \
         of {} spawns from {} threads ({})",
        this.display(),
        other.display(),
        bench.options.rounds,
        bench.storm.execs,
        bench.storm.threads,
        bench.storm.spawn.name()
    );
    let _stats = RunTimeStats::enable()?;
    let mut rounds = Vec::new();
    for round in 0..bench.options.rounds {
        let a_first = storm(bench, this, other)?;
        let b_first = storm(bench, other, this)?;
        let mut r = Round { ratio: BTreeMap::new(), order: BTreeMap::new() };
        for (hook, _) in HOOKS {
            let (a1, b2) = a_first[hook];
            let (b1, a2) = b_first[hook];
            let (c1, c2) = (b2 / a1, a2 / b1);
            r.ratio.insert(hook, (c1 / c2).sqrt());
            r.order.insert(hook, (c1 * c2).sqrt());
            println!(
                "  round {}/{} {hook:<20} A first: A {a1:>6.0} B {b2:>6.0} ns   B first: B {b1:>6.0} A {a2:>6.0} ns   \
                 B/A {:.3}   second / first {:.3}",
                round + 1,
                bench.options.rounds,
                r.ratio[hook],
                r.order[hook]
            );
        }
        rounds.push(r);
    }
    println!();
    println!("Kernel time per event, B / A, order cancelled (median of {} rounds)", rounds.len());
    let mut summary = serde_json::Map::new();
    for (hook, _) in HOOKS {
        let ratios: Vec<f64> = rounds.iter().map(|r| r.ratio[hook]).collect();
        let orders: Vec<f64> = rounds.iter().map(|r| r.order[hook]).collect();
        let (ratio, order) = (median(&ratios).unwrap_or(f64::NAN), median(&orders).unwrap_or(f64::NAN));
        println!(
            "  {hook:<20} {ratio:.3}  [{}]",
            ratios.iter().map(|r| format!("{r:.3}")).collect::<Vec<_>>().join(" ")
        );
        summary
            .insert(hook.to_string(), json!({ "ratio_b_over_a": ratio, "rounds": ratios, "second_over_first": order }));
    }
    let line: Value = json!({
        "bench": "process",
        "mode": "against",
        "a": this.display().to_string(),
        "b": other.display().to_string(),
        "execs_per_storm": bench.storm.execs,
        "threads": bench.storm.threads,
        "spawn": bench.storm.spawn.name(),
        "kernel": summary,
    });
    println!("{line}");
    Ok(())
}

/// One storm with `first` attached, then `second`; both must count every
/// exec. Returns per hook (first's ns per run, second's).
fn storm(bench: &Bench, first: &Path, second: &Path) -> Result<Costs> {
    let interval = bench.options.interval.as_str();
    let start = |bin: &Path| {
        let mut cmd = Command::new(bin);
        cmd.args(["run", "--interval", interval]);
        Agent::spawn(cmd).with_context(|| format!("starting {}", bin.display()))
    };
    // Started one after the other: the second's programs attach after the
    // first's, so the first runs first at every exec.
    let agents = [start(first)?, start(second)?];
    std::thread::sleep(SETTLE);
    check_interrupted()?;
    let programs = |pid: u32| -> Result<BTreeMap<&'static str, u32>> {
        let attached = bench.bpftool.attachments(pid)?;
        HOOKS
            .iter()
            .map(|(hook, _)| {
                Ok((*hook, *attached.get(*hook).with_context(|| format!("pid {pid} has nothing on {hook}"))?))
            })
            .collect()
    };
    let ids = [programs(agents[0].pid())?, programs(agents[1].pid())?];
    let before = bench.bpftool.programs()?;
    let marker = marker("bench");
    bench.storm.run(&marker)?;
    let after = bench.bpftool.programs()?;
    let ns = |id: u32| -> Result<f64> {
        let (b, a) = (before.get(&id), after.get(&id));
        let (Some(b), Some(a)) = (b, a) else { bail!("program {id} is gone") };
        let runs = a.run_cnt - b.run_cnt;
        if runs < bench.storm.execs {
            bail!("program {id} ran {runs} times over a storm of {} execs", bench.storm.execs);
        }
        Ok((a.run_time_ns - b.run_time_ns) as f64 / runs as f64)
    };
    let mut costs = Costs::new();
    for (hook, _) in HOOKS {
        costs.insert(hook, (ns(ids[0][hook])?, ns(ids[1][hook])?));
    }
    for agent in agents {
        bench.hitcount_execs(agent, &marker)?;
    }
    Ok(costs)
}
