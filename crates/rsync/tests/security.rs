//! Security: TLS verified by default, the permission warning, and no secret in any
//! output at trace level, on error paths too; each cluster only sees its own token.

use keep_client::BlockHash;

use crate::util::{
    Pair, args, assert_no_secrets, assert_tokens_isolated, block, builder, figure, holdings,
    run_env, with_setting,
};

/// With `ARVADOS_API_HOST_INSECURE=false`, a self-signed certificate is refused (one
/// line, exit 2, mentioning the certificate); trusting it through `SSL_CERT_FILE`
/// makes the same run work. So TLS is verified by default.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_is_verified_by_default() {
    let p = Pair::new().await;
    for i in 0..5 {
        p.src.put_block(&block("tls", i, 300), 2).await.unwrap();
    }
    p.src.write_settings_file_secure(&p.src_conf, true).unwrap();
    p.dst.write_settings_file_secure(&p.dst_conf, true).unwrap();
    for f in [&p.src_conf, &p.dst_conf] {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(f, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let a = args(&p, &["-q"]);
    // An empty SSL_CERT_FILE counts as unset: the system roots only.
    let r = run_env(&a, &[("SSL_CERT_FILE", "")]).await;
    r.assert_code(2);
    assert_eq!(r.stderr.trim().lines().count(), 1, "{}", r.stderr);
    assert!(r.stderr.contains("certificate"), "{}", r.stderr);
    assert!(p.dst_holdings().await.is_empty());

    let bundle = p.dir.path().join("ca.pem");
    let pem = std::fs::read_to_string(p.src.cert_path()).unwrap()
        + &std::fs::read_to_string(p.dst.cert_path()).unwrap();
    std::fs::write(&bundle, pem).unwrap();
    let r = run_env(&a, &[("SSL_CERT_FILE", bundle.to_str().unwrap())]).await;
    r.assert_code(0);
    assert_eq!(p.dst_holdings().await.len(), 5);
    assert_tokens_isolated(&p);
    figure(
        "TLS verified by default",
        "self-signed controllers, INSECURE=false",
        "refused with one line (exit 2) without SSL_CERT_FILE; copied with it",
    );
}

/// A settings file holding a signing key and readable by others draws a warning
/// naming the file and the fix; a 0600 file does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn world_readable_signing_key_warns() {
    use std::os::unix::fs::PermissionsExt as _;
    let p = Pair::new().await;
    p.src.put_block(&block("perm", 0, 10), 1).await.unwrap();
    let r = run_env(&args(&p, &["--dry-run"]), &[]).await;
    r.assert_code(0);
    assert!(
        !r.stderr.contains("readable by other users"),
        "{}",
        r.stderr
    );
    std::fs::set_permissions(&p.src_conf, std::fs::Permissions::from_mode(0o644)).unwrap();
    let r = run_env(&args(&p, &["--dry-run"]), &[]).await;
    r.assert_code(0);
    let warn = r
        .stderr
        .lines()
        .find(|l| l.contains("readable by other users"))
        .unwrap_or_else(|| panic!("no warning: {}", r.stderr));
    assert!(warn.contains(p.src_conf.to_str().unwrap()), "{warn}");
    assert!(warn.contains("chmod 600"), "{warn}");
    assert!(
        !r.stderr.contains(p.dst_conf.to_str().unwrap()),
        "{}",
        r.stderr
    );
    assert_tokens_isolated(&p);
    figure(
        "permission warning",
        "settings file with a signing key at 0644, then 0600",
        "warned (naming the file and chmod 600) at 0644 only",
    );
}

