//! The message schema: turns window records into the event objects every
//! sink sends. Pure apart from the enrichment lookups it is handed.
use std::time::SystemTime;

use serde::Serialize;

pub use crate::collectors::{
    connection_create::ConnectionCreate, process_create::ProcessCreate, process_terminate::ProcessTerminate,
};
use crate::{
    aggregate::Evictions,
    enrich::{rfc3339, BootClock, UserNames},
    events::EventType,
};

/// One event as printed on stdout (one JSON line) or carried in an envelope.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Event {
    pub event_type: EventType,
    pub window_start: String,
    pub window_end: String,
    pub payload: Payload,
    /// Events of a snapshot say which snapshot they belong to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<SnapshotInfo>,
}

/// Which snapshot an event belongs to, and what that snapshot held, so
/// that an empty snapshot is not a missing one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SnapshotInfo {
    /// Counts the snapshots of this type since the agent started (1 is the first).
    pub sequence: u64,
    /// `full`: every item; `delta`: only what changed since the previous snapshot.
    pub mode: &'static str,
    /// Items in the whole set, whatever the mode.
    pub items: u64,
    /// Events this snapshot sent (at least one: an empty set or an
    /// unchanged delta sends one event with a null payload).
    pub events: u64,
    /// SHA-256 of the whole set, see `collectors::snapshot::digest`.
    pub digest: String,
    /// In a delta: `added`, `removed` (with the last payload seen) or `changed`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub change: Option<&'static str>,
    /// Sources that could not be read: the set may be incomplete.
    pub failed_sources: Vec<crate::collectors::SourceFailure>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Payload {
    ProcessCreate(ProcessCreate),
    ProcessTerminate(ProcessTerminate),
    ConnectionCreate(ConnectionCreate),
    DroppedEventsStatistics(DroppedEventsStatistics),
    ConfigurationError(ConfigurationError),
    ConfigurationChange(ConfigurationChange),
    /// The payload of a user-space collector (collectors/), made by its own
    /// typed struct; null for an empty snapshot.
    Collected(serde_json::Value),
}

impl Payload {
    /// The type of a payload that has only one; None for `Collected`.
    pub fn event_type(&self) -> Option<EventType> {
        Some(match self {
            Payload::ProcessCreate(_) => EventType::ProcessCreate,
            Payload::ProcessTerminate(_) => EventType::ProcessTerminate,
            Payload::ConnectionCreate(_) => EventType::ConnectionCreate,
            Payload::DroppedEventsStatistics(_) => EventType::DroppedEventsStatistics,
            Payload::ConfigurationError(_) => EventType::ConfigurationError,
            Payload::ConfigurationChange(_) => EventType::ConfigurationChange,
            Payload::Collected(_) => return None,
        })
    }

    /// The hit count an event carries, for drop accounting.
    pub fn hits(&self) -> u64 {
        match self {
            Payload::ProcessCreate(p) => p.hit_count,
            Payload::ProcessTerminate(p) => p.hit_count,
            Payload::ConnectionCreate(p) => p.hit_count,
            // A snapshot item is one event; a Diagnostic record carries its count.
            Payload::Collected(v) => v.get("hit_count").and_then(|h| h.as_u64()).unwrap_or(1),
            // One event: a drop is counted as one, like a record of hit_count 1.
            Payload::ConfigurationError(_) | Payload::ConfigurationChange(_) => 1,
            Payload::DroppedEventsStatistics(_) => 0,
        }
    }
}

/// Events that fired but are in no record, per source event type and window.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct DroppedEventsStatistics {
    pub source_event_type: EventType,
    /// Events the kernel saw in this window: the window's hit counts plus
    /// `dropped_events` add up to exactly this.
    pub events_seen: u64,
    /// Sum of the counts below: events with no record in any output.
    pub dropped_events: u64,
    /// Hits in no record after a full window cache pushed records out
    /// (oldest first): those not folded into a rollup, and those of rollups
    /// pushed out of the full rollup cache.
    pub cache_full: u64,
    /// Hits carried by this window's rollup records (part of the records' sum).
    pub rolled_up: u64,
    /// Of those, events the kernel folded into a rollup because its staging
    /// map was full (otherwise they would be in `kernel_map_full`).
    pub kernel_rolled_up: u64,
    /// Events whose new record did not fit in the kernel map between two drains.
    pub kernel_map_full: u64,
    /// Events whose record vanished between insert and update (not seen in practice).
    pub kernel_insert_race: u64,
    /// Records pushed out of a full window cache.
    pub records_evicted: u64,
    /// Rollup records pushed out of the full rollup cache.
    pub rollups_evicted: u64,
    /// Snapshot types: sources that could not be read (named in the
    /// snapshot's `failed_sources`). Not events: not in dropped_events.
    pub sources_unreadable: u64,
    /// Not part of this window's identity: events of this type (records, of
    /// any earlier window) dropped from the full local MQTT cache since the
    /// previous DroppedEventsStatistics of this type.
    pub transport_cache_full: u64,
    /// The hit counts those dropped records carried.
    pub transport_cache_full_hits: u64,
    /// Not part of this window's identity: records of this type found
    /// unreadable (truncated, corrupt, invalid) in the `--spool-dir` journal
    /// at start and lost; records of unknown type count in the first
    /// DroppedEventsStatistics after the start, whatever its type.
    pub spool_records_lost: u64,
    /// ConnectionCreate only: what was lost that is not an event.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub network: Option<NetworkLosses>,
}

