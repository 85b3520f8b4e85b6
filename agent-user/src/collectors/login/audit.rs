//! The audit source: the records PAM writes through libaudit, read from
//! the audit netlink multicast group (AUDIT_NLGRP_READLOG, which needs
//! CAP_AUDIT_READ), as they go to auditd. Only where audit is enabled
//! already: the agent never enables it, because with no audit daemon the
//! kernel then prints every record to its log.
//!
//! Records (include/uapi/linux/audit.h; text as libaudit's
//! audit_log_acct_message writes it): `audit(SECS.MSEC:SERIAL): pid=P uid=U
//! auid=A ses=S msg='op=PAM:authentication grantors=... acct="alice"
//! exe="/usr/sbin/sshd" hostname=H addr=A terminal=T res=success|failed'`.
//! An untrusted string (acct, exe) is quoted when it is plain, else
//! hex-encoded without quotes; `?` is "unknown".
//! - USER_AUTH (1100) and USER_ACCT (1101) failed: LoginFailed;
//! - USER_START (1105) succeeded (PAM session opened): Login;
//! - USER_END (1106): Logout.
//!
//! sshd's own USER_LOGIN records repeat what PAM's say and are not read.
use std::time::{Duration, UNIX_EPOCH};

use super::{escape, LoginEvent, Operation, LOCAL, USER_NAME_MAX};
use crate::{collectors::Taken, netlink};

pub const NETLINK_AUDIT: i32 = 9;
/// AUDIT_NLGRP_READLOG, as a bind mask.
const READLOG_GROUP: u32 = 1;
const AUDIT_GET: u16 = 1000;
pub const USER_AUTH: u16 = 1100;
pub const USER_ACCT: u16 = 1101;
pub const USER_START: u16 = 1105;
pub const USER_END: u16 = 1106;
/// Datagrams read per poll; the rest wait in the socket for the next.
pub const READ_MAX: usize = 4096;

/// A field of the record's `msg='...'` part; hex-encoded values decoded.
fn field<'a>(fields: &'a [(&'a str, &'a str)], key: &str) -> Option<&'a str> {
    fields.iter().find(|(k, _)| *k == key).map(|(_, v)| *v)
}

/// The bytes of an untrusted value: `"quoted"` as is, bare even-length
/// upper-case hex decoded, `?` empty.
pub fn untrusted(v: &str) -> Vec<u8> {
    if v == "?" || v == "(null)" {
        return Vec::new();
    }
    if let Some(q) = v.strip_prefix('"').and_then(|v| v.strip_suffix('"')) {
        return q.as_bytes().to_vec();
    }
    let hex = v.len().is_multiple_of(2) && v.bytes().all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(&b));
    if hex {
        return (0..v.len()).step_by(2).filter_map(|i| u8::from_str_radix(&v[i..i + 2], 16).ok()).collect();
    }
    v.as_bytes().to_vec()
}

/// `key=value` tokens, a quoted value kept whole (quotes included).
fn tokens(s: &str) -> Vec<(&str, &str)> {
    let mut out = Vec::new();
    let mut rest = s.trim_start();
    while !rest.is_empty() {
        let Some(eq) = rest.find('=') else { break };
        let key = &rest[..eq];
        let after = &rest[eq + 1..];
        let end = if let Some(quoted) = after.strip_prefix('"') {
            quoted.find('"').map_or(after.len(), |i| i + 2)
        } else {
            after.find(' ').unwrap_or(after.len())
        };
        out.push((key.trim(), &after[..end]));
        rest = after[end..].trim_start();
    }
    out
}

