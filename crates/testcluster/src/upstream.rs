//! Real Arvados keepstores, built from the upstream source, as a cluster for tests and
//! benchmarks: the judges of fidelity that keep-testcluster (which we wrote ourselves)
//! cannot be.
//!
//! [`Upstream::find`] locates the binaries (`KEEP_UPSTREAM_ARVADOS=DIR`, else
//! `../shared/upstream-arvados` beside the repository). [`Upstream::cluster`] starts
//! N keepstores of one cluster on `127.0.0.1`, each a process of its own with its own
//! config file, random secrets and Directory volumes (volume `Replication`,
//! `StorageClasses`, a volume shared by two keepstores through `AccessViaHosts`), as
//! `shared/upstream-arvados/README.md` describes. There is no API server: clients get
//! the services from [`RealCluster::services_json`] (a KeepServiceList we write, with
//! 27-character UUIDs or the 28-character ones Rails derives from config-only clusters,
//! §7.3) and the settings from [`RealCluster::write_settings_file`].
//!
//! Every process is stopped by PID when the [`RealCluster`] is dropped; a watchdog
//! process also stops them if the test process dies without unwinding (SIGKILL).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context as _, bail};
use keep_client::BlockHash;
use md5::{Digest, Md5};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::{KeepstoreInfo, random_alnum};

/// The environment variable naming the directory of the upstream binaries.
pub const UPSTREAM_ENV: &str = "KEEP_UPSTREAM_ARVADOS";

/// An Arvados release whose keepstore is in the upstream directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// Arvados 3.2.1 (the current line).
    V3_2_1,
    /// Arvados 2.7.4 (the last 2.x release).
    V2_7_4,
}

impl Version {
    /// The directory name: `3.2.1` or `2.7.4`.
    pub fn as_str(self) -> &'static str {
        match self {
            Version::V3_2_1 => "3.2.1",
            Version::V2_7_4 => "2.7.4",
        }
    }

    /// Parses `3.2.1`, `3`, `2.7.4` or `2`.
    ///
    /// # Errors
    /// Any other text.
    pub fn parse(s: &str) -> anyhow::Result<Version> {
        match s {
            "3.2.1" | "3" => Ok(Version::V3_2_1),
            "2.7.4" | "2" => Ok(Version::V2_7_4),
            _ => bail!("unknown upstream version {s:?}: use 3.2.1 or 2.7.4"),
        }
    }
}

/// The directory of upstream binaries (`3.2.1/arvados-server`, `3.2.1/keep-rsync-go`,
/// `2.7.4/arvados-server`).
#[derive(Debug, Clone)]
pub struct Upstream {
    root: PathBuf,
}

impl Upstream {
    /// Where the binaries are: `$KEEP_UPSTREAM_ARVADOS`, else `../shared/upstream-arvados`
    /// beside this repository (or beside the current directory).
    ///
    /// # Errors
    /// Where it looked and what was missing, in one line.
    pub fn locate() -> Result<Upstream, String> {
        let candidates: Vec<PathBuf> = match std::env::var_os(UPSTREAM_ENV) {
            Some(d) => vec![PathBuf::from(d)],
            None => {
                // crates/testcluster -> the repository root -> its parent.
                let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
                vec![
                    repo.join("../shared/upstream-arvados"),
                    PathBuf::from("../shared/upstream-arvados"),
                ]
            }
        };
        let mut problems = Vec::new();
        for root in &candidates {
            let up = Upstream { root: root.clone() };
            let missing: Vec<String> = [
                up.arvados_server(Version::V3_2_1),
                up.arvados_server(Version::V2_7_4),
                up.keep_rsync_go(),
            ]
            .into_iter()
            .filter(|p| !is_executable(p))
            .map(|p| p.display().to_string())
            .collect();
            if missing.is_empty() {
                return Ok(Upstream {
                    root: root.canonicalize().unwrap_or_else(|_| root.clone()),
                });
            }
            problems.push(format!(
                "{} (missing {})",
                root.display(),
                missing.join(", ")
            ));
        }
        Err(format!(
            "the upstream Arvados binaries were not found: looked in {}; set {UPSTREAM_ENV}=DIR",
            problems.join("; ")
        ))
    }

    /// [`Upstream::locate`], or `None`.
    pub fn find() -> Option<Upstream> {
        Upstream::locate().ok()
    }

