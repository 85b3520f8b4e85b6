//! The MQTT transport: events queue by priority in a byte-bounded local
//! cache ([`outbox`]), leave in envelopes ([`envelope`]) of at most
//! maxMessageSizeInBytes, and survive restarts and crashes with `--spool-dir`
//! (a journal of the cache, [`spool`]).
//! The connection itself lives in [`mqtt`]. Nothing here knows about eBPF.
pub mod envelope;
pub mod mqtt;
pub mod outbox;
pub mod spool;

use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, oneshot, Notify};

use crate::{
    config::{Config, EventType, RawConfig},
    report::{Event, Payload},
    sinks::{Sink, SinkError},
};
#[cfg(test)]
use outbox::Item;
use outbox::{Carried, Drops, Outbox};

/// What the agent and the connection task share: the cache, a bell rung
/// when something was added to it, and the cache's journal (`--spool-dir`).
/// Lock order: `journal` before `outbox`, never the other way.
pub struct Shared {
    pub outbox: Mutex<Outbox>,
    pub wake: Notify,
    pub journal: Mutex<Option<spool::Journal>>,
}

impl Shared {
    fn new(outbox: Outbox, journal: Option<spool::Journal>) -> Shared {
        Shared { outbox: Mutex::new(outbox), wake: Notify::new(), journal: Mutex::new(journal) }
    }

    /// Appends what changed in the cache to the journal, at once: a SIGKILL
    /// after this loses none of it.
    pub fn record(&self) {
        let mut journal = self.journal.lock().expect("journal lock");
        let Some(j) = journal.as_mut() else { return };
        let changes = self.outbox.lock().expect("outbox lock").take_changes();
        j.append(changes);
    }

    /// Rewrites the journal from the cache; the events it holds, or None
    /// without a spool.
    pub fn rewrite(&self) -> Option<Result<usize, spool::SpoolError>> {
        let mut journal = self.journal.lock().expect("journal lock");
        let j = journal.as_mut()?;
        let (bytes, n) = {
            let mut o = self.outbox.lock().expect("outbox lock");
            (spool::snapshot(&mut o), o.len())
        };
        Some(j.rewrite(&bytes).map(|()| n))
    }

    /// Every SYNC_INTERVAL, on the spool thread: fsync what was appended,
    /// or rewrite the journal when it is due.
    fn tick(&self) {
        let cache = self.outbox.lock().expect("outbox lock").settings().max_cache_bytes;
        let due = match self.journal.lock().expect("journal lock").as_mut() {
            Some(j) => j.due(std::time::Instant::now(), cache),
            None => return,
        };
        match due {
            spool::Due::Nothing => {}
            // Failures are logged by the journal.
            spool::Due::Rewrite => drop(self.rewrite()),
            spool::Due::Sync(file) => {
                if let Err(e) = file.sync_data() {
                    if let Some(j) = self.journal.lock().expect("journal lock").as_mut() {
                        j.sync_failed(e);
                    }
                }
            }
        }
    }
}

/// Requests to the connection task.
pub enum Control {
    /// The effective configuration, published retained on .../config/reported,
    /// and the online status that goes with it (which event types are off).
    Reported { reported: Vec<u8>, status: Vec<u8> },
    /// Final flush, then publish (or spool) and disconnect; answers when done.
    Shutdown(oneshot::Sender<()>),
}

/// The agent's side of the transport: a [`Sink`] that queues events.
pub struct MqttSink {
    shared: Arc<Shared>,
    control: mpsc::UnboundedSender<Control>,
    config: Config,
    /// make_room dropped events (and warned) and nothing waited since.
    overflowing: bool,
    /// Where each event is serialized before its exact copy enters the cache.
    scratch: Vec<u8>,
}

/// While a window is handed over, the journal is written (and the
/// connection task woken) after every this many bytes, so that the changes
/// it has not seen stay small.
const RECORD_EVERY_BYTES: usize = 256 << 10;

/// A scratch buffer grown past this by one large event is not kept.
const SCRATCH_KEPT_BYTES: usize = 64 << 10;

/// The desired configuration payloads received from the broker.
pub type DesiredRx = mpsc::UnboundedReceiver<Vec<u8>>;

