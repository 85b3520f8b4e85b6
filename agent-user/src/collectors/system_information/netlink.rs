//! Interface addresses, which sysfs does not have: an RTM_GETADDR dump over
//! a NETLINK_ROUTE socket, as `ip addr` does. Messages are nlmsghdr (16
//! bytes) + ifaddrmsg (8 bytes) + rtattrs, each 4-byte aligned
//! (include/uapi/linux/netlink.h, if_addr.h, rtnetlink.h). The parser is
//! pure and checks every length against the buffer.
use crate::netlink::{NLMSG_DONE, NLMSG_ERROR, NLMSG_HDRLEN as NLMSG_HDR};
use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, Ipv6Addr},
};

const IFADDRMSG: usize = 8;
const RTA_HDR: usize = 4;
const RTM_NEWADDR: u16 = 20;
const RTM_GETADDR: u16 = 22;
/// Addresses kept per interface (a host with more is misconfigured or
/// under attack; the rest are counted in `Addresses::dropped`).
pub const PER_INTERFACE_MAX: usize = 256;
/// Interfaces kept, and bytes of dump read, whatever the kernel sends.
const INTERFACES_MAX: usize = 4096;
const DUMP_MAX_BYTES: usize = 16 << 20;

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct InterfaceAddresses {
    pub v4: Vec<Ipv4Addr>,
    pub v6: Vec<Ipv6Addr>,
}

/// Addresses by interface index.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Addresses {
    pub by_index: BTreeMap<u32, InterfaceAddresses>,
    /// Addresses past the bounds, not kept.
    pub dropped: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    #[error("rtnetlink address dump: {0}")]
    Io(#[from] std::io::Error),
    #[error("rtnetlink address dump: the kernel answered error {0}")]
    Kernel(i32),
    #[error("rtnetlink address dump: malformed message at byte {0}")]
    Malformed(usize),
    #[error("rtnetlink address dump: more than {DUMP_MAX_BYTES} bytes")]
    TooLarge,
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(at..at + 2)?.try_into().ok()?))
}
fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}
fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// Parses one buffer of a dump (one recv) into `out`; Ok(true) once the
/// dump's NLMSG_DONE is seen. Messages of another sequence number are not
/// answers to our request and are skipped.
pub fn parse_dump(buf: &[u8], seq: u32, out: &mut Addresses) -> Result<bool, NetlinkError> {
    for m in crate::netlink::messages(buf) {
        let m = m.map_err(|e| NetlinkError::Malformed(e.at))?;
        if m.seq != seq {
            continue;
        }
        match m.kind {
            NLMSG_DONE => return Ok(true),
            NLMSG_ERROR => {
                if m.body.len() < 4 {
                    return Err(NetlinkError::Malformed(m.at));
                }
                return Err(match crate::netlink::errno(m.body) {
                    Ok(errno) => NetlinkError::Kernel(errno),
                    Err(_) => NetlinkError::Malformed(m.at),
                });
            }
            RTM_NEWADDR => parse_ifaddr(m.body, out).ok_or(NetlinkError::Malformed(m.at))?,
            _ => {}
        }
    }
    Ok(false)
}

