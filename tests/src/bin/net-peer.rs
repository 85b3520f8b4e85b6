//! Test helper: the "remote host" side of the network tests, run inside a
//! network namespace with `ip netns exec`, or in the tests' own as a server
//! already running when the agent starts. Prints `ready` once listening.
//!
//! net-peer tcp-server ADDR PORT REPLY_BYTES [TAG]  read each connection to EOF, reply REPLY_BYTES, close;
//!                                                  TAG is ignored: it marks the command line
//! net-peer udp-server ADDR PORT                    receive datagrams, answer nothing
//! net-peer dns ADDR PORT NAME IPV4 TTL             answer A queries for NAME with IPV4 and TTL
//! net-peer tcp-client ADDR PORT COUNT BYTES        COUNT connections, each sends BYTES, reads to EOF
//! net-peer dns-forge ADDR TO_ADDR TO_PORT NAME IPV4 COUNT
//!                                                  from ADDR port 53, send COUNT answers nobody asked
//!                                                  for (ids 0..COUNT) naming IPV4 NAME, TTL 300
//! net-peer udp-send-after ADDR PORT FIFO [TAG]     connect a UDP socket to ADDR PORT, print `ready`,
//!                                                  wait until FIFO is opened for writing and closed
//!                                                  again, send one datagram; TAG marks the command line
//!
//! The TCP modes print one line per connection once it is closed, what the
//! kernel counted on it (`tests::tcp::report_line`): the oracle for bytes
//! counted per packet.
use std::{
    io::{Read, Write},
    net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket},
};

use tests::tcp;

fn addr(a: &str, p: &str) -> SocketAddr {
    let ip: std::net::IpAddr = a.parse().expect("address");
    SocketAddr::new(ip, p.parse().expect("port"))
}

fn ready() {
    println!("ready");
    std::io::stdout().flush().unwrap();
}

fn report(c: tcp::TcpCounts) {
    // One write per line: connections are served by concurrent threads.
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{}", tcp::report_line(c));
    let _ = out.flush();
}

fn main() {
    let a: Vec<String> = std::env::args().collect();
    match a[1].as_str() {
        "tcp-server" => {
            let l = TcpListener::bind(addr(&a[2], &a[3])).expect("bind");
            let reply = vec![b'r'; a[4].parse().expect("reply bytes")];
            ready();
            for c in l.incoming() {
                let mut c = c.expect("accept");
                let reply = reply.clone();
                std::thread::spawn(move || {
                    let mut sink = Vec::new();
                    if c.read_to_end(&mut sink).is_ok() && c.write_all(&reply).is_ok() {
                        report(tcp::finish(&c));
                    }
                });
            }
        }
        "udp-server" => {
            let s = UdpSocket::bind(addr(&a[2], &a[3])).expect("bind");
            ready();
            // On the heap: in main's frame, its pages would be touched at
            // entry (stack probes) by every mode, and udp-send-after runs
            // as 1000s of processes at once.
            let mut buf = vec![0u8; 65536];
            loop {
                let _ = s.recv_from(&mut buf);
            }
        }
        "dns" => {
            let s = UdpSocket::bind(addr(&a[2], &a[3])).expect("bind");
            let name = a[4].to_ascii_lowercase();
            let ip: Ipv4Addr = a[5].parse().expect("ipv4");
            let ttl: u32 = a[6].parse().expect("ttl");
            ready();
            let mut buf = [0u8; 1500];
            loop {
                let Ok((n, from)) = s.recv_from(&mut buf) else { continue };
                if let Some(answer) = answer(&buf[..n], &name, ip, ttl) {
                    let _ = s.send_to(&answer, from);
                }
            }
        }
        "tcp-client" => {
            let to = addr(&a[2], &a[3]);
            let count: u32 = a[4].parse().expect("count");
            let payload = vec![b'c'; a[5].parse().expect("bytes")];
            for _ in 0..count {
                let mut c = TcpStream::connect(to).expect("connect");
                c.write_all(&payload).expect("write");
                c.shutdown(Shutdown::Write).expect("shutdown");
                let mut sink = Vec::new();
                c.read_to_end(&mut sink).expect("read");
                report(tcp::counts_when_closed(&c));
            }
        }
        "dns-forge" => {
            let s = UdpSocket::bind(addr(&a[2], "53")).expect("bind");
            let to = addr(&a[3], &a[4]);
            let ip: Ipv4Addr = a[6].parse().expect("ipv4");
            for id in 0..a[7].parse::<u16>().expect("count") {
                let mut q = vec![(id >> 8) as u8, id as u8, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0];
                for l in a[5].split('.') {
                    q.push(l.len() as u8);
                    q.extend_from_slice(l.as_bytes());
                }
                q.extend_from_slice(&[0, 0, 1, 0, 1]);
                let r = answer(&q, &a[5].to_ascii_lowercase(), ip, 300).expect("an answer");
                s.send_to(&r, to).expect("send");
            }
        }
        "udp-send-after" => {
            let s = UdpSocket::bind("0.0.0.0:0").expect("bind");
            s.connect(addr(&a[2], &a[3])).expect("connect");
            ready();
            // Opening a FIFO for reading blocks until a writer opens it;
            // reading then ends when the writer closes it.
            let mut go = std::fs::File::open(&a[4]).expect("fifo");
            let mut sink = Vec::new();
            go.read_to_end(&mut sink).expect("read fifo");
            s.send(b"go").expect("send");
        }
        m => panic!("unknown mode {m}"),
    }
}

/// A response to an A query for `name`: the question echoed, one A record
/// whose owner is a compression pointer to it.
fn answer(q: &[u8], name: &str, ip: Ipv4Addr, ttl: u32) -> Option<Vec<u8>> {
    if q.len() < 12 {
        return None;
    }
    let mut at = 12;
    let mut labels = Vec::new();
    while *q.get(at)? != 0 {
        let len = q[at] as usize;
        labels.push(String::from_utf8_lossy(q.get(at + 1..at + 1 + len)?).to_ascii_lowercase());
        at += 1 + len;
    }
    let question_end = at + 5; // root label, type, class
    let qtype = u16::from_be_bytes([*q.get(at + 1)?, *q.get(at + 2)?]);
    let mut r = q.get(..question_end)?.to_vec();
    r[2] = 0x81; // QR, RD
    r[3] = 0x80; // RA
    r[8..12].copy_from_slice(&[0, 0, 0, 0]);
    if labels.join(".") == name && qtype == 1 {
        r[6..8].copy_from_slice(&1u16.to_be_bytes());
        r.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1]);
        r.extend_from_slice(&ttl.to_be_bytes());
        r.extend_from_slice(&[0, 4]);
        r.extend_from_slice(&ip.octets());
    } else {
        r[3] = 0x83; // NXDOMAIN
        r[6..8].copy_from_slice(&[0, 0]);
    }
    Some(r)
}
