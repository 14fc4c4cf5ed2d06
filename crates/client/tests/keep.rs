//! KeepClient HTTP behaviour against scripted servers.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use keep_client::signing::sign;
use keep_client::{
    BackoffConfig, BlockHash, ClientOptions, Error, IndexEntry, KeepClient, KeepService, Locator,
    RetryConfig, ServiceType, SignatureFormat, SigningKey, Token,
};

use crate::mock::{Gauge, MockServer, Reply, keepstore, servers};

const TOKEN: &str = "v2/zzzzz-gj3su-077z32aux8dg2s1/testtokensecret0123456789abcdefghijklmnopq";
const KEY: &str = "testsigningkey0123456789abcdefghijklmnopqrstuvwxyz";

pub(crate) fn options() -> ClientOptions {
    ClientOptions {
        retry: RetryConfig {
            retries: 2,
            backoff: BackoffConfig {
                initial: Duration::from_millis(1),
                max: Duration::from_millis(5),
                base: 2.0,
            },
            seed: Some(1),
        },
        stall_timeout: Duration::from_secs(10),
        ..ClientOptions::default()
    }
}

fn client(services: Vec<KeepService>) -> KeepClient {
    KeepClient::new(services, Token::new(TOKEN), options()).unwrap()
}

/// One service per body; service `i` answers every request 200 with `bodies[i]`.
async fn serving(bodies: Vec<Bytes>) -> (Vec<crate::mock::MockServer>, Vec<KeepService>) {
    servers(bodies.len(), |i| {
        let b = bodies[i].clone();
        move |_: &crate::mock::Request| Reply::ok(b.clone())
    })
    .await
}

/// A locator for `data`, signed with the test key and token.
fn signed(data: &[u8]) -> Locator {
    sign(
        &Locator::of(data),
        &SigningKey::new(KEY),
        &Token::new(TOKEN),
        0x7fff_ffff,
        SignatureFormat::Current {
            ttl: Duration::from_secs(1_209_600),
        },
    )
}

/// The signature part of a signed locator (what must never be printed).
fn signature_of(l: &Locator) -> String {
    let wire = l.to_wire();
    let i = wire.find("+A").unwrap();
    wire[i + 2..i + 42].to_owned()
}

/// The probe order of `hash` over `n` mock services, as indexes into the mock list.
fn probe(hash: &BlockHash, n: usize) -> Vec<usize> {
    let uuids: Vec<String> = (0..n).map(crate::mock::uuid).collect();
    keep_client::rendezvous::probe_order(hash, &uuids)
}

/// Index into the mock list of a service (`zzzzz-bi6l4-<15 hex>`).
fn idx(s: &KeepService) -> usize {
    usize::from_str_radix(&s.uuid[12..], 16).unwrap()
}

/// Asserts that no secret appears in an error's Display or Debug.
fn assert_no_secrets(e: &Error, loc: &Locator) {
    let sig = signature_of(loc);
    for text in [e.to_string(), format!("{e:?}"), format!("{e:#?}")] {
        assert!(!text.contains(TOKEN), "token in {text}");
        assert!(!text.contains("testtokensecret"), "token secret in {text}");
        assert!(!text.contains(KEY), "key in {text}");
        assert!(!text.contains(&sig), "signature in {text}");
        for (i, _) in text.match_indices("+A") {
            assert!(
                text[i..].starts_with("+A<redacted>"),
                "unredacted +A hint in {text}"
            );
        }
    }
}

#[tokio::test]
async fn get_retries_then_succeeds() {
    let data = Bytes::from_static(b"hello keep");
    let loc = signed(&data);
    let mut n = 0;
    let d = data.clone();
    let (mocks, services) = servers(1, |_| {
        let d = d.clone();
        move |_: &crate::mock::Request| {
            n += 1;
            if n == 1 {
                Reply::new(503, "volume unavailable\n")
            } else {
                Reply::ok(d.clone())
            }
        }
    })
    .await;
    let c = client(services);
    assert_eq!(c.get(&loc).await.unwrap(), data);
    let reqs = mocks[0].requests();
    assert_eq!(reqs.len(), 2);
    for r in &reqs {
        assert_eq!(r.method, "GET");
        // Reads send the full locator, signature included (§8.3).
        assert_eq!(r.path, format!("/{}", loc.to_wire()));
        assert_eq!(r.header("authorization"), Some(&*format!("Bearer {TOKEN}")));
        let id = r.header("x-request-id").unwrap();
        assert!(id.starts_with("req-") && id.len() == 24, "{id}");
    }
    // One request id per operation.
    assert_eq!(
        reqs[0].header("x-request-id"),
        reqs[1].header("x-request-id")
    );
}

