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
/// fixed when the object is compiled.
pub const CMDLINE_CAP: usize = 512;
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
}

/// Program names (the Rust function names of the entry points).
pub mod programs {
    pub const PROCESS_EXEC: &str = "sched_process_exec";
    pub const PROCESS_FORK: &str = "sched_process_fork";
    pub const PROCESS_EXIT: &str = "sched_process_exit";
}

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
}
pub const COUNTER_COUNT: u32 = 7;

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
const _: () = assert!(size_of::<ProcKey>() == 24 + CMDLINE_CAP);

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
}
const _: () = assert!(size_of::<KernelOffsets>() == 40);

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
        }
    }
}
