//! `cargo xtask run`: build the agent and run it with root privileges.

use std::path::Path;
use std::process::{Command, ExitCode, ExitStatus};

use anyhow::{bail, Context, Result};

use crate::cmd;

/// Run `binary` with `args`, through `sudo -E` when not root (loading BPF
/// programs needs root or CAP_BPF+CAP_PERFMON). Returns the agent's exit code
/// so `cargo xtask run` exits the same way.
pub fn run_agent(binary: &Path, args: &[String]) -> Result<ExitCode> {
    let default_args = ["run".to_string()];
    let args = if args.is_empty() { &default_args[..] } else { args };

    let mut agent = if cmd::is_root() {
        Command::new(binary)
    } else if cmd::on_path("sudo") {
        // -E keeps RUST_LOG and the like.
        let mut sudo = Command::new("sudo");
        sudo.arg("-E").arg(binary);
        sudo
    } else {
        bail!("the agent needs root (or CAP_BPF+CAP_PERFMON) and sudo is not available");
    };
    agent.args(args);

    let status = agent.status().with_context(|| format!("failed to start {}", cmd::describe(&agent)))?;
    Ok(exit_code(status))
}

/// The exit code a shell would report: the code itself, or 128+signal.
pub fn exit_code(status: ExitStatus) -> ExitCode {
    use std::os::unix::process::ExitStatusExt;
    let code = status.code().or_else(|| status.signal().map(|sig| 128 + sig)).unwrap_or(1);
    // Exit codes are a byte on Unix; anything else was already truncated.
    ExitCode::from(code as u8)
}
