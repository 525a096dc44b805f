//! Black-box tests of the built `fluidity` binary: `certs` files, exit codes and messages, configuration precedence,
//! `--save`, signals, and a real server and agent carrying a request.
//!
//! Every child runs with a cleared environment in a fresh temp dir, is killed when its guard drops, and every wait
//! polls a condition against a deadline.

use std::fs;
use std::io::{self, Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tempfile::TempDir;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

// Only the port helpers of the in-process harness: this file has a harness of its own for the binary.
#[path = "common/ports.rs"]
#[allow(
    unreachable_pub,
    reason = "`pub` for the harness that re-exports it; private to this test crate"
)]
mod ports;

use ports::{ReservedPort, closed_port};

const BIN: &str = env!("CARGO_BIN_EXE_fluidity");
/// How often a condition is re-checked.
const POLL: Duration = Duration::from_millis(20);
/// How long a one-shot command (`certs ...`, a config error) may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a role may take to start listening, connect its tunnel or print a line.
const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a role may take to exit after a signal (the drain grace period is 10 s).
const EXIT_TIMEOUT: Duration = Duration::from_secs(15);
/// Connect, read and write limit of the test's own sockets.
const IO_TIMEOUT: Duration = Duration::from_secs(5);

const CERT_FILES: [&str; 3] = ["ca.crt", "server.crt", "client.crt"];
const KEY_FILES: [&str; 3] = ["ca.key", "server.key", "client.key"];

// ---------------------------------------------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------------------------------------------

/// A `fluidity` command with a cleared environment (PATH and HOME only), run in `dir`.
fn fluidity(dir: &Path) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", dir)
        .current_dir(dir);
    cmd
}

/// A spawned child whose stdout and stderr are collected in the background; killed on drop.
struct Proc {
    child: Child,
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
    readers: Vec<JoinHandle<()>>,
    /// The ports the child was told to listen on, kept this test's until the child is gone.
    ports: Vec<ReservedPort>,
}

/// How a finished child ended and what it wrote.
struct Finished {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

fn collect(mut pipe: impl io::Read + Send + 'static, into: Arc<Mutex<String>>) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = pipe.read(&mut buf) {
            if n == 0 {
                break;
            }
            into.lock()
                .expect("output lock")
                .push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    })
}

impl Proc {
    fn spawn(cmd: &mut Command) -> Self {
        Self::spawn_with_input(cmd, None)
    }

    /// Like [`Proc::spawn`], writing `input` (when some) to the child's stdin and closing it.
    fn spawn_with_input(cmd: &mut Command, input: Option<&[u8]>) -> Self {
        let stdin = if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        };
        let mut child = cmd
            .stdin(stdin)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn fluidity");
        let stdout = Arc::new(Mutex::new(String::new()));
        let stderr = Arc::new(Mutex::new(String::new()));
        let readers = vec![
            collect(child.stdout.take().expect("piped stdout"), stdout.clone()),
            collect(child.stderr.take().expect("piped stderr"), stderr.clone()),
        ];
        if let Some(input) = input {
            let mut pipe = child.stdin.take().expect("piped stdin");
            pipe.write_all(input).expect("write the child's stdin");
        }
        Self {
            child,
            stdout,
            stderr,
            readers,
            ports: Vec::new(),
        }
    }

    /// Keeps `ports` reserved for as long as the child lives.
    fn holding(mut self, ports: impl IntoIterator<Item = ReservedPort>) -> Self {
        self.ports.extend(ports);
        self
    }

    fn stdout(&self) -> String {
        self.stdout.lock().expect("output lock").clone()
    }

    fn stderr(&self) -> String {
        self.stderr.lock().expect("output lock").clone()
    }

    /// Panics with the child's stderr if it has already exited.
    fn assert_running(&mut self) {
        if let Some(status) = self.child.try_wait().expect("poll the child") {
            // Let the readers drain what the child wrote before it went.
            for reader in self.readers.drain(..) {
                let _ = reader.join();
            }
            panic!(
                "fluidity exited early with {status}\nstdout:\n{}\nstderr:\n{}",
                self.stdout(),
                self.stderr()
            );
        }
    }

    /// Polls `check` until it returns `Some`, failing if the child exits or `timeout` passes.
    fn wait_for<T>(
        &mut self,
        what: &str,
        timeout: Duration,
        mut check: impl FnMut(&Self) -> Option<T>,
    ) -> T {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(value) = check(self) {
                return value;
            }
            self.assert_running();
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}\nstdout:\n{}\nstderr:\n{}",
                self.stdout(),
                self.stderr()
            );
            std::thread::sleep(POLL);
        }
    }

    /// Waits until `GET path` on `addr` answers `status`.
    fn wait_for_status(&mut self, addr: SocketAddr, path: &str, status: u16) {
        self.wait_for(
            &format!("GET http://{addr}{path} to answer {status}"),
            READY_TIMEOUT,
            |_| matches!(get(addr, path), Ok((s, _)) if s == status).then_some(()),
        );
    }

    fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{name} failed: {status}");
    }

    /// Waits for the child to exit, killing it and failing after `timeout`.
    fn wait_exit(mut self, timeout: Duration) -> Finished {
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("poll the child") {
                break status;
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "fluidity did not exit within {timeout:?}\nstdout:\n{}\nstderr:\n{}",
                    self.stdout(),
                    self.stderr()
                );
            }
            std::thread::sleep(POLL);
        };
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
        Finished {
            status,
            stdout: self.stdout(),
            stderr: self.stderr(),
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs a command that is expected to finish on its own.
fn run(cmd: &mut Command) -> Finished {
    Proc::spawn(cmd).wait_exit(COMMAND_TIMEOUT)
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, port))
}

