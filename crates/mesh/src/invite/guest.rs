//! The guest's side of an invitation.

use std::collections::VecDeque;

use bytes::Bytes;
use echodb_halo::{Assertion, Credential, Designation, PublicKey, Signer};
use echodb_proto::mesh as pb;
use echodb_proto::mesh::authenticate::Answer;
use echodb_proto::mesh::invite_message::Body;

use super::{
    AuthMethod, GuestKeys, InvitationKind, InviteCode, InviteError, InviteRefusal, MAX_FRAME,
    MAX_WELCOME_CREDENTIALS, MAX_WELCOME_FEEDS, NONCE_LEN, PROTOCOL, VERSION, Welcome, body_name,
    encode, invitation_key, key, known_key_message, mac, mac_matches, nonce, refusal_body,
    role_from_proto, shared_secret_key, transcript,
};
use crate::entropy::{Entropy, array32};
use crate::frame::FrameDecoder;

/// The guest's answer to the host's auth method.
#[derive(Clone, Copy)]
pub enum GuestAnswer<'a> {
    /// The 6 digits the host's user passed on.
    AuthCode(&'a str),
    /// The secret the users agreed on (only a MAC of it is sent).
    SharedSecret(&'a [u8]),
    /// The key the host named signs the channel's transcript.
    KnownKey(&'a dyn Signer),
}

impl std::fmt::Debug for GuestAnswer<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            GuestAnswer::AuthCode(_) => f.write_str("AuthCode(..)"),
            GuestAnswer::SharedSecret(_) => f.write_str("SharedSecret(..)"),
            GuestAnswer::KnownKey(signer) => write!(f, "KnownKey({:?})", signer.public_key()),
        }
    }
}

/// What a guest session reports to its driver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GuestEvent {
    /// The host proved the invitation secret and asks for this answer: call
    /// [`GuestSession::answer`].
    AuthRequired {
        /// The method.
        method: AuthMethod,
    },
    /// The answer was wrong; another may be given.
    AuthFailed {
        /// Wrong answers the invitation still tolerates.
        attempts_left: u32,
    },
    /// Admitted: what the guest needs to start replicating.
    Welcomed(Box<Welcome>),
}

#[derive(Debug)]
enum GuestState {
    AwaitChallenge,
    AwaitAnswer {
        transcript: [u8; 32],
        method: AuthMethod,
    },
    AwaitResult {
        transcript: [u8; 32],
        method: AuthMethod,
    },
    AwaitWelcome,
    Done,
    Failed,
}

impl GuestState {
    fn name(&self) -> &'static str {
        match self {
            GuestState::AwaitChallenge => "waiting for the host's challenge",
            GuestState::AwaitAnswer { .. } => "waiting for the user's answer",
            GuestState::AwaitResult { .. } => "waiting for the host's verdict",
            GuestState::AwaitWelcome => "waiting for the welcome",
            GuestState::Done => "done",
            GuestState::Failed => "failed",
        }
    }
}

/// The guest's side of one invitation stream.
#[derive(Debug)]
pub struct GuestSession {
    code: InviteCode,
    key: [u8; 32],
    keys: GuestKeys,
    nonce: [u8; NONCE_LEN],
    state: GuestState,
    decoder: FrameDecoder,
    /// Frames to send: at most a message and a refusal.
    outbox: VecDeque<Bytes>,
    /// At most one event per input frame; the driver drains them.
    events: VecDeque<GuestEvent>,
}

