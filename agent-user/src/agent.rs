//! The run loop: drain every second, close windows when their interval ends,
//! hand events to the sink, apply desired configurations, and flush
//! everything on SIGINT/SIGTERM.
use std::time::{Instant, SystemTime};

use agent_common::programs;

use crate::{
    collectors::{
        kernel::KernelWindows,
        login,
        snapshot::{Sent, Snapshots},
        window::EventWindow as UserWindow,
        Context, EventSource, UserSpace,
    },
    config::{Config, EventType, RawConfig},
    drain::Drainer,
    duration::Iso8601,
    ebpf::Programs,
    enrich::{BootClock, UserNames},
    events::Kind,
    hostfs::HostFs,
    report::{
        ConfigurationChange, ConfigurationChangeItem, ConfigurationError, DroppedEventsStatistics, Enrichment, Event,
        Losses, NetworkLosses, Payload, Window,
    },
    sinks::Sink,
    transport::outbox::Drops,
};

/// Where a desired configuration comes from, as ConfigurationError names it.
pub const DESIRED_SOURCE: &str = "desired configuration (MQTT)";

pub use crate::collectors::kernel::{control_flags, program_wanted, DRAIN_PERIOD};

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

/// How often the libraries the PAM programs attach to are looked for again:
/// a container started with its own libpam, or an upgrade replacing it, is
/// covered within this.
pub const LIBPAM_RESCAN: std::time::Duration = std::time::Duration::from_secs(10);

/// Attaches the PAM programs to every libpam found now, when `c` wants the
/// pam source (detaches them all when not). Returns the files attached.
fn attach_libpam(programs: &mut Programs, host: &HostFs, c: &Config) -> Vec<std::path::PathBuf> {
    let libraries = if login::wants_pam(c) { login::pam::find_libraries(host) } else { Vec::new() };
    for (path, e) in programs.sync_libpam(&libraries) {
        log::warn!("Login: cannot attach the PAM uprobes to {}: {e}", path.display());
    }
    programs.libpam()
}