/// Sends `request` (which should ask for `Connection: close`) and returns the status code and everything after the
/// head.
fn http(addr: SocketAddr, request: &str) -> io::Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT)?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    stream.write_all(request.as_bytes())?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    let text = String::from_utf8_lossy(&response).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| io::Error::other(format!("no complete response head: {text:?}")))?;
    let status = head
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| io::Error::other(format!("bad status line: {head:?}")))?;
    Ok((status, body.to_owned()))
}

/// `GET path` in origin form, as to the agent's or server's own endpoints.
fn get(addr: SocketAddr, path: &str) -> io::Result<(u16, String)> {
    http(
        addr,
        &format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"),
    )
}

fn refuses_connections(addr: SocketAddr) -> bool {
    TcpStream::connect_timeout(&addr, IO_TIMEOUT).is_err()
}

/// `fluidity certs init --out dir/certs`; returns that folder.
fn certs_init(dir: &Path) -> PathBuf {
    let out = dir.join("certs");
    let done = run(fluidity(dir).args(["certs", "init", "--out"]).arg(&out));
    assert!(done.status.success(), "certs init failed: {}", done.stderr);
    out
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path)
        .expect("file metadata")
        .permissions()
        .mode()
        & 0o777
}

fn assert_pem(path: &Path, label: &str) {
    let text = fs::read_to_string(path).expect("read PEM file");
    assert!(
        text.starts_with(&format!("-----BEGIN {label}-----")) && text.contains("-----END "),
        "{} is not PEM {label}: {text}",
        path.display()
    );
}

fn assert_private_key(path: &Path) {
    let text = fs::read_to_string(path).expect("read key file");
    assert!(
        text.starts_with("-----BEGIN ") && text.contains("PRIVATE KEY-----"),
        "{} is not a PEM private key",
        path.display()
    );
    assert_eq!(mode(path), 0o600, "mode of {}", path.display());
}

/// `openssl args...` stdout, or `None` when openssl is not installed.
fn openssl(args: &[&str]) -> Option<String> {
    let output = Command::new("openssl").args(args).output().ok()?;
    assert!(
        output.status.success(),
        "openssl {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Some(String::from_utf8_lossy(&output.stdout).into_owned())
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("UTF-8 temp path")
}

fn write_file(path: &Path, text: &str) {
    fs::write(path, text).expect("write file");
}

fn assert_exit_code(done: &Finished, code: i32) {
    assert_eq!(
        done.status.code(),
        Some(code),
        "stdout:\n{}\nstderr:\n{}",
        done.stdout,
        done.stderr
    );
}

// ---------------------------------------------------------------------------------------------------------------
// version
// ---------------------------------------------------------------------------------------------------------------

/// `--version` prints `fluidity VERSION (COMMIT, TARGET)`: the crate version, the short hash of the commit the
/// binary was built from (the checkout's HEAD, or "unknown" outside git) and a target triple for this platform.
#[test]
fn version_names_the_crate_version_commit_and_target() {
    let tmp = TempDir::new().unwrap();
    for flag in ["--version", "-V"] {
        let done = run(fluidity(tmp.path()).arg(flag));
        assert_exit_code(&done, 0);
        let line = done.stdout.trim_end();
        let prefix = format!("fluidity {} (", env!("CARGO_PKG_VERSION"));
        let inner = line
            .strip_prefix(&prefix)
            .and_then(|rest| rest.strip_suffix(')'))
            .unwrap_or_else(|| panic!("{flag}: {line:?} is not `{prefix}COMMIT, TARGET)`"));
        let (commit, target) = inner
            .split_once(", ")
            .unwrap_or_else(|| panic!("{flag}: {line:?} has no `COMMIT, TARGET`"));

        let head = Command::new("git")
            .args([
                "-C",
                env!("CARGO_MANIFEST_DIR"),
                "rev-parse",
                "--short",
                "HEAD",
            ])
            .output()
            .ok()
            .filter(|out| out.status.success())
            .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_string());
        match head {
            Some(head) => assert_eq!(commit, head, "{flag}: {line:?}"),
            None => assert_eq!(commit, "unknown", "{flag}: {line:?}"),
        }

        let parts: Vec<&str> = target.split('-').collect();
        assert!(
            parts.len() >= 3,
            "{flag}: target {target:?} is not a triple"
        );
        assert_eq!(parts[0], std::env::consts::ARCH, "{flag}: {line:?}");
        let os = match std::env::consts::OS {
            "macos" => "darwin",
            os => os,
        };
        assert!(target.contains(os), "{flag}: {line:?}");
    }
}

// ---------------------------------------------------------------------------------------------------------------
// certs
// ---------------------------------------------------------------------------------------------------------------

#[test]
fn certs_init_writes_pem_certificates_and_private_keys_with_mode_0600() {
    let tmp = TempDir::new().unwrap();
    let out = certs_init(tmp.path());
    for name in CERT_FILES {
        assert_pem(&out.join(name), "CERTIFICATE");
    }
    for name in KEY_FILES {
        assert_private_key(&out.join(name));
    }
    if let Some(text) = openssl(&[
        "x509",
        "-noout",
        "-text",
        "-in",
        path_str(&out.join("server.crt")),
    ]) {
        assert!(text.contains("DNS:localhost"), "{text}");
        assert!(text.contains("IP Address:127.0.0.1"), "{text}");
    }
}

