//! OSBaseline: which CIS checks this host fails. A data table of checks
//! ([`checks::CHECKS`], chosen from the CIS Debian Linux 12 Benchmark) over
//! a dozen procedures ([`Procedure`]), after azure-osconfig's
//! complianceengine: each procedure reads host files through HostFs (or
//! the kernel's firewall, like FirewallConfiguration), no shell is run.
//! One event per check that fails or could not run; a check that passes or
//! does not apply here (no sshd_config: no sshd) sends nothing.
//!
//! What is checked is the running state where the kernel has one (sysctl
//! values in /proc/sys, mounts, loaded modules, listening sockets,
//! firewall policies), else the configuration files.
use std::{cell::OnceCell, os::unix::fs::MetadataExt};

use serde::Serialize;

use super::{firewall, listening_ports, sbom, Context, Snapshot, Taken};
use crate::{events::EventType, hostfs::HostFs};

pub mod accounts;
pub mod checks;
pub mod parsers;
pub mod sshd;

pub use checks::CHECKS;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Severity {
    Critical,
    Important,
    Warning,
    Informational,
}

/// A value a setting must have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// One of these, compared without case.
    OneOf(&'static [&'static str]),
    /// An integer in this range (inclusive).
    Range(i64, i64),
}

impl Expect {
    pub fn accepts(&self, value: &str) -> bool {
        match self {
            Expect::OneOf(v) => v.iter().any(|a| a.eq_ignore_ascii_case(value.trim())),
            Expect::Range(lo, hi) => value.trim().parse::<i64>().is_ok_and(|n| (*lo..=*hi).contains(&n)),
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Expect::OneOf([one]) => one.to_string(),
            Expect::OneOf(v) => format!("one of {}", v.join(", ")),
            Expect::Range(lo, i64::MAX) => format!("at least {lo}"),
            Expect::Range(lo, hi) => format!("{lo} to {hi}"),
        }
    }
}

/// What a line of a file, or of the files of a directory, must do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Want {
    /// No line matches (every match is evidence).
    Absent,
    /// Some line matches.
    Present,
}

/// The account properties of passwd, shadow and group ([`accounts`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccountRule {
    OnlyRootUid0,
    OnlyRootGid0Account,
    OnlyRootGroupGid0,
    SystemAccountsNoLoginShell,
    ShadowedPasswords,
    NoEmptyShadowPassword,
    PasswdGroupsExist,
    ShadowGroupEmpty,
    NoDuplicateUids,
    NoDuplicateGids,
    NoDuplicateUserNames,
    NoDuplicateGroupNames,
}

/// The procedures a check is made of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Procedure {
    /// The file is owned by root, its group is one of `groups` (names),
    /// and it has no mode bit outside `mode`. A missing file: does not apply.
    FilePermissions {
        path: &'static str,
        mode: u32,
        groups: &'static [&'static str],
    },
    /// Lines matching `pattern` (a regex) in `paths`, files or directories
    /// (their files, sorted). Missing paths are skipped; with none present,
    /// Absent does not apply and Present fails.
    FileRegex {
        paths: &'static [&'static str],
        pattern: &'static str,
        want: Want,
    },
    /// Every key present under /proc/sys has an accepted value; a key the
    /// kernel lacks (no IPv6) does not apply.
    Sysctl {
        keys: &'static [&'static str],
        expect: Expect,
    },
    /// The mount at `mount_point` has `option`; no separate mount: does not apply.
    MountOption {
        mount_point: &'static str,
        option: &'static str,
    },
    /// The module is not loaded, an `install` line runs /bin/false or
    /// /bin/true instead, and it is blacklisted; a module this kernel does
    /// not have (modules.dep, modules.builtin) does not apply.
    ModuleDisabled {
        module: &'static str,
    },
    /// None of these packages is installed (the SBoM readers); a host with
    /// no package database: does not apply.
    PackageAbsent {
        packages: &'static [&'static str],
    },
    /// CIS's "X services are not in use": none of the packages is
    /// installed; or, where one is (another package may need it), none of
    /// the units is enabled and nothing listens on the ports in the host's
    /// network namespace (pid 1's). A port in use fails whoever holds it.
    ServiceNotInUse {
        packages: &'static [&'static str],
        units: &'static [&'static str],
        ports: &'static [(listening_ports::Transport, u16)],
    },
    /// The sshd keyword's global value (or OpenSSH's default) is accepted;
    /// no sshd_config: does not apply.
    SshdOption {
        keyword: &'static str,
        expect: Expect,
    },
    /// A login.defs setting; unset: fails (the defaults are the weak ones).
    LoginDefs {
        key: &'static str,
        expect: Expect,
    },
    Accounts(AccountRule),
    /// Base chains at input, forward and output drop by default, for IPv4
    /// and IPv6 (either backend, any table).
    FirewallDefaultDeny,
}

