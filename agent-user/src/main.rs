//! hitcount: a security event collector that counts in the kernel.

use std::{path::PathBuf, process::ExitCode, time::Duration};

use anyhow::Context;
use clap::{Parser, Subcommand};

use agent_user::{
    agent, btf, check, collectors,
    config::{self, Config, EventType, IsoDuration, RawConfig},
    drain, duration, ebpf, enrich, limits, sinks,
    transport::{self, mqtt},
};

#[derive(Parser)]
#[command(name = "hitcount", version, about = "Security events from inside the kernel, aggregated with hit counts")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Collect and report events (JSON lines on stdout, or MQTT) until SIGINT/SIGTERM.
    Run(Box<RunArgs>),
    /// Probe this kernel for everything the agent needs, and print the fixes.
    Check,
    /// Take one snapshot of the snapshot collectors now and print its events as JSON lines.
    Snapshot(SnapshotArgs),
    /// Print the installed packages (every package database found) as an SBoM document.
    Sbom(SbomArgs),
    /// Show, describe or validate configuration.
    #[command(subcommand)]
    Config(ConfigCommand),
}

#[derive(clap::Args)]
struct SnapshotArgs {
    /// Only these event types (comma-separated, e.g. LocalUsers,ListeningPorts).
    #[arg(long, value_name = "TYPE,...", value_delimiter = ',')]
    only: Vec<String>,
    /// Configuration file (JSON object, see `hitcount config schema`).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Where the host's root file system is (default /; /host in a container).
    #[arg(long, value_name = "DIR")]
    host_root: Option<PathBuf>,
}

#[derive(clap::Args)]
struct SbomArgs {
    /// Document format: CycloneDX 1.5 JSON, SPDX 2.3 JSON, or the SBoM event payloads as a JSON array.
    #[arg(long, value_enum, default_value_t)]
    format: collectors::sbom::export::Format,
    /// Where the host's root file system is (default /; /host in a container).
    #[arg(long, value_name = "DIR", default_value = "/")]
    host_root: PathBuf,
}

#[derive(clap::Args)]
struct RunArgs {
    /// Configuration file (JSON object, see `hitcount config schema`).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Where the host's root file system is (default /; /host in a container).
    #[arg(long, value_name = "DIR")]
    host_root: Option<PathBuf>,
    /// Where the agent keeps what it needs across restarts (default /var/lib/hitcount; "" for nowhere).
    #[arg(long, value_name = "DIR", value_parser = any_path)]
    state_dir: Option<PathBuf>,
    /// Aggregation interval of every event type (ISO 8601, e.g. PT1H, PT10S).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    interval: Option<Duration>,
    /// Records per window of every event type.
    #[arg(long, value_name = "N")]
    cache_size: Option<u32>,
    /// Report every event on its own (hit_count 1) instead of aggregating.
    #[arg(long)]
    no_aggregation: bool,
    /// Bytes of argv kept as the command line (16..=488).
    #[arg(long, value_name = "N")]
    commandline_max_bytes: Option<u32>,
    /// passwd file for user names (default: /etc/passwd under --host-root).
    #[arg(long, value_name = "FILE")]
    passwd: Option<PathBuf>,
    /// Publish to this MQTT broker instead of stdout: mqtt://host[:1883] or mqtts://host[:8883].
    #[arg(long, value_name = "URL")]
    mqtt_url: Option<String>,
    /// Device id in the topics (default: /etc/machine-id, then the host name).
    #[arg(long, value_name = "ID")]
    device_id: Option<String>,
    /// MQTT user name.
    #[arg(long, value_name = "NAME")]
    mqtt_username: Option<String>,
    /// File holding the MQTT password (else the HITCOUNT_MQTT_PASSWORD environment variable).
    #[arg(long, value_name = "FILE")]
    mqtt_password_file: Option<PathBuf>,
    /// CA certificate(s), PEM, that signed the broker's certificate (mqtts://).
    #[arg(long, value_name = "FILE")]
    mqtt_ca_file: Option<PathBuf>,
    /// Client certificate, PEM, for brokers that require mutual TLS.
    #[arg(long, value_name = "FILE", requires = "mqtt_client_key")]
    mqtt_client_cert: Option<PathBuf>,
    /// Client private key, PEM.
    #[arg(long, value_name = "FILE", requires = "mqtt_client_cert")]
    mqtt_client_key: Option<PathBuf>,
    /// Keep unsent MQTT messages here across restarts of the agent.
    #[arg(long, value_name = "DIR", requires = "mqtt_url")]
    spool_dir: Option<PathBuf>,
    /// Where TCP byte counts come from: `calls` (sock_send_length and
    /// sock_recv_length, Linux 6.3+), `packets` (cgroup_skb), or `auto`
    /// (calls when the kernel has them).
    #[arg(long, value_name = "SOURCE", value_enum, default_value_t)]
    tcp_bytes: ebpf::TcpBytesChoice,
}

