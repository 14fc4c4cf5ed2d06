//! The admin calls of a keepstore (§5.1): its index, whole (`/index`, §5.6) or of one
//! mount (`/mounts/{uuid}/blocks`), streamed through [`IndexParser`]; and its mounts
//! (`/mounts`, §5.7). All need the cluster's SystemRootToken.

use super::{IndexStats, KeepClient, error_body, request_id};
use crate::error::{Error, Result};
use crate::index::{IndexEntry, IndexError, IndexParser};
use crate::services::{KeepService, Mount, parse_mounts_json};
use crate::stall::{Progress, watch};
use crate::tls::transport_error;

impl KeepClient {
    /// Streams the index of one service (`GET {url}/index[/{prefix}]`, §5.6) through
    /// [`IndexParser`], calling `on_entry` for each entry as the body arrives; the
    /// body is never held in memory. The request needs the cluster's SystemRootToken.
    ///
    /// Temporary failures are retried only while no entry has been delivered. Once
    /// entries were handed out, any error is returned at once and **the caller must
    /// discard the entries received from this call**.
    ///
    /// # Errors
    /// [`Error::IncompleteIndex`] / [`Error::MalformedIndex`] naming the service,
    /// [`Error::PermissionDenied`] on 401/403, [`Error::Config`] for a prefix that is
    /// not lowercase hex of at most 32 digits, transport and HTTP errors.
    pub async fn index(
        &self,
        service: &KeepService,
        prefix: &str,
        on_entry: impl FnMut(IndexEntry) + Send,
    ) -> Result<IndexStats> {
        check_prefix(prefix)?;
        let url = if prefix.is_empty() {
            format!("{}/index", service.url)
        } else {
            format!("{}/index/{prefix}", service.url)
        };
        self.list(service, &url, prefix, "/index", on_entry).await
    }

