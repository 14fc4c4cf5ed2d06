//! Keepstore conformance (§5, §14): statuses, bodies, headers, index, signatures.

use std::time::Duration;

use keep_client::{BlockHash, Locator};
use keep_testcluster::TestCluster;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::util::{expired_foo, get_as, http, sb, small};

const FOO: &str = "acbd18db4cc2f85cedef654fccc4a4d8";

#[tokio::test]
async fn put_get_head_3x() {
    let c = small(3).await;
    let ks = &c.keepstores()[0];
    let tok = "some-user-token";
    let r = http()
        .put(format!("{}/{FOO}", ks.url))
        .bearer_auth(tok)
        .header("x-request-id", "req-abc")
        .body("foo")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let h = r.headers();
    assert_eq!(h["x-keep-replicas-stored"], "1");
    assert_eq!(h["x-keep-storage-classes-confirmed"], "default=1");
    assert_eq!(h["x-request-id"], "req-abc");
    assert_eq!(h["access-control-allow-origin"], "*");
    let body = r.text().await.unwrap();
    assert!(body.ends_with('\n'));
    let signed = body.trim_end();
    assert!(signed.starts_with(&format!("{FOO}+3+A")), "{signed}");

    // GET with the signed locator and the same token.
    let r = http()
        .get(format!("{}/{signed}", ks.url))
        .bearer_auth(tok)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["vary"], "X-Keep-Signature");
    // keepstore sets none; Go's server sniffs one from the data (§5.2), as a real
    // 3.2.1 keepstore shows (tests/conformance.rs).
    assert_eq!(r.headers()["content-type"], "text/plain; charset=utf-8");
    assert_eq!(r.headers()["content-length"], "3");
    assert!(
        r.headers()["x-request-id"]
            .to_str()
            .unwrap()
            .starts_with("req-")
    );
    assert_eq!(r.text().await.unwrap(), "foo");
    // Old clients' double slash.
    let r = http()
        .get(format!("{}//{signed}", ks.url))
        .bearer_auth(tok)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // HEAD carries the length and no body.
    let r = http()
        .head(format!("{}/{signed}", ks.url))
        .bearer_auth(tok)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-length"], "3");

    // Signature errors (§3.3).
    let cases = [
        (format!("{FOO}+3"), Some(tok), 400, "invalid signature\n"),
        (
            signed.to_owned(),
            Some("other-token"),
            400,
            "invalid signature\n",
        ),
        (
            signed.to_owned(),
            None,
            401,
            "no token provided in Authorization header\n",
        ),
    ];
    for (loc, t, status, body) in cases {
        let mut rq = http().get(format!("{}/{loc}", ks.url));
        if let Some(t) = t {
            rq = rq.bearer_auth(t);
        }
        assert_eq!(
            sb(rq.send().await.unwrap()).await,
            (status, body.to_owned()),
            "{loc}"
        );
    }
    let expired = expired_foo(&c, tok);
    assert_eq!(
        get_as(format!("{}/{}", ks.url, expired.to_wire()), tok).await,
        (401, "expired signature\n".into())
    );

    // Route and locator errors (§5.1, §5.3, §5.10).
    let other = c.sign_locator(&Locator::of(b"bar"), tok);
    assert_eq!(
        get_as(format!("{}/{}", ks.url, other.to_wire()), tok).await,
        (404, "file does not exist\n".into())
    );
    assert_eq!(
        get_as(format!("{}/{FOO}", ks.url), tok).await,
        (405, "method not allowed\n".into())
    );
    let r = http()
        .get(format!("{}/{FOO}+Zx+3", ks.url))
        .send()
        .await
        .unwrap();
    assert_eq!(sb(r).await, (400, "invalid locator\n".into()));
    for (m, p) in [
        ("GET", "/"),
        ("POST", "/"),
        ("GET", "/status.json"),
        ("PUT", &format!("//{FOO}")),
        ("GET", "/xyz"),
    ] {
        let r = http()
            .request(m.parse().unwrap(), format!("{}{p}", ks.url))
            .send()
            .await
            .unwrap();
        assert_eq!(sb(r).await, (400, "Bad Request\n".into()), "{m} {p}");
    }
    // PUT hash mismatch.
    let r = http()
        .put(format!("{}/{FOO}", ks.url))
        .body("bar")
        .send()
        .await
        .unwrap();
    assert_eq!(
        sb(r).await,
        (
            400,
            format!(
                "content hash 37b51d194a7513e45b56f6524f2d51f2 did not match specified locator {FOO}\n"
            )
        )
    );
    // Without a token, PUT returns an unsigned locator.
    let r = http()
        .put(format!("{}/{FOO}", ks.url))
        .body("foo")
        .send()
        .await
        .unwrap();
    assert_eq!(sb(r).await, (200, format!("{FOO}+3\n")));
    // OPTIONS: CORS, empty body.
    let r = http()
        .request(reqwest::Method::OPTIONS, format!("{}/anything", ks.url))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.headers()["access-control-allow-methods"],
        "GET, HEAD, PUT, OPTIONS"
    );
    assert_eq!(sb(r).await, (200, String::new()));
}

