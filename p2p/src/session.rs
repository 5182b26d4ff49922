//! The asking side of a session: many requests on one long-lived libp2p stream per
//! peer and protocol, each answered under its id (`crate::answer` serves them).

use crate::codec::{codec, send_all, Outgoing, Reader};
use crate::P2pError;
use futures::io::WriteHalf;
use futures::{AsyncReadExt, SinkExt, StreamExt};
use iryo_proto::wire::{decode_frame, encode_frame, max_frame};
use libp2p::{Multiaddr, PeerId, Stream, StreamProtocol};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio_util::bytes::Bytes;
use tokio_util::codec::{FramedRead, FramedWrite};
use tokio_util::compat::{FuturesAsyncReadCompatExt, FuturesAsyncWriteCompatExt};

/// How long an answer may take before the asker gives up on it, unless
/// `Sessions::with_request_timeout` says otherwise.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How long dialling and opening a stream may take.
const OPEN_TIMEOUT: Duration = Duration::from_secs(10);
/// A session with nothing outstanding for this long is closed, and with it, once no
/// other stream is open, the connection.
const IDLE: Duration = Duration::from_secs(60);
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Asks the swarm task to connect to a peer at these addresses; the answer comes once
/// the dial has started (or was not needed).
pub type Dial = (PeerId, Vec<Multiaddr>, oneshot::Sender<()>);

type Reply<Resp> = oneshot::Sender<Result<Resp, P2pError>>;

/// One stream to one peer and the requests waiting for their answers on it.
struct Session<Resp> {
    next_id: AtomicU64,
    /// `None` once the session has closed: nothing more may be sent on it.
    pending: Mutex<Option<HashMap<u64, Reply<Resp>>>>,
    frames: mpsc::UnboundedSender<Outgoing>,
}

impl<Resp: DeserializeOwned + Send + 'static> Session<Resp> {
    /// Starts a session on a stream the answerer has welcomed (`welcomed`).
    fn start((reader, write): (Reader, WriteHalf<Stream>), peer: PeerId) -> Arc<Self> {
        let (frames, outgoing) = mpsc::unbounded_channel();
        let session = Arc::new(Self {
            next_id: AtomicU64::new(0),
            pending: Mutex::new(Some(HashMap::new())),
            frames,
        });
        tokio::spawn(session.clone().read(reader, peer));
        tokio::spawn(session.clone().write(write.compat_write(), outgoing));
        session
    }

    /// Queues a request; gives the reply back if the session has closed meanwhile.
    fn send(&self, id: u64, frame: Vec<u8>, reply: Reply<Resp>) -> Result<(), Reply<Resp>> {
        let mut pending = lock(&self.pending);
        let Some(waiting) = pending.as_mut() else {
            return Err(reply);
        };
        if self.frames.send((Bytes::from(frame), None)).is_err() {
            return Err(reply);
        }
        waiting.insert(id, reply);
        Ok(())
    }

    fn forget(&self, id: u64) {
        if let Some(waiting) = lock(&self.pending).as_mut() {
            waiting.remove(&id);
        }
    }

    /// Closes the session: every request still waiting fails with `why`.
    fn close(&self, why: &str) {
        let waiting = lock(&self.pending).take();
        for (_, reply) in waiting.into_iter().flatten() {
            let _ = reply.send(Err(P2pError::Request(why.to_string())));
        }
    }

    async fn read(self: Arc<Self>, mut reader: Reader, peer: PeerId) {
        let why = loop {
            match reader.next().await {
                None => break "the peer closed the stream".to_string(),
                Some(Err(e)) => break format!("the stream broke: {e}"),
                Some(Ok(frame)) => match decode_frame::<Resp>(&frame) {
                    Ok((id, response)) => {
                        let reply = lock(&self.pending).as_mut().and_then(|w| w.remove(&id));
                        if let Some(reply) = reply {
                            let _ = reply.send(Ok(response));
                        }
                    }
                    Err(e) => break format!("undecodable answer: {e}"),
                },
            }
        };
        tracing::debug!(%peer, why, "session closed");
        self.close(&why);
    }

    async fn write<W>(self: Arc<Self>, write: W, mut outgoing: mpsc::UnboundedReceiver<Outgoing>)
    where
        W: tokio::io::AsyncWrite + Unpin,
    {
        let mut writer = FramedWrite::new(write, codec(usize::MAX));
        loop {
            let frame = match tokio::time::timeout(IDLE, outgoing.recv()).await {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(_) => {
                    // Idle only if nothing is waiting; closing under the lock means no
                    // request can slip in between. Already closed by the reader: done.
                    let mut pending = lock(&self.pending);
                    match pending.as_ref() {
                        Some(waiting) if !waiting.is_empty() => continue,
                        _ => {
                            *pending = None;
                            break;
                        }
                    }
                }
            };
            if let Err(e) = send_all(&mut writer, frame, &mut outgoing).await {
                self.close(&format!("cannot write to the stream: {e}"));
                return;
            }
        }
        let _ = SinkExt::<Bytes>::close(&mut writer).await;
    }
}

