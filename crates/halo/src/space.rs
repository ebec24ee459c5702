//! [`SpaceStateMachine`]: the membership of one space, decided the same way by every replica.
//!
//! Sans-IO: the layer above feeds it the space's control blocks (in causal order, from the feed
//! store's causal iterator) and asks it whether a block may be written; it does no IO, reads no
//! clock and starts no task.
//!
//! # How decisions are made
//!
//! The decision for every block is a function of the *set* of control blocks processed, never
//! of the order they arrived in:
//!
//! - Blocks are evaluated in the canonical order (Lamport time, feed key, seq), which extends
//!   causal order (a block whose Lamport time is not after its causal past is refused).
//! - A credential is judged against the fold of the valid credentials in its own causal past
//!   (those at positions its timeframe covers, plus its own feed's earlier blocks).
//! - Removals and revocations also apply outside their causal past, through their cutoffs: once
//!   known, a block of a cut-off feed past its cutoff is refused even if its writer never saw the
//!   removal. Which removals apply is settled by priority (issuer strength, Lamport time, keys):
//!   the strongest valid removal is applied first; a weaker one that would cut off a stronger one
//!   (or what it rests on) does not apply.
//!
//! When a block arrives whose decision could change earlier decisions (a removal, or a block
//! that sorts before blocks already evaluated), everything is evaluated again; otherwise only
//! the new block is. Either way the result is the same.

pub mod rules;
pub mod view;

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};

use crate::credential::{
    Assertion, Credential, CredentialId, CredentialKind, Cutoffs, Delegation, Designation, Role,
};
use crate::keys::PublicKey;
use crate::timeframe::{Seq, Timeframe};

pub use rules::{BlockKind, Refusal};
use view::{Applied, View};
pub use view::{DeviceInfo, DeviceSpaceFeeds, EpochInfo, FeedInfo, MemberInfo, Removal};

/// A block position: feed and sequence number.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Position {
    /// The feed.
    pub feed: PublicKey,
    /// The block's sequence number in it.
    pub seq: Seq,
}

impl fmt::Debug for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{:?}", self.feed.short(), self.seq)
    }
}

/// One control block, as the feed store's causal iterator delivers it.
#[derive(Clone, Copy, Debug)]
pub struct ControlBlock<'a> {
    /// The control feed.
    pub feed: PublicKey,
    /// The block's sequence number.
    pub seq: Seq,
    /// The block's Lamport time.
    pub lamport: u64,
    /// The writer's full timeframe when it wrote the block: what it had processed.
    pub timeframe: &'a Timeframe,
    /// One encoded credential.
    pub payload: &'a [u8],
}

/// The state machine's decision on one control block.
#[derive(Clone, Debug, PartialEq)]
pub enum Decision {
    /// The credential is valid.
    Accepted(CredentialId),
    /// The credential is refused, for this reason.
    Refused(Refusal),
}

/// A refused control block.
#[derive(Clone, Debug, PartialEq)]
pub struct Rejection {
    /// Where the block is.
    pub position: Position,
    /// The credential's id, when the payload decoded.
    pub credential: Option<CredentialId>,
    /// Why it was refused.
    pub reason: Refusal,
}

/// A block the state machine cannot take: the layer above broke the delivery contract.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DeliveryError {
    /// A control feed's blocks must arrive in sequence, from 0, without gaps.
    #[error("control feed {feed}: expected block {expected}, got block {got}")]
    OutOfSequence {
        /// The feed.
        feed: PublicKey,
        /// The next block expected.
        expected: Seq,
        /// The block delivered.
        got: Seq,
    },
    /// A different block was delivered at a position already processed (a fork: the feed store
    /// should have caught it).
    #[error("control feed {feed}: block {seq} differs from the block processed there before")]
    Conflicting {
        /// The feed.
        feed: PublicKey,
        /// The position.
        seq: Seq,
    },
}

/// Everything the state machine knows, as comparable plain data: two replicas that processed
/// the same control blocks have equal summaries.
#[derive(Clone, Debug, PartialEq)]
pub struct SpaceSummary {
    /// Current members, by identity.
    pub members: Vec<MemberInfo>,
    /// Removed members (not re-admitted), by identity.
    pub removed: Vec<Removal>,
    /// Admitted feeds, by feed key.
    pub feeds: Vec<FeedInfo>,
    /// The epoch sequence.
    pub epochs: Vec<EpochInfo>,
    /// (HALO space) The spaces the identity belongs to, with their genesis feeds.
    pub space_records: Vec<(PublicKey, Vec<PublicKey>)>,
    /// Every refused block, by position.
    pub rejected: Vec<Rejection>,
}

