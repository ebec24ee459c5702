//! `/echo/invite/1`: letting a guest into a space (or a new device into an identity), as
//! sans-IO cores. DESIGN §9, steps 1–5.
//!
//! 1. The host makes an [`Invitation`]: an [`InviteCode`] (invitation id, secret, the host's
//!    device key and address hints) and, for the auth-code method, a 6-digit [`AuthCode`] to
//!    show its user. The host listens under [`InviteCode::discovery_key`].
//! 2. The guest decodes the code and reaches the host (the driver: signaling or the hints); the
//!    transport (libp2p Noise) authenticates both device keys.
//! 3. Both prove they hold the invitation secret, bound to this channel: keyed BLAKE3 MACs, under
//!    a key derived from the secret, over a transcript of the invitation id, both device keys
//!    and a fresh nonce from each side. The host proves first; the guest checks the proof
//!    before sending anything about itself, then proves in turn.
//! 4. The guest answers the auth method: nothing, the auth code its user got out of band, a
//!    MAC under a shared secret, or a signature by a key the host named. The host allows
//!    [`MAX_AUTH_ATTEMPTS`] wrong answers per invitation, then cancels it.
//! 5. The host checks expiry and uses, issues the credentials ([`HostEvent::WriteCredentials`]),
//!    and once they are written sends the [`Welcome`]: what the guest needs to start replicating.
//!
//! Time is an input ([`echodb_halo::Timestamp`], milliseconds since the Unix epoch from the driver's clock or
//! the simulator's), and randomness comes through [`Entropy`]: the cores read neither.
//!
//! See `docs/protocol.md`, "Invitations", for the messages and state machines.

pub mod code;
pub mod guest;
pub mod host;
#[cfg(test)]
mod tests;

use std::fmt;

use bytes::Bytes;
use echodb_halo::{Credential, PublicKey, Role};
use echodb_proto::halo as halo_pb;
use echodb_proto::mesh as pb;
use echodb_proto::mesh::invite_message::Body;

use crate::entropy::Entropy;
use crate::frame::{self, FrameError};
use crate::replicate::TrustedSet;

pub use code::{InvitationId, InvitationSecret, InviteCode, InviteCodeError};
pub use guest::{GuestAnswer, GuestEvent, GuestSession};
pub use host::{
    AuthSpec, HostEvent, HostSession, Invitation, InvitationSpec, InvitationStatus, Uses,
};

/// The libp2p protocol name.
pub const PROTOCOL: &str = "/echo/invite/1";
/// The protocol version carried in `InviteHello`.
pub const VERSION: u32 = 1;
/// Largest frame: a `Welcome` with [`MAX_WELCOME_FEEDS`] feed keys and its credentials.
pub const MAX_FRAME: usize = 1 << 20;
/// Wrong answers an invitation tolerates, in total over all its guests; then it is cancelled.
pub const MAX_AUTH_ATTEMPTS: u32 = 3;
/// Most feed keys a `Welcome` lists.
pub const MAX_WELCOME_FEEDS: usize = 4096;
/// Most credentials (and delegation links) a `Welcome` carries.
pub const MAX_WELCOME_CREDENTIALS: usize = 8;
const NONCE_LEN: usize = 32;

/// How the guest proves it is the intended guest, beyond holding the code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMethod {
    /// Holding the code is enough.
    None,
    /// The 6-digit code shown to the host's user, passed on out of band.
    AuthCode,
    /// A secret both users agreed on beforehand.
    SharedSecret,
    /// A signature by a public key the host named.
    KnownPublicKey,
}

impl AuthMethod {
    fn to_proto(self) -> i32 {
        (match self {
            AuthMethod::None => pb::AuthMethod::None,
            AuthMethod::AuthCode => pb::AuthMethod::AuthCode,
            AuthMethod::SharedSecret => pb::AuthMethod::SharedSecret,
            AuthMethod::KnownPublicKey => pb::AuthMethod::KnownPublicKey,
        }) as i32
    }

    fn from_proto(value: i32) -> Option<Self> {
        match pb::AuthMethod::try_from(value).ok()? {
            pb::AuthMethod::None => Some(AuthMethod::None),
            pb::AuthMethod::AuthCode => Some(AuthMethod::AuthCode),
            pb::AuthMethod::SharedSecret => Some(AuthMethod::SharedSecret),
            pb::AuthMethod::KnownPublicKey => Some(AuthMethod::KnownPublicKey),
            pb::AuthMethod::Unspecified => None,
        }
    }
}

