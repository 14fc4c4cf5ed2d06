//! Long-haul runs (issue 14): slow links, stalls, indexes that break, a destination
//! that fills, crashes, retries from a list, blocks that vanish from a live source,
//! logs for a week-long run, and the root token kept to where it is needed. Every
//! scenario is bounded in time and stops by itself.

use std::time::{Duration, Instant};

use keep_client::BlockHash;

use crate::util::{
    Pair, assert_all_copied, assert_tokens_isolated, block, block_puts, child_output,
    count_requests, figure, holdings, is_admin_path, is_index_path, ks, probe, spawn,
    wait_for_request,
};

/// Runs keep-rsync on `p` with `extra`, switches `fault` on once the destination has
/// stored a first block, and waits (at most 60 s) for the run to stop by itself;
/// returns its exit code and output.
async fn fault_after_first_copy(
    p: &Pair,
    extra: &[&str],
    fault: impl FnOnce(),
) -> (Option<i32>, String) {
    let mut child = spawn(p, extra);
    wait_for_request(&p.dst, |r| r.method == "PUT" && r.status == 200).await;
    fault();
    let code = tokio::time::timeout(Duration::from_secs(60), child.wait())
        .await
        .expect("the run stops by itself")
        .unwrap()
        .code();
    (code, child_output(p))
}

/// A 4 MiB block through a 50 kB/s link takes about 84 s: longer than any deadline the
/// client had (60 s per PUT), and fine, because bytes keep moving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_but_moving_transfer_is_never_cut() {
    let p = Pair::new().await;
    let b = block("slow", 0, 4 << 20);
    p.src.put_block(&b, 1).await.unwrap();
    for i in 0..3 {
        ks(&p.dst, i).set_bandwidth(Some(50_000));
    }
    let t = Instant::now();
    let r = p
        .rsync(&["-replications", "1", "--stall-timeout", "20s"])
        .await;
    let secs = t.elapsed().as_secs_f64();
    r.assert_code(0);
    assert!(
        secs > 60.0,
        "the upload took {secs:.0} s: was the link slow?"
    );
    assert_all_copied(&p, 1).await;
    figure(
        "slow link: 4 MiB block, destination at 50 kB/s",
        "--stall-timeout 20s",
        &format!("copied in {secs:.0} s, exit 0"),
    );
}

/// A source keepstore that stops sending mid-body (the connection open and silent)
/// fails within the stall timeout, and the block is read from its other replica.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_read_fails_over_within_the_stall_timeout() {
    let p = Pair::new().await;
    let b = block("stall", 0, 300_000);
    p.src.put_block(&b, 2).await.unwrap();
    let first = probe(&p.src, &BlockHash::of(&b))[0];
    ks(&p.src, first).set_stall_body(true);
    let t = Instant::now();
    let r = p.rsync(&["--stall-timeout", "2s"]).await;
    let secs = t.elapsed().as_secs_f64();
    r.assert_code(0);
    assert_all_copied(&p, 2).await;
    assert!(secs < 15.0, "{secs:.1} s");
    figure(
        "a source keepstore stalls mid-body",
        "--stall-timeout 2s, block on 2 replicas",
        &format!("read from the other replica after the stall, {secs:.1} s, exit 0"),
    );
}

/// An index cut short once (no end-of-index line after its entries) is read again from
/// the start, on either side; the destination's first, partial listing is forgotten.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_index_that_breaks_once_is_read_again() {
    let p = Pair::new().await;
    for i in 0..30 {
        let b = block("idx", i, 500);
        p.src.put_block(&b, 2).await.unwrap();
        if i < 10 {
            p.dst.put_block(&b, 2).await.unwrap();
        }
    }
    ks(&p.src, 1).truncate_next_indexes(1);
    ks(&p.dst, 2).truncate_next_indexes(1);
    let r = p.rsync(&[]).await;
    r.assert_code(0);
    assert!(
        r.stderr.matches("reading it again from the start").count() >= 2,
        "{}",
        r.stderr
    );
    assert!(
        r.stdout.contains("to copy:             20 blocks"),
        "{}",
        r.stdout
    );
    assert_all_copied(&p, 2).await;
    for (c, i) in [(&p.src, 1), (&p.dst, 2)] {
        let uuid = c.keepstores()[i].uuid.clone();
        let lists = count_requests(c, |r| r.service == uuid && is_index_path(&r.path));
        assert_eq!(lists, 2, "read twice");
    }
    figure(
        "an index breaks once (source and destination)",
        "30 blocks, 10 already there",
        "each read again from the start; 20 copied, exit 0",
    );
}

