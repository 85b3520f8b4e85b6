//! Login events from PAM: uprobes on the host's libpam (Linux-PAM,
//! libpam/pam_start.c, pam_item.c, pam_auth.c, pam_account.c,
//! pam_session.c, pam_end.c). The application's own calls say who logs in
//! where, through which service, and whether PAM let them in:
//! - `int pam_start(const char *service, const char *user, const struct
//!   pam_conv *conv, pam_handle_t **pamh)`: the handle is written through
//!   `pamh`, so it is read at the return;
//! - `int pam_set_item(pam_handle_t *pamh, int type, const void *item)`:
//!   PAM_SERVICE, PAM_USER, PAM_TTY, PAM_RHOST are kept; nothing else is
//!   read (PAM_AUTHTOK is the password);
//! - `int pam_authenticate(pam_handle_t *pamh, int flags)` and
//!   `pam_acct_mgmt`: a failure at the return is a LoginFailed;
//! - `pam_open_session`: success at the return is a Login;
//! - `pam_close_session`: a Logout, at the entry;
//! - `pam_end`: the handle is gone.
//!
//! Items are kept per handle in PAM_HANDLES, keyed by (tgid, handle
//! address). A process that forked after pam_start (OpenSSH's
//! keyboard-interactive "thread" is a child process) calls PAM on its copy
//! of the parent's handle: a handle unknown for the caller is looked up
//! under its parent.
use agent_common::{
    PamCall, PamCounter, PamEvent, PamHandleKey, PamItems, PAM_CONV_AGAIN, PAM_EVENT_NO_ITEMS, PAM_INCOMPLETE,
    PAM_NEW_AUTHTOK_REQD, PAM_OP_ACCT_MGMT, PAM_OP_AUTHENTICATE, PAM_OP_CLOSE_SESSION, PAM_OP_OPEN_SESSION,
    PAM_OP_START, PAM_RHOST, PAM_RHOST_CAP, PAM_SERVICE, PAM_SERVICE_CAP, PAM_SUCCESS, PAM_TTY, PAM_TTY_CAP, PAM_USER,
    PAM_USER_CAP,
};
use aya_ebpf::{
    bindings::BPF_ANY,
    helpers::{bpf_get_current_pid_tgid, bpf_probe_read_user, generated as gen},
    macros::{uprobe, uretprobe},
    programs::{ProbeContext, RetProbeContext},
};

use crate::{
    kernel::{atomic_add, boot_ns, copy, parent_tgid, zero, TaskRef},
    maps::{PAM_CALLS, PAM_COUNTERS, PAM_EVENTS, PAM_HANDLES, PAM_SCRATCH},
};

#[uprobe]
pub fn pam_start(ctx: ProbeContext) -> u32 {
    let (Some(service), Some(user), Some(out)) = (ctx.arg::<u64>(0), ctx.arg::<u64>(1), ctx.arg::<u64>(3)) else {
        return 0;
    };
    begin(PamCall { op: PAM_OP_START, _pad: 0, handle: out, service, user });
    0
}

#[uretprobe]
pub fn pam_start_ret(ctx: RetProbeContext) -> u32 {
    let _ = try_start_ret(ctx.ret::<i32>());
    0
}

fn try_start_ret(ret: i32) -> Result<(), i64> {
    let call = finish(PAM_OP_START).ok_or(0)?;
    if ret != PAM_SUCCESS {
        return Ok(());
    }
    let handle: u64 = unsafe { bpf_probe_read_user(call.handle as *const u64).map_err(|e| e as i64)? };
    let items = unsafe { &mut *PAM_SCRATCH.get_ptr_mut(0).ok_or(0)? };
    zero(items);
    read_str(items.service.as_mut_ptr(), PAM_SERVICE_CAP, call.service);
    read_str(items.user.as_mut_ptr(), PAM_USER_CAP, call.user);
    let key = PamHandleKey { tgid: tgid(), _pad: 0, handle };
    if PAM_HANDLES.insert(key, items, BPF_ANY as u64).is_err() {
        bump(PamCounter::HandlesFull);
    }
    Ok(())
}

#[uprobe]
pub fn pam_set_item(ctx: ProbeContext) -> u32 {
    let (Some(handle), Some(kind), Some(item)) = (ctx.arg::<u64>(0), ctx.arg::<u32>(1), ctx.arg::<u64>(2)) else {
        return 0;
    };
    let _ = try_set_item(handle, kind, item);
    0
}

fn try_set_item(handle: u64, kind: u32, item: u64) -> Result<(), i64> {
    // Decided before anything is looked up: no other item is ever read.
    if !matches!(kind, PAM_SERVICE | PAM_USER | PAM_TTY | PAM_RHOST) {
        return Ok(());
    }
    let items = match items_of(handle) {
        Some(i) => i,
        None => {
            // A handle made before the uprobes were attached: what is set
            // from now on is still worth having.
            let key = PamHandleKey { tgid: tgid(), _pad: 0, handle };
            let fresh = unsafe { &mut *PAM_SCRATCH.get_ptr_mut(0).ok_or(0)? };
            zero(fresh);
            if PAM_HANDLES.insert(key, fresh, BPF_ANY as u64).is_err() {
                bump(PamCounter::HandlesFull);
                return Ok(());
            }
            PAM_HANDLES.get_ptr_mut(key).ok_or(0)?
        }
    };
    let items = unsafe { &mut *items };
    match kind {
        PAM_SERVICE => read_str(items.service.as_mut_ptr(), PAM_SERVICE_CAP, item),
        PAM_USER => read_str(items.user.as_mut_ptr(), PAM_USER_CAP, item),
        PAM_TTY => read_str(items.tty.as_mut_ptr(), PAM_TTY_CAP, item),
        _ => read_str(items.rhost.as_mut_ptr(), PAM_RHOST_CAP, item),
    }
    Ok(())
}

