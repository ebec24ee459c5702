//! A simulated space for tests: identities with devices, each device writing a control feed
//! and a data feed with honest timeframes and Lamport times, syncing with other devices; and
//! replicas fed the resulting control blocks in any causal order.

use crate::credential::{
    Assertion, Claim, Credential, CredentialKind, Cutoffs, Designation, Role, Timestamp,
};
use crate::genesis::{MemberFeeds, SpaceCreator, create_space};
use crate::identity::DeviceSigner;
use crate::keys::{KeyPair, PublicKey, Signer as _};
use crate::timeframe::{Seq, Timeframe};

use super::{BlockKind, ControlBlock, Decision, Position, Refusal, SpaceStateMachine};

/// A control block as written.
#[derive(Clone, Debug)]
pub(crate) struct Block {
    pub(crate) feed: PublicKey,
    pub(crate) seq: Seq,
    pub(crate) lamport: u64,
    pub(crate) timeframe: Timeframe,
    pub(crate) payload: Vec<u8>,
}

impl Block {
    pub(crate) fn position(&self) -> Position {
        Position {
            feed: self.feed,
            seq: self.seq,
        }
    }
}

/// A data block as written (only its place and timeframe matter here).
#[derive(Clone, Debug)]
pub(crate) struct Write {
    pub(crate) feed: PublicKey,
    pub(crate) seq: Seq,
    pub(crate) timeframe: Timeframe,
}

/// One device: its keys, feeds and what it has processed.
#[derive(Debug)]
pub(crate) struct Dev {
    pub(crate) identity: usize,
    pub(crate) signer: DeviceSigner,
    pub(crate) feeds: MemberFeeds,
    pub(crate) known: Timeframe,
    pub(crate) lamport: u64,
    next_control: u64,
    next_data: u64,
}

impl Dev {
    pub(crate) fn key(&self) -> PublicKey {
        self.signer.device_key()
    }
}

/// The simulated space.
#[derive(Debug)]
pub(crate) struct World {
    pub(crate) space: PublicKey,
    pub(crate) identities: Vec<KeyPair>,
    pub(crate) devs: Vec<Dev>,
    pub(crate) blocks: Vec<Block>,
    pub(crate) writes: Vec<Write>,
}

fn pair(tag: u8, a: usize, b: usize) -> KeyPair {
    let mut seed = [0u8; 32];
    seed[0] = tag;
    seed[1] = a as u8;
    seed[2] = b as u8;
    KeyPair::from_seed(seed)
}

/// Device index of device `d` of identity `i`.
pub(crate) fn dev(i: usize, d: usize) -> usize {
    i * 2 + d
}

impl World {
    /// `identities` identities with two devices each (`dev(i, 0)` and `dev(i, 1)`); identity 0
    /// creates the space from its device 0. Nobody else is admitted yet.
    pub(crate) fn new(identities: usize) -> Self {
        let ids: Vec<KeyPair> = (0..identities).map(|i| pair(1, i, 0)).collect();
        let halo = pair(9, 0, 0).public_key();
        let mut devs = Vec::new();
        for (i, identity) in ids.iter().enumerate() {
            for d in 0..2 {
                let device = pair(2, i, d);
                let link = Claim {
                    space: halo,
                    issuer: identity.public_key(),
                    subject: device.public_key(),
                    issued_at: Timestamp(0),
                    parents: vec![],
                    assertion: Assertion::AuthorizedDevice {
                        identity: identity.public_key(),
                        device: device.public_key(),
                    },
                }
                .sign(identity);
                devs.push(Dev {
                    identity: i,
                    signer: DeviceSigner::new(identity.public_key(), device, vec![link]),
                    feeds: MemberFeeds {
                        control: pair(3, i, d).public_key(),
                        data: pair(4, i, d).public_key(),
                    },
                    known: Timeframe::new(),
                    lamport: 0,
                    next_control: 0,
                    next_data: 0,
                });
            }
        }
        let creator = SpaceCreator {
            identity: ids[0].public_key(),
            device: devs[0].key(),
            feeds: devs[0].feeds,
        };
        let genesis = create_space(pair(5, 0, 0), creator, Timestamp(1));
        let mut world = World {
            space: genesis.space,
            identities: ids,
            devs,
            blocks: Vec::new(),
            writes: Vec::new(),
        };
        for credential in genesis.credentials {
            world.write(0, &credential);
        }
        world
    }

