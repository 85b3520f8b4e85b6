//! One login seen by two sources is one event. sshd tells PAM of a failed
//! password and then writes btmp; it opens the PAM session and then writes
//! wtmp. When more than one source is read, each event waits [`HOLD_MS`]
//! for its counterpart from another source; the two become one event, the
//! higher-ranked source's with the other's more specific terminal (PAM
//! knows an sshd session only as "ssh", wtmp knows its pts/N).
//!
//! Events merge only across ranks: two events of one source are never
//! merged, and a lesser source's event joins a better one's however many
//! of it there are. Three failed passwords are three events to PAM and
//! three records in btmp, and count three; an unknown user is one PAM
//! attempt and two btmp records, and counts one. The count is the best
//! source's; a login only a lesser source saw (dropbear, which has no PAM,
//! writes wtmp) stays its own event.
use std::collections::VecDeque;

use super::LoginEvent;

/// How long an event waits for its counterpart: two polls.
pub const HOLD_MS: u64 = 2_500;
/// How far apart (by the times the sources give) one login's records may
/// be, and how long a released event still absorbs a late counterpart.
pub const LATE_MS: u64 = 5_000;
/// Events held or remembered at most; past this the oldest are released
/// early (and forgotten early), so a storm costs bounded memory.
pub const HELD_MAX: usize = 4096;

/// Sources in rank order: the first is the base of a merged event.
pub const RANK: [&str; 5] = ["pam", "audit", "utmp", "wtmpdb", "syslog"];

fn rank(source: &str) -> usize {
    RANK.iter().position(|s| *s == source).unwrap_or(RANK.len())
}

/// Terminals that say only "no terminal" or "through sshd".
fn generic(terminal: &str) -> bool {
    matches!(terminal, "" | "ssh" | "ssh:notty")
}

/// Whether `a` and `b` (from different sources) can be the same login.
pub fn same_login(a: &LoginEvent, b: &LoginEvent) -> bool {
    let either_empty_or_equal = |x: &str, y: &str| x.is_empty() || y.is_empty() || x == y;
    a.operation == b.operation
        && a.remote_address == b.remote_address
        // wtmp's logout records carry no user when no login named it.
        && either_empty_or_equal(&a.user_name, &b.user_name)
        && (a.executable == b.executable || generic(&a.executable) || generic(&b.executable))
        && (a.service.is_none() || b.service.is_none() || a.service == b.service)
}

/// `base` completed with what `other` knows better.
fn merge(base: &mut LoginEvent, other: LoginEvent) {
    if rank(other.source) < rank(base.source) {
        let lesser = std::mem::replace(base, other);
        return merge(base, lesser);
    }
    if generic(&base.executable) && !generic(&other.executable) {
        base.executable = other.executable;
    }
    if base.user_name.is_empty() {
        base.user_name = other.user_name;
    }
    base.service = base.service.take().or(other.service);
    base.remote_port = base.remote_port.or(other.remote_port);
}

#[derive(Debug)]
struct Held {
    event: LoginEvent,
    /// The rank of the best source merged into it (its base's).
    best: usize,
    /// When its first part was read (monotonic: what the hold counts).
    at_ms: u64,
    /// When it happened (wall clock, the source's time or the read's).
    when_ms: u64,
}

#[derive(Debug, Default)]
pub struct Merger {
    held: VecDeque<Held>,
    /// Released early, to make room; sent at the next release.
    early: Vec<LoginEvent>,
    released: VecDeque<Held>,
}

impl Merger {
    /// One event read at `now_ms` (monotonic), that happened at `when_ms`
    /// (wall clock); it merges into the held or recently released event of
    /// another rank nearest in time, or waits for its own counterpart.
    pub fn add(&mut self, event: LoginEvent, now_ms: u64, when_ms: u64) {
        let r = rank(event.source);
        // Of the candidates, the nearest in time: two sessions of one user
        // opened a second apart each pair with their own records.
        let nearest = |list: &VecDeque<Held>| {
            list.iter()
                .enumerate()
                .filter(|(_, h)| h.best != r && same_login(&h.event, &event))
                .map(|(i, h)| (h.when_ms.abs_diff(when_ms), i))
                .filter(|(dt, _)| *dt <= LATE_MS)
                .min()
                .map(|(_, i)| i)
        };
        if let Some(i) = nearest(&self.held) {
            let h = &mut self.held[i];
            h.best = h.best.min(r);
            merge(&mut h.event, event);
            return;
        }
        if let Some(i) = nearest(&self.released) {
            // Sent already, so this one adds nothing; a better source
            // arriving this late still counts as the same login.
            let done = &mut self.released[i];
            done.best = done.best.min(r);
            return;
        }
        if self.held.len() >= HELD_MAX {
            let h = self.held.pop_front().expect("full");
            self.early.push(h.event.clone());
            self.released.push_back(h);
        }
        self.held.push_back(Held { best: r, event, at_ms: now_ms, when_ms });
    }

