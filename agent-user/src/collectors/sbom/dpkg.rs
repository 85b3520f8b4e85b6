//! dpkg's status database, /var/lib/dpkg/status: deb822 stanzas
//! (deb-control(5)) separated by blank lines, `Field: value` lines and
//! continuation lines that start with a space or tab. opkg's status file
//! has the same shape, so the stanza reader is shared.
use std::borrow::Cow;

use super::{bounded, purl, Distro, Manager, Package, Parsed, Problem};

/// One stanza: its fields as slices of the file, in order.
#[derive(Debug)]
pub struct Stanza<'a> {
    /// 1-based line of its first field.
    pub line: usize,
    fields: Vec<Field<'a>>,
}

#[derive(Debug)]
struct Field<'a> {
    name: &'a str,
    /// The value: the rest of the first line, then its continuation lines.
    first: &'a str,
    continuation: Vec<&'a str>,
}

impl<'a> Stanza<'a> {
    /// A field's value (names compare case-insensitively, as deb822 says),
    /// continuation lines folded into one line.
    pub fn get(&self, name: &str) -> Option<Cow<'a, str>> {
        let f = self.fields.iter().find(|f| f.name.eq_ignore_ascii_case(name))?;
        if f.continuation.is_empty() {
            return Some(Cow::Borrowed(f.first.trim()));
        }
        let mut v = f.first.trim().to_string();
        for c in &f.continuation {
            // A lone `.` is an empty line of a multiline field.
            let c = c.trim();
            if c != "." {
                if !v.is_empty() {
                    v.push(' ');
                }
                v.push_str(c);
            }
        }
        Some(Cow::Owned(v))
    }

    /// A kept field, refused past the field bound.
    pub fn kept(&self, name: &str) -> Result<Option<String>, Problem> {
        match self.get(name) {
            Some(v) => bounded(name, &v).map_err(|e| Problem::new(self.line, e)),
            None => Ok(None),
        }
    }

    /// A field the record cannot do without.
    pub fn required(&self, name: &str) -> Result<String, Problem> {
        self.kept(name)?.ok_or_else(|| Problem::new(self.line, format!("no {name} field: record refused")))
    }
}

/// Reads a status file stanza by stanza, handing each to `each` (one at a
/// time: a 5,000-package database is never held as fields). A line that is
/// neither a field nor a continuation refuses its stanza (one problem, with
/// its line); the rest of the file is still read. A file cut short ends its
/// last stanza there. `each` returns false to stop.
pub fn for_each_stanza<'a>(text: &'a str, mut each: impl FnMut(&Stanza<'a>) -> bool) -> Vec<Problem> {
    let mut problems = Vec::new();
    let mut cur = Stanza { line: 0, fields: Vec::new() };
    let mut broken = false;
    for (i, raw) in text.split('\n').enumerate() {
        let line = raw.strip_suffix('\r').unwrap_or(raw);
        let n = i + 1;
        if line.trim().is_empty() {
            if !cur.fields.is_empty() && !broken && !each(&cur) {
                return problems;
            }
            cur.fields.clear();
            broken = false;
            continue;
        }
        if broken {
            continue;
        }
        if cur.fields.is_empty() {
            cur.line = n;
        }
        if line.starts_with([' ', '\t']) {
            match cur.fields.last_mut() {
                Some(f) => f.continuation.push(line),
                None => {
                    problems.push(Problem::new(n, "continuation line before any field: record refused"));
                    broken = true;
                    // Keeps the stanza non-empty until its blank line.
                    cur.fields.push(Field { name: "", first: "", continuation: Vec::new() });
                }
            }
            continue;
        }
        match line.split_once(':') {
            Some((name, value)) if !name.is_empty() && !name.contains(char::is_whitespace) => {
                cur.fields.push(Field { name, first: value, continuation: Vec::new() })
            }
            _ => {
                problems.push(Problem::new(n, "neither `Field: value` nor a continuation line: record refused"));
                broken = true;
            }
        }
    }
    if !cur.fields.is_empty() && !broken {
        each(&cur);
    }
    problems
}

/// Whether a `Status:` value (want, error flag, status: deb-control(5),
/// dpkg-query's db:Status-Abbrev) is an installed package: wanted
/// installed or held, and unpacked and configured. `deinstall ok
/// config-files` (removed, its conffiles left) is not.
pub fn is_installed(status: &str) -> bool {
    let w: Vec<&str> = status.split_whitespace().collect();
    w.len() == 3 && matches!(w[0], "install" | "hold") && w[2] == "installed"
}

/// The fields dpkg and opkg share, as a package, or why the stanza was
/// refused. None: a stanza that is not an installed package.
pub fn package(s: &Stanza<'_>, manager: Manager, distro: &Distro) -> Result<Option<Package>, Problem> {
    let status = s.required("Status")?;
    if !is_installed(&status) {
        return Ok(None);
    }
    let name = s.required("Package")?;
    let version = s.required("Version")?;
    let architecture = s.kept("Architecture")?;
    // `Source: name (version)` when the source version differs.
    let source = s.kept("Source")?.map(|v| v.split(" (").next().unwrap_or_default().trim().to_string());
    let purl = purl::purl(
        &purl::Parts { manager, name: &name, version: &version, arch: architecture.as_deref(), epoch: None },
        distro,
    );
    Ok(Some(Package {
        vendor: s.kept("Maintainer")?,
        license: s.kept("License")?,
        name,
        version,
        package_manager: manager,
        architecture,
        source,
        purl,
    }))
}

