//! Cluster-wide settings shared by every service.

use std::time::Duration;

use keep_client::{SignatureFormat, SigningKey};

/// What every service of one cluster knows.
pub(crate) struct Config {
    pub(crate) cluster_id: String,
    pub(crate) system_root_token: String,
    pub(crate) management_token: String,
    pub(crate) user_tokens: Vec<String>,
    pub(crate) signing_key: SigningKey,
    pub(crate) signing_key_str: String,
    pub(crate) ttl: Duration,
    pub(crate) blob_signing: bool,
    pub(crate) arvados_version: u8,
    pub(crate) legacy_signatures: bool,
    pub(crate) index_mtime_seconds: bool,
    pub(crate) replication: u64,
    /// Declared storage classes: (name, default, priority); never empty.
    pub(crate) storage_classes: Vec<(String, bool, i32)>,
}

impl Config {
    /// A class's priority (0 when undeclared).
    pub(crate) fn class_priority(&self, class: &str) -> i32 {
        self.storage_classes
            .iter()
            .find(|(n, _, _)| n == class)
            .map_or(0, |(_, _, p)| *p)
    }

    pub(crate) fn signature_format(&self) -> SignatureFormat {
        if self.legacy_signatures {
            SignatureFormat::Legacy
        } else {
            SignatureFormat::Current { ttl: self.ttl }
        }
    }

    /// Whether the controller accepts `token` (SystemRootToken or a user token).
    pub(crate) fn valid_token(&self, token: &str) -> bool {
        token == self.system_root_token || self.user_tokens.iter().any(|t| t == token)
    }

    /// users/current for a valid token (§7.5).
    pub(crate) fn user_json(&self, token: &str) -> Option<serde_json::Value> {
        let id = &self.cluster_id;
        if token == self.system_root_token {
            return Some(serde_json::json!({
                "kind": "arvados#user", "uuid": format!("{id}-tpzed-000000000000000"),
                "etag": "", "owner_uuid": format!("{id}-tpzed-000000000000000"),
                "email": "root", "username": "root", "full_name": "root",
                "first_name": "root", "last_name": "", "is_active": true, "is_admin": true,
            }));
        }
        let i = self.user_tokens.iter().position(|t| t == token)?;
        let uuid = format!("{id}-tpzed-{:015}", i + 1);
        Some(serde_json::json!({
            "kind": "arvados#user", "uuid": uuid, "etag": "", "owner_uuid": format!("{id}-tpzed-000000000000000"),
            "email": format!("user{}@example.com", i + 1), "username": format!("user{}", i + 1),
            "full_name": format!("Test User {}", i + 1), "first_name": "Test", "last_name": "User",
            "is_active": true, "is_admin": false,
        }))
    }
}
