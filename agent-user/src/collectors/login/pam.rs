//! The pam source: what the PAM uprobes (agent-ebpf pam.rs) saw, read from
//! their ring buffer, and where libpam is, so that the agent attaches them.
//!
//! libpam is found in the host's library directories and in the memory maps
//! of running processes (a container's sshd maps its own copy, reached
//! through /proc/PID/root; a library replaced by an upgrade but still mapped
//! through /proc/PID/map_files). Uprobes attach to an inode, so each
//! distinct file is attached once, whoever maps it.
use std::{
    collections::BTreeMap,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use agent_common::{
    PamCounter, PamEvent, PAM_EVENT_NO_ITEMS, PAM_OP_ACCT_MGMT, PAM_OP_AUTHENTICATE, PAM_OP_CLOSE_SESSION,
    PAM_OP_OPEN_SESSION,
};

use super::{escape, LoginEvent, Operation, LOCAL, USER_NAME_MAX};
use crate::{
    ebpf::{FileId, Library},
    enrich::BootClock,
    hostfs::HostFs,
    procfs,
};

/// The file name of Linux-PAM's library (its soname since 2002).
pub const SONAME: &str = "libpam.so.0";
/// Where distributions put it: multiarch (Debian), lib64 (Fedora), plain lib (Alpine, Buildroot).
pub const LIBRARY_DIRS: [&str; 6] = ["/lib", "/usr/lib", "/lib64", "/usr/lib64", "/usr/local/lib", "/usr/local/lib64"];
/// Distinct libpam files attached at most: past this a host is hostile or broken.
pub const LIBRARIES_MAX: usize = 32;
/// Bytes of one /proc/PID/maps read: a process with more mappings than this
/// (megabytes) is not one that authenticates users.
pub const MAPS_MAX: u64 = 4 << 20;

/// What the ring buffer gave since the last read.
#[derive(Default)]
pub struct Feed {
    pub events: Vec<PamEvent>,
    /// Events the kernel could not record ([`PamCounter`]s since the last read).
    pub lost: u64,
    /// Events recorded for a handle the kernel knew nothing of.
    pub without_items: u64,
}

/// The kernel side of the source: the agent's ring reader, or a test's.
pub trait PamFeed {
    fn read(&mut self) -> Result<Feed, String>;
}

/// The C string at the start of `field`, escaped.
fn text(field: &[u8], max: usize) -> String {
    let end = field.iter().position(|&b| b == 0).unwrap_or(field.len());
    escape(&field[..end], max)
}

/// The Login event of one ring record; None for one that is no login (a
/// successful authentication: the session that follows is the Login).
pub fn login_event(e: &PamEvent, clock: &BootClock) -> Option<LoginEvent> {
    let operation = match e.op {
        PAM_OP_AUTHENTICATE | PAM_OP_ACCT_MGMT => Operation::LoginFailed,
        PAM_OP_OPEN_SESSION => Operation::Login,
        PAM_OP_CLOSE_SESSION => Operation::Logout,
        _ => return None,
    };
    let known = e.flags & PAM_EVENT_NO_ITEMS == 0;
    let items = &e.items;
    let tty = text(&items.tty, USER_NAME_MAX);
    let rhost = text(&items.rhost, USER_NAME_MAX);
    let service = text(&items.service, USER_NAME_MAX);
    Some(LoginEvent {
        operation,
        process_id: e.tgid,
        user_name: text(&items.user, USER_NAME_MAX),
        // login(1) and su give PAM the device path, sshd gives "ssh".
        executable: tty.strip_prefix("/dev/").map(str::to_string).unwrap_or(tty),
        // No remote host: a local login (seed 002).
        remote_address: if rhost.is_empty() { LOCAL.to_string() } else { rhost },
        remote_port: None,
        service: (known && !service.is_empty()).then_some(service),
        source: "pam",
        time: Some(clock.to_wall(e.ts_ns)),
    })
}

/// Every libpam on the host and in the maps of its processes, one per file.
pub fn find_libraries(host: &HostFs) -> Vec<Library> {
    let mut found: BTreeMap<FileId, PathBuf> = BTreeMap::new();
    let mut add = |path: PathBuf| {
        if let Ok(m) = std::fs::metadata(&path) {
            if m.is_file() && found.len() < LIBRARIES_MAX {
                found.entry(FileId { dev: m.dev(), ino: m.ino() }).or_insert(path);
            }
        }
    };
    for dir in LIBRARY_DIRS {
        // The directory itself and one level below it (multiarch: x86_64-linux-gnu).
        let Ok(real) = host.resolve(dir) else { continue };
        add(real.join(SONAME));
        let Ok(entries) = std::fs::read_dir(&real) else { continue };
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                add(entry.path().join(SONAME));
            }
        }
    }
    if let Ok(pids) = procfs::pids(host) {
        let proc = host.root().join("proc");
        for pid in pids {
            let Ok(maps) = host.read_bounded(format!("/proc/{pid}/maps"), MAPS_MAX) else { continue };
            for (range, path) in mapped_libpam(&String::from_utf8_lossy(&maps)) {
                add(match path.strip_suffix(" (deleted)") {
                    // Replaced on disk but still mapped: only the mapping reaches it.
                    Some(_) => proc.join(format!("{pid}/map_files/{range}")),
                    None => proc.join(format!("{pid}/root")).join(path.trim_start_matches('/')),
                });
            }
        }
    }
    found.into_iter().map(|(id, path)| Library { id, path }).collect()
}

