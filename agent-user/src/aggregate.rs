//! Window caches: what the agent holds between two reports. Pure; no I/O.
//!
//! The kernel pre-aggregates between two drains (a second apart); a window
//! cache merges those partial records over the aggregation interval. It holds
//! at most `capacity` records; a new record arriving when it is full pushes
//! out the oldest one (seeds 001/002, Linux: "the oldest event is replaced").
//!
//! What a full cache pushes out is folded into a coarser record of the same
//! type, a rollup (ports zeroed, command line replaced by the executable:
//! [`Aggregate::rolled_up`]), kept in a smaller rollup cache of the window, so
//! that a storm of distinct records (ports, command lines) pushes out the
//! details of an unrelated record but not the fact that it happened. Only what
//! the full rollup cache pushes out in turn is dropped and counted.
use std::{
    collections::{hash_map::RandomState, VecDeque},
    hash::{BuildHasher, Hash},
};

use hashbrown::HashTable;

/// A record that can absorb later occurrences of the same identity.
pub trait Aggregate {
    type Key: Eq + Hash + Clone;
    fn key(&self) -> Self::Key;
    fn hits(&self) -> u64;
    /// Adds `later`'s hits; the first occurrence's details stay.
    fn absorb(&mut self, later: Self);
    /// Boot-clock time of the first occurrence, to keep the cache in order.
    fn first_seen_ns(&self) -> u64;
    /// The coarser record this one is folded into when a full cache pushes
    /// it out; its key must differ from every ordinary record's. None: not
    /// rolled up, the record's hits are dropped.
    fn rolled_up(self) -> Option<Self>
    where
        Self: Sized,
    {
        None
    }
    /// Whether this is a rollup already (one the kernel folded when its
    /// staging map was full): it goes straight to the rollup cache.
    fn is_rollup(&self) -> bool {
        false
    }
}

/// Records a window's rollup cache holds, for a window cache of `capacity`:
/// a quarter of it, at least 64 (a small cache is the one that overflows).
pub fn rollup_capacity(capacity: usize) -> usize {
    (capacity / 4).max(64)
}

/// What a full cache pushed out during one window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Evictions {
    /// Records pushed out of the window cache (rolled up or not).
    pub records: u64,
    /// Hits in no record: of records pushed out and not rolled up, and of
    /// rollups pushed out of the full rollup cache.
    pub hits: u64,
    /// Hits the rollups sent with the window carry.
    pub rolled_up: u64,
    /// Rollups pushed out of the full rollup cache.
    pub rollups_evicted: u64,
}

/// Each record is kept once, in arrival order; an index finds it by its
/// key's hash, and the key is made from the record when compared rather
/// than stored beside it (a command line kept once, not three times).
#[derive(Debug)]
pub struct WindowCache<R: Aggregate> {
    capacity: usize,
    /// In insertion order; the front is the oldest. The record at position
    /// `i` has the sequence number `front_seq + i`.
    records: VecDeque<R>,
    front_seq: u64,
    /// One slot per record.
    index: HashTable<Slot>,
    /// Keyed by the process: command lines are chosen by whoever runs
    /// processes here, so the hash must not be predictable (hash flooding).
    hasher: RandomState,
    evicted: Evictions,
    /// Where pushed-out records are folded; None in a rollup cache itself.
    rollups: Option<Box<WindowCache<R>>>,
}

/// Where a record is: its key's hash (kept, so the index grows without
/// making keys again) and its sequence number.
#[derive(Debug, Clone, Copy)]
struct Slot {
    hash: u64,
    seq: u64,
}

impl<R: Aggregate> WindowCache<R> {
    pub fn new(capacity: usize) -> Self {
        let mut c = Self::flat(capacity);
        c.rollups = Some(Box::new(Self::flat(rollup_capacity(capacity))));
        c
    }

