//! The controller's collections API (`src/collections.rs`) over HTTPS: what a client
//! (keep-rsync `--by-collections`, keep-balance, the Python SDK) sees. Expected values
//! come from the request itself and from keep-client's signing code (independent of
//! the cluster's own), never from the cluster's code.

use std::collections::HashSet;
use std::time::{Duration, SystemTime};

use keep_client::signing::{Token, verify};
use keep_client::{BlockHash, Locator, SignatureFormat};
use keep_testcluster::TestCluster;
use md5::{Digest, Md5};
use serde_json::{Value, json};

use crate::util::{get_as, https, sb};

/// (status, body) of an HTTPS GET of `url` as `token` (the controller's certificate trusted).
async fn get_https(c: &TestCluster, url: String, token: &str) -> (u16, String) {
    sb(https(c).get(url).bearer_auth(token).send().await.unwrap()).await
}

fn api(c: &TestCluster) -> String {
    format!("https://{}/arvados/v1/collections", c.api_host())
}

/// `md5(text)+len`: the portable data hash of a manifest that has no hints but sizes.
fn pdh_of(text: &str) -> String {
    format!(
        "{}+{}",
        hex::encode(Md5::digest(text.as_bytes())),
        text.len()
    )
}

/// A GET of the collections list with these (JSON-encoded) query parameters.
async fn list(c: &TestCluster, token: &str, params: &[(&str, Value)]) -> Value {
    let q: Vec<(String, String)> = params
        .iter()
        .map(|(k, v)| {
            let s = match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            ((*k).to_owned(), s)
        })
        .collect();
    let r = https(c)
        .get(api(c))
        .query(&q)
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    let (s, b) = sb(r).await;
    assert_eq!(s, 200, "list {params:?}: {b}");
    serde_json::from_str(&b).unwrap()
}

async fn post(c: &TestCluster, token: &str, url: String, body: &Value) -> (u16, Value) {
    let r = https(c)
        .post(url)
        .bearer_auth(token)
        .json(body)
        .send()
        .await
        .unwrap();
    let (s, b) = sb(r).await;
    (s, serde_json::from_str(&b).unwrap_or(Value::Null))
}

