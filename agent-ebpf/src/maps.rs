//! Every map of the kernel side. Sizes given here are placeholders where the
//! agent sets the real value at load time (`cache_size`).
//!
//! The per-window hash maps (records, rollups, traffic) are not
//! preallocated (BPF_F_NO_PREALLOC): they are empty after every drain and
//! hold few records in most windows, so preallocating every entry would
//! keep their full size resident for nothing. Their entries are allocated
//! at insert; max_entries still bounds them, and a failed insert (-E2BIG,
//! or -ENOMEM) is the counted full-map path. The LRU maps cannot be
//! anything but preallocated.
use agent_common::{
    Argv, ConnKey, ConnValue, Control, ExitKey, ExitValue, FlowClaim, ListenKey, NetScratch, Owner, PamCall,
    PamHandleKey, PamItems, ProcId, ProcKey, ProcValue, Scratch, TaskExe, TrafficValue, ARGV_ENTRIES, COUNTER_COUNT,
    DNS_RING_BYTES, FLOWS_ENTRIES, FLOW_CLAIMS_ENTRIES, LISTENERS_ENTRIES, PAM_CALL_ENTRIES, PAM_COUNTER_COUNT,
    PAM_HANDLE_ENTRIES, PAM_RING_BYTES, PENDING_ENTRIES, ROLLUP_ENTRIES, SOCK_OWNER_ENTRIES, TASK_EXE_ENTRIES,
};
use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf},
};

#[map(name = "PROC_0")]
pub static PROC_0: HashMap<ProcKey, ProcValue> = HashMap::with_max_entries(256, BPF_F_NO_PREALLOC);
#[map(name = "PROC_1")]
pub static PROC_1: HashMap<ProcKey, ProcValue> = HashMap::with_max_entries(256, BPF_F_NO_PREALLOC);
#[map(name = "EXIT_0")]
pub static EXIT_0: HashMap<ExitKey, ExitValue> = HashMap::with_max_entries(256, BPF_F_NO_PREALLOC);
#[map(name = "EXIT_1")]
pub static EXIT_1: HashMap<ExitKey, ExitValue> = HashMap::with_max_entries(256, BPF_F_NO_PREALLOC);

// Kernel rollups: where a new record goes when its staging map above is
// full, under a coarser key (agent-common `maps::PROCR_0`).
#[map(name = "PROCR_0")]
pub static PROCR_0: HashMap<ProcKey, ProcValue> = HashMap::with_max_entries(ROLLUP_ENTRIES, BPF_F_NO_PREALLOC);
#[map(name = "PROCR_1")]
pub static PROCR_1: HashMap<ProcKey, ProcValue> = HashMap::with_max_entries(ROLLUP_ENTRIES, BPF_F_NO_PREALLOC);
#[map(name = "EXITR_0")]
pub static EXITR_0: HashMap<ExitKey, ExitValue> = HashMap::with_max_entries(ROLLUP_ENTRIES, BPF_F_NO_PREALLOC);
#[map(name = "EXITR_1")]
pub static EXITR_1: HashMap<ExitKey, ExitValue> = HashMap::with_max_entries(ROLLUP_ENTRIES, BPF_F_NO_PREALLOC);

#[map(name = "TASK_EXE")]
pub static TASK_EXE: LruHashMap<u32, TaskExe> = LruHashMap::with_max_entries(TASK_EXE_ENTRIES, 0);

#[map(name = "CONTROL")]
pub static CONTROL: Array<Control> = Array::with_max_entries(1, 0);
#[map(name = "COUNTERS")]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(2 * COUNTER_COUNT, 0);
#[map(name = "SCRATCH")]
pub static SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);
/// Never written: the source of `kernel::zero`.
#[map(name = "ZEROES")]
pub static ZEROES: Array<[u64; ZEROES_WORDS]> = Array::with_max_entries(1, 0);
pub const ZEROES_WORDS: usize = 128;

// Network collector (net.rs). CONN and TRAF are sized by the agent at load
// time: CONN to cacheSizeConnectionCreate, TRAF larger (see ebpf.rs).
#[map(name = "CONN_0")]
pub static CONN_0: HashMap<ConnKey, ConnValue> = HashMap::with_max_entries(256, BPF_F_NO_PREALLOC);
#[map(name = "CONN_1")]
pub static CONN_1: HashMap<ConnKey, ConnValue> = HashMap::with_max_entries(256, BPF_F_NO_PREALLOC);
#[map(name = "CONNR_0")]
pub static CONNR_0: HashMap<ConnKey, ConnValue> = HashMap::with_max_entries(ROLLUP_ENTRIES, BPF_F_NO_PREALLOC);
#[map(name = "CONNR_1")]
pub static CONNR_1: HashMap<ConnKey, ConnValue> = HashMap::with_max_entries(ROLLUP_ENTRIES, BPF_F_NO_PREALLOC);
#[map(name = "TRAF_0")]
pub static TRAF_0: HashMap<ConnKey, TrafficValue> = HashMap::with_max_entries(1024, BPF_F_NO_PREALLOC);
#[map(name = "TRAF_1")]
pub static TRAF_1: HashMap<ConnKey, TrafficValue> = HashMap::with_max_entries(1024, BPF_F_NO_PREALLOC);
/// Flow key -> boot ns of its last packet.
#[map(name = "FLOWS")]
pub static FLOWS: LruHashMap<ConnKey, u64> = LruHashMap::with_max_entries(FLOWS_ENTRIES, 0);
#[map(name = "FLOW_CLAIMS")]
pub static FLOW_CLAIMS: LruHashMap<FlowClaim, u8> = LruHashMap::with_max_entries(FLOW_CLAIMS_ENTRIES, 0);
#[map(name = "PENDING")]
pub static PENDING: LruHashMap<u64, Owner> = LruHashMap::with_max_entries(PENDING_ENTRIES, 0);
#[map(name = "LISTENERS")]
pub static LISTENERS: LruHashMap<ListenKey, Owner> = LruHashMap::with_max_entries(LISTENERS_ENTRIES, 0);
#[map(name = "SOCK_OWNER")]
pub static SOCK_OWNER: LruHashMap<u64, Owner> = LruHashMap::with_max_entries(SOCK_OWNER_ENTRIES, 0);
#[map(name = "ARGV")]
pub static ARGV: LruHashMap<ProcId, Argv> = LruHashMap::with_max_entries(ARGV_ENTRIES, 0);
#[map(name = "DNS_EVENTS")]
pub static DNS_EVENTS: RingBuf = RingBuf::with_byte_size(DNS_RING_BYTES, 0);
#[map(name = "NET_SCRATCH")]
pub static NET_SCRATCH: PerCpuArray<NetScratch> = PerCpuArray::with_max_entries(1, 0);

// Login from PAM (pam.rs).
#[map(name = "PAM_HANDLES")]
pub static PAM_HANDLES: LruHashMap<PamHandleKey, PamItems> = LruHashMap::with_max_entries(PAM_HANDLE_ENTRIES, 0);
#[map(name = "PAM_CALLS")]
pub static PAM_CALLS: LruHashMap<u64, PamCall> = LruHashMap::with_max_entries(PAM_CALL_ENTRIES, 0);
#[map(name = "PAM_EVENTS")]
pub static PAM_EVENTS: RingBuf = RingBuf::with_byte_size(PAM_RING_BYTES, 0);
#[map(name = "PAM_COUNTERS")]
pub static PAM_COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(PAM_COUNTER_COUNT, 0);
#[map(name = "PAM_SCRATCH")]
pub static PAM_SCRATCH: PerCpuArray<PamItems> = PerCpuArray::with_max_entries(1, 0);
