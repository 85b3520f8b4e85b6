//! sshd_config as sshd reads it (OpenSSH servconf.c, sshd_config(5)):
//! keywords are case-insensitive, `Keyword value` or `Keyword=value`; for
//! most keywords the first value obtained wins; `Include` reads the files
//! its glob patterns name in place, relative ones under /etc/ssh, at most
//! 16 levels deep (SERVCONF_MAX_DEPTH), a pattern matching nothing being no
//! error. `Match` starts a conditional block that lasts to the next Match
//! or to the end of the file it is in (an included file's blocks end with
//! it). A check answers for a connection that matches no Match block, the
//! global configuration: lines of Match blocks (and the files they
//! include) are skipped, `Match all` returns to global lines.
use std::collections::HashMap;

/// Where sshd reads its configuration, and relative Include paths.
pub const SSHD_CONFIG: &str = "/etc/ssh/sshd_config";
pub const SSH_DIR: &str = "/etc/ssh";
/// servconf.c's SERVCONF_MAX_DEPTH.
pub const MAX_DEPTH: usize = 16;
/// Files read through Include in one configuration; a real one has a handful.
pub const MAX_FILES: usize = 256;
/// Largest configuration file read; a real one is a few KiB.
pub const MAX_FILE_BYTES: u64 = 1 << 20;

/// The value a keyword got and where: the first global occurrence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setting {
    pub value: String,
    pub file: String,
    pub line: usize,
}

/// The global settings, by lower-case keyword.
pub type Effective = HashMap<String, Setting>;

/// Reads the files an Include pattern names: (path, text) in glob order.
pub type Includer<'a> = dyn FnMut(&str) -> Result<Vec<(String, String)>, String> + 'a;

/// `keyword rest` of one line, or None for blank lines and comments.
pub fn split_line(line: &str) -> Option<(String, &str)> {
    let t = line.trim();
    if t.is_empty() || t.starts_with('#') {
        return None;
    }
    let end = t.find(|c: char| c.is_whitespace() || c == '=').unwrap_or(t.len());
    if end == 0 {
        // `=value` names no keyword: sshd refuses the file; nothing to take.
        return None;
    }
    let keyword = t[..end].to_ascii_lowercase();
    // One `=` may separate keyword and value, with blanks around it.
    let rest = t[end..].trim_start();
    let rest = rest.strip_prefix('=').unwrap_or(rest).trim_start();
    Some((keyword, rest))
}

/// The first argument, unquoted, with a trailing comment removed.
fn first_argument(rest: &str) -> String {
    if let Some(q) = rest.strip_prefix('"') {
        return q.split('"').next().unwrap_or("").to_string();
    }
    rest.split_whitespace().next().filter(|a| !a.starts_with('#')).unwrap_or("").to_string()
}

/// The global settings of `text` (file `path`), Include files read
/// through `include`.
pub fn effective(path: &str, text: &str, include: &mut Includer<'_>) -> Result<Effective, String> {
    let mut out = Effective::new();
    let mut files = 0;
    walk(path, text, include, &mut out, 0, &mut files)?;
    Ok(out)
}

fn walk(
    path: &str,
    text: &str,
    include: &mut Includer<'_>,
    out: &mut Effective,
    depth: usize,
    files: &mut usize,
) -> Result<(), String> {
    let mut global = true;
    for (i, line) in text.lines().enumerate() {
        let Some((keyword, rest)) = split_line(line) else { continue };
        match keyword.as_str() {
            "match" => global = rest.split_whitespace().next().is_some_and(|c| c.eq_ignore_ascii_case("all")),
            _ if !global => {}
            "include" => {
                if depth + 1 >= MAX_DEPTH {
                    return Err(format!("{path} line {}: Include nested deeper than {MAX_DEPTH} levels", i + 1));
                }
                for pattern in rest.split_whitespace().take_while(|p| !p.starts_with('#')) {
                    let pattern = pattern.trim_matches('"');
                    let pattern =
                        if pattern.starts_with('/') { pattern.to_string() } else { format!("{SSH_DIR}/{pattern}") };
                    for (file, body) in include(&pattern)? {
                        *files += 1;
                        if *files > MAX_FILES {
                            return Err(format!("more than {MAX_FILES} files through Include"));
                        }
                        walk(&file, &body, include, out, depth + 1, files)?;
                    }
                }
            }
            _ => {
                out.entry(keyword).or_insert_with(|| Setting {
                    value: first_argument(rest),
                    file: path.to_string(),
                    line: i + 1,
                });
            }
        }
    }
    Ok(())
}

/// OpenSSH's defaults (servconf.c fill_default_server_options) of the
/// keywords the checks read.
pub fn default_of(keyword: &str) -> Option<&'static str> {
    Some(match keyword {
        "permitrootlogin" => "prohibit-password",
        "permitemptypasswords" => "no",
        "maxauthtries" => "6",
        "maxsessions" => "10",
        "ignorerhosts" => "yes",
        "hostbasedauthentication" => "no",
        "permituserenvironment" => "no",
        "logingracetime" => "120",
        "loglevel" => "INFO",
        "usepam" => "no",
        "gssapiauthentication" => "no",
        "x11forwarding" => "no",
        "clientaliveinterval" => "0",
        "clientalivecountmax" => "3",
        _ => return None,
    })
}

