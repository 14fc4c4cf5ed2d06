//! The crate's one public error type, [`Error`], and its [`Result`] alias.
//!
//! Rules (style guide B3):
//! - Every variant is something a caller acts on; [`Error::is_retryable`] is the
//!   *only* place where errors are classified as temporary or permanent, and
//!   [`Error::reason`] gives a short, stable category for grouping failures in a report.
//! - No message ever contains a token, a signing key or a signed locator (`+A...`).
//!   Locators are shown as `hash+size` ([`Locator`](crate::Locator)'s `Display`), services
//!   by uuid or URL, and server bodies are sanitized (truncated, `+A`
//!   hints redacted).

use std::fmt;
use std::path::PathBuf;

use crate::locator::LocatorError;

/// `Result` with this crate's [`Error`] as the default error type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why one Keep service failed one request: an entry of the per-service list carried by
/// [`Error::NotFound`], [`Error::ReadFailed`] and [`Error::InsufficientReplicas`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceFailure {
    /// The service uuid (e.g. `zzzzz-bi6l4-000000000000000`).
    pub service: String,
    /// The HTTP status, when the service answered at all.
    pub status: Option<u16>,
    /// The [`Error::reason`] category of this service's failure.
    pub reason: &'static str,
    /// Whether retrying this service could help ([`Error::is_retryable`] of its failure).
    pub retryable: bool,
    /// A human-readable message, free of secrets.
    pub message: String,
}

impl ServiceFailure {
    /// Records `error` as the failure of `service`.
    pub fn from_error(service: &str, error: &Error) -> ServiceFailure {
        ServiceFailure {
            service: service.to_owned(),
            status: error.status(),
            reason: error.reason(),
            retryable: error.is_retryable(),
            message: error.to_string(),
        }
    }
}

impl fmt::Display for ServiceFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The message of a per-service error already names the service.
        f.write_str(&self.message)
    }
}

/// Joins failures as `; `-separated messages for an error's `Display`.
struct Failures<'a>(&'a [ServiceFailure]);

impl fmt::Display for Failures<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            // E.g. every service answered 200 but a storage class stayed unconfirmed.
            return f
                .write_str("no service reported an error, but no further service was left to try");
        }
        for (i, x) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{x}")?;
        }
        Ok(())
    }
}

