//! # keep-testcluster: a local Arvados Keep cluster for tests
//!
//! Starts, on `127.0.0.1:0` ports, an HTTPS controller, N keepstores, an optional
//! keepproxy and a small admin endpoint, all behaving on the wire like Arvados 3.x
//! (or 2.x) as described in `shared/keep-protocol.md` (§5 keepstore, §6 keepproxy,
//! §7 controller). Faults can be injected per service and every request is logged.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! let cluster = keep_testcluster::TestCluster::builder().keepstores(3).start().await?;
//! let loc = cluster.put_block(b"foo", 2).await?;
//! assert_eq!(cluster.blocks_on(0).await.len() + cluster.blocks_on(1).await.len()
//!     + cluster.blocks_on(2).await.len(), 2);
//! # let _ = loc; Ok(()) }
//! ```
//!
//! # Layout
//! - [`TestCluster`] / [`Builder`]: this file.
//! - `server`: hyper accept loop, stop/start, fault + log middleware.
//! - `keepstore`, `volume`, `proxy`, `controller`: the services.
//! - [`faults`]: fault injection; `reqlog`: the request log.

#![recursion_limit = "256"]
#![warn(missing_docs)]
// Handlers return an early `Response` as their `Err`; boxing it would gain nothing.
#![allow(clippy::result_large_err)]

mod admin;
mod auth;
mod config;
mod controller;
pub mod faults;
mod keepstore;
mod proxy;
mod reqlog;
mod server;
mod volume;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use keep_client::signing::{Token, sign};
use keep_client::{BlockHash, Locator, SigningKey};
use serde_json::json;

pub use faults::{FaultHandle, FaultSpec, MALFORMED_INDEX_LINE};
pub use reqlog::{RequestRecord, token_digest_of};
pub use volume::synthetic_block;

use config::Config;
use controller::{Controller, ServiceEntry};
use keepstore::Keepstore;
use server::Service;
use volume::{Kind, Volume};

/// The default `BlobSigningTTL`: 336h (§3.1).
pub const DEFAULT_TTL: Duration = Duration::from_secs(1_209_600);

fn random_alnum(n: usize) -> String {
    use rand::Rng;
    const A: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    (0..n)
        .map(|_| A[rng.random_range(0..A.len())] as char)
        .collect()
}

/// Builds a [`TestCluster`]. Every setter documents its default.
#[derive(Debug, Clone)]
pub struct Builder {
    cluster_id: String,
    keepstores: usize,
    volumes_per_keepstore: usize,
    replication: u64,
    proxy: bool,
    dir: Option<PathBuf>,
    memory: bool,
    arvados_version: u8,
    blob_signing: bool,
    signing_key: Option<String>,
    system_root_token: Option<String>,
    user_tokens: Vec<String>,
    ttl: Duration,
    seed_blocks: Option<(usize, usize)>,
    synthetic: Option<(u64, u64)>,
    read_only: Vec<(usize, usize)>,
    full: Vec<(usize, usize)>,
    read_only_keepstores: Vec<usize>,
    fault_seed: Option<u64>,
    legacy_signatures: bool,
    index_mtime_seconds: Option<bool>,
    request_log_file: Option<bool>,
}

impl Default for Builder {
    fn default() -> Self {
        Builder {
            cluster_id: "zzzzz".into(),
            keepstores: 3,
            volumes_per_keepstore: 1,
            replication: 2,
            proxy: false,
            dir: None,
            memory: false,
            arvados_version: 3,
            blob_signing: true,
            signing_key: None,
            system_root_token: None,
            user_tokens: Vec::new(),
            ttl: DEFAULT_TTL,
            seed_blocks: None,
            synthetic: None,
            read_only: Vec::new(),
            full: Vec::new(),
            read_only_keepstores: Vec::new(),
            fault_seed: None,
            legacy_signatures: false,
            index_mtime_seconds: None,
            request_log_file: None,
        }
    }
}

