//! Block locators: `hash+size+hints` (protocol §1). Parsing and formatting only; no I/O.
//!
//! A [`Locator`] may carry a permission signature (`+A...`), which is a secret: anyone
//! holding it can read the block. So [`Display`](std::fmt::Display) and
//! [`Debug`](std::fmt::Debug) show only `hash+size`; the full wire form, hints and all,
//! comes only from [`Locator::to_wire`], whose name makes the leak visible at the call site.

use std::fmt;
use std::str::FromStr;

use md5::{Digest, Md5};

/// The largest block Keep stores: 64 MiB (`keepstore.BlockSize = 1<<26`, §1.3).
pub const MAX_BLOCK_SIZE: u64 = 1 << 26;

/// The MD5 of a block's content, held as 16 bytes (not 32 hex characters) so that
/// hundreds of millions of them fit in memory.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct BlockHash(pub [u8; 16]);

impl BlockHash {
    /// The hash of the empty block, `d41d8cd98f00b204e9800998ecf8427e` (§1.4).
    pub const EMPTY: BlockHash = BlockHash([
        0xd4, 0x1d, 0x8c, 0xd9, 0x8f, 0x00, 0xb2, 0x04, 0xe9, 0x80, 0x09, 0x98, 0xec, 0xf8, 0x42,
        0x7e,
    ]);

    /// Computes the MD5 of `data`.
    pub fn of(data: &[u8]) -> BlockHash {
        BlockHash(Md5::digest(data).into())
    }

    /// Parses exactly 32 **lowercase** hex digits, as keepstore requires (§1.1).
    ///
    /// # Errors
    /// [`LocatorError::BadHash`] for any other input.
    pub fn from_hex(s: &str) -> Result<BlockHash, LocatorError> {
        Self::from_hex_bytes(s.as_bytes()).ok_or(LocatorError::BadHash)
    }

    /// Like [`BlockHash::from_hex`] on raw bytes, for parsers that never build a `str`
    /// (the index parser). Returns `None` unless `s` is 32 lowercase hex digits.
    #[inline]
    pub fn from_hex_bytes(s: &[u8]) -> Option<BlockHash> {
        let s: &[u8; 32] = s.try_into().ok()?;
        let mut out = [0u8; 16];
        // Eight digits at a time in a u64, one check at the end: index parsing decodes
        // a hash per line, hundreds of millions of times in a migration (BENCHMARKS.md,
        // S5), and a table lookup per digit was a tenth of S5's CPU.
        let mut valid = true;
        for (o, digits) in out.chunks_exact_mut(4).zip(s.chunks_exact(8)) {
            let x = u64::from_le_bytes(digits.try_into().expect("8 digits"));
            let (bytes, ok) = hex8(x);
            o.copy_from_slice(&bytes);
            valid &= ok;
        }
        valid.then_some(BlockHash(out))
    }

    /// The 32 lowercase hex digits.
    pub fn to_hex(&self) -> String {
        let mut s = String::with_capacity(32);
        self.write_hex(&mut s);
        s
    }

    /// Appends the 32 lowercase hex digits to `out` (no allocation of its own).
    pub fn write_hex(&self, out: &mut String) {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        for b in self.0 {
            out.push(DIGITS[(b >> 4) as usize] as char);
            out.push(DIGITS[(b & 15) as usize] as char);
        }
    }

    /// The first hex digit (0..=15), used to group work by prefix.
    pub fn first_nibble(&self) -> u8 {
        self.0[0] >> 4
    }

    /// Whether the hex form of this hash starts with `prefix` (lowercase hex, up to 32 digits).
    pub fn has_hex_prefix(&self, prefix: &str) -> bool {
        let p = prefix.as_bytes();
        if p.len() > 32 {
            return false;
        }
        p.iter().enumerate().all(|(i, &c)| {
            let b = self.0[i / 2];
            let nib = if i % 2 == 0 { b >> 4 } else { b & 15 };
            lower_hex_val(c) == Some(nib)
        })
    }
}

fn lower_hex_val(c: u8) -> Option<u8> {
    let v = HEX_VAL[usize::from(c)];
    (v & INVALID == 0).then_some(v)
}

