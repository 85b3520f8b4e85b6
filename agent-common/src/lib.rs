//! Types shared by the kernel programs (`agent-ebpf`) and the agent (`agent-user`).
//!
//! Every key and value is `#[repr(C)]` with explicit padding and a size assert:
//! the kernel hashes keys byte by byte, so a stray padding byte would make two
//! equal keys land in different slots. No `bool`, enum or `Option` crosses the
//! boundary for the same reason.
#![no_std]

use core::mem::size_of;

/// Longest command line kept in a key. The configured limit
/// (`commandline_max_bytes`) may be lower, never higher: the map's key size is
/// fixed when the object is compiled. 488 makes a [`ProcKey`] 512 bytes, the
/// largest hash map key Linux before 5.11 creates (`MAX_BPF_STACK` in
/// `htab_map_alloc_check`).
pub const CMDLINE_CAP: usize = 488;
/// Longest executable path kept.
pub const EXE_CAP: usize = 256;
/// `TASK_COMM_LEN` in include/linux/sched.h.
pub const COMM_LEN: usize = 16;

/// Map names, shared so that both sides agree. At most 15 characters: the
/// kernel truncates longer object names (BPF_OBJ_NAME_LEN is 16 with the NUL).
pub mod maps {
    /// Process create records, generation 0 and 1 (see [`super::Control`]).
    pub const PROC_0: &str = "PROC_0";
    pub const PROC_1: &str = "PROC_1";
    /// Process terminate records, generation 0 and 1.
    pub const EXIT_0: &str = "EXIT_0";
    pub const EXIT_1: &str = "EXIT_1";
    /// tgid -> executable path seen at its last exec, for fork and exit records.
    pub const TASK_EXE: &str = "TASK_EXE";
    /// One [`super::Control`] value, written only by userspace.
    pub const CONTROL: &str = "CONTROL";
    /// Per-CPU `u64` counters, `2 * COUNTER_COUNT`: see [`super::Counter`].
    pub const COUNTERS: &str = "COUNTERS";
    /// Per-CPU scratch space to build keys too large for the 512-byte stack.
    pub const SCRATCH: &str = "SCRATCH";
    /// Connection records (hits, direction, owner), generation 0 and 1.
    pub const CONN_0: &str = "CONN_0";
    pub const CONN_1: &str = "CONN_1";
    /// Traffic records (bytes in/out, DNS queries, first payload bytes), generation 0 and 1.
    pub const TRAF_0: &str = "TRAF_0";
    pub const TRAF_1: &str = "TRAF_1";
    /// UDP/ICMP flows seen recently: [`super::ConnKey`] -> last packet time.
    pub const FLOWS: &str = "FLOWS";
    /// [`super::FlowClaim`]s: which CPU counted a flow that was idle.
    pub const FLOW_CLAIMS: &str = "FLOW_CLAIMS";
    /// TCP sockets between connect() (SYN_SENT) and leaving SYN_SENT: skaddr -> owner.
    pub const PENDING: &str = "PENDING";
    /// Listening TCP sockets: [`super::ListenKey`] -> owner, for accepted connections.
    pub const LISTENERS: &str = "LISTENERS";
    /// UDP/ICMP/raw sockets: socket cookie -> owner, filled at socket().
    pub const SOCK_OWNER: &str = "SOCK_OWNER";
    /// [`super::ProcId`] -> [`super::Argv`]: the command line of each socket
    /// owner, stored once per process rather than in every owner.
    pub const ARGV: &str = "ARGV";
    /// Ring buffer of DNS messages ([`super::DnsEvent`]): queries sent
    /// (egress, to port 53) and answers received (ingress, from port 53), in
    /// the order they passed, so that userspace matches each answer to its query.
    pub const DNS_EVENTS: &str = "DNS_EVENTS";
    /// Per-CPU scratch for network records.
    pub const NET_SCRATCH: &str = "NET_SCRATCH";
    /// Kernel rollups, generation 0 and 1: where an event goes when its
    /// staging map (PROC, EXIT, CONN) is full, keyed coarser (process: the
    /// executable in place of argv; exit: the signal in place of the wait
    /// status; connection: ports 0), [`super::ROLLUP_ENTRIES`] each.
    pub const PROCR_0: &str = "PROCR_0";
    pub const PROCR_1: &str = "PROCR_1";
    pub const EXITR_0: &str = "EXITR_0";
    pub const EXITR_1: &str = "EXITR_1";
    pub const CONNR_0: &str = "CONNR_0";
    pub const CONNR_1: &str = "CONNR_1";
}

