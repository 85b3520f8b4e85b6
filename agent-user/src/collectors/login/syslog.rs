//! The syslog source's parser: the lines OpenSSH's sshd and dropbear log
//! to auth.log (Debian) or secure (Red Hat) about logins, for devices
//! without PAM or utmp. Pure.
//!
//! A line is `TIMESTAMP HOST PROGRAM[PID]: MESSAGE`, the timestamp either
//! `Mmm dd hh:mm:ss` (RFC 3164) or one RFC 3339 word (rsyslog's precise
//! format). Messages read (OpenSSH auth.c auth_log, auth2.c; dropbear
//! svr-auth.c, svr-authpasswd.c, common-session.c):
//! - sshd: `Accepted METHOD for USER from ADDR port PORT ...` (Login),
//!   `Failed METHOD for [invalid user ]USER from ADDR port PORT ...` and
//!   `Invalid user USER from ADDR port PORT` (LoginFailed),
//!   `Disconnected from user USER ADDR port PORT` (Logout).
//! - dropbear: `Password auth succeeded for 'USER' from ADDR:PORT`,
//!   `Pubkey auth succeeded for 'USER' with key ... from ADDR:PORT` (Login),
//!   `Bad password attempt for 'USER' from ADDR:PORT`,
//!   `Login attempt for nonexistent user 'USER' from ADDR:PORT` (LoginFailed),
//!   `Exit (USER) from <ADDR:PORT>: ...` (Logout).
use super::{
    escape,
    follow::{Follower, READ_MAX},
    LoginEvent, Operation, USER_NAME_MAX,
};
use crate::{collectors::Taken, hostfs::HostFs};

/// Longest line read; a longer one is not a login line (and is skipped whole).
pub const LINE_MAX: usize = 4096;

/// The program, its pid and the message of a syslog line.
fn split(line: &str) -> Option<(&str, u32, &str)> {
    let mut rest = line.trim_end();
    // RFC 3164 "Dec  2 00:45:55" is three words, RFC 3339 one; the host follows.
    let first = rest.split_whitespace().next()?;
    let words = if first.len() >= 19 && first.as_bytes()[4] == b'-' { 2 } else { 4 };
    for _ in 0..words {
        rest = rest.trim_start();
        rest = &rest[rest.find(' ')?..];
    }
    let rest = rest.trim_start();
    let (tag, message) = rest.split_once(": ")?;
    let (program, pid) = tag.strip_suffix(']')?.split_once('[')?;
    Some((program.rsplit('/').next()?, pid.parse().ok()?, message))
}

fn event(op: Operation, pid: u32, user: &str, addr: &str, port: Option<u16>, service: &str) -> LoginEvent {
    LoginEvent {
        operation: op,
        process_id: pid,
        user_name: escape(user.as_bytes(), USER_NAME_MAX),
        // Neither logs the terminal of a session.
        executable: String::new(),
        remote_address: escape(addr.as_bytes(), 256),
        remote_port: port,
        service: Some(service.to_string()),
        source: "syslog",
        time: None,
    }
}

/// "USER from ADDR port PORT..." -> (user, addr, port). The user comes first and
/// may hold spaces: the address is after the last " from ".
fn sshd_tail(s: &str) -> Option<(&str, &str, Option<u16>)> {
    let (user, rest) = s.rsplit_once(" from ")?;
    let mut w = rest.split_whitespace();
    let addr = w.next()?;
    let port = match (w.next(), w.next()) {
        (Some("port"), Some(p)) => p.parse().ok(),
        _ => None,
    };
    Some((user, addr, port))
}

fn sshd(pid: u32, m: &str) -> Option<LoginEvent> {
    if let Some(rest) = m.strip_prefix("Accepted ") {
        let (_, rest) = rest.split_once(" for ")?;
        let (user, addr, port) = sshd_tail(rest)?;
        return Some(event(Operation::Login, pid, user, addr, port, "sshd"));
    }
    if let Some(rest) = m.strip_prefix("Failed ") {
        let (_, rest) = rest.split_once(" for ")?;
        let rest = rest.strip_prefix("invalid user ").unwrap_or(rest);
        let (user, addr, port) = sshd_tail(rest)?;
        return Some(event(Operation::LoginFailed, pid, user, addr, port, "sshd"));
    }
    if let Some(rest) = m.strip_prefix("Invalid user ") {
        let (user, addr, port) = sshd_tail(rest)?;
        return Some(event(Operation::LoginFailed, pid, user, addr, port, "sshd"));
    }
    if let Some(rest) = m.strip_prefix("Disconnected from user ") {
        // "USER ADDR port PORT": no " from " here.
        let mut w = rest.rsplitn(4, ' ');
        let (port, kw, addr, user) = (w.next()?, w.next()?, w.next()?, w.next()?);
        if kw != "port" {
            return None;
        }
        return Some(event(Operation::Logout, pid, user, addr, port.parse().ok(), "sshd"));
    }
    None
}

