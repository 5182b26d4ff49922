//! The answering side of a session: serves one peer's stream, many requests at once,
//! each answer under its request's id.

use crate::codec::{codec, send_all, Outgoing};
use futures::{AsyncReadExt, SinkExt, StreamExt};
use iryo_proto::wire::{max_frame, read_request, response_frame, Answer};
use libp2p::{PeerId, Stream};
use serde::de::DeserializeOwned;
use std::future::Future;
use std::sync::Arc;
use tokio::sync::{mpsc, Semaphore};
use tokio_util::bytes::Bytes;
use tokio_util::codec::{FramedRead, FramedWrite};
use tokio_util::compat::{FuturesAsyncReadCompatExt, FuturesAsyncWriteCompatExt};

/// Requests one stream may have in the works at an answering peer, counted until the
/// answer is written; the next waits for a slot. A peer that floods requests or does not
/// read its answers stalls only itself, and holds at most this many answers in memory.
const ANSWERS_IN_FLIGHT: usize = 64;

/// Serves one peer's stream until it closes: reads each request, answers it with
/// `handle` (several at once, up to `ANSWERS_IN_FLIGHT`), and writes each answer under
/// its request's id as soon as it is ready. A request that cannot be read is refused
/// under its id; a frame over the size limit ends the stream, since nothing after it
/// can be trusted to be framed.
pub async fn answer<Req, Resp, F, Fut>(
    peer: PeerId,
    stream: Stream,
    (max_request, max_response): (u64, u64),
    handle: F,
) where
    Req: DeserializeOwned + Send + 'static,
    Resp: Answer + Send + 'static,
    F: Fn(Req) -> Fut,
    Fut: Future<Output = Resp> + Send + 'static,
{
    let (read, write) = stream.split();
    let mut reader = FramedRead::new(read.compat(), codec(max_frame(max_request)));
    let (frames, mut outgoing) = mpsc::unbounded_channel::<Outgoing>();
    // The welcome (see `welcomed`).
    let _ = frames.send((Bytes::new(), None));
    let writer = tokio::spawn(async move {
        let mut writer = FramedWrite::new(write.compat_write(), codec(usize::MAX));
        while let Some(frame) = outgoing.recv().await {
            if send_all(&mut writer, frame, &mut outgoing).await.is_err() {
                return;
            }
        }
        let _ = SinkExt::<Bytes>::close(&mut writer).await;
    });
    let slots = Arc::new(Semaphore::new(ANSWERS_IN_FLIGHT));
    while let Some(frame) = reader.next().await {
        let frame = match frame {
            Ok(frame) => frame,
            Err(e) => {
                tracing::warn!(%peer, %e, "stream closed: oversize or broken frame");
                break;
            }
        };
        let Ok(slot) = slots.clone().acquire_owned().await else {
            break;
        };
        match read_request::<Req, Resp>(&frame) {
            Ok((id, request)) => {
                let (frames, answer) = (frames.clone(), handle(request));
                tokio::spawn(async move {
                    let response = answer.await;
                    let frame = Bytes::from(response_frame(id, &response, max_response));
                    let _ = frames.send((frame, Some(slot)));
                });
            }
            Err(Some(refusal)) => {
                tracing::warn!(%peer, "undecodable request refused");
                let _ = frames.send((Bytes::from(refusal), Some(slot)));
            }
            Err(None) => {
                tracing::warn!(%peer, "stream closed: a frame too short for a request id");
                break;
            }
        }
    }
    drop(frames);
    let _ = writer.await;
}
