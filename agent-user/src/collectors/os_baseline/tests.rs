use std::collections::BTreeMap;

use super::*;
use crate::config::Config;

fn no_firewall() -> firewall::Reading {
    firewall::Reading::default()
}

#[test]
fn the_table_is_well_formed() {
    assert!(CHECKS.len() >= 40, "{} checks", CHECKS.len());
    let mut numbers: Vec<&str> = CHECKS.iter().map(|c| c.number).collect();
    numbers.sort();
    numbers.dedup();
    assert_eq!(numbers.len(), CHECKS.len(), "CIS numbers are unique");
    for c in CHECKS {
        assert!(!c.procedures.is_empty(), "{}", c.number);
        assert!(
            c.group.bytes().all(|b| b.is_ascii_alphanumeric()),
            "{}: group {:?} goes in check ids",
            c.number,
            c.group
        );
        for p in c.procedures {
            if let Procedure::FileRegex { pattern, .. } = p {
                regex::Regex::new(pattern).unwrap();
            }
        }
    }
}

/// A host root built by a test: files, modes and links that git could not
/// keep (modes, owners, loops).
struct Root(crate::hostfs::tests::tempdir::Dir);

impl Root {
    fn new() -> Root {
        Root(crate::hostfs::tests::tempdir::Dir::new("os-baseline"))
    }

    fn file(self, path: &str, text: &str) -> Root {
        let p = self.0 .0.join(path.trim_start_matches('/'));
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, text).unwrap();
        self
    }

    fn mode(self, path: &str, mode: u32) -> Root {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(self.0 .0.join(path.trim_start_matches('/')), std::fs::Permissions::from_mode(mode))
            .unwrap();
        self
    }

    fn link(self, path: &str, target: &str) -> Root {
        let p = self.0 .0.join(path.trim_start_matches('/'));
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::os::unix::fs::symlink(target, p).unwrap();
        self
    }

    fn fs(&self) -> HostFs {
        HostFs::new(&self.0 .0)
    }

    fn outcomes(&self) -> BTreeMap<&'static str, Outcome> {
        let fs = self.fs();
        let host = Host::new(&fs, no_firewall);
        evaluate(&host, &[], &[]).into_iter().map(|(c, o)| (c.number, o)).collect()
    }

    fn outcome(&self, number: &str) -> Outcome {
        self.outcomes().remove(number).unwrap_or_else(|| panic!("no check {number}"))
    }

    fn take(&self, config: &Config) -> Taken {
        OsBaseline { firewall: no_firewall }.take(&Context::new(&self.fs(), config))
    }
}

fn fail(s: &str) -> Outcome {
    Outcome::Fail(s.into())
}

const SSHD_NUMBERS: [&str; 11] =
    ["5.1.9", "5.1.10", "5.1.11", "5.1.13", "5.1.14", "5.1.16", "5.1.17", "5.1.19", "5.1.20", "5.1.21", "5.1.22"];

#[test]
fn sshd_permit_root_login_yes_in_the_file_or_an_include_fails_naming_the_line() {
    let r = Root::new().file("/etc/ssh/sshd_config", "# Debian's\nPermitRootLogin yes\n");
    assert_eq!(r.outcome("5.1.20"), fail("PermitRootLogin yes (/etc/ssh/sshd_config line 2), expected no"));
    // Debian's layout: Include first, so the included file's value wins.
    let r = Root::new()
        .file("/etc/ssh/sshd_config", "Include /etc/ssh/sshd_config.d/*.conf\nPermitRootLogin no\nMaxAuthTries 3\n")
        .file("/etc/ssh/sshd_config.d/10-cloud.conf", "\n\npermitrootlogin=yes\n")
        .file("/etc/ssh/sshd_config.d/20-x.conf.disabled", "MaxAuthTries 9\n");
    assert_eq!(
        r.outcome("5.1.20"),
        fail("PermitRootLogin yes (/etc/ssh/sshd_config.d/10-cloud.conf line 3), expected no")
    );
    assert_eq!(r.outcome("5.1.16"), Outcome::Pass, "a file the glob does not match is not read");
    // Relative Include paths are under /etc/ssh.
    let r = Root::new().file("/etc/ssh/sshd_config", "Include extra\n").file("/etc/ssh/extra", "PermitRootLogin no\n");
    assert_eq!(r.outcome("5.1.20"), Outcome::Pass);
}