/// Decodes eight lowercase hex digits (byte `k` of `x` is digit `k`) into four bytes,
/// and says whether all eight were lowercase hex digits. No branches or lookups: each
/// step works on all eight bytes at once ("SWAR").
#[inline]
fn hex8(x: u64) -> ([u8; 4], bool) {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    // For bytes below 0x80 (checked below) neither subtraction borrows across bytes:
    // the high bit of each byte of `at_least(lo)` is set iff that byte is >= lo, and
    // of `at_most(hi)` iff it is <= hi. Other bytes make garbage, never a panic.
    let at_least = |lo: u8| (x | HIGH).wrapping_sub(u64::from(lo) * ONES) & HIGH;
    let at_most = |hi: u8| (u64::from(hi | 0x80) * ONES).wrapping_sub(x) & HIGH;
    let digit = at_least(b'0') & at_most(b'9');
    let letter = at_least(b'a') & at_most(b'f');
    let valid = x & HIGH == 0 && digit | letter == HIGH;
    // '0'..'9' have their value in the low nibble; 'a'..'f' have 1..6 there, plus 9.
    let nibbles = (x & (0x0f * ONES)) + (letter >> 7) * 9;
    // Each 16-bit lane holds (first digit, second digit): make its low byte their value.
    let pairs = ((nibbles << 4) | (nibbles >> 8)) & 0x00ff_00ff_00ff_00ff;
    // Gather the four low bytes together.
    let pairs = (pairs | (pairs >> 8)) & 0x0000_ffff_0000_ffff;
    let packed = (pairs | (pairs >> 16)) as u32;
    (packed.to_le_bytes(), valid)
}

/// Marks a byte that is not a lowercase hex digit in [`HEX_VAL`].
const INVALID: u8 = 0x10;

/// The value of each lowercase hex digit; [`INVALID`] for every other byte.
const HEX_VAL: [u8; 256] = {
    let mut t = [INVALID; 256];
    let mut i = 0;
    while i < 10 {
        t[b'0' as usize + i] = i as u8;
        i += 1;
    }
    let mut i = 0;
    while i < 6 {
        t[b'a' as usize + i] = 10 + i as u8;
        i += 1;
    }
    t
};

impl fmt::Display for BlockHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for BlockHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BlockHash({self})")
    }
}

impl FromStr for BlockHash {
    type Err = LocatorError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        BlockHash::from_hex(s)
    }
}

/// Why a string is not a locator. The variants never carry the input, because the
/// input may hold a signature.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LocatorError {
    /// The hash is not 32 lowercase hex digits.
    #[error("the hash is not 32 lowercase hex digits")]
    BadHash,
    /// A `+` with nothing after it (leading, trailing or doubled `+`).
    #[error("empty hint (a leading, trailing or doubled '+')")]
    EmptyHint,
    /// A numeric part after a non-numeric hint: the size must come first.
    #[error("the size must be the first hint")]
    SizeNotFirst,
    /// The size is not a decimal number that fits in 64 bits.
    #[error("the size is not a decimal number")]
    BadSize,
    /// The size hint is larger than 64 MiB.
    #[error("the size exceeds the 64 MiB block limit")]
    TooLarge,
    /// The size hint is required here and absent.
    #[error("the locator has no size hint")]
    MissingSize,
    /// A hint does not match the documented grammar `[A-Z][-A-Za-z0-9@_]*` (strict parsing only).
    #[error("a hint is not of the form [A-Z][-A-Za-z0-9@_]*")]
    BadHint,
}

/// A parsed block locator: hash, optional size, and the remaining hints verbatim.
///
/// [`Locator::from_str`] follows keepstore's `getLocatorInfo` (§1.1): lowercase
/// 32-hex hash, no empty parts, a numeric second part is the size, no later part may
/// start with a digit, hint contents are otherwise kept as they are. In addition a size
/// above [`MAX_BLOCK_SIZE`] is refused. [`Locator::parse_strict`] adds the documented
/// hint grammar and requires the size.
#[derive(Clone, PartialEq, Eq)]
pub struct Locator {
    hash: BlockHash,
    size: Option<u64>,
    /// Hints after the size, without their leading `+`, in their original order.
    hints: Vec<String>,
}

impl Locator {
    /// A locator with a hash and a size and no hints.
    pub fn new(hash: BlockHash, size: u64) -> Locator {
        Locator {
            hash,
            size: Some(size),
            hints: Vec::new(),
        }
    }

    /// The locator of `data`: its MD5 and length.
    pub fn of(data: &[u8]) -> Locator {
        Locator::new(BlockHash::of(data), data.len() as u64)
    }

