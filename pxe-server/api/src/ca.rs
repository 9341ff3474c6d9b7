//! The built-in certificate authority: one ECDSA P-256 CA per tugboot installation that issues
//! the device certificates (from a CSR sent at enrollment) and the API server's certificate.
//!
//! Why P-256 rather than ed25519: rustls/webpki verify both, but P-256 is what every TLS stack a
//! device may carry (OpenSSL builds, mbedTLS, BoringSSL, hardware secure elements and TPMs)
//! handles, while ed25519 certificates are still refused by some of them.
//!
//! A device's identity is carried twice in its certificate: the URI SAN
//! `urn:tugboot:device:<id>` (what the server trusts, see [`peer_identity`]) and the subject CN
//! `device-<id>` (for humans reading logs). Whatever the CSR asks for (names, extensions,
//! validity) is ignored: only its public key is used, after its self-signature checked out.
//!
//! No clock in here: every function that needs the time takes `now` (unix seconds).

use std::fs;
use std::io::Write as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256,
    SanType, SerialNumber,
};
use rustls::pki_types::CertificateDer;
use tugboot_store::MachineId;

/// Prefix of the URI SAN that names a device.
pub const DEVICE_URI_PREFIX: &str = "urn:tugboot:device:";
/// Largest CSR accepted (PEM text), checked before parsing.
pub const MAX_CSR_BYTES: usize = 16 * 1024;
/// Largest PEM file read from disk (CA key or certificate), checked before parsing.
pub const MAX_PEM_FILE_BYTES: usize = 64 * 1024;
/// Default validity of a device certificate: 90 days.
pub const DEFAULT_DEVICE_VALIDITY_SECS: u64 = 90 * 24 * 3600;
/// Default validity of the CA: 10 years.
pub const DEFAULT_CA_VALIDITY_SECS: u64 = 10 * 365 * 24 * 3600;
/// Default validity of the API server certificate: 1 year.
pub const DEFAULT_SERVER_VALIDITY_SECS: u64 = 365 * 24 * 3600;
/// Certificates are back-dated this much so that devices with a slightly late clock accept them.
pub const BACKDATE_SECS: i64 = 300;

/// File names inside the CA directory.
const KEY_FILE: &str = "ca.key";
const CERT_FILE: &str = "ca.pem";

/// Errors of the certificate authority.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CaError {
    /// A file could not be read or written.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// Which file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// `ca init` on a directory that already holds a CA.
    #[error("{0} already holds a CA; refusing to overwrite it")]
    AlreadyExists(PathBuf),
    /// The CA key file is readable by group or others.
    #[error("{0}: CA key must not be readable by group or others (chmod 600)")]
    KeyPermissions(PathBuf),
    /// A file or CSR is larger than its cap.
    #[error("{what}: {size} bytes, at most {limit}")]
    TooLarge {
        /// What was too large.
        what: &'static str,
        /// Its size.
        size: usize,
        /// The cap.
        limit: usize,
    },
    /// The CSR does not parse or its signature does not verify.
    #[error("certificate signing request refused: {0}")]
    BadCsr(String),
    /// A certificate does not carry a usable tugboot device identity.
    #[error("certificate has no usable device identity: {0}")]
    NoIdentity(String),
    /// A time does not fit a certificate.
    #[error("time out of range: {0}")]
    Time(String),
    /// rcgen refused to build or sign a certificate.
    #[error("certificate generation: {0}")]
    Rcgen(#[from] rcgen::Error),
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> CaError + 'a {
    move |source| CaError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

fn offset_time(unix: i64) -> Result<time::OffsetDateTime, CaError> {
    time::OffsetDateTime::from_unix_timestamp(unix).map_err(|e| CaError::Time(e.to_string()))
}

fn add_secs(now: i64, secs: u64) -> Result<i64, CaError> {
    i64::try_from(secs)
        .ok()
        .and_then(|s| now.checked_add(s))
        .ok_or_else(|| CaError::Time(format!("{now} + {secs}s")))
}

/// A certificate just issued.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedCert {
    /// PEM of the certificate.
    pub pem: String,
    /// DER of the certificate.
    pub der: Vec<u8>,
    /// Serial number, lowercase hex (the key of `device_certs` in the store).
    pub serial: String,
    /// `notBefore`, unix seconds.
    pub not_before: i64,
    /// `notAfter`, unix seconds.
    pub not_after: i64,
}

