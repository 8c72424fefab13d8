//! API keys: the key's SHA-256 is compared with every configured hash in
//! constant time, so neither the key nor which hash is near can be timed.

use std::sync::Arc;

use http::HeaderMap;
use subtle::ConstantTimeEq;

use super::{Reason, Verified};
use crate::config::ApiKeys;

/// The consumer of the key in `headers`; `Ok(None)` when there is none.
pub(super) fn check(
    policy: &ApiKeys,
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
    let mut found = None;
    for key in &policy.keys {
        // No early exit: every hash is compared.
        if bool::from(key.sha256.ct_eq(digest.as_ref())) {
            found = Some(key);
        }
    }
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