#[tokio::test]
async fn errors_2x() {
    let c = small(2).await;
    let ks = &c.keepstores()[0];
    let tok = "tok";
    let r = http()
        .put(format!("{}/{FOO}", ks.url))
        .body("bar")
        .send()
        .await
        .unwrap();
    assert_eq!(sb(r).await, (422, "Hash mismatch in request\n".into()));
    let r = http()
        .put(format!("{}/{FOO}", ks.url))
        .bearer_auth(tok)
        .body("foo")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let signed = r.text().await.unwrap().trim().to_owned();
    // GET without size is allowed in 2.x.
    let unsized_signed = signed.replacen("+3", "", 1);
    let r = http()
        .get(format!("{}/{unsized_signed}", ks.url))
        .bearer_auth(tok)
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["content-type"], "application/octet-stream");
    assert_eq!(sb(r).await, (200, "foo".into()));
    assert_eq!(
        get_as(format!("{}/{FOO}+3", ks.url), tok).await,
        (403, "Forbidden\n".into())
    );
    let r = http()
        .get(format!("{}/{signed}", ks.url))
        .send()
        .await
        .unwrap();
    assert_eq!(sb(r).await, (403, "Forbidden\n".into()));
    let expired = expired_foo(&c, tok);
    assert_eq!(
        get_as(format!("{}/{}", ks.url, expired.to_wire()), tok).await,
        (401, "Expired permission signature\n".into())
    );
    let bar = c.sign_locator(&Locator::of(b"bar"), tok);
    assert_eq!(
        get_as(format!("{}/{}", ks.url, bar.to_wire()), tok).await,
        (404, "Not Found\n".into())
    );
}

#[tokio::test]
async fn full_and_read_only_volumes() {
    for v in [3u8, 2] {
        let c = TestCluster::builder()
            .keepstores(2)
            .arvados_version(v)
            .full_volume(0, 0)
            .read_only_volume(1, 0)
            .start()
            .await
            .unwrap();
        let want = if v == 3 {
            (507, "insufficient storage\n")
        } else {
            (503, "Full\n")
        };
        for ks in c.keepstores() {
            let r = http()
                .put(format!("{}/{FOO}", ks.url))
                .body("foo")
                .send()
                .await
                .unwrap();
            assert_eq!(sb(r).await, (want.0, want.1.to_owned()), "v{v} {}", ks.uuid);
        }
    }
}

