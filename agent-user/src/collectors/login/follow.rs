//! Following a host file that is appended to (wtmp, btmp, auth.log): at
//! each poll a bounded read of what was added since the last one. A file
//! that shrank was truncated and one whose inode changed was rotated; both
//! are read again from their start. The reader says how much of what it
//! was given it used: a partial record or line is read again, whole, later.
use std::{
    io::{Read, Seek, SeekFrom},
    os::unix::fs::MetadataExt,
};

use crate::{collectors::Taken, hostfs::HostFs};

/// Bytes read from one file per poll; the rest is read at the next polls,
/// so a storm is paced, not dropped.
pub const READ_MAX: u64 = 1 << 20;

/// Where a follower is in its file: what a restart resumes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Position {
    pub dev: u64,
    pub ino: u64,
    pub offset: u64,
}

/// What one read found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Appended {
    pub bytes: Vec<u8>,
    /// The first read: the bytes are the file's last `prime` bytes, the
    /// past, to learn from and not to report.
    pub priming: bool,
}

#[derive(Debug)]
pub struct Follower {
    pub path: &'static str,
    at: Option<Position>,
    /// Where the bytes of the last read began.
    start: u64,
    /// Where an earlier run of the agent stopped, until the first read.
    resume: Option<Position>,
}

impl Follower {
    pub fn new(path: &'static str) -> Follower {
        Follower { path, at: None, start: 0, resume: None }
    }

    /// How far the file has been read (None before the first read).
    pub fn position(&self) -> Option<Position> {
        self.at
    }

    /// The first read goes on from `p`, where an earlier run stopped, if
    /// the file is still the same one and at least that long: it returns
    /// the `prime` bytes before `p` as the past, and the next reads what
    /// came after. A file rotated or truncated since is read from its start.
    pub fn resume(&mut self, p: Position) {
        self.resume = Some(p);
    }

    /// What was appended since the last call (then [`Follower::used`] says how
    /// much of it was consumed). The first call starts at the end, less
    /// `prime` bytes rounded down to whole `unit`s of the file (records), so
    /// that its start is a record's. A missing file is no failure: it has
    /// nothing to say until it appears, and is then read from its start.
    pub fn read(&mut self, host: &HostFs, prime: u64, unit: u64, taken: &mut Taken) -> Appended {
        let real = match host.resolve(self.path) {
            Ok(p) => p,
            Err(e) => {
                taken.fail_host(&e);
                return Appended::default();
            }
        };
        let mut file = match std::fs::File::open(&real) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                self.at.get_or_insert(Position { dev: 0, ino: 0, offset: 0 });
                return Appended::default();
            }
            Err(e) => {
                taken.fail(self.path, e);
                return Appended::default();
            }
        };
        let meta = match file.metadata() {
            Ok(m) => m,
            Err(e) => {
                taken.fail(self.path, e);
                return Appended::default();
            }
        };
        let size = meta.len();
        let unit = unit.max(1);
        let same = |p: &Position| (p.dev, p.ino) == (meta.dev(), meta.ino());
        let whole = size - size % unit;
        let prime = prime - prime % unit;
        let (start, end, priming) = match (self.at, self.resume.take()) {
            // Where the last run stopped: what came before it is the past.
            (None, Some(r)) if same(&r) && r.offset <= size && r.offset % unit == 0 => {
                (r.offset.saturating_sub(prime), r.offset, true)
            }
            // Rotated or truncated while the agent was not running: all of it is new.
            (None, Some(_)) => (0, size.min(READ_MAX), false),
            (None, None) => (whole.saturating_sub(prime), whole, true),
            // Rotated (another file now) or truncated: all of it is new.
            (Some(p), _) if !same(&p) || size < p.offset => (0, size.min(READ_MAX), false),
            (Some(p), _) => (p.offset, size.min(p.offset + READ_MAX), false),
        };
        let mut bytes = Vec::new();
        let read =
            file.seek(SeekFrom::Start(start)).and_then(|_| (&mut file).take(end - start).read_to_end(&mut bytes));
        if let Err(e) = read {
            taken.fail(self.path, e);
            return Appended::default();
        }
        self.start = start;
        // Until `used` says otherwise, all of it was consumed.
        self.at = Some(Position { dev: meta.dev(), ino: meta.ino(), offset: start + bytes.len() as u64 });
        Appended { bytes, priming }
    }

    /// Of the bytes the last read returned, the first `n` were consumed; the
    /// rest is read again at the next call.
    pub fn used(&mut self, n: usize) {
        if let Some(p) = &mut self.at {
            p.offset = p.offset.min(self.start + n as u64);
        }
    }
}
