//! The process's open-file and locked-memory limits. Every connection is one descriptor,
//! and the usual soft limit (1024) is far below `max_connections`; buffers registered with
//! io_uring are locked memory. The relay raises both soft limits to the hard ones at start —
//! what the hard limits are for.

use std::io;

/// The soft and hard `RLIMIT_NOFILE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FdLimit {
    pub soft: u64,
    pub hard: u64,
}

/// The open-file limit in force.
pub fn fd_limit() -> io::Result<FdLimit> {
    limit(libc::RLIMIT_NOFILE)
}

/// Raises the soft open-file limit to the hard limit; returns the limit then in force.
pub fn raise_fd_limit() -> io::Result<FdLimit> {
    raise(libc::RLIMIT_NOFILE)
}

/// Raises the soft locked-memory limit to the hard limit; returns the soft limit then in
/// force, in bytes (`None`: unlimited).
pub fn raise_memlock_limit() -> io::Result<Option<u64>> {
    let lim = raise(libc::RLIMIT_MEMLOCK)?;
    Ok((lim.soft != libc::RLIM_INFINITY).then_some(lim.soft))
}

/// Whether the process may lock memory past its limit (`CAP_IPC_LOCK` in its effective
/// set, as root normally has), from `/proc/self/status`.
pub fn may_exceed_memlock_limit() -> bool {
    const CAP_IPC_LOCK: u32 = 14;
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .is_some_and(|caps| caps & (1 << CAP_IPC_LOCK) != 0)
}

fn limit(resource: libc::__rlimit_resource_t) -> io::Result<FdLimit> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `getrlimit` writes one `rlimit` through the pointer, which points to a live
    // local.
    if unsafe { libc::getrlimit(resource, &mut lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(FdLimit {
        soft: lim.rlim_cur,
        hard: lim.rlim_max,
    })
}

fn raise(resource: libc::__rlimit_resource_t) -> io::Result<FdLimit> {
    let now = limit(resource)?;
    if now.soft >= now.hard {
        return Ok(now);
    }
    let lim = libc::rlimit {
        rlim_cur: now.hard,
        rlim_max: now.hard,
    };
    // SAFETY: `setrlimit` only reads the `rlimit` behind the pointer, a live local.
    if unsafe { libc::setrlimit(resource, &lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    limit(resource)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raising_leaves_soft_at_hard() {
        let before = fd_limit().unwrap();
        let after = raise_fd_limit().unwrap();
        assert_eq!(after.hard, before.hard);
        assert_eq!(after.soft, after.hard);
    }
}
