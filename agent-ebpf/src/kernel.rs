//! Helpers shared by the programs: reading the running kernel's structures at
//! offsets found at load time, counters, and the insert-or-add pattern.
use core::mem::size_of;

use agent_common::{Control, Counter, KernelOffsets, CMDLINE_CAP, COUNTER_COUNT, TP_RECORD_LEN};
use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::{bpf_probe_read_kernel, generated as gen},
    maps::HashMap,
    programs::TracePointContext,
    EbpfContext,
};

use crate::maps::{CONTROL, COUNTERS, ZEROES, ZEROES_WORDS};

/// A tracepoint record copied onto the stack with one helper call. Its fields
/// are then plain stack loads at load-time offsets (constants the verifier
/// reads from the frozen .rodata and bounds-checks), instead of one
/// bpf_probe_read_kernel per field: a context pointer cannot be offset by a
/// register, a stack pointer can.
#[repr(C, align(8))]
pub struct TpRecord([u8; TP_RECORD_LEN]);

impl TpRecord {
    /// The record lies at the start of the per-CPU trace buffer (8 KiB), so
    /// copying a fixed TP_RECORD_LEN never reads past that buffer.
    #[inline(always)]
    pub fn read(ctx: &TracePointContext) -> Result<TpRecord, i64> {
        let mut rec = TpRecord([0; TP_RECORD_LEN]);
        let ret = unsafe {
            gen::bpf_probe_read_kernel(rec.0.as_mut_ptr() as *mut _, TP_RECORD_LEN as u32, ctx.as_ptr() as *const _)
        };
        if ret < 0 {
            return Err(ret);
        }
        Ok(rec)
    }

    /// The field at `offset`; the loader checked that it lies within the record.
    #[inline(always)]
    pub fn get<T: Copy>(&self, offset: u32) -> T {
        unsafe { core::ptr::read(self.0.as_ptr().add(offset as usize) as *const T) }
    }
}

/// Filled in by the loader from `/sys/kernel/btf/vmlinux` and tracefs formats.
#[unsafe(no_mangle)]
static KERNEL_OFFSETS: KernelOffsets = KernelOffsets::zeroed();

/// The offsets, read field by field where they are used. The value is
/// patched into .rodata at load time, after the compiler saw only zeros, so
/// the compiler must not see where this points: the pointer itself is read
/// volatile. (A volatile read of the whole struct would copy all of its
/// fields onto the stack at every call, in every program.)
#[inline(always)]
pub fn offsets() -> &'static KernelOffsets {
    let p: *const KernelOffsets = &KERNEL_OFFSETS;
    unsafe { &*core::ptr::read_volatile(&p) }
}

#[inline(always)]
pub fn control() -> Option<Control> {
    CONTROL.get(0).copied()
}

/// Per-CPU counters need no atomics: a tracepoint program runs to completion
/// on one CPU with preemption disabled.
#[inline(always)]
pub fn count(ctl: &Control, counter: Counter) {
    let index = (ctl.generation & 1) * COUNTER_COUNT + counter as u32;
    if let Some(c) = COUNTERS.get_ptr_mut(index) {
        unsafe { *c += 1 };
    }
}

#[inline(always)]
pub fn current_task() -> *const u8 {
    unsafe { gen::bpf_get_current_task() as *const u8 }
}

/// The current task as a BTF-typed pointer (kernel >= 5.11): its fields, and
/// the pointers they hold, are read with plain loads that the verifier checks
/// against the kernel's BTF, instead of one helper call per field. Offsets
/// come from read-only globals, which the verifier treats as constants.
#[inline(always)]
fn current_task_btf() -> *const u8 {
    unsafe { gen::bpf_get_current_task_btf() as *const u8 }
}

