//! rpm's database since rpm 4.16: SQLite, /var/lib/rpm/rpmdb.sqlite (or
//! /usr/lib/sysimage/rpm/rpmdb.sqlite), one row per package in
//! `Packages(hnum, blob)`, the blob an rpm header without its magic
//! (rpm lib/header.c headerImport; read the same way by knqyf263/go-rpmdb):
//! two big-endian u32 counts (index entries `il`, data bytes `dl`), `il`
//! entries of tag, type, offset, count (16 bytes each), then the data.
//! Every offset is checked against the data before it is used.
use std::path::Path;

use super::{bounded, purl, Distro, Manager, Package, Parsed, Problem, SourceFailure, MAX_PACKAGES};
use crate::hostfs::HostFs;

/// rpm's own limits (lib/header_internal.h HEADER_TAGS_MAX, HEADER_DATA_MAX).
const MAX_ENTRIES: usize = 0xffff;
const MAX_DATA: usize = 0x0fff_ffff;
/// Largest header blob read from the database; real ones are a few KiB to
/// a few hundred KiB (file lists).
pub const MAX_BLOB_BYTES: usize = 16 << 20;
/// Largest database opened (a desktop's is ~100 MiB).
pub const MAX_DB_BYTES: u64 = 1 << 30;

const TAG_NAME: u32 = 1000;
const TAG_VERSION: u32 = 1001;
const TAG_RELEASE: u32 = 1002;
const TAG_EPOCH: u32 = 1003;
const TAG_VENDOR: u32 = 1011;
const TAG_LICENSE: u32 = 1014;
const TAG_PACKAGER: u32 = 1015;
const TAG_ARCH: u32 = 1022;
const TAG_SOURCERPM: u32 = 1044;

const TYPE_INT32: u32 = 4;
const TYPE_STRING: u32 = 6;
const TYPE_STRING_ARRAY: u32 = 8;
const TYPE_I18NSTRING: u32 = 9;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    #[error("header of {0} bytes, shorter than its 8-byte preamble")]
    Short(usize),
    #[error("header claims {il} entries and {dl} data bytes, beyond rpm's limits")]
    Limits { il: usize, dl: usize },
    #[error("header claims {need} bytes and has {have}")]
    Truncated { need: usize, have: usize },
    #[error("tag {tag}: offset {offset} outside the {dl} data bytes")]
    Offset { tag: u32, offset: i64, dl: usize },
    #[error("tag {tag}: string not terminated inside the data")]
    Unterminated { tag: u32 },
    #[error("tag {tag}: type {ty} where a {want} was expected")]
    Type { tag: u32, ty: u32, want: &'static str },
    #[error("{0}")]
    Field(String),
}

/// The index of a header and its data, bounds checked.
struct Header<'a> {
    index: &'a [u8],
    data: &'a [u8],
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

