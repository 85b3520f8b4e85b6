//! Diagnostic: the agent's own warnings and errors as events (seed 004:
//! "Diagnostic", default Off), as the legacy agent teed its logger into a
//! collector. The logger installed by `main` hands every warning and error
//! to a bounded queue here; the run loop polls it at each drain and
//! aggregates identical messages per window (collectors::window).
use std::{
    collections::VecDeque,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Mutex,
    },
};

use serde::Serialize;

use super::{Context, EventSource, Taken};
use crate::events::EventType;

/// Messages held between two polls; past it they are counted, not kept.
pub const QUEUE_MAX: usize = 1024;
/// Longest message kept, in bytes (cut at a character boundary).
pub const MESSAGE_MAX: usize = 1024;

static QUEUE: Mutex<VecDeque<Diagnostic>> = Mutex::new(VecDeque::new());
static LOST: AtomicU64 = AtomicU64::new(0);
/// Set while Diagnostic is collected, so that an agent with it Off keeps no queue.
// On until the first poll reads the configuration, so that warnings of the
// start-up (before the run loop) are not lost.
static ENABLED: AtomicBool = AtomicBool::new(true);

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Diagnostic {
    pub message: String,
    /// `Warning` or `Error`.
    pub severity: &'static str,
    /// The module that logged it (`agent_user::agent`, ...).
    pub target: String,
}

impl Diagnostic {
    pub fn from_record(record: &log::Record<'_>) -> Option<Diagnostic> {
        let severity = match record.level() {
            log::Level::Error => "Error",
            log::Level::Warn => "Warning",
            _ => return None,
        };
        let mut message = record.args().to_string();
        if message.len() > MESSAGE_MAX {
            let mut end = MESSAGE_MAX;
            while !message.is_char_boundary(end) {
                end -= 1;
            }
            message.truncate(end);
        }
        Some(Diagnostic { message, severity, target: record.target().to_string() })
    }
}

/// Called by the logger for every record it prints.
pub fn record(r: &log::Record<'_>) {
    if !ENABLED.load(Ordering::Relaxed) {
        return;
    }
    let Some(d) = Diagnostic::from_record(r) else { return };
    // A poisoned lock means a panic mid-push; the queue is still consistent.
    let mut q = QUEUE.lock().unwrap_or_else(|e| e.into_inner());
    if q.len() >= QUEUE_MAX {
        LOST.fetch_add(1, Ordering::Relaxed);
    } else {
        q.push_back(d);
    }
}

/// The logger: prints through `inner` and feeds the Diagnostic queue.
pub struct TeeLogger<L: log::Log> {
    pub inner: L,
}

impl<L: log::Log> log::Log for TeeLogger<L> {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        self.inner.enabled(metadata) || metadata.level() <= log::Level::Warn
    }
    fn log(&self, record: &log::Record<'_>) {
        // rumqttc's records can carry packets: never into events.
        if !record.target().starts_with("rumqttc") {
            self::record(record);
        }
        if self.inner.enabled(record.metadata()) {
            self.inner.log(record);
        }
    }
    fn flush(&self) {
        self.inner.flush()
    }
}

pub struct Diagnostics;

impl EventSource for Diagnostics {
    fn event_type(&self) -> EventType {
        EventType::Diagnostic
    }

    fn poll(&mut self, cx: &Context<'_>) -> Taken {
        ENABLED.store(cx.config.collects(EventType::Diagnostic), Ordering::Relaxed);
        let drained: Vec<Diagnostic> = QUEUE.lock().unwrap_or_else(|e| e.into_inner()).drain(..).collect();
        let mut taken = Taken { lost: LOST.swap(0, Ordering::Relaxed), ..Taken::default() };
        for d in drained {
            taken.push(format!("{}\0{}\0{}", d.severity, d.target, d.message), &d);
        }
        taken
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warnings_and_errors_become_diagnostics_and_long_ones_are_cut() {
        let long = "é".repeat(MESSAGE_MAX);
        let args = format_args!("{long}");
        let r = log::Record::builder().level(log::Level::Warn).target("agent_user::agent").args(args).build();
        let d = Diagnostic::from_record(&r).unwrap();
        assert_eq!((d.severity, d.target.as_str()), ("Warning", "agent_user::agent"));
        assert!(d.message.len() <= MESSAGE_MAX && d.message.len() >= MESSAGE_MAX - 1);
        let info = log::Record::builder().level(log::Level::Info).args(format_args!("x")).build();
        assert_eq!(Diagnostic::from_record(&info), None, "info is not a diagnostic");
    }
}