/// A `task_struct`, or a structure reached from one through its pointer
/// fields (`mm`, `real_parent`), read in the way the kernel allows: with plain
/// loads through BTF-typed pointers where `bpf_get_current_task_btf` exists
/// (5.11+), else with one `bpf_probe_read_kernel` per field (5.10). The choice
/// is a read-only global, so each kernel's verifier sees one path and drops
/// the other as dead code: 5.10 never checks the helper it lacks.
#[derive(Clone, Copy)]
pub struct TaskRef(*const u8);

impl TaskRef {
    #[inline(always)]
    pub fn current() -> TaskRef {
        TaskRef(if offsets().has_task_btf != 0 { current_task_btf() } else { current_task() })
    }

    #[inline(always)]
    pub fn is_null(self) -> bool {
        self.0.is_null()
    }

    /// The field at `offset`; a fault (a NULL or stale pointer) reads as the
    /// default, as the BTF path's exception table makes it read as zero.
    #[inline(always)]
    pub fn get<T: Copy + Default>(self, offset: u32) -> T {
        if offsets().has_task_btf != 0 {
            unsafe { load(self.0, offset) }
        } else {
            unsafe { read_field(self.0, offset) }.unwrap_or_default()
        }
    }

    /// The structure a pointer field at `offset` points to.
    #[inline(always)]
    pub fn follow(self, offset: u32) -> TaskRef {
        TaskRef(self.get::<u64>(offset) as *const u8)
    }
}

/// The tgid of `task`'s parent; 0 when it has none.
#[inline(always)]
pub fn parent_tgid(task: TaskRef) -> u32 {
    let off = offsets();
    let parent = task.follow(off.task_real_parent);
    if parent.is_null() {
        return 0;
    }
    parent.get::<i32>(off.task_tgid) as u32
}

/// Loads a field of a BTF-typed object (see [`current_task_btf`]). A fault
/// (a NULL or stale pointer) reads as zero: the kernel's exception table
/// covers these loads.
#[inline(always)]
unsafe fn load<T: Copy>(base: *const u8, offset: u32) -> T {
    unsafe { core::ptr::read_volatile(base.add(offset as usize) as *const T) }
}

/// Reads a `T` at `base + offset` in kernel memory.
#[inline(always)]
pub unsafe fn read_field<T>(base: *const u8, offset: u32) -> Result<T, i64> {
    unsafe { bpf_probe_read_kernel(base.add(offset as usize) as *const T).map_err(|e| e as i64) }
}

#[inline(always)]
pub fn boot_ns() -> u64 {
    unsafe { gen::bpf_ktime_get_boot_ns() }
}

/// The staging map had no room for a new key: nothing was counted yet.
pub struct MapFull;

/// Adds one hit to `key`, creating its record from `init` when it is new.
///
/// The first lookup is the common path: most events repeat a key. A new key
/// is inserted with `BPF_NOEXIST`; if another CPU inserted it first we add to
/// theirs. The hit count is in `init` already (1), so a fresh insert is done.
/// Returns `Err(MapFull)` when the map has no room: the caller tries its
/// rollup map ([`add_rollup`]), which counts the event either way.
#[inline(always)]
pub fn add_hit<K, V>(
    ctl: &Control,
    map: &HashMap<K, V>,
    key: &K,
    hit_of: impl Fn(*mut V) -> *mut u64,
    init: impl FnOnce() -> Option<*const V>,
    race: Counter,
) -> Result<(), MapFull> {
    if let Some(v) = map.get_ptr_mut(key) {
        atomic_inc(hit_of(v));
        return Ok(());
    }
    let Some(value) = init() else { return Ok(()) };
    match map.insert(key, unsafe { &*value }, BPF_NOEXIST as u64) {
        Ok(()) => Ok(()),
        // -EEXIST: inserted by another CPU since our lookup.
        Err(-17) => {
            match map.get_ptr_mut(key) {
                Some(v) => atomic_inc(hit_of(v)),
                None => count(ctl, race),
            }
            Ok(())
        }
        // -E2BIG (map full) or -ENOMEM.
        Err(_) => Err(MapFull),
    }
}

