//! `cargo xtask test`: the unit tier (no privileges) and the privileged tier
//! (loads real BPF programs, needs root).

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::Stdio;

use anyhow::{bail, Context, Result};

use crate::build::{self, Artifacts, EBPF_OBJECT_VAR};
use crate::image::{self, IMAGE_VAR};
use crate::setup::Setup;
use crate::{cmd, fuzz, setup, vmtest};

/// The integration tests find the agent binary here.
pub const BIN_VAR: &str = "HITCOUNT_BIN";
/// Tests that cannot run on this kernel append one line each to this file.
const SKIP_LOG_VAR: &str = "HITCOUNT_SKIP_LOG";
/// Held while the privileged tier runs, by every checkout on this machine.
const PRIVILEGED_LOCK: &str = "/tmp/hitcount-privileged.lock";

pub struct Options<'a> {
    pub unit_only: bool,
    pub privileged_only: bool,
    /// Privileged suites to run (files of tests/tests); empty: all of them.
    pub suites: &'a [String],
    /// Extra arguments for both `cargo test` invocations; anything after a
    /// `--` among them goes to the test binaries.
    pub extra_args: &'a [String],
    /// Run the VM tier after the privileged tier ([`vmtest::TEST_TIER_KERNELS`]).
    pub vm_tier: bool,
}

/// Extra arguments split into cargo's and the test binaries' halves, so the
/// privileged tier can add its own `--test-threads=1` after the `--`.
struct ExtraArgs<'a> {
    cargo: &'a [String],
    harness: &'a [String],
}

impl<'a> ExtraArgs<'a> {
    fn split(args: &'a [String]) -> Self {
        match args.iter().position(|a| a == "--") {
            Some(i) => Self { cargo: &args[..i], harness: &args[i + 1..] },
            None => Self { cargo: args, harness: &[] },
        }
    }
}

pub fn run(setup: &Setup, artifacts: &Artifacts, options: &Options) -> Result<()> {
    let extra_args = ExtraArgs::split(options.extra_args);
    if options.privileged_only {
        println!("unit tier skipped: --privileged-only");
    } else {
        lint(setup, artifacts)?;
        unit_tier(artifacts, &extra_args)?;
    }

    if options.unit_only {
        println!("privileged tier skipped: --unit-only");
        println!("test summary: unit tier passed; privileged tier not run (--unit-only)");
        return Ok(());
    }

    let privileged = match privileged_tier(artifacts, options.suites, &extra_args)? {
        Some(counts) => format!("privileged tier passed ({} ran, {} skipped)", counts.ran, counts.skipped),
        None => "privileged tier not run (not root)".to_string(),
    };
    let vm = if vmtest::TEST_TIER_KERNELS.is_empty() {
        "VM tier not run (no kernel in TEST_TIER_KERNELS)".to_string()
    } else if !options.vm_tier {
        "VM tier not run (--no-vm, --suite or a filter)".to_string()
    } else if !cmd::is_root() {
        // The privileged tier already failed a run that requires it.
        "VM tier not run (not root)".to_string()
    } else {
        println!("VM tier: running (kernels {})", vmtest::TEST_TIER_KERNELS.join(", "));
        vmtest::run_test_tier(setup)?;
        format!("VM tier passed (kernels {})", vmtest::TEST_TIER_KERNELS.join(", "))
    };
    println!("test summary: unit tier passed; {privileged}; {vm}");
    Ok(())
}

/// Formatting and clippy, warnings denied, on every crate: part of the unit
/// tier so that what CI runs is what `cargo xtask test` runs.
fn lint(setup: &Setup, artifacts: &Artifacts) -> Result<()> {
    println!("lint: running");
    cmd::run(cmd::cargo(None).args(["fmt", "--all", "--", "--check"]))
        .context("lint failed: code not formatted (run `cargo fmt --all`)")?;
    let mut clippy = cmd::cargo(None);
    clippy
        .args(["clippy", "--workspace", "--exclude", "agent-ebpf", "--all-targets", "--", "-D", "warnings"])
        .env(EBPF_OBJECT_VAR, &artifacts.ebpf_object);
    cmd::run(&mut clippy).context("lint failed: clippy")?;
    fuzz::check(&artifacts.ebpf_object)?;
    build::lint_ebpf(setup)?;
    println!("lint: passed");
    Ok(())
}

