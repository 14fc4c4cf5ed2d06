//! Blob permission signatures as the API server makes and checks them (keep-protocol.md
//! §3.1; Arvados `services/api/app/models/blob.rb`), written here independently of
//! `keep_client::signing`: the collections API is an independent check of the client,
//! so it must not share the client's bugs.
//!
//! `sig = hex(HMAC-SHA1(key, hash32 "@" token "@" expiry_hex "@" ttl_hex))`, the
//! `"@" ttl_hex` part absent in the 2015 (legacy) format.

use hmac::{Hmac, Mac};
use sha1::Sha1;

/// What signs and checks: the cluster's `BlobSigningKey` and `BlobSigningTTL`.
#[derive(Clone)]
pub(crate) struct Signer {
    pub(crate) key: Vec<u8>,
    pub(crate) ttl_secs: u64,
    /// The 2015 message (no TTL part, §3.1).
    pub(crate) legacy: bool,
}

/// Why a signature hint was not accepted (Rails `Blob.verify_signature!`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SigError {
    /// No `+A…@…` hint, or one without an `@expiry`.
    Missing,
    /// The expiry is not hex.
    BadTimestamp,
    /// The expiry has passed.
    Expired,
    /// The HMAC does not match.
    Invalid,
}

impl Signer {
    /// The hex HMAC for `hash32`, `token` and the expiry as it appears in a locator.
    pub(crate) fn signature(&self, hash32: &str, token: &str, expiry_hex: &str) -> String {
        let mut mac = Hmac::<Sha1>::new_from_slice(&self.key).expect("HMAC takes any key");
        mac.update(hash32.as_bytes());
        mac.update(b"@");
        mac.update(token.as_bytes());
        mac.update(b"@");
        mac.update(expiry_hex.as_bytes());
        if !self.legacy {
            mac.update(format!("@{:x}", self.ttl_secs).as_bytes());
        }
        hex::encode(mac.finalize().into_bytes())
    }

    /// `locator` with any `+A` hint removed and a fresh one appended (Go
    /// `SignManifest`: the expiry as `%08x`). Unchanged without a key or a token.
    pub(crate) fn sign_locator(&self, locator: &str, token: &str, expiry_unix: u64) -> String {
        if self.key.is_empty() || token.is_empty() {
            return locator.to_owned();
        }
        let stripped = strip_permission_hints(locator);
        let hash32 = &stripped[..stripped.len().min(32)];
        let exp = format!("{expiry_unix:08x}");
        let sig = self.signature(hash32, token, &exp);
        format!("{stripped}+A{sig}@{exp}")
    }

    /// Checks the `+A` hint of `locator` for `token` at `now_unix`, in the order of
    /// Rails `Blob.verify_signature!`: the hint's form, then the expiry, then the HMAC.
    pub(crate) fn verify(&self, locator: &str, token: &str, now_unix: u64) -> Result<(), SigError> {
        let hash32 = locator.split('+').next().unwrap_or("");
        // Rails takes the text after the last "+A", up to the next '+'.
        let Some((_, after)) = locator.rsplit_once("+A") else {
            return Err(SigError::Missing);
        };
        let hint = after.split('+').next().unwrap_or("");
        let Some((given, exp)) = hint.split_once('@') else {
            return Err(SigError::Missing);
        };
        if exp.is_empty() || !exp.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(SigError::BadTimestamp);
        }
        let expiry = u64::from_str_radix(exp, 16).map_err(|_| SigError::BadTimestamp)?;
        if expiry < now_unix {
            return Err(SigError::Expired);
        }
        if self.signature(hash32, token, exp) != given {
            return Err(SigError::Invalid);
        }
        Ok(())
    }
}

