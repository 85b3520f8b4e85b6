//! `--spool-dir`: the local cache written to disk at shutdown and read back
//! at start, so that a restart of the agent loses nothing.
//!
//! Format (`queue.jsonl`): a head line `{"version":1,"drops":{...}}`, then
//! two lines per event, its metadata and the event object exactly as it will
//! be sent. Written to a temporary file, fsynced, then renamed over the old
//! one, so a crash while writing leaves the previous spool intact.
use std::{
    collections::BTreeMap,
    io::Write,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use super::outbox::{Carried, Drops, Item, Outbox};
use crate::config::{EventType, Priority};

pub const FILE: &str = "queue.jsonl";
const VERSION: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("spool {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}; move the file away to start without it")]
    Read(crate::limits::ReadError),
    #[error("spool {path} line {line}: {reason}; move the file away to start without it")]
    Corrupt { path: PathBuf, line: usize, reason: String },
}

#[derive(Serialize, Deserialize)]
struct Head {
    version: u32,
    drops: BTreeMap<String, Drops>,
}

#[derive(Serialize, Deserialize)]
struct Meta {
    event_type: String,
    priority: Priority,
    hits: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    carried: Option<(String, Drops)>,
}

/// The spool file's content for everything `outbox` holds.
pub fn encode(outbox: &Outbox) -> Vec<u8> {
    let head =
        Head { version: VERSION, drops: outbox.drops().iter().map(|(t, d)| (t.name().to_string(), *d)).collect() };
    let mut out = serde_json::to_vec(&head).expect("head serializes");
    out.push(b'\n');
    for item in outbox.all_items() {
        let meta = Meta {
            event_type: item.event_type.name().into(),
            priority: item.priority,
            hits: item.hits,
            carried: item.carried.map(|c| (c.source.name().to_string(), c.drops)),
        };
        serde_json::to_writer(&mut out, &meta).expect("meta serializes");
        out.push(b'\n');
        out.extend_from_slice(&item.bytes);
        out.push(b'\n');
    }
    out
}

/// What a spool file holds: unreported drops, and the events oldest first.
pub type Spooled = (Vec<(EventType, Drops)>, Vec<Item>);

/// Parses a spool file.
pub fn decode(text: &[u8], path: &Path) -> Result<Spooled, SpoolError> {
    let corrupt = |line: usize, reason: String| SpoolError::Corrupt { path: path.to_path_buf(), line, reason };
    let event_type = |line, name: &str| {
        EventType::from_name(name).ok_or_else(|| corrupt(line, format!("unknown event type {name}")))
    };
    let mut lines = text.split(|&b| b == b'\n').enumerate().filter(|(_, l)| !l.is_empty());
    let Some((_, head)) = lines.next() else { return Ok((Vec::new(), Vec::new())) };
    let head: Head = serde_json::from_slice(head).map_err(|e| corrupt(1, e.to_string()))?;
    if head.version != VERSION {
        return Err(corrupt(1, format!("version {} is not {VERSION}", head.version)));
    }
    let mut drops = Vec::new();
    for (name, d) in head.drops {
        drops.push((event_type(1, &name)?, d));
    }
    let mut items = Vec::new();
    while let Some((n, meta)) = lines.next() {
        let meta: Meta = serde_json::from_slice(meta).map_err(|e| corrupt(n + 1, e.to_string()))?;
        let (m, event) = lines.next().ok_or_else(|| corrupt(n + 2, "event line missing".into()))?;
        serde_json::from_slice::<serde::de::IgnoredAny>(event).map_err(|e| corrupt(m + 1, e.to_string()))?;
        let carried = match meta.carried {
            Some((source, drops)) => Some(Carried { source: event_type(n + 1, &source)?, drops }),
            None => None,
        };
        items.push(Item {
            seq: 0,
            event_type: event_type(n + 1, &meta.event_type)?,
            priority: meta.priority,
            hits: meta.hits,
            carried,
            bytes: event.to_vec(),
        });
    }
    Ok((drops, items))
}

/// Writes the spool durably; returns the number of events in it.
pub fn write(dir: &Path, outbox: &Outbox) -> Result<usize, SpoolError> {
    let path = dir.join(FILE);
    let io = |source| SpoolError::Io { path: path.clone(), source };
    std::fs::create_dir_all(dir).map_err(io)?;
    let tmp = dir.join(format!("{FILE}.tmp"));
    let mut f = std::fs::File::create(&tmp).map_err(io)?;
    f.write_all(&encode(outbox)).map_err(io)?;
    f.sync_all().map_err(io)?;
    std::fs::rename(&tmp, &path).map_err(io)?;
    // The rename itself is durable only once the directory is synced.
    std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io)?;
    Ok(outbox.len())
}

