//! Shared helpers.

use keep_testcluster::TestCluster;

pub(crate) fn http() -> reqwest::Client {
    reqwest::Client::builder().build().expect("client")
}

pub(crate) fn https(c: &TestCluster) -> reqwest::Client {
    let pem = std::fs::read(c.cert_path()).expect("cert");
    reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&pem).expect("pem"))
        .build()
        .expect("client")
}

pub(crate) async fn small(version: u8) -> TestCluster {
    TestCluster::builder()
        .keepstores(3)
        .arvados_version(version)
        .start()
        .await
        .expect("cluster")
}

/// (status, body) of a response.
pub(crate) async fn sb(r: reqwest::Response) -> (u16, String) {
    let s = r.status().as_u16();
    (s, r.text().await.expect("body"))
}
