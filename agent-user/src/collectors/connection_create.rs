//! ConnectionCreate: connections and flows, counted in the kernel per
//! 5-tuple with bytes in and out (agent-ebpf/src/net.rs), named from DNS
//! (net/); this is its payload.
use agent_common::Counter;
use serde::Serialize;

use crate::{
    drain::Counters,
    enrich::{rfc3339, BootClock},
    net::{appproto, ConnRecord, NetState},
    report::{commandline, NetworkLosses},
};

/// The kernel counters of its windows: seen, map full, insert race, rolled up.
pub const COUNTERS: [Counter; 4] =
    [Counter::ConnSeen, Counter::ConnMapFull, Counter::ConnRaceLost, Counter::ConnRolledUp];

/// What a closed window lost that is not a connection event (bytes, names,
/// namespaces), from its kernel counters and the DNS name cache; warned once
/// per kind.
pub fn network_losses(counters: &Counters, net: &mut NetState) -> NetworkLosses {
    let dns = net.take_dns_losses();
    if dns.unparsed > 0 {
        log::debug!("ConnectionCreate: {} DNS messages did not parse", dns.unparsed);
    }
    let losses = NetworkLosses {
        traffic_map_full: counters.get(Counter::TrafficMapFull),
        tcp_socket_unreadable: counters.get(Counter::TcpSocketUnreadable),
        dns_ring_full: counters.get(Counter::DnsRingFull),
        dns_cache_full: dns.cache_full,
        dns_unsolicited: dns.unsolicited,
        dns_queries_lost: counters.get(Counter::DnsQueryRingFull).saturating_add(dns.query_table_full),
        netns_unreadable: counters.get(Counter::NetReadFailed),
        commandline_lost: net.take_argv_lost(),
    };
    warn_network_losses(&losses);
    losses
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
    /// A rollup: connections pushed out of a full cache, ports 0 (README, Output).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub rollup: bool,
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
        rollup: r.rollup,
    }
}

/// One warning per kind of network loss in a window, naming what to raise.
fn warn_network_losses(l: &NetworkLosses) {
    for (n, what) in [
        (l.traffic_map_full, "packets or TCP calls found the kernel traffic map full; their bytes are in no record"),
        (l.tcp_socket_unreadable, "TCP send/receive calls had an unreadable socket; their bytes are in no record"),
        (l.dns_ring_full, "DNS answers found the ring buffer full; their names are unknown"),
        (l.dns_cache_full, "DNS names were pushed out of the full name cache; raise dnsCacheSizeConnectionCreate"),
        (l.dns_unsolicited, "DNS answers matched no query sent (5-tuple, id, question, 5 s); they named nothing"),
        (l.dns_queries_lost, "DNS queries could not be kept for matching; their answers name nothing"),
        (l.netns_unreadable, "socket namespace reads failed; those records have netns 0"),
        (l.commandline_lost, "records' owners had their command line pushed out of the kernel's ARGV map"),
    ] {
        if n > 0 {
            log::warn!("ConnectionCreate: {n} {what}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        aggregate::Aggregate,
        enrich::BootClock,
        report::{Payload, Window},
    };
    use std::time::{Duration, UNIX_EPOCH};

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
            rollup: false,
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
        let rollup = ConnRecord { rollup: true, ..r.clone() }.rolled_up().unwrap();
        let v = serde_json::to_value(connection_create(&rollup, BootClock::from_offset(0))).unwrap();
        assert_eq!(
            (v["rollup"].as_bool(), v["local_port"].as_u64(), v["remote_port"].as_u64()),
            (Some(true), Some(0), Some(0))
        );
        let mut unknown = r.clone();
        unknown.owner = Owner::default();
        assert_eq!(connection_create(&unknown, BootClock::from_offset(0)).commandline, "");
    }
}
