//! The choice of server when `server_ip` lists several: the order of a round of dial attempts, and when to move
//! back to a preferred server. Pure logic; the keeper does the dialing and the probing.
//!
//! A **candidate** is one address of one `server_ip` entry: a host name that resolves to several addresses gives
//! several, tried in the order the resolver returns them. A **round** gives every candidate one attempt; a tunnel
//! that is lost before [`STABLE_PERIOD`](super::keeper::STABLE_PERIOD) counts as its candidate's attempt. The
//! keeper backs off only when a round has no candidate left, so a lost tunnel is replaced by the next server at
//! once. While the tunnel is on a later entry, the earlier entries are probed in the background; once one has
//! answered every probe for [`FAILBACK_AFTER`], new streams move to it and the old tunnel drains.
//!
//! Failback is between entries only: the addresses of one host name are alternatives of equal rank (a resolver may
//! shuffle them), so the agent never leaves a working address for another address of the same name.

use std::net::SocketAddr;
use std::time::Duration;
use tokio::time::Instant;

/// How long an earlier `server_ip` entry must have answered every probe before new streams move back to it.
pub(crate) const FAILBACK_AFTER: Duration = Duration::from_secs(30);

/// Probes of the earlier entries per [`FAILBACK_AFTER`] period (one every 5 s by default).
const PROBES_PER_FAILBACK_PERIOD: u32 = 6;

/// The shortest pause between two probes, whatever the failback period: probes of servers that refuse at once
/// must not spin.
const MIN_PROBE_INTERVAL: Duration = Duration::from_millis(50);

/// The pause between two probes of the earlier entries, for a failback period of `failback_after`.
pub(crate) fn probe_interval(failback_after: Duration) -> Duration {
    (failback_after / PROBES_PER_FAILBACK_PERIOD).max(MIN_PROBE_INTERVAL)
}

/// One address of one `server_ip` entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Candidate {
    /// The entry's position in `server_ip` (0 is the most preferred).
    pub(crate) entry: usize,
    /// The address dialed.
    pub(crate) addr: SocketAddr,
}

/// The entries to visit in a round of `count` entries, continuing after `last` (the candidate just lost or
/// refused): its own entry first (for its remaining addresses), then the later entries, then the earlier ones.
/// Without `last` (a fresh round after a backoff), every entry from the first.
pub(crate) fn entry_order(count: usize, last: Option<Candidate>) -> impl Iterator<Item = usize> {
    let start = last.map_or(0, |last| last.entry % count.max(1));
    (0..count).map(move |step| (start + step) % count)
}

/// `addrs` (one entry's addresses, in resolver order) for a round that continues after `last`: when `last` is one
/// of them, the addresses after it come first, then those before it, and `last` itself comes at the end.
pub(crate) fn addresses_after(
    mut addrs: Vec<SocketAddr>,
    last: Option<SocketAddr>,
) -> Vec<SocketAddr> {
    if let Some(at) = last.and_then(|last| addrs.iter().position(|addr| *addr == last)) {
        addrs.rotate_left(at + 1);
    }
    addrs
}

/// Whether an earlier entry has answered long enough to move back to it.
#[derive(Debug)]
pub(crate) struct Failback {
    after: Duration,
    /// The earlier entry that answered the last probe, and since when it has answered every probe.
    answering: Option<(usize, Instant)>,
}

impl Failback {
    pub(crate) fn new(after: Duration) -> Self {
        Self {
            after,
            answering: None,
        }
    }

    /// Records a probe at `now`: `answered` is the first earlier entry that answered, if any. True once the same
    /// entry has answered every probe for the failback period.
    pub(crate) fn record(&mut self, answered: Option<usize>, now: Instant) -> bool {
        match (answered, self.answering) {
            (None, _) => {
                self.answering = None;
                false
            }
            (Some(entry), Some((previous, since))) if entry == previous => {
                now.saturating_duration_since(since) >= self.after
            }
            (Some(entry), _) => {
                self.answering = Some((entry, now));
                self.after.is_zero()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([192, 0, 2, 1], port))
    }

    #[test]
    fn a_round_continues_after_the_last_candidate_and_wraps() {
        let order = |count, last| entry_order(count, last).collect::<Vec<_>>();
        assert_eq!(order(3, None), [0, 1, 2]);
        let last = |entry| {
            Some(Candidate {
                entry,
                addr: addr(1),
            })
        };
        assert_eq!(order(3, last(0)), [0, 1, 2]);
        assert_eq!(order(3, last(1)), [1, 2, 0]);
        assert_eq!(order(3, last(2)), [2, 0, 1]);
        assert_eq!(order(1, last(0)), [0]);
        assert_eq!(order(0, None), Vec::<usize>::new());
    }

    #[test]
    fn addresses_continue_after_the_last_one() {
        let all = vec![addr(1), addr(2), addr(3)];
        assert_eq!(addresses_after(all.clone(), None), all);
        assert_eq!(addresses_after(all.clone(), Some(addr(9))), all);
        assert_eq!(
            addresses_after(all.clone(), Some(addr(1))),
            [addr(2), addr(3), addr(1)]
        );
        assert_eq!(
            addresses_after(all.clone(), Some(addr(2))),
            [addr(3), addr(1), addr(2)]
        );
        assert_eq!(addresses_after(all.clone(), Some(addr(3))), all);
    }

    #[test]
    fn probe_interval_divides_the_failback_period() {
        assert_eq!(probe_interval(FAILBACK_AFTER), Duration::from_secs(5));
        assert_eq!(
            probe_interval(Duration::from_millis(600)),
            Duration::from_millis(100)
        );
        assert_eq!(probe_interval(Duration::ZERO), MIN_PROBE_INTERVAL);
    }

    #[tokio::test(start_paused = true)]
    async fn failback_needs_the_same_entry_answering_for_the_whole_period() {
        let mut failback = Failback::new(Duration::from_secs(30));
        let start = Instant::now();
        let at = |secs| start + Duration::from_secs(secs);
        assert!(!failback.record(Some(0), at(0)));
        assert!(!failback.record(Some(0), at(29)));
        assert!(failback.record(Some(0), at(30)));
        // A missed probe starts the period again.
        assert!(!failback.record(None, at(35)));
        assert!(!failback.record(Some(0), at(40)));
        assert!(!failback.record(Some(0), at(69)));
        assert!(failback.record(Some(0), at(70)));
        // So does a different entry answering (the first one stopped, a second earlier one answers).
        let mut failback = Failback::new(Duration::from_secs(30));
        assert!(!failback.record(Some(0), at(0)));
        assert!(!failback.record(Some(1), at(20)));
        assert!(!failback.record(Some(1), at(49)));
        assert!(failback.record(Some(1), at(50)));
        // A zero period moves back on the first answer.
        let mut failback = Failback::new(Duration::ZERO);
        assert!(failback.record(Some(0), at(0)));
    }
}