#[test]
fn sshd_match_blocks_are_ignored_and_defaults_are_openssh_s() {
    let r = Root::new().file(
        "/etc/ssh/sshd_config",
        "PermitRootLogin no\nUsePAM yes\nMatch User backup\n  PermitRootLogin yes\n  MaxAuthTries 2\n",
    );
    let o = r.outcomes();
    assert_eq!(o["5.1.20"], Outcome::Pass, "a Match block's value is not the global one");
    assert_eq!(o["5.1.16"], fail("MaxAuthTries 6 (OpenSSH's default), expected 1 to 4"));
    assert_eq!(o["5.1.13"], fail("LoginGraceTime 120 (OpenSSH's default), expected 1 to 60"));
    for n in ["5.1.9", "5.1.10", "5.1.11", "5.1.14", "5.1.17", "5.1.19", "5.1.21", "5.1.22"] {
        assert_eq!(o[n], Outcome::Pass, "{n}");
    }
    let r = Root::new().file("/etc/ssh/sshd_config", "LoginGraceTime 1m1s\nMaxAuthTries 4\n");
    assert_eq!(r.outcome("5.1.13"), fail("LoginGraceTime 1m1s (/etc/ssh/sshd_config line 1), expected 1 to 60"));
    assert_eq!(Root::new().file("/etc/ssh/sshd_config", "LoginGraceTime 1m\n").outcome("5.1.13"), Outcome::Pass);
    assert_eq!(r.outcome("5.1.16"), Outcome::Pass);
    assert_eq!(Root::new().file("/etc/ssh/sshd_config", "LoginGraceTime 45s\n").outcome("5.1.13"), Outcome::Pass);
}

#[test]
fn an_unreadable_or_directory_sshd_config_is_an_error_and_none_does_not_apply() {
    let dir = Root::new().file("/etc/ssh/sshd_config/oops", "");
    let looped = Root::new().link("/etc/ssh/sshd_config", "sshd_config");
    for (r, why) in [(dir, "Is a directory"), (looped, "too many levels of symbolic links")] {
        let o = r.outcomes();
        for n in SSHD_NUMBERS {
            assert!(
                matches!(&o[n], Outcome::Error(e) if e.contains("/etc/ssh/sshd_config") && e.contains(why)),
                "{n}: {:?}",
                o[n]
            );
        }
        let f = r.take(&Config::default());
        let errors: Vec<&crate::collectors::Item> = f
            .items
            .iter()
            .filter(|i| i.payload["check_result"] == "Error" && i.payload["group"] == "SshServer")
            .collect();
        assert_eq!(errors.len(), SSHD_NUMBERS.len() + usize::from(why != "Is a directory"));
        assert!(errors.iter().all(|i| i.payload["reason"].is_null() && i.payload["error"].is_string()));
    }
    let o = Root::new().file("/etc/passwd", "root:x:0:0::/root:/bin/sh\n").outcomes();
    for n in SSHD_NUMBERS.iter().chain(&["5.1.1"]) {
        assert_eq!(o[n], Outcome::NotApplicable, "no sshd_config, no sshd: {n}");
    }
}

const PASSWD: &str = "root:x:0:0:root:/root:/bin/bash
daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin
sync:x:4:65534:sync:/bin:/bin/sync
toor:x:0:0::/root:/bin/sh
www:x:33:33::/var/www:/bin/sh
alice:x:1000:1000::/home/alice:/bin/bash
";
const GROUP: &str = "root:x:0:
daemon:x:1:
www:x:33:
shadow:x:42:
alice:x:1000:
";
const SHADOW: &str = "root:*:19000:0:99999:7:::
daemon:*:19000:0:99999:7:::
sync:*:19000:0:99999:7:::
toor:$6$salt$hash:19000:0:99999:7:::
www:*:19000:0:99999:7:::
alice:$y$j9T$salt$hash:19000:0:99999:7:::
";

