//! SBoM: one event per installed package, read straight from the package
//! managers' databases through the host root. A manager is found by which
//! database exists, never by OS name (auditbeat went wrong that way:
//! elastic/beats#12177), and every database present is read: a Debian host
//! with rpm installed has both.
//!
//! Each database has its own parser ([`dpkg`], [`rpm`], [`apk`], [`opkg`]):
//! pure functions on the file's text or the rpm header bytes, bounded, that
//! return the packages and the records they refused with their line.
//! [`export`] renders the same inventory as CycloneDX or SPDX.
use std::collections::HashMap;

use serde::Serialize;

use super::{Context, Snapshot, SourceFailure, Taken};
use crate::{events::EventType, hostfs::HostFs};

pub mod apk;
pub mod dpkg;
pub mod export;
pub mod opkg;
pub mod purl;
pub mod rpm;

/// Longest value kept from a package field (name, version, maintainer,
/// license, ...). Real ones are well under 1 KiB; a longer one is a
/// damaged or hostile database, and its record is refused.
pub const MAX_FIELD_BYTES: usize = 4096;
/// Most packages taken from one database; a desktop has ~3,000.
pub const MAX_PACKAGES: usize = 100_000;
/// Problems listed one by one per database; the rest are counted in one line.
const MAX_PROBLEMS_LISTED: usize = 10;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Manager {
    Dpkg,
    Rpm,
    Apk,
    Opkg,
}

impl Manager {
    pub fn name(self) -> &'static str {
        match self {
            Manager::Dpkg => "dpkg",
            Manager::Rpm => "rpm",
            Manager::Apk => "apk",
            Manager::Opkg => "opkg",
        }
    }
}

/// The SBoM event payload: one installed package.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Package {
    pub name: String,
    /// As the manager spells it: deb `[epoch:]upstream-revision`, rpm
    /// `[epoch:]version-release`, apk and opkg their Version.
    pub version: String,
    /// deb and opkg Maintainer, rpm Vendor (else Packager), apk `m:`.
    pub vendor: Option<String>,
    pub package_manager: Manager,
    pub architecture: Option<String>,
    /// The source package: deb/opkg Source (without its version), rpm
    /// SOURCERPM, apk origin `o:`.
    pub source: Option<String>,
    /// rpm License, apk `L:`, opkg License; dpkg's database has none.
    pub license: Option<String>,
    pub purl: String,
}

/// The distribution, for purl namespaces and `distro` qualifiers
/// (os-release `ID` and `VERSION_ID`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Distro {
    pub id: Option<String>,
    pub version_id: Option<String>,
}

impl Distro {
    /// Parses os-release(5): `KEY=value`, the value optionally quoted.
    pub fn from_os_release(text: &str) -> Distro {
        let mut d = Distro::default();
        for line in text.lines() {
            let Some((k, v)) = line.trim().split_once('=') else { continue };
            let v = v.trim().trim_matches(|c| c == '"' || c == '\'');
            let v = (!v.is_empty() && v.len() <= 64).then(|| v.to_string());
            match k {
                "ID" => d.id = v,
                "VERSION_ID" => d.version_id = v,
                _ => {}
            }
        }
        d
    }

    /// os-release from the host, /etc first (os-release(5)).
    pub fn of(host: &HostFs) -> Distro {
        ["/etc/os-release", "/usr/lib/os-release"]
            .iter()
            .find_map(|p| host.read_bounded(p, 64 << 10).ok())
            .map(|b| Distro::from_os_release(&String::from_utf8_lossy(&b)))
            .unwrap_or_default()
    }
}

/// A record a parser refused, or a part of a database it could not read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// 1-based line of the record (rpm: the header number, hnum).
    pub line: usize,
    pub reason: String,
}

impl Problem {
    pub fn new(line: usize, reason: impl Into<String>) -> Problem {
        Problem { line, reason: reason.into() }
    }
}

/// What a parser found in one database.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Parsed {
    pub packages: Vec<Package>,
    pub problems: Vec<Problem>,
}

impl Parsed {
    /// Adds a package unless the bound is reached (then one problem, once).
    pub(crate) fn push(&mut self, p: Package, line: usize) -> bool {
        if self.packages.len() == MAX_PACKAGES {
            self.problems.push(Problem::new(line, format!("more than {MAX_PACKAGES} packages, the rest not read")));
            return false;
        }
        self.packages.push(p);
        true
    }
}

