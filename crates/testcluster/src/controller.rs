//! The API server / controller endpoints Keep clients use (§7), over HTTPS, plus the
//! discovery document the Python SDK builds its client from (python-sdk-notes §4), and
//! the routes of the collections API (its rules live in `collections.rs`).

use std::sync::Arc;

use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::BodyExt as _;
use serde_json::{Map, Value, json};

use crate::collections::{self, ApiError, Caller, Policy, Store};
use crate::config::Config;
use crate::server::{Body, Handler, ReqBody, empty, full};

/// A keep service as the API lists it.
#[derive(Debug, Clone)]
pub(crate) struct ServiceEntry {
    pub(crate) uuid: String,
    pub(crate) port: u16,
    pub(crate) service_type: &'static str,
    pub(crate) read_only: bool,
}

pub(crate) struct Controller {
    pub(crate) cfg: Arc<Config>,
    pub(crate) api_host: String,
    pub(crate) services: Vec<ServiceEntry>,
    /// The collections table (`collections.rs`).
    pub(crate) collections: Store,
}

/// `Collections.DefaultTrashLifetime` of this cluster (the Arvados default, 336h).
const DEFAULT_TRASH_LIFETIME_SECS: i64 = 1_209_600;
/// `API.MaxItemsPerResponse` (the Arvados default).
const MAX_ITEMS_PER_RESPONSE: usize = 1000;

/// The collections API settings of a cluster: versioning on, a version on every
/// versionable update (`PreserveVersionIfIdle: 0s`), the cluster's key, TTL and
/// default storage classes.
pub(crate) fn collections_policy(cfg: &Config) -> Policy {
    Policy {
        cluster_id: cfg.cluster_id.clone(),
        blob_signing: cfg.blob_signing,
        signer: crate::signature::Signer {
            key: cfg.signing_key_str.as_bytes().to_vec(),
            ttl_secs: cfg.ttl.as_secs(),
            legacy: cfg.legacy_signatures,
        },
        default_storage_classes: cfg
            .storage_classes
            .iter()
            .filter(|(_, default, _)| *default)
            .map(|(n, _, _)| n.clone())
            .collect(),
        default_trash_lifetime_ns: DEFAULT_TRASH_LIFETIME_SECS * 1_000_000_000,
        collection_versioning: true,
        preserve_version_if_idle_ns: 0,
        max_items_per_response: MAX_ITEMS_PER_RESPONSE,
    }
}

const STAMP: &str = "2025-01-01T00:00:00.000000000Z";

pub(crate) fn service_json(cluster_id: &str, s: &ServiceEntry) -> Value {
    json!({
        "kind": "arvados#keepService", "etag": "", "uuid": s.uuid,
        "owner_uuid": format!("{cluster_id}-tpzed-000000000000000"),
        "created_at": STAMP, "modified_by_user_uuid": format!("{cluster_id}-tpzed-000000000000000"),
        "modified_at": STAMP, "service_host": "127.0.0.1", "service_port": s.port,
        "service_ssl_flag": false, "service_type": s.service_type, "read_only": s.read_only,
    })
}

/// The Rails `object_list` shape (§7.3).
pub(crate) fn list_json(
    items: Vec<Value>,
    available: usize,
    offset: Option<usize>,
    limit: Option<usize>,
) -> Value {
    json!({"kind": "arvados#keepServiceList", "etag": "", "self_link": "", "offset": offset,
           "limit": limit, "items": items, "items_available": available})
}

pub(crate) fn handler(c: Arc<Controller>) -> Handler {
    Arc::new(move |req| {
        let c = Arc::clone(&c);
        Box::pin(async move {
            let path = req.uri().path();
            if path == "/arvados/v1/collections" || path.starts_with("/arvados/v1/collections/") {
                let id = req.headers().get("x-request-id").cloned();
                let mut resp = c.collections_route(req).await;
                if let Some(id) = id {
                    resp.headers_mut().insert("x-request-id", id);
                }
                resp
            } else {
                c.route(req)
            }
        })
    })
}

