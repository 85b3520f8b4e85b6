//! The agent's configuration: one object with the spec's property names
//! (seed 004 for priorities and frequencies, seeds 000-001 for the per-event
//! aggregation settings). Sources, later wins: built-in defaults < file <
//! command-line flags < the desired configuration received over MQTT.
//!
//! Every property is optional in the file; what is absent takes its default.
//! Validation names every bad field, not only the first one: a file is
//! checked property by property before the ranges are checked.
use std::{fmt, time::Duration};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{
    duration::{parse_iso8601, Iso8601},
    limits::printable,
};

/// How urgently events of a type are sent; `Off` means not collected at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum Priority {
    High,
    Medium,
    Low,
    Off,
}

impl Priority {
    pub fn enabled(self) -> bool {
        self != Priority::Off
    }

    /// The lower-case name used in message envelopes.
    pub fn wire_name(self) -> &'static str {
        match self {
            Priority::High => "high",
            Priority::Medium => "medium",
            Priority::Low => "low",
            Priority::Off => "off",
        }
    }
}

pub use crate::events::EventType;

/// Where Login events come from (`loginSource`, a list).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum LoginSource {
    /// Every source that works here.
    Auto,
    /// BPF uprobes on the host's libpam: every PAM service, tty or not.
    Pam,
    /// wtmp (sign-ins, sign-outs) and btmp (failed attempts).
    Utmp,
    /// PAM's records from the audit netlink multicast group (under auto: while audit is enabled).
    Audit,
    /// auth.log or secure: sshd's and dropbear's lines (only when named).
    Syslog,
}

impl LoginSource {
    pub fn name(self) -> &'static str {
        match self {
            LoginSource::Auto => "auto",
            LoginSource::Pam => "pam",
            LoginSource::Utmp => "utmp",
            LoginSource::Audit => "audit",
            LoginSource::Syslog => "syslog",
        }
    }
}

/// An ISO 8601 duration in a config file (`"PT1H"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IsoDuration(pub Duration);

impl Serialize for IsoDuration {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&Iso8601(self.0))
    }
}

impl<'de> Deserialize<'de> for IsoDuration {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        parse_iso8601(&s).map(IsoDuration).map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for IsoDuration {
    fn schema_name() -> String {
        "Iso8601Duration".into()
    }
    fn json_schema(_: &mut schemars::gen::SchemaGenerator) -> schemars::schema::Schema {
        schemars::schema::SchemaObject {
            instance_type: Some(schemars::schema::InstanceType::String.into()),
            string: Some(Box::new(schemars::schema::StringValidation {
                pattern: Some(r"^P(\d+W|\d+D)?(T(\d+H)?(\d+M)?(\d+([.,]\d{1,9})?S)?)?$".into()),
                ..Default::default()
            })),
            metadata: Some(Box::new(schemars::schema::Metadata {
                description: Some("ISO 8601 duration, days to seconds: PT1H, PT30S, P1DT12H".into()),
                ..Default::default()
            })),
            ..Default::default()
        }
        .into()
    }
}

/// The configuration object as written in a file (or, later, sent as the
/// desired configuration). Every property is optional.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[schemars(title = "Hitcount agent configuration")]
pub struct RawConfig {
    /// Priority of ProcessCreate events (exec and fork). Off: not collected.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event_priority_process_create: Option<Priority>,
    /// Priority of ProcessTerminate events. Off: not collected.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event_priority_process_terminate: Option<Priority>,
    /// Priority of DroppedEventsStatistics events. Off: not reported.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event_priority_dropped_events_statistics: Option<Priority>,
    /// Priority of Diagnostic events (the agent's own warnings and errors). Off: not collected.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event_priority_diagnostic: Option<Priority>,
    /// Priority of ConfigurationError events (an invalid desired configuration).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event_priority_configuration_error: Option<Priority>,
    /// Priority of ConnectedHardware snapshots (no collector yet).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event_priority_connected_hardware: Option<Priority>,
    /// Priority of ListeningPorts snapshots (no collector yet).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event_priority_listening_ports: Option<Priority>,
    /// Priority of SystemInformation snapshots (no collector yet).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event_priority_system_information: Option<Priority>,
    /// Priority of LocalUsers snapshots (no collector yet).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event_priority_local_users: Option<Priority>,
    /// Priority of Login events (sign-ins, sign-outs, failed attempts).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event_priority_login: Option<Priority>,
    /// Priority of FirewallConfiguration snapshots (firewall rules and chain policies).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event_priority_firewall_configuration: Option<Priority>,
    /// Priority of OSBaseline snapshots (CIS checks that fail).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[serde(rename = "eventPriorityOSBaseline")]
    pub event_priority_os_baseline: Option<Priority>,
    /// Priority of SBoM snapshots (installed packages; no collector yet).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[serde(rename = "eventPrioritySBoM")]
    pub event_priority_sbom: Option<Priority>,

    /// Longest time a High priority event waits before it is sent (MQTT).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub high_priority_message_frequency: Option<IsoDuration>,
    /// Longest time a Medium priority event waits before it is sent (MQTT).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub medium_priority_message_frequency: Option<IsoDuration>,
    /// Longest time a Low priority event waits before it is sent (MQTT).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub low_priority_message_frequency: Option<IsoDuration>,
    /// Interval of the snapshot collectors (SystemInformation, LocalUsers, ...).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub snapshot_frequency: Option<IsoDuration>,
    /// After the first full snapshot, send only the items added, removed or changed, plus a digest of the whole set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub snapshot_deltas: Option<bool>,
    /// With snapshotDeltas: every this many snapshots of a type, a full one again.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000))]
    pub snapshot_full_every: Option<u32>,
    /// FirewallConfiguration: read the rules of every network namespace found under /proc, not only the agent's own.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub firewall_all_namespaces: Option<bool>,
    /// OSBaseline: groups of checks not run, by name (Services, SshServer...; the README lists them).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub baseline_groups_disabled: Option<Vec<String>>,
    /// OSBaseline: checks not run, by CIS number ("3.3.5").
    #[serde(skip_serializing_if = "Option::is_none")]
    pub baseline_checks_disabled: Option<Vec<String>>,
    /// Properties a desired (remote) configuration may not change, by name; `*` locks them all. Local only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remote_configuration_locked: Option<Vec<String>>,
    /// Directory where the host's root file system is visible (`/host` in a container); every host file is read through it. Local only: a desired configuration may not set it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host_root: Option<std::path::PathBuf>,
    /// Directory where the agent keeps what it needs across restarts (where it stopped reading wtmp, btmp and auth.log); "" keeps nothing. Local only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state_directory: Option<std::path::PathBuf>,
    /// SystemInformation's hardware_vendor, replacing what DMI or the device tree say; "" (the default): detect.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256))]
    pub system_information_hardware_vendor: Option<String>,
    /// SystemInformation's hardware_model, replacing what DMI or the device tree say; "" (the default): detect.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256))]
    pub system_information_hardware_model: Option<String>,
    /// Bytes of messages kept while the broker is unreachable; past it the oldest events are dropped and counted.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 8193, max = 1073741824))]
    pub max_local_cache_size_in_bytes: Option<u64>,
    /// Largest message payload sent; batches are split across messages, an event is never cut.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 8193, max = 262143))]
    pub max_message_size_in_bytes: Option<u32>,

