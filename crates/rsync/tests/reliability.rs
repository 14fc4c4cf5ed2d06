//! Reliability (issue 5): crash and resume, source, destination and index faults,
//! and load. Every scenario is seeded (`KEEP_RSYNC_SEED`, printed) and sized for CI;
//! `KEEP_RSYNC_FULL=1` runs the full-size versions. Each prints a `FIGURE` line
//! (collected by `scripts/reliability` into the table of RELIABILITY.md).

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use keep_client::BlockHash;
use keep_testcluster::MALFORMED_INDEX_LINE;

use crate::util::{
    Pair, Rng, args, assert_all_copied, assert_no_block_sent_twice, assert_tokens_isolated, block,
    block_puts, builder, child_output, count_requests, figure, full, holdings, is_admin_path,
    is_index_path, ks, probe, seed, spawn, watch_peak_rss,
};

/// Waits until the destination logged `n` successful block writes (or `limit` passed).
async fn wait_for_puts(p: &Pair, n: usize, limit: Duration) {
    let t = Instant::now();
    while block_puts(&p.dst).len() < n && t.elapsed() < limit {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Mixed sizes: mostly up to 64 KiB, a few large ones (CI: 3 of 1-4 MiB; full: 2,000
/// blocks of which 8 are 4-64 MiB, one exactly 64 MiB).
fn mixed_blocks(rng: &mut Rng) -> Vec<Vec<u8>> {
    let (n, large): (usize, Vec<usize>) = if full() {
        let mut l: Vec<usize> = (0..7)
            .map(|_| rng.range(4 << 20, 64 << 20) as usize)
            .collect();
        l.push(64 << 20);
        (2000, l)
    } else {
        (
            200,
            (0..3)
                .map(|_| rng.range(1 << 20, 4 << 20) as usize)
                .collect(),
        )
    };
    let mut v: Vec<Vec<u8>> = (0..n - large.len())
        .map(|i| block("mix", i, rng.range(1, 64 << 10) as usize))
        .collect();
    for (j, size) in large.into_iter().enumerate() {
        let at = rng.range(0, v.len() as u64) as usize;
        v.insert(at, block("mix-large", j, size));
    }
    v
}

/// SIGKILL at seeded random moments (after a random number of written blocks, or
/// after a random delay, which may fall in the index phase); each time the next run
/// completes, the destination holds every source block at the replication level, no
/// (block, service) is written twice across the runs, and every copy verifies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_and_resume_seeded_kill_trials() {
    let seed = seed("crash_and_resume_seeded_kill_trials");
    let mut rng = Rng::new(seed);
    let blocks = mixed_blocks(&mut rng);
    let bytes: usize = blocks.iter().map(Vec::len).sum();
    let trials = 10;
    let mut kill_points = Vec::new();
    let started = Instant::now();
    for trial in 0..trials {
        let p = Pair::with(builder("srcaa").fault_seed(seed), builder("dstbb")).await;
        for b in &blocks {
            // Large blocks once on the source (memory), the rest twice.
            let r = if b.len() > 1 << 20 { 1 } else { 2 };
            p.src.put_block(b, r).await.unwrap();
        }
        for i in 0..3 {
            ks(&p.src, i).set_latency(Duration::from_millis(10));
        }
        let mut child = spawn(&p, &["-q", "--concurrency", "8"]);
        let how = if trial % 2 == 0 {
            let k = rng.range(1, (blocks.len() * 2 * 8 / 10) as u64) as usize;
            wait_for_puts(&p, k, Duration::from_secs(120)).await;
            format!("after {k} PUTs")
        } else {
            let ms = rng.range(0, 1500);
            tokio::time::sleep(Duration::from_millis(ms)).await;
            format!("after {ms} ms")
        };
        let finished_before_kill = child.try_wait().unwrap().is_some();
        let _ = child.start_kill();
        let _ = child.wait().await;
        // Let the servers finish handling what the dead client had sent.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let landed = block_puts(&p.dst).len();
        kill_points.push(format!(
            "{how}: {landed} written{}",
            if finished_before_kill {
                " (had finished)"
            } else {
                ""
            }
        ));
        for i in 0..3 {
            ks(&p.src, i).clear();
        }
        let r = p.rsync(&["-q"]).await;
        r.assert_code(0);
        assert_all_copied(&p, 2).await;
        assert_no_block_sent_twice(&p.dst);
        p.rsync(&["-q", "--verify", "--verify-data"])
            .await
            .assert_code(0);
        assert_tokens_isolated(&p);
    }
    println!("kill points: {kill_points:?}");
    figure(
        "crash and resume (SIGKILL)",
        &format!(
            "{trials} seeded kills, {} blocks ({} MiB, largest {} MiB)",
            blocks.len(),
            bytes >> 20,
            blocks.iter().map(Vec::len).max().unwrap_or(0) >> 20
        ),
        &format!(
            "{trials}/{trials} reruns exit 0, all blocks at 2 replicas, 0 duplicate PUTs, verify-data exit 0 ({:.0} s)",
            started.elapsed().as_secs_f64()
        ),
    );
}

/// One source keepstore down the whole run: blocks with a replica elsewhere are
/// copied; blocks only there cannot even be listed, so the run names the service and
/// exits 1; once it is back, the next run copies exactly those.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn source_keepstore_down_then_back() {
    let p = Pair::new().await;
    let shared: Vec<Vec<u8>> = (0..30).map(|i| block("sd", i, 900)).collect();
    for b in &shared {
        p.src.put_block(b, 2).await.unwrap();
    }
    let only: Vec<Vec<u8>> = (0..6).map(|i| block("sd-only", i, 700)).collect();
    for b in &only {
        p.src.put_block_on(2, b).await.unwrap();
    }
    p.src.stop_keepstore(2).await.unwrap();
    let r = p.rsync(&["--retries", "1"]).await;
    r.assert_code(1);
    assert!(
        r.stdout
            .contains("unreachable: source srcaa-bi6l4-000000000000002"),
        "{}",
        r.stdout
    );
    let held = p.dst_holdings().await;
    assert_eq!(held.len(), shared.len());
    assert!(only.iter().all(|b| !held.contains_key(&BlockHash::of(b))));

    p.src.start_keepstore(2).await.unwrap();
    p.dst.clear_request_log();
    p.rsync(&[]).await.assert_code(0);
    let sent: BTreeSet<String> = block_puts(&p.dst).into_iter().map(|(_, h)| h).collect();
    let want: BTreeSet<String> = only.iter().map(|b| BlockHash::of(b).to_hex()).collect();
    assert_eq!(
        sent, want,
        "the second run copies exactly the blocks only there"
    );
    assert_eq!(block_puts(&p.dst).len(), only.len() * 2);
    assert_all_copied(&p, 2).await;
    assert_tokens_isolated(&p);
    figure(
        "source keepstore down all run",
        "1 of 3 down; 30 blocks also elsewhere, 6 only there",
        "30 copied, exit 1 naming it; after restart 6 copied (12 PUTs), exit 0",
    );
}

/// A source keepstore stopped for 1.5 s mid-run (and its open connections closed),
/// holding some blocks alone: the retries (5 passes over at least 3.75 s) ride it out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn source_keepstore_restarted_mid_run() {
    let p = Pair::new().await;
    for i in 0..40 {
        p.src.put_block(&block("rs", i, 3000), 2).await.unwrap();
    }
    for i in 0..10 {
        p.src
            .put_block_on(1, &block("rs-only", i, 3000))
            .await
            .unwrap();
    }
    for i in 0..3 {
        ks(&p.src, i).set_latency(Duration::from_millis(30));
    }
    let mut child = spawn(&p, &["--concurrency", "4"]);
    wait_for_puts(&p, 10, Duration::from_secs(60)).await;
    p.src.stop_keepstore(1).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    p.src.start_keepstore(1).await.unwrap();
    let first = child.wait().await.unwrap().code();
    println!("first run: {}", child_output(&p));
    let reruns = if first == Some(0) {
        0
    } else {
        assert_eq!(first, Some(1), "first run");
        p.rsync(&[]).await.assert_code(0);
        1
    };
    assert_all_copied(&p, 2).await;
    assert_no_block_sent_twice(&p.dst);
    assert_tokens_isolated(&p);
    figure(
        "source keepstore restarted mid-run",
        "1 of 3 stopped 1.5 s mid-run; 50 blocks, 10 only on it",
        &format!(
            "first run exit {}; all copied after {reruns} rerun(s)",
            first.map_or("none".to_string(), |c| c.to_string())
        ),
    );
}

