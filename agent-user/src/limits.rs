//! Bounds on what the agent takes in: files read whole, desired
//! configuration messages, and the text of errors built from them. A file
//! named on the command line may be `/dev/zero` or a multi-gigabyte log: it
//! is read up to its bound plus one byte, and refused past it.
use std::{
    io::Read,
    path::{Path, PathBuf},
};

/// A configuration object, from a file or the desired topic. A complete
/// one, every property set, is about 2 KiB.
pub const CONFIG_MAX_BYTES: u64 = 64 * 1024;
/// `--mqtt-password-file`.
pub const PASSWORD_MAX_BYTES: u64 = 4 * 1024;
/// `--passwd`: some 80 000 users of 100 bytes each.
pub const PASSWD_MAX_BYTES: u64 = 8 * 1024 * 1024;
/// `--mqtt-ca-file`, `--mqtt-client-cert`, `--mqtt-client-key`: a distribution's
/// whole CA bundle is about 220 KiB.
pub const PEM_MAX_BYTES: u64 = 1024 * 1024;
/// Largest MQTT packet the client reads. Larger than any message the agent
/// accepts, so that an oversized desired configuration is still read and
/// acknowledged (then refused) instead of cutting the connection: rumqttc
/// drops the connection on a packet over its limit, and the broker sends the
/// unacknowledged message again at every reconnect.
pub const MQTT_INCOMING_MAX_BYTES: usize = 4 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("cannot read {what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read {what} {}: larger than {max} bytes, the most a {what} may have", path.display())]
    TooLarge { what: &'static str, path: PathBuf, max: u64 },
    #[error("cannot read {what} {}: not UTF-8 text", path.display())]
    NotUtf8 { what: &'static str, path: PathBuf },
}

impl ReadError {
    /// Whether the file does not exist (some inputs are optional).
    pub fn is_not_found(&self) -> bool {
        matches!(self, ReadError::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound)
    }
}

/// Reads `path` whole if it has at most `max` bytes. `what` names the input
/// in the error ("config file").
pub fn read_bounded(what: &'static str, path: &Path, max: u64) -> Result<Vec<u8>, ReadError> {
    let io = |source| ReadError::Io { what, path: path.to_path_buf(), source };
    let file = std::fs::File::open(path).map_err(io)?;
    let mut out = Vec::new();
    // One byte past the bound tells "exactly max" from "more".
    file.take(max.saturating_add(1)).read_to_end(&mut out).map_err(io)?;
    if out.len() as u64 > max {
        return Err(ReadError::TooLarge { what, path: path.to_path_buf(), max });
    }
    Ok(out)
}

/// [`read_bounded`], as UTF-8 text.
pub fn read_to_string_bounded(what: &'static str, path: &Path, max: u64) -> Result<String, ReadError> {
    String::from_utf8(read_bounded(what, path, max)?).map_err(|_| ReadError::NotUtf8 { what, path: path.to_path_buf() })
}

/// `s` fit for one log line or one error field: control characters escaped
/// (a newline in a property name must not start a forged log line) and at
/// most `max_bytes` bytes of that kept, cut between characters, the cut
/// marked with the full length.
pub fn printable(s: &str, max_bytes: usize) -> String {
    let mut out = String::new();
    for c in s.chars() {
        let before = out.len();
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
        if out.len() > max_bytes {
            out.truncate(before);
            out.push_str(&format!("...({} bytes in all)", s.len()));
            break;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(tag: &str, content: &[u8]) -> PathBuf {
        let p = std::env::temp_dir().join(format!("hc-limits-{tag}-{}", std::process::id()));
        std::fs::write(&p, content).unwrap();
        p
    }

    #[test]
    fn reads_up_to_the_bound_and_refuses_past_it() {
        let p = temp("exact", b"12345678");
        assert_eq!(read_bounded("test file", &p, 8).unwrap(), b"12345678");
        let e = read_bounded("test file", &p, 7).unwrap_err().to_string();
        assert_eq!(
            e,
            format!("cannot read test file {}: larger than 7 bytes, the most a test file may have", p.display())
        );
        std::fs::remove_file(&p).unwrap();
    }

    #[test]
    fn an_endless_file_is_refused_at_once() {
        let started = std::time::Instant::now();
        let e = read_bounded("config file", Path::new("/dev/zero"), CONFIG_MAX_BYTES).unwrap_err();
        assert!(matches!(e, ReadError::TooLarge { max: CONFIG_MAX_BYTES, .. }), "{e}");
        assert!(e.to_string().contains("larger than 65536 bytes"), "{e}");
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
    }

    #[test]
    fn missing_and_non_text_files_are_named() {
        let e = read_bounded("password file", Path::new("/nonexistent/pw"), 10).unwrap_err();
        assert!(e.is_not_found());
        assert!(e.to_string().starts_with("cannot read password file /nonexistent/pw: "), "{e}");
        let p = temp("utf8", b"\xff\xfe");
        let e = read_to_string_bounded("passwd file", &p, 10).unwrap_err().to_string();
        assert!(e.ends_with("not UTF-8 text"), "{e}");
        std::fs::remove_file(&p).unwrap();
    }

    #[test]
    fn printable_escapes_control_characters_and_bounds_the_length() {
        assert_eq!(printable("plain", 10), "plain");
        assert_eq!(printable("a\nb\x1b[31m\r", 20), "a\\nb\\u{1b}[31m\\r");
        assert!(!printable("x\ny", 10).contains('\n'));
        assert_eq!(printable("abcdef", 3), "abc...(6 bytes in all)");
        assert_eq!(printable("abc", 3), "abc");
        assert_eq!(printable("ééé", 3), "é...(6 bytes in all)", "cut between characters");
        assert_eq!(printable("\u{1}\u{1}", 8), "\\u{1}...(2 bytes in all)", "escapes count as they print");
    }
}
