//! PUT (§8.6): uploads in probe order until the wanted replicas and storage classes
//! are confirmed, counting what each answer says it stored.
//!
//! [`WriteState`] is the bookkeeping (which service next, what is still wanted, who
//! failed and whether to try them again), with no I/O, so that a buffered PUT and a
//! streamed relay (which can only start uploads at the beginning of a read of the
//! source) share one set of rules.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use reqwest::header::{CONTENT_LENGTH, CONTENT_TYPE, HeaderValue};

use super::{KeepClient, PutResult, error_body, request_id};
use crate::error::{Error, Result, ServiceFailure};
use crate::locator::{BlockHash, Locator, LocatorError, MAX_BLOCK_SIZE};
use crate::services::KeepService;
use crate::stall::{Progress, upload_body, watch};
use crate::tls::transport_error;

/// What a write must achieve and where it may go: the input of [`KeepClient::put_to`].
#[derive(Debug, Clone)]
pub struct WriteTarget<'a> {
    /// The block.
    pub hash: BlockHash,
    /// The replication level wanted in all: sent as `X-Keep-Desired-Replicas`.
    pub desired: usize,
    /// Replicas still to store (fewer than `desired` when some already exist).
    pub need: usize,
    /// Storage classes still to satisfy, each with the replicas it still needs, sent
    /// as `X-Keep-Storage-Classes` and counted from `X-Keep-Storage-Classes-Confirmed`.
    /// Empty: no class is asked for, and only `need` counts.
    pub classes: BTreeMap<String, usize>,
    /// Indexes (into [`KeepClient::services`]) of services never to write: they hold
    /// the block already, are full, or are down.
    pub exclude: &'a [usize],
    /// Replicas one upload to each service (by index) is expected to store, e.g. 2 for
    /// a keepstore whose volume keeps two copies; `None` means 1 for every keepstore.
    /// Uploads start until the expected replicas cover what is wanted, so an estimate
    /// on the high side never over-replicates, only waits. Non-keepstore services
    /// (proxies) are always written one at a time (§6.6).
    pub expect: Option<&'a [usize]>,
    /// For each service (by index), the other services that mount one of its writable
    /// volumes (`AccessViaHosts`). Two of them are never written at once, and once one
    /// stored the block the others are not asked: a keepstore that finds the block on
    /// a volume it shares touches it and reports it as a replica of its own (§5.4), so
    /// both answers would count one copy twice. `None`: no volume is shared.
    pub sharing: Option<&'a [Vec<usize>]>,
}

impl<'a> WriteTarget<'a> {
    /// `replicas` replicas of `hash`, in the classes of [`ClientOptions::storage_classes`](crate::ClientOptions::storage_classes), anywhere.
    pub fn new(hash: BlockHash, replicas: usize, classes: &[String]) -> WriteTarget<'a> {
        WriteTarget {
            hash,
            desired: replicas,
            need: replicas,
            classes: classes.iter().map(|c| (c.clone(), replicas)).collect(),
            exclude: &[],
            expect: None,
            sharing: None,
        }
    }
}

/// Parses `X-Keep-Storage-Classes-Confirmed: cls=N, cls2=M`; `None` when absent or
/// empty, which turns class tracking off (§8.6). Malformed items are ignored.
fn parse_confirmed(h: Option<&HeaderValue>) -> Option<Vec<(String, usize)>> {
    let s = h?.to_str().ok()?.trim();
    if s.is_empty() {
        return None;
    }
    let items: Vec<(String, usize)> = s
        .split(',')
        .filter_map(|item| {
            let (c, n) = item.split_once('=')?;
            let (c, n) = (c.trim(), n.trim().parse::<usize>().ok()?);
            (!c.is_empty() && n >= 1).then(|| (c.to_owned(), n))
        })
        .collect();
    Some(items)
}

