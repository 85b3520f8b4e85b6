//! Login: sign-ins, sign-outs and failed attempts (seed 002, "Login
//! collector"), aggregated per window in user space (collectors::window):
//! identical (operation, user_name, executable, remote_address, service)
//! are one record with a hit count, so a password brute force is one event.
//!
//! Sources (`loginSource`): pam (uprobes on libpam, [`pam`]), utmp (wtmp
//! and btmp, [`utmp`], and wtmpdb, [`wtmpdb`]), audit (the audit multicast
//! group, [`audit`]) and syslog (auth.log, [`syslog`]). When more than one
//! is read, one login seen by two of them is one event ([`merge`]).
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{Context, EventSource, Taken};
use crate::{config::LoginSource, events::EventType, hostfs::HostFs, state};

pub mod audit;
pub mod follow;
pub mod merge;
pub mod pam;
pub mod syslog;
pub mod utmp;
pub mod wtmpdb;

/// What a local login reports as its remote address (seed 002:
/// "127.0.0.1/0.0.0.0 to indicate local connection").
pub const LOCAL: &str = "127.0.0.1";
/// Longest user name kept, escaped, in bytes: longer than any real one
/// (utmp holds 32, useradd allows 32), short enough that a brute force
/// trying megabyte names cannot fill the window with them.
pub const USER_NAME_MAX: usize = 256;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Operation {
    Login,
    Logout,
    LoginFailed,
}

/// One Login event, as sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LoginEvent {
    pub operation: Operation,
    /// The login process (sshd's session child, login(1), su); 0 when unknown.
    pub process_id: u32,
    /// The user, or the name tried: escaped, at most USER_NAME_MAX bytes.
    pub user_name: String,
    /// The terminal (`tty1`, `pts/3`) or what the source writes instead (`ssh:notty`).
    pub executable: String,
    /// The client's address, or `127.0.0.1` for a local login.
    pub remote_address: String,
    pub remote_port: Option<u16>,
    /// The PAM service (`sshd`, `login`, `su`) where the source knows it.
    pub service: Option<String>,
    /// The source that saw it: `pam`, `utmp` or `syslog` (the best of
    /// them when several saw it: see [`merge`]).
    pub source: &'static str,
    /// When it happened, where the source says (a PAM event's kernel time,
    /// a utmp record's `ut_tv`): what pairs one login's records across sources.
    #[serde(skip)]
    pub time: Option<std::time::SystemTime>,
}

impl LoginEvent {
    /// What a window aggregates on.
    pub fn key(&self) -> String {
        format!(
            "{:?}\0{}\0{}\0{}\0{}",
            self.operation,
            self.user_name,
            self.executable,
            self.remote_address,
            self.service.as_deref().unwrap_or("")
        )
    }
}

