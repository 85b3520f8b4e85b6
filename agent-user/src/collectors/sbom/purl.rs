//! Package URLs, as package-url/purl-spec (PURL-SPECIFICATION.rst) writes
//! them and PURL-TYPES.rst defines `deb`, `rpm` and `apk`: the namespace is
//! the distribution (os-release ID, lowercased), `arch` and `distro`
//! qualifiers, rpm's epoch as the `epoch` qualifier. opkg has no purl type:
//! its packages are `pkg:generic`.
use super::{Distro, Manager};

/// Percent-encodes everything but the unreserved characters and `:`
/// (which the spec leaves as is, so a deb epoch reads `1:2.3-4`); `+`
/// becomes `%2B`, as the spec requires.
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b'~' | b':') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The parts of one package's purl.
pub struct Parts<'a> {
    pub manager: Manager,
    pub name: &'a str,
    pub version: &'a str,
    pub arch: Option<&'a str>,
    /// rpm only.
    pub epoch: Option<&'a str>,
}

pub fn purl(p: &Parts<'_>, distro: &Distro) -> String {
    let ty = match p.manager {
        Manager::Dpkg => "deb",
        Manager::Rpm => "rpm",
        Manager::Apk => "apk",
        Manager::Opkg => "generic",
    };
    let mut s = format!("pkg:{ty}/");
    if let Some(ns) = &distro.id {
        s.push_str(&encode(&ns.to_ascii_lowercase()));
        s.push('/');
    }
    // deb and apk names are lowercase by spec; rpm names keep their case.
    let name = if p.manager == Manager::Rpm { p.name.to_string() } else { p.name.to_ascii_lowercase() };
    s.push_str(&encode(&name));
    s.push('@');
    s.push_str(&encode(p.version));
    let distro_q = match (&distro.id, &distro.version_id) {
        (Some(id), Some(v)) => Some(format!("{}-{v}", id.to_ascii_lowercase())),
        _ => None,
    };
    // Qualifier keys sorted, as the canonical form wants.
    let qualifiers = [("arch", p.arch), ("distro", distro_q.as_deref()), ("epoch", p.epoch)];
    let mut sep = '?';
    for (k, v) in qualifiers {
        if let Some(v) = v.filter(|v| !v.is_empty()) {
            s.push(sep);
            s.push_str(k);
            s.push('=');
            s.push_str(&encode(v));
            sep = '&';
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn debian() -> Distro {
        Distro { id: Some("debian".into()), version_id: Some("12".into()) }
    }

    #[test]
    fn deb_purls_follow_the_spec_examples() {
        let p = Parts {
            manager: Manager::Dpkg,
            name: "libc6",
            version: "2.36-9+deb12u4",
            arch: Some("amd64"),
            epoch: None,
        };
        assert_eq!(purl(&p, &debian()), "pkg:deb/debian/libc6@2.36-9%2Bdeb12u4?arch=amd64&distro=debian-12");
        let p =
            Parts { manager: Manager::Dpkg, name: "attr", version: "1:2.4.47-2", arch: Some("source"), epoch: None };
        assert_eq!(purl(&p, &Distro::default()), "pkg:deb/attr@1:2.4.47-2?arch=source");
    }

    #[test]
    fn rpm_epoch_is_a_qualifier_and_opkg_is_generic() {
        let fedora = Distro { id: Some("fedora".into()), version_id: Some("40".into()) };
        let p = Parts {
            manager: Manager::Rpm,
            name: "NetworkManager",
            version: "1.2-4",
            arch: Some("x86_64"),
            epoch: Some("1"),
        };
        assert_eq!(purl(&p, &fedora), "pkg:rpm/fedora/NetworkManager@1.2-4?arch=x86_64&distro=fedora-40&epoch=1");
        let p = Parts { manager: Manager::Opkg, name: "busybox", version: "1.36.1-1", arch: None, epoch: None };
        assert_eq!(
            purl(&p, &Distro { id: Some("openwrt".into()), version_id: None }),
            "pkg:generic/openwrt/busybox@1.36.1-1"
        );
        let p = Parts { manager: Manager::Apk, name: "a b/c", version: "1", arch: None, epoch: None };
        assert_eq!(purl(&p, &Distro::default()), "pkg:apk/a%20b%2Fc@1");
    }
}
