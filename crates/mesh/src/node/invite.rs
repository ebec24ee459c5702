//! The tokio drivers of `/echo/invite/1`: the host side serves the invitations a node holds,
//! the guest side joins with a code. The protocol decisions are the cores' ([`HostSession`],
//! [`GuestSession`]); these tasks move bytes, keep time and hand the decisions that belong to
//! the application (writing credentials, asking the user for the auth code) to it over
//! channels.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use echodb_halo::{Credential, DeviceSigner, KeyPair, PublicKey, Timestamp};
use futures::{AsyncReadExt as _, AsyncWriteExt as _, StreamExt as _};
use libp2p::{PeerId, Stream, StreamProtocol};
use tokio::sync::{mpsc, oneshot};

use super::device_of;
use crate::entropy::OsEntropy;
use crate::frame::FrameDecoder;
use crate::invite::{
    self, AuthMethod, GuestAnswer, GuestEvent, GuestKeys, GuestSession, HostEvent, HostSession,
    InvitationId, InviteCode, InviteRefusal, Welcome,
};

/// How long a guest stream may stay silent (a user typing the auth code) before it is dropped.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(300);
/// How long the application may take to write a guest's credentials.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// Bytes read per read call.
const READ_CHUNK: usize = 16 * 1024;

/// What happens on the host's side of an invitation, for the application.
#[derive(Debug)]
pub enum HostUpdate {
    /// A guest device opened a stream for the invitation.
    GuestConnected {
        /// The guest's device.
        device: PublicKey,
    },
    /// The guest answered wrongly.
    AuthFailed {
        /// The guest's device.
        device: PublicKey,
        /// Wrong answers the invitation still tolerates.
        attempts_left: u32,
    },
    /// The guest passed: append `credentials`, in order, to this device's control feed of
    /// `space`, then answer on `done` with the space's feeds and genesis feed (or why not).
    WriteCredentials {
        /// The guest.
        guest: GuestKeys,
        /// The space.
        space: PublicKey,
        /// What to write.
        credentials: Vec<Credential>,
        /// The answer.
        done: oneshot::Sender<Result<SpaceFeeds, String>>,
    },
    /// The guest was welcomed.
    Completed {
        /// The guest.
        guest: GuestKeys,
    },
    /// A guest's session failed (a wrong proof, too many attempts, a dropped stream…).
    Failed {
        /// The guest's device.
        device: PublicKey,
        /// Why.
        error: String,
        /// Whether the invitation still admits guests (not used up, expired or cancelled).
        active: bool,
    },
}

/// What the host tells a welcomed guest about the space.
#[derive(Debug, Clone)]
pub struct SpaceFeeds {
    /// The space's admitted feeds.
    pub feeds: Vec<PublicKey>,
    /// Its genesis feed.
    pub genesis_feed: PublicKey,
}

/// What happens on the guest's side, for the application.
#[derive(Debug)]
pub enum GuestUpdate {
    /// The stream to the host is open.
    Connected,
    /// The host asks for an answer: send it on the [`GuestHandle`].
    AuthRequired {
        /// The method.
        method: AuthMethod,
    },
    /// The answer was wrong; another may be sent.
    AuthFailed {
        /// Wrong answers the invitation still tolerates.
        attempts_left: u32,
    },
    /// Admitted.
    Welcomed(Box<Welcome>),
    /// The invitation failed.
    Failed {
        /// Why, naming the invitation.
        error: String,
    },
}

/// The guest's answer to the host's auth method.
#[derive(Debug, Clone)]
pub enum Answer {
    /// The 6 digits the host's user passed on.
    AuthCode(String),
    /// The secret the two users agreed on.
    SharedSecret(Vec<u8>),
    /// A signature by the key the host named (the guest's identity key).
    KnownKey(Box<KeyPair>),
}

/// A running join: updates come out, answers go in.
#[derive(Debug)]
pub struct GuestHandle {
    /// What happens.
    pub updates: mpsc::Receiver<GuestUpdate>,
    /// Answers to [`GuestUpdate::AuthRequired`].
    pub answers: mpsc::Sender<Answer>,
}

/// An invitation a node hosts.
pub(crate) struct Hosted {
    pub(crate) invitation: Arc<tokio::sync::Mutex<invite::Invitation>>,
    pub(crate) issuer: Arc<DeviceSigner>,
    pub(crate) updates: mpsc::Sender<HostUpdate>,
}

pub(crate) type HostedInvitations = Arc<Mutex<HashMap<InvitationId, Hosted>>>;

fn now() -> Timestamp {
    let millis = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    Timestamp(millis)
}

/// Accepts inbound `/echo/invite/1` streams.
pub(crate) async fn accept_loop(
    hosted: HostedInvitations,
    mut incoming: libp2p_stream::IncomingStreams,
) {
    while let Some((peer, stream)) = incoming.next().await {
        tokio::spawn(host_one(hosted.clone(), peer, stream));
    }
}