/// Environment variable read for the MQTT password when no file is given.
const PASSWORD_VAR: &str = "HITCOUNT_MQTT_PASSWORD";

#[derive(Subcommand)]
enum ConfigCommand {
    /// Print every property with its default value.
    Defaults,
    /// Print the JSON Schema of the configuration object.
    Schema,
    /// Check a configuration file; prints every problem.
    Validate { file: PathBuf },
}

/// A path, the empty one included (clap's own parser refuses ""): `--state-dir ""` means none.
fn any_path(s: &str) -> Result<PathBuf, String> {
    Ok(PathBuf::from(s))
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
            aggregation_interval_diagnostic: interval,
            aggregation_interval_login: interval,
            cache_size_diagnostic: self.cache_size,
            aggregation_enabled_connection_create: aggregate,
            host_root: self.host_root.clone(),
            state_directory: self.state_dir.clone(),
            ..RawConfig::default()
        }
    }
}

/// Reads and checks a configuration file: every bad property is named,
/// type errors and range errors alike.
fn load_config_file(path: &std::path::Path) -> anyhow::Result<RawConfig> {
    let text = limits::read_to_string_bounded("config file", path, limits::CONFIG_MAX_BYTES)?;
    Ok(config::load_layer(&text, &path.display().to_string(), &RawConfig::default())?.0)
}

/// The local layers (file < command line) and the configuration they make.
fn effective_config(file: Option<&std::path::Path>, flags: &RawConfig) -> anyhow::Result<(RawConfig, Config)> {
    let defaults = Config::default();
    let layer = match file {
        Some(p) => load_config_file(p)?,
        None => RawConfig::default(),
    };
    let file_name = file.map(|p| p.display().to_string()).unwrap_or_default();
    // Resolve the file alone first so its errors name the file.
    layer.resolve(&defaults, &file_name)?;
    let local = layer.overlay(flags);
    let config = local.resolve(&defaults, "command line")?;
    Ok((local, config))
}

/// `hitcount snapshot`: the snapshot collectors once, as `run` would send them.
fn snapshot(args: SnapshotArgs) -> anyhow::Result<()> {
    let mut only = Vec::new();
    for name in args.only.iter().map(|n| n.trim()).filter(|n| !n.is_empty()) {
        match EventType::from_name(name) {
            Some(t) if t.is_snapshot() => only.push(t),
            Some(t) => anyhow::bail!("--only: {t} is not a snapshot event type"),
            None => anyhow::bail!(
                "--only: unknown event type {name:?} (snapshot types: {})",
                EventType::ALL.iter().filter(|t| t.is_snapshot()).map(|t| t.name()).collect::<Vec<_>>().join(", ")
            ),
        }
    }
    let flags = RawConfig { host_root: args.host_root.clone(), ..RawConfig::default() };
    let (_, mut config) = effective_config(args.config.as_deref(), &flags)?;
    // --only names what to take whatever the priorities say; without it,
    // what the configuration collects.
    for &t in &only {
        if !config.collects(t) {
            config.set_priority(t, t.default_priority());
        }
    }
    let host = agent_user::hostfs::HostFs::new(&config.host_root);
    let mut snapshots = collectors::snapshot::Snapshots::new(collectors::select(&only));
    let cx = collectors::Context::new(&host, &config);
    let mut sink = sinks::stdout::StdoutSink::stdout();
    snapshots.take_due(&cx, std::time::Instant::now(), |t, sent| {
        sinks::Sink::publish(&mut sink, &mut agent::snapshot_window(&config, t, sent, Default::default()))
    })?;
    Ok(())
}

