//! `--by-collections` and `--skip-unreferenced` (issue 16), on keep-testcluster's
//! collections API. What each block should end up with is worked out here from the
//! collections this test makes (keep-balance's rule: in each class a collection asks
//! for, the most replicas any of them asks; null = the destination's default), not
//! from keep-rsync's code.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use keep_client::BlockHash;
use serde_json::json;

use crate::util::{Pair, block, block_puts, builder, probe, report};

/// The destination: four keepstores, each with a `default` volume and an `archive`
/// one; two replicas by default.
fn destination(id: &str) -> keep_testcluster::Builder {
    let mut b = builder(id)
        .keepstores(4)
        .volumes_per_keepstore(2)
        .replication(2)
        .storage_class("default", true, 0)
        .storage_class("archive", false, 0);
    for k in 0..4 {
        b = b.volume_classes(k, 1, &["archive"]);
    }
    b
}

/// A manifest of one stream holding `blocks` (unsigned: the SystemRootToken may).
fn manifest(blocks: &[Vec<u8>]) -> String {
    let locs: Vec<String> = blocks
        .iter()
        .map(|b| format!("{}+{}", BlockHash::of(b), b.len()))
        .collect();
    let total: usize = blocks.iter().map(Vec::len).sum();
    format!(". {} 0:{total}:data.bin\n", locs.join(" "))
}

/// Replicas per class name (distinct volumes holding the block) on the destination.
async fn classes_held(p: &Pair) -> BTreeMap<BlockHash, BTreeMap<&'static str, usize>> {
    let archive: Vec<String> = p
        .dst
        .keepstores()
        .iter()
        .map(|k| k.volumes[1].clone())
        .collect();
    let mut out: BTreeMap<BlockHash, BTreeMap<&'static str, usize>> = BTreeMap::new();
    for (h, vols) in p.dst.holdings_by_volume().await {
        let e = out.entry(h).or_default();
        for v in vols {
            let class = if archive.contains(&v) {
                "archive"
            } else {
                "default"
            };
            *e.entry(class).or_default() += 1;
        }
    }
    out
}