/// Entries of each kernel rollup map, per generation (one drain period).
/// Small: it only has to hold the distinct coarse keys of one second in
/// which the staging map overflowed, which a storm of ports or command
/// lines of one program does not multiply.
pub const ROLLUP_ENTRIES: u32 = 128;

/// Program names (the Rust function names of the entry points).
pub mod programs {
    pub const PROCESS_EXEC: &str = "sched_process_exec";
    pub const PROCESS_FORK: &str = "sched_process_fork";
    pub const PROCESS_EXIT: &str = "sched_process_exit";
    pub const TCP_STATE: &str = "inet_sock_set_state";
    pub const SKB_INGRESS: &str = "skb_ingress";
    pub const SKB_EGRESS: &str = "skb_egress";
    pub const SOCK_CREATE: &str = "sock_create";
    pub const TCP_SEND: &str = "sock_send_length";
    pub const TCP_RECV: &str = "sock_recv_length";
    /// Uprobes on libpam (agent-ebpf pam.rs), named after the function and
    /// `_ret` for its return.
    pub const PAM_START: &str = "pam_start";
    pub const PAM_START_RET: &str = "pam_start_ret";
    pub const PAM_SET_ITEM: &str = "pam_set_item";
    pub const PAM_AUTHENTICATE: &str = "pam_authenticate";
    pub const PAM_AUTHENTICATE_RET: &str = "pam_authenticate_ret";
    pub const PAM_ACCT_MGMT: &str = "pam_acct_mgmt";
    pub const PAM_ACCT_MGMT_RET: &str = "pam_acct_mgmt_ret";
    pub const PAM_OPEN_SESSION: &str = "pam_open_session";
    pub const PAM_OPEN_SESSION_RET: &str = "pam_open_session_ret";
    pub const PAM_CLOSE_SESSION: &str = "pam_close_session";
    pub const PAM_END: &str = "pam_end";
}

/// Bytes of a tracepoint record the network programs copy in one helper call
/// (then read fields from the copy). The loader refuses a kernel whose
/// sock/inet_sock_set_state or sock length records put a used field past it.
pub const TP_RECORD_LEN: usize = 96;

/// Name of the read-only global holding [`KernelOffsets`].
pub const OFFSETS_GLOBAL: &str = "KERNEL_OFFSETS";

/// Upper bound of entries in `TASK_EXE`: one per live process is enough.
pub const TASK_EXE_ENTRIES: u32 = 4096;

/// Event kinds of a [`ProcKey`].
pub const PROC_KIND_EXEC: u8 = 1;
pub const PROC_KIND_FORK: u8 = 2;

/// Bits of [`Control::flags`].
pub const FLAG_EXEC: u32 = 1 << 0;
pub const FLAG_FORK: u32 = 1 << 1;
pub const FLAG_EXIT: u32 = 1 << 2;
/// Per-event mode for process create records: pid and time join the key.
pub const FLAG_PROC_PER_EVENT: u32 = 1 << 3;
/// Per-event mode for process terminate records.
pub const FLAG_EXIT_PER_EVENT: u32 = 1 << 4;
/// Network collector (ConnectionCreate) on.
pub const FLAG_NET: u32 = 1 << 5;
/// Per-event mode for connection records.
pub const FLAG_NET_PER_EVENT: u32 = 1 << 6;
/// Zero the local port of outbound connection records (aggregateEphemeralPorts).
pub const FLAG_NET_AGG_EPHEMERAL: u32 = 1 << 7;
/// TCP bytes come from the sock_send_length / sock_recv_length tracepoints
/// (one event per send or receive call); the cgroup_skb programs then only
/// keep the first payload bytes and DNS of TCP packets. Without it they
/// count TCP bytes per packet.
pub const FLAG_NET_TCP_BYTES_BY_CALL: u32 = 1 << 8;

