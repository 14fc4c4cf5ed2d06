//! Controller calls over https (self-signed certificate), and `KeepClient::from_settings`.

use std::time::Duration;

use bytes::Bytes;
use keep_client::{
    BlockHash, ClientOptions, ClusterSettings, Controller, Error, KeepClient, KeepService, Token,
};
use serde_json::json;

use crate::mock::{MockServer, Reply, Request, keepstore};

const TOKEN: &str = "v2/zzzzz-gj3su-077z32aux8dg2s1/controllertestsecret0123456789";

fn insecure() -> ClientOptions {
    ClientOptions {
        insecure: true,
        ..ClientOptions::default()
    }
}

fn service_json(uuid: &str, url: &str, kind: &str) -> serde_json::Value {
    let (host, port) = url.trim_start_matches("http://").rsplit_once(':').unwrap();
    json!({"uuid": uuid, "service_host": host, "service_port": port.parse::<u16>().unwrap(),
           "service_ssl_flag": false, "service_type": kind, "read_only": false})
}

/// A fake controller serving discovery, config and keep service lists.
fn controller(
    items: Vec<serde_json::Value>,
    discovery: serde_json::Value,
) -> impl FnMut(&Request) -> Reply + Send + 'static {
    move |r: &Request| {
        let path = r.path.as_str();
        if path == "/discovery/v1/apis/arvados/v1/rest" {
            Reply::ok(discovery.to_string())
        } else if path == "/arvados/v1/config" {
            Reply::ok(
                json!({"ClusterID": "zzzzz",
                       "Collections": {"BlobSigningTTL": "336h", "DefaultReplication": 3},
                       "StorageClasses": {"default": {"Default": true}, "archive": {"Default": false}}})
                .to_string(),
            )
        } else if path == "/arvados/v1/keep_services/accessible" {
            Reply::ok(json!({"items": items, "items_available": items.len()}).to_string())
        } else if let Some(off) = path.strip_prefix("/arvados/v1/keep_services?offset=") {
            if r.header("authorization") != Some(&*format!("Bearer {TOKEN}")) {
                return Reply::new(401, r#"{"errors":["Not logged in"]}"#);
            }
            // Pages of two.
            let off: usize = off.parse().unwrap();
            let page: Vec<_> = items.iter().skip(off).take(2).cloned().collect();
            Reply::ok(json!({"items": page, "items_available": items.len()}).to_string())
        } else {
            Reply::new(404, r#"{"errors":["Path not found"]}"#)
        }
    }
}

fn discovery_doc() -> serde_json::Value {
    json!({"defaultCollectionReplication": 2, "blobSignatureTtl": 1209600, "uuidPrefix": "zzzzz"})
}

#[tokio::test]
async fn discovery_config_and_service_lists() {
    let items: Vec<_> = (0..3)
        .map(|i| {
            service_json(
                &format!("zzzzz-bi6l4-{i:015}"),
                &format!("http://10.0.0.{i}:25107"),
                "disk",
            )
        })
        .collect();
    let api = MockServer::start_tls(controller(items, discovery_doc())).await;
    let c = Controller::new(api.host(), Some(Token::new(TOKEN)), &insecure()).unwrap();
    let d = c.discovery().await.unwrap();
    assert_eq!(d.default_collection_replication, Some(2));
    assert_eq!(d.blob_signature_ttl, Some(Duration::from_secs(1_209_600)));
    assert_eq!(d.uuid_prefix.as_deref(), Some("zzzzz"));

    let cfg = c.cluster_config().await.unwrap().unwrap();
    assert_eq!(cfg.default_storage_classes, ["default"]);
    assert_eq!(cfg.blob_signing_ttl, Some(Duration::from_secs(1_209_600)));
    assert_eq!(cfg.default_replication, Some(3));

    let acc = c.accessible_services().await.unwrap();
    assert_eq!(acc.len(), 3);
    assert_eq!(acc[2].url, "http://10.0.0.2:25107");
    let listed = c.list_services().await.unwrap();
    assert_eq!(listed, acc);
    let paths: Vec<String> = api.requests().iter().map(|r| r.path.clone()).collect();
    assert!(
        paths.contains(&"/arvados/v1/keep_services?offset=2".to_owned()),
        "{paths:?}"
    );

    // Without a token the list is refused, naming the host.
    let anon = Controller::new(api.host(), None, &insecure()).unwrap();
    let e = anon.list_services().await.unwrap_err();
    assert!(matches!(e, Error::PermissionDenied { .. }), "{e:?}");
    assert!(e.to_string().contains(api.host()), "{e}");
}

#[tokio::test]
async fn config_404_is_none_and_string_numbers_are_errors() {
    let api = MockServer::start_tls(|r: &Request| {
        if r.path.starts_with("/discovery/") {
            Reply::ok(r#"{"defaultCollectionReplication":"2","blobSignatureTtl":1209600}"#)
        } else {
            Reply::new(404, "not found")
        }
    })
    .await;
    let c = Controller::new(api.host(), None, &insecure()).unwrap();
    assert_eq!(c.cluster_config().await.unwrap(), None);
    let e = c.discovery().await.unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("defaultCollectionReplication") && msg.contains("a string"),
        "{msg}"
    );
}

#[tokio::test]
async fn untrusted_certificate_is_a_clear_tls_error() {
    let api = MockServer::start_tls(controller(Vec::new(), discovery_doc())).await;
    let c = Controller::new(api.host(), None, &ClientOptions::default()).unwrap();
    let e = c.discovery().await.unwrap_err();
    assert!(matches!(e, Error::Tls { .. }), "{e:?}");
    let msg = e.to_string();
    assert!(
        msg.contains("SSL_CERT_FILE") && msg.contains("ARVADOS_API_HOST_INSECURE"),
        "{msg}"
    );
    assert!(!e.is_retryable());
}

#[tokio::test]
async fn http_api_host_is_refused() {
    assert!(matches!(
        Controller::new("http://example.com", None, &ClientOptions::default()),
        Err(Error::Config(_))
    ));
}

#[tokio::test]
async fn client_from_settings_end_to_end() {
    let k0 = MockServer::start(keepstore()).await;
    let k1 = MockServer::start(keepstore()).await;
    let items = vec![
        service_json("zzzzz-bi6l4-000000000000000", &k0.url, "disk"),
        service_json("zzzzz-bi6l4-000000000000001", &k1.url, "disk"),
    ];
    let api = MockServer::start_tls(controller(items, discovery_doc())).await;
    let settings = ClusterSettings {
        api_host: Some(api.host().to_owned()),
        api_token: Some(Token::new(TOKEN)),
        insecure: true,
        ..ClusterSettings::default()
    };
    let (c, info) = KeepClient::from_settings(&settings, ClientOptions::default(), None)
        .await
        .unwrap();
    assert_eq!(info.uuid_prefix.as_deref(), Some("zzzzz"));
    assert_eq!(info.default_replication, Some(2));
    assert_eq!(
        info.blob_signature_ttl,
        Some(Duration::from_secs(1_209_600))
    );
    assert_eq!(info.default_storage_classes, ["default"]);
    assert_eq!(c.services().len(), 2);

    let data = Bytes::from_static(b"end to end");
    let r = c.put(BlockHash::of(&data), data.clone(), 2).await.unwrap();
    assert_eq!(r.replicas, 2);
    assert_eq!((k0.count(), k1.count()), (1, 1));
    assert_eq!(c.get(&r.locator).await.unwrap(), data);

    // An explicit service list wins over discovery; ARVADOS_KEEP_SERVICES over
    // `accessible`.
    let only: Vec<KeepService> = c.services()[..1].to_vec();
    let (c2, _) =
        KeepClient::from_settings(&settings, ClientOptions::default(), Some(only.clone()))
            .await
            .unwrap();
    assert_eq!(c2.services(), only);
    let env_list = ClusterSettings {
        keep_services: Some(format!("{}/", k1.url)),
        ..settings.clone()
    };
    let (c3, _) = KeepClient::from_settings(&env_list, ClientOptions::default(), None)
        .await
        .unwrap();
    assert_eq!(c3.services().len(), 1);
    assert_eq!(c3.services()[0].url, k1.url);
    assert!(c3.has_proxy());

    // Settings without a token are refused before any request.
    let no_token = ClusterSettings {
        api_token: None,
        ..settings
    };
    let e = KeepClient::from_settings(&no_token, ClientOptions::default(), None)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("ARVADOS_API_TOKEN"), "{e}");
}

#[tokio::test]
async fn api_requests_are_retried_on_server_errors() {
    let mut n = 0;
    let api = MockServer::start_tls(move |_: &Request| {
        n += 1;
        if n == 1 {
            Reply::new(502, "bad gateway")
        } else {
            Reply::ok(discovery_doc().to_string())
        }
    })
    .await;
    let mut o = insecure();
    o.retry.backoff.initial = Duration::from_millis(1);
    let c = Controller::new(api.host(), None, &o).unwrap();
    assert_eq!(
        c.discovery().await.unwrap().uuid_prefix.as_deref(),
        Some("zzzzz")
    );
    assert_eq!(api.count(), 2);
}
