//! File uploads (SPEC §8): a `PUT` or `POST` body streamed to a temporary
//! file (never held in memory) with its SHA-256 computed on the way, fsync'd,
//! announced as a `fngate.file.created` event, then renamed into place; and
//! `GET {files_path}/{route}/{key}` serving it to whoever holds a signed URL.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};

use crate::body::Body;
use crate::config::Upload;
use crate::context;
use crate::events::cloudevent::Event;
use crate::jobs::{self, JobError, Jobs};
use crate::state::{RouteContext, Snapshot};

use crate::signed_url::FILE_MARKER;

#[derive(Debug, thiserror::Error)]
pub(crate) enum UploadError {
    #[error("`{0}` is not a file key: use path segments without `.` or `..`")]
    Key(String),
    #[error("the upload is larger than {limit} bytes")]
    TooLarge { limit: u64 },
    #[error("the upload was cut off: {0}")]
    Aborted(String),
    #[error("the file cannot be stored: {0}")]
    Disk(String),
    #[error(transparent)]
    Job(#[from] JobError),
    #[error("the signature is missing, wrong or expired")]
    Forbidden,
    #[error("no such file")]
    NoFile,
    #[error("files are read with GET")]
    Method,
}

/// Removes the temporary files a killed process left in the upload
/// directories (a drop guard does not run on SIGKILL); how many.
pub(crate) fn sweep_temps(config: &crate::config::Config) -> usize {
    fn sweep(dir: &Path, depth: usize) -> usize {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return 0;
        };
        let mut n = 0;
        for e in entries.flatten() {
            let path = e.path();
            let is_temp = e.file_name().to_string_lossy().starts_with(".tmp-");
            match e.file_type() {
                Ok(t) if t.is_dir() && depth < 64 => n += sweep(&path, depth + 1),
                Ok(t) if t.is_file() && is_temp && std::fs::remove_file(&path).is_ok() => n += 1,
                _ => {}
            }
        }
        n
    }
    config
        .routes
        .iter()
        .filter_map(|r| match &r.action {
            crate::config::Action::Upload(u) => Some(sweep(&u.dir, 0)),
            _ => None,
        })
        .sum()
}

/// A temporary file that is removed unless it was renamed into place.
struct Temp(Option<PathBuf>);

impl Drop for Temp {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = std::fs::remove_file(p);
        }
    }
}

fn disk(e: impl std::fmt::Display) -> UploadError {
    UploadError::Disk(e.to_string())
}

/// A key as the route gave it: relative segments, none `.` or `..`.
fn check_key(key: &str) -> Result<(), UploadError> {
    let ok = !key.is_empty()
        && key.len() <= 512
        && !key.starts_with('/')
        && key
            .split('/')
            .all(|s| !s.is_empty() && s != "." && s != ".." && !s.starts_with(".tmp-"))
        && key
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'\\' && b != b'?' && b != b'#');
    if ok {
        Ok(())
    } else {
        Err(UploadError::Key(key.to_owned()))
    }
}

