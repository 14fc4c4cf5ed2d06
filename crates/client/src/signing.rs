//! Permission signatures: `+A<hmac-sha1>@<expiry>` (protocol §3). Pure computation; no I/O.
//!
//! keepstore recomputes the HMAC over `hash@token@expiry[@ttl]` with its blob signing
//! key. It never asks the API whether the token is valid (§2), so whoever holds the
//! key can mint a readable locator for any token string: keep-rsync does exactly that
//! on the source cluster (§10).

use std::fmt;
use std::time::Duration;

use hmac::{Hmac, Mac};
use sha1::Sha1;

use crate::locator::{BlockHash, Locator};

/// An Arvados API token (v1 `secret` or v2 `v2/<uuid>/<secret>`), signed verbatim (§2).
/// `Debug` and `Display` never show it.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(String);

impl Token {
    /// Wraps a token string, trimming surrounding whitespace (a token file's newline).
    pub fn new(s: impl Into<String>) -> Token {
        let s = s.into();
        let t = s.trim();
        Token(if t.len() == s.len() { s } else { t.to_owned() })
    }

    /// The secret itself, for an `Authorization` header or an HMAC. Never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// A fresh random token of 50 alphanumerics, worth nothing to anyone: keepstore
    /// checks only that a read's signature was made for the token sent with it (§2),
    /// so a client that signs its own reads can use one instead of a real token.
    pub fn random() -> Token {
        use rand::Rng as _;
        const A: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
        let mut rng = rand::rng();
        Token(
            (0..50)
                .map(|_| A[rng.random_range(0..A.len())] as char)
                .collect(),
        )
    }

    /// Whether the token is empty (an empty token disables signing, as in `SignLocator`).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

impl fmt::Display for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted token>")
    }
}

/// A cluster's blob signing key (`Collections.BlobSigningKey`), used as raw bytes.
/// `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct SigningKey(Vec<u8>);

impl SigningKey {
    /// Wraps key bytes. Old keepstores read the key from a file and trimmed whitespace
    /// (§3.1), so surrounding whitespace is trimmed here too.
    pub fn new(key: impl AsRef<[u8]>) -> SigningKey {
        SigningKey(key.as_ref().trim_ascii().to_vec())
    }

    /// Whether the key is empty (an empty key disables signing).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SigningKey(<redacted>)")
    }
}

/// Which message the HMAC covers (§3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignatureFormat {
    /// `hash@token@expiry@ttl_hex`: every Arvados since 2016-04 (1.0 and later).
    Current {
        /// The signer's `Collections.BlobSigningTTL`. A verifier uses its own TTL, so a
        /// signer must use the verifying cluster's value.
        ttl: Duration,
    },
    /// `hash@token@expiry`: clusters before 2016-04-21 (#8936).
    Legacy,
}

/// Why a signature did not verify (Go `arvados.VerifySignature`, §3.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// No well-formed `+A<40 hex>@<8 hex>` hint, or another hint of the wrong form.
    #[error("missing signature")]
    Missing,
    /// The HMAC does not match (wrong key, token or TTL), or the expiry is unparsable.
    #[error("invalid signature")]
    Invalid,
    /// The expiry time has passed. Checked before the HMAC, as Go does.
    #[error("signature expired")]
    Expired,
}

fn hmac_hex(
    key: &SigningKey,
    hash: &BlockHash,
    token: &Token,
    expiry_hex: &str,
    format: SignatureFormat,
) -> String {
    let mut mac = Hmac::<Sha1>::new_from_slice(&key.0).expect("HMAC accepts keys of any length");
    mac.update(hash.to_hex().as_bytes());
    mac.update(b"@");
    mac.update(token.expose().as_bytes());
    mac.update(b"@");
    mac.update(expiry_hex.as_bytes());
    if let SignatureFormat::Current { ttl } = format {
        mac.update(format!("@{:x}", ttl.as_secs()).as_bytes());
    }
    hex::encode(mac.finalize().into_bytes())
}

/// The 40-hex HMAC for `hash` (what follows `+A`, before the `@`).
pub fn signature(
    key: &SigningKey,
    hash: &BlockHash,
    token: &Token,
    expiry_unix: u64,
    format: SignatureFormat,
) -> String {
    hmac_hex(key, hash, token, &format!("{expiry_unix:08x}"), format)
}

/// Returns `locator` with `+A<sig>@<expiry>` appended, as Go `SignLocator` does; an
/// existing signature is removed first. With an empty key or token the locator comes
/// back unchanged (§3.1).
pub fn sign(
    locator: &Locator,
    key: &SigningKey,
    token: &Token,
    expiry_unix: u64,
    format: SignatureFormat,
) -> Locator {
    let mut out = locator.without_signature();
    if key.is_empty() || token.is_empty() {
        return locator.clone();
    }
    let sig = signature(key, &locator.hash(), token, expiry_unix, format);
    out.push_hint(format!("A{sig}@{expiry_unix:08x}"));
    out
}

