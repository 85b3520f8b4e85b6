//! Privileged: SystemInformation and ConnectedHardware against this
//! machine, each field checked against the kernel's own account (`ip -j
//! addr`, uname, /sys/bus/pci), and a synthetic uevent seen by a running
//! agent as a hotplug event. Root is needed for the veth pair and uevents.
use std::{path::Path, process::Command, time::Duration};

use anyhow::{bail, Context, Result};
use serde_json::Value;
use tests::{hitcount_bin, privileged, skip, Agent};

/// `hitcount snapshot --only TYPE`: every event it printed.
fn snapshot(only: &str) -> Result<Vec<Value>> {
    let out = Command::new(hitcount_bin()).args(["snapshot", "--only", only]).output()?;
    if !out.status.success() {
        bail!("hitcount snapshot --only {only}: {}; {}", out.status, String::from_utf8_lossy(&out.stderr));
    }
    String::from_utf8(out.stdout)?
        .lines()
        .map(|l| serde_json::from_str(l).with_context(|| format!("not JSON: {l}")))
        .collect()
}

fn system_information() -> Value {
    let events = snapshot("SystemInformation").unwrap();
    let si: Vec<&Value> = events.iter().filter(|e| e["event_type"] == "SystemInformation").collect();
    assert_eq!(si.len(), 1, "one event: {events:#?}");
    assert_eq!(si[0]["snapshot"]["failed_sources"], serde_json::json!([]), "{:#?}", si[0]);
    si[0]["payload"].clone()
}

fn nic<'a>(info: &'a Value, name: &str) -> Option<&'a Value> {
    info["nics"].as_array().unwrap().iter().find(|n| n["name"] == name)
}

