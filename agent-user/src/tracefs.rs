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
    TRACEFS_ROOTS
        .iter()
        .map(PathBuf::from)
        .find(|p| p.join("events").is_dir())
        .ok_or_else(|| TracefsError::NotMounted { roots: TRACEFS_ROOTS.join(", ") })
}

/// Reads the format of `category/name`.
pub fn format(category: &str, name: &str) -> Result<HashMap<String, Field>, TracefsError> {
    let path = root()?.join("events").join(category).join(name).join("format");
    let text =
        std::fs::read_to_string(&path).map_err(|e| TracefsError::NoTracepoint(format!("{category}/{name}"), e))?;
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
    fn ignores_garbage() {
        assert!(parse_format("field:int x;\toffset:zz;\tsize:4;\nnonsense\n").is_empty());
    }
}
