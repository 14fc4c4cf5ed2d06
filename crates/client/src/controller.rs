//! The few controller (API server) calls a Keep client needs (§7): the discovery
//! document, the exported cluster config, and the Keep service lists.
//!
//! The API is always reached over https (§7.1): `ARVADOS_API_HOST` has no scheme, and
//! `ARVADOS_API_HOST_INSECURE` only turns off certificate verification.

use std::time::Duration;

use serde_json::Value;

use crate::error::{Error, Result, sanitize_body};
use crate::keep::ClientOptions;
use crate::retry::RetryConfig;
use crate::services::{KeepService, parse_keep_services_json};
use crate::signing::Token;
use crate::tls::{http_client, transport_error};

/// Values from the discovery document that Keep clients use (§7.2).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Discovery {
    /// `defaultCollectionReplication`: replicas to write by default.
    pub default_collection_replication: Option<u32>,
    /// `blobSignatureTtl` (seconds): the TTL that goes into signatures (§3.1).
    pub blob_signature_ttl: Option<Duration>,
    /// `uuidPrefix`: the cluster id.
    pub uuid_prefix: Option<String>,
}

/// Values from `/arvados/v1/config` that Keep clients use (§7.4).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterConfig {
    /// `ClusterID`.
    pub cluster_id: Option<String>,
    /// Names of `StorageClasses` with `Default: true`, sorted.
    pub default_storage_classes: Vec<String>,
    /// `Collections.BlobSigningTTL`, parsed from its Go duration string (`"336h"`).
    pub blob_signing_ttl: Option<Duration>,
    /// `Collections.DefaultReplication`.
    pub default_replication: Option<u32>,
}

/// A client for one cluster's controller.
#[derive(Debug, Clone)]
pub struct Controller {
    pub(crate) host: String,
    pub(crate) token: Option<Token>,
    pub(crate) http: reqwest::Client,
    pub(crate) retry: RetryConfig,
    pub(crate) timeout: std::time::Duration,
}

impl Controller {
    /// A client for `https://<api_host>/` (`host` or `host:port`; a scheme, if given,
    /// must be `https://`). `options.insecure` turns off certificate verification.
    /// `token` is only needed for [`Controller::list_services`].
    ///
    /// # Errors
    /// [`Error::Config`] for an `http://` or otherwise invalid host, or when the TLS
    /// setup fails.
    pub fn new(
        api_host: &str,
        token: Option<Token>,
        options: &ClientOptions,
    ) -> Result<Controller> {
        let http = http_client(&options.http_settings())?;
        Self::with_http(api_host, token, options, http)
    }

    /// Like [`Controller::new`], sharing an existing connection pool.
    pub(crate) fn with_http(
        api_host: &str,
        token: Option<Token>,
        options: &ClientOptions,
        http: reqwest::Client,
    ) -> Result<Controller> {
        let host = api_host.trim().trim_end_matches('/');
        let host = match host.split_once("://") {
            Some(("https", rest)) => rest,
            Some(_) => {
                return Err(Error::Config(format!(
                    "ARVADOS_API_HOST must be host[:port]; the API is always https (got {api_host:?})"
                )));
            }
            None => host,
        };
        if host.is_empty() || host.contains('/') || host.contains(char::is_whitespace) {
            return Err(Error::Config(format!(
                "ARVADOS_API_HOST must be host[:port] (got {api_host:?})"
            )));
        }
        Ok(Controller {
            host: host.to_owned(),
            token,
            http,
            retry: options.retry,
            timeout: options.api_timeout,
        })
    }