/// Conflict priority of a valid credential: issuer strength, then Lamport time, then the
/// issuer key, then the position. Greater wins.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Priority {
    strength: u8,
    lamport: u64,
    issuer: PublicKey,
    position: Position,
}

/// The causal past of a block: what its timeframe covers, and its own feed's earlier blocks.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Cut<'a> {
    pub(crate) timeframe: &'a Timeframe,
    pub(crate) feed: PublicKey,
    pub(crate) seq: Seq,
}

impl Cut<'_> {
    /// Whether the block at `position` is in this causal past.
    pub(crate) fn contains(&self, position: Position) -> bool {
        (position.feed == self.feed && position.seq < self.seq)
            || self.timeframe.covers(&position.feed, position.seq)
    }
}

/// A control block as stored: its place, and what its payload statically is.
#[derive(Debug)]
struct StoredBlock {
    position: Position,
    lamport: u64,
    timeframe: Timeframe,
    payload_hash: blake3::Hash,
    /// The credential, or why it is refused whatever else holds (boxed: rare, and large).
    parsed: Result<Arc<Parsed>, Box<Refusal>>,
}

#[derive(Debug)]
pub(crate) struct Parsed {
    credential: Credential,
    id: CredentialId,
    delegation: Delegation,
}

/// Decodes and verifies a control block's credential, from the process-wide memo when
/// [`share_parsed_credentials`] turned it on.
fn parse(payload: &[u8], hash: &blake3::Hash) -> Result<Arc<Parsed>, Box<Refusal>> {
    if let Some(parsed) = shared_parsed(hash) {
        return Ok(parsed);
    }
    let credential =
        Credential::from_bytes(payload).map_err(|e| Box::new(Refusal::Malformed(e)))?;
    let delegation = credential
        .verify()
        .map_err(|e| Box::new(Refusal::BadProof(e)))?;
    let parsed = Arc::new(Parsed {
        id: credential.id(),
        credential,
        delegation,
    });
    share_parsed(*hash, &parsed);
    Ok(parsed)
}

/// Credentials that decoded and verified, by the BLAKE3 hash of their bytes; `None` unless a
/// simulator turned sharing on.
static SHARED_PARSED: Mutex<Option<SharedParsed>> = Mutex::new(None);

struct SharedParsed {
    by_hash: HashMap<blake3::Hash, Arc<Parsed>>,
    /// How many to keep; when full, the shared set starts again empty.
    capacity: usize,
}

/// Makes every replica in this process share one decoded copy of each credential that decoded
/// and verified (at most `capacity`; when full, the shared set starts again empty).
///
/// **For simulators only**, like [`crate::keys::remember_verified_signatures`]: a thousand
/// simulated replicas each holding their own decoded copy of the same thousands of admission
/// credentials is gigabytes. Decoding and verifying is a pure function of the bytes, and the
/// decoded credential is immutable, so sharing it gives every replica what it would have
/// computed. Credentials that fail are never shared. A node serving real peers never calls it.
pub fn share_parsed_credentials(capacity: usize) {
    let mut shared = SHARED_PARSED.lock().unwrap_or_else(PoisonError::into_inner);
    *shared = Some(SharedParsed {
        by_hash: HashMap::new(),
        capacity: capacity.max(1),
    });
}

fn shared_parsed(hash: &blake3::Hash) -> Option<Arc<Parsed>> {
    SHARED_PARSED
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .as_ref()?
        .by_hash
        .get(hash)
        .cloned()
}

fn share_parsed(hash: blake3::Hash, parsed: &Arc<Parsed>) {
    let mut shared = SHARED_PARSED.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(shared) = shared.as_mut() {
        if shared.by_hash.len() >= shared.capacity {
            shared.by_hash.clear();
        }
        shared.by_hash.insert(hash, parsed.clone());
    }
}

impl StoredBlock {
    fn cut(&self) -> Cut<'_> {
        Cut {
            timeframe: &self.timeframe,
            feed: self.position.feed,
            seq: self.position.seq,
        }
    }

    fn removal_target(&self) -> Option<(CredentialKind, PublicKey, &Cutoffs)> {
        let parsed = self.parsed.as_ref().ok()?;
        match &parsed.credential.claim().assertion {
            Assertion::MemberRemoved { member, cutoffs } => {
                Some((CredentialKind::MemberRemoved, *member, cutoffs))
            }
            Assertion::DeviceRevoked {
                device, cutoffs, ..
            } => Some((CredentialKind::DeviceRevoked, *device, cutoffs)),
            _ => None,
        }
    }
}