/// One successful PUT answer.
#[derive(Debug)]
pub(crate) struct Stored {
    pub(crate) replicas: usize,
    pub(crate) locator: Locator,
    pub(crate) confirmed: Option<Vec<(String, usize)>>,
}

/// The bookkeeping of one write (§8.6), without I/O.
pub(crate) struct WriteState<'c> {
    services: &'c [KeepService],
    expect: Option<&'c [usize]>,
    sharing: Option<&'c [Vec<usize>]>,
    /// Candidates of this pass not started yet, in probe order.
    pending: Vec<usize>,
    /// Services with an upload in flight.
    running: Vec<usize>,
    /// Services that failed temporarily in this pass (tried again in the next).
    retry: Vec<usize>,
    /// Replicas the uploads in flight are expected to store.
    in_flight: usize,
    need: usize,
    done: usize,
    classes_todo: BTreeMap<String, usize>,
    tracking: bool,
    confirmed: BTreeMap<String, usize>,
    stored_on: Vec<String>,
    locator: Option<Locator>,
    /// Last failure per service, in first-failure order.
    failures: Vec<ServiceFailure>,
    /// Services that answered "full".
    full: Vec<String>,
}

impl<'c> WriteState<'c> {
    /// The writable services of `client` in probe order for the target, minus its
    /// exclusions.
    pub(crate) fn new(client: &'c KeepClient, t: &WriteTarget<'c>) -> WriteState<'c> {
        let servers: Vec<usize> = client
            .writable_order_indexes(&t.hash)
            .into_iter()
            .filter(|i| !t.exclude.contains(i))
            .collect();
        WriteState {
            services: client.services(),
            expect: t.expect,
            sharing: t.sharing,
            pending: servers,
            running: Vec::new(),
            retry: Vec::new(),
            in_flight: 0,
            need: t.need,
            done: 0,
            tracking: !t.classes.is_empty(),
            classes_todo: t.classes.clone(),
            confirmed: BTreeMap::new(),
            stored_on: Vec::new(),
            locator: None,
            failures: Vec::new(),
            full: Vec::new(),
        }
    }

    /// Whether any service may be written at all.
    pub(crate) fn has_candidates(&self) -> bool {
        !self.pending.is_empty()
    }

    /// The services that share a writable volume with service `i`.
    fn shares(&self, i: usize) -> &[usize] {
        self.sharing
            .and_then(|s| s.get(i))
            .map_or(&[], Vec::as_slice)
    }

    /// Replicas still wanted: the least-satisfied class while classes are tracked,
    /// else the total.
    pub(crate) fn wanted(&self) -> usize {
        if self.tracking {
            self.classes_todo.values().copied().min().unwrap_or(0)
        } else {
            self.need.saturating_sub(self.done)
        }
    }

    /// The classes to ask the next upload for, `", "`-joined.
    pub(crate) fn classes_header(&self) -> String {
        let names: Vec<&str> = self.classes_todo.keys().map(String::as_str).collect();
        names.join(", ")
    }

    fn expected(&self, i: usize) -> usize {
        if !self.services[i].is_disk() {
            // A proxy stores an unknown number: one upload at a time (§6.6).
            return usize::MAX;
        }
        self.expect
            .map_or(1, |e| e.get(i).copied().unwrap_or(1).max(1))
    }

    /// The next service to start an upload on, if the uploads in flight are not
    /// expected to cover what is still wanted: the first candidate left in this pass
    /// that shares no volume with an upload in flight.
    pub(crate) fn next_upload(&mut self) -> Option<usize> {
        let wanted = self.wanted();
        if wanted == 0 || self.in_flight >= wanted {
            return None;
        }
        let at = self
            .pending
            .iter()
            .position(|&i| !self.running.iter().any(|r| self.shares(*r).contains(&i)))?;
        let i = self.pending.remove(at);
        self.running.push(i);
        self.in_flight = self.in_flight.saturating_add(self.expected(i));
        Some(i)
    }

    /// Records the answer of the upload to service `i`. A content rejection is
    /// returned as an error: every service would say the same.
    pub(crate) fn finish_upload(&mut self, i: usize, result: Result<Stored>) -> Result<()> {
        self.in_flight = self.in_flight.saturating_sub(self.expected(i));
        self.running.retain(|&r| r != i);
        let uuid = &self.services[i].uuid;
        match result {
            Ok(stored) => {
                // Its volumes may hold the block now: no service that shares one adds
                // a replica (it would report the same copy again).
                let shared: Vec<usize> = self.shares(i).to_vec();
                self.pending.retain(|p| !shared.contains(p));
                self.retry.retain(|p| !shared.contains(p));
                self.done += stored.replicas;
                self.stored_on.push(uuid.clone());
                self.failures.retain(|f| &f.service != uuid);
                match stored.confirmed {
                    None => self.tracking = false,
                    Some(items) => {
                        for (class, n) in items {
                            *self.confirmed.entry(class.clone()).or_default() += n;
                            if let Some(todo) = self.classes_todo.get_mut(&class) {
                                *todo = todo.saturating_sub(n);
                                if *todo == 0 {
                                    self.classes_todo.remove(&class);
                                }
                            }
                        }
                    }
                }
                self.locator = Some(stored.locator);
                Ok(())
            }
            Err(e @ Error::ContentRejected { .. }) => Err(e),
            Err(e) => {
                if e.is_retryable() {
                    self.retry.push(i);
                }
                if e.reason() == "storage full" && !self.full.contains(uuid) {
                    self.full.push(uuid.clone());
                }
                self.failures.retain(|x| &x.service != uuid);
                self.failures.push(ServiceFailure::from_error(uuid, &e));
                Ok(())
            }
        }
    }

    /// Puts service `i`, whose upload was abandoned through no fault of its own (the
    /// source of a relay broke), back first in line, as if it had not been started.
    pub(crate) fn requeue(&mut self, i: usize) {
        self.in_flight = self.in_flight.saturating_sub(self.expected(i));
        self.running.retain(|&r| r != i);
        self.pending.insert(0, i);
    }

    /// Ends a pass: the services that failed temporarily become the candidates of
    /// the next one. False when none did (no further pass can help).
    pub(crate) fn next_pass(&mut self) -> bool {
        if self.retry.is_empty() {
            return false;
        }
        self.pending = std::mem::take(&mut self.retry);
        true
    }

    /// The outcome, once no upload is in flight.
    pub(crate) fn outcome(self, hash: BlockHash, size: u64, desired: usize) -> Result<PutResult> {
        let unsigned = Locator::new(hash, size);
        if self.wanted() == 0 {
            return Ok(PutResult {
                locator: self.locator.unwrap_or(unsigned),
                replicas: self.done,
                stored_on: self.stored_on,
                classes_confirmed: self.confirmed,
                full: self.full,
            });
        }
        Err(Error::InsufficientReplicas {
            locator: unsigned.unsigned(),
            wanted: desired,
            stored: self.done,
            failures: self.failures,
        })
    }
}