/// The (address range, path) of each libpam mapping in a /proc/PID/maps
/// text, once per path: `start-end perms offset dev inode path`.
pub fn mapped_libpam(maps: &str) -> Vec<(&str, &str)> {
    let mut out: Vec<(&str, &str)> = Vec::new();
    for line in maps.lines() {
        let mut fields = line.splitn(6, ' ');
        let (Some(range), Some(rest)) = (fields.next(), fields.nth(4)) else { continue };
        let path = rest.trim_start();
        let name = path.strip_suffix(" (deleted)").unwrap_or(path);
        let is_libpam = Path::new(name).file_name().and_then(|f| f.to_str()).is_some_and(|f| f.starts_with(SONAME));
        if is_libpam && !out.iter().any(|(_, p)| *p == path) {
            out.push((range, path));
        }
    }
    out
}

/// The counters that mean a lost event, of the ones read.
pub fn lost_events(counters: &[u64]) -> u64 {
    [PamCounter::RingFull, PamCounter::CallsFull].iter().map(|c| counters.get(*c as usize).copied().unwrap_or(0)).sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use agent_common::PamItems;

    fn record(op: u32, user: &str, tty: &str, rhost: &str, service: &str) -> PamEvent {
        let mut items = PamItems { service: [0; 32], user: [0; 128], tty: [0; 64], rhost: [0; 64] };
        items.user[..user.len()].copy_from_slice(user.as_bytes());
        items.tty[..tty.len()].copy_from_slice(tty.as_bytes());
        items.rhost[..rhost.len()].copy_from_slice(rhost.as_bytes());
        items.service[..service.len()].copy_from_slice(service.as_bytes());
        PamEvent { ts_ns: 1, tgid: 42, op, ret: 0, flags: 0, items }
    }

    fn clock() -> BootClock {
        BootClock::from_offset(1_700_000_000_000_000_000)
    }

    fn login_event_at(e: &PamEvent) -> Option<LoginEvent> {
        login_event(e, &clock())
    }

    #[test]
    fn records_become_login_events() {
        let e = login_event_at(&record(PAM_OP_OPEN_SESSION, "alice", "ssh", "10.0.0.2", "sshd")).unwrap();
        assert_eq!(
            e,
            LoginEvent {
                operation: Operation::Login,
                process_id: 42,
                user_name: "alice".into(),
                executable: "ssh".into(),
                remote_address: "10.0.0.2".into(),
                remote_port: None,
                service: Some("sshd".into()),
                source: "pam",
                time: Some(clock().to_wall(1)),
            }
        );
        let su = login_event_at(&record(PAM_OP_OPEN_SESSION, "bob", "/dev/pts/3", "", "su")).unwrap();
        assert_eq!((su.executable.as_str(), su.remote_address.as_str()), ("pts/3", LOCAL));
        let failed = login_event_at(&record(PAM_OP_AUTHENTICATE, "x\ny", "ssh", "::1", "sshd")).unwrap();
        assert_eq!((failed.operation, failed.user_name.as_str()), (Operation::LoginFailed, "x\\x0ay"));
        assert_eq!(
            login_event_at(&record(PAM_OP_ACCT_MGMT, "a", "", "", "login")).unwrap().operation,
            Operation::LoginFailed
        );
        assert_eq!(
            login_event_at(&record(PAM_OP_CLOSE_SESSION, "a", "", "", "su")).unwrap().operation,
            Operation::Logout
        );
        assert_eq!(login_event_at(&record(agent_common::PAM_OP_START, "a", "", "", "su")), None);
    }

    #[test]
    fn a_handle_without_items_is_still_an_event() {
        let mut r = record(PAM_OP_CLOSE_SESSION, "", "", "", "");
        r.flags = PAM_EVENT_NO_ITEMS;
        let e = login_event_at(&r).unwrap();
        assert_eq!((e.user_name.as_str(), e.service.clone(), e.process_id), ("", None, 42));
    }

    #[test]
    fn a_full_field_with_no_nul_is_read_whole_and_bounded() {
        let mut r = record(PAM_OP_AUTHENTICATE, "", "", "", "sshd");
        r.items.user = [b'\xff'; 128];
        let e = login_event_at(&r).unwrap();
        assert_eq!(e.user_name.len(), USER_NAME_MAX, "128 bytes escaped to 4 each, cut at the bound");
        assert!(e.user_name.starts_with("\\xff\\xff"));
    }

    #[test]
    fn finds_libpam_mappings_once_each() {
        let maps = "\
55d5c0a00000-55d5c0a2b000 r--p 00000000 fd:01 1234 /usr/sbin/sshd
7f1c2e200000-7f1c2e203000 r--p 00000000 fd:01 5678 /usr/lib/x86_64-linux-gnu/libpam.so.0.85.1
7f1c2e203000-7f1c2e20c000 r-xp 00003000 fd:01 5678 /usr/lib/x86_64-linux-gnu/libpam.so.0.85.1
7f1c2e300000-7f1c2e301000 r--p 00000000 fd:01 9999 /lib/libpam.so.0 (deleted)
7f1c2e400000-7f1c2e401000 r--p 00000000 fd:01 7777 /usr/lib/libpam_misc.so.0.82.1
7ffd1e9e4000-7ffd1e9e6000 rw-p 00000000 00:00 0                          [stack]
7ffd1e9e6000-7ffd1e9e8000 r--p 00000000 00:00 0
garbage line
";
        assert_eq!(
            mapped_libpam(maps),
            [
                ("7f1c2e200000-7f1c2e203000", "/usr/lib/x86_64-linux-gnu/libpam.so.0.85.1"),
                ("7f1c2e300000-7f1c2e301000", "/lib/libpam.so.0 (deleted)"),
            ]
        );
    }

    #[test]
    fn finds_the_library_in_a_host_tree_once() {
        let dir = crate::hostfs::tests::tempdir::Dir::new("libpam");
        let lib = dir.0.join("usr/lib/x86_64-linux-gnu");
        std::fs::create_dir_all(&lib).unwrap();
        std::fs::write(lib.join("libpam.so.0.85.1"), b"\x7fELF").unwrap();
        std::os::unix::fs::symlink("libpam.so.0.85.1", lib.join(SONAME)).unwrap();
        // Debian's merged /usr: /lib is a link to usr/lib; the same file twice.
        std::os::unix::fs::symlink("usr/lib", dir.0.join("lib")).unwrap();
        std::fs::create_dir_all(dir.0.join("proc")).unwrap();
        let found = find_libraries(&HostFs::new(&dir.0));
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].path.ends_with(SONAME), "{found:?}");
        let empty = crate::hostfs::tests::tempdir::Dir::new("no-libpam");
        assert!(find_libraries(&HostFs::new(&empty.0)).is_empty());
    }

    #[test]
    fn only_lost_counters_are_losses() {
        assert_eq!(lost_events(&[2, 5, 3]), 5, "ring full 2 + calls full 3; handles full loses no event");
        assert_eq!(lost_events(&[]), 0);
    }
}
