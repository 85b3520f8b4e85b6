//! Project automation: `cargo xtask <command>` (see `cargo xtask --help`).
//!
//! Every command other than `setup` runs setup first, so a fresh clone needs
//! nothing but rustup and `cargo xtask build`.

mod bench;
mod build;
mod cmd;
mod fuzz;
mod image;
mod run;
mod setup;
mod test;
mod vmtest;

use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask", bin_name = "cargo xtask", about = "Build, run and test the hitcount agent")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install the nightly toolchain, rust-src and bpf-linker; mount tracefs and bpffs.
    Setup,
    /// Build the eBPF object (nightly, bpfel-unknown-none).
    BuildEbpf,
    /// Run clippy on the eBPF crate with warnings denied.
    LintEbpf,
    /// Build the eBPF object and the `hitcount` binary that embeds it.
    Build {
        /// Build the userspace agent without --release.
        #[arg(long)]
        debug: bool,
        /// Build a statically linked agent (musl), as the container image uses.
        #[arg(long = "static", conflicts_with = "debug")]
        static_: bool,
        /// The static agent's architecture: x86_64 (default) or aarch64.
        #[arg(long, requires = "static_", default_value = "x86_64")]
        target: String,
    },
    /// Build the static agent, then the container image (podman); prints the image name.
    Image {
        /// Image tag (default: the workspace version).
        #[arg(long)]
        tag: Option<String>,
    },
    /// Build and run the agent as root (via `sudo -E` if needed).
    Run {
        /// Build the userspace agent without --release.
        #[arg(long)]
        debug: bool,
        /// Arguments for the agent (default: `run`).
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Build, then run the unit tier and (as root) the privileged tier.
    Test {
        /// Skip the privileged tier.
        #[arg(long, conflicts_with = "privileged_only")]
        unit_only: bool,
        /// Skip the unit tier.
        #[arg(long)]
        privileged_only: bool,
        /// Run only this privileged suite (a file of tests/tests, without `.rs`); repeatable.
        /// The VM tier then does not run.
        #[arg(long, value_name = "NAME")]
        suite: Vec<String>,
        /// Skip the VM tier (the privileged suites in other kernels under qemu).
        #[arg(long)]
        no_vm: bool,
        /// Extra `cargo test` arguments; after another `--`, test harness arguments.
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// The privileged tests in Debian kernels under qemu (TCG): 5.10, 6.1, 6.12 (amd64), or all.
    Vmtest {
        /// Kernels to boot, one after another (default: all).
        kernels: Vec<String>,
    },
    /// Fuzz the parsers (cargo-fuzz targets in fuzz/, nightly; installs cargo-fuzz if missing).
    Fuzz {
        /// One target (`cargo fuzz list` in fuzz/); default: every target in turn.
        target: Option<String>,
        /// How long each target runs.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
    },
    /// Build, then run a benchmark from the `tests` crate.
    Bench {
        /// Which benchmark to run.
        #[arg(value_enum)]
        bench: bench::Bench,
        /// Arguments for the benchmark.
        #[arg(last = true)]
        args: Vec<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match dispatch(cli) {
        Ok(code) => code,
        Err(err) => {
            // Printed by hand rather than by returning the error from main:
            // that would add a stack backtrace whenever RUST_BACKTRACE is
            // set, which says nothing about why a build or test failed.
            eprintln!("error: {err}");
            for cause in err.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            ExitCode::FAILURE
        }
    }
}

fn dispatch(cli: Cli) -> Result<ExitCode> {
    let setup = setup::run()?;
    match cli.command {
        Command::Setup => {}
        Command::BuildEbpf => {
            build::build_ebpf(&setup)?;
        }
        Command::LintEbpf => build::lint_ebpf(&setup)?,
        Command::Build { debug, static_, target } => {
            if static_ {
                let Some(target) = setup::STATIC_TARGETS.iter().find(|t| t.name == target) else {
                    let known: Vec<_> = setup::STATIC_TARGETS.iter().map(|t| t.name).collect();
                    anyhow::bail!("unknown static target {target}; known: {}", known.join(", "));
                };
                build::build_static(&setup, target)?;
            } else {
                build::build(&setup, debug)?;
            }
        }
        Command::Image { tag } => {
            let artifacts = build::build_static(&setup, &setup::X86_64)?;
            let image = image::build_image(&artifacts.binary, tag.as_deref().unwrap_or(image::default_tag()))?;
            println!("{image}");
        }
        Command::Run { debug, args } => {
            let artifacts = build::build(&setup, debug)?;
            return run::run_agent(&artifacts.binary, &args);
        }
        Command::Test { unit_only, privileged_only, suite, no_vm, args } => {
            let artifacts = build::build(&setup, false)?;
            // The VM tier is part of a whole run only: not of a chosen suite or filter.
            let vm_tier = !no_vm && suite.is_empty() && args.is_empty();
            let options = test::Options { unit_only, privileged_only, suites: &suite, extra_args: &args, vm_tier };
            test::run(&setup, &artifacts, &options)?;
        }
        Command::Vmtest { kernels } => vmtest::run(&setup, &kernels)?,
        Command::Fuzz { target, seconds } => fuzz::run(target.as_deref(), seconds)?,
        Command::Bench { bench, args } => {
            let artifacts = build::build(&setup, false)?;
            return bench::run(&artifacts, bench, &args);
        }
    }
    Ok(ExitCode::SUCCESS)
}
