//! The local cache: events waiting for their priority's turn, messages
//! waiting for the broker, and messages waiting for its PUBACK. Pure: time
//! is passed in, nothing is logged.
//!
//! Bound: the serialized bytes of every event held (pending, ready and in
//! flight) stay within `maxLocalCacheSizeInBytes`. Past it the oldest event
//! not in flight is dropped and counted per event type; those counts are
//! taken by the agent into the next DroppedEventsStatistics of that type
//! (`transport_cache_full`, `transport_cache_full_hits`). A statistics event
//! is the accounting of everything else, so it is dropped only when nothing
//! else is left; its transport counts then return to the counters and are
//! reported by the next one, so none is ever lost.
//!
//! Events waiting to enter (staged) have a bound of their own, the same
//! number of bytes, enforced by [`Outbox::make_room`] before windows are
//! handed over: at most twice `maxLocalCacheSizeInBytes` plus the windows
//! last handed over are held in all while the broker is reachable. While it
//! is not, nothing waits staged: each event handed over enters the cache at
//! once (see [`Outbox::set_link_up`]), so at most `maxLocalCacheSizeInBytes`
//! plus one event are held, however large a window is.
use std::{
    collections::{BTreeMap, VecDeque},
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};

use super::envelope::{split, Frame};
use crate::config::{EventType, Priority, TransportSettings};

/// Events (records) of one type dropped from the cache, the hits they
/// carried, and spool records of that type found unreadable at start.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Drops {
    pub records: u64,
    pub hits: u64,
    #[serde(default)]
    pub spool_lost: u64,
}

impl Drops {
    pub const fn new(records: u64, hits: u64) -> Drops {
        Drops { records, hits, spool_lost: 0 }
    }

    /// Saturating: counts read back from a spool are not trusted to be small.
    pub fn add(&mut self, o: Drops) {
        self.records = self.records.saturating_add(o.records);
        self.hits = self.hits.saturating_add(o.hits);
        self.spool_lost = self.spool_lost.saturating_add(o.spool_lost);
    }

    pub fn is_zero(&self) -> bool {
        *self == Drops::default()
    }
}

/// What changed in the cache since the journal last looked (see
/// [`super::spool`]): events that entered, events that left (acknowledged
/// or dropped), and the unreported drops when they changed.
#[derive(Debug, Default)]
pub struct Changes {
    pub entered: Vec<Item>,
    pub gone: Vec<u64>,
    pub drops: Option<(BTreeMap<EventType, Drops>, u64)>,
}

/// Transport drops a DroppedEventsStatistics event reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Carried {
    pub source: EventType,
    pub drops: Drops,
}

/// One serialized event in the cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    /// Arrival order; smaller is older.
    pub seq: u64,
    pub event_type: EventType,
    pub priority: Priority,
    /// The event's hit_count (0 for events that have none).
    pub hits: u64,
    /// Boxed, and the bytes a boxed slice: a full cache holds thousands
    /// of items, and only statistics events carry counts (80 -> 48 bytes).
    pub carried: Option<Box<Carried>>,
    pub bytes: Box<[u8]>,
}

/// A message handed to the broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub id: u64,
    pub priority: Priority,
    pub payload: Vec<u8>,
    pub events: usize,
}

/// Room left for the envelope header when sizing a message's worth of
/// pending events: the header is under 400 bytes (device ids are at most 128
/// characters).
const HEADER_RESERVE: usize = 1024;

const PRIORITIES: [Priority; 3] = [Priority::High, Priority::Medium, Priority::Low];

fn slot(p: Priority) -> usize {
    match p {
        Priority::High => 0,
        Priority::Medium => 1,
        // Off events are never produced; if one is, it waits with Low.
        Priority::Low | Priority::Off => 2,
    }
}