    /// Parses with the documented grammar (§1.1): the size is required and every hint
    /// matches `[A-Z][-A-Za-z0-9@_]*`; a signature hint must be `A<40 hex>@<1-8 hex>`.
    ///
    /// # Errors
    /// A [`LocatorError`] saying which rule failed.
    pub fn parse_strict(s: &str) -> Result<Locator, LocatorError> {
        let loc: Locator = s.parse()?;
        if loc.size.is_none() {
            return Err(LocatorError::MissingSize);
        }
        for h in &loc.hints {
            let mut chars = h.chars();
            let first = chars.next().ok_or(LocatorError::EmptyHint)?;
            if !first.is_ascii_uppercase()
                || !chars.all(|c| c.is_ascii_alphanumeric() || "-@_".contains(c))
            {
                return Err(LocatorError::BadHint);
            }
            if first == 'A' && parse_signature_hint(h).is_none() {
                return Err(LocatorError::BadHint);
            }
        }
        Ok(loc)
    }

    /// The block hash.
    pub fn hash(&self) -> BlockHash {
        self.hash
    }

    /// The size hint, if the locator has one.
    pub fn size(&self) -> Option<u64> {
        self.size
    }

    /// The hints after the size, verbatim and without their `+`. May include a
    /// signature: treat as secret.
    pub fn hints(&self) -> &[String] {
        &self.hints
    }

    /// Whether a permission hint (`+A...`) is present (keepstore's "signed" test).
    pub fn is_signed(&self) -> bool {
        self.hints.iter().any(|h| h.starts_with('A'))
    }

    /// Whether a remote-cluster hint (`+R...`) is present.
    pub fn is_remote(&self) -> bool {
        self.hints.iter().any(|h| h.starts_with('R'))
    }

    /// Appends a hint (without its leading `+`).
    pub fn push_hint(&mut self, hint: impl Into<String>) {
        self.hints.push(hint.into());
    }

    /// A copy without any `+A` permission hints (what `SignManifest` strips first).
    pub fn without_signature(&self) -> Locator {
        Locator {
            hash: self.hash,
            size: self.size,
            hints: self
                .hints
                .iter()
                .filter(|h| !h.starts_with('A'))
                .cloned()
                .collect(),
        }
    }

    /// `hash+size` (or just the hash when there is no size): safe to log.
    pub fn unsigned(&self) -> String {
        let mut s = self.hash.to_hex();
        if let Some(size) = self.size {
            s.push('+');
            s.push_str(&size.to_string());
        }
        s
    }

    /// The full wire form with every hint, signatures included. **Secret** when signed:
    /// use it for request paths only, never for logs or messages.
    pub fn to_wire(&self) -> String {
        let mut s = self.unsigned();
        for h in &self.hints {
            s.push('+');
            s.push_str(h);
        }
        s
    }
}

impl FromStr for Locator {
    type Err = LocatorError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut parts = s.split('+');
        let hash = BlockHash::from_hex(parts.next().unwrap_or(""))?;
        let mut size = None;
        let mut hints = Vec::new();
        for (i, part) in parts.enumerate() {
            if part.is_empty() {
                return Err(LocatorError::EmptyHint);
            }
            let starts_digit = part.as_bytes()[0].is_ascii_digit();
            if i == 0 && starts_digit {
                let n: u64 = part.parse().map_err(|_| LocatorError::BadSize)?;
                if n > MAX_BLOCK_SIZE {
                    return Err(LocatorError::TooLarge);
                }
                size = Some(n);
            } else if starts_digit {
                return Err(LocatorError::SizeNotFirst);
            } else {
                hints.push(part.to_owned());
            }
        }
        Ok(Locator { hash, size, hints })
    }
}

/// Shows `hash+size` only: signatures never reach logs through `{}`.
impl fmt::Display for Locator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.unsigned())
    }
}

impl fmt::Debug for Locator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let redacted = self.hints.iter().filter(|h| h.starts_with('A')).count();
        write!(f, "Locator({}", self.unsigned())?;
        for h in self.hints.iter().filter(|h| !h.starts_with('A')) {
            write!(f, "+{h}")?;
        }
        if redacted > 0 {
            write!(f, " +A<redacted>")?;
        }
        write!(f, ")")
    }
}

/// Splits a signature hint `A<sig>@<expiry>` (without `+`) into its two parts, when the
/// signature is 40 hex digits and the expiry 1 to 8 hex digits (the Python rule).
pub(crate) fn parse_signature_hint(h: &str) -> Option<(&str, &str)> {
    let rest = h.strip_prefix('A')?;
    let (sig, exp) = rest.split_once('@')?;
    let hex = |s: &str| s.bytes().all(|c| c.is_ascii_hexdigit());
    (sig.len() == 40 && hex(sig) && (1..=8).contains(&exp.len()) && hex(exp)).then_some((sig, exp))
}