async fn write_frames(stream: &mut Stream, frames: Vec<Bytes>) -> std::io::Result<()> {
    for frame in frames {
        stream.write_all(&frame).await?;
    }
    stream.flush().await
}

async fn host_one(hosted: HostedInvitations, peer: PeerId, mut stream: Stream) {
    let Some(device) = device_of(&peer) else {
        return;
    };
    // The first frame names the invitation; it is read whole before any session exists.
    let mut decoder = FrameDecoder::new(invite::PROTOCOL, invite::MAX_FRAME);
    let mut raw = Vec::new();
    let mut buf = vec![0u8; READ_CHUNK];
    let first = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let n = stream.read(&mut buf).await.ok()?;
            if n == 0 {
                return None;
            }
            raw.extend_from_slice(&buf[..n]);
            let mut input = &buf[..n];
            if let Some(frame) = decoder.next_frame(&mut input).ok()? {
                return Some(frame);
            }
        }
    })
    .await;
    let Ok(Some(frame)) = first else {
        tracing::info!(%peer, "invitation stream closed before its hello");
        return;
    };
    let entry = invite::hello_invitation(&frame).and_then(|id| {
        let hosted = hosted.lock().ok()?;
        let entry = hosted.get(&id)?;
        Some((
            id,
            entry.invitation.clone(),
            entry.issuer.clone(),
            entry.updates.clone(),
        ))
    });
    let Some((id, invitation, issuer, updates)) = entry else {
        tracing::info!(%peer, "invitation stream for an invitation not hosted here; refused");
        let frames = invite::refusal_frame(InviteRefusal::UnknownInvitation);
        let _ = write_frames(&mut stream, frames.into_iter().collect()).await;
        let _ = stream.close().await;
        return;
    };
    let mut session = {
        let invitation = invitation.lock().await;
        HostSession::new(&invitation, device, &mut OsEntropy)
    };
    let _ = updates.send(HostUpdate::GuestConnected { device }).await;
    let record = invitation.clone();
    let fail = |error: String| {
        let record = record.clone();
        async move {
            let active = record.lock().await.status(now()) == invite::InvitationStatus::Active;
            HostUpdate::Failed {
                device,
                error,
                active,
            }
        }
    };
    let mut input = raw;
    loop {
        let result = {
            let mut invitation = invitation.lock().await;
            session.handle_input(&mut invitation, &issuer, now(), &input)
        };
        let mut events = Vec::new();
        while let Some(event) = session.poll_event() {
            events.push(event);
        }
        let mut error = result.err().map(|e| e.to_string());
        for event in events {
            match event {
                HostEvent::AuthFailed { attempts_left } => {
                    let _ = updates
                        .send(HostUpdate::AuthFailed {
                            device,
                            attempts_left,
                        })
                        .await;
                }
                HostEvent::WriteCredentials {
                    guest,
                    space,
                    credentials,
                } => {
                    match ask_to_write(&updates, guest, space, credentials).await {
                        Ok(feeds) => {
                            if let Err(e) = session.credentials_written_with_genesis(
                                feeds.feeds,
                                Some(feeds.genesis_feed),
                            ) {
                                error = Some(e.to_string());
                            }
                        }
                        Err(reason) => {
                            error = Some(format!(
                                "invitation {id}: the guest's credentials were not written: {reason}"
                            ))
                        }
                    }
                    while let Some(event) = session.poll_event() {
                        if let HostEvent::Completed { guest } = event {
                            let _ = updates.send(HostUpdate::Completed { guest }).await;
                        }
                    }
                }
                HostEvent::Completed { guest } => {
                    let _ = updates.send(HostUpdate::Completed { guest }).await;
                }
            }
        }
        let mut frames = Vec::new();
        while let Some(frame) = session.poll_transmit() {
            frames.push(frame);
        }
        if let Err(e) = write_frames(&mut stream, frames).await {
            error.get_or_insert_with(|| format!("invitation {id}: stream i/o: {e}"));
        }
        if let Some(error) = error {
            tracing::info!(%peer, %error, "invitation session ended");
            let _ = updates.send(fail(error).await).await;
            break;
        }
        if session.is_done() || session.is_failed() {
            break;
        }
        match tokio::time::timeout(IDLE_TIMEOUT, stream.read(&mut buf)).await {
            Ok(Ok(0)) => {
                let _ = updates
                    .send(fail(format!("invitation {id}: the guest closed the stream")).await)
                    .await;
                break;
            }
            Ok(Ok(n)) => input = buf[..n].to_vec(),
            Ok(Err(e)) => {
                let _ = updates
                    .send(fail(format!("invitation {id}: stream i/o: {e}")).await)
                    .await;
                break;
            }
            Err(_) => {
                let _ = updates
                    .send(
                        fail(format!(
                            "invitation {id}: the guest said nothing for {IDLE_TIMEOUT:?}"
                        ))
                        .await,
                    )
                    .await;
                break;
            }
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), stream.close()).await;
}

