//! A place in a bounded group, held for as long as the thing that needs it lives.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// A request's place in a bounded group (a lane, or the bulk connections), released on drop. Keep it as
/// long as the response body.
#[derive(Debug)]
pub struct Lease(Arc<AtomicUsize>);

impl Lease {
    /// Counts one more holder in `count`, which the lease decrements when dropped.
    pub fn take(count: &Arc<AtomicUsize>) -> Self {
        count.fetch_add(1, Ordering::AcqRel);
        Lease(count.clone())
    }

    /// A lease for a place already counted in `count` (by a compare-and-swap that checked the bound).
    pub fn counted(count: &Arc<AtomicUsize>) -> Self {
        Lease(count.clone())
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}