/// Everything that can go wrong in this crate.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Every readable service answered 404 for the block.
    #[error("block {locator} not found on any of {} Keep services", failures.len())]
    NotFound {
        /// `hash+size` of the block (never signed).
        locator: String,
        /// Each service's answer.
        failures: Vec<ServiceFailure>,
    },

    /// Reading a block failed on every service, for mixed or temporary reasons, after
    /// all retries.
    #[error("reading block {locator} failed: {}", Failures(failures))]
    ReadFailed {
        /// `hash+size` of the block.
        locator: String,
        /// The last failure of each service that was tried.
        failures: Vec<ServiceFailure>,
    },

    /// A service sent data whose MD5 is not the block hash (corrupt storage or
    /// transfer). Another service, or another try, may have a good copy.
    #[error("{service}: data received for {locator} failed the MD5 check (got {got})")]
    ChecksumMismatch {
        /// `hash+size` of the block.
        locator: String,
        /// The service uuid that sent the data.
        service: String,
        /// The MD5 of what was received.
        got: String,
    },

    /// A service sent a different number of bytes than the size hint, or announced a
    /// `Content-Length` different from it (Go: `size hint != Content-Length`, §8.4).
    #[error("{service}: size mismatch for {locator}: expected {expected} bytes, {got}")]
    SizeMismatch {
        /// `hash+size` of the block.
        locator: String,
        /// The service uuid.
        service: String,
        /// The size hint.
        expected: u64,
        /// What the service announced or sent, in words.
        got: String,
    },

    /// A keepstore said its own stored copy of the block is damaged: 502 `checksum
    /// mismatch in stored data` (3.x) or 500 `Hash mismatch in stored data` (2.x,
    /// §5.3, §14). Another replica may be good; this one will not get better.
    #[error("{service}: the stored copy of {locator} is damaged: {message}")]
    BadStoredCopy {
        /// `hash+size` of the block.
        locator: String,
        /// The service uuid.
        service: String,
        /// The server's (sanitized) answer.
        message: String,
    },

    /// A service answered 200 for a block, then closed the connection before the whole
    /// block arrived. A real 3.x keepstore does this after the first 64 KiB when the
    /// stored copy fails its checksum (§5.3 step 5); a broken connection does it at
    /// any point.
    #[error(
        "{service}: sent {received} of {expected} bytes of {locator}, then closed the connection{}: {message}",
        if is_cut_at_chunk(*received) { " (a 3.x keepstore cuts a block off like this when its stored copy fails the checksum)" } else { "" }
    )]
    CutShort {
        /// `hash+size` of the block.
        locator: String,
        /// The service uuid.
        service: String,
        /// Bytes received.
        received: u64,
        /// Bytes announced.
        expected: u64,
        /// The underlying error chain.
        message: String,
    },

    /// A keepstore refused uploaded data because its MD5 did not match the hash in
    /// the URL: 400 `content hash ... did not match` (3.x) or 422 `Hash mismatch` (2.x,
    /// §14). The data we hold does not match its hash, so no retry can help.
    #[error("{service}: the server rejected the content of {locator}: {message}")]
    ContentRejected {
        /// `hash+size` of the block.
        locator: String,
        /// The service uuid.
        service: String,
        /// The server's (sanitized) message.
        message: String,
    },

    /// Fewer replicas were stored than wanted (§8.6). `failures` says why each
    /// service that did not store a replica failed.
    #[error(
        "stored {stored} of {wanted} wanted replicas of {locator}: {}",
        Failures(failures)
    )]
    InsufficientReplicas {
        /// `hash+size` of the block.
        locator: String,
        /// Replicas wanted.
        wanted: usize,
        /// Replicas confirmed (`X-Keep-Replicas-Stored` sums).
        stored: usize,
        /// The last failure of each service that failed.
        failures: Vec<ServiceFailure>,
    },

    /// The token or the permission signature was refused: 401/403 from the controller
    /// or keepproxy, or a keepstore's `invalid signature` / `expired signature` (3.x) or
    /// `Forbidden` / `Expired permission signature` (2.x, §3.3).
    #[error("permission denied by {target}: {message}")]
    PermissionDenied {
        /// The API host, or the service uuid(s).
        target: String,
        /// What was refused, with a hint at the fix.
        message: String,
    },

    /// An index body ended without its blank end-of-index line (§5.6): the service
    /// failed part-way through. The entries already delivered must be discarded.
    #[error(
        "{service}: incomplete index (no blank end-of-index line); entries received so far must be discarded"
    )]
    IncompleteIndex {
        /// The service uuid.
        service: String,
    },

    /// An index body broke the format rules of §5.6.
    #[error("{service}: malformed index at line {line_number}: {problem}: {line:?}")]
    MalformedIndex {
        /// The service uuid.
        service: String,
        /// 1-based line number.
        line_number: u64,
        /// The offending line, truncated to 100 characters (index lines hold no secret).
        line: String,
        /// What is wrong with it.
        problem: &'static str,
    },

    /// A service or the controller answered with an unexpected HTTP status.
    #[error("{service}: HTTP {status}: {message}")]
    Http {
        /// The service uuid, or the API host.
        service: String,
        /// The HTTP status code.
        status: u16,
        /// The response body, sanitized and truncated.
        message: String,
    },

    /// The connection could not be established (refused, DNS, reset before a response).
    #[error("{service}: connection failed: {message}")]
    Connect {
        /// The service uuid, or the API host.
        service: String,
        /// The underlying error chain.
        message: String,
    },

    /// The connection broke while a response body was being received.
    #[error("{service}: transfer failed: {message}")]
    Transfer {
        /// The service uuid, or the API host.
        service: String,
        /// The underlying error chain.
        message: String,
    },

    /// A connect, read or whole-request timeout expired.
    #[error("{service}: timed out: {message}")]
    Timeout {
        /// The service uuid, or the API host.
        service: String,
        /// Which timeout, and the underlying error.
        message: String,
    },

    /// The TLS handshake failed (certificate not trusted, wrong host name, ...).
    #[error(
        "{service}: TLS handshake failed: {message} (if the cluster uses a private CA, point SSL_CERT_FILE at it; for a test cluster with a self-signed certificate, set ARVADOS_API_HOST_INSECURE=true)"
    )]
    Tls {
        /// The service uuid, or the API host.
        service: String,
        /// The underlying error chain.
        message: String,
    },

    /// A server answered 200 with something we cannot understand (bad JSON, a field of
    /// the wrong type, a locator that does not match).
    #[error("{service}: unexpected response: {message}")]
    Protocol {
        /// The service uuid, or the API host.
        service: String,
        /// What is wrong.
        message: String,
    },

    /// There is no readable (or writable) Keep service to talk to.
    #[error("no {kind} Keep services are configured")]
    NoServices {
        /// `"readable"` or `"writable"`.
        kind: &'static str,
    },

    /// A settings file (§9.2) is missing, unreadable or malformed.
    #[error("{}{}: {message}", path.display(), line.map(|l| format!(":{l}")).unwrap_or_default())]
    Settings {
        /// The file.
        path: PathBuf,
        /// The 1-based line, when the problem is on one line.
        line: Option<usize>,
        /// What is wrong. Never contains the value of a token or key line.
        message: String,
    },

    /// Invalid configuration given by the caller (options, keep services JSON, ...).
    #[error("configuration error: {0}")]
    Config(String),

    /// A string is not a valid locator.
    #[error("invalid locator: {0}")]
    InvalidLocator(#[from] LocatorError),
}

