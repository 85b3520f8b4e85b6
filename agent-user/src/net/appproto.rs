//! Application protocol of a connection: by a cheap look at the first
//! payload bytes where a signature is reliable, else by the service port.
//! Pure.
use super::{Direction, Transport};

/// The first bytes of a payload, if they carry a signature that other
/// traffic practically never starts with.
pub fn by_payload(head: &[u8]) -> Option<&'static str> {
    const HTTP: [&[u8]; 10] =
        [b"GET ", b"POST ", b"PUT ", b"HEAD ", b"DELETE ", b"OPTIONS ", b"PATCH ", b"CONNECT ", b"TRACE ", b"HTTP/1."];
    // TLS record: handshake (22), version 3.x with x <= 4 (SSL 3.0 .. TLS 1.3 legacy field).
    if head.len() >= 3 && head[0] == 0x16 && head[1] == 0x03 && head[2] <= 0x04 {
        return Some("TLS");
    }
    if head.starts_with(b"SSH-") {
        return Some("SSH");
    }
    // Methods longer than the kept head are compared as far as it goes.
    let n = |m: &[u8]| m.len().min(agent_common::HEAD_LEN);
    if HTTP.iter().any(|m| head.len() >= n(m) && head[..n(m)] == m[..n(m)]) {
        return Some("HTTP");
    }
    if is_mqtt_connect(head) {
        return Some("MQTT");
    }
    None
}

/// MQTT CONNECT: packet type 1 (0x10), a remaining-length varint of 1..4
/// bytes, then the protocol name "MQTT" (3.1.1, 5) or "MQIsdp" (3.1) with its
/// two-byte length. Only as much as `head` holds is compared.
fn is_mqtt_connect(head: &[u8]) -> bool {
    if head.first() != Some(&0x10) {
        return false;
    }
    let Some(varint_len) = head.iter().skip(1).take(4).position(|b| b & 0x80 == 0).map(|i| i + 1) else {
        return false;
    };
    let rest = &head[1 + varint_len..];
    let matches = |name: &[u8]| {
        let mut want = vec![0, name.len() as u8];
        want.extend_from_slice(name);
        // At least the length and three name bytes must be present.
        rest.len() >= 5 && want.starts_with(&rest[..rest.len().min(want.len())])
    };
    matches(b"MQTT") || matches(b"MQIsdp")
}

/// Well-known service ports.
pub fn by_port(transport: Transport, port: u16) -> Option<&'static str> {
    match (transport, port) {
        (Transport::Udp | Transport::Tcp, 53) => Some("DNS"),
        (Transport::Tcp, 853) => Some("DNS"),
        (Transport::Tcp, 80 | 8080) => Some("HTTP"),
        (Transport::Tcp, 443 | 8443) => Some("TLS"),
        (Transport::Tcp, 22) => Some("SSH"),
        (Transport::Tcp, 1883 | 8883) => Some("MQTT"),
        (Transport::Udp, 123) => Some("NTP"),
        (Transport::Udp, 67 | 68) => Some("DHCP"),
        _ => None,
    }
}

/// The protocol of a record. The service port is the remote one of an
/// outbound connection and the local one of an inbound connection. A TLS
/// handshake on a port of a protocol that runs over TLS (MQTT on 8883, DNS
/// on 853) names that protocol.
pub fn classify(
    transport: Transport,
    direction: Direction,
    local_port: u16,
    remote_port: u16,
    head: &[u8],
) -> Option<&'static str> {
    if transport == Transport::Icmp {
        return None;
    }
    let service = match direction {
        Direction::Out => remote_port,
        Direction::In => local_port,
    };
    let port = by_port(transport, service);
    match (transport, by_payload(head)) {
        (Transport::Tcp, Some("TLS")) if matches!(port, Some(p) if p != "TLS") => port,
        (Transport::Tcp, Some(p)) => Some(p),
        _ => port,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_signatures() {
        assert_eq!(by_payload(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01]), Some("TLS"));
        assert_eq!(by_payload(&[0x17, 0x03, 0x03, 0, 0, 0, 0, 0]), None, "application data is not a start");
        assert_eq!(by_payload(b"SSH-2.0-"), Some("SSH"));
        assert_eq!(by_payload(b"GET / HT"), Some("HTTP"));
        assert_eq!(by_payload(b"OPTIONS "), Some("HTTP"));
        assert_eq!(by_payload(b"HTTP/1.1"), Some("HTTP"));
        assert_eq!(by_payload(b"GETX"), None);
        assert_eq!(by_payload(b"\x10\x14\x00\x04MQTT"), Some("MQTT"));
        assert_eq!(by_payload(b"\x10\x94\x01\x00\x04MQT"), Some("MQTT"), "two-byte remaining length");
        assert_eq!(by_payload(b"\x10\x14\x00\x06MQIs"), Some("MQTT"), "MQTT 3.1");
        assert_eq!(by_payload(b"\x10\x14\x00\x04ABCD"), None);
        assert_eq!(by_payload(b""), None);
        assert_eq!(by_payload(b"hello wo"), None);
    }

    #[test]
    fn service_port_follows_direction() {
        let c = |d, l, r, h: &[u8]| classify(Transport::Tcp, d, l, r, h);
        assert_eq!(c(Direction::Out, 40000, 443, b""), Some("TLS"));
        assert_eq!(c(Direction::In, 443, 40000, b""), Some("TLS"));
        assert_eq!(c(Direction::In, 40000, 443, b""), None, "an inbound connection from port 443 is not TLS");
        assert_eq!(c(Direction::Out, 40000, 8883, &[0x16, 0x03, 0x01, 0, 0, 0, 0, 0]), Some("MQTT"));
        assert_eq!(c(Direction::Out, 40000, 9999, b"SSH-2.0-"), Some("SSH"), "payload beats an unknown port");
        assert_eq!(c(Direction::Out, 40000, 80, b"SSH-2.0-"), Some("SSH"), "payload beats the port");
        assert_eq!(classify(Transport::Udp, Direction::Out, 5000, 53, b""), Some("DNS"));
        assert_eq!(classify(Transport::Udp, Direction::Out, 5000, 9, b"GET / HT"), None, "no payload guess on UDP");
        assert_eq!(classify(Transport::Icmp, Direction::Out, 0, 0, b""), None);
    }
}
