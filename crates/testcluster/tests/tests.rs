//! Integration tests of keep-testcluster: one binary (style.md B4).

mod cli;
mod collections;
mod conformance;
mod controller;
mod faults;
mod interop;
mod keepstore;
mod proxy;
mod upstream;
mod util;