/// Entries of the network bookkeeping maps. LRU maps: when one is full the
/// least recently used entry goes, which costs an owner (reported as pid 0)
/// or makes a quiet UDP/ICMP flow count as new again, never a crash.
pub const FLOWS_ENTRIES: u32 = 16384;
/// A claim matters only between two CPUs' reads of the same stale time, a
/// few microseconds, so a small LRU map holds every claim that matters.
pub const FLOW_CLAIMS_ENTRIES: u32 = 1024;
pub const PENDING_ENTRIES: u32 = 4096;
pub const LISTENERS_ENTRIES: u32 = 1024;
pub const SOCK_OWNER_ENTRIES: u32 = 4096;
/// Processes whose command line is kept for socket owners: those that made
/// a socket event since their entry was last used. An owner whose entry
/// went before the agent read it is reported without a command line, and
/// counted (README, Output).
pub const ARGV_ENTRIES: u32 = 1024;
/// Bytes of the DNS ring buffer (a power of two pages). Queries and answers
/// share it: about 880 messages (220 lookups of A and AAAA) per drain.
pub const DNS_RING_BYTES: u32 = 512 * 1024;
/// A UDP/ICMP flow whose last packet is older than this is new again.
pub const FLOW_IDLE_NS: u64 = 30_000_000_000;
/// Payload bytes of a DNS message copied to userspace. Answers longer than
/// this are cut; the parser then uses the records that fit.
pub const DNS_CAP: usize = 512;
/// First payload bytes kept per traffic record, to recognise the application protocol.
pub const HEAD_LEN: usize = 8;

/// Directions of a [`ConnValue`].
pub const DIR_OUT: u8 = 1;
pub const DIR_IN: u8 = 2;

/// Address families and protocols as the kernel numbers them.
pub const AF_INET: u8 = 2;
pub const AF_INET6: u8 = 10;
pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_ICMPV6: u8 = 58;

/// Runtime switches the programs read on every event. Userspace is the only
/// writer; the programs only read it.
///
/// `generation` selects which of the two maps of each family (and which half
/// of `COUNTERS`) programs write to. Userspace flips it, waits for an RCU grace
/// period, and only then reads and clears the old generation, so no increment
/// can land in a map while it is being drained.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Control {
    pub generation: u32,
    pub flags: u32,
    /// Bytes of argv kept, at most [`CMDLINE_CAP`].
    pub cmdline_max: u32,
    pub _pad: u32,
}
const _: () = assert!(size_of::<Control>() == 16);

/// Indexes into the per-CPU `COUNTERS` array. Counters are kept per
/// generation (index `generation * COUNTER_COUNT + counter`), so that a drain
/// reads exactly the counts that belong to the records it drained.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// Process create events (exec, and fork of a process, not a thread)
    /// that an enabled collector tried to record.
    ProcSeen = 0,
    /// A new process create record did not fit: the map held `cache_size` keys.
    ProcMapFull = 1,
    /// The record vanished between a failed insert and the retry: event lost.
    ProcRaceLost = 2,
    /// Process exits (last thread) that an enabled collector tried to record.
    ExitSeen = 3,
    ExitMapFull = 4,
    ExitRaceLost = 5,
    /// argv could not be read; the event is kept with an empty command line.
    ArgvReadFailed = 6,
    /// Connection events (TCP connect leaving SYN_SENT, TCP accept reaching
    /// ESTABLISHED, new UDP/ICMP flow) that an enabled collector tried to record.
    ConnSeen = 7,
    ConnMapFull = 8,
    ConnRaceLost = 9,
    /// Packets or send/receive calls whose bytes found the traffic map full:
    /// their bytes are in no record.
    TrafficMapFull = 10,
    /// DNS answers not copied because the ring buffer was full.
    DnsRingFull = 11,
    /// A kernel structure could not be read (netns); the record has netns 0.
    NetReadFailed = 12,
    /// A TCP send/receive call whose socket could not be read: its bytes
    /// are in no record.
    TcpSocketUnreadable = 13,
    /// DNS queries sent but not copied because the ring buffer was full:
    /// their answers cannot be matched and name nothing.
    DnsQueryRingFull = 14,
    /// Events that found their staging map full and were added to the
    /// kernel rollup map instead (so they are in a record, not lost). A full
    /// rollup map too counts the event in `*MapFull`.
    ProcRolledUp = 15,
    ExitRolledUp = 16,
    ConnRolledUp = 17,
}
pub const COUNTER_COUNT: u32 = 18;

