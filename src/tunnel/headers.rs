//! Hop-by-hop header removal (RFC 9110 §7.6.1) and the proxy's own headers.
//!
//! [`strip_hop_headers`] applies to plain requests and responses crossing the tunnel. The upgrade path (WebSocket)
//! applies the same rules through [`strip_hop_headers_keeping_upgrade`], which then puts back what the upgrade
//! needs: `Connection: upgrade`, the `Upgrade` values, and every `Sec-WebSocket-*` header.

use http::header::{self, HeaderName};
use http::{HeaderMap, HeaderValue};

/// Headers that describe one hop and never travel further (RFC 9110 §7.6.1, plus the non-standard
/// `Proxy-Connection` and `Keep-Alive` that HTTP/1.0-era clients still send).
const HOP_BY_HOP: [HeaderName; 6] = [
    header::CONNECTION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    HeaderName::from_static("keep-alive"),
];

/// Removes hop-by-hop headers, every header that `Connection` names, and every `Proxy-*` header
/// (`Proxy-Authorization` holds the caller's credential for the agent and must never be forwarded).
///
/// One pass over the names, comparing: most heads have nothing to remove, and then nothing is allocated or hashed.
pub(crate) fn strip_hop_headers(headers: &mut HeaderMap) {
    // By bytes: a value with obs-text (bytes >= 0x80) is not `to_str`, but the names it lists still go.
    let listed: Vec<&[u8]> = headers
        .get_all(header::CONNECTION)
        .iter()
        .flat_map(|value| value.as_bytes().split(|b| *b == b','))
        .map(<[u8]>::trim_ascii)
        .filter(|name| !name.is_empty())
        .collect();
    let doomed: Vec<HeaderName> = headers
        .keys()
        .filter(|name| {
            HOP_BY_HOP.contains(name)
                || is_proxy_header(name)
                || listed
                    .iter()
                    .any(|listed| listed.eq_ignore_ascii_case(name.as_str().as_bytes()))
        })
        .cloned()
        .collect();
    for name in doomed {
        headers.remove(name);
    }
}

/// [`strip_hop_headers`] for the head of an upgrade request or of its `101` answer (RFC 9110 §7.8), keeping what the
/// upgrade needs: `Connection: upgrade` (only that: other names it listed go, with the headers they name), the
/// `Upgrade` values as given, and the `Sec-WebSocket-*` headers, which are end-to-end (RFC 6455 §4.1, §4.2.2) even
/// if `Connection` names them. Both travel as HTTP/1.1 inside a CONNECT stream, where they are legal.
pub(crate) fn strip_hop_headers_keeping_upgrade(headers: &mut HeaderMap) {
    let upgrade: Vec<HeaderValue> = headers.get_all(header::UPGRADE).iter().cloned().collect();
    let websocket: Vec<(HeaderName, HeaderValue)> = headers
        .iter()
        .filter(|(name, _)| name.as_str().starts_with("sec-websocket-"))
        .map(|(name, value)| (name.clone(), value.clone()))
        .collect();
    strip_hop_headers(headers);
    for (name, _) in &websocket {
        headers.remove(name);
    }
    for (name, value) in websocket {
        headers.append(name, value);
    }
    if !upgrade.is_empty() {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        for value in upgrade {
            headers.append(header::UPGRADE, value);
        }
    }
}

fn is_proxy_header(name: &HeaderName) -> bool {
    name.as_str().starts_with("proxy-")
}

/// True when the request asks to switch protocols (`Connection: upgrade` plus an `Upgrade` header).
pub(crate) fn wants_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
            .any(|token| token.trim().eq_ignore_ascii_case("upgrade"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        map
    }

    #[test]
    fn strips_hop_by_hop_and_proxy_headers() {
        let mut map = headers(&[
            ("connection", "keep-alive, x-drop-me"),
            ("keep-alive", "timeout=5"),
            ("x-drop-me", "1"),
            ("proxy-authorization", "Basic c2VjcmV0"),
            ("proxy-connection", "keep-alive"),
            ("te", "trailers"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "h2c"),
            ("trailer", "x-sum"),
            ("accept", "text/html"),
            ("x-multi", "a"),
            ("x-multi", "b"),
        ]);
        strip_hop_headers(&mut map);
        let mut left: Vec<&str> = map.keys().map(|k| k.as_str()).collect();
        left.sort_unstable();
        assert_eq!(left, ["accept", "x-multi"]);
        assert_eq!(map.get_all("x-multi").iter().count(), 2);
    }

    #[test]
    fn upgrade_heads_keep_only_what_the_upgrade_needs() {
        let mut map = headers(&[
            ("host", "evil.example"),
            (
                "connection",
                "Upgrade, keep-alive, x-drop-me, sec-websocket-key",
            ),
            ("upgrade", "websocket"),
            ("keep-alive", "timeout=5"),
            ("x-drop-me", "1"),
            ("proxy-authorization", "Basic c2VjcmV0"),
            ("proxy-connection", "keep-alive"),
            ("te", "trailers"),
            ("trailer", "x-sum"),
            ("transfer-encoding", "chunked"),
            ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
            ("sec-websocket-version", "13"),
            ("sec-websocket-protocol", "chat"),
            ("sec-websocket-protocol", "superchat"),
            ("origin", "http://example.com"),
        ]);
        strip_hop_headers_keeping_upgrade(&mut map);
        let mut left: Vec<&str> = map.keys().map(|k| k.as_str()).collect();
        left.sort_unstable();
        assert_eq!(
            left,
            [
                "connection",
                "host",
                "origin",
                "sec-websocket-key",
                "sec-websocket-protocol",
                "sec-websocket-version",
                "upgrade"
            ]
        );
        assert_eq!(map["connection"], "upgrade");
        assert_eq!(map["upgrade"], "websocket");
        assert_eq!(map["sec-websocket-key"], "dGhlIHNhbXBsZSBub25jZQ==");
        let protocols: Vec<_> = map.get_all("sec-websocket-protocol").iter().collect();
        assert_eq!(protocols, ["chat", "superchat"]);

        // A 101 answer: the same rules.
        let mut answer = headers(&[
            ("connection", "upgrade, keep-alive"),
            ("upgrade", "websocket"),
            ("keep-alive", "timeout=5"),
            ("sec-websocket-accept", "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
        ]);
        strip_hop_headers_keeping_upgrade(&mut answer);
        assert_eq!(answer.len(), 3);
        assert_eq!(answer["connection"], "upgrade");
    }

    #[test]
    fn detects_upgrade_requests() {
        assert!(wants_upgrade(&headers(&[
            ("connection", "keep-alive, Upgrade"),
            ("upgrade", "websocket"),
        ])));
        assert!(!wants_upgrade(&headers(&[("upgrade", "websocket")])));
        assert!(!wants_upgrade(&headers(&[("connection", "upgrade")])));
    }

    /// Found by `cargo fuzz run headers` (fuzz/README.md): one non-ASCII byte in a `Connection` value made the whole
    /// value unreadable as text, so the names it listed were forwarded.
    #[test]
    fn strips_names_listed_beside_non_ascii_bytes() {
        let mut map = HeaderMap::new();
        map.append(
            header::CONNECTION,
            HeaderValue::from_bytes(b"x-drop-me, \xff").unwrap(),
        );
        map.append("x-drop-me", HeaderValue::from_static("1"));
        map.append("accept", HeaderValue::from_static("*/*"));
        strip_hop_headers(&mut map);
        let left: Vec<&str> = map.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, ["accept"]);
    }
}
