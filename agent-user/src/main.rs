//! hitcount: a security event collector that counts in the kernel.

use std::{path::PathBuf, process::ExitCode, time::Duration};

use anyhow::Context;
use clap::{Parser, Subcommand};

use agent_user::{
    agent, btf, check,
    config::{self, Config, IsoDuration, RawConfig},
    drain, duration, ebpf, enrich, sinks,
};

#[derive(Parser)]
#[command(name = "hitcount", version, about = "Security events from inside the kernel, aggregated with hit counts")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Collect and report events (JSON lines on stdout) until SIGINT/SIGTERM.
    Run(RunArgs),
    /// Probe this kernel for everything the agent needs, and print the fixes.
    Check,
    /// Show, describe or validate configuration.
    #[command(subcommand)]
    Config(ConfigCommand),
}

#[derive(clap::Args)]
struct RunArgs {
    /// Configuration file (JSON object, see `hitcount config schema`).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Aggregation interval of every event type (ISO 8601, e.g. PT1H, PT10S).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    interval: Option<Duration>,
    /// Records per window of every event type.
    #[arg(long, value_name = "N")]
    cache_size: Option<u32>,
    /// Report every event on its own (hit_count 1) instead of aggregating.
    #[arg(long)]
    no_aggregation: bool,
    /// Bytes of argv kept as the command line (16..=512).
    #[arg(long, value_name = "N")]
    commandline_max_bytes: Option<u32>,
    /// passwd file for user names (a container sees the host's at /host/etc/passwd).
    #[arg(long, value_name = "FILE", default_value = "/etc/passwd")]
    passwd: PathBuf,
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Print every property with its default value.
    Defaults,
    /// Print the JSON Schema of the configuration object.
    Schema,
    /// Check a configuration file; prints every problem.
    Validate { file: PathBuf },
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    duration::parse_iso8601(s).map_err(|e| e.to_string())
}

impl RunArgs {
    /// The command line as a configuration layer, above the file.
    fn as_config(&self) -> RawConfig {
        let interval = self.interval.map(IsoDuration);
        let aggregate = self.no_aggregation.then_some(false);
        RawConfig {
            aggregation_interval_process_create: interval,
            aggregation_interval_process_terminate: interval,
            cache_size_process_create: self.cache_size,
            cache_size_process_terminate: self.cache_size,
            aggregation_enabled_process_create: aggregate,
            aggregation_enabled_process_terminate: aggregate,
            process_command_line_max_bytes: self.commandline_max_bytes,
            aggregation_interval_connection_create: interval,
            cache_size_connection_create: self.cache_size,
            aggregation_enabled_connection_create: aggregate,
            ..RawConfig::default()
        }
    }
}

fn load_config_file(path: &std::path::Path) -> anyhow::Result<RawConfig> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read config file {}", path.display()))?;
    Ok(RawConfig::parse(&text, &path.display().to_string())?)
}

fn effective_config(args: &RunArgs) -> anyhow::Result<Config> {
    let defaults = Config::default();
    let file = match &args.config {
        Some(p) => load_config_file(p)?,
        None => RawConfig::default(),
    };
    let file_name = args.config.as_ref().map(|p| p.display().to_string()).unwrap_or_default();
    // Resolve the file alone first so its errors name the file.
    file.resolve(&defaults, &file_name)?;
    Ok(file.overlay(&args.as_config()).resolve(&defaults, "command line")?)
}

fn run(args: RunArgs) -> anyhow::Result<()> {
    let config = effective_config(&args)?;
    if let Some(why) = check::missing_capabilities(check::effective_caps()) {
        anyhow::bail!(why);
    }
    // The parsed BTF (several MiB) is only needed for the offsets: let it go.
    let offsets = ebpf::kernel_offsets(&btf::Btf::from_sys_fs().context("reading kernel BTF")?)?;
    let sizes = ebpf::MapSizes {
        process_create: ebpf::MapSizes::staging_entries(config.process_create.cache_size),
        process_terminate: ebpf::MapSizes::staging_entries(config.process_terminate.cache_size),
        connection_create: ebpf::MapSizes::staging_entries(config.connection_create.cache_size),
    };
    let mut bpf = ebpf::load(&offsets, sizes)?;
    let drainer =
        drain::Drainer::new(&mut bpf, agent_common::Control { cmdline_max: config.cmdline_max, ..Default::default() })?;
    if let drain::Quiesce::Sleep(d) = drainer.quiesce() {
        log::warn!("membarrier(MEMBARRIER_CMD_GLOBAL) unavailable: each drain sleeps {d:?} instead");
    }
    // Without it every user_name is null; that is easy to miss in a container,
    // whose image has no /etc/passwd of its own.
    if let Err(e) = std::fs::File::open(&args.passwd) {
        log::warn!(
            "cannot read {}: {e}; user_name will be null (in a container, mount the host's /etc/passwd \
             and pass --passwd)",
            args.passwd.display()
        );
    }
    let users = enrich::UserNames::new(args.passwd.clone());
    let agent = agent::Agent::new(config.clone(), drainer, sinks::stdout::StdoutSink::stdout(), users)?;
    // Attach last: the control block is written, so the first event already
    // follows the configuration.
    let net = config.connection_create.priority.enabled();
    let cgroup = if net { ebpf::cgroup2_root() } else { None };
    if net && cgroup.is_none() {
        log::warn!(
            "no cgroup v2 mount: ConnectionCreate counts TCP connections only (no bytes, UDP, ICMP or DNS); \
             mount one: mount -t cgroup2 none /sys/fs/cgroup/unified"
        );
    }
    let plan = ebpf::AttachPlan {
        process: config.process_create.priority.enabled() || config.process_terminate.priority.enabled(),
        net,
        cgroup,
    };
    ebpf::attach_all(&mut bpf, &plan)?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let result = rt.block_on(agent::run(agent));
    drop(bpf);
    result
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_timestamp_millis()
        .target(env_logger::Target::Stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => run(args),
        Command::Check => {
            let checks = check::run_checks();
            for c in &checks {
                println!("{c}");
            }
            if checks.iter().any(|c| c.status == check::Status::Fail) {
                Err(anyhow::anyhow!("some checks failed; the agent cannot run on this system as it is"))
            } else {
                Ok(())
            }
        }
        Command::Config(ConfigCommand::Defaults) => {
            println!("{}", serde_json::to_string_pretty(&Config::default().to_raw()).expect("serializes"));
            Ok(())
        }
        Command::Config(ConfigCommand::Schema) => {
            println!("{}", serde_json::to_string_pretty(&config::schema()).expect("serializes"));
            Ok(())
        }
        Command::Config(ConfigCommand::Validate { file }) => load_config_file(&file)
            .and_then(|raw| Ok(raw.resolve(&Config::default(), &file.display().to_string())?))
            .map(|_| println!("{}: valid", file.display())),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