/// One CIS check.
#[derive(Debug, Clone, Copy)]
pub struct Check {
    pub number: &'static str,
    pub group: &'static str,
    pub title: &'static str,
    pub description: &'static str,
    pub remediation: &'static str,
    pub severity: Severity,
    /// All must pass.
    pub procedures: &'static [Procedure],
}

/// What one procedure, or one check, came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Pass,
    NotApplicable,
    /// The evidence: the value found, its file and line.
    Fail(String),
    /// Why it could not be checked.
    Error(String),
}

/// Joins the outcomes of a check's procedures: an error wins, then the
/// failures (their evidence joined); a check applies if any part does.
fn combine(outcomes: Vec<Outcome>) -> Outcome {
    let mut fails = Vec::new();
    let mut errors = Vec::new();
    let mut applies = false;
    for o in outcomes {
        match o {
            Outcome::Pass => applies = true,
            Outcome::NotApplicable => {}
            Outcome::Fail(r) => fails.push(r),
            Outcome::Error(e) => errors.push(e),
        }
    }
    if !errors.is_empty() {
        Outcome::Error(errors.join("; "))
    } else if !fails.is_empty() {
        Outcome::Fail(fails.join("; "))
    } else if applies {
        Outcome::Pass
    } else {
        Outcome::NotApplicable
    }
}

/// The OSBaseline event payload: one failed check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub check_id: String,
    /// Fail or Error.
    pub check_result: &'static str,
    /// Why the check could not run (Error only).
    pub error: Option<String>,
    pub title: &'static str,
    pub description: &'static str,
    pub remediation: &'static str,
    pub severity: Severity,
    pub group: &'static str,
    pub cis_number: &'static str,
    /// The evidence (Fail only): the values found, with their file and line.
    pub reason: Option<String>,
}

/// The check ids' prefix: `CIS-debian-{major}` where the table's benchmark
/// applies (Debian 12 and later), `CIS-linux` elsewhere.
pub fn id_prefix(distro: &sbom::Distro) -> String {
    let major = distro.version_id.as_deref().and_then(|v| v.split('.').next()).and_then(|m| m.parse::<u32>().ok());
    match (distro.id.as_deref(), major) {
        (Some("debian"), Some(m)) if m >= 12 => format!("CIS-debian-{m}"),
        _ => "CIS-linux".into(),
    }
}

/// Every group of the table, in table order, once.
pub fn groups() -> Vec<&'static str> {
    let mut g: Vec<&'static str> = Vec::new();
    for c in CHECKS {
        if !g.contains(&c.group) {
            g.push(c.group);
        }
    }
    g
}

pub fn is_check(number: &str) -> bool {
    CHECKS.iter().any(|c| c.number == number)
}

/// Largest configuration file a procedure reads; real ones are KiB.
pub const MAX_CONFIG_BYTES: u64 = 1 << 20;
/// Matching lines named as evidence per check; the rest are counted.
const MAX_EVIDENCE: usize = 5;

/// Lists evidence, at most MAX_EVIDENCE items and a count of the rest.
fn evidence(items: &[String]) -> String {
    let more = items.len().saturating_sub(MAX_EVIDENCE);
    let mut s = items.iter().take(MAX_EVIDENCE).cloned().collect::<Vec<_>>().join("; ");
    if more > 0 {
        s.push_str(&format!("; and {more} more"));
    }
    s
}

/// login.defs settings: (key, value, line).
type LoginDefs = Vec<(String, String, usize)>;
/// Listening sockets: (transport, port, evidence).
type Listening = Vec<(listening_ports::Transport, u16, String)>;

