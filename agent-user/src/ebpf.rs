//! Loading the kernel programs: offsets for this kernel, map sizes, the probe
//! table and the attach loop.
use std::{
    collections::{HashMap, HashSet},
    path::{Path, PathBuf},
};

use agent_common::{
    maps, programs, Argv, KernelOffsets, ListenKey, Owner, ProcId, AF_INET, AF_INET6, FLAG_NET_TCP_BYTES_BY_CALL,
    LISTENERS_ENTRIES, OFFSETS_GLOBAL, TP_RECORD_LEN,
};

use aya::{
    maps::MapError,
    programs::{
        cgroup_skb::CgroupSkbLinkId,
        cgroup_sock::CgroupSockLinkId,
        raw_trace_point::RawTracePointLinkId,
        trace_point::TracePointLinkId,
        uprobe::{UProbeLinkId, UProbeScope},
        CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, CgroupSock, RawTracePoint, TracePoint, UProbe,
    },
    Ebpf, EbpfLoader,
};

use crate::{
    btf::Btf,
    hostfs::HostFs,
    listeners::{self, SeedReport},
    procfs, tracefs,
};

/// The compiled kernel object, embedded at build time by `cargo xtask build`.
static OBJECT: &[u8] = aya::include_bytes_aligned!(env!("HITCOUNT_EBPF_OBJECT_PATH"));

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("this binary was built without its eBPF object; build it with `cargo xtask build`")]
    NoObject,
    #[error("cannot read kernel type information (BTF): {0}; the kernel needs CONFIG_DEBUG_INFO_BTF=y")]
    Btf(#[from] crate::btf::BtfError),
    #[error(transparent)]
    Tracefs(#[from] tracefs::TracefsError),
    #[error("loading the eBPF object failed: {0}; run as root, or with CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN")]
    Object(#[from] aya::EbpfError),
    #[error("cannot open cgroup {path}: {source}")]
    Cgroup {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    TcpBytes(String),
    #[error("program {program}: {action} failed: {source}")]
    Program {
        program: &'static str,
        action: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error(
        "{source}; this kernel, Linux {release}, is older than 5.10, the oldest hitcount is tested on: the \
         programs need BPF ring buffers and bpf_ktime_get_boot_ns (5.8+)"
    )]
    KernelTooOld {
        release: String,
        #[source]
        source: Box<LoadError>,
    },
    #[error("map {0} is missing from the eBPF object")]
    MissingMap(&'static str),
    #[error("cannot restore the root directory after creating the loader: {0}")]
    RootNotRestored(std::io::Error),
    #[error("map {name}: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
}

/// Where a program attaches. Kernel signatures are pinned in the program's
/// doc comments in agent-ebpf.
#[derive(Debug, Clone, Copy)]
pub enum Hook {
    Tracepoint {
        category: &'static str,
        name: &'static str,
    },
    RawTracepoint {
        name: &'static str,
    },
    /// On the cgroup v2 root: every socket of every process.
    CgroupSkb {
        egress: bool,
    },
    CgroupSockCreate,
}

impl Hook {
    pub fn needs_cgroup(self) -> bool {
        matches!(self, Hook::CgroupSkb { .. } | Hook::CgroupSockCreate)
    }
}

/// Which collector a program belongs to: an `Off` collector's programs are
/// not attached at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    Process,
    Net,
}

#[derive(Debug, Clone, Copy)]
pub struct Probe {
    pub program: &'static str,
    pub hook: Hook,
    pub family: Family,
}

/// Every program and its hook: the attach loop and `hitcount check` walk this.
pub const PROBES: &[Probe] = &[
    Probe {
        program: programs::PROCESS_EXEC,
        hook: Hook::Tracepoint { category: "sched", name: "sched_process_exec" },
        family: Family::Process,
    },
    Probe {
        program: programs::PROCESS_FORK,
        hook: Hook::RawTracepoint { name: "sched_process_fork" },
        family: Family::Process,
    },
    Probe {
        program: programs::PROCESS_EXIT,
        hook: Hook::Tracepoint { category: "sched", name: "sched_process_exit" },
        family: Family::Process,
    },
    Probe {
        program: programs::TCP_STATE,
        hook: Hook::Tracepoint { category: "sock", name: "inet_sock_set_state" },
        family: Family::Net,
    },
    Probe { program: programs::SKB_INGRESS, hook: Hook::CgroupSkb { egress: false }, family: Family::Net },
    Probe { program: programs::SKB_EGRESS, hook: Hook::CgroupSkb { egress: true }, family: Family::Net },
    Probe { program: programs::SOCK_CREATE, hook: Hook::CgroupSockCreate, family: Family::Net },
    Probe {
        program: programs::TCP_SEND,
        hook: Hook::Tracepoint { category: "sock", name: "sock_send_length" },
        family: Family::Net,
    },
    Probe {
        program: programs::TCP_RECV,
        hook: Hook::Tracepoint { category: "sock", name: "sock_recv_length" },
        family: Family::Net,
    },
];

/// A uprobe or uretprobe (the program's section says which) on a function
/// of libpam; signatures are pinned in agent-ebpf pam.rs.
#[derive(Debug, Clone, Copy)]
pub struct Uprobe {
    pub program: &'static str,
    pub symbol: &'static str,
}

/// The Login collector's PAM programs, attached to every libpam found
/// (collectors::login::pam) rather than to a kernel hook.
pub const PAM_PROBES: &[Uprobe] = &[
    Uprobe { program: programs::PAM_START, symbol: "pam_start" },
    Uprobe { program: programs::PAM_START_RET, symbol: "pam_start" },
    Uprobe { program: programs::PAM_SET_ITEM, symbol: "pam_set_item" },
    Uprobe { program: programs::PAM_AUTHENTICATE, symbol: "pam_authenticate" },
    Uprobe { program: programs::PAM_AUTHENTICATE_RET, symbol: "pam_authenticate" },
    Uprobe { program: programs::PAM_ACCT_MGMT, symbol: "pam_acct_mgmt" },
    Uprobe { program: programs::PAM_ACCT_MGMT_RET, symbol: "pam_acct_mgmt" },
    Uprobe { program: programs::PAM_OPEN_SESSION, symbol: "pam_open_session" },
    Uprobe { program: programs::PAM_OPEN_SESSION_RET, symbol: "pam_open_session" },
    Uprobe { program: programs::PAM_CLOSE_SESSION, symbol: "pam_close_session" },
    Uprobe { program: programs::PAM_END, symbol: "pam_end" },
];

/// A file, by what the kernel attaches uprobes to: its inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FileId {
    pub dev: u64,
    pub ino: u64,
}

/// A libpam to attach to: a path that opens it now (on the host, or
/// through a process's /proc/PID/root or map_files) and its identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Library {
    pub id: FileId,
    pub path: PathBuf,
}

/// Where the network collector's TCP byte counts come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TcpBytes {
    /// sock/sock_send_length and sock_recv_length (kernel 6.3+): one event
    /// per send or receive call, the payload the application moved;
    /// retransmissions are not counted.
    Calls,
    /// cgroup_skb on the cgroup v2 root: one event per packet, L4 payload;
    /// retransmitted segments count again.
    Packets,
    /// Neither hook: TCP connections are counted without bytes.
    Unavailable,
}

