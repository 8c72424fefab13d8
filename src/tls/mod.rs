//! rustls configurations: clients of upstreams and identity providers, and
//! (see `server`) the HTTPS listener.

mod server;

use std::sync::{Arc, OnceLock};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use rustls::{ClientConfig, RootCertStore};

pub(crate) use server::server_config;

/// The crypto provider of every config: ring, shared with jsonwebtoken.
pub(crate) fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    static PROVIDER: OnceLock<Arc<rustls::crypto::CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(rustls::crypto::ring::default_provider()))
        .clone()
}

/// The system's roots, loaded once (reading them takes milliseconds).
fn native_roots() -> Arc<RootCertStore> {
    static ROOTS: OnceLock<Arc<RootCertStore>> = OnceLock::new();
    ROOTS
        .get_or_init(|| {
            let mut roots = RootCertStore::empty();
            let found = rustls_native_certs::load_native_certs();
            for e in &found.errors {
                tracing::warn!("system CA certificates: {e}");
            }
            roots.add_parsable_certificates(found.certs);
            Arc::new(roots)
        })
        .clone()
}

/// A client config trusting `ca` (PEM, checked at config load) or else the
/// system roots. `who` names the user in a log line if a certificate that
/// passed the load check is still refused by rustls.
pub(crate) fn client_config(ca: Option<&[u8]>, who: &str) -> ClientConfig {
    let roots = match ca {
        Some(pem) => {
            let mut roots = RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(pem) {
                let added = cert
                    .map_err(|e| e.to_string())
                    .and_then(|c| roots.add(c).map_err(|e| e.to_string()));
                if let Err(e) = added {
                    tracing::error!("{who}: CA certificate refused: {e}");
                }
            }
            Arc::new(roots)
        }
        None => native_roots(),
    };
    ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(rustls::DEFAULT_VERSIONS)
        .unwrap_or_else(|_| ClientConfig::builder_with_protocol_versions(rustls::DEFAULT_VERSIONS))
        .with_root_certificates(roots)
        .with_no_client_auth()
}