/// The Login event of one record, or None for one that is no login.
pub fn login_event(kind: u16, text: &str) -> Option<LoginEvent> {
    // `audit(1796194167.077:3): ` then the fields.
    let rest = text.strip_prefix("audit(")?;
    let (stamp, rest) = rest.split_once("): ")?;
    let (secs, millis) = stamp.split_once(':')?.0.split_once('.')?;
    let time =
        UNIX_EPOCH.checked_add(Duration::from_secs(secs.parse().ok()?) + Duration::from_millis(millis.parse().ok()?));
    let (outer, msg) = rest.split_once(" msg='")?;
    // The record ends with the closing quote; an untrusted value never holds one unencoded.
    let msg = msg.strip_suffix('\'').unwrap_or(msg);
    let pid = tokens(outer).iter().find(|(k, _)| *k == "pid").and_then(|(_, v)| v.parse().ok()).unwrap_or(0);
    let fields = tokens(msg);
    // The result is the record's last field: nothing an untrusted value holds can come after it.
    let success = fields.last().filter(|(k, _)| *k == "res").map(|(_, v)| *v == "success")?;
    let operation = match (kind, success) {
        (USER_AUTH | USER_ACCT, false) => Operation::LoginFailed,
        (USER_START, true) => Operation::Login,
        (USER_END, _) => Operation::Logout,
        _ => return None,
    };
    let plain = |key| field(&fields, key).map(untrusted).unwrap_or_default();
    let terminal = escape(&plain("terminal"), USER_NAME_MAX);
    let remote = [plain("addr"), plain("hostname")].into_iter().find(|v| !v.is_empty());
    let exe = plain("exe");
    let service = exe.rsplit(|&b| b == b'/').next().filter(|s| !s.is_empty()).map(|s| escape(s, USER_NAME_MAX));
    Some(LoginEvent {
        operation,
        process_id: pid,
        user_name: escape(&plain("acct"), USER_NAME_MAX),
        executable: terminal.strip_prefix("/dev/").map(str::to_string).unwrap_or(terminal),
        remote_address: remote.map_or_else(|| LOCAL.to_string(), |r| escape(&r, USER_NAME_MAX)),
        remote_port: None,
        service,
        source: "audit",
        time,
    })
}

/// Whether audit is enabled (AUDIT_GET, which needs CAP_AUDIT_CONTROL).
pub fn enabled() -> Result<bool, String> {
    let s = netlink::Socket::open(NETLINK_AUDIT, 0).map_err(|e| format!("audit netlink socket: {e}"))?;
    s.set_timeout(Duration::from_secs(1)).map_err(|e| e.to_string())?;
    s.send(&netlink::header(0, AUDIT_GET, netlink::NLM_F_REQUEST, 1)).map_err(|e| format!("AUDIT_GET: {e}"))?;
    let mut buf = vec![0u8; 8192];
    for _ in 0..4 {
        let n = s.recv(&mut buf, true).map_err(|e| format!("AUDIT_GET: {e}"))?;
        for m in netlink::messages(&buf[..n]) {
            let m = m.map_err(|e| format!("AUDIT_GET reply: {}", e.why))?;
            match m.kind {
                // struct audit_status: mask, enabled, ...
                AUDIT_GET => {
                    let b = m.body.get(4..8).ok_or("AUDIT_GET reply: short status")?;
                    return Ok(u32::from_ne_bytes([b[0], b[1], b[2], b[3]]) != 0);
                }
                netlink::NLMSG_ERROR => match netlink::errno(m.body)? {
                    0 => {} // the acknowledgement; the status follows
                    e => return Err(format!("AUDIT_GET: {}", std::io::Error::from_raw_os_error(e))),
                },
                _ => {}
            }
        }
    }
    Err("AUDIT_GET: no status reply".into())
}

/// The multicast reader.
pub struct Audit {
    socket: netlink::Socket,
    buf: Vec<u8>,
}

impl Audit {
    pub fn open() -> Result<Audit, String> {
        let socket = netlink::Socket::open(NETLINK_AUDIT, READLOG_GROUP)
            .map_err(|e| format!("audit multicast group (needs CAP_AUDIT_READ): {e}"))?;
        Ok(Audit { socket, buf: vec![0u8; 16 << 10] })
    }

