//! The accept loop: each HTTP/1.1 connection served by hyper with a deadline on request
//! heads, and a graceful close of them all when the server stops.
//!
//! `axum::serve` gives hyper no timer, so a connection that never finishes its request head
//! (a slowloris client) or sits idle between keep-alive requests held a socket and a task for
//! ever; enough of them exhaust the process's file descriptors and nothing else connects.

use std::future::Future;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;

/// Serves `app` on `listener` until `stop` resolves, then stops accepting and waits for every
/// connection to close: idle ones at once, those mid-request once their response is sent.
/// A connection has `head_timeout` to send each request head, counted from when the server
/// starts waiting for it (so an idle keep-alive connection is closed after it too).
pub(crate) async fn serve_connections(
    listener: TcpListener,
    app: Router,
    head_timeout: Duration,
    stop: impl Future<Output = ()>,
) {
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(head_timeout);
    let graceful = GracefulShutdown::new();
    let mut stop = std::pin::pin!(stop);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    wait_after_accept_error(e).await;
                    continue;
                }
            },
            () = &mut stop => break,
        };
        // Token streams are many small writes: send each at once.
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(app.clone());
        let connection = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!("connection closed: {e}");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

/// After a failed `accept`: a connection that failed on its own is skipped; anything else
/// (out of file descriptors, most often) is logged and retried a second later rather than in
/// a busy loop, as `axum::serve` does.
async fn wait_after_accept_error(e: std::io::Error) {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    if matches!(
        e.kind(),
        ConnectionRefused | ConnectionAborted | ConnectionReset
    ) {
        return;
    }
    tracing::error!("accept failed: {e}; retrying in 1 s");
    tokio::time::sleep(Duration::from_secs(1)).await;
}
