//! Enrollment and renewal of the device certificate (`docs/agent.md`, "Enrollment").
//!
//! The key is made on the device (ECDSA P-256 with *ring*, already linked for TLS) and never
//! leaves it: it is written once, mode 0600, before the first request, and every request
//! carries only a PKCS#10 certificate signing request built here ([`DeviceKey::csr_der`]: a
//! few dozen lines of DER, checked against `openssl req -verify` and the server's own CSR
//! parser in the tests).
//!
//! - First enrollment (`POST /api/v1/enroll`, no client certificate) trusts exactly the CA in
//!   `tls.ca` (shipped with the image or written by the installer), optionally pinned further
//!   by its SHA-256 fingerprint (`[enroll] ca_sha256` or `tugboot.ca_sha256=` on the kernel
//!   command line). There is no trust on first use: without that file the agent does not
//!   enroll.
//! - The answer's certificate must carry the device key and chain to the answer's CA; when that
//!   CA is one the device already trusted for the server, `tls.ca` is narrowed to exactly it
//!   (pinned for all later TLS).
//! - `202 pending`: the same key and CSR are sent again later, with backoff, until an operator
//!   approves the machine.
//! - Renewal (`POST /api/v1/device/renew` over mutual TLS) re-certifies the same key in the last
//!   part of the certificate's life ([`renewal_due`]).
//!
//! The certificate, key and CA are each replaced with `write_atomic` (temp file, fsync,
//! rename, fsync of the directory); the key's temporary file is created mode 0600.

use std::io::Write as _;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair, KeyPair as _};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use tugboot_wire::{EnrollRequest, EnrollResponse, Enrolled, ErrorBody, Mac, RenewRequest};

use crate::config::{DeviceConfig, read_capped};
use crate::io::{RealIo, write_atomic};
use crate::net::client::MAX_PEM_BYTES;
use crate::net::{ENROLL_PATH, HttpClient, NetError, RENEW_PATH};

/// Enrollment or renewal failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EnrollError {
    /// The key could not be made, read or used.
    #[error("device key {path}: {reason}")]
    Key {
        /// The key file.
        path: String,
        /// Why.
        reason: String,
    },
    /// The CA file needed to trust the server is missing or unusable.
    #[error("tls.ca {path}: {reason}")]
    Ca {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// The issued certificate is not acceptable.
    #[error("issued certificate: {0}")]
    Certificate(String),
    /// No MAC address to enroll with.
    #[error("no MAC address to enroll with: {0}")]
    NoMac(String),
    /// The server refused (`{"error"}` kept).
    #[error(transparent)]
    Refused(NetError),
    /// A network failure.
    #[error(transparent)]
    Net(#[from] NetError),
    /// The server's answer is not an enrollment answer.
    #[error("{url}: {reason}")]
    Protocol {
        /// The URL.
        url: String,
        /// Why.
        reason: String,
    },
    /// Writing a file failed.
    #[error("writing {path}: {source}")]
    Write {
        /// The file.
        path: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

fn key_err(path: &Path, reason: impl Into<String>) -> EnrollError {
    EnrollError::Key {
        path: path.display().to_string(),
        reason: reason.into(),
    }
}

// ---------------------------------------------------------------------------------------------
// DER

/// A DER TLV with a definite length.
fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let len = content.len();
    let mut out = Vec::with_capacity(len + 6);
    out.push(tag);
    let bytes = len.to_be_bytes();
    let skip = bytes.iter().take_while(|&&b| b == 0).count();
    let rest = bytes.get(skip..).unwrap_or_default();
    match u8::try_from(len) {
        Ok(short) if short < 0x80 => out.push(short),
        _ => {
            // At most size_of::<usize>() = 8 bytes of length.
            #[allow(clippy::cast_possible_truncation)]
            out.push(0x80 | rest.len() as u8);
            out.extend_from_slice(rest);
        }
    }
    out.extend_from_slice(content);
    out
}

fn seq(parts: &[&[u8]]) -> Vec<u8> {
    tlv(0x30, &parts.concat())
}

/// OIDs, as DER contents.
const OID_EC_PUBLIC_KEY: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01]; // 1.2.840.10045.2.1
const OID_PRIME256V1: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07]; // 1.2.840.10045.3.1.7
const OID_ECDSA_SHA256: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02]; // 1.2.840.10045.4.3.2
const OID_COMMON_NAME: &[u8] = &[0x55, 0x04, 0x03]; // 2.5.4.3

