//! fngate: an API gateway for serverless function endpoints.
//!
//! The request lifecycle is described once, in ARCHITECTURE.md.

pub mod admin;
pub mod aggregate;
pub mod auth;
pub mod body;
pub mod cli;
pub mod clock;
pub mod config;
pub mod context;
pub mod dispatch;
pub mod error;
pub mod idle;
pub mod metrics;
pub mod middleware;
pub mod normalize;
pub mod proxy;
pub mod ratelimit;
pub mod router;
pub mod server;
pub mod state;
pub mod tls;
pub mod upstream;

pub use config::Config;
pub use server::{serve, start, Gateway, ServeOptions, StartError};