/// Forgets a request whose asker stopped waiting (timed out, or its future was
/// dropped), so that the session keeps no reply slot for it.
struct Forget<'a, Resp: DeserializeOwned + Send + 'static> {
    session: &'a Session<Resp>,
    id: Option<u64>,
}

impl<Resp: DeserializeOwned + Send + 'static> Drop for Forget<'_, Resp> {
    fn drop(&mut self) {
        if let Some(id) = self.id {
            self.session.forget(id);
        }
    }
}

type Slot<Resp> = Arc<tokio::sync::Mutex<Option<Arc<Session<Resp>>>>>;

/// Times an opening may fail because the answerer dropped the new stream.
const OPEN_ATTEMPTS: u32 = 8;

/// How long to wait before the next opening: doubling, capped, and spread at random so
/// that requesters turned away together do not all come back together.
fn backoff(attempt: u32) -> Duration {
    let base = 5u64 << attempt.min(6);
    let spread = u64::from(getrandom::u32().unwrap_or(0)) % base;
    Duration::from_millis(base / 2 + spread)
}

/// Waits for the answerer's welcome, the empty frame it sends once it has taken the
/// stream on. libp2p may hand a new stream to an answerer that is still taking the
/// previous one, and then drops it; a stream dropped so carried nothing yet, so the
/// asker can open another without any request being answered twice.
async fn welcomed(
    stream: Stream,
    max_response: u64,
) -> Result<(Reader, WriteHalf<Stream>), String> {
    let (read, write) = stream.split();
    let mut reader = FramedRead::new(read.compat(), codec(max_frame(max_response)));
    match tokio::time::timeout(OPEN_TIMEOUT, reader.next()).await {
        Ok(Some(Ok(frame))) if frame.is_empty() => Ok((reader, write)),
        Ok(Some(Ok(_))) => Err("the answerer spoke before welcoming".into()),
        Ok(Some(Err(e))) => Err(e.to_string()),
        Ok(None) => Err("the answerer dropped the stream".into()),
        Err(_) => Err(format!("no welcome within {OPEN_TIMEOUT:?}")),
    }
}

/// The asking side of one protocol: a session per peer, opened on first use.
pub struct Sessions<Req, Resp> {
    protocol: StreamProtocol,
    max_request: u64,
    max_response: u64,
    control: libp2p_stream::Control,
    dial: mpsc::Sender<Dial>,
    peers: Mutex<HashMap<PeerId, Slot<Resp>>>,
    request_timeout: Duration,
    requests: PhantomData<fn(Req)>,
}

