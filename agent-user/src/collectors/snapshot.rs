//! The periodic adapter every snapshot collector runs in: when a snapshot
//! is due (at start, every snapshotFrequency, right after a configuration
//! change), what it sends (one event per item, or per change with
//! snapshotDeltas), and its DroppedEventsStatistics.
use std::{
    collections::BTreeMap,
    time::{Duration, Instant, SystemTime},
};

use sha2::{Digest, Sha256};

use super::{Context, Snapshot, Taken};
use crate::{
    aggregate::Evictions,
    config::SnapshotSettings,
    events::EventType,
    report::{Event, Losses, SnapshotInfo, Window},
};

/// Most items one snapshot sends; past it they are counted as cache_full
/// (a host with a million sockets is one under attack).
pub const MAX_ITEMS: usize = 65_536;

/// What a snapshot remembers of the previous one, for deltas.
#[derive(Debug, Default, Clone)]
pub struct History {
    sequence: u64,
    /// The last set sent in full or rebuilt from deltas, by key; kept only
    /// while deltas are on (without them it is never read, and an SBoM's
    /// set is most of the agent's heap between snapshots).
    previous: Option<BTreeMap<String, serde_json::Value>>,
    /// Snapshots since the last full one.
    since_full: u32,
}

/// The events of one snapshot and what it lost.
#[derive(Debug, Clone, PartialEq)]
pub struct Sent {
    pub window: Window,
    pub events: Vec<Event>,
    pub losses: Losses,
}

