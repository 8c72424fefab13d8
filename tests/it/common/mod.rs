//! Spawns real backends and the real gateway on 127.0.0.1:0, a fresh set per test.
#![allow(dead_code, unreachable_pub)]

pub mod redis;
pub mod tls;

use std::convert::Infallible;
use std::future::Future;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

pub type BoxBody =
    http_body_util::combinators::BoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

/// What a backend saw of one request.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: Method,
    pub uri: String,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// False when reading the body failed (an aborted upload).
    pub body_complete: bool,
}

/// A hyper backend that records every request and answers with `handler`.
pub struct Backend {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    /// Request heads received (counted before the body is read).
    heads: Arc<std::sync::atomic::AtomicUsize>,
    arrived: Arc<Notify>,
}

impl Backend {
    /// An echo backend: answers 200 with a JSON description of the request.
    pub async fn echo(name: &'static str) -> Self {
        Self::with(move |seen: Seen| async move {
            let headers: serde_json::Map<String, serde_json::Value> = seen
                .headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").into()))
                .collect();
            let json = serde_json::json!({
                "backend": name,
                "method": seen.method.as_str(),
                "uri": seen.uri,
                "headers": headers,
                "body": String::from_utf8_lossy(&seen.body),
            });
            Response::builder()
                .header("content-type", "application/json")
                .header("x-backend", name)
                .header("connection", "x-hop")
                .header("x-hop", "secret")
                .body(full(json.to_string()))
                .unwrap()
        })
        .await
    }

    /// A backend that answers every request with `handler`.
    pub async fn with<F, Fut>(handler: F) -> Self
    where
        F: Fn(Seen) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Response<BoxBody>> + Send + 'static,
    {
        Self::on(TcpListener::bind("127.0.0.1:0").await.unwrap(), handler)
    }

    /// Like [`Backend::with`], on a given listener (a function that comes back
    /// on the port a bound socket kept for it).
    pub fn on<F, Fut>(listener: TcpListener, handler: F) -> Self
    where
        F: Fn(Seen) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Response<BoxBody>> + Send + 'static,
    {
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let arrived = Arc::new(Notify::new());
        let heads = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (seen2, arrived2, heads2) = (seen.clone(), arrived.clone(), heads.clone());
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (handler, seen, arrived, heads) = (
                    handler.clone(),
                    seen2.clone(),
                    arrived2.clone(),
                    heads2.clone(),
                );
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let (handler, seen, arrived, heads) = (
                            handler.clone(),
                            seen.clone(),
                            arrived.clone(),
                            heads.clone(),
                        );
                        async move {
                            heads.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                            arrived.notify_waiters();
                            let (parts, body) = req.into_parts();
                            let (body, complete) = match body.collect().await {
                                Ok(b) => (b.to_bytes(), true),
                                Err(_) => (Bytes::new(), false),
                            };
                            let s = Seen {
                                method: parts.method,
                                uri: parts.uri.to_string(),
                                headers: parts.headers,
                                body,
                                body_complete: complete,
                            };
                            seen.lock().unwrap().push(s.clone());
                            arrived.notify_waiters();
                            Ok::<_, Infallible>(handler(s).await)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Self {
            addr,
            seen,
            heads,
            arrived,
        }
    }

    /// A function whose first request never gets an answer; later ones get `answer`.
    pub async fn stalls_first(answer: &'static str) -> Self {
        let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        Self::with(move |_| {
            let calls = calls.clone();
            async move {
                if calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0 {
                    std::future::pending::<()>().await;
                }
                Response::new(full(answer))
            }
        })
        .await
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// Waits (on the backend's signal, at most 10 s) until `n` requests have
    /// been read whole (or failed while reading their body).
    pub async fn wait_for(&self, n: usize) {
        self.wait_until(|b| b.count() >= n).await;
    }

    /// Waits until `n` request heads have arrived, bodies possibly still streaming.
    pub async fn wait_for_heads(&self, n: usize) {
        self.wait_until(|b| b.heads.load(std::sync::atomic::Ordering::SeqCst) >= n)
            .await;
    }

    async fn wait_until(&self, done: impl Fn(&Self) -> bool) {
        let waited = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                let notified = self.arrived.notified();
                if done(self) {
                    return;
                }
                notified.await;
            }
        })
        .await;
        assert!(
            waited.is_ok(),
            "backend did not see the expected requests within 10 s"
        );
    }

    /// Request heads received so far (bodies possibly still arriving, answers possibly held).
    pub fn heads(&self) -> usize {
        self.heads.load(std::sync::atomic::Ordering::SeqCst)
    }

    pub fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    /// Header `name` of every request seen (in order), where it was sent.
    pub fn header_values(&self, name: &str) -> Vec<String> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter_map(|s| s.headers.get(name))
            .map(|v| v.to_str().unwrap().to_owned())
            .collect()
    }
}