    /// [`Upstream::locate`] for a test that needs the binaries: panics with the reason
    /// when they are missing (such tests are `#[ignore]`d, and `scripts/test` runs them
    /// only when the binaries are there, so a panic here is a broken setup).
    pub fn require() -> Upstream {
        Upstream::locate().unwrap_or_else(|e| panic!("{e}"))
    }

    /// The directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `<root>/<version>/arvados-server` (runs `keepstore` as a subcommand).
    pub fn arvados_server(&self, v: Version) -> PathBuf {
        self.root.join(v.as_str()).join("arvados-server")
    }

    /// The original Go keep-rsync (3.2.1).
    pub fn keep_rsync_go(&self) -> PathBuf {
        self.root.join("3.2.1").join("keep-rsync-go")
    }

    /// A builder for a cluster of real keepstores of `version`.
    pub fn cluster(&self, version: Version) -> RealClusterBuilder {
        RealClusterBuilder {
            upstream: self.clone(),
            version,
            cluster_id: "zzzzz".into(),
            keepstores: 3,
            volumes: None,
            classes: Vec::new(),
            default_replication: 2,
            ttl: crate::DEFAULT_TTL,
            uuids: UuidStyle::Standard,
            blob_signing: true,
            dir: None,
        }
    }
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    p.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// One Directory volume of a [`RealCluster`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeSpec {
    /// The keepstores (indexes) that mount it; two or more share it (`AccessViaHosts`).
    pub keepstores: Vec<usize>,
    /// `Replication` (default 1; more models a bucket that keeps its own copies).
    pub replication: u32,
    /// `StorageClasses` (default none: the volume is in class `default`).
    pub classes: Vec<String>,
    /// `ReadOnly`.
    pub read_only: bool,
}

impl VolumeSpec {
    /// A volume of keepstore `k`, replication 1, class `default`.
    pub fn on(k: usize) -> VolumeSpec {
        VolumeSpec {
            keepstores: vec![k],
            replication: 1,
            classes: Vec::new(),
            read_only: false,
        }
    }

    /// Also mounted by keepstore `k`.
    pub fn shared_with(mut self, k: usize) -> VolumeSpec {
        self.keepstores.push(k);
        self
    }

    /// With `Replication: n`.
    pub fn replication(mut self, n: u32) -> VolumeSpec {
        self.replication = n;
        self
    }

    /// In these storage classes.
    pub fn classes(mut self, classes: &[&str]) -> VolumeSpec {
        self.classes = classes.iter().map(|c| (*c).to_owned()).collect();
        self
    }

    /// Read-only.
    pub fn read_only(mut self) -> VolumeSpec {
        self.read_only = true;
        self
    }
}

/// A storage class of the cluster config (`Clusters.<id>.StorageClasses`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClassSpec {
    /// Its name.
    pub name: String,
    /// `Default`: clients write to it when they ask for no class.
    pub default: bool,
    /// `Priority`: keepstore tries mounts of higher priority first (§4.2).
    pub priority: i32,
}

/// Which service UUIDs the KeepServiceList publishes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UuidStyle {
    /// `<cluster>-bi6l4-<15 digits>`: 27 characters, as `keep_services` rows have.
    Standard,
    /// `<cluster>-bi6l4-<md5(url)[0..16]>`: the 28 characters Rails derives for a
    /// cluster without `keep_services` rows (§7.3), the default since Arvados 2.0.
    ConfigDerived,
    /// These exact UUIDs, one per keepstore (e.g. another cluster's, for the placement
    /// oracle: two destinations that publish the same UUIDs).
    Given(Vec<String>),
}

/// The Rails UUID of a config-only keep service (§7.3): `hexdigest[0..15]` is an
/// inclusive range, so 16 hex digits of `md5(url)` with its trailing slash.
pub fn config_derived_uuid(cluster_id: &str, url_with_slash: &str) -> String {
    let d = hex::encode(Md5::digest(url_with_slash.as_bytes()));
    format!("{cluster_id}-bi6l4-{}", &d[..16])
}

/// Builds a [`RealCluster`]; every setter names its default.
#[derive(Debug, Clone)]
pub struct RealClusterBuilder {
    upstream: Upstream,
    version: Version,
    cluster_id: String,
    keepstores: usize,
    volumes: Option<Vec<VolumeSpec>>,
    classes: Vec<ClassSpec>,
    default_replication: u32,
    ttl: Duration,
    uuids: UuidStyle,
    blob_signing: bool,
    dir: Option<PathBuf>,
}

