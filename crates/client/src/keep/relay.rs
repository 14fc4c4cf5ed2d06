//! Copying a block from one cluster to another without holding it: the source's
//! response body is relayed, a piece at a time, to every destination upload at once,
//! through small bounded buffers. Memory per block is a few pieces per upload,
//! whatever the block's size.
//!
//! The destination keepstores check the MD5 of what they receive (§5.4), so nothing
//! that does not match its hash is stored. What can go wrong, and what happens:
//! - the source breaks mid-body (cut short, stalled, reset): every upload of that
//!   round is aborted (its body ends in an error, so the server stores nothing), and
//!   the round starts again from the next source replica; the uploads do not count as
//!   the destination's failures;
//! - one upload fails while others go on: the block is read again from the source
//!   for the next service in probe order (no spill to disk or memory);
//! - the data does not match its hash: the destination says so
//!   ([`Error::ContentRejected`]), and the caller can read it again with its own
//!   check, which fails over to a good replica.

use bytes::Bytes;
use futures::StreamExt as _;
use futures::stream::FuturesUnordered;
use tokio::sync::mpsc;

use super::put::WriteState;
use super::{KeepClient, PutResult, WriteTarget, body_error, read_error, request_id};
use crate::error::{Error, Result};
use crate::locator::Locator;
use crate::stall::{Progress, channel_body, stalled, watch};

/// Pieces of the source body buffered per upload: the slowest upload paces the copy.
const PIECES: usize = 8;

/// Why [`KeepClient::copy_to`] failed: reading the source or writing the destination.
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    /// The source could not be read (every replica, after retries).
    #[error("{0}")]
    Read(Error),
    /// The destination could not store enough replicas.
    #[error("{0}")]
    Write(Error),
}

/// The source replicas of one block, tried in probe order, pass after pass.
struct Sources<'a> {
    client: &'a KeepClient,
    locator: &'a Locator,
    order: Vec<&'a crate::KeepService>,
    /// Candidates of this pass, and the next to try.
    pass: Vec<usize>,
    next: usize,
    /// Those that failed temporarily in this pass.
    retry: Vec<usize>,
    last: Vec<Option<Error>>,
    attempt: u32,
    backoff: crate::Backoff,
    reqid: String,
}

impl<'a> Sources<'a> {
    fn new(client: &'a KeepClient, locator: &'a Locator) -> Sources<'a> {
        let order = client.readable_order(&locator.hash());
        let n = order.len();
        Sources {
            client,
            locator,
            order,
            pass: (0..n).collect(),
            next: 0,
            retry: Vec::new(),
            last: (0..n).map(|_| None).collect(),
            attempt: 0,
            backoff: client.options.retry.backoff(),
            reqid: request_id(),
        }
    }

    /// The next replica that answers 200: its response and index; or, once every
    /// replica failed on every pass, the read's error.
    async fn open(&mut self) -> Result<(reqwest::Response, usize)> {
        loop {
            if self.next >= self.pass.len() {
                self.attempt += 1;
                if self.retry.is_empty() || self.attempt >= self.client.options.retry.attempts() {
                    let last = std::mem::take(&mut self.last);
                    return Err(read_error(self.locator, &self.order, last));
                }
                self.pass = std::mem::take(&mut self.retry);
                self.next = 0;
                tokio::time::sleep(self.backoff.next_delay()).await;
            }
            let i = self.pass[self.next];
            self.next += 1;
            let svc = self.order[i];
            let progress = Progress::new();
            let opened = watch(
                self.client.open_once(svc, self.locator, &self.reqid, false),
                &progress,
                self.client.options.stall_timeout,
                &svc.uuid,
            )
            .await;
            match opened {
                Ok((resp, _)) => return Ok((resp, i)),
                Err(e) => self.failed(i, e),
            }
        }
    }

    /// Makes replica `i`, which was just read whole, the first one tried again: a
    /// next round (an upload that failed, a service still to fill) reads the replica
    /// that answered, not the ones after it, which may not hold the block at all
    /// (they would answer 404, and the block would look deleted).
    fn again(&mut self, i: usize) {
        if self.next > 0 && self.pass[self.next - 1] == i {
            self.next -= 1;
        }
    }

    /// Records that replica `i` failed (while opening, or mid-body).
    fn failed(&mut self, i: usize, e: Error) {
        tracing::debug!(block = %self.locator, service = %self.order[i].uuid, error = %e, "read failed");
        if e.is_retryable() {
            self.retry.push(i);
        }
        self.last[i] = Some(e);
    }
}

