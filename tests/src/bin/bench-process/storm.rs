//! The workload: a storm of short-lived processes, each one fork (clone),
//! exec and exit, which is every event the process programs handle.
use std::{
    process::Command,
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use tests::bench::interrupted;

/// Exits at once without touching its arguments, so a spawn costs little
/// more than the kernel's process life cycle and a watcher's share shows.
pub const PROGRAM: &str = "/bin/true";

pub struct Storm {
    pub execs: u64,
    pub threads: usize,
    pub spawn: Spawn,
}

/// How each process of the storm is started.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum Spawn {
    /// std's posix_spawn: clone(CLONE_VM|CLONE_VFORK), then exec in the
    /// child while the parent waits, on the same CPU as a rule.
    PosixSpawn,
    /// fork(2), then exec in the child, as a shell starts a command: the
    /// child runs on its own while the parent goes on to wait, often on
    /// another CPU.
    Fork,
}

impl Spawn {
    pub fn name(self) -> &'static str {
        match self {
            Spawn::PosixSpawn => "posix-spawn",
            Spawn::Fork => "fork",
        }
    }
}

impl Storm {
    /// Runs `PROGRAM MARKER` exactly `execs` times, from `threads` threads
    /// each waiting for its child before spawning the next, and returns the
    /// wall time. std spawns with posix_spawn (clone(CLONE_VM|CLONE_VFORK) +
    /// exec), the cheapest way to start a process, which makes a watcher's
    /// share of the cost the largest it can be.
    pub fn run(&self, marker: &str) -> Result<Duration> {
        let claimed = AtomicU64::new(0);
        let started = Instant::now();
        std::thread::scope(|s| {
            let workers: Vec<_> = (0..self.threads)
                .map(|_| {
                    s.spawn(|| {
                        let result = self.spawn_claimed(&claimed, marker);
                        if result.is_err() {
                            // Stop the other threads too.
                            claimed.fetch_max(self.execs, Ordering::Relaxed);
                        }
                        result
                    })
                })
                .collect();
            workers.into_iter().try_for_each(|w| w.join().expect("storm thread panicked"))
        })?;
        Ok(started.elapsed())
    }

    fn spawn_claimed(&self, claimed: &AtomicU64, marker: &str) -> Result<()> {
        // Each successful claim is one exec, so the total is exact whatever
        // the interleaving of threads.
        while claimed.fetch_add(1, Ordering::Relaxed) < self.execs {
            if interrupted() {
                bail!("interrupted");
            }
            let status = match self.spawn {
                Spawn::PosixSpawn => {
                    Command::new(PROGRAM).arg(marker).status().with_context(|| format!("spawning {PROGRAM}"))?
                }
                Spawn::Fork => fork_exec(marker)?,
            };
            if !status.success() {
                if interrupted() {
                    bail!("interrupted");
                }
                bail!("{PROGRAM} exited with {status}");
            }
        }
        Ok(())
    }
}

/// `PROGRAM MARKER` by fork and execv; the child's exit status.
fn fork_exec(marker: &str) -> Result<std::process::ExitStatus> {
    use std::{ffi::CString, os::unix::process::ExitStatusExt};
    let program = CString::new(PROGRAM).expect("no NUL");
    let marker = CString::new(marker).context("the marker has a NUL")?;
    // Built before the fork: the child of a multi-threaded parent may only
    // call async-signal-safe functions, which execv and _exit are.
    let argv = [program.as_ptr(), marker.as_ptr(), std::ptr::null()];
    // SAFETY: the child calls execv and _exit only.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        bail!("fork: {}", std::io::Error::last_os_error());
    }
    if pid == 0 {
        unsafe {
            libc::execv(program.as_ptr(), argv.as_ptr());
            libc::_exit(127);
        }
    }
    let mut status = 0;
    // SAFETY: waiting for our own child.
    if unsafe { libc::waitpid(pid, &mut status, 0) } != pid {
        bail!("waitpid: {}", std::io::Error::last_os_error());
    }
    Ok(std::process::ExitStatus::from_raw(status))
}