    /// The events whose wait is over at `now_ms` (all of them with `flush`),
    /// oldest first.
    pub fn release(&mut self, now_ms: u64, flush: bool) -> Vec<LoginEvent> {
        let mut out = std::mem::take(&mut self.early);
        while let Some(h) = self.held.front() {
            if !flush && now_ms.saturating_sub(h.at_ms) < HOLD_MS {
                break;
            }
            let h = self.held.pop_front().expect("front");
            out.push(h.event.clone());
            self.released.push_back(h);
        }
        while self.released.front().is_some_and(|r| now_ms.saturating_sub(r.at_ms) > HOLD_MS + LATE_MS)
            || self.released.len() > HELD_MAX
        {
            self.released.pop_front();
        }
        out
    }

    pub fn is_empty(&self) -> bool {
        self.held.is_empty() && self.early.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collectors::login::Operation::{self, *};

    fn ev(source: &'static str, op: Operation, user: &str, tty: &str) -> LoginEvent {
        LoginEvent {
            operation: op,
            process_id: if source == "pam" { 100 } else { 200 },
            user_name: user.into(),
            executable: tty.into(),
            remote_address: "10.0.0.1".into(),
            remote_port: None,
            service: (source == "pam").then(|| "sshd".to_string()),
            source,
            time: None,
        }
    }

    fn run(steps: &[(u64, LoginEvent)]) -> Vec<LoginEvent> {
        let mut m = Merger::default();
        let mut out = Vec::new();
        for (t, e) in steps {
            out.extend(m.release(*t, false));
            m.add(e.clone(), *t, 1_000_000 + *t);
        }
        out.extend(m.release(u64::MAX / 2, false));
        out
    }

    #[test]
    fn an_sshd_session_seen_by_pam_and_wtmp_is_one_event_with_the_pty() {
        let out = run(&[
            (0, ev("pam", Login, "alice", "ssh")),
            (1_000, ev("utmp", Login, "alice", "pts/0")),
            (9_000, ev("utmp", Logout, "", "pts/0")),
            (9_100, ev("pam", Logout, "alice", "ssh")),
        ]);
        let got: Vec<_> = out
            .iter()
            .map(|e| (e.operation, e.user_name.as_str(), e.executable.as_str(), e.source, e.process_id))
            .collect();
        assert_eq!(got, [(Login, "alice", "pts/0", "pam", 100), (Logout, "alice", "pts/0", "pam", 100)]);
        assert_eq!(out[0].service.as_deref(), Some("sshd"));
    }

    #[test]
    fn each_session_pairs_with_its_own_records_by_time() {
        // `ssh host true` (no wtmp record) and then `ssh -tt host`, read in one poll.
        let mut m = Merger::default();
        let mut quiet = ev("pam", Login, "alice", "ssh");
        quiet.process_id = 1;
        let mut tty = ev("pam", Login, "alice", "ssh");
        tty.process_id = 2;
        m.add(quiet, 0, 10_000);
        m.add(tty, 0, 10_800);
        m.add(ev("utmp", Login, "alice", "pts/1"), 1_000, 10_805);
        let out = m.release(10_000, false);
        let got: Vec<_> = out.iter().map(|e| (e.process_id, e.executable.as_str())).collect();
        assert_eq!(got, [(1, "ssh"), (2, "pts/1")]);
    }

    #[test]
    fn repeats_of_one_source_count_and_their_echoes_do_not() {
        // Three wrong passwords: PAM and btmp each see three.
        let mut steps = Vec::new();
        for i in 0..3 {
            steps.push((i * 3_000, ev("pam", LoginFailed, "bob", "ssh")));
            steps.push((i * 3_000 + 900, ev("utmp", LoginFailed, "bob", "ssh:notty")));
        }
        let out = run(&steps);
        assert_eq!(out.len(), 3, "{out:#?}");
        assert!(out.iter().all(|e| e.source == "pam" && e.executable == "ssh"));
        // A burst: all six within one hold still count three.
        let burst: Vec<_> = (0..3)
            .flat_map(|i| {
                [
                    (i * 10, ev("pam", LoginFailed, "bob", "ssh")),
                    (i * 10 + 5, ev("utmp", LoginFailed, "bob", "ssh:notty")),
                ]
            })
            .collect();
        assert_eq!(run(&burst).len(), 3);
    }

    #[test]
    fn an_unknown_user_in_btmp_twice_is_the_one_pam_attempt() {
        let out = run(&[
            (0, ev("utmp", LoginFailed, "nobody", "ssh:notty")),
            (400, ev("pam", LoginFailed, "nobody", "ssh")),
            (450, ev("utmp", LoginFailed, "nobody", "ssh:notty")),
        ]);
        assert_eq!(out.len(), 1, "{out:#?}");
        assert_eq!((out[0].source, out[0].process_id), ("pam", 100), "the better source is the base");
    }

    #[test]
    fn a_counterpart_arriving_after_the_release_is_absorbed() {
        let out =
            run(&[(0, ev("pam", LoginFailed, "bob", "ssh")), (4_000, ev("utmp", LoginFailed, "bob", "ssh:notty"))]);
        assert_eq!(out.len(), 1);
        let out =
            run(&[(0, ev("utmp", LoginFailed, "bob", "ssh:notty")), (4_000, ev("pam", LoginFailed, "bob", "ssh"))]);
        assert_eq!((out.len(), out[0].source), (1, "utmp"), "sent as utmp's; PAM's late echo is not a second attempt");
        let out =
            run(&[(0, ev("pam", LoginFailed, "bob", "ssh")), (20_000, ev("utmp", LoginFailed, "bob", "ssh:notty"))]);
        assert_eq!(out.len(), 2, "too late to be the same attempt");
    }

    #[test]
    fn what_only_one_source_saw_is_kept() {
        let out = run(&[
            (0, ev("utmp", Login, "carol", "pts/1")), // dropbear: no PAM
            (100, ev("pam", Login, "dave", "ssh")),
            (200, ev("pam", LoginFailed, "carol", "ssh")),
        ]);
        assert_eq!(out.len(), 3, "{out:#?}");
        let mut other_host = ev("utmp", Login, "dave", "pts/2");
        other_host.remote_address = "10.9.9.9".into();
        assert_eq!(run(&[(0, ev("pam", Login, "dave", "ssh")), (10, other_host)]).len(), 2);
        let mut other_tty = ev("syslog", Login, "erin", "pts/4");
        let out = run(&[(0, ev("utmp", Login, "erin", "pts/3")), (10, other_tty.clone())]);
        assert_eq!(out.len(), 2, "two specific terminals are two sessions");
        other_tty.executable = "pts/3".into();
        assert_eq!(run(&[(0, ev("utmp", Login, "erin", "pts/3")), (10, other_tty)]).len(), 1);
    }

    #[test]
    fn flush_releases_everything_and_memory_is_bounded() {
        let mut m = Merger::default();
        for i in 0..(HELD_MAX + 10) {
            m.add(ev("pam", LoginFailed, &format!("u{i}"), "ssh"), 0, 0);
        }
        let out = m.release(0, true);
        assert_eq!(out.len(), HELD_MAX + 10, "the oldest 10 left the hold early, none was lost");
        assert_eq!(out[0].user_name, "u0");
        assert!(m.is_empty());
        assert!(m.released.len() <= HELD_MAX);
    }
}

#[cfg(test)]
mod parallel {
    use super::*;
    use crate::collectors::login::Operation;

