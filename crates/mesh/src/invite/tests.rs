//! Host and guest cores over an in-memory wire, checked against a real `SpaceStateMachine`.

use std::error::Error;
use std::sync::Arc;

use echodb_feed_store::FeedStore;
use echodb_halo::{
    Claim, ControlBlock, Decision, DeviceSigner, Identity, KeyPair, MemberFeeds, Profiles, Seq,
    Signer as _, SpaceCreator, SpaceStateMachine, Timeframe, Timestamp, create_space,
};

use super::*;
use crate::entropy::SeededEntropy;
use crate::replicate::{self, Bootstrap, Membership as _, OpenReader, ReplicateConfig};

type TestResult = Result<(), Box<dyn Error>>;

/// A host: an identity whose device created a space; the space's state machine and store.
struct Host {
    identity: Identity,
    space: PublicKey,
    feeds: MemberFeeds,
    control: KeyPair,
    state: SpaceStateMachine,
    store: Arc<FeedStore>,
    written: u64,
}

impl Host {
    fn new() -> Result<Self, Box<dyn Error>> {
        let control = KeyPair::generate();
        let feeds = MemberFeeds {
            control: control.public_key(),
            data: KeyPair::generate().public_key(),
        };
        let created = Identity::create(
            KeyPair::generate(),
            KeyPair::generate(),
            KeyPair::generate(),
            MemberFeeds {
                control: KeyPair::generate().public_key(),
                data: KeyPair::generate().public_key(),
            },
            Profiles::default(),
            Timestamp(0),
        );
        let identity = created.identity;
        let genesis = create_space(
            KeyPair::generate(),
            SpaceCreator {
                identity: identity.public_key(),
                device: identity.device().device_key(),
                feeds,
            },
            Timestamp(0),
        );
        let mut host = Host {
            space: genesis.space,
            identity,
            feeds,
            control,
            state: SpaceStateMachine::new(genesis.space),
            store: Arc::new(FeedStore::in_memory()),
            written: 0,
        };
        host.write(&genesis.credentials)?;
        Ok(host)
    }

    fn signer(&self) -> &DeviceSigner {
        self.identity.device()
    }

    fn device(&self) -> PublicKey {
        self.identity.device().device_key()
    }

    /// Appends credentials to the host's control feed and processes them.
    fn write(&mut self, credentials: &[Credential]) -> Result<Vec<Decision>, Box<dyn Error>> {
        let mut decisions = Vec::new();
        for credential in credentials {
            let payload = credential.to_bytes();
            self.store
                .append(&self.control, &Timeframe::new(), &[&payload])?;
            decisions.push(self.state.process(ControlBlock {
                feed: self.feeds.control,
                seq: Seq(self.written),
                lamport: self.written + 1,
                timeframe: &Timeframe::new(),
                payload: &payload,
            })?);
            self.written += 1;
        }
        Ok(decisions)
    }

    fn invite(
        &self,
        auth: AuthSpec,
        uses: Uses,
        expires_at: Option<Timestamp>,
    ) -> Result<Invitation, InviteCodeError> {
        Invitation::create(
            InvitationSpec {
                kind: InvitationKind::Space {
                    space: self.space,
                    role: Role::Editor,
                },
                auth,
                uses,
                expires_at,
                hints: vec!["/ip4/127.0.0.1/tcp/4001".into()],
            },
            self.device(),
            &mut SeededEntropy::new(7),
        )
    }
}

fn guest_keys() -> GuestKeys {
    GuestKeys {
        identity: KeyPair::generate().public_key(),
        device: KeyPair::generate().public_key(),
        control_feed: KeyPair::generate().public_key(),
        data_feed: KeyPair::generate().public_key(),
    }
}

/// A guest and the host's session for it, the guest having decoded the code from text.
fn meet(
    host: &Host,
    invitation: &Invitation,
    keys: GuestKeys,
) -> Result<(GuestSession, HostSession), Box<dyn Error>> {
    let code: InviteCode = invitation.code().to_string().parse()?;
    let mut entropy = SeededEntropy::new(u64::from(keys.device.as_bytes()[0]));
    let guest = GuestSession::new(code, keys, host.device(), &mut entropy)?;
    let session = HostSession::new(invitation, keys.device, &mut entropy);
    Ok((guest, session))
}

