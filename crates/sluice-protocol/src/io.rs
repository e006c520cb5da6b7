//! The write side of a connection, the same at both ends.

use futures::SinkExt;
use tokio::io::AsyncWrite;
use tokio::sync::mpsc;
use tokio_util::codec::FramedWrite;

use crate::frame::FrameCodec;
use crate::message::Frame;

/// Writes frames as they arrive on `rx`, flushing only when no other frame is ready: frames
/// produced together (answers completing at once, a burst of acks) leave in one write.
/// Ends when every sender is dropped (after flushing) or the socket fails.
pub async fn write_loop<W: AsyncWrite + Unpin>(
    mut writer: FramedWrite<W, FrameCodec>,
    mut rx: mpsc::UnboundedReceiver<Frame>,
) {
    while let Some(frame) = rx.recv().await {
        if writer.feed(frame).await.is_err() {
            return;
        }
        while let Ok(frame) = rx.try_recv() {
            if writer.feed(frame).await.is_err() {
                return;
            }
        }
        if writer.flush().await.is_err() {
            return;
        }
    }
    let _ = SinkExt::<Frame>::close(&mut writer).await;
}