impl Builder {
    /// Five-character cluster ID (`uuidPrefix`). Default `zzzzz`.
    pub fn cluster_id(mut self, id: impl Into<String>) -> Self {
        self.cluster_id = id.into();
        self
    }
    /// Number of keepstores. Default 3.
    pub fn keepstores(mut self, n: usize) -> Self {
        self.keepstores = n;
        self
    }
    /// Volumes per keepstore. Default 1.
    pub fn volumes_per_keepstore(mut self, n: usize) -> Self {
        self.volumes_per_keepstore = n.max(1);
        self
    }
    /// `defaultCollectionReplication` / `Collections.DefaultReplication`. Default 2.
    pub fn replication(mut self, n: u64) -> Self {
        self.replication = n;
        self
    }
    /// Also run a keepproxy (§6). Default off.
    pub fn proxy(mut self, on: bool) -> Self {
        self.proxy = on;
        self
    }
    /// Directory for the certificate, the request log and (unless [`Builder::memory`])
    /// the volumes `DIR/keepK/volV`. Default: a temporary directory and memory volumes.
    pub fn dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.dir = Some(dir.into());
        self
    }
    /// Keep volumes in memory even when a directory is given. Default off.
    pub fn memory(mut self, on: bool) -> Self {
        self.memory = on;
        self
    }
    /// 3 (default) for current keepstore answers, 2 for the 2.x ones (§14).
    pub fn arvados_version(mut self, v: u8) -> Self {
        self.arvados_version = v;
        self
    }
    /// Enforce permission signatures on GET/HEAD (`Collections.BlobSigning`). Default on.
    pub fn blob_signing(mut self, on: bool) -> Self {
        self.blob_signing = on;
        self
    }
    /// The blob signing key. Default: 64 random alphanumerics.
    pub fn signing_key(mut self, key: impl Into<String>) -> Self {
        self.signing_key = Some(key.into());
        self
    }
    /// The SystemRootToken. Default: 50 random alphanumerics.
    pub fn system_root_token(mut self, token: impl Into<String>) -> Self {
        self.system_root_token = Some(token.into());
        self
    }
    /// Adds a token the controller accepts as an ordinary (non-admin) user. Default: one
    /// random v2 token.
    pub fn user_token(mut self, token: impl Into<String>) -> Self {
        self.user_tokens.push(token.into());
        self
    }
    /// `BlobSigningTTL`. Default 336h.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }
    /// Writes `n` blocks of `size` bytes at start, each on the first
    /// `replication` keepstores in probe order. Default none.
    pub fn seed_blocks(mut self, n: usize, size: usize) -> Self {
        self.seed_blocks = Some((n, size));
        self
    }
    /// Adds a read-only synthetic volume of `n` blocks derived from `seed` to keepstore 0
    /// (see [`synthetic_block`]). Default none.
    pub fn synthetic_blocks(mut self, n: u64, seed: u64) -> Self {
        self.synthetic = Some((n, seed));
        self
    }
    /// Makes volume `volume` of keepstore `keepstore` read-only.
    pub fn read_only_volume(mut self, keepstore: usize, volume: usize) -> Self {
        self.read_only.push((keepstore, volume));
        self
    }
    /// Makes volume `volume` of keepstore `keepstore` report full (writes fail; 507).
    pub fn full_volume(mut self, keepstore: usize, volume: usize) -> Self {
        self.full.push((keepstore, volume));
        self
    }
    /// Lists keepstore `i` as `read_only: true` in `keep_services` (clients and the
    /// proxy do not write to it; the keepstore itself still accepts PUTs, as in Arvados).
    pub fn read_only_keepstore(mut self, i: usize) -> Self {
        self.read_only_keepstores.push(i);
        self
    }
    /// Seed of the random faults. Default: random (recorded in `cluster.json` and logged).
    pub fn fault_seed(mut self, seed: u64) -> Self {
        self.fault_seed = Some(seed);
        self
    }
    /// Sign and verify with the 2015 message `hash@token@expiry` (§3.1). Default off.
    pub fn legacy_signatures(mut self, on: bool) -> Self {
        self.legacy_signatures = on;
        self
    }
    /// Index mtimes in seconds, as before 2016-07 (§5.6, §14). Default: on in
    /// `arvados_version(2)` mode (the §14 "old" column, as the lead asked), off
    /// (nanoseconds) in 3.x. Real 2.x keepstores already sent nanoseconds: pass
    /// `false` to get that.
    pub fn index_mtime_seconds(mut self, on: bool) -> Self {
        self.index_mtime_seconds = Some(on);
        self
    }
    /// Append the request log to `DIR/requests.jsonl`. Default: on when
    /// [`Builder::dir`] is set.
    pub fn request_log_file(mut self, on: bool) -> Self {
        self.request_log_file = Some(on);
        self
    }

    /// Starts every service and returns once all of them serve.
    ///
    /// # Errors
    /// Invalid settings, or a listener, TLS or volume directory that cannot be set up.
    pub async fn start(self) -> anyhow::Result<TestCluster> {
        TestCluster::start(self).await
    }
}