/// A DER reader over untrusted bytes: every access is checked, nothing panics.
struct Der<'a> {
    data: &'a [u8],
}

impl<'a> Der<'a> {
    fn new(data: &'a [u8]) -> Self {
        Self { data }
    }

    fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// The next TLV: (tag, contents). Definite lengths only (DER), at most 4 length bytes.
    fn next(&mut self) -> Option<(u8, &'a [u8])> {
        let (&tag, rest) = self.data.split_first()?;
        let (&first, rest) = rest.split_first()?;
        let (len, rest) = if first < 0x80 {
            (usize::from(first), rest)
        } else {
            let n = usize::from(first & 0x7f);
            if n == 0 || n > 4 {
                return None;
            }
            let bytes = rest.get(..n)?;
            let len = bytes
                .iter()
                .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
            (len, rest.get(n..)?)
        };
        let content = rest.get(..len)?;
        self.data = rest.get(len..)?;
        Some((tag, content))
    }

    fn expect(&mut self, tag: u8) -> Option<&'a [u8]> {
        match self.next()? {
            (t, c) if t == tag => Some(c),
            _ => None,
        }
    }
}

/// What the agent needs from a certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    /// Start of validity, unix seconds.
    pub not_before: i64,
    /// End of validity, unix seconds.
    pub not_after: i64,
    /// The subject public key (for EC, the uncompressed point).
    pub public_key: Vec<u8>,
}

/// Reads validity and public key out of a DER certificate. `None` for anything that is not
/// one (the entry of the `device_cert` fuzz target; never panics).
#[must_use]
pub fn cert_info(der: &[u8]) -> Option<CertInfo> {
    let mut outer = Der::new(der);
    let cert = outer.expect(0x30)?;
    let mut cert = Der::new(cert);
    let mut tbs = Der::new(cert.expect(0x30)?);
    let (mut tag, mut field) = tbs.next()?;
    if tag == 0xa0 {
        // [0] version
        (tag, field) = tbs.next()?;
    }
    if tag != 0x02 || field.is_empty() {
        return None; // serial
    }
    tbs.expect(0x30)?; // signature algorithm
    tbs.expect(0x30)?; // issuer
    let mut validity = Der::new(tbs.expect(0x30)?);
    let not_before = der_time(validity.next()?)?;
    let not_after = der_time(validity.next()?)?;
    tbs.expect(0x30)?; // subject
    let mut spki = Der::new(tbs.expect(0x30)?);
    spki.expect(0x30)?; // algorithm
    let bits = spki.expect(0x03)?;
    let (&unused, key) = bits.split_first()?;
    if unused != 0 || !spki.is_empty() {
        return None;
    }
    Some(CertInfo {
        not_before,
        not_after,
        public_key: key.to_vec(),
    })
}

/// UTCTime (`YYMMDDHHMMSSZ`, 1950..2049) or GeneralizedTime (`YYYYMMDDHHMMSSZ`) → unix
/// seconds.
fn der_time((tag, text): (u8, &[u8])) -> Option<i64> {
    let digits = |b: &[u8]| -> Option<i64> {
        if b.is_empty() || !b.iter().all(u8::is_ascii_digit) {
            return None;
        }
        b.iter()
            .try_fold(0i64, |acc, &d| Some(acc * 10 + i64::from(d - b'0')))
    };
    let (year, rest) = match tag {
        0x17 if text.len() == 13 => {
            let yy = digits(text.get(..2)?)?;
            (if yy < 50 { 2000 + yy } else { 1900 + yy }, text.get(2..)?)
        }
        0x18 if text.len() == 15 => (digits(text.get(..4)?)?, text.get(4..)?),
        _ => return None,
    };
    if rest.get(10) != Some(&b'Z') {
        return None;
    }
    let field = |i: usize| digits(rest.get(i..i + 2)?);
    let (month, day, hour, min, sec) = (field(0)?, field(2)?, field(4)?, field(6)?, field(8)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || min > 59 || sec > 60 {
        return None;
    }
    Some(days_from_civil(year, month, day) * 86_400 + hour * 3600 + min * 60 + sec)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

// ---------------------------------------------------------------------------------------------
// PEM

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// PEM of `der` with `label` (64-character lines).
#[must_use]
pub fn pem(label: &str, der: &[u8]) -> String {
    let mut b64 = String::with_capacity(der.len() * 4 / 3 + 4);
    for chunk in der.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, &b)| acc | (u32::from(b) << (16 - 8 * i)));
        for i in 0..4 {
            if i <= chunk.len() {
                let index = (n >> (18 - 6 * i)) & 63;
                b64.push(char::from(B64[index as usize]));
            } else {
                b64.push('=');
            }
        }
    }
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// SHA-256 of a DER certificate (what `openssl x509 -fingerprint -sha256` shows).
#[must_use]
pub fn fingerprint(der: &[u8]) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, der);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