impl RealClusterBuilder {
    /// Five-character cluster ID. Default `zzzzz`.
    pub fn cluster_id(mut self, id: &str) -> Self {
        self.cluster_id = id.to_owned();
        self
    }

    /// Number of keepstore processes. Default 3.
    pub fn keepstores(mut self, n: usize) -> Self {
        self.keepstores = n;
        self
    }

    /// The volumes. Default: one per keepstore, replication 1, class `default`.
    pub fn volumes(mut self, v: Vec<VolumeSpec>) -> Self {
        self.volumes = Some(v);
        self
    }

    /// Declares a storage class. Default: none (the loader injects `default`).
    pub fn storage_class(mut self, name: &str, default: bool, priority: i32) -> Self {
        self.classes.push(ClassSpec {
            name: name.to_owned(),
            default,
            priority,
        });
        self
    }

    /// `Collections.DefaultReplication`. Default 2. (Only clients that are told it use
    /// it: there is no discovery document without an API server.)
    pub fn default_replication(mut self, n: u32) -> Self {
        self.default_replication = n;
        self
    }

    /// `Collections.BlobSigningTTL`. Default 336h.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// Which UUIDs the KeepServiceList publishes. Default [`UuidStyle::Standard`].
    pub fn uuids(mut self, style: UuidStyle) -> Self {
        self.uuids = style;
        self
    }

    /// `Collections.BlobSigning`. Default on.
    pub fn blob_signing(mut self, on: bool) -> Self {
        self.blob_signing = on;
        self
    }