    pub(crate) fn identity(&self, i: usize) -> PublicKey {
        self.identities[i].public_key()
    }

    /// A claim issued by device `d`'s identity through device `d`.
    pub(crate) fn issue(&self, d: usize, subject: PublicKey, assertion: Assertion) -> Credential {
        Claim {
            space: self.space,
            issuer: self.identity(self.devs[d].identity),
            subject,
            // Distinct per write, so two equal claims are never a replay by accident.
            issued_at: Timestamp(self.blocks.len() as u64 + 100),
            parents: vec![],
            assertion,
        }
        .sign(&self.devs[d].signer)
    }

    /// Device `d` appends `credential` to its control feed.
    pub(crate) fn write(&mut self, d: usize, credential: &Credential) -> Position {
        self.write_raw(d, credential.to_bytes())
    }

    /// Device `d` appends raw bytes to its control feed.
    pub(crate) fn write_raw(&mut self, d: usize, payload: Vec<u8>) -> Position {
        let dev = &mut self.devs[d];
        let seq = Seq(dev.next_control);
        dev.next_control += 1;
        dev.lamport += 1;
        let block = Block {
            feed: dev.feeds.control,
            seq,
            lamport: dev.lamport,
            timeframe: dev.known.clone(),
            payload,
        };
        dev.known.advance(dev.feeds.control, seq);
        let position = block.position();
        self.blocks.push(block);
        position
    }

    /// Device `d` appends a data block; returns its index in `writes`.
    pub(crate) fn write_data(&mut self, d: usize) -> usize {
        let dev = &mut self.devs[d];
        let seq = Seq(dev.next_data);
        dev.next_data += 1;
        dev.lamport += 1;
        self.writes.push(Write {
            feed: dev.feeds.data,
            seq,
            timeframe: dev.known.clone(),
        });
        dev.known.advance(dev.feeds.data, seq);
        self.writes.len() - 1
    }

    /// Device `to` learns everything device `from` has processed.
    pub(crate) fn sync(&mut self, to: usize, from: usize) {
        let known = self.devs[from].known.clone();
        let lamport = self.devs[from].lamport;
        let dev = &mut self.devs[to];
        dev.known.merge(&known);
        dev.lamport = dev.lamport.max(lamport);
    }

    /// Every device learns everything.
    pub(crate) fn sync_all(&mut self) {
        for _ in 0..2 {
            for a in 0..self.devs.len() {
                for b in 0..self.devs.len() {
                    self.sync(a, b);
                }
            }
        }
    }

    /// Device `d` (an admin) admits identity `i` with `role` and the feeds of its device `k`.
    pub(crate) fn admit(&mut self, d: usize, i: usize, role: Role, k: usize) -> Vec<Position> {
        let member = self.identity(i);
        let mut positions =
            vec![self.write(d, &self.issue(d, member, Assertion::SpaceMember { role }))];
        positions.extend(self.admit_feeds(d, dev(i, k)));
        positions
    }

    /// Device `d` admits the two feeds of device `target`.
    pub(crate) fn admit_feeds(&mut self, d: usize, target: usize) -> Vec<Position> {
        let identity = self.identity(self.devs[target].identity);
        let device = self.devs[target].key();
        let feeds = self.devs[target].feeds;
        [
            (feeds.control, Designation::Control),
            (feeds.data, Designation::Data),
        ]
        .into_iter()
        .map(|(feed, designation)| {
            let credential = self.issue(
                d,
                feed,
                Assertion::AdmittedFeed {
                    designation,
                    identity,
                    device,
                },
            );
            self.write(d, &credential)
        })
        .collect()
    }

    /// Cutoffs device `d` would give for `feeds`: what it has seen of each.
    pub(crate) fn cutoffs_seen(&self, d: usize, feeds: &[PublicKey]) -> Cutoffs {
        feeds
            .iter()
            .filter_map(|f| self.devs[d].known.get(f).map(|s| (*f, s)))
            .collect()
    }