/// Every stanza of a dpkg or opkg status file.
pub fn parse_as(text: &str, manager: Manager, distro: &Distro) -> Parsed {
    let mut parsed = Parsed::default();
    let problems = for_each_stanza(text, |s| match package(s, manager, distro) {
        Ok(Some(p)) => parsed.push(p, s.line),
        Ok(None) => true,
        Err(e) => {
            parsed.problems.push(e);
            true
        }
    });
    parsed.problems.extend(problems);
    parsed.problems.sort_by_key(|p| p.line);
    parsed
}

/// /var/lib/dpkg/status. It has no License field; a package without a
/// Source field is its own source (deb-control(5), as dpkg-query's
/// `${source:Package}`).
pub fn parse(text: &str, distro: &Distro) -> Parsed {
    let mut parsed = parse_as(text, Manager::Dpkg, distro);
    for p in &mut parsed.packages {
        p.source.get_or_insert_with(|| p.name.clone());
    }
    parsed
}

#[cfg(test)]
mod tests {
    use super::super::{HostFs, MAX_FIELD_BYTES};
    use super::*;

    fn fixture() -> String {
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/sbom/dpkg/var/lib/dpkg/status")).unwrap()
    }

    fn names(p: &Parsed) -> Vec<&str> {
        p.packages.iter().map(|p| p.name.as_str()).collect()
    }

    #[test]
    fn installed_packages_only_with_their_fields() {
        let distro = Distro { id: Some("debian".into()), version_id: Some("12".into()) };
        let p = parse(&fixture(), &distro);
        assert_eq!(
            names(&p),
            ["base-files", "libc6", "held-pkg"],
            "config-files, half-installed and not-installed are not installed"
        );
        assert_eq!(p.problems, []);
        let libc = &p.packages[1];
        assert_eq!(
            libc,
            &Package {
                name: "libc6".into(),
                version: "2.36-9+deb12u4".into(),
                vendor: Some("GNU Libc Maintainers <debian-glibc@lists.debian.org>".into()),
                package_manager: Manager::Dpkg,
                architecture: Some("amd64".into()),
                source: Some("glibc".into()),
                license: None,
                purl: "pkg:deb/debian/libc6@2.36-9%2Bdeb12u4?arch=amd64&distro=debian-12".into(),
            }
        );
        assert_eq!(p.packages[0].source.as_deref(), Some("base-files"), "no Source: its own source");
        assert_eq!(
            p.packages[2].vendor.as_deref(),
            Some("Folded Maintainer <f@example.invalid>"),
            "continuation folded"
        );
    }

    #[test]
    fn malformed_stanzas_are_refused_with_their_line() {
        let text = "Package: a\nStatus: install ok installed\nVersion: 1\n\n\
                    Package: b\nthis line is broken\nStatus: install ok installed\nVersion: 1\n\n \
                    starts with a continuation\nPackage: c\n\n\
                    Package: d\nStatus: install ok installed\n\n\
                    Package: e\nStatus: install ok installed\nVersion: 5\nArchitecture: all";
        let p = parse(text, &Distro::default());
        assert_eq!(names(&p), ["a", "e"], "a file cut short still ends its last stanza");
        let lines: Vec<(usize, &str)> = p.problems.iter().map(|p| (p.line, p.reason.as_str())).collect();
        assert_eq!(
            lines,
            [
                (6, "neither `Field: value` nor a continuation line: record refused"),
                (10, "continuation line before any field: record refused"),
                (13, "no Version field: record refused"),
            ]
        );
    }

    #[test]
    fn truncated_mid_field_and_crlf() {
        let p = parse(
            "Package: a\r\nStatus: install ok installed\r\nVersion: 1.0\r\n\r\nPackage: b\r\nStat",
            &Distro::default(),
        );
        assert_eq!(names(&p), ["a"]);
        assert_eq!(p.packages[0].version, "1.0");
        assert_eq!(p.problems.len(), 1, "{:?}", p.problems);
        assert_eq!(p.problems[0].line, 6);
    }

    #[test]
    fn huge_fields_refuse_their_record_and_others_are_ignored() {
        let huge = "x".repeat(MAX_FIELD_BYTES + 1);
        let desc = "y".repeat(1 << 20);
        let text = format!(
            "Package: big\nStatus: install ok installed\nVersion: 1\nMaintainer: {huge}\n\n\
             Package: long-description\nStatus: install ok installed\nVersion: 2\nDescription: {desc}\n {desc}\n"
        );
        let p = parse(&text, &Distro::default());
        assert_eq!(names(&p), ["long-description"], "fields not kept are not bounded, only skipped");
        assert_eq!(p.problems.len(), 1);
        assert_eq!(p.problems[0].line, 1);
        assert!(
            p.problems[0].reason.starts_with("field Maintainer is 4097 bytes, longer than 4096"),
            "{:?}",
            p.problems
        );
    }

    #[test]
    fn status_words() {
        for (s, yes) in [
            ("install ok installed", true),
            ("hold ok installed", true),
            ("install reinstreq installed", true),
            ("deinstall ok config-files", false),
            ("deinstall ok installed", false),
            ("install ok half-installed", false),
            ("purge ok not-installed", false),
            ("install ok", false),
        ] {
            assert_eq!(is_installed(s), yes, "{s}");
        }
    }

    #[test]
    fn reads_through_the_host_root() {
        let host = HostFs::new(concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/sbom/dpkg"));
        let inv = super::super::inventory(&host);
        assert_eq!(inv.failures, []);
        let keys: Vec<&str> = inv.packages.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["dpkg/base-files/amd64", "dpkg/held-pkg/all", "dpkg/libc6/amd64"]);
    }
}