/// What the guest becomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InvitationKind {
    /// A member of `space` with `role`.
    Space {
        /// The space.
        space: PublicKey,
        /// The role granted.
        role: Role,
    },
    /// A device of the host's identity, admitted to its HALO space `halo_space`; it then joins
    /// every space the identity's HALO space records.
    Device {
        /// The identity's HALO space.
        halo_space: PublicKey,
    },
}

impl InvitationKind {
    fn to_proto(self) -> i32 {
        (match self {
            InvitationKind::Space { .. } => pb::InvitationKind::Space,
            InvitationKind::Device { .. } => pb::InvitationKind::Device,
        }) as i32
    }

    /// The space the credentials are written to.
    pub fn space(&self) -> PublicKey {
        match self {
            InvitationKind::Space { space, .. } => *space,
            InvitationKind::Device { halo_space } => *halo_space,
        }
    }
}

/// A 6-digit auth code.
#[derive(Clone, PartialEq, Eq)]
pub struct AuthCode([u8; 6]);

impl AuthCode {
    /// A uniformly random code.
    pub fn random(entropy: &mut dyn Entropy) -> Self {
        // Rejection sampling keeps every code equally likely.
        const LIMIT: u32 = u32::MAX - u32::MAX % 1_000_000;
        loop {
            let mut bytes = [0u8; 4];
            entropy.fill(&mut bytes);
            let value = u32::from_le_bytes(bytes);
            if value < LIMIT {
                let mut number = value % 1_000_000;
                let mut digits = [b'0'; 6];
                for digit in digits.iter_mut().rev() {
                    *digit = b'0' + (number % 10) as u8;
                    number /= 10;
                }
                return Self(digits);
            }
        }
    }

    /// The six digits, to show the host's user.
    pub fn as_str(&self) -> &str {
        // Only ASCII digits are ever stored.
        std::str::from_utf8(&self.0).unwrap_or("")
    }

    /// Whether `answer` (spaces and dashes ignored) is this code. The comparison does not stop
    /// at the first differing digit.
    fn matches(&self, answer: &str) -> bool {
        let cleaned: Vec<u8> = answer
            .bytes()
            .filter(|b| !b.is_ascii_whitespace() && *b != b'-')
            .collect();
        blake3::hash(&cleaned) == blake3::hash(&self.0)
    }
}

impl fmt::Debug for AuthCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AuthCode(..)")
    }
}

impl fmt::Display for AuthCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The keys a guest asks to have admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuestKeys {
    /// The guest's identity (for device invitations: the host's identity, which the guest
    /// device will act for).
    pub identity: PublicKey,
    /// The guest's device key (the transport-authenticated peer).
    pub device: PublicKey,
    /// The guest device's new control feed in the space.
    pub control_feed: PublicKey,
    /// The guest device's new data feed in the space.
    pub data_feed: PublicKey,
}

/// What the guest receives when admitted: everything it needs to start replicating.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Welcome {
    /// Space or device invitation, with the space (HALO space for devices) and role.
    pub kind: InvitationKind,
    /// The identity the guest was admitted as.
    pub identity: PublicKey,
    /// The host's device: the first peer to replicate with (the code's address hints reach it).
    pub host_device: PublicKey,
    /// The space's feeds the host knows; the host's control feed among them carries the
    /// guest's admission.
    pub space_feeds: Vec<PublicKey>,
    /// The credentials the host wrote for the guest, verified.
    pub credentials: Vec<Credential>,
    /// Device invitations: the new device's delegation chain (`AuthorizedDevice` links from the
    /// identity to the device), to build its `DeviceSigner`. Empty for space invitations.
    pub delegation: Vec<Credential>,
    /// The space's genesis feed, if the host named it.
    pub genesis_feed: Option<PublicKey>,
}

impl Welcome {
    /// The bootstrap membership for the guest's first replication sessions: the host's device
    /// and the feeds it named, plus the guest's own feeds (see
    /// [`crate::replicate::Bootstrap`]).
    pub fn bootstrap(&self, own: &GuestKeys) -> TrustedSet {
        TrustedSet::new(
            [self.host_device, own.device],
            self.space_feeds
                .iter()
                .copied()
                .chain([own.control_feed, own.data_feed]),
        )
    }
}

