//! Whether this kernel has the hooks Hitcount does not use: kprobes, fentry
//! and BPF LSM. Every collector runs on tracepoints, uprobes and cgroup
//! programs (README, Required kernel); `hitcount check` reports these so
//! that a user knows what an extension could build on. Each is probed the
//! way a program would use it, not guessed from the version: a kprobe event
//! is created on the kprobe PMU, and a two-instruction fentry and LSM program
//! is loaded and attached, then closed at once.
use std::{
    ffi::CString,
    os::fd::{FromRawFd, OwnedFd},
};

use crate::btf::Btf;

/// A function every kernel since 2.6 has, to attach the probes to.
const PROBED_FUNCTION: &str = "vfs_read";
/// An LSM hook every BPF LSM kernel (5.7+) has.
const PROBED_LSM_HOOK: &str = "bpf_lsm_file_open";

/// What a probe found: available, with how, or missing, with why.
pub type Probe = Result<String, String>;

pub fn kprobes() -> Probe {
    let pmu = "/sys/bus/event_source/devices/kprobe/type";
    let ty = std::fs::read_to_string(pmu)
        .map_err(|_| format!("no kprobe PMU ({pmu}): the kernel is built without CONFIG_KPROBES"))?;
    let ty: u32 = ty.trim().parse().map_err(|_| format!("{pmu}: not a number: {}", ty.trim()))?;
    let func = CString::new(PROBED_FUNCTION).expect("no NUL");
    // struct perf_event_attr, PERF_ATTR_SIZE_VER1 (72 bytes): type, size,
    // then at byte 40 the flags (bit 0: disabled, so it never fires), at 56
    // config1 (kprobe_func) and at 64 config2 (probe_offset).
    let mut attr = [0u64; 9];
    attr[0] = u64::from(ty) | (72u64 << 32);
    attr[5] = 1;
    attr[7] = func.as_ptr() as u64;
    // SAFETY: attr is a valid perf_event_attr of the size it states; func outlives the call.
    let fd = unsafe { libc::syscall(libc::SYS_perf_event_open, attr.as_ptr(), -1, 0, -1, PERF_FLAG_FD_CLOEXEC) };
    owned(fd)
        .map(|_| format!("kprobe on {PROBED_FUNCTION} created (kprobe PMU type {ty})"))
        .map_err(|e| format!("the kernel refused a kprobe on {PROBED_FUNCTION}: {e}"))
}

pub fn fentry(btf: &Btf) -> Probe {
    attach_tracing(btf, PROBED_FUNCTION, BPF_PROG_TYPE_TRACING, BPF_TRACE_FENTRY)
        .map(|()| format!("fentry program on {PROBED_FUNCTION} loaded and attached"))
}

pub fn bpf_lsm(btf: &Btf) -> Probe {
    attach_tracing(btf, PROBED_LSM_HOOK, BPF_PROG_TYPE_LSM, BPF_LSM_MAC)?;
    // Attaching works whenever CONFIG_BPF_LSM is set; the hooks run only
    // when "bpf" is among the active LSMs (lsm= on the command line).
    Ok(match std::fs::read_to_string("/sys/kernel/security/lsm") {
        Ok(list) if list.trim().split(',').any(|l| l == "bpf") => {
            format!("LSM program on {PROBED_LSM_HOOK} attached; active LSMs: {}", list.trim())
        }
        Ok(list) => format!(
            "LSM program on {PROBED_LSM_HOOK} attached, but \"bpf\" is not an active LSM ({}): its hooks would \
             not run without lsm=...,bpf",
            list.trim()
        ),
        Err(_) => format!(
            "LSM program on {PROBED_LSM_HOOK} attached; whether \"bpf\" is an active LSM is unknown \
             (securityfs is not mounted at /sys/kernel/security)"
        ),
    })
}

/// include/uapi/linux/perf_event.h
const PERF_FLAG_FD_CLOEXEC: libc::c_ulong = 8;
/// include/uapi/linux/bpf.h: commands, program and attach types.
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_RAW_TRACEPOINT_OPEN: libc::c_long = 17;
const BPF_PROG_TYPE_TRACING: u32 = 26;
const BPF_PROG_TYPE_LSM: u32 = 29;
const BPF_TRACE_FENTRY: u32 = 24;
const BPF_LSM_MAC: u32 = 27;

/// Loads `r0 = 0; exit` as a BTF-attached program of `prog_type` on the
/// kernel function `function`, and attaches it through
/// BPF_RAW_TRACEPOINT_OPEN; both fds close on return, which detaches it.
fn attach_tracing(btf: &Btf, function: &str, prog_type: u32, attach_type: u32) -> Result<(), String> {
    let id = btf.func_id(function).ok_or_else(|| format!("the kernel's BTF has no function {function}"))?;
    // mov64 r0, 0; exit
    let insns: [u64; 2] = [0xb7, 0x95];
    let license = c"GPL";
    // union bpf_attr for BPF_PROG_LOAD, as u32 words: prog_type, insn_cnt,
    // insns (byte 8), license (16), expected_attach_type at 68,
    // attach_btf_id at 108. 120 bytes, zero past what is set.
    let mut attr = [0u32; 30];
    attr[0] = prog_type;
    attr[1] = insns.len() as u32;
    set_u64(&mut attr, 8, insns.as_ptr() as u64);
    set_u64(&mut attr, 16, license.as_ptr() as u64);
    attr[68 / 4] = attach_type;
    attr[108 / 4] = id;
    let prog = owned(bpf(BPF_PROG_LOAD, &attr)).map_err(|e| format!("the kernel refused the program: {e}"))?;
    let mut open = [0u32; 4];
    open[2] = std::os::fd::AsRawFd::as_raw_fd(&prog) as u32;
    owned(bpf(BPF_RAW_TRACEPOINT_OPEN, &open))
        .map_err(|e| format!("loaded, but the kernel refused to attach it: {e}"))?;
    Ok(())
}

fn set_u64(attr: &mut [u32], byte: usize, v: u64) {
    attr[byte / 4] = v as u32;
    attr[byte / 4 + 1] = (v >> 32) as u32;
}

fn bpf(cmd: libc::c_long, attr: &[u32]) -> libc::c_long {
    // SAFETY: attr is a zero-padded bpf_attr of the size passed; the pointers in it outlive the call.
    unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_ptr(), std::mem::size_of_val(attr)) }
}

fn owned(ret: libc::c_long) -> Result<OwnedFd, std::io::Error> {
    if ret < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the syscall returned a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(ret as i32) })
}
