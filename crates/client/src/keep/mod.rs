//! [`KeepClient`]: GET, HEAD, PUT and index against Keep services over HTTP(S), with
//! probe order, retries, failover and replica counting (§8). Reads are here; writes
//! are in `put.rs`; index and mount listings (the admin calls) in `listing.rs`.

mod listing;
mod put;
mod relay;
mod traffic;

pub use put::WriteTarget;
pub use relay::CopyError;
pub use traffic::Traffic;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use md5::{Digest, Md5};
use rand::Rng;
use reqwest::StatusCode;
use reqwest::header::CONTENT_LENGTH;

use crate::controller::Controller;
use crate::error::{Error, Result, ServiceFailure, sanitize_body};
use crate::locator::{BlockHash, Locator, MAX_BLOCK_SIZE};
use crate::rendezvous::probe_order;
use crate::retry::RetryConfig;
use crate::services::{KeepService, from_keep_services_env};
use crate::settings::ClusterSettings;
use crate::signing::Token;
use crate::stall::{Progress, watch};
use crate::tls::{HttpSettings, http_client, transport_error};

/// How a [`KeepClient`] (and a [`Controller`]) talks HTTP.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// TCP connect timeout. Default 5 s (Go uses 2 s to keepstores, 30 s to proxies, §8.8).
    pub connect_timeout: Duration,
    /// A Keep transfer (block read or write, index, mounts) fails when no byte has
    /// moved for this long, in either direction; a slow but moving one is never cut,
    /// and there is no whole-request deadline (a 64 MiB block on a slow WAN link, or
    /// the index of an S3 bucket of 10^8 blocks, may take hours). Default 60 s.
    pub stall_timeout: Duration,
    /// Whole-request deadline of an API server call (small JSON documents). Default 60 s.
    pub api_timeout: Duration,
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
            stall_timeout: Duration::from_secs(60),
            api_timeout: Duration::from_secs(60),
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
            user_timeout: Some(self.stall_timeout),
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
    /// Uuids of the services that answered "full" (507, or 2.x's 503 `Full`) during
    /// this write, though others stored it: a caller may stop sending them blocks.
    pub full: Vec<String>,
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
    /// Sent with block reads and writes.
    token: Token,
    /// Sent with the admin calls (`/index`, `/mounts`), when it differs from `token`.
    admin_token: Option<Token>,
    http: reqwest::Client,
    options: ClientOptions,
    /// Shared by clones: one count of the traffic to these services.
    traffic: Arc<Traffic>,
}

/// What a read asks for.
#[derive(Clone, Copy, PartialEq, Eq)]
enum ReadKind {
    /// GET, MD5 checked.
    Get,
    /// GET, size checked only ([`KeepClient::get_unchecked`]).
    GetUnchecked,
    /// HEAD.
    Head,
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

/// The error of a read that every service in `order` failed, from each one's last
/// error (`None`: not tried): all 404 is [`Error::NotFound`]; only 404s and refused
/// signatures is [`Error::PermissionDenied`]; one service alone gives its own error;
/// anything else [`Error::ReadFailed`] with each service's failure.
pub(crate) fn read_error(
    locator: &Locator,
    order: &[&KeepService],
    last: Vec<Option<Error>>,
) -> Error {
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
        return Error::NotFound {
            locator: locator.unsigned(),
            failures,
        };
    }
    if failures.iter().all(|f| is_404(f) || is_perm(f)) {
        let perm: Vec<String> = failures
            .iter()
            .filter(|f| is_perm(f))
            .map(|f| f.message.clone())
            .collect();
        return Error::PermissionDenied {
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
        };
    }
    if errors.len() == 1 {
        // One service (get_from): its own error says the most.
        if let Some((_, e)) = errors.into_iter().next() {
            return e;
        }
    }
    Error::ReadFailed {
        locator: locator.unsigned(),
        failures,
    }
}

