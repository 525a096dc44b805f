//! The private certificate authority behind `fluidity certs`: a CA, server and client certificates and a CRL,
//! built with rcgen as PEM values in memory, plus the separate steps that write them to a directory.
//!
//! Does: ECDSA P-256 keys, a CA limited to issuing leaf certificates (pathlen 0), server certificates for
//! DNS names and IP addresses, client certificates named by their CN, revocation into `crl.pem`, and file
//! writing with private keys at mode 0600 (Unix) and no overwriting without `force`. Windows has no mode bits: a
//! file written there takes its folder's ACL, and Fluidity relies on that rather than setting one (which would need
//! Win32 security calls, so unsafe code or a new dependency). The per-user folders keys belong in (`%APPDATA%`,
//! where `fluidity up` writes) are readable only by their user, SYSTEM and Administrators; docs/deploy/windows.md
//! tells people to keep keys there, or how to restrict them with `icacls`.
//! Does not: configure TLS or check certificates for use in a handshake (that is `tls`), log, or run on
//! the async runtime. Key generation is CPU work: call it through `spawn_blocking` from async code.

use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose,
    RevokedCertParams, SanType, SerialNumber,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer};
use time::{Duration, OffsetDateTime};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::ParsedExtension;
use x509_parser::num_bigint::BigUint;

/// Server SANs used when `certs init` is given none.
pub const DEFAULT_SERVER_SANS: [&str; 3] = ["localhost", "127.0.0.1", "::1"];
/// CA certificate file written by [`init_dir`].
pub const CA_CERT_FILE: &str = "ca.crt";
/// CA private key file written by [`init_dir`].
pub const CA_KEY_FILE: &str = "ca.key";
/// Server certificate file written by [`init_dir`].
pub const SERVER_CERT_FILE: &str = "server.crt";
/// Server private key file written by [`init_dir`].
pub const SERVER_KEY_FILE: &str = "server.key";
/// Client certificate file written by [`init_dir`].
pub const CLIENT_CERT_FILE: &str = "client.crt";
/// Client private key file written by [`init_dir`].
pub const CLIENT_KEY_FILE: &str = "client.key";
/// Certificate revocation list maintained by [`revoke`] in the CA directory.
pub const CRL_FILE: &str = "crl.pem";

/// Common name of the CA made by [`init_dir`].
pub(crate) const CA_COMMON_NAME: &str = "Fluidity CA";
/// How far `not_before` is backdated, so that a peer whose clock runs slow still accepts a fresh certificate.
const CLOCK_SKEW: Duration = Duration::hours(1);
/// How long a CRL announces itself as current (`nextUpdate`); the server does not enforce it.
const CRL_VALIDITY: Duration = Duration::days(365);
/// The largest year X.509 GeneralizedTime can carry.
const MAX_CERT_YEAR: i32 = 9999;
/// Upper bound for a common name (RFC 5280 ub-common-name).
const MAX_COMMON_NAME_LEN: usize = 64;
/// Unix mode of written private keys.
const KEY_FILE_MODE: u32 = 0o600;
/// Unix mode of written certificates and CRLs.
const CERT_FILE_MODE: u32 = 0o644;

/// A certificate and its private key, both PEM.
///
/// Holds key material: `Debug` never prints the key (nor the certificate body).
#[derive(Clone)]
pub struct Pem {
    pub cert: String,
    pub key: String,
}

impl fmt::Debug for Pem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pem")
            .field("cert", &format_args!("<{} bytes of PEM>", self.cert.len()))
            .field("key", &format_args!("<redacted>"))
            .finish()
    }
}