    /// Directory for the config, logs and volumes. Default: a temporary directory,
    /// removed on drop.
    pub fn dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.dir = Some(dir.into());
        self
    }

    /// Starts every keepstore and waits until each answers `/_health/ping`.
    ///
    /// # Errors
    /// Bad settings, or a keepstore that does not come up (its log is quoted).
    pub async fn start(self) -> anyhow::Result<RealCluster> {
        anyhow::ensure!(self.keepstores >= 1, "need at least one keepstore");
        crate::check_cluster_id(&self.cluster_id)?;
        let volumes = self
            .volumes
            .clone()
            .unwrap_or_else(|| (0..self.keepstores).map(VolumeSpec::on).collect());
        for v in &volumes {
            anyhow::ensure!(
                !v.keepstores.is_empty() && v.keepstores.iter().all(|&k| k < self.keepstores),
                "volume {v:?} names a keepstore that does not exist"
            );
        }
        if let UuidStyle::Given(u) = &self.uuids {
            anyhow::ensure!(u.len() == self.keepstores, "one UUID per keepstore");
        }
        let (dir, tmp) = crate::dir_or_temp(self.dir.as_deref())?;
        // A port can be taken between choosing it and the keepstore binding it; then
        // start again with new ports.
        let mut last_err = None;
        for _ in 0..3 {
            match self.try_start(&dir, &volumes).await {
                Ok(mut c) => {
                    c._tmp = tmp;
                    return Ok(c);
                }
                Err(e) => last_err = Some(e),
            }
        }
        Err(last_err.expect("three attempts"))
    }

    async fn try_start(&self, dir: &Path, specs: &[VolumeSpec]) -> anyhow::Result<RealCluster> {
        let id = &self.cluster_id;
        let ports = free_ports(self.keepstores)?;
        let urls: Vec<String> = ports
            .iter()
            .map(|p| format!("http://127.0.0.1:{p}/"))
            .collect();
        let uuids: Vec<String> = match &self.uuids {
            UuidStyle::Standard => (0..self.keepstores)
                .map(|k| format!("{id}-bi6l4-{k:015}"))
                .collect(),
            UuidStyle::ConfigDerived => urls.iter().map(|u| config_derived_uuid(id, u)).collect(),
            UuidStyle::Given(u) => u.clone(),
        };
        let secrets = Secrets {
            root_token: random_alnum(50),
            management_token: random_alnum(40),
            signing_key: random_alnum(64),
        };
        let mut volumes = Vec::new();
        for (i, spec) in specs.iter().enumerate() {
            let uuid = format!("{id}-nyw5e-{i:015}");
            let root = dir.join(format!("vol{i}"));
            std::fs::create_dir_all(&root)?;
            volumes.push(RealVolume {
                uuid,
                root,
                spec: spec.clone(),
            });
        }
        let config = self.config_yaml(&secrets, &urls, &volumes);
        let config_path = dir.join("config.yml");
        std::fs::write(&config_path, config)?;

        let server = self.upstream.arvados_server(self.version);
        let mut keepstores = Vec::new();
        let mut children = Children(Vec::new());
        for (k, url) in urls.iter().enumerate() {
            let log_path = dir.join(format!("keepstore{k}.log"));
            let log = std::fs::File::create(&log_path)?;
            let child = Command::new(&server)
                .arg("keepstore")
                .arg("-config")
                .arg(&config_path)
                .env("ARVADOS_SERVICE_INTERNAL_URL", url)
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                .spawn()
                .with_context(|| format!("starting {}", server.display()))?;
            children.0.push(child);
            keepstores.push(RealKeepstore {
                uuid: uuids[k].clone(),
                url: url.trim_end_matches('/').to_owned(),
                port: ports[k],
                log_path,
            });
        }
        let pids: Vec<u32> = children.0.iter().map(Child::id).collect();
        let watchdog = spawn_watchdog(&pids).ok();
        let deadline = Instant::now() + Duration::from_secs(20);
        for (k, ks) in keepstores.iter().enumerate() {
            loop {
                let ping = http_request(
                    ks.port,
                    "GET",
                    "/_health/ping",
                    &[(
                        "Authorization",
                        &format!("Bearer {}", secrets.management_token),
                    )],
                    &[],
                )
                .await;
                if matches!(ping, Ok(ref r) if r.status == 200) {
                    break;
                }
                if let Ok(Some(status)) = children.0[k].try_wait() {
                    bail!(
                        "keepstore {k} ({} {}) exited with {status}: {}",
                        self.version.as_str(),
                        ks.url,
                        log_tail(&ks.log_path)
                    );
                }
                if Instant::now() > deadline {
                    bail!(
                        "keepstore {k} ({}) is not healthy after 20 s: {}",
                        ks.url,
                        log_tail(&ks.log_path)
                    );
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        Ok(RealCluster {
            version: self.version,
            cluster_id: id.clone(),
            dir: dir.to_owned(),
            config_path,
            keepstores,
            volumes,
            secrets,
            ttl: self.ttl,
            default_replication: self.default_replication,
            children,
            watchdog,
            _tmp: None,
        })
    }

    /// The cluster config file (`shared/upstream-arvados/README.md`).
    fn config_yaml(&self, s: &Secrets, urls: &[String], volumes: &[RealVolume]) -> String {
        let ttl = self.ttl.as_secs();
        let mut y = String::new();
        let _ = writeln!(y, "Clusters:\n  {}:", self.cluster_id);
        let _ = writeln!(y, "    SystemRootToken: {}", s.root_token);
        let _ = writeln!(y, "    ManagementToken: {}", s.management_token);
        // 16 buffers of 64 MiB instead of 128: tests start many keepstores at once.
        let _ = writeln!(y, "    API:\n      MaxKeepBlobBuffers: 16");
        let _ = writeln!(y, "    Containers:\n      LocalKeepBlobBuffersPerVCPU: 0");
        let _ = writeln!(y, "    Collections:");
        let _ = writeln!(y, "      BlobSigning: {}", self.blob_signing);
        let _ = writeln!(y, "      BlobSigningKey: {}", s.signing_key);
        let _ = writeln!(y, "      BlobSigningTTL: {ttl}s");
        let _ = writeln!(y, "      DefaultReplication: {}", self.default_replication);
        let _ = writeln!(y, "    Services:\n      Controller:");
        // Nothing listens here: plain Keep traffic needs no API server.
        let _ = writeln!(y, "        ExternalURL: https://127.0.0.1:1/");
        let _ = writeln!(
            y,
            "        InternalURLs: {{\"https://127.0.0.1:1/\": {{}}}}"
        );
        let _ = writeln!(y, "      Keepstore:\n        InternalURLs:");
        for u in urls {
            let _ = writeln!(y, "          \"{u}\": {{}}");
        }
        if !self.classes.is_empty() {
            let _ = writeln!(y, "    StorageClasses:");
            for c in &self.classes {
                let _ = writeln!(
                    y,
                    "      {}: {{Default: {}, Priority: {}}}",
                    c.name, c.default, c.priority
                );
            }
        }
        let _ = writeln!(y, "    Volumes:");
        for v in volumes {
            let hosts: Vec<String> = v
                .spec
                .keepstores
                .iter()
                .map(|&k| format!("\"{}\": {{}}", urls[k]))
                .collect();
            let _ = writeln!(y, "      {}:", v.uuid);
            let _ = writeln!(y, "        AccessViaHosts: {{{}}}", hosts.join(", "));
            let _ = writeln!(y, "        Driver: Directory");
            let _ = writeln!(
                y,
                "        DriverParameters: {{Root: {}}}",
                v.root.display()
            );
            let _ = writeln!(y, "        Replication: {}", v.spec.replication);
            let _ = writeln!(y, "        ReadOnly: {}", v.spec.read_only);
            // With classes declared, keepstore wants every volume to name its own.
            let classes: Vec<String> = if v.spec.classes.is_empty() && !self.classes.is_empty() {
                vec!["default: true".to_owned()]
            } else {
                v.spec
                    .classes
                    .iter()
                    .map(|c| format!("{c}: true"))
                    .collect()
            };
            if !classes.is_empty() {
                let _ = writeln!(y, "        StorageClasses: {{{}}}", classes.join(", "));
            }
        }
        y
    }
}

struct Secrets {
    root_token: String,
    management_token: String,
    signing_key: String,
}

/// Child processes, killed and reaped on drop.
struct Children(Vec<Child>);

impl Drop for Children {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
        }
        for c in &mut self.0 {
            let _ = c.wait();
        }
    }
}

