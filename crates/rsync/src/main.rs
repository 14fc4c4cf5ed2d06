//! keep-rsync binary (work in progress).
fn main() {}
