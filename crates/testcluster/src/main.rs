//! `keep-testcluster`: run a local Keep cluster, or change faults on a running one.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use keep_testcluster::FaultSpec;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Parser)]
#[command(version, about = "A local Arvados Keep cluster for tests and demos")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Start a cluster; writes DIR/NAME.conf and DIR/cluster.json, prints `ready`.
    Run(RunArgs),
    /// Change faults on a running cluster found by --dir.
    Fault(FaultArgs),
    /// Real Arvados keepstores from the upstream binaries (KEEP_UPSTREAM_ARVADOS, else
    /// ../shared/upstream-arvados).
    Upstream {
        #[command(subcommand)]
        cmd: UpstreamCmd,
    },
}

#[derive(Subcommand)]
enum UpstreamCmd {
    /// Print the directory of the upstream binaries; exit 1 with the reason if there
    /// is none.
    Locate,
    /// Start a cluster of real keepstores; writes DIR/NAME.conf (API host 127.0.0.1:1,
    /// where nothing listens), DIR/services.json (a KeepServiceList) and
    /// DIR/cluster.json, prints `ready`, and stops them on SIGINT or SIGTERM.
    Run(UpstreamRunArgs),
}

#[derive(Args)]
struct UpstreamRunArgs {
    #[arg(long)]
    dir: PathBuf,
    #[arg(long, default_value = "cluster")]
    name: String,
    /// 3.2.1 or 2.7.4.
    #[arg(long, default_value = "3.2.1")]
    version: String,
    #[arg(long, default_value = "zzzzz")]
    cluster_id: String,
    #[arg(long, default_value_t = 3)]
    keepstores: usize,
    /// Collections.DefaultReplication.
    #[arg(long, default_value_t = 2)]
    replication: u32,
    /// Replication of each keepstore's volume.
    #[arg(long, default_value_t = 1)]
    volume_replication: u32,
    /// Publish the 28-character UUIDs of a config-only cluster (§7.3).
    #[arg(long)]
    config_derived_uuids: bool,
}

#[derive(Args)]
struct RunArgs {
    #[arg(long)]
    dir: PathBuf,
    #[arg(long, default_value = "cluster")]
    name: String,
    #[arg(long, default_value = "zzzzz")]
    cluster_id: String,
    #[arg(long, default_value_t = 3)]
    keepstores: usize,
    #[arg(long, default_value_t = 1)]
    volumes_per_keepstore: usize,
    #[arg(long, default_value_t = 2)]
    replication: u64,
    #[arg(long)]
    proxy: bool,
    /// Keep blocks in memory instead of DIR/keepK/volV.
    #[arg(long)]
    memory: bool,
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u8).range(2..=3))]
    arvados_version: u8,
    #[arg(long, default_value_t = 0)]
    seed_blocks: usize,
    #[arg(long, default_value_t = 1024)]
    seed_block_size: usize,
    #[arg(long, default_value_t = 0)]
    synthetic_blocks: u64,
    #[arg(long, default_value_t = 1)]
    synthetic_seed: u64,
    /// Put the synthetic volume on the first K keepstores (each its own volume).
    #[arg(long, default_value_t = 1)]
    synthetic_keepstores: usize,
    /// Do not enforce permission signatures.
    #[arg(long)]
    no_blob_signing: bool,
    /// Use this blob signing key instead of a random one.
    #[arg(long)]
    signing_key: Option<String>,
    /// BlobSigningTTL in seconds.
    #[arg(long, default_value_t = 1_209_600)]
    ttl: u64,
    /// Seed for random faults (random by default; recorded in cluster.json).
    #[arg(long)]
    fault_seed: Option<u64>,
    /// 2015 signature message (no TTL).
    #[arg(long)]
    legacy_signatures: bool,
    /// Index mtimes in seconds (a pre-2016 keepstore).
    #[arg(long, conflicts_with = "index_mtime_ns")]
    index_mtime_seconds: bool,
    /// Index mtimes in nanoseconds (the default, as 3.x and 2.x send).
    #[arg(long)]
    index_mtime_ns: bool,
    /// Publish the 28-character keepstore UUIDs of a config-only cluster (§7.3).
    #[arg(long)]
    config_derived_uuids: bool,
}

