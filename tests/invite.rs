//! The invite file through the library: what `certs invite` writes, `join` reads back whole, and every damaged,
//! foreign, expired or wrongly sealed file is refused with its own error. (The commands themselves, and an agent
//! joined from an invite carrying a request, are in tests/cli.rs.)

use fluidity::certs::{self, Pem};
use fluidity::invite::{self, Invite, InviteError, Os};
use std::collections::HashMap;
use time::{Duration, OffsetDateTime};

/// Rounds small enough for a debug build; the command uses `invite::SEAL_ITERATIONS`.
const TEST_ROUNDS: u32 = 1_000;

fn ca() -> Pem {
    certs::generate_ca("test CA", 30).expect("a CA")
}

fn invite_from(ca: &Pem, servers: &[&str]) -> Invite {
    let client = certs::issue_client(ca, "laptop", 30).expect("a client certificate");
    Invite {
        name: "laptop".to_owned(),
        servers: servers.iter().map(|s| (*s).to_owned()).collect(),
        ca_cert: ca.cert.clone(),
        cert: client.cert,
        key: client.key,
    }
}

#[test]
fn an_encoded_invite_parses_back_whole_and_passes_its_checks() {
    let ca = ca();
    let original = invite_from(
        &ca,
        &["vpn.example.net:8443", "[2001:db8::1]:443", "10.0.0.1"],
    );
    let text = invite::encode(&original);
    assert!(text.starts_with("fluidity-invite v1\n"), "{text}");
    let parsed = invite::parse(text.as_bytes()).expect("parses");
    assert_eq!(parsed, original);
    invite::check(&parsed, OffsetDateTime::now_utc()).expect("a fresh invite passes");
}

#[test]
fn a_truncated_or_changed_invite_fails_its_checksum() {
    let text = invite::encode(&invite_from(&ca(), &["vpn.example.net"]));
    for cut in [text.len() - 1, text.len() / 2, text.find('\n').unwrap() + 1] {
        assert_eq!(
            invite::parse(&text.as_bytes()[..cut]),
            Err(InviteError::Checksum),
            "cut at {cut}"
        );
    }
    let changed = text.replace("vpn.example.net", "vpn.example.org");
    assert_eq!(
        invite::parse(changed.as_bytes()),
        Err(InviteError::Checksum)
    );
}

#[test]
fn other_files_and_versions_are_refused_by_name() {
    assert_eq!(
        invite::parse(b"-----BEGIN CERTIFICATE-----\n"),
        Err(InviteError::NotAnInvite)
    );
    assert_eq!(invite::parse(b""), Err(InviteError::NotAnInvite));
    assert_eq!(invite::parse(&[0xff, 0xfe]), Err(InviteError::NotAnInvite));
    assert_eq!(
        invite::parse(b"fluidity-invite v2\n"),
        Err(InviteError::Version("v2".to_owned()))
    );
}

#[test]
fn an_invite_whose_certificate_another_ca_signed_is_foreign() {
    let mut invite = invite_from(&ca(), &["vpn.example.net"]);
    invite.ca_cert = ca().cert;
    let reparsed = invite::parse(invite::encode(&invite).as_bytes()).expect("parses");
    assert_eq!(
        invite::check(&reparsed, OffsetDateTime::now_utc()),
        Err(InviteError::ForeignCa)
    );
}

#[test]
fn an_invite_whose_key_is_another_certificates_is_refused() {
    let ca = ca();
    let mut invite = invite_from(&ca, &["vpn.example.net"]);
    invite.key = certs::issue_client(&ca, "other", 30).unwrap().key;
    assert_eq!(
        invite::check(&invite, OffsetDateTime::now_utc()),
        Err(InviteError::KeyMismatch)
    );
}

#[test]
fn an_expired_or_not_yet_valid_certificate_is_refused_with_its_date() {
    let ca = ca();
    let now = OffsetDateTime::now_utc();
    let invite = invite_from(&ca, &["vpn.example.net"]);
    assert!(matches!(
        invite::check(&invite, now + Duration::days(31)),
        Err(InviteError::Expired(_))
    ));
    assert!(matches!(
        invite::check(&invite, now - Duration::days(2)),
        Err(InviteError::NotYetValid(_))
    ));
    let expired = certs::issue_client_with_validity(
        &ca,
        "laptop",
        now - Duration::days(10),
        now - Duration::days(1),
    )
    .unwrap();
    let message = invite::check(
        &Invite {
            cert: expired.cert,
            key: expired.key,
            ..invite
        },
        now,
    )
    .unwrap_err()
    .to_string();
    assert!(message.contains("expired"), "{message}");
    assert!(!message.contains('\n'), "{message}");
}

#[test]
fn a_sealed_invite_opens_with_its_passphrase_only() {
    let plain = invite::encode(&invite_from(&ca(), &["vpn.example.net:8443"]));
    let sealed = invite::seal(&plain, "correct horse", TEST_ROUNDS).expect("seals");
    assert!(invite::is_sealed(sealed.as_bytes()));
    assert!(!invite::is_sealed(plain.as_bytes()));
    assert!(
        !sealed.contains("BEGIN") && !sealed.contains("vpn.example.net"),
        "{sealed}"
    );
    assert!(sealed.lines().all(|line| line.len() <= 76), "{sealed}");

    assert_eq!(
        invite::open(sealed.as_bytes(), "correct horse").expect("opens"),
        plain.as_bytes()
    );
    assert_eq!(
        invite::open(sealed.as_bytes(), "wrong horse"),
        Err(InviteError::WrongPassphrase)
    );
    assert_eq!(
        invite::parse(sealed.as_bytes()),
        Err(InviteError::Sealed),
        "a sealed file asks for its passphrase"
    );
    // Two seals of the same text differ (fresh salt and nonce).
    assert_ne!(
        invite::seal(&plain, "correct horse", TEST_ROUNDS).unwrap(),
        sealed
    );
}

