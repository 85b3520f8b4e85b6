//! The passwd, shadow and group checks, over LocalUsers' parsers. Each
//! file is parsed one line at a time so that a finding names its line;
//! unlike LocalUsers, duplicates are kept: they are what some checks look for.
use std::collections::HashMap;

use super::{evidence, AccountRule, Host, Outcome};
use crate::collectors::local_users::{self, GroupEntry, PasswdEntry, ShadowEntry};

/// Entries with their 1-based line, or why the file could not be read.
pub struct Files {
    pub passwd: Result<Vec<(usize, PasswdEntry)>, String>,
    pub group: Result<Vec<(usize, GroupEntry)>, String>,
    /// None: no shadow file.
    pub shadow: Result<Option<Vec<(usize, ShadowEntry)>>, String>,
    /// login.defs UID_MIN (default 1000): below it, a system account.
    pub uid_min: u32,
}

fn lines<T>(text: &str, parse: fn(&str) -> local_users::Parsed<T>) -> Vec<(usize, T)> {
    text.lines().enumerate().filter_map(|(i, l)| parse(l).entries.into_iter().next().map(|e| (i + 1, e))).collect()
}

fn read<T>(
    host: &Host<'_>,
    path: &str,
    parse: fn(&str) -> local_users::Parsed<T>,
) -> Result<Option<Vec<(usize, T)>>, String> {
    match host.fs.read_to_string(path) {
        Ok(t) => Ok(Some(lines(&t, parse))),
        Err(e) if e.is_not_found() => Ok(None),
        Err(e) => Err(e.to_string()),
    }
}

fn need<T>(r: Result<Option<T>, String>, path: &str) -> Result<T, String> {
    r.and_then(|o| o.ok_or(format!("{path}: not found")))
}

fn files<'h>(host: &'h Host<'_>) -> &'h Files {
    host.accounts.get_or_init(|| {
        let uid_min = match host.login_defs() {
            Ok(d) => d.iter().find(|(n, _, _)| n == "UID_MIN").and_then(|(_, v, _)| v.parse().ok()).unwrap_or(1000),
            Err(_) => 1000,
        };
        Files {
            passwd: need(read(host, local_users::PASSWD, local_users::parse_passwd), local_users::PASSWD),
            group: need(read(host, local_users::GROUP, local_users::parse_group), local_users::GROUP),
            shadow: read(host, local_users::SHADOW, local_users::parse_shadow),
            uid_min,
        }
    })
}

/// The gid of a group name ("root" is 0 even without /etc/group).
pub fn gid_of(host: &Host<'_>, name: &str) -> Option<u32> {
    if name == "root" {
        return Some(0);
    }
    files(host).group.as_ref().ok()?.iter().find(|(_, g)| g.name == name).map(|(_, g)| g.gid)
}

/// Accounts CIS allows a gid of 0 or a shell: they run one command.
const SPECIAL: [&str; 4] = ["sync", "shutdown", "halt", "operator"];

fn duplicates<T, K: std::hash::Hash + Eq + std::fmt::Display>(
    entries: &[(usize, T)],
    key: impl Fn(&T) -> K,
    file: &str,
    what: &str,
) -> Vec<String> {
    let mut at: HashMap<K, Vec<usize>> = HashMap::new();
    for (line, e) in entries {
        let k = key(e);
        at.entry(k).or_default().push(*line);
    }
    let mut out: Vec<(usize, String)> = at
        .into_iter()
        .filter(|(_, l)| l.len() > 1)
        .map(|(k, l)| {
            let lines: Vec<String> = l.iter().map(|n| n.to_string()).collect();
            (l[0], format!("{what} {k} on {file} lines {}", lines.join(", ")))
        })
        .collect();
    out.sort();
    out.into_iter().map(|(_, s)| s).collect()
}

