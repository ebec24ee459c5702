//! Credentials: signed claims kept in a space's control feeds.
//!
//! A [`Claim`] is what an issuer asserts; a [`Credential`] is a claim plus its [`Proof`]. The
//! signature covers [`SIGNING_DOMAIN`] followed by the protobuf encoding of the credential with
//! its proof cleared ([`Claim::signing_bytes`]). Decoding insists on canonical bytes (the bytes
//! must equal the re-encoding of what they decode to), so one signature covers exactly one byte
//! string and any changed byte is caught.

use std::collections::BTreeMap;
use std::fmt;

use echodb_proto::halo as pb;
use echodb_proto::halo::credential::Assertion as PbAssertion;
use echodb_proto::prost::bytes::Bytes;
use echodb_proto::{Message as _, prost};

use crate::keys::{KeyError, KeyPair, PublicKey, Signature, SignatureError, Signer};
use crate::timeframe::{Seq, Timeframe};

/// The prefix of every credential's signing bytes, so a credential signature can never be
/// mistaken for (or replayed as) a signature over anything else a key signs.
pub const SIGNING_DOMAIN: &[u8] = b"echodb/halo/credential/v1\0";
/// Largest encoded credential accepted, in bytes.
pub const MAX_CREDENTIAL_BYTES: usize = 64 * 1024;
/// Most links a delegation chain may have.
pub const MAX_CHAIN_LEN: usize = 4;
/// Most parent ids a credential may name.
pub const MAX_PARENTS: usize = 16;
/// Most entries in a cutoff list, an epoch timeframe or a list of genesis feeds.
pub const MAX_ENTRIES: usize = 4096;
/// Longest display name, in bytes.
pub const MAX_DISPLAY_NAME: usize = 256;

/// Issuance time: milliseconds since the Unix epoch, as the issuer's clock saw it.
///
/// Informative only: no decision of the state machine depends on it (clocks are not trusted).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Timestamp(pub u64);

/// The id of a credential: BLAKE3 of its signing bytes (so it does not depend on the proof).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CredentialId(pub [u8; 32]);

impl fmt::Display for CredentialId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for CredentialId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CredentialId({})", hex::encode(&self.0[..4]))
    }
}

/// The content address (BLAKE3) of a snapshot blob.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SnapshotCid(pub [u8; 32]);

impl fmt::Debug for SnapshotCid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SnapshotCid({})", hex::encode(&self.0[..4]))
    }
}

/// A member's role in a space. `Ord` follows strength: `Reader < Editor < Admin < Owner`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// May write only its own profile.
    Reader,
    /// May write data.
    Editor,
    /// May admit and remove members (not owners) and feeds, and write epochs.
    Admin,
    /// May do everything an admin may, and grant or take away the owner role.
    Owner,
}

/// What a feed carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Designation {
    /// Credentials and epochs.
    Control,
    /// Object mutations.
    Data,
}

/// Per feed, the last sequence number that stays valid (sorted by feed key).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Default)]
pub struct Cutoffs(BTreeMap<PublicKey, Seq>);

impl Cutoffs {
    /// No cutoffs: no block of any listed feed stays valid.
    pub fn new() -> Self {
        Self::default()
    }

    /// The cutoff of `feed`, if it is listed.
    pub fn get(&self, feed: &PublicKey) -> Option<Seq> {
        self.0.get(feed).copied()
    }

    /// Whether block `seq` of `feed` stays valid under these cutoffs (an unlisted feed keeps
    /// nothing).
    pub fn keeps(&self, feed: &PublicKey, seq: Seq) -> bool {
        self.get(feed).is_some_and(|cutoff| seq <= cutoff)
    }

    /// Entries in feed-key order.
    pub fn iter(&self) -> impl Iterator<Item = (&PublicKey, &Seq)> {
        self.0.iter()
    }
}

impl FromIterator<(PublicKey, Seq)> for Cutoffs {
    fn from_iter<I: IntoIterator<Item = (PublicKey, Seq)>>(iter: I) -> Self {
        Self(iter.into_iter().collect())
    }
}

/// An epoch claim: a numbered cut of the space pointing to a snapshot.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct EpochClaim {
    /// 0 for the first epoch, then one more each time.
    pub number: u64,
    /// The cut the snapshot was taken at.
    pub timeframe: Timeframe,
    /// The snapshot blob.
    pub snapshot: SnapshotCid,
    /// The snapshot of the previous epoch (`None` for epoch 0).
    pub previous: Option<SnapshotCid>,
}

