//! fngate: an API gateway for serverless function endpoints.
//!
//! The request lifecycle is described once, in ARCHITECTURE.md. The public
//! surface is what the binary and the integration tests need: the config,
//! the running state, the clock tests move, the command-line tools, and
//! starting the gateway. Everything else is the crate's own.

pub mod alloc;
pub mod cli;
pub mod clock;
pub mod config;
pub mod log_json;
pub mod log_writer;
pub mod state;

/// Entry points for the fuzz targets (fuzz/README.md); not a stable API.
#[doc(hidden)]
pub mod fuzzing;

mod admin;
mod aggregate;
mod auth;
mod body;
mod cluster;
mod context;
mod dispatch;
mod error;
mod events;
mod gate;
mod hex;
mod idle;
mod jobs;
mod metrics;
mod middleware;
mod normalize;
mod proxy;
mod ratelimit;
mod redis_client;
mod router;
mod schedules;
mod server;
mod signed_url;
mod telemetry;
mod timestamp;
mod tls;
mod uploads;
mod upstream;
mod worker;

pub use config::Config;
pub use server::{serve, start, Gateway, ServeOptions, StartError};