/// A keepstore's answer that its stored copy is damaged: 502 `checksum mismatch in
/// stored data` (3.x) or 500 `Hash mismatch in stored data` (2.x), §5.3, §14.
fn is_bad_stored_copy_answer(status: u16, body: &str) -> bool {
    (status == 502 && body.contains("checksum mismatch in stored data"))
        || (status == 500 && body.contains("Hash mismatch in stored data"))
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
            traffic: Arc::new(Traffic::new(&services)),
            services,
            token,
            admin_token: None,
            http,
            options,
        })
    }

    /// The same client, sending `token` with block reads and writes from now on.
    pub fn with_token(mut self, token: Token) -> KeepClient {
        self.token = token;
        self
    }

    /// The same client, sending `admin` (the cluster's SystemRootToken) only with the
    /// calls that need it, `/index` and `/mounts` (§5.1), and its own token with block
    /// reads and writes (a signed read needs only the token its signature was made
    /// for, a PUT to a keepstore none, §2).
    pub fn with_admin_token(mut self, admin: Token) -> KeepClient {
        self.admin_token = Some(admin);
        self
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
    /// unreachable `/arvados/v1/config` is only logged), an invalid
    /// `ARVADOS_KEEP_SERVICES`, or an empty service list ([`Error::NoServices`]).
    pub async fn from_settings(
        settings: &ClusterSettings,
        mut options: ClientOptions,
        services_override: Option<Vec<KeepService>>,
    ) -> Result<(KeepClient, ClusterInfo)> {
        options.insecure |= settings.insecure;
        let (host, token) = settings.require_api()?;
        // One connection pool for the controller and the Keep services.
        let http = http_client(&options.http_settings())?;
        let controller = Controller::with_http(host, Some(token.clone()), &options, http.clone())?;
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
        if services.is_empty() {
            return Err(Error::NoServices { kind: "readable" });
        }
        let info = ClusterInfo {
            uuid_prefix: discovery.uuid_prefix.or(config.cluster_id),
            default_replication: discovery
                .default_collection_replication
                .or(config.default_replication),
            blob_signature_ttl: discovery.blob_signature_ttl.or(config.blob_signing_ttl),
            default_storage_classes: config.default_storage_classes,
        };
        let client = KeepClient {
            traffic: Arc::new(Traffic::new(&services)),
            services,
            token: token.clone(),
            admin_token: None,
            http,
            options,
        };
        Ok((client, info))
    }

    /// What this client's requests (and its clones') have done so far: bytes received,
    /// busy answers per service. For a scheduler that tunes its concurrency.
    pub fn traffic(&self) -> &Traffic {
        &self.traffic
    }

    /// The index of `svc` in [`KeepClient::services`] (it is one of them).
    pub(crate) fn index_of(&self, svc: &KeepService) -> Option<usize> {
        self.services
            .iter()
            .position(|s| std::ptr::eq(s, svc))
            .or_else(|| self.services.iter().position(|s| s.uuid == svc.uuid))
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
        self.readable_order_indexes(hash)
            .into_iter()
            .map(|i| &self.services[i])
            .collect()
    }

    /// [`KeepClient::readable_order`] as indexes into [`KeepClient::services`].
    pub fn readable_order_indexes(&self, hash: &BlockHash) -> Vec<usize> {
        let uuids: Vec<&str> = self.services.iter().map(|s| s.uuid.as_str()).collect();
        probe_order(hash, &uuids)
    }

    /// The writable (not read-only) services, in probe order for `hash`.
    pub fn writable_order(&self, hash: &BlockHash) -> Vec<&KeepService> {
        self.writable_order_indexes(hash)
            .into_iter()
            .map(|i| &self.services[i])
            .collect()
    }

    /// [`KeepClient::writable_order`] as indexes into [`KeepClient::services`].
    pub fn writable_order_indexes(&self, hash: &BlockHash) -> Vec<usize> {
        self.readable_order_indexes(hash)
            .into_iter()
            .filter(|&i| !self.services[i].read_only)
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

    /// A request for an admin call (`/index`, `/mounts`): with the admin token.
    fn admin_request(&self, url: &str, reqid: &str) -> reqwest::RequestBuilder {
        let token = self.admin_token.as_ref().unwrap_or(&self.token);
        self.http
            .get(url)
            .bearer_auth(token.expose())
            .header("X-Request-Id", reqid)
    }

    fn sanitize(&self, body: &str) -> String {
        let admin = self.admin_token.as_ref().map(Token::expose);
        let s = sanitize_body(body, Some(self.token.expose()));
        match admin {
            Some(a) => sanitize_body(&s, Some(a)),
            None => s,
        }
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
        self.get_in_probe_order(locator, ReadKind::Get).await
    }

    /// [`KeepClient::get`] without the client's MD5 check: the length is still checked,
    /// and the servers still check (a keepstore verifies data while serving it, and
    /// refuses a PUT whose body does not match its hash, §5). For copying a block to
    /// Keep, where the receiving keepstore's check makes ours a second pass over the
    /// same bytes; a caller must fall back to [`KeepClient::get`] when the receiver
    /// rejects the data ([`Error::ContentRejected`]), which restores failover to a good
    /// replica. MD5 was half of a copy's CPU (BENCHMARKS.md, S3).
    ///
    /// # Errors
    /// As for [`KeepClient::get`], except [`Error::ChecksumMismatch`].
    pub async fn get_unchecked(&self, locator: &Locator) -> Result<Bytes> {
        self.get_in_probe_order(locator, ReadKind::GetUnchecked)
            .await
    }

    async fn get_in_probe_order(&self, locator: &Locator, kind: ReadKind) -> Result<Bytes> {
        if is_empty_block(locator) {
            return Ok(Bytes::new());
        }
        let order = self.readable_order(&locator.hash());
        match self.read_loop(locator, order, kind).await? {
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
        match self
            .read_loop(locator, vec![service], ReadKind::Get)
            .await?
        {
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
        match self.read_loop(locator, order, ReadKind::Head).await? {
            Read::Size(n) => Ok(n),
            Read::Data(_) => Err(mixed_up()),
        }
    }

    async fn read_loop(
        &self,
        locator: &Locator,
        order: Vec<&KeepService>,
        kind: ReadKind,
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
                match self.read_once(svc, locator, &reqid, kind).await {
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
        Err(read_error(locator, &order, last))
    }

    /// Sends one GET (or HEAD) of `locator` to `svc` and checks the answer's status and
    /// `Content-Length` against the size hint; the body is the caller's to read.
    pub(crate) async fn open_once(
        &self,
        svc: &KeepService,
        locator: &Locator,
        reqid: &str,
        head: bool,
    ) -> Result<(reqwest::Response, Option<u64>)> {
        // Reads send the full locator, hints and signature included (§8.3).
        let url = format!("{}/{}", svc.url, locator.to_wire());
        let method = if head {
            reqwest::Method::HEAD
        } else {
            reqwest::Method::GET
        };
        let resp = self
            .request(method, &url, reqid)
            .send()
            .await
            .map_err(|e| transport_error(&svc.uuid, e, false))?;
        let status = resp.status();
        if status != StatusCode::OK {
            let code = status.as_u16();
            let body = self.sanitize(&error_body(resp).await);
            self.traffic.note_answer(self.index_of(svc), code, &body);
            if is_permission_answer(code, &body) {
                return Err(Error::PermissionDenied {
                    target: svc.uuid.clone(),
                    message: format!("HTTP {code}: {body}"),
                });
            }
            if is_bad_stored_copy_answer(code, &body) {
                return Err(Error::BadStoredCopy {
                    locator: locator.unsigned(),
                    service: svc.uuid.clone(),
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
        if let (Some(want), Some(cl)) = (locator.size(), content_length) {
            if want != cl {
                return Err(Error::SizeMismatch {
                    locator: locator.unsigned(),
                    service: svc.uuid.clone(),
                    expected: want,
                    got: format!("Content-Length is {cl}"),
                });
            }
        }
        Ok((resp, content_length))
    }

    async fn read_once(
        &self,
        svc: &KeepService,
        locator: &Locator,
        reqid: &str,
        kind: ReadKind,
    ) -> Result<Read> {
        let progress = Progress::new();
        let limit = self.options.stall_timeout;
        watch(
            self.read_watched(svc, locator, reqid, kind, &progress),
            &progress,
            limit,
            &svc.uuid,
        )
        .await
    }

    async fn read_watched(
        &self,
        svc: &KeepService,
        locator: &Locator,
        reqid: &str,
        kind: ReadKind,
        progress: &Progress,
    ) -> Result<Read> {
        let head = kind == ReadKind::Head;
        let (mut resp, content_length) = self.open_once(svc, locator, reqid, head).await?;
        let expected = locator.size();
        let size_mismatch = |got: String| Error::SizeMismatch {
            locator: locator.unsigned(),
            service: svc.uuid.clone(),
            expected: expected.unwrap_or(0),
            got,
        };
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
        let mut md5 = (kind == ReadKind::Get).then(Md5::new);
        let announced = expected.or(content_length);
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| body_error(svc, locator, e, buf.len() as u64, announced))?
        {
            progress.touch();
            self.traffic.add_received(chunk.len());
            if buf.len() as u64 + chunk.len() as u64 > limit {
                return Err(size_mismatch(format!("received more than {limit} bytes")));
            }
            if let Some(md5) = &mut md5 {
                md5.update(&chunk);
            }
            buf.extend_from_slice(&chunk);
        }
        if let Some(want) = expected {
            if buf.len() as u64 != want {
                return Err(size_mismatch(format!("received {} bytes", buf.len())));
            }
        }
        let Some(md5) = md5 else {
            return Ok(Read::Data(buf.freeze()));
        };
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
}

/// The error of a block body that broke after `received` bytes: cut short when its
/// length was announced.
pub(crate) fn body_error(
    svc: &KeepService,
    locator: &Locator,
    e: reqwest::Error,
    received: u64,
    announced: Option<u64>,
) -> Error {
    match (transport_error(&svc.uuid, e, true), announced) {
        (Error::Transfer { message, .. }, Some(n)) => Error::CutShort {
            locator: locator.unsigned(),
            service: svc.uuid.clone(),
            received,
            expected: n,
            message,
        },
        (e, _) => e,
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
    fn bad_stored_copy_answers() {
        assert!(is_bad_stored_copy_answer(
            502,
            "checksum mismatch in stored data"
        ));
        assert!(is_bad_stored_copy_answer(
            500,
            "Hash mismatch in stored data"
        ));
        assert!(!is_bad_stored_copy_answer(502, "Bad Gateway"));
        assert!(!is_bad_stored_copy_answer(500, "hash collision"));
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
