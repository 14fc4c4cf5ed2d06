//! What `--by-collections` costs in plan memory, per block, at N blocks (default 10
//! million): every source block missing from the destination (the first run of a
//! migration, the largest plan), every block referred to by a collection, and a
//! share of them (default 5%) asking for something other than the defaults.
//!
//! ```text
//! cargo run --release -p keep-rsync --example plan-memory -- [BLOCKS] [PERCENT_SPECIAL]
//! ```
//!
//! The figures are the plan's own heap accounting (`Plan::heap_bytes`: capacities,
//! not lengths), the same number `--max-plan-memory` bounds.

use keep_client::BlockHash;
use keep_rsync::plan::{DeviceWeight, PlanBuilder, Want};

fn main() {
    let mut args = std::env::args().skip(1);
    let n: u64 = args
        .next()
        .map_or(10_000_000, |a| a.parse().expect("BLOCKS"));
    let pct: u64 = args
        .next()
        .map_or(5, |a| a.parse().expect("PERCENT_SPECIAL"));
    let hash = |i: u64| BlockHash::of(&i.to_le_bytes());
    let devices = vec![
        DeviceWeight {
            replication: 1,
            classes: 1,
        };
        4
    ];
    let want = Want {
        replicas: 2,
        classes: 1,
    };
    let mut b = PlanBuilder::new(want, devices);
    b.finish_dst();
    for i in 0..n {
        b.add_src(hash(i), 1 << 20);
    }
    let mut plan = b.finish();
    let before = plan.heap_bytes() as f64;
    let three = plan.profile_id(Box::new([(1, 3)]));
    let every = 100 / pct.max(1);
    // While collections are read the plan also holds one bit per block to copy.
    let mut during = 0usize;
    for i in 0..n {
        let id = if pct > 0 && i % every == 0 { three } else { 0 };
        plan.refer(&hash(i), 1 << 20, id, true);
        if i == n - 1 {
            during = plan.heap_bytes();
        }
    }
    plan.finish_collections(false, |_| {});
    let after = plan.heap_bytes() as f64;
    let per = |x: f64| x / n as f64;
    println!("blocks to copy:                 {n}");
    println!(
        "asking other than the defaults: {} ({pct}%)",
        plan.stats().special_wants
    );
    println!(
        "plan alone:                     {:.1} MiB ({:.1} B/block)",
        before / 1048576.0,
        per(before)
    );
    println!(
        "while collections are read:     {:.1} MiB ({:.1} B/block)",
        during as f64 / 1048576.0,
        per(during as f64)
    );
    println!(
        "after, with the exceptions:     {:.1} MiB ({:.1} B/block; {:.1} B per exception)",
        after / 1048576.0,
        per(after),
        (after - before) / plan.stats().special_wants.max(1) as f64
    );
}