pub struct Agent<S: Sink> {
    /// Defaults < file < command line: what a desired configuration overlays.
    local: RawConfig,
    config: Config,
    drainer: Drainer,
    programs: Programs,
    kernel: KernelWindows,
    users: UserNames,
    clock: BootClock,
    sink: S,
    host: HostFs,
    snapshots: Snapshots,
    sources: Vec<Box<dyn EventSource>>,
    /// The libpam files the PAM programs are attached to, and when to look again.
    libpam: (Vec<std::path::PathBuf>, Instant),
    /// Windows of the event types aggregated in user space (Diagnostic).
    user_windows: Vec<UserWindow>,
    /// The last desired configuration refused: a retained one comes back at
    /// every reconnect, and one ConfigurationError per payload is enough.
    last_refused: Option<Vec<u8>>,
    /// Since when ConfigurationErrors are counted, and how many were made:
    /// their DroppedEventsStatistics (see close_configuration_errors).
    configuration_errors: (SystemTime, u64),
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
        user_space: UserSpace,
    ) -> anyhow::Result<Self> {
        drainer.set_control(control_flags(&config) | programs.kernel_flags(), config.cmdline_max)?;
        attach(&mut programs, &config)?;
        sink.configure(&config);
        sink.report_config(&config.to_raw());
        let user_windows = user_space
            .sources
            .iter()
            .filter_map(|s| Some(UserWindow::new(s.event_type(), config.event_settings(s.event_type())?)))
            .collect();
        let host = HostFs::new(&config.host_root);
        let libpam = attach_libpam(&mut programs, &host, &config);
        let mut sources = user_space.sources;
        for s in &mut sources {
            s.start(&Context { libpam: &libpam, ..Context::new(&host, &config) });
        }
        Ok(Agent {
            host,
            user_windows,
            kernel: KernelWindows::new(&config),
            local,
            config,
            drainer,
            programs,
            users,
            clock: BootClock::now(),
            sink,
            snapshots: user_space.snapshots,
            sources,
            libpam: (libpam, Instant::now() + LIBPAM_RESCAN),
            last_refused: None,
            configuration_errors: (SystemTime::now(), 0),
        })
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// One drain, then every window whose interval has passed is reported.
    pub fn tick(&mut self) -> anyhow::Result<()> {
        self.drain()?;
        let now = Instant::now();
        if now >= self.libpam.1 && login::wants_pam(&self.config) {
            self.libpam = (attach_libpam(&mut self.programs, &self.host, &self.config), now + LIBPAM_RESCAN);
        }
        self.poll_sources(false)?;
        if self.kernel.any_due(now) {
            self.sink.make_room();
        }
        self.close_kernel_windows(Some(now))?;
        for i in 0..self.user_windows.len() {
            if self.user_windows[i].due(now, DRAIN_PERIOD) {
                self.close_user_window(i)?;
            }
        }
        if self.kernel.any_due(now) {
            self.close_configuration_errors()?;
        }
        self.take_snapshots()
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
        self.poll_sources(true)?;
        self.sink.make_room();
        self.close_kernel_windows(None)?;
        for i in 0..self.user_windows.len() {
            self.close_user_window(i)?;
        }
        self.close_configuration_errors()?;
        Ok(())
    }

    /// ConfigurationError has no window of its own: its statistics ride with
    /// the next window that closes after one was made or dropped.
    fn close_configuration_errors(&mut self) -> anyhow::Result<()> {
        let transport = self.sink.take_transport_drops(EventType::ConfigurationError);
        let (start, seen) = std::mem::replace(&mut self.configuration_errors, (SystemTime::now(), 0));
        let window = Window { start, end: self.configuration_errors.0 };
        match configuration_error_statistics(seen, transport) {
            Some(s) if self.config.collects(EventType::DroppedEventsStatistics) => {
                self.sink.publish(&mut std::iter::once(window.event(Payload::DroppedEventsStatistics(s))))?;
            }
            _ => {}
        }
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
                    let event = w.event(Payload::ConfigurationError(ConfigurationError::from(e)));
                    self.sink.publish(&mut std::iter::once(event))?;
                    self.configuration_errors.1 += 1;
                }
                Ok(())
            }
        }
    }

    fn apply(&mut self, new: Config) -> anyhow::Result<()> {
        // Sent first and whatever the new priorities say: a change that
        // switches everything off must still be seen.
        let changes = config_changes(&self.config, &new);
        for c in &changes {
            log::info!("configuration change from {DESIRED_SOURCE}: {} {} -> {}", c.property, c.from, c.to);
        }
        let now = SystemTime::now();
        let change = ConfigurationChange { source: DESIRED_SOURCE.into(), changes };
        let change = Window { start: now, end: now }.event(Payload::ConfigurationChange(change));
        self.sink.publish(&mut std::iter::once(change))?;
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
        self.libpam = (attach_libpam(&mut self.programs, &self.host, &new), Instant::now() + LIBPAM_RESCAN);
        self.kernel.reconfigure(&new);
        for w in &mut self.user_windows {
            if let Some(settings) = new.event_settings(w.event_type) {
                w.reconfigure(settings);
            }
        }
        self.sink.configure(&new);
        self.sink.report_config(&new.to_raw());
        self.config = new;
        // Seed 002: after a configuration change a snapshot collector sends
        // the current data at once.
        self.snapshots.request_all();
        self.take_snapshots()
    }

    fn drain(&mut self) -> anyhow::Result<()> {
        let d = self.drainer.drain()?;
        self.clock = BootClock::now();
        self.kernel.add(d, crate::enrich::boottime_ns());
        Ok(())
    }

    /// Reports the kernel-fed windows that are due at `now` (all with None).
    fn close_kernel_windows(&mut self, now: Option<Instant>) -> anyhow::Result<()> {
        let mut enrich = Enrichment { users: &mut self.users, clock: self.clock };
        let (config, sink) = (&self.config, &mut self.sink);
        self.kernel.close(config, now, &mut enrich, |c| {
            let transport = sink.take_transport_drops(c.event_type);
            sink.publish(&mut closed_events(config, c.event_type, c.window, c.events, c.losses, c.network, transport))
        })?;
        Ok(())
    }

    /// Polls every user-space event source: events of aggregated types go
    /// to their window, the others (hotplug) are sent at once.
    fn poll_sources(&mut self, flush: bool) -> anyhow::Result<()> {
        let cx = Context { libpam: &self.libpam.0, flush, ..Context::new(&self.host, &self.config) };
        let now = SystemTime::now();
        let mut at_once = Vec::new();
        for source in &mut self.sources {
            let t = source.event_type();
            let taken = source.poll(&cx);
            if !self.config.collects(t) {
                continue;
            }
            for f in &taken.failures {
                log::warn!("{t}: cannot read {}: {}", f.source, f.reason);
            }
            match self.user_windows.iter_mut().find(|w| w.event_type == t) {
                Some(w) if t.kind() == Kind::Event => w.add(taken.items, taken.lost, now),
                _ => {
                    if taken.lost > 0 {
                        log::warn!("{t}: {} events lost before they were read", taken.lost);
                    }
                    let w = Window { start: now, end: now };
                    at_once.extend(taken.items.into_iter().map(|i| w.collected(t, i.payload)));
                }
            }
        }
        if !at_once.is_empty() {
            self.sink.publish(&mut at_once.into_iter())?;
        }
        Ok(())
    }

    fn close_user_window(&mut self, i: usize) -> anyhow::Result<()> {
        let t = self.user_windows[i].event_type;
        if !self.config.collects(t) {
            return Ok(()); // stays open: see close_all_windows
        }
        let (window, events, losses) = self.user_windows[i].close();
        if losses.evicted.records > 0 {
            log::warn!(
                "{t}: window cache full; discarded the {} oldest records; raise cacheSize{t}",
                losses.evicted.records
            );
        }
        let transport = self.sink.take_transport_drops(t);
        self.sink.publish(&mut closed_events(&self.config, t, window, events.into_iter(), losses, None, transport))?;
        Ok(())
    }

    /// Takes the snapshots that are due and publishes each with its statistics.
    fn take_snapshots(&mut self) -> anyhow::Result<()> {
        let cx = Context::new(&self.host, &self.config);
        let (config, sink) = (&self.config, &mut self.sink);
        self.snapshots.take_due(&cx, Instant::now(), |t, sent| {
            let transport = sink.take_transport_drops(t);
            sink.publish(&mut snapshot_window(config, t, sent, transport))
        })?;
        Ok(())
    }
}

