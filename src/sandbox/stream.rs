//! The response body of the sandbox server, and the producer that paces a streamed
//! answer onto the wire as server-sent events, one event at a time.
//!
//! A streamed answer is written by its own task into a small channel that the body
//! reads, so hyper sends each event as soon as it is produced (chunked encoding), never
//! the whole answer at once. When the client goes away hyper drops the body, the
//! channel closes, the next send fails and the producer stops. `x-sandbox-cut-after`
//! makes the producer end the body with an error after K content events: hyper then
//! drops the connection without the closing chunk, which is how a client sees a stream
//! cut midway (no `data: [DONE]`).

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use tokio::sync::mpsc;

use super::llm::Event;

/// Events buffered between the producer and the connection: small, so a slow reader
/// slows the producer instead of the answer piling up in memory.
const CHANNEL: usize = 4;
/// Before cutting a stream, time for the events already sent to leave the socket.
const CUT_GRACE: Duration = Duration::from_millis(20);

/// The body of every sandbox reply: whole, or events from a producer task.
pub enum ReplyBody {
    Full(Option<Bytes>),
    Events(mpsc::Receiver<Result<Bytes, io::Error>>),
}

impl Body for ReplyBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        match self.get_mut() {
            ReplyBody::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            ReplyBody::Events(rx) => rx.poll_recv(cx).map(|o| o.map(|r| r.map(Frame::data))),
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self, ReplyBody::Full(None))
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ReplyBody::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            ReplyBody::Full(None) => SizeHint::with_exact(0),
            ReplyBody::Events(_) => SizeHint::default(),
        }
    }
}

/// Counts running producers; the guard keeps the count right however a producer ends.
struct Live(Arc<AtomicUsize>);

impl Live {
    fn enter(n: &Arc<AtomicUsize>) -> Live {
        n.fetch_add(1, Ordering::SeqCst);
        Live(n.clone())
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Starts a producer writing `events` as `data: {json}\n\n` with `pacing` between
/// them, then `data: [DONE]`; with `cut_after = Some(k)` it stops after `k` content
/// events (if the answer has more) and breaks the connection instead.
pub fn spawn(
    events: Vec<Event>,
    pacing: Duration,
    cut_after: Option<usize>,
    live: &Arc<AtomicUsize>,
) -> ReplyBody {
    let (tx, rx) = mpsc::channel(CHANNEL);
    let guard = Live::enter(live);
    tokio::spawn(async move {
        let _guard = guard;
        let mut sent_content = 0usize;
        for (i, ev) in events.into_iter().enumerate() {
            if i > 0 && !pacing.is_zero() {
                tokio::time::sleep(pacing).await;
            }
            if ev.content && cut_after == Some(sent_content) {
                tokio::time::sleep(CUT_GRACE).await;
                let _ = tx
                    .send(Err(io::Error::other("x-sandbox-cut-after: stream cut")))
                    .await;
                return;
            }
            let frame = Bytes::from(format!("data: {}\n\n", ev.data));
            if tx.send(Ok(frame)).await.is_err() {
                // The client went away: nobody reads the rest.
                return;
            }
            if ev.content {
                sent_content += 1;
            }
        }
        let _ = tx.send(Ok(Bytes::from_static(b"data: [DONE]\n\n"))).await;
    });
    ReplyBody::Events(rx)
}