fn accounts_root(passwd: &str, group: &str, shadow: &str) -> Root {
    Root::new().file("/etc/passwd", passwd).file("/etc/group", group).file("/etc/shadow", shadow)
}

#[test]
fn a_second_uid_0_account_and_other_account_findings() {
    let o = accounts_root(PASSWD, GROUP, SHADOW).outcomes();
    assert_eq!(o["5.4.2.1"], fail("toor has uid 0 (/etc/passwd line 4)"));
    assert_eq!(o["5.4.2.2"], fail("toor has primary gid 0 (/etc/passwd line 4)"), "sync is allowed");
    assert_eq!(
        o["5.4.2.7"],
        fail("toor (uid 0) has shell \"/bin/sh\" (/etc/passwd line 4); www (uid 33) has shell \"/bin/sh\" (/etc/passwd line 5)")
    );
    assert_eq!(o["7.2.5"], fail("uid 0 on /etc/passwd lines 1, 4"));
    assert_eq!(o["7.2.3"], fail("sync's gid 65534 is not in /etc/group (/etc/passwd line 3)"));
    for n in ["5.4.2.3", "7.2.1", "7.2.2", "7.2.4", "7.2.6", "7.2.7", "7.2.8"] {
        assert_eq!(o[n], Outcome::Pass, "{n}");
    }
    // The other findings, on a root that has each.
    let passwd = format!("{PASSWD}alice:x:1001:42::/home/a2:/bin/sh\nold:abcdefghijklm:1002:1000::/:/bin/sh\n");
    let group = format!("{GROUP}wheel:x:0:\nalice:x:1001:\nshadow:x:43:bob,carol\n");
    let shadow = format!("{SHADOW}nopw::19000::::::\n");
    let o = accounts_root(&passwd, &group, &shadow).outcomes();
    assert_eq!(o["5.4.2.3"], fail("group wheel has gid 0 (/etc/group line 6)"));
    assert_eq!(o["7.2.1"], fail("old has no shadowed password (/etc/passwd line 8)"));
    assert_eq!(o["7.2.2"], fail("nopw has an empty password (/etc/shadow line 7)"));
    assert_eq!(o["7.2.4"], fail("alice's primary group is shadow (/etc/passwd line 7)"), "the first shadow group");
    assert_eq!(o["7.2.7"], fail("user name alice on /etc/passwd lines 6, 7"));
    assert_eq!(o["7.2.6"], fail("gid 0 on /etc/group lines 1, 6"));
    assert_eq!(
        o["7.2.8"],
        fail("group name shadow on /etc/group lines 4, 8; group name alice on /etc/group lines 5, 7")
    );
    // No passwd: every account check is an error, not a pass.
    let o = Root::new().outcomes();
    assert!(matches!(&o["5.4.2.1"], Outcome::Error(e) if e == "/etc/passwd: not found"), "{:?}", o["5.4.2.1"]);
}

#[test]
fn wrong_permissions_on_shadow_fail_with_the_mode_found() {
    // The owner is whoever runs the test: root under the privileged tier,
    // a user otherwise; the group is made the shadow group either way.
    let (uid, gid) = (unsafe { libc::geteuid() }, unsafe { libc::getegid() });
    let group = format!("root:x:0:\nshadow:x:{gid}:\n");
    let owner = if uid == 0 { String::new() } else { format!(", owner uid {uid}, expected root") };
    let r = accounts_root(PASSWD, &group, SHADOW).mode("/etc/shadow", 0o644);
    assert_eq!(r.outcome("7.1.5"), Outcome::Fail(format!("/etc/shadow: mode 0644, expected 0640 or stricter{owner}")));
    let r = r.mode("/etc/shadow", 0o640);
    let expected = if uid == 0 { Outcome::Pass } else { Outcome::Fail(format!("/etc/shadow: {}", &owner[2..])) };
    assert_eq!(r.outcome("7.1.5"), expected);
    // A group that is neither root nor shadow.
    let r = accounts_root(PASSWD, "root:x:0:\n", SHADOW).mode("/etc/shadow", 0o600);
    if gid != 0 {
        assert!(
            matches!(r.outcome("7.1.5"), Outcome::Fail(f) if f.ends_with(&format!("group gid {gid}, expected root or shadow")))
        );
    }
    assert_eq!(r.outcome("7.1.6"), Outcome::NotApplicable, "no /etc/shadow-");
}

