//! The run loop: drain every second, close windows when their interval ends,
//! hand events to the sink, and flush everything on SIGINT/SIGTERM.
use std::time::{Duration, Instant, SystemTime};

use agent_common::{
    Counter, FLAG_EXEC, FLAG_EXIT, FLAG_EXIT_PER_EVENT, FLAG_FORK, FLAG_NET, FLAG_NET_AGG_EPHEMERAL,
    FLAG_NET_PER_EVENT, FLAG_PROC_PER_EVENT,
};

use crate::{
    aggregate::{Aggregate, Evictions, ProcessRecord, TerminateRecord, WindowCache},
    config::{Config, EventSettings},
    drain::{Counters, Drainer},
    duration::Iso8601,
    enrich::{BootClock, UserNames},
    net::{ConnRecord, NetState},
    report::{self, DroppedEventsStatistics, Enrichment, Event, Payload, Window},
    sinks::Sink,
};

/// How often the kernel maps are emptied into the window caches. Short, so
/// that a full window cache discards its oldest records (as the spec says)
/// rather than the kernel refusing new ones; cheap, because an idle drain
/// is three syscalls and a grace period.
pub const DRAIN_PERIOD: Duration = Duration::from_secs(1);

/// Kernel flags for a configuration.
pub fn control_flags(c: &Config) -> u32 {
    let mut f = 0;
    if c.process_create.priority.enabled() {
        f |= FLAG_EXEC | FLAG_FORK;
        if !c.process_create.aggregate {
            f |= FLAG_PROC_PER_EVENT;
        }
    }
    if c.process_terminate.priority.enabled() {
        f |= FLAG_EXIT;
        if !c.process_terminate.aggregate {
            f |= FLAG_EXIT_PER_EVENT;
        }
    }
    if c.connection_create.priority.enabled() {
        f |= FLAG_NET;
        if !c.connection_create.aggregate {
            f |= FLAG_NET_PER_EVENT;
        }
        if c.aggregate_ephemeral_ports {
            f |= FLAG_NET_AGG_EPHEMERAL;
        }
    }
    f
}

/// The open window of one event type.
struct EventWindow<R: Aggregate> {
    name: &'static str,
    settings: EventSettings,
    cache: WindowCache<R>,
    opened: Instant,
    opened_wall: SystemTime,
    /// Kernel counters of the generations drained into this window.
    counters: Counters,
}

/// What a closed window hands to reporting.
struct Closed<R> {
    window: Window,
    records: Vec<R>,
    evicted: Evictions,
    counters: Counters,
}

impl<R: Aggregate> EventWindow<R> {
    fn new(name: &'static str, settings: EventSettings) -> Self {
        EventWindow {
            name,
            settings,
            cache: WindowCache::new(settings.cache_size as usize),
            opened: Instant::now(),
            opened_wall: SystemTime::now(),
            counters: Counters::default(),
        }
    }

    fn add(&mut self, batch: Vec<R>, counters: &Counters) {
        self.cache.add_batch(batch);
        self.counters.add(counters);
    }

    /// Whether the window ends at this drain. Drains come once per
    /// DRAIN_PERIOD, so a window ends at the drain nearest to its end rather
    /// than the first one after it (which would stretch a PT1S window to 2 s).
    fn due(&self, now: Instant) -> bool {
        now.duration_since(self.opened) + DRAIN_PERIOD / 2 >= self.settings.interval
    }

    fn close(&mut self) -> Closed<R> {
        let now = SystemTime::now();
        let (records, evicted) = self.cache.take();
        let closed = Closed {
            window: Window { start: self.opened_wall, end: now },
            records,
            evicted,
            counters: std::mem::take(&mut self.counters),
        };
        self.opened = Instant::now();
        self.opened_wall = now;
        if evicted.records > 0 {
            log::warn!(
                "{}: window cache full ({} records); discarded the {} oldest ({} events); raise cacheSize{}",
                self.name,
                self.cache.capacity(),
                evicted.records,
                evicted.hits,
                self.name
            );
        }
        closed
    }
}

