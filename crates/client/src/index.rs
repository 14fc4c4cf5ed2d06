//! A pure, streaming parser for keepstore index bodies (§5.6). No I/O, so it can be
//! fuzzed: feed it the body in chunks of any size; it holds at most one partial line.
//!
//! Rules (§5.6 and Go keep-balance's `KeepService.index`):
//! - each line is `<32 lowercase hex>+<size> <mtime>`: exactly two fields separated by
//!   one space;
//! - mtime is nanoseconds since the epoch, except that values below 10^12 are seconds
//!   (2015 keepstores, §14) and are multiplied by 10^9;
//! - every entry's hash starts with the requested prefix;
//! - the body ends with a blank line (`...\n\n`, or just `\n` when empty). A body
//!   without it was cut short; anything after it (including a blank line that is not
//!   the last line) is an error.

use std::fmt;

use crate::locator::BlockHash;

/// One index line: a block stored on the service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IndexEntry {
    /// The block hash.
    pub hash: BlockHash,
    /// The stored size in bytes.
    pub size: u64,
    /// The last write or touch time, in nanoseconds since the Unix epoch.
    pub mtime_ns: i64,
}

/// Why an index body is not acceptable. Wrapped by the HTTP client into
/// [`Error::IncompleteIndex`](crate::Error::IncompleteIndex) or
/// [`Error::MalformedIndex`](crate::Error::MalformedIndex) with the service uuid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IndexError {
    /// The body ended without the blank end-of-index line.
    #[error("index ended without the blank end-of-index line")]
    MissingTerminator,
    /// Something follows the blank end-of-index line (a blank line that is not last).
    #[error("line {line_number}: data after a blank line (the end-of-index marker must be last)")]
    DataAfterTerminator {
        /// 1-based line number of the first line after the blank one.
        line_number: u64,
    },
    /// A line breaks the format, or its entry is outside the requested prefix.
    #[error("line {line_number}: {problem}: {line:?}")]
    Malformed {
        /// 1-based line number.
        line_number: u64,
        /// The line, truncated to 100 characters.
        line: String,
        /// What is wrong.
        problem: &'static str,
    },
}

/// Longest line kept while waiting for its end. A valid line has at most
/// 32 + 1 + 8 + 1 + 20 characters; longer ones are malformed and need not be held.
const MAX_LINE: usize = 128;
/// Characters of a bad line kept in the error.
const SHOWN_LINE: usize = 100;

/// The streaming index parser.
pub struct IndexParser {
    prefix: String,
    /// The current partial line (bounded by [`MAX_LINE`] + 1).
    partial: Vec<u8>,
    /// Lines completed so far.
    lines: u64,
    /// Whether the blank end-of-index line has been seen.
    terminated: bool,
}

impl fmt::Debug for IndexParser {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IndexParser")
            .field("prefix", &self.prefix)
            .field("lines", &self.lines)
            .field("terminated", &self.terminated)
            .finish_non_exhaustive()
    }
}

impl IndexParser {
    /// A parser for an index requested with `prefix` (lowercase hex, possibly empty).
    pub fn new(prefix: &str) -> IndexParser {
        IndexParser {
            prefix: prefix.to_owned(),
            partial: Vec::new(),
            lines: 0,
            terminated: false,
        }
    }

    /// Number of complete lines seen so far (entries plus the terminator).
    pub fn lines(&self) -> u64 {
        self.lines
    }

    /// Parses the next chunk of the body, calling `out` for each complete entry.
    ///
    /// # Errors
    /// An [`IndexError`] at the first bad line; the parser must not be used after.
    pub fn feed(
        &mut self,
        mut chunk: &[u8],
        out: &mut impl FnMut(IndexEntry),
    ) -> Result<(), IndexError> {
        while !chunk.is_empty() {
            if self.terminated {
                return Err(IndexError::DataAfterTerminator {
                    line_number: self.lines + 1,
                });
            }
            if self.partial.is_empty() {
                // Nearly every line: read it in place, without looking for its end first.
                if let Some((entry, len)) = parse_whole_line(chunk) {
                    self.lines += 1;
                    self.entry(entry, &chunk[..len - 1], out)?;
                    chunk = &chunk[len..];
                    continue;
                }
            }
            match memchr::memchr(b'\n', chunk) {
                Some(nl) => {
                    let (head, rest) = (&chunk[..nl], &chunk[nl + 1..]);
                    chunk = rest;
                    if self.partial.is_empty() {
                        self.line(head, out)?;
                    } else {
                        self.push_partial(head)?;
                        let line = std::mem::take(&mut self.partial);
                        self.line(&line, out)?;
                        // Reuse the allocation for the next split line.
                        self.partial = line;
                        self.partial.clear();
                    }
                }
                None => {
                    self.push_partial(chunk)?;
                    chunk = &[];
                }
            }
        }
        Ok(())
    }