/// What the checks of one run read once: the host files shared by several
/// procedures, read on first use.
pub struct Host<'a> {
    pub fs: &'a HostFs,
    firewall: fn() -> firewall::Reading,
    inventory: OnceCell<sbom::Inventory>,
    sshd: OnceCell<Result<Option<sshd::Effective>, String>>,
    /// The table's path and its mounts.
    mounts: OnceCell<Result<(&'static str, Vec<parsers::Mount>), String>>,
    modprobe: OnceCell<Vec<(String, parsers::Modprobe)>>,
    login_defs: OnceCell<Result<LoginDefs, String>>,
    pub(crate) accounts: OnceCell<accounts::Files>,
    rulesets: OnceCell<firewall::Reading>,
    /// The host namespace's listening TCP and UDP sockets: (transport,
    /// port, evidence). Read once: a /proc/net table walks every socket of
    /// every namespace, costly on a busy host.
    listening: OnceCell<Result<Listening, String>>,
    /// Bytes read through sshd Include so far, bounded by MAX_INCLUDE_BYTES.
    included: std::cell::Cell<u64>,
}

/// Bytes of sshd_config Include files read in one run: a directory of
/// hundreds of large files must not all be held at once.
pub const MAX_INCLUDE_BYTES: u64 = 4 << 20;

impl<'a> Host<'a> {
    pub fn new(fs: &'a HostFs, firewall: fn() -> firewall::Reading) -> Host<'a> {
        Host {
            fs,
            firewall,
            inventory: OnceCell::new(),
            sshd: OnceCell::new(),
            mounts: OnceCell::new(),
            modprobe: OnceCell::new(),
            login_defs: OnceCell::new(),
            accounts: OnceCell::new(),
            rulesets: OnceCell::new(),
            included: std::cell::Cell::new(0),
            listening: OnceCell::new(),
        }
    }

    /// A configuration file as text; None when absent; Err when present
    /// but unreadable (a directory, no permission, too large).
    pub fn config(&self, path: &str) -> Result<Option<String>, String> {
        match self.fs.read_bounded(path, MAX_CONFIG_BYTES) {
            Ok(b) => Ok(Some(String::from_utf8_lossy(&b).into_owned())),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e.to_string()),
        }
    }

    /// The regular files of a directory, sorted, or the path itself when
    /// it is a file; empty when absent.
    fn files_of(&self, path: &str) -> Result<Vec<String>, String> {
        let real = self.fs.resolve(path).map_err(|e| e.to_string())?;
        match std::fs::metadata(&real) {
            Ok(m) if m.is_dir() => {
                let names = self.fs.read_dir(path).map_err(|e| e.to_string())?;
                Ok(names
                    .into_iter()
                    .map(|n| format!("{}/{n}", path.trim_end_matches('/')))
                    .filter(|p| self.fs.resolve(p).is_ok_and(|r| r.is_file()))
                    .collect())
            }
            Ok(_) => Ok(vec![path.to_string()]),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(vec![]),
            Err(e) => Err(format!("{path}: {e}")),
        }
    }

    fn sshd(&self) -> &Result<Option<sshd::Effective>, String> {
        self.sshd.get_or_init(|| {
            let Some(text) = self.config(sshd::SSHD_CONFIG)? else { return Ok(None) };
            let mut include = |pattern: &str| self.include(pattern);
            sshd::effective(sshd::SSHD_CONFIG, &text, &mut include).map(Some)
        })
    }

    /// The files an sshd Include pattern names: wildcards in the last
    /// component only (every real configuration's `sshd_config.d/*.conf`).
    fn include(&self, pattern: &str) -> Result<Vec<(String, String)>, String> {
        let (dir, name) = pattern.rsplit_once('/').unwrap_or((".", pattern));
        if dir.contains(['*', '?', '[']) {
            return Err(format!("Include {pattern}: wildcards in a directory are not read"));
        }
        let names = if name.contains(['*', '?']) {
            match self.fs.read_dir(if dir.is_empty() { "/" } else { dir }) {
                Ok(n) => n
                    .into_iter()
                    .filter(|n| !n.starts_with('.') && sshd::glob_match(name.as_bytes(), n.as_bytes()))
                    .collect(),
                Err(e) if e.is_not_found() => vec![],
                Err(e) => return Err(e.to_string()),
            }
        } else {
            vec![name.to_string()]
        };
        let mut out = Vec::new();
        for n in names {
            let path = format!("{dir}/{n}");
            if let Some(text) = self.config(&path)? {
                let total = self.included.get() + text.len() as u64;
                if total > MAX_INCLUDE_BYTES {
                    return Err(format!("{path}: more than {MAX_INCLUDE_BYTES} bytes read through Include"));
                }
                self.included.set(total);
                out.push((path, text));
            }
        }
        Ok(out)
    }