/// Identity of an aggregated process create record: command line + uid + type
/// (seed 001: "identical when the command line and userid are identical").
/// In per-event mode `pid` and `nonce` make every event its own record; they
/// are zero when aggregating.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ProcKey {
    pub uid: u32,
    pub kind: u8,
    /// 1 when argv was longer than the configured limit.
    pub truncated: u8,
    pub _pad: [u8; 2],
    /// Bytes used in `cmdline`: argv as in memory, NUL-separated.
    pub cmdline_len: u32,
    pub pid: u32,
    pub nonce: u64,
    pub cmdline: [u8; CMDLINE_CAP],
}
const _: () = assert!(size_of::<ProcKey>() == 24 + CMDLINE_CAP && size_of::<ProcKey>() <= 512);

/// What is kept about the first occurrence of a [`ProcKey`].
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ProcValue {
    /// Added to atomically by every occurrence.
    pub hit_count: u64,
    /// `bpf_ktime_get_boot_ns` of the first occurrence.
    pub first_seen_ns: u64,
    pub pid: u32,
    pub ppid: u32,
    /// NUL-terminated; empty when the process exec'd before the agent started.
    pub exe: [u8; EXE_CAP],
    pub comm: [u8; COMM_LEN],
}
const _: () = assert!(size_of::<ProcValue>() == 24 + EXE_CAP + COMM_LEN);

/// Identity of a process terminate record: executable + exit status (seed 000).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ExitKey {
    /// `task_struct.exit_code`: wait status, `(code << 8) | signal`.
    pub exit_code: u32,
    pub pid: u32,
    pub nonce: u64,
    /// Executable path, or `comm` when the exec was not seen.
    pub exe: [u8; EXE_CAP],
}
const _: () = assert!(size_of::<ExitKey>() == 16 + EXE_CAP);

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ExitValue {
    pub hit_count: u64,
    pub first_seen_ns: u64,
    pub pid: u32,
    /// 1 when `exe` in the key is only the 16-byte comm.
    pub exe_is_comm: u32,
}
const _: () = assert!(size_of::<ExitValue>() == 24);

/// A flow found idle, keyed by the time of its last packet before the gap:
/// every CPU that read that same time tries to insert the claim, and the one
/// whose insert succeeds counts the flow as new. An exchange would do it in
/// one instruction, but BPF_XCHG is 5.12+ and 5.10 refuses it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowClaim {
    pub flow: ConnKey,
    pub last_ns: u64,
}

/// Identity of a connection record: the 5-tuple of seed 002 (local and remote
/// address and port, transport protocol) plus the network namespace, which
/// tells apart two sockets with the same addresses in different namespaces.
/// Addresses are in network byte order, IPv4 in the first 4 bytes; ports are
/// in host byte order. ICMP records have ports 0. In per-event mode `nonce`
/// makes every event its own record.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ConnKey {
    pub netns: u32,
    pub family: u8,
    pub proto: u8,
    pub _pad: [u8; 2],
    pub lport: u16,
    pub rport: u16,
    pub _pad2: u32,
    pub laddr: [u8; 16],
    pub raddr: [u8; 16],
    pub nonce: u64,
}
const _: () = assert!(size_of::<ConnKey>() == 56);

/// A process, for as long as the machine runs: its tgid and
/// `task_struct.start_time` (ns of CLOCK_MONOTONIC), which tell apart two
/// processes that had the same tgid. Owners of listeners the agent found
/// in /proc at start have `start_ns` 0.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ProcId {
    pub tgid: u32,
    pub _pad: u32,
    pub start_ns: u64,
}
const _: () = assert!(size_of::<ProcId>() == 16);

