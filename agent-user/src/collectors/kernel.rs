//! The kernel-fed collectors (ProcessCreate, ProcessTerminate,
//! ConnectionCreate): which kernel flags and programs a configuration
//! needs, and their windows. One drain fills all three (drain.rs); each
//! window closes at its own interval into its events and losses.
use std::time::{Instant, SystemTime};

use agent_common::{
    programs, Counter, FLAG_EXEC, FLAG_EXIT, FLAG_EXIT_PER_EVENT, FLAG_FORK, FLAG_NET, FLAG_NET_AGG_EPHEMERAL,
    FLAG_NET_PER_EVENT, FLAG_PROC_PER_EVENT,
};

use super::{connection_create, process_create, process_terminate};
use crate::{
    aggregate::{Aggregate, Evictions, ProcessRecord, TerminateRecord, WindowCache},
    config::{Config, EventSettings, EventType},
    drain::{Counters, Drained},
    net::{ConnRecord, NetState},
    report::{Enrichment, Event, Losses, NetworkLosses, Payload, Window},
};

/// How often the kernel maps are emptied into the window caches. Short, so
/// that a full window cache discards its oldest records (as the spec says)
/// rather than the kernel refusing new ones; cheap, because an idle drain
/// is three syscalls and a grace period.
pub const DRAIN_PERIOD: std::time::Duration = std::time::Duration::from_secs(1);

/// Kernel flags for a configuration.
pub fn control_flags(c: &Config) -> u32 {
    let mut f = 0;
    if c.collects(EventType::ProcessCreate) {
        f |= FLAG_EXEC | FLAG_FORK;
        if !c.process_create.aggregate {
            f |= FLAG_PROC_PER_EVENT;
        }
    }
    if c.collects(EventType::ProcessTerminate) {
        f |= FLAG_EXIT;
        if !c.process_terminate.aggregate {
            f |= FLAG_EXIT_PER_EVENT;
        }
    }
    if c.collects(EventType::ConnectionCreate) {
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

/// Whether a program must be attached. The exec and fork programs also keep
/// TASK_EXE, the executable of every process, which ProcessTerminate reads:
/// they stay attached while either process event type is collected.
pub fn program_wanted(c: &Config, program: &str) -> bool {
    let create = c.collects(EventType::ProcessCreate);
    let terminate = c.collects(EventType::ProcessTerminate);
    match program {
        programs::PROCESS_EXEC | programs::PROCESS_FORK => create || terminate,
        programs::PROCESS_EXIT => terminate,
        programs::TCP_STATE
        | programs::SKB_INGRESS
        | programs::SKB_EGRESS
        | programs::SOCK_CREATE
        | programs::TCP_SEND
        | programs::TCP_RECV => c.collects(EventType::ConnectionCreate),
        _ => true,
    }
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

    /// New settings for the next window (the current one was just closed).
    fn reconfigure(&mut self, settings: EventSettings) {
        self.settings = settings;
        self.cache.set_capacity(settings.cache_size as usize);
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
                "{}: window cache full ({} records); pushed out the {} oldest, {} events kept in rollups, {} lost; raise cacheSize{}",
                self.name,
                self.cache.capacity(),
                evicted.records,
                evicted.rolled_up,
                evicted.hits,
                self.name
            );
        }
        closed
    }
}

/// A closed window of one kernel-fed type. Its events are made from the
/// records as they are read, each record dropped once converted: a window
/// is never held as records and events at once.
pub struct ClosedWindow<'a> {
    pub event_type: EventType,
    pub window: Window,
    pub events: Box<dyn Iterator<Item = Event> + 'a>,
    pub losses: Losses,
    pub network: Option<NetworkLosses>,
}

/// The three kernel-fed windows and the network collector's state.
pub struct KernelWindows {
    processes: EventWindow<ProcessRecord>,
    terminations: EventWindow<TerminateRecord>,
    connections: EventWindow<ConnRecord>,
    net: NetState,
}

impl KernelWindows {
    pub fn new(config: &Config) -> KernelWindows {
        KernelWindows {
            processes: EventWindow::new("ProcessCreate", config.process_create),
            terminations: EventWindow::new("ProcessTerminate", config.process_terminate),
            connections: EventWindow::new("ConnectionCreate", config.connection_create),
            net: NetState::new(config.dns_cache_size as usize),
        }
    }

    /// One drain's records and counters.
    pub fn add(&mut self, d: Drained, now_boot_ns: u64) {
        self.processes.add(d.processes, &d.counters);
        self.terminations.add(d.terminations, &d.counters);
        let conns = self.net.ingest(d.net, now_boot_ns);
        self.connections.add(conns, &d.counters);
    }

