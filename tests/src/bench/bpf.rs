//! Kernel time spent in BPF programs: `kernel.bpf_stats_enabled` makes the
//! kernel add up run_time_ns and run_cnt per program, and `bpftool prog show`
//! reads them.
use std::{
    collections::BTreeMap,
    path::PathBuf,
    process::{Command, Stdio},
};

use anyhow::{bail, Context, Result};
use serde_json::Value;

const STATS_SYSCTL: &str = "/proc/sys/kernel/bpf_stats_enabled";

/// Keeps kernel.bpf_stats_enabled at 1 while it lives, then restores the old
/// value: the accounting costs two clock reads per program run, on every
/// program of the machine, so it must not outlive the benchmark.
pub struct RunTimeStats {
    old: String,
}

impl RunTimeStats {
    pub fn enable() -> Result<RunTimeStats> {
        let old = std::fs::read_to_string(STATS_SYSCTL)
            .with_context(|| format!("reading {STATS_SYSCTL} (BPF run-time statistics need Linux >= 5.1)"))?;
        std::fs::write(STATS_SYSCTL, "1").with_context(|| format!("writing 1 to {STATS_SYSCTL}"))?;
        Ok(RunTimeStats { old: old.trim().to_string() })
    }
}

impl Drop for RunTimeStats {
    fn drop(&mut self) {
        if let Err(e) = std::fs::write(STATS_SYSCTL, &self.old) {
            eprintln!("warning: could not restore {STATS_SYSCTL} to {}: {e}", self.old);
        }
    }
}

/// One loaded program as `bpftool prog show` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProgStats {
    pub id: u32,
    /// The kernel keeps 15 bytes of the name (BPF_OBJ_NAME_LEN).
    pub name: String,
    pub run_time_ns: u64,
    pub run_cnt: u64,
}

impl ProgStats {
    pub fn ns_per_run(&self) -> Option<f64> {
        (self.run_cnt > 0).then(|| self.run_time_ns as f64 / self.run_cnt as f64)
    }
}

/// One map and what the kernel charges for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapMemory {
    pub id: u32,
    /// The kernel keeps 15 bytes of the name.
    pub name: String,
    pub bytes: u64,
}

pub struct Bpftool {
    path: PathBuf,
}

impl Bpftool {
    pub fn new(path: PathBuf) -> Bpftool {
        Bpftool { path }
    }

    fn json(&self, args: &[&str]) -> Result<Value> {
        let mut cmd = Command::new(&self.path);
        cmd.args(args).arg("--json").stdin(Stdio::null());
        let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
        if !out.status.success() {
            bail!("{cmd:?} failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr).trim());
        }
        serde_json::from_slice(&out.stdout).with_context(|| format!("{cmd:?} printed no JSON"))
    }

    /// Every loaded program, by id.
    pub fn programs(&self) -> Result<BTreeMap<u32, ProgStats>> {
        parse_prog_show(&self.json(&["prog", "show"])?)
    }

    /// Every map `pid` holds open, by id, with the memory the kernel charges
    /// for it: `memlock` of the map fd's fdinfo (since 6.4 what the map
    /// really holds, before that an estimate from its sizes), named by
    /// `bpftool map show`.
    pub fn maps_of(&self, pid: u32) -> Result<BTreeMap<u32, MapMemory>> {
        let names = parse_map_names(&self.json(&["map", "show"])?);
        let mut maps = BTreeMap::new();
        for (id, bytes) in fdinfo_of(pid)?.iter().filter_map(|t| parse_map_fdinfo(t)) {
            let name = names.get(&id).cloned().unwrap_or_default();
            maps.insert(id, MapMemory { id, name, bytes });
        }
        Ok(maps)
    }

    /// Tracepoint name -> program id for everything `pid` has attached,
    /// whichever way it attached it. Program names cannot tell this: the
    /// kernel cuts both sched_process_exec and sched_process_exit to
    /// "sched_process_e".
    pub fn attachments(&self, pid: u32) -> Result<BTreeMap<String, u32>> {
        let mut found = link_attachments(pid)?;
        found.extend(parse_perf_show(&self.json(&["perf", "show"])?, pid));
        Ok(found)
    }
}

/// bpf_link fds (how aya attaches): their fdinfo names the tracepoint
/// (`tp_name`) and the program (`prog_id`).
fn link_attachments(pid: u32) -> Result<BTreeMap<String, u32>> {
    Ok(fdinfo_of(pid)?.iter().filter_map(|t| parse_link_fdinfo(t)).collect())
}

/// The fdinfo text of every fd `pid` has open.
fn fdinfo_of(pid: u32) -> Result<Vec<String>> {
    let dir = format!("/proc/{pid}/fdinfo");
    let mut texts = Vec::new();
    for entry in std::fs::read_dir(&dir).with_context(|| format!("listing {dir}"))? {
        // An fd closed between listing and reading is simply gone.
        if let Ok(text) = std::fs::read_to_string(entry?.path()) {
            texts.push(text);
        }
    }
    Ok(texts)
}

fn fdinfo_field<'a>(text: &'a str, name: &str) -> Option<&'a str> {
    text.lines().find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(':')).map(str::trim))
}

