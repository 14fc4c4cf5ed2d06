//! Conformance of keep-testcluster's keepstore to the real one (issue 12): the same
//! requests, every route and error that keep-rsync or the Python SDK can meet, sent
//! to a real keepstore built from the upstream source and to ours, comparing status,
//! body and the Keep headers. v3 mode against Arvados 3.2.1, `arvados_version(2)`
//! against 2.7.4.
//!
//! Both keepstores get the same secrets (SystemRootToken, ManagementToken, signing
//! key, TTL) and the same stored blocks, so an identical request must get an
//! identical answer; what differs by nature (signature expiry, mtimes, volume UUIDs
//! and device ids, request ids, dates, how a generated body is framed) is normalised
//! first. No difference remains; the crate README says what is not compared.

use std::collections::BTreeMap;

use keep_client::signing::sign;
use keep_client::{BlockHash, Locator, SignatureFormat, SigningKey, Token};
use keep_testcluster::TestCluster;
use keep_testcluster::upstream::{
    HttpAnswer, RealCluster, Upstream, Version, VolumeSpec, http_request,
};

/// One side under test.
struct Side {
    port: u16,
    mount: String,
}

/// What is compared of an answer.
#[derive(Debug, PartialEq, Eq)]
struct Seen {
    status: u16,
    body: String,
    headers: BTreeMap<String, String>,
}

/// The headers a Keep client reads, or that say which route answered.
const HEADERS: &[&str] = &[
    "content-length",
    "content-type",
    "x-keep-replicas-stored",
    "x-keep-storage-classes-confirmed",
    "access-control-allow-methods",
    "access-control-allow-origin",
    "access-control-allow-headers",
    "access-control-expose-headers",
    "access-control-max-age",
    "vary",
    "location",
];

fn redact_signatures(s: &str) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find("+A") {
        out.push_str(&rest[..i]);
        let after = &rest[i + 2..];
        let sig_len = after
            .find(|c: char| !(c.is_ascii_hexdigit() || c == '@'))
            .unwrap_or(after.len());
        out.push_str("+A<sig>");
        rest = &after[sig_len..];
    }
    out.push_str(rest);
    out
}

