//! Property tests over random and mutated inputs (a small seeded fuzzer, no extra
//! dependency): the locator parsers, the settings-file parser, the streaming index
//! parser (fed in random chunks), the keep services JSON parser and signature
//! verification never panic, and keep their invariants.
//!
//! Seeded by `KEEP_RSYNC_SEED` (printed; the clock otherwise). `KEEP_FUZZ_ITERS` sets
//! the inputs per property (default 10,000); each property also stops after
//! `KEEP_FUZZ_SECS` seconds (default 10). A long run:
//! `KEEP_FUZZ_ITERS=2000000 KEEP_FUZZ_SECS=600 cargo test -p keep-client --test tests fuzz -- --nocapture`.

use std::path::Path;
use std::str::FromStr as _;
use std::time::{Duration, Instant};

use keep_client::index::IndexParser;
use keep_client::services::parse_keep_services_json;
use keep_client::signing::{SignatureFormat, sign, verify};
use keep_client::{
    BlockHash, ClusterSettings, IndexEntry, Locator, MAX_BLOCK_SIZE, SigningKey, Token,
};
use keep_testcluster::report_figure as figure;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    fn pick<'a, T>(&mut self, v: &'a [T]) -> &'a T {
        &v[self.below(v.len())]
    }
}

/// The seed, the iteration count and the time limit of a property.
fn setup(name: &str) -> (Rng, u64, Instant, Duration) {
    let seed = keep_testcluster::test_seed();
    let iters = std::env::var("KEEP_FUZZ_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let secs = std::env::var("KEEP_FUZZ_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    println!("{name}: KEEP_RSYNC_SEED={seed} KEEP_FUZZ_ITERS={iters}");
    (
        Rng(seed ^ 0x5851_f42d_4c95_7f2d),
        iters,
        Instant::now(),
        Duration::from_secs(secs),
    )
}

/// Characters that matter to the parsers, and a few that do not.
const ALPHABET: &[u8] = b"0123456789abcdefABCDEFKRZ+@-_ =#\n\r\t/.:{}[]\",gzxX\x00\xff";

fn random_bytes(rng: &mut Rng, max: usize) -> Vec<u8> {
    let n = rng.below(max + 1);
    (0..n)
        .map(|_| {
            if rng.below(8) == 0 {
                rng.next() as u8
            } else {
                *rng.pick(ALPHABET)
            }
        })
        .collect()
}

/// One to four random edits: replace, insert, delete a range, duplicate a range,
/// truncate, flip case.
fn mutate(rng: &mut Rng, input: &[u8]) -> Vec<u8> {
    let mut v = input.to_vec();
    for _ in 0..1 + rng.below(4) {
        let len = v.len();
        match rng.below(6) {
            0 if len > 0 => {
                let i = rng.below(len);
                v[i] = *rng.pick(ALPHABET);
            }
            1 => {
                let i = rng.below(len + 1);
                let c = if rng.below(4) == 0 {
                    rng.next() as u8
                } else {
                    *rng.pick(ALPHABET)
                };
                v.insert(i, c);
            }
            2 if len > 0 => {
                let i = rng.below(len);
                let j = (i + 1 + rng.below(8)).min(len);
                v.drain(i..j);
            }
            3 if len > 0 => {
                let i = rng.below(len);
                let j = (i + 1 + rng.below(40)).min(len);
                let part = v[i..j].to_vec();
                let at = rng.below(v.len() + 1);
                v.splice(at..at, part);
            }
            4 if len > 0 => v.truncate(rng.below(len)),
            _ if len > 0 => {
                let i = rng.below(len);
                v[i] = if v[i].is_ascii_lowercase() {
                    v[i].to_ascii_uppercase()
                } else {
                    v[i].to_ascii_lowercase()
                };
            }
            _ => {}
        }
    }
    v
}

fn hex(rng: &mut Rng, n: usize) -> String {
    (0..n)
        .map(|_| char::from(b"0123456789abcdef"[rng.below(16)]))
        .collect()
}

fn valid_locator(rng: &mut Rng) -> String {
    let mut s = hex(rng, 32);
    let size = *rng.pick(&[0u64, 3, 1000, MAX_BLOCK_SIZE, MAX_BLOCK_SIZE + 1, u64::MAX]);
    if rng.below(5) > 0 {
        s.push_str(&format!("+{size}"));
    }
    for _ in 0..rng.below(3) {
        match rng.below(4) {
            0 => s.push_str(&format!("+A{}@{}", hex(rng, 40), hex(rng, 8))),
            1 => s.push_str("+K@zzzzz"),
            2 => s.push_str(&format!("+Rzzzzz-{}", hex(rng, 40))),
            _ => s.push_str("+Zfoo"),
        }
    }
    s
}

fn input(rng: &mut Rng, valid: impl Fn(&mut Rng) -> String, max: usize) -> String {
    let bytes = match rng.below(3) {
        0 => random_bytes(rng, max),
        1 => valid(rng).into_bytes(),
        _ => {
            let v = valid(rng);
            mutate(rng, v.as_bytes())
        }
    };
    String::from_utf8_lossy(&bytes).into_owned()
}

#[test]
fn fuzz_locator_parsers() {
    let (mut rng, iters, t0, limit) = setup("fuzz_locator_parsers");
    let (mut ok, mut n) = (0u64, 0u64);
    while n < iters && t0.elapsed() < limit {
        n += 1;
        let s = input(&mut rng, valid_locator, 120);
        let loose = Locator::from_str(&s);
        let strict = Locator::parse_strict(&s);
        if let Ok(l) = &strict {
            assert_eq!(loose.as_ref().ok(), Some(l), "strict but not loose: {s:?}");
            assert!(l.size().is_some(), "{s:?}");
        }
        if let Ok(l) = loose {
            ok += 1;
            assert_eq!(Locator::from_str(&l.to_wire()).as_ref(), Ok(&l), "{s:?}");
            assert!(l.size().is_none_or(|z| z <= MAX_BLOCK_SIZE), "{s:?}");
            // Display and Debug show nothing beyond the unsigned wire form (a
            // mutated input can repeat a signature's text inside another hint).
            let shown = format!("{l} {l:?}");
            let unsigned = l.without_signature().to_wire();
            for h in l
                .hints()
                .iter()
                .filter(|h| h.starts_with('A') && h.len() > 8)
            {
                assert!(
                    !shown.contains(&h[1..]) || unsigned.contains(&h[1..]),
                    "a signature shown: {shown}"
                );
            }
            assert_eq!(l.unsigned(), l.without_signature().unsigned());
            assert_eq!(Locator::from_str(&l.unsigned()).unwrap().hash(), l.hash());
        }
    }
    println!("fuzz_locator_parsers: {n} inputs, {ok} valid");
    figure(
        "fuzz: locator parsers",
        &format!("{n} random/mutated locators ({ok} valid)"),
        "no panic; round trip, strict implies loose, no signature shown",
    );
    assert!(ok > 0 && ok < n, "the generator must produce both kinds");
}

const SECRET: &str = "fuzzsecrettoken0123456789abcdef";

#[test]
fn fuzz_settings_parser() {
    let (mut rng, iters, t0, limit) = setup("fuzz_settings_parser");
    let lines = [
        "ARVADOS_API_HOST=zzzzz.example.com",
        "ARVADOS_API_HOST_INSECURE=true",
        "ARVADOS_API_HOST_INSECURE=0",
        "ARVADOS_BLOB_SIGNING_KEY=k3y",
        "ARVADOS_KEEP_SERVICES=http://a:1 https://b:2/",
        "# comment",
        "",
        "  SPACED = value  ",
        "UNKNOWN=x",
    ];
    let (mut ok, mut n) = (0u64, 0u64);
    while n < iters && t0.elapsed() < limit {
        n += 1;
        let mut text: Vec<String> = (0..rng.below(6))
            .map(|_| {
                let l = rng.pick(&lines).as_bytes().to_vec();
                let l = if rng.below(2) == 0 {
                    mutate(&mut rng, &l)
                } else {
                    l
                };
                String::from_utf8_lossy(&l).into_owned()
            })
            .collect();
        if rng.below(3) == 0 {
            text.push(String::from_utf8_lossy(&random_bytes(&mut rng, 80)).into_owned());
        }
        // The token line itself is never mutated: whatever else is wrong, no error
        // may show its value.
        let at = rng.below(text.len() + 1);
        text.insert(at, format!("ARVADOS_API_TOKEN={SECRET}"));
        let text = text.join(if rng.below(4) == 0 { "\r\n" } else { "\n" });
        match ClusterSettings::parse(&text, Path::new("/fuzz/settings.conf")) {
            Ok(s) => {
                ok += 1;
                let shown = format!("{s:?}");
                assert!(!shown.contains(SECRET), "Debug shows the token");
            }
            Err(e) => {
                let shown = format!("{e} {e:?}");
                assert!(!shown.contains(SECRET), "an error shows the token: {shown}");
                assert!(shown.contains("/fuzz/settings.conf"), "{shown}");
            }
        }
    }
    println!("fuzz_settings_parser: {n} inputs, {ok} parsed");
    figure(
        "fuzz: settings-file parser",
        &format!("{n} random/mutated files ({ok} parsed)"),
        "no panic; no error or Debug output shows the token",
    );
    assert!(ok > 0 && ok < n);
}

/// Feeds `body` in random chunks; returns the entries delivered and whether it ended
/// well (and the line of a malformed-line error).
fn parse_chunked(
    rng: &mut Rng,
    prefix: &str,
    body: &[u8],
) -> (Vec<IndexEntry>, Result<(), Option<u64>>) {
    let mut p = IndexParser::new(prefix);
    let mut got = Vec::new();
    let mut rest = body;
    while !rest.is_empty() {
        let max = if rng.below(2) == 0 { 7 } else { 300 };
        let n = 1 + rng.below(rest.len().min(max));
        let (chunk, tail) = rest.split_at(n);
        rest = tail;
        if let Err(e) = p.feed(chunk, &mut |e| got.push(e)) {
            let line = match e {
                keep_client::IndexError::Malformed { line_number, .. }
                | keep_client::IndexError::DataAfterTerminator { line_number } => Some(line_number),
                _ => None,
            };
            return (got, Err(line));
        }
    }
    let end = p.finish().map_err(|_| None);
    (got, end)
}

#[test]
fn fuzz_index_parser() {
    let (mut rng, iters, t0, limit) = setup("fuzz_index_parser");
    let (mut ok, mut n) = (0u64, 0u64);
    while n < iters && t0.elapsed() < limit {
        n += 1;
        let digits = rng.below(3);
        let prefix = hex(&mut rng, digits);
        let mut want = Vec::new();
        let mut body = String::new();
        for _ in 0..rng.below(12) {
            let h = format!("{prefix}{}", hex(&mut rng, 32 - prefix.len()));
            let size = rng.below(1 << 26) as u64;
            let mtime: i64 = if rng.below(2) == 0 {
                1_700_000_000
            } else {
                1_700_000_000_123_456_789
            };
            body.push_str(&format!("{h}+{size} {mtime}\n"));
            want.push((BlockHash::from_hex(&h).unwrap(), size));
        }
        body.push('\n');
        // A valid body: the same entries whatever the chunking.
        let (got, end) = parse_chunked(&mut rng, &prefix, body.as_bytes());
        assert_eq!(end, Ok(()), "{body:?}");
        let got: Vec<(BlockHash, u64)> = got.iter().map(|e| (e.hash, e.size)).collect();
        assert_eq!(got, want);
        // Cut short anywhere before its end: never accepted.
        let cut = rng.below(body.len());
        let (_, end) = parse_chunked(&mut rng, &prefix, &body.as_bytes()[..cut]);
        assert!(
            end.is_err(),
            "a truncated index was accepted: {:?}",
            &body[..cut]
        );
        // Mutated or random: no panic, and two chunkings agree.
        let bad = if rng.below(4) == 0 {
            random_bytes(&mut rng, 200)
        } else {
            mutate(&mut rng, body.as_bytes())
        };
        let (a, ea) = parse_chunked(&mut rng, &prefix, &bad);
        let (b, eb) = parse_chunked(&mut rng, &prefix, &bad);
        assert_eq!(
            a,
            b,
            "entries depend on chunking: {:?}",
            String::from_utf8_lossy(&bad)
        );
        assert_eq!(
            ea.is_ok(),
            eb.is_ok(),
            "{:?}",
            String::from_utf8_lossy(&bad)
        );
        if let (Err(Some(x)), Err(Some(y))) = (ea, eb) {
            assert_eq!(x, y, "{:?}", String::from_utf8_lossy(&bad));
        }
        if ea.is_ok() {
            ok += 1;
            for e in &a {
                assert!(e.hash.has_hex_prefix(&prefix));
            }
        }
    }
    println!("fuzz_index_parser: {n} inputs, {ok} mutated bodies still valid");
    figure(
        "fuzz: index parser (random chunking)",
        &format!("{n} valid, truncated and mutated bodies"),
        "no panic; same entries for any chunking; no truncated body accepted",
    );
}

#[test]
fn fuzz_services_json_and_signatures() {
    let (mut rng, iters, t0, limit) = setup("fuzz_services_json_and_signatures");
    let json = r#"{"items":[{"uuid":"zzzzz-bi6l4-000000000000000","service_host":"127.0.0.1","service_port":25107,"service_ssl_flag":false,"service_type":"disk","read_only":false},{"uuid":"zzzzz-bi6l4-000000000000001","service_host":"::1","service_port":1,"service_ssl_flag":true,"service_type":"proxy"}]}"#;
    let key = SigningKey::new("fuzzsigningkey");
    let token = Token::new(SECRET);
    let now = 1_700_000_000u64;
    let (mut ok_json, mut ok_sig, mut n) = (0u64, 0u64, 0u64);
    while n < iters && t0.elapsed() < limit {
        n += 1;
        let j = String::from_utf8_lossy(&mutate(&mut rng, json.as_bytes())).into_owned();
        if let Ok(list) = parse_keep_services_json(&j) {
            ok_json += 1;
            for s in list {
                assert!(s.url.starts_with("http://") || s.url.starts_with("https://"));
            }
        }
        let loc = Locator::new(BlockHash::of(&n.to_le_bytes()), n);
        let signed = sign(
            &loc,
            &key,
            &token,
            now + 3600,
            SignatureFormat::Current {
                ttl: Duration::from_secs(1_209_600),
            },
        )
        .to_wire();
        let format = SignatureFormat::Current {
            ttl: Duration::from_secs(1_209_600),
        };
        assert_eq!(verify(&signed, &key, &token, now, format), Ok(()));
        let m = String::from_utf8_lossy(&mutate(&mut rng, signed.as_bytes())).into_owned();
        if verify(&m, &key, &token, now, format).is_ok() {
            ok_sig += 1;
        }
    }
    figure(
        "fuzz: services JSON, signature verification",
        &format!("{n} mutated documents and signed locators"),
        "no panic; every accepted service has an http(s) URL",
    );
    println!(
        "fuzz_services_json_and_signatures: {n} inputs, {ok_json} JSON accepted, {ok_sig} mutated signed locators still verified (the signature covers the hash, not the size or other hints)"
    );
}