/// What a credential asserts about its subject.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Assertion {
    /// The space exists (issuer and subject are the space key).
    SpaceGenesis,
    /// The subject identity is a member with this role (admission or role change).
    SpaceMember {
        /// The role given.
        role: Role,
    },
    /// The subject feed may be written by `device` for `identity`.
    AdmittedFeed {
        /// What the feed carries.
        designation: Designation,
        /// The member the feed belongs to.
        identity: PublicKey,
        /// The device that writes it.
        device: PublicKey,
    },
    /// The subject device (`device`) acts for `identity` (the issuer).
    AuthorizedDevice {
        /// The identity.
        identity: PublicKey,
        /// The device.
        device: PublicKey,
    },
    /// The subject identity (`member`) is removed; its feeds are cut off.
    MemberRemoved {
        /// The removed member.
        member: PublicKey,
        /// The last valid block of each of its feeds.
        cutoffs: Cutoffs,
    },
    /// The subject device (`device`) no longer acts for `identity`; its feeds are cut off.
    DeviceRevoked {
        /// The identity the device acted for.
        identity: PublicKey,
        /// The revoked device.
        device: PublicKey,
        /// The last valid block of each of the device's feeds.
        cutoffs: Cutoffs,
    },
    /// The subject (the issuer or one of its devices) is called `display_name`.
    MemberProfile {
        /// The name people see.
        display_name: String,
    },
    /// A numbered cut of the space.
    Epoch(EpochClaim),
    /// (HALO space) The issuer belongs to `space`, whose genesis feeds are listed.
    SpaceRecord {
        /// The space.
        space: PublicKey,
        /// Its genesis feeds, so a new device can find it.
        genesis_feeds: Vec<PublicKey>,
    },
    /// (HALO space) The subject device asks to be admitted to `space` with these feeds; a
    /// device of the identity that holds the space admits them there.
    DeviceSpaceFeeds {
        /// The space.
        space: PublicKey,
        /// The device's new control feed in it.
        control_feed: PublicKey,
        /// The device's new data feed in it.
        data_feed: PublicKey,
    },
}

impl Assertion {
    /// The kind of this assertion.
    pub fn kind(&self) -> CredentialKind {
        match self {
            Assertion::SpaceGenesis => CredentialKind::SpaceGenesis,
            Assertion::SpaceMember { .. } => CredentialKind::SpaceMember,
            Assertion::AdmittedFeed { .. } => CredentialKind::AdmittedFeed,
            Assertion::AuthorizedDevice { .. } => CredentialKind::AuthorizedDevice,
            Assertion::MemberRemoved { .. } => CredentialKind::MemberRemoved,
            Assertion::DeviceRevoked { .. } => CredentialKind::DeviceRevoked,
            Assertion::MemberProfile { .. } => CredentialKind::MemberProfile,
            Assertion::Epoch(_) => CredentialKind::Epoch,
            Assertion::SpaceRecord { .. } => CredentialKind::SpaceRecord,
            Assertion::DeviceSpaceFeeds { .. } => CredentialKind::DeviceSpaceFeeds,
        }
    }
}

/// The kinds of credential, for questions like "may this feed write a `SpaceMember`?".
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum CredentialKind {
    /// [`Assertion::SpaceGenesis`].
    SpaceGenesis,
    /// [`Assertion::SpaceMember`].
    SpaceMember,
    /// [`Assertion::AdmittedFeed`].
    AdmittedFeed,
    /// [`Assertion::AuthorizedDevice`].
    AuthorizedDevice,
    /// [`Assertion::MemberRemoved`].
    MemberRemoved,
    /// [`Assertion::DeviceRevoked`].
    DeviceRevoked,
    /// [`Assertion::MemberProfile`].
    MemberProfile,
    /// [`Assertion::Epoch`].
    Epoch,
    /// [`Assertion::SpaceRecord`].
    SpaceRecord,
    /// [`Assertion::DeviceSpaceFeeds`].
    DeviceSpaceFeeds,
}

