//! Manifest text as the API server treats it when a collection is saved: the syntax
//! check (`Keep::Manifest.validate!`, sdk/ruby/lib/arvados/keep.rb), locator
//! rewriting (`Collection.munge_manifest_locators`), permission-hint stripping, the
//! portable data hash and the file statistics (services/api/app/models/collection.rb).
//! Pure functions: no I/O.

use md5::{Digest, Md5};

/// Rails `Keep::Locator::LOCATOR_REGEXP`:
/// `^([[:xdigit:]]{32})(\+([[:digit:]]+))?((\+([[:upper:]][[:alnum:]@_-]*))+)?\z`.
/// The size is optional here (unlike Go's `LocatorPattern`).
pub(crate) fn is_locator(tok: &str) -> bool {
    let b = tok.as_bytes();
    if b.len() < 32 || !b[..32].iter().all(u8::is_ascii_hexdigit) {
        return false;
    }
    let mut parts = tok[32..].split('+');
    if parts.next() != Some("") {
        return false;
    }
    let mut first = true;
    for p in parts {
        let pb = p.as_bytes();
        if first && !pb.is_empty() && pb.iter().all(u8::is_ascii_digit) {
            first = false;
            continue;
        }
        first = false;
        if pb.is_empty()
            || !pb[0].is_ascii_uppercase()
            || !pb[1..]
                .iter()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'@' | b'_' | b'-'))
        {
            return false;
        }
    }
    true
}

/// Whether the locator names the empty block (Rails `Blob#empty?`).
pub(crate) fn is_empty_block(tok: &str) -> bool {
    tok.strip_prefix("d41d8cd98f00b204e9800998ecf8427e")
        .is_some_and(|r| r.is_empty() || r.starts_with('+'))
}

/// Whether the token has a `+A` hint (Rails `Keep::Locator.parse(tok).signature`).
pub(crate) fn has_permission_hint(tok: &str) -> bool {
    is_locator(tok) && tok.split('+').skip(1).any(|h| h.starts_with('A'))
}

/// Backslash escapes of stream and file names (`\\` and `\ooo`).
fn unescape(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' {
            if b.get(i + 1) == Some(&b'\\') {
                out.push(b'\\');
                i += 2;
                continue;
            }
            if b.len() >= i + 4 && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
                let v = (u32::from(b[i + 1] - b'0') << 6)
                    | (u32::from(b[i + 2] - b'0') << 3)
                    | u32::from(b[i + 3] - b'0');
                out.push(v as u8);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    out
}

/// `[^\000-\040\\]|\\[0-3][0-7][0-7]`, repeated: a stream or file-name token's bytes.
fn escaped_token_ok(s: &str) -> bool {
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' {
            if b.len() >= i + 4
                && (b'0'..=b'3').contains(&b[i + 1])
                && (b'0'..=b'7').contains(&b[i + 2])
                && (b'0'..=b'7').contains(&b[i + 3])
            {
                i += 4;
                continue;
            }
            return false;
        }
        if b[i] <= 0x20 {
            return false;
        }
        i += 1;
    }
    !b.is_empty()
}

/// `[^\\]\\[4-7][0-7][0-7]`: an escape of a byte above 0xff in octal, not allowed.
fn has_non_8bit_escape(s: &str) -> bool {
    let b = s.as_bytes();
    (1..b.len()).any(|i| {
        b[i] == b'\\'
            && b[i - 1] != b'\\'
            && b.len() >= i + 4
            && (b'4'..=b'7').contains(&b[i + 1])
            && (b'0'..=b'7').contains(&b[i + 2])
            && (b'0'..=b'7').contains(&b[i + 3])
    })
}

fn stream_name_ok(word: &str) -> bool {
    if !escaped_token_ok(word) {
        return false;
    }
    let name = String::from_utf8_lossy(&unescape(word)).into_owned();
    // ^(\.)(\/[^\/]+)*$ and no "/." or "/.." component.
    let Some(rest) = name.strip_prefix('.') else {
        return false;
    };
    if rest.is_empty() {
        return true;
    }
    let Some(rest) = rest.strip_prefix('/') else {
        return false;
    };
    rest.split('/')
        .all(|c| !c.is_empty() && c != "." && c != "..")
}

