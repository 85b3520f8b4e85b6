//! Vendor and product names from the host's pci.ids and usb.ids (the
//! databases lspci and lsusb use: Debian packages `pci.ids`, `usb.ids`),
//! shared by SystemInformation (NIC vendors) and ConnectedHardware.
//!
//! The format (header of pci.ids): a vendor line is four hex digits, two
//! spaces and the name; the vendor's devices follow, each a tab, four hex
//! digits, two spaces and the name; two tabs start a subsystem line (ignored
//! here). Sections after the vendor list start with a letter ("C 02  Network
//! controller", usb.ids' "AT", "HID", ...) and end it. Lookups stream over
//! the file's lines and stop at the vendor's block end; the first lookup
//! also notes where each vendor starts, so later ones read only that
//! block. Neither the file (1.4 MB) nor a table of its names is held: they
//! were the largest block of the agent's heap at a snapshot.
use std::{
    cell::OnceCell,
    io::{BufRead, BufReader, Read, Seek, SeekFrom},
    path::PathBuf,
};

use crate::hostfs::HostFs;

/// Where distributions put the files, in the order tried (Debian, then
/// Fedora/Arch's hwdata, then the older Debian path for usb.ids).
const PCI_PATHS: [&str; 3] = ["/usr/share/misc/pci.ids", "/usr/share/hwdata/pci.ids", "/usr/share/pci.ids"];
const USB_PATHS: [&str; 3] = ["/usr/share/misc/usb.ids", "/usr/share/hwdata/usb.ids", "/var/lib/usbutils/usb.ids"];
/// Most bytes of an ids file a lookup reads (pci.ids is about 1.3 MB in
/// 2025, usb.ids 0.7 MB): a lookup in a larger one ends there, unnamed.
const IDS_MAX_BYTES: u64 = 8 << 20;
/// Longest line looked at, in bytes; a longer one is cut (the longest in
/// pci.ids is about 130).
const LINE_MAX: u64 = 4 << 10;
/// Longest name kept, in bytes (the longest in pci.ids is about 120).
const NAME_MAX: usize = 256;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bus {
    Pci,
    Usb,
}

/// One database: the file found on the host, or a text (fixtures).
#[derive(Debug, Clone)]
enum Source {
    File {
        /// The resolved path of the host file, opened at each lookup.
        path: PathBuf,
        /// Where each vendor's line starts, made by the first lookup's one
        /// pass over the file: later lookups read only their vendor's block.
        vendors: OnceCell<Vec<(u16, u32)>>,
    },
    Text(String),
}

/// Most vendors indexed (pci.ids lists about 2,500, usb.ids about 3,500);
/// past it, a vendor is looked up from the start of the file.
const MAX_VENDORS: usize = 1 << 16;

/// The two databases as found on the host; either may be absent, and then
/// names fall back to hex ids.
#[derive(Debug, Default, Clone)]
pub struct Ids {
    pci: Option<Source>,
    usb: Option<Source>,
}

/// Names of one vendor and product, when the database knows them.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Names {
    pub vendor: Option<String>,
    pub product: Option<String>,
}

impl Ids {
    /// Finds whichever of the files exist. A file that cannot be read is
    /// the same as a missing one: names are a nicety, the ids are the data.
    pub fn load(host: &HostFs) -> Ids {
        let first = |paths: &[&str]| {
            paths.iter().find_map(|p| {
                let path = host.resolve(p).ok().filter(|r| r.is_file())?;
                Some(Source::File { path, vendors: OnceCell::new() })
            })
        };
        Ids { pci: first(&PCI_PATHS), usb: first(&USB_PATHS) }
    }

    pub fn from_texts(pci: Option<&str>, usb: Option<&str>) -> Ids {
        Ids { pci: pci.map(|t| Source::Text(t.to_string())), usb: usb.map(|t| Source::Text(t.to_string())) }
    }