/// A server certificate with its freshly generated private key.
#[derive(Debug, Clone)]
pub struct ServerCert {
    /// PEM of the certificate.
    pub cert_pem: String,
    /// PEM (PKCS#8) of the private key.
    pub key_pem: String,
}

/// Who a verified client certificate says the peer is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerIdentity {
    /// The device id from the URI SAN.
    pub device: MachineId,
    /// Certificate serial, lowercase hex.
    pub serial: String,
    /// `notAfter`, unix seconds.
    pub not_after: i64,
}

/// The CA: its key and certificate.
pub struct CertAuthority {
    key: KeyPair,
    /// Parameters rebuilt from the stored certificate: the issuer name and key identifier used
    /// when signing (the signature itself is made with `key`).
    issuer: rcgen::Certificate,
    cert_pem: String,
    cert_der: CertificateDer<'static>,
}

impl std::fmt::Debug for CertAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertAuthority")
            .field("cert_der_len", &self.cert_der.len())
            .finish_non_exhaustive()
    }
}

/// A random positive serial of 16 bytes (the first byte in 0x01..=0x7f, so the DER INTEGER
/// needs neither a sign byte nor loses a leading zero: the hex round-trips exactly).
fn random_serial() -> Result<SerialNumber, CaError> {
    let mut bytes = [0u8; 16];
    getrandom::getrandom(&mut bytes).map_err(|e| CaError::Io {
        op: "getrandom",
        path: PathBuf::new(),
        source: std::io::Error::other(e.to_string()),
    })?;
    bytes[0] = (bytes[0] & 0x7f).max(1);
    Ok(SerialNumber::from_slice(&bytes))
}