    /// Enable or disable the process collector (ProcessCreate and ProcessTerminate). Disabled: programs detached.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub collector_enabled_process: Option<bool>,

    /// Aggregate identical ProcessCreate events (command line + uid + type) into one record with a hit count.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub aggregation_enabled_process_create: Option<bool>,
    /// Time window of one ProcessCreate aggregation.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub aggregation_interval_process_create: Option<IsoDuration>,
    /// Aggregate identical ProcessTerminate events (executable + exit status).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub aggregation_enabled_process_terminate: Option<bool>,
    /// Time window of one ProcessTerminate aggregation.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub aggregation_interval_process_terminate: Option<IsoDuration>,

    /// Time window of one Diagnostic aggregation (identical warnings are one record with a hit count).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub aggregation_interval_diagnostic: Option<IsoDuration>,
    /// Records kept per Diagnostic window; when full the oldest is discarded and counted.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65536))]
    pub cache_size_diagnostic: Option<u32>,

    /// Time window of one Login aggregation (identical attempts are one record with a hit count).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub aggregation_interval_login: Option<IsoDuration>,
    /// Records kept per Login window; when full the oldest is discarded and counted.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65536))]
    pub cache_size_login: Option<u32>,
    /// Where Login events come from: `auto` (pam where a libpam is found, utmp, audit while it is
    /// enabled) or a list of `pam`, `utmp`, `audit`, `syslog`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub login_source: Option<Vec<LoginSource>>,

    /// Records kept per ProcessCreate window; when full the oldest is discarded and counted.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65536))]
    pub cache_size_process_create: Option<u32>,
    /// Records kept per ProcessTerminate window.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65536))]
    pub cache_size_process_terminate: Option<u32>,
    /// Bytes of a process's argv kept as its command line; longer ones are cut and marked truncated.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 16, max = 488))]
    pub process_command_line_max_bytes: Option<u32>,

    /// Priority of ConnectionCreate events (network connections). Off: not collected, programs not attached.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event_priority_connection_create: Option<Priority>,
    /// Aggregate identical ConnectionCreate events (same 5-tuple) into one record with a hit count.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub aggregation_enabled_connection_create: Option<bool>,
    /// Time window of one ConnectionCreate aggregation.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub aggregation_interval_connection_create: Option<IsoDuration>,
    /// Records kept per ConnectionCreate window; when full the oldest is discarded and counted.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65536))]
    pub cache_size_connection_create: Option<u32>,
    /// Zero the local (ephemeral) port of outbound connections, so repeated calls to one service are one record.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub aggregate_ephemeral_ports_connection_create: Option<bool>,
    /// Addresses whose DNS name is remembered (for host_name); when full the oldest is dropped and counted.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 16, max = 65536))]
    pub dns_cache_size_connection_create: Option<u32>,
}

pub const CACHE_SIZE_MAX: u32 = 65_536;
pub const CMDLINE_MIN: u32 = 16;
pub const DNS_CACHE_MIN: u32 = 16;
/// Shortest interval accepted: draining runs once a second.
pub const INTERVAL_MIN: Duration = Duration::from_secs(1);
/// Longest interval accepted (seed 000: an aggregated event covers at most 24 hours).
pub const INTERVAL_MAX: Duration = Duration::from_secs(86_400);
/// Message frequencies: at least a second (the transport's timer period),
/// at most a week.
pub const FREQUENCY_MIN: Duration = Duration::from_secs(1);
pub const FREQUENCY_MAX: Duration = Duration::from_secs(7 * 86_400);
/// Seed 004: both sizes must be larger than 8192; a message less than 262144.
pub const SIZE_FLOOR: u64 = 8192;
pub const MESSAGE_SIZE_CEILING: u64 = 262_144;
/// The spec gives no upper bound for the local cache; a gibibyte keeps a
/// typo from letting the agent eat the device's memory.
pub const CACHE_BYTES_MAX: u64 = 1 << 30;

/// Settings of one aggregated event type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventSettings {
    pub priority: Priority,
    pub aggregate: bool,
    pub interval: Duration,
    pub cache_size: u32,
}

/// The validated, complete configuration the agent runs with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub process_create: EventSettings,
    pub process_terminate: EventSettings,
    pub dropped_stats_priority: Priority,
    pub cmdline_max: u32,
    pub connection_create: EventSettings,
    /// Diagnostic windows (aggregated in user space; `aggregate` is always true).
    pub diagnostic: EventSettings,
    /// Login windows (aggregated in user space; `aggregate` is always true).
    pub login: EventSettings,
    /// The Login sources to read, without duplicates, never empty.
    pub login_sources: Vec<LoginSource>,
    pub aggregate_ephemeral_ports: bool,
    pub dns_cache_size: u32,
    /// Priorities of the event types that have no EventSettings, indexed
    /// like [`EventType::ALL`] (the process, connection and statistics entries unused).
    other_priorities: [Priority; EventType::ALL.len()],
    pub process_collector_enabled: bool,
    pub transport: TransportSettings,
    pub snapshots: SnapshotSettings,
    /// Where host files are read (`/` on the host itself).
    pub host_root: std::path::PathBuf,
    /// Where state is kept across restarts; None: nowhere.
    pub state_dir: Option<std::path::PathBuf>,
    /// Properties a remote configuration may not set (`*`: all of them).
    pub remote_locked: Vec<String>,
    /// SystemInformation overrides of the detected hardware vendor and model.
    pub hardware_vendor: Option<String>,
    pub hardware_model: Option<String>,
    /// FirewallConfiguration reads every network namespace, not only its own.
    pub firewall_all_namespaces: bool,
    pub baseline: BaselineSettings,
}

/// OSBaseline's checks left out (names validated against its table).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BaselineSettings {
    pub groups_disabled: Vec<String>,
    pub checks_disabled: Vec<String>,
}

/// Longest hardware vendor or model override, in bytes.
pub const HARDWARE_OVERRIDE_MAX: usize = 256;

/// How snapshot collectors send (seed 004's snapshotFrequency, and deltas).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotSettings {
    pub deltas: bool,
    pub full_every: u32,
}

impl Default for SnapshotSettings {
    fn default() -> Self {
        // With PT13H snapshots, a full one about every four days.
        SnapshotSettings { deltas: false, full_every: 8 }
    }
}

pub const SNAPSHOT_FULL_EVERY_MAX: u32 = 1000;

/// How events travel over MQTT (seed 004).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TransportSettings {
    pub high_frequency: Duration,
    pub medium_frequency: Duration,
    pub low_frequency: Duration,
    pub snapshot_frequency: Duration,
    pub max_cache_bytes: u64,
    pub max_message_bytes: u32,
}

impl TransportSettings {
    /// How long events of `p` may wait; None for Off.
    pub fn frequency(&self, p: Priority) -> Option<Duration> {
        match p {
            Priority::High => Some(self.high_frequency),
            Priority::Medium => Some(self.medium_frequency),
            Priority::Low => Some(self.low_frequency),
            Priority::Off => None,
        }
    }
}