impl Error {
    /// Whether trying again (the same request, later) could succeed.
    ///
    /// Temporary: 408, 429 and 5xx statuses except 507 and 2.x's 503 `Full`
    /// (§5.10, §14), connection failures, broken transfers, timeouts, a checksum
    /// mismatch on read (the data may have been damaged in transit), an incomplete
    /// index, and aggregate errors in which some service failed temporarily.
    /// Everything else is permanent.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Http {
                status, message, ..
            } => status_is_temporary(*status, message),
            Error::Connect { .. }
            | Error::Transfer { .. }
            | Error::CutShort { .. }
            | Error::Timeout { .. }
            | Error::ChecksumMismatch { .. }
            | Error::IncompleteIndex { .. } => true,
            Error::ReadFailed { failures, .. } | Error::InsufficientReplicas { failures, .. } => {
                failures.iter().any(|f| f.retryable)
            }
            Error::NotFound { .. }
            | Error::BadStoredCopy { .. }
            | Error::SizeMismatch { .. }
            | Error::ContentRejected { .. }
            | Error::PermissionDenied { .. }
            | Error::MalformedIndex { .. }
            | Error::Tls { .. }
            | Error::Protocol { .. }
            | Error::NoServices { .. }
            | Error::Settings { .. }
            | Error::Config(_)
            | Error::InvalidLocator(_) => false,
        }
    }

    /// A short, stable category for grouping failures in a report, e.g.
    /// `"not found"`, `"checksum mismatch"`, `"server error"`, `"timeout"`.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::NotFound { .. } => "not found",
            Error::ReadFailed { failures, .. } => {
                // Every replica that exists is damaged: say so, not just "read failed".
                let mut held = failures.iter().filter(|f| f.status != Some(404)).peekable();
                if held.peek().is_some() && held.all(|f| f.reason == "bad stored copy") {
                    "bad stored copy"
                } else {
                    "read failed"
                }
            }
            Error::BadStoredCopy { .. } => "bad stored copy",
            Error::CutShort { received, .. } if is_cut_at_chunk(*received) => "bad stored copy",
            Error::CutShort { .. } => "transfer failed",
            Error::ChecksumMismatch { .. } | Error::ContentRejected { .. } => "checksum mismatch",
            Error::SizeMismatch { .. } => "size mismatch",
            Error::InsufficientReplicas { .. } => "insufficient replicas",
            Error::PermissionDenied { .. } => "permission denied",
            Error::IncompleteIndex { .. } => "incomplete index",
            Error::MalformedIndex { .. } => "malformed index",
            Error::Http {
                status, message, ..
            } => match *status {
                404 => "not found",
                401 | 403 => "permission denied",
                s if is_full(s, message) => "storage full",
                s if status_is_temporary(s, message) => "server error",
                _ => "request rejected",
            },
            Error::Connect { .. } => "connection failed",
            Error::Transfer { .. } => "transfer failed",
            Error::Timeout { .. } => "timeout",
            Error::Tls { .. } => "tls error",
            Error::Protocol { .. } => "protocol error",
            Error::NoServices { .. } => "no services",
            Error::Settings { .. } => "settings error",
            Error::Config(_) => "configuration error",
            Error::InvalidLocator(_) => "invalid locator",
        }
    }

    /// The HTTP status behind this error, if a server answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            Error::Http { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// Whether `received` bytes is where a real 3.x keepstore cuts off a block whose
