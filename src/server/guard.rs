//! Limits failed TLS handshakes per source address, so a scanner or a misconfigured agent cannot keep the server
//! busy with handshakes: after [`MAX_FAILURES`] failures within [`WINDOW`], further connections from that address
//! are closed before any TLS work until the window has passed.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;

/// Failed handshakes one address may cause within [`WINDOW`].
pub(crate) const MAX_FAILURES: u32 = 20;
/// The window over which failures are counted.
pub(crate) const WINDOW: Duration = Duration::from_secs(60);
/// Addresses tracked at most; beyond it expired entries are dropped first.
const MAX_TRACKED: usize = 65_536;

#[derive(Debug, Default)]
pub(crate) struct HandshakeGuard {
    failures: Mutex<HashMap<IpAddr, (u32, Instant)>>,
}

impl HandshakeGuard {
    /// True when `ip` may start a handshake.
    pub(crate) fn allows(&self, ip: IpAddr) -> bool {
        let failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        match failures.get(&ip) {
            Some((count, since)) if since.elapsed() < WINDOW => *count < MAX_FAILURES,
            _ => true,
        }
    }

    /// Counts a failed handshake from `ip`.
    pub(crate) fn record_failure(&self, ip: IpAddr) {
        let mut failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        if failures.len() >= MAX_TRACKED {
            failures.retain(|_, (_, since)| since.elapsed() < WINDOW);
            if failures.len() >= MAX_TRACKED {
                // Still full of fresh entries: forget them all rather than grow without bound.
                failures.clear();
            }
        }
        let entry = failures.entry(ip).or_insert((0, Instant::now()));
        if entry.1.elapsed() >= WINDOW {
            *entry = (0, Instant::now());
        }
        entry.0 += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn blocks_after_too_many_failures_until_the_window_passes() {
        let guard = HandshakeGuard::default();
        let scanner: IpAddr = "192.0.2.1".parse().unwrap();
        let other: IpAddr = "192.0.2.2".parse().unwrap();
        for _ in 0..MAX_FAILURES {
            assert!(guard.allows(scanner));
            guard.record_failure(scanner);
        }
        assert!(!guard.allows(scanner));
        assert!(guard.allows(other), "other addresses are not affected");
        tokio::time::advance(WINDOW).await;
        assert!(guard.allows(scanner));
        guard.record_failure(scanner);
        assert!(guard.allows(scanner), "a new window starts from zero");
    }
}