/// Handle to the running connection task.
pub struct Transport {
    control: mpsc::UnboundedSender<Control>,
    task: tokio::task::JoinHandle<()>,
    /// Dropped last: the spool thread then syncs once more and ends.
    _spool_thread: Option<std::sync::mpsc::Sender<()>>,
}

impl Transport {
    /// Starts the connection task (on the current tokio runtime), after
    /// loading the spool if there is one; a spool directory another user
    /// could write is refused.
    pub fn start(
        settings: mqtt::Settings,
        config: &Config,
    ) -> Result<(Transport, MqttSink, DesiredRx), mqtt::MqttError> {
        let mut outbox = Outbox::new(config.transport, std::time::Instant::now());
        let journal = match &settings.spool_dir {
            Some(dir) => {
                let dir = spool::prepare(dir, config.transport.max_cache_bytes)?;
                spool::load(&dir, &mut outbox).log(&dir);
                Some(spool::Journal::new(dir))
            }
            None => None,
        };
        let shared = Arc::new(Shared::new(outbox, journal));
        // The first rewrite drops what was unreadable and is the write
        // probe: a read-only or full directory is warned about now.
        let spool_thread = shared.rewrite().map(|_| {
            let (tx, rx) = std::sync::mpsc::channel::<()>();
            let s = shared.clone();
            std::thread::Builder::new()
                .name("hitcount-spool".into())
                .spawn(move || {
                    while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(spool::SYNC_INTERVAL) {
                        s.tick();
                    }
                    s.tick();
                })
                .map(|_| tx)
        });
        let spool_thread =
            spool_thread.transpose().map_err(|e| mqtt::MqttError::Settings(format!("spool thread: {e}")))?;
        let (control_tx, control_rx) = mpsc::unbounded_channel();
        let (desired_tx, desired_rx) = mpsc::unbounded_channel();
        let options = settings.options()?;
        let task = tokio::spawn(mqtt::run(settings, options, shared.clone(), control_rx, desired_tx));
        let sink = MqttSink {
            shared,
            control: control_tx.clone(),
            config: config.clone(),
            overflowing: false,
            scratch: Vec::new(),
        };
        Ok((Transport { control: control_tx, task, _spool_thread: spool_thread }, sink, desired_rx))
    }

    /// Publishes (or spools) everything queued and disconnects.
    pub async fn shutdown(self) {
        let (tx, rx) = oneshot::channel();
        if self.control.send(Control::Shutdown(tx)).is_ok() {
            let _ = rx.await;
        }
        let _ = self.task.await;
    }
}

impl MqttSink {
    fn send(&self, c: Control) {
        // The task only ends at shutdown, after the agent's last event.
        let _ = self.control.send(c);
    }
}

impl Sink for MqttSink {
    fn publish(&mut self, events: &mut dyn Iterator<Item = Event>) -> Result<(), SinkError> {
        let mut since_record = 0;
        for e in events {
            let t = e.event_type;
            let priority = self.config.priority(t);
            if !priority.enabled() {
                continue;
            }
            let carried = match &e.payload {
                Payload::DroppedEventsStatistics(s) => Some(Carried {
                    source: s.source_event_type,
                    drops: Drops {
                        records: s.transport_cache_full,
                        hits: s.transport_cache_full_hits,
                        spool_lost: s.spool_records_lost,
                    },
                }),
                _ => None,
            };
            let hits = e.payload.hits();
            self.scratch.clear();
            serde_json::to_writer(&mut self.scratch, &e).map_err(std::io::Error::from)?;
            drop(e);
            // An exact copy (a boxed slice in the cache): serializing grows
            // the buffer by doubling, and the cache's bound counts bytes.
            let bytes = self.scratch.as_slice().to_vec();
            since_record += bytes.len();
            // Locked per event, so that the connection task can send while a
            // large window is handed over.
            let mut outbox = self.shared.outbox.lock().expect("outbox lock");
            // While the broker is away, this admits it into the cache at once.
            outbox.stage(t, priority, hits, carried, bytes);
            drop(outbox);
            if since_record >= RECORD_EVERY_BYTES {
                since_record = 0;
                self.shared.record();
                self.shared.wake.notify_one();
            }
        }
        if self.scratch.capacity() > SCRATCH_KEPT_BYTES {
            self.scratch = Vec::new();
        }
        self.shared.record();
        self.shared.wake.notify_one();
        Ok(())
    }

