//! The spool journal decoder (transport::spool::decode): whatever the bytes,
//! it keeps within the cache bound and accounts for every line; what it
//! kept, written back by `snapshot`, decodes to the same events with nothing
//! refused.
use std::time::Instant;

use agent_user::{
    config::TransportSettings,
    transport::{outbox::Outbox, spool},
};

pub fn check(data: &[u8]) {
    let settings = TransportSettings::default();
    let mut outbox = Outbox::new(settings, Instant::now());
    let _ = spool::decode(data, &mut outbox);
    let kept: Vec<_> = outbox.all_items().iter().map(|i| (i.event_type, i.hits, i.bytes.clone())).collect();
    let written = spool::snapshot(&mut outbox);
    let mut again = Outbox::new(settings, Instant::now());
    let second = spool::decode(written.as_slice(), &mut again);
    assert_eq!((second.lost, second.over_bound), (0, 0), "snapshot wrote what decode refuses: {:?}", second.problems);
    let reread: Vec<_> = again.all_items().iter().map(|i| (i.event_type, i.hits, i.bytes.clone())).collect();
    assert_eq!(kept, reread);
}
