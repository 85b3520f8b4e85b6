//! What userspace adds to kernel records: user names and wall-clock times.
use std::{
    collections::HashMap,
    path::PathBuf,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use crate::limits::{read_to_string_bounded, ReadError, PASSWD_MAX_BYTES};

/// uid -> name from a passwd file. Looked up again when an unknown uid shows
/// up (users get added), at most once per `reload_after`.
#[derive(Debug)]
pub struct UserNames {
    path: PathBuf,
    names: HashMap<u32, String>,
    last_load: Option<std::time::Instant>,
    /// Why the last load failed.
    error: Option<ReadError>,
}

const RELOAD_AFTER: Duration = Duration::from_secs(60);

impl UserNames {
    pub fn new(path: PathBuf) -> Self {
        let mut u = UserNames { path, names: HashMap::new(), last_load: None, error: None };
        u.reload();
        u
    }

    fn reload(&mut self) {
        // A missing or unreadable file leaves names unknown (reported as
        // null), which is not worth failing the agent for.
        // Bounded: `--passwd /dev/zero` must not eat the device's memory.
        match read_to_string_bounded("passwd file", &self.path, PASSWD_MAX_BYTES) {
            Ok(text) => {
                self.names = parse_passwd(&text);
                self.error = None;
            }
            Err(e) => self.error = Some(e),
        }
        self.last_load = Some(std::time::Instant::now());
    }

    /// Why the passwd file could not be read when it was last loaded.
    pub fn error(&self) -> Option<&ReadError> {
        self.error.as_ref()
    }

    pub fn name(&mut self, uid: u32) -> Option<String> {
        if !self.names.contains_key(&uid) && self.last_load.is_none_or(|t| t.elapsed() >= RELOAD_AFTER) {
            self.reload();
        }
        self.names.get(&uid).cloned()
    }
}

/// `name:x:uid:gid:gecos:home:shell` lines; the first entry of a uid wins, as
/// getpwuid does.
pub fn parse_passwd(text: &str) -> HashMap<u32, String> {
    let mut out = HashMap::new();
    for line in text.lines() {
        let mut f = line.split(':');
        let (Some(name), Some(_), Some(uid)) = (f.next(), f.next(), f.next()) else { continue };
        if name.is_empty() || name.starts_with('#') {
            continue;
        }
        if let Ok(uid) = uid.parse() {
            out.entry(uid).or_insert_with(|| name.to_string());
        }
    }
    out
}

/// Converts `bpf_ktime_get_boot_ns` values to wall-clock time. Taken afresh
/// at every drain so that clock steps (NTP) are followed.
#[derive(Debug, Clone, Copy)]
pub struct BootClock {
    /// Wall-clock nanoseconds since the epoch at boot-clock zero.
    boot_epoch_ns: i128,
}

impl BootClock {
    pub fn now() -> Self {
        let wall = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_nanos() as i128;
        BootClock { boot_epoch_ns: wall - boottime_ns() as i128 }
    }

    pub fn from_offset(boot_epoch_ns: i128) -> Self {
        BootClock { boot_epoch_ns }
    }

    pub fn to_wall(&self, boot_ns: u64) -> SystemTime {
        let ns = (self.boot_epoch_ns + boot_ns as i128).max(0) as u128;
        UNIX_EPOCH + Duration::new((ns / 1_000_000_000) as u64, (ns % 1_000_000_000) as u32)
    }
}

/// CLOCK_BOOTTIME, the clock of `bpf_ktime_get_boot_ns`.
pub fn boottime_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: ts is a valid out-pointer; CLOCK_BOOTTIME exists on Linux >= 2.6.39.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

pub fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwd_first_entry_wins_and_junk_is_skipped() {
        let m = parse_passwd("root:x:0:0:root:/root:/bin/bash\n#c:x:5\nbad\ntoor:x:0:0::/:/bin/sh\nnobody:x:65534:65534::/:/usr/sbin/nologin\nx:x:notanumber:0::/:\n");
        assert_eq!(m.len(), 2);
        assert_eq!(m[&0], "root");
        assert_eq!(m[&65534], "nobody");
    }

    #[test]
    fn an_endless_passwd_file_is_refused_with_its_bound() {
        let u = UserNames::new("/dev/zero".into());
        let e = u.error().expect("refused").to_string();
        assert!(e.contains("passwd file /dev/zero: larger than 8388608 bytes"), "{e}");
        assert!(UserNames::new("/etc/passwd".into()).error().is_none());
    }

    #[test]
    fn boot_clock_converts() {
        let c = BootClock::from_offset(1_700_000_000_000_000_000);
        assert_eq!(rfc3339(c.to_wall(1_500_000_000)), "2023-11-14T22:13:21.500Z");
    }

    #[test]
    fn boot_clock_tracks_now() {
        let c = BootClock::now();
        let w = c.to_wall(boottime_ns());
        let d = SystemTime::now().duration_since(w).unwrap_or_default();
        assert!(d < Duration::from_secs(5), "{d:?}");
    }
}