#[test]
fn certs_init_refuses_to_overwrite_without_force_and_overwrites_with_it() {
    let tmp = TempDir::new().unwrap();
    let out = certs_init(tmp.path());
    let read_all = || -> Vec<Vec<u8>> {
        CERT_FILES
            .iter()
            .chain(&KEY_FILES)
            .map(|name| fs::read(out.join(name)).unwrap())
            .collect()
    };
    let before = read_all();

    let again = run(fluidity(tmp.path())
        .args(["certs", "init", "--out"])
        .arg(&out));
    assert!(
        !again.status.success(),
        "second init succeeded: {}",
        again.stdout
    );
    assert!(
        CERT_FILES
            .iter()
            .chain(&KEY_FILES)
            .any(|name| again.stderr.contains(path_str(&out.join(name)))),
        "the message names no existing file: {}",
        again.stderr
    );
    assert!(again.stderr.contains("--force"), "{}", again.stderr);
    assert_eq!(read_all(), before, "a refused init changed the files");

    let forced = run(fluidity(tmp.path())
        .args(["certs", "init", "--force", "--out"])
        .arg(&out));
    assert!(
        forced.status.success(),
        "init --force failed: {}",
        forced.stderr
    );
    let after = read_all();
    assert!(
        after.iter().zip(&before).all(|(new, old)| new != old),
        "init --force did not replace every file"
    );
    for name in KEY_FILES {
        assert_private_key(&out.join(name));
    }
}

#[test]
fn certs_init_if_missing_writes_once_then_exits_0_writing_nothing_but_refuses_a_partial_set() {
    let tmp = TempDir::new().unwrap();
    let out = tmp.path().join("certs");
    let init = || {
        run(fluidity(tmp.path())
            .args(["certs", "init", "--if-missing", "--out"])
            .arg(&out))
    };
    let first = init();
    assert_exit_code(&first, 0);
    for name in KEY_FILES {
        assert_private_key(&out.join(name));
    }
    let read_all = || -> Vec<Vec<u8>> {
        CERT_FILES
            .iter()
            .chain(&KEY_FILES)
            .map(|name| fs::read(out.join(name)).unwrap())
            .collect()
    };
    let before = read_all();

    let second = init();
    assert_exit_code(&second, 0);
    assert!(
        second.stdout.contains("nothing written"),
        "{}",
        second.stdout
    );
    assert_eq!(read_all(), before, "--if-missing rewrote existing files");

    fs::remove_file(out.join("client.key")).unwrap();
    let partial = init();
    assert_exit_code(&partial, 1);
    assert!(partial.stderr.contains("--force"), "{}", partial.stderr);
    assert!(
        !out.join("client.key").exists(),
        "a partial set was completed with a key from another CA"
    );
}

#[test]
fn certs_init_server_san_values_are_in_the_server_certificate() {
    let tmp = TempDir::new().unwrap();
    let out = tmp.path().join("pki");
    let done = run(fluidity(tmp.path())
        .args(["certs", "init", "--server-san", "tunnel.example.net"])
        .args(["--server-san", "192.0.2.10", "--out"])
        .arg(&out));
    assert!(done.status.success(), "certs init failed: {}", done.stderr);
    assert_pem(&out.join("server.crt"), "CERTIFICATE");
    if let Some(text) = openssl(&[
        "x509",
        "-noout",
        "-text",
        "-in",
        path_str(&out.join("server.crt")),
    ]) {
        assert!(text.contains("DNS:tunnel.example.net"), "{text}");
        assert!(text.contains("IP Address:192.0.2.10"), "{text}");
        assert!(!text.contains("DNS:localhost"), "defaults kept: {text}");
    }
}

