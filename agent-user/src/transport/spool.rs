//! `--spool-dir DIR`: the local cache kept as a journal, `DIR/queue.jsonl`,
//! so that neither a restart nor a crash loses what entered the cache.
//!
//! Format: one JSON object per line, appended as the cache changes.
//! - `{"version":2}`, the first line;
//! - an event entering the cache: `{"seq":N,"event_type":..,"priority":..,
//!   "hits":..,"carried":[source,{drops}]?,"event":{..}}`, the event object
//!   exactly as it will be sent; `seq` grows through the file;
//! - events leaving it, acknowledged by the broker (PUBACK) or dropped:
//!   `{"gone":[[first,last],..]}`, ranges of `seq`;
//! - the drop counts not yet reported, each time they change:
//!   `{"drops":{"ProcessCreate":{..}},"unattributed":N}` (the last one holds).
//!
//! The cache is every entry without a later tombstone. Lines are written
//! (write(2): in the page cache, so a SIGKILL loses nothing) as the cache
//! changes, and a thread of their own fsyncs them every [`SYNC_INTERVAL`]:
//! power loss loses at most that. The file is rewritten from the cache
//! (compacted: a temporary file created `O_EXCL`, fsync, rename, fsync of
//! the directory) at start, at shutdown, and once more was appended since
//! the last rewrite than max(its size then, 2 x maxLocalCacheSizeInBytes,
//! 1 MiB): it stays within a few times the cache.
//!
//! Nothing read back is trusted. Loading streams record by record (each at
//! most [`MAX_RECORD`] bytes), refuses what is not UTF-8, not a record, or
//! not an event whose fields agree with its metadata, and counts each
//! refused record in `spool_records_lost`; the file around it still loads.
//! At most maxLocalCacheSizeInBytes of events is taken back, in file order;
//! the rest counts as `transport_cache_full`. A directory another user could
//! write (or replace) is refused at start; files are opened `O_NOFOLLOW`,
//! created `O_EXCL`, mode 0600.
use std::{
    collections::BTreeMap,
    fs::{File, OpenOptions},
    io::{BufRead, BufReader, Read, Write},
    os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt},
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::outbox::{Carried, Changes, Drops, Item, Outbox};
use crate::config::{EventType, Priority};

pub const FILE: &str = "queue.jsonl";
const TMP: &str = "queue.jsonl.tmp";
const VERSION: u32 = 2;
/// How often what was appended is fsynced: the most power loss can lose.
pub const SYNC_INTERVAL: Duration = Duration::from_secs(1);
/// Longest record: an event of the largest MQTT packet, and its metadata.
pub const MAX_RECORD: usize = 320 * 1024;
/// Entries past the cache bound remembered while loading, in case a later
/// tombstone says they had left; past it they are counted at once.
const MAX_REFUSED: usize = 100_000;
/// How often a journal that could not be written is tried again.
const RETRY: Duration = Duration::from_secs(10);
const MIN_COMPACTION: u64 = 1 << 20;
/// Problems named in the log after a load; the rest are only counted.
const NAMED_PROBLEMS: usize = 3;

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("--spool-dir {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "--spool-dir {path}: {reason}; the spool holds every user's command lines and is trusted at start, so it \
         must be a directory only the agent's user (uid {uid}) can write, in directories only it or root can write \
         (chown {uid} and chmod 0700 it, or choose another)"
    )]
    Unsafe { path: PathBuf, reason: String, uid: u32 },
}

fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() }
}