#[tokio::test]
async fn get_fails_over_on_checksum_mismatch() {
    let data = Bytes::from_static(b"the real data");
    let loc = signed(&data);
    let order = probe(&loc.hash(), 3);
    let first = order[0];
    // Same length, wrong content on the first service in probe order.
    let bodies = (0..3).map(|i| {
        if i == first {
            Bytes::from_static(b"the fake data")
        } else {
            data.clone()
        }
    });
    let (mocks, services) = serving(bodies.collect()).await;
    let c = client(services);
    assert_eq!(c.get(&loc).await.unwrap(), data);
    assert_eq!(mocks[first].count(), 1);
    assert_eq!(mocks[order[1]].count(), 1);
    assert_eq!(mocks[order[2]].count(), 0);

    // From that one service only, the checksum error itself comes back, after retries.
    let e = c.get_from(&c.services()[first], &loc).await.unwrap_err();
    assert!(matches!(e, Error::ChecksumMismatch { .. }), "{e:?}");
    assert_eq!(e.reason(), "checksum mismatch");
    assert_eq!(mocks[first].count(), 1 + 3);
    assert_no_secrets(&e, &loc);
}

/// `get_unchecked` returns what the first service sends when the length is right (the
/// caller relies on the receiving keepstore's check), but still fails over on a
/// wrong length.
#[tokio::test]
async fn get_unchecked_checks_only_the_length() {
    let data = Bytes::from_static(b"the real data");
    let loc = signed(&data);
    let order = probe(&loc.hash(), 3);
    let (first, second) = (order[0], order[1]);
    let bodies = (0..3).map(|i| {
        if i == first {
            Bytes::from_static(b"the fake data")
        } else if i == second {
            Bytes::from_static(b"short")
        } else {
            data.clone()
        }
    });
    let (mocks, services) = serving(bodies.collect()).await;
    let c = client(services);
    assert_eq!(
        c.get_unchecked(&loc).await.unwrap(),
        Bytes::from_static(b"the fake data")
    );
    assert_eq!(mocks[first].count(), 1);
    // The checked read skips both bad services.
    assert_eq!(c.get(&loc).await.unwrap(), data);
    assert_eq!(mocks[order[2]].count(), 1);
}

#[tokio::test]
async fn get_all_404_is_not_found_without_retries() {
    let loc = signed(b"missing");
    let (mocks, services) = servers(3, |_| keepstore()).await;
    let c = client(services);
    let e = c.get(&loc).await.unwrap_err();
    match &e {
        Error::NotFound { locator, failures } => {
            assert_eq!(locator, &loc.unsigned());
            assert_eq!(failures.len(), 3);
            assert!(failures.iter().all(|f| f.status == Some(404)));
        }
        other => panic!("{other:?}"),
    }
    assert!(!e.is_retryable());
    assert_eq!(e.reason(), "not found");
    assert!(mocks.iter().all(|m| m.count() == 1));
    let e = c.head(&loc).await.unwrap_err();
    assert!(matches!(e, Error::NotFound { .. }));
    assert_no_secrets(&e, &loc);
}

