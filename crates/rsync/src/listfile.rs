//! `--from-list FILE`: the blocks to copy, read from a file instead of the source's
//! indexes. The format is what `--failed-list` writes: a locator with its size hint
//! first on each line (anything after it, such as the failure kind, is ignored);
//! blank lines and lines starting with `#` are skipped. No I/O but the one read.

use std::path::Path;

use anyhow::{Context as _, Result, bail};
use keep_client::Locator;

/// The locators of `path`, unsigned, in file order (duplicates kept: the plan merges
/// them).
///
/// # Errors
/// The file cannot be read, or a line is not a locator with a size, naming the line.
pub fn read(path: &Path) -> Result<Vec<Locator>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("--from-list {}: cannot read it", path.display()))?;
    parse(&text).map_err(|e| anyhow::anyhow!("--from-list {}:{e}", path.display()))
}

/// Parses the text of a list (see the module docs); errors start with the line number.
pub fn parse(text: &str) -> Result<Vec<Locator>> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let first = line.split_whitespace().next().unwrap_or_default();
        let loc: Locator = match first.parse() {
            Ok(l) => l,
            Err(_) => bail!(
                "{}: {:?} is not a locator (hash+size, as --failed-list writes)",
                n + 1,
                short(first)
            ),
        };
        if loc.size().is_none() {
            bail!(
                "{}: {:?} has no size (write hash+size)",
                n + 1,
                short(first)
            );
        }
        out.push(Locator::new(loc.hash(), loc.size().unwrap_or(0)));
    }
    Ok(out)
}

/// At most 80 characters of a bad field, for the message.
fn short(s: &str) -> String {
    s.chars().take(80).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists() {
        let foo = "acbd18db4cc2f85cedef654fccc4a4d8+3";
        let text = format!(
            "# failures\n\n{foo} vanished\n  {foo}+Zhint\n37b51d194a7513e45b56f6524f2d51f2+3\n"
        );
        let l = parse(&text).unwrap();
        assert_eq!(l.len(), 3);
        assert_eq!(l[0].to_string(), foo);
        assert_eq!(l[1].to_string(), foo, "hints dropped");
        let e = parse("acbd18db4cc2f85cedef654fccc4a4d8\n").unwrap_err();
        assert!(
            e.to_string().starts_with("1: ") && e.to_string().contains("no size"),
            "{e}"
        );
        let e = parse("\nnot-a-locator x\n").unwrap_err();
        assert!(e.to_string().starts_with("2: "), "{e}");
    }
}
