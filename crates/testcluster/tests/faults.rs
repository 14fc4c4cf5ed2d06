//! Fault injection and the request log.

use std::time::{Duration, Instant};

use keep_client::Locator;
use keep_testcluster::{TestCluster, token_digest_of};

use crate::util::{get_as, http, sb};

const FOO: &str = "acbd18db4cc2f85cedef654fccc4a4d8";

/// A cluster of one keepstore that does not check permission signatures.
async fn one_keepstore() -> TestCluster {
    TestCluster::builder()
        .keepstores(1)
        .blob_signing(false)
        .start()
        .await
        .unwrap()
}

#[tokio::test]
async fn burst_rate_method_latency() {
    let c = TestCluster::builder()
        .keepstores(1)
        .blob_signing(false)
        .fault_seed(42)
        .start()
        .await
        .unwrap();
    let url = c.keepstores()[0].url.clone();
    let f = c.faults("keepstore0").unwrap();
    f.fail_next(2, 503, Some("PUT"));
    // GET is not affected by a PUT-only fault.
    assert_eq!(
        http()
            .get(format!("{url}/{FOO}+3"))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    for _ in 0..2 {
        assert_eq!(
            http()
                .put(format!("{url}/{FOO}"))
                .body("foo")
                .send()
                .await
                .unwrap()
                .status(),
            503
        );
    }
    assert_eq!(
        http()
            .put(format!("{url}/{FOO}"))
            .body("foo")
            .send()
            .await
            .unwrap()
            .status(),
        200
    );

    f.fail_rate(0.5, 500, None);
    let mut fails = 0;
    for _ in 0..40 {
        if http()
            .get(format!("{url}/{FOO}+3"))
            .send()
            .await
            .unwrap()
            .status()
            == 500
        {
            fails += 1;
        }
    }
    assert!((5..35).contains(&fails), "{fails} of 40");
    f.clear();
    f.set_latency(Duration::from_millis(150));
    let t = Instant::now();
    assert_eq!(
        http()
            .get(format!("{url}/{FOO}+3"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert!(t.elapsed() >= Duration::from_millis(150));
    f.clear();

    // Corrupted reads: 200 with bytes that fail the checksum.
    f.set_corrupt_reads(true);
    let b = http()
        .get(format!("{url}/{FOO}+3"))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(b.len(), 3);
    assert_ne!(&b[..], b"foo");
    f.clear();

    // Truncated body: the client sees an error, not a short 200 body.
    f.set_truncate_body(true);
    let r = http().get(format!("{url}/{FOO}+3")).send().await.unwrap();
    assert_eq!(r.headers()["content-length"], "3");
    assert!(r.bytes().await.is_err());
    f.clear();

    // Truncated index: no blank line at the end.
    f.set_truncate_index(true);
    let body = get_as(format!("{url}/index"), c.system_root_token())
        .await
        .1;
    assert_eq!(body, format!("{}\n", body.trim_end()));
    assert!(!body.ends_with("\n\n"));
    f.clear();

    // Malformed index: one bad line, then the end marker as usual.
    f.set_malformed_index(true);
    let body = get_as(format!("{url}/index"), c.system_root_token())
        .await
        .1;
    assert!(
        body.ends_with(&format!("{}\n\n", keep_testcluster::MALFORMED_INDEX_LINE)),
        "{body}"
    );
    f.clear();

    // Bandwidth: 3 bytes at 10 B/s take about 0.3 s.
    f.set_bandwidth(Some(10));
    let t = Instant::now();
    http()
        .get(format!("{url}/{FOO}+3"))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert!(
        t.elapsed() >= Duration::from_millis(250),
        "{:?}",
        t.elapsed()
    );
    f.clear();
}

/// A bandwidth limit is the service's link: concurrent transfers share it, in each
/// direction, as on a real network (per request, N uploads would get N times the rate).
#[tokio::test]
async fn bandwidth_is_shared_by_concurrent_requests() {
    let c = one_keepstore().await;
    let url = c.keepstores()[0].url.clone();
    let blocks: Vec<Vec<u8>> = (0..4u8).map(|i| vec![i; 500]).collect();
    let f = c.faults("keepstore0").unwrap();
    f.set_bandwidth(Some(5_000));
    // Four uploads of 500 bytes at once: 2,000 bytes through 5,000 B/s, about 0.4 s
    // (0.1 s if each had the whole rate).
    let t = Instant::now();
    let puts = blocks.iter().map(|b| {
        http()
            .put(format!("{url}/{}", Locator::of(b).hash()))
            .body(b.clone())
            .send()
    });
    for r in futures::future::join_all(puts).await {
        assert_eq!(r.unwrap().status(), 200);
    }
    let up = t.elapsed();
    assert!(up >= Duration::from_millis(350), "uploads took {up:?}");
    // The same four read back at once: the downlink is shared too.
    let t = Instant::now();
    let gets = blocks.iter().map(|b| {
        let get = http().get(format!("{url}/{}", Locator::of(b))).send();
        async move { get.await?.bytes().await }
    });
    for r in futures::future::join_all(gets).await {
        assert_eq!(r.unwrap().len(), 500);
    }
    let down = t.elapsed();
    assert!(
        down >= Duration::from_millis(350),
        "downloads took {down:?}"
    );
    assert!(down < Duration::from_secs(3), "downloads took {down:?}");
}

#[tokio::test]
async fn max_concurrent_and_stop_start() {
    let c = one_keepstore().await;
    let url = c.keepstores()[0].url.clone();
    let f = c.faults(&c.keepstores()[0].uuid).unwrap();
    f.set_max_concurrent(Some(1));
    f.set_latency(Duration::from_millis(800));
    let a = tokio::spawn({
        let url = url.clone();
        async move {
            http()
                .get(format!("{url}/{FOO}+3"))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let r = http().get(format!("{url}/{FOO}+3")).send().await.unwrap();
    assert_eq!(sb(r).await, (503, String::new()));
    assert_eq!(a.await.unwrap(), 404);
    f.clear();

    c.stop_keepstore(0).await.unwrap();
    let e = http()
        .get(format!("{url}/{FOO}+3"))
        .send()
        .await
        .unwrap_err();
    assert!(e.is_connect(), "{e}");
    c.start_keepstore(0).await.unwrap();
    assert_eq!(
        http()
            .get(format!("{url}/{FOO}+3"))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
}

#[tokio::test]
async fn request_log_records() {
    let c = TestCluster::builder().keepstores(1).start().await.unwrap();
    let url = c.keepstores()[0].url.clone();
    let tok = "secret-token";
    let r = http()
        .put(format!("{url}/{FOO}"))
        .bearer_auth(tok)
        .body("foo")
        .send()
        .await
        .unwrap();
    let signed = r.text().await.unwrap().trim().to_owned();
    let r = http()
        .get(format!("{url}/{signed}"))
        .bearer_auth(tok)
        .send()
        .await
        .unwrap();
    r.bytes().await.unwrap();
    let log = c.request_log();
    assert_eq!(log.len(), 2);
    assert_eq!(log[0].method, "PUT");
    assert_eq!(log[0].bytes, 3);
    assert_eq!(log[0].service, c.keepstores()[0].uuid);
    assert_eq!(log[1].path, format!("/{FOO}+3"));
    assert_eq!(log[1].status, 200);
    assert_eq!(log[1].bytes, 3);
    assert_eq!(log[1].token.as_deref(), Some(token_digest_of(tok).as_str()));
    assert_eq!(token_digest_of(tok).len(), 12);
    let _ = Locator::of(b"foo");
}

#[tokio::test]
async fn two_clusters_are_independent_and_controller_faults() {
    let a = TestCluster::builder()
        .cluster_id("aaaaa")
        .keepstores(1)
        .start()
        .await
        .unwrap();
    let b = TestCluster::builder()
        .cluster_id("bbbbb")
        .keepstores(1)
        .start()
        .await
        .unwrap();
    assert_ne!(a.signing_key(), b.signing_key());
    let r = http()
        .put(format!("{}/{FOO}", a.keepstores()[0].url))
        .bearer_auth(a.user_token())
        .body("foo")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(a.request_log().len(), 1);
    assert!(b.request_log().is_empty());
    // A locator signed by cluster a is refused by cluster b.
    c_put(&b).await;
    let signed = a.sign_locator(&Locator::of(b"foo"), "t");
    let r = http()
        .get(format!("{}/{}", b.keepstores()[0].url, signed.to_wire()))
        .bearer_auth("t")
        .send()
        .await
        .unwrap();
    assert_eq!(sb(r).await, (400, "invalid signature\n".into()));

    a.faults("controller").unwrap().fail_next(1, 502, None);
    let cl = crate::util::https(&a);
    let url = format!(
        "https://{}/arvados/v1/keep_services/accessible",
        a.api_host()
    );
    assert_eq!(cl.get(&url).send().await.unwrap().status(), 502);
    assert_eq!(cl.get(&url).send().await.unwrap().status(), 200);
    assert!(
        a.request_log()
            .iter()
            .any(|r| r.service == "controller" && r.status == 502)
    );
}

async fn c_put(c: &TestCluster) {
    let r = http()
        .put(format!("{}/{FOO}", c.keepstores()[0].url))
        .body("foo")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}
