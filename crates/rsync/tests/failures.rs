//! Failures: recorded and survived, or (when systematic or fatal) a clear exit 2.

use keep_client::BlockHash;

use crate::util::{Pair, block, block_puts, holdings, ks, probe, run, with_setting};

/// A block whose every source replica is corrupt fails; the others are copied; the
/// report counts it, --failed-list lists it, exit 1; nothing corrupt is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_are_recorded_and_the_run_goes_on() {
    let p = Pair::new().await;
    for i in 0..10 {
        p.src.put_block(&block("ok", i, 700), 2).await.unwrap();
    }
    let bad = block("bad", 0, 700);
    p.src.put_block(&bad, 2).await.unwrap();
    let h = BlockHash::of(&bad);
    for i in holdings(&p.src).await[&h].clone() {
        assert!(p.src.corrupt_block(i, &h).await);
    }
    let list = p.dir.path().join("failed.txt");
    let r = p
        .rsync(&["--failed-list", list.to_str().unwrap(), "--retries", "1"])
        .await;
    r.assert_code(1);
    assert!(
        r.stdout.contains("failed:              1 blocks"),
        "{}",
        r.stdout
    );
    assert_eq!(
        std::fs::read_to_string(&list).unwrap().trim(),
        format!("{}+700 bad-source-copy", h.to_hex())
    );
    let held = p.dst_holdings().await;
    assert_eq!(held.len(), 10);
    assert!(!held.contains_key(&h));
}

/// One replica corrupt: the other is used (checksum failover).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_replica_fails_over() {
    let p = Pair::new().await;
    let b = block("one-bad", 0, 4096);
    p.src.put_block(&b, 2).await.unwrap();
    let h = BlockHash::of(&b);
    let first = holdings(&p.src).await[&h][0];
    p.src.corrupt_block(first, &h).await;
    ks(&p.src, first).set_corrupt_reads(true);
    p.rsync(&[]).await.assert_code(0);
    assert!(p.dst_holdings().await.contains_key(&h));
}

/// Bytes corrupted on the way from a source keepstore that does not notice: the copy
/// reads without its own MD5 (the destination checks), so the destination refuses
/// them, and the checked re-read fails over to the good replica.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupted_in_transit_is_refused_and_read_again() {
    let p = Pair::new().await;
    let b = block("in-transit", 0, 4096);
    p.src.put_block(&b, 2).await.unwrap();
    let h = BlockHash::of(&b);
    // The replica the copy reads first: the first holder in probe order.
    let holders = holdings(&p.src).await[&h].clone();
    let first = probe(&p.src, &h)
        .into_iter()
        .find(|i| holders.contains(i))
        .unwrap();
    ks(&p.src, first).set_corrupt_reads(true);
    let run = p.rsync(&[]).await;
    run.assert_code(0);
    assert!(
        run.stderr.contains("destination rejected the data"),
        "{}",
        run.stderr
    );
    assert_eq!(p.dst_holdings().await[&h].len(), 2);
}

/// A wrong signing key: every read is refused the same way; the run stops early with
/// one clear line and exit 2, having written nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_signing_key_stops_early() {
    let p = Pair::new().await;
    for i in 0..20 {
        p.src.put_block(&block("key", i, 100), 1).await.unwrap();
    }
    let text = std::fs::read_to_string(&p.src_conf).unwrap();
    let wrong = with_setting(
        &text,
        "ARVADOS_BLOB_SIGNING_KEY",
        "thisisnotthekey0123456789",
    );
    std::fs::write(&p.src_conf, wrong).unwrap();
    let r = p.rsync(&[]).await;
    r.assert_code(2);
    assert!(r.stderr.contains("stopped early"), "{}", r.stderr);
    assert!(
        r.stderr.contains("permission") || r.stderr.contains("signature"),
        "{}",
        r.stderr
    );
    assert!(block_puts(&p.dst).is_empty());
}

