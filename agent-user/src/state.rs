//! What the agent keeps across restarts in its state directory
//! (`stateDirectory`, `--state-dir`): today, where the Login collector
//! stopped reading the files it follows, so that a restart loses no login
//! and repeats none. One small JSON file per owner, written whole to a
//! temporary file and renamed over the old one; read back bounded and
//! checked by its owner. A missing file is no state; a damaged or foreign
//! one is no state, said once.
use std::{
    io::Write,
    os::unix::fs::{DirBuilderExt, OpenOptionsExt},
    path::{Path, PathBuf},
};

use serde::{de::DeserializeOwned, Serialize};

/// Bytes of one state file at most: a few positions, never more.
pub const STATE_MAX: u64 = 64 << 10;

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("state file {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}; ignored, and replaced at the next save")]
    Read(#[from] crate::limits::ReadError),
    #[error("state file {} is not the agent's: {reason}; ignored, and replaced at the next save", path.display())]
    Invalid { path: PathBuf, reason: String },
}

/// One state file.
#[derive(Debug)]
pub struct StateFile {
    path: PathBuf,
    /// What was last written (or read): an unchanged state is not written again.
    last: Option<Vec<u8>>,
    /// A failed save is said once, until one succeeds.
    failing: bool,
}

impl StateFile {
    /// `name` in `dir`; the directory is made (mode 0700) at the first save.
    pub fn new(dir: &Path, name: &str) -> StateFile {
        StateFile { path: dir.join(name), last: None, failing: false }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The state saved last, if any.
    pub fn load<T: DeserializeOwned>(&mut self) -> Result<Option<T>, StateError> {
        let bytes = match crate::limits::read_bounded("state file", &self.path, STATE_MAX) {
            Ok(b) => b,
            Err(e) if e.is_not_found() => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let value = serde_json::from_slice(&bytes)
            .map_err(|e| StateError::Invalid { path: self.path.clone(), reason: e.to_string() })?;
        self.last = Some(bytes);
        Ok(Some(value))
    }

    /// Writes `value` unless it is what the file holds already. A failure
    /// is logged once (the agent goes on: it only loses resumption).
    pub fn save<T: Serialize>(&mut self, value: &T) {
        let bytes = serde_json::to_vec(value).expect("state serializes");
        if self.last.as_deref() == Some(&bytes) {
            return;
        }
        match self.write(&bytes) {
            Ok(()) => {
                self.failing = false;
                self.last = Some(bytes);
            }
            Err(e) if !self.failing => {
                self.failing = true;
                log::warn!("{e}; after a restart the agent cannot resume where it stopped");
            }
            Err(_) => {}
        }
    }

    fn write(&self, bytes: &[u8]) -> Result<(), StateError> {
        let io = |source| StateError::Io { path: self.path.clone(), source };
        if let Some(dir) = self.path.parent() {
            std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(io)?;
        }
        let tmp = self.path.with_extension("tmp");
        // A leftover (a crash mid-write) or a planted file: unlinked, never followed.
        let _ = std::fs::remove_file(&tmp);
        let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp).map_err(io)?;
        // No fsync: losing the last save in a power cut repeats a few
        // seconds of events, and a flash device should not pay a sync a second.
        f.write_all(bytes).map_err(io)?;
        std::fs::rename(&tmp, &self.path).map_err(io)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saves_loads_and_refuses_what_is_not_its_own() {
        let dir = crate::hostfs::tests::tempdir::Dir::new("state");
        let sub = dir.0.join("var/lib/hitcount");
        let mut s = StateFile::new(&sub, "login.json");
        assert_eq!(s.load::<Vec<u64>>().unwrap(), None, "nothing saved yet");
        s.save(&vec![1u64, 2, 3]);
        let mut again = StateFile::new(&sub, "login.json");
        assert_eq!(again.load::<Vec<u64>>().unwrap(), Some(vec![1, 2, 3]));
        let mode = std::fs::metadata(&sub).unwrap().permissions();
        assert_eq!(std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777, 0o700);
        std::fs::write(s.path(), b"{not json").unwrap();
        assert!(matches!(again.load::<Vec<u64>>(), Err(StateError::Invalid { .. })));
        std::fs::write(s.path(), vec![b' '; STATE_MAX as usize + 1]).unwrap();
        assert!(matches!(again.load::<Vec<u64>>(), Err(StateError::Read(crate::limits::ReadError::TooLarge { .. }))));
        // A planted temporary file is replaced, not written through.
        std::fs::write(s.path().with_extension("tmp"), b"planted").unwrap();
        let mut s = StateFile::new(&sub, "login.json");
        s.save(&vec![4u64]);
        assert_eq!(StateFile::new(&sub, "login.json").load::<Vec<u64>>().unwrap(), Some(vec![4]));
    }

    #[test]
    fn a_directory_that_cannot_be_made_costs_only_resumption() {
        let dir = crate::hostfs::tests::tempdir::Dir::new("state-file");
        let blocker = dir.0.join("file");
        std::fs::write(&blocker, b"").unwrap();
        let mut s = StateFile::new(&blocker.join("sub"), "login.json");
        s.save(&1u32);
        s.save(&2u32);
        assert!(s.failing, "said once, not per save");
    }
}