/// A process's argv as in memory, NUL-separated, at most
/// `Control::cmdline_max` bytes, read at its first socket event.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Argv {
    pub len: u32,
    pub _pad: u32,
    pub bytes: [u8; CMDLINE_CAP],
}
const _: () = assert!(size_of::<Argv>() == 8 + CMDLINE_CAP);

/// Who owns a socket: the process that created it (UDP/ICMP), called
/// connect() (TCP out) or listen() (TCP in). Its command line is in ARGV
/// under `process`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Owner {
    pub process: ProcId,
    pub uid: u32,
    pub _pad: u32,
    pub comm: [u8; COMM_LEN],
}
const _: () = assert!(size_of::<Owner>() == 24 + COMM_LEN);

/// A connection record: hits, and details of the first occurrence.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ConnValue {
    pub hit_count: u64,
    pub first_seen_ns: u64,
    /// [`DIR_OUT`] or [`DIR_IN`].
    pub direction: u8,
    pub _pad: [u8; 7],
    pub owner: Owner,
}
const _: () = assert!(size_of::<ConnValue>() == 24 + size_of::<Owner>());

/// Bytes of one 5-tuple between two drains. Counted per packet at the
/// cgroup_skb hooks; payload bytes at L4.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TrafficValue {
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// DNS queries sent on this 5-tuple (UDP/TCP packets to port 53 with payload).
    pub dns_queries: u64,
    /// `bpf_ktime_get_boot_ns` of the record's first packet.
    pub first_seen_ns: u64,
    /// Bytes used in `head`: the start of the first payload seen, either direction.
    pub head_len: u32,
    pub _pad: u32,
    pub head: [u8; HEAD_LEN],
}
const _: () = assert!(size_of::<TrafficValue>() == 48);

/// A listening socket, to attribute accepted connections to its owner.
/// `family` is the socket's (the tracepoint's `family`): a dual-stack
/// listener on `[::]` is AF_INET6, and so are the IPv4 connections it accepts.
/// `port` is in host byte order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ListenKey {
    pub netns: u32,
    pub family: u16,
    pub port: u16,
}
const _: () = assert!(size_of::<ListenKey>() == 8);

/// Kinds of a [`DnsEvent`].
pub const DNS_KIND_QUERY: u8 = 1;
pub const DNS_KIND_ANSWER: u8 = 2;

/// One DNS message, as copied to the ring buffer: a query sent (to port 53)
/// or an answer received (from port 53).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct DnsEvent {
    /// `bpf_ktime_get_boot_ns` when it passed: TTLs count from here, and
    /// an answer must come within a few seconds of its query.
    pub ts_ns: u64,
    /// The 5-tuple and namespace, oriented from the device's socket as
    /// connection keys are (local = this device), so that a query and its
    /// answer have equal keys. `nonce` is 0.
    pub key: ConnKey,
    /// Bytes of the DNS message in `data` (after the TCP length prefix, if any).
    pub len: u16,
    /// [`DNS_KIND_QUERY`] or [`DNS_KIND_ANSWER`].
    pub kind: u8,
    pub _pad: [u8; 5],
    pub data: [u8; DNS_CAP],
}
const _: () = assert!(size_of::<DnsEvent>() == 72 + DNS_CAP);

/// Per-CPU scratch for building network records.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct NetScratch {
    pub conn: ConnValue,
    pub owner: Owner,
    pub argv: Argv,
}

/// Executable path recorded at exec, looked up at fork and exit.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct TaskExe {
    pub path: [u8; EXE_CAP],
}
const _: () = assert!(size_of::<TaskExe>() == EXE_CAP);

/// Scratch space per CPU: the largest key built by a program.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Scratch {
    pub proc_key: ProcKey,
    pub exit_key: ExitKey,
    pub proc_value: ProcValue,
}