impl Default for TransportSettings {
    fn default() -> Self {
        TransportSettings {
            high_frequency: Duration::from_secs(7 * 60),
            // The spec names Medium (seed 001) but gives it no frequency:
            // one hour sits between High's 7 minutes and Low's 5 hours.
            medium_frequency: Duration::from_secs(3600),
            low_frequency: Duration::from_secs(5 * 3600),
            snapshot_frequency: Duration::from_secs(13 * 3600),
            max_cache_bytes: 2_560_000,
            max_message_bytes: 204_800,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        let event = |priority| EventSettings {
            priority,
            aggregate: true,
            interval: Duration::from_secs(3600),
            cache_size: 256,
        };
        Config {
            // The micro agent (seed 001) makes Medium the default of the
            // event-based collectors; seed 004 gives ProcessTerminate Low.
            process_create: event(Priority::Medium),
            process_terminate: event(Priority::Low),
            dropped_stats_priority: Priority::Low,
            cmdline_max: 256,
            // Seed 002: network connection events are event-based like
            // ProcessCreate (Medium), 256-record buffer, seed 000: PT1H.
            connection_create: event(Priority::Medium),
            diagnostic: event(Priority::Off),
            // Seed 004: Login, High; the issue: a 256-record window like the others.
            login: event(Priority::High),
            login_sources: vec![LoginSource::Auto],
            aggregate_ephemeral_ports: false,
            dns_cache_size: 1024,
            other_priorities: EventType::ALL.map(EventType::default_priority),
            process_collector_enabled: true,
            transport: TransportSettings::default(),
            snapshots: SnapshotSettings::default(),
            host_root: std::path::PathBuf::from("/"),
            state_dir: Some(std::path::PathBuf::from(DEFAULT_STATE_DIR)),
            remote_locked: Vec::new(),
            hardware_vendor: None,
            hardware_model: None,
            firewall_all_namespaces: false,
            baseline: BaselineSettings::default(),
        }
    }
}

/// Properties only the device sets: a desired configuration naming one is refused.
pub const LOCAL_ONLY: [&str; 3] = ["hostRoot", "remoteConfigurationLocked", "stateDirectory"];

/// `stateDirectory` by default: the agent's own, as systemd's StateDirectory= makes it.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/hitcount";

impl Config {
    /// Whether a remote configuration may set `property`.
    pub fn remote_may_set(&self, property: &str) -> bool {
        !LOCAL_ONLY.contains(&property) && !self.remote_locked.iter().any(|l| l == "*" || l == property)
    }

    /// The window settings of an event type aggregated in user space.
    pub fn event_settings(&self, t: EventType) -> Option<EventSettings> {
        match t {
            EventType::Diagnostic => Some(self.diagnostic),
            EventType::Login => Some(self.login),
            _ => None,
        }
    }

    pub fn priority(&self, t: EventType) -> Priority {
        match t {
            EventType::ConfigurationChange => EventType::ConfigurationChange.default_priority(),
            EventType::ProcessCreate => self.process_create.priority,
            EventType::ProcessTerminate => self.process_terminate.priority,
            EventType::ConnectionCreate => self.connection_create.priority,
            EventType::Diagnostic => self.diagnostic.priority,
            EventType::Login => self.login.priority,
            EventType::DroppedEventsStatistics => self.dropped_stats_priority,
            other => self.other_priorities[other as usize],
        }
    }

    pub fn set_priority(&mut self, t: EventType, p: Priority) {
        match t {
            EventType::ConfigurationChange => {} // not configurable: see events::TABLE
            EventType::ProcessCreate => self.process_create.priority = p,
            EventType::ProcessTerminate => self.process_terminate.priority = p,
            EventType::ConnectionCreate => self.connection_create.priority = p,
            EventType::Diagnostic => self.diagnostic.priority = p,
            EventType::Login => self.login.priority = p,
            EventType::DroppedEventsStatistics => self.dropped_stats_priority = p,
            other => self.other_priorities[other as usize] = p,
        }
    }

    /// Whether events of `t` are collected at all: the priority is not Off
    /// and, for process events, the process collector is enabled.
    pub fn collects(&self, t: EventType) -> bool {
        let collector_on = match t {
            EventType::ProcessCreate | EventType::ProcessTerminate => self.process_collector_enabled,
            _ => true,
        };
        collector_on && self.priority(t).enabled()
    }
}

/// One problem with one property.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub field: String,
    pub reason: String,
}

/// Every problem found in a configuration object: the first
/// [`ERRORS_SHOWN_MAX`] of them, and how many there were. Field names and
/// reasons come from the document (a desired configuration is anyone's who
/// may publish on its topic), so they are escaped and cut (see
/// [`printable`]): one log line and one event each, of bounded size.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    pub source_name: String,
    pub errors: Vec<FieldError>,
    /// Problems found, `errors` included.
    pub total: usize,
}

/// Problems a ConfigError carries; a valid configuration has about 35
/// properties, so 20 name all the typos of a real one.
pub const ERRORS_SHOWN_MAX: usize = 20;
/// Bytes of a field name shown (the longest property name has 41).
pub const FIELD_SHOWN_MAX: usize = 64;
/// Bytes of a reason shown.
pub const REASON_SHOWN_MAX: usize = 160;
/// Bytes of all names and reasons shown together: with JSON's escapes and
/// an envelope, a ConfigurationError stays within the smallest
/// maxMessageSizeInBytes (8193).
pub const ERRORS_SHOWN_BYTES: usize = 2560;

impl ConfigError {
    /// Keeps the first errors, escaped and cut, within the bounds above.
    pub fn new(source_name: &str, errors: Vec<FieldError>) -> ConfigError {
        let total = errors.len();
        let mut shown = Vec::new();
        let mut bytes = 0;
        for e in errors.into_iter().take(ERRORS_SHOWN_MAX) {
            let e = FieldError {
                field: printable(&e.field, FIELD_SHOWN_MAX),
                reason: printable(&e.reason, REASON_SHOWN_MAX),
            };
            bytes += e.field.len() + e.reason.len();
            if bytes > ERRORS_SHOWN_BYTES && !shown.is_empty() {
                break;
            }
            shown.push(e);
        }
        ConfigError { source_name: printable(source_name, 128), errors: shown, total }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.total;
        write!(f, "invalid configuration in {}: ", self.source_name)?;
        if n != 1 {
            write!(f, "{n} problems: ")?;
        }
        for (i, e) in self.errors.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{}: {}", e.field, e.reason)?;
        }
        if n > self.errors.len() {
            write!(f, "; and {} more", n - self.errors.len())?;
        }
        Ok(())
    }
}

impl RawConfig {
    /// Parses a configuration object, reporting every bad property.
    pub fn parse(text: &str, source_name: &str) -> Result<RawConfig, ConfigError> {
        let (raw, errors) = RawConfig::parse_lenient(text, source_name)?;
        if errors.is_empty() {
            Ok(raw)
        } else {
            Err(ConfigError::new(source_name, errors))
        }
    }

