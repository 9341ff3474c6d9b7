//! The operator side of the device API: HTTPS to a local or remote `tugboot serve` (its `[api]`
//! section) with the operator bearer token, the server's CA pinned as the only trust anchor.
//!
//! The client is `tugboot_api::client::ApiClient` (tokio-rustls, ring, one request per
//! connection) rather than reqwest: it already speaks exactly this server's TLS set-up, pins a
//! CA from PEM, and keeps a second HTTP stack out of the binary. Operator commands are a handful
//! of small JSON requests, so one connection per request costs nothing that matters.

use std::net::{SocketAddr, ToSocketAddrs as _};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use serde_json::Value;
use tugboot_api::client::{ApiClient, ClientError};

use super::util::read_capped;

/// Largest CA certificate file read.
const MAX_CA_PEM_BYTES: usize = 64 * 1024;
/// Largest operator token file read (the server's own limit).
const MAX_TOKEN_BYTES: usize = 4096;
/// One request, connect to last byte.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest server message quoted in an error line.
const MAX_MESSAGE_CHARS: usize = 300;

/// Where the server is and how to prove we are its operator.
#[derive(Debug, Args, Clone)]
pub struct RemoteArgs {
    /// Device API URL of the server, e.g. https://boot.example:8443 (its `[api]` listener).
    #[arg(long, env = "TUGBOOT_SERVER", global = true)]
    pub server: Option<String>,
    /// File holding the operator bearer token (the server's `api.operator_token_file`).
    #[arg(long, env = "TUGBOOT_TOKEN_FILE", global = true)]
    pub token_file: Option<PathBuf>,
    /// The server's CA certificate (`ca.pem` from `tugboot ca init`): the only certificate
    /// the connection trusts.
    #[arg(long, env = "TUGBOOT_CA_CERT", global = true)]
    pub ca_cert: Option<PathBuf>,
}

/// `https://host[:port][/prefix]`, split for the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerUrl {
    /// Host name or IP address (no brackets), checked against the server certificate.
    pub host: String,
    /// Port (443 if the URL names none).
    pub port: u16,
    /// Path prefix without a trailing slash (usually empty).
    pub prefix: String,
}

impl ServerUrl {
    /// Parses an `https://` URL; anything else is refused (the operator token must never travel
    /// in clear text).
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let rest = text.strip_prefix("https://").with_context(|| {
            format!("server URL {text:?} must start with https:// (the API is TLS only)")
        })?;
        let (authority, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        if authority.is_empty() || authority.contains('@') {
            bail!("server URL {text:?} has no usable host");
        }
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (h, after) = v6
                .split_once(']')
                .with_context(|| format!("server URL {text:?}: unclosed '['"))?;
            let port = match after {
                "" => None,
                p => Some(
                    p.strip_prefix(':')
                        .with_context(|| format!("server URL {text:?}: expected ':' after ']'"))?,
                ),
            };
            (h, port)
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (authority, None),
            }
        };
        if host.is_empty() {
            bail!("server URL {text:?} has no host");
        }
        let port = match port {
            None => 443,
            Some(p) => p
                .parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .with_context(|| format!("server URL {text:?}: bad port {p:?}"))?,
        };
        if path.contains(['?', '#']) {
            bail!("server URL {text:?} must not carry a query or fragment");
        }
        Ok(Self {
            host: host.to_owned(),
            port,
            prefix: path.trim_end_matches('/').to_owned(),
        })
    }
}

/// A connection profile to one server; every call opens its own TLS connection.
#[derive(Debug)]
pub struct Remote {
    /// One client per resolved address, tried in order while connecting fails.
    clients: Vec<ApiClient>,
    url: String,
    prefix: String,
    auth: String,
    rt: tokio::runtime::Runtime,
}

