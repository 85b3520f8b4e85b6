//! ProcessCreate: exec and fork, counted in the kernel per command line +
//! uid + type (agent-ebpf/src/process.rs), drained and aggregated per window
//! (collectors::kernel); this is its payload.
use agent_common::Counter;
use serde::Serialize;

use crate::{
    aggregate::{ProcessKind, ProcessRecord},
    enrich::rfc3339,
    report::{commandline, Enrichment},
};

/// The kernel counters of its windows: seen, map full, insert race, rolled up.
pub const COUNTERS: [Counter; 4] =
    [Counter::ProcSeen, Counter::ProcMapFull, Counter::ProcRaceLost, Counter::ProcRolledUp];

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
    /// A rollup: records pushed out of a full cache, per executable (README, Output).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub rollup: bool,
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
        rollup: r.rollup,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        enrich::{BootClock, UserNames},
        report::{Enrichment, Payload, Window},
    };
    use std::time::{Duration, UNIX_EPOCH};

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
            rollup: false,
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
}