/// Matches a glob pattern's last component (`*` and `?`, as glob(3)),
/// the only place the checks' Include patterns put wildcards.
pub fn glob_match(pattern: &[u8], name: &[u8]) -> bool {
    // The greedy matcher with one backtrack point: linear in practice, never
    // exponential in the number of `*` (a hostile Include line has many).
    let (mut p, mut n) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while n < name.len() {
        if p < pattern.len() && (pattern[p] == b'?' || pattern[p] == name[n]) {
            p += 1;
            n += 1;
        } else if p < pattern.len() && pattern[p] == b'*' {
            star = Some((p, n));
            p += 1;
        } else if let Some((sp, sn)) = star {
            p = sp + 1;
            n = sn + 1;
            star = Some((sp, sn + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

/// sshd's LoginGraceTime and friends: seconds, or a time with s/m/h/d/w
/// suffixes (misc.c convtime).
pub fn seconds(value: &str) -> Option<u64> {
    let mut total: u64 = 0;
    let mut digits = String::new();
    for c in value.chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        let unit = match c.to_ascii_lowercase() {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86_400,
            'w' => 604_800,
            _ => return None,
        };
        total = total.checked_add(digits.parse::<u64>().ok()?.checked_mul(unit)?)?;
        digits.clear();
    }
    if !digits.is_empty() {
        total = total.checked_add(digits.parse().ok()?)?;
    }
    Some(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_includes(_: &str) -> Result<Vec<(String, String)>, String> {
        Ok(vec![])
    }

    #[test]
    fn first_value_wins_case_insensitive_with_equals_and_comments() {
        let text = "# c\n  permitrootlogin=yes\nPermitRootLogin no\nMaxAuthTries = 3 # three\nBanner \"/etc/is sue\"\n";
        let e = effective("/etc/ssh/sshd_config", text, &mut no_includes).unwrap();
        assert_eq!(e["permitrootlogin"], Setting { value: "yes".into(), file: "/etc/ssh/sshd_config".into(), line: 2 });
        assert_eq!(e["maxauthtries"].value, "3");
        assert_eq!(e["banner"].value, "/etc/is sue");
    }

    #[test]
    fn a_line_without_a_keyword_is_skipped() {
        // Found by the hostfs_parsers fuzz target (fuzz/regressions/hostfs_parsers/).
        let e = effective("f", "= yes\n=x\nMaxSessions 3\n", &mut no_includes).unwrap();
        assert_eq!(e.keys().collect::<Vec<_>>(), ["maxsessions"]);
    }

    #[test]
    fn match_blocks_are_skipped_until_match_all() {
        let text = "Match User bob\nPermitRootLogin yes\nMatch all\nMaxAuthTries 2\nMatch Address 10.0.0.0/8\nMaxAuthTries 9\n";
        let e = effective("f", text, &mut no_includes).unwrap();
        assert!(!e.contains_key("permitrootlogin"));
        assert_eq!(e["maxauthtries"].value, "2");
    }

    #[test]
    fn includes_are_read_in_place_relative_to_etc_ssh_and_bounded() {
        let mut asked = Vec::new();
        let mut inc = |p: &str| {
            asked.push(p.to_string());
            Ok(vec![
                (format!("{p}.1"), "Match User x\nMaxSessions 1\n".to_string()),
                (format!("{p}.2"), "MaxSessions 2\nPermitRootLogin yes\n".into()),
            ])
        };
        let text = "Include sshd_config.d/*.conf\nMaxSessions 5\nPermitRootLogin no\n";
        let e = effective("main", text, &mut inc).unwrap();
        assert_eq!(asked, ["/etc/ssh/sshd_config.d/*.conf"]);
        // The included Match block ends with its file; the second file comes first.
        assert_eq!(e["maxsessions"].value, "2");
        assert_eq!(
            (e["permitrootlogin"].value.as_str(), e["permitrootlogin"].file.as_str()),
            ("yes", "/etc/ssh/sshd_config.d/*.conf.2")
        );
        // A file including itself stops at the depth bound, with an error.
        let mut me = |p: &str| Ok(vec![(p.to_string(), format!("Include {p}\n"))]);
        assert!(effective("loop", "Include /x\n", &mut me).unwrap_err().contains("deeper than 16"));
        // Include inside a Match block applies only to that block: not read.
        let mut never = |_: &str| -> Result<Vec<(String, String)>, String> { panic!("read") };
        assert!(effective("m", "Match User a\nInclude /x\n", &mut never).unwrap().is_empty());
    }

    #[test]
    fn globs_and_times() {
        assert!(glob_match(b"*.conf", b"a.conf"));
        assert!(!glob_match(b"*.conf", b"a.conf.bak"));
        assert!(glob_match(b"?x*", b"ax"));
        assert_eq!(seconds("1m30s"), Some(90));
        assert_eq!(seconds("60"), Some(60));
        assert_eq!(seconds("2h"), Some(7200));
        assert_eq!(seconds("x"), None);
        assert_eq!(seconds("99999999999999999999"), None);
    }
}
