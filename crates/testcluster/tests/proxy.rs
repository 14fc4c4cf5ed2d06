//! keepproxy (§6).

use keep_client::{BlockHash, Locator};
use keep_testcluster::TestCluster;

use crate::util::{get_as, http, https, sb};

#[tokio::test]
async fn proxy_put_get_index() {
    let c = TestCluster::builder()
        .keepstores(3)
        .proxy(true)
        .start()
        .await
        .unwrap();
    let (puuid, purl) = c.proxy().unwrap();
    // Externally, only the proxy is accessible.
    let l: serde_json::Value = https(&c)
        .get(format!(
            "https://{}/arvados/v1/keep_services/accessible",
            c.api_host()
        ))
        .header("X-External-Client", "1")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(l["items"][0]["uuid"], puuid);
    assert_eq!(l["items"][0]["service_type"], "proxy");

    let tok = c.user_token().to_owned();
    let data = b"hello proxy";
    let hash = BlockHash::of(data);
    let r = http()
        .put(format!("{purl}/{hash}"))
        .body(&data[..])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(r.headers()["x-keep-replicas-stored"], "0");
    let r = http()
        .put(format!("{purl}/{hash}"))
        .bearer_auth(&tok)
        .header("X-Keep-Desired-Replicas", "2")
        .body(&data[..])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-keep-replicas-stored"], "2");
    let signed = r.text().await.unwrap();
    assert!(!signed.ends_with('\n'));
    // Written to the first two keepstores in probe order.
    let uuids: Vec<String> = c.keepstores().iter().map(|k| k.uuid.clone()).collect();
    let order = keep_client::rendezvous::probe_order(&hash, &uuids);
    for (pos, &i) in order.iter().enumerate() {
        assert_eq!(
            c.blocks_on(i).await.len(),
            usize::from(pos < 2),
            "keepstore {i}"
        );
    }
    let r = http()
        .get(format!("{purl}/{signed}"))
        .bearer_auth(&tok)
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["via"], "HTTP/1.1 keepproxy");
    assert_eq!(r.bytes().await.unwrap(), &data[..]);
    let missing = c.sign_locator(&Locator::of(b"nope"), &tok);
    let r = http()
        .get(format!("{purl}/{}", missing.to_wire()))
        .bearer_auth(&tok)
        .send()
        .await
        .unwrap();
    assert_eq!(sb(r).await, (404, "Block not found\n".into()));

    // 3 replicas wanted, one keepstore down: 503 with the count.
    c.stop_keepstore(order[2]).await.unwrap();
    let r = http()
        .put(format!("{purl}/{}", BlockHash::of(b"x")))
        .bearer_auth(&tok)
        .header("X-Keep-Desired-Replicas", "3")
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["x-keep-replicas-stored"], "2");
    c.start_keepstore(order[2]).await.unwrap();

    // A keepstore answering 503 to PUTs: the next one in probe order takes the copy.
    let data2 = b"failover";
    let h2 = BlockHash::of(data2);
    let order2 = keep_client::rendezvous::probe_order(&h2, &uuids);
    c.faults(&uuids[order2[0]])
        .unwrap()
        .fail_next(1, 503, Some("PUT"));
    let r = http()
        .put(format!("{purl}/{h2}"))
        .bearer_auth(&tok)
        .header("X-Keep-Desired-Replicas", "2")
        .body(&data2[..])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-keep-replicas-stored"], "2");
    assert!(c.blocks_on(order2[0]).await.iter().all(|(h, _)| *h != h2));
    assert!(c.blocks_on(order2[2]).await.iter().any(|(h, _)| *h == h2));
    let failed_put = c
        .request_log()
        .iter()
        .any(|r| r.service == uuids[order2[0]] && r.status == 503);
    assert!(failed_put);

    // Index: SystemRootToken, concatenated, duplicates kept.
    let body = get_as(format!("{purl}/index"), c.system_root_token())
        .await
        .1;
    assert!(body.ends_with("\n\n"));
    assert_eq!(
        body.lines()
            .filter(|l| l.starts_with(&hash.to_hex()))
            .count(),
        2
    );
    let r = http().get(format!("{purl}/xyz/abc")).send().await.unwrap();
    assert_eq!(sb(r).await, (400, "Bad request\n".into()));
    let r = http()
        .delete(format!("{purl}/{hash}"))
        .send()
        .await
        .unwrap();
    assert_eq!(sb(r).await, (405, String::new()));
    // The proxy's own faults.
    c.faults("proxy").unwrap().set_truncate_index(true);
    let body = get_as(format!("{purl}/index"), c.system_root_token())
        .await
        .1;
    assert!(!body.ends_with("\n\n") && body.ends_with('\n'));
}

#[tokio::test]
async fn read_only_keepstore_is_listed_and_skipped() {
    let c = TestCluster::builder()
        .keepstores(2)
        .proxy(true)
        .read_only_keepstore(0)
        .start()
        .await
        .unwrap();
    let sj: serde_json::Value = serde_json::from_str(&c.services_json()).unwrap();
    assert_eq!(sj["items"][0]["read_only"], true);
    assert_eq!(sj["items"][1]["read_only"], false);
    let (_, purl) = c.proxy().unwrap();
    let r = http()
        .put(format!("{purl}/{}", BlockHash::of(b"ro")))
        .bearer_auth(c.user_token())
        .header("X-Keep-Desired-Replicas", "1")
        .body("ro")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(c.blocks_on(0).await.is_empty());
    assert_eq!(c.blocks_on(1).await.len(), 1);
}
