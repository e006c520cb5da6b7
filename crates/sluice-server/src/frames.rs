//! The frames a client sends, each of which must arrive within the slow-frame timeout of
//! its first byte.
//!
//! Without this bound a client could hold a connection, and the bytes of a frame it
//! started, forever by trickling a byte now and then. The clock starts when the reader
//! finds part of a frame buffered and the rest missing, and stops when the frame is
//! complete; [`Frames::restart_clock`] gives a frame its full time again after the server
//! itself stopped reading (backpressure), since the client could not send meanwhile.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::Stream;
use sluice_protocol::{Frame, FrameCodec, ProtocolError};
use tokio::io::AsyncRead;
use tokio::time::{Instant, Sleep};
use tokio_util::codec::FramedRead;

/// A [`FramedRead`] whose partial frames time out.
pub(crate) struct Frames<R> {
    inner: FramedRead<R, FrameCodec>,
    timeout: Duration,
    /// Allocated with the first partial frame, then reset for each one.
    clock: Option<Pin<Box<Sleep>>>,
    /// Whether the clock runs (part of a frame is buffered).
    running: bool,
}

impl<R: AsyncRead + Unpin> Frames<R> {
    pub(crate) fn new(inner: FramedRead<R, FrameCodec>, timeout: Duration) -> Self {
        Self {
            inner,
            timeout,
            clock: None,
            running: false,
        }
    }

    /// Gives the frame under way its full time again (the server stopped reading for a while).
    pub(crate) fn restart_clock(&mut self) {
        self.running = false;
    }

    /// The byte stream, for draining what the client still sends.
    pub(crate) fn into_inner(self) -> R {
        self.inner.into_inner()
    }

    fn timed_out(&self) -> ProtocolError {
        let buffered = self.inner.read_buffer();
        let announced = match buffered.get(..4) {
            Some(len) => format!(
                "a frame of {} bytes",
                u32::from_le_bytes([len[0], len[1], len[2], len[3]])
            ),
            None => "a frame".to_owned(),
        };
        ProtocolError::TimedOut(format!(
            "{announced} did not complete within {:?} of its first byte ({} bytes arrived)",
            self.timeout,
            buffered.len()
        ))
    }
}

impl<R: AsyncRead + Unpin> Stream for Frames<R> {
    type Item = Result<Frame, ProtocolError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_next(cx);
        if polled.is_ready() || this.inner.read_buffer().is_empty() {
            this.running = false;
            return polled;
        }
        // Part of a frame is here and the rest is not: it must complete in time.
        if !this.running {
            let deadline = after(this.timeout);
            match &mut this.clock {
                Some(clock) => clock.as_mut().reset(deadline),
                None => this.clock = Some(Box::pin(tokio::time::sleep_until(deadline))),
            }
            this.running = true;
        }
        let clock = this.clock.as_mut().expect("the clock exists while it runs");
        match clock.as_mut().poll(cx) {
            Poll::Ready(()) => {
                this.running = false;
                Poll::Ready(Some(Err(this.timed_out())))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

/// `timeout` from now; a timeout too long to add (a configured "forever") is 30 years.
pub(crate) fn after(timeout: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(timeout)
        .unwrap_or_else(|| now + Duration::from_secs(30 * 365 * 24 * 3600))
}