/// 30% of source GETs (index included) answered 503, seeded: everything is copied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn source_503_at_30_percent() {
    let seed = seed("source_503_at_30_percent");
    let p = Pair::with(builder("srcaa").fault_seed(seed), builder("dstbb")).await;
    for i in 0..60 {
        p.src.put_block(&block("r503", i, 1500), 2).await.unwrap();
    }
    for i in 0..3 {
        ks(&p.src, i).fail_rate(0.3, 503, Some("GET"));
    }
    // An index has one service to ask: 0.3^9 odds of failing all 9 passes.
    p.rsync(&["--retries", "8"]).await.assert_code(0);
    assert_all_copied(&p, 2).await;
    let n503 = count_requests(&p.src, |r| r.status == 503);
    let gets = count_requests(&p.src, |r| r.method == "GET");
    assert!(n503 > 0);
    assert_tokens_isolated(&p);
    figure(
        "30% of source GETs answered 503",
        &format!("60 blocks; {n503} of {gets} source GETs got 503"),
        "all copied, exit 0",
    );
}

/// `n` source blocks of 20,000 bytes at `replicas`, on keepstores that take 20 ms per
/// request and answer 503 beyond `max` concurrent requests.
async fn capped_source(tag: &str, n: usize, replicas: usize, max: usize) -> Pair {
    let p = Pair::new().await;
    for i in 0..n {
        p.src
            .put_block(&block(tag, i, 20_000), replicas)
            .await
            .unwrap();
    }
    for i in 0..3 {
        ks(&p.src, i).set_max_concurrent(Some(max));
        ks(&p.src, i).set_latency(Duration::from_millis(20));
    }
    p
}

