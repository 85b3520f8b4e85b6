//! The pure parsers of host files, each given the same bytes. A collector
//! that adds a parser adds its line to `PARSERS` and its seeds to
//! `corpus/hostfs_parsers/`.
use agent_user::{
    collectors::{
        connected_hardware::hotplug,
        ids, local_users,
        login::{audit, pam, syslog, utmp},
        os_baseline, sbom,
        system_information::netlink,
    },
    enrich::parse_passwd,
    listeners,
};

/// Each parser with the properties its result must have.
const PARSERS: &[(&str, crate::Check)] = &[
    ("/proc/net/tcp", |d| {
        let text = String::from_utf8_lossy(d);
        let found = listeners::parse_tcp_table(&text);
        assert!(found.len() <= text.lines().count());
        assert!(found.iter().all(|l| l.inode != 0), "inode 0 is never a listener");
    }),
    ("/proc/PID/status", |d| {
        let _ = listeners::parse_status(&String::from_utf8_lossy(d));
    }),
    ("/proc/PID/fd link", |d| {
        let _ = listeners::socket_inode(d);
    }),
    ("/etc/passwd", |d| {
        let text = String::from_utf8_lossy(d);
        for name in parse_passwd(&text).values() {
            assert!(!name.is_empty() && !name.contains([':', '\n']), "user name {name:?}");
        }
    }),
    ("/etc/passwd, /etc/group, /etc/shadow (LocalUsers)", |d| {
        let text = String::from_utf8_lossy(d);
        let (p, g, s) =
            (local_users::parse_passwd(&text), local_users::parse_group(&text), local_users::parse_shadow(&text));
        let _ = local_users::local_users(&p.entries, &g.entries, Some(&s.entries));
    }),
    ("/var/lib/dpkg/status, opkg status, apk installed (SBoM)", |d| {
        let text = String::from_utf8_lossy(d);
        let distro = sbom::Distro::default();
        let _ =
            (sbom::dpkg::parse(&text, &distro), sbom::opkg::parse(&text, &distro), sbom::apk::parse(&text, &distro));
    }),
    ("rpm header blob (SBoM)", |d| {
        let _ = sbom::rpm::package(d, &sbom::Distro::default());
    }),
    ("rtnetlink address dump (SystemInformation)", |d| {
        let mut out = netlink::Addresses::default();
        let _ = netlink::parse_dump(d, 1, &mut out);
    }),
    ("audit record (Login audit source)", |d| {
        // The record type is the first two bytes, the text the rest.
        let kind = d.first().map_or(audit::USER_AUTH, |&b| audit::USER_AUTH + u16::from(b % 8));
        if let Some(e) = audit::login_event(kind, &String::from_utf8_lossy(d.get(1..).unwrap_or_default())) {
            assert!(e.user_name.len() <= agent_user::collectors::login::USER_NAME_MAX);
            assert!(!e.remote_address.is_empty(), "a local login is 127.0.0.1, never empty");
        }
        for m in agent_user::netlink::messages(d).flatten() {
            assert!(m.at + 16 + m.body.len() <= d.len());
        }
    }),
    ("libpam maps lines (Login pam source)", |d| {
        let text = String::from_utf8_lossy(d);
        for (range, path) in pam::mapped_libpam(&text) {
            assert!(text.contains(range) && text.contains(path));
        }
    }),
    ("kernel uevent (ConnectedHardware hotplug)", |d| {
        let _ = hotplug::parse_uevent(d);
    }),
    ("sshd_config with Include files (OSBaseline)", |d| {
        let text = String::from_utf8_lossy(d);
        // Every Include reads the same bytes again: the depth bound must end it.
        let mut include = |p: &str| Ok(vec![(p.to_string(), text.to_string())]);
        if let Ok(e) = os_baseline::sshd::effective("/etc/ssh/sshd_config", &text, &mut include) {
            assert!(e.keys().all(|k| !k.is_empty() && k.chars().all(|c| !c.is_whitespace() && c != '=')));
        }
        let _ = os_baseline::sshd::glob_match(d, b"sshd_config.d/10-x.conf");
        let _ = os_baseline::sshd::seconds(&text);
    }),
    ("modprobe.d, login.defs, /proc/PID/mounts (OSBaseline)", |d| {
        let text = String::from_utf8_lossy(d);
        use os_baseline::parsers::Modprobe;
        for m in os_baseline::parsers::parse_modprobe(&text) {
            let (Modprobe::Install { module, .. } | Modprobe::Blacklist { module, .. }) = m;
            assert!(!module.contains('-'), "names are normalized: {module:?}");
        }
        let defs = os_baseline::parsers::parse_login_defs(&text);
        assert!(defs.len() <= text.lines().count());
        let mounts = os_baseline::parsers::parse_mounts(&text);
        assert!(mounts.iter().all(|m| m.line >= 1 && m.line <= text.lines().count()));
    }),
    ("wtmp / btmp, both layouts (Login)", |d| {
        for layout in [utmp::LAYOUT_384, utmp::LAYOUT_400] {
            let (records, rest) = utmp::parse(d, layout);
            assert_eq!(records.len() * layout.size + rest, d.len());
            let mut sessions = utmp::Sessions::default();
            for r in records {
                assert!(r.user.len() <= 128 && r.line.len() <= 128 && r.remote.len() <= 1024, "{r:?}");
                assert!(!r.user.contains(|c: char| c.is_control()), "escaped: {r:?}");
                let _ = utmp::Sessions::btmp(r.clone());
                let _ = sessions.wtmp(r, false);
            }
        }
    }),
    ("auth.log lines (Login syslog)", |d| {
        for line in String::from_utf8_lossy(d).lines() {
            if let Some(e) = syslog::parse_line(line) {
                assert!(e.user_name.len() <= 256 && !e.user_name.contains(|c: char| c.is_control()), "{e:?}");
            }
        }
    }),
    ("pci.ids / usb.ids", |d| {
        // Raw bytes: lookups read the file a line at a time, replacing invalid UTF-8 per line.
        let n = ids::lookup(d, 0x1af4, Some(0x1000));
        assert!(n.vendor.iter().chain(&n.product).all(|s| s.len() <= 256), "{n:?}");
    }),
];

pub fn check(data: &[u8]) {
    for (_, parse) in PARSERS {
        parse(data);
    }
}