/// Moves frames until neither side has one. A host error is returned after its refusal has
/// been delivered to the guest (whose own error then is `Refused`).
fn pump(
    guest: &mut GuestSession,
    session: &mut HostSession,
    invitation: &mut Invitation,
    signer: &DeviceSigner,
    now: Timestamp,
) -> Result<(), InviteError> {
    loop {
        let mut moved = false;
        while let Some(frame) = guest.poll_transmit() {
            moved = true;
            if let Err(error) = session.handle_input(invitation, signer, now, &frame) {
                while let Some(frame) = session.poll_transmit() {
                    let _ = guest.handle_input(&frame);
                }
                return Err(error);
            }
        }
        while let Some(frame) = session.poll_transmit() {
            moved = true;
            guest.handle_input(&frame)?;
        }
        if !moved {
            return Ok(());
        }
    }
}

fn guest_events(guest: &mut GuestSession) -> Vec<GuestEvent> {
    std::iter::from_fn(|| guest.poll_event()).collect()
}

fn host_events(session: &mut HostSession) -> Vec<HostEvent> {
    std::iter::from_fn(|| session.poll_event()).collect()
}

/// After admission: writes the credentials and welcomes the guest; returns the welcome.
fn finish(
    host: &mut Host,
    guest: &mut GuestSession,
    session: &mut HostSession,
    invitation: &mut Invitation,
) -> Result<Welcome, Box<dyn Error>> {
    let events = host_events(session);
    let Some(HostEvent::WriteCredentials {
        credentials, space, ..
    }) = events.first()
    else {
        return Err(format!("host events: {events:?}").into());
    };
    assert_eq!(*space, host.space);
    for decision in host.write(credentials)? {
        assert!(matches!(decision, Decision::Accepted(_)), "{decision:?}");
    }
    let feeds: Vec<PublicKey> = host.state.feeds().iter().map(|f| f.feed).collect();
    session.credentials_written(feeds)?;
    let signer = host.identity.device().clone();
    pump(guest, session, invitation, &signer, Timestamp(10))?;
    assert!(matches!(
        host_events(session).as_slice(),
        [HostEvent::Completed { .. }]
    ));
    match guest_events(guest).pop() {
        Some(GuestEvent::Welcomed(welcome)) => Ok(*welcome),
        other => Err(format!("guest event: {other:?}").into()),
    }
}

#[test]
fn a_guest_joins_with_the_auth_code_and_starts_replicating() -> TestResult {
    let mut host = Host::new()?;
    let mut invitation = host.invite(AuthSpec::AuthCode, Uses::Single, Some(Timestamp(60_000)))?;
    let code = invitation.auth_code().ok_or("no auth code")?.to_string();
    assert_eq!(code.len(), 6);
    let keys = guest_keys();
    let (mut guest, mut session) = meet(&host, &invitation, keys)?;
    let signer = host.signer().clone();
    pump(
        &mut guest,
        &mut session,
        &mut invitation,
        &signer,
        Timestamp(10),
    )?;
    assert_eq!(
        guest_events(&mut guest),
        vec![GuestEvent::AuthRequired {
            method: AuthMethod::AuthCode
        }]
    );
    guest.answer(GuestAnswer::AuthCode(&code))?;
    pump(
        &mut guest,
        &mut session,
        &mut invitation,
        &signer,
        Timestamp(20),
    )?;
    let welcome = finish(&mut host, &mut guest, &mut session, &mut invitation)?;

    // The host's state machine accepted the guest.
    assert_eq!(host.state.role_of(&keys.identity), Some(Role::Editor));
    assert!(host.state.is_member_device(&keys.device));
    assert!(host.state.is_space_feed(&keys.data_feed));
    // The guest has what it needs.
    assert_eq!(
        welcome.kind,
        InvitationKind::Space {
            space: host.space,
            role: Role::Editor
        }
    );
    assert_eq!(welcome.identity, keys.identity);
    assert_eq!(welcome.host_device, host.device());
    assert!(welcome.space_feeds.contains(&host.feeds.control));
    assert_eq!(welcome.credentials.len(), 3);
    assert!(guest.is_done() && session.is_done());
    assert_eq!(invitation.uses(), 1);

    // And replicates the host's control feed at once, trusting the host through the welcome.
    let at_guest = Arc::new(FeedStore::in_memory());
    let trusted = Bootstrap {
        inner: SpaceStateMachine::new(host.space),
        trusted: welcome.bootstrap(&keys),
    };
    let mut opener = replicate::Session::open(
        host.space,
        host.device(),
        at_guest.clone(),
        &trusted,
        ReplicateConfig::default(),
    )?;
    let first = opener.poll_transmit().ok_or("no open")?;
    let mut input = &first[..];
    let opened = OpenReader::new(keys.device)
        .read(&mut input)?
        .ok_or("incomplete")?;
    let (mut acceptor, accepted) = replicate::Session::accept(
        host.space,
        keys.device,
        opened,
        host.store.clone(),
        &host.state,
        ReplicateConfig::default(),
    );
    accepted?;
    loop {
        let mut moved = false;
        while let Some(frame) = opener.poll_transmit() {
            acceptor.handle_input(&frame)?;
            moved = true;
        }
        while let Some(frame) = acceptor.poll_transmit() {
            opener.handle_input(&frame)?;
            moved = true;
        }
        if !moved {
            break;
        }
    }
    assert_eq!(at_guest.length(&host.feeds.control), 7);
    Ok(())
}