/// Source keepstores that answer 503 beyond 2 concurrent requests, at concurrency 16.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn source_concurrency_cap() {
    let p = capped_source("cap", 60, 2, 2).await;
    p.rsync(&["--concurrency", "16"]).await.assert_code(0);
    assert_all_copied(&p, 2).await;
    let n503 = count_requests(&p.src, |r| r.status == 503);
    assert_tokens_isolated(&p);
    figure(
        "source cap of 2 concurrent requests",
        &format!("60 blocks at concurrency 16; {n503} source 503s"),
        "all copied, exit 0",
    );
}

/// `--max-buffer-memory` of one block at concurrency 16: the copies go one at a time,
/// so source keepstores that answer 503 beyond one concurrent request never do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buffer_memory_bounds_the_blocks_in_flight() {
    let p = capped_source("room", 24, 1, 1).await;
    p.rsync(&["--concurrency", "16", "--max-buffer-memory", "20000"])
        .await
        .assert_code(0);
    assert_all_copied(&p, 2).await;
    let n503 = count_requests(&p.src, |r| r.status == 503);
    assert_eq!(n503, 0, "a source keepstore saw two reads at once");
    figure(
        "--max-buffer-memory of one block",
        "24 blocks of 20,000 B at concurrency 16; sources refuse a 2nd concurrent request",
        "all copied one at a time, 0 source 503s, exit 0",
    );
}

/// 200 ms added to every source request (controller and keepstores): completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn source_latency_200ms() {
    let p = Pair::new().await;
    for i in 0..30 {
        p.src.put_block(&block("lat", i, 5000), 2).await.unwrap();
    }
    for s in ["controller", "keepstore0", "keepstore1", "keepstore2"] {
        p.src
            .faults(s)
            .unwrap()
            .set_latency(Duration::from_millis(200));
    }
    let t = Instant::now();
    p.rsync(&[]).await.assert_code(0);
    let secs = t.elapsed().as_secs_f64();
    assert_all_copied(&p, 2).await;
    assert_tokens_isolated(&p);
    figure(
        "200 ms latency on every source request",
        "30 blocks",
        &format!("all copied, exit 0, {secs:.1} s"),
    );
}

