//! Login, against a real OpenSSH server: a private sshd (UsePAM, password
//! authentication) in a test network namespace, a user made for the test,
//! and clients (ssh through sshpass) in this namespace. sshd's own log
//! (`-E`) is the oracle for what happened; the session itself (`tty`) says
//! which terminal it had. The agent reads the host's real wtmp and btmp,
//! where sshd writes; the test's user name tells its events apart.
use std::{
    io::Write,
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use serde_json::Value;
use tests::{payloads, privileged, run, skip, Agent, NetNs};

const PORT: u16 = 2222;
const PASSWORD: &str = "hc-Login-pw-1";

/// A user with a password, removed (with its home) on drop.
struct TestUser {
    name: String,
}

impl TestUser {
    fn new(tag: &str) -> Result<TestUser> {
        let name = format!("hc{tag}{}", std::process::id() % 100_000);
        let _ = run(Command::new("userdel").args(["-r", &name]));
        if !run(Command::new("useradd").args(["-m", "-s", "/bin/sh", &name]))?.success() {
            bail!("useradd {name} failed");
        }
        let user = TestUser { name };
        let mut chpasswd = Command::new("chpasswd").stdin(Stdio::piped()).spawn()?;
        writeln!(chpasswd.stdin.take().unwrap(), "{}:{PASSWORD}", user.name)?;
        if !chpasswd.wait()?.success() {
            bail!("chpasswd failed");
        }
        Ok(user)
    }
}

impl Drop for TestUser {
    fn drop(&mut self) {
        let _ = run(Command::new("userdel").args(["-r", &self.name]));
    }
}

/// Files the sshd needs that systemd would make; the ones made here are removed on drop.
struct HostFiles {
    made: Vec<PathBuf>,
}

impl HostFiles {
    fn new() -> Result<HostFiles> {
        let mut made = Vec::new();
        // Privilege separation directory.
        std::fs::create_dir_all("/run/sshd")?;
        // Without /run/utmp sshd writes no DEAD_PROCESS to wtmp at logout
        // (checked: COLLECTORS.md, Login); without wtmp or btmp (glibc opens
        // them without O_CREAT) nothing at all.
        for f in ["/run/utmp", "/var/log/wtmp", "/var/log/btmp"] {
            if !Path::new(f).exists() {
                std::fs::write(f, b"")?;
                made.push(PathBuf::from(f));
            }
        }
        Ok(HostFiles { made })
    }
}

impl Drop for HostFiles {
    fn drop(&mut self) {
        for f in &self.made {
            let _ = std::fs::remove_file(f);
        }
    }
}

/// The sshd, its network namespace and its log.
struct Sshd {
    ns: NetNs,
    dir: PathBuf,
    child: std::process::Child,
    _files: HostFiles,
}

impl Sshd {
    fn start(index: u8) -> Result<Sshd> {
        let files = HostFiles::new()?;
        let ns = NetNs::new(index)?;
        let dir = std::env::temp_dir().join(format!("hc-sshd-{}-{index}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let key = dir.join("host_ed25519");
        if !run(Command::new("ssh-keygen").args(["-q", "-t", "ed25519", "-N", ""]).arg("-f").arg(&key))?.success() {
            bail!("ssh-keygen failed");
        }
        let config = dir.join("sshd_config");
        std::fs::write(
            &config,
            format!(
                "Port {PORT}\nListenAddress {}\nHostKey {}\nPidFile {}\nPasswordAuthentication yes\n\
                 KbdInteractiveAuthentication no\nUsePAM yes\nUseDNS no\nPermitRootLogin no\n\
                 MaxAuthTries 10\nLogLevel VERBOSE\n",
                ns.peer_v4(),
                key.display(),
                dir.join("sshd.pid").display()
            ),
        )?;
        let child = Command::new("ip")
            .args(["netns", "exec", &ns.name, "/usr/sbin/sshd", "-D", "-f"])
            .arg(&config)
            .arg("-E")
            .arg(dir.join("sshd.log"))
            .stdin(Stdio::null())
            .spawn()
            .context("starting sshd")?;
        let mut sshd = Sshd { ns, dir, child, _files: files };
        let addr: SocketAddr = format!("{}:{PORT}", sshd.ns.peer_v4()).parse()?;
        let started = Instant::now();
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            if started.elapsed() > Duration::from_secs(10) || sshd.child.try_wait()?.is_some() {
                bail!("sshd did not listen on {addr}; its log: {}", sshd.log());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(sshd)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("sshd.log")).unwrap_or_default()
    }

    /// Lines of sshd's log containing `needle`.
    fn count(&self, needle: &str) -> usize {
        self.log().lines().filter(|l| l.contains(needle)).count()
    }

    /// `sshpass -p PASSWORD ssh OPTIONS user@sshd COMMAND`, with `input` on stdin; its stdout.
    fn ssh(
        &self,
        user: &str,
        password: &str,
        options: &[&str],
        command: &[&str],
        input: &str,
    ) -> Result<(bool, String)> {
        let mut child = Command::new("sshpass")
            .args(["-p", password, "ssh", "-p", &PORT.to_string()])
            .args(["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null"])
            .args(["-o", "PreferredAuthentications=password", "-o", "PubkeyAuthentication=no"])
            .args(["-o", "NumberOfPasswordPrompts=1", "-o", "LogLevel=ERROR"])
            .args(options)
            .arg(format!("{user}@{}", self.ns.peer_v4()))
            .args(command)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting sshpass (apt-get install sshpass)")?;
        child.stdin.take().unwrap().write_all(input.as_bytes())?;
        let out = child.wait_with_output()?;
        // sshpass exits 5 for a password refused, 255 is ssh's own failure.
        eprintln!("sshpass {user}: {}, stderr {:?}", out.status, String::from_utf8_lossy(&out.stderr));
        Ok((out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned()))
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // `ip netns exec` execs sshd in place, but its session children may outlive it.
        if let Ok(pid) = std::fs::read_to_string(self.dir.join("sshd.pid")) {
            let _ = run(Command::new("kill").arg(pid.trim()));
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Whether this machine can run the suite; records why not.
fn ready(test: &str) -> bool {
    if !privileged(test) {
        return false;
    }
    for tool in ["/usr/sbin/sshd", "/usr/bin/sshpass", "/usr/bin/ssh-keygen", "/usr/sbin/useradd"] {
        if !Path::new(tool).exists() {
            skip(test, &format!("no {tool} (cargo xtask test installs openssh-server and sshpass)"));
            return false;
        }
    }
    true
}

/// The Login events of `user`.
fn logins<'a>(events: &'a [Value], user: &str) -> Vec<&'a Value> {
    payloads(events, "Login").into_iter().filter(|p| p["user_name"] == user).collect()
}

/// Starts an sshd on test namespace `index` and an agent, runs `clients`
/// against the sshd, and returns the sshd (its log) and what the agent sent.
fn scenario(index: u8, clients: impl FnOnce(&Sshd)) -> (Sshd, Vec<Value>) {
    let sshd = Sshd::start(index).unwrap();
    // One window for the whole test: what aggregates is in one event.
    let agent = Agent::start(&["--interval", "PT1H"]).unwrap();
    clients(&sshd);
    // Polled once a second, and once more at stop.
    std::thread::sleep(Duration::from_millis(1500));
    let events = agent.stop().unwrap();
    (sshd, events)
}

#[test]
fn an_interactive_session_is_a_login_on_its_terminal_then_a_logout() {
    let test = "an_interactive_session_is_a_login_on_its_terminal_then_a_logout";
    if !ready(test) {
        return;
    }
    let user = TestUser::new("li").unwrap();
    let mut out = String::new();
    let (sshd, events) = scenario(60, |sshd| {
        let (ok, printed) = sshd.ssh(&user.name, PASSWORD, &["-tt"], &[], "tty\nexit\n").unwrap();
        assert!(ok, "ssh failed; sshd log: {}", sshd.log());
        out = printed;
    });
    // The session's own answer to `tty`: /dev/pts/N.
    let tty = out
        .lines()
        .find_map(|l| l.split_whitespace().find_map(|w| w.strip_prefix("/dev/")))
        .map(str::to_string)
        .unwrap_or_else(|| panic!("no tty in the session's output: {out:?}"));
    assert!(tty.starts_with("pts/"), "{tty}");
    let client = sshd.ns.host_v4();
    assert_eq!(sshd.count(&format!("Accepted password for {} from {client} ", user.name)), 1, "{}", sshd.log());
    let seen = logins(&events, &user.name);
    let summary: Vec<(&Value, &Value, &Value, &Value, &Value)> = seen
        .iter()
        .map(|p| (&p["operation"], &p["executable"], &p["remote_address"], &p["hit_count"], &p["source"]))
        .collect();
    assert_eq!(
        summary,
        [
            (&"Login".into(), &tty.as_str().into(), &client.as_str().into(), &1.into(), &"utmp".into()),
            (&"Logout".into(), &tty.as_str().into(), &client.as_str().into(), &1.into(), &"utmp".into()),
        ],
        "{seen:#?}"
    );
    // sshd's session child wrote both records: its pid, in sshd's log as the session's.
    let pid = seen[0]["process_id"].as_u64().unwrap();
    assert!(pid > 0);
    assert_eq!(seen[1]["process_id"], pid);
    assert_eq!((&seen[0]["service"], &seen[0]["remote_port"]), (&Value::Null, &Value::Null), "utmp knows neither");
}

#[test]
fn three_wrong_passwords_are_one_login_failed_with_hit_count_three() {
    let test = "three_wrong_passwords_are_one_login_failed_with_hit_count_three";
    if !ready(test) {
        return;
    }
    let user = TestUser::new("lf").unwrap();
    let (sshd, events) = scenario(61, |sshd| {
        for _ in 0..3 {
            let (ok, _) = sshd.ssh(&user.name, "wrong-password", &[], &["true"], "").unwrap();
            assert!(!ok, "a wrong password was accepted");
        }
    });
    let client = sshd.ns.host_v4();
    assert_eq!(sshd.count(&format!("Failed password for {} from {client} ", user.name)), 3, "{}", sshd.log());
    assert_eq!(sshd.count("Accepted"), 0);
    let seen = logins(&events, &user.name);
    assert_eq!(seen.len(), 1, "one aggregated event: {seen:#?}");
    let p = seen[0];
    assert_eq!((&p["operation"], &p["hit_count"]), (&"LoginFailed".into(), &3.into()), "{p}");
    assert_eq!((&p["executable"], &p["remote_address"]), (&"ssh:notty".into(), &client.as_str().into()));
    // The window accounts for every Login it saw (these and any other on the host).
    let stats = events
        .iter()
        .find(|e| e["event_type"] == "DroppedEventsStatistics" && e["payload"]["source_event_type"] == "Login")
        .expect("Login window statistics");
    let reported: u64 = payloads(&events, "Login").iter().map(|p| p["hit_count"].as_u64().unwrap()).sum();
    assert_eq!(stats["payload"]["events_seen"], reported, "{stats}");
}

#[test]
fn an_unknown_user_is_a_login_failed_with_the_name_tried() {
    let test = "an_unknown_user_is_a_login_failed_with_the_name_tried";
    if !ready(test) {
        return;
    }
    let name = format!("hcnobody{}", std::process::id() % 100_000);
    let (sshd, events) = scenario(62, |sshd| {
        let (ok, _) = sshd.ssh(&name, PASSWORD, &[], &["true"], "").unwrap();
        assert!(!ok);
    });
    let client = sshd.ns.host_v4();
    // OpenSSH records a failed login when it meets the unknown name
    // (auth.c, getpwnamallow: "Invalid user") and again for the password
    // tried (auth_log: "Failed password for invalid user").
    let invalid = sshd.count(&format!("Invalid user {name} from {client} "));
    let failed = sshd.count(&format!("Failed password for invalid user {name} from {client} "));
    assert_eq!((invalid, failed), (1, 1), "{}", sshd.log());
    let seen = logins(&events, &name);
    assert_eq!(seen.len(), 1, "{seen:#?}");
    assert_eq!(seen[0]["operation"], "LoginFailed");
    assert_eq!(seen[0]["hit_count"], (invalid + failed) as u64);
    assert_eq!(seen[0]["remote_address"], client.as_str());
}
