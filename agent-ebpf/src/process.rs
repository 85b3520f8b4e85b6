//! Process events: exec and fork (ProcessCreate) and exit (ProcessTerminate).
//!
//! Hooks (formats in /sys/kernel/tracing/events/sched/<name>/format):
//! - `tracepoint/sched/sched_process_exec`: fires in the new image after
//!   credentials are committed; `filename` is `__data_loc char[]`.
//! - `raw_tp/sched_process_fork`: `TP_PROTO(struct task_struct *parent,
//!   struct task_struct *child)`, called in the parent (kernel/fork.c). Raw so
//!   that the child's tgid tells a new process from a new thread.
//! - `tracepoint/sched/sched_process_exit`: fires in the exiting task after
//!   `exit_mm()` (kernel/exit.c), so argv is gone but `exit_code` is set;
//!   `group_dead` marks the last thread of the process.
use agent_common::{
    Control, Counter, ExitValue, ProcKey, ProcValue, TaskExe, EXE_CAP, FLAG_EXEC, FLAG_EXIT, FLAG_EXIT_PER_EVENT,
    FLAG_FORK, FLAG_PROC_PER_EVENT, PROC_KIND_EXEC, PROC_KIND_FORK,
};
use aya_ebpf::{
    bindings::BPF_ANY,
    helpers::{bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_uid_gid, generated as gen},
    macros::{raw_tracepoint, tracepoint},
    programs::{RawTracePointContext, TracePointContext},
    EbpfContext,
};

use crate::{
    kernel::{
        add_hit, add_rollup, boot_ns, control, copy, count, current_task, offsets, parent_tgid, read_field, zero,
        TaskRef,
    },
    maps::{EXITR_0, EXITR_1, EXIT_0, EXIT_1, PROCR_0, PROCR_1, PROC_0, PROC_1, SCRATCH, TASK_EXE},
};

#[tracepoint(category = "sched", name = "sched_process_exec")]
pub fn sched_process_exec(ctx: TracePointContext) -> u32 {
    let _ = try_exec(&ctx);
    0
}

#[raw_tracepoint(tracepoint = "sched_process_fork")]
pub fn sched_process_fork(ctx: RawTracePointContext) -> u32 {
    let _ = try_fork(&ctx);
    0
}

#[tracepoint(category = "sched", name = "sched_process_exit")]
pub fn sched_process_exit(ctx: TracePointContext) -> u32 {
    let _ = try_exit(&ctx);
    0
}

fn try_exec(ctx: &TracePointContext) -> Result<(), i64> {
    let ctl = control().ok_or(0)?;
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    let scratch = unsafe { &mut *SCRATCH.get_ptr_mut(0).ok_or(0)? };

    // The path exec'd, remembered for this process's later fork and exit
    // records, which happen after argv or the filename are out of reach.
    let loc: u32 = unsafe { ctx.read_at(offsets().tp_exec_filename as usize).map_err(|e| e as i64)? };
    let exe = &mut scratch.proc_value.exe;
    let src = unsafe { (ctx.as_ptr() as *const u8).add((loc & 0xffff) as usize) };
    exe[0] = 0;
    unsafe { gen::bpf_probe_read_kernel_str(exe.as_mut_ptr() as *mut _, EXE_CAP as u32, src as *const _) };
    // TaskExe is a repr(C) wrapper of the same array.
    let task_exe: &TaskExe = unsafe { &*(exe.as_ptr() as *const TaskExe) };
    let _ = TASK_EXE.insert(tgid, task_exe, BPF_ANY as u64);

    if ctl.flags & FLAG_EXEC == 0 {
        return Ok(());
    }
    let task = TaskRef::current();
    let ppid = parent_tgid(task);
    record_process(scratch, PROC_KIND_EXEC, task, tgid, ppid, &ctl);
    Ok(())
}

fn try_fork(ctx: &RawTracePointContext) -> Result<(), i64> {
    let ctl = control().ok_or(0)?;
    let off = offsets();
    let child: *const u8 = ctx.arg(1);
    let child_pid: i32 = unsafe { read_field(child, off.task_pid)? };
    let child_tgid: i32 = unsafe { read_field(child, off.task_tgid)? };
    if child_pid != child_tgid {
        return Ok(()); // a new thread, not a new process
    }
    let parent_tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    let scratch = unsafe { &mut *SCRATCH.get_ptr_mut(0).ok_or(0)? };
    // The child runs the parent's image until it execs.
    match unsafe { TASK_EXE.get(parent_tgid) } {
        Some(e) => {
            copy(&mut scratch.proc_value.exe, &e.path);
            let _ = TASK_EXE.insert(child_tgid as u32, e, BPF_ANY as u64);
        }
        None => scratch.proc_value.exe[0] = 0,
    }
    if ctl.flags & FLAG_FORK == 0 {
        return Ok(());
    }
    let task = TaskRef::current();
    record_process(scratch, PROC_KIND_FORK, task, child_tgid as u32, parent_tgid, &ctl);
    Ok(())
}