#[test]
fn certs_issue_writes_a_client_pair_and_revoke_writes_the_crl() {
    let tmp = TempDir::new().unwrap();
    let ca_dir = certs_init(tmp.path());
    let out = tmp.path().join("issued");
    let issued = run(fluidity(tmp.path())
        .args(["certs", "issue", "--client", "bob", "--ca-dir"])
        .arg(&ca_dir)
        .arg("--out")
        .arg(&out));
    assert!(
        issued.status.success(),
        "certs issue failed: {}",
        issued.stderr
    );
    let bob = out.join("bob.crt");
    assert_pem(&bob, "CERTIFICATE");
    assert_private_key(&out.join("bob.key"));
    if let Some(text) = openssl(&[
        "verify",
        "-CAfile",
        path_str(&ca_dir.join("ca.crt")),
        path_str(&bob),
    ]) {
        assert!(text.contains(": OK"), "{text}");
    }

    let crl = ca_dir.join("crl.pem");
    assert!(!crl.exists());
    let revoked = run(fluidity(tmp.path())
        .args(["certs", "revoke", "--ca-dir"])
        .arg(&ca_dir)
        .arg("--cert")
        .arg(&bob));
    assert!(
        revoked.status.success(),
        "certs revoke failed: {}",
        revoked.stderr
    );
    assert_pem(&crl, "X509 CRL");
    if let Some(serial) = openssl(&["x509", "-noout", "-serial", "-in", path_str(&bob)]) {
        let serial = serial.trim().trim_start_matches("serial=");
        let text = openssl(&["crl", "-noout", "-text", "-in", path_str(&crl)]).unwrap();
        assert!(
            text.contains(&format!("Serial Number: {serial}")),
            "{serial} not in {text}"
        );
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Exit codes and messages
// ---------------------------------------------------------------------------------------------------------------

#[test]
fn unknown_subcommand_exits_2() {
    let tmp = TempDir::new().unwrap();
    let done = run(fluidity(tmp.path()).arg("tunnelize"));
    assert_exit_code(&done, 2);
    assert!(done.stderr.contains("tunnelize"), "{}", done.stderr);
}

#[test]
fn unknown_flag_exits_2() {
    let tmp = TempDir::new().unwrap();
    let done = run(fluidity(tmp.path()).args(["agent", "--server-ipp", "127.0.0.1"]));
    assert_exit_code(&done, 2);
    assert!(done.stderr.contains("--server-ipp"), "{}", done.stderr);
}

#[test]
fn agent_without_server_ip_exits_2_with_one_line_naming_server_ip() {
    let tmp = TempDir::new().unwrap();
    let done = run(fluidity(tmp.path()).arg("agent"));
    assert_exit_code(&done, 2);
    let message = done.stderr.trim_end();
    assert!(!message.contains('\n'), "more than one line: {message}");
    assert!(message.contains("server_ip"), "{message}");
}

#[test]
fn unknown_yaml_key_exits_2_naming_key_file_and_nearest_key() {
    let tmp = TempDir::new().unwrap();
    let config = tmp.path().join("agent.yaml");
    write_file(&config, "server_ip: 127.0.0.1\nserver_prot: 9443\n");
    let done = run(fluidity(tmp.path())
        .args(["agent", "--config"])
        .arg(&config));
    assert_exit_code(&done, 2);
    assert!(done.stderr.contains("server_prot"), "{}", done.stderr);
    assert!(done.stderr.contains(path_str(&config)), "{}", done.stderr);
    assert!(done.stderr.contains("server_port"), "{}", done.stderr);
}

#[test]
fn wrong_yaml_type_exits_2_naming_the_key() {
    let tmp = TempDir::new().unwrap();
    let config = tmp.path().join("agent.yaml");
    write_file(&config, "server_ip: 127.0.0.1\nserver_port: abc\n");
    let done = run(fluidity(tmp.path())
        .args(["agent", "--config"])
        .arg(&config));
    assert_exit_code(&done, 2);
    assert!(done.stderr.contains("server_port"), "{}", done.stderr);
    assert!(done.stderr.contains(path_str(&config)), "{}", done.stderr);
}

/// The one line a configuration error prints, checked to be one line.
fn one_line(done: &Finished) -> &str {
    let message = done.stderr.trim_end();
    assert!(!message.contains('\n'), "more than one line: {message}");
    message
}

#[test]
fn bad_target_rule_exits_2_with_one_line_naming_the_key_and_its_source() {
    let tmp = TempDir::new().unwrap();
    let config = tmp.path().join("server.yaml");
    write_file(&config, "deny_targets:\n  - 10.0.0.0/8\n  - 10.0.0.0/40\n");
    let done = run(fluidity(tmp.path())
        .args(["server", "--config"])
        .arg(&config));
    assert_exit_code(&done, 2);
    let message = one_line(&done);
    assert!(message.contains("deny_targets"), "{message}");
    assert!(message.contains("10.0.0.0/40"), "{message}");
    assert!(message.contains(path_str(&config)), "{message}");

    let done = run(fluidity(tmp.path())
        .env("FLUIDITY_ALLOW_TARGETS", "*.corp.test,exa mple.com")
        .arg("server"));
    assert_exit_code(&done, 2);
    let message = one_line(&done);
    assert!(message.contains("allow_targets"), "{message}");
    assert!(message.contains("FLUIDITY_ALLOW_TARGETS"), "{message}");
    assert!(message.contains("exa mple.com"), "{message}");
}

#[test]
fn bad_server_ip_entry_exits_2_with_one_line_naming_the_key_and_its_source() {
    let tmp = TempDir::new().unwrap();
    let config = tmp.path().join("agent.yaml");
    write_file(&config, "server_ip:\n  - a.example\n  - \"b.example:0\"\n");
    let done = run(fluidity(tmp.path())
        .args(["agent", "--config"])
        .arg(&config));
    assert_exit_code(&done, 2);
    let message = one_line(&done);
    assert!(message.contains("server_ip"), "{message}");
    assert!(message.contains("b.example:0"), "{message}");
    assert!(message.contains(path_str(&config)), "{message}");

    let done = run(fluidity(tmp.path())
        .env("FLUIDITY_SERVER_IP", "a.example,2001:db8::1:99999:1")
        .arg("agent"));
    assert_exit_code(&done, 2);
    let message = one_line(&done);
    assert!(message.contains("server_ip"), "{message}");
    assert!(message.contains("FLUIDITY_SERVER_IP"), "{message}");

    let done = run(fluidity(tmp.path()).args(["agent", "--server-ip", "a.example,[b.example]:1"]));
    assert_exit_code(&done, 2);
    let message = one_line(&done);
    assert_eq!(
        message,
        "fluidity: --server-ip: server_ip: `[b.example]:1`: only IPv6 addresses go in brackets, as [2001:db8::1]:8443"
    );
}

#[test]
fn invalid_log_level_filter_exits_2_with_one_line_naming_log_level() {
    let tmp = TempDir::new().unwrap();
    let config = tmp.path().join("agent.yaml");
    write_file(
        &config,
        "server_ip: 127.0.0.1\nlocal_proxy_port: 0\nlog_level: \"info,h2=notalevel\"\n",
    );
    let done = run(fluidity(tmp.path())
        .args(["agent", "--config"])
        .arg(&config));
    assert_exit_code(&done, 2);
    let message = one_line(&done);
    assert!(message.contains("log_level"), "{message}");
    assert!(message.contains("h2=notalevel"), "{message}");
    assert!(message.contains(path_str(&config)), "{message}");

    let done = run(fluidity(tmp.path())
        .env("FLUIDITY_LOG_LEVEL", "debug,fluidity=loud")
        .arg("server"));
    assert_exit_code(&done, 2);
    let message = one_line(&done);
    assert!(message.contains("log_level"), "{message}");
    assert!(message.contains("FLUIDITY_LOG_LEVEL"), "{message}");
}

#[test]
fn missing_cert_file_fails_naming_the_path() {
    let tmp = TempDir::new().unwrap();
    let certs = certs_init(tmp.path());
    let missing = tmp.path().join("nowhere").join("client.crt");
    let done = run(fluidity(tmp.path())
        .args([
            "agent",
            "--server-ip",
            "127.0.0.1",
            "--local-proxy-port",
            "0",
        ])
        .arg("--cert-file")
        .arg(&missing)
        .arg("--key-file")
        .arg(certs.join("client.key"))
        .arg("--ca-cert-file")
        .arg(certs.join("ca.crt")));
    assert!(
        !done.status.success(),
        "agent started without its certificate"
    );
    assert!(done.stderr.contains(path_str(&missing)), "{}", done.stderr);
}

// ---------------------------------------------------------------------------------------------------------------
// Server and agent as processes
// ---------------------------------------------------------------------------------------------------------------

const ORIGIN_BODY: &str = "hello through the tunnel";

/// A one-response-per-connection HTTP/1.1 origin; every request head it receives is sent on the channel.
async fn spawn_origin() -> (SocketAddr, tokio::sync::mpsc::UnboundedReceiver<String>) {
    let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .await
        .expect("bind the origin");
    let addr = listener.local_addr().expect("origin address");
    let (heads, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let heads = heads.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = heads.send(String::from_utf8_lossy(&head).into_owned());
                let response = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{ORIGIN_BODY}",
                    ORIGIN_BODY.len()
                );
                let _ = stream.write_all(response.as_bytes()).await;
                let _ = stream.shutdown().await;
            });
        }
    });
    (addr, rx)
}