/// Collections with replication 1, 2 (null: the default) and 3, in `default` and
/// `archive`, blocks shared between them, a trashed one, an old version, and two
/// unreferenced blocks, one stored long ago and one just now: one run gives every
/// block exactly what its collections ask (so keep-balance would neither pull nor
/// trash), leaves out the old unreferenced block and lists it; a rerun sends
/// nothing; --verify --by-collections agrees; a new collection asking for more is
/// topped up by the next run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_block_gets_what_its_collections_ask() {
    let p = Pair::with(builder("srcaa"), destination("dstbb")).await;
    let blocks = |tag: &str| -> Vec<Vec<u8>> { (0..4).map(|i| block(tag, i, 700)).collect() };
    let (a, b, c, d, e, f, g, h) = (
        blocks("a"),
        blocks("b"),
        blocks("c"),
        blocks("d"),
        blocks("e"),
        blocks("f"),
        blocks("g"),
        blocks("h"),
    );
    let (u_old, u_young) = (block("u-old", 0, 700), block("u-young", 0, 700));
    for x in [&a, &b, &c, &d, &e, &f, &g, &h].into_iter().flatten() {
        p.src.put_block(x, 1).await.unwrap();
    }
    p.src.put_block(&u_old, 1).await.unwrap();
    p.src.put_block(&u_young, 1).await.unwrap();
    // Stored before the blob signature TTL: no client can still hold a signature.
    let long_ago = SystemTime::now() - p.src.blob_signature_ttl() - Duration::from_secs(3600);
    let mut aged = false;
    for k in 0..p.src.keepstores().len() {
        aged |= p
            .src
            .set_block_mtime(k, &BlockHash::of(&u_old), long_ago)
            .await;
    }
    assert!(aged, "the old unreferenced block was aged");

    let make = |name: &str, blocks: Vec<Vec<u8>>, repl: serde_json::Value, classes: &[&str]| {
        let mut attrs = json!({
            "name": name,
            "manifest_text": manifest(&blocks),
            "replication_desired": repl,
        });
        if !classes.is_empty() {
            attrs["storage_classes_desired"] = json!(classes);
        }
        attrs
    };
    let with = |v: &[Vec<u8>], extra: &Vec<u8>| {
        let mut v = v.to_vec();
        v.push(extra.clone());
        v
    };
    let src = &p.src;
    src.create_collection(make("one", a.clone(), json!(1), &[]))
        .await
        .unwrap();
    src.create_collection(make("default", b.clone(), json!(null), &[]))
        .await
        .unwrap();
    src.create_collection(make("three", with(&c, &a[0]), json!(3), &[]))
        .await
        .unwrap();
    src.create_collection(make("archive", with(&d, &b[0]), json!(1), &["archive"]))
        .await
        .unwrap();
    src.create_collection(make("both", e.clone(), json!(2), &["default", "archive"]))
        .await
        .unwrap();
    let trashed = src
        .create_collection(make("trashed", f.clone(), json!(3), &[]))
        .await
        .unwrap();
    src.trash_collection(trashed["uuid"].as_str().unwrap())
        .await
        .unwrap();
    let versioned = src
        .create_collection(make("versioned", g.clone(), json!(1), &[]))
        .await
        .unwrap();
    src.update_collection(
        versioned["uuid"].as_str().unwrap(),
        json!({"manifest_text": manifest(&h)}),
    )
    .await
    .unwrap();

    // What each block should have, per class.
    let mut want: BTreeMap<BlockHash, BTreeMap<&'static str, usize>> = BTreeMap::new();
    let mut ask = |blocks: &[Vec<u8>], class: &'static str, n: usize| {
        for x in blocks {
            let e = want.entry(BlockHash::of(x)).or_default();
            let v = e.entry(class).or_default();
            *v = (*v).max(n);
        }
    };
    ask(&a, "default", 1);
    ask(&b, "default", 2);
    ask(&c, "default", 3);
    ask(&a[..1], "default", 3);
    ask(&d, "archive", 1);
    ask(&b[..1], "archive", 1);
    ask(&e, "default", 2);
    ask(&e, "archive", 2);
    ask(&f, "default", 3);
    ask(&g, "default", 1);
    ask(&h, "default", 1);
    ask(std::slice::from_ref(&u_young), "default", 2);

    let list = p.dir.path().join("unreferenced.txt");
    let list_arg = list.display().to_string();
    let r = p
        .rsync(&[
            "--by-collections",
            "--skip-unreferenced",
            "--unreferenced-list",
            &list_arg,
            "--json",
        ])
        .await;
    r.assert_code(0);
    let rep = report(&r.stdout);
    assert_eq!(
        rep["collections"]["collections"], 8,
        "{}",
        rep["collections"]
    );
    assert_eq!(rep["collections"]["trashed"], 1);
    assert_eq!(rep["collections"]["old_versions"], 1);
    assert_eq!(rep["plan"]["unreferenced"]["blocks"], 2);
    assert_eq!(rep["plan"]["unreferenced_young"]["blocks"], 1);
    assert_eq!(rep["plan"]["unreferenced_skipped"]["blocks"], 1);
    assert_eq!(rep["plan"]["unreferenced_skipped"]["bytes"], 700);
    let listed = std::fs::read_to_string(&list).unwrap();
    assert_eq!(
        listed.trim(),
        format!("{}+700 unreferenced", BlockHash::of(&u_old)),
        "the list names exactly the block left behind"
    );

    let held = classes_held(&p).await;
    assert!(
        !held.contains_key(&BlockHash::of(&u_old)),
        "the old unreferenced block was left behind"
    );
    let mut wrong = Vec::new();
    for (hash, classes) in &want {
        let got = held.get(hash).cloned().unwrap_or_default();
        if &got != classes {
            wrong.push(format!("{hash}: wants {classes:?}, holds {got:?}"));
        }
    }
    assert_eq!(held.len(), want.len(), "no other block was copied");
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    // And where keep-balance looks: in each class, on the first keepstores of the
    // block's probe order (every keepstore here has a volume of each class).
    let ks = p.dst.keepstores();
    for (hash, vols) in p.dst.holdings_by_volume().await {
        for (class, slot) in [("default", 0), ("archive", 1)] {
            let mut on: Vec<usize> = (0..ks.len())
                .filter(|&k| vols.contains(&ks[k].volumes[slot]))
                .collect();
            on.sort_unstable();
            let n = want[&hash].get(class).copied().unwrap_or(0);
            let mut first: Vec<usize> = probe(&p.dst, &hash).into_iter().take(n).collect();
            first.sort_unstable();
            assert_eq!(on, first, "{hash} in {class}");
        }
    }

    // A rerun finds everything in place; --verify checks the same wants.
    p.dst.clear_request_log();
    p.rsync(&["--by-collections", "--skip-unreferenced"])
        .await
        .assert_code(0);
    assert_eq!(block_puts(&p.dst).len(), 0, "the rerun sent nothing");
    let v = p
        .rsync(&["--verify", "--by-collections", "--skip-unreferenced"])
        .await;
    v.assert_code(0);
    // Without --skip-unreferenced the old block is missing, and --verify says so.
    let v = p.rsync(&["--verify", "--by-collections"]).await;
    v.assert_code(1);
    assert!(
        v.stdout.contains(&BlockHash::of(&u_old).to_string()),
        "{}",
        v.stdout
    );

    // A new collection asks for a third replica of b[1]: the next run tops it up.
    src.create_collection(make("more", vec![b[1].clone()], json!(3), &[]))
        .await
        .unwrap();
    p.dst.clear_request_log();
    let r = p
        .rsync(&["--by-collections", "--skip-unreferenced", "--json"])
        .await;
    r.assert_code(0);
    assert_eq!(report(&r.stdout)["plan"]["topped_up"]["blocks"], 1);
    let puts = block_puts(&p.dst);
    assert_eq!(puts.len(), 1, "one more replica: {puts:?}");
    let held = classes_held(&p).await;
    assert_eq!(held[&BlockHash::of(&b[1])]["default"], 3);
}

