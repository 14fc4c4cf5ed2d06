//! Old clusters: a full migration from an Arvados 2.x source to a 3.x destination, and
//! from 3.x to 2.x, each verified block by block (`--verify --verify-data`).

use crate::util::{
    Pair, assert_all_copied, assert_no_block_sent_twice, assert_tokens_isolated, block, builder,
    figure,
};

async fn migrate(src_version: u8, dst_version: u8) {
    let p = Pair::with(
        builder("srcaa").arvados_version(src_version),
        builder("dstbb").arvados_version(dst_version),
    )
    .await;
    let sizes = [10usize, 100, 1000, 65_536, 1 << 20, 3 << 20, 5000];
    let mut n = 0;
    for (i, &size) in sizes.iter().cycle().take(40).enumerate() {
        p.src.put_block(&block("old", i, size), 2).await.unwrap();
        n += 1;
    }
    // The empty block (2.x needs `Content-Length: 0` on its PUT).
    p.src.put_block(b"", 2).await.unwrap();
    n += 1;
    // Some already on the destination, one of them on one service only.
    p.dst
        .put_block(&block("old", 0, sizes[0]), 2)
        .await
        .unwrap();
    p.dst
        .put_block(&block("old", 1, sizes[1]), 1)
        .await
        .unwrap();
    p.rsync(&[]).await.assert_code(0);
    assert_all_copied(&p, 2).await;
    let r = p.rsync(&["--verify", "--verify-data"]).await;
    r.assert_code(0);
    assert!(
        r.stdout.contains("copies read back and verified"),
        "{}",
        r.stdout
    );
    let r = p.rsync(&[]).await;
    r.assert_code(0);
    assert!(
        r.stdout.contains("to copy:             0 blocks"),
        "{}",
        r.stdout
    );
    assert_no_block_sent_twice(&p.dst);
    assert_tokens_isolated(&p);
    figure(
        &format!("Arvados {src_version}.x source to {dst_version}.x destination"),
        &format!("{n} blocks of 0 B to 3 MiB, 2 already there"),
        "all copied at 2 replicas, --verify --verify-data exit 0, second run copies 0",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn from_arvados_2_to_3() {
    migrate(2, 3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn from_arvados_3_to_2() {
    migrate(3, 2).await;
}