/// Offsets in the running kernel's structures and tracepoint records, found
/// at load time from `/sys/kernel/btf/vmlinux` and the tracepoint format
/// files. rustc emits no CO-RE relocations, so nothing here may be a constant
/// compiled for one kernel.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelOffsets {
    pub task_mm: u32,
    pub task_real_parent: u32,
    pub task_tgid: u32,
    pub task_pid: u32,
    pub task_exit_code: u32,
    pub mm_arg_start: u32,
    pub mm_arg_end: u32,
    /// `__data_loc char[] filename` in sched/sched_process_exec.
    pub tp_exec_filename: u32,
    /// `bool group_dead` in sched/sched_process_exit (0 if the kernel lacks it).
    pub tp_exit_group_dead: u32,
    /// 1 when the kernel's sched_process_exit has `group_dead`.
    pub has_group_dead: u32,
    /// `task_struct.cred`, `cred.uid`, `task_struct.comm`: the owner of a
    /// socket, read the same way in every program type.
    pub task_cred: u32,
    pub cred_uid: u32,
    pub task_comm: u32,
    /// `sock_common.skc_net.net` and `net.ns.inum`: a socket's network namespace inode.
    pub sk_net: u32,
    pub net_inum: u32,
    /// Fields of the sock/inet_sock_set_state record.
    pub tp_skaddr: u32,
    pub tp_oldstate: u32,
    pub tp_newstate: u32,
    pub tp_sport: u32,
    pub tp_dport: u32,
    pub tp_family: u32,
    pub tp_protocol: u32,
    pub tp_saddr: u32,
    pub tp_daddr: u32,
    pub tp_saddr_v6: u32,
    pub tp_daddr_v6: u32,
    /// `sock_common` addresses and ports: the connection of a socket seen
    /// by the send/receive length tracepoints. The IPv6 ones are u32::MAX
    /// on kernels built without IPv6 (a read there fails, nothing is counted).
    pub skc_daddr: u32,
    pub skc_rcv_saddr: u32,
    pub skc_dport: u32,
    /// `inet_sock.inet_sport`: unlike `skc_num` it survives the socket
    /// reaching TIME_WAIT while the application still reads queued data.
    pub inet_sport: u32,
    pub skc_v6_daddr: u32,
    pub skc_v6_rcv_saddr: u32,
    /// `tcp_sock.bytes_sent` / `bytes_received`: tell a connection's first
    /// payload packet from the rest without a map lookup.
    pub tcp_bytes_sent: u32,
    pub tcp_bytes_received: u32,
    /// Fields of sock/sock_send_length and sock/sock_recv_length (one
    /// layout for both; 0 when the kernel lacks them, before 6.3).
    pub tp_len_sk: u32,
    pub tp_len_family: u32,
    pub tp_len_protocol: u32,
    pub tp_len_ret: u32,
    pub tp_len_flags: u32,
    /// 1 when the kernel has both length tracepoints with the fields above.
    pub has_sock_length: u32,
    /// 1 when the kernel has `bpf_get_current_task_btf` (5.11+): task fields
    /// are plain loads; else one `bpf_probe_read_kernel` each.
    pub has_task_btf: u32,
    /// `task_struct.start_time`: with the tgid, a process's identity ([`ProcId`]).
    pub task_start_time: u32,
}
const _: () = assert!(size_of::<KernelOffsets>() == 104 + 16 * 4);

// ---- Login: PAM uprobes (agent-ebpf pam.rs) ----

/// Map names of the PAM programs.
pub mod pam_maps {
    /// [`super::PamHandleKey`] -> [`super::PamItems`]: what the application
    /// told PAM about each live handle (pam_start, pam_set_item).
    pub const PAM_HANDLES: &str = "PAM_HANDLES";
    /// Thread (pid_tgid) -> [`super::PamCall`]: a call between its uprobe and uretprobe.
    pub const PAM_CALLS: &str = "PAM_CALLS";
    /// Ring buffer of [`super::PamEvent`]s.
    pub const PAM_EVENTS: &str = "PAM_EVENTS";
    /// Per-CPU `u64` counters, indexed by [`super::PamCounter`]; never reset.
    pub const PAM_COUNTERS: &str = "PAM_COUNTERS";
    /// Per-CPU scratch: the items of a handle being created.
    pub const PAM_SCRATCH: &str = "PAM_SCRATCH";
}

