//! A small scripted HTTP server for client tests (object_store `mock_server` style):
//! a hyper 1 server on `127.0.0.1:0` that records every request and answers from a
//! closure. Replaced by `keep-testcluster` once that lands.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use keep_client::{BlockHash, KeepService, ServiceType};
use tokio::net::TcpListener;

/// A request as the server saw it.
#[derive(Debug, Clone)]
pub(crate) struct Request {
    pub(crate) method: String,
    /// Path and query, exactly as sent.
    pub(crate) path: String,
    pub(crate) headers: hyper::HeaderMap,
    pub(crate) body: Bytes,
}

impl Request {
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// A scripted answer.
#[derive(Debug, Clone)]
pub(crate) struct Reply {
    pub(crate) status: u16,
    pub(crate) headers: Vec<(String, String)>,
    /// Body chunks, sent as separate frames with a short pause between them.
    pub(crate) chunks: Vec<Bytes>,
    /// A pause before the response is sent (to trigger client timeouts).
    pub(crate) delay: Duration,
    /// Counts this request as in flight during `delay` (to observe concurrency).
    pub(crate) gauge: Option<Arc<Gauge>>,
}

/// Counts requests in flight (across servers) and remembers the maximum.
#[derive(Debug, Default)]
pub(crate) struct Gauge {
    current: Mutex<(usize, usize)>,
}

impl Gauge {
    pub(crate) fn max(&self) -> usize {
        self.current.lock().unwrap().1
    }
    fn enter(&self) {
        let mut c = self.current.lock().unwrap();
        c.0 += 1;
        c.1 = c.1.max(c.0);
    }
    fn leave(&self) {
        self.current.lock().unwrap().0 -= 1;
    }
}

impl Reply {
    pub(crate) fn new(status: u16, body: impl Into<Bytes>) -> Reply {
        Reply {
            status,
            headers: Vec::new(),
            chunks: vec![body.into()],
            delay: Duration::ZERO,
            gauge: None,
        }
    }
    pub(crate) fn ok(body: impl Into<Bytes>) -> Reply {
        Reply::new(200, body)
    }
    pub(crate) fn chunked(status: u16, chunks: Vec<Bytes>) -> Reply {
        Reply {
            status,
            headers: Vec::new(),
            chunks,
            delay: Duration::ZERO,
            gauge: None,
        }
    }
    pub(crate) fn delayed(mut self, delay: Duration) -> Reply {
        self.delay = delay;
        self
    }
    pub(crate) fn gauged(mut self, gauge: &Arc<Gauge>, delay: Duration) -> Reply {
        self.gauge = Some(Arc::clone(gauge));
        self.delay = delay;
        self
    }
    pub(crate) fn header(mut self, k: &str, v: impl ToString) -> Reply {
        self.headers.push((k.to_owned(), v.to_string()));
        self
    }
}

type Handler = Box<dyn FnMut(&Request) -> Reply + Send>;

struct State {
    handler: Handler,
    requests: Vec<Request>,
}

/// One scripted server. Dropping it stops accepting connections.
pub(crate) struct MockServer {
    pub(crate) url: String,
    state: Arc<Mutex<State>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for MockServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl MockServer {
    pub(crate) async fn start(
        handler: impl FnMut(&Request) -> Reply + Send + 'static,
    ) -> MockServer {
        Self::start_inner(handler, None).await
    }

    /// An https server with a fresh self-signed certificate for `127.0.0.1`.
    pub(crate) async fn start_tls(
        handler: impl FnMut(&Request) -> Reply + Send + 'static,
    ) -> MockServer {
        let ck = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into(), "localhost".into()])
            .unwrap();
        let cert = ck.cert.der().clone();
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(ck.key_pair.serialize_der().into());
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert], key)
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        Self::start_inner(handler, Some(acceptor)).await
    }

    async fn start_inner(
        handler: impl FnMut(&Request) -> Reply + Send + 'static,
        tls: Option<tokio_rustls::TlsAcceptor>,
    ) -> MockServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let scheme = if tls.is_some() { "https" } else { "http" };
        let url = format!("{scheme}://{}", listener.local_addr().unwrap());
        let state = Arc::new(Mutex::new(State {
            handler: Box::new(handler),
            requests: Vec::new(),
        }));
        let st = Arc::clone(&state);
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let st = Arc::clone(&st);
                let tls = tls.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req: hyper::Request<Incoming>| {
                        let st = Arc::clone(&st);
                        async move { Ok::<_, Infallible>(answer(&st, req).await) }
                    });
                    let http = hyper::server::conn::http1::Builder::new();
                    let _ = match tls {
                        None => http.serve_connection(TokioIo::new(stream), svc).await,
                        Some(acceptor) => {
                            let Ok(stream) = acceptor.accept(stream).await else {
                                return;
                            };
                            http.serve_connection(TokioIo::new(stream), svc).await
                        }
                    };
                });
            }
        });
        MockServer { url, state, task }
    }

    pub(crate) fn requests(&self) -> Vec<Request> {
        self.state.lock().unwrap().requests.clone()
    }

    pub(crate) fn count(&self) -> usize {
        self.state.lock().unwrap().requests.len()
    }

    /// `host:port`, as an `ARVADOS_API_HOST`.
    pub(crate) fn host(&self) -> &str {
        self.url.split_once("://").map_or(&self.url, |(_, h)| h)
    }

    pub(crate) fn set_handler(&self, handler: impl FnMut(&Request) -> Reply + Send + 'static) {
        self.state.lock().unwrap().handler = Box::new(handler);
    }
}

