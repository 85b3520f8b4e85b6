//! Private mosquitto brokers for the end-to-end tests: installed from the
//! distribution if missing, one process per test on free 127.0.0.1 ports,
//! a CA and certificates made here with the openssl CLI, stopped on Drop.
//!
//! Every broker also has a plain anonymous listener for the test's own
//! subscriber (`per_listener_settings`), so the subscriber is the same
//! whatever the agent's listener demands.
use std::{
    net::{TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use rumqttc::{Client, Event, Incoming, MqttOptions, QoS};
use serde_json::Value;

/// Installs mosquitto with apt when it is not there. Returns why not, if it
/// cannot be installed (the caller skips with that reason).
pub fn ensure_installed() -> Result<(), String> {
    if Path::new("/usr/sbin/mosquitto").exists() && Path::new("/usr/bin/mosquitto_passwd").exists() {
        return Ok(());
    }
    let status = Command::new("apt-get")
        .args(["install", "-y", "mosquitto", "mosquitto-clients"])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    match status {
        Ok(s) if s.success() => Ok(()),
        Ok(s) => Err(format!("apt-get install mosquitto failed ({s})")),
        Err(e) => Err(format!("cannot run apt-get: {e}")),
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free port")
}

fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(crate::marker(tag));
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}

fn openssl(dir: &Path, args: &[&str]) -> Result<()> {
    let out = Command::new("openssl").args(args).current_dir(dir).output().context("running openssl")?;
    if !out.status.success() {
        bail!("openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate, all
/// PEM files in one directory; and a second, unrelated CA.
pub struct Pki {
    pub dir: PathBuf,
    pub ca: PathBuf,
    pub other_ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

impl Pki {
    pub fn new() -> Result<Pki> {
        let dir = temp_dir("pki");
        let o = |args: &[&str]| openssl(&dir, args);
        for ca in ["ca", "other-ca"] {
            o(&[
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "2",
                "-subj",
                &format!("/CN=hitcount test {ca}"),
                "-keyout",
                &format!("{ca}.key"),
                "-out",
                &format!("{ca}.pem"),
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ])?;
        }
        std::fs::write(
            dir.join("server.ext"),
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n",
        )?;
        std::fs::write(dir.join("client.ext"), "extendedKeyUsage=clientAuth\n")?;
        for (name, cn) in [("server", "127.0.0.1"), ("client", "hitcount-agent")] {
            o(&[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-subj",
                &format!("/CN={cn}"),
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.csr"),
            ])?;
            o(&[
                "x509",
                "-req",
                "-in",
                &format!("{name}.csr"),
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "2",
                "-out",
                &format!("{name}.pem"),
                "-extfile",
                &format!("{name}.ext"),
            ])?;
        }
        // mosquitto drops to its own user and must still read the key.
        chown_mosquitto(&dir)?;
        Ok(Pki {
            ca: dir.join("ca.pem"),
            other_ca: dir.join("other-ca.pem"),
            server_cert: dir.join("server.pem"),
            server_key: dir.join("server.key"),
            client_cert: dir.join("client.pem"),
            client_key: dir.join("client.key"),
            dir,
        })
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn chown_mosquitto(path: &Path) -> Result<()> {
    let status = Command::new("chown").args(["-R", "mosquitto:"]).arg(path).status()?;
    if !status.success() {
        bail!("chown mosquitto {}", path.display());
    }
    Ok(())
}

/// What the agent's listener demands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Auth {
    Plain,
    /// TLS (server certificate from the test CA) and a user name + password.
    TlsPassword,
    /// TLS with a client certificate signed by the test CA.
    MutualTls,
}

pub const USER: &str = "hitcount";
pub const PASSWORD: &str = "s3cret-Pa55-word";

pub struct Broker {
    child: Option<Child>,
    dir: PathBuf,
    conf: PathBuf,
    /// The agent's listener.
    pub port: u16,
    /// Plain, anonymous: the test subscriber's listener.
    pub sub_port: u16,
    pub auth: Auth,
}

impl Broker {
    pub fn start(auth: Auth, pki: Option<&Pki>) -> Result<Broker> {
        let dir = temp_dir("broker");
        let (port, sub_port) = (free_port(), free_port());
        let mut conf = String::from("per_listener_settings true\n");
        // Sessions and queued messages survive a broker restart, as they
        // would on a real deployment; the subscriber relies on it.
        conf += &format!("persistence true\npersistence_location {}/\n", dir.display());
        conf += &format!("log_dest file {}/mosquitto.log\nlog_type all\n", dir.display());
        conf += "max_queued_messages 100000\nmax_queued_bytes 0\n";
        conf += &format!("listener {sub_port} 127.0.0.1\nallow_anonymous true\n");
        conf += &format!("listener {port} 127.0.0.1\n");
        match auth {
            Auth::Plain => conf += "allow_anonymous true\n",
            Auth::TlsPassword | Auth::MutualTls => {
                let pki = pki.context("TLS needs a Pki")?;
                conf += &format!(
                    "cafile {}\ncertfile {}\nkeyfile {}\n",
                    pki.ca.display(),
                    pki.server_cert.display(),
                    pki.server_key.display()
                );
                if auth == Auth::TlsPassword {
                    let pw = dir.join("passwd");
                    let ok = Command::new("mosquitto_passwd")
                        .args(["-c", "-b"])
                        .arg(&pw)
                        .args([USER, PASSWORD])
                        .stdout(Stdio::null())
                        .stderr(Stdio::null())
                        .status()?;
                    if !ok.success() {
                        bail!("mosquitto_passwd failed");
                    }
                    conf += &format!("allow_anonymous false\npassword_file {}\n", pw.display());
                } else {
                    conf += "allow_anonymous true\nrequire_certificate true\n";
                }
            }
        }
        let conf_path = dir.join("mosquitto.conf");
        std::fs::write(&conf_path, conf)?;
        chown_mosquitto(&dir)?;
        let mut b = Broker { child: None, dir, conf: conf_path, port, sub_port, auth };
        b.restart()?;
        Ok(b)
    }

    pub fn url(&self) -> String {
        match self.auth {
            Auth::Plain => format!("mqtt://127.0.0.1:{}", self.port),
            _ => format!("mqtts://127.0.0.1:{}", self.port),
        }
    }

    /// Starts (again) on the same ports with the same state.
    pub fn restart(&mut self) -> Result<()> {
        assert!(self.child.is_none(), "already running");
        let child = Command::new("/usr/sbin/mosquitto")
            .arg("-c")
            .arg(&self.conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting mosquitto")?;
        self.child = Some(child);
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(20) {
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok()
                && TcpStream::connect(("127.0.0.1", self.sub_port)).is_ok()
            {
                return Ok(());
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait()? {
                bail!("mosquitto exited with {status}; log: {}", self.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!("mosquitto did not listen within 20 s; log: {}", self.log())
    }

    /// SIGTERM (mosquitto saves its persistence file) and wait.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: kill(2) on our own child.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let _ = c.wait();
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("mosquitto.log")).unwrap_or_default()
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One message as the subscriber got it.
#[derive(Debug, Clone)]
pub struct Msg {
    pub topic: String,
    pub payload: Vec<u8>,
    pub retain: bool,
    /// When the subscriber received it.
    pub at: Instant,
}

impl Msg {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.payload).unwrap_or_else(|e| panic!("{} is not JSON: {e}", self.topic))
    }

    /// The `state` of a status message (`online`, `offline`); empty for
    /// any other message.
    pub fn status_state(&self) -> String {
        if !self.topic.ends_with("/status") {
            return String::new();
        }
        self.json()["state"].as_str().unwrap_or_default().to_string()
    }
}

/// A QoS 1 subscriber with a persistent session on the broker's plain
/// listener, recording everything under `hitcount/{device}/#`; it
/// reconnects by itself when the broker restarts.
pub struct Subscriber {
    client: Client,
    messages: Arc<Mutex<Vec<Msg>>>,
    device: String,
}

impl Subscriber {
    pub fn connect(broker: &Broker, device: &str) -> Result<Subscriber> {
        let mut o = MqttOptions::new(crate::marker("sub"), "127.0.0.1", broker.sub_port);
        o.set_clean_session(false);
        // Room for the oversized desired configurations the tests publish.
        o.set_max_packet_size(16 << 20, 16 << 20);
        o.set_keep_alive(Duration::from_secs(5));
        let (client, mut connection) = Client::new(o, 100);
        let messages = Arc::new(Mutex::new(Vec::new()));
        let (subscribed_tx, subscribed_rx) = std::sync::mpsc::channel();
        let sink = messages.clone();
        let filter = format!("hitcount/{device}/#");
        let resubscribe = client.clone();
        std::thread::spawn(move || {
            for ev in connection.iter() {
                match ev {
                    Ok(Event::Incoming(Incoming::ConnAck(a))) if !a.session_present => {
                        let _ = resubscribe.try_subscribe(&filter, QoS::AtLeastOnce);
                    }
                    Ok(Event::Incoming(Incoming::SubAck(_))) => {
                        let _ = subscribed_tx.send(());
                    }
                    Ok(Event::Incoming(Incoming::Publish(p))) => sink.lock().unwrap().push(Msg {
                        topic: p.topic.clone(),
                        payload: p.payload.to_vec(),
                        retain: p.retain,
                        at: Instant::now(),
                    }),
                    Ok(_) => {}
                    Err(rumqttc::ConnectionError::RequestsDone) => break,
                    Err(_) => std::thread::sleep(Duration::from_millis(200)),
                }
            }
        });
        subscribed_rx.recv_timeout(Duration::from_secs(20)).context("subscriber: no SUBACK")?;
        Ok(Subscriber { client, messages, device: device.to_string() })
    }

    pub fn topic(&self, leaf: &str) -> String {
        format!("hitcount/{}/{leaf}", self.device)
    }

    pub fn messages(&self) -> Vec<Msg> {
        self.messages.lock().unwrap().clone()
    }

    pub fn on(&self, leaf: &str) -> Vec<Msg> {
        let t = self.topic(leaf);
        self.messages().into_iter().filter(|m| m.topic == t).collect()
    }

    /// Waits until `pred` holds over everything received so far.
    pub fn wait_until(&self, what: &str, timeout: Duration, pred: impl Fn(&[Msg]) -> bool) -> Result<()> {
        let started = Instant::now();
        while started.elapsed() < timeout {
            if pred(&self.messages()) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!("timed out after {timeout:?} waiting for {what}; got {} messages", self.messages().len())
    }

    /// Envelopes on the events topic, parsed.
    pub fn envelopes(&self) -> Vec<Value> {
        self.on("events").iter().map(Msg::json).collect()
    }

    /// Every event of every envelope, each once. QoS 1 is at least once: an
    /// envelope sent again after a reconnect repeats its events, and an
    /// event object is unique (window + identity), so repeats are dropped here.
    pub fn events(&self) -> Vec<Value> {
        let mut seen = std::collections::HashSet::new();
        let mut out = Vec::new();
        for env in self.envelopes() {
            for e in env["events"].as_array().expect("events array") {
                if seen.insert(e.to_string()) {
                    out.push(e.clone());
                }
            }
        }
        out
    }

    /// Publishes (retained) the desired configuration for the device.
    pub fn publish_desired(&self, payload: &str) -> Result<()> {
        self.client.publish(self.topic("config/desired"), QoS::AtLeastOnce, true, payload.as_bytes().to_vec())?;
        Ok(())
    }

    /// The last retained reported configuration received.
    pub fn reported(&self) -> Option<Value> {
        self.on("config/reported").last().map(Msg::json)
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        let _ = self.client.disconnect();
    }
}

impl Broker {
    /// A broker whose agent listener requires a password from one of
    /// `users` and enforces the ACL in `acl_file`; its subscriber listener
    /// stays open for the tests' own observer.
    pub fn start_with_acl(acl_file: &Path, users: &[(&str, &str)]) -> Result<Broker> {
        let dir = temp_dir("broker-acl");
        let (port, sub_port) = (free_port(), free_port());
        let pw = dir.join("passwd");
        for (i, (user, password)) in users.iter().enumerate() {
            let mut cmd = Command::new("mosquitto_passwd");
            if i == 0 {
                cmd.arg("-c");
            }
            let ok =
                cmd.arg("-b").arg(&pw).args([user, password]).stdout(Stdio::null()).stderr(Stdio::null()).status()?;
            if !ok.success() {
                bail!("mosquitto_passwd failed for {user}");
            }
        }
        let acl = dir.join("acl");
        std::fs::copy(acl_file, &acl).with_context(|| format!("copying {}", acl_file.display()))?;
        let mut conf = String::from("per_listener_settings true\n");
        conf += &format!("log_dest file {}/mosquitto.log\nlog_type all\n", dir.display());
        conf += &format!("listener {sub_port} 127.0.0.1\nallow_anonymous true\n");
        conf += &format!("listener {port} 127.0.0.1\nallow_anonymous false\n");
        conf += &format!("password_file {}\nacl_file {}\n", pw.display(), acl.display());
        let conf_path = dir.join("mosquitto.conf");
        std::fs::write(&conf_path, conf)?;
        chown_mosquitto(&dir)?;
        let mut b = Broker { child: None, dir, conf: conf_path, port, sub_port, auth: Auth::Plain };
        b.restart()?;
        Ok(b)
    }
}