/// An unreachable service from a services JSON: exit 2 naming it, before any write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_services_json_is_fatal() {
    let p = Pair::new().await;
    p.src.put_block(&block("u", 0, 10), 1).await.unwrap();
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let json = format!(
        r#"{{"items":[{{"uuid":"srcaa-bi6l4-000000000000009","service_host":"127.0.0.1","service_port":{port},"service_ssl_flag":false,"service_type":"disk","read_only":false}}]}}"#
    );
    let r = p
        .rsync(&["-src-keep-services-json", &json, "--retries", "1", "-q"])
        .await;
    r.assert_code(2);
    assert!(
        r.stderr.contains("srcaa-bi6l4-000000000000009") || r.stderr.contains(&port.to_string()),
        "{}",
        r.stderr
    );
    assert_eq!(r.stderr.trim().lines().count(), 1, "one line: {}", r.stderr);
    assert!(block_puts(&p.dst).is_empty());
}

/// A destination that cannot reach the replication level is reported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replication_beyond_destination() {
    let p = Pair::new().await;
    p.src.put_block(&block("r", 0, 10), 1).await.unwrap();
    let r = p.rsync(&["-replications", "4"]).await;
    r.assert_code(2);
    assert!(
        r.stderr.contains("can hold only 3 replicas"),
        "{}",
        r.stderr
    );

    // With one keepstore down, 3 replicas cannot be met: the block fails, exit 1,
    // and the report names the unreachable service.
    p.dst.stop_keepstore(1).await.unwrap();
    let r = p.rsync(&["-replications", "3", "--retries", "1"]).await;
    r.assert_code(1);
    assert!(
        r.stdout.contains("destination: unavailable"),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout.contains("unreachable: destination"),
        "{}",
        r.stdout
    );
}

/// Bad input: one clear line on stderr, exit 2, nothing written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_one_line_exit_2() {
    let p = Pair::new().await;
    p.src.put_block(&block("in", 0, 10), 1).await.unwrap();
    let src = p.src_conf.to_str().unwrap().to_string();
    let dst = p.dst_conf.to_str().unwrap().to_string();
    let missing = p.dir.path().join("nope.conf").display().to_string();
    let garbage = p.dir.path().join("garbage.conf");
    std::fs::write(
        &garbage,
        "ARVADOS_API_HOST=x\nthis line has no equals sign\n",
    )
    .unwrap();
    let garbage = garbage.display().to_string();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["-src", &src], "dst"),
        (vec!["-dst", &dst], "src"),
        (vec!["-src", &missing, "-dst", &dst], "nope.conf"),
        (vec!["-src", &garbage, "-dst", &dst], "garbage.conf:2"),
        (vec!["-src", &src, "-dst", &dst, "-prefix", "xyz"], "prefix"),
        (
            vec![
                "-src",
                &src,
                "-dst",
                &dst,
                "-prefix",
                "0123456789abcdef0123456789abcdef0",
            ],
            "prefix",
        ),
        (
            vec!["-src", &src, "-dst", &dst, "-replications", "0"],
            "replications",
        ),
        (
            vec!["-src", &src, "-dst", &dst, "-replications", "-1"],
            "replications",
        ),
        (
            vec![
                "-src",
                &src,
                "-dst",
                &dst,
                "-src-blob-signature-ttl",
                "soon",
            ],
            "ttl",
        ),
        (
            vec![
                "-src",
                &src,
                "-dst",
                &dst,
                "-src-keep-services-json",
                "{not json",
            ],
            "json",
        ),
        (vec!["-src", &src, "-dst", &src], "same cluster"),
        (
            vec!["-src", &src, "-dst", &dst, "--concurrency", "0"],
            "concurrency",
        ),
        (
            vec!["-src", &src, "-dst", &dst, "--bwlimit", "fast"],
            "bwlimit",
        ),
        (
            vec!["-src", &src, "-dst", &dst, "--no-such-flag"],
            "no-such-flag",
        ),
    ];
    for (args, needle) in cases {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let r = run(&args).await;
        assert_eq!(r.code, 2, "{args:?}: {}", r.stderr);
        assert_eq!(r.stderr.trim().lines().count(), 1, "{args:?}: {}", r.stderr);
        assert!(
            r.stderr.to_lowercase().contains(&needle.to_lowercase()),
            "{args:?}: stderr does not mention {needle:?}: {}",
            r.stderr
        );
    }
    assert!(block_puts(&p.dst).is_empty());
}