    fn flat(capacity: usize) -> Self {
        assert!(capacity > 0, "a window cache holds at least one record");
        WindowCache {
            capacity,
            records: VecDeque::new(),
            front_seq: 0,
            index: HashTable::new(),
            hasher: RandomState::new(),
            evicted: Evictions::default(),
            rollups: None,
        }
    }

    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Adds one drained batch. The batch is sorted by first occurrence so that
    /// "oldest" means first seen, not the kernel's hash order.
    pub fn add_batch(&mut self, mut batch: Vec<R>) {
        batch.sort_by_key(|r| r.first_seen_ns());
        for r in batch {
            self.add(r);
        }
    }

    pub fn add(&mut self, record: R) {
        if record.is_rollup() {
            if let Some(r) = self.rollups.as_mut() {
                return r.add(record);
            }
        }
        let key = record.key();
        let hash = self.hasher.hash_one(&key);
        if let Some(pos) = self.position(hash, &key) {
            self.records[pos].absorb(record);
            return;
        }
        while self.records.len() >= self.capacity {
            self.evict_oldest();
        }
        let seq = self.front_seq + self.records.len() as u64;
        self.records.push_back(record);
        self.index.insert_unique(hash, Slot { hash, seq }, |s| s.hash);
    }

    /// Where the record of `key` is in `records`.
    fn position(&self, hash: u64, key: &R::Key) -> Option<usize> {
        let (records, front) = (&self.records, self.front_seq);
        let at = |s: &Slot| (s.seq - front) as usize;
        self.index.find(hash, |s| s.hash == hash && records[at(s)].key() == *key).map(at)
    }

    /// Changes the bound; shrinking evicts the oldest records now.
    pub fn set_capacity(&mut self, capacity: usize) {
        assert!(capacity > 0, "a window cache holds at least one record");
        self.capacity = capacity;
        while self.records.len() > self.capacity {
            self.evict_oldest();
        }
        if let Some(r) = self.rollups.as_mut() {
            r.set_capacity(rollup_capacity(capacity));
        }
    }

    fn evict_oldest(&mut self) {
        let Some(r) = self.records.pop_front() else { return };
        let (seq, hash) = (self.front_seq, self.hasher.hash_one(r.key()));
        match self.index.find_entry(hash, |s| s.seq == seq) {
            Ok(slot) => drop(slot.remove()),
            Err(_) => unreachable!("every record has a slot"),
        }
        self.front_seq += 1;
        self.evicted.records += 1;
        let hits = r.hits();
        match (self.rollups.as_mut(), r.rolled_up()) {
            (Some(rollups), Some(coarse)) => rollups.add(coarse),
            _ => self.evicted.hits += hits,
        }
    }

    /// Ends the window: every record in first-seen order, then the rollups
    /// in theirs, and what was pushed out. The storage leaves with the
    /// records, so a burst's window does not stay allocated after it.
    pub fn take(&mut self) -> (Vec<R>, Evictions) {
        self.front_seq += self.records.len() as u64;
        let mut out: Vec<R> = std::mem::take(&mut self.records).into();
        self.index = HashTable::new();
        let mut evicted = std::mem::take(&mut self.evicted);
        if let Some(rollups) = self.rollups.as_mut() {
            append_rollups(&mut out, &mut evicted, rollups.take());
        }
        (out, evicted)
    }
}