    /// Checks that the body ended properly.
    ///
    /// # Errors
    /// [`IndexError::MissingTerminator`] if the blank end-of-index line was not seen
    /// (including when the body stops in the middle of a line).
    pub fn finish(self) -> Result<(), IndexError> {
        if self.terminated && self.partial.is_empty() {
            Ok(())
        } else {
            Err(IndexError::MissingTerminator)
        }
    }

    fn push_partial(&mut self, bytes: &[u8]) -> Result<(), IndexError> {
        self.partial.extend_from_slice(bytes);
        if self.partial.len() > MAX_LINE {
            return Err(self.malformed(&self.partial.clone(), self.lines + 1, "line too long"));
        }
        Ok(())
    }

    fn malformed(&self, line: &[u8], line_number: u64, problem: &'static str) -> IndexError {
        let text = String::from_utf8_lossy(line);
        IndexError::Malformed {
            line_number,
            line: text.chars().take(SHOWN_LINE).collect(),
            problem,
        }
    }

    fn line(&mut self, line: &[u8], out: &mut impl FnMut(IndexEntry)) -> Result<(), IndexError> {
        self.lines += 1;
        let n = self.lines;
        if line.is_empty() {
            self.terminated = true;
            return Ok(());
        }
        let entry = parse_line(line).map_err(|p| self.malformed(line, n, p))?;
        self.entry(entry, line, out)
    }

    /// Hands on the entry parsed from `line` (the latest line) if it has the prefix.
    fn entry(
        &self,
        entry: IndexEntry,
        line: &[u8],
        out: &mut impl FnMut(IndexEntry),
    ) -> Result<(), IndexError> {
        if !entry.hash.has_hex_prefix(&self.prefix) {
            let problem = "entry does not match the requested prefix";
            return Err(self.malformed(line, self.lines, problem));
        }
        out(entry);
        Ok(())
    }
}

/// The common case of [`parse_line`], fast: a well-formed line with its `\n` at the
/// start of `buf`, with no sign on the mtime and numbers short enough that they cannot
/// overflow a u64. Returns the entry and the line's length with its `\n`; `None` for
/// anything else (a line cut by the chunk, or anything unusual), which then goes
/// through the careful path, so both accept exactly the same lines.
#[inline]
fn parse_whole_line(buf: &[u8]) -> Option<(IndexEntry, usize)> {
    if buf.len() < 37 || buf[32] != b'+' {
        return None;
    }
    let hash = BlockHash::from_hex_bytes(&buf[..32])?;
    // 19 digits always fit in a u64; an mtime also has to fit in an i64 (below).
    let (size, size_end) = leading_digits(&buf[33..], 19)?;
    let mtime_start = 33 + size_end + 1;
    if buf.get(33 + size_end) != Some(&b' ') {
        return None;
    }
    let (mtime, mtime_len) = leading_digits(buf.get(mtime_start..)?, 19)?;
    let end = mtime_start + mtime_len;
    if buf.get(end) != Some(&b'\n') {
        return None;
    }
    let mtime = i64::try_from(mtime).ok()?;
    let entry = IndexEntry {
        hash,
        size,
        mtime_ns: mtime_ns(mtime),
    };
    Some((entry, end + 1))
}

/// The value of the 1 to `max` ASCII digits that start `s`, and how many there are;
/// `None` if there are none, or more than `max`.
#[inline]
fn leading_digits(s: &[u8], max: usize) -> Option<(u64, usize)> {
    let mut n = 0u64;
    for (i, &c) in s.iter().enumerate().take(max + 1) {
        let d = c.wrapping_sub(b'0');
        if d > 9 {
            return (i > 0).then_some((n, i));
        }
        if i == max {
            return None;
        }
        n = n * 10 + u64::from(d);
    }
    None
}

/// 2015 keepstores sent seconds (§14); Go keep-balance treats < 1e12 as seconds.
fn mtime_ns(mtime: i64) -> i64 {
    if mtime < 1_000_000_000_000 {
        mtime.saturating_mul(1_000_000_000)
    } else {
        mtime
    }
}

/// Parses `<32hex>+<size> <mtime>`. Hot: one call per index line, so no UTF-8
/// validation or iterator splitting, just byte scans (BENCHMARKS.md, S5).
fn parse_line(line: &[u8]) -> Result<IndexEntry, &'static str> {
    const FIELDS: &str = "expected exactly two space-separated fields";
    let sp = memchr::memchr(b' ', line).ok_or(FIELDS)?;
    let (loc, mtime) = (&line[..sp], &line[sp + 1..]);
    if loc.len() < 34 || loc[32] != b'+' {
        return Err("expected <32 hex digits>+<size>");
    }
    let hash =
        BlockHash::from_hex_bytes(&loc[..32]).ok_or("the hash is not 32 lowercase hex digits")?;
    let size = parse_u64(&loc[33..]).ok_or("the size is not a decimal number")?;
    let Some(mtime) = parse_i64(mtime) else {
        return Err(if mtime.contains(&b' ') {
            FIELDS
        } else {
            "the mtime is not a decimal integer"
        });
    };
    Ok(IndexEntry {
        hash,
        size,
        mtime_ns: mtime_ns(mtime),
    })
}