fn file_token_ok(word: &str) -> bool {
    if unescape(word) == b"0:0:." {
        return true;
    }
    let mut it = word.splitn(3, ':');
    let (Some(a), Some(b), Some(name)) = (it.next(), it.next(), it.next()) else {
        return false;
    };
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|c| c.is_ascii_digit());
    if !digits(a) || !digits(b) || !escaped_token_ok(name) {
        return false;
    }
    let name = String::from_utf8_lossy(&unescape(name)).into_owned();
    name.split('/')
        .all(|c| !c.is_empty() && c != "." && c != "..")
}

/// Rails `Keep::Manifest.validate!`: `Err(message)` as the API server words it.
pub(crate) fn validate(text: &str) -> Result<(), String> {
    if text.is_empty() {
        return Ok(());
    }
    if !text.ends_with('\n') {
        return Err("Invalid manifest: does not end with newline".into());
    }
    for (n, line) in text.split_inclusive('\n').enumerate() {
        let n = n + 1;
        let body = line.strip_suffix('\n').unwrap_or(line);
        // Ruby's split(/ /) keeps empty words except trailing ones.
        let mut words: Vec<&str> = body.split(' ').collect();
        while words.last() == Some(&"") {
            words.pop();
        }
        let mut words = words.into_iter().peekable();
        let Some(stream) = words.next() else {
            return Err(format!(
                "Manifest invalid for stream {n}: missing stream name"
            ));
        };
        if has_non_8bit_escape(stream) {
            return Err(format!(
                "Manifest invalid for stream {n}: >8-bit encoded chars not allowed on stream token {stream:?}"
            ));
        }
        if !stream_name_ok(stream) {
            return Err(format!(
                "Manifest invalid for stream {n}: missing or invalid stream name {stream:?}"
            ));
        }
        let mut locators = 0;
        while words.peek().is_some_and(|w| is_locator(w)) {
            words.next();
            locators += 1;
        }
        if locators == 0 {
            let w = words.peek().map(|w| format!("{w:?}")).unwrap_or_default();
            return Err(format!(
                "Manifest invalid for stream {n}: missing or invalid locator {w}"
            ));
        }
        if let Some(w) = words.peek() {
            if has_non_8bit_escape(w) {
                return Err(format!(
                    "Manifest invalid for stream {n}: >8-bit encoded chars not allowed on file token {w:?}"
                ));
            }
        }
        let mut files = 0;
        while words.peek().is_some_and(|w| file_token_ok(w)) {
            words.next();
            files += 1;
        }
        if let Some(w) = words.next() {
            return Err(format!(
                "Manifest invalid for stream {n}: invalid file token {w:?}"
            ));
        }
        if files == 0 {
            return Err(format!("Manifest invalid for stream {n}: no file tokens"));
        }
        if line.ends_with(" \n") {
            return Err(format!("Manifest invalid for stream {n}: trailing space"));
        }
    }
    Ok(())
}

/// Rails `Collection.munge_manifest_locators`: each line right-stripped and split on
/// whitespace; every word after the first that is a locator is replaced by `f(word)`;
/// words rejoined by single spaces, every line ending in `\n`.
pub(crate) fn munge_locators(text: &str, mut f: impl FnMut(&str) -> String) -> String {
    if text.is_empty() {
        return String::new();
    }
    let mut lines = Vec::new();
    for line in text.split_inclusive('\n') {
        let mut words = Vec::new();
        for (i, w) in line.split_whitespace().enumerate() {
            if i > 0 && is_locator(w) {
                words.push(f(w));
            } else {
                words.push(w.to_owned());
            }
        }
        lines.push(words.join(" "));
    }
    lines.join("\n") + "\n"
}

/// The manifest without `+A` hints (`strip_signatures_and_update_replication_confirmed`).
pub(crate) fn strip_signatures(text: &str) -> String {
    munge_locators(text, crate::signature::strip_permission_hints)
}

/// The portable manifest: every locator reduced to `hash+size` (`portable_manifest_text`).
pub(crate) fn portable(text: &str) -> String {
    munge_locators(text, |w| {
        let mut it = w.split('+');
        let hash = it.next().unwrap_or("");
        match it.next() {
            Some(size) if !size.is_empty() && size.bytes().all(|c| c.is_ascii_digit()) => {
                format!("{hash}+{size}")
            }
            _ => hash.to_owned(),
        }
    })
}