/// Creates the directory (0700) if needed, refuses it if another user
/// could write it, removes a stale temporary file, and warns when the
/// file system has too little room for the cache. Returns its real path.
pub fn prepare(dir: &Path, cache_bytes: u64) -> Result<PathBuf, SpoolError> {
    let io = |source| SpoolError::Io { path: dir.to_path_buf(), source };
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(io)?;
    // The real path: a symlink swapped later changes nothing.
    let dir = std::fs::canonicalize(dir).map_err(io)?;
    check_dir(&dir, euid())?;
    match std::fs::remove_file(dir.join(TMP)) {
        Ok(()) => log::info!("spool {}: removed the temporary file of an interrupted rewrite", dir.display()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => log::warn!("spool {}: cannot remove the stale {TMP}: {e}", dir.display()),
    }
    if let Some(free) = free_bytes(&dir) {
        if free < 2 * cache_bytes {
            log::warn!(
                "spool {}: {free} bytes free, less than twice maxLocalCacheSizeInBytes ({cache_bytes}): the journal \
                 may not hold the whole cache",
                dir.display()
            );
        }
    }
    Ok(dir)
}

/// `dir` must be a directory owned by `uid`, not writable by group or
/// others, and so must every directory above it be (owned by `uid` or
/// root), except sticky ones like /tmp, where others cannot rename it away.
pub fn check_dir(dir: &Path, uid: u32) -> Result<(), SpoolError> {
    let refuse = |path: &Path, reason: String| SpoolError::Unsafe { path: path.to_path_buf(), reason, uid };
    let meta = |p: &Path| std::fs::symlink_metadata(p).map_err(|source| SpoolError::Io { path: p.into(), source });
    let m = meta(dir)?;
    if !m.is_dir() {
        return Err(refuse(dir, "not a directory".into()));
    }
    if m.uid() != uid {
        return Err(refuse(dir, format!("owned by uid {}, not by the agent's", m.uid())));
    }
    if m.mode() & 0o022 != 0 {
        return Err(refuse(dir, format!("mode {:04o} lets group or others write it", m.mode() & 0o7777)));
    }
    for up in dir.ancestors().skip(1) {
        let m = meta(up)?;
        let writable = m.mode() & 0o022 != 0 && m.mode() & 0o1000 == 0;
        if (m.uid() != uid && m.uid() != 0) || writable {
            return Err(refuse(
                dir,
                format!(
                    "{} above it (uid {}, mode {:04o}) lets another user replace it",
                    up.display(),
                    m.uid(),
                    m.mode() & 0o7777
                ),
            ));
        }
    }
    Ok(())
}

fn free_bytes(dir: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    // SAFETY: statvfs fills the zeroed struct; path is NUL-terminated.
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    (unsafe { libc::statvfs(path.as_ptr(), &mut s) } == 0).then(|| s.f_bavail as u64 * s.f_frsize as u64)
}

// ---- Writing -------------------------------------------------------------

#[derive(Serialize)]
struct EntryMeta<'a> {
    seq: u64,
    event_type: &'a str,
    priority: Priority,
    hits: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    carried: Option<(&'a str, Drops)>,
}

/// `{meta...,"event":<the event's own bytes>}`: the event is not re-encoded.
fn entry_line(out: &mut Vec<u8>, item: &Item) {
    let meta = EntryMeta {
        seq: item.seq,
        event_type: item.event_type.name(),
        priority: item.priority,
        hits: item.hits,
        carried: item.carried.as_deref().map(|c| (c.source.name(), c.drops)),
    };
    serde_json::to_writer(&mut *out, &meta).expect("meta serializes");
    out.pop(); // its closing brace
    out.extend_from_slice(b",\"event\":");
    out.extend_from_slice(&item.bytes);
    out.extend_from_slice(b"}\n");
}

fn gone_line(out: &mut Vec<u8>, mut seqs: Vec<u64>) {
    seqs.sort_unstable();
    seqs.dedup();
    let mut ranges: Vec<(u64, u64)> = Vec::new();
    for s in seqs {
        match ranges.last_mut() {
            Some((_, last)) if *last + 1 == s => *last = s,
            _ => ranges.push((s, s)),
        }
    }
    serde_json::to_writer(&mut *out, &serde_json::json!({ "gone": ranges })).expect("serializes");
    out.push(b'\n');
}

fn drops_line(out: &mut Vec<u8>, drops: &BTreeMap<EventType, Drops>, unattributed: u64) {
    let drops: BTreeMap<&str, Drops> = drops.iter().map(|(t, d)| (t.name(), *d)).collect();
    serde_json::to_writer(&mut *out, &serde_json::json!({ "drops": drops, "unattributed": unattributed }))
        .expect("serializes");
    out.push(b'\n');
}

/// The whole journal for what `outbox` holds now; from now on the outbox
/// records its changes for [`Journal::append`].
pub fn snapshot(outbox: &mut Outbox) -> Vec<u8> {
    outbox.take_changes();
    outbox.record_changes();
    let mut out = format!("{{\"version\":{VERSION}}}\n").into_bytes();
    for item in outbox.all_items() {
        entry_line(&mut out, item);
    }
    let (drops, unattributed) = outbox.drops();
    drops_line(&mut out, drops, unattributed);
    out
}

/// What the sync thread should do now.
pub enum Due {
    Nothing,
    Sync(Arc<File>),
    Rewrite,
}

/// The open journal of one spool directory.
pub struct Journal {
    dir: PathBuf,
    /// None until the first rewrite, and after a failed write.
    file: Option<Arc<File>>,
    len: u64,
    rewritten_len: u64,
    unsynced: bool,
    /// When writing last failed (warned once, then retried every RETRY).
    failed: Option<Instant>,
}

fn create_excl(path: &Path) -> std::io::Result<File> {
    // O_EXCL never follows a symlink; O_NOFOLLOW says so twice.
    OpenOptions::new().write(true).create_new(true).mode(0o600).custom_flags(libc::O_NOFOLLOW).open(path)
}

impl Journal {
    /// A journal for a directory [`prepare`] accepted; nothing is written
    /// before the first [`Journal::rewrite`].
    pub fn new(dir: PathBuf) -> Journal {
        Journal { dir, file: None, len: 0, rewritten_len: 0, unsynced: false, failed: None }
    }

    /// Replaces the journal by `bytes` (from [`snapshot`]), durably.
    pub fn rewrite(&mut self, bytes: &[u8]) -> Result<(), SpoolError> {
        let tmp = self.dir.join(TMP);
        let result = self.replace(&tmp, bytes);
        match &result {
            Ok(()) if self.failed.take().is_some() => {
                log::info!("spool {}: the journal is written again", self.dir.display())
            }
            Ok(()) => {}
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                self.fail(e);
            }
        }
        result
    }

    fn replace(&mut self, tmp: &Path, bytes: &[u8]) -> Result<(), SpoolError> {
        let path = self.dir.join(FILE);
        let io = |source| SpoolError::Io { path: path.clone(), source };
        let mut f = match create_excl(tmp) {
            // Left by a rewrite that failed midway, or planted: unlink, never follow.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                std::fs::remove_file(tmp).and_then(|()| create_excl(tmp)).map_err(io)?
            }
            r => r.map_err(io)?,
        };
        f.write_all(bytes).and_then(|()| f.sync_all()).map_err(io)?;
        std::fs::rename(tmp, &path).map_err(io)?;
        // The rename itself is durable only once the directory is synced.
        File::open(&self.dir).and_then(|d| d.sync_all()).map_err(io)?;
        self.file = Some(Arc::new(f));
        self.len = bytes.len() as u64;
        self.rewritten_len = self.len;
        self.unsynced = false;
        Ok(())
    }

    fn fail(&mut self, e: &dyn std::fmt::Display) {
        if self.failed.is_none() {
            log::warn!(
                "{e}; the spool journal is not kept: events stay in the memory cache (a crash loses them), and it \
                 is rewritten as soon as it can be (tried every {}s)",
                RETRY.as_secs()
            );
        } else {
            log::debug!("{e}");
        }
        self.failed = Some(Instant::now());
        self.file = None;
    }

    /// Appends what changed in the cache. Without a file (not yet written,
    /// or failing) nothing is: the next rewrite holds it all.
    pub fn append(&mut self, c: Changes) {
        let Some(file) = &self.file else { return };
        let mut out = Vec::new();
        for item in &c.entered {
            entry_line(&mut out, item);
        }
        if !c.gone.is_empty() {
            gone_line(&mut out, c.gone);
        }
        if let Some((drops, unattributed)) = &c.drops {
            drops_line(&mut out, drops, *unattributed);
        }
        if out.is_empty() {
            return;
        }
        match (&**file).write_all(&out) {
            Ok(()) => {
                self.len += out.len() as u64;
                self.unsynced = true;
            }
            Err(e) => {
                let path = self.dir.join(FILE);
                self.fail(&SpoolError::Io { path, source: e });
            }
        }
    }

    /// Called every SYNC_INTERVAL: a rewrite when the file grew past its
    /// bound or a failed one is due again, else an fsync of what was appended.
    pub fn due(&mut self, now: Instant, cache_bytes: u64) -> Due {
        let Some(file) = &self.file else {
            let retry = self.failed.is_none_or(|t| now.saturating_duration_since(t) >= RETRY);
            return if retry { Due::Rewrite } else { Due::Nothing };
        };
        let bound = self.rewritten_len.max(2 * cache_bytes).max(MIN_COMPACTION);
        if self.len - self.rewritten_len > bound {
            Due::Rewrite
        } else if std::mem::take(&mut self.unsynced) {
            Due::Sync(file.clone())
        } else {
            Due::Nothing
        }
    }

    /// An fsync failed: what was appended may not be on disk.
    pub fn sync_failed(&mut self, e: std::io::Error) {
        let path = self.dir.join(FILE);
        self.fail(&SpoolError::Io { path, source: e });
    }
}