/// Builds the key from `task`'s argv and uid and adds one hit. `scratch.proc_value.exe`
/// holds the executable already.
#[inline(always)]
fn record_process(scratch: &mut agent_common::Scratch, kind: u8, task: TaskRef, pid: u32, ppid: u32, ctl: &Control) {
    count(ctl, Counter::ProcSeen);
    let key = &mut scratch.proc_key;
    zero(key);
    key.uid = bpf_get_current_uid_gid() as u32;
    key.kind = kind;
    if ctl.flags & FLAG_PROC_PER_EVENT != 0 {
        key.pid = pid;
        key.nonce = boot_ns();
    }
    if read_argv(task, key, ctl.cmdline_max).is_err() {
        count(ctl, Counter::ArgvReadFailed);
    }
    let value = &mut scratch.proc_value as *mut ProcValue;
    let (map, rollups) = if ctl.generation & 1 == 0 { (&PROC_0, &PROCR_0) } else { (&PROC_1, &PROCR_1) };
    let hit_of = |v: *mut ProcValue| unsafe { &mut (*v).hit_count as *mut u64 };
    let staged = add_hit(
        ctl,
        map,
        &scratch.proc_key,
        hit_of,
        || {
            let v = unsafe { &mut *value };
            v.hit_count = 1;
            v.first_seen_ns = boot_ns();
            v.pid = pid;
            v.ppid = ppid;
            v.comm = bpf_get_current_comm().unwrap_or([0; 16]);
            Some(value as *const ProcValue)
        },
        Counter::ProcRaceLost,
    );
    if staged.is_err() {
        // A storm of command lines must not hide a new program: the
        // executable takes argv's place (README, Output). Zeroed first, so
        // the bytes after the path are zero and equal paths are equal keys.
        let key = &mut scratch.proc_key;
        zero(key);
        key.uid = bpf_get_current_uid_gid() as u32;
        key.kind = kind;
        let exe = &scratch.proc_value.exe;
        unsafe {
            gen::bpf_probe_read_kernel_str(key.cmdline.as_mut_ptr() as *mut _, EXE_CAP as u32, exe.as_ptr() as *const _)
        };
        let counters = [Counter::ProcRolledUp, Counter::ProcMapFull, Counter::ProcRaceLost];
        add_rollup(ctl, rollups, &scratch.proc_key, hit_of, value, counters);
    }
}

/// Copies argv (`mm->arg_start..arg_end`, NUL-separated as the process laid
/// it out) into the key, at most `max` bytes.
#[inline(always)]
fn read_argv(task: TaskRef, key: &mut ProcKey, max: u32) -> Result<(), i64> {
    let off = offsets();
    let mm = task.follow(off.task_mm);
    if mm.is_null() {
        return Ok(()); // a kernel thread: no user memory, no argv
    }
    let start: u64 = mm.get(off.mm_arg_start);
    let end: u64 = mm.get(off.mm_arg_end);
    key.cmdline_len = 0;
    let (n, truncated) = crate::kernel::read_argv(&mut key.cmdline, start, end, max)?;
    key.cmdline_len = n;
    key.truncated = truncated as u8;
    Ok(())
}

fn try_exit(ctx: &TracePointContext) -> Result<(), i64> {
    let off = offsets();
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    let last_thread = if off.has_group_dead != 0 {
        unsafe { ctx.read_at::<u8>(off.tp_exit_group_dead as usize).map_err(|e| e as i64)? != 0 }
    } else {
        pid_tgid as u32 == tgid
    };
    if !last_thread {
        return Ok(());
    }
    let ctl = control().ok_or(0)?;
    let scratch = unsafe { &mut *SCRATCH.get_ptr_mut(0).ok_or(0)? };
    let key = &mut scratch.exit_key;
    zero(key);
    let mut exe_is_comm = 0;
    match unsafe { TASK_EXE.get(tgid) } {
        // Up to the NUL only: the bytes after it are whatever an earlier,
        // longer path left in the per-CPU scratch that exec filled, and in
        // a key they would make one executable's exits several records.
        Some(e) => unsafe {
            gen::bpf_probe_read_kernel_str(key.exe.as_mut_ptr() as *mut _, EXE_CAP as u32, e.path.as_ptr() as *const _);
        },
        None => {
            let comm = bpf_get_current_comm().unwrap_or([0; 16]);
            key.exe[..16].copy_from_slice(&comm);
            exe_is_comm = 1;
        }
    }
    let _ = TASK_EXE.remove(tgid);
    if ctl.flags & FLAG_EXIT == 0 {
        return Ok(());
    }
    count(&ctl, Counter::ExitSeen);
    key.exit_code = unsafe { read_field::<i32>(current_task(), off.task_exit_code)? } as u32;
    if ctl.flags & FLAG_EXIT_PER_EVENT != 0 {
        key.pid = tgid;
        key.nonce = boot_ns();
    }
    let (map, rollups) = if ctl.generation & 1 == 0 { (&EXIT_0, &EXITR_0) } else { (&EXIT_1, &EXITR_1) };
    let mut value = ExitValue { hit_count: 1, first_seen_ns: 0, pid: tgid, exe_is_comm };
    let value_ptr = &mut value as *mut ExitValue;
    let hit_of = |v: *mut ExitValue| unsafe { &mut (*v).hit_count as *mut u64 };
    let staged = add_hit(
        &ctl,
        map,
        &scratch.exit_key,
        hit_of,
        || {
            unsafe { (*value_ptr).first_seen_ns = boot_ns() };
            Some(value_ptr as *const ExitValue)
        },
        Counter::ExitRaceLost,
    );
    if staged.is_err() {
        // Per executable and killing signal: exit codes fold, a crash stays apart.
        let key = &mut scratch.exit_key;
        (key.exit_code, key.pid, key.nonce) = (key.exit_code & 0x7f, 0, 0);
        let counters = [Counter::ExitRolledUp, Counter::ExitMapFull, Counter::ExitRaceLost];
        add_rollup(&ctl, rollups, &scratch.exit_key, hit_of, value_ptr, counters);
    }
    Ok(())
}
