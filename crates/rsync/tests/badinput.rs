//! Bad input beyond `failures::bad_input_is_one_line_exit_2`: settings, hosts,
//! certificates, tokens, TTLs, services JSON and file flags an administrator could get
//! wrong. Each case: exit 2, exactly one line on stderr (with `-q`) mentioning the
//! problem, and no block written anywhere.
//!
//! The tests run as root, so a `chmod 000` file would still be readable: the
//! "unreadable settings file" case uses a directory instead.

use crate::util::{
    Pair, assert_tokens_isolated, block, count_requests, figure, ks, run_env, with_setting,
};

struct Case {
    what: &'static str,
    args: Vec<String>,
    env: Vec<(&'static str, String)>,
    needle: String,
    /// A status every source keepstore GET answers during the case.
    inject: Option<u16>,
}

fn write(p: &Pair, name: &str, text: &str) -> String {
    let path = p.dir.path().join(name);
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_bad_input_is_one_line_exit_2() {
    let p = Pair::new().await;
    for i in 0..20 {
        p.src.put_block(&block("bad-in", i, 100), 1).await.unwrap();
    }
    let src = p.src_conf.display().to_string();
    let dst = p.dst_conf.display().to_string();
    let src_text = std::fs::read_to_string(&p.src_conf).unwrap();
    let with_line = |key: &str, value: &str| with_setting(&src_text, key, value);
    let without = |key: &str| -> String {
        src_text
            .lines()
            .filter(|l| !l.starts_with(&format!("{key}=")))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let confdir = p.dir.path().join("confdir");
    std::fs::create_dir(&confdir).unwrap();
    let no_host = write(&p, "nohost.conf", &without("ARVADOS_API_HOST"));
    let no_token = write(&p, "notoken.conf", &without("ARVADOS_API_TOKEN"));
    let port = closed_port();
    let closed = write(
        &p,
        "closed.conf",
        &with_line("ARVADOS_API_HOST", &format!("127.0.0.1:{port}")),
    );
    let wrong_token = write(
        &p,
        "wrongtoken.conf",
        &with_line(
            "ARVADOS_API_TOKEN",
            "v2/srcaa-gj3su-000000000000000/notthetoken",
        ),
    );
    let user_token = write(
        &p,
        "usertoken.conf",
        &with_line("ARVADOS_API_TOKEN", p.src.user_token()),
    );
    let bad_insecure = write(
        &p,
        "insecure.conf",
        &with_line("ARVADOS_API_HOST_INSECURE", "maybe"),
    );
    let secure = p.dir.path().join("secure.conf");
    p.src.write_settings_file_secure(&secure, true).unwrap();
    let secure = secure.display().to_string();
    let empty_token = write(&p, "empty.token", "\n");
    let missing_dir_list = p.dir.path().join("no-such-dir").join("failed.txt");
    let xdg = p.dir.path().join("xdg");
    std::fs::create_dir(&xdg).unwrap();
    let services_missing_field = r#"{"items":[{"uuid":"srcaa-bi6l4-000000000000000"}]}"#;
    let with = |extra: &[&str]| -> Vec<String> {
        let mut v = vec![
            "-src".to_string(),
            src.clone(),
            "-dst".to_string(),
            dst.clone(),
        ];
        v.extend(extra.iter().map(|s| s.to_string()));
        v.push("-q".into());
        v
    };
    let sides = |s: &str, d: &str| -> Vec<String> {
        vec![
            "-src".into(),
            s.into(),
            "-dst".into(),
            d.into(),
            "-q".into(),
        ]
    };
    let cases = vec![
        Case {
            what: "settings path is a directory (unreadable)",
            args: sides(&format!("{}/", confdir.display()), &dst),
            env: vec![],
            needle: "confdir".into(),
            inject: None,
        },
        Case {
            what: "settings NAME not found in XDG_CONFIG_HOME",
            args: sides("nosuchcluster", &dst),
            env: vec![("XDG_CONFIG_HOME", xdg.display().to_string())],
            needle: "nosuchcluster".into(),
            inject: None,
        },
        Case {
            what: "no ARVADOS_API_HOST",
            args: sides(&no_host, &dst),
            env: vec![],
            needle: "ARVADOS_API_HOST".into(),
            inject: None,
        },
        Case {
            what: "no ARVADOS_API_TOKEN",
            args: sides(&no_token, &dst),
            env: vec![],
            needle: "ARVADOS_API_TOKEN".into(),
            inject: None,
        },
        Case {
            what: "bad ARVADOS_API_HOST_INSECURE",
            args: sides(&src, &bad_insecure),
            env: vec![],
            needle: "ARVADOS_API_HOST_INSECURE".into(),
            inject: None,
        },
        Case {
            what: "API host unreachable (closed port)",
            args: {
                let mut a = sides(&closed, &dst);
                a.extend(["--retries".into(), "1".into()]);
                a
            },
            env: vec![],
            needle: port.to_string(),
            inject: None,
        },
        Case {
            what: "certificate untrusted without ARVADOS_API_HOST_INSECURE",
            args: sides(&secure, &dst),
            env: vec![],
            needle: "certificate".into(),
            inject: None,
        },
        Case {
            what: "unknown token refused for the index (403)",
            args: sides(&wrong_token, &dst),
            env: vec![],
            needle: "SystemRootToken".into(),
            inject: None,
        },
        Case {
            what: "non-admin token refused for the index (403)",
            args: sides(&user_token, &dst),
            env: vec![],
            needle: "403".into(),
            inject: None,
        },
        Case {
            what: "index answered 401 (injected)",
            args: with(&[]),
            env: vec![],
            needle: "HTTP 401".into(),
            inject: Some(401),
        },
        Case {
            what: "mistyped TTL (1s): every signature invalid, stopped early",
            args: with(&["-src-blob-signature-ttl", "1s", "--retries", "1"]),
            env: vec![],
            needle: "stopped early".into(),
            inject: None,
        },
        Case {
            what: "TTL of 0",
            args: with(&["-src-blob-signature-ttl", "0"]),
            env: vec![],
            needle: "at least one second".into(),
            inject: None,
        },
        Case {
            what: "uppercase prefix",
            args: with(&["-prefix", "0A"]),
            env: vec![],
            needle: "lowercase".into(),
            inject: None,
        },
        Case {
            what: "replications far too high",
            args: with(&["-replications", "100"]),
            env: vec![],
            needle: "replications".into(),
            inject: None,
        },
        Case {
            what: "replications not a number",
            args: with(&["-replications", "two"]),
            env: vec![],
            needle: "replications".into(),
            inject: None,
        },
        Case {
            what: "missing -src and -dst",
            args: vec!["-q".into()],
            env: vec![],
            needle: "--src".into(),
            inject: None,
        },
        Case {
            what: "empty services JSON list",
            args: with(&["-src-keep-services-json", r#"{"items":[]}"#]),
            env: vec![],
            needle: "keep services".into(),
            inject: None,
        },
        Case {
            what: "services JSON entry missing fields",
            args: with(&["-src-keep-services-json", services_missing_field]),
            env: vec![],
            needle: "json".into(),
            inject: None,
        },
        Case {
            what: "services JSON file missing",
            args: with(&["-src-keep-services-json", "/no/such/services.json"]),
            env: vec![],
            needle: "/no/such/services.json".into(),
            inject: None,
        },
        Case {
            what: "destination services are the source's",
            args: with(&["-dst-keep-services-json", &p.src.services_json()]),
            env: vec![],
            needle: "share the keep service".into(),
            inject: None,
        },
        Case {
            what: "--failed-list in a missing directory",
            args: with(&["--failed-list", missing_dir_list.to_str().unwrap()]),
            env: vec![],
            needle: "does not exist".into(),
            inject: None,
        },
        Case {
            what: "--failed-list is a directory",
            args: with(&["--failed-list", confdir.to_str().unwrap()]),
            env: vec![],
            needle: "is a directory".into(),
            inject: None,
        },
        Case {
            what: "token file missing",
            args: with(&["--src-token-file", "/no/such/token"]),
            env: vec![],
            needle: "/no/such/token".into(),
            inject: None,
        },
        Case {
            what: "token file empty",
            args: with(&["--src-token-file", &empty_token]),
            env: vec![],
            needle: "empty".into(),
            inject: None,
        },
        Case {
            what: "--verify-data without --verify",
            args: with(&["--verify-data"]),
            env: vec![],
            needle: "--verify".into(),
            inject: None,
        },
        Case {
            what: "--dry-run with --verify",
            args: with(&["--dry-run", "--verify"]),
            env: vec![],
            needle: "choose one".into(),
            inject: None,
        },
        Case {
            what: "concurrency too high",
            args: with(&["--concurrency", "5000"]),
            env: vec![],
            needle: "concurrency".into(),
            inject: None,
        },
        Case {
            what: "retries too high",
            args: with(&["--retries", "1000"]),
            env: vec![],
            needle: "retries".into(),
            inject: None,
        },
        Case {
            what: "bwlimit 0",
            args: with(&["--bwlimit", "0"]),
            env: vec![],
            needle: "positive".into(),
            inject: None,
        },
        Case {
            what: "max-buffer-memory not a size",
            args: with(&["--max-buffer-memory", "lots"]),
            env: vec![],
            needle: "not a size".into(),
            inject: None,
        },
    ];
    let n = cases.len();
    for c in &cases {
        let env: Vec<(&str, &str)> = c.env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        if let Some(code) = c.inject {
            for i in 0..3 {
                ks(&p.src, i).fail_rate(1.0, code, Some("GET"));
            }
        }
        let r = run_env(&c.args, &env).await;
        for i in 0..3 {
            ks(&p.src, i).clear();
        }
        assert_eq!(r.code, 2, "{}: {}\n{}", c.what, r.stderr, r.stdout);
        let lines: Vec<&str> = r.stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "{}: not one line:\n{}", c.what, r.stderr);
        assert!(
            lines[0].to_lowercase().contains(&c.needle.to_lowercase()),
            "{}: stderr does not mention {:?}: {}",
            c.what,
            c.needle,
            r.stderr
        );
        println!("{:55} {}", c.what, lines[0]);
    }
    assert_eq!(
        count_requests(&p.dst, |r| r.method == "PUT"),
        0,
        "a block was written"
    );
    assert_tokens_isolated(&p);
    figure(
        "bad input",
        &format!("{n} cases here + 14 in failures.rs"),
        &format!("{n}/{n}: exit 2, one line naming the problem, 0 PUTs"),
    );
}
