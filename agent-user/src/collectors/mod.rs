//! The collectors that run in user space, one module per event type, and
//! the shape they share. A snapshot collector is a small [`Snapshot`] impl:
//! it reads host files through [`HostFs`] and returns its items; the
//! periodic adapter in [`snapshot`] owns scheduling, deltas, statistics and
//! the events a snapshot sends. An event collector that is not fed by the
//! kernel maps (uevents, the agent's own log) is an [`EventSource`] polled at
//! every drain.
//!
//! Adding a collector: its module here, one line in [`snapshot_collectors`]
//! or [`event_sources`], its row already in `events::TABLE`, and its fields
//! in the README.
use serde::Serialize;

use crate::{config::Config, events::EventType, hostfs::HostFs};

pub mod connected_hardware;
pub mod connection_create;
pub mod diagnostic;
pub mod firewall;
pub mod ids;
pub mod kernel;
pub mod listening_ports;
pub mod local_users;
pub mod login;
pub mod os_baseline;
pub mod process_create;
pub mod process_terminate;
pub mod sbom;
pub mod snapshot;
pub mod system_information;
pub mod window;

/// What a collector is handed.
pub struct Context<'a> {
    pub host: &'a HostFs,
    pub config: &'a Config,
    /// The libpam files the PAM programs are attached to now (Login's pam source).
    pub libpam: &'a [std::path::PathBuf],
    /// The last poll before windows close at shutdown or a configuration
    /// change: a source holds nothing back.
    pub flush: bool,
}

impl<'a> Context<'a> {
    pub fn new(host: &'a HostFs, config: &'a Config) -> Context<'a> {
        Context { host, config, libpam: &[], flush: false }
    }
}

/// One item of a snapshot (a user, a socket, a device) or one user-space
/// event: its identity, which deltas and aggregation compare, and its payload.
#[derive(Debug, Clone, PartialEq)]
pub struct Item {
    /// Equal keys are the same item: what a delta calls "changed" when the
    /// payload differs, what an event window aggregates.
    pub key: String,
    pub payload: serde_json::Value,
}

impl Item {
    pub fn new(key: impl Into<String>, payload: &impl Serialize) -> Item {
        // Serializing plain structs of strings and numbers cannot fail.
        Item { key: key.into(), payload: serde_json::to_value(payload).expect("payload serializes") }
    }
}

/// A source (a file, a directory, a socket) a collector could not read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SourceFailure {
    pub source: String,
    pub reason: String,
}

/// What one snapshot found.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Taken {
    pub items: Vec<Item>,
    pub failures: Vec<SourceFailure>,
    /// Event sources: events lost before the poll (a full queue), counted.
    pub lost: u64,
}

impl Taken {
    pub fn push(&mut self, key: impl Into<String>, payload: &impl Serialize) {
        self.items.push(Item::new(key, payload));
    }

    /// Records a source that could not be read; the snapshot goes on.
    pub fn fail(&mut self, source: impl Into<String>, reason: impl std::fmt::Display) {
        self.failures.push(SourceFailure { source: source.into(), reason: reason.to_string() });
    }

    pub fn fail_host(&mut self, e: &crate::hostfs::HostError) {
        self.failures.push(e.into());
    }
}

impl From<&crate::hostfs::HostError> for SourceFailure {
    fn from(e: &crate::hostfs::HostError) -> SourceFailure {
        let reason = match e {
            crate::hostfs::HostError::Io { source, .. } => source.to_string(),
            other => other.to_string(),
        };
        SourceFailure { source: e.path().to_string(), reason }
    }
}

/// A collector of device state.
pub trait Snapshot {
    fn event_type(&self) -> EventType;
    /// Reads the state now. Never fails as a whole: what could not be read
    /// is a [`SourceFailure`], and the items found elsewhere still count.
    fn take(&mut self, cx: &Context<'_>) -> Taken;
}

/// A user-space source of events, polled without blocking at every drain.
pub trait EventSource {
    fn event_type(&self) -> EventType;
    /// Called once before the run loop: a source that follows files takes
    /// its starting point here, so that what happens after the agent said it
    /// is collecting is not mistaken for the past.
    fn start(&mut self, _cx: &Context<'_>) {}
    /// Events since the last poll; sources it could not read are failures.
    fn poll(&mut self, cx: &Context<'_>) -> Taken;
}

/// Every snapshot collector, in the order their snapshots are taken.
pub fn snapshot_collectors() -> Vec<Box<dyn Snapshot>> {
    vec![
        Box::new(system_information::SystemInformationCollector),
        Box::new(local_users::LocalUsers),
        Box::new(listening_ports::ListeningPorts),
        Box::new(connected_hardware::ConnectedHardware),
        Box::new(firewall::FirewallConfiguration),
        Box::new(sbom::Sbom),
        Box::new(os_baseline::OsBaseline::default()),
    ]
}

/// Every user-space event source. Sources that cannot start here (no
/// netlink socket, say) are left out with a warning by their constructor.
pub fn event_sources(pam: Option<Box<dyn login::pam::PamFeed>>) -> Vec<Box<dyn EventSource>> {
    let mut sources: Vec<Box<dyn EventSource>> =
        vec![Box::new(diagnostic::Diagnostics), Box::new(login::Login::new(pam))];
    sources.extend(connected_hardware::hotplug::Hotplug::open().map(|h| Box::new(h) as Box<dyn EventSource>));
    sources
}

/// Every user-space collector the run loop drives.
pub struct UserSpace {
    pub snapshots: snapshot::Snapshots,
    pub sources: Vec<Box<dyn EventSource>>,
}

impl UserSpace {
    /// Every collector; `pam` is the PAM programs' ring, when loaded.
    pub fn all(pam: Option<Box<dyn login::pam::PamFeed>>) -> UserSpace {
        UserSpace { snapshots: snapshot::Snapshots::new(snapshot_collectors()), sources: event_sources(pam) }
    }
}

/// The snapshot collectors that `--only` names, or all of them.
pub fn select(only: &[EventType]) -> Vec<Box<dyn Snapshot>> {
    snapshot_collectors().into_iter().filter(|c| only.is_empty() || only.contains(&c.event_type())).collect()
}