    /// Parses what can be parsed: the well-typed properties, and an error for
    /// each other one. Only a document that is not a JSON object fails whole.
    pub fn parse_lenient(text: &str, source_name: &str) -> Result<(RawConfig, Vec<FieldError>), ConfigError> {
        let fail = |field: &str, reason: String| {
            ConfigError::new(source_name, vec![FieldError { field: field.to_string(), reason }])
        };
        let value: serde_json::Value =
            serde_json::from_str(text).map_err(|e| fail("(document)", format!("not valid JSON: {e}")))?;
        let serde_json::Value::Object(map) = value else {
            return Err(fail("(document)", "must be a JSON object".into()));
        };
        // One property at a time, so that one bad property does not hide the next.
        let mut errors = Vec::new();
        let mut raw = serde_json::Map::new();
        for (k, v) in map {
            let one = serde_json::Value::Object([(k.clone(), v.clone())].into_iter().collect());
            match serde_json::from_value::<RawConfig>(one) {
                Ok(_) => {
                    raw.insert(k, v);
                }
                Err(e) => errors.push(FieldError { field: k, reason: clean_serde_message(&e.to_string()) }),
            }
        }
        let raw =
            serde_json::from_value(serde_json::Value::Object(raw)).map_err(|e| fail("(document)", e.to_string()))?;
        Ok((raw, errors))
    }

    /// `other`'s properties replace ours where set.
    pub fn overlay(mut self, other: &RawConfig) -> RawConfig {
        let mut base = serde_json::to_value(&self).expect("config serializes");
        let top = serde_json::to_value(other).expect("config serializes");
        if let (Some(b), Some(t)) = (base.as_object_mut(), top.as_object()) {
            for (k, v) in t {
                b.insert(k.clone(), v.clone());
            }
        }
        self = serde_json::from_value(base).expect("merged config deserializes");
        self
    }

    /// Applies these properties to `base`, checking ranges.
    pub fn resolve(&self, base: &Config, source_name: &str) -> Result<Config, ConfigError> {
        let mut errors = Vec::new();
        let mut c = base.clone();
        let mut interval = |field: &str, v: Option<IsoDuration>, into: &mut Duration| {
            if let Some(IsoDuration(d)) = v {
                if d < INTERVAL_MIN || d > INTERVAL_MAX {
                    errors.push(FieldError {
                        field: field.into(),
                        reason: format!(
                            "must be between {} and {}, got {}",
                            Iso8601(INTERVAL_MIN),
                            Iso8601(INTERVAL_MAX),
                            Iso8601(d)
                        ),
                    });
                } else {
                    *into = d;
                }
            }
        };
        interval(
            "aggregationIntervalProcessCreate",
            self.aggregation_interval_process_create,
            &mut c.process_create.interval,
        );
        interval(
            "aggregationIntervalProcessTerminate",
            self.aggregation_interval_process_terminate,
            &mut c.process_terminate.interval,
        );
        interval(
            "aggregationIntervalConnectionCreate",
            self.aggregation_interval_connection_create,
            &mut c.connection_create.interval,
        );
        interval("aggregationIntervalDiagnostic", self.aggregation_interval_diagnostic, &mut c.diagnostic.interval);
        interval("aggregationIntervalLogin", self.aggregation_interval_login, &mut c.login.interval);
        let mut range = |field: &str, v: Option<u32>, min: u32, max: u32, into: &mut u32| {
            if let Some(v) = v {
                if v < min || v > max {
                    errors.push(FieldError {
                        field: field.into(),
                        reason: format!("must be between {min} and {max}, got {v}"),
                    });
                } else {
                    *into = v;
                }
            }
        };
        range(
            "cacheSizeProcessCreate",
            self.cache_size_process_create,
            1,
            CACHE_SIZE_MAX,
            &mut c.process_create.cache_size,
        );
        range(
            "cacheSizeProcessTerminate",
            self.cache_size_process_terminate,
            1,
            CACHE_SIZE_MAX,
            &mut c.process_terminate.cache_size,
        );
        range(
            "processCommandLineMaxBytes",
            self.process_command_line_max_bytes,
            CMDLINE_MIN,
            agent_common::CMDLINE_CAP as u32,
            &mut c.cmdline_max,
        );
        range(
            "cacheSizeConnectionCreate",
            self.cache_size_connection_create,
            1,
            CACHE_SIZE_MAX,
            &mut c.connection_create.cache_size,
        );
        range("cacheSizeDiagnostic", self.cache_size_diagnostic, 1, CACHE_SIZE_MAX, &mut c.diagnostic.cache_size);
        range("cacheSizeLogin", self.cache_size_login, 1, CACHE_SIZE_MAX, &mut c.login.cache_size);
        range(
            "dnsCacheSizeConnectionCreate",
            self.dns_cache_size_connection_create,
            DNS_CACHE_MIN,
            CACHE_SIZE_MAX,
            &mut c.dns_cache_size,
        );
        set(&mut c.connection_create.aggregate, self.aggregation_enabled_connection_create);
        set(&mut c.aggregate_ephemeral_ports, self.aggregate_ephemeral_ports_connection_create);
        if let Some(sources) = &self.login_source {
            if sources.is_empty() {
                errors.push(FieldError {
                    field: "loginSource".into(),
                    reason: "must name at least one of auto, pam, utmp, audit, syslog (to collect no logins set \
                             eventPriorityLogin to Off)"
                        .into(),
                });
            } else {
                let mut unique = Vec::new();
                for s in sources {
                    if !unique.contains(s) {
                        unique.push(*s);
                    }
                }
                c.login_sources = unique;
            }
        }
        for t in EventType::ALL {
            if let Some(p) = self.priority_of(t) {
                c.set_priority(t, p);
            }
        }
        let mut frequency = |field: &str, v: Option<IsoDuration>, into: &mut Duration| {
            if let Some(IsoDuration(d)) = v {
                if d < FREQUENCY_MIN || d > FREQUENCY_MAX {
                    errors.push(FieldError {
                        field: field.into(),
                        reason: format!(
                            "must be between {} and {}, got {}",
                            Iso8601(FREQUENCY_MIN),
                            Iso8601(FREQUENCY_MAX),
                            Iso8601(d)
                        ),
                    });
                } else {
                    *into = d;
                }
            }
        };
        let t = &mut c.transport;
        frequency("highPriorityMessageFrequency", self.high_priority_message_frequency, &mut t.high_frequency);
        frequency("mediumPriorityMessageFrequency", self.medium_priority_message_frequency, &mut t.medium_frequency);
        frequency("lowPriorityMessageFrequency", self.low_priority_message_frequency, &mut t.low_frequency);
        frequency("snapshotFrequency", self.snapshot_frequency, &mut t.snapshot_frequency);
        if let Some(v) = self.max_local_cache_size_in_bytes {
            if v <= SIZE_FLOOR || v > CACHE_BYTES_MAX {
                errors.push(FieldError {
                    field: "maxLocalCacheSizeInBytes".into(),
                    reason: format!("must be larger than {SIZE_FLOOR} and at most {CACHE_BYTES_MAX}, got {v}"),
                });
            } else {
                t.max_cache_bytes = v;
            }
        }
        if let Some(v) = self.max_message_size_in_bytes {
            if u64::from(v) <= SIZE_FLOOR || u64::from(v) >= MESSAGE_SIZE_CEILING {
                errors.push(FieldError {
                    field: "maxMessageSizeInBytes".into(),
                    reason: format!("must be larger than {SIZE_FLOOR} and less than {MESSAGE_SIZE_CEILING}, got {v}"),
                });
            } else {
                t.max_message_bytes = v;
            }
        }
        set(&mut c.process_collector_enabled, self.collector_enabled_process);
        set(&mut c.snapshots.deltas, self.snapshot_deltas);
        set(&mut c.firewall_all_namespaces, self.firewall_all_namespaces);
        if let Some(n) = self.snapshot_full_every {
            if (1..=SNAPSHOT_FULL_EVERY_MAX).contains(&n) {
                c.snapshots.full_every = n;
            } else {
                errors.push(FieldError {
                    field: "snapshotFullEvery".into(),
                    reason: format!("must be between 1 and {SNAPSHOT_FULL_EVERY_MAX}, got {n}"),
                });
            }
        }
        use crate::collectors::os_baseline;
        for (field, v, known, into) in [
            (
                "baselineGroupsDisabled",
                &self.baseline_groups_disabled,
                (|n: &str| os_baseline::groups().contains(&n)) as fn(&str) -> bool,
                &mut c.baseline.groups_disabled,
            ),
            (
                "baselineChecksDisabled",
                &self.baseline_checks_disabled,
                os_baseline::is_check,
                &mut c.baseline.checks_disabled,
            ),
        ] {
            let Some(names) = v else { continue };
            let bad: Vec<String> = names
                .iter()
                .filter(|n| !known(n))
                .take(8)
                .map(|n| format!("{:?}", n.escape_debug().to_string()))
                .collect();
            if bad.is_empty() {
                *into = names.clone();
            } else {
                let what = if field == "baselineGroupsDisabled" { "groups" } else { "checks" };
                errors.push(FieldError { field: field.into(), reason: format!("unknown {what}: {}", bad.join(", ")) });
            }
        }
        if let Some(locked) = &self.remote_configuration_locked {
            let known = property_names();
            let mut bad = locked.iter().filter(|n| *n != "*" && !known.contains(n)).peekable();
            if bad.peek().is_some() {
                let bad: Vec<String> = bad.take(8).map(|n| format!("{:?}", n.escape_debug().to_string())).collect();
                errors.push(FieldError {
                    field: "remoteConfigurationLocked".into(),
                    reason: format!("unknown properties: {}", bad.join(", ")),
                });
            } else {
                c.remote_locked = locked.clone();
            }
        }
        match self.state_directory.as_deref() {
            None => {}
            Some(d) if d.as_os_str().is_empty() => c.state_dir = None,
            Some(d) if d.is_absolute() => c.state_dir = Some(d.to_path_buf()),
            Some(d) => errors.push(FieldError {
                field: "stateDirectory".into(),
                reason: format!("must be an absolute path or \"\", got {}", d.display()),
            }),
        }
        if let Some(root) = &self.host_root {
            if root.is_absolute() {
                c.host_root = root.clone();
            } else {
                errors.push(FieldError {
                    field: "hostRoot".into(),
                    reason: format!("must be an absolute path, got {}", root.display()),
                });
            }
        }
        for (field, v, into) in [
            ("systemInformationHardwareVendor", &self.system_information_hardware_vendor, &mut c.hardware_vendor),
            ("systemInformationHardwareModel", &self.system_information_hardware_model, &mut c.hardware_model),
        ] {
            match v.as_deref() {
                None => {}
                Some("") => *into = None,
                Some(v) if v.len() > HARDWARE_OVERRIDE_MAX => errors.push(FieldError {
                    field: field.into(),
                    reason: format!("must be at most {HARDWARE_OVERRIDE_MAX} bytes, got {}", v.len()),
                }),
                Some(v) if v.chars().any(char::is_control) => errors
                    .push(FieldError { field: field.into(), reason: "must not contain control characters".into() }),
                Some(v) => *into = Some(v.to_string()),
            }
        }
        set(&mut c.process_create.aggregate, self.aggregation_enabled_process_create);
        set(&mut c.process_terminate.aggregate, self.aggregation_enabled_process_terminate);
        if errors.is_empty() {
            Ok(c)
        } else {
            Err(ConfigError::new(source_name, errors))
        }
    }
}

