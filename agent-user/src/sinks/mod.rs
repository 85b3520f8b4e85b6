//! Where events go. A sink knows the event objects and nothing of eBPF.
use crate::{
    config::{Config, EventType, RawConfig},
    report::Event,
    transport::outbox::Drops,
};

pub mod stdout;

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("writing events failed: {0}")]
    Io(#[from] std::io::Error),
}

pub trait Sink {
    /// Sends one window's events of one type, in order. Each event is taken
    /// as it is made and dropped once written, so that a large window is
    /// never held whole, neither as events nor serialized.
    fn publish(&mut self, events: &mut dyn Iterator<Item = Event>) -> Result<(), SinkError>;

    /// Events of type `t` this sink dropped since the last call (a full
    /// local cache); reported in the next DroppedEventsStatistics of `t`.
    fn take_transport_drops(&mut self, _t: EventType) -> Drops {
        Drops::default()
    }

    /// Windows are about to close: a sink holding a backlog bounds it now,
    /// before their statistics take its drops, so that they count them.
    fn make_room(&mut self) {}

    /// A new effective configuration (priorities, frequencies, sizes).
    fn configure(&mut self, _config: &Config) {}

    /// Send everything queued now, whatever its priority's frequency.
    fn flush_now(&mut self) {}

    /// Publish the effective configuration where operators can see it.
    fn report_config(&mut self, _reported: &RawConfig) {}
}

impl<S: Sink + ?Sized> Sink for Box<S> {
    fn publish(&mut self, events: &mut dyn Iterator<Item = Event>) -> Result<(), SinkError> {
        (**self).publish(events)
    }
    fn take_transport_drops(&mut self, t: EventType) -> Drops {
        (**self).take_transport_drops(t)
    }
    fn make_room(&mut self) {
        (**self).make_room()
    }
    fn configure(&mut self, config: &Config) {
        (**self).configure(config)
    }
    fn flush_now(&mut self) {
        (**self).flush_now()
    }
    fn report_config(&mut self, reported: &RawConfig) {
        (**self).report_config(reported)
    }
}
