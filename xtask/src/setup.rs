//! `cargo xtask setup`: make a machine able to build and run the agent.
//!
//! Every step checks first and only acts when something is missing, so it is
//! cheap enough to run before every other subcommand.
//!
//! Progress goes to stderr: `cargo xtask run` hands stdout to the agent,
//! whose JSON lines may be piped.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::cmd;

const NIGHTLY: &str = "nightly";
const BPF_LINKER_VERSION: &str = "0.13.0";
/// Environment variable naming an offline `rust-src` tarball (its contents
/// start with `library/`), for machines where rustup cannot download.
const RUST_SRC_TARBALL_VAR: &str = "HITCOUNT_RUST_SRC_TARBALL";
/// rustup can hang on a network that accepts connections but never answers.
const RUSTUP_COMPONENT_TIMEOUT: Duration = Duration::from_secs(180);
/// The target of `cargo xtask build --static`: musl links its libc in, so the
/// binary runs in a `FROM scratch` image and on any x86_64 Linux.
pub const STATIC_TARGET: &str = "x86_64-unknown-linux-musl";
/// The C compiler for that target (Debian's musl-tools).
pub const MUSL_CC: &str = "musl-gcc";

/// What the other subcommands need to know after setup.
pub struct Setup {
    bpf_linker_bin: PathBuf,
}

impl Setup {
    /// Directory holding `bpf-linker`; prepend it to PATH for eBPF builds
    /// (rustc invokes it by name as the BPF target's linker).
    pub fn bpf_linker_bin_dir(&self) -> &Path {
        &self.bpf_linker_bin
    }
}

/// Run all setup steps in order.
pub fn run() -> Result<Setup> {
    let nightly = ensure_nightly()?;
    ensure_rust_src(&nightly)?;
    let bpf_linker_bin = ensure_bpf_linker(&nightly)?;
    ensure_kernel_filesystems()?;
    Ok(Setup { bpf_linker_bin })
}

fn step(name: &str, outcome: &str) {
    eprintln!("setup: {name}: {outcome}");
}

/// Facts about the installed nightly toolchain.
pub struct Nightly {
    sysroot: PathBuf,
    /// First 9 characters of the commit hash, as rustc prints it in `-V`.
    short_commit: String,
}

impl Nightly {
    /// Ask `rustc +nightly` about itself; fails if nightly is not installed.
    fn detect() -> Result<Self> {
        let version = cmd::output(cmd::rust_tool("rustc").args([&format!("+{NIGHTLY}"), "-vV"]))?;
        let commit = version
            .lines()
            .find_map(|line| line.strip_prefix("commit-hash:"))
            .map(str::trim)
            .context("`rustc +nightly -vV` printed no commit-hash")?;
        let short_commit = commit.get(..9).unwrap_or(commit).to_string();
        let sysroot = cmd::output(cmd::rust_tool("rustc").args([&format!("+{NIGHTLY}"), "--print", "sysroot"]))?;
        Ok(Self { sysroot: PathBuf::from(sysroot.trim()), short_commit })
    }

    fn rust_src_dir(&self) -> PathBuf {
        self.sysroot.join("lib/rustlib/src/rust")
    }

    /// The toolchain's own libLLVM, e.g. `libLLVM.so.22.1-rust-1.97.0-nightly`.
    /// (The sibling `libLLVM-22-rust-*.so` is the same library under another
    /// name; the versioned soname is the one the linker's RUNPATH lookup uses.)
    fn libllvm(&self) -> Result<PathBuf> {
        let lib = self.sysroot.join("lib");
        let entries = std::fs::read_dir(&lib).with_context(|| format!("cannot read {}", lib.display()))?;
        for entry in entries {
            let name = entry?.file_name();
            let name = name.to_string_lossy();
            if name.starts_with("libLLVM.so.") && name.contains("-rust-") {
                return Ok(lib.join(&*name));
            }
        }
        bail!("no libLLVM.so.*-rust-* in {}", lib.display())
    }
}

