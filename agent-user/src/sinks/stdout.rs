//! The embedded default: one JSON object per line on stdout.
use std::io::Write;

use super::{Sink, SinkError};
use crate::report::Event;

pub struct StdoutSink<W: Write> {
    out: W,
}

impl StdoutSink<std::io::Stdout> {
    pub fn stdout() -> Self {
        StdoutSink { out: std::io::stdout() }
    }
}

impl<W: Write> StdoutSink<W> {
    pub fn new(out: W) -> Self {
        StdoutSink { out }
    }
}

impl<W: Write> Sink for StdoutSink<W> {
    fn publish(&mut self, events: &mut dyn Iterator<Item = Event>) -> Result<(), SinkError> {
        for e in events {
            serde_json::to_writer(&mut self.out, &e).map_err(std::io::Error::from)?;
            self.out.write_all(b"\n")?;
        }
        // A reader (a pipe, `jq`) sees each window as soon as it closes.
        self.out.flush()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{DroppedEventsStatistics, Payload, Window};
    use std::time::UNIX_EPOCH;

    #[test]
    fn one_json_object_per_line() {
        let w = Window { start: UNIX_EPOCH, end: UNIX_EPOCH };
        let e = w.event(Payload::DroppedEventsStatistics(DroppedEventsStatistics {
            source_event_type: crate::events::EventType::ProcessCreate,
            ..Default::default()
        }));
        let mut buf = Vec::new();
        StdoutSink::new(&mut buf).publish(&mut [e.clone(), e].into_iter()).unwrap();
        let text = String::from_utf8(buf).unwrap();
        let lines: Vec<_> = text.lines().collect();
        assert_eq!(lines.len(), 2);
        let v: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
        assert_eq!(v["event_type"], "DroppedEventsStatistics");
    }
}
