//! The real Arvados Python SDK against a running `keep-testcluster` (issue 3). Slow and
//! needs PyPI once, so a bare `cargo test` reports it as ignored; `scripts/test` runs it.

#[test]
#[ignore = "needs the Python SDK (PyPI, once); scripts/test runs it"]
fn python_sdk_interop() {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/interop/run_interop.sh");
    let st = std::process::Command::new(script)
        .arg("--proxy")
        // A nested `cargo build` would wait on the lock this `cargo test` holds.
        .env(
            "KEEP_TESTCLUSTER_BIN",
            env!("CARGO_BIN_EXE_keep-testcluster"),
        )
        .status()
        .expect("run interop script");
    assert!(st.success(), "interop suite failed");
}