fn ip_json(args: &[&str]) -> Vec<Value> {
    let out = Command::new("ip").arg("-j").args(args).output().unwrap();
    assert!(out.status.success(), "ip {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The kernel's addresses of one `ip -j addr` entry, by family.
fn kernel_addresses(link: &Value, family: &str) -> Vec<String> {
    let infos = link["addr_info"].as_array().cloned().unwrap_or_default();
    let mut v: Vec<String> =
        infos.iter().filter(|a| a["family"] == family).map(|a| a["local"].as_str().unwrap().to_string()).collect();
    v.sort();
    v
}

fn sorted(v: &Value) -> Vec<String> {
    let mut v: Vec<String> = v.as_array().unwrap().iter().map(|s| s.as_str().unwrap().to_string()).collect();
    v.sort();
    v
}

fn command_out(cmd: &str, args: &[&str]) -> String {
    String::from_utf8(Command::new(cmd).args(args).output().unwrap().stdout).unwrap().trim().to_string()
}

#[test]
fn every_interface_reports_the_kernels_mac_and_addresses() {
    if !privileged("every_interface_reports_the_kernels_mac_and_addresses") {
        return;
    }
    let info = system_information();
    let links = ip_json(&["addr", "show"]);
    let mut kernel_names: Vec<&str> =
        links.iter().map(|l| l["ifname"].as_str().unwrap()).filter(|n| *n != "lo").collect();
    kernel_names.sort();
    let names: Vec<&str> = info["nics"].as_array().unwrap().iter().map(|n| n["name"].as_str().unwrap()).collect();
    assert_eq!(names, kernel_names, "every interface but lo, once");
    assert!(names.contains(&"eth0"), "this VM's eth0: {names:?}");
    for link in links.iter().filter(|l| l["ifname"] != "lo") {
        let name = link["ifname"].as_str().unwrap();
        let n = nic(&info, name).unwrap();
        assert_eq!(n["info"]["mac"], link["address"], "{name}");
        assert_eq!(sorted(&n["info"]["ipv4_address"]), kernel_addresses(link, "inet"), "{name}");
        assert_eq!(sorted(&n["info"]["ipv6_address"]), kernel_addresses(link, "inet6"), "{name}");
    }
    let eth0 = nic(&info, "eth0").unwrap();
    assert!(!eth0["info"]["ipv4_address"].as_array().unwrap().is_empty(), "eth0 has an address here");
    assert_eq!(eth0["type"], "ETH", "a virtio NIC: Ethernet with a device behind it");
    // The vendor is that of eth0's first PCI ancestor, named by pci.ids.
    let device = std::fs::canonicalize("/sys/class/net/eth0/device").unwrap();
    let pci = device
        .ancestors()
        .find(|d| std::fs::canonicalize(d.join("subsystem")).is_ok_and(|s| s.ends_with("bus/pci")))
        .expect("eth0 sits on PCI here");
    let id = std::fs::read_to_string(pci.join("vendor")).unwrap().trim().trim_start_matches("0x").to_string();
    let ids = std::fs::read_to_string("/usr/share/misc/pci.ids").expect("pci.ids (installed by cargo xtask test)");
    let line = ids.lines().find(|l| l.starts_with(&format!("{id}  "))).expect("vendor listed");
    assert_eq!(eth0["vendor"], line[6..].trim(), "vendor {id}");
    // The OS, from the same sources a person would look at.
    let os_release = std::fs::read_to_string("/etc/os-release").unwrap();
    let pretty = os_release.lines().find_map(|l| l.strip_prefix("PRETTY_NAME=")).unwrap().trim_matches('"');
    assert_eq!(info["os_dist"], pretty);
    assert_eq!(info["kernel_release"], command_out("uname", &["-r"]));
    assert_eq!(info["os_arch"], command_out("uname", &["-m"]));
    assert_eq!(info["os_platform"], command_out("uname", &["-s"]));
    assert_eq!(info["hostname"], command_out("uname", &["-n"]));
    if !Path::new("/sys/class/dmi/id").exists() && !Path::new("/proc/device-tree").exists() {
        assert_eq!((&info["hardware_vendor"], &info["hardware_model"]), (&Value::Null, &Value::Null));
    }
}

/// A veth pair made by the test, deleted on drop (which deletes both ends).
struct Veth(String);

impl Drop for Veth {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["link", "del", &self.0]).status();
    }
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().unwrap();
    assert!(out.status.success(), "ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
}

#[test]
fn a_new_interface_appears_with_its_mac_and_addresses_and_goes_when_deleted() {
    if !privileged("a_new_interface_appears_with_its_mac_and_addresses_and_goes_when_deleted") {
        return;
    }
    let tag = std::process::id() % 100_000;
    let (a, b) = (format!("hcs{tag}a"), format!("hcs{tag}b"));
    let _ = Command::new("ip").args(["link", "del", &a]).status(); // a leftover of a killed run
    ip(&["link", "add", &a, "type", "veth", "peer", "name", &b]);
    let guard = Veth(a.clone());
    // Left down: no link-local address, no traffic that other tests could see.
    ip(&["link", "set", &a, "address", "02:48:43:00:00:07"]);
    ip(&["addr", "add", "198.51.100.77/32", "dev", &a]);
    ip(&["addr", "add", "198.51.100.78/32", "dev", &a]);
    ip(&["-6", "addr", "add", "2001:db8:77::7/128", "dev", &a, "nodad"]);
    let info = system_information();
    let n = nic(&info, &a).unwrap_or_else(|| panic!("{a} missing: {info:#}"));
    assert_eq!(
        n,
        &serde_json::json!({
            "name": a, "type": "UNKNOWN", "vlans": [], "vendor": null,
            "info": {"ipv4_address": ["198.51.100.77", "198.51.100.78"], "ipv6_address": ["2001:db8:77::7"], "mac": "02:48:43:00:00:07"},
        })
    );
    let peer = nic(&info, &b).unwrap();
    assert_eq!(peer["info"]["ipv4_address"], serde_json::json!([]));
    assert_eq!(peer["info"]["mac"], std::fs::read_to_string(format!("/sys/class/net/{b}/address")).unwrap().trim());
    drop(guard);
    let info = system_information();
    assert!(nic(&info, &a).is_none() && nic(&info, &b).is_none(), "deleted: {info:#}");
}

fn pci_devices() -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir("/sys/bus/pci/devices")
        .map(|d| d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    v.sort();
    v
}

fn sysfs(device: &str, file: &str) -> String {
    std::fs::read_to_string(format!("/sys/bus/pci/devices/{device}/{file}")).unwrap().trim().to_string()
}

fn driver(device: &str) -> Value {
    std::fs::read_link(format!("/sys/bus/pci/devices/{device}/driver"))
        .map(|p| Value::from(p.file_name().unwrap().to_string_lossy().into_owned()))
        .unwrap_or(Value::Null)
}

#[test]
fn every_pci_device_appears_exactly_once() {
    if !privileged("every_pci_device_appears_exactly_once") {
        return;
    }
    let devices = pci_devices();
    if devices.is_empty() {
        skip("every_pci_device_appears_exactly_once", "no PCI bus here");
        return;
    }
    let events = snapshot("ConnectedHardware").unwrap();
    let pci: Vec<&Value> = events
        .iter()
        .filter(|e| e["event_type"] == "ConnectedHardware" && e["payload"]["bus"] == "pci")
        .map(|e| &e["payload"])
        .collect();
    let mut addresses: Vec<String> = pci.iter().map(|p| p["bus_address"].as_str().unwrap().to_string()).collect();
    addresses.sort();
    assert_eq!(addresses, devices, "each device once");
    for p in pci {
        let d = p["bus_address"].as_str().unwrap();
        assert_eq!(
            (&p["vendor_id"], &p["product_id"]),
            (&sysfs(d, "vendor").into(), &sysfs(d, "device").into()),
            "{d}"
        );
        assert_eq!((&p["class"], &p["driver"]), (&sysfs(d, "class").into(), &driver(d)), "{d}");
        assert_eq!(
            p["connected_hardware"],
            format!("{} {}", p["vendor"].as_str().unwrap(), p["product"].as_str().unwrap())
        );
        assert!(p.get("action").is_none(), "snapshot items have no action: {p}");
    }
    let usb = Path::new("/sys/bus/usb/devices");
    let usb_devices = std::fs::read_dir(usb)
        .map(|d| d.filter(|e| e.as_ref().unwrap().path().join("idVendor").exists()).count())
        .unwrap_or(0);
    let snapshot_usb = events.iter().filter(|e| e["payload"]["bus"] == "usb").count();
    assert_eq!(snapshot_usb, usb_devices, "USB devices (none on this VM)");
    let stats = events.iter().find(|e| e["event_type"] == "DroppedEventsStatistics").unwrap();
    assert_eq!(stats["payload"]["events_seen"], devices.len() + usb_devices);
}

#[test]
fn a_synthetic_uevent_is_sent_at_once_as_a_hotplug_event() {
    if !privileged("a_synthetic_uevent_is_sent_at_once_as_a_hotplug_event") {
        return;
    }
    let devices = pci_devices();
    // The last function: on this VM the RNG, which nothing else here uses.
    let Some(device) = devices.last().cloned() else {
        skip("a_synthetic_uevent_is_sent_at_once_as_a_hotplug_event", "no PCI bus here");
        return;
    };
    let agent = Agent::start(&["--interval", "PT2S"]).unwrap();
    // The start-up snapshot first, so the uevent is not mistaken for it.
    std::thread::sleep(Duration::from_millis(1500));
    std::fs::write(format!("/sys/bus/pci/devices/{device}/uevent"), "add").unwrap();
    // Polled every second; no window to wait for.
    std::thread::sleep(Duration::from_millis(2500));
    let logs = agent.stderr();
    let events = agent.stop().unwrap();
    assert!(!logs.iter().any(|l| l.contains("no hotplug events")), "{logs:#?}");
    let hardware: Vec<&Value> = events.iter().filter(|e| e["event_type"] == "ConnectedHardware").collect();
    let added: Vec<&&Value> = hardware.iter().filter(|e| e["payload"]["action"] == "add").collect();
    assert_eq!(added.len(), 1, "one uevent, one event: {hardware:#?}");
    let p = &added[0]["payload"];
    assert_eq!(p["bus_address"], device.as_str());
    assert_eq!(
        (&p["vendor_id"], &p["product_id"]),
        (&sysfs(&device, "vendor").into(), &sysfs(&device, "device").into())
    );
    assert_eq!(p["driver"], driver(&device));
    assert!(added[0].get("snapshot").is_none_or(Value::is_null), "not part of a snapshot: {}", added[0]);
    // The start-up snapshot listed the device once, without an action.
    let listed = hardware
        .iter()
        .filter(|e| e["payload"]["bus_address"] == device.as_str() && e["payload"].get("action").is_none())
        .count();
    assert_eq!(listed, 1);
}
