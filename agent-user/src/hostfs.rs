//! Every host file the collectors read (/etc, /var, /usr, /proc, /sys,
//! /run) goes through one root, `--host-root` (config `hostRoot`): `/` on
//! the host itself, `/host` in a container that mounts the host's `/` there
//! read-only, a fixture tree in unit tests.
//!
//! Paths resolve as if the root were `/`: symbolic links are followed by
//! hand, an absolute target starting again at the root and `..` never
//! climbing above it, so a host's `/etc/os-release -> /usr/lib/os-release`
//! works under `/host` and no link leads out of the tree. Every read is
//! bounded: a host file is input like any other.
use std::{
    io::Read,
    path::{Component, Path, PathBuf},
};

/// Largest host file read whole. The largest real one read today is dpkg's
/// status database (a few MiB on a desktop); /dev/zero must not be read.
pub const MAX_FILE_BYTES: u64 = 32 << 20;
/// Most entries taken from one directory (a /proc with 100,000 processes is
/// a host under attack, not a reason to grow without bound).
pub const MAX_DIR_ENTRIES: usize = 1 << 20;
/// Symbolic links followed in one path, as the kernel's MAXSYMLINKS.
const MAX_LINKS: usize = 40;

#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("{path}: larger than {bound} bytes, not read")]
    TooLarge { path: String, bound: u64 },
    #[error("{path}: more than {bound} entries, the rest not read")]
    TooManyEntries { path: String, bound: usize },
    #[error("{path}: too many levels of symbolic links")]
    LinkLoop { path: String },
}

impl HostError {
    /// The host path the error is about, as a collector reports it.
    pub fn path(&self) -> &str {
        match self {
            HostError::Io { path, .. }
            | HostError::TooLarge { path, .. }
            | HostError::TooManyEntries { path, .. }
            | HostError::LinkLoop { path } => path,
        }
    }

