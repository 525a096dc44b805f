//! Worker threads that serve tunnels: one per core, each with its own single-thread runtime.
//!
//! A tunnel and every stream on it (the HTTP/2 connection task, one task per stream, the target connections it
//! opens) live on the worker that accepted it, so handing data between them never crosses threads: on the
//! multi-thread runtime, those cross-thread wake-ups and the work stealing cost a fifth to a quarter of the
//! server's CPU per request and per byte (measured in bench/). Different tunnels still use different cores: each
//! new connection goes to the worker serving the fewest.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::sync::mpsc;

/// Work for a worker: a connection's future, first polled (and so registering its sockets) on the worker's thread.
type Job = std::pin::Pin<Box<dyn Future<Output = ()> + Send>>;

/// How many workers to start: one per core the process may use.
pub(super) fn count() -> usize {
    std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
}

struct Worker {
    jobs: mpsc::UnboundedSender<Job>,
    /// Connections this worker is serving now.
    load: Arc<AtomicUsize>,
    thread: std::thread::JoinHandle<()>,
}

/// The running workers.
pub(super) struct Shards {
    workers: Vec<Worker>,
}

impl Shards {
    /// Starts `n` workers (at least one).
    ///
    /// # Errors
    /// When a thread or its runtime cannot be created.
    pub(super) fn start(n: usize) -> std::io::Result<Self> {
        let mut workers = Vec::with_capacity(n.max(1));
        for index in 0..n.max(1) {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let (jobs, mut queue) = mpsc::unbounded_channel::<Job>();
            let thread = std::thread::Builder::new()
                .name(format!("fluidity-worker-{index}"))
                .spawn(move || {
                    runtime.block_on(async move {
                        while let Some(job) = queue.recv().await {
                            tokio::spawn(job);
                        }
                    });
                    // Dropping the runtime here cancels whatever the drain left running.
                })?;
            workers.push(Worker {
                jobs,
                load: Arc::new(AtomicUsize::new(0)),
                thread,
            });
        }
        Ok(Self { workers })
    }

    /// Runs `work` on the least busy worker. Nothing in it runs before the worker polls it, so sockets it opens
    /// or registers belong to that worker.
    pub(super) fn run(&self, work: impl Future<Output = ()> + Send + 'static) {
        let Some(worker) = self
            .workers
            .iter()
            .min_by_key(|w| w.load.load(Ordering::Relaxed))
        else {
            return;
        };
        let load = worker.load.clone();
        load.fetch_add(1, Ordering::Relaxed);
        // A send fails only once the worker has stopped, which happens after the accept loop has ended.
        let _ = worker.jobs.send(Box::pin(async move {
            work.await;
            load.fetch_sub(1, Ordering::Relaxed);
        }));
    }

    /// Stops the workers (cancelling anything still running on them) and waits for their threads to end.
    pub(super) async fn stop(self) {
        let threads: Vec<_> = self
            .workers
            .into_iter()
            .map(|w| {
                drop(w.jobs);
                w.thread
            })
            .collect();
        let _ = tokio::task::spawn_blocking(move || {
            for thread in threads {
                let _ = thread.join();
            }
        })
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn jobs_run_on_worker_threads_and_spread_by_load() {
        let shards = Shards::start(2).unwrap();
        let (tx, mut rx) = mpsc::unbounded_channel();
        let (release_tx, release_rx) = tokio::sync::watch::channel(false);
        for _ in 0..4 {
            let tx = tx.clone();
            let mut release = release_rx.clone();
            shards.run(async move {
                let name = std::thread::current().name().map(str::to_owned);
                tx.send(name).unwrap();
                // Held open until released, so the load counts stay up while the others are placed.
                let _ = release.wait_for(|r| *r).await;
            });
        }
        let mut names = Vec::new();
        for _ in 0..4 {
            names.push(rx.recv().await.unwrap().unwrap());
        }
        names.sort();
        assert_eq!(
            names,
            [
                "fluidity-worker-0",
                "fluidity-worker-0",
                "fluidity-worker-1",
                "fluidity-worker-1"
            ]
        );
        release_tx.send(true).unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(10), shards.stop())
            .await
            .unwrap();
    }
}