/// What a closed window (or a snapshot) of type `t` sends: its events, then
/// its DroppedEventsStatistics, sent every time (zeros included) so that a
/// reader can tell "nothing lost" from "not reported". The one rule for
/// every event type, kernel-fed or not.
///
/// The statistics are made here, before the events are read, so that they
/// carry the transport drops taken before the window was handed over.
pub fn closed_events(
    config: &Config,
    t: EventType,
    window: Window,
    events: impl Iterator<Item = Event>,
    losses: Losses,
    network: Option<NetworkLosses>,
    transport: Drops,
) -> impl Iterator<Item = Event> {
    let stats = config.collects(EventType::DroppedEventsStatistics).then(|| {
        let mut stats = DroppedEventsStatistics::new(t, losses);
        stats.transport_cache_full = transport.records;
        stats.transport_cache_full_hits = transport.hits;
        stats.spool_records_lost = transport.spool_lost;
        stats.network = network;
        window.event(Payload::DroppedEventsStatistics(stats))
    });
    events.chain(stats)
}

/// The DroppedEventsStatistics of ConfigurationError: `seen` made since the
/// last one, `transport` dropped by a full local cache. None when neither.
fn configuration_error_statistics(seen: u64, transport: Drops) -> Option<DroppedEventsStatistics> {
    if seen == 0 && transport.records == 0 && transport.spool_lost == 0 {
        return None;
    }
    let mut s = DroppedEventsStatistics::new(EventType::ConfigurationError, Losses { seen, ..Default::default() });
    s.transport_cache_full = transport.records;
    s.transport_cache_full_hits = transport.hits;
    s.spool_records_lost = transport.spool_lost;
    Some(s)
}

/// What a snapshot sends (see [`closed_events`]).
pub fn snapshot_window(config: &Config, t: EventType, sent: Sent, transport: Drops) -> impl Iterator<Item = Event> {
    closed_events(config, t, sent.window, sent.events.into_iter(), sent.losses, None, transport)
}

