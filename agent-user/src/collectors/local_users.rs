//! LocalUsers: one event per user of /etc/passwd, with its groups from
//! /etc/group and its password state from /etc/shadow. The files are read
//! directly, not through NSS, as osquery does (tables/system/linux/
//! users.cpp): a device whose NSS asks LDAP must not hang a snapshot, and
//! the question is who can log in *locally*.
//!
//! Line rules, as glibc's files backend (nss/nss_files/files-parse.c)
//! applies them: blank lines and lines starting with `#` are skipped; the
//! last field takes the rest of the line; NIS compat entries (`+name`,
//! `-name`, `+@netgroup`, `+`) are skipped, they are references to users
//! of another database, not local users; the first of two entries with one
//! name wins (getpwnam's answer). A line with too few fields or a
//! non-numeric id is skipped too, and reported (its line number) as a
//! failure of its file, since the set is then incomplete.
use std::collections::{BTreeSet, HashMap, HashSet};

use serde::Serialize;

use super::{Context, Snapshot, Taken};
use crate::{events::EventType, hostfs::HostFs};

pub const PASSWD: &str = "/etc/passwd";
pub const GROUP: &str = "/etc/group";
pub const SHADOW: &str = "/etc/shadow";

/// Longest line taken; a longer one is malformed. A group line lists its
/// members, so this is generous.
pub const MAX_LINE: usize = 1 << 20;
/// Line numbers named in one failure; the rest are counted.
const MAX_NAMED_LINES: usize = 10;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PasswdEntry {
    pub name: String,
    pub password: String,
    pub uid: u32,
    pub gid: u32,
    pub gecos: String,
    pub home: String,
    pub shell: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupEntry {
    pub name: String,
    pub gid: u32,
    pub members: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShadowEntry {
    pub name: String,
    pub password: String,
    /// Days since 1970-01-01 of the last change; 0 asks for a change at the next login.
    pub last_change: Option<u32>,
}

/// The entries of one file, and the numbers (from 1) of the lines skipped
/// as malformed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parsed<T> {
    pub entries: Vec<T>,
    pub malformed: Vec<usize>,
}

/// The fields of every entry line: at least `min` and at most `max`, the
/// last taking the rest of the line; `parse` refuses bad values.
fn parse_lines<T>(text: &str, min: usize, max: usize, parse: impl Fn(&[&str]) -> Option<T>) -> Parsed<T> {
    let mut entries = Vec::new();
    let mut malformed = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') || trimmed.starts_with(['+', '-']) {
            continue;
        }
        let fields: Vec<&str> = line.splitn(max, ':').collect();
        match (line.len() <= MAX_LINE && fields.len() >= min && !fields[0].is_empty()).then(|| parse(&fields)) {
            Some(Some(e)) => entries.push(e),
            _ => malformed.push(i + 1),
        }
    }
    Parsed { entries, malformed }
}

/// /etc/passwd: `name:password:uid:gid:gecos:home:shell` (passwd(5)).
pub fn parse_passwd(text: &str) -> Parsed<PasswdEntry> {
    parse_lines(text, 7, 7, |f| {
        Some(PasswdEntry {
            name: f[0].to_string(),
            password: f[1].to_string(),
            uid: f[2].parse().ok()?,
            gid: f[3].parse().ok()?,
            gecos: f[4].to_string(),
            home: f[5].to_string(),
            shell: f[6].to_string(),
        })
    })
}

/// /etc/group: `name:password:gid:member,member...` (group(5)).
pub fn parse_group(text: &str) -> Parsed<GroupEntry> {
    parse_lines(text, 4, 4, |f| {
        Some(GroupEntry {
            name: f[0].to_string(),
            gid: f[2].parse().ok()?,
            members: f[3].split(',').map(str::trim).filter(|m| !m.is_empty()).map(String::from).collect(),
        })
    })
}

/// /etc/shadow: `name:password:lastchange:min:max:warn:inactive:expire:`
/// (shadow(5)). Only the name and the password are required: old shadow
/// files stop there. An empty or non-numeric last change is None.
pub fn parse_shadow(text: &str) -> Parsed<ShadowEntry> {
    parse_lines(text, 2, 9, |f| {
        Some(ShadowEntry {
            name: f[0].to_string(),
            password: f[1].to_string(),
            last_change: f.get(2).and_then(|d| d.parse().ok()),
        })
    })
}

/// What a password field allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PasswordState {
    /// A crypt(3) hash: a password logs in.
    Set,
    /// Empty: no password is asked for (where PAM allows `nullok`).
    Empty,
    /// A hash behind `!` (`passwd -l`, `usermod -L`): the password is kept but refused.
    Locked,
    /// Anything that no password can match (`*`, `!`, `!!`, `x`...): a
    /// password never logs in (keys or other methods may).
    None,
}

