//! `cargo xtask fuzz [TARGET] [--seconds N]`: the cargo-fuzz targets of
//! `fuzz/` (libFuzzer, nightly), and the replay of their corpus on stable
//! that the unit tier runs.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

use crate::build::EBPF_OBJECT_VAR;
use crate::cmd;

const CARGO_FUZZ_VERSION: &str = "0.13.2";
/// Seconds each target runs in `cargo xtask test`; 0 skips the fuzzing (the
/// replay of the corpus still runs).
pub const SECONDS_VAR: &str = "HITCOUNT_FUZZ_SECONDS";
pub const TEST_SECONDS: u64 = 10;
/// libFuzzer's per-input limit: an input slower than this is reported as a
/// finding (a parser that hangs), not waited for.
const INPUT_TIMEOUT_SECONDS: u64 = 10;

fn fuzz_dir() -> PathBuf {
    cmd::workspace_root().join("fuzz")
}

/// The outcome of fuzzing one target.
pub struct Outcome {
    pub target: String,
    pub executions: Option<u64>,
    /// The input that crashed, as libFuzzer wrote it.
    pub crash: Option<PathBuf>,
    pub log: PathBuf,
}

/// Runs `only` (or every target) for `seconds` each and prints one line per
/// target. Fails after all of them ran if any crashed.
pub fn run(only: Option<&str>, seconds: u64) -> Result<()> {
    let cargo_fuzz = ensure_cargo_fuzz()?;
    let all = targets(&cargo_fuzz)?;
    let chosen: Vec<String> = match only {
        Some(t) if all.iter().any(|a| a == t) => vec![t.to_string()],
        Some(t) => bail!("no fuzz target `{t}`; the targets are: {}", all.join(", ")),
        None => all,
    };
    // One build of every target first, so that the seconds go to fuzzing.
    let started = std::time::Instant::now();
    let mut build = fuzz_cargo(&cargo_fuzz);
    build.args(["fuzz", "build"]);
    if let [one] = chosen.as_slice() {
        build.arg(one);
    }
    cmd::run(&mut build).context("fuzz build failed")?;
    println!("fuzz build: {:.0?}", started.elapsed());

    let mut crashed = Vec::new();
    for target in &chosen {
        let outcome = fuzz_one(&cargo_fuzz, target, seconds)?;
        let executions = outcome.executions.map_or("unknown".to_string(), |n| n.to_string());
        match &outcome.crash {
            None => println!("fuzz {target}: {executions} executions in {seconds} s, no crash"),
            Some(input) if known_open(target, &outcome.log) => println!(
                "fuzz {target}: known open finding after {executions} executions (fuzz/regressions/{target}/open/panics.txt), \
                 not a failure; input: {}",
                input.display()
            ),
            Some(input) => {
                println!(
                    "fuzz {target}: CRASH after {executions} executions; input: {}; log: {}",
                    input.display(),
                    outcome.log.display()
                );
                print_panic(&outcome.log);
                crashed.push(outcome);
            }
        }
    }
    if !crashed.is_empty() {
        let inputs: Vec<String> = crashed
            .iter()
            .map(|o| format!("{} ({})", o.target, o.crash.as_deref().unwrap_or(Path::new("?")).display()))
            .collect();
        bail!(
            "fuzzing found {} crash(es): {}; replay one with `cargo +nightly fuzz run TARGET INPUT`",
            crashed.len(),
            inputs.join(", ")
        );
    }
    Ok(())
}

/// The corpus and regressions of every target through its check, as plain
/// tests on the stable toolchain (fuzz/tests/replay.rs). Shares the
/// workspace's target directory so agent-user is not built twice.
pub fn replay(ebpf_object: &Path) -> Result<()> {
    let mut cargo = cmd::cargo(None);
    cargo
        .args(["test", "--manifest-path"])
        .arg(fuzz_dir().join("Cargo.toml"))
        .args(["--no-default-features", "--target-dir"])
        .arg(cmd::target_dir())
        .env(EBPF_OBJECT_VAR, ebpf_object);
    cmd::run(&mut cargo).context("fuzz corpus replay failed")
}

/// Lints the fuzz crate with clippy, warnings denied, in its stable replay
/// mode: it is outside the workspace, so the workspace's clippy does not see
/// it, and an agent API change that breaks it fails the lint step instead of
/// the unit tier's replay.
pub fn check(ebpf_object: &Path) -> Result<()> {
    let mut cargo = cmd::cargo(None);
    cargo
        .args(["clippy", "--all-targets", "--manifest-path"])
        .arg(fuzz_dir().join("Cargo.toml"))
        .args(["--no-default-features", "--target-dir"])
        .arg(cmd::target_dir())
        .args(["--", "-D", "warnings"])
        .env(EBPF_OBJECT_VAR, ebpf_object);
    cmd::run(&mut cargo).context("lint failed: the fuzz crate does not build or has clippy warnings")
}

