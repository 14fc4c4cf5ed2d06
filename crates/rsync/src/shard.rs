//! Shards: `--shard I/N` runs one of N parts of a migration, each a contiguous range of
//! the hash space, so N processes (a Slurm job array, a Kubernetes Indexed Job, a
//! shell loop) together copy everything exactly once. A range is read from the
//! keepstores as the shortest set of index prefixes that covers it exactly (§5.1:
//! `/index/PREFIX`), so a shard lists only its own part of every index.
//!
//! The same ranges make `--max-plan-memory`'s passes: a run whose plan would not fit
//! runs its shard as several passes, one range after another.
//!
//! Pure: no I/O beyond reading the environment for `--shard auto`.

use std::fmt;

/// The most shards (and passes): 16³, three hex digits of prefix at most.
pub const MAX_SHARDS: u32 = 4096;

/// One of `count` equal parts of the hash space (under a `-prefix`, if given).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Shard {
    /// 0-based.
    pub index: u32,
    /// Shards in all.
    pub count: u32,
}

impl Shard {
    /// The whole space.
    pub const ALL: Shard = Shard { index: 0, count: 1 };

    /// Shard `index` of `count`.
    ///
    /// # Errors
    /// A count of 0 or above [`MAX_SHARDS`], or an index not below the count.
    pub fn new(index: u32, count: u32) -> Result<Shard, String> {
        if count == 0 || count > MAX_SHARDS {
            return Err(format!(
                "{count} shards: use 1 to {MAX_SHARDS} (e.g. --shard 3/16)"
            ));
        }
        if index >= count {
            return Err(format!(
                "shard {index} of {count}: shards are numbered 0 to {} (e.g. --shard 0/{count})",
                count - 1
            ));
        }
        Ok(Shard { index, count })
    }

    /// Hex digits of the grid the shard boundaries fall on: three (4096 cells), so
    /// shards differ in size by at most one cell, 1/4096 of the space.
    const DIGITS: u32 = 3;

    /// The shard's range on the grid: [lo, hi) in cells.
    fn range(self) -> (u64, u64) {
        let cells = 16u64.pow(Self::DIGITS);
        let at = |i: u32| u64::from(i) * cells / u64::from(self.count);
        (at(self.index), at(self.index + 1))
    }

    /// The shortest set of hex prefixes (each `base` plus up to three digits) whose
    /// blocks are exactly this shard's, in hash order.
    pub fn prefixes(self, base: &str) -> Vec<String> {
        let k = Self::DIGITS;
        let (lo, hi) = self.range();
        let mut out = Vec::new();
        let mut at = lo;
        while at < hi {
            // The largest aligned block of cells starting at `at` that fits.
            let mut size = 1u64;
            let mut len = k;
            while len > 0 && at % (size * 16) == 0 && at + size * 16 <= hi {
                size *= 16;
                len -= 1;
            }
            let cell = at / size;
            let digits = if len == 0 {
                String::new()
            } else {
                format!("{cell:0width$x}", width = len as usize)
            };
            out.push(format!("{base}{digits}"));
            at += size;
        }
        out
    }

    /// Prefixes that sample this shard's part of the space (up to 4 of its
    /// 3-hex-digit cells under `base`, spread over it), and how many cells the shard
    /// spans: the sample's blocks times `cells / samples` estimate the shard's.
    pub fn sample(self, base: &str) -> (Vec<String>, u64) {
        let (lo, hi) = self.range();
        let cells = hi - lo;
        let n = cells.min(4);
        let picks = (0..n)
            .map(|k| format!("{base}{:03x}", lo + k * cells / n))
            .collect();
        (picks, cells)
    }