/// One replica corrupt: the other is used. Every replica corrupt: reported, listed,
/// never written (not even attempted).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_source_replicas() {
    let p = Pair::new().await;
    for i in 0..10 {
        p.src.put_block(&block("cr", i, 800), 2).await.unwrap();
    }
    let one = block("cr-one", 0, 800);
    let all = block("cr-all", 0, 800);
    p.src.put_block(&one, 2).await.unwrap();
    p.src.put_block(&all, 2).await.unwrap();
    let (h1, h2) = (BlockHash::of(&one), BlockHash::of(&all));
    let src = holdings(&p.src).await;
    assert!(p.src.corrupt_block(src[&h1][0], &h1).await);
    for &i in &src[&h2] {
        assert!(p.src.corrupt_block(i, &h2).await);
    }
    let list = p.dir.path().join("failed.txt");
    let r = p
        .rsync(&["--retries", "1", "--failed-list", list.to_str().unwrap()])
        .await;
    r.assert_code(1);
    let held = p.dst_holdings().await;
    assert_eq!(held.len(), 11);
    assert_eq!(held[&h1].len(), 2);
    assert!(!held.contains_key(&h2));
    assert_eq!(
        std::fs::read_to_string(&list).unwrap().trim(),
        format!("{}+800 bad-source-copy", h2.to_hex())
    );
    assert_eq!(
        count_requests(&p.dst, |r| r.method == "PUT"
            && r.path.contains(&h2.to_hex())),
        0,
        "a block that failed its checksum everywhere was sent"
    );
    assert_tokens_isolated(&p);
    figure(
        "corrupt source replicas",
        "12 blocks: 1 with one corrupt replica, 1 with all corrupt",
        "first copied from the good replica; second listed as failed, never sent; exit 1",
    );
}

/// A big (relayed) block whose first source replica sends bad bytes under 200 (its
/// keepstore does not notice): the destination rejects the relay, the block is read
/// again with our own check from the good replica, and copied, even when
/// `--max-buffer-memory` is one block (the relay's share is given back first).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relayed_block_rejected_by_the_destination_is_read_again_checked() {
    const SIZE: usize = 8 << 20;
    let p = Pair::new().await;
    let d = block("rej", 0, SIZE);
    p.src.put_block(&d, 2).await.unwrap();
    let h = BlockHash::of(&d);
    let first = probe(&p.src, &h)[0];
    ks(&p.src, first).set_corrupt_reads(true);
    let budget = SIZE.to_string();
    let r = tokio::time::timeout(
        Duration::from_secs(120),
        p.rsync(&["--max-buffer-memory", &budget, "--retries", "1"]),
    )
    .await
    .expect("no deadlock on the memory budget");
    r.assert_code(0);
    assert_eq!(p.dst_holdings().await[&h].len(), 2);
    let rejected = count_requests(&p.dst, |r| {
        r.method == "PUT" && r.path.contains(&h.to_hex()) && r.status == 400
    });
    assert!(rejected > 0, "the corrupt relay was never rejected");
    figure(
        "relayed block with a silently corrupt source replica",
        "one 8 MiB block, first replica flips a byte, --max-buffer-memory = 8 MiB",
        &format!(
            "{rejected} uploads rejected (400 content hash mismatch), then copied checked at 2 replicas, exit 0"
        ),
    );
}

/// Where `hash` should land: the first `n` services of its probe order, skipping `skip`.
fn expected_places(
    c: &keep_testcluster::TestCluster,
    h: &BlockHash,
    skip: &[usize],
    n: usize,
) -> Vec<usize> {
    let mut v: Vec<usize> = probe(c, h)
        .into_iter()
        .filter(|i| !skip.contains(i))
        .take(n)
        .collect();
    v.sort_unstable();
    v
}