#[cfg(test)]
mod tests {
    use super::*;

    const A32: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";

    #[test]
    fn hash_roundtrip_and_md5() {
        assert_eq!(
            BlockHash::of(b"foo").to_hex(),
            "acbd18db4cc2f85cedef654fccc4a4d8"
        );
        assert_eq!(BlockHash::of(b""), BlockHash::EMPTY);
        assert_eq!(
            BlockHash::EMPTY.to_string(),
            "d41d8cd98f00b204e9800998ecf8427e"
        );
        let h = BlockHash::from_hex("37b51d194a7513e45b56f6524f2d51f2").unwrap();
        assert_eq!(h, BlockHash::of(b"bar"));
        assert!(h.has_hex_prefix("37b"));
        assert!(h.has_hex_prefix(""));
        assert!(!h.has_hex_prefix("38"));
        assert_eq!(h.first_nibble(), 3);
    }

    /// Every byte value at every position of a hash: only '0'-'9' and 'a'-'f' pass, and
    /// what passes decodes as `u8::from_str_radix` reads the pair (std, not our code).
    #[test]
    fn every_byte_at_every_position_of_a_hash() {
        let base = *b"0123456789abcdeffedcba9876543210";
        for pos in 0..32 {
            for c in 0..=255u8 {
                let mut s = base;
                s[pos] = c;
                let want_ok = c.is_ascii_digit() || (b'a'..=b'f').contains(&c);
                let got = BlockHash::from_hex_bytes(&s);
                assert_eq!(got.is_some(), want_ok, "byte {c:#04x} at {pos}");
                if let Some(h) = got {
                    for (i, pair) in s.chunks(2).enumerate() {
                        let text = std::str::from_utf8(pair).unwrap();
                        assert_eq!(h.0[i], u8::from_str_radix(text, 16).unwrap());
                    }
                }
            }
        }
        assert_eq!(BlockHash::from_hex_bytes(&base[..31]), None);
        assert_eq!(BlockHash::from_hex_bytes(&[b'0'; 33]), None);
    }

    /// §13.4, keepstore `getLocatorInfo`: accepted.
    #[test]
    fn keepstore_accepts() {
        let l: Locator = A32.parse().unwrap();
        assert_eq!(l.size(), None); // keepstore reads this as size 0
        let l: Locator = format!("{A32}+1234").parse().unwrap();
        assert_eq!(l.size(), Some(1234));
        let l: Locator = format!("{A32}+1234+Abcdef@abcdef").parse().unwrap();
        assert!(l.is_signed());
        let l: Locator = format!("{A32}+1234+Rzzzzz-abcdef").parse().unwrap();
        assert!(l.is_remote() && !l.is_signed());
        let l: Locator = format!("{A32}+12345+Zexample+Rzzzzz-abcdef")
            .parse()
            .unwrap();
        assert!(l.is_remote());
        let l: Locator = format!("{A32}+123456+👶🦈+Rzzzzz-abcdef").parse().unwrap();
        assert!(l.is_remote());
        assert_eq!(l.hints()[0], "👶🦈");
    }

    /// §13.4, keepstore `getLocatorInfo`: rejected.
    #[test]
    fn keepstore_rejects() {
        let bad_hashes = [
            "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaz".to_string(),
            "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaF".to_string(),
            "aaaaaaaaaaaaaaaaaaaaaaaaaaaaa⛵".to_string(),
            String::new(),
            "a".repeat(31),
            "a".repeat(33),
        ];
        for h in &bad_hashes {
            assert_eq!(h.parse::<Locator>(), Err(LocatorError::BadHash), "{h}");
            assert_eq!(
                format!("{h}+1234").parse::<Locator>(),
                Err(LocatorError::BadHash),
                "{h}+1234"
            );
        }
        assert_eq!(
            format!("{A32}+Abcdef+1234").parse::<Locator>(),
            Err(LocatorError::SizeNotFirst)
        );
        assert_eq!(
            format!("+{A32}+1234").parse::<Locator>(),
            Err(LocatorError::BadHash)
        );
        for s in [
            format!("{A32}+1234+"),
            format!("{A32}++1234"),
            format!("{A32}+1234++Abcdef@abcdef"),
        ] {
            assert_eq!(s.parse::<Locator>(), Err(LocatorError::EmptyHint), "{s}");
        }
    }