pub(crate) async fn receive(
    jobs: &Arc<Jobs>,
    req: Request<Body>,
    ctx: &RouteContext,
    upload: &Upload,
) -> Result<Response<Body>, UploadError> {
    if jobs.draining() {
        return Err(JobError::Draining.into());
    }
    let route = &ctx.active().config;
    // The catch-all names the file; without one, a key is made.
    let key = match route
        .path
        .params
        .iter()
        .position(|p| p.catch_all)
        .and_then(|i| ctx.params().nth(i))
    {
        Some(k) => k.to_owned(),
        None => jobs::new_id().ok_or_else(|| disk("no randomness for a key"))?,
    };
    check_key(&key)?;
    let content_type = req
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/octet-stream")
        .to_owned();
    let base = req
        .headers()
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(|h| format!("http://{h}"))
        .unwrap_or_default();
    let (parts, mut body) = req.into_parts();
    let dir = upload.dir.clone();
    let final_path = dir.join(&key);
    let parent = final_path.parent().unwrap_or(&dir).to_owned();
    tokio::fs::create_dir_all(&parent).await.map_err(disk)?;
    let tmp_name = format!(".tmp-{}", jobs::new_id().unwrap_or_default());
    let tmp_path = parent.join(tmp_name);
    let mut temp = Temp(Some(tmp_path.clone()));
    let mut file = std::fs::File::create(&tmp_path).map_err(disk)?;
    let mut hash = ring::digest::Context::new(&ring::digest::SHA256);
    let mut size: u64 = 0;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| UploadError::Aborted(crate::body::chain(&*e)))?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        size += data.len() as u64;
        if size > upload.max_upload {
            return Err(UploadError::TooLarge {
                limit: upload.max_upload,
            });
        }
        hash.update(&data);
        // Frames are small (hyper's reads); a blocking write of one is brief.
        file = tokio::task::spawn_blocking(move || file.write_all(&data).map(|()| file))
            .await
            .map_err(disk)?
            .map_err(disk)?;
    }
    let file = tokio::task::spawn_blocking(move || file.sync_all().map(|()| file))
        .await
        .map_err(disk)?
        .map_err(disk)?;
    drop(file);
    if let Some(log) = context::exchange(&parts.extensions) {
        log.add_bytes_in(size);
    }
    let sha256: String = hash
        .finish()
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let reference = serde_json::json!({
        "key": key,
        "size": size,
        "sha256": sha256,
        "content_type": content_type,
    });
    // The same bytes under the same key again: in place already, no second event.
    let same = same_file(&final_path, size, &sha256).await;
    if !same {
        announce(jobs, ctx, upload, &reference, &base).await?;
    }
    let (from, to) = (tmp_path.clone(), final_path.clone());
    tokio::task::spawn_blocking(move || {
        std::fs::rename(&from, &to)?;
        // The rename itself durable: the directory's entry.
        std::fs::File::open(to.parent().unwrap_or(Path::new(".")))?.sync_all()
    })
    .await
    .map_err(disk)?
    .map_err(disk)?;
    temp.0 = None;
    let mut res = Response::new(
        Full::new(Bytes::from(reference.to_string()))
            .map_err(|e| match e {})
            .boxed_unsync(),
    );
    *res.status_mut() = if same {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    res.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    Ok(res)
}

/// Whether `path` holds exactly these bytes (size, then SHA-256 read back).
async fn same_file(path: &Path, size: u64, sha256: &str) -> bool {
    let path = path.to_owned();
    let sha256 = sha256.to_owned();
    tokio::task::spawn_blocking(move || {
        let Ok(meta) = std::fs::metadata(&path) else {
            return false;
        };
        if meta.len() != size {
            return false;
        }
        let Ok(mut f) = std::fs::File::open(&path) else {
            return false;
        };
        let mut hash = ring::digest::Context::new(&ring::digest::SHA256);
        let mut buf = vec![0u8; 64 << 10];
        loop {
            match std::io::Read::read(&mut f, &mut buf) {
                Ok(0) => break,
                Ok(n) => hash.update(&buf[..n]),
                Err(_) => return false,
            }
        }
        let got: String = hash
            .finish()
            .as_ref()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        got == sha256
    })
    .await
    .unwrap_or(false)
}

