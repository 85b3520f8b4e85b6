//! apk's database of installed packages, /lib/apk/db/installed (Alpine, and
//! OpenWrt from 25.12): one record per package, records separated by blank
//! lines, each line a one-letter key, a colon and the value (apk-tools
//! doc/apk-package.5: P name, V version, A architecture, m maintainer,
//! L license, o origin; F/R/Z... for the files, not kept). Every record in
//! this file is an installed package.
use super::{bounded, purl, Distro, Manager, Package, Parsed, Problem};

#[derive(Default)]
struct Record {
    line: usize,
    broken: bool,
    name: Option<String>,
    version: Option<String>,
    arch: Option<String>,
    maintainer: Option<String>,
    license: Option<String>,
    origin: Option<String>,
}

pub fn parse(text: &str, distro: &Distro) -> Parsed {
    let mut parsed = Parsed::default();
    let mut cur: Option<Record> = None;
    let mut lines = text.split('\n').enumerate();
    loop {
        let next = lines.next();
        let line = next.map(|(_, l)| l.strip_suffix('\r').unwrap_or(l));
        let n = next.map_or(0, |(i, _)| i + 1);
        if line.is_none_or(|l| l.trim().is_empty()) {
            if let Some(r) = cur.take() {
                if !finish(r, distro, &mut parsed) {
                    break;
                }
            }
            if line.is_none() {
                break;
            }
            continue;
        }
        let line = line.unwrap_or_default();
        let r = cur.get_or_insert_with(|| Record { line: n, ..Record::default() });
        if r.broken {
            continue;
        }
        let b = line.as_bytes();
        if b.len() < 2 || b[1] != b':' {
            parsed.problems.push(Problem::new(n, "not a `K:value` line: record refused"));
            r.broken = true;
            continue;
        }
        let slot = match b[0] {
            b'P' => &mut r.name,
            b'V' => &mut r.version,
            b'A' => &mut r.arch,
            b'm' => &mut r.maintainer,
            b'L' => &mut r.license,
            b'o' => &mut r.origin,
            _ => continue,
        };
        match bounded(&line[..1], &line[2..]) {
            Ok(v) => *slot = v,
            Err(e) => {
                parsed.problems.push(Problem::new(n, e));
                r.broken = true;
            }
        }
    }
    parsed
}

/// Turns a record into a package; false when the package bound is reached.
fn finish(r: Record, distro: &Distro, parsed: &mut Parsed) -> bool {
    if r.broken {
        return true;
    }
    let (Some(name), Some(version)) = (r.name, r.version) else {
        parsed.problems.push(Problem::new(r.line, "no P: (name) or V: (version) line: record refused"));
        return true;
    };
    let purl = purl::purl(
        &purl::Parts { manager: Manager::Apk, name: &name, version: &version, arch: r.arch.as_deref(), epoch: None },
        distro,
    );
    let p = Package {
        name,
        version,
        vendor: r.maintainer,
        package_manager: Manager::Apk,
        architecture: r.arch,
        source: r.origin,
        license: r.license,
        purl,
    };
    parsed.push(p, r.line)
}

#[cfg(test)]
mod tests {
    use super::super::{inventory, HostFs, MAX_FIELD_BYTES};
    use super::*;

    const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/sbom/apk");

    #[test]
    fn the_fixture_database() {
        let inv = inventory(&HostFs::new(ROOT));
        assert_eq!(inv.failures, []);
        let keys: Vec<&str> = inv.packages.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["apk/busybox/x86_64", "apk/musl/x86_64", "apk/ssl_client/x86_64"]);
        assert_eq!(
            inv.packages[1].1,
            Package {
                name: "musl".into(),
                version: "1.2.5-r0".into(),
                vendor: Some("Natanael Copa <ncopa@alpinelinux.org>".into()),
                package_manager: Manager::Apk,
                architecture: Some("x86_64".into()),
                source: Some("musl".into()),
                license: Some("MIT".into()),
                purl: "pkg:apk/alpine/musl@1.2.5-r0?arch=x86_64&distro=alpine-3.20.3".into(),
            }
        );
        assert_eq!(inv.packages[2].1.source.as_deref(), Some("busybox"), "origin is the source package");
    }

    #[test]
    fn malformed_truncated_and_huge_records() {
        let huge = "x".repeat(MAX_FIELD_BYTES + 1);
        let text = format!(
            "P:ok\nV:1\n\nP:bad\nthis is not a key\nV:2\n\nV:3\nA:x86_64\n\nP:big\nV:4\nL:{huge}\n\nP:cut\nV:5\nA:aarch"
        );
        let p = parse(&text, &Distro::default());
        let names: Vec<&str> = p.packages.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["ok", "cut"]);
        assert_eq!(p.packages[1].architecture.as_deref(), Some("aarch"), "the last record ends at the end of the file");
        let lines: Vec<usize> = p.problems.iter().map(|p| p.line).collect();
        assert_eq!(lines, [5, 8, 13], "{:?}", p.problems);
        assert!(p.problems[2].reason.contains("field L is 4097 bytes"), "{:?}", p.problems);
        assert_eq!(parse("", &Distro::default()), Parsed::default());
    }
}
