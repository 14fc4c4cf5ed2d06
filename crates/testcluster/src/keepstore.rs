//! A keepstore (§5): block GET/HEAD/PUT, index, mounts, TOUCH, DELETE, health, with
//! the exact statuses and bodies of §5.10 (3.x) or of 2.x (§14).

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Frame;
use keep_client::signing::{SignatureError, Token, sign, verify};
use keep_client::{BlockHash, Locator, MAX_BLOCK_SIZE};
use tokio::sync::mpsc;

use crate::config::Config;
use crate::faults::Faults;
use crate::server::{Body, BoxError, Handler, ReqBody, RequestBytes, empty, full, text};
use crate::volume::{IndexEntry, IndexJob, Volume, WriteError};

/// A keepstore's state.
pub(crate) struct Keepstore {
    pub(crate) uuid: String,
    /// Mounts, sorted by UUID.
    pub(crate) volumes: Vec<Arc<Volume>>,
    pub(crate) cfg: Arc<Config>,
    pub(crate) faults: Arc<Faults>,
}

pub(crate) fn handler(ks: Arc<Keepstore>) -> Handler {
    Arc::new(move |req| {
        let ks = Arc::clone(&ks);
        Box::pin(async move { ks.route(req).await })
    })
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// `/{locator}` routes take a segment that starts with 32 lowercase hex digits.
fn is_locator_segment(s: &str) -> bool {
    s.len() >= 32
        && s.as_bytes()[..32]
            .iter()
            .all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'))
        && !s.contains('/')
}

fn is_prefix(s: &str) -> bool {
    s.len() <= 32 && s.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'))
}

impl Keepstore {
    fn v2(&self) -> bool {
        self.cfg.arvados_version < 3
    }

    async fn route(self: Arc<Self>, req: Request<ReqBody>) -> Response<Body> {
        let request_id = req
            .headers()
            .get("x-request-id")
            .cloned()
            .unwrap_or_else(|| HeaderValue::from_str(&new_request_id()).expect("ascii"));
        let path = req.uri().path().to_owned();
        // Health sits outside the block router: no CORS headers (§5.2).
        if path == "/_health/ping" && req.method() == Method::GET {
            let mut r = health(&self.cfg.management_token, req.headers());
            r.headers_mut().insert("x-request-id", request_id);
            return r;
        }
        let mut resp = self.dispatch(req, &path).await;
        let h = resp.headers_mut();
        if !self.v2() {
            // 2.x keepstores sent no CORS headers at all (checked against 2.7.4).
            cors(h, "GET, HEAD, PUT, OPTIONS");
        }
        h.insert("x-request-id", request_id);
        resp
    }

    async fn dispatch(self: &Arc<Self>, req: Request<ReqBody>, path: &str) -> Response<Body> {
        let m = req.method().clone();
        let (parts, body) = req.into_parts();
        let req = &parts;
        if self.v2() {
            if let Some(r) = self.v2_only(req, path) {
                return r;
            }
        } else if m == Method::OPTIONS {
            return Response::new(empty());
        }
        let segs: Vec<&str> = path.strip_prefix('/').unwrap_or("").split('/').collect();
        match (m.as_str(), segs.as_slice()) {
            ("GET", ["index"]) => self.index_route(req, "", None).await,
            ("GET", ["index", p]) if is_prefix(p) => self.index_route(req, p, None).await,
            ("GET", ["mounts"]) => self.admin(req).unwrap_or_else(|| self.mounts()),
            ("GET", ["mounts", uuid, "blocks"]) => self.index_route(req, "", Some(uuid)).await,
            ("GET", ["mounts", uuid, "blocks", p]) if is_prefix(p) => {
                self.index_route(req, p, Some(uuid)).await
            }
            ("PUT", ["pull"]) | ("PUT", ["trash"]) => self.admin(req).unwrap_or_else(|| {
                // Accepted and ignored: this cluster runs no pull/trash workers.
                Response::new(empty())
            }),
            ("PUT", ["untrash", _]) => self
                .admin(req)
                .unwrap_or_else(|| text(StatusCode::NOT_FOUND, "file does not exist\n")),
            ("GET" | "HEAD", [loc]) if is_locator_segment(loc) => self.get(req, loc).await,
            // Old clients' `//locator` reads (§5.1); `PUT //hash` falls through to 400.
            ("GET" | "HEAD", ["", loc]) if is_locator_segment(loc) => self.get(req, loc).await,
            ("PUT", [loc]) if is_locator_segment(loc) => {
                let loc = (*loc).to_owned();
                self.put(Request::from_parts(parts, body), &loc).await
            }
            ("TOUCH", [loc]) if is_locator_segment(loc) => match self.admin(req) {
                Some(r) => r,
                None => self.touch(loc).await,
            },
            ("DELETE", [loc]) if is_locator_segment(loc) => match self.admin(req) {
                Some(r) => r,
                None => self.delete(loc).await,
            },
            _ => text(StatusCode::BAD_REQUEST, "Bad Request\n"),
        }
    }

    /// What a 2.x keepstore (Go's `ServeMux` and router of 2.7.4) answers differently
    /// before any route, or `None`. Each was seen against Arvados 2.7.4
    /// (tests/conformance.rs).
    fn v2_only(&self, req: &http::request::Parts, path: &str) -> Option<Response<Body>> {
        let m = req.method.as_str();
        let segs: Vec<&str> = path.strip_prefix('/').unwrap_or("").split('/').collect();
        match (m, segs.as_slice()) {
            // `ServeMux` cleans `//x` with a redirect, whatever the method (§14).
            (_, ["", rest @ ..]) if !rest.is_empty() => {
                let mut r = text(StatusCode::MOVED_PERMANENTLY, "");
                let target = format!("/{}", rest.join("/"));
                r.headers_mut().insert(
                    "location",
                    HeaderValue::from_str(&target).unwrap_or(HeaderValue::from_static("/")),
                );
                Some(r)
            }
            // No CORS, no TOUCH: a known path with another method is 405, empty.
            ("OPTIONS" | "POST" | "TOUCH", [loc]) if is_locator_segment(loc) => {
                Some(text(StatusCode::METHOD_NOT_ALLOWED, ""))
            }
            // Only `PUT /<32 hex>`: a size hint makes the route not match.
            ("PUT", [loc]) if is_locator_segment(loc) && loc.len() > 32 => {
                Some(text(StatusCode::METHOD_NOT_ALLOWED, ""))
            }
            ("GET", ["status.json"]) => Some(self.status_json()),
            // `/mounts` needed no token in 2.x.
            ("GET", ["mounts"]) => Some(self.mounts()),
            // The mount index took its prefix from `?prefix=` only.
            ("GET", ["mounts", _, "blocks", _]) => {
                Some(text(StatusCode::BAD_REQUEST, "Bad Request\n"))
            }
            ("GET", ["mounts", uuid, "blocks"])
                if !self.volumes.iter().any(|v| v.uuid == *uuid) =>
            {
                Some(text(StatusCode::NOT_FOUND, "mount not found\n"))
            }
            _ => None,
        }
    }

    /// 2.x `GET /status.json` (removed in 3.0): the shape 2.7.4 sends.
    fn status_json(&self) -> Response<Body> {
        let volumes: Vec<serde_json::Value> = self
            .volumes
            .iter()
            .map(|v| {
                serde_json::json!({
                    "Label": format!("[UnixVolume {}]", v.uuid),
                    "Status": {"MountPoint": v.uuid, "DeviceNum": 0, "BytesFree": 0, "BytesUsed": 0},
                    "InternalStats": {"Errors": 0, "InBytes": 0, "OutBytes": 0, "OpenOps": 0,
                        "StatOps": 0, "FlockOps": 0, "UtimesOps": 0, "CreateOps": 0,
                        "RenameOps": 0, "UnlinkOps": 0, "ReaddirOps": 0},
                })
            })
            .collect();
        let v = serde_json::json!({
            "Volumes": volumes,
            "BufferPool": {"BytesAllocatedCumulative": 0, "BuffersMax": 16, "BuffersInUse": 0},
            "PullQueue": {"InProgress": 0, "Queued": 0},
            "TrashQueue": {"InProgress": 0, "Queued": 0},
            "RequestsCurrent": 0,
            "RequestsMax": 0,
            "Version": "2.7.4",
        });
        let mut r = Response::new(full(serde_json::to_vec(&v).expect("json")));
        r.headers_mut().insert(
            "content-type",
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        r
    }

    /// The SystemRootToken check (§5.1); None means allowed. A 2.x keepstore answered
    /// 401 `Unauthorized` to a wrong token too.
    fn admin(&self, req: &http::request::Parts) -> Option<Response<Body>> {
        let want = &self.cfg.system_root_token;
        if want.is_empty() {
            return None;
        }
        let toks = crate::auth::keepstore_tokens(&req.headers, req.uri.query());
        if toks.is_empty() || (self.v2() && !toks.iter().any(|t| t == want)) {
            Some(text(StatusCode::UNAUTHORIZED, "Unauthorized\n"))
        } else if toks.iter().any(|t| t == want) {
            None
        } else {
            Some(text(StatusCode::FORBIDDEN, "Forbidden\n"))
        }
    }

    fn mounts(&self) -> Response<Body> {
        let list: Vec<serde_json::Value> = self
            .volumes
            .iter()
            .map(|v| {
                let classes: serde_json::Map<String, serde_json::Value> = v
                    .classes
                    .iter()
                    .map(|c| (c.clone(), serde_json::Value::Bool(true)))
                    .collect();
                serde_json::json!({
                    "uuid": v.uuid,
                    "device_id": v.device_id,
                    "allow_write": v.writable(),
                    "allow_trash": v.writable(),
                    "replication": v.replication,
                    "storage_classes": classes,
                })
            })
            .collect();
        let mut r = Response::new(full(serde_json::to_vec(&list).expect("json")));
        // keepstore sets no Content-Type; Go's server sniffs this JSON as text.
        r.headers_mut().insert(
            "content-type",
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        r
    }

    /// Volumes in the §4.2 order for `hash`: descending priority (the highest of the
    /// volume's classes), then ascending `md5(hash + uuid[12:])` (the whole UUID when it
    /// is not 27 characters). Written here from the spec, not taken from keep-client:
    /// a client bug must not be copied into the server that tests it.
    pub(crate) fn ordered(&self, hash: &BlockHash) -> Vec<Arc<Volume>> {
        use md5::Digest as _;
        let hex = hash.to_hex();
        let mut v: Vec<(i32, [u8; 16], Arc<Volume>)> = self
            .volumes
            .iter()
            .map(|vol| {
                let part = if vol.uuid.len() == 27 {
                    &vol.uuid[12..]
                } else {
                    &vol.uuid[..]
                };
                let weight: [u8; 16] = md5::Md5::digest(format!("{hex}{part}")).into();
                let priority = vol
                    .classes
                    .iter()
                    .map(|c| self.cfg.class_priority(c))
                    .max()
                    .unwrap_or(0);
                (priority, weight, Arc::clone(vol))
            })
            .collect();
        v.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        v.into_iter().map(|(_, _, vol)| vol).collect()
    }

    fn not_found(&self) -> Response<Body> {
        if self.v2() {
            text(StatusCode::NOT_FOUND, "Not Found\n")
        } else {
            text(StatusCode::NOT_FOUND, "file does not exist\n")
        }
    }

    async fn get(&self, req: &http::request::Parts, loc_str: &str) -> Response<Body> {
        let head = req.method == Method::HEAD;
        let mut resp = self.get_inner(req, loc_str, head).await;
        if !self.v2() {
            resp.headers_mut()
                .insert("vary", HeaderValue::from_static("X-Keep-Signature"));
        }
        resp
    }

    async fn get_inner(
        &self,
        req: &http::request::Parts,
        loc_str: &str,
        head: bool,
    ) -> Response<Body> {
        let Ok(loc) = loc_str.parse::<Locator>() else {
            return text(StatusCode::BAD_REQUEST, "invalid locator\n");
        };
        let size = loc.size().unwrap_or(0);
        // §5.3 step 1: a GET must say how long the block is (3.x only, §14).
        if !head && !self.v2() && size == 0 && loc.hash() != BlockHash::EMPTY {
            return text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
        }
        let tokens = crate::auth::keepstore_tokens(&req.headers, req.uri.query());
        if loc.is_remote() && !loc.is_signed() {
            // §5.9: federation is not configured in this cluster.
            return if tokens.is_empty() {
                text(
                    StatusCode::UNAUTHORIZED,
                    "no token provided in Authorization header\n",
                )
            } else {
                text(StatusCode::BAD_REQUEST, "remote cluster not configured\n")
            };
        }
        if self.cfg.blob_signing {
            if let Some(r) = self.check_signature(loc_str, tokens.first()) {
                return r;
            }
        }
        let hash = loc.hash();
        let mut error: Option<String> = None;
        for vol in self.ordered(&hash) {
            match vol.get(&hash).await {
                Ok(Some(data)) => {
                    let bad = BlockHash::of(&data) != hash
                        || loc.size().is_some_and(|s| s > 0 && s != data.len() as u64);
                    if bad {
                        return if self.v2() {
                            text(
                                StatusCode::INTERNAL_SERVER_ERROR,
                                "Hash mismatch in stored data\n",
                            )
                        } else if !head && data.len() > CHUNK {
                            // §5.3 step 5: 3.x streams in 64 KiB chunks and holds back
                            // the last until the hash is checked; on a mismatch what
                            // was sent stays sent and the connection is closed.
                            let sent = (data.len() - 1) / CHUNK * CHUNK;
                            let mut r = Response::new(truncated_body(data.slice(..sent)));
                            let h = r.headers_mut();
                            h.insert("content-length", HeaderValue::from(data.len()));
                            if let Some(kind) = sniff(&data) {
                                h.insert("content-type", kind);
                            }
                            r
                        } else {
                            text(
                                StatusCode::BAD_GATEWAY,
                                "checksum mismatch in stored data\n",
                            )
                        };
                    }
                    return self.block_response(data, head);
                }
                Ok(None) => {}
                Err(e) => error = Some(e.to_string()),
            }
        }
        match error {
            Some(e) => text(StatusCode::INTERNAL_SERVER_ERROR, &format!("{e}\n")),
            None => self.not_found(),
        }
    }

    fn block_response(&self, data: Bytes, head: bool) -> Response<Body> {
        let len = data.len();
        let kind = sniff(&data);
        let plan = self.faults.snapshot();
        let body = if head {
            empty()
        } else if plan.truncate_body {
            truncated_body(data.slice(..len / 2))
        } else if plan.stall_body {
            stalled_body(data.slice(..len / 2))
        } else if plan.corrupt {
            let mut v = data.to_vec();
            if let Some(b) = v.last_mut() {
                *b ^= 0x01;
            }
            crate::server::chunked(Bytes::from(v), 64 * 1024)
        } else {
            crate::server::chunked(data, 64 * 1024)
        };
        let mut r = Response::new(body);
        r.headers_mut()
            .insert("content-length", HeaderValue::from(len));
        if self.v2() {
            r.headers_mut().insert(
                "content-type",
                HeaderValue::from_static("application/octet-stream"),
            );
        } else if !head {
            // 3.x sets none, so Go's server sniffs the first bytes (§5.2).
            if let Some(kind) = kind {
                r.headers_mut().insert("content-type", kind);
            }
        }
        r
    }

    fn check_signature(&self, loc: &str, token: Option<&String>) -> Option<Response<Body>> {
        let v2 = self.v2();
        let Some(token) = token else {
            // 2.x: the HMAC check failed without a token, giving 403 (§3.3).
            return Some(if v2 {
                text(StatusCode::FORBIDDEN, "Forbidden\n")
            } else {
                text(
                    StatusCode::UNAUTHORIZED,
                    "no token provided in Authorization header\n",
                )
            });
        };
        let res = verify(
            loc,
            &self.cfg.signing_key,
            &Token::new(token.clone()),
            unix_now(),
            self.cfg.signature_format(),
        );
        match res {
            Ok(()) => None,
            Err(SignatureError::Expired) if v2 => Some(text(
                StatusCode::UNAUTHORIZED,
                "Expired permission signature\n",
            )),
            Err(SignatureError::Expired) => {
                Some(text(StatusCode::UNAUTHORIZED, "expired signature\n"))
            }
            Err(_) if v2 => Some(text(StatusCode::FORBIDDEN, "Forbidden\n")),
            Err(_) => Some(text(StatusCode::BAD_REQUEST, "invalid signature\n")),
        }
    }

    async fn put(&self, req: Request<ReqBody>, loc_str: &str) -> Response<Body> {
        let Ok(loc) = loc_str.parse::<Locator>() else {
            return text(StatusCode::BAD_REQUEST, "invalid locator\n");
        };
        let content_length = req
            .headers()
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if self.v2() {
            match content_length {
                None => return text(StatusCode::LENGTH_REQUIRED, "Missing Content-Length\n"),
                Some(n) if n > MAX_BLOCK_SIZE => {
                    return text(StatusCode::PAYLOAD_TOO_LARGE, "Block is too large\n");
                }
                _ => {}
            }
        }
        let token = crate::auth::keepstore_tokens(req.headers(), req.uri().query())
            .into_iter()
            .next();
        let classes: Vec<String> = req
            .headers()
            .get("x-keep-storage-classes")
            .and_then(|v| v.to_str().ok())
            .map(|v| {
                v.split(',')
                    .map(|s| s.trim().to_owned())
                    .filter(|s| !s.is_empty())
                    .collect()
            })
            .unwrap_or_default();
        // Read at most 64 MiB + 1 byte (§5.4 step 1).
        let mut body = req.into_body();
        let mut buf = Vec::new();
        while let Some(frame) = body.frame().await {
            match frame {
                Ok(f) => {
                    if let Some(d) = f.data_ref() {
                        buf.extend_from_slice(d);
                        if buf.len() as u64 > MAX_BLOCK_SIZE {
                            return text(
                                StatusCode::PAYLOAD_TOO_LARGE,
                                "request entity too large\n",
                            );
                        }
                    }
                }
                Err(e) => return text(StatusCode::BAD_REQUEST, &format!("{e}\n")),
            }
        }
        let n = buf.len() as u64;
        let mut resp = self
            .store(loc_str, &loc, Bytes::from(buf), token, &classes)
            .await;
        resp.extensions_mut().insert(RequestBytes(n));
        resp
    }

    async fn store(
        &self,
        loc_str: &str,
        loc: &Locator,
        data: Bytes,
        token: Option<String>,
        classes: &[String],
    ) -> Response<Body> {
        let got = BlockHash::of(&data);
        if got != loc.hash() {
            return if self.v2() {
                text(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "Hash mismatch in request\n",
                )
            } else {
                text(
                    StatusCode::BAD_REQUEST,
                    &format!(
                        "content hash {got} did not match specified locator {}\n",
                        loc_str
                    ),
                )
            };
        }
        match self.write_block(&got, data.clone(), classes).await {
            Ok(stored) => {
                let replicas = stored.replicas;
                let confirmed = stored.confirmed();
                let base = Locator::new(got, data.len() as u64);
                let out = match token {
                    Some(t) if !self.cfg.signing_key.is_empty() => sign(
                        &base,
                        &self.cfg.signing_key,
                        &Token::new(t),
                        unix_now() + self.cfg.ttl.as_secs(),
                        self.cfg.signature_format(),
                    ),
                    _ => base,
                };
                let mut r = Response::new(full(format!("{}\n", out.to_wire())));
                let h = r.headers_mut();
                // Sniffed by Go's server from the locator text.
                h.insert(
                    "content-type",
                    HeaderValue::from_static("text/plain; charset=utf-8"),
                );
                h.insert("x-keep-replicas-stored", HeaderValue::from(replicas));
                h.insert(
                    "x-keep-storage-classes-confirmed",
                    HeaderValue::from_str(&confirmed).unwrap_or(HeaderValue::from_static("")),
                );
                r
            }
            Err(PutFailure::Collision) => text(
                StatusCode::INTERNAL_SERVER_ERROR,
                if self.v2() {
                    "Collision\n"
                } else {
                    "hash collision\n"
                },
            ),
            Err(PutFailure::Full) if self.v2() => text(StatusCode::SERVICE_UNAVAILABLE, "Full\n"),
            Err(PutFailure::Full) => {
                text(StatusCode::INSUFFICIENT_STORAGE, "insufficient storage\n")
            }
            Err(PutFailure::Unavailable) => {
                text(StatusCode::SERVICE_UNAVAILABLE, "volume unavailable\n")
            }
        }
    }

    /// §5.4 steps 4-5, as keepstore's `putProgress` does it: first touch identical
    /// copies on writable volumes that are still wanted, then write to wanted volumes
    /// in volume order until every requested class has a volume (any one volume when
    /// no class is requested). A volume is wanted while it is in a class still to do
    /// (or, with no class requested, until one volume is used). Replicas and classes
    /// count each used volume's `Replication`.
    pub(crate) async fn write_block(
        &self,
        hash: &BlockHash,
        data: Bytes,
        classes: &[String],
    ) -> Result<PutProgress, PutFailure> {
        let writable: Vec<Arc<Volume>> = self
            .ordered(hash)
            .into_iter()
            .filter(|v| v.writable())
            .collect();
        let mut p = PutProgress::new(classes);
        for v in &writable {
            if !p.wants(v) {
                continue;
            }
            if let Ok(Some(existing)) = v.get(hash).await {
                // A stored copy that fails its own hash is damaged, not a collision:
                // 2.x wrote over it (seen against 2.7.4); 3.x calls it a collision.
                if existing != data && (!self.v2() || BlockHash::of(&existing) == *hash) {
                    return Err(PutFailure::Collision);
                }
                if existing == data && v.touch(hash).await {
                    p.add(v);
                }
            }
        }
        let mut all_full = true;
        for v in &writable {
            if p.done() {
                break;
            }
            if !p.wants(v) {
                continue;
            }
            match v.put(hash, data.clone()).await {
                Ok(()) => p.add(v),
                Err(WriteError::Full) => {}
                Err(WriteError::Other(e)) => {
                    tracing::warn!(volume = %v.uuid, error = %e, "write failed");
                    all_full = false;
                }
            }
        }
        if p.replicas > 0 {
            return Ok(p);
        }
        Err(if all_full {
            PutFailure::Full
        } else {
            PutFailure::Unavailable
        })
    }

    async fn touch(&self, loc: &str) -> Response<Body> {
        let Ok(loc) = loc.parse::<Locator>() else {
            return text(StatusCode::BAD_REQUEST, "invalid locator\n");
        };
        // First writable mount in UUID order that has the block (§5.1).
        for v in self.volumes.iter().filter(|v| v.writable()) {
            if v.touch(&loc.hash()).await {
                return Response::new(empty());
            }
        }
        text(StatusCode::NOT_FOUND, "file does not exist\n")
    }

    async fn delete(&self, loc: &str) -> Response<Body> {
        let Ok(loc) = loc.parse::<Locator>() else {
            return text(StatusCode::BAD_REQUEST, "invalid locator\n");
        };
        let hash = loc.hash();
        let mut found = false;
        let cutoff = crate::volume::now_ns() - self.cfg.ttl.as_nanos() as i64;
        for v in self.volumes.iter().filter(|v| v.writable()) {
            if let Some(t) = v.mtime(&hash).await {
                found = true;
                // Trashing is a no-op for blocks newer than BlobSigningTTL (§5.8).
                if t < cutoff {
                    v.remove(&hash).await;
                }
            }
        }
        if found {
            Response::new(empty())
        } else {
            text(StatusCode::NOT_FOUND, "file does not exist\n")
        }
    }

    async fn index_route(
        &self,
        req: &http::request::Parts,
        path_prefix: &str,
        mount: Option<&str>,
    ) -> Response<Body> {
        if let Some(r) = self.admin(req) {
            return r;
        }
        // A non-empty ?prefix= wins over the path (§5.6).
        let q = crate::auth::query_value(req.uri.query(), "prefix").filter(|p| !p.is_empty());
        let prefix = q.unwrap_or_else(|| path_prefix.to_owned());
        let vols: Vec<Arc<Volume>> = match mount {
            None => self.volumes.clone(),
            Some(u) => match self.volumes.iter().find(|v| v.uuid == u) {
                Some(v) => vec![Arc::clone(v)],
                None => return text(StatusCode::NOT_FOUND, "file does not exist\n"),
            },
        };
        let seconds = self.cfg.index_mtime_seconds;
        let faults = self.faults.snapshot();
        let body = index_body(
            vols,
            prefix,
            seconds,
            self.faults.take_index_truncation(),
            faults.malformed_index,
        );
        let mut r = Response::new(body);
        r.headers_mut().insert(
            "content-type",
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        r
    }
}

/// The chunk size of keepstore's block responses.
const CHUNK: usize = 64 * 1024;

/// What Go's `http.DetectContentType` makes of a block body, for the two answers a
/// block gets in practice: text if the first 512 bytes hold no binary control byte,
/// else `application/octet-stream`. (Go also recognises HTML, images and archives by
/// their magic numbers; clients must ignore the type, §5.2.)
/// An empty body is not sniffed: no type at all.
fn sniff(data: &[u8]) -> Option<HeaderValue> {
    let head = &data[..data.len().min(512)];
    let binary = head.iter().any(|&b| {
        b <= 0x08 || b == 0x0b || (0x0e..=0x1a).contains(&b) || (0x1c..=0x1f).contains(&b)
    });
    match (head.is_empty(), binary) {
        (true, _) => None,
        (false, true) => Some(HeaderValue::from_static("application/octet-stream")),
        (false, false) => Some(HeaderValue::from_static("text/plain; charset=utf-8")),
    }
}

/// What a PUT has stored so far (keepstore's `putProgress`).
#[derive(Debug)]
pub(crate) struct PutProgress {
    /// Requested classes not yet on a used volume.
    todo: Vec<String>,
    used: Vec<String>,
    pub(crate) replicas: u64,
    /// Replicas per class of the used volumes (requested or not).
    done: std::collections::BTreeMap<String, u64>,
}

impl PutProgress {
    fn new(classes: &[String]) -> PutProgress {
        let mut todo: Vec<String> = classes.iter().filter(|c| !c.is_empty()).cloned().collect();
        todo.sort();
        todo.dedup();
        PutProgress {
            todo,
            used: Vec::new(),
            replicas: 0,
            done: Default::default(),
        }
    }

    fn done(&self) -> bool {
        self.todo.is_empty() && self.replicas > 0
    }

    fn wants(&self, v: &Volume) -> bool {
        if self.done() || self.used.contains(&v.uuid) {
            return false;
        }
        self.todo.is_empty() || v.classes.iter().any(|c| self.todo.contains(c))
    }

    fn add(&mut self, v: &Volume) {
        self.used.push(v.uuid.clone());
        self.replicas += v.replication;
        for c in &v.classes {
            *self.done.entry(c.clone()).or_default() += v.replication;
            self.todo.retain(|t| t != c);
        }
    }

    /// `X-Keep-Storage-Classes-Confirmed`: every class of the used volumes.
    fn confirmed(&self) -> String {
        let items: Vec<String> = self.done.iter().map(|(c, n)| format!("{c}={n}")).collect();
        items.join(", ")
    }
}

/// Why a PUT stored nothing.
#[derive(Debug)]
pub(crate) enum PutFailure {
    Collision,
    Full,
    Unavailable,
}

/// Streams `<hash>+<size> <mtime>\n` lines of every volume, then the blank line.
pub(crate) fn index_body(
    vols: Vec<Arc<Volume>>,
    prefix: String,
    seconds: bool,
    truncate: bool,
    malformed: bool,
) -> Body {
    let (out_tx, out_rx) = mpsc::channel::<Result<Frame<Bytes>, BoxError>>(4);
    tokio::spawn(async move {
        for v in vols {
            let (tx, mut rx) = mpsc::channel::<Vec<IndexEntry>>(4);
            let job = v.index(&prefix, tx.clone());
            drop(tx);
            let worker = match job {
                IndexJob::Ready(entries) => {
                    if out_tx
                        .send(Ok(Frame::data(format_entries(&entries, seconds))))
                        .await
                        .is_err()
                    {
                        return;
                    }
                    None
                }
                IndexJob::Blocking(f) => Some(tokio::task::spawn_blocking(f)),
            };
            while let Some(chunk) = rx.recv().await {
                if out_tx
                    .send(Ok(Frame::data(format_entries(&chunk, seconds))))
                    .await
                    .is_err()
                {
                    return;
                }
            }
            if let Some(w) = worker {
                if let Ok(Err(e)) = w.await {
                    // Part-way failure: the end marker is left out (§5.6).
                    let _ = out_tx.send(Err(Box::new(e) as BoxError)).await;
                    return;
                }
            }
        }
        if malformed {
            let line = format!("{}\n", crate::faults::MALFORMED_INDEX_LINE);
            if out_tx
                .send(Ok(Frame::data(Bytes::from(line))))
                .await
                .is_err()
            {
                return;
            }
        }
        if !truncate {
            let _ = out_tx
                .send(Ok(Frame::data(Bytes::from_static(b"\n"))))
                .await;
        }
    });
    let stream =
        futures::stream::unfold(
            out_rx,
            |mut rx| async move { rx.recv().await.map(|f| (f, rx)) },
        );
    http_body_util::StreamBody::new(stream).boxed_unsync()
}

fn format_entries(entries: &[IndexEntry], seconds: bool) -> Bytes {
    // Hand-rolled: a 10-million-line index must not spend its time in `fmt`. S5
    // measures keep-rsync reading it from here, so this fixture's CPU is in that
    // figure too (a division per digit of the 19-digit mtime was a fifth of it).
    let mut out = Vec::with_capacity(entries.len() * 64);
    let mut num = itoa::Buffer::new();
    // Synthetic volumes give every block the same mtime: format it once.
    let mut last_mtime: Option<(i64, Vec<u8>)> = None;
    let mut hash = [0u8; 32];
    for (h, size, mtime) in entries {
        hex::encode_to_slice(h.0, &mut hash).expect("32 bytes");
        out.extend_from_slice(&hash);
        out.push(b'+');
        out.extend_from_slice(num.format(*size).as_bytes());
        out.push(b' ');
        let t = if seconds {
            mtime / 1_000_000_000
        } else {
            *mtime
        };
        match &last_mtime {
            Some((was, text)) if *was == t => out.extend_from_slice(text),
            _ => {
                let text = num.format(t).as_bytes().to_vec();
                out.extend_from_slice(&text);
                last_mtime = Some((t, text));
            }
        }
        out.push(b'\n');
    }
    Bytes::from(out)
}

/// Sends `half`, lets hyper flush it with the headers, then fails the body so the
/// connection is closed short of `Content-Length`.
fn truncated_body(half: Bytes) -> Body {
    use futures::StreamExt;
    let first = futures::stream::iter([Ok::<_, BoxError>(Frame::data(half))]);
    let fail = futures::stream::once(async {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        Err::<Frame<Bytes>, BoxError>("injected fault: body truncated".into())
    });
    http_body_util::StreamBody::new(first.chain(fail)).boxed_unsync()
}

/// Sends `half`, then nothing, without ending or failing: a stalled transfer.
fn stalled_body(half: Bytes) -> Body {
    use futures::StreamExt;
    let first = futures::stream::iter([Ok::<_, BoxError>(Frame::data(half))]);
    let never = futures::stream::pending::<Result<Frame<Bytes>, BoxError>>();
    http_body_util::StreamBody::new(first.chain(never)).boxed_unsync()
}

pub(crate) fn cors(h: &mut http::HeaderMap, methods: &'static str) {
    h.insert(
        "access-control-allow-methods",
        HeaderValue::from_static(methods),
    );
    h.insert("access-control-allow-origin", HeaderValue::from_static("*"));
    h.insert(
        "access-control-allow-headers",
        HeaderValue::from_static(
            "Authorization, Content-Length, Content-Type, X-Keep-Desired-Replicas, X-Keep-Signature, X-Keep-Storage-Classes",
        ),
    );
    h.insert(
        "access-control-expose-headers",
        HeaderValue::from_static(
            "X-Keep-Locator, X-Keep-Replicas-Stored, X-Keep-Storage-Classes-Confirmed",
        ),
    );
    h.insert(
        "access-control-max-age",
        HeaderValue::from_static("86486400"),
    );
}

/// `/_health/ping` (§5.1): exact `Bearer <ManagementToken>`.
pub(crate) fn health(management_token: &str, headers: &http::HeaderMap) -> Response<Body> {
    if management_token.is_empty() {
        return text(StatusCode::NOT_FOUND, "disabled\n");
    }
    match headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        None => text(StatusCode::UNAUTHORIZED, "authorization required\n"),
        Some(v) if v == format!("Bearer {management_token}") => {
            let mut r = Response::new(full("{\"health\":\"OK\"}\n"));
            r.headers_mut()
                .insert("content-type", HeaderValue::from_static("application/json"));
            r
        }
        Some(_) => text(StatusCode::FORBIDDEN, "authorization error\n"),
    }
}

/// `req-` and 20 base-36 characters (§5.2).
pub(crate) fn new_request_id() -> String {
    use rand::Rng;
    const A: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut rng = rand::rng();
    let s: String = (0..20)
        .map(|_| A[rng.random_range(0..A.len())] as char)
        .collect();
    format!("req-{s}")
}