    fn mounts(&self) -> &Result<(&'static str, Vec<parsers::Mount>), String> {
        self.mounts.get_or_init(|| {
            // The host's mounts are its init's; /proc/self/mounts is the agent's own.
            for path in ["/proc/1/mounts", "/proc/self/mounts"] {
                match self.fs.read_bounded(path, crate::hostfs::MAX_FILE_BYTES) {
                    Ok(b) => return Ok((path, parsers::parse_mounts(&String::from_utf8_lossy(&b)))),
                    Err(e) if e.is_not_found() => continue,
                    Err(e) => return Err(e.to_string()),
                }
            }
            Err("/proc/1/mounts and /proc/self/mounts: not found".into())
        })
    }

    /// Every modprobe.d directive with its file, in modprobe.d(5)'s
    /// directories; a file name in an earlier directory hides the same name
    /// in a later one.
    fn modprobe(&self) -> &Vec<(String, parsers::Modprobe)> {
        self.modprobe.get_or_init(|| {
            let mut seen = Vec::new();
            let mut out = Vec::new();
            for dir in [
                "/etc/modprobe.d",
                "/run/modprobe.d",
                "/usr/local/lib/modprobe.d",
                "/lib/modprobe.d",
                "/usr/lib/modprobe.d",
            ] {
                for name in self.fs.read_dir(dir).unwrap_or_default() {
                    if !name.ends_with(".conf") || seen.contains(&name) {
                        continue;
                    }
                    seen.push(name.clone());
                    let path = format!("{dir}/{name}");
                    if let Ok(Some(text)) = self.config(&path) {
                        out.extend(parsers::parse_modprobe(&text).into_iter().map(|d| (path.clone(), d)));
                    }
                }
            }
            out
        })
    }

    fn login_defs(&self) -> &Result<Vec<(String, String, usize)>, String> {
        self.login_defs.get_or_init(|| Ok(parsers::parse_login_defs(&self.config(LOGIN_DEFS)?.unwrap_or_default())))
    }

    fn inventory(&self) -> &sbom::Inventory {
        self.inventory.get_or_init(|| sbom::inventory(self.fs))
    }
}

pub const LOGIN_DEFS: &str = "/etc/login.defs";

