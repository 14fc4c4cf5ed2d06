//! # keep-client: a Rust client for Arvados Keep
//!
//! Arvados stores data as content-addressed blocks (MD5 + size, at most 64 MiB) on
//! keepstore servers. This crate is what the Go and Python SDKs give their tools:
//! locators, permission signatures, rendezvous probe order, cluster settings,
//! service discovery, and GET/HEAD/PUT/index with retries and failover.
//!
//! The protocol reference is `shared/keep-protocol.md`; comments cite its sections (§).
//!
//! # Layout
//! - [`locator`]: `hash+size+hints` parsing and formatting (§1). No I/O.
//! - [`signing`]: `+A` permission signatures, sign and verify (§3). No I/O.
//! - [`rendezvous`]: client probe order and keepstore volume order (§4). No I/O.
//! - [`error`]: the one public [`Error`], its classification and [`Result`].
//! - [`settings`]: `NAME.conf` settings files and `ARVADOS_*` variables (§9).
//! - [`services`]: Keep service records from JSON or `ARVADOS_KEEP_SERVICES` (§7.3, §8.2).
//! - [`index`]: a streaming parser for index bodies (§5.6). No I/O.
//! - [`retry`]: retry counts and jittered backoff; `stall`: transfers fail only when
//!   no byte moves for a while.
//! - [`tls`]: rustls configuration (system roots, `SSL_CERT_FILE`, insecure mode).
//! - [`controller`]: discovery document, cluster config, Keep service lists (§7).
//! - [`keep`]: [`KeepClient`], GET/HEAD/PUT/index with retries and failover (§8).
//!
//! # Example
//!
//! Copy one block from one cluster to another, each described by a settings file
//! (`~/.config/arvados/src.conf`, `dst.conf`, §9.2):
//!
//! ```no_run
//! use keep_client::{ClientOptions, ClusterSettings, KeepClient, Locator};
//!
//! # async fn example() -> keep_client::Result<()> {
//! let src = ClusterSettings::load("src")?;
//! let dst = ClusterSettings::load("dst")?;
//! let (src_keep, _) = KeepClient::from_settings(&src, ClientOptions::default(), None).await?;
//! let (dst_keep, dst_info) =
//!     KeepClient::from_settings(&dst, ClientOptions::default(), None).await?;
//!
//! // A locator as found in a manifest (signed for the source token).
//! let locator: Locator = "acbd18db4cc2f85cedef654fccc4a4d8+3".parse()?;
//! let data = src_keep.get(&locator).await?; // MD5-checked
//! let replicas = dst_info.default_replication.unwrap_or(2) as usize;
//! let stored = dst_keep.put(locator.hash(), data, replicas).await?;
//! // `Display` shows `hash+size` only; the signed form is `stored.locator.to_wire()`.
//! println!("stored {} on {} replicas", stored.locator, stored.replicas);
//! # Ok(())
//! # }
//! ```
//!
//! Errors say whether a retry can help ([`Error::is_retryable`]) and give a short
//! category for reports ([`Error::reason`]); none of them ever shows a token, key or
//! signature.
#![warn(missing_docs)]

pub mod collections;
pub mod controller;
pub mod error;
pub mod index;
pub mod keep;
pub mod locator;
pub mod manifest;
pub mod rendezvous;
pub mod retry;
mod send_queue;
pub mod services;
pub mod settings;
pub mod signing;
mod stall;
pub mod tls;

pub use collections::CollectionDemand;
pub use controller::{ClusterConfig, Controller, Discovery};
pub use error::{Error, Result, ServiceFailure};
pub use index::{IndexEntry, IndexError, IndexParser};
pub use keep::{
    ClientOptions, ClusterInfo, CopyError, IndexStats, KeepClient, PutResult, Traffic, WriteTarget,
};
pub use locator::{BlockHash, Locator, LocatorError, MAX_BLOCK_SIZE};
pub use manifest::BlockRef;
pub use retry::{Backoff, BackoffConfig, RetryConfig};
pub use services::{KeepService, Mount, ServiceType};
pub use settings::ClusterSettings;
pub use signing::{SignatureError, SignatureFormat, SigningKey, Token};