#[tokio::test]
async fn storage_classes() {
    let c = small(3).await;
    let ks = &c.keepstores()[0];
    let r = http()
        .put(format!("{}/{FOO}", ks.url))
        .header("X-Keep-Storage-Classes", "special")
        .body("foo")
        .send()
        .await
        .unwrap();
    assert_eq!(sb(r).await, (507, "insufficient storage\n".into()));
    let r = http()
        .put(format!("{}/{FOO}", ks.url))
        .header("X-Keep-Storage-Classes", "default, special")
        .body("foo")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-keep-storage-classes-confirmed"], "default=1");
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn index_admin_and_format() {
    let dir = tempfile::tempdir().unwrap();
    let c = TestCluster::builder()
        .dir(dir.path())
        .keepstores(1)
        .volumes_per_keepstore(2)
        .start()
        .await
        .unwrap();
    let ks = &c.keepstores()[0];
    let root = c.system_root_token();
    // Empty index is a single newline.
    let r = http()
        .get(format!("{}/index", ks.url))
        .bearer_auth(root)
        .send()
        .await
        .unwrap();
    assert_eq!(sb(r).await, (200, "\n".into()));
    assert_eq!(
        sb(http()
            .get(format!("{}/index", ks.url))
            .send()
            .await
            .unwrap())
        .await,
        (401, "Unauthorized\n".into())
    );
    let r = http()
        .get(format!("{}/index", ks.url))
        .bearer_auth("nope")
        .send()
        .await
        .unwrap();
    assert_eq!(sb(r).await, (403, "Forbidden\n".into()));
    let r = http()
        .get(format!("{}/index/xyz", ks.url))
        .bearer_auth(root)
        .send()
        .await
        .unwrap();
    assert_eq!(sb(r).await, (400, "Bad Request\n".into()));

    // PUT writes to the first volume in §4.2 order; duplicates across volumes are listed.
    let before = volume::now();
    let r = http()
        .put(format!("{}/{FOO}", ks.url))
        .body("foo")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // Copy the block into the other volume: the index then lists it twice.
    let (a, b) = (
        dir.path().join("keep0/vol0/acb"),
        dir.path().join("keep0/vol1/acb"),
    );
    let (from, to) = if a.join(FOO).exists() { (a, b) } else { (b, a) };
    std::fs::create_dir_all(&to).unwrap();
    std::fs::copy(from.join(FOO), to.join(FOO)).unwrap();
    let body = get_as(format!("{}/index/acb", ks.url), root).await.1;
    let lines: Vec<&str> = body.lines().filter(|l| !l.is_empty()).collect();
    assert_eq!(lines.len(), 2, "{body:?}");
    assert!(body.ends_with("\n\n"));
    let (loc, _) = lines[0].split_once(' ').unwrap();
    assert_eq!(loc, format!("{FOO}+3"));
    let max_mtime = |body: &str| -> i64 {
        body.lines()
            .filter(|l| !l.is_empty())
            .map(|l| l.split(' ').nth(1).unwrap().parse::<i64>().unwrap())
            .max()
            .unwrap()
    };
    let t = max_mtime(&body);
    assert!(
        t >= before && t < before + 60_000_000_000,
        "mtime in ns: {t}"
    );
    // mount order: volume_order picks the first volume.
    let mounts: serde_json::Value = http()
        .get(format!("{}/mounts", ks.url))
        .bearer_auth(root)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let uuids: Vec<String> = mounts
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["uuid"].as_str().unwrap().to_owned())
        .collect();
    let first = keep_client::rendezvous::volume_order(&BlockHash::of(b"foo"), &uuids)[0];
    let other = 1 - first;
    let r = http()
        .get(format!("{}/mounts/{}/blocks", ks.url, uuids[first]))
        .bearer_auth(root)
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.text()
            .await
            .unwrap()
            .lines()
            .next()
            .unwrap()
            .split(' ')
            .next()
            .unwrap(),
        format!("{FOO}+3")
    );
    let r = http()
        .get(format!("{}/mounts/{}/blocks/acbd", ks.url, uuids[other]))
        .bearer_auth(root)
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.text().await.unwrap().lines().count(),
        2,
        "one entry, then the blank line"
    );
    // The PUT went to the first volume in §4.2 order.
    let first_dir = dir.path().join(format!("keep0/vol{first}/acb")).join(FOO);
    assert!(first_dir.exists());
    let r = http()
        .get(format!(
            "{}/mounts/zzzzz-nyw5e-nosuchmount0000/blocks",
            ks.url
        ))
        .bearer_auth(root)
        .send()
        .await
        .unwrap();
    assert_eq!(sb(r).await, (404, "file does not exist\n".into()));
    let r = http()
        .get(format!("{}/index?prefix=acbd", ks.url))
        .bearer_auth(root)
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.text()
            .await
            .unwrap()
            .lines()
            .filter(|l| !l.is_empty())
            .count(),
        2
    );
    let r = http()
        .get(format!("{}/index?prefix=ffff", ks.url))
        .bearer_auth(root)
        .send()
        .await
        .unwrap();
    assert_eq!(sb(r).await, (200, "\n".into()));

    // PUT of an existing block touches it.
    tokio::time::sleep(Duration::from_millis(5)).await;
    http()
        .put(format!("{}/{FOO}", ks.url))
        .body("foo")
        .send()
        .await
        .unwrap();
    let body = get_as(format!("{}/index", ks.url), root).await.1;
    let t2 = max_mtime(&body);
    assert!(t2 > t, "touched: {t2} > {t}");
    // TOUCH needs admin.
    let touch = reqwest::Method::from_bytes(b"TOUCH").unwrap();
    let r = http()
        .request(touch.clone(), format!("{}/{FOO}+3", ks.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = http()
        .request(touch.clone(), format!("{}/{FOO}+3", ks.url))
        .bearer_auth(root)
        .send()
        .await
        .unwrap();
    assert_eq!(sb(r).await, (200, String::new()));
    let r = http()
        .request(
            touch,
            format!("{}/37b51d194a7513e45b56f6524f2d51f2+3", ks.url),
        )
        .bearer_auth(root)
        .send()
        .await
        .unwrap();
    assert_eq!(sb(r).await, (404, "file does not exist\n".into()));
    // Health.
    let r = http()
        .get(format!("{}/_health/ping", ks.url))
        .bearer_auth(c.management_token())
        .send()
        .await
        .unwrap();
    assert_eq!(sb(r).await, (200, "{\"health\":\"OK\"}\n".into()));
    let r = http()
        .get(format!("{}/_health/ping", ks.url))
        .send()
        .await
        .unwrap();
    assert_eq!(sb(r).await, (401, "authorization required\n".into()));
}

mod volume {
    pub(crate) fn now() -> i64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as i64
    }
}

