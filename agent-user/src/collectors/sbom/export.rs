//! `hitcount sbom`: the inventory as a standard document an SBoM tool reads:
//! CycloneDX 1.5 JSON (CycloneDX/specification schema/bom-1.5.schema.json)
//! or SPDX 2.3 JSON (spdx/spdx-spec schemas/spdx-schema.json), or the SBoM
//! event payloads as a JSON array.
//!
//! Each document is a new one: CycloneDX asks for a new serialNumber on
//! every BOM, even of unchanged contents, and SPDX for a unique
//! documentNamespace, so both carry a random (version 4) UUID, read from
//! /dev/urandom.
use std::io::Read;

use serde_json::{json, Value};

use super::{Inventory, Package};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Format {
    #[default]
    Cyclonedx,
    Spdx,
    Json,
}

/// What a document says about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Meta {
    /// RFC 3339 in whole seconds, UTC (SPDX allows no fraction).
    pub created: String,
    /// A UUID, as [`uuid_v4`] writes it.
    pub uuid: String,
}

impl Meta {
    /// Now, and a fresh random UUID.
    pub fn now() -> std::io::Result<Meta> {
        let mut b = [0u8; 16];
        std::fs::File::open("/dev/urandom")?.read_exact(&mut b)?;
        Ok(Meta {
            created: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
            uuid: uuid_v4(b),
        })
    }
}

const TOOL: &str = "hitcount";
const TOOL_VERSION: &str = env!("CARGO_PKG_VERSION");

/// RFC 9562 version 4: random bits with the version and variant set.
pub fn uuid_v4(mut b: [u8; 16]) -> String {
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!("{}-{}-{}-{}-{}", &h[..8], &h[8..12], &h[12..16], &h[16..20], &h[20..])
}

/// The document, pretty-printed.
pub fn render(format: Format, inv: &Inventory, meta: &Meta) -> String {
    let v = match format {
        Format::Cyclonedx => cyclonedx(inv, meta),
        Format::Spdx => spdx(inv, meta),
        Format::Json => Value::Array(inv.packages.iter().map(|(_, p)| json!(p)).collect()),
    };
    serde_json::to_string_pretty(&v).expect("JSON values serialize")
}

/// The properties CycloneDX has no field for, under our own namespace.
fn properties(p: &Package) -> Vec<Value> {
    let mut v = vec![json!({"name": "hitcount:package_manager", "value": p.package_manager.name()})];
    for (name, value) in [("hitcount:architecture", &p.architecture), ("hitcount:source", &p.source)] {
        if let Some(value) = value {
            v.push(json!({"name": name, "value": value}));
        }
    }
    v
}

fn cyclonedx(inv: &Inventory, meta: &Meta) -> Value {
    let components: Vec<Value> = inv
        .packages
        .iter()
        .map(|(key, p)| {
            let mut c = json!({
                "type": "library",
                "bom-ref": key,
                "name": p.name,
                "version": p.version,
                "purl": p.purl,
                "properties": properties(p),
            });
            if let Some(v) = &p.vendor {
                c["publisher"] = json!(v);
            }
            // A name, not an SPDX id or expression: rpm's `GPLv2+` is neither.
            if let Some(l) = &p.license {
                c["licenses"] = json!([{"license": {"name": l}}]);
            }
            c
        })
        .collect();
    let mut metadata = json!({
        "timestamp": meta.created,
        "tools": {"components": [{"type": "application", "name": TOOL, "version": TOOL_VERSION}]},
    });
    if let Some(id) = &inv.distro.id {
        let mut os = json!({"type": "operating-system", "bom-ref": "operating-system", "name": id});
        if let Some(v) = &inv.distro.version_id {
            os["version"] = json!(v);
        }
        metadata["component"] = os;
    }
    json!({
        "$schema": "http://cyclonedx.org/schema/bom-1.5.schema.json",
        "bomFormat": "CycloneDX",
        "specVersion": "1.5",
        "serialNumber": format!("urn:uuid:{}", meta.uuid),
        "version": 1,
        "metadata": metadata,
        "components": components,
    })
}

/// An SPDX actor from `Name <email>`: `Organization: Name (email)`. The
/// name loses any parentheses, which the actor syntax reserves for the
/// email.
fn supplier(vendor: &str) -> String {
    let (name, email) = match vendor.split_once('<') {
        Some((n, rest)) => (n, rest.split('>').next().map(str::trim)),
        None => (vendor, None),
    };
    let name: String = name.chars().filter(|c| !matches!(c, '(' | ')')).collect();
    let name = name.trim();
    if name.is_empty() {
        return "NOASSERTION".into();
    }
    match email.filter(|e| !e.is_empty()) {
        Some(e) => format!("Organization: {name} ({e})"),
        None => format!("Organization: {name}"),
    }
}

