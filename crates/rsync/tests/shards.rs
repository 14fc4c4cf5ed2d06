//! `-prefix` sharding (issue 6): the 16 shards `-prefix 0`..`-prefix f`, run as 16
//! separate keep-rsync processes at once against the same two clusters, copy exactly
//! what one full run copies into a second destination, no more and no less.

use std::collections::BTreeMap;

use keep_client::BlockHash;

use crate::util::{Pair, block, builder, holdings, report, run};

/// Replicas per block: the destinations have different cluster ids, hence different
/// service UUIDs and probe orders, so which services hold a block may differ; how many
/// hold it may not.
fn replicas(h: &BTreeMap<BlockHash, Vec<usize>>) -> BTreeMap<BlockHash, usize> {
    h.iter().map(|(k, v)| (*k, v.len())).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixteen_prefix_shards_equal_one_full_run() {
    // `p.dst` receives the 16 shards; `full` receives one unsharded run.
    let p = Pair::new().await;
    let full = builder("dstcc").start().await.unwrap();
    let full_conf = p.dir.path().join("full.conf");
    full.write_settings_file(&full_conf, true).unwrap();
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&full_conf, std::fs::Permissions::from_mode(0o600)).unwrap();
    }

    // 300 source blocks: every leading hex digit is represented many times.
    let blocks: Vec<Vec<u8>> = (0..300).map(|i| block("shard", i, 100 + i % 900)).collect();
    for b in &blocks {
        p.src.put_block(b, 2).await.unwrap();
    }
    // Both destinations start alike: 20 blocks already at full replication, 20 on one
    // service only (to be topped up), and 5 blocks the source does not have.
    for dst in [&p.dst, &full] {
        for b in &blocks[..20] {
            dst.put_block(b, 2).await.unwrap();
        }
        for b in &blocks[20..40] {
            dst.put_block(b, 1).await.unwrap();
        }
        for i in 0..5 {
            dst.put_block(&block("dst-only", i, 64), 1).await.unwrap();
        }
    }
    let hexes: Vec<BlockHash> = blocks.iter().map(|b| BlockHash::of(b)).collect();
    for d in "0123456789abcdef".chars() {
        assert!(
            hexes.iter().any(|h| h.to_string().starts_with(d)),
            "no source block starts with {d}"
        );
    }

    // 16 processes at once, one per prefix.
    let shard_runs = "0123456789abcdef".chars().map(|d| {
        let args: Vec<String> = vec![
            "-src".into(),
            p.src_conf.display().to_string(),
            "-dst".into(),
            p.dst_conf.display().to_string(),
            "-prefix".into(),
            d.to_string(),
            "--json".into(),
            "--concurrency".into(),
            "4".into(),
        ];
        async move { (d, run(&args).await) }
    });
    let shard_results = futures::future::join_all(shard_runs).await;
    let whole = run(&[
        "-src".into(),
        p.src_conf.display().to_string(),
        "-dst".into(),
        full_conf.display().to_string(),
        "--json".into(),
    ])
    .await;
    whole.assert_code(0);
    let whole_report = report(&whole.stdout);

    let mut copied = 0u64;
    let mut bytes = 0u64;
    let mut replicas_written = 0u64;
    for (d, r) in &shard_results {
        r.assert_code(0);
        let rep = report(&r.stdout);
        assert_eq!(rep["prefix"], d.to_string());
        copied += rep["copied"]["blocks"].as_u64().unwrap();
        bytes += rep["copied"]["bytes"].as_u64().unwrap();
        replicas_written += rep["replicas_written"].as_u64().unwrap();
    }
    assert_eq!(copied, whole_report["copied"]["blocks"].as_u64().unwrap());
    assert_eq!(bytes, whole_report["copied"]["bytes"].as_u64().unwrap());
    assert_eq!(
        replicas_written,
        whole_report["replicas_written"].as_u64().unwrap()
    );
    // 260 missing, 20 topped up.
    assert_eq!(copied, 280, "{whole_report}");

    let sharded = holdings(&p.dst).await;
    let single = holdings(&full).await;
    assert_eq!(replicas(&sharded), replicas(&single));
    assert_eq!(sharded.len(), 305);
    for h in &hexes {
        assert!(sharded[h].len() >= 2, "{h} has {:?}", sharded[h]);
    }

    // A shard never touched another shard's blocks: no PUT outside its prefix.
    for (d, r) in &shard_results {
        let rep = report(&r.stdout);
        let want = hexes
            .iter()
            .filter(|h| h.to_string().starts_with(*d))
            .count() as u64;
        assert_eq!(rep["plan"]["src"]["blocks"].as_u64().unwrap(), want, "{d}");
    }
}
