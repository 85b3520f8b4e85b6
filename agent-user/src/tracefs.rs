//! Tracepoint record layouts from tracefs format files
//! (`/sys/kernel/tracing/events/<category>/<name>/format`). Field offsets in
//! those records are not a stable ABI, so the programs get them from here.
use std::{collections::HashMap, path::PathBuf};

pub const TRACEFS_ROOTS: [&str; 2] = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];

#[derive(Debug, thiserror::Error)]
pub enum TracefsError {
    // A container gets a fresh sysfs without the host's tracefs mount on it,
    // so the fix differs there.
    #[error(
        "tracefs is not mounted (looked in {roots}); on the host: mount -t tracefs tracefs /sys/kernel/tracing; \
         in a container: mount the host's /sys/kernel/tracing at the same path \
         (podman/docker -v /sys/kernel/tracing:/sys/kernel/tracing, Kubernetes: a hostPath volume)"
    )]
    NotMounted { roots: String },
    // Mounted mode 0700 (the default), and the agent runs as a user other
    // than root with capabilities, which do not include reading files.
    #[error(
        "tracefs is mounted at {path} but this user cannot read it ({source}); run the agent as root, or let \
         its group read it: mount -o remount,gid=GROUP,mode=0750 {path}"
    )]
    NotReadable {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("tracepoint {0} does not exist on this kernel ({1})")]
    NoTracepoint(String, std::io::Error),
    #[error("tracepoint {tracepoint} has no field `{field}`")]
    NoField { tracepoint: String, field: String },
    #[error(
        "tracepoint {tracepoint}: field `{field}` ends at byte {end}, past the {limit} bytes the programs copy; \
         this kernel's record layout is newer than this build knows"
    )]
    FieldPastRecord { tracepoint: String, field: String, end: u32, limit: usize },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Field {
    pub offset: u32,
    pub size: u32,
}

/// Parses the `field:` lines of a format file into name -> (offset, size).
pub fn parse_format(text: &str) -> HashMap<String, Field> {
    let mut fields = HashMap::new();
    for line in text.lines() {
        let line = line.trim();
        let Some(rest) = line.strip_prefix("field:") else { continue };
        let mut decl = None;
        let (mut offset, mut size) = (None, None);
        for part in rest.split(';') {
            let part = part.trim();
            if let Some(v) = part.strip_prefix("offset:") {
                offset = v.parse().ok();
            } else if let Some(v) = part.strip_prefix("size:") {
                size = v.parse().ok();
            } else if decl.is_none() && !part.is_empty() {
                decl = Some(part);
            }
        }
        // `__data_loc char[] filename`, `char comm[16]`, `pid_t pid`: the name
        // is the last word, without any array suffix.
        let name = decl.and_then(|d| d.split_whitespace().last()).map(|n| n.split('[').next().unwrap_or(n));
        if let (Some(name), Some(offset), Some(size)) = (name, offset, size) {
            fields.insert(name.to_string(), Field { offset, size });
        }
    }
    fields
}

pub fn root() -> Result<PathBuf, TracefsError> {
    root_in(&TRACEFS_ROOTS.map(PathBuf::from))
}

/// The first of `roots` with an `events` directory. One that exists but
/// cannot be looked into is "not readable", not "not mounted".
fn root_in(roots: &[PathBuf]) -> Result<PathBuf, TracefsError> {
    let mut denied = None;
    for p in roots {
        match std::fs::metadata(p.join("events")) {
            Ok(m) if m.is_dir() => return Ok(p.clone()),
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                denied.get_or_insert(TracefsError::NotReadable { path: p.display().to_string(), source: e });
            }
            _ => {}
        }
    }
    let roots = roots.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ");
    Err(denied.unwrap_or(TracefsError::NotMounted { roots }))
}

/// Reads the format of `category/name`.
pub fn format(category: &str, name: &str) -> Result<HashMap<String, Field>, TracefsError> {
    let root = root()?;
    let path = root.join("events").join(category).join(name).join("format");
    let text = std::fs::read_to_string(&path).map_err(|e| match e.kind() {
        std::io::ErrorKind::PermissionDenied => {
            TracefsError::NotReadable { path: root.display().to_string(), source: e }
        }
        _ => TracefsError::NoTracepoint(format!("{category}/{name}"), e),
    })?;
    Ok(parse_format(&text))
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXIT: &str = "name: sched_process_exit
ID: 369
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:char comm[16];\toffset:8;\tsize:16;\tsigned:0;
\tfield:pid_t pid;\toffset:24;\tsize:4;\tsigned:1;
\tfield:bool group_dead;\toffset:32;\tsize:1;\tsigned:0;

print fmt: \"comm=%s\", REC->comm
";

    #[test]
    fn parses_fields() {
        let f = parse_format(EXIT);
        assert_eq!(f["comm"], Field { offset: 8, size: 16 });
        assert_eq!(f["pid"], Field { offset: 24, size: 4 });
        assert_eq!(f["group_dead"], Field { offset: 32, size: 1 });
        assert_eq!(f["common_pid"], Field { offset: 4, size: 4 });
        assert_eq!(f.len(), 5);
    }

    #[test]
    fn parses_data_loc() {
        let f = parse_format("\tfield:__data_loc char[] filename;\toffset:8;\tsize:4;\tsigned:0;\n");
        assert_eq!(f["filename"], Field { offset: 8, size: 4 });
    }

    #[test]
    fn mounted_but_unreadable_is_not_called_unmounted() {
        let dir = std::env::temp_dir().join(format!("hc-tracefs-{}", std::process::id()));
        let (absent, mounted, locked) = (dir.join("absent"), dir.join("mounted"), dir.join("locked"));
        std::fs::create_dir_all(mounted.join("events")).unwrap();
        std::fs::create_dir_all(locked.join("events")).unwrap();
        let e = root_in(std::slice::from_ref(&absent)).unwrap_err().to_string();
        assert!(e.starts_with(&format!("tracefs is not mounted (looked in {})", absent.display())), "{e}");
        assert_eq!(root_in(&[absent.clone(), mounted.clone()]).unwrap(), mounted);
        // Root reads a mode 0700 directory anyway: only another user sees
        // the refusal, so the check runs as nobody, in a child process.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o700)).unwrap();
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            // SAFETY: glibc makes malloc usable in a forked child; the child
            // only drops to nobody, stats two paths and exits.
            let pid = unsafe { libc::fork() };
            if pid == 0 {
                let code = unsafe {
                    if libc::setgid(65534) != 0 || libc::setuid(65534) != 0 {
                        2
                    } else {
                        match root_in(&[absent.clone(), locked.clone()]) {
                            Err(TracefsError::NotReadable { path, .. }) if path == locked.display().to_string() => 0,
                            _ => 1,
                        }
                    }
                };
                unsafe { libc::_exit(code) };
            }
            let mut status = 0;
            // SAFETY: waiting for our own child.
            unsafe { libc::waitpid(pid, &mut status, 0) };
            assert_eq!(libc::WEXITSTATUS(status), 0, "as nobody, a 0700 tracefs is reported not readable");
        } else {
            assert!(matches!(root_in(&[absent, locked]), Err(TracefsError::NotReadable { .. })));
        }
        let e = TracefsError::NotReadable {
            path: "/sys/kernel/tracing".into(),
            source: std::io::ErrorKind::PermissionDenied.into(),
        };
        assert!(
            e.to_string().starts_with("tracefs is mounted at /sys/kernel/tracing but this user cannot read it"),
            "{e}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn ignores_garbage() {
        assert!(parse_format("field:int x;\toffset:zz;\tsize:4;\nnonsense\n").is_empty());
    }
}
