//! The broker connection: rumqttc's event loop, QoS 1 with a persistent
//! session, reconnect with backoff, last will, and PUBACK tracking so that an
//! event leaves the local cache only once the broker has it.
use std::{
    collections::{HashMap, VecDeque},
    fmt,
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use rumqttc::{
    AsyncClient, ConnectReturnCode, ConnectionError, Event, EventLoop, Incoming, LastWill, MqttOptions, Outgoing, QoS,
    TlsConfiguration, TlsError, Transport,
};
use tokio::sync::mpsc;

use super::{
    envelope::{Frame, Header, SCHEMA_VERSION},
    spool, Control, Shared,
};
use crate::{
    config::Priority,
    enrich::rfc3339,
    limits::{read_bounded, ReadError, MQTT_INCOMING_MAX_BYTES, PEM_MAX_BYTES},
};

#[derive(Debug, thiserror::Error)]
pub enum MqttError {
    #[error("--mqtt-url {0}")]
    Url(String),
    #[error(transparent)]
    File(#[from] ReadError),
    #[error("{0}")]
    Settings(String),
    #[error(transparent)]
    Spool(#[from] spool::SpoolError),
}

/// `mqtt://host[:port]` or `mqtts://host[:port]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerUrl {
    pub tls: bool,
    pub host: String,
    pub port: u16,
}

impl BrokerUrl {
    pub fn parse(url: &str) -> Result<BrokerUrl, MqttError> {
        let bad = |why: &str| MqttError::Url(format!("`{url}`: {why}; expected mqtt://host:1883 or mqtts://host:8883"));
        let (tls, rest) = if let Some(r) = url.strip_prefix("mqtt://") {
            (false, r)
        } else if let Some(r) = url.strip_prefix("mqtts://") {
            (true, r)
        } else {
            return Err(bad("the scheme must be mqtt:// or mqtts://"));
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.contains(['/', '@', '?']) {
            return Err(bad("only host and port are allowed (credentials go in --mqtt-username and a password file)"));
        }
        let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
            let (h, after) = v6.split_once(']').ok_or_else(|| bad("unclosed ["))?;
            (h, after.strip_prefix(':'))
        } else {
            match rest.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (rest, None),
            }
        };
        if host.is_empty() {
            return Err(bad("no host"));
        }
        let port = match port {
            Some(p) => p.parse().map_err(|_| bad("the port is not a number from 1 to 65535"))?,
            None if tls => 8883,
            None => 1883,
        };
        if port == 0 {
            return Err(bad("the port is not a number from 1 to 65535"));
        }
        Ok(BrokerUrl { tls, host: host.to_string(), port })
    }
}

/// A password: never printed, not even by `{:?}`.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: String) -> Secret {
        Secret(s)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// Device ids become topic levels: no `/`, `+`, `#`, and short enough
/// for the envelope header to stay small.
pub fn check_device_id(id: &str) -> Result<(), MqttError> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'));
    if ok {
        Ok(())
    } else {
        Err(MqttError::Settings(format!(
            "device id `{id}`: use 1 to 128 characters of letters, digits, `-`, `_`, `.`, `:` (it is a topic level)"
        )))
    }
}

/// The device id when none is given: /etc/machine-id, then the host name.
pub fn default_device_id() -> String {
    let machine =
        crate::limits::read_bounded("machine id", std::path::Path::new("/etc/machine-id"), 4096).unwrap_or_default();
    let machine = String::from_utf8_lossy(&machine);
    let machine = machine.trim();
    if check_device_id(machine).is_ok() {
        return machine.to_string();
    }
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most buf.len() bytes into buf.
    let host = if unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } == 0 {
        let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
        String::from_utf8_lossy(&buf[..end]).into_owned()
    } else {
        String::new()
    };
    if check_device_id(&host).is_ok() {
        host
    } else {
        "hitcount".into()
    }
}

