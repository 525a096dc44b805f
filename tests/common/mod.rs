//! Shared test harness. Each test file does `mod common; use common::*;` and gets everything below; the modules
//! are split by concern so a newcomer knows where to look:
//!
//! - [`pki`]: a fresh CA per test, certificates and TLS configs;
//! - [`roles`]: the server and the agent in this process, on `127.0.0.1:0`, and the admin probes;
//! - [`targets`]: local targets (HTTP and HTTPS origin, TCP echo, WebSocket echo);
//! - [`ports`]: port numbers held without a listener: a closed port, a port kept across a restart;
//! - [`relays`]: TCP relays that break or slow the link between agent and server;
//! - [`client`]: callers of the agent (raw byte scripts, CONNECT, a hyper proxy client);
//! - [`bodies`]: fixed, channel-fed and pattern bodies;
//! - [`memory`]: the process's memory, for the tests that measure it.
//!
//! Here: [`within`] (every test's deadline) and [`eventually`] (polling instead of sleeping for readiness).
#![allow(
    unreachable_pub,
    reason = "`pub` so that `use common::*` reaches the items; the module itself is private to each test crate"
)]
#![allow(
    clippy::unwrap_used,
    reason = "a harness failure is a test failure: panicking is the point"
)]

pub mod bodies;
pub mod client;
pub mod memory;
pub mod pki;
pub mod ports;
pub mod relays;
pub mod roles;
pub mod targets;

// Re-exported so a test file needs one `use common::*;`; a test crate that uses nothing of a module would warn.
#[allow(unused_imports, reason = "a test crate may use nothing of this module")]
pub use bodies::*;
#[allow(unused_imports, reason = "a test crate may use nothing of this module")]
pub use client::*;
#[allow(unused_imports, reason = "a test crate may use nothing of this module")]
pub use memory::*;
#[allow(unused_imports, reason = "a test crate may use nothing of this module")]
pub use pki::*;
#[allow(unused_imports, reason = "a test crate may use nothing of this module")]
pub use ports::*;
#[allow(unused_imports, reason = "a test crate may use nothing of this module")]
pub use relays::*;
#[allow(unused_imports, reason = "a test crate may use nothing of this module")]
pub use roles::*;
#[allow(unused_imports, reason = "a test crate may use nothing of this module")]
pub use targets::*;

use std::future::Future;
use std::time::Duration;

/// Runs a test body with an overall deadline, so a hang fails in seconds.
pub async fn within<T>(secs: u64, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(secs), fut)
        .await
        .unwrap_or_else(|_| panic!("test did not finish within {secs}s"))
}

/// Polls `check` every 20 ms until it is true or `secs` pass.
pub async fn eventually<F, Fut>(secs: u64, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        if check().await {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