/// The portable data hash: `md5(portable) + "+" + its length in bytes` (`compute_pdh`).
pub(crate) fn portable_data_hash(text: &str) -> String {
    let p = portable(text);
    format!("{}+{}", hex::encode(Md5::digest(p.as_bytes())), p.len())
}

/// Every locator word of the manifest (`each_manifest_locator`).
pub(crate) fn locators(text: &str) -> impl Iterator<Item = &str> {
    text.lines()
        .flat_map(|l| l.split_whitespace().skip(1))
        .filter(|w| is_locator(w))
}

/// `(file_count, file_size_total)` as `Keep::Manifest#files_count` / `#files_size`
/// count them: segments of one file (same stream and name) summed, and `0:0:.`
/// empty-directory markers not counted as files.
pub(crate) fn file_stats(text: &str) -> (u64, u64) {
    let mut files: std::collections::HashMap<(Vec<u8>, Vec<u8>), u64> = Default::default();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        let Some(stream) = words.next() else { continue };
        let stream = unescape(stream);
        let mut in_files = false;
        for w in words {
            if !in_files && is_locator(w) {
                continue;
            }
            in_files = true;
            let mut it = w.splitn(3, ':');
            let (Some(_), Some(size), Some(name)) = (it.next(), it.next(), it.next()) else {
                continue;
            };
            let size: u64 = size.parse().unwrap_or(0);
            let name = unescape(name);
            let (dir, base) = match name.iter().rposition(|&c| c == b'/') {
                Some(i) => {
                    let mut s = stream.clone();
                    s.push(b'/');
                    s.extend_from_slice(&name[..i]);
                    (s, name[i + 1..].to_vec())
                }
                None => (stream.clone(), name),
            };
            *files.entry((dir, base)).or_default() += size;
        }
    }
    let total = files.values().sum();
    let count = files
        .iter()
        .filter(|((_, n), size)| !(n.as_slice() == b"." && **size == 0))
        .count() as u64;
    (count, total)
}

#[cfg(test)]
mod tests {
    use super::*;

    const FOO: &str = "acbd18db4cc2f85cedef654fccc4a4d8";

    #[test]
    fn locators_as_rails_parses_them() {
        assert!(is_locator(FOO));
        assert!(is_locator(&format!("{FOO}+3")));
        assert!(is_locator(&format!("{FOO}+3+Aabc@123+K@zzzzz")));
        assert!(!is_locator(&format!("{FOO}+3+a")));
        assert!(!is_locator(&format!("{FOO}+")));
        assert!(!is_locator("0:3:foo"));
    }

    #[test]
    fn validates_like_keep_manifest() {
        assert!(validate("").is_ok());
        assert!(validate(&format!(". {FOO}+3 0:3:foo\n")).is_ok());
        assert!(validate(&format!("./a\\040b {FOO}+3 0:3:foo\\040bar 0:0:.\n")).is_ok());
        for bad in [
            format!(". {FOO}+3 0:3:foo"),
            format!(". {FOO}+3 0:3:foo \n"),
            format!(". {FOO}+3\n"),
            ". 0:3:foo\n".to_owned(),
            format!("a {FOO}+3 0:3:foo\n"),
            format!("./.. {FOO}+3 0:3:foo\n"),
            format!(". {FOO}+3 0:3:../foo\n"),
            format!(". {FOO}+3  0:3:foo\n"),
            "\n".to_owned(),
        ] {
            assert!(validate(&bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn pdh_strips_every_hint() {
        let m = format!(". {FOO}+3+Aabcdef@12345678+K@zzzzz 0:3:foo\n");
        assert_eq!(strip_signatures(&m), format!(". {FOO}+3+K@zzzzz 0:3:foo\n"));
        let p = format!(". {FOO}+3 0:3:foo\n");
        assert_eq!(portable(&m), p);
        assert_eq!(
            portable_data_hash(&m),
            format!("{}+{}", hex::encode(Md5::digest(p.as_bytes())), p.len())
        );
        // The well-known PDH of the empty collection.
        assert_eq!(portable_data_hash(""), "d41d8cd98f00b204e9800998ecf8427e+0");
    }

    #[test]
    fn counts_files() {
        let m = format!(". {FOO}+3 {FOO}+3 0:3:a 3:3:a 0:2:d/b\n./d {FOO}+3 0:1:b 0:0:.\n");
        assert_eq!(file_stats(&m), (2, 9));
    }
}