/// The unsigned part of a credential: `issuer` asserts `assertion` about `subject` in `space`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Claim {
    /// The space the claim is about.
    pub space: PublicKey,
    /// Who claims it: an identity, or the space key for genesis.
    pub issuer: PublicKey,
    /// Whom or what the claim is about.
    pub subject: PublicKey,
    /// When, by the issuer's clock.
    pub issued_at: Timestamp,
    /// Credentials this one builds on.
    pub parents: Vec<CredentialId>,
    /// What is claimed.
    pub assertion: Assertion,
}

/// The signature of a credential and the delegation that makes it the issuer's.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Proof {
    /// The key that signed.
    pub signer: PublicKey,
    /// The signature over the claim's signing bytes.
    pub signature: Signature,
    /// `AuthorizedDevice` credentials leading from the issuer to `signer` (empty when the issuer
    /// signed itself).
    pub chain: Vec<Credential>,
}

/// A signed claim.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Credential {
    claim: Claim,
    proof: Proof,
}

/// Something that issues credentials: an identity (or space) key signing for itself, or a device
/// signing for its identity with a delegation chain.
pub trait Issuer {
    /// The key credentials are issued in the name of.
    fn issuer_key(&self) -> PublicKey;
    /// The key that signs.
    fn signer(&self) -> &dyn Signer;
    /// The `AuthorizedDevice` chain from the issuer to the signer (empty if they are the same).
    fn delegation(&self) -> &[Credential];
}

impl Issuer for KeyPair {
    fn issuer_key(&self) -> PublicKey {
        self.public_key()
    }
    fn signer(&self) -> &dyn Signer {
        self
    }
    fn delegation(&self) -> &[Credential] {
        &[]
    }
}

/// Why bytes are not a well-formed credential.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// Larger than [`MAX_CREDENTIAL_BYTES`].
    #[error("credential is {len} bytes; the limit is {max}")]
    TooLarge {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// Not a protobuf `Credential`.
    #[error("credential ({len} bytes) is not valid protobuf: {source}")]
    Protobuf {
        /// Length of the bytes.
        len: usize,
        /// What prost said.
        #[source]
        source: prost::DecodeError,
    },
    /// Decodes, but its bytes are not the canonical encoding of what they decode to.
    #[error("credential ({len} bytes) is not canonically encoded")]
    NonCanonical {
        /// Length of the bytes.
        len: usize,
    },
    /// A key field does not hold a key.
    #[error("credential field {field}: {source}")]
    BadKey {
        /// The field.
        field: &'static str,
        /// What is wrong.
        #[source]
        source: KeyError,
    },
    /// A fixed-length field (signature, id, cid) has the wrong length.
    #[error("credential field {field} is {len} bytes; expected {expected}")]
    BadLength {
        /// The field.
        field: &'static str,
        /// Its length.
        len: usize,
        /// The length expected.
        expected: usize,
    },
    /// A required field is absent.
    #[error("credential has no {field}")]
    Missing {
        /// The field.
        field: &'static str,
    },
    /// An enum field holds a value this version does not know (or the unspecified value).
    #[error("credential field {field} holds unknown value {value}")]
    UnknownEnum {
        /// The field.
        field: &'static str,
        /// The value.
        value: i32,
    },
    /// Two fields that must agree do not.
    #[error("credential field {field} disagrees with its subject")]
    Inconsistent {
        /// The field.
        field: &'static str,
    },
    /// A list that must be sorted by key without duplicates is not.
    #[error("credential list {field} is not sorted by key without duplicates")]
    Unsorted {
        /// The list.
        field: &'static str,
    },
    /// A list or string is longer than allowed.
    #[error("credential field {field} has {len} entries/bytes; the limit is {max}")]
    TooLong {
        /// The field.
        field: &'static str,
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A delegation link is not an `AuthorizedDevice` credential without a chain of its own.
    #[error("delegation link {index} is not a plain AuthorizedDevice credential")]
    BadLink {
        /// Position of the link in the chain.
        index: usize,
    },
}

/// Why a credential's proof does not hold.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum VerifyError {
    /// The signature does not verify under the signer's key.
    #[error("credential signature by {signer} does not verify: {source}")]
    Signature {
        /// The signer.
        signer: PublicKey,
        /// Why.
        #[source]
        source: SignatureError,
    },
    /// No delegation chain, and the signer is not the issuer.
    #[error(
        "credential signed by {signer}, which is not its issuer {issuer}, without a delegation chain"
    )]
    SignerNotIssuer {
        /// The signer.
        signer: PublicKey,
        /// The issuer.
        issuer: PublicKey,
    },
    /// A link of the chain authorizes a device for another identity than the issuer.
    #[error(
        "delegation link {index} is issued by {link_issuer}, not by the credential's issuer {issuer}"
    )]
    LinkForOtherIdentity {
        /// Position of the link.
        index: usize,
        /// Who issued the link.
        link_issuer: PublicKey,
        /// The credential's issuer.
        issuer: PublicKey,
    },
    /// A link is signed by neither the issuer nor the device the previous link authorized.
    #[error("delegation link {index} is signed by {signer}, which the chain has not authorized")]
    LinkSignedByStranger {
        /// Position of the link.
        index: usize,
        /// Its signer.
        signer: PublicKey,
    },
    /// A link's signature does not verify.
    #[error("delegation link {index} signature by {signer} does not verify: {source}")]
    LinkSignature {
        /// Position of the link.
        index: usize,
        /// Its signer.
        signer: PublicKey,
        /// Why.
        #[source]
        source: SignatureError,
    },
    /// The chain's last device is not the credential's signer.
    #[error("delegation chain ends at device {last}, but the credential is signed by {signer}")]
    ChainDoesNotReachSigner {
        /// The last authorized device.
        last: PublicKey,
        /// The signer.
        signer: PublicKey,
    },
}