/// The digest of a whole set, so a consumer applying deltas can tell it is
/// in step: SHA-256 over the items sorted by key, each as the key, a NUL,
/// the payload as compact JSON with sorted object keys, and a newline.
pub fn digest(set: &BTreeMap<String, serde_json::Value>) -> String {
    let mut h = Sha256::new();
    for (k, v) in set {
        h.update(k.as_bytes());
        h.update([0]);
        // serde_json's Map is a BTreeMap (no preserve_order): keys sorted.
        h.update(serde_json::to_vec(v).expect("a Value serializes"));
        h.update(b"\n");
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// What a snapshot sends: pure, given what was taken, the history and the
/// settings; updates the history.
pub fn snapshot_events(
    t: EventType,
    taken: Taken,
    history: &mut History,
    settings: SnapshotSettings,
    window: Window,
) -> Sent {
    let seen = taken.items.len() as u64;
    let mut set = BTreeMap::new();
    let mut evicted = Evictions::default();
    for item in taken.items {
        if set.len() == MAX_ITEMS && !set.contains_key(&item.key) {
            evicted.records += 1;
            evicted.hits += 1;
            continue;
        }
        // Two items with one key: the later wins (a collector's key is its identity).
        set.insert(item.key, item.payload);
    }
    history.sequence += 1;
    if !settings.deltas {
        history.previous = None;
    }
    let full = !settings.deltas || history.previous.is_none() || history.since_full + 1 >= settings.full_every;
    let digest = digest(&set);
    let items = set.len() as u64;
    let mut changes: Vec<(Option<&'static str>, serde_json::Value)> = Vec::new();
    if full {
        history.since_full = 0;
        if settings.deltas {
            changes.extend(set.values().map(|v| (None, v.clone())));
        } else {
            // Nothing keeps the set: its payloads move into the events.
            changes.extend(std::mem::take(&mut set).into_values().map(|v| (None, v)));
        }
    } else {
        history.since_full += 1;
        let previous = history.previous.as_ref().expect("checked above");
        for (k, v) in &set {
            match previous.get(k) {
                None => changes.push((Some("added"), v.clone())),
                Some(old) if old != v => changes.push((Some("changed"), v.clone())),
                Some(_) => {}
            }
        }
        for (k, old) in previous {
            if !set.contains_key(k) {
                changes.push((Some("removed"), old.clone()));
            }
        }
    }
    let info = SnapshotInfo {
        sequence: history.sequence,
        mode: if full { "full" } else { "delta" },
        items,
        events: changes.len().max(1) as u64,
        digest,
        change: None,
        failed_sources: taken.failures.clone(),
    };
    if changes.is_empty() {
        // Nothing to send is still a snapshot: one event says so.
        changes.push((None, serde_json::Value::Null));
    }
    let events = changes
        .into_iter()
        .map(|(change, payload)| {
            let mut e = window.collected(t, payload);
            e.snapshot = Some(SnapshotInfo { change, ..info.clone() });
            e
        })
        .collect();
    if settings.deltas {
        history.previous = Some(set);
    }
    let losses = Losses { seen, evicted, sources_unreadable: taken.failures.len() as u64, ..Default::default() };
    Sent { window, events, losses }
}

/// One snapshot collector and its schedule.
struct Scheduled {
    collector: Box<dyn Snapshot>,
    history: History,
    /// None: due at the next drain.
    next: Option<Instant>,
}

/// Every snapshot collector's schedule.
pub struct Snapshots {
    list: Vec<Scheduled>,
}

impl Snapshots {
    pub fn new(collectors: Vec<Box<dyn Snapshot>>) -> Snapshots {
        Snapshots {
            list: collectors
                .into_iter()
                .map(|c| Scheduled { collector: c, history: History::default(), next: None })
                .collect(),
        }
    }

    /// Every snapshot is taken at the next drain (after a configuration change).
    pub fn request_all(&mut self) {
        for s in &mut self.list {
            s.next = None;
        }
    }

    /// Takes the snapshots that are due and collected under `cx.config`, and
    /// hands each, with its type, to `publish` before the next is taken: one
    /// snapshot's events are held at a time, never every collector's at once
    /// (the memory peak of a snapshot round). Stops at `publish`'s first error.
    pub fn take_due<E>(
        &mut self,
        cx: &Context<'_>,
        now: Instant,
        mut publish: impl FnMut(EventType, Sent) -> Result<(), E>,
    ) -> Result<(), E> {
        let every: Duration = cx.config.transport.snapshot_frequency;
        for s in &mut self.list {
            let t = s.collector.event_type();
            if !cx.config.collects(t) || s.next.is_some_and(|n| now < n) {
                continue;
            }
            s.next = Some(now + every);
            let start = SystemTime::now();
            let taken = s.collector.take(cx);
            for f in &taken.failures {
                log::warn!("{t}: cannot read {}: {}", f.source, f.reason);
            }
            let window = Window { start, end: SystemTime::now() };
            publish(t, snapshot_events(t, taken, &mut s.history, cx.config.snapshots, window))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collectors::Item;
    use serde_json::json;
    use std::time::UNIX_EPOCH;

    fn taken(items: &[(&str, serde_json::Value)]) -> Taken {
        Taken {
            items: items.iter().map(|(k, v)| Item { key: k.to_string(), payload: v.clone() }).collect(),
            failures: vec![],
            lost: 0,
        }
    }

    const W: Window = Window { start: UNIX_EPOCH, end: UNIX_EPOCH };

    #[test]
    fn a_full_snapshot_is_one_event_per_item_and_says_how_many() {
        let mut h = History::default();
        let sent = snapshot_events(
            EventType::LocalUsers,
            taken(&[("b", json!({"n": 2})), ("a", json!({"n": 1}))]),
            &mut h,
            SnapshotSettings::default(),
            W,
        );
        assert_eq!(sent.events.len(), 2);
        let v = serde_json::to_value(&sent.events[0]).unwrap();
        assert_eq!(v["event_type"], "LocalUsers");
        assert_eq!(v["payload"], json!({"n": 1}), "sorted by key");
        assert_eq!(v["snapshot"]["items"], 2);
        assert_eq!(v["snapshot"]["mode"], "full");
        assert_eq!(v["snapshot"]["sequence"], 1);
        assert!(v["snapshot"].get("change").is_none());
        assert_eq!(sent.losses, Losses { seen: 2, ..Default::default() });
    }

    #[test]
    fn an_empty_snapshot_is_not_a_missing_one() {
        let mut t = taken(&[]);
        t.fail("/etc/passwd", "Permission denied");
        let sent = snapshot_events(EventType::LocalUsers, t, &mut History::default(), SnapshotSettings::default(), W);
        assert_eq!(sent.events.len(), 1);
        let v = serde_json::to_value(&sent.events[0]).unwrap();
        assert_eq!(v["payload"], serde_json::Value::Null);
        assert_eq!(v["snapshot"]["items"], 0);
        assert_eq!(v["snapshot"]["failed_sources"], json!([{"source": "/etc/passwd", "reason": "Permission denied"}]));
        assert_eq!(sent.losses.sources_unreadable, 1);
    }

    #[test]
    fn deltas_send_changes_and_a_digest_of_the_whole_set() {
        let s = SnapshotSettings { deltas: true, full_every: 3 };
        let mut h = History::default();
        let first = snapshot_events(EventType::SBoM, taken(&[("a", json!(1)), ("b", json!(2))]), &mut h, s, W);
        assert_eq!(first.events.len(), 2, "the first is full");
        let second =
            snapshot_events(EventType::SBoM, taken(&[("a", json!(1)), ("b", json!(3)), ("c", json!(4))]), &mut h, s, W);
        let changes: Vec<_> = second
            .events
            .iter()
            .map(|e| (e.snapshot.as_ref().unwrap().change, serde_json::to_value(&e.payload).unwrap()))
            .collect();
        assert_eq!(changes, [(Some("changed"), json!(3)), (Some("added"), json!(4))]);
        let info = second.events[0].snapshot.as_ref().unwrap();
        assert_eq!((info.mode, info.items, info.events), ("delta", 3, 2));
        let whole: BTreeMap<String, serde_json::Value> =
            [("a", json!(1)), ("b", json!(3)), ("c", json!(4))].into_iter().map(|(k, v)| (k.to_string(), v)).collect();
        assert_eq!(info.digest, digest(&whole), "the digest is of the whole set, not the delta");
        let third = snapshot_events(EventType::SBoM, taken(&[("a", json!(1)), ("b", json!(3))]), &mut h, s, W);
        assert_eq!(third.events.len(), 1);
        assert_eq!(third.events[0].snapshot.as_ref().unwrap().change, Some("removed"));
        assert_eq!(serde_json::to_value(&third.events[0].payload).unwrap(), json!(4), "the last payload seen");
        let fourth = snapshot_events(EventType::SBoM, taken(&[("a", json!(1)), ("b", json!(3))]), &mut h, s, W);
        assert_eq!(fourth.events.len(), 2, "full again after full_every snapshots");
        assert_eq!(fourth.events[0].snapshot.as_ref().unwrap().mode, "full");
        let fifth = snapshot_events(EventType::SBoM, taken(&[("a", json!(1)), ("b", json!(3))]), &mut h, s, W);
        let info = fifth.events[0].snapshot.as_ref().unwrap();
        assert_eq!(
            (info.mode, info.events, &fifth.events[0].payload),
            ("delta", 1, &crate::report::Payload::Collected(serde_json::Value::Null)),
            "unchanged: one event"
        );
    }

    #[test]
    fn without_deltas_no_set_is_kept_and_turning_them_on_starts_full() {
        let off = SnapshotSettings { deltas: false, full_every: 3 };
        let mut h = History::default();
        let first = snapshot_events(EventType::SBoM, taken(&[("a", json!(1)), ("b", json!(2))]), &mut h, off, W);
        assert!(h.previous.is_none(), "nothing reads it without deltas");
        let info = first.events[0].snapshot.as_ref().unwrap();
        assert_eq!((info.items, info.events), (2, 2));
        let two: BTreeMap<String, serde_json::Value> =
            [("a", json!(1)), ("b", json!(2))].into_iter().map(|(k, v)| (k.to_string(), v)).collect();
        assert_eq!(info.digest, digest(&two));
        let on = SnapshotSettings { deltas: true, ..off };
        let second = snapshot_events(EventType::SBoM, taken(&[("a", json!(1)), ("b", json!(2))]), &mut h, on, W);
        assert_eq!(second.events[0].snapshot.as_ref().unwrap().mode, "full", "no set to compare with");
        assert_eq!(second.events.len(), 2);
        let third = snapshot_events(EventType::SBoM, taken(&[("a", json!(1)), ("b", json!(2))]), &mut h, on, W);
        assert_eq!(third.events[0].snapshot.as_ref().unwrap().mode, "delta");
    }

    #[test]
    fn digest_is_sha256_of_sorted_lines() {
        let set: BTreeMap<String, serde_json::Value> = [("k".to_string(), json!({"b": 1, "a": "x"}))].into();
        // printf 'k\0{"a":"x","b":1}\n' | sha256sum
        assert_eq!(digest(&set), "614f29bff729b7248fc5e755cb9a9c7b6dded6017d87536cef579fc0b5b5286c");
    }

    #[test]
    fn items_past_the_bound_are_counted() {
        let items: Vec<(String, serde_json::Value)> =
            (0..MAX_ITEMS + 3).map(|i| (format!("{i:08}"), json!(i))).collect();
        let t = Taken {
            items: items.into_iter().map(|(key, payload)| Item { key, payload }).collect(),
            ..Taken::default()
        };
        let sent =
            snapshot_events(EventType::ListeningPorts, t, &mut History::default(), SnapshotSettings::default(), W);
        assert_eq!(sent.events.len(), MAX_ITEMS);
        assert_eq!(sent.losses.evicted, Evictions { records: 3, hits: 3, ..Default::default() });
        assert_eq!(sent.losses.seen, MAX_ITEMS as u64 + 3);
    }
}
