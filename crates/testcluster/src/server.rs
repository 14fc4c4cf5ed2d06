//! HTTP plumbing shared by every service: a hand-written hyper 1 accept loop
//! (HTTP/1.1 keep-alive, `Expect: 100-continue` via hyper, TCP_NODELAY, optional TLS),
//! stop/start on the same port, and the one middleware layer that applies faults and
//! writes the request log (style.md B5).

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::{Body as HttpBody, Frame, SizeHint};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};

use crate::faults::{Faults, StatusDecision};
use crate::reqlog::{RequestLog, RequestRecord};

/// Error type of request and response bodies.
pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// A response body.
pub(crate) type Body = UnsyncBoxBody<Bytes, BoxError>;
/// A request body (from the network or built in-process by the proxy).
pub(crate) type ReqBody = UnsyncBoxBody<Bytes, BoxError>;
/// The future a handler returns.
pub(crate) type HandlerFuture = Pin<Box<dyn Future<Output = Response<Body>> + Send>>;
/// A service's request handler, free of faults and logging.
pub(crate) type Handler = Arc<dyn Fn(Request<ReqBody>) -> HandlerFuture + Send + Sync>;

/// Set by handlers on a response: how many request-body bytes they read.
#[derive(Clone, Copy)]
pub(crate) struct RequestBytes(pub(crate) u64);

/// A body with the given bytes.
pub(crate) fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).map_err(|e| match e {}).boxed_unsync()
}

/// An empty body.
pub(crate) fn empty() -> Body {
    Empty::new().map_err(|e| match e {}).boxed_unsync()
}

/// A plain-text response. Keepstore sets no Content-Type on error bodies (§5.10), so
/// Go's server sniffs one: `text/plain; charset=utf-8` for these ASCII messages.
pub(crate) fn text(status: StatusCode, body: &str) -> Response<Body> {
    let mut r = Response::new(full(body.to_owned()));
    *r.status_mut() = status;
    if !body.is_empty() {
        r.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("text/plain; charset=utf-8"),
        );
    }
    r
}

/// One service (keepstore, proxy, controller or admin endpoint) with its listener.
pub(crate) struct Service {
    pub(crate) name: String,
    pub(crate) addr: SocketAddr,
    tls: Option<tokio_rustls::TlsAcceptor>,
    handler: Handler,
    pub(crate) faults: Arc<Faults>,
    log: Arc<RequestLog>,
    /// Whether to log requests (the admin endpoint is not logged).
    logged: bool,
    running: std::sync::Mutex<Option<JoinHandle<()>>>,
    up: std::sync::atomic::AtomicBool,
}

impl Service {
    /// Binds `127.0.0.1:0` and returns the service, not yet serving.
    pub(crate) async fn bind(
        name: String,
        tls: Option<tokio_rustls::TlsAcceptor>,
        handler: Handler,
        faults: Arc<Faults>,
        log: Arc<RequestLog>,
        logged: bool,
    ) -> anyhow::Result<(Arc<Service>, TcpListener)> {
        Self::bind_addr(
            ([127, 0, 0, 1], 0).into(),
            name,
            tls,
            handler,
            faults,
            log,
            logged,
        )
        .await
    }

    /// Binds `addr` and returns the service, not yet serving.
    pub(crate) async fn bind_addr(
        addr: SocketAddr,
        name: String,
        tls: Option<tokio_rustls::TlsAcceptor>,
        handler: Handler,
        faults: Arc<Faults>,
        log: Arc<RequestLog>,
        logged: bool,
    ) -> anyhow::Result<(Arc<Service>, TcpListener)> {
        let listener = TcpListener::bind(addr).await?;
        Self::from_listener(listener, name, tls, handler, faults, log, logged)
    }

    /// Wraps an already-bound listener (the controller must know its own address
    /// before its handler exists).
    pub(crate) fn from_listener(
        listener: TcpListener,
        name: String,
        tls: Option<tokio_rustls::TlsAcceptor>,
        handler: Handler,
        faults: Arc<Faults>,
        log: Arc<RequestLog>,
        logged: bool,
    ) -> anyhow::Result<(Arc<Service>, TcpListener)> {
        let addr = listener.local_addr()?;
        Ok((
            Arc::new(Service {
                name,
                addr,
                tls,
                handler,
                faults,
                log,
                logged,
                running: std::sync::Mutex::new(None),
                up: false.into(),
            }),
            listener,
        ))
    }