/// Normalises what legitimately differs: signatures (expiry), index mtimes (only
/// their unit is kept), a side's own mount UUID and device id.
fn seen(a: &HttpAnswer, side: &Side, kind: Kind) -> Seen {
    let text = String::from_utf8_lossy(&a.body).into_owned();
    let body = match kind {
        // Block data: its hash says enough.
        Kind::Plain if a.body.len() > 200 || std::str::from_utf8(&a.body).is_err() => {
            format!("{} bytes, md5 {}", a.body.len(), BlockHash::of(&a.body))
        }
        Kind::Plain => redact_signatures(&text).replace(&side.mount, "<mount>"),
        Kind::Index => {
            // Sorted lines with the mtime replaced by its unit; the end marker kept.
            let mut lines: Vec<String> = text
                .lines()
                .map(|l| match l.split_once(' ') {
                    Some((loc, t)) => {
                        let unit = if t.len() >= 18 { "ns" } else { "s" };
                        format!("{loc} <{unit}>")
                    }
                    None => l.to_owned(),
                })
                .collect();
            lines.sort();
            format!(
                "{lines:?} terminated={}",
                text.ends_with("\n\n") || text == "\n"
            )
        }
        Kind::Mounts => {
            let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
            let mounts: Vec<String> = v
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|m| {
                            format!(
                                "allow_write={} allow_trash={} replication={} classes={} keys={:?}",
                                m["allow_write"],
                                m["allow_trash"],
                                m["replication"],
                                m["storage_classes"],
                                m.as_object()
                                    .map(|o| {
                                        let mut k: Vec<&String> = o
                                            .keys()
                                            // 2.7.4 also dumps its driver parameters.
                                            .filter(|k| k.as_str() != "Volume")
                                            .collect();
                                        k.sort();
                                        k
                                    })
                                    .unwrap_or_default()
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            format!("{mounts:?}")
        }
        Kind::Cut => format!("{} bytes received", a.body.len()),
        Kind::JsonKeys => {
            let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
            let mut keys: Vec<&String> = v
                .as_object()
                .map(|o| o.keys().collect())
                .unwrap_or_default();
            keys.sort();
            format!("JSON object with {keys:?}")
        }
    };
    let headers = HEADERS
        .iter()
        .filter_map(|h| {
            let v = a.header(h);
            // Generated bodies (index, JSON): Go sends a small one with its length
            // and a large one chunked; either way, the body is what is compared.
            let v = match (h, kind) {
                (&"content-length", Kind::Index | Kind::Mounts | Kind::JsonKeys) => None,
                _ => v,
            };
            v.map(|v| (h.to_string(), v.to_owned()))
        })
        .map(|(h, v)| match h.as_str() {
            // "in arbitrary order" (§5.4): compare the items sorted.
            "x-keep-storage-classes-confirmed" => {
                let mut items: Vec<&str> = v.split(", ").collect();
                items.sort_unstable();
                (h, items.join(", "))
            }
            _ => (h, redact_signatures(&v)),
        })
        .collect();
    Seen {
        status: a.status,
        body,
        headers,
    }
}

#[derive(Clone, Copy)]
enum Kind {
    Plain,
    Index,
    Mounts,
    /// A body the server cuts short: only its length is compared.
    Cut,
    /// A JSON object: only its keys are compared.
    JsonKeys,
}

struct Case {
    name: &'static str,
    method: &'static str,
    path: String,
    headers: Vec<(&'static str, String)>,
    body: Vec<u8>,
    kind: Kind,
}

fn case(name: &'static str, method: &'static str, path: impl Into<String>) -> Case {
    Case {
        name,
        method,
        path: path.into(),
        headers: Vec::new(),
        body: Vec::new(),
        kind: Kind::Plain,
    }
}

impl Case {
    fn token(mut self, t: &str) -> Case {
        self.headers.push(("Authorization", format!("Bearer {t}")));
        self
    }
    fn body(mut self, b: &[u8]) -> Case {
        self.body = b.to_vec();
        self
    }
    fn kind(mut self, k: Kind) -> Case {
        self.kind = k;
        self
    }
}

fn data(i: u8, n: usize) -> Vec<u8> {
    (0..n)
        .map(|j| (j as u8).wrapping_mul(31).wrapping_add(i))
        .collect()
}

/// Every case, for one version.
fn cases(root: &str, mgmt: &str, key: &SigningKey, ttl_secs: u64, mount: &str) -> Vec<Case> {
    let user = "v2/zzzzz-gj3su-000000000000001/usertokenusertokenusertokenusertokenusertoken";
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let format = SignatureFormat::Current {
        ttl: std::time::Duration::from_secs(ttl_secs),
    };
    let signed = |loc: &Locator, tok: &str, exp: u64| -> String {
        sign(loc, key, &Token::new(tok), exp, format).to_wire()
    };
    let foo_loc = Locator::of(b"foo");
    let bare: Locator = foo_loc
        .hash()
        .to_hex()
        .parse()
        .expect("a bare hash is a locator");
    let big = Locator::of(&data(1, 200_000));
    let bad_small = Locator::of(&data(2, 1000));
    let bad_big = Locator::of(&data(3, 300_000));
    let missing = Locator::of(b"never stored");
    let good = signed(&foo_loc, user, now + 3600);
    let hash = foo_loc.hash().to_hex();
    vec![
        case("get signed", "GET", format!("/{good}")).token(user),
        case("head signed", "HEAD", format!("/{good}")).token(user),
        case(
            "get big signed",
            "GET",
            format!("/{}", signed(&big, user, now + 3600)),
        )
        .token(user),
        case("get signed, no token", "GET", format!("/{good}")),
        case("get signed, other token", "GET", format!("/{good}")).token(root),
        case(
            "get bad signature",
            "GET",
            format!("/{}", good.replace("+A", "+A0")),
        )
        .token(user),
        case(
            "get expired",
            "GET",
            format!("/{}", signed(&foo_loc, user, now - 3600)),
        )
        .token(user),
        case("get unsigned", "GET", format!("/{foo_loc}")).token(user),
        case(
            "get bare hash, signed",
            "GET",
            format!("/{}", signed(&bare, user, now + 3600)),
        )
        .token(user),
        case(
            "head bare hash, signed",
            "HEAD",
            format!("/{}", signed(&bare, user, now + 3600)),
        )
        .token(user),
        case("get //signed", "GET", format!("//{good}")).token(user),
        case(
            "get empty block",
            "GET",
            format!("/{}", signed(&Locator::of(b""), user, now + 3600)),
        )
        .token(user),
        case(
            "get missing",
            "GET",
            format!("/{}", signed(&missing, user, now + 3600)),
        )
        .token(user),
        case("get bad locator", "GET", format!("/{hash}+3+A+zz")).token(user),
        case(
            "get corrupt small",
            "GET",
            format!("/{}", signed(&bad_small, user, now + 3600)),
        )
        .token(user),
        case(
            "get corrupt large",
            "GET",
            format!("/{}", signed(&bad_big, user, now + 3600)),
        )
        .token(user)
        .kind(Kind::Cut),
        case(
            "head corrupt small",
            "HEAD",
            format!("/{}", signed(&bad_small, user, now + 3600)),
        )
        .token(user),
        case("put /hash", "PUT", format!("/{}", BlockHash::of(b"bar")))
            .token(user)
            .body(b"bar"),
        case(
            "put /hash again",
            "PUT",
            format!("/{}", BlockHash::of(b"bar")),
        )
        .token(user)
        .body(b"bar"),
        case(
            "put /hash, no token",
            "PUT",
            format!("/{}", BlockHash::of(b"baz")),
        )
        .body(b"baz"),
        case(
            "put /hash+size",
            "PUT",
            format!("/{}+3", BlockHash::of(b"qux")),
        )
        .token(user)
        .body(b"qux"),
        case("put wrong content", "PUT", format!("/{hash}"))
            .token(user)
            .body(b"not foo"),
        case(
            "put empty block",
            "PUT",
            "/d41d8cd98f00b204e9800998ecf8427e",
        )
        .token(user),
        case(
            "put over a corrupt copy",
            "PUT",
            format!("/{}", bad_small.hash()),
        )
        .token(user)
        .body(&data(2, 1000)),
        case("put //hash", "PUT", format!("//{hash}"))
            .token(user)
            .body(b"foo"),
        case("post /hash", "POST", format!("/{hash}"))
            .token(user)
            .body(b"foo"),
        case("get /", "GET", "/"),
        case("get /status.json", "GET", "/status.json").kind(Kind::JsonKeys),
        case("options", "OPTIONS", format!("/{hash}")),
        case("index, no token", "GET", "/index"),
        case("index, wrong token", "GET", "/index").token("wrongwrongwrong"),
        case("index, user token", "GET", "/index").token(user),
        case("index", "GET", "/index").token(root).kind(Kind::Index),
        case("index prefix", "GET", format!("/index/{}", &hash[..3]))
            .token(root)
            .kind(Kind::Index),
        case(
            "index ?prefix=",
            "GET",
            format!("/index?prefix={}", &hash[..2]),
        )
        .token(root)
        .kind(Kind::Index),
        case("index bad prefix", "GET", "/index/xyz").token(root),
        case("mounts", "GET", "/mounts")
            .token(root)
            .kind(Kind::Mounts),
        case("mounts, user token", "GET", "/mounts")
            .token(user)
            .kind(Kind::Mounts),
        case("mount index", "GET", format!("/mounts/{mount}/blocks"))
            .token(root)
            .kind(Kind::Index),
        case(
            "mount index prefix",
            "GET",
            format!("/mounts/{mount}/blocks/{}", &hash[..1]),
        )
        .token(root)
        .kind(Kind::Index),
        case(
            "unknown mount index",
            "GET",
            "/mounts/zzzzz-nyw5e-999999999999999/blocks",
        )
        .token(root),
        case("touch", "TOUCH", format!("/{foo_loc}")).token(root),
        case("touch, user token", "TOUCH", format!("/{foo_loc}")).token(user),
        case("health, no token", "GET", "/_health/ping"),
        case("health, wrong token", "GET", "/_health/ping").token("wrong"),
        case("health", "GET", "/_health/ping").token(mgmt),
    ]
}

struct Pair {
    real: RealCluster,
    ours: TestCluster,
}

async fn pair(up: &Upstream, version: Version) -> Pair {
    let real = up
        .cluster(version)
        .keepstores(1)
        .start()
        .await
        .expect("real keepstore starts");
    let ours = TestCluster::builder()
        .keepstores(1)
        .arvados_version(if version == Version::V2_7_4 { 2 } else { 3 })
        .system_root_token(real.system_root_token())
        .management_token(real.management_token())
        .signing_key(real.signing_key())
        .ttl(real.ttl())
        .start()
        .await
        .unwrap();
    for (i, n) in [(0u8, 0usize), (1, 200_000), (2, 1000), (3, 300_000), (9, 0)] {
        let d = match i {
            0 => b"foo".to_vec(),
            9 => Vec::new(),
            _ => data(i, n),
        };
        real.write_on_volume(0, &d, None).unwrap();
        ours.put_block_on(0, &d).await.unwrap();
    }
    for (i, n) in [(2u8, 1000usize), (3, 300_000)] {
        let h = BlockHash::of(&data(i, n));
        assert!(real.corrupt_on_volume(0, &h));
        assert!(ours.corrupt_block(0, &h).await);
    }
    Pair { real, ours }
}

/// Sends `all` to both keepstores and returns the differences (and the count).
async fn compare(real: &Side, ours: &Side, all: Vec<Case>) -> (Vec<String>, usize) {
    let mut differences = Vec::new();
    let mut compared = 0;
    for c in all {
        // The same request to our side names our mount.
        let ours_path = c.path.replace(&real.mount, &ours.mount);
        let headers: Vec<(&str, &str)> = c.headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let a = http_request(real.port, c.method, &c.path, &headers, &c.body)
            .await
            .expect("real keepstore answers");
        let b = http_request(ours.port, c.method, &ours_path, &headers, &c.body)
            .await
            .expect("test keepstore answers");
        let (sa, sb) = (seen(&a, real, c.kind), seen(&b, ours, c.kind));
        compared += 1;
        if sa != sb {
            differences.push(format!(
                "{} ({} {}):\n  real: {sa:?}\n  ours: {sb:?}",
                c.name, c.method, c.path
            ));
        }
    }
    (differences, compared)
}

fn sides(p: &Pair) -> (Side, Side) {
    let real = Side {
        port: p.real.real_keepstores()[0].port,
        mount: p.real.volumes()[0].uuid.clone(),
    };
    let ours_ks = &p.ours.keepstores()[0];
    let ours = Side {
        port: ours_ks.url.rsplit(':').next().unwrap().parse().unwrap(),
        mount: ours_ks.volumes[0].clone(),
    };
    (real, ours)
}

async fn conform(version: Version) {
    let up = Upstream::require();
    let p = pair(&up, version).await;
    let (real, ours) = sides(&p);
    let key = SigningKey::new(p.real.signing_key());
    let all = cases(
        p.real.system_root_token(),
        p.real.management_token(),
        &key,
        p.real.ttl().as_secs(),
        &real.mount,
    );
    let (differences, compared) = compare(&real, &ours, all).await;
    let v = if version == Version::V2_7_4 { 2 } else { 3 };
    println!(
        "{compared} requests compared against Arvados {}",
        version.as_str()
    );
    assert!(
        differences.is_empty(),
        "keep-testcluster (v{v}) differs from Arvados {}:\n{}",
        version.as_str(),
        differences.join("\n")
    );
}

/// Volumes with `Replication` and storage classes (issue 13): one keepstore with a
/// `default` volume that keeps 2 copies and an `archive` volume; PUTs asking for no
/// class, each class, both, and an unknown one. The same volume UUIDs on both sides
/// give the same volume order, so the same volume is chosen.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the upstream Arvados binaries; scripts/test runs it when they are found"]
async fn upstream_conformance_classes_and_replication_3_2_1() {
    let up = Upstream::require();
    let real = up
        .cluster(Version::V3_2_1)
        .keepstores(1)
        .storage_class("default", true, 0)
        .storage_class("archive", false, 0)
        .volumes(vec![
            VolumeSpec::on(0).replication(2),
            VolumeSpec::on(0).classes(&["archive"]),
        ])
        .start()
        .await
        .expect("real keepstore starts");
    let ours = TestCluster::builder()
        .keepstores(1)
        .volumes_per_keepstore(2)
        .storage_class("default", true, 0)
        .storage_class("archive", false, 0)
        .volume_replication(0, 0, 2)
        .volume_classes(0, 1, &["archive"])
        .system_root_token(real.system_root_token())
        .management_token(real.management_token())
        .signing_key(real.signing_key())
        .ttl(real.ttl())
        .start()
        .await
        .unwrap();
    let p = Pair { real, ours };
    let (real, ours) = sides(&p);
    assert_eq!(
        p.real
            .volumes()
            .iter()
            .map(|v| v.uuid.clone())
            .collect::<Vec<_>>(),
        p.ours.keepstores()[0].volumes,
        "the same volume UUIDs on both sides"
    );
    let root = p.real.system_root_token().to_owned();
    let put = |name: &'static str, body: &[u8], classes: Option<&str>| {
        let mut c = case(name, "PUT", format!("/{}", BlockHash::of(body)))
            .token(&root)
            .body(body);
        if let Some(cl) = classes {
            c.headers.push(("X-Keep-Storage-Classes", cl.to_owned()));
        }
        c
    };
    let mut all = vec![
        case("mounts", "GET", "/mounts")
            .token(&root)
            .kind(Kind::Mounts),
        put("no class", b"block one", None),
        put("no class, again", b"block one", None),
        // Blocks whose volume order starts with the default volume (replication 2).
        put("no class, other block", b"block seven", None),
        put("no class, third block", b"block eight", None),
        put("no class, fourth block", b"block nine", None),
        put("archive", b"block two", Some("archive")),
        put("default, archive", b"block three", Some("default, archive")),
        put(
            "default, archive again",
            b"block three",
            Some("archive,default"),
        ),
        put(
            "archive, unknown",
            b"block four",
            Some("archive, nonexistent"),
        ),
        put("unknown only", b"block five", Some("nonexistent")),
        put("empty header", b"block six", Some(" , ")),
    ];
    for (i, m) in p.real.volumes().iter().enumerate() {
        let name: &'static str = if i == 0 {
            "volume 0 index"
        } else {
            "volume 1 index"
        };
        all.push(
            case(name, "GET", format!("/mounts/{}/blocks", m.uuid))
                .token(&root)
                .kind(Kind::Index),
        );
    }
    let (differences, compared) = compare(&real, &ours, all).await;
    println!("{compared} requests compared against Arvados 3.2.1");
    assert!(
        differences.is_empty(),
        "keep-testcluster differs from Arvados 3.2.1 on classes and replication:\n{}",
        differences.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the upstream Arvados binaries; scripts/test runs it when they are found"]
async fn upstream_conformance_v3_against_3_2_1() {
    conform(Version::V3_2_1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the upstream Arvados binaries; scripts/test runs it when they are found"]
async fn upstream_conformance_v2_against_2_7_4() {
    conform(Version::V2_7_4).await;
}
