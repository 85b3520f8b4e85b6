//! `hitcount check`: what will and will not work on this kernel, and the fix.
use std::fmt;

use agent_common::programs;

use crate::{btf::Btf, collectors::login, drain::Quiesce, ebpf, hostfs::HostFs, kernel_hooks, tracefs};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Ok,
    /// Works, in a degraded way.
    Warn,
    Fail,
}

#[derive(Debug, Clone)]
pub struct Check {
    pub status: Status,
    pub what: String,
    /// What was found, or the fix.
    pub detail: String,
}

impl fmt::Display for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let tag = match self.status {
            Status::Ok => "ok  ",
            Status::Warn => "warn",
            Status::Fail => "FAIL",
        };
        write!(f, "{tag}  {:<34} {}", self.what, self.detail)
    }
}

fn check(status: Status, what: impl Into<String>, detail: impl Into<String>) -> Check {
    Check { status, what: what.into(), detail: detail.into() }
}

const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// Effective capabilities of this process, from /proc/self/status.
pub fn effective_caps() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| l.strip_prefix("CapEff:")).and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .unwrap_or(0)
}

/// `None` when the agent may load programs; otherwise what is missing.
pub fn missing_capabilities(caps: u64) -> Option<String> {
    let has = |c: u32| caps & (1 << c) != 0;
    // CAP_NET_ADMIN: the kernel refuses to load cgroup (network) programs without it.
    if has(CAP_SYS_ADMIN) || (has(CAP_BPF) && has(CAP_PERFMON) && has(CAP_NET_ADMIN)) {
        return None;
    }
    Some(
        "hitcount needs root, or the capabilities CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN (CAP_SYS_ADMIN on kernels \
         before 5.8); run it with sudo, or grant them: setcap cap_bpf,cap_perfmon,cap_net_admin+ep hitcount"
            .to_string(),
    )
}

/// Runs every check; loading and attaching the real programs is the last.
pub fn run_checks() -> Vec<Check> {
    let mut out = Vec::new();
    let caps_missing = missing_capabilities(effective_caps());
    out.push(match &caps_missing {
        None => check(Status::Ok, "privileges", "can load BPF programs"),
        Some(why) => check(Status::Fail, "privileges", why.clone()),
    });

    if ebpf::charges_memlock() {
        out.push(match ebpf::raise_memlock_limit() {
            Ok(()) => {
                check(Status::Ok, "memlock limit", "raised to unlimited (kernels before 5.11 charge BPF maps to it)")
            }
            Err(e) => check(
                Status::Warn,
                "memlock limit",
                format!(
                    "cannot raise RLIMIT_MEMLOCK ({e}), which kernels before 5.11 charge BPF maps to: grant \
                     CAP_SYS_RESOURCE or raise it (ulimit -l, LimitMEMLOCK=)"
                ),
            ),
        });
    }
    let btf = Btf::from_sys_fs();
    out.push(match &btf {
        Ok(_) => check(Status::Ok, "kernel BTF", "/sys/kernel/btf/vmlinux"),
        Err(e) => check(Status::Fail, "kernel BTF", format!("{e}; needs a kernel built with CONFIG_DEBUG_INFO_BTF=y")),
    });
    out.push(match tracefs::root() {
        Ok(p) => check(Status::Ok, "tracefs", p.display().to_string()),
        Err(e) => check(Status::Fail, "tracefs", e.to_string()),
    });
    for probe in ebpf::PROBES {
        let (what, cat, name) = match probe.hook {
            ebpf::Hook::Tracepoint { category, name } => (format!("tracepoint {category}/{name}"), category, name),
            ebpf::Hook::RawTracepoint { name } => (format!("raw tracepoint {name}"), "sched", name),
            ebpf::Hook::CgroupSkb { .. } | ebpf::Hook::CgroupSockCreate => continue,
        };
        let optional = matches!(probe.program, programs::TCP_SEND | programs::TCP_RECV);
        out.push(match tracefs::format(cat, name) {
            Ok(_) => check(Status::Ok, what, format!("for {}", probe.program)),
            Err(e) if optional => check(Status::Warn, what, format!("{e}; TCP bytes are counted per packet")),
            Err(e) => check(Status::Fail, what, e.to_string()),
        });
    }
    let offsets = btf.as_ref().ok().map(ebpf::kernel_offsets);
    match &offsets {
        Some(Ok(o)) => {
            out.push(check(
                Status::Ok,
                "structure offsets",
                format!(
                    "task_struct.mm={} .real_parent={} .tgid={} .pid={} .exit_code={}, mm_struct.arg_start={} .arg_end={}",
                    o.task_mm, o.task_real_parent, o.task_tgid, o.task_pid, o.task_exit_code, o.mm_arg_start, o.mm_arg_end
                ),
            ));
            out.push(check(
                Status::Ok,
                "network offsets",
                format!(
                    "sock_common.skc_net.net={} net.ns.inum={} task_struct.cred={} .comm={} cred.uid={}",
                    o.sk_net, o.net_inum, o.task_cred, o.task_comm, o.cred_uid
                ),
            ));
            out.push(check(
                Status::Ok,
                "TCP connections and direction",
                "sock/inet_sock_set_state: SYN_SENT exits are outbound, SYN_RECV->ESTABLISHED inbound",
            ));
            out.push(if o.has_task_btf != 0 {
                check(Status::Ok, "task fields", "bpf_get_current_task_btf: plain loads checked against BTF")
            } else {
                check(
                    Status::Ok,
                    "task fields",
                    "one bpf_probe_read_kernel each (no bpf_get_current_task_btf: Linux < 5.11)",
                )
            });
            out.push(if o.has_group_dead != 0 {
                check(Status::Ok, "exit: last thread detection", "sched_process_exit.group_dead")
            } else {
                check(
                    Status::Warn,
                    "exit: last thread detection",
                    "no group_dead field (kernel < 6.15): using thread group leader exit",
                )
            });
        }
        Some(Err(e)) => out.push(check(Status::Fail, "structure offsets", e.to_string())),
        None => out.push(check(Status::Fail, "structure offsets", "needs kernel BTF")),
    }
    // Not used by any collector: said so that extensions know what is there.
    if let Ok(btf) = &btf {
        let hooks = [
            ("kprobes", kernel_hooks::kprobes()),
            ("fentry", kernel_hooks::fentry(btf)),
            ("BPF LSM", kernel_hooks::bpf_lsm(btf)),
        ];
        for (name, probe) in hooks {
            out.push(match probe {
                Ok(how) => check(Status::Ok, format!("{name} (not needed)"), format!("available: {how}")),
                Err(why) => check(Status::Ok, format!("{name} (not needed)"), format!("unavailable: {why}")),
            });
        }
    }
    let cgroup = ebpf::cgroup2_root();
    out.push(match &cgroup {
        Some(p) => check(
            Status::Ok,
            "network packets: cgroup_skb",
            format!(
                "cgroup v2 root {}: cgroup_skb ingress/egress see new UDP/ICMP flows and their bytes, DNS \
                 answers and first payload bytes; cgroup/sock_create names UDP/ICMP socket owners",
                p.display()
            ),
        ),
        None => check(
            Status::Warn,
            "network packets: cgroup_skb",
            "no cgroup v2 mount: no UDP, ICMP, DNS or application protocol from payload; mount one: \
             mount -t cgroup2 none /sys/fs/cgroup/unified",
        ),
    });
    if let Some(Ok(o)) = &offsets {
        let tcp = ebpf::TcpBytes::select(ebpf::TcpBytesChoice::Auto, o.has_sock_length != 0, cgroup.is_some());
        out.push(match tcp {
            Ok(t @ ebpf::TcpBytes::Calls) => check(Status::Ok, "TCP bytes", t.describe()),
            Ok(t @ ebpf::TcpBytes::Packets) => {
                check(Status::Ok, "TCP bytes", format!("{} (no sock/sock_send_length: Linux < 6.3)", t.describe()))
            }
            Ok(t) => check(Status::Warn, "TCP bytes", t.describe()),
            Err(e) => check(Status::Fail, "TCP bytes", e),
        });
    }
    out.push(match Quiesce::detect() {
        Quiesce::Membarrier => check(Status::Ok, "lossless drain", "membarrier(MEMBARRIER_CMD_GLOBAL)"),
        Quiesce::Sleep(d) => check(
            Status::Warn,
            "lossless drain",
            format!("membarrier GLOBAL unavailable (CONFIG_MEMBARRIER off or nohz_full): sleeping {d:?} per drain"),
        ),
    });
    // Login's sources read host files: a missing one costs those events, not the agent.
    for (source, works, detail) in login::source_checks(&HostFs::new("/")) {
        let status = if works { Status::Ok } else { Status::Warn };
        out.push(check(status, format!("Login source {}", source.name()), detail));
    }
    let can_load = caps_missing.is_none();
    out.push(match (offsets, can_load) {
        (Some(Ok(o)), true) => match load_and_attach(&o) {
            Ok((n, libpam)) => check(
                Status::Ok,
                "load and attach programs",
                format!("{n} programs verified and attached; PAM uprobes: {libpam}"),
            ),
            Err(e) => check(Status::Fail, "load and attach programs", e.to_string()),
        },
        _ => check(Status::Fail, "load and attach programs", "skipped: fix the failures above first"),
    });
    out
}

