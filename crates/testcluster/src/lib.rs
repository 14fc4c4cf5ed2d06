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
//! - [`TestCluster`]: this file; [`Builder`]: `builder.rs`.
//! - `server`: hyper accept loop, stop/start, fault + log middleware.
//! - `keepstore`, `volume`, `proxy`, `controller`: the services.
//! - `collections` (store, filters, order, select), `manifest`, `signature` (the
//!   API server's own blob signing, independent of keep-client), `rfc3339`: the
//!   controller's collections API.
//! - [`faults`]: fault injection; `reqlog`: the request log.
//! - [`upstream`]: real Arvados keepstores (upstream binaries) as a cluster.

#![recursion_limit = "256"]
#![warn(missing_docs)]
// Handlers return an early `Response` as their `Err`; boxing it would gain nothing.
#![allow(clippy::result_large_err)]

mod admin;
mod auth;
mod builder;
mod collections;
mod config;
mod controller;
pub mod faults;
mod keepstore;
mod manifest;
mod proxy;
mod reqlog;
mod rfc3339;
mod server;
mod signature;
pub mod upstream;
mod volume;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use keep_client::signing::{Token, sign};
use keep_client::{BlockHash, Locator, SigningKey};
use serde_json::json;

pub use builder::Builder;
pub use faults::{FaultHandle, FaultSpec, MALFORMED_INDEX_LINE};
pub use reqlog::{RequestRecord, token_digest_of};
pub use volume::synthetic_block;

use config::Config;
use controller::{Controller, ServiceEntry};
use keepstore::Keepstore;
use server::Service;
use volume::{Kind, Volume};

/// The seed for a seeded test of this workspace: `KEEP_RSYNC_SEED` if set, else taken
/// from the clock. The caller prints it, so that a failure can be replayed.
pub fn test_seed() -> u64 {
    std::env::var("KEEP_RSYNC_SEED")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
                % 1_000_000_007
        })
}

/// Records one line of the workspace's reliability figures, for test suites that use
/// this cluster: printed as `FIGURE\t<scenario>\t<tried>\t<held>` (see `--nocapture`)
/// and, when `KEEP_RSYNC_FIGURES` names a file, appended to it for the summary table
/// that `scripts/reliability` prints.
pub fn report_figure(scenario: &str, tried: &str, held: &str) {
    let line = format!("{scenario}\t{tried}\t{held}");
    println!("FIGURE\t{line}");
    if let Ok(path) = std::env::var("KEEP_RSYNC_FIGURES") {
        use std::io::Write as _;
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            let _ = writeln!(f, "{line}");
        }
    }
}

/// The order in which Go's `RootSorter` (and keep-balance) rank keep services for a
/// block (§4.1): heaviest `md5(hash + uuid[12:])` first, the whole UUID weighing when
/// it is not 27 characters. Written here from the spec, not taken from keep-client, so
/// that the cluster that tests the client cannot share its bugs.
pub(crate) fn probe_order(hash: &BlockHash, uuids: &[&str]) -> Vec<usize> {
    use md5::Digest as _;
    let hex = hash.to_hex();
    let mut w: Vec<([u8; 16], usize)> = uuids
        .iter()
        .enumerate()
        .map(|(i, u)| {
            let part = if u.len() == 27 { &u[12..] } else { u };
            (md5::Md5::digest(format!("{hex}{part}")).into(), i)
        })
        .collect();
    w.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    w.into_iter().map(|(_, i)| i).collect()
}

/// The blocks stored on one volume, with sizes.
async fn volume_blocks(v: &Volume) -> Vec<(BlockHash, u64)> {
    let mut out = Vec::new();
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
    out
}

/// `dir` (created if needed), or a new temporary directory that lives as long as
/// the returned guard.
pub(crate) fn dir_or_temp(
    dir: Option<&Path>,
) -> anyhow::Result<(PathBuf, Option<tempfile::TempDir>)> {
    match dir {
        Some(d) => {
            std::fs::create_dir_all(d)?;
            Ok((d.to_owned(), None))
        }
        None => {
            let t = tempfile::tempdir()?;
            Ok((t.path().to_owned(), Some(t)))
        }
    }
}

/// A cluster ID is 5 lowercase alphanumerics.
pub(crate) fn check_cluster_id(id: &str) -> anyhow::Result<()> {
    anyhow::ensure!(
        id.len() == 5
            && id
                .bytes()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit()),
        "cluster id must be 5 lowercase alphanumerics"
    );
    Ok(())
}

/// The default `BlobSigningTTL`: 336h (§3.1).
pub const DEFAULT_TTL: Duration = Duration::from_secs(1_209_600);

