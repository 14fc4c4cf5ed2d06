//! Placeholder replaced by the microbenchmarks (locator parse, signing, MD5).
fn main() {}