/// One RTM_NEWADDR body: ifaddrmsg then attributes. IPv4 takes IFA_LOCAL
/// (on a point-to-point link IFA_ADDRESS is the peer's), IPv6 IFA_ADDRESS
/// (it has no IFA_LOCAL unless point-to-point, where IFA_LOCAL is ours).
fn parse_ifaddr(body: &[u8], out: &mut Addresses) -> Option<()> {
    let family = *body.first()?;
    let index = u32_at(body, 4)?;
    let (mut local, mut address) = (None, None);
    let mut at = IFADDRMSG;
    while at + RTA_HDR <= body.len() {
        let len = u16_at(body, at)? as usize;
        let kind = u16_at(body, at + 2)?;
        if len < RTA_HDR || at + len > body.len() {
            return None;
        }
        let data = &body[at + RTA_HDR..at + len];
        match kind {
            libc::IFA_LOCAL => local = Some(data),
            libc::IFA_ADDRESS => address = Some(data),
            _ => {}
        }
        at += align4(len);
    }
    let Some(data) = local.or(address) else { return Some(()) };
    if !out.by_index.contains_key(&index) && out.by_index.len() >= INTERFACES_MAX {
        out.dropped += 1;
        return Some(());
    }
    let entry = out.by_index.entry(index).or_default();
    let full = entry.v4.len() + entry.v6.len() >= PER_INTERFACE_MAX;
    match (family as i32, data.len()) {
        _ if full => out.dropped += 1,
        (libc::AF_INET, 4) => entry.v4.push(Ipv4Addr::from(<[u8; 4]>::try_from(data).ok()?)),
        (libc::AF_INET6, 16) => entry.v6.push(Ipv6Addr::from(<[u8; 16]>::try_from(data).ok()?)),
        (libc::AF_INET | libc::AF_INET6, _) => return None,
        _ => {} // another family (none today): not an IP address
    }
    Some(())
}

