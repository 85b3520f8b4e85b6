//! Test helper: `forker MARKER N EXIT` forks N children (no exec) that end at
//! once, and waits for them. EXIT is an exit code, or `kill9` to die by
//! SIGKILL. The marker makes this process's command line unique.
fn main() {
    let args: Vec<String> = std::env::args().collect();
    let n: u32 = args[2].parse().expect("N");
    let mode = args[3].clone();
    for _ in 0..n {
        // SAFETY: the child only calls async-signal-safe functions.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork failed");
        if pid == 0 {
            unsafe {
                if mode == "kill9" {
                    libc::raise(libc::SIGKILL);
                }
                libc::_exit(mode.parse().unwrap_or(1));
            }
        }
        let mut status = 0;
        // SAFETY: waiting for our own child.
        unsafe { libc::waitpid(pid, &mut status, 0) };
    }
}
