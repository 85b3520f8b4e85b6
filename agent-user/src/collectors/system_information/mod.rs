//! SystemInformation: one event describing the device: hardware vendor and
//! model (DMI on SMBIOS machines, the device tree on ARM boards, or the
//! configuration's overrides), the OS (os-release, uname) and its network
//! interfaces.
use serde::Serialize;

use super::{ids::Ids, Context, Snapshot, Taken};
use crate::{config::Config, events::EventType, hostfs::HostFs};

pub mod netlink;
pub mod nics;

use nics::Nic;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SystemInformation {
    pub hardware_vendor: Option<String>,
    pub hardware_model: Option<String>,
    /// PRETTY_NAME of os-release ("Debian GNU/Linux 12 (bookworm)").
    pub os_dist: String,
    /// VERSION_ID of os-release ("12").
    pub os_version: Option<String>,
    pub os_platform: String,
    pub os_arch: String,
    pub kernel_release: String,
    pub hostname: String,
    pub nics: Vec<Nic>,
}

/// What uname(2) says of the running kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uname {
    pub sysname: String,
    pub nodename: String,
    pub release: String,
    pub machine: String,
}

/// uname(2). Under `--host-root` in a container this is still right: a
/// container runs on the host's kernel, so sysname, release and machine are
/// the host's (only the node name belongs to the UTS namespace).
pub fn uname() -> Uname {
    // SAFETY: utsname is plain data; uname fills it and cannot fail with a valid pointer.
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    unsafe { libc::uname(&mut u) };
    let field = |f: &[libc::c_char]| {
        let bytes: Vec<u8> = f.iter().take_while(|&&c| c != 0).map(|&c| c as u8).collect();
        String::from_utf8_lossy(&bytes).into_owned()
    };
    Uname {
        sysname: field(&u.sysname),
        nodename: field(&u.nodename),
        release: field(&u.release),
        machine: field(&u.machine),
    }
}

/// Longest value kept from os-release, DMI or the device tree.
const VALUE_MAX: usize = 256;
const OS_RELEASE: [&str; 2] = ["/etc/os-release", "/usr/lib/os-release"];

/// KEY=value lines of os-release(5): values unquoted ("..." with \\, \",
/// \$, \` escapes, or '...'), comments and malformed lines skipped.
pub fn parse_os_release(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.starts_with('#') {
            continue;
        }
        let Some((k, v)) = line.split_once('=') else { continue };
        if k.is_empty() || !k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            continue;
        }
        let v = match v.as_bytes().first() {
            Some(b'"') if v.len() >= 2 && v.ends_with('"') => {
                let mut s = String::new();
                let mut chars = v[1..v.len() - 1].chars();
                while let Some(c) = chars.next() {
                    if c == '\\' {
                        match chars.next() {
                            Some(e @ ('\\' | '"' | '$' | '`')) => s.push(e),
                            Some(e) => {
                                s.push('\\');
                                s.push(e);
                            }
                            None => s.push('\\'),
                        }
                    } else {
                        s.push(c);
                    }
                }
                s
            }
            Some(b'\'') if v.len() >= 2 && v.ends_with('\'') => v[1..v.len() - 1].to_string(),
            _ => v.to_string(),
        };
        out.push((k.to_string(), clean(&v)));
    }
    out
}

/// A host-provided string: control characters dropped, at most VALUE_MAX bytes.
fn clean(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars().filter(|c| !c.is_control()) {
        if out.len() + c.len_utf8() > VALUE_MAX {
            break;
        }
        out.push(c);
    }
    out.trim().to_string()
}

