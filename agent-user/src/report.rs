//! The message schema: turns window records into the event objects every
//! sink sends. Pure apart from the enrichment lookups it is handed.
use std::time::SystemTime;

use serde::Serialize;

use crate::{
    aggregate::{Evictions, ProcessKind, ProcessRecord, TerminateRecord},
    enrich::{rfc3339, BootClock, UserNames},
    net::{appproto, ConnRecord},
};

/// One event as printed on stdout (one JSON line) or carried in an envelope.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Event {
    pub event_type: &'static str,
    pub window_start: String,
    pub window_end: String,
    pub payload: Payload,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Payload {
    ProcessCreate(ProcessCreate),
    ProcessTerminate(ProcessTerminate),
    ConnectionCreate(ConnectionCreate),
    DroppedEventsStatistics(DroppedEventsStatistics),
    ConfigurationError(ConfigurationError),
}

impl Payload {
    pub fn event_type(&self) -> &'static str {
        match self {
            Payload::ProcessCreate(_) => "ProcessCreate",
            Payload::ProcessTerminate(_) => "ProcessTerminate",
            Payload::ConnectionCreate(_) => "ConnectionCreate",
            Payload::DroppedEventsStatistics(_) => "DroppedEventsStatistics",
            Payload::ConfigurationError(_) => "ConfigurationError",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProcessCreate {
    /// First time this command line was seen in the window.
    pub timestamp: String,
    /// argv joined by spaces; `[comm]` for tasks without user memory.
    pub commandline: String,
    pub executable: String,
    pub uid: u32,
    pub user_name: Option<String>,
    pub process_id: u32,
    pub parent_process_id: u32,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub hit_count: u64,
    pub truncated: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProcessTerminate {
    pub timestamp: String,
    pub executable: String,
    /// The exit code, or 128 + signal for a process killed by a signal.
    pub exit_status: u32,
    /// The signal that killed the process, if one did.
    pub signal: Option<u32>,
    pub process_id: u32,
    pub hit_count: u64,
}

/// A network connection record: identical when the 5-tuple (and network
/// namespace) is identical (seed 002).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ConnectionCreate {
    pub local_address: String,
    pub local_port: u16,
    pub remote_address: String,
    pub remote_port: u16,
    /// `TCP`, `UDP` or `ICMP`.
    pub transport_protocol: &'static str,
    /// `in` or `out`, of the first occurrence.
    pub direction: &'static str,
    /// Payload bytes received (L4 payload, see README).
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// Connections (TCP) or new flows (UDP, ICMP) in the window; 0 for a
    /// connection that only carried bytes in this window.
    pub hit_count: u64,
    /// First time seen in the window.
    pub timestamp: String,
    pub application_protocol: Option<&'static str>,
    pub host_name: Option<String>,
    /// DNS queries sent on this 5-tuple.
    pub dns_hit_count: u64,
    pub process_id: u32,
    pub uid: u32,
    pub commandline: String,
    /// Inode of the network namespace (as in /proc/PID/ns/net).
    pub netns: u32,
}

/// Events that fired but are in no record, per source event type and window.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct DroppedEventsStatistics {
    pub source_event_type: &'static str,
    /// Events the kernel saw in this window: the window's hit counts plus
    /// `dropped_events` add up to exactly this.
    pub events_seen: u64,
    /// Sum of the counts below: events with no record in any output.
    pub dropped_events: u64,
    /// Hits of records pushed out of a full window cache (oldest first).
    pub cache_full: u64,
    /// Events whose new record did not fit in the kernel map between two drains.
    pub kernel_map_full: u64,
    /// Events whose record vanished between insert and update (not seen in practice).
    pub kernel_insert_race: u64,
    /// Records pushed out of a full window cache.
    pub records_evicted: u64,
    /// Not part of this window's identity: events of this type (records, of
    /// any earlier window) dropped from the full local MQTT cache since the
    /// previous DroppedEventsStatistics of this type.
    pub transport_cache_full: u64,
    /// The hit counts those dropped records carried.
    pub transport_cache_full_hits: u64,
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
}

/// A desired configuration that was refused (seed 004: "Agent failed to
/// parse the configuration").
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConfigurationError {
    /// Where the configuration came from (the desired topic).
    pub source: String,
    /// Every bad property and why; the current configuration stays.
    pub errors: Vec<ConfigurationFieldError>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConfigurationFieldError {
    pub field: String,
    pub reason: String,
}

impl DroppedEventsStatistics {
    pub fn new(
        source: &'static str,
        events_seen: u64,
        evicted: Evictions,
        kernel_map_full: u64,
        kernel_insert_race: u64,
    ) -> Self {
        DroppedEventsStatistics {
            source_event_type: source,
            events_seen,
            dropped_events: evicted.hits + kernel_map_full + kernel_insert_race,
            cache_full: evicted.hits,
            kernel_map_full,
            kernel_insert_race,
            records_evicted: evicted.records,
            transport_cache_full: 0,
            transport_cache_full_hits: 0,
            network: None,
        }
    }
}

/// The time window an event covers.
#[derive(Debug, Clone, Copy)]
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
    pub fn event(&self, payload: Payload) -> Event {
        Event {
            event_type: payload.event_type(),
            window_start: rfc3339(self.start),
            window_end: rfc3339(self.end),
            payload,
        }
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

pub fn process_create(r: &ProcessRecord, e: &mut Enrichment<'_>) -> ProcessCreate {
    ProcessCreate {
        timestamp: rfc3339(e.clock.to_wall(r.first_seen_ns)),
        commandline: commandline(&r.argv, &r.comm),
        executable: r.executable.clone(),
        uid: r.uid,
        user_name: e.users.name(r.uid),
        process_id: r.pid,
        parent_process_id: r.ppid,
        kind: match r.kind {
            ProcessKind::Exec => "exec",
            ProcessKind::Fork => "fork",
        },
        hit_count: r.hit_count,
        truncated: r.truncated,
    }
}

pub fn connection_create(r: &ConnRecord, clock: BootClock) -> ConnectionCreate {
    let t = &r.tuple;
    let commandline = if r.owner.argv.is_empty() && r.owner.comm.is_empty() {
        String::new() // owner unknown: a kernel socket, or created before the agent started
    } else {
        commandline(&r.owner.argv, &r.owner.comm)
    };
    ConnectionCreate {
        local_address: t.local.to_string(),
        local_port: t.local_port,
        remote_address: t.remote.to_string(),
        remote_port: t.remote_port,
        transport_protocol: t.transport.name(),
        direction: r.direction.name(),
        bytes_in: r.bytes_in,
        bytes_out: r.bytes_out,
        hit_count: r.hit_count,
        timestamp: rfc3339(clock.to_wall(r.first_seen_ns)),
        application_protocol: appproto::classify(t.transport, r.direction, t.local_port, t.remote_port, &r.head),
        host_name: r.host_name.clone(),
        dns_hit_count: r.dns_queries,
        process_id: r.owner.pid,
        uid: r.owner.uid,
        commandline,
        netns: t.netns,
    }
}

/// Splits a wait status (`task_struct.exit_code`) into exit status and signal.
pub fn exit_status(code: u32) -> (u32, Option<u32>) {
    match code & 0x7f {
        0 => ((code >> 8) & 0xff, None),
        sig => (128 + sig, Some(sig)),
    }
}

pub fn process_terminate(r: &TerminateRecord, clock: BootClock) -> ProcessTerminate {
    let (exit_status, signal) = exit_status(r.exit_code);
    ProcessTerminate {
        timestamp: rfc3339(clock.to_wall(r.first_seen_ns)),
        executable: r.executable.clone(),
        exit_status,
        signal,
        process_id: r.pid,
        hit_count: r.hit_count,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn commandline_joins_argv() {
        assert_eq!(commandline(b"ls\0-l\0/tmp\0", "ls"), "ls -l /tmp");
        assert_eq!(commandline(b"sh\0-c\0echo a\0\0\0", "sh"), "sh -c echo a");
        assert_eq!(commandline(b"cut-off", "x"), "cut-off");
        assert_eq!(commandline(b"", "kworker/0:1"), "[kworker/0:1]");
        assert_eq!(commandline(b"\xff\0", "x"), "\u{fffd}");
    }

    #[test]
    fn exit_status_decodes_wait_status() {
        assert_eq!(exit_status(0), (0, None));
        assert_eq!(exit_status(3 << 8), (3, None));
        assert_eq!(exit_status(9), (137, Some(9)));
        assert_eq!(exit_status(15 | 0x80), (143, Some(15)), "core dump bit ignored");
    }

    #[test]
    fn process_create_schema() {
        let mut users = UserNames::new("/nonexistent".into());
        let mut e = Enrichment { users: &mut users, clock: BootClock::from_offset(0) };
        let r = ProcessRecord {
            kind: ProcessKind::Fork,
            uid: 4242,
            argv: b"a\0b\0".to_vec(),
            truncated: true,
            event_pid: 0,
            nonce: 0,
            hit_count: 7,
            first_seen_ns: 2_000_000_000,
            pid: 10,
            ppid: 9,
            executable: "/bin/a".into(),
            comm: "a".into(),
        };
        let w = Window { start: UNIX_EPOCH, end: UNIX_EPOCH + Duration::from_secs(60) };
        let v = serde_json::to_value(w.event(Payload::ProcessCreate(process_create(&r, &mut e)))).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "event_type": "ProcessCreate",
                "window_start": "1970-01-01T00:00:00.000Z",
                "window_end": "1970-01-01T00:01:00.000Z",
                "payload": {
                    "timestamp": "1970-01-01T00:00:02.000Z",
                    "commandline": "a b",
                    "executable": "/bin/a",
                    "uid": 4242,
                    "user_name": null,
                    "process_id": 10,
                    "parent_process_id": 9,
                    "type": "fork",
                    "hit_count": 7,
                    "truncated": true
                }
            })
        );
    }

    #[test]
    fn connection_create_schema() {
        use crate::net::{Direction, Owner, Transport, Tuple};
        let r = ConnRecord {
            tuple: Tuple {
                netns: 4026531840,
                transport: Transport::Tcp,
                local: "fd00::1".parse().unwrap(),
                local_port: 40000,
                remote: "fd00::2".parse().unwrap(),
                remote_port: 443,
            },
            nonce: 0,
            direction: Direction::Out,
            hit_count: 2,
            first_seen_ns: 3_000_000_000,
            owner: Owner { pid: 10, uid: 1000, argv: b"curl\0https://x\0".to_vec(), comm: "curl".into() },
            bytes_in: 5000,
            bytes_out: 300,
            dns_queries: 0,
            head: vec![0x16, 0x03, 0x01, 0x02, 0, 0, 0, 0],
            host_name: Some("x".into()),
        };
        let w = Window { start: UNIX_EPOCH, end: UNIX_EPOCH + Duration::from_secs(60) };
        let v =
            serde_json::to_value(w.event(Payload::ConnectionCreate(connection_create(&r, BootClock::from_offset(0)))))
                .unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "event_type": "ConnectionCreate",
                "window_start": "1970-01-01T00:00:00.000Z",
                "window_end": "1970-01-01T00:01:00.000Z",
                "payload": {
                    "local_address": "fd00::1", "local_port": 40000,
                    "remote_address": "fd00::2", "remote_port": 443,
                    "transport_protocol": "TCP", "direction": "out",
                    "bytes_in": 5000, "bytes_out": 300, "hit_count": 2,
                    "timestamp": "1970-01-01T00:00:03.000Z",
                    "application_protocol": "TLS", "host_name": "x", "dns_hit_count": 0,
                    "process_id": 10, "uid": 1000, "commandline": "curl https://x",
                    "netns": 4026531840u32
                }
            })
        );
        let mut unknown = r.clone();
        unknown.owner = Owner::default();
        assert_eq!(connection_create(&unknown, BootClock::from_offset(0)).commandline, "");
    }

    #[test]
    fn dropped_statistics_sum() {
        let d = DroppedEventsStatistics::new("ProcessCreate", 20, Evictions { records: 2, hits: 5 }, 3, 1);
        assert_eq!(d.dropped_events, 9);
        let v = serde_json::to_value(&d).unwrap();
        assert_eq!(v["source_event_type"], "ProcessCreate");
        assert_eq!(v["records_evicted"], 2);
        assert!(v.get("traffic_map_full").is_none(), "no network fields outside ConnectionCreate");
    }

    #[test]
    fn network_losses_are_flat_fields_outside_the_event_identity() {
        let mut d = DroppedEventsStatistics::new("ConnectionCreate", 4, Evictions::default(), 0, 0);
        d.network =
            Some(NetworkLosses { traffic_map_full: 7, dns_cache_full: 2, dns_unsolicited: 3, ..Default::default() });
        let v = serde_json::to_value(&d).unwrap();
        assert_eq!((v["traffic_map_full"].as_u64(), v["dns_cache_full"].as_u64()), (Some(7), Some(2)));
        assert_eq!((v["dns_unsolicited"].as_u64(), v["dns_queries_lost"].as_u64()), (Some(3), Some(0)));
        assert_eq!(v["dns_ring_full"], 0);
        assert_eq!(v["dropped_events"], 0, "bytes and names are not events");
    }
}
