//! The open-file limit. Every Go program raises its soft `RLIMIT_NOFILE` to the hard limit at start
//! (Go 1.19, `syscall` package init), so `kubectl proxy` started from a login shell with the usual soft
//! limit of 1,024 can still hold thousands of client and upstream connections. kproxy does the same.
//!
//! Through `rustix` (already the dependency for `--exec`'s signal forwarding): `getrlimit`/`setrlimit`
//! need `unsafe` FFI, which this crate forbids.

use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};

/// `RLIM_INFINITY` as a number, the way `getrlimit(2)` reports it.
const UNLIMITED: u64 = u64::MAX;

/// The soft and hard open-file limits before and after [`raise_soft_to_hard`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenFiles {
    /// The soft limit found at start.
    pub before: u64,
    /// The soft limit now in force.
    pub soft: u64,
    /// The hard limit (the ceiling for the soft one).
    pub hard: u64,
}

/// Raises the soft open-file limit to the hard one, as Go does. When the hard limit is unlimited,
/// Linux refuses it as a soft limit; then the kernel's per-process maximum (`fs.nr_open`) is used.
/// Failure leaves the limit as it was: kproxy runs, with fewer connections possible.
pub fn raise_soft_to_hard() -> std::io::Result<OpenFiles> {
    let Rlimit { current, maximum } = getrlimit(Resource::Nofile);
    let (before, hard) = (current.unwrap_or(UNLIMITED), maximum.unwrap_or(UNLIMITED));
    let set = |soft: u64| {
        let limit = |n: u64| (n != UNLIMITED).then_some(n);
        setrlimit(
            Resource::Nofile,
            Rlimit {
                current: limit(soft),
                maximum: limit(hard),
            },
        )
        .map_err(std::io::Error::from)
    };
    if before >= hard {
        return Ok(OpenFiles {
            before,
            soft: before,
            hard,
        });
    }
    let soft = match set(hard) {
        Ok(()) => hard,
        Err(e) => {
            let nr_open = std::fs::read_to_string("/proc/sys/fs/nr_open")
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
                .filter(|n| *n > before && *n < hard)
                .ok_or(e)?;
            set(nr_open)?;
            nr_open
        }
    };
    Ok(OpenFiles { before, soft, hard })
}