/// `fluidity server` on a free loopback port with the certificates in `certs` and `extra` arguments; returns once
/// its `/healthz` answers, with the tunnel port and the health address.
fn start_server(tmp: &Path, certs: &Path, extra: &[&str]) -> (Proc, u16, SocketAddr) {
    let (tunnel, health) = (ReservedPort::new(), ReservedPort::new());
    let (tunnel_port, health_addr) = (tunnel.port(), health.addr());
    let mut server = Proc::spawn(
        fluidity(tmp)
            .env("FLUIDITY_HEALTH_ADDR", health_addr.to_string())
            .args(["server", "--listen-addr", "127.0.0.1", "--listen-port"])
            .arg(tunnel_port.to_string())
            .arg("--cert-file")
            .arg(certs.join("server.crt"))
            .arg("--key-file")
            .arg(certs.join("server.key"))
            .arg("--ca-cert-file")
            .arg(certs.join("ca.crt"))
            .args(extra),
    )
    .holding([tunnel, health]);
    server.wait_for_status(health_addr, "/healthz", 200);
    (server, tunnel_port, health_addr)
}

/// `fluidity agent` on a free loopback port towards `tunnel_port`; returns once its tunnel is up, with the proxy
/// address.
fn start_agent(tmp: &Path, certs: &Path, tunnel_port: u16, extra: &[&str]) -> (Proc, SocketAddr) {
    let proxy_port = ReservedPort::new();
    let proxy = proxy_port.addr();
    let mut agent = Proc::spawn(
        fluidity(tmp)
            .args([
                "agent",
                "--server-ip",
                "127.0.0.1",
                "--listen-addr",
                "127.0.0.1",
            ])
            .arg("--server-port")
            .arg(tunnel_port.to_string())
            .arg("--local-proxy-port")
            .arg(proxy.port().to_string())
            .arg("--cert-file")
            .arg(certs.join("client.crt"))
            .arg("--key-file")
            .arg(certs.join("client.key"))
            .arg("--ca-cert-file")
            .arg(certs.join("ca.crt"))
            // The test targets are on loopback: through the tunnel, not direct (and the flag's empty value).
            .args(["--direct-targets", ""])
            .args(extra),
    )
    .holding([proxy_port]);
    agent.wait_for_status(proxy, "/healthz", 200);
    (agent, proxy)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_and_an_agent_with_two_tunnels_relay_a_request_and_exit_0_on_sigterm() {
    let tmp = TempDir::new().unwrap();
    let certs = certs_init(tmp.path());
    let (origin, mut heads) = spawn_origin().await;

    let (mut server, tunnel_port, health) =
        start_server(tmp.path(), &certs, &["--allow-private-targets", "true"]);
    // Two tunnels: the second one's thread must stop with the rest.
    let (agent, proxy) = start_agent(tmp.path(), &certs, tunnel_port, &["--tunnels", "2"]);

    let (status, body) = http(
        proxy,
        &format!("GET http://{origin}/x HTTP/1.1\r\nHost: {origin}\r\nConnection: close\r\n\r\n"),
    )
    .unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(ORIGIN_BODY), "{body}");
    let head = heads.try_recv().expect("the origin saw the request");
    assert!(head.starts_with("GET /x HTTP/1.1\r\n"), "{head}");

    server.wait_for(
        "fluidity_server_agent_connections 2 in the server metrics",
        READY_TIMEOUT,
        |_| {
            get(health, "/metrics")
                .ok()
                .filter(|(status, body)| {
                    *status == 200
                        && body
                            .lines()
                            .any(|line| line == "fluidity_server_agent_connections 2")
                })
                .map(drop)
        },
    );

    agent.signal("TERM");
    server.signal("TERM");
    let agent_done = agent.wait_exit(EXIT_TIMEOUT);
    let server_done = server.wait_exit(EXIT_TIMEOUT);
    assert_exit_code(&agent_done, 0);
    assert_exit_code(&server_done, 0);
}

