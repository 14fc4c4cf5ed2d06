//! Microbenchmarks: locator parsing, signing, MD5 throughput, index parsing.
//! Run with `cargo bench -p keep-client`; compare numbers on the same machine only.

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use keep_client::signing::{sign, verify};
use keep_client::{BlockHash, IndexParser, Locator, SignatureFormat, SigningKey, Token};

const SIGNED: &str =
    "acbd18db4cc2f85cedef654fccc4a4d8+3+A89118b78732c33104a4d6231e8b5a5fa1e4301e3@7fffffff";
const TTL: SignatureFormat = SignatureFormat::Current {
    ttl: Duration::from_secs(1_209_600),
};

fn locators(c: &mut Criterion) {
    c.bench_function("locator/parse_signed", |b| {
        b.iter(|| black_box(SIGNED).parse::<Locator>())
    });
    let l: Locator = SIGNED.parse().expect("valid locator");
    c.bench_function("locator/to_wire", |b| b.iter(|| black_box(&l).to_wire()));
}

fn signing(c: &mut Criterion) {
    let key = SigningKey::new(
        "zfhgfenhffzltr9dixws36j1yhksjoll2grmku38mi7yxd66h5j4q9w4jzanezacp8s6q0ro3hxakfye02152hncy6zml2ed0uc",
    );
    let token = Token::new("3kg6k6lzmp9kj5cpkcoxie963cmvjahbt2fod9zru30k1jqdmi");
    let l = Locator::of(b"foo");
    c.bench_function("signing/sign", |b| {
        b.iter(|| sign(black_box(&l), &key, &token, 0x7fff_ffff, TTL))
    });
    let signed = sign(&l, &key, &token, 0x7fff_ffff, TTL).to_wire();
    c.bench_function("signing/verify", |b| {
        b.iter(|| verify(black_box(&signed), &key, &token, 1_700_000_000, TTL))
    });
}

fn md5(c: &mut Criterion) {
    let mut g = c.benchmark_group("md5");
    g.sample_size(10);
    for (name, size) in [("1MiB", 1usize << 20), ("64MiB", 1 << 26)] {
        let data = vec![0x5au8; size];
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_function(name, |b| b.iter(|| BlockHash::of(black_box(&data))));
    }
    g.finish();
}

fn index(c: &mut Criterion) {
    // 100k entries, fed in 64 KiB chunks as they would arrive from the network.
    let mut body = String::new();
    for i in 0u32..100_000 {
        let h = BlockHash::of(&i.to_le_bytes());
        body.push_str(&format!("{h}+{} 1700000000{:09}\n", i % 67_108_864, i));
    }
    body.push('\n');
    let bytes = body.into_bytes();
    let mut g = c.benchmark_group("index");
    g.throughput(Throughput::Bytes(bytes.len() as u64));
    g.bench_function("parse_100k_entries", |b| {
        b.iter(|| {
            let mut p = IndexParser::new("");
            let mut n = 0u64;
            for chunk in bytes.chunks(64 * 1024) {
                p.feed(chunk, &mut |e| n += e.size).expect("valid index");
            }
            p.finish().expect("terminated");
            black_box(n)
        })
    });
    g.finish();
}

criterion_group!(benches, locators, signing, md5, index);
criterion_main!(benches);
