//! The one HTTP/1 accept loop, shared by the API and the sandbox clouds. It takes its
//! listener and its shutdown signal as parameters (tests bind 127.0.0.1:0 and stop it
//! at will), gives every connection a deadline for its request headers, and on
//! shutdown stops accepting and gives in-flight requests a bounded time to finish
//! (hyper-util's graceful shutdown). A request hyper cannot parse (headers too large,
//! a URI too long, a malformed request line) gets hyper's own answer with an
//! OpenAI-shaped JSON body put in (`ErrorBodies`), not an empty one.

use std::convert::Infallible;
use std::future::Future;
use std::io::IoSlice;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// How one server accepts and drains.
pub(crate) struct ServerOptions {
    /// Names the server in logs.
    pub name: &'static str,
    /// A connection must send its request headers within this.
    pub header_read_timeout: Duration,
    /// After shutdown, in-flight requests get this long before their connections close.
    pub drain: Duration,
}

/// The wait after a failed accept (out of file descriptors and the like): the server
/// keeps serving instead of spinning.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Serves `handler` on `listener` until `shutdown` is cancelled, then drains; returns
/// once every connection has finished or the drain period is over.
pub(crate) async fn serve<H, F, B>(
    listener: TcpListener,
    opts: ServerOptions,
    shutdown: CancellationToken,
    handler: H,
) where
    H: Fn(Request<Incoming>) -> F + Clone + Send + 'static,
    F: Future<Output = Result<Response<B>, Infallible>> + Send + 'static,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let graceful = GracefulShutdown::new();
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(server = opts.name, error = %e, "accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
        };
        let conn = http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(opts.header_read_timeout)
            .serve_connection(
                ErrorBodies::new(TokioIo::new(stream)),
                service_fn(handler.clone()),
            );
        let conn = graceful.watch(conn);
        let name = opts.name;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(server = name, peer = %peer, error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(opts.drain, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            server = opts.name,
            drain = ?opts.drain,
            "some connections were still open after the drain period"
        );
    }
}

/// The body of hyper's automatic answer to a request it could not parse, by status.
fn parse_error_body(status: &[u8]) -> Option<(&'static str, &'static str, &'static str)> {
    Some(match status {
        b"431" => (
            "431 Request Header Fields Too Large",
            "headers_too_large",
            "the request headers are too large (too many, or too long)",
        ),
        b"414" => (
            "414 URI Too Long",
            "uri_too_long",
            "the request URI is too long",
        ),
        b"400" => (
            "400 Bad Request",
            "invalid_request",
            "the request could not be parsed as HTTP/1.1",
        ),
        _ => return None,
    })
}

/// If `buf` is the whole of one of hyper's automatic answers to an unparsable request
/// (a status line of 400, 414 or 431 and headers, no body), the same answer with a
/// JSON body in the OpenAI error shape.
fn with_error_body(buf: &[u8]) -> Option<Vec<u8>> {
    let status = buf.strip_prefix(b"HTTP/1.1 ")?.get(..3)?;
    let (line, code, message) = parse_error_body(status)?;
    // Only a head that ends the write and says it has no body (hyper writes exactly
    // that, and a real response of spotd's always has a body or a length).
    if !buf.ends_with(b"\r\n\r\n")
        || !buf
            .windows(19)
            .any(|w| w.eq_ignore_ascii_case(b"content-length: 0\r\n"))
    {
        return None;
    }
    let body = serde_json::json!({"error": {"message": message, "type": "invalid_request_error", "code": code, "param": null}}).to_string();
    Some(
        format!(
            "HTTP/1.1 {line}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        )
        .into_bytes(),
    )
}

/// A connection's IO that puts a body into hyper's automatic error answers (see
/// [`with_error_body`]); everything else passes through unchanged.
struct ErrorBodies<T> {
    io: T,
    /// A replacement answer accepted from hyper and not yet written out, with how
    /// much of it has been.
    pending: Option<(Vec<u8>, usize)>,
}

impl<T> ErrorBodies<T> {
    fn new(io: T) -> Self {
        ErrorBodies { io, pending: None }
    }
}

impl<T: hyper::rt::Write + Unpin> ErrorBodies<T> {
    /// Writes out the pending replacement, if any.
    fn drain(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        while let Some((buf, done)) = &mut self.pending {
            if *done >= buf.len() {
                self.pending = None;
                break;
            }
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &buf[*done..]))?;
            if n == 0 {
                return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
            }
            *done += n;
        }
        Poll::Ready(Ok(()))
    }

    /// Takes `buf` as written if it is an automatic error answer, queuing its
    /// replacement instead.
    fn replace(
        &mut self,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Option<Poll<std::io::Result<usize>>> {
        let out = with_error_body(buf)?;
        self.pending = Some((out, 0));
        Some(match self.drain(cx) {
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            // Accepted; what is left is written by the flush that follows.
            _ => Poll::Ready(Ok(buf.len())),
        })
    }
}

impl<T: hyper::rt::Read + Unpin> hyper::rt::Read for ErrorBodies<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl<T: hyper::rt::Write + Unpin> hyper::rt::Write for ErrorBodies<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        ready!(this.drain(cx))?;
        if let Some(p) = this.replace(cx, buf) {
            return p;
        }
        Pin::new(&mut this.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        ready!(this.drain(cx))?;
        if let [one] = bufs {
            if let Some(p) = this.replace(cx, one) {
                return p;
            }
        }
        Pin::new(&mut this.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        ready!(this.drain(cx))?;
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        ready!(this.drain(cx))?;
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_hypers_bodiless_error_heads_get_a_body() {
        let head =
            b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\ndate: x\r\n\r\n";
        let out = String::from_utf8(with_error_body(head).unwrap()).unwrap();
        let (h, body) = out.split_once("\r\n\r\n").unwrap();
        assert!(h.starts_with("HTTP/1.1 431 "), "{h}");
        assert!(
            h.contains(&format!("content-length: {}", body.len())),
            "{h}"
        );
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["error"]["code"], "headers_too_large");
        // A response of spotd's own, or one with a body, passes unchanged.
        assert!(with_error_body(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n").is_none());
        assert!(
            with_error_body(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 2\r\n\r\n").is_none()
        );
        assert!(
            with_error_body(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n{}").is_none()
        );
    }
}