impl<'a> Header<'a> {
    fn new(blob: &'a [u8]) -> Result<Header<'a>, HeaderError> {
        if blob.len() < 8 {
            return Err(HeaderError::Short(blob.len()));
        }
        let (il, dl) = (be32(blob, 0) as usize, be32(blob, 4) as usize);
        if il == 0 || il > MAX_ENTRIES || dl > MAX_DATA {
            return Err(HeaderError::Limits { il, dl });
        }
        // Both are bounded above, so this cannot overflow.
        let need = 8 + il * 16 + dl;
        if blob.len() < need {
            return Err(HeaderError::Truncated { need, have: blob.len() });
        }
        Ok(Header { index: &blob[8..8 + il * 16], data: &blob[8 + il * 16..need] })
    }

    /// The (type, data from its offset on) of the first entry with `tag`.
    fn entry(&self, tag: u32) -> Result<Option<(u32, &'a [u8])>, HeaderError> {
        for e in self.index.chunks_exact(16) {
            if be32(e, 0) != tag {
                continue;
            }
            let (ty, offset) = (be32(e, 4), be32(e, 8) as i32);
            let dl = self.data.len();
            if offset < 0 || offset as usize >= dl {
                return Err(HeaderError::Offset { tag, offset: offset.into(), dl });
            }
            return Ok(Some((ty, &self.data[offset as usize..])));
        }
        Ok(None)
    }

    /// A string tag (for arrays and translated strings, the first one).
    fn string(&self, tag: u32) -> Result<Option<String>, HeaderError> {
        let Some((ty, at)) = self.entry(tag)? else { return Ok(None) };
        if !matches!(ty, TYPE_STRING | TYPE_STRING_ARRAY | TYPE_I18NSTRING) {
            return Err(HeaderError::Type { tag, ty, want: "string" });
        }
        let end = at.iter().position(|&b| b == 0).ok_or(HeaderError::Unterminated { tag })?;
        let s = String::from_utf8_lossy(&at[..end]);
        bounded(tag_name(tag), &s).map_err(HeaderError::Field)
    }

    fn int32(&self, tag: u32) -> Result<Option<u32>, HeaderError> {
        let Some((ty, at)) = self.entry(tag)? else { return Ok(None) };
        if ty != TYPE_INT32 {
            return Err(HeaderError::Type { tag, ty, want: "32-bit integer" });
        }
        if at.len() < 4 {
            return Err(HeaderError::Offset { tag, offset: (self.data.len() - at.len()) as i64, dl: self.data.len() });
        }
        Ok(Some(be32(at, 0)))
    }
}

fn tag_name(tag: u32) -> &'static str {
    match tag {
        TAG_NAME => "NAME",
        TAG_VERSION => "VERSION",
        TAG_RELEASE => "RELEASE",
        TAG_VENDOR => "VENDOR",
        TAG_LICENSE => "LICENSE",
        TAG_PACKAGER => "PACKAGER",
        TAG_ARCH => "ARCH",
        TAG_SOURCERPM => "SOURCERPM",
        _ => "tag",
    }
}

/// One header blob as a package.
pub fn package(blob: &[u8], distro: &Distro) -> Result<Package, HeaderError> {
    let h = Header::new(blob)?;
    let missing = |t: u32| HeaderError::Field(format!("no {} tag", tag_name(t)));
    let name = h.string(TAG_NAME)?.ok_or_else(|| missing(TAG_NAME))?;
    let version = h.string(TAG_VERSION)?.ok_or_else(|| missing(TAG_VERSION))?;
    let release = h.string(TAG_RELEASE)?;
    let epoch = h.int32(TAG_EPOCH)?.map(|e| e.to_string());
    let arch = h.string(TAG_ARCH)?;
    let vr = match &release {
        Some(r) => format!("{version}-{r}"),
        None => version,
    };
    let purl = purl::purl(
        &purl::Parts {
            manager: Manager::Rpm,
            name: &name,
            version: &vr,
            arch: arch.as_deref(),
            epoch: epoch.as_deref(),
        },
        distro,
    );
    Ok(Package {
        name,
        // rpm's EVR: the epoch only when there is one.
        version: match &epoch {
            Some(e) => format!("{e}:{vr}"),
            None => vr,
        },
        vendor: match h.string(TAG_VENDOR)? {
            Some(v) => Some(v),
            None => h.string(TAG_PACKAGER)?,
        },
        package_manager: Manager::Rpm,
        architecture: arch,
        source: h.string(TAG_SOURCERPM)?,
        license: h.string(TAG_LICENSE)?,
        purl,
    })
}

/// Reads an rpm SQLite database under the host root.
pub fn read(host: &HostFs, path: &str, distro: &Distro) -> Result<Parsed, SourceFailure> {
    let fail = |reason: String| SourceFailure { source: path.to_string(), reason };
    let real = host.resolve(path).map_err(|e| SourceFailure::from(&e))?;
    let len = std::fs::metadata(&real).map_err(|e| fail(e.to_string()))?.len();
    if len > MAX_DB_BYTES {
        return Err(fail(format!("larger than {MAX_DB_BYTES} bytes, not read")));
    }
    let rows = query(&real).map_err(|e| fail(format!("SQLite: {e}")))?;
    let mut parsed = Parsed::default();
    for (hnum, blob) in rows {
        let line = usize::try_from(hnum).unwrap_or(0);
        let Some(blob) = blob else {
            parsed.problems.push(Problem::new(line, format!("header larger than {MAX_BLOB_BYTES} bytes, not read")));
            continue;
        };
        match package(&blob, distro) {
            Ok(p) => {
                if !parsed.push(p, line) {
                    break;
                }
            }
            Err(e) => parsed.problems.push(Problem::new(line, format!("header {hnum}: {e}"))),
        }
    }
    Ok(parsed)
}

