//! A real Slurm job array (issue 17): a throwaway single-node Slurm
//! (`scripts/slurm-node`, Debian's slurmctld, slurmd and munge) runs the example batch
//! script `examples/slurm/keep-rsync-array.sbatch`: 16 keep-rsync tasks with
//! `--shard auto`, each migrating its part between two local test clusters. The union must equal one process's run into an identical cluster, no
//! block may be sent twice, and `merge-reports` must add the 16 reports up to exit 0.
//!
//! Needs root and Debian's Slurm packages: `scripts/test` installs them
//! (`scripts/slurm-node install`) and runs this test, or says why it cannot.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::util::{
    Pair, assert_no_block_sent_twice, block, builder, figure, holdings, report, run,
};

fn slurm_node() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/slurm-node")
}

/// The Slurm daemons of one test: stopped when dropped, even when the test fails.
struct Slurm {
    dir: PathBuf,
    conf: PathBuf,
}

impl Slurm {
    fn start(dir: &Path) -> Slurm {
        let out = Command::new(slurm_node())
            .arg("start")
            .arg(dir)
            .output()
            .expect("scripts/slurm-node runs");
        let slurm = Slurm {
            dir: dir.to_owned(),
            conf: dir.join("slurm.conf"),
        };
        assert!(
            out.status.success(),
            "scripts/slurm-node start failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        slurm
    }

    fn cmd(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        c.env("SLURM_CONF", &self.conf);
        c
    }
}

impl Drop for Slurm {
    fn drop(&mut self) {
        let _ = Command::new(slurm_node())
            .arg("stop")
            .arg(&self.dir)
            .status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Slurm (scripts/slurm-node install); scripts/test runs it"]
async fn slurm_array_of_16_shards_equals_one_run() {
    const N: usize = 480;
    let p = Pair::new().await;
    for i in 0..N {
        p.src
            .put_block(&block("slurm", i, 100 + i % 3000), 2)
            .await
            .unwrap();
    }
    // The reference: one process into an identical cluster (same id, same services).
    let twin = builder("dstbb").start().await.unwrap();
    let twin_conf = p.dir.path().join("twin.conf");
    twin.write_settings_file(&twin_conf, true).unwrap();
    let single = run(&[
        "-src".into(),
        p.src_conf.display().to_string(),
        "-dst".into(),
        twin_conf.display().to_string(),
        "--json".into(),
    ])
    .await;
    single.assert_code(0);
    let single = report(&single.stdout);

    let dir = p.dir.path().join("slurm");
    std::fs::create_dir_all(&dir).unwrap();
    let reports = p.dir.path().join("reports");
    std::fs::create_dir_all(&reports).unwrap();
    let t = Instant::now();
    let slurm = Slurm::start(&dir);
    let started = t.elapsed();
    // The example batch script itself, with this test's files in its environment,
    // and the sizes of this small node on the command line (they override #SBATCH).
    let example =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/slurm/keep-rsync-array.sbatch");
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_keep-rsync"))
        .parent()
        .unwrap();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = slurm
        .cmd("sbatch")
        .args([
            "--parsable",
            "--array=0-15",
            "--cpus-per-task=1",
            "--mem=50M",
            "-o",
        ])
        .arg(dir.join("task-%a.out"))
        .arg(&example)
        .env("PATH", path)
        .env("SRC", &p.src_conf)
        .env("DST", &p.dst_conf)
        .env("REPORTS", &reports)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "sbatch: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let job = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    // squeue, not sbatch --wait (which polls with a growing back-off).
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let q = slurm
            .cmd("squeue")
            .args(["-h", "-j", &job, "-o", "%i"])
            .output()
            .unwrap();
        if q.status.success() && q.stdout.iter().all(u8::is_ascii_whitespace) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the job array did not finish within 180 s"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let array_time = t.elapsed() - started;

    let files: Vec<String> = (0..16)
        .map(|i| {
            reports
                .join(format!("report-{i}.json"))
                .display()
                .to_string()
        })
        .collect();
    for (i, f) in files.iter().enumerate() {
        assert!(
            Path::new(f).exists(),
            "task {i} wrote no report; its output: {}",
            std::fs::read_to_string(dir.join(format!("task-{i}.out"))).unwrap_or_default()
        );
    }
    assert_eq!(
        holdings(&p.dst).await,
        holdings(&twin).await,
        "the shards' union differs from one run"
    );
    assert_no_block_sent_twice(&p.dst);
    let mut merge = vec!["merge-reports".to_owned(), "--json".to_owned()];
    merge.extend(files.iter().cloned());
    let merged = run(&merge).await;
    merged.assert_code(0);
    let m: serde_json::Value = serde_json::from_str(merged.stdout.trim()).unwrap();
    assert_eq!(m["copied"], single["copied"], "{m}");
    assert_eq!(m["plan"]["src"], single["plan"]["src"], "{m}");
    assert_eq!(m["shards"], 16);
    drop(slurm);
    figure(
        "Slurm job array, --shard auto",
        &format!("{N} blocks; sbatch --array=0-15 on a single-node Slurm"),
        &format!(
            "union = one run, no block sent twice, merge-reports exit 0; Slurm up in {:.1} s, array done in {:.1} s",
            started.as_secs_f64(),
            array_time.as_secs_f64()
        ),
    );
}