impl RawConfig {
    /// The eventPriority{EventName} property of `t`.
    pub fn priority_of(&self, t: EventType) -> Option<Priority> {
        match t {
            EventType::Diagnostic => self.event_priority_diagnostic,
            EventType::ConfigurationError => self.event_priority_configuration_error,
            EventType::DroppedEventsStatistics => self.event_priority_dropped_events_statistics,
            EventType::ConnectedHardware => self.event_priority_connected_hardware,
            EventType::ListeningPorts => self.event_priority_listening_ports,
            EventType::ProcessCreate => self.event_priority_process_create,
            EventType::ProcessTerminate => self.event_priority_process_terminate,
            EventType::SystemInformation => self.event_priority_system_information,
            EventType::LocalUsers => self.event_priority_local_users,
            EventType::Login => self.event_priority_login,
            EventType::ConnectionCreate => self.event_priority_connection_create,
            EventType::FirewallConfiguration => self.event_priority_firewall_configuration,
            EventType::OSBaseline => self.event_priority_os_baseline,
            EventType::SBoM => self.event_priority_sbom,
            EventType::ConfigurationChange => None,
        }
    }

    /// The eventPriority{EventName} property of `t`, to set it (None for a
    /// type without one).
    pub fn priority_slot(&mut self, t: EventType) -> Option<&mut Option<Priority>> {
        Some(match t {
            EventType::ConfigurationChange => return None,
            EventType::Diagnostic => &mut self.event_priority_diagnostic,
            EventType::ConfigurationError => &mut self.event_priority_configuration_error,
            EventType::DroppedEventsStatistics => &mut self.event_priority_dropped_events_statistics,
            EventType::ConnectedHardware => &mut self.event_priority_connected_hardware,
            EventType::ListeningPorts => &mut self.event_priority_listening_ports,
            EventType::ProcessCreate => &mut self.event_priority_process_create,
            EventType::ProcessTerminate => &mut self.event_priority_process_terminate,
            EventType::SystemInformation => &mut self.event_priority_system_information,
            EventType::LocalUsers => &mut self.event_priority_local_users,
            EventType::Login => &mut self.event_priority_login,
            EventType::ConnectionCreate => &mut self.event_priority_connection_create,
            EventType::FirewallConfiguration => &mut self.event_priority_firewall_configuration,
            EventType::OSBaseline => &mut self.event_priority_os_baseline,
            EventType::SBoM => &mut self.event_priority_sbom,
        })
    }
}

fn set<T>(into: &mut T, v: Option<T>) {
    if let Some(v) = v {
        *into = v;
    }
}

/// Parses `text` and applies it over `below` (the lower layers), reporting
/// every bad property: wrong types and unknown names as well as values out
/// of range, sorted by property name. Returns the parsed layer and the result.
pub fn load_layer(text: &str, source_name: &str, below: &RawConfig) -> Result<(RawConfig, Config), ConfigError> {
    let (raw, mut errors) = RawConfig::parse_lenient(text, source_name)?;
    match below.clone().overlay(&raw).resolve(&Config::default(), source_name) {
        Ok(c) if errors.is_empty() => return Ok((raw, c)),
        Ok(_) => {}
        Err(e) => errors.extend(e.errors),
    }
    errors.sort_by(|a, b| a.field.cmp(&b.field));
    Err(ConfigError::new(source_name, errors))
}