impl GuestSession {
    /// Starts joining with `code`, over a stream to `host_device` (as the transport
    /// authenticated it; it must be the code's host). `keys` are the guest's identity (ignored
    /// for device invitations), device and new feeds. The first frame is `InviteHello`.
    pub fn new(
        code: InviteCode,
        keys: GuestKeys,
        host_device: PublicKey,
        entropy: &mut dyn Entropy,
    ) -> Result<Self, InviteError> {
        let invitation = code.id();
        if host_device != code.host() {
            return Err(InviteError::WrongHost {
                invitation,
                host: code.host(),
                reached: host_device,
            });
        }
        let nonce = array32(entropy);
        let mut outbox = VecDeque::new();
        outbox.extend(encode(Body::Hello(pb::InviteHello {
            version: VERSION,
            invitation_id: Bytes::copy_from_slice(&invitation.0),
            nonce: Bytes::copy_from_slice(&nonce),
        })));
        Ok(Self {
            key: invitation_key(code.secret()),
            code,
            keys,
            nonce,
            state: GuestState::AwaitChallenge,
            decoder: FrameDecoder::new(PROTOCOL, MAX_FRAME),
            outbox,
            events: VecDeque::new(),
        })
    }

    /// Whether the guest was welcomed.
    pub fn is_done(&self) -> bool {
        matches!(self.state, GuestState::Done)
    }

    /// Whether the session failed.
    pub fn is_failed(&self) -> bool {
        matches!(self.state, GuestState::Failed)
    }

