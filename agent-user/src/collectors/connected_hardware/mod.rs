//! ConnectedHardware: one event per PCI and USB device, from sysfs
//! (/sys/bus/pci/devices/*: vendor, device, class; /sys/bus/usb/devices/*
//! that have idVendor: idVendor, idProduct, manufacturer, product), named
//! from pci.ids / usb.ids. Devices added or removed while the agent runs are
//! sent at once by [`hotplug::Hotplug`], from the kernel's uevents.
use std::path::Path;

use serde::Serialize;

use super::{
    ids::{self, Bus, Ids},
    Context, Snapshot, Taken,
};
use crate::{events::EventType, hostfs::HostFs};

pub mod hotplug;

const PCI_DEVICES: &str = "/sys/bus/pci/devices";
const USB_DEVICES: &str = "/sys/bus/usb/devices";

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Hardware {
    /// "vendor product", as lspci/lsusb would name it.
    pub connected_hardware: String,
    /// `pci` or `usb`.
    pub bus: &'static str,
    /// PCI: domain:bus:device.function ("0000:00:05.0"); USB: the device's
    /// sysfs name ("1-1.2": bus 1, port 1, then port 2 of that hub).
    pub bus_address: String,
    pub vendor_id: String,
    pub product_id: String,
    /// From the ids database; USB: else the device's own string; else the hex id.
    pub vendor: String,
    pub product: String,
    /// The bound driver's name; null when none is bound.
    pub driver: Option<String>,
    /// PCI: the 24-bit class code ("0x020000": Ethernet); USB: bDeviceClass ("0x09": hub).
    pub class: Option<String>,
    /// Hotplug events only: `add` or `remove`; absent in snapshots.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub action: Option<&'static str>,
}

impl Hardware {
    /// The identity a snapshot compares.
    pub fn key(&self) -> String {
        format!("{}:{}", self.bus, self.bus_address)
    }

    /// What the pure parts know of a device, named from `ids`.
    fn named(
        ids: &Ids,
        bus: Bus,
        bus_address: String,
        vendor_id: u16,
        product_id: u16,
        own: (Option<String>, Option<String>),
    ) -> Hardware {
        let names = ids.names(bus, vendor_id, Some(product_id));
        let vendor = names.vendor.or(own.0).unwrap_or_else(|| ids::hex(vendor_id));
        let product = names.product.or(own.1).unwrap_or_else(|| ids::hex(product_id));
        Hardware {
            connected_hardware: format!("{vendor} {product}"),
            bus: match bus {
                Bus::Pci => "pci",
                Bus::Usb => "usb",
            },
            bus_address,
            vendor_id: ids::hex(vendor_id),
            product_id: ids::hex(product_id),
            vendor,
            product,
            driver: None,
            class: None,
            action: None,
        }
    }
}

/// Reads one device's sysfs directory (`dir`, named `name`): None when it
/// is not a device (a USB interface) or its ids cannot be read.
pub fn read_device(host: &HostFs, ids: &Ids, bus: Bus, dir: &Path, name: &str) -> Option<Hardware> {
    let attr = |f: &str| host.attribute(dir.join(f));
    let (vendor, product, class) = match bus {
        Bus::Pci => ("vendor", "device", "class"),
        Bus::Usb => ("idVendor", "idProduct", "bDeviceClass"),
    };
    let vendor_id = ids::parse_hex_id(&attr(vendor)?)?;
    let product_id = ids::parse_hex_id(&attr(product)?)?;
    // A USB device's own strings, for ids usb.ids does not list; a PCI device has none.
    let own = match bus {
        Bus::Pci => (None, None),
        Bus::Usb => (attr("manufacturer").map(bounded), attr("product").map(bounded)),
    };
    let mut hw = Hardware::named(ids, bus, name.to_string(), vendor_id, product_id, own);
    hw.driver = driver(host, dir);
    hw.class = attr(class).and_then(|c| class_code(&c));
    Some(hw)
}

/// A device-provided string: at most 128 bytes (USB string descriptors are
/// at most 126 UTF-16 code units), control characters dropped.
fn bounded(s: String) -> String {
    s.chars()
        .filter(|c| !c.is_control())
        .scan(0, |n, c| {
            *n += c.len_utf8();
            (*n <= 128).then_some(c)
        })
        .collect()
}

/// "0x020000" or "09" -> "0x020000" / "0x09"; refuses what is not hex.
fn class_code(s: &str) -> Option<String> {
    let h = s.trim().strip_prefix("0x").unwrap_or(s.trim()).to_ascii_lowercase();
    (!h.is_empty() && h.len() <= 6 && h.bytes().all(|b| b.is_ascii_hexdigit())).then(|| format!("0x{h}"))
}