// ---------------------------------------------------------------------------------------------
// The device key

/// The device's ECDSA P-256 key.
pub struct DeviceKey {
    pkcs8: Vec<u8>,
    pair: EcdsaKeyPair,
}

impl std::fmt::Debug for DeviceKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceKey")
            .field("public_key", &hex(self.public_key()))
            .finish_non_exhaustive()
    }
}

impl DeviceKey {
    /// A new key from the system's random source.
    ///
    /// # Errors
    /// The random source failed.
    pub fn generate() -> Result<Self, String> {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng)
            .map_err(|_| "cannot generate a P-256 key".to_owned())?;
        Self::from_pkcs8(pkcs8.as_ref())
    }

    /// From PKCS#8 DER.
    ///
    /// # Errors
    /// Not a P-256 PKCS#8 key.
    pub fn from_pkcs8(der: &[u8]) -> Result<Self, String> {
        let pair =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, der, &SystemRandom::new())
                .map_err(|e| format!("not an ECDSA P-256 PKCS#8 key: {e}"))?;
        Ok(Self {
            pkcs8: der.to_vec(),
            pair,
        })
    }

    /// From a PEM file's bytes (`PRIVATE KEY`, PKCS#8).
    ///
    /// # Errors
    /// Not a PEM PKCS#8 P-256 key.
    pub fn from_pem(bytes: &[u8]) -> Result<Self, String> {
        match PrivateKeyDer::from_pem_slice(bytes) {
            Ok(PrivateKeyDer::Pkcs8(k)) => Self::from_pkcs8(k.secret_pkcs8_der()),
            Ok(_) => Err("not a PKCS#8 key (the agent makes and reads PKCS#8 P-256 keys)".into()),
            Err(e) => Err(format!("no private key in the PEM: {e}")),
        }
    }

    /// The public key, an uncompressed P-256 point (65 bytes).
    #[must_use]
    pub fn public_key(&self) -> &[u8] {
        self.pair.public_key().as_ref()
    }

    /// The PEM (`PRIVATE KEY`) to store.
    #[must_use]
    pub fn to_pem(&self) -> String {
        pem("PRIVATE KEY", &self.pkcs8)
    }

    /// A PKCS#10 certificate request (RFC 2986) for this key, subject `CN=<common_name>`,
    /// no attributes, signed with ECDSA-SHA256. The server uses only its public key.
    ///
    /// # Errors
    /// Signing failed.
    pub fn csr_der(&self, common_name: &str) -> Result<Vec<u8>, String> {
        let name = seq(&[&tlv(
            0x31,
            &seq(&[
                &tlv(0x06, OID_COMMON_NAME),
                &tlv(0x0c, common_name.as_bytes()),
            ]),
        )]);
        let mut bits = vec![0u8];
        bits.extend_from_slice(self.public_key());
        let spki = seq(&[
            &seq(&[&tlv(0x06, OID_EC_PUBLIC_KEY), &tlv(0x06, OID_PRIME256V1)]),
            &tlv(0x03, &bits),
        ]);
        let info = seq(&[&[0x02, 0x01, 0x00], &name, &spki, &[0xa0, 0x00]]);
        let sig = self
            .pair
            .sign(&SystemRandom::new(), &info)
            .map_err(|_| "signing the CSR failed".to_owned())?;
        let mut sig_bits = vec![0u8];
        sig_bits.extend_from_slice(sig.as_ref());
        Ok(seq(&[
            &info,
            &seq(&[&tlv(0x06, OID_ECDSA_SHA256)]),
            &tlv(0x03, &sig_bits),
        ]))
    }

    /// [`DeviceKey::csr_der`] as PEM (`CERTIFICATE REQUEST`).
    ///
    /// # Errors
    /// Signing failed.
    pub fn csr_pem(&self, common_name: &str) -> Result<String, String> {
        Ok(pem("CERTIFICATE REQUEST", &self.csr_der(common_name)?))
    }
}