/// What can go wrong building, reading, writing or revoking certificates.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("invalid validity period: {0}")]
    InvalidValidity(&'static str),
    #[error("invalid server name {name:?}: {reason}")]
    InvalidSan { name: String, reason: String },
    #[error("a server certificate needs at least one name or IP address")]
    NoServerSans,
    #[error("invalid client name {name:?}: {reason}")]
    InvalidName { name: String, reason: &'static str },
    #[error("the CA is unusable: {0}")]
    BadCa(String),
    #[error("certificate generation failed: {0}")]
    Generate(#[source] rcgen::Error),
    #[error("{}: already exists; use --force to overwrite", path.display())]
    Exists { path: PathBuf },
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("{}: {reason}", path.display())]
    Invalid { path: PathBuf, reason: String },
    #[error("{}: not issued by the CA in {}", path.display(), ca.display())]
    NotIssuedByCa { path: PathBuf, ca: PathBuf },
    #[error("invalid server address {0:?}: expected HOST or HOST:PORT ([v6]:PORT for IPv6)")]
    BadServer(String),
}

impl CertError {
    fn io(path: &Path) -> impl FnOnce(io::Error) -> CertError + '_ {
        move |source| CertError::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    fn invalid(path: &Path, reason: impl Into<String>) -> CertError {
        CertError::Invalid {
            path: path.to_path_buf(),
            reason: reason.into(),
        }
    }
}

/// Why a CA given as PEM cannot sign; turned into a [`CertError`] with or without file names.
enum CaProblem {
    Cert(String),
    Key(String),
    Mismatch,
}

impl CaProblem {
    fn in_memory(self) -> CertError {
        CertError::BadCa(match self {
            CaProblem::Cert(reason) => format!("certificate: {reason}"),
            CaProblem::Key(reason) => format!("private key: {reason}"),
            CaProblem::Mismatch => "private key does not match the certificate".to_owned(),
        })
    }

    fn in_files(self, cert: &Path, key: &Path) -> CertError {
        match self {
            CaProblem::Cert(reason) => CertError::invalid(cert, reason),
            CaProblem::Key(reason) => CertError::invalid(key, reason),
            CaProblem::Mismatch => CertError::invalid(
                key,
                format!(
                    "private key does not match the certificate in {}",
                    cert.display()
                ),
            ),
        }
    }
}

/// A new self-signed CA: ECDSA P-256, CA:TRUE with pathlen 0, key usages keyCertSign and cRLSign.
pub fn generate_ca(common_name: &str, days: u32) -> Result<Pem, CertError> {
    let (not_before, not_after) = validity_for_days(days)?;
    check_common_name(common_name)?;
    let mut params = CertificateParams::default();
    params.distinguished_name = common_name_dn(common_name);
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.not_before = not_before;
    params.not_after = not_after;
    let key = KeyPair::generate().map_err(CertError::Generate)?;
    let cert = params.self_signed(&key).map_err(CertError::Generate)?;
    Ok(Pem {
        cert: cert.pem(),
        key: key.serialize_pem(),
    })
}

/// A server certificate signed by `ca`: IP strings become iPAddress SANs, anything else a DNS name;
/// EKU serverAuth; CN is the first SAN.
pub fn issue_server(ca: &Pem, sans: &[String], days: u32) -> Result<Pem, CertError> {
    let (not_before, not_after) = validity_for_days(days)?;
    let first = sans.first().ok_or(CertError::NoServerSans)?;
    let mut params = CertificateParams::default();
    params.subject_alt_names = sans
        .iter()
        .map(|s| parse_san(s))
        .collect::<Result<_, _>>()?;
    params.distinguished_name = common_name_dn(first);
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    issue_leaf(ca, params, not_before, not_after)
}

/// A client certificate signed by `ca`: EKU clientAuth, CN `common_name`.
pub fn issue_client(ca: &Pem, common_name: &str, days: u32) -> Result<Pem, CertError> {
    let (not_before, not_after) = validity_for_days(days)?;
    issue_client_with_validity(ca, common_name, not_before, not_after)
}

/// Like [`issue_client`] with an explicit validity period (tests use it to make expired certificates).
pub fn issue_client_with_validity(
    ca: &Pem,
    common_name: &str,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
) -> Result<Pem, CertError> {
    if not_after <= not_before {
        return Err(CertError::InvalidValidity(
            "not_after must be later than not_before",
        ));
    }
    check_common_name(common_name)?;
    let mut params = CertificateParams::default();
    params.distinguished_name = common_name_dn(common_name);
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    issue_leaf(ca, params, not_before, not_after)
}

/// Writes a new CA, a server and a client certificate into `out` (created if needed) and returns the
/// paths written. Refuses if any of the six files exists, unless `force`. Empty `server_sans` means
/// [`DEFAULT_SERVER_SANS`].
pub fn init_dir(
    out: &Path,
    server_sans: &[String],
    client_cn: &str,
    days: u32,
    force: bool,
) -> Result<Vec<PathBuf>, CertError> {
    let sans: Vec<String> = if server_sans.is_empty() {
        DEFAULT_SERVER_SANS
            .iter()
            .map(|s| (*s).to_owned())
            .collect()
    } else {
        server_sans.to_vec()
    };
    let paths = init_paths(out);
    if !force {
        refuse_existing(&paths)?;
    }

    // Everything is built before anything is written, so a bad name leaves the directory untouched.
    let ca = generate_ca(CA_COMMON_NAME, days)?;
    let server = issue_server(&ca, &sans, days)?;
    let client = issue_client(&ca, client_cn, days)?;

    fs::create_dir_all(out).map_err(CertError::io(out))?;
    for (pair, files) in [&ca, &server, &client].into_iter().zip(paths.chunks(2)) {
        write_file(&files[0], &pair.cert, force, CERT_FILE_MODE)?;
        write_file(&files[1], &pair.key, force, KEY_FILE_MODE)?;
    }
    Ok(paths)
}

/// The six files [`init_dir`] writes into `out`, in the order it writes them.
fn init_paths(out: &Path) -> Vec<PathBuf> {
    [
        CA_CERT_FILE,
        CA_KEY_FILE,
        SERVER_CERT_FILE,
        SERVER_KEY_FILE,
        CLIENT_CERT_FILE,
        CLIENT_KEY_FILE,
    ]
    .iter()
    .map(|name| out.join(name))
    .collect()
}

/// Whether every file [`init_dir`] writes is already in `out` (`certs init --if-missing` then writes nothing).
/// Only presence is checked: the role that loads the files judges their content.
///
/// # Errors
/// [`CertError::Io`] when a file's presence cannot be told (a permission error on the folder, say).
pub fn init_complete(out: &Path) -> Result<bool, CertError> {
    for path in init_paths(out) {
        match fs::symlink_metadata(&path) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(CertError::io(&path)(e)),
        }
    }
    Ok(true)
}

/// Issues one more client certificate from the CA in `ca_dir`, written as `out/NAME.crt` and
/// `out/NAME.key` (NAME is also the CN). Returns the paths written.
pub fn issue_into(
    ca_dir: &Path,
    client: &str,
    out: &Path,
    days: u32,
    force: bool,
) -> Result<Vec<PathBuf>, CertError> {
    check_client_name(client)?;
    let cert_path = out.join(format!("{client}.crt"));
    let key_path = out.join(format!("{client}.key"));
    let paths = vec![cert_path, key_path];
    if !force {
        refuse_existing(&paths)?;
    }
    let (ca, _, _) = load_ca_dir(ca_dir)?;
    let pair = issue_client(&ca, client, days)?;
    fs::create_dir_all(out).map_err(CertError::io(out))?;
    write_file(&paths[0], &pair.cert, force, CERT_FILE_MODE)?;
    write_file(&paths[1], &pair.key, force, KEY_FILE_MODE)?;
    Ok(paths)
}

