//! Privileged: the SBoM collector on this machine's real package databases,
//! against the package managers' own tools as oracles: a deb built and
//! installed here, dpkg-query's inventory, an rpm database made by rpm, and
//! the exported documents checked by the official validators.
use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::Command,
};

use serde_json::Value;
use tests::{hitcount_bin, marker, payloads, privileged, skip};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../agent-user/fixtures/sbom");

/// Runs a command that must succeed; its stdout.
fn ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// `hitcount snapshot --only SBoM`: every event line.
fn snapshot(host_root: Option<&Path>) -> Vec<Value> {
    let mut cmd = Command::new(hitcount_bin());
    cmd.args(["snapshot", "--only", "SBoM"]);
    if let Some(r) = host_root {
        cmd.arg("--host-root").arg(r);
    }
    ok(&mut cmd).lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

fn sbom_payloads(events: &[Value]) -> Vec<Value> {
    payloads(events, "SBoM").into_iter().filter(|p| !p.is_null()).cloned().collect()
}

fn failed_sources(events: &[Value]) -> Value {
    events.iter().find(|e| e["event_type"] == "SBoM").map(|e| e["snapshot"]["failed_sources"].clone()).unwrap()
}

/// A directory removed on Drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(marker(tag));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// An installed test package, purged on Drop whatever the test did.
struct Installed(String);

impl Drop for Installed {
    fn drop(&mut self) {
        let _ = Command::new("dpkg").args(["-P", &self.0]).output();
    }
}

fn dpkg_status(name: &str) -> String {
    let out = Command::new("dpkg-query").args(["-W", "-f", "${Status}", name]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn a_deb_installed_with_dpkg_appears_and_is_gone_after_removal() {
    if !privileged("a_deb_installed_with_dpkg_appears_and_is_gone_after_removal") {
        return;
    }
    let name = marker("sbom");
    let dir = TempDir::new("sbom-deb");
    let pkg = dir.0.join("pkg");
    std::fs::create_dir_all(pkg.join("DEBIAN")).unwrap();
    std::fs::create_dir_all(pkg.join("etc")).unwrap();
    // A conffile, so that `dpkg -r` leaves `deinstall ok config-files`.
    std::fs::write(pkg.join(format!("etc/{name}.conf")), "x\n").unwrap();
    std::fs::write(pkg.join("DEBIAN/conffiles"), format!("/etc/{name}.conf\n")).unwrap();
    std::fs::write(
        pkg.join("DEBIAN/control"),
        format!(
            "Package: {name}\nVersion: 1:2.3-4+hc1\nArchitecture: all\nMaintainer: Hitcount Test <test@example.invalid>\n\
             Source: hitcount-test-src\nDescription: hitcount SBoM test package\n a second line\n"
        ),
    )
    .unwrap();
    let deb = dir.0.join("test.deb");
    ok(Command::new("dpkg-deb").args(["--root-owner-group", "--build"]).arg(&pkg).arg(&deb));
    let guard = Installed(name.clone());
    ok(Command::new("dpkg").arg("-i").arg(&deb));

    let events = snapshot(None);
    let mine: Vec<Value> = sbom_payloads(&events).into_iter().filter(|p| p["name"] == name.as_str()).collect();
    assert_eq!(mine.len(), 1, "{mine:?}");
    let os = std::fs::read_to_string("/etc/os-release").unwrap();
    let field =
        |k: &str| os.lines().find_map(|l| l.strip_prefix(&format!("{k}="))).map(|v| v.trim_matches('"').to_string());
    let (id, version_id) = (field("ID").unwrap(), field("VERSION_ID").unwrap());
    assert_eq!(
        mine[0],
        serde_json::json!({
            "name": name,
            "version": "1:2.3-4+hc1",
            "vendor": "Hitcount Test <test@example.invalid>",
            "package_manager": "dpkg",
            "architecture": "all",
            "source": "hitcount-test-src",
            "license": null,
            "purl": format!("pkg:deb/{id}/{name}@1:2.3-4%2Bhc1?arch=all&distro={id}-{version_id}"),
        })
    );
    assert_eq!(failed_sources(&events), serde_json::json!([]));

    ok(Command::new("dpkg").args(["-r", &name]));
    assert_eq!(dpkg_status(&name), "deinstall ok config-files", "the state the collector must not count");
    let events = snapshot(None);
    assert!(
        !sbom_payloads(&events).iter().any(|p| p["name"] == name.as_str()),
        "removed, config files left: not installed"
    );
    drop(guard);
    assert_eq!(dpkg_status(&name), "", "purged");
}

/// (name, version, architecture) of every installed deb, by dpkg-query.
fn dpkg_query_installed() -> BTreeSet<(String, String, String)> {
    let out = ok(Command::new("dpkg-query").args([
        "-W",
        "-f",
        "${db:Status-Abbrev}\t${Package}\t${Version}\t${Architecture}\n",
    ]));
    out.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            // ii: installed; hi: held and installed. rc (config files
            // left), un, pn, iU, iF ... are not installed.
            (f.len() == 4 && (f[0].starts_with("ii") || f[0].starts_with("hi")))
                .then(|| (f[1].to_string(), f[2].to_string(), f[3].to_string()))
        })
        .collect()
}

fn triples(payloads: &[Value], manager: &str) -> BTreeSet<(String, String, String)> {
    payloads
        .iter()
        .filter(|p| p["package_manager"] == manager)
        .map(|p| {
            let s = |k: &str| p[k].as_str().unwrap_or_default().to_string();
            (s("name"), s("version"), s("architecture"))
        })
        .collect()
}

#[test]
fn the_dpkg_inventory_equals_dpkg_query() {
    if !privileged("the_dpkg_inventory_equals_dpkg_query") {
        return;
    }
    let oracle = dpkg_query_installed();
    assert!(oracle.len() > 50, "a Debian host has packages: {}", oracle.len());
    let events = snapshot(None);
    let payloads = sbom_payloads(&events);
    let dpkg = payloads.iter().filter(|p| p["package_manager"] == "dpkg").count();
    assert_eq!(dpkg, oracle.len(), "one event per package, no duplicates");
    assert_eq!(triples(&payloads, "dpkg"), oracle);
    let items = events.iter().find(|e| e["event_type"] == "SBoM").unwrap()["snapshot"]["items"].as_u64().unwrap();
    assert_eq!(items as usize, payloads.len());
    assert_eq!(failed_sources(&events), serde_json::json!([]));

    // `hitcount sbom --format json` is the same inventory.
    let json: Vec<Value> =
        serde_json::from_str(&ok(Command::new(hitcount_bin()).args(["sbom", "--format", "json"]))).unwrap();
    assert_eq!(triples(&json, "dpkg"), oracle);
}

fn have(tool: &str) -> bool {
    Command::new("sh").args(["-c", &format!("command -v {tool}")]).output().is_ok_and(|o| o.status.success())
}

const SPEC: &str = "Name: NAME
Version: 3.1
Release: 7.hc
Epoch: 5
Summary: hitcount SBoM test package
License: MIT OR Apache-2.0
Vendor: Hitcount Test Vendor
Packager: Hitcount Test <test@example.invalid>
BuildArch: noarch

%description
An empty package.

%files
";

#[test]
fn an_rpm_database_made_by_rpm_is_read_through_a_host_root() {
    if !privileged("an_rpm_database_made_by_rpm_is_read_through_a_host_root") {
        return;
    }
    if !have("rpmbuild") {
        skip("an_rpm_database_made_by_rpm_is_read_through_a_host_root", "no rpmbuild (apt-get install rpm)");
        return;
    }
    let name = marker("sbom-rpm");
    let top = TempDir::new("sbom-rpmbuild");
    std::fs::create_dir_all(top.0.join("SPECS")).unwrap();
    let spec = top.0.join("SPECS/test.spec");
    std::fs::write(&spec, SPEC.replace("NAME", &name)).unwrap();
    ok(Command::new("rpmbuild").arg("--define").arg(format!("_topdir {}", top.0.display())).arg("-bb").arg(&spec));
    let rpm = top.0.join(format!("RPMS/noarch/{name}-3.1-7.hc.noarch.rpm"));

    // A fake host root with an rpm database where openSUSE and Fedora 36+
    // keep it, and no other database.
    let root = TempDir::new("sbom-rpmroot");
    let db = root.0.join("usr/lib/sysimage/rpm");
    std::fs::create_dir_all(&db).unwrap();
    ok(Command::new("rpm").arg("--initdb").arg("--dbpath").arg(&db));
    ok(Command::new("rpm").args(["-i", "--justdb", "--nodeps", "--dbpath"]).arg(&db).arg(&rpm));
    let oracle = ok(Command::new("rpm")
        .args(["-qa", "--dbpath"])
        .arg(&db)
        .args(["--qf", "%{NAME}|%{EPOCH}:%{VERSION}-%{RELEASE}|%{ARCH}|%{VENDOR}|%{LICENSE}|%{SOURCERPM}\n"]));
    let expect = serde_json::json!({
        "name": name,
        "version": "5:3.1-7.hc",
        "vendor": "Hitcount Test Vendor",
        "package_manager": "rpm",
        "architecture": "noarch",
        "source": format!("{name}-3.1-7.hc.src.rpm"),
        "license": "MIT OR Apache-2.0",
        "purl": format!("pkg:rpm/{name}@3.1-7.hc?arch=noarch&epoch=5"),
    });
    let e = |k: &str| expect[k].as_str().unwrap().to_string();
    assert_eq!(
        oracle.trim(),
        [e("name"), e("version"), e("architecture"), e("vendor"), e("license"), e("source")].join("|"),
        "rpm itself reads what the collector must"
    );
    let events = snapshot(Some(&root.0));
    assert_eq!(sbom_payloads(&events), std::slice::from_ref(&expect));
    assert_eq!(failed_sources(&events), serde_json::json!([]));

    // As a container sees the host: mounted read-only, where SQLite cannot
    // write the WAL index rpm's database wants.
    if !have("unshare") {
        skip("an_rpm_database_made_by_rpm_is_read_through_a_host_root", "no unshare: read-only root not tried");
        return;
    }
    let script = format!(
        "mount --bind -o ro {root} {root} && exec {bin} snapshot --only SBoM --host-root {root}",
        root = root.0.display(),
        bin = hitcount_bin().display()
    );
    let out = ok(Command::new("unshare").args(["-m", "--propagation", "private", "sh", "-c", &script]));
    let events: Vec<Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(sbom_payloads(&events), [expect]);
    assert_eq!(failed_sources(&events), serde_json::json!([]));
}

fn validators_present() -> bool {
    Command::new("python3")
        .args(["-c", "import cyclonedx.validation.json, spdx_tools"])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Validates a CycloneDX 1.5 document with cyclonedx-python-lib's strict
/// JSON validator: None when valid, else its error.
fn cyclonedx_errors(file: &Path) -> Option<String> {
    let script = "import sys\n\
        from cyclonedx.validation.json import JsonStrictValidator\n\
        from cyclonedx.schema import SchemaVersion\n\
        e = JsonStrictValidator(SchemaVersion.V1_5).validate_str(open(sys.argv[1]).read())\n\
        print(e if e is not None else 'valid')\n";
    let out = ok(Command::new("python3").args(["-c", script]).arg(file));
    (out.trim() != "valid").then_some(out)
}

fn spdx_errors(file: &Path) -> Option<String> {
    let out = Command::new("pyspdxtools").arg("-i").arg(file).output().unwrap();
    (!out.status.success())
        .then(|| format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

#[test]
fn exported_documents_pass_the_official_validators() {
    if !privileged("exported_documents_pass_the_official_validators") {
        return;
    }
    if !validators_present() {
        skip(
            "exported_documents_pass_the_official_validators",
            "cyclonedx-python-lib and spdx-tools not installed (PyPI unreachable at setup?)",
        );
        return;
    }
    let dir = TempDir::new("sbom-docs");
    // This host, and the fixture roots whose packages carry licenses,
    // epochs and the other managers' fields.
    let roots = ["/".to_string(), format!("{FIXTURES}/rpm"), format!("{FIXTURES}/apk"), format!("{FIXTURES}/opkg")];
    for root in &roots {
        let json: Vec<Value> = serde_json::from_str(&ok(Command::new(hitcount_bin()).args([
            "sbom",
            "--format",
            "json",
            "--host-root",
            root,
        ])))
        .unwrap();
        assert!(!json.is_empty(), "{root}");
        for format in ["cyclonedx", "spdx"] {
            let text = ok(Command::new(hitcount_bin()).args(["sbom", "--format", format, "--host-root", root]));
            let file = dir.0.join(format!("{}.{format}.json", root.replace('/', "_")));
            std::fs::write(&file, &text).unwrap();
            let doc: Value = serde_json::from_str(&text).unwrap();
            let (errors, listed) = match format {
                "cyclonedx" => (cyclonedx_errors(&file), doc["components"].as_array().unwrap().len()),
                _ => (spdx_errors(&file), doc["packages"].as_array().unwrap().len()),
            };
            assert_eq!(errors, None, "{format} of {root}");
            assert_eq!(listed, json.len(), "{format} of {root}: every package");
        }
    }
    // The validators do refuse a broken document: these checks can fail.
    let bad = dir.0.join("bad.json");
    let mut doc: Value = serde_json::from_str(&ok(Command::new(hitcount_bin()).args([
        "sbom",
        "--format",
        "spdx",
        "--host-root",
        &roots[1],
    ])))
    .unwrap();
    doc["packages"][0]["supplier"] = "not an actor".into();
    std::fs::write(&bad, doc.to_string()).unwrap();
    assert!(spdx_errors(&bad).is_some());
    let mut doc: Value =
        serde_json::from_str(&ok(Command::new(hitcount_bin()).args(["sbom", "--host-root", &roots[1]]))).unwrap();
    doc["components"][0]["not-in-the-schema"] = 1.into();
    std::fs::write(&bad, doc.to_string()).unwrap();
    assert!(cyclonedx_errors(&bad).is_some());
}