impl KeepClient {
    /// Copies the block `read` (a sized locator, signed for this client's token if the
    /// source enforces signatures) from this cluster to `dst` until `target` is met,
    /// streaming: the source body is relayed to every upload of a round at once, never
    /// held whole (see the module docs for what happens when either side fails).
    /// The source is read with the same probe order, failover and retries as
    /// [`KeepClient::get_unchecked`]; the destination is written as by
    /// [`KeepClient::put_to`], a round at a time.
    ///
    /// # Errors
    /// [`CopyError::Read`] with the source's error (as [`KeepClient::get`] would give
    /// it); [`CopyError::Write`] with the destination's (as [`KeepClient::put_to`]
    /// would), including [`Error::ContentRejected`] when the data did not match its
    /// hash.
    pub async fn copy_to(
        &self,
        read: &Locator,
        dst: &KeepClient,
        target: &WriteTarget<'_>,
    ) -> std::result::Result<PutResult, CopyError> {
        let size = read.size().ok_or_else(|| {
            CopyError::Read(Error::Config(format!("copying {read} needs its size hint")))
        })?;
        let mut state = WriteState::new(dst, target);
        if state.wanted() == 0 {
            return state
                .outcome(target.hash, size, target.desired)
                .map_err(CopyError::Write);
        }
        if !state.has_candidates() {
            return Err(CopyError::Write(Error::NoServices { kind: "writable" }));
        }
        let mut sources = Sources::new(self, read);
        if sources.order.is_empty() {
            return Err(CopyError::Read(Error::NoServices { kind: "readable" }));
        }
        let unsigned = Locator::new(target.hash, size);
        let reqid = request_id();
        let attempts = dst.options.retry.attempts();
        let mut backoff = dst.options.retry.backoff();
        let mut write_pass = 0;
        loop {
            // This round's uploads: as many as the replicas still wanted need.
            let targets: Vec<usize> = std::iter::from_fn(|| state.next_upload()).collect();
            if targets.is_empty() {
                if state.wanted() == 0 {
                    break;
                }
                write_pass += 1;
                if write_pass >= attempts || !state.next_pass() {
                    break;
                }
                tokio::time::sleep(backoff.next_delay()).await;
                continue;
            }
            let (resp, src) = match sources.open().await {
                Ok(x) => x,
                Err(e) => return Err(CopyError::Read(e)),
            };
            let mut senders = Vec::new();
            let mut uploads = FuturesUnordered::new();
            for &i in &targets {
                let (tx, rx) = mpsc::channel(PIECES);
                senders.push(Some(tx));
                let svc = &dst.services[i];
                let classes = state.classes_header();
                let body = |progress| channel_body(rx, progress);
                let fut = dst.put_body(svc, &unsigned, size, body, target.desired, classes, &reqid);
                uploads.push(async move { (i, fut.await) });
            }
            // Relay the body while the uploads run.
            let relayed = {
                let relay = self.relay(resp, sources.order[src], read, size, &mut senders);
                let drive = async {
                    // Keep the uploads moving while the relay feeds them.
                    let mut done = Vec::new();
                    let mut relay = std::pin::pin!(relay);
                    loop {
                        tokio::select! {
                            r = &mut relay => return (r, done),
                            Some(d) = uploads.next(), if !uploads.is_empty() => done.push(d),
                        }
                    }
                };
                drive.await
            };
            let (relayed, mut done) = relayed;
            // The body is complete (or aborted): wait for every upload's answer.
            drop(senders);
            while let Some(d) = uploads.next().await {
                done.push(d);
            }
            match relayed {
                Ok(()) => {
                    for (i, result) in done {
                        if let Err(e) = &result {
                            tracing::debug!(block = %unsigned, service = %dst.services[i].uuid, error = %e, "write failed");
                        }
                        state.finish_upload(i, result).map_err(CopyError::Write)?;
                    }
                    if state.wanted() == 0 {
                        break;
                    }
                    sources.again(src);
                }
                Err(e) => {
                    // The source broke: the uploads were aborted, through no fault of
                    // theirs; the same services are asked again, in the same order,
                    // with the next replica.
                    sources.failed(src, e);
                    for &i in targets.iter().rev() {
                        state.requeue(i);
                    }
                }
            }
        }
        state
            .outcome(target.hash, size, target.desired)
            .map_err(CopyError::Write)
    }

    /// Feeds `resp`'s body to every sender, in order, until it ends; on a source error
    /// every sender gets an error (aborting its upload) and the error is returned. An
    /// upload that went away is dropped from the relay; the others go on.
    async fn relay(
        &self,
        mut resp: reqwest::Response,
        svc: &crate::KeepService,
        read: &Locator,
        size: u64,
        senders: &mut [Option<mpsc::Sender<std::io::Result<Bytes>>>],
    ) -> Result<()> {
        let limit = self.options.stall_timeout;
        let mut received = 0u64;
        let failed = loop {
            let chunk = match tokio::time::timeout(limit, resp.chunk()).await {
                Err(_) => break stalled(&svc.uuid, limit),
                Ok(Err(e)) => break body_error(svc, read, e, received, Some(size)),
                Ok(Ok(None)) if received == size => return Ok(()),
                Ok(Ok(None)) => {
                    break Error::SizeMismatch {
                        locator: read.unsigned(),
                        service: svc.uuid.clone(),
                        expected: size,
                        got: format!("received {received} bytes"),
                    };
                }
                Ok(Ok(Some(c))) => c,
            };
            received += chunk.len() as u64;
            self.traffic.add_received(chunk.len());
            if received > size {
                break Error::SizeMismatch {
                    locator: read.unsigned(),
                    service: svc.uuid.clone(),
                    expected: size,
                    got: format!("received more than {size} bytes"),
                };
            }
            for s in senders.iter_mut() {
                if let Some(tx) = s {
                    if tx.send(Ok(chunk.clone())).await.is_err() {
                        // That upload ended (it failed); its answer says why.
                        *s = None;
                    }
                }
            }
            if senders.iter().all(Option::is_none) {
                // Every upload is gone: no point reading on.
                return Ok(());
            }
        };
        for tx in senders.iter_mut().flatten() {
            let _ = tx
                .send(Err(std::io::Error::other("the source broke off")))
                .await;
        }
        Err(failed)
    }
}