/// Adds what a rollup cache held (`take`n) to its window's records and
/// losses: the rollups after the records, their hits as rolled up, what the
/// full rollup cache pushed out as lost.
fn append_rollups<R: Aggregate>(out: &mut Vec<R>, evicted: &mut Evictions, (coarse, lost): (Vec<R>, Evictions)) {
    evicted.hits += lost.hits;
    evicted.rollups_evicted += lost.records;
    evicted.rolled_up += coarse.iter().map(|r| r.hits()).sum::<u64>();
    out.extend(coarse);
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProcessKind {
    Exec,
    Fork,
}

/// A ProcessCreate record: identity is command line + uid + type (and, in
/// per-event mode, the pid and a nonce that make each event unique). A
/// rollup's is executable + uid + type: its `argv` is the executable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessRecord {
    pub kind: ProcessKind,
    pub uid: u32,
    /// argv as the process laid it out: NUL-separated, possibly cut.
    pub argv: Vec<u8>,
    pub truncated: bool,
    /// Non-zero only in per-event mode (part of the identity).
    pub event_pid: u32,
    pub nonce: u64,
    pub hit_count: u64,
    pub first_seen_ns: u64,
    pub pid: u32,
    pub ppid: u32,
    pub executable: String,
    pub comm: String,
    /// A rollup of records pushed out of a full cache (or the kernel's full map).
    pub rollup: bool,
}

pub type ProcessKey = (ProcessKind, u32, Vec<u8>, bool, u32, u64, bool);

impl Aggregate for ProcessRecord {
    type Key = ProcessKey;
    fn key(&self) -> ProcessKey {
        (self.kind, self.uid, self.argv.clone(), self.truncated, self.event_pid, self.nonce, self.rollup)
    }
    /// Per executable (or, when unknown, `[comm]`), uid and type.
    fn rolled_up(mut self) -> Option<Self> {
        let name = if self.executable.is_empty() { format!("[{}]", self.comm) } else { self.executable.clone() };
        self.argv = name.into_bytes();
        (self.truncated, self.event_pid, self.nonce, self.rollup) = (false, 0, 0, true);
        Some(self)
    }
    fn is_rollup(&self) -> bool {
        self.rollup
    }
    fn hits(&self) -> u64 {
        self.hit_count
    }
    fn absorb(&mut self, later: Self) {
        self.hit_count += later.hit_count;
        if later.first_seen_ns < self.first_seen_ns {
            let hits = self.hit_count;
            *self = later;
            self.hit_count = hits;
        }
    }
    fn first_seen_ns(&self) -> u64 {
        self.first_seen_ns
    }
}

/// A ProcessTerminate record: identity is executable + exit status (seed 000).
/// A rollup's is executable + the killing signal (none, or which): distinct
/// exit codes of one executable fold together, a crash stays apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TerminateRecord {
    pub executable: String,
    /// The executable is only the task's 16-byte comm: its exec was not seen.
    pub executable_is_comm: bool,
    /// Wait status as in `task_struct.exit_code`.
    pub exit_code: u32,
    pub event_pid: u32,
    pub nonce: u64,
    pub hit_count: u64,
    pub first_seen_ns: u64,
    pub pid: u32,
    /// A rollup of records pushed out of a full cache (or the kernel's full map).
    pub rollup: bool,
}

pub type TerminateKey = (String, u32, u32, u64, bool);

/// The signal bits of a wait status (`task_struct.exit_code`).
const SIGNAL_MASK: u32 = 0x7f;