#[test]
fn health_exits_0_when_healthz_answers_200_and_1_with_a_reason_otherwise() {
    let tmp = TempDir::new().unwrap();
    let certs = certs_init(tmp.path());
    let (server, _, health) = start_server(tmp.path(), &certs, &[]);

    let url = format!("http://{health}/healthz");
    let healthy = run(fluidity(tmp.path()).args(["health", &url]));
    assert_exit_code(&healthy, 0);

    // The address from the server's own configuration, bound to every address: checked on loopback.
    let config = tmp.path().join("server.yaml");
    write_file(
        &config,
        &format!("health_addr: 0.0.0.0:{}\n", health.port()),
    );
    let from_config = run(fluidity(tmp.path())
        .args(["health", "--config"])
        .arg(&config));
    assert_exit_code(&from_config, 0);

    // An agent whose tunnel cannot come up answers its /healthz with 503.
    let proxy_port = ReservedPort::new();
    let proxy = loopback(proxy_port.port());
    let no_server = closed_port();
    let mut agent = Proc::spawn(
        fluidity(tmp.path())
            .args(["agent", "--server-ip", "127.0.0.1", "--server-port"])
            .arg(no_server.addr.port().to_string())
            .arg("--local-proxy-port")
            .arg(proxy.port().to_string())
            .arg("--cert-file")
            .arg(certs.join("client.crt"))
            .arg("--key-file")
            .arg(certs.join("client.key"))
            .arg("--ca-cert-file")
            .arg(certs.join("ca.crt")),
    );
    agent.wait_for_status(proxy, "/healthz", 503);
    let unhealthy = run(fluidity(tmp.path()).args(["health", &format!("http://{proxy}/healthz")]));
    assert_exit_code(&unhealthy, 1);
    assert!(unhealthy.stderr.contains("503"), "{}", unhealthy.stderr);
    assert_eq!(
        unhealthy.stderr.trim().lines().count(),
        1,
        "{}",
        unhealthy.stderr
    );

    drop(server);
    let closed = run(fluidity(tmp.path()).args(["health", &url]));
    assert_exit_code(&closed, 1);
    assert!(
        closed.stderr.contains(&url) && closed.stderr.contains("cannot connect"),
        "{}",
        closed.stderr
    );
    assert_eq!(closed.stderr.trim().lines().count(), 1, "{}", closed.stderr);
}

#[test]
fn health_with_a_bad_url_exits_1_and_with_a_bad_config_exits_2() {
    let tmp = TempDir::new().unwrap();
    let bad_url = run(fluidity(tmp.path()).args(["health", "https://127.0.0.1:1/healthz"]));
    assert_exit_code(&bad_url, 1);
    assert!(bad_url.stderr.contains("http://"), "{}", bad_url.stderr);

    let config = tmp.path().join("server.yaml");
    write_file(&config, "health_adr: 127.0.0.1:8081\n");
    let bad_config = run(fluidity(tmp.path())
        .args(["health", "--config"])
        .arg(&config));
    assert_exit_code(&bad_config, 2);
    assert!(
        bad_config.stderr.contains("health_adr"),
        "{}",
        bad_config.stderr
    );
}

// ---------------------------------------------------------------------------------------------------------------
// Configuration through the binary
// ---------------------------------------------------------------------------------------------------------------

/// An agent.yaml next to `certs/` with relative certificate paths, pointing at `server`, a port nobody listens on.
fn write_agent_yaml(dir: &Path, local_proxy_port: u16, server: SocketAddr) -> PathBuf {
    let config = dir.join("agent.yaml");
    write_file(
        &config,
        &format!(
            "server_ip: 127.0.0.1\n\
             server_port: {}\n\
             local_proxy_port: {local_proxy_port}\n\
             log_level: debug\n\
             cert_file: certs/client.crt\n\
             key_file: certs/client.key\n\
             ca_cert_file: certs/ca.crt\n",
            server.port()
        ),
    );
    config
}

#[test]
fn local_proxy_port_flag_beats_env_and_yaml() {
    let tmp = TempDir::new().unwrap();
    certs_init(tmp.path());
    let (yaml, env, flag) = (
        ReservedPort::new(),
        ReservedPort::new(),
        ReservedPort::new(),
    );
    let (yaml_port, env_port, flag_port) = (yaml.port(), env.port(), flag.port());
    let no_server = closed_port();
    let config = write_agent_yaml(tmp.path(), yaml_port, no_server.addr);
    let mut agent = Proc::spawn(
        fluidity(tmp.path())
            .env("FLUIDITY_LOCAL_PROXY_PORT", env_port.to_string())
            .args(["agent", "--config"])
            .arg(&config)
            .arg("--local-proxy-port")
            .arg(flag_port.to_string()),
    );
    // No server is up: the agent answers, and says the tunnel is down.
    agent.wait_for_status(loopback(flag_port), "/healthz", 503);
    assert!(refuses_connections(loopback(env_port)));
    assert!(refuses_connections(loopback(yaml_port)));
}

#[test]
fn local_proxy_port_env_beats_yaml() {
    let tmp = TempDir::new().unwrap();
    certs_init(tmp.path());
    let (yaml, env) = (ReservedPort::new(), ReservedPort::new());
    let (yaml_port, env_port) = (yaml.port(), env.port());
    let no_server = closed_port();
    let config = write_agent_yaml(tmp.path(), yaml_port, no_server.addr);
    let mut agent = Proc::spawn(
        fluidity(tmp.path())
            .env("FLUIDITY_LOCAL_PROXY_PORT", env_port.to_string())
            .args(["agent", "--config"])
            .arg(&config),
    );
    agent.wait_for_status(loopback(env_port), "/healthz", 503);
    assert!(refuses_connections(loopback(yaml_port)));
}

#[test]
fn agent_save_writes_the_flag_into_the_yaml_keeping_other_keys_in_order() {
    let tmp = TempDir::new().unwrap();
    certs_init(tmp.path());
    let proxy = ReservedPort::new();
    let proxy_port = proxy.port();
    let config = tmp.path().join("agent.yaml");
    let original = format!(
        "server_ip: 127.0.0.1\n\
         server_port: 1234\n\
         local_proxy_port: {proxy_port}\n\
         log_level: debug\n\
         cert_file: certs/client.crt\n\
         key_file: certs/client.key\n\
         ca_cert_file: certs/ca.crt\n"
    );
    write_file(&config, &original);
    let mut agent = Proc::spawn(
        fluidity(tmp.path())
            .args(["agent", "--config"])
            .arg(&config)
            .args(["--server-port", "9999", "--save"]),
    );
    // The file is written before the proxy binds: once it listens, the save is complete.
    agent.wait_for_status(loopback(proxy_port), "/healthz", 503);
    let saved = fs::read_to_string(&config).unwrap();
    assert_eq!(
        saved,
        original.replace("server_port: 1234", "server_port: 9999")
    );
}