fn proc_sys(r: Root, keys: &[(&str, &str)]) -> Root {
    keys.iter().fold(r, |r, (k, v)| r.file(&format!("/proc/sys/{}", k.replace('.', "/")), &format!("{v}\n")))
}

const REDIRECTS: [&str; 4] = [
    "net.ipv4.conf.all.accept_redirects",
    "net.ipv4.conf.default.accept_redirects",
    "net.ipv6.conf.all.accept_redirects",
    "net.ipv6.conf.default.accept_redirects",
];

#[test]
fn sysctl_values_each_key_named_and_absent_keys_do_not_apply() {
    let zero: Vec<(&str, &str)> = REDIRECTS.iter().map(|k| (*k, "0")).collect();
    assert_eq!(proc_sys(Root::new(), &zero).outcome("3.3.5"), Outcome::Pass);
    let mut one = zero.clone();
    one[0].1 = "1";
    assert_eq!(
        proc_sys(Root::new(), &one).outcome("3.3.5"),
        fail("net.ipv4.conf.all.accept_redirects = 1 (/proc/sys/net/ipv4/conf/all/accept_redirects), expected 0")
    );
    // No IPv6: its keys do not apply, the IPv4 ones still do.
    assert_eq!(proc_sys(Root::new(), &zero[..2]).outcome("3.3.5"), Outcome::Pass);
    assert_eq!(Root::new().outcome("3.3.5"), Outcome::NotApplicable);
    // Ranges, and values with inner blanks.
    assert_eq!(
        proc_sys(Root::new(), &[("kernel.yama.ptrace_scope", "0")]).outcome("1.5.2"),
        fail("kernel.yama.ptrace_scope = 0 (/proc/sys/kernel/yama/ptrace_scope), expected 1 to 3")
    );
    assert_eq!(proc_sys(Root::new(), &[("kernel.yama.ptrace_scope", "2")]).outcome("1.5.2"), Outcome::Pass);
    assert_eq!(
        proc_sys(Root::new(), &[("kernel.randomize_va_space", "x")]).outcome("1.5.1"),
        fail("kernel.randomize_va_space = x (/proc/sys/kernel/randomize_va_space), expected 2")
    );
}

#[test]
fn core_dumps_need_the_limit_and_the_sysctl() {
    let r = proc_sys(Root::new(), &[("fs.suid_dumpable", "0")])
        .file("/etc/security/limits.d/90-core.conf", "# x\n*   hard   core   0\n");
    assert_eq!(r.outcome("1.5.3"), Outcome::Pass);
    let r = proc_sys(Root::new(), &[("fs.suid_dumpable", "2")]).file("/etc/security/limits.conf", "#* hard core 0\n");
    assert_eq!(
        r.outcome("1.5.3"),
        fail("fs.suid_dumpable = 2 (/proc/sys/fs/suid_dumpable), expected 0; no line matches ^\\s*\\*\\s+hard\\s+core\\s+0\\b in /etc/security/limits.conf, /etc/security/limits.d")
    );
}