/// The operator's choice (`hitcount run --tcp-bytes`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum TcpBytesChoice {
    /// Per call when the kernel has the tracepoints, else per packet.
    #[default]
    Auto,
    Calls,
    Packets,
}

impl TcpBytes {
    /// Resolves the choice against what this kernel and mount table offer.
    pub fn select(choice: TcpBytesChoice, has_calls: bool, has_cgroup: bool) -> Result<TcpBytes, String> {
        match choice {
            TcpBytesChoice::Auto if has_calls => Ok(TcpBytes::Calls),
            TcpBytesChoice::Auto if has_cgroup => Ok(TcpBytes::Packets),
            TcpBytesChoice::Auto => Ok(TcpBytes::Unavailable),
            TcpBytesChoice::Calls if has_calls => Ok(TcpBytes::Calls),
            TcpBytesChoice::Calls => Err("--tcp-bytes calls: this kernel has no sock/sock_send_length and \
                                          sock/sock_recv_length tracepoints (they came in Linux 6.3)"
                .to_string()),
            TcpBytesChoice::Packets if has_cgroup => Ok(TcpBytes::Packets),
            TcpBytesChoice::Packets => {
                Err("--tcp-bytes packets: no cgroup v2 mount for the cgroup_skb programs; mount one: \
                     mount -t cgroup2 none /sys/fs/cgroup/unified"
                    .to_string())
            }
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            TcpBytes::Calls => {
                "per send/receive call (sock/sock_send_length, sock/sock_recv_length): the payload \
                 applications moved, retransmissions not counted"
            }
            TcpBytes::Packets => {
                "per packet (cgroup_skb ingress/egress): L4 payload, retransmitted segments counted again"
            }
            TcpBytes::Unavailable => "none: no length tracepoints (Linux < 6.3) and no cgroup v2 mount",
        }
    }
}

/// Map sizes chosen at load time: distinct records the kernel holds between
/// two drains, per generation.
#[derive(Debug, Clone, Copy)]
pub struct MapSizes {
    pub process_create: u32,
    pub process_terminate: u32,
    /// Distinct connection records between two drains.
    pub connection_create: u32,
}

impl MapSizes {
    /// Kernel maps are a staging area in front of the window caches, sized
    /// above `cache_size` so that a burst of new records within one drain
    /// period reaches the window cache, where the oldest record gives way to
    /// the newest as the spec says, instead of the kernel refusing the newest.
    /// The extra room is bounded so that a large cache does not double kernel
    /// memory.
    pub fn staging_entries(cache_size: u32) -> u32 {
        cache_size.saturating_mul(2).max(128).min(cache_size.saturating_add(4096))
    }

    /// Traffic records: one per active 5-tuple per drain, including
    /// long-lived connections that made no new record, so several times the
    /// connection records.
    pub fn traffic(&self) -> u32 {
        self.connection_create.saturating_mul(8).clamp(4096, 65536)
    }
}

/// The cgroup v2 mount point: `/sys/fs/cgroup` on unified hosts,
/// `/sys/fs/cgroup/unified` on hybrid ones.
pub fn cgroup2_root() -> Option<PathBuf> {
    std::fs::read_to_string("/proc/mounts").ok().and_then(|m| parse_cgroup2_mount(&m))
}

/// The first `cgroup2` line of a mounts table.
pub fn parse_cgroup2_mount(mounts: &str) -> Option<PathBuf> {
    mounts.lines().find_map(|l| {
        let mut f = l.split_whitespace();
        let (_, dir, fstype) = (f.next()?, f.next()?, f.next()?);
        (fstype == "cgroup2").then(|| PathBuf::from(dir.replace("\\040", " ")))
    })
}