/// Publishes `fngate.file.created` to the upload's topic, durable before the 201.
async fn announce(
    jobs: &Arc<Jobs>,
    ctx: &RouteContext,
    upload: &Upload,
    reference: &serde_json::Value,
    base: &str,
) -> Result<(), UploadError> {
    let config = &ctx.snapshot.config;
    let route = &ctx.active().config;
    let Some(topic) = config.topic(&upload.topic) else {
        return Ok(());
    };
    let key = reference["key"].as_str().unwrap_or_default();
    let sha = reference["sha256"].as_str().unwrap_or_default();
    let event = Event::wrap(
        format!("{key}@{sha}"),
        format!("/fngate/uploads/{}", route.name),
        "fngate.file.created",
        reference.clone(),
    );
    let now = jobs::now_ms();
    let mut deliveries = crate::events::deliveries_of(config, topic, &event, None, now)
        .map_err(|e| disk(e.to_string()))?;
    let marker = format!("{base}{}/{}/{key}", config.server.files_path, route.name);
    for d in &mut deliveries {
        let mut headers = jobs::decode_headers(&d.request.headers);
        if let Ok(v) = HeaderValue::try_from(marker.as_str()) {
            headers.insert(FILE_MARKER, v);
        }
        d.request.headers = jobs::encode_headers(&headers);
    }
    let window = u64::try_from(topic.dedupe_window.as_millis()).unwrap_or(u64::MAX);
    let published = jobs::NewEvent {
        topic: topic.name.to_string(),
        source: event.source().to_owned(),
        id: event.id().to_owned(),
        dedupe_until: (window > 0)
            .then(|| now.saturating_add(i64::try_from(window).unwrap_or(i64::MAX))),
        deliveries,
    };
    jobs.publish(&topic.name, vec![published], now).await?;
    Ok(())
}

/// `GET {files_path}/{route}/{key}?expires=..&sig=..`: the file, to a holder
/// of a URL signed for it that has not expired; else 403.
pub(crate) async fn serve(
    jobs: &Jobs,
    snapshot: &Snapshot,
    req: &http::request::Parts,
) -> Result<Response<Body>, UploadError> {
    let path = req.uri.path();
    let files = &snapshot.config.server.files_path;
    let rest = path
        .strip_prefix(files.as_str())
        .and_then(|p| p.strip_prefix('/'))
        .unwrap_or_default();
    let (route, key) = rest.split_once('/').ok_or(UploadError::NoFile)?;
    if req.method != Method::GET && req.method != Method::HEAD {
        return Err(UploadError::Method);
    }
    let key_bytes = jobs
        .files_key()
        .await
        .map_err(|e| UploadError::Job(JobError::Store(e)))?;
    let now = u64::try_from(jobs::now_ms() / 1000).unwrap_or(0);
    if !crate::signed_url::verify(&key_bytes, path, req.uri.query(), now) {
        return Err(UploadError::Forbidden);
    }
    let dir = snapshot.config.routes.iter().find_map(|r| match &r.action {
        crate::config::Action::Upload(u) if *r.name == *route => Some(u.dir.clone()),
        _ => None,
    });
    let (Some(dir), Ok(())) = (dir, check_key(key)) else {
        return Err(UploadError::NoFile);
    };
    let file = tokio::fs::File::open(dir.join(key))
        .await
        .map_err(|_| UploadError::NoFile)?;
    let len = file.metadata().await.map(|m| m.len()).unwrap_or(0);
    let body: Body = if req.method == Method::HEAD {
        Full::new(Bytes::new())
            .map_err(|e| match e {})
            .boxed_unsync()
    } else {
        FileBody {
            file,
            buf: bytes::BytesMut::new(),
        }
        .boxed_unsync()
    };
    let mut res = Response::new(body);
    res.headers_mut()
        .insert(CONTENT_LENGTH, HeaderValue::from(len));
    res.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    Ok(res)
}

/// A file read in 64 KiB frames as the client takes them.
struct FileBody {
    file: tokio::fs::File,
    buf: bytes::BytesMut,
}

impl hyper::body::Body for FileBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
        use std::task::Poll;
        let this = self.get_mut();
        this.buf.reserve(64 << 10);
        match tokio_util::io::poll_read_buf(std::pin::Pin::new(&mut this.file), cx, &mut this.buf) {
            Poll::Ready(Ok(0)) => Poll::Ready(None),
            Poll::Ready(Ok(_)) => Poll::Ready(Some(Ok(hyper::body::Frame::data(
                this.buf.split().freeze(),
            )))),
            Poll::Ready(Err(e)) => Poll::Ready(Some(Err(Box::new(e)))),
            Poll::Pending => Poll::Pending,
        }
    }
}