#[test]
fn pam_nullok_lines_are_named() {
    let r = Root::new()
        .file("/etc/pam.d/common-auth", "# pam_unix.so nullok\nauth [success=1 default=ignore] pam_unix.so nullok\n")
        .file("/etc/pam.d/common-password", "password [success=1] pam_unix.so obscure yescrypt\n");
    assert_eq!(
        r.outcome("5.3.3.4.1"),
        fail("/etc/pam.d/common-auth line 2: auth [success=1 default=ignore] pam_unix.so nullok")
    );
    assert_eq!(Root::new().outcome("5.3.3.4.1"), Outcome::NotApplicable, "no PAM");
    let r = Root::new().file("/etc/pam.d/common-auth", "auth required pam_unix.so\n");
    assert_eq!(r.outcome("5.3.3.4.1"), Outcome::Pass);
}

#[test]
fn mount_options_of_the_visible_mount() {
    let mounts = "proc /proc proc rw 0 0\ntmpfs /tmp tmpfs rw,nosuid,nodev 0 0\n";
    let r = Root::new().file("/proc/1/mounts", mounts);
    let o = r.outcomes();
    assert_eq!((&o["1.1.2.1.2"], &o["1.1.2.1.3"]), (&Outcome::Pass, &Outcome::Pass));
    assert_eq!(o["1.1.2.1.4"], fail("/tmp mounted without noexec: options rw,nosuid,nodev (/proc/1/mounts line 2)"));
    assert_eq!(o["1.1.2.2.2"], Outcome::NotApplicable, "no separate /dev/shm");
    // The agent's own table when pid 1's is not visible.
    let r = Root::new().file("/proc/self/mounts", "tmpfs /dev/shm tmpfs rw,nosuid,nodev,noexec 0 0\n");
    assert_eq!(r.outcome("1.1.2.2.4"), Outcome::Pass);
    let r = Root::new().file("/proc/self/mounts", "tmpfs /dev/shm tmpfs rw 0 0\n");
    assert_eq!(r.outcome("1.1.2.2.4"), fail("/dev/shm mounted without noexec: options rw (/proc/self/mounts line 1)"));
}

#[test]
fn kernel_modules_install_blacklist_loaded_and_unavailable() {
    let release = "6.1.0-test";
    let r = Root::new()
        .file("/proc/sys/kernel/osrelease", &format!("{release}\n"))
        .file(
            &format!("/lib/modules/{release}/modules.dep"),
            "kernel/fs/cramfs/cramfs.ko.xz:\nkernel/fs/hfs/hfs.ko.xz:\nkernel/fs/hfsplus/hfsplus.ko.xz: kernel/lib/x.ko\nkernel/fs/jffs2/jffs2.ko:\n",
        )
        .file(&format!("/lib/modules/{release}/modules.builtin"), "kernel/fs/hfsplus/hfsplus.ko\n")
        .file("/etc/modprobe.d/cis.conf", "install cramfs /bin/false\nblacklist cramfs\ninstall hfs /bin/true\ninstall jffs2 /bin/false\nblacklist jffs2\n")
        // Hidden by /etc/modprobe.d/cis.conf: same name, later directory.
        .file("/lib/modprobe.d/cis.conf", "blacklist hfs\n")
        .file("/proc/modules", "ext4 1 0 - Live 0x0\njffs2 1 0 - Live 0x0\n");
    let o = r.outcomes();
    assert_eq!(o["1.1.1.1"], Outcome::Pass);
    assert_eq!(o["1.1.1.2"], Outcome::NotApplicable, "this kernel has no freevxfs");
    assert_eq!(o["1.1.1.3"], fail("no `blacklist hfs` in modprobe.d"));
    assert_eq!(
        o["1.1.1.4"],
        fail(&format!("hfsplus is built into the kernel (/lib/modules/{release}/modules.builtin)"))
    );
    assert_eq!(o["1.1.1.5"], fail("jffs2 is loaded (/proc/modules line 2)"));
    // Without modules.dep, availability is unknown: the configuration is checked.
    let r = Root::new().file("/etc/modprobe.d/x.conf", "install freevxfs /sbin/modprobe --ignore-install freevxfs\n");
    assert_eq!(
        r.outcome("1.1.1.2"),
        fail("install freevxfs /sbin/modprobe --ignore-install freevxfs (/etc/modprobe.d/x.conf line 1) does not disable it, no `blacklist freevxfs` in modprobe.d")
    );
}

