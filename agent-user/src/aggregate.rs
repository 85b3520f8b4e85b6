//! Window caches: what the agent holds between two reports. Pure; no I/O.
//!
//! The kernel pre-aggregates between two drains (a second apart); a window
//! cache merges those partial records over the aggregation interval. It holds
//! at most `capacity` records; a new record arriving when it is full pushes
//! out the oldest one (seeds 001/002, Linux: "the oldest event is replaced"),
//! whose hits are counted as dropped.
use std::{
    collections::{HashMap, VecDeque},
    hash::Hash,
};

/// A record that can absorb later occurrences of the same identity.
pub trait Aggregate {
    type Key: Eq + Hash + Clone;
    fn key(&self) -> Self::Key;
    fn hits(&self) -> u64;
    /// Adds `later`'s hits; the first occurrence's details stay.
    fn absorb(&mut self, later: Self);
    /// Boot-clock time of the first occurrence, to keep the cache in order.
    fn first_seen_ns(&self) -> u64;
}

/// What a full cache pushed out during one window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Evictions {
    pub records: u64,
    pub hits: u64,
}

#[derive(Debug)]
pub struct WindowCache<R: Aggregate> {
    capacity: usize,
    /// Keys in insertion order; the front is the oldest.
    order: VecDeque<R::Key>,
    records: HashMap<R::Key, R>,
    evicted: Evictions,
}

impl<R: Aggregate> WindowCache<R> {
    pub fn new(capacity: usize) -> Self {
        assert!(capacity > 0, "a window cache holds at least one record");
        WindowCache { capacity, order: VecDeque::new(), records: HashMap::new(), evicted: Evictions::default() }
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
        let key = record.key();
        if let Some(existing) = self.records.get_mut(&key) {
            existing.absorb(record);
            return;
        }
        while self.records.len() >= self.capacity {
            self.evict_oldest();
        }
        self.order.push_back(key.clone());
        self.records.insert(key, record);
    }

    /// Changes the bound; shrinking evicts the oldest records now.
    pub fn set_capacity(&mut self, capacity: usize) {
        assert!(capacity > 0, "a window cache holds at least one record");
        self.capacity = capacity;
        while self.records.len() > self.capacity {
            self.evict_oldest();
        }
    }

    fn evict_oldest(&mut self) {
        if let Some(old) = self.order.pop_front() {
            if let Some(r) = self.records.remove(&old) {
                self.evicted.records += 1;
                self.evicted.hits += r.hits();
            }
        }
    }

    /// Ends the window: every record in first-seen order, and what was pushed out.
    pub fn take(&mut self) -> (Vec<R>, Evictions) {
        let mut out = Vec::with_capacity(self.records.len());
        for k in self.order.drain(..) {
            if let Some(r) = self.records.remove(&k) {
                out.push(r);
            }
        }
        (out, std::mem::take(&mut self.evicted))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProcessKind {
    Exec,
    Fork,
}

/// A ProcessCreate record: identity is command line + uid + type (and, in
/// per-event mode, the pid and a nonce that make each event unique).
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
}

pub type ProcessKey = (ProcessKind, u32, Vec<u8>, bool, u32, u64);

impl Aggregate for ProcessRecord {
    type Key = ProcessKey;
    fn key(&self) -> ProcessKey {
        (self.kind, self.uid, self.argv.clone(), self.truncated, self.event_pid, self.nonce)
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
}

pub type TerminateKey = (String, u32, u32, u64);

impl Aggregate for TerminateRecord {
    type Key = TerminateKey;
    fn key(&self) -> TerminateKey {
        (self.executable.clone(), self.exit_code, self.event_pid, self.nonce)
    }
    fn hits(&self) -> u64 {
        self.hit_count
    }
    fn absorb(&mut self, later: Self) {
        self.hit_count += later.hit_count;
        if later.first_seen_ns < self.first_seen_ns {
            self.first_seen_ns = later.first_seen_ns;
            self.pid = later.pid;
        }
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
        }
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
        c.add_batch(vec![rec("a", 5, 1), rec("b", 1, 2)]);
        c.add(rec("c", 1, 3)); // pushes out a (5 hits)
        c.add(rec("b", 2, 4)); // merges
        c.add(rec("d", 1, 5)); // pushes out b (3 hits)
        let (out, ev) = c.take();
        let names: Vec<_> = out.iter().map(|r| r.argv.clone()).collect();
        assert_eq!(names, [b"c".to_vec(), b"d".to_vec()]);
        assert_eq!(ev, Evictions { records: 2, hits: 8 });
        // Conservation: what was added is either reported or counted.
        assert_eq!(out.iter().map(|r| r.hit_count).sum::<u64>() + ev.hits, 5 + 1 + 1 + 2 + 1);
    }

    #[test]
    fn batch_is_ordered_by_first_seen() {
        let mut c = WindowCache::new(2);
        c.add_batch(vec![rec("late", 1, 9), rec("early", 1, 1), rec("mid", 1, 5)]);
        let (out, ev) = c.take();
        assert_eq!(out[0].argv, b"mid");
        assert_eq!(out[1].argv, b"late");
        assert_eq!(ev.hits, 1);
    }

    #[test]
    fn take_resets_the_window() {
        let mut c = WindowCache::new(1);
        c.add(rec("a", 1, 1));
        c.add(rec("b", 1, 2));
        assert_eq!(c.take().1.records, 1);
        assert_eq!(c.take(), (vec![], Evictions::default()));
    }

    #[test]
    fn shrinking_evicts_now() {
        let mut c = WindowCache::new(3);
        c.add_batch(vec![rec("a", 1, 1), rec("b", 2, 2), rec("c", 3, 3)]);
        c.set_capacity(1);
        let (out, ev) = c.take();
        assert_eq!(out.len(), 1);
        assert_eq!(ev, Evictions { records: 2, hits: 3 });
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
    }
}
