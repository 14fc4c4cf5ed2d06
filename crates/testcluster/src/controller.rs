//! The API server / controller endpoints Keep clients use (§7), over HTTPS, plus the
//! discovery document the Python SDK builds its client from (python-sdk-notes §4).

use std::sync::Arc;

use http::{HeaderValue, Method, Request, Response, StatusCode};
use serde_json::{Value, json};

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
        Box::pin(async move { c.route(req) })
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
    let token = format!(
        "{}+{:08x}",
        super::keepstore::new_request_id().len(),
        rand::random::<u32>()
    );
    json_response(
        status,
        &json!({"errors": [msg], "error_token": token}),
        false,
    )
}

impl Controller {
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
            },
            "StorageClasses": self.cfg.storage_classes.iter()
                .map(|(n, d, p)| (n.clone(), json!({"Default": d, "Priority": p})))
                .collect::<serde_json::Map<String, Value>>(),
            "Services": {"Controller": {"ExternalURL": format!("https://{}/", self.api_host)}},
            "API": {"MaxItemsPerResponse": 1000},
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
        json!({
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
        })
    }
}