/// Why an invitation was refused, as sent in `InviteRefused`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InviteRefusal {
    /// No such invitation at this host.
    UnknownInvitation,
    /// Past its expiry.
    Expired,
    /// Single-use and used, or at its use limit.
    Used,
    /// Too many wrong answers: the invitation is cancelled.
    TooManyAttempts,
    /// A proof of the invitation secret did not hold.
    BadProof,
    /// The answer to the auth method was wrong.
    AuthFailed,
    /// The host cancelled the invitation.
    Cancelled,
    /// The peer broke the protocol.
    ProtocolError,
    /// A reason this version does not know.
    Unknown(i32),
}

impl InviteRefusal {
    /// What the refusal means for the user, and what to do.
    pub fn describe(self) -> String {
        match self {
            InviteRefusal::UnknownInvitation => {
                "the host does not know this invitation (it ended, or the code is from another host); ask for a new code".into()
            }
            InviteRefusal::Expired => "the invitation expired; ask for a new code".into(),
            InviteRefusal::Used => "the invitation was already used; ask for a new code".into(),
            InviteRefusal::TooManyAttempts => {
                "too many wrong attempts; the invitation is cancelled, ask for a new code".into()
            }
            InviteRefusal::BadProof => {
                "a proof of the invitation secret did not hold (a damaged code?)".into()
            }
            InviteRefusal::AuthFailed => "the auth code was wrong".into(),
            InviteRefusal::Cancelled => "the host cancelled the invitation".into(),
            InviteRefusal::ProtocolError => "a protocol error".into(),
            InviteRefusal::Unknown(value) => format!("reason {value}, unknown to this version"),
        }
    }

    fn to_proto(self) -> i32 {
        match self {
            InviteRefusal::UnknownInvitation => pb::InviteRefusal::UnknownInvitation as i32,
            InviteRefusal::Expired => pb::InviteRefusal::Expired as i32,
            InviteRefusal::Used => pb::InviteRefusal::Used as i32,
            InviteRefusal::TooManyAttempts => pb::InviteRefusal::TooManyAttempts as i32,
            InviteRefusal::BadProof => pb::InviteRefusal::BadProof as i32,
            InviteRefusal::AuthFailed => pb::InviteRefusal::AuthFailed as i32,
            InviteRefusal::Cancelled => pb::InviteRefusal::Cancelled as i32,
            InviteRefusal::ProtocolError => pb::InviteRefusal::ProtocolError as i32,
            InviteRefusal::Unknown(value) => value,
        }
    }

    fn from_proto(value: i32) -> Self {
        match pb::InviteRefusal::try_from(value) {
            Ok(pb::InviteRefusal::UnknownInvitation) => InviteRefusal::UnknownInvitation,
            Ok(pb::InviteRefusal::Expired) => InviteRefusal::Expired,
            Ok(pb::InviteRefusal::Used) => InviteRefusal::Used,
            Ok(pb::InviteRefusal::TooManyAttempts) => InviteRefusal::TooManyAttempts,
            Ok(pb::InviteRefusal::BadProof) => InviteRefusal::BadProof,
            Ok(pb::InviteRefusal::AuthFailed) => InviteRefusal::AuthFailed,
            Ok(pb::InviteRefusal::Cancelled) => InviteRefusal::Cancelled,
            Ok(pb::InviteRefusal::ProtocolError) => InviteRefusal::ProtocolError,
            _ => InviteRefusal::Unknown(value),
        }
    }
}

