//! Worker threads, each with its own single-thread runtime, that connections are handed to whole.
//!
//! Server: a tunnel and every stream on it (the HTTP/2 connection task, one task per stream, the target
//! connections it opens) live on the worker that accepted it, so handing data between them never crosses threads:
//! on the multi-thread runtime, those cross-thread wake-ups and the work stealing cost a large share of the
//! server's CPU per request and per byte (bench/results/HISTORY.md). Different tunnels still use different cores: each
//! new connection goes to the worker serving the fewest. Agent (`tunnels` above 1): each extra tunnel and the
//! callers that use it live on a worker of their own.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, warn};

/// Work for a worker: a connection's future, first polled (and so registering its sockets) on the worker's thread.
type Job = std::pin::Pin<Box<dyn Future<Output = ()> + Send>>;

/// How many workers to start: one per core the process may use.
pub(crate) fn count() -> usize {
    std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
}

struct Worker {
    jobs: mpsc::UnboundedSender<Job>,
    /// Connections this worker is serving now.
    load: Arc<AtomicUsize>,
    thread: std::thread::JoinHandle<()>,
}

/// The position of the smallest load (the first of equals); `None` for no loads.
pub(crate) fn least_loaded(loads: impl Iterator<Item = usize>) -> Option<usize> {
    loads
        .enumerate()
        .min_by_key(|&(_, load)| load)
        .map(|(index, _)| index)
}

/// `work`, counted in `load` from now until it has run to the end.
pub(crate) fn counted<F: Future<Output = ()>>(
    load: &Arc<AtomicUsize>,
    work: F,
) -> impl Future<Output = ()> + use<F> {
    let load = load.clone();
    load.fetch_add(1, Ordering::Relaxed);
    async move {
        work.await;
        load.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Worker {
    fn submit(&self, work: impl Future<Output = ()> + Send + 'static) {
        // A send fails only once the worker has stopped, which happens after the accept loop has ended.
        let _ = self.jobs.send(Box::pin(work));
    }
}

/// The running workers.
pub(crate) struct Shards {
    workers: Vec<Worker>,
}

impl Shards {
    /// Starts `n` workers (at least one).
    ///
    /// # Errors
    /// When a thread or its runtime cannot be created.
    pub(crate) fn start(n: usize) -> std::io::Result<Self> {
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
    pub(crate) fn run(&self, work: impl Future<Output = ()> + Send + 'static) {
        if let Some(index) = least_loaded(self.loads()) {
            self.run_on(index, work);
        }
    }

    /// How many connections each worker is serving now, in worker order.
    pub(crate) fn loads(&self) -> impl Iterator<Item = usize> + '_ {
        self.workers.iter().map(|w| w.load.load(Ordering::Relaxed))
    }

    /// Runs `work` on worker `index`, counted in its load while it runs; nothing when there is no such worker.
    pub(crate) fn run_on(&self, index: usize, work: impl Future<Output = ()> + Send + 'static) {
        let Some(worker) = self.workers.get(index) else {
            return;
        };
        worker.submit(counted(&worker.load, work));
    }

    /// Hands the accepted connection `tcp` to worker `index` (the least busy with `None`), where `serve` runs with
    /// it, registered with that worker's runtime, inside `span`. The connection is tracked by `tasks` from here, on
    /// the accepting thread, so that a drain never misses one in transit to its worker.
    ///
    /// # Errors
    /// When the socket cannot be taken off this thread's runtime; the connection is then dropped.
    pub(crate) fn hand_over<F, Fut>(
        &self,
        index: Option<usize>,
        tcp: TcpStream,
        tasks: &TaskTracker,
        span: tracing::Span,
        serve: F,
    ) -> std::io::Result<()>
    where
        F: FnOnce(TcpStream) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send,
    {
        let tcp = tcp.into_std()?;
        let token = tasks.token();
        let job = async move {
            match TcpStream::from_std(tcp) {
                Ok(tcp) => serve(tcp).await,
                Err(err) => warn!(error = %err, "cannot register the connection"),
            }
            drop(token);
        }
        .instrument(span);
        match index {
            Some(index) => self.run_on(index, job),
            None => self.run(job),
        }
        Ok(())
    }

    /// Runs `work` on worker `index` without counting it as load: for background work that lives as long as the
    /// worker does.
    pub(crate) fn run_uncounted(
        &self,
        index: usize,
        work: impl Future<Output = ()> + Send + 'static,
    ) {
        if let Some(worker) = self.workers.get(index) {
            worker.submit(work);
        }
    }

    /// Stops the workers (cancelling anything still running on them) and waits for their threads to end.
    pub(crate) async fn stop(self) {
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

    #[test]
    fn the_least_loaded_is_the_first_of_the_smallest() {
        assert_eq!(least_loaded([3, 1, 2, 1].into_iter()), Some(1));
        assert_eq!(least_loaded([0, 0].into_iter()), Some(0));
        assert_eq!(least_loaded([2, 5, 0].into_iter()), Some(2));
        assert_eq!(least_loaded(std::iter::empty()), None);
    }

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
