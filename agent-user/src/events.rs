//! The event types of seed 004's table, plus SBoM: one row each, from which
//! names, configuration properties (`eventPriority{Name}`), default
//! priorities and kinds come. Nothing else in the agent spells an event
//! type's name.
use serde::Serialize;

use crate::config::Priority;

/// How a type's events come to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Counted in the kernel, drained and aggregated per window with a hit count.
    Aggregated,
    /// Seen one at a time in user space (a log line, a uevent), aggregated per window.
    Event,
    /// The state of the device, taken at start and every snapshotFrequency.
    Snapshot,
    /// About the agent itself (configuration, losses).
    Internal,
}

/// One row of the table.
#[derive(Debug, Clone, Copy)]
pub struct Row {
    pub event_type: EventType,
    pub name: &'static str,
    pub default_priority: Priority,
    pub kind: Kind,
    /// Whether `eventPriority{Name}` exists: an internal type that must
    /// never be silenced (ConfigurationChange) has none and is never Off.
    pub configurable: bool,
}

/// Every event type, collected or not.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum EventType {
    Diagnostic,
    ConfigurationError,
    DroppedEventsStatistics,
    ConnectedHardware,
    ListeningPorts,
    ProcessCreate,
    ProcessTerminate,
    SystemInformation,
    LocalUsers,
    Login,
    ConnectionCreate,
    FirewallConfiguration,
    OSBaseline,
    SBoM,
    ConfigurationChange,
}

const fn row(event_type: EventType, name: &'static str, default_priority: Priority, kind: Kind) -> Row {
    Row { event_type, name, default_priority, kind, configurable: true }
}

/// Seed 004's table in its order, then SBoM (seed 002's "SBoM (trigger
/// based)", which seed 004 does not list: Low, snapshot, like OSBaseline).
/// Seed 004's defaults, except that the micro agent (seeds 001/002) makes
/// Medium the default of the event-based process and network collectors.
/// DroppedEventsStatistics is a snapshot in seed 004; here it is sent with
/// every window, whose identity it carries, so it is internal.
/// ConfigurationChange is this agent's own: every applied configuration
/// change, which no configuration may switch off (a remote one could
/// otherwise blind the agent without a trace).
pub const TABLE: [Row; 15] = {
    use EventType::*;
    use Kind::*;
    use Priority::*;
    [
        row(Diagnostic, "Diagnostic", Off, Event),
        row(ConfigurationError, "ConfigurationError", Low, Internal),
        row(DroppedEventsStatistics, "DroppedEventsStatistics", Low, Internal),
        row(ConnectedHardware, "ConnectedHardware", Low, Snapshot),
        row(ListeningPorts, "ListeningPorts", High, Snapshot),
        row(ProcessCreate, "ProcessCreate", Medium, Aggregated),
        row(ProcessTerminate, "ProcessTerminate", Low, Aggregated),
        row(SystemInformation, "SystemInformation", Low, Snapshot),
        row(LocalUsers, "LocalUsers", High, Snapshot),
        row(Login, "Login", High, Event),
        row(ConnectionCreate, "ConnectionCreate", Medium, Aggregated),
        row(FirewallConfiguration, "FirewallConfiguration", Low, Snapshot),
        row(OSBaseline, "OSBaseline", Low, Snapshot),
        row(SBoM, "SBoM", Low, Snapshot),
        Row { configurable: false, ..row(ConfigurationChange, "ConfigurationChange", High, Internal) },
    ]
};

impl EventType {
    pub const ALL: [EventType; TABLE.len()] = {
        let mut all = [EventType::Diagnostic; TABLE.len()];
        let mut i = 0;
        while i < TABLE.len() {
            all[i] = TABLE[i].event_type;
            i += 1;
        }
        all
    };

    pub fn row(self) -> &'static Row {
        &TABLE[self as usize]
    }

    pub fn name(self) -> &'static str {
        self.row().name
    }

    pub fn from_name(name: &str) -> Option<EventType> {
        TABLE.iter().find(|r| r.name == name).map(|r| r.event_type)
    }

    pub fn default_priority(self) -> Priority {
        self.row().default_priority
    }

    pub fn kind(self) -> Kind {
        self.row().kind
    }

    pub fn is_snapshot(self) -> bool {
        self.kind() == Kind::Snapshot
    }

    /// The configuration property holding this type's priority, if it has one.
    pub fn priority_property(self) -> Option<String> {
        self.row().configurable.then(|| format!("eventPriority{}", self.name()))
    }

    /// The types whose priority a configuration sets.
    pub fn configurable() -> impl Iterator<Item = EventType> {
        EventType::ALL.into_iter().filter(|t| t.row().configurable)
    }
}

impl Serialize for EventType {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

impl std::fmt::Display for EventType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_rows_sit_at_their_discriminant() {
        for (i, r) in TABLE.iter().enumerate() {
            assert_eq!(r.event_type as usize, i, "{}", r.name);
            assert_eq!(EventType::from_name(r.name), Some(r.event_type));
            assert_eq!(format!("{:?}", r.event_type), r.name, "the name is the variant's");
        }
        assert_eq!(EventType::from_name("processcreate"), None, "names are exact");
    }

    #[test]
    fn seed_004_defaults_and_kinds() {
        assert_eq!(EventType::Diagnostic.default_priority(), Priority::Off);
        assert_eq!(EventType::LocalUsers.default_priority(), Priority::High);
        assert_eq!(EventType::SBoM.default_priority(), Priority::Low);
        assert!(EventType::SBoM.is_snapshot() && EventType::ListeningPorts.is_snapshot());
        assert!(!EventType::Login.is_snapshot());
        assert_eq!(EventType::OSBaseline.priority_property().as_deref(), Some("eventPriorityOSBaseline"));
        assert_eq!(EventType::ConfigurationChange.priority_property(), None, "never silenced");
        assert_eq!(serde_json::to_value(EventType::SBoM).unwrap(), "SBoM");
    }
}
