//! File uploads (SPEC §8): streamed to disk with their SHA-256, announced as
//! `fngate.file.created`, read back by functions through signed URLs.

use std::time::{Duration, Instant};

use crate::common::*;
use http::Request;

/// SHA-256 with ring, as the gateway computes it.
fn sha256_hex(bytes: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, bytes)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn upload_config(dir: &tempfile::TempDir, url: &str, upload_extra: &str) -> String {
    format!(
        "[store]\npath = \"{0}/jobs.db\"\n[backends.fn]\nurls = [\"{url}\"]\n[topics.files]\n\
         [[subscriptions]]\nname = \"thumbs\"\ntopic = \"files\"\nbackend = \"fn\"\npath = \"/new-file\"\n\
         [[routes]]\nname = \"up\"\npath = \"/uploads/{{*key}}\"\nmethods = [\"PUT\", \"POST\"]\n\
         upload = {{ topic = \"files\", dir = \"{0}/files\"{upload_extra} }}\n",
        dir.path().display()
    )
}

async fn put(gw: &Gw, path: &str, body: Vec<u8>) -> Answer {
    send(
        Request::put(gw.url(path))
            .header("content-type", "image/png")
            .body(full(body))
            .unwrap(),
    )
    .await
}

/// Waits (at most 5 s) until the gateway has started a file under `files`.
async fn began(files: &std::path::Path) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while files_in(files).is_empty() {
        assert!(Instant::now() < deadline, "the upload never began");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Files under `dir`, temporary ones included.
fn files_in(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files_in(&p));
        } else {
            out.push(p.display().to_string());
        }
    }
    out
}

#[tokio::test]
async fn an_upload_is_stored_announced_and_readable_by_signed_url_only() {
    let dir = tempfile::tempdir().unwrap();
    let fun = Backend::echo("fn").await;
    let gw = Gw::start(&upload_config(&dir, &fun.url(), "")).await;
    let bytes: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let a = put(&gw, "/uploads/cats/tom.png", bytes.clone()).await;
    assert_eq!(a.status, 201, "{}", a.text());
    let r = a.json();
    assert_eq!(r["key"], "cats/tom.png");
    assert_eq!(r["size"], 200_000);
    assert_eq!(r["sha256"], sha256_hex(&bytes));
    assert_eq!(r["content_type"], "image/png");
    let stored = std::fs::read(dir.path().join("files/cats/tom.png")).unwrap();
    assert_eq!(stored, bytes);

    fun.wait_for(1).await;
    let seen = &fun.seen()[0];
    assert_eq!(seen.headers["ce-type"], "fngate.file.created");
    assert!(
        seen.headers.get("x-fngate-file").is_none(),
        "the marker is not sent"
    );
    let data: serde_json::Value = serde_json::from_slice(&seen.body).unwrap();
    assert_eq!(data["sha256"], r["sha256"]);
    let url = data["url"].as_str().expect("a signed url").to_owned();
    let path = url
        .split_once(&gw.addr.to_string())
        .map(|(_, p)| p.to_owned())
        .expect("on the gateway");
    assert!(
        path.starts_with("/files/up/cats/tom.png?expires="),
        "{path}"
    );

    let got = send(Request::get(gw.url(&path)).body(empty()).unwrap()).await;
    assert_eq!(got.status, 200);
    assert_eq!(got.body.as_ref(), bytes.as_slice());
    // Tampered, unsigned or for another file: 403.
    let tampered = path.replace("sig=", "sig=00");
    for bad in [
        tampered,
        "/files/up/cats/tom.png".to_owned(),
        path.replace("tom.png", "jerry.png"),
    ] {
        let r = send(Request::get(gw.url(&bad)).body(empty()).unwrap()).await;
        r.problem(403);
    }
    // The file path takes no other method.
    let r = send(Request::delete(gw.url(&path)).body(empty()).unwrap()).await;
    assert_eq!(r.status, 405);
}

