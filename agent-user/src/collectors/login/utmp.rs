//! The utmp source: wtmp (sign-ins and sign-outs) and btmp (failed
//! attempts), the fixed-size `struct utmp` records glibc's login functions
//! append (bits/utmp.h). The layout differs by architecture: where
//! `__WORDSIZE_TIME64_COMPAT32` is set (x86_64) `ut_session` and `ut_tv`
//! are 32-bit (384-byte records); elsewhere (aarch64) they are `long` and
//! `struct timeval` (400 bytes, 8-byte aligned).
//!
//! Followed by a bounded read of what was appended since the last poll
//! ([`super::follow`]).
use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use super::{escape, follow::Follower, LoginEvent, Operation};
use crate::{collectors::Taken, hostfs::HostFs};

pub const WTMP: &str = "/var/log/wtmp";
pub const BTMP: &str = "/var/log/btmp";

/// Bytes of wtmp read at start to learn the sessions already open, so that
/// their Logout names the user.
pub const PRIME_MAX: u64 = 256 << 10;
/// Open sessions remembered (by terminal) to name the user of a Logout.
pub const SESSIONS_MAX: usize = 4096;

pub const LOGIN_PROCESS: i16 = 6;
pub const USER_PROCESS: i16 = 7;
pub const DEAD_PROCESS: i16 = 8;

/// Where the fields of one record are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    pub size: usize,
    /// Offset of `ut_tv` and the size of each of its two fields (seconds, microseconds).
    tv: (usize, usize),
    /// Offset of `ut_addr_v6` (after `ut_session` and `ut_tv`, whose size differs).
    addr: usize,
}

/// x86_64 (and 32-bit targets): 32-bit `ut_session` and `ut_tv`.
pub const LAYOUT_384: Layout = Layout { size: 384, tv: (340, 4), addr: 348 };
/// aarch64 and the other 64-bit targets: `long ut_session`, `struct timeval ut_tv`.
pub const LAYOUT_400: Layout = Layout { size: 400, tv: (344, 8), addr: 360 };

/// The layout of the records this host's glibc writes.
pub const NATIVE: Layout =
    if cfg!(target_arch = "x86_64") || cfg!(target_pointer_width = "32") { LAYOUT_384 } else { LAYOUT_400 };

// Offsets common to both layouts.
const PID: usize = 4;
const LINE: (usize, usize) = (8, 32);
const USER: (usize, usize) = (44, 32);
const HOST: (usize, usize) = (76, 256);

/// One record, its strings cut at the first NUL and escaped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub kind: i16,
    pub pid: u32,
    pub line: String,
    pub user: String,
    /// `ut_addr_v6` when set, else `ut_host` when it is an address, else
    /// `ut_host` as written (a host name); empty for a local login.
    pub remote: String,
    /// `ut_tv`; None when unset (zero) or past what SystemTime holds.
    pub time: Option<std::time::SystemTime>,
}

fn field(rec: &[u8], (at, len): (usize, usize)) -> String {
    let f = &rec[at..at + len];
    let end = f.iter().position(|&b| b == 0).unwrap_or(len);
    escape(&f[..end], len * 4)
}

/// `ut_tv`: two 32-bit or two 64-bit signed fields, seconds and microseconds.
fn time(rec: &[u8], layout: Layout) -> Option<std::time::SystemTime> {
    let (at, size) = layout.tv;
    let int = |at: usize| -> Option<i64> {
        let b = rec.get(at..at + size)?;
        Some(if size == 4 {
            i32::from_ne_bytes(b.try_into().ok()?) as i64
        } else {
            i64::from_ne_bytes(b.try_into().ok()?)
        })
    };
    let (sec, usec) = (u64::try_from(int(at)?).ok()?, u64::try_from(int(at + size)?).ok()?);
    if sec == 0 || usec >= 1_000_000 {
        return None;
    }
    std::time::UNIX_EPOCH.checked_add(std::time::Duration::from_secs(sec) + std::time::Duration::from_micros(usec))
}