/// A kept field's value, refused past [`MAX_FIELD_BYTES`].
pub(crate) fn bounded(field: &str, value: &str) -> Result<Option<String>, String> {
    let v = value.trim();
    if v.len() > MAX_FIELD_BYTES {
        return Err(format!("field {field} is {} bytes, longer than {MAX_FIELD_BYTES}: record refused", v.len()));
    }
    Ok((!v.is_empty()).then(|| v.to_string()))
}

/// The whole inventory of a host, and what could not be read.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Inventory {
    /// Sorted by key.
    pub packages: Vec<(String, Package)>,
    pub failures: Vec<SourceFailure>,
    pub distro: Distro,
}

/// Reads every package database present under the host root.
pub fn inventory(host: &HostFs) -> Inventory {
    let distro = Distro::of(host);
    let mut inv = Inventory { distro: distro.clone(), ..Inventory::default() };
    let mut seen_files = Vec::new();
    for (path, format) in DATABASES {
        if !host.exists(path) {
            continue;
        }
        // /var/lib/opkg/status is often a link to /usr/lib/opkg/status:
        // one database, read once.
        let real = host.canonical(path).unwrap_or_else(|_| path.into());
        if seen_files.contains(&real) {
            continue;
        }
        seen_files.push(real);
        match read(host, path, format, &distro) {
            Ok(parsed) => inv.add(path, parsed),
            Err(f) => inv.failures.push(f),
        }
    }
    if !host.exists("/var/lib/rpm/rpmdb.sqlite") && host.exists("/var/lib/rpm/Packages") {
        // rpm before 4.16 (RHEL 8, CentOS 7) kept a Berkeley DB.
        inv.failures.push(SourceFailure {
            source: "/var/lib/rpm/Packages".into(),
            reason: "a Berkeley DB rpm database (rpm before 4.16), which is not read".into(),
        });
    }
    inv.packages.sort_by(|a, b| a.0.cmp(&b.0));
    inv
}

/// Every database, by where it lives, and its format.
const DATABASES: [(&str, Manager); 6] = [
    ("/var/lib/dpkg/status", Manager::Dpkg),
    ("/var/lib/rpm/rpmdb.sqlite", Manager::Rpm),
    ("/usr/lib/sysimage/rpm/rpmdb.sqlite", Manager::Rpm),
    ("/lib/apk/db/installed", Manager::Apk),
    ("/usr/lib/opkg/status", Manager::Opkg),
    ("/var/lib/opkg/status", Manager::Opkg),
];

/// Where the databases are looked for, as `hitcount sbom` tells.
pub fn database_paths() -> impl Iterator<Item = &'static str> {
    DATABASES.iter().map(|(p, _)| *p)
}

fn read(host: &HostFs, path: &str, format: Manager, distro: &Distro) -> Result<Parsed, SourceFailure> {
    let parse = match format {
        Manager::Rpm => return rpm::read(host, path, distro),
        Manager::Dpkg => dpkg::parse,
        Manager::Apk => apk::parse,
        Manager::Opkg => opkg::parse,
    };
    // Text databases are read whole, bounded by HostFs (32 MiB).
    let text = host.read_to_string(path).map_err(|e| SourceFailure::from(&e))?;
    Ok(parse(&text, distro))
}

impl Inventory {
    fn add(&mut self, path: &str, parsed: Parsed) {
        let total = parsed.problems.len();
        for p in parsed.problems.iter().take(MAX_PROBLEMS_LISTED) {
            self.failures.push(SourceFailure { source: path.into(), reason: format!("line {}: {}", p.line, p.reason) });
        }
        if total > MAX_PROBLEMS_LISTED {
            self.failures.push(SourceFailure {
                source: path.into(),
                reason: format!("{} more refused records not listed", total - MAX_PROBLEMS_LISTED),
            });
        }
        self.packages.extend(keyed(parsed.packages));
    }
}

