//! wtmpdb: the Y2038-safe successor of wtmp (Debian 13 and later, openSUSE),
//! an SQLite database that pam_wtmpdb writes (thkukuk/wtmpdb,
//! lib/sqlite.c): one row per session, `wtmp(ID INTEGER PRIMARY KEY, Type
//! INTEGER, User TEXT NOT NULL, Login INTEGER, Logout INTEGER, TTY TEXT,
//! RemoteHost TEXT, Service TEXT)`, times in microseconds since the epoch.
//! A new USER_PROCESS row is a Login; its Logout column set later is the
//! Logout. Failed attempts are not recorded there (btmp still has them).
//!
//! Read only when the file changed (size or modification time of it and its
//! -wal file), opened read-only (immutable where the host mount is
//! read-only, as the SBoM's rpm reader does), at most [`ROWS_MAX`] new rows
//! a poll.
use std::{
    collections::BTreeSet,
    os::unix::fs::MetadataExt,
    path::Path,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use serde::{Deserialize, Serialize};

use super::{escape, LoginEvent, Operation, LOCAL};
use crate::{collectors::Taken, hostfs::HostFs};

pub const WTMPDB: &str = "/var/lib/wtmpdb/wtmp.db";
/// wtmpdb.h: a normal session row (BOOT_TIME, 1, is a boot).
pub const USER_PROCESS: i64 = 3;
/// New rows read per poll; the rest at the next polls.
pub const ROWS_MAX: i64 = 1000;
/// Sessions without a Logout followed at most.
pub const OPEN_MAX: usize = 4096;
/// Bytes kept of a text column.
const TEXT_MAX: usize = 256;

/// Where a reader is: what a restart resumes from.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cursor {
    /// The last row read.
    pub last_id: i64,
}

/// One row, its texts escaped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    pub id: i64,
    pub kind: i64,
    pub user: String,
    pub login_us: Option<i64>,
    pub logout_us: Option<i64>,
    pub tty: String,
    pub host: String,
    pub service: String,
}

fn time(us: Option<i64>) -> Option<SystemTime> {
    UNIX_EPOCH.checked_add(Duration::from_micros(u64::try_from(us?).ok()?))
}

fn event(operation: Operation, r: &Row, at: Option<i64>) -> LoginEvent {
    LoginEvent {
        operation,
        process_id: 0,
        user_name: r.user.clone(),
        executable: r.tty.clone(),
        remote_address: if r.host.is_empty() { LOCAL.to_string() } else { r.host.clone() },
        remote_port: None,
        service: (!r.service.is_empty()).then(|| r.service.clone()),
        source: "wtmpdb",
        time: time(at),
    }
}

/// The wtmpdb reader.
#[derive(Debug, Default)]
pub struct Wtmpdb {
    /// None until the first read: then the rows already there are the past.
    cursor: Option<Cursor>,
    /// Where an earlier run stopped, for the first read.
    resume: Option<Cursor>,
    /// Sessions seen open, whose Logout is still to come.
    open: BTreeSet<i64>,
    /// (size, mtime) of the database and its WAL at the last read.
    seen: Option<[(u64, i64); 2]>,
}

impl Wtmpdb {
    pub fn resume(&mut self, c: Cursor) {
        self.resume = Some(c);
    }

    pub fn cursor(&self) -> Option<Cursor> {
        self.cursor.clone()
    }

    pub fn poll(&mut self, host: &HostFs, taken: &mut Taken, out: &mut Vec<LoginEvent>) {
        let Ok(path) = host.resolve(WTMPDB) else { return };
        let stamp = |p: &Path| std::fs::metadata(p).map(|m| (m.len(), m.mtime_nsec() + m.mtime() * 1_000_000_000));
        let db = match stamp(&path) {
            Ok(s) => s,
            // No wtmpdb here (Debian 12 and older): nothing to say.
            Err(_) => return,
        };
        let stamps = [db, stamp(&path.with_extension("db-wal")).unwrap_or((0, 0))];
        if self.seen == Some(stamps) {
            return;
        }
        let first = self.cursor.is_none();
        let after = match (&self.cursor, &self.resume) {
            (Some(c), _) => Some(c.last_id),
            (None, Some(r)) => Some(r.last_id),
            // The first read: only the sessions open now, to see them end.
            (None, None) => None,
        };
        match read(&path, after, &self.open) {
            Ok(found) => {
                self.seen = Some(stamps);
                self.apply(found, first && after.is_none(), out);
            }
            Err(e) => taken.fail(WTMPDB, e),
        }
    }