/// What a verified proof establishes: which devices the issuer's signature passed through.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delegation {
    /// The key that signed the credential.
    pub signer: PublicKey,
    /// Devices authorized by the chain, in chain order (the last one is the signer).
    pub devices: Vec<PublicKey>,
}

impl Claim {
    /// The bytes the issuer signs: [`SIGNING_DOMAIN`] then the encoding with no proof.
    pub fn signing_bytes(&self) -> Vec<u8> {
        let message = claim_to_proto(self, None);
        let mut bytes = Vec::with_capacity(SIGNING_DOMAIN.len() + message.encoded_len());
        bytes.extend_from_slice(SIGNING_DOMAIN);
        message.encode_raw(&mut bytes);
        bytes
    }

    /// The id of any credential carrying this claim.
    pub fn id(&self) -> CredentialId {
        CredentialId(*blake3::hash(&self.signing_bytes()).as_bytes())
    }

    /// Signs the claim as `issuer`. The claim's `issuer` field is set to the issuer's key.
    pub fn sign(mut self, issuer: &dyn Issuer) -> Credential {
        self.issuer = issuer.issuer_key();
        let signer = issuer.signer();
        let signature = signer.sign(&self.signing_bytes());
        Credential {
            claim: self,
            proof: Proof {
                signer: signer.public_key(),
                signature,
                chain: issuer.delegation().to_vec(),
            },
        }
    }
}

impl Credential {
    /// The claim.
    pub fn claim(&self) -> &Claim {
        &self.claim
    }

    /// The proof.
    pub fn proof(&self) -> &Proof {
        &self.proof
    }

    /// The credential's id (see [`CredentialId`]).
    pub fn id(&self) -> CredentialId {
        self.claim.id()
    }

    /// The canonical encoding (what goes into a control block).
    pub fn to_bytes(&self) -> Vec<u8> {
        self.to_proto().encode_to_vec()
    }

    /// The protobuf message.
    pub fn to_proto(&self) -> pb::Credential {
        claim_to_proto(&self.claim, Some(&self.proof))
    }

