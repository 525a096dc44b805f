//! Certificate rotation without a restart: while a role runs, the files of its TLS material (certificate, key, CA
//! and, on the server, CRL) are looked at every [`POLL_INTERVAL`], and when they have changed and then stayed the
//! same for one more look, the role's reload is called, the same reload SIGHUP calls.
//!
//! Why polling rather than file-system events: a Kubernetes Secret mounted as a folder is updated by writing a new
//! timestamped folder and swapping the `..data` symlink, so the paths the configuration names never change, only
//! what they resolve to; events on those paths are not reliably delivered on every platform, and an event watcher
//! is a dependency of its own. Reading the metadata of four files (through symlinks) every few seconds is cheap,
//! works the same on Linux, macOS and Windows, and sees a symlink swap as a new inode.
//!
//! Why wait for one quiet look: the certificate and the key are not written at the same instant (an operator
//! copying files, cert-manager writing a Secret), and loading one without the other fails. A failed load keeps the
//! old material (the role's reload guarantees that), is warned about once per distinct failure, and is tried again
//! at the next change.
//!
//! Does not: load or check the files (the roles do, through `tls`), or react to SIGHUP (`shutdown` and `main` do).

use std::fmt::Display;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};
use tracing::{debug, warn};

use crate::shutdown::Drain;

/// How often the TLS files are looked at. A change is loaded one look after it was last seen changing, so between
/// one and three intervals after it was written; files written less than an interval apart are loaded together.
pub(crate) const POLL_INTERVAL: Duration = Duration::from_secs(2);

/// What tells one version of a file from another, read through symlinks: modification time, length, and where
/// the platform gives it, the device and inode (a swapped symlink or a file replaced by rename has a new inode even
/// when its time and length match). `None` for a file that cannot be read (missing, say), which is a state too.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
    id: Option<(u64, u64)>,
}

fn stamp(path: &Path) -> Option<Stamp> {
    let meta = std::fs::metadata(path).ok()?;
    Some(Stamp {
        modified: meta.modified().ok(),
        len: meta.len(),
        id: file_id(&meta),
    })
}

#[cfg(unix)]
fn file_id(meta: &std::fs::Metadata) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt as _;
    Some((meta.dev(), meta.ino()))
}

/// The file index of Windows is not in stable std; modification time and length tell versions apart there.
#[cfg(not(unix))]
fn file_id(_meta: &std::fs::Metadata) -> Option<(u64, u64)> {
    None
}

/// The TLS files of one role, and how they looked when the role loaded them.
#[derive(Debug)]
pub(crate) struct Watched {
    paths: Vec<PathBuf>,
    loaded: Vec<Option<Stamp>>,
}

impl Watched {
    /// Looks at `paths` now. Call it before the role loads them: a change made while they load is then seen as a
    /// change (and loaded again), never missed.
    pub(crate) fn new(paths: Vec<PathBuf>) -> Self {
        let loaded = look(&paths);
        Self { paths, loaded }
    }
}

fn look(paths: &[PathBuf]) -> Vec<Option<Stamp>> {
    paths.iter().map(|path| stamp(path)).collect()
}

/// Decides when files are ready to load: when they differ from what was last loaded (or tried) and looked the
/// same at the previous look. Pure, so the debounce is tested without a clock or a file system.
#[derive(Debug)]
struct Settle<S> {
    /// What was last loaded or tried: a failed load is not tried again until the files change again.
    loaded: S,
    /// What the previous look saw.
    seen: S,
}

impl<S: Clone + PartialEq> Settle<S> {
    fn new(loaded: S) -> Self {
        Self {
            seen: loaded.clone(),
            loaded,
        }
    }

    /// Takes one look; true when the files should be loaded now.
    fn observe(&mut self, now: S) -> bool {
        if now != self.seen {
            self.seen = now;
            return false;
        }
        if self.seen == self.loaded {
            return false;
        }
        self.loaded = self.seen.clone();
        true
    }
}

/// The last failure warned about, so the same failure is warned about once, not at every change.
#[derive(Debug, Default)]
struct Failures {
    last: Option<String>,
}

impl Failures {
    /// Records a failure; true when it differs from the previous one (and so deserves a warning).
    fn is_new(&mut self, failure: &str) -> bool {
        if self.last.as_deref() == Some(failure) {
            return false;
        }
        self.last = Some(failure.to_owned());
        true
    }

    fn clear(&mut self) {
        self.last = None;
    }
}