/// The blocks of one control feed, by seq, with the running maximum of their Lamport times.
#[derive(Debug, Default)]
struct FeedBlocks {
    blocks: Vec<usize>,
    lamport_max: Vec<u64>,
}

/// A valid block's decision details.
#[derive(Clone, Copy, Debug)]
struct Valid {
    priority: Priority,
    /// The member and device owning the writing feed, in the block's causal past.
    writer: Option<(PublicKey, PublicKey)>,
}

/// A removal or revocation applied through its cutoffs.
#[derive(Clone, Debug)]
struct Filter {
    block: usize,
    device: bool,
    target: PublicKey,
    cutoffs: Cutoffs,
    by: CredentialId,
}

impl Filter {
    fn refusal(
        &self,
        position: Position,
        writer: Option<(PublicKey, PublicKey)>,
    ) -> Option<Refusal> {
        let cut = match self.cutoffs.get(&position.feed) {
            Some(cutoff) => position.seq > cutoff,
            None => writer.is_some_and(|(identity, device)| {
                self.target == if self.device { device } else { identity }
            }),
        };
        cut.then(|| Refusal::PastCutoff {
            feed: position.feed,
            seq: position.seq,
            cutoff: self.cutoffs.get(&position.feed),
            target: self.target,
            by: self.by,
        })
    }
}

/// One evaluation of every block.
#[derive(Debug, Default)]
struct Pass {
    decisions: Vec<Option<Result<Valid, Refusal>>>,
    /// Valid blocks in canonical order.
    valid: Vec<usize>,
    /// The greatest seq of a valid block in each control feed: a cut that contains these
    /// contains every valid block (causal pasts are closed downwards within a feed).
    valid_max: BTreeMap<PublicKey, Seq>,
    accepted: BTreeMap<CredentialId, Position>,
}

impl Pass {
    fn is_valid(&self, block: usize) -> bool {
        matches!(self.decisions.get(block), Some(Some(Ok(_))))
    }

    /// Records block `index` at `position` as valid, after the valid blocks before it.
    fn push_valid(&mut self, index: usize, position: Position, id: Option<CredentialId>) {
        let place = self.valid.len();
        self.insert_valid(place, index, position, id);
    }

    /// Records block `index` at `position` as valid, at `place` in the canonical order.
    fn insert_valid(
        &mut self,
        place: usize,
        index: usize,
        position: Position,
        id: Option<CredentialId>,
    ) {
        self.valid.insert(place, index);
        let max = self.valid_max.entry(position.feed).or_insert(position.seq);
        *max = (*max).max(position.seq);
        if let Some(id) = id {
            self.accepted.insert(id, position);
        }
    }

    /// Whether `cut` contains every valid block of this pass.
    fn within(&self, cut: &Cut<'_>) -> bool {
        self.valid_max.iter().all(|(feed, seq)| {
            cut.contains(Position {
                feed: *feed,
                seq: *seq,
            })
        })
    }
}

/// The membership state machine of one space. See the module documentation.
#[derive(Debug)]
pub struct SpaceStateMachine {
    space: PublicKey,
    blocks: Vec<StoredBlock>,
    feeds: BTreeMap<PublicKey, FeedBlocks>,
    /// Block indexes in canonical order.
    order: Vec<usize>,
    pass: Pass,
    filters: Vec<Filter>,
    excluded: BTreeSet<usize>,
    view: View,
    /// Full passes over every block so far (see [`SpaceStateMachine::recomputations`]).
    recomputations: u64,
}

impl SpaceStateMachine {
    /// The state machine of the space `space`, before any block.
    pub fn new(space: PublicKey) -> Self {
        Self {
            space,
            blocks: Vec::new(),
            feeds: BTreeMap::new(),
            order: Vec::new(),
            pass: Pass::default(),
            filters: Vec::new(),
            excluded: BTreeSet::new(),
            view: View::default(),
            recomputations: 0,
        }
    }

