//! Keep services: the records a client probes (§7.3), from a KeepServiceList JSON
//! document (the controller's answer or the Go tool's `-src-keep-services-json`) or
//! from `ARVADOS_KEEP_SERVICES` (§8.2). No network I/O.

use std::collections::HashSet;
use std::fmt;

use serde_json::Value;

use crate::error::{Error, Result};

/// What kind of server a Keep service is (`service_type`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ServiceType {
    /// A keepstore (`disk`): one upload per wanted replica, each counted by its
    /// `X-Keep-Replicas-Stored` (a keepstore with replicated volumes may store more).
    Disk,
    /// A keepproxy (`proxy`): fans writes out to several keepstores (§6).
    Proxy,
    /// Any other type (`blob`, `gateway:...`, ...). Treated like a proxy for writes,
    /// as Go and Python do (§6.6).
    Other(String),
}

impl ServiceType {
    /// Maps the JSON `service_type` string.
    pub fn from_name(name: &str) -> ServiceType {
        match name {
            "disk" => ServiceType::Disk,
            "proxy" => ServiceType::Proxy,
            other => ServiceType::Other(other.to_owned()),
        }
    }

    /// The JSON name.
    pub fn as_str(&self) -> &str {
        match self {
            ServiceType::Disk => "disk",
            ServiceType::Proxy => "proxy",
            ServiceType::Other(s) => s,
        }
    }
}

impl fmt::Display for ServiceType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One Keep service.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct KeepService {
    /// The uuid, e.g. `zzzzz-bi6l4-000000000000000`; it decides the probe order
    /// (§4.1: its last 15 characters when it has 27, all of it otherwise).
    pub uuid: String,
    /// `scheme://host:port`, without a trailing slash; IPv6 hosts are bracketed.
    pub url: String,
    /// The service type.
    pub service_type: ServiceType,
    /// Read-only services are never written (§8.6).
    pub read_only: bool,
}

impl KeepService {
    /// Whether this is a keepstore (`disk`); anything else may store several replicas
    /// per PUT (§6.6).
    pub fn is_disk(&self) -> bool {
        self.service_type == ServiceType::Disk
    }
}

/// One mount (volume) of a keepstore, as its `/mounts` lists it (§5.7).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Mount {
    /// The volume UUID: the same on every keepstore that mounts a shared volume, so a
    /// block stored there is one replica however many keepstores list it (this is
    /// how keep-balance tells volumes apart).
    pub uuid: String,
    /// Where the data lives (`s3://...`, `host:/path`; empty on 2.x Directory volumes).
    pub device_id: String,
    /// Whether this keepstore writes to it.
    pub allow_write: bool,
    /// Copies the volume keeps of each block (an object store may keep 2 or more);
    /// at least 1.
    pub replication: u32,
    /// Its storage classes, sorted (`default` when it names none).
    pub storage_classes: Vec<String>,
}

/// Parses a keepstore's `/mounts` answer (§5.7).
///
/// # Errors
/// [`Error::Config`] saying which item and field is wrong.
pub fn parse_mounts_json(text: &str) -> Result<Vec<Mount>> {
    let doc: Value =
        serde_json::from_str(text).map_err(|e| Error::Config(format!("/mounts: {e}")))?;
    let items = doc
        .as_array()
        .ok_or_else(|| Error::Config("/mounts: not a JSON array".into()))?;
    let mut out = Vec::with_capacity(items.len());
    for (i, m) in items.iter().enumerate() {
        let bad = |what: &str| Error::Config(format!("/mounts: item {i}: {what}"));
        let uuid = m["uuid"]
            .as_str()
            .filter(|u| !u.is_empty())
            .ok_or_else(|| bad("no \"uuid\""))?
            .to_owned();
        let replication = match &m["replication"] {
            Value::Null => 1,
            v => v
                .as_u64()
                .ok_or_else(|| bad("\"replication\" is not a number"))?
                .clamp(1, u64::from(u32::MAX)) as u32,
        };
        let mut storage_classes: Vec<String> = match &m["storage_classes"] {
            Value::Object(o) => o
                .iter()
                .filter(|(_, on)| on.as_bool() == Some(true))
                .map(|(c, _)| c.clone())
                .collect(),
            _ => Vec::new(),
        };
        if storage_classes.is_empty() {
            storage_classes.push("default".to_owned());
        }
        storage_classes.sort();
        out.push(Mount {
            uuid,
            device_id: m["device_id"].as_str().unwrap_or_default().to_owned(),
            allow_write: m["allow_write"].as_bool().unwrap_or(false),
            replication,
            storage_classes,
        });
    }
    Ok(out)
}