impl Remote {
    /// Reads the token and CA files and resolves the server name.
    pub fn connect(args: &RemoteArgs) -> anyhow::Result<Self> {
        let url = args
            .server
            .clone()
            .context("no server given: pass --server https://HOST:PORT or set TUGBOOT_SERVER")?;
        let token_file = args
            .token_file
            .as_ref()
            .context("no operator token: pass --token-file FILE or set TUGBOOT_TOKEN_FILE")?;
        let ca_file = args
            .ca_cert
            .as_ref()
            .context("no CA certificate: pass --ca-cert FILE or set TUGBOOT_CA_CERT")?;
        let parsed = ServerUrl::parse(&url)?;
        let token = String::from_utf8(read_capped(token_file, MAX_TOKEN_BYTES)?)
            .with_context(|| format!("{} is not UTF-8", token_file.display()))?;
        let token = token.trim();
        if token.is_empty() || token.contains(['\r', '\n']) {
            bail!(
                "{} must hold the operator token on one line",
                token_file.display()
            );
        }
        let ca_pem = String::from_utf8(read_capped(ca_file, MAX_CA_PEM_BYTES)?)
            .with_context(|| format!("{} is not UTF-8", ca_file.display()))?;
        if !ca_pem.contains("-----BEGIN CERTIFICATE-----") {
            bail!("{} holds no PEM certificate", ca_file.display());
        }
        let addrs: Vec<SocketAddr> = (parsed.host.as_str(), parsed.port)
            .to_socket_addrs()
            .with_context(|| format!("cannot resolve {}", parsed.host))?
            .collect();
        if addrs.is_empty() {
            bail!("{} has no address", parsed.host);
        }
        let clients = addrs
            .into_iter()
            .map(|addr| {
                ApiClient::new(addr, &parsed.host, &ca_pem, None)
                    .map_err(|e| anyhow::anyhow!("TLS set-up with {}: {e}", ca_file.display()))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("tokio runtime")?;
        Ok(Self {
            clients,
            url: url.trim_end_matches('/').to_owned(),
            prefix: parsed.prefix,
            auth: format!("Bearer {token}"),
            rt,
        })
    }

    /// One request; a non-2xx answer becomes a one-line error carrying the status and the
    /// server's own message. Returns the JSON body (`null` for an empty one).
    pub fn call(&self, method: &str, path: &str, body: Option<&[u8]>) -> anyhow::Result<Value> {
        let full = format!("{}{path}", self.prefix);
        let mut headers = vec![("Authorization", self.auth.as_str())];
        if body.is_some() {
            headers.push(("Content-Type", "application/json"));
        }
        let attempt = async {
            let mut last = None;
            for client in &self.clients {
                match client
                    .request(method, &full, &headers, body.unwrap_or_default())
                    .await
                {
                    // Nothing was sent yet: the next address of the name may answer.
                    Err(ClientError::Io(e)) if connect_failed(&e) => {
                        last = Some(format!("cannot connect: {e}"));
                    }
                    other => return other.map_err(|e| e.to_string()),
                }
            }
            Err(last.unwrap_or_else(|| "no address".into()))
        };
        let resp = self
            .rt
            .block_on(async { tokio::time::timeout(REQUEST_TIMEOUT, attempt).await })
            .map_err(|_| {
                anyhow::anyhow!(
                    "{method} {}{path}: no answer within {}s",
                    self.url,
                    REQUEST_TIMEOUT.as_secs()
                )
            })?
            // The client error's text already holds its cause: no chain to repeat it.
            .map_err(|e| anyhow::anyhow!("{method} {}{path}: {e}", self.url))?;
        if !(200..300).contains(&resp.status) {
            bail!(
                "{method} {path}: HTTP {} {}: {}",
                resp.status,
                reason(resp.status),
                server_message(&resp.body)
            );
        }
        if resp.body.iter().all(u8::is_ascii_whitespace) {
            return Ok(Value::Null);
        }
        serde_json::from_slice(&resp.body)
            .with_context(|| format!("{method} {path}: the answer is not JSON"))
    }
}

fn connect_failed(e: &std::io::Error) -> bool {
    use std::io::ErrorKind as K;
    matches!(
        e.kind(),
        K::ConnectionRefused | K::HostUnreachable | K::NetworkUnreachable | K::AddrNotAvailable
    )
}

/// The server's `{"error": "..."}`, or the start of whatever it sent, on one line.
fn server_message(body: &[u8]) -> String {
    let text = serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v.get("error").and_then(Value::as_str).map(str::to_owned))
        .unwrap_or_else(|| String::from_utf8_lossy(body).into_owned());
    let one_line: String = text
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .chars()
        .take(MAX_MESSAGE_CHARS)
        .collect();
    if one_line.is_empty() {
        "(no message)".into()
    } else {
        one_line
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        400 => "Bad Request",
        401 => "Unauthorized (wrong or missing operator token)",
        403 => "Forbidden",
        404 => "Not Found",
        409 => "Conflict",
        413 => "Payload Too Large",
        422 => "Unprocessable Entity",
        500..=599 => "server error",
        _ => "",
    }
}

/// Left-aligned columns separated by two spaces, header first.
pub fn print_table(headers: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut out = String::new();
        for (i, (cell, w)) in cells.zip(&widths).enumerate() {
            if i > 0 {
                out.push_str("  ");
            }
            out.push_str(cell);
            if i + 1 < widths.len() {
                out.extend(std::iter::repeat_n(' ', w - cell.chars().count()));
            }
        }
        println!("{}", out.trim_end());
    };
    line(&mut headers.iter().copied());
    for row in rows {
        line(&mut row.iter().map(String::as_str));
    }
}

/// A JSON value as a table cell: strings bare, null as `-`.
pub fn cell(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// A unix time in a JSON value as `YYYY-MM-DDTHH:MM:SSZ`.
pub fn time_cell(v: &Value) -> String {
    match v.as_u64() {
        Some(t) => tugboot_firmware::Timestamp::from_unix(t).to_string(),
        None => cell(v),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_split_into_host_port_and_prefix() {
        let u = ServerUrl::parse("https://boot.example:8443/").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.prefix.as_str()),
            ("boot.example", 8443, "")
        );
        let u = ServerUrl::parse("https://10.0.0.1").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("10.0.0.1", 443));
        let u = ServerUrl::parse("https://[::1]:9/tug/").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.prefix.as_str()),
            ("::1", 9, "/tug")
        );
        for bad in [
            "http://boot.example",
            "boot.example:8443",
            "https://",
            "https://:8443",
            "https://h:0",
            "https://h:x",
            "https://[::1",
            "https://u@h",
            "https://h/?q",
        ] {
            assert!(ServerUrl::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn server_messages_are_one_bounded_line() {
        assert_eq!(
            server_message(br#"{"error":"no such machine"}"#),
            "no such machine"
        );
        assert_eq!(server_message(b"plain\ntext\r\n"), "plain text");
        assert_eq!(server_message(b""), "(no message)");
        assert_eq!(server_message(&vec![b'x'; 10_000]).len(), MAX_MESSAGE_CHARS);
    }
}