async fn assert_placed_skipping(p: &Pair, skip: &[usize]) -> usize {
    let held = p.dst_holdings().await;
    let mut past = 0;
    for (h, got) in &held {
        let mut got = got.clone();
        got.sort_unstable();
        assert_eq!(got, expected_places(&p.dst, h, skip, 2), "placement of {h}");
        if probe(&p.dst, h)
            .into_iter()
            .take(2)
            .any(|i| skip.contains(&i))
        {
            past += 1;
        }
    }
    past
}

/// One destination keepstore down: blocks go to the next services in probe order;
/// the report names it (exit 1: its blocks were not seen); once back, nothing is sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn destination_keepstore_down() {
    let p = Pair::new().await;
    for i in 0..30 {
        p.src.put_block(&block("dd", i, 600), 2).await.unwrap();
    }
    p.dst.stop_keepstore(0).await.unwrap();
    let r = p.rsync(&["--retries", "1"]).await;
    r.assert_code(1);
    assert!(
        r.stdout
            .contains("unreachable: destination dstbb-bi6l4-000000000000000"),
        "{}",
        r.stdout
    );
    assert_all_copied(&p, 2).await;
    let past = assert_placed_skipping(&p, &[0]).await;
    p.dst.start_keepstore(0).await.unwrap();
    p.dst.clear_request_log();
    p.rsync(&[]).await.assert_code(0);
    assert!(block_puts(&p.dst).is_empty());
    assert_tokens_isolated(&p);
    figure(
        "destination keepstore down",
        "1 of 3 down; 30 blocks at 2 replicas",
        &format!(
            "all placed on the next services in probe order ({past} past it), report names it, exit 1; rerun once back sends nothing"
        ),
    );
}

/// One destination keepstore full (507): the same, and the report counts the blocks
/// placed past it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn destination_keepstore_full() {
    let p = Pair::with(builder("srcaa"), builder("dstbb").full_volume(0, 0)).await;
    for i in 0..30 {
        p.src.put_block(&block("df", i, 600), 2).await.unwrap();
    }
    let r = p.rsync(&[]).await;
    r.assert_code(0);
    let past = assert_placed_skipping(&p, &[0]).await;
    assert!(past > 0);
    assert!(
        r.stdout.contains(&format!(
            "placed past a failed or full first-choice service: {past} blocks"
        )),
        "{}",
        r.stdout
    );
    let n507 = count_requests(&p.dst, |r| r.status == 507);
    assert_eq!(n507, past, "one 507 per block whose first choice was full");
    assert_tokens_isolated(&p);
    figure(
        "destination keepstore full (507)",
        "1 of 3 full; 30 blocks at 2 replicas",
        &format!("all copied, {past} placed past it (reported), exit 0"),
    );
}

/// Every destination keepstore full: the run stops as soon as every keepstore has
/// said so, with exit 2 and a line saying so; nothing is lost (the source is
/// untouched, the failed list names the blocks tried).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn destination_all_full() {
    let p = Pair::with(
        builder("srcaa"),
        builder("dstbb")
            .full_volume(0, 0)
            .full_volume(1, 0)
            .full_volume(2, 0),
    )
    .await;
    for i in 0..40 {
        p.src.put_block(&block("af", i, 600), 2).await.unwrap();
    }
    let before = holdings(&p.src).await;
    let list = p.dir.path().join("failed.txt");
    let report = p.dir.path().join("report.json");
    let r = p
        .rsync(&[
            "-q",
            "--failed-list",
            list.to_str().unwrap(),
            "--report",
            report.to_str().unwrap(),
        ])
        .await;
    r.assert_code(2);
    assert!(
        r.stderr.contains("stopped: the destination is full"),
        "{}",
        r.stderr
    );
    assert_eq!(r.stderr.trim().lines().count(), 1, "{}", r.stderr);
    assert!(p.dst_holdings().await.is_empty());
    assert_eq!(holdings(&p.src).await, before, "the source is untouched");
    let listed = std::fs::read_to_string(&list).unwrap();
    assert!(
        !listed.is_empty() && listed.lines().all(|l| l.ends_with(" destination-full")),
        "{listed}\nthe report, for each failure's detail:\n{}",
        std::fs::read_to_string(&report).unwrap_or_default()
    );
    assert_tokens_isolated(&p);
    figure(
        "every destination keepstore full",
        "3 of 3 full; 40 blocks",
        &format!(
            "stopped as soon as the 3 keepstores had answered 507 ({} blocks tried, in flight included, all listed); exit 2, one line; source untouched, nothing written",
            listed.lines().count()
        ),
    );
}

