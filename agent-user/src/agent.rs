//! The run loop: drain every second, close windows when their interval ends,
//! hand events to the sink, apply desired configurations, and flush
//! everything on SIGINT/SIGTERM.
use std::time::{Duration, Instant, SystemTime};

use agent_common::{
    programs, Counter, FLAG_EXEC, FLAG_EXIT, FLAG_EXIT_PER_EVENT, FLAG_FORK, FLAG_NET, FLAG_NET_AGG_EPHEMERAL,
    FLAG_NET_PER_EVENT, FLAG_PROC_PER_EVENT,
};

use crate::{
    aggregate::{Aggregate, Evictions, ProcessRecord, TerminateRecord, WindowCache},
    config::{Config, EventSettings, EventType, RawConfig},
    drain::{Counters, Drainer},
    duration::Iso8601,
    ebpf::Programs,
    enrich::{BootClock, UserNames},
    net::{ConnRecord, NetState},
    report::{
        self, ConfigurationError, ConfigurationFieldError, DroppedEventsStatistics, Enrichment, Event, NetworkLosses,
        Payload, Window,
    },
    sinks::Sink,
};

/// Where a desired configuration comes from, as ConfigurationError names it.
pub const DESIRED_SOURCE: &str = "desired configuration (MQTT)";

/// How often the kernel maps are emptied into the window caches. Short, so
/// that a full window cache discards its oldest records (as the spec says)
/// rather than the kernel refusing new ones; cheap, because an idle drain
/// is three syscalls and a grace period.
pub const DRAIN_PERIOD: Duration = Duration::from_secs(1);

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

/// Attaches and detaches programs as `c` says. When the TCP state program
/// goes from detached to attached (at start, or when ConnectionCreate is
/// switched back on) the listeners already open are seeded from /proc, after
/// attaching, so that none opened in between is missed (see
/// `Programs::seed_listeners`). A failed seed costs owners, not the agent.
fn attach(programs: &mut Programs, c: &Config) -> anyhow::Result<()> {
    let tcp = programs::TCP_STATE;
    let seed = program_wanted(c, tcp) && !programs.is_attached(tcp);
    if seed {
        if let Err(e) = programs.clear_listeners() {
            log::warn!(
                "{e}; a listener closed while ConnectionCreate was off may lend its owner to the next on its port"
            );
        }
    }
    programs.set_attached(|p| program_wanted(c, p))?;
    if seed && programs.is_attached(tcp) {
        match programs.seed_listeners(c.cmdline_max) {
            // Kernel sockets and other PID namespaces have no owner to find;
            // unreadable fd tables are a missing privilege.
            Ok(r) if r.denied > 0 => log::warn!(
                "{r} (reading another process's fd links takes ptrace read access, normally CAP_SYS_PTRACE); \
                 connections accepted by listeners with no owner found report owner unknown"
            ),
            Ok(r) => log::info!("{r}"),
            Err(e) => log::warn!("{e}; connections accepted by listeners opened before now report owner unknown"),
        }
    }
    Ok(())
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
    /// Defaults < file < command line: what a desired configuration overlays.
    local: RawConfig,
    config: Config,
    drainer: Drainer,
    programs: Programs,
    processes: EventWindow<ProcessRecord>,
    terminations: EventWindow<TerminateRecord>,
    connections: EventWindow<ConnRecord>,
    net: NetState,
    users: UserNames,
    clock: BootClock,
    sink: S,
    /// The last desired configuration refused: a retained one comes back at
    /// every reconnect, and one ConfigurationError per payload is enough.
    last_refused: Option<Vec<u8>>,
}

