//! A minimal HTTPS/1.1 client with client certificates (tokio-rustls, one request per
//! connection), used by the integration tests, the benchmark and the operator tooling to talk
//! to a real server. The on-device client is the agent's (ureq); this one exists so the server
//! can be exercised without the agent crate.

use std::net::SocketAddr;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// Largest response read.
const MAX_RESPONSE_BYTES: usize = 64 << 20;

/// Client errors.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// PEM or TLS configuration.
    #[error("TLS configuration: {0}")]
    Config(String),
    /// Connect, handshake, read or write failed (a refused client certificate lands here).
    #[error("connection: {0}")]
    Io(#[from] std::io::Error),
    /// The response is not HTTP/1.1 as expected.
    #[error("malformed response: {0}")]
    Malformed(String),
}

/// One response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpResponse {
    /// Status code.
    pub status: u16,
    /// Headers, names lowercased.
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// The body as JSON.
    ///
    /// # Errors
    /// [`ClientError::Malformed`].
    pub fn json(&self) -> Result<serde_json::Value, ClientError> {
        serde_json::from_slice(&self.body).map_err(|e| ClientError::Malformed(e.to_string()))
    }

    /// First header of that (lowercase) name.
    #[must_use]
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// An mTLS client for one server.
#[derive(Clone)]
pub struct ApiClient {
    connector: tokio_rustls::TlsConnector,
    addr: SocketAddr,
    server_name: ServerName<'static>,
}

impl std::fmt::Debug for ApiClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiClient")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl ApiClient {
    /// Trusting only `ca_pem`, optionally presenting `identity` (certificate PEM, key PEM),
    /// connecting to `addr` and checking the server certificate for `server_name`.
    ///
    /// # Errors
    /// [`ClientError::Config`].
    pub fn new(
        addr: SocketAddr,
        server_name: &str,
        ca_pem: &str,
        identity: Option<(&str, &str)>,
    ) -> Result<Self, ClientError> {
        let cfg = |e: &dyn std::fmt::Display| ClientError::Config(e.to_string());
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
            roots.add(c.map_err(|e| cfg(&e))?).map_err(|e| cfg(&e))?;
        }
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| cfg(&e))?
            .with_root_certificates(roots);
        let mut config = match identity {
            Some((cert_pem, key_pem)) => {
                let chain: Vec<CertificateDer<'static>> =
                    CertificateDer::pem_slice_iter(cert_pem.as_bytes())
                        .collect::<Result<_, _>>()
                        .map_err(|e| cfg(&e))?;
                let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| cfg(&e))?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| cfg(&e))?
            }
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let server_name = ServerName::try_from(server_name.to_owned()).map_err(|e| cfg(&e))?;
        Ok(Self {
            connector: tokio_rustls::TlsConnector::from(Arc::new(config)),
            addr,
            server_name,
        })
    }

    /// Sends one request on a new connection (`Connection: close`) and reads the response.
    ///
    /// # Errors
    /// Connection and parse errors; HTTP error statuses are returned as responses.
    pub async fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<HttpResponse, ClientError> {
        let mut tls = self.connect().await?;
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: tugboot\r\nConnection: close\r\nContent-Length: {}\r\n",
            body.len()
        );
        for (k, v) in headers {
            head.push_str(k);
            head.push_str(": ");
            head.push_str(v);
            head.push_str("\r\n");
        }
        head.push_str("\r\n");
        let mut msg = head.into_bytes();
        msg.extend_from_slice(body);
        tls.write_all(&msg).await?;
        tls.flush().await?;
        let mut raw = Vec::new();
        // TLS 1.3 servers may reject the client certificate after the handshake "completed" on
        // the client side: that surfaces here as a read error or an alert.
        let read = (&mut tls)
            .take(u64::try_from(MAX_RESPONSE_BYTES).unwrap_or(u64::MAX))
            .read_to_end(&mut raw)
            .await;
        match read {
            Ok(_) => {}
            // Some servers close without close_notify after a complete response.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !raw.is_empty() => {}
            Err(e) => return Err(e.into()),
        }
        parse_response(&raw)
    }

    /// A new TLS connection to the server, handshake done (to speak HTTP on by hand).
    ///
    /// # Errors
    /// Connection and TLS errors.
    pub async fn connect(
        &self,
    ) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>, ClientError> {
        let tcp = tokio::net::TcpStream::connect(self.addr).await?;
        tcp.set_nodelay(true)?;
        Ok(self
            .connector
            .connect(self.server_name.clone(), tcp)
            .await?)
    }

    /// `GET`.
    ///
    /// # Errors
    /// As [`ApiClient::request`].
    pub async fn get(&self, path: &str) -> Result<HttpResponse, ClientError> {
        self.request("GET", path, &[], &[]).await
    }

    /// `POST` with a JSON body.
    ///
    /// # Errors
    /// As [`ApiClient::request`].
    pub async fn post_json(
        &self,
        path: &str,
        body: &serde_json::Value,
    ) -> Result<HttpResponse, ClientError> {
        let bytes = serde_json::to_vec(body).map_err(|e| ClientError::Malformed(e.to_string()))?;
        self.request(
            "POST",
            path,
            &[("Content-Type", "application/json")],
            &bytes,
        )
        .await
    }
}

fn parse_response(raw: &[u8]) -> Result<HttpResponse, ClientError> {
    let bad = |m: &str| ClientError::Malformed(m.to_owned());
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| bad("no end of headers"))?;
    let head = std::str::from_utf8(&raw[..end]).map_err(|_| bad("headers not UTF-8"))?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().ok_or_else(|| bad("empty"))?;
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("no status"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let mut body = raw[end + 4..].to_vec();
    if headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"))
    {
        body = dechunk(&body).ok_or_else(|| bad("bad chunked body"))?;
    }
    Ok(HttpResponse {
        status,
        headers,
        body,
    })
}

fn dechunk(mut data: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = data.windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&data[..line_end]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        data = &data[line_end + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(data.get(..size)?);
        data = data.get(size + 2..)?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_plain_and_chunked_responses() {
        let r = parse_response(b"HTTP/1.1 204 No Content\r\nX-A: 1\r\n\r\n").unwrap();
        assert_eq!(r.status, 204);
        assert_eq!(r.header("x-a"), Some("1"));
        let r = parse_response(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
        )
        .unwrap();
        assert_eq!(r.body, b"abcde");
        assert!(parse_response(b"HTTP/1.1 200 OK\r\n").is_err());
        assert!(
            parse_response(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n").is_err()
        );
    }
}