/// Issues a client certificate NAME from the CA in `ca_dir` (as [`issue_into`] does) and writes it, its key, the
/// CA certificate and `servers` as one invite file `out` (see `invite`), mode 0600 on Unix. Refuses an existing
/// `out` unless `force`, and a server address that is not `HOST[:PORT]`. With a `passphrase`, the file is sealed
/// with it (see `invite::seal`).
pub fn invite(
    ca_dir: &Path,
    name: &str,
    servers: &[String],
    out: &Path,
    days: u32,
    force: bool,
    passphrase: Option<&str>,
) -> Result<PathBuf, CertError> {
    check_client_name(name)?;
    if servers.is_empty() {
        return Err(CertError::BadServer(String::new()));
    }
    if let Some(bad) = servers.iter().find(|s| !crate::invite::server_valid(s)) {
        return Err(CertError::BadServer(bad.clone()));
    }
    if !force {
        refuse_existing(&[out.to_path_buf()])?;
    }
    let (ca, _, _) = load_ca_dir(ca_dir)?;
    let pair = issue_client(&ca, name, days)?;
    let text = crate::invite::encode(&crate::invite::Invite {
        name: name.to_owned(),
        servers: servers.to_vec(),
        ca_cert: ca.cert,
        cert: pair.cert,
        key: pair.key,
    });
    let text = match passphrase {
        Some(passphrase) => crate::invite::seal(&text, passphrase, crate::invite::SEAL_ITERATIONS)
            .map_err(|err| CertError::invalid(out, err.to_string()))?,
        None => text,
    };
    // On platforms without Unix modes the file relies on the permissions of the folder it is written to.
    write_file(out, &text, force, KEY_FILE_MODE)?;
    Ok(out.to_path_buf())
}

/// Writes `files` (name, contents, holds a secret) into `dir`, created if needed: secrets with mode 0600, the rest
/// 0644. Refuses if any exists, before writing anything, unless `force`. Returns the paths written.
pub fn write_set(
    dir: &Path,
    files: &[(&str, String, bool)],
    force: bool,
) -> Result<Vec<PathBuf>, CertError> {
    let paths: Vec<PathBuf> = files.iter().map(|(name, _, _)| dir.join(name)).collect();
    if !force {
        refuse_existing(&paths)?;
    }
    fs::create_dir_all(dir).map_err(CertError::io(dir))?;
    for ((_, contents, secret), path) in files.iter().zip(&paths) {
        let mode = if *secret {
            KEY_FILE_MODE
        } else {
            CERT_FILE_MODE
        };
        write_file(path, contents, force, mode)?;
    }
    Ok(paths)
}

/// Adds the serial of the certificate in `cert` to `ca_dir/crl.pem`, keeping every serial revoked
/// before, and returns the CRL path. Refuses a certificate this CA did not issue.
pub fn revoke(ca_dir: &Path, cert: &Path) -> Result<PathBuf, CertError> {
    let (ca, ca_cert_path, ca_key_path) = load_ca_dir(ca_dir)?;
    let issuer = ca_issuer(&ca).map_err(|p| p.in_files(&ca_cert_path, &ca_key_path))?;
    let ca_der = cert_der_from_pem(&ca_cert_path, &ca.cert)?;
    let ca_x509 = parse_cert(&ca_cert_path, &ca_der)?;

    let leaf_pem = read_text(cert)?;
    let leaf_der = cert_der_from_pem(cert, &leaf_pem)?;
    let leaf = parse_cert(cert, &leaf_der)?;
    let issued_here = leaf.issuer() == ca_x509.subject()
        && leaf.verify_signature(Some(ca_x509.public_key())).is_ok();
    if !issued_here {
        return Err(CertError::NotIssuedByCa {
            path: cert.to_path_buf(),
            ca: ca_cert_path,
        });
    }

    let crl_path = ca_dir.join(CRL_FILE);
    let previous = read_crl(&crl_path, &ca_x509, &ca_cert_path)?;
    let now = OffsetDateTime::now_utc();
    let (mut revoked, crl_number) = match previous {
        Some(ExistingCrl { revoked, number }) => (revoked, number + 1u32),
        None => (Vec::new(), BigUint::from(1u32)),
    };
    let serial = leaf.tbs_certificate.serial.clone();
    if !revoked.iter().any(|(s, _)| *s == serial) {
        revoked.push((serial, now));
    }

    let next_update = now
        .checked_add(CRL_VALIDITY)
        .ok_or(CertError::InvalidValidity("CRL next update overflows"))?;
    let params = CertificateRevocationListParams {
        this_update: now,
        next_update,
        crl_number: SerialNumber::from_slice(&crl_number.to_bytes_be()),
        issuing_distribution_point: None,
        revoked_certs: revoked
            .iter()
            .map(|(serial, revocation_time)| RevokedCertParams {
                serial_number: SerialNumber::from_slice(&serial.to_bytes_be()),
                revocation_time: *revocation_time,
                reason_code: None,
                invalidity_date: None,
            })
            .collect(),
        key_identifier_method: subject_key_id(&ca_x509)
            .map_or(KeyIdMethod::Sha256, KeyIdMethod::PreSpecified),
    };
    let crl = params.signed_by(&issuer).map_err(CertError::Generate)?;
    let crl_pem = crl.pem().map_err(CertError::Generate)?;
    write_replacing(&crl_path, &crl_pem)?;
    Ok(crl_path)
}