/// Bursts of 500 on destination PUTs: after every 10-30 PUT requests, the next 2-6
/// PUTs of a random destination keepstore are answered 500 (seeded). Retried,
/// everything copied, nothing written twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn destination_put_500_bursts() {
    let seed = seed("destination_put_500_bursts");
    let mut rng = Rng::new(seed);
    let p = Pair::new().await;
    for i in 0..60 {
        p.src.put_block(&block("b500", i, 1200), 2).await.unwrap();
    }
    let mut child = spawn(&p, &["--concurrency", "8"]);
    let mut next_at = 0;
    let mut bursts = 0;
    let code = loop {
        let puts = count_requests(&p.dst, |r| r.method == "PUT");
        if puts >= next_at {
            let k = rng.range(0, 2) as usize;
            ks(&p.dst, k).fail_next(rng.range(2, 6), 500, Some("PUT"));
            bursts += 1;
            next_at = puts + rng.range(10, 30) as usize;
        }
        tokio::select! {
            s = child.wait() => break s.unwrap().code(),
            _ = tokio::time::sleep(Duration::from_millis(10)) => {}
        }
    };
    for i in 0..3 {
        ks(&p.dst, i).clear();
    }
    assert_eq!(code, Some(0), "{}", child_output(&p));
    assert_all_copied(&p, 2).await;
    assert_no_block_sent_twice(&p.dst);
    let n500 = count_requests(&p.dst, |r| r.status == 500);
    assert!(n500 > 0);
    assert_tokens_isolated(&p);
    figure(
        "bursts of 500 on destination PUTs",
        &format!("60 blocks; {bursts} bursts, {n500} PUTs answered 500"),
        "all copied, exit 0, no block written twice",
    );
}

/// Index faults: exit 2 before any block is written, the message naming the service
/// (and, for a malformed line, the line).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn index_faults_are_fatal_before_any_write() {
    let p = Pair::new().await;
    for i in 0..20 {
        p.src.put_block(&block("ix", i, 400), 2).await.unwrap();
    }
    // The destination already holds a block on every service, so its indexes have
    // lines before the end marker.
    p.dst.put_block(&block("ix-dst", 0, 10), 3).await.unwrap();
    let cases: Vec<(&keep_testcluster::TestCluster, usize, &str)> = vec![
        (&p.src, 1, "truncate"),
        (&p.dst, 2, "truncate"),
        (&p.src, 0, "5xx"),
        (&p.dst, 1, "5xx"),
        (&p.src, 2, "malformed"),
        (&p.dst, 0, "malformed"),
    ];
    for (c, i, kind) in cases {
        let f = ks(c, i);
        match kind {
            "truncate" => f.set_truncate_index(true),
            "5xx" => f.fail_rate(1.0, 503, Some("GET")),
            _ => f.set_malformed_index(true),
        }
        p.dst.clear_request_log();
        c.clear_request_log();
        let r = p.rsync(&["-q", "--retries", "2"]).await;
        f.clear();
        let what = format!("{} keepstore{i} {kind}", c.cluster_id());
        r.assert_code(2);
        assert_eq!(r.stderr.trim().lines().count(), 1, "{what}: {}", r.stderr);
        let uuid = &c.keepstores()[i].uuid;
        assert!(r.stderr.contains(uuid.as_str()), "{what}: {}", r.stderr);
        match kind {
            "truncate" => assert!(r.stderr.contains("incomplete index"), "{}", r.stderr),
            "5xx" => {
                assert!(r.stderr.contains("503"), "{}", r.stderr);
                // The first admin call, /mounts, meets the fault: fatal as an index is.
                let tries = count_requests(c, |r| {
                    r.service == *uuid && is_admin_path(&r.path) && r.status == 503
                });
                assert_eq!(tries, 3, "{what}: tried 1 + 2 retries");
            }
            _ => assert!(r.stderr.contains(MALFORMED_INDEX_LINE), "{}", r.stderr),
        }
        assert_eq!(
            count_requests(&p.dst, |r| r.method == "PUT"),
            0,
            "{what}: a block was written"
        );
    }
    assert!(p.dst_holdings().await.len() == 1);
    assert_tokens_isolated(&p);
    figure(
        "index faults",
        "truncated, 5xx (every try) and malformed index, on a source and a destination keepstore",
        "6/6 exit 2 with one line naming the service (and the line), 0 PUTs",
    );
}

