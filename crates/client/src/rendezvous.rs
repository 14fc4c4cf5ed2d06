//! Rendezvous hashing (protocol §4): which Keep service a client probes first for a
//! block, and which volume a keepstore tries first. Pure computation; no I/O.

use md5::{Digest, Md5};

use crate::locator::BlockHash;

/// The part of a service UUID that goes into the weight, by Go's rule (`RootSorter`,
/// §4.1): the last 15 characters of a standard 27-character UUID (`uuid[12:]`), and
/// the **whole** UUID for any other length. Python always takes `uuid[-15:]`; the two
/// agree on 27 characters and differ on the 28-character UUIDs that config-only
/// clusters publish (§7.3). We follow Go because keep-balance, which decides where
/// every block finally lives, sorts with `RootSorter`: a block placed by the Python
/// rule on such a cluster would be pulled and trashed again.
fn service_suffix(uuid: &str) -> &str {
    if uuid.len() == 27 && uuid.is_char_boundary(12) {
        &uuid[12..]
    } else {
        uuid
    }
}

/// `md5(hash_hex + suffix)` as 16 bytes. Comparing the bytes orders like the hex
/// strings the SDKs compare.
fn weight(hash_hex: &str, suffix: &str) -> [u8; 16] {
    let mut h = Md5::new();
    h.update(hash_hex.as_bytes());
    h.update(suffix.as_bytes());
    h.finalize().into()
}

/// The client probe order (§4.1): indices into `uuids`, heaviest first, where the
/// weight of a service is `md5(hash + suffix)` with Go's suffix rule (see
/// `service_suffix`). Ties (identical suffixes) keep the input order, as Python's
/// stable sort does.
pub fn probe_order<S: AsRef<str>>(hash: &BlockHash, uuids: &[S]) -> Vec<usize> {
    let hex = hash.to_hex();
    let mut weighted: Vec<([u8; 16], usize)> = uuids
        .iter()
        .enumerate()
        .map(|(i, u)| (weight(&hex, service_suffix(u.as_ref())), i))
        .collect();
    // Descending weight; stable on ties.
    weighted.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    weighted.into_iter().map(|(_, i)| i).collect()
}

/// The keepstore volume order within one priority (§4.2): indices into `mount_uuids`,
/// **ascending** `md5(hash + uuid[12:])` (the whole UUID when it is not 27 characters).
pub fn volume_order<S: AsRef<str>>(hash: &BlockHash, mount_uuids: &[S]) -> Vec<usize> {
    let hex = hash.to_hex();
    let mut weighted: Vec<([u8; 16], usize)> = mount_uuids
        .iter()
        .enumerate()
        .map(|(i, u)| (weight(&hex, service_suffix(u.as_ref())), i))
        .collect();
    weighted.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.cmp(&b.1)));
    weighted.into_iter().map(|(_, i)| i).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn services() -> Vec<String> {
        (0..16).map(|i| format!("zzzzz-bi6l4-{i:015x}")).collect()
    }

    /// §13.3: the four reference orders over 16 services.
    #[test]
    fn reference_probe_orders() {
        let cases = [
            (0u32, "10eab6008d5642cf42abd2aa41f847cb", "3eab2d5fc9681074"),
            (1, "9a25b027482b37e047104e2e532cabae", "097dba52e648f1c3"),
            (2, "ece15765f11abfb7d3c71995a3d63bfe", "c5b4e023f8a7d691"),
            (3, "0c1728e2354416472350c906ca8b5718", "9d81c02e76a3bf54"),
        ];
        for (i, md5_hex, want) in cases {
            let block = format!("{i:064x}");
            let hash = BlockHash::of(block.as_bytes());
            assert_eq!(hash.to_hex(), md5_hex);
            let got: String = probe_order(&hash, &services())
                .into_iter()
                .map(|i| char::from_digit(i as u32, 16).unwrap())
                .collect();
            assert_eq!(got, want, "block {i}");
        }
    }

    /// §13.3: 28-character UUIDs (config-only clusters) weigh whole, as Go's
    /// `RootSorter` and keep-balance do; Python's `uuid[-15:]` would give 0,2,1,3 and
    /// 2,1,3,0.
    #[test]
    fn go_rule_for_28_char_uuids() {
        let uuids = [
            "zzzzz-bi6l4-0b56210446f86547",
            "zzzzz-bi6l4-5c645be853ab9135",
            "zzzzz-bi6l4-403ae91a58062a20",
            "zzzzz-bi6l4-bf69e3c1de6fcd61",
        ];
        assert_eq!(probe_order(&BlockHash::of(b"foo"), &uuids), [2, 0, 3, 1]);
        assert_eq!(probe_order(&BlockHash::of(b"bar"), &uuids), [0, 1, 3, 2]);
    }

    /// §13.3: keepstore volume order vectors.
    #[test]
    fn reference_volume_orders() {
        let m = |s: &str| format!("zzzzz-nyw5e-{}", s.repeat(15 / s.len()));
        let (m000, m111, m121, m222) = (
            m("0"),
            m("1"),
            "zzzzz-nyw5e-121212121212121".to_string(),
            m("2"),
        );
        assert_eq!(m121.len(), 27);
        assert_eq!(
            volume_order(&BlockHash::of(b"foobar"), &[&m111, &m222]),
            [0, 1]
        );
        assert_eq!(
            volume_order(&BlockHash::of(b"foobar"), &[&m222, &m111]),
            [1, 0]
        );
        assert_eq!(
            volume_order(&BlockHash::of(b"qux"), &[&m222, &m121, &m111]),
            [2, 1, 0]
        );
        assert_eq!(
            volume_order(&BlockHash::of(b"bar"), &[&m111, &m000]),
            [1, 0]
        );
        let q = BlockHash::of(b"qux").to_hex();
        assert_eq!(
            hex::encode(weight(&q, "111111111111111")),
            "19440bd00f495bc2872b24a16f6772a4"
        );
        assert_eq!(
            hex::encode(weight(&q, "121212121212121")),
            "343933e0277923ca4e5eb74191fa31aa"
        );
        assert_eq!(
            hex::encode(weight(&q, "222222222222222")),
            "87602b6c3af5cad5109c8064c55ca36f"
        );
    }
}