/// Bytes kept of each PAM item, NUL included. A longer user name (one an
/// attacker tried) is cut: the agent reports it bounded anyway.
pub const PAM_SERVICE_CAP: usize = 32;
pub const PAM_USER_CAP: usize = 128;
pub const PAM_TTY_CAP: usize = 64;
/// An IPv6 address with a zone fits; a host name (sshd with UseDNS) may be cut.
pub const PAM_RHOST_CAP: usize = 64;

/// Item types of pam_set_item (security/_pam_types.h). Only these are ever
/// read: never PAM_AUTHTOK (6) or PAM_OLDAUTHTOK (7), the passwords.
pub const PAM_SERVICE: u32 = 1;
pub const PAM_USER: u32 = 2;
pub const PAM_TTY: u32 = 3;
pub const PAM_RHOST: u32 = 4;

/// Return codes of pam_authenticate and pam_acct_mgmt that are no verdict.
pub const PAM_SUCCESS: i32 = 0;
/// Account valid but the password must change: the login goes on.
pub const PAM_NEW_AUTHTOK_REQD: i32 = 12;
/// Event-driven applications call again (pam_authenticate(3)).
pub const PAM_CONV_AGAIN: i32 = 30;
pub const PAM_INCOMPLETE: i32 = 31;

/// What the application told PAM about one handle. Aligned so that the
/// kernel side can zero and copy it by words.
#[repr(C, align(8))]
#[derive(Clone, Copy)]
pub struct PamItems {
    pub service: [u8; PAM_SERVICE_CAP],
    pub user: [u8; PAM_USER_CAP],
    pub tty: [u8; PAM_TTY_CAP],
    pub rhost: [u8; PAM_RHOST_CAP],
}
const _: () = assert!(size_of::<PamItems>() == 288);

/// A PAM handle: its address in the process that made it.
#[repr(C)]
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct PamHandleKey {
    pub tgid: u32,
    pub _pad: u32,
    pub handle: u64,
}
const _: () = assert!(size_of::<PamHandleKey>() == 16);

/// Operations of a [`PamCall`] and a [`PamEvent`].
pub const PAM_OP_START: u32 = 1;
pub const PAM_OP_AUTHENTICATE: u32 = 2;
pub const PAM_OP_ACCT_MGMT: u32 = 3;
pub const PAM_OP_OPEN_SESSION: u32 = 4;
pub const PAM_OP_CLOSE_SESSION: u32 = 5;

/// A call seen at its uprobe, finished at its uretprobe.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct PamCall {
    pub op: u32,
    pub _pad: u32,
    /// pam_start: the `pam_handle_t **` it fills; the others: the handle.
    pub handle: u64,
    /// pam_start's service and user arguments (user memory).
    pub service: u64,
    pub user: u64,
}
const _: () = assert!(size_of::<PamCall>() == 32);

/// The handle had no items in PAM_HANDLES (made before the agent attached,
/// or evicted): the event has no user, service, terminal or host.
pub const PAM_EVENT_NO_ITEMS: u32 = 1;

/// One verdict, as copied to the ring buffer: an authentication or account
/// check that failed, a session opened or closed.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct PamEvent {
    pub ts_ns: u64,
    /// The process that called PAM (its tgid in the initial PID namespace).
    pub tgid: u32,
    /// [`PAM_OP_AUTHENTICATE`] ... [`PAM_OP_CLOSE_SESSION`].
    pub op: u32,
    /// What the call returned (0 at pam_close_session's entry).
    pub ret: i32,
    /// [`PAM_EVENT_NO_ITEMS`].
    pub flags: u32,
    pub items: PamItems,
}
const _: () = assert!(size_of::<PamEvent>() == 24 + 288);

/// Indexes of `PAM_COUNTERS`.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PamCounter {
    /// An event found the ring buffer full: lost.
    RingFull = 0,
    /// A new handle found PAM_HANDLES full (its events have no items).
    HandlesFull = 1,
    /// A call found PAM_CALLS full: its verdict is lost.
    CallsFull = 2,
}
pub const PAM_COUNTER_COUNT: u32 = 3;

