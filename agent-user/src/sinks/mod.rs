//! Where events go. A sink knows the event objects and nothing of eBPF.
use crate::report::Event;

pub mod stdout;

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("writing events failed: {0}")]
    Io(#[from] std::io::Error),
}

pub trait Sink {
    /// Sends one window's events of one type, in order.
    fn publish(&mut self, events: &[Event]) -> Result<(), SinkError>;
}
