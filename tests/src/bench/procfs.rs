//! What a process costs in memory and CPU, from /proc/<pid>/status and /stat.
use std::time::Duration;

use anyhow::{bail, Context, Result};

/// Resident memory in KiB, as the kernel reports it in /proc/<pid>/status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Memory {
    /// Peak resident set since the process started (VmHWM).
    pub hwm_kib: u64,
    /// Resident set now (VmRSS).
    pub rss_kib: u64,
}

pub fn memory(pid: u32) -> Result<Memory> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    parse_status(&text).with_context(|| format!("parsing {path}"))
}

/// User plus system CPU time the process (all its threads) has used so far,
/// to the resolution of [`clock_tick`].
pub fn cpu_time(pid: u32) -> Result<Duration> {
    let path = format!("/proc/{pid}/stat");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let ticks = parse_stat_cpu_ticks(&text).with_context(|| format!("parsing {path}"))?;
    Ok(clock_tick()? * u32::try_from(ticks).context("CPU time out of range")?)
}

/// The same CPU time to the nanosecond: the sum over the process's threads of
/// sum_exec_runtime, the first field of /proc/<pid>/task/<tid>/schedstat
/// (utime and stime are this figure split and rounded to clock ticks). Only
/// threads alive now count, which suits long-lived watchers. None when the
/// kernel has no schedstat files (CONFIG_SCHED_INFO off).
pub fn exact_cpu_time(pid: u32) -> Result<Option<Duration>> {
    if !std::path::Path::new(&format!("/proc/{pid}/schedstat")).exists() {
        return Ok(None);
    }
    let dir = format!("/proc/{pid}/task");
    let mut total = 0;
    for task in std::fs::read_dir(&dir).with_context(|| format!("listing {dir}"))? {
        let path = task?.path().join("schedstat");
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue, // the thread exited meanwhile
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        let ns = text.split_whitespace().next().and_then(|f| f.parse::<u64>().ok());
        total += ns.with_context(|| format!("parsing {}: {text:?}", path.display()))?;
    }
    Ok(Some(Duration::from_nanos(total)))
}

/// The unit of CPU times in /proc/<pid>/stat (USER_HZ, 10 ms almost everywhere).
pub fn clock_tick() -> Result<Duration> {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if hz <= 0 {
        bail!("sysconf(_SC_CLK_TCK) failed");
    }
    Ok(Duration::from_secs(1) / hz as u32)
}

fn parse_status(text: &str) -> Result<Memory> {
    let kib = |field: &str| -> Result<u64> {
        let line = text.lines().find(|l| l.starts_with(field)).with_context(|| format!("no {field} line"))?;
        // "VmHWM:\t    9876 kB"
        let value = line[field.len()..].trim().trim_end_matches("kB").trim();
        value.parse().with_context(|| format!("bad {field} line: {line}"))
    };
    Ok(Memory { hwm_kib: kib("VmHWM:")?, rss_kib: kib("VmRSS:")? })
}

/// The fields of a /proc/PID/stat line from field 3 (state) on. The
/// command name (field 2) may contain spaces and parentheses, so they are
/// counted from its last closing ')' (proc(5)).
pub fn stat_fields(text: &str) -> Result<Vec<&str>> {
    let rest = &text[text.rfind(')').context("no ')' after the command name")? + 1..];
    Ok(rest.split_whitespace().collect())
}

/// utime + stime in clock ticks.
fn parse_stat_cpu_ticks(text: &str) -> Result<u64> {
    let fields = stat_fields(text)?;
    // Field 3 (state) is fields[0]: utime is field 14, stime field 15.
    let field = |n: usize| -> Result<u64> {
        fields.get(n - 3).with_context(|| format!("no field {n}"))?.parse().with_context(|| format!("field {n}"))
    };
    Ok(field(14)? + field(15)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_gives_peak_and_current_rss() {
        let text = "Name:\thitcount\nVmPeak:\t  100 kB\nVmHWM:\t    9876 kB\nVmRSS:\t    9000 kB\n";
        assert_eq!(parse_status(text).unwrap(), Memory { hwm_kib: 9876, rss_kib: 9000 });
        assert!(parse_status("Name:\tx\n").is_err());
    }

    #[test]
    fn stat_fields_start_at_the_state() {
        let text = "42 (a) b (c) T 1 42";
        assert_eq!(stat_fields(text).unwrap(), ["T", "1", "42"]);
        assert!(stat_fields("42 no parenthesis").is_err());
    }

    #[test]
    fn stat_cpu_survives_odd_command_names() {
        let text = "42 (a) b (c) S 1 42 42 0 -1 4194560 100 0 0 0 7 5 0 0 20 0 1 0 123 456 789";
        assert_eq!(parse_stat_cpu_ticks(text).unwrap(), 12);
    }
}