/// Runs one procedure.
pub fn run(p: &Procedure, host: &Host<'_>) -> Outcome {
    match *p {
        Procedure::FilePermissions { path, mode, groups } => file_permissions(host, path, mode, groups),
        Procedure::FileRegex { paths, pattern, want } => file_regex(host, paths, pattern, want),
        Procedure::Sysctl { keys, expect } => sysctl(host, keys, expect),
        Procedure::MountOption { mount_point, option } => match host.mounts() {
            Err(e) => Outcome::Error(e.clone()),
            Ok((table, m)) => match parsers::mount_at(m, mount_point) {
                None => Outcome::NotApplicable,
                Some(m) if m.options.iter().any(|o| o == option) => Outcome::Pass,
                Some(m) => Outcome::Fail(format!(
                    "{mount_point} mounted without {option}: options {} ({table} line {})",
                    m.options.join(","),
                    m.line
                )),
            },
        },
        Procedure::ModuleDisabled { module } => module_disabled(host, module),
        Procedure::PackageAbsent { packages } => {
            let inv = host.inventory();
            if inv.packages.is_empty() {
                return if inv.failures.is_empty() {
                    Outcome::NotApplicable
                } else {
                    Outcome::Error(
                        inv.failures
                            .iter()
                            .map(|f| format!("{}: {}", f.source, f.reason))
                            .collect::<Vec<_>>()
                            .join("; "),
                    )
                };
            }
            let found: Vec<String> = inv
                .packages
                .iter()
                .filter(|(_, p)| packages.contains(&p.name.as_str()))
                .map(|(_, p)| format!("{} {} installed ({})", p.name, p.version, p.package_manager.name()))
                .collect();
            if found.is_empty() {
                Outcome::Pass
            } else {
                Outcome::Fail(evidence(&found))
            }
        }
        Procedure::ServiceNotInUse { packages, units, ports } => {
            let installed = run(&Procedure::PackageAbsent { packages }, host);
            let in_use = combine(vec![units_not_enabled(host, units), ports_not_listening(host, ports)]);
            match (installed, in_use) {
                (Outcome::Error(e), _) | (_, Outcome::Error(e)) => Outcome::Error(e),
                (Outcome::Fail(p), Outcome::Fail(why)) => Outcome::Fail(format!("{p}; {why}")),
                (_, Outcome::Fail(why)) => Outcome::Fail(why),
                // Installed, but neither enabled nor listening.
                (Outcome::Fail(_), _) => Outcome::Pass,
                (Outcome::Pass, _) => Outcome::Pass,
                // No package database: the units and ports decide.
                (Outcome::NotApplicable, other) => other,
            }
        }
        Procedure::SshdOption { keyword, expect } => match host.sshd() {
            Err(e) => Outcome::Error(e.clone()),
            Ok(None) => Outcome::NotApplicable,
            Ok(Some(eff)) => {
                let lower = keyword.to_ascii_lowercase();
                let (value, place) = match eff.get(&lower) {
                    Some(s) => (s.value.clone(), format!("{} line {}", s.file, s.line)),
                    None => (sshd::default_of(&lower).unwrap_or("").to_string(), "OpenSSH's default".into()),
                };
                let ok = match lower.as_str() {
                    // A time: seconds or 1m30s.
                    "logingracetime" => sshd::seconds(&value).is_some_and(|s| expect.accepts(&s.to_string())),
                    _ => expect.accepts(&value),
                };
                if ok {
                    Outcome::Pass
                } else {
                    Outcome::Fail(format!("{keyword} {value} ({place}), expected {}", expect.describe()))
                }
            }
        },
        Procedure::LoginDefs { key, expect } => match host.login_defs() {
            Err(e) => Outcome::Error(e.clone()),
            Ok(defs) => match defs.iter().find(|(n, _, _)| n == key) {
                Some((_, v, _)) if expect.accepts(v) => Outcome::Pass,
                Some((_, v, line)) => {
                    Outcome::Fail(format!("{key} {v} ({LOGIN_DEFS} line {line}), expected {}", expect.describe()))
                }
                None => Outcome::Fail(format!("{key} not set in {LOGIN_DEFS}, expected {}", expect.describe())),
            },
        },
        Procedure::Accounts(rule) => accounts::run(rule, host),
        Procedure::FirewallDefaultDeny => default_deny(host.rulesets.get_or_init(host.firewall)),
    }
}

fn file_permissions(host: &Host<'_>, path: &str, mode: u32, groups: &[&str]) -> Outcome {
    let real = match host.fs.resolve(path) {
        Ok(r) => r,
        Err(e) => return Outcome::Error(e.to_string()),
    };
    let meta = match std::fs::metadata(&real) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Outcome::NotApplicable,
        Err(e) => return Outcome::Error(format!("{path}: {e}")),
    };
    let gids: Vec<u32> = groups.iter().filter_map(|g| accounts::gid_of(host, g)).collect();
    let actual = meta.mode() & 0o7777;
    let mut wrong = Vec::new();
    if actual & !mode != 0 {
        wrong.push(format!("mode {actual:04o}, expected {mode:04o} or stricter"));
    }
    if meta.uid() != 0 {
        wrong.push(format!("owner uid {}, expected root", meta.uid()));
    }
    if !gids.contains(&meta.gid()) {
        wrong.push(format!("group gid {}, expected {}", meta.gid(), groups.join(" or ")));
    }
    if wrong.is_empty() {
        Outcome::Pass
    } else {
        Outcome::Fail(format!("{path}: {}", wrong.join(", ")))
    }
}

