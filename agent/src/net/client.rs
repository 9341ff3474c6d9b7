//! A synchronous HTTP(S) client for the device API: ureq 3 over rustls with the ring provider,
//! mutual TLS with the device certificate, and exactly one trusted CA (the server's, pinned in
//! the configuration): no system or Mozilla roots are ever consulted.

use std::io::Read as _;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use ureq::tls::{Certificate, ClientCert, PemItem, PrivateKey, RootCerts, TlsConfig, TlsProvider};

use crate::config::{CappedReadError, TlsFiles, read_capped};
use crate::net::{ASSIGNMENT_PATH, Assignment, MAX_ASSIGNMENT_BYTES, NetError, REPORTS_PATH};

/// Size cap of a PEM file.
pub const MAX_PEM_BYTES: usize = 64 * 1024;

/// The device's TLS identity and the pinned server CA, parsed and checked.
pub struct TlsIdentity {
    ca: Vec<Certificate<'static>>,
    client: Option<(Vec<Certificate<'static>>, PrivateKey<'static>)>,
}

impl std::fmt::Debug for TlsIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsIdentity")
            .field("ca_certs", &self.ca.len())
            .field("client_cert", &self.client.is_some())
            .finish_non_exhaustive()
    }
}

fn pem_err(what: &str, reason: impl Into<String>) -> NetError {
    NetError::Pem {
        what: what.to_owned(),
        reason: reason.into(),
    }
}

fn certs(what: &str, pem: &[u8]) -> Result<Vec<Certificate<'static>>, NetError> {
    let mut out = Vec::new();
    for item in ureq::tls::parse_pem(pem) {
        match item.map_err(|e| pem_err(what, e.to_string()))? {
            PemItem::Certificate(c) => out.push(c),
            PemItem::PrivateKey(_) => return Err(pem_err(what, "holds a private key")),
            _ => {}
        }
    }
    if out.is_empty() {
        return Err(pem_err(what, "no CERTIFICATE in the PEM"));
    }
    Ok(out)
}

impl TlsIdentity {
    /// From PEM bytes: the server CA (one or more certificates, all of which are trusted), the
    /// device certificate chain (leaf first) and its private key.
    ///
    /// # Errors
    /// [`NetError::Pem`] naming the file that is unusable.
    pub fn from_pem(ca: &[u8], cert: &[u8], pem_key: &[u8]) -> Result<Self, NetError> {
        let mut id = Self::ca_only(ca)?;
        // Refuse a CA the TLS library cannot use now, rather than at every connection (ureq
        // skips unparsable roots silently, which would leave nothing trusted).
        let chain = certs("tls.cert", cert)?;
        let mut keys = Vec::new();
        for item in ureq::tls::parse_pem(pem_key) {
            match item.map_err(|e| pem_err("tls.key", e.to_string()))? {
                PemItem::PrivateKey(k) => keys.push(k),
                PemItem::Certificate(_) => {
                    return Err(pem_err("tls.key", "holds a certificate, not a key"));
                }
                _ => {}
            }
        }
        let key = match keys.len() {
            1 => keys.remove(0),
            0 => return Err(pem_err("tls.key", "no PRIVATE KEY in the PEM")),
            n => {
                return Err(pem_err(
                    "tls.key",
                    format!("{n} private keys, expected one"),
                ));
            }
        };
        // The key must be one rustls can sign with.
        use rustls::pki_types::pem::PemObject as _;
        let der = rustls::pki_types::PrivateKeyDer::from_pem_slice(pem_key)
            .map_err(|e| pem_err("tls.key", e.to_string()))?;
        rustls::crypto::ring::sign::any_supported_type(&der)
            .map_err(|e| pem_err("tls.key", format!("unsupported key: {e}")))?;
        id.client = Some((chain, key));
        Ok(id)
    }

    /// Trusting the CA in `ca` (PEM) without presenting a client certificate (an installer that
    /// has no device identity yet; servers that require one refuse it).
    ///
    /// # Errors
    /// [`NetError::Pem`].
    pub fn ca_only(ca: &[u8]) -> Result<Self, NetError> {
        let ca = certs("tls.ca", ca)?;
        // Refuse a CA the TLS library cannot use now, rather than at every connection (ureq
        // skips unparsable roots silently, which would leave nothing trusted).
        let mut store = rustls::RootCertStore::empty();
        for c in &ca {
            store
                .add(rustls::pki_types::CertificateDer::from(c.der()))
                .map_err(|e| pem_err("tls.ca", format!("not a usable CA certificate: {e}")))?;
        }
        Ok(Self { ca, client: None })
    }

    /// Reads the three PEM files (each capped at [`MAX_PEM_BYTES`]).
    ///
    /// # Errors
    /// [`NetError::Pem`] naming the file.
    pub fn load(files: &TlsFiles) -> Result<Self, NetError> {
        let read = |what: &str, path: &Path| {
            read_capped(path, MAX_PEM_BYTES).map_err(|e| match e {
                CappedReadError::TooLarge => {
                    pem_err(what, format!("{}: too large", path.display()))
                }
                CappedReadError::Io(e) => pem_err(what, format!("{}: {e}", path.display())),
            })
        };
        Self::from_pem(
            &read("tls.ca", &files.ca)?,
            &read("tls.cert", &files.cert)?,
            &read("tls.key", &files.key)?,
        )
    }
}

