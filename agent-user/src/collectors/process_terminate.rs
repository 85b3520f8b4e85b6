//! ProcessTerminate: process exits, counted in the kernel per executable +
//! exit status; this is its payload.
use agent_common::Counter;
use serde::Serialize;

use crate::{
    aggregate::TerminateRecord,
    enrich::{rfc3339, BootClock},
};

/// The kernel counters of its windows: seen, map full, insert race, rolled up.
pub const COUNTERS: [Counter; 4] =
    [Counter::ExitSeen, Counter::ExitMapFull, Counter::ExitRaceLost, Counter::ExitRolledUp];

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
    /// A rollup: exits pushed out of a full cache, per executable and signal (README, Output).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub rollup: bool,
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
        rollup: r.rollup,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_status_decodes_wait_status() {
        assert_eq!(exit_status(0), (0, None));
        assert_eq!(exit_status(3 << 8), (3, None));
        assert_eq!(exit_status(9), (137, Some(9)));
        assert_eq!(exit_status(15 | 0x80), (143, Some(15)), "core dump bit ignored");
    }
}
