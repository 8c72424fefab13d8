//! fngate's integration tests, one binary: each module starts real backends and the real
//! gateway on loopback ports. One binary links once, which keeps CI's build small and fast.
#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod common;

mod admin;
mod aggregate;
mod auth;
mod cli;
mod cluster;
mod config;
mod cors;
mod events;
mod hostile;
mod jobs;
mod lifecycle;
mod proxy;
mod rate_limit;
mod reload;
mod resilience;
mod routing;
mod schedules;
mod streams;
mod telemetry;
mod tls;
mod uploads;
mod upstreams;