fn file_regex(host: &Host<'_>, paths: &[&str], pattern: &str, want: Want) -> Outcome {
    // The table's patterns are constants, checked by a unit test.
    let re = match regex::Regex::new(pattern) {
        Ok(r) => r,
        Err(e) => return Outcome::Error(format!("pattern {pattern}: {e}")),
    };
    let mut files = Vec::new();
    for p in paths {
        match host.files_of(p) {
            Ok(f) => files.extend(f),
            Err(e) => return Outcome::Error(e),
        }
    }
    let mut matches = Vec::new();
    for f in &files {
        let text = match host.config(f) {
            Ok(t) => t.unwrap_or_default(),
            Err(e) => return Outcome::Error(e),
        };
        for (i, line) in text.lines().enumerate() {
            if re.is_match(line) {
                matches.push(format!("{f} line {}: {}", i + 1, crate::limits::printable(line.trim(), 200)));
            }
        }
    }
    match want {
        Want::Absent if files.is_empty() => Outcome::NotApplicable,
        Want::Absent if matches.is_empty() => Outcome::Pass,
        Want::Absent => Outcome::Fail(evidence(&matches)),
        Want::Present if matches.is_empty() => {
            Outcome::Fail(format!("no line matches {pattern} in {}", paths.join(", ")))
        }
        Want::Present => Outcome::Pass,
    }
}

fn sysctl(host: &Host<'_>, keys: &[&str], expect: Expect) -> Outcome {
    let mut outcomes = Vec::new();
    for key in keys {
        let path = format!("/proc/sys/{}", key.replace('.', "/"));
        outcomes.push(match host.fs.read_bounded(&path, 4096) {
            Err(e) if e.is_not_found() => Outcome::NotApplicable,
            Err(e) => Outcome::Error(e.to_string()),
            Ok(b) => {
                let v = String::from_utf8_lossy(&b).split_whitespace().collect::<Vec<_>>().join(" ");
                if expect.accepts(&v) {
                    Outcome::Pass
                } else {
                    Outcome::Fail(format!("{key} = {v} ({path}), expected {}", expect.describe()))
                }
            }
        });
    }
    combine(outcomes)
}

fn module_disabled(host: &Host<'_>, module: &str) -> Outcome {
    let name = parsers::module_name(module);
    let release = host.fs.attribute("/proc/sys/kernel/osrelease").unwrap_or_default();
    let has = |file: &str| -> Option<bool> {
        let text = host.config(&format!("/lib/modules/{release}/{file}")).ok()??;
        Some(text.lines().any(|l| {
            let path = l.split(':').next().unwrap_or("");
            let base = path.rsplit('/').next().unwrap_or("");
            let stem = base.split(".ko").next().unwrap_or("");
            parsers::module_name(stem) == name && base.contains(".ko")
        }))
    };
    if has("modules.builtin") == Some(true) {
        return Outcome::Fail(format!("{module} is built into the kernel (/lib/modules/{release}/modules.builtin)"));
    }
    // A kernel without the module cannot load it; without modules.dep the
    // answer is unknown, and the configuration is checked.
    if has("modules.dep") == Some(false) {
        return Outcome::NotApplicable;
    }
    let mut wrong = Vec::new();
    if let Ok(Some(loaded)) = host.config("/proc/modules") {
        if let Some(i) =
            loaded.lines().position(|l| l.split_whitespace().next().map(parsers::module_name) == Some(name.clone()))
        {
            wrong.push(format!("{module} is loaded (/proc/modules line {})", i + 1));
        }
    }
    let directives = host.modprobe();
    // modprobe uses the first install line of a module.
    let install = directives.iter().find_map(|(f, d)| match d {
        parsers::Modprobe::Install { module: m, command, line } if *m == name => Some((f, command, line)),
        _ => None,
    });
    match install {
        Some((_, command, _)) if parsers::install_disables(command) => {}
        Some((f, command, line)) => {
            wrong.push(format!("install {module} {command} ({f} line {line}) does not disable it"))
        }
        None => wrong.push(format!("no `install {module} /bin/false` in modprobe.d")),
    }
    if !directives.iter().any(|(_, d)| matches!(d, parsers::Modprobe::Blacklist { module: m, .. } if *m == name)) {
        wrong.push(format!("no `blacklist {module}` in modprobe.d"));
    }
    if wrong.is_empty() {
        Outcome::Pass
    } else {
        Outcome::Fail(wrong.join(", "))
    }
}