impl CertAuthority {
    /// Creates a new CA in memory (ECDSA P-256, self-signed, `pathlen:0`).
    ///
    /// # Errors
    /// [`CaError::Rcgen`], [`CaError::Time`].
    pub fn generate(common_name: &str, now: i64, validity_secs: u64) -> Result<Self, CaError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, common_name);
        dn.push(DnType::OrganizationName, "tugboot");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.serial_number = Some(random_serial()?);
        params.not_before = offset_time(now - BACKDATE_SECS)?;
        params.not_after = offset_time(add_secs(now, validity_secs)?)?;
        let cert = params.self_signed(&key)?;
        let cert_pem = cert.pem();
        Self::from_parts(key, &cert_pem)
    }

    fn from_parts(key: KeyPair, cert_pem: &str) -> Result<Self, CaError> {
        let params = CertificateParams::from_ca_cert_pem(cert_pem)?;
        let der = pem_to_der(cert_pem, "CERTIFICATE")
            .ok_or_else(|| CaError::NoIdentity("CA PEM holds no certificate".into()))?;
        let issuer = params.self_signed(&key)?;
        Ok(Self {
            key,
            issuer,
            cert_pem: cert_pem.to_owned(),
            cert_der: CertificateDer::from(der),
        })
    }

    /// `tugboot ca init`: creates a CA and writes `ca.key` (mode 0600, created exclusively) and
    /// `ca.pem` into `dir`. Refuses to overwrite an existing CA.
    ///
    /// # Errors
    /// [`CaError::AlreadyExists`], file errors, generation errors.
    pub fn init(
        dir: &Path,
        common_name: &str,
        now: i64,
        validity_secs: u64,
    ) -> Result<Self, CaError> {
        fs::create_dir_all(dir).map_err(io_err("create", dir))?;
        let key_path = dir.join(KEY_FILE);
        if key_path.exists() || dir.join(CERT_FILE).exists() {
            return Err(CaError::AlreadyExists(dir.to_path_buf()));
        }
        let ca = Self::generate(common_name, now, validity_secs)?;
        ca.save(dir)?;
        Ok(ca)
    }

    /// Writes the key (0600, never overwriting) and the certificate, each fsynced.
    ///
    /// # Errors
    /// File errors; [`CaError::AlreadyExists`] if a key file is there.
    pub fn save(&self, dir: &Path) -> Result<(), CaError> {
        let key_path = dir.join(KEY_FILE);
        let mut opts = fs::OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt as _;
            opts.mode(0o600);
        }
        let mut f = opts.open(&key_path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                CaError::AlreadyExists(dir.to_path_buf())
            } else {
                CaError::Io {
                    op: "create",
                    path: key_path.clone(),
                    source: e,
                }
            }
        })?;
        f.write_all(self.key.serialize_pem().as_bytes())
            .and_then(|()| f.sync_all())
            .map_err(io_err("write", &key_path))?;
        write_synced(&dir.join(CERT_FILE), self.cert_pem.as_bytes())?;
        if let Ok(d) = fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    }

    /// Loads the CA written by [`CertAuthority::init`]. Refuses a key file readable by group or
    /// others.
    ///
    /// # Errors
    /// File errors, [`CaError::KeyPermissions`], parse errors.
    pub fn load(dir: &Path) -> Result<Self, CaError> {
        let key_path = dir.join(KEY_FILE);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let meta = fs::metadata(&key_path).map_err(io_err("stat", &key_path))?;
            if meta.permissions().mode() & 0o077 != 0 {
                return Err(CaError::KeyPermissions(key_path));
            }
        }
        let key_pem = read_capped(&key_path)?;
        let cert_pem = read_capped(&dir.join(CERT_FILE))?;
        let key = KeyPair::from_pem(&key_pem)?;
        Self::from_parts(key, &cert_pem)
    }

    /// PEM of the CA certificate (what devices pin, and the only root of the client verifier).
    #[must_use]
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// DER of the CA certificate.
    #[must_use]
    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    /// Issues a device certificate for the public key of `csr_pem`, valid from `not_before` to
    /// `now + validity_secs`. Only the CSR's key is used (after its signature verified); the
    /// identity comes from `device`.
    ///
    /// # Errors
    /// [`CaError::TooLarge`], [`CaError::BadCsr`], generation errors.
    pub fn issue_device(
        &self,
        csr_pem: &str,
        device: MachineId,
        now: i64,
        validity_secs: u64,
    ) -> Result<IssuedCert, CaError> {
        self.issue_device_between(
            csr_pem,
            device,
            now - BACKDATE_SECS,
            add_secs(now, validity_secs)?,
        )
    }

    /// Like [`CertAuthority::issue_device`] with explicit validity bounds (tests issue expired
    /// certificates with it).
    ///
    /// # Errors
    /// As [`CertAuthority::issue_device`].
    pub fn issue_device_between(
        &self,
        csr_pem: &str,
        device: MachineId,
        not_before: i64,
        not_after: i64,
    ) -> Result<IssuedCert, CaError> {
        if csr_pem.len() > MAX_CSR_BYTES {
            return Err(CaError::TooLarge {
                what: "CSR",
                size: csr_pem.len(),
                limit: MAX_CSR_BYTES,
            });
        }
        if device.0 <= 0 {
            return Err(CaError::NoIdentity(format!("device id {device}")));
        }
        let csr = CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| CaError::BadCsr(e.to_string()))?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, format!("device-{device}"));
        params.distinguished_name = dn;
        let uri = format!("{DEVICE_URI_PREFIX}{device}");
        params.subject_alt_names = vec![SanType::URI(
            uri.try_into()
                .map_err(|e: rcgen::Error| CaError::Rcgen(e))?,
        )];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        let serial = random_serial()?;
        let serial_hex = hex::encode(serial.to_bytes());
        params.serial_number = Some(serial);
        params.not_before = offset_time(not_before)?;
        params.not_after = offset_time(not_after)?;
        let cert = params.signed_by(&csr.public_key, &self.issuer, &self.key)?;
        Ok(IssuedCert {
            pem: cert.pem(),
            der: cert.der().to_vec(),
            serial: serial_hex,
            not_before,
            not_after,
        })
    }

    /// Issues the API server's certificate for `names` (DNS names and/or IP addresses) with a
    /// new P-256 key.
    ///
    /// # Errors
    /// Generation errors; [`CaError::NoIdentity`] for an empty name list.
    pub fn issue_server(
        &self,
        names: &[String],
        now: i64,
        validity_secs: u64,
    ) -> Result<ServerCert, CaError> {
        let first = names
            .first()
            .ok_or_else(|| CaError::NoIdentity("a server certificate needs a name".into()))?;
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, first.as_str());
        params.distinguished_name = dn;
        let mut sans = Vec::with_capacity(names.len());
        for name in names {
            sans.push(match name.parse::<IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName(name.as_str().try_into()?),
            });
        }
        params.subject_alt_names = sans;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(random_serial()?);
        params.not_before = offset_time(now - BACKDATE_SECS)?;
        params.not_after = offset_time(add_secs(now, validity_secs)?)?;
        let cert = params.signed_by(&key, &self.issuer, &self.key)?;
        Ok(ServerCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

/// Checks a CSR (size cap, PEM, DER, self-signature) without issuing anything: enrollment
/// refuses a bad CSR before it touches tokens or the store.
///
/// # Errors
/// [`CaError::TooLarge`], [`CaError::BadCsr`].
pub fn check_csr(csr_pem: &str) -> Result<(), CaError> {
    if csr_pem.len() > MAX_CSR_BYTES {
        return Err(CaError::TooLarge {
            what: "CSR",
            size: csr_pem.len(),
            limit: MAX_CSR_BYTES,
        });
    }
    CertificateSigningRequestParams::from_pem(csr_pem)
        .map(|_| ())
        .map_err(|e| CaError::BadCsr(e.to_string()))
}

/// SHA-256 (lowercase hex) of the public key of a CSR whose self-signature verifies: what the
/// store keys enrollments by, so that one key is certified for one enrolled device and a
/// replayed CSR gets no second certificate.
///
/// # Errors
/// [`CaError::TooLarge`], [`CaError::BadCsr`].
pub fn csr_key_sha256(csr_pem: &str) -> Result<String, CaError> {
    use rcgen::PublicKeyData as _;
    use sha2::Digest as _;
    if csr_pem.len() > MAX_CSR_BYTES {
        return Err(CaError::TooLarge {
            what: "CSR",
            size: csr_pem.len(),
            limit: MAX_CSR_BYTES,
        });
    }
    let csr = CertificateSigningRequestParams::from_pem(csr_pem)
        .map_err(|e| CaError::BadCsr(e.to_string()))?;
    Ok(hex::encode(sha2::Sha256::digest(
        csr.public_key.der_bytes(),
    )))
}

/// File names of the API server's certificate and key (in the API state directory).
pub const SERVER_CERT_FILE: &str = "server.pem";
/// See [`SERVER_CERT_FILE`].
pub const SERVER_KEY_FILE: &str = "server.key";

/// Writes `file` in `dir` through a temporary file created (exclusively) with `mode`, written
/// and fsynced, then renamed over `file`: a reader sees the old content or the new, never part.
fn write_replacing(dir: &Path, file: &str, data: &[u8], mode: u32) -> Result<(), CaError> {
    let tmp = dir.join(format!(".{file}.tmp"));
    let path = dir.join(file);
    // A temporary file left by a crash is ours and incomplete.
    match fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err("remove", &tmp)(e)),
    }
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        opts.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    let mut f = opts.open(&tmp).map_err(io_err("create", &tmp))?;
    f.write_all(data)
        .and_then(|()| f.sync_all())
        .map_err(io_err("write", &tmp))?;
    drop(f);
    fs::rename(&tmp, &path).map_err(io_err("rename", &path))
}