async fn ask_to_write(
    updates: &mpsc::Sender<HostUpdate>,
    guest: GuestKeys,
    space: PublicKey,
    credentials: Vec<Credential>,
) -> Result<SpaceFeeds, String> {
    let (done, answer) = oneshot::channel();
    updates
        .send(HostUpdate::WriteCredentials {
            guest,
            space,
            credentials,
            done,
        })
        .await
        .map_err(|_| "nobody handles the invitation any more".to_owned())?;
    match tokio::time::timeout(WRITE_TIMEOUT, answer).await {
        Ok(Ok(result)) => result,
        Ok(Err(_)) => Err("the application dropped the request".into()),
        Err(_) => Err(format!("no answer within {WRITE_TIMEOUT:?}")),
    }
}

/// Runs the guest's side over an open stream to the code's host.
pub(crate) async fn guest_run(
    mut stream: Stream,
    code: InviteCode,
    keys: GuestKeys,
    updates: mpsc::Sender<GuestUpdate>,
    mut answers: mpsc::Receiver<Answer>,
) {
    let invitation = code.id();
    let host = code.host();
    let failed = |error: String| GuestUpdate::Failed { error };
    let mut session = match GuestSession::new(code, keys, host, &mut OsEntropy) {
        Ok(session) => session,
        Err(e) => {
            let _ = updates.send(failed(e.to_string())).await;
            return;
        }
    };
    let _ = updates.send(GuestUpdate::Connected).await;
    let mut buf = vec![0u8; READ_CHUNK];
    loop {
        let mut frames = Vec::new();
        while let Some(frame) = session.poll_transmit() {
            frames.push(frame);
        }
        if let Err(e) = write_frames(&mut stream, frames).await {
            let _ = updates
                .send(failed(format!("invitation {invitation}: stream i/o: {e}")))
                .await;
            return;
        }
        let mut waiting_for_answer = false;
        while let Some(event) = session.poll_event() {
            match event {
                GuestEvent::AuthRequired { method } => {
                    waiting_for_answer = true;
                    let _ = updates.send(GuestUpdate::AuthRequired { method }).await;
                }
                GuestEvent::AuthFailed { attempts_left } => {
                    waiting_for_answer = true;
                    let _ = updates
                        .send(GuestUpdate::AuthFailed { attempts_left })
                        .await;
                }
                GuestEvent::Welcomed(welcome) => {
                    let _ = updates.send(GuestUpdate::Welcomed(welcome)).await;
                    let _ = tokio::time::timeout(Duration::from_secs(2), stream.close()).await;
                    return;
                }
            }
        }
        if session.is_failed() {
            return;
        }
        if waiting_for_answer {
            let Some(answer) = answers.recv().await else {
                return;
            };
            let given = match &answer {
                Answer::AuthCode(code) => GuestAnswer::AuthCode(code),
                Answer::SharedSecret(secret) => GuestAnswer::SharedSecret(secret),
                Answer::KnownKey(key) => GuestAnswer::KnownKey(key.as_ref()),
            };
            if let Err(e) = session.answer(given) {
                let _ = updates.send(failed(e.to_string())).await;
                return;
            }
            continue;
        }
        match tokio::time::timeout(IDLE_TIMEOUT, stream.read(&mut buf)).await {
            Ok(Ok(0)) => {
                let _ = updates
                    .send(failed(format!(
                        "invitation {invitation}: the host closed the stream"
                    )))
                    .await;
                return;
            }
            Ok(Ok(n)) => {
                if let Err(e) = session.handle_input(&buf[..n]) {
                    let _ = updates.send(failed(e.to_string())).await;
                    return;
                }
            }
            Ok(Err(e)) => {
                let _ = updates
                    .send(failed(format!("invitation {invitation}: stream i/o: {e}")))
                    .await;
                return;
            }
            Err(_) => {
                let _ = updates
                    .send(failed(format!(
                        "invitation {invitation}: the host said nothing for {IDLE_TIMEOUT:?}"
                    )))
                    .await;
                return;
            }
        }
    }
}

/// Opens the invite stream to `host`, retrying until `within` passes (the host may not be
/// connected yet: its address comes from the code's hints or the signal server).
pub(crate) async fn open_to_host(
    control: &mut libp2p_stream::Control,
    host: PeerId,
    within: Duration,
) -> Result<Stream, String> {
    let deadline = tokio::time::Instant::now() + within;
    let mut last = String::from("no attempt");
    while tokio::time::Instant::now() < deadline {
        match tokio::time::timeout(
            Duration::from_secs(5),
            control.open_stream(host, StreamProtocol::new(invite::PROTOCOL)),
        )
        .await
        {
            Ok(Ok(stream)) => return Ok(stream),
            Ok(Err(e)) => last = e.to_string(),
            Err(_) => last = "timed out".into(),
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    Err(last)
}