/// Seconds per target for `cargo xtask test`.
pub fn test_seconds() -> Result<u64> {
    match std::env::var(SECONDS_VAR) {
        Ok(v) => v.trim().parse().with_context(|| format!("{SECONDS_VAR}={v:?} is not a whole number of seconds")),
        Err(_) => Ok(TEST_SECONDS),
    }
}

/// A nightly cargo in the workspace root with cargo-fuzz on PATH.
fn fuzz_cargo(cargo_fuzz: &CargoFuzz) -> Command {
    let mut cargo = cmd::cargo(Some("nightly"));
    if let Some(dir) = &cargo_fuzz.bin_dir {
        if let Ok(path) = cmd::path_with(dir) {
            cargo.env("PATH", path);
        }
    }
    cargo
}

fn targets(cargo_fuzz: &CargoFuzz) -> Result<Vec<String>> {
    let out = cmd::output(fuzz_cargo(cargo_fuzz).args(["fuzz", "list"]))?;
    let targets: Vec<String> = out.lines().map(str::trim).filter(|l| !l.is_empty()).map(str::to_string).collect();
    if targets.is_empty() {
        bail!("`cargo fuzz list` found no target in {}", fuzz_dir().display());
    }
    Ok(targets)
}

/// Fuzzes one target. New inputs go to target/fuzz-corpus/TARGET (kept
/// between runs, so later runs start where earlier ones stopped); the
/// committed seeds in fuzz/corpus/TARGET are read, never written.
fn fuzz_one(cargo_fuzz: &CargoFuzz, target: &str, seconds: u64) -> Result<Outcome> {
    let work = cmd::target_dir().join("fuzz-corpus").join(target);
    std::fs::create_dir_all(&work).with_context(|| format!("cannot create {}", work.display()))?;
    let logs = cmd::target_dir().join("fuzz-logs");
    std::fs::create_dir_all(&logs).with_context(|| format!("cannot create {}", logs.display()))?;
    let log = logs.join(format!("{target}.log"));
    let log_file = std::fs::File::create(&log).with_context(|| format!("cannot create {}", log.display()))?;

    let mut cargo = fuzz_cargo(cargo_fuzz);
    cargo
        .args(["fuzz", "run", target])
        .arg(&work)
        .arg(fuzz_dir().join("corpus").join(target))
        .arg("--")
        .arg(format!("-max_total_time={seconds}"))
        .arg(format!("-timeout={INPUT_TIMEOUT_SECONDS}"))
        .arg("-print_final_stats=1")
        .stdout(log_file.try_clone()?)
        .stderr(log_file);
    let status = cargo.status().with_context(|| format!("failed to start {}", cmd::describe(&cargo)))?;
    let text = std::fs::read_to_string(&log).with_context(|| format!("cannot read {}", log.display()))?;
    let crash = crash_input(&text).map(|p| resolve(&p));
    if !status.success() && crash.is_none() {
        bail!("fuzzing {target} failed with {status} without writing a crashing input; see {}", log.display());
    }
    Ok(Outcome { target: target.to_string(), executions: executions(&text), crash, log })
}

/// libFuzzer's paths are relative to where cargo-fuzz ran it (the workspace).
fn resolve(p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        cmd::workspace_root().join(p)
    }
}

/// `stat::number_of_executed_units: 123` (from -print_final_stats), else
/// `Done 123 runs`, else the last `#123 ...` status line (a crash ends the
/// run before the other two are printed).
fn executions(log: &str) -> Option<u64> {
    let lines = || log.lines().map(str::trim);
    lines()
        .find_map(|l| l.strip_prefix("stat::number_of_executed_units:")?.trim().parse().ok())
        .or_else(|| lines().find_map(|l| l.strip_prefix("Done ")?.split_whitespace().next()?.parse().ok()))
        .or_else(|| lines().rev().find_map(|l| l.strip_prefix('#')?.split_whitespace().next()?.parse().ok()))
}

/// `Test unit written to fuzz/artifacts/dns/crash-...` (also `timeout-`,
/// `oom-`, `leak-`).
fn crash_input(log: &str) -> Option<PathBuf> {
    log.lines().find_map(|l| l.split_once("Test unit written to ")).map(|(_, p)| PathBuf::from(p.trim()))
}

/// `FILE: MESSAGE`, e.g. `agent-user/src/x.rs:10:5:` and `attempt to add
/// with overflow`, from the first panic in a crash log.
fn panic_of(log: &str) -> Option<(String, String)> {
    let mut lines = log.lines();
    let at = lines.by_ref().find_map(|l| l.split_once("panicked at ").map(|(_, at)| at.trim().to_string()))?;
    let file = at.split(':').next()?.to_string();
    Some((file, lines.next()?.trim().to_string()))
}

