//! API keys, stored as SHA-256 hashes only.
//!
//! A presented key is hashed, looked up by its hash, and the hit confirmed
//! in constant time. The lookup's timing can only tell an attacker about the
//! hash of a key they already hold, never about a stored key (that would
//! need a SHA-256 preimage), and it stays O(1) with thousands of consumers.

use std::collections::HashMap;
use std::sync::Arc;

use http::HeaderMap;
use subtle::ConstantTimeEq;

use super::{Reason, Verified};
use crate::config::ApiKeys;

/// A policy's keys by hash.
pub(super) type Index = HashMap<[u8; 32], usize>;

pub(super) fn index(policy: &ApiKeys) -> Index {
    policy
        .keys
        .iter()
        .enumerate()
        .map(|(i, k)| (k.sha256, i))
        .collect()
}

/// The consumer of the key in `headers`; `Ok(None)` when there is none.
pub(super) fn check(
    policy: &ApiKeys,
    index: &Index,
    headers: &HeaderMap,
) -> Result<Option<Arc<Verified>>, Reason> {
    let mut values = headers.get_all(&policy.header).iter();
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
    let found = index
        .get(&hash)
        .and_then(|&i| policy.keys.get(i))
        .filter(|k| bool::from(k.sha256.ct_eq(&hash)));
    match found {
        Some(key) => Ok(Some(Arc::new(Verified {
            consumer: Some(key.id.clone()),
            consumer_value: Some(key.id_value.clone()),
            claims: serde_json::Map::new(),
            scopes: Vec::new(),
        }))),
        None => Err(Reason::UnknownApiKey),
    }
}