impl KeepClient {
    /// Writes a block (§8.6) to `replicas` replicas, in the storage classes of
    /// [`ClientOptions::storage_classes`](crate::ClientOptions::storage_classes):
    /// [`KeepClient::put_to`] with [`WriteTarget::new`].
    ///
    /// # Errors
    /// As [`KeepClient::put_to`].
    pub async fn put(&self, hash: BlockHash, data: Bytes, replicas: usize) -> Result<PutResult> {
        let target = WriteTarget::new(hash, replicas, &self.options.storage_classes);
        self.put_to(data, &target).await
    }

    /// Writes a block until `target` is met: uploads run concurrently to the first
    /// writable services in probe order (as many as the replicas still wanted need,
    /// by each service's expected replicas), a failed upload starts the next service,
    /// and services that failed temporarily (408/429/5xx except "full", network
    /// errors, timeouts: a PUT is idempotent) are tried again in the next pass after
    /// a backoff. Replicas are counted from each answer's `X-Keep-Replicas-Stored`,
    /// classes from `X-Keep-Storage-Classes-Confirmed`. `data` is shared with every
    /// upload, never copied.
    ///
    /// The server checks that `data` hashes to the target's hash; the client does not
    /// rehash. An empty block is uploaded like any other (as Python does). A target
    /// that needs nothing returns the unsigned locator without contacting any service.
    ///
    /// # Errors
    /// [`Error::InsufficientReplicas`] with each failed service's reason;
    /// [`Error::ContentRejected`] when a server says the data does not match the
    /// hash; [`Error::NoServices`] if no service may be written;
    /// [`Error::InvalidLocator`] for data over 64 MiB.
    pub async fn put_to(&self, data: Bytes, target: &WriteTarget<'_>) -> Result<PutResult> {
        let size = data.len() as u64;
        if size > MAX_BLOCK_SIZE {
            return Err(Error::InvalidLocator(LocatorError::TooLarge));
        }
        let unsigned = Locator::new(target.hash, size);
        let mut state = WriteState::new(self, target);
        if state.wanted() == 0 {
            return state.outcome(target.hash, size, target.desired);
        }
        if !state.has_candidates() {
            return Err(Error::NoServices { kind: "writable" });
        }
        let reqid = request_id();
        let attempts = self.options.retry.attempts();
        let mut backoff = self.options.retry.backoff();
        for attempt in 0..attempts {
            if attempt > 0 {
                if !state.next_pass() {
                    break;
                }
                let delay = backoff.next_delay();
                tracing::debug!(block = %unsigned, attempt, attempts, ?delay, "retrying write");
                tokio::time::sleep(delay).await;
            }
            let mut in_flight = FuturesUnordered::new();
            loop {
                while let Some(i) = state.next_upload() {
                    let svc = &self.services[i];
                    let fut = self.put_once(
                        svc,
                        &unsigned,
                        data.clone(),
                        target.desired,
                        state.classes_header(),
                        &reqid,
                    );
                    in_flight.push(async move { (i, fut.await) });
                }
                let Some((i, result)) = in_flight.next().await else {
                    break;
                };
                if let Err(e) = &result {
                    tracing::debug!(block = %unsigned, service = %self.services[i].uuid, attempt, attempts, error = %e, "write failed");
                }
                // A content rejection ends the write (uploads still running are dropped).
                state.finish_upload(i, result)?;
                if state.wanted() == 0 {
                    break;
                }
            }
            if state.wanted() == 0 {
                break;
            }
        }
        state.outcome(target.hash, size, target.desired)
    }

