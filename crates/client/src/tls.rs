//! TLS and HTTP client construction: a rustls `ClientConfig` on the `ring` provider
//! (see the workspace `Cargo.toml` for why not aws-lc-rs), fed to reqwest.

use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

use crate::error::{Error, Result};

/// Builds the rustls client configuration.
///
/// Trusted roots are the system's (`rustls-native-certs`, which honours
/// `SSL_CERT_FILE` and `SSL_CERT_DIR`); when `SSL_CERT_FILE` is set its certificates
/// are also loaded explicitly, so that a private CA given that way works even where
/// the platform loader would ignore it.
///
/// With `insecure` (`ARVADOS_API_HOST_INSECURE`, §7.1) any certificate is accepted for
/// any name: that is what the flag means to the Go and Python SDKs, and test clusters
/// with self-signed certificates depend on it. Handshake signatures are still checked,
/// so the connection is still encrypted to whoever holds the presented key.
///
/// # Errors
/// [`Error::Config`] if `insecure` is false and no trusted root could be loaded at all,
/// or if rustls rejects the protocol versions.
pub fn rustls_config(insecure: bool) -> Result<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Config(format!("TLS setup: {e}")))?;
    let config = if insecure {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate {
                algorithms: provider.signature_verification_algorithms,
            }))
            .with_no_client_auth()
    } else {
        builder
            .with_root_certificates(root_store()?)
            .with_no_client_auth()
    };
    Ok(config)
}

fn root_store() -> Result<rustls::RootCertStore> {
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    let (added, _ignored) = roots.add_parsable_certificates(native.certs);
    let mut extra = 0;
    if let Some(file) = std::env::var_os("SSL_CERT_FILE").filter(|f| !f.is_empty()) {
        let path = std::path::PathBuf::from(&file);
        let pem = std::fs::read(&path)
            .map_err(|e| Error::Config(format!("reading SSL_CERT_FILE {}: {e}", path.display())))?;
        let certs: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut pem.as_slice())
            .collect::<std::result::Result<_, _>>()
            .map_err(|e| Error::Config(format!("parsing SSL_CERT_FILE {}: {e}", path.display())))?;
        extra = roots.add_parsable_certificates(certs).0;
    }
    if added + extra == 0 {
        tracing::warn!(
            errors = native.errors.len(),
            "no trusted TLS root certificates found; https will fail unless SSL_CERT_FILE is set"
        );
    }
    Ok(roots)
}

/// The verifier behind `ARVADOS_API_HOST_INSECURE`: it accepts every certificate
/// chain and host name, but still verifies the handshake signature with the presented
/// certificate's key.
#[derive(Debug)]
struct AcceptAnyCertificate {
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// Settings for one pooled HTTP client.
#[derive(Debug, Clone)]
pub(crate) struct HttpSettings {
    pub(crate) insecure: bool,
    pub(crate) connect_timeout: Duration,
    /// `TCP_USER_TIMEOUT`: sent data unacknowledged this long closes the connection.
    pub(crate) user_timeout: Option<Duration>,
    pub(crate) pool_max_idle_per_host: usize,
    pub(crate) user_agent: String,
}

/// One reqwest client (one connection pool) per cluster.
pub(crate) fn http_client(s: &HttpSettings) -> Result<reqwest::Client> {
    let tls = rustls_config(s.insecure)?;
    let b = reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .connect_timeout(s.connect_timeout)
        // No whole-request deadline and no read timeout: Keep transfers are watched
        // for stalls (stall.rs), API calls get a per-request deadline.
        .tcp_user_timeout(s.user_timeout)
        .pool_max_idle_per_host(s.pool_max_idle_per_host)
        .pool_idle_timeout(Duration::from_secs(90))
        .tcp_keepalive(Duration::from_secs(60))
        .tcp_nodelay(true)
        .user_agent(s.user_agent.clone())
        // Keep services answer directly; a redirect would be unexpected, and following
        // it would send the token elsewhere.
        .redirect(reqwest::redirect::Policy::none());
    b.build()
        .map_err(|e| Error::Config(format!("building the HTTP client: {}", error_chain(&e))))
}

/// An error and its sources, joined with `: `. Callers must strip URLs first
/// (`reqwest::Error::without_url`), since a URL may contain a signed locator.
pub(crate) fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(src) = cur {
        let m = src.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        cur = src.source();
    }
    s
}

/// Maps a transport-level reqwest error to the matching [`Error`] for `target` (a
/// service uuid or API host). `in_body` is true while a response body is read.
pub(crate) fn transport_error(target: &str, e: reqwest::Error, in_body: bool) -> Error {
    let e = e.without_url();
    let message = crate::error::redact_signatures(&error_chain(&e));
    let service = target.to_owned();
    let is_tls = {
        let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(&e);
        let mut found = false;
        while let Some(x) = cur {
            if x.downcast_ref::<rustls::Error>().is_some() {
                found = true;
                break;
            }
            cur = x.source();
        }
        found
            || message.contains("certificate")
            || message.contains("InvalidCertificate")
            || message.contains("handshake")
    };
    if e.is_timeout() {
        Error::Timeout { service, message }
    } else if is_tls && !in_body {
        Error::Tls { service, message }
    } else if e.is_connect() {
        Error::Connect { service, message }
    } else if in_body || e.is_body() || e.is_decode() {
        Error::Transfer { service, message }
    } else {
        Error::Connect { service, message }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configs_build() {
        assert!(rustls_config(true).is_ok());
        assert!(rustls_config(false).is_ok());
        let s = HttpSettings {
            insecure: false,
            connect_timeout: Duration::from_secs(1),
            user_timeout: None,
            pool_max_idle_per_host: 4,
            user_agent: "t".into(),
        };
        assert!(http_client(&s).is_ok());
    }
}