/// serde's messages end with " at line 1 column N" for the one-property
/// document we built; that position means nothing to the user. An unknown
/// field's message lists every property (1.5 KiB): the schema does that.
fn clean_serde_message(m: &str) -> String {
    let m = match m.rfind(" at line ") {
        Some(i) => &m[..i],
        None => m,
    };
    match (m.starts_with("unknown field `"), m.rfind("`, expected one of ")) {
        (true, Some(i)) => format!("{}` (`hitcount config schema` lists the properties)", &m[..i]),
        _ => m.to_string(),
    }
}

impl Config {
    /// Every property with its effective value: what `config defaults` prints
    /// and what the agent reports.
    pub fn to_raw(&self) -> RawConfig {
        let t = &self.transport;
        let mut raw = RawConfig {
            aggregation_enabled_process_create: Some(self.process_create.aggregate),
            aggregation_interval_process_create: Some(IsoDuration(self.process_create.interval)),
            aggregation_enabled_process_terminate: Some(self.process_terminate.aggregate),
            aggregation_interval_process_terminate: Some(IsoDuration(self.process_terminate.interval)),
            cache_size_process_create: Some(self.process_create.cache_size),
            cache_size_process_terminate: Some(self.process_terminate.cache_size),
            process_command_line_max_bytes: Some(self.cmdline_max),
            aggregation_enabled_connection_create: Some(self.connection_create.aggregate),
            aggregation_interval_connection_create: Some(IsoDuration(self.connection_create.interval)),
            cache_size_connection_create: Some(self.connection_create.cache_size),
            aggregate_ephemeral_ports_connection_create: Some(self.aggregate_ephemeral_ports),
            dns_cache_size_connection_create: Some(self.dns_cache_size),
            aggregation_interval_diagnostic: Some(IsoDuration(self.diagnostic.interval)),
            cache_size_diagnostic: Some(self.diagnostic.cache_size),
            aggregation_interval_login: Some(IsoDuration(self.login.interval)),
            cache_size_login: Some(self.login.cache_size),
            login_source: Some(self.login_sources.clone()),
            high_priority_message_frequency: Some(IsoDuration(t.high_frequency)),
            medium_priority_message_frequency: Some(IsoDuration(t.medium_frequency)),
            low_priority_message_frequency: Some(IsoDuration(t.low_frequency)),
            snapshot_frequency: Some(IsoDuration(t.snapshot_frequency)),
            max_local_cache_size_in_bytes: Some(t.max_cache_bytes),
            max_message_size_in_bytes: Some(t.max_message_bytes),
            collector_enabled_process: Some(self.process_collector_enabled),
            snapshot_deltas: Some(self.snapshots.deltas),
            snapshot_full_every: Some(self.snapshots.full_every),
            firewall_all_namespaces: Some(self.firewall_all_namespaces),
            baseline_groups_disabled: Some(self.baseline.groups_disabled.clone()),
            baseline_checks_disabled: Some(self.baseline.checks_disabled.clone()),
            host_root: Some(self.host_root.clone()),
            state_directory: Some(self.state_dir.clone().unwrap_or_default()),
            remote_configuration_locked: Some(self.remote_locked.clone()),
            system_information_hardware_vendor: Some(self.hardware_vendor.clone().unwrap_or_default()),
            system_information_hardware_model: Some(self.hardware_model.clone().unwrap_or_default()),
            ..RawConfig::default()
        };
        for e in EventType::configurable() {
            if let Some(slot) = raw.priority_slot(e) {
                *slot = Some(self.priority(e));
            }
        }
        raw
    }
}

/// The JSON Schema of the configuration object, generated from [`RawConfig`].
pub fn schema() -> serde_json::Value {
    serde_json::to_value(schemars::schema_for!(RawConfig)).expect("schema serializes")
}

