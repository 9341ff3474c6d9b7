//! HTTP/1.1 as iPXE and EDK2's HTTP boot speak it: a GET (or HEAD) on a kept-alive
//! connection, and an incremental parser of the response head.

/// Largest response head accepted.
pub const MAX_HEAD: usize = 16 * 1024;

/// Why a URL or a response is unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HttpError {
    #[error("not an http:// URL: {0}")]
    Url(String),
    #[error("response head over {MAX_HEAD} bytes")]
    HeadTooLarge,
    #[error("malformed response: {0}")]
    Malformed(String),
}

/// `http://host[:port]/path?query` split up (HTTPS is not simulated).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Url {
    pub host: String,
    pub port: u16,
    /// Path and query, starting with `/`.
    pub target: String,
}

impl Url {
    pub fn parse(url: &str) -> Result<Self, HttpError> {
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| HttpError::Url(url.into()))?;
        let (authority, target) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) => (h, p.parse().map_err(|_| HttpError::Url(url.into()))?),
            None => (authority, 80),
        };
        if host.is_empty() {
            return Err(HttpError::Url(url.into()));
        }
        Ok(Url {
            host: host.into(),
            port,
            target: target.into(),
        })
    }

    /// Resolves a path relative to the server root (`/x`) or a full URL against this one.
    pub fn join(&self, reference: &str) -> Result<Url, HttpError> {
        if reference.starts_with("http://") {
            Url::parse(reference)
        } else if reference.starts_with('/') {
            Ok(Url {
                target: reference.into(),
                ..self.clone()
            })
        } else {
            Err(HttpError::Url(reference.into()))
        }
    }
}

/// Which client's request to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Agent {
    /// iPXE 1.21 (the header set of its `http_request`).
    Ipxe,
    /// EDK2 HttpBootDxe.
    Edk2,
}

/// A request as the client writes it.
#[must_use]
pub fn request(agent: Agent, method: &str, url: &Url) -> Vec<u8> {
    let host = if url.port == 80 {
        url.host.clone()
    } else {
        format!("{}:{}", url.host, url.port)
    };
    let ua = match agent {
        Agent::Ipxe => "User-Agent: iPXE/1.21.1+ (g0000000)\r\nConnection: keep-alive\r\n",
        Agent::Edk2 => "User-Agent: UefiHttpBoot/1.0\r\nAccept: */*\r\n",
    };
    format!(
        "{method} {} HTTP/1.1\r\n{ua}Host: {host}\r\n\r\n",
        url.target
    )
    .into_bytes()
}

/// A parsed response head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    pub status: u16,
    pub content_length: Option<u64>,
    /// The server will close the connection after this response.
    pub close: bool,
    pub chunked: bool,
}

/// Feeds bytes until the head is complete: `Ok(Some((head, consumed)))`, where `consumed` is
/// the length of the head in `buf` (the body starts there), or `Ok(None)` when more is needed.
pub fn parse_head(buf: &[u8]) -> Result<Option<(Head, usize)>, HttpError> {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return if buf.len() > MAX_HEAD {
            Err(HttpError::HeadTooLarge)
        } else {
            Ok(None)
        };
    };
    let text = std::str::from_utf8(&buf[..end])
        .map_err(|_| HttpError::Malformed("head is not UTF-8".into()))?;
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    if !version.starts_with("HTTP/1.") {
        return Err(HttpError::Malformed(format!("status line {status_line:?}")));
    }
    let status = parts
        .next()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| HttpError::Malformed(format!("status line {status_line:?}")))?;
    let mut head = Head {
        status,
        content_length: None,
        close: version == "HTTP/1.0",
        chunked: false,
    };
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            return Err(HttpError::Malformed(format!("header line {line:?}")));
        };
        let value = value.trim();
        match name.trim().to_ascii_lowercase().as_str() {
            "content-length" => {
                head.content_length = Some(
                    value
                        .parse()
                        .map_err(|_| HttpError::Malformed(format!("Content-Length {value:?}")))?,
                );
            }
            "connection" => {
                let v = value.to_ascii_lowercase();
                if v.contains("close") {
                    head.close = true;
                } else if v.contains("keep-alive") {
                    head.close = false;
                }
            }
            "transfer-encoding" => head.chunked = value.to_ascii_lowercase().contains("chunked"),
            _ => {}
        }
    }
    Ok(Some((head, end + 4)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let u = Url::parse("http://10.99.0.1:8080/ipxe?mac=52-54").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.target.as_str()),
            ("10.99.0.1", 8080, "/ipxe?mac=52-54")
        );
        let j = u.join("/artifacts/sha256/ab").unwrap();
        assert_eq!(j.target, "/artifacts/sha256/ab");
        assert_eq!(Url::parse("http://h").unwrap().target, "/");
        for bad in ["https://h/", "http://:80/", "http://h:x/", "ftp://h"] {
            assert!(Url::parse(bad).is_err(), "{bad}");
        }
        assert!(u.join("relative").is_err());
    }

    #[test]
    fn request_bytes() {
        let u = Url::parse("http://10.0.0.1:8080/boot.ipxe").unwrap();
        assert_eq!(
            request(Agent::Ipxe, "GET", &u),
            b"GET /boot.ipxe HTTP/1.1\r\nUser-Agent: iPXE/1.21.1+ (g0000000)\r\nConnection: keep-alive\r\nHost: 10.0.0.1:8080\r\n\r\n"
        );
    }

    #[test]
    fn heads() {
        assert_eq!(parse_head(b"HTTP/1.1 200 OK\r\nContent-Le").unwrap(), None);
        let (h, n) = parse_head(b"HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\nbody")
            .unwrap()
            .unwrap();
        assert_eq!(n, 39);
        assert_eq!(
            h,
            Head {
                status: 200,
                content_length: Some(12),
                close: false,
                chunked: false
            }
        );
        let (h, _) = parse_head(b"HTTP/1.0 404 Not Found\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(h.close && h.status == 404);
        let (h, _) = parse_head(
            b"HTTP/1.1 200 OK\r\nconnection: Close\r\ntransfer-encoding: chunked\r\n\r\n",
        )
        .unwrap()
        .unwrap();
        assert!(h.close && h.chunked);
        assert!(parse_head(b"SSH-2.0\r\n\r\n").is_err());
        assert!(parse_head(b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n").is_err());
        assert!(parse_head(&vec![b'a'; MAX_HEAD + 1]).is_err());
    }
}
