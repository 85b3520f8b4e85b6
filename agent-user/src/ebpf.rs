//! Loading the kernel programs: offsets for this kernel, map sizes, the probe
//! table and the attach loop.
use std::collections::HashMap;

use agent_common::{maps, programs, KernelOffsets, OFFSETS_GLOBAL};
use aya::{
    programs::{raw_trace_point::RawTracePointLinkId, trace_point::TracePointLinkId, RawTracePoint, TracePoint},
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

/// Map sizes chosen at load time.
#[derive(Debug, Clone, Copy)]
pub struct MapSizes {
    /// Distinct process create records the kernel holds between two drains.
    pub process_create: u32,
    pub process_terminate: u32,
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
    Ok(ebpf)
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

enum LinkId {
    Tracepoint(TracePointLinkId),
    Raw(RawTracePointLinkId),
}

/// The loaded programs and which of them are attached. "Off" means not
/// collected at all: a program nobody needs is detached, not filtered.
pub struct Programs {
    ebpf: Ebpf,
    links: HashMap<&'static str, LinkId>,
}

impl Programs {
    pub fn new(ebpf: Ebpf) -> Programs {
        Programs { ebpf, links: HashMap::new() }
    }

    pub fn is_attached(&self, program: &str) -> bool {
        self.links.contains_key(program)
    }

    /// Attaches every program of the probe table `wanted` names and
    /// detaches the others; programs already in the right state are left alone.
    pub fn set_attached(&mut self, wanted: impl Fn(&str) -> bool) -> Result<(), LoadError> {
        for probe in PROBES {
            let want = wanted(probe.program);
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
                }
                log::info!("detached {} (no event type that needs it is on)", probe.program);
            }
        }
        Ok(())
    }
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