impl Aggregate for TerminateRecord {
    type Key = TerminateKey;
    fn key(&self) -> TerminateKey {
        let status = if self.rollup { self.exit_code & SIGNAL_MASK } else { self.exit_code };
        (self.executable.clone(), status, self.event_pid, self.nonce, self.rollup)
    }
    fn hits(&self) -> u64 {
        self.hit_count
    }
    fn absorb(&mut self, later: Self) {
        self.hit_count += later.hit_count;
        if later.first_seen_ns < self.first_seen_ns {
            self.first_seen_ns = later.first_seen_ns;
            self.pid = later.pid;
            self.exit_code = later.exit_code; // differs only in a rollup
        }
    }
    fn rolled_up(mut self) -> Option<Self> {
        (self.event_pid, self.nonce, self.rollup) = (0, 0, true);
        Some(self)
    }
    fn is_rollup(&self) -> bool {
        self.rollup
    }
    fn first_seen_ns(&self) -> u64 {
        self.first_seen_ns
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(cmd: &str, hits: u64, t: u64) -> ProcessRecord {
        ProcessRecord {
            kind: ProcessKind::Exec,
            uid: 1000,
            argv: cmd.as_bytes().to_vec(),
            truncated: false,
            event_pid: 0,
            nonce: 0,
            hit_count: hits,
            first_seen_ns: t,
            pid: t as u32,
            ppid: 1,
            executable: "/bin/x".into(),
            comm: "x".into(),
            rollup: false,
        }
    }

    /// A record type without rollups (as Diagnostic's): what a full cache
    /// pushes out is dropped and counted.
    #[derive(Debug, PartialEq)]
    struct Plain(ProcessRecord);

    impl Aggregate for Plain {
        type Key = ProcessKey;
        fn key(&self) -> ProcessKey {
            self.0.key()
        }
        fn hits(&self) -> u64 {
            self.0.hits()
        }
        fn absorb(&mut self, later: Self) {
            self.0.absorb(later.0)
        }
        fn first_seen_ns(&self) -> u64 {
            self.0.first_seen_ns
        }
    }

    fn plain(cmd: &str, hits: u64, t: u64) -> Plain {
        Plain(rec(cmd, hits, t))
    }

    fn exe(path: &str, cmd: &str, hits: u64, t: u64) -> ProcessRecord {
        ProcessRecord { executable: path.into(), ..rec(cmd, hits, t) }
    }

    /// The window's identity: every hit added is in a record (ordinary or
    /// rollup) or counted in `hits`.
    fn accounts<R: Aggregate>(out: &[R], ev: &Evictions, added: u64) {
        let reported: u64 = out.iter().map(|r| r.hits()).sum();
        assert_eq!(reported + ev.hits, added, "{reported} reported + {} lost", ev.hits);
    }

    fn rollups(out: &[ProcessRecord]) -> Vec<(&str, u64)> {
        out.iter().filter(|r| r.rollup).map(|r| (std::str::from_utf8(&r.argv).unwrap(), r.hit_count)).collect()
    }

    /// The cache as a list searched from the front: what the index must
    /// behave like.
    struct Model {
        capacity: usize,
        records: Vec<ProcessRecord>,
        evicted: Evictions,
        rollups: Option<Box<Model>>,
    }

    impl Model {
        fn new(capacity: usize, rollups: bool) -> Model {
            let rollups = rollups.then(|| Box::new(Model::new(rollup_capacity(capacity), false)));
            Model { capacity, records: Vec::new(), evicted: Evictions::default(), rollups }
        }

        fn add(&mut self, r: ProcessRecord) {
            if let (true, Some(m)) = (r.is_rollup(), self.rollups.as_mut()) {
                return m.add(r);
            }
            if let Some(e) = self.records.iter_mut().find(|e| e.key() == r.key()) {
                return e.absorb(r);
            }
            while self.records.len() >= self.capacity {
                self.evict();
            }
            self.records.push(r);
        }

        fn evict(&mut self) {
            let r = self.records.remove(0);
            self.evicted.records += 1;
            let hits = r.hits();
            match (self.rollups.as_mut(), r.rolled_up()) {
                (Some(m), Some(coarse)) => m.add(coarse),
                _ => self.evicted.hits += hits,
            }
        }

        fn set_capacity(&mut self, capacity: usize) {
            self.capacity = capacity;
            while self.records.len() > capacity {
                self.evict();
            }
            if let Some(m) = self.rollups.as_mut() {
                m.set_capacity(rollup_capacity(capacity));
            }
        }

        fn take(&mut self) -> (Vec<ProcessRecord>, Evictions) {
            let mut out = std::mem::take(&mut self.records);
            let mut ev = std::mem::take(&mut self.evicted);
            if let Some(m) = self.rollups.as_mut() {
                append_rollups(&mut out, &mut ev, m.take());
            }
            (out, ev)
        }
    }

    /// Random windows of repeats, earlier occurrences, kernel rollups,
    /// resizes and evictions: the indexed cache gives what the list gives.
    #[test]
    fn the_index_finds_what_a_search_of_the_list_finds() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        for round in 0..200 {
            let capacity = 1 + next(40) as usize;
            let (mut c, mut m) = (WindowCache::new(capacity), Model::new(capacity, true));
            for window in 0..4 {
                for _ in 0..next(300) {
                    let path = format!("/bin/e{}", next(5));
                    let mut r = exe(&path, &format!("c{}", next(60)), 1 + next(3), next(1000));
                    r.uid = next(2) as u32;
                    if next(20) == 0 {
                        r = r.rolled_up().unwrap();
                    }
                    if next(50) == 0 {
                        let capacity = 1 + next(40) as usize;
                        c.set_capacity(capacity);
                        m.set_capacity(capacity);
                    }
                    c.add(r.clone());
                    m.add(r);
                    assert_eq!(c.len(), m.records.len(), "round {round} window {window}");
                }
                assert_eq!(c.take(), m.take(), "round {round} window {window}");
            }
        }
    }