/// A map fd's (id, memlock bytes). Program fds have a memlock too, but no map_id.
fn parse_map_fdinfo(text: &str) -> Option<(u32, u64)> {
    fdinfo_field(text, "map_type")?;
    Some((fdinfo_field(text, "map_id")?.parse().ok()?, fdinfo_field(text, "memlock")?.parse().ok()?))
}

fn parse_map_names(json: &Value) -> BTreeMap<u32, String> {
    let Some(entries) = json.as_array() else { return BTreeMap::new() };
    entries
        .iter()
        .filter_map(|e| Some((e["id"].as_u64()?.try_into().ok()?, e["name"].as_str().unwrap_or_default().to_string())))
        .collect()
}

fn parse_link_fdinfo(text: &str) -> Option<(String, u32)> {
    fdinfo_field(text, "link_type")?;
    Some((fdinfo_field(text, "tp_name")?.to_string(), fdinfo_field(text, "prog_id")?.parse().ok()?))
}

/// Perf event fds with a program attached (how bpftrace attaches
/// tracepoints), as `bpftool perf show` finds them.
fn parse_perf_show(json: &Value, pid: u32) -> Vec<(String, u32)> {
    let Some(entries) = json.as_array() else { return Vec::new() };
    entries
        .iter()
        .filter(|e| e["pid"].as_u64() == Some(pid.into()))
        .filter_map(|e| {
            let hook = e["tracepoint"].as_str()?.to_string();
            Some((hook, e["prog_id"].as_u64()?.try_into().ok()?))
        })
        .collect()
}

fn parse_prog_show(json: &Value) -> Result<BTreeMap<u32, ProgStats>> {
    let entries = json.as_array().context("`bpftool prog show --json` did not print an array")?;
    let mut progs = BTreeMap::new();
    for e in entries {
        let id = e["id"].as_u64().and_then(|i| u32::try_from(i).ok()).context("program without an id")?;
        progs.insert(
            id,
            ProgStats {
                id,
                name: e["name"].as_str().unwrap_or_default().to_string(),
                // bpftool leaves both out while the program has not run with
                // statistics enabled.
                run_time_ns: e["run_time_ns"].as_u64().unwrap_or(0),
                run_cnt: e["run_cnt"].as_u64().unwrap_or(0),
            },
        );
    }
    Ok(progs)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn link_fdinfo_names_the_tracepoint() {
        let perf = "pos:\t0\nlink_type:\tperf\nlink_id:\t78\nprog_tag:\t1b0f\nprog_id:\t183\n\
                    tp_name:\tsched_process_exec\nevent_type:\ttracepoint\n";
        assert_eq!(parse_link_fdinfo(perf), Some(("sched_process_exec".into(), 183)));
        let raw = "link_type:\traw_tracepoint\nlink_id:\t79\nprog_id:\t184\ntp_name:\tsched_process_fork\n";
        assert_eq!(parse_link_fdinfo(raw), Some(("sched_process_fork".into(), 184)));
        // A program fd also has a prog_id, but attaches nothing.
        assert_eq!(parse_link_fdinfo("prog_type:\t5\nprog_id:\t183\nrun_cnt:\t0\n"), None);
    }

    #[test]
    fn map_fdinfo_gives_id_and_memlock() {
        let map = "pos:\t0\nflags:\t02000002\nmap_type:\t9\nkey_size:\t8\nvalue_size:\t544\n\
                   max_entries:\t4096\nmemlock:\t2536512\nmap_id:\t41\nfrozen:\t0\n";
        assert_eq!(parse_map_fdinfo(map), Some((41, 2_536_512)));
        // A program fd has a memlock too.
        assert_eq!(parse_map_fdinfo("prog_type:\t5\nmemlock:\t4096\nprog_id:\t183\n"), None);
        let names = parse_map_names(&json!([{"id": 41, "name": "SOCK_OWNER"}, {"id": 42}]));
        assert_eq!(names, BTreeMap::from([(41, "SOCK_OWNER".to_string()), (42, String::new())]));
    }

    #[test]
    fn perf_show_keeps_only_the_pid_asked_for() {
        let json = json!([
            {"pid": 7, "fd": 11, "prog_id": 189, "fd_type": "tracepoint", "tracepoint": "sched_process_exec"},
            {"pid": 8, "fd": 13, "prog_id": 190, "fd_type": "tracepoint", "tracepoint": "sched_process_fork"},
            {"pid": 7, "fd": 14, "prog_id": 191, "fd_type": "kprobe", "func": "do_exit"},
        ]);
        assert_eq!(parse_perf_show(&json, 7), vec![("sched_process_exec".to_string(), 189)]);
    }

    #[test]
    fn prog_show_without_stats_reads_as_zero() {
        let json = json!([
            {"id": 176, "type": "tracepoint", "name": "sched_process_e", "run_time_ns": 5000, "run_cnt": 10},
            {"id": 177, "type": "raw_tracepoint", "name": "sched_process_f"},
        ]);
        let progs = parse_prog_show(&json).unwrap();
        assert_eq!(progs[&176].ns_per_run(), Some(500.0));
        assert_eq!(progs[&177], ProgStats { id: 177, name: "sched_process_f".into(), run_time_ns: 0, run_cnt: 0 });
        assert_eq!(progs[&177].ns_per_run(), None);
    }
}