    /// Whether any window ends at this drain.
    pub fn any_due(&self, now: Instant) -> bool {
        self.processes.due(now) || self.terminations.due(now) || self.connections.due(now)
    }

    /// New settings for the next windows (the current ones were just closed).
    /// The DNS name cache keeps its start-up size (README, Configuration).
    pub fn reconfigure(&mut self, new: &Config) {
        self.processes.reconfigure(new.process_create);
        self.terminations.reconfigure(new.process_terminate);
        self.connections.reconfigure(new.connection_create);
    }

    /// Closes the windows that are due at `now` (every one with None). The
    /// window of a type that is off is not closed: it holds nothing, unless
    /// a configuration change is switching the type on, when it holds what
    /// the new flags recorded before their first drain; those belong to the
    /// new configuration's first window. (Sent under the old configuration
    /// they would be discarded by the sink while their statistics counted them.)
    pub fn close<E>(
        &mut self,
        config: &Config,
        now: Option<Instant>,
        enrich: &mut Enrichment<'_>,
        mut publish: impl FnMut(ClosedWindow<'_>) -> Result<(), E>,
    ) -> Result<(), E> {
        let due = |w: bool, t: EventType| config.collects(t) && (now.is_none() || w);
        if due(now.is_some_and(|n| self.processes.due(n)), EventType::ProcessCreate) {
            let closed = self.processes.close();
            publish(closed.report(EventType::ProcessCreate, process_create::COUNTERS, None, |r| {
                Payload::ProcessCreate(process_create::process_create(&r, enrich))
            }))?;
        }
        if due(now.is_some_and(|n| self.terminations.due(n)), EventType::ProcessTerminate) {
            let closed = self.terminations.close();
            let clock = enrich.clock;
            publish(closed.report(EventType::ProcessTerminate, process_terminate::COUNTERS, None, move |r| {
                Payload::ProcessTerminate(process_terminate::process_terminate(&r, clock))
            }))?;
        }
        if due(now.is_some_and(|n| self.connections.due(n)), EventType::ConnectionCreate) {
            let closed = self.connections.close();
            let network = connection_create::network_losses(&closed.counters, &mut self.net);
            let clock = enrich.clock;
            publish(closed.report(
                EventType::ConnectionCreate,
                connection_create::COUNTERS,
                Some(network),
                move |r| Payload::ConnectionCreate(connection_create::connection_create(&r, clock)),
            ))?;
        }
        Ok(())
    }
}

impl<R> Closed<R> {
    /// One event per record (made by `payload` when it is read) and the
    /// window's losses from the kernel counters `[seen, map full, insert
    /// race, rolled up]`.
    fn report<'a>(
        self,
        t: EventType,
        [seen, full, race, rolled]: [Counter; 4],
        network: Option<NetworkLosses>,
        mut payload: impl FnMut(R) -> Payload + 'a,
    ) -> ClosedWindow<'a>
    where
        R: 'a,
    {
        let window = self.window;
        let events = Box::new(self.records.into_iter().map(move |r| window.event(payload(r))));
        let map_full = self.counters.get(full);
        if map_full > 0 {
            log::warn!("{t}: {map_full} events found the kernel map full between two drains; raise cacheSize{t}");
        }
        let losses = Losses {
            seen: self.counters.get(seen),
            evicted: self.evicted,
            kernel_map_full: map_full,
            kernel_rolled_up: self.counters.get(rolled),
            kernel_insert_race: self.counters.get(race),
            sources_unreadable: 0,
        };
        ClosedWindow { event_type: t, window, events, losses, network }
    }
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
        c = Config::default();
        c.process_collector_enabled = false;
        assert_eq!(control_flags(&c), FLAG_NET, "the process switch leaves the network collector on");
    }

    #[test]
    fn exec_and_fork_stay_attached_while_terminate_needs_them() {
        let names = [programs::PROCESS_EXEC, programs::PROCESS_FORK, programs::PROCESS_EXIT];
        let wanted = |c: &Config| names.map(|p| program_wanted(c, p));
        let mut c = Config::default();
        assert_eq!(wanted(&c), [true, true, true]);
        c.process_create.priority = Priority::Off;
        assert_eq!(wanted(&c), [true, true, true], "TASK_EXE still feeds ProcessTerminate");
        c.process_terminate.priority = Priority::Off;
        assert_eq!(wanted(&c), [false, false, false]);
        c.process_create.priority = Priority::High;
        assert_eq!(wanted(&c), [true, true, false]);
        c.process_collector_enabled = false;
        assert_eq!(wanted(&c), [false, false, false]);
    }
}