    pub fn names(&self, bus: Bus, vendor: u16, product: Option<u16>) -> Names {
        let source = match bus {
            Bus::Pci => self.pci.as_ref(),
            Bus::Usb => self.usb.as_ref(),
        };
        match source {
            None => Names::default(),
            Some(Source::Text(t)) => lookup(t.as_bytes(), vendor, product),
            Some(Source::File { path, vendors }) => {
                let open = |at: u64| {
                    let mut f = std::fs::File::open(path).ok()?;
                    f.seek(SeekFrom::Start(at)).ok()?;
                    Some(BufReader::with_capacity(16 << 10, f.take(IDS_MAX_BYTES.saturating_sub(at))))
                };
                let vendors = vendors.get_or_init(|| open(0).map(vendor_index).unwrap_or_default());
                let from = |at: u64| open(at).map(|db| lookup(db, vendor, product)).unwrap_or_default();
                match vendors.iter().find(|(id, _)| *id == vendor) {
                    Some(&(_, at)) => {
                        let names = from(u64::from(at));
                        if names.vendor.is_some() {
                            return names;
                        }
                        // Not at its offset: the file changed since the index was made.
                        from(0)
                    }
                    // Past the bound, a vendor may be listed unindexed.
                    None if vendors.len() == MAX_VENDORS => from(0),
                    None => Names::default(),
                }
            }
        }
    }
}

/// Reads one line into `raw` (its end of line removed), a line past
/// LINE_MAX cut there and its rest skipped, not read as a line of its own.
/// Returns the bytes it consumed, 0 at the end (or a read error).
fn next_line(db: &mut impl BufRead, raw: &mut Vec<u8>) -> u64 {
    raw.clear();
    let mut consumed = match db.take(LINE_MAX).read_until(b'\n', raw) {
        Ok(n) => n as u64,
        Err(_) => return 0,
    };
    if consumed == LINE_MAX && raw.last() != Some(&b'\n') {
        match db.skip_until(b'\n') {
            Ok(n) => consumed += n as u64,
            Err(_) => return 0,
        }
    }
    if raw.last() == Some(&b'\n') {
        raw.pop();
    }
    if raw.last() == Some(&b'\r') {
        raw.pop();
    }
    consumed
}

/// Where each vendor line of the vendor list starts, in one pass.
fn vendor_index(mut db: impl BufRead) -> Vec<(u16, u32)> {
    let mut vendors = Vec::new();
    let (mut raw, mut at) = (Vec::new(), 0u64);
    while vendors.len() < MAX_VENDORS {
        let n = next_line(&mut db, &mut raw);
        if n == 0 {
            break;
        }
        match classify(&String::from_utf8_lossy(&raw)) {
            // IDS_MAX_BYTES (8 MiB) keeps offsets in u32.
            Line::Vendor(id, _) => vendors.push((id, at as u32)),
            Line::End => break,
            Line::Device(..) | Line::Other => {}
        }
        at += n;
    }
    vendors
}

/// Finds `vendor` (and `product` among its devices) in an ids database,
/// reading it a line at a time up to the vendor's block end. A read error
/// ends the lookup with what was found.
pub fn lookup(mut db: impl BufRead, vendor: u16, product: Option<u16>) -> Names {
    let mut names = Names::default();
    let mut raw = Vec::new();
    while next_line(&mut db, &mut raw) > 0 {
        // usb.ids has a few Latin-1 names: keep the rest readable.
        match classify(&String::from_utf8_lossy(&raw)) {
            Line::Other => {}
            // Device lines belong to the vendor found last.
            Line::Device(id, name) => {
                if names.vendor.is_some() && product == Some(id) {
                    names.product = Some(name.to_string());
                    break;
                }
            }
            // The next vendor: the product is not listed.
            Line::Vendor(..) | Line::End if names.vendor.is_some() => break,
            Line::Vendor(id, name) => {
                if id == vendor {
                    names.vendor = Some(name.to_string());
                    if product.is_none() {
                        break;
                    }
                }
            }
            Line::End => break,
        }
    }
    names
}

/// One line of an ids file, as lookups and the vendor index read it.
enum Line<'a> {
    /// A comment, a blank line, a subsystem line (two tabs), or a device
    /// line that is no entry.
    Other,
    /// A device of the vendor above it (one tab): id and name.
    Device(u16, &'a str),
    Vendor(u16, &'a str),
    /// A class or other section: the vendor list is over.
    End,
}

fn classify(line: &str) -> Line<'_> {
    if line.starts_with('#') || line.trim().is_empty() {
        return Line::Other;
    }
    if let Some(rest) = line.strip_prefix('\t') {
        return match entry(rest) {
            Some((id, name)) if !rest.starts_with('\t') => Line::Device(id, name),
            _ => Line::Other,
        };
    }
    match entry(line) {
        Some((id, name)) => Line::Vendor(id, name),
        None => Line::End,
    }
}