/// Writes the API server's key and certificate as a pair a crash cannot leave mismatched in
/// a way that goes unnoticed: each goes through a temporary file created with its final mode
/// (the key 0600 from its creation, never readable by others even for a moment), fsynced and
/// renamed over the old one, the key first; then the directory is fsynced. A crash between
/// the two renames leaves the new key beside the old certificate, which
/// [`load_server_pair`] detects (the certificate does not carry the key's public key), so the
/// next start issues a new pair.
///
/// # Errors
/// File errors.
pub fn write_server_pair(dir: &Path, pair: &ServerCert) -> Result<(), CaError> {
    fs::create_dir_all(dir).map_err(io_err("create", dir))?;
    write_replacing(dir, SERVER_KEY_FILE, pair.key_pem.as_bytes(), 0o600)?;
    write_replacing(dir, SERVER_CERT_FILE, pair.cert_pem.as_bytes(), 0o644)?;
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("sync", dir))
}

/// The API server's certificate and key from `dir` with the certificate's `notAfter`, if both
/// are there and belong together (the certificate carries the key's public key); `None`
/// otherwise (missing, unparsable or torn by a crash: the caller issues a new pair).
///
/// # Errors
/// [`CaError::KeyPermissions`] for a key readable by group or others; read errors other than
/// a missing file.
pub fn load_server_pair(dir: &Path) -> Result<Option<(ServerCert, i64)>, CaError> {
    use rcgen::PublicKeyData as _;
    let key_path = dir.join(SERVER_KEY_FILE);
    let cert_path = dir.join(SERVER_CERT_FILE);
    let meta = match fs::metadata(&key_path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err("stat", &key_path)(e)),
    };
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        if meta.permissions().mode() & 0o077 != 0 {
            return Err(CaError::KeyPermissions(key_path));
        }
    }
    #[cfg(not(unix))]
    let _ = meta;
    if !cert_path.exists() {
        return Ok(None);
    }
    let key_pem = read_capped(&key_path)?;
    let cert_pem = read_capped(&cert_path)?;
    let Ok(key) = KeyPair::from_pem(&key_pem) else {
        return Ok(None);
    };
    let Some(der) = pem_to_der(&cert_pem, "CERTIFICATE") else {
        return Ok(None);
    };
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(&der) else {
        return Ok(None);
    };
    if cert.public_key().subject_public_key.data.as_ref() != key.der_bytes() {
        return Ok(None);
    }
    let not_after = cert.validity().not_after.timestamp();
    Ok(Some((ServerCert { cert_pem, key_pem }, not_after)))
}

