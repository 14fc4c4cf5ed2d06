//! keep-client against the real Arvados Python SDK (issue 3, "Checked against the
//! real Arvados Python SDK"): blocks the SDK writes are listed by keep-client's
//! `index` and read back by keep-client's `get`; blocks keep-client writes are read
//! back by the SDK. Once directly against the keepstores (services from
//! `keep_services/accessible` on both sides), once through a keepproxy named by
//! `ARVADOS_KEEP_SERVICES` on both sides.
//!
//! The SDK runs as a subprocess (`sdk_peer.py`, with `$KEEP_INTEROP_VENV/bin/python`,
//! the venv `scripts/python-venv` makes). Both sides derive the block contents from a
//! seed (`block_data`), so each compares exact bytes without shipping them. Needs
//! the venv, so a bare `cargo test` reports these tests as ignored; `scripts/test`
//! makes the venv and runs them.
//!
//! Signed locators and tokens are secrets: they travel only through the script's
//! stdin/stdout and environment. Messages show `hash+size`, and the script's stderr
//! is shown only redacted.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use keep_client::services::parse_keep_services_json;
use keep_client::{
    BackoffConfig, BlockHash, ClientOptions, ClusterSettings, KeepClient, Locator, RetryConfig,
    Token,
};
use keep_testcluster::TestCluster;
use md5::{Digest, Md5};

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/sdk_peer.py");
/// Sizes of the blocks the SDK writes: the empty block, small ones, exactly 1 MiB
/// (no `Expect: 100-continue` from libcurl) and above it (with it).
const SDK_SIZES: [usize; 6] = [0, 11, 100_000, 1 << 20, (1 << 20) + 1, 3 << 20];
/// Sizes of the blocks keep-client writes for the SDK to read.
const CLIENT_SIZES: [usize; 5] = [0, 7, 65_536, (1 << 20) + 1, 2 << 20];
/// One run of the script (start-up, `import arvados`, a few MiB on loopback: ~1 s).
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(30);
/// The whole test, cluster included.
const TEST_TIMEOUT: Duration = Duration::from_secs(60);

/// The venv's python. These tests are `#[ignore]`d (a bare `cargo test` works
/// offline); `scripts/test` makes the venv and runs them, so a missing venv here is a
/// broken setup, not a reason to pass.
fn sdk_python() -> PathBuf {
    let venv = std::env::var_os("KEEP_INTEROP_VENV").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.venv"),
        PathBuf::from,
    );
    let python = venv.join("bin/python");
    assert!(
        python.exists(),
        "{} missing: run scripts/python-venv or set KEEP_INTEROP_VENV",
        python.display()
    );
    python
}

/// Block `index` of `seed`: MD5 in counter mode, as `block_data` in `sdk_peer.py`.
fn block_data(seed: u64, index: u64, size: usize) -> Bytes {
    let mut out = Vec::with_capacity(size + 16);
    let mut counter = 0u64;
    while out.len() < size {
        let mut h = Md5::new();
        h.update(b"keep-interop");
        h.update(seed.to_le_bytes());
        h.update(index.to_le_bytes());
        h.update(counter.to_le_bytes());
        out.extend_from_slice(&h.finalize());
        counter += 1;
    }
    out.truncate(size);
    Bytes::from(out)
}

fn blocks(seed: u64, sizes: &[usize]) -> Vec<Bytes> {
    (0..)
        .zip(sizes)
        .map(|(i, &n)| block_data(seed, i, n))
        .collect()
}

/// Short retries: everything is on loopback, and a hang must fail the test quickly.
fn options() -> ClientOptions {
    ClientOptions {
        retry: RetryConfig {
            retries: 1,
            backoff: BackoffConfig {
                initial: Duration::from_millis(50),
                max: Duration::from_millis(200),
                base: 2.0,
            },
            seed: None,
        },
        connect_timeout: Duration::from_secs(2),
        stall_timeout: Duration::from_secs(20),
        ..ClientOptions::default()
    }
}