/// Reads the offsets the programs need from this kernel's BTF and tracefs.
pub fn kernel_offsets(btf: &Btf) -> Result<KernelOffsets, LoadError> {
    let task = |m| btf.member_offset("task_struct", m);
    let mm = |m| btf.member_offset("mm_struct", m);
    let exec = tracefs::format("sched", "sched_process_exec")?;
    let exit = tracefs::format("sched", "sched_process_exit")?;
    let state = tracefs::format("sock", "inet_sock_set_state")?;
    let lookup = |fields: &std::collections::HashMap<String, tracefs::Field>, tp: &str, name: &str| {
        fields
            .get(name)
            .copied()
            .ok_or_else(|| tracefs::TracefsError::NoField { tracepoint: tp.to_string(), field: name.to_string() })
    };
    let field = |fields, tp, name| lookup(fields, tp, name).map(|f| f.offset);
    let st = |name: &str| {
        let tp = "sock/inet_sock_set_state";
        let f = lookup(&state, tp, name)?;
        if !within_copy(&f) {
            return Err(tracefs::TracefsError::FieldPastRecord {
                tracepoint: tp.to_string(),
                field: name.to_string(),
                end: f.offset + f.size,
                limit: TP_RECORD_LEN,
            });
        }
        Ok(f.offset)
    };
    // group_dead joined sched_process_exit in 6.15; older kernels fall back
    // to "the exiting thread is the group leader".
    let group_dead = exit.get("group_dead").map(|f| f.offset);
    let length = sock_length_fields();
    let len_field = |i: usize| length.map_or(0, |f| f[i]);
    // Kernels built without IPv6 have no skc_v6_* members; no socket there is AF_INET6.
    let v6 = |m| btf.member_offset("sock_common", m).unwrap_or(u32::MAX);
    Ok(KernelOffsets {
        task_cred: task("cred")?,
        cred_uid: btf.member_offset("cred", "uid")?,
        task_comm: task("comm")?,
        task_start_time: task("start_time")?,
        // skc_net is a possible_net_t (a typedef'd anonymous struct holding
        // `struct net *net`); ns.inum sits in struct ns_common, inside an
        // anonymous union on newer kernels. The path walk handles both.
        sk_net: btf.member_path_offset("sock_common", &["skc_net", "net"])?,
        net_inum: btf.member_path_offset("net", &["ns", "inum"])?,
        tp_skaddr: st("skaddr")?,
        tp_oldstate: st("oldstate")?,
        tp_newstate: st("newstate")?,
        tp_sport: st("sport")?,
        tp_dport: st("dport")?,
        tp_family: st("family")?,
        tp_protocol: st("protocol")?,
        tp_saddr: st("saddr")?,
        tp_daddr: st("daddr")?,
        tp_saddr_v6: st("saddr_v6")?,
        tp_daddr_v6: st("daddr_v6")?,
        skc_daddr: btf.member_offset("sock_common", "skc_daddr")?,
        skc_rcv_saddr: btf.member_offset("sock_common", "skc_rcv_saddr")?,
        skc_dport: btf.member_offset("sock_common", "skc_dport")?,
        inet_sport: btf.member_offset("inet_sock", "inet_sport")?,
        skc_v6_daddr: v6("skc_v6_daddr"),
        skc_v6_rcv_saddr: v6("skc_v6_rcv_saddr"),
        tcp_bytes_sent: btf.member_offset("tcp_sock", "bytes_sent")?,
        tcp_bytes_received: btf.member_offset("tcp_sock", "bytes_received")?,
        tp_len_sk: len_field(0),
        tp_len_family: len_field(1),
        tp_len_protocol: len_field(2),
        tp_len_ret: len_field(3),
        tp_len_flags: len_field(4),
        has_sock_length: length.is_some() as u32,
        task_mm: task("mm")?,
        task_real_parent: task("real_parent")?,
        task_tgid: task("tgid")?,
        task_pid: task("pid")?,
        task_exit_code: task("exit_code")?,
        mm_arg_start: mm("arg_start")?,
        mm_arg_end: mm("arg_end")?,
        tp_exec_filename: field(&exec, "sched/sched_process_exec", "filename")?,
        tp_exit_group_dead: group_dead.unwrap_or(0),
        has_group_dead: group_dead.is_some() as u32,
        has_task_btf: btf.has_enumerator("bpf_func_id", "BPF_FUNC_get_current_task_btf") as u32,
    })
}

/// Whether a record field lies within the TP_RECORD_LEN bytes the network
/// tracepoint programs copy and read their fields from.
fn within_copy(f: &tracefs::Field) -> bool {
    (f.offset + f.size) as usize <= TP_RECORD_LEN
}

/// Offsets of sk, family, protocol, ret and flags in sock/sock_send_length,
/// when the kernel has it and sock_recv_length with the same layout (one
/// offset set serves both programs), all within the TP_RECORD_LEN bytes the
/// programs copy (else TCP bytes fall back to packets).
fn sock_length_fields() -> Option<[u32; 5]> {
    let names = ["sk", "family", "protocol", "ret", "flags"];
    let read = |name| {
        let fields = tracefs::format("sock", name).ok()?;
        names.iter().map(|n| fields.get(*n).filter(|f| within_copy(f)).map(|f| f.offset)).collect::<Option<Vec<u32>>>()
    };
    let send = read("sock_send_length")?;
    (read("sock_recv_length")? == send).then(|| [send[0], send[1], send[2], send[3], send[4]])
}

/// The oldest kernel the programs are tested on (README, Required kernel).
const MIN_KERNEL: (u32, u32) = (5, 10);

