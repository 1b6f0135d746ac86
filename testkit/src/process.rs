//! Child processes a test starts in their own process group (a balancer, a browser): ended
//! together, politely first.

use std::process::{Child, Command};
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
