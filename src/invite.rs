//! The invite file of one-file onboarding: `fluidity certs invite` writes it, `fluidity join` reads it.
//!
//! An invite holds a client certificate, its private key, the CA certificate and the server address(es). It is a
//! text file, readable and self-describing:
//!
//! ```text
//! fluidity-invite v1
//! name: laptop
//! server: vpn.example.net:8443
//! ca:
//! -----BEGIN CERTIFICATE-----
//! ...
//! cert:
//! ...
//! key:
//! ...
//! sha256: <hex of SHA-256 over every byte before this line>
//! ```
//!
//! The checksum catches truncation and damage; it is not a signature (anyone who can edit the file can recompute
//! it). Trust comes from the checks in [`check`]: the certificate must be signed by the included CA, match the
//! included key and be valid now. The parser ([`parse`]) is a pure function over bytes and is fuzzed
//! (`fuzz/fuzz_targets/invite.rs`).
//!
//! With a passphrase, the whole text above is sealed: the file is then
//!
//! ```text
//! fluidity-invite v1 sealed
//! kdf: pbkdf2-sha256 <iterations> <salt, base64>
//! <base64 of nonce and ciphertext, in lines of 76>
//! ```
//!
//! The key is PBKDF2-HMAC-SHA256 of the passphrase; the cipher ChaCha20-Poly1305, with the two header lines as
//! associated data, so a wrong passphrase and any change to the file are both caught by the tag ([`open`]).
//!
//! This module does not issue certificates (see `certs`) and does not start the agent.

use std::collections::HashMap;
use std::fmt::{self, Write as _};
use std::path::PathBuf;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject as _;
use time::OffsetDateTime;

/// First line of every invite file; the version is the last word.
pub const MAGIC: &str = "fluidity-invite";
/// The one format version this build reads and writes.
pub const VERSION: &str = "v1";
/// The word after the version on the first line of a sealed invite.
const SEALED: &str = "sealed";
/// PBKDF2 rounds for a new sealed invite.
pub const SEAL_ITERATIONS: u32 = 600_000;
/// The most PBKDF2 rounds [`open`] accepts from a file, so a crafted file cannot keep `join` busy for hours.
const MAX_ITERATIONS: u32 = 10_000_000;
const SALT_LEN: usize = 16;
const NONCE_LEN: usize = 12;
const LINE_WIDTH: usize = 76;

/// Name of the agent configuration `join` writes.
pub const AGENT_CONFIG_FILE: &str = "agent.yaml";

/// What an invite carries.
///
/// Holds a private key: `Debug` never prints it, nor the certificate bodies.
#[derive(Clone, PartialEq, Eq)]
pub struct Invite {
    /// The client's name (the certificate's common name).
    pub name: String,
    /// Server addresses, `HOST` or `HOST:PORT` (`[v6]:PORT` for IPv6 literals), at least one.
    pub servers: Vec<String>,
    /// The CA certificate, PEM.
    pub ca_cert: String,
    /// The client certificate, PEM.
    pub cert: String,
    /// The client's private key, PEM.
    pub key: String,
}

impl fmt::Debug for Invite {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Invite")
            .field("name", &self.name)
            .field("servers", &self.servers)
            .finish_non_exhaustive()
    }
}

/// Why an invite was refused. Each message is one line meant for the person running `join`.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum InviteError {
    #[error("not a fluidity invite file (the first line must be `{MAGIC} {VERSION}`)")]
    NotAnInvite,
    #[error("invite version {0:?} is not supported by this fluidity (it reads {VERSION})")]
    Version(String),
    #[error("the invite file is damaged or truncated (its checksum does not match)")]
    Checksum,
    #[error("the invite file is malformed: {0}")]
    Malformed(String),
    #[error("the invite's certificate was not issued by the CA it carries")]
    ForeignCa,
    #[error("the invite's certificate does not match its key")]
    KeyMismatch,
    #[error("the invite's certificate expired on {0}; ask for a new invite")]
    Expired(OffsetDateTime),
    #[error("the invite's certificate is not valid before {0}")]
    NotYetValid(OffsetDateTime),
    #[error(
        "the invite is protected by a passphrase: pass --passphrase-file FILE (- reads standard input)"
    )]
    Sealed,
    #[error("wrong passphrase, or the invite file is damaged")]
    WrongPassphrase,
    #[error("the passphrase is empty")]
    EmptyPassphrase,
}