const DPKG: &str = "Package: rpcbind
Status: install ok installed
Maintainer: Debian <d@example.org>
Architecture: amd64
Version: 1.2.6-6+b1

Package: telnet
Status: deinstall ok config-files
Architecture: amd64
Version: 0.17+2.4-2

Package: snmpd
Status: install ok installed
Architecture: amd64
Version: 5.9.3
";

#[test]
fn services_packages_units_and_ports() {
    let tcp = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:006F 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1001 1 0000000000000000 100 0 0 10 0
   1: 0100007F:006F 0100007F:A000 01 00000000:00000000 00:00000000 00000000     0        0 1002 1 0000000000000000 100 0 0 10 0
";
    let enabled = "/etc/systemd/system/multi-user.target.wants/snmpd.service";
    let r = Root::new()
        .file("/var/lib/dpkg/status", DPKG)
        .file("/proc/1/net/tcp", tcp)
        .file("/lib/systemd/system/snmpd.service", "[Unit]\n")
        .link(enabled, "/lib/systemd/system/snmpd.service");
    let o = r.outcomes();
    assert_eq!(o["2.1.12"], fail("rpcbind 1.2.6-6+b1 installed (dpkg); TCP 0.0.0.0:111 listening (/proc/1/net/tcp)"));
    assert_eq!(o["2.1.15"], fail(&format!("snmpd 5.9.3 installed (dpkg); snmpd.service enabled ({enabled})")));
    assert_eq!(o["2.2.4"], Outcome::Pass, "telnet's config files are left, it is not installed");
    // Installed (another package may need it) but masked, or only
    // disabled, and not listening: not in use, as CIS allows.
    let masked = Root::new()
        .file("/var/lib/dpkg/status", DPKG)
        .file("/lib/systemd/system/snmpd.service", "[Unit]\n")
        .link(enabled, "/lib/systemd/system/snmpd.service")
        .link("/etc/systemd/system/snmpd.service", "/dev/null");
    assert_eq!(masked.outcome("2.1.15"), Outcome::Pass);
    let disabled = Root::new().file("/var/lib/dpkg/status", DPKG).file("/lib/systemd/system/snmpd.service", "[Unit]\n");
    assert_eq!(disabled.outcome("2.1.15"), Outcome::Pass);
    assert_eq!(disabled.outcome("2.1.12"), Outcome::Pass, "rpcbind installed, no unit file, not listening");
    // A SysV script without a native unit: its S link in a runlevel enables it.
    let sysv = Root::new()
        .file("/var/lib/dpkg/status", DPKG)
        .file("/etc/init.d/snmpd", "#!/bin/sh\n")
        .link("/etc/rc2.d/S01snmpd", "../init.d/snmpd")
        .link("/etc/rc0.d/K01snmpd", "../init.d/snmpd");
    assert_eq!(sysv.outcome("2.1.15"), fail("snmpd 5.9.3 installed (dpkg); snmpd enabled (/etc/rc2.d/S01snmpd)"));
    // A socket unit enabled with no package database: the unit decides.
    let socket = "/etc/systemd/system/sockets.target.wants/rpcbind.socket";
    let r = Root::new()
        .file("/lib/systemd/system/rpcbind.socket", "[Socket]\n")
        .link(socket, "/lib/systemd/system/rpcbind.socket");
    assert_eq!(r.outcome("2.1.12"), fail(&format!("rpcbind.socket enabled ({socket})")));
    // No package database: packages do not apply; a port alone still fails.
    let o = Root::new().file("/proc/1/net/tcp", tcp).outcomes();
    assert_eq!(o["2.1.12"], fail("TCP 0.0.0.0:111 listening (/proc/1/net/tcp)"));
    assert_eq!(o["2.2.4"], Outcome::NotApplicable);
}