/// Parses and resolves a desired configuration over the local layers. An
/// empty payload (a cleared retained message) means "no desired properties".
/// One larger than a configuration file may be is refused unparsed.
pub fn desired_config(local: &RawConfig, payload: &[u8]) -> Result<Config, crate::config::ConfigError> {
    let max = crate::limits::CONFIG_MAX_BYTES;
    if payload.len() as u64 > max {
        let reason = format!("{} bytes, more than the {max} bytes a configuration may have", payload.len());
        let error = crate::config::FieldError { field: "(document)".into(), reason };
        return Err(crate::config::ConfigError::new(DESIRED_SOURCE, vec![error]));
    }
    let text = String::from_utf8_lossy(payload);
    let text = if text.trim().is_empty() { "{}" } else { &text };
    let (layer, config) = crate::config::load_layer(text, DESIRED_SOURCE, local)?;
    // Which host is read, and what may be changed remotely, are the device's
    // business; and what it locked stays as it set it.
    let device = local.resolve(&Config::default(), "local configuration")?;
    let set = serde_json::to_value(&layer).expect("config serializes");
    let refused: Vec<crate::config::FieldError> = set
        .as_object()
        .into_iter()
        .flat_map(|o| o.keys())
        .filter(|k| !device.remote_may_set(k))
        .map(|k| crate::config::FieldError {
            field: k.clone(),
            reason: if crate::config::LOCAL_ONLY.contains(&k.as_str()) {
                "may only be set locally (command line or the configuration file)".into()
            } else {
                "locked on this device (remoteConfigurationLocked)".into()
            },
        })
        .collect();
    if !refused.is_empty() {
        return Err(crate::config::ConfigError::new(DESIRED_SOURCE, refused));
    }
    Ok(config)
}

