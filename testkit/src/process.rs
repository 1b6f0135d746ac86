//! Child processes a test starts in their own process group (a balancer, a browser): ended
//! together, politely first. And one thread of a child stopped while the rest runs on
//! ([`StoppedThread`]), with the threads of a process listed ([`threads_of`]).

use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

/// Sends SIGTERM to `child`'s process group, waits up to `grace` for the child to exit
/// (looking every `poll`), then SIGKILLs the group and reaps the child.
pub fn stop_process_group(child: &mut Child, grace: Duration, poll: Duration) {
    let group = format!("-{}", child.id());
    let signal = |sig: &str| {
        let _ = Command::new("kill").args([sig, "--", &group]).status();
    };
    signal("-TERM");
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            break;
        }
        std::thread::sleep(poll);
    }
    signal("-KILL");
    let _ = child.wait();
}

/// One thread of another process, stopped in place (`PTRACE_SEIZE` + `PTRACE_INTERRUPT`)
/// while the rest of the process runs on: how a test makes one shard of a relay stop
/// serving, as a wedged or lost thread would, without a hook in the relay. Resumed
/// (`PTRACE_DETACH`) when dropped. Every call must come from the thread that stopped it
/// (ptrace ties a tracee to its tracer thread), so this is neither `Send` nor `Sync`.
pub struct StoppedThread {
    tid: libc::pid_t,
    _same_thread: std::marker::PhantomData<*const ()>,
}

impl StoppedThread {
    /// Stops thread `tid` of `pid` (a child of this process, or one it may trace) and
    /// waits until the kernel reports it stopped.
    pub fn stop(pid: u32, tid: u32) -> std::io::Result<StoppedThread> {
        let tid = tid as libc::pid_t;
        let null = std::ptr::null_mut::<libc::c_void>();
        // SAFETY: PTRACE_SEIZE takes a tid and no pointers (addr and data are null); it
        // touches no memory of ours.
        if unsafe { libc::ptrace(libc::PTRACE_SEIZE, tid, null, null) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let stopped = StoppedThread {
            tid,
            _same_thread: std::marker::PhantomData,
        };
        // SAFETY: as above; the thread is ours to trace now.
        if unsafe { libc::ptrace(libc::PTRACE_INTERRUPT, tid, null, null) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let stat = format!("/proc/{pid}/task/{tid}/stat");
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let text = std::fs::read_to_string(&stat)?;
            // The state follows the command name's closing parenthesis; `t`: traced stop.
            let state = text
                .rsplit_once(')')
                .and_then(|(_, r)| r.split_whitespace().next());
            if state == Some("t") {
                return Ok(stopped);
            }
            if Instant::now() >= deadline {
                return Err(std::io::Error::other(format!(
                    "{tid} never stopped: {text}"
                )));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for StoppedThread {
    fn drop(&mut self) {
        let null = std::ptr::null_mut::<libc::c_void>();
        // SAFETY: PTRACE_DETACH with a null signal and no pointers: the thread resumes.
        unsafe { libc::ptrace(libc::PTRACE_DETACH, self.tid, null, null) };
    }
}

/// The ids and names (`comm`) of `pid`'s threads.
pub fn threads_of(pid: u32) -> Vec<(u32, String)> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    dir.filter_map(|e| {
        let tid: u32 = e.ok()?.file_name().to_str()?.parse().ok()?;
        let comm = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/comm")).ok()?;
        Some((tid, comm.trim().to_string()))
    })
    .collect()
}

/// Shows a finished script's output (stdout to the test's stdout, stderr to its stderr) and
/// panics, with both, unless it exited 0; returns its stdout.
pub fn assert_script_ok(out: &Output, what: &str) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    eprintln!("{stderr}");
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    stdout
}