/// Whether a kernel release (`5.10.0-46-amd64`) is older than `min`; false
/// when it cannot be read, so that only a known old kernel is blamed.
fn release_older_than(release: &str, min: (u32, u32)) -> bool {
    let mut parts = release.trim().split(|c: char| !c.is_ascii_digit());
    match (parts.next().and_then(|p| p.parse().ok()), parts.next().and_then(|p| p.parse().ok())) {
        (Some(major), Some(minor)) => (major, minor) < min,
        _ => false,
    }
}

/// Loads the object with this kernel's offsets and the configured map sizes.
/// Programs are loaded into the kernel but not attached. The load is tried
/// on any kernel (a vendor kernel may have what it needs backported); a
/// failure on one older than 5.10 says why that is expected.
pub fn load(offsets: &KernelOffsets, sizes: MapSizes) -> Result<Ebpf, LoadError> {
    load_object(offsets, sizes).map_err(|e| {
        let release = running_release();
        if release_older_than(&release, MIN_KERNEL) {
            LoadError::KernelTooOld { release: release.trim().to_string(), source: Box::new(e) }
        } else {
            e
        }
    })
}

/// Where the root directory moves while aya's loader is created: a directory
/// every kernel the agent runs on has (the BTF was just read from it), and
/// which holds no `sys/kernel/btf/vmlinux`.
const LOADER_ROOT: &str = "/sys/kernel/btf";

/// An `EbpfLoader` that has not parsed the kernel's BTF. `EbpfLoader::new`
/// parses /sys/kernel/btf/vmlinux whatever the caller wants next (aya
/// 0.14): about 20 MiB allocated for a few milliseconds, which was the
/// agent's peak memory (README, Benchmarks). With the root directory moved
/// to [`LOADER_ROOT`] for that one call, the file is not there and aya
/// goes without, as `.btf(None)` then asks anyway. The agent has one
/// thread here (the runtime starts later), so nothing else sees the moved
/// root. Without CAP_SYS_CHROOT the loader parses the BTF as before.
fn loader_without_kernel_btf<'a>() -> Result<EbpfLoader<'a>, LoadError> {
    let moved = match MovedRoot::to(LOADER_ROOT) {
        Ok(moved) => moved,
        Err(e) => {
            log::debug!("cannot move the root directory to {LOADER_ROOT} ({e}): aya parses the kernel's BTF");
            return Ok(EbpfLoader::new());
        }
    };
    let loader = EbpfLoader::new();
    moved.restore().map_err(LoadError::RootNotRestored)?;
    Ok(loader)
}

/// The process's root directory, moved elsewhere until [`MovedRoot::restore`].
struct MovedRoot {
    root: std::os::fd::OwnedFd,
    cwd: std::os::fd::OwnedFd,
}

impl MovedRoot {
    fn to(dir: &str) -> std::io::Result<MovedRoot> {
        let open = |p: &str| std::fs::File::open(p).map(std::os::fd::OwnedFd::from);
        let (root, cwd) = (open("/")?, open(".")?);
        let dir = std::ffi::CString::new(dir).map_err(std::io::Error::other)?;
        // SAFETY: a NUL-terminated path; chroot leaves the working directory alone.
        if unsafe { libc::chroot(dir.as_ptr()) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(MovedRoot { root, cwd })
    }

    /// Back to the old root (the usual way out of a chroot: into the old
    /// root's directory, then make `.` the root), then the old working
    /// directory.
    fn restore(self) -> std::io::Result<()> {
        use std::os::fd::AsRawFd;
        let check = |rc: libc::c_int| if rc == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) };
        // SAFETY: plain syscalls on descriptors this struct owns and a static path.
        unsafe {
            check(libc::fchdir(self.root.as_raw_fd()))?;
            check(libc::chroot(c".".as_ptr()))?;
            check(libc::fchdir(self.cwd.as_raw_fd()))
        }
    }
}

fn load_object(offsets: &KernelOffsets, sizes: MapSizes) -> Result<Ebpf, LoadError> {
    if OBJECT.is_empty() {
        return Err(LoadError::NoObject);
    }
    raise_memlock_limit_or_warn();
    let mut ebpf = loader_without_kernel_btf()?
        // The object has no CO-RE relocations (rustc emits none; offsets
        // come in KERNEL_OFFSETS), so aya needs no kernel BTF.
        .btf(None)
        .override_global(OFFSETS_GLOBAL, offsets, true)
        .map_max_entries(maps::PROC_0, sizes.process_create)
        .map_max_entries(maps::PROC_1, sizes.process_create)
        .map_max_entries(maps::EXIT_0, sizes.process_terminate)
        .map_max_entries(maps::EXIT_1, sizes.process_terminate)
        .map_max_entries(maps::CONN_0, sizes.connection_create)
        .map_max_entries(maps::CONN_1, sizes.connection_create)
        .map_max_entries(maps::TRAF_0, sizes.traffic())
        .map_max_entries(maps::TRAF_1, sizes.traffic())
        .load(OBJECT)?;
    for probe in PROBES {
        let err = |action| move |source| LoadError::Program { program: probe.program, action, source };
        let prog = program_in(&mut ebpf, probe.program)?;
        match probe.hook {
            Hook::Tracepoint { .. } => {
                let p: &mut TracePoint = prog.try_into().map_err(err("type check"))?;
                p.load().map_err(err("verifier"))?;
            }
            Hook::RawTracepoint { .. } => {
                let p: &mut RawTracePoint = prog.try_into().map_err(err("type check"))?;
                p.load().map_err(err("verifier"))?;
            }
            Hook::CgroupSkb { .. } => {
                let p: &mut CgroupSkb = prog.try_into().map_err(err("type check"))?;
                p.load().map_err(err("verifier"))?;
            }
            Hook::CgroupSockCreate => {
                let p: &mut CgroupSock = prog.try_into().map_err(err("type check"))?;
                p.load().map_err(err("verifier"))?;
            }
        }
    }
    for probe in PAM_PROBES {
        let err = |action| move |source| LoadError::Program { program: probe.program, action, source };
        let p: &mut UProbe = program_in(&mut ebpf, probe.program)?.try_into().map_err(err("type check"))?;
        p.load().map_err(err("verifier"))?;
    }
    release_freed_memory();
    Ok(ebpf)
}

