//! Every collection of a cluster, read the way keep-balance reads them: trashed ones
//! and old versions included (they still own their blocks until deleted), with what
//! each asks of its blocks (`replication_desired`, `storage_classes_desired`).
//!
//! `GET /arvados/v1/collections` is paged by uuid (`order=["uuid asc"]` and a
//! `["uuid", ">", last]` filter), an order that does not move under the scan. A page
//! can be large (an API server answers up to `MaxIndexDatabaseRead` bytes of
//! manifests), so it is never held whole: the body streams into the JSON parser, and
//! each manifest is held once, as the parser's string, while its locators are read
//! out of it into 20-byte [`BlockRef`]s.

use futures::TryStreamExt as _;
use serde::Deserialize;
use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};

use crate::controller::Controller;
use crate::error::{Error, Result};
use crate::manifest::{BlockRef, for_each_block};
use crate::tls::transport_error;

/// Collections per page asked for (the server may send fewer).
pub const PAGE: u32 = 1000;

/// What one collection asks of its blocks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CollectionDemand {
    /// The collection's uuid.
    pub uuid: String,
    /// `replication_desired`; `None` means the cluster default.
    pub replication_desired: Option<u32>,
    /// `storage_classes_desired`; empty means the cluster's default classes.
    pub storage_classes_desired: Vec<String>,
    /// Whether it is in the trash (its blocks are still owned until it is deleted).
    pub is_trashed: bool,
    /// Whether it is an old version of another collection (`current_version_uuid`
    /// names another).
    pub is_old_version: bool,
    /// The blocks its manifest refers to, in manifest order, repeats included.
    pub blocks: Vec<BlockRef>,
    /// Why the manifest could not be read to its end (`blocks` holds what came
    /// before the error).
    pub manifest_error: Option<String>,
}

