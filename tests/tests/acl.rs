//! Privileged end to end: the broker ACL in deploy/mosquitto-acl.conf,
//! enforced by a real mosquitto, with the real agent as one device. A
//! device reads only its own desired configuration; another device cannot
//! write it; the operator can.
use std::{
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use rumqttc::{Client, Event, Incoming, MqttOptions, QoS};
use tests::{marker, mosquitto, mosquitto::Broker, privileged, skip, Agent};

const WAIT: Duration = Duration::from_secs(30);
const OPERATOR: &str = "hitcount-operator";

/// An MQTT client logged in as `user` on the broker's authenticated
/// listener, recording (topic, payload) of everything it receives.
/// (topic, payload) of every message received.
type Received = Arc<Mutex<Vec<(String, Vec<u8>)>>>;

struct Peer {
    client: Client,
    got: Received,
    /// Subscribed again at every reconnect (a clean session forgets them).
    filters: Arc<Mutex<Vec<String>>>,
}

impl Peer {
    fn connect(broker: &Broker, user: &str, password: &str) -> Peer {
        let mut o = MqttOptions::new(marker("peer"), "127.0.0.1", broker.port);
        o.set_credentials(user, password);
        o.set_keep_alive(Duration::from_secs(30));
        let (client, mut connection) = Client::new(o, 100);
        let got: Received = Arc::new(Mutex::new(Vec::new()));
        let filters: Arc<Mutex<Vec<String>>> = Arc::new(Mutex::new(Vec::new()));
        let (sink, resubscribe, again) = (got.clone(), client.clone(), filters.clone());
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for ev in connection.iter() {
                match ev {
                    Ok(Event::Incoming(Incoming::ConnAck(a))) => {
                        for f in again.lock().unwrap().iter() {
                            let _ = resubscribe.try_subscribe(f, QoS::AtLeastOnce);
                        }
                        let _ = ready_tx.send(a.code);
                    }
                    Ok(Event::Incoming(Incoming::Publish(p))) => {
                        sink.lock().unwrap().push((p.topic.clone(), p.payload.to_vec()))
                    }
                    Ok(_) => {}
                    Err(rumqttc::ConnectionError::RequestsDone) => break,
                    Err(_) => std::thread::sleep(Duration::from_millis(200)),
                }
            }
        });
        let code = ready_rx.recv_timeout(Duration::from_secs(20)).expect("no CONNACK");
        assert_eq!(code, rumqttc::ConnectReturnCode::Success, "{user} refused");
        Peer { client, got, filters }
    }

    fn subscribe(&self, filter: &str) {
        self.filters.lock().unwrap().push(filter.to_string());
        self.client.subscribe(filter, QoS::AtLeastOnce).unwrap();
        // No SUBACK wait: mosquitto acknowledges a denied subscription too
        // (MQTT 3.1.1 has no refusal code it uses for ACLs).
        std::thread::sleep(Duration::from_millis(500));
    }

    fn publish_retained(&self, topic: &str, payload: &str) {
        self.client.publish(topic, QoS::AtLeastOnce, true, payload.as_bytes().to_vec()).unwrap();
    }

    fn on(&self, topic: &str) -> Vec<Vec<u8>> {
        self.got.lock().unwrap().iter().filter(|(t, _)| t == topic).map(|(_, p)| p.clone()).collect()
    }

    fn wait_for(&self, broker: &Broker, what: &str, pred: impl Fn(&Peer) -> bool) {
        let started = Instant::now();
        while started.elapsed() < WAIT {
            if pred(self) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let got: Vec<String> =
            self.got.lock().unwrap().iter().map(|(t, p)| format!("{t}: {}", String::from_utf8_lossy(p))).collect();
        panic!("timed out waiting for {what}; received {got:#?}; broker log:\n{}", broker.log());
    }
}

fn password_file(password: &str) -> PathBuf {
    let p = std::env::temp_dir().join(marker("acl-pw"));
    std::fs::write(&p, password).unwrap();
    p
}

#[test]
fn a_device_reads_only_its_own_desired_topic_and_others_cannot_write_it() {
    if !privileged("a_device_reads_only_its_own_desired_topic_and_others_cannot_write_it") {
        return;
    }
    if let Err(why) = mosquitto::ensure_installed() {
        skip("a_device_reads_only_its_own_desired_topic_and_others_cannot_write_it", &why);
        return;
    }
    let acl = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/mosquitto-acl.conf");
    let (a, b) = (marker("dev-a"), marker("dev-b"));
    let broker = Broker::start_with_acl(&acl, &[(&a, "pw-a"), (&b, "pw-b"), (OPERATOR, "pw-op")]).unwrap();
    let operator = Peer::connect(&broker, OPERATOR, "pw-op");
    operator.subscribe("hitcount/#");
    let pw = password_file("pw-a");
    let cfg = std::env::temp_dir().join(format!("{}.json", marker("acl-cfg")));
    std::fs::write(&cfg, r#"{"eventPriorityConnectionCreate":"Off","eventPriorityLocalUsers":"Off"}"#).unwrap();
    let agent = Agent::start(&[
        "--mqtt-url",
        &format!("mqtt://127.0.0.1:{}", broker.port),
        "--device-id",
        &a,
        "--mqtt-username",
        &a,
        "--mqtt-password-file",
        pw.to_str().unwrap(),
        "--config",
        cfg.to_str().unwrap(),
    ])
    .unwrap();
    let reported = format!("hitcount/{a}/config/reported");
    let desired = format!("hitcount/{a}/config/desired");
    operator.wait_for(&broker, "the device writing its own reported configuration", |p| !p.on(&reported).is_empty());

    // Another device: cannot write A's desired configuration, nor read A's topics.
    let other = Peer::connect(&broker, &b, "pw-b");
    other.subscribe(&format!("hitcount/{a}/#"));
    other.publish_retained(&desired, r#"{"cacheSizeProcessCreate":7}"#);
    std::thread::sleep(Duration::from_secs(3));
    assert!(operator.on(&desired).is_empty(), "the broker accepted B's write to A's desired topic");
    assert!(!agent.stderr().iter().any(|l| l.contains("desired configuration received")), "{:?}", agent.stderr());

    // The operator can, and the device applies it.
    operator.publish_retained(&desired, r#"{"cacheSizeProcessCreate":7}"#);
    operator.wait_for(&broker, "the applied configuration reported", |p| {
        p.on(&reported)
            .iter()
            .any(|r| serde_json::from_slice::<serde_json::Value>(r).unwrap()["cacheSizeProcessCreate"] == 7)
    });
    // B still sees none of A's topics: not the retained desired message,
    // not the reported configuration, not the status.
    let late = Peer::connect(&broker, &b, "pw-b");
    late.subscribe(&format!("hitcount/{a}/#"));
    std::thread::sleep(Duration::from_secs(1));
    assert!(other.got.lock().unwrap().is_empty(), "B read A's topics: {:?}", other.got.lock().unwrap());
    assert!(late.got.lock().unwrap().is_empty(), "B read A's retained topics");
    agent.stop_logs().unwrap();
    let _ = std::fs::remove_file(pw);
    let _ = std::fs::remove_file(cfg);
}