/// The `notAfter` of the first certificate in a PEM file.
pub fn expiry(cert_pem_path: &Path) -> Result<OffsetDateTime, CertError> {
    let pem = read_text(cert_pem_path)?;
    let der = cert_der_from_pem(cert_pem_path, &pem)?;
    let cert = parse_cert(cert_pem_path, &der)?;
    Ok(cert.validity().not_after.to_datetime())
}

fn issue_leaf(
    ca: &Pem,
    mut params: CertificateParams,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
) -> Result<Pem, CertError> {
    let issuer = ca_issuer(ca).map_err(CaProblem::in_memory)?;
    params.not_before = not_before;
    params.not_after = not_after;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.use_authority_key_identifier_extension = true;
    let key = KeyPair::generate().map_err(CertError::Generate)?;
    let cert = params
        .signed_by(&key, &issuer)
        .map_err(CertError::Generate)?;
    Ok(Pem {
        cert: cert.pem(),
        key: key.serialize_pem(),
    })
}

/// The CA as an rcgen signer, after checking that its key belongs to its certificate.
fn ca_issuer(ca: &Pem) -> Result<Issuer<'static, KeyPair>, CaProblem> {
    let key = KeyPair::from_pem(&ca.key).map_err(|e| CaProblem::Key(e.to_string()))?;
    let der = CertificateDer::from_pem_slice(ca.cert.as_bytes())
        .map_err(|_| CaProblem::Cert("no PEM certificate found".to_owned()))?;
    let (_, cert) =
        x509_parser::parse_x509_certificate(&der).map_err(|e| CaProblem::Cert(e.to_string()))?;
    if cert.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
        return Err(CaProblem::Mismatch);
    }
    Issuer::from_ca_cert_der(&der, key).map_err(|e| CaProblem::Cert(e.to_string()))
}

/// Reads and checks `ca_dir/ca.crt` and `ca_dir/ca.key`; returns them with their paths.
fn load_ca_dir(ca_dir: &Path) -> Result<(Pem, PathBuf, PathBuf), CertError> {
    let cert_path = ca_dir.join(CA_CERT_FILE);
    let key_path = ca_dir.join(CA_KEY_FILE);
    let ca = Pem {
        cert: read_text(&cert_path)?,
        key: read_text(&key_path)?,
    };
    ca_issuer(&ca).map_err(|p| p.in_files(&cert_path, &key_path))?;
    Ok((ca, cert_path, key_path))
}

/// What `revoke` keeps from the previous `crl.pem`.
struct ExistingCrl {
    /// Revoked serials with their revocation times.
    revoked: Vec<(BigUint, OffsetDateTime)>,
    /// The CRL number (0 when the CRL carried none).
    number: BigUint,
}

/// The serials (with revocation times) and number of an existing CRL signed by the CA, or `None`
/// when there is no CRL yet.
fn read_crl(
    crl_path: &Path,
    ca: &X509Certificate<'_>,
    ca_path: &Path,
) -> Result<Option<ExistingCrl>, CertError> {
    let text = match fs::read_to_string(crl_path) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(CertError::io(crl_path)(e)),
    };
    let der = CertificateRevocationListDer::from_pem_slice(text.as_bytes())
        .map_err(|_| CertError::invalid(crl_path, "no PEM CRL found"))?;
    let (_, crl) = x509_parser::parse_x509_crl(&der)
        .map_err(|e| CertError::invalid(crl_path, format!("CRL cannot be parsed: {e}")))?;
    if crl.issuer() != ca.subject() || crl.verify_signature(ca.public_key()).is_err() {
        return Err(CertError::invalid(
            crl_path,
            format!("CRL is not signed by the CA in {}", ca_path.display()),
        ));
    }
    let revoked = crl
        .iter_revoked_certificates()
        .map(|r| (r.serial().clone(), r.revocation_date.to_datetime()))
        .collect();
    let number = crl.crl_number().cloned().unwrap_or_default();
    Ok(Some(ExistingCrl { revoked, number }))
}

fn subject_key_id(cert: &X509Certificate<'_>) -> Option<Vec<u8>> {
    cert.iter_extensions()
        .find_map(|ext| match ext.parsed_extension() {
            ParsedExtension::SubjectKeyIdentifier(id) => Some(id.0.to_vec()),
            _ => None,
        })
}

fn validity_for_days(days: u32) -> Result<(OffsetDateTime, OffsetDateTime), CertError> {
    if days == 0 {
        return Err(CertError::InvalidValidity("days must be at least 1"));
    }
    let now = OffsetDateTime::now_utc();
    let not_before = now
        .checked_sub(CLOCK_SKEW)
        .ok_or(CertError::InvalidValidity("clock out of range"))?;
    let not_after = now
        .checked_add(Duration::days(i64::from(days)))
        .filter(|t| t.year() <= MAX_CERT_YEAR)
        .ok_or(CertError::InvalidValidity("too many days"))?;
    Ok((not_before, not_after))
}

fn common_name_dn(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn
}

fn check_common_name(name: &str) -> Result<(), CertError> {
    let reason = if name.trim().is_empty() {
        "must not be empty"
    } else if name.len() > MAX_COMMON_NAME_LEN {
        "longer than 64 bytes"
    } else if name.chars().any(char::is_control) {
        "contains control characters"
    } else {
        return Ok(());
    };
    Err(CertError::InvalidName {
        name: name.to_owned(),
        reason,
    })
}

/// A `certs issue` NAME doubles as a file name: non-empty, only `[A-Za-z0-9._-]`, not starting with '.'.
fn check_client_name(name: &str) -> Result<(), CertError> {
    let reason = if name.is_empty() {
        "must not be empty"
    } else if name.starts_with('.') {
        "must not start with '.'"
    } else if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        "only letters, digits, '.', '_' and '-' are allowed"
    } else {
        return check_common_name(name);
    };
    Err(CertError::InvalidName {
        name: name.to_owned(),
        reason,
    })
}