    /// [`KeepClient::index`] of one mount of `service`
    /// (`GET {url}/mounts/{mount}/blocks?prefix=`, §5.6): which volume holds each
    /// block. The prefix goes in the query, the one form 2.x keepstores accept.
    ///
    /// # Errors
    /// As [`KeepClient::index`]; an unknown mount is an HTTP 404.
    pub async fn index_mount(
        &self,
        service: &KeepService,
        mount: &str,
        prefix: &str,
        on_entry: impl FnMut(IndexEntry) + Send,
    ) -> Result<IndexStats> {
        check_prefix(prefix)?;
        if mount.is_empty()
            || !mount
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'-')
        {
            return Err(Error::Config(format!("not a mount UUID: {mount:?}")));
        }
        let url = format!("{}/mounts/{mount}/blocks?prefix={prefix}", service.url);
        self.list(service, &url, prefix, "/mounts", on_entry).await
    }

    /// The mounts of one keepstore (`GET {url}/mounts`, §5.7), with retries.
    ///
    /// # Errors
    /// [`Error::PermissionDenied`] on 401/403, [`Error::Http`] (e.g. 404 from a
    /// keepproxy or a keepstore too old to have `/mounts`), transport errors, and
    /// [`Error::Protocol`] for an answer that is not a mount list.
    pub async fn mounts(&self, service: &KeepService) -> Result<Vec<Mount>> {
        let url = format!("{}/mounts", service.url);
        let reqid = request_id();
        let attempts = self.options.retry.attempts();
        let mut backoff = self.options.retry.backoff();
        let mut attempt = 0;
        loop {
            attempt += 1;
            let progress = Progress::new();
            let call = async {
                let resp = self
                    .admin_request(&url, &reqid)
                    .send()
                    .await
                    .map_err(|e| transport_error(&service.uuid, e, false))?;
                self.admin_status(service, resp, "/mounts")
                    .await?
                    .text()
                    .await
                    .map_err(|e| transport_error(&service.uuid, e, true))
            };
            let limit = self.options.stall_timeout;
            let result = watch(call, &progress, limit, &service.uuid).await;
            match result {
                Ok(text) => {
                    return parse_mounts_json(&text).map_err(|e| Error::Protocol {
                        service: service.uuid.clone(),
                        message: e.to_string(),
                    });
                }
                Err(e) if e.is_retryable() && attempt < attempts => {
                    tokio::time::sleep(backoff.next_delay()).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Lists `url` (an index), retrying temporary failures while nothing was
    /// delivered.
    async fn list(
        &self,
        service: &KeepService,
        url: &str,
        prefix: &str,
        what: &str,
        mut on_entry: impl FnMut(IndexEntry) + Send,
    ) -> Result<IndexStats> {
        let reqid = request_id();
        let attempts = self.options.retry.attempts();
        let mut backoff = self.options.retry.backoff();
        let mut attempt = 0;
        loop {
            let mut delivered = 0u64;
            let progress = Progress::new();
            let once = self.list_once(
                service,
                url,
                prefix,
                what,
                &reqid,
                &progress,
                &mut delivered,
                &mut on_entry,
            );
            let limit = self.options.stall_timeout;
            let result = watch(once, &progress, limit, &service.uuid).await;
            attempt += 1;
            match result {
                Ok(bytes) => {
                    return Ok(IndexStats {
                        entries: delivered,
                        bytes,
                    });
                }
                Err(e) if delivered == 0 && e.is_retryable() && attempt < attempts => {
                    let delay = backoff.next_delay();
                    tracing::debug!(service = %service.uuid, attempt, ?delay, error = %e, "retrying index");
                    tokio::time::sleep(delay).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// The response, if its status is 200; else the error it means.
    async fn admin_status(
        &self,
        svc: &KeepService,
        resp: reqwest::Response,
        what: &str,
    ) -> Result<reqwest::Response> {
        let status = resp.status().as_u16();
        if status == 200 {
            return Ok(resp);
        }
        let body = self.sanitize(&error_body(resp).await);
        if status == 401 || status == 403 {
            return Err(Error::PermissionDenied {
                target: svc.uuid.clone(),
                message: format!(
                    "HTTP {status} on {what}: {body} (it needs the cluster's SystemRootToken)"
                ),
            });
        }
        Err(Error::Http {
            service: svc.uuid.clone(),
            status,
            message: body,
        })
    }

    #[allow(clippy::too_many_arguments)]
    async fn list_once(
        &self,
        svc: &KeepService,
        url: &str,
        prefix: &str,
        what: &str,
        reqid: &str,
        progress: &Progress,
        delivered: &mut u64,
        on_entry: &mut (impl FnMut(IndexEntry) + Send),
    ) -> Result<u64> {
        // No deadline: an S3-backed keepstore lists 10^8 blocks for hours; only a
        // stall (no byte for the stall timeout) ends a listing that still moves.
        let resp = self
            .admin_request(url, reqid)
            .send()
            .await
            .map_err(|e| transport_error(&svc.uuid, e, false))?;
        let mut resp = self.admin_status(svc, resp, what).await?;
        let mut parser = IndexParser::new(prefix);
        let mut bytes = 0u64;
        let wrap = |e: IndexError| match e {
            IndexError::MissingTerminator => Error::IncompleteIndex {
                service: svc.uuid.clone(),
            },
            IndexError::DataAfterTerminator { line_number } => Error::MalformedIndex {
                service: svc.uuid.clone(),
                line_number,
                line: String::new(),
                problem: "data after the blank end-of-index line",
            },
            IndexError::Malformed {
                line_number,
                line,
                problem,
            } => Error::MalformedIndex {
                service: svc.uuid.clone(),
                line_number,
                line,
                problem,
            },
        };
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| transport_error(&svc.uuid, e, true))?
        {
            progress.touch();
            bytes += chunk.len() as u64;
            parser
                .feed(&chunk, &mut |e| {
                    *delivered += 1;
                    on_entry(e);
                })
                .map_err(wrap)?;
        }
        parser.finish().map_err(wrap)?;
        Ok(bytes)
    }
}

/// A prefix is at most 32 lowercase hex digits.
fn check_prefix(prefix: &str) -> Result<()> {
    if prefix.len() > 32
        || !prefix
            .bytes()
            .all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'))
    {
        return Err(Error::Config(format!(
            "index prefix must be at most 32 lowercase hex digits, got {prefix:?}"
        )));
    }
    Ok(())
}