/// Renders `invite` as the text of an invite file, checksum included.
pub fn encode(invite: &Invite) -> String {
    let mut body = format!("{MAGIC} {VERSION}\nname: {}\n", invite.name);
    for server in &invite.servers {
        let _ = writeln!(body, "server: {server}");
    }
    for (field, pem) in [
        ("ca", &invite.ca_cert),
        ("cert", &invite.cert),
        ("key", &invite.key),
    ] {
        let _ = writeln!(body, "{field}:\n{}", pem.trim_end());
    }
    let sum = sha256_hex(body.as_bytes());
    let _ = writeln!(body, "sha256: {sum}");
    body
}

/// Whether `data` is a sealed (passphrase-protected) invite, by its first line.
pub fn is_sealed(data: &[u8]) -> bool {
    first_line_words(data).is_some_and(|words| words == [MAGIC, VERSION, SEALED])
}

fn first_line_words(data: &[u8]) -> Option<Vec<&str>> {
    let end = data.iter().position(|&b| b == b'\n').unwrap_or(data.len());
    let line = std::str::from_utf8(&data[..end]).ok()?;
    Some(line.split_whitespace().collect())
}

/// Seals the invite text `plain` with `passphrase`: a fresh random salt and nonce, `iterations` PBKDF2 rounds.
///
/// # Errors
/// [`InviteError::EmptyPassphrase`]; [`InviteError::Malformed`] when the system has no random numbers to give.
pub fn seal(plain: &str, passphrase: &str, iterations: u32) -> Result<String, InviteError> {
    use ring::rand::SecureRandom as _;
    if passphrase.is_empty() {
        return Err(InviteError::EmptyPassphrase);
    }
    let rng = ring::rand::SystemRandom::new();
    let mut salt = [0u8; SALT_LEN];
    let mut nonce = [0u8; NONCE_LEN];
    rng.fill(&mut salt)
        .and_then(|()| rng.fill(&mut nonce))
        .map_err(|_| InviteError::Malformed("no random numbers from the system".to_owned()))?;
    let header = format!(
        "{MAGIC} {VERSION} {SEALED}\nkdf: pbkdf2-sha256 {iterations} {}\n",
        B64.encode(salt)
    );
    let key = sealing_key(passphrase, &salt, iterations)?;
    let mut data = plain.as_bytes().to_vec();
    key.seal_in_place_append_tag(
        ring::aead::Nonce::assume_unique_for_key(nonce),
        ring::aead::Aad::from(header.as_bytes()),
        &mut data,
    )
    .map_err(|_| InviteError::Malformed("the invite cannot be sealed".to_owned()))?;
    let mut payload = nonce.to_vec();
    payload.extend_from_slice(&data);
    let encoded = B64.encode(payload);
    let mut text = header;
    for chunk in encoded.as_bytes().chunks(LINE_WIDTH) {
        text.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        text.push('\n');
    }
    Ok(text)
}

/// The parts of a sealed invite, read without the passphrase.
#[derive(Debug, PartialEq, Eq)]
pub struct SealedParts {
    /// The two header lines, as the associated data.
    pub header: String,
    pub iterations: u32,
    pub salt: Vec<u8>,
    /// Nonce, then ciphertext and tag.
    pub payload: Vec<u8>,
}

