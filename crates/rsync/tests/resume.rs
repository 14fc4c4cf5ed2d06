//! Interruption: killed or Ctrl-C'd mid-run, the next run completes and no block is
//! sent twice to a service.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::util::{Pair, block, block_puts, ks};

async fn slow_pair(n: usize) -> Pair {
    let p = Pair::new().await;
    for i in 0..n {
        p.src
            .put_block(&block("kill", i, 2000 + i), 2)
            .await
            .unwrap();
    }
    for i in 0..3 {
        ks(&p.src, i).set_latency(Duration::from_millis(40));
    }
    p
}

fn args(p: &Pair, extra: &[&str]) -> Vec<String> {
    let mut v = vec![
        "-src".to_string(),
        p.src_conf.display().to_string(),
        "-dst".to_string(),
        p.dst_conf.display().to_string(),
        "--concurrency".to_string(),
        "2".to_string(),
    ];
    v.extend(extra.iter().map(|s| s.to_string()));
    v
}

fn assert_no_block_sent_twice(p: &Pair) {
    let mut seen: BTreeMap<(String, String), usize> = BTreeMap::new();
    for k in block_puts(&p.dst) {
        *seen.entry(k).or_default() += 1;
    }
    let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        twice.is_empty(),
        "blocks sent twice to one service: {twice:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_mid_run_then_resumed() {
    let p = slow_pair(60).await;
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_keep-rsync"))
        .args(args(&p, &["-q"]))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Wait until some blocks have landed, then SIGKILL.
    for _ in 0..200 {
        if block_puts(&p.dst).len() >= 10 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    child.start_kill().unwrap();
    let _ = child.wait().await;
    let partial = p.dst_holdings().await.len();
    assert!(
        partial > 0 && partial < 60,
        "killed too late or too early: {partial}"
    );

    let r = crate::util::run(&args(&p, &[])).await;
    r.assert_code(0);
    let held = p.dst_holdings().await;
    assert_eq!(held.len(), 60);
    assert!(
        held.values().all(|v| v.len() >= 2),
        "every block at 2 replicas"
    );
    assert_no_block_sent_twice(&p);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interrupted_by_sigint_reports_and_exits_130() {
    let p = slow_pair(60).await;
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_keep-rsync"))
        .args(args(&p, &[]))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id().unwrap() as i32;
    for _ in 0..200 {
        if block_puts(&p.dst).len() >= 6 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // SIGINT, as Ctrl-C sends.
    std::process::Command::new("kill")
        .args(["-INT", &pid.to_string()])
        .status()
        .unwrap();
    let out = child.wait_with_output().await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(130),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("interrupted:"), "{stdout}");

    crate::util::run(&args(&p, &[])).await.assert_code(0);
    assert_eq!(p.dst_holdings().await.len(), 60);
    assert_no_block_sent_twice(&p);
}
