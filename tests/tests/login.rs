//! Login, against a real OpenSSH server: a private sshd (UsePAM, password
//! authentication) in a test network namespace, a user made for the test,
//! and clients (ssh through sshpass) in this namespace. sshd's own log
//! (`-E`) is the oracle for what happened; the session itself (`tty`) says
//! which terminal it had. The agent's pam source has uprobes on the host's
//! real libpam, which sshd and su call; its utmp source reads the host's
//! real wtmp and btmp, where sshd writes. The test's user name tells its
//! events apart.
use std::{
    path::Path,
    process::{Command, Stdio},
    time::Duration,
};

use serde_json::Value;
use tests::{
    payloads, privileged, skip,
    sshd::{self, Sshd, TestUser, PASSWORD},
    Agent,
};

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

/// The agent's Login sources for a scenario: the default, or a list.
#[derive(Clone, Copy)]
enum Sources {
    Auto,
    Only(&'static str),
}

/// Starts an sshd on test namespace `index` and an agent reading `sources`,
/// runs `clients` against the sshd, and returns the sshd (its log) and what
/// the agent sent.
fn scenario(index: u8, sources: Sources, clients: impl FnOnce(&Sshd)) -> (Sshd, Vec<Value>) {
    let sshd = Sshd::start(index).unwrap();
    let config = sshd.dir.join("agent.json");
    let list = match sources {
        Sources::Auto => "[\"auto\"]".to_string(),
        Sources::Only(s) => format!("[\"{s}\"]"),
    };
    std::fs::write(&config, format!("{{\"loginSource\": {list}}}")).unwrap();
    // One window for the whole test: what aggregates is in one event.
    let agent = Agent::start(&["--interval", "PT1H", "--config", config.to_str().unwrap()]).unwrap();
    clients(&sshd);
    // Polled once a second; the last poll at stop waits for nothing.
    std::thread::sleep(Duration::from_millis(1500));
    let events = agent.stop().unwrap();
    (sshd, events)
}

/// (operation, executable, remote_address, hit_count, source, service) of one event.
type Row = (String, String, String, u64, String, Value);

/// The [`Row`] of each event.
fn summary(seen: &[&Value]) -> Vec<Row> {
    seen.iter()
        .map(|p| {
            let s = |k: &str| p[k].as_str().unwrap_or_default().to_string();
            (
                s("operation"),
                s("executable"),
                s("remote_address"),
                p["hit_count"].as_u64().unwrap(),
                s("source"),
                p["service"].clone(),
            )
        })
        .collect()
}

fn row(op: &str, tty: &str, remote: &str, hits: u64, source: &str, service: Option<&str>) -> Row {
    (op.into(), tty.into(), remote.into(), hits, source.into(), service.map_or(Value::Null, |s| s.into()))
}

/// The terminal a session printed for `tty`: pts/N.
fn printed_tty(out: &str) -> String {
    let tty = out
        .lines()
        .find_map(|l| l.split_whitespace().find_map(|w| w.strip_prefix("/dev/")))
        .map(str::to_string)
        .unwrap_or_else(|| panic!("no tty in the session's output: {out:?}"));
    assert!(tty.starts_with("pts/"), "{tty}");
    tty
}

/// Whether the PAM uprobes can attach here; records why not.
fn pam_ready(test: &str) -> bool {
    let found = sshd::system_libpam().is_some();
    if !found {
        skip(test, "su loads no libpam.so.0 on this host: the pam source has nothing to attach to");
    }
    found
}

#[test]
fn an_interactive_session_is_a_login_on_its_terminal_then_a_logout() {
    let test = "an_interactive_session_is_a_login_on_its_terminal_then_a_logout";
    if !ready(test) || !pam_ready(test) {
        return;
    }
    let user = TestUser::new("li").unwrap();
    let mut out = String::new();
    let (sshd, events) = scenario(60, Sources::Auto, |sshd| {
        let (ok, printed) = sshd.ssh(&user.name, PASSWORD, &["-tt"], &[], "tty\nexit\n").unwrap();
        assert!(ok, "ssh failed; sshd log: {}", sshd.log());
        out = printed;
    });
    // The session's own answer to `tty`: /dev/pts/N.
    let tty = printed_tty(&out);
    let client = sshd.ns.host_v4();
    assert_eq!(sshd.count(&format!("Accepted password for {} from {client} ", user.name)), 1, "{}", sshd.log());
    let seen = logins(&events, &user.name);
    // PAM saw the session (as "ssh", what sshd tells it), wtmp its terminal:
    // one event each for the login and the logout, PAM's with wtmp's pts/N.
    assert_eq!(
        summary(&seen),
        [row("Login", &tty, &client, 1, "pam", Some("sshd")), row("Logout", &tty, &client, 1, "pam", Some("sshd"))],
        "{seen:#?}"
    );
    // sshd's privileged monitor called PAM for both.
    let pid = seen[0]["process_id"].as_u64().unwrap();
    assert!(pid > 0);
    assert_eq!(seen[1]["process_id"], pid);
    assert_eq!(seen[0]["remote_port"], Value::Null, "no source knows it");
}

#[test]
fn three_wrong_passwords_are_one_login_failed_with_hit_count_three() {
    let test = "three_wrong_passwords_are_one_login_failed_with_hit_count_three";
    if !ready(test) || !pam_ready(test) {
        return;
    }
    let user = TestUser::new("lf").unwrap();
    let (sshd, events) = scenario(61, Sources::Auto, |sshd| {
        for _ in 0..3 {
            let (ok, _) = sshd.ssh(&user.name, "wrong-password", &[], &["true"], "").unwrap();
            assert!(!ok, "a wrong password was accepted");
        }
    });
    let client = sshd.ns.host_v4();
    assert_eq!(sshd.count(&format!("Failed password for {} from {client} ", user.name)), 3, "{}", sshd.log());
    assert_eq!(sshd.count("Accepted"), 0);
    let seen = logins(&events, &user.name);
    // PAM and btmp each saw three: three, not six.
    assert_eq!(summary(&seen), [row("LoginFailed", "ssh", &client, 3, "pam", Some("sshd"))], "{seen:#?}");
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
    if !ready(test) || !pam_ready(test) {
        return;
    }
    let name = format!("hcnobody{}", std::process::id() % 100_000);
    let (sshd, events) = scenario(62, Sources::Auto, |sshd| {
        let (ok, _) = sshd.ssh(&name, PASSWORD, &[], &["true"], "").unwrap();
        assert!(!ok);
    });
    let client = sshd.ns.host_v4();
    // One password tried (auth_log: "Failed password for invalid user"),
    // after sshd met the unknown name (auth.c, getpwnamallow: "Invalid user").
    let invalid = sshd.count(&format!("Invalid user {name} from {client} "));
    let failed = sshd.count(&format!("Failed password for invalid user {name} from {client} "));
    assert_eq!((invalid, failed), (1, 1), "{}", sshd.log());
    let seen = logins(&events, &name);
    // PAM saw one attempt with the name tried; btmp's two records of it are that one attempt.
    assert_eq!(summary(&seen), [row("LoginFailed", "ssh", &client, failed as u64, "pam", Some("sshd"))], "{seen:#?}");
}

#[test]
fn a_command_without_a_terminal_is_seen_by_pam_alone() {
    let test = "a_command_without_a_terminal_is_seen_by_pam_alone";
    if !ready(test) || !pam_ready(test) {
        return;
    }
    let user = TestUser::new("lc").unwrap();
    let wtmp_before = std::fs::metadata("/var/log/wtmp").map(|m| m.len()).unwrap_or(0);
    let (sshd, events) = scenario(63, Sources::Auto, |sshd| {
        let (ok, out) = sshd.ssh(&user.name, PASSWORD, &[], &["echo", "ran"], "").unwrap();
        assert!(ok && out.trim() == "ran", "{out:?}; sshd log: {}", sshd.log());
    });
    let client = sshd.ns.host_v4();
    assert_eq!(sshd.count(&format!("Accepted password for {} from {client} ", user.name)), 1, "{}", sshd.log());
    let seen = logins(&events, &user.name);
    assert_eq!(
        summary(&seen),
        [row("Login", "ssh", &client, 1, "pam", Some("sshd")), row("Logout", "ssh", &client, 1, "pam", Some("sshd"))],
        "{seen:#?}"
    );
    // wtmp got nothing of it (COLLECTORS.md, Login): the oracle that only PAM could tell.
    let wtmp = std::fs::read("/var/log/wtmp").unwrap_or_default();
    let appended = &wtmp[(wtmp_before as usize).min(wtmp.len())..];
    let name = user.name.as_bytes();
    assert!(!appended.windows(name.len()).any(|w| w == name), "sshd wrote wtmp for a session without a terminal");
}

#[test]
fn su_from_root_is_a_login_with_service_su() {
    let test = "su_from_root_is_a_login_with_service_su";
    if !privileged(test) || !pam_ready(test) {
        return;
    }
    if !Path::new("/bin/su").exists() {
        skip(test, "no /bin/su (util-linux)");
        return;
    }
    let user = TestUser::new("ls").unwrap();
    let config = std::env::temp_dir().join(format!("hc-su-{}.json", std::process::id()));
    std::fs::write(&config, r#"{"loginSource": ["pam"]}"#).unwrap();
    let agent = Agent::start(&["--interval", "PT1H", "--config", config.to_str().unwrap()]).unwrap();
    let su = Command::new("/bin/su").args([&user.name, "-c", "true"]).stdin(Stdio::null()).spawn().unwrap();
    let su_pid = su.id() as u64;
    assert!(su.wait_with_output().unwrap().status.success());
    std::thread::sleep(Duration::from_millis(1500));
    let events = agent.stop().unwrap();
    let _ = std::fs::remove_file(&config);
    let seen = logins(&events, &user.name);
    // No terminal (stdin is not one) and no remote host: a local login.
    assert_eq!(
        summary(&seen),
        [row("Login", "", "127.0.0.1", 1, "pam", Some("su")), row("Logout", "", "127.0.0.1", 1, "pam", Some("su"))],
        "{seen:#?}"
    );
    assert!(seen.iter().all(|p| p["process_id"] == su_pid), "su itself called PAM (pid {su_pid}): {seen:#?}");
}

/// The same clients against each source alone: what each can see, stated.
/// `ssh host true`, an interactive session, a wrong password and an unknown user.
fn each_source(index: u8, source: &'static str) -> (String, String, Vec<Row>, Vec<Row>) {
    let user = TestUser::new(&format!("l{}", &source[..1])).unwrap();
    let unknown = format!("hcnone{}{index}", std::process::id() % 10_000);
    let mut out = String::new();
    let (sshd, events) = scenario(index, Sources::Only(source), |sshd| {
        assert!(sshd.ssh(&user.name, PASSWORD, &[], &["true"], "").unwrap().0);
        let (ok, printed) = sshd.ssh(&user.name, PASSWORD, &["-tt"], &[], "tty\nexit\n").unwrap();
        assert!(ok);
        out = printed;
        assert!(!sshd.ssh(&user.name, "wrong-password", &[], &["true"], "").unwrap().0);
        assert!(!sshd.ssh(&unknown, PASSWORD, &[], &["true"], "").unwrap().0);
    });
    let client = sshd.ns.host_v4();
    let known = summary(&logins(&events, &user.name));
    let unknown_seen = summary(&logins(&events, &unknown));
    assert!(
        payloads(&events, "Login")
            .iter()
            .filter(|p| p["user_name"] == user.name.as_str() || p["user_name"] == unknown.as_str())
            .all(|p| p["source"] == source),
        "only {source} was read"
    );
    (client, printed_tty(&out), known, unknown_seen)
}

#[test]
fn each_source_alone_sees_what_it_can() {
    let test = "each_source_alone_sees_what_it_can";
    if !ready(test) || !pam_ready(test) {
        return;
    }
    // pam: every session, tty or not, as sshd names it to PAM ("ssh"); one attempt per password.
    let (client, _, known, unknown) = each_source(64, "pam");
    let pam = |op, hits| row(op, "ssh", &client, hits, "pam", Some("sshd"));
    assert_eq!(known, [pam("Login", 2), pam("Logout", 2), pam("LoginFailed", 1)]);
    assert_eq!(unknown, [pam("LoginFailed", 1)]);
    // utmp: only the session with a terminal, on its pts/N; btmp records an
    // unknown user twice (the name, then the password).
    let (client, tty, known, unknown) = each_source(65, "utmp");
    let utmp = |op, tty: &str, hits| row(op, tty, &client, hits, "utmp", None);
    assert_eq!(known, [utmp("Login", &tty, 1), utmp("Logout", &tty, 1), utmp("LoginFailed", "ssh:notty", 1)]);
    assert_eq!(unknown, [utmp("LoginFailed", "ssh:notty", 2)]);
}

#[test]
fn a_failed_login_while_the_agent_was_down_is_reported_after_its_restart() {
    let test = "a_failed_login_while_the_agent_was_down_is_reported_after_its_restart";
    if !ready(test) {
        return;
    }
    let user = TestUser::new("lr").unwrap();
    let sshd = Sshd::start(66).unwrap();
    let state = sshd.dir.join("state");
    let config = sshd.dir.join("agent.json");
    std::fs::write(&config, r#"{"loginSource": ["utmp"]}"#).unwrap();
    let args = ["--interval", "PT1H", "--config", config.to_str().unwrap(), "--state-dir", state.to_str().unwrap()];
    // The first run only learns where the files end, and says so at its stop.
    let first = Agent::start(&args).unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    first.stop().unwrap();
    assert!(state.join("login.json").exists(), "the stop saved the positions");
    assert!(!sshd.ssh(&user.name, "wrong-password", &[], &["true"], "").unwrap().0);
    let client = sshd.ns.host_v4();
    assert_eq!(sshd.count(&format!("Failed password for {} from {client} ", user.name)), 1, "{}", sshd.log());
    let second = Agent::start(&args).unwrap();
    std::thread::sleep(Duration::from_millis(2500));
    let events = second.stop().unwrap();
    assert_eq!(
        summary(&logins(&events, &user.name)),
        [row("LoginFailed", "ssh:notty", &client, 1, "utmp", None)],
        "the attempt made while no agent ran"
    );
}

/// Audit enabled for the test's run, every task excluded from syscall
/// auditing (so that nothing else slows down); restored on drop.
struct AuditOn {
    was: String,
}

impl AuditOn {
    fn enable() -> Result<AuditOn, String> {
        let status = Command::new("/usr/sbin/auditctl").arg("-s").output().map_err(|e| e.to_string())?;
        let text = String::from_utf8_lossy(&status.stdout).into_owned();
        let was = text.lines().find_map(|l| l.strip_prefix("enabled ")).unwrap_or("0").trim().to_string();
        if was == "2" {
            return Err("audit is locked (enabled 2) on this host".into());
        }
        let ok =
            |args: &[&str]| Command::new("/usr/sbin/auditctl").args(args).output().is_ok_and(|o| o.status.success());
        if !ok(&["-a", "never,task"]) || !ok(&["-e", "1"]) {
            return Err("auditctl could not enable audit".into());
        }
        Ok(AuditOn { was })
    }
}

impl Drop for AuditOn {
    fn drop(&mut self) {
        let _ = Command::new("/usr/sbin/auditctl").args(["-e", &self.was]).output();
        let _ = Command::new("/usr/sbin/auditctl").args(["-d", "never,task"]).output();
    }
}

#[test]
fn the_audit_source_reads_pam_records_while_audit_is_enabled() {
    let test = "the_audit_source_reads_pam_records_while_audit_is_enabled";
    if !ready(test) {
        return;
    }
    if !Path::new("/usr/sbin/auditctl").exists() {
        skip(test, "no /usr/sbin/auditctl (cargo xtask test installs auditd)");
        return;
    }
    let _audit = match AuditOn::enable() {
        Ok(a) => a,
        Err(why) => {
            skip(test, &why);
            return;
        }
    };
    let user = TestUser::new("la").unwrap();
    let (sshd, events) = scenario(67, Sources::Only("audit"), |sshd| {
        assert!(sshd.ssh(&user.name, PASSWORD, &[], &["true"], "").unwrap().0);
        assert!(!sshd.ssh(&user.name, "wrong-password", &[], &["true"], "").unwrap().0);
    });
    let client = sshd.ns.host_v4();
    assert_eq!(sshd.count(&format!("Failed password for {} from {client} ", user.name)), 1, "{}", sshd.log());
    // PAM's records through libaudit: the session (terminal "ssh", as sshd
    // tells PAM), then the failed authentication.
    let audit = |op, hits| row(op, "ssh", &client, hits, "audit", Some("sshd"));
    assert_eq!(summary(&logins(&events, &user.name)), [audit("Login", 1), audit("Logout", 1), audit("LoginFailed", 1)]);
}

/// A process kept alive with a file mapped (LD_PRELOAD), killed on drop.
struct Mapper(std::process::Child);

impl Drop for Mapper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_libpam_that_appears_later_is_attached_within_the_rescan() {
    let test = "a_libpam_that_appears_later_is_attached_within_the_rescan";
    if !privileged(test) || !pam_ready(test) {
        return;
    }
    // pam_ready found it: su's own libpam.
    let system = sshd::system_libpam().unwrap();
    let user = TestUser::new("lp").unwrap();
    let dir = std::env::temp_dir().join(format!("hc-libpam-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let agent_config = dir.join("agent.json");
    std::fs::write(&agent_config, r#"{"loginSource": ["pam"]}"#).unwrap();
    let agent = Agent::start(&["--interval", "PT1H", "--config", agent_config.to_str().unwrap()]).unwrap();
    // A second libpam (another inode), in no library directory: as a
    // container's is. Only a process mapping it shows the agent where it is.
    let copy = dir.join("libpam.so.0");
    std::fs::copy(system, &copy).unwrap();
    let _mapper = Mapper(Command::new("sleep").arg("60").env("LD_PRELOAD", &copy).spawn().unwrap());
    // The loader's own word that su will run on the copy, not the system's.
    let ldd = Command::new("ldd").arg("/bin/su").env("LD_LIBRARY_PATH", &dir).output().unwrap();
    let ldd = String::from_utf8_lossy(&ldd.stdout).into_owned();
    assert!(ldd.lines().any(|l| l.contains("libpam.so.0") && l.contains(dir.to_str().unwrap())), "{ldd}");
    // The rescan is every 10 s.
    std::thread::sleep(Duration::from_secs(12));
    let su = Command::new("/bin/su")
        .args([&user.name, "-c", "true"])
        .env("LD_LIBRARY_PATH", &dir)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(su.status.success(), "{su:?}");
    std::thread::sleep(Duration::from_millis(1500));
    let logs = agent.stderr();
    let events = agent.stop().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        logs.iter().any(|l| l.contains("PAM uprobes attached to") && l.contains("hc-libpam")),
        "the copy was attached: {logs:?}"
    );
    // su ran on the copy (LD_LIBRARY_PATH), which only the rescan attached to.
    assert_eq!(
        summary(&logins(&events, &user.name)),
        [row("Login", "", "127.0.0.1", 1, "pam", Some("su")), row("Logout", "", "127.0.0.1", 1, "pam", Some("su"))]
    );
}
