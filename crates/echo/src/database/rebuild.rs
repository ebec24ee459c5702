//! Rebuilding objects from a subset of their history: what the space pipeline does when a
//! removal's cutoff invalidates blocks that were already applied (or a settled conflict makes
//! refused blocks valid again).

use std::collections::{BTreeMap, BTreeSet};

use echodb_proto::db::Mutations;

use crate::database::record::IndexEntries;
use crate::database::{
    BlockOrigin, Change, Database, Names, ObjectView, OldEntries, TouchState, Touched, check_op,
};
use crate::id::ObjectId;
use crate::subscription::Event;

/// What a rebuild did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RebuildReport {
    /// Objects whose state changed (vanished objects are reported `deleted`).
    pub changes: Vec<Change>,
    /// Objects that no longer exist: no valid block creates them any more.
    pub vanished: Vec<ObjectId>,
    /// Blocks given that are malformed as a whole; nothing of them was applied.
    pub malformed: Vec<(BlockOrigin, String)>,
}

impl Database {
    /// Forgets the objects `ids` and builds them again from `blocks`, which must be every
    /// still-valid block touching them, in causal order; only the mutations of `ids` are
    /// applied. Other objects are untouched. Subscriptions see the net change.
    ///
    /// Deterministic: the result depends only on the blocks given (like [`Database::apply`]).
    pub fn rebuild_objects(
        &mut self,
        ids: &BTreeSet<ObjectId>,
        blocks: impl IntoIterator<Item = (BlockOrigin, Mutations)>,
    ) -> RebuildReport {
        self.rebuild_objects_on(ids, &[], blocks)
    }

    /// [`Database::rebuild_objects`] starting from `base`: the objects as a snapshot held them
    /// (the space was loaded from it), `blocks` being the later ones.
    pub(crate) fn rebuild_objects_on(
        &mut self,
        ids: &BTreeSet<ObjectId>,
        base: &[echodb_proto::epoch::SnapshotObject],
        blocks: impl IntoIterator<Item = (BlockOrigin, Mutations)>,
    ) -> RebuildReport {
        let mut touched = Touched::default();
        let mut before: BTreeMap<ObjectId, ObjectView> = BTreeMap::new();
        for id in ids {
            if let Some(view) = self.view(*id) {
                before.insert(*id, view);
            }
            touched.state_eager(self, *id);
            self.objects.remove(id);
            self.docs.forget(id);
            if let Some(waiting) = self.parked.remove(id) {
                self.parked_len -= waiting.len();
            }
        }
        let mut report = RebuildReport::default();
        if let Err(reason) = self.restore_base(ids, base) {
            // The base was checked when the space was loaded from it; kept total.
            tracing::error!(%reason, "snapshot base of rebuilt objects does not read");
        }
        for (origin, mutations) in blocks {
            let mut ops = Vec::new();
            let mut bad = None;
            let mut names = Names::default();
            for (index, m) in mutations.mutations.iter().enumerate() {
                match check_op(m, &mut names) {
                    Ok((id, op)) => {
                        if ids.contains(&id) {
                            ops.push((index, id, op));
                        }
                    }
                    Err(reason) => {
                        bad = Some(format!("mutation {index}: {reason}"));
                        break;
                    }
                }
            }
            if let Some(reason) = bad {
                report.malformed.push((origin, reason));
                continue;
            }
            for (index, id, op) in ops {
                let Ok(index32) = u32::try_from(index) else {
                    break;
                };
                if let Err(reason) = self.apply_op(id, origin.stamp(index32), op, &mut touched) {
                    self.refuse(origin, Some(index), reason);
                }
            }
        }
        // Objects that exist again are changed, not created, for whoever saw them before;
        // their content is re-read in any case.
        for id in ids {
            let exists = self.objects.contains_key(id);
            let state = touched.state(self, *id);
            if before.contains_key(id) {
                state.created = false;
            }
            state.content |= exists;
            state.whole |= exists;
        }
        let mut vanished = Vec::new();
        for id in ids {
            if self.objects.contains_key(id) {
                continue;
            }
            if let Some(TouchState {
                old: OldEntries::Entries(old),
                ..
            }) = touched.take(id)
            {
                self.indexes.update(*id, &old, &IndexEntries::default());
            }
            if before.contains_key(id) {
                vanished.push(*id);
            }
        }
        // Before `finish`, whose notification re-runs queries and would drop vanished objects
        // from results without an event.
        if !vanished.is_empty() {
            self.notify_vanished(&vanished, &before);
        }
        report.changes = self.finish(touched);
        if !vanished.is_empty() {
            report.changes.extend(vanished.iter().map(|id| Change {
                id: *id,
                created: false,
                content: true,
                parent: false,
                deleted: true,
            }));
        }
        report.vanished = vanished;
        report
    }

    /// Tells subscriptions that held a vanished object that it left their result.
    fn notify_vanished(&mut self, vanished: &[ObjectId], before: &BTreeMap<ObjectId, ObjectView>) {
        let gone: BTreeSet<ObjectId> = vanished.iter().copied().collect();
        let mut live = std::mem::take(&mut self.subscriptions.live);
        for sub in live.values_mut() {
            if !sub.last.iter().any(|id| gone.contains(id)) {
                continue;
            }
            sub.last.retain(|id| !gone.contains(id));
            for id in vanished {
                if let Some(view) = before.get(id) {
                    let mut object = view.clone();
                    object.deleted = true;
                    if sub.queue.len() >= sub.capacity {
                        let result = sub.last.iter().filter_map(|id| self.view(*id)).collect();
                        sub.queue.clear();
                        sub.queue.push_back(Event::Reset { result });
                    } else {
                        sub.queue.push_back(Event::Removed { object });
                    }
                }
            }
        }
        self.subscriptions.live = live;
    }
}