/// A program of the object, by name.
fn program_in<'a>(ebpf: &'a mut Ebpf, program: &'static str) -> Result<&'a mut aya::programs::Program, LoadError> {
    ebpf.program_mut(program).ok_or(LoadError::Program {
        program,
        action: "lookup",
        source: aya::programs::ProgramError::UnexpectedProgramType,
    })
}

/// Loading allocates and frees megabytes (the object, verifier logs);
/// glibc keeps freed heap mapped unless asked. A small device should not pay
/// for start-up for the rest of the agent's life.
fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free heap pages to the kernel.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// On 5.7+ aya attaches through bpf_link, which always coexists with other
/// programs on the cgroup (systemd's, for one) and refuses any flag
/// (kernel/bpf/cgroup.c, cgroup_bpf_link_attach: flags must be 0), so the
/// flag-free mode is the one that shares. Older kernels get legacy attach,
/// where this mode would be exclusive; those are below the supported 5.10.
const CGROUP_MODE: CgroupAttachMode = CgroupAttachMode::Single;

fn open_cgroup(path: &Path) -> Result<std::fs::File, LoadError> {
    std::fs::File::open(path).map_err(|source| LoadError::Cgroup { path: path.to_path_buf(), source })
}

/// The links of the PAM programs on one library, by program.
type UprobeLinks = Vec<(&'static str, UProbeLinkId)>;

enum LinkId {
    Tracepoint(TracePointLinkId),
    Raw(RawTracePointLinkId),
    Skb(CgroupSkbLinkId),
    Sock(CgroupSockLinkId),
}

/// The loaded programs and which of them are attached. "Off" means not
/// collected at all: a program nobody needs is detached, not filtered.
pub struct Programs {
    ebpf: Ebpf,
    links: HashMap<&'static str, LinkId>,
    /// The cgroup v2 root the cgroup programs attach to; None without a
    /// cgroup v2 mount, when the network collector runs on the TCP
    /// tracepoint alone.
    cgroup: Option<std::fs::File>,
    tcp_bytes: TcpBytes,
    /// Each libpam the PAM programs are attached to, with its links.
    libpam: HashMap<FileId, (PathBuf, UprobeLinks)>,
}

impl Programs {
    pub fn new(ebpf: Ebpf, offsets: &KernelOffsets, choice: TcpBytesChoice) -> Result<Programs, LoadError> {
        let cgroup = match cgroup2_root() {
            Some(path) => Some(open_cgroup(&path)?),
            None => None,
        };
        let tcp_bytes =
            TcpBytes::select(choice, offsets.has_sock_length != 0, cgroup.is_some()).map_err(LoadError::TcpBytes)?;
        Ok(Programs { ebpf, links: HashMap::new(), cgroup, tcp_bytes, libpam: HashMap::new() })
    }

    pub fn tcp_bytes(&self) -> TcpBytes {
        self.tcp_bytes
    }

    /// Control flags that follow from the hooks in use rather than the configuration.
    pub fn kernel_flags(&self) -> u32 {
        match self.tcp_bytes {
            TcpBytes::Calls => FLAG_NET_TCP_BYTES_BY_CALL,
            TcpBytes::Packets | TcpBytes::Unavailable => 0,
        }
    }

    /// The length tracepoints run only while they are the TCP byte source.
    fn needed(&self, program: &str) -> bool {
        match program {
            programs::TCP_SEND | programs::TCP_RECV => self.tcp_bytes == TcpBytes::Calls,
            _ => true,
        }
    }

    pub fn is_attached(&self, program: &str) -> bool {
        self.links.contains_key(program)
    }

    /// Attaches every program of the probe table `wanted` names and
    /// detaches the others; programs already in the right state are left alone.
    pub fn set_attached(&mut self, wanted: impl Fn(&str) -> bool) -> Result<(), LoadError> {
        for probe in PROBES {
            let mut want = wanted(probe.program) && self.needed(probe.program);
            if want && probe.hook.needs_cgroup() && self.cgroup.is_none() {
                log::warn!(
                    "no cgroup v2 mount: {} not attached; ConnectionCreate has no UDP, ICMP, DNS or application \
                     protocol from payload, TCP bytes {}; mount one: mount -t cgroup2 none /sys/fs/cgroup/unified",
                    probe.program,
                    self.tcp_bytes.describe()
                );
                want = false;
            }
            if want == self.is_attached(probe.program) {
                continue;
            }
            let err = |action| move |source| LoadError::Program { program: probe.program, action, source };
            let prog = self.ebpf.program_mut(probe.program).expect("loaded by load()");
            if want {
                let link = match probe.hook {
                    Hook::Tracepoint { category, name } => {
                        let p: &mut TracePoint = prog.try_into().map_err(err("type check"))?;
                        LinkId::Tracepoint(p.attach(category, name).map_err(err("attach"))?)
                    }
                    Hook::RawTracepoint { name } => {
                        let p: &mut RawTracePoint = prog.try_into().map_err(err("type check"))?;
                        LinkId::Raw(p.attach(name).map_err(err("attach"))?)
                    }
                    Hook::CgroupSkb { egress } => {
                        let p: &mut CgroupSkb = prog.try_into().map_err(err("type check"))?;
                        let kind = if egress { CgroupSkbAttachType::Egress } else { CgroupSkbAttachType::Ingress };
                        let cgroup = self.cgroup.as_ref().expect("checked above");
                        LinkId::Skb(p.attach(cgroup, kind, CGROUP_MODE).map_err(err("attach"))?)
                    }
                    Hook::CgroupSockCreate => {
                        let p: &mut CgroupSock = prog.try_into().map_err(err("type check"))?;
                        let cgroup = self.cgroup.as_ref().expect("checked above");
                        LinkId::Sock(p.attach(cgroup, CGROUP_MODE).map_err(err("attach"))?)
                    }
                };
                self.links.insert(probe.program, link);
                log::info!("attached {} to {:?}", probe.program, probe.hook);
            } else {
                let link = self.links.remove(probe.program).expect("attached");
                match link {
                    LinkId::Tracepoint(id) => {
                        let p: &mut TracePoint = prog.try_into().map_err(err("type check"))?;
                        p.detach(id).map_err(err("detach"))?;
                    }
                    LinkId::Raw(id) => {
                        let p: &mut RawTracePoint = prog.try_into().map_err(err("type check"))?;
                        p.detach(id).map_err(err("detach"))?;
                    }
                    LinkId::Skb(id) => {
                        let p: &mut CgroupSkb = prog.try_into().map_err(err("type check"))?;
                        p.detach(id).map_err(err("detach"))?;
                    }
                    LinkId::Sock(id) => {
                        let p: &mut CgroupSock = prog.try_into().map_err(err("type check"))?;
                        p.detach(id).map_err(err("detach"))?;
                    }
                }
                log::info!("detached {} (no event type that needs it is on)", probe.program);
            }
        }
        Ok(())
    }

    /// Attaches the PAM programs to each of `libraries` not attached yet and
    /// detaches them from the libraries no longer among them (an empty list
    /// detaches all). A library that refuses (no such symbol: not Linux-PAM)
    /// is left unattached and reported; the others still attach.
    pub fn sync_libpam(&mut self, libraries: &[Library]) -> Vec<(PathBuf, LoadError)> {
        let wanted: HashSet<FileId> = libraries.iter().map(|l| l.id).collect();
        let gone: Vec<FileId> = self.libpam.keys().filter(|id| !wanted.contains(id)).copied().collect();
        for id in gone {
            let (path, links) = self.libpam.remove(&id).expect("listed");
            self.detach_uprobes(links);
            log::info!("PAM uprobes detached from {} (no longer on the host or mapped)", path.display());
        }
        let mut failed = Vec::new();
        for lib in libraries {
            if self.libpam.contains_key(&lib.id) {
                continue;
            }
            match self.attach_uprobes(&lib.path) {
                Ok(links) => {
                    log::info!("PAM uprobes attached to {}", lib.path.display());
                    self.libpam.insert(lib.id, (lib.path.clone(), links));
                }
                Err(e) => failed.push((lib.path.clone(), e)),
            }
        }
        failed
    }

    /// The libraries the PAM programs are attached to now.
    pub fn libpam(&self) -> Vec<PathBuf> {
        let mut paths: Vec<PathBuf> = self.libpam.values().map(|(p, _)| p.clone()).collect();
        paths.sort();
        paths
    }

    /// Every PAM program on `target`, or none.
    fn attach_uprobes(&mut self, target: &Path) -> Result<UprobeLinks, LoadError> {
        let mut links = Vec::with_capacity(PAM_PROBES.len());
        for probe in PAM_PROBES {
            let err = |action| move |source| LoadError::Program { program: probe.program, action, source };
            let prog = self.ebpf.program_mut(probe.program).expect("loaded by load()");
            let attached = <&mut UProbe>::try_from(prog)
                .map_err(err("type check"))
                .and_then(|p| p.attach(probe.symbol, target, UProbeScope::AllProcesses).map_err(err("attach")));
            match attached {
                Ok(link) => links.push((probe.program, link)),
                Err(e) => {
                    self.detach_uprobes(links);
                    return Err(e);
                }
            }
        }
        Ok(links)
    }

    fn detach_uprobes(&mut self, links: UprobeLinks) {
        for (program, link) in links {
            let prog = self.ebpf.program_mut(program).expect("loaded by load()");
            if let Ok(p) = <&mut UProbe>::try_from(prog) {
                // The file may be gone already; its probes went with it.
                let _ = p.detach(link);
            }
        }
    }

    /// ARGV and LISTENERS at once, for the listener seeding, which writes
    /// an owner's command line and then the owner.
    #[allow(clippy::type_complexity)]
    fn argv_and_listeners_maps(
        &mut self,
    ) -> Result<
        (
            aya::maps::HashMap<&mut aya::maps::MapData, ProcId, Argv>,
            aya::maps::HashMap<&mut aya::maps::MapData, ListenKey, Owner>,
        ),
        LoadError,
    > {
        let [argv, listeners] = self.ebpf.maps_disjoint_mut([maps::ARGV, maps::LISTENERS]);
        let argv = argv.ok_or(LoadError::MissingMap(maps::ARGV))?;
        let listeners = listeners.ok_or(LoadError::MissingMap(maps::LISTENERS))?;
        Ok((
            aya::maps::HashMap::try_from(argv).map_err(|source| LoadError::Map { name: maps::ARGV, source })?,
            aya::maps::HashMap::try_from(listeners)
                .map_err(|source| LoadError::Map { name: maps::LISTENERS, source })?,
        ))
    }

    fn listeners_map(&mut self) -> Result<aya::maps::HashMap<&mut aya::maps::MapData, ListenKey, Owner>, LoadError> {
        let map = self.ebpf.map_mut(maps::LISTENERS).ok_or(LoadError::MissingMap(maps::LISTENERS))?;
        aya::maps::HashMap::try_from(map).map_err(|source| LoadError::Map { name: maps::LISTENERS, source })
    }

    /// Empties LISTENERS, before the TCP state program is attached again:
    /// while it was detached nothing removed listeners that closed, so
    /// their owners may be stale. Returns how many entries went.
    pub fn clear_listeners(&mut self) -> Result<usize, LoadError> {
        let mut map = self.listeners_map()?;
        let keys: Vec<ListenKey> =
            map.keys().collect::<Result<_, _>>().map_err(|source| LoadError::Map { name: maps::LISTENERS, source })?;
        for k in &keys {
            // An entry the LRU evicted since the walk is gone anyway.
            let _ = map.remove(k);
        }
        Ok(keys.len())
    }

    /// Writes the owners of the TCP listeners that exist now into
    /// LISTENERS, so that their accepted connections are attributed. Call it
    /// after attaching the TCP state program: a listener opened during the
    /// scan is then recorded by the kernel, and BPF_NOEXIST lets that entry
    /// win over the scan's. A listener closed between the scan and its
    /// insert leaves a stale entry, until a later listen() on its port
    /// replaces it or the LRU map evicts it.
    pub fn seed_listeners(&mut self, cmdline_max: u32) -> Result<SeedReport, LoadError> {
        let Scan { mut found, namespaces, denied } = scan_listeners(&HostFs::new("/"), cmdline_max);
        let mut report = SeedReport { namespaces, listeners: found.len(), denied, ..SeedReport::default() };
        // More than the map holds would evict entries the kernel just wrote.
        let room = LISTENERS_ENTRIES as usize;
        if found.len() > room {
            log::warn!(
                "{} TCP listeners; the {} map holds {room}: the rest are not seeded",
                found.len(),
                maps::LISTENERS
            );
            report.failed = found.len() - room;
            found.truncate(room);
        }
        let mut first_error = None;
        let (mut argv_map, mut listeners_map) = self.argv_and_listeners_maps()?;
        for (key, owner) in found {
            let Some((owner, argv)) = owner else {
                report.unattributed += 1;
                continue;
            };
            // The command line first: the kernel may copy the owner as soon
            // as it is in LISTENERS.
            if let Err(e) = argv_map.insert(owner.process, argv, 0) {
                first_error.get_or_insert(e);
                report.failed += 1;
                continue;
            }
            match listeners_map.insert(key, owner, BPF_NOEXIST) {
                Ok(()) => report.seeded += 1,
                Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::EEXIST) => report.known += 1,
                Err(e) => {
                    first_error.get_or_insert(e);
                    report.failed += 1;
                }
            }
        }
        if let Some(e) = first_error {
            log::warn!("map {}: cannot store listener owners: {e}", maps::LISTENERS);
        }
        Ok(report)
    }
}