    fn take_transport_drops(&mut self, t: EventType) -> Drops {
        let drops = self.shared.outbox.lock().expect("outbox lock").take_drops(t);
        self.shared.record();
        drops
    }

    fn make_room(&mut self) {
        let mut outbox = self.shared.outbox.lock().expect("outbox lock");
        let dropped = outbox.make_room();
        // Once until the link has caught up: it would repeat at every window.
        if dropped > 0 && !self.overflowing {
            log::warn!(
                "local cache: events arrive faster than they are sent; {dropped} dropped (counted in \
                 transport_cache_full); raise maxLocalCacheSizeInBytes or shorten the message frequencies"
            );
            self.overflowing = true;
        } else if dropped > 0 {
            log::debug!("local cache: {dropped} more dropped to make room");
        } else if outbox.staged_bytes() == 0 {
            self.overflowing = false;
        }
        drop(outbox);
        self.shared.record();
    }

    fn configure(&mut self, config: &Config) {
        self.config = config.clone();
        self.shared.outbox.lock().expect("outbox lock").configure(config.transport);
        self.shared.record();
        self.shared.wake.notify_one();
    }

    fn flush_now(&mut self) {
        self.shared.outbox.lock().expect("outbox lock").flush_all();
        self.shared.wake.notify_one();
    }

    fn report_config(&mut self, reported: &RawConfig) {
        let reported = serde_json::to_vec(reported).expect("config serializes");
        self.send(Control::Reported { reported, status: status_payload(Some(&self.config)) });
    }
}