#[test]
fn login_defs_values() {
    let r = Root::new().file("/etc/login.defs", "PASS_MAX_DAYS\t99999\nENCRYPT_METHOD YESCRYPT\n");
    assert_eq!(r.outcome("5.4.1.1"), fail("PASS_MAX_DAYS 99999 (/etc/login.defs line 1), expected 1 to 365"));
    assert_eq!(r.outcome("5.4.1.4"), Outcome::Pass);
    assert_eq!(
        Root::new().outcome("5.4.1.4"),
        fail("ENCRYPT_METHOD not set in /etc/login.defs, expected one of SHA512, YESCRYPT")
    );
    // UID_MIN moves the line between system and user accounts.
    let r = accounts_root(PASSWD, GROUP, SHADOW).file("/etc/login.defs", "UID_MIN 30\n");
    assert_eq!(r.outcome("5.4.2.7"), fail("toor (uid 0) has shell \"/bin/sh\" (/etc/passwd line 4)"));
}

fn chain(family: &str, hook: &str, policy: &str) -> firewall::ChainRules {
    firewall::ChainRules {
        info: firewall::ChainInfo {
            backend: if family == "inet" { "nftables" } else { "iptables-legacy" },
            family: family.into(),
            table: "filter".into(),
            chain: hook.to_uppercase(),
            hook: Some(hook.into()),
            chain_priority: Some(0),
            enabled: true,
        },
        rules: vec![],
        policy: Some((policy.into(), None)),
    }
}

#[test]
fn firewall_default_deny_per_hook_and_ip_version() {
    let reading = |chains| firewall::Reading { chains, failures: vec![] };
    let all = reading(vec![
        chain("inet", "input", "drop"),
        chain("inet", "forward", "drop"),
        chain("inet", "output", "drop"),
    ]);
    assert_eq!(default_deny(&all), Outcome::Pass);
    let r = reading(vec![
        chain("inet", "input", "drop"),
        chain("inet", "forward", "drop"),
        chain("ip", "output", "drop"),
        chain("ip6", "output", "accept"),
    ]);
    assert_eq!(
        default_deny(&r),
        fail("no default deny at IPv6 output: iptables-legacy ip6 filter OUTPUT policy accept")
    );
    // An accept chain next to a drop chain at one hook: the drop decides.
    let mut r = all;
    r.chains.push(chain("ip", "input", "accept"));
    assert_eq!(default_deny(&r), Outcome::Pass);
    let nothing =
        firewall::Reading { chains: vec![], failures: vec![("netlink".into(), "Operation not permitted".into())] };
    assert_eq!(default_deny(&nothing), Outcome::Error("netlink: Operation not permitted".into()));
}

#[test]
fn events_check_ids_and_disabling() {
    let r = accounts_root(PASSWD, GROUP, SHADOW)
        .file("/etc/os-release", "ID=debian\nVERSION_ID=\"12\"\n")
        .file("/etc/ssh/sshd_config", "PermitRootLogin yes\n");
    let t = r.take(&Config::default());
    let by_id: BTreeMap<&str, &serde_json::Value> = t.items.iter().map(|i| (i.key.as_str(), &i.payload)).collect();
    let p = by_id["CIS-debian-12-UserAccounts-5.4.2.1"];
    assert_eq!(
        *p,
        serde_json::json!({
            "check_id": "CIS-debian-12-UserAccounts-5.4.2.1", "check_result": "Fail", "error": null,
            "title": "Ensure root is the only UID 0 account",
            "description": "Every uid 0 account is root under another name and password.",
            "remediation": "Remove the other uid 0 accounts or give them their own uid (`usermod -u`).",
            "severity": "Critical", "group": "UserAccounts", "cis_number": "5.4.2.1",
            "reason": "toor has uid 0 (/etc/passwd line 4)",
        })
    );
    assert!(by_id.contains_key("CIS-debian-12-SshServer-5.1.20"));
    assert!(t.items.iter().all(|i| i.payload["check_result"] == "Fail" || i.payload["check_result"] == "Error"));
    // Disabling a group or a check removes exactly its events.
    let mut c = Config::default();
    c.baseline.groups_disabled = vec!["SshServer".into()];
    c.baseline.checks_disabled = vec!["5.4.2.1".into()];
    let t2 = r.take(&c);
    let mut left: Vec<&str> = t2.items.iter().map(|i| i.key.as_str()).collect();
    left.sort();
    let expected: Vec<&str> = by_id
        .keys()
        .copied()
        .filter(|k| !k.contains("-SshServer-") && *k != "CIS-debian-12-UserAccounts-5.4.2.1")
        .collect();
    assert_eq!(left, expected);
    assert!(left.len() < by_id.len() - 1);
}

