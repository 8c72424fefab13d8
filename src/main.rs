//! The command line: parse arguments, set up logging, call into the library.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};
use fngate::config::{self, Config};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

// glibc malloc was ~8% of the proxy's CPU per request in perf; mimalloc's
// thread-local free lists cut that (bench/README.md has the figures).
#[global_allocator]
static GLOBAL: fngate::alloc::MiMalloc = fngate::alloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(
    name = "fngate",
    version,
    about = "An API gateway for serverless function endpoints"
)]
struct Cli {
    /// Log format: one JSON object per line, or human-readable text.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Json,
    Text,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the gateway (the default).
    Serve(ServeArgs),
    /// Check a config; exit 0 when valid, else 1 with every error.
    Validate {
        /// Config file [default: $FNGATE_CONFIG, else ./routes.toml]
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Show which route a request would take and why; sends nothing.
    /// Exit 0 on a match, 1 when no route matches. With --schedule NAME:
    /// the schedule's next 5 fire times instead.
    Explain {
        /// Config file [default: $FNGATE_CONFIG, else ./routes.toml]
        #[arg(long)]
        config: Option<PathBuf>,
        /// The next fire times of this schedule, in UTC and its time zone.
        #[arg(long, conflicts_with_all = ["method", "path"])]
        schedule: Option<String>,
        /// The request method, e.g. GET.
        #[arg(required_unless_present = "schedule")]
        method: Option<String>,
        /// The request path, with an optional query: /users/42?x=1
        #[arg(required_unless_present = "schedule")]
        path: Option<String>,
        /// A request header, e.g. -H "host: api.example.com" (repeatable).
        #[arg(short = 'H', long = "header")]
        headers: Vec<String>,
    },
    /// Start demo function backends and the gateway on the shipped routes.toml.
    Demo(ServeArgs),
    /// Mint a token with the development key in certs/ for the demo's
    /// `[auth.demo]` policy. Dev only: that private key is public.
    Token {
        /// The subject (consumer).
        #[arg(long)]
        sub: String,
        /// Space-separated scopes, e.g. "orders:read orders:write".
        #[arg(long)]
        scope: Option<String>,
        /// Lifetime, e.g. 1h, 15m.
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        ttl: std::time::Duration,
    },
    /// Make a development CA and a certificate signed by it (dev only: the CA
    /// key is written next to it). Writes ca.pem, ca-key.pem, NAME.pem, NAME-key.pem.
    Cert {
        /// Where to write.
        #[arg(long, default_value = "certs")]
        dir: PathBuf,
        /// A DNS name or IP the certificate covers (repeatable; the first names the files).
        #[arg(long = "name", default_values_t = ["localhost".to_owned(), "127.0.0.1".to_owned()])]
        names: Vec<String>,
        /// Replace existing files.
        #[arg(long)]
        force: bool,
    },
}

#[derive(Debug, Args)]
struct ServeArgs {
    /// Config file [default: $FNGATE_CONFIG, else ./routes.toml]
    #[arg(long)]
    config: Option<PathBuf>,
    /// Overrides `server.listen`.
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Overrides `admin.listen`.
    #[arg(long)]
    admin_listen: Option<SocketAddr>,
}

impl ServeArgs {
    fn is_set(&self) -> bool {
        self.config.is_some() || self.listen.is_some() || self.admin_listen.is_some()
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The serve flags before a subcommand would be ignored by it; say so rather
    // than run on another config than the one named. (clap's
    // `args_conflicts_with_subcommands` would refuse the global `--log-format` too.)
    if cli.command.is_some() && cli.serve.is_set() {
        use clap::CommandFactory;
        Cli::command()
            .error(
                clap::error::ErrorKind::ArgumentConflict,
                "--config, --listen and --admin-listen go after the subcommand",
            )
            .exit();
    }
    match cli.command {
        Some(Command::Validate { config }) => validate(config::resolve_path(config)),
        Some(Command::Explain {
            config,
            schedule: Some(name),
            ..
        }) => explain_schedule(config::resolve_path(config), &name),
        Some(Command::Explain {
            config,
            method,
            path,
            headers,
            ..
        }) => explain(
            config::resolve_path(config),
            method.as_deref().unwrap_or_default(),
            path.as_deref().unwrap_or_default(),
            &headers,
        ),
        Some(Command::Serve(args)) => serve(args, cli.log_format, false),
        Some(Command::Demo(args)) => serve(args, cli.log_format, true),
        Some(Command::Cert { dir, names, force }) => {
            match fngate::cli::cert::make(&dir, &names, force) {
                Ok(w) => {
                    for f in w.files {
                        println!("wrote {}", f.display());
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Some(Command::Token { sub, scope, ttl }) => {
            match fngate::cli::demo::token(&sub, scope.as_deref(), ttl) {
                Ok(t) => {
                    println!("{t}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        None => serve(cli.serve, cli.log_format, false),
    }
}

/// Loads the config, or prints every error (the last line names the problem) and gives up.
fn load(path: &std::path::Path) -> Option<Config> {
    match Config::load(path) {
        Ok(c) => Some(c),
        Err(errors) => {
            for e in &errors.0 {
                eprintln!("error: {e}");
            }
            None
        }
    }
}

fn explain(path: PathBuf, method: &str, target: &str, headers: &[String]) -> ExitCode {
    let Some(config) = load(&path) else {
        return ExitCode::FAILURE;
    };
    let Ok(method) = http::Method::from_bytes(method.to_ascii_uppercase().as_bytes()) else {
        eprintln!("error: `{method}` is not an HTTP method");
        return ExitCode::FAILURE;
    };
    let mut pairs = Vec::new();
    for h in headers {
        let Some((name, value)) = h.split_once(':') else {
            eprintln!("error: header `{h}` must look like \"name: value\"");
            return ExitCode::FAILURE;
        };
        pairs.push((name.trim().to_owned(), value.trim().to_owned()));
    }
    let e = fngate::cli::explain::explain(&config, &method, target, &pairs);
    print!("{e}");
    if e.matched {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn explain_schedule(path: PathBuf, name: &str) -> ExitCode {
    let Some(config) = load(&path) else {
        return ExitCode::FAILURE;
    };
    match fngate::cli::explain::schedule(&config, name, std::time::SystemTime::now()) {
        Some(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        None => {
            let known: Vec<&str> = config.schedules.iter().map(|s| &*s.name).collect();
            eprintln!(
                "error: no schedule named `{name}` (defined: {})",
                if known.is_empty() {
                    "none".to_owned()
                } else {
                    known.join(", ")
                }
            );
            ExitCode::FAILURE
        }
    }
}

fn validate(path: PathBuf) -> ExitCode {
    match Config::load(&path) {
        Ok(c) => {
            println!(
                "{}: valid ({} routes, {} backends)",
                path.display(),
                c.own_routes().count(),
                c.backends.len()
            );
            ExitCode::SUCCESS
        }
        Err(errors) => {
            for e in &errors.0 {
                eprintln!("{e}");
            }
            let n = errors.0.len();
            println!(
                "{}: {n} error{}",
                path.display(),
                if n == 1 { "" } else { "s" }
            );
            ExitCode::FAILURE
        }
    }
}

fn serve(args: ServeArgs, format: LogFormat, demo: bool) -> ExitCode {
    let _log = match init_logging(format) {
        Ok(log) => log,
        Err(e) => {
            eprintln!("error: cannot start the log's flusher thread: {e}");
            return ExitCode::FAILURE;
        }
    };
    let path = config::resolve_path(args.config);
    let Some(config) = load(&path) else {
        return ExitCode::FAILURE;
    };
    // Worker 0, and the admin API, jobs and schedules: one thread. Further
    // workers get a thread and runtime each (worker.rs); a current-thread
    // runtime skips work-stealing bookkeeping, which measured cheaper per
    // request in bench/.
    let mut runtime = tokio::runtime::Builder::new_current_thread();
    let runtime = match runtime.enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let opts = fngate::ServeOptions {
        listen: args.listen,
        admin_listen: args.admin_listen,
        clock: None,
    };
    let run = async {
        if demo {
            fngate::cli::demo::run(config, opts).await
        } else {
            fngate::serve(config, opts).await
        }
    };
    match runtime.block_on(run) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}: {e}", path.display());
            ExitCode::FAILURE
        }
    }
}

/// The log's threads. Dropped in this order: the writer thread writes what
/// is queued, then the flusher writes what is buffered.
struct Logging {
    _writer: tracing_appender::non_blocking::WorkerGuard,
    _flusher: fngate::log_writer::Flusher<std::io::Stdout>,
}

/// Logging to stdout through a thread of its own; lines still queued or
/// buffered are written when the returned value drops.
fn init_logging(format: LogFormat) -> std::io::Result<Logging> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let registry = tracing_subscriber::registry().with(filter);
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    // A request formats its access-log line and queues it; the writer thread
    // writes what is queued in one write(2) and flushes whenever the queue is
    // empty. Written in place, every line was a write(2) under stdout's lock on
    // the request's thread. Not lossy: with 8,192 lines queued, a request waits
    // (the queue's slots are allocated up front: the default 128k cost 4 MiB of RSS).
    // Its output is written when 64 KiB are buffered and at most 100 ms
    // after a line arrived (log_writer.rs), not whenever the queue empties.
    let (out, flusher) = fngate::log_writer::batched(std::io::stdout(), 64 << 10)?;
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .buffered_lines_limit(8192)
        .lossy(false)
        .thread_name("fngate-log")
        .finish(out);
    match format {
        LogFormat::Json => {
            // The access log writes its lines itself, to the same writer.
            fngate::log_json::write_access_log_to(writer.clone());
            registry
                .with(
                    // tracing-subscriber's JSON object, written in one string (log_json.rs).
                    tracing_subscriber::fmt::layer()
                        .event_format(fngate::log_json::Json)
                        .with_writer(writer),
                )
                .init()
        }
        LogFormat::Text => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_ansi(ansi)
                    .with_writer(writer),
            )
            .init(),
    }
    Ok(Logging {
        _writer: guard,
        _flusher: flusher,
    })
}