/// Writes the key file: temp created mode 0600 (an existing temp is removed first, so its
/// mode cannot leak), fsync, rename, fsync of the directory.
fn write_key_file(path: &Path, key: &DeviceKey) -> Result<(), EnrollError> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let err = |source| EnrollError::Write {
        path: path.display().to_string(),
        source,
    };
    let dir = path.parent().unwrap_or_else(|| Path::new("/"));
    std::fs::create_dir_all(dir).map_err(err)?;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = std::path::PathBuf::from(tmp);
    match std::fs::remove_file(&tmp) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(err(e)),
        _ => {}
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(err)?;
    f.write_all(key.to_pem().as_bytes()).map_err(err)?;
    f.sync_all().map_err(err)?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(err)?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(err)
}

/// The device key at `path`: read it if it exists, else make one and write it (0600) before
/// anything is sent, so a retried or pending enrollment presents the same key.
///
/// # Errors
/// An unreadable or unusable key file (never replaced), or a failed write.
pub fn load_or_create_key(path: &Path) -> Result<DeviceKey, EnrollError> {
    match read_capped(path, MAX_PEM_BYTES) {
        Ok(bytes) => DeviceKey::from_pem(&bytes).map_err(|r| key_err(path, r)),
        Err(crate::config::CappedReadError::Io(e)) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = DeviceKey::generate().map_err(|r| key_err(path, r))?;
            write_key_file(path, &key)?;
            Ok(key)
        }
        Err(crate::config::CappedReadError::TooLarge) => Err(key_err(path, "too large")),
        Err(crate::config::CappedReadError::Io(e)) => Err(key_err(path, e.to_string())),
    }
}

// ---------------------------------------------------------------------------------------------
// Trust and the issued certificate

/// The CA certificates (DER) of the PEM file `path`, checked against `pin` (a SHA-256
/// fingerprint one of them must have) when given.
///
/// # Errors
/// A missing, unreadable or empty file, or no certificate with the pinned fingerprint.
pub fn trusted_cas(path: &Path, pin: Option<&[u8; 32]>) -> Result<Vec<Vec<u8>>, EnrollError> {
    let err = |reason: String| EnrollError::Ca {
        path: path.display().to_string(),
        reason,
    };
    let bytes = read_capped(path, MAX_PEM_BYTES).map_err(|e| match e {
        crate::config::CappedReadError::TooLarge => err("too large".into()),
        crate::config::CappedReadError::Io(e) => err(format!(
            "{e} (the CA that issued the server's certificate must be on the device to enroll)"
        )),
    })?;
    let cas: Vec<Vec<u8>> = CertificateDer::pem_slice_iter(&bytes)
        .filter_map(Result::ok)
        .map(|c| c.as_ref().to_vec())
        .collect();
    if cas.is_empty() {
        return Err(err("no CERTIFICATE in the PEM".into()));
    }
    if let Some(pin) = pin
        && !cas.iter().any(|c| fingerprint(c) == *pin)
    {
        return Err(err(format!(
            "no certificate with the pinned fingerprint sha256:{}",
            hex(pin)
        )));
    }
    Ok(cas)
}