/// Timeouts of the client.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// TCP connect (and TLS handshake start).
    pub connect: Duration,
    /// Until the response head arrives.
    pub response: Duration,
    /// Between two reads of a body (a stalled download is dropped and resumed).
    pub read: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            connect: Duration::from_secs(15),
            response: Duration::from_secs(60),
            read: Duration::from_secs(60),
        }
    }
}

/// The device's HTTP client.
#[derive(Debug, Clone)]
pub struct HttpClient {
    agent: ureq::Agent,
    base: String,
}

impl HttpClient {
    /// A client for `server` (`https://host[:port]`) authenticating with `identity` and trusting
    /// only its CA. `http://` URLs (an artifact mirror, for example) still work: artifacts and
    /// manifests are verified by signature and digest, not by the transport.
    #[must_use]
    pub fn new(server: &str, identity: Option<&TlsIdentity>, timeouts: Timeouts) -> Self {
        let mut tls = TlsConfig::builder()
            .provider(TlsProvider::Rustls)
            .unversioned_rustls_crypto_provider(Arc::new(rustls::crypto::ring::default_provider()));
        if let Some(id) = identity {
            tls = tls
                .root_certs(RootCerts::Specific(Arc::new(id.ca.clone())))
                .client_cert(
                    id.client
                        .as_ref()
                        .map(|(chain, key)| ClientCert::new_with_certs(chain, key.to_owned())),
                );
        } else {
            // No identity: trust nothing over TLS (an empty root set refuses every server).
            tls = tls.root_certs(RootCerts::Specific(Arc::new(Vec::new())));
        }
        let config = ureq::Agent::config_builder()
            .tls_config(tls.build())
            .http_status_as_error(false)
            .max_redirects(5)
            .timeout_connect(Some(timeouts.connect))
            .timeout_recv_response(Some(timeouts.response))
            .timeout_per_read(Some(timeouts.read))
            .user_agent(concat!("tugboot-agent/", env!("CARGO_PKG_VERSION")))
            .build();
        Self {
            agent: ureq::Agent::new_with_config(config),
            base: server.trim_end_matches('/').to_owned(),
        }
    }

    /// The server URL.
    #[must_use]
    pub fn base(&self) -> &str {
        &self.base
    }

    /// `url` made absolute: paths (`/…`) are below the server.
    #[must_use]
    pub fn resolve(&self, url: &str) -> String {
        if url.starts_with('/') {
            format!("{}{url}", self.base)
        } else {
            url.to_owned()
        }
    }

    pub(crate) fn get(
        &self,
        url: &str,
        range_from: Option<u64>,
    ) -> Result<ureq::http::Response<ureq::Body>, NetError> {
        let mut req = self.agent.get(url);
        if let Some(from) = range_from {
            req = req.header("Range", format!("bytes={from}-"));
        }
        req.call().map_err(|e| transport(url, e))
    }

    /// GETs `url` and returns its body, refusing one larger than `limit` (without reading more
    /// than `limit + 1` bytes).
    ///
    /// # Errors
    /// Transport errors, a non-200 status, a body over the cap.
    pub fn get_capped(&self, url: &str, limit: usize) -> Result<Vec<u8>, NetError> {
        let url = self.resolve(url);
        let resp = self.get(&url, None)?;
        let status = resp.status().as_u16();
        if status != 200 {
            return Err(NetError::Status { url, status });
        }
        read_body(&url, resp.into_body(), limit)
    }

    /// Asks the server what to run: `None` when nothing is assigned (`204`).
    ///
    /// # Errors
    /// Transport errors, unexpected statuses, a malformed assignment.
    pub fn assignment(&self) -> Result<Option<Assignment>, NetError> {
        let url = self.resolve(ASSIGNMENT_PATH);
        let resp = self.get(&url, None)?;
        match resp.status().as_u16() {
            204 => Ok(None),
            200 => {
                let body = read_body(&url, resp.into_body(), MAX_ASSIGNMENT_BYTES)?;
                Assignment::parse(&url, &body).map(Some)
            }
            status => Err(NetError::Status { url, status }),
        }
    }

    /// POSTs one report (JSON). Only a `2xx` counts as delivered.
    ///
    /// # Errors
    /// Transport errors and any other status.
    pub fn post_report(&self, body: &[u8]) -> Result<(), NetError> {
        let url = self.resolve(REPORTS_PATH);
        let resp = self
            .agent
            .post(&url)
            .header("Content-Type", "application/json")
            .send(body)
            .map_err(|e| transport(&url, e))?;
        let status = resp.status().as_u16();
        // Drain a small acknowledgement so the connection can be reused.
        let _ = read_body(&url, resp.into_body(), 4096);
        if (200..300).contains(&status) {
            Ok(())
        } else {
            Err(NetError::Status { url, status })
        }
    }
}

fn transport(url: &str, e: ureq::Error) -> NetError {
    NetError::Transport {
        url: url.to_owned(),
        source: Box::new(e),
    }
}

fn read_body(url: &str, body: ureq::Body, limit: usize) -> Result<Vec<u8>, NetError> {
    let mut out = Vec::new();
    body.into_reader()
        .take(u64::try_from(limit).unwrap_or(u64::MAX).saturating_add(1))
        .read_to_end(&mut out)
        .map_err(|source| NetError::Body {
            url: url.to_owned(),
            source,
        })?;
    if out.len() > limit {
        return Err(NetError::TooLarge {
            url: url.to_owned(),
            limit,
        });
    }
    Ok(out)
}