/// Replaces the secrets and every `+A<signature>@<expiry>` hint in `text`.
fn redact(text: &str, secrets: &[String]) -> String {
    let mut s = text.to_owned();
    for t in secrets.iter().filter(|t| !t.is_empty()) {
        s = s.replace(t.as_str(), "<secret>");
    }
    let mut parts = s.split("+A");
    let mut out = parts.next().unwrap_or_default().to_owned();
    for p in parts {
        out.push_str("+A<redacted>");
        out.push_str(p.trim_start_matches(|c: char| c.is_ascii_hexdigit() || c == '@'));
    }
    out
}

/// How to run `sdk_peer.py`: the interpreter, a scratch HOME, and the `ARVADOS_*`
/// environment (nothing else from ours leaks in: the SDK reads every `ARVADOS_*`).
#[derive(Clone)]
struct Peer {
    python: PathBuf,
    home: PathBuf,
    env: Vec<(&'static str, String)>,
    /// Strings never to show: tokens and their v2 secret parts.
    secrets: Vec<String>,
}

impl Peer {
    fn new(python: PathBuf, home: &Path, env: Vec<(&'static str, String)>) -> Peer {
        let mut secrets = Vec::new();
        for (k, v) in &env {
            if *k == "ARVADOS_API_TOKEN" {
                secrets.push(v.clone());
                secrets.extend(v.rsplit('/').next().map(str::to_owned));
            }
        }
        Peer {
            python,
            home: home.to_owned(),
            env,
            secrets,
        }
    }

    /// Runs `sdk_peer.py MODE SEED SIZES...` with `stdin`, bounded by
    /// [`SCRIPT_TIMEOUT`]; returns its stdout lines. Panics (with redacted stderr) if it
    /// fails.
    fn run_blocking(&self, mode: &str, seed: u64, sizes: &[usize], stdin: &str) -> Vec<String> {
        let out_path = self.home.join(format!("{mode}-{seed}.out"));
        let err_path = self.home.join(format!("{mode}-{seed}.err"));
        let mut cmd = Command::new(&self.python);
        cmd.arg(SCRIPT)
            .arg(mode)
            .arg(seed.to_string())
            .args(sizes.iter().map(usize::to_string))
            .env_clear()
            .env("HOME", &self.home)
            .env("XDG_CONFIG_HOME", self.home.join("config"))
            .env("XDG_CACHE_HOME", self.home.join("cache"))
            .envs(self.env.iter().map(|(k, v)| (*k, v)))
            .stdin(Stdio::piped())
            .stdout(std::fs::File::create(&out_path).expect("create stdout file"))
            .stderr(std::fs::File::create(&err_path).expect("create stderr file"));
        if let Some(path) = std::env::var_os("PATH") {
            cmd.env("PATH", path);
        }
        let started = Instant::now();
        let mut child = cmd.spawn().expect("start the venv python");
        {
            let mut pipe = child.stdin.take().expect("stdin");
            pipe.write_all(stdin.as_bytes())
                .expect("write the script's stdin");
        }
        let status = loop {
            if let Some(st) = child.try_wait().expect("wait for the script") {
                break Some(st);
            }
            if started.elapsed() > SCRIPT_TIMEOUT {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let stderr = std::fs::read_to_string(&err_path).unwrap_or_default();
        assert!(
            status.is_some_and(|s| s.success()),
            "sdk_peer.py {mode} failed ({}, {:.1?}):\n{}",
            status.map_or_else(|| "killed: too slow".to_owned(), |s| s.to_string()),
            started.elapsed(),
            redact(&stderr, &self.secrets)
        );
        let stdout = std::fs::read_to_string(&out_path).expect("read the script's stdout");
        let _ = std::fs::remove_file(&out_path);
        eprintln!(
            "sdk_interop: sdk_peer.py {mode} of {} blocks: {:.2?}",
            sizes.len(),
            started.elapsed()
        );
        stdout.lines().map(str::to_owned).collect()
    }

    async fn run(
        &self,
        mode: &'static str,
        seed: u64,
        sizes: &[usize],
        stdin: String,
    ) -> Vec<String> {
        let peer = self.clone();
        let sizes = sizes.to_vec();
        tokio::task::spawn_blocking(move || peer.run_blocking(mode, seed, &sizes, &stdin))
            .await
            .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
    }

    /// The SDK writes `block_data(seed, i, sizes[i])` with `put(copies=2)`; returns
    /// its signed locators, checked to name those blocks.
    async fn put(&self, seed: u64, sizes: &[usize]) -> Vec<Locator> {
        let lines = self.run("put", seed, sizes, String::new()).await;
        assert_eq!(
            lines.len(),
            sizes.len(),
            "the SDK printed one locator per block"
        );
        let want = blocks(seed, sizes);
        lines
            .iter()
            .zip(&want)
            .map(|(line, data)| {
                let expected = Locator::of(data);
                // No `{e}` / `{line}`: the line is a signed locator.
                let loc = Locator::parse_strict(line)
                    .unwrap_or_else(|_| panic!("the SDK's locator for {expected} does not parse"));
                assert_eq!(
                    loc.unsigned(),
                    expected.unsigned(),
                    "SDK locator names another block"
                );
                assert!(
                    loc.is_signed(),
                    "the SDK's locator for {expected} is not signed"
                );
                loc
            })
            .collect()
    }

    /// The SDK reads each of `locators` (which must hold `block_data(seed, i, sizes[i])`)
    /// with a fresh `KeepClient` and compares the bytes itself; returns its `md5+size`.
    async fn get(&self, seed: u64, sizes: &[usize], locators: &[Locator]) -> Vec<String> {
        let stdin: String = locators.iter().map(|l| l.to_wire() + "\n").collect();
        self.run("get", seed, sizes, stdin).await
    }
}

/// `hash -> size` of every block each service's index lists.
async fn indexes(kc: &KeepClient) -> Vec<(String, HashMap<BlockHash, u64>)> {
    let mut out = Vec::new();
    for svc in kc.services() {
        let mut seen = HashMap::new();
        kc.index(svc, "", |e| {
            seen.insert(e.hash, e.size);
        })
        .await
        .unwrap_or_else(|e| panic!("index of {}: {e}", svc.uuid));
        out.push((svc.uuid.clone(), seen));
    }
    out
}

/// Asserts every block is listed, with its size, by at least 2 services; with
/// `probe_order`, the first 2 services in keep-client's probe order must be among them
/// (the SDK and keep-client agree on rendezvous placement).
async fn assert_indexed(index_client: &KeepClient, data: &[Bytes], probe_order: bool) {
    let lists = indexes(index_client).await;
    for d in data {
        let loc = Locator::of(d);
        let holders: Vec<&str> = lists
            .iter()
            .filter(|(_, seen)| seen.get(&loc.hash()) == Some(&(d.len() as u64)))
            .map(|(uuid, _)| uuid.as_str())
            .collect();
        assert!(
            holders.len() >= 2,
            "{loc} is listed by {} keepstore indexes, want at least 2: {holders:?}",
            holders.len()
        );
        if probe_order {
            for svc in index_client.readable_order(&loc.hash()).iter().take(2) {
                assert!(
                    holders.contains(&svc.uuid.as_str()),
                    "{loc} is not on {}, first-two in probe order (holders {holders:?})",
                    svc.uuid
                );
            }
        }
    }
}

/// keep-client reads each SDK locator and gets exactly the SDK's bytes.
async fn assert_client_reads(kc: &KeepClient, locators: &[Locator], data: &[Bytes]) {
    for (loc, d) in locators.iter().zip(data) {
        let got = kc
            .get(loc)
            .await
            .unwrap_or_else(|e| panic!("keep-client get of SDK block: {e}"));
        assert!(
            got == *d,
            "keep-client read {} bytes (md5 {}) for SDK block {loc}",
            got.len(),
            BlockHash::of(&got)
        );
    }
}

/// keep-client writes `block_data(seed, ..)` with 2 replicas; returns its locators.
async fn client_puts(kc: &KeepClient, data: &[Bytes]) -> Vec<Locator> {
    let mut out = Vec::new();
    for d in data {
        let r = kc
            .put(BlockHash::of(d), d.clone(), 2)
            .await
            .unwrap_or_else(|e| panic!("keep-client put of {}: {e}", Locator::of(d)));
        assert!(r.replicas >= 2, "{}: {} replicas", r.locator, r.replicas);
        assert!(r.locator.is_signed(), "{} came back unsigned", r.locator);
        out.push(r.locator);
    }
    out
}

/// Asserts the SDK's `md5+size` lines are those of `data`.
fn assert_sdk_read(lines: &[String], data: &[Bytes]) {
    let want: Vec<String> = data.iter().map(|d| Locator::of(d).unsigned()).collect();
    assert_eq!(lines, want, "md5+size of what the SDK read");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the Python SDK venv (scripts/python-venv); scripts/test runs it"]
async fn sdk_and_keep_client_exchange_blocks_via_keepstores() {
    let python = sdk_python();
    let started = Instant::now();
    tokio::time::timeout(TEST_TIMEOUT, async {
        let c = TestCluster::builder().keepstores(3).start().await.unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let conf = tmp.path().join("interop.conf");
        c.write_settings_file(&conf, false).unwrap();
        let settings = ClusterSettings::load(conf.to_str().unwrap()).unwrap();
        let (kc, _) = KeepClient::from_settings(&settings, options(), None)
            .await
            .unwrap();
        assert_eq!(kc.services().len(), 3);
        let peer = Peer::new(
            python,
            tmp.path(),
            vec![
                ("ARVADOS_API_HOST", c.api_host()),
                ("ARVADOS_API_TOKEN", c.system_root_token().to_owned()),
                ("ARVADOS_API_HOST_INSECURE", "1".to_owned()),
            ],
        );

        // 1-2. SDK writes; keep-client's index lists and its get reads back.
        let sdk_data = blocks(1, &SDK_SIZES);
        let sdk_locs = peer.put(1, &SDK_SIZES).await;
        assert_indexed(&kc, &sdk_data, true).await;
        assert_client_reads(&kc, &sdk_locs, &sdk_data).await;
        eprintln!(
            "sdk_interop: keep-client listed and read {} SDK blocks: {}",
            sdk_data.len(),
            sdk_data
                .iter()
                .map(|d| Locator::of(d).to_string())
                .collect::<Vec<_>>()
                .join(" ")
        );

        // 3. keep-client writes; the SDK reads back.
        let client_data = blocks(2, &CLIENT_SIZES);
        let client_locs = client_puts(&kc, &client_data).await;
        assert_indexed(&kc, &client_data, true).await;
        let lines = peer.get(2, &CLIENT_SIZES, &client_locs).await;
        assert_sdk_read(&lines, &client_data);
        eprintln!(
            "sdk_interop: the SDK read {} keep-client blocks: {}",
            lines.len(),
            lines.join(" ")
        );
        c.shutdown().await;
    })
    .await
    .expect("the keepstore interop test took over 60 s");
    eprintln!("sdk_interop: via keepstores in {:.2?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the Python SDK venv (scripts/python-venv); scripts/test runs it"]
async fn sdk_and_keep_client_exchange_blocks_via_keepproxy() {
    let python = sdk_python();
    let started = Instant::now();
    tokio::time::timeout(TEST_TIMEOUT, async {
        let c = TestCluster::builder()
            .keepstores(3)
            .proxy(true)
            .start()
            .await
            .unwrap();
        let (_, proxy_url) = c.proxy().expect("a keepproxy");
        let tmp = tempfile::tempdir().unwrap();
        // Both sides name only the proxy (ARVADOS_KEEP_SERVICES) and use a user token.
        let settings = ClusterSettings {
            api_host: Some(c.api_host()),
            api_token: Some(Token::new(c.user_token())),
            insecure: true,
            keep_services: Some(proxy_url.clone()),
            ..ClusterSettings::default()
        };
        let (kc, _) = KeepClient::from_settings(&settings, options(), None)
            .await
            .unwrap();
        assert_eq!(kc.services().len(), 1);
        assert!(kc.has_proxy());
        // The keepstores' indexes need the SystemRootToken.
        let index_client = KeepClient::new(
            parse_keep_services_json(&c.services_json()).unwrap(),
            Token::new(c.system_root_token()),
            options(),
        )
        .unwrap();
        let peer = Peer::new(
            python,
            tmp.path(),
            vec![
                ("ARVADOS_KEEP_SERVICES", proxy_url),
                ("ARVADOS_API_TOKEN", c.user_token().to_owned()),
            ],
        );

        let sdk_data = blocks(3, &SDK_SIZES);
        let sdk_locs = peer.put(3, &SDK_SIZES).await;
        // The proxy, not the SDK, chooses the keepstores here.
        assert_indexed(&index_client, &sdk_data, false).await;
        assert_client_reads(&kc, &sdk_locs, &sdk_data).await;
        eprintln!(
            "sdk_interop: keep-client listed and read {} SDK blocks through the proxy",
            sdk_data.len()
        );

        let client_data = blocks(4, &CLIENT_SIZES);
        let client_locs = client_puts(&kc, &client_data).await;
        assert_indexed(&index_client, &client_data, false).await;
        let lines = peer.get(4, &CLIENT_SIZES, &client_locs).await;
        assert_sdk_read(&lines, &client_data);
        eprintln!(
            "sdk_interop: the SDK read {} keep-client blocks through the proxy",
            lines.len()
        );
        c.shutdown().await;
    })
    .await
    .expect("the keepproxy interop test took over 60 s");
    eprintln!("sdk_interop: via keepproxy in {:.2?}", started.elapsed());
}

/// Runs a CLI of the venv (`arv-put`, `arv-get`) with the peer's environment, bounded
/// by [`SCRIPT_TIMEOUT`]; returns its stdout. Panics, with redacted stderr, on failure.
fn run_cli_blocking(peer: &Peer, program: &str, args: &[&str]) -> Vec<u8> {
    let bin = peer
        .python
        .parent()
        .expect("the venv's bin directory")
        .join(program);
    let out_path = peer.home.join(format!("{program}.out"));
    let err_path = peer.home.join(format!("{program}.err"));
    let mut cmd = Command::new(&bin);
    cmd.args(args)
        .env_clear()
        .env("HOME", &peer.home)
        .env("XDG_CONFIG_HOME", peer.home.join("config"))
        .env("XDG_CACHE_HOME", peer.home.join("cache"))
        .envs(peer.env.iter().map(|(k, v)| (*k, v)))
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path).expect("create stdout file"))
        .stderr(std::fs::File::create(&err_path).expect("create stderr file"));
    if let Some(path) = std::env::var_os("PATH") {
        cmd.env("PATH", path);
    }
    let started = Instant::now();
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("start {}: {e}", bin.display()));
    let status = loop {
        if let Some(st) = child.try_wait().expect("wait for the CLI") {
            break Some(st);
        }
        if started.elapsed() > SCRIPT_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let stderr = std::fs::read_to_string(&err_path).unwrap_or_default();
    assert!(
        status.is_some_and(|s| s.success()),
        "{program} {args:?} failed ({}, {:.1?}):\n{}",
        status.map_or_else(|| "killed: too slow".to_owned(), |s| s.to_string()),
        started.elapsed(),
        redact(&stderr, &peer.secrets)
    );
    eprintln!("sdk_interop: {program}: {:.2?}", started.elapsed());
    std::fs::read(&out_path).expect("read the CLI's stdout")
}

async fn run_cli(peer: &Peer, program: &'static str, args: Vec<String>) -> Vec<u8> {
    let peer = peer.clone();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run_cli_blocking(&peer, program, &args)
    })
    .await
    .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
}

/// The SDK's collection mode against keep-testcluster's collections API: `arv-put`
/// (no `--raw`) saves a collection (the cluster checks the SDK's signatures: a user
/// token is not exempt), `arv-get uuid/file` reads the file back, the SDK's
/// `collections().list(...)`/`.get()` (every list parameter keep-rsync's
/// `--by-collections` uses) find it with the file's block, and keep-client reads
/// that block with the signed locator the API handed the SDK. Expected values come
/// from the file's bytes (md5, length) and the SDK's own output.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the Python SDK venv (scripts/python-venv); scripts/test runs it"]
async fn sdk_and_keep_client_share_a_collection_via_the_api() {
    let python = sdk_python();
    let started = Instant::now();
    tokio::time::timeout(TEST_TIMEOUT, async {
        let c = TestCluster::builder().keepstores(3).start().await.unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let peer = Peer::new(
            python,
            tmp.path(),
            vec![
                ("ARVADOS_API_HOST", c.api_host()),
                ("ARVADOS_API_TOKEN", c.user_token().to_owned()),
                ("ARVADOS_API_HOST_INSECURE", "1".to_owned()),
            ],
        );
        let data = block_data(9, 0, 300_000);
        let file = tmp.path().join("payload.bin");
        std::fs::write(&file, &data).unwrap();
        let expected = Locator::of(&data).unsigned();

        // arv-put: a collection UUID on stdout.
        let out = run_cli(
            &peer,
            "arv-put",
            vec![
                "--no-cache".into(),
                "--retries".into(),
                "0".into(),
                file.display().to_string(),
            ],
        )
        .await;
        let uuid = String::from_utf8(out).unwrap().trim().to_owned();
        assert!(
            uuid.len() == 27 && uuid.starts_with(&format!("{}-4zz18-", c.cluster_id())),
            "arv-put printed {uuid:?}, not a collection UUID"
        );

        // arv-get uuid/file: the same bytes.
        let got = run_cli(
            &peer,
            "arv-get",
            vec![
                "--retries".into(),
                "0".into(),
                format!("{uuid}/payload.bin"),
                "-".into(),
            ],
        )
        .await;
        assert!(
            got == data,
            "arv-get returned {} bytes, md5 {}; want {expected}",
            got.len(),
            BlockHash::of(&got)
        );

        // The SDK lists and gets it.
        let lines = peer.run("collections", 0, &[], uuid.clone() + "\n").await;
        assert_eq!(lines.len(), 1, "one JSON line");
        let v: serde_json::Value = serde_json::from_str(&lines[0]).expect("JSON from the SDK");
        let items = v["list"]["items"].as_array().expect("items");
        assert_eq!(items.len(), 1, "the SDK's list found the collection once");
        assert!(
            v["list"].get("items_available").is_none(),
            "count=none leaves items_available out"
        );
        let item = &items[0];
        assert_eq!(item["uuid"], uuid);
        assert_eq!(item["current_version_uuid"], uuid);
        assert_eq!(item["version"], 1);
        assert_eq!(item["is_trashed"], false);
        let manifest = item["manifest_text"]
            .as_str()
            .expect("manifest_text selected");
        let words: Vec<&str> = manifest.split_whitespace().collect();
        assert_eq!(words.len(), 3, "one stream, one block, one file");
        assert_eq!(words[0], ".");
        let block = Locator::parse_strict(words[1]).expect("the block locator parses");
        assert_eq!(block.unsigned(), expected, "the file's md5+size");
        assert!(block.is_signed(), "the API signs manifests");
        assert_eq!(words[2], format!("0:{}:payload.bin", data.len()));
        // The PDH: md5 of the manifest with the signature stripped, and its length.
        let portable = format!(". {expected} 0:{}:payload.bin\n", data.len());
        let pdh = format!("{:x}+{}", Md5::digest(portable.as_bytes()), portable.len());
        assert_eq!(item["portable_data_hash"], pdh);
        assert_eq!(v["get"]["portable_data_hash"], pdh);
        assert_eq!(v["get"]["uuid"], uuid);

        // keep-client reads the block with the locator the API signed for the token.
        let settings = ClusterSettings {
            api_host: Some(c.api_host()),
            api_token: Some(Token::new(c.user_token())),
            insecure: true,
            ..ClusterSettings::default()
        };
        let (kc, _) = KeepClient::from_settings(&settings, options(), None)
            .await
            .unwrap();
        let bytes = kc
            .get(&block)
            .await
            .unwrap_or_else(|e| panic!("keep-client get of {expected}: {e}"));
        assert!(bytes == data, "keep-client read other bytes for {expected}");
        c.shutdown().await;
    })
    .await
    .expect("the collections interop test took over 60 s");
    eprintln!("sdk_interop: collections in {:.2?}", started.elapsed());
}