#[test]
fn check_id_prefixes() {
    let d = |id: &str, v: Option<&str>| sbom::Distro { id: Some(id.into()), version_id: v.map(String::from) };
    assert_eq!(id_prefix(&d("debian", Some("12"))), "CIS-debian-12");
    assert_eq!(id_prefix(&d("debian", Some("13.1"))), "CIS-debian-13");
    assert_eq!(id_prefix(&d("debian", Some("11"))), "CIS-linux", "Debian 11's benchmark numbers differently");
    assert_eq!(id_prefix(&d("debian", None)), "CIS-linux");
    assert_eq!(id_prefix(&d("ubuntu", Some("24.04"))), "CIS-linux");
    assert_eq!(id_prefix(&sbom::Distro::default()), "CIS-linux");
}

#[test]
fn unknown_group_and_check_names_are_refused_naming_them() {
    use crate::config::RawConfig;
    let parse = |t: &str| RawConfig::parse(t, "f").unwrap().resolve(&Config::default(), "f");
    let c = parse(r#"{"baselineGroupsDisabled":["SshServer","Firewall"],"baselineChecksDisabled":["3.3.5"]}"#).unwrap();
    assert_eq!(c.baseline.groups_disabled, ["SshServer", "Firewall"]);
    assert_eq!(c.baseline.checks_disabled, ["3.3.5"]);
    let e = parse(r#"{"baselineGroupsDisabled":["Ssh","SshServer"],"baselineChecksDisabled":["9.9"]}"#).unwrap_err();
    assert_eq!(
        e.to_string(),
        "invalid configuration in f: 2 problems: baselineGroupsDisabled: unknown groups: \"Ssh\"; baselineChecksDisabled: unknown checks: \"9.9\""
    );
}

/// The README's check table, as the table makes it.
fn readme_table() -> String {
    let mut s = String::from("| CIS | Group | Title | Severity |\n|---|---|---|---|\n");
    for c in CHECKS {
        s.push_str(&format!("| {} | {} | {} | {:?} |\n", c.number, c.group, c.title, c.severity));
    }
    s
}

#[test]
fn the_readme_lists_every_check() {
    let readme = include_str!("../../../../README.md");
    let table = readme_table();
    if !readme.contains(&table) {
        panic!("README.md's OSBaseline check table is not the table's:\n{table}");
    }
    let names: Vec<String> = groups().iter().map(|g| format!("`{g}`")).collect();
    assert!(readme.contains(&format!("OSBaseline groups not run: {} (", names.join(", "))), "README's group list");
}

#[test]
fn a_desired_configuration_with_an_unknown_check_is_refused_whole() {
    use crate::config::RawConfig;
    let e = crate::agent::desired_config(&RawConfig::default(), br#"{"baselineChecksDisabled":["3.3.5","1.2.3.4"]}"#)
        .unwrap_err();
    assert_eq!(e.errors.len(), 1);
    assert_eq!(
        (e.errors[0].field.as_str(), e.errors[0].reason.as_str()),
        ("baselineChecksDisabled", "unknown checks: \"1.2.3.4\"")
    );
    let ok = crate::agent::desired_config(&RawConfig::default(), br#"{"baselineChecksDisabled":["3.3.5"]}"#).unwrap();
    assert_eq!(ok.baseline.checks_disabled, ["3.3.5"]);
}