fn spdx(inv: &Inventory, meta: &Meta) -> Value {
    let id = |i: usize| format!("SPDXRef-Package-{}", i + 1);
    let packages: Vec<Value> = inv
        .packages
        .iter()
        .enumerate()
        .map(|(i, (_, p))| {
            let mut v = json!({
                "SPDXID": id(i),
                "name": p.name,
                "versionInfo": p.version,
                "supplier": p.vendor.as_deref().map(supplier).unwrap_or_else(|| "NOASSERTION".into()),
                "downloadLocation": "NOASSERTION",
                "filesAnalyzed": false,
                // The managers' license fields are not SPDX expressions
                // (rpm `GPLv2+`): stated as found, in the comment.
                "licenseConcluded": "NOASSERTION",
                "licenseDeclared": "NOASSERTION",
                "copyrightText": "NOASSERTION",
                "externalRefs": [{
                    "referenceCategory": "PACKAGE-MANAGER",
                    "referenceType": "purl",
                    "referenceLocator": p.purl,
                }],
            });
            if let Some(l) = &p.license {
                v["licenseComments"] = json!(format!("{}: {l}", p.package_manager.name()));
            }
            if let Some(s) = &p.source {
                v["sourceInfo"] = json!(format!("source package {s}"));
            }
            v
        })
        .collect();
    let relationships: Vec<Value> = (0..packages.len())
        .map(|i| json!({"spdxElementId": "SPDXRef-DOCUMENT", "relationshipType": "DESCRIBES", "relatedSpdxElement": id(i)}))
        .collect();
    let name = match (&inv.distro.id, &inv.distro.version_id) {
        (Some(id), Some(v)) => format!("{id}-{v}"),
        (Some(id), None) => id.clone(),
        _ => "linux".into(),
    };
    json!({
        "spdxVersion": "SPDX-2.3",
        "dataLicense": "CC0-1.0",
        "SPDXID": "SPDXRef-DOCUMENT",
        "name": format!("{TOOL} SBoM of {name}"),
        "documentNamespace": format!("https://hitcount.invalid/spdx/{name}-{}", meta.uuid),
        "creationInfo": {"created": meta.created, "creators": [format!("Tool: {TOOL}-{TOOL_VERSION}")]},
        "packages": packages,
        "relationships": relationships,
    })
}

#[cfg(test)]
mod tests {
    use super::super::{inventory, HostFs};
    use super::*;

    fn meta() -> Meta {
        Meta { created: "2024-05-06T07:08:09Z".into(), uuid: uuid_v4([0xff; 16]) }
    }

    fn fixture(case: &str) -> Inventory {
        inventory(&HostFs::new(format!("{}/fixtures/sbom/{case}", env!("CARGO_MANIFEST_DIR"))))
    }

    #[test]
    fn uuid_version_and_variant() {
        assert_eq!(uuid_v4([0xff; 16]), "ffffffff-ffff-4fff-bfff-ffffffffffff");
        assert_eq!(uuid_v4([0; 16]), "00000000-0000-4000-8000-000000000000");
        let a = Meta::now().unwrap();
        assert_ne!(a.uuid, Meta::now().unwrap().uuid);
        assert!(a.created.ends_with('Z') && a.created.len() == 20, "{}", a.created);
    }

    #[test]
    fn cyclonedx_components() {
        let inv = fixture("rpm");
        let v: Value = serde_json::from_str(&render(Format::Cyclonedx, &inv, &meta())).unwrap();
        assert_eq!(v["serialNumber"], "urn:uuid:ffffffff-ffff-4fff-bfff-ffffffffffff");
        assert_eq!(
            v["metadata"]["component"],
            json!({"type": "operating-system", "bom-ref": "operating-system", "name": "fedora", "version": "40"})
        );
        assert_eq!(
            v["components"][1],
            json!({
                "type": "library",
                "bom-ref": "rpm/hitcount-tool/x86_64",
                "name": "hitcount-tool",
                "version": "0.9-1",
                "publisher": "Packager Only <packager@example.invalid>",
                "licenses": [{"license": {"name": "GPLv2+"}}],
                "purl": "pkg:rpm/fedora/hitcount-tool@0.9-1?arch=x86_64&distro=fedora-40",
                "properties": [
                    {"name": "hitcount:package_manager", "value": "rpm"},
                    {"name": "hitcount:architecture", "value": "x86_64"},
                    {"name": "hitcount:source", "value": "hitcount-tool-0.9-1.src.rpm"},
                ],
            })
        );
    }

    #[test]
    fn spdx_packages() {
        let inv = fixture("dpkg");
        let v: Value = serde_json::from_str(&render(Format::Spdx, &inv, &meta())).unwrap();
        assert_eq!(
            v["documentNamespace"],
            "https://hitcount.invalid/spdx/debian-12-ffffffff-ffff-4fff-bfff-ffffffffffff"
        );
        assert_eq!(v["packages"].as_array().unwrap().len(), 3);
        let libc = &v["packages"][2];
        assert_eq!(libc["name"], "libc6");
        assert_eq!(libc["supplier"], "Organization: GNU Libc Maintainers (debian-glibc@lists.debian.org)");
        assert_eq!(
            libc["externalRefs"][0]["referenceLocator"],
            "pkg:deb/debian/libc6@2.36-9%2Bdeb12u4?arch=amd64&distro=debian-12"
        );
        assert_eq!(v["relationships"][2]["relatedSpdxElement"], "SPDXRef-Package-3");
        assert_eq!(supplier("A (B) C"), "Organization: A B C");
        assert_eq!(supplier(" <x@y>"), "NOASSERTION");
    }

    #[test]
    fn json_is_the_event_payloads() {
        let inv = fixture("apk");
        let v: Value = serde_json::from_str(&render(Format::Json, &inv, &meta())).unwrap();
        assert_eq!(v.as_array().unwrap().len(), 3);
        assert_eq!(v[1], json!(inv.packages[1].1));
        assert_eq!(v[1]["package_manager"], "apk");
    }
}
