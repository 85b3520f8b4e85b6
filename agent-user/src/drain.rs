//! Draining: kernel maps -> records, losslessly.
//!
//! Each record family has two maps (generations). Programs write to the one
//! `Control.generation` names. To drain, the agent flips the generation, waits
//! until no program can still be writing to the old one, then reads and
//! clears it at leisure. Waiting uses `membarrier(MEMBARRIER_CMD_GLOBAL)`,
//! which returns after an RCU grace period (kernel/sched/membarrier.c); BPF
//! programs run inside RCU read-side sections, so every program that read the
//! old generation has finished by then. Every event is in exactly one
//! generation, and every generation is drained exactly once.
use std::{ffi::CStr, mem::size_of, time::Duration};

use agent_common::{
    maps, pam_maps, Argv, ConnKey, ConnValue, Control, Counter, ExitKey, ExitValue, PamEvent, ProcId, ProcKey,
    ProcValue, TrafficValue, COUNTER_COUNT, PAM_COUNTER_COUNT, PAM_EVENT_NO_ITEMS, PROC_KIND_FORK,
};
use aya::{
    maps::{Array, HashMap, MapData, MapError, PerCpuArray, PerCpuValues, RingBuf},
    Ebpf,
};

use crate::{
    aggregate::{Aggregate, ProcessKind, ProcessRecord, TerminateRecord},
    collectors::login::pam::{self, Feed, PamFeed},
    net::{self, NetDrained},
};

#[derive(Debug, thiserror::Error)]
pub enum DrainError {
    #[error("map {0} is missing from the eBPF object")]
    MissingMap(&'static str),
    #[error("cannot count possible CPUs: {0}")]
    Cpus(std::io::Error),
    #[error("map {0} is not a hash map; only hash maps are opened a second time")]
    NotAHashMap(&'static str),
    #[error("map {name}: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: MapError,
    },
}

/// Kernel counters of one or more drained generations, summed over CPUs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters(pub [u64; COUNTER_COUNT as usize]);

impl Counters {
    pub fn get(&self, c: Counter) -> u64 {
        self.0[c as usize]
    }
    pub fn add(&mut self, other: &Counters) {
        for (a, b) in self.0.iter_mut().zip(other.0) {
            *a += b;
        }
    }
}

/// One drain's worth of records.
#[derive(Debug, Default)]
pub struct Drained {
    pub processes: Vec<ProcessRecord>,
    pub terminations: Vec<TerminateRecord>,
    /// Connection and traffic records, and DNS answers received.
    pub net: NetDrained,
    /// The counters of the same generation: exactly the events these
    /// records (and drops) account for.
    pub counters: Counters,
}

/// How the drainer waits for programs to leave the old generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quiesce {
    Membarrier,
    /// Kernels without membarrier (or with nohz_full, where the global command
    /// is refused): sleep well past any program's run time.
    Sleep(Duration),
}

impl Quiesce {
    pub fn detect() -> Quiesce {
        // SAFETY: MEMBARRIER_CMD_QUERY takes no pointers.
        let supported = unsafe { libc::syscall(libc::SYS_membarrier, 0, 0, 0) };
        if supported >= 0 && supported & 1 != 0 {
            Quiesce::Membarrier
        } else {
            Quiesce::Sleep(Duration::from_millis(100))
        }
    }

    fn wait(&mut self) {
        if let Quiesce::Membarrier = self {
            // SAFETY: MEMBARRIER_CMD_GLOBAL (1) takes no pointers.
            if unsafe { libc::syscall(libc::SYS_membarrier, 1, 0, 0) } == 0 {
                return;
            }
            log::warn!("membarrier(GLOBAL) failed ({}); draining will sleep instead", std::io::Error::last_os_error());
            *self = Quiesce::Sleep(Duration::from_millis(100));
        }
        if let Quiesce::Sleep(d) = self {
            std::thread::sleep(*d);
        }
    }
}

pub struct Drainer {
    control: Array<MapData, Control>,
    state: Control,
    proc: [HashMap<MapData, ProcKey, ProcValue>; 2],
    exit: [HashMap<MapData, ExitKey, ExitValue>; 2],
    conn: [HashMap<MapData, ConnKey, ConnValue>; 2],
    traf: [HashMap<MapData, ConnKey, TrafficValue>; 2],
    /// Kernel rollups: where events went when PROC, EXIT or CONN was full.
    procr: [HashMap<MapData, ProcKey, ProcValue>; 2],
    exitr: [HashMap<MapData, ExitKey, ExitValue>; 2],
    connr: [HashMap<MapData, ConnKey, ConnValue>; 2],
    /// Socket owners' command lines, read (never cleared) for each drained
    /// connection record.
    argv: HashMap<MapData, ProcId, Argv>,
    dns: RingBuf<MapData>,
    counters: PerCpuArray<MapData, u64>,
    zeros: Vec<u64>,
    quiesce: Quiesce,
}