#[tokio::test]
async fn get_mixed_failures_lists_each_service() {
    let loc = signed(b"data");
    let (mocks, services) = servers(2, |i| {
        move |_: &crate::mock::Request| {
            if i == 0 {
                Reply::new(404, "file does not exist\n")
            } else {
                Reply::new(500, "disk on fire\n")
            }
        }
    })
    .await;
    let c = client(services);
    let e = c.get(&loc).await.unwrap_err();
    match &e {
        Error::ReadFailed { failures, .. } => {
            assert_eq!(failures.len(), 2);
            assert!(e.is_retryable());
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(mocks[0].count(), 1, "404 is not retried");
    assert_eq!(mocks[1].count(), 3, "500 is retried in every pass");
    assert!(e.to_string().contains("disk on fire"), "{e}");
}

#[tokio::test]
async fn get_bad_signature_is_permission_denied() {
    let loc = signed(b"data");
    let (_mocks, services) = servers(2, |i| {
        move |_: &crate::mock::Request| {
            if i == 0 {
                Reply::new(400, "invalid signature\n")
            } else {
                // 2.x keepstore (§14).
                Reply::new(403, "Forbidden\n")
            }
        }
    })
    .await;
    let c = client(services);
    let e = c.get(&loc).await.unwrap_err();
    assert!(matches!(e, Error::PermissionDenied { .. }), "{e:?}");
    assert!(!e.is_retryable());
    assert_no_secrets(&e, &loc);
}

#[tokio::test]
async fn get_checks_size_hint_against_content_length() {
    // The hint says 5 bytes; the server sends 3 (with the right MD5 for those 3).
    let loc = Locator::new(BlockHash::of(b"foo"), 5);
    let (_mocks, services) = servers(1, |_| |_: &crate::mock::Request| Reply::ok("foo")).await;
    let c = client(services);
    let e = c.get(&loc).await.unwrap_err();
    match &e {
        Error::SizeMismatch { expected, got, .. } => {
            assert_eq!(*expected, 5);
            assert!(got.contains("Content-Length is 3"), "{got}");
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn get_truncated_body_is_a_transfer_error() {
    let data = Bytes::from(vec![7u8; 100_000]);
    let loc = signed(&data);
    let d = data.slice(..50_000);
    let (mocks, services) = servers(1, |_| {
        let d = d.clone();
        move |_: &crate::mock::Request| Reply::ok(d.clone()).header("Content-Length", 100_000)
    })
    .await;
    let c = client(services);
    let e = c.get(&loc).await.unwrap_err();
    assert!(e.is_retryable(), "{e:?}");
    assert_eq!(mocks[0].count(), 3);
    assert_no_secrets(&e, &loc);
}

#[tokio::test]
async fn empty_block_needs_no_server() {
    let c = client(Vec::new());
    let loc: Locator = "d41d8cd98f00b204e9800998ecf8427e+0".parse().unwrap();
    assert!(c.get(&loc).await.unwrap().is_empty());
    assert_eq!(c.head(&loc).await.unwrap(), 0);
    let e = c.get(&signed(b"x")).await.unwrap_err();
    assert!(matches!(e, Error::NoServices { .. }));
}

#[tokio::test]
async fn head_returns_size() {
    let data = Bytes::from_static(b"twelve bytes");
    let loc = signed(&data);
    let d = data.clone();
    let (mocks, services) = servers(1, |_| {
        let d = d.clone();
        move |r: &crate::mock::Request| {
            assert_eq!(r.method, "HEAD");
            Reply::ok(d.clone())
        }
    })
    .await;
    assert_eq!(client(services).head(&loc).await.unwrap(), 12);
    assert_eq!(mocks[0].count(), 1);
}

#[tokio::test]
async fn put_goes_to_first_r_writable_services_in_probe_order() {
    let data = Bytes::from_static(b"replicate me");
    let hash = BlockHash::of(&data);
    let (mocks, mut services) = servers(5, |_| keepstore()).await;
    // Make the first service in probe order read-only: it must be skipped.
    let probe = probe(&hash, 5);
    services[probe[0]].read_only = true;
    let c = client(services);
    let want: Vec<usize> = c.writable_order(&hash).iter().map(|s| idx(s)).collect();
    assert_eq!(want, probe[1..]);

    let r = c.put(hash, data.clone(), 2).await.unwrap();
    assert_eq!(r.replicas, 2);
    let mut stored: Vec<usize> = r
        .stored_on
        .iter()
        .map(|u| usize::from_str_radix(&u[12..], 16).unwrap())
        .collect();
    stored.sort();
    let mut first_two = vec![probe[1], probe[2]];
    first_two.sort();
    assert_eq!(stored, first_two);
    assert_eq!(mocks[probe[0]].count(), 0, "read-only service written");
    assert_eq!(mocks[probe[3]].count() + mocks[probe[4]].count(), 0);
    let req = &mocks[probe[1]].requests()[0];
    assert_eq!(req.method, "PUT");
    assert_eq!(req.path, format!("/{hash}"), "writes send only the hash");
    assert_eq!(req.header("x-keep-desired-replicas"), Some("2"));
    assert_eq!(
        req.header("authorization"),
        Some(&*format!("Bearer {TOKEN}"))
    );
    assert_eq!(req.header("x-keep-storage-classes"), None);
    assert_eq!(req.body, data);
    let lengths: Vec<_> = req.headers.get_all("content-length").iter().collect();
    assert_eq!(lengths, [data.len().to_string().as_str()]);
    assert!(r.locator.is_signed());
    assert_eq!(r.locator.hash(), hash);
    // The PutResult does not print the signature.
    assert!(!format!("{r:?}").contains(&"f".repeat(40)));
    // And the data can be read back.
    assert_eq!(c.get(&r.locator).await.unwrap(), data);
}

#[tokio::test]
async fn put_fails_over_and_reports_insufficient_replicas() {
    let data = Bytes::from_static(b"some block");
    let hash = BlockHash::of(&data);
    let probe = probe(&hash, 3);
    // First in probe order: full (507, not retried); second: 500 (retried every
    // pass); third: fine.
    let (mocks, services) = servers(3, |i| {
        let mut store = keepstore();
        let role = probe.iter().position(|&p| p == i).unwrap();
        move |r: &crate::mock::Request| match role {
            0 => Reply::new(507, "insufficient storage\n"),
            1 => Reply::new(500, "oops\n"),
            _ => store(r),
        }
    })
    .await;
    let c = client(services);
    let e = c.put(hash, data.clone(), 3).await.unwrap_err();
    match &e {
        Error::InsufficientReplicas {
            wanted,
            stored,
            failures,
            ..
        } => {
            assert_eq!((*wanted, *stored), (3, 1));
            assert_eq!(failures.len(), 2);
            let reasons: Vec<&str> = failures.iter().map(|f| f.reason).collect();
            assert!(reasons.contains(&"storage full"), "{reasons:?}");
            assert!(reasons.contains(&"server error"), "{reasons:?}");
        }
        other => panic!("{other:?}"),
    }
    assert!(e.is_retryable(), "the 500 could go away");
    assert_eq!(mocks[probe[0]].count(), 1, "507 is not retried");
    assert_eq!(mocks[probe[1]].count(), 3, "500 is retried in every pass");
    assert_eq!(
        mocks[probe[2]].count(),
        1,
        "a stored replica is not rewritten"
    );
    let text = e.to_string();
    assert!(text.contains("stored 1 of 3"), "{text}");
    assert!(
        text.contains("insufficient storage") && text.contains("oops"),
        "{text}"
    );

    // With replicas = 1 the failure of the first service moves on to the next ones.
    let r = c.put(hash, data, 1).await.unwrap();
    assert_eq!(r.stored_on, [c.services()[probe[2]].uuid.clone()]);
}

#[tokio::test]
async fn put_2x_full_and_hash_mismatch() {
    let data = Bytes::from_static(b"block");
    let hash = BlockHash::of(&data);
    // 2.x: 503 "Full" is not retried; 422 is a content rejection.
    let (mocks, services) =
        servers(1, |_| |_: &crate::mock::Request| Reply::new(503, "Full\n")).await;
    let c = client(services);
    let e = c.put(hash, data.clone(), 1).await.unwrap_err();
    assert!(!e.is_retryable(), "{e:?}");
    assert_eq!(mocks[0].count(), 1);

    let (_m, services) = servers(1, |_| {
        |_: &crate::mock::Request| Reply::new(422, "Hash mismatch in request\n")
    })
    .await;
    let e = client(services)
        .put(hash, data.clone(), 1)
        .await
        .unwrap_err();
    assert!(matches!(e, Error::ContentRejected { .. }), "{e:?}");
    assert!(!e.is_retryable());

    // 3.x: our in-memory keepstore rejects data that does not match the hash.
    let (_m, services) = servers(1, |_| keepstore()).await;
    let e = client(services)
        .put(BlockHash::of(b"other"), data, 1)
        .await
        .unwrap_err();
    assert!(matches!(e, Error::ContentRejected { .. }), "{e:?}");
    assert_eq!(e.reason(), "checksum mismatch");
}

#[tokio::test]
async fn put_through_proxy_trusts_replicas_stored() {
    let data = Bytes::from_static(b"via proxy");
    let hash = BlockHash::of(&data);
    let (mocks, mut services) = servers(2, |_| {
        let mut store = keepstore();
        move |r: &crate::mock::Request| {
            let mut reply = store(r);
            reply.headers.retain(|(k, _)| k != "X-Keep-Replicas-Stored");
            reply.header("X-Keep-Replicas-Stored", 2)
        }
    })
    .await;
    for s in &mut services {
        s.service_type = ServiceType::Proxy;
    }
    let c = client(services);
    assert!(c.has_proxy());
    let r = c.put(hash, data, 2).await.unwrap();
    assert_eq!(r.replicas, 2);
    assert_eq!(r.stored_on.len(), 1);
    assert_eq!(mocks[0].count() + mocks[1].count(), 1, "one upload");
    let m = if mocks[0].count() == 1 {
        &mocks[0]
    } else {
        &mocks[1]
    };
    assert_eq!(m.requests()[0].header("x-keep-desired-replicas"), Some("2"));
}

#[tokio::test]
async fn put_proxy_uploads_one_at_a_time_until_enough() {
    // Each proxy stores only one replica: two sequential uploads are needed.
    let data = Bytes::from_static(b"two proxies");
    let hash = BlockHash::of(&data);
    let (mocks, mut services) = servers(3, |_| keepstore()).await;
    for s in &mut services {
        s.service_type = ServiceType::Proxy;
    }
    let c = client(services);
    let r = c.put(hash, data, 2).await.unwrap();
    assert_eq!(r.replicas, 2);
    assert_eq!(mocks.iter().map(MockServer::count).sum::<usize>(), 2);
}

#[tokio::test]
async fn put_storage_classes() {
    let data = Bytes::from_static(b"classy");
    let hash = BlockHash::of(&data);
    let (mocks, services) = servers(1, |_| {
        let mut store = keepstore();
        move |r: &crate::mock::Request| {
            store(r).header("X-Keep-Storage-Classes-Confirmed", "special=1, default=1")
        }
    })
    .await;
    let mut o = options();
    o.storage_classes = vec!["special".into()];
    let c = KeepClient::new(services, Token::new(TOKEN), o).unwrap();
    let r = c.put(hash, data, 1).await.unwrap();
    assert_eq!(r.classes_confirmed.get("special"), Some(&1));
    assert_eq!(
        mocks[0].requests()[0].header("x-keep-storage-classes"),
        Some("special")
    );
}

fn index_body(lines: &[(&[u8], u64, i64)]) -> String {
    let mut s = String::new();
    for (data, size, mtime) in lines {
        s.push_str(&format!("{}+{size} {mtime}\n", BlockHash::of(data)));
    }
    s
}

#[tokio::test]
async fn index_streams_entries_split_across_chunks() {
    let mut body = index_body(&[
        (b"foo", 3, 1_700_000_000_000_000_001),
        (b"bar", 3, 1_443_559_274),
        (b"foo", 3, 1_700_000_000_000_000_002),
    ]);
    body.push('\n');
    let b = Bytes::from(body);
    // Split in the middle of lines and of the terminator.
    let chunks = vec![
        b.slice(..10),
        b.slice(10..50),
        b.slice(50..b.len() - 1),
        b.slice(b.len() - 1..),
    ];
    let (mocks, services) = servers(1, |_| {
        let chunks = chunks.clone();
        move |_: &crate::mock::Request| Reply::chunked(200, chunks.clone())
    })
    .await;
    let c = client(services);
    let mut got: Vec<IndexEntry> = Vec::new();
    let stats = c
        .index(&c.services()[0], "", |e| got.push(e))
        .await
        .unwrap();
    assert_eq!(stats.entries, 3);
    assert_eq!(stats.bytes, b.len() as u64);
    assert_eq!(got[0].hash, BlockHash::of(b"foo"));
    assert_eq!(got[1].mtime_ns, 1_443_559_274_000_000_000);
    let r = &mocks[0].requests()[0];
    assert_eq!(r.path, "/index");
    assert_eq!(r.header("authorization"), Some(&*format!("Bearer {TOKEN}")));

    let _ = c.index(&c.services()[0], "acb", |_| {}).await;
    assert_eq!(mocks[0].requests()[1].path, "/index/acb");
    assert!(c.index(&c.services()[0], "XYZ", |_| {}).await.is_err());
}

#[tokio::test]
async fn truncated_index_is_rejected_naming_the_service() {
    let body = index_body(&[(b"foo", 3, 1)]); // no blank end line
    let (mocks, services) = servers(1, |_| {
        let body = body.clone();
        move |_: &crate::mock::Request| Reply::ok(body.clone())
    })
    .await;
    let c = client(services);
    let mut n = 0;
    let e = c.index(&c.services()[0], "", |_| n += 1).await.unwrap_err();
    match &e {
        Error::IncompleteIndex { service } => assert_eq!(service, "zzzzz-bi6l4-000000000000000"),
        other => panic!("{other:?}"),
    }
    assert!(e.to_string().contains("zzzzz-bi6l4-000000000000000"));
    assert_eq!(n, 1);
    assert_eq!(mocks[0].count(), 1, "no retry once entries were delivered");
}

#[tokio::test]
async fn malformed_index_and_prefix_mismatch() {
    let mut body = index_body(&[(b"foo", 3, 1)]);
    body.push_str("this is not an index line\n\n");
    let (_m, services) = servers(1, |_| {
        let body = body.clone();
        move |_: &crate::mock::Request| Reply::ok(body.clone())
    })
    .await;
    let c = client(services);
    let e = c.index(&c.services()[0], "", |_| {}).await.unwrap_err();
    match &e {
        Error::MalformedIndex {
            service,
            line_number,
            line,
            ..
        } => {
            assert_eq!(service, "zzzzz-bi6l4-000000000000000");
            assert_eq!(*line_number, 2);
            assert_eq!(line, "this is not an index line");
        }
        other => panic!("{other:?}"),
    }
    let e = c.index(&c.services()[0], "37", |_| {}).await.unwrap_err();
    assert!(e.to_string().contains("prefix"), "{e}");
}

#[tokio::test]
async fn index_retries_before_first_entry_and_needs_root_token() {
    let mut n = 0;
    let (mocks, services) = servers(1, |_| {
        move |_: &crate::mock::Request| {
            n += 1;
            if n == 1 {
                Reply::new(502, "bad gateway\n")
            } else {
                Reply::ok("\n")
            }
        }
    })
    .await;
    let c = client(services);
    let stats = c.index(&c.services()[0], "", |_| {}).await.unwrap();
    assert_eq!(stats.entries, 0);
    assert_eq!(mocks[0].count(), 2);

    mocks[0].set_handler(|_| Reply::new(403, "Forbidden\n"));
    let e = c.index(&c.services()[0], "", |_| {}).await.unwrap_err();
    assert!(matches!(e, Error::PermissionDenied { .. }), "{e:?}");
    assert!(e.to_string().contains("SystemRootToken"), "{e}");
    assert_eq!(mocks[0].count(), 3, "403 is not retried");
}

#[tokio::test]
async fn connection_refused_is_retryable_and_named() {
    // Bind then drop a listener to get a port nobody listens on.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let svc = KeepService {
        uuid: "zzzzz-bi6l4-000000000000000".into(),
        url: format!("http://127.0.0.1:{port}"),
        service_type: ServiceType::Disk,
        read_only: false,
    };
    let loc = signed(b"data");
    let c = client(vec![svc]);
    let e = c.get(&loc).await.unwrap_err();
    assert!(matches!(e, Error::Connect { .. }), "{e:?}");
    assert!(e.is_retryable());
    assert_eq!(e.reason(), "connection failed");
    assert!(e.to_string().contains("zzzzz-bi6l4-000000000000000"));
    assert_no_secrets(&e, &loc);
}

/// Servers that echo the request path, token and signed locator back in their error
/// bodies: none of it may reach an error message.
#[tokio::test]
async fn secrets_never_appear_in_errors() {
    let loc = signed(b"secret data");
    let echo = |status: u16| {
        move |r: &crate::mock::Request| {
            Reply::new(
                status,
                format!(
                    "you sent {} with {}",
                    r.path,
                    r.header("authorization").unwrap_or("")
                ),
            )
        }
    };
    let mut errors = Vec::new();
    for status in [400, 401, 403, 404, 422, 500, 503, 507] {
        let (_m, services) = servers(2, |_| echo(status)).await;
        let c = client(services);
        errors.push(c.get(&loc).await.unwrap_err());
        errors.push(c.head(&loc).await.unwrap_err());
        errors.push(
            c.put(loc.hash(), Bytes::from_static(b"secret data"), 2)
                .await
                .unwrap_err(),
        );
        errors.push(c.index(&c.services()[0], "", |_| {}).await.unwrap_err());
    }
    assert_eq!(errors.len(), 32);
    for e in &errors {
        assert_no_secrets(e, &loc);
    }
}

#[tokio::test]
async fn put_empty_block_still_uploads() {
    let (mocks, services) = servers(1, |_| keepstore()).await;
    let c = client(services);
    let r = c.put(BlockHash::EMPTY, Bytes::new(), 1).await.unwrap();
    assert_eq!(r.locator.unsigned(), "d41d8cd98f00b204e9800998ecf8427e+0");
    let req = &mocks[0].requests()[0];
    assert_eq!(req.method, "PUT");
    assert!(req.body.is_empty());
    assert_eq!(req.header("content-length"), Some("0"));
    // replicas = 0 writes nothing.
    let r = c.put(BlockHash::EMPTY, Bytes::new(), 0).await.unwrap();
    assert_eq!(r.replicas, 0);
    assert_eq!(mocks[0].count(), 1);
}

#[tokio::test]
async fn slow_service_times_out_and_is_retried() {
    let data = Bytes::from_static(b"slow data");
    let loc = signed(&data);
    let mut n = 0;
    let (mocks, services) = servers(1, |_| {
        let d = data.clone();
        move |_: &crate::mock::Request| {
            n += 1;
            let r = Reply::ok(d.clone());
            if n == 1 {
                r.delayed(Duration::from_secs(2))
            } else {
                r
            }
        }
    })
    .await;
    let mut o = options();
    o.stall_timeout = Duration::from_millis(300);
    let c = KeepClient::new(services.clone(), Token::new(TOKEN), o.clone()).unwrap();
    assert_eq!(c.get(&loc).await.unwrap(), data);
    assert_eq!(mocks[0].count(), 2);

    // Always slow: a Timeout naming the service, retryable.
    mocks[0].set_handler(|_| Reply::ok("x").delayed(Duration::from_secs(2)));
    o.retry.retries = 0;
    let c = KeepClient::new(services, Token::new(TOKEN), o).unwrap();
    let e = c.get(&loc).await.unwrap_err();
    assert!(matches!(e, Error::Timeout { .. }), "{e:?}");
    assert!(e.is_retryable());
    assert_eq!(e.reason(), "timeout");
    assert_no_secrets(&e, &loc);
}

/// Disk services: R uploads run at once. Proxies: one at a time (§6.6, §8.6).
#[tokio::test]
async fn put_concurrency_disk_versus_proxy() {
    let data = Bytes::from_static(b"concurrent");
    let hash = BlockHash::of(&data);
    for proxy in [false, true] {
        let gauge = Arc::new(Gauge::default());
        let (mocks, mut services) = servers(4, |_| {
            let mut store = keepstore();
            let g = Arc::clone(&gauge);
            move |r: &crate::mock::Request| store(r).gauged(&g, Duration::from_millis(150))
        })
        .await;
        if proxy {
            for s in &mut services {
                s.service_type = ServiceType::Proxy;
            }
        }
        let r = client(services).put(hash, data.clone(), 3).await.unwrap();
        assert_eq!(r.replicas, 3);
        assert_eq!(mocks.iter().map(MockServer::count).sum::<usize>(), 3);
        assert_eq!(gauge.max(), if proxy { 1 } else { 3 }, "proxy={proxy}");
    }
}
