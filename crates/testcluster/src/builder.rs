//! [`Builder`]: the settings of a [`TestCluster`], with their defaults.

use std::path::PathBuf;
use std::time::Duration;

use crate::{DEFAULT_TTL, TestCluster};

/// Builds a [`TestCluster`]. Every setter documents its default.
#[derive(Debug, Clone)]
pub struct Builder {
    pub(crate) cluster_id: String,
    pub(crate) keepstores: usize,
    pub(crate) volumes_per_keepstore: usize,
    pub(crate) replication: u64,
    pub(crate) proxy: bool,
    pub(crate) dir: Option<PathBuf>,
    pub(crate) memory: bool,
    pub(crate) arvados_version: u8,
    pub(crate) blob_signing: bool,
    pub(crate) signing_key: Option<String>,
    pub(crate) system_root_token: Option<String>,
    pub(crate) management_token: Option<String>,
    pub(crate) user_tokens: Vec<String>,
    pub(crate) ttl: Duration,
    pub(crate) seed_blocks: Option<(usize, usize)>,
    pub(crate) synthetic: Option<(u64, u64)>,
    pub(crate) synthetic_keepstores: usize,
    pub(crate) read_only: Vec<(usize, usize)>,
    pub(crate) full: Vec<(usize, usize)>,
    pub(crate) read_only_keepstores: Vec<usize>,
    pub(crate) fault_seed: Option<u64>,
    pub(crate) legacy_signatures: bool,
    pub(crate) index_mtime_seconds: bool,
    pub(crate) request_log_file: Option<bool>,
    pub(crate) config_derived_uuids: bool,
    /// (keepstore, volume) -> Replication.
    pub(crate) volume_replication: Vec<((usize, usize), u32)>,
    /// (keepstore, volume) -> storage classes.
    pub(crate) volume_classes: Vec<((usize, usize), Vec<String>)>,
    /// (keepstore, volume) also mounted by keepstore.
    pub(crate) shared: Vec<((usize, usize), usize)>,
    /// Declared storage classes: (name, default, priority).
    pub(crate) storage_classes: Vec<(String, bool, i32)>,
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
            management_token: None,
            user_tokens: Vec::new(),
            ttl: DEFAULT_TTL,
            seed_blocks: None,
            synthetic: None,
            synthetic_keepstores: 1,
            read_only: Vec::new(),
            full: Vec::new(),
            read_only_keepstores: Vec::new(),
            fault_seed: None,
            legacy_signatures: false,
            index_mtime_seconds: false,
            request_log_file: None,
            config_derived_uuids: false,
            volume_replication: Vec::new(),
            volume_classes: Vec::new(),
            shared: Vec::new(),
            storage_classes: Vec::new(),
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
    /// The ManagementToken (`/_health/ping`). Default: 40 random alphanumerics.
    pub fn management_token(mut self, token: impl Into<String>) -> Self {
        self.management_token = Some(token.into());
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
    /// (see [`crate::synthetic_block`]). Default none.
    pub fn synthetic_blocks(mut self, n: u64, seed: u64) -> Self {
        self.synthetic = Some((n, seed));
        self
    }
    /// Puts the synthetic volume (the same blocks, a volume of its own each) on the
    /// first `k` keepstores instead of keepstore 0 only: a destination that already
    /// holds every block `k` times. Default 1.
    pub fn synthetic_keepstores(mut self, k: usize) -> Self {
        self.synthetic_keepstores = k.max(1);
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
    /// Index mtimes in seconds, as before 2016-07 (§5.6, §14). Default off:
    /// nanoseconds, as 3.x and 2.x (checked against 2.7.4) send.
    pub fn index_mtime_seconds(mut self, on: bool) -> Self {
        self.index_mtime_seconds = on;
        self
    }
    /// Append the request log to `DIR/requests.jsonl`. Default: on when
    /// [`Builder::dir`] is set.
    pub fn request_log_file(mut self, on: bool) -> Self {
        self.request_log_file = Some(on);
        self
    }

    /// Publish the 28-character keepstore UUIDs that Rails derives for a cluster
    /// without `keep_services` rows, `<cluster>-bi6l4-<md5(url)[0..16]>` (§7.3; every
    /// config-only cluster since Arvados 2.0), instead of `<cluster>-bi6l4-<k as 15
    /// digits>`. Go and Python order such services differently (§4.1). Default off.
    pub fn config_derived_uuids(mut self, on: bool) -> Self {
        self.config_derived_uuids = on;
        self
    }

    /// Gives volume `volume` of keepstore `keepstore` a `Replication` of `n` (an object
    /// store that keeps its own copies): a block stored there counts `n` times in
    /// `X-Keep-Replicas-Stored` and per class. Default 1.
    pub fn volume_replication(mut self, keepstore: usize, volume: usize, n: u32) -> Self {
        self.volume_replication
            .push(((keepstore, volume), n.max(1)));
        self
    }

    /// Puts volume `volume` of keepstore `keepstore` in these storage classes (declare
    /// them with [`Builder::storage_class`]). Default: class `default`.
    pub fn volume_classes(mut self, keepstore: usize, volume: usize, classes: &[&str]) -> Self {
        self.volume_classes.push((
            (keepstore, volume),
            classes.iter().map(|c| (*c).to_owned()).collect(),
        ));
        self
    }

    /// Lets keepstore `also` mount volume `volume` of keepstore `keepstore` too, as
    /// `AccessViaHosts` does: one volume (same UUID and `device_id` in `/mounts`, same
    /// blocks) listed by both. Default: no sharing.
    pub fn shared_volume(mut self, keepstore: usize, volume: usize, also: usize) -> Self {
        self.shared.push(((keepstore, volume), also));
        self
    }

    /// Declares a storage class in the cluster config (`StorageClasses`, exported by
    /// `/arvados/v1/config`): whether clients use it by default, and its priority
    /// (keepstore tries volumes of higher priority first, §4.2). Default: only
    /// `default` (Default: true, Priority 0).
    pub fn storage_class(mut self, name: &str, default: bool, priority: i32) -> Self {
        self.storage_classes
            .push((name.to_owned(), default, priority));
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
