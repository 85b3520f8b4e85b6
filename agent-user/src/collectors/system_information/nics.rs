//! The network interfaces of SystemInformation, from /sys/class/net (type,
//! MAC, parent device), /proc/net/vlan/config (VLANs) and the rtnetlink
//! address dump.
use std::path::Path;

use serde::Serialize;

use super::netlink::Addresses;
use crate::{
    collectors::{
        ids::{self, Bus, Ids},
        Taken,
    },
    hostfs::HostFs,
};

const CLASS_NET: &str = "/sys/class/net";
/// Written by the 8021q module when it is loaded; without it no VLAN exists.
const VLAN_CONFIG: &str = "/proc/net/vlan/config";
/// Interfaces reported in the one SystemInformation event; past it the
/// rest are named in a failure (a device with more is a router or under attack).
pub const NICS_MAX: usize = 256;
/// ARPHRD_ETHER (include/uapi/linux/if_arp.h), in /sys/class/net/X/type.
const ARPHRD_ETHER: &str = "1";

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Nic {
    pub name: String,
    /// UNKNOWN | ETH | WIFI | MOBILE | SATELLITE (seed 002).
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// Ids of the VLANs on top of this interface.
    pub vlans: Vec<u16>,
    /// The vendor of the PCI or USB device behind the interface; null for virtual ones.
    pub vendor: Option<String>,
    pub info: NicInfo,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NicInfo {
    pub ipv4_address: Vec<String>,
    pub ipv6_address: Vec<String>,
    /// As in /sys/class/net/X/address; null when the interface has none.
    pub mac: Option<String>,
}

/// The type from what sysfs shows (Documentation/ABI/testing/sysfs-class-net):
/// DEVTYPE in the interface's uevent (wlan, wwan: set by cfg80211 and the
/// WWAN drivers), a `wireless` or `phy80211` entry (WiFi drivers that set no
/// DEVTYPE), an Ethernet link type with a physical device behind it. No
/// kernel signal says SATELLITE: such a modem shows as MOBILE or UNKNOWN.
pub fn nic_type(host: &HostFs, dir: &Path) -> &'static str {
    let devtype = host
        .attribute(dir.join("uevent"))
        .and_then(|u| u.lines().find_map(|l| l.strip_prefix("DEVTYPE=")).map(str::to_string));
    match devtype.as_deref() {
        Some("wlan") => return "WIFI",
        Some("wwan") => return "MOBILE",
        _ => {}
    }
    if host.exists(dir.join("wireless")) || host.exists(dir.join("phy80211")) {
        return "WIFI";
    }
    if host.attribute(dir.join("type")).as_deref() == Some(ARPHRD_ETHER) && host.exists(dir.join("device")) {
        return "ETH";
    }
    "UNKNOWN"
}

/// (VLAN interface, VLAN id, parent interface) from /proc/net/vlan/config:
/// two header lines, then "eth0.100       | 100  | eth0" per VLAN.
pub fn parse_vlan_config(text: &str) -> Vec<(String, u16, String)> {
    text.lines()
        .filter_map(|l| {
            let mut f = l.split('|').map(str::trim);
            let (name, id, parent) = (f.next()?, f.next()?, f.next()?);
            Some((name.to_string(), id.parse().ok()?, parent.to_string()))
        })
        .collect()
}

/// The vendor of the device behind `dir`'s `device` link, as named in the ids files.
fn vendor(host: &HostFs, ids: &Ids, dir: &Path) -> Option<String> {
    let device = host.canonical(dir.join("device")).ok()?;
    let d = ids::bus_ancestor(host, &device)?;
    let name = ids.names(d.bus, d.vendor, None).vendor;
    // A USB device names its own vendor when usb.ids does not.
    let own = || (d.bus == Bus::Usb).then(|| host.attribute(d.path.join("manufacturer"))).flatten();
    Some(name.or_else(own).unwrap_or_else(|| ids::hex(d.vendor)))
}

/// Every interface but `lo`, with the addresses the dump found for it.
pub fn nics(host: &HostFs, ids: &Ids, addresses: &Addresses, taken: &mut Taken) -> Vec<Nic> {
    let names = match host.read_dir(CLASS_NET) {
        Ok(n) => n,
        Err(e) => {
            taken.fail_host(&e);
            return Vec::new();
        }
    };
    let vlans = match host.read_to_string(VLAN_CONFIG) {
        Ok(t) => parse_vlan_config(&t),
        Err(e) if e.is_not_found() => Vec::new(),
        Err(e) => {
            taken.fail_host(&e);
            Vec::new()
        }
    };
    let names: Vec<String> = names.into_iter().filter(|n| n != "lo").collect();
    if names.len() > NICS_MAX {
        taken.fail(CLASS_NET, format!("{} interfaces; only the first {NICS_MAX} are reported", names.len()));
    }
    names
        .into_iter()
        .take(NICS_MAX)
        .map(|name| {
            let dir = Path::new(CLASS_NET).join(&name);
            let index = host.attribute(dir.join("ifindex")).and_then(|i| i.parse::<u32>().ok());
            let a = index.and_then(|i| addresses.by_index.get(&i)).cloned().unwrap_or_default();
            Nic {
                kind: nic_type(host, &dir),
                vlans: vlans.iter().filter(|(_, _, parent)| *parent == name).map(|(_, id, _)| *id).collect(),
                vendor: vendor(host, ids, &dir),
                info: NicInfo {
                    ipv4_address: a.v4.iter().map(ToString::to_string).collect(),
                    ipv6_address: a.v6.iter().map(ToString::to_string).collect(),
                    mac: host.attribute(dir.join("address")),
                },
                name,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vlan_config_lines_parse_and_headers_do_not() {
        let text = "VLAN Dev name\t | VLAN ID\nName-Type: VLAN_NAME_TYPE_RAW_PLUS_VID_NO_PAD\n\
                    eth0.100       | 100  | eth0\nmgmt           | 4094  | eth1\nbad  | x | eth0\n";
        assert_eq!(
            parse_vlan_config(text),
            [("eth0.100".to_string(), 100, "eth0".to_string()), ("mgmt".to_string(), 4094, "eth1".to_string())]
        );
    }
}