/// A process that kills `pids` once this (the test) process is gone, even by SIGKILL.
fn spawn_watchdog(pids: &[u32]) -> std::io::Result<Child> {
    let me = std::process::id();
    let list: Vec<String> = pids.iter().map(u32::to_string).collect();
    let script = format!(
        "while kill -0 {me} 2>/dev/null; do sleep 1; done; kill {} 2>/dev/null",
        list.join(" ")
    );
    Command::new("sh")
        .arg("-c")
        .arg(script)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
}

fn free_ports(n: usize) -> anyhow::Result<Vec<u16>> {
    // Held together so the OS gives n different ports, then released for the keepstores.
    let listeners: Vec<std::net::TcpListener> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<_, _>>()?;
    Ok(listeners
        .iter()
        .map(|l| l.local_addr().map(|a| a.port()))
        .collect::<Result<_, _>>()?)
}

fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(5)..].join(" | ")
}

/// One keepstore process of a [`RealCluster`].
#[derive(Debug, Clone)]
pub struct RealKeepstore {
    /// The UUID the KeepServiceList publishes for it.
    pub uuid: String,
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    /// The port.
    pub port: u16,
    /// Its log (JSON lines; one `request` and one `response` record per request).
    pub log_path: PathBuf,
}

/// One volume of a [`RealCluster`].
#[derive(Debug, Clone)]
pub struct RealVolume {
    /// The volume (mount) UUID.
    pub uuid: String,
    /// The Directory volume's root.
    pub root: PathBuf,
    /// What it was built from.
    pub spec: VolumeSpec,
}

/// A request as a real keepstore logged it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoggedRequest {
    /// HTTP method.
    pub method: String,
    /// Path, with a leading `/`.
    pub path: String,
    /// Response status.
    pub status: u16,
}

/// An HTTP answer from [`http_request`].
#[derive(Debug, Clone)]
pub struct HttpAnswer {
    /// Status code.
    pub status: u16,
    /// Headers, names lowercased, in order.
    pub headers: Vec<(String, String)>,
    /// The body (everything up to Content-Length, or to the close).
    pub body: Vec<u8>,
}

impl HttpAnswer {
    /// The first header named `name` (lowercase).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// One HTTP/1.1 request to `127.0.0.1:port` on a fresh connection (`Connection:
/// close`), read to the end. Enough for test set-up, and independent of the client
/// library under test.
///
/// # Errors
/// Connection or protocol errors.
pub async fn http_request(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<HttpAnswer> {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).await?;
    s.write_all(body).await?;
    let mut raw = Vec::new();
    // A server that closes mid-body (a corrupt block on a real 3.x keepstore) ends the
    // read with an error after some bytes: keep what arrived.
    let _ = s.read_to_end(&mut raw).await;
    let bad = |m: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, m.to_owned());
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| bad("no end of headers"))?;
    let text = String::from_utf8_lossy(&raw[..end]).into_owned();
    let mut lines = text.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| bad("no status line"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let mut body = raw[end + 4..].to_vec();
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"));
    if chunked {
        body = dechunk(&body);
    }
    Ok(HttpAnswer {
        status,
        headers,
        body,
    })
}

