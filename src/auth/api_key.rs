//! API keys, stored as SHA-256 hashes only.
//!
//! A presented key is hashed, looked up by its hash, and the hit confirmed
//! in constant time. The lookup's timing can only tell an attacker about the
//! hash of a key they already hold, never about a stored key (that would
//! need a SHA-256 preimage), and it stays O(1) with thousands of consumers.

use std::collections::HashMap;
use std::sync::Arc;

use http::{HeaderMap, HeaderName};
use subtle::ConstantTimeEq;

use super::{Reason, Verified};
use crate::config::ApiKeys;

/// A policy's keys by hash, each with the identity it grants, built once
/// per policy so a request allocates nothing to be identified.
pub(super) type Index = HashMap<[u8; 32], ([u8; 32], Arc<Verified>)>;

pub(super) fn index(policy: &ApiKeys) -> Index {
    policy
        .keys
        .iter()
        .map(|k| {
            let verified = Arc::new(Verified {
                consumer: Some(k.id.clone()),
                consumer_value: Some(k.id_value.clone()),
                claims: serde_json::Map::new(),
                scopes: Vec::new(),
            });
            (k.sha256, (k.sha256, verified))
        })
        .collect()
}

/// The consumer of the key in `headers`; `Ok(None)` when there is none.
pub(super) fn check(
    header: &HeaderName,
    index: &Index,
    headers: &HeaderMap,
) -> Result<Option<Arc<Verified>>, Reason> {
    let mut values = headers.get_all(header).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(Reason::Malformed);
    }
    if value.is_empty() {
        return Err(Reason::Empty);
    }
    let digest = ring::digest::digest(&ring::digest::SHA256, value.as_bytes());
    let mut hash = [0u8; 32];
    hash.copy_from_slice(digest.as_ref());
    match index.get(&hash) {
        Some((stored, verified)) if bool::from(stored.ct_eq(&hash)) => Ok(Some(verified.clone())),
        _ => Err(Reason::UnknownApiKey),
    }
}