fn address(rec: &[u8], layout: Layout) -> Option<IpAddr> {
    let a: [u8; 16] = rec[layout.addr..layout.addr + 16].try_into().ok()?;
    if a == [0; 16] {
        return None;
    }
    // glibc stores an IPv4 address in the first word, the other three zero.
    if a[4..] == [0; 12] {
        return Some(IpAddr::V4(Ipv4Addr::new(a[0], a[1], a[2], a[3])));
    }
    let v6 = Ipv6Addr::from(a);
    Some(v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(IpAddr::V6(v6)))
}

/// Parses every whole record of `data`; a partial record at the end is left
/// (the writer may be mid-append) and its length returned with the records.
pub fn parse(data: &[u8], layout: Layout) -> (Vec<Record>, usize) {
    let chunks = data.chunks_exact(layout.size);
    let rest = chunks.remainder().len();
    let records = chunks
        .map(|rec| {
            let kind = i16::from_ne_bytes([rec[0], rec[1]]);
            let pid = u32::from_ne_bytes(rec[PID..PID + 4].try_into().unwrap_or_default());
            let host = field(rec, HOST);
            let remote = match address(rec, layout) {
                Some(a) => a.to_string(),
                None => host.parse::<IpAddr>().map(|a| a.to_string()).unwrap_or(host),
            };
            Record { kind, pid, line: field(rec, LINE), user: field(rec, USER), remote, time: time(rec, layout) }
        })
        .collect();
    (records, rest)
}

/// What the records of a local login say of the remote end.
fn remote_or_local(remote: &str) -> String {
    if remote.is_empty() {
        super::LOCAL.to_string()
    } else {
        remote.to_string()
    }
}

/// Turns wtmp and btmp records into events; remembers open sessions (by
/// terminal) so that a DEAD_PROCESS, which carries no user, names one.
#[derive(Debug, Default)]
pub struct Sessions {
    open: HashMap<String, Record>,
}

impl Sessions {
    /// A wtmp record: USER_PROCESS is a Login, DEAD_PROCESS a Logout (of the
    /// session open on that line); run levels, boot and shutdown are not logins.
    pub fn wtmp(&mut self, r: Record, remember_only: bool) -> Option<LoginEvent> {
        match r.kind {
            USER_PROCESS if !r.user.is_empty() => {
                if self.open.len() >= SESSIONS_MAX && !self.open.contains_key(&r.line) {
                    // The oldest cannot be told apart cheaply; any one frees room.
                    if let Some(k) = self.open.keys().next().cloned() {
                        self.open.remove(&k);
                    }
                }
                let e = (!remember_only).then(|| event(Operation::Login, &r));
                self.open.insert(r.line.clone(), r);
                e
            }
            DEAD_PROCESS if !r.line.is_empty() => {
                let opened = self.open.remove(&r.line);
                if remember_only {
                    return None;
                }
                // The session's own record names the user and the remote end;
                // the DEAD_PROCESS has neither. Unknown when it opened before
                // what was read at start.
                let mut e = event(Operation::Logout, &r);
                if let Some(o) = opened {
                    e.user_name = o.user;
                    e.remote_address = remote_or_local(&o.remote);
                    if e.process_id == 0 {
                        e.process_id = o.pid;
                    }
                }
                Some(e)
            }
            _ => None,
        }
    }

    /// A btmp record: every one is a failed attempt (login(1) and sshd
    /// write LOGIN_PROCESS; others USER_PROCESS).
    pub fn btmp(r: Record) -> Option<LoginEvent> {
        matches!(r.kind, LOGIN_PROCESS | USER_PROCESS).then(|| event(Operation::LoginFailed, &r))
    }
}