#[uprobe]
pub fn pam_authenticate(ctx: ProbeContext) -> u32 {
    enter(&ctx, PAM_OP_AUTHENTICATE);
    0
}

#[uretprobe]
pub fn pam_authenticate_ret(ctx: RetProbeContext) -> u32 {
    verdict(PAM_OP_AUTHENTICATE, ctx.ret::<i32>());
    0
}

#[uprobe]
pub fn pam_acct_mgmt(ctx: ProbeContext) -> u32 {
    enter(&ctx, PAM_OP_ACCT_MGMT);
    0
}

#[uretprobe]
pub fn pam_acct_mgmt_ret(ctx: RetProbeContext) -> u32 {
    verdict(PAM_OP_ACCT_MGMT, ctx.ret::<i32>());
    0
}

#[uprobe]
pub fn pam_open_session(ctx: ProbeContext) -> u32 {
    enter(&ctx, PAM_OP_OPEN_SESSION);
    0
}

#[uretprobe]
pub fn pam_open_session_ret(ctx: RetProbeContext) -> u32 {
    verdict(PAM_OP_OPEN_SESSION, ctx.ret::<i32>());
    0
}

#[uprobe]
pub fn pam_close_session(ctx: ProbeContext) -> u32 {
    if let Some(handle) = ctx.arg::<u64>(0) {
        emit(PAM_OP_CLOSE_SESSION, 0, handle);
    }
    0
}

#[uprobe]
pub fn pam_end(ctx: ProbeContext) -> u32 {
    if let Some(handle) = ctx.arg::<u64>(0) {
        // Only the caller's own entry: a child ending its copy of the
        // parent's handle (su's shell child does) leaves the parent's.
        let _ = PAM_HANDLES.remove(PamHandleKey { tgid: tgid(), _pad: 0, handle });
    }
    0
}

#[inline(always)]
fn tgid() -> u32 {
    (bpf_get_current_pid_tgid() >> 32) as u32
}

/// Remembers a call until its return, per thread.
#[inline(always)]
fn begin(call: PamCall) {
    if PAM_CALLS.insert(bpf_get_current_pid_tgid(), call, BPF_ANY as u64).is_err() {
        bump(PamCounter::CallsFull);
    }
}

#[inline(always)]
fn enter(ctx: &ProbeContext, op: u32) {
    if let Some(handle) = ctx.arg::<u64>(0) {
        begin(PamCall { op, _pad: 0, handle, service: 0, user: 0 });
    }
}

/// The call this thread began, if it is `op`; removed either way.
#[inline(always)]
fn finish(op: u32) -> Option<PamCall> {
    let id = bpf_get_current_pid_tgid();
    let call = unsafe { PAM_CALLS.get(id) }.copied();
    let _ = PAM_CALLS.remove(id);
    call.filter(|c| c.op == op)
}

/// At a return: a session opened is a Login, a refused check a LoginFailed.
#[inline(always)]
fn verdict(op: u32, ret: i32) {
    let Some(call) = finish(op) else { return };
    let report = match op {
        PAM_OP_OPEN_SESSION => ret == PAM_SUCCESS,
        // No verdict yet, or a verdict that lets the login go on.
        _ => !matches!(ret, PAM_SUCCESS | PAM_CONV_AGAIN | PAM_INCOMPLETE | PAM_NEW_AUTHTOK_REQD),
    };
    if report {
        emit(op, ret, call.handle);
    }
}

/// The items of `handle` for the current process, or its parent's copy.
#[inline(always)]
fn items_of(handle: u64) -> Option<*mut PamItems> {
    let own = PamHandleKey { tgid: tgid(), _pad: 0, handle };
    if let Some(p) = PAM_HANDLES.get_ptr_mut(own) {
        return Some(p);
    }
    let parent = PamHandleKey { tgid: parent_tgid(TaskRef::current()), _pad: 0, handle };
    PAM_HANDLES.get_ptr_mut(parent)
}

#[inline(always)]
fn emit(op: u32, ret: i32, handle: u64) {
    let Some(mut entry) = PAM_EVENTS.reserve::<PamEvent>(0) else {
        bump(PamCounter::RingFull);
        return;
    };
    let ev = unsafe { &mut *entry.as_mut_ptr() };
    ev.ts_ns = boot_ns();
    ev.tgid = tgid();
    ev.op = op;
    ev.ret = ret;
    match items_of(handle) {
        Some(items) => {
            ev.flags = 0;
            copy(&mut ev.items, unsafe { &*items });
        }
        None => {
            ev.flags = PAM_EVENT_NO_ITEMS;
            zero(&mut ev.items);
        }
    }
    entry.submit(0);
}

/// Copies the C string at user address `src` into `dst` (`cap` bytes, NUL
/// included); a NULL or unreadable string leaves it empty.
#[inline(always)]
fn read_str(dst: *mut u8, cap: usize, src: u64) {
    unsafe {
        *dst = 0;
        if src != 0 {
            gen::bpf_probe_read_user_str(dst as *mut _, cap as u32, src as *const _);
        }
    }
}

#[inline(always)]
fn bump(counter: PamCounter) {
    if let Some(c) = PAM_COUNTERS.get_ptr_mut(counter as u32) {
        atomic_add(c, 1);
    }
}
