//! Hotplug: PCI and USB devices added or removed while the agent runs, from
//! the kernel's uevent netlink socket (NETLINK_KOBJECT_UEVENT, multicast
//! group 1: the kernel's own messages; udev re-broadcasts on group 2 with a
//! "libudev" header, which is not read). A message is
//! "ACTION@DEVPATH\0KEY=VALUE\0..." (lib/kobject_uevent.c); PCI adds
//! PCI_ID, PCI_SLOT_NAME, PCI_CLASS (drivers/pci/pci-driver.c), USB devices
//! PRODUCT=vid/pid/bcd and DEVTYPE=usb_device (drivers/usb/core/usb.c).
use std::{
    collections::BTreeMap,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    path::Path,
};

use super::{read_device, Hardware};
use crate::{
    collectors::{
        ids::{self, Bus, Ids},
        Context, EventSource, Taken,
    },
    events::EventType,
};

/// Kernel uevents are at most UEVENT_BUFFER_SIZE (2048) bytes of variables
/// plus the header; a larger datagram is not one and is dropped.
const MESSAGE_MAX: usize = 8192;
/// Messages read per poll (once a second); the rest wait in the socket,
/// and what overflows it is counted as lost.
const MESSAGES_PER_POLL: usize = 256;
/// Variables kept from one message (a PCI add has about ten).
const VARS_MAX: usize = 64;

/// One parsed kernel uevent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uevent {
    pub action: String,
    pub devpath: String,
    pub vars: BTreeMap<String, String>,
}

impl Uevent {
    fn var(&self, k: &str) -> Option<&str> {
        self.vars.get(k).map(String::as_str)
    }
}

/// Parses one datagram; None for udev's messages, malformed ones, and
/// messages larger than a kernel uevent can be.
pub fn parse_uevent(msg: &[u8]) -> Option<Uevent> {
    if msg.len() > MESSAGE_MAX || msg.starts_with(b"libudev") {
        return None;
    }
    let mut fields = msg.split(|&b| b == 0).filter(|f| !f.is_empty());
    let header = std::str::from_utf8(fields.next()?).ok()?;
    let (action, devpath) = header.split_once('@')?;
    let mut vars = BTreeMap::new();
    for f in fields.take(VARS_MAX) {
        let Ok(f) = std::str::from_utf8(f) else { continue };
        if let Some((k, v)) = f.split_once('=') {
            vars.insert(k.to_string(), v.to_string());
        }
    }
    // The header and ACTION/DEVPATH say the same; a message where they differ is not the kernel's.
    if vars.get("ACTION").is_some_and(|a| a != action) || vars.get("DEVPATH").is_some_and(|d| d != devpath) {
        return None;
    }
    Some(Uevent { action: action.to_string(), devpath: devpath.to_string(), vars })
}

/// The bus of a device uevent (a PCI function or a USB device, not a USB
/// interface), and its sysfs name.
fn device_of(u: &Uevent) -> Option<(Bus, String)> {
    let name = u.devpath.rsplit('/').next().filter(|n| !n.is_empty() && *n != "..")?.to_string();
    match (u.var("SUBSYSTEM")?, u.var("DEVTYPE")) {
        ("pci", _) => Some((Bus::Pci, u.var("PCI_SLOT_NAME").map(str::to_string).unwrap_or(name))),
        ("usb", Some("usb_device")) => Some((Bus::Usb, name)),
        _ => None,
    }
}

/// The ConnectedHardware event of a uevent: None for other devices and
/// actions (bind, change, ...). An added device still in sysfs is read there
/// (names, driver), as a snapshot would; otherwise the uevent's own ids.
pub fn hotplug_event(u: &Uevent, ids: &Ids, cx: &Context<'_>) -> Option<Hardware> {
    let action = match u.action.as_str() {
        "add" => "add",
        "remove" => "remove",
        _ => return None,
    };
    let (bus, address) = device_of(u)?;
    let dir = Path::new("/sys").join(u.devpath.trim_start_matches('/'));
    let from_sysfs = (action == "add" && !u.devpath.split('/').any(|c| c == ".."))
        .then(|| read_device(cx.host, ids, bus, &dir, &address))
        .flatten();
    let mut hw = match from_sysfs {
        Some(hw) => hw,
        None => from_vars(u, ids, bus, address)?,
    };
    hw.action = Some(action);
    Some(hw)
}