/// `--skip-unreferenced` needs `--by-collections`, and `--by-collections` needs the
/// source's API server: each says so in one line, exit 2, nothing written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collection_flags_explain_what_they_need() {
    let p = Pair::new().await;
    let r = p.rsync(&["--skip-unreferenced"]).await;
    r.assert_code(2);
    assert!(r.stderr.contains("--by-collections"), "{}", r.stderr);
    // Settings without an API host: keep services as JSON and the TTL as a flag.
    let json = p.dir.path().join("src-services.json");
    std::fs::write(&json, p.src.services_json()).unwrap();
    let text = std::fs::read_to_string(&p.src_conf).unwrap();
    let no_api: String = text
        .lines()
        .filter(|l| !l.starts_with("ARVADOS_API_HOST="))
        .map(|l| format!("{l}\n"))
        .collect();
    let conf = p.dir.path().join("src-no-api.conf");
    std::fs::write(&conf, no_api).unwrap();
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&conf, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let r = crate::util::run(&[
        "-src".into(),
        conf.display().to_string(),
        "-src-keep-services-json".into(),
        json.display().to_string(),
        "-src-blob-signature-ttl".into(),
        "336h".into(),
        "-dst".into(),
        p.dst_conf.display().to_string(),
        "--by-collections".into(),
    ])
    .await;
    r.assert_code(2);
    assert!(
        r.stderr.contains("ARVADOS_API_HOST") && r.stderr.lines().count() == 1,
        "{}",
        r.stderr
    );
    assert!(block_puts(&p.dst).is_empty());
}

/// Peak resident memory (MiB) of one keep-rsync run with `extra` flags.
async fn peak_mib(p: &Pair, extra: &[&str]) -> f64 {
    let child = crate::util::spawn(p, extra);
    let watch = crate::util::watch_peak_rss(&child);
    let out = child.wait_with_output().await.unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        crate::util::child_output(p)
    );
    watch.await.unwrap() as f64 / 1024.0
}

/// A collection whose manifest is about 100 MB as the API sends it (a million
/// signed locators): the list answer streams through the parser, so keep-rsync's
/// peak memory grows by about the manifest once (the parser's string), not twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_manifest_is_not_held_twice() {
    let p = Pair::new().await;
    let blocks: Vec<Vec<u8>> = (0..1000).map(|i| block("huge", i, 100)).collect();
    let mut locs = Vec::new();
    for b in &blocks {
        p.src.put_block(b, 1).await.unwrap();
        locs.push(format!("{}+{}", BlockHash::of(b), b.len()));
    }
    let refs = 1_100_000;
    let mut text = String::with_capacity(refs * 40);
    text.push('.');
    for i in 0..refs {
        text.push(' ');
        text.push_str(&locs[i % locs.len()]);
    }
    text.push_str(" 0:100:f\n");
    let c = p
        .src
        .create_collection(json!({"name": "huge", "manifest_text": text}))
        .await
        .unwrap();
    drop(text);
    let sent = p
        .src
        .get_collection(c["uuid"].as_str().unwrap())
        .await
        .unwrap()["manifest_text"]
        .as_str()
        .unwrap()
        .len() as f64
        / (1024.0 * 1024.0);
    assert!(sent > 90.0, "the manifest as sent is {sent:.0} MiB");
    let base = peak_mib(&p, &["--dry-run"]).await;
    let with = peak_mib(&p, &["--dry-run", "--by-collections"]).await;
    crate::util::figure(
        "by-collections manifest memory",
        &format!("one {sent:.0} MiB manifest"),
        &format!("peak RSS {base:.0} MiB without, {with:.0} MiB with --by-collections"),
    );
    assert!(
        with - base < 1.5 * sent,
        "peak grew by {:.0} MiB for a {sent:.0} MiB manifest",
        with - base
    );
}