    /// Whether the listener is open.
    pub(crate) fn is_up(&self) -> bool {
        self.up.load(Ordering::SeqCst)
    }

    /// Starts serving on an already-bound listener.
    pub(crate) async fn serve(self: &Arc<Self>, listener: TcpListener) {
        let me = Arc::clone(self);
        let task = tokio::spawn(async move { me.accept_loop(listener).await });
        *self.running.lock().unwrap_or_else(|e| e.into_inner()) = Some(task);
        self.up.store(true, Ordering::SeqCst);
    }

    /// Re-binds the same port (SO_REUSEADDR is set by tokio) and serves again.
    pub(crate) async fn start(self: &Arc<Self>) -> anyhow::Result<()> {
        if self.is_up() {
            return Ok(());
        }
        let mut tries = 0;
        let listener = loop {
            match TcpListener::bind(self.addr).await {
                Ok(l) => break l,
                Err(e) if tries < 50 => {
                    tries += 1;
                    tracing::debug!(service = %self.name, error = %e, "rebind failed, retrying");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => return Err(e.into()),
            }
        };
        self.serve(listener).await;
        Ok(())
    }

    /// Closes the listener and every open connection: clients then see
    /// "connection refused" (new connections) or a reset (pooled ones).
    pub(crate) async fn stop(&self) {
        self.up.store(false, Ordering::SeqCst);
        let task = self
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(task) = task {
            task.abort();
            let _ = task.await;
        }
    }

    /// Aborts serving without waiting (for `Drop`).
    pub(crate) fn abort(&self) {
        self.up.store(false, Ordering::SeqCst);
        if let Some(task) = self
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            task.abort();
        }
    }

    async fn accept_loop(self: Arc<Self>, listener: TcpListener) {
        // Dropping this JoinSet (when the task is aborted) aborts every connection.
        let mut conns = JoinSet::new();
        loop {
            tokio::select! {
                accepted = listener.accept() => {
                    let Ok((stream, _)) = accepted else { continue };
                    let _ = stream.set_nodelay(true);
                    let me = Arc::clone(&self);
                    conns.spawn(async move { me.serve_conn(stream).await });
                }
                Some(_) = conns.join_next(), if !conns.is_empty() => {}
            }
        }
    }

    async fn serve_conn(self: Arc<Self>, stream: tokio::net::TcpStream) {
        let me = Arc::clone(&self);
        let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
            let me = Arc::clone(&me);
            async move {
                let req = req.map(|b| b.map_err(BoxError::from).boxed_unsync());
                Ok::<_, Infallible>(me.call(req).await)
            }
        });
        let builder = {
            let mut b = hyper::server::conn::http1::Builder::new();
            b.keep_alive(true);
            b
        };
        match &self.tls {
            None => {
                let _ = builder.serve_connection(TokioIo::new(stream), svc).await;
            }
            Some(acc) => {
                if let Ok(tls) = acc.accept(stream).await {
                    let _ = builder.serve_connection(TokioIo::new(tls), svc).await;
                }
            }
        }
    }

    /// Handles one request with faults and logging: what a client on the wire sees.
    /// The proxy calls this in-process to reach keepstores.
    pub(crate) async fn call(&self, req: Request<ReqBody>) -> Response<Body> {
        let method = req.method().clone();
        let path = crate::reqlog::loggable_path(req.uri());
        let token = crate::reqlog::token_digest(&req);
        let faults = Arc::clone(&self.faults);
        let in_flight = faults.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        let _guard = InFlight(Arc::clone(&faults));
        let plan = faults.snapshot();

        let mut resp = if plan.max_concurrent.is_some_and(|m| in_flight > m) {
            // keepstore's request limiter answers 503 with an empty body (§5.10).
            let mut r = Response::new(empty());
            *r.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
            r
        } else {
            if !plan.latency.is_zero() {
                tokio::time::sleep(plan.latency).await;
            }
            // A slow link: the handler reads the upload at the limited rate.
            let req = match plan.bandwidth {
                Some(bps) => req.map(|b| Paced::wrap(b, bps, Arc::clone(&faults.uplink))),
                None => req,
            };
            match faults.decide_status(&method) {
                StatusDecision::Pass => (self.handler)(req).await,
                StatusDecision::Fail(code) => {
                    let status =
                        StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                    let reason = status.canonical_reason().unwrap_or("error");
                    text(status, &format!("{reason}\n"))
                }
            }
        };
        let req_bytes = resp.extensions().get::<RequestBytes>().map_or(0, |b| b.0);
        let status = resp.status().as_u16();
        let record = RequestRecord::new(self.name.clone(), method.to_string(), path, status, token);
        let upload = method == http::Method::PUT || method == http::Method::POST;
        let log = self.logged.then(|| Arc::clone(&self.log));
        let mut body = std::mem::replace(resp.body_mut(), empty());
        if let Some(bps) = plan.bandwidth {
            body = Paced::wrap(body, bps, Arc::clone(&faults.downlink));
        }
        *resp.body_mut() = LoggedBody {
            inner: body,
            sent: 0,
            fixed: upload.then_some(req_bytes),
            record: Some(record),
            log,
        }
        .boxed_unsync();
        resp
    }
}