/// Checks an issued certificate: it carries `key`'s public key, chains to `ca` (as the trust
/// anchor, for client authentication, at `now`). Returns its validity.
///
/// # Errors
/// [`EnrollError::Certificate`] saying what is wrong.
pub fn check_issued(
    cert_der: &[u8],
    ca_der: &[u8],
    key: &DeviceKey,
    now: u64,
) -> Result<CertInfo, EnrollError> {
    let bad = |r: String| EnrollError::Certificate(r);
    let info = cert_info(cert_der).ok_or_else(|| bad("not a DER certificate".into()))?;
    if info.public_key != key.public_key() {
        return Err(bad("it does not carry the device's key".into()));
    }
    let ca = CertificateDer::from(ca_der);
    let anchor = webpki::anchor_from_trusted_cert(&ca).map_err(|e| bad(format!("CA: {e}")))?;
    let cert = CertificateDer::from(cert_der);
    let ee = webpki::EndEntityCert::try_from(&cert).map_err(|e| bad(e.to_string()))?;
    ee.verify_for_usage(
        crate::net::client::SIGNATURE_ALGORITHMS.all,
        &[anchor],
        &[],
        UnixTime::since_unix_epoch(std::time::Duration::from_secs(now)),
        webpki::KeyUsage::client_auth(),
        None,
        None,
    )
    .map_err(|e| bad(format!("does not chain to the CA given with it: {e:?}")))?;
    Ok(info)
}

/// The expiry of the certificate in the PEM file `path`, unix seconds; `None` when the file
/// is missing or holds no readable certificate.
#[must_use]
pub fn certificate_not_after(path: &Path) -> Option<i64> {
    let bytes = read_capped(path, MAX_PEM_BYTES).ok()?;
    let der = CertificateDer::from_pem_slice(&bytes).ok()?;
    cert_info(der.as_ref()).map(|i| i.not_after)
}

/// Whether a certificate expiring at `not_after` should be renewed at `now`: within the last
/// `before_secs` of its life (or expired).
#[must_use]
pub fn renewal_due(not_after: i64, now: i64, before_secs: u64) -> bool {
    now >= not_after.saturating_sub(i64::try_from(before_secs).unwrap_or(i64::MAX))
}

/// Now, unix seconds.
#[must_use]
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Stores an issued certificate after [`check_issued`]; when its CA is one `trusted` already
/// held for the server, `tls.ca` becomes exactly that CA (pinned from now on).
fn install(
    config: &DeviceConfig,
    key: &DeviceKey,
    certificate: &str,
    ca: &str,
    trusted: &[Vec<u8>],
) -> Result<CertInfo, EnrollError> {
    let cert_der = CertificateDer::from_pem_slice(certificate.as_bytes())
        .map_err(|e| EnrollError::Certificate(format!("not PEM: {e}")))?;
    let ca_der = CertificateDer::from_pem_slice(ca.as_bytes())
        .map_err(|e| EnrollError::Certificate(format!("CA not PEM: {e}")))?;
    let info = check_issued(cert_der.as_ref(), ca_der.as_ref(), key, unix_now())?;
    let write = |path: &Path, bytes: &[u8]| {
        write_atomic(&mut RealIo::new(), path, bytes).map_err(|source| EnrollError::Write {
            path: path.display().to_string(),
            source,
        })
    };
    write(
        &config.tls.cert,
        pem("CERTIFICATE", cert_der.as_ref()).as_bytes(),
    )?;
    if trusted.iter().any(|t| t.as_slice() == ca_der.as_ref()) {
        write(
            &config.tls.ca,
            pem("CERTIFICATE", ca_der.as_ref()).as_bytes(),
        )?;
    }
    Ok(info)
}

// ---------------------------------------------------------------------------------------------
// The requests

/// What the device presents at enrollment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnrollFacts {
    /// Boot MAC.
    pub mac: Mac,
    /// Serial number.
    pub serial: Option<String>,
    /// One-time token.
    pub token: Option<String>,
}

/// Where an enrollment stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EnrollStep {
    /// A certificate is installed.
    Issued {
        /// The device id.
        device_id: i64,
        /// Its expiry, unix seconds.
        not_after: i64,
    },
    /// The server waits for an operator to approve the machine.
    Pending {
        /// The device id.
        device_id: i64,
    },
}