    fn ev(source: &'static str, tty: &str, pid: u32) -> LoginEvent {
        LoginEvent {
            operation: Operation::LoginFailed,
            process_id: pid,
            user_name: "u".into(),
            executable: tty.into(),
            remote_address: "10.200.70.1".into(),
            remote_port: None,
            service: (source == "pam").then(|| "hcbench-sshd".to_string()),
            source,
            time: None,
        }
    }

    #[test]
    fn a_parallel_brute_force_counts_each_attempt_once() {
        // 10 attempts a second; PAM's verdict at t, btmp's record (whole
        // seconds, as sshd writes it) a few ms later; polls every second.
        let mut m = Merger::default();
        let mut out = Vec::new();
        let base = 1_000_000_000u64;
        let mut pending: Vec<(u64, LoginEvent, u64)> = Vec::new();
        for i in 0..200u64 {
            let t = i * 100 + 37;
            pending.push((t, ev("pam", "ssh", 1), base + t));
            pending.push((t + 3, ev("utmp", "ssh:notty", 2), base + (t + 3) / 1000 * 1000));
        }
        for poll in 0..40u64 {
            let now = poll * 1000;
            out.extend(m.release(now, false));
            // pam first, then utmp, as Login::poll adds them.
            let due: Vec<_> =
                pending.iter().filter(|(t, ..)| *t < now && *t >= now.saturating_sub(1000)).cloned().collect();
            for (_, e, when) in due
                .iter()
                .filter(|(_, e, _)| e.source == "pam")
                .chain(due.iter().filter(|(_, e, _)| e.source == "utmp"))
            {
                m.add(e.clone(), now, *when);
            }
        }
        out.extend(m.release(u64::MAX / 2, true));
        let by = |s: &str| out.iter().filter(|e| e.source == s).count();
        assert_eq!((by("pam"), by("utmp")), (200, 0));
    }
}