/// (os_dist, os_version) from the first os-release file that exists.
fn os(host: &HostFs, taken: &mut Taken) -> (String, Option<String>) {
    let mut unreadable = false;
    for path in OS_RELEASE {
        match host.read_bounded(path, 64 << 10) {
            Ok(bytes) => {
                let kv = parse_os_release(&String::from_utf8_lossy(&bytes));
                let get = |k: &str| kv.iter().rev().find(|(key, v)| key == k && !v.is_empty()).map(|(_, v)| v.clone());
                // os-release(5): PRETTY_NAME defaults to "Linux"; NAME and VERSION are the next best thing.
                let dist = get("PRETTY_NAME")
                    .or_else(|| Some(format!("{} {}", get("NAME")?, get("VERSION")?)))
                    .or_else(|| get("NAME"))
                    .unwrap_or_else(|| "Linux".into());
                return (dist, get("VERSION_ID"));
            }
            Err(e) if e.is_not_found() => continue,
            Err(e) => {
                taken.fail_host(&e);
                unreadable = true;
                break;
            }
        }
    }
    if !unreadable {
        taken.fail(OS_RELEASE[0], "neither /etc/os-release nor /usr/lib/os-release exists");
    }
    ("Linux".into(), None)
}

/// Values firmware vendors leave in DMI when they fill nothing in.
const DMI_PLACEHOLDERS: [&str; 7] = [
    "To Be Filled By O.E.M.",
    "To be filled by O.E.M.",
    "System manufacturer",
    "System Product Name",
    "Default string",
    "Not Specified",
    "Not Applicable",
];

/// (vendor, model): the configuration's overrides, else DMI (SMBIOS:
/// x86 and some arm64 servers), else the device tree (most ARM boards),
/// else null.
pub fn hardware(host: &HostFs, config: &Config) -> (Option<String>, Option<String>) {
    let attr = |p: &str| {
        host.attribute(p).map(|v| clean(&v)).filter(|v| !v.is_empty() && !DMI_PLACEHOLDERS.contains(&v.as_str()))
    };
    let dmi =
        |a: &str, b: &str| attr(&format!("/sys/class/dmi/id/{a}")).or_else(|| attr(&format!("/sys/class/dmi/id/{b}")));
    let mut vendor = dmi("sys_vendor", "board_vendor");
    let mut model = dmi("product_name", "board_name");
    if vendor.is_none() && model.is_none() {
        for base in ["/proc/device-tree", "/sys/firmware/devicetree/base"] {
            // "model" is a NUL-terminated string; "compatible" a NUL-separated
            // list, most specific first, each "vendor,board".
            let m = attr(&format!("{base}/model"));
            let v = host
                .read_bounded(format!("{base}/compatible"), 4096)
                .ok()
                .and_then(|c| c.split(|&b| b == 0).next().map(|f| String::from_utf8_lossy(f).into_owned()))
                .and_then(|first| first.split_once(',').map(|(v, _)| clean(v)))
                .filter(|v| !v.is_empty());
            if m.is_some() || v.is_some() {
                (vendor, model) = (v, m);
                break;
            }
        }
    }
    (config.hardware_vendor.clone().or(vendor), config.hardware_model.clone().or(model))
}

/// The whole event, given what uname and the address dump said.
pub fn collect(
    host: &HostFs,
    config: &Config,
    uname: &Uname,
    addresses: &netlink::Addresses,
    taken: &mut Taken,
) -> SystemInformation {
    let (hardware_vendor, hardware_model) = hardware(host, config);
    let (os_dist, os_version) = os(host, taken);
    let ids = Ids::load(host);
    SystemInformation {
        hardware_vendor,
        hardware_model,
        os_dist,
        os_version,
        os_platform: uname.sysname.clone(),
        os_arch: uname.machine.clone(),
        kernel_release: uname.release.clone(),
        // The kernel shows the reader's UTS namespace here whatever the
        // mount, so in a container this is the host's name only when the
        // container shares the host's UTS namespace (hostNetwork does).
        hostname: host
            .attribute("/proc/sys/kernel/hostname")
            .map(|h| clean(&h))
            .unwrap_or_else(|| uname.nodename.clone()),
        nics: nics::nics(host, &ids, addresses, taken),
    }
}