    /// What a read found becomes events; `past` marks the first read of a
    /// run that has nothing to resume from.
    fn apply(&mut self, found: Found, past: bool, out: &mut Vec<LoginEvent>) {
        let mut last = self.cursor.as_ref().or(self.resume.as_ref()).map_or(0, |c| c.last_id);
        for r in &found.closed {
            if self.open.remove(&r.id) && !past {
                out.push(event(Operation::Logout, r, r.logout_us));
            }
        }
        for r in found.new {
            last = last.max(r.id);
            if r.kind != USER_PROCESS {
                continue;
            }
            if !past {
                out.push(event(Operation::Login, &r, r.login_us));
            }
            match r.logout_us {
                Some(_) if !past => out.push(event(Operation::Logout, &r, r.logout_us)),
                Some(_) => {}
                None if self.open.len() < OPEN_MAX => {
                    self.open.insert(r.id);
                }
                None => {}
            }
        }
        self.resume = None;
        self.cursor = Some(Cursor { last_id: last });
    }
}

/// The rows after `after` (None: the open sessions and the last ID), and
/// the rows of `open` that have a Logout now.
#[derive(Debug, Default, PartialEq)]
pub struct Found {
    pub new: Vec<Row>,
    pub closed: Vec<Row>,
}

fn read(path: &Path, after: Option<i64>, open: &BTreeSet<i64>) -> rusqlite::Result<Found> {
    crate::collectors::sbom::rpm::sqlite_read(path, |c| {
        let columns = "ID, Type, User, Login, Logout, TTY, RemoteHost, Service";
        let row = |r: &rusqlite::Row<'_>| {
            // Whatever the column holds (STRICT is the writer's promise, not the file's).
            let text = |i| -> rusqlite::Result<String> {
                use rusqlite::types::ValueRef;
                Ok(match r.get_ref(i)? {
                    ValueRef::Text(b) | ValueRef::Blob(b) => escape(b, TEXT_MAX),
                    ValueRef::Integer(n) => n.to_string(),
                    ValueRef::Real(x) => x.to_string(),
                    ValueRef::Null => String::new(),
                })
            };
            let int = |i| -> rusqlite::Result<Option<i64>> {
                use rusqlite::types::ValueRef;
                Ok(match r.get_ref(i)? {
                    ValueRef::Integer(n) => Some(n),
                    _ => None,
                })
            };
            Ok(Row {
                id: r.get(0)?,
                kind: int(1)?.unwrap_or(0),
                user: text(2)?,
                login_us: int(3)?,
                logout_us: int(4)?,
                tty: text(5)?,
                host: text(6)?,
                service: text(7)?,
            })
        };
        let mut found = Found::default();
        let new = match after {
            Some(id) => format!("SELECT {columns} FROM wtmp WHERE ID > {id} ORDER BY ID LIMIT {ROWS_MAX}"),
            // The open sessions, and the last row whatever it is (for the cursor).
            None => format!(
                "SELECT {columns} FROM wtmp WHERE ID IN (SELECT ID FROM wtmp WHERE Logout IS NULL ORDER BY ID DESC \
                 LIMIT {OPEN_MAX}) OR ID = (SELECT MAX(ID) FROM wtmp) ORDER BY ID"
            ),
        };
        found.new = c.prepare(&new)?.query_map([], row)?.collect::<rusqlite::Result<_>>()?;
        if !open.is_empty() {
            let ids: Vec<String> = open.iter().map(i64::to_string).collect();
            let q = format!("SELECT {columns} FROM wtmp WHERE Logout IS NOT NULL AND ID IN ({})", ids.join(","));
            found.closed = c.prepare(&q)?.query_map([], row)?.collect::<rusqlite::Result<_>>()?;
        }
        Ok(found)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A database with wtmpdb's own schema (lib/sqlite.c), as pam_wtmpdb writes it.
    fn database(root: &Path) -> rusqlite::Connection {
        let dir = root.join("var/lib/wtmpdb");
        std::fs::create_dir_all(&dir).unwrap();
        let c = rusqlite::Connection::open(dir.join("wtmp.db")).unwrap();
        c.execute_batch(
            "CREATE TABLE IF NOT EXISTS wtmp(ID INTEGER PRIMARY KEY, Type INTEGER, User TEXT NOT NULL, Login INTEGER, \
             Logout INTEGER, TTY TEXT, RemoteHost TEXT, Service TEXT) STRICT;",
        )
        .unwrap();
        c
    }

    fn login(c: &rusqlite::Connection, kind: i64, user: &str, tty: &str, host: &str, service: &str) -> i64 {
        c.execute(
            "INSERT INTO wtmp (Type,User,Login,TTY,RemoteHost,Service) VALUES(?,?,?,?,?,?)",
            (kind, user, 1_796_172_000_000_000i64, tty, host, service),
        )
        .unwrap();
        c.last_insert_rowid()
    }

    fn logout(c: &rusqlite::Connection, id: i64) {
        c.execute("UPDATE wtmp SET Logout = ? WHERE ID = ?", (1_796_172_060_000_000i64, id)).unwrap();
    }

    fn poll(w: &mut Wtmpdb, host: &HostFs) -> Vec<(Operation, String, String, String, Option<String>)> {
        let mut t = Taken::default();
        let mut out = Vec::new();
        // The modification time has a resolution the test outruns: forget it.
        w.seen = None;
        w.poll(host, &mut t, &mut out);
        assert_eq!(t.failures, []);
        out.into_iter().map(|e| (e.operation, e.user_name, e.executable, e.remote_address, e.service)).collect()
    }

    #[test]
    fn new_sessions_are_logins_and_their_logout_column_the_logout() {
        let dir = crate::hostfs::tests::tempdir::Dir::new("wtmpdb");
        let host = HostFs::new(&dir.0);
        let mut w = Wtmpdb::default();
        assert_eq!(poll(&mut w, &host), [], "no database: nothing, and no failure");
        let c = database(&dir.0);
        login(&c, 1, "reboot", "~", "6.12.0", "");
        let before = login(&c, USER_PROCESS, "root", "tty1", "", "login");
        assert_eq!(poll(&mut w, &host), [], "what was there at start is the past");
        let id = login(&c, USER_PROCESS, "alice", "pts/0", "10.0.0.2", "sshd");
        let s = |x: &str| x.to_string();
        assert_eq!(poll(&mut w, &host), [(Operation::Login, s("alice"), s("pts/0"), s("10.0.0.2"), Some(s("sshd")))]);
        logout(&c, id);
        logout(&c, before);
        assert_eq!(
            poll(&mut w, &host),
            [
                (Operation::Logout, s("root"), s("tty1"), s(LOCAL), Some(s("login"))),
                (Operation::Logout, s("alice"), s("pts/0"), s("10.0.0.2"), Some(s("sshd"))),
            ],
            "the session open at start ends too"
        );
        assert_eq!(poll(&mut w, &host), []);
        // A restart resumes after the last row read.
        let cursor = w.cursor().unwrap();
        let id = login(&c, USER_PROCESS, "bob", "pts/1", "::1", "sshd");
        logout(&c, id);
        let mut next = Wtmpdb::default();
        next.resume(cursor);
        let got = poll(&mut next, &host);
        assert_eq!(got.iter().map(|e| e.0).collect::<Vec<_>>(), [Operation::Login, Operation::Logout], "{got:?}");
    }

    #[test]
    fn hostile_text_is_escaped_and_a_broken_database_is_a_failure() {
        let dir = crate::hostfs::tests::tempdir::Dir::new("wtmpdb-bad");
        let host = HostFs::new(&dir.0);
        let c = database(&dir.0);
        let mut w = Wtmpdb::default();
        poll(&mut w, &host);
        login(&c, USER_PROCESS, "x\ny", &"t".repeat(10_000), "", "");
        let got = poll(&mut w, &host);
        assert_eq!((got[0].1.as_str(), got[0].2.len()), ("x\\x0ay", TEXT_MAX));
        drop(c);
        std::fs::write(dir.0.join("var/lib/wtmpdb/wtmp.db"), b"not a database").unwrap();
        let mut t = Taken::default();
        w.seen = None;
        w.poll(&host, &mut t, &mut Vec::new());
        assert_eq!(t.failures.len(), 1, "{:?}", t.failures);
    }
}