/// "ADDR:PORT" (an IPv6 address has colons too: the port is after the last).
fn host_port(s: &str) -> (&str, Option<u16>) {
    match s.rsplit_once(':') {
        Some((a, p)) if p.bytes().all(|b| b.is_ascii_digit()) && !p.is_empty() => {
            (a.trim_start_matches('[').trim_end_matches(']'), p.parse().ok())
        }
        _ => (s, None),
    }
}

/// 'USER' ... from ADDR:PORT
fn quoted_user(s: &str) -> Option<(&str, &str)> {
    let s = s.strip_prefix('\'')?;
    let (user, rest) = s.rsplit_once("' ")?;
    let (_, from) = rest.rsplit_once("from ")?;
    Some((user, from.split_whitespace().next()?))
}

fn dropbear(pid: u32, m: &str) -> Option<LoginEvent> {
    let (op, rest) = if let Some(r) =
        m.strip_prefix("Password auth succeeded for ").or_else(|| m.strip_prefix("Pubkey auth succeeded for "))
    {
        (Operation::Login, r)
    } else if let Some(r) =
        m.strip_prefix("Bad password attempt for ").or_else(|| m.strip_prefix("Login attempt for nonexistent user "))
    {
        (Operation::LoginFailed, r)
    } else if let Some(r) = m.strip_prefix("Exit (") {
        let (user, rest) = r.split_once(") from <")?;
        let (addr, _) = rest.split_once('>')?;
        let (addr, port) = host_port(addr);
        return Some(event(Operation::Logout, pid, user, addr, port, "dropbear"));
    } else {
        return None;
    };
    let (user, from) = quoted_user(rest)?;
    let (addr, port) = host_port(from);
    Some(event(op, pid, user, addr, port, "dropbear"))
}

/// The Login event of one auth.log line, if it is one.
pub fn parse_line(line: &str) -> Option<LoginEvent> {
    if line.len() > LINE_MAX {
        return None;
    }
    let (program, pid, message) = split(line)?;
    match program {
        // OpenSSH 9.8 and later log the session and authentication as sshd-session and sshd-auth.
        "sshd" | "sshd-session" | "sshd-auth" => sshd(pid, message),
        "dropbear" => dropbear(pid, message),
        _ => None,
    }
}

/// Where auth.log lives (Debian) or secure (Red Hat); both followed.
pub const FILES: [&str; 2] = ["/var/log/auth.log", "/var/log/secure"];

/// The syslog source: auth.log and secure followed line by line.
#[derive(Debug)]
pub struct Syslog {
    files: Vec<Follower>,
}

impl Default for Syslog {
    fn default() -> Self {
        Syslog { files: FILES.into_iter().map(Follower::new).collect() }
    }
}

impl Syslog {
    pub fn followers(&mut self) -> impl Iterator<Item = &mut Follower> {
        self.files.iter_mut()
    }

