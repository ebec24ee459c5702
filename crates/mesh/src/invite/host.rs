//! The host's side: the [`Invitation`] record and one [`HostSession`] per guest stream.
//!
//! The invitation is shared by all its sessions (a multi-use invitation serves several guests;
//! the attempt budget and the use count are the invitation's, not a session's), so each call
//! that may change it takes it as `&mut Invitation`: the driver owns it and no lock is needed.

use std::collections::VecDeque;

use bytes::Bytes;
use echodb_halo::{
    Assertion, Claim, Credential, Designation, DeviceSigner, Issuer, PublicKey, Signer, Timestamp,
};
use echodb_proto::mesh as pb;
use echodb_proto::mesh::authenticate::Answer;
use echodb_proto::mesh::invite_message::Body;

use super::{
    AuthCode, AuthMethod, GuestKeys, InvitationId, InvitationKind, InvitationSecret, InviteCode,
    InviteCodeError, InviteError, MAX_AUTH_ATTEMPTS, MAX_FRAME, MAX_WELCOME_FEEDS, NONCE_LEN,
    PROTOCOL, VERSION, body_name, encode, invitation_key, key, known_key_message, mac, mac_matches,
    nonce, refusal_body, role_to_proto, shared_secret_key, transcript,
};
use crate::discovery::DiscoveryKey;
use crate::entropy::{Entropy, array32};
use crate::frame::FrameDecoder;

/// How the host will check the guest.
#[derive(Clone, PartialEq, Eq)]
pub enum AuthSpec {
    /// Holding the code is enough.
    None,
    /// A 6-digit code is generated with the invitation; the host's user passes it on.
    AuthCode,
    /// A secret the two users agreed on beforehand.
    SharedSecret(Vec<u8>),
    /// A signature by this key (the guest's identity key, usually).
    KnownPublicKey(PublicKey),
}

impl std::fmt::Debug for AuthSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AuthSpec::None => f.write_str("None"),
            AuthSpec::AuthCode => f.write_str("AuthCode"),
            AuthSpec::SharedSecret(_) => f.write_str("SharedSecret(..)"),
            AuthSpec::KnownPublicKey(key) => write!(f, "KnownPublicKey({key:?})"),
        }
    }
}

/// How many guests an invitation admits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Uses {
    /// One guest; then the code is refused.
    Single,
    /// Several guests: up to `max`, or until it expires or is cancelled when `None`.
    Multi {
        /// The most guests admitted.
        max: Option<u32>,
    },
}

impl Uses {
    fn max(self) -> u32 {
        match self {
            Uses::Single => 1,
            Uses::Multi { max } => max.unwrap_or(u32::MAX),
        }
    }
}

/// What the host wants its invitation to be.
#[derive(Debug, Clone)]
pub struct InvitationSpec {
    /// Into a space, or a device into the host's identity.
    pub kind: InvitationKind,
    /// How the guest is checked.
    pub auth: AuthSpec,
    /// How many guests it admits.
    pub uses: Uses,
    /// When it stops working (milliseconds since the Unix epoch, compared with the `now` the
    /// driver passes in); `None`: never.
    pub expires_at: Option<Timestamp>,
    /// Where the host can be reached, written into the code.
    pub hints: Vec<String>,
}

#[derive(Clone)]
enum HostAuth {
    None,
    AuthCode(AuthCode),
    SharedSecret([u8; 32]),
    KnownPublicKey(PublicKey),
}

/// Whether an invitation still admits guests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InvitationStatus {
    /// It does.
    Active,
    /// Past its expiry.
    Expired,
    /// At its use limit.
    Used,
    /// Cancelled after [`MAX_AUTH_ATTEMPTS`] wrong answers.
    TooManyAttempts,
    /// Cancelled by the host.
    Cancelled,
}

/// The host's record of one invitation: its code, secret, checks and counters.
pub struct Invitation {
    code: InviteCode,
    key: [u8; 32],
    kind: InvitationKind,
    auth: HostAuth,
    uses: Uses,
    expires_at: Option<Timestamp>,
    used: u32,
    failed: u32,
    cancelled: bool,
}

impl std::fmt::Debug for Invitation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Invitation")
            .field("id", &self.code.id())
            .field("kind", &self.kind)
            .field("method", &self.auth_method())
            .field("uses", &self.uses)
            .field("expires_at", &self.expires_at)
            .field("used", &self.used)
            .field("failed", &self.failed)
            .field("cancelled", &self.cancelled)
            .finish_non_exhaustive()
    }
}

