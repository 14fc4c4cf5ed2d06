//! Controller endpoints (§7).

use crate::util::{https, sb, small};

#[tokio::test]
async fn discovery_accessible_list_users() {
    let c = small(3).await;
    let api = format!("https://{}", c.api_host());
    let cl = https(&c);
    let d: serde_json::Value = cl
        .get(format!("{api}/discovery/v1/apis/arvados/v1/rest"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(d["defaultCollectionReplication"], 2);
    assert_eq!(d["blobSignatureTtl"], 1_209_600);
    assert_eq!(d["uuidPrefix"], "zzzzz");
    assert_eq!(d["rootUrl"], format!("{api}/"));
    assert_eq!(d["servicePath"], "arvados/v1/");
    assert!(d["resources"]["keep_services"]["methods"]["accessible"]["response"].is_object());
    assert!(d["resources"]["users"]["methods"]["current"].is_object());
    assert!(d["resources"]["configs"]["methods"]["get"].is_object());

    let r = cl
        .get(format!(
            "{api}/arvados/v1/keep_services/accessible?alt=json"
        ))
        .send()
        .await
        .unwrap();
    assert!(r.headers().get("cache-control").is_none());
    let l: serde_json::Value = r.json().await.unwrap();
    let items = l["items"].as_array().unwrap();
    assert_eq!(items.len(), 3);
    for (i, it) in items.iter().enumerate() {
        assert_eq!(it["uuid"].as_str().unwrap().len(), 27);
        assert_eq!(it["uuid"], c.keepstores()[i].uuid);
        assert!(it["service_port"].is_u64());
        assert_eq!(it["service_type"], "disk");
        assert_eq!(it["service_ssl_flag"], false);
    }
    let l: serde_json::Value = cl
        .get(format!("{api}/arvados/v1/keep_services/accessible"))
        .header("X-External-Client", "1")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(l["items"].as_array().unwrap().len(), 0);
    let r = cl
        .head(format!("{api}/arvados/v1/keep_services/accessible"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // list: auth + paging.
    let r = cl
        .get(format!("{api}/arvados/v1/keep_services"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let l: serde_json::Value = cl
        .get(format!("{api}/arvados/v1/keep_services?offset=1&limit=1"))
        .bearer_auth(c.user_token())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(l["items_available"], 3);
    assert_eq!(l["items"][0]["uuid"], c.keepstores()[1].uuid);

    let u: serde_json::Value = cl
        .get(format!("{api}/arvados/v1/users/current"))
        .header("Authorization", format!("OAuth2 {}", c.system_root_token()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(u["is_admin"], true);
    assert_eq!(u["uuid"], "zzzzz-tpzed-000000000000000");
    let r = cl
        .get(format!("{api}/arvados/v1/users/current"))
        .bearer_auth("bogus")
        .send()
        .await
        .unwrap();
    let (s, b) = sb(r).await;
    assert_eq!(s, 401);
    assert!(serde_json::from_str::<serde_json::Value>(&b).unwrap()["errors"].is_array());

    let cfg: serde_json::Value = cl
        .get(format!("{api}/arvados/v1/config"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(cfg["Collections"]["BlobSigningTTL"], "336h");
    assert_eq!(cfg["StorageClasses"]["default"]["Default"], true);

    // Settings file and services JSON.
    let conf = c.dir().join("x.conf");
    c.write_settings_file(&conf, true).unwrap();
    let text = std::fs::read_to_string(&conf).unwrap();
    assert!(text.contains(&format!("ARVADOS_API_HOST={}\n", c.api_host())));
    assert!(text.contains("ARVADOS_API_HOST_INSECURE=true\n"));
    assert!(text.contains("ARVADOS_BLOB_SIGNING_KEY="));
    let sj: serde_json::Value = serde_json::from_str(&c.services_json()).unwrap();
    assert_eq!(sj["items"].as_array().unwrap().len(), 3);
}
