//! A real redis-server per test, on a free loopback port, stopped by its pid.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

pub struct Redis {
    child: Option<Child>,
    pub port: u16,
    /// Its append-only file lives here, so a restart keeps what was written.
    dir: tempfile::TempDir,
    extra: Vec<String>,
}

impl Redis {
    pub fn start() -> Self {
        Self::start_with(|_| Vec::new())
    }

    /// A replica of `primary`.
    pub fn replica_of(primary: &Redis) -> Self {
        let primary = primary.port.to_string();
        Self::start_with(|_| vec!["--replicaof".into(), "127.0.0.1".into(), primary.clone()])
    }

    /// TLS only, on its port, with this certificate and key (no client certificates asked).
    pub fn start_tls(cert: &str, key: &str) -> Self {
        Self::start_with(|port| {
            [
                "--port",
                "0",
                "--tls-port",
                &port.to_string(),
                "--tls-cert-file",
                cert,
            ]
            .into_iter()
            .chain(["--tls-key-file", key, "--tls-auth-clients", "no"])
            .map(str::to_owned)
            .collect()
        })
    }

    /// `rediss://` to `name` (the certificate's name; it resolves to loopback).
    pub fn tls_url(&self, name: &str) -> String {
        format!("rediss://{name}:{}/0", self.port)
    }

    fn start_with(extra: impl FnOnce(u16) -> Vec<String>) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap()
            .port();
        let mut r = Self {
            child: None,
            port,
            dir: tempfile::tempdir().unwrap(),
            extra: extra(port),
        };
        r.run();
        r
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Runs redis-server and returns once it says it accepts connections.
    fn run(&mut self) {
        let mut child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args([
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
            ])
            .args(["--dir", &self.dir.path().display().to_string()])
            .args(&self.extra)
            .stdout(Stdio::piped())
            .spawn()
            .expect("redis-server runs (apt-get install redis-server)");
        let out = BufReader::new(child.stdout.take().unwrap());
        let mut lines = out.lines();
        loop {
            let line = lines
                .next()
                .expect("redis-server exited before it was ready")
                .unwrap();
            if line.contains("Ready to accept connections") {
                break;
            }
        }
        // Drain the rest so the server never blocks on a full pipe.
        std::thread::spawn(move || lines.for_each(drop));
        self.child = Some(child);
    }

    /// Stops the server (SIGKILL: as a crash, or a network cut, looks to its clients).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port, with the data it had.
    pub fn restart(&mut self) {
        self.stop();
        self.run();
    }

    /// Runs one command with redis-cli.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["-p", &self.port.to_string()])
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}
