//! The frames of a session on a stream (docs/PROTOCOL.md, section 2): a 4-byte
//! big-endian length, then the request id and the CBOR message
//! (`iryo_proto::wire`); the answerer's welcome is an empty frame.

use futures::io::ReadHalf;
use futures::SinkExt;
use libp2p::Stream;
use tokio::sync::{mpsc, OwnedSemaphorePermit};
use tokio_util::bytes::Bytes;
use tokio_util::codec::{FramedRead, FramedWrite, LengthDelimitedCodec};
use tokio_util::compat::Compat;

/// Frames of at most `max_frame` bytes, after the length prefix.
pub(crate) fn codec(max_frame: usize) -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .length_field_length(iryo_proto::wire::FRAME_LENGTH_BYTES)
        .max_frame_length(max_frame)
        .new_codec()
}

/// The reading half of a stream, as frames.
pub(crate) type Reader = FramedRead<Compat<ReadHalf<Stream>>, LengthDelimitedCodec>;

/// A frame to write and, on the answering side, the slot it frees once written.
pub(crate) type Outgoing = (Bytes, Option<OwnedSemaphorePermit>);

/// Writes `first` and every frame already queued behind it, then flushes once.
pub(crate) async fn send_all<W: tokio::io::AsyncWrite + Unpin>(
    writer: &mut FramedWrite<W, LengthDelimitedCodec>,
    (first, slot): Outgoing,
    queued: &mut mpsc::UnboundedReceiver<Outgoing>,
) -> std::io::Result<()> {
    writer.feed(first).await?;
    drop(slot);
    while let Ok((frame, slot)) = queued.try_recv() {
        writer.feed(frame).await?;
        drop(slot);
    }
    SinkExt::<Bytes>::flush(writer).await
}