/// "1af4  Red Hat, Inc." -> (0x1af4, "Red Hat, Inc."), the name cut at
/// NAME_MAX; borrowed, so that lines passed over allocate nothing.
fn entry(line: &str) -> Option<(u16, &str)> {
    let (id, name) = line.split_once(' ')?;
    if id.len() != 4 {
        return None;
    }
    let id = u16::from_str_radix(id, 16).ok()?;
    let name = name.trim();
    if name.is_empty() {
        return None;
    }
    let mut end = name.len().min(NAME_MAX);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    Some((id, &name[..end]))
}

/// The ids of a sysfs device that sits on a PCI or USB bus.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BusDevice {
    pub bus: Bus,
    /// The device's sysfs directory (host path under /sys/devices).
    pub path: std::path::PathBuf,
    pub vendor: u16,
    pub product: u16,
}

/// Reads the ids of the device at `dir` (a /sys/devices/... directory),
/// if it is a PCI device or a USB device (not a USB interface).
pub fn bus_device(host: &HostFs, dir: &std::path::Path) -> Option<BusDevice> {
    let subsystem = host.canonical(dir.join("subsystem")).ok()?;
    let (bus, vendor, product) = match subsystem.file_name()?.to_str()? {
        "pci" => (Bus::Pci, "vendor", "device"),
        "usb" => (Bus::Usb, "idVendor", "idProduct"),
        _ => return None,
    };
    let id = |f: &str| host.attribute(dir.join(f)).as_deref().and_then(parse_hex_id);
    Some(BusDevice { bus, path: dir.to_path_buf(), vendor: id(vendor)?, product: id(product)? })
}

/// The device at `dir` or its first ancestor on a PCI or USB bus: a NIC's
/// direct parent is often a virtio or platform device whose ids are not
/// PCI ids (on a VM, eth0's parent is virtioN, whose own parent is the
/// PCI function with vendor 0x1af4).
pub fn bus_ancestor(host: &HostFs, dir: &std::path::Path) -> Option<BusDevice> {
    // /sys/devices/pci0000:00/0000:00:03.0/virtio2 is three levels deep;
    // USB devices behind hubs are deeper. 32 levels is far past any real tree.
    dir.ancestors()
        .take(32)
        .take_while(|d| d.starts_with("/sys/devices") && *d != std::path::Path::new("/sys/devices"))
        .find_map(|d| bus_device(host, d))
}

/// "0x1af4" or "1af4" (sysfs, uevents) -> 0x1af4.
pub fn parse_hex_id(s: &str) -> Option<u16> {
    let s = s.trim();
    let s = s.strip_prefix("0x").unwrap_or(s);
    if s.is_empty() || s.len() > 4 {
        return None;
    }
    u16::from_str_radix(s, 16).ok()
}