/// Loads the spool (if any) into `outbox` and removes it; returns the
/// number of events read.
pub fn load(dir: &Path, outbox: &mut Outbox) -> Result<usize, SpoolError> {
    let path = dir.join(FILE);
    // Bounded: event bytes up to the cache bound, and as much again for
    // their metadata lines.
    let max = outbox.settings().max_cache_bytes.saturating_mul(2).saturating_add(1 << 20);
    let text = match crate::limits::read_bounded("spool", &path, max) {
        Ok(t) => t,
        Err(e) if e.is_not_found() => return Ok(0),
        Err(e) => return Err(SpoolError::Read(e)),
    };
    let (drops, items) = decode(&text, &path)?;
    let n = items.len();
    for (t, d) in drops {
        outbox.add_drops(t, d);
    }
    for item in items {
        outbox.restore(item);
    }
    std::fs::remove_file(&path).map_err(|source| SpoolError::Io { path, source })?;
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::TransportSettings;
    use std::time::Instant;

    #[test]
    fn round_trips_events_drops_and_carried_counts() {
        let mut o = Outbox::new(TransportSettings::default(), Instant::now());
        o.push(EventType::ProcessCreate, Priority::Medium, 4, None, br#"{"a":"x\ny"}"#.to_vec());
        let c = Carried { source: EventType::ProcessTerminate, drops: Drops { records: 2, hits: 9 } };
        o.push(EventType::DroppedEventsStatistics, Priority::Low, 0, Some(c), br#"{"s":1}"#.to_vec());
        o.add_drops(EventType::ProcessCreate, Drops { records: 3, hits: 30 });
        let bytes = encode(&o);
        let (drops, items) = decode(&bytes, Path::new("x")).unwrap();
        assert_eq!(drops, vec![(EventType::ProcessCreate, Drops { records: 3, hits: 30 })]);
        assert_eq!(items.len(), 2);
        assert_eq!(items[0].bytes, br#"{"a":"x\ny"}"#);
        assert_eq!((items[0].priority, items[0].hits), (Priority::Medium, 4));
        assert_eq!(items[1].carried, Some(c));
    }

    #[test]
    fn write_then_load_restores_and_removes_the_file() {
        let dir =
            std::env::temp_dir().join(format!("hc-spool-{}-{:?}", std::process::id(), std::thread::current().id()));
        let mut o = Outbox::new(TransportSettings::default(), Instant::now());
        for n in 0..10 {
            o.push(EventType::ProcessCreate, Priority::Low, 1, None, format!(r#"{{"n":{n}}}"#).into_bytes());
        }
        assert_eq!(write(&dir, &o).unwrap(), 10);
        let mut fresh = Outbox::new(TransportSettings::default(), Instant::now());
        assert_eq!(load(&dir, &mut fresh).unwrap(), 10);
        assert!(!dir.join(FILE).exists());
        assert_eq!(fresh.bytes(), o.bytes());
        assert!(fresh.has_ready(), "restored events go out at once");
        assert_eq!(load(&dir, &mut fresh).unwrap(), 0, "nothing left");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_endless_spool_is_refused_with_its_bound() {
        let dir = std::env::temp_dir().join(format!(
            "hc-spool-zero-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        std::os::unix::fs::symlink("/dev/zero", dir.join(FILE)).unwrap();
        let mut o = Outbox::new(TransportSettings::default(), Instant::now());
        let e = load(&dir, &mut o).unwrap_err().to_string();
        let max = 2 * TransportSettings::default().max_cache_bytes + (1 << 20);
        assert!(e.contains(&format!("larger than {max} bytes")), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn corrupt_spool_is_named() {
        for bad in [
            &b"{\"version\":2,\"drops\":{}}\n"[..],
            b"nope\n",
            b"{\"version\":1,\"drops\":{}}\n{\"event_type\":\"X\",\"priority\":\"Low\",\"hits\":1}\n{}\n",
        ] {
            let e = decode(bad, Path::new("/s")).unwrap_err().to_string();
            assert!(e.contains("/s line"), "{e}");
        }
    }
}