#[test]
fn three_wrong_auth_codes_end_the_invitation() -> TestResult {
    let host = Host::new()?;
    let mut invitation = host.invite(AuthSpec::AuthCode, Uses::Multi { max: None }, None)?;
    let right = invitation.auth_code().ok_or("no code")?.to_string();
    let wrong = if right == "000000" {
        "000001"
    } else {
        "000000"
    };
    let (mut guest, mut session) = meet(&host, &invitation, guest_keys())?;
    let signer = host.signer().clone();
    pump(
        &mut guest,
        &mut session,
        &mut invitation,
        &signer,
        Timestamp(0),
    )?;
    guest_events(&mut guest);
    for left in [2, 1] {
        guest.answer(GuestAnswer::AuthCode(wrong))?;
        pump(
            &mut guest,
            &mut session,
            &mut invitation,
            &signer,
            Timestamp(0),
        )?;
        assert_eq!(
            guest_events(&mut guest),
            vec![GuestEvent::AuthFailed {
                attempts_left: left
            }]
        );
        assert_eq!(
            host_events(&mut session),
            vec![HostEvent::AuthFailed {
                attempts_left: left
            }]
        );
    }
    guest.answer(GuestAnswer::AuthCode(wrong))?;
    let result = pump(
        &mut guest,
        &mut session,
        &mut invitation,
        &signer,
        Timestamp(0),
    );
    assert!(matches!(
        result,
        Err(InviteError::TooManyAttempts { attempts: 3, .. })
    ));
    assert!(guest.is_failed() && session.is_failed());
    assert_eq!(
        invitation.status(Timestamp(0)),
        InvitationStatus::TooManyAttempts
    );
    // Even the right code does not open it again.
    let (mut guest, mut session) = meet(&host, &invitation, guest_keys())?;
    let result = pump(
        &mut guest,
        &mut session,
        &mut invitation,
        &signer,
        Timestamp(0),
    );
    assert!(matches!(result, Err(InviteError::TooManyAttempts { .. })));
    let mut late = guest;
    assert!(late.is_failed());
    assert!(late.answer(GuestAnswer::AuthCode(&right)).is_err());
    Ok(())
}

#[test]
fn an_expired_code_is_refused() -> TestResult {
    let host = Host::new()?;
    let mut invitation = host.invite(AuthSpec::None, Uses::Single, Some(Timestamp(1_000)))?;
    let (mut guest, mut session) = meet(&host, &invitation, guest_keys())?;
    let signer = host.signer().clone();
    let result = pump(
        &mut guest,
        &mut session,
        &mut invitation,
        &signer,
        Timestamp(1_000),
    );
    assert!(matches!(
        result,
        Err(InviteError::Expired {
            expires_at: 1_000,
            now: 1_000,
            ..
        })
    ));
    assert!(guest.is_failed());
    assert_eq!(invitation.uses(), 0);
    Ok(())
}