/// Every topic of one device.
#[derive(Debug, Clone)]
pub struct Topics {
    pub events: String,
    pub desired: String,
    pub reported: String,
    pub status: String,
}

impl Topics {
    pub fn new(device: &str) -> Topics {
        Topics {
            events: format!("hitcount/{device}/events"),
            desired: format!("hitcount/{device}/config/desired"),
            reported: format!("hitcount/{device}/config/reported"),
            status: format!("hitcount/{device}/status"),
        }
    }
}

/// How to reach the broker.
#[derive(Debug, Clone)]
pub struct Settings {
    pub url: BrokerUrl,
    pub device_id: String,
    pub username: Option<String>,
    pub password: Option<Secret>,
    pub ca_file: Option<PathBuf>,
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
    pub spool_dir: Option<PathBuf>,
}

/// Largest packet sent: a message of maxMessageSizeInBytes plus topic and
/// header. What is read has its own, larger bound, MQTT_INCOMING_MAX_BYTES.
const MAX_PACKET: usize = 300 * 1024;
/// Messages handed to the client and not yet acknowledged.
const MAX_INFLIGHT: usize = 16;
const BACKOFF_FIRST: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// How long a shutdown waits for the broker to take what is queued.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

impl Settings {
    pub fn topics(&self) -> Topics {
        Topics::new(&self.device_id)
    }

    /// rumqttc options; reads the TLS files now so a wrong path fails at start.
    pub fn options(&self) -> Result<MqttOptions, MqttError> {
        check_device_id(&self.device_id)?;
        let mut o = MqttOptions::new(format!("hitcount-{}", self.device_id), &self.url.host, self.url.port);
        o.set_keep_alive(Duration::from_secs(30));
        // A persistent session: the broker keeps our subscription and the
        // QoS 1 messages meant for us while we are away.
        o.set_clean_session(false);
        o.set_max_packet_size(MQTT_INCOMING_MAX_BYTES, MAX_PACKET);
        o.set_last_will(LastWill::new(self.topics().status, super::status_payload(None), QoS::AtLeastOnce, true));
        match (&self.username, &self.password) {
            (Some(u), p) => {
                o.set_credentials(u, p.as_ref().map(|s| s.0.as_str()).unwrap_or(""));
            }
            (None, Some(_)) => return Err(MqttError::Settings("a password needs --mqtt-username".into())),
            (None, None) => {}
        }
        let read = |what, p: &PathBuf| read_bounded(what, p, PEM_MAX_BYTES);
        let client_auth = match (&self.client_cert, &self.client_key) {
            (Some(c), Some(k)) => Some((read("client certificate", c)?, read("client key", k)?)),
            (None, None) => None,
            _ => return Err(MqttError::Settings("--mqtt-client-cert and --mqtt-client-key go together".into())),
        };
        if self.url.tls {
            let ca = match &self.ca_file {
                Some(p) => read("CA file", p)?,
                None => {
                    return Err(MqttError::Settings(
                        "mqtts:// needs --mqtt-ca-file (the CA that signed the broker's certificate; for public \
                         CAs, /etc/ssl/certs/ca-certificates.crt)"
                            .into(),
                    ))
                }
            };
            o.set_transport(Transport::Tls(TlsConfiguration::Simple { ca, alpn: None, client_auth }));
        } else if self.ca_file.is_some() || client_auth.is_some() {
            return Err(MqttError::Settings("TLS files were given but the URL is mqtt://; use mqtts://".into()));
        }
        Ok(o)
    }
}

/// What kind of problem a connection error is. Warnings are given once per
/// kind, not per text: one refused TLS handshake arrives as the broker's alert
/// or as a reset or closed connection, whichever the timing gives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failure {
    NoListener,
    /// The broker answered CONNECT with this refusal.
    Refused(ConnectReturnCode),
    /// We do not trust the broker's certificate.
    BrokerCertificate,
    /// The broker ended the TLS connection before accepting us.
    ClientCertificate,
    Tls,
    Io(std::io::ErrorKind),
    Other,
}