/// The common name put in CSRs (the server ignores it and names the device itself).
const CSR_COMMON_NAME: &str = "tugboot-agent";

fn answer(url: &str, status: u16, body: &[u8]) -> Result<Enrolled, EnrollError> {
    if status != 200 && status != 202 {
        return Err(EnrollError::Refused(NetError::Status {
            url: url.to_owned(),
            status,
            reason: ErrorBody::reason(body),
        }));
    }
    EnrollResponse::parse(body).map_err(|e| EnrollError::Protocol {
        url: url.to_owned(),
        reason: e.to_string(),
    })
}

/// One enrollment attempt: the key (made and stored first if there is none), a CSR, `POST
/// /api/v1/enroll` over TLS that trusts only `tls.ca` (pinned by `pin` if given), and, once
/// issued, the certificate stored after [`check_issued`].
///
/// # Errors
/// See [`EnrollError`]; a refusal keeps the server's reason.
pub fn enroll_once(
    config: &DeviceConfig,
    facts: &EnrollFacts,
    pin: Option<&[u8; 32]>,
    timeouts: crate::net::client::Timeouts,
) -> Result<EnrollStep, EnrollError> {
    let trusted = trusted_cas(&config.tls.ca, pin)?;
    let ca_pem: String = trusted.iter().map(|c| pem("CERTIFICATE", c)).collect();
    let identity = crate::net::TlsIdentity::ca_only(ca_pem.as_bytes())?;
    let client = HttpClient::new(&config.server, Some(&identity), timeouts);
    let key = load_or_create_key(&config.tls.key)?;
    let request = EnrollRequest {
        csr: key
            .csr_pem(CSR_COMMON_NAME)
            .map_err(|r| key_err(&config.tls.key, r))?,
        mac: facts.mac.to_string(),
        serial: facts.serial.clone(),
        token: facts.token.clone(),
    };
    let body = serde_json::to_vec(&request).unwrap_or_default();
    let (url, status, resp) = client.post_json(
        ENROLL_PATH,
        &body,
        tugboot_wire::device::MAX_ENROLL_RESPONSE_BYTES,
    )?;
    match answer(&url, status, &resp)? {
        Enrolled::Pending { device_id } => Ok(EnrollStep::Pending { device_id }),
        Enrolled::Issued {
            device_id,
            certificate,
            ca,
            ..
        } => {
            let info = install(config, &key, &certificate, &ca, &trusted)?;
            Ok(EnrollStep::Issued {
                device_id,
                not_after: info.not_after,
            })
        }
    }
}

/// One renewal: a CSR for the device key, `POST /api/v1/device/renew` with `client` (mutual
/// TLS with the current certificate), the new certificate stored after [`check_issued`].
///
/// # Errors
/// See [`EnrollError`]; outside the server's renewal window it answers `409` (kept).
pub fn renew_once(config: &DeviceConfig, client: &HttpClient) -> Result<EnrollStep, EnrollError> {
    let bytes = read_capped(&config.tls.key, MAX_PEM_BYTES)
        .map_err(|_| key_err(&config.tls.key, "unreadable"))?;
    let key = DeviceKey::from_pem(&bytes).map_err(|r| key_err(&config.tls.key, r))?;
    let trusted = trusted_cas(&config.tls.ca, None)?;
    let request = RenewRequest {
        csr: key
            .csr_pem(CSR_COMMON_NAME)
            .map_err(|r| key_err(&config.tls.key, r))?,
    };
    let body = serde_json::to_vec(&request).unwrap_or_default();
    let (url, status, resp) = client.post_json(
        RENEW_PATH,
        &body,
        tugboot_wire::device::MAX_ENROLL_RESPONSE_BYTES,
    )?;
    match answer(&url, status, &resp)? {
        Enrolled::Pending { device_id } => Ok(EnrollStep::Pending { device_id }),
        Enrolled::Issued {
            device_id,
            certificate,
            ca,
            ..
        } => {
            let info = install(config, &key, &certificate, &ca, &trusted)?;
            Ok(EnrollStep::Issued {
                device_id,
                not_after: info.not_after,
            })
        }
    }
}