    /// The next frame to write.
    pub fn poll_transmit(&mut self) -> Option<Bytes> {
        self.outbox.pop_front()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<GuestEvent> {
        self.events.pop_front()
    }

    /// Answers the host's auth method (after [`GuestEvent::AuthRequired`] or
    /// [`GuestEvent::AuthFailed`]).
    pub fn answer(&mut self, answer: GuestAnswer<'_>) -> Result<(), InviteError> {
        let invitation = self.code.id();
        let GuestState::AwaitAnswer { transcript, method } = self.state else {
            return Err(InviteError::Misuse {
                invitation,
                reason: "no answer is asked for now",
            });
        };
        let body = match (method, answer) {
            (AuthMethod::AuthCode, GuestAnswer::AuthCode(code)) => {
                Answer::AuthCode(code.to_owned())
            }
            (AuthMethod::SharedSecret, GuestAnswer::SharedSecret(shared)) => {
                let proof = mac(&shared_secret_key(shared), b"shared", &transcript);
                Answer::SharedSecretProof(Bytes::copy_from_slice(proof.as_bytes()))
            }
            (AuthMethod::KnownPublicKey, GuestAnswer::KnownKey(signer)) => {
                let signature = signer.sign(&known_key_message(&transcript));
                Answer::Signature(Bytes::copy_from_slice(signature.as_bytes()))
            }
            _ => {
                return Err(InviteError::Misuse {
                    invitation,
                    reason: "the answer is not of the kind the host asked for",
                });
            }
        };
        self.outbox
            .extend(encode(Body::Authenticate(pb::Authenticate {
                answer: Some(body),
            })));
        self.state = GuestState::AwaitResult { transcript, method };
        Ok(())
    }

    /// Bytes from the host.
    pub fn handle_input(&mut self, mut input: &[u8]) -> Result<(), InviteError> {
        while !matches!(self.state, GuestState::Failed | GuestState::Done) {
            let invitation = self.code.id();
            let frame = match self.decoder.next_frame(&mut input) {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(source) => return Err(self.fail(InviteError::Frame { invitation, source })),
            };
            let len = frame.len();
            let body = match self.decoder.decode::<pb::InviteMessage>(frame) {
                Ok(pb::InviteMessage { body: Some(body) }) => body,
                Ok(pb::InviteMessage { body: None }) => {
                    let source = self.decoder.empty(len);
                    return Err(self.fail(InviteError::Frame { invitation, source }));
                }
                Err(source) => return Err(self.fail(InviteError::Frame { invitation, source })),
            };
            if let Err(error) = self.handle_message(body) {
                return Err(self.fail(error));
            }
        }
        Ok(())
    }

    fn handle_message(&mut self, body: Body) -> Result<(), InviteError> {
        let invitation = self.code.id();
        match (&self.state, body) {
            (_, Body::Refused(refused)) => {
                let reason = InviteRefusal::from_proto(refused.reason);
                tracing::info!(%invitation, ?reason, "the host refused the invitation");
                Err(InviteError::Refused { invitation, reason })
            }
            (GuestState::AwaitChallenge, Body::Challenge(challenge)) => {
                let host_nonce = nonce(invitation, "challenge.nonce", &challenge.nonce)?;
                let transcript = transcript(
                    &invitation,
                    &self.code.host(),
                    &self.keys.device,
                    &self.nonce,
                    &host_nonce,
                );
                // The host proves first: nothing about the guest is sent to a host that does
                // not hold the secret.
                if !mac_matches(&mac(&self.key, b"host", &transcript), &challenge.proof) {
                    return Err(InviteError::BadProof {
                        invitation,
                        peer: "host",
                    });
                }
                let method =
                    super::AuthMethod::from_proto(challenge.auth_method).ok_or_else(|| {
                        InviteError::Malformed {
                            invitation,
                            field: "challenge.auth_method",
                            reason: format!("unknown value {}", challenge.auth_method),
                        }
                    })?;
                let proof = mac(&self.key, b"guest", &transcript);
                self.outbox.extend(encode(Body::Join(pb::JoinRequest {
                    proof: Bytes::copy_from_slice(proof.as_bytes()),
                    identity: Bytes::copy_from_slice(self.keys.identity.as_bytes()),
                    control_feed: Bytes::copy_from_slice(self.keys.control_feed.as_bytes()),
                    data_feed: Bytes::copy_from_slice(self.keys.data_feed.as_bytes()),
                })));
                if method == AuthMethod::None {
                    self.state = GuestState::AwaitWelcome;
                } else {
                    self.state = GuestState::AwaitAnswer { transcript, method };
                    self.events.push_back(GuestEvent::AuthRequired { method });
                }
                Ok(())
            }
            (GuestState::AwaitResult { transcript, method }, Body::AuthFailed(failed)) => {
                self.state = GuestState::AwaitAnswer {
                    transcript: *transcript,
                    method: *method,
                };
                self.events.push_back(GuestEvent::AuthFailed {
                    attempts_left: failed.attempts_left,
                });
                Ok(())
            }
            (GuestState::AwaitResult { .. } | GuestState::AwaitWelcome, Body::Welcome(welcome)) => {
                let welcome = self.check_welcome(welcome)?;
                tracing::info!(%invitation, space = %welcome.kind.space().short(), "welcomed");
                self.state = GuestState::Done;
                self.events
                    .push_back(GuestEvent::Welcomed(Box::new(welcome)));
                Ok(())
            }
            (state, body) => Err(InviteError::Unexpected {
                invitation,
                message: body_name(&body),
                state: state.name(),
            }),
        }
    }

    /// Decodes the welcome and checks that its credentials verify and admit exactly this guest.
    fn check_welcome(&self, welcome: pb::Welcome) -> Result<Welcome, InviteError> {
        let invitation = self.code.id();
        let bad = |field: &'static str, reason: String| InviteError::Malformed {
            invitation,
            field,
            reason,
        };
        let space = key(invitation, "welcome.space_key", &welcome.space_key)?;
        let identity = key(invitation, "welcome.identity", &welcome.identity)?;
        let host_device = key(invitation, "welcome.host_device", &welcome.host_device)?;
        if host_device != self.code.host() {
            return Err(bad("welcome.host_device", "not the code's host".into()));
        }
        let kind = match pb::InvitationKind::try_from(welcome.kind) {
            Ok(pb::InvitationKind::Space) => InvitationKind::Space {
                space,
                role: role_from_proto(welcome.role)
                    .ok_or_else(|| bad("welcome.role", format!("unknown role {}", welcome.role)))?,
            },
            Ok(pb::InvitationKind::Device) => InvitationKind::Device { halo_space: space },
            _ => {
                return Err(bad(
                    "welcome.kind",
                    format!("unknown kind {}", welcome.kind),
                ));
            }
        };
        if welcome.space_feeds.len() > MAX_WELCOME_FEEDS {
            return Err(bad(
                "welcome.space_feeds",
                format!("{} feeds", welcome.space_feeds.len()),
            ));
        }
        let space_feeds = welcome
            .space_feeds
            .iter()
            .map(|f| key(invitation, "welcome.space_feeds", f))
            .collect::<Result<Vec<_>, _>>()?;
        let decode = |field: &'static str,
                      list: &[Bytes]|
         -> Result<Vec<Credential>, InviteError> {
            if list.len() > MAX_WELCOME_CREDENTIALS {
                return Err(bad(field, format!("{} credentials", list.len())));
            }
            list.iter()
                .map(|bytes| Credential::from_bytes(bytes).map_err(|e| bad(field, e.to_string())))
                .collect()
        };
        let credentials = decode("welcome.credentials", &welcome.credentials)?;
        for credential in &credentials {
            credential
                .verify()
                .map_err(|e| bad("welcome.credentials", e.to_string()))?;
        }
        let delegation = decode("welcome.delegation", &welcome.delegation)?;
        // A chain is checked as a whole: the first link signed by the identity, each next one
        // by the device the previous one authorized.
        let mut authorized = identity;
        for link in &delegation {
            let signer = link.proof().signer;
            if signer != identity && signer != authorized {
                return Err(bad(
                    "welcome.delegation",
                    "a link signed by a stranger".into(),
                ));
            }
            signer
                .verify(&link.claim().signing_bytes(), &link.proof().signature)
                .map_err(|e| bad("welcome.delegation", e.to_string()))?;
            authorized = link.claim().subject;
        }
        if credentials.iter().any(|c| c.claim().space != space) {
            return Err(bad(
                "welcome.credentials",
                "a credential of another space".into(),
            ));
        }
        let me = self.keys;
        let admits = |feed: PublicKey, want: Designation| {
            credentials.iter().any(|c| {
                c.claim().subject == feed
                    && matches!(c.claim().assertion, Assertion::AdmittedFeed { designation, identity: i, device }
                        if designation == want && i == identity && device == me.device)
            })
        };
        let first = match kind {
            InvitationKind::Space { role, .. } => {
                identity == me.identity
                    && credentials.iter().any(|c| {
                        c.claim().subject == me.identity
                            && c.claim().assertion == Assertion::SpaceMember { role }
                    })
            }
            InvitationKind::Device { .. } => {
                let authorizes = |c: &Credential| {
                    c.claim().subject == me.device
                        && c.claim().assertion
                            == Assertion::AuthorizedDevice {
                                identity,
                                device: me.device,
                            }
                };
                credentials.iter().any(authorizes)
                    && delegation.last().is_some_and(authorizes)
                    && delegation.iter().all(|link| {
                        link.claim().issuer == identity
                            && link.proof().chain.is_empty()
                            && matches!(link.claim().assertion, Assertion::AuthorizedDevice { identity: i, .. } if i == identity)
                    })
            }
        };
        if !first
            || !admits(me.control_feed, Designation::Control)
            || !admits(me.data_feed, Designation::Data)
        {
            return Err(bad(
                "welcome.credentials",
                "they do not admit this guest's keys".into(),
            ));
        }
        let genesis_feed = if welcome.genesis_feed.is_empty() {
            None
        } else {
            Some(key(
                invitation,
                "welcome.genesis_feed",
                &welcome.genesis_feed,
            )?)
        };
        Ok(Welcome {
            kind,
            identity,
            host_device,
            space_feeds,
            credentials,
            delegation,
            genesis_feed,
        })
    }

    fn fail(&mut self, error: InviteError) -> InviteError {
        tracing::info!(%error, "invitation failed");
        self.state = GuestState::Failed;
        self.outbox.clear();
        if let Some(reason) = error.refusal() {
            self.outbox.extend(encode(refusal_body(reason)));
        }
        error
    }
}
