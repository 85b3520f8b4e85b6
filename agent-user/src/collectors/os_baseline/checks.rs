//! The checks, chosen for devices from the CIS Debian Linux 12 Benchmark
//! (v1.1.0 numbering). Titles follow the benchmark's; descriptions and
//! remediations are ours, short; severities are ours, on the legacy
//! agent's scale.
use super::{
    AccountRule::*,
    Check,
    Expect::{OneOf, Range},
    Procedure::{self, *},
    Severity::*,
    Want,
};
use crate::collectors::listening_ports::Transport::{Tcp, Udp};

const MODPROBE_FIX: &str =
    "Add `install MODULE /bin/false` and `blacklist MODULE` to a file of /etc/modprobe.d, then `modprobe -r MODULE`.";

macro_rules! module {
    ($number:literal, $module:literal, $what:literal) => {
        Check {
            number: $number,
            group: "Filesystem",
            title: concat!("Ensure ", $module, " kernel module is not available"),
            description: concat!(
                "The ",
                $what,
                " file system is rarely needed on a device; an unused file system driver is attack surface for crafted media."
            ),
            remediation: MODPROBE_FIX,
            severity: Warning,
            procedures: &[ModuleDisabled { module: $module }],
        }
    };
}

macro_rules! mount {
    ($number:literal, $point:literal, $option:literal, $why:literal) => {
        Check {
            number: $number,
            group: "Filesystem",
            title: concat!("Ensure ", $option, " option set on ", $point, " partition"),
            description: concat!("When ", $point, " is a separate mount, ", $why),
            remediation: concat!(
                "Add ",
                $option,
                " to the options of ",
                $point,
                " in /etc/fstab (or its systemd mount unit) and remount it."
            ),
            severity: Warning,
            procedures: &[MountOption { mount_point: $point, option: $option }],
        }
    };
}

macro_rules! sysctl {
    ($number:literal, $severity:ident, $title:literal, $description:literal, $keys:expr, $expect:expr) => {
        Check {
            number: $number,
            group: "NetworkParameters",
            title: $title,
            description: $description,
            remediation: "Set the keys in a file of /etc/sysctl.d (e.g. 60-netipv4_sysctl.conf) and apply them with `sysctl -w`.",
            severity: $severity,
            procedures: &[Sysctl { keys: $keys, expect: $expect }],
        }
    };
}

macro_rules! service {
    ($number:literal, $title:literal, $description:literal, $packages:expr, $units:expr, $ports:expr) => {
        Check {
            number: $number,
            group: "Services",
            title: $title,
            description: $description,
            remediation: "Remove the packages (`apt purge`), or stop and mask the units (`systemctl mask --now UNIT`) where another package needs them.",
            severity: Important,
            procedures: &[ServiceNotInUse { packages: $packages, units: $units, ports: $ports }],
        }
    };
}

macro_rules! client {
    ($number:literal, $title:literal, $description:literal, $packages:expr) => {
        Check {
            number: $number,
            group: "Clients",
            title: $title,
            description: $description,
            remediation: "Remove the packages (`apt purge`).",
            severity: Important,
            procedures: &[PackageAbsent { packages: $packages }],
        }
    };
}

/// A mode written as octal digits ("644"), read at compile time.
const fn octal(s: &str) -> u32 {
    let b = s.as_bytes();
    let (mut i, mut v) = (0, 0);
    while i < b.len() {
        v = v * 8 + (b[i] - b'0') as u32;
        i += 1;
    }
    v
}

macro_rules! permissions {
    ($number:literal, $group:literal, $severity:ident, $path:literal, $mode:literal, $groups:expr, $why:literal) => {
        Check {
            number: $number,
            group: $group,
            title: concat!("Ensure permissions on ", $path, " are configured"),
            description: $why,
            remediation: concat!(
                "Make ",
                $path,
                " owned by root, with a group named in the reason (`chown`, `chgrp`), and `chmod ",
                $mode,
                " ",
                $path,
                "` (or stricter)."
            ),
            severity: $severity,
            procedures: &[FilePermissions { path: $path, mode: octal($mode), groups: $groups }],
        }
    };
}