/// Step a: the nightly toolchain, needed for `-Z build-std` on the BPF target.
fn ensure_nightly() -> Result<Nightly> {
    if let Ok(nightly) = Nightly::detect() {
        step("nightly toolchain", &format!("already present ({})", nightly.short_commit));
        return Ok(nightly);
    }
    cmd::run(cmd::rust_tool("rustup").args(["toolchain", "install", NIGHTLY, "--profile", "minimal"]))
        .context("cannot install the nightly toolchain")?;
    let nightly = Nightly::detect()?;
    step("nightly toolchain", &format!("done ({})", nightly.short_commit));
    Ok(nightly)
}

/// Step b: rust-src, which `-Z build-std=core` compiles `core` from.
fn ensure_rust_src(nightly: &Nightly) -> Result<()> {
    let src = nightly.rust_src_dir();
    let marker = src.join("library/core/Cargo.toml");
    if marker.exists() {
        step("rust-src", "already present");
        return Ok(());
    }

    match rustup_add_rust_src() {
        Ok(()) if marker.exists() => {
            step("rust-src", "done (rustup)");
            return Ok(());
        }
        Ok(()) => eprintln!("setup: rustup succeeded but {} is still missing", marker.display()),
        Err(e) => eprintln!("setup: rustup could not add rust-src: {e:#}"),
    }

    let Some(tarball) = std::env::var_os(RUST_SRC_TARBALL_VAR).map(PathBuf::from) else {
        bail!(
            "rust-src for nightly is missing and rustup could not install it; \
             set {RUST_SRC_TARBALL_VAR} to the offline rust-src tarball \
             (e.g. ../shared/toolchain/rust-src-*.tgz)"
        );
    };
    if !tarball.is_file() {
        bail!("{RUST_SRC_TARBALL_VAR}={} is not a file", tarball.display());
    }
    std::fs::create_dir_all(&src).with_context(|| format!("cannot create {}", src.display()))?;
    cmd::run(Command::new("tar").arg("xzf").arg(&tarball).arg("-C").arg(&src))?;
    if !marker.exists() {
        bail!("{} did not provide {}", tarball.display(), marker.display());
    }
    step("rust-src", &format!("done (from {})", tarball.display()));
    Ok(())
}

