//! The committed corpus and regressions through every target's check, as
//! plain tests on stable (`cargo test --no-default-features`, which
//! `cargo xtask test` runs): a fixed finding stays fixed without libFuzzer.
//!
//! `regressions/<target>/` holds inputs that once crashed, now fixed: each
//! must pass. `regressions/<target>/open/` holds findings not fixed yet (an
//! area another branch owns, named in its README): each must still fail, so
//! that a fix is noticed and the input moved up to become a guard.
use std::{
    panic::{catch_unwind, AssertUnwindSafe},
    path::{Path, PathBuf},
};

use hitcount_fuzz::TARGETS;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf()
}

/// The regular files in `dir`, sorted; none if it does not exist.
fn inputs(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut files: Vec<PathBuf> = entries
        .map(|e| e.expect("readable directory entry").path())
        // Notes beside the inputs: README.md, open/panics.txt.
        .filter(|p| p.is_file() && p.extension().is_none_or(|e| e != "md" && e != "txt"))
        .collect();
    files.sort();
    files
}

/// Whether `check` panics on the input in `path`.
fn panics(check: fn(&[u8]), path: &Path) -> bool {
    let data = std::fs::read(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    catch_unwind(AssertUnwindSafe(|| check(&data))).is_err()
}

#[test]
fn corpus_and_fixed_regressions_pass() {
    let mut failed = Vec::new();
    let mut ran = 0;
    for (name, check) in TARGETS {
        let corpus = inputs(&root().join("corpus").join(name));
        assert!(!corpus.is_empty(), "corpus/{name}/ has no seeds");
        for path in corpus.iter().chain(&inputs(&root().join("regressions").join(name))) {
            ran += 1;
            if panics(*check, path) {
                failed.push(path.display().to_string());
            }
        }
    }
    assert!(failed.is_empty(), "{} of {ran} inputs fail their target's check: {failed:#?}", failed.len());
    println!("replayed {ran} inputs");
}

#[test]
fn open_regressions_still_fail() {
    let mut fixed = Vec::new();
    for (name, check) in TARGETS {
        for path in inputs(&root().join("regressions").join(name).join("open")) {
            if !panics(*check, &path) {
                fixed.push(path.display().to_string());
            }
        }
    }
    assert!(fixed.is_empty(), "these open findings pass now: move them up to regressions/<target>/ {fixed:#?}");
}

/// Every target of TARGETS is a binary of Cargo.toml, and the other way round.
#[test]
fn targets_match_the_manifest() {
    let manifest = std::fs::read_to_string(root().join("Cargo.toml")).expect("Cargo.toml");
    let mut bins: Vec<&str> = manifest
        .lines()
        .filter_map(|l| l.strip_prefix("name = \""))
        .filter_map(|l| l.strip_suffix('"'))
        .filter(|n| *n != "hitcount-fuzz")
        .collect();
    bins.sort();
    let mut targets: Vec<&str> = TARGETS.iter().map(|(n, _)| *n).collect();
    targets.sort();
    assert_eq!(bins, targets);
}
