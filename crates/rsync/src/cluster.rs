//! One side of a migration: its settings, secrets, Keep client and discovery values.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, Result, bail};
use keep_client::{
    ClientOptions, ClusterInfo, ClusterSettings, KeepClient, KeepService, Locator, SignatureFormat,
    SigningKey, Token, services::load_keep_services_json, signing,
};

/// Which side a [`Cluster`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The old cluster, read from.
    Source,
    /// The new cluster, written to.
    Destination,
}

impl Role {
    /// "source" or "destination".
    pub fn name(self) -> &'static str {
        match self {
            Role::Source => "source",
            Role::Destination => "destination",
        }
    }

    /// "src" or "dst", as in the flag names.
    pub fn flag(self) -> &'static str {
        match self {
            Role::Source => "src",
            Role::Destination => "dst",
        }
    }
}

/// What a side needs, before any network I/O.
#[derive(Debug)]
pub struct ClusterArgs<'a> {
    /// Which side.
    pub role: Role,
    /// `-src` / `-dst`: settings NAME or PATH.
    pub settings: &'a str,
    /// `-src-keep-services-json` / `-dst-keep-services-json`.
    pub services_json: Option<&'a str>,
    /// `--src-token-file` / `--dst-token-file`.
    pub token_file: Option<&'a Path>,
    /// `--src-blob-signing-key-file` / `--dst-blob-signing-key-file`.
    pub key_file: Option<&'a Path>,
    /// `-src-blob-signature-ttl` / `--dst-blob-signature-ttl`.
    pub ttl: Option<Duration>,
}

/// A connected side of the migration.
#[derive(Debug)]
pub struct Cluster {
    /// Which side.
    pub role: Role,
    /// Where its settings came from (for messages).
    pub origin: String,
    /// API host, when it was used (not when the keep services came as JSON and the
    /// flags gave what discovery would).
    pub api_host: Option<String>,
    /// The Keep client (holds the token; never logged).
    pub client: KeepClient,
    /// The token sent with block reads and writes, and signed for: one made for this
    /// run (keepstores), or the cluster's own (a keepproxy checks it).
    pub token: Token,
    /// Blob signing key, when known.
    pub key: Option<SigningKey>,
    /// Blob signature TTL, from the flag or discovery.
    pub ttl: Option<Duration>,
    /// `defaultCollectionReplication` from discovery.
    pub default_replication: Option<u32>,
    /// The storage classes marked `Default` in the exported config (empty if unknown).
    pub default_storage_classes: Vec<String>,
    /// The API server, with the cluster's own token, when its host is known (for
    /// `--by-collections`).
    pub api: Option<keep_client::Controller>,
}

fn read_secret_file(path: &Path, what: &str) -> Result<String> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the {what} file {}", path.display()))?;
    let t = text.trim();
    if t.is_empty() {
        bail!("the {what} file {} is empty", path.display());
    }
    if keep_client::settings::readable_by_others(path) {
        tracing::warn!(
            "{} holds a {what} and is readable by other users; run: chmod 600 {}",
            path.display(),
            path.display()
        );
    }
    Ok(t.to_owned())
}

/// A side's settings and secrets, loaded without touching the network.
#[derive(Debug)]
pub struct Loaded {
    /// The settings file's contents.
    pub settings: ClusterSettings,
    /// The API token (from the settings or `--*-token-file`).
    pub token: Token,
    /// The blob signing key, if any.
    pub key: Option<SigningKey>,
    /// Keep services given with `-*-keep-services-json`.
    pub services: Option<Vec<KeepService>>,
}

/// Loads settings and secrets without touching the network.
///
/// # Errors
/// One line naming the file and what is wrong with it.
pub fn load_settings(a: &ClusterArgs<'_>) -> Result<Loaded> {
    let flag = a.role.flag();
    let settings =
        ClusterSettings::load(a.settings).with_context(|| format!("-{flag} {}", a.settings))?;
    let token = match a.token_file {
        Some(p) => Token::new(read_secret_file(p, "token")?),
        None => settings.api_token.clone().with_context(|| {
            format!(
                "-{flag} {}: no ARVADOS_API_TOKEN (the {} cluster's SystemRootToken, which the index needs); add it or pass --{flag}-token-file",
                a.settings,
                a.role.name()
            )
        })?,
    };
    let key = match a.key_file {
        Some(p) => Some(SigningKey::new(read_secret_file(p, "blob signing key")?)),
        None => settings.blob_signing_key.clone(),
    };
    if settings.secrets_readable_by_others() {
        let what = if settings.blob_signing_key.is_some() {
            "a blob signing key"
        } else {
            "a token"
        };
        tracing::warn!(
            "{} holds {what} and is readable by other users; run: chmod 600 {}",
            a.settings,
            a.settings
        );
    }
    let services = match a.services_json {
        Some(j) => Some(
            load_keep_services_json(j).with_context(|| format!("-{flag}-keep-services-json"))?,
        ),
        None => None,
    };
    if services.is_none() && settings.api_host.is_none() && settings.keep_services.is_none() {
        bail!(
            "-{flag} {}: no ARVADOS_API_HOST; add it, or give -{flag}-keep-services-json",
            a.settings
        );
    }
    Ok(Loaded {
        settings,
        token,
        key,
        services,
    })
}