// ---- Reading -------------------------------------------------------------

/// What loading the spool found.
#[derive(Debug, Default)]
pub struct Recovery {
    /// Events taken back into the cache.
    pub events: usize,
    /// Events past maxLocalCacheSizeInBytes, counted in transport_cache_full.
    pub over_bound: u64,
    /// Records refused, counted in spool_records_lost.
    pub lost: u64,
    /// The first problems, "line N: why".
    pub problems: Vec<String>,
}

impl Recovery {
    fn problem(&mut self, line: usize, why: impl std::fmt::Display) {
        if self.problems.len() < NAMED_PROBLEMS {
            self.problems.push(format!("line {line}: {why}"));
        }
    }

    /// The log lines a start gives.
    pub fn log(&self, dir: &Path) {
        let dir = dir.display();
        if self.events > 0 {
            log::info!("spool {dir}: {} events from the previous run queued for sending", self.events);
        }
        if self.over_bound > 0 {
            log::warn!(
                "spool {dir}: {} events past maxLocalCacheSizeInBytes not taken back (counted in \
                 transport_cache_full)",
                self.over_bound
            );
        }
        if self.lost > 0 || !self.problems.is_empty() {
            log::warn!(
                "spool {dir}: {} unreadable records lost (counted in spool_records_lost of the next \
                 DroppedEventsStatistics); {}",
                self.lost,
                self.problems.join("; ")
            );
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Line<'a> {
    version: Option<u32>,
    seq: Option<u64>,
    event_type: Option<String>,
    priority: Option<Priority>,
    hits: Option<u64>,
    carried: Option<(String, Drops)>,
    #[serde(borrow)]
    event: Option<&'a RawValue>,
    gone: Option<Vec<(u64, u64)>>,
    drops: Option<BTreeMap<String, Drops>>,
    unattributed: Option<u64>,
}

/// The envelope-level fields every event object has.
#[derive(Deserialize)]
struct Shape {
    event_type: String,
    #[allow(dead_code)]
    window_start: String,
    #[allow(dead_code)]
    window_end: String,
    payload: serde_json::Map<String, serde_json::Value>,
}

enum Record {
    Head(u32),
    Entry(Item),
    Gone(Vec<(u64, u64)>),
    Drops(Vec<(EventType, Drops)>, u64),
}

/// A refused record, and its event type when that could be told.
struct Bad(Option<EventType>, String);

/// The event type named at the start of a record that did not parse (a
/// truncated one, say): entries begin `{"seq":N,"event_type":"Name"`.
fn guess_type(line: &[u8]) -> Option<EventType> {
    const KEY: &[u8] = b"\"event_type\":\"";
    let head = &line[..line.len().min(64)];
    let at = head.windows(KEY.len()).position(|w| w == KEY)? + KEY.len();
    let name = line[at..].split(|&b| b == b'"').next()?;
    EventType::from_name(std::str::from_utf8(name).ok()?)
}

fn decode_line(line: &[u8]) -> Result<Record, Bad> {
    let text = std::str::from_utf8(line).map_err(|e| Bad(guess_type(line), format!("not UTF-8 ({e})")))?;
    let l: Line = serde_json::from_str(text).map_err(|e| Bad(guess_type(line), format!("not a record ({e})")))?;
    let entry = l.seq.is_some()
        || l.event_type.is_some()
        || l.priority.is_some()
        || l.hits.is_some()
        || l.carried.is_some()
        || l.event.is_some();
    let kinds = [l.version.is_some(), entry, l.gone.is_some(), l.drops.is_some() || l.unattributed.is_some()];
    if kinds.iter().filter(|k| **k).count() != 1 {
        return Err(Bad(guess_type(line), "not one kind of record".into()));
    }
    if let Some(v) = l.version {
        return Ok(Record::Head(v));
    }
    if let Some(gone) = l.gone {
        if let Some((a, b)) = gone.iter().find(|(a, b)| a > b) {
            return Err(Bad(None, format!("gone range [{a},{b}] is backwards")));
        }
        return Ok(Record::Gone(gone));
    }
    if !entry {
        let mut drops = Vec::new();
        for (name, d) in l.drops.unwrap_or_default() {
            let t = EventType::from_name(&name).ok_or_else(|| Bad(None, format!("unknown event type {name:?}")))?;
            drops.push((t, d));
        }
        return Ok(Record::Drops(drops, l.unattributed.unwrap_or(0)));
    }
    let (Some(seq), Some(name), Some(priority), Some(hits), Some(event)) =
        (l.seq, l.event_type, l.priority, l.hits, l.event)
    else {
        return Err(Bad(guess_type(line), "an event record lacks seq, event_type, priority, hits or event".into()));
    };
    let t = EventType::from_name(&name).ok_or_else(|| Bad(None, format!("unknown event type {name:?}")))?;
    let bad = |why: String| Bad(Some(t), why);
    if !priority.enabled() {
        return Err(bad("priority Off is never queued".into()));
    }
    let carried = match l.carried {
        Some((source, drops)) => Some(Carried {
            source: EventType::from_name(&source).ok_or_else(|| bad(format!("unknown carried type {source:?}")))?,
            drops,
        }),
        None => None,
    };
    check_event(t, hits, carried, event.get()).map_err(bad)?;
    let (carried, bytes) = (carried.map(Box::new), event.get().as_bytes().into());
    Ok(Record::Entry(Item { seq, event_type: t, priority, hits, carried, bytes }))
}

/// The event object must be one of type `t` whose counts are the ones its
/// metadata (and so the drop accounting) uses.
fn check_event(t: EventType, hits: u64, carried: Option<Carried>, event: &str) -> Result<(), String> {
    let e: Shape = serde_json::from_str(event).map_err(|e| format!("not an event ({e})"))?;
    if e.event_type != t.name() {
        return Err(format!("an event of type {:?} under {}", e.event_type, t.name()));
    }
    let count = |field: &str| match e.payload.get(field) {
        None => Ok(0),
        Some(v) => v.as_u64().ok_or_else(|| format!("{field} is not a count")),
    };
    let has_hits = matches!(t, EventType::ProcessCreate | EventType::ProcessTerminate | EventType::ConnectionCreate);
    if has_hits && !e.payload.contains_key("hit_count") {
        return Err("hit_count missing".into());
    }
    if count("hit_count")? != hits {
        return Err(format!("hits {hits} is not the event's hit_count"));
    }
    let expected = if t == EventType::DroppedEventsStatistics {
        let source = e.payload.get("source_event_type").and_then(|s| s.as_str()).unwrap_or_default();
        let source = EventType::from_name(source).ok_or_else(|| format!("unknown source_event_type {source:?}"))?;
        let drops = Drops {
            records: count("transport_cache_full")?,
            hits: count("transport_cache_full_hits")?,
            spool_lost: count("spool_records_lost")?,
        };
        Some(Carried { source, drops })
    } else {
        None
    };
    if carried != expected {
        return Err("carried counts are not the event's".into());
    }
    Ok(())
}

/// Reads one line (without its newline) into `buf`, keeping at most `max`
/// bytes: Some(true) for a longer line, consumed to its end; None at EOF.
fn read_record(r: &mut impl BufRead, buf: &mut Vec<u8>, max: usize) -> std::io::Result<Option<bool>> {
    buf.clear();
    let (mut any, mut overlong) = (false, false);
    loop {
        let chunk = r.fill_buf()?;
        if chunk.is_empty() {
            return Ok(any.then_some(overlong));
        }
        any = true;
        let (part, used, done) = match chunk.iter().position(|&b| b == b'\n') {
            Some(i) => (&chunk[..i], i + 1, true),
            None => (chunk, chunk.len(), false),
        };
        if !overlong && buf.len() + part.len() > max {
            overlong = true;
            buf.clear();
        }
        if !overlong {
            buf.extend_from_slice(part);
        }
        r.consume(used);
        if done {
            return Ok(Some(overlong));
        }
    }
}

/// Loading state: what the journal says the cache held, within the bound.
struct Load<'o> {
    outbox: &'o mut Outbox,
    bound: u64,
    live: BTreeMap<u64, Item>,
    live_bytes: u64,
    /// Entries past the bound, without their bytes: (type, hits, carried).
    refused: BTreeMap<u64, (EventType, u64, Option<Carried>)>,
    last_seq: Option<u64>,
    drops: Option<(Vec<(EventType, Drops)>, u64)>,
    lost: BTreeMap<Option<EventType>, u64>,
    r: Recovery,
}

impl Load<'_> {
    fn lost(&mut self, t: Option<EventType>, line: usize, why: impl std::fmt::Display) {
        let n = self.lost.entry(t).or_default();
        *n = n.saturating_add(1);
        self.r.lost = self.r.lost.saturating_add(1);
        self.r.problem(line, why);
    }