/// Runs `arv-put` of the project's venv (the real Arvados Python SDK) against `c`
/// with the user token; returns what it printed (a collection uuid).
fn arv_put(c: &keep_testcluster::TestCluster, home: &std::path::Path, args: &[&str]) -> String {
    let venv = std::env::var_os("KEEP_INTEROP_VENV").map_or_else(
        || std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.venv"),
        std::path::PathBuf::from,
    );
    let bin = venv.join("bin/arv-put");
    assert!(
        bin.exists(),
        "{} missing: run scripts/python-venv or set KEEP_INTEROP_VENV",
        bin.display()
    );
    let out = std::process::Command::new(&bin)
        .args(["--no-cache", "--retries", "0"])
        .args(args)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", home)
        .env("ARVADOS_API_HOST", c.api_host())
        .env("ARVADOS_API_TOKEN", c.user_token())
        .env("ARVADOS_API_HOST_INSECURE", "1")
        .output()
        .expect("arv-put starts");
    assert!(
        out.status.success(),
        "arv-put {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// Collections saved by the real Python SDK: `arv-put --replication 3
/// --storage-classes archive` and a plain `arv-put`. keep-rsync `--by-collections`
/// reads what the SDK saved and puts the first file's block on three archive volumes
/// and the second's on two default ones (the destination's default), as the arv-put
/// flags asked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the Python SDK venv (scripts/python-venv); scripts/test runs it"]
async fn python_sdk_interop_arv_put_collections_are_copied_as_they_ask() {
    let mut src = builder("srcaa")
        .volumes_per_keepstore(2)
        .storage_class("default", true, 0)
        .storage_class("archive", false, 0);
    for k in 0..3 {
        src = src.volume_classes(k, 1, &["archive"]);
    }
    let p = Pair::with(src, destination("dstbb")).await;
    let (one, two) = (block("sdk-archive", 0, 5000), block("sdk-plain", 0, 6000));
    let home = p.dir.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let (f1, f2) = (p.dir.path().join("one.bin"), p.dir.path().join("two.bin"));
    std::fs::write(&f1, &one).unwrap();
    std::fs::write(&f2, &two).unwrap();
    let (src_c, home2) = (&p.src, home.clone());
    let f1s = f1.display().to_string();
    let u1 = tokio::task::block_in_place(|| {
        arv_put(
            src_c,
            &home2,
            &["--replication", "3", "--storage-classes", "archive", &f1s],
        )
    });
    let f2s = f2.display().to_string();
    let u2 = tokio::task::block_in_place(|| arv_put(src_c, &home2, &[&f2s]));
    for u in [&u1, &u2] {
        assert!(u.contains("-4zz18-"), "arv-put printed {u:?}");
    }
    p.rsync(&["--by-collections"]).await.assert_code(0);
    let held = classes_held(&p).await;
    let want_one: BTreeMap<&str, usize> = [("archive", 3)].into();
    let want_two: BTreeMap<&str, usize> = [("default", 2)].into();
    assert_eq!(held[&BlockHash::of(&one)], want_one);
    assert_eq!(held[&BlockHash::of(&two)], want_two);
    p.rsync(&["--verify", "--by-collections"])
        .await
        .assert_code(0);
}

/// A collection asking for more replicas than the destination's volumes can hold:
/// one warning before copying, every replica that fits is written, and the blocks
/// are reported under-replicated (exit 1), not silently short.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collection_asking_more_than_the_destination_holds_is_reported() {
    let p = Pair::with(builder("srcaa"), destination("dstbb")).await;
    let blocks: Vec<Vec<u8>> = (0..3).map(|i| block("five", i, 900)).collect();
    for b in &blocks {
        p.src.put_block(b, 1).await.unwrap();
    }
    p.src
        .create_collection(json!({"name": "five", "manifest_text": manifest(&blocks),
                                  "replication_desired": 5}))
        .await
        .unwrap();
    let r = p.rsync(&["--by-collections"]).await;
    r.assert_code(1);
    assert!(
        r.stderr
            .contains("collections ask for 5 replicas in class default, but the destination's writable volumes hold 4"),
        "{}",
        r.stderr
    );
    let held = classes_held(&p).await;
    for b in &blocks {
        assert_eq!(
            held[&BlockHash::of(b)]["default"],
            4,
            "every replica that fits"
        );
    }
}