/// Many small blocks at concurrency 64 against keepstores that take 4 requests at a
/// time (503 beyond, with no queue, harsher than a keepstore's MaxQueuedRequests;
/// `--retries 10` rides it out): completes, nothing lost, peak memory within the
/// documented bound (concurrency x largest block + 100 MB). CI: 10,000 blocks; full:
/// 100,000.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_many_small_blocks() {
    let seed = seed("load_many_small_blocks");
    let n: u64 = if full() { 100_000 } else { 10_000 };
    let p = Pair::with(
        builder("srcaa").synthetic_blocks(n, seed).fault_seed(seed),
        builder("dstbb").fault_seed(seed),
    )
    .await;
    for i in 0..3 {
        for c in [&p.src, &p.dst] {
            ks(c, i).set_max_concurrent(Some(4));
            // An in-memory handler that never waits finishes before the next request
            // arrives, and the cap would never be reached; 1 ms makes requests overlap.
            ks(c, i).set_latency(Duration::from_millis(1));
        }
    }
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_keep-rsync"))
        .args(args(&p, &["-q", "--concurrency", "64", "--retries", "10"]))
        .env_remove("RUST_LOG")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let watch = watch_peak_rss(&child);
    let t = Instant::now();
    let out = child.wait_with_output().await.unwrap();
    let secs = t.elapsed().as_secs_f64();
    let peak_kb = watch.await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let held = p.dst_holdings().await;
    assert_eq!(held.len() as u64, n, "every block on the destination");
    assert!(held.values().all(|v| v.len() >= 2));
    // Largest synthetic block: 175 bytes.
    let bound_kb = (64 * 175 + 100_000_000) / 1024;
    assert!(peak_kb > 0 && peak_kb <= bound_kb, "peak RSS {peak_kb} kB");
    let n503 =
        count_requests(&p.src, |r| r.status == 503) + count_requests(&p.dst, |r| r.status == 503);
    assert!(n503 > 0, "the cap was never reached: nothing was retried");
    assert_tokens_isolated(&p);
    figure(
        "load: small blocks, concurrency 64, keepstores capped at 4",
        &format!("{n} blocks (48-175 B), {n503} requests answered 503"),
        &format!(
            "all copied at 2 replicas, exit 0, {secs:.0} s, peak RSS {} MB (bound {} MB)",
            peak_kb / 1024,
            bound_kb / 1024
        ),
    );
}

/// Blocks far larger than the relay's pieces, 6 at a time: each is relayed from the
/// source to both destination uploads as it arrives, so the tool's peak memory stays
/// well under one block per copy in flight (buffered, these copies alone would hold
/// 6 × 32 MiB).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn big_blocks_are_relayed_in_bounded_memory() {
    const SIZE: usize = 32 << 20;
    const N: usize = 6;
    let p = Pair::new().await;
    for i in 0..N {
        p.src.put_block(&block("big", i, SIZE), 1).await.unwrap();
    }
    let mut child = spawn(&p, &["-q", "--concurrency", "6"]);
    let watch = watch_peak_rss(&child);
    let t = Instant::now();
    let status = tokio::time::timeout(Duration::from_secs(300), child.wait())
        .await
        .expect("finished within 300 s")
        .unwrap();
    let secs = t.elapsed().as_secs_f64();
    let peak_kb = watch.await.unwrap();
    assert_eq!(status.code(), Some(0), "{}", child_output(&p));
    assert_all_copied(&p, 2).await;
    assert_no_block_sent_twice(&p.dst);
    // Buffered, the copies in flight alone would hold N × 32 MiB = 192 MiB.
    let bound_kb = 96 * 1024;
    assert!(peak_kb > 0 && peak_kb <= bound_kb, "peak RSS {peak_kb} kB");
    figure(
        "big blocks relayed, not buffered",
        &format!("{N} blocks of 32 MiB at concurrency 6, 2 destination replicas"),
        &format!(
            "all copied, exit 0, {secs:.1} s, peak RSS {} MB (bound {} MB; buffered copies alone: {} MB)",
            peak_kb / 1024,
            bound_kb / 1024,
            N * SIZE / (1 << 20)
        ),
    );
}