/// Verifies the signature in a locator string, like Go `VerifySignature` (§3.2):
/// the form is checked first (`Missing`), then the expiry against `now_unix`
/// (`Expired`), then the HMAC (`Invalid`).
///
/// # Errors
/// The [`SignatureError`] that applies.
pub fn verify(
    locator: &str,
    key: &SigningKey,
    token: &Token,
    now_unix: u64,
    format: SignatureFormat,
) -> Result<(), SignatureError> {
    let (hash_hex, sig, exp) = match_signed_locator(locator).ok_or(SignatureError::Missing)?;
    let expiry = u64::from_str_radix(exp, 16).map_err(|_| SignatureError::Invalid)?;
    if expiry < now_unix {
        return Err(SignatureError::Expired);
    }
    // Go's regex accepts uppercase hex; the HMAC is over the hash as written.
    let hash =
        BlockHash::from_hex(&hash_hex.to_ascii_lowercase()).map_err(|_| SignatureError::Missing)?;
    if hash_hex.bytes().any(|c| c.is_ascii_uppercase()) {
        // An uppercase hash cannot match a signature over the lowercase form.
        return Err(SignatureError::Invalid);
    }
    let want = hmac_hex(key, &hash, token, exp, format);
    if constant_time_eq(want.as_bytes(), sig.to_ascii_lowercase().as_bytes()) {
        Ok(())
    } else {
        Err(SignatureError::Invalid)
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Matches Go's `SignedLocatorRe` (§1.1): 32 hex, optional `+size`, hints starting
/// B–Z, exactly one `+A<40 hex>@<8 hex>`, more B–Z hints. Returns (hash, sig, expiry).
fn match_signed_locator(s: &str) -> Option<(&str, &str, &str)> {
    let mut parts = s.split('+');
    let hash = parts.next()?;
    if hash.len() != 32 || !hash.bytes().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    let is_hint = |p: &str, allow_a: bool| {
        let mut b = p.bytes();
        match b.next() {
            Some(c) if c.is_ascii_uppercase() && (allow_a || c != b'A') => {
                b.all(|c| c.is_ascii_alphanumeric() || c == b'@' || c == b'_' || c == b'-')
            }
            _ => false,
        }
    };
    let mut found = None;
    for (i, p) in parts.enumerate() {
        if i == 0 && !p.is_empty() && p.bytes().all(|c| c.is_ascii_digit()) {
            continue;
        }
        if let Some(rest) = p.strip_prefix('A') {
            if found.is_some() {
                return None;
            }
            let (sig, exp) = rest.split_once('@')?;
            let hex = |x: &str| x.bytes().all(|c| c.is_ascii_hexdigit());
            if sig.len() != 40 || !hex(sig) || exp.len() != 8 || !hex(exp) {
                return None;
            }
            found = Some((sig, exp));
        } else if !is_hint(p, false) {
            return None;
        }
    }
    found.map(|(sig, exp)| (hash, sig, exp))
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = concat!(
        "13u9fkuccnboeewr0ne3mvapk28epf68a3bhj9q8sb4l6e4e5mkk",
        "p6nhj2mmpscgu1zze5h5enydxfe3j215024u16ij4hjaiqs5u4pzsl3nczmaoxnc",
        "ljkm4875xqn4xv058koz3vkptmzhyheiy6wzevzjmdvxhvcqsvr5abhl15c2d4o4",
        "jhl0s91lojy1mtrzqqvprqcverls0xvy9vai9t1l1lvvazpuadafm71jl4mrwq2y",
        "gokee3eamvjy8qq1fvy238838enjmy5wzy2md7yvsitp5vztft6j4q866efym7e6",
        "vu5wm9fpnwjyxfldw3vbo01mgjs75rgo7qioh8z8ij7jpyp8508okhgbbex3ceei",
        "786u5rw2a9gx743dj3fgq2irk"
    );
    const TOKEN: &str = "hocfupkn2pjhrpgp2vxv8rsku7tvtx49arbc9s4bvu7p7wxqvk";
    const LOC: &str = "acbd18db4cc2f85cedef654fccc4a4d8+3";
    const SIG: &str = "89118b78732c33104a4d6231e8b5a5fa1e4301e3";
    const TTL: SignatureFormat = SignatureFormat::Current {
        ttl: Duration::from_secs(1_209_600),
    };
    const NOW: u64 = 1_700_000_000;

    fn key() -> SigningKey {
        SigningKey::new(KEY)
    }
    fn token() -> Token {
        Token::new(TOKEN)
    }

    /// §13.1 upstream vector.
    #[test]
    fn upstream_vector() {
        assert_eq!(KEY.len(), 397);
        let l: Locator = LOC.parse().unwrap();
        let signed = sign(&l, &key(), &token(), 0x7fff_ffff, TTL);
        assert_eq!(signed.to_wire(), format!("{LOC}+A{SIG}@7fffffff"));
    }

    /// §13.1 verification cases.
    #[test]
    fn verification_cases() {
        let v = |s: &str| verify(s, &key(), &token(), NOW, TTL);
        for ok in [
            format!("{LOC}+K@xyzzy+A{SIG}@7fffffff"),
            format!("{LOC}+A{SIG}@7fffffff+Zfoo"),
            format!("{LOC}+K@xyzzy+A{SIG}@7fffffff+Zfoo"),
            format!("acbd18db4cc2f85cedef654fccc4a4d8+999999+A{SIG}@7fffffff"),
            format!("acbd18db4cc2f85cedef654fccc4a4d8+A{SIG}@7fffffff"),
        ] {
            assert_eq!(v(&ok), Ok(()), "{ok}");
        }
        assert_eq!(
            v(&format!("{LOC}+Aaaaaaaaaaaaaaaaa@7fffffff")),
            Err(SignatureError::Missing)
        );
        assert_eq!(
            v(&format!("{LOC}+A{SIG}@OOOOOOOl")),
            Err(SignatureError::Missing)
        );
        assert_eq!(v(LOC), Err(SignatureError::Missing));
        let signed = format!("{LOC}+A{SIG}@7fffffff");
        assert_eq!(
            verify(
                &signed,
                &SigningKey::new("00000000000000000000"),
                &token(),
                NOW,
                TTL
            ),
            Err(SignatureError::Invalid)
        );
        assert_eq!(
            verify(&signed, &key(), &Token::new("00000000"), NOW, TTL),
            Err(SignatureError::Invalid)
        );
        // Expired: signed with expiry = now - 1 day. Also with a bad HMAC: expiry wins.
        let l: Locator = LOC.parse().unwrap();
        let old = sign(&l, &key(), &token(), NOW - 86_400, TTL);
        assert_eq!(v(&old.to_wire()), Err(SignatureError::Expired));
        assert_eq!(
            verify(&old.to_wire(), &SigningKey::new("x"), &token(), NOW, TTL),
            Err(SignatureError::Expired)
        );
        // A different TTL on the verifier side invalidates (§3.1).
        let other_ttl = SignatureFormat::Current {
            ttl: Duration::from_secs(86_400),
        };
        assert_eq!(
            verify(&signed, &key(), &token(), NOW, other_ttl),
            Err(SignatureError::Invalid)
        );
    }

    /// §13.1, the 2015 (no TTL) format.
    #[test]
    fn legacy_vector() {
        let l: Locator = LOC.parse().unwrap();
        let signed = sign(&l, &key(), &token(), 0x7fff_ffff, SignatureFormat::Legacy);
        assert_eq!(
            signed.to_wire(),
            format!("{LOC}+A257f3f5f5f0a4e4626a18fc74bd42ec34dcb228a@7fffffff")
        );
        assert_eq!(
            verify(
                &signed.to_wire(),
                &key(),
                &token(),
                NOW,
                SignatureFormat::Legacy
            ),
            Ok(())
        );
        assert_eq!(
            verify(&signed.to_wire(), &key(), &token(), NOW, TTL),
            Err(SignatureError::Invalid)
        );
    }

    /// §13.2: the test-cluster key with v1 and v2 tokens.
    #[test]
    fn derived_vectors() {
        let key = SigningKey::new(
            "zfhgfenhffzltr9dixws36j1yhksjoll2grmku38mi7yxd66h5j4q9w4jzanezacp8s6q0ro3hxakfye02152hncy6zml2ed0uc",
        );
        let foo = BlockHash::of(b"foo");
        let v1 = Token::new("3kg6k6lzmp9kj5cpkcoxie963cmvjahbt2fod9zru30k1jqdmi");
        let v2 = Token::new(
            "v2/zzzzz-gj3su-077z32aux8dg2s1/3kg6k6lzmp9kj5cpkcoxie963cmvjahbt2fod9zru30k1jqdmi",
        );
        let ttl = |s| SignatureFormat::Current {
            ttl: Duration::from_secs(s),
        };
        let exp = 0x7fff_ffff;
        assert_eq!(
            signature(&key, &foo, &v1, exp, ttl(1_209_600)),
            "538be7cb5d1a2c3367f4444418d9f0796f60b487"
        );
        assert_eq!(
            signature(&key, &foo, &v1, exp, ttl(86_400)),
            "02f24230e59e539a0d26012a3513d315e5df6b9b"
        );
        assert_eq!(
            signature(&key, &foo, &v2, exp, ttl(1_209_600)),
            "d61efc56babafa9dbe636b5ee5e4882510023fae"
        );
        assert_eq!(
            signature(&key, &BlockHash::EMPTY, &v2, exp, ttl(1_209_600)),
            "b84b888dedcb3f9df7aabdbff70d3120a0cfbe12"
        );
    }

    #[test]
    fn empty_key_or_token_leaves_locator_unsigned() {
        let l: Locator = LOC.parse().unwrap();
        assert_eq!(
            sign(&l, &SigningKey::new(""), &token(), 1, TTL).to_wire(),
            LOC
        );
        assert_eq!(sign(&l, &key(), &Token::new(""), 1, TTL).to_wire(), LOC);
    }

    #[test]
    fn secrets_do_not_print() {
        assert!(!format!("{:?} {}", token(), token()).contains(TOKEN));
        assert!(!format!("{:?}", key()).contains("13u9"));
    }
}