/// Why an invitation session ended. Every variant names the invitation (and where it helps,
/// the peer).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InviteError {
    /// The bytes were not frames of the protocol.
    #[error("invitation {invitation}: {source}")]
    Frame {
        /// The invitation.
        invitation: InvitationId,
        /// What was wrong.
        #[source]
        source: FrameError,
    },
    /// A message the session's state does not allow.
    #[error("invitation {invitation}: unexpected {message} while {state}")]
    Unexpected {
        /// The invitation.
        invitation: InvitationId,
        /// The message.
        message: &'static str,
        /// The state.
        state: &'static str,
    },
    /// A field does not have the shape it must.
    #[error("invitation {invitation}: field {field} is malformed: {reason}")]
    Malformed {
        /// The invitation.
        invitation: InvitationId,
        /// The field.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// The guest spoke another version.
    #[error("invitation {invitation}: protocol version {version} is not supported (1 is)")]
    UnsupportedVersion {
        /// The invitation.
        invitation: InvitationId,
        /// The version.
        version: u32,
    },
    /// The guest named an invitation this host session is not for.
    #[error("invitation {invitation}: the guest asked for another invitation")]
    UnknownInvitation {
        /// The invitation this host holds.
        invitation: InvitationId,
    },
    /// The invitation expired.
    #[error("invitation {invitation} expired at {expires_at} ms (now {now} ms); ask for a new one")]
    Expired {
        /// The invitation.
        invitation: InvitationId,
        /// When it expired.
        expires_at: u64,
        /// Now.
        now: u64,
    },
    /// The invitation was used up.
    #[error("invitation {invitation} was already used ({uses} of {max}); ask for a new one")]
    Used {
        /// The invitation.
        invitation: InvitationId,
        /// Uses so far.
        uses: u32,
        /// Its limit.
        max: u32,
    },
    /// Too many wrong answers: the invitation is cancelled.
    #[error(
        "invitation {invitation}: {attempts} wrong answers; the invitation is cancelled, make a new one"
    )]
    TooManyAttempts {
        /// The invitation.
        invitation: InvitationId,
        /// Wrong answers given.
        attempts: u32,
    },
    /// The host cancelled the invitation.
    #[error("invitation {invitation} was cancelled by its host")]
    Cancelled {
        /// The invitation.
        invitation: InvitationId,
    },
    /// The peer's proof of the invitation secret does not hold: it does not have the code, or
    /// the channel is not the one the proof was made for.
    #[error("invitation {invitation}: the {peer}'s proof of the invitation secret does not hold")]
    BadProof {
        /// The invitation.
        invitation: InvitationId,
        /// "host" or "guest".
        peer: &'static str,
    },
    /// The guest's answer to a one-shot auth method was wrong.
    #[error("invitation {invitation}: the answer to the {method:?} check is wrong")]
    AuthFailed {
        /// The invitation.
        invitation: InvitationId,
        /// The method.
        method: AuthMethod,
    },
    /// The guest reached a device that is not the code's host.
    #[error("invitation {invitation}: reached device {reached}, but the code names host {host}")]
    WrongHost {
        /// The invitation.
        invitation: InvitationId,
        /// The code's host.
        host: PublicKey,
        /// The device reached.
        reached: PublicKey,
    },
    /// The guest was asked for an answer it cannot give now.
    #[error("invitation {invitation}: {reason}")]
    Misuse {
        /// The invitation.
        invitation: InvitationId,
        /// What went wrong.
        reason: &'static str,
    },
    /// The peer refused.
    #[error("invitation {invitation}: the peer refused: {}", reason.describe())]
    Refused {
        /// The invitation.
        invitation: InvitationId,
        /// Its reason.
        reason: InviteRefusal,
    },
}

impl InviteError {
    /// What this side tells the peer when it ends the session for this error.
    fn refusal(&self) -> Option<InviteRefusal> {
        Some(match self {
            InviteError::UnknownInvitation { .. } => InviteRefusal::UnknownInvitation,
            InviteError::Expired { .. } => InviteRefusal::Expired,
            InviteError::Used { .. } => InviteRefusal::Used,
            InviteError::TooManyAttempts { .. } => InviteRefusal::TooManyAttempts,
            InviteError::Cancelled { .. } => InviteRefusal::Cancelled,
            InviteError::BadProof { .. } => InviteRefusal::BadProof,
            InviteError::AuthFailed { .. } => InviteRefusal::AuthFailed,
            InviteError::Refused { .. } | InviteError::Misuse { .. } => return None,
            InviteError::WrongHost { .. } => return None,
            _ => InviteRefusal::ProtocolError,
        })
    }
}

/// The key both sides derive from the invitation secret.
fn invitation_key(secret: &InvitationSecret) -> [u8; 32] {
    blake3::derive_key("echodb/mesh/invite/secret/v1", &secret.0)
}

/// The key derived from a shared secret the users agreed on.
fn shared_secret_key(shared: &[u8]) -> [u8; 32] {
    blake3::derive_key("echodb/mesh/invite/shared-secret/v1", shared)
}

