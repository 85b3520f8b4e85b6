//! The /proc walk shared by the seeding of listeners (`ebpf`) and the
//! ListeningPorts collector, through [`HostFs`] so that a fixture tree or a
//! host's /proc mounted under `--host-root` reads like the real one. A
//! process can exit at any point of a walk: whatever it no longer has is
//! skipped, never an error.
//!
//! Network namespaces are told apart by the inode of /proc/PID/ns/net (the
//! `ns.inum` the kernel programs key by); /proc/PID/net/* lists the sockets
//! of PID's namespace, so one process per namespace gives its tables.
//! Owners come from the `socket:[INODE]` links of /proc/PID/fd.
use std::{
    collections::{HashMap, HashSet},
    io::Read,
    os::unix::ffi::OsStrExt,
};

use crate::{
    hostfs::{HostError, HostFs},
    listeners::{self, Status},
};

/// The processes of /proc, in pid order.
pub fn pids(host: &HostFs) -> Result<Vec<u32>, HostError> {
    let mut pids: Vec<u32> = host.read_dir("/proc")?.iter().filter_map(|n| n.parse().ok()).collect();
    pids.sort_unstable();
    Ok(pids)
}

/// The inode of a namespace link's target: `net:[4026531840]`.
pub fn ns_inode(link: &[u8], kind: &str) -> Option<u64> {
    let digits = link.strip_prefix(kind.as_bytes())?.strip_prefix(b":[")?.strip_suffix(b"]")?;
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// One network namespace and the processes in it, in pid order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Namespace {
    pub inode: u64,
    pub pids: Vec<u32>,
}

/// The network namespaces of `pids`, in the order of their first process.
/// A process whose namespace cannot be read (exited, a zombie, not ours to
/// read) is in none.
pub fn net_namespaces(host: &HostFs, pids: &[u32]) -> Vec<Namespace> {
    let mut out: Vec<Namespace> = Vec::new();
    let mut at: HashMap<u64, usize> = HashMap::new();
    for &pid in pids {
        let Ok(link) = host.read_link(format!("/proc/{pid}/ns/net")) else { continue };
        let Some(inode) = ns_inode(link.as_os_str().as_bytes(), "net") else { continue };
        match at.get(&inode) {
            Some(&i) => out[i].pids.push(pid),
            None => {
                at.insert(inode, out.len());
                out.push(Namespace { inode, pids: vec![pid] });
            }
        }
    }
    out
}

/// /proc/PID/net/NAME; None when the kernel has no such table (tcp6
/// without IPv6).
pub fn net_table(host: &HostFs, pid: u32, name: &str) -> Result<Option<String>, HostError> {
    match host.read_to_string(format!("/proc/{pid}/net/{name}")) {
        Ok(t) => Ok(Some(t)),
        Err(e) if e.is_not_found() => Ok(None),
        Err(e) => Err(e),
    }
}

/// Which processes hold which sockets.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Holders {
    /// Socket inode -> the pids with a file descriptor on it.
    pub by_inode: HashMap<u64, Vec<u32>>,
    /// Processes whose /proc/PID/fd the agent was denied (without
    /// CAP_SYS_PTRACE: other users' processes, or ones with capabilities
    /// the agent lacks).
    pub denied: usize,
}

/// The holders among `pids` of the sockets in `wanted`.
pub fn socket_holders(host: &HostFs, pids: &[u32], wanted: &HashSet<u64>) -> Holders {
    let mut by_inode: HashMap<u64, Vec<u32>> = HashMap::new();
    let mut denied = HashSet::new();
    let is_denied = |e: &HostError| matches!(e, HostError::Io { source, .. } if source.kind() == std::io::ErrorKind::PermissionDenied);
    for &pid in pids {
        let dir = format!("/proc/{pid}/fd");
        let fds = match host.read_dir(&dir) {
            Ok(fds) => fds,
            Err(e) => {
                if is_denied(&e) {
                    log::debug!("socket owners: {e}");
                    denied.insert(pid);
                }
                continue;
            }
        };
        for fd in fds {
            match host.read_link(format!("{dir}/{fd}")) {
                Ok(link) => {
                    let inode = listeners::socket_inode(link.as_os_str().as_bytes());
                    if let Some(inode) = inode.filter(|i| wanted.contains(i)) {
                        by_inode.entry(inode).or_default().push(pid);
                    }
                }
                Err(e) if is_denied(&e) => {
                    if denied.insert(pid) {
                        log::debug!("socket owners: {e}");
                    }
                }
                Err(_) => {} // closed meanwhile
            }
        }
    }
    Holders { by_inode, denied: denied.len() }
}

/// Chooses owners among holders, reading each /proc/PID/status once.
pub struct Owners<'a> {
    host: &'a HostFs,
    statuses: HashMap<u32, Option<Status>>,
}

impl<'a> Owners<'a> {
    pub fn new(host: &'a HostFs) -> Owners<'a> {
        Owners { host, statuses: HashMap::new() }
    }

    pub fn status(&mut self, pid: u32) -> Option<Status> {
        let host = self.host;
        *self.statuses.entry(pid).or_insert_with(|| {
            host.read_to_string(format!("/proc/{pid}/status")).ok().and_then(|t| listeners::parse_status(&t))
        })
    }

    /// The owner of a socket held by `holders` ([`listeners::choose_owner`]
    /// among those still alive), with its status.
    pub fn choose(&mut self, holders: &[u32]) -> Option<(u32, Status)> {
        let known: Vec<(u32, u32)> = holders.iter().filter_map(|&p| Some((p, self.status(p)?.ppid))).collect();
        let pid = listeners::choose_owner(&known)?;
        Some((pid, self.status(pid)?))
    }
}

/// The first `max` bytes of /proc/PID/cmdline: argv, NUL after each.
pub fn cmdline(host: &HostFs, pid: u32, max: u32) -> Option<Vec<u8>> {
    let path = host.resolve(format!("/proc/{pid}/cmdline")).ok()?;
    let mut argv = Vec::new();
    std::fs::File::open(path).ok()?.take(u64::from(max)).read_to_end(&mut argv).ok()?;
    Some(argv)
}

/// /proc/PID/comm, its newline included.
pub fn comm(host: &HostFs, pid: u32) -> Option<Vec<u8>> {
    host.read_bounded(format!("/proc/{pid}/comm"), 64).ok()
}

/// The executable of PID (the /proc/PID/exe link); None for kernel threads
/// and processes the agent may not inspect.
pub fn executable(host: &HostFs, pid: u32) -> Option<String> {
    host.read_link(format!("/proc/{pid}/exe")).ok().map(|p| p.to_string_lossy().into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespace_links() {
        assert_eq!(ns_inode(b"net:[4026531840]", "net"), Some(4_026_531_840));
        assert_eq!(ns_inode(b"mnt:[4026531840]", "net"), None);
        assert_eq!(ns_inode(b"net:[]", "net"), None);
        assert_eq!(ns_inode(b"net:[12", "net"), None);
    }
}