    /// The API host (`host[:port]`), as shown in errors.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// GETs `path` and returns the JSON, or `None` on 404 when `allow_404`. Temporary
    /// failures (5xx, network, timeouts) are retried per the client's [`RetryConfig`].
    async fn get_json(&self, path: &str, auth: bool, allow_404: bool) -> Result<Option<Value>> {
        let mut backoff = self.retry.backoff();
        let attempts = self.retry.attempts();
        let mut attempt = 1;
        loop {
            match self.get_json_once(path, auth, allow_404).await {
                Err(e) if e.is_retryable() && attempt < attempts => {
                    let delay = backoff.next_delay();
                    tracing::debug!(api = %self.host, path, attempt, attempts, ?delay, error = %e, "retrying API request");
                    tokio::time::sleep(delay).await;
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    async fn get_json_once(
        &self,
        path: &str,
        auth: bool,
        allow_404: bool,
    ) -> Result<Option<Value>> {
        let resp = self
            .request(path, auth)
            .send()
            .await
            .map_err(|e| transport_error(&self.host, e, false))?;
        let status = resp.status().as_u16();
        let body = resp
            .bytes()
            .await
            .map_err(|e| transport_error(&self.host, e, true))?;
        if status == 404 && allow_404 {
            return Ok(None);
        }
        if status != 200 {
            return Err(self.status_error(
                path,
                status,
                &body,
                "is ARVADOS_API_TOKEN valid for this cluster?",
            ));
        }
        serde_json::from_slice(&body)
            .map(Some)
            .map_err(|e| Error::Protocol {
                service: self.host.clone(),
                message: format!("GET {path}: invalid JSON: {e}"),
            })
    }

    /// A GET of `path` that asks for JSON, with the token when `auth`.
    pub(crate) fn request(&self, path: &str, auth: bool) -> reqwest::RequestBuilder {
        let mut req = self
            .http
            .get(format!("https://{}{path}", self.host))
            .timeout(self.timeout)
            .header("Accept", "application/json");
        if auth {
            if let Some(t) = &self.token {
                req = req.bearer_auth(t.expose());
            }
        }
        req
    }

    /// The error for a GET of `path` answered `status` (not 200) with `body`;
    /// `hint` is added to a refusal (401, 403).
    pub(crate) fn status_error(&self, path: &str, status: u16, body: &[u8], hint: &str) -> Error {
        let text = api_error_text(body, self.token.as_ref().map(Token::expose));
        if status == 401 || status == 403 {
            Error::PermissionDenied {
                target: self.host.clone(),
                message: format!("GET {path}: HTTP {status}: {text} ({hint})"),
            }
        } else {
            Error::Http {
                service: self.host.clone(),
                status,
                message: format!("GET {path}: {text}"),
            }
        }
    }

    fn protocol(&self, message: String) -> Error {
        Error::Protocol {
            service: self.host.clone(),
            message,
        }
    }

    /// Fetches the discovery document (`/discovery/v1/apis/arvados/v1/rest`).
    ///
    /// # Errors
    /// Transport and HTTP errors; [`Error::Protocol`] naming the field when
    /// `defaultCollectionReplication` or `blobSignatureTtl` is present but not a
    /// non-negative JSON integer (keep-rsync asserts numbers, §7.2).
    pub async fn discovery(&self) -> Result<Discovery> {
        let doc = self
            .get_json("/discovery/v1/apis/arvados/v1/rest", false, false)
            .await?
            .unwrap_or_default();
        let number = |field: &str| -> Result<Option<u64>> {
            match doc.get(field) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::Number(n)) => n.as_u64().map(Some).ok_or_else(|| {
                    self.protocol(format!(
                        "discovery document: {field} is {n}, not a non-negative integer"
                    ))
                }),
                Some(other) => Err(self.protocol(format!(
                    "discovery document: {field} must be a JSON number, got {}",
                    json_type(other)
                ))),
            }
        };
        let replication = number("defaultCollectionReplication")?
            .map(|n| {
                u32::try_from(n).map_err(|_| {
                    self.protocol(format!(
                        "discovery document: defaultCollectionReplication {n} is too large"
                    ))
                })
            })
            .transpose()?;
        Ok(Discovery {
            default_collection_replication: replication,
            blob_signature_ttl: number("blobSignatureTtl")?.map(Duration::from_secs),
            uuid_prefix: doc
                .get("uuidPrefix")
                .and_then(Value::as_str)
                .map(str::to_owned),
        })
    }

    /// Fetches `/arvados/v1/config`; `None` if the server does not serve it (404, as
    /// older API servers do).
    ///
    /// # Errors
    /// Transport and HTTP errors; [`Error::Protocol`] for an unparsable
    /// `BlobSigningTTL`.
    pub async fn cluster_config(&self) -> Result<Option<ClusterConfig>> {
        let Some(doc) = self.get_json("/arvados/v1/config", false, true).await? else {
            return Ok(None);
        };
        let mut classes: Vec<String> = doc
            .get("StorageClasses")
            .and_then(Value::as_object)
            .map(|m| {
                m.iter()
                    .filter(|(_, v)| v.get("Default").and_then(Value::as_bool) == Some(true))
                    .map(|(k, _)| k.clone())
                    .collect()
            })
            .unwrap_or_default();
        classes.sort();
        let collections = doc.get("Collections");
        let ttl = match collections.and_then(|c| c.get("BlobSigningTTL")) {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(parse_go_duration(s).ok_or_else(|| {
                self.protocol(format!(
                    "config: Collections.BlobSigningTTL {s:?} is not a duration"
                ))
            })?),
            // Tolerate a number of seconds too.
            Some(Value::Number(n)) => n.as_u64().map(Duration::from_secs),
            Some(other) => {
                return Err(self.protocol(format!(
                    "config: Collections.BlobSigningTTL must be a duration string, got {}",
                    json_type(other)
                )));
            }
        };
        Ok(Some(ClusterConfig {
            cluster_id: doc
                .get("ClusterID")
                .and_then(Value::as_str)
                .map(str::to_owned),
            default_storage_classes: classes,
            blob_signing_ttl: ttl,
            default_replication: collections
                .and_then(|c| c.get("DefaultReplication"))
                .and_then(Value::as_u64)
                .and_then(|n| u32::try_from(n).ok()),
        }))
    }

    /// `GET /arvados/v1/keep_services/accessible` (§7.3): the services this client
    /// should use. No token needed.
    ///
    /// # Errors
    /// Transport and HTTP errors; [`Error::Protocol`] for a malformed list.
    pub async fn accessible_services(&self) -> Result<Vec<KeepService>> {
        let doc = self
            .get_json("/arvados/v1/keep_services/accessible", true, false)
            .await?
            .unwrap_or_default();
        parse_keep_services_json(&doc.to_string()).map_err(|e| self.protocol(e.to_string()))
    }

    /// `GET /arvados/v1/keep_services` (authenticated), paging with `offset` until
    /// `items_available` items were read (Go `EachKeepService`, §7.3).
    ///
    /// # Errors
    /// Transport and HTTP errors (401/403 → [`Error::PermissionDenied`]);
    /// [`Error::Protocol`] for a malformed list.
    pub async fn list_services(&self) -> Result<Vec<KeepService>> {
        let mut items: Vec<Value> = Vec::new();
        loop {
            let path = format!("/arvados/v1/keep_services?offset={}", items.len());
            let doc = self.get_json(&path, true, false).await?.unwrap_or_default();
            let page = doc
                .get("items")
                .and_then(Value::as_array)
                .ok_or_else(|| self.protocol(format!("GET {path}: no \"items\" array")))?;
            let available = doc
                .get("items_available")
                .and_then(Value::as_u64)
                .unwrap_or(0);
            let n = page.len();
            items.extend(page.iter().cloned());
            if n == 0 || items.len() as u64 >= available {
                break;
            }
        }
        let doc = serde_json::json!({ "items": items });
        parse_keep_services_json(&doc.to_string()).map_err(|e| self.protocol(e.to_string()))
    }
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// The text of an API error body `{"errors":[...]}` (§7.6), or the sanitized body.
fn api_error_text(body: &[u8], secret: Option<&str>) -> String {
    let text = String::from_utf8_lossy(body);
    let msg = serde_json::from_str::<Value>(&text)
        .ok()
        .and_then(|v| {
            v.get("errors").and_then(Value::as_array).map(|a| {
                a.iter()
                    .map(|e| e.as_str().map_or_else(|| e.to_string(), str::to_owned))
                    .collect::<Vec<_>>()
                    .join("; ")
            })
        })
        .unwrap_or_else(|| text.into_owned());
    sanitize_body(&msg, secret)
}

/// Parses a Go `time.Duration` string such as `336h`, `1h30m`, `1.5s`, `300ms`.
pub(crate) fn parse_go_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    if s == "0" {
        return Some(Duration::ZERO);
    }
    let mut rest = s;
    let mut total = 0f64;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if num_len == 0 {
            return None;
        }
        let value: f64 = rest[..num_len].parse().ok()?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 1e-3,
            "us" | "µs" => 1e-6,
            "ns" => 1e-9,
            _ => return None,
        };
        rest = &rest[unit_len..];
        total += value * scale;
    }
    Some(Duration::from_secs_f64(total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations() {
        assert_eq!(
            parse_go_duration("336h"),
            Some(Duration::from_secs(1_209_600))
        );
        assert_eq!(parse_go_duration("1h30m"), Some(Duration::from_secs(5400)));
        assert_eq!(parse_go_duration("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_go_duration("0"), Some(Duration::ZERO));
        assert_eq!(parse_go_duration("10x"), None);
        assert_eq!(parse_go_duration(""), None);
        assert_eq!(parse_go_duration("h"), None);
    }

    #[test]
    fn host_must_be_https() {
        let o = ClientOptions::default();
        assert!(Controller::new("http://x", None, &o).is_err());
        assert!(Controller::new("a/b", None, &o).is_err());
        assert_eq!(
            Controller::new("https://x:1/", None, &o).unwrap().host(),
            "x:1"
        );
        assert_eq!(
            Controller::new("x.example", None, &o).unwrap().host(),
            "x.example"
        );
    }

    #[test]
    fn api_errors_are_sanitized() {
        let t = api_error_text(
            br#"{"errors":["bad token sekrit"],"error_token":"1+a"}"#,
            Some("sekrit"),
        );
        assert_eq!(t, "bad token <redacted>");
    }
}
