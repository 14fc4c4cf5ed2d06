//! [`KeepClient`]: GET, HEAD, PUT and index against Keep services over HTTP(S), with
//! probe order, retries, failover and replica counting (§8).

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use md5::{Digest, Md5};
use rand::Rng;
use reqwest::StatusCode;
use reqwest::header::{CONTENT_LENGTH, CONTENT_TYPE, HeaderValue};

use crate::controller::Controller;
use crate::error::{Error, Result, ServiceFailure, sanitize_body};
use crate::index::{IndexEntry, IndexError, IndexParser};
use crate::locator::{BlockHash, Locator, LocatorError, MAX_BLOCK_SIZE};
use crate::rendezvous::probe_order;
use crate::retry::RetryConfig;
use crate::services::{KeepService, from_keep_services_env};
use crate::settings::ClusterSettings;
use crate::signing::Token;
use crate::tls::{HttpSettings, http_client, transport_error};

/// How a [`KeepClient`] (and a [`Controller`]) talks HTTP.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// TCP connect timeout. Default 5 s (Go uses 2 s to keepstores, 30 s to proxies, §8.8).
    pub connect_timeout: Duration,
    /// Whole-request timeout, body included. Default 300 s: a 64 MiB block must fit
    /// through a slow link (Go's 20 s to keepstores assumes a LAN, §8.8).
    pub request_timeout: Duration,
    /// Longest wait for the next bytes of a response: detects stalled transfers long
    /// before `request_timeout`. Default 60 s; `None` disables it.
    pub read_timeout: Option<Duration>,
    /// Retry passes and backoff.
    pub retry: RetryConfig,
    /// Storage classes to request on PUT (`X-Keep-Storage-Classes`). Default none: the
    /// cluster's defaults apply (see [`ClusterInfo::default_storage_classes`]).
    pub storage_classes: Vec<String>,
    /// Skip TLS certificate checks (`ARVADOS_API_HOST_INSECURE`, §7.1). Default false.
    pub insecure: bool,
    /// Idle connections kept per service. Default 32; size it to the copy concurrency.
    pub pool_max_idle_per_host: usize,
    /// `User-Agent` header. Default `keep-client/<version>`.
    pub user_agent: String,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(300),
            read_timeout: Some(Duration::from_secs(60)),
            retry: RetryConfig::default(),
            storage_classes: Vec::new(),
            insecure: false,
            pool_max_idle_per_host: 32,
            user_agent: format!("keep-client/{}", env!("CARGO_PKG_VERSION")),
        }
    }
}

impl ClientOptions {
    pub(crate) fn http_settings(&self) -> HttpSettings {
        HttpSettings {
            insecure: self.insecure,
            connect_timeout: self.connect_timeout,
            request_timeout: self.request_timeout,
            read_timeout: self.read_timeout,
            pool_max_idle_per_host: self.pool_max_idle_per_host,
            user_agent: self.user_agent.clone(),
        }
    }
}

/// What [`KeepClient::from_settings`] learned about the cluster.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterInfo {
    /// The cluster id (`uuidPrefix`, or the config's `ClusterID`).
    pub uuid_prefix: Option<String>,
    /// `defaultCollectionReplication` (or `Collections.DefaultReplication`).
    pub default_replication: Option<u32>,
    /// `blobSignatureTtl` (or `Collections.BlobSigningTTL`): sign with this (§3.1).
    pub blob_signature_ttl: Option<Duration>,
    /// Storage classes marked `Default` in the cluster config (empty if unknown).
    pub default_storage_classes: Vec<String>,
}

/// The outcome of a successful [`KeepClient::put`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PutResult {
    /// The locator returned by the last confirming service, usually signed for the
    /// client's token (**secret**: `Display`/`Debug` show only `hash+size`).
    pub locator: Locator,
    /// Replicas confirmed (`X-Keep-Replicas-Stored` sums).
    pub replicas: usize,
    /// Uuids of the services that confirmed, in the order they answered.
    pub stored_on: Vec<String>,
    /// Replicas per storage class from `X-Keep-Storage-Classes-Confirmed` (empty when
    /// the services do not report classes).
    pub classes_confirmed: BTreeMap<String, usize>,
}

