//! JWT verification for one policy: key lookup, signature, claims, and a
//! bounded cache of tokens already verified.
//!
//! The cache is keyed by the token itself, compared whole on a hit: exact
//! (no digest to trust) and cheap (a fast hash and one comparison; a SHA-256
//! of the token was 10,000 instructions a request without SHA-NI). Each
//! token weighs a unit per KiB, so `cache_size` bounds memory as well as
//! count: 10,000 units hold at most 10,000 short tokens or 10 MiB of long ones.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, Validation};
use serde_json::{Map, Value};

use super::jwks::RemoteKeys;
use super::keys::{KeySet, Lookup};
use super::{Reason, Verified};
use crate::config::{Jwt, JwtKeys};

pub(super) struct JwtVerifier {
    policy: Arc<str>,
    config: Jwt,
    keys: Keys,
    /// One per accepted algorithm: jsonwebtoken refuses a `Validation`
    /// whose algorithms span key families, and the policy may mix them.
    validations: Vec<(Algorithm, Validation)>,
    cache: Option<quick_cache::sync::Cache<Box<str>, Cached, PerKib>>,
}

/// A cached token's weight: one unit per started KiB of its text.
#[derive(Debug, Clone, Copy)]
struct PerKib;

impl quick_cache::Weighter<Box<str>, Cached> for PerKib {
    fn weight(&self, token: &Box<str>, _: &Cached) -> u64 {
        (token.len() as u64).div_ceil(1024).max(1)
    }
}

enum Keys {
    Static(KeySet),
    Remote(Arc<RemoteKeys>),
}

#[derive(Clone)]
struct Cached {
    verified: Arc<Verified>,
    until: Instant,
}

/// What one look at a token gave.
pub(super) enum Verify {
    Done(Result<Arc<Verified>, Reason>),
    /// Its kid is not among the keys seen after this many fetches: fetch, then look again.
    FetchKeys(u64),
}

impl JwtVerifier {
    pub(super) fn new(policy: Arc<str>, config: &Jwt) -> Self {
        let keys = match &config.keys {
            JwtKeys::Jwks(set) => Keys::Static(KeySet::from_jwks(set)),
            JwtKeys::Pem(pem) => Keys::Static(KeySet::from_pem(pem)),
            JwtKeys::Secret(secret) => Keys::Static(KeySet::from_secret(secret)),
            JwtKeys::Remote(remote) => Keys::Remote(RemoteKeys::new(&policy, remote.clone())),
        };
        let validations = config
            .algorithms
            .iter()
            .map(|&alg| (alg, validation(config, alg)))
            .collect();
        let cache = (config.cache_size > 0).then(|| {
            quick_cache::sync::Cache::with_weighter(
                config.cache_size,
                config.cache_size as u64,
                PerKib,
            )
        });
        Self {
            policy,
            config: config.clone(),
            keys,
            validations,
            cache,
        }
    }

    pub(super) async fn fetch_keys(&self, seen: u64) {
        if let Keys::Remote(remote) = &self.keys {
            remote.on_demand(seen, &self.policy).await;
        }
    }

    /// `fetched`: keys were already fetched for this token; an unknown kid is final.
    pub(super) fn verify(&self, token: &str, fetched: bool) -> Verify {
        if let Some(cache) = &self.cache {
            if let Some(hit) = cache.get(token) {
                if hit.until > Instant::now() {
                    return Verify::Done(Ok(hit.verified));
                }
                cache.remove(token);
            }
        }
        let header = match jsonwebtoken::decode_header(token) {
            Ok(h) => h,
            Err(e) => return Verify::Done(Err(reason(e.kind()))),
        };
        let Some((_, validation)) = self.validations.iter().find(|(a, _)| *a == header.alg) else {
            return Verify::Done(Err(Reason::Algorithm));
        };
        let (seen, remote_keys);
        let keys = match &self.keys {
            Keys::Static(set) => {
                seen = None;
                set
            }
            Keys::Remote(remote) => {
                let (n, set) = remote.current();
                seen = Some(n);
                remote_keys = set;
                &*remote_keys
            }
        };
        let key = match keys.find(header.kid.as_deref(), header.alg) {
            Lookup::Found(k) => k,
            Lookup::Unknown => {
                return match seen {
                    Some(n) if !fetched => Verify::FetchKeys(n),
                    _ => Verify::Done(Err(Reason::UnknownKey)),
                };
            }
            Lookup::WrongAlgorithm => return Verify::Done(Err(Reason::Algorithm)),
            Lookup::Ambiguous => return Verify::Done(Err(Reason::AmbiguousKey)),
        };
        let data =
            match jsonwebtoken::decode::<Map<String, Value>>(token, &key.decoding, validation) {
                Ok(d) => d,
                Err(e) => return Verify::Done(Err(reason(e.kind()))),
            };
        let claims = data.claims;
        let until = Instant::now() + self.config.cache_ttl;
        let until = match claims.get("exp").and_then(Value::as_u64) {
            Some(exp) => until.min(instant_of(exp)),
            None => until,
        };
        let verified = Arc::new(Verified::from_claims(claims));
        if let Some(cache) = &self.cache {
            cache.insert(
                token.into(),
                Cached {
                    verified: verified.clone(),
                    until,
                },
            );
        }
        Verify::Done(Ok(verified))
    }
}