/// A non-empty run of ASCII digits that fits in a u64.
fn parse_u64(s: &[u8]) -> Option<u64> {
    if s.is_empty() || s.len() > 20 {
        return None;
    }
    s.iter().try_fold(0u64, |n, &c| {
        let d = c.wrapping_sub(b'0');
        if d > 9 {
            return None;
        }
        n.checked_mul(10)?.checked_add(u64::from(d))
    })
}

/// An optional `-` and a non-empty run of ASCII digits that fits in an i64.
fn parse_i64(s: &[u8]) -> Option<i64> {
    let (negative, digits) = match s.strip_prefix(b"-") {
        Some(d) => (true, d),
        None => (false, s),
    };
    if digits.len() > 19 {
        return None;
    }
    let n = parse_u64(digits)?;
    if negative {
        // i64::MIN's magnitude is one more than i64::MAX.
        0i64.checked_sub_unsigned(n)
    } else {
        i64::try_from(n).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FOO: &str = "acbd18db4cc2f85cedef654fccc4a4d8";
    const BAR: &str = "37b51d194a7513e45b56f6524f2d51f2";

    fn parse_chunks(prefix: &str, chunks: &[&[u8]]) -> Result<Vec<IndexEntry>, IndexError> {
        let mut p = IndexParser::new(prefix);
        let mut got = Vec::new();
        for c in chunks {
            p.feed(c, &mut |e| got.push(e))?;
        }
        p.finish()?;
        Ok(got)
    }

    fn parse(prefix: &str, body: &str) -> Result<Vec<IndexEntry>, IndexError> {
        parse_chunks(prefix, &[body.as_bytes()])
    }

    #[test]
    fn empty_and_simple() {
        assert_eq!(parse("", "\n").unwrap(), []);
        let body = format!("{FOO}+3 1700000000123456789\n{BAR}+3 1443559274\n\n");
        let got = parse("", &body).unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].hash, BlockHash::of(b"foo"));
        assert_eq!(got[0].size, 3);
        assert_eq!(got[0].mtime_ns, 1_700_000_000_123_456_789);
        // §13.5: seconds from a 2015 keepstore.
        assert_eq!(got[1].mtime_ns, 1_443_559_274_000_000_000);
    }

    #[test]
    fn every_split_point_gives_the_same_result() {
        let body = format!("{FOO}+3 1700000000123456789\n{BAR}+3 5\n{BAR}+3 6\n\n");
        let want = parse("", &body).unwrap();
        let b = body.as_bytes();
        for i in 0..=b.len() {
            for j in i..=b.len() {
                let got = parse_chunks("", &[&b[..i], &b[i..j], &b[j..]]).unwrap();
                assert_eq!(got, want, "split at {i},{j}");
            }
        }
        // Byte by byte.
        let chunks: Vec<&[u8]> = b.chunks(1).collect();
        assert_eq!(parse_chunks("", &chunks).unwrap(), want);
    }

    #[test]
    fn terminator_rules() {
        // §13.5: incomplete body.
        assert_eq!(
            parse("", &format!("{FOO}+3")),
            Err(IndexError::MissingTerminator)
        );
        assert_eq!(
            parse("", &format!("{FOO}+3 5\n")),
            Err(IndexError::MissingTerminator)
        );
        assert_eq!(parse("", ""), Err(IndexError::MissingTerminator));
        assert_eq!(
            parse("", &format!("{FOO}+3 5\n\n{BAR}+3 5\n\n")),
            Err(IndexError::DataAfterTerminator { line_number: 3 })
        );
        assert_eq!(
            parse("", "\n\n"),
            Err(IndexError::DataAfterTerminator { line_number: 2 })
        );
    }

    #[test]
    fn malformed_lines() {
        let bad = |body: &str, problem: &str| match parse("", body) {
            Err(IndexError::Malformed {
                line_number: 1,
                problem: p,
                ..
            }) => assert!(p.contains(problem), "{body:?}: {p}"),
            other => panic!("{body:?}: {other:?}"),
        };
        bad(&format!("{FOO}+3\n\n"), "two");
        bad(&format!("{FOO}+3 1 2\n\n"), "two");
        bad(&format!("{FOO}+3  1\n\n"), "two");
        bad(&format!("{FOO} 1\n\n"), "<size>");
        bad(&format!("{}+3 1\n\n", FOO.to_uppercase()), "hash");
        bad(&format!("{FOO}+x 1\n\n"), "size");
        bad(&format!("{FOO}+3 1x\n\n"), "mtime");
        bad(&format!("{FOO}+3 1\r\n\n"), "mtime");
        let long = "x".repeat(500);
        match parse("", &long) {
            Err(IndexError::Malformed { line, .. }) => assert_eq!(line.len(), 100),
            other => panic!("{other:?}"),
        }
    }

    /// Fuzz-style: random bytes in random chunks never panic, and a valid body
    /// split at random points always parses to the same entries.
    #[test]
    fn random_input_never_panics() {
        use rand::rngs::SmallRng;
        use rand::{Rng, SeedableRng};
        let mut rng = SmallRng::seed_from_u64(42);
        let alphabet = b"0123456789abcdef+ \n\nx-";
        for _ in 0..2000 {
            let len = rng.random_range(0..200);
            let body: Vec<u8> = (0..len)
                .map(|_| alphabet[rng.random_range(0..alphabet.len())])
                .collect();
            let mut p = IndexParser::new("");
            let mut rest = &body[..];
            let mut failed = false;
            while !rest.is_empty() && !failed {
                let n = rng.random_range(1..=rest.len());
                failed = p.feed(&rest[..n], &mut |_| {}).is_err();
                rest = &rest[n..];
            }
            if !failed {
                let _ = p.finish();
            }
        }
        let body = format!("{FOO}+3 1\n{BAR}+3 2\n\n");
        let want = parse("", &body).unwrap();
        for _ in 0..200 {
            let b = body.as_bytes();
            let i = rng.random_range(0..=b.len());
            let j = rng.random_range(i..=b.len());
            assert_eq!(
                parse_chunks("", &[&b[..i], &b[i..j], &b[j..]]).unwrap(),
                want
            );
        }
    }

    /// The fast path accepts exactly what the careful one does, with the same entry:
    /// valid lines with numbers of every length around the overflow limits, and random
    /// edits of them (seed printed).
    #[test]
    fn the_fast_path_agrees_with_the_careful_one() {
        use rand::rngs::SmallRng;
        use rand::{Rng, SeedableRng};
        let check = |line: &[u8]| {
            let mut buf = line.to_vec();
            buf.extend_from_slice(b"\nnext");
            let careful = parse_line(line).ok();
            match parse_whole_line(&buf) {
                Some((entry, len)) => {
                    assert_eq!(Some(entry), careful, "{:?}", String::from_utf8_lossy(line));
                    assert_eq!(len, line.len() + 1);
                }
                // Only unusual lines may take the careful path: a signed mtime, or
                // numbers long enough to need an overflow check.
                None => {
                    let text = String::from_utf8_lossy(line);
                    if careful.is_some() {
                        let (_, numbers) = text.split_at(33);
                        let (size, mtime) = numbers.split_once(' ').unwrap();
                        assert!(
                            size.len() > 19 || mtime.len() > 19 || mtime.starts_with('-'),
                            "{text:?}"
                        );
                    }
                }
            }
        };
        for size in [
            "0",
            "3",
            "67108864",
            "18446744073709551615",
            "18446744073709551616",
        ] {
            for mtime in [
                "0",
                "1443559274",
                "999999999999",
                "1700000000123456789",
                "9223372036854775807",
                "9223372036854775808",
                "-1",
                "-9223372036854775808",
                "99999999999999999999",
            ] {
                check(format!("{FOO}+{size} {mtime}").as_bytes());
            }
        }
        let seed = rand::rng().random::<u64>();
        println!("seed {seed}");
        let mut rng = SmallRng::seed_from_u64(seed);
        let alphabet = b"0123456789abcdefA+ -x\n";
        for _ in 0..20_000 {
            let mut line =
                format!("{FOO}+{} {}", rng.random::<u32>(), rng.random::<i64>() >> 1).into_bytes();
            for _ in 0..rng.random_range(0..3) {
                let i = rng.random_range(0..line.len());
                line[i] = alphabet[rng.random_range(0..alphabet.len())];
            }
            // A line never holds its own newline: the careful path splits there.
            if let Some(nl) = line.iter().position(|&c| c == b'\n') {
                line.truncate(nl);
            }
            check(&line);
        }
    }

    #[test]
    fn prefix_enforced() {
        let body = format!("{BAR}+3 5\n{BAR}+3 6\n\n");
        assert_eq!(parse("37b", &body).unwrap().len(), 2);
        match parse("acb", &body) {
            Err(IndexError::Malformed { problem, .. }) => assert!(problem.contains("prefix")),
            other => panic!("{other:?}"),
        }
    }
}