async fn answer(
    st: &Arc<Mutex<State>>,
    req: hyper::Request<Incoming>,
) -> hyper::Response<BoxBody<Bytes, Infallible>> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let request = Request {
        method: parts.method.to_string(),
        path: parts
            .uri
            .path_and_query()
            .map(|p| p.to_string())
            .unwrap_or_default(),
        headers: parts.headers,
        body,
    };
    let reply = {
        let mut s = st.lock().unwrap();
        s.requests.push(request.clone());
        (s.handler)(&request)
    };
    if let Some(g) = &reply.gauge {
        g.enter();
    }
    if !reply.delay.is_zero() {
        tokio::time::sleep(reply.delay).await;
    }
    if let Some(g) = &reply.gauge {
        g.leave();
    }
    let mut resp = hyper::Response::builder().status(reply.status);
    for (k, v) in &reply.headers {
        resp = resp.header(k, v);
    }
    let body: BoxBody<Bytes, Infallible> = if reply.chunks.len() <= 1 {
        Full::new(reply.chunks.into_iter().next().unwrap_or_default()).boxed()
    } else {
        let stream = futures::stream::unfold(
            (reply.chunks.into_iter(), true),
            |(mut it, first)| async move {
                let c = it.next()?;
                if !first {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Some((Ok::<_, Infallible>(Frame::data(c)), (it, false)))
            },
        );
        BodyExt::boxed(StreamBody::new(stream))
    };
    resp.body(body).unwrap()
}

/// An in-memory keepstore: PUT stores (checking the MD5 as keepstore does, §5.4) and
/// answers `hash+size` signed with a fake `+A` hint; GET/HEAD serve stored blocks.
pub(crate) fn keepstore() -> impl FnMut(&Request) -> Reply + Send + 'static {
    let mut blocks: HashMap<String, Bytes> = HashMap::new();
    move |req| {
        let path = req.path.trim_start_matches('/');
        let hash = path.split('+').next().unwrap_or("").to_owned();
        match req.method.as_str() {
            "PUT" => {
                let got = BlockHash::of(&req.body).to_hex();
                if got != hash {
                    return Reply::new(
                        400,
                        format!("content hash {got} did not match specified locator {hash}\n"),
                    );
                }
                blocks.insert(hash.clone(), req.body.clone());
                Reply::ok(format!(
                    "{hash}+{}+A{}@7fffffff\n",
                    req.body.len(),
                    "f".repeat(40)
                ))
                .header("X-Keep-Replicas-Stored", 1)
            }
            "GET" | "HEAD" => match blocks.get(&hash) {
                Some(b) => Reply::ok(b.clone()),
                None => Reply::new(404, "file does not exist\n"),
            },
            _ => Reply::new(400, "Bad Request\n"),
        }
    }
}

/// `n` servers with uuids `zzzzz-bi6l4-00000000000000<i>` (hex digit), each answering
/// with `handler(i)`.
/// The uuid of mock service `i` (what [`servers`] gives it).
pub(crate) fn uuid(i: usize) -> String {
    format!("zzzzz-bi6l4-{i:015x}")
}

pub(crate) async fn servers<H>(
    n: usize,
    mut handler: impl FnMut(usize) -> H,
) -> (Vec<MockServer>, Vec<KeepService>)
where
    H: FnMut(&Request) -> Reply + Send + 'static,
{
    let mut mocks = Vec::new();
    let mut services = Vec::new();
    for i in 0..n {
        let m = MockServer::start(handler(i)).await;
        services.push(KeepService {
            uuid: uuid(i),
            url: m.url.clone(),
            service_type: ServiceType::Disk,
            read_only: false,
        });
        mocks.push(m);
    }
    (mocks, services)
}