/// A connection error: its kind, and words that say what to fix.
struct Problem {
    kind: Failure,
    text: String,
}

/// Classifies `e`; `accepted`: the broker had accepted the connection.
fn classify(e: &ConnectionError, url: &BrokerUrl, client_cert: bool, accepted: bool) -> Problem {
    use rumqttc::tokio_rustls::rustls::{AlertDescription as A, Error as Rustls};
    use std::io::ErrorKind as K;
    let at = format!("{}:{}", url.host, url.port);
    // TLS errors come inside I/O errors: from the handshake (Tls), or from
    // the first read after it (Io), since a TLS 1.3 server checks our
    // certificate only after the client has finished.
    let io = match e {
        ConnectionError::Io(io) | ConnectionError::Tls(TlsError::Io(io)) => Some(io),
        _ => None,
    };
    let tls = match e {
        ConnectionError::Tls(TlsError::TLS(t)) => Some(t),
        _ => io.and_then(|io| io.get_ref()).and_then(|inner| inner.downcast_ref::<Rustls>()),
    };
    let handshake = url.tls && !accepted;
    let kind = match (e, tls) {
        (ConnectionError::ConnectionRefused(code), _) => Failure::Refused(*code),
        (_, Some(Rustls::InvalidCertificate(_))) => Failure::BrokerCertificate,
        (
            _,
            Some(Rustls::AlertReceived(
                A::CertificateRequired
                | A::BadCertificate
                | A::UnsupportedCertificate
                | A::CertificateRevoked
                | A::CertificateExpired
                | A::CertificateUnknown
                | A::UnknownCA,
            )),
        ) if handshake => Failure::ClientCertificate,
        _ if io.is_some_and(|io| io.kind() == K::ConnectionRefused) => Failure::NoListener,
        _ if handshake
            && io.is_some_and(|io| {
                matches!(io.kind(), K::ConnectionReset | K::ConnectionAborted | K::BrokenPipe | K::UnexpectedEof)
            }) =>
        {
            Failure::ClientCertificate
        }
        (ConnectionError::Tls(_), _) => Failure::Tls,
        _ => io.map_or(Failure::Other, |io| Failure::Io(io.kind())),
    };
    let detail = io.map_or_else(|| e.to_string(), ToString::to_string);
    let text = match kind {
        Failure::Refused(ConnectReturnCode::BadUserNamePassword) => {
            "the broker refused the user name or password (check --mqtt-username and --mqtt-password-file or \
             HITCOUNT_MQTT_PASSWORD)"
                .into()
        }
        // mosquitto answers a wrong password with "not authorized".
        Failure::Refused(ConnectReturnCode::NotAuthorized) => {
            "the broker refused this client as not authorized (check --mqtt-username and --mqtt-password-file or \
             HITCOUNT_MQTT_PASSWORD, and the broker's ACLs)"
                .into()
        }
        Failure::Refused(code) => format!("the broker refused the connection: {code:?}"),
        Failure::BrokerCertificate => {
            format!(
                "TLS with {at} failed: {detail} (check --mqtt-ca-file: the CA that signed the broker's certificate)"
            )
        }
        Failure::ClientCertificate if client_cert => format!(
            "TLS with {at}: the broker closed the connection before accepting it ({detail}); it most likely \
             rejected our client certificate: check --mqtt-client-cert/--mqtt-client-key and that the broker \
             trusts the CA that signed it"
        ),
        Failure::ClientCertificate => format!(
            "TLS with {at}: the broker closed the connection before accepting it ({detail}); it most likely \
             requires a client certificate: pass --mqtt-client-cert and --mqtt-client-key"
        ),
        Failure::Tls => format!(
            "TLS with {at} failed: {detail} (check --mqtt-ca-file, and --mqtt-client-cert/--mqtt-client-key if the \
             broker requires client certificates)"
        ),
        Failure::NoListener => format!("no broker is listening at {at}"),
        Failure::Io(_) | Failure::Other => format!("connection to {at} failed: {detail}"),
    };
    Problem { kind, text }
}

