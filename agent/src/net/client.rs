//! A synchronous HTTP(S) client for the device API: ureq 3 over rustls with the ring provider,
//! mutual TLS with the device certificate, and exactly one trusted CA (the server's, pinned in
//! the configuration): no system or Mozilla roots are ever consulted.

use std::io::Read as _;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use ureq::tls::{Certificate, ClientCert, PemItem, PrivateKey, RootCerts, TlsConfig, TlsProvider};

use crate::config::{CappedReadError, TlsFiles, read_capped};
use crate::net::{
    ASSIGNMENT_PATH, Assignment, MAX_ASSIGNMENT_BYTES, NetError, REPORTS_PATH, parse_assignment,
};

/// Size cap of a PEM file.
pub const MAX_PEM_BYTES: usize = 64 * 1024;

/// The TLS algorithms of the agent: rustls' *ring* provider cut to what a device API with the
/// built-in CA (ECDSA P-256) or an operator's own CA (ECDSA or RSA) needs.
///
/// Why not `default_provider()`: it names every suite, group and key type, so none of their
/// code can be dropped from the static binary. Left out here, and so not linked: X25519 and
/// Ed25519 (P-256 ECDHE and ECDSA are linked anyway for the device key; about 45 KB of
/// curve25519 code and tables), the AES-256/SHA-384 suites, and RSA and Ed25519 *device* keys
/// (the agent makes and presents ECDSA keys only; server certificates may still be RSA).
/// Offered: TLS 1.3 AES-128-GCM and ChaCha20-Poly1305 (boards without AES instructions, such
/// as the Raspberry Pi 4, are faster with ChaCha20), the same over TLS 1.2 with ECDSA or RSA
/// server keys, key exchange P-256 and P-384.
#[must_use]
pub fn crypto_provider() -> rustls::crypto::CryptoProvider {
    use rustls::crypto::ring::{cipher_suite as cs, kx_group};
    rustls::crypto::CryptoProvider {
        cipher_suites: vec![
            cs::TLS13_AES_128_GCM_SHA256,
            cs::TLS13_CHACHA20_POLY1305_SHA256,
            cs::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
            cs::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
            cs::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
            cs::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
        ],
        kx_groups: vec![kx_group::SECP256R1, kx_group::SECP384R1],
        signature_verification_algorithms: SIGNATURE_ALGORITHMS,
        secure_random: &RingRandom,
        key_provider: &EcdsaKeys,
    }
}

/// Server certificate signatures the agent can check (ECDSA P-256/P-384, RSA PKCS#1 and PSS).
pub(crate) static SIGNATURE_ALGORITHMS: rustls::crypto::WebPkiSupportedAlgorithms =
    rustls::crypto::WebPkiSupportedAlgorithms {
        all: &[
            webpki::ring::ECDSA_P256_SHA256,
            webpki::ring::ECDSA_P256_SHA384,
            webpki::ring::ECDSA_P384_SHA256,
            webpki::ring::ECDSA_P384_SHA384,
            webpki::ring::RSA_PSS_2048_8192_SHA256_LEGACY_KEY,
            webpki::ring::RSA_PSS_2048_8192_SHA384_LEGACY_KEY,
            webpki::ring::RSA_PSS_2048_8192_SHA512_LEGACY_KEY,
            webpki::ring::RSA_PKCS1_2048_8192_SHA256,
            webpki::ring::RSA_PKCS1_2048_8192_SHA384,
            webpki::ring::RSA_PKCS1_2048_8192_SHA512,
        ],
        mapping: &[
            (
                rustls::SignatureScheme::ECDSA_NISTP384_SHA384,
                &[
                    webpki::ring::ECDSA_P384_SHA384,
                    webpki::ring::ECDSA_P256_SHA384,
                ],
            ),
            (
                rustls::SignatureScheme::ECDSA_NISTP256_SHA256,
                &[
                    webpki::ring::ECDSA_P256_SHA256,
                    webpki::ring::ECDSA_P384_SHA256,
                ],
            ),
            (
                rustls::SignatureScheme::RSA_PSS_SHA512,
                &[webpki::ring::RSA_PSS_2048_8192_SHA512_LEGACY_KEY],
            ),
            (
                rustls::SignatureScheme::RSA_PSS_SHA384,
                &[webpki::ring::RSA_PSS_2048_8192_SHA384_LEGACY_KEY],
            ),
            (
                rustls::SignatureScheme::RSA_PSS_SHA256,
                &[webpki::ring::RSA_PSS_2048_8192_SHA256_LEGACY_KEY],
            ),
            (
                rustls::SignatureScheme::RSA_PKCS1_SHA512,
                &[webpki::ring::RSA_PKCS1_2048_8192_SHA512],
            ),
            (
                rustls::SignatureScheme::RSA_PKCS1_SHA384,
                &[webpki::ring::RSA_PKCS1_2048_8192_SHA384],
            ),
            (
                rustls::SignatureScheme::RSA_PKCS1_SHA256,
                &[webpki::ring::RSA_PKCS1_2048_8192_SHA256],
            ),
        ],
    };

