//! The pool of connections to targets for plain requests: HTTP/1.1 over hyper's connection API, kept open after a
//! response and reused for the next request to the same target.
//!
//! A connection goes back to the idle list when its response body has been read to the end (at once for a response
//! without a body); a request takes the newest idle connection that is ready, and dials only when there is none.
//! The lists are kept per thread: a connection's I/O is driven on the worker thread that opened it, and a stream
//! on another worker using it would wake that thread and be woken back for every request, which costs the server
//! markedly more CPU per request (bench/results/HISTORY.md).
//! Idle connections are closed after [`IDLE_TIMEOUT`] (swept by [`TargetPool::sweep`]), beyond
//! [`MAX_IDLE_PER_TARGET`], or when the target closes them. Nothing here spawns a task per request: handing a
//! connection back is a push onto a list. Each connection's I/O runs in a task of the server's drain: when shutdown
//! starts, idle connections close and busy ones close after their response; the grace period's end cuts off the
//! rest.

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, ready};
use std::thread::ThreadId;
use std::time::{Duration, Instant};
use tracing::debug;

use super::dial::Dialer;
use crate::error::{ForwardError, classify_target_error};
use crate::shutdown::Drain;
use crate::tunnel::Body;
use crate::tunnel::authority::Target;

/// Idle connections to targets are closed after this long.
pub(crate) const IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// Idle connections kept per target: enough for the parallel requests browsers and load tools keep open to one
/// host. A smaller list made the server close and reopen target connections under many parallel callers
/// (bench/results/HISTORY.md).
pub(crate) const MAX_IDLE_PER_TARGET: usize = 256;

/// The connections to targets of one server, shared by all its agents.
pub(crate) struct TargetPool {
    dialer: Arc<Dialer>,
    /// Idle connections by the thread that drives them, then by target.
    idle: Mutex<HashMap<ThreadId, HashMap<Target, Vec<Idle>>>>,
    /// Owns the connections' tasks: shutdown waits for them, and cuts them off at the end of the grace period.
    drain: Drain,
    /// Shutdown has started: a connection is closed after its response instead of kept.
    closing: AtomicBool,
}

struct Idle {
    sender: http1::SendRequest<Body>,
    since: Instant,
}

impl Idle {
    fn usable(&self, now: Instant) -> bool {
        !self.sender.is_closed() && now.duration_since(self.since) < IDLE_TIMEOUT
    }
}

impl TargetPool {
    pub(crate) fn new(dialer: Arc<Dialer>, drain: Drain) -> Self {
        Self {
            dialer,
            idle: Mutex::new(HashMap::new()),
            drain,
            closing: AtomicBool::new(false),
        }
    }

    fn idle(&self) -> MutexGuard<'_, HashMap<ThreadId, HashMap<Target, Vec<Idle>>>> {
        self.idle.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sends `req` to `target` (its URI in origin form, `Host` set): on an idle connection when one is ready,
    /// otherwise on a new one. A request an idle connection could not take (the target had closed it) goes to the
    /// next one, or a new one, whole: nothing of it was written.
    pub(crate) async fn send(
        self: &Arc<Self>,
        target: &Target,
        mut req: Request<Body>,
    ) -> Result<Response<PooledBody>, ForwardError> {
        // The thread this request runs on, and so the one that drives the connections it opens or takes.
        let thread = std::thread::current().id();
        while let Some(mut sender) = self.checkout(thread, target) {
            match sender.try_send_request(req).await {
                Ok(response) => return Ok(self.track(thread, target, sender, response)),
                Err(mut err) => match err.take_message() {
                    Some(unsent) => req = unsent,
                    None => return Err(classify_target_error(&err.into_error())),
                },
            }
        }
        // Boxed: dialing is the rare path, and its state would otherwise enlarge every stream's task.
        let mut sender = Box::pin(self.open(target)).await?;
        let response = sender
            .send_request(req)
            .await
            .map_err(|err| classify_target_error(&err))?;
        Ok(self.track(thread, target, sender, response))
    }

    /// A new connection to `target`, its I/O driven by a task of its own.
    async fn open(&self, target: &Target) -> Result<http1::SendRequest<Body>, ForwardError> {
        let socket = self
            .dialer
            .dial(target)
            .await
            .map_err(|err| classify_target_error(&*err))?;
        let (sender, conn) = http1::handshake(TokioIo::new(socket))
            .await
            .map_err(|err| classify_target_error(&err))?;
        let kill = self.drain.kill.clone();
        self.drain.tasks.spawn(async move {
            tokio::select! {
                ended = conn => if let Err(err) = ended {
                    debug!(error = %err, "target connection ended");
                },
                () = kill.cancelled() => {}
            }
        });
        Ok(sender)
    }