/// Reads a sealed invite's header and payload. Never panics, whatever the input.
///
/// # Errors
/// [`InviteError::NotAnInvite`] when it is not a sealed invite, [`InviteError::Malformed`] when its parts are
/// unreadable.
pub fn sealed_parts(data: &[u8]) -> Result<SealedParts, InviteError> {
    if !is_sealed(data) {
        return Err(InviteError::NotAnInvite);
    }
    let text = std::str::from_utf8(data).map_err(|_| InviteError::NotAnInvite)?;
    let mut lines = text.split_inclusive('\n');
    let first = lines.next().unwrap_or_default();
    let kdf = lines.next().unwrap_or_default();
    let malformed = |what: &str| InviteError::Malformed(what.to_owned());
    let mut words = kdf
        .strip_prefix("kdf: pbkdf2-sha256 ")
        .ok_or_else(|| malformed("no `kdf: pbkdf2-sha256` line"))?
        .split_whitespace();
    let iterations = words
        .next()
        .and_then(|n| n.parse::<u32>().ok())
        .filter(|n| (1..=MAX_ITERATIONS).contains(n))
        .ok_or_else(|| malformed("bad kdf rounds"))?;
    let salt = words
        .next()
        .and_then(|salt| B64.decode(salt).ok())
        .filter(|salt| !salt.is_empty() && words.next().is_none())
        .ok_or_else(|| malformed("bad kdf salt"))?;
    let body: String = lines.flat_map(|line| line.trim_end().chars()).collect();
    let payload = B64
        .decode(body)
        .ok()
        .filter(|payload| payload.len() >= NONCE_LEN + ring::aead::CHACHA20_POLY1305.tag_len())
        .ok_or(InviteError::WrongPassphrase)?;
    Ok(SealedParts {
        header: format!("{first}{kdf}"),
        iterations,
        salt,
        payload,
    })
}

/// Opens a sealed invite with `passphrase`, giving the plain invite text for [`parse`].
///
/// # Errors
/// [`InviteError::WrongPassphrase`] when the passphrase is wrong or the file was changed; the errors of
/// [`sealed_parts`].
pub fn open(data: &[u8], passphrase: &str) -> Result<Vec<u8>, InviteError> {
    let parts = sealed_parts(data)?;
    if passphrase.is_empty() {
        return Err(InviteError::EmptyPassphrase);
    }
    let key = sealing_key(passphrase, &parts.salt, parts.iterations)?;
    let (nonce, sealed) = parts.payload.split_at(NONCE_LEN);
    let nonce = ring::aead::Nonce::try_assume_unique_for_key(nonce)
        .map_err(|_| InviteError::WrongPassphrase)?;
    let mut sealed = sealed.to_vec();
    let plain = key
        .open_in_place(
            nonce,
            ring::aead::Aad::from(parts.header.as_bytes()),
            &mut sealed,
        )
        .map_err(|_| InviteError::WrongPassphrase)?;
    Ok(plain.to_vec())
}

fn sealing_key(
    passphrase: &str,
    salt: &[u8],
    iterations: u32,
) -> Result<ring::aead::LessSafeKey, InviteError> {
    let mut key = [0u8; 32];
    ring::pbkdf2::derive(
        ring::pbkdf2::PBKDF2_HMAC_SHA256,
        std::num::NonZeroU32::new(iterations).unwrap_or(std::num::NonZeroU32::MIN),
        salt,
        passphrase.as_bytes(),
        &mut key,
    );
    let unbound = ring::aead::UnboundKey::new(&ring::aead::CHACHA20_POLY1305, &key)
        .map_err(|_| InviteError::Malformed("no sealing key".to_owned()))?;
    Ok(ring::aead::LessSafeKey::new(unbound))
}