fn uuids(l: &Value) -> Vec<String> {
    l["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["uuid"].as_str().unwrap().to_owned())
        .collect()
}

/// Every `+A` locator in `manifest` verifies for `token` with the cluster's key and TTL.
fn assert_signed_for(c: &TestCluster, manifest: &str, token: &str) {
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let mut n = 0;
    for w in manifest.split_whitespace().filter(|w| w.contains("+A")) {
        verify(
            w,
            c.signing_key(),
            &Token::new(token),
            now,
            SignatureFormat::Current {
                ttl: c.blob_signature_ttl(),
            },
        )
        .unwrap_or_else(|e| panic!("locator does not verify: {e:?}"));
        n += 1;
    }
    assert!(n > 0, "no signed locator in {manifest:?}");
}

#[tokio::test]
async fn collections_create_checks_signatures_and_get_signs() {
    let c = TestCluster::builder().keepstores(1).start().await.unwrap();
    let user = c.user_token().to_owned();
    let foo = Locator::of(b"foo");
    let signed = c.sign_locator(&foo, &user).to_wire();
    let plain = format!(". {} 0:3:foo.txt\n", foo.unsigned());

    // No token, a bad token: 401 in the §7.6 shape.
    let r = https(&c).get(api(&c)).send().await.unwrap();
    let (s, b) = sb(r).await;
    assert_eq!(s, 401);
    assert!(serde_json::from_str::<Value>(&b).unwrap()["errors"].is_array());
    assert_eq!(
        get_https(&c, format!("{}?alt=json", api(&c)), "bogus")
            .await
            .0,
        401
    );

    // A valid signature (made by keep-client, not by the cluster), attributes at the
    // top level as the Python SDK sends them.
    let (s, rec) = post(
        &c,
        &user,
        format!("{}?ensure_unique_name=true", api(&c)),
        &json!({"name": "signed", "manifest_text": format!(". {signed} 0:3:foo.txt\n")}),
    )
    .await;
    assert_eq!(s, 200, "{rec}");
    let uuid = rec["uuid"].as_str().unwrap().to_owned();
    assert!(
        uuid.starts_with("zzzzz-4zz18-") && uuid.len() == 27,
        "{uuid}"
    );
    assert_eq!(rec["portable_data_hash"], pdh_of(&plain));
    assert_eq!(rec["kind"], "arvados#collection");
    assert_eq!(rec["current_version_uuid"], uuid);
    assert_eq!(rec["version"], 1);
    assert_eq!(rec["file_count"], 1);
    assert_eq!(rec["file_size_total"], 3);
    assert_eq!(rec["storage_classes_desired"], json!(["default"]));
    assert_eq!(rec["trash_at"], Value::Null);
    assert_eq!(rec["is_trashed"], false);
    assert!(rec["replication_desired"].is_null());
    assert!(rec["modified_at"].as_str().unwrap().ends_with("000Z"));
    assert_signed_for(&c, rec["manifest_text"].as_str().unwrap(), &user);

    // GET: the stored manifest has no +A; the answer is signed afresh for the caller.
    let (s, b) = get_https(&c, format!("{}/{uuid}", api(&c)), &user).await;
    assert_eq!(s, 200, "{b}");
    let got: Value = serde_json::from_str(&b).unwrap();
    let m = got["manifest_text"].as_str().unwrap();
    assert_signed_for(&c, m, &user);
    let stripped: String = m
        .split(' ')
        .map(|w| w.split("+A").next().unwrap())
        .collect::<Vec<_>>()
        .join(" ");
    assert_eq!(stripped, plain);
    // Signed for the root token when the root token asks.
    let (_, b) = get_https(&c, format!("{}/{uuid}", api(&c)), c.system_root_token()).await;
    let got: Value = serde_json::from_str(&b).unwrap();
    assert_signed_for(
        &c,
        got["manifest_text"].as_str().unwrap(),
        c.system_root_token(),
    );

    // Bad, expired, someone else's and missing signatures: 403, as the API server's
    // PermissionDeniedError (collection.rb check_signatures).
    let bad = format!("{}+3+A{}@7fffffff", foo.hash(), "0".repeat(40));
    let expired = crate::util::expired_foo(&c, &user).to_wire();
    let others = c.sign_locator(&foo, c.system_root_token()).to_wire();
    for (what, loc) in [
        ("bad", bad),
        ("expired", expired),
        ("other token's", others),
        ("unsigned", foo.unsigned()),
    ] {
        let (s, e) = post(
            &c,
            &user,
            api(&c),
            &json!({"collection": {"manifest_text": format!(". {loc} 0:3:foo.txt\n")}}),
        )
        .await;
        assert_eq!(s, 403, "{what} signature: {e}");
        assert!(e["errors"].is_array(), "{e}");
        assert!(e["error_token"].is_string(), "{e}");
    }
    // The empty block needs no signature.
    let (s, e) = post(
        &c,
        &user,
        api(&c),
        &json!({"collection": {"manifest_text": ". d41d8cd98f00b204e9800998ecf8427e+0 0:0:empty\n"}}),
    )
    .await;
    assert_eq!(s, 200, "{e}");
    // An admin's manifest is not checked (check_signatures returns early).
    let rec = c
        .create_collection(json!({"manifest_text": plain, "name": "by root"}))
        .await
        .unwrap();
    assert_eq!(rec["portable_data_hash"], pdh_of(&plain));
    // A malformed manifest, a wrong PDH, a duplicate name: 422.
    for (attrs, what) in [
        (json!({"manifest_text": ". foo\n"}), "malformed"),
        (
            json!({"manifest_text": plain, "portable_data_hash": pdh_of("x")}),
            "wrong pdh",
        ),
        (json!({"name": "by root"}), "duplicate name"),
        (json!({"bogus": 1}), "unknown attribute"),
    ] {
        let (s, e) = post(
            &c,
            c.system_root_token(),
            api(&c),
            &json!({ "collection": attrs }),
        )
        .await;
        assert_eq!(s, 422, "{what}: {e}");
    }
    // ensure_unique_name adds the UUID's random part.
    let (s, r) = post(
        &c,
        c.system_root_token(),
        format!("{}?ensure_unique_name=true", api(&c)),
        &json!({"collection": {"name": "by root"}}),
    )
    .await;
    assert_eq!(s, 200, "{r}");
    let u = r["uuid"].as_str().unwrap();
    assert_eq!(r["name"], format!("by root ({})", &u[12..]));

    // Users see only their own; unknown UUIDs are 404.
    let (s, _) = get_https(
        &c,
        format!("{}/{}", api(&c), rec["uuid"].as_str().unwrap()),
        &user,
    )
    .await;
    assert_eq!(s, 404);
    let (s, _) = get_https(
        &c,
        format!("{}/zzzzz-4zz18-000000000000000", api(&c)),
        c.system_root_token(),
    )
    .await;
    assert_eq!(s, 404);
    // By portable data hash.
    let (s, b) = get_https(&c, format!("{}/{}", api(&c), pdh_of(&plain)), &user).await;
    assert_eq!(s, 200, "{b}");
    let got: Value = serde_json::from_str(&b).unwrap();
    assert_eq!(got["portable_data_hash"], pdh_of(&plain));
    assert_signed_for(&c, got["manifest_text"].as_str().unwrap(), &user);

    // The discovery document describes the resource, and the config the versioning.
    let d: Value = https(&c)
        .get(format!(
            "https://{}/discovery/v1/apis/arvados/v1/rest",
            c.api_host()
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let m = &d["resources"]["collections"]["methods"];
    for name in [
        "list", "get", "create", "update", "delete", "trash", "untrash",
    ] {
        assert!(m[name]["path"].is_string(), "{name}");
    }
    assert_eq!(
        m["list"]["parameters"]["include_old_versions"]["type"],
        "boolean"
    );
    assert_eq!(d["schemas"]["Collection"]["uuidPrefix"], "4zz18");
    let (_, b) = get_https(
        &c,
        format!("https://{}/arvados/v1/config", c.api_host()),
        &user,
    )
    .await;
    let cfg: Value = serde_json::from_str(&b).unwrap();
    assert_eq!(cfg["Collections"]["CollectionVersioning"], true);
}

#[tokio::test]
async fn collections_list_pages_filters_and_selects() {
    let c = TestCluster::builder().keepstores(1).start().await.unwrap();
    let root = c.system_root_token().to_owned();
    let mut created = HashSet::new();
    for i in 0..250 {
        let data = format!("block {i}");
        let loc = Locator::of(data.as_bytes());
        let r = c
            .create_collection(json!({
                "name": format!("c{i:03}"),
                "manifest_text": format!(". {} 0:{}:f{i}\n", loc.unsigned(), data.len()),
            }))
            .await
            .unwrap();
        created.insert(r["uuid"].as_str().unwrap().to_owned());
    }

    // Paging as keep-balance does: order by uuid, filter past the last one seen.
    let mut seen = Vec::new();
    let mut last = String::new();
    let mut pages = 0;
    loop {
        let mut params = vec![
            ("order", json!(["uuid asc"])),
            ("limit", json!(100)),
            (
                "select",
                json!(["uuid", "manifest_text", "portable_data_hash", "modified_at"]),
            ),
            ("count", json!("none")),
        ];
        if !last.is_empty() {
            params.push(("filters", json!([["uuid", ">", last]])));
        }
        let l = list(&c, &root, &params).await;
        assert!(l.get("items_available").is_none(), "count=none: {l}");
        let page = uuids(&l);
        if page.is_empty() {
            break;
        }
        pages += 1;
        assert!(page.len() <= 100);
        for it in l["items"].as_array().unwrap() {
            let keys: HashSet<&str> = it.as_object().unwrap().keys().map(String::as_str).collect();
            assert_eq!(
                keys,
                HashSet::from([
                    "uuid",
                    "manifest_text",
                    "portable_data_hash",
                    "modified_at",
                    "kind",
                    "etag"
                ]),
                "select"
            );
            assert_signed_for(&c, it["manifest_text"].as_str().unwrap(), &root);
        }
        assert!(page.windows(2).all(|w| w[0] < w[1]), "uuid asc");
        last = page.last().unwrap().clone();
        seen.extend(page);
    }
    assert_eq!(pages, 3);
    assert_eq!(seen.len(), 250);
    assert_eq!(seen.iter().cloned().collect::<HashSet<_>>(), created);

    // Default: 100 items, items_available, newest first; no manifest_text unless
    // selected (it is there, empty, as the Go controller renders the record).
    let l = list(&c, &root, &[]).await;
    assert_eq!(l["kind"], "arvados#collectionList");
    assert_eq!(l["items_available"], 250);
    assert_eq!(l["limit"], 100);
    assert_eq!(l["offset"], 0);
    assert_eq!(l["items"].as_array().unwrap().len(), 100);
    assert_eq!(l["items"][0]["manifest_text"], "");
    assert_eq!(l["items"][0]["name"], "c249");
    let times: Vec<&str> = l["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["modified_at"].as_str().unwrap())
        .collect();
    assert!(
        times.windows(2).all(|w| w[0] > w[1]),
        "modified_at desc, distinct"
    );

    // modified_at paging with a plain-string order, an offset and limit caps.
    let l = list(
        &c,
        &root,
        &[
            ("order", json!("modified_at asc, uuid")),
            ("limit", json!(5000)),
            ("offset", json!(10)),
            ("filters", json!([["modified_at", ">=", times[99]]])),
        ],
    )
    .await;
    assert_eq!(l["limit"], 1000);
    assert_eq!(l["items_available"], 100);
    assert_eq!(l["items"].as_array().unwrap().len(), 90);
    assert_eq!(l["items"][0]["name"], "c160");

    // Operators.
    let n = |l: &Value| l["items_available"].as_u64().unwrap();
    let first = seen[0].clone();
    assert_eq!(
        n(&list(&c, &root, &[("filters", json!([["name", "like", "c1%"]]))]).await),
        100
    );
    assert_eq!(
        n(&list(
            &c,
            &root,
            &[("filters", json!([["name", "ilike", "C00_"]]))]
        )
        .await),
        10
    );
    assert_eq!(
        n(&list(
            &c,
            &root,
            &[("filters", json!([["uuid", "in", [first, "x"]]]))]
        )
        .await),
        1
    );
    assert_eq!(
        n(&list(
            &c,
            &root,
            &[("filters", json!([["uuid", "not in", [first]]]))]
        )
        .await),
        249
    );
    assert_eq!(
        n(&list(&c, &root, &[("filters", json!([["uuid", "!=", first]]))]).await),
        249
    );
    assert_eq!(
        n(&list(
            &c,
            &root,
            &[("filters", json!([["uuid", "is_a", "arvados#collection"]]))]
        )
        .await),
        250
    );
    assert_eq!(
        n(&list(
            &c,
            &root,
            &[("filters", json!([["owner_uuid", "is_a", "arvados#user"]]))]
        )
        .await),
        250
    );
    assert_eq!(
        n(&list(&c, &root, &[("filters", json!([["trash_at", "=", null]]))]).await),
        250
    );
    assert_eq!(
        n(&list(
            &c,
            &root,
            &[("filters", json!([["is_trashed", "=", true]]))]
        )
        .await),
        0
    );
    assert_eq!(
        n(&list(
            &c,
            &root,
            &[("filters", json!([["file_size_total", ">", 8]]))]
        )
        .await),
        150
    );
    // A bad filter is a 422 in the §7.6 shape.
    let r = https(&c)
        .get(api(&c))
        .query(&[("filters", r#"[["manifest_text","=","x"]]"#)])
        .bearer_auth(&root)
        .send()
        .await
        .unwrap();
    let (s, b) = sb(r).await;
    assert_eq!(s, 422, "{b}");

    // A long query as a POST with _method=GET (Go SDK), form-encoded.
    let r = https(&c)
        .post(api(&c))
        .bearer_auth(&root)
        .form(&[
            ("_method", "GET"),
            ("filters", &json!([["uuid", "in", seen[..150]]]).to_string()),
            ("limit", "1000"),
        ])
        .send()
        .await
        .unwrap();
    let (s, b) = sb(r).await;
    assert_eq!(s, 200, "{b}");
    let l: Value = serde_json::from_str(&b).unwrap();
    assert_eq!(l["items"].as_array().unwrap().len(), 150);
}

#[tokio::test]
async fn collections_versions_and_trash() {
    let c = TestCluster::builder().keepstores(1).start().await.unwrap();
    let root = c.system_root_token().to_owned();
    let m1 = format!(". {} 0:3:foo\n", Locator::of(b"foo").unsigned());
    let m2 = format!(". {} 0:3:bar\n", Locator::of(b"bar").unsigned());
    let rec = c
        .create_collection(json!({"name": "v", "manifest_text": m1}))
        .await
        .unwrap();
    let uuid = rec["uuid"].as_str().unwrap().to_owned();
    let up = c
        .update_collection(&uuid, json!({"manifest_text": m2}))
        .await
        .unwrap();
    assert_eq!(up["version"], 2);
    assert_eq!(up["portable_data_hash"], pdh_of(&m2));
    assert!(up["modified_at"].as_str() > rec["modified_at"].as_str());
    // A change that is not versionable keeps the version.
    let up = c
        .update_collection(&uuid, json!({"replication_desired": 3}))
        .await
        .unwrap();
    assert_eq!(up["version"], 2);

    // Current versions only, by default.
    let l = list(&c, &root, &[]).await;
    assert_eq!(uuids(&l), vec![uuid.clone()]);
    let l = list(
        &c,
        &root,
        &[
            ("include_old_versions", json!(true)),
            ("order", json!(["version asc"])),
            (
                "select",
                json!([
                    "uuid",
                    "version",
                    "current_version_uuid",
                    "portable_data_hash",
                    "replication_desired"
                ]),
            ),
        ],
    )
    .await;
    let items = l["items"].as_array().unwrap();
    assert_eq!(items.len(), 2, "{l}");
    let old = items[0]["uuid"].as_str().unwrap().to_owned();
    assert_ne!(old, uuid);
    assert_eq!(items[0]["version"], 1);
    assert_eq!(items[0]["current_version_uuid"], uuid);
    assert_eq!(items[0]["portable_data_hash"], pdh_of(&m1));
    assert_eq!(
        items[0]["replication_desired"], 3,
        "syncable attributes follow"
    );
    assert_eq!(items[1]["version"], 2);
    assert_eq!(items[1]["uuid"], uuid);
    // A past version is readable by its UUID but cannot be updated.
    let (s, b) = get_https(&c, format!("{}/{old}", api(&c)), &root).await;
    assert_eq!(s, 200, "{b}");
    assert!(
        c.update_collection(&old, json!({"name": "x"}))
            .await
            .is_err()
    );

    // Trash: gone from GET and list unless include_trash; the manifest is unsigned.
    let t = c.trash_collection(&uuid).await.unwrap();
    assert_eq!(t["is_trashed"], true);
    assert!(t["trash_at"].is_string() && t["delete_at"].is_string());
    assert!(!t["manifest_text"].as_str().unwrap().contains("+A"));
    assert_eq!(
        get_https(&c, format!("{}/{uuid}", api(&c)), &root).await.0,
        404
    );
    assert_eq!(
        get_https(&c, format!("{}/{uuid}?include_trash=true", api(&c)), &root)
            .await
            .0,
        200
    );
    assert_eq!(list(&c, &root, &[]).await["items_available"], 0);
    let l = list(
        &c,
        &root,
        &[
            ("include_trash", json!(true)),
            ("include_old_versions", json!(true)),
        ],
    )
    .await;
    assert_eq!(l["items_available"], 2, "past versions are trashed with it");
    let l = list(
        &c,
        &root,
        &[
            ("include_trash", json!("true")),
            ("filters", json!([["is_trashed", "=", true]])),
        ],
    )
    .await;
    assert_eq!(uuids(&l), vec![uuid.clone()]);

    // Untrash, then DELETE: trashed, delete_at no later than trash_at + TTL.
    let (s, u) = post(&c, &root, format!("{}/{uuid}/untrash", api(&c)), &json!({})).await;
    assert_eq!(s, 200, "{u}");
    assert_eq!(u["is_trashed"], false);
    assert!(u["delete_at"].is_null());
    let (s, _) = post(&c, &root, format!("{}/{uuid}/untrash", api(&c)), &json!({})).await;
    assert_eq!(s, 422, "untrash of an untrashed collection");
    let r = https(&c)
        .delete(format!("{}/{uuid}", api(&c)))
        .bearer_auth(&root)
        .send()
        .await
        .unwrap();
    let (s, b) = sb(r).await;
    assert_eq!(s, 200, "{b}");
    let d: Value = serde_json::from_str(&b).unwrap();
    assert_eq!(d["is_trashed"], true);
    // Same fixed format: text order is time order.
    assert!(d["trash_at"].as_str().unwrap() < d["delete_at"].as_str().unwrap());

    // trash_at in the future: not trashed yet, and signatures expire no later.
    let rec = c
        .create_collection(json!({"manifest_text": m1, "trash_at": "2200-01-01T00:00:00Z"}))
        .await
        .unwrap();
    assert_eq!(rec["is_trashed"], false);
    assert_eq!(rec["trash_at"], "2200-01-01T00:00:00.000000000Z");
    let rec = c
        .create_collection(json!({"manifest_text": m1, "trash_at": "2000-01-01T00:00:00Z"}))
        .await
        .unwrap();
    assert_eq!(rec["is_trashed"], true, "a past trash_at becomes now");
}

#[tokio::test]
async fn set_block_mtime_ages_index_entries() {
    for memory in [true, false] {
        let mut b = TestCluster::builder()
            .keepstores(1)
            .volumes_per_keepstore(2);
        let tmp = tempfile::tempdir().unwrap();
        if !memory {
            b = b.dir(tmp.path());
        }
        let c = b.start().await.unwrap();
        let loc = c.put_block_on(0, b"old block").await.unwrap();
        let hash = BlockHash::of(b"old block");
        let when = SystemTime::UNIX_EPOCH + Duration::from_secs(1_600_000_000);
        assert!(c.set_block_mtime(0, &hash, when).await);
        assert!(!c.set_block_mtime(0, &BlockHash::of(b"absent"), when).await);
        let ks = &c.keepstores()[0];
        let (s, body) = get_as(format!("{}/index", ks.url), c.system_root_token()).await;
        assert_eq!(s, 200);
        let line = body
            .lines()
            .find(|l| l.starts_with(&loc.unsigned()))
            .unwrap_or_else(|| panic!("{loc} not in index: {body}"));
        assert_eq!(
            line,
            format!("{} 1600000000000000000", loc.unsigned()),
            "memory={memory}"
        );
        for v in &ks.volumes {
            let (_, body) = get_as(
                format!("{}/mounts/{v}/blocks", ks.url),
                c.system_root_token(),
            )
            .await;
            if let Some(l) = body.lines().find(|l| l.starts_with(&loc.unsigned())) {
                assert!(l.ends_with(" 1600000000000000000"), "{l}");
            }
        }
    }
}