/// Connects a side whose settings were loaded with [`load_settings`]: discovery,
/// cluster config and Keep services from the API server, except that with
/// `-*-keep-services-json` the API server is asked only when `use_api` says a value
/// that no flag gave is needed (the Go tool's use of `-dst-keep-services-json` with
/// `-replications`: bare keepstores whose API server may not exist yet).
///
/// # Errors
/// One line naming the cluster and what failed.
pub async fn connect(
    a: &ClusterArgs<'_>,
    loaded: Loaded,
    options: ClientOptions,
    use_api: bool,
) -> Result<Cluster> {
    let Loaded {
        mut settings,
        token,
        key,
        services,
    } = loaded;
    settings.api_token = Some(token.clone());
    let api = match &settings.api_host {
        Some(host) => Some(
            keep_client::Controller::new(
                host,
                Some(token.clone()),
                &ClientOptions {
                    insecure: options.insecure || settings.insecure,
                    ..options.clone()
                },
            )
            .with_context(|| format!("{} cluster ({})", a.role.name(), a.settings))?,
        ),
        None => None,
    };
    let given = services.is_some();
    let api_used = !given || (use_api && settings.api_host.is_some());
    let (client, info) = match (services, &settings.api_host) {
        // No API server, or none needed: no discovery, so no default replication or
        // TTL except from flags.
        (Some(services), _) if !use_api || settings.api_host.is_none() => {
            let options = ClientOptions {
                insecure: options.insecure || settings.insecure,
                ..options
            };
            let client = KeepClient::new(services, token.clone(), options)
                .with_context(|| format!("{} keep services", a.role.name()))?;
            (client, ClusterInfo::default())
        }
        (services, _) => KeepClient::from_settings(&settings, options, services)
            .await
            .with_context(|| {
                let hint = match (given, a.role) {
                    (false, _) => String::new(),
                    (true, Role::Source) => {
                        " (its blobSignatureTtl is needed: pass -src-blob-signature-ttl to do without the API server)".to_owned()
                    }
                    (true, Role::Destination) => {
                        " (its defaultCollectionReplication is needed: pass -replications N to do without the API server)".to_owned()
                    }
                };
                format!("{} cluster ({}){hint}", a.role.name(), a.settings)
            })?,
    };
    if client.services().is_empty() {
        bail!(
            "{} cluster ({}) lists no keep services",
            a.role.name(),
            a.settings
        );
    }
    // Least privilege: the cluster's token (its SystemRootToken) goes only where it is
    // needed, with /index and /mounts. Keepstores check a read's signature against
    // the token sent with it, nothing more (§2), so block reads are signed for a
    // random token made for this run, and writes (which need none) carry it too.
    // A keepproxy checks tokens with the API server: it gets the cluster's.
    let (client, data_token) = if client.has_proxy() {
        (client, token)
    } else {
        let run = Token::random();
        (client.with_admin_token(token).with_token(run.clone()), run)
    };
    Ok(Cluster {
        role: a.role,
        origin: a.settings.to_owned(),
        api_host: settings.api_host.clone().filter(|_| api_used),
        client,
        token: data_token,
        key,
        ttl: a.ttl.or(info.blob_signature_ttl),
        default_replication: info.default_replication,
        default_storage_classes: info.default_storage_classes,
        api,
    })
}

impl Cluster {
    /// Signs `loc` for reading from this cluster, when its key is known: expiry one
    /// day out, as the Go tool does, with the cluster's TTL (a verifier uses its own
    /// TTL, §3.1). Unsigned otherwise (a cluster that does not enforce signatures).
    pub fn signed_for_read(&self, loc: &Locator) -> Locator {
        match (&self.key, self.ttl) {
            (Some(key), Some(ttl)) => {
                let now = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs());
                signing::sign(
                    loc,
                    key,
                    &self.token,
                    now + 86_400,
                    SignatureFormat::Current { ttl },
                )
            }
            _ => loc.clone(),
        }
    }
}