/// A keepstore's address, from [`TestCluster::keepstores`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeepstoreInfo {
    /// `<cluster>-bi6l4-<15 chars>`.
    pub uuid: String,
    /// `http://127.0.0.1:PORT` (no trailing slash).
    pub url: String,
    /// Volume (mount) UUIDs, sorted.
    pub volumes: Vec<String>,
}

/// Every service with the names it can be addressed by.
pub(crate) struct Registry {
    pub(crate) services: Vec<(Vec<String>, Arc<Service>)>,
}

impl Registry {
    pub(crate) fn find(&self, name: &str) -> Option<&Arc<Service>> {
        self.services
            .iter()
            .find(|(names, _)| names.iter().any(|n| n == name))
            .map(|(_, s)| s)
    }
}

/// A running cluster. Dropping it stops every service.
pub struct TestCluster {
    cfg: Arc<Config>,
    controller: Arc<Service>,
    keepstores: Vec<(Arc<Keepstore>, Arc<Service>)>,
    proxy: Option<(String, Arc<Service>)>,
    admin: Arc<Service>,
    registry: Arc<Registry>,
    log: Arc<reqlog::RequestLog>,
    dir: PathBuf,
    cert_path: PathBuf,
    request_log_path: Option<PathBuf>,
    fault_seed: u64,
    read_only_keepstores: Vec<usize>,
    _tmp: Option<tempfile::TempDir>,
}

impl std::fmt::Debug for TestCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestCluster")
            .field("cluster_id", &self.cfg.cluster_id)
            .field("api_host", &self.api_host())
            .finish_non_exhaustive()
    }
}

fn tls_acceptor(cert_path: &Path) -> anyhow::Result<tokio_rustls::TlsAcceptor> {
    let ck =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])?;
    std::fs::write(cert_path, ck.cert.pem())
        .with_context(|| format!("writing {}", cert_path.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(ck.key_pair.serialize_der().into());
    let cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(vec![ck.cert.der().clone()], key)?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(cfg)))
}

fn seed_for(seed: u64, name: &str) -> u64 {
    use md5::Digest;
    let d: [u8; 16] = md5::Md5::digest(name.as_bytes()).into();
    seed ^ u64::from_le_bytes(d[..8].try_into().expect("8 bytes"))
}

/// Deterministic contents of seed block `i`.
fn seed_block(i: usize, size: usize) -> Vec<u8> {
    let mut v = synthetic_block(0x5eed, i as u64);
    v.resize(size.max(8), 0);
    v[..8].copy_from_slice(&(i as u64).to_le_bytes());
    for (j, b) in v.iter_mut().enumerate().skip(8) {
        *b = (j as u8).wrapping_mul(31) ^ (i as u8);
    }
    v.truncate(size);
    v
}

impl TestCluster {
    /// A builder with the defaults.
    pub fn builder() -> Builder {
        Builder::default()
    }