/// What changed from `old` to `new`, property by property (effective values).
pub fn config_changes(old: &Config, new: &Config) -> Vec<ConfigurationChangeItem> {
    let (old, new) = (serde_json::to_value(old.to_raw()), serde_json::to_value(new.to_raw()));
    let (Ok(serde_json::Value::Object(old)), Ok(serde_json::Value::Object(new))) = (old, new) else {
        return Vec::new();
    };
    new.into_iter()
        .filter(|(k, v)| old.get(k) != Some(v))
        .map(|(k, v)| ConfigurationChangeItem { from: old.get(&k).cloned().unwrap_or_default(), property: k, to: v })
        .collect()
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

    #[test]
    fn locked_and_local_only_properties_are_refused_by_name() {
        let local = RawConfig::parse(
            r#"{"remoteConfigurationLocked":["eventPriorityProcessCreate","collectorEnabledProcess"]}"#,
            "f",
        )
        .unwrap();
        let e =
            desired_config(&local, br#"{"eventPriorityProcessCreate":"Off","cacheSizeProcessCreate":9}"#).unwrap_err();
        assert_eq!(e.errors.len(), 1, "{e}");
        assert_eq!(e.errors[0].field, "eventPriorityProcessCreate");
        assert!(e.errors[0].reason.contains("remoteConfigurationLocked"), "{e}");
        assert_eq!(desired_config(&local, br#"{"cacheSizeProcessCreate":9}"#).unwrap().process_create.cache_size, 9);
        for key in ["hostRoot", "remoteConfigurationLocked"] {
            let value = if key == "hostRoot" { r#""/tmp""# } else { "[]" };
            let e = desired_config(&RawConfig::default(), format!(r#"{{"{key}":{value}}}"#).as_bytes()).unwrap_err();
            assert_eq!(e.errors[0].field, key);
            assert!(e.errors[0].reason.contains("only be set locally"), "{e}");
        }
        let all = RawConfig::parse(r#"{"remoteConfigurationLocked":["*"]}"#, "f").unwrap();
        assert!(desired_config(&all, br#"{"lowPriorityMessageFrequency":"PT1M"}"#).is_err(), "* locks everything");
        assert!(desired_config(&all, b"{}").is_ok(), "an empty desired object changes nothing");
        let e = RawConfig::parse(r#"{"remoteConfigurationLocked":["nope"]}"#, "f")
            .unwrap()
            .resolve(&Config::default(), "f");
        assert!(e.unwrap_err().to_string().contains("remoteConfigurationLocked: unknown properties: \"nope\""));
    }

    #[test]
    fn a_change_names_each_property_with_old_and_new_values() {
        let old = Config::default();
        let mut new = old.clone();
        new.set_priority(EventType::ProcessCreate, Priority::Off);
        new.transport.low_frequency = std::time::Duration::from_secs(60);
        let changes = config_changes(&old, &new);
        let got: Vec<(String, String, String)> =
            changes.iter().map(|c| (c.property.clone(), c.from.to_string(), c.to.to_string())).collect();
        assert_eq!(
            got,
            [
                ("eventPriorityProcessCreate".to_string(), "\"Medium\"".to_string(), "\"Off\"".to_string()),
                ("lowPriorityMessageFrequency".to_string(), "\"PT5H\"".to_string(), "\"PT1M\"".to_string()),
            ]
        );
        assert!(config_changes(&old, &old).is_empty());
        let mut everything_off = old.clone();
        for t in EventType::ALL {
            everything_off.set_priority(t, Priority::Off);
        }
        assert!(everything_off.collects(EventType::ConfigurationChange), "a change can never be silenced");
    }

    #[test]
    fn configuration_errors_are_counted_like_any_other_type() {
        use crate::transport::outbox::Drops;
        assert_eq!(configuration_error_statistics(0, Drops::default()), None);
        let s = configuration_error_statistics(3, Drops { records: 2, hits: 2, ..Drops::default() }).unwrap();
        assert_eq!(s.source_event_type, EventType::ConfigurationError);
        assert_eq!((s.events_seen, s.dropped_events), (3, 0));
        assert_eq!((s.transport_cache_full, s.transport_cache_full_hits), (2, 2));
        let s = configuration_error_statistics(0, Drops { records: 1, hits: 1, ..Drops::default() }).unwrap();
        assert_eq!((s.events_seen, s.transport_cache_full), (0, 1), "a drop is reported after its window");
    }

    #[test]
    fn an_oversized_desired_configuration_is_refused_unparsed_naming_its_size() {
        let local = RawConfig::default();
        // Valid JSON, every key unknown: only the size is reported.
        let big = format!("{{{}\"x\":1}}", " ".repeat(400_000));
        let e = desired_config(&local, big.as_bytes()).unwrap_err();
        assert_eq!((e.total, e.errors[0].field.as_str()), (1, "(document)"));
        assert_eq!(e.errors[0].reason, "400007 bytes, more than the 65536 bytes a configuration may have");
        // At the bound it is parsed.
        let at = format!("{{{}}}", " ".repeat(65_534));
        assert_eq!(desired_config(&local, at.as_bytes()).unwrap(), Config::default());
    }

    #[test]
    fn a_closed_window_sends_its_events_then_its_statistics_unless_they_are_off() {
        let t = std::time::UNIX_EPOCH;
        let w = Window { start: t, end: t + std::time::Duration::from_secs(5) };
        let events = vec![w.collected(EventType::LocalUsers, serde_json::json!({"user_name": "root"}))];
        let losses = Losses { seen: 3, sources_unreadable: 1, ..Default::default() };
        let transport = Drops { records: 2, hits: 4, spool_lost: 1 };
        let mut c = Config::default();
        let sent: Vec<Event> =
            closed_events(&c, EventType::LocalUsers, w, events.clone().into_iter(), losses, None, transport).collect();
        assert_eq!(sent.len(), 2);
        assert_eq!(sent[0], events[0], "the events first, unchanged");
        let Payload::DroppedEventsStatistics(s) = &sent[1].payload else { panic!("{:?}", sent[1]) };
        assert_eq!(s.source_event_type, EventType::LocalUsers);
        assert_eq!((s.events_seen, s.sources_unreadable), (3, 1));
        assert_eq!((s.transport_cache_full, s.transport_cache_full_hits, s.spool_records_lost), (2, 4, 1));
        assert_eq!(
            (sent[1].window_start.as_str(), sent[1].window_end.as_str()),
            ("1970-01-01T00:00:00.000Z", "1970-01-01T00:00:05.000Z")
        );
        c.set_priority(EventType::DroppedEventsStatistics, Priority::Off);
        let sent: Vec<Event> =
            closed_events(&c, EventType::LocalUsers, w, events.clone().into_iter(), losses, None, transport).collect();
        assert_eq!(sent, events);
    }
}