/// Where systemd finds units: the administrator's, the runtime's, the
/// packages' (systemd.unit(5), "Unit File Load Path", system mode).
const UNIT_DIRS: [&str; 4] =
    ["/etc/systemd/system", "/run/systemd/system", "/lib/systemd/system", "/usr/lib/systemd/system"];

/// None of the systemd units is enabled: no `.wants`/`.requires` entry of
/// a unit directory names it (what `systemctl enable` and a package's
/// static enablement create), unless it is masked (linked to /dev/null
/// in /etc or /run). A unit without a native unit file counts as enabled
/// by its SysV init script's `S` links in /etc/rc2.d..rc5.d (as
/// systemd-sysv-generator reads them). No unit file and no init script:
/// does not apply. Read from the files, as `systemctl is-enabled` would
/// decide, without asking systemd (the container has no bus to it).
fn units_not_enabled(host: &Host<'_>, units: &[&str]) -> Outcome {
    let mut known = false;
    let mut enabled = Vec::new();
    for unit in units {
        let masked = UNIT_DIRS[..2]
            .iter()
            .any(|d| host.fs.read_link(format!("{d}/{unit}")).is_ok_and(|t| t == std::path::Path::new("/dev/null")));
        if masked {
            known = true;
            continue;
        }
        let native = UNIT_DIRS.iter().any(|d| host.fs.exists(format!("{d}/{unit}")));
        known |= native;
        for dir in UNIT_DIRS {
            let names = match host.fs.read_dir(dir) {
                Ok(n) => n,
                Err(e) if e.is_not_found() => continue,
                Err(e) => return Outcome::Error(e.to_string()),
            };
            for wants in names.iter().filter(|n| n.ends_with(".wants") || n.ends_with(".requires")) {
                let link = format!("{dir}/{wants}/{unit}");
                if host.fs.read_link(&link).is_ok() || host.fs.exists(&link) {
                    enabled.push(format!("{unit} enabled ({link})"));
                }
            }
        }
        let Some(script) = unit.strip_suffix(".service") else { continue };
        if native || !host.fs.exists(format!("/etc/init.d/{script}")) {
            continue;
        }
        known = true;
        for level in 2..=5 {
            let dir = format!("/etc/rc{level}.d");
            let names = match host.fs.read_dir(&dir) {
                Ok(n) => n,
                Err(e) if e.is_not_found() => continue,
                Err(e) => return Outcome::Error(e.to_string()),
            };
            // S<two digits><script>: started in that runlevel.
            for n in names.iter().filter(|n| n.starts_with('S') && n.get(3..) == Some(script)) {
                enabled.push(format!("{script} enabled ({dir}/{n})"));
            }
        }
    }
    if !enabled.is_empty() {
        Outcome::Fail(evidence(&enabled))
    } else if known {
        Outcome::Pass
    } else {
        Outcome::NotApplicable
    }
}

fn ports_not_listening(host: &Host<'_>, ports: &[(listening_ports::Transport, u16)]) -> Outcome {
    if ports.is_empty() {
        return Outcome::NotApplicable;
    }
    let sockets = host.listening.get_or_init(|| {
        let mut found = Vec::new();
        for (table, transport) in listening_ports::TABLES {
            if transport == listening_ports::Transport::Raw {
                continue;
            }
            let text = crate::procfs::net_table(host.fs, 1, table).map_err(|e| e.to_string())?.unwrap_or_default();
            for f in listening_ports::listening(0, transport, &text) {
                let (addr, port) = f.socket.local;
                found.push((
                    transport,
                    port,
                    format!("{} {addr}:{port} listening (/proc/1/net/{table})", transport.name()),
                ));
            }
        }
        Ok(found)
    });
    match sockets {
        Err(e) => Outcome::Error(e.clone()),
        Ok(all) => {
            let found: Vec<String> =
                all.iter().filter(|(t, p, _)| ports.contains(&(*t, *p))).map(|(_, _, e)| e.clone()).collect();
            if found.is_empty() {
                Outcome::Pass
            } else {
                Outcome::Fail(evidence(&found))
            }
        }
    }
}