/// `BPF_NOEXIST` in include/uapi/linux/bpf.h: insert only a new key.
const BPF_NOEXIST: u64 = 1;

/// What [`scan_listeners`] found.
struct Scan {
    /// One entry per key, with the owner when one could be read.
    found: Vec<(ListenKey, Option<(Owner, Argv)>)>,
    /// Network namespaces whose tables were read.
    namespaces: usize,
    /// Processes whose file descriptors the agent may not read.
    denied: usize,
}

/// Listening TCP sockets of every network namespace and their owners
/// (the walk is `procfs`'s). Whatever cannot be read (a process exiting
/// mid-scan, an fd directory the agent may not read) is skipped, never an
/// error.
fn scan_listeners(host: &HostFs, cmdline_max: u32) -> Scan {
    let pids = match procfs::pids(host) {
        Ok(pids) => pids,
        Err(e) => {
            log::warn!("cannot list {e}; listeners opened before the agent have no owner");
            return Scan { found: Vec::new(), namespaces: 0, denied: 0 };
        }
    };
    let mut namespaces = 0;
    let mut found: Vec<(ListenKey, u64)> = Vec::new();
    for ns in procfs::net_namespaces(host, &pids) {
        // The first process of the namespace whose tables can be read.
        let Some(tables) = ns.pids.iter().find_map(|&pid| read_tcp_tables(host, pid)) else { continue };
        namespaces += 1;
        let netns = ns.inode as u32;
        for (family, table) in [(AF_INET, tables.0), (AF_INET6, tables.1)] {
            for l in listeners::parse_tcp_table(&table) {
                found.push((ListenKey { netns, family: family as u16, port: l.port }, l.inode));
            }
        }
    }
    let wanted: HashSet<u64> = found.iter().map(|&(_, inode)| inode).collect();
    // Without listeners there is nothing to look for in the fd tables.
    let holders =
        if wanted.is_empty() { procfs::Holders::default() } else { procfs::socket_holders(host, &pids, &wanted) };
    let mut owners = procfs::Owners::new(host);
    let mut owned = Vec::with_capacity(found.len());
    for (key, inode) in found {
        let pids = holders.by_inode.get(&inode).map(Vec::as_slice).unwrap_or_default();
        let owner = owners.choose(pids).and_then(|(pid, status)| read_owner(host, pid, status, cmdline_max));
        owned.push((key, owner));
    }
    Scan { found: listeners::one_per_key(owned), namespaces, denied: holders.denied }
}