/// stored copy fails its checksum: a whole number of its 64 KiB write chunks (a
/// connection that breaks by accident almost never stops exactly there).
fn is_cut_at_chunk(received: u64) -> bool {
    received > 0 && received % 65_536 == 0
}

/// A "storage full" answer: 507 (3.x) or 503 with body `Full` (2.x, §14). Not retried
/// on the same service.
pub(crate) fn is_full(status: u16, body: &str) -> bool {
    status == 507 || (status == 503 && body.trim_start().starts_with("Full"))
}

/// 408, 429 and 5xx except "full" answers (§8.4, §8.6).
pub(crate) fn status_is_temporary(status: u16, body: &str) -> bool {
    (status == 408 || status == 429 || status >= 500) && !is_full(status, body)
}

/// Longest server message kept in an error.
const MAX_BODY_CHARS: usize = 200;

/// Prepares a server's response body for an error message: trimmed, `+A...`
/// permission hints replaced by `+A<redacted>`, any occurrence of `secret` (the
/// token) removed, and truncated to 200 characters.
pub(crate) fn sanitize_body(body: &str, secret: Option<&str>) -> String {
    let mut s = body.trim().to_owned();
    if let Some(secret) = secret.filter(|s| !s.is_empty()) {
        s = s.replace(secret, "<redacted>");
    }
    let s = redact_signatures(&s);
    let mut out: String = s.chars().take(MAX_BODY_CHARS).collect();
    if s.chars().nth(MAX_BODY_CHARS).is_some() {
        out.push('…');
    }
    out
}

/// Replaces the content of every `+A` hint (up to the next `+` or whitespace) with
/// `<redacted>`.
pub(crate) fn redact_signatures(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find("+A") {
        out.push_str(&rest[..i + 2]);
        let after = &rest[i + 2..];
        let end = after
            .find(|c: char| c == '+' || c.is_whitespace() || c == '"' || c == '\'')
            .unwrap_or(after.len());
        if end > 0 {
            out.push_str("<redacted>");
        }
        rest = &after[end..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification() {
        let http = |status, message: &str| Error::Http {
            service: "s".into(),
            status,
            message: message.into(),
        };
        for s in [408, 429, 500, 502, 503, 504] {
            assert!(http(s, "x").is_retryable(), "{s}");
            assert_eq!(http(s, "x").reason(), "server error");
        }
        for s in [400, 401, 403, 404, 405, 413, 422, 499, 507] {
            assert!(!http(s, "x").is_retryable(), "{s}");
        }
        assert!(!http(503, "Full\n").is_retryable());
        assert_eq!(http(503, "Full").reason(), "storage full");
        assert_eq!(http(507, "insufficient storage").reason(), "storage full");
        assert_eq!(http(404, "").reason(), "not found");

        let f = |e: &Error| ServiceFailure::from_error("s", e);
        let agg = Error::ReadFailed {
            locator: "x".into(),
            failures: vec![f(&http(404, "")), f(&http(502, ""))],
        };
        assert!(agg.is_retryable());
        let agg = Error::InsufficientReplicas {
            locator: "x".into(),
            wanted: 2,
            stored: 1,
            failures: vec![f(&http(507, ""))],
        };
        assert!(!agg.is_retryable());
        assert_eq!(agg.reason(), "insufficient replicas");
    }

    #[test]
    fn sanitize_redacts_and_truncates() {
        let body = "bad locator acbd18db4cc2f85cedef654fccc4a4d8+3+A89118b78732c33104a4d6231e8b5a5fa1e4301e3@7fffffff+Zfoo token=sekrit";
        let s = sanitize_body(body, Some("sekrit"));
        assert!(!s.contains("89118b") && !s.contains("sekrit"), "{s}");
        assert!(s.contains("+A<redacted>+Zfoo"), "{s}");
        let long = "x".repeat(1000);
        assert_eq!(sanitize_body(&long, None).chars().count(), 201);
    }

    #[test]
    fn settings_display_names_file_and_line() {
        let e = Error::Settings {
            path: "/x/y.conf".into(),
            line: Some(3),
            message: "m".into(),
        };
        assert_eq!(e.to_string(), "/x/y.conf:3: m");
    }
}