    /// `--shard auto`: the shard of this task of a Slurm job array
    /// (`SLURM_ARRAY_TASK_ID` with `SLURM_ARRAY_TASK_COUNT`, or `..._MIN`/`..._MAX`),
    /// or of a Kubernetes Indexed Job (`JOB_COMPLETION_INDEX` with the count in
    /// `KEEP_RSYNC_SHARDS`, which the manifest sets to its `completions`).
    ///
    /// # Errors
    /// Neither is found, or their values make no sense; the message says what to set.
    pub fn from_env(get: impl Fn(&str) -> Option<String>) -> Result<Shard, String> {
        let num = |name: &str| -> Result<Option<u32>, String> {
            match get(name) {
                None => Ok(None),
                Some(v) => v
                    .trim()
                    .parse::<u32>()
                    .map(Some)
                    .map_err(|_| format!("{name}={v:?} is not a number")),
            }
        };
        if let Some(id) = num("SLURM_ARRAY_TASK_ID")? {
            let min = num("SLURM_ARRAY_TASK_MIN")?.unwrap_or(0);
            let count = match (num("SLURM_ARRAY_TASK_COUNT")?, num("SLURM_ARRAY_TASK_MAX")?) {
                (Some(c), _) => c,
                (None, Some(max)) if max >= min => max - min + 1,
                _ => {
                    return Err(
                        "--shard auto: SLURM_ARRAY_TASK_ID is set but neither SLURM_ARRAY_TASK_COUNT nor SLURM_ARRAY_TASK_MAX; submit with sbatch --array=0-N".into(),
                    );
                }
            };
            let step = num("SLURM_ARRAY_TASK_STEP")?.unwrap_or(1);
            if step != 1 {
                return Err(format!(
                    "--shard auto: the job array has a step of {step}; use a plain range (sbatch --array=0-{}) so every shard runs",
                    count.saturating_sub(1)
                ));
            }
            let index = id.checked_sub(min).ok_or_else(|| {
                format!(
                    "--shard auto: SLURM_ARRAY_TASK_ID {id} is below SLURM_ARRAY_TASK_MIN {min}"
                )
            })?;
            return Shard::new(index, count).map_err(|e| format!("--shard auto (Slurm): {e}"));
        }
        if let Some(index) = num("JOB_COMPLETION_INDEX")? {
            let Some(count) = num("KEEP_RSYNC_SHARDS")? else {
                return Err(
                    "--shard auto: JOB_COMPLETION_INDEX is set (a Kubernetes Indexed Job) but KEEP_RSYNC_SHARDS is not; set it in the manifest to the Job's completions".into(),
                );
            };
            return Shard::new(index, count).map_err(|e| format!("--shard auto (Kubernetes): {e}"));
        }
        Err("--shard auto: not in a Slurm job array (no SLURM_ARRAY_TASK_ID) nor a Kubernetes Indexed Job (no JOB_COMPLETION_INDEX); give --shard I/N".into())
    }
}

impl fmt::Display for Shard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

/// `--shard`: `I/N` or `auto`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShardArg {
    /// From the environment, when the run starts.
    Auto,
    /// Given.
    Given(Shard),
}

impl std::str::FromStr for ShardArg {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s.eq_ignore_ascii_case("auto") {
            return Ok(ShardArg::Auto);
        }
        let (i, n) = s
            .split_once('/')
            .ok_or_else(|| format!("{s:?}: use I/N (e.g. 3/16, the 4th of 16) or auto"))?;
        let parse = |v: &str| {
            v.trim()
                .parse::<u32>()
                .map_err(|_| format!("{s:?}: use I/N with whole numbers (e.g. 3/16) or auto"))
        };
        Shard::new(parse(i)?, parse(n)?).map(ShardArg::Given)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The prefixes of a shard as ranges of 3-hex-digit cells, to check coverage.
    fn cells(prefixes: &[String]) -> Vec<(u64, u64)> {
        prefixes
            .iter()
            .map(|p| {
                let v = if p.is_empty() {
                    0
                } else {
                    u64::from_str_radix(p, 16).unwrap()
                };
                let size = 16u64.pow(3 - p.len() as u32);
                (v * size, v * size + size)
            })
            .collect()
    }

    #[test]
    fn every_count_covers_the_space_exactly_once() {
        for count in [
            1, 2, 3, 5, 7, 10, 15, 16, 17, 100, 255, 256, 257, 1000, 4095, 4096,
        ] {
            let mut all = Vec::new();
            for index in 0..count {
                let s = Shard::new(index, count).unwrap();
                let p = s.prefixes("");
                all.extend(cells(&p));
                // Shortest: no 16 siblings that could have been one prefix.
                assert!(p.len() <= 2 * 15 * 3, "{s}: {} prefixes", p.len());
            }
            all.sort();
            let mut at = 0;
            for (lo, hi) in all {
                assert_eq!(lo, at, "{count} shards: a gap or an overlap at {lo:03x}");
                at = hi;
            }
            assert_eq!(at, 4096, "{count} shards do not reach the end");
        }
    }