#[derive(Args)]
struct FaultArgs {
    #[arg(long)]
    dir: PathBuf,
    /// A keepstore UUID, keepstoreN, proxy, or controller.
    #[arg(long)]
    service: String,
    #[arg(long)]
    latency_ms: Option<u64>,
    /// Bytes per second (0 removes the limit).
    #[arg(long)]
    bandwidth: Option<u64>,
    #[arg(long)]
    status: Option<u16>,
    #[arg(long, requires = "status", conflicts_with = "burst")]
    rate: Option<f64>,
    #[arg(long, requires = "status")]
    burst: Option<u64>,
    #[arg(long)]
    method: Option<String>,
    #[arg(long)]
    stop: bool,
    #[arg(long, conflicts_with = "stop")]
    start: bool,
    #[arg(long)]
    truncate_index: bool,
    #[arg(long)]
    malformed_index: bool,
    #[arg(long)]
    corrupt: bool,
    /// Send half of each block body under the full Content-Length.
    #[arg(long)]
    truncate_body: bool,
    /// Send half of each block body, then stall (connection left open).
    #[arg(long)]
    stall_body: bool,
    /// 0 removes the cap.
    #[arg(long)]
    max_concurrent: Option<usize>,
    #[arg(long)]
    clear: bool,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("keep-testcluster: {e}");
            return ExitCode::from(2);
        }
    };
    let res = rt.block_on(async {
        match cli.cmd {
            Cmd::Run(a) => run(a).await,
            Cmd::Fault(a) => fault(a).await,
            Cmd::Upstream {
                cmd: UpstreamCmd::Locate,
            } => match keep_testcluster::upstream::Upstream::locate() {
                Ok(u) => {
                    println!("{}", u.root().display());
                    Ok(())
                }
                Err(e) => {
                    eprintln!("{e}");
                    std::process::exit(1);
                }
            },
            Cmd::Upstream {
                cmd: UpstreamCmd::Run(a),
            } => upstream_run(a).await,
        }
    });
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("keep-testcluster: {e:#}");
            ExitCode::from(2)
        }
    }
}

