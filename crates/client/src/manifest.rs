//! The blocks a collection's manifest text refers to. No I/O.
//!
//! A manifest is lines of space-separated tokens: a stream name, one or more block
//! locators, then file segments `pos:len:name`. Only the locators matter here, and
//! only their hash and size: permission hints (`+A...`) and any others are dropped, so
//! nothing secret survives a parse. This is the part of a manifest keep-balance reads
//! (`arvados.Collection.SizedDigests` in the Go SDK).

use crate::locator::{BlockHash, MAX_BLOCK_SIZE};

/// One block a manifest refers to: its hash and size.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlockRef {
    /// The MD5 of the block.
    pub hash: BlockHash,
    /// Its size in bytes.
    pub size: u32,
}

/// Why a manifest could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestError {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong.
    pub message: &'static str,
}

impl std::fmt::Display for ManifestError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "manifest line {}: {}", self.line, self.message)
    }
}

impl std::error::Error for ManifestError {}

/// Calls `f` for every block locator of `manifest`, in order (repeats included).
///
/// A token is a locator when it is 32 hex digits, `+`, and a decimal size, with any
/// hints after; the stream name (first token) and file segments are skipped.
///
/// # Errors
/// A stream line with no locator, or a locator-shaped token whose size is not a
/// number or larger than a Keep block: the manifest is not one Arvados would store.
pub fn for_each_block(manifest: &str, mut f: impl FnMut(BlockRef)) -> Result<(), ManifestError> {
    for (n, line) in manifest.split('\n').enumerate() {
        if line.is_empty() {
            continue;
        }
        let err = |message| ManifestError {
            line: n + 1,
            message,
        };
        let mut tokens = line.split(' ');
        tokens.next(); // the stream name
        let mut blocks = 0usize;
        for token in tokens {
            let b = token.as_bytes();
            if b.len() < 34 || b[32] != b'+' {
                break; // the first file segment: no more locators on this line
            }
            let Some(hash) = BlockHash::from_hex_bytes(&b[..32]) else {
                break;
            };
            let rest = &token[33..];
            let size = rest.split('+').next().unwrap_or_default();
            let size: u64 = size
                .parse()
                .map_err(|_| err("a locator's size is not a number"))?;
            if size > MAX_BLOCK_SIZE {
                return Err(err("a locator's size is larger than a Keep block"));
            }
            f(BlockRef {
                hash,
                size: size as u32,
            });
            blocks += 1;
        }
        if blocks == 0 {
            return Err(err("a stream with no block locator"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blocks(m: &str) -> Result<Vec<String>, ManifestError> {
        let mut v = Vec::new();
        for_each_block(m, |b| v.push(format!("{}+{}", b.hash, b.size)))?;
        Ok(v)
    }

    /// Manifests from the Arvados documentation's "Manifest format" page and the
    /// empty-file case (`d41d8cd98f00b204e9800998ecf8427e+0` is MD5 of nothing).
    #[test]
    fn reads_locators_and_drops_hints() {
        let m = ". 930625b054ce894ac40596c3f5a0d947+33+A1f27a35dd9af37191d63ad8eb8985624451e7b79@5bd0f0a4 0:33:md5sum.txt\n\
                 ./subdir acbd18db4cc2f85cedef654fccc4a4d8+3+K@zzzzz 37b51d194a7513e45b56f6524f2d51f2+3 0:3:foo 3:3:bar\n\
                 . d41d8cd98f00b204e9800998ecf8427e+0 0:0:empty.txt\n";
        assert_eq!(
            blocks(m).unwrap(),
            vec![
                "930625b054ce894ac40596c3f5a0d947+33",
                "acbd18db4cc2f85cedef654fccc4a4d8+3",
                "37b51d194a7513e45b56f6524f2d51f2+3",
                "d41d8cd98f00b204e9800998ecf8427e+0",
            ]
        );
        assert_eq!(blocks("").unwrap(), Vec::<String>::new());
    }

    #[test]
    fn refuses_what_arvados_would_not_store() {
        let e = blocks(". 0:3:foo\n").unwrap_err();
        assert_eq!(e.line, 1);
        let e = blocks(". acbd18db4cc2f85cedef654fccc4a4d8+3 0:3:foo\n. acbd18db4cc2f85cedef654fccc4a4d8+x 0:3:foo\n")
            .unwrap_err();
        assert_eq!(e.line, 2);
        assert!(e.to_string().contains("size"), "{e}");
        let e = blocks(". acbd18db4cc2f85cedef654fccc4a4d8+67108865 0:3:foo\n").unwrap_err();
        assert!(e.to_string().contains("larger"), "{e}");
    }
}