/// Parses an invite file. Checks the version line and the checksum before anything else, then the fields; does
/// not look inside the certificates (that is [`check`]).
///
/// # Errors
/// [`InviteError`] naming what is wrong. Never panics, whatever the input.
pub fn parse(data: &[u8]) -> Result<Invite, InviteError> {
    if is_sealed(data) {
        return Err(InviteError::Sealed);
    }
    let text = std::str::from_utf8(data).map_err(|_| InviteError::NotAnInvite)?;
    let first = text.lines().next().unwrap_or_default();
    let mut words = first.split_whitespace();
    if words.next() != Some(MAGIC) {
        return Err(InviteError::NotAnInvite);
    }
    match words.next() {
        Some(VERSION) if words.next().is_none() => {}
        other => return Err(InviteError::Version(other.unwrap_or_default().to_owned())),
    }

    // The checksum line is the last line; everything before it is summed.
    let trimmed = text.strip_suffix('\n').ok_or(InviteError::Checksum)?;
    let sum_start = trimmed.rfind('\n').map_or(0, |i| i + 1);
    let (body, sum_line) = text.split_at(sum_start);
    let sum = sum_line
        .trim_end_matches('\n')
        .strip_prefix("sha256: ")
        .ok_or(InviteError::Checksum)?;
    if !sum.eq_ignore_ascii_case(&sha256_hex(body.as_bytes())) {
        return Err(InviteError::Checksum);
    }

    let mut name = None;
    let mut servers = Vec::new();
    let mut pems: HashMap<&str, String> = HashMap::new();
    let mut open_pem: Option<&str> = None;
    for line in body.lines().skip(1) {
        if let Some(field) = open_pem {
            if line.starts_with("-----") || !line.contains(':') {
                let pem = pems.entry(field).or_default();
                pem.push_str(line);
                pem.push('\n');
                continue;
            }
            open_pem = None;
        }
        let Some((key, value)) = line.split_once(':') else {
            return Err(InviteError::Malformed(format!("unexpected line {line:?}")));
        };
        let value = value.trim();
        match key {
            "name" if name.is_none() && !value.is_empty() => name = Some(value.to_owned()),
            "server" if !value.is_empty() && !value.contains(char::is_whitespace) => {
                servers.push(value.to_owned());
            }
            "ca" | "cert" | "key" if value.is_empty() && !pems.contains_key(key) => {
                let field: &'static str = match key {
                    "ca" => "ca",
                    "cert" => "cert",
                    _ => "key",
                };
                open_pem = Some(field);
                pems.insert(field, String::new());
            }
            _ => return Err(InviteError::Malformed(format!("unexpected field {key:?}"))),
        }
    }
    let name = name.ok_or_else(|| InviteError::Malformed("no name".to_owned()))?;
    if servers.is_empty() {
        return Err(InviteError::Malformed("no server".to_owned()));
    }
    if let Some(bad) = servers.iter().find(|s| !server_valid(s)) {
        return Err(InviteError::Malformed(format!(
            "bad server address {bad:?}"
        )));
    }
    let mut take = |field: &str| {
        pems.remove(field)
            .filter(|pem| !pem.is_empty())
            .ok_or_else(|| InviteError::Malformed(format!("no {field}")))
    };
    Ok(Invite {
        name,
        servers,
        ca_cert: take("ca")?,
        cert: take("cert")?,
        key: take("key")?,
    })
}

/// Checks that the certificate was signed by the included CA, matches the included key, and is valid at `now`.
///
/// # Errors
/// [`InviteError::ForeignCa`], [`InviteError::KeyMismatch`], [`InviteError::Expired`],
/// [`InviteError::NotYetValid`], or [`InviteError::Malformed`] when a PEM block cannot be read.
pub fn check(invite: &Invite, now: OffsetDateTime) -> Result<(), InviteError> {
    let ca_der = cert_der("ca", &invite.ca_cert)?;
    let cert_der = cert_der("cert", &invite.cert)?;
    let (_, ca) = x509_parser::parse_x509_certificate(&ca_der)
        .map_err(|_| InviteError::Malformed("the CA certificate cannot be parsed".to_owned()))?;
    let (_, cert) = x509_parser::parse_x509_certificate(&cert_der)
        .map_err(|_| InviteError::Malformed("the certificate cannot be parsed".to_owned()))?;

    // Fluidity's CAs sign with ECDSA P-256 / SHA-256 (rcgen's default key); another algorithm cannot be ours.
    let ca_key = ring::signature::UnparsedPublicKey::new(
        &ring::signature::ECDSA_P256_SHA256_ASN1,
        ca.public_key().subject_public_key.data.as_ref(),
    );
    ca_key
        .verify(
            cert.tbs_certificate.as_ref(),
            cert.signature_value.data.as_ref(),
        )
        .map_err(|_| InviteError::ForeignCa)?;

    let key = rcgen::KeyPair::from_pem(&invite.key)
        .map_err(|_| InviteError::Malformed("the key cannot be read".to_owned()))?;
    if cert.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
        return Err(InviteError::KeyMismatch);
    }

    let validity = cert.validity();
    let not_after = validity.not_after.to_datetime();
    let not_before = validity.not_before.to_datetime();
    if now > not_after {
        return Err(InviteError::Expired(not_after));
    }
    if now < not_before {
        return Err(InviteError::NotYetValid(not_before));
    }
    Ok(())
}

