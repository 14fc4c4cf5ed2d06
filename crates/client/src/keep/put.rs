//! PUT (§8.6): concurrent uploads in probe order, replica and storage-class counting.

use std::collections::BTreeMap;

use bytes::Bytes;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use reqwest::header::{CONTENT_LENGTH, CONTENT_TYPE, HeaderValue};

use super::{KeepClient, PutResult, error_body, request_id};
use crate::error::{Error, Result, ServiceFailure};
use crate::locator::{BlockHash, Locator, LocatorError, MAX_BLOCK_SIZE};
use crate::services::KeepService;
use crate::tls::transport_error;

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
struct Stored {
    replicas: usize,
    locator: Locator,
    confirmed: Option<Vec<(String, usize)>>,
}

impl KeepClient {
    /// Writes a block (§8.6) to `replicas` replicas: uploads run concurrently to the
    /// first writable services in probe order (as many as replicas are still missing),
    /// a failed upload starts the next service, and services that failed temporarily
    /// (408/429/5xx except "full", network errors, timeouts: a PUT is idempotent) are
    /// retried in the next pass after a backoff. If any writable service is not a
    /// keepstore, uploads go one at a time and each answer's `X-Keep-Replicas-Stored`
    /// is trusted (§6.6). `data` is shared with every upload, never copied.
    ///
    /// The server checks that `data` hashes to `hash`; the client does not rehash.
    /// An empty block is uploaded like any other (as Python does). `replicas == 0`
    /// returns the unsigned locator without contacting any service.
    ///
    /// # Errors
    /// [`Error::InsufficientReplicas`] with each failed service's reason;
    /// [`Error::ContentRejected`] when a server says the data does not match the
    /// hash; [`Error::NoServices`] if no service is writable;
    /// [`Error::InvalidLocator`] for data over 64 MiB.
    pub async fn put(&self, hash: BlockHash, data: Bytes, replicas: usize) -> Result<PutResult> {
        self.put_excluding(hash, data, replicas, &[]).await
    }

    /// Like [`KeepClient::put`], but never writes to the services whose uuids are in
    /// `exclude`: they already hold the block (a migration tops up an
    /// under-replicated block on *other* services, and never resends a block to a
    /// service that lists it), or are known to be down.
    ///
    /// # Errors
    /// As [`KeepClient::put`].
    pub async fn put_excluding(
        &self,
        hash: BlockHash,
        data: Bytes,
        replicas: usize,
        exclude: &[&str],
    ) -> Result<PutResult> {
        let size = data.len() as u64;
        if size > MAX_BLOCK_SIZE {
            return Err(Error::InvalidLocator(LocatorError::TooLarge));
        }
        let unsigned = Locator::new(hash, size);
        if replicas == 0 {
            return Ok(PutResult {
                locator: unsigned,
                replicas: 0,
                stored_on: Vec::new(),
                classes_confirmed: BTreeMap::new(),
            });
        }
        let mut servers = self.writable_order(&hash);
        servers.retain(|s| !exclude.contains(&s.uuid.as_str()));
        if servers.is_empty() {
            return Err(Error::NoServices { kind: "writable" });
        }
        let one_at_a_time = servers.iter().any(|s| !s.is_disk());
        let reqid = request_id();
        let attempts = self.options.retry.attempts();
        let mut backoff = self.options.retry.backoff();

        let mut done = 0usize;
        let mut stored_on = Vec::new();
        let mut locator = None;
        let mut classes_todo: BTreeMap<String, usize> = self
            .options
            .storage_classes
            .iter()
            .map(|c| (c.clone(), replicas))
            .collect();
        let mut tracking = !classes_todo.is_empty();
        let mut confirmed: BTreeMap<String, usize> = BTreeMap::new();
        // Last failure per service uuid, in first-failure order.
        let mut failures: Vec<ServiceFailure> = Vec::new();

        let remaining = |done: usize, tracking: bool, todo: &BTreeMap<String, usize>| {
            if tracking {
                todo.values().copied().min().unwrap_or(0)
            } else {
                replicas.saturating_sub(done)
            }
        };

        'passes: for attempt in 0..attempts {
            if attempt > 0 {
                let delay = backoff.next_delay();
                tracing::debug!(block = %unsigned, attempt, attempts, ?delay, "retrying write");
                tokio::time::sleep(delay).await;
            }
            let mut next = 0;
            let mut retry = Vec::new();
            let mut in_flight = FuturesUnordered::new();
            loop {
                let want = remaining(done, tracking, &classes_todo);
                if want == 0 {
                    break 'passes;
                }
                let per_upload = if one_at_a_time { want } else { 1 };
                while in_flight.len() * per_upload < want && next < servers.len() {
                    let svc = servers[next];
                    next += 1;
                    let classes: Vec<&str> = classes_todo.keys().map(String::as_str).collect();
                    let classes = classes.join(", ");
                    let fut =
                        self.put_once(svc, &unsigned, data.clone(), replicas, classes, &reqid);
                    in_flight.push(async move { (svc, fut.await) });
                }
                let Some((svc, result)) = in_flight.next().await else {
                    break;
                };
                match result {
                    Ok(stored) => {
                        done += stored.replicas;
                        stored_on.push(svc.uuid.clone());
                        failures.retain(|f| f.service != svc.uuid);
                        match stored.confirmed {
                            None => tracking = false,
                            Some(items) => {
                                for (class, n) in items {
                                    *confirmed.entry(class.clone()).or_default() += n;
                                    if let Some(todo) = classes_todo.get_mut(&class) {
                                        *todo = todo.saturating_sub(n);
                                        if *todo == 0 {
                                            classes_todo.remove(&class);
                                        }
                                    }
                                }
                            }
                        }
                        locator = Some(stored.locator);
                    }
                    Err(e) => {
                        tracing::debug!(block = %unsigned, service = %svc.uuid, attempt, attempts, error = %e, "write failed");
                        if matches!(e, Error::ContentRejected { .. }) {
                            // The data does not hash to `hash`: every service will
                            // say so. Stop (uploads still running are dropped).
                            return Err(e);
                        }
                        if e.is_retryable() {
                            retry.push(svc);
                        }
                        let f = ServiceFailure::from_error(&svc.uuid, &e);
                        failures.retain(|x| x.service != svc.uuid);
                        failures.push(f);
                    }
                }
            }
            if retry.is_empty() {
                break;
            }
            servers = retry;
        }

        if remaining(done, tracking, &classes_todo) == 0 {
            return Ok(PutResult {
                locator: locator.unwrap_or(unsigned),
                replicas: done,
                stored_on,
                classes_confirmed: confirmed,
            });
        }
        Err(Error::InsufficientReplicas {
            locator: unsigned.unsigned(),
            wanted: replicas,
            stored: done,
            failures,
        })
    }

    async fn put_once(
        &self,
        svc: &KeepService,
        locator: &Locator,
        data: Bytes,
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
            .header(CONTENT_LENGTH, data.len())
            .header("X-Keep-Desired-Replicas", replicas);
        if !classes.is_empty() {
            req = req.header("X-Keep-Storage-Classes", classes);
        }
        let resp = req
            .body(data)
            .send()
            .await
            .map_err(|e| transport_error(&svc.uuid, e, false))?;
        let status = resp.status().as_u16();
        if status != 200 {
            let body = self.sanitize(&error_body(resp).await);
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
}
