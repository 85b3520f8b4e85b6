//! Netlink framing for the readers that talk to the kernel over AF_NETLINK
//! (rtnetlink addresses, nftables, audit): walking the messages of a
//! buffer with every length checked against it, the errno of an error
//! reply, and a socket. Messages are an nlmsghdr (16 bytes: length, type,
//! flags, sequence, port) and a body, each 4-byte aligned
//! (include/uapi/linux/netlink.h).
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

pub const NLMSG_HDRLEN: usize = 16;
pub const NLMSG_NOOP: u16 = 1;
pub const NLMSG_ERROR: u16 = 2;
pub const NLMSG_DONE: u16 = 3;
pub const NLM_F_REQUEST: u16 = 1;

/// One message of a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Message<'a> {
    pub kind: u16,
    pub flags: u16,
    pub seq: u32,
    pub body: &'a [u8],
    /// Where it starts in the buffer.
    pub at: usize,
}

/// A header that cannot be walked past: nothing after it can be found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Malformed {
    /// Where the broken header starts.
    pub at: usize,
    pub why: String,
}

/// The messages of `buf` in order; a broken header is the last item.
pub fn messages(buf: &[u8]) -> impl Iterator<Item = Result<Message<'_>, Malformed>> {
    let mut at = 0;
    let mut broken = false;
    std::iter::from_fn(move || {
        if broken || at >= buf.len() {
            return None;
        }
        let rest = &buf[at..];
        if rest.len() < NLMSG_HDRLEN {
            broken = true;
            return Some(Err(Malformed { at, why: format!("{} bytes left, a header is {NLMSG_HDRLEN}", rest.len()) }));
        }
        let len = u32::from_ne_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        if len < NLMSG_HDRLEN || len > rest.len() {
            broken = true;
            return Some(Err(Malformed { at, why: format!("length {len} in {} bytes", rest.len()) }));
        }
        let m = Message {
            kind: u16::from_ne_bytes([rest[4], rest[5]]),
            flags: u16::from_ne_bytes([rest[6], rest[7]]),
            seq: u32::from_ne_bytes([rest[8], rest[9], rest[10], rest[11]]),
            body: &rest[NLMSG_HDRLEN..len],
            at,
        };
        at = at.saturating_add((len + 3) & !3);
        Some(Ok(m))
    })
}

/// The code an NLMSG_ERROR or NLMSG_DONE body starts with: 0, or the
/// positive errno of a negative one. A body too short for it reads as 0
/// (NLMSG_DONE of some families has none); i32::MIN, which has no positive
/// counterpart and is no errno, is an error.
pub fn errno(body: &[u8]) -> Result<i32, String> {
    let code = body.get(..4).map_or(0, |b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]));
    if code >= 0 {
        return Ok(0);
    }
    code.checked_neg().ok_or_else(|| format!("error code {code} is no errno"))
}

/// A message header for a request of `body_len` bytes after it.
pub fn header(body_len: usize, kind: u16, flags: u16, seq: u32) -> [u8; NLMSG_HDRLEN] {
    let mut h = [0u8; NLMSG_HDRLEN];
    h[0..4].copy_from_slice(&((NLMSG_HDRLEN + body_len) as u32).to_ne_bytes());
    h[4..6].copy_from_slice(&kind.to_ne_bytes());
    h[6..8].copy_from_slice(&flags.to_ne_bytes());
    h[8..12].copy_from_slice(&seq.to_ne_bytes());
    h
}

/// A netlink socket of one protocol, optionally in multicast `groups` (a bit mask).
pub struct Socket(OwnedFd);

