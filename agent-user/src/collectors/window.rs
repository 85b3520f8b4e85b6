//! Windows of the event types aggregated in user space (Diagnostic, and
//! later Login): identical items (same key) in one window are one record
//! with a `hit_count`, in the same bounded cache the kernel-fed types use,
//! so a warning that repeats cannot flood the uplink. Pure.
use std::time::{Duration, Instant, SystemTime};

use crate::{
    aggregate::{Aggregate, WindowCache},
    config::EventSettings,
    enrich::rfc3339,
    events::EventType,
    report::{Event, Losses, Window},
};

/// One item and its repeats in a window.
#[derive(Debug, Clone, PartialEq)]
pub struct EventRecord {
    pub key: String,
    pub payload: serde_json::Value,
    pub hits: u64,
    /// Order of arrival (the cache's "oldest"), and the first time seen.
    pub order: u64,
    pub first_seen: SystemTime,
}

impl Aggregate for EventRecord {
    type Key = String;
    fn key(&self) -> String {
        self.key.clone()
    }
    fn hits(&self) -> u64 {
        self.hits
    }
    fn absorb(&mut self, later: Self) {
        self.hits = self.hits.saturating_add(later.hits);
    }
    fn first_seen_ns(&self) -> u64 {
        self.order
    }
}

impl EventRecord {
    /// The payload as sent: the item's fields, its first time and its count.
    pub fn into_payload(self) -> serde_json::Value {
        let mut p = self.payload;
        if let Some(o) = p.as_object_mut() {
            o.insert("timestamp".into(), rfc3339(self.first_seen).into());
            o.insert("hit_count".into(), self.hits.into());
        }
        p
    }
}

/// The open window of one user-space event type.
pub struct EventWindow {
    pub event_type: EventType,
    settings: EventSettings,
    cache: WindowCache<EventRecord>,
    opened: Instant,
    opened_wall: SystemTime,
    seen: u64,
    lost: u64,
    next_order: u64,
}

impl EventWindow {
    pub fn new(event_type: EventType, settings: EventSettings) -> EventWindow {
        EventWindow {
            event_type,
            settings,
            cache: WindowCache::new(settings.cache_size as usize),
            opened: Instant::now(),
            opened_wall: SystemTime::now(),
            seen: 0,
            lost: 0,
            next_order: 0,
        }
    }

    /// Items of one poll; `lost`: events the source dropped before it was polled.
    pub fn add(&mut self, items: Vec<crate::collectors::Item>, lost: u64, now: SystemTime) {
        self.lost = self.lost.saturating_add(lost);
        for item in items {
            self.seen += 1;
            self.next_order += 1;
            let r =
                EventRecord { key: item.key, payload: item.payload, hits: 1, order: self.next_order, first_seen: now };
            self.cache.add(r);
        }
    }

    /// Whether the window ends at this drain (as the kernel-fed windows do).
    pub fn due(&self, now: Instant, drain_period: Duration) -> bool {
        now.duration_since(self.opened) + drain_period / 2 >= self.settings.interval
    }

    pub fn reconfigure(&mut self, settings: EventSettings) {
        self.settings = settings;
        self.cache.set_capacity(settings.cache_size as usize);
    }

    /// Ends the window: its events, its window and what it lost.
    pub fn close(&mut self) -> (Window, Vec<Event>, Losses) {
        let now = SystemTime::now();
        let window = Window { start: self.opened_wall, end: now };
        let (records, evicted) = self.cache.take();
        let t = self.event_type;
        let events = records.into_iter().map(|r| window.collected(t, r.into_payload())).collect();
        // The source's own losses are events seen and dropped, like a full kernel map.
        let losses = Losses {
            seen: self.seen + self.lost,
            evicted,
            kernel_map_full: std::mem::take(&mut self.lost),
            ..Default::default()
        };
        self.seen = 0;
        self.opened = Instant::now();
        self.opened_wall = now;
        (window, events, losses)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{collectors::Item, config::Priority};
    use serde_json::json;

    fn settings(cache_size: u32) -> EventSettings {
        EventSettings { priority: Priority::Low, aggregate: true, interval: Duration::from_secs(60), cache_size }
    }

    #[test]
    fn repeats_aggregate_and_the_identity_holds() {
        let mut w = EventWindow::new(EventType::Diagnostic, settings(2));
        let item = |k: &str| Item { key: k.into(), payload: json!({"message": k}) };
        w.add(vec![item("a"), item("b"), item("a"), item("c"), item("c")], 3, SystemTime::UNIX_EPOCH);
        let (_, events, losses) = w.close();
        let payloads: Vec<serde_json::Value> =
            events.iter().map(|e| serde_json::to_value(&e.payload).unwrap()).collect();
        // "a" was pushed out by "c" (capacity 2), then came back as a new record.
        assert_eq!(payloads.len(), 2);
        assert_eq!(payloads[0]["message"], "b");
        assert_eq!((payloads[1]["message"].as_str(), payloads[1]["hit_count"].as_u64()), (Some("c"), Some(2)));
        assert_eq!(payloads[0]["timestamp"], "1970-01-01T00:00:00.000Z");
        let sent: u64 = payloads.iter().map(|p| p["hit_count"].as_u64().unwrap()).sum();
        let dropped = losses.evicted.hits + losses.kernel_map_full;
        assert_eq!(sent + dropped, losses.seen, "sum(hit_count) + dropped == seen");
        assert_eq!((losses.seen, losses.kernel_map_full), (8, 3));
        let (_, events, losses) = w.close();
        assert!(events.is_empty() && losses.seen == 0, "a new window starts empty");
    }
}