/// Backoff while enrollment is pending: 10 s, 20 s, 40 s, … capped at `max`.
#[must_use]
pub fn pending_backoff(attempt: u32, max: std::time::Duration) -> std::time::Duration {
    let secs = 10u64.saturating_mul(1u64 << attempt.min(16));
    std::time::Duration::from_secs(secs).min(max)
}

/// The entry of the `device_cert` fuzz target and its seed test: certificate and PEM parsing
/// of untrusted bytes never panics.
pub fn fuzz_certificate(data: &[u8]) {
    let _ = cert_info(data);
    if let Ok(der) = CertificateDer::from_pem_slice(data) {
        let _ = cert_info(der.as_ref());
    }
    let _ = DeviceKey::from_pem(data);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn der_lengths() {
        assert_eq!(tlv(0x04, &[]), [0x04, 0x00]);
        assert_eq!(tlv(0x04, &[7; 127])[..2], [0x04, 0x7f]);
        assert_eq!(tlv(0x04, &[7; 128])[..3], [0x04, 0x81, 0x80]);
        assert_eq!(tlv(0x04, &[7; 300])[..4], [0x04, 0x82, 0x01, 0x2c]);
        let mut r = Der::new(&[0x30, 0x82, 0x01]);
        assert_eq!(r.next(), None, "truncated length");
        let mut r = Der::new(&[0x30, 0x85, 1, 0, 0, 0, 0]);
        assert_eq!(r.next(), None, "length too long");
    }

    #[test]
    fn times() {
        assert_eq!(der_time((0x17, b"700101000000Z")), Some(0));
        assert_eq!(der_time((0x17, b"491231235959Z")), Some(2_524_607_999));
        assert_eq!(der_time((0x18, b"20380119031408Z")), Some(2_147_483_648));
        assert_eq!(der_time((0x18, b"99991231235959Z")), Some(253_402_300_799));
        for bad in [
            (0x17, &b"7001010000Z"[..]),
            (0x17, b"701301000000Z"),
            (0x17, b"700101000000+"),
            (0x18, b"2038011903140Z"),
            (0x04, b"700101000000Z"),
            (0x17, b"70010100000-Z"),
        ] {
            assert_eq!(der_time(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn pem_is_base64_in_lines() {
        assert_eq!(pem("X", b""), "-----BEGIN X-----\n-----END X-----\n");
        assert_eq!(
            pem("X", b"foob"),
            "-----BEGIN X-----\nZm9vYg==\n-----END X-----\n"
        );
        let long = pem("X", &[0xff; 100]);
        assert!(long.lines().all(|l| l.len() <= 64));
    }

    #[test]
    fn renewal_window() {
        assert!(!renewal_due(1000, 100, 500));
        assert!(renewal_due(1000, 500, 500));
        assert!(renewal_due(1000, 2000, 500));
        assert!(renewal_due(i64::MIN, 0, u64::MAX));
        assert_eq!(
            pending_backoff(0, std::time::Duration::from_secs(300)).as_secs(),
            10
        );
        assert_eq!(
            pending_backoff(3, std::time::Duration::from_secs(300)).as_secs(),
            80
        );
        assert_eq!(
            pending_backoff(40, std::time::Duration::from_secs(300)).as_secs(),
            300
        );
    }

    #[test]
    fn key_and_csr() {
        let key = DeviceKey::generate().unwrap();
        assert_eq!(key.public_key().len(), 65);
        let again = DeviceKey::from_pem(key.to_pem().as_bytes()).unwrap();
        assert_eq!(again.public_key(), key.public_key());
        let csr = key.csr_der("tugboot-agent").unwrap();
        // The request's public key is the key's.
        let mut outer = Der::new(&csr);
        let mut body = Der::new(outer.expect(0x30).unwrap());
        let mut info = Der::new(body.expect(0x30).unwrap());
        assert_eq!(info.expect(0x02), Some(&[0u8][..]));
        info.expect(0x30).unwrap();
        let mut spki = Der::new(info.expect(0x30).unwrap());
        spki.expect(0x30).unwrap();
        assert_eq!(&spki.expect(0x03).unwrap()[1..], key.public_key());
        assert!(
            DeviceKey::from_pem(b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
                .is_err()
        );
    }
}
