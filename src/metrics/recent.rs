//! The last few failures the agent met, with their reasons, for the status page (`GET /status`).

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

/// How many failures are kept.
const KEEP: usize = 20;

/// One failure: when, on what kind of path, to which target, and why.
#[derive(Clone, Debug, serde::Serialize, PartialEq, Eq)]
pub(crate) struct RecentError {
    /// Milliseconds since the Unix epoch.
    pub(crate) at_unix_ms: u64,
    /// `http`, `connect`, `websocket` for a caller's request, `tunnel` for the tunnel itself.
    pub(crate) kind: &'static str,
    /// The target (`host:port`) or, for the tunnel, the server.
    pub(crate) target: String,
    pub(crate) reason: String,
}

/// The last [`KEEP`] failures, oldest first.
#[derive(Debug, Default)]
pub(crate) struct RecentErrors {
    entries: Mutex<VecDeque<RecentError>>,
}

impl RecentErrors {
    pub(crate) fn push(&self, kind: &'static str, target: String, reason: String) {
        let at_unix_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since| {
                u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
            });
        let mut entries = self
            .entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if entries.len() == KEEP {
            entries.pop_front();
        }
        entries.push_back(RecentError {
            at_unix_ms,
            kind,
            target,
            reason,
        });
    }

    /// The kept failures, newest first.
    pub(crate) fn newest_first(&self) -> Vec<RecentError> {
        let entries = self
            .entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        entries.iter().rev().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_last_twenty_newest_first() {
        let recent = RecentErrors::default();
        for i in 0..25 {
            recent.push("http", format!("h{i}:80"), "refused".to_owned());
        }
        let list = recent.newest_first();
        assert_eq!(list.len(), KEEP);
        assert_eq!(list[0].target, "h24:80");
        assert_eq!(list[KEEP - 1].target, "h5:80");
        assert!(list[0].at_unix_ms >= list[1].at_unix_ms);
    }
}