#[test]
fn agent_save_keeps_a_private_config_private() {
    let tmp = TempDir::new().unwrap();
    certs_init(tmp.path());
    let proxy = ReservedPort::new();
    let proxy_port = proxy.port();
    let no_server = closed_port();
    let config = tmp.path().join("agent.yaml");
    write_file(
        &config,
        &format!(
            "server_ip: 127.0.0.1\n\
             server_port: {}\n\
             local_proxy_port: {proxy_port}\n\
             proxy_auth: \"alice:s3cret\"\n",
            no_server.addr.port()
        ),
    );
    fs::set_permissions(&config, fs::Permissions::from_mode(0o600)).unwrap();
    let mut agent = Proc::spawn(
        fluidity(tmp.path())
            .args(["agent", "--config"])
            .arg(&config)
            .args(["--server-ip", "localhost", "--save"]),
    );
    // The file is written before the proxy binds: once it listens, the save is complete.
    agent.wait_for_status(loopback(proxy_port), "/healthz", 503);
    let saved = fs::read_to_string(&config).unwrap();
    assert!(saved.contains("server_ip: localhost"), "{saved}");
    assert!(saved.contains("alice:s3cret"), "{saved}");
    assert_eq!(mode(&config), 0o600);
}

#[test]
fn up_prints_the_proxy_address_writes_certs_serves_healthz_and_exits_0_on_sigint() {
    let tmp = TempDir::new().unwrap();
    let dir = tmp.path().join("state");
    let reserved = ReservedPort::new();
    let port = reserved.port();
    let mut up = Proc::spawn(
        fluidity(tmp.path())
            .args(["up", "--port", &port.to_string(), "--dir"])
            .arg(&dir),
    );
    let proxy = format!("http://127.0.0.1:{port}");
    up.wait_for("the instructions on stdout", READY_TIMEOUT, |up| {
        up.stdout().contains(&proxy).then_some(())
    });
    for name in CERT_FILES {
        assert_pem(&dir.join(name), "CERTIFICATE");
    }
    for name in KEY_FILES {
        assert_private_key(&dir.join(name));
    }
    up.wait_for_status(loopback(port), "/healthz", 200);

    up.signal("INT");
    let done = up.wait_exit(EXIT_TIMEOUT);
    assert_exit_code(&done, 0);
}

#[test]
fn sighup_reloads_the_crl_and_closes_a_revoked_agents_tunnel() {
    let tmp = TempDir::new().unwrap();
    let certs = certs_init(tmp.path());
    // The server needs a CRL to start with one: revoke an unrelated client first.
    let issued = run(fluidity(tmp.path())
        .args(["certs", "issue", "--client", "spare", "--ca-dir"])
        .arg(&certs)
        .arg("--out")
        .arg(&certs));
    assert_exit_code(&issued, 0);
    let revoked = run(fluidity(tmp.path())
        .args(["certs", "revoke", "--ca-dir"])
        .arg(&certs)
        .arg("--cert")
        .arg(certs.join("spare.crt")));
    assert_exit_code(&revoked, 0);

    let crl = certs.join("crl.pem");
    let crl = crl.to_str().unwrap();
    let (mut server, tunnel_port, _health) = start_server(tmp.path(), &certs, &["--crl-file", crl]);
    let (mut agent, proxy) = start_agent(tmp.path(), &certs, tunnel_port, &[]);

    let revoked = run(fluidity(tmp.path())
        .args(["certs", "revoke", "--ca-dir"])
        .arg(&certs)
        .arg("--cert")
        .arg(certs.join("client.crt")));
    assert_exit_code(&revoked, 0);
    server.signal("HUP");
    agent.wait_for_status(proxy, "/healthz", 503);
    server.wait_for(
        "the reload and the closed tunnel in the log",
        READY_TIMEOUT,
        |p| {
            let log = p.stderr();
            (log.contains("certificates reloaded") && log.contains("certificate revoked"))
                .then_some(())
        },
    );
    server.assert_running();

    server.signal("TERM");
    agent.signal("TERM");
    assert_exit_code(&server.wait_exit(EXIT_TIMEOUT), 0);
    assert_exit_code(&agent.wait_exit(EXIT_TIMEOUT), 0);
}

// ---------------------------------------------------------------------------------------------------------------
// certs invite and join
// ---------------------------------------------------------------------------------------------------------------