#[tokio::test]
async fn a_signed_url_expires_after_url_ttl() {
    let dir = tempfile::tempdir().unwrap();
    let fun = Backend::echo("fn").await;
    let gw = Gw::start(&upload_config(&dir, &fun.url(), ", url_ttl = \"1s\"")).await;
    assert_eq!(put(&gw, "/uploads/x", b"x".to_vec()).await.status, 201);
    fun.wait_for(1).await;
    let data: serde_json::Value = serde_json::from_slice(&fun.seen()[0].body).unwrap();
    let url = data["url"].as_str().unwrap();
    let path = &url[url.find("/files/").unwrap()..];
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let r = send(Request::get(gw.url(path)).body(empty()).unwrap()).await;
        if r.status == 403 {
            break;
        }
        assert_eq!(r.status, 200);
        assert!(Instant::now() < deadline, "never expired");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn the_same_bytes_again_publish_no_second_event() {
    let dir = tempfile::tempdir().unwrap();
    let fun = Backend::echo("fn").await;
    let gw = Gw::start(&upload_config(&dir, &fun.url(), ", max_upload = \"1KiB\"")).await;
    assert_eq!(put(&gw, "/uploads/a", b"same".to_vec()).await.status, 201);
    let again = put(&gw, "/uploads/a", b"same".to_vec()).await;
    assert_eq!(again.status, 200, "{}", again.text());
    assert_eq!(put(&gw, "/uploads/a", b"other".to_vec()).await.status, 201);
    fun.wait_for(2).await;
    let m = gw.metrics().await;
    assert!(
        m.contains(r#"fngate_events_total{topic="files",outcome="accepted"} 2"#),
        "{m}"
    );
    // Too large: 413, and nothing left behind, not even a temporary file.
    let before = files_in(&dir.path().join("files"));
    put(&gw, "/uploads/big", vec![7u8; 4096]).await.problem(413);
    assert_eq!(files_in(&dir.path().join("files")), before);
    // A key never climbs out of the directory: `..` is refused by the path
    // rules; an encoded slash is part of one file's name.
    let climb = put(&gw, "/uploads/../../etc/x", b"x".to_vec()).await;
    assert!(climb.status.is_client_error(), "{}", climb.status);
    let encoded = put(&gw, "/uploads/..%2f..%2fetc", b"x".to_vec()).await;
    assert_eq!(encoded.status, 201, "{}", encoded.text());
    let key = encoded.json()["key"].as_str().unwrap().to_owned();
    assert!(!key.split('/').any(|s| s == ".."), "{key}");
    assert!(
        dir.path().join("files").join(&key).is_file(),
        "{key}: {:?}",
        files_in(&dir.path().join("files"))
    );
    assert!(!dir.path().join("etc").exists());
}

#[tokio::test]
async fn a_whole_upload_whose_client_hung_up_at_once_is_kept_and_announced() {
    let dir = tempfile::tempdir().unwrap();
    let fun = Backend::echo("fn").await;
    let gw = Gw::start(&upload_config(&dir, &fun.url(), "")).await;
    let s = sent(
        gw.addr,
        b"PUT /uploads/whole HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\n\r\nhello",
    )
    .await;
    drop(s);
    fun.wait_for(1).await;
    let files = files_in(&dir.path().join("files"));
    assert_eq!(files.len(), 1, "{files:?}");
    assert_eq!(std::fs::read(&files[0]).unwrap(), b"hello");
}

#[tokio::test]
async fn an_aborted_upload_leaves_no_file_and_no_event() {
    let dir = tempfile::tempdir().unwrap();
    let fun = Backend::echo("fn").await;
    let gw = Gw::start(&upload_config(&dir, &fun.url(), "")).await;
    let s = sent(
        gw.addr,
        b"PUT /uploads/cut HTTP/1.1\r\nhost: x\r\ncontent-length: 100000\r\n\r\nonly a little",
    )
    .await;
    // Wait until the gateway has started the file, then hang up.
    let files = dir.path().join("files");
    began(&files).await;
    drop(s);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !files_in(&files).is_empty() {
        assert!(
            Instant::now() < deadline,
            "left behind: {:?}",
            files_in(&files)
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(fun.count(), 0);
}

#[tokio::test]
async fn a_large_upload_streams_to_disk_with_its_hash() {
    let dir = tempfile::tempdir().unwrap();
    let fun = Backend::echo("fn").await;
    let gw = Gw::start(&upload_config(&dir, &fun.url(), "")).await;
    // 48 MiB in 1 MiB chunks, streamed (no content-length).
    let chunk: Vec<u8> = (0..1u32 << 20).map(|i| (i % 253) as u8).collect();
    let mut whole = ring::digest::Context::new(&ring::digest::SHA256);
    for _ in 0..48 {
        whole.update(&chunk);
    }
    let expected: String = whole
        .finish()
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let (tx, body) = futures_channel_body();
    let sender = tokio::spawn(async move {
        for _ in 0..48 {
            if tx.send(bytes::Bytes::from(chunk.clone())).await.is_err() {
                return;
            }
        }
    });
    let a = send(Request::put(gw.url("/uploads/big.bin")).body(body).unwrap()).await;
    sender.await.unwrap();
    assert_eq!(a.status, 201, "{}", a.text());
    assert_eq!(a.json()["sha256"], expected);
    assert_eq!(a.json()["size"], 48u64 << 20);
    assert_eq!(
        std::fs::metadata(dir.path().join("files/big.bin"))
            .unwrap()
            .len(),
        48 << 20
    );
}

/// A request body fed from a channel, chunk by chunk.
fn futures_channel_body() -> (tokio::sync::mpsc::Sender<bytes::Bytes>, BoxBody) {
    use http_body_util::BodyExt as _;
    let (tx, rx) = tokio::sync::mpsc::channel::<bytes::Bytes>(4);
    let stream = http_body_util::StreamBody::new(ChannelStream(rx));
    (tx, stream.map_err(|e| match e {}).boxed())
}

struct ChannelStream(tokio::sync::mpsc::Receiver<bytes::Bytes>);

impl futures_core::Stream for ChannelStream {
    type Item = Result<hyper::body::Frame<bytes::Bytes>, std::convert::Infallible>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        self.0
            .poll_recv(cx)
            .map(|c| c.map(|b| Ok(hyper::body::Frame::data(b))))
    }
}

#[test]
fn upload_routes_are_validated_with_their_position() {
    let base = "[backends.b]\nurls = [\"http://127.0.0.1:9\"]\n[topics.files]\n[[routes]]\nname = \"u\"\npath = \"/u/{*key}\"\n";
    for (extra, expected) in [
        ("upload = { topic = \"nope\" }", "unknown topic `nope`"),
        (
            "backend = \"b\"\nupload = { topic = \"files\" }",
            "stores the body itself",
        ),
        (
            "upload = { topic = \"files\", max_upload = \"lots\" }",
            "routes[u].upload.max_upload",
        ),
        ("upload = { dir = \"x\" }", "missing: an upload announces"),
    ] {
        let text = format!("{base}{extra}\n");
        let err = fngate::Config::parse(&text, "r.toml", &|_| None)
            .unwrap_err()
            .to_string();
        assert!(err.contains(expected), "{expected:?} in {err}");
        assert!(err.contains("r.toml:"), "{err}");
    }
    // files_path is fngate's once a route uploads; before that, a route may use it.
    let files_route = "[backends.b]\nurls = [\"http://127.0.0.1:9\"]\n[[routes]]\nname = \"f\"\npath = \"/files/x\"\nbackend = \"b\"\n";
    fngate::Config::parse(files_route, "r.toml", &|_| None).expect("no upload route: allowed");
    let with_upload = format!("{files_route}[topics.files]\n[[routes]]\nname = \"u\"\npath = \"/u/{{*key}}\"\nupload = {{ topic = \"files\" }}\n");
    let err = fngate::Config::parse(&with_upload, "r.toml", &|_| None)
        .unwrap_err()
        .to_string();
    assert!(err.contains("server.files_path"), "{err}");
    let short = "[server]\nfiles_key = \"short\"\n";
    let err = fngate::Config::parse(short, "r.toml", &|_| None)
        .unwrap_err()
        .to_string();
    assert!(err.contains("at least 32 bytes"), "{err}");
}

#[tokio::test]
async fn without_a_catch_all_each_upload_gets_a_key_of_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let fun = Backend::echo("fn").await;
    let config = format!(
        "[store]\npath = \"{0}/jobs.db\"\n[backends.fn]\nurls = [\"{1}\"]\n[topics.files]\n\
         [[routes]]\nname = \"drop\"\npath = \"/drop\"\nmethods = [\"POST\"]\n\
         upload = {{ topic = \"files\", dir = \"{0}/files\" }}\n",
        dir.path().display(),
        fun.url()
    );
    let gw = Gw::start(&config).await;
    let post = |body: &'static str| send(Request::post(gw.url("/drop")).body(full(body)).unwrap());
    let (a, b) = (post("one").await, post("two").await);
    assert_eq!((a.status.as_u16(), b.status.as_u16()), (201, 201));
    let (ka, kb) = (
        a.json()["key"].as_str().unwrap().to_owned(),
        b.json()["key"].as_str().unwrap().to_owned(),
    );
    assert_ne!(ka, kb);
    assert_eq!(
        std::fs::read(dir.path().join("files").join(&ka)).unwrap(),
        b"one"
    );
    assert_eq!(a.json()["content_type"], "application/octet-stream");
}

#[tokio::test]
async fn a_partial_upload_left_by_a_kill_is_removed_at_the_next_start() {
    let dir = tempfile::tempdir().unwrap();
    let fun = Backend::echo("fn").await;
    let path = dir.path().join("routes.toml");
    std::fs::write(&path, upload_config(&dir, &fun.url(), "")).unwrap();
    let config = path.display().to_string();
    let mut first = Proc::start(&config, &[]);
    let mut s = tokio::net::TcpStream::connect(first.addr).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(
        &mut s,
        b"PUT /uploads/half HTTP/1.1\r\nhost: x\r\ncontent-length: 100000\r\n\r\nthe first bytes",
    )
    .await
    .unwrap();
    let files = dir.path().join("files");
    began(&files).await;
    first.signal("-9");
    first.wait_exit();
    drop(s);
    assert_eq!(
        files_in(&files).len(),
        1,
        "the killed process left its partial file"
    );
    let _second = Proc::start(&config, &[]);
    assert_eq!(files_in(&files), Vec::<String>::new(), "swept at start");
    assert_eq!(fun.count(), 0, "nothing was announced");
}
