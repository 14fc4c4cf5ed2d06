//! # keep-client: a Rust client for Arvados Keep
//!
//! Arvados stores data as content-addressed blocks (MD5 + size, at most 64 MiB) on
//! keepstore servers. This crate is what the Go and Python SDKs give their tools:
//! locators, permission signatures, rendezvous probe order, and (in later modules)
//! service discovery and GET/PUT/index with retries.
//!
//! The protocol reference is `shared/keep-protocol.md`; comments cite its sections (§).
//!
//! # Layout
//! - [`locator`]: `hash+size+hints` parsing and formatting (§1). No I/O.
//! - [`signing`]: `+A` permission signatures, sign and verify (§3). No I/O.
//! - [`rendezvous`]: client probe order and keepstore volume order (§4). No I/O.

pub mod locator;
pub mod rendezvous;
pub mod signing;

pub use locator::{BlockHash, Locator, LocatorError, MAX_BLOCK_SIZE};
pub use signing::{SignatureError, SignatureFormat, SigningKey, Token};
