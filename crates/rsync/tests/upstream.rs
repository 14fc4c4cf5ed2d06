//! keep-rsync against real Arvados keepstores (3.2.1 and 2.7.4, built from the
//! upstream source) and the original Go keep-rsync: servers and a placement oracle
//! that nobody on this project wrote (issue 12).
//!
//! These tests are `#[ignore]`d so that a bare `cargo test` works without the
//! binaries; `scripts/test` runs them (`-- --ignored upstream`) whenever
//! `keep_testcluster::upstream::Upstream::find` finds the binaries, and says so when
//! it does not.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use keep_client::BlockHash;
use keep_testcluster::upstream::{RealCluster, RealClusterBuilder, Upstream, UuidStyle, Version};

use crate::util::{Run, block, run, run_program};

/// A real cluster with its settings file and KeepServiceList.
pub(crate) struct Real {
    pub(crate) c: RealCluster,
    pub(crate) conf: PathBuf,
    pub(crate) json: String,
}

pub(crate) async fn real(dir: &Path, name: &str, b: RealClusterBuilder, with_key: bool) -> Real {
    let c = b.start().await.expect("real keepstores start");
    let conf = dir.join(format!("{name}.conf"));
    c.write_settings_file(&conf, with_key).unwrap();
    let json = c.services_json();
    Real { c, conf, json }
}

/// A source (`srcaa`) and a destination (`dstbb`) of three real keepstores each,
/// both settings files with their signing keys.
pub(crate) async fn real_pair(
    up: &Upstream,
    dir: &Path,
    src_v: Version,
    dst_v: Version,
) -> (Real, Real) {
    (
        real(dir, "src", up.cluster(src_v).cluster_id("srcaa"), true).await,
        real(dir, "dst", up.cluster(dst_v).cluster_id("dstbb"), true).await,
    )
}

/// `-src ... -dst ...` with both KeepServiceLists and the values no discovery
/// document can give (the Go tool needs the same).
pub(crate) fn real_args(src: &Real, dst: &Real, replicas: u32, extra: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = vec![
        "-src".into(),
        src.conf.display().to_string(),
        "-dst".into(),
        dst.conf.display().to_string(),
        "-src-keep-services-json".into(),
        src.json.clone(),
        "-dst-keep-services-json".into(),
        dst.json.clone(),
        "-src-blob-signature-ttl".into(),
        "336h".into(),
        "-replications".into(),
        replicas.to_string(),
    ];
    v.extend(extra.iter().map(|s| s.to_string()));
    v
}

/// Seeds `n` distinct blocks (sizes of at least 12 bytes keep them distinct) on the source's disks, each on the volumes of keepstores
/// `k` and `k+1` (mod the count), sizes cycling through `sizes`.
fn seed(src: &RealCluster, tag: &str, n: usize, sizes: &[usize]) -> Vec<Vec<u8>> {
    let vols = src.volumes().len();
    (0..n)
        .map(|i| {
            let data = block(tag, i, sizes[i % sizes.len()]);
            src.write_on_volume(i % vols, &data, None).unwrap();
            src.write_on_volume((i + 1) % vols, &data, None).unwrap();
            data
        })
        .collect()
}

/// The hashes of `blocks` each held by exactly `replicas` keepstores of `dst`.
fn assert_replicas(dst: &RealCluster, blocks: &[Vec<u8>], replicas: usize) {
    let held = dst.holdings();
    for b in blocks {
        let h = BlockHash::of(b);
        let n = held.get(&h).map_or(0, Vec::len);
        assert_eq!(n, replicas, "block {h} on {n} keepstores, want {replicas}");
    }
}