    async fn start(b: Builder) -> anyhow::Result<TestCluster> {
        anyhow::ensure!(
            b.cluster_id.len() == 5
                && b.cluster_id
                    .bytes()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit()),
            "cluster id must be 5 lowercase alphanumerics"
        );
        anyhow::ensure!(b.keepstores >= 1, "need at least one keepstore");
        let (dir, tmp) = match &b.dir {
            Some(d) => {
                std::fs::create_dir_all(d)?;
                (d.clone(), None)
            }
            None => {
                let t = tempfile::tempdir()?;
                (t.path().to_owned(), Some(t))
            }
        };
        let memory = b.memory || b.dir.is_none();
        let id = b.cluster_id.clone();
        let fault_seed = b.fault_seed.unwrap_or_else(rand::random);
        tracing::info!(cluster = %id, fault_seed, "starting test cluster");
        let user_tokens = if b.user_tokens.is_empty() {
            vec![format!(
                "v2/{id}-gj3su-{}/{}",
                random_alnum(15),
                random_alnum(50)
            )]
        } else {
            b.user_tokens.clone()
        };
        let key = b.signing_key.clone().unwrap_or_else(|| random_alnum(64));
        let cfg = Arc::new(Config {
            cluster_id: id.clone(),
            system_root_token: b
                .system_root_token
                .clone()
                .unwrap_or_else(|| random_alnum(50)),
            management_token: random_alnum(40),
            user_tokens,
            signing_key: SigningKey::new(&key),
            signing_key_str: key,
            ttl: b.ttl,
            blob_signing: b.blob_signing,
            arvados_version: b.arvados_version,
            legacy_signatures: b.legacy_signatures,
            index_mtime_seconds: b.index_mtime_seconds.unwrap_or(b.arvados_version < 3),
            replication: b.replication,
        });
        let log_path = b
            .request_log_file
            .unwrap_or(b.dir.is_some())
            .then(|| dir.join("requests.jsonl"));
        let log = Arc::new(reqlog::RequestLog::new(log_path.as_deref())?);

        // Keepstores: bind first, then serve (style.md B4).
        let mut keepstores = Vec::new();
        let mut listeners = Vec::new();
        let mut entries = Vec::new();
        for k in 0..b.keepstores {
            let uuid = format!("{id}-bi6l4-{k:015}");
            let mut vols = Vec::new();
            for v in 0..b.volumes_per_keepstore {
                let vuuid = format!("{id}-nyw5e-{:015}", k * 1000 + v);
                let kind = if memory {
                    Kind::Memory(Default::default())
                } else {
                    Kind::Dir(dir.join(format!("keep{k}")).join(format!("vol{v}")))
                };
                vols.push(Arc::new(Volume::new(
                    vuuid,
                    kind,
                    b.read_only.contains(&(k, v)),
                    b.full.contains(&(k, v)),
                )?));
            }
            if k == 0 {
                if let Some((n, seed)) = b.synthetic {
                    let vuuid = format!("{id}-nyw5e-{:015}", 999);
                    let kind = Kind::Synthetic(volume::Synthetic::new(n, seed));
                    vols.push(Arc::new(Volume::new(vuuid, kind, true, false)?));
                }
            }
            vols.sort_by(|a, b| a.uuid.cmp(&b.uuid));
            let faults = Arc::new(faults::Faults::new(seed_for(fault_seed, &uuid)));
            let ks = Arc::new(Keepstore {
                uuid: uuid.clone(),
                volumes: vols,
                cfg: Arc::clone(&cfg),
                faults: Arc::clone(&faults),
            });
            let (svc, l) = Service::bind(
                uuid.clone(),
                None,
                keepstore::handler(Arc::clone(&ks)),
                faults,
                Arc::clone(&log),
                true,
            )
            .await?;
            entries.push(ServiceEntry {
                uuid,
                port: svc.addr.port(),
                service_type: "disk",
                read_only: b.read_only_keepstores.contains(&k),
            });
            keepstores.push((ks, svc));
            listeners.push(l);
        }