/// Host bytes (a user name, a terminal) as printable text: printable ASCII
/// and valid UTF-8 kept, a backslash doubled, anything else `\xNN`; cut at
/// `max` bytes of output, never inside an escape or a character.
pub fn escape(raw: &[u8], max: usize) -> String {
    let mut out = String::new();
    for chunk in raw.utf8_chunks() {
        for c in chunk.valid().chars() {
            let piece = match c {
                '\\' => "\\\\".to_string(),
                c if c.is_control() => c.to_string().bytes().map(|b| format!("\\x{b:02x}")).collect(),
                c => c.to_string(),
            };
            if out.len() + piece.len() > max {
                return out;
            }
            out.push_str(&piece);
        }
        for b in chunk.invalid() {
            if out.len() + 4 > max {
                return out;
            }
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out
}

/// The state file of the Login collector, in the state directory.
pub const STATE_FILE: &str = "login.json";
const STATE_VERSION: u32 = 1;
/// How often the followed files' positions are saved: a crash repeats at
/// most this much of the files' news after the restart.
pub const SAVE_EVERY_MS: u64 = 10_000;

/// What [`STATE_FILE`] holds: each followed file's position, by host path.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Saved {
    version: u32,
    files: BTreeMap<String, follow::Position>,
    /// The last wtmpdb row read, where there is one.
    #[serde(default)]
    wtmpdb: Option<wtmpdb::Cursor>,
}

/// How often `auto` asks whether audit was enabled meanwhile.
pub const AUDIT_RECHECK_MS: u64 = 60_000;

/// The Login event source.
pub struct Login {
    /// The PAM programs' ring; None where the agent runs without them (`hitcount snapshot`, tests).
    pam: Option<Box<dyn pam::PamFeed>>,
    utmp: Option<utmp::Utmp>,
    /// Read with utmp: where wtmpdb exists it replaces wtmp.
    wtmpdb: Option<wtmpdb::Wtmpdb>,
    syslog: Option<syslog::Syslog>,
    audit: Option<audit::Audit>,
    /// Whether audit is enabled, and when that was last asked (monotonic ms).
    audit_on: Option<(bool, u64)>,
    merger: merge::Merger,
    /// Where the followed files were left, across restarts (None: no state directory).
    state: Option<state::StateFile>,
    /// Positions an earlier run saved, until the followers exist to take them.
    resume: BTreeMap<String, follow::Position>,
    resume_wtmpdb: Option<wtmpdb::Cursor>,
    /// When the positions were last saved (monotonic ms).
    saved_ms: u64,
    /// Since when poll times count, for the merger.
    epoch: std::time::Instant,
    /// The sources named but not available, said once.
    warned: bool,
}

impl Login {
    pub fn new(pam: Option<Box<dyn pam::PamFeed>>) -> Login {
        Login {
            pam,
            utmp: None,
            wtmpdb: None,
            syslog: None,
            audit: None,
            audit_on: None,
            merger: merge::Merger::default(),
            state: None,
            resume: BTreeMap::new(),
            resume_wtmpdb: None,
            saved_ms: 0,
            epoch: std::time::Instant::now(),
            warned: false,
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// The positions saved by an earlier run, read once at start.
    fn restore(&mut self, cx: &Context<'_>) {
        let Some(dir) = &cx.config.state_dir else { return };
        let mut file = state::StateFile::new(dir, STATE_FILE);
        match file.load::<Saved>() {
            Ok(Some(saved)) if saved.version == STATE_VERSION => {
                self.resume = saved.files;
                self.resume_wtmpdb = saved.wtmpdb;
            }
            Ok(Some(saved)) => log::warn!(
                "{}: version {} is not this agent's ({STATE_VERSION}); starting at the ends of the files",
                file.path().display(),
                saved.version
            ),
            Ok(None) => {}
            Err(e) => log::warn!("{e}; starting at the ends of the files"),
        }
        self.state = Some(file);
    }

    /// Hands the saved positions to followers that were just made.
    fn give_positions<'a>(
        resume: &mut BTreeMap<String, follow::Position>,
        followers: impl Iterator<Item = &'a mut follow::Follower>,
    ) {
        for f in followers {
            if let Some(p) = resume.remove(f.path) {
                f.resume(p);
            }
        }
    }

    /// Saves where the followed files were left, every [`SAVE_EVERY_MS`] and
    /// at the last poll.
    fn save(&mut self, now_ms: u64, flush: bool) {
        if !flush && now_ms.saturating_sub(self.saved_ms) < SAVE_EVERY_MS {
            return;
        }
        let Some(file) = self.state.as_mut() else { return };
        self.saved_ms = now_ms;
        let mut files = BTreeMap::new();
        let followers =
            self.utmp.iter_mut().flat_map(|u| u.followers()).chain(self.syslog.iter_mut().flat_map(|s| s.followers()));
        for f in followers {
            if let Some(p) = f.position() {
                files.insert(f.path.to_string(), p);
            }
        }
        let wtmpdb = self.wtmpdb.as_ref().and_then(wtmpdb::Wtmpdb::cursor);
        file.save(&Saved { version: STATE_VERSION, files, wtmpdb });
    }

    /// Whether audit is enabled here, asked at most every [`AUDIT_RECHECK_MS`].
    fn audit_enabled(&mut self, now_ms: u64) -> bool {
        match self.audit_on {
            Some((on, at)) if now_ms.saturating_sub(at) < AUDIT_RECHECK_MS => on,
            _ => {
                let on = audit::enabled().unwrap_or(false);
                self.audit_on = Some((on, now_ms));
                on
            }
        }
    }

    /// What the PAM programs recorded since the last poll.
    fn poll_pam(&mut self, taken: &mut Taken, events: &mut Vec<LoginEvent>) {
        let Some(feed) = self.pam.as_mut() else { return };
        match feed.read() {
            Ok(f) => {
                taken.lost += f.lost;
                if f.without_items > 0 {
                    log::warn!(
                        "Login: {} PAM events of a login that began before the agent attached (or whose handle \
                         was evicted) have no user, service or terminal",
                        f.without_items
                    );
                }
                let clock = crate::enrich::BootClock::now();
                events.extend(f.events.iter().filter_map(|e| pam::login_event(e, &clock)));
            }
            Err(e) => taken.fail("PAM ring buffer", e),
        }
    }
}

impl Default for Login {
    fn default() -> Self {
        Login::new(None)
    }
}

/// Whether `wanted` (the configured list) reads `source`; auto takes pam
/// and utmp (pam only where the agent could attach to a libpam), syslog
/// only when named, as devices with utmp log the same logins there too.
/// Audit under auto depends on the kernel's state, asked in `poll`.
pub fn reads(wanted: &[LoginSource], source: LoginSource) -> bool {
    wanted.contains(&source)
        || (wanted.contains(&LoginSource::Auto) && matches!(source, LoginSource::Utmp | LoginSource::Pam))
}

/// Whether the agent should attach the PAM programs for `config`.
pub fn wants_pam(config: &crate::config::Config) -> bool {
    config.collects(EventType::Login) && reads(&config.login_sources, LoginSource::Pam)
}

impl EventSource for Login {
    fn event_type(&self) -> EventType {
        EventType::Login
    }

    fn start(&mut self, cx: &Context<'_>) {
        // Where an earlier run stopped, or else the files' ends now: what
        // is appended from there on is news.
        self.restore(cx);
        let taken = self.poll(cx);
        for f in &taken.failures {
            log::warn!("Login: cannot read {}: {}", f.source, f.reason);
        }
    }

    fn poll(&mut self, cx: &Context<'_>) -> Taken {
        let mut taken = Taken::default();
        let now = self.now_ms();
        if !cx.config.collects(EventType::Login) {
            // Off: the files are not followed, and when it is on again the past is not news.
            self.utmp = None;
            self.wtmpdb = None;
            self.syslog = None;
            self.audit = None;
            self.resume.clear();
            self.resume_wtmpdb = None;
            // The ring holds nothing once the programs are detached; what it held went out with the last window.
            self.merger.release(now, true);
            return taken;
        }
        let wanted = &cx.config.login_sources;
        let named_audit = wanted.contains(&LoginSource::Audit);
        if !self.warned {
            self.warned = true;
            if named_audit && !self.audit_enabled(now) {
                log::warn!(
                    "Login: loginSource names audit, but audit is not enabled here (auditctl -s); the agent never \
                     enables it: no audit records until something else does"
                );
            }
        }
        let mut events = Vec::new();
        let mut sources = 0;
        if reads(wanted, LoginSource::Pam) {
            self.poll_pam(&mut taken, &mut events);
            sources += usize::from(!cx.libpam.is_empty());
        }
        if reads(wanted, LoginSource::Utmp) {
            let resume = &mut self.resume;
            self.utmp
                .get_or_insert_with(|| {
                    let mut u = utmp::Utmp::new(utmp::NATIVE);
                    Login::give_positions(resume, u.followers());
                    u
                })
                .poll(cx.host, &mut taken, &mut events);
            let resume = &mut self.resume_wtmpdb;
            self.wtmpdb
                .get_or_insert_with(|| {
                    let mut w = wtmpdb::Wtmpdb::default();
                    if let Some(c) = resume.take() {
                        w.resume(c);
                    }
                    w
                })
                .poll(cx.host, &mut taken, &mut events);
            sources += 1;
        } else {
            self.utmp = None;
            self.wtmpdb = None;
        }
        // Named, audit is read whatever its state (records come once it is
        // enabled); under auto only while it is enabled.
        if named_audit || (wanted.contains(&LoginSource::Auto) && self.audit_enabled(now)) {
            if self.audit.is_none() {
                match audit::Audit::open() {
                    Ok(a) => self.audit = Some(a),
                    Err(e) => taken.fail("audit multicast group", e),
                }
            }
            if let Some(a) = self.audit.as_mut() {
                a.poll(&mut taken, &mut events);
                sources += 1;
            }
        } else {
            self.audit = None;
        }
        if reads(wanted, LoginSource::Syslog) {
            let resume = &mut self.resume;
            self.syslog
                .get_or_insert_with(|| {
                    let mut s = syslog::Syslog::default();
                    Login::give_positions(resume, s.followers());
                    s
                })
                .poll(cx.host, &mut taken, &mut events);
            sources += 1;
        } else {
            self.syslog = None;
        }
        // Positions not taken now are of a source not read: they would be stale later.
        self.resume.clear();
        self.resume_wtmpdb = None;
        self.save(now, cx.flush);
        let wall_now = std::time::SystemTime::now();
        let wall_ms = |t: std::time::SystemTime| {
            t.duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or_default()
        };
        for e in events {
            let when = wall_ms(e.time.unwrap_or(wall_now));
            self.merger.add(e, now, when);
        }
        // One source has nothing to wait for; the last poll before a window
        // closes at shutdown waits for nothing either.
        for e in self.merger.release(now, sources < 2 || cx.flush) {
            taken.push(e.key(), &e);
        }
        taken
    }
}

/// What `hitcount check` says of each Login source on this host: whether
/// it can see anything, and why not.
pub fn source_checks(host: &HostFs) -> Vec<(LoginSource, bool, String)> {
    let file = |path: &str| match host.resolve(path).map(std::fs::metadata) {
        Ok(Ok(m)) if m.is_file() => Ok(m.len()),
        Ok(Ok(_)) => Err(format!("{path} is not a file")),
        Ok(Err(e)) => Err(format!("{path}: {e}")),
        Err(e) => Err(e.to_string()),
    };
    let mut out = Vec::new();
    let (w, b) = (file(utmp::WTMP), file(utmp::BTMP));
    let detail = match (&w, &b) {
        (Ok(_), Ok(_)) => format!(
            "follows {} (Login, Logout; sessions with a terminal) and {} (LoginFailed); {}-byte records",
            utmp::WTMP,
            utmp::BTMP,
            utmp::NATIVE.size
        ),
        _ => format!(
            "{}; glibc never creates these files: without wtmp no Login or Logout, without btmp no LoginFailed",
            [w.as_ref().err(), b.as_ref().err()].into_iter().flatten().cloned().collect::<Vec<_>>().join("; ")
        ),
    };
    let (detail, works) = match file(wtmpdb::WTMPDB) {
        Ok(_) => (format!("{detail}; follows {} (Login, Logout: wtmpdb)", wtmpdb::WTMPDB), true),
        Err(_) => (detail, w.is_ok() && b.is_ok()),
    };
    out.push((LoginSource::Utmp, works, detail));
    let libs = pam::find_libraries(host);
    out.push(if libs.is_empty() {
        (
            LoginSource::Pam,
            false,
            format!(
                "no {} in {} or mapped by a process: nothing here uses PAM (utmp and syslog remain)",
                pam::SONAME,
                pam::LIBRARY_DIRS.join(", ")
            ),
        )
    } else {
        let paths: Vec<String> = libs.iter().map(|l| l.path.display().to_string()).collect();
        (LoginSource::Pam, true, format!("uprobes on {} (every PAM service, tty or not)", paths.join(", ")))
    });
    out.push(match audit::enabled() {
        Ok(true) => (LoginSource::Audit, true, "audit is enabled: PAM's records from the audit multicast group".into()),
        Ok(false) => (
            LoginSource::Audit,
            false,
            "audit is not enabled (auditctl -s): not read under auto; the agent never enables it".into(),
        ),
        Err(e) => (LoginSource::Audit, false, e),
    });
    let log = syslog::FILES.into_iter().find(|p| file(p).is_ok());
    out.push(match log {
        Some(p) => (LoginSource::Syslog, true, format!("follows {p} (sshd, dropbear) when loginSource names syslog")),
        None => (
            LoginSource::Syslog,
            false,
            format!("no {} here (no syslog daemon writes one)", syslog::FILES.join(" or ")),
        ),
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checks_say_which_sources_can_see_anything() {
        let dir = crate::hostfs::tests::tempdir::Dir::new("login-check");
        std::fs::create_dir_all(dir.0.join("var/log")).unwrap();
        std::fs::write(dir.0.join("var/log/wtmp"), b"").unwrap();
        let host = HostFs::new(&dir.0);
        // Audit's state is the running kernel's, not the tree's: not compared.
        let ok = |c: &[(LoginSource, bool, String)]| {
            c.iter().filter(|(s, ..)| *s != LoginSource::Audit).map(|(s, ok, _)| (*s, *ok)).collect::<Vec<_>>()
        };
        let c = source_checks(&host);
        use LoginSource::*;
        assert_eq!(ok(&c), [(Utmp, false), (Pam, false), (Syslog, false)]);
        assert!(c[1].2.contains("libpam.so.0"), "{}", c[1].2);
        assert!(c[0].2.contains("/var/log/btmp"), "{}", c[0].2);
        std::fs::write(dir.0.join("var/log/btmp"), b"").unwrap();
        std::fs::write(dir.0.join("var/log/secure"), b"").unwrap();
        std::fs::create_dir_all(dir.0.join("usr/lib")).unwrap();
        std::fs::write(dir.0.join("usr/lib/libpam.so.0"), b"").unwrap();
        let c = source_checks(&host);
        assert_eq!(ok(&c), [(Utmp, true), (Pam, true), (Syslog, true)]);
        assert!(c[1].2.contains("usr/lib/libpam.so.0"), "{}", c[1].2);
        assert!(c[3].2.contains("/var/log/secure"), "{}", c[3].2);
    }

    #[test]
    fn logins_while_the_agent_was_down_are_reported_after_the_restart() {
        let dir = crate::hostfs::tests::tempdir::Dir::new("login-state");
        std::fs::create_dir_all(dir.0.join("var/log")).unwrap();
        let wtmp = dir.0.join("var/log/wtmp");
        let data =
            std::fs::read(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/login/wtmp-384")).unwrap();
        // Records 1 and 2 are alice's login (pts/3) and root's (tty1).
        std::fs::write(&wtmp, &data[..384 * 2]).unwrap();
        let host = HostFs::new(&dir.0);
        let mut config = crate::config::Config::default();
        config.login_sources = vec![LoginSource::Utmp];
        config.state_dir = Some(dir.0.join("state"));
        let cx = Context::new(&host, &config);
        let flush = Context { flush: true, ..Context::new(&host, &config) };
        let users = |t: Taken| -> Vec<String> {
            t.items.iter().map(|i| i.payload["user_name"].as_str().unwrap().to_string()).collect()
        };
        let mut first = Login::new(None);
        first.start(&cx);
        assert_eq!(users(first.poll(&flush)), Vec::<String>::new(), "what was there at the first start is the past");
        drop(first);
        std::fs::write(&wtmp, &data[..384 * 3]).unwrap();
        let mut second = Login::new(None);
        second.start(&cx);
        assert_eq!(users(second.poll(&flush)), ["root"], "written while no agent ran");
        // Without a state directory a restart starts at the end again.
        std::fs::write(&wtmp, &data[..384 * 5]).unwrap();
        config.state_dir = None;
        let cx = Context::new(&host, &config);
        let mut third = Login::new(None);
        third.start(&cx);
        assert_eq!(users(third.poll(&cx)), Vec::<String>::new());
    }

    #[test]
    fn names_are_escaped_and_bounded() {
        assert_eq!(escape(b"alice", 32), "alice");
        assert_eq!(escape(b"a\\b\n\x7f", 32), "a\\\\b\\x0a\\x7f");
        assert_eq!(escape("é\u{9b}".as_bytes(), 32), "é\\xc2\\x9b");
        assert_eq!(escape(b"\xff\xfeok", 32), "\\xff\\xfeok");
        assert_eq!(escape(&[b'x'; 1000], USER_NAME_MAX).len(), USER_NAME_MAX);
        // Never cut inside an escape: 3 bytes fit, "\x01" needs 4.
        assert_eq!(escape(b"ab\x01", 5), "ab");
    }

    #[test]
    fn the_key_is_the_five_fields_and_not_the_pid() {
        let e = |pid, user: &str| LoginEvent {
            operation: Operation::LoginFailed,
            process_id: pid,
            user_name: user.into(),
            executable: "ssh:notty".into(),
            remote_address: "10.0.0.1".into(),
            remote_port: None,
            service: None,
            source: "utmp",
            time: None,
        };
        assert_eq!(e(1, "a").key(), e(2, "a").key());
        assert_ne!(e(1, "a").key(), e(1, "b").key());
        let mut s = e(1, "a");
        s.service = Some("sshd".into());
        assert_ne!(s.key(), e(1, "a").key());
    }

    #[test]
    fn auto_reads_pam_and_utmp_and_a_named_source_only_itself() {
        use LoginSource::*;
        assert!(reads(&[Auto], Utmp));
        assert!(reads(&[Auto], Pam));
        assert!(!reads(&[Auto], Audit), "auto reads audit only while it is enabled: asked at run time, not here");
        assert!(!reads(&[Pam], Utmp));
        assert!(reads(&[Pam, Utmp], Utmp));
        assert!(!reads(&[Auto], Syslog), "syslog only when named");
        assert!(reads(&[Syslog], Syslog));
    }
}