fn event(operation: Operation, r: &Record) -> LoginEvent {
    LoginEvent {
        operation,
        process_id: r.pid,
        user_name: r.user.clone(),
        executable: r.line.clone(),
        remote_address: remote_or_local(&r.remote),
        remote_port: None,
        service: None,
        source: "utmp",
        time: r.time,
    }
}

/// The utmp source: wtmp and btmp followed, events made.
#[derive(Debug)]
pub struct Utmp {
    layout: Layout,
    wtmp: Follower,
    btmp: Follower,
    sessions: Sessions,
}

/// Whole records of what `f` read; a partial one at the end is read again later.
fn records(f: &mut Follower, host: &HostFs, prime: u64, layout: Layout, taken: &mut Taken) -> (Vec<Record>, bool) {
    let a = f.read(host, prime, layout.size as u64, taken);
    let (records, rest) = parse(&a.bytes, layout);
    f.used(a.bytes.len() - rest);
    (records, a.priming)
}

impl Utmp {
    pub fn new(layout: Layout) -> Utmp {
        Utmp { layout, wtmp: Follower::new(WTMP), btmp: Follower::new(BTMP), sessions: Sessions::default() }
    }

    pub fn followers(&mut self) -> impl Iterator<Item = &mut Follower> {
        [&mut self.wtmp, &mut self.btmp].into_iter()
    }

