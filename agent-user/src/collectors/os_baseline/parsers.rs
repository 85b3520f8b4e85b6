//! The pure parsers of the files the checks read besides sshd_config:
//! modprobe.d(5), login.defs(5), /proc/PID/mounts (proc_pid_mounts(5)).
//! Each keeps the 1-based line of what it found, the evidence a failure
//! names.

/// A modprobe.d directive the checks read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Modprobe {
    /// `install MODULE COMMAND...`: modprobe runs COMMAND instead of loading.
    Install { module: String, command: String, line: usize },
    /// `blacklist MODULE`: its aliases are ignored.
    Blacklist { module: String, line: usize },
}

/// modprobe treats `-` and `_` in module names alike (libkmod's
/// modname_normalize).
pub fn module_name(name: &str) -> String {
    name.replace('-', "_")
}

/// modprobe.d: `#` comments, a trailing backslash continues the line
/// (libkmod's config parser); other directives are ignored.
pub fn parse_modprobe(text: &str) -> Vec<Modprobe> {
    let mut out = Vec::new();
    let mut joined = String::new();
    let mut start = 0;
    for (i, line) in text.lines().enumerate() {
        if joined.is_empty() {
            start = i + 1;
        }
        if let Some(head) = line.strip_suffix('\\') {
            joined.push_str(head);
            joined.push(' ');
            continue;
        }
        joined.push_str(line);
        let logical = std::mem::take(&mut joined);
        let mut words = logical.split_whitespace();
        match (words.next(), words.next()) {
            (Some("install"), Some(m)) => out.push(Modprobe::Install {
                module: module_name(m),
                command: words.collect::<Vec<_>>().join(" "),
                line: start,
            }),
            (Some("blacklist"), Some(m)) => out.push(Modprobe::Blacklist { module: module_name(m), line: start }),
            _ => {}
        }
    }
    out
}

/// Whether an install command stops the module from loading: /bin/false
/// or /bin/true (any path), as CIS asks.
pub fn install_disables(command: &str) -> bool {
    let first = command.split_whitespace().next().unwrap_or("");
    matches!(first.rsplit('/').next(), Some("false" | "true"))
}

/// login.defs: `NAME VALUE` lines, `#` comments; a later line wins, as
/// shadow's getdef.c overwrites. (name, value, line).
pub fn parse_login_defs(text: &str) -> Vec<(String, String, usize)> {
    let mut out: Vec<(String, String, usize)> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let t = line.trim();
        if t.is_empty() || t.starts_with('#') {
            continue;
        }
        let mut words = t.split_whitespace();
        let (Some(name), value) = (words.next(), words.next().unwrap_or("")) else { continue };
        let value = value.trim_matches('"').to_string();
        out.retain(|(n, _, _)| n != name);
        out.push((name.to_string(), value, i + 1));
    }
    out
}

/// One line of a mounts table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub device: String,
    pub mount_point: String,
    pub fstype: String,
    pub options: Vec<String>,
    pub line: usize,
}

/// The kernel's octal escapes of space, tab, newline and backslash
/// (fs/proc_namespace.c mangle()).
fn unescape(field: &str) -> String {
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            let v = (b[i + 1] - b'0') as u32 * 64 + (b[i + 2] - b'0') as u32 * 8 + (b[i + 3] - b'0') as u32;
            if let Ok(v) = u8::try_from(v) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// /proc/PID/mounts: `device mountpoint fstype options dump pass`; lines
/// with fewer than four fields are skipped.
pub fn parse_mounts(text: &str) -> Vec<Mount> {
    text.lines()
        .enumerate()
        .filter_map(|(i, line)| {
            let f: Vec<&str> = line.split_whitespace().collect();
            (f.len() >= 4).then(|| Mount {
                device: unescape(f[0]),
                mount_point: unescape(f[1]),
                fstype: f[2].to_string(),
                options: f[3].split(',').map(String::from).collect(),
                line: i + 1,
            })
        })
        .collect()
}

/// The mount visible at `point`: the last one listed there (a later mount
/// hides an earlier one).
pub fn mount_at<'a>(mounts: &'a [Mount], point: &str) -> Option<&'a Mount> {
    mounts.iter().rev().find(|m| m.mount_point == point)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modprobe_directives_continuations_and_names() {
        let text = "# c\ninstall cramfs /bin/false\nblacklist hfs-plus\ninstall udf \\\n  /bin/true --x\noptions x y\nblacklist\n";
        assert_eq!(
            parse_modprobe(text),
            [
                Modprobe::Install { module: "cramfs".into(), command: "/bin/false".into(), line: 2 },
                Modprobe::Blacklist { module: "hfs_plus".into(), line: 3 },
                Modprobe::Install { module: "udf".into(), command: "/bin/true --x".into(), line: 4 },
            ]
        );
        assert!(install_disables("/usr/bin/false"));
        assert!(install_disables("true"));
        assert!(!install_disables("/sbin/modprobe --ignore-install cramfs"));
        assert!(!install_disables(""));
    }

    #[test]
    fn login_defs_later_wins() {
        let d = parse_login_defs(
            "PASS_MAX_DAYS 99999\n# PASS_MAX_DAYS 1\nENCRYPT_METHOD \"SHA512\"\nPASS_MAX_DAYS\t365\nLONE\n",
        );
        assert_eq!(
            d,
            [
                ("ENCRYPT_METHOD".to_string(), "SHA512".to_string(), 3),
                ("PASS_MAX_DAYS".into(), "365".into(), 4),
                ("LONE".into(), "".into(), 5),
            ]
        );
    }

    #[test]
    fn mounts_escapes_and_the_visible_one() {
        let text = "tmpfs /tmp tmpfs rw,nosuid 0 0\nshort line\n/dev/sda1 /mnt/my\\040disk ext4 rw 0 0\ntmpfs /tmp tmpfs rw,nodev,noexec 0 0\nx /a\\\\b y z\n";
        let m = parse_mounts(text);
        assert_eq!(m.len(), 4);
        assert_eq!(m[1].mount_point, "/mnt/my disk");
        assert_eq!(m[3].mount_point, "/a\\\\b", "not an octal escape: kept");
        let tmp = mount_at(&m, "/tmp").unwrap();
        assert_eq!((tmp.line, tmp.options.as_slice()), (4, &["rw".to_string(), "nodev".into(), "noexec".into()][..]));
        assert!(mount_at(&m, "/dev/shm").is_none());
        assert_eq!(unescape("\\134x\\0"), "\\x\\0");
    }
}
