//! `GET /proxy.pac` evaluated by a real JavaScript engine: Node.js runs the file in `vm` with the standard PAC
//! helpers (the resolving ones throw, so a PAC that resolved a name would fail) against a table of URLs.
#![allow(
    clippy::unwrap_used,
    reason = "test helpers fail the test by panicking"
)]

mod common;

use common::*;
use fluidity::config::{DEFAULT_DIRECT_TARGETS, ProxyAuth};
use std::io::Write as _;
use std::process::{Command, Stdio};

/// Runs `FindProxyForURL(url, host)` from `pac` for each `(url, host)` in Node.js; one answer per pair.
const HARNESS: &str = r#"
const vm = require("vm");
let pac = "";
process.stdin.on("data", (d) => (pac += d));
process.stdin.on("end", () => {
  const resolving = (name) => () => { throw new Error(name + " called: a PAC must not resolve names"); };
  const sandbox = {
    isPlainHostName: (h) => h.indexOf(".") < 0,
    dnsDomainIs: (h, d) => h.length >= d.length && h.substring(h.length - d.length) === d,
    shExpMatch: (s, p) => new RegExp("^" + p.replace(/[.+^${}()|[\]\\]/g, "\\$&").replace(/\*/g, ".*").replace(/\?/g, ".") + "$").test(s),
    isInNet: resolving("isInNet"),
    dnsResolve: resolving("dnsResolve"),
    isResolvable: resolving("isResolvable"),
    myIpAddress: resolving("myIpAddress"),
  };
  vm.createContext(sandbox);
  vm.runInContext(pac, sandbox);
  const table = JSON.parse(process.argv[1]);
  for (const [url, host] of table) console.log(sandbox.FindProxyForURL(url, host));
});
"#;

fn node_answers(pac: &str, table: &[(&str, &str, &str)]) -> Vec<String> {
    let json = format!(
        "[{}]",
        table
            .iter()
            .map(|(url, host, _)| format!("[\"{url}\",\"{host}\"]"))
            .collect::<Vec<_>>()
            .join(",")
    );
    let mut child = match Command::new("node")
        .arg("-e")
        .arg(HARNESS)
        .arg(json)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(child) => child,
        Err(err) => panic!(
            "this test needs Node.js (`node`) to evaluate the PAC file: {err}; install it with \
             `apt-get install -y nodejs`"
        ),
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(pac.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "node failed: {}\nPAC:\n{pac}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

#[tokio::test]
async fn the_pac_file_sends_direct_targets_direct_and_the_rest_to_the_agent() {
    within(30, async {
        let t = tunnel_with(
            |_| {},
            |agent| {
                agent.direct_targets = DEFAULT_DIRECT_TARGETS
                    .iter()
                    .map(|r| (*r).to_owned())
                    .chain(
                        [
                            ":2222",
                            "*.corp.example",
                            "example.org:8443",
                            "[2001:db8::]/32:22",
                        ]
                        .map(str::to_owned),
                    )
                    .collect();
                agent.proxy_auth = ProxyAuth::parse("alice:s3cret");
            },
        )
        .await;
        let agent = t.agent.addr;
        let host = agent.to_string();
        let (head, pac) = get_own(agent, "/proxy.pac", &host, "").await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert!(
            head.to_ascii_lowercase()
                .contains("content-type: application/x-ns-proxy-autoconfig"),
            "{head}"
        );
        // Served without proxy_auth (browsers fetch PAC files without proxy credentials), and the same with a
        // query string.
        let (head, again) = get_own(agent, "/proxy.pac?nocache=1", &host, "").await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert_eq!(again, pac);

        let proxy = format!("PROXY {host}");
        let table: &[(&str, &str, &str)] = &[
            ("http://127.0.0.1:5000/", "127.0.0.1", "DIRECT"),
            ("http://127.9.9.9/", "127.9.9.9", "DIRECT"),
            ("http://10.1.2.3/", "10.1.2.3", "DIRECT"),
            ("http://172.31.255.255/", "172.31.255.255", "DIRECT"),
            ("http://172.32.0.1/", "172.32.0.1", "PROXY"),
            ("http://192.168.1.1/", "192.168.1.1", "DIRECT"),
            ("http://169.254.169.254/", "169.254.169.254", "DIRECT"),
            ("http://8.8.8.8/", "8.8.8.8", "PROXY"),
            ("http://010.0.0.1/", "010.0.0.1", "PROXY"),
            ("http://[::1]:8080/", "::1", "DIRECT"),
            ("http://[::1]:8080/", "[::1]", "DIRECT"),
            ("http://[fe80::1]/", "fe80::1", "DIRECT"),
            ("http://[fd12:3456::1]/", "fd12:3456::1", "DIRECT"),
            ("http://[::ffff:10.0.0.1]/", "::ffff:10.0.0.1", "DIRECT"),
            ("http://[::ffff:8.8.8.8]/", "::ffff:8.8.8.8", "PROXY"),
            ("http://[2606:4700::1111]/", "2606:4700::1111", "PROXY"),
            ("ssh://[2001:db8::5]:22/", "2001:db8::5", "DIRECT"),
            ("https://[2001:db8::5]/", "2001:db8::5", "PROXY"),
            ("http://localhost:3000/", "localhost", "DIRECT"),
            ("http://LOCALHOST./", "LOCALHOST.", "DIRECT"),
            ("http://printer.local/", "printer.local", "DIRECT"),
            ("http://local/", "local", "PROXY"),
            ("http://notlocal/", "notlocal", "PROXY"),
            ("https://example.com/", "example.com", "PROXY"),
            ("http://10.example.com/", "10.example.com", "PROXY"),
            ("http://example.com:2222/", "example.com", "DIRECT"),
            ("https://wiki.corp.example/", "wiki.corp.example", "DIRECT"),
            ("https://corp.example/", "corp.example", "PROXY"),
            ("https://badcorp.example/", "badcorp.example", "PROXY"),
            ("https://example.org:8443/", "example.org", "DIRECT"),
            ("https://example.org/", "example.org", "PROXY"),
            ("http://example.org:8443/", "example.org", "DIRECT"),
        ];
        let answers = node_answers(&pac, table);
        assert_eq!(answers.len(), table.len(), "{answers:?}");
        for ((url, host, expected), got) in table.iter().zip(&answers) {
            let expected = if *expected == "PROXY" {
                proxy.as_str()
            } else {
                expected
            };
            assert_eq!(got, expected, "FindProxyForURL({url:?}, {host:?})");
        }

        // The proxy address is the one the caller used.
        let (_, named) = get_own(agent, "/proxy.pac", "localhost:8080", "").await;
        assert!(named.contains("\"PROXY localhost:8080\""), "{named}");
        // A Host that could break out of the string is not used as is.
        let (_, odd) = get_own(agent, "/proxy.pac", "a\"b", "").await;
        assert!(!odd.contains("a\"b"), "{odd}");
    })
    .await;
}

#[tokio::test]
async fn an_empty_rule_list_sends_everything_to_the_agent() {
    within(20, async {
        let t = tunnel().await;
        let host = t.agent.addr.to_string();
        let (_, pac) = get_own(t.agent.addr, "/proxy.pac", &host, "").await;
        let proxy = format!("PROXY {host}");
        let answers = node_answers(
            &pac,
            &[
                ("http://127.0.0.1/", "127.0.0.1", ""),
                ("http://localhost/", "localhost", ""),
            ],
        );
        assert_eq!(answers, [proxy.clone(), proxy]);
    })
    .await;
}