/// The first `n` keepstores of `c` in Go's probe order (`RootSorter`) for `h`:
/// the services keep-balance wants the block on.
fn go_first(c: &RealCluster, h: &BlockHash, n: usize) -> Vec<usize> {
    let uuids: Vec<&str> = c
        .real_keepstores()
        .iter()
        .map(|k| k.uuid.as_str())
        .collect();
    let mut v: Vec<usize> = keep_client::rendezvous::probe_order(h, &uuids)
        .into_iter()
        .take(n)
        .collect();
    v.sort_unstable();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the upstream Arvados binaries; scripts/test runs it when they are found"]
async fn upstream_real_to_real_rerun_sends_nothing_and_verifies() {
    let up = Upstream::require();
    let dir = tempfile::tempdir().unwrap();
    let (src, dst) = real_pair(&up, dir.path(), Version::V3_2_1, Version::V3_2_1).await;
    let sizes = [12usize, 100, 4096, 65_536, 65_537, 1 << 20, 3 << 20];
    let blocks = seed(&src.c, "r2r", 40, &sizes);
    // Two already on the destination, one of them on one keepstore only.
    dst.c.write_on_volume(0, &blocks[0], None).unwrap();
    dst.c.write_on_volume(1, &blocks[0], None).unwrap();
    dst.c.write_on_volume(2, &blocks[1], None).unwrap();

    let r = run(&real_args(&src, &dst, 2, &[])).await;
    r.assert_code(0);
    assert_replicas(&dst.c, &blocks, 2);
    let puts = dst.c.block_puts();
    assert_eq!(puts, 77, "PUTs for 38 new blocks at 2 and one top-up");

    // A rerun copies nothing: the real keepstores log no further PUT.
    let r = run(&real_args(&src, &dst, 2, &[])).await;
    r.assert_code(0);
    assert!(
        r.stdout.contains("to copy:             0 blocks"),
        "{}",
        r.stdout
    );
    assert_eq!(dst.c.block_puts(), puts, "the rerun sent blocks again");

    let r = run(&real_args(&src, &dst, 2, &["--verify"])).await;
    r.assert_code(0);
    assert!(!r.stderr.contains("Start copying"), "{}", r.stderr);
    let r = run(&real_args(
        &src,
        &dst,
        2,
        &[
            "--verify",
            "--verify-data",
            "--dst-blob-signature-ttl",
            "336h",
        ],
    ))
    .await;
    r.assert_code(0);
    assert!(
        r.stdout.contains("copies read back and verified: 80"),
        "{}",
        r.stdout
    );
    assert!(!r.stdout.contains("(0 B/s)"), "{}", r.stdout);
    assert_eq!(dst.c.block_puts(), puts);
}

/// The API host in the settings files (`127.0.0.1:1`) is never contacted when the
/// flags give what discovery would: nothing listens there, and the run succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the upstream Arvados binaries; scripts/test runs it when they are found"]
async fn upstream_needs_no_api_server_when_flags_give_the_values() {
    let up = Upstream::require();
    let dir = tempfile::tempdir().unwrap();
    let (src, dst) = real_pair(&up, dir.path(), Version::V3_2_1, Version::V3_2_1).await;
    let blocks = seed(&src.c, "noapi", 5, &[10, 1000]);
    let r = run(&real_args(&src, &dst, 2, &["-v"])).await;
    r.assert_code(0);
    assert!(!r.stderr.contains("127.0.0.1:1"), "{}", r.stderr);
    assert_replicas(&dst.c, &blocks, 2);

    // Without -replications there is no discovery document to ask: one clear line.
    let mut args = real_args(&src, &dst, 2, &[]);
    let i = args.iter().position(|a| a == "-replications").unwrap();
    args.drain(i..i + 2);
    let r = run(&args).await;
    r.assert_code(2);
    assert!(r.stderr.contains("-replications"), "{}", r.stderr);
    assert_eq!(r.stderr.trim().lines().count(), 1, "{}", r.stderr);
}

/// Between versions. Block reads are signed for a random token made for the run
/// (the SystemRootToken goes only with /index and /mounts, issue 14): that real 3.2.1
/// and 2.7.4 keepstores serve them is what this checks too.
async fn across(src_v: Version, dst_v: Version) {
    let up = Upstream::require();
    let dir = tempfile::tempdir().unwrap();
    let (src, dst) = real_pair(&up, dir.path(), src_v, dst_v).await;
    let mut blocks = seed(&src.c, "x", 20, &[12, 100, 70_000, 1 << 20]);
    // The empty block too (a 2.x keepstore wants `Content-Length: 0` on its PUT).
    src.c.write_on_volume(0, b"", None).unwrap();
    blocks.push(Vec::new());
    run(&real_args(&src, &dst, 2, &[])).await.assert_code(0);
    assert_replicas(&dst.c, &blocks, 2);
    run(&real_args(
        &src,
        &dst,
        2,
        &[
            "--verify",
            "--verify-data",
            "--dst-blob-signature-ttl",
            "336h",
        ],
    ))
    .await
    .assert_code(0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the upstream Arvados binaries; scripts/test runs it when they are found"]
async fn upstream_from_2_7_4_to_3_2_1() {
    across(Version::V2_7_4, Version::V3_2_1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the upstream Arvados binaries; scripts/test runs it when they are found"]
async fn upstream_from_3_2_1_to_2_7_4() {
    across(Version::V3_2_1, Version::V2_7_4).await;
}

/// keep-testcluster on one side, real keepstores on the other, both ways.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the upstream Arvados binaries; scripts/test runs it when they are found"]
async fn upstream_testcluster_to_real_and_back() {
    let up = Upstream::require();
    let dir = tempfile::tempdir().unwrap();
    let test = crate::util::builder("tstaa").start().await.unwrap();
    let test_conf = dir.path().join("test.conf");
    test.write_settings_file(&test_conf, true).unwrap();
    let realc = real(
        dir.path(),
        "real",
        up.cluster(Version::V3_2_1).cluster_id("realb"),
        true,
    )
    .await;
    let mut blocks = Vec::new();
    for i in 0..20 {
        let b = block("t2r", i, [5, 5000, 100_000][i % 3]);
        test.put_block(&b, 2).await.unwrap();
        blocks.push(b);
    }
    let to_real = |extra: &[&str]| {
        let mut v: Vec<String> = vec![
            "-src".into(),
            test_conf.display().to_string(),
            "-dst".into(),
            realc.conf.display().to_string(),
            "-dst-keep-services-json".into(),
            realc.json.clone(),
            "-replications".into(),
            "2".into(),
        ];
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };
    run(&to_real(&[])).await.assert_code(0);
    assert_replicas(&realc.c, &blocks, 2);
    run(&to_real(&["--verify"])).await.assert_code(0);

    // And back, into a fresh test cluster.
    let back = crate::util::builder("tstcc").start().await.unwrap();
    let back_conf = dir.path().join("back.conf");
    back.write_settings_file(&back_conf, true).unwrap();
    let args: Vec<String> = vec![
        "-src".into(),
        realc.conf.display().to_string(),
        "-dst".into(),
        back_conf.display().to_string(),
        "-src-keep-services-json".into(),
        realc.json.clone(),
        "-src-blob-signature-ttl".into(),
        "336h".into(),
    ];
    run(&args).await.assert_code(0);
    let held = crate::util::holdings(&back).await;
    for b in &blocks {
        assert_eq!(held.get(&BlockHash::of(b)).map_or(0, Vec::len), 2);
    }
}

/// A source replica that is corrupt on disk, below and above 64 KiB (a real 3.x
/// keepstore answers 502 for the first, and `200` then a closed connection after
/// 64 KiB for the second): each block is copied from its good replica. A block with
/// no good replica fails, and the report says the stored copies are bad.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the upstream Arvados binaries; scripts/test runs it when they are found"]
async fn upstream_corrupt_source_replicas() {
    let up = Upstream::require();
    let dir = tempfile::tempdir().unwrap();
    let (src, dst) = real_pair(&up, dir.path(), Version::V3_2_1, Version::V3_2_1).await;
    let small = block("corrupt", 0, 1000);
    let large = block("corrupt", 1, 300_000);
    let hopeless = block("corrupt", 2, 2000);
    let hopeless_large = block("corrupt", 3, 200_000);
    let uuids: Vec<&str> = src
        .c
        .real_keepstores()
        .iter()
        .map(|k| k.uuid.as_str())
        .collect();
    for b in [&small, &large, &hopeless, &hopeless_large] {
        // On the first two keepstores in probe order, so the first read meets the bad one.
        let order = keep_client::rendezvous::probe_order(&BlockHash::of(b), &uuids);
        for &k in &order[..2] {
            src.c.write_on_volume(k, b, None).unwrap();
        }
        let h = BlockHash::of(b);
        assert!(src.c.corrupt_on_volume(order[0], &h));
        if std::ptr::eq(b, &hopeless) || std::ptr::eq(b, &hopeless_large) {
            assert!(src.c.corrupt_on_volume(order[1], &h));
        }
    }
    let failed = dir.path().join("failed.txt");
    let r = run(&real_args(
        &src,
        &dst,
        1,
        &["--failed-list", failed.to_str().unwrap(), "--retries", "1"],
    ))
    .await;
    r.assert_code(1);
    let held = dst.c.holdings_by_volume();
    for good in [&small, &large] {
        assert!(held.contains_key(&BlockHash::of(good)), "{}", r.stdout);
    }
    // What the destination stores hashes right (the destination checks; so do we).
    for v in 0..dst.c.volumes().len() {
        for (h, _) in dst.c.blocks_on_volume(v) {
            let data = std::fs::read(
                dst.c.volumes()[v]
                    .root
                    .join(&h.to_hex()[..3])
                    .join(h.to_hex()),
            )
            .unwrap();
            assert_eq!(BlockHash::of(&data), h);
        }
    }
    let list = std::fs::read_to_string(&failed).unwrap();
    assert_eq!(list.lines().count(), 2, "{list}");
    assert!(
        r.stdout.contains("bad stored copy"),
        "the report names the bad stored copies: {}",
        r.stdout
    );
}

/// The placement oracle: the same source copied by the original Go keep-rsync and by
/// keep-rsync into two destinations that publish the same service UUIDs must put
/// every block on the same UUIDs (`keep-protocol.md` §4.1, §13.3).
async fn placement_matches_go(style: UuidStyle, uuid_len: usize) {
    let up = Upstream::require();
    let dir = tempfile::tempdir().unwrap();
    let src = real(
        dir.path(),
        "src",
        up.cluster(Version::V3_2_1).cluster_id("srcaa"),
        true,
    )
    .await;
    let blocks = seed(&src.c, "place", 120, &[10, 3000]);
    let go_dst = real(
        dir.path(),
        "godst",
        up.cluster(Version::V3_2_1)
            .cluster_id("dstbb")
            .keepstores(4)
            .uuids(style),
        false,
    )
    .await;
    let uuids: Vec<String> = go_dst
        .c
        .real_keepstores()
        .iter()
        .map(|k| k.uuid.clone())
        .collect();
    assert!(uuids.iter().all(|u| u.len() == uuid_len), "{uuids:?}");
    let our_dst = real(
        dir.path(),
        "ourdst",
        up.cluster(Version::V3_2_1)
            .cluster_id("dstbb")
            .keepstores(4)
            .uuids(UuidStyle::Given(uuids.clone())),
        false,
    )
    .await;

    let go: Run = run_program(
        &up.keep_rsync_go(),
        &[
            "-src".to_string(),
            src.conf.display().to_string(),
            "-dst".to_string(),
            go_dst.conf.display().to_string(),
            "-src-keep-services-json".to_string(),
            src.json.clone(),
            "-dst-keep-services-json".to_string(),
            go_dst.json.clone(),
            "-replications".to_string(),
            "2".to_string(),
            "-src-blob-signature-ttl".to_string(),
            "336h".to_string(),
        ],
    )
    .await;
    go.assert_code(0);
    run(&real_args(&src, &our_dst, 2, &[])).await.assert_code(0);

    let by_uuid = |c: &RealCluster| -> BTreeMap<BlockHash, Vec<String>> {
        c.holdings()
            .into_iter()
            .map(|(h, ks)| {
                let mut u: Vec<String> = ks.iter().map(|&k| uuids[k].clone()).collect();
                u.sort();
                (h, u)
            })
            .collect()
    };
    let (theirs, ours) = (by_uuid(&go_dst.c), by_uuid(&our_dst.c));
    assert_eq!(theirs.len(), blocks.len());
    let same = blocks
        .iter()
        .filter(|b| theirs.get(&BlockHash::of(b)) == ours.get(&BlockHash::of(b)))
        .count();
    assert_eq!(
        same,
        blocks.len(),
        "{same} of {} blocks on the same services as the Go tool put them ({uuid_len}-char UUIDs)",
        blocks.len()
    );
    // And those are the first two in Go's probe order (what keep-balance wants).
    for b in &blocks {
        let h = BlockHash::of(b);
        assert_eq!(our_dst.c.holdings()[&h], go_first(&our_dst.c, &h, 2));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the upstream Arvados binaries; scripts/test runs it when they are found"]
async fn upstream_placement_matches_go_keep_rsync_27_char_uuids() {
    placement_matches_go(UuidStyle::Standard, 27).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the upstream Arvados binaries; scripts/test runs it when they are found"]
async fn upstream_placement_matches_go_keep_rsync_28_char_uuids() {
    placement_matches_go(UuidStyle::ConfigDerived, 28).await;
}

/// Issue 13 on real keepstores: a volume with `Replication: 2` (one PUT per block,
/// rerun sends nothing, `--verify` exit 0), a volume shared by two keepstores
/// (`AccessViaHosts`: one replica), and `default` / `archive` classes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the upstream Arvados binaries; scripts/test runs it when they are found"]
async fn upstream_replication_2_volume_shared_volume_and_classes() {
    use keep_testcluster::upstream::VolumeSpec;
    let up = Upstream::require();
    let dir = tempfile::tempdir().unwrap();
    let src = real(
        dir.path(),
        "src",
        up.cluster(Version::V3_2_1).cluster_id("srcaa"),
        true,
    )
    .await;
    let blocks = seed(&src.c, "i13", 40, &[100, 5000, 70_000]);

    // One keepstore, one volume that keeps two copies.
    let r2 = real(
        dir.path(),
        "r2",
        up.cluster(Version::V3_2_1)
            .cluster_id("dstr2")
            .keepstores(1)
            .volumes(vec![VolumeSpec::on(0).replication(2)]),
        false,
    )
    .await;
    run(&real_args(&src, &r2, 2, &[])).await.assert_code(0);
    assert_eq!(r2.c.block_puts(), blocks.len(), "one PUT per block");
    let r = run(&real_args(&src, &r2, 2, &[])).await;
    r.assert_code(0);
    assert_eq!(r2.c.block_puts(), blocks.len(), "the rerun sent blocks");
    run(&real_args(&src, &r2, 2, &["--verify"]))
        .await
        .assert_code(0);

    // Three keepstores; the first two mount one volume (and the second its own too).
    let sh = real(
        dir.path(),
        "sh",
        up.cluster(Version::V3_2_1)
            .cluster_id("dstsh")
            .volumes(vec![
                VolumeSpec::on(0).shared_with(1),
                VolumeSpec::on(1),
                VolumeSpec::on(2),
            ]),
        false,
    )
    .await;
    for b in &blocks[..20] {
        sh.c.write_on_volume(0, b, None).unwrap();
    }
    run(&real_args(&src, &sh, 2, &[])).await.assert_code(0);
    let held = sh.c.holdings_by_volume();
    for b in &blocks {
        let vols = &held[&BlockHash::of(b)];
        assert_eq!(vols.len(), 2, "on volumes {vols:?}");
    }
    run(&real_args(&src, &sh, 2, &["--verify"]))
        .await
        .assert_code(0);

    // Classes: every keepstore has a default and an archive volume.
    let classes = |id: &str| {
        up.cluster(Version::V3_2_1)
            .cluster_id(id)
            .storage_class("default", true, 0)
            .storage_class("archive", false, 0)
            .volumes(
                (0..3)
                    .flat_map(|k| [VolumeSpec::on(k), VolumeSpec::on(k).classes(&["archive"])])
                    .collect(),
            )
    };
    for (id, extra, class) in [
        ("dstcd", &[][..], "default"),
        ("dstca", &["--storage-classes", "archive"][..], "archive"),
    ] {
        let c = real(dir.path(), id, classes(id), false).await;
        run(&real_args(&src, &c, 2, extra)).await.assert_code(0);
        let archive = |v: usize| !c.c.volumes()[v].spec.classes.is_empty();
        for (h, vols) in c.c.holdings_by_volume() {
            assert_eq!(vols.len(), 2, "{h} on {vols:?}");
            assert!(
                vols.iter().all(|&v| archive(v) == (class == "archive")),
                "{h} not only on {class} volumes: {vols:?}"
            );
        }
        let mut verify = vec!["--verify"];
        verify.extend_from_slice(extra);
        run(&real_args(&src, &c, 2, &verify)).await.assert_code(0);
    }
}
