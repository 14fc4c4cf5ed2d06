//! `--concurrency auto` (issue 15): the number of blocks in flight follows the link,
//! backs off from keep services that answer 503, and no slow service takes every
//! slot. Each test compares auto with a fixed setting in the same test, on the same
//! clusters.

use std::time::{Duration, Instant};

use crate::util::{Pair, assert_all_copied, block, builder, count_requests, figure, ks, report};

/// Copies into a fresh destination: the same source, a new `dstNN` cluster.
async fn fresh(src: keep_testcluster::Builder, dst: &str) -> Pair {
    Pair::with(src, builder(dst)).await
}

/// 100 ms per keepstore request (a transatlantic link): auto climbs past where it
/// starts, to its top, and copies far faster than the old fixed default of 32.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_climbs_on_a_high_latency_link() {
    const N: usize = 1500;
    let mut results = Vec::new();
    for (i, setting) in ["32", "auto"].into_iter().enumerate() {
        let p = fresh(builder("srcaa"), &format!("dst{i:02}")).await;
        for b in 0..N {
            p.src.put_block(&block("lat", b, 1024), 1).await.unwrap();
        }
        for c in [&p.src, &p.dst] {
            for k in 0..3 {
                ks(c, k).set_latency(Duration::from_millis(100));
            }
        }
        let t = Instant::now();
        let r = p.rsync(&["--json", "--concurrency", setting]).await;
        let secs = t.elapsed().as_secs_f64();
        r.assert_code(0);
        assert_all_copied(&p, 2).await;
        results.push((secs, report(&r.stdout)["concurrency"].clone()));
    }
    let (fixed, auto) = (&results[0], &results[1]);
    // auto starts at 128 and tops out at 256.
    let high = auto.1["high"].as_u64().unwrap();
    assert_eq!(high, 256, "auto reached only {high}: {}", auto.1);
    assert_eq!(auto.1["setting"], "auto");
    assert_eq!(fixed.1["high"], 32);
    assert!(
        auto.0 < fixed.0,
        "auto took {:.1} s, --concurrency 32 {:.1} s",
        auto.0,
        fixed.0
    );
    figure(
        "--concurrency auto on a 100 ms link",
        &format!("{N} blocks of 1 KiB, 100 ms per keepstore request, both clusters"),
        &format!(
            "auto {:.1} s (limit {}..{}), --concurrency 32 {:.1} s",
            auto.0, auto.1["low"], high, fixed.0
        ),
    );
}

/// Keepstores at Arvados's default `API.MaxConcurrentRequests` (64; a keepstore
/// answers 503 at once beyond it) behind 100 ms per request, where the best fixed
/// setting on an unlimited cluster is 256. auto lowers the limit of each busy service
/// and sends fewer requests into the wall than a fixed 256, as fast, and copies
/// everything where it belongs. (The first burst of a run meets the wall whatever the
/// setting: nothing is known yet, and keep-client backs off.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_services_are_limited_and_everything_lands_in_place() {
    const N: usize = 2000;
    let mut runs = Vec::new();
    for (i, setting) in ["256", "auto"].into_iter().enumerate() {
        let p = fresh(builder("srcaa"), &format!("dst{i:02}")).await;
        for b in 0..N {
            p.src.put_block(&block("busy", b, 1000), 1).await.unwrap();
        }
        for c in [&p.src, &p.dst] {
            for k in 0..3 {
                ks(c, k).set_max_concurrent(Some(64));
                ks(c, k).set_latency(Duration::from_millis(100));
            }
        }
        let t = Instant::now();
        let r = p
            .rsync(&["--json", "--concurrency", setting, "--retries", "20"])
            .await;
        let secs = t.elapsed().as_secs_f64();
        r.assert_code(0);
        assert_all_copied(&p, 2).await;
        let n503 = count_requests(&p.src, |r| r.status == 503)
            + count_requests(&p.dst, |r| r.status == 503);
        runs.push((n503, report(&r.stdout)["concurrency"].clone(), secs));
    }
    let ((fixed, _, fixed_s), (auto, used, auto_s)) = (&runs[0], &runs[1]);
    assert!(*fixed > 0, "the cap was never reached at 256");
    let busy = used["busy_services"].as_array().unwrap();
    assert_eq!(
        busy.len(),
        3,
        "every destination keepstore was busy: {used}"
    );
    // Alone on a machine auto sends about half as many (126-260 against 501-530 in
    // three runs); beside the rest of the suite the margin shrinks, but it never sends
    // more.
    assert!(
        auto <= fixed,
        "auto: {auto} 503s, --concurrency 256: {fixed}; {used}"
    );
    figure(
        "--concurrency auto against keepstores at MaxConcurrentRequests 64",
        &format!("{N} blocks of 1,000 B, 100 ms per request, keepstores answer 503 beyond 64"),
        &format!(
            "all copied; 503s: auto {auto}, --concurrency 256 {fixed}; {auto_s:.1} s vs {fixed_s:.1} s"
        ),
    );
}

/// One of four source keepstores answers every request after 300 ms, the others at
/// once; it also answers 503 beyond 8 requests. At 16 in flight it may hold at most
/// twice its share (8): it never sees a 9th request, and the blocks on the fast
/// keepstores do not wait behind it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_service_cannot_take_every_slot() {
    const N: usize = 240;
    let p = Pair::with(builder("srcaa").keepstores(4), builder("dstbb")).await;
    for b in 0..N {
        p.src.put_block(&block("slow", b, 1000), 1).await.unwrap();
    }
    let slow = 0;
    ks(&p.src, slow).set_latency(Duration::from_millis(300));
    ks(&p.src, slow).set_max_concurrent(Some(8));
    let on_slow = p.src.blocks_on(slow).await.len();
    let t = Instant::now();
    let r = p.rsync(&["--json", "--concurrency", "16"]).await;
    let secs = t.elapsed().as_secs_f64();
    r.assert_code(0);
    assert_all_copied(&p, 2).await;
    let uuid = p.src.keepstores()[slow].uuid.clone();
    let refused = count_requests(&p.src, |r| r.service == uuid && r.status == 503);
    assert_eq!(refused, 0, "the slow keepstore got more than its share");
    // 8 at a time through 300 ms: the slow keepstore's blocks alone take this long;
    // the others' fit beside them.
    let floor = (on_slow as f64 / 8.0).ceil() * 0.3;
    assert!(
        secs < floor + 10.0,
        "{secs:.1} s for a floor of {floor:.1} s"
    );
    figure(
        "a slow source keepstore at --concurrency 16",
        &format!("{N} blocks, {on_slow} on a keepstore answering after 300 ms"),
        &format!("it never held more than 8 (0 refused); {secs:.1} s"),
    );
}