/// Regression (d81a901): blocks whose reads fail *temporarily* (503 after the last
/// retry) at the very start of a run are failed and listed, exit 1; they never make
/// the run "stop early" as a systematic failure would (exit 2). The next run copies
/// them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn temporary_failures_at_start_do_not_stop_the_run() {
    let p = Pair::new().await;
    for i in 0..12 {
        p.src.put_block_on(0, &block("tmp", i, 500)).await.unwrap();
    }
    let f = ks(&p.src, 0);
    // Requests wait 300 ms before the fault is decided: time to switch it on between
    // the index (answered) and the first block read.
    f.set_latency(Duration::from_millis(300));
    let uuid = p.src.keepstores()[0].uuid.clone();
    let mut child = spawn(&p, &["-q", "--retries", "0"]);
    let t = Instant::now();
    while count_requests(&p.src, |r| r.service == uuid && is_index_path(&r.path)) == 0
        && t.elapsed() < Duration::from_secs(60)
    {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    f.fail_rate(1.0, 503, Some("GET"));
    let code = child.wait().await.unwrap().code();
    f.clear();
    let out = child_output(&p);
    assert_eq!(code, Some(1), "{out}");
    assert!(!out.contains("stopped early"), "{out}");
    assert!(out.contains("source: unavailable: 12"), "{out}");
    assert!(p.dst_holdings().await.is_empty());
    p.rsync(&["-q"]).await.assert_code(0);
    assert_all_copied(&p, 2).await;
    assert_tokens_isolated(&p);
    figure(
        "temporary read failures at the start",
        "12 blocks whose only source keepstore answers 503, --retries 0",
        "all 12 failed and listed, exit 1, not 'stopped early'; next run copies them",
    );
}

/// A destination keepstore that dies mid-run, after its index was read: the writes
/// meant for it go to the next services in probe order, and the report counts them as
/// placed past a failed first-choice service.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn destination_keepstore_dies_after_indexing() {
    let p = Pair::new().await;
    for i in 0..30 {
        p.src.put_block(&block("dm", i, 600), 2).await.unwrap();
    }
    // Its index takes 300 ms; it is stopped as soon as that is answered, before any
    // block is copied (the source is indexed after the destination).
    ks(&p.dst, 0).set_latency(Duration::from_millis(300));
    for i in 0..3 {
        ks(&p.src, i).set_latency(Duration::from_millis(100));
    }
    let uuid = p.dst.keepstores()[0].uuid.clone();
    let mut child = spawn(&p, &["--retries", "1"]);
    let t = Instant::now();
    while count_requests(&p.dst, |r| r.service == uuid && is_index_path(&r.path)) == 0
        && t.elapsed() < Duration::from_secs(60)
    {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    p.dst.stop_keepstore(0).await.unwrap();
    let code = child.wait().await.unwrap().code();
    let out = child_output(&p);
    assert_eq!(code, Some(0), "{out}");
    assert_all_copied(&p, 2).await;
    let past = assert_placed_skipping(&p, &[0]).await;
    assert!(past > 0);
    assert!(
        out.contains(&format!(
            "placed past a failed or full first-choice service: {past} blocks"
        )),
        "{out}"
    );
    assert_eq!(
        count_requests(&p.dst, |r| r.service == uuid && r.method == "PUT"),
        0
    );
    assert_tokens_isolated(&p);
    figure(
        "destination keepstore dies after indexing",
        "1 of 3 stopped once its index was read; 30 blocks at 2 replicas",
        &format!("all copied, {past} placed past it (reported), exit 0"),
    );
}