    /// Decodes a credential, insisting on canonical bytes. Does not check the signature: see
    /// [`Credential::verify`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, DecodeError> {
        if bytes.len() > MAX_CREDENTIAL_BYTES {
            return Err(DecodeError::TooLarge {
                len: bytes.len(),
                max: MAX_CREDENTIAL_BYTES,
            });
        }
        let message = pb::Credential::decode(bytes).map_err(|source| DecodeError::Protobuf {
            len: bytes.len(),
            source,
        })?;
        if message.encoded_len() != bytes.len() || message.encode_to_vec() != bytes {
            return Err(DecodeError::NonCanonical { len: bytes.len() });
        }
        Self::from_proto(&message, true)
    }

    /// Checks the signature and the delegation chain (cryptography only: whether the issuer
    /// may make the claim is the state machine's question).
    pub fn verify(&self) -> Result<Delegation, VerifyError> {
        let issuer = self.claim.issuer;
        let signer = self.proof.signer;
        let mut authorized = issuer;
        let mut devices = Vec::with_capacity(self.proof.chain.len());
        for (index, link) in self.proof.chain.iter().enumerate() {
            if link.claim.issuer != issuer {
                return Err(VerifyError::LinkForOtherIdentity {
                    index,
                    link_issuer: link.claim.issuer,
                    issuer,
                });
            }
            let link_signer = link.proof.signer;
            if link_signer != issuer && link_signer != authorized {
                return Err(VerifyError::LinkSignedByStranger {
                    index,
                    signer: link_signer,
                });
            }
            link_signer
                .verify(&link.claim.signing_bytes(), &link.proof.signature)
                .map_err(|source| VerifyError::LinkSignature {
                    index,
                    signer: link_signer,
                    source,
                })?;
            // `from_proto` guarantees every link is an AuthorizedDevice for its issuer.
            authorized = link.claim.subject;
            devices.push(authorized);
        }
        if authorized != signer {
            return Err(if self.proof.chain.is_empty() {
                VerifyError::SignerNotIssuer { signer, issuer }
            } else {
                VerifyError::ChainDoesNotReachSigner {
                    last: authorized,
                    signer,
                }
            });
        }
        signer
            .verify(&self.claim.signing_bytes(), &self.proof.signature)
            .map_err(|source| VerifyError::Signature { signer, source })?;
        Ok(Delegation { signer, devices })
    }

    fn from_proto(message: &pb::Credential, allow_chain: bool) -> Result<Self, DecodeError> {
        let assertion = match &message.assertion {
            None => return Err(DecodeError::Missing { field: "assertion" }),
            Some(a) => assertion_from_proto(a)?,
        };
        if message.parent_ids.len() > MAX_PARENTS {
            return Err(DecodeError::TooLong {
                field: "parent_ids",
                len: message.parent_ids.len(),
                max: MAX_PARENTS,
            });
        }
        let parents = message
            .parent_ids
            .iter()
            .map(|p| fixed32(p, "parent_ids").map(CredentialId))
            .collect::<Result<Vec<_>, _>>()?;
        let claim = Claim {
            space: key(&message.space_key, "space_key")?,
            issuer: key(&message.issuer, "issuer")?,
            subject: key(&message.subject, "subject")?,
            issued_at: Timestamp(message.issued_at_ms),
            parents,
            assertion,
        };
        check_subject(&claim)?;
        let proof = message
            .proof
            .as_ref()
            .ok_or(DecodeError::Missing { field: "proof" })?;
        if !allow_chain && !proof.chain.is_empty() {
            return Err(DecodeError::BadLink { index: 0 });
        }
        if proof.chain.len() > MAX_CHAIN_LEN {
            return Err(DecodeError::TooLong {
                field: "proof.chain",
                len: proof.chain.len(),
                max: MAX_CHAIN_LEN,
            });
        }
        let chain = proof
            .chain
            .iter()
            .enumerate()
            .map(|(index, link)| {
                let link = Self::from_proto(link, false).map_err(|e| match e {
                    DecodeError::BadLink { .. } => DecodeError::BadLink { index },
                    other => other,
                })?;
                match link.claim.assertion {
                    Assertion::AuthorizedDevice { identity, .. }
                        if identity == link.claim.issuer =>
                    {
                        Ok(link)
                    }
                    _ => Err(DecodeError::BadLink { index }),
                }
            })
            .collect::<Result<Vec<_>, _>>()?;
        let signature =
            Signature::from_slice(&proof.signature).map_err(|_| DecodeError::BadLength {
                field: "proof.signature",
                len: proof.signature.len(),
                expected: crate::keys::SIGNATURE_LEN,
            })?;
        Ok(Credential {
            claim,
            proof: Proof {
                signer: key(&proof.signer, "proof.signer")?,
                signature,
                chain,
            },
        })
    }
}

/// The subject must agree with the assertion where the assertion names it again.
fn check_subject(claim: &Claim) -> Result<(), DecodeError> {
    let agrees = match &claim.assertion {
        Assertion::SpaceGenesis => claim.subject == claim.space,
        Assertion::AuthorizedDevice { device, .. } | Assertion::DeviceRevoked { device, .. } => {
            claim.subject == *device
        }
        Assertion::MemberRemoved { member, .. } => claim.subject == *member,
        _ => true,
    };
    if agrees {
        Ok(())
    } else {
        Err(DecodeError::Inconsistent { field: "subject" })
    }
}

