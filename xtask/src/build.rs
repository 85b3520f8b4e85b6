//! `cargo xtask build-ebpf`, `lint-ebpf` and `build [--static]`.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::cmd;
use crate::setup::{self, Setup, StaticTarget};

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

/// Build the eBPF object for the host's architecture and return its absolute path.
pub fn build_ebpf(setup: &Setup) -> Result<PathBuf> {
    cmd::run(&mut ebpf_cargo(setup, "build")?).context("eBPF build failed")?;
    let object = cmd::target_dir().join(EBPF_TARGET).join("release").join(EBPF_CRATE);
    eprintln!("ebpf object: {}", object.display());
    Ok(object)
}

/// The eBPF object for the machine `target` runs on. The bytecode is the
/// same, but aya-ebpf reads kprobe and uprobe arguments through that
/// architecture's pt_regs (cfg `bpf_target_arch`, from the build host unless
/// AYA_BPF_TARGET_ARCH says otherwise); another architecture's object goes
/// to its own target directory, so the host's is not rebuilt each time.
pub fn build_ebpf_for(setup: &Setup, target: &StaticTarget) -> Result<PathBuf> {
    if target.bpf_arch == std::env::consts::ARCH {
        return build_ebpf(setup);
    }
    let dir = cmd::target_dir().join(format!("ebpf-{}", target.bpf_arch));
    let mut cargo = ebpf_cargo(setup, "build")?;
    cargo.arg("--target-dir").arg(&dir).env("AYA_BPF_TARGET_ARCH", target.bpf_arch);
    cmd::run(&mut cargo).with_context(|| format!("eBPF build for {} failed", target.bpf_arch))?;
    let object = dir.join(EBPF_TARGET).join("release").join(EBPF_CRATE);
    eprintln!("ebpf object ({}): {}", target.bpf_arch, object.display());
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

/// `cargo xtask build --static [--target T]`: the eBPF object for T, then a
/// statically linked release agent for T's musl target that embeds it.
pub fn build_static(setup: &Setup, target: &StaticTarget) -> Result<Artifacts> {
    setup::ensure_static_toolchain(target)?;
    let ebpf_object = build_ebpf_for(setup, target)?;
    let binary = build_static_agent(&ebpf_object, target)?;
    Ok(Artifacts { ebpf_object, binary })
}

/// The environment cargo needs to build for a static target: cc-rs's C
/// compiler and flags (it would look for x86_64-linux-musl-gcc, which
/// Debian does not ship), and the linker when the host's cannot link.
pub fn static_env(cargo: &mut Command, target: &StaticTarget) {
    let var = target.rust_target.replace('-', "_");
    cargo.env(format!("CC_{var}"), target.cc);
    if !target.cflags.is_empty() {
        cargo.env(format!("CFLAGS_{var}"), target.cflags);
    }
    if let Some(linker) = target.linker {
        cargo.env(format!("CARGO_TARGET_{}_LINKER", var.to_uppercase()), linker);
    }
}

/// The static agent around an already built eBPF object; the caller has run
/// `setup::ensure_static_toolchain`. Fails unless the result really is static,
/// because a dynamic binary in a `FROM scratch` image only fails at run time
/// with a bare "no such file or directory" (its loader is missing).
pub fn build_static_agent(ebpf_object: &Path, target: &StaticTarget) -> Result<PathBuf> {
    let mut cargo = cmd::cargo(None);
    cargo
        .args(["build", "-p", USER_CRATE, "--release", "--target", target.rust_target])
        .env(EBPF_OBJECT_VAR, ebpf_object);
    static_env(&mut cargo, target);
    cmd::run(&mut cargo).context("static agent build failed")?;

    let binary = cmd::target_dir().join(target.rust_target).join("release").join(USER_BIN);
    let elf = std::fs::read(&binary).with_context(|| format!("cannot read {}", binary.display()))?;
    if has_interpreter(&elf).with_context(|| format!("{} is not an ELF file", binary.display()))? {
        bail!("{} is dynamically linked (it has an ELF interpreter); a static build was expected", binary.display());
    }
    eprintln!("static agent binary: {}", binary.display());
    Ok(binary)
}

/// Whether a 64-bit little-endian ELF file has a PT_INTERP program header,
/// i.e. needs a dynamic loader (static-pie binaries have none).
pub fn has_interpreter(elf: &[u8]) -> Result<bool> {
    const PT_INTERP: u32 = 3;
    let u16_at = |at: usize| elf.get(at..at + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let u32_at = |at: usize| elf.get(at..at + 4).map(|b| u32::from_le_bytes(b.try_into().unwrap()));
    let u64_at = |at: usize| elf.get(at..at + 8).map(|b| u64::from_le_bytes(b.try_into().unwrap()));
    // Magic, ELFCLASS64, ELFDATA2LSB.
    if !elf.starts_with(b"\x7fELF\x02\x01") {
        bail!("not a 64-bit little-endian ELF file");
    }
    // e_phoff, e_phentsize and e_phnum of the ELF64 header.
    let (Some(phoff), Some(phentsize), Some(phnum)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38)) else {
        bail!("truncated ELF header");
    };
    for i in 0..usize::from(phnum) {
        let at = usize::try_from(phoff)? + i * usize::from(phentsize);
        match u32_at(at) {
            Some(PT_INTERP) => return Ok(true),
            Some(_) => {}
            None => bail!("truncated program header table"),
        }
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::has_interpreter;

    #[test]
    fn tells_static_from_dynamic_elf() {
        // An ELF64 header with one program header at offset 64 of `p_type`.
        let elf = |p_type: u32| {
            let mut elf = vec![0u8; 64 + 56];
            elf[..6].copy_from_slice(b"\x7fELF\x02\x01");
            elf[0x20..0x28].copy_from_slice(&64u64.to_le_bytes());
            elf[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
            elf[0x38..0x3a].copy_from_slice(&1u16.to_le_bytes());
            elf[64..68].copy_from_slice(&p_type.to_le_bytes());
            elf
        };
        assert!(has_interpreter(&elf(3)).unwrap());
        assert!(!has_interpreter(&elf(1)).unwrap());
        assert!(has_interpreter(b"#!/bin/sh\n").is_err());
        assert!(has_interpreter(&elf(1)[..66]).is_err());
    }
}
