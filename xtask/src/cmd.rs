//! Small helpers shared by every subcommand: where the workspace lives, how to
//! spawn toolchain commands with a clean environment, and whether we are root.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

/// Variables that `cargo run` (or the rustup proxy in front of it) sets for
/// the xtask process. If a child cargo inherited them, `+nightly` would be
/// ignored (RUSTUP_TOOLCHAIN wins over nothing, RUSTC wins over the proxy) and
/// a stable build could pick up a wrapper meant for something else.
const INHERITED_TOOLCHAIN_VARS: &[&str] =
    &["RUSTUP_TOOLCHAIN", "RUSTC", "RUSTC_WRAPPER", "RUSTC_WORKSPACE_WRAPPER", "RUSTDOC", "CARGO"];

/// The workspace root. xtask is always built from inside the workspace, so
/// the manifest dir known at compile time is reliable, and it does not
/// depend on the directory `cargo xtask` was typed in.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives one level below the workspace root")
        .to_path_buf()
}

/// Cargo's target directory, honouring CARGO_TARGET_DIR because the child
/// cargo processes inherit it and will put their output there.
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => workspace_root().join(dir),
        None => workspace_root().join("target"),
    }
}

/// A `cargo` command (through the rustup proxy on PATH, never `$CARGO`, so
/// `+toolchain` works) run in the workspace root with a clean environment.
pub fn cargo(toolchain: Option<&str>) -> Command {
    let mut cmd = rust_tool("cargo");
    if let Some(toolchain) = toolchain {
        cmd.arg(format!("+{toolchain}"));
    }
    cmd.current_dir(workspace_root());
    cmd
}

/// Any rustup-proxied tool (`cargo`, `rustc`, `rustup`) with the variables
/// inherited from the outer cargo removed.
pub fn rust_tool(program: &str) -> Command {
    let mut cmd = Command::new(program);
    for var in INHERITED_TOOLCHAIN_VARS {
        cmd.env_remove(var);
    }
    cmd
}

/// Run a command with inherited stdio and fail if it does not succeed.
pub fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("failed to start {}", describe(cmd)))?;
    if !status.success() {
        bail!("{} failed with {status}", describe(cmd));
    }
    Ok(())
}

/// Run a command and return its stdout; stderr goes to the terminal so the
/// user sees why it failed.
pub fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .stderr(std::process::Stdio::inherit())
        .output()
        .with_context(|| format!("failed to start {}", describe(cmd)))?;
    if !out.status.success() {
        bail!("{} failed with {}", describe(cmd), out.status);
    }
    String::from_utf8(out.stdout).with_context(|| format!("{} printed non-UTF-8", describe(cmd)))
}

/// A human-readable form of a command for error messages.
pub fn describe(cmd: &Command) -> String {
    let mut parts = vec![cmd.get_program().to_string_lossy().into_owned()];
    parts.extend(cmd.get_args().map(|a| a.to_string_lossy().into_owned()));
    format!("`{}`", parts.join(" "))
}

/// PATH with `dir` in front, for finding bpf-linker.
pub fn path_with(dir: &Path) -> Result<std::ffi::OsString> {
    let mut paths = vec![dir.to_path_buf()];
    if let Some(old) = std::env::var_os("PATH") {
        paths.extend(std::env::split_paths(&old));
    }
    std::env::join_paths(paths).context("cannot build PATH")
}

/// Whether the effective uid is 0. Read from /proc rather than calling
/// geteuid so xtask needs no libc dependency.
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("Uid:"))
                // Fields are real, effective, saved, filesystem uid.
                .and_then(|uids| uids.split_whitespace().nth(1).map(|e| e == "0"))
        })
        .unwrap_or(false)
}

/// Whether an executable called `name` is on PATH.
pub fn on_path(name: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(name).is_file()))
}

/// Whether HITCOUNT_REQUIRE_PRIVILEGED=1: CI sets it so that silently
/// skipping kernel tests turns into a failure.
pub fn privileged_required() -> bool {
    std::env::var("HITCOUNT_REQUIRE_PRIVILEGED").is_ok_and(|v| v == "1")
}

/// A fresh, empty file in the temp dir (no tempfile crate: the name only has
/// to be unique among concurrent xtask runs).
pub fn fresh_temp_file(prefix: &str) -> Result<PathBuf> {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    let path = std::env::temp_dir().join(format!("{prefix}-{}-{nanos}", std::process::id()));
    std::fs::File::create_new(&path).with_context(|| format!("cannot create {}", path.display()))?;
    Ok(path)
}

/// Takes an exclusive lock on `path` (created if missing), waiting for
/// whoever holds it; released when the returned file is dropped.
pub fn exclusive_lock(path: &Path) -> Result<std::fs::File> {
    use std::os::fd::AsRawFd;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("cannot open lock file {}", path.display()))?;
    // flock(2) through the util-linux tool would need a child that outlives
    // us; the syscall is one line with libc.
    loop {
        // SAFETY: a valid open fd and a constant operation.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            return Ok(file);
        }
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EWOULDBLOCK) {
            return Err(err).with_context(|| format!("cannot lock {}", path.display()));
        }
        println!("waiting for {} (another privileged test run on this machine)", path.display());
        // SAFETY: as above; this call blocks until the holder exits.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } == 0 {
            return Ok(file);
        }
    }
}