pub struct Agent<S: Sink> {
    config: Config,
    drainer: Drainer,
    processes: EventWindow<ProcessRecord>,
    terminations: EventWindow<TerminateRecord>,
    connections: EventWindow<ConnRecord>,
    net: NetState,
    users: UserNames,
    clock: BootClock,
    sink: S,
}

impl<S: Sink> Agent<S> {
    pub fn new(config: Config, mut drainer: Drainer, sink: S, users: UserNames) -> anyhow::Result<Self> {
        drainer.set_control(control_flags(&config), config.cmdline_max)?;
        Ok(Agent {
            processes: EventWindow::new("ProcessCreate", config.process_create),
            terminations: EventWindow::new("ProcessTerminate", config.process_terminate),
            connections: EventWindow::new("ConnectionCreate", config.connection_create),
            net: NetState::new(config.dns_cache_size as usize),
            config,
            drainer,
            users,
            clock: BootClock::now(),
            sink,
        })
    }

    /// One drain, then every window whose interval has passed is reported.
    pub fn tick(&mut self) -> anyhow::Result<()> {
        self.drain()?;
        let now = Instant::now();
        if self.processes.due(now) {
            self.close_processes()?;
        }
        if self.terminations.due(now) {
            self.close_terminations()?;
        }
        if self.connections.due(now) {
            self.close_connections()?;
        }
        Ok(())
    }

    /// Final drain; every open window is reported, however short.
    pub fn shutdown(&mut self) -> anyhow::Result<()> {
        self.drain()?;
        self.close_processes()?;
        self.close_terminations()?;
        self.close_connections()?;
        Ok(())
    }

    fn drain(&mut self) -> anyhow::Result<()> {
        let d = self.drainer.drain()?;
        self.clock = BootClock::now();
        self.processes.add(d.processes, &d.counters);
        self.terminations.add(d.terminations, &d.counters);
        let conns = self.net.ingest(d.net, crate::enrich::boottime_ns());
        self.connections.add(conns, &d.counters);
        Ok(())
    }

    fn close_processes(&mut self) -> anyhow::Result<()> {
        let closed = self.processes.close();
        if !self.config.process_create.priority.enabled() && closed.records.is_empty() {
            return Ok(());
        }
        let mut enrich = Enrichment { users: &mut self.users, clock: self.clock };
        let mut events: Vec<Event> = closed
            .records
            .iter()
            .map(|r| closed.window.event(Payload::ProcessCreate(report::process_create(r, &mut enrich))))
            .collect();
        events.extend(self.dropped(
            &closed,
            "ProcessCreate",
            [Counter::ProcSeen, Counter::ProcMapFull, Counter::ProcRaceLost],
        ));
        self.sink.publish(&events)?;
        Ok(())
    }

    fn close_terminations(&mut self) -> anyhow::Result<()> {
        let closed = self.terminations.close();
        if !self.config.process_terminate.priority.enabled() && closed.records.is_empty() {
            return Ok(());
        }
        let mut events: Vec<Event> = closed
            .records
            .iter()
            .map(|r| closed.window.event(Payload::ProcessTerminate(report::process_terminate(r, self.clock))))
            .collect();
        events.extend(self.dropped(
            &closed,
            "ProcessTerminate",
            [Counter::ExitSeen, Counter::ExitMapFull, Counter::ExitRaceLost],
        ));
        self.sink.publish(&events)?;
        Ok(())
    }

