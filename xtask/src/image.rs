//! `cargo xtask image`: the static agent in a `FROM scratch` container image
//! (`deploy/Containerfile`), built with podman.

use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{Context, Result};

use crate::cmd;
use crate::setup;

/// The privileged tests run this image when the variable is set.
pub const IMAGE_VAR: &str = "HITCOUNT_IMAGE";
/// `localhost/` is where podman keeps images that came from no registry.
const IMAGE_NAME: &str = "localhost/hitcount";
const CONTAINERFILE: &str = "deploy/Containerfile";

/// Flags before every podman subcommand. vfs storage works on any
/// filesystem (overlay needs kernel and filesystem support that build
/// machines may lack), cgroupfs needs no systemd, and runc because crun fails
/// on these machines. Whoever runs the image must pass the same
/// `--storage-driver`, or podman looks in another store:
/// tests/src/lib.rs repeats these flags.
pub const PODMAN_GLOBAL_ARGS: &[&str] =
    &["--storage-driver", "vfs", "--cgroup-manager", "cgroupfs", "--runtime", "runc"];

/// The default tag: the workspace version, which the agent also reports.
pub fn default_tag() -> &'static str {
    env!("CARGO_PKG_VERSION")
}

pub fn podman() -> Command {
    let mut podman = Command::new("podman");
    podman.args(PODMAN_GLOBAL_ARGS);
    podman
}

fn podman_present() -> bool {
    cmd::on_path("podman") && cmd::on_path("runc")
}

/// Whether `ensure_podman` can succeed without trying it: present, or
/// installable (root with apt). `cargo xtask test` asks this to decide
/// whether the container test can run at all.
pub fn podman_obtainable() -> bool {
    podman_present() || (cmd::is_root() && cmd::on_path("apt-get"))
}

/// podman and runc, installed from apt when missing.
pub fn ensure_podman() -> Result<()> {
    if podman_present() {
        return Ok(());
    }
    setup::apt_install(&["podman", "runc"]).context("podman and runc are needed to build the image")?;
    eprintln!("setup: podman: done (apt)");
    Ok(())
}

/// Build `IMAGE_NAME:tag` around `static_binary` and return the image name.
pub fn build_image(static_binary: &Path, tag: &str) -> Result<String> {
    ensure_podman()?;
    // A context holding only the binary: the workspace's target/ is
    // gigabytes that podman would otherwise scan.
    let context = cmd::target_dir().join("image-context");
    std::fs::create_dir_all(&context).with_context(|| format!("cannot create {}", context.display()))?;
    std::fs::copy(static_binary, context.join("hitcount"))
        .with_context(|| format!("cannot copy {} into {}", static_binary.display(), context.display()))?;

    let image = format!("{IMAGE_NAME}:{tag}");
    let mut build = podman();
    build
        .arg("build")
        .arg("--file")
        .arg(cmd::workspace_root().join(CONTAINERFILE))
        .args(["--tag", &image])
        .arg("--build-arg")
        .arg(format!("VERSION={}", default_tag()))
        .arg("--build-arg")
        .arg(format!("REVISION={}", revision()))
        .arg(&context)
        // stdout carries only the image name, for `IMAGE=$(cargo xtask image)`.
        .stdout(Stdio::from(std::io::stderr()));
    cmd::run(&mut build).context("image build failed")?;
    Ok(image)
}

/// The commit the image was built from, for its revision label.
fn revision() -> String {
    let mut git = Command::new("git");
    git.args(["describe", "--always", "--dirty", "--abbrev=12"]).current_dir(cmd::workspace_root());
    cmd::output(&mut git).map(|r| r.trim().to_string()).unwrap_or_else(|_| "unknown".to_string())
}
