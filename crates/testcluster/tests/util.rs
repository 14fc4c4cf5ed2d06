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

/// (status, body) of a GET of `url` with `token` as the bearer token.
pub(crate) async fn get_as(url: String, token: &str) -> (u16, String) {
    sb(http()
        .get(url)
        .bearer_auth(token)
        .send()
        .await
        .expect("request"))
    .await
}

/// `foo`'s locator signed for `token` with this cluster's key and TTL, but with an
/// expiry in 1970: keepstore must answer "expired" (§3.2).
pub(crate) fn expired_foo(c: &TestCluster, token: &str) -> keep_client::Locator {
    keep_client::signing::sign(
        &keep_client::Locator::of(b"foo"),
        c.signing_key(),
        &keep_client::Token::new(token),
        1000,
        keep_client::SignatureFormat::Current {
            ttl: c.blob_signature_ttl(),
        },
    )
}
