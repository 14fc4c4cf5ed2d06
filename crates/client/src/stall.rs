//! Stall detection: a Keep transfer fails only when no byte has moved for a while,
//! never because it is slow. A 64 MiB block through a 100 kB/s link takes eleven
//! minutes and is fine; a connection on which nothing has arrived, or been taken,
//! for a minute is not.
//!
//! Each request gets a [`Progress`] clock. Uploads touch it as the HTTP stack takes
//! each piece of the body ([`upload_body`]); downloads as each piece of the response
//! arrives. [`watch`] runs the request against the clock.
//!
//! What the kernel does with an upload's bytes once the HTTP stack has handed them
//! over is not seen by that clock: a socket's send buffer holds megabytes, which drain
//! at the link's pace after the last piece is taken. Four things cover that time. The
//! kernel closes a connection whose sent data stays unacknowledged for the stall
//! timeout (`TCP_USER_TIMEOUT`, set on every connection), so a dead peer or link is
//! still caught. The wait for the answer after the whole body was handed over is
//! allowed [`AFTER_BODY`] more: a keepstore gives up on a request itself after its
//! `API.RequestTimeout` (5 minutes by default, §5.3), so an answer later than that
//! will not come. Uploads to one service share a clock: one that waits for its socket
//! to drain is not stalled while another to the same service moves
//! ([`Progress::upload`]). And before one is called stalled, the kernel's send queues
//! to its service are looked at: if they moved, so did it (send_queue.rs).

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures::Stream;

use crate::error::Error;
use crate::send_queue::{Seen, SendQueues};

/// Upload pieces: small enough that a slow link still shows progress well within any
/// sensible stall timeout (256 KiB at 50 kB/s is 5 s), large enough to cost nothing.
const PIECE: usize = 256 * 1024;

/// The extra wait for an upload's answer once its whole body has been handed to the
/// kernel (see the module docs).
pub(crate) const AFTER_BODY: Duration = Duration::from_secs(300);

/// When a transfer last moved.
#[derive(Debug)]
pub(crate) struct Progress {
    start: tokio::time::Instant,
    last_ms: AtomicU64,
    /// Set once an upload's whole body has been handed over.
    body_sent: std::sync::atomic::AtomicBool,
    /// Set while a relayed upload waits for its next piece from the source: that
    /// wait is the source's (or a slower sibling upload's), each watched on its own.
    awaiting_piece: std::sync::atomic::AtomicBool,
    /// An upload's service: when any upload to it last moved (see [`Progress::upload`]).
    service: Option<Arc<Progress>>,
    /// A service's clock: the send queues of the connections to it, looked at before
    /// any of its uploads is called stalled.
    queues: Option<SendQueues>,
}

impl Progress {
    /// A clock that starts now.
    pub(crate) fn new() -> Arc<Progress> {
        Progress::starting(None, None)
    }

    /// The shared clock of the uploads to the service at `url` (see
    /// [`Progress::upload`]).
    pub(crate) fn service(url: &str) -> Arc<Progress> {
        Progress::starting(None, SendQueues::of_url(url))
    }

    fn starting(service: Option<Arc<Progress>>, queues: Option<SendQueues>) -> Arc<Progress> {
        Arc::new(Progress {
            start: tokio::time::Instant::now(),
            last_ms: AtomicU64::new(0),
            body_sent: std::sync::atomic::AtomicBool::new(false),
            awaiting_piece: std::sync::atomic::AtomicBool::new(false),
            service,
            queues,
        })
    }

    /// The clock of an upload to a service whose uploads all touch `service`. The
    /// upload counts as moving while any of them moves. Uploads that share a slow
    /// link take turns: each socket's send buffer holds megabytes, and the HTTP stack
    /// takes no piece of a body until its buffer drains, which for one of 133
    /// uploads sharing 5 MB/s took over a minute; each was cut as stalled, read
    /// again and cut again, and 200 blocks of 8 MiB at once made no progress in 13
    /// minutes (bench/run S7, --concurrency 256). A dead peer is still caught by the
    /// kernel (`TCP_USER_TIMEOUT`), and a keepstore drops a request it has not
    /// finished after its `API.RequestTimeout` (§5.3). The shared clock alone did
    /// not end such false stalls: the kernel buffers of a few dozen connections can
    /// hold more than a minute of a slow link, and then no upload to the service
    /// takes a piece for that long. So before an upload is called stalled, [`watch`]
    /// looks at what the kernel still has to send to the service (send_queue.rs).
    pub(crate) fn upload(service: Arc<Progress>) -> Arc<Progress> {
        Progress::starting(Some(service), None)
    }

