//! The real-keepstore harness itself (`keep_testcluster::upstream`).

use keep_testcluster::upstream::{Upstream, Version, VolumeSpec};

#[tokio::test]
#[ignore = "needs the upstream Arvados binaries; scripts/test runs it when they are found"]
async fn upstream_harness_starts_both_versions() {
    let up = Upstream::require();
    for v in [Version::V3_2_1, Version::V2_7_4] {
        let c = up
            .cluster(v)
            .keepstores(2)
            .storage_class("default", true, 0)
            .storage_class("archive", false, 0)
            .volumes(vec![
                VolumeSpec::on(0).shared_with(1).replication(2),
                VolumeSpec::on(1).classes(&["archive"]),
            ])
            .start()
            .await
            .expect("starts");
        let auth = format!("Bearer {}", c.system_root_token());
        let m = keep_testcluster::upstream::http_request(
            c.real_keepstores()[1].port,
            "GET",
            "/mounts",
            &[("Authorization", &auth)],
            &[],
        )
        .await
        .unwrap();
        println!("{}: {}", v.as_str(), String::from_utf8_lossy(&m.body));
        assert_eq!(m.status, 200);
        let r = c.put(0, b"foo").await.unwrap();
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        assert_eq!(r.header("x-keep-replicas-stored"), Some("2"));
        assert_eq!(c.holdings().values().next().unwrap(), &vec![0, 1]);
        assert!(c.requests(0).iter().any(|r| r.method == "PUT"));
    }
}