impl Invitation {
    /// A new invitation hosted by the device `host_device`: random id, secret and (for
    /// [`AuthSpec::AuthCode`]) auth code.
    pub fn create(
        spec: InvitationSpec,
        host_device: PublicKey,
        entropy: &mut dyn Entropy,
    ) -> Result<Self, InviteCodeError> {
        let code = InviteCode::new(
            InvitationId::random(entropy),
            InvitationSecret::random(entropy),
            host_device,
            spec.hints,
        )?;
        let auth = match spec.auth {
            AuthSpec::None => HostAuth::None,
            AuthSpec::AuthCode => HostAuth::AuthCode(AuthCode::random(entropy)),
            AuthSpec::SharedSecret(shared) => HostAuth::SharedSecret(shared_secret_key(&shared)),
            AuthSpec::KnownPublicKey(key) => HostAuth::KnownPublicKey(key),
        };
        tracing::info!(invitation = %code.id(), kind = ?spec.kind, uses = ?spec.uses, "invitation created");
        Ok(Self {
            key: invitation_key(code.secret()),
            code,
            kind: spec.kind,
            auth,
            uses: spec.uses,
            expires_at: spec.expires_at,
            used: 0,
            failed: 0,
            cancelled: false,
        })
    }

    /// The code to hand to the guest.
    pub fn code(&self) -> &InviteCode {
        &self.code
    }

    /// The invitation id.
    pub fn id(&self) -> InvitationId {
        self.code.id()
    }

    /// The key to listen under.
    pub fn discovery_key(&self) -> DiscoveryKey {
        self.code.discovery_key()
    }

    /// What the guest becomes.
    pub fn kind(&self) -> InvitationKind {
        self.kind
    }

    /// How the guest is checked.
    pub fn auth_method(&self) -> AuthMethod {
        match self.auth {
            HostAuth::None => AuthMethod::None,
            HostAuth::AuthCode(_) => AuthMethod::AuthCode,
            HostAuth::SharedSecret(_) => AuthMethod::SharedSecret,
            HostAuth::KnownPublicKey(_) => AuthMethod::KnownPublicKey,
        }
    }

    /// The auth code to show the host's user (auth-code invitations).
    pub fn auth_code(&self) -> Option<&AuthCode> {
        match &self.auth {
            HostAuth::AuthCode(code) => Some(code),
            _ => None,
        }
    }

    /// Guests admitted so far.
    pub fn uses(&self) -> u32 {
        self.used
    }

    /// Wrong answers so far.
    pub fn failed_attempts(&self) -> u32 {
        self.failed
    }

    /// Stops the invitation: every later guest is refused.
    pub fn cancel(&mut self) {
        self.cancelled = true;
    }

    /// Whether it still admits guests at `now`.
    pub fn status(&self, now: Timestamp) -> InvitationStatus {
        if self.failed >= MAX_AUTH_ATTEMPTS {
            InvitationStatus::TooManyAttempts
        } else if self.cancelled {
            InvitationStatus::Cancelled
        } else if self.expires_at.is_some_and(|at| now >= at) {
            InvitationStatus::Expired
        } else if self.used >= self.uses.max() {
            InvitationStatus::Used
        } else {
            InvitationStatus::Active
        }
    }

    fn check(&self, now: Timestamp) -> Result<(), InviteError> {
        let invitation = self.id();
        match self.status(now) {
            InvitationStatus::Active => Ok(()),
            InvitationStatus::Expired => Err(InviteError::Expired {
                invitation,
                expires_at: self.expires_at.map_or(0, |t| t.0),
                now: now.0,
            }),
            InvitationStatus::Used => Err(InviteError::Used {
                invitation,
                uses: self.used,
                max: self.uses.max(),
            }),
            InvitationStatus::TooManyAttempts => Err(InviteError::TooManyAttempts {
                invitation,
                attempts: self.failed,
            }),
            InvitationStatus::Cancelled => Err(InviteError::Cancelled { invitation }),
        }
    }
}

/// What a host session reports to its driver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostEvent {
    /// The guest passed every check. Append these credentials, in order, to the host's control
    /// feed of `space` (and let the space's state machine process them), then call
    /// [`HostSession::credentials_written`] so the guest is welcomed.
    WriteCredentials {
        /// The guest.
        guest: GuestKeys,
        /// The space to write to (the HALO space for device invitations).
        space: PublicKey,
        /// Space invitations: `SpaceMember`, then `AdmittedFeed` for the control and data
        /// feeds. Device invitations: `AuthorizedDevice`, then the two `AdmittedFeed`s.
        credentials: Vec<Credential>,
    },
    /// The guest's answer was wrong; it may try again.
    AuthFailed {
        /// Wrong answers the invitation still tolerates.
        attempts_left: u32,
    },
    /// The guest was welcomed.
    Completed {
        /// The guest.
        guest: GuestKeys,
    },
}

