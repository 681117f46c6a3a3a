//! One refresh at a time, its outcome shared with the callers that waited for it: how an exec plugin
//! is run, an OIDC token refreshed and the shared HTTP/2 connection dialled. A burst of requests that
//! all find the cached value missing or stale starts one refresh, not one each; those that waited take
//! the refreshed value, or the refresh's failure instead of trying again in turn (N waiters on a hung
//! server would otherwise wait N bounds). Go's transport shares an in-flight dial the same way.

use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::{Mutex, MutexGuard};

/// The cell: held while a refresh runs, remembering how the last one failed.
pub(crate) struct SingleFlight<E> {
    /// The last refresh's failure (`None`: it succeeded, or none ran yet).
    last: Mutex<Option<E>>,
    /// Refreshes finished, to tell a caller whether one ended while it waited.
    runs: AtomicU64,
}

/// When a caller found the cached value unusable: taken before it looked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Ticket(u64);

/// What a caller that asked to refresh gets.
pub(crate) enum Begin<'a, T, E> {
    /// A refresh that ended while it waited made the cached value usable.
    Cached(T),
    /// A refresh that ended while it waited failed: its failure, shared.
    Failed(E),
    /// No refresh ended meanwhile: this caller refreshes, and reports with [`Flight::finish`].
    Refresh(Flight<'a, E>),
}

/// The right to refresh, held until [`Flight::finish`]. Dropped unfinished (the caller was
/// cancelled), it counts as no refresh: the next caller refreshes itself.
pub(crate) struct Flight<'a, E> {
    last: MutexGuard<'a, Option<E>>,
    runs: &'a AtomicU64,
}

impl<E> Default for SingleFlight<E> {
    fn default() -> Self {
        Self {
            last: Mutex::new(None),
            runs: AtomicU64::new(0),
        }
    }
}

impl<E: Clone> SingleFlight<E> {
    /// Take before looking at the cached value, so a refresh that ends after the look is noticed.
    pub(crate) fn ticket(&self) -> Ticket {
        Ticket(self.runs.load(Ordering::Acquire))
    }

    /// Waits for a refresh in flight, then: the cached value if `cached` now yields one, the failure of
    /// a refresh that ended since `ticket`, or the right to refresh.
    pub(crate) async fn begin<T>(
        &self,
        ticket: Ticket,
        cached: impl FnOnce() -> Option<T>,
    ) -> Begin<'_, T, E> {
        let last = self.last.lock().await;
        if let Some(value) = cached() {
            return Begin::Cached(value);
        }
        if self.runs.load(Ordering::Acquire) != ticket.0 {
            if let Some(failure) = last.as_ref() {
                return Begin::Failed(failure.clone());
            }
        }
        Begin::Refresh(Flight {
            last,
            runs: &self.runs,
        })
    }
}

impl<E> Flight<'_, E> {
    /// Ends the refresh; `failure` is what the callers that waited for it get (`None`: it succeeded,
    /// and they look at the cached value again).
    pub(crate) fn finish(mut self, failure: Option<E>) {
        *self.last = failure;
        self.runs.fetch_add(1, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::sync::Arc;

    /// Walks the cell's states: a refresh, a waiter sharing its value, a waiter sharing its failure, a
    /// later caller refreshing afresh, and a cancelled refresh that counts as none.
    #[tokio::test]
    async fn waiters_share_one_refresh_and_its_outcome() {
        let cell = Arc::new(SingleFlight::<String>::default());
        let value = Arc::new(std::sync::Mutex::new(None::<u32>));
        let refreshes = Arc::new(AtomicUsize::new(0));

        // A refresh that succeeds; a caller that waited on it takes the value without refreshing.
        let first = cell.ticket();
        let waiter = cell.ticket();
        let Begin::Refresh(flight) = cell.begin(first, || *value.lock().unwrap()).await else {
            panic!("the first caller refreshes");
        };
        let waiting = {
            let (cell, value) = (cell.clone(), value.clone());
            tokio::spawn(async move {
                match cell.begin(waiter, || *value.lock().unwrap()).await {
                    Begin::Cached(v) => Ok(v),
                    Begin::Failed(e) => Err(e),
                    Begin::Refresh(_) => Err("refreshed again".to_owned()),
                }
            })
        };
        tokio::task::yield_now().await;
        refreshes.fetch_add(1, Ordering::Relaxed);
        *value.lock().unwrap() = Some(7);
        flight.finish(None);
        assert_eq!(waiting.await.unwrap(), Ok(7));

        // The value goes stale; a refresh fails; the caller that waited gets that failure.
        *value.lock().unwrap() = None;
        let (failing, waiter) = (cell.ticket(), cell.ticket());
        let Begin::Refresh(flight) = cell.begin(failing, || *value.lock().unwrap()).await else {
            panic!("a stale value is refreshed");
        };
        let waiting = {
            let (cell, value) = (cell.clone(), value.clone());
            tokio::spawn(async move {
                matches!(cell.begin(waiter, || *value.lock().unwrap()).await, Begin::Failed(e) if e == "down")
            })
        };
        tokio::task::yield_now().await;
        flight.finish(Some("down".to_owned()));
        assert!(waiting.await.unwrap(), "the waiter shares the failure");

        // A caller that arrives after the failure refreshes itself.
        let later = cell.ticket();
        let Begin::Refresh(flight) = cell.begin(later, || *value.lock().unwrap()).await else {
            panic!("a caller after a failure refreshes afresh");
        };
        // Dropped unfinished: the next caller with the same ticket refreshes too.
        drop(flight);
        assert!(matches!(
            cell.begin(later, || *value.lock().unwrap()).await,
            Begin::Refresh(_)
        ));
        assert_eq!(refreshes.load(Ordering::Relaxed), 1);
    }
}