/// Losses of the network collector that are not connection events, so
/// not part of `events_seen`: bytes, names and namespaces. Counted in the
/// window like the events.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct NetworkLosses {
    /// Packets (UDP, ICMP; TCP per packet) or TCP send/receive calls whose
    /// bytes found the kernel traffic map full: those bytes are in no record.
    pub traffic_map_full: u64,
    /// TCP send/receive calls whose socket could not be read: bytes in no record.
    pub tcp_socket_unreadable: u64,
    /// Received DNS answers not copied because the ring buffer was full: their names are unknown.
    pub dns_ring_full: u64,
    /// Names pushed out of the full DNS name cache (dnsCacheSizeConnectionCreate).
    pub dns_cache_full: u64,
    /// DNS answers received that answer no query this device sent (same
    /// 5-tuple and namespace, transaction id and question, within 5 s):
    /// they named nothing. Spoofing attempts, or answers arriving too late.
    pub dns_unsolicited: u64,
    /// DNS queries sent that could not be kept for matching (ring buffer
    /// full, or more than 1024 waiting): their answers name nothing and
    /// count in `dns_unsolicited`.
    pub dns_queries_lost: u64,
    /// Records whose network namespace could not be read (reported as netns 0).
    pub netns_unreadable: u64,
    /// Connection records whose owner's command line was pushed out of the
    /// kernel's ARGV map (1024 processes) before the agent read it: reported
    /// with the owner's comm alone.
    pub commandline_lost: u64,
}

/// A desired configuration that was refused (seed 004: "Agent failed to
/// parse the configuration").
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConfigurationError {
    /// Where the configuration came from (the desired topic).
    pub source: String,
    /// The first bad properties and why (at most config::ERRORS_SHOWN_MAX);
    /// the current configuration stays.
    pub errors: Vec<ConfigurationFieldError>,
    /// How many problems were found, `errors` included.
    pub error_count: usize,
}

impl From<crate::config::ConfigError> for ConfigurationError {
    fn from(e: crate::config::ConfigError) -> Self {
        ConfigurationError {
            source: e.source_name,
            errors: e
                .errors
                .into_iter()
                .map(|f| ConfigurationFieldError { field: f.field, reason: f.reason })
                .collect(),
            error_count: e.total,
        }
    }
}

/// A configuration change that was applied: every property whose effective
/// value changed. Cannot be switched off.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConfigurationChange {
    /// Where the new configuration came from.
    pub source: String,
    pub changes: Vec<ConfigurationChangeItem>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConfigurationChangeItem {
    pub property: String,
    pub from: serde_json::Value,
    pub to: serde_json::Value,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConfigurationFieldError {
    pub field: String,
    pub reason: String,
}

/// What one window (or one snapshot) of one event type lost, whatever
/// collected it: the general record DroppedEventsStatistics is made from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Losses {
    /// Events (or snapshot items) seen.
    pub seen: u64,
    /// Records pushed out of the full window cache, or items past a snapshot's bound.
    pub evicted: Evictions,
    pub kernel_map_full: u64,
    /// Events the kernel folded into its rollup map (already in the records).
    pub kernel_rolled_up: u64,
    pub kernel_insert_race: u64,
    pub sources_unreadable: u64,
}

impl DroppedEventsStatistics {
    pub fn new(source: EventType, l: Losses) -> Self {
        DroppedEventsStatistics {
            source_event_type: source,
            events_seen: l.seen,
            dropped_events: l.evicted.hits.saturating_add(l.kernel_map_full).saturating_add(l.kernel_insert_race),
            cache_full: l.evicted.hits,
            rolled_up: l.evicted.rolled_up,
            kernel_rolled_up: l.kernel_rolled_up,
            kernel_map_full: l.kernel_map_full,
            kernel_insert_race: l.kernel_insert_race,
            records_evicted: l.evicted.records,
            rollups_evicted: l.evicted.rollups_evicted,
            sources_unreadable: l.sources_unreadable,
            transport_cache_full: 0,
            transport_cache_full_hits: 0,
            spool_records_lost: 0,
            network: None,
        }
    }
}

impl Default for EventType {
    /// For `DroppedEventsStatistics::default()` in tests and struct updates.
    fn default() -> Self {
        EventType::DroppedEventsStatistics
    }
}

/// The time window an event covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub start: SystemTime,
    pub end: SystemTime,
}