#[derive(Debug)]
enum HostState {
    AwaitHello,
    AwaitJoin {
        transcript: [u8; 32],
    },
    AwaitAuth {
        transcript: [u8; 32],
        guest: GuestKeys,
    },
    AwaitWrite {
        guest: GuestKeys,
        kind: InvitationKind,
        credentials: Vec<Credential>,
        delegation: Vec<Credential>,
    },
    Done,
    Failed,
}

impl HostState {
    fn name(&self) -> &'static str {
        match self {
            HostState::AwaitHello => "waiting for the guest's hello",
            HostState::AwaitJoin { .. } => "waiting for the guest's proof",
            HostState::AwaitAuth { .. } => "waiting for the guest's answer",
            HostState::AwaitWrite { .. } => "writing the guest's credentials",
            HostState::Done => "done",
            HostState::Failed => "failed",
        }
    }
}

/// The host's side of one guest's stream.
#[derive(Debug)]
pub struct HostSession {
    invitation: InvitationId,
    host_device: PublicKey,
    guest_device: PublicKey,
    nonce: [u8; NONCE_LEN],
    state: HostState,
    decoder: FrameDecoder,
    /// Frames to send: at most a reply and a refusal.
    outbox: VecDeque<Bytes>,
    /// At most two events per input (a reply and its outcome); the driver drains them.
    events: VecDeque<HostEvent>,
}

/// Signs a delegation link: the host device signs for the identity with no chain of its own.
struct Link<'a>(&'a DeviceSigner);

impl Issuer for Link<'_> {
    fn issuer_key(&self) -> PublicKey {
        self.0.identity()
    }
    fn signer(&self) -> &dyn Signer {
        Issuer::signer(self.0)
    }
    fn delegation(&self) -> &[Credential] {
        &[]
    }
}

impl HostSession {
    /// A session for a guest whose device key the transport authenticated as `guest_device`.
    pub fn new(
        invitation: &Invitation,
        guest_device: PublicKey,
        entropy: &mut dyn Entropy,
    ) -> Self {
        Self {
            invitation: invitation.id(),
            host_device: invitation.code.host(),
            guest_device,
            nonce: array32(entropy),
            state: HostState::AwaitHello,
            decoder: FrameDecoder::new(PROTOCOL, MAX_FRAME),
            outbox: VecDeque::new(),
            events: VecDeque::new(),
        }
    }

    /// Whether the guest was welcomed.
    pub fn is_done(&self) -> bool {
        matches!(self.state, HostState::Done)
    }

    /// Whether the session failed.
    pub fn is_failed(&self) -> bool {
        matches!(self.state, HostState::Failed)
    }