#[test]
fn a_changed_or_truncated_sealed_invite_does_not_open() {
    let plain = invite::encode(&invite_from(&ca(), &["vpn.example.net"]));
    let sealed = invite::seal(&plain, "pass", TEST_ROUNDS).unwrap();
    // The header is authenticated too: fewer rounds (a cheaper guess) is caught.
    let fewer_rounds = sealed.replacen(&format!(" {TEST_ROUNDS} "), " 999 ", 1);
    assert_ne!(fewer_rounds, sealed);
    assert_eq!(
        invite::open(fewer_rounds.as_bytes(), "pass"),
        Err(InviteError::WrongPassphrase)
    );
    let lines: Vec<&str> = sealed.lines().collect();
    let truncated = lines[..lines.len() - 1].join("\n") + "\n";
    assert_eq!(
        invite::open(truncated.as_bytes(), "pass"),
        Err(InviteError::WrongPassphrase)
    );
    let mut flipped = sealed.clone().into_bytes();
    let last_line = sealed.trim_end().rfind('\n').unwrap() + 2;
    flipped[last_line] = if flipped[last_line] == b'A' {
        b'B'
    } else {
        b'A'
    };
    assert_eq!(
        invite::open(&flipped, "pass"),
        Err(InviteError::WrongPassphrase)
    );
    for bad in [
        "fluidity-invite v1 sealed\n",
        "fluidity-invite v1 sealed\nkdf: pbkdf2-sha256 0 AAAA\nAAAA\n",
        "fluidity-invite v1 sealed\nkdf: pbkdf2-sha256 4294967295 AAAA\nAAAA\n",
        "fluidity-invite v1 sealed\nkdf: scrypt 1 AAAA\nAAAA\n",
    ] {
        assert!(
            matches!(
                invite::open(bad.as_bytes(), "pass"),
                Err(InviteError::Malformed(_))
            ),
            "{bad:?}"
        );
    }
    assert_eq!(
        invite::seal(&plain, "", TEST_ROUNDS),
        Err(InviteError::EmptyPassphrase)
    );
}

#[test]
fn agent_yaml_names_one_server_by_ip_and_port_and_several_as_a_list() {
    let ca = ca();
    let one = invite::agent_yaml(&invite_from(&ca, &["[2001:db8::1]:443"]));
    assert!(one.contains("server_ip: \"2001:db8::1\"\n"), "{one}");
    assert!(one.contains("server_port: 443\n"), "{one}");
    let bare = invite::agent_yaml(&invite_from(&ca, &["vpn.example.net"]));
    assert!(!bare.contains("server_port"), "{bare}");
    let many = invite::agent_yaml(&invite_from(&ca, &["a.example:1", "b.example"]));
    assert!(
        many.contains("server_ip:\n  - \"a.example:1\"\n  - \"b.example\"\n"),
        "{many}"
    );
    for file in [
        "cert_file: client.crt",
        "key_file: client.key",
        "ca_cert_file: ca.crt",
    ] {
        assert!(many.contains(file), "{many}");
    }
}

#[test]
fn server_addresses_need_a_host_and_a_port_in_range() {
    for good in [
        "h",
        "h:1",
        "h:65535",
        "10.0.0.1:8443",
        "[::1]:443",
        "::1",
        "[::1]",
    ] {
        assert!(invite::server_valid(good), "{good}");
    }
    for bad in ["", ":443", "h:0", "h:65536", "h:x", "[]:1"] {
        assert!(!invite::server_valid(bad), "{bad}");
    }
}

#[test]
fn the_default_folder_follows_each_platforms_convention() {
    let env = |pairs: &[(&str, &str)]| -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    };
    let home = env(&[("HOME", "/home/u")]);
    assert_eq!(
        invite::default_dir(&home, Os::Linux).unwrap(),
        std::path::Path::new("/home/u/.config/fluidity")
    );
    assert_eq!(
        invite::default_dir(
            &env(&[("HOME", "/h"), ("XDG_CONFIG_HOME", "/x")]),
            Os::Linux
        )
        .unwrap(),
        std::path::Path::new("/x/fluidity")
    );
    assert_eq!(
        invite::default_dir(
            &env(&[("HOME", "/h"), ("XDG_CONFIG_HOME", "rel")]),
            Os::Linux
        )
        .unwrap(),
        std::path::Path::new("/h/.config/fluidity"),
        "a relative XDG_CONFIG_HOME is ignored"
    );
    assert_eq!(
        invite::default_dir(&home, Os::MacOs).unwrap(),
        std::path::Path::new("/home/u/Library/Application Support/fluidity")
    );
    assert!(invite::default_dir(&home, Os::Windows).is_none());
    assert!(invite::default_dir(&env(&[("HOME", "")]), Os::Linux).is_none());
}