/// Names of all properties, from the schema (for docs and tests).
pub fn property_names() -> Vec<String> {
    let s = schema();
    s["properties"].as_object().map(|o| o.keys().cloned().collect()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        RawConfig::parse(text, "test")?.resolve(&Config::default(), "test")
    }

    #[test]
    fn empty_object_is_the_defaults() {
        assert_eq!(parse("{}").unwrap(), Config::default());
    }

    #[test]
    fn defaults_follow_the_spec() {
        let c = Config::default();
        assert_eq!(c.process_create.cache_size, 256);
        assert_eq!(c.process_create.interval, Duration::from_secs(3600));
        assert!(c.process_create.aggregate);
        assert_eq!(c.process_create.priority, Priority::Medium);
        assert_eq!(c.process_terminate.priority, Priority::Low);
        assert_eq!(c.cmdline_max, 256);
    }

    #[test]
    fn values_apply() {
        let c = parse(
            r#"{"aggregationIntervalProcessCreate":"PT2S","cacheSizeProcessCreate":16,
                "aggregationEnabledProcessTerminate":false,"eventPriorityProcessCreate":"Off",
                "processCommandLineMaxBytes":64}"#,
        )
        .unwrap();
        assert_eq!(c.process_create.interval, Duration::from_secs(2));
        assert_eq!(c.process_create.cache_size, 16);
        assert!(!c.process_terminate.aggregate);
        assert_eq!(c.process_create.priority, Priority::Off);
        assert_eq!(c.cmdline_max, 64);
    }

    #[test]
    fn connection_properties_apply_and_are_checked() {
        let c = Config::default();
        assert_eq!(c.connection_create.priority, Priority::Medium);
        assert_eq!((c.connection_create.cache_size, c.connection_create.interval), (256, Duration::from_secs(3600)));
        assert!(c.connection_create.aggregate && !c.aggregate_ephemeral_ports);
        let c = parse(
            r#"{"eventPriorityConnectionCreate":"Off","aggregationEnabledConnectionCreate":false,
                "aggregationIntervalConnectionCreate":"PT5S","cacheSizeConnectionCreate":32,
                "aggregateEphemeralPortsConnectionCreate":true,"dnsCacheSizeConnectionCreate":64}"#,
        )
        .unwrap();
        assert_eq!(c.connection_create.priority, Priority::Off);
        assert!(!c.connection_create.aggregate && c.aggregate_ephemeral_ports);
        assert_eq!((c.connection_create.cache_size, c.dns_cache_size), (32, 64));
        assert_eq!(c.connection_create.interval, Duration::from_secs(5));
        let e = parse(
            r#"{"cacheSizeConnectionCreate":0,"dnsCacheSizeConnectionCreate":1,"aggregationIntervalConnectionCreate":"P2D",
                "aggregateEphemeralPortsConnectionCreate":"yes"}"#,
        )
        .unwrap_err();
        assert_eq!(e.errors.len(), 1, "type errors first: {e}");
        assert_eq!(e.errors[0].field, "aggregateEphemeralPortsConnectionCreate");
        let e = parse(
            r#"{"cacheSizeConnectionCreate":0,"dnsCacheSizeConnectionCreate":1,"aggregationIntervalConnectionCreate":"P2D"}"#,
        )
        .unwrap_err();
        let fields: Vec<_> = e.errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            ["aggregationIntervalConnectionCreate", "cacheSizeConnectionCreate", "dnsCacheSizeConnectionCreate"]
        );
    }

    #[test]
    fn every_bad_field_is_named() {
        let e =
            parse(r#"{"cacheSizeProcessCreate":"big","bogus":1,"aggregationIntervalProcessCreate":"1H"}"#).unwrap_err();
        let fields: Vec<_> = e.errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["aggregationIntervalProcessCreate", "bogus", "cacheSizeProcessCreate"]);
        let text = e.to_string();
        assert!(text.contains("unknown field `bogus`"), "{text}");
        assert!(text.contains("must start with P"), "{text}");
        assert!(text.contains("invalid type: string \"big\""), "{text}");
    }

    #[test]
    fn ranges_are_checked_and_named() {
        let e = parse(r#"{"cacheSizeProcessCreate":0,"processCommandLineMaxBytes":4096,"aggregationIntervalProcessTerminate":"PT0.5S"}"#)
            .unwrap_err();
        let text = e.to_string();
        assert_eq!(e.errors.len(), 3, "{text}");
        assert!(text.contains("cacheSizeProcessCreate: must be between 1 and 65536, got 0"), "{text}");
        assert!(text.contains("processCommandLineMaxBytes: must be between 16 and 488, got 4096"), "{text}");
        assert!(text.contains("aggregationIntervalProcessTerminate: must be between PT1S and P1D"), "{text}");
    }

    #[test]
    fn malformed_documents_are_refused() {
        for bad in ["", "[]", "{", "3", r#"{"a":}"#] {
            let e = parse(bad).unwrap_err();
            assert_eq!(e.errors[0].field, "(document)", "{bad}");
        }
    }

    #[test]
    fn to_raw_round_trips() {
        let c = parse(r#"{"cacheSizeProcessTerminate":9,"aggregationIntervalProcessTerminate":"PT90S"}"#).unwrap();
        let text = serde_json::to_string(&c.to_raw()).unwrap();
        assert_eq!(parse(&text).unwrap(), c);
        // Every property is reported.
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v.as_object().unwrap().len(), property_names().len());
    }

    #[test]
    fn hardware_overrides_apply_and_empty_means_detect() {
        assert_eq!((Config::default().hardware_vendor, Config::default().hardware_model), (None, None));
        let c =
            parse(r#"{"systemInformationHardwareVendor":"Contoso","systemInformationHardwareModel":"GW-9"}"#).unwrap();
        assert_eq!((c.hardware_vendor.as_deref(), c.hardware_model.as_deref()), (Some("Contoso"), Some("GW-9")));
        let c = parse(r#"{"systemInformationHardwareVendor":""}"#).unwrap();
        assert_eq!(c.hardware_vendor, None);
        let at_bound = format!(r#"{{"systemInformationHardwareModel":"{}"}}"#, "é".repeat(HARDWARE_OVERRIDE_MAX / 2));
        assert_eq!(parse(&at_bound).unwrap().hardware_model.map(|m| m.len()), Some(HARDWARE_OVERRIDE_MAX));
    }

    #[test]
    fn overlay_prefers_the_top() {
        let base = RawConfig::parse(r#"{"cacheSizeProcessCreate":5,"cacheSizeProcessTerminate":6}"#, "a").unwrap();
        let top = RawConfig::parse(r#"{"cacheSizeProcessCreate":7}"#, "b").unwrap();
        let m = base.overlay(&top);
        assert_eq!(m.cache_size_process_create, Some(7));
        assert_eq!(m.cache_size_process_terminate, Some(6));
    }

    #[test]
    fn schema_lists_every_property_and_closes_the_object() {
        let s = schema();
        assert_eq!(s["additionalProperties"], serde_json::json!(false));
        let names = property_names();
        for n in ["eventPriorityProcessCreate", "aggregationIntervalProcessCreate", "cacheSizeProcessCreate"] {
            assert!(names.iter().any(|x| x == n), "{n} missing from schema");
        }
    }

    /// Each configuration is refused by itself, with exactly one error that
    /// names the bad property; the message carries the name too.
    #[test]
    fn invalid_config_corpus_names_the_field() {
        let mut corpus: Vec<(String, String)> = Vec::new();
        let mut case = |json: &str, field: &str| corpus.push((json.to_string(), field.to_string()));
        // Wrong priority values, one per event type.
        let bad_priorities = [
            "1",
            "\"high\"",
            "\"Sometimes\"",
            "true",
            "[\"High\"]",
            "{}",
            "\"OFF\"",
            "\"\"",
            "\"Medium \"",
            "0.5",
            "\"Hi\"",
            "\"none\"",
            "\"Disabled\"",
            "\"low\"",
        ];
        let names: Vec<String> = EventType::configurable().filter_map(|t| t.priority_property()).collect();
        for (name, bad) in names.iter().zip(bad_priorities) {
            case(&format!(r#"{{"{name}":{bad}}}"#), name);
        }
        // Durations: malformed, wrong type, out of range.
        for (field, bad) in [
            ("highPriorityMessageFrequency", "\"7 minutes\""),
            ("highPriorityMessageFrequency", "\"PT0S\""),
            ("mediumPriorityMessageFrequency", "\"P1M\""),
            ("mediumPriorityMessageFrequency", "3600"),
            ("lowPriorityMessageFrequency", "\"P8D\""),
            ("lowPriorityMessageFrequency", "\"PT\""),
            ("snapshotFrequency", "\"13H\""),
            ("snapshotFrequency", "\"PT0.5S\""),
            ("aggregationIntervalProcessCreate", "\"PT0S\""),
            ("aggregationIntervalProcessCreate", "\"P2D\""),
            ("aggregationIntervalProcessTerminate", "\"1H\""),
            ("aggregationIntervalProcessTerminate", "3600"),
        ] {
            case(&format!(r#"{{"{field}":{bad}}}"#), field);
        }
        // Sizes: out of range or wrong type.
        for (field, bad) in [
            ("maxLocalCacheSizeInBytes", "8192"),
            ("maxLocalCacheSizeInBytes", "0"),
            ("maxLocalCacheSizeInBytes", "-1"),
            ("maxLocalCacheSizeInBytes", "\"big\""),
            ("maxLocalCacheSizeInBytes", "1.5"),
            ("maxLocalCacheSizeInBytes", "2147483648"),
            ("maxMessageSizeInBytes", "8192"),
            ("maxMessageSizeInBytes", "262144"),
            ("maxMessageSizeInBytes", "300000"),
            ("maxMessageSizeInBytes", "-5"),
            ("maxMessageSizeInBytes", "\"204800\""),
            ("maxMessageSizeInBytes", "1e5"),
            ("cacheSizeProcessCreate", "0"),
            ("cacheSizeProcessCreate", "65537"),
            ("cacheSizeProcessTerminate", "-1"),
            ("cacheSizeProcessTerminate", "\"256\""),
            ("processCommandLineMaxBytes", "15"),
            ("processCommandLineMaxBytes", "513"),
        ] {
            case(&format!(r#"{{"{field}":{bad}}}"#), field);
        }
        // Hardware overrides: too long, control characters, wrong type.
        let long = format!("\"{}\"", "x".repeat(HARDWARE_OVERRIDE_MAX + 1));
        for (field, bad) in [
            ("systemInformationHardwareVendor", long.as_str()),
            ("systemInformationHardwareModel", "\"a\\nb\""),
            ("systemInformationHardwareModel", "42"),
        ] {
            case(&format!(r#"{{"{field}":{bad}}}"#), field);
        }
        // Booleans.
        for (field, bad) in [
            ("aggregationEnabledProcessCreate", "\"yes\""),
            ("aggregationEnabledProcessTerminate", "1"),
            ("collectorEnabledProcess", "\"true\""),
            ("collectorEnabledProcess", "0"),
        ] {
            case(&format!(r#"{{"{field}":{bad}}}"#), field);
        }
        // Unknown properties (a near miss in case is unknown too).
        for unknown in
            ["bogus", "eventPriorityprocessCreate", "EventPriorityProcessCreate", "aggregationIntervalNetwork", ""]
        {
            case(&format!(r#"{{"{unknown}":1}}"#), unknown);
        }
        // Documents that are not a JSON object.
        for bad in ["", "[]", "{", "3", r#"{"a":}"#, "null", "\"str\"", r#"{"a":1,}"#] {
            case(bad, "(document)");
        }
        assert!(corpus.len() >= 50, "{} cases", corpus.len());
        for (json, field) in &corpus {
            let e = load_layer(json, "corpus", &RawConfig::default()).unwrap_err();
            let fields: Vec<&str> = e.errors.iter().map(|e| e.field.as_str()).collect();
            assert_eq!(fields, [field.as_str()], "{json}");
            assert!(!e.errors[0].reason.is_empty(), "{json}");
            assert!(e.to_string().contains(&format!("{field}: ")), "{json}: {e}");
        }
    }

    #[test]
    fn thousands_of_unknown_keys_make_a_bounded_error() {
        let long = "k".repeat(10_000);
        let mut doc = serde_json::Map::new();
        for i in 0..5000 {
            doc.insert(format!("bogus{i:04}"), 1.into());
        }
        doc.insert(format!("a{long}"), 1.into());
        doc.insert("a\nERROR forged log line".into(), 1.into());
        let text = serde_json::Value::Object(doc).to_string();
        let e = load_layer(&text, "test", &RawConfig::default()).unwrap_err();
        assert_eq!(e.total, 5002);
        assert_eq!(e.errors.len(), ERRORS_SHOWN_MAX);
        assert_eq!(e.errors[0].field, "a\\nERROR forged log line", "escaped, and sorted first");
        assert!(e.errors[1].field.starts_with("akkk") && e.errors[1].field.ends_with("...(10001 bytes in all)"));
        assert_eq!(e.errors[1].field.len(), FIELD_SHOWN_MAX + "...(10001 bytes in all)".len());
        assert_eq!(e.errors[2].field, "bogus0000");
        assert_eq!(e.errors[19].field, "bogus0017");
        let line = e.to_string();
        assert!(!line.contains('\n'), "one log line");
        assert!(line.len() < 8192, "{} bytes", line.len());
        assert!(line.starts_with("invalid configuration in test: 5002 problems: "), "{line}");
        assert!(line.ends_with("; and 4982 more"), "{line}");
        for f in &e.errors {
            assert!(f.reason.len() <= REASON_SHOWN_MAX + 30, "{}", f.reason);
        }
    }

    #[test]
    fn an_unknown_field_names_itself_not_every_property() {
        let e = load_layer(r#"{"cacheSizeProcesCreate":1}"#, "f", &RawConfig::default()).unwrap_err();
        assert_eq!(
            e.errors[0].reason,
            "unknown field `cacheSizeProcesCreate` (`hitcount config schema` lists the properties)"
        );
        assert_eq!(e.total, 1);
    }

    #[test]
    fn load_layer_names_type_and_range_errors_together() {
        let e = load_layer(
            r#"{"cacheSizeProcessCreate":0,"bogus":1,"maxMessageSizeInBytes":9}"#,
            "f",
            &RawConfig::default(),
        )
        .unwrap_err();
        let fields: Vec<&str> = e.errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["bogus", "cacheSizeProcessCreate", "maxMessageSizeInBytes"]);
    }

    #[test]
    fn login_sources_are_checked_by_name_and_login_has_its_own_window() {
        let c = parse(r#"{"loginSource":["utmp","pam","utmp"],"cacheSizeLogin":7,"aggregationIntervalLogin":"PT30S"}"#)
            .unwrap();
        assert_eq!(c.login_sources, [LoginSource::Utmp, LoginSource::Pam], "duplicates dropped, order kept");
        assert_eq!(
            c.event_settings(EventType::Login).map(|s| (s.cache_size, s.interval)),
            Some((7, Duration::from_secs(30)))
        );
        assert_eq!(Config::default().login_sources, [LoginSource::Auto]);
        assert_eq!(Config::default().login.cache_size, 256);
        let e = load_layer(r#"{"loginSource":["utmp","sylog"]}"#, "f", &RawConfig::default()).unwrap_err();
        assert_eq!(e.errors[0].field, "loginSource");
        assert!(e.errors[0].reason.contains("unknown variant `sylog`"), "{}", e.errors[0].reason);
        let e = parse(r#"{"loginSource":[]}"#).unwrap_err();
        assert!(e.to_string().contains("loginSource: must name at least one of auto"), "{e}");
        assert!(parse(r#"{"cacheSizeLogin":0}"#).unwrap_err().to_string().contains("cacheSizeLogin: must be between"));
    }

    #[test]
    fn full_event_table_with_spec_defaults() {
        let c = Config::default();
        let expect = [
            ("Diagnostic", Priority::Off),
            ("ConfigurationError", Priority::Low),
            ("DroppedEventsStatistics", Priority::Low),
            ("ConnectedHardware", Priority::Low),
            ("ListeningPorts", Priority::High),
            ("ProcessCreate", Priority::Medium),
            ("ProcessTerminate", Priority::Low),
            ("SystemInformation", Priority::Low),
            ("LocalUsers", Priority::High),
            ("Login", Priority::High),
            ("ConnectionCreate", Priority::Medium),
            ("FirewallConfiguration", Priority::Low),
            ("OSBaseline", Priority::Low),
            ("SBoM", Priority::Low),
        ];
        for (name, p) in expect {
            let t = EventType::from_name(name).unwrap();
            assert_eq!(c.priority(t), p, "{name}");
            assert!(property_names().contains(&format!("eventPriority{name}")), "{name} not in the schema");
        }
        let t = c.transport;
        assert_eq!(
            (t.high_frequency, t.medium_frequency, t.low_frequency, t.snapshot_frequency),
            (
                Duration::from_secs(420),
                Duration::from_secs(3600),
                Duration::from_secs(18_000),
                Duration::from_secs(46_800)
            )
        );
        assert_eq!((t.max_cache_bytes, t.max_message_bytes), (2_560_000, 204_800));
    }

    #[test]
    fn edges_of_the_ranges_are_accepted() {
        let c = parse(
            r#"{"maxLocalCacheSizeInBytes":8193,"maxMessageSizeInBytes":262143,"highPriorityMessageFrequency":"PT1S",
                "lowPriorityMessageFrequency":"P7D","eventPriorityDiagnostic":"High","collectorEnabledProcess":false}"#,
        )
        .unwrap();
        assert_eq!((c.transport.max_cache_bytes, c.transport.max_message_bytes), (8193, 262_143));
        assert_eq!(c.priority(EventType::Diagnostic), Priority::High);
        assert!(!c.collects(EventType::ProcessCreate) && !c.collects(EventType::ProcessTerminate));
        assert!(c.collects(EventType::DroppedEventsStatistics));
    }
}