pub struct SystemInformationCollector;

impl Snapshot for SystemInformationCollector {
    fn event_type(&self) -> EventType {
        EventType::SystemInformation
    }

    fn take(&mut self, cx: &Context<'_>) -> Taken {
        let mut taken = Taken::default();
        let addresses = netlink::dump().unwrap_or_else(|e| {
            taken.fail("rtnetlink RTM_GETADDR", e);
            netlink::Addresses::default()
        });
        if addresses.dropped > 0 {
            taken.fail(
                "rtnetlink RTM_GETADDR",
                format!(
                    "{} addresses past {} per interface, not reported",
                    addresses.dropped,
                    netlink::PER_INTERFACE_MAX
                ),
            );
        }
        let info = collect(cx.host, cx.config, &uname(), &addresses, &mut taken);
        taken.push("system", &info);
        taken
    }
}

#[cfg(test)]
mod tests {
    use std::{
        net::{Ipv4Addr, Ipv6Addr},
        path::Path,
    };

    use super::*;
    use netlink::{Addresses, InterfaceAddresses};

    fn fixture(case: &str) -> HostFs {
        HostFs::new(Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/system_information").join(case))
    }

    fn uname() -> Uname {
        Uname {
            sysname: "Linux".into(),
            nodename: "from-uname".into(),
            release: "6.1.0-test".into(),
            machine: "aarch64".into(),
        }
    }

    fn take(host: &HostFs, config: &Config, addresses: &Addresses) -> (serde_json::Value, Taken) {
        let mut taken = Taken::default();
        let info = collect(host, config, &uname(), addresses, &mut taken);
        (serde_json::to_value(info).unwrap(), taken)
    }

    #[test]
    fn os_release_values_unquote() {
        let kv = parse_os_release(
            "# comment\nNAME=\"Debian GNU/Linux\"\nID=debian\nVERSION='12 (bookworm)'\n\
             PRETTY_NAME=\"A \\\"quoted\\\" \\$name\\\\\"\nbad line\n-X=1\nEMPTY=\n",
        );
        let get = |k: &str| kv.iter().find(|(key, _)| key == k).map(|(_, v)| v.as_str());
        assert_eq!(get("NAME"), Some("Debian GNU/Linux"));
        assert_eq!(get("ID"), Some("debian"));
        assert_eq!(get("VERSION"), Some("12 (bookworm)"));
        assert_eq!(get("PRETTY_NAME"), Some("A \"quoted\" $name\\"));
        assert_eq!(get("EMPTY"), Some(""));
        assert_eq!(kv.len(), 5, "{kv:?}");
        assert_eq!(parse_os_release(&format!("NAME={}\n", "x".repeat(1000)))[0].1.len(), VALUE_MAX);
    }

    #[test]
    fn a_dmi_machine_with_eth_wifi_mobile_and_a_vlan() {
        let host = fixture("dmi");
        let mut addresses = Addresses::default();
        addresses.by_index.insert(
            2,
            InterfaceAddresses {
                v4: vec![Ipv4Addr::new(192, 0, 2, 7)],
                v6: vec!["fd00::7".parse::<Ipv6Addr>().unwrap()],
            },
        );
        let (v, taken) = take(&host, &Config::default(), &addresses);
        assert_eq!(taken.failures, []);
        assert_eq!((&v["hardware_vendor"], &v["hardware_model"]), (&"LENOVO".into(), &"20XW00ABCD".into()));
        assert_eq!((&v["os_dist"], &v["os_version"]), (&"Debian GNU/Linux 12 (bookworm)".into(), &"12".into()));
        assert_eq!(
            (&v["os_platform"], &v["os_arch"], &v["kernel_release"]),
            (&"Linux".into(), &"aarch64".into(), &"6.1.0-test".into())
        );
        assert_eq!(v["hostname"], "fixture-host", "from /proc/sys/kernel/hostname");
        let nics = v["nics"].as_array().unwrap();
        let names: Vec<&str> = nics.iter().map(|n| n["name"].as_str().unwrap()).collect();
        assert_eq!(names, ["enp0s3", "enp0s3.100", "veth0", "wlan0", "wwan0"], "lo is not a NIC");
        assert_eq!(
            nics[0],
            serde_json::json!({
                "name": "enp0s3", "type": "ETH", "vlans": [100, 200],
                // The direct parent is virtio0, whose ids are virtio's: the vendor is its PCI parent's.
                "vendor": "Red Hat, Inc.",
                "info": {"ipv4_address": ["192.0.2.7"], "ipv6_address": ["fd00::7"], "mac": "52:54:00:12:34:56"},
            })
        );
        let kind = |i: usize| nics[i]["type"].as_str().unwrap();
        assert_eq!([kind(1), kind(2), kind(3), kind(4)], ["UNKNOWN", "UNKNOWN", "WIFI", "MOBILE"]);
        assert_eq!(nics[1]["vlans"], serde_json::json!([]), "the VLAN itself has none on top");
        assert_eq!(nics[2]["vendor"], serde_json::Value::Null, "a virtual interface has no vendor");
        assert_eq!(nics[3]["vendor"], "0x14e4", "not in the fixture's pci.ids: hex");
        assert_eq!(
            nics[4]["vendor"], "Sierra Wireless, Inc.",
            "USB, named from usb.ids through the interface's parent"
        );
        assert_eq!(nics[2]["info"]["ipv4_address"], serde_json::json!([]));
    }

    #[test]
    fn a_device_tree_board_with_only_usr_lib_os_release() {
        let host = fixture("devicetree");
        let (v, taken) = take(&host, &Config::default(), &Addresses::default());
        assert_eq!(taken.failures, []);
        assert_eq!(v["hardware_vendor"], "raspberrypi");
        assert_eq!(v["hardware_model"], "Raspberry Pi 4 Model B Rev 1.4");
        // No PRETTY_NAME: NAME and VERSION; /etc/os-release is absent.
        assert_eq!((&v["os_dist"], &v["os_version"]), (&"Raspbian GNU/Linux 11 (bullseye)".into(), &"11".into()));
        assert_eq!(v["hostname"], "from-uname");
        // A WiFi driver that sets no DEVTYPE: phy80211 says it.
        assert_eq!(v["nics"][0]["type"], "WIFI");
    }

    #[test]
    fn no_dmi_no_device_tree_no_os_release_then_overrides() {
        let host = fixture("bare");
        let (v, taken) = take(&host, &Config::default(), &Addresses::default());
        assert_eq!((&v["hardware_vendor"], &v["hardware_model"]), (&serde_json::Value::Null, &serde_json::Value::Null));
        assert_eq!((&v["os_dist"], &v["os_version"]), (&"Linux".into(), &serde_json::Value::Null));
        assert_eq!(taken.failures.len(), 2, "{:?}", taken.failures);
        assert_eq!(taken.failures[0].source, "/etc/os-release");
        assert_eq!(taken.failures[1].source, "/sys/class/net");
        let mut config = Config::default();
        config.hardware_vendor = Some("Contoso".into());
        config.hardware_model = Some("Gateway 9".into());
        let (v, _) = take(&host, &config, &Addresses::default());
        assert_eq!((&v["hardware_vendor"], &v["hardware_model"]), (&"Contoso".into(), &"Gateway 9".into()));
        // An override wins over what the firmware says.
        let (v, _) = take(&fixture("dmi"), &config, &Addresses::default());
        assert_eq!(v["hardware_vendor"], "Contoso");
    }

    #[test]
    fn dmi_placeholders_fall_back_to_the_board() {
        let host = fixture("dmi_placeholder");
        assert_eq!(hardware(&host, &Config::default()), (Some("ASRock".into()), Some("B450M Pro4".into())));
    }
}