#[tokio::test]
async fn duplicates_across_volumes_and_signing_off() {
    let c = TestCluster::builder()
        .keepstores(1)
        .volumes_per_keepstore(2)
        .blob_signing(false)
        .start()
        .await
        .unwrap();
    let ks = &c.keepstores()[0];
    c.put_block_on(0, b"foo").await.unwrap();
    assert_eq!(c.blocks_on(0).await.len(), 1);
    // Unsigned reads work when signing is off (§11).
    let r = http()
        .get(format!("{}/{FOO}+3", ks.url))
        .send()
        .await
        .unwrap();
    assert_eq!(sb(r).await, (200, "foo".into()));
    // A stored copy with bad bytes: 502 (§5.3), and PUT sees a collision (§5.4).
    assert!(c.corrupt_block(0, &BlockHash::of(b"foo")).await);
    let r = http()
        .get(format!("{}/{FOO}+3", ks.url))
        .send()
        .await
        .unwrap();
    assert_eq!(
        sb(r).await,
        (502, "checksum mismatch in stored data\n".into())
    );
    let r = http()
        .put(format!("{}/{FOO}", ks.url))
        .body("foo")
        .send()
        .await
        .unwrap();
    assert_eq!(sb(r).await, (500, "hash collision\n".into()));
    assert!(c.remove_block(0, &BlockHash::of(b"foo")).await);
    assert!(c.blocks_on(0).await.is_empty());
}

#[tokio::test]
async fn on_disk_layout_survives_restart() {
    let dir = tempfile::tempdir().unwrap();
    let key = "k".repeat(60);
    {
        let c = TestCluster::builder()
            .dir(dir.path())
            .keepstores(1)
            .signing_key(&key)
            .start()
            .await
            .unwrap();
        c.put_block_on(0, b"foo").await.unwrap();
        let vol = dir.path().join("keep0/vol0/acb").join(FOO);
        assert_eq!(std::fs::read(vol).unwrap(), b"foo");
        c.shutdown().await;
    }
    let c = TestCluster::builder()
        .dir(dir.path())
        .keepstores(1)
        .signing_key(&key)
        .start()
        .await
        .unwrap();
    assert_eq!(c.blocks_on(0).await, vec![(BlockHash::of(b"foo"), 3)]);
    let loc = c.sign_locator(&Locator::of(b"foo"), "t");
    let r = http()
        .get(format!("{}/{}", c.keepstores()[0].url, loc.to_wire()))
        .bearer_auth("t")
        .send()
        .await
        .unwrap();
    assert_eq!(sb(r).await, (200, "foo".into()));
    assert!(dir.path().join("requests.jsonl").exists());
}

#[tokio::test]
async fn expect_100_continue_and_keep_alive() {
    let c = small(3).await;
    let addr = c.keepstores()[0]
        .url
        .trim_start_matches("http://")
        .to_owned();
    let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let head = format!(
        "PUT /{FOO} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\n"
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf))
        .await
        .expect("100 in time")
        .unwrap();
    assert!(
        String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 100 Continue"),
        "{:?}",
        String::from_utf8_lossy(&buf[..n])
    );
    s.write_all(b"foo").await.unwrap();
    let mut got = Vec::new();
    loop {
        let n = tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        got.extend_from_slice(&buf[..n]);
        if got.ends_with(b"+3\n") {
            break;
        }
    }
    let text = String::from_utf8_lossy(&got);
    assert!(text.contains("HTTP/1.1 200 OK"), "{text}");
    // Same connection again (keep-alive).
    let head = format!("PUT /{FOO} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 3\r\n\r\nfoo");
    s.write_all(head.as_bytes()).await.unwrap();
    let n = tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200 OK"));
}

