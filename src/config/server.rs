//! `[server]` and `[admin]`: listeners, limits, timeouts, persistence.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;

use super::decode::{Ctx, Obj};
use super::load::address;
use super::*;

#[derive(Debug, Clone, PartialEq)]
pub struct Server {
    pub listen: SocketAddr,
    /// Worker threads; 0 means one per core.
    pub workers: usize,
    pub max_body: u64,
    pub max_header_size: usize,
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub request_timeout: Duration,
    pub shutdown_grace: Duration,
    pub drain_delay: Duration,
    /// An upgraded connection (WebSocket) with no bytes moving this long is closed.
    pub websocket_idle_timeout: Duration,
    /// ...and one open this long, whatever it does.
    pub websocket_max_lifetime: Duration,
    /// The HTTPS listener, when configured.
    pub tls: Option<ServerTls>,
    pub watch: bool,
    pub trusted_proxies: Vec<IpNet>,
    /// Where clients read and cancel their jobs (`{jobs_path}/{id}`); no route may live under it.
    pub jobs_path: String,
    /// Where events are published (`{events_path}/{topic}`); no route may live under it.
    pub events_path: String,
    /// Where functions read uploaded files by signed URL (`{files_path}/{route}/{key}`).
    pub files_path: String,
    /// The HMAC key of those URLs (`files_key`, usually `${VAR}`); else one kept in the store.
    pub files_key: Option<Secret>,
}

#[derive(Clone, PartialEq)]
pub struct Admin {
    pub listen: SocketAddr,
    pub persist: Persist,
    pub token_env: String,
    /// The bearer token read from `token_env`; never printed.
    pub token: Option<Arc<str>>,
}

impl fmt::Debug for Admin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Admin")
            .field("listen", &self.listen)
            .field("persist", &self.persist)
            .field("token_env", &self.token_env)
            .field("token", &self.token.as_ref().map(|_| "<hidden>"))
            .finish()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Persist {
    File,
    Memory,
}

pub(super) fn server_defaults() -> Server {
    Server {
        listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
        workers: 0,
        max_body: 10 << 20,
        max_header_size: 64 << 10,
        header_read_timeout: Duration::from_secs(10),
        idle_timeout: Duration::from_secs(60),
        request_timeout: Duration::from_secs(30),
        shutdown_grace: Duration::from_secs(30),
        drain_delay: Duration::ZERO,
        websocket_idle_timeout: Duration::from_secs(600),
        websocket_max_lifetime: Duration::from_secs(24 * 3600),
        tls: None,
        watch: true,
        trusted_proxies: Vec::new(),
        jobs_path: "/jobs".to_owned(),
        events_path: "/events".to_owned(),
        files_path: "/files".to_owned(),
        files_key: None,
    }
}