    /// How many times [`SpaceStateMachine::process`] decided every block again (a block that
    /// arrived out of canonical order, or a removal). While this count stays the same, a
    /// `process` call decided only its own block: earlier decisions did not change and admitted
    /// feeds were only added, so a caller can skip comparing [`SpaceStateMachine::rejected`]
    /// and [`SpaceStateMachine::feeds`] before and after (O(blocks) per control block).
    pub fn recomputations(&self) -> u64 {
        self.recomputations
    }

    /// How many feeds are admitted ([`SpaceStateMachine::feeds`]`.len()`, without the copy).
    pub fn feed_count(&self) -> usize {
        self.view.feeds.len()
    }

    /// The space key.
    pub fn space(&self) -> PublicKey {
        self.space
    }

    /// Processes one control block and returns its decision as of now. A later removal can still
    /// cut the block off (see [`SpaceStateMachine::decision`]); a refused block is recorded in
    /// [`SpaceStateMachine::rejected`] and changes nothing else.
    ///
    /// Delivering the same block twice is harmless.
    pub fn process(&mut self, block: ControlBlock<'_>) -> Result<Decision, DeliveryError> {
        let position = Position {
            feed: block.feed,
            seq: block.seq,
        };
        let payload_hash = blake3::hash(block.payload);
        let next = self
            .feeds
            .get(&block.feed)
            .map_or(0, |f| f.blocks.len() as u64);
        if block.seq.0 < next {
            let existing = self
                .feeds
                .get(&block.feed)
                .and_then(|f| f.blocks.get(block.seq.0 as usize))
                .copied();
            return match existing {
                Some(i) if self.blocks[i].payload_hash == payload_hash => Ok(self.decision_of(i)),
                _ => Err(DeliveryError::Conflicting {
                    feed: block.feed,
                    seq: block.seq,
                }),
            };
        }
        if block.seq.0 != next {
            return Err(DeliveryError::OutOfSequence {
                feed: block.feed,
                expected: Seq(next),
                got: block.seq,
            });
        }

        let parsed = parse(block.payload, &payload_hash);
        let index = self.blocks.len();
        let feed = self.feeds.entry(block.feed).or_default();
        let running = feed.lamport_max.last().copied().unwrap_or(0);
        feed.blocks.push(index);
        feed.lamport_max.push(running.max(block.lamport));
        // A block some earlier block claims to have seen arrived late: earlier decisions may
        // change.
        let seen_before = self
            .blocks
            .iter()
            .any(|b| b.timeframe.covers(&block.feed, block.seq));
        self.blocks.push(StoredBlock {
            position,
            lamport: block.lamport,
            timeframe: block.timeframe.clone(),
            payload_hash,
            parsed,
        });
        let key = |i: usize| {
            let b = &self.blocks[i];
            (b.lamport, b.position)
        };
        let place = self.order.partition_point(|&i| key(i) < key(index));
        let at_end = place == self.order.len();
        self.order.insert(place, index);

        let is_removal = self.blocks[index].removal_target().is_some();
        if at_end && !is_removal && !seen_before {
            self.pass.decisions.push(None);
            let decision = self.decide(
                index,
                &self.pass,
                Some(&self.view),
                &self.filters,
                &self.excluded,
            );
            if let Ok(valid) = &decision {
                self.apply_to(index, *valid);
            }
            self.pass.decisions[index] = Some(decision);
        } else if !is_removal && !seen_before && self.is_neutral(index) {
            self.decide_neutral_late(index);
        } else {
            self.recompute();
        }
        let decision = self.decision_of(index);
        match &decision {
            Decision::Accepted(id) => {
                tracing::debug!(?position, %id, "credential accepted");
            }
            Decision::Refused(reason) => {
                tracing::debug!(?position, %reason, "credential refused");
            }
        }
        Ok(decision)
    }

    /// May `feed` write a block of `kind` at `seq`, written at `timeframe`? Judged from the
    /// credentials in the timeframe's causal past, and the cutoffs of every removal known.
    pub fn check_write(
        &self,
        feed: &PublicKey,
        seq: Seq,
        timeframe: &Timeframe,
        kind: BlockKind,
    ) -> Result<(), Refusal> {
        self.check_write_in(feed, seq, timeframe, kind, Some(&self.view))
    }

