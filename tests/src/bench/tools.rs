//! Outside programs a benchmark drives (bpftool, bpftrace), installed with
//! apt-get when missing so that a fresh Debian machine needs no manual step.
use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{bail, Context, Result};

/// The path of `program` on PATH, installing Debian package `package` first
/// if it is not there.
pub fn ensure_installed(program: &str, package: &str) -> Result<PathBuf> {
    if let Some(path) = on_path(program) {
        return Ok(path);
    }
    println!("{program} not found: installing the {package} package with apt-get");
    // A machine whose package lists are stale or empty fails the first
    // install; refreshing them once is enough.
    if !apt_get(&["install", "-y", package])? {
        apt_get(&["update"])?;
        if !apt_get(&["install", "-y", package])? {
            bail!("`apt-get install {package}` failed; install {program} by hand and run the benchmark again");
        }
    }
    on_path(program).with_context(|| format!("the {package} package installed no {program} on PATH"))
}

fn on_path(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    // apt's tools land in sbin, which a non-login PATH may lack.
    let extra = ["/usr/sbin", "/sbin"].map(PathBuf::from);
    std::env::split_paths(&path).chain(extra).map(|dir| dir.join(program)).find(|p| is_executable(p))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata().is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Runs apt-get with its output shown (installs take a while); false when it
/// ran and failed, an error when it could not run at all.
fn apt_get(args: &[&str]) -> Result<bool> {
    let status = Command::new("apt-get")
        .args(args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdin(Stdio::null())
        .status()
        .context("running apt-get (is this a Debian or Ubuntu machine?)")?;
    Ok(status.success())
}