macro_rules! sshd {
    ($number:literal, $severity:ident, $title:literal, $description:literal, $keyword:literal, $expect:expr) => {
        Check {
            number: $number,
            group: "SshServer",
            title: $title,
            description: $description,
            remediation: concat!(
                "Set `",
                $keyword,
                "` in /etc/ssh/sshd_config before any Include and Match block, then reload sshd."
            ),
            severity: $severity,
            procedures: &[SshdOption { keyword: $keyword, expect: $expect }],
        }
    };
}

macro_rules! account {
    ($number:literal, $group:literal, $severity:ident, $title:literal, $description:literal, $remediation:literal, $rule:expr) => {
        Check {
            number: $number,
            group: $group,
            title: $title,
            description: $description,
            remediation: $remediation,
            severity: $severity,
            procedures: &[Accounts($rule)],
        }
    };
}

const PAM_FILES: &[&str] =
    &["/etc/pam.d/common-auth", "/etc/pam.d/common-account", "/etc/pam.d/common-password", "/etc/pam.d/common-session"];
const ROOT: &[&str] = &["root"];
const SHADOW: &[&str] = &["root", "shadow"];
const FIREWALL: &[Procedure] = &[FirewallDefaultDeny];

pub const CHECKS: &[Check] = &[
    module!("1.1.1.1", "cramfs", "cramfs compressed ROM"),
    module!("1.1.1.2", "freevxfs", "Veritas"),
    module!("1.1.1.3", "hfs", "Apple HFS"),
    module!("1.1.1.4", "hfsplus", "Apple HFS+"),
    module!("1.1.1.5", "jffs2", "JFFS2 flash"),
    mount!("1.1.2.1.2", "/tmp", "nodev", "device files created there would give access to hardware."),
    mount!("1.1.2.1.3", "/tmp", "nosuid", "set-user-ID programs dropped there would run with their owner's rights."),
    mount!("1.1.2.1.4", "/tmp", "noexec", "programs dropped there by anyone cannot run."),
    mount!("1.1.2.2.2", "/dev/shm", "nodev", "device files created there would give access to hardware."),
    mount!("1.1.2.2.3", "/dev/shm", "nosuid", "set-user-ID programs dropped there would run with their owner's rights."),
    mount!("1.1.2.2.4", "/dev/shm", "noexec", "programs dropped in shared memory by anyone cannot run."),
    Check {
        number: "1.5.1",
        group: "ProcessHardening",
        title: "Ensure address space layout randomization is enabled",
        description: "ASLR places stacks, heaps, libraries and the vDSO at random addresses, which makes memory corruption hard to exploit.",
        remediation: "Set kernel.randomize_va_space = 2 in /etc/sysctl.d and apply it with `sysctl -w`.",
        severity: Important,
        procedures: &[Sysctl { keys: &["kernel.randomize_va_space"], expect: OneOf(&["2"]) }],
    },
    Check {
        number: "1.5.2",
        group: "ProcessHardening",
        title: "Ensure ptrace_scope is restricted",
        description: "With Yama's ptrace_scope at 1 or more, a process can trace only its descendants: a compromised process cannot read the memory of the others of its user.",
        remediation: "Set kernel.yama.ptrace_scope = 1 (or 2, 3) in /etc/sysctl.d and apply it with `sysctl -w`.",
        severity: Warning,
        procedures: &[Sysctl { keys: &["kernel.yama.ptrace_scope"], expect: Range(1, 3) }],
    },
    Check {
        number: "1.5.3",
        group: "ProcessHardening",
        title: "Ensure core dumps are restricted",
        description: "A core dump of a set-user-ID program holds what it read with its rights; a hard limit of 0 and fs.suid_dumpable = 0 keep them from being written.",
        remediation: "Add `* hard core 0` to /etc/security/limits.conf or a file of /etc/security/limits.d, and set fs.suid_dumpable = 0 in /etc/sysctl.d.",
        severity: Warning,
        procedures: &[
            Sysctl { keys: &["fs.suid_dumpable"], expect: OneOf(&["0"]) },
            FileRegex {
                paths: &["/etc/security/limits.conf", "/etc/security/limits.d"],
                pattern: r"^\s*\*\s+hard\s+core\s+0\b",
                want: Want::Present,
            },
        ],
    },
    service!("2.1.2", "Ensure avahi daemon services are not in use", "Avahi announces the device and its services by mDNS to the whole link.", &["avahi-daemon"], &["avahi-daemon.service", "avahi-daemon.socket"], &[(Udp, 5353)]),
    service!("2.1.6", "Ensure ftp server services are not in use", "FTP sends passwords and data in clear text.", &["vsftpd", "proftpd-basic", "pure-ftpd"], &["vsftpd.service", "proftpd.service", "pure-ftpd.service"], &[(Tcp, 21)]),
    service!("2.1.11", "Ensure print server services are not in use", "CUPS listens for print jobs and has a history of remote vulnerabilities.", &["cups"], &["cups.service", "cups.socket", "cups.path"], &[(Tcp, 631)]),
    service!("2.1.12", "Ensure rpcbind services are not in use", "rpcbind maps RPC services to ports for anyone who asks, and amplifies UDP floods.", &["rpcbind"], &["rpcbind.service", "rpcbind.socket"], &[(Tcp, 111), (Udp, 111)]),
    service!("2.1.14", "Ensure samba file server services are not in use", "An SMB server exposes shares and their authentication to the network.", &["samba"], &["smbd.service", "nmbd.service", "samba-ad-dc.service"], &[(Tcp, 445), (Tcp, 139)]),
    service!("2.1.15", "Ensure snmp services are not in use", "SNMP v1 and v2c authenticate with a clear-text community string and disclose the device's configuration.", &["snmpd"], &["snmpd.service"], &[(Udp, 161)]),
    service!("2.1.16", "Ensure tftp server services are not in use", "TFTP has no authentication at all: anyone may read (and often write) its files.", &["tftpd-hpa", "atftpd", "tftpd"], &["tftpd-hpa.service", "atftpd.service", "atftpd.socket"], &[(Udp, 69)]),
    service!("2.1.19", "Ensure xinetd services are not in use", "xinetd starts network services on demand, often the legacy clear-text ones.", &["xinetd"], &["xinetd.service"], &[]),
    client!("2.2.2", "Ensure rsh client is not installed", "rsh, rlogin and rcp authenticate by host name and send everything in clear text.", &["rsh-client", "rsh-redone-client"]),
    client!("2.2.4", "Ensure telnet client is not installed", "telnet sends passwords in clear text; its presence invites its use.", &["telnet", "inetutils-telnet"]),
    permissions!("2.4.1.2", "JobSchedulers", Warning, "/etc/crontab", "600", ROOT, "The system crontab runs commands as root: only root may read or change it."),
    permissions!("2.4.1.3", "JobSchedulers", Warning, "/etc/cron.hourly", "700", ROOT, "Scripts there run as root every hour: only root may list or change them."),
    permissions!("2.4.1.4", "JobSchedulers", Warning, "/etc/cron.daily", "700", ROOT, "Scripts there run as root every day: only root may list or change them."),
    permissions!("2.4.1.5", "JobSchedulers", Warning, "/etc/cron.weekly", "700", ROOT, "Scripts there run as root every week: only root may list or change them."),
    permissions!("2.4.1.6", "JobSchedulers", Warning, "/etc/cron.monthly", "700", ROOT, "Scripts there run as root every month: only root may list or change them."),
    permissions!("2.4.1.7", "JobSchedulers", Warning, "/etc/cron.d", "700", ROOT, "Crontabs there run commands as any user: only root may list or change them."),
    sysctl!("3.3.1", Important, "Ensure ip forwarding is disabled", "A device that forwards packets is a router between its networks.", &["net.ipv4.ip_forward", "net.ipv6.conf.all.forwarding"], OneOf(&["0"])),
    sysctl!("3.3.2", Warning, "Ensure packet redirect sending is disabled", "Only a router sends ICMP redirects; a host that does can be used to mislead its peers' routing.", &["net.ipv4.conf.all.send_redirects", "net.ipv4.conf.default.send_redirects"], OneOf(&["0"])),
    sysctl!("3.3.3", Informational, "Ensure bogus icmp responses are ignored", "Bogus ICMP error responses fill the kernel log.", &["net.ipv4.icmp_ignore_bogus_error_responses"], OneOf(&["1"])),
    sysctl!("3.3.4", Warning, "Ensure broadcast icmp requests are ignored", "Answering broadcast pings makes the device an amplifier of smurf attacks.", &["net.ipv4.icmp_echo_ignore_broadcasts"], OneOf(&["1"])),
    sysctl!("3.3.5", Important, "Ensure icmp redirects are not accepted", "An accepted ICMP redirect changes the routing table: anyone on the link can send the device's traffic through themselves.", &["net.ipv4.conf.all.accept_redirects", "net.ipv4.conf.default.accept_redirects", "net.ipv6.conf.all.accept_redirects", "net.ipv6.conf.default.accept_redirects"], OneOf(&["0"])),
    sysctl!("3.3.6", Warning, "Ensure secure icmp redirects are not accepted", "Secure redirects come from a listed gateway, which a spoofed packet can claim to be.", &["net.ipv4.conf.all.secure_redirects", "net.ipv4.conf.default.secure_redirects"], OneOf(&["0"])),
    sysctl!("3.3.7", Warning, "Ensure reverse path filtering is enabled", "Strict reverse path filtering drops packets whose source could not be answered on their interface: spoofed sources.", &["net.ipv4.conf.all.rp_filter", "net.ipv4.conf.default.rp_filter"], OneOf(&["1"])),
    sysctl!("3.3.8", Important, "Ensure source routed packets are not accepted", "A source-routed packet chooses its own path, around the network's filters.", &["net.ipv4.conf.all.accept_source_route", "net.ipv4.conf.default.accept_source_route", "net.ipv6.conf.all.accept_source_route", "net.ipv6.conf.default.accept_source_route"], OneOf(&["0"])),
    sysctl!("3.3.9", Informational, "Ensure suspicious packets are logged", "Logging martians (impossible source addresses) shows spoofing attempts.", &["net.ipv4.conf.all.log_martians", "net.ipv4.conf.default.log_martians"], OneOf(&["1"])),
    sysctl!("3.3.10", Important, "Ensure tcp syn cookies is enabled", "SYN cookies keep the device answering during a SYN flood.", &["net.ipv4.tcp_syncookies"], OneOf(&["1"])),
    sysctl!("3.3.11", Warning, "Ensure ipv6 router advertisements are not accepted", "Anyone on the link can send router advertisements and become the device's IPv6 gateway.", &["net.ipv6.conf.all.accept_ra", "net.ipv6.conf.default.accept_ra"], OneOf(&["0"])),
    Check {
        number: "4.3.8",
        group: "Firewall",
        title: "Ensure nftables default deny firewall policy",
        description: "Base chains at the input, forward and output hooks that drop by default let through only what a rule allows, for IPv4 and IPv6.",
        remediation: "Give the filter chains at the input, forward and output hooks `policy drop` (nftables) or `-P DROP` (iptables, ip6tables), after rules for the traffic the device needs.",
        severity: Important,
        procedures: FIREWALL,
    },
    permissions!("5.1.1", "SshServer", Important, "/etc/ssh/sshd_config", "600", ROOT, "sshd's configuration decides who logs in and how: only root may read or change it."),
    sshd!("5.1.9", Warning, "Ensure sshd GSSAPIAuthentication is disabled", "GSSAPI (Kerberos) authentication is rarely used on a device and widens what sshd parses before login.", "GSSAPIAuthentication", OneOf(&["no"])),
    sshd!("5.1.10", Important, "Ensure sshd HostbasedAuthentication is disabled", "Host-based authentication trusts the client host's word for who the user is.", "HostbasedAuthentication", OneOf(&["no"])),
    sshd!("5.1.11", Important, "Ensure sshd IgnoreRhosts is enabled", "~/.rhosts and ~/.shosts let users grant logins without a password.", "IgnoreRhosts", OneOf(&["yes"])),
    sshd!("5.1.13", Warning, "Ensure sshd LoginGraceTime is configured", "A long grace time lets unauthenticated connections hold sshd's slots.", "LoginGraceTime", Range(1, 60)),
    sshd!("5.1.14", Informational, "Ensure sshd LogLevel is configured", "INFO or VERBOSE records logins and key fingerprints; less hides them.", "LogLevel", OneOf(&["INFO", "VERBOSE"])),
    sshd!("5.1.16", Warning, "Ensure sshd MaxAuthTries is configured", "Few attempts per connection slow password guessing.", "MaxAuthTries", Range(1, 4)),
    sshd!("5.1.17", Informational, "Ensure sshd MaxSessions is configured", "Bounding sessions per connection bounds what one login can hold.", "MaxSessions", Range(1, 10)),
    sshd!("5.1.19", Critical, "Ensure sshd PermitEmptyPasswords is disabled", "An account with an empty password would log in over the network with none.", "PermitEmptyPasswords", OneOf(&["no"])),
    sshd!("5.1.20", Critical, "Ensure sshd PermitRootLogin is disabled", "Direct root logins leave no trace of who logged in and give a guessed password everything.", "PermitRootLogin", OneOf(&["no"])),
    sshd!("5.1.21", Important, "Ensure sshd PermitUserEnvironment is disabled", "Environment options in authorized_keys (LD_PRELOAD...) can bypass restrictions on a login.", "PermitUserEnvironment", OneOf(&["no"])),
    sshd!("5.1.22", Warning, "Ensure sshd UsePAM is enabled", "Without PAM, sshd skips the account and session policies (lockouts, limits) the system sets.", "UsePAM", OneOf(&["yes"])),
    Check {
        number: "5.3.3.4.1",
        group: "Pam",
        title: "Ensure pam_unix does not include nullok",
        description: "With nullok, pam_unix lets an account with an empty password log in without one.",
        remediation: "Remove nullok from the pam_unix.so lines of /etc/pam.d/common-* (with pam-auth-update on Debian).",
        severity: Important,
        procedures: &[FileRegex { paths: PAM_FILES, pattern: r"^\s*[^#\s].*\bpam_unix\.so\b.*\bnullok\b", want: Want::Absent }],
    },
    Check {
        number: "5.4.1.1",
        group: "UserAccounts",
        title: "Ensure password expiration is configured",
        description: "Passwords of new accounts should expire within a year (PASS_MAX_DAYS); Debian's default, 99999, never does.",
        remediation: "Set PASS_MAX_DAYS 365 (or less) in /etc/login.defs, and `chage --maxdays 365 USER` for existing users.",
        severity: Warning,
        procedures: &[LoginDefs { key: "PASS_MAX_DAYS", expect: Range(1, 365) }],
    },
    Check {
        number: "5.4.1.4",
        group: "UserAccounts",
        title: "Ensure strong password hashing algorithm is configured",
        description: "New passwords must be hashed with SHA-512 or yescrypt (ENCRYPT_METHOD), not MD5 or DES.",
        remediation: "Set ENCRYPT_METHOD YESCRYPT (or SHA512) in /etc/login.defs.",
        severity: Important,
        procedures: &[LoginDefs { key: "ENCRYPT_METHOD", expect: OneOf(&["SHA512", "YESCRYPT"]) }],
    },
    account!("5.4.2.1", "UserAccounts", Critical, "Ensure root is the only UID 0 account", "Every uid 0 account is root under another name and password.", "Remove the other uid 0 accounts or give them their own uid (`usermod -u`).", OnlyRootUid0),
    account!("5.4.2.2", "UserAccounts", Important, "Ensure root is the only GID 0 account", "An account whose primary group is root creates root-group files and reads what that group may.", "Give the account another primary group (`usermod -g`).", OnlyRootGid0Account),
    account!("5.4.2.3", "UserAccounts", Important, "Ensure group root is the only GID 0 group", "Another group with gid 0 is the root group under another name.", "Give the group another gid (`groupmod -g`) or remove it.", OnlyRootGroupGid0),
    account!("5.4.2.7", "UserAccounts", Warning, "Ensure system accounts do not have a valid login shell", "System accounts (uid below UID_MIN) run services; a login shell lets a service's compromise become a login.", "`usermod -s /usr/sbin/nologin ACCOUNT`.", SystemAccountsNoLoginShell),
    permissions!("7.1.1", "SystemFilePermissions", Important, "/etc/passwd", "644", ROOT, "/etc/passwd must be readable by all and writable by root only: a writable one makes anyone root."),
    permissions!("7.1.2", "SystemFilePermissions", Warning, "/etc/passwd-", "644", ROOT, "The backup of /etc/passwd holds the same data."),
    permissions!("7.1.3", "SystemFilePermissions", Important, "/etc/group", "644", ROOT, "/etc/group must be writable by root only: a writable one grants any group."),
    permissions!("7.1.4", "SystemFilePermissions", Warning, "/etc/group-", "644", ROOT, "The backup of /etc/group holds the same data."),
    permissions!("7.1.5", "SystemFilePermissions", Critical, "/etc/shadow", "640", SHADOW, "/etc/shadow holds the password hashes: readable by root and the shadow group only, or they can be cracked offline."),
    permissions!("7.1.6", "SystemFilePermissions", Important, "/etc/shadow-", "640", SHADOW, "The backup of /etc/shadow holds the same hashes."),
    permissions!("7.1.7", "SystemFilePermissions", Important, "/etc/gshadow", "640", SHADOW, "/etc/gshadow holds group passwords and administrators."),
    permissions!("7.1.8", "SystemFilePermissions", Warning, "/etc/gshadow-", "640", SHADOW, "The backup of /etc/gshadow holds the same data."),
    permissions!("7.1.9", "SystemFilePermissions", Warning, "/etc/shells", "644", ROOT, "/etc/shells decides which shells chsh and some daemons accept."),
    account!("7.2.1", "UserGroupSettings", Important, "Ensure accounts in /etc/passwd use shadowed passwords", "A hash in /etc/passwd is readable by every user.", "`pwconv` moves the hashes to /etc/shadow.", ShadowedPasswords),
    account!("7.2.2", "UserGroupSettings", Critical, "Ensure /etc/shadow password fields are not empty", "An empty password field logs in with no password where PAM allows it.", "Lock the account (`passwd -l USER`) or set a password.", NoEmptyShadowPassword),
    account!("7.2.3", "UserGroupSettings", Warning, "Ensure all groups in /etc/passwd exist in /etc/group", "A gid without a group is taken by whoever creates that group later.", "Create the group or change the user's primary group.", PasswdGroupsExist),
    account!("7.2.4", "UserGroupSettings", Important, "Ensure shadow group is empty", "Members of group shadow read every password hash.", "Remove the members from group shadow and change such primary groups.", ShadowGroupEmpty),
    account!("7.2.5", "UserGroupSettings", Important, "Ensure no duplicate UIDs exist", "Accounts sharing a uid share their files and processes.", "Give each account its own uid (`usermod -u`).", NoDuplicateUids),
    account!("7.2.6", "UserGroupSettings", Warning, "Ensure no duplicate GIDs exist", "Groups sharing a gid share their files.", "Give each group its own gid (`groupmod -g`).", NoDuplicateGids),
    account!("7.2.7", "UserGroupSettings", Important, "Ensure no duplicate user names exist", "Only the first entry of a name logs in; the other's files belong to it.", "Rename or remove the duplicate entries.", NoDuplicateUserNames),
    account!("7.2.8", "UserGroupSettings", Warning, "Ensure no duplicate group names exist", "Only the first entry of a name is used; members of the other are not what they seem.", "Rename or remove the duplicate entries.", NoDuplicateGroupNames),
];
