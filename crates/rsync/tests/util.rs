//! Two clusters, settings files for them, and a way to run the real binary.

use std::path::{Path, PathBuf};
use std::process::Output;

use keep_client::BlockHash;
use keep_testcluster::{Builder, TestCluster};

/// A source and a destination cluster plus settings files in a temp dir.
pub(crate) struct Pair {
    pub(crate) src: TestCluster,
    pub(crate) dst: TestCluster,
    pub(crate) dir: tempfile::TempDir,
    pub(crate) src_conf: PathBuf,
    pub(crate) dst_conf: PathBuf,
}

pub(crate) fn builder(id: &str) -> Builder {
    TestCluster::builder()
        .cluster_id(id)
        .keepstores(3)
        .memory(true)
}

impl Pair {
    pub(crate) async fn new() -> Pair {
        Pair::with(builder("srcaa"), builder("dstbb")).await
    }

    pub(crate) async fn with(src: Builder, dst: Builder) -> Pair {
        let src = src.start().await.expect("source cluster starts");
        let dst = dst.start().await.expect("destination cluster starts");
        let dir = tempfile::tempdir().unwrap();
        let src_conf = dir.path().join("src.conf");
        let dst_conf = dir.path().join("dst.conf");
        src.write_settings_file(&src_conf, true).unwrap();
        dst.write_settings_file(&dst_conf, true).unwrap();
        // As an administrator would: files holding a signing key are private.
        for f in [&src_conf, &dst_conf] {
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(f, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        Pair {
            src,
            dst,
            dir,
            src_conf,
            dst_conf,
        }
    }

    /// Runs keep-rsync -src <src.conf> -dst <dst.conf> plus `extra`.
    pub(crate) async fn rsync(&self, extra: &[&str]) -> Run {
        let mut args: Vec<String> = vec![
            "-src".into(),
            self.src_conf.display().to_string(),
            "-dst".into(),
            self.dst_conf.display().to_string(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        run(&args).await
    }

    /// Every secret of both clusters: none may ever be printed.
    pub(crate) fn secrets(&self) -> Vec<String> {
        let mut v = Vec::new();
        for c in [&self.src, &self.dst] {
            let j = c.cluster_json();
            for k in [
                "system_root_token",
                "user_token",
                "management_token",
                "signing_key",
            ] {
                v.push(j[k].as_str().unwrap().to_string());
            }
        }
        v
    }

    /// Distinct blocks on the destination, with the keepstores holding each.
    pub(crate) async fn dst_holdings(&self) -> std::collections::BTreeMap<BlockHash, Vec<usize>> {
        holdings(&self.dst).await
    }
}

pub(crate) async fn holdings(c: &TestCluster) -> std::collections::BTreeMap<BlockHash, Vec<usize>> {
    let mut m: std::collections::BTreeMap<BlockHash, Vec<usize>> = Default::default();
    for i in 0..c.keepstores().len() {
        for (h, _) in c.blocks_on(i).await {
            let e = m.entry(h).or_default();
            if !e.contains(&i) {
                e.push(i);
            }
        }
    }
    m
}

/// The outcome of one run of the binary.
pub(crate) struct Run {
    pub(crate) code: i32,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
}

impl Run {
    pub(crate) fn assert_code(&self, code: i32) -> &Run {
        assert_eq!(
            self.code, code,
            "exit code\n--- stdout\n{}\n--- stderr\n{}",
            self.stdout, self.stderr
        );
        self
    }
}

pub(crate) async fn run(args: &[String]) -> Run {
    run_program(Path::new(env!("CARGO_BIN_EXE_keep-rsync")), args).await
}

/// Runs `program` (keep-rsync, or the original Go tool) with `args`.
pub(crate) async fn run_program(program: &Path, args: &[String]) -> Run {
    let out: Output = tokio::process::Command::new(program)
        .args(args)
        .env_remove("RUST_LOG")
        .env("NO_COLOR", "1")
        // A test that times out (dropping this future) leaves no process behind.
        .kill_on_drop(true)
        .output()
        .await
        .expect("keep-rsync runs");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Deterministic test content: block `i` of `tag`, `size` bytes.
pub(crate) fn block(tag: &str, i: usize, size: usize) -> Vec<u8> {
    let mut v = format!("{tag}-{i}-").into_bytes();
    let mut x = (i as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    while v.len() < size {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.push(x as u8);
    }
    v.truncate(size.max(1));
    v
}

/// PUT requests (block writes) seen by a cluster, as hash strings with service.
pub(crate) fn block_puts(c: &TestCluster) -> Vec<(String, String)> {
    c.request_log()
        .into_iter()
        .filter(|r| r.method == "PUT" && r.path.len() >= 33 && r.status == 200)
        .map(|r| (r.service, r.path[1..33].to_string()))
        .collect()
}

/// The seed of a seeded test: `KEEP_RSYNC_SEED` if set, else from the clock. Printed
/// (shown by the harness when the test fails) so that a failure can be replayed.
pub(crate) fn seed(test: &str) -> u64 {
    let s = keep_testcluster::test_seed();
    println!("{test}: KEEP_RSYNC_SEED={s}");
    s
}

/// Whether the full-size scenarios were asked for (`KEEP_RSYNC_FULL=1`).
pub(crate) fn full() -> bool {
    std::env::var("KEEP_RSYNC_FULL").is_ok_and(|v| v == "1")
}

/// A small seeded generator (splitmix64): enough for test choices, no dependency.
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x5851_f42d_4c95_7f2d)
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..=hi`.
    pub(crate) fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next_u64() % (hi - lo + 1)
    }
}

/// `c`'s keepstores (indexes into `c.keepstores()`) in the probe order of `h`.
pub(crate) fn probe(c: &TestCluster, h: &BlockHash) -> Vec<usize> {
    let uuids: Vec<String> = c.keepstores().iter().map(|k| k.uuid.clone()).collect();
    keep_client::rendezvous::probe_order(h, &uuids)
}

/// A settings file's text with `key`'s line set to `value` (other lines unchanged).
pub(crate) fn with_setting(text: &str, key: &str, value: &str) -> String {
    text.lines()
        .map(|l| {
            if l.starts_with(&format!("{key}=")) {
                format!("{key}={value}")
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

pub(crate) use keep_testcluster::report_figure as figure;

/// Runs the binary with extra environment variables.
pub(crate) async fn run_env(args: &[String], env: &[(&str, &str)]) -> Run {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_keep-rsync"));
    cmd.args(args).env_remove("RUST_LOG").env("NO_COLOR", "1");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().await.expect("keep-rsync runs");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// No (service, block) pair was written with status 200 twice, across every run so
/// far: the destination index is the checkpoint.
pub(crate) fn assert_no_block_sent_twice(c: &TestCluster) {
    let mut seen: std::collections::BTreeMap<(String, String), usize> = Default::default();
    for k in block_puts(c) {
        *seen.entry(k).or_default() += 1;
    }
    let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        twice.is_empty(),
        "blocks sent twice to one service: {twice:?}"
    );
}

/// Every request to a cluster carried that cluster's own token (or none).
pub(crate) fn assert_tokens_isolated(p: &Pair) {
    let src_tok = keep_testcluster::token_digest_of(p.src.system_root_token());
    let dst_tok = keep_testcluster::token_digest_of(p.dst.system_root_token());
    for r in p.src.request_log() {
        assert_ne!(
            r.token.as_deref(),
            Some(dst_tok.as_str()),
            "source saw the destination token: {r:?}"
        );
    }
    for r in p.dst.request_log() {
        assert_ne!(
            r.token.as_deref(),
            Some(src_tok.as_str()),
            "destination saw the source token: {r:?}"
        );
    }
}

/// No token, key or `+A` signature in a run's output.
pub(crate) fn assert_no_secrets(p: &Pair, r: &Run, what: &str) {
    for s in p.secrets() {
        assert!(
            !r.stdout.contains(&s) && !r.stderr.contains(&s),
            "a secret leaked ({what})"
        );
    }
    for out in [&r.stdout, &r.stderr] {
        if let Some(l) = out.lines().find(|l| l.contains("+A")) {
            panic!("a signature leaked ({what}): {l}");
        }
    }
}

/// Asserts that the destination holds every source block on at least `replicas`
/// services.
pub(crate) async fn assert_all_copied(p: &Pair, replicas: usize) {
    let src = holdings(&p.src).await;
    let dst = holdings(&p.dst).await;
    let missing: Vec<_> = src
        .keys()
        .filter(|h| dst.get(h).is_none_or(|v| v.len() < replicas))
        .collect();
    assert!(
        missing.is_empty(),
        "{} of {} source blocks are not on {replicas} destination services: {:?}",
        missing.len(),
        src.len(),
        missing.iter().take(5).collect::<Vec<_>>()
    );
}

/// Arguments `-src <src.conf> -dst <dst.conf>` plus `extra`.
pub(crate) fn args(p: &Pair, extra: &[&str]) -> Vec<String> {
    let mut v = vec![
        "-src".to_string(),
        p.src_conf.display().to_string(),
        "-dst".to_string(),
        p.dst_conf.display().to_string(),
    ];
    v.extend(extra.iter().map(|s| s.to_string()));
    v
}

/// How many requests of a cluster match.
pub(crate) fn count_requests(
    c: &TestCluster,
    f: impl Fn(&keep_testcluster::RequestRecord) -> bool,
) -> usize {
    c.request_log().iter().filter(|r| f(r)).count()
}

/// The fault controls of keepstore `i` of `c`.
pub(crate) fn ks(c: &TestCluster, i: usize) -> keep_testcluster::FaultHandle {
    c.faults(&format!("keepstore{i}")).unwrap()
}

/// Whether a logged request path is an index listing: `/index[/prefix]` or one
/// volume's `/mounts/{uuid}/blocks`.
pub(crate) fn is_index_path(path: &str) -> bool {
    path.starts_with("/index") || (path.starts_with("/mounts/") && path.contains("/blocks"))
}

/// Whether a logged request path is an admin call (an index listing or `/mounts`).
pub(crate) fn is_admin_path(path: &str) -> bool {
    is_index_path(path) || path == "/mounts"
}

/// Starts keep-rsync on `p` with `extra` arguments in the background; its output goes
/// to files read by [`child_output`].
pub(crate) fn spawn(p: &Pair, extra: &[&str]) -> tokio::process::Child {
    let out = std::fs::File::create(p.dir.path().join("child.out")).unwrap();
    let err = std::fs::File::create(p.dir.path().join("child.err")).unwrap();
    tokio::process::Command::new(env!("CARGO_BIN_EXE_keep-rsync"))
        .args(args(p, extra))
        .env_remove("RUST_LOG")
        .stdout(out)
        .stderr(err)
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

/// What the last spawned child printed.
pub(crate) fn child_output(p: &Pair) -> String {
    let r = |f: &str| std::fs::read_to_string(p.dir.path().join(f)).unwrap_or_default();
    format!(
        "--- stdout\n{}\n--- stderr\n{}",
        r("child.out"),
        r("child.err")
    )
}

/// Waits (at most 60 s) until `c`'s request log has a request matching `f`.
pub(crate) async fn wait_for_request(
    c: &TestCluster,
    f: impl Fn(&keep_testcluster::RequestRecord) -> bool,
) {
    let t = std::time::Instant::now();
    while count_requests(c, &f) == 0 && t.elapsed() < std::time::Duration::from_secs(60) {
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
}

/// Samples `child`'s peak resident memory (`VmHWM`, kB) every 20 ms until it exits;
/// the task's result is the largest value seen.
pub(crate) fn watch_peak_rss(child: &tokio::process::Child) -> tokio::task::JoinHandle<u64> {
    let pid = child.id().expect("a running child");
    tokio::spawn(async move {
        let mut peak_kb = 0u64;
        while let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
            if let Some(kb) = s
                .lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok())
            {
                peak_kb = peak_kb.max(kb);
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        peak_kb
    })
}

/// The JSON report (`--json`) among a run's output lines.
pub(crate) fn report(stdout: &str) -> serde_json::Value {
    stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["event"] == "report")
        .unwrap_or_else(|| panic!("no JSON report in {stdout}"))
}
