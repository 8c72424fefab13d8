//! Authentication policies (SPEC §2–§4): JWT verified against a key set, and
//! API keys. An [`Authenticator`] is built once per policy and kept across
//! reloads while the policy is unchanged, with its fetched keys and cache.

mod api_key;
mod jwks;
mod jwt;
mod keys;

use std::sync::Arc;

use http::header::AUTHORIZATION;
use http::{HeaderMap, HeaderName, HeaderValue};
use serde_json::{Map, Value};

use crate::config::{AuthKind, AuthPolicy};

/// Who a request was authenticated as (a request extension for inner layers).
#[derive(Debug, Default)]
pub struct Verified {
    /// The JWT `sub` or the API key's id.
    pub consumer: Option<Arc<str>>,
    /// `x-consumer-id` for the backend (API keys).
    pub consumer_value: Option<HeaderValue>,
    pub claims: Map<String, Value>,
    pub scopes: Vec<String>,
}

impl Verified {
    fn from_claims(claims: Map<String, Value>) -> Self {
        let scopes = match (claims.get("scope"), claims.get("scp")) {
            (Some(Value::String(s)), _) | (None, Some(Value::String(s))) => {
                s.split_whitespace().map(str::to_owned).collect()
            }
            (_, Some(Value::Array(list))) => list
                .iter()
                .filter_map(|s| s.as_str().map(str::to_owned))
                .collect(),
            _ => Vec::new(),
        };
        let consumer = claims.get("sub").and_then(Value::as_str).map(Arc::from);
        Self {
            consumer,
            consumer_value: None,
            claims,
            scopes,
        }
    }
}

/// How a policy asks for credentials (`WWW-Authenticate`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Challenge {
    Bearer,
    Key,
}

/// Why credentials were refused. The description names the problem without
/// echoing the credential.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    Empty,
    Malformed,
    Expired,
    NotYetValid,
    BadSignature,
    WrongIssuer,
    WrongAudience,
    MissingClaim,
    Algorithm,
    UnknownKey,
    AmbiguousKey,
    UnknownApiKey,
}

impl Reason {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Self::Empty => "empty",
            Self::Malformed => "malformed",
            Self::Expired => "expired",
            Self::NotYetValid => "not_yet_valid",
            Self::BadSignature => "bad_signature",
            Self::WrongIssuer => "wrong_issuer",
            Self::WrongAudience => "wrong_audience",
            Self::MissingClaim => "missing_claim",
            Self::Algorithm => "algorithm",
            Self::UnknownKey => "unknown_key",
            Self::AmbiguousKey => "ambiguous_key",
            Self::UnknownApiKey => "unknown_api_key",
        }
    }

    /// Safe inside a quoted string: no quotes, no backslashes.
    pub fn describe(self) -> &'static str {
        match self {
            Self::Empty => "the credentials are empty",
            Self::Malformed => "the token is malformed or uses an unsupported algorithm",
            Self::Expired => "the token has expired",
            Self::NotYetValid => "the token is not valid yet",
            Self::BadSignature => "the signature does not verify",
            Self::WrongIssuer => "the token is from another issuer",
            Self::WrongAudience => "the token is for another audience",
            Self::MissingClaim => "the token lacks a required claim",
            Self::Algorithm => "the token's algorithm is not accepted",
            Self::UnknownKey => "the token is signed with an unknown key",
            Self::AmbiguousKey => "the token has no kid and several keys could have signed it",
            Self::UnknownApiKey => "unknown API key",
        }
    }
}

/// A refused request (rendered by `error.rs`).
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("no credentials")]
    Missing { challenge: Challenge },
    #[error("{}", reason.describe())]
    Invalid {
        challenge: Challenge,
        reason: Reason,
    },
    #[error("the token lacks scope {missing}")]
    InsufficientScope {
        /// Every scope the route needs, space separated.
        required: String,
        missing: String,
    },
}

