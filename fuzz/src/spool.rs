//! The spool file decoder (transport::spool::decode): what it accepts,
//! written back by `encode`, decodes to the same events. Kept to the public
//! decode/encode pair so a new spool format only changes these lines.
use std::{path::Path, time::Instant};

use agent_user::{
    config::TransportSettings,
    transport::{outbox::Outbox, spool},
};

pub fn check(data: &[u8]) {
    let Ok((drops, items)) = spool::decode(data, Path::new("fuzz/queue.jsonl")) else { return };
    let mut outbox = Outbox::new(TransportSettings::default(), Instant::now());
    for (t, d) in drops {
        outbox.add_drops(t, d);
    }
    let mut first: Vec<_> = items.iter().map(|i| (i.event_type, i.hits, i.bytes.clone())).collect();
    for item in items {
        outbox.restore(item);
    }
    // The cache bound may drop the oldest events; compare what it kept.
    let kept = outbox.len();
    let encoded = spool::encode(&outbox);
    let (_, again) = spool::decode(&encoded, Path::new("fuzz/encoded"))
        .unwrap_or_else(|e| panic!("encode wrote what decode refuses: {e}"));
    let mut again: Vec<_> = again.iter().map(|i| (i.event_type, i.hits, i.bytes.clone())).collect();
    assert_eq!(again.len(), kept);
    first.drain(..first.len() - kept);
    first.sort();
    again.sort();
    assert_eq!(first, again);
}