/// The data of a chunked body (as much as arrived whole; the terminating zero chunk
/// is not required, so a body cut short keeps what came).
fn dechunk(mut raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = raw.windows(2).position(|w| w == b"\r\n") {
        let size_text = String::from_utf8_lossy(&raw[..eol]);
        let size_hex = size_text.split(';').next().unwrap_or("").trim();
        let Ok(size) = usize::from_str_radix(size_hex, 16) else {
            break;
        };
        let start = eol + 2;
        if size == 0 || raw.len() < start + size {
            out.extend_from_slice(&raw[start.min(raw.len())..(start + size).min(raw.len())]);
            break;
        }
        out.extend_from_slice(&raw[start..start + size]);
        raw = &raw[(start + size + 2).min(raw.len())..];
    }
    out
}

/// A running cluster of real keepstores. Dropping it stops every process.
pub struct RealCluster {
    version: Version,
    cluster_id: String,
    dir: PathBuf,
    config_path: PathBuf,
    keepstores: Vec<RealKeepstore>,
    volumes: Vec<RealVolume>,
    secrets: Secrets,
    ttl: Duration,
    default_replication: u32,
    children: Children,
    watchdog: Option<Child>,
    _tmp: Option<tempfile::TempDir>,
}

impl std::fmt::Debug for RealCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RealCluster")
            .field("version", &self.version)
            .field("cluster_id", &self.cluster_id)
            .field("keepstores", &self.keepstores)
            .finish_non_exhaustive()
    }
}

impl Drop for RealCluster {
    fn drop(&mut self) {
        // Children's own drop kills and reaps the keepstores; then the watchdog.
        for c in &mut self.children.0 {
            let _ = c.kill();
        }
        if let Some(w) = &mut self.watchdog {
            let _ = w.kill();
            let _ = w.wait();
        }
    }
}

impl RealCluster {
    /// The release running.
    pub fn version(&self) -> Version {
        self.version
    }

    /// The cluster ID.
    pub fn cluster_id(&self) -> &str {
        &self.cluster_id
    }

    /// The directory of config, logs and volumes.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The cluster config file every keepstore reads.
    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// The SystemRootToken.
    pub fn system_root_token(&self) -> &str {
        &self.secrets.root_token
    }

    /// The ManagementToken.
    pub fn management_token(&self) -> &str {
        &self.secrets.management_token
    }

    /// The blob signing key.
    pub fn signing_key(&self) -> &str {
        &self.secrets.signing_key
    }

    /// `BlobSigningTTL`.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// `Collections.DefaultReplication`.
    pub fn default_replication(&self) -> u32 {
        self.default_replication
    }

    /// The keepstore processes, in order.
    pub fn real_keepstores(&self) -> &[RealKeepstore] {
        &self.keepstores
    }

    /// The volumes, in order.
    pub fn volumes(&self) -> &[RealVolume] {
        &self.volumes
    }

    /// The keepstores as [`KeepstoreInfo`] (published UUID, URL, volume UUIDs).
    pub fn keepstores(&self) -> Vec<KeepstoreInfo> {
        self.keepstores
            .iter()
            .enumerate()
            .map(|(k, ks)| KeepstoreInfo {
                uuid: ks.uuid.clone(),
                url: ks.url.clone(),
                volumes: self
                    .volumes
                    .iter()
                    .filter(|v| v.spec.keepstores.contains(&k))
                    .map(|v| v.uuid.clone())
                    .collect(),
            })
            .collect()
    }

    /// A KeepServiceList of the keepstores (for `-src-keep-services-json`).
    pub fn services_json(&self) -> String {
        let uuids: Vec<&str> = self.keepstores.iter().map(|k| k.uuid.as_str()).collect();
        self.services_json_with_uuids(&uuids)
    }