/// The destination fills up mid-run: every PUT answers 507 after the first blocks.
/// Services that said so get no more blocks, and when none is left the run stops,
/// exit 2, after a bounded number of refused PUTs (not one per remaining block).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_destination_that_fills_stops_the_run() {
    let p = Pair::new().await;
    for i in 0..400 {
        p.src
            .put_block_on(i % 3, &block("fill", i, 300))
            .await
            .unwrap();
    }
    for i in 0..3 {
        ks(&p.dst, i).set_latency(Duration::from_millis(20));
    }
    let (code, out) = fault_after_first_copy(&p, &["--concurrency", "8"], || {
        for i in 0..3 {
            ks(&p.dst, i).fail_rate(1.0, 507, Some("PUT"));
        }
    })
    .await;
    assert_eq!(code, Some(2), "{out}");
    assert!(out.contains("stopped: the destination is full"), "{out}");
    let refused = count_requests(&p.dst, |r| r.method == "PUT" && r.status == 507);
    let copied = holdings(&p.dst).await.len();
    assert!(refused <= 3 * 8, "{refused} refused PUTs");
    assert!(copied < 400, "{copied}");
    figure(
        "the destination fills mid-run",
        "400 blocks, every PUT 507 after the first, concurrency 8",
        &format!("stopped, exit 2, after {refused} refused PUTs ({copied} copied before)"),
    );
}

/// `--failed-list` is written as failures happen: a SIGKILL (no chance to write
/// anything at the end) leaves every failure so far in it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_failed_list_survives_sigkill() {
    let p = Pair::new().await;
    let mut bad = Vec::new();
    for i in 0..40 {
        let b = block("kill", i, 400);
        p.src.put_block(&b, 1).await.unwrap();
        if i % 4 == 0 {
            let h = BlockHash::of(&b);
            for k in holdings(&p.src).await[&h].clone() {
                assert!(p.src.corrupt_block(k, &h).await);
            }
            bad.push(h);
        }
    }
    for i in 0..3 {
        ks(&p.src, i).set_latency(Duration::from_millis(100));
    }
    let list = p.dir.path().join("failed.txt");
    let mut child = spawn(
        &p,
        &[
            "--failed-list",
            list.to_str().unwrap(),
            "--concurrency",
            "2",
            "--retries",
            "0",
        ],
    );
    // Kill once some failures are in the list.
    let t = Instant::now();
    while std::fs::read_to_string(&list)
        .unwrap_or_default()
        .lines()
        .count()
        < 3
        && t.elapsed() < Duration::from_secs(60)
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    child.start_kill().unwrap();
    let status = child.wait().await.unwrap();
    assert!(status.code().is_none(), "killed by a signal");
    let text = std::fs::read_to_string(&list).unwrap();
    let listed: Vec<&str> = text.lines().collect();
    assert!(listed.len() >= 3, "{text}");
    for l in &listed {
        let (loc, kind) = l.split_once(' ').expect("locator and kind");
        assert_eq!(kind, "bad-source-copy");
        assert!(bad.iter().any(|h| loc.starts_with(&h.to_hex())), "{l}");
    }
    figure(
        "--failed-list under SIGKILL",
        "40 blocks, 10 with every replica corrupt, killed mid-run",
        &format!("{} failures listed before the kill, all kept", listed.len()),
    );
}

