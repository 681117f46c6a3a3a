//! The connections that carry long-running requests (watches, followed logs): extra HTTP/2
//! connections ("lanes"), each filled up to the stream limit its server announced (see the
//! [`upstream`](super) module doc).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use crate::base::lease::Lease;
use crate::upstream::shared::Shared;

/// Long-running requests per lane until the lane's server has shown its own limit: below the 100
/// concurrent streams RFC 9113 recommends servers allow, with room for a server configured lower.
pub const STREAMS_PER_LANE: usize = 64;

/// Long-running requests per lane at most, whatever the server allows: Go's default server limit. More
/// streams per connection save connections (about 60 KiB each in kproxy, and a connection on the API
/// server) but put more watches behind one TCP connection's losses.
pub const MAX_STREAMS_PER_LANE: usize = 250;

/// The connections that carry long-running requests, each filled up to its server's stream limit (see
/// the module doc).
pub struct StreamLanes {
    /// Builds the client of a new lane; the same constructor as the ordinary client, so lanes dial the
    /// API server exactly as ordinary requests do.
    make: Box<dyn Fn() -> Shared + Send + Sync>,
    lanes: Mutex<Vec<Lane>>,
}

struct Lane {
    client: Arc<Shared>,
    /// Long-running requests on this lane, from dispatch until their response body is dropped.
    open: Arc<AtomicUsize>,
}

impl Lane {
    /// How many long-running requests this lane takes: the server's limit as this lane has seen it, or
    /// as another lane (`known`) has; at most [`MAX_STREAMS_PER_LANE`], and [`STREAMS_PER_LANE`] until
    /// some lane has seen it.
    fn capacity(&self, known: Option<usize>) -> usize {
        self.client
            .stream_limit()
            .or(known)
            .map_or(STREAMS_PER_LANE, |n| n.min(MAX_STREAMS_PER_LANE))
    }
}

impl StreamLanes {
    /// Lanes whose clients come from `make`.
    pub fn new(make: impl Fn() -> Shared + Send + Sync + 'static) -> Self {
        Self {
            make: Box::new(make),
            lanes: Mutex::new(Vec::new()),
        }
    }

    /// A client for one more long-running request, and the lease that counts it. Fills lanes in order,
    /// so few connections are used, and opens a lane when all are full. Lanes left empty at the end of
    /// the list are closed (their connection goes with their pool), except the first.
    pub fn acquire(&self) -> (Arc<Shared>, Lease) {
        let mut lanes = self.lanes.lock().unwrap_or_else(|e| e.into_inner());
        while lanes.len() > 1
            && lanes
                .last()
                .is_some_and(|l| l.open.load(Ordering::Acquire) == 0)
        {
            lanes.pop();
        }
        // Every lane goes to the same server: a limit one lane has seen holds for the others.
        let known = lanes.iter().find_map(|l| l.client.stream_limit());
        let index = match lanes
            .iter()
            .position(|l| l.open.load(Ordering::Acquire) < l.capacity(known))
        {
            Some(i) => i,
            None => {
                lanes.push(Lane {
                    client: Arc::new((self.make)()),
                    open: Arc::new(AtomicUsize::new(0)),
                });
                lanes.len() - 1
            }
        };
        let lane = &lanes[index];
        (lane.client.clone(), Lease::take(&lane.open))
    }
}