pub fn run(rule: AccountRule, host: &Host<'_>) -> Outcome {
    let f = files(host);
    let passwd = match &f.passwd {
        Ok(p) => p,
        Err(e) => return Outcome::Error(e.clone()),
    };
    let group = || f.group.as_ref().map_err(|e| Outcome::Error(e.clone()));
    let (pw, gr, sh) = (local_users::PASSWD, local_users::GROUP, local_users::SHADOW);
    let found: Vec<String> = match rule {
        AccountRule::OnlyRootUid0 => passwd
            .iter()
            .filter(|(_, p)| p.uid == 0 && p.name != "root")
            .map(|(l, p)| format!("{} has uid 0 ({pw} line {l})", p.name))
            .collect(),
        AccountRule::OnlyRootGid0Account => passwd
            .iter()
            .filter(|(_, p)| p.gid == 0 && p.name != "root" && !SPECIAL.contains(&p.name.as_str()))
            .map(|(l, p)| format!("{} has primary gid 0 ({pw} line {l})", p.name))
            .collect(),
        AccountRule::OnlyRootGroupGid0 => match group() {
            Err(o) => return o,
            Ok(g) => g
                .iter()
                .filter(|(_, g)| g.gid == 0 && g.name != "root")
                .map(|(l, g)| format!("group {} has gid 0 ({gr} line {l})", g.name))
                .collect(),
        },
        AccountRule::SystemAccountsNoLoginShell => passwd
            .iter()
            .filter(|(_, p)| {
                p.uid < f.uid_min
                    && p.name != "root"
                    && !SPECIAL.contains(&p.name.as_str())
                    && local_users::is_login_shell(&p.shell)
            })
            .map(|(l, p)| format!("{} (uid {}) has shell {:?} ({pw} line {l})", p.name, p.uid, p.shell))
            .collect(),
        AccountRule::ShadowedPasswords => passwd
            .iter()
            .filter(|(_, p)| p.password != "x")
            .map(|(l, p)| format!("{} has no shadowed password ({pw} line {l})", p.name))
            .collect(),
        AccountRule::NoEmptyShadowPassword => match &f.shadow {
            Err(e) => return Outcome::Error(e.clone()),
            Ok(None) => return Outcome::NotApplicable,
            Ok(Some(s)) => s
                .iter()
                .filter(|(_, s)| s.password.is_empty())
                .map(|(l, s)| format!("{} has an empty password ({sh} line {l})", s.name))
                .collect(),
        },
        AccountRule::PasswdGroupsExist => match group() {
            Err(o) => return o,
            Ok(g) => passwd
                .iter()
                .filter(|(_, p)| !g.iter().any(|(_, g)| g.gid == p.gid))
                .map(|(l, p)| format!("{}'s gid {} is not in {gr} ({pw} line {l})", p.name, p.gid))
                .collect(),
        },
        AccountRule::ShadowGroupEmpty => match group() {
            Err(o) => return o,
            Ok(g) => {
                let Some((line, shadow)) = g.iter().find(|(_, g)| g.name == "shadow") else {
                    return Outcome::NotApplicable;
                };
                let mut v: Vec<String> = shadow
                    .members
                    .iter()
                    .map(|m| format!("{m} is a member of group shadow ({gr} line {line})"))
                    .collect();
                v.extend(
                    passwd
                        .iter()
                        .filter(|(_, p)| p.gid == shadow.gid)
                        .map(|(l, p)| format!("{}'s primary group is shadow ({pw} line {l})", p.name)),
                );
                v
            }
        },
        AccountRule::NoDuplicateUids => duplicates(passwd, |p| p.uid, pw, "uid"),
        AccountRule::NoDuplicateUserNames => duplicates(passwd, |p| p.name.clone(), pw, "user name"),
        AccountRule::NoDuplicateGids => match group() {
            Err(o) => return o,
            Ok(g) => duplicates(g, |g| g.gid, gr, "gid"),
        },
        AccountRule::NoDuplicateGroupNames => match group() {
            Err(o) => return o,
            Ok(g) => duplicates(g, |g| g.name.clone(), gr, "group name"),
        },
    };
    if found.is_empty() {
        Outcome::Pass
    } else {
        Outcome::Fail(evidence(&found))
    }
}