/// True when a certificate expiring at `not_after` should be renewed at `now`: within the
/// last `renew_before_secs` of its life (or already expired).
#[must_use]
pub fn needs_renewal(not_after: i64, now: i64, renew_before_secs: u64) -> bool {
    let margin = i64::try_from(renew_before_secs).unwrap_or(i64::MAX);
    now >= not_after.saturating_sub(margin)
}

/// Reads the device identity out of a (TLS-verified) certificate: exactly one URI SAN
/// `urn:tugboot:device:<id>` with a positive decimal id. Anything else is refused: a
/// certificate naming two devices, or none, identifies nobody.
///
/// # Errors
/// [`CaError::NoIdentity`].
pub fn peer_identity(der: &[u8]) -> Result<PeerIdentity, CaError> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| CaError::NoIdentity(format!("unparsable certificate: {e}")))?;
    let san = cert
        .subject_alternative_name()
        .map_err(|e| CaError::NoIdentity(format!("bad subjectAltName: {e}")))?
        .ok_or_else(|| CaError::NoIdentity("no subjectAltName".into()))?;
    let mut found = None;
    for name in &san.value.general_names {
        if let x509_parser::extensions::GeneralName::URI(uri) = name
            && let Some(id) = uri.strip_prefix(DEVICE_URI_PREFIX)
        {
            if found.is_some() {
                return Err(CaError::NoIdentity("several device URIs".into()));
            }
            found = Some(parse_device_id(id)?);
        }
    }
    let device = found.ok_or_else(|| CaError::NoIdentity("no device URI".into()))?;
    Ok(PeerIdentity {
        device,
        serial: hex::encode(cert.raw_serial()),
        not_after: cert.validity().not_after.timestamp(),
    })
}

/// A device id as written in URIs and URLs: a positive decimal integer without sign or leading
/// zeros, so each id has exactly one spelling.
///
/// # Errors
/// [`CaError::NoIdentity`].
pub fn parse_device_id(text: &str) -> Result<MachineId, CaError> {
    let ok = !text.is_empty()
        && text.len() <= 18
        && text.bytes().all(|b| b.is_ascii_digit())
        && !text.starts_with('0');
    let id = ok.then(|| text.parse::<i64>().ok()).flatten();
    id.map(MachineId)
        .ok_or_else(|| CaError::NoIdentity(format!("bad device id {text:?}")))
}

fn read_capped(path: &Path) -> Result<String, CaError> {
    let meta = fs::metadata(path).map_err(io_err("stat", path))?;
    let size = usize::try_from(meta.len()).unwrap_or(usize::MAX);
    if size > MAX_PEM_FILE_BYTES {
        return Err(CaError::TooLarge {
            what: "PEM file",
            size,
            limit: MAX_PEM_FILE_BYTES,
        });
    }
    fs::read_to_string(path).map_err(io_err("read", path))
}

fn write_synced(path: &Path, data: &[u8]) -> Result<(), CaError> {
    let mut f = fs::File::create(path).map_err(io_err("create", path))?;
    f.write_all(data)
        .and_then(|()| f.sync_all())
        .map_err(io_err("write", path))
}

