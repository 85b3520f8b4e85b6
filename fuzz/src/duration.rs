//! ISO 8601 durations: no input crashes the parser, and a parsed duration's
//! formatted form (duration::Iso8601) parses back to the same value.
use agent_user::duration::{parse_iso8601, Iso8601};

pub fn check(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(d) = parse_iso8601(text) {
        let formatted = Iso8601(d).to_string();
        assert_eq!(parse_iso8601(&formatted), Ok(d), "`{text}` formats as `{formatted}`");
    }
}
