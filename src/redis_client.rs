//! Connections to the Redis that instances share (SPEC §10). Each user (the
//! job store, shared rate limits, the cluster's config stream) has its own
//! multiplexed connection, so a long admin listing never queues in front of a
//! rate-limit check. Connecting is lazy: an instance starts while Redis is
//! down, and each command after a failure reconnects, with backoff.

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

/// A connection to `[store] url` (over TLS trusting `ca`, when given, rather
/// than the system's roots); `response` bounds every reply (the callers bound
/// tighter where they must).
pub(crate) fn connect(
    store: &crate::config::Store,
    response: Duration,
) -> Result<ConnectionManager, String> {
    let url = store.url.as_deref().ok_or("no [store] url")?;
    let client = match &store.ca {
        Some(ca) => redis::Client::build_with_tls(
            url,
            redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(ca.to_vec()),
            },
        ),
        None => redis::Client::open(url),
    }
    .map_err(|e| e.to_string())?;
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_millis(500)))
        .set_response_timeout(Some(response))
        .set_min_delay(Duration::from_millis(50))
        .set_max_delay(Duration::from_secs(2))
        .set_number_of_retries(2);
    ConnectionManager::new_lazy_with_config(client, config).map_err(|e| e.to_string())
}