    pub fn poll(&mut self, host: &HostFs, taken: &mut Taken, out: &mut Vec<LoginEvent>) {
        for f in &mut self.files {
            let a = f.read(host, 0, 1, taken);
            let end = a.bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
            if end == 0 && a.bytes.len() as u64 >= READ_MAX {
                // No line ends in a whole read: not a log line, and never one.
                f.used(a.bytes.len());
                taken.fail(f.path, format!("skipped {} bytes with no line end", a.bytes.len()));
                continue;
            }
            f.used(end);
            if a.priming {
                continue;
            }
            for line in a.bytes[..end].split(|&b| b == b'\n') {
                out.extend(parse_line(&String::from_utf8_lossy(line)));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Operation::*;

    type Expected = Option<(Operation, u32, &'static str, &'static str, Option<u16>, &'static str)>;

    fn parsed(line: &str) -> Option<(Operation, u32, String, String, Option<u16>, String)> {
        parse_line(line).map(|e| {
            (e.operation, e.process_id, e.user_name, e.remote_address, e.remote_port, e.service.unwrap_or_default())
        })
    }

    /// Each line parses to what it should (None: not a login line).
    fn check(cases: &[(&str, Expected)]) {
        for (line, want) in cases {
            let want = want.map(|(o, p, u, a, port, s)| (o, p, u.to_string(), a.to_string(), port, s.to_string()));
            assert_eq!(parsed(line), want, "{line}");
        }
    }

    #[test]
    fn openssh_lines_in_both_timestamp_formats() {
        check(&[
            (
                "Dec  2 00:45:55 vm sshd[3448]: Failed password for hclf from 10.200.61.1 port 59168 ssh2",
                Some((LoginFailed, 3448, "hclf", "10.200.61.1", Some(59168), "sshd")),
            ),
            (
                "2026-12-02T00:45:48.123456+00:00 vm sshd[3364]: Invalid user bob from fd00::1 port 4242",
                Some((LoginFailed, 3364, "bob", "fd00::1", Some(4242), "sshd")),
            ),
            (
                "Dec 12 10:00:01 vm sshd[7]: Failed password for invalid user bob from 10.0.0.1 port 22 ssh2",
                Some((LoginFailed, 7, "bob", "10.0.0.1", Some(22), "sshd")),
            ),
            (
                "Dec 12 10:00:01 vm sshd-session[7]: Accepted publickey for alice from 10.0.0.1 port 22 ssh2: ED25519 x",
                Some((Login, 7, "alice", "10.0.0.1", Some(22), "sshd")),
            ),
            (
                "Dec 12 10:00:09 vm sshd[7]: Disconnected from user alice 10.0.0.1 port 22",
                Some((Logout, 7, "alice", "10.0.0.1", Some(22), "sshd")),
            ),
            // Not logins: the preauth disconnect, other programs, PAM's own lines.
            ("Dec 12 10:00:09 vm sshd[7]: Disconnected from authenticating user bob 10.0.0.1 port 22 [preauth]", None),
            ("Dec 12 10:00:09 vm cron[7]: Accepted password for alice from 10.0.0.1 port 22", None),
            ("Dec 12 10:00:09 vm sshd[7]: pam_unix(sshd:session): session closed for user alice", None),
            ("sshd[7]: Accepted password for alice from 10.0.0.1 port 22", None),
        ]);
    }

    #[test]
    fn a_name_that_imitates_the_line_keeps_the_real_address() {
        let line = "Dec 12 10:00:01 vm sshd[7]: Invalid user x from 6.6.6.6 port 1 from 10.0.0.1 port 22";
        check(&[(line, Some((LoginFailed, 7, "x from 6.6.6.6 port 1", "10.0.0.1", Some(22), "sshd")))]);
        let line = "Dec 12 10:00:01 vm sshd[7]: Invalid user \u{1b}[2J from 10.0.0.1 port 22";
        assert_eq!(parsed(line).unwrap().2, "\\x1b[2J");
        assert_eq!(
            parse_line(&format!(
                "Dec 12 10:00:01 vm sshd[7]: Invalid user {} from 1.2.3.4 port 2",
                "a".repeat(LINE_MAX)
            )),
            None
        );
    }

    #[test]
    fn dropbear_lines() {
        check(&[
            (
                "Dec  2 00:45:55 gw dropbear[1234]: Password auth succeeded for 'root' from 192.168.1.2:53412",
                Some((Login, 1234, "root", "192.168.1.2", Some(53412), "dropbear")),
            ),
            (
                "Dec  2 00:45:55 gw dropbear[1234]: Bad password attempt for 'root' from [fd00::2]:53412",
                Some((LoginFailed, 1234, "root", "fd00::2", Some(53412), "dropbear")),
            ),
            (
                "Dec  2 00:45:55 gw dropbear[9]: Login attempt for nonexistent user 'bob' from 192.168.1.2:1",
                Some((LoginFailed, 9, "bob", "192.168.1.2", Some(1), "dropbear")),
            ),
            (
                "Dec  2 00:45:55 gw dropbear[9]: Pubkey auth succeeded for 'root' with ssh-ed25519 key x from 192.168.1.2:5",
                Some((Login, 9, "root", "192.168.1.2", Some(5), "dropbear")),
            ),
            (
                "Dec  2 00:46:00 gw dropbear[9]: Exit (root) from <192.168.1.2:5>: Disconnect received",
                Some((Logout, 9, "root", "192.168.1.2", Some(5), "dropbear")),
            ),
            ("Dec  2 00:46:00 gw dropbear[9]: Exit before auth from <192.168.1.2:5>: Exited normally", None),
        ]);
    }

    #[test]
    fn lines_are_followed_whole() {
        let dir = crate::hostfs::tests::tempdir::Dir::new("syslog-follow");
        std::fs::create_dir_all(dir.0.join("var/log")).unwrap();
        let host = HostFs::new(&dir.0);
        let path = dir.0.join("var/log/auth.log");
        let old = "Dec 12 10:00:01 vm sshd[7]: Invalid user old from 10.0.0.1 port 22\n";
        std::fs::write(&path, old).unwrap();
        let mut s = Syslog::default();
        let (mut t, mut out) = (Taken::default(), Vec::new());
        s.poll(&host, &mut t, &mut out);
        assert!(out.is_empty(), "the past is not news");
        let line = "Dec 12 10:00:02 vm sshd[8]: Invalid user new from 10.0.0.1 port 22\n";
        std::fs::write(&path, format!("{old}{}", &line[..20])).unwrap();
        s.poll(&host, &mut t, &mut out);
        assert!(out.is_empty(), "half a line waits");
        std::fs::write(&path, format!("{old}{line}")).unwrap();
        s.poll(&host, &mut t, &mut out);
        assert_eq!(out.iter().map(|e| e.user_name.as_str()).collect::<Vec<_>>(), ["new"]);
        assert_eq!(t.failures, []);
    }
}