/// The request: nlmsghdr + an ifaddrmsg of family AF_UNSPEC (every family).
fn request(seq: u32) -> [u8; NLMSG_HDR + IFADDRMSG] {
    let mut r = [0u8; NLMSG_HDR + IFADDRMSG];
    r[0..4].copy_from_slice(&((NLMSG_HDR + IFADDRMSG) as u32).to_ne_bytes());
    r[4..6].copy_from_slice(&RTM_GETADDR.to_ne_bytes());
    r[6..8].copy_from_slice(&((libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16).to_ne_bytes());
    r[8..12].copy_from_slice(&seq.to_ne_bytes());
    r
}

/// Dumps the addresses of the agent's network namespace. Under
/// `--host-root` in a container this is the host's only when the container
/// shares the host's network (hostNetwork), as the deployment docs ask:
/// addresses live in the kernel, not in any file under the root.
pub fn dump() -> Result<Addresses, NetlinkError> {
    let socket = crate::netlink::Socket::open(libc::NETLINK_ROUTE, 0)?;
    // A dump is answered at once; a second without an answer is a kernel that will not.
    socket.set_timeout(std::time::Duration::from_secs(1))?;
    let seq = std::process::id() ^ 0x4843_0000;
    socket.send(&request(seq))?;
    let mut out = Addresses::default();
    let mut buf = vec![0u8; 64 << 10];
    let mut total = 0;
    loop {
        let n = socket.recv(&mut buf, true)?;
        total += n;
        if total > DUMP_MAX_BYTES {
            return Err(NetlinkError::TooLarge);
        }
        if n == 0 || parse_dump(&buf[..n], seq, &mut out)? {
            return Ok(out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> Vec<u8> {
        let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/system_information/netlink").join(name);
        std::fs::read(p).unwrap()
    }

    /// The request's seq of the captures (fixtures/system_information/netlink, made with
    /// a Python socket on this VM, and in a namespace with a veth pair).
    const CAPTURED_SEQ: u32 = 1;

    #[test]
    fn a_captured_dump_of_this_vm_parses() {
        let mut a = Addresses::default();
        assert!(parse_dump(&fixture("vm.bin"), CAPTURED_SEQ, &mut a).unwrap(), "ends with NLMSG_DONE");
        let eth0 = &a.by_index[&4];
        assert_eq!(eth0.v4, ["192.0.2.2".parse::<Ipv4Addr>().unwrap()]);
        assert_eq!(eth0.v6, ["fd00::2".parse::<Ipv6Addr>().unwrap(), "fe80::fc:ff:fe00:1".parse().unwrap()]);
        assert_eq!(a.by_index[&1].v4, [Ipv4Addr::LOCALHOST]);
        assert_eq!(a.by_index.len(), 2, "ifb0 and ifb1 have no addresses");
    }

    #[test]
    fn point_to_point_addresses_are_the_local_side() {
        let mut a = Addresses::default();
        assert!(parse_dump(&fixture("netns.bin"), CAPTURED_SEQ, &mut a).unwrap());
        let va = &a.by_index[&3];
        let v4: Vec<String> = va.v4.iter().map(|x| x.to_string()).collect();
        assert_eq!(v4, ["10.9.9.1", "10.9.8.1"], "10.9.8.2 is the peer");
        assert_eq!(va.v6.len(), 2);
        assert_eq!(a.by_index[&2].v4, ["10.7.7.7".parse::<Ipv4Addr>().unwrap()]);
    }

    #[test]
    fn truncated_and_lying_lengths_are_refused() {
        let vm = fixture("vm.bin");
        let mut a = Addresses::default();
        // Cut inside the first message: its length points past the buffer.
        assert!(matches!(parse_dump(&vm[..40], CAPTURED_SEQ, &mut a), Err(NetlinkError::Malformed(0))));
        let mut bad = vm.clone();
        bad[0..4].copy_from_slice(&8u32.to_ne_bytes()); // shorter than a header
        assert!(matches!(parse_dump(&bad, CAPTURED_SEQ, &mut a), Err(NetlinkError::Malformed(0))));
        let mut bad = vm.clone();
        bad[24..26].copy_from_slice(&2000u16.to_ne_bytes()); // first attribute longer than its message
        assert!(matches!(parse_dump(&bad, CAPTURED_SEQ, &mut Addresses::default()), Err(NetlinkError::Malformed(0))));
        // Another request's messages are not ours.
        let mut a = Addresses::default();
        assert!(!parse_dump(&vm, 99, &mut a).unwrap());
        assert_eq!(a, Addresses::default());
    }

    #[test]
    fn kernel_errors_and_bounds() {
        let mut err = request(7).to_vec();
        err[4..6].copy_from_slice(&NLMSG_ERROR.to_ne_bytes());
        err[16..20].copy_from_slice(&(-libc::EPERM).to_ne_bytes());
        assert!(matches!(parse_dump(&err, 7, &mut Addresses::default()), Err(NetlinkError::Kernel(libc::EPERM))));
        // No errno is i32::MIN: negating it overflowed (the firewall
        // parser's fuzz finding, the same code here).
        err[16..20].copy_from_slice(&i32::MIN.to_ne_bytes());
        assert!(matches!(parse_dump(&err, 7, &mut Addresses::default()), Err(NetlinkError::Malformed(0))));
        // One interface with more addresses than kept.
        let one = |i: u8| {
            let mut m = vec![0u8; NLMSG_HDR + IFADDRMSG + 8];
            let n = m.len() as u32;
            m[0..4].copy_from_slice(&n.to_ne_bytes());
            m[4..6].copy_from_slice(&RTM_NEWADDR.to_ne_bytes());
            m[8..12].copy_from_slice(&7u32.to_ne_bytes());
            m[16] = libc::AF_INET as u8;
            m[20..24].copy_from_slice(&9u32.to_ne_bytes());
            m[24..26].copy_from_slice(&8u16.to_ne_bytes());
            m[26..28].copy_from_slice(&libc::IFA_LOCAL.to_ne_bytes());
            m[28..32].copy_from_slice(&[10, 0, 1, i]);
            m
        };
        let buf: Vec<u8> = (0..=255u8).chain(0..10).flat_map(one).collect();
        let mut a = Addresses::default();
        assert!(!parse_dump(&buf, 7, &mut a).unwrap());
        assert_eq!((a.by_index[&9].v4.len(), a.dropped), (PER_INTERFACE_MAX, 10));
        // A 5-byte IPv4 address is not one.
        let mut odd = one(1);
        odd[24..26].copy_from_slice(&9u16.to_ne_bytes());
        odd.extend([0, 0, 0, 0]);
        let n = odd.len() as u32;
        odd[0..4].copy_from_slice(&n.to_ne_bytes());
        assert!(parse_dump(&odd, 7, &mut Addresses::default()).is_err());
    }
}