impl Controller {
    /// Calls `f` for every collection, trashed ones and old versions included, in
    /// uuid order. The token must be the cluster's SystemRootToken (any other sees
    /// only what it may read, which is not every block's owner).
    ///
    /// A page that breaks part-way is asked for again from the last collection read,
    /// per the client's retry settings; `f` never sees a collection twice.
    ///
    /// # Errors
    /// Transport and HTTP errors (401/403 → [`Error::PermissionDenied`]);
    /// [`Error::Protocol`] for a response that is not a collection list.
    pub async fn each_collection(&self, mut f: impl FnMut(CollectionDemand)) -> Result<()> {
        let mut last: Option<String> = None;
        let mut backoff = self.retry.backoff();
        let attempts = self.retry.attempts();
        let mut attempt = 1;
        loop {
            let before = last.clone();
            match self
                .collections_page(before.as_deref(), &mut f, &mut last)
                .await
            {
                Ok(0) => return Ok(()),
                Ok(_) => attempt = 1,
                Err(e) if e.is_retryable() && attempt < attempts => {
                    // Progress made before the break counts: only a page that
                    // breaks again and again at the same place gives up.
                    if last == before {
                        attempt += 1;
                    }
                    let delay = backoff.next_delay();
                    tracing::debug!(api = %self.host, attempt, attempts, ?delay, error = %e, "retrying the collection list");
                    tokio::time::sleep(delay).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// One page after `after`: calls `f` for each item and records the last uuid
    /// read in `last` as it goes. Returns the number of items.
    async fn collections_page(
        &self,
        after: Option<&str>,
        f: &mut impl FnMut(CollectionDemand),
        last: &mut Option<String>,
    ) -> Result<usize> {
        let filters = match after {
            Some(uuid) => serde_json::json!([["uuid", ">", uuid]]).to_string(),
            None => "[]".to_owned(),
        };
        let select = r#"["uuid","manifest_text","replication_desired","storage_classes_desired","is_trashed","current_version_uuid"]"#;
        let limit = PAGE.to_string();
        let path = "/arvados/v1/collections";
        let resp = self
            .request(path, true)
            .query(&[
                ("filters", filters.as_str()),
                ("order", r#"["uuid asc"]"#),
                ("select", select),
                ("limit", limit.as_str()),
                ("count", "none"),
                ("include_trash", "true"),
                ("include_old_versions", "true"),
            ])
            .send()
            .await
            .map_err(|e| transport_error(&self.host, e, false))?;
        let status = resp.status().as_u16();
        if status != 200 {
            let body = resp
                .bytes()
                .await
                .map_err(|e| transport_error(&self.host, e, true))?;
            return Err(self.status_error(
                path,
                status,
                &body,
                "reading every collection needs the SystemRootToken",
            ));
        }
        // The parser runs on a blocking thread, reading the body as it arrives, and
        // hands over one collection at a time.
        let (tx, mut rx) = tokio::sync::mpsc::channel::<CollectionDemand>(2);
        let stream = resp.bytes_stream().map_err(std::io::Error::other);
        let reader = tokio_util::io::SyncIoBridge::new(tokio_util::io::StreamReader::new(stream));
        let parser = tokio::task::spawn_blocking(move || {
            let mut de = serde_json::Deserializer::from_reader(std::io::BufReader::new(reader));
            let r = PageSeed { tx }.deserialize(&mut de);
            r.and_then(|()| de.end())
        });
        let mut n = 0;
        while let Some(c) = rx.recv().await {
            n += 1;
            *last = Some(c.uuid.clone());
            f(c);
        }
        let parsed = parser.await.map_err(|e| Error::Protocol {
            service: self.host.clone(),
            message: format!("GET {path}: the parser failed: {e}"),
        })?;
        match parsed {
            Ok(()) => Ok(n),
            Err(e) if e.is_io() => Err(Error::Transfer {
                service: self.host.clone(),
                message: format!("GET {path}: the body broke after {n} collections: {e}"),
            }),
            Err(e) => Err(Error::Protocol {
                service: self.host.clone(),
                message: format!("GET {path}: not a collection list: {e}"),
            }),
        }
    }
}

/// The top-level object of a list response: only `items` is read.
struct PageSeed {
    tx: tokio::sync::mpsc::Sender<CollectionDemand>,
}

impl<'de> DeserializeSeed<'de> for PageSeed {
    type Value = ();
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for PageSeed {
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a collection list object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut items = false;
        while let Some(key) = map.next_key::<String>()? {
            if key == "items" {
                map.next_value_seed(ItemsSeed { tx: &self.tx })?;
                items = true;
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        if !items {
            return Err(de::Error::missing_field("items"));
        }
        Ok(())
    }
}

struct ItemsSeed<'a> {
    tx: &'a tokio::sync::mpsc::Sender<CollectionDemand>,
}

impl<'de> DeserializeSeed<'de> for ItemsSeed<'_> {
    type Value = ();
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for ItemsSeed<'_> {
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("an array of collections")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while let Some(item) = seq.next_element::<Item>()? {
            let current = item.current_version_uuid.as_deref();
            let c = CollectionDemand {
                is_old_version: current.is_some_and(|c| !c.is_empty() && c != item.uuid),
                uuid: item.uuid,
                replication_desired: item
                    .replication_desired
                    .map(|r| u32::try_from(r.max(0)).unwrap_or(u32::MAX)),
                storage_classes_desired: item.storage_classes_desired.unwrap_or_default(),
                is_trashed: item.is_trashed.unwrap_or(false),
                blocks: item.manifest_text.blocks,
                manifest_error: item.manifest_text.error,
            };
            if self.tx.blocking_send(c).is_err() {
                return Err(de::Error::custom("the reader stopped"));
            }
        }
        Ok(())
    }
}

#[derive(Deserialize)]
struct Item {
    uuid: String,
    #[serde(default)]
    manifest_text: ManifestBlocks,
    #[serde(default)]
    replication_desired: Option<i64>,
    #[serde(default)]
    storage_classes_desired: Option<Vec<String>>,
    #[serde(default)]
    is_trashed: Option<bool>,
    #[serde(default)]
    current_version_uuid: Option<String>,
}

/// A manifest read straight out of the parser's string into its blocks.
#[derive(Default)]
struct ManifestBlocks {
    blocks: Vec<BlockRef>,
    error: Option<String>,
}

impl<'de> Deserialize<'de> for ManifestBlocks {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_option(ManifestVisitor)
    }
}

struct ManifestVisitor;

impl<'de> Visitor<'de> for ManifestVisitor {
    type Value = ManifestBlocks;
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("manifest text")
    }
    fn visit_none<E: de::Error>(self) -> Result<ManifestBlocks, E> {
        Ok(ManifestBlocks::default())
    }
    fn visit_unit<E: de::Error>(self) -> Result<ManifestBlocks, E> {
        Ok(ManifestBlocks::default())
    }
    fn visit_some<D: de::Deserializer<'de>>(self, d: D) -> Result<ManifestBlocks, D::Error> {
        d.deserialize_str(ManifestVisitor)
    }
    fn visit_str<E: de::Error>(self, text: &str) -> Result<ManifestBlocks, E> {
        let mut blocks = Vec::new();
        let error = for_each_block(text, |b| blocks.push(b))
            .err()
            .map(|e| e.to_string());
        blocks.shrink_to_fit();
        Ok(ManifestBlocks { blocks, error })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> std::result::Result<Vec<CollectionDemand>, String> {
        let (tx, mut rx) = tokio::sync::mpsc::channel(100);
        let mut de = serde_json::Deserializer::from_reader(json.as_bytes());
        PageSeed { tx }
            .deserialize(&mut de)
            .map_err(|e| e.to_string())?;
        let mut v = Vec::new();
        while let Ok(c) = rx.try_recv() {
            v.push(c);
        }
        Ok(v)
    }

    /// The shape of an Arvados list response with `select` (fields in any order,
    /// `kind`/`etag` around them, nulls for defaults).
    #[test]
    fn reads_a_page() {
        let json = r#"{"kind":"arvados#collectionList","etag":"","items":[
          {"kind":"arvados#collection","etag":"x","manifest_text":". 37b51d194a7513e45b56f6524f2d51f2+3+Aabc@5f000000 0:3:bar\n",
           "uuid":"zzzzz-4zz18-aaaaaaaaaaaaaaa","replication_desired":null,"storage_classes_desired":["default"],
           "is_trashed":false,"current_version_uuid":"zzzzz-4zz18-aaaaaaaaaaaaaaa"},
          {"uuid":"zzzzz-4zz18-bbbbbbbbbbbbbbb","replication_desired":3,"storage_classes_desired":["archive","default"],
           "is_trashed":true,"current_version_uuid":"zzzzz-4zz18-aaaaaaaaaaaaaaa","manifest_text":". 0:0:x\n"},
          {"uuid":"zzzzz-4zz18-ccccccccccccccc","manifest_text":null}
        ],"offset":null,"limit":1000}"#;
        let v = parse(json).unwrap();
        assert_eq!(v.len(), 3);
        assert_eq!(v[0].replication_desired, None);
        assert_eq!(v[0].blocks.len(), 1);
        assert_eq!(v[0].blocks[0].size, 3);
        assert!(!v[0].is_old_version && !v[0].is_trashed);
        assert_eq!(v[1].replication_desired, Some(3));
        assert!(v[1].is_old_version && v[1].is_trashed);
        assert!(v[1].manifest_error.is_some(), "a stream with no locator");
        assert!(v[2].blocks.is_empty() && v[2].manifest_error.is_none());
        assert!(parse(r#"{"kind":"x"}"#).unwrap_err().contains("items"));
    }
}
