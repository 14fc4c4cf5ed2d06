//! Index listing (§5.6), streamed through [`IndexParser`].

use super::{IndexStats, KeepClient, error_body, request_id};
use crate::error::{Error, Result};
use crate::index::{IndexEntry, IndexError, IndexParser};
use crate::services::KeepService;
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
        mut on_entry: impl FnMut(IndexEntry) + Send,
    ) -> Result<IndexStats> {
        if prefix.len() > 32
            || !prefix
                .bytes()
                .all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'))
        {
            return Err(Error::Config(format!(
                "index prefix must be at most 32 lowercase hex digits, got {prefix:?}"
            )));
        }
        let url = if prefix.is_empty() {
            format!("{}/index", service.url)
        } else {
            format!("{}/index/{prefix}", service.url)
        };
        let reqid = request_id();
        let attempts = self.options.retry.attempts();
        let mut backoff = self.options.retry.backoff();
        let mut attempt = 0;
        loop {
            let mut delivered = 0u64;
            let result = self
                .index_once(service, &url, prefix, &reqid, &mut delivered, &mut on_entry)
                .await;
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

    async fn index_once(
        &self,
        svc: &KeepService,
        url: &str,
        prefix: &str,
        reqid: &str,
        delivered: &mut u64,
        on_entry: &mut (impl FnMut(IndexEntry) + Send),
    ) -> Result<u64> {
        let mut resp = self
            .request(reqwest::Method::GET, url, reqid)
            .timeout(self.options.index_timeout)
            .send()
            .await
            .map_err(|e| transport_error(&svc.uuid, e, false))?;
        let status = resp.status().as_u16();
        if status != 200 {
            let body = self.sanitize(&error_body(resp).await);
            if status == 401 || status == 403 {
                return Err(Error::PermissionDenied {
                    target: svc.uuid.clone(),
                    message: format!(
                        "HTTP {status} on /index: {body} (the index needs the cluster's SystemRootToken)"
                    ),
                });
            }
            return Err(Error::Http {
                service: svc.uuid.clone(),
                status,
                message: body,
            });
        }
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