impl AuthError {
    /// The metric label.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Missing { .. } => "missing",
            Self::Invalid { reason, .. } => reason.label(),
            Self::InsufficientScope { .. } => "insufficient_scope",
        }
    }
}

/// One policy, ready to check requests.
pub struct Authenticator {
    pub policy: Arc<AuthPolicy>,
    kind: Kind,
}

/// What each kind of policy keeps at run time.
enum Kind {
    Jwt(Box<jwt::JwtVerifier>),
    /// The policy's keys, with the header they come in.
    ApiKey(HeaderName, api_key::Index),
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("policy", &self.policy.name)
            .finish()
    }
}

/// The result of one look at a request's credentials.
pub enum Check {
    Done(Result<Arc<Verified>, AuthError>),
    /// The token's key may be at the provider: fetch keys, then check again.
    FetchKeys(u64),
}

impl Authenticator {
    pub fn new(policy: Arc<AuthPolicy>) -> Arc<Self> {
        let kind = match &policy.kind {
            AuthKind::Jwt(config) => {
                Kind::Jwt(Box::new(jwt::JwtVerifier::new(policy.name.clone(), config)))
            }
            AuthKind::ApiKey(keys) => Kind::ApiKey(keys.header.clone(), api_key::index(keys)),
        };
        Arc::new(Self { policy, kind })
    }

    pub fn challenge(&self) -> Challenge {
        match self.kind {
            Kind::Jwt(_) => Challenge::Bearer,
            Kind::ApiKey(..) => Challenge::Key,
        }
    }

    /// `fetched`: keys were fetched for this request already.
    pub fn check(&self, headers: &HeaderMap, fetched: bool) -> Check {
        let challenge = self.challenge();
        let invalid = |reason| Check::Done(Err(AuthError::Invalid { challenge, reason }));
        let missing = Check::Done(Err(AuthError::Missing { challenge }));
        match &self.kind {
            Kind::ApiKey(header, index) => match api_key::check(header, index, headers) {
                Ok(Some(v)) => Check::Done(Ok(v)),
                Ok(None) => missing,
                Err(reason) => invalid(reason),
            },
            Kind::Jwt(verifier) => match bearer(headers) {
                Ok(None) => missing,
                Err(reason) => invalid(reason),
                Ok(Some(token)) => match verifier.verify(token, fetched) {
                    jwt::Verify::Done(Ok(v)) => Check::Done(Ok(v)),
                    jwt::Verify::Done(Err(reason)) => invalid(reason),
                    jwt::Verify::FetchKeys(seen) => Check::FetchKeys(seen),
                },
            },
        }
    }

    pub async fn fetch_keys(&self, seen: u64) {
        if let Kind::Jwt(verifier) = &self.kind {
            verifier.fetch_keys(seen).await;
        }
    }
}

/// Every scope in `required` must be granted.
pub(crate) fn authorize(verified: &Verified, required: &[String]) -> Result<(), AuthError> {
    let missing: Vec<&str> = required
        .iter()
        .filter(|s| !verified.scopes.contains(s))
        .map(String::as_str)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    Err(AuthError::InsufficientScope {
        required: required.join(" "),
        missing: missing.join(" "),
    })
}

/// The bearer token, if the request carries one. Another scheme is no
/// bearer credentials at all (RFC 6750 §3); two Authorization headers are malformed.
fn bearer(headers: &HeaderMap) -> Result<Option<&str>, Reason> {
    let mut all = headers.get_all(AUTHORIZATION).iter();
    let Some(value) = all.next() else {
        return Ok(None);
    };
    if all.next().is_some() {
        return Err(Reason::Malformed);
    }
    let value = value.to_str().map_err(|_| Reason::Malformed)?;
    let (scheme, rest) = value.split_once(' ').unwrap_or((value, ""));
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Ok(None);
    }
    match rest.trim() {
        "" => Err(Reason::Empty),
        token => Ok(Some(token)),
    }
}