impl Socket {
    pub fn open(protocol: i32, groups: u32) -> std::io::Result<Socket> {
        // SAFETY: plain socket(2); the fd is owned below.
        let fd = unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_RAW | libc::SOCK_CLOEXEC, protocol) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: fd was just opened and is ours alone.
        let socket = Socket(unsafe { OwnedFd::from_raw_fd(fd) });
        if groups != 0 {
            // SAFETY: a zeroed sockaddr_nl with family and groups set is valid.
            let ret = unsafe {
                let mut addr: libc::sockaddr_nl = std::mem::zeroed();
                addr.nl_family = libc::AF_NETLINK as u16;
                addr.nl_groups = groups;
                libc::bind(
                    socket.0.as_raw_fd(),
                    (&addr as *const libc::sockaddr_nl).cast(),
                    std::mem::size_of::<libc::sockaddr_nl>() as u32,
                )
            };
            if ret < 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
        Ok(socket)
    }

    /// Sends `msg` to the kernel (port 0).
    pub fn send(&self, msg: &[u8]) -> std::io::Result<()> {
        // SAFETY: msg is a valid buffer; the kernel is a zeroed sockaddr_nl.
        let sent = unsafe {
            let mut addr: libc::sockaddr_nl = std::mem::zeroed();
            addr.nl_family = libc::AF_NETLINK as u16;
            libc::sendto(
                self.0.as_raw_fd(),
                msg.as_ptr().cast(),
                msg.len(),
                0,
                (&addr as *const libc::sockaddr_nl).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as u32,
            )
        };
        if sent < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }

    /// One datagram into `buf`; with `wait` false, `WouldBlock` when none is queued.
    pub fn recv(&self, buf: &mut [u8], wait: bool) -> std::io::Result<usize> {
        let flags = if wait { 0 } else { libc::MSG_DONTWAIT };
        loop {
            // SAFETY: buf is writable for its length.
            let n = unsafe { libc::recv(self.0.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), flags) };
            if n >= 0 {
                return Ok(n as usize);
            }
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }

    /// Bounds a waiting [`Socket::recv`].
    pub fn set_timeout(&self, d: std::time::Duration) -> std::io::Result<()> {
        // `as _`: the field types differ between glibc and musl (whose
        // time_t alias libc deprecates), the values fit either.
        let tv = libc::timeval { tv_sec: d.as_secs() as _, tv_usec: d.subsec_micros() as _ };
        // SAFETY: tv is a valid timeval for SO_RCVTIMEO.
        let ret = unsafe {
            libc::setsockopt(
                self.0.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&tv as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as u32,
            )
        };
        if ret < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(kind: u16, seq: u32, body: &[u8]) -> Vec<u8> {
        let mut m = header(body.len(), kind, 0, seq).to_vec();
        m.extend_from_slice(body);
        m.resize((m.len() + 3) & !3, 0);
        m
    }

    #[test]
    fn walks_aligned_messages_and_stops_at_a_broken_header() {
        let mut buf = msg(1000, 7, b"abcde");
        buf.extend(msg(NLMSG_DONE, 7, &0i32.to_ne_bytes()));
        let got: Vec<_> = messages(&buf).collect::<Result<_, _>>().unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!((got[0].kind, got[0].seq, got[0].body, got[0].at), (1000, 7, &b"abcde"[..], 0));
        assert_eq!((got[1].kind, got[1].at), (NLMSG_DONE, 24));
        // A length that lies: past the buffer, or shorter than a header.
        let mut lying = msg(1000, 1, b"x");
        lying[0..4].copy_from_slice(&1000u32.to_ne_bytes());
        let all: Vec<_> = messages(&lying).collect();
        assert_eq!(all.len(), 1);
        assert!(all[0].as_ref().unwrap_err().why.contains("length 1000"));
        lying[0..4].copy_from_slice(&3u32.to_ne_bytes());
        assert!(messages(&lying).next().unwrap().is_err());
        assert!(messages(&[0u8; 5]).next().unwrap().is_err(), "a short tail");
        assert_eq!(messages(&[]).count(), 0);
    }

    #[test]
    fn errno_of_an_error_reply() {
        assert_eq!(errno(&(-13i32).to_ne_bytes()), Ok(13));
        assert_eq!(errno(&0i32.to_ne_bytes()), Ok(0));
        assert_eq!(errno(&[]), Ok(0));
        assert!(errno(&i32::MIN.to_ne_bytes()).is_err());
    }
}