/// The tcp and tcp6 tables of a process's namespace; tcp6 is absent without IPv6.
fn read_tcp_tables(host: &HostFs, pid: u32) -> Option<(String, String)> {
    let v4 = procfs::net_table(host, pid, "tcp").ok()??;
    let v6 = procfs::net_table(host, pid, "tcp6").ok()?.unwrap_or_default();
    Some((v4, v6))
}

/// `pid` as a socket owner, and its command line; None when it exited meanwhile.
fn read_owner(host: &HostFs, pid: u32, status: listeners::Status, cmdline_max: u32) -> Option<(Owner, Argv)> {
    let comm = procfs::comm(host, pid)?;
    let argv = procfs::cmdline(host, pid, cmdline_max)?;
    Some(listeners::kernel_owner(pid, status, &comm, &argv, cmdline_max))
}

/// Whether this kernel charges BPF maps to RLIMIT_MEMLOCK: before 5.11;
/// later ones use memcg and ignore the limit.
pub fn charges_memlock() -> bool {
    release_older_than(&running_release(), (5, 11))
}

/// The running kernel's release (`5.10.0-46-amd64`), empty when unreadable.
fn running_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default()
}

/// Lifts RLIMIT_MEMLOCK for the maps. Without CAP_SYS_RESOURCE that fails,
/// which matters only where [`charges_memlock`].
pub fn raise_memlock_limit() -> std::io::Result<()> {
    let rlim = libc::rlimit { rlim_cur: libc::RLIM_INFINITY, rlim_max: libc::RLIM_INFINITY };
    // SAFETY: plain syscall with a valid pointer.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &rlim) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn raise_memlock_limit_or_warn() {
    let Err(err) = raise_memlock_limit() else { return };
    if charges_memlock() {
        log::warn!(
            "could not raise RLIMIT_MEMLOCK ({err}): kernels before 5.11 charge BPF maps to it, so creating \
             them may fail with EPERM; grant CAP_SYS_RESOURCE or raise the limit (ulimit -l, LimitMEMLOCK=)"
        );
    } else {
        log::debug!("could not raise RLIMIT_MEMLOCK (not used for BPF since 5.11): {err}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn staging_is_larger_than_the_cache_but_bounded() {
        assert_eq!(MapSizes::staging_entries(8), 128);
        assert_eq!(MapSizes::staging_entries(256), 512);
        assert_eq!(MapSizes::staging_entries(65_536), 65_536 + 4096);
        for c in [1, 100, 5000, 65_536] {
            assert!(MapSizes::staging_entries(c) > c);
        }
    }

    #[test]
    fn tells_kernels_older_than_5_10() {
        assert!(release_older_than("5.4.0-216-generic\n", MIN_KERNEL));
        assert!(release_older_than("4.19.0", MIN_KERNEL));
        assert!(!release_older_than("5.10.0-46-amd64", MIN_KERNEL));
        assert!(!release_older_than("6.1.0-57-amd64", MIN_KERNEL));
        assert!(!release_older_than("6.12.118+deb13-amd64", MIN_KERNEL));
        assert!(!release_older_than("", MIN_KERNEL), "unknown: not blamed");
    }

    #[test]
    fn finds_the_cgroup2_mount() {
        let hybrid = "tmpfs /sys/fs/cgroup tmpfs rw 0 0\ncgroup /sys/fs/cgroup/cpu cgroup rw,cpu 0 0\n\
                      cgroup2 /sys/fs/cgroup/unified cgroup2 rw,relatime 0 0\n";
        assert_eq!(parse_cgroup2_mount(hybrid), Some(PathBuf::from("/sys/fs/cgroup/unified")));
        assert_eq!(parse_cgroup2_mount("cgroup2 /sys/fs/cgroup cgroup2 rw 0 0"), Some(PathBuf::from("/sys/fs/cgroup")));
        assert_eq!(parse_cgroup2_mount("cgroup /sys/fs/cgroup/cpu cgroup rw 0 0\n"), None);
    }

    #[test]
    fn tcp_bytes_prefer_calls_and_refuse_what_the_kernel_lacks() {
        use TcpBytesChoice::*;
        assert_eq!(TcpBytes::select(Auto, true, true), Ok(TcpBytes::Calls));
        assert_eq!(TcpBytes::select(Auto, false, true), Ok(TcpBytes::Packets));
        assert_eq!(TcpBytes::select(Auto, true, false), Ok(TcpBytes::Calls), "no cgroup v2: calls still count");
        assert_eq!(TcpBytes::select(Auto, false, false), Ok(TcpBytes::Unavailable));
        assert_eq!(TcpBytes::select(Packets, true, true), Ok(TcpBytes::Packets));
        assert!(TcpBytes::select(Calls, false, true).unwrap_err().contains("6.3"));
        assert!(TcpBytes::select(Packets, true, false).unwrap_err().contains("cgroup v2"));
    }

    #[test]
    fn traffic_maps_are_bounded() {
        let s = |n| MapSizes { process_create: 1, process_terminate: 1, connection_create: n };
        assert_eq!(s(1).traffic(), 4096);
        assert_eq!(s(1024).traffic(), 8192);
        assert_eq!(s(65536).traffic(), 65536);
    }
}