/// Loads and attaches every program; returns how many attached and what
/// became of the PAM uprobes.
fn load_and_attach(o: &agent_common::KernelOffsets) -> Result<(usize, String), ebpf::LoadError> {
    let e = ebpf::load(o, ebpf::MapSizes { process_create: 16, process_terminate: 16, connection_create: 16 })?;
    // Programs start with a zeroed control block: attached, they record nothing.
    let mut programs = ebpf::Programs::new(e, o, ebpf::TcpBytesChoice::Auto)?;
    programs.set_attached(|_| true)?;
    // The PAM programs record into their ring for as long as this check runs; nobody reads it.
    let failed = programs.sync_libpam(&login::pam::find_libraries(&HostFs::new("/")));
    let attached = programs.libpam();
    let mut libpam = match attached.len() {
        0 => "none attached".to_string(),
        _ => format!("attached to {}", attached.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")),
    };
    for (path, e) in failed {
        libpam.push_str(&format!("; {} refused: {e}", path.display()));
    }
    Ok((ebpf::PROBES.iter().filter(|p| programs.is_attached(p.program)).count(), libpam))
    // Dropping `programs` detaches and unloads.
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capabilities() {
        assert!(missing_capabilities(0).is_some());
        assert!(missing_capabilities(1 << CAP_SYS_ADMIN).is_none());
        assert!(missing_capabilities(1 << CAP_BPF).is_some());
        assert!(missing_capabilities((1 << CAP_BPF) | (1 << CAP_PERFMON)).is_some(), "cgroup programs need NET_ADMIN");
        assert!(missing_capabilities((1 << CAP_BPF) | (1 << CAP_PERFMON) | (1 << CAP_NET_ADMIN)).is_none());
        assert!(missing_capabilities(0).unwrap().contains("CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN"));
    }

    #[test]
    fn check_lines_are_readable() {
        let c = check(Status::Fail, "kernel BTF", "missing");
        assert_eq!(c.to_string(), format!("FAIL  {:<34} missing", "kernel BTF"));
    }
}