    /// [`SpaceStateMachine::check_write`], with the current view when `whole` is given.
    fn check_write_in(
        &self,
        feed: &PublicKey,
        seq: Seq,
        timeframe: &Timeframe,
        kind: BlockKind,
        whole: Option<&View>,
    ) -> Result<(), Refusal> {
        let cut = Cut {
            timeframe,
            feed: *feed,
            seq,
        };
        let view = self.view_at(&cut, &self.pass, whole);
        let writer = view.feeds.get(feed).map(|f| (f.identity, f.device));
        let position = Position { feed: *feed, seq };
        // A data block an epoch covers is in that epoch's snapshot: only removals its issuer
        // knew of (in the epoch block's causal past) cut it off, so loading the snapshot and
        // replaying every block agree.
        let epoch = match kind {
            BlockKind::Data => self.first_epoch_covering(position),
            BlockKind::Credential(_) => None,
        };
        if let Some(refusal) = self
            .filters
            .iter()
            .filter(|f| {
                epoch.is_none_or(|e| self.blocks[e].cut().contains(self.blocks[f.block].position))
            })
            .find_map(|f| f.refusal(position, writer))
        {
            return Err(refusal);
        }
        rules::check_writer(&view, feed, kind)
    }

    /// The block index of the first epoch of the sequence whose cut covers `position`.
    fn first_epoch_covering(&self, position: Position) -> Option<usize> {
        let epoch = self
            .view
            .epochs
            .iter()
            .find(|e| e.timeframe.covers(&position.feed, position.seq))?;
        let at = self.pass.accepted.get(&epoch.credential)?;
        let index = self
            .feeds
            .get(&at.feed)?
            .blocks
            .get(usize::try_from(at.seq.0).ok()?)?;
        Some(*index)
    }

    /// The current decision on the control block at `position`, if it was processed.
    pub fn decision(&self, position: Position) -> Option<Decision> {
        let index = *self
            .feeds
            .get(&position.feed)?
            .blocks
            .get(usize::try_from(position.seq.0).ok()?)?;
        Some(self.decision_of(index))
    }

    /// The credential of the control block at `position`, if it was processed and decoded
    /// (whatever its decision), so a caller need not decode the payload again.
    pub fn credential_at(&self, position: Position) -> Option<&Credential> {
        let index = *self
            .feeds
            .get(&position.feed)?
            .blocks
            .get(usize::try_from(position.seq.0).ok()?)?;
        self.blocks
            .get(index)?
            .parsed
            .as_ref()
            .ok()
            .map(|parsed| &parsed.credential)
    }

    /// Whether the control block at `position` is among [`SpaceStateMachine::rejected`] (without
    /// listing them all).
    pub fn is_rejected(&self, position: Position) -> bool {
        self.feeds
            .get(&position.feed)
            .and_then(|feed| feed.blocks.get(usize::try_from(position.seq.0).ok()?))
            .is_some_and(|&index| matches!(self.pass.decisions.get(index), Some(Some(Err(_)))))
    }

    /// Current members (role and devices), by identity.
    pub fn members(&self) -> Vec<MemberInfo> {
        self.view.member_infos()
    }

    /// The current role of `identity` (`None`: not a member).
    pub fn role_of(&self, identity: &PublicKey) -> Option<Role> {
        self.view.role(identity)
    }

    /// The devices of `identity` known in the space.
    pub fn devices_of(&self, identity: &PublicKey) -> Vec<DeviceInfo> {
        self.view.device_infos_of(identity)
    }

    /// Admitted feeds, by feed key.
    pub fn feeds(&self) -> Vec<FeedInfo> {
        self.view.feeds.values().cloned().collect()
    }

    /// One admitted feed.
    pub fn feed_info(&self, feed: &PublicKey) -> Option<FeedInfo> {
        self.view.feeds.get(feed).cloned()
    }

    /// What an admitted feed carries.
    pub fn designation(&self, feed: &PublicKey) -> Option<Designation> {
        self.view.feeds.get(feed).map(|f| f.designation)
    }

    /// Removed members (not re-admitted since), by identity.
    pub fn removed(&self) -> Vec<Removal> {
        self.view.removed()
    }

    /// The epoch sequence.
    pub fn epochs(&self) -> &[EpochInfo] {
        &self.view.epochs
    }

    /// The display name of a member or device.
    pub fn display_name(&self, key: &PublicKey) -> Option<&str> {
        self.view.profiles.get(key).map(String::as_str)
    }

    /// (HALO space) The spaces the identity belongs to, with their genesis feeds. A record
    /// without genesis feeds says the identity left that space; such spaces are not listed.
    pub fn space_records(&self) -> Vec<(PublicKey, Vec<PublicKey>)> {
        self.view
            .space_records
            .iter()
            .filter(|(_, f)| !f.is_empty())
            .map(|(s, f)| (*s, f.clone()))
            .collect()
    }

