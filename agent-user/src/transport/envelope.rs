//! The MQTT message: an envelope around already-serialized events. Pure.
//!
//! Events are serialized once, when their window closes; an envelope is the
//! header below with those bytes spliced into its `events` array, so sizing a
//! message is arithmetic rather than trial serialization.
use serde::Serialize;

/// Bumped when a field changes meaning or disappears.
pub const SCHEMA_VERSION: u32 = 1;

/// Everything of an envelope except its events.
#[derive(Debug, Clone, Serialize)]
pub struct Header<'a> {
    pub schema_version: u32,
    pub device_id: &'a str,
    pub agent_version: &'a str,
    /// RFC 3339: when the message was formed.
    pub sent_at: &'a str,
    pub priority: &'a str,
}

/// The bytes before the first event and after the last one.
pub struct Frame {
    prefix: Vec<u8>,
}

const SUFFIX: &[u8] = b"]}";

impl Frame {
    pub fn new(header: &Header<'_>) -> Frame {
        let mut prefix = serde_json::to_vec(header).expect("header serializes");
        // `{...}` -> `{...,"events":[`
        prefix.pop();
        prefix.extend_from_slice(br#","events":["#);
        Frame { prefix }
    }

    /// Bytes of an envelope with no events.
    pub fn overhead(&self) -> usize {
        self.prefix.len() + SUFFIX.len()
    }

    /// Size of the envelope holding events of these sizes (commas included).
    pub fn size_with(&self, event_sizes: impl IntoIterator<Item = usize>) -> usize {
        let mut n: usize = 0;
        let mut total = self.overhead();
        for s in event_sizes {
            total += s;
            n += 1;
        }
        total + n.saturating_sub(1)
    }

    /// The largest event that fits in a message of `max` bytes on its own.
    pub fn max_event(&self, max: usize) -> usize {
        max.saturating_sub(self.overhead())
    }

    pub fn build<'a>(&self, events: impl IntoIterator<Item = &'a [u8]>) -> Vec<u8> {
        let mut out = self.prefix.clone();
        for (i, e) in events.into_iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(e);
        }
        out.extend_from_slice(SUFFIX);
        out
    }
}

/// Splits events (in order) into runs that each fit in one message of at
/// most `max` bytes. An event too large for any message is returned in
/// `oversized` (by index) and is in no run; no event is ever cut.
pub fn split(frame: &Frame, sizes: &[usize], max: usize) -> Split {
    let mut runs = Vec::new();
    let mut oversized = Vec::new();
    let mut start = None;
    let mut size = frame.overhead();
    for (i, &s) in sizes.iter().enumerate() {
        if s > frame.max_event(max) {
            if let Some(st) = start.take() {
                runs.push(st..i);
            }
            oversized.push(i);
            size = frame.overhead();
            continue;
        }
        match start {
            Some(_) if size + 1 + s <= max => {
                size += 1 + s;
            }
            Some(st) => {
                runs.push(st..i);
                start = Some(i);
                size = frame.overhead() + s;
            }
            None => {
                start = Some(i);
                size = frame.overhead() + s;
            }
        }
    }
    if let Some(st) = start {
        runs.push(st..sizes.len());
    }
    Split { runs, oversized }
}

#[derive(Debug, PartialEq, Eq)]
pub struct Split {
    pub runs: Vec<std::ops::Range<usize>>,
    pub oversized: Vec<usize>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame() -> Frame {
        Frame::new(&Header {
            schema_version: SCHEMA_VERSION,
            device_id: "dev\"1",
            agent_version: "0.1.0",
            sent_at: "2026-01-01T00:00:00.000Z",
            priority: "high",
        })
    }

    #[test]
    fn envelope_is_the_documented_json() {
        let f = frame();
        let bytes = f.build([br#"{"a":1}"#.as_slice(), br#"{"b":2}"#.as_slice()]);
        let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"schema_version":1,"device_id":"dev\"1","agent_version":"0.1.0",
                "sent_at":"2026-01-01T00:00:00.000Z","priority":"high","events":[{"a":1},{"b":2}]})
        );
        assert_eq!(bytes.len(), f.size_with([7, 7]));
        let empty = f.build(std::iter::empty());
        assert_eq!(empty.len(), f.overhead());
        assert!(serde_json::from_slice::<serde_json::Value>(&empty).is_ok());
    }

    #[test]
    fn split_keeps_every_message_under_the_bound_and_events_whole() {
        let f = frame();
        let events: Vec<Vec<u8>> =
            (0..500).map(|i| format!(r#"{{"n":{i},"pad":"{}"}}"#, "x".repeat(i % 97)).into_bytes()).collect();
        let sizes: Vec<usize> = events.iter().map(Vec::len).collect();
        let max = f.overhead() + 1000;
        let s = split(&f, &sizes, max);
        assert!(s.oversized.is_empty());
        assert!(s.runs.len() > 1, "a large batch is split");
        let mut next = 0;
        for r in &s.runs {
            assert_eq!(r.start, next, "runs are contiguous and in order");
            next = r.end;
            let msg = f.build(events[r.clone()].iter().map(Vec::as_slice));
            assert!(msg.len() <= max, "{} > {max}", msg.len());
            assert_eq!(msg.len(), f.size_with(sizes[r.clone()].iter().copied()));
            let v: serde_json::Value = serde_json::from_slice(&msg).unwrap();
            assert_eq!(v["events"].as_array().unwrap().len(), r.len());
            // Greedy: the next event would not have fit.
            if r.end < sizes.len() {
                assert!(f.size_with(sizes[r.start..=r.end].iter().copied()) > max);
            }
        }
        assert_eq!(next, 500);
    }

    #[test]
    fn exact_fit_and_one_byte_over() {
        let f = frame();
        let max = f.overhead() + 10 + 1 + 10;
        assert_eq!(split(&f, &[10, 10], max).runs, vec![0..2]);
        assert_eq!(split(&f, &[10, 11], max).runs, vec![0..1, 1..2]);
    }

    #[test]
    fn oversized_events_are_set_aside_not_cut() {
        let f = frame();
        let max = f.overhead() + 50;
        let s = split(&f, &[10, 51, 10, 10], max);
        assert_eq!(s.oversized, vec![1]);
        assert_eq!(s.runs, vec![0..1, 2..4]);
    }
}