    /// The next frame to write.
    pub fn poll_transmit(&mut self) -> Option<Bytes> {
        self.outbox.pop_front()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<HostEvent> {
        self.events.pop_front()
    }

    /// Bytes from the guest. `invitation` is the one this session was made for; `issuer` is the
    /// host device signing for its identity (an admin or owner of the space, for space
    /// invitations); `now` is the driver's (or simulator's) clock.
    pub fn handle_input(
        &mut self,
        invitation: &mut Invitation,
        issuer: &DeviceSigner,
        now: Timestamp,
        mut input: &[u8],
    ) -> Result<(), InviteError> {
        while !matches!(self.state, HostState::Failed | HostState::Done) {
            let id = self.invitation;
            let frame = match self.decoder.next_frame(&mut input) {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(source) => {
                    return Err(self.fail(InviteError::Frame {
                        invitation: id,
                        source,
                    }));
                }
            };
            let len = frame.len();
            let body = match self.decoder.decode::<pb::InviteMessage>(frame) {
                Ok(pb::InviteMessage { body: Some(body) }) => body,
                Ok(pb::InviteMessage { body: None }) => {
                    let source = self.decoder.empty(len);
                    return Err(self.fail(InviteError::Frame {
                        invitation: id,
                        source,
                    }));
                }
                Err(source) => {
                    return Err(self.fail(InviteError::Frame {
                        invitation: id,
                        source,
                    }));
                }
            };
            if let Err(error) = self.handle_message(invitation, issuer, now, body) {
                return Err(self.fail(error));
            }
        }
        Ok(())
    }

    /// The credentials of [`HostEvent::WriteCredentials`] are written (and processed): send the
    /// guest its welcome, naming `space_feeds` (the space's feeds the host knows, at most
    /// [`MAX_WELCOME_FEEDS`]; the host's own control feed must be among them).
    pub fn credentials_written(&mut self, space_feeds: Vec<PublicKey>) -> Result<(), InviteError> {
        self.credentials_written_with_genesis(space_feeds, None)
    }

    /// [`HostSession::credentials_written`], naming the space's genesis feed in the welcome so
    /// the guest can start its pipeline at once.
    pub fn credentials_written_with_genesis(
        &mut self,
        mut space_feeds: Vec<PublicKey>,
        genesis_feed: Option<PublicKey>,
    ) -> Result<(), InviteError> {
        let HostState::AwaitWrite { .. } = self.state else {
            return Err(InviteError::Misuse {
                invitation: self.invitation,
                reason: "credentials_written called before the guest was admitted",
            });
        };
        let HostState::AwaitWrite {
            guest,
            kind,
            credentials,
            delegation,
        } = std::mem::replace(&mut self.state, HostState::Done)
        else {
            return Ok(());
        };
        space_feeds.sort();
        space_feeds.dedup();
        space_feeds.truncate(MAX_WELCOME_FEEDS);
        let role = match kind {
            InvitationKind::Space { role, .. } => role_to_proto(role),
            InvitationKind::Device { .. } => 0,
        };
        let space = kind.space();
        let welcome = pb::Welcome {
            kind: kind.to_proto(),
            space_key: Bytes::copy_from_slice(space.as_bytes()),
            identity: Bytes::copy_from_slice(guest.identity.as_bytes()),
            role,
            host_device: Bytes::copy_from_slice(self.host_device.as_bytes()),
            space_feeds: space_feeds
                .iter()
                .map(|f| Bytes::copy_from_slice(f.as_bytes()))
                .collect(),
            credentials: credentials.iter().map(|c| c.to_bytes().into()).collect(),
            delegation: delegation.iter().map(|c| c.to_bytes().into()).collect(),
            genesis_feed: genesis_feed
                .map(|f| Bytes::copy_from_slice(f.as_bytes()))
                .unwrap_or_default(),
        };
        self.outbox.extend(encode(Body::Welcome(welcome)));
        self.events.push_back(HostEvent::Completed { guest });
        tracing::info!(invitation = %self.invitation, guest = %guest.device.short(), "guest welcomed");
        Ok(())
    }

    fn handle_message(
        &mut self,
        invitation: &mut Invitation,
        issuer: &DeviceSigner,
        now: Timestamp,
        body: Body,
    ) -> Result<(), InviteError> {
        let id = self.invitation;
        match (&self.state, body) {
            (_, Body::Refused(refused)) => Err(InviteError::Refused {
                invitation: id,
                reason: super::InviteRefusal::from_proto(refused.reason),
            }),
            (HostState::AwaitHello, Body::Hello(hello)) => {
                if hello.version != VERSION {
                    return Err(InviteError::UnsupportedVersion {
                        invitation: id,
                        version: hello.version,
                    });
                }
                if hello.invitation_id.as_ref() != invitation.id().0 || invitation.id() != id {
                    return Err(InviteError::UnknownInvitation { invitation: id });
                }
                invitation.check(now)?;
                let guest_nonce = nonce(id, "hello.nonce", &hello.nonce)?;
                let transcript = transcript(
                    &id,
                    &self.host_device,
                    &self.guest_device,
                    &guest_nonce,
                    &self.nonce,
                );
                let proof = mac(&invitation.key, b"host", &transcript);
                self.outbox
                    .extend(encode(Body::Challenge(pb::InviteChallenge {
                        nonce: Bytes::copy_from_slice(&self.nonce),
                        proof: Bytes::copy_from_slice(proof.as_bytes()),
                        auth_method: invitation.auth_method().to_proto(),
                        kind: invitation.kind.to_proto(),
                    })));
                self.state = HostState::AwaitJoin { transcript };
                Ok(())
            }
            (HostState::AwaitJoin { transcript }, Body::Join(join)) => {
                let transcript = *transcript;
                if !mac_matches(&mac(&invitation.key, b"guest", &transcript), &join.proof) {
                    tracing::warn!(invitation = %id, guest = %self.guest_device.short(), "guest's proof of the invitation secret does not hold");
                    return Err(InviteError::BadProof {
                        invitation: id,
                        peer: "guest",
                    });
                }
                let identity = match invitation.kind {
                    InvitationKind::Space { .. } => key(id, "join.identity", &join.identity)?,
                    InvitationKind::Device { .. } => issuer.identity(),
                };
                let guest = GuestKeys {
                    identity,
                    device: self.guest_device,
                    control_feed: key(id, "join.control_feed", &join.control_feed)?,
                    data_feed: key(id, "join.data_feed", &join.data_feed)?,
                };
                invitation.check(now)?;
                if matches!(invitation.auth, HostAuth::None) {
                    self.admit(invitation, issuer, now, guest)
                } else {
                    self.state = HostState::AwaitAuth { transcript, guest };
                    Ok(())
                }
            }
            (HostState::AwaitAuth { transcript, guest }, Body::Authenticate(answer)) => {
                let (transcript, guest) = (*transcript, *guest);
                invitation.check(now)?;
                if Self::answer_holds(invitation, &transcript, answer.answer) {
                    return self.admit(invitation, issuer, now, guest);
                }
                invitation.failed += 1;
                let attempts_left = MAX_AUTH_ATTEMPTS.saturating_sub(invitation.failed);
                tracing::warn!(invitation = %id, guest = %self.guest_device.short(), attempts_left, "wrong answer to the invitation's auth check");
                if attempts_left == 0 {
                    return Err(InviteError::TooManyAttempts {
                        invitation: id,
                        attempts: invitation.failed,
                    });
                }
                self.outbox
                    .extend(encode(Body::AuthFailed(pb::AuthFailed { attempts_left })));
                self.events
                    .push_back(HostEvent::AuthFailed { attempts_left });
                Ok(())
            }
            (state, body) => Err(InviteError::Unexpected {
                invitation: id,
                message: body_name(&body),
                state: state.name(),
            }),
        }
    }

    fn answer_holds(
        invitation: &Invitation,
        transcript: &[u8; 32],
        answer: Option<Answer>,
    ) -> bool {
        match (&invitation.auth, answer) {
            (HostAuth::AuthCode(code), Some(Answer::AuthCode(given))) => code.matches(&given),
            (HostAuth::SharedSecret(key), Some(Answer::SharedSecretProof(proof))) => {
                mac_matches(&mac(key, b"shared", transcript), &proof)
            }
            (HostAuth::KnownPublicKey(known), Some(Answer::Signature(signature))) => {
                echodb_halo::Signature::from_slice(&signature).is_ok_and(|signature| {
                    known
                        .verify(&known_key_message(transcript), &signature)
                        .is_ok()
                })
            }
            _ => false,
        }
    }

    fn admit(
        &mut self,
        invitation: &mut Invitation,
        issuer: &DeviceSigner,
        now: Timestamp,
        guest: GuestKeys,
    ) -> Result<(), InviteError> {
        invitation.check(now)?;
        invitation.used += 1;
        let space = invitation.kind.space();
        let claim = |subject, assertion, parents| Claim {
            space,
            issuer: issuer.identity(),
            subject,
            issued_at: now,
            parents,
            assertion,
        };
        let admit = |feed, designation, parent| {
            claim(
                feed,
                Assertion::AdmittedFeed {
                    designation,
                    identity: guest.identity,
                    device: guest.device,
                },
                vec![parent],
            )
            .sign(issuer)
        };
        let (first, delegation) = match invitation.kind {
            InvitationKind::Space { role, .. } => (
                claim(guest.identity, Assertion::SpaceMember { role }, Vec::new()).sign(issuer),
                Vec::new(),
            ),
            InvitationKind::Device { .. } => {
                let authorize = claim(
                    guest.device,
                    Assertion::AuthorizedDevice {
                        identity: issuer.identity(),
                        device: guest.device,
                    },
                    Vec::new(),
                );
                // The new device's own chain: the host's chain, then the same claim signed by
                // the host device as a plain link (no chain of its own).
                let link = authorize.clone().sign(&Link(issuer));
                let mut delegation = issuer.chain().to_vec();
                delegation.push(link);
                (authorize.sign(issuer), delegation)
            }
        };
        let control = admit(guest.control_feed, Designation::Control, first.id());
        let data = admit(guest.data_feed, Designation::Data, first.id());
        let credentials = vec![first, control, data];
        self.events.push_back(HostEvent::WriteCredentials {
            guest,
            space,
            credentials: credentials.clone(),
        });
        tracing::info!(invitation = %self.invitation, guest = %guest.device.short(), uses = invitation.used, "guest admitted; credentials to write");
        self.state = HostState::AwaitWrite {
            guest,
            kind: invitation.kind,
            credentials,
            delegation,
        };
        Ok(())
    }

    fn fail(&mut self, error: InviteError) -> InviteError {
        tracing::info!(%error, "invitation session ended");
        self.state = HostState::Failed;
        self.outbox.clear();
        if let Some(reason) = error.refusal() {
            self.outbox.extend(encode(refusal_body(reason)));
        }
        error
    }
}