/// `scheme://host:port` with an IPv6 host bracketed (Python does, Go does not; an
/// unbracketed IPv6 URL would not parse).
fn base_url(ssl: bool, host: &str, port: u16) -> String {
    let scheme = if ssl { "https" } else { "http" };
    if host.contains(':') && !host.starts_with('[') {
        format!("{scheme}://[{host}]:{port}")
    } else {
        format!("{scheme}://{host}:{port}")
    }
}

/// Parses a KeepServiceList JSON document. Only `items` is used; each item needs
/// `uuid`, `service_host`, `service_port` (an integer), and optionally
/// `service_ssl_flag` (https when true), `service_type` (default `disk`) and
/// `read_only`. Later items with a URL already seen are skipped (Go `loadKeepServers`).
///
/// # Errors
/// [`Error::Config`] saying which item and field is wrong.
pub fn parse_keep_services_json(text: &str) -> Result<Vec<KeepService>> {
    let doc: Value = serde_json::from_str(text)
        .map_err(|e| Error::Config(format!("keep services JSON: {e}")))?;
    let items = doc
        .get("items")
        .ok_or_else(|| Error::Config("keep services JSON: no \"items\" field".into()))?
        .as_array()
        .ok_or_else(|| Error::Config("keep services JSON: \"items\" is not an array".into()))?;
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let bad = |what: String| Error::Config(format!("keep services JSON: items[{i}]: {what}"));
        let string = |field: &str| -> Result<String> {
            match item.get(field) {
                Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
                Some(Value::String(_)) => Err(bad(format!("\"{field}\" is empty"))),
                Some(_) => Err(bad(format!("\"{field}\" is not a string"))),
                None => Err(bad(format!("\"{field}\" is missing"))),
            }
        };
        let flag = |field: &str| -> Result<bool> {
            match item.get(field) {
                None | Some(Value::Null) => Ok(false),
                Some(Value::Bool(b)) => Ok(*b),
                Some(_) => Err(bad(format!("\"{field}\" is not a boolean"))),
            }
        };
        let uuid = string("uuid")?;
        let host = string("service_host")?;
        let port = match item.get("service_port") {
            Some(Value::Number(n)) => n
                .as_u64()
                .and_then(|p| u16::try_from(p).ok())
                .ok_or_else(|| bad(format!("\"service_port\" {n} is not a port number")))?,
            Some(_) => return Err(bad("\"service_port\" is not an integer".into())),
            None => return Err(bad("\"service_port\" is missing".into())),
        };
        let service_type = match item.get("service_type") {
            None | Some(Value::Null) => ServiceType::Disk,
            Some(Value::String(s)) => ServiceType::from_name(s),
            Some(_) => return Err(bad("\"service_type\" is not a string".into())),
        };
        let url = base_url(flag("service_ssl_flag")?, &host, port);
        if !seen.insert(url.clone()) {
            continue;
        }
        out.push(KeepService {
            uuid,
            url,
            service_type,
            read_only: flag("read_only")?,
        });
    }
    Ok(out)
}

/// Loads a KeepServiceList: `arg` starting with `{` (after whitespace) is the JSON
/// itself, anything else is a file path (the Go tool's `-src-keep-services-json`).
///
/// # Errors
/// [`Error::Config`] when the file cannot be read or the JSON is invalid.
pub fn load_keep_services_json(arg: &str) -> Result<Vec<KeepService>> {
    if arg.trim_start().starts_with('{') {
        return parse_keep_services_json(arg);
    }
    let text = std::fs::read_to_string(arg)
        .map_err(|e| Error::Config(format!("reading keep services JSON file {arg}: {e}")))?;
    parse_keep_services_json(&text)
}