/// The operating systems whose config folder [`default_dir`] knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Os {
    Linux,
    MacOs,
    Windows,
}

impl Os {
    /// The system this build runs on (other Unixes follow the XDG rule, like Linux).
    pub fn current() -> Self {
        if cfg!(windows) {
            Os::Windows
        } else if cfg!(target_os = "macos") {
            Os::MacOs
        } else {
            Os::Linux
        }
    }
}

/// The platform's config folder for Fluidity: `$XDG_CONFIG_HOME/fluidity` or `~/.config/fluidity` on Linux,
/// `~/Library/Application Support/fluidity` on macOS, `%APPDATA%\fluidity` on Windows. `None` when the variables
/// it needs are unset or empty.
pub fn default_dir(env: &HashMap<String, String>, os: Os) -> Option<PathBuf> {
    let var = |name: &str| env.get(name).filter(|v| !v.is_empty()).map(PathBuf::from);
    match os {
        Os::Linux => var("XDG_CONFIG_HOME")
            .filter(|p| p.is_absolute())
            .or_else(|| var("HOME").map(|home| home.join(".config")))
            .map(|base| base.join("fluidity")),
        Os::MacOs => var("HOME").map(|home| {
            home.join("Library")
                .join("Application Support")
                .join("fluidity")
        }),
        Os::Windows => var("APPDATA").map(|appdata| appdata.join("fluidity")),
    }
}

/// The `agent.yaml` text for `invite` with the certificates beside it in the same folder (relative paths resolve
/// against the config file's folder). One server is written as `server_ip` (+ `server_port` when the address has
/// one); several as a YAML list of `HOST:PORT` entries.
pub fn agent_yaml(invite: &Invite) -> String {
    let mut yaml = format!("# written by `fluidity join` for {}\n", invite.name);
    match invite.servers.as_slice() {
        [one] => {
            let (host, port) = split_server(one);
            let _ = writeln!(yaml, "server_ip: {}", yaml_quote(host));
            if let Some(port) = port {
                let _ = writeln!(yaml, "server_port: {port}");
            }
        }
        many => {
            yaml.push_str("server_ip:\n");
            for server in many {
                let _ = writeln!(yaml, "  - {}", yaml_quote(server));
            }
        }
    }
    yaml.push_str("cert_file: client.crt\nkey_file: client.key\nca_cert_file: ca.crt\n");
    yaml
}

/// Files `join` writes into its folder, with their contents and whether they hold a secret.
pub fn join_files(invite: &Invite) -> Vec<(&'static str, String, bool)> {
    vec![
        (AGENT_CONFIG_FILE, agent_yaml(invite), false),
        ("ca.crt", invite.ca_cert.clone(), false),
        ("client.crt", invite.cert.clone(), false),
        ("client.key", invite.key.clone(), true),
    ]
}

/// `HOST[:PORT]` split into host and port; `[v6]:PORT` and `[v6]` lose their brackets, a bare IPv6 literal has
/// no port.
fn split_server(server: &str) -> (&str, Option<&str>) {
    if let Some(rest) = server.strip_prefix('[')
        && let Some((host, after)) = rest.split_once(']')
    {
        return (host, after.strip_prefix(':'));
    }
    match server.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') => (host, Some(port)),
        _ => (server, None),
    }
}

/// A YAML scalar in double quotes (safe for any host text: `:` and `[` are not special inside).
fn yaml_quote(value: &str) -> String {
    format!("\"{}\"", value.replace('\\', "\\\\").replace('"', "\\\""))
}

fn cert_der(field: &str, pem: &str) -> Result<CertificateDer<'static>, InviteError> {
    CertificateDer::from_pem_slice(pem.as_bytes())
        .map_err(|_| InviteError::Malformed(format!("no PEM certificate in {field}")))
}

fn sha256_hex(data: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, data);
    digest.as_ref().iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// A server address is what the agent accepts as a `server_ip` entry: a host with an optional port from 1 to
/// 65535 (`[v6]:port` for IPv6 literals), so the `agent.yaml` that `join` writes always loads.
pub fn server_valid(server: &str) -> bool {
    crate::config::parse_server(server, crate::config::DEFAULT_SERVER_PORT).is_ok()
}
