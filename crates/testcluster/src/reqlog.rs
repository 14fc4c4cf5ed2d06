//! The per-cluster request log: one record per request, in memory and optionally as
//! JSON lines. Records carry a digest of the token, never the token.

use std::io::Write;
use std::path::Path;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// One request seen by a service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RequestRecord {
    /// Unix time in seconds (fractional) when the response finished.
    pub ts: f64,
    /// The keepstore or proxy UUID, or `controller`.
    pub service: String,
    /// HTTP method.
    pub method: String,
    /// Path (and query, minus `api_token`) with every `+A...` signature removed.
    pub path: String,
    /// Response status.
    pub status: u16,
    /// Body bytes received (PUT/POST) or sent (everything else).
    pub bytes: u64,
    /// First 12 hex digits of SHA-256 of the token presented, if any.
    pub token: Option<String>,
}

impl RequestRecord {
    pub(crate) fn new(
        service: String,
        method: String,
        path: String,
        status: u16,
        token: Option<String>,
    ) -> RequestRecord {
        RequestRecord {
            ts: 0.0,
            service,
            method,
            path,
            status,
            bytes: 0,
            token,
        }
    }
}

/// `sha256(token)[..12]` in hex: how the log names a token.
pub fn token_digest_of(token: &str) -> String {
    let d = Sha256::digest(token.as_bytes());
    hex::encode(d)[..12].to_owned()
}

pub(crate) fn token_digest<B>(req: &http::Request<B>) -> Option<String> {
    crate::auth::keepstore_tokens(req.headers(), req.uri().query())
        .first()
        .map(|t| token_digest_of(t))
}

/// Removes `+A...` hints (up to the next `+`, `/` or `?`).
pub(crate) fn strip_signatures(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(pos) = rest.find("+A") {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 2..];
        let end = after.find(['+', '/', '?', '&']).unwrap_or(after.len());
        rest = &after[end..];
    }
    out.push_str(rest);
    out
}

pub(crate) fn loggable_path(uri: &http::Uri) -> String {
    let mut p = uri.path().to_owned();
    if let Some(q) = uri.query() {
        let kept: Vec<&str> = q
            .split('&')
            .filter(|kv| !kv.starts_with("api_token="))
            .collect();
        if !kept.is_empty() {
            p.push('?');
            p.push_str(&kept.join("&"));
        }
    }
    strip_signatures(&p)
}

/// The cluster's request log.
pub(crate) struct RequestLog {
    records: Mutex<Vec<RequestRecord>>,
    file: Option<Mutex<std::fs::File>>,
}

impl RequestLog {
    pub(crate) fn new(path: Option<&Path>) -> anyhow::Result<RequestLog> {
        let file = match path {
            Some(p) => Some(Mutex::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)?,
            )),
            None => None,
        };
        Ok(RequestLog {
            records: Mutex::new(Vec::new()),
            file,
        })
    }

    pub(crate) fn push(&self, mut rec: RequestRecord) {
        rec.ts = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        if let Some(f) = &self.file {
            if let Ok(line) = serde_json::to_string(&rec) {
                let mut f = f.lock().unwrap_or_else(|e| e.into_inner());
                let _ = writeln!(f, "{line}");
            }
        }
        self.records
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(rec);
    }

    pub(crate) fn snapshot(&self) -> Vec<RequestRecord> {
        self.records
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub(crate) fn clear(&self) {
        self.records
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }
}