    /// (HALO space) The requests of the identity's devices to be admitted to its spaces:
    /// `(device, space, control feed, data feed)`, in (device, space) order.
    pub fn device_space_feeds(&self) -> Vec<DeviceSpaceFeeds> {
        self.view
            .device_space_feeds
            .iter()
            .map(|((device, space), (control, data))| DeviceSpaceFeeds {
                device: *device,
                space: *space,
                control_feed: *control,
                data_feed: *data,
            })
            .collect()
    }

    /// Every refused control block with its reason, by position.
    pub fn rejected(&self) -> Vec<Rejection> {
        let mut rejected: Vec<Rejection> = self
            .blocks
            .iter()
            .enumerate()
            .filter_map(|(i, b)| match self.pass.decisions.get(i) {
                Some(Some(Err(reason))) => Some(Rejection {
                    position: b.position,
                    credential: b.parsed.as_ref().ok().map(|p| p.id),
                    reason: reason.clone(),
                }),
                _ => None,
            })
            .collect();
        rejected.sort_by_key(|r| r.position);
        rejected
    }

    /// Everything, as comparable data.
    pub fn summary(&self) -> SpaceSummary {
        SpaceSummary {
            members: self.members(),
            removed: self.removed(),
            feeds: self.feeds(),
            epochs: self.view.epochs.clone(),
            space_records: self.space_records(),
            rejected: self.rejected(),
        }
    }

    fn decision_of(&self, index: usize) -> Decision {
        match self.pass.decisions.get(index) {
            Some(Some(Ok(_))) => match &self.blocks[index].parsed {
                Ok(parsed) => Decision::Accepted(parsed.id),
                // A valid block always parsed; kept total rather than panicking.
                Err(reason) => Decision::Refused((**reason).clone()),
            },
            Some(Some(Err(reason))) => Decision::Refused(reason.clone()),
            _ => Decision::Refused(Refusal::NoGenesis {
                kind: CredentialKind::SpaceGenesis,
            }),
        }
    }

    /// The fold of the valid credentials (of `pass`) in `cut`.
    ///
    /// `whole` is the fold of every valid credential of `pass`, when the caller keeps it: a cut
    /// that contains them all (the usual case: a block written after its writer caught up) then
    /// costs one look per control feed instead of a fold over every credential.
    fn view_at<'v>(&self, cut: &Cut<'_>, pass: &Pass, whole: Option<&'v View>) -> Cow<'v, View> {
        if let Some(whole) = whole
            && pass.within(cut)
        {
            return Cow::Borrowed(whole);
        }
        let mut view = View::default();
        for &i in &pass.valid {
            let block = &self.blocks[i];
            if cut.contains(block.position)
                && let (Ok(parsed), Some(Some(Ok(valid)))) = (&block.parsed, pass.decisions.get(i))
            {
                view.apply(&applied(block, parsed, valid.priority));
            }
        }
        Cow::Owned(view)
    }

    /// Whether block `index` is a credential no other block's decision depends on, whatever
    /// its own: a profile (rules never read display names) that is not a copy of an accepted
    /// credential (which copy counts is decided by the canonical order over all blocks).
    fn is_neutral(&self, index: usize) -> bool {
        self.blocks[index].parsed.as_ref().is_ok_and(|parsed| {
            matches!(
                parsed.credential.claim().assertion,
                Assertion::MemberProfile { .. }
            ) && !self.pass.accepted.contains_key(&parsed.id)
        })
    }

    /// Decides a neutral block (see [`SpaceStateMachine::is_neutral`]) that arrived before
    /// blocks already decided in the canonical order (a concurrent write), without deciding
    /// everything again: no other decision changes, so the state is what a full pass gives
    /// once the block is judged from its causal past, put in its canonical place among the
    /// valid blocks, and folded into the view only if no later valid profile of its subject
    /// already holds the name. Many members writing profiles concurrently would otherwise
    /// cost a full pass each.
    fn decide_neutral_late(&mut self, index: usize) {
        self.pass.decisions.push(None);
        let decision = self.decide(index, &self.pass, None, &self.filters, &self.excluded);
        let block = &self.blocks[index];
        if let (Ok(valid), Ok(parsed)) = (&decision, &block.parsed) {
            let key = |i: usize| (self.blocks[i].lamport, self.blocks[i].position);
            let place = self.pass.valid.partition_point(|&i| key(i) < key(index));
            let subject = parsed.credential.claim().subject;
            let named_later = self.pass.valid[place..].iter().any(|&i| {
                self.blocks[i].parsed.as_ref().is_ok_and(|p| {
                    p.credential.claim().subject == subject
                        && matches!(
                            p.credential.claim().assertion,
                            Assertion::MemberProfile { .. }
                        )
                })
            });
            self.pass
                .insert_valid(place, index, block.position, Some(parsed.id));
            if !named_later {
                self.view.apply(&applied(block, parsed, valid.priority));
            }
        }
        self.pass.decisions[index] = Some(decision);
    }

