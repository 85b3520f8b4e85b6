//! The DNS answer parser (net::dns) and the ring record decoder in front of
//! it (net::dns_message): raw bytes as a message, and the same bytes as a
//! ring record.
use agent_common::{DnsEvent, DNS_CAP};
use agent_user::net::{
    dns::{parse_query, parse_response, read_name, DnsCache},
    dns_message,
};

/// RFC 1035 3.1: 255 bytes on the wire, as read_name enforces it. In
/// presentation form a byte may print as four (`\DDD`).
const NAME_MAX: usize = 4 * 255;
/// The smallest resource record: a one-byte root name, type, class, TTL,
/// RDLENGTH and four bytes of A data.
const MIN_A_RECORD: usize = 1 + 10 + 4;

pub fn check(data: &[u8]) {
    message(data);
    // As a ring record: the kernel side fills the record; the bytes here
    // stand for all of it, the rest zero.
    let mut record = data.to_vec();
    record.resize(record.len().max(std::mem::size_of::<DnsEvent>()), 0);
    if let Some(m) = dns_message(&record) {
        assert!(m.data.len() <= DNS_CAP, "record data {} past DNS_CAP", m.data.len());
        message(&m.data);
    }
}

fn message(m: &[u8]) {
    let _ = parse_query(m);
    if let Ok(response) = parse_response(m) {
        let answers = response.answers;
        assert!(answers.len() * MIN_A_RECORD <= m.len(), "{} answers from {} bytes", answers.len(), m.len());
        let mut cache = DnsCache::new(4);
        for a in &answers {
            assert!(a.name.len() <= NAME_MAX, "name of {} bytes", a.name.len());
            assert_eq!(a.name, a.name.to_ascii_lowercase(), "names are lower-cased");
            assert!(a.name.bytes().all(|b| b.is_ascii_graphic()), "presentation form escapes every other byte");
            cache.insert(1, a, 1_000);
        }
        assert!(cache.len() <= 4);
    }
    // Names anywhere in the message, as compression pointers reach them.
    for at in 0..m.len().min(64) {
        if let Ok((name, next)) = read_name(m, at) {
            assert!(name.len() <= NAME_MAX, "name of {} bytes at {at}", name.len());
            assert!(next > at && next <= m.len(), "name at {at} ends at {next} of {}", m.len());
        }
    }
}