/// Whether the crash is one of the target's open findings, listed as
/// `FILE: MESSAGE` lines in fuzz/regressions/TARGET/open/panics.txt (an area
/// another change is fixing); the replay keeps their inputs failing until
/// then.
fn known_open(target: &str, log: &Path) -> bool {
    let list = fuzz_dir().join("regressions").join(target).join("open").join("panics.txt");
    let (Ok(list), Ok(log)) = (std::fs::read_to_string(list), std::fs::read_to_string(log)) else { return false };
    let Some((file, message)) = panic_of(&log) else { return false };
    list.lines().filter_map(|l| l.split_once(": ")).any(|(f, m)| file.ends_with(f.trim()) && m.trim() == message)
}

/// The panic message and location from a crash log, so CI output says what
/// broke without opening the log.
fn print_panic(log: &Path) {
    let Ok(text) = std::fs::read_to_string(log) else { return };
    let lines: Vec<&str> = text.lines().collect();
    if let Some(i) = lines.iter().position(|l| l.contains("panicked at")) {
        for l in &lines[i..lines.len().min(i + 4)] {
            println!("    {l}");
        }
    } else if let Some(l) =
        lines.iter().find(|l| l.contains("ERROR: libFuzzer") || l.contains("ERROR: AddressSanitizer"))
    {
        println!("    {l}");
    }
}

/// How to reach cargo-fuzz: already on PATH, or installed by us.
struct CargoFuzz {
    /// Directory to put in front of PATH; None when PATH has it.
    bin_dir: Option<PathBuf>,
}

/// cargo-fuzz from PATH if it is there, else built once from crates.io
/// (`cargo install --locked`) into ~/.cache/hitcount/.
fn ensure_cargo_fuzz() -> Result<CargoFuzz> {
    if cmd::on_path("cargo-fuzz") {
        return Ok(CargoFuzz { bin_dir: None });
    }
    let home = std::env::var_os("HOME").context("HOME is not set; cannot locate ~/.cache")?;
    let root = PathBuf::from(home).join(".cache/hitcount").join(format!("cargo-fuzz-{CARGO_FUZZ_VERSION}"));
    let bin = root.join("bin");
    if bin.join("cargo-fuzz").is_file() {
        return Ok(CargoFuzz { bin_dir: Some(bin) });
    }
    eprintln!("fuzz: installing cargo-fuzz {CARGO_FUZZ_VERSION} into {} (a few minutes, once)", root.display());
    // Outside the workspace, so its configuration cannot influence the install.
    let scratch = std::env::temp_dir();
    cmd::run(
        cmd::rust_tool("cargo")
            .args(["install", "cargo-fuzz", "--version", CARGO_FUZZ_VERSION, "--locked", "--root"])
            .arg(&root)
            .current_dir(&scratch)
            .stdin(Stdio::null()),
    )
    .context("cannot install cargo-fuzz")?;
    if !bin.join("cargo-fuzz").is_file() {
        bail!("cargo install succeeded but {} is missing", bin.join("cargo-fuzz").display());
    }
    Ok(CargoFuzz { bin_dir: Some(bin) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_executions_and_the_crashing_input() {
        let log = "#2\tINITED cov: 10 ft: 10 corp: 3/30b exec/s: 0 rss: 30Mb\n\
                   #4096\tpulse  cov: 12 ft: 14 corp: 4/40b lim: 43 exec/s: 2048 rss: 31Mb\n\
                   thread '<unnamed>' panicked at agent-user/src/duration.rs:33:19:\n\
                   attempt to multiply with overflow\n\
                   artifact_prefix='/w/fuzz/artifacts/duration/'; Test unit written to /w/fuzz/artifacts/duration/crash-ab12\n\
                   stat::number_of_executed_units: 5000\n";
        assert_eq!(executions(log), Some(5000));
        assert_eq!(crash_input(log), Some(PathBuf::from("/w/fuzz/artifacts/duration/crash-ab12")));
        assert_eq!(
            panic_of(log),
            Some(("agent-user/src/duration.rs".to_string(), "attempt to multiply with overflow".to_string()))
        );
        let no_stats = "#2\tINITED\n#8192\tpulse  cov: 12\nDone 9000 runs in 1 second(s)\n";
        assert_eq!(executions(no_stats), Some(9000));
        assert_eq!(
            executions("#2\tINITED\n#8192\tpulse  cov: 12\n==1== ERROR: libFuzzer: deadly signal\n"),
            Some(8192)
        );
        assert_eq!(crash_input(no_stats), None);
    }
}