type Row = (i64, Option<Vec<u8>>);

/// Every (hnum, blob) row, blobs past the bound left in the database, at
/// most one row past the package bound (so the bound is reported).
fn query(db: &Path) -> rusqlite::Result<Vec<Row>> {
    sqlite_read(db, |c| {
        let mut st =
            c.prepare("SELECT hnum, CASE WHEN length(blob) <= ?1 THEN blob END FROM Packages ORDER BY hnum LIMIT ?2")?;
        let rows = st.query_map((MAX_BLOB_BYTES as i64, MAX_PACKAGES as i64 + 1), |r| Ok((r.get(0)?, r.get(1)?)))?;
        rows.collect()
    })
}

/// Runs `run` on the SQLite database `db` opened read-only (rpm's, wtmpdb's).
pub fn sqlite_read<T>(db: &Path, run: impl Fn(rusqlite::Connection) -> rusqlite::Result<T>) -> rusqlite::Result<T> {
    use rusqlite::{Connection, OpenFlags};
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX | OpenFlags::SQLITE_OPEN_URI;
    match Connection::open_with_flags(db, flags).and_then(&run) {
        Ok(rows) => Ok(rows),
        // A database in WAL mode: read-only, SQLite still needs to create
        // or write the -shm file, which a read-only host mount refuses.
        // Opened immutable, it reads the main file as it is.
        Err(first) => {
            let uri = format!("file:{}?immutable=1", uri_path(db));
            Connection::open_with_flags(uri, flags).and_then(run).map_err(|_| first)
        }
    }
}