fn key(bytes: &Bytes, field: &'static str) -> Result<PublicKey, DecodeError> {
    PublicKey::from_slice(bytes).map_err(|source| DecodeError::BadKey { field, source })
}

fn fixed32(bytes: &Bytes, field: &'static str) -> Result<[u8; 32], DecodeError> {
    bytes[..].try_into().map_err(|_| DecodeError::BadLength {
        field,
        len: bytes.len(),
        expected: 32,
    })
}

fn key_bytes(key: &PublicKey) -> Bytes {
    Bytes::copy_from_slice(key.as_bytes())
}

fn check_len(field: &'static str, len: usize, max: usize) -> Result<(), DecodeError> {
    if len > max {
        Err(DecodeError::TooLong { field, len, max })
    } else {
        Ok(())
    }
}

fn feed_seqs(
    entries: &[pb::FeedSeq],
    field: &'static str,
) -> Result<Vec<(PublicKey, Seq)>, DecodeError> {
    check_len(field, entries.len(), MAX_ENTRIES)?;
    let list = entries
        .iter()
        .map(|e| Ok((key(&e.feed, field)?, Seq(e.seq))))
        .collect::<Result<Vec<_>, DecodeError>>()?;
    if list.windows(2).any(|w| w[0].0 >= w[1].0) {
        return Err(DecodeError::Unsorted { field });
    }
    Ok(list)
}

fn feed_seqs_to_proto<'a>(
    entries: impl Iterator<Item = (&'a PublicKey, &'a Seq)>,
) -> Vec<pb::FeedSeq> {
    entries
        .map(|(feed, seq)| pb::FeedSeq {
            feed: key_bytes(feed),
            seq: seq.0,
        })
        .collect()
}

fn role_from_proto(value: i32) -> Result<Role, DecodeError> {
    match pb::Role::try_from(value) {
        Ok(pb::Role::Owner) => Ok(Role::Owner),
        Ok(pb::Role::Admin) => Ok(Role::Admin),
        Ok(pb::Role::Editor) => Ok(Role::Editor),
        Ok(pb::Role::Reader) => Ok(Role::Reader),
        Ok(pb::Role::Unspecified) | Err(_) => Err(DecodeError::UnknownEnum {
            field: "space_member.role",
            value,
        }),
    }
}

fn role_to_proto(role: Role) -> pb::Role {
    match role {
        Role::Owner => pb::Role::Owner,
        Role::Admin => pb::Role::Admin,
        Role::Editor => pb::Role::Editor,
        Role::Reader => pb::Role::Reader,
    }
}

fn assertion_from_proto(a: &PbAssertion) -> Result<Assertion, DecodeError> {
    Ok(match a {
        PbAssertion::SpaceGenesis(_) => Assertion::SpaceGenesis,
        PbAssertion::SpaceMember(m) => Assertion::SpaceMember {
            role: role_from_proto(m.role)?,
        },
        PbAssertion::AdmittedFeed(f) => Assertion::AdmittedFeed {
            designation: match pb::FeedDesignation::try_from(f.designation) {
                Ok(pb::FeedDesignation::Control) => Designation::Control,
                Ok(pb::FeedDesignation::Data) => Designation::Data,
                Ok(pb::FeedDesignation::Unspecified) | Err(_) => {
                    return Err(DecodeError::UnknownEnum {
                        field: "admitted_feed.designation",
                        value: f.designation,
                    });
                }
            },
            identity: key(&f.identity, "admitted_feed.identity")?,
            device: key(&f.device, "admitted_feed.device")?,
        },
        PbAssertion::AuthorizedDevice(d) => Assertion::AuthorizedDevice {
            identity: key(&d.identity, "authorized_device.identity")?,
            device: key(&d.device, "authorized_device.device")?,
        },
        PbAssertion::MemberRemoved(r) => Assertion::MemberRemoved {
            member: key(&r.member, "member_removed.member")?,
            cutoffs: feed_seqs(&r.cutoffs, "member_removed.cutoffs")?
                .into_iter()
                .collect(),
        },
        PbAssertion::DeviceRevoked(r) => Assertion::DeviceRevoked {
            identity: key(&r.identity, "device_revoked.identity")?,
            device: key(&r.device, "device_revoked.device")?,
            cutoffs: feed_seqs(&r.cutoffs, "device_revoked.cutoffs")?
                .into_iter()
                .collect(),
        },
        PbAssertion::MemberProfile(p) => {
            check_len(
                "member_profile.display_name",
                p.display_name.len(),
                MAX_DISPLAY_NAME,
            )?;
            Assertion::MemberProfile {
                display_name: p.display_name.clone(),
            }
        }
        PbAssertion::Epoch(e) => Assertion::Epoch(EpochClaim {
            number: e.number,
            timeframe: feed_seqs(&e.timeframe, "epoch.timeframe")?
                .into_iter()
                .collect(),
            snapshot: SnapshotCid(fixed32(&e.snapshot_cid, "epoch.snapshot_cid")?),
            previous: if e.previous_cid.is_empty() {
                None
            } else {
                Some(SnapshotCid(fixed32(&e.previous_cid, "epoch.previous_cid")?))
            },
        }),
        PbAssertion::SpaceRecord(r) => {
            check_len(
                "space_record.genesis_feeds",
                r.genesis_feeds.len(),
                MAX_ENTRIES,
            )?;
            Assertion::SpaceRecord {
                space: key(&r.space_key, "space_record.space_key")?,
                genesis_feeds: r
                    .genesis_feeds
                    .iter()
                    .map(|f| key(f, "space_record.genesis_feeds"))
                    .collect::<Result<_, _>>()?,
            }
        }
        PbAssertion::DeviceSpaceFeeds(r) => Assertion::DeviceSpaceFeeds {
            space: key(&r.space_key, "device_space_feeds.space_key")?,
            control_feed: key(&r.control_feed, "device_space_feeds.control_feed")?,
            data_feed: key(&r.data_feed, "device_space_feeds.data_feed")?,
        },
    })
}