    /// A KeepServiceList of the keepstores, publishing `uuids` (one per keepstore).
    pub fn services_json_with_uuids(&self, uuids: &[&str]) -> String {
        let items: Vec<serde_json::Value> = self
            .keepstores
            .iter()
            .zip(uuids)
            .map(|(ks, uuid)| {
                serde_json::json!({
                    "kind": "arvados#keepService", "uuid": uuid,
                    "service_host": "127.0.0.1", "service_port": ks.port,
                    "service_ssl_flag": false, "service_type": "disk", "read_only": false,
                })
            })
            .collect();
        let n = items.len();
        serde_json::json!({"kind": "arvados#keepServiceList", "items": items, "items_available": n})
            .to_string()
    }

    /// Writes a settings file (§9.2) for keep-rsync and the Go tool: the
    /// SystemRootToken, the signing key if asked, and an API host where nothing
    /// listens (`127.0.0.1:1`; the services come from [`RealCluster::services_json`]).
    ///
    /// # Errors
    /// The file cannot be written.
    pub fn write_settings_file(&self, path: &Path, with_key: bool) -> anyhow::Result<()> {
        let mut s = format!(
            "ARVADOS_API_HOST=127.0.0.1:1\nARVADOS_API_TOKEN={}\nARVADOS_API_HOST_INSECURE=true\n",
            self.secrets.root_token
        );
        if with_key {
            s.push_str(&format!(
                "ARVADOS_BLOB_SIGNING_KEY={}\n",
                self.secrets.signing_key
            ));
        }
        use std::os::unix::fs::OpenOptionsExt as _;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(path)
            .with_context(|| format!("writing {}", path.display()))?;
        f.write_all(s.as_bytes())?;
        Ok(())
    }

    /// Writes `data` to keepstore `k` with a real PUT; returns the answer.
    ///
    /// # Errors
    /// Connection errors.
    pub async fn put(&self, k: usize, data: &[u8]) -> anyhow::Result<HttpAnswer> {
        let hash = BlockHash::of(data).to_hex();
        let auth = format!("Bearer {}", self.secrets.root_token);
        Ok(http_request(
            self.keepstores[k].port,
            "PUT",
            &format!("/{hash}"),
            &[("Authorization", &auth)],
            data,
        )
        .await?)
    }

    /// Stores `data` directly on volume `v`'s disk, as the Directory driver lays it out
    /// (`<root>/<3 hex>/<32 hex>`, §11), with mtime `mtime` (default now). Fast seeding
    /// of many blocks, and of blocks with a chosen age.
    ///
    /// # Errors
    /// I/O errors.
    pub fn write_on_volume(
        &self,
        v: usize,
        data: &[u8],
        mtime: Option<SystemTime>,
    ) -> anyhow::Result<BlockHash> {
        let hash = BlockHash::of(data);
        let path = self.block_path(v, &hash);
        std::fs::create_dir_all(path.parent().expect("a block path has a parent"))?;
        std::fs::write(&path, data)?;
        if let Some(t) = mtime {
            std::fs::File::options()
                .write(true)
                .open(&path)?
                .set_modified(t)?;
        }
        Ok(hash)
    }

    /// Overwrites the stored copy of `hash` on volume `v` with other bytes of the same
    /// length (a bad disk). True if it was there.
    pub fn corrupt_on_volume(&self, v: usize, hash: &BlockHash) -> bool {
        let path = self.block_path(v, hash);
        let Ok(mut data) = std::fs::read(&path) else {
            return false;
        };
        for b in data.iter_mut().step_by(97) {
            *b ^= 0x5a;
        }
        if data.is_empty() {
            data.push(0);
        }
        std::fs::write(&path, data).is_ok()
    }

    /// Removes the stored copy of `hash` from volume `v`. True if it was there.
    pub fn remove_from_volume(&self, v: usize, hash: &BlockHash) -> bool {
        std::fs::remove_file(self.block_path(v, hash)).is_ok()
    }

    fn block_path(&self, v: usize, hash: &BlockHash) -> PathBuf {
        let h = hash.to_hex();
        self.volumes[v].root.join(&h[..3]).join(h)
    }