    #[test]
    fn a_full_cache_folds_what_it_pushes_out_into_rollups() {
        let mut c = WindowCache::new(2);
        c.add(exe("/usr/bin/marker", "marker --once", 1, 1));
        // A storm of distinct command lines of one executable, after the marker.
        c.add_batch((0..100).map(|i| exe("/bin/x", &format!("x {i}"), 2, 10 + i)).collect());
        let (out, ev) = c.take();
        let ordinary: Vec<_> = out.iter().filter(|r| !r.rollup).map(|r| r.argv.clone()).collect();
        assert_eq!(ordinary, [b"x 98".to_vec(), b"x 99".to_vec()], "the spec's rule: the newest records stay");
        assert_eq!(rollups(&out), [("/usr/bin/marker", 1), ("/bin/x", 196)], "rollups in first-seen order");
        let marker = out.iter().find(|r| r.rollup && r.executable == "/usr/bin/marker").unwrap();
        assert_eq!((marker.pid, marker.uid, marker.truncated), (1, 1000, false));
        assert_eq!(ev, Evictions { records: 99, hits: 0, rolled_up: 197, rollups_evicted: 0 });
        accounts(&out, &ev, 201);
    }

    #[test]
    fn process_storm_of_20000_command_lines_keeps_a_new_program() {
        let mut c = WindowCache::new(256);
        let mut added = 0;
        for i in 0..20_000u64 {
            c.add(exe("/bin/sh", &format!("sh -c job{i}"), 1, i));
            added += 1;
            if i == 10_000 {
                c.add(exe("/tmp/.x/implant", "implant", 1, i));
                added += 1;
            }
        }
        let (out, ev) = c.take();
        assert_eq!(out.iter().filter(|r| !r.rollup).count(), 256);
        assert_eq!(rollups(&out), [("/bin/sh", 20_000 - 256), ("/tmp/.x/implant", 1)]);
        assert_eq!((ev.hits, ev.rolled_up, ev.records), (0, 20_000 - 256 + 1, 20_000 + 1 - 256));
        accounts(&out, &ev, added);
    }

    #[test]
    fn rollup_identity_is_executable_uid_and_kind() {
        let mut c = WindowCache::new(1);
        let mut root = exe("/bin/x", "x 1", 1, 1);
        root.uid = 0;
        let mut fork = exe("/bin/x", "x 2", 1, 2);
        fork.kind = ProcessKind::Fork;
        // Per-event records (pid and nonce set) fold together too.
        let per_event = ProcessRecord { event_pid: 7, nonce: 99, ..exe("/bin/x", "x 3", 1, 3) };
        let unknown = ProcessRecord { executable: String::new(), comm: "kworker".into(), ..rec("", 1, 4) };
        c.add_batch(vec![root, fork, per_event, exe("/bin/x", "x 4", 1, 4), unknown, rec("last", 1, 9)]);
        let (out, ev) = c.take();
        let got: Vec<_> =
            out.iter().filter(|r| r.rollup).map(|r| (r.uid, r.kind, r.argv.clone(), r.hit_count)).collect();
        assert_eq!(
            got,
            [
                (0, ProcessKind::Exec, b"/bin/x".to_vec(), 1),
                (1000, ProcessKind::Fork, b"/bin/x".to_vec(), 1),
                (1000, ProcessKind::Exec, b"/bin/x".to_vec(), 2),
                (1000, ProcessKind::Exec, b"[kworker]".to_vec(), 1),
            ]
        );
        assert!(out.iter().filter(|r| r.rollup).all(|r| (r.event_pid, r.nonce) == (0, 0)));
        accounts(&out, &ev, 6);
    }