fn json_response(status: StatusCode, v: &Value, head: bool) -> Response<Body> {
    let bytes = serde_json::to_vec_pretty(v).expect("json");
    let len = bytes.len();
    let mut r = Response::new(if head { empty() } else { full(bytes) });
    *r.status_mut() = status;
    r.headers_mut()
        .insert("content-type", HeaderValue::from_static("application/json"));
    r.headers_mut()
        .insert("content-length", HeaderValue::from(len));
    r
}

/// The §7.6 error shape.
fn error(status: StatusCode, msg: &str) -> Response<Body> {
    // `<unix time>+<8 hex digits>` (application_controller.rb `send_error`).
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let token = format!("{now}+{:08x}", rand::random::<u32>());
    json_response(
        status,
        &json!({"errors": [msg], "error_token": token}),
        false,
    )
}

/// A collections-API error in the §7.6 shape.
fn api_error(e: &ApiError) -> Response<Body> {
    error(
        StatusCode::from_u16(e.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        &e.message,
    )
}

/// `k=v&...` pairs, decoded.
fn form_pairs(s: &str) -> impl Iterator<Item = (String, String)> + '_ {
    s.split('&').filter(|kv| !kv.is_empty()).map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (
            crate::auth::percent_decode(k),
            crate::auth::percent_decode(v),
        )
    })
}

/// A request's parameters, as lib/controller's router gathers them: the query
/// string, then a form-encoded or JSON body (the JSON object also kept whole: the
/// Python SDK sends a collection's attributes at its top level).
#[derive(Default)]
struct Params {
    map: Map<String, Value>,
    json_body: Option<Map<String, Value>>,
}

/// Parameter names that are never collection attributes.
const RESERVED: &[&str] = &[
    "select",
    "ensure_unique_name",
    "replace_files",
    "replace_segments",
    "cluster_id",
    "include_trash",
    "include_old_versions",
    "_method",
    "alt",
    "api_token",
];

impl Params {
    /// Parses `query` and `body` (no I/O).
    fn parse(query: Option<&str>, content_type: &str, body: &[u8]) -> Result<Params, ApiError> {
        let mut p = Params::default();
        for (k, v) in form_pairs(query.unwrap_or("")) {
            p.map.insert(k, Value::String(v));
        }
        let trimmed = body.trim_ascii_start();
        if trimmed.is_empty() {
            return Ok(p);
        }
        if content_type.starts_with("application/x-www-form-urlencoded") {
            for (k, v) in form_pairs(&String::from_utf8_lossy(body)) {
                p.map.insert(k, Value::String(v));
            }
        } else if content_type.starts_with("application/json") || trimmed.starts_with(b"{") {
            match serde_json::from_slice::<Value>(body) {
                Ok(Value::Object(m)) => {
                    for (k, v) in &m {
                        p.map.insert(k.clone(), v.clone());
                    }
                    p.json_body = Some(m);
                }
                _ => {
                    return Err(ApiError {
                        status: 400,
                        message: "could not parse the request body as a JSON object".into(),
                    });
                }
            }
        }
        Ok(p)
    }

    fn get(&self, k: &str) -> Option<&Value> {
        self.map.get(k)
    }

    /// The collection's attributes: `collection` (an object, or JSON text in a form),
    /// else the JSON body's other keys (Rails' parameter wrapping does the same).
    fn attrs(&self) -> Result<Map<String, Value>, ApiError> {
        let no_hash = || ApiError {
            status: 422,
            message: "No collection hash provided with request".into(),
        };
        match self.map.get("collection") {
            Some(Value::Object(m)) => Ok(m.clone()),
            Some(Value::String(s)) => match serde_json::from_str(s) {
                Ok(Value::Object(m)) => Ok(m),
                _ => Err(no_hash()),
            },
            Some(_) => Err(no_hash()),
            None => Ok(self
                .json_body
                .iter()
                .flatten()
                .filter(|(k, _)| !RESERVED.contains(&k.as_str()))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()),
        }
    }
}