pub(super) fn server(ctx: &mut Ctx<'_>, mut obj: Obj<'_>, base: &Path) -> Server {
    let mut s = server_defaults();
    if let Some(addr) = address(ctx, &mut obj, "listen") {
        s.listen = addr;
    }
    if let Some(n) = obj.uint(ctx, "workers", 1024) {
        s.workers = n as usize;
    }
    if let Some(n) = obj.size(ctx, "max_body") {
        s.max_body = n;
    }
    if let Some(n) = obj.size(ctx, "max_header_size") {
        // hyper's HTTP/1 read buffer cannot be smaller than 8 KiB.
        if !(1024..=16 << 20).contains(&n) {
            ctx.error(
                obj.key_span("max_header_size"),
                obj.key_path("max_header_size"),
                "must be from 1KiB to 16MiB",
            );
        } else {
            s.max_header_size = n as usize;
        }
    }
    for (key, slot) in [
        ("header_read_timeout", &mut s.header_read_timeout),
        ("idle_timeout", &mut s.idle_timeout),
        ("request_timeout", &mut s.request_timeout),
        ("websocket_idle_timeout", &mut s.websocket_idle_timeout),
        ("websocket_max_lifetime", &mut s.websocket_max_lifetime),
    ] {
        if let Some(d) = obj.positive_duration(ctx, key) {
            *slot = d;
        }
    }
    if let Some(d) = obj.duration(ctx, "shutdown_grace") {
        s.shutdown_grace = d;
    }
    if let Some(d) = obj.duration(ctx, "drain_delay") {
        s.drain_delay = d;
    }
    if let Some(b) = obj.bool(ctx, "watch") {
        s.watch = b;
    }
    for cidr in obj.strings(ctx, "trusted_proxies").unwrap_or_default() {
        let parsed = cidr
            .value
            .parse::<IpNet>()
            .or_else(|_| cidr.value.parse::<std::net::IpAddr>().map(IpNet::from));
        match parsed {
            Ok(net) => s.trusted_proxies.push(net),
            Err(_) => ctx.error(
                cidr.span,
                obj.key_path("trusted_proxies"),
                format!(
                    "`{}` is not a CIDR (e.g. \"10.0.0.0/8\") or IP address",
                    cidr.value
                ),
            ),
        }
    }
    if let Some(p) = prefix(ctx, &mut obj, "jobs_path") {
        s.jobs_path = p;
    }
    if let Some(p) = prefix(ctx, &mut obj, "events_path") {
        s.events_path = p;
    }
    if s.jobs_path == s.events_path {
        ctx.error(
            obj.key_span("events_path"),
            obj.key_path("events_path"),
            "must differ from server.jobs_path",
        );
    }
    if let Some(p) = prefix(ctx, &mut obj, "files_path") {
        s.files_path = p;
    }
    if let Some(k) = obj.string(ctx, "files_key") {
        if k.value.len() < 32 {
            ctx.error(
                k.span,
                obj.key_path("files_key"),
                "must be at least 32 bytes (it signs the URLs functions read files from)",
            );
        } else {
            s.files_key = Some(Secret(k.value.as_bytes().into()));
        }
    }
    if [&s.jobs_path, &s.events_path].contains(&&s.files_path) {
        ctx.error(
            obj.key_span("files_path"),
            obj.key_path("files_path"),
            "must differ from server.jobs_path and server.events_path",
        );
    }
    s.tls = obj
        .table(ctx, "tls")
        .and_then(|t| tls::server_tls(ctx, t, base));
    obj.finish(ctx);
    s
}

/// A path prefix of fngate's own, such as "/jobs": kept without its trailing `/`.
fn prefix(ctx: &mut Ctx<'_>, obj: &mut Obj<'_>, key: &'static str) -> Option<String> {
    let p = obj.string(ctx, key)?;
    let trimmed = p.value.trim_end_matches('/');
    let valid = p.value.starts_with('/')
        && trimmed.len() > 1
        && trimmed
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/-_.".contains(&b))
        && !trimmed.contains("//");
    if !valid {
        ctx.error(
            p.span,
            obj.key_path(key),
            format!("`{}` is not a path prefix such as \"/jobs\"", p.value),
        );
        return None;
    }
    Some(trimmed.to_owned())
}

pub(super) fn admin(ctx: &mut Ctx<'_>, obj: Option<Obj<'_>>) -> Admin {
    let mut a = Admin {
        listen: SocketAddr::from(([127, 0, 0, 1], 9901)),
        persist: Persist::File,
        token_env: "FNGATE_ADMIN_TOKEN".into(),
        token: None,
    };
    let Some(mut obj) = obj else {
        a.token = ctx.env("FNGATE_ADMIN_TOKEN").map(Into::into);
        return a;
    };
    if let Some(addr) = address(ctx, &mut obj, "listen") {
        a.listen = addr;
    }
    if let Some(p) = obj.string(ctx, "persist") {
        match p.value.as_str() {
            "file" => a.persist = Persist::File,
            "memory" => a.persist = Persist::Memory,
            other => ctx.error(
                p.span,
                obj.key_path("persist"),
                format!("`{other}`: expected \"file\" or \"memory\""),
            ),
        }
    }
    if let Some(t) = obj.string(ctx, "token_env") {
        a.token_env = t.value;
    }
    a.token = ctx
        .env(&a.token_env)
        .filter(|t| !t.is_empty())
        .map(Into::into);
    if !a.listen.ip().is_loopback() && a.token.is_none() {
        ctx.error(
            obj.key_span("listen"),
            obj.key_path("listen"),
            format!(
                "the admin API listens on {} (not loopback) but ${} is not set: set a token or listen on 127.0.0.1",
                a.listen, a.token_env
            ),
        );
    }
    obj.finish(ctx);
    a
}
