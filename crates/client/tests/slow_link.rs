//! Many relayed copies sharing one slow link: each socket's kernel buffers take part
//! of a body at once and then drain at the link's pace, so for long stretches the HTTP
//! stack takes no piece of any body to that service although the link never stops.
//! None of the uploads may be cut as stalled. (Issue 15: at `--concurrency 256`
//! through 5 MB/s links, bench/run S7 copied no block in 13 minutes: every upload was
//! cut, read again and cut again.)

use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::future::join_all;
use keep_client::services::parse_keep_services_json;
use keep_client::{BlockHash, ClientOptions, KeepClient, RetryConfig, Token, WriteTarget};
use keep_testcluster::TestCluster;

/// Copies at once, each of `SIZE` bytes, through one destination keepstore's `RATE`
/// bytes/s: the link needs about 8.4 s, `STALL` is a quarter of that.
const COPIES: usize = 16;
const SIZE: usize = 8 << 20;
const RATE: u64 = 16_000_000;
const STALL: Duration = Duration::from_secs(2);

fn block(seed: usize) -> Bytes {
    let mut x = (seed as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..SIZE)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect::<Vec<u8>>()
        .into()
}

fn client(c: &TestCluster, options: ClientOptions) -> KeepClient {
    KeepClient::new(
        parse_keep_services_json(&c.services_json()).unwrap(),
        Token::new(c.system_root_token()),
        options,
    )
    .unwrap()
}

/// A source and a destination cluster of one keepstore each, and a client of each
/// with `STALL` and no retries (a cut upload is a failed copy, not a hidden retry).
async fn pair() -> (TestCluster, TestCluster, KeepClient, KeepClient) {
    let src = TestCluster::builder()
        .cluster_id("slows")
        .keepstores(1)
        .start()
        .await
        .unwrap();
    let dst = TestCluster::builder()
        .cluster_id("slowd")
        .keepstores(1)
        .start()
        .await
        .unwrap();
    let options = ClientOptions {
        stall_timeout: STALL,
        retry: RetryConfig {
            retries: 0,
            ..crate::keep::options().retry
        },
        pool_max_idle_per_host: COPIES,
        ..crate::keep::options()
    };
    let (src_client, dst_client) = (client(&src, options.clone()), client(&dst, options));
    (src, dst, src_client, dst_client)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copies_sharing_a_slow_link_are_not_cut_while_it_moves() {
    let (src, dst, src_client, dst_client) = pair().await;
    dst.faults("keepstore0").unwrap().set_bandwidth(Some(RATE));
    let blocks: Vec<Bytes> = (0..COPIES).map(block).collect();
    let mut reads = Vec::new();
    for b in &blocks {
        let loc = src.put_block(b, 1).await.unwrap();
        reads.push(src.sign_locator(&loc, src.system_root_token()));
    }

    let started = Instant::now();
    let results = join_all(reads.iter().map(|r| {
        let target = WriteTarget::new(r.hash(), 1, &[]);
        let (src_client, dst_client) = (&src_client, &dst_client);
        async move { src_client.copy_to(r, dst_client, &target).await }
    }))
    .await;
    let took = started.elapsed();

    let failed: Vec<String> = results
        .iter()
        .filter_map(|r| r.as_ref().err().map(ToString::to_string))
        .collect();
    assert!(
        failed.is_empty(),
        "{} of {COPIES} copies failed after {took:?}: {:?}",
        failed.len(),
        failed.first()
    );
    // The link really was the limit, for several stall timeouts.
    let floor = Duration::from_secs_f64((COPIES * SIZE) as f64 / RATE as f64);
    assert!(
        took >= floor.mul_f64(0.9),
        "took {took:?}, the link needs {floor:?}"
    );
    // The keepstore's word: every block stored whole (it checks each body's MD5).
    let stored = dst.blocks_on(0).await;
    for b in &blocks {
        assert!(
            stored.contains(&(BlockHash::of(b), SIZE as u64)),
            "a block is missing"
        );
    }
}

/// What the kernel sees must not hide a real stall: a keepstore that stops reading
/// (1 byte/s: its handler sleeps for hours after the first piece) fills the socket
/// buffers, the send queues stop changing, and the upload is cut within about the
/// stall timeout, whether relayed or held: by its clock ("stalled: no byte moved"),
/// or first by the kernel, since `TCP_USER_TIMEOUT` also bounds unanswered
/// zero-window probes ("Connection timed out"; that is what this kernel does).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_to_a_keepstore_that_stopped_reading_is_cut() {
    let (src, dst, src_client, dst_client) = pair().await;
    dst.faults("keepstore0").unwrap().set_bandwidth(Some(1));
    let b = block(99);
    let loc = src.put_block(&b, 1).await.unwrap();
    let read = src.sign_locator(&loc, src.system_root_token());
    let target = WriteTarget::new(read.hash(), 1, &[]);

    let started = Instant::now();
    let relayed = src_client.copy_to(&read, &dst_client, &target).await;
    let relayed_took = started.elapsed();
    let started = Instant::now();
    let held = dst_client.put(BlockHash::of(&b), b.clone(), 1).await;
    let held_took = started.elapsed();

    for (what, result, took) in [
        ("relayed", relayed.map_err(|e| e.to_string()), relayed_took),
        ("held", held.map_err(|e| e.to_string()), held_took),
    ] {
        let e = result.expect_err(what);
        assert!(e.contains("timed out"), "{what}: {e}");
        assert!(
            took >= STALL && took < STALL * 3,
            "{what}: cut after {took:?}"
        );
    }
}