impl Controller {
    /// The caller behind a token the controller accepts.
    fn caller(&self, token: Option<&str>) -> Option<Caller> {
        let t = token?;
        let u = self.cfg.user_json(t)?;
        Some(Caller {
            token: t.to_owned(),
            user_uuid: u["uuid"].as_str().unwrap_or_default().to_owned(),
            is_admin: u["is_admin"].as_bool().unwrap_or(false),
        })
    }

    /// `/arvados/v1/collections[/{uuid}[/trash|/untrash]]` (`collections.rs`).
    async fn collections_route(&self, req: Request<ReqBody>) -> Response<Body> {
        let head = req.method() == Method::HEAD;
        let query = req.uri().query().map(str::to_owned);
        let path = req.uri().path().trim_end_matches('/').to_owned();
        let token = crate::auth::api_token(req.headers(), query.as_deref());
        let Some(caller) = self.caller(token.as_deref()) else {
            return error(StatusCode::UNAUTHORIZED, "Not logged in");
        };
        let content_type = req
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_ascii_lowercase();
        let override_get = req
            .headers()
            .get("x-http-method-override")
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"GET"));
        let mut method = req.method().clone();
        let Ok(body) = req.into_body().collect().await else {
            return error(StatusCode::BAD_REQUEST, "could not read the request body");
        };
        let params = match Params::parse(query.as_deref(), &content_type, &body.to_bytes()) {
            Ok(p) => p,
            Err(e) => return api_error(&e),
        };
        // A long GET arrives as a POST (googleapiclient: X-HTTP-Method-Override; Go
        // SDK: `_method=GET`).
        if method == Method::POST
            && (override_get || params.get("_method").and_then(Value::as_str) == Some("GET"))
        {
            method = Method::GET;
        }
        let rest = path["/arvados/v1/collections".len()..].trim_start_matches('/');
        let segs: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
        let store = &self.collections;
        let flag = |k: &str| collections::bool_param(params.get(k));
        let result = (|| {
            let select = collections::parse_select(params.get("select"))?;
            let select = select.as_deref();
            match (&method, segs.as_slice()) {
                (m, []) if *m == Method::GET || *m == Method::HEAD => {
                    let p = collections::parse_list_params(
                        |k| params.get(k).cloned(),
                        store.policy().max_items_per_response,
                    )?;
                    Ok(store.list(&caller, &p))
                }
                (m, []) if *m == Method::POST => store.create(
                    &caller,
                    &params.attrs()?,
                    flag("ensure_unique_name"),
                    select,
                ),
                (m, [id]) if *m == Method::GET || *m == Method::HEAD => {
                    store.get(&caller, id, flag("include_trash"), select)
                }
                (m, [id]) if *m == Method::PUT || *m == Method::PATCH => {
                    store.update(&caller, id, &params.attrs()?, select)
                }
                (m, [id]) if *m == Method::DELETE => store.trash(&caller, id, true, select),
                (m, [id, "trash"]) if *m == Method::POST => store.trash(&caller, id, false, select),
                (m, [id, "untrash"]) if *m == Method::POST => {
                    store.untrash(&caller, id, flag("ensure_unique_name"), select)
                }
                _ => Err(ApiError {
                    status: 404,
                    message: "Path not found".into(),
                }),
            }
        })();
        match result {
            Ok(v) => json_response(StatusCode::OK, &v, head),
            Err(e) => api_error(&e),
        }
    }

    fn route(&self, req: Request<ReqBody>) -> Response<Body> {
        let head = req.method() == Method::HEAD;
        let get = req.method() == Method::GET || head;
        let path = req.uri().path().trim_end_matches('/').to_owned();
        let query = req.uri().query().map(str::to_owned);
        let token = crate::auth::api_token(req.headers(), query.as_deref());
        let id = &self.cfg.cluster_id;
        let mut resp = match (get, path.as_str()) {
            (true, "/discovery/v1/apis/arvados/v1/rest") => {
                json_response(StatusCode::OK, &self.discovery(), head)
            }
            (true, "/arvados/v1/config") => {
                json_response(StatusCode::OK, &self.exported_config(), head)
            }
            (true, "/arvados/v1/keep_services/accessible") => {
                // §7.3: X-External-Client: 1 switches to proxies only.
                let external = req
                    .headers()
                    .get("x-external-client")
                    .is_some_and(|v| v == "1");
                let items: Vec<Value> = self
                    .services
                    .iter()
                    .filter(|s| (s.service_type == "proxy") == external)
                    .map(|s| service_json(id, s))
                    .collect();
                let n = items.len();
                json_response(StatusCode::OK, &list_json(items, n, None, None), head)
            }
            (true, "/arvados/v1/keep_services") => match self.auth(token.as_deref()) {
                Err(r) => r,
                Ok(()) => {
                    let q = query.as_deref();
                    let offset = crate::auth::query_value(q, "offset").and_then(|v| v.parse().ok());
                    let limit = crate::auth::query_value(q, "limit").and_then(|v| v.parse().ok());
                    let all: Vec<Value> =
                        self.services.iter().map(|s| service_json(id, s)).collect();
                    let n = all.len();
                    let items = all
                        .into_iter()
                        .skip(offset.unwrap_or(0))
                        .take(limit.unwrap_or(usize::MAX))
                        .collect();
                    json_response(
                        StatusCode::OK,
                        &list_json(
                            items,
                            n,
                            Some(offset.unwrap_or(0)),
                            Some(limit.unwrap_or(1000)),
                        ),
                        head,
                    )
                }
            },
            (true, p) if p.starts_with("/arvados/v1/keep_services/") => {
                match self.auth(token.as_deref()) {
                    Err(r) => r,
                    Ok(()) => {
                        let uuid = &p["/arvados/v1/keep_services/".len()..];
                        match self.services.iter().find(|s| s.uuid == uuid) {
                            Some(s) => json_response(StatusCode::OK, &service_json(id, s), head),
                            None => error(StatusCode::NOT_FOUND, "Path not found"),
                        }
                    }
                }
            }
            (true, "/arvados/v1/users/current") => {
                match token.as_deref().and_then(|t| self.cfg.user_json(t)) {
                    Some(u) => json_response(StatusCode::OK, &u, head),
                    None => error(StatusCode::UNAUTHORIZED, "Not logged in"),
                }
            }
            _ => error(StatusCode::NOT_FOUND, "Path not found"),
        };
        if let Some(id) = req.headers().get("x-request-id") {
            resp.headers_mut().insert("x-request-id", id.clone());
        }
        resp
    }

    fn auth(&self, token: Option<&str>) -> Result<(), Response<Body>> {
        match token {
            Some(t) if self.cfg.valid_token(t) => Ok(()),
            _ => Err(error(StatusCode::UNAUTHORIZED, "Not logged in")),
        }
    }

    fn exported_config(&self) -> Value {
        let ttl = self.cfg.ttl.as_secs();
        json!({
            "ClusterID": self.cfg.cluster_id,
            "Collections": {
                "BlobSigning": self.cfg.blob_signing,
                "BlobSigningTTL": if ttl % 3600 == 0 { format!("{}h", ttl / 3600) } else { format!("{ttl}s") },
                "DefaultReplication": self.cfg.replication,
                "DefaultTrashLifetime": "336h",
                "TrustAllContent": false,
                "CollectionVersioning": true,
                "PreserveVersionIfIdle": "0s",
                "ForwardSlashNameSubstitution": "",
                "ManagedProperties": {},
            },
            "StorageClasses": self.cfg.storage_classes.iter()
                .map(|(n, d, p)| (n.clone(), json!({"Default": d, "Priority": p})))
                .collect::<serde_json::Map<String, Value>>(),
            "Services": {"Controller": {"ExternalURL": format!("https://{}/", self.api_host)}},
            "API": {"MaxItemsPerResponse": MAX_ITEMS_PER_RESPONSE},
            "RemoteClusters": {},
            "TLS": {"Insecure": false},
        })
    }

    fn discovery(&self) -> Value {
        let root = format!("https://{}/", self.api_host);
        let method = |id: &str, path: &str, resp: &str, params: Value| {
            json!({"id": id, "path": path, "httpMethod": "GET", "description": id,
                   "parameters": params, "response": {"$ref": resp},
                   "scopes": ["https://api.arvados.org/auth/arvados"]})
        };
        let uuid_param = json!({"uuid": {"type": "string", "required": true, "location": "path",
                                          "description": "The UUID of the object."}});
        let list_params = json!({
            "filters": {"type": "array", "required": false, "location": "query", "description": "filters"},
            "where": {"type": "object", "required": false, "location": "query", "description": "where"},
            "order": {"type": "array", "required": false, "location": "query", "description": "order"},
            "select": {"type": "array", "required": false, "location": "query", "description": "select"},
            "distinct": {"type": "boolean", "required": false, "location": "query", "default": "false"},
            "limit": {"type": "integer", "required": false, "location": "query", "default": "100"},
            "offset": {"type": "integer", "required": false, "location": "query", "default": "0"},
            "count": {"type": "string", "required": false, "location": "query", "default": "exact"},
        });
        let string = json!({"type": "string"});
        let mut doc = json!({
            "kind": "discovery#restDescription",
            "discoveryVersion": "v1",
            "id": "arvados:v1",
            "name": "arvados",
            "version": "v1",
            "revision": "20250402",
            "source_version": "keep-testcluster",
            "sourceVersion": "keep-testcluster",
            "packageVersion": "3.2.0",
            "generatedAt": STAMP,
            "title": "Arvados API",
            "description": "The API to interact with Arvados (keep-testcluster).",
            "documentationLink": "https://doc.arvados.org/api/index.html",
            "defaultCollectionReplication": self.cfg.replication,
            "protocol": "rest",
            "baseUrl": format!("{root}arvados/v1/"),
            "basePath": "/arvados/v1/",
            "rootUrl": root,
            "servicePath": "arvados/v1/",
            "batchPath": "batch",
            "uuidPrefix": self.cfg.cluster_id,
            "defaultTrashLifetime": 1209600,
            "blobSignatureTtl": self.cfg.ttl.as_secs(),
            "maxRequestSize": 134217728,
            "maxItemsPerResponse": 1000,
            "dockerImageFormats": ["v2"],
            "crunchLogUpdatePeriod": 1800,
            "crunchLogUpdateSize": 33554432,
            "remoteHosts": {},
            "remoteHostsViaDNS": false,
            "websocketUrl": "",
            "workbenchUrl": "",
            "workbench2Url": "",
            "keepWebServiceUrl": "",
            "parameters": {
                "alt": {"type": "string", "description": "Data format for the response.", "default": "json",
                        "enum": ["json"], "enumDescriptions": ["Responses with Content-Type of application/json"],
                        "location": "query"},
                "fields": {"type": "string", "location": "query", "description": "Selector"},
                "key": {"type": "string", "location": "query", "description": "API key"},
                "oauth_token": {"type": "string", "location": "query", "description": "OAuth 2.0 token"},
                "prettyPrint": {"type": "boolean", "default": "true", "location": "query", "description": "pretty"},
                "quotaUser": {"type": "string", "location": "query", "description": "quota"},
                "userIp": {"type": "string", "location": "query", "description": "ip"},
            },
            "auth": {"oauth2": {"scopes": {"https://api.arvados.org/auth/arvados": {"description": "View and manage objects"}}}},
            "schemas": {
                "KeepService": {"id": "KeepService", "type": "object", "uuidPrefix": "bi6l4", "properties": {
                    "uuid": string, "etag": string, "owner_uuid": string, "service_host": string,
                    "service_port": {"type": "integer"}, "service_ssl_flag": {"type": "boolean"},
                    "service_type": string, "read_only": {"type": "boolean"},
                    "created_at": {"type": "datetime"}, "modified_at": {"type": "datetime"}}},
                "KeepServiceList": {"id": "KeepServiceList", "type": "object", "properties": {
                    "kind": {"type": "string", "default": "arvados#keepServiceList"}, "etag": string,
                    "items": {"type": "array", "items": {"$ref": "KeepService"}},
                    "items_available": {"type": "integer"}, "offset": {"type": "integer"},
                    "limit": {"type": "integer"}, "self_link": string}},
                "User": {"id": "User", "type": "object", "uuidPrefix": "tpzed", "properties": {
                    "uuid": string, "etag": string, "owner_uuid": string, "email": string,
                    "username": string, "full_name": string, "first_name": string, "last_name": string,
                    "is_active": {"type": "boolean"}, "is_admin": {"type": "boolean"}}},
                "Config": {"id": "Config", "type": "object", "properties": {}},
            },
            "resources": {
                "keep_services": {"methods": {
                    "accessible": method("arvados.keep_services.accessible", "keep_services/accessible", "KeepServiceList", json!({})),
                    "list": method("arvados.keep_services.list", "keep_services", "KeepServiceList", list_params),
                    "get": method("arvados.keep_services.get", "keep_services/{uuid}", "KeepService", uuid_param.clone()),
                }},
                "configs": {"methods": {
                    "get": {"id": "arvados.configs.get", "path": "config", "httpMethod": "GET",
                            "description": "Get the public configuration.", "parameters": {}, "response": {},
                            "scopes": ["https://api.arvados.org/auth/arvados"]},
                }},
                "users": {"methods": {
                    "current": method("arvados.users.current", "users/current", "User", json!({})),
                    "get": method("arvados.users.get", "users/{uuid}", "User", uuid_param),
                }},
            },
        });
        let (schemas, resource) = collections_discovery();
        if let Some(m) = doc["schemas"].as_object_mut() {
            m.extend(schemas);
        }
        doc["resources"]["collections"] = resource;
        doc
    }
}

