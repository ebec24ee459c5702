//! Live queries and object watches, without IO: the database feeds every applied change in, and
//! the owner polls each subscription's bounded queue of events.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use crate::database::ObjectView;
use crate::id::ObjectId;
use crate::query::Query;

/// Names one subscription of a database.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SubscriptionId(pub(crate) u64);

/// A change to a live query's result, in commit order.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// The object now matches the query.
    Added {
        /// The object as it is now.
        object: ObjectView,
    },
    /// A matching object changed and still matches.
    Updated {
        /// The object as it is now.
        object: ObjectView,
    },
    /// The object no longer matches (changed, deleted, or pushed out by limit/offset).
    Removed {
        /// The object as it is now.
        object: ObjectView,
    },
    /// The subscriber fell behind: its queue overflowed and was replaced by the whole current
    /// result; events continue from here.
    Reset {
        /// The query's current result.
        result: Vec<ObjectView>,
    },
}

#[derive(Debug)]
pub(crate) struct Subscription {
    pub(crate) query: Query,
    /// The ids of the last result, in order.
    pub(crate) last: Vec<ObjectId>,
    pub(crate) queue: VecDeque<Event>,
    pub(crate) capacity: usize,
}

#[derive(Debug, Default)]
pub(crate) struct Subscriptions {
    pub(crate) next: u64,
    pub(crate) live: BTreeMap<SubscriptionId, Subscription>,
}

impl Subscription {
    /// Compares the new result with the last one and queues the events; `changed` are the
    /// objects touched by the commit. `view` reads an object as it is now.
    pub(crate) fn advance(
        &mut self,
        result: Vec<ObjectId>,
        changed: &BTreeSet<ObjectId>,
        view: impl Fn(ObjectId) -> Option<ObjectView>,
    ) {
        let before: BTreeSet<ObjectId> = self.last.iter().copied().collect();
        let after: BTreeSet<ObjectId> = result.iter().copied().collect();
        let mut events = Vec::new();
        for id in &self.last {
            if !after.contains(id)
                && let Some(object) = view(*id)
            {
                events.push(Event::Removed { object });
            }
        }
        for id in &result {
            let Some(object) = view(*id) else { continue };
            if !before.contains(id) {
                events.push(Event::Added { object });
            } else if changed.contains(id) {
                events.push(Event::Updated { object });
            }
        }
        self.last = result;
        if self.queue.len() + events.len() > self.capacity {
            self.queue.clear();
            let result = self.last.iter().filter_map(|id| view(*id)).collect();
            self.queue.push_back(Event::Reset { result });
        } else {
            self.queue.extend(events);
        }
    }
}
