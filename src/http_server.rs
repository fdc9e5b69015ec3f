//! The one HTTP/1 accept loop, shared by the API and the sandbox clouds. It takes its
//! listener and its shutdown signal as parameters (tests bind 127.0.0.1:0 and stop it
//! at will), gives every connection a deadline for its request headers, and on
//! shutdown stops accepting and gives in-flight requests a bounded time to finish
//! (hyper-util's graceful shutdown).

use std::convert::Infallible;
use std::future::Future;
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
            .serve_connection(TokioIo::new(stream), service_fn(handler.clone()));
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