/// A job's result from `url` (an instance's address and the job's `Location`),
/// waiting for it up to 10 s (`Prefer: wait=10`).
pub async fn job_result(url: String) -> Answer {
    send(
        Request::get(url)
            .header("prefer", "wait=10")
            .body(empty())
            .unwrap(),
    )
    .await
}

pub fn full(s: impl Into<Bytes>) -> BoxBody {
    Full::new(s.into()).map_err(|e| match e {}).boxed()
}

/// A TCP port that refuses connections (bound, then closed).
/// An address that refuses connections for the rest of the test run: a socket
/// bound but never listening keeps the port, so no other test's listener can
/// take it (a freed port could be handed out again and answer).
pub async fn dead_addr() -> SocketAddr {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = socket.local_addr().unwrap();
    std::mem::forget(socket);
    addr
}

/// The real gateway, started in-process on ephemeral ports.
pub struct Gw {
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    /// The HTTPS listener, when the config has `[server.tls]`.
    pub tls: Option<SocketAddr>,
    pub gateway: Option<fngate::Gateway>,
}

impl Gw {
    pub async fn start(config: &str) -> Self {
        let config = fngate::Config::parse(config, "test.toml", &|name| std::env::var(name).ok())
            .unwrap_or_else(|e| panic!("test config invalid:\n{e}"));
        Self::start_config(config).await
    }

    pub async fn start_config(config: fngate::Config) -> Self {
        Self::start_with_clock(config, None).await
    }