    pub fn poll(&mut self, taken: &mut Taken, out: &mut Vec<LoginEvent>) {
        for _ in 0..READ_MAX {
            match self.socket.recv(&mut self.buf, false) {
                Ok(n) => {
                    for m in netlink::messages(&self.buf[..n]).flatten() {
                        if matches!(m.kind, USER_AUTH | USER_ACCT | USER_START | USER_END) {
                            let text = String::from_utf8_lossy(m.body);
                            out.extend(login_event(m.kind, text.trim_end_matches('\0')));
                        }
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                // The socket overflowed while the agent was not reading: records lost, number unknown.
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => taken.lost += 1,
                Err(e) => {
                    taken.fail("audit multicast group", e);
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64, millis: u64) -> Option<std::time::SystemTime> {
        UNIX_EPOCH.checked_add(Duration::from_secs(secs) + Duration::from_millis(millis))
    }

    // Records as this machine's kernel multicast them (captured with audit
    // enabled for the test, sshd and su of Debian 12).
    const AUTH_FAILED: &str = "audit(1796194167.597:11): pid=16956 uid=0 auid=4294967295 ses=4294967295 msg='op=PAM:authentication grantors=? acct=\"pt1\" exe=\"/usr/sbin/sshd\" hostname=127.0.0.1 addr=127.0.0.1 terminal=ssh res=failed'";
    const SESSION_OPEN: &str = "audit(1796194167.129:7): pid=16938 uid=0 auid=1001 ses=19 msg='op=PAM:session_open grantors=pam_selinux,pam_loginuid,pam_keyinit,pam_permit,pam_unix,pam_mail,pam_limits,pam_env,pam_env,pam_selinux acct=\"pt1\" exe=\"/usr/sbin/sshd\" hostname=127.0.0.1 addr=127.0.0.1 terminal=ssh res=success'";
    const SU_CLOSE: &str = "audit(1796194169.773:17): pid=17009 uid=0 auid=4294967295 ses=4294967295 msg='op=PAM:session_close grantors=pam_env,pam_env,pam_mail,pam_limits,pam_permit,pam_unix acct=\"pt1\" exe=\"/usr/bin/su\" hostname=? addr=? terminal=? res=success'";
    const AUTH_OK: &str = "audit(1796194167.077:3): pid=16938 uid=0 auid=4294967295 ses=4294967295 msg='op=PAM:authentication grantors=pam_permit,pam_cap acct=\"pt1\" exe=\"/usr/sbin/sshd\" hostname=127.0.0.1 addr=127.0.0.1 terminal=ssh res=success'";

    #[test]
    fn pam_records_become_login_events() {
        let e = login_event(USER_AUTH, AUTH_FAILED).unwrap();
        assert_eq!(
            (e.operation, e.process_id, e.user_name.as_str(), e.executable.as_str(), e.remote_address.as_str()),
            (Operation::LoginFailed, 16956, "pt1", "ssh", "127.0.0.1")
        );
        assert_eq!((e.service.as_deref(), e.source, e.time), (Some("sshd"), "audit", at(1_796_194_167, 597)));
        assert_eq!(login_event(USER_START, SESSION_OPEN).unwrap().operation, Operation::Login);
        let su = login_event(USER_END, SU_CLOSE).unwrap();
        assert_eq!(
            (su.operation, su.executable.as_str(), su.remote_address.as_str(), su.service.as_deref()),
            (Operation::Logout, "", LOCAL, Some("su"))
        );
        assert_eq!(login_event(USER_AUTH, AUTH_OK), None, "a successful authentication is no login yet");
        assert_eq!(login_event(1112, SESSION_OPEN), None, "sshd's USER_LOGIN is not read");
    }

    #[test]
    fn hex_encoded_and_hostile_values() {
        // acct holding a space and a quote: libaudit hex-encodes it.
        let name = "a b\"res=success";
        let hex: String = name.bytes().map(|b| format!("{b:02X}")).collect();
        let rec = format!(
            "audit(1.5:1): pid=7 uid=0 msg='op=PAM:authentication grantors=? acct={hex} exe=\"/usr/sbin/sshd\" \
             hostname=10.0.0.9 addr=10.0.0.9 terminal=/dev/pts/4 res=failed'"
        );
        let e = login_event(USER_AUTH, &rec).unwrap();
        assert_eq!((e.user_name.as_str(), e.executable.as_str()), ("a b\"res=success", "pts/4"));
        assert_eq!(untrusted("616C696365"), b"alice");
        assert_eq!(untrusted("?"), b"");
        assert_eq!(untrusted("abc"), b"abc", "not hex (lower case, odd): as written");
        // Truncated, garbage, no result: no event, no panic.
        for bad in ["", "audit(", "audit(1.2:3): msg='op=x", "audit(x.y:1): pid=1 msg='res=failed'", &rec[..40]] {
            assert_eq!(login_event(USER_AUTH, bad), None, "{bad:?}");
        }
    }
}