    /// Whether the kernel moved bytes of this upload's service lately (see
    /// send_queue.rs); a service that moved counts as a touch of its clock. Looks are
    /// at least a quarter of the stall `limit` apart.
    async fn kernel_look(&self, limit: Duration) -> Seen {
        let Some(service) = &self.service else {
            return Seen::Unknown;
        };
        let Some(queues) = &service.queues else {
            return Seen::Unknown;
        };
        let seen = queues.look(limit / 4).await;
        if seen == Seen::Moved {
            service.touch();
        }
        seen
    }

    /// Records that bytes moved.
    pub(crate) fn touch(&self) {
        let ms = self.start.elapsed().as_millis() as u64;
        self.last_ms.fetch_max(ms, Ordering::Relaxed);
        if let Some(s) = &self.service {
            s.touch();
        }
    }

    /// How long the transfer may stay idle: `limit`, and [`AFTER_BODY`] more once an
    /// upload's body has been handed over.
    fn allowed(&self, limit: Duration) -> Duration {
        if self.body_sent.load(Ordering::Relaxed) {
            limit + AFTER_BODY
        } else {
            limit
        }
    }

    /// Time since bytes last moved (on this transfer, or on its service's uploads);
    /// none while a relayed upload waits for its next piece.
    fn idle(&self) -> Duration {
        if self.awaiting_piece.load(Ordering::Relaxed) {
            return Duration::ZERO;
        }
        let now = self.start.elapsed();
        let own = now.saturating_sub(Duration::from_millis(self.last_ms.load(Ordering::Relaxed)));
        match &self.service {
            Some(s) => own.min(s.idle()),
            None => own,
        }
    }
}

/// Runs `fut` until it finishes, or until `progress` has been idle for `limit`; then
/// the error names `service` and the limit.
pub(crate) async fn watch<T>(
    fut: impl Future<Output = Result<T, Error>>,
    progress: &Progress,
    limit: Duration,
    service: &str,
) -> Result<T, Error> {
    tokio::pin!(fut);
    loop {
        let allowed = progress.allowed(limit);
        let mut wait = allowed.saturating_sub(progress.idle());
        if wait.is_zero() {
            match progress.kernel_look(limit).await {
                Seen::Moved => continue,
                Seen::TooSoon(later) => wait = later,
                Seen::Still | Seen::Unknown => return Err(stalled(service, allowed)),
            }
        }
        tokio::select! {
            biased;
            out = &mut fut => return out,
            () = tokio::time::sleep(wait) => {}
        }
    }
}

/// The error of a transfer on which nothing moved for `limit`: retryable, like any
/// timeout.
pub(crate) fn stalled(service: &str, limit: Duration) -> Error {
    Error::Timeout {
        service: service.to_owned(),
        message: format!(
            "stalled: no byte moved for {} s (stall timeout)",
            limit.as_secs_f64()
        ),
    }
}

/// The body of an upload fed by `rx` (a relay): each piece touches `progress` when
/// the HTTP stack takes it; an `Err` piece aborts the upload (the source broke), so
/// that the server never stores a partial block.
pub(crate) fn channel_body(
    rx: tokio::sync::mpsc::Receiver<Result<Bytes, std::io::Error>>,
    progress: Arc<Progress>,
) -> reqwest::Body {
    reqwest::Body::wrap_stream(channel_pieces(rx, progress))
}

/// The pieces of [`channel_body`], as the HTTP stack takes them.
fn channel_pieces(
    rx: tokio::sync::mpsc::Receiver<Result<Bytes, std::io::Error>>,
    progress: Arc<Progress>,
) -> impl Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static {
    futures::stream::unfold((rx, progress), |(mut rx, progress)| async move {
        progress.awaiting_piece.store(true, Ordering::Relaxed);
        let item = rx.recv().await;
        // Waiting ends here: the clock restarts from this piece.
        progress.touch();
        progress.awaiting_piece.store(false, Ordering::Relaxed);
        let Some(item) = item else {
            progress.body_done();
            return None;
        };
        Some((item, (rx, progress)))
    })
}

impl Progress {
    /// Records that an upload's whole body has been handed over (see [`AFTER_BODY`]).
    pub(crate) fn body_done(&self) {
        self.body_sent.store(true, Ordering::Relaxed);
    }
}

/// The body of an upload of `data`: its pieces, shared with `data` (no copy), each
/// touching `progress` when the HTTP stack takes it.
pub(crate) fn upload_body(data: Bytes, progress: Arc<Progress>) -> reqwest::Body {
    reqwest::Body::wrap_stream(Pieces {
        rest: data,
        progress,
    })
}

struct Pieces {
    rest: Bytes,
    progress: Arc<Progress>,
}

