//! What the kernel itself counted on a TCP socket, the oracle for the
//! per-packet byte counts. Per packet (`--tcp-bytes packets`) the agent
//! counts every transmission, so a segment sent twice is counted twice;
//! the application's byte count is then the wrong expectation on a machine
//! that retransmits (a loaded host, a slow guest). The socket's own
//! `tcpi_bytes_sent` counts the same thing the egress hook sees.
use std::{
    net::{Shutdown, TcpStream},
    os::fd::AsRawFd,
    time::{Duration, Instant},
};

/// Two counters of `struct tcp_info` (Linux 4.19+).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TcpCounts {
    /// Payload bytes transmitted, retransmissions included
    /// (`tcpi_bytes_sent`, RFC 4898 tcpEStatsPerfHCDataOctetsOut).
    pub bytes_sent: u64,
    /// Payload bytes received in order, each byte once
    /// (`tcpi_bytes_received`, RFC 4898 tcpEStatsAppHCThruOctetsReceived,
    /// less the one sequence number of the peer's FIN).
    pub bytes_received: u64,
}

// Offsets in the uapi `struct tcp_info` (linux/tcp.h; checked with offsetof).
const TCPI_STATE: usize = 0;
const TCPI_BYTES_RECEIVED: usize = 128;
const TCPI_BYTES_SENT: usize = 200;
const TCP_INFO_LEN: usize = 208;
const TCP_CLOSE: u8 = 7;

/// The socket's state and counters, or None where the kernel's `tcp_info`
/// is too short to hold them (before 4.19).
fn tcp_info(s: &TcpStream) -> Option<(u8, TcpCounts)> {
    let mut buf = [0u8; 256];
    let mut len = buf.len() as libc::socklen_t;
    // SAFETY: buf is writable for len bytes; the kernel writes at most len
    // and stores the length it wrote back in len.
    let rc = unsafe {
        libc::getsockopt(s.as_raw_fd(), libc::IPPROTO_TCP, libc::TCP_INFO, buf.as_mut_ptr().cast(), &mut len)
    };
    if rc != 0 || (len as usize) < TCP_INFO_LEN {
        return None;
    }
    let u64_at = |o: usize| u64::from_ne_bytes(buf[o..o + 8].try_into().unwrap());
    Some((
        buf[TCPI_STATE],
        TcpCounts { bytes_sent: u64_at(TCPI_BYTES_SENT), bytes_received: u64_at(TCPI_BYTES_RECEIVED) },
    ))
}

/// Waits until the connection is closed (every byte sent acknowledged, so
/// nothing more can be retransmitted), then returns its counts. The write
/// side must already be shut down and the peer's end read.
pub fn counts_when_closed(s: &TcpStream) -> TcpCounts {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match tcp_info(s) {
            // Closed in order (both FINs), as every connection of the tests:
            // the peer's FIN took one sequence number, not a byte.
            Some((TCP_CLOSE, counts)) => {
                return TcpCounts { bytes_received: counts.bytes_received.saturating_sub(1), ..counts }
            }
            Some(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(2)),
            Some((state, _)) => panic!("TCP connection still in state {state} after 20 s"),
            None => panic!("TCP_INFO without tcpi_bytes_sent (Linux 4.19+)"),
        }
    }
}

/// Shuts the write side down (a FIN after the data) and waits as
/// [`counts_when_closed`]; for the side that read the peer's EOF first.
pub fn finish(s: &TcpStream) -> TcpCounts {
    let _ = s.shutdown(Shutdown::Write);
    counts_when_closed(s)
}

/// The line a helper prints per connection, and reads back.
pub fn report_line(c: TcpCounts) -> String {
    format!("tcp bytes_sent={} bytes_received={}", c.bytes_sent, c.bytes_received)
}

pub fn parse_report_line(line: &str) -> Option<TcpCounts> {
    let rest = line.strip_prefix("tcp bytes_sent=")?;
    let (sent, received) = rest.split_once(" bytes_received=")?;
    Some(TcpCounts { bytes_sent: sent.parse().ok()?, bytes_received: received.parse().ok()? })
}

/// The sum of several connections' counts.
pub fn total(counts: &[TcpCounts]) -> TcpCounts {
    counts.iter().fold(TcpCounts::default(), |a, c| TcpCounts {
        bytes_sent: a.bytes_sent + c.bytes_sent,
        bytes_received: a.bytes_received + c.bytes_received,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_lines_round_trip() {
        let c = TcpCounts { bytes_sent: 8_454_104, bytes_received: 3 << 20 };
        assert_eq!(parse_report_line(&report_line(c)), Some(c));
        assert_eq!(parse_report_line("ready"), None);
        assert_eq!(parse_report_line("tcp bytes_sent=x bytes_received=1"), None);
    }

    #[test]
    fn counts_of_a_loopback_connection() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let to = l.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            use std::io::{Read, Write};
            let (mut c, _) = l.accept().unwrap();
            let mut sink = Vec::new();
            c.read_to_end(&mut sink).unwrap();
            c.write_all(&[7; 300]).unwrap();
            finish(&c)
        });
        use std::io::{Read, Write};
        let mut c = TcpStream::connect(to).unwrap();
        c.write_all(&[1; 1000]).unwrap();
        c.shutdown(Shutdown::Write).unwrap();
        let mut reply = Vec::new();
        c.read_to_end(&mut reply).unwrap();
        let mine = counts_when_closed(&c);
        let theirs = server.join().unwrap();
        // Loopback without load: nothing retransmitted, so sent is the payload.
        assert_eq!(mine.bytes_received, 300);
        assert_eq!(theirs.bytes_received, 1000);
        assert!(mine.bytes_sent >= 1000 && theirs.bytes_sent >= 300, "{mine:?} {theirs:?}");
    }
}