    fn entry(&mut self, item: Item, line: usize) {
        if let Some(last) = self.last_seq.filter(|&l| item.seq <= l) {
            return self.lost(Some(item.event_type), line, format!("seq {} is not after {last}", item.seq));
        }
        self.last_seq = Some(item.seq);
        let len = item.bytes.len() as u64;
        if self.live_bytes + len <= self.bound {
            self.live_bytes += len;
            self.live.insert(item.seq, item);
        } else if self.refused.len() < MAX_REFUSED {
            self.refused.insert(item.seq, (item.event_type, item.hits, item.carried.as_deref().copied()));
        } else {
            self.outbox.count_dropped(item.event_type, item.hits, item.carried.as_deref().copied());
            self.r.over_bound += 1;
        }
    }

    fn gone(&mut self, ranges: Vec<(u64, u64)>) {
        for (a, b) in ranges {
            let keys: Vec<u64> = self.live.range(a..=b).map(|(k, _)| *k).collect();
            for k in keys {
                let item = self.live.remove(&k).expect("key exists");
                self.live_bytes -= item.bytes.len() as u64;
            }
            let keys: Vec<u64> = self.refused.range(a..=b).map(|(k, _)| *k).collect();
            for k in keys {
                self.refused.remove(&k);
            }
        }
    }