/// Hooks a default deny covers, and the nftables families that filter
/// IPv4 and IPv6 there (x_tables reports ip and ip6).
const DENY_HOOKS: [&str; 3] = ["input", "forward", "output"];

pub fn default_deny(r: &firewall::Reading) -> Outcome {
    if !r.failures.is_empty() && r.chains.is_empty() {
        return Outcome::Error(r.failures.iter().map(|(s, e)| format!("{s}: {e}")).collect::<Vec<_>>().join("; "));
    }
    let mut missing = Vec::new();
    for hook in DENY_HOOKS {
        for (version, families) in [("IPv4", ["ip", "inet"]), ("IPv6", ["ip6", "inet"])] {
            let at: Vec<&firewall::ChainRules> = r
                .chains
                .iter()
                .filter(|c| {
                    c.info.enabled && c.info.hook.as_deref() == Some(hook) && families.contains(&c.info.family.as_str())
                })
                .collect();
            let drops = at.iter().any(|c| c.policy.as_ref().is_some_and(|(v, _)| firewall::action(v) == "Deny"));
            if !drops {
                let seen: Vec<String> = at
                    .iter()
                    .map(|c| {
                        let policy = c.policy.as_ref().map(|(v, _)| v.as_str()).unwrap_or("none");
                        format!(
                            "{} {} {} {} policy {policy}",
                            c.info.backend, c.info.family, c.info.table, c.info.chain
                        )
                    })
                    .collect();
                let seen = if seen.is_empty() { "no base chain".to_string() } else { seen.join(", ") };
                missing.push(format!("{version} {hook}: {seen}"));
            }
        }
    }
    if missing.is_empty() {
        Outcome::Pass
    } else {
        Outcome::Fail(format!("no default deny at {}", missing.join("; ")))
    }
}

/// Evaluates every check the configuration leaves enabled: (check, outcome).
pub fn evaluate<'c>(
    host: &Host<'_>,
    disabled_groups: &[String],
    disabled_checks: &[String],
) -> Vec<(&'c Check, Outcome)>
where
    'static: 'c,
{
    CHECKS
        .iter()
        .filter(|c| !disabled_groups.iter().any(|g| g == c.group) && !disabled_checks.iter().any(|n| n == c.number))
        .map(|c| (c, combine(c.procedures.iter().map(|p| run(p, host)).collect())))
        .collect()
}

/// The event of a check that did not pass; None for Pass and NotApplicable.
pub fn finding(prefix: &str, check: &Check, outcome: Outcome) -> Option<Finding> {
    let (result, error, reason) = match outcome {
        Outcome::Pass | Outcome::NotApplicable => return None,
        Outcome::Fail(r) => ("Fail", None, Some(r)),
        Outcome::Error(e) => ("Error", Some(e), None),
    };
    Some(Finding {
        check_id: format!("{prefix}-{}-{}", check.group, check.number),
        check_result: result,
        error,
        title: check.title,
        description: check.description,
        remediation: check.remediation,
        severity: check.severity,
        group: check.group,
        cis_number: check.number,
        reason,
    })
}

pub struct OsBaseline {
    /// Reads the firewall of the agent's network namespace; a fixture in tests.
    pub firewall: fn() -> firewall::Reading,
}

impl Default for OsBaseline {
    fn default() -> Self {
        OsBaseline { firewall: firewall::read_here }
    }
}

impl Snapshot for OsBaseline {
    fn event_type(&self) -> EventType {
        EventType::OSBaseline
    }

    fn take(&mut self, cx: &Context<'_>) -> Taken {
        let mut taken = Taken::default();
        let host = Host::new(cx.host, self.firewall);
        let prefix = id_prefix(&sbom::Distro::of(cx.host));
        let b = &cx.config.baseline;
        // Check numbers are unique (a unit test says so): so are the ids.
        for (check, outcome) in evaluate(&host, &b.groups_disabled, &b.checks_disabled) {
            if let Some(f) = finding(&prefix, check, outcome) {
                taken.push(f.check_id.clone(), &f);
            }
        }
        taken
    }
}

#[cfg(test)]
mod tests;