fn parse_san(name: &str) -> Result<SanType, CertError> {
    if let Ok(ip) = name.parse::<IpAddr>() {
        return Ok(SanType::IpAddress(ip));
    }
    let invalid = |reason: &str| CertError::InvalidSan {
        name: name.to_owned(),
        reason: reason.to_owned(),
    };
    let host = name.strip_prefix("*.").unwrap_or(name);
    if host.is_empty() || host.len() > 253 {
        return Err(invalid("not a DNS name or IP address"));
    }
    let label_ok = |label: &str| {
        !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    if !host.trim_end_matches('.').split('.').all(label_ok) {
        return Err(invalid("not a DNS name or IP address"));
    }
    let dns = name
        .to_owned()
        .try_into()
        .map_err(|e: rcgen::Error| invalid(&e.to_string()))?;
    Ok(SanType::DnsName(dns))
}

fn refuse_existing(paths: &[PathBuf]) -> Result<(), CertError> {
    for path in paths {
        match fs::symlink_metadata(path) {
            Ok(_) => return Err(CertError::Exists { path: path.clone() }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(CertError::io(path)(e)),
        }
    }
    Ok(())
}

fn read_text(path: &Path) -> Result<String, CertError> {
    fs::read_to_string(path).map_err(CertError::io(path))
}

fn cert_der_from_pem(path: &Path, pem: &str) -> Result<CertificateDer<'static>, CertError> {
    CertificateDer::from_pem_slice(pem.as_bytes())
        .map_err(|_| CertError::invalid(path, "no PEM certificate found"))
}

fn parse_cert<'a>(path: &Path, der: &'a [u8]) -> Result<X509Certificate<'a>, CertError> {
    x509_parser::parse_x509_certificate(der)
        .map(|(_, cert)| cert)
        .map_err(|e| CertError::invalid(path, format!("certificate cannot be parsed: {e}")))
}

/// Writes `contents` to `path`. Without `force` the file must not exist; with it, an existing file is
/// truncated and its mode reset before the new contents go in. `mode` applies on Unix only; elsewhere the file
/// takes the folder's permissions (see the module docs).
fn write_file(path: &Path, contents: &str, force: bool, mode: u32) -> Result<(), CertError> {
    #[cfg(not(unix))]
    let _ = mode;
    let mut options = fs::OpenOptions::new();
    options.write(true);
    if force {
        options.create(true).truncate(true);
    } else {
        options.create_new(true);
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(mode);
    }
    let mut file = options.open(path).map_err(|e| {
        if e.kind() == io::ErrorKind::AlreadyExists {
            CertError::Exists {
                path: path.to_path_buf(),
            }
        } else {
            CertError::io(path)(e)
        }
    })?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(fs::Permissions::from_mode(mode))
            .map_err(CertError::io(path))?;
    }
    file.write_all(contents.as_bytes())
        .map_err(CertError::io(path))?;
    file.sync_all().map_err(CertError::io(path))
}

