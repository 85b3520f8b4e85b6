//! `cargo xtask build-ebpf`, `lint-ebpf` and `build`.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, Result};

use crate::cmd;
use crate::setup::Setup;

const EBPF_CRATE: &str = "agent-ebpf";
const EBPF_TARGET: &str = "bpfel-unknown-none";
const USER_CRATE: &str = "agent-user";
const USER_BIN: &str = "hitcount";
/// agent-user embeds the eBPF object from this path at compile time.
pub const EBPF_OBJECT_VAR: &str = "HITCOUNT_EBPF_OBJECT";

/// Paths produced by a full build.
pub struct Artifacts {
    pub ebpf_object: PathBuf,
    pub binary: PathBuf,
}

/// A nightly cargo command for the BPF target. `core` is not shipped for
/// bpfel-unknown-none, so it is built from rust-src; bpf-linker must be on
/// PATH because rustc invokes it as the target's linker.
fn ebpf_cargo(setup: &Setup, subcommand: &str) -> Result<Command> {
    let mut cargo = cmd::cargo(Some("nightly"));
    cargo
        .args([subcommand, "-p", EBPF_CRATE, "--target", EBPF_TARGET, "-Z", "build-std=core", "--release"])
        .env("PATH", cmd::path_with(setup.bpf_linker_bin_dir())?);
    Ok(cargo)
}

/// Build the eBPF object and return its absolute path.
pub fn build_ebpf(setup: &Setup) -> Result<PathBuf> {
    cmd::run(&mut ebpf_cargo(setup, "build")?).context("eBPF build failed")?;
    let object = cmd::target_dir().join(EBPF_TARGET).join("release").join(EBPF_CRATE);
    eprintln!("ebpf object: {}", object.display());
    Ok(object)
}

/// Clippy on the eBPF crate; it can only be checked for the BPF target.
pub fn lint_ebpf(setup: &Setup) -> Result<()> {
    let mut cargo = ebpf_cargo(setup, "clippy")?;
    cargo.args(["--", "-D", "warnings"]);
    cmd::run(&mut cargo).context("eBPF lint failed")
}

/// Build the eBPF object, then the userspace agent that embeds it.
pub fn build(setup: &Setup, debug: bool) -> Result<Artifacts> {
    let ebpf_object = build_ebpf(setup)?;

    // Userspace builds on the default (stable) toolchain.
    let mut cargo = cmd::cargo(None);
    cargo.args(["build", "-p", USER_CRATE]);
    if !debug {
        cargo.arg("--release");
    }
    cargo.env(EBPF_OBJECT_VAR, &ebpf_object);
    cmd::run(&mut cargo).context("agent build failed")?;

    let profile = if debug { "debug" } else { "release" };
    let binary = cmd::target_dir().join(profile).join(USER_BIN);
    eprintln!("agent binary: {}", binary.display());
    Ok(Artifacts { ebpf_object, binary })
}
