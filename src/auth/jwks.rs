//! Keys fetched from an identity provider: `jwks_url` or `discovery_url`.
//!
//! The set is fetched in the background at start and every `jwks_refresh`;
//! a token with an unknown kid asks for one more fetch, at most once per
//! [`DEMAND_SPACING`], so a flood of junk kids cannot hammer the provider.
//! A failed fetch keeps the last good keys.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{Request, StatusCode, Uri};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use super::keys::KeySet;
use crate::config::{parse_jwks, Remote};

/// Fetches asked for by unknown kids are at least this far apart.
pub(super) const DEMAND_SPACING: Duration = Duration::from_secs(30);
/// After a failed fetch, the next scheduled one comes this soon.
const RETRY: Duration = Duration::from_secs(10);
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
const MAX_DOCUMENT: usize = 1 << 20;

type HttpsClient = Client<HttpsConnector<HttpConnector>, Empty<Bytes>>;

pub(super) struct RemoteKeys {
    remote: Remote,
    client: HttpsClient,
    keys: ArcSwap<KeySet>,
    /// Completed fetch attempts, so a waiter can tell that one ran meanwhile.
    attempts: AtomicU64,
    /// Fetches one at a time; holds when the last on-demand fetch began.
    fetching: tokio::sync::Mutex<Option<Instant>>,
}

#[derive(Debug, thiserror::Error)]
enum FetchError {
    #[error("{url}: {}", crate::body::chain(source))]
    Request {
        url: Uri,
        source: hyper_util::client::legacy::Error,
    },
    #[error("{url} answered {status}")]
    Status { url: Uri, status: StatusCode },
    #[error("{url}: reading the answer failed: {source}")]
    Body {
        url: Uri,
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("the discovery document is not JSON: {0}")]
    Discovery(serde_json::Error),
    #[error("the discovery document has no https jwks_uri")]
    NoJwksUri,
    #[error(transparent)]
    Jwks(#[from] crate::config::JwksError),
    #[error("timed out after {FETCH_TIMEOUT:?}")]
    Timeout,
}

impl RemoteKeys {
    pub(super) fn new(policy: &str, remote: Remote) -> Arc<Self> {
        let client = client(policy, &remote);
        let keys = Arc::new(Self {
            remote,
            client,
            keys: ArcSwap::from_pointee(KeySet::default()),
            attempts: AtomicU64::new(0),
            fetching: tokio::sync::Mutex::new(None),
        });
        if tokio::runtime::Handle::try_current().is_ok() {
            tokio::spawn(schedule(Arc::downgrade(&keys), policy.to_owned()));
        }
        keys
    }

    /// The keys, with the fetch count they came after (read first).
    pub(super) fn current(&self) -> (u64, Arc<KeySet>) {
        let seen = self.attempts.load(Ordering::Acquire);
        (seen, self.keys.load_full())
    }

    /// Fetches again for a token whose key was not in the set it saw after
    /// `seen` fetches, unless a fetch has run since (the caller looks again)
    /// or the last on-demand fetch is too recent.
    pub(super) async fn on_demand(&self, seen: u64, policy: &str) {
        let mut last_demand = self.fetching.lock().await;
        if self.attempts.load(Ordering::Acquire) != seen
            || last_demand.is_some_and(|t| t.elapsed() < DEMAND_SPACING)
        {
            return;
        }
        *last_demand = Some(Instant::now());
        self.fetch_once(policy).await;
    }

    /// Called with `fetching` held.
    async fn fetch_once(&self, policy: &str) -> bool {
        let result = tokio::time::timeout(FETCH_TIMEOUT, self.fetch())
            .await
            .unwrap_or(Err(FetchError::Timeout));
        match result {
            Ok(set) => {
                tracing::debug!(policy, keys = set.len(), "fetched JWKS");
                self.keys.store(Arc::new(set));
                self.attempts.fetch_add(1, Ordering::Release);
                true
            }
            Err(e) => {
                tracing::warn!(policy, url = %self.remote.url, "JWKS fetch failed, keeping the last keys: {e}");
                self.attempts.fetch_add(1, Ordering::Release);
                false
            }
        }
    }

    async fn fetch(&self) -> Result<KeySet, FetchError> {
        let mut url = self.remote.url.clone();
        if self.remote.discovery {
            let doc = self.get(&url).await?;
            let doc: serde_json::Value =
                serde_json::from_slice(&doc).map_err(FetchError::Discovery)?;
            url = doc
                .get("jwks_uri")
                .and_then(|u| u.as_str())
                .and_then(|u| u.parse::<Uri>().ok())
                .filter(|u| u.scheme_str() == Some("https"))
                .ok_or(FetchError::NoJwksUri)?;
        }
        let body = self.get(&url).await?;
        let set = parse_jwks(&body)?;
        Ok(KeySet::from_jwks(&set))
    }

    async fn get(&self, url: &Uri) -> Result<Bytes, FetchError> {
        let mut req = Request::new(Empty::new());
        *req.uri_mut() = url.clone();
        req.headers_mut().insert(
            http::header::ACCEPT,
            http::HeaderValue::from_static("application/json"),
        );
        let res = self
            .client
            .request(req)
            .await
            .map_err(|source| FetchError::Request {
                url: url.clone(),
                source,
            })?;
        if res.status() != StatusCode::OK {
            return Err(FetchError::Status {
                url: url.clone(),
                status: res.status(),
            });
        }
        let body = Limited::new(res.into_body(), MAX_DOCUMENT)
            .collect()
            .await
            .map_err(|source| FetchError::Body {
                url: url.clone(),
                source,
            })?;
        Ok(body.to_bytes())
    }
}

/// Fetches at start and every `refresh`, sooner after a failure; ends when
/// the policy is dropped by a reload.
async fn schedule(keys: Weak<RemoteKeys>, policy: String) {
    loop {
        let Some(k) = keys.upgrade() else { return };
        let ok = {
            let _one_at_a_time = k.fetching.lock().await;
            k.fetch_once(&policy).await
        };
        let wait = if ok {
            k.remote.refresh
        } else {
            RETRY.min(k.remote.refresh)
        };
        drop(k);
        tokio::time::sleep(wait).await;
    }
}

fn client(policy: &str, remote: &Remote) -> HttpsClient {
    let tls = crate::tls::client_config(remote.ca.as_deref(), &format!("auth.{policy}.jwks_ca"));
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(Some(FETCH_TIMEOUT));
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_only()
        .enable_http1()
        .wrap_connector(http);
    Client::builder(TokioExecutor::new()).build(https)
}