pub struct Outbox {
    settings: TransportSettings,
    pending: [VecDeque<Item>; 3],
    pending_bytes: [usize; 3],
    /// Events of a closed window that found no room while the broker was
    /// reachable: they wait here for acknowledgements to make room instead
    /// of pushing older events out. Outside the cache's bound, within their
    /// own (see make_room); admitted all at once, with drops, when the
    /// broker is unreachable.
    staged: VecDeque<Item>,
    staged_bytes: u64,
    /// Set by flush_all: what is admitted from `staged` is ready at once.
    flush_staged: bool,
    /// Whether the connection task has the broker now (see `set_link_up`).
    link_up: bool,
    last_flush: [Instant; 3],
    ready: VecDeque<Item>,
    inflight: BTreeMap<u64, Vec<Item>>,
    bytes: u64,
    next_seq: u64,
    next_message: u64,
    drops: BTreeMap<EventType, Drops>,
    /// Events dropped since the start, statistics events included.
    dropped: u64,
    /// Statistics events dropped because nothing else was left.
    pub statistics_lost: u64,
    /// Spool records of unknown type found unreadable at start: reported by
    /// the next DroppedEventsStatistics of any type.
    spool_lost_unknown: u64,
    /// Recorded for the journal while one is kept.
    changes: Option<Changes>,
    drops_changed: bool,
}

impl Outbox {
    pub fn new(settings: TransportSettings, now: Instant) -> Outbox {
        Outbox {
            settings,
            pending: Default::default(),
            pending_bytes: [0; 3],
            staged: VecDeque::new(),
            staged_bytes: 0,
            flush_staged: false,
            link_up: false,
            last_flush: [now; 3],
            ready: VecDeque::new(),
            inflight: BTreeMap::new(),
            bytes: 0,
            next_seq: 0,
            next_message: 0,
            drops: BTreeMap::new(),
            dropped: 0,
            statistics_lost: 0,
            spool_lost_unknown: 0,
            changes: None,
            drops_changed: false,
        }
    }

    pub fn settings(&self) -> &TransportSettings {
        &self.settings
    }

    /// New limits and frequencies; a smaller cache drops the oldest now.
    pub fn configure(&mut self, settings: TransportSettings) {
        self.settings = settings;
        self.enforce_limit();
    }

    /// Serialized bytes of every event in the cache (staged ones excluded).
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Serialized bytes of the staged events.
    pub fn staged_bytes(&self) -> u64 {
        self.staged_bytes
    }