/// Keys: manager, name and architecture, the identity a delta follows
/// across an upgrade. rpm may hold several versions of one name and
/// architecture (installonly kernels, gpg-pubkey): those get their version
/// in the key too, so none hides another.
pub fn keyed(packages: Vec<Package>) -> Vec<(String, Package)> {
    let base =
        |p: &Package| format!("{}/{}/{}", p.package_manager.name(), p.name, p.architecture.as_deref().unwrap_or(""));
    let mut count: HashMap<String, usize> = HashMap::new();
    for p in &packages {
        *count.entry(base(p)).or_default() += 1;
    }
    packages
        .into_iter()
        .map(|p| {
            let k = base(&p);
            let k = if count[&k] > 1 { format!("{k}@{}", p.version) } else { k };
            (k, p)
        })
        .collect()
}

/// The SBoM snapshot collector.
pub struct Sbom;

impl Snapshot for Sbom {
    fn event_type(&self) -> EventType {
        EventType::SBoM
    }

    fn take(&mut self, cx: &Context<'_>) -> Taken {
        let inv = inventory(cx.host);
        let mut taken = Taken { failures: inv.failures, ..Taken::default() };
        taken.items.reserve_exact(inv.packages.len());
        // Each package freed as its payload is made: one copy at a time.
        for (key, p) in inv.packages {
            taken.push(key, &p);
        }
        taken
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/sbom");

    /// A root with dpkg's, apk's and an old rpm's database side by side.
    #[test]
    fn every_database_present_is_read() {
        let root = std::env::temp_dir().join(format!("hitcount-sbom-several-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        for d in ["var/lib/dpkg", "lib/apk/db", "var/lib/rpm"] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        std::fs::copy(format!("{FIXTURES}/dpkg/var/lib/dpkg/status"), root.join("var/lib/dpkg/status")).unwrap();
        std::fs::copy(format!("{FIXTURES}/apk/lib/apk/db/installed"), root.join("lib/apk/db/installed")).unwrap();
        std::fs::write(root.join("var/lib/rpm/Packages"), b"").unwrap();
        let inv = inventory(&HostFs::new(&root));
        let _ = std::fs::remove_dir_all(&root);
        let managers: Vec<Manager> = inv.packages.iter().map(|(_, p)| p.package_manager).collect();
        assert_eq!(managers, [Manager::Apk; 3].into_iter().chain([Manager::Dpkg; 3]).collect::<Vec<_>>());
        assert_eq!(inv.distro, Distro::default(), "no os-release: no namespace");
        assert_eq!(inv.packages[0].1.purl, "pkg:apk/busybox@1.36.1-r29?arch=x86_64");
        assert_eq!(
            inv.failures,
            [SourceFailure {
                source: "/var/lib/rpm/Packages".into(),
                reason: "a Berkeley DB rpm database (rpm before 4.16), which is not read".into()
            }]
        );
    }

    #[test]
    fn repeated_names_get_their_version_in_the_key() {
        let p = |name: &str, version: &str| Package {
            name: name.into(),
            version: version.into(),
            vendor: None,
            package_manager: Manager::Rpm,
            architecture: Some("x86_64".into()),
            source: None,
            license: None,
            purl: String::new(),
        };
        let keys: Vec<String> =
            keyed(vec![p("kernel", "6.1"), p("bash", "5"), p("kernel", "6.2")]).into_iter().map(|(k, _)| k).collect();
        assert_eq!(keys, ["rpm/kernel/x86_64@6.1", "rpm/bash/x86_64", "rpm/kernel/x86_64@6.2"]);
    }

    #[test]
    fn problems_past_ten_are_counted() {
        let text: String = (0..15).map(|i| format!("Package: p{i}\nStatus: install ok installed\n\n")).collect();
        let mut inv = Inventory::default();
        inv.add("/var/lib/dpkg/status", dpkg::parse(&text, &Distro::default()));
        assert_eq!(inv.failures.len(), 11);
        assert_eq!(inv.failures[0].reason, "line 1: no Version field: record refused");
        assert_eq!(inv.failures[10].reason, "5 more refused records not listed");
    }

    #[test]
    fn os_release_quotes() {
        let d = Distro::from_os_release("NAME=\"Debian\"\nID=debian\nVERSION_ID=\"12\"\n# comment\nBAD\n");
        assert_eq!(d, Distro { id: Some("debian".into()), version_id: Some("12".into()) });
    }
}
