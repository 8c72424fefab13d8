//! `fngate cert`: a development CA and certificates on rcgen, for HTTPS on a
//! laptop and in tests of your own. Never for production: the CA's key sits
//! next to its certificate.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
};

/// What `make` wrote.
#[derive(Debug)]
pub struct Written {
    pub files: Vec<PathBuf>,
}

/// Writes `ca.pem`, `ca-key.pem`, `NAME.pem` and `NAME-key.pem` into `dir`,
/// NAME being the first of `names`. Existing files are kept unless `force`.
pub fn make(dir: &Path, names: &[String], force: bool) -> Result<Written, String> {
    let first = names.first().ok_or("give at least one --name")?;
    let files = [
        dir.join("ca.pem"),
        dir.join("ca-key.pem"),
        dir.join(format!("{first}.pem")),
        dir.join(format!("{first}-key.pem")),
    ];
    if !force {
        if let Some(f) = files.iter().find(|f| f.exists()) {
            return Err(format!(
                "{} exists; pass --force to replace it",
                f.display()
            ));
        }
    }
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(|e| e.to_string())?;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(
        DnType::CommonName,
        "fngate development CA (not for production)",
    );
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_key = KeyPair::generate().map_err(|e| e.to_string())?;
    let ca_key_pem = ca_key.serialize_pem();
    let ca = CertifiedIssuer::self_signed(params, ca_key).map_err(|e| e.to_string())?;

    let mut leaf = CertificateParams::new(names.to_vec()).map_err(|e| e.to_string())?;
    leaf.distinguished_name
        .push(DnType::CommonName, first.as_str());
    let key = KeyPair::generate().map_err(|e| e.to_string())?;
    let cert = leaf.signed_by(&key, &ca).map_err(|e| e.to_string())?;

    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let contents = [ca.pem(), ca_key_pem, cert.pem(), key.serialize_pem()];
    for (path, text) in files.iter().zip(contents) {
        std::fs::write(path, text).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(Written {
        files: files.to_vec(),
    })
}