fn driver(host: &HostFs, dir: &Path) -> Option<String> {
    let target = host.read_link(dir.join("driver")).ok()?;
    target.file_name().map(|n| n.to_string_lossy().into_owned())
}

pub struct ConnectedHardware;

impl Snapshot for ConnectedHardware {
    fn event_type(&self) -> EventType {
        EventType::ConnectedHardware
    }

    fn take(&mut self, cx: &Context<'_>) -> Taken {
        let mut taken = Taken::default();
        let ids = Ids::load(cx.host);
        for (bus, root) in [(Bus::Pci, PCI_DEVICES), (Bus::Usb, USB_DEVICES)] {
            let names = match cx.host.read_dir(root) {
                Ok(n) => n,
                // No USB controller (this VM) or no PCI (many ARM boards): the bus is absent, not unreadable.
                Err(e) if e.is_not_found() => continue,
                Err(e) => {
                    taken.fail_host(&e);
                    continue;
                }
            };
            for name in names {
                let dir = Path::new(root).join(&name);
                match read_device(cx.host, &ids, bus, &dir, &name) {
                    Some(hw) => taken.push(hw.key(), &hw),
                    // USB interfaces ("1-1:1.0") have no ids: not devices.
                    None if bus == Bus::Usb && name.contains(':') => {}
                    None => taken.fail(dir.display().to_string(), "no readable vendor and product ids"),
                }
            }
        }
        taken
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn fixture(case: &str) -> HostFs {
        HostFs::new(Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/connected_hardware").join(case))
    }

    fn take(host: &HostFs) -> Taken {
        ConnectedHardware.take(&Context::new(host, &Config::default()))
    }

    #[test]
    fn pci_and_usb_devices_are_named_from_the_ids_files() {
        let host = fixture("pci_usb");
        let t = take(&host);
        assert_eq!(t.failures, [], "{:?}", t.failures);
        let keys: Vec<&str> = t.items.iter().map(|i| i.key.as_str()).collect();
        assert_eq!(keys, ["pci:0000:00:03.0", "pci:0000:00:1f.0", "usb:1-1", "usb:usb1"], "interfaces are not devices");
        assert_eq!(
            t.items[0].payload,
            serde_json::json!({
                "connected_hardware": "Red Hat, Inc. Virtio 1.0 network device",
                "bus": "pci", "bus_address": "0000:00:03.0",
                "vendor_id": "0x1af4", "product_id": "0x1041",
                "vendor": "Red Hat, Inc.", "product": "Virtio 1.0 network device",
                "driver": "virtio-pci", "class": "0x020000",
            })
        );
        // Not in pci.ids: hex ids, and no driver bound.
        let p = &t.items[1].payload;
        assert_eq!(
            (&p["connected_hardware"], &p["driver"]),
            (&serde_json::json!("Intel Corporation 0x0d57"), &serde_json::Value::Null)
        );
        // usb.ids names the vendor; the product is the device's own string.
        let p = &t.items[2].payload;
        assert_eq!(p["connected_hardware"], "Logitech, Inc. USB Receiver");
        assert_eq!(
            (&p["vendor"], &p["product"], &p["class"]),
            (&serde_json::json!("Logitech, Inc."), &serde_json::json!("USB Receiver"), &serde_json::json!("0x00"))
        );
        assert_eq!(p["driver"], "usb");
        assert!(p.get("action").is_none(), "snapshot items carry no action");
        assert_eq!(t.items[3].payload["connected_hardware"], "Linux Foundation 2.0 root hub");
    }

    #[test]
    fn without_ids_files_names_are_hex_and_absent_buses_are_not_failures() {
        let host = fixture("no_ids");
        let t = take(&host);
        assert_eq!(t.failures, []);
        assert_eq!(t.items.len(), 1);
        assert_eq!(t.items[0].payload["connected_hardware"], "0x1af4 0x1041");
    }

    #[test]
    fn a_device_without_ids_is_a_failure() {
        let host = fixture("broken");
        let t = take(&host);
        assert_eq!(t.items, []);
        assert_eq!(t.failures.len(), 1);
        assert_eq!(t.failures[0].source, "/sys/bus/pci/devices/0000:00:09.0");
    }

    #[test]
    fn device_strings_are_bounded_and_classes_checked() {
        assert_eq!(bounded("a\u{7}b".repeat(100)).len(), 128);
        assert_eq!(bounded("ab\ncd".into()), "abcd");
        assert_eq!(class_code("0x0C0330").as_deref(), Some("0x0c0330"));
        assert_eq!(class_code("09").as_deref(), Some("0x09"));
        assert_eq!(class_code("0x1234567"), None);
        assert_eq!(class_code("zz"), None);
    }
}