/// Trace-level logs (`RUST_LOG=trace` and `-vvv`, text and JSON) through a run full of
/// failures: a full destination keepstore, 503s, a corrupt block, a source keepstore
/// down, a failed list, secrets given as files; then error paths with a wrong token
/// and a wrong key (which are secrets too). No token, key or `+A` anywhere, and each
/// cluster only ever saw its own token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_at_trace_level_on_any_path() {
    let p = Pair::with(builder("srcaa"), builder("dstbb").full_volume(1, 0)).await;
    for i in 0..20 {
        p.src.put_block(&block("tr", i, 700), 2).await.unwrap();
    }
    let bad = block("tr-bad", 0, 700);
    p.src.put_block(&bad, 2).await.unwrap();
    let h = BlockHash::of(&bad);
    for i in holdings(&p.src).await[&h].clone() {
        p.src.corrupt_block(i, &h).await;
    }
    let list = p.dir.path().join("failed.txt");
    let list_arg = list.to_str().unwrap().to_string();
    let mut runs = 0;
    for (extra, env) in [
        (vec!["-vvv"], vec![]),
        (vec!["-vvv", "--json"], vec![]),
        (vec![], vec![("RUST_LOG", "trace")]),
        (vec!["--verify", "--verify-data", "-vvv"], vec![]),
        (vec!["--dry-run", "-vvv"], vec![]),
    ] {
        // Two 503s on the first GETs of a source keepstore (its index): retried.
        p.src
            .faults("keepstore0")
            .unwrap()
            .fail_next(2, 503, Some("GET"));
        let mut extra: Vec<&str> = extra;
        extra.extend(["--retries", "3", "--failed-list", &list_arg]);
        let r = run_env(&args(&p, &extra), &env).await;
        assert!(r.code == 0 || r.code == 1, "{extra:?}: {}", r.stderr);
        assert_no_secrets(&p, &r, &format!("{extra:?} {env:?}"));
        let l = std::fs::read_to_string(&list).unwrap_or_default();
        assert!(!l.contains("+A"));
        runs += 1;
    }
    assert_tokens_isolated(&p);

    // Token and key from files, with a source keepstore down.
    let tok = p.dir.path().join("src.token");
    let key = p.dir.path().join("src.key");
    std::fs::write(&tok, p.src.system_root_token()).unwrap();
    std::fs::write(&key, p.src.cluster_json()["signing_key"].as_str().unwrap()).unwrap();
    let bare = p.dir.path().join("bare.conf");
    std::fs::write(
        &bare,
        format!(
            "ARVADOS_API_HOST={}\nARVADOS_API_HOST_INSECURE=true\n",
            p.src.api_host()
        ),
    )
    .unwrap();
    p.src.stop_keepstore(2).await.unwrap();
    let a: Vec<String> = [
        "-src",
        bare.to_str().unwrap(),
        "-dst",
        p.dst_conf.to_str().unwrap(),
        "--src-token-file",
        tok.to_str().unwrap(),
        "--src-blob-signing-key-file",
        key.to_str().unwrap(),
        "--retries",
        "1",
        "-vvv",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let r = run_env(&a, &[]).await;
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert_no_secrets(&p, &r, "token and key files");
    p.src.start_keepstore(2).await.unwrap();
    runs += 1;

    // Error paths: a wrong token (index refused) and a wrong key (reads refused).
    let text = std::fs::read_to_string(&p.src_conf).unwrap();
    let wrong_token = "v2/srcaa-gj3su-000000000000000/wrongwrongwrongwrongwrongwrong";
    let wrong_key = "wrongkeywrongkeywrongkeywrongkey0123456789";
    for (k, v) in [
        ("ARVADOS_API_TOKEN", wrong_token),
        ("ARVADOS_BLOB_SIGNING_KEY", wrong_key),
    ] {
        let conf = p.dir.path().join("wrong.conf");
        std::fs::write(&conf, with_setting(&text, k, v)).unwrap();
        let a: Vec<String> = [
            "-src",
            conf.to_str().unwrap(),
            "-dst",
            p.dst_conf.to_str().unwrap(),
            "--retries",
            "1",
            "-vvv",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        for env in [vec![], vec![("RUST_LOG", "trace")]] {
            let r = run_env(&a, &env).await;
            // The token is refused at the index (exit 2); the key at the one
            // block left to copy (exit 1).
            assert_ne!(r.code, 0, "{k}: {}", r.stderr);
            assert_no_secrets(&p, &r, k);
            assert!(
                !r.stdout.contains(v) && !r.stderr.contains(v),
                "the wrong {k} was printed"
            );
            runs += 1;
        }
    }
    assert_tokens_isolated(&p);
    figure(
        "secrets at trace level",
        &format!(
            "{runs} runs (-vvv, RUST_LOG=trace, --json, verify, dry-run, token/key files, wrong token, wrong key) with faults"
        ),
        "no token, key or +A in stdout, stderr or the failed list; each cluster saw only its own token",
    );
}