fn assertion_to_proto(a: &Assertion) -> PbAssertion {
    match a {
        Assertion::SpaceGenesis => PbAssertion::SpaceGenesis(pb::SpaceGenesis {}),
        Assertion::SpaceMember { role } => PbAssertion::SpaceMember(pb::SpaceMember {
            role: role_to_proto(*role).into(),
        }),
        Assertion::AdmittedFeed {
            designation,
            identity,
            device,
        } => PbAssertion::AdmittedFeed(pb::AdmittedFeed {
            designation: match designation {
                Designation::Control => pb::FeedDesignation::Control,
                Designation::Data => pb::FeedDesignation::Data,
            }
            .into(),
            identity: key_bytes(identity),
            device: key_bytes(device),
        }),
        Assertion::AuthorizedDevice { identity, device } => {
            PbAssertion::AuthorizedDevice(pb::AuthorizedDevice {
                identity: key_bytes(identity),
                device: key_bytes(device),
            })
        }
        Assertion::MemberRemoved { member, cutoffs } => {
            PbAssertion::MemberRemoved(pb::MemberRemoved {
                member: key_bytes(member),
                cutoffs: feed_seqs_to_proto(cutoffs.iter()),
            })
        }
        Assertion::DeviceRevoked {
            identity,
            device,
            cutoffs,
        } => PbAssertion::DeviceRevoked(pb::DeviceRevoked {
            identity: key_bytes(identity),
            device: key_bytes(device),
            cutoffs: feed_seqs_to_proto(cutoffs.iter()),
        }),
        Assertion::MemberProfile { display_name } => {
            PbAssertion::MemberProfile(pb::MemberProfile {
                display_name: display_name.clone(),
            })
        }
        Assertion::Epoch(e) => PbAssertion::Epoch(pb::Epoch {
            number: e.number,
            timeframe: feed_seqs_to_proto(e.timeframe.iter()),
            snapshot_cid: Bytes::copy_from_slice(&e.snapshot.0),
            previous_cid: e
                .previous
                .map(|p| Bytes::copy_from_slice(&p.0))
                .unwrap_or_default(),
        }),
        Assertion::SpaceRecord {
            space,
            genesis_feeds,
        } => PbAssertion::SpaceRecord(pb::SpaceRecord {
            space_key: key_bytes(space),
            genesis_feeds: genesis_feeds.iter().map(key_bytes).collect(),
        }),
        Assertion::DeviceSpaceFeeds {
            space,
            control_feed,
            data_feed,
        } => PbAssertion::DeviceSpaceFeeds(pb::DeviceSpaceFeeds {
            space_key: key_bytes(space),
            control_feed: key_bytes(control_feed),
            data_feed: key_bytes(data_feed),
        }),
    }
}