    /// Device `d` removes identity `i`, with cutoffs at what it has seen of `i`'s feeds.
    pub(crate) fn remove(&mut self, d: usize, i: usize) -> Position {
        let feeds: Vec<PublicKey> = (0..2)
            .flat_map(|k| {
                let f = self.devs[dev(i, k)].feeds;
                [f.control, f.data]
            })
            .collect();
        let cutoffs = self.cutoffs_seen(d, &feeds);
        let member = self.identity(i);
        let credential = self.issue(d, member, Assertion::MemberRemoved { member, cutoffs });
        self.write(d, &credential)
    }

    /// Device `d` revokes device `target`, with cutoffs at what it has seen of its feeds.
    pub(crate) fn revoke(&mut self, d: usize, target: usize) -> Position {
        let f = self.devs[target].feeds;
        let cutoffs = self.cutoffs_seen(d, &[f.control, f.data]);
        let identity = self.identity(self.devs[target].identity);
        let device = self.devs[target].key();
        let credential = self.issue(
            d,
            device,
            Assertion::DeviceRevoked {
                identity,
                device,
                cutoffs,
            },
        );
        self.write(d, &credential)
    }

    /// Device `k` of its identity is authorized (by its identity, written by device `d`).
    pub(crate) fn authorize(&mut self, d: usize, target: usize) -> Position {
        let i = self.devs[target].identity;
        let identity = self.identities[i].public_key();
        let device = self.devs[target].key();
        let credential = Claim {
            space: self.space,
            issuer: identity,
            subject: device,
            issued_at: Timestamp(self.blocks.len() as u64 + 100),
            parents: vec![],
            assertion: Assertion::AuthorizedDevice { identity, device },
        }
        .sign(&self.identities[i]);
        self.write(d, &credential)
    }

    /// Control block indexes in a causal order chosen by `rng` (creation order if `None`).
    pub(crate) fn causal_order(&self, mut rng: Option<&mut Rng>) -> Vec<usize> {
        let n = self.blocks.len();
        let deps: Vec<Vec<usize>> = self
            .blocks
            .iter()
            .map(|b| {
                (0..n)
                    .filter(|&j| {
                        let c = &self.blocks[j];
                        (c.feed == b.feed && c.seq < b.seq) || b.timeframe.covers(&c.feed, c.seq)
                    })
                    .collect()
            })
            .collect();
        let mut done = vec![false; n];
        let mut order = Vec::with_capacity(n);
        while order.len() < n {
            let ready: Vec<usize> = (0..n)
                .filter(|&i| !done[i] && deps[i].iter().all(|&j| done[j]))
                .collect();
            let pick = match rng.as_deref_mut() {
                Some(rng) => ready[rng.below(ready.len())],
                None => ready[0],
            };
            done[pick] = true;
            order.push(pick);
        }
        order
    }

    /// A replica fed the blocks `order` (indexes into `blocks`).
    pub(crate) fn replica(&self, order: &[usize]) -> SpaceStateMachine {
        let mut machine = SpaceStateMachine::new(self.space);
        for &i in order {
            let b = &self.blocks[i];
            let result = machine.process(ControlBlock {
                feed: b.feed,
                seq: b.seq,
                lamport: b.lamport,
                timeframe: &b.timeframe,
                payload: &b.payload,
            });
            assert!(result.is_ok(), "delivery refused: {result:?}");
        }
        machine
    }

    /// A replica fed every block in creation order.
    pub(crate) fn full_replica(&self) -> SpaceStateMachine {
        self.replica(&(0..self.blocks.len()).collect::<Vec<_>>())
    }

    /// The decision of `machine` on write `w`.
    pub(crate) fn check(&self, machine: &SpaceStateMachine, w: usize) -> Result<(), Refusal> {
        let w = &self.writes[w];
        machine.check_write(&w.feed, w.seq, &w.timeframe, BlockKind::Data)
    }
}

/// The decision on the block at `position`, as a plain result.
pub(crate) fn decision(machine: &SpaceStateMachine, position: Position) -> Result<(), Refusal> {
    match machine.decision(position) {
        Some(Decision::Accepted(_)) => Ok(()),
        Some(Decision::Refused(reason)) => Err(reason),
        None => Err(Refusal::NoGenesis {
            kind: CredentialKind::SpaceGenesis,
        }),
    }
}

/// A small deterministic random source (SplitMix64) for delivery orders.
#[derive(Debug)]
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub(crate) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub(crate) fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}
