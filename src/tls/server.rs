//! The HTTPS listener's rustls config: TLS 1.2 and 1.3, ALPN h2 and
//! http/1.1, a certificate per SNI name, optional client certificates.

use std::sync::Arc;

use rustls::pki_types::{CertificateDer, ServerName};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{RootCertStore, ServerConfig};

use crate::config::ServerTls;

/// Picks the first certificate valid for the client's SNI name; the first
/// of all for clients without SNI or with a name none covers.
#[derive(Debug)]
struct BySni {
    certs: Vec<Arc<CertifiedKey>>,
}

impl ResolvesServerCert for BySni {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let fallback = self.certs.first().cloned();
        let Some(name) = hello
            .server_name()
            .and_then(|n| ServerName::try_from(n).ok())
        else {
            return fallback;
        };
        self.certs
            .iter()
            .find(|c| covers(&c.cert[0], &name))
            .cloned()
            .or(fallback)
    }
}

fn covers(cert: &CertificateDer<'_>, name: &ServerName<'_>) -> bool {
    webpki::EndEntityCert::try_from(cert)
        .is_ok_and(|ee| ee.verify_is_valid_for_subject_name(name).is_ok())
}

/// Why the HTTPS listener's config could not be built.
#[derive(Debug, thiserror::Error)]
pub(crate) enum TlsError {
    #[error("{}: no private key", .0.display())]
    NoKey(std::path::PathBuf),
    #[error("{}: {source}", path.display())]
    File {
        path: std::path::PathBuf,
        source: rustls::Error,
    },
    #[error("{}: {source}", path.display())]
    ClientCa {
        path: std::path::PathBuf,
        source: rustls::server::VerifierBuilderError,
    },
    #[error(transparent)]
    Rustls(#[from] rustls::Error),
}

/// Builds the config; the files were checked at load, so an error here is
/// rare (and the caller keeps the previous config).
pub(crate) fn server_config(tls: &ServerTls) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = super::provider();
    let mut certs = Vec::with_capacity(tls.certs.len());
    let at = |path: &std::path::Path| {
        let path = path.to_owned();
        move |source| TlsError::File { path, source }
    };
    for c in &tls.certs {
        let key = c
            .key
            .key()
            .ok_or_else(|| TlsError::NoKey(c.key.path.clone()))?;
        let certified =
            CertifiedKey::from_der(c.cert.certs(), key, &provider).map_err(at(&c.cert.path))?;
        certs.push(Arc::new(certified));
    }
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?;
    let builder = match &tls.client_ca {
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for cert in ca.certs() {
                roots.add(cert).map_err(at(&ca.path))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| TlsError::ClientCa {
                    path: ca.path.clone(),
                    source: e,
                })?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_cert_resolver(Arc::new(BySni { certs }));
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