/// Bytes of the PAM ring buffer: about 200 events between two reads (one
/// second), far above what sshd's failure delay lets a brute force make.
pub const PAM_RING_BYTES: u32 = 64 * 1024;
/// Live handles: one per login in progress or session open.
pub const PAM_HANDLE_ENTRIES: u32 = 1024;
/// PAM calls in flight at once.
pub const PAM_CALL_ENTRIES: u32 = 1024;

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: all of these are repr(C), contain only integers and byte arrays,
    // and have no implicit padding (the size asserts above pin that).
    unsafe impl aya::Pod for Control {}
    unsafe impl aya::Pod for ProcKey {}
    unsafe impl aya::Pod for ProcValue {}
    unsafe impl aya::Pod for ExitKey {}
    unsafe impl aya::Pod for ExitValue {}
    unsafe impl aya::Pod for TaskExe {}
    unsafe impl aya::Pod for KernelOffsets {}
    unsafe impl aya::Pod for ConnKey {}
    unsafe impl aya::Pod for ConnValue {}
    unsafe impl aya::Pod for ListenKey {}
    unsafe impl aya::Pod for Owner {}
    unsafe impl aya::Pod for ProcId {}
    unsafe impl aya::Pod for Argv {}
    unsafe impl aya::Pod for TrafficValue {}
    unsafe impl aya::Pod for DnsEvent {}
    unsafe impl aya::Pod for PamItems {}
    unsafe impl aya::Pod for PamHandleKey {}
    unsafe impl aya::Pod for PamCall {}
    unsafe impl aya::Pod for PamEvent {}
}

impl ProcKey {
    pub const fn zeroed() -> Self {
        Self {
            uid: 0,
            kind: 0,
            truncated: 0,
            _pad: [0; 2],
            cmdline_len: 0,
            pid: 0,
            nonce: 0,
            cmdline: [0; CMDLINE_CAP],
        }
    }
}

impl ExitKey {
    pub const fn zeroed() -> Self {
        Self { exit_code: 0, pid: 0, nonce: 0, exe: [0; EXE_CAP] }
    }
}

impl KernelOffsets {
    pub const fn zeroed() -> Self {
        Self {
            task_mm: 0,
            task_real_parent: 0,
            task_tgid: 0,
            task_pid: 0,
            task_exit_code: 0,
            mm_arg_start: 0,
            mm_arg_end: 0,
            tp_exec_filename: 0,
            tp_exit_group_dead: 0,
            has_group_dead: 0,
            task_cred: 0,
            cred_uid: 0,
            task_comm: 0,
            task_start_time: 0,
            sk_net: 0,
            net_inum: 0,
            tp_skaddr: 0,
            tp_oldstate: 0,
            tp_newstate: 0,
            tp_sport: 0,
            tp_dport: 0,
            tp_family: 0,
            tp_protocol: 0,
            tp_saddr: 0,
            tp_daddr: 0,
            tp_saddr_v6: 0,
            tp_daddr_v6: 0,
            skc_daddr: 0,
            skc_rcv_saddr: 0,
            skc_dport: 0,
            inet_sport: 0,
            skc_v6_daddr: 0,
            skc_v6_rcv_saddr: 0,
            tcp_bytes_sent: 0,
            tcp_bytes_received: 0,
            tp_len_sk: 0,
            tp_len_family: 0,
            tp_len_protocol: 0,
            tp_len_ret: 0,
            tp_len_flags: 0,
            has_sock_length: 0,
            has_task_btf: 0,
        }
    }
}

impl ConnKey {
    pub const fn zeroed() -> Self {
        Self {
            netns: 0,
            family: 0,
            proto: 0,
            _pad: [0; 2],
            lport: 0,
            rport: 0,
            _pad2: 0,
            laddr: [0; 16],
            raddr: [0; 16],
            nonce: 0,
        }
    }
}

impl Owner {
    pub const fn zeroed() -> Self {
        Self { process: ProcId { tgid: 0, _pad: 0, start_ns: 0 }, uid: 0, _pad: 0, comm: [0; COMM_LEN] }
    }
}