#[test]
fn a_used_single_use_code_is_refused_and_multi_use_works_twice() -> TestResult {
    let mut host = Host::new()?;
    let signer = host.signer().clone();
    let mut single = host.invite(AuthSpec::None, Uses::Single, None)?;
    let (mut guest, mut session) = meet(&host, &single, guest_keys())?;
    pump(&mut guest, &mut session, &mut single, &signer, Timestamp(0))?;
    finish(&mut host, &mut guest, &mut session, &mut single)?;
    let (mut again, mut session) = meet(&host, &single, guest_keys())?;
    let result = pump(&mut again, &mut session, &mut single, &signer, Timestamp(0));
    assert!(matches!(
        result,
        Err(InviteError::Used {
            uses: 1,
            max: 1,
            ..
        })
    ));
    assert!(again.is_failed());

    let mut multi = host.invite(AuthSpec::None, Uses::Multi { max: Some(2) }, None)?;
    for _ in 0..2 {
        let keys = guest_keys();
        let (mut guest, mut session) = meet(&host, &multi, keys)?;
        pump(&mut guest, &mut session, &mut multi, &signer, Timestamp(0))?;
        finish(&mut host, &mut guest, &mut session, &mut multi)?;
        assert!(host.state.is_member_device(&keys.device));
    }
    assert_eq!(multi.uses(), 2);
    let (mut third, mut session) = meet(&host, &multi, guest_keys())?;
    assert!(pump(&mut third, &mut session, &mut multi, &signer, Timestamp(0)).is_err());
    Ok(())
}

#[test]
fn the_shared_secret_method() -> TestResult {
    let mut host = Host::new()?;
    let signer = host.signer().clone();
    let mut invitation = host.invite(
        AuthSpec::SharedSecret(b"correct horse".to_vec()),
        Uses::Multi { max: None },
        None,
    )?;
    let (mut guest, mut session) = meet(&host, &invitation, guest_keys())?;
    pump(
        &mut guest,
        &mut session,
        &mut invitation,
        &signer,
        Timestamp(0),
    )?;
    assert_eq!(
        guest_events(&mut guest),
        vec![GuestEvent::AuthRequired {
            method: AuthMethod::SharedSecret
        }]
    );
    guest.answer(GuestAnswer::SharedSecret(b"wrong horse"))?;
    pump(
        &mut guest,
        &mut session,
        &mut invitation,
        &signer,
        Timestamp(0),
    )?;
    assert_eq!(
        guest_events(&mut guest),
        vec![GuestEvent::AuthFailed { attempts_left: 2 }]
    );
    host_events(&mut session);
    guest.answer(GuestAnswer::SharedSecret(b"correct horse"))?;
    pump(
        &mut guest,
        &mut session,
        &mut invitation,
        &signer,
        Timestamp(0),
    )?;
    finish(&mut host, &mut guest, &mut session, &mut invitation)?;
    Ok(())
}

#[test]
fn the_known_public_key_method() -> TestResult {
    let mut host = Host::new()?;
    let signer = host.signer().clone();
    let guest_identity = KeyPair::generate();
    let mut invitation = host.invite(
        AuthSpec::KnownPublicKey(guest_identity.public_key()),
        Uses::Single,
        None,
    )?;
    let keys = GuestKeys {
        identity: guest_identity.public_key(),
        ..guest_keys()
    };
    let (mut guest, mut session) = meet(&host, &invitation, keys)?;
    pump(
        &mut guest,
        &mut session,
        &mut invitation,
        &signer,
        Timestamp(0),
    )?;
    guest_events(&mut guest);
    let impostor = KeyPair::generate();
    guest.answer(GuestAnswer::KnownKey(&impostor))?;
    pump(
        &mut guest,
        &mut session,
        &mut invitation,
        &signer,
        Timestamp(0),
    )?;
    assert_eq!(
        guest_events(&mut guest),
        vec![GuestEvent::AuthFailed { attempts_left: 2 }]
    );
    host_events(&mut session);
    guest.answer(GuestAnswer::KnownKey(&guest_identity))?;
    pump(
        &mut guest,
        &mut session,
        &mut invitation,
        &signer,
        Timestamp(0),
    )?;
    let welcome = finish(&mut host, &mut guest, &mut session, &mut invitation)?;
    assert_eq!(welcome.identity, guest_identity.public_key());
    Ok(())
}

