//! keep-client integration tests: one binary (style guide B4).
//!
//! Until `keep-testcluster` lands, HTTP behaviour is tested against `mock`, a small
//! scripted hyper server.

mod controller;
mod fuzz;
mod keep;
mod mock;
mod sdk_interop;
mod settings;