    fn finish(mut self) -> Recovery {
        let o = self.outbox;
        if let Some((drops, unattributed)) = self.drops.take() {
            for (t, d) in drops {
                o.add_drops(t, d);
            }
            o.add_spool_lost_unknown(unattributed);
        }
        for (t, n) in self.lost {
            match t {
                Some(t) => o.add_drops(t, Drops { spool_lost: n, ..Drops::default() }),
                None => o.add_spool_lost_unknown(n),
            }
        }
        for (t, hits, carried) in self.refused.into_values() {
            o.count_dropped(t, hits, carried);
            self.r.over_bound += 1;
        }
        self.r.events = self.live.len();
        for item in self.live.into_values() {
            o.restore(item);
        }
        self.r
    }
}

/// Streams a journal into `outbox`: every good record is kept, every bad
/// one counted, within maxLocalCacheSizeInBytes.
pub fn decode(reader: impl Read, outbox: &mut Outbox) -> Recovery {
    let bound = outbox.settings().max_cache_bytes;
    let mut st = Load {
        outbox,
        bound,
        live: BTreeMap::new(),
        live_bytes: 0,
        refused: BTreeMap::new(),
        last_seq: None,
        drops: None,
        lost: BTreeMap::new(),
        r: Recovery::default(),
    };
    let mut reader = BufReader::with_capacity(64 << 10, reader);
    let mut buf = Vec::new();
    let mut n = 0;
    loop {
        let overlong = match read_record(&mut reader, &mut buf, MAX_RECORD) {
            Ok(Some(o)) => o,
            Ok(None) => break,
            Err(e) => {
                st.r.problem(n + 1, format!("reading stopped: {e}"));
                break;
            }
        };
        n += 1;
        if overlong {
            st.lost(None, n, format!("longer than {MAX_RECORD} bytes"));
            continue;
        }
        if buf.is_empty() {
            continue;
        }
        match decode_line(&buf) {
            Ok(Record::Head(VERSION)) if n == 1 => {}
            Ok(Record::Head(v)) => st.lost(None, n, format!("a head of version {v} (this agent writes {VERSION})")),
            Ok(Record::Entry(item)) => st.entry(item, n),
            Ok(Record::Gone(ranges)) => st.gone(ranges),
            Ok(Record::Drops(d, u)) => st.drops = Some((d, u)),
            // A foreign first line is a missing head, not a lost record.
            Err(Bad(_, why)) if n == 1 => st.r.problem(1, format!("not a version {VERSION} journal ({why})")),
            Err(Bad(t, why)) => st.lost(t, n, why),
        }
    }
    st.finish()
}