    fn close_connections(&mut self) -> anyhow::Result<()> {
        let closed = self.connections.close();
        let (dns_evicted, dns_unparsed) = self.net.take_dns_losses();
        if dns_evicted > 0 {
            log::warn!("ConnectionCreate: DNS name cache full; dropped {dns_evicted} names; raise dnsCacheSizeConnectionCreate");
        }
        if dns_unparsed > 0 {
            log::debug!("ConnectionCreate: {dns_unparsed} DNS answers did not parse");
        }
        for (counter, what) in [
            (Counter::TrafficMapFull, "packets found the kernel traffic map full; their bytes are in no record"),
            (Counter::DnsRingFull, "DNS answers found the ring buffer full; their names are unknown"),
            (Counter::NetReadFailed, "socket namespace reads failed; those records have netns 0"),
        ] {
            let n = closed.counters.get(counter);
            if n > 0 {
                log::warn!("ConnectionCreate: {n} {what}");
            }
        }
        if !self.config.connection_create.priority.enabled() && closed.records.is_empty() {
            return Ok(());
        }
        let mut events: Vec<Event> = closed
            .records
            .iter()
            .map(|r| closed.window.event(Payload::ConnectionCreate(report::connection_create(r, self.clock))))
            .collect();
        events.extend(self.dropped(
            &closed,
            "ConnectionCreate",
            [Counter::ConnSeen, Counter::ConnMapFull, Counter::ConnRaceLost],
        ));
        self.sink.publish(&events)?;
        Ok(())
    }

    /// The window's DroppedEventsStatistics, sent every window (zeros
    /// included) so that a reader can tell "nothing lost" from "not reported".
    fn dropped<R>(&self, closed: &Closed<R>, source: &'static str, [seen, full, race]: [Counter; 3]) -> Option<Event> {
        if !self.config.dropped_stats_priority.enabled() {
            return None;
        }
        let map_full = closed.counters.get(full);
        if map_full > 0 {
            log::warn!(
                "{source}: {map_full} events found the kernel map full between two drains; raise cacheSize{source}"
            );
        }
        let stats = DroppedEventsStatistics::new(
            source,
            closed.counters.get(seen),
            closed.evicted,
            map_full,
            closed.counters.get(race),
        );
        Some(closed.window.event(Payload::DroppedEventsStatistics(stats)))
    }
}

/// Drives `agent` until SIGINT or SIGTERM, then flushes.
pub async fn run<S: Sink>(mut agent: Agent<S>) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    // Announced only now: a SIGTERM before the handlers above would have
    // killed the agent without its final drain.
    let c = &agent.config;
    log::info!(
        "collecting: ProcessCreate every {}, ProcessTerminate every {}, ConnectionCreate every {}",
        Iso8601(c.process_create.interval),
        Iso8601(c.process_terminate.interval),
        Iso8601(c.connection_create.interval)
    );
    let mut ticker = tokio::time::interval(DRAIN_PERIOD);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await; // the first tick is immediate
    loop {
        tokio::select! {
            _ = ticker.tick() => agent.tick()?,
            _ = sigint.recv() => { log::info!("SIGINT: final drain"); break }
            _ = sigterm.recv() => { log::info!("SIGTERM: final drain"); break }
        }
    }
    agent.shutdown()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Priority;

    #[test]
    fn flags_follow_config() {
        let mut c = Config::default();
        assert_eq!(control_flags(&c), FLAG_EXEC | FLAG_FORK | FLAG_EXIT | FLAG_NET);
        c.aggregate_ephemeral_ports = true;
        c.connection_create.aggregate = false;
        assert_eq!(
            control_flags(&c) & !(FLAG_EXEC | FLAG_FORK | FLAG_EXIT),
            FLAG_NET | FLAG_NET_PER_EVENT | FLAG_NET_AGG_EPHEMERAL
        );
        c.connection_create.priority = Priority::Off;
        c.process_create.aggregate = false;
        c.process_terminate.priority = Priority::Off;
        assert_eq!(control_flags(&c), FLAG_EXEC | FLAG_FORK | FLAG_PROC_PER_EVENT);
        c.process_create.priority = Priority::Off;
        assert_eq!(control_flags(&c), 0);
    }
}