pub(crate) fn random_alnum(n: usize) -> String {
    use rand::Rng;
    const A: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    (0..n)
        .map(|_| A[rng.random_range(0..A.len())] as char)
        .collect()
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
        check_cluster_id(&b.cluster_id)?;
        anyhow::ensure!(b.keepstores >= 1, "need at least one keepstore");
        anyhow::ensure!(
            matches!(b.arvados_version, 2 | 3),
            "arvados_version must be 2 or 3"
        );
        let (dir, tmp) = dir_or_temp(b.dir.as_deref())?;
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
            management_token: b
                .management_token
                .clone()
                .unwrap_or_else(|| random_alnum(40)),
            user_tokens,
            signing_key: SigningKey::new(&key),
            signing_key_str: key,
            ttl: b.ttl,
            blob_signing: b.blob_signing,
            arvados_version: b.arvados_version,
            legacy_signatures: b.legacy_signatures,
            index_mtime_seconds: b.index_mtime_seconds,
            replication: b.replication,
            storage_classes: if b.storage_classes.is_empty() {
                vec![("default".to_owned(), true, 0)]
            } else {
                b.storage_classes.clone()
            },
        });
        let log_path = b
            .request_log_file
            .unwrap_or(b.dir.is_some())
            .then(|| dir.join("requests.jsonl"));
        let log = Arc::new(reqlog::RequestLog::new(log_path.as_deref())?);

        // Keepstores: bind first, then serve (style.md B4).
        // Volumes first, so that a shared one can be given to its second keepstore.
        let mut volumes: Vec<Vec<Arc<Volume>>> = Vec::new();
        for k in 0..b.keepstores {
            let mut vols = Vec::new();
            for v in 0..b.volumes_per_keepstore {
                let vuuid = format!("{id}-nyw5e-{:015}", k * 1000 + v);
                let kind = if memory {
                    Kind::Memory(Default::default())
                } else {
                    Kind::Dir(dir.join(format!("keep{k}")).join(format!("vol{v}")))
                };
                let mut vol = Volume::new(
                    vuuid,
                    kind,
                    b.read_only.contains(&(k, v)),
                    b.full.contains(&(k, v)),
                )?;
                if let Some((_, n)) = b.volume_replication.iter().find(|(kv, _)| *kv == (k, v)) {
                    vol.replication = u64::from(*n);
                }
                if let Some((_, c)) = b.volume_classes.iter().find(|(kv, _)| *kv == (k, v)) {
                    vol.classes = c.clone();
                }
                vols.push(Arc::new(vol));
            }
            if k < b.synthetic_keepstores {
                if let Some((n, seed)) = b.synthetic {
                    let vuuid = format!("{id}-nyw5e-{:015}", k * 1000 + 999);
                    let kind = Kind::Synthetic(volume::Synthetic::new(n, seed));
                    vols.push(Arc::new(Volume::new(vuuid, kind, true, false)?));
                }
            }
            volumes.push(vols);
        }
        // Shared volumes (`AccessViaHosts`): the same volume (UUID, device, blocks) on a
        // second keepstore.
        for &((k, v), also) in &b.shared {
            let vol = volumes
                .get(k)
                .and_then(|vols| vols.get(v))
                .cloned()
                .with_context(|| format!("shared_volume: no volume {v} on keepstore {k}"))?;
            volumes
                .get_mut(also)
                .with_context(|| format!("shared_volume: no keepstore {also}"))?
                .push(vol);
        }

        let mut keepstores = Vec::new();
        let mut listeners = Vec::new();
        let mut entries = Vec::new();
        for (k, mut vols) in volumes.into_iter().enumerate() {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
            let port = listener.local_addr()?.port();
            let uuid = if b.config_derived_uuids {
                upstream::config_derived_uuid(&id, &format!("http://127.0.0.1:{port}/"))
            } else {
                format!("{id}-bi6l4-{k:015}")
            };
            vols.sort_by(|a, b| a.uuid.cmp(&b.uuid));
            let faults = Arc::new(faults::Faults::new(seed_for(fault_seed, &uuid)));
            let ks = Arc::new(Keepstore {
                uuid: uuid.clone(),
                volumes: vols,
                cfg: Arc::clone(&cfg),
                faults: Arc::clone(&faults),
            });
            let (svc, l) = Service::from_listener(
                listener,
                uuid.clone(),
                None,
                keepstore::handler(Arc::clone(&ks)),
                faults,
                Arc::clone(&log),
                true,
            )?;
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
        let ctrl = Arc::new(Controller {
            cfg: Arc::clone(&cfg),
            api_host: api_host.clone(),
            services: entries,
            collections: collections::Store::new(controller::collections_policy(&cfg)),
        });
        let faults = Arc::new(faults::Faults::new(seed_for(fault_seed, "controller")));
        let (controller, cl) = Service::from_listener(
            api_listener,
            "controller".into(),
            Some(tls),
            controller::handler(ctrl),
            faults,
            Arc::clone(&log),
            true,
        )?;
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
        // The file holds the SystemRootToken (and maybe the signing key): private,
        // as keep-rsync expects (it warns about settings readable by others).
        use std::io::Write as _;
        use std::os::unix::fs::OpenOptionsExt as _;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(path)
            .with_context(|| format!("writing {}", path.display()))?;
        f.write_all(s.as_bytes())
            .with_context(|| format!("writing {}", path.display()))
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
        ks.write_block(&hash, Bytes::copy_from_slice(data), &[])
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
        let order = probe_order(&BlockHash::of(data), &uuids);
        for &i in order.iter().take(replicas) {
            self.put_block_on(i, data).await?;
        }
        Ok(Locator::of(data))
    }

    /// The blocks on keepstore `i` (every volume, shared ones too; duplicates kept),
    /// with sizes.
    pub async fn blocks_on(&self, i: usize) -> Vec<(BlockHash, u64)> {
        let Ok(ks) = self.keepstore(i) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for v in &ks.volumes {
            out.extend(volume_blocks(v).await);
        }
        out
    }

    /// Every block and the volumes (UUIDs, each once however many keepstores mount
    /// it) that hold it: the replicas as keep-balance counts them.
    pub async fn holdings_by_volume(&self) -> std::collections::BTreeMap<BlockHash, Vec<String>> {
        let mut seen = Vec::new();
        let mut m: std::collections::BTreeMap<BlockHash, Vec<String>> = Default::default();
        for (ks, _) in &self.keepstores {
            for v in &ks.volumes {
                if seen.contains(&v.uuid) {
                    continue;
                }
                seen.push(v.uuid.clone());
                for (h, _) in volume_blocks(v).await {
                    m.entry(h).or_default().push(v.uuid.clone());
                }
            }
        }
        m
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

    /// Ages (or rejuvenates) a stored block: sets the mtime that keepstore `i`'s
    /// `/index` and `/mounts/{uuid}/blocks` report for `hash`, on every volume of it
    /// that holds the block (a file's mtime on directory volumes, the stored time on
    /// memory volumes; synthetic volumes cannot). True if any copy was changed.
    pub async fn set_block_mtime(
        &self,
        keepstore: usize,
        hash: &BlockHash,
        mtime: std::time::SystemTime,
    ) -> bool {
        let Ok(ks) = self.keepstore(keepstore) else {
            return false;
        };
        let mut any = false;
        for v in &ks.volumes {
            any |= v.set_mtime(hash, mtime).await;
        }
        any
    }

    /// One request to the controller's collections API as the SystemRootToken, through
    /// the same handler, fault injection and request log as a client's request
    /// (in-process: no TCP or TLS). The JSON answer, or an error with the status and
    /// body.
    async fn collections_request(
        &self,
        method: http::Method,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> anyhow::Result<serde_json::Value> {
        use http_body_util::BodyExt as _;
        let bytes = body.map(|b| b.to_string()).unwrap_or_default();
        let req = http::Request::builder()
            .method(method.clone())
            .uri(format!("https://{}{path}", self.api_host()))
            .header(
                http::header::AUTHORIZATION,
                format!("Bearer {}", self.cfg.system_root_token),
            )
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(server::full(bytes))?;
        let resp = self.controller.call(req).await;
        let status = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| anyhow::anyhow!("{method} {path}: reading the answer: {e}"))?
            .to_bytes();
        anyhow::ensure!(
            status.is_success(),
            "{method} {path}: {status}: {}",
            String::from_utf8_lossy(&body)
        );
        serde_json::from_slice(&body).with_context(|| format!("{method} {path}: not JSON"))
    }

    /// Creates a collection through `POST /arvados/v1/collections` with the
    /// SystemRootToken (an admin: signatures in `manifest_text` are not required, as
    /// on a real API server). `attrs` are the collection's attributes (e.g.
    /// `{"name": …, "manifest_text": …}`). Returns the record, its manifest signed for
    /// the SystemRootToken.
    ///
    /// # Errors
    /// The API refused (the error carries its status and JSON), or the controller
    /// could not be reached.
    pub async fn create_collection(
        &self,
        attrs: serde_json::Value,
    ) -> anyhow::Result<serde_json::Value> {
        self.collections_request(
            http::Method::POST,
            "/arvados/v1/collections",
            Some(&json!({ "collection": attrs })),
        )
        .await
    }

    /// Updates a collection through `PUT /arvados/v1/collections/{uuid}` (a changed
    /// manifest, name or properties saves the previous state as a past version).
    ///
    /// # Errors
    /// As [`TestCluster::create_collection`].
    pub async fn update_collection(
        &self,
        uuid: &str,
        attrs: serde_json::Value,
    ) -> anyhow::Result<serde_json::Value> {
        self.collections_request(
            http::Method::PUT,
            &format!("/arvados/v1/collections/{uuid}"),
            Some(&json!({ "collection": attrs })),
        )
        .await
    }

    /// Trashes a collection through `POST /arvados/v1/collections/{uuid}/trash`.
    ///
    /// # Errors
    /// As [`TestCluster::create_collection`].
    pub async fn trash_collection(&self, uuid: &str) -> anyhow::Result<serde_json::Value> {
        self.collections_request(
            http::Method::POST,
            &format!("/arvados/v1/collections/{uuid}/trash"),
            None,
        )
        .await
    }

    /// Reads a collection through `GET /arvados/v1/collections/{uuid}`
    /// (`include_trash=true`).
    ///
    /// # Errors
    /// As [`TestCluster::create_collection`].
    pub async fn get_collection(&self, uuid: &str) -> anyhow::Result<serde_json::Value> {
        self.collections_request(
            http::Method::GET,
            &format!("/arvados/v1/collections/{uuid}?include_trash=true"),
            None,
        )
        .await
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