    /// Starts with a rate-limit clock the test can move forward.
    pub async fn start_with_clock(
        config: fngate::Config,
        clock: Option<fngate::clock::Clock>,
    ) -> Self {
        let opts = fngate::ServeOptions {
            listen: Some("127.0.0.1:0".parse().unwrap()),
            admin_listen: Some("127.0.0.1:0".parse().unwrap()),
            clock,
        };
        let gateway = fngate::start(config, opts).await.expect("gateway starts");
        Self {
            addr: gateway.addr,
            admin: gateway.admin_addr,
            tls: gateway.tls_addr,
            gateway: Some(gateway),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub async fn get(&self, path: &str) -> Answer {
        send(Request::get(self.url(path)).body(empty()).unwrap()).await
    }

    pub async fn metrics(&self) -> String {
        let a = send(
            Request::get(format!("http://{}/metrics", self.admin))
                .body(empty())
                .unwrap(),
        )
        .await;
        a.text()
    }
}

impl Drop for Gw {
    fn drop(&mut self) {
        if let Some(g) = &self.gateway {
            g.shutdown();
        }
    }
}

/// An answer read to the end.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Answer {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The echo backend's view of a request header.
    pub fn upstream_header(&self, name: &str) -> Option<String> {
        self.json()["headers"][name].as_str().map(str::to_owned)
    }

    /// Asserts a problem+json answer with this status and returns its body.
    pub fn problem(&self, status: u16) -> serde_json::Value {
        assert_eq!(self.status.as_u16(), status, "body: {}", self.text());
        assert_eq!(
            self.header("content-type"),
            Some("application/problem+json")
        );
        let p = self.json();
        assert_eq!(p["status"], status);
        assert_eq!(p["type"], "about:blank");
        assert!(p["title"].is_string() && p["detail"].is_string(), "{p}");
        assert_eq!(
            p["request_id"].as_str(),
            self.header("x-request-id"),
            "problem carries the request id"
        );
        p
    }
}

pub fn empty() -> BoxBody {
    full(Bytes::new())
}

pub async fn send(req: Request<BoxBody>) -> Answer {
    let client: Client<_, BoxBody> = Client::builder(TokioExecutor::new()).build_http();
    let res = tokio::time::timeout(Duration::from_secs(20), client.request(req))
        .await
        .expect("answer within 20s")
        .expect("request succeeds");
    let (parts, body) = res.into_parts();
    let body = body.collect().await.expect("body").to_bytes();
    Answer {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

/// Writes raw bytes and reads until the peer closes (failing after 10 s).
pub async fn raw(addr: SocketAddr, bytes: &[u8]) -> String {
    let mut s = sent(addr, bytes).await;
    read_to_close(&mut s).await
}

/// A connection to `addr` on which `bytes` have been written.
pub async fn sent(addr: SocketAddr, bytes: &[u8]) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    s
}

/// Reads until the peer closes; a peer that keeps the connection open for 10 s fails the test
/// (the "…and closes" tests rely on it). A reset after the answer counts as a close.
pub async fn read_to_close(s: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
        .await
        .unwrap_or_else(|_| {
            panic!(
                "the peer did not close within 10 s; read so far: {}",
                String::from_utf8_lossy(&out)
            )
        });
    if let Err(e) = read {
        assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}");
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A function that counts the TCP connections it accepted.
pub async fn counting_backend() -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let accepted = std::sync::Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let service = hyper::service::service_fn(|_req| async {
                    Ok::<_, std::convert::Infallible>(http::Response::new(full("ok")))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (url, accepted)
}

/// A minimal config with one backend named `b` at `url`, plus `routes`.
pub fn config(url: &str, routes: &str) -> String {
    format!("[backends.b]\nurls = [\"{url}\"]\n{routes}")
}

/// One catch-all route to backend `b`.
pub const ANY: &str = "[[routes]]\nname = \"any\"\npath = \"/{*rest}\"\nbackend = \"b\"\n";

/// The fngate binary, with a clean environment for config and logs.
pub fn fngate() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_fngate"));
    c.env_remove("FNGATE_CONFIG").env("RUST_LOG", "info");
    c
}

/// A running fngate process whose stdout lines arrive on a channel.
pub struct Proc {
    pub child: Child,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub lines: mpsc::Receiver<String>,
}

impl Proc {
    /// `fngate --config F --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 EXTRA...`
    pub fn start(config: &str, extra: &[&str]) -> Self {
        let mut args = vec![
            "--config",
            config,
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ];
        args.extend_from_slice(extra);
        Self::spawn(&args)
    }

    /// Runs fngate with `args`; returns once it logs that it is listening.
    pub fn spawn(args: &[&str]) -> Self {
        Self::try_spawn(args).unwrap_or_else(|stderr| panic!("fngate did not start:\n{stderr}"))
    }

    /// [`Proc::spawn`], or what fngate wrote to stderr when it exited
    /// instead of listening (its stderr is passed on to ours as it comes).
    pub fn try_spawn(args: &[&str]) -> Result<Self, String> {
        let mut child = fngate()
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (tx, lines) = mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let stderr = child.stderr.take().unwrap();
        let errors = std::thread::spawn(move || {
            let mut all = String::new();
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("{line}");
                all.push_str(&line);
                all.push('\n');
            }
            all
        });
        let mut p = Self {
            child,
            addr: "0.0.0.0:0".parse().unwrap(),
            admin: "0.0.0.0:0".parse().unwrap(),
            lines,
        };
        let Some(line) = p.try_line_with("fngate listening") else {
            // Exited (stdout closed) or silent for too long.
            let _ = p.child.kill();
            let _ = p.child.wait();
            return Err(errors.join().unwrap_or_default());
        };
        let field = |name: &str| -> SocketAddr {
            let start = line
                .find(name)
                .unwrap_or_else(|| panic!("{name} in {line}"))
                + name.len();
            let rest = line[start..].trim_start_matches(['=', ':', '"']);
            rest.split([' ', '"', ',']).next().unwrap().parse().unwrap()
        };
        p.addr = field("addr");
        p.admin = field("admin_addr");
        Ok(p)
    }

    pub fn line_with(&self, needle: &str) -> String {
        self.try_line_with(needle)
            .unwrap_or_else(|| panic!("no line with `{needle}` from fngate"))
    }

    /// The next stdout line holding `needle`, or `None` once fngate's stdout
    /// closed or 20 s passed.
    fn try_line_with(&self, needle: &str) -> Option<String> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return Some(line),
                Ok(_) => {}
                Err(_) => return None,
            }
        }
    }

    pub fn signal(&self, sig: &str) {
        // The shell's built-in kill: no extra package or crate needed.
        let cmd = format!("kill {sig} {}", self.child.id());
        let ok = Command::new("sh").args(["-c", &cmd]).status().unwrap();
        assert!(ok.success());
    }

    pub fn wait_exit(&mut self) -> i32 {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code().unwrap_or(-1);
            }
            assert!(Instant::now() < deadline, "fngate did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
