//! The checks behind the fuzz targets. Each takes arbitrary bytes, feeds
//! them to agent-user's parsers and panics only on a bug: a crash in the
//! parser, or a property of its result that does not hold. libFuzzer runs
//! them (fuzz_targets/NAME.rs); tests/replay.rs runs them on stable over
//! the committed corpus and regressions.
//!
//! Adding a target: a file here with `pub fn check(data: &[u8])`, its line
//! in `TARGETS`, a `[[bin]]` entry in Cargo.toml with its two-line
//! fuzz_targets/<name>.rs (`cargo fuzz add <name>` writes both) and seeds in
//! `corpus/<name>/` (tests/replay.rs fails if one of them is missing).
pub mod config;
pub mod dns;
pub mod duration;
pub mod firewall;
pub mod hostfs_parsers;
pub mod spool;

/// What a target or a parser does with one input: panics if a property fails.
pub type Check = fn(&[u8]);

/// Every target: its name (the binary, `corpus/<name>/`) and its check.
pub const TARGETS: &[(&str, Check)] = &[
    ("config", config::check),
    ("dns", dns::check),
    ("duration", duration::check),
    ("firewall", firewall::check),
    ("hostfs_parsers", hostfs_parsers::check),
    ("spool", spool::check),
];

/// The check of the target called `name`.
pub fn check(name: &str) -> Option<Check> {
    TARGETS.iter().find(|(n, _)| *n == name).map(|(_, f)| *f)
}
