//! `--max-plan-memory`: a migration whose plan does not fit runs as passes, one range
//! of the hash space after another, in one process. Each pass lists only its own
//! prefixes of every index, plans, and copies; the report adds the passes up, and the
//! destination index stays the checkpoint, so an interrupted run resumes as any other.
//!
//! A run starts as one pass: most fit, and then nothing is spent on estimates. When
//! the plan outgrows the budget while the indexes stream in, the listings stop and
//! the plan's size is estimated: both sides' indexes under four 3-hex-digit prefixes
//! (1/1024 of the space; hashes are uniform) are planned for real, and that plan's
//! size is scaled up. The passes are the shard's own range cut into equal ranges
//! ([`Shard`]), so passes and shards compose; a pass that still outgrows the budget
//! is halved.

use anyhow::{Result, bail};

use crate::Job;
use crate::plan::Plan;
use crate::progress::{Progress, fmt_bytes};
use crate::shard::{MAX_SHARDS, Shard};

/// What the plan may grow by while it is built, beyond the final plan's size (the
/// vectors' spare capacity is measured; this covers the builder's own buffers).
const MARGIN: f64 = 1.25;

/// The passes of shard `shard`, whose plan outgrew `--max-plan-memory`: each a list
/// of index prefixes, at least two.
///
/// # Errors
/// A sample index fails, or even 4096 ranges would not fit.
pub(crate) async fn split(
    job: &Job<'_>,
    shard: Shard,
    progress: &Progress,
) -> Result<Vec<Vec<String>>> {
    let base = &job.cli.prefix;
    let budget = job.cli.max_plan_memory;
    let (sample, cells) = shard.sample(base);
    let (plan, _, _) = job.plan(&sample, &Progress::quiet()).await?;
    let sampled = (plan.heap_bytes() as u64).saturating_sub(Plan::FIXED_HEAP);
    let scale = cells as f64 / sample.len() as f64;
    let estimate = Plan::FIXED_HEAP + (sampled as f64 * scale * MARGIN) as u64;
    tracing::info!(
        sample = sample.join(","),
        sampled,
        estimate,
        budget,
        "plan size estimated from a sample of the hashes"
    );
    // The plan outgrew the budget before this was called: two passes at least.
    let room = budget.saturating_sub(Plan::FIXED_HEAP).max(1);
    let wanted = estimate
        .saturating_sub(Plan::FIXED_HEAP)
        .div_ceil(room)
        .max(2);
    let most = MAX_SHARDS / shard.count;
    let passes = u32::try_from(wanted).unwrap_or(u32::MAX);
    if passes > most {
        bail!(
            "--max-plan-memory {}: the plan needs about {}; even {most} passes would not fit. Raise --max-plan-memory, or split the work into more --shard runs",
            fmt_bytes(budget),
            fmt_bytes(estimate)
        );
    }
    progress.note(&format!(
        "the plan needs about {} (from a sample of {} in {cells} of the hashes); --max-plan-memory is {}: running {passes} passes",
        fmt_bytes(estimate),
        sample.len(),
        fmt_bytes(budget)
    ));
    (0..passes)
        .map(|j| {
            Shard::new(shard.index * passes + j, shard.count * passes)
                .map(|s| s.prefixes(base))
                .map_err(anyhow::Error::msg)
        })
        .collect()
}

/// A pass split in two, for a range whose plan still outgrew the budget: each prefix
/// becomes its 16 one-digit-longer prefixes, and the list is cut in the middle.
///
/// # Errors
/// The prefixes are already full hashes.
pub(crate) fn halve(prefixes: &[String]) -> Result<Vec<Vec<String>>> {
    let finer: Vec<String> = if prefixes.len() >= 2 {
        prefixes.to_vec()
    } else {
        prefixes
            .iter()
            .flat_map(|p| (0..16).map(move |d| format!("{p}{d:x}")))
            .collect()
    };
    if finer.iter().any(|p| p.len() > 32) || finer.len() < 2 {
        bail!("--max-plan-memory: a single hash's plan does not fit; raise it");
    }
    let (a, b) = finer.split_at(finer.len() / 2);
    Ok(vec![a.to_vec(), b.to_vec()])
}

/// A pass's prefixes, briefly: the first and the last.
pub(crate) fn describe(prefixes: &[String]) -> String {
    match prefixes {
        [] => "(nothing)".into(),
        [one] if one.is_empty() => "with anything".into(),
        [one] => format!("with {one}"),
        [first, .., last] => format!("with {first} to {last} ({} prefixes)", prefixes.len()),
    }
}