    /// Events held, staged and in flight included.
    pub fn len(&self) -> usize {
        self.staged.len()
            + self.pending.iter().map(VecDeque::len).sum::<usize>()
            + self.ready.len()
            + self.inflight.values().map(Vec::len).sum::<usize>()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn inflight_messages(&self) -> usize {
        self.inflight.len()
    }

    /// Whether a message can be formed now.
    pub fn has_ready(&self) -> bool {
        !self.ready.is_empty()
    }

    /// Adds one serialized event to the cache. When a priority has a full
    /// message's worth waiting it is made ready at once: waiting longer saves
    /// nothing.
    pub fn push(
        &mut self,
        event_type: EventType,
        priority: Priority,
        hits: u64,
        carried: Option<Carried>,
        bytes: Vec<u8>,
    ) {
        let item = self.new_item(event_type, priority, hits, carried, bytes);
        self.add_pending(item);
    }

    /// Hands over one serialized event; [`Outbox::admit`] moves it into the
    /// cache, at once while the link is down (see [`Outbox::set_link_up`]).
    pub fn stage(
        &mut self,
        event_type: EventType,
        priority: Priority,
        hits: u64,
        carried: Option<Carried>,
        bytes: Vec<u8>,
    ) {
        let item = self.new_item(event_type, priority, hits, carried, bytes);
        self.staged_bytes += item.bytes.len() as u64;
        self.staged.push_back(item);
        if !self.link_up {
            self.admit(false);
        }
    }

    /// The connection task says whether it has the broker. While it does
    /// not, [`Outbox::admit`]`(false)` is what the task would do with each
    /// event staged, so [`Outbox::stage`] admits it at once and no window is
    /// held whole outside the bound.
    pub fn set_link_up(&mut self, up: bool) {
        self.link_up = up;
    }

    /// Moves staged events into the cache: while `connected`, only as many
    /// as fit (at least one into an empty cache); otherwise all of them, the
    /// oldest events past the bound being dropped and counted.
    pub fn admit(&mut self, connected: bool) {
        while let Some(front) = self.staged.front() {
            let fits = self.bytes == 0 || self.bytes + front.bytes.len() as u64 <= self.settings.max_cache_bytes;
            if connected && !fits {
                break;
            }
            self.admit_front();
        }
    }

    /// Bounds the staged events to `maxLocalCacheSizeInBytes`: past it the
    /// oldest enter the cache even while connected, and the cache's bound
    /// drops (and counts) the oldest events. Without it, events arriving
    /// faster than the link takes them would wait without limit. Called
    /// before windows are handed over, so that the drops are counted in
    /// their statistics and the windows themselves wait whole. Returns the
    /// events dropped.
    pub fn make_room(&mut self) -> u64 {
        let before = self.dropped;
        while self.staged_bytes > self.settings.max_cache_bytes {
            self.admit_front();
        }
        self.dropped - before
    }

    fn admit_front(&mut self) {
        let Some(item) = self.staged.pop_front() else { return };
        self.staged_bytes -= item.bytes.len() as u64;
        if self.flush_staged {
            self.bytes += item.bytes.len() as u64;
            self.ready.push_back(item);
            self.enforce_limit();
        } else {
            self.add_pending(item);
        }
        if self.staged.is_empty() {
            self.flush_staged = false;
        }
    }

    fn new_item(
        &mut self,
        event_type: EventType,
        priority: Priority,
        hits: u64,
        carried: Option<Carried>,
        bytes: Vec<u8>,
    ) -> Item {
        let seq = self.next_seq;
        self.next_seq += 1;
        let item = Item { seq, event_type, priority, hits, carried: carried.map(Box::new), bytes: bytes.into() };
        self.entered(&item);
        item
    }

    fn entered(&mut self, item: &Item) {
        if let Some(c) = &mut self.changes {
            c.entered.push(item.clone());
        }
    }

    fn gone(&mut self, seq: u64) {
        if let Some(c) = &mut self.changes {
            c.gone.push(seq);
        }
    }

    /// From now on, changes are recorded for [`Outbox::take_changes`].
    pub fn record_changes(&mut self) {
        self.changes = Some(Changes::default());
    }

    /// What changed since the previous call (nothing if not recording).
    pub fn take_changes(&mut self) -> Changes {
        let Some(c) = &mut self.changes else { return Changes::default() };
        let mut c = std::mem::take(c);
        if std::mem::take(&mut self.drops_changed) {
            c.drops = Some((self.drops.clone(), self.spool_lost_unknown));
        }
        c
    }

    fn add_pending(&mut self, item: Item) {
        let s = slot(item.priority);
        self.bytes += item.bytes.len() as u64;
        self.pending_bytes[s] += item.bytes.len() + 1;
        self.pending[s].push_back(item);
        let max = self.settings.max_message_bytes as usize;
        if self.pending_bytes[s] + HEADER_RESERVE > max {
            self.make_ready_one_message(s, max - HEADER_RESERVE);
        }
        self.enforce_limit();
    }

    /// Moves the oldest pending events of one priority, at most `budget`
    /// bytes of them, to the ready queue: one message's worth.
    fn make_ready_one_message(&mut self, s: usize, budget: usize) {
        let mut used = 0;
        while let Some(front) = self.pending[s].front() {
            let n = front.bytes.len() + 1;
            if used > 0 && used + n > budget {
                break;
            }
            used += n;
            self.pending_bytes[s] -= n;
            let item = self.pending[s].pop_front().expect("front exists");
            self.ready.push_back(item);
        }
    }

    /// Re-adds an item from the spool, keeping its priority; it is ready at once.
    pub fn restore(&mut self, mut item: Item) {
        item.seq = self.next_seq;
        self.next_seq += 1;
        self.entered(&item);
        self.bytes += item.bytes.len() as u64;
        self.ready.push_back(item);
        self.enforce_limit();
    }

    fn flush(&mut self, s: usize) {
        self.ready.extend(self.pending[s].drain(..));
        self.pending_bytes[s] = 0;
    }

    /// Makes ready every priority whose frequency has passed since it was
    /// last sent. Returns when it next needs to be called.
    pub fn poll_due(&mut self, now: Instant) -> Instant {
        let mut next = now + Duration::from_secs(3600);
        for p in PRIORITIES {
            let s = slot(p);
            let every = self.settings.frequency(p).expect("not Off");
            if now.saturating_duration_since(self.last_flush[s]) >= every {
                self.flush(s);
                self.last_flush[s] = now;
            }
            next = next.min(self.last_flush[s] + every);
        }
        next
    }

    /// Everything pending becomes ready now (configuration change, shutdown),
    /// and so does everything staged as it is admitted.
    pub fn flush_all(&mut self) {
        for s in 0..3 {
            self.flush(s);
        }
        self.flush_staged = !self.staged.is_empty();
    }

    /// Forms the next message from the front of the ready queue: consecutive
    /// events of one priority, as many as fit in `max_message_bytes`.
    /// `frame` makes the envelope header for a priority.
    pub fn next_message(&mut self, frame: impl Fn(Priority) -> Frame) -> Option<Message> {
        loop {
            let priority = self.ready.front()?.priority;
            let f = frame(priority);
            let run: Vec<usize> =
                self.ready.iter().take_while(|i| i.priority == priority).map(|i| i.bytes.len()).collect();
            let sp = split(&f, &run, self.settings.max_message_bytes as usize);
            match sp.runs.first() {
                Some(r) if r.start == 0 => {
                    let items: Vec<Item> = self.ready.drain(..r.end).collect();
                    let payload = f.build(items.iter().map(|i| &*i.bytes));
                    let id = self.next_message;
                    self.next_message += 1;
                    let events = items.len();
                    self.inflight.insert(id, items);
                    return Some(Message { id, priority, payload, events });
                }
                // The front event can never be sent: too large for any message.
                _ => {
                    let item = self.ready.pop_front().expect("front exists");
                    self.drop_item(item);
                }
            }
        }
    }

    /// The broker has the message.
    pub fn ack(&mut self, id: u64) -> bool {
        match self.inflight.remove(&id) {
            Some(items) => {
                self.bytes -= items.iter().map(|i| i.bytes.len() as u64).sum::<u64>();
                for i in &items {
                    self.gone(i.seq);
                }
                true
            }
            None => false,
        }
    }

    /// A message the client could not take: its events go back to the front
    /// of the ready queue, in order.
    pub fn unsend(&mut self, id: u64) {
        if let Some(items) = self.inflight.remove(&id) {
            for item in items.into_iter().rev() {
                self.ready.push_front(item);
            }
        }
    }

    /// The connection dropped: unacknowledged messages go back to the front
    /// of the ready queue, in their original order, to be sent again.
    pub fn requeue_inflight(&mut self) {
        let mut back: Vec<Item> = std::mem::take(&mut self.inflight).into_values().flatten().collect();
        back.sort_by_key(|i| i.seq);
        for item in back.into_iter().rev() {
            self.ready.push_front(item);
        }
        self.enforce_limit();
    }

    /// Drops not yet reported for `t`, reset to zero; spool records of
    /// unknown type ride with the first type asked for.
    pub fn take_drops(&mut self, t: EventType) -> Drops {
        let mut d = self.drops.remove(&t).unwrap_or_default();
        d.spool_lost = d.spool_lost.saturating_add(std::mem::take(&mut self.spool_lost_unknown));
        self.drops_changed |= !d.is_zero();
        d
    }

    /// Drops not yet reported, by type, and unreadable spool records of
    /// unknown type (for the spool).
    pub fn drops(&self) -> (&BTreeMap<EventType, Drops>, u64) {
        (&self.drops, self.spool_lost_unknown)
    }

    pub fn add_drops(&mut self, t: EventType, d: Drops) {
        self.drops.entry(t).or_default().add(d);
        self.drops_changed = true;
    }

    /// Spool records lost whose event type cannot be told.
    pub fn add_spool_lost_unknown(&mut self, n: u64) {
        self.spool_lost_unknown = self.spool_lost_unknown.saturating_add(n);
        self.drops_changed = true;
    }

    fn drop_item(&mut self, item: Item) {
        self.bytes -= item.bytes.len() as u64;
        self.gone(item.seq);
        self.count_dropped(item.event_type, item.hits, item.carried.as_deref().copied());
    }

    /// Counts one event dropped (from the cache, or from the spool before it
    /// entered): what it carried returns to the counters.
    pub fn count_dropped(&mut self, event_type: EventType, hits: u64, carried: Option<Carried>) {
        self.dropped += 1;
        if let Some(c) = carried {
            self.add_drops(c.source, c.drops);
        }
        if event_type == EventType::DroppedEventsStatistics {
            self.statistics_lost += 1;
        } else {
            self.add_drops(event_type, Drops::new(1, hits));
        }
    }

    fn enforce_limit(&mut self) {
        while self.bytes > self.settings.max_cache_bytes {
            let Some((queue, pos)) = self.victim() else { break };
            let item = if queue < 3 {
                let item = self.pending[queue].remove(pos).expect("victim exists");
                self.pending_bytes[queue] -= item.bytes.len() + 1;
                item
            } else {
                self.ready.remove(pos).expect("victim exists")
            };
            self.drop_item(item);
        }
    }

    /// The oldest event not in flight, statistics events last: (queue, index),
    /// queue 0..3 = pending by priority, 3 = ready.
    fn victim(&self) -> Option<(usize, usize)> {
        let queues = || self.pending.iter().chain(std::iter::once(&self.ready)).enumerate();
        let oldest = |stats: bool| {
            queues()
                .filter_map(|(q, d)| {
                    d.iter()
                        .position(|i| (i.event_type == EventType::DroppedEventsStatistics) == stats)
                        .map(|pos| (d[pos].seq, q, pos))
                })
                .min()
                .map(|(_, q, pos)| (q, pos))
        };
        oldest(false).or_else(|| oldest(true))
    }

    /// Every event held, in flight included, oldest first (for the spool).
    pub fn all_items(&self) -> Vec<&Item> {
        let mut v: Vec<&Item> = self
            .staged
            .iter()
            .chain(self.pending.iter().flatten())
            .chain(self.ready.iter())
            .chain(self.inflight.values().flatten())
            .collect();
        v.sort_by_key(|i| i.seq);
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::envelope::Header;

    /// A full default cache holds about 8,000 items.
    #[test]
    #[cfg(target_pointer_width = "64")]
    fn an_item_stays_small() {
        assert!(std::mem::size_of::<Item>() <= 48, "{} bytes", std::mem::size_of::<Item>());
    }

    fn settings(cache: u64, msg: u32) -> TransportSettings {
        TransportSettings {
            high_frequency: Duration::from_secs(10),
            medium_frequency: Duration::from_secs(60),
            low_frequency: Duration::from_secs(300),
            max_cache_bytes: cache,
            max_message_bytes: msg,
            ..TransportSettings::default()
        }
    }

    fn frame(p: Priority) -> Frame {
        Frame::new(&Header {
            schema_version: 1,
            device_id: "d",
            agent_version: "v",
            sent_at: "2026-01-01T00:00:00.000Z",
            priority: p.wire_name(),
        })
    }

    fn event(n: usize, len: usize) -> Vec<u8> {
        let head = format!(r#"{{"n":{n},"p":""#);
        let pad = len - head.len() - 2;
        format!("{head}{}\"}}", "x".repeat(pad)).into_bytes()
    }

    fn push(o: &mut Outbox, t: EventType, p: Priority, n: usize, len: usize) {
        o.push(t, p, 1, None, event(n, len));
    }

    fn drain(o: &mut Outbox) -> Vec<serde_json::Value> {
        let mut out = Vec::new();
        while let Some(m) = o.next_message(frame) {
            assert!(m.payload.len() <= o.settings().max_message_bytes as usize);
            out.push(serde_json::from_slice(&m.payload).unwrap());
            assert!(o.ack(m.id));
        }
        out
    }

    #[test]
    fn priorities_wait_for_their_frequency() {
        let t0 = Instant::now();
        let mut o = Outbox::new(settings(1 << 20, 100_000), t0);
        push(&mut o, EventType::ProcessCreate, Priority::High, 1, 50);
        push(&mut o, EventType::ProcessTerminate, Priority::Low, 2, 50);
        push(&mut o, EventType::ProcessCreate, Priority::Medium, 3, 50);
        assert!(o.next_message(frame).is_none(), "nothing is due yet");
        let next = o.poll_due(t0 + Duration::from_secs(5));
        assert_eq!(next, t0 + Duration::from_secs(10));
        assert!(!o.has_ready());
        o.poll_due(t0 + Duration::from_secs(10));
        let sent = drain(&mut o);
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0]["priority"], "high");
        assert_eq!(sent[0]["events"][0]["n"], 1);
        o.poll_due(t0 + Duration::from_secs(60));
        let sent = drain(&mut o);
        assert_eq!((sent.len(), sent[0]["priority"].as_str()), (1, Some("medium")));
        o.poll_due(t0 + Duration::from_secs(299));
        assert!(drain(&mut o).is_empty());
        o.poll_due(t0 + Duration::from_secs(300));
        assert_eq!(drain(&mut o)[0]["priority"], "low");
        assert!(o.is_empty());
        assert_eq!(o.bytes(), 0);
    }

    #[test]
    fn a_full_message_goes_out_without_waiting() {
        let t0 = Instant::now();
        let mut o = Outbox::new(settings(1 << 20, 9000), t0);
        for n in 0..100 {
            push(&mut o, EventType::ProcessCreate, Priority::Low, n, 100);
        }
        let sent = drain(&mut o);
        assert!(!sent.is_empty());
        // What did not fill a message still waits.
        assert!(!o.is_empty());
        o.flush_all();
        let rest = drain(&mut o);
        let total: usize = sent.iter().chain(&rest).map(|m| m["events"].as_array().unwrap().len()).sum();
        assert_eq!(total, 100);
    }

    #[test]
    fn large_batch_is_split_in_order_and_events_are_whole() {
        let mut o = Outbox::new(settings(1 << 22, 10_000), Instant::now());
        for n in 0..1000 {
            push(&mut o, EventType::ProcessCreate, Priority::High, n, 60 + n % 200);
        }
        o.flush_all();
        let msgs = drain(&mut o);
        assert!(msgs.len() > 10);
        let ns: Vec<u64> = msgs
            .iter()
            .flat_map(|m| m["events"].as_array().unwrap().iter().map(|e| e["n"].as_u64().unwrap()))
            .collect();
        assert_eq!(ns, (0..1000).collect::<Vec<_>>());
    }

    #[test]
    fn full_cache_drops_oldest_and_counts_per_type() {
        let mut o = Outbox::new(settings(10_000, 100_000), Instant::now());
        // 200 events of 100 bytes: only the newest 100 fit.
        for n in 0..200 {
            let t = if n % 2 == 0 { EventType::ProcessCreate } else { EventType::ProcessTerminate };
            o.push(t, Priority::Low, 3, None, event(n, 100));
        }
        assert!(o.bytes() <= 10_000);
        assert_eq!(o.len(), 100);
        assert_eq!(o.take_drops(EventType::ProcessCreate), Drops::new(50, 150));
        assert_eq!(o.take_drops(EventType::ProcessTerminate), Drops::new(50, 150));
        assert_eq!(o.take_drops(EventType::ProcessCreate), Drops::default(), "taken once");
        o.flush_all();
        let msgs = drain(&mut o);
        let first = msgs[0]["events"][0]["n"].as_u64().unwrap();
        assert_eq!(first, 100, "the oldest were dropped");
    }

    #[test]
    fn statistics_go_last_and_their_counts_are_never_lost() {
        let mut o = Outbox::new(settings(10_000, 100_000), Instant::now());
        let carried = Carried { source: EventType::ProcessCreate, drops: Drops::new(7, 70) };
        o.push(EventType::DroppedEventsStatistics, Priority::Low, 0, Some(carried), event(0, 100));
        for n in 1..150 {
            push(&mut o, EventType::ProcessCreate, Priority::Low, n, 100);
        }
        // The statistics event, the oldest, survived; 50 process events went.
        assert_eq!(o.take_drops(EventType::ProcessCreate), Drops::new(50, 50));
        assert!(o.all_items().iter().any(|i| i.event_type == EventType::DroppedEventsStatistics));
        // A cache of statistics alone: dropping one returns what it carried.
        let mut o = Outbox::new(settings(8200, 100_000), Instant::now());
        for n in 0..100 {
            let c = Carried { source: EventType::ProcessTerminate, drops: Drops::new(1, 2) };
            o.push(EventType::DroppedEventsStatistics, Priority::Low, 0, Some(c), event(n, 100));
        }
        let lost = o.statistics_lost;
        assert!(lost > 0);
        assert_eq!(o.take_drops(EventType::ProcessTerminate), Drops::new(lost, 2 * lost));
    }

    #[test]
    fn unacknowledged_messages_are_sent_again_in_order() {
        let mut o = Outbox::new(settings(1 << 20, 9000), Instant::now());
        for n in 0..300 {
            push(&mut o, EventType::ProcessCreate, Priority::High, n, 100);
        }
        o.flush_all();
        let a = o.next_message(frame).unwrap();
        let b = o.next_message(frame).unwrap();
        assert!(o.ack(a.id));
        let bytes_before = o.bytes();
        o.requeue_inflight();
        assert_eq!(o.bytes(), bytes_before, "requeued, not dropped");
        assert!(!o.ack(b.id), "b is no longer in flight");
        let msgs = drain(&mut o);
        let first: u64 = msgs[0]["events"][0]["n"].as_u64().unwrap();
        let b_first: u64 =
            serde_json::from_slice::<serde_json::Value>(&b.payload).unwrap()["events"][0]["n"].as_u64().unwrap();
        assert_eq!(first, b_first);
        assert!(o.is_empty());
    }

    #[test]
    fn while_connected_a_window_larger_than_the_cache_waits_instead_of_dropping() {
        let mut o = Outbox::new(settings(10_000, 9000), Instant::now());
        o.set_link_up(true);
        for n in 0..200 {
            o.stage(EventType::ProcessCreate, Priority::High, 1, None, event(n, 100));
        }
        o.admit(true);
        assert!(o.bytes() <= 10_000);
        assert_eq!(o.len(), 200, "staged events are held, not dropped");
        o.flush_all();
        let mut ns = Vec::new();
        for _ in 0..100 {
            o.admit(true);
            let Some(m) = o.next_message(frame) else { break };
            assert!(o.bytes() <= 10_000);
            let v: serde_json::Value = serde_json::from_slice(&m.payload).unwrap();
            ns.extend(v["events"].as_array().unwrap().iter().map(|e| e["n"].as_u64().unwrap()));
            o.ack(m.id);
        }
        assert_eq!(ns, (0..200).collect::<Vec<_>>(), "all sent, in order, none waiting for a frequency");
        assert_eq!(o.take_drops(EventType::ProcessCreate), Drops::default());
        assert!(o.is_empty());
    }

    #[test]
    fn while_connected_events_faster_than_the_link_stay_bounded_and_every_drop_is_counted() {
        // A 10 KB cache; a window of 50 events of 100 bytes (5 KB) closes at
        // every tick, 50 windows in all, and the link takes nothing.
        let mut o = Outbox::new(settings(10_000, 9000), Instant::now());
        o.set_link_up(true);
        let mut made_room = 0;
        for w in 0..50 {
            made_room += o.make_room();
            for i in 0..50 {
                o.stage(EventType::ProcessCreate, Priority::High, 3, None, event(w * 50 + i, 100));
            }
            o.admit(true);
            assert!(o.bytes() <= 10_000);
            assert!(o.staged_bytes() <= 10_000 + 5_000, "its own bound plus the window just handed over");
        }
        // The cache (100 events), the staged bound (100) and the last window (50).
        assert_eq!(o.len(), 250);
        assert_eq!(o.take_drops(EventType::ProcessCreate), Drops::new(2250, 6750));
        assert_eq!(made_room, 2250);
        // The link catches up: the newest 250 leave in order, nothing more is dropped.
        o.flush_all();
        let mut ns = Vec::new();
        loop {
            o.admit(true);
            let Some(m) = o.next_message(frame) else { break };
            let v: serde_json::Value = serde_json::from_slice(&m.payload).unwrap();
            ns.extend(v["events"].as_array().unwrap().iter().map(|e| e["n"].as_u64().unwrap()));
            o.ack(m.id);
        }
        assert_eq!(ns, (2250..2500).collect::<Vec<_>>());
        assert_eq!(o.take_drops(EventType::ProcessCreate), Drops::default());
        assert!(o.is_empty());
    }

    #[test]
    fn while_disconnected_staged_events_enter_and_the_oldest_are_dropped() {
        let mut o = Outbox::new(settings(10_000, 100_000), Instant::now());
        for n in 0..200 {
            o.stage(EventType::ProcessCreate, Priority::Low, 2, None, event(n, 100));
        }
        assert_eq!(o.staged_bytes(), 0, "with the link down, staging is entering");
        o.admit(false);
        assert_eq!(o.len(), 100);
        assert_eq!(o.take_drops(EventType::ProcessCreate), Drops::new(100, 200));
        assert_eq!(*o.all_items()[0].bytes, *event(100, 100), "the oldest went");
    }

    #[test]
    fn an_unsent_message_is_formed_again_identically() {
        let mut o = Outbox::new(settings(1 << 20, 9000), Instant::now());
        for n in 0..10 {
            push(&mut o, EventType::ProcessCreate, Priority::High, n, 100);
        }
        o.flush_all();
        let a = o.next_message(frame).unwrap();
        o.unsend(a.id);
        assert_eq!(o.inflight_messages(), 0);
        let b = o.next_message(frame).unwrap();
        assert_eq!((a.payload, a.events), (b.payload, b.events));
    }

    #[test]
    fn in_flight_events_are_not_dropped() {
        let mut o = Outbox::new(settings(9000, 9000), Instant::now());
        for n in 0..80 {
            push(&mut o, EventType::ProcessCreate, Priority::High, n, 100);
        }
        o.flush_all();
        let m = o.next_message(frame).unwrap();
        for n in 80..200 {
            push(&mut o, EventType::ProcessCreate, Priority::High, n, 100);
        }
        // Still in flight, so still acknowledgeable.
        assert!(o.ack(m.id));
        let d = o.take_drops(EventType::ProcessCreate);
        assert_eq!(d.records as usize + o.len() + m.events, 200, "every event sent, held or counted");
    }

    #[test]
    fn oversized_event_is_dropped_and_counted() {
        let mut o = Outbox::new(settings(1 << 20, 9000), Instant::now());
        push(&mut o, EventType::ProcessCreate, Priority::High, 0, 9500);
        push(&mut o, EventType::ProcessCreate, Priority::High, 1, 100);
        o.flush_all();
        let msgs = drain(&mut o);
        assert_eq!(msgs.len(), 1);
        assert_eq!(o.take_drops(EventType::ProcessCreate).records, 1);
    }
}