        let mut registry = Vec::new();
        for (i, (ks, svc)) in keepstores.iter().enumerate() {
            registry.push((
                vec![ks.uuid.clone(), format!("keepstore{i}")],
                Arc::clone(svc),
            ));
        }
        let mut proxy = None;
        if b.proxy {
            let uuid = format!("{id}-bi6l4-proxy0000000000");
            let faults = Arc::new(faults::Faults::new(seed_for(fault_seed, &uuid)));
            let p = Arc::new(proxy::Proxy {
                cfg: Arc::clone(&cfg),
                stores: keepstores
                    .iter()
                    .enumerate()
                    .map(|(i, (ks, s))| {
                        let ro = b.read_only_keepstores.contains(&i);
                        (Arc::clone(s), ks.uuid.clone(), ro)
                    })
                    .collect(),
                faults: Arc::clone(&faults),
            });
            let (svc, l) = Service::bind(
                uuid.clone(),
                None,
                proxy::handler(p),
                faults,
                Arc::clone(&log),
                true,
            )
            .await?;
            entries.push(ServiceEntry {
                uuid: uuid.clone(),
                port: svc.addr.port(),
                service_type: "proxy",
                read_only: false,
            });
            registry.push((vec![uuid.clone(), "proxy".to_owned()], Arc::clone(&svc)));
            listeners.push(l);
            proxy = Some((uuid, svc));
        }

        // Controller over HTTPS.
        let cert_path = dir.join("cert.pem");
        let tls = tls_acceptor(&cert_path)?;
        let api_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let api_host = format!("127.0.0.1:{}", api_listener.local_addr()?.port());
        drop(api_listener);
        let ctrl = Arc::new(Controller {
            cfg: Arc::clone(&cfg),
            api_host: api_host.clone(),
            services: entries,
        });
        let faults = Arc::new(faults::Faults::new(seed_for(fault_seed, "controller")));
        // Bind again on the port we reserved (the handler needed its own address).
        let (controller, cl) = bind_at(
            &api_host,
            "controller",
            tls,
            controller::handler(ctrl),
            faults,
            &log,
        )
        .await?;
        registry.push((vec!["controller".to_owned()], Arc::clone(&controller)));
        let registry = Arc::new(Registry { services: registry });

        let admin_faults = Arc::new(faults::Faults::new(0));
        let (admin, al) = Service::bind(
            "admin".into(),
            None,
            admin::handler(Arc::clone(&registry), Arc::clone(&cfg)),
            admin_faults,
            Arc::clone(&log),
            false,
        )
        .await?;

        let mut li = listeners.into_iter();
        for (_, svc) in &keepstores {
            svc.serve(li.next().expect("one listener per keepstore"))
                .await;
        }
        if let Some((_, svc)) = &proxy {
            svc.serve(li.next().expect("proxy listener")).await;
        }
        controller.serve(cl).await;
        admin.serve(al).await;