    /// The blocks stored on volume `v` (read from disk), with sizes.
    pub fn blocks_on_volume(&self, v: usize) -> Vec<(BlockHash, u64)> {
        let mut out = Vec::new();
        let Ok(dirs) = std::fs::read_dir(&self.volumes[v].root) else {
            return out;
        };
        for d in dirs.flatten() {
            let Ok(files) = std::fs::read_dir(d.path()) else {
                continue;
            };
            for f in files.flatten() {
                let name = f.file_name().to_string_lossy().into_owned();
                if name.len() != 32 {
                    continue; // temp files, trash
                }
                let (Ok(bytes), Ok(md)) = (hex::decode(&name), f.metadata()) else {
                    continue;
                };
                let Ok(h) = <[u8; 16]>::try_from(bytes.as_slice()) else {
                    continue;
                };
                out.push((BlockHash(h), md.len()));
            }
        }
        out
    }

    /// Every block and the volumes (indexes) that hold it.
    pub fn holdings_by_volume(&self) -> BTreeMap<BlockHash, Vec<usize>> {
        let mut m: BTreeMap<BlockHash, Vec<usize>> = BTreeMap::new();
        for v in 0..self.volumes.len() {
            for (h, _) in self.blocks_on_volume(v) {
                m.entry(h).or_default().push(v);
            }
        }
        m
    }

    /// Every block and the keepstores (indexes) that can serve it (a shared volume
    /// counts for each keepstore that mounts it).
    pub fn holdings(&self) -> BTreeMap<BlockHash, Vec<usize>> {
        let mut m: BTreeMap<BlockHash, Vec<usize>> = BTreeMap::new();
        for (h, vols) in self.holdings_by_volume() {
            let e = m.entry(h).or_default();
            for v in vols {
                for &k in &self.volumes[v].spec.keepstores {
                    if !e.contains(&k) {
                        e.push(k);
                    }
                }
            }
            e.sort_unstable();
        }
        m
    }

    /// The requests keepstore `k` has answered so far, from its log.
    pub fn requests(&self, k: usize) -> Vec<LoggedRequest> {
        let text = std::fs::read_to_string(&self.keepstores[k].log_path).unwrap_or_default();
        text.lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["msg"] == "response")
            .map(|v| LoggedRequest {
                method: v["reqMethod"].as_str().unwrap_or_default().to_owned(),
                path: format!("/{}", v["reqPath"].as_str().unwrap_or_default()),
                status: v["respStatusCode"].as_u64().unwrap_or(0) as u16,
            })
            .collect()
    }

    /// The requests of every keepstore, with the keepstore's index.
    pub fn all_requests(&self) -> Vec<(usize, LoggedRequest)> {
        (0..self.keepstores.len())
            .flat_map(|k| self.requests(k).into_iter().map(move |r| (k, r)))
            .collect()
    }

    /// Block PUTs (any status) answered so far, summed over every keepstore.
    pub fn block_puts(&self) -> usize {
        self.all_requests()
            .iter()
            .filter(|(_, r)| r.method == "PUT" && r.path.len() >= 33)
            .count()
    }

    /// A description of the cluster, with its secrets (for `keep-testcluster upstream`).
    pub fn cluster_json(&self) -> serde_json::Value {
        serde_json::json!({
            "cluster_id": self.cluster_id,
            "upstream_version": self.version.as_str(),
            "keepstore_config": self.config_path,
            "system_root_token": self.secrets.root_token,
            "management_token": self.secrets.management_token,
            "signing_key": self.secrets.signing_key,
            "blob_signature_ttl": self.ttl.as_secs(),
            "replication": self.default_replication,
            "keepstores": self.keepstores.iter().zip(&self.children.0).map(|(k, c)| serde_json::json!({
                "uuid": k.uuid, "url": k.url, "pid": c.id(), "log": k.log_path,
            })).collect::<Vec<_>>(),
            "volumes": self.volumes.iter().map(|v| serde_json::json!({
                "uuid": v.uuid, "root": v.root, "keepstores": v.spec.keepstores,
                "replication": v.spec.replication, "classes": v.spec.classes,
                "read_only": v.spec.read_only,
            })).collect::<Vec<_>>(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// §13.3: the URL-derived UUIDs, with Rails' 16 digits.
    #[test]
    fn config_derived_uuids() {
        assert_eq!(
            config_derived_uuid("zzzzz", "http://0.0.0.0:54321/"),
            "zzzzz-bi6l4-dcc72bfb1a36b410"
        );
        assert_eq!(
            config_derived_uuid("zzzzz", "http://keep0.zzzzz.example:25107/"),
            "zzzzz-bi6l4-0b56210446f86547"
        );
    }
}
