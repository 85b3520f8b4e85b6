//! opkg's status file (OpenWrt up to 24.10, Yocto): /usr/lib/opkg/status or
//! /var/lib/opkg/status, dpkg's stanza format (opkg libopkg/pkg_parse.c)
//! with `Status: install user installed` and, on some builds, a License
//! field. Parsed by dpkg's stanza reader.
use super::{dpkg, Distro, Manager, Parsed};

pub fn parse(text: &str, distro: &Distro) -> Parsed {
    dpkg::parse_as(text, Manager::Opkg, distro)
}

#[cfg(test)]
mod tests {
    use super::super::{inventory, HostFs, Package};
    use super::*;

    #[test]
    fn the_fixture_status_file_read_once_through_its_link() {
        // /var/lib/opkg/status links to /usr/lib/opkg/status: one database.
        let inv = inventory(&HostFs::new(concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/sbom/opkg")));
        assert_eq!(inv.failures, []);
        let keys: Vec<&str> = inv.packages.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["opkg/busybox/x86_64", "opkg/libc/x86_64"], "the not-installed stanza is left out");
        assert_eq!(
            inv.packages[0].1,
            Package {
                name: "busybox".into(),
                version: "1.36.1-r2".into(),
                vendor: Some("Felix Fietkau <nbd@nbd.name>".into()),
                package_manager: Manager::Opkg,
                architecture: Some("x86_64".into()),
                source: Some("package/utils/busybox".into()),
                license: Some("GPL-2.0".into()),
                purl: "pkg:generic/openwrt/busybox@1.36.1-r2?arch=x86_64&distro=openwrt-23.05.4".into(),
            }
        );
        assert_eq!(inv.packages[1].1.vendor, None, "status files often lack Maintainer");
    }

    #[test]
    fn user_installed_counts() {
        let p = parse("Package: a\nVersion: 1\nStatus: install user installed\n", &Distro::default());
        assert_eq!(p.packages.len(), 1);
        assert_eq!(p.packages[0].purl, "pkg:generic/a@1");
    }
}
