//! The accept loop: TLS handshake with a deadline, the peer's identity from its verified
//! certificate, HTTP/1.1 with a header deadline, a cap on connections served at once; and the
//! periodic fleet refresh and rollout evaluation.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::Request;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tower::ServiceExt as _;

use super::auth::ConnInfo;
use super::{ApiError, ApiState};
use crate::ca::peer_identity;

pub(super) async fn serve(
    state: Arc<ApiState>,
    tls: Arc<rustls::ServerConfig>,
    extra: axum::Router,
    listener: TcpListener,
) -> Result<(), ApiError> {
    state.refresh_logged().await;
    state.evaluate_logged().await;
    let periodic = {
        let state = state.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(state.config.evaluate_interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                // Other servers on the same database publish and label too.
                state.refresh_logged().await;
                state.evaluate_logged().await;
            }
        })
    };
    // Abort the evaluation task when serving stops (including when this future is dropped).
    struct AbortOnDrop(tokio::task::JoinHandle<()>);
    impl Drop for AbortOnDrop {
        fn drop(&mut self) {
            self.0.abort();
        }
    }
    let _periodic = AbortOnDrop(periodic);
    let app = super::router(state.clone()).merge(extra);
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let limit = Arc::new(Semaphore::new(state.config.max_connections.max(1)));
    let handshake_timeout = state.config.handshake_timeout;
    loop {
        let permit = limit
            .clone()
            .acquire_owned()
            .await
            .map_err(|e| ApiError::Io(std::io::Error::other(e)))?;
        let (tcp, remote) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                // Out of file descriptors and the like: wait a little, keep serving.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let app = app.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let stream = match tokio::time::timeout(handshake_timeout, acceptor.accept(tcp)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::info!(%remote, error = %e, "TLS handshake refused");
                    return;
                }
                Err(_) => {
                    tracing::info!(%remote, "TLS handshake timed out");
                    return;
                }
            };
            let identity = stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .map(|c| peer_identity(c).map_err(|e| e.to_string()));
            let info = ConnInfo { remote, identity };
            let svc = app.map_request(move |mut req: Request<hyper::body::Incoming>| {
                req.extensions_mut().insert(info.clone());
                req
            });
            let svc = hyper_util::service::TowerToHyperService::new(svc);
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(handshake_timeout)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), svc);
            if let Err(e) = conn.await {
                tracing::debug!(%remote, error = %e, "connection ended with an error");
            }
        });
    }
}