/// The retained status of the device: `{"state":"online","event_types_off":[...]}`
/// with the configuration it collects under, `{"state":"offline"}` without
/// one (the last will, a clean shutdown). An agent told to collect nothing
/// is online and says so.
pub fn status_payload(online_with: Option<&Config>) -> Vec<u8> {
    let v = match online_with {
        Some(c) => {
            let off: Vec<&str> = EventType::configurable().filter(|t| !c.collects(*t)).map(|t| t.name()).collect();
            serde_json::json!({"state": "online", "event_types_off": off})
        }
        None => serde_json::json!({"state": "offline"}),
    };
    serde_json::to_vec(&v).expect("a status serializes")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        config::Priority,
        report::{DroppedEventsStatistics, Window},
    };
    use std::time::{Instant, UNIX_EPOCH};

    fn sink(config: Config) -> MqttSink {
        let (control, _) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared::new(Outbox::new(config.transport, Instant::now()), None));
        MqttSink { shared, control, config, overflowing: false, scratch: Vec::new() }
    }

    fn stats(transport_cache_full: u64, transport_cache_full_hits: u64) -> Event {
        let w = Window { start: UNIX_EPOCH, end: UNIX_EPOCH };
        w.event(Payload::DroppedEventsStatistics(DroppedEventsStatistics {
            source_event_type: EventType::ProcessTerminate,
            transport_cache_full,
            transport_cache_full_hits,
            ..Default::default()
        }))
    }

    #[test]
    fn events_queue_under_their_priority_and_off_is_not_queued() {
        let mut c = Config::default();
        c.set_priority(EventType::DroppedEventsStatistics, Priority::High);
        let mut s = sink(c.clone());
        s.publish(&mut std::iter::once(stats(2, 5))).unwrap();
        let items: Vec<Item> = s.shared.outbox.lock().unwrap().all_items().into_iter().cloned().collect();
        assert_eq!(items.len(), 1);
        assert_eq!((items[0].event_type, items[0].priority), (EventType::DroppedEventsStatistics, Priority::High));
        assert_eq!(
            items[0].carried.as_deref(),
            Some(&Carried { source: EventType::ProcessTerminate, drops: Drops::new(2, 5) })
        );
        let v: serde_json::Value = serde_json::from_slice(&items[0].bytes).unwrap();
        assert_eq!(v["payload"]["transport_cache_full_hits"], 5);
        c.set_priority(EventType::DroppedEventsStatistics, Priority::Off);
        s.configure(&c);
        s.publish(&mut std::iter::once(stats(0, 0))).unwrap();
        assert_eq!(s.shared.outbox.lock().unwrap().len(), 1, "an Off event is not queued");
    }

    /// `n` LocalUsers events of about 300 bytes, one hit each.
    fn users(n: usize) -> impl Iterator<Item = Event> {
        let w = Window { start: UNIX_EPOCH, end: UNIX_EPOCH };
        (0..n).map(move |i| {
            w.collected(
                EventType::LocalUsers,
                serde_json::json!({"user_name": format!("u{i}"), "pad": "x".repeat(200)}),
            )
        })
    }

    fn small_cache() -> Config {
        let mut c = Config::default();
        c.transport.max_cache_bytes = 10_000;
        c
    }

    #[test]
    fn with_the_broker_away_a_window_larger_than_the_cache_is_never_held_whole() {
        let c = small_cache();
        let mut s = sink(c.clone());
        let shared = s.shared.clone();
        let mut window = users(200);
        let mut pulled = 0;
        // Checked as each event is read: what was handed over before it
        // already obeys the cache's bound, nothing waits outside it.
        let mut checked = std::iter::from_fn(|| {
            let o = shared.outbox.lock().unwrap();
            assert_eq!(o.staged_bytes(), 0, "after {pulled} events");
            assert!(o.bytes() <= c.transport.max_cache_bytes, "after {pulled} events: {} bytes", o.bytes());
            drop(o);
            pulled += 1;
            window.next()
        });
        s.publish(&mut checked).unwrap();
        assert_eq!(pulled, 201);
        let o = s.shared.outbox.lock().unwrap();
        let kept: Vec<&Item> = o.all_items();
        assert!(!kept.is_empty() && kept.len() < 200, "{} kept", kept.len());
        let newest: serde_json::Value = serde_json::from_slice(&kept.last().unwrap().bytes).unwrap();
        assert_eq!(newest["payload"]["user_name"], "u199", "the oldest are dropped, not the newest");
        let kept_len = kept.len() as u64;
        drop(o);
        let drops = s.take_transport_drops(EventType::LocalUsers);
        assert_eq!(drops.records + kept_len, 200, "every event is kept or counted");
        assert_eq!(drops.hits, drops.records);
    }

    #[test]
    fn with_the_broker_there_a_window_waits_whole_for_room() {
        let mut s = sink(small_cache());
        s.shared.outbox.lock().unwrap().set_link_up(true);
        s.publish(&mut users(200)).unwrap();
        let o = s.shared.outbox.lock().unwrap();
        assert_eq!(o.len(), 200);
        assert!(o.staged_bytes() > 10_000, "staged, not dropped: the link may take it");
        drop(o);
        assert!(s.take_transport_drops(EventType::LocalUsers).is_zero());
        s.make_room();
        assert!(s.shared.outbox.lock().unwrap().staged_bytes() <= 10_000, "bounded before the next windows");
    }

    #[test]
    fn the_status_names_every_type_that_is_off() {
        let mut c = Config::default();
        let v = |b: Vec<u8>| serde_json::from_slice::<serde_json::Value>(&b).unwrap();
        assert_eq!(
            v(status_payload(Some(&c))),
            serde_json::json!({"state": "online", "event_types_off": ["Diagnostic"]})
        );
        c.process_collector_enabled = false;
        c.set_priority(EventType::LocalUsers, Priority::Off);
        let off = v(status_payload(Some(&c)))["event_types_off"].clone();
        assert_eq!(off, serde_json::json!(["Diagnostic", "ProcessCreate", "ProcessTerminate", "LocalUsers"]));
        assert_eq!(v(status_payload(None)), serde_json::json!({"state": "offline"}));
    }

    #[test]
    fn flush_now_makes_everything_ready() {
        let mut s = sink(Config::default());
        s.publish(&mut std::iter::once(stats(0, 0))).unwrap();
        s.shared.outbox.lock().unwrap().admit(true);
        assert!(!s.shared.outbox.lock().unwrap().has_ready(), "Low waits five hours");
        s.flush_now();
        assert!(s.shared.outbox.lock().unwrap().has_ready());
        // Staged when the flush came: ready as soon as it is admitted.
        s.publish(&mut std::iter::once(stats(0, 0))).unwrap();
        s.flush_now();
        s.shared.outbox.lock().unwrap().admit(true);
        assert_eq!(s.shared.outbox.lock().unwrap().all_items().len(), 2);
    }
}