/// `--from-list` copies exactly the listed blocks, without reading the source's
/// indexes; the destination's index is still the checkpoint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn from_list_copies_exactly_the_listed_blocks() {
    let p = Pair::new().await;
    let mut blocks = Vec::new();
    for i in 0..20 {
        let b = block("list", i, 600);
        p.src.put_block(&b, 2).await.unwrap();
        blocks.push(b);
    }
    // Five listed, one of them already on the destination; comments and kinds are fine.
    p.dst.put_block(&blocks[0], 2).await.unwrap();
    let list = p.dir.path().join("retry.txt");
    let mut text = String::from("# from a failed list\n\n");
    for b in &blocks[..5] {
        text.push_str(&format!("{}+600 source-unavailable\n", BlockHash::of(b)));
    }
    std::fs::write(&list, text).unwrap();
    p.src.clear_request_log();
    let r = p.rsync(&["--from-list", list.to_str().unwrap()]).await;
    r.assert_code(0);
    let held = p.dst_holdings().await;
    assert_eq!(held.len(), 5);
    for b in &blocks[..5] {
        assert_eq!(held[&BlockHash::of(b)].len(), 2);
    }
    assert_eq!(
        count_requests(&p.src, |r| is_admin_path(&r.path)),
        0,
        "the source's indexes were read"
    );
    assert_eq!(block_puts(&p.dst).len(), 8, "4 blocks at 2 replicas");
    // A line that is not a locator: one line naming it, exit 2.
    std::fs::write(&list, "acbd18db4cc2f85cedef654fccc4a4d8+3\nnonsense\n").unwrap();
    let r = p.rsync(&["--from-list", list.to_str().unwrap()]).await;
    r.assert_code(2);
    assert!(r.stderr.contains("retry.txt:2:"), "{}", r.stderr);
    figure(
        "--from-list",
        "20 source blocks, 5 listed (1 already there)",
        "exactly the 4 missing listed blocks copied; no source index read",
    );
}

/// A block deleted from the source between its index and its copy (keep-balance on a
/// cluster in use) is reported as vanished, not as a failure: exit 24.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_block_that_vanishes_from_the_source_is_reported_apart() {
    let p = Pair::new().await;
    let mut blocks = Vec::new();
    for i in 0..10 {
        let b = block("gone", i, 500);
        p.src.put_block(&b, 2).await.unwrap();
        blocks.push(b);
    }
    let gone = BlockHash::of(&blocks[3]);
    // Reads wait, so the block can be deleted after the index and before its read.
    for i in 0..3 {
        ks(&p.src, i).set_latency(Duration::from_millis(300));
    }
    let list = p.dir.path().join("failed.txt");
    let mut child = spawn(
        &p,
        &[
            "--failed-list",
            list.to_str().unwrap(),
            "--concurrency",
            "2",
        ],
    );
    wait_for_request(&p.src, |r| is_index_path(&r.path)).await;
    for i in 0..3 {
        p.src.remove_block(i, &gone).await;
    }
    let code = child.wait().await.unwrap().code();
    let out = child_output(&p);
    assert_eq!(code, Some(24), "{out}");
    assert!(out.contains("vanished:            1 blocks"), "{out}");
    assert!(out.contains("failed:              0 blocks"), "{out}");
    assert_eq!(
        std::fs::read_to_string(&list).unwrap().trim(),
        format!("{gone}+500 vanished")
    );
    assert_eq!(p.dst_holdings().await.len(), 9);
    figure(
        "a block vanishes from a live source",
        "10 blocks, 1 deleted after the index",
        "9 copied, 1 reported and listed as vanished, exit 24",
    );
}

/// Block failures that say something about the run (a key rotated, a token revoked)
/// stop it at any point, not only before the first success.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_systematic_failure_mid_run_stops_it() {
    let p = Pair::new().await;
    for i in 0..300 {
        p.src
            .put_block_on(i % 3, &block("rot", i, 300))
            .await
            .unwrap();
    }
    for i in 0..3 {
        ks(&p.src, i).set_latency(Duration::from_millis(10));
    }
    // After the first copy every read is refused, as if the signing key had been rotated.
    let (code, out) = fault_after_first_copy(&p, &["--concurrency", "4"], || {
        for i in 0..3 {
            ks(&p.src, i).fail_rate(1.0, 403, Some("GET"));
        }
    })
    .await;
    assert_eq!(code, Some(2), "{out}");
    assert!(
        out.contains("blocks in a row failed the same way (source: permission denied)"),
        "{out}"
    );
    let refused = count_requests(&p.src, |r| r.method == "GET" && r.status == 403);
    assert!(refused < 150, "{refused} refused reads");
    figure(
        "reads refused mid-run (a rotated key)",
        "300 blocks, every read 403 after the first copies",
        &format!("stopped, exit 2, after {refused} refused reads"),
    );
}