/// Loads the journal of `dir`, if any, into `outbox`. Never fails: what
/// cannot be read is counted and named in the result.
pub fn load(dir: &Path, outbox: &mut Outbox) -> Recovery {
    let path = dir.join(FILE);
    let mut r = Recovery::default();
    // O_NONBLOCK: a FIFO put there must not hang the start.
    let file = OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK).open(&path);
    match file {
        Ok(f) if f.metadata().is_ok_and(|m| m.is_file()) => decode(f, outbox),
        Ok(_) => {
            r.problem(0, format!("{FILE} is not a regular file; not read"));
            r
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => r,
        Err(e) => {
            r.problem(0, format!("cannot open {FILE} ({e}); not read"));
            r
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::TransportSettings;
    use std::os::unix::fs::PermissionsExt;

    fn outbox(cache: u64) -> Outbox {
        Outbox::new(TransportSettings { max_cache_bytes: cache, ..TransportSettings::default() }, Instant::now())
    }

    fn process(n: usize, hits: u64) -> Vec<u8> {
        format!(
            r#"{{"event_type":"ProcessCreate","window_start":"a","window_end":"b","payload":{{"commandline":"x\ny {n:03}","hit_count":{hits}}}}}"#
        )
        .into_bytes()
    }

    fn stats(source: &str, records: u64, hits: u64) -> Vec<u8> {
        format!(
            r#"{{"event_type":"DroppedEventsStatistics","window_start":"a","window_end":"b","payload":{{"source_event_type":"{source}","transport_cache_full":{records},"transport_cache_full_hits":{hits},"spool_records_lost":0}}}}"#
        )
        .into_bytes()
    }

    fn push(o: &mut Outbox, n: usize) {
        o.push(EventType::ProcessCreate, Priority::Medium, 2, None, process(n, 2));
    }

    /// A directory of its own under the temp dir, removed on drop.
    struct TempDir(PathBuf);
    impl TempDir {
        fn new(tag: &str) -> TempDir {
            static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
            let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let d = std::env::temp_dir().join(format!("hc-spool-{tag}-{}-{n}", std::process::id()));
            let _ = std::fs::remove_dir_all(&d);
            std::fs::DirBuilder::new().mode(0o700).create(&d).unwrap();
            TempDir(d)
        }
    }
    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn journal(dir: &Path, o: &mut Outbox) -> Journal {
        let mut j = Journal::new(prepare(dir, 1 << 20).unwrap());
        j.rewrite(&snapshot(o)).unwrap();
        j
    }

    fn bodies(o: &Outbox) -> Vec<Vec<u8>> {
        o.all_items().iter().map(|i| i.bytes.to_vec()).collect()
    }

    #[test]
    fn round_trips_events_drops_and_carried_counts() {
        let mut o = outbox(1 << 20);
        push(&mut o, 0);
        let c = Carried { source: EventType::ProcessTerminate, drops: Drops::new(2, 9) };
        o.push(EventType::DroppedEventsStatistics, Priority::Low, 0, Some(c), stats("ProcessTerminate", 2, 9));
        o.add_drops(EventType::ProcessCreate, Drops::new(3, 30));
        o.add_spool_lost_unknown(4);
        let mut fresh = outbox(1 << 20);
        let r = decode(&snapshot(&mut o)[..], &mut fresh);
        assert_eq!((r.events, r.lost, r.over_bound), (2, 0, 0), "{:?}", r.problems);
        assert_eq!(bodies(&fresh), bodies(&o));
        let items = fresh.all_items();
        assert_eq!((items[0].priority, items[0].hits), (Priority::Medium, 2));
        assert_eq!(items[1].carried.as_deref(), Some(&c));
        assert_eq!(fresh.take_drops(EventType::ProcessCreate), Drops { records: 3, hits: 30, spool_lost: 4 });
        assert!(fresh.has_ready(), "restored events go out at once");
    }

    #[test]
    fn acknowledged_and_dropped_events_are_gone_after_a_crash() {
        let dir = TempDir::new("gone");
        let mut o = outbox(4000);
        let mut j = journal(&dir.0, &mut o);
        for n in 0..40 {
            push(&mut o, n);
        }
        j.append(o.take_changes());
        o.flush_all();
        let frame = |p: Priority| {
            super::super::envelope::Frame::new(&super::super::envelope::Header {
                schema_version: 1,
                device_id: "d",
                agent_version: "v",
                sent_at: "t",
                priority: p.wire_name(),
            })
        };
        let m = o.next_message(frame).unwrap();
        assert!(o.ack(m.id));
        j.append(o.take_changes());
        let dropped = o.take_drops(EventType::ProcessCreate);
        assert!(dropped.records > 0, "the 4000-byte cache dropped some");
        j.append(o.take_changes());
        // No shutdown: what is on disk is what a SIGKILL leaves.
        let mut fresh = outbox(4000);
        let r = load(&dir.0, &mut fresh);
        assert_eq!(r.events, o.len(), "{:?}", r.problems);
        assert_eq!(bodies(&fresh), bodies(&o));
        assert_eq!(fresh.take_drops(EventType::ProcessCreate), Drops::default(), "the drops were taken");
        assert_eq!(dropped.records as usize + m.events + o.len(), 40);
    }

    #[test]
    fn truncated_corrupt_and_invalid_records_are_counted_and_the_rest_kept() {
        let mut o = outbox(1 << 20);
        for n in 0..5 {
            push(&mut o, n);
        }
        let good = snapshot(&mut o);
        let lines: Vec<&[u8]> = good.split(|&b| b == b'\n').filter(|l| !l.is_empty()).collect();
        let entry = |n: u64, event: &[u8], hits: u64| {
            format!(r#"{{"seq":{n},"event_type":"ProcessCreate","priority":"High","hits":{hits},"event":"#)
                .into_bytes()
                .into_iter()
                .chain(event.iter().copied())
                .chain(*b"}")
                .collect::<Vec<u8>>()
        };
        let mut file = Vec::new();
        let mut add = |l: &[u8]| {
            file.extend_from_slice(l);
            file.push(b'\n');
        };
        add(lines[0]); // head
        add(lines[1]); // seq 0
        add(b"\xff\xfe not utf-8");
        add(lines[2]); // seq 1
        add(b"{\"seq\":7,\"event_type\":\"ProcessCreate\" garbage");
        add(&entry(8, br#"[1,2]"#, 2)); // not an event
        add(&entry(9, &process(9, 5), 2)); // hits disagree
        add(&entry(10, &stats("ProcessCreate", 1, 1), 0)); // an event of another type
        add(&[b'x'; MAX_RECORD + 10]); // overlong
        add(lines[1]); // seq 0 again: not after 1
        add(br#"{"drops":{"Nope":{"records":1,"hits":1}}}"#);
        add(lines[3]); // seq 2
        file.extend_from_slice(&lines[4][..lines[4].len() / 2]); // truncated, no newline
        let mut fresh = outbox(1 << 20);
        let r = decode(&file[..], &mut fresh);
        assert_eq!(r.events, 3, "{:?}", r.problems);
        assert_eq!(r.lost, 9, "{:?}", r.problems);
        assert_eq!(r.problems.len(), NAMED_PROBLEMS);
        assert!(r.problems[0].starts_with("line 3: not UTF-8"), "{:?}", r.problems);
        assert_eq!(bodies(&fresh), vec![process(0, 2), process(1, 2), process(2, 2)]);
        // Attributed where the type shows (7, 8, 9, 10, seq 0 again, the
        // truncated one), else to the first statistics taken.
        assert_eq!(fresh.take_drops(EventType::ProcessCreate).spool_lost, 6 + 3);
        assert_eq!(fresh.take_drops(EventType::ProcessCreate).spool_lost, 0, "taken once");
    }

    #[test]
    fn foreign_files_start_empty_and_count_what_they_held() {
        let v1 =
            b"{\"version\":1,\"drops\":{}}\n{\"event_type\":\"ProcessCreate\",\"priority\":\"Low\",\"hits\":1}\n{}\n";
        for (file, lost) in [(&v1[..], 2), (b"\x7fELF\x02\x01\x01\0\0\0", 0), (b"", 0), (b"\n\n[]\nnull\n", 2)] {
            let mut o = outbox(1 << 20);
            let r = decode(file, &mut o);
            assert_eq!((r.events, r.lost), (0, lost), "{:?}", r.problems);
            assert!(o.is_empty());
            // The v1 metadata line names its type; the rest ride with the first taken.
            let terminate = o.take_drops(EventType::ProcessTerminate).spool_lost;
            assert_eq!(terminate + o.take_drops(EventType::ProcessCreate).spool_lost, lost);
        }
    }

    #[test]
    fn loading_stops_at_the_cache_bound_and_counts_the_rest() {
        let mut o = outbox(1 << 20);
        for n in 0..100 {
            push(&mut o, n);
        }
        let file = snapshot(&mut o);
        let len = process(0, 2).len() as u64;
        let mut small = outbox(30 * len + 5);
        let r = decode(&file[..], &mut small);
        assert_eq!((r.events, r.over_bound), (30, 70));
        assert!(small.bytes() <= 30 * len + 5);
        assert_eq!(*small.all_items()[0].bytes, *process(0, 2), "the first of the file are kept");
        assert_eq!(small.take_drops(EventType::ProcessCreate), Drops::new(70, 140));
        // Past the bound, a later tombstone still says an entry had left.
        let mut file = file;
        file.extend_from_slice(b"{\"gone\":[[0,9],[95,99]]}\n");
        let mut small = outbox(30 * len + 5);
        let r = decode(&file[..], &mut small);
        assert_eq!((r.events, r.over_bound), (20, 65));
    }

    #[test]
    fn an_endless_line_costs_one_record_of_memory() {
        let endless = std::io::repeat(b'x').take(50 << 20).chain(&b"\n"[..]);
        let mut o = outbox(1 << 20);
        let mut reader = BufReader::new(endless);
        let mut buf = Vec::new();
        assert_eq!(read_record(&mut reader, &mut buf, MAX_RECORD).unwrap(), Some(true));
        assert!(buf.capacity() <= 2 * MAX_RECORD, "{}", buf.capacity());
        let r = decode(std::io::repeat(b'{').take(5 << 20), &mut o);
        assert_eq!(r.events, 0);
    }

    #[test]
    fn counters_saturate_instead_of_wrapping() {
        let mut d = Drops::new(u64::MAX - 1, u64::MAX);
        d.add(Drops { records: 5, hits: 5, spool_lost: 1 });
        assert_eq!(d, Drops { records: u64::MAX, hits: u64::MAX, spool_lost: 1 });
        let max = u64::MAX;
        let file = format!(
            "{{\"version\":2}}\n{{\"drops\":{{\"ProcessCreate\":{{\"records\":{max},\"hits\":{max}}}}},\"unattributed\":{max}}}\n"
        );
        let mut o = outbox(1 << 20);
        o.add_drops(EventType::ProcessCreate, Drops::new(3, 3));
        o.add_spool_lost_unknown(3);
        decode(file.as_bytes(), &mut o);
        assert_eq!(o.take_drops(EventType::ProcessCreate), Drops { records: max, hits: max, spool_lost: max });
    }

    #[test]
    fn unsafe_directories_are_refused() {
        let dir = TempDir::new("mode");
        let me = euid();
        check_dir(&dir.0, me).unwrap();
        let e = check_dir(&dir.0, me + 1).unwrap_err().to_string();
        assert!(e.contains("owned by uid") && e.contains("chmod 0700"), "{e}");
        for mode in [0o770, 0o702, 0o1777] {
            std::fs::set_permissions(&dir.0, std::fs::Permissions::from_mode(mode)).unwrap();
            let e = prepare(&dir.0, 1).unwrap_err().to_string();
            assert!(e.contains("lets group or others write it"), "{mode:o}: {e}");
        }
        // A safe directory inside one others can write (not sticky).
        std::fs::set_permissions(&dir.0, std::fs::Permissions::from_mode(0o777)).unwrap();
        let inner = dir.0.join("spool");
        let e = prepare(&inner, 1).unwrap_err().to_string();
        assert!(e.contains("lets another user replace it"), "{e}");
        // A file is not a directory.
        std::fs::set_permissions(&dir.0, std::fs::Permissions::from_mode(0o700)).unwrap();
        std::fs::remove_dir(&inner).unwrap();
        std::fs::write(&inner, b"").unwrap();
        assert!(prepare(&inner, 1).is_err());
        // A missing one is created, 0700.
        let fresh = dir.0.join("new/spool");
        prepare(&fresh, 1).unwrap();
        assert_eq!(std::fs::metadata(&fresh).unwrap().mode() & 0o077, 0);
    }

    #[test]
    fn symlinks_are_not_followed_and_files_are_0600() {
        let dir = TempDir::new("link");
        let victim = dir.0.join("victim");
        std::fs::write(&victim, b"precious").unwrap();
        let spool = dir.0.join("spool");
        std::fs::DirBuilder::new().mode(0o700).create(&spool).unwrap();
        std::os::unix::fs::symlink(&victim, spool.join(TMP)).unwrap();
        // prepare removes it as stale; plant it again behind its back.
        let mut j = Journal::new(prepare(&spool, 1).unwrap());
        assert!(!spool.join(TMP).exists());
        std::os::unix::fs::symlink(&victim, spool.join(TMP)).unwrap();
        let mut o = outbox(1 << 20);
        push(&mut o, 1);
        j.rewrite(&snapshot(&mut o)).unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious", "the link was not followed");
        let m = std::fs::symlink_metadata(spool.join(FILE)).unwrap();
        assert!(m.is_file());
        assert_eq!(m.mode() & 0o777, 0o600);
        // A journal that is a symlink is not read.
        std::fs::remove_file(spool.join(FILE)).unwrap();
        let elsewhere = dir.0.join("elsewhere");
        std::fs::write(&elsewhere, snapshot(&mut o)).unwrap();
        std::os::unix::fs::symlink(&elsewhere, spool.join(FILE)).unwrap();
        let mut fresh = outbox(1 << 20);
        let r = load(&spool, &mut fresh);
        assert_eq!(r.events, 0);
        assert!(r.problems[0].contains("not read"), "{:?}", r.problems);
    }

    #[test]
    fn an_unwritable_journal_warns_keeps_the_cache_and_recovers() {
        let dir = TempDir::new("full");
        let spool = prepare(&dir.0, 1).unwrap();
        // Where the temporary file goes, a directory: every rewrite fails.
        std::fs::create_dir(spool.join(TMP)).unwrap();
        let mut j = Journal::new(spool.clone());
        let mut o = outbox(1 << 20);
        push(&mut o, 1);
        assert!(j.rewrite(&snapshot(&mut o)).is_err());
        push(&mut o, 2);
        j.append(o.take_changes());
        assert_eq!(o.len(), 2, "the cache keeps what the disk could not");
        assert!(matches!(j.due(Instant::now(), 1), Due::Nothing), "not retried at once");
        assert!(matches!(j.due(Instant::now() + RETRY, 1), Due::Rewrite));
        std::fs::remove_dir(spool.join(TMP)).unwrap();
        j.rewrite(&snapshot(&mut o)).unwrap();
        let mut fresh = outbox(1 << 20);
        assert_eq!(load(&spool, &mut fresh).events, 2);
    }

    #[test]
    fn the_journal_is_rewritten_when_it_grows_and_synced_when_written() {
        let dir = TempDir::new("grow");
        let mut o = outbox(4000);
        let mut j = journal(&dir.0, &mut o);
        assert!(matches!(j.due(Instant::now(), 4000), Due::Nothing));
        push(&mut o, 0);
        j.append(o.take_changes());
        assert!(matches!(j.due(Instant::now(), 4000), Due::Sync(_)));
        assert!(matches!(j.due(Instant::now(), 4000), Due::Nothing), "synced once");
        let mut n = 1;
        while !matches!(j.due(Instant::now(), 4000), Due::Rewrite) {
            push(&mut o, n);
            o.take_drops(EventType::ProcessCreate);
            j.append(o.take_changes());
            n += 1;
        }
        let before = std::fs::metadata(dir.0.join(FILE)).unwrap().len();
        assert!(before > MIN_COMPACTION);
        j.rewrite(&snapshot(&mut o)).unwrap();
        let after = std::fs::metadata(dir.0.join(FILE)).unwrap().len();
        assert!(after < 8000, "{after} bytes for a 4000-byte cache");
        let mut fresh = outbox(4000);
        assert_eq!(load(&dir.0, &mut fresh).events, o.len());
        assert_eq!(bodies(&fresh), bodies(&o));
    }
}
