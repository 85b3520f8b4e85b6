//! Configuration parsing: a local layer (RawConfig::parse, config::load_layer)
//! and a desired payload over it (agent::desired_config). The input is split
//! at its first NUL: before it the local file, after it the desired payload
//! (no NUL: the whole input is both).
use agent_user::{
    agent::desired_config,
    config::{load_layer, Config, RawConfig},
};

pub fn check(data: &[u8]) {
    let (local, desired) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, data),
    };
    let local_text = String::from_utf8_lossy(local);
    let parsed = RawConfig::parse(&local_text, "fuzz local");
    let layered = load_layer(&local_text, "fuzz local", &RawConfig::default());
    let local_raw = match (parsed, layered) {
        (Ok(raw), Ok((layer, config))) => {
            assert_eq!(raw, layer, "parse and load_layer read the same properties");
            round_trips(&config);
            raw
        }
        // parse refuses only wrong types and unknown names; ranges are
        // load_layer's, so a parsed layer may still be refused there.
        (Ok(_), Err(_)) | (Err(_), Err(_)) => RawConfig::default(),
        (Err(e), Ok(_)) => panic!("parse refused what load_layer accepted: {e}"),
    };
    if let Ok(config) = desired_config(&local_raw, desired) {
        round_trips(&config);
    }
}

/// What the agent reports (`to_raw`) must read back as the same configuration.
fn round_trips(config: &Config) {
    let text = serde_json::to_string(&config.to_raw()).expect("config serializes");
    let again = RawConfig::parse(&text, "fuzz reported")
        .and_then(|raw| raw.resolve(&Config::default(), "fuzz reported"))
        .unwrap_or_else(|e| panic!("the reported configuration {text} is refused: {e}"));
    assert_eq!(&again, config, "reported as {text}");
}