/// How ids are shown when the database does not name them.
pub fn hex(id: u16) -> String {
    format!("0x{id:04x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    const PCI: &str = "\
# comment
#\tcomment with a tab
0001  SafeNet (wrong ID)
1af4  Red Hat, Inc.
\t1000  Virtio network device
\t\t01de fffb  Propolis Virtio network device
\t1041  Virtio 1.0 network device
1af5  Netezza Corp.
\t1041  Not Red Hat's
C 02  Network controller
\t00  Ethernet controller
";

    #[test]
    fn vendor_and_device_lines_are_found_subsystems_ignored() {
        let n = lookup(PCI.as_bytes(), 0x1af4, Some(0x1041));
        assert_eq!(n.vendor.as_deref(), Some("Red Hat, Inc."));
        assert_eq!(n.product.as_deref(), Some("Virtio 1.0 network device"));
        assert_eq!(lookup(PCI.as_bytes(), 0x1af4, None).product, None);
        // 0xfffb is a subsystem id of 1000, not a device of 1af4.
        let n = lookup(PCI.as_bytes(), 0x1af4, Some(0xfffb));
        assert_eq!((n.vendor.as_deref(), n.product), (Some("Red Hat, Inc."), None));
        // A device id of the next vendor is not taken for this one's.
        assert_eq!(lookup(PCI.as_bytes(), 0x1af5, Some(0x1000)).product, None);
        assert_eq!(lookup(PCI.as_bytes(), 0x1af5, Some(0x1041)).product.as_deref(), Some("Not Red Hat's"));
    }

    #[test]
    fn unknown_ids_and_the_class_section_give_nothing() {
        assert_eq!(lookup(PCI.as_bytes(), 0x8086, Some(0x0d57)), Names::default());
        // "C 02" is a class, not vendor 0x0002 or anything after it.
        assert_eq!(lookup(PCI.as_bytes(), 0x0002, None), Names::default());
        assert_eq!(lookup(&b""[..], 0x1af4, None), Names::default());
        assert_eq!(lookup(&b"1af4\n\t1000\n1af4  \n"[..], 0x1af4, Some(0x1000)), Names::default(), "nameless lines");
    }

    #[test]
    fn names_are_bounded() {
        let long = format!("abcd  {}\n", "é".repeat(400));
        let n = lookup(long.as_bytes(), 0xabcd, None).vendor.unwrap();
        assert!(n.len() <= NAME_MAX && n.chars().all(|c| c == 'é'), "{}", n.len());
    }

    #[test]
    fn the_rest_of_a_long_line_is_not_a_line() {
        // The rest of the long line, were it read as a line, is a vendor entry.
        let db = format!("0001  {}1af4  Fake\n1af4  Red Hat, Inc.\n", "x".repeat(LINE_MAX as usize - 6));
        assert_eq!(lookup(db.as_bytes(), 0x1af4, None).vendor.as_deref(), Some("Red Hat, Inc."));
    }

    #[test]
    fn a_host_file_is_read_at_each_lookup() {
        let root = std::env::temp_dir().join(format!("hitcount-ids-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(root.join("usr/share/hwdata")).unwrap();
        std::fs::write(root.join("usr/share/hwdata/pci.ids"), PCI).unwrap();
        let ids = Ids::load(&HostFs::new(&root));
        assert_eq!(ids.names(Bus::Pci, 0x1af4, Some(0x1000)).product.as_deref(), Some("Virtio network device"));
        assert_eq!(ids.names(Bus::Pci, 0x1af5, Some(0x1041)).product.as_deref(), Some("Not Red Hat's"));
        assert_eq!(ids.names(Bus::Pci, 0x8086, None), Names::default(), "not listed");
        // The file rewritten under the index: a stale offset falls back to
        // reading from the start.
        std::fs::write(root.join("usr/share/hwdata/pci.ids"), "1af4  Renamed\n").unwrap();
        assert_eq!(ids.names(Bus::Pci, 0x1af4, None).vendor.as_deref(), Some("Renamed"));
        assert_eq!(ids.names(Bus::Pci, 0x1af5, None), Names::default(), "no longer listed");
        assert_eq!(ids.names(Bus::Usb, 0x1af4, None), Names::default(), "no usb.ids");
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn the_index_points_at_each_vendor_line_and_stops_at_the_classes() {
        let index = vendor_index(PCI.as_bytes());
        let at = |id: u16| index.iter().find(|(v, _)| *v == id).map(|(_, at)| *at as usize).unwrap();
        assert_eq!(index.len(), 3);
        assert!(PCI[at(0x1af4)..].starts_with("1af4  Red Hat"));
        assert!(PCI[at(0x1af5)..].starts_with("1af5  Netezza"));
        let long = format!("0001  {}\n1af4  Red Hat, Inc.\n", "x".repeat(2 * LINE_MAX as usize));
        assert_eq!(vendor_index(long.as_bytes())[1], (0x1af4, 2 * LINE_MAX as u32 + 7), "skipped bytes counted");
        // A line blank but for non-ASCII white space is blank to lookups, so to the index too.
        let spaced = "1af4  Red Hat, Inc.\n\u{a0}\n1af5  Netezza Corp.\n";
        assert_eq!(vendor_index(spaced.as_bytes()).len(), 2);
        assert_eq!(lookup(spaced.as_bytes(), 0x1af5, None).vendor.as_deref(), Some("Netezza Corp."));
    }

    #[test]
    fn hex_ids_parse_and_print() {
        assert_eq!(parse_hex_id("0x1af4\n"), Some(0x1af4));
        assert_eq!(parse_hex_id("1AF4"), Some(0x1af4));
        assert_eq!(parse_hex_id("46d"), Some(0x046d));
        assert_eq!(parse_hex_id("0x12345"), None);
        assert_eq!(parse_hex_id("zz"), None);
        assert_eq!(parse_hex_id(""), None);
        assert_eq!(hex(0x46d), "0x046d");
    }

    #[test]
    fn ids_pick_the_bus_and_fall_back_when_absent() {
        let ids = Ids::from_texts(Some(PCI), None);
        assert_eq!(ids.names(Bus::Pci, 0x1af4, None).vendor.as_deref(), Some("Red Hat, Inc."));
        assert_eq!(ids.names(Bus::Usb, 0x1af4, None), Names::default());
    }
}
