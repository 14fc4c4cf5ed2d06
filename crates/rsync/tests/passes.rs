//! `--shard I/N`, `keep-rsync merge-reports` and `--max-plan-memory` passes (issue
//! 17): N shards copy exactly what one run copies, their reports add up to its
//! report, and a plan too big for its memory budget runs as passes that reach the
//! same totals.

use std::collections::BTreeMap;
use std::path::PathBuf;

use keep_client::BlockHash;

use crate::util::{
    Pair, assert_no_block_sent_twice, block, builder, figure, holdings, report, run,
};

/// Settings for a second destination cluster like `p.dst` (same cluster id, hence
/// the same service UUIDs and probe orders: placements must come out identical).
async fn twin(p: &Pair) -> (keep_testcluster::TestCluster, PathBuf) {
    let c = builder("dstbb").start().await.unwrap();
    let conf = p.dir.path().join("twin.conf");
    c.write_settings_file(&conf, true).unwrap();
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&conf, std::fs::Permissions::from_mode(0o600)).unwrap();
    (c, conf)
}

fn args(src: &std::path::Path, dst: &std::path::Path, extra: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = vec![
        "-src".into(),
        src.display().to_string(),
        "-dst".into(),
        dst.display().to_string(),
    ];
    v.extend(extra.iter().map(|s| (*s).to_owned()));
    v
}

/// 3 shards (not a power of 16: ranges that need 2- and 3-digit prefixes) copy
/// exactly what one run copies, each block once, onto the same services; their
/// reports merge into the single run's numbers with exit 0, and a missing shard
/// makes the merge say so and exit 2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_shards_add_up_to_one_run() {
    let p = Pair::new().await;
    let blocks: Vec<Vec<u8>> = (0..240).map(|i| block("sh3", i, 200 + i % 700)).collect();
    for b in &blocks {
        p.src.put_block(b, 1).await.unwrap();
    }
    let (twin, twin_conf) = twin(&p).await;
    let single = run(&args(&p.src_conf, &twin_conf, &["--json"])).await;
    single.assert_code(0);
    let single = report(&single.stdout);

    let dir = p.dir.path();
    let runs = (0..3).map(|i| {
        let file = dir.join(format!("report-{i}.json"));
        let a = args(
            &p.src_conf,
            &p.dst_conf,
            &[
                "--shard",
                &format!("{i}/3"),
                "-q",
                "--report",
                file.to_str().unwrap(),
            ],
        );
        async move { run(&a).await }
    });
    for r in futures::future::join_all(runs).await {
        r.assert_code(0);
    }
    assert_eq!(holdings(&p.dst).await, holdings(&twin).await);
    assert_no_block_sent_twice(&p.dst);

    let files: Vec<String> = (0..3)
        .map(|i| dir.join(format!("report-{i}.json")).display().to_string())
        .collect();
    let mut merge_args = vec!["merge-reports".to_owned(), "--json".to_owned()];
    merge_args.extend(files.iter().cloned());
    let merged = run(&merge_args).await;
    merged.assert_code(0);
    let m: serde_json::Value = serde_json::from_str(merged.stdout.trim()).unwrap();
    for k in ["copied", "failed"] {
        assert_eq!(m[k], single[k], "{k}: {m}");
    }
    for k in ["src", "to_copy", "missing"] {
        assert_eq!(m["plan"][k], single["plan"][k], "plan.{k}: {m}");
    }
    assert_eq!(m["replicas_written"], single["replicas_written"]);
    assert_eq!(m["shards"], 3);
    assert_eq!(m["problems"].as_array().unwrap().len(), 0, "{m}");

    // Shard 1's report lost: not done.
    std::fs::remove_file(&files[1]).unwrap();
    let mut partial = vec!["merge-reports".to_owned()];
    partial.extend([files[0].clone(), files[2].clone()]);
    let r = run(&partial).await;
    r.assert_code(2);
    assert!(
        r.stdout.contains("1 of 3 shards have no report: 1"),
        "{}",
        r.stdout
    );
    figure(
        "--shard i/3 and merge-reports",
        "240 blocks, 3 shard processes at once vs one process into an identical cluster",
        "identical destination holdings, no block sent twice, merged report = single report (exit 0); a missing shard: exit 2",
    );
}

/// `--max-plan-memory` far below the plan's size: the dry run is split into passes,
/// each plan stays under the budget, and the totals are those of one pass; then the
/// copy in passes puts every block where one run would.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passes_fit_the_plan_in_its_budget() {
    const N: u64 = 200_000;
    let p = Pair::with(
        builder("srcaa").synthetic_blocks(N, 7),
        builder("dstbb").synthetic_blocks(N / 2, 7),
    )
    .await;
    let one = run(&args(&p.src_conf, &p.dst_conf, &["--dry-run", "--json"])).await;
    one.assert_code(0);
    let one = report(&one.stdout);
    assert_eq!(one["passes"], 1);
    let budget: u64 = 1 << 20;
    let split = run(&args(
        &p.src_conf,
        &p.dst_conf,
        &["--dry-run", "--json", "--max-plan-memory", "1M"],
    ))
    .await;
    split.assert_code(0);
    let split = report(&split.stdout);
    let passes = split["passes"].as_u64().unwrap();
    assert!(passes > 1, "{split}");
    assert_eq!(split["passes_done"], passes);
    let largest = split["plan_bytes"].as_u64().unwrap();
    assert!(largest <= budget, "largest plan {largest} B > {budget} B");
    let whole = one["plan_bytes"].as_u64().unwrap();
    assert!(whole > budget, "one pass took only {whole} B");
    for k in ["src", "dst", "present", "missing", "to_copy"] {
        assert_eq!(split["plan"][k], one["plan"][k], "plan.{k}");
    }
    let by_digit = |r: &serde_json::Value| r["plan"]["by_digit"].clone();
    assert_eq!(by_digit(&split), by_digit(&one));
    figure(
        "--max-plan-memory 1M on a 200,000-block dry run",
        "source 200,000 blocks, destination 100,000 of them",
        &format!("{passes} passes, largest plan {largest} B (one pass: {whole} B); same totals"),
    );
}

/// A copy in passes: every block lands where one run puts it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_in_passes_lands_like_one_run() {
    let p = Pair::new().await;
    for i in 0..6000 {
        p.src.put_block(&block("pass", i, 64), 1).await.unwrap();
    }
    let (twin, twin_conf) = twin(&p).await;
    run(&args(&p.src_conf, &twin_conf, &["-q"]))
        .await
        .assert_code(0);
    let r = run(&args(
        &p.src_conf,
        &p.dst_conf,
        &["--json", "--max-plan-memory", "350K"],
    ))
    .await;
    r.assert_code(0);
    let rep = report(&r.stdout);
    assert!(rep["passes"].as_u64().unwrap() > 1, "{rep}");
    assert_eq!(rep["copied"]["blocks"], 6000);
    let a: BTreeMap<BlockHash, Vec<usize>> = holdings(&p.dst).await;
    assert_eq!(a, holdings(&twin).await);
    assert_no_block_sent_twice(&p.dst);
}