/// The DER of the first PEM block labelled `label`.
pub(crate) fn pem_to_der(pem: &str, label: &str) -> Option<Vec<u8>> {
    use base64::Engine as _;
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let start = pem.find(&begin)? + begin.len();
    let stop = start + pem[start..].find(&end)?;
    let body: String = pem[start..stop]
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    base64::engine::general_purpose::STANDARD.decode(body).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_780_272_000;

    fn csr() -> (KeyPair, String) {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = CertificateParams::new(vec!["evil.example".to_owned()]).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, "device-1");
        let pem = params.serialize_request(&key).unwrap().pem().unwrap();
        (key, pem)
    }

    #[test]
    fn issued_device_cert_carries_identity_not_csr_names() {
        let ca = CertAuthority::generate("test CA", NOW, DEFAULT_CA_VALIDITY_SECS).unwrap();
        let (_, pem) = csr();
        let cert = ca
            .issue_device(&pem, MachineId(42), NOW, DEFAULT_DEVICE_VALIDITY_SECS)
            .unwrap();
        let id = peer_identity(&cert.der).unwrap();
        assert_eq!(id.device, MachineId(42));
        assert_eq!(id.serial, cert.serial);
        assert_eq!(cert.serial.len(), 32);
        assert_eq!(id.not_after, NOW + 90 * 24 * 3600);
        let (_, parsed) = x509_parser::parse_x509_certificate(&cert.der).unwrap();
        let names = parsed.subject_alternative_name().unwrap().unwrap();
        assert_eq!(names.value.general_names.len(), 1, "CSR's DNS name dropped");
        let cn = parsed.subject().iter_common_name().next().unwrap();
        assert_eq!(cn.as_str().unwrap(), "device-42");
        assert!(!parsed.is_ca());
    }

    #[test]
    fn tampered_or_oversized_csr_is_refused() {
        let ca = CertAuthority::generate("test CA", NOW, DEFAULT_CA_VALIDITY_SECS).unwrap();
        let (_, pem) = csr();
        let der = pem_to_der(&pem, "CERTIFICATE REQUEST").unwrap();
        let mut bad = der.clone();
        let last = bad.len() - 10;
        bad[last] ^= 0x40;
        use base64::Engine as _;
        let bad_pem = format!(
            "-----BEGIN CERTIFICATE REQUEST-----\n{}\n-----END CERTIFICATE REQUEST-----\n",
            base64::engine::general_purpose::STANDARD.encode(&bad)
        );
        assert!(matches!(
            ca.issue_device(&bad_pem, MachineId(1), NOW, 60),
            Err(CaError::BadCsr(_))
        ));
        assert!(matches!(
            ca.issue_device("garbage", MachineId(1), NOW, 60),
            Err(CaError::BadCsr(_))
        ));
        let huge = "A".repeat(MAX_CSR_BYTES + 1);
        assert!(matches!(
            ca.issue_device(&huge, MachineId(1), NOW, 60),
            Err(CaError::TooLarge { .. })
        ));
        assert!(matches!(
            ca.issue_device(&pem, MachineId(0), NOW, 60),
            Err(CaError::NoIdentity(_))
        ));
    }

    #[test]
    fn init_persists_key_0600_and_reloads_to_the_same_issuer() {
        let dir = tempfile::tempdir().unwrap();
        let ca =
            CertAuthority::init(dir.path(), "fleet CA", NOW, DEFAULT_CA_VALIDITY_SECS).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = fs::metadata(dir.path().join(KEY_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        assert!(matches!(
            CertAuthority::init(dir.path(), "again", NOW, 60),
            Err(CaError::AlreadyExists(_))
        ));
        let again = CertAuthority::load(dir.path()).unwrap();
        assert_eq!(again.cert_der(), ca.cert_der());
        // A certificate issued by the reloaded CA verifies against the original root.
        let (_, pem) = csr();
        let cert = again.issue_device(&pem, MachineId(7), NOW, 3600).unwrap();
        let (_, ca_parsed) = x509_parser::parse_x509_certificate(ca.cert_der()).unwrap();
        let (_, leaf) = x509_parser::parse_x509_certificate(&cert.der).unwrap();
        leaf.verify_signature(Some(ca_parsed.public_key())).unwrap();
        assert_eq!(leaf.issuer(), ca_parsed.subject());

        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            fs::set_permissions(dir.path().join(KEY_FILE), fs::Permissions::from_mode(0o644))
                .unwrap();
            assert!(matches!(
                CertAuthority::load(dir.path()),
                Err(CaError::KeyPermissions(_))
            ));
        }
    }

    #[test]
    fn server_cert_names_dns_and_ip() {
        let ca = CertAuthority::generate("test CA", NOW, DEFAULT_CA_VALIDITY_SECS).unwrap();
        let s = ca
            .issue_server(&["api.example".into(), "127.0.0.1".into()], NOW, 3600)
            .unwrap();
        let der = pem_to_der(&s.cert_pem, "CERTIFICATE").unwrap();
        let (_, parsed) = x509_parser::parse_x509_certificate(&der).unwrap();
        let names = parsed.subject_alternative_name().unwrap().unwrap();
        assert_eq!(names.value.general_names.len(), 2);
        assert!(
            peer_identity(&der).is_err(),
            "a server cert names no device"
        );
        assert!(ca.issue_server(&[], NOW, 60).is_err());
    }

    #[test]
    fn server_pair_is_written_atomically_and_checked_on_load() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let ca = CertAuthority::generate("test CA", NOW, DEFAULT_CA_VALIDITY_SECS).unwrap();
        assert!(load_server_pair(dir.path()).unwrap().is_none());
        let first = ca.issue_server(&["a.example".into()], NOW, 3600).unwrap();
        write_server_pair(dir.path(), &first).unwrap();
        let mode = |f: &str| {
            fs::metadata(dir.path().join(f))
                .unwrap()
                .permissions()
                .mode()
                & 0o777
        };
        assert_eq!(mode(SERVER_KEY_FILE), 0o600);
        let (loaded, not_after) = load_server_pair(dir.path()).unwrap().unwrap();
        assert_eq!(loaded.key_pem, first.key_pem);
        assert_eq!(not_after, NOW + 3600);
        // A crash between the two renames: the new key beside the old certificate.
        let second = ca.issue_server(&["a.example".into()], NOW, 3600).unwrap();
        write_replacing(
            dir.path(),
            SERVER_KEY_FILE,
            second.key_pem.as_bytes(),
            0o600,
        )
        .unwrap();
        assert!(
            load_server_pair(dir.path()).unwrap().is_none(),
            "torn pair detected"
        );
        // A stale temporary file from a crash before a rename is replaced, not appended to.
        fs::write(dir.path().join(".server.pem.tmp"), "partial").unwrap();
        write_server_pair(dir.path(), &second).unwrap();
        assert_eq!(
            load_server_pair(dir.path()).unwrap().unwrap().0.cert_pem,
            second.cert_pem
        );
        // An older key file with a loose mode is replaced with 0600, never chmod-ed in place.
        fs::set_permissions(
            dir.path().join(SERVER_KEY_FILE),
            fs::Permissions::from_mode(0o644),
        )
        .unwrap();
        assert!(matches!(
            load_server_pair(dir.path()),
            Err(CaError::KeyPermissions(_))
        ));
        write_server_pair(dir.path(), &first).unwrap();
        assert_eq!(mode(SERVER_KEY_FILE), 0o600);
    }

    #[test]
    fn csr_key_hash_names_the_key() {
        let (key, pem) = csr();
        let again = CertificateParams::new(Vec::<String>::new())
            .unwrap()
            .serialize_request(&key)
            .unwrap()
            .pem()
            .unwrap();
        assert_eq!(
            csr_key_sha256(&pem).unwrap(),
            csr_key_sha256(&again).unwrap()
        );
        let (_, other) = csr();
        assert_ne!(
            csr_key_sha256(&pem).unwrap(),
            csr_key_sha256(&other).unwrap()
        );
        assert!(csr_key_sha256("garbage").is_err());
    }

    #[test]
    fn device_id_has_one_spelling() {
        assert_eq!(parse_device_id("42").unwrap(), MachineId(42));
        for bad in [
            "",
            "0",
            "042",
            "+4",
            "-4",
            "4 ",
            "99999999999999999999",
            "x",
        ] {
            assert!(parse_device_id(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn renewal_window() {
        assert!(!needs_renewal(NOW + 31 * 86_400, NOW, 30 * 86_400));
        assert!(needs_renewal(NOW + 30 * 86_400, NOW, 30 * 86_400));
        assert!(needs_renewal(NOW - 1, NOW, 0));
        assert!(needs_renewal(i64::MIN, NOW, u64::MAX));
    }
}