#[derive(Debug)]
struct RingRandom;

impl rustls::crypto::SecureRandom for RingRandom {
    fn fill(&self, buf: &mut [u8]) -> Result<(), rustls::crypto::GetRandomFailed> {
        use ring::rand::SecureRandom as _;
        ring::rand::SystemRandom::new()
            .fill(buf)
            .map_err(|_| rustls::crypto::GetRandomFailed)
    }
}

/// Loads device keys: ECDSA (P-256, P-384) in PKCS#8 or SEC1 only.
#[derive(Debug)]
struct EcdsaKeys;

impl rustls::crypto::KeyProvider for EcdsaKeys {
    fn load_private_key(
        &self,
        key_der: rustls::pki_types::PrivateKeyDer<'static>,
    ) -> Result<std::sync::Arc<dyn rustls::sign::SigningKey>, rustls::Error> {
        rustls::crypto::ring::sign::any_ecdsa_type(&key_der)
    }
}

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
        // ureq panics on a key the provider cannot load: refuse it here, clearly.
        rustls::crypto::ring::sign::any_ecdsa_type(&der).map_err(|_| {
            pem_err(
                "tls.key",
                "unsupported key: the agent uses ECDSA P-256 or P-384 keys (PKCS#8 or SEC1)",
            )
        })?;
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
            .unversioned_rustls_crypto_provider(Arc::new(crypto_provider()));
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
            return Err(refused(url, status, resp.into_body()));
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
                parse_assignment(&url, &body).map(Some)
            }
            status => Err(refused(url, status, resp.into_body())),
        }
    }

    /// POSTs one report (JSON). Only a `2xx` counts as delivered.
    ///
    /// # Errors
    /// Transport errors and any other status.
    pub fn post_report(&self, body: &[u8]) -> Result<(), NetError> {
        let (url, status, resp) = self.post_json(REPORTS_PATH, body, 4096)?;
        if (200..300).contains(&status) {
            Ok(())
        } else {
            Err(NetError::Status {
                url,
                status,
                reason: tugboot_wire::ErrorBody::reason(&resp),
            })
        }
    }

    /// POSTs JSON to `path` (below the server) and returns the URL, the status and the body
    /// (at most `limit` bytes; a longer body is an error).
    ///
    /// # Errors
    /// Transport errors, a body over the cap.
    pub fn post_json(
        &self,
        path: &str,
        body: &[u8],
        limit: usize,
    ) -> Result<(String, u16, Vec<u8>), NetError> {
        let url = self.resolve(path);
        let resp = self
            .agent
            .post(&url)
            .header("Content-Type", "application/json")
            .send(body)
            .map_err(|e| transport(&url, e))?;
        let status = resp.status().as_u16();
        let body = read_body(&url, resp.into_body(), limit)?;
        Ok((url, status, body))
    }
}

fn transport(url: &str, e: ureq::Error) -> NetError {
    NetError::Transport {
        url: url.to_owned(),
        source: Box::new(e),
    }
}

/// A refusal: the status and the server's `{"error": "…"}` reason, if it gave one (the body is
/// read up to 16 KiB; anything else is ignored).
pub(crate) fn refused(url: String, status: u16, body: ureq::Body) -> NetError {
    let reason = read_body(&url, body, 16 * 1024)
        .ok()
        .and_then(|b| tugboot_wire::ErrorBody::reason(&b));
    NetError::Status {
        url,
        status,
        reason,
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