struct InFlight(Arc<Faults>);
impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Counts the bytes sent, and writes the log record when the body is finished or
/// dropped.
struct LoggedBody {
    inner: Body,
    sent: u64,
    fixed: Option<u64>,
    record: Option<RequestRecord>,
    log: Option<Arc<RequestLog>>,
}

impl LoggedBody {
    fn finish(&mut self) {
        if let (Some(mut rec), Some(log)) = (self.record.take(), self.log.as_ref()) {
            rec.bytes = self.fixed.unwrap_or(self.sent);
            log.push(rec);
        }
    }
}

impl HttpBody for LoggedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(d) = frame.data_ref() {
                    self.sent += d.len() as u64;
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(None) => {
                self.finish();
                Poll::Ready(None)
            }
            other => other,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A body that moves through a `bps` link shared with the service's other requests,
/// in pieces of about 1/20 s: a slow link, in either direction (a request body paced
/// this way is read slowly, so the client's upload really crawls, byte after byte).
struct Paced {
    inner: Body,
    bps: u64,
    link: Arc<crate::faults::Link>,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
    /// Data not yet released, and the piece waiting for its slot.
    rest: Option<Bytes>,
    ready: Option<Bytes>,
}

impl Paced {
    fn wrap(inner: Body, bps: u64, link: Arc<crate::faults::Link>) -> Body {
        Paced {
            inner,
            bps: bps.max(1),
            link,
            sleep: None,
            rest: None,
            ready: None,
        }
        .boxed_unsync()
    }
}

impl HttpBody for Paced {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        loop {
            // A piece waits for its time slot before it is released.
            if let Some(s) = self.sleep.as_mut() {
                if s.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                self.sleep = None;
                if let Some(piece) = self.ready.take() {
                    return Poll::Ready(Some(Ok(Frame::data(piece))));
                }
            }
            if let Some(mut rest) = self.rest.take() {
                let max = (self.bps / 20).max(1) as usize;
                let piece = rest.split_to(rest.len().min(max));
                if !rest.is_empty() {
                    self.rest = Some(rest);
                }
                let through = self.link.book(piece.len(), self.bps);
                self.sleep = Some(Box::pin(tokio::time::sleep_until(through)));
                self.ready = Some(piece);
                continue;
            }
            return match Pin::new(&mut self.inner).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => {
                        self.rest = Some(data);
                        continue;
                    }
                    Err(frame) => Poll::Ready(Some(Ok(frame))),
                },
                other => other,
            };
        }
    }

    fn is_end_stream(&self) -> bool {
        self.rest.is_none() && self.ready.is_none() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for LoggedBody {
    fn drop(&mut self) {
        self.finish();
    }
}

/// Splits a response body so it can be sent in chunks of at most `chunk` bytes
/// (bandwidth limits then pace smoothly).
pub(crate) fn chunked(data: Bytes, chunk: usize) -> Body {
    let mut pieces = Vec::new();
    let mut rest = data;
    while rest.len() > chunk {
        pieces.push(rest.split_to(chunk));
    }
    pieces.push(rest);
    let stream = futures::stream::iter(
        pieces
            .into_iter()
            .map(|b| Ok::<_, BoxError>(Frame::data(b))),
    );
    http_body_util::StreamBody::new(stream).boxed_unsync()
}