/// `locator` without its `+A…` hints (Rails: `gsub(/\+A[^+]*/, '')`).
pub(crate) fn strip_permission_hints(locator: &str) -> String {
    let mut parts = locator.split('+');
    let mut out = parts.next().unwrap_or("").to_owned();
    for p in parts {
        if !p.starts_with('A') {
            out.push('+');
            out.push_str(p);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The upstream vectors (keep-protocol.md §13.1 and §13.2).
    #[test]
    fn upstream_vectors() {
        let key = concat!(
            "13u9fkuccnboeewr0ne3mvapk28epf68a3bhj9q8sb4l6e4e5mkk",
            "p6nhj2mmpscgu1zze5h5enydxfe3j215024u16ij4hjaiqs5u4pzsl3nczmaoxnc",
            "ljkm4875xqn4xv058koz3vkptmzhyheiy6wzevzjmdvxhvcqsvr5abhl15c2d4o4",
            "jhl0s91lojy1mtrzqqvprqcverls0xvy9vai9t1l1lvvazpuadafm71jl4mrwq2y",
            "gokee3eamvjy8qq1fvy238838enjmy5wzy2md7yvsitp5vztft6j4q866efym7e6",
            "vu5wm9fpnwjyxfldw3vbo01mgjs75rgo7qioh8z8ij7jpyp8508okhgbbex3ceei",
            "786u5rw2a9gx743dj3fgq2irk"
        );
        let tok = "hocfupkn2pjhrpgp2vxv8rsku7tvtx49arbc9s4bvu7p7wxqvk";
        let hash = "acbd18db4cc2f85cedef654fccc4a4d8";
        let mut s = Signer {
            key: key.as_bytes().to_vec(),
            ttl_secs: 1_209_600,
            legacy: false,
        };
        let sig = "89118b78732c33104a4d6231e8b5a5fa1e4301e3";
        assert_eq!(s.signature(hash, tok, "7fffffff"), sig);
        let signed = format!("{hash}+3+A{sig}@7fffffff");
        assert_eq!(
            s.sign_locator(&format!("{hash}+3"), tok, 0x7fff_ffff),
            signed
        );
        assert_eq!(
            s.sign_locator(&signed, tok, 0x7fff_ffff),
            signed,
            "re-signing replaces the hint"
        );
        for ok in [
            format!("{hash}+3+K@xyzzy+A{sig}@7fffffff"),
            format!("{hash}+3+A{sig}@7fffffff+Zfoo"),
            format!("{hash}+999999+A{sig}@7fffffff"),
            format!("{hash}+A{sig}@7fffffff"),
        ] {
            assert_eq!(s.verify(&ok, tok, 1_000), Ok(()), "{ok}");
        }
        assert_eq!(s.verify(&signed, "00000000", 1_000), Err(SigError::Invalid));
        assert_eq!(s.verify(&signed, tok, 0x8000_0000), Err(SigError::Expired));
        assert_eq!(
            s.verify(&format!("{hash}+3"), tok, 0),
            Err(SigError::Missing)
        );
        assert_eq!(
            s.verify(&format!("{hash}+3+A{sig}@OOOOOOOl"), tok, 0),
            Err(SigError::BadTimestamp)
        );
        s.legacy = true;
        assert_eq!(
            s.signature(hash, tok, "7fffffff"),
            "257f3f5f5f0a4e4626a18fc74bd42ec34dcb228a"
        );
        let v2 = Signer {
            key: b"zfhgfenhffzltr9dixws36j1yhksjoll2grmku38mi7yxd66h5j4q9w4jzanezacp8s6q0ro3hxakfye02152hncy6zml2ed0uc".to_vec(),
            ttl_secs: 1_209_600,
            legacy: false,
        };
        assert_eq!(
            v2.signature(
                hash,
                "v2/zzzzz-gj3su-077z32aux8dg2s1/3kg6k6lzmp9kj5cpkcoxie963cmvjahbt2fod9zru30k1jqdmi",
                "7fffffff"
            ),
            "d61efc56babafa9dbe636b5ee5e4882510023fae"
        );
    }

    #[test]
    fn strips_only_a_hints() {
        assert_eq!(
            strip_permission_hints("acbd18db4cc2f85cedef654fccc4a4d8+3+Axyz@1+Kzzzzz+Afoo"),
            "acbd18db4cc2f85cedef654fccc4a4d8+3+Kzzzzz"
        );
    }
}
