//! The simulated network: links of the overlay, stream directions with latency, bandwidth and
//! back-pressure, and the event queue ordered by (virtual time, sequence number).

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use bytes::Bytes;

/// Virtual time in microseconds since the start of the run.
pub type Micros = u64;

/// Microseconds per millisecond.
pub const MS: Micros = 1000;

/// What happens at a point of virtual time.
#[derive(Debug)]
pub enum Event {
    /// A peer writes (and schedules its next write).
    Write(usize),
    /// A frame arrives at end `to` (0 = opener, 1 = acceptor) of a replication connection.
    Deliver {
        /// Connection id.
        conn: u64,
        /// Receiving end.
        to: usize,
        /// The frame.
        frame: Bytes,
    },
    /// A peer's driver handles what arrived since its last batch: runs the pipeline and tells
    /// the sessions of new blocks.
    Settle(usize),
    /// A connection breaks (a lost frame on a reliable stream).
    Reset(u64),
    /// A link tries to connect.
    Connect(usize),
    /// A peer goes offline until the given time.
    Offline(usize, Micros),
    /// A peer comes back.
    Online(usize),
    /// Index of a timeline event of the scenario.
    Timeline(usize),
    /// The next churn departure.
    Churn,
    /// Peer 0 invites the guest peer.
    Invite(usize),
    /// An invitation frame arrives (`to_guest`: at the guest, else at the host).
    InviteDeliver {
        /// Invitation index.
        invite: usize,
        /// Direction.
        to_guest: bool,
        /// The frame.
        frame: Bytes,
    },
}

struct Entry {
    at: Micros,
    seq: u64,
    event: Event,
}

impl PartialEq for Entry {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Entry {}
impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Entry {
    fn cmp(&self, other: &Self) -> Ordering {
        // Reversed: the heap pops the earliest (time, sequence) first.
        (other.at, other.seq).cmp(&(self.at, self.seq))
    }
}

/// The event queue: earliest first, ties broken by insertion order, so the order never
/// depends on anything but the run's own choices.
#[derive(Default)]
pub struct Queue {
    heap: BinaryHeap<Entry>,
    seq: u64,
}

impl std::fmt::Debug for Queue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queue")
            .field("len", &self.heap.len())
            .finish()
    }
}

impl Queue {
    /// Schedules `event` at `at`.
    pub fn push(&mut self, at: Micros, event: Event) {
        self.seq += 1;
        self.heap.push(Entry {
            at,
            seq: self.seq,
            event,
        });
    }

    /// The earliest event.
    pub fn pop(&mut self) -> Option<(Micros, Event)> {
        self.heap.pop().map(|e| (e.at, e.event))
    }

    /// Events waiting.
    pub fn len(&self) -> usize {
        self.heap.len()
    }

    /// Whether nothing is waiting.
    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }
}

/// One direction of a stream: a sender's serialisation queue and its in-flight bytes.
#[derive(Debug, Default, Clone)]
pub struct Direction {
    /// Bytes sent and not yet delivered (bounded by the window).
    pub in_flight: usize,
    /// When the sender's link is free again (bandwidth).
    pub busy_until: Micros,
    /// Arrival of the last frame (a stream delivers in order).
    pub last_arrival: Micros,
}

impl Direction {
    /// Whether the stream can take another frame now.
    pub fn can_send(&self, window: usize) -> bool {
        self.in_flight < window
    }

    /// Sends `len` bytes at `now`; returns the arrival time.
    pub fn send(
        &mut self,
        now: Micros,
        len: usize,
        bandwidth_kbps: u64,
        latency: Micros,
    ) -> Micros {
        // kbps = bits per ms; bytes * 8 / kbps ms = bytes * 8000 / kbps µs.
        let transfer = (len as u64).saturating_mul(8000) / bandwidth_kbps.max(1);
        let start = self.busy_until.max(now);
        self.busy_until = start + transfer;
        let arrival = (self.busy_until + latency).max(self.last_arrival);
        self.last_arrival = arrival;
        self.in_flight += len;
        arrival
    }
}
