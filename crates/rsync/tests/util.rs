//! Two clusters, settings files for them, and a way to run the real binary.

use std::path::PathBuf;
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
    let out: Output = tokio::process::Command::new(env!("CARGO_BIN_EXE_keep-rsync"))
        .args(args)
        .env_remove("RUST_LOG")
        .env("NO_COLOR", "1")
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