/// Services from an `ARVADOS_KEEP_SERVICES` value (§8.2): URLs separated by
/// whitespace, each absolute (`scheme://host...`), trailing `/` trimmed, uuids
/// `00000-bi6l4-%015d` by position, every entry a proxy (so `X-Keep-Replicas-Stored`
/// is trusted and one upload runs at a time). Duplicates are skipped.
///
/// # Errors
/// [`Error::Config`] for an entry that is not an absolute http(s) URL (Python raises
/// too; Go logs and skips).
pub fn from_keep_services_env(list: &str) -> Result<Vec<KeepService>> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for (i, item) in list.split_whitespace().enumerate() {
        let url = item.trim_end_matches('/');
        let ok = url.split_once("://").is_some_and(|(scheme, rest)| {
            (scheme == "http" || scheme == "https") && !rest.is_empty() && !rest.starts_with('/')
        });
        if !ok {
            return Err(Error::Config(format!(
                "ARVADOS_KEEP_SERVICES entry {} is not an absolute http(s) URL: {item:?}",
                i + 1
            )));
        }
        if !seen.insert(url.to_owned()) {
            continue;
        }
        out.push(KeepService {
            uuid: format!("00000-bi6l4-{i:015}"),
            url: url.to_owned(),
            service_type: ServiceType::Proxy,
            read_only: false,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIST: &str = r#"{"kind":"arvados#keepServiceList","items":[
        {"uuid":"zzzzz-bi6l4-000000000000000","service_host":"keep0.example","service_port":25107,
         "service_ssl_flag":false,"service_type":"disk","read_only":false,"href":"/x"},
        {"uuid":"zzzzz-bi6l4-000000000000001","service_host":"::1","service_port":443,
         "service_ssl_flag":true,"service_type":"proxy","read_only":true},
        {"uuid":"zzzzz-bi6l4-000000000000002","service_host":"keep0.example","service_port":25107},
        {"uuid":"zzzzz-bi6l4-000000000000003","service_host":"b","service_port":1,"service_type":"blob"}
    ],"items_available":4}"#;

    #[test]
    fn parses_list() {
        let s = parse_keep_services_json(LIST).unwrap();
        assert_eq!(s.len(), 3, "duplicate URL skipped");
        assert_eq!(s[0].url, "http://keep0.example:25107");
        assert!(s[0].is_disk() && !s[0].read_only);
        assert_eq!(s[1].url, "https://[::1]:443");
        assert_eq!(s[1].service_type, ServiceType::Proxy);
        assert!(s[1].read_only);
        assert_eq!(s[2].service_type, ServiceType::Other("blob".into()));
        assert_eq!(s[2].uuid, "zzzzz-bi6l4-000000000000003");
        assert_eq!(load_keep_services_json(LIST).unwrap(), s);
    }

    #[test]
    fn errors_say_what_is_wrong() {
        let e = parse_keep_services_json(
            r#"{"items":[{"uuid":"u","service_host":"h","service_port":"25107"}]}"#,
        )
        .unwrap_err();
        assert!(
            e.to_string()
                .contains("items[0]: \"service_port\" is not an integer"),
            "{e}"
        );
        let e =
            parse_keep_services_json(r#"{"items":[{"uuid":"u","service_port":1}]}"#).unwrap_err();
        assert!(e.to_string().contains("\"service_host\" is missing"), "{e}");
        assert!(
            parse_keep_services_json("{}")
                .unwrap_err()
                .to_string()
                .contains("items")
        );
        assert!(parse_keep_services_json("not json").is_err());
        let e = load_keep_services_json("/nonexistent/file.json").unwrap_err();
        assert!(e.to_string().contains("/nonexistent/file.json"), "{e}");
    }

    /// What 3.2.1 and 2.7.4 keepstores answer (2.x adds its driver parameters).
    #[test]
    fn mounts() {
        let m = parse_mounts_json(
            r#"[{"uuid":"zzzzz-nyw5e-000000000000000","device_id":"vm:/v0","allow_write":true,
                 "allow_trash":true,"replication":2,"storage_classes":{"default":true}},
                {"uuid":"zzzzz-nyw5e-000000000000001","device_id":"","allow_write":false,
                 "allow_trash":false,"replication":1,"storage_classes":{"archive":true,"hot":false},
                 "Volume":{"Root":"/v1","Serialize":false}},
                {"uuid":"zzzzz-nyw5e-000000000000002"}]"#,
        )
        .unwrap();
        assert_eq!(m.len(), 3);
        assert_eq!(m[0].replication, 2);
        assert!(m[0].allow_write);
        assert_eq!(m[0].storage_classes, ["default"]);
        assert_eq!(m[1].storage_classes, ["archive"]);
        assert!(!m[1].allow_write);
        assert_eq!(
            (m[2].replication, &m[2].storage_classes[..]),
            (1, &["default".to_string()][..])
        );
        assert!(parse_mounts_json("{}").is_err());
        assert!(parse_mounts_json(r#"[{"replication":1}]"#).is_err());
    }

    #[test]
    fn env_list() {
        let s = from_keep_services_env("  http://a:1/ https://b:2\n\thttp://a:1 ").unwrap();
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].url, "http://a:1");
        assert_eq!(s[0].uuid, "00000-bi6l4-000000000000000");
        assert_eq!(s[1].url, "https://b:2");
        assert_eq!(s[1].uuid, "00000-bi6l4-000000000000001");
        assert!(
            s.iter()
                .all(|x| x.service_type == ServiceType::Proxy && !x.read_only)
        );
        assert!(from_keep_services_env("keep.example:25107").is_err());
        assert!(from_keep_services_env("").unwrap().is_empty());
    }
}