/// Replaces `path` atomically (write a sibling, then rename), so a server reloading it never sees half a file.
fn write_replacing(path: &Path, contents: &str) -> Result<(), CertError> {
    let mut tmp_name = path
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    tmp_name.push(".tmp");
    let tmp = path.with_file_name(tmp_name);
    write_file(&tmp, contents, true, CERT_FILE_MODE)?;
    fs::rename(&tmp, path).map_err(CertError::io(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_pem_cert(pem: &str) -> Vec<u8> {
        CertificateDer::from_pem_slice(pem.as_bytes())
            .expect("PEM certificate")
            .to_vec()
    }

    fn sans_of(der: &[u8]) -> Vec<String> {
        let (_, cert) = x509_parser::parse_x509_certificate(der).expect("parse");
        let san = cert
            .subject_alternative_name()
            .expect("san ext")
            .expect("san present");
        san.value
            .general_names
            .iter()
            .map(|name| match name {
                x509_parser::extensions::GeneralName::DNSName(d) => format!("dns:{d}"),
                x509_parser::extensions::GeneralName::IPAddress(ip) => match ip.len() {
                    4 => format!("ip:{}", IpAddr::from(<[u8; 4]>::try_from(*ip).expect("v4"))),
                    _ => format!(
                        "ip:{}",
                        IpAddr::from(<[u8; 16]>::try_from(*ip).expect("v6"))
                    ),
                },
                other => format!("{other:?}"),
            })
            .collect()
    }

    fn crl_serials(crl_path: &Path) -> (Vec<BigUint>, BigUint) {
        let pem = fs::read(crl_path).expect("read crl");
        let der = CertificateRevocationListDer::from_pem_slice(&pem).expect("crl pem");
        let (_, crl) = x509_parser::parse_x509_crl(&der).expect("parse crl");
        let serials = crl
            .iter_revoked_certificates()
            .map(|r| r.serial().clone())
            .collect();
        (serials, crl.crl_number().cloned().expect("crl number"))
    }

    fn serial_of(path: &Path) -> BigUint {
        let der = parse_pem_cert(&fs::read_to_string(path).expect("read"));
        let (_, cert) = x509_parser::parse_x509_certificate(&der).expect("parse");
        cert.tbs_certificate.serial.clone()
    }

    #[test]
    fn init_dir_writes_six_files_with_key_modes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = dir.path().join("certs");
        let written = init_dir(&out, &[], "agent", 30, false).expect("init");
        assert_eq!(written.len(), 6);
        for path in &written {
            assert!(path.is_file(), "{} missing", path.display());
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            for name in [CA_KEY_FILE, SERVER_KEY_FILE, CLIENT_KEY_FILE] {
                let mode = fs::metadata(out.join(name))
                    .expect("meta")
                    .permissions()
                    .mode()
                    & 0o777;
                assert_eq!(mode, 0o600, "{name}");
            }
            let mode = fs::metadata(out.join(CA_CERT_FILE))
                .expect("meta")
                .permissions()
                .mode()
                & 0o777;
            assert_eq!(mode, 0o644);
        }
    }

    #[test]
    fn init_dir_refuses_existing_and_names_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::write(dir.path().join(SERVER_KEY_FILE), "old").expect("write");
        let err = init_dir(dir.path(), &[], "agent", 30, false).expect_err("must refuse");
        let text = err.to_string();
        assert!(matches!(err, CertError::Exists { .. }));
        assert!(
            text.contains(SERVER_KEY_FILE) && text.contains("use --force"),
            "{text}"
        );
        assert!(
            !dir.path().join(CA_CERT_FILE).exists(),
            "nothing written on refusal"
        );
    }

    #[test]
    fn init_complete_is_true_only_when_all_six_files_are_there() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(!init_complete(dir.path()).expect("empty folder"));
        assert!(!init_complete(&dir.path().join("missing")).expect("missing folder"));
        init_dir(dir.path(), &[], "agent", 30, false).expect("init");
        assert!(init_complete(dir.path()).expect("full folder"));
        fs::remove_file(dir.path().join(CLIENT_KEY_FILE)).expect("remove one");
        assert!(!init_complete(dir.path()).expect("partial folder"));
    }

    #[test]
    fn init_dir_overwrites_with_force_and_resets_key_mode() {
        let dir = tempfile::tempdir().expect("tempdir");
        init_dir(dir.path(), &[], "agent", 30, false).expect("first");
        let before = fs::read_to_string(dir.path().join(CA_CERT_FILE)).expect("read");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(
                dir.path().join(CLIENT_KEY_FILE),
                fs::Permissions::from_mode(0o644),
            )
            .expect("chmod");
        }
        init_dir(dir.path(), &[], "agent", 30, true).expect("forced");
        let after = fs::read_to_string(dir.path().join(CA_CERT_FILE)).expect("read");
        assert_ne!(before, after);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(dir.path().join(CLIENT_KEY_FILE))
                .expect("meta")
                .permissions()
                .mode()
                & 0o777;
            assert_eq!(mode, 0o600);
        }
    }

    #[test]
    fn default_and_custom_server_sans() {
        let dir = tempfile::tempdir().expect("tempdir");
        init_dir(dir.path(), &[], "agent", 30, false).expect("init");
        let der =
            parse_pem_cert(&fs::read_to_string(dir.path().join(SERVER_CERT_FILE)).expect("read"));
        assert_eq!(sans_of(&der), ["dns:localhost", "ip:127.0.0.1", "ip:::1"]);
        let (_, cert) = x509_parser::parse_x509_certificate(&der).expect("parse");
        let cn = cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok());
        assert_eq!(cn, Some("localhost"));

        let ca = generate_ca("test CA", 1).expect("ca");
        let server = issue_server(
            &ca,
            &["10.0.0.1".to_owned(), "tunnel.example.com".to_owned()],
            1,
        )
        .expect("server");
        assert_eq!(
            sans_of(&parse_pem_cert(&server.cert)),
            ["ip:10.0.0.1", "dns:tunnel.example.com"]
        );
    }

    #[test]
    fn bad_inputs_are_refused() {
        let ca = generate_ca("test CA", 1).expect("ca");
        assert!(matches!(
            issue_server(&ca, &[], 1),
            Err(CertError::NoServerSans)
        ));
        assert!(matches!(
            issue_server(&ca, &["bad name".to_owned()], 1),
            Err(CertError::InvalidSan { .. })
        ));
        assert!(matches!(
            issue_client(&ca, "x", 0),
            Err(CertError::InvalidValidity(_))
        ));
        assert!(matches!(
            issue_client(&ca, "x", u32::MAX),
            Err(CertError::InvalidValidity(_))
        ));
        let dir = tempfile::tempdir().expect("tempdir");
        for name in ["", ".hidden", "a/b", "a b"] {
            assert!(
                matches!(
                    issue_into(dir.path(), name, dir.path(), 1, false),
                    Err(CertError::InvalidName { .. })
                ),
                "{name:?}"
            );
        }
        let wrong_key = generate_ca("other", 1).expect("ca");
        let mixed = Pem {
            cert: ca.cert.clone(),
            key: wrong_key.key,
        };
        assert!(matches!(
            issue_client(&mixed, "x", 1),
            Err(CertError::BadCa(_))
        ));
    }

    #[test]
    fn debug_never_prints_the_key() {
        let ca = generate_ca("test CA", 1).expect("ca");
        let text = format!("{ca:?}");
        assert!(
            !text.contains("PRIVATE KEY") && !text.contains("CERTIFICATE"),
            "{text}"
        );
        assert!(text.contains("redacted"));
    }

    #[test]
    fn issue_into_writes_name_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca_dir = dir.path().join("ca");
        init_dir(&ca_dir, &[], "agent", 30, false).expect("init");
        let out = dir.path().join("laptop");
        let written = issue_into(&ca_dir, "laptop-2", &out, 30, false).expect("issue");
        assert_eq!(
            written,
            [out.join("laptop-2.crt"), out.join("laptop-2.key")]
        );
        let der = parse_pem_cert(&fs::read_to_string(&written[0]).expect("read"));
        let (_, cert) = x509_parser::parse_x509_certificate(&der).expect("parse");
        let ca_der = parse_pem_cert(&fs::read_to_string(ca_dir.join(CA_CERT_FILE)).expect("read"));
        let (_, ca) = x509_parser::parse_x509_certificate(&ca_der).expect("parse");
        assert!(cert.verify_signature(Some(ca.public_key())).is_ok());
        let cn = cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok());
        assert_eq!(cn, Some("laptop-2"));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&written[1])
                .expect("meta")
                .permissions()
                .mode()
                & 0o777;
            assert_eq!(mode, 0o600);
        }
        let err = issue_into(&ca_dir, "laptop-2", &out, 30, false).expect_err("exists");
        assert!(err.to_string().contains("laptop-2.crt"), "{err}");
        issue_into(&ca_dir, "laptop-2", &out, 30, true).expect("forced");

        let missing = dir.path().join("nowhere");
        let err = issue_into(&missing, "x", &out, 30, false).expect_err("no CA");
        assert!(err.to_string().contains(CA_CERT_FILE), "{err}");
    }

    #[test]
    fn revoke_twice_keeps_both_serials() {
        let dir = tempfile::tempdir().expect("tempdir");
        init_dir(dir.path(), &[], "agent", 30, false).expect("init");
        let written = issue_into(dir.path(), "second", dir.path(), 30, false).expect("issue");

        let crl = revoke(dir.path(), &dir.path().join(CLIENT_CERT_FILE)).expect("revoke 1");
        assert_eq!(crl, dir.path().join(CRL_FILE));
        let (serials, number) = crl_serials(&crl);
        assert_eq!(serials, [serial_of(&dir.path().join(CLIENT_CERT_FILE))]);
        assert_eq!(number, BigUint::from(1u32));

        revoke(dir.path(), &written[0]).expect("revoke 2");
        let (serials, number) = crl_serials(&crl);
        assert_eq!(
            serials,
            [
                serial_of(&dir.path().join(CLIENT_CERT_FILE)),
                serial_of(&written[0])
            ]
        );
        assert_eq!(number, BigUint::from(2u32));

        // Revoking again is idempotent for the list; the CRL number still moves on.
        revoke(dir.path(), &written[0]).expect("revoke again");
        let (serials, number) = crl_serials(&crl);
        assert_eq!(serials.len(), 2);
        assert_eq!(number, BigUint::from(3u32));
    }

    #[test]
    fn revoke_refuses_foreign_cert() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ours = dir.path().join("ours");
        let theirs = dir.path().join("theirs");
        init_dir(&ours, &[], "agent", 30, false).expect("init");
        init_dir(&theirs, &[], "agent", 30, false).expect("init");
        let foreign = theirs.join(CLIENT_CERT_FILE);
        let err = revoke(&ours, &foreign).expect_err("foreign");
        assert!(matches!(err, CertError::NotIssuedByCa { .. }));
        assert!(
            err.to_string().contains(&foreign.display().to_string()),
            "{err}"
        );
        assert!(!ours.join(CRL_FILE).exists());
    }

    #[test]
    fn expiry_reads_not_after() {
        let dir = tempfile::tempdir().expect("tempdir");
        init_dir(dir.path(), &[], "agent", 10, false).expect("init");
        let not_after = expiry(&dir.path().join(SERVER_CERT_FILE)).expect("expiry");
        let left = not_after - OffsetDateTime::now_utc();
        assert!(
            left > Duration::days(9) && left <= Duration::days(10),
            "{left}"
        );
        let err = expiry(&dir.path().join("absent.crt")).expect_err("missing");
        assert!(err.to_string().contains("absent.crt"));
    }
}