/// Counts from one [`KeepClient::index`] call.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IndexStats {
    /// Entries delivered.
    pub entries: u64,
    /// Body bytes received.
    pub bytes: u64,
}

/// A Keep client for one cluster: a set of services, a token, and one pooled HTTP
/// client. Cheap to share by reference across tasks.
#[derive(Debug, Clone)]
pub struct KeepClient {
    services: Vec<KeepService>,
    token: Token,
    http: reqwest::Client,
    options: ClientOptions,
}

/// What one read attempt produced.
enum Read {
    Data(Bytes),
    Size(u64),
}

/// `req-` and 20 base-36 characters, like Go and Python (§8.3).
fn request_id() -> String {
    const CHARS: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut rng = rand::rng();
    let mut s = String::with_capacity(24);
    s.push_str("req-");
    for _ in 0..20 {
        s.push(CHARS[rng.random_range(0..CHARS.len())] as char);
    }
    s
}

/// Reads at most 4 KiB of an error response body (Go keeps the first 4 KiB, §8.4).
async fn error_body(mut resp: reqwest::Response) -> String {
    let mut buf = Vec::new();
    while buf.len() < 4096 {
        match resp.chunk().await {
            Ok(Some(c)) => buf.extend_from_slice(&c[..c.len().min(4096 - buf.len())]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&buf).into_owned()
}

/// Whether a 400/401/403 read answer is a signature or permission problem (§3.3,
/// §14: `invalid signature`, `expired signature`, `no token provided`, 2.x `Forbidden`
/// and `Expired permission signature`).
fn is_permission_answer(status: u16, body: &str) -> bool {
    match status {
        401 | 403 => true,
        400 => {
            let b = body.to_ascii_lowercase();
            b.contains("signature") || b.contains("forbidden") || b.contains("token")
        }
        _ => false,
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
struct Stored {
    replicas: usize,
    locator: Locator,
    confirmed: Option<Vec<(String, usize)>>,
}

impl KeepClient {
    /// A client for `services`, authenticating with `token`.
    ///
    /// # Errors
    /// [`Error::Config`] if the HTTP client cannot be built (TLS setup).
    pub fn new(
        services: Vec<KeepService>,
        token: Token,
        options: ClientOptions,
    ) -> Result<KeepClient> {
        let http = http_client(&options.http_settings())?;
        Ok(KeepClient {
            services,
            token,
            http,
            options,
        })
    }

    /// Builds a client from cluster settings: reads the discovery document and the
    /// cluster config through the controller, then takes the services from
    /// `services_override` if given (e.g. `--src-keep-services-json`), else from the
    /// settings' `ARVADOS_KEEP_SERVICES`, else from `keep_services/accessible`.
    /// `settings.insecure` or `options.insecure` turns off certificate checks.
    ///
    /// The cluster's default storage classes are reported in [`ClusterInfo`] but not
    /// applied: set [`ClientOptions::storage_classes`] to request classes.
    ///
    /// # Errors
    /// Missing `ARVADOS_API_HOST`/`ARVADOS_API_TOKEN`, controller errors (an
    /// unreachable `/arvados/v1/config` is only logged), or an invalid
    /// `ARVADOS_KEEP_SERVICES`.
    pub async fn from_settings(
        settings: &ClusterSettings,
        mut options: ClientOptions,
        services_override: Option<Vec<KeepService>>,
    ) -> Result<(KeepClient, ClusterInfo)> {
        options.insecure |= settings.insecure;
        let (host, token) = settings.require_api()?;
        let controller = Controller::new(host, Some(token.clone()), &options)?;
        let discovery = controller.discovery().await?;
        let config = match controller.cluster_config().await {
            Ok(c) => c.unwrap_or_default(),
            Err(e) => {
                tracing::warn!(api = host, error = %e, "cannot read the cluster config; continuing without it");
                Default::default()
            }
        };
        let services = match (services_override, &settings.keep_services) {
            (Some(s), _) => s,
            (None, Some(list)) => from_keep_services_env(list)?,
            (None, None) => controller.accessible_services().await?,
        };
        let info = ClusterInfo {
            uuid_prefix: discovery.uuid_prefix.or(config.cluster_id),
            default_replication: discovery
                .default_collection_replication
                .or(config.default_replication),
            blob_signature_ttl: discovery.blob_signature_ttl.or(config.blob_signing_ttl),
            default_storage_classes: config.default_storage_classes,
        };
        let client = KeepClient::new(services, token.clone(), options)?;
        Ok((client, info))
    }

    /// All services, in the order given.
    pub fn services(&self) -> &[KeepService] {
        &self.services
    }

    /// The token sent to Keep services.
    pub fn token(&self) -> &Token {
        &self.token
    }

    /// The options this client was built with.
    pub fn options(&self) -> &ClientOptions {
        &self.options
    }

    /// Every service, in the probe order for `hash` (§4.1).
    pub fn readable_order(&self, hash: &BlockHash) -> Vec<&KeepService> {
        let uuids: Vec<&str> = self.services.iter().map(|s| s.uuid.as_str()).collect();
        probe_order(hash, &uuids)
            .into_iter()
            .map(|i| &self.services[i])
            .collect()
    }

    /// The writable (not read-only) services, in probe order for `hash`.
    pub fn writable_order(&self, hash: &BlockHash) -> Vec<&KeepService> {
        self.readable_order(hash)
            .into_iter()
            .filter(|s| !s.read_only)
            .collect()
    }

    /// Whether any service is not a keepstore (`disk`): then writes go one at a time
    /// and trust `X-Keep-Replicas-Stored` (§6.6).
    pub fn has_proxy(&self) -> bool {
        self.services.iter().any(|s| !s.is_disk())
    }

    fn request(&self, method: reqwest::Method, url: &str, reqid: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, url)
            .bearer_auth(self.token.expose())
            .header("X-Request-Id", reqid)
    }

    fn sanitize(&self, body: &str) -> String {
        sanitize_body(body, Some(self.token.expose()))
    }

    /// Reads a block (§8.4, with failover on bad data): services in probe order, one
    /// at a time; 408/429/5xx, network errors, timeouts and checksum failures are
    /// retried in the next pass after a jittered backoff; 404 and other 4xx answers
    /// are final for that service. The MD5 is checked while the body arrives. The
    /// empty block is answered without a request (§1.4).
    ///
    /// # Errors
    /// [`Error::NotFound`] when every service said 404; [`Error::PermissionDenied`]
    /// when every service refused the signature or token (or said 404);
    /// [`Error::ReadFailed`] otherwise, with each service's last failure.
    pub async fn get(&self, locator: &Locator) -> Result<Bytes> {
        if is_empty_block(locator) {
            return Ok(Bytes::new());
        }
        let order = self.readable_order(&locator.hash());
        match self.read_loop(locator, order, false).await? {
            Read::Data(b) => Ok(b),
            Read::Size(_) => Err(mixed_up()),
        }
    }

    /// Reads a block from one service only (with retries), e.g. to verify each copy.
    ///
    /// # Errors
    /// [`Error::NotFound`] on 404; otherwise that service's own error
    /// ([`Error::ChecksumMismatch`], [`Error::Http`], ...).
    pub async fn get_from(&self, service: &KeepService, locator: &Locator) -> Result<Bytes> {
        if is_empty_block(locator) {
            return Ok(Bytes::new());
        }
        match self.read_loop(locator, vec![service], false).await? {
            Read::Data(b) => Ok(b),
            Read::Size(_) => Err(mixed_up()),
        }
    }

    /// Checks that a block exists (HEAD, same loop as [`KeepClient::get`], no MD5
    /// check) and returns its size from `Content-Length`.
    ///
    /// # Errors
    /// As for [`KeepClient::get`].
    pub async fn head(&self, locator: &Locator) -> Result<u64> {
        if is_empty_block(locator) {
            return Ok(0);
        }
        let order = self.readable_order(&locator.hash());
        match self.read_loop(locator, order, true).await? {
            Read::Size(n) => Ok(n),
            Read::Data(_) => Err(mixed_up()),
        }
    }

    async fn read_loop(
        &self,
        locator: &Locator,
        order: Vec<&KeepService>,
        head: bool,
    ) -> Result<Read> {
        if order.is_empty() {
            return Err(Error::NoServices { kind: "readable" });
        }
        let reqid = request_id();
        let attempts = self.options.retry.attempts();
        let mut backoff = self.options.retry.backoff();
        let mut last: Vec<Option<Error>> = order.iter().map(|_| None).collect();
        let mut to_try: Vec<usize> = (0..order.len()).collect();
        for attempt in 0..attempts {
            if attempt > 0 {
                let delay = backoff.next_delay();
                tracing::debug!(block = %locator, attempt, attempts, ?delay, "retrying read");
                tokio::time::sleep(delay).await;
            }
            let mut retry = Vec::new();
            for i in to_try {
                let svc = order[i];
                match self.read_once(svc, locator, &reqid, head).await {
                    Ok(r) => return Ok(r),
                    Err(e) => {
                        tracing::debug!(block = %locator, service = %svc.uuid, attempt, error = %e, "read failed");
                        if e.is_retryable() {
                            retry.push(i);
                        }
                        last[i] = Some(e);
                    }
                }
            }
            if retry.is_empty() {
                break;
            }
            to_try = retry;
        }
        let errors: Vec<(&KeepService, Error)> = order
            .iter()
            .zip(last)
            .filter_map(|(s, e)| e.map(|e| (*s, e)))
            .collect();
        let failures: Vec<ServiceFailure> = errors
            .iter()
            .map(|(s, e)| ServiceFailure::from_error(&s.uuid, e))
            .collect();
        let is_404 = |f: &ServiceFailure| f.status == Some(404);
        let is_perm = |f: &ServiceFailure| f.reason == "permission denied";
        if failures.iter().all(is_404) {
            return Err(Error::NotFound {
                locator: locator.unsigned(),
                failures,
            });
        }
        if failures.iter().all(|f| is_404(f) || is_perm(f)) {
            let perm: Vec<String> = failures
                .iter()
                .filter(|f| is_perm(f))
                .map(|f| f.message.clone())
                .collect();
            return Err(Error::PermissionDenied {
                target: failures
                    .iter()
                    .filter(|f| is_perm(f))
                    .map(|f| f.service.clone())
                    .collect::<Vec<_>>()
                    .join(", "),
                message: format!(
                    "reading {locator}: {} (is the locator signed for this token, with the right key and TTL, and unexpired?)",
                    perm.join("; ")
                ),
            });
        }
        if errors.len() == 1 {
            // One service (get_from): its own error says the most.
            if let Some((_, e)) = errors.into_iter().next() {
                return Err(e);
            }
        }
        Err(Error::ReadFailed {
            locator: locator.unsigned(),
            failures,
        })
    }

    async fn read_once(
        &self,
        svc: &KeepService,
        locator: &Locator,
        reqid: &str,
        head: bool,
    ) -> Result<Read> {
        // Reads send the full locator, hints and signature included (§8.3).
        let url = format!("{}/{}", svc.url, locator.to_wire());
        let method = if head {
            reqwest::Method::HEAD
        } else {
            reqwest::Method::GET
        };
        let mut resp = self
            .request(method, &url, reqid)
            .send()
            .await
            .map_err(|e| transport_error(&svc.uuid, e, false))?;
        let status = resp.status();
        if status != StatusCode::OK {
            let code = status.as_u16();
            let body = self.sanitize(&error_body(resp).await);
            if is_permission_answer(code, &body) {
                return Err(Error::PermissionDenied {
                    target: svc.uuid.clone(),
                    message: format!("HTTP {code}: {body}"),
                });
            }
            return Err(Error::Http {
                service: svc.uuid.clone(),
                status: code,
                message: body,
            });
        }
        // Not `Response::content_length`, which reports the (empty) body of a HEAD.
        let content_length = resp
            .headers()
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let expected = locator.size();
        let size_mismatch = |got: String| Error::SizeMismatch {
            locator: locator.unsigned(),
            service: svc.uuid.clone(),
            expected: expected.unwrap_or(0),
            got,
        };
        if let (Some(want), Some(cl)) = (expected, content_length) {
            if want != cl {
                return Err(size_mismatch(format!("Content-Length is {cl}")));
            }
        }
        if head {
            return content_length
                .or(expected)
                .map(Read::Size)
                .ok_or_else(|| Error::Protocol {
                    service: svc.uuid.clone(),
                    message: "HEAD answer without Content-Length".into(),
                });
        }
        let limit = expected.unwrap_or(MAX_BLOCK_SIZE);
        let capacity = expected.or(content_length).unwrap_or(0).min(MAX_BLOCK_SIZE);
        let capacity = usize::try_from(capacity).unwrap_or(0);
        let mut buf = BytesMut::with_capacity(capacity);
        let mut md5 = Md5::new();
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| transport_error(&svc.uuid, e, true))?
        {
            if buf.len() as u64 + chunk.len() as u64 > limit {
                return Err(size_mismatch(format!("received more than {limit} bytes")));
            }
            md5.update(&chunk);
            buf.extend_from_slice(&chunk);
        }
        if let Some(want) = expected {
            if buf.len() as u64 != want {
                return Err(size_mismatch(format!("received {} bytes", buf.len())));
            }
        }
        let got = BlockHash(md5.finalize().into());
        if got != locator.hash() {
            return Err(Error::ChecksumMismatch {
                locator: locator.unsigned(),
                service: svc.uuid.clone(),
                got: got.to_hex(),
            });
        }
        Ok(Read::Data(buf.freeze()))
    }

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

/// `read_loop` returns data for GET and a size for HEAD; this cannot happen.
fn mixed_up() -> Error {
    Error::Config("internal error: GET/HEAD result mixed up".into())
}

fn is_empty_block(locator: &Locator) -> bool {
    locator.hash() == BlockHash::EMPTY && locator.size().unwrap_or(0) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids() {
        let id = request_id();
        assert_eq!(id.len(), 24);
        assert!(id.starts_with("req-"));
        assert!(
            id[4..]
                .bytes()
                .all(|c| c.is_ascii_digit() || c.is_ascii_lowercase())
        );
    }

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

    #[test]
    fn permission_answers() {
        assert!(is_permission_answer(400, "invalid signature"));
        assert!(is_permission_answer(401, "expired signature"));
        assert!(is_permission_answer(403, "Forbidden"));
        assert!(!is_permission_answer(400, "Bad Request"));
        assert!(!is_permission_answer(404, "file does not exist"));
    }

    #[test]
    fn orders() {
        let svc = |i: u32, ro| KeepService {
            uuid: format!("zzzzz-bi6l4-{i:015x}"),
            url: format!("http://h{i}:1"),
            service_type: crate::ServiceType::Disk,
            read_only: ro,
        };
        let services: Vec<_> = (0..16).map(|i| svc(i, i == 3)).collect();
        let c = KeepClient::new(services, Token::new("t"), ClientOptions::default()).unwrap();
        // §13.3, block 0: order 3eab2d5fc9681074; service 3 is read-only.
        let h = BlockHash::of(format!("{:064x}", 0).as_bytes());
        let r: String = c
            .readable_order(&h)
            .iter()
            .map(|s| s.uuid.chars().last().unwrap())
            .collect();
        assert_eq!(r, "3eab2d5fc9681074");
        let w: String = c
            .writable_order(&h)
            .iter()
            .map(|s| s.uuid.chars().last().unwrap())
            .collect();
        assert_eq!(w, "eab2d5fc9681074");
        assert!(!c.has_proxy());
    }
}
