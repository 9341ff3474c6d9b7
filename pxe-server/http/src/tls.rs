//! HTTPS: rustls (ring provider) in front of the same router.
//!
//! Handshakes run in their own tasks with a deadline, so a client that opens a connection and
//! stalls cannot hold up the others; finished connections are handed to axum through a channel.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tugboot_fleet::conn::ConnBudget;

use crate::server::{Admitted, BootServer, refused};

/// Largest certificate chain or key file accepted, checked before parsing.
pub const MAX_PEM_BYTES: usize = 256 << 10;
/// A TLS handshake that takes longer than this is dropped.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshaken connections waiting for axum to pick them up.
const READY_QUEUE: usize = 64;
/// Handshakes in progress at once; connections beyond this are closed at once, so a flood of
/// idle TCP connections costs a bounded number of tasks and timers.
pub const MAX_HANDSHAKES: usize = 1024;

/// Why a TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    #[error("{what} is {size} bytes, the limit is {limit}")]
    TooLarge {
        what: &'static str,
        size: usize,
        limit: usize,
    },
    #[error("certificate chain: {0}")]
    Certificates(String),
    #[error("private key: {0}")]
    Key(String),
    #[error(transparent)]
    Rustls(#[from] rustls::Error),
}

/// A rustls server configuration from a PEM certificate chain (leaf first) and a PEM private
/// key (PKCS#8, SEC1 or PKCS#1). Offers HTTP/1.1 over ALPN; TLS 1.2 and 1.3.
pub fn server_config(chain_pem: &[u8], key_pem: &[u8]) -> Result<Arc<ServerConfig>, TlsError> {
    for (what, bytes) in [("certificate chain", chain_pem), ("private key", key_pem)] {
        if bytes.len() > MAX_PEM_BYTES {
            return Err(TlsError::TooLarge {
                what,
                size: bytes.len(),
                limit: MAX_PEM_BYTES,
            });
        }
    }
    let chain = CertificateDer::pem_slice_iter(chain_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Certificates(e.to_string()))?;
    if chain.is_empty() {
        return Err(TlsError::Certificates("no CERTIFICATE block".into()));
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| TlsError::Key(e.to_string()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// An [`axum::serve::Listener`] that yields TLS streams.
#[derive(Debug)]
pub struct TlsListener {
    ready: mpsc::Receiver<(Admitted<TlsStream<TcpStream>>, SocketAddr)>,
    local: SocketAddr,
    accept_task: tokio::task::JoinHandle<()>,
}

impl TlsListener {
    /// Starts accepting on `listener`. Must be called inside a tokio runtime.
    pub fn new(
        listener: TcpListener,
        config: Arc<ServerConfig>,
        budget: Arc<ConnBudget>,
        server: Arc<BootServer>,
    ) -> io::Result<Self> {
        let local = listener.local_addr()?;
        let (tx, ready) = mpsc::channel(READY_QUEUE);
        let acceptor = TlsAcceptor::from(config);
        let accept_task = tokio::spawn(accept_loop(listener, acceptor, tx, budget, server));
        Ok(TlsListener {
            ready,
            local,
            accept_task,
        })
    }
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.accept_task.abort();
    }
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    tx: mpsc::Sender<(Admitted<TlsStream<TcpStream>>, SocketAddr)>,
    budget: Arc<ConnBudget>,
    server: Arc<BootServer>,
) {
    let permits = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if tx.is_closed() {
            return;
        }
        // The connection budget first: one host cannot hold the handshake slots either.
        let admitted = match budget.admit(peer.ip()) {
            Ok(p) => p,
            Err(why) => {
                refused(server.counter(), peer, why);
                continue;
            }
        };
        let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
            tracing::warn!(%peer, "too many TLS handshakes in progress; connection dropped");
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let tx = tx.clone();
        tokio::spawn(async move {
            let handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await;
            drop(permit);
            match handshake {
                Ok(Ok(tls)) => {
                    let _ = tx.send((Admitted::new(tls, admitted), peer)).await;
                }
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
            }
        });
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = Admitted<TlsStream<TcpStream>>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(conn) => conn,
            // The accept task only ends when the listener is dropped; never resolve after that.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Ok(self.local)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_from_rcgen_pem_and_bad_input() {
        let ck = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let cert = ck.cert.pem();
        let key = ck.key_pair.serialize_pem();
        let config = server_config(cert.as_bytes(), key.as_bytes()).unwrap();
        assert_eq!(config.alpn_protocols, vec![b"http/1.1".to_vec()]);
        assert!(matches!(
            server_config(b"", key.as_bytes()),
            Err(TlsError::Certificates(_))
        ));
        assert!(matches!(
            server_config(cert.as_bytes(), cert.as_bytes()),
            Err(TlsError::Key(_))
        ));
        let big = vec![b'a'; MAX_PEM_BYTES + 1];
        assert!(matches!(
            server_config(&big, key.as_bytes()),
            Err(TlsError::TooLarge { .. })
        ));
        // A key that does not belong to the certificate.
        let other = rcgen::KeyPair::generate().unwrap().serialize_pem();
        assert!(server_config(cert.as_bytes(), other.as_bytes()).is_err());
    }
}
