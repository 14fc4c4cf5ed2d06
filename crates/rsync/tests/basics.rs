//! The original tool's cases, placement, checkpointing, dry-run, verify, secrets.

use keep_client::BlockHash;

use crate::util::{Pair, block, block_puts, builder, probe};

/// 5 blocks on the source, 2 of them and 2 others on the destination: afterwards the
/// destination holds all 7, the 2 extra untouched, each copied block on the first R
/// services of its probe order; a second run sends nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn original_case_placement_and_second_run() {
    let p = Pair::new().await;
    let src_blocks: Vec<Vec<u8>> = (0..5).map(|i| block("orig", i, 1000 + i)).collect();
    for b in &src_blocks {
        p.src.put_block(b, 2).await.unwrap();
    }
    for b in &src_blocks[..2] {
        p.dst.put_block(b, 2).await.unwrap();
    }
    let extras: Vec<Vec<u8>> = (0..2).map(|i| block("extra", i, 77)).collect();
    for b in &extras {
        p.dst.put_block(b, 1).await.unwrap();
    }
    let before = p.dst_holdings().await;

    let r = p.rsync(&[]).await;
    r.assert_code(0);
    assert!(
        r.stdout.contains("copied:              3 blocks"),
        "{}",
        r.stdout
    );
    assert!(
        r.stderr.contains("copying data block 3 of 3"),
        "{}",
        r.stderr
    );

    let after = p.dst_holdings().await;
    assert_eq!(after.len(), 7);
    for b in &extras {
        let h = BlockHash::of(b);
        assert_eq!(after[&h], before[&h], "extra block untouched");
    }
    for b in &src_blocks[2..] {
        let h = BlockHash::of(b);
        let mut want: Vec<usize> = probe(&p.dst, &h).into_iter().take(2).collect();
        want.sort();
        let mut got = after[&h].clone();
        got.sort();
        assert_eq!(
            got, want,
            "block placed on the first 2 services of its probe order"
        );
    }

    p.dst.clear_request_log();
    let r = p.rsync(&[]).await;
    r.assert_code(0);
    assert!(block_puts(&p.dst).is_empty(), "second run wrote nothing");
    assert!(
        r.stdout.contains("to copy:             0 blocks"),
        "{}",
        r.stdout
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefix_limits_both_sides() {
    let p = Pair::new().await;
    let blocks: Vec<Vec<u8>> = (0..40).map(|i| block("pfx", i, 300)).collect();
    for b in &blocks {
        p.src.put_block(b, 1).await.unwrap();
    }
    let digit = BlockHash::of(&blocks[0]).to_hex()[..1].to_string();
    let r = p.rsync(&["-prefix", &digit]).await;
    r.assert_code(0);
    let held = p.dst_holdings().await;
    let want = blocks
        .iter()
        .filter(|b| BlockHash::of(b).to_hex().starts_with(&digit))
        .count();
    assert_eq!(held.len(), want);
    assert!(held.keys().all(|h| h.to_hex().starts_with(&digit)));

    // A prefix matching nothing: nothing to do, exit 0.
    let used: std::collections::BTreeSet<String> = blocks
        .iter()
        .map(|b| BlockHash::of(b).to_hex()[..2].to_string())
        .collect();
    let unused = (0..=255u8)
        .map(|x| format!("{x:02x}"))
        .find(|p| !used.contains(p))
        .unwrap();
    p.dst.clear_request_log();
    let r = p.rsync(&["-prefix", &unused]).await;
    r.assert_code(0);
    assert!(block_puts(&p.dst).is_empty());
    assert!(
        r.stdout.contains("to copy:             0 blocks"),
        "{}",
        r.stdout
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signatures_not_enforced_and_no_key() {
    let p = Pair::with(
        builder("srcaa").blob_signing(false),
        builder("dstbb").blob_signing(false),
    )
    .await;
    p.src.write_settings_file(&p.src_conf, false).unwrap();
    for i in 0..6 {
        p.src.put_block(&block("nosig", i, 500), 1).await.unwrap();
    }
    let r = p.rsync(&["-replications", "1"]).await;
    r.assert_code(0);
    assert_eq!(p.dst_holdings().await.len(), 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_run_writes_nothing_and_verify_finds_removed_block() {
    let p = Pair::new().await;
    let blocks: Vec<Vec<u8>> = (0..12).map(|i| block("dry", i, 2000)).collect();
    for b in &blocks {
        p.src.put_block(b, 2).await.unwrap();
    }
    let r = p.rsync(&["--dry-run"]).await;
    r.assert_code(0);
    assert!(block_puts(&p.dst).is_empty(), "dry run wrote");
    assert!(
        r.stdout.contains("to copy:             12 blocks"),
        "{}",
        r.stdout
    );
    assert!(r.stdout.contains("by leading hex digit"), "{}", r.stdout);

    p.rsync(&[]).await.assert_code(0);
    let r = p.rsync(&["--verify", "--verify-data"]).await;
    r.assert_code(0);
    assert!(
        r.stdout.contains("copies read back and verified: 24"),
        "{}",
        r.stdout
    );

    // Remove one block everywhere, and one replica of another.
    let gone = BlockHash::of(&blocks[3]);
    let thin = BlockHash::of(&blocks[4]);
    for i in 0..3 {
        p.dst.remove_block(i, &gone).await;
    }
    let holders = p.dst_holdings().await[&thin].clone();
    p.dst.remove_block(holders[0], &thin).await;
    let failed = p.dir.path().join("missing.txt");
    let r = p
        .rsync(&["--verify", "--failed-list", failed.to_str().unwrap()])
        .await;
    r.assert_code(1);
    assert!(r.stdout.contains("missing: 1"), "{}", r.stdout);
    assert!(r.stdout.contains("under-replicated: 1"), "{}", r.stdout);
    let list = std::fs::read_to_string(&failed).unwrap();
    assert!(list.contains(&format!("{}+2000", gone.to_hex())), "{list}");
    assert!(list.contains(&format!("{}+2000", thin.to_hex())), "{list}");
    assert!(block_puts(&p.dst).len() == 24, "verify wrote nothing");

    // A copy run repairs both, sending the thin block only to the service lacking it.
    p.dst.clear_request_log();
    p.rsync(&[]).await.assert_code(0);
    let puts = block_puts(&p.dst);
    assert_eq!(puts.len(), 3, "{puts:?}");
    assert_eq!(puts.iter().filter(|(_, h)| *h == thin.to_hex()).count(), 1);
    p.rsync(&["--verify"]).await.assert_code(0);
}

/// No token, key or signature in any output at the highest verbosity, and each
/// cluster only ever sees its own token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_never_printed_and_tokens_isolated() {
    let p = Pair::new().await;
    for i in 0..8 {
        p.src.put_block(&block("sec", i, 100), 2).await.unwrap();
    }
    // A failing block too, so error paths print.
    let bad = block("sec-bad", 0, 100);
    p.src.put_block(&bad, 1).await.unwrap();
    let holders = crate::util::holdings(&p.src).await[&BlockHash::of(&bad)].clone();
    p.src.corrupt_block(holders[0], &BlockHash::of(&bad)).await;

    for extra in [
        &["-vvv"][..],
        &["-vvv", "--json"][..],
        &["--verify", "--verify-data", "-vvv"][..],
    ] {
        let r = p.rsync(extra).await;
        for s in p.secrets() {
            assert!(
                !r.stdout.contains(&s) && !r.stderr.contains(&s),
                "a secret leaked with {extra:?}"
            );
        }
        for out in [&r.stdout, &r.stderr] {
            assert!(
                !out.contains("+A"),
                "a signature leaked with {extra:?}: {}",
                out.lines().find(|l| l.contains("+A")).unwrap()
            );
        }
    }
    crate::util::assert_tokens_isolated(&p);
}

fn proxy_services_json(c: &keep_testcluster::TestCluster) -> String {
    let (uuid, url) = c.proxy().expect("proxy running");
    let port: u16 = url.rsplit(':').next().unwrap().parse().unwrap();
    format!(
        r#"{{"items":[{{"uuid":"{uuid}","service_host":"127.0.0.1","service_port":{port},"service_ssl_flag":false,"service_type":"proxy","read_only":false}}]}}"#
    )
}

/// A source that only exposes a keepproxy is indexed and read through it, and a
/// destination keepproxy makes the replicas (§6.5, §6.6).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_keepproxies_on_both_sides() {
    let p = Pair::with(builder("srcaa").proxy(true), builder("dstbb").proxy(true)).await;
    for i in 0..15 {
        p.src.put_block(&block("proxy", i, 3000), 2).await.unwrap();
    }
    let (src_json, dst_json) = (proxy_services_json(&p.src), proxy_services_json(&p.dst));
    let r = p
        .rsync(&[
            "-src-keep-services-json",
            &src_json,
            "-dst-keep-services-json",
            &dst_json,
        ])
        .await;
    r.assert_code(0);
    let held = p.dst_holdings().await;
    assert_eq!(held.len(), 15);
    assert!(
        held.values().all(|v| v.len() >= 2),
        "the proxy wrote 2 replicas: {held:?}"
    );
    p.dst.clear_request_log();
    let r = p
        .rsync(&[
            "-src-keep-services-json",
            &src_json,
            "-dst-keep-services-json",
            &dst_json,
        ])
        .await;
    r.assert_code(0);
    assert!(
        block_puts(&p.dst).is_empty(),
        "second run through the proxy wrote"
    );
}

/// `--json`: NDJSON progress events, then one final report line; nothing else on stdout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_output_is_ndjson_with_a_final_report() {
    let p = Pair::new().await;
    for i in 0..5 {
        p.src.put_block(&block("json", i, 100), 1).await.unwrap();
    }
    let r = p.rsync(&["--json"]).await;
    r.assert_code(0);
    let lines: Vec<serde_json::Value> = r
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l}: {e}")))
        .collect();
    assert!(lines.iter().any(|v| v["event"] == "index"));
    let last = lines.last().unwrap();
    assert_eq!(last["event"], "report");
    assert_eq!(last["copied"]["blocks"], 5);
    assert_eq!(last["plan"]["src"]["blocks"], 5);
    assert_eq!(last["exit_code"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn version_and_bwlimit() {
    let r = crate::util::run(&["-version".to_string()]).await;
    r.assert_code(0);
    assert_eq!(
        r.stdout.trim(),
        format!("keep-rsync {}", env!("CARGO_PKG_VERSION"))
    );

    let p = Pair::new().await;
    for i in 0..8 {
        p.src
            .put_block(&block("bw", i, 256 * 1024), 1)
            .await
            .unwrap();
    }
    // 2 MiB at 1 MiB/s: at least about 1.5 s (the first second has no credit).
    let t = std::time::Instant::now();
    p.rsync(&["--bwlimit", "1M", "-replications", "1"])
        .await
        .assert_code(0);
    assert!(
        t.elapsed() >= std::time::Duration::from_millis(1500),
        "{:?}",
        t.elapsed()
    );
}