/// `fluidity certs invite` from the CA in `certs` for `servers`, written to `out` with `extra` arguments.
fn certs_invite(
    tmp: &Path,
    certs: &Path,
    servers: &[&str],
    out: &Path,
    extra: &[&str],
) -> Finished {
    let mut cmd = fluidity(tmp);
    cmd.args(["certs", "invite", "--name", "phone", "--ca-dir"])
        .arg(certs)
        .arg("--out")
        .arg(out)
        .args(extra);
    for server in servers {
        cmd.args(["--server", server]);
    }
    run(&mut cmd)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_joined_from_an_invite_carries_a_request_through_the_tunnel() {
    let tmp = TempDir::new().unwrap();
    let certs = certs_init(tmp.path());
    let (origin, mut heads) = spawn_origin().await;
    let (_server, tunnel_port, _) =
        start_server(tmp.path(), &certs, &["--allow-private-targets", "true"]);

    let invite = tmp.path().join("phone.invite");
    let server = format!("127.0.0.1:{tunnel_port}");
    let made = certs_invite(tmp.path(), &certs, &[&server], &invite, &[]);
    assert_exit_code(&made, 0);
    assert!(made.stderr.contains("is a secret"), "{}", made.stderr);
    assert_eq!(mode(&invite), 0o600);
    let text = fs::read_to_string(&invite).unwrap();
    assert!(text.starts_with("fluidity-invite v1\n"), "{text}");
    assert!(text.contains(&format!("server: {server}\n")), "{text}");

    let dir = tmp.path().join("joined");
    let joined = run(fluidity(tmp.path())
        .arg("join")
        .arg(&invite)
        .arg("--dir")
        .arg(&dir));
    assert_exit_code(&joined, 0);
    let config = dir.join("agent.yaml");
    assert_eq!(
        joined.stdout.trim_end(),
        format!("fluidity agent --config {}", config.display())
    );
    assert_eq!(mode(&dir.join("client.key")), 0o600);
    assert_pem(&dir.join("client.crt"), "CERTIFICATE");

    // A second join would replace the device's key: refused, naming a file, unless --force.
    let again = run(fluidity(tmp.path())
        .arg("join")
        .arg(&invite)
        .arg("--dir")
        .arg(&dir));
    assert_exit_code(&again, 1);
    assert!(again.stderr.contains("--force"), "{}", again.stderr);
    let forced = run(fluidity(tmp.path())
        .arg("join")
        .arg(&invite)
        .arg("--dir")
        .arg(&dir)
        .arg("--force"));
    assert_exit_code(&forced, 0);

    // The command join printed, plus a free port and the test's loopback origin through the tunnel.
    let proxy_port = ReservedPort::new();
    let proxy = proxy_port.addr();
    let mut agent = Proc::spawn(
        fluidity(tmp.path())
            .args(["agent", "--config"])
            .arg(&config)
            .arg("--local-proxy-port")
            .arg(proxy.port().to_string())
            .args(["--direct-targets", ""]),
    )
    .holding([proxy_port]);
    agent.wait_for_status(proxy, "/healthz", 200);
    let (status, body) = http(
        proxy,
        &format!(
            "GET http://{origin}/joined HTTP/1.1\r\nHost: {origin}\r\nConnection: close\r\n\r\n"
        ),
    )
    .unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(ORIGIN_BODY), "{body}");
    let head = heads.try_recv().expect("the origin saw the request");
    assert!(head.starts_with("GET /joined HTTP/1.1\r\n"), "{head}");
}

#[test]
fn a_sealed_invite_joins_only_with_its_passphrase() {
    let tmp = TempDir::new().unwrap();
    let certs = certs_init(tmp.path());
    let pass = tmp.path().join("pass.txt");
    write_file(&pass, "tulip mango 42\n");
    let invite = tmp.path().join("phone.invite");
    let made = certs_invite(
        tmp.path(),
        &certs,
        &["vpn.example.net:8443"],
        &invite,
        &["--passphrase-file", path_str(&pass)],
    );
    assert_exit_code(&made, 0);
    let text = fs::read_to_string(&invite).unwrap();
    assert!(text.starts_with("fluidity-invite v1 sealed\n"), "{text}");
    assert!(!text.contains("PRIVATE KEY") && !text.contains("vpn.example.net"));

    let join = |extra: &[&str], input: Option<&[u8]>| {
        let mut cmd = fluidity(tmp.path());
        cmd.arg("join")
            .arg(&invite)
            .arg("--dir")
            .arg(tmp.path().join("joined"))
            .args(extra);
        Proc::spawn_with_input(&mut cmd, input).wait_exit(COMMAND_TIMEOUT)
    };
    let without = join(&[], None);
    assert_exit_code(&without, 2);
    assert!(
        one_line(&without).contains("--passphrase-file"),
        "{}",
        without.stderr
    );

    let wrong_file = tmp.path().join("wrong.txt");
    write_file(&wrong_file, "tulip mango 43");
    let wrong = join(&["--passphrase-file", path_str(&wrong_file)], None);
    assert_exit_code(&wrong, 2);
    assert!(
        one_line(&wrong).contains("wrong passphrase"),
        "{}",
        wrong.stderr
    );
    assert!(
        !tmp.path().join("joined").exists(),
        "nothing written on a refusal"
    );

    let right = join(&["--passphrase-file", "-"], Some(b"tulip mango 42\n"));
    assert_exit_code(&right, 0);
    let yaml = fs::read_to_string(tmp.path().join("joined/agent.yaml")).unwrap();
    assert!(yaml.contains("server_ip: \"vpn.example.net\""), "{yaml}");
    assert!(yaml.contains("server_port: 8443"), "{yaml}");
}

#[test]
fn join_refuses_a_truncated_invite_or_another_file_with_one_line_and_exit_2() {
    let tmp = TempDir::new().unwrap();
    let certs = certs_init(tmp.path());
    let invite = tmp.path().join("phone.invite");
    assert_exit_code(&certs_invite(tmp.path(), &certs, &["h"], &invite, &[]), 0);
    let text = fs::read_to_string(&invite).unwrap();
    let truncated = tmp.path().join("truncated.invite");
    write_file(&truncated, &text[..text.len() / 2]);

    for (file, reason) in [
        (truncated, "damaged or truncated"),
        (certs.join("ca.crt"), "not a fluidity invite"),
        (tmp.path().join("missing.invite"), "missing.invite"),
    ] {
        let done = run(fluidity(tmp.path())
            .arg("join")
            .arg(&file)
            .arg("--dir")
            .arg(tmp.path().join("joined")));
        assert_exit_code(&done, 2);
        assert!(one_line(&done).contains(reason), "{}", done.stderr);
    }
    assert!(
        !tmp.path().join("joined").exists(),
        "nothing written on a refusal"
    );
}
