//! A policy's verification keys, as looked up per token.

use jsonwebtoken::jwk::{Jwk, JwkSet, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};

use crate::config::{jwk_family, KeyFamily, PemKey, Secret};

/// One key, with what it may verify.
pub(super) struct Key {
    kid: Option<String>,
    family: KeyFamily,
    /// The JWK's own `alg`, when it names one: then only that algorithm.
    alg: Option<Algorithm>,
    pub(super) decoding: DecodingKey,
}

impl Key {
    fn fits(&self, alg: Algorithm) -> bool {
        self.family == KeyFamily::of(alg) && self.alg.is_none_or(|a| a == alg)
    }
}

/// The keys of one policy, fixed until the next JWKS refresh.
#[derive(Default)]
pub(super) struct KeySet {
    keys: Vec<Key>,
}

/// What looking a token's key up found.
pub(super) enum Lookup<'a> {
    Found(&'a Key),
    /// No key with this kid (or, without kid, none for the algorithm).
    Unknown,
    /// The kid names a key of another algorithm.
    WrongAlgorithm,
    /// No kid and several keys of the algorithm: the token must say which.
    Ambiguous,
}

impl KeySet {
    /// Keys that cannot be used (encryption keys, unsupported curves) are skipped.
    pub(super) fn from_jwks(set: &JwkSet) -> Self {
        let keys = set.keys.iter().filter_map(key_of_jwk).collect();
        Self { keys }
    }

    pub(super) fn from_pem(pem: &PemKey) -> Self {
        let decoding = match pem.family {
            KeyFamily::Rsa => DecodingKey::from_rsa_pem(&pem.pem),
            KeyFamily::Ec => DecodingKey::from_ec_pem(&pem.pem),
            KeyFamily::Ed => DecodingKey::from_ed_pem(&pem.pem),
            KeyFamily::Hmac => return Self::default(),
        };
        let keys = decoding
            .into_iter()
            .map(|decoding| Key {
                kid: None,
                family: pem.family,
                alg: None,
                decoding,
            })
            .collect();
        Self { keys }
    }

    pub(super) fn from_secret(secret: &Secret) -> Self {
        Self {
            keys: vec![Key {
                kid: None,
                family: KeyFamily::Hmac,
                alg: None,
                decoding: DecodingKey::from_secret(&secret.0),
            }],
        }
    }

    pub(super) fn len(&self) -> usize {
        self.keys.len()
    }

    /// A token with a kid gets that key; one without gets the only key of its
    /// algorithm, so junk tokens cannot make the gateway try every key.
    pub(super) fn find(&self, kid: Option<&str>, alg: Algorithm) -> Lookup<'_> {
        match kid {
            Some(kid) => match self.keys.iter().find(|k| k.kid.as_deref() == Some(kid)) {
                Some(k) if k.fits(alg) => Lookup::Found(k),
                Some(_) => Lookup::WrongAlgorithm,
                // A key without kid of its own (a PEM file, a secret) answers to
                // any kid, under the same only-one rule as a token without kid.
                None => {
                    let mut kidless = self.keys.iter().filter(|k| k.kid.is_none() && k.fits(alg));
                    match (kidless.next(), kidless.next()) {
                        (Some(k), None) => Lookup::Found(k),
                        _ => Lookup::Unknown,
                    }
                }
            },
            None => {
                let mut fitting = self.keys.iter().filter(|k| k.fits(alg));
                match (fitting.next(), fitting.next()) {
                    (Some(k), None) => Lookup::Found(k),
                    (Some(_), Some(_)) => Lookup::Ambiguous,
                    (None, _) => Lookup::Unknown,
                }
            }
        }
    }
}

fn key_of_jwk(jwk: &Jwk) -> Option<Key> {
    if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
        return None;
    }
    let family = jwk_family(jwk)?;
    // The JWK's `alg` is one of the signing algorithms or the key is unusable.
    let alg = match &jwk.common.key_algorithm {
        None => None,
        Some(a) => Some(format!("{a:?}").parse::<Algorithm>().ok()?),
    };
    if alg.is_some_and(|a| KeyFamily::of(a) != family) {
        return None;
    }
    Some(Key {
        kid: jwk.common.key_id.clone(),
        family,
        alg,
        decoding: DecodingKey::from_jwk(jwk).ok()?,
    })
}