impl<Req, Resp> Sessions<Req, Resp>
where
    Req: Serialize,
    Resp: DeserializeOwned + Send + 'static,
{
    pub fn new(
        protocol: &'static str,
        (max_request, max_response): (u64, u64),
        control: libp2p_stream::Control,
        dial: mpsc::Sender<Dial>,
    ) -> Self {
        Self {
            protocol: StreamProtocol::new(protocol),
            max_request,
            max_response,
            control,
            dial,
            peers: Mutex::new(HashMap::new()),
            request_timeout: REQUEST_TIMEOUT,
            requests: PhantomData,
        }
    }

    /// Requests sent and not yet answered, over every session (a session being opened
    /// right now is not counted).
    pub fn waiting(&self) -> usize {
        lock(&self.peers)
            .values()
            .filter_map(|slot| {
                let slot = slot.try_lock().ok()?;
                let session = slot.as_ref()?;
                let pending = lock(&session.pending);
                Some(pending.as_ref().map_or(0, HashMap::len))
            })
            .sum()
    }

    /// How long an answer may take before `request` gives up on it.
    pub fn with_request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// Asks `peer` and waits for its answer. Dropping the returned future forgets the
    /// request: a late answer to it is discarded, and the session goes on serving
    /// the others.
    pub async fn request(
        &self,
        peer: PeerId,
        addresses: &[Multiaddr],
        request: &Req,
    ) -> Result<Resp, P2pError> {
        let (mut reply, answer) = oneshot::channel();
        // A session may close between being found and being used; the second one is
        // freshly opened.
        for _ in 0..2 {
            let session = self.session(peer, addresses).await?;
            let id = session.next_id.fetch_add(1, Ordering::Relaxed);
            let frame = encode_frame(id, request, self.max_request)
                .map_err(|e| P2pError::Request(e.to_string()))?;
            if let Err(back) = session.send(id, frame, reply) {
                reply = back;
                continue;
            }
            let mut forget = Forget {
                session: &session,
                id: Some(id),
            };
            let result = match tokio::time::timeout(self.request_timeout, answer).await {
                Ok(Ok(result)) => result,
                Ok(Err(_)) => Err(P2pError::Request("the session closed".into())),
                Err(_) => Err(P2pError::Request(format!(
                    "no answer from {peer} within {:?}",
                    self.request_timeout
                ))),
            };
            if result.is_ok() {
                forget.id = None;
            }
            return result;
        }
        Err(P2pError::Unreachable(format!("no session to {peer}")))
    }

    async fn session(
        &self,
        peer: PeerId,
        addresses: &[Multiaddr],
    ) -> Result<Arc<Session<Resp>>, P2pError> {
        let slot = lock(&self.peers).entry(peer).or_default().clone();
        let mut slot = slot.lock().await;
        if let Some(s) = slot.as_ref() {
            if lock(&s.pending).is_some() {
                return Ok(s.clone());
            }
        }
        let (dialled, started) = oneshot::channel();
        self.dial
            .send((peer, addresses.to_vec(), dialled))
            .await
            .map_err(|_| P2pError::Stopped)?;
        started.await.map_err(|_| P2pError::Stopped)?;
        let mut control = self.control.clone();
        let mut attempt = 0;
        let halves = loop {
            let open = control.open_stream(peer, self.protocol.clone());
            let stream = tokio::time::timeout(OPEN_TIMEOUT, open)
                .await
                .map_err(|_| {
                    P2pError::Unreachable(format!("cannot reach {peer} within {OPEN_TIMEOUT:?}"))
                })?
                .map_err(|e| P2pError::Unreachable(format!("cannot reach {peer}: {e}")))?;
            attempt += 1;
            match welcomed(stream, self.max_response).await {
                Ok(halves) => break halves,
                Err(why) if attempt < OPEN_ATTEMPTS => {
                    tracing::debug!(%peer, why, attempt, "stream not taken on; opening another");
                    tokio::time::sleep(backoff(attempt)).await;
                }
                Err(why) => return Err(P2pError::Unreachable(format!("{peer}: {why}"))),
            }
        };
        let session = Session::start(halves, peer);
        *slot = Some(session.clone());
        Ok(session)
    }
}
