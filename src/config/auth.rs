//! `[auth.NAME]` policies: JWT and API keys.
//!
//! Key material named by a policy (a JWKS file, a PEM public key, a secret
//! from the environment) is read and checked here, at load, so a bad key is a
//! config error with its file:line:col, not a 401 at the first request.

use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, HeaderValue, Uri};
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey};

use super::decode::{Ctx, Obj, Spanned};

/// A named authentication policy.
#[derive(Debug, Clone, PartialEq)]
pub struct AuthPolicy {
    pub name: Arc<str>,
    pub kind: AuthKind,
}

#[derive(Debug, Clone, PartialEq)]
pub enum AuthKind {
    Jwt(Box<Jwt>),
    ApiKey(ApiKeys),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Jwt {
    /// The only algorithms accepted, whatever a token's header says.
    pub algorithms: Vec<Algorithm>,
    pub keys: JwtKeys,
    pub issuer: Option<String>,
    /// Any one of them must be in the token's `aud`.
    pub audience: Vec<String>,
    pub leeway: Duration,
    /// All required, on top of a route's own.
    pub scopes: Vec<String>,
    /// Claim name → header sent to the backend.
    pub forward_claims: Vec<(String, HeaderName)>,
    pub require_exp: bool,
    /// Verified tokens remembered; 0 turns the cache off.
    pub cache_size: usize,
    /// How long a verified token is remembered (never past its `exp`).
    pub cache_ttl: Duration,
}

/// Where a JWT policy's keys come from.
#[derive(Debug, Clone, PartialEq)]
pub enum JwtKeys {
    /// `jwks_file`, read at load.
    Jwks(Arc<JwkSet>),
    /// `public_key_file`: one PEM public key.
    Pem(Arc<PemKey>),
    /// `secret_env`: an HMAC secret.
    Secret(Secret),
    /// `jwks_url` or `discovery_url`, fetched and refreshed at run time.
    Remote(Remote),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PemKey {
    pub family: KeyFamily,
    pub pem: Vec<u8>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyFamily {
    Rsa,
    Ec,
    Ed,
    Hmac,
}

impl KeyFamily {
    pub fn of(alg: Algorithm) -> Self {
        match alg {
            Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => Self::Hmac,
            Algorithm::ES256 | Algorithm::ES384 => Self::Ec,
            Algorithm::EdDSA => Self::Ed,
            Algorithm::RS256
            | Algorithm::RS384
            | Algorithm::RS512
            | Algorithm::PS256
            | Algorithm::PS384
            | Algorithm::PS512 => Self::Rsa,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Rsa => "an RSA",
            Self::Ec => "an EC",
            Self::Ed => "an Ed25519",
            Self::Hmac => "an HMAC",
        }
    }
}

/// An HMAC secret; never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub Arc<[u8]>);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<hidden>)")
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Remote {
    pub url: Uri,
    /// `url` is an OpenID configuration whose `jwks_uri` names the key set.
    pub discovery: bool,
    /// PEM certificates trusted instead of the system roots (`jwks_ca`).
    pub ca: Option<Arc<[u8]>>,
    pub refresh: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ApiKeys {
    pub header: HeaderName,
    pub keys: Vec<ApiKey>,
    /// Keep the key header away from the backend (the default).
    pub hide_credentials: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKey {
    /// The consumer this key identifies (sent as `x-consumer-id`).
    pub id: Arc<str>,
    pub id_value: HeaderValue,
    pub sha256: [u8; 32],
}

const KEY_SOURCES: [&str; 5] = [
    "jwks_file",
    "jwks_url",
    "discovery_url",
    "public_key_file",
    "secret_env",
];

pub(super) fn policy(
    ctx: &mut Ctx<'_>,
    name: &Spanned<String>,
    mut obj: Obj<'_>,
    base: &Path,
) -> Option<AuthPolicy> {
    let kind = match obj.string(ctx, "type") {
        Some(t) if t.value == "jwt" => jwt(ctx, &mut obj, base).map(|j| AuthKind::Jwt(Box::new(j))),
        Some(t) if t.value == "api_key" => api_keys(ctx, &mut obj).map(AuthKind::ApiKey),
        Some(t) => {
            ctx.error(
                t.span,
                obj.key_path("type"),
                format!("`{}`: expected \"jwt\" or \"api_key\"", t.value),
            );
            None
        }
        None => {
            ctx.error(
                obj.span(),
                obj.key_path("type"),
                "missing: \"jwt\" or \"api_key\"",
            );
            None
        }
    };
    obj.finish(ctx);
    Some(AuthPolicy {
        name: name.value.as_str().into(),
        kind: kind?,
    })
}

fn jwt(ctx: &mut Ctx<'_>, obj: &mut Obj<'_>, base: &Path) -> Option<Jwt> {
    let algorithms = algorithms(ctx, obj)?;
    let families: Vec<KeyFamily> = algorithms.iter().map(|a| KeyFamily::of(*a)).collect();
    let hmac = families.contains(&KeyFamily::Hmac);
    let given: Vec<&str> = KEY_SOURCES.into_iter().filter(|k| obj.has(k)).collect();
    if given.len() != 1 {
        ctx.error(
            obj.span(),
            obj.path(),
            format!(
                "give exactly one key source of {} (found {})",
                KEY_SOURCES.join(", "),
                if given.is_empty() {
                    "none".to_owned()
                } else {
                    given.join(", ")
                }
            ),
        );
    }
    let mut keys = None;
    if let Some(file) = obj.string(ctx, "jwks_file") {
        keys = jwks_file(ctx, obj, &file, base, &algorithms).map(JwtKeys::Jwks);
    }
    if let Some(file) = obj.string(ctx, "public_key_file") {
        keys = pem_file(ctx, obj, &file, base, &algorithms).map(JwtKeys::Pem);
    }
    if let Some(var) = obj.string(ctx, "secret_env") {
        keys = secret(ctx, obj, &var, hmac).map(JwtKeys::Secret);
    }
    let url = obj.string(ctx, "jwks_url").map(|u| (u, false));
    let discovery = obj.string(ctx, "discovery_url").map(|u| (u, true));
    let ca = obj.string(ctx, "jwks_ca");
    let refresh = obj.duration(ctx, "jwks_refresh");
    if let Some((u, discovery)) = url.or(discovery) {
        let key = if discovery {
            "discovery_url"
        } else {
            "jwks_url"
        };
        let parsed = u.value.parse::<Uri>().ok().filter(|uri| {
            uri.scheme_str() == Some("https") && uri.host().is_some_and(|h| !h.is_empty())
        });
        match parsed {
            Some(url) => {
                let ca = ca
                    .as_ref()
                    .and_then(|c| ca_file(ctx, obj, "jwks_ca", c, base));
                keys = Some(JwtKeys::Remote(Remote {
                    url,
                    discovery,
                    ca,
                    refresh: refresh.unwrap_or(Duration::from_secs(300)),
                }));
            }
            None => ctx.error(
                u.span,
                obj.key_path(key),
                format!(
                    "`{}` is not an https:// URL (keys are only fetched over TLS)",
                    u.value
                ),
            ),
        }
        if hmac {
            ctx.error(
                obj.key_span(key),
                obj.key_path(key),
                "HS* algorithms take their secret from `secret_env`",
            );
        }
    } else {
        for (key, given) in [
            ("jwks_ca", ca.is_some()),
            ("jwks_refresh", refresh.is_some()),
        ] {
            if given {
                ctx.error(
                    obj.key_span(key),
                    obj.key_path(key),
                    "only applies with `jwks_url` or `discovery_url`",
                );
            }
        }
    }
    if refresh.is_some_and(|r| r < Duration::from_secs(1)) {
        ctx.error(
            obj.key_span("jwks_refresh"),
            obj.key_path("jwks_refresh"),
            "must be at least 1s",
        );
    }
    if hmac && !matches!(keys, Some(JwtKeys::Secret(_))) && !obj.has("secret_env") {
        ctx.error(
            obj.key_span("algorithms"),
            obj.key_path("algorithms"),
            "HS* algorithms need `secret_env`",
        );
    }

    let issuer = obj.string(ctx, "issuer").map(|s| s.value);
    let audience = match obj.item("audience") {
        None => Vec::new(),
        Some(item) if item.is_str() => vec![item.as_str().unwrap_or_default().to_owned()],
        Some(_) => obj
            .strings(ctx, "audience")
            .unwrap_or_default()
            .into_iter()
            .map(|s| s.value)
            .collect(),
    };
    let leeway = obj
        .duration(ctx, "leeway")
        .unwrap_or(Duration::from_secs(30));
    let scopes = scope_list(ctx, obj, "scopes");
    let mut forward_claims = Vec::new();
    for (claim, header) in obj.string_map(ctx, "forward_claims").unwrap_or_default() {
        let path = obj.key_path("forward_claims");
        match HeaderName::from_bytes(header.value.as_bytes()) {
            Ok(h) if forward_claims.iter().any(|(_, x)| *x == h) => {
                ctx.error(header.span, &path, format!("`{h}` receives two claims"))
            }
            Ok(h) => forward_claims.push((claim.value, h)),
            Err(_) => ctx.error(
                header.span,
                &path,
                format!("`{}` is not a header name", header.value),
            ),
        }
    }
    let require_exp = obj.bool(ctx, "require_exp").unwrap_or(true);
    let cache_size = obj.uint(ctx, "cache_size", 10_000_000).unwrap_or(10_000) as usize;
    let cache_ttl = obj
        .duration(ctx, "cache_ttl")
        .unwrap_or(Duration::from_secs(60));
    Some(Jwt {
        algorithms,
        keys: keys?,
        issuer,
        audience,
        leeway,
        scopes,
        forward_claims,
        require_exp,
        cache_size,
        cache_ttl,
    })
}

fn algorithms(ctx: &mut Ctx<'_>, obj: &mut Obj<'_>) -> Option<Vec<Algorithm>> {
    let path = obj.key_path("algorithms");
    let Some(list) = obj.strings(ctx, "algorithms") else {
        if !obj.has("algorithms") {
            ctx.error(
                obj.span(),
                &path,
                "missing: the accepted algorithms, e.g. [\"RS256\"]",
            );
        }
        return None;
    };
    let mut out: Vec<Algorithm> = Vec::new();
    let mut ok = true;
    for s in &list {
        let alg = match s.value.as_str() {
            "none" | "None" | "NONE" => {
                ctx.error(
                    s.span.clone(),
                    &path,
                    "`none` (unsigned tokens) is never accepted",
                );
                ok = false;
                continue;
            }
            "ES512" => {
                ctx.error(s.span.clone(), &path, "`ES512` is not supported");
                ok = false;
                continue;
            }
            other => other.parse::<Algorithm>(),
        };
        match alg {
            Ok(a) if out.contains(&a) => {
                ctx.error(
                    s.span.clone(),
                    &path,
                    format!("`{}` is listed twice", s.value),
                );
            }
            Ok(a) => out.push(a),
            Err(_) => {
                ctx.error(
                    s.span.clone(),
                    &path,
                    format!(
                        "`{}` is not an algorithm: RS256/384/512, PS256/384/512, ES256/384, EdDSA, HS256/384/512",
                        s.value
                    ),
                );
                ok = false;
            }
        }
    }
    let hmac = out.iter().any(|a| KeyFamily::of(*a) == KeyFamily::Hmac);
    if hmac && out.iter().any(|a| KeyFamily::of(*a) != KeyFamily::Hmac) {
        // A public key must never double as an HMAC secret (algorithm confusion).
        ctx.error(
            obj.key_span("algorithms"),
            &path,
            "HS* algorithms cannot be mixed with public-key algorithms in one policy",
        );
        ok = false;
    }
    if out.is_empty() && ok {
        ctx.error(
            obj.key_span("algorithms"),
            &path,
            "empty: list the accepted algorithms",
        );
    }
    (ok && !out.is_empty()).then_some(out)
}

fn jwks_file(
    ctx: &mut Ctx<'_>,
    obj: &Obj<'_>,
    file: &Spanned<String>,
    base: &Path,
    algorithms: &[Algorithm],
) -> Option<Arc<JwkSet>> {
    let (_, bytes) = super::file::read(ctx, obj, "jwks_file", file, base)?;
    let set = match parse_jwks(&bytes) {
        Ok(set) => set,
        Err(e) => {
            ctx.error(file.span.clone(), obj.key_path("jwks_file"), e.to_string());
            return None;
        }
    };
    let usable = set.keys.iter().filter(|k| {
        DecodingKey::from_jwk(k).is_ok()
            && algorithms
                .iter()
                .any(|a| jwk_family(k) == Some(KeyFamily::of(*a)))
    });
    if usable.count() == 0 {
        ctx.error(
            file.span.clone(),
            obj.key_path("jwks_file"),
            "no key in this set can verify any of the policy's algorithms",
        );
        return None;
    }
    Some(Arc::new(set))
}

/// A JWK set, skipping keys this version cannot read (other key types,
/// curves) rather than refusing a provider's whole set for one of them.
/// A JWKS document that is not one.
#[derive(Debug, thiserror::Error)]
#[error("not a JWK set: {0}")]
pub struct JwksError(#[from] serde_json::Error);

pub fn parse_jwks(bytes: &[u8]) -> Result<JwkSet, JwksError> {
    #[derive(serde::Deserialize)]
    struct Raw {
        keys: Vec<serde_json::Value>,
    }
    let raw: Raw = serde_json::from_slice(bytes)?;
    let keys = raw
        .keys
        .into_iter()
        .filter_map(|k| serde_json::from_value(k).ok())
        .collect();
    Ok(JwkSet { keys })
}

/// The family of a JWK's key type.
pub fn jwk_family(jwk: &jsonwebtoken::jwk::Jwk) -> Option<KeyFamily> {
    use jsonwebtoken::jwk::AlgorithmParameters as P;
    match &jwk.algorithm {
        P::RSA(_) => Some(KeyFamily::Rsa),
        P::EllipticCurve(_) => Some(KeyFamily::Ec),
        P::OctetKeyPair(_) => Some(KeyFamily::Ed),
        P::OctetKey(_) => None,
    }
}

fn pem_file(
    ctx: &mut Ctx<'_>,
    obj: &Obj<'_>,
    file: &Spanned<String>,
    base: &Path,
    algorithms: &[Algorithm],
) -> Option<Arc<PemKey>> {
    let (_, pem) = super::file::read(ctx, obj, "public_key_file", file, base)?;
    let family = if DecodingKey::from_rsa_pem(&pem).is_ok() {
        KeyFamily::Rsa
    } else if DecodingKey::from_ec_pem(&pem).is_ok() {
        KeyFamily::Ec
    } else if DecodingKey::from_ed_pem(&pem).is_ok() {
        KeyFamily::Ed
    } else {
        ctx.error(
            file.span.clone(),
            obj.key_path("public_key_file"),
            "not a PEM public key (RSA, EC or Ed25519)",
        );
        return None;
    };
    let unusable: Vec<String> = algorithms
        .iter()
        .filter(|a| KeyFamily::of(**a) != family)
        .map(|a| format!("{a:?}"))
        .collect();
    if !unusable.is_empty() {
        ctx.error(
            obj.key_span("algorithms"),
            obj.key_path("algorithms"),
            format!(
                "public_key_file holds {} key, which cannot verify {}",
                family.name(),
                unusable.join(", ")
            ),
        );
        return None;
    }
    Some(Arc::new(PemKey { family, pem }))
}

fn secret(ctx: &mut Ctx<'_>, obj: &Obj<'_>, var: &Spanned<String>, hmac: bool) -> Option<Secret> {
    let path = obj.key_path("secret_env");
    if !hmac {
        ctx.error(
            var.span.clone(),
            &path,
            "a secret only verifies HS* algorithms",
        );
        return None;
    }
    match ctx.env(&var.value) {
        None => {
            ctx.error(
                var.span.clone(),
                &path,
                format!("the environment variable `{}` is not set", var.value),
            );
            None
        }
        // RFC 7518 §3.2: a key shorter than the hash is brute-forceable.
        Some(s) if s.len() < 32 => {
            ctx.error(
                var.span.clone(),
                &path,
                format!("the secret in `{}` is shorter than 32 bytes", var.value),
            );
            None
        }
        Some(s) => Some(Secret(s.into_bytes().into())),
    }
}

/// A PEM file of CA certificates (`jwks_ca`, a backend's `ca`), checked and kept as read.
pub(super) fn ca_file(
    ctx: &mut Ctx<'_>,
    obj: &Obj<'_>,
    key: &str,
    file: &Spanned<String>,
    base: &Path,
) -> Option<Arc<[u8]>> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    let (_, pem) = super::file::read(ctx, obj, key, file, base)?;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(&pem).collect();
    if certs.is_empty() || certs.iter().any(Result::is_err) {
        ctx.error(
            file.span.clone(),
            obj.key_path(key),
            "not a PEM file of certificates",
        );
        return None;
    }
    Some(pem.into())
}

pub(super) fn scope_list(ctx: &mut Ctx<'_>, obj: &mut Obj<'_>, key: &'static str) -> Vec<String> {
    let path = obj.key_path(key);
    let mut out: Vec<String> = Vec::new();
    for s in obj.strings(ctx, key).unwrap_or_default() {
        if s.value.is_empty()
            || s.value
                .contains(|c: char| c.is_whitespace() || c == '"' || c == '\\')
        {
            ctx.error(
                s.span,
                &path,
                format!(
                    "`{}` is not a scope (no spaces, quotes or backslashes)",
                    s.value
                ),
            );
        } else if !out.contains(&s.value) {
            out.push(s.value);
        }
    }
    out
}

fn api_keys(ctx: &mut Ctx<'_>, obj: &mut Obj<'_>) -> Option<ApiKeys> {
    let header = match obj.string(ctx, "header") {
        None => Some(HeaderName::from_static("x-api-key")),
        Some(h) => match HeaderName::from_bytes(h.value.as_bytes()) {
            Ok(name) => Some(name),
            Err(_) => {
                ctx.error(
                    h.span,
                    obj.key_path("header"),
                    format!("`{}` is not a header name", h.value),
                );
                None
            }
        },
    };
    let hide_credentials = obj.bool(ctx, "hide_credentials").unwrap_or(true);
    let mut keys: Vec<ApiKey> = Vec::new();
    // Sets, so ten thousand keys load in linear time.
    let mut ids = std::collections::HashSet::new();
    let mut hashes = std::collections::HashSet::new();
    let had_keys = obj.has("keys");
    for mut k in obj.table_array(ctx, "keys") {
        let id = k.string(ctx, "id");
        let hash = k.string(ctx, "sha256");
        let parsed_id = match id {
            Some(id) => match HeaderValue::from_str(&id.value) {
                Ok(v) if !id.value.is_empty() && !ids.contains(&id.value) => Some((id.value, v)),
                Ok(_) if id.value.is_empty() => {
                    ctx.error(id.span, k.key_path("id"), "empty");
                    None
                }
                Ok(_) => {
                    ctx.error(
                        id.span,
                        k.key_path("id"),
                        format!("`{}` is listed twice", id.value),
                    );
                    None
                }
                Err(_) => {
                    ctx.error(id.span, k.key_path("id"), "must be printable ASCII");
                    None
                }
            },
            None => {
                ctx.error(
                    k.span(),
                    k.key_path("id"),
                    "missing: the consumer id of this key",
                );
                None
            }
        };
        let digest = match hash {
            Some(h) => match hex32(&h.value) {
                Some(d) if hashes.contains(&d) => {
                    ctx.error(h.span, k.key_path("sha256"), "two keys have this hash");
                    None
                }
                Some(d) => Some(d),
                None => {
                    ctx.error(
                        h.span,
                        k.key_path("sha256"),
                        "expected 64 hex digits: the SHA-256 of the key (`printf %s KEY | sha256sum`)",
                    );
                    None
                }
            },
            None => {
                ctx.error(
                    k.span(),
                    k.key_path("sha256"),
                    "missing: the key's SHA-256 in hex",
                );
                None
            }
        };
        k.finish(ctx);
        if let (Some((id, id_value)), Some(sha256)) = (parsed_id, digest) {
            ids.insert(id.clone());
            hashes.insert(sha256);
            keys.push(ApiKey {
                id: id.into(),
                id_value,
                sha256,
            });
        }
    }
    if !had_keys {
        ctx.error(
            obj.span(),
            obj.key_path("keys"),
            "missing: keys = [{ id = \"...\", sha256 = \"...\" }]",
        );
    }
    Some(ApiKeys {
        header: header?,
        keys,
        hide_credentials,
    })
}

fn hex32(s: &str) -> Option<[u8; 32]> {
    let s = s.trim();
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in s.as_bytes().chunks(2).enumerate() {
        let hi = (pair[0] as char).to_digit(16)?;
        let lo = (pair[1] as char).to_digit(16)?;
        out[i] = (hi * 16 + lo) as u8;
    }
    Some(out)
}