/// The `collections` resource and the `Collection`/`CollectionList` schemas of the
/// discovery document, with the parameters of the real API (names, types, locations
/// and defaults as Arvados 3.x publishes them), so that googleapiclient builds
/// `api.collections().list(...)` and friends.
fn collections_discovery() -> (Map<String, Value>, Value) {
    let q = |ty: &str, desc: &str| json!({"type": ty, "required": false, "location": "query", "description": desc});
    let qd = |ty: &str, default: &str, desc: &str| {
        json!({"type": ty, "required": false, "location": "query", "default": default,
               "description": desc})
    };
    let uuid = |what: &str| {
        json!({"type": "string", "required": true, "location": "path",
               "description": format!("The UUID of the Collection to {what}.")})
    };
    let select = q(
        "array",
        "An array of names of attributes to return in the response.",
    );
    let method = |name: &str, http: &str, path: &str, resp: &str, params: Value, request: bool| {
        let mut m = json!({
            "id": format!("arvados.collections.{name}"), "path": path, "httpMethod": http,
            "description": format!("collections.{name}"), "parameters": params,
            "response": {"$ref": resp}, "scopes": ["https://api.arvados.org/auth/arvados"],
        });
        if request {
            m["request"] = json!({"required": true,
                                  "properties": {"collection": {"$ref": "Collection"}}});
        }
        m
    };
    let list_params = json!({
        "filters": q("array", "Filters to limit which objects are returned by their attributes."),
        "where": q("object", "An object to limit which objects are returned by their attributes."),
        "order": q("array", "An array of strings to set the order in which matching objects are returned."),
        "select": q("array", "An array of names of attributes to return from each matching object."),
        "distinct": qd("boolean", "false", "Return each distinct object once."),
        "limit": qd("integer", "100", "The maximum number of objects to return in the result."),
        "offset": qd("integer", "0", "Return matching objects starting from this index."),
        "count": qd("string", "exact", "\"exact\" (with items_available) or \"none\"."),
        "cluster_id": q("string", "Cluster ID of a federated cluster to return objects from"),
        "bypass_federation": qd("boolean", "false", "Only this cluster's objects."),
        "include_trash": qd("boolean", "false", "Include collections whose `is_trashed` attribute is true."),
        "include_old_versions": qd("boolean", "false", "Include past collection versions."),
    });
    let ensure_unique_name = qd(
        "boolean",
        "false",
        "If the given name is already used by this owner, adjust the name to ensure uniqueness instead of returning an error.",
    );
    let replace = q(
        "object",
        "Add, delete, and replace files (not supported by keep-testcluster).",
    );
    let methods = json!({
        "get": method("get", "GET", "collections/{uuid}", "Collection", json!({
            "uuid": uuid("return"), "select": select,
            "include_trash": qd("boolean", "false", "Show collection even if its `is_trashed` attribute is true."),
        }), false),
        "list": method("list", "GET", "collections", "CollectionList", list_params, false),
        "create": method("create", "POST", "collections", "Collection", json!({
            "select": select, "ensure_unique_name": ensure_unique_name,
            "cluster_id": q("string", "Cluster ID of a federated cluster where this object should be created."),
            "replace_files": replace, "replace_segments": replace,
        }), true),
        "update": method("update", "PUT", "collections/{uuid}", "Collection", json!({
            "uuid": uuid("update"), "select": select,
            "replace_files": replace, "replace_segments": replace,
        }), true),
        "delete": method("delete", "DELETE", "collections/{uuid}", "Collection",
                         json!({"uuid": uuid("delete")}), false),
        "trash": method("trash", "POST", "collections/{uuid}/trash", "Collection",
                        json!({"uuid": uuid("update")}), false),
        "untrash": method("untrash", "POST", "collections/{uuid}/untrash", "Collection",
                          json!({"uuid": uuid("update"), "ensure_unique_name": ensure_unique_name}), false),
    });
    let ty = |t: &str| json!({"type": t});
    let mut props = Map::new();
    for (k, t) in [
        ("uuid", "string"),
        ("etag", "string"),
        ("owner_uuid", "string"),
        ("created_at", "datetime"),
        ("modified_by_user_uuid", "string"),
        ("modified_at", "datetime"),
        ("portable_data_hash", "string"),
        ("replication_desired", "integer"),
        ("replication_confirmed_at", "datetime"),
        ("replication_confirmed", "integer"),
        ("manifest_text", "text"),
        ("name", "string"),
        ("description", "string"),
        ("properties", "Hash"),
        ("delete_at", "datetime"),
        ("trash_at", "datetime"),
        ("is_trashed", "boolean"),
        ("storage_classes_desired", "Array"),
        ("storage_classes_confirmed", "Array"),
        ("storage_classes_confirmed_at", "datetime"),
        ("current_version_uuid", "string"),
        ("version", "integer"),
        ("preserve_version", "boolean"),
        ("file_count", "integer"),
        ("file_size_total", "integer"),
    ] {
        props.insert(k.to_owned(), ty(t));
    }
    let mut schemas = Map::new();
    schemas.insert(
        "Collection".into(),
        json!({"id": "Collection", "type": "object", "uuidPrefix": "4zz18",
               "description": "Arvados collection.", "properties": props}),
    );
    schemas.insert(
        "CollectionList".into(),
        json!({"id": "CollectionList", "type": "object", "description": "A list of Collection objects.",
               "properties": {
                   "kind": {"type": "string", "default": "arvados#collectionList"},
                   "etag": {"type": "string"},
                   "items": {"type": "array", "items": {"$ref": "Collection"}},
                   "items_available": {"type": "integer"},
                   "offset": {"type": "integer"}, "limit": {"type": "integer"}}}),
    );
    (schemas, json!({"methods": methods}))
}