fn claim_to_proto(claim: &Claim, proof: Option<&Proof>) -> pb::Credential {
    pb::Credential {
        space_key: key_bytes(&claim.space),
        issuer: key_bytes(&claim.issuer),
        subject: key_bytes(&claim.subject),
        issued_at_ms: claim.issued_at.0,
        parent_ids: claim
            .parents
            .iter()
            .map(|p| Bytes::copy_from_slice(&p.0))
            .collect(),
        proof: proof.map(|p| pb::Proof {
            signer: key_bytes(&p.signer),
            signature: Bytes::copy_from_slice(p.signature.as_bytes()),
            chain: p.chain.iter().map(Credential::to_proto).collect(),
        }),
        assertion: Some(assertion_to_proto(&claim.assertion)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::KeyPair;
    use proptest::prelude::*;

    fn sample() -> (KeyPair, KeyPair, Credential) {
        let identity = KeyPair::from_seed([1; 32]);
        let device = KeyPair::from_seed([2; 32]);
        let space = KeyPair::from_seed([3; 32]).public_key();
        let link = Claim {
            space,
            issuer: identity.public_key(),
            subject: device.public_key(),
            issued_at: Timestamp(5),
            parents: vec![],
            assertion: Assertion::AuthorizedDevice {
                identity: identity.public_key(),
                device: device.public_key(),
            },
        }
        .sign(&identity);
        let signer =
            crate::identity::DeviceSigner::new(identity.public_key(), device.clone(), vec![link]);
        let feed = KeyPair::from_seed([4; 32]).public_key();
        let credential = Claim {
            space,
            issuer: identity.public_key(),
            subject: feed,
            issued_at: Timestamp(1_700_000_000_000),
            parents: vec![CredentialId([9; 32])],
            assertion: Assertion::MemberRemoved {
                member: feed,
                cutoffs: [(feed, Seq(3))].into_iter().collect(),
            },
        }
        .sign(&signer);
        (identity, device, credential)
    }

    #[test]
    fn decode_encode_round_trips_byte_exactly_and_verifies() -> Result<(), DecodeError> {
        let (identity, device, credential) = sample();
        let bytes = credential.to_bytes();
        let decoded = Credential::from_bytes(&bytes)?;
        assert_eq!(decoded, credential);
        assert_eq!(decoded.to_bytes(), bytes);
        assert_eq!(decoded.id(), credential.id());
        let delegation = decoded.verify();
        assert_eq!(
            delegation,
            Ok(Delegation {
                signer: device.public_key(),
                devices: vec![device.public_key()]
            })
        );
        assert_eq!(decoded.claim().issuer, identity.public_key());
        assert!(decoded.claim().signing_bytes().starts_with(SIGNING_DOMAIN));
        Ok(())
    }

    #[test]
    fn non_canonical_bytes_are_refused() {
        let (_, _, credential) = sample();
        let mut bytes = credential.to_bytes();
        // A second `issued_at_ms` (tag 4) = 0: prost keeps the last value, and the re-encoding
        // of what was decoded differs from the bytes received.
        bytes.extend_from_slice(&[0x20, 0x00]);
        assert!(matches!(
            Credential::from_bytes(&bytes),
            Err(DecodeError::NonCanonical { .. })
        ));
    }

    #[test]
    fn a_signer_outside_the_chain_is_refused() {
        let (_, _, credential) = sample();
        let stranger = KeyPair::from_seed([7; 32]);
        let forged = credential.claim().clone().sign(&stranger);
        // `sign` sets the issuer to the stranger; put the real issuer back: a forgery.
        let mut claim = forged.claim().clone();
        claim.issuer = credential.claim().issuer;
        let forged = Credential {
            claim,
            proof: forged.proof().clone(),
        };
        assert!(matches!(
            forged.verify(),
            Err(VerifyError::SignerNotIssuer { .. })
        ));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn any_changed_byte_is_refused(index in any::<prop::sample::Index>(), flip in 1u8..=255) {
            let (_, _, credential) = sample();
            let mut bytes = credential.to_bytes();
            let i = index.index(bytes.len());
            bytes[i] ^= flip;
            let accepted = Credential::from_bytes(&bytes)
                .ok()
                .and_then(|c| c.verify().ok().map(|_| c));
            prop_assert!(accepted.is_none(), "byte {} ^ {:#x} still verifies", i, flip);
        }
    }
}