/// A path as the path part of a file: URI (RFC 8089): `?`, `#` and `%` escaped.
fn uri_path(p: &Path) -> String {
    let mut s = String::new();
    for c in p.to_string_lossy().chars() {
        match c {
            '?' => s.push_str("%3f"),
            '#' => s.push_str("%23"),
            '%' => s.push_str("%25"),
            c => s.push(c),
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::super::{inventory, MAX_FIELD_BYTES};
    use super::*;

    const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/sbom/rpm");

    fn blob() -> Vec<u8> {
        std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/sbom/rpm-header.bin")).unwrap()
    }

    fn fedora() -> Distro {
        Distro { id: Some("fedora".into()), version_id: Some("40".into()) }
    }

    #[test]
    fn the_fixture_database_made_by_rpm() {
        // Made by Debian's rpm 4.18: `rpm --initdb` and `rpm -i --justdb` of
        // two packages built by rpmbuild (see fixtures/sbom/README.md).
        let inv = inventory(&HostFs::new(ROOT));
        assert_eq!(inv.failures, []);
        let keys: Vec<&str> = inv.packages.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["rpm/hitcount-fixture/noarch", "rpm/hitcount-tool/x86_64"]);
        assert_eq!(
            inv.packages[0].1,
            Package {
                name: "hitcount-fixture".into(),
                version: "2:1.2.3-4.fc40".into(),
                vendor: Some("Hitcount Fixtures".into()),
                package_manager: Manager::Rpm,
                architecture: Some("noarch".into()),
                source: Some("hitcount-fixture-1.2.3-4.fc40.src.rpm".into()),
                license: Some("MIT AND (Apache-2.0 OR BSD-3-Clause)".into()),
                purl: "pkg:rpm/fedora/hitcount-fixture@1.2.3-4.fc40?arch=noarch&distro=fedora-40&epoch=2".into(),
            }
        );
        let tool = &inv.packages[1].1;
        assert_eq!(tool.version, "0.9-1", "no epoch, no prefix");
        assert_eq!(tool.vendor.as_deref(), Some("Packager Only <packager@example.invalid>"), "Packager without Vendor");
        assert_eq!(tool.license.as_deref(), Some("GPLv2+"));
    }

    #[test]
    fn a_header_blob() {
        let p = package(&blob(), &fedora()).unwrap();
        assert!(p.name.starts_with("hitcount-"), "{p:?}");
    }

    #[test]
    fn every_truncation_is_refused_not_a_crash() {
        let b = blob();
        for n in 0..b.len() {
            let r = package(&b[..n], &fedora());
            assert!(r.is_err(), "{n} bytes of {}", b.len());
        }
        assert_eq!(package(&b[..4], &fedora()), Err(HeaderError::Short(4)));
        assert!(matches!(package(&b[..100], &fedora()), Err(HeaderError::Truncated { have: 100, .. })));
    }

    /// A header of `entries` (tag, type, offset, count) over `data`.
    fn header(entries: &[(u32, u32, i32, u32)], data: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend((entries.len() as u32).to_be_bytes());
        v.extend((data.len() as u32).to_be_bytes());
        for &(t, ty, off, c) in entries {
            for x in [t, ty, off as u32, c] {
                v.extend(x.to_be_bytes());
            }
        }
        v.extend(data);
        v
    }

    #[test]
    fn offsets_types_and_terminators_are_checked() {
        let d = Distro::default();
        let ok = header(&[(TAG_NAME, TYPE_STRING, 0, 1), (TAG_VERSION, TYPE_STRING, 2, 1)], b"a\x001\x00");
        assert_eq!(package(&ok, &d).unwrap().purl, "pkg:rpm/a@1");
        let far = header(&[(TAG_NAME, TYPE_STRING, 4, 1)], b"a\x001\x00");
        assert_eq!(package(&far, &d), Err(HeaderError::Offset { tag: TAG_NAME, offset: 4, dl: 4 }));
        let negative = header(&[(TAG_NAME, TYPE_STRING, -1, 1)], b"a\x00");
        assert!(matches!(package(&negative, &d), Err(HeaderError::Offset { offset: -1, .. })));
        let open = header(&[(TAG_NAME, TYPE_STRING, 0, 1)], b"abc");
        assert_eq!(package(&open, &d), Err(HeaderError::Unterminated { tag: TAG_NAME }));
        let wrong = header(&[(TAG_NAME, TYPE_INT32, 0, 1)], b"abcd");
        assert!(matches!(package(&wrong, &d), Err(HeaderError::Type { ty: TYPE_INT32, .. })));
        let short_epoch = header(
            &[(TAG_NAME, TYPE_STRING, 0, 1), (TAG_VERSION, TYPE_STRING, 0, 1), (TAG_EPOCH, TYPE_INT32, 1, 1)],
            b"a\x00",
        );
        assert!(matches!(package(&short_epoch, &d), Err(HeaderError::Offset { tag: TAG_EPOCH, .. })));
        let mut huge = vec![b'x'; MAX_FIELD_BYTES + 1];
        huge.push(0);
        let big = header(&[(TAG_NAME, TYPE_STRING, 0, 1)], &huge);
        assert!(matches!(package(&big, &d), Err(HeaderError::Field(m)) if m.contains("field NAME is 4097 bytes")));
        let mut lying = header(&[(TAG_NAME, TYPE_STRING, 0, 1)], b"a\x00");
        lying[..4].copy_from_slice(&0x10000u32.to_be_bytes());
        assert!(matches!(package(&lying, &d), Err(HeaderError::Limits { il: 0x10000, .. })));
        assert_eq!(
            package(&header(&[(TAG_VERSION, TYPE_STRING, 0, 1)], b"1\x00"), &d),
            Err(HeaderError::Field("no NAME tag".into()))
        );
    }

    #[test]
    fn a_file_that_is_not_a_database_is_one_failure() {
        let dir = std::env::temp_dir().join(format!("hitcount-sbom-rpm-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("var/lib/rpm")).unwrap();
        std::fs::write(dir.join("var/lib/rpm/rpmdb.sqlite"), b"not sqlite at all, just text").unwrap();
        let inv = inventory(&HostFs::new(&dir));
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(inv.packages, []);
        assert_eq!(inv.failures.len(), 1, "{:?}", inv.failures);
        assert_eq!(inv.failures[0].source, "/var/lib/rpm/rpmdb.sqlite");
        assert!(inv.failures[0].reason.starts_with("SQLite: "), "{:?}", inv.failures);
    }
}