/// The staging map was full: adds the hit to the coarser `key` of the
/// rollup map, its new record being `value` (already filled for the
/// staging insert). Counts `rolled`, or `full` when the rollup map is full
/// too: then the event has no record.
#[inline(always)]
pub fn add_rollup<K, V>(
    ctl: &Control,
    map: &HashMap<K, V>,
    key: &K,
    hit_of: impl Fn(*mut V) -> *mut u64,
    value: *const V,
    [rolled, full, race]: [Counter; 3],
) {
    match add_hit(ctl, map, key, hit_of, || Some(value), race) {
        Ok(()) => count(ctl, rolled),
        Err(MapFull) => count(ctl, full),
    }
}

#[inline(always)]
fn atomic_inc(p: *mut u64) {
    atomic_add(p, 1);
}

/// Race-safe `*p += n` on a value shared by every CPU.
#[inline(always)]
pub fn atomic_add(p: *mut u64, n: u64) {
    // AtomicU64 does not lower on the BPF target; the intrinsic becomes XADD.
    unsafe { core::intrinsics::atomic_xadd::<u64, u64, { core::intrinsics::AtomicOrdering::Relaxed }>(p, n) };
}

/// Sets `*dst` to all zero bytes. The BPF target has no memset: rustc falls
/// back to a byte-at-a-time loop, about 2000 instructions for a process key.
/// Small values get unrolled word stores; large ones one helper call copying
/// from a map nobody writes.
#[inline(always)]
pub fn zero<T>(dst: &mut T) {
    const {
        assert!(
            size_of::<T>().is_multiple_of(8) && core::mem::align_of::<T>() >= 8 && size_of::<T>() <= ZEROES_WORDS * 8
        )
    };
    let words = dst as *mut T as *mut u64;
    if size_of::<T>() <= 64 {
        for i in 0..size_of::<T>() / 8 {
            unsafe { core::ptr::write_volatile(words.add(i), 0) };
        }
    } else if let Some(z) = ZEROES.get_ptr(0) {
        unsafe { gen::bpf_probe_read_kernel(words as *mut _, size_of::<T>() as u32, z as *const _) };
    }
}

/// `*dst = *src` in one helper call, for the same reason as [`zero`].
#[inline(always)]
pub fn copy<T>(dst: &mut T, src: &T) {
    unsafe { gen::bpf_probe_read_kernel(dst as *mut T as *mut _, size_of::<T>() as u32, src as *const T as *const _) };
}

/// Copies argv, the user memory `start..end` of the current process
/// (`mm->arg_start..arg_end`, NUL-separated as the process laid it out),
/// into `dst`, at most `max` bytes (and never more than [`CMDLINE_CAP`]).
/// Returns the bytes copied and whether argv was longer.
#[inline(always)]
pub fn read_argv(dst: &mut [u8; CMDLINE_CAP], start: u64, end: u64, max: u32) -> Result<(u32, bool), i64> {
    let len = end.saturating_sub(start);
    let max = if max as usize > CMDLINE_CAP { CMDLINE_CAP as u64 } else { max as u64 };
    let n = if len > max { max } else { len };
    // Tell the verifier the bound it cannot infer through the branches above:
    // `n <= max` is a comparison of two registers, which the 6.1 verifier
    // does not narrow `n` from (6.12's does). LLVM proves the constant clamp
    // below redundant and drops it, unless the volatile read hides `n` from it.
    let mut n = unsafe { core::ptr::read_volatile(&n) };
    if n > CMDLINE_CAP as u64 {
        n = CMDLINE_CAP as u64;
    }
    let ret = unsafe { gen::bpf_probe_read_user(dst.as_mut_ptr() as *mut _, n as u32, start as *const _) };
    if ret < 0 {
        return Err(ret);
    }
    Ok((n as u32, len > max))
}