/// The channel binding: both device keys, both nonces, the invitation id.
fn transcript(
    id: &InvitationId,
    host: &PublicKey,
    guest: &PublicKey,
    guest_nonce: &[u8; NONCE_LEN],
    host_nonce: &[u8; NONCE_LEN],
) -> [u8; 32] {
    let mut hasher = blake3::Hasher::new();
    hasher.update(b"echodb/mesh/invite/transcript/v1\0");
    hasher.update(&id.0);
    hasher.update(host.as_bytes());
    hasher.update(guest.as_bytes());
    hasher.update(guest_nonce);
    hasher.update(host_nonce);
    *hasher.finalize().as_bytes()
}

/// A MAC under `key` over `label` and the transcript; compared in constant time as a
/// `blake3::Hash`.
fn mac(key: &[u8; 32], label: &[u8], transcript: &[u8; 32]) -> blake3::Hash {
    let mut hasher = blake3::Hasher::new_keyed(key);
    hasher.update(label);
    hasher.update(transcript);
    hasher.finalize()
}

fn known_key_message(transcript: &[u8; 32]) -> Vec<u8> {
    let mut message = b"echodb/mesh/invite/known-key/v1\0".to_vec();
    message.extend_from_slice(transcript);
    message
}

fn mac_matches(expected: &blake3::Hash, bytes: &[u8]) -> bool {
    <[u8; 32]>::try_from(bytes).is_ok_and(|b| *expected == blake3::Hash::from_bytes(b))
}

fn role_to_proto(role: Role) -> i32 {
    (match role {
        Role::Owner => halo_pb::Role::Owner,
        Role::Admin => halo_pb::Role::Admin,
        Role::Editor => halo_pb::Role::Editor,
        Role::Reader => halo_pb::Role::Reader,
    }) as i32
}

fn role_from_proto(value: i32) -> Option<Role> {
    match halo_pb::Role::try_from(value).ok()? {
        halo_pb::Role::Owner => Some(Role::Owner),
        halo_pb::Role::Admin => Some(Role::Admin),
        halo_pb::Role::Editor => Some(Role::Editor),
        halo_pb::Role::Reader => Some(Role::Reader),
        halo_pb::Role::Unspecified => None,
    }
}

fn encode(body: Body) -> Option<Bytes> {
    match frame::encode(PROTOCOL, &pb::InviteMessage { body: Some(body) }, MAX_FRAME) {
        Ok(frame) => Some(frame),
        Err(error) => {
            tracing::error!(%error, "cannot encode an invitation frame");
            None
        }
    }
}

/// The frame that refuses a guest before any session exists (e.g. an unknown invitation id).
pub fn refusal_frame(reason: InviteRefusal) -> Option<Bytes> {
    encode(refusal_body(reason))
}

/// The invitation id a guest's first frame (`InviteHello`) names, if `frame` is one.
pub fn hello_invitation(frame: &[u8]) -> Option<InvitationId> {
    use echodb_proto::Message as _;
    let message = pb::InviteMessage::decode(frame).ok()?;
    let Some(Body::Hello(hello)) = message.body else {
        return None;
    };
    let id: [u8; code::ID_LEN] = hello.invitation_id.as_ref().try_into().ok()?;
    Some(InvitationId(id))
}

fn refusal_body(reason: InviteRefusal) -> Body {
    Body::Refused(pb::InviteRefused {
        reason: reason.to_proto(),
    })
}

fn body_name(body: &Body) -> &'static str {
    match body {
        Body::Hello(_) => "InviteHello",
        Body::Challenge(_) => "InviteChallenge",
        Body::Join(_) => "JoinRequest",
        Body::Authenticate(_) => "Authenticate",
        Body::AuthFailed(_) => "AuthFailed",
        Body::Welcome(_) => "Welcome",
        Body::Refused(_) => "InviteRefused",
    }
}

fn nonce(
    invitation: InvitationId,
    field: &'static str,
    bytes: &[u8],
) -> Result<[u8; NONCE_LEN], InviteError> {
    bytes.try_into().map_err(|_| InviteError::Malformed {
        invitation,
        field,
        reason: format!("{} bytes, not {NONCE_LEN}", bytes.len()),
    })
}

fn key(
    invitation: InvitationId,
    field: &'static str,
    bytes: &[u8],
) -> Result<PublicKey, InviteError> {
    PublicKey::from_slice(bytes).map_err(|e| InviteError::Malformed {
        invitation,
        field,
        reason: e.to_string(),
    })
}