fn take<T: TryFrom<aya::maps::Map, Error = MapError>>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, DrainError> {
    let map = ebpf.take_map(name).ok_or(DrainError::MissingMap(name))?;
    T::try_from(map).map_err(|source| DrainError::Map { name, source })
}

/// A map the loader keeps (the listener seeding writes it too), opened again
/// by its id for the drainer.
fn second_handle<T: TryFrom<aya::maps::Map, Error = MapError>>(
    ebpf: &Ebpf,
    name: &'static str,
) -> Result<T, DrainError> {
    let err = |source| DrainError::Map { name, source };
    let data = match ebpf.map(name).ok_or(DrainError::MissingMap(name))? {
        aya::maps::Map::HashMap(d) | aya::maps::Map::LruHashMap(d) => d,
        _ => return Err(DrainError::NotAHashMap(name)),
    };
    let again = MapData::from_id(data.info().map_err(err)?.id()).map_err(err)?;
    T::try_from(aya::maps::Map::from_map_data(again).map_err(err)?).map_err(err)
}

impl Drainer {
    /// Takes the maps out of `ebpf` and writes the initial control block.
    pub fn new(ebpf: &mut Ebpf, initial: Control) -> Result<Drainer, DrainError> {
        let mut d = Drainer {
            control: take(ebpf, maps::CONTROL)?,
            state: initial,
            proc: [take(ebpf, maps::PROC_0)?, take(ebpf, maps::PROC_1)?],
            exit: [take(ebpf, maps::EXIT_0)?, take(ebpf, maps::EXIT_1)?],
            conn: [take(ebpf, maps::CONN_0)?, take(ebpf, maps::CONN_1)?],
            traf: [take(ebpf, maps::TRAF_0)?, take(ebpf, maps::TRAF_1)?],
            procr: [take(ebpf, maps::PROCR_0)?, take(ebpf, maps::PROCR_1)?],
            exitr: [take(ebpf, maps::EXITR_0)?, take(ebpf, maps::EXITR_1)?],
            connr: [take(ebpf, maps::CONNR_0)?, take(ebpf, maps::CONNR_1)?],
            argv: second_handle(ebpf, maps::ARGV)?,
            dns: take(ebpf, maps::DNS_EVENTS)?,
            counters: take(ebpf, maps::COUNTERS)?,
            zeros: vec![0; aya::util::nr_cpus().map_err(|(_, e)| DrainError::Cpus(e))?],
            quiesce: Quiesce::detect(),
        };
        d.write_control()?;
        Ok(d)
    }

    pub fn quiesce(&self) -> Quiesce {
        self.quiesce
    }

    /// Changes flags and limits; takes effect for the next event.
    pub fn set_control(&mut self, flags: u32, cmdline_max: u32) -> Result<(), DrainError> {
        self.state.flags = flags;
        self.state.cmdline_max = cmdline_max;
        self.write_control()
    }

    fn write_control(&mut self) -> Result<(), DrainError> {
        self.control.set(0, self.state, 0).map_err(|source| DrainError::Map { name: maps::CONTROL, source })
    }

    /// Flips the generation, waits for writers of the old one, and returns
    /// (and clears) everything it held.
    pub fn drain(&mut self) -> Result<Drained, DrainError> {
        let old = (self.state.generation & 1) as usize;
        self.state.generation ^= 1;
        self.write_control()?;
        self.quiesce.wait();

        let mut processes: Vec<ProcessRecord> =
            drain_map(&mut self.proc[old], maps::PROC_0)?.into_iter().map(|(k, v)| process_record(&k, &v)).collect();
        let mut terminations: Vec<TerminateRecord> =
            drain_map(&mut self.exit[old], maps::EXIT_0)?.into_iter().map(|(k, v)| terminate_record(&k, &v)).collect();
        let mut argv = ArgvReader::new(&self.argv);
        let mut connections: Vec<net::ConnRecord> = drain_map(&mut self.conn[old], maps::CONN_0)?
            .into_iter()
            .filter_map(|(k, v)| net::conn_record(&k, &v, argv.of(&v.owner.process)))
            .collect();
        // Kernel rollups become rollup records (rolled_up normalises them as
        // the window cache would: a process rollup's argv is its executable).
        let procr = drain_map(&mut self.procr[old], maps::PROCR_0)?;
        processes.extend(procr.into_iter().filter_map(|(k, v)| process_record(&k, &v).rolled_up()));
        let exitr = drain_map(&mut self.exitr[old], maps::EXITR_0)?;
        terminations.extend(exitr.into_iter().filter_map(|(k, v)| terminate_record(&k, &v).rolled_up()));
        let connr = drain_map(&mut self.connr[old], maps::CONNR_0)?;
        connections.extend(
            connr.into_iter().filter_map(|(k, v)| net::conn_record(&k, &v, argv.of(&v.owner.process))?.rolled_up()),
        );
        let argv_lost = argv.lost;
        let traffic = drain_map(&mut self.traf[old], maps::TRAF_0)?
            .into_iter()
            .filter_map(|(k, v)| net::traffic_sample(&k, &v))
            .collect();
        // The ring buffer has no generations: everything submitted so far.
        let mut dns = Vec::new();
        while let Some(item) = self.dns.next() {
            dns.extend(net::dns_message(&item));
        }
        let counters = self.take_counters(old as u32)?;
        Ok(Drained { processes, terminations, net: NetDrained { connections, traffic, dns, argv_lost }, counters })
    }

