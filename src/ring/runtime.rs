//! Shard threads: each pinned to one core and running its own io_uring runtime.

use std::future::Future;

/// Submission queue entries per ring.
pub const RING_ENTRIES: u32 = 1024;

/// Spawns an OS thread named `name`, pins it to `core` (if that core exists) and runs `f`
/// to completion on a fresh io_uring runtime there. `ready` gets a message once the
/// runtime is up.
pub fn spawn_pinned<F, Fut>(
    name: String,
    core: Option<usize>,
    ready: std::sync::mpsc::Sender<()>,
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
            tokio_uring::builder()
                .entries(RING_ENTRIES)
                .start(async move {
                    let _ = ready.send(());
                    f().await
                });
        })
        .expect("spawn shard thread")
}

/// Spawns a task on the current shard's runtime.
pub fn spawn<T: Future + 'static>(task: T) -> tokio::task::JoinHandle<T::Output> {
    tokio_uring::spawn(task)
}
