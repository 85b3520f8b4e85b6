//! The pure parsers of host files, each given the same bytes. A collector
//! that adds a parser adds its line to `PARSERS` and its seeds to
//! `corpus/hostfs_parsers/`.
use agent_user::{enrich::parse_passwd, listeners};

/// Each parser with the properties its result must have.
const PARSERS: &[(&str, fn(&[u8]))] = &[
    ("/proc/net/tcp", |d| {
        let text = String::from_utf8_lossy(d);
        let found = listeners::parse_tcp_table(&text);
        assert!(found.len() <= text.lines().count());
        assert!(found.iter().all(|l| l.inode != 0), "inode 0 is never a listener");
    }),
    ("/proc/PID/status", |d| {
        let _ = listeners::parse_status(&String::from_utf8_lossy(d));
    }),
    ("/proc/PID/fd link", |d| {
        let _ = listeners::socket_inode(d);
    }),
    ("/etc/passwd", |d| {
        let text = String::from_utf8_lossy(d);
        for name in parse_passwd(&text).values() {
            assert!(!name.is_empty() && !name.contains([':', '\n']), "user name {name:?}");
        }
    }),
];

pub fn check(data: &[u8]) {
    for (_, parse) in PARSERS {
        parse(data);
    }
}