#[test]
fn a_wrong_invitation_secret_fails_the_channel_proof() -> TestResult {
    let host = Host::new()?;
    let signer = host.signer().clone();
    let mut invitation = host.invite(AuthSpec::None, Uses::Single, None)?;
    let real = invitation.code().clone();

    // A guest holding a code with the right id and host but another secret.
    let forged = InviteCode::new(real.id(), InvitationSecret([7; 16]), real.host(), vec![])?;
    let keys = guest_keys();
    let mut guest = GuestSession::new(forged, keys, host.device(), &mut SeededEntropy::new(1))?;
    let mut session = HostSession::new(&invitation, keys.device, &mut SeededEntropy::new(2));
    let result = pump(
        &mut guest,
        &mut session,
        &mut invitation,
        &signer,
        Timestamp(0),
    );
    // The guest finds the host's proof wrong (the keys differ) and sends nothing about itself.
    assert!(
        matches!(result, Err(InviteError::BadProof { peer: "host", .. })),
        "{result:?}"
    );
    assert!(guest.is_failed());
    let refusal = guest.poll_transmit().ok_or("no refusal")?;
    assert_eq!(guest.poll_transmit(), None);
    let result = session.handle_input(&mut invitation, &signer, Timestamp(0), &refusal);
    assert!(matches!(
        result,
        Err(InviteError::Refused {
            reason: InviteRefusal::BadProof,
            ..
        })
    ));
    assert!(session.is_failed());
    assert!(host_events(&mut session).is_empty());

    // A guest whose proof was made for another channel (the transport authenticated a different
    // device than the one the guest bound its proof to, as when frames are relayed).
    let mut guest = GuestSession::new(
        real.clone(),
        keys,
        host.device(),
        &mut SeededEntropy::new(3),
    )?;
    let relay = KeyPair::generate().public_key();
    let mut session = HostSession::new(&invitation, relay, &mut SeededEntropy::new(4));
    let result = pump(
        &mut guest,
        &mut session,
        &mut invitation,
        &signer,
        Timestamp(0),
    );
    assert!(result.is_err());
    assert!(guest.is_failed());

    // A guest that skips the proof: the host refuses it.
    let mut guest = GuestSession::new(real, keys, host.device(), &mut SeededEntropy::new(5))?;
    let mut session = HostSession::new(&invitation, keys.device, &mut SeededEntropy::new(6));
    session.handle_input(
        &mut invitation,
        &signer,
        Timestamp(0),
        &guest.poll_transmit().ok_or("no hello")?,
    )?;
    let forged_join = encode(Body::Join(pb::JoinRequest {
        proof: Bytes::from_static(&[0; 32]),
        identity: Bytes::copy_from_slice(keys.identity.as_bytes()),
        control_feed: Bytes::copy_from_slice(keys.control_feed.as_bytes()),
        data_feed: Bytes::copy_from_slice(keys.data_feed.as_bytes()),
    }))
    .ok_or("encode")?;
    let result = session.handle_input(&mut invitation, &signer, Timestamp(0), &forged_join);
    assert!(matches!(
        result,
        Err(InviteError::BadProof { peer: "guest", .. })
    ));
    assert_eq!(invitation.uses(), 0);
    Ok(())
}

#[test]
fn a_guest_refuses_a_device_that_is_not_the_codes_host() -> TestResult {
    let host = Host::new()?;
    let invitation = host.invite(AuthSpec::None, Uses::Single, None)?;
    let other = KeyPair::generate().public_key();
    let result = GuestSession::new(
        invitation.code().clone(),
        guest_keys(),
        other,
        &mut SeededEntropy::new(1),
    );
    assert!(matches!(result, Err(InviteError::WrongHost { .. })));
    Ok(())
}

#[test]
fn garbage_ends_an_invitation_session() -> TestResult {
    let host = Host::new()?;
    let signer = host.signer().clone();
    let mut invitation = host.invite(AuthSpec::None, Uses::Single, None)?;
    let mut session = HostSession::new(
        &invitation,
        KeyPair::generate().public_key(),
        &mut SeededEntropy::new(1),
    );
    let result = session.handle_input(
        &mut invitation,
        &signer,
        Timestamp(0),
        &[0, 0, 0, 3, 0xff, 0xff, 0xff],
    );
    assert!(matches!(result, Err(InviteError::Frame { .. })));
    let oversized = ((MAX_FRAME + 1) as u32).to_be_bytes();
    let mut session = HostSession::new(
        &invitation,
        KeyPair::generate().public_key(),
        &mut SeededEntropy::new(2),
    );
    let result = session.handle_input(&mut invitation, &signer, Timestamp(0), &oversized);
    assert!(matches!(
        result,
        Err(InviteError::Frame {
            source: FrameError::TooLarge { .. },
            ..
        })
    ));
    assert!(session.is_failed());
    Ok(())
}