    /// Reads and zeroes one generation's counters.
    fn take_counters(&mut self, generation: u32) -> Result<Counters, DrainError> {
        let err = |source| DrainError::Map { name: maps::COUNTERS, source };
        let mut out = [0u64; COUNTER_COUNT as usize];
        for (i, o) in out.iter_mut().enumerate() {
            let index = generation * COUNTER_COUNT + i as u32;
            *o = self.counters.get(&index, 0).map_err(err)?.iter().sum();
            if *o != 0 {
                let zeros = PerCpuValues::try_from(self.zeros.clone()).map_err(DrainError::Cpus)?;
                self.counters.set(index, zeros, 0).map_err(err)?;
            }
        }
        Ok(Counters(out))
    }
}

/// The PAM programs' ring buffer and counters, read by the Login
/// collector's pam source. The counters are never reset: each read reports
/// what they gained since the last.
pub struct PamRing {
    ring: RingBuf<MapData>,
    counters: PerCpuArray<MapData, u64>,
    last: [u64; PAM_COUNTER_COUNT as usize],
}

/// Events taken from the ring per read: more waits for the next read (a
/// second later), so that a storm is paced rather than held in memory.
pub const PAM_READ_MAX: usize = 4096;

impl PamRing {
    pub fn take(ebpf: &mut Ebpf) -> Result<PamRing, DrainError> {
        Ok(PamRing {
            ring: take(ebpf, pam_maps::PAM_EVENTS)?,
            counters: take(ebpf, pam_maps::PAM_COUNTERS)?,
            last: [0; PAM_COUNTER_COUNT as usize],
        })
    }

    fn counters(&mut self) -> Result<[u64; PAM_COUNTER_COUNT as usize], DrainError> {
        let mut gained = [0; PAM_COUNTER_COUNT as usize];
        for (i, g) in gained.iter_mut().enumerate() {
            let now: u64 = self
                .counters
                .get(&(i as u32), 0)
                .map_err(|source| DrainError::Map { name: pam_maps::PAM_COUNTERS, source })?
                .iter()
                .sum();
            *g = now.wrapping_sub(self.last[i]);
            self.last[i] = now;
        }
        Ok(gained)
    }
}

/// One ring record as the kernel wrote it; None for one of another size.
pub fn pam_event(bytes: &[u8]) -> Option<PamEvent> {
    if bytes.len() != size_of::<PamEvent>() {
        return None;
    }
    // SAFETY: the length is checked and PamEvent is plain integers and bytes.
    Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr() as *const PamEvent) })
}

impl PamFeed for PamRing {
    fn read(&mut self) -> Result<Feed, String> {
        let mut feed = Feed::default();
        while feed.events.len() < PAM_READ_MAX {
            let Some(item) = self.ring.next() else { break };
            match pam_event(&item) {
                Some(e) => {
                    feed.without_items += (e.flags & PAM_EVENT_NO_ITEMS != 0) as u64;
                    feed.events.push(e);
                }
                None => feed.lost += 1,
            }
        }
        feed.lost += pam::lost_events(&self.counters().map_err(|e| e.to_string())?);
        Ok(feed)
    }
}

/// Owners' command lines from ARGV, each process's read once per drain.
struct ArgvReader<'a> {
    map: &'a HashMap<MapData, ProcId, Argv>,
    read: std::collections::HashMap<ProcId, Option<Vec<u8>>>,
    /// Records of known owners whose entry was gone (pushed out of the
    /// full LRU map before this drain).
    lost: u64,
}

impl<'a> ArgvReader<'a> {
    fn new(map: &'a HashMap<MapData, ProcId, Argv>) -> Self {
        ArgvReader { map, read: std::collections::HashMap::new(), lost: 0 }
    }

