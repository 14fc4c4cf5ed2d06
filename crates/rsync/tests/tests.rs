//! End-to-end tests of the keep-rsync binary against two local test clusters.
//! One test binary (so it links once); each module is a group of scenarios.

mod util;

mod badinput;
mod basics;
mod bench_smoke;
mod collections;
mod concurrency;
mod failures;
mod longhaul;
mod oldclusters;
mod passes;
mod reliability;
mod replicas;
mod resume;
mod security;
mod shards;
mod slurm;
mod upstream;
