//! Shard threads: each pinned to one core and running its own io_uring runtime.

use std::future::Future;
use std::io;

/// Submission queue entries per ring.
pub const RING_ENTRIES: u32 = 1024;

/// Spawns an OS thread named `name`, pins it to `core` (if that core exists) and runs `f`
/// to completion on a fresh io_uring runtime there. `ready` gets `Ok` once the runtime is
/// up, or the reason it could not start ([`uring_unavailable`]); then `f` never runs.
pub fn spawn_pinned<F, Fut>(
    name: String,
    core: Option<usize>,
    ready: std::sync::mpsc::Sender<io::Result<()>>,
    f: F,
) -> std::thread::JoinHandle<()>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = ()>,
{
    std::thread::Builder::new()
        .name(name)
        .spawn(move || {
            if let Some(core) = core {
                if let Some(ids) = core_affinity::get_core_ids() {
                    if let Some(id) = ids.get(core % ids.len().max(1)) {
                        core_affinity::set_for_current(*id);
                    }
                }
            }
            // No SQPOLL / DEFER_TASKRUN: both misbehaved with tokio-uring in probes here.
            let mut builder = tokio_uring::builder();
            builder.entries(RING_ENTRIES);
            // `Builder::start` would panic (and, with `panic = "abort"`, abort the process
            // with no word of why) when the ring cannot be set up.
            let runtime = match tokio_uring::Runtime::new(&builder) {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = ready.send(Err(uring_unavailable(e)));
                    return;
                }
            };
            runtime.block_on(async move {
                let _ = ready.send(Ok(()));
                f().await
            });
        })
        .expect("spawn shard thread")
}

/// Says why an io_uring could not be set up, from the error `io_uring_setup` gave: the
/// bare errno ("Operation not permitted") names neither io_uring nor the fix.
pub fn uring_unavailable(e: io::Error) -> io::Error {
    let cause = match e.raw_os_error() {
        Some(libc::EPERM) | Some(libc::EACCES) => {
            "io_uring_setup was refused. Likely causes: a container's seccomp profile \
             (Docker's and Podman's default profiles block io_uring: run with --security-opt \
             seccomp=deploy/docker/seccomp.json), the sysctl kernel.io_uring_disabled (2 \
             disables io_uring, 1 allows it only to root and kernel.io_uring_group: set it to 0), \
             or a systemd SystemCallFilter= without io_uring_setup, io_uring_enter and \
             io_uring_register"
        }
        Some(libc::ENOSYS) => {
            "the kernel has no io_uring_setup. Likely causes: a kernel older than 5.10 or \
             built without CONFIG_IO_URING, or a seccomp profile that hides io_uring (run \
             containers with --security-opt seccomp=deploy/docker/seccomp.json)"
        }
        Some(libc::ENOMEM) => {
            "the kernel had no memory for the ring. Likely cause: kernels before 5.12 count \
             rings against the locked-memory limit (raise LimitMEMLOCK= or ulimit -l)"
        }
        Some(libc::EMFILE) | Some(libc::ENFILE) => {
            "no file descriptor was left for the ring (raise LimitNOFILE= or ulimit -n)"
        }
        _ => "io_uring_setup failed",
    };
    let errno = e
        .raw_os_error()
        .map(|n| format!(", errno {n}"))
        .unwrap_or_default();
    io::Error::new(
        e.kind(),
        format!("io_uring is unavailable: {cause} ({e}{errno})"),
    )
}

/// Spawns a task on the current shard's runtime.
pub fn spawn<T: Future + 'static>(task: T) -> tokio::task::JoinHandle<T::Output> {
    tokio_uring::spawn(task)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn explain(errno: i32) -> String {
        uring_unavailable(io::Error::from_raw_os_error(errno)).to_string()
    }

    #[test]
    fn a_refused_setup_names_io_uring_the_causes_and_the_errno() {
        let msg = explain(libc::EPERM);
        assert!(msg.starts_with("io_uring is unavailable"), "{msg}");
        for part in [
            "seccomp",
            "deploy/docker/seccomp.json",
            "kernel.io_uring_disabled",
            "SystemCallFilter",
            "errno 1",
        ] {
            assert!(msg.contains(part), "{part} missing: {msg}");
        }
    }

    #[test]
    fn each_errno_gets_its_own_cause() {
        assert!(explain(libc::ENOSYS).contains("older than 5.10"));
        assert!(explain(libc::ENOSYS).contains("errno 38"));
        assert!(explain(libc::ENOMEM).contains("LimitMEMLOCK"));
        assert!(explain(libc::EMFILE).contains("LimitNOFILE"));
        let other = explain(libc::EINVAL);
        assert!(other.contains("io_uring is unavailable") && other.contains("errno 22"));
        // The kind survives, for callers that look at it.
        let e = uring_unavailable(io::Error::from_raw_os_error(libc::EPERM));
        assert_eq!(e.kind(), io::ErrorKind::PermissionDenied);
    }
}