    #[test]
    fn kernel_rollups_go_to_the_rollup_cache_and_merge_with_ours() {
        let mut c = WindowCache::new(1);
        let kernel = exe("/bin/x", "x 1", 40, 1).rolled_up().unwrap();
        c.add_batch(vec![kernel, exe("/bin/x", "x 2", 2, 2), exe("/bin/x", "x 3", 1, 3)]);
        let (out, ev) = c.take();
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].argv, b"x 3", "a kernel rollup takes no room in the window cache");
        assert_eq!(rollups(&out), [("/bin/x", 42)]);
        assert_eq!(ev, Evictions { records: 1, hits: 0, rolled_up: 42, rollups_evicted: 0 });
    }

    #[test]
    fn a_full_rollup_cache_drops_its_oldest_and_counts_them() {
        assert_eq!((rollup_capacity(1), rollup_capacity(256), rollup_capacity(4096)), (64, 64, 1024));
        let mut c = WindowCache::new(1);
        // 101 distinct executables: 100 pushed out, 64 rollups kept.
        c.add_batch((0..101).map(|i| exe(&format!("/opt/{i}"), &format!("run {i}"), 3, i)).collect());
        let (out, ev) = c.take();
        assert_eq!(out.iter().filter(|r| r.rollup).count(), 64);
        assert_eq!(rollups(&out)[0], ("/opt/36", 3), "the oldest rollups gave way");
        assert_eq!(ev, Evictions { records: 100, hits: 36 * 3, rolled_up: 64 * 3, rollups_evicted: 36 });
        accounts(&out, &ev, 303);
    }

    #[test]
    fn resizing_resizes_the_rollup_cache() {
        let mut c = WindowCache::new(1024);
        c.add_batch((0..1024).map(|i| exe(&format!("/opt/{i}"), &format!("run {i}"), 1, i)).collect());
        c.set_capacity(4); // 1020 pushed out into a rollup cache of 64
        let (out, ev) = c.take();
        assert_eq!((out.len(), ev.rollups_evicted, ev.hits), (4 + 64, 1020 - 64, 1020 - 64));
        accounts(&out, &ev, 1024);
    }

    #[test]
    fn merges_identical_records() {
        let mut c = WindowCache::new(4);
        c.add_batch(vec![rec("a", 2, 10), rec("b", 1, 11)]);
        c.add_batch(vec![rec("a", 3, 20)]);
        let (out, ev) = c.take();
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].hit_count, 5);
        assert_eq!(out[0].pid, 10, "first occurrence's pid is kept");
        assert_eq!(ev, Evictions::default());
    }

    #[test]
    fn earlier_occurrence_wins_details() {
        let mut c = WindowCache::new(4);
        c.add(rec("a", 1, 50));
        c.add(rec("a", 1, 40));
        let (out, _) = c.take();
        assert_eq!((out[0].hit_count, out[0].first_seen_ns, out[0].pid), (2, 40, 40));
    }

    #[test]
    fn uid_and_kind_are_part_of_identity() {
        let mut c = WindowCache::new(8);
        let mut other_uid = rec("a", 1, 1);
        other_uid.uid = 0;
        let mut fork = rec("a", 1, 2);
        fork.kind = ProcessKind::Fork;
        c.add_batch(vec![rec("a", 1, 0), other_uid, fork]);
        assert_eq!(c.len(), 3);
    }

    #[test]
    fn full_cache_discards_oldest_and_counts_its_hits() {
        let mut c = WindowCache::new(2);
        c.add_batch(vec![plain("a", 5, 1), plain("b", 1, 2)]);
        c.add(plain("c", 1, 3)); // pushes out a (5 hits)
        c.add(plain("b", 2, 4)); // merges
        c.add(plain("d", 1, 5)); // pushes out b (3 hits)
        let (out, ev) = c.take();
        let names: Vec<_> = out.iter().map(|r| r.0.argv.clone()).collect();
        assert_eq!(names, [b"c".to_vec(), b"d".to_vec()]);
        assert_eq!(ev, Evictions { records: 2, hits: 8, ..Default::default() });
        // Conservation: what was added is either reported or counted.
        assert_eq!(out.iter().map(|r| r.0.hit_count).sum::<u64>() + ev.hits, 5 + 1 + 1 + 2 + 1);
    }

    #[test]
    fn batch_is_ordered_by_first_seen() {
        let mut c = WindowCache::new(2);
        c.add_batch(vec![plain("late", 1, 9), plain("early", 1, 1), plain("mid", 1, 5)]);
        let (out, ev) = c.take();
        assert_eq!(out[0].0.argv, b"mid");
        assert_eq!(out[1].0.argv, b"late");
        assert_eq!(ev.hits, 1);
    }

    #[test]
    fn take_resets_the_window() {
        let mut c = WindowCache::new(1);
        c.add(plain("a", 1, 1));
        c.add(plain("b", 1, 2));
        assert_eq!(c.take().1.records, 1);
        assert_eq!(c.take(), (vec![], Evictions::default()));
    }

    #[test]
    fn shrinking_evicts_now() {
        let mut c = WindowCache::new(3);
        c.add_batch(vec![plain("a", 1, 1), plain("b", 2, 2), plain("c", 3, 3)]);
        c.set_capacity(1);
        let (out, ev) = c.take();
        assert_eq!(out.len(), 1);
        assert_eq!(ev, Evictions { records: 2, hits: 3, ..Default::default() });
    }

    #[test]
    fn terminate_identity_is_executable_and_status() {
        let t = |exe: &str, code, hits, at| TerminateRecord {
            executable: exe.into(),
            executable_is_comm: false,
            exit_code: code,
            event_pid: 0,
            nonce: 0,
            hit_count: hits,
            first_seen_ns: at,
            pid: at as u32,
            rollup: false,
        };
        let mut c = WindowCache::new(8);
        c.add_batch(vec![
            t("/bin/false", 256, 1, 1),
            t("/bin/false", 256, 2, 2),
            t("/bin/false", 0, 1, 3),
            t("/bin/true", 0, 1, 4),
        ]);
        let (out, _) = c.take();
        assert_eq!(out.len(), 3);
        assert_eq!(out[0].hit_count, 3);
        // Rollups: exit codes of one executable fold, a killing signal stays apart.
        let mut c = WindowCache::new(1);
        c.add_batch(vec![
            t("/bin/false", 256, 1, 1),
            t("/bin/false", 3 << 8, 2, 2),
            t("/bin/false", 11, 1, 3), // SIGSEGV
            t("/bin/true", 0, 1, 4),
            t("/bin/last", 0, 1, 5),
        ]);
        let (out, ev) = c.take();
        let got: Vec<_> =
            out.iter().filter(|r| r.rollup).map(|r| (r.executable.as_str(), r.exit_code, r.hit_count)).collect();
        assert_eq!(got, [("/bin/false", 256, 3), ("/bin/false", 11, 1), ("/bin/true", 0, 1)]);
        accounts(&out, &ev, 6);
    }
}