        let cluster = TestCluster {
            cfg,
            controller,
            keepstores,
            proxy,
            admin,
            registry,
            log,
            dir,
            cert_path,
            request_log_path: log_path,
            fault_seed,
            read_only_keepstores: b.read_only_keepstores.clone(),
            _tmp: tmp,
        };
        if let Some((n, size)) = b.seed_blocks {
            for i in 0..n {
                cluster
                    .put_block(&seed_block(i, size), b.replication as usize)
                    .await?;
            }
        }
        Ok(cluster)
    }

    /// `127.0.0.1:PORT` of the HTTPS controller (`ARVADOS_API_HOST`).
    pub fn api_host(&self) -> String {
        self.controller.addr.to_string()
    }
    /// The controller's self-signed certificate (PEM), for `SSL_CERT_FILE`.
    pub fn cert_path(&self) -> &Path {
        &self.cert_path
    }
    /// The cluster's directory (a temporary one unless [`Builder::dir`] was given).
    pub fn dir(&self) -> &Path {
        &self.dir
    }
    /// The SystemRootToken (admin; needed for `/index`).
    pub fn system_root_token(&self) -> &str {
        &self.cfg.system_root_token
    }
    /// A non-admin user token the controller accepts (v2 form unless set).
    pub fn user_token(&self) -> &str {
        &self.cfg.user_tokens[0]
    }
    /// The ManagementToken (`/_health/ping`).
    pub fn management_token(&self) -> &str {
        &self.cfg.management_token
    }
    /// The blob signing key.
    pub fn signing_key(&self) -> &SigningKey {
        &self.cfg.signing_key
    }
    /// `BlobSigningTTL`.
    pub fn blob_signature_ttl(&self) -> Duration {
        self.cfg.ttl
    }
    /// The cluster ID.
    pub fn cluster_id(&self) -> &str {
        &self.cfg.cluster_id
    }
    /// Seed of the random faults.
    pub fn fault_seed(&self) -> u64 {
        self.fault_seed
    }
    /// The keepstores, in index order (`keepstore0`, ...).
    pub fn keepstores(&self) -> Vec<KeepstoreInfo> {
        self.keepstores
            .iter()
            .map(|(ks, svc)| KeepstoreInfo {
                uuid: ks.uuid.clone(),
                url: format!("http://{}", svc.addr),
                volumes: ks.volumes.iter().map(|v| v.uuid.clone()).collect(),
            })
            .collect()
    }
    /// The keepproxy's (uuid, url), if running.
    pub fn proxy(&self) -> Option<(String, String)> {
        self.proxy
            .as_ref()
            .map(|(u, s)| (u.clone(), format!("http://{}", s.addr)))
    }
    /// `http://127.0.0.1:PORT` of the admin endpoint used by `keep-testcluster fault`.
    pub fn admin_url(&self) -> String {
        format!("http://{}", self.admin.addr)
    }
    /// A KeepServiceList JSON of the keepstores (for `-src-keep-services-json`).
    pub fn services_json(&self) -> String {
        let items: Vec<_> = self
            .keepstores
            .iter()
            .enumerate()
            .map(|(i, (ks, svc))| {
                controller::service_json(
                    &self.cfg.cluster_id,
                    &ServiceEntry {
                        uuid: ks.uuid.clone(),
                        port: svc.addr.port(),
                        service_type: "disk",
                        read_only: self.read_only_keepstores.contains(&i),
                    },
                )
            })
            .collect();
        let n = items.len();
        controller::list_json(items, n, None, None).to_string()
    }

    /// Signs `locator` for `token` with this cluster's key and TTL, expiring after the TTL.
    pub fn sign_locator(&self, locator: &Locator, token: &str) -> Locator {
        let exp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
            + self.cfg.ttl.as_secs();
        sign(
            locator,
            &self.cfg.signing_key,
            &Token::new(token),
            exp,
            self.cfg.signature_format(),
        )
    }

    /// Writes `NAME.conf`-style settings (§9.2): host, SystemRootToken,
    /// `ARVADOS_API_HOST_INSECURE=true`, and the signing key if asked.
    ///
    /// # Errors
    /// The file cannot be written.
    pub fn write_settings_file(
        &self,
        path: impl AsRef<Path>,
        with_signing_key: bool,
    ) -> anyhow::Result<()> {
        self.write_settings(path.as_ref(), with_signing_key, true)
    }

    /// Like [`TestCluster::write_settings_file`] but with `ARVADOS_API_HOST_INSECURE=false`:
    /// clients must trust [`TestCluster::cert_path`] (e.g. `SSL_CERT_FILE`).
    ///
    /// # Errors
    /// The file cannot be written.
    pub fn write_settings_file_secure(
        &self,
        path: impl AsRef<Path>,
        with_signing_key: bool,
    ) -> anyhow::Result<()> {
        self.write_settings(path.as_ref(), with_signing_key, false)
    }

    fn write_settings(&self, path: &Path, with_key: bool, insecure: bool) -> anyhow::Result<()> {
        let mut s = format!(
            "ARVADOS_API_HOST={}\nARVADOS_API_TOKEN={}\nARVADOS_API_HOST_INSECURE={}\n",
            self.api_host(),
            self.cfg.system_root_token,
            insecure
        );
        if with_key {
            s.push_str(&format!(
                "ARVADOS_BLOB_SIGNING_KEY={}\n",
                self.signing_key_str()
            ));
        }
        std::fs::write(path, s).with_context(|| format!("writing {}", path.display()))
    }

    fn signing_key_str(&self) -> String {
        // SigningKey hides its bytes; the config keeps the original string.
        self.cfg.signing_key_str.clone()
    }

    /// The `cluster.json` description (contains secrets: tokens and the signing key).
    pub fn cluster_json(&self) -> serde_json::Value {
        json!({
            "cluster_id": self.cfg.cluster_id,
            "api_host": self.api_host(),
            "api_url": format!("https://{}/", self.api_host()),
            "cert_path": self.cert_path,
            "system_root_token": self.cfg.system_root_token,
            "user_token": self.cfg.user_tokens[0],
            "management_token": self.cfg.management_token,
            "signing_key": self.signing_key_str(),
            "blob_signature_ttl": self.cfg.ttl.as_secs(),
            "blob_signing": self.cfg.blob_signing,
            "arvados_version": self.cfg.arvados_version,
            "replication": self.cfg.replication,
            "keepstores": self.keepstores().iter().map(|k| json!({"uuid": k.uuid, "url": k.url, "volumes": k.volumes})).collect::<Vec<_>>(),
            "proxy": self.proxy().map(|(u, url)| json!({"uuid": u, "url": url})),
            "admin_url": self.admin_url(),
            "request_log": self.request_log_path,
            "fault_seed": self.fault_seed,
        })
    }

    /// Fault controls of a service: a keepstore UUID, `keepstoreN`, `proxy`, a proxy
    /// UUID, or `controller`.
    ///
    /// # Errors
    /// No such service.
    pub fn faults(&self, service: &str) -> anyhow::Result<FaultHandle> {
        let svc = self
            .registry
            .find(service)
            .with_context(|| format!("no service {service:?}"))?;
        Ok(FaultHandle {
            faults: Arc::clone(&svc.faults),
        })
    }

    /// Stops a service (listener and connections closed: connection refused).
    ///
    /// # Errors
    /// No such service.
    pub async fn stop_service(&self, service: &str) -> anyhow::Result<()> {
        self.registry
            .find(service)
            .with_context(|| format!("no service {service:?}"))?
            .stop()
            .await;
        Ok(())
    }

    /// Starts a stopped service again on the same port.
    ///
    /// # Errors
    /// No such service, or the port cannot be bound again.
    pub async fn start_service(&self, service: &str) -> anyhow::Result<()> {
        self.registry
            .find(service)
            .with_context(|| format!("no service {service:?}"))?
            .start()
            .await
    }

    /// Stops keepstore `i`.
    ///
    /// # Errors
    /// No such keepstore.
    pub async fn stop_keepstore(&self, i: usize) -> anyhow::Result<()> {
        self.stop_service(&format!("keepstore{i}")).await
    }

    /// Starts keepstore `i` again.
    ///
    /// # Errors
    /// No such keepstore, or its port cannot be bound again.
    pub async fn start_keepstore(&self, i: usize) -> anyhow::Result<()> {
        self.start_service(&format!("keepstore{i}")).await
    }

    /// Every request so far.
    pub fn request_log(&self) -> Vec<RequestRecord> {
        self.log.snapshot()
    }

    /// Empties the in-memory request log (the file keeps its lines).
    pub fn clear_request_log(&self) {
        self.log.clear();
    }

    fn keepstore(&self, i: usize) -> anyhow::Result<&Arc<Keepstore>> {
        self.keepstores
            .get(i)
            .map(|(k, _)| k)
            .with_context(|| format!("no keepstore {i}"))
    }

    /// Stores `data` on keepstore `i` as a PUT would (no HTTP). Returns `hash+size`.
    ///
    /// # Errors
    /// No such keepstore, or no volume accepted the block.
    pub async fn put_block_on(&self, i: usize, data: &[u8]) -> anyhow::Result<Locator> {
        let ks = self.keepstore(i)?;
        let hash = BlockHash::of(data);
        ks.write_block(&hash, Bytes::copy_from_slice(data), true)
            .await
            .map_err(|e| anyhow::anyhow!("keepstore {i}: {e:?}"))?;
        Ok(Locator::of(data))
    }

    /// Stores `data` on the first `replicas` keepstores in probe order (§4.1).
    ///
    /// # Errors
    /// More replicas than keepstores, or a write failed.
    pub async fn put_block(&self, data: &[u8], replicas: usize) -> anyhow::Result<Locator> {
        anyhow::ensure!(
            replicas <= self.keepstores.len(),
            "only {} keepstores",
            self.keepstores.len()
        );
        let uuids: Vec<&str> = self
            .keepstores
            .iter()
            .map(|(k, _)| k.uuid.as_str())
            .collect();
        let order = keep_client::rendezvous::probe_order(&BlockHash::of(data), &uuids);
        for &i in order.iter().take(replicas) {
            self.put_block_on(i, data).await?;
        }
        Ok(Locator::of(data))
    }

    /// The blocks on keepstore `i` (every volume; duplicates kept), with sizes.
    pub async fn blocks_on(&self, i: usize) -> Vec<(BlockHash, u64)> {
        let Ok(ks) = self.keepstore(i) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for v in &ks.volumes {
            let (tx, mut rx) = tokio::sync::mpsc::channel(4);
            match v.index("", tx) {
                volume::IndexJob::Ready(e) => out.extend(e.into_iter().map(|(h, s, _)| (h, s))),
                volume::IndexJob::Blocking(f) => {
                    let w = tokio::task::spawn_blocking(f);
                    while let Some(c) = rx.recv().await {
                        out.extend(c.into_iter().map(|(h, s, _)| (h, s)));
                    }
                    let _ = w.await;
                }
            }
        }
        out
    }

    /// Removes a block from every volume of keepstore `i`; true if it was there.
    pub async fn remove_block(&self, i: usize, hash: &BlockHash) -> bool {
        let Ok(ks) = self.keepstore(i) else {
            return false;
        };
        let mut any = false;
        for v in &ks.volumes {
            any |= v.remove(hash).await;
        }
        any
    }

    /// Overwrites the stored copies on keepstore `i` with different bytes (a bad disk:
    /// GET then answers 502, PUT 500 `hash collision`); true if it was there.
    pub async fn corrupt_block(&self, i: usize, hash: &BlockHash) -> bool {
        let Ok(ks) = self.keepstore(i) else {
            return false;
        };
        let mut any = false;
        for v in &ks.volumes {
            any |= v.corrupt(hash).await;
        }
        any
    }

    /// Stops every service and waits for the listeners to close.
    pub async fn shutdown(self) {
        for (_, s) in &self.registry.services {
            s.stop().await;
        }
        self.admin.stop().await;
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        for (_, s) in &self.registry.services {
            s.abort();
        }
        self.admin.abort();
    }
}

async fn bind_at(
    host: &str,
    name: &str,
    tls: tokio_rustls::TlsAcceptor,
    handler: server::Handler,
    faults: Arc<faults::Faults>,
    log: &Arc<reqlog::RequestLog>,
) -> anyhow::Result<(Arc<Service>, tokio::net::TcpListener)> {
    server::Service::bind_addr(
        host.parse()?,
        name.to_owned(),
        Some(tls),
        handler,
        faults,
        Arc::clone(log),
        true,
    )
    .await
}