impl<S: Sink> Agent<S> {
    /// Writes the control block, then attaches what the configuration needs:
    /// the first event already follows the configuration.
    pub fn new(
        local: RawConfig,
        config: Config,
        mut drainer: Drainer,
        mut programs: Programs,
        mut sink: S,
        users: UserNames,
    ) -> anyhow::Result<Self> {
        drainer.set_control(control_flags(&config) | programs.kernel_flags(), config.cmdline_max)?;
        attach(&mut programs, &config)?;
        sink.configure(&config);
        sink.report_config(&config.to_raw());
        Ok(Agent {
            processes: EventWindow::new("ProcessCreate", config.process_create),
            terminations: EventWindow::new("ProcessTerminate", config.process_terminate),
            connections: EventWindow::new("ConnectionCreate", config.connection_create),
            net: NetState::new(config.dns_cache_size as usize),
            local,
            config,
            drainer,
            programs,
            users,
            clock: BootClock::now(),
            sink,
            last_refused: None,
        })
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// One drain, then every window whose interval has passed is reported.
    pub fn tick(&mut self) -> anyhow::Result<()> {
        self.drain()?;
        let now = Instant::now();
        let due = [self.processes.due(now), self.terminations.due(now), self.connections.due(now)];
        if due.contains(&true) {
            self.sink.make_room();
        }
        if due[0] {
            self.close_processes()?;
        }
        if due[1] {
            self.close_terminations()?;
        }
        if due[2] {
            self.close_connections()?;
        }
        Ok(())
    }

    /// Final drain; every open window is reported, however short.
    pub fn shutdown(&mut self) -> anyhow::Result<()> {
        self.close_all_windows()
    }

    /// Drains, then reports every open window however short, and opens new
    /// ones. The window of a type that is off is not closed: it holds
    /// nothing, unless a configuration change is switching the type on, when
    /// it holds what the new flags recorded before their first drain; those
    /// belong to the new configuration's first window. (Sent under the old
    /// configuration they would be discarded by the sink while their
    /// statistics counted them.)
    fn close_all_windows(&mut self) -> anyhow::Result<()> {
        self.drain()?;
        self.sink.make_room();
        self.close_processes()?;
        self.close_terminations()?;
        self.close_connections()?;
        Ok(())
    }

    /// A desired configuration arrived. Valid and different: the current data
    /// is sent first, then the new configuration applies (seed 001). Invalid:
    /// the current configuration stays and a ConfigurationError is sent.
    pub fn desired(&mut self, payload: &[u8]) -> anyhow::Result<()> {
        let refused_before = self.last_refused.as_deref() == Some(payload);
        self.last_refused = None;
        match desired_config(&self.local, payload) {
            Ok(new) if new == self.config => {
                log::info!("desired configuration received; the effective configuration is unchanged");
                Ok(())
            }
            Ok(new) => {
                log::info!("desired configuration received: sending the current data, then applying it");
                self.apply(new)
            }
            Err(e) if refused_before => {
                self.last_refused = Some(payload.to_vec());
                log::debug!("{e} (again); keeping the current configuration");
                Ok(())
            }
            Err(e) => {
                self.last_refused = Some(payload.to_vec());
                log::warn!("{e}; keeping the current configuration");
                if self.config.collects(EventType::ConfigurationError) {
                    let now = SystemTime::now();
                    let w = Window { start: now, end: now };
                    let errors = e
                        .errors
                        .into_iter()
                        .map(|f| ConfigurationFieldError { field: f.field, reason: f.reason })
                        .collect();
                    let event =
                        w.event(Payload::ConfigurationError(ConfigurationError { source: e.source_name, errors }));
                    self.sink.publish(&[event])?;
                }
                Ok(())
            }
        }
    }

    fn apply(&mut self, new: Config) -> anyhow::Result<()> {
        // The new flags first, so that the last drain under the current
        // configuration takes every event recorded under the old ones: a
        // type switched off records nothing after its window is sent, and
        // nothing of it is counted in a window that no longer goes out.
        self.drainer.set_control(control_flags(&new) | self.programs.kernel_flags(), new.cmdline_max)?;
        // The current data, under the current configuration...
        self.close_all_windows()?;
        self.sink.flush_now();
        // ...then the new one.
        attach(&mut self.programs, &new)?;
        self.processes.reconfigure(new.process_create);
        self.terminations.reconfigure(new.process_terminate);
        // The DNS name cache keeps its start-up size (README, Configuration).
        self.connections.reconfigure(new.connection_create);
        self.sink.configure(&new);
        self.sink.report_config(&new.to_raw());
        self.config = new;
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
        if !self.config.collects(EventType::ProcessCreate) {
            return Ok(()); // stays open: see close_all_windows
        }
        let closed = self.processes.close();
        self.publish_window(
            closed,
            EventType::ProcessCreate,
            [Counter::ProcSeen, Counter::ProcMapFull, Counter::ProcRaceLost],
            None,
            |r, enrich| Payload::ProcessCreate(report::process_create(r, enrich)),
        )
    }

    fn close_terminations(&mut self) -> anyhow::Result<()> {
        if !self.config.collects(EventType::ProcessTerminate) {
            return Ok(());
        }
        let closed = self.terminations.close();
        self.publish_window(
            closed,
            EventType::ProcessTerminate,
            [Counter::ExitSeen, Counter::ExitMapFull, Counter::ExitRaceLost],
            None,
            |r, enrich| Payload::ProcessTerminate(report::process_terminate(r, enrich.clock)),
        )
    }

    fn close_connections(&mut self) -> anyhow::Result<()> {
        if !self.config.collects(EventType::ConnectionCreate) {
            return Ok(());
        }
        let closed = self.connections.close();
        let dns = self.net.take_dns_losses();
        if dns.unparsed > 0 {
            log::debug!("ConnectionCreate: {} DNS messages did not parse", dns.unparsed);
        }
        let losses = NetworkLosses {
            traffic_map_full: closed.counters.get(Counter::TrafficMapFull),
            tcp_socket_unreadable: closed.counters.get(Counter::TcpSocketUnreadable),
            dns_ring_full: closed.counters.get(Counter::DnsRingFull),
            dns_cache_full: dns.cache_full,
            dns_unsolicited: dns.unsolicited,
            dns_queries_lost: closed.counters.get(Counter::DnsQueryRingFull) + dns.query_table_full,
            netns_unreadable: closed.counters.get(Counter::NetReadFailed),
        };
        warn_network_losses(&losses);
        self.publish_window(
            closed,
            EventType::ConnectionCreate,
            [Counter::ConnSeen, Counter::ConnMapFull, Counter::ConnRaceLost],
            Some(losses),
            |r, enrich| Payload::ConnectionCreate(report::connection_create(r, enrich.clock)),
        )
    }

    /// Publishes a closed window: one event per record (made by `payload`),
    /// then its DroppedEventsStatistics from `counters`. Shared by every
    /// event type, so the rules of what a window sends are written once.
    fn publish_window<R>(
        &mut self,
        closed: Closed<R>,
        event_type: EventType,
        counters: [Counter; 3],
        network: Option<NetworkLosses>,
        payload: impl Fn(&R, &mut Enrichment<'_>) -> Payload,
    ) -> anyhow::Result<()> {
        let mut enrich = Enrichment { users: &mut self.users, clock: self.clock };
        let mut events: Vec<Event> =
            closed.records.iter().map(|r| closed.window.event(payload(r, &mut enrich))).collect();
        events.extend(self.dropped(&closed, event_type, counters, network));
        self.sink.publish(&events)?;
        Ok(())
    }

    /// The window's DroppedEventsStatistics, sent every window (zeros
    /// included) so that a reader can tell "nothing lost" from "not reported".
    fn dropped<R>(
        &mut self,
        closed: &Closed<R>,
        source_type: EventType,
        [seen, full, race]: [Counter; 3],
        network: Option<NetworkLosses>,
    ) -> Option<Event> {
        let source = source_type.name();
        let transport = self.sink.take_transport_drops(source_type);
        if !self.config.collects(EventType::DroppedEventsStatistics) {
            return None;
        }
        let map_full = closed.counters.get(full);
        if map_full > 0 {
            log::warn!(
                "{source}: {map_full} events found the kernel map full between two drains; raise cacheSize{source}"
            );
        }
        let mut stats = DroppedEventsStatistics::new(
            source,
            closed.counters.get(seen),
            closed.evicted,
            map_full,
            closed.counters.get(race),
        );
        stats.transport_cache_full = transport.records;
        stats.transport_cache_full_hits = transport.hits;
        stats.network = network;
        Some(closed.window.event(Payload::DroppedEventsStatistics(stats)))
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
    ] {
        if n > 0 {
            log::warn!("ConnectionCreate: {n} {what}");
        }
    }
}

/// Parses and resolves a desired configuration over the local layers. An
/// empty payload (a cleared retained message) means "no desired properties".
pub fn desired_config(local: &RawConfig, payload: &[u8]) -> Result<Config, crate::config::ConfigError> {
    let text = String::from_utf8_lossy(payload);
    let text = if text.trim().is_empty() { "{}" } else { &text };
    crate::config::load_layer(text, DESIRED_SOURCE, local).map(|(_, c)| c)
}

/// Drives `agent` until SIGINT or SIGTERM, then flushes.
pub async fn run<S: Sink>(
    mut agent: Agent<S>,
    mut desired: Option<tokio::sync::mpsc::UnboundedReceiver<Vec<u8>>>,
) -> anyhow::Result<()> {
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
            Some(payload) = async { desired.as_mut()?.recv().await } => agent.desired(&payload)?,
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

    #[test]
    fn desired_overlays_the_local_layers() {
        let local = RawConfig::parse(r#"{"cacheSizeProcessCreate":9,"cacheSizeProcessTerminate":5}"#, "f").unwrap();
        let c = desired_config(&local, br#"{"cacheSizeProcessCreate":7,"eventPriorityLogin":"Off"}"#).unwrap();
        assert_eq!(c.process_create.cache_size, 7, "desired wins over the file");
        assert_eq!(c.process_terminate.cache_size, 5, "what desired leaves out comes from the file");
        assert_eq!(c.priority(EventType::Login), Priority::Off);
        assert_eq!(desired_config(&local, b"").unwrap(), desired_config(&local, b"{}").unwrap());
        assert_eq!(desired_config(&local, b" \n").unwrap().process_create.cache_size, 9);
        let e = desired_config(&local, br#"{"cacheSizeProcessCreate":0}"#).unwrap_err();
        assert_eq!(e.source_name, DESIRED_SOURCE);
        assert_eq!(e.errors[0].field, "cacheSizeProcessCreate");
    }
}