    fn apply_to(&mut self, index: usize, valid: Valid) {
        let block = &self.blocks[index];
        let id = block.parsed.as_ref().ok().map(|p| p.id);
        self.pass.push_valid(index, block.position, id);
        if let Ok(parsed) = &block.parsed {
            self.view.apply(&applied(block, parsed, valid.priority));
        }
    }

    /// Judges block `index`, given the decisions of `pass` for every block before it in the
    /// canonical order; `whole` is the fold of every valid block of `pass`, when known.
    fn decide(
        &self,
        index: usize,
        pass: &Pass,
        whole: Option<&View>,
        filters: &[Filter],
        excluded: &BTreeSet<usize>,
    ) -> Result<Valid, Refusal> {
        let block = &self.blocks[index];
        let parsed = block.parsed.as_ref().map_err(|r| (**r).clone())?;
        let past = self.past_lamport(block);
        if past >= block.lamport {
            return Err(Refusal::LamportNotAfterPast {
                lamport: block.lamport,
                past,
            });
        }
        if excluded.contains(&index)
            && let Some((kind, target, _)) = block.removal_target()
        {
            return Err(Refusal::ConflictingRemoval { kind, target });
        }
        let cut = block.cut();
        let view = self.view_at(&cut, pass, whole);
        let writer = view
            .feeds
            .get(&block.position.feed)
            .map(|f| (f.identity, f.device));
        if let Some(refusal) = filters
            .iter()
            .filter(|f| f.block != index)
            .find_map(|f| f.refusal(block.position, writer))
        {
            return Err(refusal);
        }
        if let Some(first) = pass.accepted.get(&parsed.id) {
            return Err(Refusal::Replayed {
                id: parsed.id,
                first: *first,
            });
        }
        let strength = rules::validate(
            &self.space,
            &view,
            &parsed.credential,
            &parsed.delegation,
            block.position,
            &cut,
        )?;
        Ok(Valid {
            priority: Priority {
                strength,
                lamport: block.lamport,
                issuer: parsed.credential.claim().issuer,
                position: block.position,
            },
            writer,
        })
    }

    /// The greatest Lamport time among the control blocks in `block`'s causal past (0: none).
    fn past_lamport(&self, block: &StoredBlock) -> u64 {
        let at = |feed: &PublicKey, seq: Seq| -> u64 {
            let Some(blocks) = self.feeds.get(feed) else {
                return 0;
            };
            let last = usize::try_from(seq.0).unwrap_or(usize::MAX);
            let last = last.min(blocks.lamport_max.len().saturating_sub(1));
            blocks.lamport_max.get(last).copied().unwrap_or(0)
        };
        let own = block
            .position
            .seq
            .0
            .checked_sub(1)
            .map_or(0, |prev| at(&block.position.feed, Seq(prev)));
        block
            .timeframe
            .iter()
            .map(|(feed, seq)| {
                if *feed == block.position.feed && *seq >= block.position.seq {
                    // A timeframe may name the writer's own feed; only earlier blocks count.
                    own
                } else {
                    at(feed, *seq)
                }
            })
            .fold(own, u64::max)
    }

    /// Evaluates every block in canonical order.
    fn evaluate(&self, filters: &[Filter], excluded: &BTreeSet<usize>) -> Pass {
        self.evaluate_in(filters, excluded, true)
    }