impl Stream for Pieces {
    type Item = Result<Bytes, std::io::Error>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        if self.rest.is_empty() {
            return std::task::Poll::Ready(None);
        }
        let n = self.rest.len().min(PIECE);
        let piece = self.rest.split_to(n);
        // Taking this piece means the previous one was written.
        self.progress.touch();
        if self.rest.is_empty() {
            self.progress.body_sent.store(true, Ordering::Relaxed);
        }
        std::task::Poll::Ready(Some(Ok(piece)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn moving_is_never_cut_and_stalling_is() {
        let limit = Duration::from_secs(60);
        // 5 minutes of work that moves every 30 s: finishes.
        let p = Progress::new();
        let work = async {
            for _ in 0..10 {
                tokio::time::sleep(Duration::from_secs(30)).await;
                p.touch();
            }
            Ok::<_, Error>(7)
        };
        assert_eq!(watch(work, &p, limit, "s").await.unwrap(), 7);

        // Work that moves once, then nothing: cut 60 s after the last move.
        let p = Progress::new();
        let t = tokio::time::Instant::now();
        let work = async {
            tokio::time::sleep(Duration::from_secs(10)).await;
            p.touch();
            std::future::pending::<()>().await;
            Ok::<_, Error>(0)
        };
        let e = watch(work, &p, limit, "svc").await.unwrap_err();
        assert!(e.is_retryable());
        assert!(e.to_string().contains("stalled"), "{e}");
        assert_eq!(t.elapsed(), Duration::from_secs(70));

        // An upload whose body is all handed over waits AFTER_BODY more for its answer.
        let p = Progress::new();
        let t = tokio::time::Instant::now();
        let body = upload_body(Bytes::from(vec![0u8; 10]), Arc::clone(&p));
        drop(body); // (the stream itself is taken by the HTTP stack)
        p.body_sent.store(true, Ordering::Relaxed);
        let work = std::future::pending::<Result<(), Error>>();
        let e = watch(work, &p, limit, "svc").await.unwrap_err();
        assert_eq!(t.elapsed(), limit + AFTER_BODY, "{e}");
    }

    #[tokio::test(start_paused = true)]
    async fn uploads_sharing_a_moving_service_are_not_cut() {
        let limit = Duration::from_secs(60);
        let service = Progress::new();
        // One upload waits 3 minutes for its turn while another to the same service
        // moves every 20 s: neither is cut.
        let waiting = Progress::upload(Arc::clone(&service));
        let moving = Progress::upload(Arc::clone(&service));
        let work = async {
            for _ in 0..9 {
                tokio::time::sleep(Duration::from_secs(20)).await;
                moving.touch();
            }
            Ok::<_, Error>(1)
        };
        let t = tokio::time::Instant::now();
        let turn = async {
            tokio::time::sleep(Duration::from_secs(180)).await;
            Ok::<_, Error>(2)
        };
        let (a, b) = tokio::join!(
            watch(work, &moving, limit, "s"),
            watch(turn, &waiting, limit, "s")
        );
        assert_eq!((a.unwrap(), b.unwrap()), (1, 2));
        assert_eq!(t.elapsed(), Duration::from_secs(180));

        // Once nothing to the service moves, an upload is cut 60 s after the last
        // move of any of them.
        let t = tokio::time::Instant::now();
        let stuck = Progress::upload(Arc::clone(&service));
        let e = watch(
            std::future::pending::<Result<(), Error>>(),
            &stuck,
            limit,
            "s",
        )
        .await
        .unwrap_err();
        assert!(e.to_string().contains("stalled"), "{e}");
        assert_eq!(t.elapsed(), limit);

        // A download has its own clock only.
        let other = Progress::new();
        service.touch();
        let t = tokio::time::Instant::now();
        let e = watch(
            std::future::pending::<Result<(), Error>>(),
            &other,
            limit,
            "s",
        )
        .await;
        assert!(e.is_err());
        assert_eq!(t.elapsed(), limit);
    }

    #[tokio::test(start_paused = true)]
    async fn a_relayed_upload_waiting_for_its_source_is_not_cut() {
        use futures::StreamExt as _;
        let limit = Duration::from_secs(60);
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        let p = Progress::new();
        let mut pieces = Box::pin(channel_pieces(rx, Arc::clone(&p)));
        // The source (or a slower sibling upload) sends nothing for 5 minutes.
        let feed = async {
            tokio::time::sleep(Duration::from_secs(300)).await;
            tx.send(Ok(Bytes::from_static(b"x"))).await.unwrap();
        };
        let take = async {
            let first = pieces.next().await;
            Ok::<_, Error>(first.map(|r| r.unwrap().len()))
        };
        let t = tokio::time::Instant::now();
        let (taken, ()) = tokio::join!(watch(take, &p, limit, "s"), feed);
        assert_eq!(taken.unwrap(), Some(1));
        assert_eq!(t.elapsed(), Duration::from_secs(300));

        // Holding a piece the HTTP stack does not take is a stall again, 60 s on.
        let t = tokio::time::Instant::now();
        let e = watch(std::future::pending::<Result<(), Error>>(), &p, limit, "s").await;
        assert!(e.is_err());
        assert_eq!(t.elapsed(), limit);
    }
}
