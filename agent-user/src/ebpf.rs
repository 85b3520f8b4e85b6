//! Loading the kernel programs: offsets for this kernel, map sizes, the probe
//! table and the attach loop.
use agent_common::{maps, programs, KernelOffsets, OFFSETS_GLOBAL};
use aya::{
    programs::{RawTracePoint, TracePoint},
    Ebpf, EbpfLoader,
};

use crate::{btf::Btf, tracefs};

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
    #[error("loading the eBPF object failed: {0}; run as root, or with CAP_BPF and CAP_PERFMON")]
    Object(#[from] aya::EbpfError),
    #[error("program {program}: {action} failed: {source}")]
    Program {
        program: &'static str,
        action: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
}

/// Where a program attaches. Kernel signatures are pinned in the program's
/// doc comments in agent-ebpf.
#[derive(Debug, Clone, Copy)]
pub enum Hook {
    Tracepoint { category: &'static str, name: &'static str },
    RawTracepoint { name: &'static str },
}

#[derive(Debug, Clone, Copy)]
pub struct Probe {
    pub program: &'static str,
    pub hook: Hook,
}

/// Every program and its hook: the attach loop and `hitcount check` walk this.
pub const PROBES: &[Probe] = &[
    Probe { program: programs::PROCESS_EXEC, hook: Hook::Tracepoint { category: "sched", name: "sched_process_exec" } },
    Probe { program: programs::PROCESS_FORK, hook: Hook::RawTracepoint { name: "sched_process_fork" } },
    Probe { program: programs::PROCESS_EXIT, hook: Hook::Tracepoint { category: "sched", name: "sched_process_exit" } },
];

/// Map sizes chosen at load time: distinct records the kernel holds between
/// two drains, per generation.
#[derive(Debug, Clone, Copy)]
pub struct MapSizes {
    pub process_create: u32,
    pub process_terminate: u32,
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
}

/// Reads the offsets the programs need from this kernel's BTF and tracefs.
pub fn kernel_offsets(btf: &Btf) -> Result<KernelOffsets, LoadError> {
    let task = |m| btf.member_offset("task_struct", m);
    let mm = |m| btf.member_offset("mm_struct", m);
    let exec = tracefs::format("sched", "sched_process_exec")?;
    let exit = tracefs::format("sched", "sched_process_exit")?;
    let field = |fields: &std::collections::HashMap<String, tracefs::Field>, tp: &str, name: &str| {
        fields
            .get(name)
            .map(|f| f.offset)
            .ok_or_else(|| tracefs::TracefsError::NoField { tracepoint: tp.to_string(), field: name.to_string() })
    };
    // group_dead joined sched_process_exit in 6.15; older kernels fall back
    // to "the exiting thread is the group leader".
    let group_dead = exit.get("group_dead").map(|f| f.offset);
    Ok(KernelOffsets {
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
    })
}

/// Loads the object with this kernel's offsets and the configured map sizes.
/// Programs are loaded into the kernel but not attached.
pub fn load(offsets: &KernelOffsets, sizes: MapSizes) -> Result<Ebpf, LoadError> {
    if OBJECT.is_empty() {
        return Err(LoadError::NoObject);
    }
    raise_memlock_limit();
    let mut ebpf = EbpfLoader::new()
        // The object has no CO-RE relocations (rustc emits none; offsets
        // come in KERNEL_OFFSETS), so aya need not parse the kernel's BTF
        // again: that alone would add megabytes to the agent's peak memory.
        .btf(None)
        .override_global(OFFSETS_GLOBAL, offsets, true)
        .map_max_entries(maps::PROC_0, sizes.process_create)
        .map_max_entries(maps::PROC_1, sizes.process_create)
        .map_max_entries(maps::EXIT_0, sizes.process_terminate)
        .map_max_entries(maps::EXIT_1, sizes.process_terminate)
        .load(OBJECT)?;
    for probe in PROBES {
        let err = |action| move |source| LoadError::Program { program: probe.program, action, source };
        let prog = ebpf.program_mut(probe.program).ok_or(LoadError::Program {
            program: probe.program,
            action: "lookup",
            source: aya::programs::ProgramError::UnexpectedProgramType,
        })?;
        match probe.hook {
            Hook::Tracepoint { .. } => {
                let p: &mut TracePoint = prog.try_into().map_err(err("type check"))?;
                p.load().map_err(err("verifier"))?;
            }
            Hook::RawTracepoint { .. } => {
                let p: &mut RawTracePoint = prog.try_into().map_err(err("type check"))?;
                p.load().map_err(err("verifier"))?;
            }
        }
    }
    release_freed_memory();
    Ok(ebpf)
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

/// Attaches every program of the probe table. Links live as long as `ebpf`.
pub fn attach_all(ebpf: &mut Ebpf) -> Result<(), LoadError> {
    for probe in PROBES {
        let err = |action| move |source| LoadError::Program { program: probe.program, action, source };
        let prog = ebpf.program_mut(probe.program).expect("loaded above");
        match probe.hook {
            Hook::Tracepoint { category, name } => {
                let p: &mut TracePoint = prog.try_into().map_err(err("type check"))?;
                p.attach(category, name).map_err(err("attach"))?;
            }
            Hook::RawTracepoint { name } => {
                let p: &mut RawTracePoint = prog.try_into().map_err(err("type check"))?;
                p.attach(name).map_err(err("attach"))?;
            }
        }
        log::debug!("attached {} to {:?}", probe.program, probe.hook);
    }
    Ok(())
}

/// Kernels before 5.11 charge BPF memory to RLIMIT_MEMLOCK; later ones use
/// memcg and ignore it. Without CAP_SYS_RESOURCE raising it fails, which is
/// only a problem on those old kernels.
fn raise_memlock_limit() {
    let rlim = libc::rlimit { rlim_cur: libc::RLIM_INFINITY, rlim_max: libc::RLIM_INFINITY };
    // SAFETY: plain syscall with a valid pointer.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &rlim) } != 0 {
        log::debug!("could not raise RLIMIT_MEMLOCK (fine on kernels >= 5.11): {}", std::io::Error::last_os_error());
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
}
