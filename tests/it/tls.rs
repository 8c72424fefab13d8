//! The HTTPS listener: ALPN, SNI, client certificates, rotation without
//! dropping connections, and plain HTTP sent to it. Certificates are made
//! here by a test CA; clients verify them for real.

use crate::common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::tls::TestCa;
use common::*;
use http::{Request, Version};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::RootCertStore;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

type Identity = (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>);

fn client_config(ca: &TestCa, alpn: &[&[u8]], identity: Option<Identity>) -> rustls::ClientConfig {
    trusting(ca.pem().as_bytes(), alpn, identity)
}

/// A client trusting the CA certificates in `ca_pem`.
fn trusting(ca_pem: &[u8], alpn: &[&[u8]], identity: Option<Identity>) -> rustls::ClientConfig {
    let mut roots = RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_slice_iter(ca_pem) {
        roots.add(c.unwrap()).unwrap();
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots);
    let mut config = match identity {
        Some((certs, key)) => builder.with_client_auth_cert(certs, key).unwrap(),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    config
}

use rustls::pki_types::pem::PemObject;

/// A TLS connection to `addr` verified for `name`.
async fn connect(
    addr: std::net::SocketAddr,
    name: &str,
    config: rustls::ClientConfig,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from(name.to_owned()).unwrap();
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
}

/// One GET over an established TLS connection, by the protocol ALPN agreed on.
async fn get(
    tls: tokio_rustls::client::TlsStream<TcpStream>,
    path: &str,
) -> (Version, u16, String) {
    let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
    let req = Request::get(format!("https://localhost{path}"))
        .header("host", "localhost")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let res = if h2 {
        let (mut s, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
                .await
                .unwrap();
        tokio::spawn(conn);
        s.send_request(req).await.unwrap()
    } else {
        let (mut s, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .unwrap();
        tokio::spawn(conn);
        s.send_request(req).await.unwrap()
    };
    let version = res.version();
    let status = res.status().as_u16();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    (version, status, String::from_utf8_lossy(&body).into_owned())
}

/// Writes `name.pem` and `name-key.pem` for a leaf of `ca`.
fn write_leaf(ca: &TestCa, dir: &Path, name: &str, names: &[&str]) {
    let (certs, key) = ca.leaf(names);
    let pem = |label: &str, der: &[u8]| {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD.encode(der);
        let lines: Vec<&str> = b64
            .as_bytes()
            .chunks(64)
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect();
        format!(
            "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
            lines.join("\n")
        )
    };
    std::fs::write(
        dir.join(format!("{name}.pem")),
        pem("CERTIFICATE", certs[0].as_ref()),
    )
    .unwrap();
    std::fs::write(
        dir.join(format!("{name}-key.pem")),
        pem("PRIVATE KEY", key.secret_der()),
    )
    .unwrap();
}

fn tls_config(backend: &Backend, dir: &Path, certs: &[&str], extra: &str) -> String {
    let list: Vec<String> = certs
        .iter()
        .map(|n| {
            format!(
                "{{ cert = \"{}\", key = \"{}\" }}",
                dir.join(format!("{n}.pem")).display(),
                dir.join(format!("{n}-key.pem")).display()
            )
        })
        .collect();
    format!(
        "[server]\nwatch = true\n[server.tls]\nlisten = \"127.0.0.1:0\"\ncerts = [{}]\n{extra}\n\
         [backends.b]\nurls = [\"{}\"]\n[[routes]]\nname = \"any\"\npath = \"/{{*rest}}\"\nbackend = \"b\"\n",
        list.join(", "),
        backend.url()
    )
}

async fn start(text: &str, dir: &Path) -> Gw {
    let path = dir.join("routes.toml");
    std::fs::write(&path, text).unwrap();
    Gw::start_config(fngate::Config::load(&path).unwrap()).await
}

/// A gateway serving a `localhost` certificate of a fresh CA over HTTPS.
async fn localhost_gateway() -> (TestCa, tempfile::TempDir, Backend, Gw) {
    let ca = TestCa::new();
    let dir = tempfile::tempdir().unwrap();
    write_leaf(&ca, dir.path(), "localhost", &["localhost"]);
    let backend = Backend::echo("b").await;
    let gw = start(
        &tls_config(&backend, dir.path(), &["localhost"], ""),
        dir.path(),
    )
    .await;
    (ca, dir, backend, gw)
}

#[tokio::test]
async fn https_speaks_h2_and_http11_as_alpn_agrees() {
    let (ca, _dir, _backend, gw) = localhost_gateway().await;
    let addr = gw.tls.unwrap();
    for (alpn, version) in [
        (b"h2".as_slice(), Version::HTTP_2),
        (b"http/1.1".as_slice(), Version::HTTP_11),
    ] {
        let tls = connect(addr, "localhost", client_config(&ca, &[alpn], None))
            .await
            .unwrap();
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(alpn));
        let (v, status, body) = get(tls, "/hello").await;
        assert_eq!((v, status), (version, 200), "{body}");
        let seen: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(seen["headers"]["x-forwarded-proto"], "https");
    }
}

#[tokio::test]
async fn sni_picks_the_certificate_for_each_name() {
    let ca = TestCa::new();
    let dir = tempfile::tempdir().unwrap();
    // The first certificate is the default: it also covers 127.0.0.1 (no SNI).
    write_leaf(&ca, dir.path(), "a", &["a.test", "127.0.0.1"]);
    write_leaf(&ca, dir.path(), "b", &["b.test"]);
    let backend = Backend::echo("b").await;
    let gw = start(
        &tls_config(&backend, dir.path(), &["a", "b"], ""),
        dir.path(),
    )
    .await;
    let addr = gw.tls.unwrap();
    // Each name verifies only against its own certificate.
    for name in ["a.test", "b.test", "127.0.0.1"] {
        let tls = connect(addr, name, client_config(&ca, &[b"http/1.1"], None))
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(get(tls, "/x").await.1, 200);
    }
    // An unknown name gets the default certificate, which does not cover it.
    assert!(connect(addr, "c.test", client_config(&ca, &[], None))
        .await
        .is_err());
}

#[tokio::test]
async fn client_certificates_are_required_when_client_ca_is_set() {
    let ca = TestCa::new();
    let dir = tempfile::tempdir().unwrap();
    write_leaf(&ca, dir.path(), "localhost", &["localhost"]);
    let clients = TestCa::new();
    let backend = Backend::echo("b").await;
    let extra = format!("client_ca = \"{}\"", clients.write(dir.path()));
    let gw = start(
        &tls_config(&backend, dir.path(), &["localhost"], &extra),
        dir.path(),
    )
    .await;
    let addr = gw.tls.unwrap();

    let good = client_config(&ca, &[b"http/1.1"], Some(clients.leaf(&["client.test"])));
    let tls = connect(addr, "localhost", good).await.unwrap();
    assert_eq!(get(tls, "/x").await.1, 200);

    let strangers = TestCa::new();
    for identity in [None, Some(strangers.leaf(&["client.test"]))] {
        let config = client_config(&ca, &[b"http/1.1"], identity);
        // TLS 1.3 reports a refused client certificate on the first read.
        let refused = match connect(addr, "localhost", config).await {
            Err(_) => true,
            Ok(mut tls) => {
                let _ = tls
                    .write_all(b"GET / HTTP/1.1\r\nhost: localhost\r\n\r\n")
                    .await;
                let mut buf = [0u8; 64];
                !matches!(tls.read(&mut buf).await, Ok(n) if n > 0)
            }
        };
        assert!(refused, "a client without a trusted certificate is refused");
    }
    assert_eq!(backend.count(), 1);
}

#[tokio::test]
async fn rotated_certificates_serve_new_connections_and_spare_open_ones() {
    let (old_ca, new_ca) = (TestCa::new(), TestCa::new());
    let dir = tempfile::tempdir().unwrap();
    write_leaf(&old_ca, dir.path(), "localhost", &["localhost"]);
    let backend = Backend::echo("b").await;
    let gw = start(
        &tls_config(&backend, dir.path(), &["localhost"], ""),
        dir.path(),
    )
    .await;
    let addr = gw.tls.unwrap();
    let state = gw.gateway.as_ref().unwrap().state.clone();

    // An HTTP/1.1 connection opened before the rotation.
    let tls = connect(
        addr,
        "localhost",
        client_config(&old_ca, &[b"http/1.1"], None),
    )
    .await
    .unwrap();
    let (mut open, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = || {
        Request::get("/x")
            .header("host", "localhost")
            .body(Empty::<Bytes>::new())
            .unwrap()
    };
    assert_eq!(open.send_request(req()).await.unwrap().status(), 200);

    // The certificate files change on disk: the watcher reloads them.
    write_leaf(&new_ca, dir.path(), "localhost", &["localhost"]);
    wait_for_version(&state, 2).await;
    let tls = connect(
        addr,
        "localhost",
        client_config(&new_ca, &[b"http/1.1"], None),
    )
    .await
    .unwrap();
    assert_eq!(get(tls, "/x").await.1, 200);
    assert!(
        connect(addr, "localhost", client_config(&old_ca, &[], None))
            .await
            .is_err()
    );
    // The connection opened before still serves.
    let res = open.send_request(req()).await.unwrap();
    assert_eq!(res.status(), 200);
    res.into_body().collect().await.unwrap();

    // A broken certificate is refused; the last good one keeps serving.
    std::fs::write(dir.path().join("localhost.pem"), "not a certificate").unwrap();
    let a = send(
        Request::post(format!("http://{}/reload", gw.admin))
            .body(empty())
            .unwrap(),
    )
    .await;
    assert_eq!(a.status, 422, "{}", a.text());
    assert!(a.text().contains("localhost.pem"), "{}", a.text());
    let tls = connect(
        addr,
        "localhost",
        client_config(&new_ca, &[b"http/1.1"], None),
    )
    .await
    .unwrap();
    assert_eq!(get(tls, "/x").await.1, 200);
}

async fn wait_for_version(state: &fngate::state::State, version: u64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while state.load().version < version {
        assert!(
            std::time::Instant::now() < deadline,
            "no reload within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn plain_http_to_the_tls_port_fails_and_harms_nothing() {
    let (ca, _dir, backend, gw) = localhost_gateway().await;
    let addr = gw.tls.unwrap();
    let answer = raw(addr, b"GET / HTTP/1.1\r\nhost: localhost\r\n\r\n").await;
    assert!(!answer.contains("HTTP/1.1 200"), "{answer}");
    let tls = connect(addr, "localhost", client_config(&ca, &[b"h2"], None))
        .await
        .unwrap();
    assert_eq!(get(tls, "/x").await.1, 200);
    assert_eq!(backend.count(), 1);
}

#[tokio::test]
async fn fngate_cert_makes_a_ca_and_a_certificate_the_listener_serves() {
    let dir = tempfile::tempdir().unwrap();
    let out = fngate()
        .args([
            "cert",
            "--dir",
            dir.path().to_str().unwrap(),
            "--name",
            "localhost",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A second run keeps the files unless --force.
    let again = fngate()
        .args(["cert", "--dir", dir.path().to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("--force"));

    let backend = Backend::echo("b").await;
    let gw = start(
        &tls_config(&backend, dir.path(), &["localhost"], ""),
        dir.path(),
    )
    .await;
    let ca = std::fs::read(dir.path().join("ca.pem")).unwrap();
    let config = trusting(&ca, &[], None);
    let tls = connect(gw.tls.unwrap(), "localhost", config).await.unwrap();
    assert_eq!(get(tls, "/x").await.1, 200);
}

#[tokio::test]
async fn certificates_moved_by_a_reload_are_watched_too() {
    let (first_ca, second_ca) = (TestCa::new(), TestCa::new());
    let dir = tempfile::tempdir().unwrap();
    // Outside the config's directory, so only a new watch can see changes there.
    let elsewhere = tempfile::tempdir().unwrap();
    let moved = elsewhere.path().to_owned();
    write_leaf(&first_ca, dir.path(), "localhost", &["localhost"]);
    write_leaf(&first_ca, &moved, "localhost", &["localhost"]);
    let backend = Backend::echo("b").await;
    let gw = start(
        &tls_config(&backend, dir.path(), &["localhost"], ""),
        dir.path(),
    )
    .await;
    let state = gw.gateway.as_ref().unwrap().state.clone();
    // The config now names certificates in another directory.
    std::fs::write(
        dir.path().join("routes.toml"),
        tls_config(&backend, &moved, &["localhost"], ""),
    )
    .unwrap();
    wait_for_version(&state, 2).await;
    // Rotating them there is picked up (the watcher follows within seconds).
    write_leaf(&second_ca, &moved, "localhost", &["localhost"]);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let tls = connect(
            gw.tls.unwrap(),
            "localhost",
            client_config(&second_ca, &[], None),
        )
        .await;
        if tls.is_ok() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the moved certificate was never reloaded"
        );
        // Rewrite, so the watcher sees a change once it watches the new directory.
        write_leaf(&second_ca, &moved, "localhost", &["localhost"]);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