/// `hitcount sbom`: the inventory as a document on stdout; databases that
/// could not be read are warnings on stderr, the document still printed.
fn sbom(args: SbomArgs) -> anyhow::Result<()> {
    use collectors::sbom::{export, inventory};
    let inv = inventory(&agent_user::hostfs::HostFs::new(&args.host_root));
    for f in &inv.failures {
        log::warn!("{}: {}", f.source, f.reason);
    }
    if inv.packages.is_empty() && inv.failures.is_empty() {
        // Legitimate on a device without a package manager, and what a
        // wrong --host-root looks like: say which.
        log::warn!(
            "no package database under {} (looked for {})",
            args.host_root.display(),
            collectors::sbom::database_paths().collect::<Vec<_>>().join(", ")
        );
    }
    let meta = export::Meta::now().context("reading /dev/urandom for the document's UUID")?;
    let mut out = std::io::stdout().lock();
    // A closed pipe (`| head`) is an error to report, not a panic.
    std::io::Write::write_all(&mut out, (export::render(args.format, &inv, &meta) + "\n").as_bytes())
        .context("writing the document to stdout")?;
    Ok(())
}

fn mqtt_settings(args: &RunArgs, url: &str) -> anyhow::Result<mqtt::Settings> {
    let password = match &args.mqtt_password_file {
        Some(p) => {
            let text = limits::read_to_string_bounded("password file", p, limits::PASSWORD_MAX_BYTES)?;
            Some(mqtt::Secret::new(text.trim_end_matches(['\n', '\r']).to_string()))
        }
        None => std::env::var(PASSWORD_VAR).ok().map(mqtt::Secret::new),
    };
    let settings = mqtt::Settings {
        url: mqtt::BrokerUrl::parse(url)?,
        device_id: args.device_id.clone().unwrap_or_else(mqtt::default_device_id),
        username: args.mqtt_username.clone(),
        password,
        ca_file: args.mqtt_ca_file.clone(),
        client_cert: args.mqtt_client_cert.clone(),
        client_key: args.mqtt_client_key.clone(),
        spool_dir: args.spool_dir.clone(),
    };
    // Fail on bad TLS files or device ids before loading anything.
    settings.options()?;
    Ok(settings)
}