    /// The newest idle connection to `target` driven by `thread` that can take a request now. Closed and expired
    /// ones are dropped; ones still finishing their last exchange stay for later. Removal keeps the list oldest
    /// first, which `put` relies on.
    fn checkout(&self, thread: ThreadId, target: &Target) -> Option<http1::SendRequest<Body>> {
        let mut idle = self.idle();
        let idle = idle.get_mut(&thread)?;
        let list = idle.get_mut(target)?;
        let now = Instant::now();
        let mut found = None;
        let mut i = list.len();
        while i > 0 {
            i -= 1;
            if !list[i].usable(now) {
                list.remove(i);
            } else if list[i].sender.is_ready() {
                found = Some(list.remove(i).sender);
                break;
            }
        }
        if list.is_empty() {
            idle.remove(target);
        }
        found
    }

    /// Hands `sender` back to the idle list once `response`'s body has been read to the end.
    fn track(
        self: &Arc<Self>,
        thread: ThreadId,
        target: &Target,
        sender: http1::SendRequest<Body>,
        response: Response<Incoming>,
    ) -> Response<PooledBody> {
        let lease = Lease {
            pool: self.clone(),
            thread,
            target: target.clone(),
            sender,
        };
        let lease = if response.body().is_end_stream() {
            lease.release();
            None
        } else {
            Some(lease)
        };
        response.map(|body| PooledBody { body, lease })
    }

    fn put(&self, thread: ThreadId, target: Target, sender: http1::SendRequest<Body>) {
        if sender.is_closed() {
            return;
        }
        let mut idle = self.idle();
        // Read under the lock that `sweep` sets it under, so no connection is kept after the idle lists are cleared.
        if self.closing.load(Ordering::Relaxed) {
            return;
        }
        let list = idle.entry(thread).or_default().entry(target).or_default();
        if list.len() >= MAX_IDLE_PER_TARGET {
            // The oldest goes: the newest are the likeliest to be still open at the target.
            list.remove(0);
        }
        list.push(Idle {
            sender,
            since: Instant::now(),
        });
    }

    /// Closes idle connections that are past [`IDLE_TIMEOUT`] or closed by their target, every third of the
    /// timeout, until shutdown starts; then closes every idle connection, and from then on each busy one after its
    /// response.
    pub(crate) async fn sweep(self: Arc<Self>) {
        let stop = self.drain.graceful.clone();
        let mut tick = tokio::time::interval(IDLE_TIMEOUT / 3);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = stop.cancelled() => {
                    let mut idle = self.idle();
                    self.closing.store(true, Ordering::Relaxed);
                    idle.clear();
                    return;
                }
                _ = tick.tick() => {}
            }
            let now = Instant::now();
            self.idle().retain(|_, targets| {
                targets.retain(|_, list| {
                    list.retain(|conn| conn.usable(now));
                    !list.is_empty()
                });
                !targets.is_empty()
            });
        }
    }

    /// Idle connections kept to `target` (for tests).
    #[cfg(test)]
    fn idle_count(&self, target: &Target) -> usize {
        self.idle()
            .values()
            .filter_map(|targets| targets.get(target))
            .map(Vec::len)
            .sum()
    }
}

/// A connection taken from the pool for one exchange, given back when its response has been read.
struct Lease {
    pool: Arc<TargetPool>,
    /// The thread the connection's I/O is driven on.
    thread: ThreadId,
    target: Target,
    sender: http1::SendRequest<Body>,
}

impl Lease {
    fn release(self) {
        self.pool.put(self.thread, self.target, self.sender);
    }
}

/// A target's response body; when read to the end, its connection goes back to the idle list. Dropped before
/// that, the connection is closed with it (HTTP/1.1 cannot abandon a response half read).
pub(crate) struct PooledBody {
    body: Incoming,
    lease: Option<Lease>,
}

