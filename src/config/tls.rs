//! `[server.tls]`: the HTTPS listener's certificates, read and checked at
//! load (a key that does not match its certificate is a config error).

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use super::decode::{Ctx, Obj, Spanned};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerTls {
    pub listen: SocketAddr,
    /// The first is served to clients without SNI or with an unknown name.
    pub certs: Vec<TlsCert>,
    /// Clients must present a certificate signed by one of these (mTLS).
    pub client_ca: Option<PemFile>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsCert {
    pub cert: PemFile,
    pub key: PemFile,
}

/// A PEM file as read at load; compared by content, so a rotated file is a change.
#[derive(Clone, PartialEq, Eq)]
pub struct PemFile {
    pub path: PathBuf,
    pub pem: Arc<[u8]>,
}

impl fmt::Debug for PemFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Key files are secrets: only the path is ever printed.
        write!(f, "PemFile({})", self.path.display())
    }
}

impl PemFile {
    pub fn certs(&self) -> Vec<CertificateDer<'static>> {
        CertificateDer::pem_slice_iter(&self.pem)
            .filter_map(Result::ok)
            .collect()
    }

    pub fn key(&self) -> Option<PrivateKeyDer<'static>> {
        PrivateKeyDer::from_pem_slice(&self.pem).ok()
    }
}

pub(super) fn server_tls(ctx: &mut Ctx<'_>, mut obj: Obj<'_>, base: &Path) -> Option<ServerTls> {
    let listen = match obj.string(ctx, "listen") {
        Some(s) => match s.value.parse::<SocketAddr>() {
            Ok(a) => Some(a),
            Err(_) => {
                ctx.error(
                    s.span,
                    obj.key_path("listen"),
                    format!("`{}` is not an address such as \"127.0.0.1:8443\"", s.value),
                );
                None
            }
        },
        None => {
            ctx.error(
                obj.span(),
                obj.key_path("listen"),
                "missing: the HTTPS address, e.g. \"127.0.0.1:8443\"",
            );
            None
        }
    };
    let mut certs = Vec::new();
    let had_certs = obj.has("certs");
    for mut c in obj.table_array(ctx, "certs") {
        let cert = c
            .string(ctx, "cert")
            .and_then(|f| read(ctx, &c, "cert", &f, base));
        let key = c
            .string(ctx, "key")
            .and_then(|f| read(ctx, &c, "key", &f, base));
        for (k, v) in [("cert", &cert), ("key", &key)] {
            if v.is_none() && !c.has(k) {
                ctx.error(
                    c.span(),
                    c.key_path(k),
                    format!("missing: the {k} PEM file"),
                );
            }
        }
        if let (Some(cert), Some(key)) = (cert, key) {
            match check_pair(&cert, &key) {
                Ok(()) => certs.push(TlsCert { cert, key }),
                Err(why) => ctx.error(c.span(), c.path(), why),
            }
        }
        c.finish(ctx);
    }
    if !had_certs {
        ctx.error(
            obj.span(),
            obj.key_path("certs"),
            "missing: certs = [{ cert = \"...pem\", key = \"...pem\" }]",
        );
    }
    let client_ca = obj
        .string(ctx, "client_ca")
        .and_then(|f| read(ctx, &obj, "client_ca", &f, base))
        .filter(|ca| {
            let ok = !ca.certs().is_empty();
            if !ok {
                ctx.error(
                    obj.key_span("client_ca"),
                    obj.key_path("client_ca"),
                    "no PEM certificate in this file",
                );
            }
            ok
        });
    obj.finish(ctx);
    if certs.is_empty() {
        return None;
    }
    Some(ServerTls {
        listen: listen?,
        certs,
        client_ca,
    })
}

fn read(
    ctx: &mut Ctx<'_>,
    obj: &Obj<'_>,
    key: &str,
    file: &Spanned<String>,
    base: &Path,
) -> Option<PemFile> {
    let (path, bytes) = super::file::read(ctx, obj, key, file, base)?;
    Some(PemFile {
        path,
        pem: bytes.into(),
    })
}

/// The certificate chain parses, the key parses, and the key is the certificate's.
fn check_pair(cert: &PemFile, key: &PemFile) -> Result<(), PairError> {
    let chain = cert.certs();
    if chain.is_empty() {
        return Err(PairError::NoCertificate(cert.path.clone()));
    }
    let Some(der) = key.key() else {
        return Err(PairError::NoKey(key.path.clone()));
    };
    let provider = rustls::crypto::ring::default_provider();
    rustls::sign::CertifiedKey::from_der(chain, der, &provider)
        .map(|_| ())
        .map_err(|source| PairError::Mismatch {
            cert: cert.path.clone(),
            key: key.path.clone(),
            source,
        })
}

/// Why a certificate and its key are refused.
#[derive(Debug, thiserror::Error)]
enum PairError {
    #[error("{}: no PEM certificate", .0.display())]
    NoCertificate(PathBuf),
    #[error("{}: no PEM private key", .0.display())]
    NoKey(PathBuf),
    #[error("{} and {}: {source}", cert.display(), key.display())]
    Mismatch {
        cert: PathBuf,
        key: PathBuf,
        source: rustls::Error,
    },
}