/// Everything that runs without privileges, on the default toolchain, then
/// the fuzz targets (their corpus replayed on stable, then each fuzzed
/// briefly on nightly). The eBPF crate only builds for the BPF target. Of the `tests` crate only the
/// unit tests of its library and binaries (the benchmarks' parsers) belong
/// here; its integration tests are the privileged tier.
fn unit_tier(artifacts: &Artifacts, extra_args: &ExtraArgs) -> Result<()> {
    println!("unit tier: running");
    let selections: [&[&str]; 2] =
        [&["--workspace", "--exclude", "agent-ebpf", "--exclude", "tests"], &["-p", "tests", "--lib", "--bins"]];
    for selection in selections {
        let mut cargo = cmd::cargo(None);
        cargo.arg("test").args(selection).args(extra_args.cargo).env(EBPF_OBJECT_VAR, &artifacts.ebpf_object);
        if !extra_args.harness.is_empty() {
            cargo.arg("--").args(extra_args.harness);
        }
        cmd::run(&mut cargo).context("unit tier failed")?;
    }
    fuzz::replay(&artifacts.ebpf_object)?;
    match fuzz::test_seconds()? {
        0 => println!("unit tier: fuzzing skipped ({}=0)", fuzz::SECONDS_VAR),
        seconds => fuzz::run(None, seconds).context("unit tier failed")?,
    }
    println!("unit tier: passed");
    Ok(())
}

struct Counts {
    ran: u64,
    skipped: u64,
}

/// Returns None when skipped for lack of root (and that is allowed).
/// The real peers the privileged tests talk to: a mosquitto broker (MQTT
/// tests) and ping (ICMP test). Installed here rather than by the tests so
/// that stale package lists on a fresh machine get one `apt-get update`.
fn peer_packages() -> Result<()> {
    let missing: Vec<&str> = [
        ("/usr/sbin/mosquitto", "mosquitto"),
        ("/usr/bin/mosquitto_passwd", "mosquitto-clients"),
        ("/usr/bin/ping", "iputils-ping"),
        // The hardware suite checks vendor names against these databases.
        ("/usr/share/misc/pci.ids", "pci.ids"),
        ("/usr/share/misc/usb.ids", "usb.ids"),
        // The SBoM tests build an rpm and make an rpm database with it.
        ("/usr/bin/rpmbuild", "rpm"),
        // The firewall suite's rules, and its oracle (`nft -j list ruleset`).
        ("/usr/sbin/nft", "nftables"),
        ("/usr/sbin/iptables-legacy", "iptables"),
        // The login suite's private sshd (UsePAM, passwords) and its client's password feeder.
        ("/usr/sbin/sshd", "openssh-server"),
        ("/usr/bin/sshpass", "sshpass"),
        // The login suite's audit test enables audit for its run (auditctl).
        ("/usr/sbin/auditctl", "auditd"),
    ]
    .into_iter()
    .filter(|(path, _)| !Path::new(path).exists())
    .map(|(_, package)| package)
    .collect();
    if missing.is_empty() {
        return Ok(());
    }
    setup::apt_install(&missing)
}