/// A device from the uevent's variables alone (a removed one is no longer in sysfs).
fn from_vars(u: &Uevent, ids: &Ids, bus: Bus, address: String) -> Option<Hardware> {
    let (vendor, product, class) = match bus {
        // PCI_ID=1AF4:1044, PCI_CLASS=FFFF00
        Bus::Pci => {
            let (v, p) = u.var("PCI_ID")?.split_once(':')?;
            (v, p, u.var("PCI_CLASS").map(|c| format!("{c:0>6}")))
        }
        // PRODUCT=46d/c52b/1201: vendor/product/bcdDevice, hex without padding.
        Bus::Usb => {
            let mut parts = u.var("PRODUCT")?.split('/');
            let (v, p) = (parts.next()?, parts.next()?);
            let class = u.var("TYPE").and_then(|t| t.split('/').next()).map(|c| format!("{c:0>2}"));
            (v, p, class)
        }
    };
    let mut hw =
        Hardware::named(ids, bus, address, ids::parse_hex_id(vendor)?, ids::parse_hex_id(product)?, (None, None));
    hw.driver = u.var("DRIVER").map(str::to_string);
    hw.class = class.and_then(|c| super::class_code(&c));
    Some(hw)
}

/// The uevent socket, non-blocking, polled by the run loop.
pub struct Hotplug {
    fd: OwnedFd,
}

impl Hotplug {
    /// Opens and binds the socket; None (with a warning) where it cannot,
    /// and the agent runs without hotplug events.
    pub fn open() -> Option<Hotplug> {
        match Self::try_open() {
            Ok(h) => Some(h),
            Err(e) => {
                log::warn!("ConnectedHardware: no hotplug events: cannot open the kernel uevent socket: {e}");
                None
            }
        }
    }

    fn try_open() -> std::io::Result<Hotplug> {
        // SAFETY: plain socket(2); the result is checked before use.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_DGRAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                libc::NETLINK_KOBJECT_UEVENT,
            )
        };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: fd is a fresh, valid descriptor we own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: sockaddr_nl is plain data; zeroed is a valid value.
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as u16;
        addr.nl_groups = 1; // the kernel's uevents
                            // SAFETY: addr is a valid sockaddr_nl of the size given.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                &addr as *const libc::sockaddr_nl as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_nl>() as u32,
            )
        };
        if rc < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Hotplug { fd })
    }

    /// One datagram from the kernel: Ok(None) when none is waiting.
    /// Datagrams not sent by the kernel (portid 0) are skipped.
    fn recv(&self, buf: &mut [u8]) -> std::io::Result<Option<Option<usize>>> {
        // SAFETY: as above.
        let mut from: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        let mut from_len = std::mem::size_of::<libc::sockaddr_nl>() as u32;
        // SAFETY: buf and from are valid for the lengths given; MSG_TRUNC makes n the datagram's real length.
        let n = unsafe {
            libc::recvfrom(
                self.fd.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_DONTWAIT | libc::MSG_TRUNC,
                &mut from as *mut libc::sockaddr_nl as *mut libc::sockaddr,
                &mut from_len,
            )
        };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            return match e.kind() {
                std::io::ErrorKind::WouldBlock => Ok(None),
                std::io::ErrorKind::Interrupted => Ok(Some(None)),
                _ => Err(e),
            };
        }
        let n = n as usize;
        Ok(Some((from.nl_pid == 0 && n <= buf.len()).then_some(n)))
    }
}

impl EventSource for Hotplug {
    fn event_type(&self) -> EventType {
        EventType::ConnectedHardware
    }