/// What the conversions need besides the record.
pub struct Enrichment<'a> {
    pub users: &'a mut UserNames,
    pub clock: BootClock,
}

impl Window {
    /// An event of a payload type that names its event type.
    pub fn event(&self, payload: Payload) -> Event {
        let t = payload.event_type().expect("Collected payloads go through Window::collected");
        self.typed(t, payload)
    }

    /// An event of a user-space collector of type `t`.
    pub fn collected(&self, t: EventType, payload: serde_json::Value) -> Event {
        self.typed(t, Payload::Collected(payload))
    }

    fn typed(&self, event_type: EventType, payload: Payload) -> Event {
        Event { event_type, window_start: rfc3339(self.start), window_end: rfc3339(self.end), payload, snapshot: None }
    }
}

/// argv as laid out in memory (NUL after each argument) to one line.
pub fn commandline(argv: &[u8], comm: &str) -> String {
    let trimmed = match argv.iter().rposition(|&b| b != 0) {
        Some(last) => &argv[..=last],
        None => return format!("[{comm}]"),
    };
    let joined: Vec<u8> = trimmed.iter().map(|&b| if b == 0 { b' ' } else { b }).collect();
    String::from_utf8_lossy(&joined).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    /// Whatever the document, a ConfigurationError fits the smallest message
    /// (maxMessageSizeInBytes is larger than 8192) with room for the envelope.
    #[test]
    fn the_largest_configuration_error_fits_the_smallest_message() {
        use crate::config::{ConfigError, FieldError};
        // Every character of a key escapes to \u{..} in the log and then to
        // JSON's \\u{..}: the worst case for the bound.
        let key: String = "\u{1}".repeat(10_000);
        let errors = (0..5000).map(|_| FieldError { field: key.clone(), reason: key.clone() }).collect();
        let e = ConfigError::new(&"s".repeat(300), errors);
        let w = Window { start: UNIX_EPOCH, end: UNIX_EPOCH };
        let event = w.event(Payload::ConfigurationError(ConfigurationError::from(e)));
        let v = serde_json::to_value(&event).unwrap();
        assert_eq!(v["payload"]["error_count"], 5000);
        let shown = v["payload"]["errors"].as_array().unwrap().len();
        assert!((1..=crate::config::ERRORS_SHOWN_MAX).contains(&shown), "{shown}");
        let n = serde_json::to_vec(&event).unwrap().len();
        assert!(n < 8192 - 512, "{n} bytes");
    }

    #[test]
    fn commandline_joins_argv() {
        assert_eq!(commandline(b"ls\0-l\0/tmp\0", "ls"), "ls -l /tmp");
        assert_eq!(commandline(b"sh\0-c\0echo a\0\0\0", "sh"), "sh -c echo a");
        assert_eq!(commandline(b"cut-off", "x"), "cut-off");
        assert_eq!(commandline(b"", "kworker/0:1"), "[kworker/0:1]");
        assert_eq!(commandline(b"\xff\0", "x"), "\u{fffd}");
    }

    #[test]
    fn dropped_statistics_sum() {
        let losses = Losses {
            seen: 20,
            evicted: Evictions { records: 2, hits: 5, rolled_up: 6, rollups_evicted: 1 },
            kernel_map_full: 3,
            kernel_rolled_up: 2,
            kernel_insert_race: 1,
            sources_unreadable: 4,
        };
        let d = DroppedEventsStatistics::new(EventType::ProcessCreate, losses);
        assert_eq!(d.dropped_events, 9, "rolled-up hits are in records, not dropped");
        assert_eq!((d.rolled_up, d.kernel_rolled_up, d.rollups_evicted), (6, 2, 1));
        let v = serde_json::to_value(&d).unwrap();
        assert_eq!(v["source_event_type"], "ProcessCreate");
        assert_eq!(v["records_evicted"], 2);
        assert_eq!(v["sources_unreadable"], 4, "a source is not an event: not in dropped_events");
        assert!(v.get("traffic_map_full").is_none(), "no network fields outside ConnectionCreate");
    }

    #[test]
    fn network_losses_are_flat_fields_outside_the_event_identity() {
        let mut d = DroppedEventsStatistics::new(EventType::ConnectionCreate, Losses { seen: 4, ..Default::default() });
        d.network =
            Some(NetworkLosses { traffic_map_full: 7, dns_cache_full: 2, dns_unsolicited: 3, ..Default::default() });
        let v = serde_json::to_value(&d).unwrap();
        assert_eq!((v["traffic_map_full"].as_u64(), v["dns_cache_full"].as_u64()), (Some(7), Some(2)));
        assert_eq!((v["dns_unsolicited"].as_u64(), v["dns_queries_lost"].as_u64()), (Some(3), Some(0)));
        assert_eq!(v["dns_ring_full"], 0);
        assert_eq!(v["dropped_events"], 0, "bytes and names are not events");
    }
}