    /// §13.4, Go `MakeLocator`: hints kept and round-tripped verbatim.
    #[test]
    fn go_makelocator_cases() {
        let s = "91f372a266fe2bf2823cb8ec7fda31ce+3+Aabcde@12345678";
        let l: Locator = s.parse().unwrap();
        assert_eq!(l.hash().to_hex(), "91f372a266fe2bf2823cb8ec7fda31ce");
        assert_eq!(l.size(), Some(3));
        assert_eq!(l.hints(), ["Aabcde@12345678"]);
        assert_eq!(l.to_wire(), s);

        let l: Locator = "91f372a266fe2bf2823cb8ec7fda31ce".parse().unwrap();
        assert_eq!((l.size(), l.hints().len()), (None, 0));

        let l: Locator = "91f372a266fe2bf2823cb8ec7fda31ce+Aabcde@12345678"
            .parse()
            .unwrap();
        assert_eq!(
            (l.size(), l.hints()),
            (None, &["Aabcde@12345678".to_string()][..])
        );

        let s = "91f372a266fe2bf2823cb8ec7fda31ce+3+Unknown+Kzzzzz+Afoobar";
        assert_eq!(s.parse::<Locator>().unwrap().to_wire(), s);

        assert_eq!(
            "91f372a266fe2bf2823cb8ec7fda31c".parse::<Locator>(),
            Err(LocatorError::BadHash)
        );
    }

    /// §13.4, Python `KeepLocator` and the documented grammar (§1.1), via `parse_strict`.
    #[test]
    fn strict_cases() {
        let base = "8f9e68d957b504a29ba76c526c3145d9";
        for bad in [
            "",
            "badbadbad",
            "8f9e68d957b504a29ba76c526c3145dj",
            "+8f9e68d957b504a29ba76c526c3145d9",
            "3+8f9e68d957b504a29ba76c526c3145d9",
        ] {
            assert!(Locator::parse_strict(bad).is_err(), "{bad:?}");
        }
        for bad_hint in ["", "A", "lowercase", "+32"] {
            let s = format!("{base}+3+{bad_hint}");
            assert!(Locator::parse_strict(&s).is_err(), "{s:?}");
        }
        let s = format!("{base}+3+Zfoo+Ybar234+Xa@b_c-372+W99+Kab1cd+Kef2gh+Kij3kl");
        assert_eq!(Locator::parse_strict(&s).unwrap().to_wire(), s);
        let s = format!("{base}+3+Kij3kl+Kab1cd+Kef2gh");
        assert!(Locator::parse_strict(&s).is_ok());

        // The documentation's own examples (§1.1).
        let e = "d41d8cd98f00b204e9800998ecf8427e";
        for good in [
            format!("{e}+0"),
            format!("{e}+0+Z"),
            format!("{e}+0+Z+Ada39a3ee5e6b4b0d3255bfef95601890afd80709@53bed294"),
            "930625b054ce894ac40596c3f5a0d947+33+Rzzzzz-1f27a35dd9af37191d63ad8eb8985624451e7b79@5835c8bc".into(),
        ] {
            assert!(Locator::parse_strict(&good).is_ok(), "{good}");
        }
        for bad in [
            e.to_string(),
            format!("{e}+Z+0"),
            format!("{e}+0+0"),
            format!("{e}+0+z"),
            format!("{e}+0+Zfoo*bar"),
        ] {
            assert!(Locator::parse_strict(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn block_size_limit() {
        let e = "d41d8cd98f00b204e9800998ecf8427e";
        assert!(format!("{e}+67108864").parse::<Locator>().is_ok());
        assert_eq!(
            format!("{e}+67108865").parse::<Locator>(),
            Err(LocatorError::TooLarge)
        );
        assert_eq!(
            format!("{e}+99999999999999999999999").parse::<Locator>(),
            Err(LocatorError::BadSize)
        );
        assert_eq!(format!("{e}+0").parse::<Locator>().unwrap().size(), Some(0));
    }

    #[test]
    fn display_and_debug_hide_signatures() {
        let s = "acbd18db4cc2f85cedef654fccc4a4d8+3+A89118b78732c33104a4d6231e8b5a5fa1e4301e3@7fffffff+Zfoo";
        let l: Locator = s.parse().unwrap();
        assert_eq!(l.to_string(), "acbd18db4cc2f85cedef654fccc4a4d8+3");
        let dbg = format!("{l:?}");
        assert!(!dbg.contains("89118b"), "{dbg}");
        assert!(dbg.contains("Zfoo"));
        assert_eq!(
            l.without_signature().to_wire(),
            "acbd18db4cc2f85cedef654fccc4a4d8+3+Zfoo"
        );
    }
}
