//! `cargo xtask bench`: run one of the benchmarks in the `tests` crate's
//! `bench` binary against a freshly built agent.

use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::ValueEnum;

use crate::build::Artifacts;
use crate::cmd;
use crate::run::exit_code;
use crate::test::BIN_VAR;

/// Which workload the benchmark drives.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Bench {
    /// Process creation (exec/fork/exit).
    Process,
    /// Network connections.
    Net,
    /// Message transport.
    Transport,
    /// Snapshot collectors: CPU, memory, bytes a day.
    Snapshot,
    /// Login during a password brute force: PAM uprobe time, agent CPU.
    Login,
}

impl Bench {
    fn name(self) -> &'static str {
        match self {
            Bench::Process => "process",
            Bench::Net => "net",
            Bench::Transport => "transport",
            Bench::Snapshot => "snapshot",
            Bench::Login => "login",
        }
    }
}

/// Run the `bench-<name>` binary of the tests crate through cargo so it is built on demand; the xtask
/// itself never links against it.
pub fn run(artifacts: &Artifacts, bench: Bench, args: &[String]) -> Result<ExitCode> {
    let mut cargo = cmd::cargo(None);
    cargo
        .args(["run", "--release", "-p", "tests", "--bin", &format!("bench-{}", bench.name()), "--"])
        .args(args)
        .env(BIN_VAR, &artifacts.binary);
    let status = cargo.status().with_context(|| format!("failed to start {}", cmd::describe(&cargo)))?;
    Ok(exit_code(status))
}
