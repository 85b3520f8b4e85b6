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
            let status = Command::new(PROGRAM).arg(marker).status().with_context(|| format!("spawning {PROGRAM}"))?;
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