async fn run(a: RunArgs) -> anyhow::Result<()> {
    let mut b = keep_testcluster::TestCluster::builder()
        .dir(&a.dir)
        .cluster_id(&a.cluster_id)
        .keepstores(a.keepstores)
        .volumes_per_keepstore(a.volumes_per_keepstore)
        .replication(a.replication)
        .proxy(a.proxy)
        .memory(a.memory)
        .arvados_version(a.arvados_version)
        .blob_signing(!a.no_blob_signing)
        .ttl(std::time::Duration::from_secs(a.ttl))
        .legacy_signatures(a.legacy_signatures)
        .config_derived_uuids(a.config_derived_uuids)
        .request_log_file(true);
    b = b.index_mtime_seconds(a.index_mtime_seconds);
    if a.seed_blocks > 0 {
        b = b.seed_blocks(a.seed_blocks, a.seed_block_size);
    }
    if a.synthetic_blocks > 0 {
        b = b
            .synthetic_blocks(a.synthetic_blocks, a.synthetic_seed)
            .synthetic_keepstores(a.synthetic_keepstores);
    }
    // Restarting on the same DIR keeps the key and tokens, so locators signed
    // before the restart stay valid for the data that survived it.
    let previous: Option<serde_json::Value> = std::fs::read(a.dir.join("cluster.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .filter(|p: &serde_json::Value| p["cluster_id"] == a.cluster_id.as_str());
    if let Some(p) = &previous {
        if let Some(k) = p["signing_key"].as_str() {
            b = b.signing_key(k);
        }
        if let Some(t) = p["system_root_token"].as_str() {
            b = b.system_root_token(t);
        }
        if let Some(t) = p["user_token"].as_str() {
            b = b.user_token(t);
        }
    }
    if let Some(k) = a.signing_key {
        b = b.signing_key(k);
    }
    if let Some(s) = a.fault_seed {
        b = b.fault_seed(s);
    }
    let cluster = b.start().await?;
    let conf = a.dir.join(format!("{}.conf", a.name));
    cluster.write_settings_file(&conf, true)?;
    let mut info = cluster.cluster_json();
    info["config_file"] = serde_json::json!(conf);
    let json_path = a.dir.join("cluster.json");
    let tmp = a.dir.join(".cluster.json.tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(&info)?)?;
    std::fs::rename(&tmp, &json_path)?;
    tracing::info!(api = %cluster.api_host(), fault_seed = cluster.fault_seed(), "cluster ready");
    println!("ready");

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    cluster.shutdown().await;
    Ok(())
}

async fn upstream_run(a: UpstreamRunArgs) -> anyhow::Result<()> {
    use keep_testcluster::upstream::{Upstream, UuidStyle, Version, VolumeSpec};
    let up = Upstream::locate().map_err(anyhow::Error::msg)?;
    let volumes = (0..a.keepstores)
        .map(|k| VolumeSpec::on(k).replication(a.volume_replication))
        .collect();
    let cluster = up
        .cluster(Version::parse(&a.version)?)
        .dir(&a.dir)
        .cluster_id(&a.cluster_id)
        .keepstores(a.keepstores)
        .default_replication(a.replication)
        .volumes(volumes)
        .uuids(if a.config_derived_uuids {
            UuidStyle::ConfigDerived
        } else {
            UuidStyle::Standard
        })
        .start()
        .await?;
    let conf = a.dir.join(format!("{}.conf", a.name));
    cluster.write_settings_file(&conf, true)?;
    let services = a.dir.join("services.json");
    std::fs::write(&services, cluster.services_json())?;
    let mut info = cluster.cluster_json();
    info["config_file"] = serde_json::json!(conf);
    info["services_json"] = serde_json::json!(services);
    let tmp = a.dir.join(".cluster.json.tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(&info)?)?;
    std::fs::rename(&tmp, a.dir.join("cluster.json"))?;
    println!("ready");
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    drop(cluster);
    Ok(())
}

async fn fault(a: FaultArgs) -> anyhow::Result<()> {
    let info: serde_json::Value =
        serde_json::from_slice(&std::fs::read(a.dir.join("cluster.json"))?)?;
    let admin = info["admin_url"]
        .as_str()
        .ok_or_else(|| anyhow::anyhow!("no admin_url in cluster.json"))?;
    let token = info["system_root_token"].as_str().unwrap_or_default();
    let addr = admin.trim_start_matches("http://");
    let spec = FaultSpec {
        clear: a.clear,
        latency_ms: a.latency_ms,
        bandwidth: a.bandwidth,
        status: a.status,
        rate: a.rate,
        burst: a.burst,
        method: a.method,
        truncate_index: a.truncate_index.then_some(true),
        truncate_index_next: None,
        malformed_index: a.malformed_index.then_some(true),
        corrupt: a.corrupt.then_some(true),
        truncate_body: a.truncate_body.then_some(true),
        stall_body: a.stall_body.then_some(true),
        max_concurrent: a.max_concurrent,
        stop: a.stop,
        start: a.start,
    };
    let body = serde_json::to_vec(&serde_json::json!({"service": a.service, "spec": spec}))?;
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    let head = format!(
        "POST /faults HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await?;
    s.write_all(&body).await?;
    let mut resp = String::new();
    s.read_to_string(&mut resp).await?;
    let status = resp.split(' ').nth(1).unwrap_or("");
    let text = resp.split("\r\n\r\n").nth(1).unwrap_or("").trim();
    anyhow::ensure!(status == "200", "admin endpoint answered {status}: {text}");
    Ok(())
}