impl HttpBody for PooledBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let frame = ready!(Pin::new(&mut self.body).poll_frame(cx));
        match &frame {
            Some(Ok(_)) if !self.body.is_end_stream() => {}
            Some(Err(_)) => self.lease = None,
            Some(Ok(_)) | None => {
                if let Some(lease) = self.lease.take() {
                    lease.release();
                }
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::policy::TargetPolicy;
    use http_body_util::BodyExt;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// A target that answers every request on a connection with `body`, counting the connections it accepted;
    /// with `close`, it says `connection: close` and closes after each answer.
    async fn target_server(body: &'static str, close: bool) -> (Target, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let target = Target {
            host: "127.0.0.1".into(),
            port: listener.local_addr().unwrap().port(),
        };
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            loop {
                let (mut socket, _) = listener.accept().await.unwrap();
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    let mut seen = Vec::new();
                    loop {
                        let n = socket.read(&mut buf).await.unwrap_or(0);
                        if n == 0 {
                            return;
                        }
                        seen.extend_from_slice(&buf[..n]);
                        while let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                            seen.drain(..end + 4);
                            let connection = if close { "connection: close\r\n" } else { "" };
                            let reply = format!(
                                "HTTP/1.1 200 OK\r\n{connection}content-length: {}\r\n\r\n{body}",
                                body.len()
                            );
                            if socket.write_all(reply.as_bytes()).await.is_err() || close {
                                return;
                            }
                        }
                    }
                });
            }
        });
        (target, accepted)
    }

    fn request(target: &Target) -> Request<Body> {
        Request::get("/x")
            .header(http::header::HOST, target.to_string())
            .body(crate::tunnel::empty())
            .unwrap()
    }

    /// One request through `pool`, its body read to the end.
    async fn fetch(pool: &Arc<TargetPool>, target: &Target) -> Bytes {
        let response = pool.send(target, request(target)).await.unwrap();
        response.into_body().collect().await.unwrap().to_bytes()
    }

    fn pool() -> Arc<TargetPool> {
        let policy = TargetPolicy::new(true, &[], &[]).unwrap();
        let dialer = Arc::new(Dialer::new(policy, Duration::from_secs(5)));
        Arc::new(TargetPool::new(dialer, Drain::default()))
    }

    #[tokio::test]
    async fn a_connection_read_to_the_end_is_reused() {
        tokio::time::timeout(Duration::from_secs(10), async {
            let (target, accepted) = target_server("hello", false).await;
            let pool = pool();
            for _ in 0..3 {
                assert_eq!(fetch(&pool, &target).await, "hello");
                // Back in the list once read, and ready for the next request.
                assert_eq!(pool.idle_count(&target), 1);
            }
            assert_eq!(accepted.load(Ordering::SeqCst), 1);
        })
        .await
        .unwrap();
    }

    #[tokio::test]
    async fn a_response_dropped_half_read_does_not_come_back() {
        tokio::time::timeout(Duration::from_secs(10), async {
            let (target, accepted) = target_server("hello", false).await;
            let pool = pool();
            let response = pool.send(&target, request(&target)).await.unwrap();
            drop(response);
            assert_eq!(pool.idle_count(&target), 0);
            assert_eq!(fetch(&pool, &target).await, "hello");
            assert_eq!(accepted.load(Ordering::SeqCst), 2);
        })
        .await
        .unwrap();
    }

    #[tokio::test]
    async fn a_connection_the_target_closes_is_not_reused() {
        tokio::time::timeout(Duration::from_secs(10), async {
            let (target, accepted) = target_server("bye", true).await;
            let pool = pool();
            for _ in 0..3 {
                assert_eq!(fetch(&pool, &target).await, "bye");
            }
            assert_eq!(accepted.load(Ordering::SeqCst), 3);
        })
        .await
        .unwrap();
    }

    /// A second worker thread opens its own connection rather than take the first thread's idle one, whose I/O
    /// only the first thread drives (here it is parked, so a shared connection would never answer).
    #[test]
    fn a_connection_stays_with_the_thread_that_drives_it() {
        let target_runtime = tokio::runtime::Runtime::new().unwrap();
        let (target, accepted) = target_runtime.block_on(target_server("hi", false));
        let pool = pool();
        let worker = || {
            let (pool, target) = (pool.clone(), target.clone());
            let (done, finished) = std::sync::mpsc::channel();
            let (release, released) = std::sync::mpsc::channel::<()>();
            let thread = std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                runtime.block_on(async {
                    tokio::time::timeout(Duration::from_secs(5), async {
                        for _ in 0..2 {
                            assert_eq!(fetch(&pool, &target).await, "hi");
                        }
                    })
                    .await
                    .unwrap();
                });
                done.send(()).unwrap();
                // The runtime, and the connection it drives, stay until released.
                let _ = released.recv();
            });
            (thread, finished, release)
        };
        let (first, first_finished, release_first) = worker();
        first_finished.recv().unwrap();
        assert_eq!(pool.idle_count(&target), 1);
        let (second, second_finished, release_second) = worker();
        let second_result = second_finished.recv();
        drop((release_first, release_second));
        first.join().unwrap();
        let _ = second.join();
        second_result.expect("the second thread's requests failed");
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }
}