/// Looks at `files` every `every` until the role starts draining, and calls `reload` once they changed and then
/// stayed the same for one look. `reload` must keep the old material when it fails; its failures are warned about
/// once per distinct message, repeats are logged at debug.
///
/// The looks are a few `stat` calls, made on the role's runtime; a reload parses a few PEM files, as SIGHUP's
/// does.
pub(crate) fn watch<E, F>(
    drain: &Drain,
    files: Watched,
    every: Duration,
    role: &'static str,
    reload: F,
) where
    E: Display,
    F: Fn() -> Result<(), E> + Send + 'static,
{
    let stop = drain.graceful.clone();
    drain.tasks.spawn(async move {
        let Watched { paths, loaded } = files;
        let mut settle = Settle::new(loaded);
        let mut failures = Failures::default();
        let mut ticks = tokio::time::interval(every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The first tick is immediate; the files were looked at when the role loaded them.
        ticks.tick().await;
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = ticks.tick() => {}
            }
            if !settle.observe(look(&paths)) {
                continue;
            }
            debug!(role, "certificate files changed, reloading");
            match reload() {
                Ok(()) => failures.clear(),
                Err(err) => {
                    let failure = format!("{err:#}");
                    if failures.is_new(&failure) {
                        warn!(role, error = %failure, "reload after a file change failed, keeping the current certificates");
                    } else {
                        debug!(role, error = %failure, "reload after a file change failed again, keeping the current certificates");
                    }
                }
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_change_loads_once_after_one_quiet_look() {
        // Each step: the look, and whether it loads.
        let steps = [
            ("a", false), // as loaded
            ("a", false),
            ("b", false), // the certificate is written
            ("c", false), // then the key
            ("c", true),  // quiet for one look: load both
            ("c", false), // loaded: nothing more
            ("d", false),
            ("d", true),
        ];
        let mut settle = Settle::new("a");
        for (index, (now, loads)) in steps.into_iter().enumerate() {
            assert_eq!(settle.observe(now), loads, "step {index}: {now}");
        }
    }

    #[test]
    fn a_change_undone_before_it_settles_loads_nothing() {
        let mut settle = Settle::new("a");
        assert!(!settle.observe("b"));
        assert!(!settle.observe("a"));
        assert!(!settle.observe("a"));
        assert!(!settle.observe("a"));
    }

    #[test]
    fn a_failed_load_is_tried_again_only_after_the_next_change() {
        let mut settle = Settle::new("a");
        assert!(!settle.observe("bad"));
        assert!(settle.observe("bad"), "tried once");
        assert!(!settle.observe("bad"), "not again while nothing changes");
        assert!(!settle.observe("bad"));
        assert!(!settle.observe("good"));
        assert!(settle.observe("good"), "tried after the next change");
    }

    #[test]
    fn each_distinct_failure_is_warned_about_once() {
        let mut failures = Failures::default();
        assert!(failures.is_new("key does not match"));
        assert!(!failures.is_new("key does not match"));
        assert!(failures.is_new("no PEM private key found"));
        assert!(
            failures.is_new("key does not match"),
            "a different failure came between"
        );
        failures.clear();
        assert!(
            failures.is_new("key does not match"),
            "a success came between"
        );
    }

    #[test]
    fn a_stamp_tells_a_rewrite_and_a_swapped_symlink_from_the_same_file() {
        let dir = tempfile::TempDir::new().unwrap();
        let file = dir.path().join("tls.crt");
        std::fs::write(&file, "one").unwrap();
        let first = stamp(&file);
        assert!(first.is_some());
        assert_eq!(stamp(&file), first, "unchanged");
        std::fs::write(&file, "one, longer").unwrap();
        assert_ne!(stamp(&file), first, "rewritten in place");
        assert_eq!(stamp(&dir.path().join("missing")), None);
        #[cfg(unix)]
        {
            // Kubernetes style: the path is a symlink whose target is swapped; same length, new inode.
            let (a, b) = (dir.path().join("a"), dir.path().join("b"));
            std::fs::write(&a, "same").unwrap();
            std::fs::write(&b, "same").unwrap();
            let link = dir.path().join("link");
            std::os::unix::fs::symlink(&a, &link).unwrap();
            let before = stamp(&link);
            let swap = dir.path().join("link.new");
            std::os::unix::fs::symlink(&b, &swap).unwrap();
            std::fs::rename(&swap, &link).unwrap();
            assert_ne!(
                stamp(&link),
                before,
                "the swapped symlink resolves to another file"
            );
        }
    }
}
