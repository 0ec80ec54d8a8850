//! Serving an axum app with limits against slow clients: a request's
//! headers must arrive within `header_timeout` (slowloris), its body within
//! `body_timeout`, and a graceful shutdown waits for requests in progress.
//! (`axum::serve` sets no timer, so hyper's header timeout never fires there.)
//! Every request carries its peer's address as `ConnectInfo<SocketAddr>`.

use crate::events::{self, InternalEvent};
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use std::future::Future;
use std::time::Duration;
use tokio::net::TcpListener;

/// Limits on slow clients.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// From accepting a connection (or the end of the previous request on it)
    /// to the end of the request's headers.
    pub header: Duration,
    /// To receive a request's whole body.
    pub body: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts { header: Duration::from_secs(10), body: Duration::from_secs(30) }
    }
}

/// Serve `app` on `listener` until `shutdown` resolves, then wait (at most
/// 30 s) for the requests in progress.
pub async fn serve(
    listener: TcpListener,
    app: axum::Router,
    timeouts: Timeouts,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = app.layer(tower_http::timeout::RequestBodyTimeoutLayer::new(timeouts.body));
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // e.g. too many open files: back off instead of spinning
                    events::AcceptFailed { error: &e }.emit();
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let service =
            TowerToHyperService::new(tower::ServiceExt::map_request(app.clone(), move |mut req: hyper::Request<hyper::body::Incoming>| {
                req.extensions_mut().insert(axum::extract::ConnectInfo(peer));
                req
            }));
        let conn = http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(timeouts.header)
            .serve_connection(TokioIo::new(stream), service);
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                events::ConnectionFailed { error: &e }.emit();
            }
        });
    }
    let _ = tokio::time::timeout(Duration::from_secs(30), graceful.shutdown()).await;
    Ok(())
}
