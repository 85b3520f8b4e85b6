//! FirewallConfiguration's kernel parsers: an nf_tables netlink dump and
//! an x_tables (IPv4 and IPv6) entries blob. The first byte picks the
//! parser, so one corpus seeds all three; whatever parses must also map to
//! rules without a panic.
use agent_user::collectors::firewall::{nftables, xtables};

pub fn check(data: &[u8]) {
    let Some((&which, rest)) = data.split_first() else { return };
    match which % 3 {
        0 => {
            if let Ok(dump) = nftables::parse_dump(rest) {
                let _ = nftables::chains(&dump.objects);
            }
        }
        1 => {
            let _ = xtables::parse_ipv4_table(rest);
        }
        _ => {
            let _ = xtables::parse_ipv6_table(rest);
        }
    }
}
