//! A private OpenSSH server for the Login tests and benchmark: an sshd
//! (UsePAM, password authentication) in a test network namespace, users
//! made for the test, and clients (ssh through sshpass) in this namespace.
//! sshd's own log (`-E`) is the oracle for what happened.
use std::{
    io::Write,
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use crate::{run, NetNs};

pub const PORT: u16 = 2222;

pub const PASSWORD: &str = "hc-Login-pw-1";

/// The libpam the host's `su` loads, as `ldd` resolves it: the oracle for
/// which file the agent's pam source must attach to, independent of the
/// directories the agent searches. None without su or a libpam.
pub fn system_libpam() -> Option<PathBuf> {
    let out = Command::new("ldd").arg("/bin/su").output().ok()?;
    libpam_of_ldd(&String::from_utf8_lossy(&out.stdout))
}

/// The path of `libpam.so.0 => PATH (0x...)` in `ldd` output.
fn libpam_of_ldd(ldd: &str) -> Option<PathBuf> {
    ldd.lines().find_map(|l| {
        let (name, rest) = l.trim().split_once(" => ")?;
        let path = rest.split_whitespace().next()?;
        (name == "libpam.so.0" && path.starts_with('/')).then(|| PathBuf::from(path))
    })
}

/// A user with a password, removed (with its home) on drop.
pub struct TestUser {
    pub name: String,
}

impl TestUser {
    pub fn new(tag: &str) -> Result<TestUser> {
        let name = format!("hc{tag}{}", std::process::id() % 100_000);
        let _ = run(Command::new("userdel").args(["-r", &name]));
        if !run(Command::new("useradd").args(["-m", "-s", "/bin/sh", &name]))?.success() {
            bail!("useradd {name} failed");
        }
        let user = TestUser { name };
        let mut chpasswd = Command::new("chpasswd").stdin(Stdio::piped()).spawn()?;
        writeln!(chpasswd.stdin.take().unwrap(), "{}:{PASSWORD}", user.name)?;
        if !chpasswd.wait()?.success() {
            bail!("chpasswd failed");
        }
        Ok(user)
    }
}

impl Drop for TestUser {
    fn drop(&mut self) {
        let _ = run(Command::new("userdel").args(["-r", &self.name]));
    }
}

/// Files the sshd needs that systemd would make; the ones made here are removed on drop.
pub struct HostFiles {
    made: Vec<PathBuf>,
}

impl HostFiles {
    pub fn new() -> Result<HostFiles> {
        let mut made = Vec::new();
        // Privilege separation directory.
        std::fs::create_dir_all("/run/sshd")?;
        // Without /run/utmp sshd writes no DEAD_PROCESS to wtmp at logout
        // (checked: COLLECTORS.md, Login); without wtmp or btmp (glibc opens
        // them without O_CREAT) nothing at all.
        for f in ["/run/utmp", "/var/log/wtmp", "/var/log/btmp"] {
            if !Path::new(f).exists() {
                std::fs::write(f, b"")?;
                made.push(PathBuf::from(f));
            }
        }
        Ok(HostFiles { made })
    }
}

impl Drop for HostFiles {
    fn drop(&mut self) {
        for f in &self.made {
            let _ = std::fs::remove_file(f);
        }
    }
}

/// The sshd, its network namespace and its log.
pub struct Sshd {
    pub ns: NetNs,
    pub dir: PathBuf,
    child: std::process::Child,
    _files: HostFiles,
}

impl Sshd {
    pub fn start(index: u8) -> Result<Sshd> {
        Sshd::start_program(index, Path::new("/usr/sbin/sshd"))
    }

    /// An sshd run from `program`: OpenSSH names its PAM service after the
    /// program (`__progname`), so a copy under another name uses its own
    /// /etc/pam.d file.
    pub fn start_program(index: u8, program: &Path) -> Result<Sshd> {
        let files = HostFiles::new()?;
        let ns = NetNs::new(index)?;
        let dir = std::env::temp_dir().join(format!("hc-sshd-{}-{index}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let key = dir.join("host_ed25519");
        if !run(Command::new("ssh-keygen").args(["-q", "-t", "ed25519", "-N", ""]).arg("-f").arg(&key))?.success() {
            bail!("ssh-keygen failed");
        }
        let config = dir.join("sshd_config");
        std::fs::write(
            &config,
            format!(
                "Port {PORT}\nListenAddress {}\nHostKey {}\nPidFile {}\nPasswordAuthentication yes\n\
                 KbdInteractiveAuthentication no\nUsePAM yes\nUseDNS no\nPermitRootLogin no\n\
                 MaxAuthTries 10\nLogLevel VERBOSE\n",
                ns.peer_v4(),
                key.display(),
                dir.join("sshd.pid").display()
            ),
        )?;
        let child = Command::new("ip")
            .args(["netns", "exec", &ns.name])
            .arg(program)
            .args(["-D", "-f"])
            .arg(&config)
            .arg("-E")
            .arg(dir.join("sshd.log"))
            .stdin(Stdio::null())
            .spawn()
            .context("starting sshd")?;
        let mut sshd = Sshd { ns, dir, child, _files: files };
        let addr: SocketAddr = format!("{}:{PORT}", sshd.ns.peer_v4()).parse()?;
        let started = Instant::now();
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            if started.elapsed() > Duration::from_secs(10) || sshd.child.try_wait()?.is_some() {
                bail!("sshd did not listen on {addr}; its log: {}", sshd.log());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(sshd)
    }

    /// The listening sshd (`ip netns exec` execs it in place): its
    /// children's CPU time, once they are reaped, is in its cutime/cstime.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("sshd.log")).unwrap_or_default()
    }

    /// Lines of sshd's log containing `needle`.
    pub fn count(&self, needle: &str) -> usize {
        self.log().lines().filter(|l| l.contains(needle)).count()
    }

    /// `sshpass -p PASSWORD ssh OPTIONS user@sshd COMMAND`, with `input` on stdin; its stdout.
    pub fn ssh(
        &self,
        user: &str,
        password: &str,
        options: &[&str],
        command: &[&str],
        input: &str,
    ) -> Result<(bool, String)> {
        let mut child = Command::new("sshpass")
            .args(["-p", password, "ssh", "-p", &PORT.to_string()])
            .args(["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null"])
            .args(["-o", "PreferredAuthentications=password", "-o", "PubkeyAuthentication=no"])
            .args(["-o", "NumberOfPasswordPrompts=1", "-o", "LogLevel=ERROR"])
            .args(options)
            .arg(format!("{user}@{}", self.ns.peer_v4()))
            .args(command)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting sshpass (apt-get install sshpass)")?;
        child.stdin.take().unwrap().write_all(input.as_bytes())?;
        let out = child.wait_with_output()?;
        // sshpass exits 5 for a password refused, 255 is ssh's own failure.
        eprintln!("sshpass {user}: {}, stderr {:?}", out.status, String::from_utf8_lossy(&out.stderr));
        Ok((out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned()))
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // `ip netns exec` execs sshd in place, but its session children may outlive it.
        if let Ok(pid) = std::fs::read_to_string(self.dir.join("sshd.pid")) {
            let _ = run(Command::new("kill").arg(pid.trim()));
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_libpam_in_ldd_output() {
        let ldd =
            "\tlinux-vdso.so.1 (0x00007ffd)\n\tlibpam_misc.so.0 => /lib/x86_64-linux-gnu/libpam_misc.so.0 (0x7f)\n\
                   \tlibpam.so.0 => /lib/x86_64-linux-gnu/libpam.so.0 (0x00007f469aca5000)\n";
        assert_eq!(libpam_of_ldd(ldd), Some(PathBuf::from("/lib/x86_64-linux-gnu/libpam.so.0")));
        assert_eq!(libpam_of_ldd("\tlibpam.so.0 => not found\n"), None);
    }
}