    pub fn poll(&mut self, host: &HostFs, taken: &mut Taken, out: &mut Vec<LoginEvent>) {
        let (found, priming) = records(&mut self.wtmp, host, PRIME_MAX, self.layout, taken);
        out.extend(found.into_iter().filter_map(|r| self.sessions.wtmp(r, priming)));
        let (found, priming) = records(&mut self.btmp, host, 0, self.layout, taken);
        if !priming {
            out.extend(found.into_iter().filter_map(Sessions::btmp));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collectors::login::Operation::*;
    use std::path::Path;

    fn fixture(name: &str) -> Vec<u8> {
        std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/login").join(name)).unwrap()
    }

    /// 2026-12-02T00:40:00Z, alice's login in wtmp-384.txt.
    const WTMP_ALICE_LOGIN: u64 = 1_796_172_000;

    #[test]
    fn x86_64_records_written_by_utmpdump_parse() {
        // Made by `utmpdump -r` (util-linux) from wtmp-384.txt: glibc's own layout.
        let (records, rest) = parse(&fixture("wtmp-384"), LAYOUT_384);
        assert_eq!(rest, 0);
        let kinds: Vec<i16> = records.iter().map(|r| r.kind).collect();
        assert_eq!(kinds, [2, USER_PROCESS, USER_PROCESS, DEAD_PROCESS, USER_PROCESS, DEAD_PROCESS]);
        assert_eq!(
            records[1],
            Record {
                kind: USER_PROCESS,
                pid: 4242,
                line: "pts/3".into(),
                user: "alice".into(),
                remote: "10.200.7.1".into(),
                time: Some(std::time::UNIX_EPOCH + std::time::Duration::from_secs(WTMP_ALICE_LOGIN)),
            }
        );
        assert_eq!((records[2].line.as_str(), records[2].remote.as_str()), ("tty1", ""));
        assert_eq!(records[4].remote, "fd00:200:7::1");
        assert_eq!((records[3].user.as_str(), records[3].pid), ("", 4242));
    }

    #[test]
    fn aarch64_records_parse_with_their_own_layout() {
        // Made by fixtures/login/make_aarch64.py from glibc's 64-bit struct.
        let data = fixture("wtmp-400");
        let (records, rest) = parse(&data, LAYOUT_400);
        assert_eq!((records.len(), rest), (2, 0));
        assert_eq!(
            (records[0].kind, records[0].pid, records[0].line.as_str(), records[0].user.as_str()),
            (USER_PROCESS, 777, "pts/0", "bob")
        );
        assert_eq!(records[0].remote, "192.0.2.9");
        let at = |s| Some(std::time::UNIX_EPOCH + std::time::Duration::from_secs(s));
        assert_eq!((records[0].time, records[1].time), (at(1_796_170_000), at(1_796_170_060)), "64-bit ut_tv");
        assert_eq!(records[1].kind, DEAD_PROCESS);
        // Read with the wrong layout the addresses are wrong: the layouts differ.
        let (wrong, _) = parse(&data, LAYOUT_384);
        assert_ne!(wrong.first().map(|r| r.remote.clone()), Some("192.0.2.9".to_string()));
    }

    #[test]
    fn a_truncated_record_is_left_for_later_and_names_are_escaped() {
        let data = fixture("wtmp-384");
        let (records, rest) = parse(&data[..384 * 2 + 100], LAYOUT_384);
        assert_eq!((records.len(), rest), (2, 100));
        let mut rec = data[384..768].to_vec();
        rec[USER.0..USER.0 + 6].copy_from_slice(b"a\x1b[2J\\");
        let (r, _) = parse(&rec, LAYOUT_384);
        assert_eq!(r[0].user, "a\\x1b[2J\\\\");
        // A name filling the field has no NUL: all 32 bytes, nothing past it.
        rec[USER.0..USER.0 + 32].fill(b'x');
        assert_eq!(parse(&rec, LAYOUT_384).0[0].user, "x".repeat(32));
    }

    #[test]
    fn logouts_are_joined_to_their_session_by_terminal() {
        let (records, _) = parse(&fixture("wtmp-384"), LAYOUT_384);
        let mut s = Sessions::default();
        let events: Vec<LoginEvent> = records.into_iter().filter_map(|r| s.wtmp(r, false)).collect();
        let seen: Vec<(Operation, &str, &str, &str)> = events
            .iter()
            .map(|e| (e.operation, e.user_name.as_str(), e.executable.as_str(), e.remote_address.as_str()))
            .collect();
        assert_eq!(
            seen,
            [
                (Login, "alice", "pts/3", "10.200.7.1"),
                (Login, "root", "tty1", "127.0.0.1"),
                (Logout, "alice", "pts/3", "10.200.7.1"),
                (Login, "carol", "pts/4", "fd00:200:7::1"),
                (Logout, "carol", "pts/4", "fd00:200:7::1"),
            ]
        );
        // A Logout of a session opened before the agent looked: no user to name.
        let dead = Record {
            kind: DEAD_PROCESS,
            pid: 9,
            line: "pts/9".into(),
            user: String::new(),
            remote: String::new(),
            time: None,
        };
        assert_eq!(s.wtmp(dead, false).map(|e| e.user_name), Some(String::new()));
    }

    #[test]
    fn btmp_records_are_failed_attempts() {
        let (records, _) = parse(&fixture("btmp-384"), LAYOUT_384);
        let events: Vec<LoginEvent> = records.into_iter().filter_map(Sessions::btmp).collect();
        assert_eq!(events.len(), 3);
        assert!(events.iter().all(|e| e.operation == LoginFailed && e.executable == "ssh:notty"));
        assert_eq!(events[2].user_name, "nosuchuser");
        assert_eq!(events[0].remote_address, "10.200.7.1");
    }

    #[test]
    fn a_followed_file_is_read_from_the_end_then_as_it_grows_is_truncated_and_rotated() {
        let dir = crate::hostfs::tests::tempdir::Dir::new("utmp-follow");
        std::fs::create_dir_all(dir.0.join("var/log")).unwrap();
        let host = HostFs::new(&dir.0);
        let path = dir.0.join("var/log/wtmp");
        let data = fixture("wtmp-384");
        let mut f = Follower::new(WTMP);
        let mut t = Taken::default();
        let read = |f: &mut Follower, prime: u64, t: &mut Taken| records(f, &host, prime, LAYOUT_384, t);
        // Missing: nothing, and when it appears it is read from its start.
        assert_eq!(read(&mut f, 0, &mut t).0.len(), 0);
        std::fs::write(&path, &data[..384 * 2 + 10]).unwrap();
        assert_eq!(read(&mut f, 0, &mut t).0.len(), 2);
        // The partial third record is read once it is whole.
        std::fs::write(&path, &data[..384 * 4]).unwrap();
        assert_eq!(read(&mut f, 0, &mut t).0.len(), 2);
        assert_eq!(read(&mut f, 0, &mut t).0.len(), 0);
        // Truncated, then written again: read from the start.
        std::fs::write(&path, &data[..384]).unwrap();
        assert_eq!(read(&mut f, 0, &mut t).0.len(), 1);
        // Rotated: a new file (new inode) of the same size is new records.
        std::fs::rename(&path, dir.0.join("var/log/wtmp.1")).unwrap();
        std::fs::write(&path, &data[384..768]).unwrap();
        assert_eq!(read(&mut f, 0, &mut t).0.len(), 1);
        assert_eq!(t.failures, []);
        // A new follower starts at the end, priming with what it was allowed to read.
        let mut g = Follower::new(WTMP);
        std::fs::write(&path, &data).unwrap();
        let (primed, priming) = read(&mut g, 384 * 2 + 1, &mut t);
        assert_eq!((primed.len(), priming), (2, true));
        assert_eq!(read(&mut g, 0, &mut t), (Vec::new(), false));
    }

    #[test]
    fn a_restart_resumes_where_the_last_run_stopped() {
        let dir = crate::hostfs::tests::tempdir::Dir::new("utmp-resume");
        std::fs::create_dir_all(dir.0.join("var/log")).unwrap();
        let host = HostFs::new(&dir.0);
        let path = dir.0.join("var/log/wtmp");
        let data = fixture("wtmp-384");
        let mut t = Taken::default();
        let read = |f: &mut Follower, prime: u64, t: &mut Taken| records(f, &host, prime, LAYOUT_384, t);
        std::fs::write(&path, &data[..384 * 2]).unwrap();
        let mut first = Follower::new(WTMP);
        read(&mut first, 0, &mut t);
        std::fs::write(&path, &data[..384 * 3 + 100]).unwrap();
        assert_eq!(read(&mut first, 0, &mut t).0.len(), 1);
        let stopped = first.position().unwrap();
        assert_eq!(stopped.offset, 384 * 3, "the partial record is not consumed");
        // Down while two more records came.
        std::fs::write(&path, &data[..384 * 5]).unwrap();
        let mut next = Follower::new(WTMP);
        next.resume(stopped);
        let (primed, priming) = read(&mut next, 384 * 2, &mut t);
        assert_eq!((primed, priming), (parse(&data[384..384 * 3], LAYOUT_384).0, true), "the past before the stop");
        let (news, priming) = read(&mut next, 384 * 2, &mut t);
        assert_eq!((news, priming), (parse(&data[384 * 3..384 * 5], LAYOUT_384).0, false), "what came while down");
        // Rotated while down: the new file is all news.
        let stopped = next.position().unwrap();
        std::fs::rename(&path, dir.0.join("var/log/wtmp.1")).unwrap();
        std::fs::write(&path, &data[..384]).unwrap();
        let mut after = Follower::new(WTMP);
        after.resume(stopped);
        assert_eq!(read(&mut after, 384 * 2, &mut t), (parse(&data[..384], LAYOUT_384).0, false));
        // A saved offset past the end (truncated, or a forged state): from the start, as news.
        let mut forged = Follower::new(WTMP);
        let m = std::fs::metadata(&path).unwrap();
        use std::os::unix::fs::MetadataExt;
        forged.resume(super::super::follow::Position { dev: m.dev(), ino: m.ino(), offset: 1 << 40 });
        assert_eq!(read(&mut forged, 0, &mut t).0.len(), 1);
        assert_eq!(t.failures, []);
    }
}