#[cfg(test)]
/// The invite format over real certificates; here rather than in `invite` because issuing them is this layer's
/// job, and `invite` sits beneath it.
mod invite_tests {
    use crate::certs;
    use crate::invite::*;
    use std::collections::HashMap;
    use std::path::PathBuf;
    use time::Duration;
    use time::OffsetDateTime;

    fn sample() -> Invite {
        let ca = certs::generate_ca("test ca", 30).unwrap();
        let client = certs::issue_client(&ca, "laptop", 30).unwrap();
        Invite {
            name: "laptop".into(),
            servers: vec!["vpn.example:9443".into(), "[::1]:8443".into()],
            ca_cert: ca.cert,
            cert: client.cert,
            key: client.key,
        }
    }

    #[test]
    fn round_trip_keeps_every_field_and_checks() {
        let invite = sample();
        let text = encode(&invite);
        assert!(text.starts_with("fluidity-invite v1\n"));
        let back = parse(text.as_bytes()).unwrap();
        assert_eq!(back, invite);
        check(&back, OffsetDateTime::now_utc()).unwrap();
    }

    #[test]
    fn truncated_file_is_refused() {
        let text = encode(&sample());
        for cut in [text.len() - 1, text.len() - 20, text.len() / 2, 20] {
            let err = parse(&text.as_bytes()[..cut]).unwrap_err();
            assert_eq!(err, InviteError::Checksum, "cut at {cut}");
        }
    }

    #[test]
    fn flipped_bit_is_refused() {
        let text = encode(&sample());
        let mut bytes = text.into_bytes();
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0x04;
        assert!(parse(&bytes).is_err());
    }

    #[test]
    fn other_version_and_other_files_are_refused() {
        let text = encode(&sample()).replacen("v1", "v2", 1);
        assert_eq!(
            parse(text.as_bytes()).unwrap_err(),
            InviteError::Version("v2".into())
        );
        assert_eq!(
            parse(b"server_ip: x\n").unwrap_err(),
            InviteError::NotAnInvite
        );
        assert_eq!(parse(&[0xff, 0xfe]).unwrap_err(), InviteError::NotAnInvite);
    }