fn validation(config: &Jwt, alg: Algorithm) -> Validation {
    let mut v = Validation::new(alg);
    v.leeway = config.leeway.as_secs();
    v.validate_nbf = true;
    // exp is checked whenever present; required unless `require_exp = false`.
    let mut required = Vec::new();
    if config.require_exp {
        required.push("exp");
    }
    match &config.issuer {
        Some(iss) => {
            v.set_issuer(&[iss]);
            required.push("iss");
        }
        None => v.iss = None,
    }
    if config.audience.is_empty() {
        v.validate_aud = false;
    } else {
        v.set_audience(&config.audience);
        required.push("aud");
    }
    v.set_required_spec_claims(&required);
    v
}

/// A Unix time as an `Instant` (the past maps to now).
fn instant_of(unix: u64) -> Instant {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    Instant::now() + Duration::from_secs(unix.saturating_sub(now))
}

fn reason(kind: &ErrorKind) -> Reason {
    match kind {
        ErrorKind::ExpiredSignature => Reason::Expired,
        ErrorKind::ImmatureSignature => Reason::NotYetValid,
        ErrorKind::InvalidSignature | ErrorKind::Crypto(_) => Reason::BadSignature,
        ErrorKind::InvalidIssuer => Reason::WrongIssuer,
        ErrorKind::InvalidAudience => Reason::WrongAudience,
        ErrorKind::MissingRequiredClaim(_) => Reason::MissingClaim,
        ErrorKind::InvalidAlgorithm
        | ErrorKind::MissingAlgorithm
        | ErrorKind::InvalidAlgorithmName => Reason::Algorithm,
        _ => Reason::Malformed,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::config::Secret;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn verifier(cache_size: usize) -> JwtVerifier {
        let config = Jwt {
            algorithms: vec![Algorithm::HS256],
            keys: JwtKeys::Secret(Secret(SECRET.into())),
            issuer: None,
            audience: Vec::new(),
            leeway: Duration::from_secs(30),
            scopes: Vec::new(),
            forward_claims: Vec::new(),
            require_exp: true,
            cache_size,
            cache_ttl: Duration::from_secs(60),
        };
        JwtVerifier::new("p".into(), &config)
    }

    fn token(exp: u64) -> String {
        let claims = serde_json::json!({ "sub": "a", "exp": exp });
        let key = jsonwebtoken::EncodingKey::from_secret(SECRET);
        jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key).unwrap()
    }

    fn verified(v: &JwtVerifier, token: &str) -> Arc<Verified> {
        match v.verify(token, false) {
            Verify::Done(Ok(v)) => v,
            _ => panic!("the token verifies"),
        }
    }

    fn unix_now() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    #[test]
    fn a_hot_token_is_verified_once() {
        let v = verifier(100);
        let t = token(unix_now() + 600);
        assert!(Arc::ptr_eq(&verified(&v, &t), &verified(&v, &t)));
        let off = verifier(0);
        assert!(!Arc::ptr_eq(&verified(&off, &t), &verified(&off, &t)));
    }

    fn token_with(exp: u64, padding: usize) -> String {
        let claims = serde_json::json!({ "sub": "a", "exp": exp, "pad": "p".repeat(padding) });
        let key = jsonwebtoken::EncodingKey::from_secret(SECRET);
        jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key).unwrap()
    }

    #[test]
    fn the_cache_compares_whole_tokens_and_weighs_them_by_length() {
        let v = verifier(4);
        let exp = unix_now() + 600;
        let t = token(exp);
        let first = verified(&v, &t);
        // Another token (same claims but one more byte of padding) is its own entry.
        let other = token_with(exp, 1);
        assert!(!Arc::ptr_eq(&first, &verified(&v, &other)));
        assert!(Arc::ptr_eq(&first, &verified(&v, &t)));
        // A token of over 4 KiB outweighs the whole cache: verified every time.
        let long = token_with(exp, 4 << 10);
        assert!(long.len() > 4 << 10);
        assert!(!Arc::ptr_eq(&verified(&v, &long), &verified(&v, &long)));
        // One of 2 KiB to 3 KiB fits (3 units of 4).
        let mid = token_with(exp, 2 << 10);
        assert!(Arc::ptr_eq(&verified(&v, &mid), &verified(&v, &mid)));
    }

    #[test]
    fn a_cached_token_is_not_served_past_its_exp() {
        // Expired by a second, accepted within the leeway: never remembered past exp.
        let v = verifier(100);
        let t = token(unix_now() - 1);
        assert!(!Arc::ptr_eq(&verified(&v, &t), &verified(&v, &t)));
    }
}