fn run(args: RunArgs) -> anyhow::Result<()> {
    let (local, config) = effective_config(args.config.as_deref(), &args.as_config())?;
    let mqtt = args.mqtt_url.as_deref().map(|url| mqtt_settings(&args, url)).transpose()?;
    if let Some(why) = check::missing_capabilities(check::effective_caps()) {
        anyhow::bail!(why);
    }
    // The parsed BTF (several MiB) is only needed for the offsets: let it go.
    let offsets = ebpf::kernel_offsets(&btf::Btf::from_sys_fs().context("reading kernel BTF")?)?;
    // Kernel maps are sized once, here; a larger cacheSize received later
    // grows the window caches but not these (see README, Configuration).
    let sizes = ebpf::MapSizes {
        process_create: ebpf::MapSizes::staging_entries(config.process_create.cache_size),
        process_terminate: ebpf::MapSizes::staging_entries(config.process_terminate.cache_size),
        connection_create: ebpf::MapSizes::staging_entries(config.connection_create.cache_size),
    };
    let mut bpf = ebpf::load(&offsets, sizes)?;
    let drainer =
        drain::Drainer::new(&mut bpf, agent_common::Control { cmdline_max: config.cmdline_max, ..Default::default() })?;
    let pam_ring = drain::PamRing::take(&mut bpf)?;
    if let drain::Quiesce::Sleep(d) = drainer.quiesce() {
        log::warn!("membarrier(MEMBARRIER_CMD_GLOBAL) unavailable: each drain sleeps {d:?} instead");
    }
    let passwd = match &args.passwd {
        Some(p) => p.clone(),
        None => agent_user::hostfs::HostFs::new(&config.host_root)
            .resolve("/etc/passwd")
            .unwrap_or_else(|_| config.host_root.join("etc/passwd")),
    };
    // Without it every user_name is null; that is easy to miss in a container,
    // whose image has no /etc/passwd of its own.
    let users = enrich::UserNames::new(passwd);
    if let Some(e) = users.error() {
        log::warn!(
            "{e}; user_name will be null (in a container, mount the host's / at /host and pass --host-root /host)"
        );
    }
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async move {
        let (sink, transport, desired): (Box<dyn sinks::Sink>, _, _) = match mqtt {
            Some(settings) => {
                let topics = settings.topics();
                let (t, sink, desired) = transport::Transport::start(settings, &config)?;
                log::info!("publishing to {} (device status on {})", topics.events, topics.status);
                (Box::new(sink), Some(t), Some(desired))
            }
            None => (Box::new(sinks::stdout::StdoutSink::stdout()), None, None),
        };
        let programs = ebpf::Programs::new(bpf, &offsets, args.tcp_bytes)?;
        log::info!("TCP bytes: {}", programs.tcp_bytes().describe());
        let agent = agent::Agent::new(
            local,
            config.clone(),
            drainer,
            programs,
            sink,
            users,
            collectors::UserSpace::all(Some(Box::new(pam_ring))),
        )?;
        let result = agent::run(agent, desired).await;
        if let Some(t) = transport {
            t.shutdown().await;
        }
        result
    })
}

/// glibc raises its mmap threshold to the size of each large block freed
/// (up to 32 MiB), so that after a large buffer is freed (the kernel BTF's
/// 5.5 MiB where it is read rather than mapped, before Linux 6.16; the
/// SBoM's package database at each snapshot), later large blocks come from
/// the heap, and the heap keeps what they free: 1.3 MiB of the agent's
/// resident memory, measured when the BTF was read, for good. A fixed
/// threshold (glibc's default) keeps large blocks in their own mappings,
/// returned when freed. musl (the static build) has no such adjustment.
#[cfg(target_env = "gnu")]
fn fix_malloc_thresholds() {
    const THRESHOLD: libc::c_int = 128 * 1024;
    // SAFETY: mallopt only sets allocator parameters; nothing is allocated yet.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, THRESHOLD);
        libc::mallopt(libc::M_TRIM_THRESHOLD, THRESHOLD);
    }
}

#[cfg(not(target_env = "gnu"))]
fn fix_malloc_thresholds() {}

fn main() -> ExitCode {
    fix_malloc_thresholds();
    let printer = env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        // rumqttc's debug and trace output prints packets, and a CONNECT
        // packet carries the password: capped whatever RUST_LOG says.
        .filter_module("rumqttc", log::LevelFilter::Warn)
        .format_timestamp_millis()
        .target(env_logger::Target::Stderr)
        .build();
    // Warnings reach the Diagnostic collector whatever RUST_LOG prints.
    let max = printer.filter().max(log::LevelFilter::Warn);
    log::set_boxed_logger(Box::new(collectors::diagnostic::TeeLogger { inner: printer }))
        .expect("the logger is set once");
    log::set_max_level(max);
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => run(*args),
        Command::Snapshot(args) => snapshot(args),
        Command::Sbom(args) => sbom(args),
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