    #[test]
    fn certificate_from_another_ca_is_refused() {
        let mut invite = sample();
        invite.ca_cert = certs::generate_ca("other ca", 30).unwrap().cert;
        let reparsed = parse(encode(&invite).as_bytes()).unwrap();
        assert_eq!(
            check(&reparsed, OffsetDateTime::now_utc()),
            Err(InviteError::ForeignCa)
        );
    }

    #[test]
    fn mismatched_key_is_refused() {
        let mut invite = sample();
        let other_ca = certs::generate_ca("another", 30).unwrap();
        invite.key = certs::issue_client(&other_ca, "other", 30).unwrap().key;
        assert_eq!(
            check(&invite, OffsetDateTime::now_utc()),
            Err(InviteError::KeyMismatch)
        );
    }

    #[test]
    fn expired_certificate_is_refused() {
        let ca = certs::generate_ca("test ca", 30).unwrap();
        let now = OffsetDateTime::now_utc();
        let old = certs::issue_client_with_validity(
            &ca,
            "laptop",
            now - Duration::days(10),
            now - Duration::days(1),
        )
        .unwrap();
        let invite = Invite {
            name: "laptop".into(),
            servers: vec!["vpn.example".into()],
            ca_cert: ca.cert,
            cert: old.cert,
            key: old.key,
        };
        assert!(matches!(check(&invite, now), Err(InviteError::Expired(_))));
    }

    #[test]
    fn bad_server_address_is_refused() {
        let mut invite = sample();
        invite.servers = vec!["vpn.example:0".into()];
        assert!(matches!(
            parse(encode(&invite).as_bytes()),
            Err(InviteError::Malformed(_))
        ));
    }

    #[test]
    fn agent_yaml_writes_one_server_as_host_and_port() {
        let mut invite = sample();
        invite.servers = vec!["vpn.example:9443".into()];
        let yaml = agent_yaml(&invite);
        assert!(
            yaml.contains("server_ip: \"vpn.example\"\nserver_port: 9443\n"),
            "{yaml}"
        );
        invite.servers = vec!["[2001:db8::1]".into()];
        assert!(agent_yaml(&invite).contains("server_ip: \"2001:db8::1\"\ncert_file"));
        invite.servers = vec!["a.example".into(), "b.example:1".into()];
        assert!(
            agent_yaml(&invite).contains("server_ip:\n  - \"a.example\"\n  - \"b.example:1\"\n")
        );
    }

    #[test]
    fn agent_yaml_loads_with_every_server_in_order() {
        use crate::config::{AgentLayer, ServerEndpoint, load_agent};
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("agent.yaml");
        let mut invite = sample();
        let cases = [
            (
                vec!["vpn.example:9443"],
                vec![ServerEndpoint::new("vpn.example", 9443)],
            ),
            (
                vec!["a.example", "b.example:1", "[2001:db8::1]:2", "2001:db8::3"],
                vec![
                    ServerEndpoint::new("a.example", 8443),
                    ServerEndpoint::new("b.example", 1),
                    ServerEndpoint::new("2001:db8::1", 2),
                    ServerEndpoint::new("2001:db8::3", 8443),
                ],
            ),
        ];
        for (servers, expected) in cases {
            invite.servers = servers.iter().map(|s| (*s).to_owned()).collect();
            assert!(invite.servers.iter().all(|s| server_valid(s)));
            std::fs::write(&file, agent_yaml(&invite)).unwrap();
            let config = load_agent(Some(&file), &AgentLayer::default(), &HashMap::new()).unwrap();
            assert_eq!(config.servers, expected);
        }
        assert!(!server_valid("a b.example"));
        assert!(!server_valid("[vpn.example]:1"));
    }

    #[test]
    fn default_dir_per_os() {
        let env = |pairs: &[(&str, &str)]| -> HashMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| ((*k).into(), (*v).into()))
                .collect()
        };
        type Case = (
            Os,
            &'static [(&'static str, &'static str)],
            Option<&'static str>,
        );
        let cases: &[Case] = &[
            (
                Os::Linux,
                &[("XDG_CONFIG_HOME", "/x"), ("HOME", "/h")],
                Some("/x/fluidity"),
            ),
            (
                Os::Linux,
                &[("XDG_CONFIG_HOME", ""), ("HOME", "/h")],
                Some("/h/.config/fluidity"),
            ),
            (
                Os::Linux,
                &[("XDG_CONFIG_HOME", "rel"), ("HOME", "/h")],
                Some("/h/.config/fluidity"),
            ),
            (Os::Linux, &[], None),
            (
                Os::MacOs,
                &[("HOME", "/Users/a"), ("XDG_CONFIG_HOME", "/x")],
                Some("/Users/a/Library/Application Support/fluidity"),
            ),
            (Os::MacOs, &[], None),
            (
                Os::Windows,
                &[("APPDATA", "C:/Users/a/AppData/Roaming")],
                Some("C:/Users/a/AppData/Roaming/fluidity"),
            ),
            (Os::Windows, &[("HOME", "/h")], None),
        ];
        for (os, vars, want) in cases {
            assert_eq!(
                default_dir(&env(vars), *os),
                want.map(PathBuf::from),
                "{os:?} {vars:?}"
            );
        }
    }

    #[test]
    fn debug_never_prints_the_key() {
        let invite = sample();
        let shown = format!("{invite:?}");
        assert!(
            !shown.contains("PRIVATE KEY") && !shown.contains("CERTIFICATE"),
            "{shown}"
        );
    }
}