/// The official validators the SBoM tests check the exported documents
/// with, from PyPI. Not fatal: without PyPI the tests that need them record
/// a skip saying so.
fn sbom_validators() {
    let present = || {
        std::process::Command::new("python3")
            .args(["-c", "import cyclonedx.validation.json, spdx_tools"])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if present() {
        return;
    }
    eprintln!("setup: python3 -m pip install cyclonedx-python-lib[json-validation] spdx-tools");
    let mut pip = std::process::Command::new("python3");
    pip.args(["-m", "pip", "install", "--quiet", "cyclonedx-python-lib[json-validation]", "spdx-tools"])
        .stdin(Stdio::null());
    if let Err(e) = cmd::run(&mut pip) {
        eprintln!("setup: SBoM validators not installed ({e:#}); the tests that need them will be skipped");
    }
}

fn privileged_tier(artifacts: &Artifacts, suites: &[String], extra_args: &ExtraArgs) -> Result<Option<Counts>> {
    if !cmd::is_root() {
        println!("privileged tier skipped: not root");
        if cmd::privileged_required() {
            bail!("HITCOUNT_REQUIRE_PRIVILEGED=1 but the privileged tier cannot run without root");
        }
        return Ok(None);
    }

    peer_packages()?;
    if suites.is_empty() || suites.iter().any(|s| s == "sbom") {
        sbom_validators();
    }
    // The image takes a static build: only for the suite that runs it.
    let image =
        if suites.is_empty() || suites.iter().any(|s| s == "container") { container_image(artifacts)? } else { None };
    println!("privileged tier: running");
    let skip_log = cmd::fresh_temp_file("hitcount-skip-log")?;
    // Privileged tests share kernel state (tracepoints, bpffs, namespaces):
    // two runs on one machine, from two checkouts, would disturb each
    // other's exact counts. The lock is held until this process exits.
    let _lock = cmd::exclusive_lock(Path::new(PRIVILEGED_LOCK))?;
    let result = run_privileged_tests(artifacts, image.as_deref(), suites, extra_args, &skip_log);
    // Read the log before judging the result so the skipped tests are listed
    // even when the run failed.
    let skipped = read_skip_log(&skip_log);
    let _ = std::fs::remove_file(&skip_log);
    let (cargo_ok, passed) = result?;
    let skipped = skipped?;

    for line in &skipped {
        println!("privileged tier skipped: {line}");
    }
    // Skipped tests return early and so count as passed; they did not test
    // anything.
    let counts = Counts { ran: passed.saturating_sub(skipped.len() as u64), skipped: skipped.len() as u64 };
    println!("privileged tier: {} tests ran, {} skipped", counts.ran, counts.skipped);

    if !cargo_ok {
        bail!("privileged tier failed");
    }
    if counts.ran == 0 {
        bail!("CI must fail if the privileged tier ran no test");
    }
    if cmd::privileged_required() && counts.skipped > 0 {
        bail!("HITCOUNT_REQUIRE_PRIVILEGED=1 but {} privileged tests were skipped", counts.skipped);
    }
    Ok(Some(counts))
}

/// The image the container test runs: HITCOUNT_IMAGE when the caller set it,
/// else built the way `cargo xtask image` builds it. None only when podman is
/// missing and cannot be installed; the container test then records a skip.
fn container_image(artifacts: &Artifacts) -> Result<Option<String>> {
    if let Some(image) = std::env::var_os(IMAGE_VAR) {
        println!("container image: {} (from {IMAGE_VAR})", image.to_string_lossy());
        return Ok(Some(image.to_string_lossy().into_owned()));
    }
    if !image::podman_obtainable() {
        println!("container image: not built (podman missing and no apt-get to install it)");
        return Ok(None);
    }
    let started = std::time::Instant::now();
    setup::ensure_static_toolchain(&setup::X86_64)?;
    let binary = build::build_static_agent(&artifacts.ebpf_object, &setup::X86_64)?;
    // Its own tag, so that a test run never replaces an image someone built
    // with `cargo xtask image`.
    let image = image::build_image(&binary, "test")?;
    println!("container image: {image} (static build and image took {:.0?})", started.elapsed());
    Ok(Some(image))
}

/// Run the `tests` crate's integration tests one at a time (they share
/// kernel state such as tracepoints and bpffs), echoing its stdout live while
/// collecting it. Returns whether cargo succeeded and the total of "N passed".
/// Only integration tests (`--test '*'`): the crate's unit tests ran in the
/// unit tier, and counting them here would hide a privileged tier that
/// skipped every test.
fn run_privileged_tests(
    artifacts: &Artifacts,
    image: Option<&str>,
    suites: &[String],
    extra_args: &ExtraArgs,
    skip_log: &Path,
) -> Result<(bool, u64)> {
    let mut cargo = cmd::cargo(None);
    if let Some(image) = image {
        cargo.env(IMAGE_VAR, image);
    }
    cargo.args(["test", "--release", "-p", "tests"]);
    if suites.is_empty() {
        cargo.args(["--test", "*"]);
    }
    for suite in suites {
        cargo.args(["--test", suite]);
    }
    cargo
        .args(extra_args.cargo)
        .args(["--", "--test-threads=1"])
        .args(extra_args.harness)
        .env(BIN_VAR, &artifacts.binary)
        .env(EBPF_OBJECT_VAR, &artifacts.ebpf_object)
        .env(SKIP_LOG_VAR, skip_log)
        .stdout(Stdio::piped());
    let mut child = cargo.spawn().with_context(|| format!("failed to start {}", cmd::describe(&cargo)))?;

    let mut passed = 0;
    let stdout = child.stdout.take().context("cargo test stdout was not captured")?;
    let mut terminal = std::io::stdout().lock();
    for line in BufReader::new(stdout).lines() {
        let line = line.context("cannot read cargo test output")?;
        writeln!(terminal, "{line}")?;
        terminal.flush()?;
        passed += passed_count(&line).unwrap_or(0);
    }
    drop(terminal);

    let status = child.wait().context("cannot wait for cargo test")?;
    Ok((status.success(), passed))
}

/// `test result: ok. 3 passed; 0 failed; ...` -> 3.
fn passed_count(line: &str) -> Option<u64> {
    let rest = line.trim_start().strip_prefix("test result:")?;
    let words: Vec<&str> = rest.split_whitespace().collect();
    words.windows(2).find(|pair| pair[1].trim_end_matches(';') == "passed").and_then(|pair| pair[0].parse().ok())
}

fn read_skip_log(path: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read skip log {}", path.display()))?;
    Ok(text.lines().filter(|l| !l.trim().is_empty()).map(str::to_string).collect())
}

#[cfg(test)]
mod tests {
    use super::passed_count;

    #[test]
    fn counts_passed_tests() {
        assert_eq!(
            passed_count(
                "test result: ok. 3 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; finished in 0.01s"
            ),
            Some(3)
        );
        assert_eq!(passed_count("test result: FAILED. 0 passed; 2 failed; 0 ignored"), Some(0));
        assert_eq!(passed_count("test foo ... ok"), None);
        assert_eq!(passed_count("running 3 tests"), None);
    }
}