    #[test]
    fn prefixes_are_the_shortest() {
        assert_eq!(Shard::ALL.prefixes(""), vec![""]);
        assert_eq!(Shard::new(3, 16).unwrap().prefixes(""), vec!["3"]);
        assert_eq!(
            Shard::new(0, 2).unwrap().prefixes(""),
            (0..8).map(|d| format!("{d:x}")).collect::<Vec<_>>()
        );
        // 1/3 of 4096 cells: [1365, 2730).
        let p = Shard::new(1, 3).unwrap().prefixes("");
        let hex = |r: std::ops::RangeInclusive<u32>, w: usize| {
            r.map(move |c| format!("{c:0w$x}")).collect::<Vec<_>>()
        };
        let mut want = hex(0x555..=0x55f, 3);
        want.extend(hex(0x56..=0x5f, 2));
        want.extend(hex(0x6..=0x9, 1));
        want.extend(hex(0xa0..=0xa9, 2));
        want.extend(hex(0xaa0..=0xaa9, 3));
        assert_eq!(p, want);
        // Under a -prefix.
        assert_eq!(Shard::new(15, 16).unwrap().prefixes("ab"), vec!["abf"]);
        assert_eq!(Shard::new(4095, 4096).unwrap().prefixes(""), vec!["fff"]);
    }

    #[test]
    fn parsing() {
        assert_eq!(
            "3/16".parse(),
            Ok(ShardArg::Given(Shard {
                index: 3,
                count: 16
            }))
        );
        assert_eq!("auto".parse(), Ok(ShardArg::Auto));
        for bad in ["16/16", "0/0", "1/5000", "3", "a/b", "-1/4"] {
            assert!(bad.parse::<ShardArg>().is_err(), "{bad}");
        }
    }

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |k| {
            vars.iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| (*v).to_owned())
        }
    }

    #[test]
    fn from_slurm_and_kubernetes() {
        let s = Shard::from_env(env(&[
            ("SLURM_ARRAY_TASK_ID", "5"),
            ("SLURM_ARRAY_TASK_COUNT", "16"),
        ]));
        assert_eq!(
            s,
            Ok(Shard {
                index: 5,
                count: 16
            })
        );
        // --array=1-16: MIN/MAX, no COUNT (older Slurm).
        let s = Shard::from_env(env(&[
            ("SLURM_ARRAY_TASK_ID", "16"),
            ("SLURM_ARRAY_TASK_MIN", "1"),
            ("SLURM_ARRAY_TASK_MAX", "16"),
        ]));
        assert_eq!(
            s,
            Ok(Shard {
                index: 15,
                count: 16
            })
        );
        let s = Shard::from_env(env(&[
            ("JOB_COMPLETION_INDEX", "2"),
            ("KEEP_RSYNC_SHARDS", "8"),
        ]));
        assert_eq!(s, Ok(Shard { index: 2, count: 8 }));
        for (vars, needle) in [
            (&[][..], "give --shard I/N"),
            (
                &[("SLURM_ARRAY_TASK_ID", "1")][..],
                "SLURM_ARRAY_TASK_COUNT",
            ),
            (&[("JOB_COMPLETION_INDEX", "1")][..], "KEEP_RSYNC_SHARDS"),
            (
                &[
                    ("SLURM_ARRAY_TASK_ID", "2"),
                    ("SLURM_ARRAY_TASK_COUNT", "8"),
                    ("SLURM_ARRAY_TASK_STEP", "2"),
                ][..],
                "step",
            ),
            (&[("SLURM_ARRAY_TASK_ID", "x")][..], "not a number"),
        ] {
            let e = Shard::from_env(env(vars)).unwrap_err();
            assert!(e.contains(needle), "{vars:?}: {e}");
        }
    }
}