    fn poll(&mut self, cx: &Context<'_>) -> Taken {
        let mut taken = Taken::default();
        let mut buf = vec![0u8; MESSAGE_MAX];
        let mut uevents = Vec::new();
        for _ in 0..MESSAGES_PER_POLL {
            match self.recv(&mut buf) {
                Ok(None) => break,
                Ok(Some(None)) => {} // not the kernel's, too large, or interrupted
                Ok(Some(Some(n))) => uevents.extend(parse_uevent(&buf[..n])),
                // ENOBUFS: the socket overflowed and uevents were lost; how many is unknown.
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => taken.lost += 1,
                Err(e) => {
                    taken.fail("kernel uevent socket", e);
                    break;
                }
            }
        }
        // Most uevents are not PCI/USB adds or removes: the ids files are read only for those that are.
        let mut ids = None;
        for u in &uevents {
            if !matches!(u.action.as_str(), "add" | "remove") || device_of(u).is_none() {
                continue;
            }
            let ids = ids.get_or_insert_with(|| Ids::load(cx.host));
            if let Some(hw) = hotplug_event(u, ids, cx) {
                taken.push(format!("{}:{}", hw.key(), u.action), &hw);
            }
        }
        taken
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{config::Config, hostfs::HostFs};

    fn msg(parts: &[&str]) -> Vec<u8> {
        parts.iter().flat_map(|p| p.bytes().chain([0])).collect()
    }

    const PCI_ADD: &[&str] = &[
        "add@/devices/pci0000:00/0000:00:05.0",
        "ACTION=add",
        "DEVPATH=/devices/pci0000:00/0000:00:05.0",
        "SUBSYSTEM=pci",
        "SYNTH_UUID=0",
        "DRIVER=virtio-pci",
        "PCI_CLASS=FFFF00",
        "PCI_ID=1AF4:1044",
        "PCI_SUBSYS_ID=1AF4:1100",
        "PCI_SLOT_NAME=0000:00:05.0",
        "MODALIAS=pci:v00001AF4d00001044sv00001AF4sd00001100bcFFscFFi00",
        "SEQNUM=1874",
    ];

    fn empty_host() -> HostFs {
        HostFs::new(Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/connected_hardware/broken"))
    }

    #[test]
    fn kernel_messages_parse() {
        let u = parse_uevent(&msg(PCI_ADD)).unwrap();
        assert_eq!((u.action.as_str(), u.devpath.as_str()), ("add", "/devices/pci0000:00/0000:00:05.0"));
        assert_eq!(u.var("PCI_ID"), Some("1AF4:1044"));
        assert_eq!(u.vars.len(), 11);
    }

    #[test]
    fn udev_malformed_and_oversized_messages_are_refused() {
        let mut udev = b"libudev\0\xfe\xed\xca\xfe".to_vec();
        udev.extend(msg(PCI_ADD));
        assert_eq!(parse_uevent(&udev), None);
        assert_eq!(parse_uevent(b""), None);
        assert_eq!(parse_uevent(b"no header\0ACTION=add\0"), None);
        assert_eq!(parse_uevent(&msg(&["add@/devices/x", "ACTION=remove"])), None, "header and ACTION disagree");
        assert_eq!(parse_uevent(&msg(&["add@/devices/x", "DEVPATH=/devices/y"])), None);
        let mut big = msg(PCI_ADD);
        big.resize(MESSAGE_MAX + 1, b'x');
        assert_eq!(parse_uevent(&big), None);
        // Many variables: the first VARS_MAX are kept, nothing grows past them.
        let many: Vec<String> = (0..1000).map(|i| format!("K{i}=v")).collect();
        let mut parts = vec!["change@/devices/x"];
        parts.extend(many.iter().map(String::as_str));
        assert_eq!(parse_uevent(&msg(&parts)).unwrap().vars.len(), VARS_MAX);
    }

    #[test]
    fn a_removed_pci_device_comes_from_the_uevent_and_is_named() {
        let ids = Ids::from_texts(Some("1af4  Red Hat, Inc.\n\t1044  Virtio 1.0 RNG\n"), None);
        let host = empty_host();
        let config = Config::default();
        let cx = Context::new(&host, &config);
        let mut parts = PCI_ADD.to_vec();
        parts[0] = "remove@/devices/pci0000:00/0000:00:05.0";
        parts[1] = "ACTION=remove";
        let hw = hotplug_event(&parse_uevent(&msg(&parts)).unwrap(), &ids, &cx).unwrap();
        assert_eq!(
            serde_json::to_value(&hw).unwrap(),
            serde_json::json!({
                "connected_hardware": "Red Hat, Inc. Virtio 1.0 RNG", "bus": "pci", "bus_address": "0000:00:05.0",
                "vendor_id": "0x1af4", "product_id": "0x1044", "vendor": "Red Hat, Inc.", "product": "Virtio 1.0 RNG",
                "driver": "virtio-pci", "class": "0xffff00", "action": "remove",
            })
        );
        // An add whose device is not (or no longer) in sysfs: the same, from the variables.
        let hw = hotplug_event(&parse_uevent(&msg(PCI_ADD)).unwrap(), &ids, &cx).unwrap();
        assert_eq!((hw.action, hw.bus_address.as_str()), (Some("add"), "0000:00:05.0"));
    }

    #[test]
    fn an_added_device_still_in_sysfs_is_read_there() {
        let host = HostFs::new(Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/connected_hardware/pci_usb"));
        let config = Config::default();
        let cx = Context::new(&host, &config);
        let ids = Ids::load(&host);
        let u = parse_uevent(&msg(&[
            "add@/devices/pci0000:00/0000:00:14.0/usb1/1-1",
            "ACTION=add",
            "DEVPATH=/devices/pci0000:00/0000:00:14.0/usb1/1-1",
            "SUBSYSTEM=usb",
            "DEVTYPE=usb_device",
            "PRODUCT=46d/c999/1201",
            "TYPE=0/0/0",
        ]))
        .unwrap();
        let hw = hotplug_event(&u, &ids, &cx).unwrap();
        assert_eq!((hw.connected_hardware.as_str(), hw.bus_address.as_str()), ("Logitech, Inc. USB Receiver", "1-1"));
        assert_eq!((hw.driver.as_deref(), hw.action), (Some("usb"), Some("add")));
    }

    #[test]
    fn other_devices_and_actions_are_not_hardware_events() {
        let host = empty_host();
        let config = Config::default();
        let cx = Context::new(&host, &config);
        let ids = Ids::default();
        let one = |parts: &[&str]| hotplug_event(&parse_uevent(&msg(parts)).unwrap(), &ids, &cx);
        let mut bind = PCI_ADD.to_vec();
        bind[0] = "bind@/devices/pci0000:00/0000:00:05.0";
        bind[1] = "ACTION=bind";
        assert_eq!(one(&bind), None);
        let iface = ["add@/devices/u/1-1/1-1:1.0", "SUBSYSTEM=usb", "DEVTYPE=usb_interface", "PRODUCT=46d/c52b/1201"];
        assert_eq!(one(&iface), None);
        assert_eq!(one(&["add@/devices/virtual/net/veth0", "SUBSYSTEM=net", "INTERFACE=veth0"]), None);
        // A USB removal from the variables: vendor/product hex without padding, class from TYPE.
        let usb = one(&[
            "remove@/devices/u/usb1/1-1",
            "SUBSYSTEM=usb",
            "DEVTYPE=usb_device",
            "PRODUCT=46d/c52b/1201",
            "TYPE=9/0/1",
        ])
        .unwrap();
        assert_eq!(
            (usb.vendor_id.as_str(), usb.product_id.as_str(), usb.class.as_deref()),
            ("0x046d", "0xc52b", Some("0x09"))
        );
        assert_eq!(usb.connected_hardware, "0x046d 0xc52b");
        assert_eq!(one(&["remove@/devices/u/1-1", "SUBSYSTEM=usb", "DEVTYPE=usb_device", "PRODUCT=zz/1"]), None);
    }
}
