//! keep-client integration tests: one binary (style guide B4).
//!
//! Exact wire shapes (one answer per request, on cue) are tested against `mock`, a
//! small scripted hyper server; whole copies (`relay`) against two keep-testclusters,
//! whose keepstores check what they store.

mod controller;
mod fuzz;
mod keep;
mod mock;
mod relay;
mod sdk_interop;
mod settings;
mod slow_link;