    pub(crate) async fn put_once(
        &self,
        svc: &KeepService,
        locator: &Locator,
        data: Bytes,
        replicas: usize,
        classes: String,
        reqid: &str,
    ) -> Result<Stored> {
        let size = data.len() as u64;
        let body = |progress| upload_body(data, progress);
        self.put_body(svc, locator, size, body, replicas, classes, reqid)
            .await
    }

    /// One PUT of `size` bytes whose body `body` makes (told of the transfer's
    /// progress, for the stall watch): a whole block, or a relay's channel.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn put_body(
        &self,
        svc: &KeepService,
        locator: &Locator,
        size: u64,
        body: impl FnOnce(Arc<Progress>) -> reqwest::Body,
        replicas: usize,
        classes: String,
        reqid: &str,
    ) -> Result<Stored> {
        // Writes send only the 32-hex hash (§8.3).
        let url = format!("{}/{}", svc.url, locator.hash());
        let mut req = self
            .request(reqwest::Method::PUT, &url, reqid)
            .header(CONTENT_TYPE, "application/octet-stream")
            // Explicit, so that an empty body still says `Content-Length: 0`: 2.x
            // keepstores and keepproxy answer 411 without it (§5.4, §6.4).
            .header(CONTENT_LENGTH, size)
            .header("X-Keep-Desired-Replicas", replicas);
        if !classes.is_empty() {
            req = req.header("X-Keep-Storage-Classes", classes);
        }
        let progress = self.traffic.upload_progress(self.index_of(svc));
        let body = body(Arc::clone(&progress));
        let put = async {
            let resp = req
                .body(body)
                .send()
                .await
                .map_err(|e| transport_error(&svc.uuid, e, false))?;
            progress.touch();
            self.put_answer(svc, locator, resp).await
        };
        watch(put, &progress, self.options.stall_timeout, &svc.uuid).await
    }

    /// Reads a PUT answer into what it stored, or the error it means.
    pub(crate) async fn put_answer(
        &self,
        svc: &KeepService,
        locator: &Locator,
        resp: reqwest::Response,
    ) -> Result<Stored> {
        let status = resp.status().as_u16();
        if status != 200 {
            let body = self.sanitize(&error_body(resp).await);
            self.traffic.note_answer(self.index_of(svc), status, &body);
            let lower = body.to_ascii_lowercase();
            // 3.x: 400 `content hash ... did not match specified locator ...`;
            // 2.x: 422 `Hash mismatch in request` (§14).
            if (status == 400 && lower.contains("content hash") && lower.contains("did not match"))
                || status == 422
            {
                return Err(Error::ContentRejected {
                    locator: locator.unsigned(),
                    service: svc.uuid.clone(),
                    message: format!("HTTP {status}: {body}"),
                });
            }
            if status == 401 || status == 403 {
                return Err(Error::PermissionDenied {
                    target: svc.uuid.clone(),
                    message: format!("HTTP {status} on PUT: {body}"),
                });
            }
            return Err(Error::Http {
                service: svc.uuid.clone(),
                status,
                message: body,
            });
        }
        let replicas = resp
            .headers()
            .get("X-Keep-Replicas-Stored")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<usize>().ok())
            .unwrap_or(1);
        let confirmed = parse_confirmed(resp.headers().get("X-Keep-Storage-Classes-Confirmed"));
        let body = resp
            .text()
            .await
            .map_err(|e| transport_error(&svc.uuid, e, true))?;
        let returned: Locator = body.trim().parse().map_err(|_| Error::Protocol {
            service: svc.uuid.clone(),
            message: "PUT answer is not a locator".into(),
        })?;
        if returned.hash() != locator.hash() {
            return Err(Error::Protocol {
                service: svc.uuid.clone(),
                message: format!(
                    "PUT of {locator} answered a locator for {}",
                    returned.hash()
                ),
            });
        }
        Ok(Stored {
            replicas,
            locator: returned,
            confirmed,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ClientOptions, ServiceType, Token};

    #[test]
    fn confirmed_header() {
        let h = HeaderValue::from_static("default=2, special=1, bad, =3, x=0");
        assert_eq!(
            parse_confirmed(Some(&h)),
            Some(vec![("default".into(), 2), ("special".into(), 1)])
        );
        assert_eq!(parse_confirmed(Some(&HeaderValue::from_static(""))), None);
        assert_eq!(parse_confirmed(None), None);
    }

    fn client(n: usize) -> KeepClient {
        let services = (0..n)
            .map(|i| KeepService {
                uuid: format!("zzzzz-bi6l4-{i:015x}"),
                url: format!("http://h{i}:1"),
                service_type: ServiceType::Disk,
                read_only: false,
            })
            .collect();
        KeepClient::new(services, Token::new("t"), ClientOptions::default()).unwrap()
    }

    fn stored(replicas: usize, confirmed: Option<Vec<(String, usize)>>) -> Result<Stored> {
        Ok(Stored {
            replicas,
            locator: Locator::of(b"x"),
            confirmed,
        })
    }

    /// A keepstore whose volume keeps two copies counts twice: one upload for two
    /// replicas, not two uploads for four.
    #[test]
    fn expected_replicas_decide_how_many_uploads_start() {
        let c = client(4);
        let hash = BlockHash::of(b"x");
        let expect = [2, 2, 2, 2];
        let t = WriteTarget {
            expect: Some(&expect),
            ..WriteTarget::new(hash, 2, &[])
        };
        let mut s = WriteState::new(&c, &t);
        let first = s.next_upload().expect("one upload");
        assert!(
            s.next_upload().is_none(),
            "one upload is expected to store 2"
        );
        s.finish_upload(first, stored(2, None)).unwrap();
        assert_eq!(s.wanted(), 0);

        // Expected 2, stored 1: one more upload, to the next service.
        let mut s = WriteState::new(&c, &t);
        let a = s.next_upload().unwrap();
        s.finish_upload(a, stored(1, None)).unwrap();
        let b = s.next_upload().expect("one more");
        assert_ne!(a, b);
        assert!(s.next_upload().is_none());
        s.finish_upload(b, stored(1, None)).unwrap();
        assert!(s.outcome(hash, 1, 2).is_ok());
    }

    /// Services that share a volume are never written at once, and once one stored
    /// the block the others are skipped.
    #[test]
    fn services_sharing_a_volume() {
        let c = client(3);
        let hash = BlockHash::of(b"z");
        let order = c.writable_order_indexes(&hash);
        // The first two in probe order mount one volume.
        let mut sharing = vec![Vec::new(); 3];
        sharing[order[0]].push(order[1]);
        sharing[order[1]].push(order[0]);
        let t = WriteTarget {
            sharing: Some(&sharing),
            ..WriteTarget::new(hash, 2, &[])
        };
        let mut s = WriteState::new(&c, &t);
        assert_eq!(s.next_upload(), Some(order[0]));
        assert_eq!(
            s.next_upload(),
            Some(order[2]),
            "not the one sharing its volume"
        );
        assert_eq!(s.next_upload(), None);
        s.finish_upload(order[0], stored(1, None)).unwrap();
        s.finish_upload(order[2], stored(1, None)).unwrap();
        assert_eq!(s.wanted(), 0);

        // If the first fails, the one sharing its volume may go.
        let mut s = WriteState::new(&c, &t);
        let a = s.next_upload().unwrap();
        let b = s.next_upload().unwrap();
        let err = Error::Http {
            service: "x".into(),
            status: 404,
            message: String::new(),
        };
        s.finish_upload(a, Err(err)).unwrap();
        assert_eq!(s.next_upload(), Some(order[1]));
        s.finish_upload(b, stored(1, None)).unwrap();
    }

    /// Excluded services are never chosen; classes count down from the confirmed
    /// header, and the header names only the classes still wanted.
    #[test]
    fn exclusions_and_classes() {
        let c = client(3);
        let hash = BlockHash::of(b"y");
        let order = c.writable_order_indexes(&hash);
        let exclude = [order[0]];
        let t = WriteTarget {
            exclude: &exclude,
            ..WriteTarget::new(hash, 1, &["archive".into(), "default".into()])
        };
        let mut s = WriteState::new(&c, &t);
        assert_eq!(s.classes_header(), "archive, default");
        let i = s.next_upload().unwrap();
        assert_eq!(i, order[1]);
        s.finish_upload(i, stored(1, Some(vec![("default".into(), 1)])))
            .unwrap();
        assert_eq!(s.classes_header(), "archive");
        assert_eq!(s.wanted(), 1);
        let j = s.next_upload().unwrap();
        assert_eq!(j, order[2]);
        assert!(s.next_upload().is_none(), "no third service");
        s.finish_upload(j, stored(1, Some(vec![("archive".into(), 1)])))
            .unwrap();
        assert_eq!(s.wanted(), 0);
    }
}