/// Line mode: every line has a UTC timestamp; `--stats` prints summaries instead of a
/// line per block, and failures still as they happen.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_have_timestamps_and_stats_summaries() {
    let p = Pair::new().await;
    for i in 0..30 {
        p.src.put_block(&block("log", i, 300), 2).await.unwrap();
    }
    let bad = block("log-bad", 0, 300);
    p.src.put_block(&bad, 1).await.unwrap();
    let h = BlockHash::of(&bad);
    for k in holdings(&p.src).await[&h].clone() {
        assert!(p.src.corrupt_block(k, &h).await);
    }
    for i in 0..3 {
        ks(&p.src, i).set_latency(Duration::from_millis(50));
    }
    let r = p
        .rsync(&["--stats", "200ms", "--concurrency", "2", "--retries", "0"])
        .await;
    r.assert_code(1);
    let stamped = |l: &str| l.len() > 21 && l.as_bytes()[4] == b'-' && &l[19..21] == "Z ";
    let lines: Vec<&str> = r.stderr.lines().collect();
    assert!(lines.iter().all(|l| stamped(l)), "{}", r.stderr);
    assert!(
        !r.stderr.contains("copying data block"),
        "a line per block with --stats: {}",
        r.stderr
    );
    assert!(r.stderr.matches(" stats: ").count() >= 2, "{}", r.stderr);
    assert!(
        r.stderr
            .contains(&format!("FAILED {h}+300 source: bad stored copy")),
        "{}",
        r.stderr
    );
    // Without --stats: the Go tool's line per block, stamped.
    let p = Pair::new().await;
    p.src.put_block(&block("one", 0, 10), 2).await.unwrap();
    let r = p.rsync(&[]).await;
    r.assert_code(0);
    let copying: Vec<&str> = r
        .stderr
        .lines()
        .filter(|l| l.contains("copying data block 1 of 1"))
        .collect();
    assert_eq!(copying.len(), 1, "{}", r.stderr);
    assert!(stamped(copying[0]), "{}", copying[0]);
}

/// The SystemRootToken goes only with /index and /mounts: every block read and write,
/// on both sides, carries another token (made for the run), and the reads still pass
/// the keepstores' signature checks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_block_request_carries_the_root_token() {
    let p = Pair::new().await;
    for i in 0..15 {
        p.src.put_block(&block("priv", i, 700), 2).await.unwrap();
    }
    p.rsync(&[]).await.assert_code(0);
    p.rsync(&["--verify", "--verify-data"]).await.assert_code(0);
    assert_all_copied(&p, 2).await;
    for c in [&p.src, &p.dst] {
        let root = keep_testcluster::token_digest_of(c.system_root_token());
        let blocks: Vec<_> = c
            .request_log()
            .into_iter()
            .filter(|r| !is_admin_path(&r.path) && r.service != "controller")
            .collect();
        assert!(!blocks.is_empty());
        for r in &blocks {
            assert_ne!(r.token.as_deref(), Some(root.as_str()), "{r:?}");
            assert!(r.token.is_some(), "{r:?}");
        }
        let admin = count_requests(c, |r| {
            is_admin_path(&r.path) && r.token.as_deref() == Some(root.as_str())
        });
        assert!(admin > 0);
    }
    assert_tokens_isolated(&p);
    figure(
        "least privilege for the root token",
        "15 blocks copied, then --verify --verify-data",
        "no block read or write on either side carried the SystemRootToken",
    );
}
