//! keepproxy (§6): reads through to keepstores in probe order, PUT fan-out with the Go
//! client algorithm (§8.6, one attempt), `/index` concatenation. Upstream keepstores
//! are reached in-process through their fault and logging layer.

use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use keep_client::{BlockHash, Locator, MAX_BLOCK_SIZE};

use crate::config::Config;
use crate::server::{Body, Handler, ReqBody, RequestBytes, Service, empty, full, text};

pub(crate) struct Proxy {
    pub(crate) cfg: Arc<Config>,
    /// The keepstores, their UUIDs, and whether each is read-only.
    pub(crate) stores: Vec<(Arc<Service>, String, bool)>,
    /// The proxy's own faults (truncated index, corrupted reads).
    pub(crate) faults: Arc<crate::faults::Faults>,
}

pub(crate) fn handler(p: Arc<Proxy>) -> Handler {
    Arc::new(move |req| {
        let p = Arc::clone(&p);
        Box::pin(async move { p.route(req).await })
    })
}

/// `\+K@[a-z0-9]{5}(\+|$)` → `$1` (§6.3).
fn remove_k_hint(loc: &str) -> String {
    let parts: Vec<&str> = loc.split('+').collect();
    parts
        .into_iter()
        .filter(|p| {
            !(p.len() == 7
                && p.starts_with("K@")
                && p[2..]
                    .bytes()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit()))
        })
        .collect::<Vec<_>>()
        .join("+")
}

fn upstream(
    method: Method,
    path: &str,
    token: &str,
    request_id: Option<&HeaderValue>,
    body: Bytes,
) -> Request<ReqBody> {
    let mut b = Request::builder()
        .method(method)
        .uri(path)
        .header("authorization", format!("Bearer {token}"))
        .header("content-length", body.len());
    if let Some(id) = request_id {
        b = b.header("x-request-id", id.clone());
    }
    b.body(crate::server::full(body)).expect("valid request")
}

impl Proxy {
    async fn route(self: Arc<Self>, req: Request<ReqBody>) -> Response<Body> {
        let path = req.uri().path().to_owned();
        let m = req.method().clone();
        let rid = req.headers().get("x-request-id").cloned();
        let mut resp = self.dispatch(req, &path, &m).await;
        crate::keepstore::cors(resp.headers_mut(), "GET, HEAD, PUT, OPTIONS, POST");
        if let Some(id) = rid {
            resp.headers_mut().insert("x-request-id", id);
        }
        resp
    }

    async fn dispatch(&self, req: Request<ReqBody>, path: &str, m: &Method) -> Response<Body> {
        if path == "/_health/ping" && m == Method::GET {
            return crate::keepstore::health(&self.cfg.management_token, req.headers());
        }
        let rest = path.strip_prefix('/').unwrap_or("");
        let is_loc = rest.len() >= 32
            && rest.as_bytes()[..32]
                .iter()
                .all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'))
            && (rest.len() == 32 || rest.as_bytes()[32] == b'+')
            && !rest.contains('/');
        let single = !rest.contains('/');
        match m.as_str() {
            "OPTIONS" if single => Response::new(empty()),
            "GET" | "HEAD" if is_loc => self.get(req, rest).await,
            "PUT" if is_loc => self.put(req, Some(rest)).await,
            "POST" if rest.is_empty() => self.put(req, None).await,
            "GET" if rest == "index" => self.index(req, "").await,
            "GET"
                if rest.starts_with("index/") && {
                    let p = &rest[6..];
                    p.len() <= 32 && p.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'))
                } =>
            {
                self.index(req, &rest[6..]).await
            }
            // gorilla/mux: a wrong method on a matching single-segment path is 405 with
            // an empty body; anything else is 400 "Bad request" (§6.1).
            _ if single => {
                let mut r = Response::new(empty());
                *r.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
                r
            }
            _ => text(StatusCode::BAD_REQUEST, "Bad request\n"),
        }
    }

    /// §6.2: `OAuth2|Bearer <tok>` that the API accepts.
    fn authorize(&self, req: &Request<ReqBody>) -> Result<String, Response<Body>> {
        match crate::auth::bearer(req.headers()) {
            Some(t) if self.cfg.valid_token(&t) => Ok(t),
            _ => Err(text(
                StatusCode::FORBIDDEN,
                "Missing or invalid Authorization header, or method not allowed\n",
            )),
        }
    }