#[test]
fn a_device_invitation_authorizes_a_new_device_of_the_identity() -> TestResult {
    // The identity's HALO space, as its first device holds it.
    let first_control = KeyPair::generate();
    let halo_feeds = MemberFeeds {
        control: first_control.public_key(),
        data: KeyPair::generate().public_key(),
    };
    let created = Identity::create(
        KeyPair::generate(),
        KeyPair::generate(),
        KeyPair::generate(),
        halo_feeds,
        Profiles::default(),
        Timestamp(0),
    );
    let identity = created.identity;
    let mut halo = SpaceStateMachine::new(identity.halo_space());
    let mut seq = 0;
    let mut write =
        |halo: &mut SpaceStateMachine, credentials: &[Credential]| -> Result<(), Box<dyn Error>> {
            for credential in credentials {
                let payload = credential.to_bytes();
                let decision = halo.process(ControlBlock {
                    feed: halo_feeds.control,
                    seq: Seq(seq),
                    lamport: seq + 1,
                    timeframe: &Timeframe::new(),
                    payload: &payload,
                })?;
                assert!(matches!(decision, Decision::Accepted(_)), "{decision:?}");
                seq += 1;
            }
            Ok(())
        };
    write(&mut halo, &created.credentials)?;

    let mut invitation = Invitation::create(
        InvitationSpec {
            kind: InvitationKind::Device {
                halo_space: identity.halo_space(),
            },
            auth: AuthSpec::AuthCode,
            uses: Uses::Single,
            expires_at: None,
            hints: vec![],
        },
        identity.device().device_key(),
        &mut SeededEntropy::new(9),
    )?;
    let code = invitation.auth_code().ok_or("no code")?.to_string();
    let new_device = KeyPair::generate();
    let new_control = KeyPair::generate().public_key();
    let keys = GuestKeys {
        identity: KeyPair::generate().public_key(), // ignored: the device joins the host's identity
        device: new_device.public_key(),
        control_feed: new_control,
        data_feed: KeyPair::generate().public_key(),
    };
    let mut guest = GuestSession::new(
        invitation.code().clone(),
        keys,
        identity.device().device_key(),
        &mut SeededEntropy::new(1),
    )?;
    let mut session = HostSession::new(&invitation, keys.device, &mut SeededEntropy::new(2));
    let signer = identity.device().clone();
    pump(
        &mut guest,
        &mut session,
        &mut invitation,
        &signer,
        Timestamp(0),
    )?;
    guest.answer(GuestAnswer::AuthCode(&code))?;
    pump(
        &mut guest,
        &mut session,
        &mut invitation,
        &signer,
        Timestamp(0),
    )?;
    let Some(HostEvent::WriteCredentials {
        credentials, space, ..
    }) = session.poll_event()
    else {
        return Err("no credentials".into());
    };
    assert_eq!(space, identity.halo_space());
    write(&mut halo, &credentials)?;
    session.credentials_written(halo.feeds().iter().map(|f| f.feed).collect())?;
    pump(
        &mut guest,
        &mut session,
        &mut invitation,
        &signer,
        Timestamp(0),
    )?;
    let Some(GuestEvent::Welcomed(welcome)) = guest_events(&mut guest).pop() else {
        return Err("not welcomed".into());
    };
    assert_eq!(welcome.identity, identity.public_key());
    assert!(
        halo.devices_of(&identity.public_key())
            .iter()
            .any(|d| d.device == new_device.public_key() && d.revoked.is_none())
    );
    assert!(halo.is_member_device(&new_device.public_key()));

    // The new device signs for the identity with the chain it was given, and the HALO space
    // accepts what it writes on its own control feed.
    let new_signer = DeviceSigner::new(
        identity.public_key(),
        new_device,
        welcome.delegation.clone(),
    );
    let profile = Claim {
        space: identity.halo_space(),
        issuer: identity.public_key(),
        subject: keys.device,
        issued_at: Timestamp(0),
        parents: vec![],
        assertion: echodb_halo::Assertion::MemberProfile {
            display_name: "laptop".into(),
        },
    }
    .sign(&new_signer);
    let delegation = profile.verify()?;
    assert_eq!(delegation.signer, keys.device);
    let covered: Timeframe = [(halo_feeds.control, Seq(seq - 1))].into_iter().collect();
    let payload = profile.to_bytes();
    let decision = halo.process(ControlBlock {
        feed: new_control,
        seq: Seq(0),
        lamport: seq + 1,
        timeframe: &covered,
        payload: &payload,
    })?;
    assert!(matches!(decision, Decision::Accepted(_)), "{decision:?}");
    Ok(())
}