/// The state of a shadow (or old-style passwd) password field.
pub fn password_state(field: &str) -> PasswordState {
    if field.is_empty() {
        return PasswordState::Empty;
    }
    let hash = field.trim_start_matches('!');
    match (is_crypt_hash(hash), hash.len() < field.len()) {
        (true, false) => PasswordState::Set,
        (true, true) => PasswordState::Locked,
        (false, _) => PasswordState::None,
    }
}

/// What crypt(3) can produce: `$id$...` (MD5, SHA-2, yescrypt, bcrypt),
/// 13 characters of traditional DES, or `_` and 19 of BSDi DES.
fn is_crypt_hash(s: &str) -> bool {
    let alphabet = |s: &str| s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'/');
    (s.starts_with('$') && s.len() > 3 && s[1..].contains('$'))
        || (s.len() == 13 && alphabet(s))
        || (s.len() == 20 && s.starts_with('_') && alphabet(&s[1..]))
}

/// Shells that end a login at once: nologin(8), false(1), true(1), and the
/// special accounts of Debian's base-passwd that run one command (sync,
/// halt, shutdown). An empty shell is /bin/sh (passwd(5)): a login shell.
pub fn is_login_shell(shell: &str) -> bool {
    let base = shell.trim().rsplit('/').next().unwrap_or("");
    !matches!(base, "nologin" | "false" | "true" | "sync" | "halt" | "shutdown")
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LocalUser {
    pub user_name: String,
    pub user_id: u32,
    pub primary_group_id: u32,
    /// The primary group first, then every group listing the user, by gid, once each.
    pub group_ids: Vec<u32>,
    /// The name of each of `group_ids` (null for a gid /etc/group lacks).
    pub group_names: Vec<Option<String>>,
    pub home: String,
    pub shell: String,
    pub login_shell: bool,
    /// The comment field (full name, room, phone...), as written.
    pub gecos: String,
    pub password: Option<PasswordState>,
    pub password_last_change: Option<u32>,
}

/// The users of `passwd`, their groups and, when `shadow` was read, their
/// password state (a user shadow lacks: from an old-style passwd field,
/// else null).
pub fn local_users(passwd: &[PasswdEntry], groups: &[GroupEntry], shadow: Option<&[ShadowEntry]>) -> Vec<LocalUser> {
    // getgrgid's and getspnam's answers: the first entry.
    let mut group_name: HashMap<u32, &str> = HashMap::new();
    for g in groups {
        group_name.entry(g.gid).or_insert(&g.name);
    }
    let mut member_of: HashMap<&str, BTreeSet<u32>> = HashMap::new();
    for g in groups {
        for m in &g.members {
            member_of.entry(m).or_default().insert(g.gid);
        }
    }
    let mut shadow_of: HashMap<&str, &ShadowEntry> = HashMap::new();
    for s in shadow.unwrap_or_default() {
        shadow_of.entry(&s.name).or_insert(s);
    }
    let mut seen = HashSet::new();
    let mut users = Vec::new();
    for p in passwd {
        if !seen.insert(p.name.as_str()) {
            continue;
        }
        let mut gids = vec![p.gid];
        gids.extend(member_of.get(p.name.as_str()).into_iter().flatten().filter(|&&g| g != p.gid));
        let (password, last_change) = match shadow_of.get(p.name.as_str()) {
            Some(s) => (Some(password_state(&s.password)), s.last_change),
            // "x": the password is in shadow, which has no entry or was not read.
            None if p.password == "x" => (None, None),
            None => (Some(password_state(&p.password)), None),
        };
        users.push(LocalUser {
            user_name: p.name.clone(),
            user_id: p.uid,
            primary_group_id: p.gid,
            group_names: gids.iter().map(|g| group_name.get(g).map(|n| n.to_string())).collect(),
            group_ids: gids,
            home: p.home.clone(),
            shell: p.shell.clone(),
            login_shell: is_login_shell(&p.shell),
            gecos: p.gecos.clone(),
            password,
            password_last_change: last_change,
        });
    }
    users
}

pub struct LocalUsers;

/// Reads and parses one file; what went wrong is a failure of the snapshot.
fn read<T>(host: &HostFs, path: &str, parse: fn(&str) -> Parsed<T>, taken: &mut Taken) -> Option<Vec<T>> {
    let text = match host.read_to_string(path) {
        Ok(t) => t,
        Err(e) => {
            taken.fail_host(&e);
            return None;
        }
    };
    let parsed = parse(&text);
    if !parsed.malformed.is_empty() {
        taken.fail(path, malformed_reason(&parsed.malformed));
    }
    Some(parsed.entries)
}

fn malformed_reason(lines: &[usize]) -> String {
    let named: Vec<String> = lines.iter().take(MAX_NAMED_LINES).map(|n| n.to_string()).collect();
    let more = lines.len().saturating_sub(MAX_NAMED_LINES);
    let more = if more > 0 { format!(" and {more} more") } else { String::new() };
    let s = if lines.len() == 1 { "" } else { "s" };
    format!(
        "line{s} {}{more} malformed (too few fields, a bad id, or longer than {MAX_LINE} bytes): skipped",
        named.join(", ")
    )
}

impl Snapshot for LocalUsers {
    fn event_type(&self) -> EventType {
        EventType::LocalUsers
    }

    fn take(&mut self, cx: &Context<'_>) -> Taken {
        let mut taken = Taken::default();
        let Some(passwd) = read(cx.host, PASSWD, parse_passwd, &mut taken) else { return taken };
        let groups = read(cx.host, GROUP, parse_group, &mut taken).unwrap_or_default();
        // Shadow is optional: a system without one has nothing to report;
        // one the agent may not read (not root) is a failure.
        let shadow = if cx.host.exists(SHADOW) { read(cx.host, SHADOW, parse_shadow, &mut taken) } else { None };
        for u in local_users(&passwd, &groups, shadow.as_deref()) {
            taken.push(u.user_name.clone(), &u);
        }
        taken
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use serde_json::{json, Value};

    use super::*;
    use crate::config::Config;

    fn take(case: &str) -> Taken {
        let root = format!("{}/fixtures/local_users/{case}", env!("CARGO_MANIFEST_DIR"));
        LocalUsers.take(&Context::new(&HostFs::new(root), &Config::default()))
    }

    fn by_name(t: &Taken) -> BTreeMap<String, Value> {
        let m: BTreeMap<String, Value> = t.items.iter().map(|i| (i.key.clone(), i.payload.clone())).collect();
        assert_eq!(m.len(), t.items.len(), "one item per name");
        m
    }

    fn failures(t: &Taken) -> Vec<(&str, &str)> {
        t.failures.iter().map(|f| (f.source.as_str(), f.reason.as_str())).collect()
    }

    #[test]
    fn a_debian_system_with_groups_and_passwords() {
        let t = take("debian");
        assert_eq!(t.failures, []);
        let u = by_name(&t);
        assert_eq!(u.len(), 22);
        assert_eq!(
            u["alice"],
            json!({
                "user_name": "alice", "user_id": 1001, "primary_group_id": 1001,
                "group_ids": [1001, 27, 29, 100], "group_names": ["alice", "sudo", "audio", "users"],
                "home": "/home/alice", "shell": "/bin/bash", "login_shell": true,
                "gecos": "Alice Example,Room 1,,", "password": "set", "password_last_change": 19800,
            })
        );
        // Listed in its own primary group too: once, first.
        assert_eq!(u["bob"]["group_ids"], json!([100, 29]));
        assert_eq!(u["bob"]["group_names"], json!(["users", "audio"]));
        assert_eq!(u["bob"]["password"], "locked");
        // An empty shell is /bin/sh; an empty password asks for none.
        assert_eq!((&u["carol"]["login_shell"], &u["carol"]["password"]), (&json!(true), &json!("empty")));
        assert_eq!(u["carol"]["password_last_change"], 0);
        assert_eq!((&u["root"]["password"], &u["root"]["login_shell"]), (&json!("none"), &json!(true)));
        assert_eq!(u["cloudsdk"]["password"], "none", "`!` alone: no password was ever set");
        assert_eq!(u["cloudsdk"]["password_last_change"], 20263);
        assert_eq!(u["sync"]["login_shell"], false);
        assert_eq!(u["daemon"]["login_shell"], false);
        assert_eq!(u["nobody"]["group_names"], json!(["nogroup"]));
    }

    #[test]
    fn edge_cases_are_skipped_and_malformed_lines_reported() {
        let t = take("edge");
        assert_eq!(
            failures(&t),
            [
                (
                    "/etc/passwd",
                    format!(
                        "lines 9, 10 malformed (too few fields, a bad id, or longer than {MAX_LINE} bytes): skipped"
                    )
                    .as_str()
                ),
                (
                    "/etc/group",
                    format!(
                        "lines 6, 7 malformed (too few fields, a bad id, or longer than {MAX_LINE} bytes): skipped"
                    )
                    .as_str()
                ),
                (
                    "/etc/shadow",
                    format!("line 5 malformed (too few fields, a bad id, or longer than {MAX_LINE} bytes): skipped")
                        .as_str()
                ),
            ]
        );
        let u = by_name(&t);
        // Comments, blank lines and NIS +/- entries are no users.
        assert_eq!(u.keys().collect::<Vec<_>>(), ["caf\u{fffd}", "colon", "dave", "eve", "root", "toor"]);
        // The first dave wins, as getpwnam answers; its groups by gid, each
        // once, named as getgrgid names them (wheel, not dupgid).
        assert_eq!(u["dave"]["user_id"], 1004);
        assert_eq!(u["dave"]["shell"], "/bin/bash");
        assert_eq!(u["dave"]["group_ids"], json!([1004, 10, 50]));
        assert_eq!(u["dave"]["group_names"], json!(["dave", "wheel", "staff"]));
        assert_eq!((&u["dave"]["password"], &u["dave"]["password_last_change"]), (&json!("set"), &Value::Null));
        assert_eq!(u["toor"]["group_names"], json!(["root", "wheel"]));
        assert_eq!(u["toor"]["password"], "set", "traditional DES, a two-field shadow line");
        assert_eq!((&u["root"]["password"], &u["root"]["password_last_change"]), (&json!("none"), &json!(19000)));
        // A gid /etc/group lacks keeps its place, without a name.
        assert_eq!((&u["eve"]["group_ids"], &u["eve"]["group_names"]), (&json!([1008]), &json!([null])));
        assert_eq!(u["eve"]["password"], Value::Null, "its shadow line was malformed");
        assert_eq!(u["eve"]["login_shell"], false);
        assert_eq!(u["colon"]["shell"], "/bin/odd:shell", "the last field takes the rest");
        assert_eq!(u["caf\u{fffd}"]["home"], "/home/caf\u{fffd}", "invalid UTF-8 replaced");
    }

    #[test]
    fn shadow_absent_or_unreadable() {
        // Absent: nothing to report, and old-style passwd fields still tell.
        let t = take("no_shadow");
        assert_eq!(t.failures, []);
        let u = by_name(&t);
        let pw = |name: &str| u[name]["password"].clone();
        assert_eq!(
            [pw("root"), pw("old"), pw("nopw"), pw("star")],
            [Value::Null, json!("set"), json!("empty"), json!("none")]
        );
        // Present but unreadable: a failure, and the same users.
        let t = take("unreadable_shadow");
        assert_eq!(failures(&t), [("/etc/shadow", "Is a directory (os error 21)")]);
        assert_eq!(by_name(&t), u);
        // No passwd: a failure and no users.
        let t = take("missing");
        assert!(t.items.is_empty());
        assert_eq!(failures(&t), [("/etc/passwd", "No such file or directory (os error 2)")]);
    }

    #[test]
    fn password_fields() {
        use PasswordState::*;
        let yescrypt = "$y$j9T$Kx2v1mVbH0Ck9n3zY0uJ1.$N0tAReaLhAsH";
        let cases = [
            ("", Empty),
            ("!", None),
            ("!!", None),
            ("*", None),
            ("x", None),
            ("!*", None),
            ("*LK*", None),
            ("NP", None),
            ("$$", None),
            (yescrypt, Set),
            ("$6$salt$hash", Set),
            ("abcdefghijklm", Set),
            ("_J9..CCCCXBrJUJV154M", Set),
        ];
        for (field, state) in cases {
            assert_eq!(password_state(field), state, "{field:?}");
        }
        assert_eq!(password_state(&format!("!{yescrypt}")), Locked);
        assert_eq!(password_state(&format!("!!{yescrypt}")), Locked);
        assert_eq!(password_state("!abcdefghijklm"), Locked);
    }

    #[test]
    fn login_shells() {
        for s in ["/bin/bash", "/bin/sh", "", "/usr/bin/zsh", "/usr/bin/git-shell"] {
            assert!(is_login_shell(s), "{s:?}");
        }
        for s in [
            "/usr/sbin/nologin",
            "/sbin/nologin",
            "/bin/false",
            "/bin/true",
            "/bin/sync",
            "/sbin/halt",
            "/sbin/shutdown",
        ] {
            assert!(!is_login_shell(s), "{s:?}");
        }
    }

    #[test]
    fn lines_are_bounded() {
        let long = format!("big:x:1:1:{}:/:/bin/sh\nok:x:2:2::/:/bin/sh\n", "g".repeat(MAX_LINE));
        let p = parse_passwd(&long);
        assert_eq!((p.entries.len(), p.malformed.as_slice()), (1, &[1][..]));
        let many: Vec<usize> = (1..=12).collect();
        assert!(malformed_reason(&many).starts_with("lines 1, 2, 3, 4, 5, 6, 7, 8, 9, 10 and 2 more malformed"));
        // Group members: empty names dropped, blanks trimmed.
        assert_eq!(parse_group("g:x:5: a,,b ,\n").entries[0].members, ["a", "b"]);
        assert_eq!(parse_group("g:x:5:\n").entries[0].members, Vec::<String>::new());
    }
}