    pub fn is_not_found(&self) -> bool {
        matches!(self, HostError::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostFs {
    root: PathBuf,
}

impl HostFs {
    pub fn new(root: impl Into<PathBuf>) -> HostFs {
        HostFs { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn io(host_path: &Path, source: std::io::Error) -> HostError {
        HostError::Io { path: host_path.display().to_string(), source }
    }

    /// The real path of `host_path` (absolute, as on the host), symbolic
    /// links resolved inside the root. The last component need not exist.
    pub fn resolve(&self, host_path: impl AsRef<Path>) -> Result<PathBuf, HostError> {
        let host_path = host_path.as_ref();
        if self.root == Path::new("/") {
            return Ok(host_path.to_path_buf());
        }
        // Components still to walk, last first; `resolved` is host-relative.
        let mut todo: Vec<std::ffi::OsString> = Vec::new();
        push_components(&mut todo, host_path);
        let mut resolved = PathBuf::new();
        let mut links = 0;
        while let Some(c) = todo.pop() {
            if c == ".." {
                resolved.pop();
                continue;
            }
            let candidate = resolved.join(&c);
            let real = self.root.join(&candidate);
            match std::fs::symlink_metadata(&real) {
                Ok(m) if m.file_type().is_symlink() => {
                    links += 1;
                    if links > MAX_LINKS {
                        return Err(HostError::LinkLoop { path: host_path.display().to_string() });
                    }
                    let target = std::fs::read_link(&real).map_err(|e| Self::io(host_path, e))?;
                    if target.is_absolute() {
                        resolved = PathBuf::new();
                    }
                    push_components(&mut todo, &target);
                }
                _ => resolved = candidate,
            }
        }
        Ok(self.root.join(resolved))
    }

    /// Reads a whole host file of at most `bound` bytes.
    pub fn read_bounded(&self, host_path: impl AsRef<Path>, bound: u64) -> Result<Vec<u8>, HostError> {
        let host_path = host_path.as_ref();
        let real = self.resolve(host_path)?;
        let file = std::fs::File::open(&real).map_err(|e| Self::io(host_path, e))?;
        let mut buf = Vec::new();
        file.take(bound + 1).read_to_end(&mut buf).map_err(|e| Self::io(host_path, e))?;
        if buf.len() as u64 > bound {
            return Err(HostError::TooLarge { path: host_path.display().to_string(), bound });
        }
        Ok(buf)
    }

    /// A host file as text (invalid UTF-8 replaced), at most MAX_FILE_BYTES.
    pub fn read_to_string(&self, host_path: impl AsRef<Path>) -> Result<String, HostError> {
        let bytes = self.read_bounded(host_path, MAX_FILE_BYTES)?;
        Ok(String::from_utf8(bytes).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()))
    }

    /// A short sysfs or procfs attribute, trimmed; None when absent or unreadable.
    pub fn attribute(&self, host_path: impl AsRef<Path>) -> Option<String> {
        let bytes = self.read_bounded(host_path, 64 << 10).ok()?;
        let text = String::from_utf8_lossy(&bytes);
        let t = text.trim_matches(|c: char| c.is_whitespace() || c == '\0');
        (!t.is_empty()).then(|| t.to_string())
    }

    /// Names in a host directory, sorted.
    pub fn read_dir(&self, host_path: impl AsRef<Path>) -> Result<Vec<String>, HostError> {
        let host_path = host_path.as_ref();
        let real = self.resolve(host_path)?;
        let mut names = Vec::new();
        for entry in std::fs::read_dir(&real).map_err(|e| Self::io(host_path, e))? {
            let entry = entry.map_err(|e| Self::io(host_path, e))?;
            if names.len() == MAX_DIR_ENTRIES {
                return Err(HostError::TooManyEntries {
                    path: host_path.display().to_string(),
                    bound: MAX_DIR_ENTRIES,
                });
            }
            names.push(entry.file_name().to_string_lossy().into_owned());
        }
        names.sort();
        Ok(names)
    }

    /// The target of a host symbolic link, as written in the link.
    pub fn read_link(&self, host_path: impl AsRef<Path>) -> Result<PathBuf, HostError> {
        let host_path = host_path.as_ref();
        let parent = host_path.parent().unwrap_or(Path::new("/"));
        let name = host_path.file_name().unwrap_or_default();
        let real = self.resolve(parent)?.join(name);
        std::fs::read_link(&real).map_err(|e| Self::io(host_path, e))
    }

    /// `host_path` with the link at its end followed inside the root: the
    /// host path it points to (for /sys's `device` and `driver` links).
    pub fn canonical(&self, host_path: impl AsRef<Path>) -> Result<PathBuf, HostError> {
        let real = self.resolve(host_path.as_ref())?;
        let real = if self.root == Path::new("/") {
            std::fs::canonicalize(&real).map_err(|e| Self::io(host_path.as_ref(), e))?
        } else {
            real
        };
        Ok(Path::new("/").join(real.strip_prefix(&self.root).unwrap_or(&real)))
    }

    pub fn exists(&self, host_path: impl AsRef<Path>) -> bool {
        self.resolve(host_path).is_ok_and(|p| p.exists())
    }
}

fn push_components(todo: &mut Vec<std::ffi::OsString>, path: &Path) {
    let mut parts: Vec<std::ffi::OsString> = Vec::new();
    for c in path.components() {
        match c {
            Component::Normal(n) => parts.push(n.to_os_string()),
            Component::ParentDir => parts.push("..".into()),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    todo.extend(parts.into_iter().rev());
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn tree() -> (tempdir::Dir, HostFs) {
        let d = tempdir::Dir::new("hostfs");
        std::fs::create_dir_all(d.0.join("usr/lib")).unwrap();
        std::fs::create_dir_all(d.0.join("etc")).unwrap();
        std::fs::write(d.0.join("usr/lib/os-release"), "ID=debian\n").unwrap();
        std::os::unix::fs::symlink("/usr/lib/os-release", d.0.join("etc/abs")).unwrap();
        std::os::unix::fs::symlink("../usr/lib/os-release", d.0.join("etc/os-release")).unwrap();
        std::os::unix::fs::symlink("../../../../../../etc/hostname", d.0.join("etc/escape")).unwrap();
        std::os::unix::fs::symlink("loop", d.0.join("etc/loop")).unwrap();
        let fs = HostFs::new(&d.0);
        (d, fs)
    }

    /// A directory removed on drop, without a crate for it.
    pub(crate) mod tempdir {
        pub struct Dir(pub std::path::PathBuf);
        impl Dir {
            pub fn new(tag: &str) -> Dir {
                static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
                let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let p = std::env::temp_dir().join(format!("hitcount-{tag}-{}-{n}", std::process::id()));
                let _ = std::fs::remove_dir_all(&p);
                std::fs::create_dir_all(&p).unwrap();
                Dir(p)
            }
        }
        impl Drop for Dir {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
    }

    #[test]
    fn links_resolve_inside_the_root() {
        let (d, fs) = tree();
        assert_eq!(fs.read_to_string("/etc/os-release").unwrap(), "ID=debian\n");
        assert_eq!(fs.read_to_string("/etc/abs").unwrap(), "ID=debian\n", "absolute targets start at the root");
        assert_eq!(fs.resolve("/etc/escape").unwrap(), d.0.join("etc/hostname"), ".. stops at the root");
        assert!(matches!(fs.read_to_string("/etc/loop"), Err(HostError::LinkLoop { .. })));
        let e = fs.read_to_string("/etc/missing").unwrap_err();
        assert!(e.is_not_found() && e.path() == "/etc/missing", "{e}");
        assert_eq!(fs.canonical("/etc/abs").unwrap(), Path::new("/usr/lib/os-release"));
    }

    #[test]
    fn reads_are_bounded() {
        let (_d, fs) = tree();
        let e = fs.read_bounded("/usr/lib/os-release", 4).unwrap_err();
        assert_eq!(e.to_string(), "/usr/lib/os-release: larger than 4 bytes, not read");
        assert_eq!(fs.read_bounded("/usr/lib/os-release", 10).unwrap().len(), 10);
        let zero = HostFs::new("/").read_bounded("/dev/zero", 1 << 16).unwrap_err();
        assert!(matches!(zero, HostError::TooLarge { bound: 65536, .. }));
    }

    #[test]
    fn directories_list_sorted() {
        let (_d, fs) = tree();
        assert_eq!(fs.read_dir("/etc").unwrap(), ["abs", "escape", "loop", "os-release"]);
        assert_eq!(fs.attribute("/usr/lib/os-release").as_deref(), Some("ID=debian"));
        assert_eq!(fs.attribute("/nope"), None);
    }
}
