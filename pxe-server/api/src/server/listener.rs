//! The accept loop: a budget of connections (global and per client address, closed at once
//! beyond it), TLS handshake with a deadline, the peer's identity from its verified
//! certificate, HTTP/1.1 with a header deadline (the body deadline is the router's
//! `body_deadline`); and the periodic fleet refresh and rollout evaluation.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::Request;
use tokio::net::TcpListener;
use tower::ServiceExt as _;
use tugboot_fleet::conn::ConnBudget;

use super::auth::ConnInfo;
use super::{ApiError, ApiState};
use crate::ca::peer_identity;

pub(super) async fn serve(
    state: Arc<ApiState>,
    tls: Arc<rustls::ServerConfig>,
    extra: axum::Router,
    listener: TcpListener,
) -> Result<(), ApiError> {
    match crate::tokens::import_legacy_file(
        &state.state_dir,
        &state.store,
        state.now(),
        state.config.token_ttl_secs,
    )
    .await
    {
        Ok(0) => {}
        Ok(n) => tracing::info!(
            tokens = n,
            "unused enrollment tokens of enrollment-tokens.json moved into the store"
        ),
        Err(e) => tracing::error!(error = %e, "enrollment-tokens.json not imported"),
    }
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
    let budget = ConnBudget::new(
        state.config.max_connections,
        state.config.max_connections_per_peer,
    );
    let handshake_timeout = state.config.handshake_timeout;
    loop {
        let (tcp, remote) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                // Out of file descriptors and the like: wait a little, keep serving.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let permit = match budget.admit(remote.ip()) {
            Ok(p) => p,
            Err(refusal) => {
                // Closed before the TLS handshake: a flood costs an accept and a close.
                state.metrics.refusal(match refusal {
                    tugboot_fleet::conn::ConnRefusal::Global => "connections_global",
                    tugboot_fleet::conn::ConnRefusal::PerPeer => "connections_per_peer",
                });
                tracing::debug!(%remote, cap = refusal.as_str(), "connection refused");
                drop(tcp);
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