#[tokio::test]
async fn synthetic_volume_lists_and_serves() {
    let c = TestCluster::builder()
        .keepstores(2)
        .synthetic_blocks(2000, 7)
        .blob_signing(false)
        .start()
        .await
        .unwrap();
    let ks = &c.keepstores()[0];
    let body = get_as(format!("{}/index", ks.url), c.system_root_token())
        .await
        .1;
    assert!(body.ends_with("\n\n"));
    let locs: Vec<&str> = body
        .lines()
        .filter(|l| !l.is_empty())
        .map(|l| l.split(' ').next().unwrap())
        .collect();
    assert_eq!(locs.len(), 2000);
    // Listed as a real Directory volume lists (keepstore 2.7.4 and 3.2.1,
    // unix_volume.go): each `<3 hex>` directory's blocks together and sorted by name
    // (os.ReadDir sorts), the directories themselves in readdir order, not sorted.
    let dirs: Vec<&str> = locs.iter().map(|l| &l[..3]).collect();
    let mut runs: Vec<&str> = dirs.clone();
    runs.dedup();
    let mut distinct = runs.clone();
    distinct.sort_unstable();
    distinct.dedup();
    assert_eq!(
        runs.len(),
        distinct.len(),
        "a directory's blocks are listed together"
    );
    assert_ne!(runs, distinct, "directories in readdir order, not sorted");
    for w in locs.windows(2) {
        if w[0][..3] == w[1][..3] {
            assert!(w[0] < w[1], "sorted within a directory: {} {}", w[0], w[1]);
        }
    }
    // A prefix lists exactly the blocks it names, in the same order.
    for prefix in ["0", "a7", "3f0"] {
        let body = get_as(format!("{}/index/{prefix}", ks.url), c.system_root_token())
            .await
            .1;
        let listed: Vec<&str> = body
            .lines()
            .filter(|l| !l.is_empty())
            .map(|l| l.split(' ').next().unwrap())
            .collect();
        let want: Vec<&str> = locs
            .iter()
            .copied()
            .filter(|l| l.starts_with(prefix))
            .collect();
        assert_eq!(listed, want, "prefix {prefix}");
    }
    for loc in locs.iter().step_by(97) {
        let r = http()
            .get(format!("{}/{loc}", ks.url))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let data = r.bytes().await.unwrap();
        assert_eq!(Locator::of(&data).unsigned(), *loc);
    }
    let data = keep_testcluster::synthetic_block(7, 5);
    assert_eq!(&data[..8], &5u64.to_le_bytes());
}

#[tokio::test]
async fn legacy_signatures_and_seconds() {
    let c = TestCluster::builder()
        .keepstores(1)
        .legacy_signatures(true)
        .index_mtime_seconds(true)
        .start()
        .await
        .unwrap();
    let ks = &c.keepstores()[0];
    let r = http()
        .put(format!("{}/{FOO}", ks.url))
        .bearer_auth("t")
        .body("foo")
        .send()
        .await
        .unwrap();
    let signed = r.text().await.unwrap().trim().to_owned();
    let exp = u64::from_str_radix(signed.rsplit('@').next().unwrap(), 16).unwrap();
    let want = keep_client::signing::signature(
        c.signing_key(),
        &BlockHash::of(b"foo"),
        &keep_client::Token::new("t"),
        exp,
        keep_client::SignatureFormat::Legacy,
    );
    assert!(signed.contains(&want));
    let body = get_as(format!("{}/index", ks.url), c.system_root_token())
        .await
        .1;
    let t: i64 = body
        .lines()
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    assert!(t < 1_000_000_000_000, "seconds: {t}");
}

/// Scale check, not run by default (minutes in a debug build):
/// `cargo test -p keep-testcluster synthetic_ten_million -- --ignored`.
#[tokio::test]
#[ignore]
async fn synthetic_ten_million() {
    let n = 10_000_000u64;
    let c = TestCluster::builder()
        .keepstores(1)
        .synthetic_blocks(n, 3)
        .blob_signing(false)
        .start()
        .await
        .unwrap();
    let ks = &c.keepstores()[0];
    let t = std::time::Instant::now();
    let mut r = http()
        .get(format!("{}/index", ks.url))
        .bearer_auth(c.system_root_token())
        .send()
        .await
        .unwrap();
    let (mut lines, mut last) = (0u64, Vec::new());
    while let Some(chunk) = r.chunk().await.unwrap() {
        lines += chunk.iter().filter(|&&b| b == b'\n').count() as u64;
        // The end marker may arrive in a frame of its own: keep the last two bytes.
        last.extend_from_slice(&chunk);
        let cut = last.len().saturating_sub(2);
        last.drain(..cut);
    }
    assert_eq!(lines, n + 1);
    assert!(last.ends_with(b"\n\n"));
    eprintln!("10M index in {:?}", t.elapsed());
    let loc = Locator::of(&keep_testcluster::synthetic_block(3, n - 1));
    let r = http()
        .get(format!("{}/{}", ks.url, loc.unsigned()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    eprintln!(
        "first read (builds the lookup table) after {:?}",
        t.elapsed()
    );
}