/// `rustup component add rust-src`, killed if it runs past the timeout.
fn rustup_add_rust_src() -> Result<()> {
    let mut rustup = cmd::rust_tool("rustup");
    rustup.args(["component", "add", "rust-src", "--toolchain", NIGHTLY]).stdin(Stdio::null());
    let mut child = rustup.spawn().with_context(|| format!("failed to start {}", cmd::describe(&rustup)))?;
    let deadline = Instant::now() + RUSTUP_COMPONENT_TIMEOUT;
    loop {
        if let Some(status) = child.try_wait()? {
            if status.success() {
                return Ok(());
            }
            bail!("{} failed with {status}", cmd::describe(&rustup));
        }
        if Instant::now() >= deadline {
            // Best effort: the child may exit between try_wait and kill.
            let _ = child.kill();
            let _ = child.wait();
            bail!("{} timed out after {:?}", cmd::describe(&rustup), RUSTUP_COMPONENT_TIMEOUT);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Where bpf-linker is cached. The key holds everything the binary depends
/// on: its own version, the libLLVM it links to, and the nightly that ships
/// that libLLVM, so a toolchain update builds a fresh linker.
fn bpf_linker_cache_dir(nightly: &Nightly, libllvm: &Path) -> Result<PathBuf> {
    let home = std::env::var_os("HOME").context("HOME is not set; cannot locate ~/.cache")?;
    let soname = file_name(libllvm)?;
    Ok(PathBuf::from(home)
        .join(".cache/hitcount")
        .join(format!("bpf-linker-{BPF_LINKER_VERSION}-{soname}-{}", nightly.short_commit)))
}

/// Step c: bpf-linker built against the nightly toolchain's own libLLVM, so
/// no system LLVM of the matching version is needed and the bitcode rustc
/// emits is always readable by the linker.
fn ensure_bpf_linker(nightly: &Nightly) -> Result<PathBuf> {
    let libllvm = nightly.libllvm()?;
    let cache = bpf_linker_cache_dir(nightly, &libllvm)?;
    let bin = cache.join("bin");
    if bin.join("bpf-linker").is_file() {
        step("bpf-linker", &format!("already present ({})", bin.display()));
        return Ok(bin);
    }

    let soname = file_name(&libllvm)?;
    let major = llvm_major(soname)?;

    // bpf-linker's build script links `-lLLVM` from $LLVM_PREFIX/lib, and the
    // resulting binary finds the library at run time under its soname, so
    // the prefix needs the file under both names.
    let llvm_lib = cache.join("llvm/lib");
    std::fs::create_dir_all(&llvm_lib).with_context(|| format!("cannot create {}", llvm_lib.display()))?;
    for name in ["libLLVM.so", soname] {
        let link = llvm_lib.join(name);
        // Replace rather than keep: a stale link from an interrupted run
        // might point elsewhere.
        if link.symlink_metadata().is_ok() {
            std::fs::remove_file(&link).with_context(|| format!("cannot remove {}", link.display()))?;
        }
        std::os::unix::fs::symlink(&libllvm, &link).with_context(|| format!("cannot link {}", link.display()))?;
    }

    // Outside the workspace, so its .cargo/config.toml and any toolchain
    // file cannot influence the install.
    let scratch = std::env::temp_dir().join("hitcount-bpf-linker-install");
    std::fs::create_dir_all(&scratch).with_context(|| format!("cannot create {}", scratch.display()))?;
    eprintln!("setup: bpf-linker: building {BPF_LINKER_VERSION} against {soname} (takes a minute or two)");
    cmd::run(
        cmd::rust_tool("cargo")
            .arg(format!("+{NIGHTLY}"))
            .args(["install", "bpf-linker", "--version", BPF_LINKER_VERSION, "--locked"])
            .args(["--no-default-features", "--features", &format!("llvm-{major}")])
            .arg("--root")
            .arg(&cache)
            .env("LLVM_PREFIX", cache.join("llvm"))
            .current_dir(&scratch),
    )
    .context("cannot build bpf-linker")?;
    if !bin.join("bpf-linker").is_file() {
        bail!("cargo install succeeded but {} is missing", bin.join("bpf-linker").display());
    }
    step("bpf-linker", &format!("done ({})", bin.display()));
    Ok(bin)
}

/// `libLLVM.so.22.1-rust-1.97.0-nightly` -> 22.
fn llvm_major(soname: &str) -> Result<u32> {
    soname
        .strip_prefix("libLLVM.so.")
        .and_then(|rest| rest.split(['.', '-']).next())
        .and_then(|major| major.parse().ok())
        .with_context(|| format!("cannot read the LLVM major version from {soname}"))
}

fn file_name(path: &Path) -> Result<&str> {
    path.file_name().and_then(|n| n.to_str()).with_context(|| format!("{} has no UTF-8 file name", path.display()))
}

/// Step d: the filesystems the agent and the privileged tests use. Only root
/// can mount them; anyone else just gets told.
fn ensure_kernel_filesystems() -> Result<()> {
    if !cmd::is_root() {
        step("tracefs/bpffs", "skipped (not root)");
        return Ok(());
    }

    if Path::new("/sys/kernel/tracing/events").exists() {
        step("tracefs", "already present");
    } else {
        cmd::run(Command::new("mount").args(["-t", "tracefs", "tracefs", "/sys/kernel/tracing"]))?;
        step("tracefs", "done (/sys/kernel/tracing)");
    }

    if bpffs_mounted()? {
        step("bpffs", "already present");
    } else {
        cmd::run(Command::new("mount").args(["-t", "bpf", "bpf", "/sys/fs/bpf"]))?;
        step("bpffs", "done (/sys/fs/bpf)");
    }
    Ok(())
}

/// A target a static (musl) agent is built for: the Rust target, and the
/// C compiler cc-rs needs for it (ring, pulled in by rustls, compiles C and
/// assembly; cc-rs does not fall back to the glibc toolchain for musl).
pub struct StaticTarget {
    /// The name `--target` takes in `cargo xtask build --static --target`.
    pub name: &'static str,
    pub rust_target: &'static str,
    pub cc: &'static str,
    /// The Debian package that ships `cc`.
    pub cc_package: &'static str,
    /// Extra CFLAGS: the bundled sqlite's LFS probe fails with the glibc
    /// cross compiler's headers against musl (off64_t is glibc's).
    pub cflags: &'static str,
    /// The linker, when rustc's default (`cc`, the host's) cannot link for it.
    pub linker: Option<&'static str>,
    /// aya-ebpf's `bpf_target_arch` (pt_regs layout of kprobes and uprobes).
    pub bpf_arch: &'static str,
}

pub const X86_64: StaticTarget = StaticTarget {
    name: "x86_64",
    rust_target: STATIC_TARGET,
    cc: MUSL_CC,
    cc_package: "musl-tools",
    cflags: "",
    linker: None,
    bpf_arch: "x86_64",
};

/// Debian has no aarch64 musl-gcc: its glibc cross gcc compiles the C, and
/// links with rustc's self-contained musl crt objects and libc.
pub const AARCH64: StaticTarget = StaticTarget {
    name: "aarch64",
    rust_target: "aarch64-unknown-linux-musl",
    cc: "aarch64-linux-gnu-gcc",
    cc_package: "gcc-aarch64-linux-gnu",
    cflags: "-DSQLITE_DISABLE_LFS",
    linker: Some("aarch64-linux-gnu-gcc"),
    bpf_arch: "aarch64",
};

pub const STATIC_TARGETS: &[&StaticTarget] = &[&X86_64, &AARCH64];

/// What a static (musl) build needs beyond the normal setup: the Rust std
/// for the musl target, and a C compiler for it. Only the commands that
/// build a static binary call this.
pub fn ensure_static_toolchain(target: &StaticTarget) -> Result<()> {
    // In the workspace root, so that rustup picks the toolchain the build uses.
    let rustup = |args: &[&str]| {
        let mut rustup = cmd::rust_tool("rustup");
        rustup.args(args).current_dir(cmd::workspace_root());
        rustup
    };
    let rust_target = target.rust_target;
    let installed = cmd::output(&mut rustup(&["target", "list", "--installed"]))?;
    if installed.lines().any(|t| t.trim() == rust_target) {
        step(rust_target, "already present");
    } else {
        cmd::run(&mut rustup(&["target", "add", rust_target]))
            .with_context(|| format!("cannot add the {rust_target} target"))?;
        step(rust_target, "done (rustup)");
    }

    if cmd::on_path(target.cc) {
        step(target.cc, "already present");
    } else {
        apt_install(&[target.cc_package])
            .with_context(|| format!("{} is needed to build C dependencies for {rust_target}", target.cc))?;
        step(target.cc, &format!("done (apt {})", target.cc_package));
    }
    Ok(())
}

/// Install Debian packages. Only root can; anyone else is told the command.
/// The package lists may be stale or absent on a fresh machine, so a failed
/// install is retried once after `apt-get update`.
pub fn apt_install(packages: &[&str]) -> Result<()> {
    let install = || {
        let mut apt = Command::new("apt-get");
        // Another install on the machine (a second checkout's setup) holds
        // dpkg's lock for a while: wait for it rather than fail.
        apt.args(["-o", "DPkg::Lock::Timeout=600", "install", "-y"])
            .args(packages)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdin(Stdio::null());
        apt
    };
    if !cmd::is_root() {
        bail!("missing packages; install them as root: apt-get install -y {}", packages.join(" "));
    }
    if !cmd::on_path("apt-get") {
        bail!("missing packages {} and no apt-get to install them with", packages.join(" "));
    }
    eprintln!("setup: apt-get install {}", packages.join(" "));
    if cmd::run(&mut install()).is_ok() {
        return Ok(());
    }
    cmd::run(
        Command::new("apt-get")
            .args(["-o", "DPkg::Lock::Timeout=600", "update"])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdin(Stdio::null()),
    )?;
    cmd::run(&mut install())
}

fn bpffs_mounted() -> Result<bool> {
    let mounts = std::fs::read_to_string("/proc/mounts").context("cannot read /proc/mounts")?;
    Ok(mounts.lines().any(|line| {
        let mut fields = line.split_whitespace();
        let (_source, target, fstype) = (fields.next(), fields.next(), fields.next());
        target == Some("/sys/fs/bpf") && fstype == Some("bpf")
    }))
}

#[cfg(test)]
mod tests {
    use super::llvm_major;

    #[test]
    fn parses_llvm_major() {
        assert_eq!(llvm_major("libLLVM.so.22.1-rust-1.97.0-nightly").unwrap(), 22);
        assert_eq!(llvm_major("libLLVM.so.19-rust-1.85.0-nightly").unwrap(), 19);
        assert!(llvm_major("libLLVM-22-rust-1.97.0-nightly.so").is_err());
    }
}
