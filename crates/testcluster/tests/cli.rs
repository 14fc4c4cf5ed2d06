//! The `keep-testcluster` binary.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

#[tokio::test]
async fn run_writes_files_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_keep-testcluster"))
        .args(["run", "--dir"])
        .arg(dir.path())
        .args([
            "--name",
            "src",
            "--keepstores",
            "2",
            "--seed-blocks",
            "3",
            "--seed-block-size",
            "10",
            "--proxy",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line, "ready\n");
    let conf = std::fs::read_to_string(dir.path().join("src.conf")).unwrap();
    for k in [
        "ARVADOS_API_HOST=",
        "ARVADOS_API_TOKEN=",
        "ARVADOS_API_HOST_INSECURE=",
        "ARVADOS_BLOB_SIGNING_KEY=",
    ] {
        assert!(conf.contains(k), "{conf}");
    }
    let info: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("cluster.json")).unwrap()).unwrap();
    assert_eq!(info["keepstores"].as_array().unwrap().len(), 2);
    assert!(
        info["request_log"]
            .as_str()
            .unwrap()
            .ends_with("requests.jsonl")
    );
    let url = info["keepstores"][0]["url"].as_str().unwrap().to_owned();
    let tok = info["system_root_token"].as_str().unwrap().to_owned();
    let idx = reqwest::Client::new()
        .get(format!("{url}/index"))
        .bearer_auth(&tok)
        .send()
        .await
        .unwrap();
    assert_eq!(idx.status(), 200);

    // The fault subcommand reaches the running cluster.
    let st = Command::new(env!("CARGO_BIN_EXE_keep-testcluster"))
        .args(["fault", "--dir"])
        .arg(dir.path())
        .args(["--service", "keepstore0", "--status", "503", "--burst", "1"])
        .status()
        .unwrap();
    assert!(st.success());
    let r = reqwest::Client::new()
        .get(format!("{url}/index"))
        .bearer_auth(&tok)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    let st = Command::new(env!("CARGO_BIN_EXE_keep-testcluster"))
        .args(["fault", "--dir"])
        .arg(dir.path())
        .args(["--service", "keepstore0", "--stop"])
        .status()
        .unwrap();
    assert!(st.success());
    assert!(
        reqwest::Client::new()
            .get(format!("{url}/index"))
            .send()
            .await
            .unwrap_err()
            .is_connect()
    );

    let log = std::fs::read_to_string(dir.path().join("requests.jsonl")).unwrap();
    assert!(log.lines().count() >= 2);
    assert!(!log.contains(&tok));

    // SIGTERM stops it.
    Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status()
        .unwrap();
    let t = std::time::Instant::now();
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            assert!(st.success());
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(10), "did not exit");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