    /// [`SpaceStateMachine::evaluate`]; `keep_whole` keeps the fold of the valid blocks so far
    /// to judge blocks that see all of them (without it every view is folded afresh).
    fn evaluate_in(
        &self,
        filters: &[Filter],
        excluded: &BTreeSet<usize>,
        keep_whole: bool,
    ) -> Pass {
        let mut pass = Pass {
            decisions: vec![None; self.blocks.len()],
            ..Pass::default()
        };
        // The fold of the valid blocks so far, kept alongside: most blocks see all of them.
        let mut whole = View::default();
        for &index in &self.order {
            let decision = self.decide(
                index,
                &pass,
                keep_whole.then_some(&whole),
                filters,
                excluded,
            );
            if let Ok(valid) = &decision {
                let block = &self.blocks[index];
                let parsed = block.parsed.as_ref().ok();
                pass.push_valid(index, block.position, parsed.map(|p| p.id));
                if let Some(parsed) = parsed {
                    whole.apply(&applied(block, parsed, valid.priority));
                }
            }
            pass.decisions[index] = Some(decision);
        }
        pass
    }

    fn filter_of(&self, index: usize) -> Option<Filter> {
        let block = &self.blocks[index];
        let (kind, target, cutoffs) = block.removal_target()?;
        let by = block.parsed.as_ref().ok()?.id;
        Some(Filter {
            block: index,
            device: kind == CredentialKind::DeviceRevoked,
            target,
            cutoffs: cutoffs.clone(),
            by,
        })
    }

    fn priority_of(pass: &Pass, index: usize) -> Option<Priority> {
        match pass.decisions.get(index) {
            Some(Some(Ok(valid))) => Some(valid.priority),
            _ => None,
        }
    }

    /// Evaluates everything again, settling which removals apply: the strongest valid removal
    /// not yet applied is applied next; one that would invalidate an applied removal is
    /// excluded (refused) and the settling starts over without it. Terminates: each round
    /// applies or excludes one removal.
    fn recompute(&mut self) {
        self.recomputations += 1;
        let mut excluded = BTreeSet::new();
        'restart: loop {
            let mut filters: Vec<Filter> = Vec::new();
            let mut pass = self.evaluate(&filters, &excluded);
            // Whether a removal was applied without evaluating again: validity is unchanged, but
            // blocks refused for another reason may now be past a cutoff, and the reason given
            // must not depend on the path taken.
            let mut reasons_stale = false;
            loop {
                let candidate = pass
                    .valid
                    .iter()
                    .copied()
                    .filter(|i| !filters.iter().any(|f| f.block == *i))
                    .filter_map(|i| self.filter_of(i).map(|f| (i, f)))
                    .max_by_key(|(i, _)| Self::priority_of(&pass, *i));
                let Some((index, filter)) = candidate else {
                    if reasons_stale {
                        pass = self.evaluate(&filters, &excluded);
                    }
                    self.install(pass, filters, excluded);
                    return;
                };
                let cuts_something = pass.valid.iter().any(|&i| {
                    i != index
                        && match &pass.decisions[i] {
                            Some(Ok(valid)) => filter
                                .refusal(self.blocks[i].position, valid.writer)
                                .is_some(),
                            _ => false,
                        }
                });
                if !cuts_something {
                    // Applying it changes no block's validity: no need to evaluate again yet.
                    filters.push(filter);
                    reasons_stale = true;
                    continue;
                }
                let mut trial_filters = filters.clone();
                trial_filters.push(filter);
                let trial = self.evaluate(&trial_filters, &excluded);
                if trial_filters.iter().all(|f| trial.is_valid(f.block)) {
                    filters = trial_filters;
                    pass = trial;
                    reasons_stale = false;
                } else {
                    excluded.insert(index);
                    continue 'restart;
                }
            }
        }
    }

    fn install(&mut self, pass: Pass, filters: Vec<Filter>, excluded: BTreeSet<usize>) {
        let mut view = View::default();
        for &i in &pass.valid {
            if let (Ok(parsed), Some(Some(Ok(valid)))) =
                (&self.blocks[i].parsed, pass.decisions.get(i))
            {
                view.apply(&applied(&self.blocks[i], parsed, valid.priority));
            }
        }
        self.view = view;
        self.pass = pass;
        self.filters = filters;
        self.excluded = excluded;
    }
}

fn applied<'a>(block: &'a StoredBlock, parsed: &'a Parsed, priority: Priority) -> Applied<'a> {
    Applied {
        assertion: &parsed.credential.claim().assertion,
        subject: parsed.credential.claim().subject,
        id: parsed.id,
        position: block.position,
        cut: block.cut(),
        priority,
    }
}

#[cfg(test)]
mod convergence_tests;
#[cfg(test)]
mod testkit;
#[cfg(test)]
mod tests;