    /// The command line of `process`; empty for an unknown owner (tgid 0)
    /// and for one whose entry is gone, which is counted.
    fn of(&mut self, process: &ProcId) -> Vec<u8> {
        if process.tgid == 0 {
            return Vec::new();
        }
        let map = self.map;
        let argv = self.read.entry(*process).or_insert_with(|| map.get(process, 0).ok().map(|a| argv_bytes(&a)));
        match argv {
            Some(bytes) => bytes.clone(),
            None => {
                self.lost += 1;
                Vec::new()
            }
        }
    }
}

/// The bytes an [`Argv`] holds, whatever its length field says.
fn argv_bytes(a: &Argv) -> Vec<u8> {
    a.bytes[..(a.len as usize).min(a.bytes.len())].to_vec()
}

/// Reads every entry, then deletes them. The map is quiescent: nothing else
/// writes it until the generation flips back.
fn drain_map<K: aya::Pod, V: aya::Pod>(
    map: &mut HashMap<MapData, K, V>,
    name: &'static str,
) -> Result<Vec<(K, V)>, DrainError> {
    let err = |source| DrainError::Map { name, source };
    // Collect keys first: deleting while walking with get_next_key restarts
    // the walk from the beginning when the previous key is gone.
    let keys: Vec<K> = map.keys().collect::<Result<_, _>>().map_err(err)?;
    let mut out = Vec::with_capacity(keys.len());
    for k in keys {
        let v = map.get(&k, 0).map_err(err)?;
        map.remove(&k).map_err(err)?;
        out.push((k, v));
    }
    Ok(out)
}

fn c_string(bytes: &[u8]) -> String {
    match CStr::from_bytes_until_nul(bytes) {
        Ok(s) => s.to_string_lossy().into_owned(),
        Err(_) => String::from_utf8_lossy(bytes).into_owned(),
    }
}

pub fn process_record(k: &ProcKey, v: &ProcValue) -> ProcessRecord {
    let len = (k.cmdline_len as usize).min(k.cmdline.len());
    let kind = if k.kind == PROC_KIND_FORK { ProcessKind::Fork } else { ProcessKind::Exec };
    let mut executable = c_string(&v.exe);
    if executable.is_empty() {
        // The image was exec'd before the agent started. A forked child runs
        // its parent's image; the parent is likely still alive.
        let owner = if kind == ProcessKind::Fork { v.ppid } else { v.pid };
        executable = std::fs::read_link(format!("/proc/{owner}/exe"))
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default();
    }
    ProcessRecord {
        kind,
        uid: k.uid,
        argv: k.cmdline[..len].to_vec(),
        truncated: k.truncated != 0,
        event_pid: k.pid,
        nonce: k.nonce,
        hit_count: v.hit_count,
        first_seen_ns: v.first_seen_ns,
        pid: v.pid,
        ppid: v.ppid,
        executable,
        comm: c_string(&v.comm),
        rollup: false,
    }
}

pub fn terminate_record(k: &ExitKey, v: &ExitValue) -> TerminateRecord {
    TerminateRecord {
        executable: c_string(&k.exe),
        executable_is_comm: v.exe_is_comm != 0,
        exit_code: k.exit_code,
        event_pid: k.pid,
        nonce: k.nonce,
        hit_count: v.hit_count,
        first_seen_ns: v.first_seen_ns,
        pid: v.pid,
        rollup: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use agent_common::{EXE_CAP, PROC_KIND_EXEC};

    #[test]
    fn converts_process_key() {
        let mut k = ProcKey::zeroed();
        k.uid = 7;
        k.kind = PROC_KIND_EXEC;
        k.truncated = 1;
        k.cmdline_len = 5;
        k.cmdline[..5].copy_from_slice(b"ab\0c\0");
        let mut exe = [0u8; EXE_CAP];
        exe[..7].copy_from_slice(b"/bin/ab");
        let mut comm = [0u8; 16];
        comm[..2].copy_from_slice(b"ab");
        let v = ProcValue { hit_count: 3, first_seen_ns: 9, pid: 100, ppid: 1, exe, comm };
        let r = process_record(&k, &v);
        assert_eq!(r.argv, b"ab\0c\0");
        assert!(r.truncated);
        assert_eq!((r.kind, r.uid, r.hit_count, r.pid, r.ppid), (ProcessKind::Exec, 7, 3, 100, 1));
        assert_eq!((r.executable.as_str(), r.comm.as_str()), ("/bin/ab", "ab"));
    }

    #[test]
    fn counters_add() {
        let mut a = Counters::default();
        let mut b = Counters::default();
        a.0[Counter::ProcMapFull as usize] = 5;
        b.0[Counter::ProcMapFull as usize] = 7;
        a.add(&b);
        assert_eq!(a.get(Counter::ProcMapFull), 12);
    }
}