    async fn get(&self, req: Request<ReqBody>, loc_str: &str) -> Response<Body> {
        if req
            .headers()
            .get("via")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.contains(" keepproxy"))
        {
            return text(StatusCode::INTERNAL_SERVER_ERROR, "loop detected\n");
        }
        let token = match self.authorize(&req) {
            Ok(t) => t,
            Err(r) => return r,
        };
        let loc_str = remove_k_hint(loc_str);
        let Ok(loc) = loc_str.parse::<Locator>() else {
            return text(StatusCode::BAD_REQUEST, "invalid locator\n");
        };
        let head = req.method() == Method::HEAD;
        let rid = req.headers().get("x-request-id").cloned();
        let uuids: Vec<&str> = self.stores.iter().map(|s| s.1.as_str()).collect();
        let (mut n404, mut temporary) = (0, false);
        for i in crate::probe_order(&loc.hash(), &uuids) {
            let svc = &self.stores[i].0;
            if !svc.is_up() {
                temporary = true;
                continue;
            }
            let up = upstream(
                req.method().clone(),
                &format!("/{loc_str}"),
                &token,
                rid.as_ref(),
                Bytes::new(),
            );
            let resp = svc.call(up).await;
            let status = resp.status();
            if status == StatusCode::OK {
                let Ok(body) = resp.into_body().collect().await.map(|c| c.to_bytes()) else {
                    temporary = true;
                    continue;
                };
                if !head && BlockHash::of(&body) != loc.hash() {
                    temporary = true;
                    continue;
                }
                let len = if head {
                    loc.size().unwrap_or(0) as usize
                } else {
                    body.len()
                };
                let mut r = Response::new(if head { empty() } else { full(body) });
                r.headers_mut()
                    .insert("content-length", HeaderValue::from(len));
                r.headers_mut()
                    .insert("via", HeaderValue::from_static("HTTP/1.1 keepproxy"));
                return r;
            }
            match status.as_u16() {
                404 => n404 += 1,
                408 | 429 | 500.. => temporary = true,
                _ => {}
            }
        }
        if n404 == self.stores.len() {
            text(StatusCode::NOT_FOUND, "Block not found\n")
        } else if temporary {
            text(StatusCode::BAD_GATEWAY, "GET failed\n")
        } else {
            text(StatusCode::UNPROCESSABLE_ENTITY, "GET failed\n")
        }
    }

    async fn put(&self, req: Request<ReqBody>, loc_str: Option<&str>) -> Response<Body> {
        let stored_header = |mut r: Response<Body>, n: u64| {
            r.headers_mut()
                .insert("x-keep-replicas-stored", HeaderValue::from(n));
            r
        };
        let Some(cl) = req
            .headers()
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
        else {
            return stored_header(text(StatusCode::LENGTH_REQUIRED, "Length Required\n"), 0);
        };
        let path_loc = match loc_str.map(|s| remove_k_hint(s).parse::<Locator>()) {
            None => None,
            Some(Ok(l)) => Some(l),
            Some(Err(_)) => {
                return stored_header(text(StatusCode::BAD_REQUEST, "invalid locator\n"), 0);
            }
        };
        if let Some(s) = path_loc.as_ref().and_then(|l| l.size()) {
            if s > 0 && s != cl {
                return stored_header(
                    text(
                        StatusCode::BAD_REQUEST,
                        "Locator size hint does not match Content-Length header\n",
                    ),
                    0,
                );
            }
        }
        if cl > MAX_BLOCK_SIZE {
            return stored_header(
                text(StatusCode::PAYLOAD_TOO_LARGE, "Block is too large\n"),
                0,
            );
        }
        let token = match self.authorize(&req) {
            Ok(t) => t,
            Err(r) => return stored_header(r, 0),
        };
        let want: u64 = req
            .headers()
            .get("x-keep-desired-replicas")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(self.cfg.replication);
        let rid = req.headers().get("x-request-id").cloned();
        let classes = req.headers().get("x-keep-storage-classes").cloned();
        let data = match req.into_body().collect().await {
            Ok(c) => c.to_bytes(),
            Err(e) => return stored_header(text(StatusCode::BAD_REQUEST, &format!("{e}\n")), 0),
        };
        let n = data.len() as u64;
        let hash = BlockHash::of(&data);
        if path_loc.as_ref().is_some_and(|l| l.hash() != hash) {
            let mut r = stored_header(text(StatusCode::BAD_GATEWAY, "hash mismatch\n"), 0);
            r.extensions_mut().insert(RequestBytes(n));
            return r;
        }
        // §8.6 with replicasPerService = 1: start uploads to the first `want`
        // writable stores in probe order; each failure starts the next one.
        let writable: Vec<usize> = (0..self.stores.len())
            .filter(|&i| !self.stores[i].2)
            .collect();
        let uuids: Vec<&str> = writable
            .iter()
            .map(|&i| self.stores[i].1.as_str())
            .collect();
        let order: Vec<usize> = crate::probe_order(&hash, &uuids)
            .into_iter()
            .map(|j| writable[j])
            .collect();
        let (mut done, mut next, mut locator, mut errors) =
            (0u64, 0usize, String::new(), Vec::new());
        let mut active = FuturesUnordered::new();
        loop {
            while done + (active.len() as u64) < want && next < order.len() {
                let svc = Arc::clone(&self.stores[order[next]].0);
                next += 1;
                let mut up = upstream(
                    Method::PUT,
                    &format!("/{hash}"),
                    &token,
                    rid.as_ref(),
                    data.clone(),
                );
                if let Some(c) = &classes {
                    up.headers_mut().insert("x-keep-storage-classes", c.clone());
                }
                active.push(async move {
                    if !svc.is_up() {
                        return (0u16, 0u64, "connection refused".to_owned());
                    }
                    let r = svc.call(up).await;
                    let status = r.status().as_u16();
                    let reps = r
                        .headers()
                        .get("x-keep-replicas-stored")
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(1);
                    let body = r
                        .into_body()
                        .collect()
                        .await
                        .map(|c| c.to_bytes())
                        .unwrap_or_default();
                    (
                        status,
                        reps,
                        String::from_utf8_lossy(&body).trim().to_owned(),
                    )
                });
            }
            if done >= want || active.is_empty() {
                break;
            }
            let Some((status, reps, body)) = active.next().await else {
                break;
            };
            if status == 200 {
                done += reps;
                locator = body;
            } else {
                errors.push(format!("[{status}] {body}"));
            }
        }
        let mut r = if done >= want {
            let mut r = Response::new(full(locator));
            if let Some(c) = classes.as_ref().and_then(|c| c.to_str().ok()) {
                let conf: Vec<String> = c
                    .split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(|s| format!("{s}={done}"))
                    .collect();
                if let Ok(v) = HeaderValue::from_str(&conf.join(", ")) {
                    r.headers_mut()
                        .insert("x-keep-storage-classes-confirmed", v);
                }
            }
            r
        } else {
            let mut msg = "Could not write sufficient replicas".to_owned();
            if !errors.is_empty() {
                msg.push_str(": ");
                msg.push_str(&errors.join("; "));
            }
            text(StatusCode::SERVICE_UNAVAILABLE, &format!("{msg}\n"))
        };
        r = stored_header(r, done);
        r.extensions_mut().insert(RequestBytes(n));
        r
    }

    async fn index(&self, req: Request<ReqBody>, prefix: &str) -> Response<Body> {
        let token = match self.authorize(&req) {
            Ok(t) => t,
            Err(r) => return r,
        };
        let rid = req.headers().get("x-request-id").cloned();
        let path = if prefix.is_empty() {
            "/index".to_owned()
        } else {
            format!("/index/{prefix}")
        };
        let mut out = Vec::new();
        for (svc, _, _) in &self.stores {
            if !svc.is_up() {
                return text(StatusCode::BAD_GATEWAY, "connection refused\n");
            }
            let r = svc
                .call(upstream(
                    Method::GET,
                    &path,
                    &token,
                    rid.as_ref(),
                    Bytes::new(),
                ))
                .await;
            if r.status() != StatusCode::OK {
                return text(
                    StatusCode::BAD_GATEWAY,
                    &format!("upstream status {}\n", r.status().as_u16()),
                );
            }
            let Ok(body) = r.into_body().collect().await.map(|c| c.to_bytes()) else {
                return text(StatusCode::BAD_GATEWAY, "upstream read error\n");
            };
            // Each upstream index must be complete; its marker is dropped (§6.5).
            let part: &[u8] = if body.as_ref() == b"\n" {
                b""
            } else if body.ends_with(b"\n\n") {
                &body[..body.len() - 1]
            } else {
                return text(StatusCode::BAD_GATEWAY, "Got incomplete index\n");
            };
            out.extend_from_slice(part);
        }
        if !self.faults.snapshot().truncate_index {
            out.push(b'\n');
        }
        Response::new(full(out))
    }
}
