//! Replicas and storage classes counted the way Keep counts them (issue 13), on
//! keep-testcluster: a volume that keeps two copies, a volume shared by two
//! keepstores, and a destination with `default` and `archive` classes. The same
//! shapes run against real keepstores in `upstream.rs`.

use std::collections::BTreeMap;

use keep_client::BlockHash;

use crate::util::{Pair, block, block_puts, builder};

/// Distinct blocks per volume UUID set on the destination.
async fn by_volume(p: &Pair) -> BTreeMap<BlockHash, Vec<String>> {
    p.dst.holdings_by_volume().await
}

/// One keepstore on a volume with `Replication: 2`, DefaultReplication 2: one PUT per
/// block is enough; a rerun sends nothing; `--verify` is satisfied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_volume_that_keeps_two_copies_counts_twice() {
    let p = Pair::with(
        builder("srcaa"),
        builder("dstbb")
            .keepstores(1)
            .replication(2)
            .volume_replication(0, 0, 2),
    )
    .await;
    for i in 0..20 {
        p.src.put_block(&block("r2", i, 700), 2).await.unwrap();
    }
    let r = p.rsync(&[]).await;
    r.assert_code(0);
    assert!(r.stdout.contains("by volume"), "{}", r.stdout);
    assert_eq!(block_puts(&p.dst).len(), 20, "one PUT per block");
    p.dst.clear_request_log();
    let r = p.rsync(&[]).await;
    r.assert_code(0);
    assert!(
        r.stdout.contains("to copy:             0 blocks"),
        "{}",
        r.stdout
    );
    assert!(block_puts(&p.dst).is_empty(), "the rerun sent blocks");
    p.rsync(&["--verify"]).await.assert_code(0);
    // Asking for 3 is refused before anything is read: the destination holds 2.
    let r = p.rsync(&["-replications", "3"]).await;
    r.assert_code(2);
    assert!(
        r.stderr.contains("can hold only 2 replicas"),
        "{}",
        r.stderr
    );
}

/// Two keepstores that mount one volume list its blocks twice; it is one replica.
/// Blocks already there are topped up on another volume, never on the shared one's
/// second keepstore.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_volume_is_one_replica() {
    let p = Pair::with(builder("srcaa"), builder("dstbb").shared_volume(0, 0, 1)).await;
    // 60 blocks: of the 30 not yet on the destination, about one in six has the two
    // keepstores that share the volume first in its probe order, and the shared volume
    // first in the second one's volume order; written at once, both would count the
    // one copy.
    let mut blocks = Vec::new();
    for i in 0..60 {
        let b = block("shared", i, 900);
        p.src.put_block(&b, 2).await.unwrap();
        blocks.push(b);
    }
    // Half are on the destination already, on the shared volume only.
    for b in &blocks[..30] {
        p.dst.put_block_on(0, b).await.unwrap();
    }
    let shared = p.dst.keepstores()[0].volumes[0].clone();
    assert!(p.dst.keepstores()[1].volumes.contains(&shared));
    let r = p.rsync(&[]).await;
    r.assert_code(0);
    assert!(
        r.stdout.contains("under-replicated:    30 blocks"),
        "{}",
        r.stdout
    );
    let held = by_volume(&p).await;
    for b in &blocks {
        let vols = &held[&BlockHash::of(b)];
        assert_eq!(vols.len(), 2, "{vols:?}");
    }
    // No top-up went to keepstore 1, which holds them through the shared volume.
    let ks1 = p.dst.keepstores()[1].uuid.clone();
    for (svc, hash) in block_puts(&p.dst) {
        let b = blocks[..30]
            .iter()
            .find(|b| BlockHash::of(b).to_hex() == hash);
        assert!(
            !(svc == ks1 && b.is_some()),
            "a top-up went to the shared volume"
        );
    }
    p.rsync(&["--verify"]).await.assert_code(0);
}

/// A destination with `default` and `archive` volumes on every keepstore: blocks go
/// to `default` volumes (the destination's default class, sent on every PUT), and
/// with `--storage-classes archive` to `archive` ones; each run's `--verify` checks
/// its own class.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storage_classes_decide_the_volumes() {
    let dst = |id: &str| {
        builder(id)
            .volumes_per_keepstore(2)
            .storage_class("default", true, 0)
            .storage_class("archive", false, 0)
            .volume_classes(0, 1, &["archive"])
            .volume_classes(1, 1, &["archive"])
            .volume_classes(2, 1, &["archive"])
    };
    let p = Pair::with(builder("srcaa"), dst("dstbb")).await;
    for i in 0..20 {
        p.src.put_block(&block("cls", i, 800), 2).await.unwrap();
    }
    p.rsync(&[]).await.assert_code(0);
    let archive: Vec<String> = p
        .dst
        .keepstores()
        .iter()
        .map(|k| k.volumes[1].clone())
        .collect();
    let held = by_volume(&p).await;
    assert_eq!(held.len(), 20);
    for (h, vols) in &held {
        assert_eq!(vols.len(), 2, "{h}: {vols:?}");
        assert!(
            vols.iter().all(|v| !archive.contains(v)),
            "{h} on an archive volume: {vols:?}"
        );
    }
    p.rsync(&["--verify"]).await.assert_code(0);
    // Not yet in archive: --verify of that class says so.
    let r = p.rsync(&["--verify", "--storage-classes", "archive"]).await;
    r.assert_code(1);
    assert!(r.stdout.contains("in class archive"), "{}", r.stdout);

    let p = Pair::with(builder("srcaa"), dst("dstcc")).await;
    for i in 0..20 {
        p.src.put_block(&block("arch", i, 800), 2).await.unwrap();
    }
    p.rsync(&["--storage-classes", "archive"])
        .await
        .assert_code(0);
    let archive: Vec<String> = p
        .dst
        .keepstores()
        .iter()
        .map(|k| k.volumes[1].clone())
        .collect();
    for (h, vols) in &by_volume(&p).await {
        assert_eq!(vols.len(), 2, "{h}: {vols:?}");
        assert!(vols.iter().all(|v| archive.contains(v)), "{h}: {vols:?}");
    }
    p.rsync(&["--verify", "--storage-classes", "archive"])
        .await
        .assert_code(0);
}