/// Whether a failure of `kind` is news: not the kind `last` recorded.
fn news(last: &mut Option<Failure>, kind: Failure) -> bool {
    last.replace(kind) != Some(kind)
}

enum Polled {
    Event(Event),
    Error(ConnectionError),
}

/// The size of a packet the broker sent that was over our read limit.
/// rumqttc cannot skip such a packet: the connection is dropped unread.
fn oversized(e: &ConnectionError) -> Option<usize> {
    match e {
        ConnectionError::MqttState(rumqttc::StateError::Deserialization(
            rumqttc::mqttbytes::Error::PayloadSizeLimitExceeded(n),
        )) => Some(*n),
        _ => None,
    }
}

/// Owns the event loop. After an error it waits for the connection task to
/// take back what was in flight, then discards rumqttc's own copies of
/// unacknowledged publishes (the outbox sends them again, so keeping them
/// would send them twice) and reconnects after a backoff.
async fn poll_loop(mut el: EventLoop, tx: mpsc::Sender<Polled>, mut resume: mpsc::Receiver<()>) {
    let mut backoff = BACKOFF_FIRST;
    loop {
        match el.poll().await {
            Ok(ev) => {
                if matches!(ev, Event::Incoming(Incoming::ConnAck(_))) {
                    backoff = BACKOFF_FIRST;
                }
                if tx.send(Polled::Event(ev)).await.is_err() {
                    return;
                }
            }
            Err(ConnectionError::RequestsDone) => return,
            Err(e) => {
                let oversized_seen = oversized(&e).is_some();
                if tx.send(Polled::Error(e)).await.is_err() || resume.recv().await.is_none() {
                    return;
                }
                el.clean();
                el.pending.clear();
                // The broker would send the unread message again at every
                // reconnect of this session: a clean one discards it (and
                // the subscription, which Connection does not renew).
                if oversized_seen {
                    el.mqtt_options.set_clean_session(true);
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
    }
}

/// What each publish handed to the client was, in order: rumqttc reports
/// the packet id it chose as `Outgoing::Publish` in the same order.
enum Sent {
    Message(u64),
    Other,
}

struct Connection {
    client: AsyncClient,
    topics: Topics,
    device_id: String,
    connected: bool,
    sent: VecDeque<Sent>,
    pkids: HashMap<u16, u64>,
    reported: Option<(Vec<u8>, Vec<u8>)>,
    url: BrokerUrl,
    client_cert: bool,
    /// The kind of the last error, warned about once.
    last_failure: Option<Failure>,
    /// The broker sent a desired configuration too large to read: not
    /// subscribed again until the agent restarts (see poll_loop).
    desired_unreadable: bool,
    shared: Arc<Shared>,
}

impl Connection {
    fn frame(&self, priority: Priority) -> Frame {
        let sent_at = rfc3339(SystemTime::now());
        Frame::new(&Header {
            schema_version: SCHEMA_VERSION,
            device_id: &self.device_id,
            agent_version: env!("CARGO_PKG_VERSION"),
            sent_at: &sent_at,
            priority: priority.wire_name(),
        })
    }

    /// The cache is told too: while the broker is away, what the agent
    /// hands over enters the cache at once (see `Outbox::set_link_up`).
    fn set_connected(&mut self, up: bool) {
        self.connected = up;
        self.shared.outbox.lock().expect("outbox lock").set_link_up(up);
    }

    fn publish_other(&mut self, topic: &str, payload: Vec<u8>, retain: bool) {
        if self.client.try_publish(topic, QoS::AtLeastOnce, retain, payload).is_ok() {
            self.sent.push_back(Sent::Other);
        }
    }

    /// Hands ready messages to the client, up to the in-flight limit.
    fn pump(&mut self) {
        let shared = self.shared.clone();
        let mut outbox = shared.outbox.lock().expect("outbox lock");
        outbox.admit(self.connected);
        if !self.connected {
            return;
        }
        while outbox.inflight_messages() < MAX_INFLIGHT {
            let Some(m) = outbox.next_message(|p| self.frame(p)) else { break };
            match self.client.try_publish(&self.topics.events, QoS::AtLeastOnce, false, m.payload) {
                Ok(()) => self.sent.push_back(Sent::Message(m.id)),
                Err(e) => {
                    // The request channel is full (it holds far more than the
                    // in-flight limit, so this is not expected): try later.
                    log::debug!("publish deferred: {e}");
                    outbox.unsend(m.id);
                    break;
                }
            }
        }
    }

    fn on_event(&mut self, ev: Event, desired: &mpsc::UnboundedSender<Vec<u8>>) {
        match ev {
            Event::Incoming(Incoming::ConnAck(ack)) => {
                self.set_connected(true);
                self.last_failure = None;
                log::info!("connected to the MQTT broker (session present: {})", ack.session_present);
                if self.desired_unreadable {
                    log::warn!("not subscribed to {}: its message is too large to read", self.topics.desired);
                } else if let Err(e) = self.client.try_subscribe(&self.topics.desired, QoS::AtLeastOnce) {
                    log::warn!("cannot subscribe to {}: {e}", self.topics.desired);
                }
                if let Some((r, status)) = self.reported.clone() {
                    let topic = self.topics.status.clone();
                    self.publish_other(&topic, status, true);
                    let topic = self.topics.reported.clone();
                    self.publish_other(&topic, r, true);
                }
            }
            Event::Outgoing(Outgoing::Publish(pkid)) => {
                if let Some(Sent::Message(id)) = self.sent.pop_front() {
                    self.pkids.insert(pkid, id);
                }
            }
            Event::Incoming(Incoming::PubAck(ack)) => {
                if let Some(id) = self.pkids.remove(&ack.pkid) {
                    self.shared.outbox.lock().expect("outbox lock").ack(id);
                }
            }
            Event::Incoming(Incoming::Publish(p)) if p.topic == self.topics.desired => {
                // Closed only when the agent has stopped.
                let _ = desired.send(p.payload.to_vec());
            }
            _ => {}
        }
    }

    fn on_error(&mut self, e: ConnectionError) {
        if let Some(n) = oversized(&e) {
            // Only the desired topic is subscribed: the packet was on it.
            self.desired_unreadable = true;
            log::error!(
                "the broker sent a packet of {n} bytes on {}, more than the {MQTT_INCOMING_MAX_BYTES} bytes this \
                 client reads; reconnecting with a clean session (which discards it) and without subscribing to \
                 that topic until the agent restarts; events keep flowing. Clear that retained message and publish \
                 a configuration of at most {} bytes",
                self.topics.desired,
                crate::limits::CONFIG_MAX_BYTES
            );
        }
        let Problem { kind, text } = classify(&e, &self.url, self.client_cert, self.connected);
        let news = news(&mut self.last_failure, kind);
        if self.connected {
            log::warn!("MQTT connection lost: {text}; events queue locally and are sent after reconnecting");
        } else if news {
            log::warn!("MQTT: {text}; retrying");
        } else {
            log::debug!("MQTT: {text}; retrying");
        }
        self.set_connected(false);
        self.sent.clear();
        self.pkids.clear();
        self.shared.outbox.lock().expect("outbox lock").requeue_inflight();
    }
}

/// The connection task: runs until [`Control::Shutdown`].
pub async fn run(
    settings: Settings,
    options: MqttOptions,
    shared: Arc<Shared>,
    mut control: mpsc::UnboundedReceiver<Control>,
    desired: mpsc::UnboundedSender<Vec<u8>>,
) {
    let (client, el) = AsyncClient::new(options, 64);
    let (ev_tx, mut ev_rx) = mpsc::channel(64);
    let (resume_tx, resume_rx) = mpsc::channel(1);
    let poller = tokio::spawn(poll_loop(el, ev_tx, resume_rx));
    let mut c = Connection {
        client,
        topics: settings.topics(),
        device_id: settings.device_id.clone(),
        connected: false,
        sent: VecDeque::new(),
        pkids: HashMap::new(),
        reported: None,
        url: settings.url.clone(),
        client_cert: settings.client_cert.is_some(),
        last_failure: None,
        desired_unreadable: false,
        shared: shared.clone(),
    };
    let mut statistics_lost = 0;
    let reply = loop {
        let next_due = shared.outbox.lock().expect("outbox lock").poll_due(Instant::now());
        tokio::select! {
            polled = ev_rx.recv() => match polled {
                Some(Polled::Event(ev)) => c.on_event(ev, &desired),
                Some(Polled::Error(e)) => {
                    c.on_error(e);
                    let _ = resume_tx.try_send(());
                }
                None => break None,
            },
            _ = tokio::time::sleep_until(next_due.into()) => {}
            _ = shared.wake.notified() => {}
            ctl = control.recv() => match ctl {
                Some(Control::Reported { reported, status }) => {
                    c.reported = Some((reported.clone(), status.clone()));
                    if c.connected {
                        let topic = c.topics.status.clone();
                        c.publish_other(&topic, status, true);
                        let topic = c.topics.reported.clone();
                        c.publish_other(&topic, reported, true);
                    }
                }
                Some(Control::Shutdown(reply)) => break Some(reply),
                None => break None,
            },
        }
        let lost = shared.outbox.lock().expect("outbox lock").statistics_lost;
        if lost > statistics_lost {
            log::warn!(
                "local cache full of DroppedEventsStatistics alone: {} dropped (their transport counts move to the \
                 next report); raise maxLocalCacheSizeInBytes",
                lost - statistics_lost
            );
            statistics_lost = lost;
        }
        c.pump();
        shared.record();
    };
    shutdown(&mut c, &mut ev_rx, &resume_tx, &desired, &settings).await;
    poller.abort();
    if let Some(r) = reply {
        let _ = r.send(());
    }
}

/// Sends everything queued (waiting up to SHUTDOWN_GRACE for the broker),
/// marks the device offline, disconnects, and spools what is left.
async fn shutdown(
    c: &mut Connection,
    ev_rx: &mut mpsc::Receiver<Polled>,
    resume: &mpsc::Sender<()>,
    desired: &mpsc::UnboundedSender<Vec<u8>>,
    settings: &Settings,
) {
    c.shared.outbox.lock().expect("outbox lock").flush_all();
    let deadline = tokio::time::Instant::now() + SHUTDOWN_GRACE;
    while c.connected && !c.shared.outbox.lock().expect("outbox lock").is_empty() {
        c.pump();
        match tokio::time::timeout_at(deadline, ev_rx.recv()).await {
            Ok(Some(Polled::Event(ev))) => c.on_event(ev, desired),
            Ok(Some(Polled::Error(e))) => {
                c.on_error(e);
                let _ = resume.try_send(());
            }
            Ok(None) | Err(_) => break,
        }
        c.shared.record();
    }
    if c.connected {
        // A clean DISCONNECT suppresses the last will, so say it ourselves.
        let status = c.topics.status.clone();
        c.publish_other(&status, super::status_payload(None), true);
        let _ = c.client.try_disconnect();
        let until = tokio::time::Instant::now() + Duration::from_secs(3);
        while let Ok(Some(Polled::Event(ev))) = tokio::time::timeout_at(until, ev_rx.recv()).await {
            if matches!(ev, Event::Outgoing(Outgoing::Disconnect)) {
                break;
            }
        }
        log::info!("disconnected from the MQTT broker");
    }
    let left = {
        let mut outbox = c.shared.outbox.lock().expect("outbox lock");
        outbox.requeue_inflight();
        // What is spooled obeys the bound too.
        outbox.admit(false);
        outbox.len()
    };
    match (&settings.spool_dir, c.shared.rewrite()) {
        (Some(dir), Some(Ok(n))) => log::info!("spool {}: {n} unsent events kept for the next start", dir.display()),
        (_, Some(Err(e))) => {
            log::error!("{e}; of {left} unsent events, the journal holds those it could write before")
        }
        _ if left > 0 => {
            log::warn!("{left} events were not sent (broker unreachable); --spool-dir keeps them across restarts")
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_broker_urls() {
        let u = BrokerUrl::parse("mqtt://localhost").unwrap();
        assert_eq!(u, BrokerUrl { tls: false, host: "localhost".into(), port: 1883 });
        assert_eq!(BrokerUrl::parse("mqtts://h:9").unwrap(), BrokerUrl { tls: true, host: "h".into(), port: 9 });
        assert_eq!(BrokerUrl::parse("mqtts://h").unwrap().port, 8883);
        assert_eq!(BrokerUrl::parse("mqtt://[::1]:1884/").unwrap().host, "::1");
        for bad in ["http://h", "mqtt://", "mqtt://h:x", "mqtt://h:0", "mqtt://u:p@h", "mqtt://h/t", "h:1883"] {
            let e = BrokerUrl::parse(bad).unwrap_err().to_string();
            assert!(e.starts_with("--mqtt-url"), "{bad}: {e}");
        }
    }

    #[test]
    fn secrets_do_not_print() {
        let s = Secret::new("hunter2".into());
        assert!(!format!("{s:?}").contains("hunter2"));
        let settings = Settings {
            url: BrokerUrl::parse("mqtt://h").unwrap(),
            device_id: "d".into(),
            username: Some("u".into()),
            password: Some(s),
            ca_file: None,
            client_cert: None,
            client_key: None,
            spool_dir: None,
        };
        assert!(!format!("{settings:?}").contains("hunter2"));
    }

    #[test]
    fn device_ids_are_topic_safe() {
        assert!(check_device_id("edge-01.site_a").is_ok());
        for bad in ["", "a/b", "a+b", "a#", "a b", &"x".repeat(129)] {
            assert!(check_device_id(bad).is_err(), "{bad}");
        }
        assert!(check_device_id(&default_device_id()).is_ok());
    }

    #[test]
    fn topics_follow_the_device() {
        let t = Topics::new("dev1");
        assert_eq!(t.events, "hitcount/dev1/events");
        assert_eq!(t.desired, "hitcount/dev1/config/desired");
        assert_eq!(t.reported, "hitcount/dev1/config/reported");
        assert_eq!(t.status, "hitcount/dev1/status");
    }

    fn tls_url() -> BrokerUrl {
        BrokerUrl::parse("mqtts://h:8883").unwrap()
    }

    fn io(kind: std::io::ErrorKind) -> std::io::Error {
        std::io::Error::from(kind)
    }

    /// A rustls error as tokio-rustls hands it over.
    fn rustls(e: rumqttc::tokio_rustls::rustls::Error) -> std::io::Error {
        std::io::Error::new(std::io::ErrorKind::InvalidData, e)
    }

    #[test]
    fn a_missing_client_certificate_is_one_kind_whatever_form_it_arrives_in() {
        use rumqttc::tokio_rustls::rustls::{AlertDescription, Error};
        use std::io::ErrorKind as K;
        // mosquitto with require_certificate, and no client certificate: its
        // alert or a reset seen in the end-to-end test, and what other
        // timing can give (a closed connection or pipe, during the handshake).
        let forms = [
            ConnectionError::Io(rustls(Error::AlertReceived(AlertDescription::CertificateRequired))),
            ConnectionError::Io(io(K::ConnectionReset)),
            ConnectionError::Io(std::io::Error::new(K::ConnectionAborted, "connection closed by peer")),
            ConnectionError::Tls(TlsError::Io(io(K::ConnectionReset))),
            ConnectionError::Io(io(K::BrokenPipe)),
        ];
        let mut last = None;
        let mut warnings = 0;
        for e in forms.iter().chain(&forms) {
            let p = classify(e, &tls_url(), false, false);
            assert_eq!(p.kind, Failure::ClientCertificate, "{e}");
            assert!(p.text.contains("pass --mqtt-client-cert and --mqtt-client-key"), "{}", p.text);
            warnings += usize::from(news(&mut last, p.kind));
        }
        assert_eq!(warnings, 1, "one warning for one problem");
        // With a certificate given, the words point at it.
        let p = classify(&forms[0], &tls_url(), true, false);
        assert!(p.text.contains("rejected our client certificate"), "{}", p.text);
        // A reset once the broker had accepted us is no certificate problem,
        // nor is one without TLS.
        assert_eq!(classify(&forms[1], &tls_url(), false, true).kind, Failure::Io(K::ConnectionReset));
        let plain = BrokerUrl::parse("mqtt://h").unwrap();
        assert_eq!(classify(&forms[1], &plain, false, false).kind, Failure::Io(K::ConnectionReset));
    }

    #[test]
    fn distinct_problems_are_distinct_kinds_that_name_their_fix() {
        use rumqttc::tokio_rustls::rustls::{CertificateError, Error};
        let cases = [
            (
                ConnectionError::ConnectionRefused(ConnectReturnCode::NotAuthorized),
                "--mqtt-password-file",
                Failure::Refused(ConnectReturnCode::NotAuthorized),
            ),
            (
                ConnectionError::ConnectionRefused(ConnectReturnCode::BadUserNamePassword),
                "--mqtt-password-file",
                Failure::Refused(ConnectReturnCode::BadUserNamePassword),
            ),
            (
                ConnectionError::Tls(TlsError::Io(rustls(Error::InvalidCertificate(CertificateError::UnknownIssuer)))),
                "--mqtt-ca-file",
                Failure::BrokerCertificate,
            ),
            (
                ConnectionError::Io(io(std::io::ErrorKind::ConnectionRefused)),
                "no broker is listening at h:8883",
                Failure::NoListener,
            ),
            (ConnectionError::NetworkTimeout, "connection to h:8883 failed: Network timeout", Failure::Other),
        ];
        let mut last = None;
        for (e, words, kind) in &cases {
            let p = classify(e, &tls_url(), false, false);
            assert_eq!(p.kind, *kind, "{e}");
            assert!(p.text.contains(words), "{e}: {}", p.text);
            assert!(news(&mut last, p.kind), "{e}: a new problem is warned about");
        }
        assert!(!news(&mut last, Failure::Other), "the same one again is not");
    }

    #[test]
    fn tls_needs_a_ca_and_plain_refuses_tls_files() {
        let mut s = Settings {
            url: BrokerUrl::parse("mqtts://h").unwrap(),
            device_id: "d".into(),
            username: None,
            password: None,
            ca_file: None,
            client_cert: None,
            client_key: None,
            spool_dir: None,
        };
        assert!(s.options().unwrap_err().to_string().contains("--mqtt-ca-file"));
        s.ca_file = Some("/nonexistent/ca.pem".into());
        assert!(s.options().unwrap_err().to_string().contains("cannot read CA file /nonexistent/ca.pem"));
        s.url = BrokerUrl::parse("mqtt://h").unwrap();
        assert!(s.options().unwrap_err().to_string().contains("use mqtts://"));
        s.ca_file = None;
        s.client_cert = Some("/c".into());
        assert!(s.options().unwrap_err().to_string().contains("go together"));
    }
}
